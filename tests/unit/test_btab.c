/*
 * The backed-page table against a reference model: random sequences of
 * puts (new pages and replacements), deletions, lookups and walks that
 * delete a range (drop_range's two ways), over page universes chosen so
 * that everything the index does happens: a few pages over and over, many
 * pages (the table grows several times), pages whose probes start at the
 * same or neighbouring slots (deletion in the middle of a run shifts the
 * run back), and sparse pages up to the top of the address space. After
 * every step the invariants hold, the table has the model's entries with
 * the model's payloads, and pages the model lacks are not found.
 *
 * Kept on disk, the same sequences run on a table in a file, and every
 * so often the file is loaded as the next agent would (while the first
 * table still uses it): it has the model's entries. Then the states a
 * killed agent can leave between two stores are made by hand (an entry
 * written and not published, a torn entry, a replacement before the old
 * entry went, a deletion's copy before the count dropped): each loads
 * right.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include "agent/btab.h"
#include "unit.h"

#define MAXK	 1600 /* pages in a universe */
#define STEPS	 4000
#define MAX_PAGE ((1ULL << 52) - 1) /* the last page of a 64-bit address space */

/* The model: what the table should hold, in no particular order. */
struct mentry {
	uint64_t page;
	uint32_t payload;
};

static struct mentry M[MAXK];
static size_t mn;
static uint64_t U[MAXK]; /* the run's page universe */
static size_t uk;
static unsigned cur_run, cur_step;     /* for messages */
static unsigned mid_run_dels, growths; /* proof that the hard cases happened */

static uint64_t rnd64(unsigned *seed)
{
	uint64_t v = 0;

	for (int i = 0; i < 4; i++)
		v = v << 16 ^ (uint64_t)(rand_r(seed) & 0xffff);
	return v;
}

/* Every field of an entry follows from its page and payload. */
static struct bentry make_entry(uint64_t page, uint32_t payload)
{
	struct bentry e;

	memset(&e, 0, sizeof(e));
	e.page = page;
	e.kind = (uint8_t)(BACKED_ZERO + payload % 3);
	e.ref = (struct pool_ref){ payload, payload ^ 0x5a5a5a5au };
	e.id = (struct cid){ page ^ payload, (uint64_t)payload * 0x9e3779b97f4a7c15ULL };
	if (e.kind == BACKED_REMOTE) {
		e.nrem = (uint8_t)(1 + payload / 3 % BTAB_REPLICAS);
		for (unsigned i = 0; i < e.nrem; i++)
			e.rem[i] = (struct rdup){ 10 + i, payload + i, payload >> 4 };
	}
	return e;
}

static bool same_entry(const struct bentry *e, uint64_t page, uint32_t payload)
{
	struct bentry w = make_entry(page, payload);

	if (e->page != w.page || e->kind != w.kind || e->ref.slot != w.ref.slot ||
	    e->ref.gen != w.ref.gen || !cid_eq(e->id, w.id) || e->nrem != w.nrem)
		return false;
	for (unsigned i = 0; i < w.nrem; i++)
		if (e->rem[i].node != w.rem[i].node || e->rem[i].slot != w.rem[i].slot ||
		    e->rem[i].gen != w.rem[i].gen)
			return false;
	return true;
}

static int m_find(uint64_t page)
{
	for (size_t i = 0; i < mn; i++)
		if (M[i].page == page)
			return (int)i;
	return -1;
}

#define expect(cond, ...) unit_expect(cur_run, cur_step, cond, __VA_ARGS__)

/* The address of a byte somewhere in page. */
static uint64_t addr_in(uint64_t page, unsigned *seed)
{
	return page << 12 | (uint64_t)(rand_r(seed) % 4096);
}

