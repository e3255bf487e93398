/*
 * stree - a shard's stable tree.
 *
 * Layout. Entries live in one dense array (56 bytes each) found through an
 * oaidx of their 32-bit positions (open addressing, at most 3/4 full,
 * deletion by backward shift). An entry holds its first dup inline
 * and further dups of its chain in a heap array; a dup holds up to two
 * per-node reference counts inline and more in a heap array. The common
 * content (one dup, referenced from one or two nodes) costs one entry and
 * nothing else. Nodes are named by their wire id everywhere outside; in
 * the tree they are 16-bit indices into the node table.
 *
 * Invariants (stree_check):
 *  - one entry per content id, found through the index;
 *  - no dup serves more than max_page_sharing references, and its total
 *    is the sum of its per-node counts, none of them zero;
 *  - every dup is on a live node;
 *  - a content whose dups back pages of other nodes has dups on R
 *    distinct nodes, or a create order outstanding, or no live node with
 *    room left to take one; room that appears later (a node reports free
 *    slots, a node comes back) is put to use at the next prune tick.
 * A node may hold several dups of one content: more than max_page_sharing
 * of its own pages hold it.
 *
 * Decisions for a report of content c by node n (pages = its copies):
 *  1. c unknown: seen before (unstable filter) or pages >= 2 -> enter the
 *     tree; then as below. Otherwise LEAVE.
 *  2. n holds a dup of c with room -> BACK_LOCAL.
 *  3. merge_across_nodes and c has dups with room on at least R distinct
 *     live nodes -> BACK_REMOTE, replicas in n's rack first, then by
 *     fewest references. A dup named so is not released for dup_idle
 *     (its idle count starts again).
 *  4. a create is outstanding, or no page of c on n may be evicted (the
 *     report says it stays) -> LEAVE.
 *  5. n has pool room -> CREATE_DUP on n (n then has the local references).
 *  6. otherwise, if merging across nodes is on, order a create on the
 *     placement node (fewest dups of c in its rack, then most references
 *     to c, then most room, then the first added) with c's dups as
 *     sources; LEAVE.
 * Node deaths and the prune tick give orders through stree_ops.
 */
#include "stree.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "cid.h"
#include "oaidx.h"
#include "unstable.h"

#define INLINE_REFS    2
#define NODE_HASH_SIZE (2 * STREE_MAX_NODES)
#define MAX_DUPS       129 /* dup 0 inline + 128 in the chain array */
#define MAX_NREFS      255 /* nodes referencing one dup (8-bit count) */
#define MAX_TICKS      250 /* 8-bit idle counters */

struct sref {
	uint16_t node; /* node index */
	uint16_t count;
};

struct sdup {
	uint32_t slot;
	uint32_t gen;
	uint16_t node;	/* holder's node index */
	uint16_t total; /* sum of counts */
	uint8_t nrefs;
	uint8_t idle;	 /* prune ticks spent with total == 0 */
	uint16_t refcap; /* > INLINE_REFS: refs are on the heap */
	union {
		struct sref in[INLINE_REFS];
		struct sref *heap;
	} r;
};

struct entry {
	uint64_t hi, lo;
	struct sdup d0;	   /* the first dup, valid when ndups > 0 */
	struct sdup *more; /* dups 1..ndups-1 */
	uint16_t pending;  /* node index + 1 ordered to create a dup, 0 none */
	uint8_t ndups;
	uint8_t morecap;
	uint8_t idle;	/* prune ticks without dups, order or report */
	uint8_t waited; /* prune ticks the outstanding create has waited */
};

struct node {
	uint32_t id;
	uint32_t rack;
	uint64_t room; /* free pool slots it reported */
	bool live;
	bool used;
};

struct stree {
	struct stree_params p;
	const struct stree_ops *ops;
	void *arg;
	struct entry *e; /* dense */
	size_t n, cap;
	struct oaidx idx; /* position + 1 with the id's tag, by id.lo */
	struct node nodes[STREE_MAX_NODES];
	uint16_t node_hash[NODE_HASH_SIZE]; /* index + 1 by id, 0 empty */
	size_t cursor;			    /* next entry of the prune round, 0 between rounds */
	struct stree_stats acc, last;	    /* stats of the round in progress, of the last one */
	unsigned nnodes;
	struct unstable un;
	size_t heap_bytes; /* chains and ref arrays */
	bool repair_due;   /* room appeared: the next prune restores R */
};

/* ---- small helpers -------------------------------------------------------- */

static struct sref *refs_of(struct sdup *d)
{
	return d->refcap > INLINE_REFS ? d->r.heap : d->r.in;
}

static const struct sref *crefs_of(const struct sdup *d)
{
	return d->refcap > INLINE_REFS ? d->r.heap : d->r.in;
}

static struct sdup *dup_at(struct entry *e, unsigned i)
{
	return i == 0 ? &e->d0 : &e->more[i - 1];
}

static const struct sdup *cdup_at(const struct entry *e, unsigned i)
{
	return i == 0 ? &e->d0 : &e->more[i - 1];
}

