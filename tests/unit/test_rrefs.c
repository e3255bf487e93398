/*
 * This node's references on other nodes' dups against a reference model:
 * random sequences of changes (up and down, below zero too), counts that
 * could not be sent, everything made dirty, takes of every size (partial
 * ones included) and visits, over key universes chosen so that the index
 * collides, grows and deletes inside its runs. The model keeps per key
 * whether it is kept, its count and whether it is dirty; a take outputs
 * dirty counts only (negative ones as 0), each at most once, as many as
 * max allows, and forgets exactly the ones it took at zero or below.
 * After every step the invariants hold and every key's count and the
 * number kept are the model's. A smoke test then changes counts from two
 * threads while a third takes, and reconciles the sums at the end.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "agent/rrefs.h"
#include "unit.h"

#define MAXK  800 /* keys in a universe */
#define STEPS 4000

struct mkey {
	struct rdup d;
	bool kept, dirty;
	int32_t count;
};

static struct mkey K[MAXK]; /* the run's universe, sorted by key */
static size_t nk;
static unsigned cur_run, cur_step; /* for messages */

#define expect(cond, ...) unit_expect(cur_run, cur_step, cond, __VA_ARGS__)

static struct cid id_of(const struct rdup *d)
{
	return (struct cid){ (uint64_t)d->node << 32 | d->slot,
			     (uint64_t)d->gen * 0x9e3779b97f4a7c15ULL ^ d->slot };
}

static int key_cmp(const void *a, const void *b)
{
	const struct rdup *x = a, *y = b;

	if (x->node != y->node)
		return x->node < y->node ? -1 : 1;
	if (x->slot != y->slot)
		return x->slot < y->slot ? -1 : 1;
	return x->gen < y->gen ? -1 : x->gen > y->gen;
}

/* The model's key d, or NULL when d is not in the universe. */
static struct mkey *m_key(uint32_t node, uint32_t slot, uint32_t gen)
{
	struct rdup d = { node, slot, gen };

	return bsearch(&d, K, nk, sizeof(*K), key_cmp);
}

/* ---- key universes ---------------------------------------------------------- */

static void add_key(uint32_t node, uint32_t slot, uint32_t gen)
{
	K[nk++] = (struct mkey){ .d = { node, slot, gen } };
}

/* Sorted, without repeats. */
static void universe_done(void)
{
	size_t n = 0;

	qsort(K, nk, sizeof(*K), key_cmp);
	for (size_t i = 0; i < nk; i++)
		if (!n || key_cmp(&K[i].d, &K[n - 1].d))
			K[n++] = K[i];
	nk = n;
}

static void universe_grid(uint32_t nodes, uint32_t slots, uint32_t gens)
{
	nk = 0;
	for (uint32_t n = 1; n <= nodes; n++)
		for (uint32_t s = 0; s < slots; s++)
			for (uint32_t g = 1; g <= gens; g++)
				add_key(n, s, g);
	universe_done();
}

/*
 * Keys that hash alike: the hash mixes slot with gen << 20, so (node,
 * base ^ gen << 20, gen) is the same hash for every gen.
 */
static void universe_colliding(void)
{
	nk = 0;
	for (uint32_t n = 1; n <= 2; n++)
		for (uint32_t base = 0; base < 5; base++)
			for (uint32_t g = 1; g <= 24; g++)
				add_key(n, base ^ g << 20, g);
	universe_done();
}

/* Random keys, the extremes among them; node 0 names this node's own slots. */
static void universe_sparse(unsigned *seed)
{
	nk = 0;
	add_key(0, 0, 1);
	add_key(UINT32_MAX, UINT32_MAX, UINT32_MAX);
	while (nk < 500)
		add_key((uint32_t)rand_r(seed) % 4 ? (uint32_t)rand_r(seed) << 1 : 0,
			(uint32_t)rand_r(seed) << 1 ^ (uint32_t)rand_r(seed),
			(uint32_t)rand_r(seed));
	universe_done();
}

/* ---- comparisons -------------------------------------------------------------- */