static void compare(const struct btab *t, unsigned *seed)
{
	const char *why;

	expect(btab_check(t, &why) == 0, "invariant broken: %s", why);
	expect(t->n == mn, "the table has %zu entries, the model %zu", t->n, mn);
	for (size_t i = 0; i < mn; i++) {
		const struct bentry *e = btab_find(t, addr_in(M[i].page, seed));

		expect(e, "page %#llx is not found", (unsigned long long)M[i].page);
		expect(e >= t->e && e < t->e + t->n, "page %#llx found outside the array",
		       (unsigned long long)M[i].page);
		expect(same_entry(e, M[i].page, M[i].payload),
		       "page %#llx has another payload than %u", (unsigned long long)M[i].page,
		       M[i].payload);
	}
	/* Pages the model lacks: from the universe, and from anywhere. */
	for (int k = 0; k < 8; k++) {
		uint64_t page = k & 1 ? U[(size_t)rand_r(seed) % uk] : rnd64(seed) & MAX_PAGE;

		if (page && m_find(page) < 0)
			expect(!btab_find(t, addr_in(page, seed)), "absent page %#llx is found",
			       (unsigned long long)page);
	}
}

/* ---- page universes --------------------------------------------------------- */

static void universe_dense(size_t k)
{
	uk = k;
	for (size_t i = 0; i < k; i++)
		U[i] = i + 1;
}

/* Distinct random pages anywhere, the lowest and highest among them. */
static void universe_sparse(size_t k, unsigned *seed)
{
	U[0] = 1;
	U[1] = MAX_PAGE;
	uk = 2;
	while (uk < k) {
		uint64_t page = rnd64(seed) & MAX_PAGE;
		bool dup = !page;

		for (size_t i = 0; i < uk && !dup; i++)
			dup = U[i] == page;
		if (!dup)
			U[uk++] = page;
	}
}

/*
 * Groups of pages whose probes start at the same slot in every table of
 * up to 1024 slots, the groups' slots next to each other: long runs where
 * deleting a page shifts pages of several homes back.
 */
static void universe_colliding(size_t groups, size_t per, unsigned *seed)
{
	size_t got[16] = { 0 };
	uint64_t base = 1 + (uint64_t)(rand_r(seed) % 1000) * 1000003;

	uk = 0;
	for (uint64_t p = base; uk < groups * per; p++) {
		struct oaidx probe = { NULL, 1024, 0 };
		size_t home = oaidx_home(&probe, p);

		if (home < groups && got[home] < per) {
			got[home]++;
			U[uk++] = p;
		}
	}
}

/* ---- operations ------------------------------------------------------------- */

static void put(struct btab *t, uint64_t page, uint32_t payload)
{
	struct bentry e = make_entry(page, payload);
	size_t cap = t->ix.cap;
	int i = m_find(page);

	expect(btab_put(t, &e) == 0, "put of page %#llx failed", (unsigned long long)page);
	growths += t->ix.cap != cap;
	if (i >= 0)
		M[i].payload = payload;
	else
		M[mn++] = (struct mentry){ page, payload };
}

/* Whether the index slot after the one naming e is taken (e is inside a run). */
static bool inside_run(const struct btab *t, const struct bentry *e)
{
	uint32_t v = (uint32_t)(e - t->e) + 1;

	for (size_t s = 0; s < t->ix.cap; s++)
		if (t->ix.v[s] == v)
			return t->ix.v[oaidx_next(&t->ix, s)] != 0;
	return false;
}

static void del(struct btab *t, uint64_t page, unsigned *seed)
{
	struct bentry *e = btab_find(t, addr_in(page, seed));
	int i = m_find(page);

	expect(e, "page %#llx to delete is not found", (unsigned long long)page);
	mid_run_dels += inside_run(t, e);
	btab_del(t, e);
	M[i] = M[--mn];
}

static void m_drop_range(uint64_t start, uint64_t end)
{
	for (size_t i = 0; i < mn;) {
		uint64_t a = M[i].page << 12;

		if (a >= start && a < end)
			M[i] = M[--mn];
		else
			i++;
	}
}

/* drop_range over many entries: a walk that deletes and stays in place. */
static void walk_drop(struct btab *t, uint64_t start, uint64_t end)
{
	for (size_t i = 0; i < t->n;) {
		uint64_t a = t->e[i].page << 12;

		if (a >= start && a < end)
			btab_del(t, &t->e[i]);
		else
			i++;
	}
	m_drop_range(start, end);
}