/* Node id -> index through a small open-addressing table (every digest asks). */
#define NODE_HASH NODE_HASH_SIZE

static unsigned node_slot(uint32_t id)
{
	return (id * 2654435761u) % NODE_HASH;
}

static int node_index(const struct stree *t, uint32_t id)
{
	for (unsigned s = node_slot(id);; s = (s + 1) % NODE_HASH) {
		uint16_t v = t->node_hash[s];

		if (!v)
			return -1;
		if (t->nodes[v - 1].id == id)
			return v - 1;
	}
}

static struct stree_dupref dupref(const struct stree *t, const struct sdup *d)
{
	return (struct stree_dupref){ t->nodes[d->node].id, d->slot, d->gen };
}

static uint32_t count_of(const struct sdup *d, uint16_t node)
{
	const struct sref *r = crefs_of(d);

	for (unsigned i = 0; i < d->nrefs; i++)
		if (r[i].node == node)
			return r[i].count;
	return 0;
}

/* Set node's count on d (0 removes it). */
static int set_count(struct stree *t, struct sdup *d, uint16_t node, uint32_t count)
{
	struct sref *r = refs_of(d);
	unsigned i;

	for (i = 0; i < d->nrefs && r[i].node != node; i++)
		;
	if (i < d->nrefs) {
		d->total = (uint16_t)(d->total - r[i].count + count);
		if (count) {
			r[i].count = (uint16_t)count;
		} else {
			r[i] = r[--d->nrefs];
		}
		return 0;
	}
	if (!count)
		return 0;
	if (d->nrefs == MAX_NREFS)
		return -E2BIG;
	if (d->nrefs == INLINE_REFS && d->refcap <= INLINE_REFS) {
		struct sref *h = malloc(8 * sizeof(*h));

		if (!h)
			return -ENOMEM;
		memcpy(h, d->r.in, sizeof(d->r.in));
		d->r.heap = h;
		d->refcap = 8;
		t->heap_bytes += 8 * sizeof(*h);
		r = h;
	} else if (d->refcap > INLINE_REFS && d->nrefs == d->refcap) {
		struct sref *h = realloc(d->r.heap, 2u * d->refcap * sizeof(*h));

		if (!h)
			return -ENOMEM;
		t->heap_bytes += d->refcap * sizeof(*h);
		d->r.heap = h;
		d->refcap = (uint16_t)(2 * d->refcap);
		r = h;
	}
	r[d->nrefs].node = node;
	r[d->nrefs].count = (uint16_t)count;
	d->nrefs++;
	d->total = (uint16_t)(d->total + count);
	return 0;
}

static void dup_clear(struct stree *t, struct sdup *d)
{
	if (d->refcap > INLINE_REFS) {
		t->heap_bytes -= d->refcap * sizeof(struct sref);
		free(d->r.heap);
	}
	memset(d, 0, sizeof(*d));
}

/* Does any dup of e back pages of a node other than its holder? */
static bool backs_remote(const struct entry *e)
{
	for (unsigned i = 0; i < e->ndups; i++) {
		const struct sdup *d = cdup_at(e, i);
		const struct sref *r = crefs_of(d);

		for (unsigned k = 0; k < d->nrefs; k++)
			if (r[k].node != d->node)
				return true;
	}
	return false;
}

static int holds(const struct entry *e, uint16_t node)
{
	for (unsigned i = 0; i < e->ndups; i++)
		if (cdup_at(e, i)->node == node)
			return (int)i;
	return -1;
}

/* A dup of e on node with room for one more reference, or -1. */
static int local_room(const struct stree *t, const struct entry *e, uint16_t node)
{
	for (unsigned i = 0; i < e->ndups; i++) {
		const struct sdup *d = cdup_at(e, i);

		if (d->node == node && d->total < t->p.max_page_sharing)
			return (int)i;
	}
	return -1;
}

/* Distinct live nodes holding a dup of e (with room, if room is set). */
static unsigned holder_nodes(const struct stree *t, const struct entry *e, bool room)
{
	unsigned n = 0;

	for (unsigned i = 0; i < e->ndups; i++) {
		const struct sdup *d = cdup_at(e, i);
		bool first = true;

		if (!t->nodes[d->node].live || (room && d->total >= t->p.max_page_sharing))
			continue;
		for (unsigned j = 0; j < i && first; j++) {
			const struct sdup *o = cdup_at(e, j);

			first = !(o->node == d->node &&
				  (!room || o->total < t->p.max_page_sharing));
		}
		n += first;
	}
	return n;
}

/* ---- the index -------------------------------------------------------------- */

/*
 * An index value holds position + 1 in its low POS_BITS and 5 bits of the
 * id above them, so a probe past other ids rarely touches their entries.
 */
#define POS_BITS    27
#define POS_MASK    ((1u << POS_BITS) - 1)
#define MAX_ENTRIES (POS_MASK - 1)
#define IDX_START   768 /* entries the first index (1024 slots) holds */

