/*
 * agent - the per-node daemon's control side.
 *
 * The agent keeps one dialer per shard of the shard map. On every
 * authenticated connection it registers (node name, rack, incarnation,
 * bucket count) and then sends a heartbeat every heartbeat_ms. A shard
 * that has not acknowledged a heartbeat for dead_after_ms is presumed
 * gone: the connection is closed and the dialer reconnects with backoff.
 * Nothing here ever blocks the loop on a shard.
 *
 * The scanner (scanrun.h) runs in its own thread and queues the digests
 * of stable pages per shard; the loop drains each queue into DigestReport
 * messages while that shard is registered and its socket keeps up (at
 * most REPORT_BACKLOG bytes unsent). A shard that registers again gets
 * every stable page offered anew, so its state catches up after a loss.
 */
#include "agent.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include <sodium.h>

#include "backing.h"
#include "copier.h"
#include "dial.h"
#include "pool.h"
#include "scanrun.h"
#include "log.h"
#include "runtime.h"
#include "util.h"
#include "wire.h"

struct agent;

/* A report sent and not answered yet: its entries, sorted by id. */
struct inflight {
	uint64_t seq;
	struct report_entry *e;
	size_t n;
};

#define REPORT_INFLIGHT 4	   /* reports sent to a shard and not answered yet */
#define REPORT_BACKLOG	(4u << 20) /* unsent bytes a shard's socket may hold */
#define REPORT_DIGESTS	4096	   /* digests per DigestReport */

struct agent_shard {
	struct agent *a;
	unsigned id;
	struct dialer *dialer;
	bool registered;	/* RegisterAck received on this conn */
	uint64_t dead_after_ms; /* the shard's, from RegisterAck */
	bool registered_before; /* a RegisterAck came on an earlier conn */
	bool was_connected;	/* a connection was up before this one */
	uint32_t node_id;	/* our id at this shard */
	uint64_t hb_seq;
	uint64_t last_ack_ms;		     /* loop time of the last ack */
	uint64_t report_seq;		     /* of the last report sent */
	struct inflight fl[REPORT_INFLIGHT]; /* oldest at fl_head */
	unsigned fl_head, fl_n;
	struct metric *m_up;
	struct log_quota error_quota; /* its Error lines */
};

struct agent {
	struct runtime rt;
	uint64_t incarnation; /* random, new at every start */
	uv_timer_t hb;
	struct agent_shard shards[CONFIG_MAX_SHARDS];
	unsigned nshards;
	struct metric *m_hb_sent;
	struct metric *m_hb_acked;
	struct metric *m_registered;
	struct metric *m_reconnects;
	bool stopping; /* SIGTERM: closing everything */
	struct scanrun *scan;
	struct metric *m_sent;
	struct metric *m_sent_pages;
	struct metric *m_decisions[6]; /* by action */
	struct metric *m_orders;       /* DupCreate and DupRelease received */
	struct metric *m_unanswered;   /* reports whose answer never came */
	struct metric *m_dups, *m_pool_free, *m_refs_sent, *m_net;
	struct pool *pool;	  /* NULL: no pool on this node */
	int state_fd;		  /* the state directory, locked (-1 if none) */
	uv_timer_t restore_timer; /* --restore: data set once started */
	uint64_t restore_from;
	uv_timer_t quiet_timer; /* stopping: serving the pool while others read it */
	uint64_t stop_from, quiet_since, quiet_reads, quiet_first;
	struct backing *backing;	 /* NULL: processes cannot attach */
	const struct transport_kind *tk; /* how other nodes' pools are read */
	struct data_server *data;	 /* serves the pool to other nodes */
	struct copier *copier;		 /* carries out DupCreate orders */
	uint64_t refs_resent_ms;	 /* loop time all counts were last sent again */
	uint32_t dup_idle_ms;		 /* the shortest of the shards' dup_idle_millisecs */
	struct cid_domain domains[CONFIG_MAX_DOMAINS];
};

static void fill_pool_info(const struct agent *a, Cksm__PoolInfo *pi)
{
	pi->slot_bytes = POOL_SLOT;
	if (a->pool) {
		pi->slots_total = pool_slots(a->pool);
		pi->slots_free = pool_free_slots(a->pool);
		metric_set(a->m_pool_free, (double)pi->slots_free);
		metric_set(a->m_dups, (double)(pi->slots_total - pi->slots_free));
		/* What this node's processes save, less the memory its pool
		 * takes (for itself and as replicas for others): below zero
		 * on a node that holds more than it evicts. */
		metric_set(a->m_net, (a->backing ? backing_saved_bytes(a->backing) : 0) -
					     (double)pool_resident_bytes(a->pool));
	}
}

static void inflight_drop_oldest(struct agent_shard *s)
{
	struct inflight *f = &s->fl[s->fl_head];

	free(f->e);
	f->e = NULL;
	s->fl_head = (s->fl_head + 1) % REPORT_INFLIGHT;
	s->fl_n--;
}

/* The connection is gone: its answers will not come. */
static void inflight_clear(struct agent_shard *s)
{
	while (s->fl_n)
		inflight_drop_oldest(s);
}

static int send_register(struct agent_shard *s, struct conn *c)
{
	const struct config *cfg = s->a->rt.cfg;
	Cksm__Msg m = CKSM__MSG__INIT;
	Cksm__Register r = CKSM__REGISTER__INIT;
	Cksm__PoolInfo pool = CKSM__POOL_INFO__INIT;

	r.node_name = (char *)cfg->node_name;
	r.rack = (char *)cfg->rack;
	r.incarnation = s->a->incarnation;
	r.buckets = cfg->buckets;
	r.data_address = (char *)cfg->data_address;
	fill_pool_info(s->a, &pool);
	r.pool = &pool;
	m.body_case = CKSM__MSG__BODY_REGISTER;
	m.register_ = &r;
	return conn_send(c, &m);
}

