/*
 * remote - where other nodes' dups are, and reading them.
 *
 * A shard's BACK_REMOTE decision names, for a content, its dups on other
 * nodes and where each holder serves reads. The backing remembers the
 * dups of the last REMOTE_IDS contents (direct-mapped by id: a newer one
 * takes an older one's place) for the offers that follow, and every
 * holder it was ever told of (never forgotten: entries may name it for
 * as long as they live). An entry of the table keeps its own replica
 * list, so a content forgotten here is still brought back.
 *
 * A shard releases a dup no page references for dup_idle, and counts
 * arrive a heartbeat after the eviction they follow: a page evicted
 * against a dup whose release crossed its count would have no copy
 * left. So a dup is evicted against only while the shard cannot release
 * it, checked again once the replica's bytes are in hand: while this
 * node's count on it, as last sent, is above zero (rrefs_told), or for a
 * third of dup_idle (the shortest of the shards') after a shard named it,
 * as a shard keeps a dup it names for dup_idle (stree.c): a count then
 * has two thirds of dup_idle to arrive. Otherwise the content is asked
 * for again.
 *
 * The holders' addresses are kept in the state directory (keep.c): the
 * entries a killed agent's successor takes over name them.
 *
 * Every read goes through the thread's own transport reader and is
 * checked: the bytes must hash to the content id in its domain, or the
 * next replica is tried. A holder that hangs, or fails twice in a row, is
 * down for a while (1 s, doubling, at most 30 s): its replicas are not
 * asked meanwhile, so that one stopped or dead holder costs one read's
 * wait, not one per fault. A fault whose replicas are all down or failed
 * waits (fault.c) and asks again, until lost_after_ms.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backing_int.h"
#include "log.h"
#include "util.h"

#define DOWN_MIN_MS 1000
#define DOWN_MAX_MS 30000

static size_t remote_slot(const struct cid *id)
{
	return (size_t)((id->lo ^ id->hi) * 0x9e3779b97f4a7c15ULL >> 40) % REMOTE_IDS;
}

static uint64_t holder_hash(const void *ctx, uint32_t v)
{
	const struct backing *b = ctx;

	return b->holders[v - 1].node;
}

/* The holder of node id, or NULL. b->lock held. */
static struct holder *holder_find(struct backing *b, uint32_t node)
{
	uint32_t v;

	for (size_t i = oaidx_home(&b->holder_ix, node); (v = b->holder_ix.v[i]);
	     i = oaidx_next(&b->holder_ix, i))
		if (b->holders[v - 1].node == node)
			return &b->holders[v - 1];
	return NULL;
}

/* Remember where node serves reads (kept for the next agent). b->lock held. */
void remote_holder_learn(struct backing *b, uint32_t node, const char *addr, bool keep)
{
	struct holder *h = holder_find(b, node);

	if (!h) {
		if (array_reserve((void **)&b->holders, &b->capholders, b->nholders + 1,
				  sizeof(*b->holders)) ||
		    oaidx_reserve(&b->holder_ix, b->nholders + 1, holder_hash, b)) {
			log_error("out of memory remembering node %u's data address", node);
			return;
		}
		h = &b->holders[b->nholders];
		*h = (struct holder){ .node = node };
		oaidx_put(&b->holder_ix, node, (uint32_t)++b->nholders);
	} else if (!strcmp(h->addr, addr)) {
		return;
	}
	snprintf(h->addr, sizeof(h->addr), "%s", addr);
	if (b->tk->known)
		b->tk->known(addr);
	if (keep)
		keep_holders(b);
}

void remote_fini(struct backing *b)
{
	oaidx_fini(&b->holder_ix);
	free(b->holders);
}

void backing_remote_learn(struct backing *b, const struct cid *id, const struct dup_loc *d,
			  unsigned n)
{
	struct remote_id *r;

	if (n > BTAB_REPLICAS)
		n = BTAB_REPLICAS;
	pthread_mutex_lock(&b->lock);
	r = &b->remote[remote_slot(id)];
	r->id = *id;
	r->n = (uint8_t)n;
	r->learned_ms = now_ms();
	for (unsigned i = 0; i < n; i++) {
		r->rem[i] = (struct rdup){ d[i].node, d[i].slot, d[i].gen };
		remote_holder_learn(b, d[i].node, d[i].addr, true);
	}
	pthread_mutex_unlock(&b->lock);
}

