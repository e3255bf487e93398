/*
 * The stable tree against a reference model: random sequences of reports,
 * creations, reference changes, node deaths and revivals, prunes and shard
 * restarts (rebuilt by resync), with the model's decisions, orders and
 * canonical dump compared after every step, and the invariants checked.
 * The model keeps everything in plain arrays and decides by the rules in
 * stree.c's header, written out naively.
 */
#include <errno.h>
#include <stdlib.h>

#include "coord/stree.h"
#include "unit.h"

#define NN    6	 /* nodes */
#define NC    40 /* contents */
#define MAXD  32
#define MPS   4 /* max_page_sharing, small to make chains */
#define R     2
#define PRUNE 3

struct mdup {
	uint32_t node, slot, gen, refs[NN], idle;
};

struct mcontent {
	bool in_tree;
	unsigned ndups;
	struct mdup d[MAXD];
	int pending;	 /* node + 1 */
	unsigned idle;	 /* prune ticks without dups, order or report */
	unsigned waited; /* prune ticks the outstanding create has waited */
};

struct model {
	struct mcontent c[NC];
	bool seen_cur[NC], seen_old[NC];
	bool live[NN];
	uint64_t room[NN];
	uint32_t rack[NN];
	uint32_t next_slot;
};

struct order {
	uint32_t node;
	uint64_t lo;
	unsigned nsrc;
};

static struct order got[64], want[64];
static unsigned ngot, nwant;
static struct model M;
static unsigned cur_run; /* for messages */

static uint64_t HI(unsigned c)
{
	return 0x00aa000000000000ULL | c;
}

static uint64_t LO(unsigned c)
{
	return 0x9e3779b97f4a7c15ULL * (c + 1);
}

static uint32_t NID(unsigned n)
{
	return 100 + n * 7;
}

static void on_create(void *arg, uint32_t node, uint64_t hi, uint64_t lo,
		      const struct stree_dupref *src, unsigned nsrc)
{
	(void)arg;
	(void)hi;
	(void)src;
	got[ngot++] = (struct order){ node, lo, nsrc };
}

static void on_release(void *arg, uint64_t hi, uint64_t lo, const struct stree_dupref *d)
{
	(void)arg;
	(void)hi;
	(void)lo;
	(void)d;
}

static const struct stree_ops ops = { on_create, on_release };

/* ---- the model's rules ---- */

static uint32_t total(const struct mdup *d)
{
	uint32_t s = 0;

	for (int i = 0; i < NN; i++)
		s += d->refs[i];
	return s;
}

static int m_holds(const struct mcontent *c, unsigned n)
{
	for (unsigned i = 0; i < c->ndups; i++)
		if (c->d[i].node == n)
			return (int)i;
	return -1;
}

static int m_local_room(const struct mcontent *c, unsigned n)
{
	for (unsigned i = 0; i < c->ndups; i++)
		if (c->d[i].node == n && total(&c->d[i]) < MPS)
			return (int)i;
	return -1;
}

static unsigned m_holder_nodes(const struct mcontent *c, bool room)
{
	bool seen[NN] = { false };
	unsigned k = 0;

	for (unsigned i = 0; i < c->ndups; i++) {
		const struct mdup *d = &c->d[i];

		if (!M.live[d->node] || (room && total(d) >= MPS) || seen[d->node])
			continue;
		seen[d->node] = true;
		k++;
	}
	return k;
}

static bool m_backs_remote(const struct mcontent *c)
{
	for (unsigned i = 0; i < c->ndups; i++)
		for (unsigned n = 0; n < NN; n++)
			if (c->d[i].refs[n] && n != c->d[i].node)
				return true;
	return false;
}

static bool m_needs_replica(const struct mcontent *c)
{
	return m_backs_remote(c) && m_holder_nodes(c, false) < R;
}

static int m_placement(const struct mcontent *c)
{
	int best = -1;
	unsigned best_rd = 0;

	uint32_t best_refs = 0;

	for (unsigned n = 0; n < NN; n++) {
		unsigned rd = 0;
		uint32_t refs = 0;

		if (!M.live[n] || !M.room[n] || m_holds(c, n) >= 0)
			continue;
		for (unsigned i = 0; i < c->ndups; i++) {
			rd += M.rack[c->d[i].node] == M.rack[n];
			refs += c->d[i].refs[n];
		}
		if (best < 0 || rd < best_rd ||
		    (rd == best_rd &&
		     (refs > best_refs || (refs == best_refs && M.room[n] > M.room[best])))) {
			best = (int)n;
			best_rd = rd;
			best_refs = refs;
		}
	}
	return best;
}