static uint32_t tag_of(uint64_t lo)
{
	return (uint32_t)(lo >> (64 - (32 - POS_BITS))) << POS_BITS;
}

/* The index value naming the entry at pos. */
static uint32_t idx_value(const struct stree *t, size_t pos)
{
	return (uint32_t)(pos + 1) | tag_of(t->e[pos].lo);
}

/* The hash oaidx asks for by index value: the entry's id.lo. */
static uint64_t entry_hash(const void *ctx, uint32_t v)
{
	const struct stree *t = ctx;

	return t->e[(v & POS_MASK) - 1].lo;
}

static struct cid id_of(const struct entry *e)
{
	return (struct cid){ e->hi, e->lo };
}

static struct entry *find(const struct stree *t, uint64_t hi, uint64_t lo)
{
	const struct oaidx *x = &t->idx;
	uint32_t tag = tag_of(lo), v;
	struct cid id = { hi, lo };

	for (size_t s = oaidx_home(x, lo); (v = x->v[s]); s = oaidx_next(x, s)) {
		struct entry *e;

		if ((v & ~POS_MASK) != tag)
			continue;
		e = &t->e[(v & POS_MASK) - 1];
		if (cid_eq(id_of(e), id))
			return e;
	}
	return NULL;
}

/* Lookups are random: a large entry array gets huge pages where the kernel allows. */
static void advise_huge(void *p, size_t bytes)
{
	uintptr_t huge = 2u << 20, a = ((uintptr_t)p + huge - 1) & ~(huge - 1);
	uintptr_t e = ((uintptr_t)p + bytes) & ~(huge - 1);

	if (e > a)
		madvise((void *)a, e - a, MADV_HUGEPAGE);
}

static int grow(struct stree *t)
{
	if (t->n >= MAX_ENTRIES)
		return -ENOSPC; /* 134M contents per shard: add shards */
	if (t->n == t->cap) {
		size_t cap = t->cap ? t->cap * 2 : 1024;
		struct entry *ne = realloc(t->e, cap * sizeof(*ne));

		if (!ne)
			return -ENOMEM;
		t->e = ne;
		t->cap = cap;
		advise_huge(ne, cap * sizeof(*ne));
	}
	return oaidx_reserve(&t->idx, t->n + 1, entry_hash, t);
}

static struct entry *insert(struct stree *t, uint64_t hi, uint64_t lo)
{
	struct entry *e;

	if (grow(t))
		return NULL;
	e = &t->e[t->n];
	memset(e, 0, sizeof(*e));
	e->hi = hi;
	e->lo = lo;
	oaidx_put(&t->idx, lo, idx_value(t, t->n));
	t->n++;
	return e;
}

/* Remove e: drop its index value, move the last entry into its place. */
static void erase(struct stree *t, struct entry *e)
{
	size_t pos = (size_t)(e - t->e), last = t->n - 1;

	for (unsigned i = 0; i < e->ndups; i++)
		dup_clear(t, dup_at(e, i));
	if (e->more) {
		t->heap_bytes -= e->morecap * sizeof(struct sdup);
		free(e->more);
	}
	oaidx_del(&t->idx, oaidx_slot(&t->idx, e->lo, idx_value(t, pos)), entry_hash, t);
	if (pos != last) {
		size_t s = oaidx_slot(&t->idx, t->e[last].lo, idx_value(t, last));

		t->e[pos] = t->e[last];
		t->idx.v[s] = idx_value(t, pos);
	}
	t->n--;
}

/* ---- dups ------------------------------------------------------------------------ */

static struct sdup *add_dup(struct stree *t, struct entry *e, uint16_t node, uint32_t slot,
			    uint32_t gen)
{
	struct sdup *d;

	if (e->ndups == 0) {
		d = &e->d0;
	} else {
		if (e->ndups - 1u == e->morecap) {
			unsigned cap = e->morecap ? 2u * e->morecap : 2;
			struct sdup *m;

			if (cap > 255)
				return NULL;
			m = realloc(e->more, cap * sizeof(*m));
			if (!m)
				return NULL;
			t->heap_bytes += (cap - e->morecap) * sizeof(*m);
			e->more = m;
			e->morecap = (uint8_t)cap;
		}
		d = &e->more[e->ndups - 1];
	}
	memset(d, 0, sizeof(*d));
	d->node = node;
	d->slot = slot;
	d->gen = gen;
	e->ndups++;
	return d;
}

static void remove_dup(struct stree *t, struct entry *e, unsigned i)
{
	struct sdup *last = dup_at(e, e->ndups - 1u);

	dup_clear(t, dup_at(e, i));
	if (dup_at(e, i) != last) {
		*dup_at(e, i) = *last;
		memset(last, 0, sizeof(*last));
	}
	e->ndups--;
	if (e->ndups <= 1 && e->more) {
		t->heap_bytes -= e->morecap * sizeof(struct sdup);
		free(e->more);
		e->more = NULL;
		e->morecap = 0;
	}
}