static void on_ready(struct conn *c)
{
	struct agent_shard *s = c->data;

	s->registered = false;
	inflight_clear(s);
	s->last_ack_ms = uv_now(&s->a->rt.loop);
	if (s->was_connected)
		metric_inc(s->a->m_reconnects);
	s->was_connected = true;
	send_register(s, c);
}

/*
 * The shard's heartbeat_ms and dead_after_ms are what it will judge this
 * node by: follow them (heartbeat at least as often) and say so when the
 * two configurations disagree.
 */
static void adopt_timing(struct agent_shard *s, const Cksm__RegisterAck *ack)
{
	const struct config *cfg = s->a->rt.cfg;
	uint64_t repeat = uv_timer_get_repeat(&s->a->hb);

	if (ack->heartbeat_ms != cfg->heartbeat_ms || ack->dead_after_ms != cfg->dead_after_ms)
		log_warn(
			"shard %u uses heartbeat_ms=%u dead_after_ms=%u, this node %llu/%llu; following the shard",
			s->id, ack->heartbeat_ms, ack->dead_after_ms,
			(unsigned long long)cfg->heartbeat_ms,
			(unsigned long long)cfg->dead_after_ms);
	s->dead_after_ms = ack->dead_after_ms >= 150 ? ack->dead_after_ms : cfg->dead_after_ms;
	/* Counts are sent again well within the shortest dup_idle of the
	 * shards, which is what they release unreferenced dups by. */
	if (ack->dup_idle_ms >= 100 && ack->dup_idle_ms < s->a->dup_idle_ms) {
		s->a->dup_idle_ms = ack->dup_idle_ms;
		if (s->a->backing)
			backing_set_dup_idle(s->a->backing, ack->dup_idle_ms);
	}
	if (ack->heartbeat_ms >= 50 && ack->heartbeat_ms < repeat)
		uv_timer_set_repeat(&s->a->hb, ack->heartbeat_ms);
}

#define RESYNC_PART 1024 /* entries per Resync message */

struct resync_ctx {
	struct agent_shard *s;
	struct conn *c;
	Cksm__ResyncEntry e[RESYNC_PART], *ep[RESYNC_PART];
	Cksm__DupRef r[RESYNC_PART];
	size_t n;
	int rc;
};

static void resync_flush(struct resync_ctx *x, bool last)
{
	Cksm__Msg m = CKSM__MSG__INIT;
	Cksm__Resync rs = CKSM__RESYNC__INIT;

	rs.n_entries = x->n;
	rs.entries = x->ep;
	rs.last = last;
	m.body_case = CKSM__MSG__BODY_RESYNC;
	m.resync = &rs;
	if (!x->rc)
		x->rc = conn_send(x->c, &m);
	x->n = 0;
}

static void resync_entry(struct resync_ctx *x, uint32_t node, struct pool_ref ref,
			 const struct cid *id, uint32_t refs, bool held_here);

static void resync_slot(void *arg, struct pool_ref ref, const struct cid *id, bool held,
			uint32_t refs)
{
	struct resync_ctx *x = arg;

	if (held)
		resync_entry(x, x->s->node_id, ref, id, refs, true);
}

/* References on another node's dup: the shard must not release it. */
static void resync_rref(void *arg, uint32_t node, struct pool_ref ref, const struct cid *id,
			uint32_t count)
{
	resync_entry(arg, node, ref, id, count, false);
}

static void resync_entry(struct resync_ctx *x, uint32_t node, struct pool_ref ref,
			 const struct cid *id, uint32_t refs, bool held_here)
{
	const struct config *cfg = x->s->a->rt.cfg;

	if (config_bucket_shard(cfg, cid_bucket(*id, cfg->buckets)) != (int)x->s->id)
		return;
	cksm__resync_entry__init(&x->e[x->n]);
	cksm__dup_ref__init(&x->r[x->n]);
	x->r[x->n].node_id = node;
	x->r[x->n].slot = ref.slot;
	x->r[x->n].generation = ref.gen;
	x->e[x->n].id_hi = id->hi;
	x->e[x->n].id_lo = id->lo;
	x->e[x->n].domain = cid_domain_of(*id);
	x->e[x->n].dup = &x->r[x->n];
	x->e[x->n].refs = refs < cfg->max_page_sharing ? refs : cfg->max_page_sharing;
	x->e[x->n].held_here = held_here;
	x->ep[x->n] = &x->e[x->n];
	if (++x->n == RESYNC_PART)
		resync_flush(x, false);
}

/*
 * The shard rebuilds its tree from what nodes hold and reference: every
 * dup of this node's pool in the shard's buckets, with this node's
 * references on it, in parts.
 */
static int send_resync(struct agent_shard *s, struct conn *c)
{
	static struct resync_ctx x;

	x.s = s;
	x.c = c;
	x.n = 0;
	x.rc = 0;
	if (s->a->pool)
		pool_foreach(s->a->pool, resync_slot, &x);
	if (s->a->backing)
		backing_foreach_rref(s->a->backing, resync_rref, &x);
	resync_flush(&x, true);
	return x.rc;
}

static int handle_register_ack(struct agent_shard *s, struct conn *c, const Cksm__RegisterAck *ack)
{
	if (ack->node_id == 0)
		return conn_fail(c, -EPROTO, "register ack without a node id");
	if (ack->shard_id != s->id)
		return conn_fail(c, -EPROTO, "%s answers as shard %u, the shard map says shard %u",
				 dialer_address(s->dialer), ack->shard_id, s->id);
	adopt_timing(s, ack);
	if (s->registered_before)
		scanrun_rereport(s->a->scan, s->id);
	s->registered_before = true;
	s->registered = true;
	s->node_id = ack->node_id;
	/* It may have missed counts while away, or never seen them. */
	if (s->a->backing)
		backing_refs_all_dirty(s->a->backing);
	if (ack->resync_wanted && send_resync(s, c))
		return -EIO;
	s->last_ack_ms = uv_now(&s->a->rt.loop);
	metric_inc(s->a->m_registered);
	metric_set(s->m_up, 1);
	log_info("registered with shard %u at %s as node %u", s->id, dialer_address(s->dialer),
		 s->node_id);
	return 0;
}