static void m_order(unsigned ci)
{
	struct mcontent *c = &M.c[ci];
	unsigned ns = 0;
	int n;

	if (c->pending)
		return;
	n = m_placement(c);
	if (n < 0)
		return;
	for (unsigned i = 0; i < c->ndups; i++)
		ns += M.live[c->d[i].node];
	c->pending = n + 1;
	c->waited = 0;
	M.room[n]--;
	want[nwant++] = (struct order){ NID((unsigned)n), LO(ci), ns };
}

static void m_report(unsigned node, unsigned ci, uint32_t pages, struct stree_decision *out)
{
	struct mcontent *c = &M.c[ci];
	unsigned withroom = 0;
	int h;

	out->action = STREE_LEAVE;
	out->shared = false;
	out->ndups = 0;
	if (!c->in_tree) {
		bool seen = M.seen_cur[ci] || M.seen_old[ci];

		if (!seen)
			M.seen_cur[ci] = true;
		if (!seen && pages < 2)
			return;
		c->in_tree = true;
	}
	out->shared = true;
	c->idle = 0;
	h = m_local_room(c, node);
	if (h >= 0) {
		out->action = STREE_BACK_LOCAL;
		out->ndups = 1;
		out->dups[0] = (struct stree_dupref){ NID(node), c->d[h].slot, c->d[h].gen };
		return;
	}
	withroom = m_holder_nodes(c, true);
	if (withroom >= R) {
		unsigned ord[MAXD], k = 0;

		for (unsigned i = 0; i < c->ndups; i++)
			if (M.live[c->d[i].node] && total(&c->d[i]) < MPS)
				ord[k++] = i;
		/* same rack first, fewest references, lowest node id */
		for (unsigned a = 0; a < k; a++)
			for (unsigned b = a + 1; b < k; b++) {
				struct mdup *x = &c->d[ord[a]], *y = &c->d[ord[b]];
				bool xr = M.rack[x->node] == M.rack[node],
				     yr = M.rack[y->node] == M.rack[node];
				bool y_first =
					(yr && !xr) ||
					(xr == yr &&
					 (total(y) < total(x) ||
					  (total(y) == total(x) && NID(y->node) < NID(x->node))));

				if (y_first) {
					unsigned t = ord[a];

					ord[a] = ord[b];
					ord[b] = t;
				}
			}
		out->action = STREE_BACK_REMOTE;
		for (unsigned i = 0; i < k && i < STREE_MAX_REPLICAS; i++) {
			c->d[ord[i]].idle = 0; /* named: not released for dup_idle */
			out->dups[out->ndups++] =
				(struct stree_dupref){ NID(c->d[ord[i]].node), c->d[ord[i]].slot,
						       c->d[ord[i]].gen };
		}
		return;
	}
	if (c->pending)
		return;
	if (M.room[node]) {
		out->action = STREE_CREATE_DUP;
		c->pending = (int)node + 1;
		c->waited = 0;
		M.room[node]--;
		return;
	}
	m_order(ci);
}

static void m_dump(FILE *out)
{
	for (unsigned ci = 0; ci < NC; ci++) {
		struct mcontent *c = &M.c[ci];
		unsigned ord[MAXD];

		if (!c->in_tree || !c->ndups)
			continue;
		fprintf(out, "%016llx%016llx", (unsigned long long)HI(ci),
			(unsigned long long)LO(ci));
		for (unsigned i = 0; i < c->ndups; i++)
			ord[i] = i;
		for (unsigned a = 0; a < c->ndups; a++)
			for (unsigned b = a + 1; b < c->ndups; b++)
				if (NID(c->d[ord[b]].node) < NID(c->d[ord[a]].node)) {
					unsigned t = ord[a];

					ord[a] = ord[b];
					ord[b] = t;
				}
		for (unsigned i = 0; i < c->ndups; i++) {
			struct mdup *d = &c->d[ord[i]];
			bool any = false;

			fprintf(out, " dup=%u/%u/%u refs=", NID(d->node), d->slot, d->gen);
			for (unsigned n = 0; n < NN; n++)
				if (d->refs[n]) {
					fprintf(out, "%s%u:%u", any ? "," : "", NID(n), d->refs[n]);
					any = true;
				}
		}
		fputc('\n', out);
	}
}