static struct sdup *find_dup(struct entry *e, int node, uint64_t slot, uint32_t gen)
{
	for (unsigned i = 0; i < e->ndups; i++) {
		struct sdup *d = dup_at(e, i);

		if (d->node == node && d->slot == slot && d->gen == gen)
			return d;
	}
	return NULL;
}

/* ---- placement --------------------------------------------------------------------- */

/* References node holds on any dup of e: pages it would back locally. */
static uint32_t local_refs(const struct entry *e, uint16_t node)
{
	uint32_t n = 0;

	for (unsigned k = 0; k < e->ndups; k++)
		n += count_of(cdup_at(e, k), node);
	return n;
}

/*
 * The node that should take the next dup of e, or -1: among live nodes
 * with room that hold none yet, the one in a rack with fewest dups of e
 * (replicas in distinct failure domains), then with the most references
 * to e (its pages become local), then with the most room, then the first.
 */
static int placement(const struct stree *t, const struct entry *e)
{
	int best = -1;
	unsigned best_rack_dups = 0;
	uint32_t best_refs = 0;

	for (unsigned i = 0; i < t->nnodes; i++) {
		const struct node *nd = &t->nodes[i];
		unsigned rack_dups = 0;
		uint32_t refs;

		if (!nd->used || !nd->live || !nd->room || holds(e, (uint16_t)i) >= 0)
			continue;
		for (unsigned k = 0; k < e->ndups; k++)
			rack_dups += t->nodes[cdup_at(e, k)->node].rack == nd->rack;
		refs = local_refs(e, (uint16_t)i);
		if (best < 0 || rack_dups < best_rack_dups ||
		    (rack_dups == best_rack_dups &&
		     (refs > best_refs || (refs == best_refs && nd->room > t->nodes[best].room)))) {
			best = (int)i;
			best_rack_dups = rack_dups;
			best_refs = refs;
		}
	}
	return best;
}

/* Order a create of e on the placement node, from e's dups. */
static void order_create(struct stree *t, struct entry *e)
{
	struct stree_dupref src[STREE_MAX_REPLICAS];
	unsigned ns = 0;
	int n;

	if (e->pending || !t->ops || !t->ops->create)
		return;
	n = placement(t, e);
	if (n < 0)
		return;
	for (unsigned i = 0; i < e->ndups && ns < STREE_MAX_REPLICAS; i++)
		if (t->nodes[cdup_at(e, i)->node].live)
			src[ns++] = dupref(t, cdup_at(e, i));
	e->pending = (uint16_t)(n + 1);
	e->waited = 0;
	t->nodes[n].room--;
	t->ops->create(t->arg, t->nodes[n].id, e->hi, e->lo, src, ns);
}

/* Does e need more dups to back pages remotely with R replicas? */
static bool needs_replica(const struct stree *t, const struct entry *e)
{
	return backs_remote(e) && holder_nodes(t, e, false) < t->p.replicas;
}

/* ---- decisions ---------------------------------------------------------------------- */

static void back_remote(const struct stree *t, struct entry *e, uint16_t n,
			struct stree_decision *out)
{
	unsigned order[256], k = 0;

	for (unsigned i = 0; i < e->ndups; i++) {
		const struct sdup *d = cdup_at(e, i);

		if (t->nodes[d->node].live && d->total < t->p.max_page_sharing)
			order[k++] = i;
	}
	/* Same rack first, then fewest references, then lowest node id. */
	for (unsigned a = 1; a < k; a++)
		for (unsigned b = a; b > 0; b--) {
			const struct sdup *x = cdup_at(e, order[b - 1]), *y = cdup_at(e, order[b]);
			bool xr = t->nodes[x->node].rack == t->nodes[n].rack;
			bool yr = t->nodes[y->node].rack == t->nodes[n].rack;

			if (xr > yr ||
			    (xr == yr && (x->total < y->total ||
					  (x->total == y->total &&
					   t->nodes[x->node].id <= t->nodes[y->node].id))))
				break;
			unsigned tmp = order[b - 1];

			order[b - 1] = order[b];
			order[b] = tmp;
		}
	/* A dup named here is not released for dup_idle: the node may read
	 * it, compare and evict against it before its count comes (agents
	 * use what they were told for a third of that, remote.c). */
	out->action = STREE_BACK_REMOTE;
	out->ndups = 0;
	for (unsigned i = 0; i < k && out->ndups < STREE_MAX_REPLICAS; i++) {
		struct sdup *d = dup_at(e, order[i]);

		d->idle = 0;
		out->dups[out->ndups++] = dupref(t, d);
	}
}

void stree_prefetch(const struct stree *t, uint64_t hi, uint64_t lo)
{
	(void)hi;
	__builtin_prefetch(&t->idx.v[oaidx_home(&t->idx, lo)]);
	unstable_prefetch(&t->un, lo);
}

