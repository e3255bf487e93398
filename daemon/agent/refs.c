/*
 * refs - the reference changes the agent tells the shards.
 *
 * Each shard counts, per dup and node, the pages of that node backed by
 * the dup; a dup with references is never pruned. The agent sends
 * RefUpdate messages with the counts that changed: for a slot of its own
 * pool the slot's count (pool_refs), marked here when an entry on it
 * comes or goes (a slot marked twice is sent once); for another node's
 * dup, this node's count kept in the rrefs table. A count that could not
 * be sent is marked again; a shard that registers gets every count. A
 * slot the shard released is not counted to it any more: its dup is gone
 * there, though pages evicted against it as the release crossed their
 * count still use it here until they come back.
 */
#include <stdlib.h>

#include "backing_int.h"
#include "log.h"

/*
 * This node's references on one of its own slots changed: mark it, to send
 * the slot's count (pool_refs) at the next flush.
 */
void ref_slot_changed(struct backing *b, struct pool_ref ref, const struct cid *id)
{
	int32_t pos;

	if (ref.slot >= pool_slots(b->pool))
		return;
	pthread_mutex_lock(&b->refs_lock);
	pos = b->ref_pos[ref.slot];
	if (pos && b->refs[pos - 1].ref.gen != ref.gen)
		pos = 0; /* an older generation's change: keep both */
	if (!pos && b->nrefs < pool_slots(b->pool)) {
		b->refs[b->nrefs] = (struct ref_count){ ref, *id, 0, 0 };
		b->ref_pos[ref.slot] = (int32_t)++b->nrefs;
	}
	pthread_mutex_unlock(&b->refs_lock);
}

void ref_remote_changed(struct backing *b, const struct rdup *r, const struct cid *id, int32_t d)
{
	if (rrefs_change(b->rrefs, r, id, d))
		log_error("out of memory counting references on remote dups");
}

void backing_refs_unsent(struct backing *b, const struct ref_count *r)
{
	struct rdup d = { r->node, r->ref.slot, r->ref.gen };

	if (!r->node)
		ref_slot_changed(b, r->ref, &r->id);
	else
		rrefs_unsent(b->rrefs, &d);
}

static void mark_slot(void *arg, struct pool_ref ref, const struct cid *id, bool held,
		      uint32_t refs)
{
	(void)refs;
	if (held)
		ref_slot_changed(arg, ref, id);
}

void backing_refs_all_dirty(struct backing *b)
{
	rrefs_all_dirty(b->rrefs);
	pool_foreach(b->pool, mark_slot, b);
}

void backing_foreach_rref(struct backing *b, rrefs_fn fn, void *arg)
{
	rrefs_foreach(b->rrefs, fn, arg);
}

size_t backing_take_refs(struct backing *b, struct ref_count *out, size_t max)
{
	size_t n = rrefs_take(b->rrefs, out, max);

	pthread_mutex_lock(&b->refs_lock);
	while (b->nrefs && n < max) {
		struct ref_count *r = &b->refs[--b->nrefs];

		if (b->ref_pos[r->ref.slot] == (int32_t)b->nrefs + 1)
			b->ref_pos[r->ref.slot] = 0;
		out[n++] = *r; /* changed, even if back where it was */
	}
	pthread_mutex_unlock(&b->refs_lock);
	return n;
}