static void compare(struct rrefs *r)
{
	const char *why;
	size_t kept = 0;

	expect(rrefs_check(r, &why) == 0, "invariant broken: %s", why);
	for (size_t i = 0; i < nk; i++) {
		int32_t c = rrefs_count(r, &K[i].d);

		expect(c == (K[i].kept ? K[i].count : 0), "key %u/%u/%u: count %d, model %d",
		       K[i].d.node, K[i].d.slot, K[i].d.gen, c, K[i].kept ? K[i].count : 0);
		kept += K[i].kept;
	}
	expect(rrefs_size(r) == kept, "%zu counts kept, the model %zu", rrefs_size(r), kept);
}

static void take(struct rrefs *r, size_t max)
{
	struct ref_count *out = malloc((max + 4) * sizeof(*out));
	size_t dirty = 0, n, want;
	bool *seen = calloc(nk, sizeof(*seen));

	assert_non_null(out);
	assert_non_null(seen);
	for (size_t i = 0; i < nk; i++)
		dirty += K[i].kept && K[i].dirty;
	want = dirty < max ? dirty : max;
	/* Past what is taken, nothing is written. */
	memset(out, 0xa5, (max + 4) * sizeof(*out));
	n = rrefs_take(r, out, max);
	expect(n == want, "take of %zu gave %zu, %zu dirty", max, n, dirty);
	for (size_t j = n * sizeof(*out); j < (max + 4) * sizeof(*out); j++)
		expect(((uint8_t *)out)[j] == 0xa5, "take wrote past its %zu outputs", n);
	for (size_t j = 0; j < n; j++) {
		const struct ref_count *o = &out[j];
		struct mkey *k = m_key(o->node, o->ref.slot, o->ref.gen);
		struct cid id;

		expect(k, "take gave %u/%u/%u, never changed", o->node, o->ref.slot, o->ref.gen);
		id = id_of(&k->d);
		expect(!seen[k - K], "take gave %u/%u/%u twice", o->node, o->ref.slot, o->ref.gen);
		seen[k - K] = true;
		expect(k->kept && k->dirty, "take gave %u/%u/%u, which is not dirty", o->node,
		       o->ref.slot, o->ref.gen);
		expect(o->count == (uint32_t)(k->count > 0 ? k->count : 0),
		       "take gave %u/%u/%u at %u, model %d", o->node, o->ref.slot, o->ref.gen,
		       o->count, k->count);
		expect(cid_eq(o->id, id), "take gave %u/%u/%u with another id", o->node,
		       o->ref.slot, o->ref.gen);
	}
	/* What was taken is clean; taken at zero or below, it is forgotten. */
	for (size_t i = 0; i < nk; i++)
		if (seen[i]) {
			K[i].dirty = false;
			if (K[i].count <= 0) {
				K[i].kept = false;
				K[i].count = 0;
			}
		}
	free(seen);
	free(out);
}

struct visits {
	bool *seen;
	size_t n;
};

static void on_visit(void *arg, uint32_t node, struct pool_ref ref, const struct cid *id,
		     uint32_t count)
{
	struct visits *v = arg;
	struct mkey *k = m_key(node, ref.slot, ref.gen);

	expect(k, "foreach visits %u/%u/%u, never changed", node, ref.slot, ref.gen);
	expect(!v->seen[k - K], "foreach visits %u/%u/%u twice", node, ref.slot, ref.gen);
	v->seen[k - K] = true;
	v->n++;
	expect(k->kept && k->count > 0 && count == (uint32_t)k->count,
	       "foreach visits %u/%u/%u at %u, model %d", node, ref.slot, ref.gen, count,
	       k->kept ? k->count : 0);
	expect(cid_eq(*id, id_of(&k->d)), "foreach visits %u/%u/%u with another id", node, ref.slot,
	       ref.gen);
}

static void foreach (struct rrefs *r)
{
	struct visits v = { calloc(nk, sizeof(bool)), 0 };
	size_t want = 0;

	assert_non_null(v.seen);
	rrefs_foreach(r, on_visit, &v);
	for (size_t i = 0; i < nk; i++)
		want += K[i].kept && K[i].count > 0;
	expect(v.n == want, "foreach visits %zu counts, the model has %zu above zero", v.n, want);
	free(v.seen);
}