bool remote_known(struct backing *b, const struct cid *id, struct remote_id *r)
{
	const struct remote_id *x = &b->remote[remote_slot(id)];

	if (!x->n || !cid_eq(x->id, *id))
		return false;
	*r = *x;
	return true;
}

bool remote_usable(struct backing *b, const struct rdup *rem, unsigned n, uint64_t learned_ms)
{
	if (now_ms() - learned_ms <= atomic_load(&b->remote_fresh_ms))
		return true;
	for (unsigned i = 0; i < n; i++)
		if (rrefs_told(b->rrefs, &rem[i]))
			return true;
	return false;
}

void backing_set_dup_idle(struct backing *b, uint32_t ms)
{
	atomic_store(&b->remote_fresh_ms, ms / 3);
}

/*
 * Where r's holder serves reads, into loc: 1, or 0 if it is down now
 * (failed recently), or -ENOENT if unknown.
 */
static int locate(struct backing *b, const struct rdup *r, struct dup_loc *loc)
{
	const struct holder *h;
	int rc = -ENOENT;

	pthread_mutex_lock(&b->lock);
	h = holder_find(b, r->node);
	if (h && h->addr[0]) {
		memcpy(loc->addr, h->addr, sizeof(loc->addr));
		rc = h->down_until_ms > now_ms() ? 0 : 1;
	}
	pthread_mutex_unlock(&b->lock);
	loc->node = r->node;
	loc->slot = r->slot;
	loc->gen = r->gen;
	return rc;
}

/*
 * What a read's outcome says of its holder: an answer (even "stale", or
 * other bytes) means it is up; a read that timed out means it hangs, and
 * it is down at once; another failure (refused, reset) puts it down from
 * the second in a row. Down for 1 s, doubling, at most 30 s.
 */
static void holder_said(struct backing *b, uint32_t node, int rc)
{
	struct holder *h;

	pthread_mutex_lock(&b->lock);
	h = holder_find(b, node);
	if (h && (rc == 0 || rc == -ESTALE || rc == -EBADMSG)) {
		h->fails = 0;
		h->down_until_ms = 0;
	} else if (h && (++h->fails > 1 || rc == -ETIMEDOUT || rc == -EAGAIN)) {
		unsigned k = h->fails > 1 ? h->fails - 1 : 0;
		uint64_t ms = (uint64_t)DOWN_MIN_MS << (k < 5 ? k : 5);

		h->down_until_ms = now_ms() + (ms < DOWN_MAX_MS ? ms : DOWN_MAX_MS);
	}
	pthread_mutex_unlock(&b->lock);
}

/* Read replica i into buf, checked: 0 or a negative errno. */
static int fetch_one(struct backing *b, struct transport *tr, const struct dup_loc *loc,
		     const struct cid_domain *dom, const struct cid *id, uint8_t *buf)
{
	int rc = transport_read_checked(tr, loc, dom, id, buf);

	holder_said(b, loc->node, rc);
	if (rc)
		metric_inc(b->m_remote_errors);
	return rc;
}

int remote_fetch(struct backing *b, struct transport *tr, const struct rdup *rem, unsigned n,
		 const struct cid *id, uint8_t *buf, bool anyway)
{
	const struct cid_domain *dom = cid_domain_find(b->domains, b->cfg->ndomains, *id);
	struct dup_loc loc;

	if (!tr || !dom)
		return -1;
	/* In order, skipping holders that are down: they are asked again when
	 * their back-off ends, by a fault that waits meanwhile, and once more
	 * (anyway) before its page is given up. */
	for (unsigned i = 0; i < n && i < BTAB_REPLICAS; i++) {
		int state = locate(b, &rem[i], &loc);

		if (state < 0)
			metric_inc(b->m_remote_errors);
		else if (state == 0 && !anyway)
			metric_inc(b->m_remote_deferred);
		else if (fetch_one(b, tr, &loc, dom, id, buf) == 0)
			return (int)i;
	}
	return -1;
}