static int dup_answer(struct conn *c, uint64_t hi, uint64_t lo, uint32_t domain,
		      const Cksm__DupRef *dup, const char *reason)
{
	Cksm__Msg m = CKSM__MSG__INIT;
	Cksm__DupCreated d = CKSM__DUP_CREATED__INIT;

	d.id_hi = hi;
	d.id_lo = lo;
	d.domain = domain;
	d.ok = dup != NULL;
	d.dup = (Cksm__DupRef *)dup;
	d.reason = (char *)(reason ? reason : "");
	m.body_case = CKSM__MSG__BODY_DUP_CREATED;
	m.dup_created = &d;
	return conn_send(c, &m);
}

static struct cid id_of(const struct report_entry *e)
{
	return (struct cid){ e->hi, e->lo };
}

/* Report entries by id, for qsort and bsearch. */
static int by_id(const void *x, const void *y)
{
	return cid_cmp(id_of(x), id_of(y));
}

/*
 * CREATE_DUP with a copier (whenever processes attach): the reported
 * pages holding the content are read off the loop (copier.h says why),
 * and copy_done answers. Pages of a process that has not come back to
 * this agent yet are left out: a fault there waits for its return.
 */
static int make_dup_later(struct agent_shard *s, struct conn *c, const Cksm__Decision *d,
			  uint32_t domain, const struct report_entry *e,
			  const struct report_entry *end)
{
	struct agent *a = s->a;
	struct copy_job j;

	memset(&j, 0, sizeof(j));
	j.shard = s->id;
	j.id = (struct cid){ d->id_hi, d->id_lo };
	j.domain = domain;
	for (; e < end && cid_eq(id_of(e), j.id) && j.nlocal < COPY_SOURCES; e++)
		if (!backing_waits_for(a->backing, e->pid))
			j.local[j.nlocal++] = (struct copy_local){ e->pid, e->addr };
	if (!j.nlocal)
		return dup_answer(c, d->id_hi, d->id_lo, domain, NULL, "the pages changed");
	if (!copier_push(a->copier, &j))
		return dup_answer(c, d->id_hi, d->id_lo, domain, NULL, "too many copies under way");
	return 0;
}

/*
 * CREATE_DUP: copy one of the reported pages holding the content into the
 * pool, checking that it still holds it (the id of the bytes copied). On
 * the loop only where no process is served (no copier): then no read can
 * wait on a userfaultfd.
 */
static int make_dup(struct agent_shard *s, struct conn *c, const Cksm__Decision *d, uint32_t domain)
{
	struct agent *a = s->a;
	const struct inflight *f = s->fl_n ? &s->fl[s->fl_head] : NULL;
	struct report_entry key = { .hi = d->id_hi, .lo = d->id_lo };
	const struct report_entry *e = NULL;
	static uint8_t page[POOL_SLOT] __attribute__((aligned(POOL_SLOT)));
	struct cid id = { d->id_hi, d->id_lo };
	const char *why = "no page pool on this node";
	Cksm__DupRef ref = CKSM__DUP_REF__INIT;
	struct pool_ref pr;
	const struct cid_domain *dom = cid_domain_find(a->domains, a->rt.cfg->ndomains, id);

	if (a->pool && f && dom) {
		e = bsearch(&key, f->e, f->n, sizeof(*f->e), by_id);
		while (e && e > f->e && cid_eq(id_of(&e[-1]), id))
			e--;
		why = "the pages changed";
	}
	if (e && a->copier)
		return make_dup_later(s, c, d, domain, e, f->e + f->n);
	for (; e && e < f->e + f->n && cid_eq(id_of(e), id); e++) {
		struct iovec l = { page, POOL_SLOT }, r = { (void *)(uintptr_t)e->addr, POOL_SLOT };
		struct cid got;
		int rc;

		if (process_vm_readv(e->pid, &l, 1, &r, 1, 0) != POOL_SLOT)
			continue;
		got = cid_of(dom, page);
		if (!cid_eq(got, id))
			continue;
		rc = pool_add(a->pool, &id, page, &pr);
		if (rc) {
			why = "the page pool is full";
			break;
		}
		ref.node_id = s->node_id;
		ref.slot = pr.slot;
		ref.generation = pr.gen;
		/* Pages stable for one scan may go: every reported copy, now. */
		for (const struct report_entry *x = f->e;
		     a->backing && a->rt.cfg->evict_age <= 1 && x < f->e + f->n; x++)
			if (cid_eq(id_of(x), id))
				backing_offer(a->backing, x->pid, x->addr, BACKED_POOL, pr, &id);
		return dup_answer(c, d->id_hi, d->id_lo, domain, &ref, NULL);
	}
	return dup_answer(c, d->id_hi, d->id_lo, domain, NULL, why);
}

/*
 * The last batch of an answer says which digests of report report_seq
 * have another copy in the cluster: each page that digest stands for
 * learns it. A refused report is answered without that bitmap. Reports
 * older than the answered one got no answer (a shard answers in order)
 * and are forgotten.
 */
static int handle_answer(struct agent_shard *s, struct conn *c, const Cksm__DecisionBatch *b)
{
	static struct scan_answer ans[REPORT_DIGESTS];
	const struct inflight *f;
	size_t k = 0, n = 0;

	while (s->fl_n && s->fl[s->fl_head].seq < b->report_seq) {
		metric_inc(s->a->m_unanswered);
		inflight_drop_oldest(s);
	}
	if (!s->fl_n || s->fl[s->fl_head].seq != b->report_seq)
		return conn_fail(c, -EPROTO, "answer to report %llu, which is not outstanding",
				 (unsigned long long)b->report_seq);
	f = &s->fl[s->fl_head];
	if (!b->shared.len) { /* refused: the Error before it said why */
		metric_inc(s->a->m_unanswered);
		inflight_drop_oldest(s);
		return 0;
	}
	for (size_t i = 0; i < f->n; i++) {
		if (i && !cid_eq(id_of(&f->e[i]), id_of(&f->e[i - 1])))
			k++; /* the next digest */
		if (k / 8 >= b->shared.len) {
			inflight_drop_oldest(s);
			return conn_fail(
				c, -EPROTO,
				"answer with %zu bytes of shared bits for %zu digests or more",
				b->shared.len, k + 1);
		}
		ans[n].pid = f->e[i].pid;
		ans[n].addr = f->e[i].addr;
		ans[n].shared = (b->shared.data[k / 8] >> (k % 8)) & 1;
		n++;
	}
	scanrun_answer(s->a->scan, ans, n);
	inflight_drop_oldest(s);
	return 0;
}

