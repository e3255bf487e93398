/*
 * rrefs - this node's references on other nodes' dups.
 *
 * A page backed remotely holds one reference on the first replica it
 * would come back from; the shard that owns the content counts, per
 * (dup, node), how many pages of each node hold it, so that a dup with
 * references is never pruned. This table keeps those counts on the
 * agent's side, keyed by (holder node, slot, generation), and marks each
 * count that changed since the shards were last told (dirty). A count
 * taken at zero is forgotten: the shard knows it went.
 *
 * Layout: a dense array of counts found through an oaidx; deletion moves
 * the last count into the hole.
 *
 * Invariants (rrefs_check): every count is found through the index under
 * its own key and the index holds nothing else; no two counts share a
 * key; a count at zero or below is dirty (it has yet to be told).
 *
 * Thread-safe: one lock of its own, a leaf (nothing is taken under it).
 */
#ifndef CKSM_RREFS_H
#define CKSM_RREFS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cid.h"
#include "pool.h"

/* A dup on another node (where that node serves it is the backing's). */
struct rdup {
	uint32_t node, slot, gen;
};

/*
 * A count to tell a shard: this node's references on a dup. node 0 means
 * one of this node's own pool slots (ref names it), otherwise another
 * node's dup (node, ref.slot, ref.gen).
 */
struct ref_count {
	struct pool_ref ref;
	struct cid id;
	uint32_t node;
	uint32_t count;
};

struct rrefs;

/* An empty table, or NULL when out of memory. */
struct rrefs *rrefs_create(void);
void rrefs_destroy(struct rrefs *r);

/*
 * This node's references on d (a dup of content id) changed by delta.
 * Returns 0, or -ENOMEM (the count is not kept; logged by the caller).
 */
int rrefs_change(struct rrefs *r, const struct rdup *d, const struct cid *id, int32_t delta);

/* The count of d could not be sent: it is taken again later. */
void rrefs_unsent(struct rrefs *r, const struct rdup *d);

/*
 * Does the shard count references of this node on d? True when the count
 * last sent was above zero and the count still is: every count it gets
 * from now on is, so the dup is not released under a page evicted
 * against it now (remote.c).
 */
bool rrefs_told(struct rrefs *r, const struct rdup *d);

/* Every count is to be sent again (a shard registered: it may lack any). */
void rrefs_all_dirty(struct rrefs *r);

/*
 * Take up to max counts that changed, into out (negative counts as 0);
 * those at zero are forgotten once taken. Returns how many were taken.
 */
size_t rrefs_take(struct rrefs *r, struct ref_count *out, size_t max);

/* Visit every count above zero (for a shard's resync). */
typedef void (*rrefs_fn)(void *arg, uint32_t node, struct pool_ref ref, const struct cid *id,
			 uint32_t count);
void rrefs_foreach(struct rrefs *r, rrefs_fn fn, void *arg);

/* The count of d, 0 if none (for tests). */
int32_t rrefs_count(struct rrefs *r, const struct rdup *d);

/* Counts kept (for tests). */
size_t rrefs_size(struct rrefs *r);

/* Check the invariants above: 0, or -EUCLEAN with *why naming the broken one. */
int rrefs_check(struct rrefs *r, const char **why);

#endif