int stree_report_flags(struct stree *t, uint32_t node, uint64_t hi, uint64_t lo, uint32_t pages,
		       unsigned flags, struct stree_decision *out)
{
	bool again = flags & STREE_AGAIN;
	struct entry *e = find(t, hi, lo);
	int n = node_index(t, node), h;

	out->action = STREE_LEAVE;
	out->shared = false;
	out->ndups = 0;
	if (n < 0)
		return -ENOENT;
	if (pages == 0)
		return -EINVAL;
	if (!e) {
		bool seen = unstable_check_insert(&t->un, hi, lo);

		/* A node's own earlier report is not a second sighting. */
		if ((!seen || again) && pages < 2)
			return 0;
		e = insert(t, hi, lo);
		if (!e)
			return -ENOMEM;
	}
	e->idle = 0;
	out->shared = true;
	h = local_room(t, e, (uint16_t)n);
	if (h >= 0) {
		out->action = STREE_BACK_LOCAL;
		out->ndups = 1;
		out->dups[0] = dupref(t, dup_at(e, (unsigned)h));
		return 0;
	}
	if (t->p.merge_across_nodes && holder_nodes(t, e, true) >= t->p.replicas) {
		back_remote(t, e, (uint16_t)n, out);
		return 0;
	}
	if (e->pending || (flags & STREE_STAYS))
		return 0;
	if (t->nodes[n].room && e->ndups < MAX_DUPS) {
		out->action = STREE_CREATE_DUP;
		e->pending = (uint16_t)(n + 1);
		e->waited = 0;
		t->nodes[n].room--;
		return 0;
	}
	if (t->p.merge_across_nodes)
		order_create(t, e);
	return 0;
}

int stree_report(struct stree *t, uint32_t node, uint64_t hi, uint64_t lo, uint32_t pages,
		 struct stree_decision *out)
{
	return stree_report_flags(t, node, hi, lo, pages, 0, out);
}

int stree_report_again(struct stree *t, uint32_t node, uint64_t hi, uint64_t lo, uint32_t pages,
		       struct stree_decision *out)
{
	return stree_report_flags(t, node, hi, lo, pages, STREE_AGAIN, out);
}

int stree_dup_created(struct stree *t, uint32_t node, uint64_t hi, uint64_t lo, uint64_t slot,
		      uint32_t gen)
{
	struct entry *e = find(t, hi, lo);
	int n = node_index(t, node);

	if (!e || n < 0)
		return -ENOENT;
	if (e->pending != n + 1)
		return -EPERM;
	if (slot > UINT32_MAX)
		return -ERANGE;
	if (find_dup(e, n, slot, gen))
		return -EEXIST;
	if (!add_dup(t, e, (uint16_t)n, (uint32_t)slot, gen)) {
		e->pending = 0; /* the order cannot complete: forget it */
		return -ENOMEM;
	}
	e->pending = 0;
	/* More replicas may be due (backing remote pages, fewer than R). */
	if (needs_replica(t, e))
		order_create(t, e);
	return 0;
}

void stree_dup_failed(struct stree *t, uint32_t node, uint64_t hi, uint64_t lo)
{
	struct entry *e = find(t, hi, lo);
	int n = node_index(t, node);

	if (e && n >= 0 && e->pending == n + 1) {
		e->pending = 0;
		t->repair_due = true; /* try again at the next prune tick */
	}
}

/*
 * Node node's references on dup dr of content (hi, lo) become count (capped
 * so the dup's total stays within max_page_sharing when cap), or change
 * by delta (refused past the bounds).
 */
static int ref_change(struct stree *t, uint32_t node, uint64_t hi, uint64_t lo,
		      const struct stree_dupref *dr, bool set, uint32_t count, int32_t delta)
{
	struct entry *e = find(t, hi, lo);
	int n = node_index(t, node), holder = node_index(t, dr->node);
	struct sdup *d;
	uint32_t mine, others;
	int64_t now;
	int rc;

	if (!e || n < 0 || holder < 0)
		return -ENOENT;
	d = find_dup(e, holder, dr->slot, dr->gen);
	if (!d)
		return -ENOENT;
	mine = count_of(d, (uint16_t)n);
	others = d->total - mine;
	if (set) {
		/* The node knows best; the total stays within max_page_sharing. */
		now = count < t->p.max_page_sharing - others ? count
							     : t->p.max_page_sharing - others;
	} else {
		now = (int64_t)mine + delta;
		if (now < 0)
			return -ERANGE;
		if ((int64_t)others + now > (int64_t)t->p.max_page_sharing)
			return -E2BIG;
	}
	rc = set_count(t, d, (uint16_t)n, (uint32_t)now);
	if (rc)
		return rc;
	if (d->total)
		d->idle = 0;
	if (needs_replica(t, e))
		order_create(t, e);
	return 0;
}

int stree_ref(struct stree *t, uint32_t node, uint64_t hi, uint64_t lo,
	      const struct stree_dupref *dr, int32_t delta)
{
	return ref_change(t, node, hi, lo, dr, false, 0, delta);
}

int stree_ref_set(struct stree *t, uint32_t node, uint64_t hi, uint64_t lo,
		  const struct stree_dupref *dr, uint32_t refs)
{
	return ref_change(t, node, hi, lo, dr, true, refs, 0);
}