/* Dumps are sorted by id; the model's are by content index: sort lines. */
static int cmp_line(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static char *sorted(char *text)
{
	char *lines[NC + 1], *save, *l, *out = calloc(1, strlen(text) + 2);
	size_t n = 0;

	for (l = strtok_r(text, "\n", &save); l; l = strtok_r(NULL, "\n", &save))
		lines[n++] = l;
	qsort(lines, n, sizeof(*lines), cmp_line);
	for (size_t i = 0; i < n; i++) {
		strcat(out, lines[i]);
		strcat(out, "\n");
	}
	return out;
}

static char *dump_tree(const struct stree *t)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	stree_dump(t, f);
	fclose(f);
	return buf;
}

static char *dump_model(void)
{
	char *buf = NULL, *s;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	m_dump(f);
	fclose(f);
	s = sorted(buf);
	free(buf);
	return s;
}

static int by_order(const void *a, const void *b)
{
	const struct order *x = a, *y = b;

	if (x->lo != y->lo)
		return x->lo < y->lo ? -1 : 1;
	return (int)x->node - (int)y->node;
}

static void compare(struct stree *t, unsigned step)
{
	char why[256], *a = dump_tree(t), *b = dump_model();

	if (stree_check(t, why, sizeof(why))) {
		fprintf(stderr, "run %u step %u: invariant broken: %s\n", cur_run, step, why);
		fail();
	}
	if (strcmp(a, b)) {
		fprintf(stderr, "run %u step %u: tree and model differ\n--- tree\n%s--- model\n%s",
			cur_run, step, a, b);
		fail();
	}
	assert_int_equal(ngot, nwant);
	qsort(got, ngot, sizeof(*got), by_order);
	qsort(want, nwant, sizeof(*want), by_order);
	for (unsigned i = 0; i < ngot; i++) {
		assert_int_equal(got[i].node, want[i].node);
		assert_true(got[i].lo == want[i].lo);
		assert_int_equal(got[i].nsrc, want[i].nsrc);
	}
	ngot = nwant = 0;
	free(a);
	free(b);
}

static struct stree *fresh_tree(void)
{
	struct stree_params p = { MPS, R, true, PRUNE, 1u << 20 };
	struct stree *t = stree_create(&p, &ops, NULL);

	for (unsigned n = 0; n < NN; n++) {
		assert_int_equal(stree_node_add(t, NID(n), M.rack[n]), 0);
		stree_node_room(t, NID(n), M.room[n]);
		if (!M.live[n])
			stree_node_dead(t, NID(n));
	}
	return t;
}

/* A shard restart: a new tree, rebuilt from what the nodes hold and reference. */
static struct stree *restart(struct stree *t)
{
	stree_destroy(t);
	/* The filter and create orders are soft: they start empty. */
	memset(M.seen_cur, 0, sizeof(M.seen_cur));
	memset(M.seen_old, 0, sizeof(M.seen_old));
	for (unsigned ci = 0; ci < NC; ci++) {
		M.c[ci].pending = 0;
		M.c[ci].in_tree = M.c[ci].ndups > 0;
		M.c[ci].idle = 0;
		for (unsigned i = 0; i < M.c[ci].ndups; i++)
			M.c[ci].d[i].idle = 0;
	}
	t = fresh_tree();
	/* A dead node's references are not resynced: they are gone. */
	for (unsigned n = 0; n < NN; n++)
		for (unsigned ci = 0; ci < NC && !M.live[n]; ci++)
			for (unsigned i = 0; i < M.c[ci].ndups; i++)
				M.c[ci].d[i].refs[n] = 0;
	/* Resync node by node, each in its own order. */
	for (unsigned n = 0; n < NN; n++)
		for (unsigned ci = NC; ci-- > 0;)
			for (unsigned i = 0; i < M.c[ci].ndups; i++) {
				struct mdup *d = &M.c[ci].d[i];
				struct stree_dupref r = { NID(d->node), d->slot, d->gen };

				if (d->node == n || d->refs[n])
					assert_int_equal(stree_resync(t, NID(n), HI(ci), LO(ci), &r,
								      d->refs[n], d->node == n),
							 0);
			}
	return t;
}

/*
 * Repairs after a death or a prune touch many contents at once; the order
 * in which the tree visits them decides which node gets which create (room
 * runs out), so the model checks each order instead of predicting it: the
 * content needs a replica, has no create outstanding, and the node is
 * live, has room, and holds no dup of it.
 */