/* ---- operations ------------------------------------------------------------- */

static void step_random(struct rrefs *r, unsigned *seed)
{
	unsigned op = (unsigned)rand_r(seed) % 1000;
	struct mkey *k = &K[(size_t)rand_r(seed) % nk];

	if (op < 550) {
		int32_t delta =
			rand_r(seed) % 50 ? rand_r(seed) % 7 - 3 : rand_r(seed) % 2001 - 1000;
		struct cid id = id_of(&k->d);

		expect(rrefs_change(r, &k->d, &id, delta) == 0, "change failed");
		if (!k->kept)
			k->count = 0;
		k->kept = k->dirty = true;
		k->count += delta;
	} else if (op < 630) {
		rrefs_unsent(r, &k->d);
		k->dirty |= k->kept;
	} else if (op < 640) {
		rrefs_all_dirty(r);
		for (size_t i = 0; i < nk; i++)
			K[i].dirty |= K[i].kept;
	} else if (op < 750) { /* partial takes */
		take(r, 1 + (unsigned)rand_r(seed) % 4);
	} else if (op < 800) {
		take(r, 1 + (size_t)rand_r(seed) % nk);
	} else if (op < 850) {
		take(r, nk + 1); /* everything dirty */
	} else if (op < 900) {
		foreach (r)
			;
	}
	/* else nothing: the comparison alone */
}

static void random_sequences(void **state)
{
	(void)state;
	for (unsigned run = 0; run < 12; run++) {
		unsigned seed = 5000 + run;
		struct rrefs *r = rrefs_create();

		assert_non_null(r);
		cur_run = run;
		cur_step = 0;
		switch (run % 4) {
		case 0:
			universe_grid(3, 10, 2); /* 60 keys: counts come and go */
			break;
		case 1:
			universe_grid(7, 50, 2); /* 700 keys: growth */
			break;
		case 2:
			universe_colliding();
			break;
		default:
			universe_sparse(&seed);
			break;
		}
		compare(r);
		for (cur_step = 1; cur_step <= STEPS; cur_step++) {
			step_random(r, &seed);
			compare(r);
		}
		/* Drained, nothing dirty is left, and only counts above zero stay. */
		take(r, nk + 1);
		compare(r);
		for (size_t i = 0; i < nk; i++)
			expect(!K[i].kept || K[i].count > 0, "a count at zero stays");
		rrefs_destroy(r);
	}
}

