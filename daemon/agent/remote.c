/*
 * remote - where other nodes' dups are, and reading them.
 *
 * A shard's BACK_REMOTE decision names, for a content, its dups on other
 * nodes and where each holder serves reads. The backing remembers the
 * dups of the last REMOTE_IDS contents (direct-mapped by id: a newer one
 * takes an older one's place) for the offers that follow, and the data
 * address of up to NODES_KNOWN holders. An entry of the table keeps its
 * own replica list, so a content forgotten here is still brought back.
 *
 * Every read goes through the thread's own transport reader and is
 * checked: the bytes must hash to the content id in its domain, or the
 * next replica is tried.
 */
#include <stdio.h>
#include <string.h>

#include "backing_int.h"
#include "log.h"

static size_t remote_slot(const struct cid *id)
{
	return (size_t)((id->lo ^ id->hi) * 0x9e3779b97f4a7c15ULL >> 40) % REMOTE_IDS;
}

/* Remember where node serves reads. b->lock held. */
static void learn_addr(struct backing *b, uint32_t node, const char *addr)
{
	unsigned k;

	for (k = 0; k < b->naddrs && b->addrs[k].node != node; k++) {
	}
	if (k == b->naddrs && b->naddrs < NODES_KNOWN)
		b->naddrs++;
	if (k == NODES_KNOWN)
		k = node % NODES_KNOWN; /* many holders: the oldest may go */
	b->addrs[k].node = node;
	snprintf(b->addrs[k].addr, sizeof(b->addrs[k].addr), "%s", addr);
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
	for (unsigned i = 0; i < n; i++) {
		r->rem[i] = (struct rdup){ d[i].node, d[i].slot, d[i].gen };
		learn_addr(b, d[i].node, d[i].addr);
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

/* Where r's holder serves reads, into loc; false if unknown. */
static bool locate(struct backing *b, const struct rdup *r, struct dup_loc *loc)
{
	bool found = false;

	pthread_mutex_lock(&b->lock);
	for (unsigned k = 0; k < b->naddrs; k++)
		if (b->addrs[k].node == r->node && b->addrs[k].addr[0]) {
			memcpy(loc->addr, b->addrs[k].addr, sizeof(loc->addr));
			found = true;
			break;
		}
	pthread_mutex_unlock(&b->lock);
	loc->node = r->node;
	loc->slot = r->slot;
	loc->gen = r->gen;
	return found;
}

int remote_fetch(struct backing *b, struct transport *tr, const struct rdup *rem, unsigned n,
		 const struct cid *id, uint8_t *buf)
{
	const struct cid_domain *dom = cid_domain_find(b->domains, b->cfg->ndomains, *id);

	for (unsigned i = 0; tr && dom && i < n; i++) {
		struct dup_loc loc;
		int rc;

		if (!locate(b, &rem[i], &loc)) {
			metric_inc(b->m_remote_errors);
			continue;
		}
		rc = transport_read_checked(tr, &loc, dom, id, buf);
		if (rc == 0)
			return (int)i;
		metric_inc(b->m_remote_errors);
	}
	return -1;
}