static void adopt_bulk_orders(void)
{
	for (unsigned i = 0; i < ngot; i++) {
		unsigned ci = NC, n = NN;

		for (unsigned k = 0; k < NC; k++)
			if (LO(k) == got[i].lo)
				ci = k;
		for (unsigned k = 0; k < NN; k++)
			if (NID(k) == got[i].node)
				n = k;
		assert_true(ci < NC && n < NN);
		assert_true(m_needs_replica(&M.c[ci]));
		assert_int_equal(M.c[ci].pending, 0);
		assert_true(M.live[n] && M.room[n] > 0);
		assert_int_equal(m_holds(&M.c[ci], n), -1);
		M.c[ci].pending = (int)n + 1;
		M.c[ci].waited = 0;
		M.room[n]--;
	}
	ngot = nwant = 0;
}

static void step_random(struct stree *t, unsigned step, unsigned *seed)
{
	unsigned op = (unsigned)rand_r(seed) % 100, n = (unsigned)rand_r(seed) % NN;
	unsigned ci = (unsigned)rand_r(seed) % NC;
	struct mcontent *c = &M.c[ci];
	struct stree_decision a, b;

	(void)step;
	if (op < 45) { /* report */
		uint32_t pages = 1 + (unsigned)rand_r(seed) % 3;

		if (!M.live[n])
			return;
		assert_int_equal(stree_report(t, NID(n), HI(ci), LO(ci), pages, &a), 0);
		m_report(n, ci, pages, &b);
		assert_int_equal(a.action, b.action);
		assert_int_equal(a.shared, b.shared);
		assert_int_equal(a.ndups, b.ndups);
		for (unsigned i = 0; i < a.ndups; i++) {
			assert_int_equal(a.dups[i].node, b.dups[i].node);
			assert_int_equal(a.dups[i].slot, b.dups[i].slot);
		}
	} else if (op < 60) { /* a pending create completes or fails */
		if (!c->pending)
			return;
		n = (unsigned)c->pending - 1;
		if (rand_r(seed) % 5) {
			uint32_t slot = ++M.next_slot;

			assert_int_equal(stree_dup_created(t, NID(n), HI(ci), LO(ci), slot, 1), 0);
			c->d[c->ndups++] = (struct mdup){ .node = n, .slot = slot, .gen = 1 };
			c->pending = 0;
			if (m_needs_replica(c))
				m_order(ci);
		} else {
			stree_dup_failed(t, NID(n), HI(ci), LO(ci));
			c->pending = 0;
		}
	} else if (op < 85) { /* a reference change, valid or not */
		struct stree_dupref r;
		int32_t delta = (int32_t)(rand_r(seed) % 5) - 2;
		unsigned i;
		int want_rc = 0;

		if (!c->ndups || !M.live[n])
			return;
		i = (unsigned)rand_r(seed) % c->ndups;
		r = (struct stree_dupref){ NID(c->d[i].node), c->d[i].slot, c->d[i].gen };
		if (rand_r(seed) % 10 == 0) {
			r.slot += 1000; /* forged */
			want_rc = -ENOENT;
		} else if ((int64_t)c->d[i].refs[n] + delta < 0) {
			want_rc = -ERANGE;
		} else if ((int64_t)total(&c->d[i]) + delta > MPS) {
			want_rc = -E2BIG;
		}
		assert_int_equal(stree_ref(t, NID(n), HI(ci), LO(ci), &r, delta), want_rc);
		if (!want_rc) {
			c->d[i].refs[n] = (uint32_t)((int32_t)c->d[i].refs[n] + delta);
			if (total(&c->d[i]))
				c->d[i].idle = 0;
			if (m_needs_replica(c))
				m_order(ci);
		}
	} else if (op < 89) { /* a node dies */
		unsigned live = 0;

		for (unsigned k = 0; k < NN; k++)
			live += M.live[k];
		if (!M.live[n] || live <= 2)
			return;
		stree_node_dead(t, NID(n));
		M.live[n] = false;
		M.room[n] = 0;
		for (unsigned k = 0; k < NC; k++) {
			struct mcontent *x = &M.c[k];

			if (x->pending == (int)n + 1)
				x->pending = 0;
			/* its references on the others' dups stay */
			for (unsigned i = 0; i < x->ndups;) {
				if (x->d[i].node == n) {
					x->d[i] = x->d[--x->ndups];
					continue;
				}
				i++;
			}
		}
		adopt_bulk_orders();
	} else if (op < 91) { /* a dead node is back, with an empty pool, and no references */
		if (M.live[n])
			return;
		stree_node_live(t, NID(n));
		stree_node_forget(t, NID(n));
		for (unsigned k = 0; k < NC; k++)
			for (unsigned i = 0; i < M.c[k].ndups; i++)
				M.c[k].d[i].refs[n] = 0;
		M.live[n] = true;
		M.room[n] = 8;
		stree_node_room(t, NID(n), 8);
	} else if (op < 96) { /* prune tick */
		stree_prune(t);
		for (unsigned k = 0; k < NC; k++) {
			struct mcontent *x = &M.c[k];

			for (unsigned i = 0; i < x->ndups;) {
				if (total(&x->d[i]) || ++x->d[i].idle < PRUNE) {
					i++;
					continue;
				}
				x->d[i] = x->d[--x->ndups];
			}
			if (x->pending && ++x->waited >= PRUNE)
				x->pending = 0;
			if (x->in_tree && !x->ndups && !x->pending && ++x->idle >= PRUNE)
				x->in_tree = false;
		}
		adopt_bulk_orders();
	} else if (op < 98) { /* the unstable filter ages */
		stree_age(t);
		memcpy(M.seen_old, M.seen_cur, sizeof(M.seen_old));
		memset(M.seen_cur, 0, sizeof(M.seen_cur));
	} else {
		/* handled by the caller: restart */
	}
}