int stree_resync(struct stree *t, uint32_t node, uint64_t hi, uint64_t lo,
		 const struct stree_dupref *dr, uint32_t refs, bool held_here)
{
	struct entry *e = find(t, hi, lo);
	int n = node_index(t, node), holder = node_index(t, dr->node);
	struct sdup *d;

	if (n < 0 || holder < 0)
		return -ENOENT;
	if (held_here && holder != n)
		return -EPERM;
	/* A dup only a referencing node vouches for must be on a live node. */
	if (!t->nodes[holder].live || !t->nodes[n].live)
		return -ENOENT;
	if (dr->slot > UINT32_MAX || refs > t->p.max_page_sharing)
		return -ERANGE;
	if (!e && !(e = insert(t, hi, lo)))
		return -ENOMEM;
	d = find_dup(e, holder, dr->slot, dr->gen);
	if (!d) {
		d = add_dup(t, e, (uint16_t)holder, (uint32_t)dr->slot, dr->gen);
		if (!d)
			return -ENOMEM;
	}
	if ((int64_t)d->total - count_of(d, (uint16_t)n) + refs > t->p.max_page_sharing)
		return -E2BIG;
	t->repair_due = true; /* replicas are checked once resync settles */
	return set_count(t, d, (uint16_t)n, refs);
}

/* ---- nodes -------------------------------------------------------------------------- */

int stree_node_add(struct stree *t, uint32_t node, uint32_t rack)
{
	int i = node_index(t, node);

	if (i < 0) {
		if (t->nnodes == STREE_MAX_NODES)
			return -ENOSPC;
		unsigned s = node_slot(node);

		i = (int)t->nnodes++;
		t->nodes[i].used = true;
		t->nodes[i].id = node;
		while (t->node_hash[s])
			s = (s + 1) % NODE_HASH;
		t->node_hash[s] = (uint16_t)(i + 1);
	}
	t->nodes[i].rack = rack;
	t->nodes[i].live = true;
	return 0;
}

void stree_node_room(struct stree *t, uint32_t node, uint64_t free_slots)
{
	int i = node_index(t, node);

	if (i < 0)
		return;
	if (free_slots > t->nodes[i].room)
		t->repair_due = true;
	t->nodes[i].room = free_slots;
}

void stree_node_live(struct stree *t, uint32_t node)
{
	int i = node_index(t, node);

	if (i >= 0 && !t->nodes[i].live) {
		t->nodes[i].live = true;
		t->repair_due = true;
	}
}

void stree_node_dead(struct stree *t, uint32_t node)
{
	int n = node_index(t, node);

	if (n < 0)
		return;
	t->nodes[n].live = false;
	t->nodes[n].room = 0;
	for (size_t i = 0; i < t->n; i++) {
		struct entry *e = &t->e[i];

		if (e->pending == n + 1)
			e->pending = 0;
		/* Its references stay: its processes may live on, their pages
		 * waiting for their agent to come back (stree_node_forget). */
		for (unsigned k = 0; k < e->ndups;) {
			if (dup_at(e, k)->node == n) {
				remove_dup(t, e, k);
				continue;
			}
			k++;
		}
	}
	/* Restore R where pages are still backed remotely. */
	for (size_t i = 0; i < t->n; i++)
		if (needs_replica(t, &t->e[i]))
			order_create(t, &t->e[i]);
}

void stree_node_forget(struct stree *t, uint32_t node)
{
	int n = node_index(t, node);

	if (n < 0)
		return;
	for (size_t i = 0; i < t->n; i++) {
		struct entry *e = &t->e[i];

		for (unsigned k = 0; k < e->ndups; k++)
			set_count(t, dup_at(e, k), (uint16_t)n, 0);
	}
}

/* ---- pruning ------------------------------------------------------------------------- */

/* Add one entry to a stats accumulator. */
static void account(struct stree_stats *s, const struct entry *e)
{
	s->contents++;
	if (e->ndups > 1) {
		s->stable_node_chains++;
		s->stable_node_dups += e->ndups;
	}
	for (unsigned k = 0; k < e->ndups; k++) {
		const struct sdup *d = cdup_at(e, k);

		s->dups++;
		s->refs += d->total;
		if (d->total) {
			s->pages_shared++;
			s->pages_sharing += d->total - 1u;
		}
	}
}