/*
 * BACK_REMOTE: the content's dups on other nodes. Remembered for the
 * scanner's offers; with evict_age 1 the reported pages go at once.
 */
static void back_remote(struct agent_shard *s, const Cksm__Decision *d)
{
	struct agent *a = s->a;
	const struct inflight *f = s->fl_n ? &s->fl[s->fl_head] : NULL;
	struct dup_loc loc[8];
	struct cid id = { d->id_hi, d->id_lo };
	unsigned n = 0;

	if (!a->backing)
		return;
	for (size_t i = 0; i < d->n_dups && n < 8; i++) {
		const Cksm__DupRef *r = d->dups[i];

		if (!r || r->slot > UINT32_MAX || !r->address || !r->address[0] ||
		    strlen(r->address) >= DUP_ADDR_MAX || r->node_id == s->node_id)
			continue;
		loc[n].node = r->node_id;
		loc[n].slot = (uint32_t)r->slot;
		loc[n].gen = r->generation;
		snprintf(loc[n].addr, sizeof(loc[n].addr), "%s", r->address);
		n++;
	}
	if (!n)
		return;
	backing_remote_learn(a->backing, &id, loc, n);
	for (size_t i = 0; f && a->rt.cfg->evict_age <= 1 && i < f->n; i++)
		if (cid_eq(id_of(&f->e[i]), id))
			backing_offer_remote(a->backing, f->e[i].pid, f->e[i].addr, &id);
}

static int handle_decisions(struct agent_shard *s, struct conn *c, const Cksm__DecisionBatch *b)
{
	for (size_t i = 0; i < b->n_decisions; i++) {
		const Cksm__Decision *d = b->decisions[i];
		unsigned a = (unsigned)d->action;

		if (a < 1 || a > 5 || d->n_dups > 8)
			return conn_fail(c, -EPROTO, "decision with action %u and %zu dups", a,
					 d->n_dups);
		metric_inc(s->a->m_decisions[a]);
		if (d->action == CKSM__ACTION__ACTION_CREATE_DUP && make_dup(s, c, d, b->domain))
			return -EIO;
		if (d->action == CKSM__ACTION__ACTION_BACK_REMOTE)
			back_remote(s, d);
	}
	return b->last ? handle_answer(s, c, b) : 0;
}

/*
 * DupCreate: copy a dup from one of the sources' pools (re-replication
 * after a node's loss, or placement). The copier does it off the loop;
 * copy_done answers the shard.
 */
static int copy_order(struct agent_shard *s, struct conn *c, const Cksm__DupCreate *o)
{
	struct agent *a = s->a;
	struct copy_job j;

	memset(&j, 0, sizeof(j));
	j.shard = s->id;
	j.id = (struct cid){ o->id_hi, o->id_lo };
	j.domain = o->domain;
	for (size_t i = 0; i < o->n_sources && j.nsrc < COPY_SOURCES; i++) {
		const Cksm__DupRef *r = o->sources[i];

		if (!r || r->slot > UINT32_MAX || !r->address || !r->address[0] ||
		    strlen(r->address) >= DUP_ADDR_MAX || r->node_id == s->node_id)
			continue;
		j.src[j.nsrc] =
			(struct dup_loc){ r->node_id, (uint32_t)r->slot, r->generation, "" };
		snprintf(j.src[j.nsrc].addr, sizeof(j.src[j.nsrc].addr), "%s", r->address);
		j.nsrc++;
	}
	if (!a->copier)
		return dup_answer(c, o->id_hi, o->id_lo, o->domain, NULL,
				  a->pool ? "no data transport on this node"
					  : "no page pool on this node");
	if (!j.nsrc)
		return dup_answer(c, o->id_hi, o->id_lo, o->domain, NULL,
				  "no source with a data address");
	if (!copier_push(a->copier, &j))
		return dup_answer(c, o->id_hi, o->id_lo, o->domain, NULL,
				  "too many copies under way");
	return 0;
}

/* Loop thread: a copy is done; the shard that ordered it learns how. */
static void copy_done(void *arg, const struct copy_job *j)
{
	struct agent *a = arg;
	struct agent_shard *s = &a->shards[j->shard];
	struct conn *c = dialer_conn(s->dialer);
	Cksm__DupRef ref = CKSM__DUP_REF__INIT;

	if (!c || !s->registered) {
		if (j->ok) /* nobody will know of it: give the slot back */
			pool_release(a->pool, j->ref);
		return;
	}
	ref.node_id = s->node_id;
	ref.slot = j->ref.slot;
	ref.generation = j->ref.gen;
	/* Pages stable for one scan may go: the copies read, now. */
	for (unsigned i = 0; j->ok && a->backing && a->rt.cfg->evict_age <= 1 && i < j->nlocal; i++)
		backing_offer(a->backing, j->local[i].pid, j->local[i].addr, BACKED_POOL, j->ref,
			      &j->id);
	if (j->ok && !j->nlocal)
		log_info("copied a dup of content %016llx%016llx into slot %u/%u",
			 (unsigned long long)j->id.hi, (unsigned long long)j->id.lo, j->ref.slot,
			 j->ref.gen);
	dup_answer(c, j->id.hi, j->id.lo, j->domain, j->ok ? &ref : NULL, j->why);
}