static void random_sequences(void **state)
{
	(void)state;
	for (unsigned run = 0; run < 60; run++) {
		unsigned seed = 1000 + run;

		cur_run = run;
		struct stree *t;

		memset(&M, 0, sizeof(M));
		for (unsigned n = 0; n < NN; n++) {
			M.live[n] = true;
			M.room[n] = 6 + n;
			M.rack[n] = n % 3;
		}
		t = fresh_tree();
		ngot = nwant = 0;
		for (unsigned step = 0; step < 1500; step++) {
			if (rand_r(&seed) % 200 == 0) {
				t = restart(t);
				ngot = nwant = 0;
			} else {
				step_random(t, step, &seed);
			}
			compare(t, step);
			/* Pools refill now and then, as heartbeats would tell. */
			if (step % 97 == 0)
				for (unsigned n = 0; n < NN; n++)
					if (M.live[n]) {
						M.room[n] = 6;
						stree_node_room(t, NID(n), 6);
					}
		}
		stree_destroy(t);
	}
}

/*
 * A node offering its own content again is not a second sighting: only
 * another report (another node, or a fresh one) puts it in the tree.
 */
static void again_is_not_twice(void **state)
{
	struct stree_params p = { 4, 2, true, 3, 1024 };
	struct stree *t = stree_create(&p, &ops, NULL);
	struct stree_decision d;

	(void)state;
	stree_node_add(t, 1, 0);
	stree_node_add(t, 2, 1);
	assert_int_equal(stree_report(t, 1, 0x11, 0x22, 1, &d), 0);
	assert_false(d.shared);
	for (int i = 0; i < 5; i++) {
		assert_int_equal(stree_report_again(t, 1, 0x11, 0x22, 1, &d), 0);
		assert_false(d.shared);
	}
	/* Filter aged (the first sighting forgotten), refreshed by "again". */
	stree_age(t);
	assert_int_equal(stree_report_again(t, 1, 0x11, 0x22, 1, &d), 0);
	assert_false(d.shared);
	/* Node 2 holds it too. */
	assert_int_equal(stree_report(t, 2, 0x11, 0x22, 1, &d), 0);
	assert_true(d.shared);
	assert_int_equal(stree_report_again(t, 1, 0x11, 0x22, 1, &d), 0);
	assert_true(d.shared);
	/* Two pages of one node in one report: shared at once, again or not. */
	assert_int_equal(stree_report_again(t, 1, 0x33, 0x44, 2, &d), 0);
	assert_true(d.shared);
	stree_destroy(t);
}

/*
 * A content whose pages stay where they are (no process of theirs is
 * served by libcksm) is kept in the tree and said shared, but gets no dup
 * until a node whose page may go reports it; then as ever.
 */