/* drop_range over a short range: one lookup per page (stopping at the top). */
static void lookup_drop(struct btab *t, uint64_t start, uint64_t end)
{
	for (uint64_t a = start; a < end && a >= start; a += 4096) {
		struct bentry *e = btab_find(t, a);

		if (e)
			btab_del(t, e);
	}
	m_drop_range(start, end);
}

/* [lo, lo + pages pages), or to the end of the address space. */
static uint64_t end_of(uint64_t lo, uint64_t pages)
{
	return lo + (pages << 12) > lo ? lo + (pages << 12) : UINT64_MAX;
}

/* A range to drop: a few pages from page, or between two pages of the universe. */
static void range(uint64_t page, unsigned *seed, uint64_t *start, uint64_t *end)
{
	uint64_t hi = U[(size_t)rand_r(seed) % uk];

	*start = page << 12;
	if (rand_r(seed) % 4) {
		*end = end_of(*start, 1 + (unsigned)rand_r(seed) % 64);
		return;
	}
	if (hi < page) {
		*start = hi << 12;
		hi = page;
	}
	/* up to hi's page, or through it */
	*end = rand_r(seed) % 2 ? hi << 12 : end_of(hi << 12, 1);
}

/*
 * The mix of operations, in thousandths: the table fills (and grows),
 * churns, and drains, by phases of 500 steps.
 */
struct mix {
	unsigned put, replace, del, find, walk, lookup, all;
};

static const struct mix FILL = { 750, 60, 60, 120, 8, 2, 0 };
static const struct mix CHURN = { 400, 100, 300, 150, 40, 10, 0 };
static const struct mix DRAIN = { 150, 50, 600, 100, 80, 18, 2 };

static const struct mix *phase(unsigned step)
{
	switch ("FFFCCDDF"[(step - 1) / 500 % 8]) {
	case 'F':
		return &FILL;
	case 'C':
		return &CHURN;
	default:
		return &DRAIN;
	}
}

static void step_random(struct btab *t, unsigned step, unsigned *seed)
{
	const struct mix *x = phase(step);
	unsigned op = (unsigned)rand_r(seed) % 1000;
	uint64_t page = U[(size_t)rand_r(seed) % uk], start, end;

	if (op < x->put) {
		put(t, page, (uint32_t)rand_r(seed));
	} else if ((op -= x->put) < x->replace) { /* one that is in */
		if (mn)
			put(t, M[(size_t)rand_r(seed) % mn].page, (uint32_t)rand_r(seed));
	} else if ((op -= x->replace) < x->del) {
		if (mn)
			del(t, M[(size_t)rand_r(seed) % mn].page, seed);
	} else if ((op -= x->del) < x->find) {
		const struct bentry *e = btab_find(t, addr_in(page, seed));
		int i = m_find(page);

		expect(!e == (i < 0), "page %#llx found %d, in the model %d",
		       (unsigned long long)page, e != NULL, i >= 0);
		expect(!e || same_entry(e, page, M[i].payload), "page %#llx, wrong payload",
		       (unsigned long long)page);
	} else if ((op -= x->find) < x->walk) {
		range(page, seed, &start, &end);
		walk_drop(t, start, end);
	} else if ((op -= x->walk) < x->lookup) {
		start = page << 12;
		end = end_of(start, 1 + (unsigned)rand_r(seed) % 16);
		lookup_drop(t, start, end);
	} else if ((op -= x->lookup) < x->all) { /* everything, as when the mm goes */
		walk_drop(t, 0, UINT64_MAX);
	}
}

static int kept_dir = -1; /* a kept run's directory, -1 in memory */

/* The kept file loaded as a killed agent's successor would: the model's. */
static void compare_loaded(unsigned *seed)
{
	struct btab l;
	size_t torn;

	btab_init(&l);
	expect(btab_load(&l, kept_dir, "tab", &torn) == 0, "the kept table does not load");
	expect(torn == 0, "%zu entries torn with no agent killed", torn);
	compare(&l, seed);
	btab_fini(&l);
}