/* The shard lets go of a dup here: freed once no page of ours uses it. */
static int release_dup(struct agent_shard *s, struct conn *c, const Cksm__DupRelease *r)
{
	struct pool_ref pr;

	if (!r->dup || r->dup->node_id != s->node_id || r->dup->slot > UINT32_MAX)
		return conn_fail(c, -EPROTO, "release of a dup that is not this node's");
	pr.slot = (uint32_t)r->dup->slot;
	pr.gen = r->dup->generation;
	if (!s->a->pool || pool_release(s->a->pool, pr))
		log_info("shard %u released dup %u/%u, which this node does not hold", s->id,
			 pr.slot, pr.gen);
	return 0;
}

static int on_msg(struct conn *c, const Cksm__Msg *m)
{
	struct agent_shard *s = c->data;

	switch (m->body_case) {
	case CKSM__MSG__BODY_REGISTER_ACK:
		return handle_register_ack(s, c, m->register_ack);
	case CKSM__MSG__BODY_HEARTBEAT_ACK:
		if (!s->registered)
			return conn_fail(c, -EPROTO, "heartbeat ack before register ack");
		s->last_ack_ms = uv_now(&s->a->rt.loop);
		metric_inc(s->a->m_hb_acked);
		return 0;
	case CKSM__MSG__BODY_ERROR: {
		uint64_t held;

		if (log_quota_take(&s->error_quota, uv_now(&s->a->rt.loop), &held)) {
			if (held)
				log_warn("shard %u: %llu more errors were not logged", s->id,
					 (unsigned long long)held);
			log_warn("shard %u reports: %s", s->id, m->error->message);
		}
		return 0;
	}
	case CKSM__MSG__BODY_DECISIONS:
		if (!s->registered)
			return conn_fail(c, -EPROTO, "decisions before register ack");
		return handle_decisions(s, c, m->decisions);
	case CKSM__MSG__BODY_DUP_CREATE:
		metric_inc(s->a->m_orders);
		return copy_order(s, c, m->dup_create);
	case CKSM__MSG__BODY_DUP_RELEASE:
		metric_inc(s->a->m_orders);
		return release_dup(s, c, m->dup_release);
	default:
		metric_inc(c->net->m.rej_unexpected);
		return conn_fail(c, -EOPNOTSUPP, "message %s is not accepted by an agent",
				 wire_body_name(m));
	}
}

static void on_close(struct conn *c)
{
	struct agent_shard *s = c->data;

	s->registered = false;
	inflight_clear(s);
	metric_set(s->m_up, 0);
	if (!s->a->stopping)
		log_warn("lost shard %u at %s; reconnecting", s->id, dialer_address(s->dialer));
}

static const struct conn_ops agent_conn_ops = {
	.on_ready = on_ready,
	.on_msg = on_msg,
	.on_close = on_close,
};

static void heartbeat_one(struct agent_shard *s, uint64_t now)
{
	struct conn *c = dialer_conn(s->dialer);
	Cksm__Msg m = CKSM__MSG__INIT;
	Cksm__Heartbeat hb = CKSM__HEARTBEAT__INIT;
	Cksm__NodeCounters nc = CKSM__NODE_COUNTERS__INIT;
	Cksm__PoolInfo pi = CKSM__POOL_INFO__INIT;

	if (!c)
		return;
	/* Covers a shard that never answers Register as well. */
	if (now - s->last_ack_ms > s->dead_after_ms) {
		conn_fail(c, -ETIMEDOUT, "shard %u silent for %llu ms", s->id,
			  (unsigned long long)(now - s->last_ack_ms));
		return;
	}
	if (!s->registered)
		return;
	hb.seq = ++s->hb_seq;
	hb.counters = &nc;
	fill_pool_info(s->a, &pi);
	hb.pool = &pi;
	m.body_case = CKSM__MSG__BODY_HEARTBEAT;
	m.heartbeat = &hb;
	if (conn_send(c, &m) == 0)
		metric_inc(s->a->m_hb_sent);
}

/*
 * Send one DigestReport from e[0..n), all of one domain; equal ids merge.
 * The entries are kept until the shard's answer says which are shared.
 */
static int send_report(struct agent_shard *s, struct conn *c, struct report_entry *e, size_t n)
{
	struct agent *a = s->a;
	struct inflight *f = &s->fl[(s->fl_head + s->fl_n) % REPORT_INFLIGHT];
	static Cksm__Digest d[REPORT_DIGESTS];
	static Cksm__Digest *dp[REPORT_DIGESTS];
	Cksm__Msg m = CKSM__MSG__INIT;
	Cksm__DigestReport rep = CKSM__DIGEST_REPORT__INIT;
	size_t k = 0;

	qsort(e, n, sizeof(*e), by_id);
	for (size_t i = 0; i < n; i++) {
		if (k && d[k - 1].id_hi == e[i].hi && d[k - 1].id_lo == e[i].lo) {
			d[k - 1].pages++;
			d[k - 1].again = d[k - 1].again && e[i].again;
			d[k - 1].stays = d[k - 1].stays && e[i].stays;
			continue;
		}
		cksm__digest__init(&d[k]);
		d[k].id_hi = e[i].hi;
		d[k].id_lo = e[i].lo;
		d[k].pages = 1;
		d[k].again = e[i].again;
		d[k].stays = e[i].stays;
		dp[k] = &d[k];
		k++;
	}
	rep.domain = e[0].domain;
	rep.n_digests = k;
	rep.digests = dp;
	rep.seq = ++s->report_seq;
	m.body_case = CKSM__MSG__BODY_DIGEST_REPORT;
	m.digest_report = &rep;
	f->e = malloc(n * sizeof(*e));
	if (!f->e)
		return -ENOMEM;
	if (conn_send(c, &m)) {
		free(f->e);
		f->e = NULL;
		return -EIO;
	}
	memcpy(f->e, e, n * sizeof(*e));
	f->n = n;
	f->seq = rep.seq;
	s->fl_n++;
	metric_add(a->m_sent, k);
	metric_add(a->m_sent_pages, n);
	return 0;
}

/*
 * After each full scan, its census goes to shard 0, which adds up the
 * nodes' sketches (a census taken while shard 0 is away is skipped; the
 * next scan brings a new one).
 */