static void stays_makes_no_dup(void **state)
{
	struct stree_params p = { 4, 2, true, 3, 1024 };
	struct stree *t = stree_create(&p, &ops, NULL);
	struct stree_decision d;
	struct stree_stats s;

	(void)state;
	ngot = 0;
	stree_node_add(t, 1, 0);
	stree_node_add(t, 2, 1);
	stree_node_room(t, 1, 0); /* no room: a create would be ordered elsewhere */
	stree_node_room(t, 2, 4);
	for (int i = 0; i < 3; i++) {
		assert_int_equal(stree_report_flags(t, 1, 0x11, 0x22, 32, STREE_STAYS, &d), 0);
		assert_true(d.shared);
		assert_int_equal(d.action, STREE_LEAVE);
		assert_int_equal(
			stree_report_flags(t, 2, 0x11, 0x22, 1, STREE_STAYS | STREE_AGAIN, &d), 0);
		assert_true(d.shared);
		assert_int_equal(d.action, STREE_LEAVE);
	}
	for (int i = 0; i < 2 * PRUNE; i++)
		stree_prune(t);
	assert_int_equal(ngot, 0);
	stree_stats(t, &s);
	assert_int_equal(s.dups, 0);
	/* Node 2's pages may go now: it makes the dup. */
	assert_int_equal(stree_report_flags(t, 2, 0x11, 0x22, 2, STREE_AGAIN, &d), 0);
	assert_true(d.shared);
	assert_int_equal(d.action, STREE_CREATE_DUP);
	stree_destroy(t);
}

static void hostile(void **state)
{
	struct stree_params p = { 4, 2, true, 3, 1024 };
	struct stree *t = stree_create(&p, &ops, NULL);
	struct stree_dupref r = { 1, 5, 1 }, forged = { 1, 6, 1 }, other = { 2, 5, 1 };
	struct stree_decision d;
	char *before, *after;

	(void)state;
	stree_node_add(t, 1, 0);
	stree_node_add(t, 2, 1);
	stree_node_room(t, 1, 4);
	/* Unknown node, zero pages. */
	assert_int_equal(stree_report(t, 9, 1, 1, 1, &d), -ENOENT);
	assert_int_equal(stree_report(t, 1, 1, 1, 0, &d), -EINVAL);
	/* Twice seen: node 1 is asked to create. */
	assert_int_equal(stree_report(t, 1, 1, 1, 2, &d), 0);
	assert_int_equal(d.action, STREE_CREATE_DUP);
	/* Only the node that was asked may create. */
	assert_int_equal(stree_dup_created(t, 2, 1, 1, 5, 1), -EPERM);
	assert_int_equal(stree_dup_created(t, 1, 7, 7, 5, 1), -ENOENT);
	assert_int_equal(stree_dup_created(t, 1, 1, 1, 5, 1), 0);
	assert_int_equal(stree_dup_created(t, 1, 1, 1, 5, 1), -EPERM);
	assert_int_equal(stree_ref(t, 1, 1, 1, &r, 2), 0);
	before = dump_tree(t);
	/* Forged dups, negative counts, above max_page_sharing: refused, no change. */
	assert_int_equal(stree_ref(t, 1, 1, 1, &forged, 1), -ENOENT);
	assert_int_equal(stree_ref(t, 1, 1, 1, &other, 1), -ENOENT);
	assert_int_equal(stree_ref(t, 1, 2, 2, &r, 1), -ENOENT);
	assert_int_equal(stree_ref(t, 2, 1, 1, &r, -1), -ERANGE);
	assert_int_equal(stree_ref(t, 1, 1, 1, &r, -3), -ERANGE);
	assert_int_equal(stree_ref(t, 2, 1, 1, &r, 3), -E2BIG);
	/* Counts set outright: capped at max_page_sharing, forged dups refused. */
	assert_int_equal(stree_ref_set(t, 2, 1, 1, &r, 100), 0); /* 2 + 1 = 3 at most */
	assert_int_equal(stree_ref(t, 2, 1, 1, &r, 1), -E2BIG);
	assert_int_equal(stree_ref_set(t, 2, 1, 1, &r, 0), 0);
	assert_int_equal(stree_ref_set(t, 1, 1, 1, &forged, 1), -ENOENT);
	assert_int_equal(stree_resync(t, 2, 1, 1, &r, 1, true), -EPERM);
	assert_int_equal(stree_resync(t, 2, 1, 1, &r, 100, false), -ERANGE);
	/* A dup on a dead node cannot be vouched for by another node. */
	{
		struct stree_dupref dead = { 3, 9, 1 };

		stree_node_add(t, 3, 2);
		stree_node_dead(t, 3);
		assert_int_equal(stree_resync(t, 2, 1, 1, &dead, 1, false), -ENOENT);
		assert_int_equal(stree_resync(t, 3, 1, 1, &dead, 0, true), -ENOENT);
	}
	after = dump_tree(t);
	assert_string_equal(before, after);
	free(before);
	free(after);
	stree_destroy(t);
}