static void run_one(unsigned run)
{
	unsigned seed = 7000 + run;
	struct btab t;

	cur_run = run;
	cur_step = 0;
	mn = 0;
	switch (run % 5) {
	case 0:
		universe_dense(40); /* a few pages: replacement and deletion */
		break;
	case 1:
		universe_dense(1500); /* growth */
		break;
	case 2:
		universe_colliding(6, 40, &seed);
		break;
	case 3:
		universe_colliding(2, 120, &seed);
		break;
	default:
		universe_sparse(1200, &seed);
		break;
	}
	btab_init(&t);
	if (kept_dir >= 0)
		expect(btab_keep(&t, kept_dir, "run") == 0, "the table cannot be kept");
	compare(&t, &seed);
	for (cur_step = 1; cur_step <= STEPS; cur_step++) {
		step_random(&t, cur_step, &seed);
		compare(&t, &seed);
		if (kept_dir >= 0 && cur_step % 397 == 0) {
			/* A copy of the file as it is now, loaded. */
			expect(linkat(kept_dir, "run", kept_dir, "tab", 0) == 0 ||
				       (unlinkat(kept_dir, "tab", 0) == 0 &&
					linkat(kept_dir, "run", kept_dir, "tab", 0) == 0),
			       "cannot link the kept file");
			compare_loaded(&seed);
			/* The load wrote "tab" anew; "run" is still the table's. */
			unlinkat(kept_dir, "tab", 0);
		}
	}
	btab_fini(&t);
}

static int temp_dir(char *path)
{
	int fd;

	assert_non_null(mkdtemp(path));
	fd = open(path, O_RDONLY | O_DIRECTORY);
	assert_true(fd >= 0);
	return fd;
}

static void remove_dir(int fd, const char *path)
{
	unlinkat(fd, "run", 0);
	unlinkat(fd, "tab", 0);
	close(fd);
	rmdir(path);
}

static void kept_sequences(void **state)
{
	char path[] = "/tmp/cksm-btab.XXXXXX";

	(void)state;
	kept_dir = temp_dir(path);
	for (unsigned run = 0; run < 5; run++)
		run_one(run);
	remove_dir(kept_dir, path);
	kept_dir = -1;
}

static void random_sequences(void **state)
{
	(void)state;
	mid_run_dels = growths = 0;
	for (unsigned run = 0; run < 15; run++)
		run_one(run);
	/* The sequences did reach what they are for. */
	assert_true(mid_run_dels > 100);
	assert_true(growths >= 10);
}

/* An empty table finds nothing, and its walks and checks do nothing. */
static void empty(void **state)
{
	struct btab t;
	const char *why;

	(void)state;
	btab_init(&t);
	assert_null(btab_find(&t, 0));
	assert_null(btab_find(&t, 1ULL << 12));
	assert_null(btab_find(&t, UINT64_MAX));
	assert_int_equal(btab_check(&t, &why), 0);
	assert_null(why);
	mn = 0;
	walk_drop(&t, 0, UINT64_MAX);
	assert_int_equal(t.n, 0);
	btab_fini(&t);
	btab_fini(&t); /* leaves an empty table behind: twice is harmless */
}

/* Each invariant, broken on purpose, is caught, and passes once restored. */
static void check_catches(void **state)
{
	struct btab t;
	const char *why;
	struct bentry saved;
	unsigned seed = 1;
	size_t k;

	(void)state;
	btab_init(&t);
	for (uint32_t i = 1; i <= 100; i++) {
		struct bentry e = make_entry(i * 3, i);

		assert_int_equal(btab_put(&t, &e), 0);
	}
	assert_int_equal(btab_check(&t, &why), 0);
	for (int c = 0; c < 8; c++) {
		k = (size_t)rand_r(&seed) % t.n;
		saved = t.e[k];
		switch (c) {
		case 0:
			t.e[k].page = 0;
			break;
		case 1: /* a page the index does not know */
			t.e[k].page = 1000;
			break;
		case 2: /* a page twice */
			t.e[k].page = t.e[(k + 1) % t.n].page;
			break;
		case 3:
			t.e[k].kind = 0;
			break;
		case 4:
			t.e[k].kind = BACKED_REMOTE + 1;
			break;
		case 5:
			t.e[k].kind = BACKED_REMOTE;
			t.e[k].nrem = 0;
			break;
		case 6:
			t.e[k].kind = BACKED_REMOTE;
			t.e[k].nrem = BTAB_REPLICAS + 1;
			break;
		default: /* the index counts one more than the array */
			t.ix.n++;
			break;
		}
		why = NULL;
		assert_int_equal(btab_check(&t, &why), -EUCLEAN);
		assert_non_null(why);
		if (c == 7)
			t.ix.n--;
		t.e[k] = saved;
		assert_int_equal(btab_check(&t, &why), 0);
	}
	btab_fini(&t);
}