bool stree_prune_step(struct stree *t, size_t max)
{
	size_t i = t->cursor, done = 0;

	if (i == 0) {
		memset(&t->acc, 0, sizeof(t->acc));
		t->repair_due = false; /* this round repairs what it visits */
	}
	while (i < t->n && done++ < max) {
		struct entry *e = &t->e[i];

		for (unsigned k = 0; k < e->ndups;) {
			struct sdup *d = dup_at(e, k);

			if (d->total || ++d->idle < t->p.prune_ticks) {
				k++;
				continue;
			}
			if (t->ops && t->ops->release) {
				struct stree_dupref r = dupref(t, d);

				t->ops->release(t->arg, e->hi, e->lo, &r);
			}
			remove_dup(t, e, k);
		}
		/* A create order not answered within prune_ticks is forgotten;
		 * the repair below may place it elsewhere. */
		if (e->pending && ++e->waited >= t->p.prune_ticks)
			e->pending = 0;
		/* A content without dups waits prune_ticks for a node with room,
		 * then goes (its nodes report it again in a later generation). */
		if (!e->ndups && !e->pending && ++e->idle >= t->p.prune_ticks) {
			erase(t, e); /* the last entry, not yet visited, moved into i */
			continue;
		}
		if (needs_replica(t, e))
			order_create(t, e);
		account(&t->acc, e);
		i++;
	}
	if (i < t->n) {
		t->cursor = i;
		return false;
	}
	t->cursor = 0;
	t->acc.pages_unshared = t->un.inserted;
	t->acc.bytes = t->cap * sizeof(*t->e) + oaidx_bytes(&t->idx) + t->heap_bytes +
		       unstable_bytes(&t->un);
	t->last = t->acc;
	return true;
}

void stree_prune(struct stree *t)
{
	t->cursor = 0;
	while (!stree_prune_step(t, SIZE_MAX)) {
	}
}

bool stree_prune_idle(const struct stree *t)
{
	return t->cursor == 0;
}

void stree_round_stats(const struct stree *t, struct stree_stats *s)
{
	*s = t->last;
}

void stree_age(struct stree *t)
{
	unstable_age(&t->un);
}

/* ---- stats, dump, checks ------------------------------------------------------------- */

void stree_stats(const struct stree *t, struct stree_stats *s)
{
	memset(s, 0, sizeof(*s));
	for (size_t i = 0; i < t->n; i++)
		account(s, &t->e[i]);
	s->pages_unshared = t->un.inserted;
	s->bytes = t->cap * sizeof(*t->e) + oaidx_bytes(&t->idx) + t->heap_bytes +
		   unstable_bytes(&t->un);
}

size_t stree_nodes_stats(const struct stree *t, uint32_t *ids, uint64_t *held, uint64_t *refs,
			 size_t max)
{
	size_t n = t->nnodes < max ? t->nnodes : max;

	for (size_t i = 0; i < n; i++) {
		ids[i] = t->nodes[i].id;
		held[i] = refs[i] = 0;
	}
	for (size_t i = 0; i < t->n; i++)
		for (unsigned k = 0; k < t->e[i].ndups; k++) {
			const struct sdup *d = cdup_at(&t->e[i], k);
			const struct sref *r = crefs_of(d);

			if (d->node < n)
				held[d->node]++;
			for (unsigned j = 0; j < d->nrefs; j++)
				if (r[j].node < n)
					refs[r[j].node] += r[j].count;
		}
	return n;
}

size_t stree_matrix(const struct stree *t, uint32_t *ids, uint64_t *m, size_t max_nodes)
{
	size_t n = t->nnodes < max_nodes ? t->nnodes : max_nodes;

	for (size_t i = 0; i < n; i++)
		ids[i] = t->nodes[i].id;
	memset(m, 0, n * n * sizeof(*m));
	for (size_t i = 0; i < t->n; i++)
		for (unsigned k = 0; k < t->e[i].ndups; k++) {
			const struct sdup *d = cdup_at(&t->e[i], k);
			const struct sref *r = crefs_of(d);

			for (unsigned j = 0; j < d->nrefs; j++)
				if (r[j].node < n && d->node < n)
					m[r[j].node * n + d->node] += r[j].count;
		}
	return n;
}

static int by_id(const void *a, const void *b)
{
	const struct entry *x = *(const struct entry *const *)a,
			   *y = *(const struct entry *const *)b;

	return cid_cmp(id_of(x), id_of(y));
}

int stree_visit(const struct stree *t, uint64_t hi, uint64_t lo, bool *seen, uint32_t *pending,
		void (*dup_cb)(void *arg, const struct stree_dupref *d, uint32_t total),
		void (*ref_cb)(void *arg, uint32_t node, uint32_t pages), void *arg)
{
	const struct entry *e = find(t, hi, lo);

	*seen = unstable_has(&t->un, hi, lo);
	*pending = e && e->pending ? t->nodes[e->pending - 1].id : 0;
	if (!e)
		return 0;
	for (unsigned k = 0; k < e->ndups; k++) {
		const struct sdup *d = cdup_at(e, k);
		const struct sref *r = crefs_of(d);
		struct stree_dupref dr = dupref(t, d);

		dup_cb(arg, &dr, d->total);
		for (unsigned j = 0; j < d->nrefs; j++)
			ref_cb(arg, t->nodes[r[j].node].id, r[j].count);
	}
	return 1;
}