static void chains_and_collapse(void **state)
{
	struct stree_params p = { 2, 1, false, 2, 1024 };
	struct stree *t = stree_create(&p, &ops, NULL);
	struct stree_dupref a = { 1, 10, 1 }, b = { 1, 11, 1 };
	struct stree_decision d;
	struct stree_stats s;

	(void)state;
	stree_node_add(t, 1, 0);
	stree_node_room(t, 1, 10);
	assert_int_equal(stree_report(t, 1, 3, 3, 4, &d), 0);
	assert_int_equal(d.action, STREE_CREATE_DUP);
	assert_int_equal(stree_dup_created(t, 1, 3, 3, 10, 1), 0);
	assert_int_equal(stree_ref(t, 1, 3, 3, &a, 2), 0); /* full: max_page_sharing 2 */
	/* The local dup is full (max_page_sharing 2): a second dup on the same
	 * node makes a chain. */
	assert_int_equal(stree_report(t, 1, 3, 3, 4, &d), 0);
	assert_int_equal(d.action, STREE_CREATE_DUP);
	assert_int_equal(stree_dup_created(t, 1, 3, 3, 10, 1), -EEXIST);
	assert_int_equal(stree_dup_created(t, 1, 3, 3, 11, 1), 0);
	assert_int_equal(stree_ref(t, 1, 3, 3, &b, 2), 0);
	assert_int_equal(stree_ref(t, 1, 3, 3, &b, 1), -E2BIG);
	stree_stats(t, &s);
	assert_int_equal(s.stable_node_chains, 1);
	assert_int_equal(s.stable_node_dups, 2);
	assert_int_equal(s.pages_shared, 2);
	assert_int_equal(s.pages_sharing, 2);
	/* Both full now: the report backs nothing and orders a third dup. */
	assert_int_equal(stree_report(t, 1, 3, 3, 5, &d), 0);
	assert_int_equal(d.action, STREE_CREATE_DUP);
	stree_dup_failed(t, 1, 3, 3);
	/* References drop: the chain collapses back to one dup after the prune. */
	assert_int_equal(stree_ref(t, 1, 3, 3, &a, -2), 0);
	stree_prune(t);
	stree_prune(t);
	stree_stats(t, &s);
	assert_int_equal(s.dups, 1);
	assert_int_equal(s.stable_node_chains, 0);
	assert_int_equal(stree_ref(t, 1, 3, 3, &b, -2), 0);
	stree_prune(t);
	stree_prune(t);
	stree_stats(t, &s);
	assert_int_equal(s.dups, 0);
	/* Without dups the content waits prune_ticks for room, then goes. */
	assert_int_equal(s.contents, 1);
	stree_prune(t);
	stree_prune(t);
	stree_stats(t, &s);
	assert_int_equal(s.contents, 0);
	stree_destroy(t);
}

/*
 * Nodes 10 (rack 0) and 20 (rack rack20), R = 1, 3 prune ticks, and
 * content (1, 1) with one dup on node 10, slot 5 generation 1, which
 * nothing references.
 */
static struct stree *one_dup_tree(uint32_t rack20)
{
	struct stree_params p = { 16, 1, true, 3, 1024 };
	struct stree *t = stree_create(&p, &ops, NULL);
	struct stree_decision d;

	stree_node_add(t, 10, 0);
	stree_node_add(t, 20, rack20);
	stree_node_room(t, 10, 4);
	assert_int_equal(stree_report(t, 10, 1, 1, 2, &d), 0);
	assert_int_equal(d.action, STREE_CREATE_DUP);
	assert_int_equal(stree_dup_created(t, 10, 1, 1, 5, 1), 0);
	return t;
}

static uint64_t dups_after(struct stree *t, unsigned ticks)
{
	struct stree_stats s;

	while (ticks--)
		stree_prune(t);
	stree_stats(t, &s);
	return s.dups;
}