/* The contract, step by step. */
static void take_semantics(void **state)
{
	struct rrefs *r = rrefs_create();
	struct rdup a = { 7, 1, 1 }, b = { 7, 2, 1 }, c = { 8, 1, 3 };
	struct cid id = { 1, 2 };
	struct ref_count out[4];
	const char *why;

	(void)state;
	assert_int_equal(rrefs_take(r, out, 4), 0);
	assert_int_equal(rrefs_change(r, &a, &id, 2), 0);
	assert_false(rrefs_told(r, &a)); /* the shard has no count of a yet */
	assert_int_equal(rrefs_take(r, out, 4), 1);
	assert_true(rrefs_told(r, &a));
	assert_int_equal(out[0].node, 7);
	assert_int_equal(out[0].ref.slot, 1);
	assert_int_equal(out[0].ref.gen, 1);
	assert_int_equal(out[0].count, 2);
	assert_int_equal(rrefs_take(r, out, 4), 0); /* clean now */
	assert_int_equal(rrefs_size(r), 1);
	/* Not sent: taken again. An unknown key is not made up. */
	rrefs_unsent(r, &a);
	rrefs_unsent(r, &b);
	assert_false(rrefs_told(r, &a));
	assert_false(rrefs_told(r, &b));
	assert_int_equal(rrefs_size(r), 1);
	assert_int_equal(rrefs_take(r, out, 4), 1);
	assert_int_equal(out[0].count, 2);
	/* Down to zero: told once more, then forgotten. */
	assert_int_equal(rrefs_change(r, &a, &id, -2), 0);
	assert_false(rrefs_told(r, &a)); /* a zero is on its way */
	assert_int_equal(rrefs_change(r, &a, &id, 1), 0);
	assert_true(
		rrefs_told(r, &a)); /* what the shard has, and every count after it, is above 0 */
	assert_int_equal(rrefs_change(r, &a, &id, -1), 0);
	assert_int_equal(rrefs_size(r), 1);
	assert_int_equal(rrefs_check(r, &why), 0);
	assert_int_equal(rrefs_take(r, out, 4), 1);
	assert_int_equal(out[0].count, 0);
	assert_int_equal(rrefs_size(r), 0);
	/* Below zero: told as 0, forgotten as well. */
	assert_int_equal(rrefs_change(r, &b, &id, -1), 0);
	assert_int_equal(rrefs_count(r, &b), -1);
	assert_int_equal(rrefs_take(r, out, 4), 1);
	assert_int_equal(out[0].count, 0);
	assert_int_equal(rrefs_count(r, &b), 0);
	assert_int_equal(rrefs_size(r), 0);
	/* Three clean counts made dirty, taken two, then one. */
	assert_int_equal(rrefs_change(r, &a, &id, 1), 0);
	assert_int_equal(rrefs_change(r, &b, &id, 2), 0);
	assert_int_equal(rrefs_change(r, &c, &id, 3), 0);
	assert_int_equal(rrefs_take(r, out, 4), 3);
	rrefs_all_dirty(r);
	assert_int_equal(rrefs_take(r, out, 2), 2);
	assert_int_equal(rrefs_take(r, out, 2), 1);
	assert_int_equal(rrefs_take(r, out, 2), 0);
	/* A partial take forgets the zero it took and keeps the zero it did not. */
	assert_int_equal(rrefs_change(r, &a, &id, -1), 0);
	assert_int_equal(rrefs_change(r, &b, &id, -2), 0);
	assert_int_equal(rrefs_take(r, out, 1), 1);
	assert_int_equal(out[0].count, 0);
	assert_int_equal(rrefs_size(r), 2);
	assert_int_equal(rrefs_check(r, &why), 0);
	assert_int_equal(rrefs_take(r, out, 1), 1);
	assert_int_equal(out[0].count, 0);
	assert_int_equal(rrefs_size(r), 1);
	assert_int_equal(rrefs_count(r, &c), 3);
	rrefs_destroy(r);
	rrefs_destroy(NULL);
}

/* ---- two threads change, a third takes ---------------------------------------- */

#define TKEYS 64
#define TITER 100000

struct changer {
	struct rrefs *r;
	uint32_t node;
	unsigned seed;
	int32_t sum[TKEYS];
	bool touched[TKEYS];
	unsigned errors;
};

struct taker {
	struct rrefs *r;
	atomic_bool stop;
	int64_t told[2][TKEYS]; /* the last count told, -1 never */
	unsigned errors;
	size_t takes;
};

static struct rdup tkey(uint32_t node, uint32_t k)
{
	return (struct rdup){ node, k, 1 + k % 3 };
}

/* Counts of its own keys only, never below zero: its view is exact. */
static void *changer_main(void *arg)
{
	struct changer *w = arg;

	for (unsigned i = 0; i < TITER; i++) {
		uint32_t k = (uint32_t)rand_r(&w->seed) % TKEYS;
		struct rdup d = tkey(w->node, k);
		struct cid id = id_of(&d);
		int32_t delta = rand_r(&w->seed) % 7 - 3;

		if (w->sum[k] + delta < 0)
			delta = -w->sum[k];
		if (rand_r(&w->seed) % 16 == 0) {
			rrefs_unsent(w->r, &d);
			continue;
		}
		w->errors += rrefs_change(w->r, &d, &id, delta) != 0;
		w->sum[k] += delta;
		w->touched[k] = true;
		/* No one else changes it: a take may forget a zero, nothing more. */
		w->errors += rrefs_count(w->r, &d) != w->sum[k];
	}
	return NULL;
}