void stree_dump(const struct stree *t, FILE *out)
{
	const struct entry **v = malloc((t->n ? t->n : 1) * sizeof(*v));

	if (!v)
		return;
	for (size_t i = 0; i < t->n; i++)
		v[i] = &t->e[i];
	qsort(v, t->n, sizeof(*v), by_id);
	for (size_t i = 0; i < t->n; i++) {
		const struct entry *e = v[i];
		char line[4096];
		int len = 0;
		unsigned ord[256]; /* dups by (node id, slot) */

		if (!e->ndups)
			continue; /* entries without dups are soft and not resynced */
		len += snprintf(line + len, sizeof(line) - (size_t)len, "%016llx%016llx",
				(unsigned long long)e->hi, (unsigned long long)e->lo);
		for (unsigned k = 0; k < e->ndups; k++)
			ord[k] = k;
		for (unsigned a = 1; a < e->ndups; a++)
			for (unsigned b = a; b > 0; b--) {
				const struct sdup *x = cdup_at(e, ord[b - 1]),
						  *y = cdup_at(e, ord[b]);
				uint32_t xi = t->nodes[x->node].id, yi = t->nodes[y->node].id;

				if (xi < yi || (xi == yi && x->slot <= y->slot))
					break;
				unsigned tmp = ord[b - 1];

				ord[b - 1] = ord[b];
				ord[b] = tmp;
			}
		for (unsigned k = 0; k < e->ndups; k++) {
			const struct sdup *d = cdup_at(e, ord[k]);

			len += snprintf(line + len, sizeof(line) - (size_t)len,
					" dup=%u/%u/%u refs=", t->nodes[d->node].id, d->slot,
					d->gen);
			/* references by ascending node id */
			{
				uint32_t last = 0;
				bool any = false;

				for (;;) {
					uint32_t best = UINT32_MAX;
					unsigned bj = 0;

					for (unsigned j = 0; j < t->nnodes; j++) {
						uint32_t nid = t->nodes[j].id;

						if (count_of(d, (uint16_t)j) &&
						    (!any || nid > last) && nid < best) {
							best = nid;
							bj = j;
						}
					}
					if (best == UINT32_MAX)
						break;
					len += snprintf(line + len, sizeof(line) - (size_t)len,
							"%s%u:%u", any ? "," : "", best,
							count_of(d, (uint16_t)bj));
					last = best;
					any = true;
				}
			}
		}
		fprintf(out, "%s\n", line);
	}
	free(v);
}

int stree_check(const struct stree *t, char *why, size_t len)
{
	for (size_t i = 0; i < t->n; i++) {
		const struct entry *e = &t->e[i];

		if (find(t, e->hi, e->lo) != e) {
			snprintf(why, len, "entry %zu not found through the index", i);
			return -EUCLEAN;
		}
		for (unsigned k = 0; k < e->ndups; k++) {
			const struct sdup *d = cdup_at(e, k);
			const struct sref *r = crefs_of(d);
			uint32_t sum = 0;

			for (unsigned j = 0; j < d->nrefs; j++) {
				if (!r[j].count) {
					snprintf(why, len, "a zero count kept on a dup");
					return -EUCLEAN;
				}
				sum += r[j].count;
			}
			if (sum != d->total || d->total > t->p.max_page_sharing) {
				snprintf(why, len, "dup total %u, sum %u, max %u", d->total, sum,
					 t->p.max_page_sharing);
				return -EUCLEAN;
			}
			if (!t->nodes[d->node].live) {
				snprintf(why, len, "a dup on dead node %u", t->nodes[d->node].id);
				return -EUCLEAN;
			}
		}
		if (!t->repair_due && needs_replica(t, e) && !e->pending && placement(t, e) >= 0) {
			snprintf(why, len,
				 "a content backs pages remotely with %u < R dups and no order",
				 e->ndups);
			return -EUCLEAN;
		}
	}
	return 0;
}

/* ---- life ------------------------------------------------------------------------------- */

struct stree *stree_create(const struct stree_params *p, const struct stree_ops *ops, void *arg)
{
	struct stree *t = calloc(1, sizeof(*t));

	if (!t)
		return NULL;
	t->p = *p;
	if (t->p.replicas < 1)
		t->p.replicas = 1;
	if (t->p.replicas > STREE_MAX_REPLICAS)
		t->p.replicas = STREE_MAX_REPLICAS;
	if (t->p.max_page_sharing < 2 || t->p.max_page_sharing > UINT16_MAX)
		t->p.max_page_sharing = 256;
	if (t->p.prune_ticks < 1)
		t->p.prune_ticks = 1;
	if (t->p.prune_ticks > MAX_TICKS)
		t->p.prune_ticks = MAX_TICKS;
	t->ops = ops;
	t->arg = arg;
	oaidx_init(&t->idx);
	if (oaidx_reserve(&t->idx, IDX_START, entry_hash, t) ||
	    unstable_init(&t->un, p->unstable_capacity ? p->unstable_capacity : 1u << 20)) {
		stree_destroy(t);
		return NULL;
	}
	return t;
}

void stree_destroy(struct stree *t)
{
	if (!t)
		return;
	while (t->n)
		erase(t, &t->e[t->n - 1]);
	free(t->e);
	oaidx_fini(&t->idx);
	unstable_fini(&t->un);
	free(t);
}