static void send_census(struct agent *a)
{
	static struct scanrun_census c[CONFIG_MAX_DOMAINS];
	struct conn *conn = dialer_conn(a->shards[0].dialer);
	size_t n;

	if (!conn || !a->shards[0].registered)
		return;
	n = scanrun_take_census(a->scan, c);
	for (size_t d = 0; d < n; d++) {
		Cksm__Msg m = CKSM__MSG__INIT;
		Cksm__CensusReport cr = CKSM__CENSUS_REPORT__INIT;

		cr.domain = c[d].domain;
		cr.stable_pages = c[d].stable;
		cr.zero_pages = c[d].zero;
		cr.registers.data = c[d].h.r;
		cr.registers.len = sizeof(c[d].h.r);
		cr.shared_registers.data = c[d].shared.r;
		cr.shared_registers.len = sizeof(c[d].shared.r);
		m.body_case = CKSM__MSG__BODY_CENSUS_REPORT;
		m.census_report = &cr;
		if (conn_send(conn, &m))
			return;
	}
}

/* After each full scan, the processes and cgroups with most to share. */
static void send_usage(struct agent *a)
{
	static struct usage u;
	static Cksm__ProcessUsage p[USAGE_TOP], *pp[USAGE_TOP];
	static Cksm__CgroupUsage g[USAGE_TOP], *gp[USAGE_TOP];
	struct conn *conn = dialer_conn(a->shards[0].dialer);
	Cksm__Msg m = CKSM__MSG__INIT;
	Cksm__UsageReport ur = CKSM__USAGE_REPORT__INIT;

	if (!conn || !a->shards[0].registered || !scanrun_take_usage(a->scan, &u))
		return;
	for (size_t i = 0; i < u.nprocs; i++) {
		cksm__process_usage__init(&p[i]);
		p[i].pid = (uint32_t)u.procs[i].pid;
		p[i].comm = u.procs[i].comm;
		p[i].cgroup = u.procs[i].cgroup;
		p[i].stable_pages = u.procs[i].stable;
		p[i].zero_pages = u.procs[i].zero;
		p[i].shared_pages = u.procs[i].shared;
		backing_faults_of(a->backing, u.procs[i].pid, &p[i].refaults, &p[i].fault_nanos,
				  &p[i].fault_ppm);
		pp[i] = &p[i];
	}
	for (size_t i = 0; i < u.ngroups; i++) {
		cksm__cgroup_usage__init(&g[i]);
		g[i].cgroup = u.groups[i].cgroup;
		g[i].processes = u.groups[i].processes;
		g[i].stable_pages = u.groups[i].stable;
		g[i].zero_pages = u.groups[i].zero;
		g[i].shared_pages = u.groups[i].shared;
		gp[i] = &g[i];
	}
	ur.n_processes = u.nprocs;
	ur.processes = pp;
	ur.n_cgroups = u.ngroups;
	ur.cgroups = gp;
	m.body_case = CKSM__MSG__BODY_USAGE_REPORT;
	m.usage_report = &ur;
	conn_send(conn, &m);
	usage_clear(&u);
}

/*
 * This node's references on its dups that changed, as counts, to the
 * shards that own them (lost if the shard is away: its resync after
 * coming back carries the counts).
 */
static void send_refs(struct agent *a)
{
	static struct ref_count r[1024];
	size_t n;

	if (!a->backing)
		return;
	while ((n = backing_take_refs(a->backing, r, 1024)) > 0) {
		bool unsent = false;

		for (size_t i = 0; i < n; i++) {
			const struct config *cfg = a->rt.cfg;
			struct agent_shard *s = &a->shards[config_bucket_shard(
				cfg, cid_bucket(r[i].id, cfg->buckets))];
			struct conn *c = dialer_conn(s->dialer);
			Cksm__Msg m = CKSM__MSG__INIT;
			Cksm__RefUpdate ru = CKSM__REF_UPDATE__INIT;
			Cksm__DupRef dr = CKSM__DUP_REF__INIT;

			/* A slot gone, or released (its pages use it until they
			 * come back): the shard has no dup to count. */
			if (!r[i].node && !pool_held(a->pool, r[i].ref))
				continue;
			if (!c || !s->registered) {
				backing_refs_unsent(a->backing, &r[i]); /* later */
				unsent = true;
				continue;
			}
			dr.node_id = r[i].node ? r[i].node : s->node_id;
			dr.slot = r[i].ref.slot;
			dr.generation = r[i].ref.gen;
			ru.id_hi = r[i].id.hi;
			ru.id_lo = r[i].id.lo;
			ru.dup = &dr;
			ru.set = true;
			ru.refs = r[i].node ? r[i].count : pool_refs(a->pool, r[i].ref);
			m.body_case = CKSM__MSG__BODY_REF_UPDATE;
			m.ref_update = &ru;
			if (conn_send(c, &m) == 0) {
				metric_inc(a->m_refs_sent);
			} else {
				backing_refs_unsent(a->backing, &r[i]);
				unsent = true;
			}
		}
		if (unsent)
			break; /* the rest waits for the shard */
	}
}

/* Drain the report queues into the shards that can take them now. */
static void flush_reports(void *arg)
{
	static struct report_entry batch[REPORT_DIGESTS];
	struct agent *a = arg;

	for (unsigned i = 0; i < a->nshards; i++) {
		struct agent_shard *s = &a->shards[i];
		struct conn *c = dialer_conn(s->dialer);
		size_t n;

		while (c && s->registered && conn_queued(c) < REPORT_BACKLOG &&
		       s->fl_n < REPORT_INFLIGHT &&
		       (n = scanrun_take(a->scan, i, batch, REPORT_DIGESTS)) > 0)
			if (send_report(s, c, batch, n))
				break;
	}
	scanrun_queued(a->scan);
	send_census(a);
	send_usage(a);
	send_refs(a);
}