/* A kept file's published count, as a killed agent left it (the head's n). */
static void set_published(int dir, uint64_t n)
{
	int fd = openat(dir, "run", O_WRONLY);

	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, &n, sizeof(n), 16), (ssize_t)sizeof(n));
	close(fd);
}

/*
 * The states a killed agent can leave between two stores, made from a
 * kept table of pages 1..8 with the table's own operations, then loaded:
 * pages (1 << c) | ... present or absent as each says.
 */
static void kept_killed(void **state)
{
	char path[] = "/tmp/cksm-btab.XXXXXX";
	int dir = temp_dir(path);

	(void)state;
	for (int c = 0; c < 4; c++) {
		struct btab t, l;
		struct bentry e, old;
		size_t torn, want_torn = 1;
		uint32_t payload[10] = { 0, 1, 2, 3, 4, 5, 6, 7, 8, 0 };

		btab_init(&t);
		assert_int_equal(btab_keep(&t, dir, "run"), 0);
		for (uint32_t i = 1; i <= 8; i++) {
			e = make_entry(i, i);
			assert_int_equal(btab_put(&t, &e), 0);
		}
		switch (c) {
		case 0: /* page 9 written whole, its count not published yet */
			e = make_entry(9, 9);
			assert_int_equal(btab_put(&t, &e), 0);
			set_published(dir, 8);
			want_torn = 0;
			break;
		case 1: /* page 3 deleted: killed mid-way through the copy of the last entry */
			old = t.e[2];
			assert_int_equal(t.e[2].page, 3);
			btab_del(&t, &t.e[2]);
			memcpy(&t.e[2], &old, sizeof(old) / 2);
			set_published(dir, 8);
			payload[3] = 0;
			break;
		case 2: /* page 5 replaced: the new entry published, the old one not deleted yet */
			old = t.e[4];
			e = make_entry(5, 50);
			assert_int_equal(btab_put(&t, &e), 0);
			memcpy(&t.e[4], &old, sizeof(old));
			set_published(dir, 9);
			payload[5] = 50;
			break;
		default: /* page 2 deleted: the last entry copied over it, the count not dropped */
			btab_del(&t, &t.e[1]);
			set_published(dir, 8);
			payload[2] = 0;
			break;
		}
		btab_init(&l);
		assert_int_equal(linkat(dir, "run", dir, "tab", 0), 0);
		assert_int_equal(btab_load(&l, dir, "tab", &torn), 0);
		assert_int_equal(torn, want_torn);
		for (uint32_t p = 1; p <= 9; p++) {
			const struct bentry *x = btab_find(&l, (uint64_t)p << 12);

			if (!payload[p]) {
				assert_null(x);
				continue;
			}
			assert_non_null(x);
			assert_true(same_entry(x, p, payload[p]));
		}
		/* What loaded is kept again, and loads again the same. */
		btab_fini(&l);
		btab_init(&l);
		assert_int_equal(btab_load(&l, dir, "tab", &torn), 0);
		assert_int_equal(torn, 0);
		btab_fini(&l);
		btab_fini(&t);
		unlinkat(dir, "tab", 0);
		unlinkat(dir, "run", 0);
	}
	remove_dir(dir, path);
}

static const struct CMUnitTest tests[] = {
	cmocka_unit_test(random_sequences), cmocka_unit_test(empty),
	cmocka_unit_test(check_catches),    cmocka_unit_test(kept_sequences),
	cmocka_unit_test(kept_killed),
};

UNIT_MAIN(tests)