static void told(struct taker *t, const struct ref_count *o, size_t n)
{
	for (size_t j = 0; j < n; j++) {
		struct rdup d = tkey(o[j].node, o[j].ref.slot);
		struct cid id = id_of(&d);

		if (o[j].node < 1 || o[j].node > 2 || o[j].ref.slot >= TKEYS ||
		    o[j].ref.gen != d.gen || !cid_eq(o[j].id, id)) {
			t->errors++;
			continue;
		}
		t->told[o[j].node - 1][o[j].ref.slot] = o[j].count;
	}
}

static void on_visit_any(void *arg, uint32_t node, struct pool_ref ref, const struct cid *id,
			 uint32_t count)
{
	struct taker *t = arg;

	(void)id;
	t->errors += node < 1 || node > 2 || ref.slot >= TKEYS || count == 0;
}

static void *taker_main(void *arg)
{
	struct taker *t = arg;
	struct ref_count out[64];
	unsigned seed = 99;
	const char *why;

	while (!atomic_load(&t->stop)) {
		size_t n = rrefs_take(t->r, out, 1 + (size_t)rand_r(&seed) % 64);

		told(t, out, n);
		if (++t->takes % 64 == 0) {
			t->errors += rrefs_check(t->r, &why) != 0;
			rrefs_foreach(t->r, on_visit_any, t);
		}
	}
	return NULL;
}

static void concurrent(void **state)
{
	static struct changer w[2];
	static struct taker t;
	struct ref_count out[64];
	pthread_t tw[2], tt;
	size_t n, kept = 0;
	int64_t sums = 0, tells = 0;
	const char *why;

	(void)state;
	memset(w, 0, sizeof(w));
	memset(&t, 0, sizeof(t));
	t.r = rrefs_create();
	assert_non_null(t.r);
	for (int i = 0; i < 2; i++)
		for (int k = 0; k < TKEYS; k++)
			t.told[i][k] = -1;
	assert_int_equal(pthread_create(&tt, NULL, taker_main, &t), 0);
	for (int i = 0; i < 2; i++) {
		w[i] = (struct changer){ .r = t.r,
					 .node = (uint32_t)i + 1,
					 .seed = 40u + (unsigned)i };
		assert_int_equal(pthread_create(&tw[i], NULL, changer_main, &w[i]), 0);
	}
	for (int i = 0; i < 2; i++)
		pthread_join(tw[i], NULL);
	atomic_store(&t.stop, true);
	pthread_join(tt, NULL);
	/* The shard's last word on every key is the changer's sum. */
	while ((n = rrefs_take(t.r, out, 64)))
		told(&t, out, n);
	assert_int_equal(w[0].errors, 0);
	assert_int_equal(w[1].errors, 0);
	assert_int_equal(t.errors, 0);
	assert_int_equal(rrefs_check(t.r, &why), 0);
	for (int i = 0; i < 2; i++)
		for (uint32_t k = 0; k < TKEYS; k++) {
			struct rdup d = tkey((uint32_t)i + 1, k);

			if (t.told[i][k] != (w[i].touched[k] ? w[i].sum[k] : -1)) {
				fprintf(stderr, "key %u/%u: told %lld, sum %d\n", d.node, k,
					(long long)t.told[i][k], w[i].sum[k]);
				fail();
			}
			assert_int_equal(rrefs_count(t.r, &d), w[i].sum[k]);
			kept += w[i].sum[k] > 0;
			sums += w[i].sum[k];
			tells += t.told[i][k] > 0 ? t.told[i][k] : 0;
		}
	assert_int_equal(rrefs_size(t.r), kept);
	assert_true(sums == tells);
	assert_true(t.takes > 0);
	rrefs_destroy(t.r);
}

static const struct CMUnitTest tests[] = {
	cmocka_unit_test(random_sequences),
	cmocka_unit_test(take_semantics),
	cmocka_unit_test(concurrent),
};

UNIT_MAIN(tests)