static void on_heartbeat(uv_timer_t *t)
{
	struct agent *a = t->data;
	uint64_t now = uv_now(&a->rt.loop);

	/* Counts again, well within dup_idle_millisecs: a shard that lost one
	 * (it was away, or a holder came back after its referrers) gets it
	 * before it would release a dup in use. */
	if (a->backing && now - a->refs_resent_ms >= a->dup_idle_ms / 3) {
		backing_refs_all_dirty(a->backing);
		a->refs_resent_ms = now;
	}

	for (unsigned i = 0; i < a->nshards; i++)
		heartbeat_one(&a->shards[i], now);
	flush_reports(a);
}

#define QUIET_MS 2000 /* a stopping holder leaves after this long without a read */

/* The end of the stop: the data port. */
static void agent_stop_rest(struct agent *a)
{
	transport_serve_stop(a->data);
	a->data = NULL;
}

/* Serving while stopping: every 100 ms, is it quiet yet? */
static void on_quiet_tick(uv_timer_t *t)
{
	struct agent *a = t->data;
	uint64_t now = uv_now(&a->rt.loop), n = transport_served(a->data);

	if (n != a->quiet_reads) {
		a->quiet_reads = n;
		a->quiet_since = now;
	}
	if (now - a->quiet_since < QUIET_MS && now - a->stop_from < a->rt.cfg->stop_wait_ms)
		return;
	if (a->quiet_reads != a->quiet_first)
		log_info("served %llu page reads to other nodes while stopping (%llu ms)",
			 (unsigned long long)(a->quiet_reads - a->quiet_first),
			 (unsigned long long)(now - a->stop_from));
	uv_close((uv_handle_t *)t, NULL);
	agent_stop_rest(a);
	runtime_stopped(&a->rt);
}

/*
 * Other nodes may be stopping too and bringing home the pages this
 * node's dups back: the data port stays (and the loop runs, for its
 * handshakes) until QUIET_MS pass without a read, at most stop_wait_ms.
 */
static void serve_while_read(struct agent *a)
{
	a->stop_from = a->quiet_since = uv_now(&a->rt.loop);
	a->quiet_first = a->quiet_reads = transport_served(a->data);
	uv_timer_init(&a->rt.loop, &a->quiet_timer);
	a->quiet_timer.data = a;
	uv_timer_start(&a->quiet_timer, on_quiet_tick, 100, 100);
	a->rt.stop_later = true;
}

static void agent_stop(struct runtime *rt)
{
	struct agent *a = rt->role;

	a->stopping = true;
	uv_close((uv_handle_t *)&a->hb, NULL);
	if (a->restore_timer.data)
		uv_close((uv_handle_t *)&a->restore_timer, NULL);
	scanrun_destroy(a->scan);
	a->scan = NULL;
	copier_destroy(a->copier);
	a->copier = NULL;
	backing_destroy(a->backing);
	a->backing = NULL;
	for (unsigned i = 0; i < a->nshards; i++) {
		dialer_destroy(a->shards[i].dialer);
		a->shards[i].dialer = NULL;
		inflight_clear(&a->shards[i]);
	}
	if (a->data && a->pool && pool_free_slots(a->pool) < pool_slots(a->pool) &&
	    a->rt.cfg->stop_wait_ms)
		serve_while_read(a);
	else
		agent_stop_rest(a);
}

static int register_metrics(struct agent *a)
{
#define DEC	 "cksm_decisions_received_total"
#define DEC_HELP "Decisions received from shards, by action."
	const struct metric_def defs[] = {
		METRIC_C(a->m_hb_sent, "cksm_agent_heartbeats_sent_total",
			 "Heartbeats sent to shards."),
		METRIC_C(a->m_hb_acked, "cksm_agent_heartbeats_acked_total",
			 "Heartbeats acknowledged by shards."),
		METRIC_C(a->m_registered, "cksm_agent_registrations_total",
			 "Registrations accepted by shards."),
		METRIC_C(a->m_reconnects, "cksm_agent_reconnects_total",
			 "Connections to shards re-established after a loss."),
		METRIC_C(a->m_sent, "cksm_digests_sent_total",
			 "Digests sent to shards (identical ids of a batch count once)."),
		METRIC_CL(a->m_decisions[1], DEC, DEC_HELP, "action=\"leave\""),
		METRIC_CL(a->m_decisions[2], DEC, DEC_HELP, "action=\"back_local\""),
		METRIC_CL(a->m_decisions[3], DEC, DEC_HELP, "action=\"back_remote\""),
		METRIC_CL(a->m_decisions[4], DEC, DEC_HELP, "action=\"create_dup\""),
		METRIC_CL(a->m_decisions[5], DEC, DEC_HELP, "action=\"zero\""),
		METRIC_C(a->m_orders, "cksm_dup_orders_received_total",
			 "Dup create and release orders received from shards."),
		METRIC_C(a->m_sent_pages, "cksm_digest_pages_sent_total",
			 "Pages the digests sent to shards stand for."),
		METRIC_C(a->m_unanswered, "cksm_reports_unanswered_total",
			 "Reports a shard refused or did not answer."),
		METRIC_G(a->m_dups, "cksm_pool_dups", "Dups this node's page pool holds."),
		METRIC_G(
			a->m_net, "cksm_net_saved_bytes",
			"cksm_saved_bytes less the memory the page pool takes: what this node saves, net."),
		METRIC_G(a->m_pool_free, "cksm_pool_free_slots", "Free slots of the page pool."),
		METRIC_C(a->m_refs_sent, "cksm_ref_updates_sent_total",
			 "Reference changes on this node's dups sent to shards."),
	};
#undef DEC
#undef DEC_HELP
	struct metrics *r = a->rt.reg;

	if (metrics_register(r, defs, sizeof(defs) / sizeof(defs[0])))
		return -ENOMEM;
	for (unsigned i = 0; i < a->nshards; i++) {
		char labels[32];

		snprintf(labels, sizeof(labels), "shard=\"%u\"", i);
		a->shards[i].m_up =
			metrics_gauge(r, "cksm_agent_shard_up",
				      "1 while the agent is registered with the shard.", labels);
		if (!a->shards[i].m_up)
			return -ENOMEM;
	}
	return 0;
}