/*
 * A dup named in a BACK_REMOTE answer is not released for prune_ticks: the
 * node may evict against it before its count arrives, and a release
 * crossing that count would leave its page with no copy anywhere.
 */
static void named_dup_kept(void **state)
{
	struct stree *t = one_dup_tree(0);
	struct stree_decision d;

	(void)state;
	/* Node 10's pages went back: the dup is idle, two ticks of three. */
	assert_int_equal(dups_after(t, 2), 1);
	assert_int_equal(stree_report(t, 20, 1, 1, 1, &d), 0);
	assert_int_equal(d.action, STREE_BACK_REMOTE);
	assert_int_equal(d.dups[0].node, 10);
	assert_int_equal(dups_after(t, 2), 1);
	/* No count came in prune_ticks: it goes. */
	assert_int_equal(dups_after(t, 1), 0);
	stree_destroy(t);
}

/*
 * A referrer declared dead keeps its references: its processes may be
 * waiting for their agent, their pages backed by the dup. They go when it
 * is forgotten (back and resynced, or dead too long).
 */
static void dead_referrer_kept(void **state)
{
	struct stree *t = one_dup_tree(0);
	struct stree_dupref r = { 10, 5, 1 };
	struct stree_stats s;

	(void)state;
	assert_int_equal(stree_ref_set(t, 20, 1, 1, &r, 3), 0);
	stree_node_dead(t, 20);
	assert_int_equal(dups_after(t, 6), 1);
	stree_stats(t, &s);
	assert_int_equal(s.refs, 3);
	stree_node_forget(t, 20);
	assert_int_equal(dups_after(t, 3), 0);
	stree_destroy(t);
}

static void matrix_and_node_stats(void **state)
{
	struct stree *t = one_dup_tree(1);
	struct stree_dupref r = { 10, 5, 1 };
	struct stree_decision d;
	uint32_t ids[4];
	uint64_t m[16], held, refs;
	size_t n;

	(void)state;
	assert_int_equal(stree_ref(t, 10, 1, 1, &r, 2), 0);
	assert_int_equal(stree_ref(t, 20, 1, 1, &r, 3), 0);
	/* With R = 1 the one dup serves node 20 remotely. */
	assert_int_equal(stree_report(t, 20, 1, 1, 1, &d), 0);
	assert_int_equal(d.action, STREE_BACK_REMOTE);
	assert_int_equal(d.dups[0].node, 10);
	n = stree_matrix(t, ids, m, 4);
	assert_int_equal(n, 2);
	assert_int_equal(ids[0], 10);
	assert_int_equal(m[0 * n + 0], 2); /* node 10 from itself */
	assert_int_equal(m[1 * n + 0], 3); /* node 20 from node 10 */
	assert_int_equal(m[0 * n + 1] + m[1 * n + 1], 0);
	{
		uint64_t h[4], r2[4];

		assert_int_equal(stree_nodes_stats(t, ids, h, r2, 4), 2);
		held = h[1];
		refs = r2[1];
		assert_int_equal(held, 0); /* node 20 */
		assert_int_equal(refs, 3);
		held = h[0];
		refs = r2[0];
		assert_int_equal(held, 1); /* node 10 */
		assert_int_equal(refs, 2);
		assert_int_equal(h[0], 1);
		assert_int_equal(r2[0], 2);
		assert_int_equal(h[1], 0);
		assert_int_equal(r2[1], 3);
	}
	/* Round statistics appear when a prune round completes, in slices. */
	{
		struct stree_stats rs;

		stree_round_stats(t, &rs);
		assert_int_equal(rs.contents, 0);
		assert_true(stree_prune_idle(t));
		assert_true(stree_prune_step(t, 1)); /* one entry: one slice is the round */
		stree_round_stats(t, &rs);
		assert_int_equal(rs.contents, 1);
		assert_int_equal(rs.refs, 5);
		assert_int_equal(rs.pages_shared, 1);
		assert_int_equal(rs.pages_sharing, 4);
	}
	stree_destroy(t);
}

static const struct CMUnitTest tests[] = {
	cmocka_unit_test(matrix_and_node_stats),
	cmocka_unit_test(named_dup_kept),
	cmocka_unit_test(dead_referrer_kept),
	cmocka_unit_test(random_sequences),
	cmocka_unit_test(again_is_not_twice),
	cmocka_unit_test(stays_makes_no_dup),
	cmocka_unit_test(hostile),
	cmocka_unit_test(chains_and_collapse),
};

UNIT_MAIN(tests)