static void on_attached(void *arg, pid_t pid, bool merge_all)
{
	struct agent *a = arg;

	scanrun_attach(a->scan, pid, merge_all ? TARGET_WHOLE : TARGET_MERGEABLE);
}

static void on_detached(void *arg, pid_t pid)
{
	struct agent *a = arg;

	scanrun_attach(a->scan, pid, -1);
}

/*
 * The page pool, and the socket processes attach to. Without a pool the
 * node still scans and reports; without /dev/userfaultfd or the socket,
 * no process can attach and nothing is evicted.
 */
static int start_backing(struct agent *a)
{
	const struct config *cfg = a->rt.cfg;
	char err[256];
	size_t kept;

	for (unsigned d = 0; d < cfg->ndomains; d++)
		if (cid_domain_init(&a->domains[d], &a->rt.key, cfg->domains[d].id,
				    cfg->domains[d].name))
			return -EINVAL;
	a->state_fd = keep_open(cfg->state_dir);
	if (a->state_fd < 0)
		return a->state_fd; /* logged: an agent must not share another's state */
	a->pool = pool_open(cfg->state_dir, cfg->pool_pages, &kept, err, sizeof(err));
	if (!a->pool) {
		log_error("no page pool: %s", err);
		return 0;
	}
	if (pool_slots(a->pool) != cfg->pool_pages)
		log_warn(
			"the pool in %s has %zu slots, kept from an earlier agent; pool_pages = %u takes effect once it is removed",
			cfg->state_dir, pool_slots(a->pool), cfg->pool_pages);
	log_info("page pool of %zu slots in %s (%zu kept from an earlier agent)",
		 pool_slots(a->pool), cfg->state_dir, kept);
	a->tk = transport_kind_choose(cfg);
	if (!a->tk)
		return -EINVAL; /* logged */
	if (cfg->data_listen[0]) {
		a->data = a->tk->serve(&a->rt.net, cfg, &a->rt.key, a->pool, a->rt.reg);
		if (!a->data)
			return -EADDRINUSE; /* logged */
		if (!cfg->data_address[0])
			log_warn(
				"data_listen without data_address: other nodes are not told where to read this node's pool");
	}
	a->backing = backing_create(cfg, &a->rt.loop, a->rt.reg, a->pool, a->state_fd, a->domains,
				    a->tk, &a->rt.key);
	if (!a->backing)
		return 0;
	backing_set_hooks(a->backing, on_attached, on_detached, a);
	a->copier = copier_create(cfg, &a->rt.loop, a->pool, a->domains, a->tk, &a->rt.key,
				  copy_done, a);
	if (!a->copier)
		log_warn("no copier: this node cannot carry out DupCreate orders");
	scanrun_set_backing(a->scan, a->backing, a->pool);
	return 0;
}

#define RESTORE_WAIT_MS 10000

/* --restore: once every kept process came back (or none will), stop. */
static void on_restore_tick(uv_timer_t *t)
{
	struct agent *a = t->data;
	size_t left = a->backing ? backing_waiting(a->backing) : 0;

	if (left && uv_now(&a->rt.loop) - a->restore_from < RESTORE_WAIT_MS)
		return;
	if (left)
		log_warn("%zu processes did not come back within %d ms: their pages stay kept",
			 left, RESTORE_WAIT_MS);
	uv_timer_stop(t);
	raise(SIGTERM); /* the stop brings every page home */
}

int agent_main(const struct config *cfg, bool restore)
{
	struct agent *a;
	int rc = 1;

	a = calloc(1, sizeof(*a));
	if (!a)
		return 1;
	if (runtime_init(&a->rt, cfg, CKSM__ROLE__ROLE_AGENT, cfg->node_name, cfg->agent_metrics))
		goto fini_runtime;
	a->state_fd = -1;
	a->rt.role = a;
	a->rt.stop = agent_stop;
	a->nshards = cfg->nshards;
	a->dup_idle_ms = cfg->dup_idle_millisecs;
	randombytes_buf(&a->incarnation, sizeof(a->incarnation));
	if (register_metrics(a))
		goto fini_runtime;
	a->scan = scanrun_create(cfg, &a->rt.key, a->rt.reg, &a->rt.loop, flush_reports, a);
	if (!a->scan)
		goto fini_runtime;
	/* From here on agent_stop takes down whatever was started. */
	uv_timer_init(&a->rt.loop, &a->hb);
	a->hb.data = a;
	if (start_backing(a))
		goto stop;
	for (unsigned i = 0; i < a->nshards; i++) {
		struct agent_shard *s = &a->shards[i];

		s->a = a;
		s->id = i;
		s->dead_after_ms = cfg->dead_after_ms;
		s->dialer = dialer_create(&a->rt.net, cfg->shards[i].address, &agent_conn_ops, s,
					  cfg->reconnect_min_ms, cfg->reconnect_max_ms);
		if (!s->dialer) {
			log_error("shard %u address %s is not host:port", i,
				  cfg->shards[i].address);
			goto stop;
		}
		dialer_start(s->dialer);
	}
	uv_timer_start(&a->hb, on_heartbeat, cfg->heartbeat_ms, cfg->heartbeat_ms);
	if (restore) {
		/* Nothing is scanned, so nothing is evicted. */
		uv_timer_init(&a->rt.loop, &a->restore_timer);
		a->restore_timer.data = a;
		a->restore_from = uv_now(&a->rt.loop);
		uv_timer_start(&a->restore_timer, on_restore_tick, 100, 100);
		log_info("restoring: every backed page goes home once the processes came back");
	} else if (scanrun_start(a->scan)) {
		log_error("cannot start the scanner thread");
		goto stop;
	}
	log_info("node %s (rack %s) serving %u shard(s)", cfg->node_name, cfg->rack, a->nshards);
	rc = runtime_run(&a->rt) ? 1 : 0;
	goto fini_runtime;
stop:
	agent_stop(&a->rt);
fini_runtime:
	runtime_fini(&a->rt);
	pool_destroy(a->pool);
	if (a->state_fd >= 0)
		close(a->state_fd);
	free(a);
	return rc;
}
