/*
 * coord - a coordinator shard.
 *
 * Agents connect, authenticate and Register under the name they
 * authenticated with; a node's id is a hash of that name (node_id_of), the
 * same at every shard and after restarts, so dup references stay valid.
 * Every Heartbeat refreshes the node's last_seen; a liveness sweep marks a
 * node dead when it has been silent longer than dead_after_ms, and a node
 * that registers again is live again and asked to resync, as is a new
 * agent (another incarnation) of a node still live. Digest reports
 * feed the stable tree (stree.h), whose decisions go back to the
 * reporter and whose orders go to the nodes they name. Admin connections
 * (cksmctl) may only ask questions.
 *
 * All state is touched only from the loop thread.
 */
#include "coord.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conn.h"
#include "hll.h"
#include "stree.h"
#include "log.h"
#include "netaddr.h"
#include "runtime.h"
#include "util.h"
#include "wire.h"

struct node {
	uint32_t id; /* node_id_of(name): the same on every shard */
	char name[AUTH_NAME_MAX + 1];
	char rack[65];
	char address[272];	/* peer address of its connection */
	char data_address[128]; /* where peers read its pool, "" if nowhere */
	struct conn *conn;	/* NULL while disconnected */
	uint64_t last_seen_ms;	/* loop time of the last heartbeat */
	uint64_t heartbeats;
	uint64_t incarnation;
	bool live;
	bool forgotten;		    /* dead for forget_dead_ms: its references went */
	struct node_census *census; /* its latest census, one per domain */
	unsigned ncensus;
	uint8_t *usage; /* its latest UsageReport, packed, as checked */
	size_t usage_len;
};

/* The most pages a census may count of one kind: 16 TiB of one node. */
#define CENSUS_PAGES_MAX (1ull << 32)

/* A node's latest census of one domain (shard 0 receives them). */
struct node_census {
	uint8_t domain;
	uint64_t stable;
	uint64_t zero;
	struct hll h;	   /* its stable pages */
	struct hll shared; /* those with another copy in the cluster */
};

struct coord {
	struct runtime rt;
	unsigned shard;
	const struct shard_conf *sc;
	struct listener *listener;
	uv_timer_t sweep; /* liveness sweep */
	struct log_quota refuse_quota;
	struct node *nodes; /* by id - 1 */
	uint32_t nnodes;
	uint32_t cap;
	struct metric *m_live;
	struct metric *m_dead;
	struct metric *m_registrations;
	struct metric *m_heartbeats;
	struct metric *m_deaths;
	struct metric *m_admin;
	struct metric *m_buckets;
	struct metric *m_digests;      /* digests accepted */
	struct metric *m_stays;	       /* ... whose pages stay (no dup asked) */
	struct metric *m_digest_pages; /* pages they stand for */
	struct metric *m_reports;      /* reports accepted */
	struct metric *m_rej_foreign;  /* reports refused: foreign bucket */
	struct metric *m_rej_invalid;  /* reports refused: bad fields */
	struct stree *tree;	       /* this shard's stable tree */
	uv_timer_t prune;	       /* stable tree prune slices */
	uint64_t round_started_ms;     /* loop time the current prune round began */
	uv_timer_t age;		       /* unstable filter ageing */
	struct metric *m_decisions[STREE_CREATE_DUP + 1]; /* by action */
	struct metric *m_refused_dup;			  /* DupCreated refused */
	struct metric *m_refused_ref;			  /* RefUpdate / Resync refused */
	struct metric *m_refused_census;		  /* CensusReport refused */
	struct metric *m_refused_usage;			  /* UsageReport refused */
	struct metric *m_orders_create, *m_orders_release;
	struct metric *m_shared, *m_sharing, *m_unshared, *m_chains, *m_dups, *m_saved;
	struct metric *m_contents, *m_tree_bytes;
};

static struct node *node_by_id(struct coord *co, uint32_t id)
{
	for (uint32_t i = 0; i < co->nnodes; i++)
		if (co->nodes[i].id == id)
			return &co->nodes[i];
	return NULL;
}

static struct node *node_by_id(struct coord *co, uint32_t id);

static bool data_address_ok(const char *a)
{
	struct sockaddr_storage ss;

	return netaddr_parse(a, &ss) == 0;
}

/* A dup as nodes see it, with where its holder serves reads. */
static void fill_dupref(struct coord *co, Cksm__DupRef *r, const struct stree_dupref *d)
{
	const struct node *n = node_by_id(co, d->node);

	cksm__dup_ref__init(r);
	r->node_id = d->node;
	r->slot = d->slot;
	r->generation = d->gen;
	if (n && n->data_address[0])
		r->address = (char *)n->data_address;
}

/* The tree orders a node to make a dup (re-replication, placement). */
static void order_create(void *arg, uint32_t node, uint64_t hi, uint64_t lo,
			 const struct stree_dupref *src, unsigned nsrc)
{
	struct coord *co = arg;
	struct node *n = node_by_id(co, node);
	Cksm__Msg m = CKSM__MSG__INIT;
	Cksm__DupCreate dc = CKSM__DUP_CREATE__INIT;
	Cksm__DupRef r[STREE_MAX_REPLICAS], *rp[STREE_MAX_REPLICAS];

	metric_inc(co->m_orders_create);
	if (!n || !n->conn) {
		stree_dup_failed(co->tree, node, hi, lo);
		return;
	}
	for (unsigned i = 0; i < nsrc; i++) {
		fill_dupref(co, &r[i], &src[i]);
		rp[i] = &r[i];
	}
	dc.id_hi = hi;
	dc.id_lo = lo;
	dc.domain = (uint32_t)(hi >> 56);
	dc.n_sources = nsrc;
	dc.sources = rp;
	m.body_case = CKSM__MSG__BODY_DUP_CREATE;
	m.dup_create = &dc;
	conn_send(n->conn, &m);
}

/* The tree releases an unreferenced dup: its holder may free the slot. */
static void order_release(void *arg, uint64_t hi, uint64_t lo, const struct stree_dupref *d)
{
	struct coord *co = arg;
	struct node *n = node_by_id(co, d->node);
	Cksm__Msg m = CKSM__MSG__INIT;
	Cksm__DupRelease rel = CKSM__DUP_RELEASE__INIT;
	Cksm__DupRef r;

	(void)hi;
	(void)lo;
	metric_inc(co->m_orders_release);
	if (!n || !n->conn)
		return; /* it learns at resync that the dup is gone */
	fill_dupref(co, &r, d);
	rel.dup = &r;
	m.body_case = CKSM__MSG__BODY_DUP_RELEASE;
	m.dup_release = &rel;
	conn_send(n->conn, &m);
}

static const struct stree_ops tree_ops = { order_create, order_release };

static struct node *node_by_name(struct coord *co, const char *name)
{
	for (uint32_t i = 0; i < co->nnodes; i++)
		if (strcmp(co->nodes[i].name, name) == 0)
			return &co->nodes[i];
	return NULL;
}

static struct node *node_add(struct coord *co, const char *name)
{
	struct node *n;

	if (co->nnodes == co->cap) {
		uint32_t cap = co->cap ? co->cap * 2 : 16;
		struct node *nn = realloc(co->nodes, cap * sizeof(*nn));

		if (!nn)
			return NULL;
		/* conns point at nodes through c->data: re-point them */
		for (uint32_t i = 0; i < co->nnodes; i++)
			if (nn[i].conn)
				nn[i].conn->data = &nn[i];
		co->nodes = nn;
		co->cap = cap;
	}
	n = &co->nodes[co->nnodes++];
	memset(n, 0, sizeof(*n));
	n->id = node_id_of(name);
	snprintf(n->name, sizeof(n->name), "%s", name);
	return n;
}

static void update_gauges(struct coord *co)
{
	uint32_t live = 0;

	for (uint32_t i = 0; i < co->nnodes; i++)
		live += co->nodes[i].live;
	metric_set(co->m_live, live);
	metric_set(co->m_dead, co->nnodes - live);
}

static struct coord *coord_of(struct conn *c)
{
	return container_of(c->net, struct coord, rt.net);
}

static int handle_register(struct coord *co, struct conn *c, const Cksm__Register *r)
{
	Cksm__Msg out = CKSM__MSG__INIT;
	Cksm__RegisterAck ack = CKSM__REGISTER_ACK__INIT;
	Cksm__BucketRange br[CONFIG_MAX_RANGES], *brp[CONFIG_MAX_RANGES];
	struct node *n;
	bool fresh = false; /* first registration with this shard process */

	if (c->peer_role != CKSM__ROLE__ROLE_AGENT)
		return conn_fail(c, -EPERM, "only agents may register");
	if (!r->node_name || strcmp(r->node_name, c->peer_name) != 0)
		return conn_fail(c, -EPERM, "registers as '%s' but authenticated as '%s'",
				 r->node_name ? r->node_name : "", c->peer_name);
	if (r->buckets != co->rt.cfg->buckets)
		return conn_fail(c, -EINVAL,
				 "agent's shard map has %u buckets, this shard's has %u",
				 r->buckets, co->rt.cfg->buckets);
	if (r->rack && r->rack[0] && !name_valid(r->rack))
		return conn_fail(c, -EINVAL,
				 "rack label is not 1 to 64 letters, digits, '.', '_' or '-'");
	if (r->data_address && r->data_address[0] &&
	    (strlen(r->data_address) >= 128 || !data_address_ok(r->data_address)))
		return conn_fail(c, -EINVAL, "data address '%.64s' is not host:port",
				 r->data_address);
	n = c->data ? c->data : node_by_name(co, r->node_name);
	if (!n) {
		struct node *o = node_by_id(co, node_id_of(r->node_name));

		if (o)
			return conn_fail(
				c, -EEXIST,
				"node name '%s' has the same id (%u) as node '%s'; rename one",
				r->node_name, o->id, o->name);
		n = node_add(co, r->node_name);
		fresh = true;
	}
	if (!n)
		return conn_fail(c, -ENOMEM, "out of memory adding a node");
	if (n->conn && n->conn != c) {
		log_warn("node %s registered again from %s; closing its old connection from %s",
			 n->name, c->peer_addr, n->address);
		n->conn->data = NULL;
		conn_close(n->conn);
	}
	n->conn = c;
	c->data = n;
	snprintf(n->rack, sizeof(n->rack), "%s", r->rack && r->rack[0] ? r->rack : "default");
	snprintf(n->address, sizeof(n->address), "%s", c->peer_addr);
	snprintf(n->data_address, sizeof(n->data_address), "%s",
		 r->data_address && data_address_ok(r->data_address) ? r->data_address : "");
	/* It was dead: the tree dropped what it held. Or it is a new agent (a
	 * killed one's successor, back before it was declared dead) with the
	 * pool it took over: slots the tree does not know (made before a
	 * DupCreated could be sent, or kept past a DupRelease) are learnt from
	 * its resync, and released when idle. */
	if (!n->live || n->incarnation != r->incarnation) {
		fresh = true;
		log_info("node %s (id %u, rack %s) registered from %s", n->name, n->id, n->rack,
			 c->peer_addr);
	}
	n->incarnation = r->incarnation;
	n->live = true;
	n->last_seen_ms = uv_now(&co->rt.loop);
	stree_node_live(co->tree, n->id);
	if (stree_node_add(co->tree, n->id, node_id_of(n->rack)))
		return conn_fail(c, -ENOSPC, "this shard has no room for more nodes");
	/* Its resync sets every count it has now; the ones kept from before
	 * (while it was dead, or a killed agent's) go first. */
	if (fresh)
		stree_node_forget(co->tree, n->id);
	n->forgotten = false;
	stree_node_room(co->tree, n->id, r->pool ? r->pool->slots_free : 0);
	metric_inc(co->m_registrations);
	update_gauges(co);

	ack.node_id = n->id;
	ack.shard_id = co->shard;
	ack.heartbeat_ms = (uint32_t)co->rt.cfg->heartbeat_ms;
	ack.dead_after_ms = (uint32_t)co->rt.cfg->dead_after_ms;
	ack.dup_idle_ms = co->rt.cfg->dup_idle_millisecs;
	/* A shard that never saw this node (it started after the node did, or
	 * restarted) rebuilds its soft state from what the node holds. */
	ack.resync_wanted = fresh;
	for (unsigned i = 0; i < co->sc->nranges; i++) {
		cksm__bucket_range__init(&br[i]);
		br[i].first = co->sc->ranges[i].first;
		br[i].last = co->sc->ranges[i].last;
		brp[i] = &br[i];
	}
	ack.n_owned = co->sc->nranges;
	ack.owned = brp;
	out.body_case = CKSM__MSG__BODY_REGISTER_ACK;
	out.register_ack = &ack;
	return conn_send(c, &out);
}

static int handle_heartbeat(struct coord *co, struct conn *c, const Cksm__Heartbeat *hb)
{
	Cksm__Msg out = CKSM__MSG__INIT;
	Cksm__HeartbeatAck ack = CKSM__HEARTBEAT_ACK__INIT;
	struct node *n = c->data;

	if (!n)
		return conn_fail(c, -EPROTO, "heartbeat before register");
	n->last_seen_ms = uv_now(&co->rt.loop);
	n->heartbeats++;
	if (hb->pool)
		stree_node_room(co->tree, n->id, hb->pool->slots_free);
	if (!n->live) {
		log_info("node %s is live again", n->name);
		n->live = true;
		update_gauges(co);
	}
	metric_inc(co->m_heartbeats);
	ack.seq = hb->seq;
	out.body_case = CKSM__MSG__BODY_HEARTBEAT_ACK;
	out.heartbeat_ack = &ack;
	return conn_send(c, &out);
}

#define DECISIONS_PER_BATCH 512

/*
 * Answer a report: the decisions that ask the node to act, in batches,
 * the last one carrying which digests have another copy in the cluster.
 */
static int decide(struct coord *co, struct conn *c, const Cksm__DigestReport *r)
{
	static Cksm__Decision dec[4096];
	static Cksm__Decision *decp[4096];
	static Cksm__DupRef refs[4096][STREE_MAX_REPLICAS];
	static Cksm__DupRef *refp[4096][STREE_MAX_REPLICAS];
	static uint8_t shared[4096 / 8];
	Cksm__Msg m = CKSM__MSG__INIT;
	Cksm__DecisionBatch b = CKSM__DECISION_BATCH__INIT;
	const struct node *n = c->data;
	size_t k = 0, i = 0;

	memset(shared, 0, (r->n_digests + 7) / 8);
	for (i = 0; i < r->n_digests; i++) {
		const Cksm__Digest *d = r->digests[i];
		struct stree_decision sd;

		if (i + 8 < r->n_digests)
			stree_prefetch(co->tree, r->digests[i + 8]->id_hi,
				       r->digests[i + 8]->id_lo);

		if (stree_report_flags(co->tree, n->id, d->id_hi, d->id_lo, d->pages,
				       (d->again ? STREE_AGAIN : 0) | (d->stays ? STREE_STAYS : 0),
				       &sd))
			continue;
		metric_inc(co->m_decisions[sd.action]);
		if (d->stays)
			metric_inc(co->m_stays);
		if (sd.shared)
			shared[i / 8] |= (uint8_t)(1u << (i % 8));
		if (sd.action == STREE_LEAVE)
			continue; /* silence: keep the page */
		cksm__decision__init(&dec[k]);
		dec[k].id_hi = d->id_hi;
		dec[k].id_lo = d->id_lo;
		dec[k].action = (Cksm__Action)sd.action;
		for (unsigned j = 0; j < sd.ndups; j++) {
			fill_dupref(co, &refs[k][j], &sd.dups[j]);
			refp[k][j] = &refs[k][j];
		}
		dec[k].n_dups = sd.ndups;
		dec[k].dups = refp[k];
		decp[k] = &dec[k];
		k++;
	}
	/* At most DECISIONS_PER_BATCH per message, so a batch stays far below
	 * the smallest max_frame_bytes whatever the replica lists hold. */
	b.domain = r->domain;
	b.report_seq = r->seq;
	m.body_case = CKSM__MSG__BODY_DECISIONS;
	m.decisions = &b;
	i = 0;
	do {
		int rc;

		b.n_decisions = k - i < DECISIONS_PER_BATCH ? k - i : DECISIONS_PER_BATCH;
		b.decisions = &decp[i];
		i += b.n_decisions;
		if (i == k) {
			b.last = true;
			b.shared.data = shared;
			b.shared.len = (r->n_digests + 7) / 8;
		}
		rc = conn_send(c, &m);
		if (rc)
			return rc;
	} while (i < k);
	return 0;
}

/* An input the tree refused: tell the node, count it, keep the connection. */
static int refuse(struct coord *co, struct conn *c, struct metric *counter, int rc,
		  const char *what)
{
	Cksm__Msg m = CKSM__MSG__INIT;
	Cksm__Error e = CKSM__ERROR__INIT;
	char msg[160];

	uint64_t held;

	metric_inc(counter);
	snprintf(msg, sizeof(msg), "%s refused: %s", what,
		 rc == -ENOENT	 ? "no such content or dup"
		 : rc == -EPERM	 ? "not ordered from this node"
		 : rc == -EEXIST ? "that dup exists already"
		 : rc == -ERANGE ? "a count would go negative or is out of range"
		 : rc == -E2BIG	 ? "above max_page_sharing"
				 : strerror(-rc));
	/* A node's counts on a dead holder's dups are refused at every
	 * resend: logged within a quota, all counted. */
	if (log_quota_take(&co->refuse_quota, uv_now(&co->rt.loop), &held)) {
		if (held)
			log_warn(
				"%llu more refusals were not logged (cksm_coord_refused_total counts them)",
				(unsigned long long)held);
		log_warn("node %s: %s", c->peer_name, msg);
	}
	e.code = rc;
	e.message = msg;
	m.body_case = CKSM__MSG__BODY_ERROR;
	m.error = &e;
	return conn_send(c, &m);
}

static int handle_dup_created(struct coord *co, struct conn *c, const Cksm__DupCreated *d)
{
	const struct node *n = c->data;
	int rc;

	if (!n)
		return conn_fail(c, -EPROTO, "dup report before register");
	if (!d->ok) {
		log_info("node %s could not make a dup: %s", n->name, d->reason ? d->reason : "");
		stree_dup_failed(co->tree, n->id, d->id_hi, d->id_lo);
		return 0;
	}
	if (!d->dup || d->dup->node_id != n->id)
		return refuse(co, c, co->m_refused_dup, -EPERM, "a dup held by another node");
	rc = stree_dup_created(co->tree, n->id, d->id_hi, d->id_lo, d->dup->slot,
			       d->dup->generation);
	return rc ? refuse(co, c, co->m_refused_dup, rc, "dup") : 0;
}

static int handle_ref_update(struct coord *co, struct conn *c, const Cksm__RefUpdate *u)
{
	const struct node *n = c->data;
	struct stree_dupref r;
	int rc;

	if (!n)
		return conn_fail(c, -EPROTO, "reference update before register");
	if (!u->dup)
		return refuse(co, c, co->m_refused_ref, -EINVAL, "reference update without a dup");
	r = (struct stree_dupref){ u->dup->node_id, u->dup->slot, u->dup->generation };
	rc = u->set ? stree_ref_set(co->tree, n->id, u->id_hi, u->id_lo, &r, u->refs)
		    : stree_ref(co->tree, n->id, u->id_hi, u->id_lo, &r, u->delta);
	/* A holder counting a dup of its own the tree does not have: one
	 * released as the count crossed the DupRelease, or one never entered
	 * (its DupCreated came too late): either way not the tree's, and
	 * released (again), so that the holder frees it once its pages come
	 * back. No references on a dup released meanwhile: what the tree
	 * holds already. */
	if (rc == -ENOENT && u->set && u->dup->node_id == n->id) {
		order_release(co, u->id_hi, u->id_lo, &r);
		return 0;
	}
	if (rc == -ENOENT && u->set && u->refs == 0)
		return 0;
	return rc ? refuse(co, c, co->m_refused_ref, rc, "reference update") : 0;
}

static int handle_resync(struct coord *co, struct conn *c, const Cksm__Resync *rs)
{
	const struct node *n = c->data;
	size_t refused = 0;
	int first_rc = 0;

	if (!n)
		return conn_fail(c, -EPROTO, "resync before register");
	for (size_t i = 0; i < rs->n_entries; i++) {
		const Cksm__ResyncEntry *e = rs->entries[i];
		struct stree_dupref r;
		int rc;

		if (!e->dup)
			return refuse(co, c, co->m_refused_ref, -EINVAL,
				      "resync entry without a dup");
		if (config_bucket_shard(co->rt.cfg, (uint32_t)(e->id_lo & (co->rt.cfg->buckets -
									   1))) != (int)co->shard ||
		    (e->id_hi >> 56) != e->domain)
			return refuse(co, c, co->m_refused_ref, -EINVAL,
				      "resync entry of another shard's bucket or domain");
		r = (struct stree_dupref){ e->dup->node_id, e->dup->slot, e->dup->generation };
		rc = stree_resync(co->tree, n->id, e->id_hi, e->id_lo, &r, e->refs, e->held_here);
		/* One entry refused (say, a dup whose holder has not come back
		 * yet) does not stop the others. */
		if (rc && !refused++)
			first_rc = rc;
	}
	if (rs->last)
		log_info("node %s resynced", n->name);
	if (refused) {
		char what[64];

		snprintf(what, sizeof(what), "%zu resync entr%s", refused,
			 refused == 1 ? "y" : "ies");
		return refuse(co, c, co->m_refused_ref, first_rc, what);
	}
	return 0;
}

/* The node x node sharing matrix, non-zero cells only; freed by free_matrix. */
static int add_matrix(struct coord *co, Cksm__StatsReply *rep)
{
	size_t n = co->nnodes < STREE_MAX_NODES ? co->nnodes : STREE_MAX_NODES, k = 0;
	uint32_t *ids = calloc(n ? n : 1, sizeof(*ids));
	uint64_t *m = calloc(n ? n * n : 1, sizeof(*m));
	Cksm__MatrixCell *cells = NULL, **cp = NULL;

	if (!ids || !m)
		goto nomem;
	n = stree_matrix(co->tree, ids, m, n);
	for (size_t i = 0; i < n * n; i++)
		k += m[i] != 0;
	cells = calloc(k ? k : 1, sizeof(*cells));
	cp = calloc(k ? k : 1, sizeof(*cp));
	if (!cells || !cp)
		goto nomem;
	k = 0;
	for (size_t i = 0; i < n; i++)
		for (size_t j = 0; j < n; j++) {
			if (!m[i * n + j])
				continue;
			cksm__matrix_cell__init(&cells[k]);
			cells[k].from = ids[i];
			cells[k].to = ids[j];
			cells[k].pages = m[i * n + j];
			cp[k] = &cells[k];
			k++;
		}
	if (k) {
		rep->n_matrix = k;
		rep->matrix = cp; /* cp[0] is cells: free_matrix frees both */
	} else {
		free(cells);
		free(cp);
	}
	free(ids);
	free(m);
	return 0;
nomem:
	free(ids);
	free(m);
	free(cells);
	free(cp);
	return -ENOMEM;
}

static void free_matrix(Cksm__StatsReply *rep)
{
	if (rep->n_matrix)
		free(rep->matrix[0]);
	free(rep->matrix);
}

static int handle_census_report(struct coord *co, struct conn *c, const Cksm__CensusReport *r)
{
	struct node *n = c->data;
	struct node_census *nc = NULL;

	if (!n)
		return conn_fail(c, -EPROTO, "census report before register");
	if (r->registers.len != HLL_REGISTERS || r->domain > 255 ||
	    (r->shared_registers.len && r->shared_registers.len != HLL_REGISTERS) ||
	    !hll_registers_valid(r->registers.data, r->registers.len) ||
	    !hll_registers_valid(r->shared_registers.data, r->shared_registers.len) ||
	    r->stable_pages > CENSUS_PAGES_MAX || r->zero_pages > CENSUS_PAGES_MAX)
		return refuse(co, c, co->m_refused_census, -EINVAL, "census report");
	for (unsigned i = 0; i < n->ncensus; i++)
		if (n->census[i].domain == r->domain)
			nc = &n->census[i];
	if (!nc) {
		struct node_census *v;

		if (n->ncensus == 256)
			return refuse(co, c, co->m_refused_census, -ENOSPC, "census report");
		v = realloc(n->census, (n->ncensus + 1) * sizeof(*v));
		if (!v)
			return conn_fail(c, -ENOMEM, "out of memory keeping a census");
		n->census = v;
		nc = &n->census[n->ncensus++];
		nc->domain = (uint8_t)r->domain;
	}
	nc->stable = r->stable_pages;
	nc->zero = r->zero_pages;
	memcpy(nc->h.r, r->registers.data, HLL_REGISTERS);
	/* Without the shared sketch every content counts as shared: the
	 * cluster figure then errs low, never high. */
	memcpy(nc->shared.r, r->shared_registers.len ? r->shared_registers.data : r->registers.data,
	       HLL_REGISTERS);
	return 0;
}

#define USAGE_MAX  64	/* processes, and cgroups, per UsageReport */
#define COMM_MAX   15	/* TASK_COMM_LEN - 1 */
#define CGROUP_MAX 4096 /* PATH_MAX */

/* A name from a node: printable ASCII (the agent escapes the rest). */
static bool name_printable(const char *s, size_t max)
{
	size_t i;

	for (i = 0; i <= max && s[i]; i++)
		if (s[i] < 0x20 || s[i] > 0x7e)
			return false;
	return i <= max;
}

static const char *usage_invalid(const Cksm__UsageReport *u)
{
	if (u->n_processes > USAGE_MAX || u->n_cgroups > USAGE_MAX)
		return "more than 64 processes or cgroups";
	for (size_t i = 0; i < u->n_processes; i++) {
		const Cksm__ProcessUsage *p = u->processes[i];

		if (!name_printable(p->comm, COMM_MAX) || !name_printable(p->cgroup, CGROUP_MAX))
			return "a process name or cgroup path that is too long or not printable";
		if (p->shared_pages > p->stable_pages)
			return "more shared pages than stable ones";
	}
	for (size_t i = 0; i < u->n_cgroups; i++) {
		const Cksm__CgroupUsage *g = u->cgroups[i];

		if (!name_printable(g->cgroup, CGROUP_MAX))
			return "a cgroup path that is too long or not printable";
		if (g->shared_pages > g->stable_pages)
			return "more shared pages than stable ones";
	}
	return NULL;
}

/* Shard 0 keeps each node's latest usage as it came, once checked. */
static int handle_usage_report(struct coord *co, struct conn *c, const Cksm__UsageReport *u)
{
	struct node *n = c->data;
	const char *why;
	uint8_t *v;
	size_t len;

	if (!n)
		return conn_fail(c, -EPROTO, "usage report before register");
	why = usage_invalid(u);
	if (why) {
		char what[128];

		snprintf(what, sizeof(what), "usage report (%s)", why);
		return refuse(co, c, co->m_refused_usage, -EINVAL, what);
	}
	len = cksm__usage_report__get_packed_size(u);
	v = malloc(len ? len : 1);
	if (!v)
		return conn_fail(c, -ENOMEM, "out of memory keeping a usage report");
	cksm__usage_report__pack(u, v);
	free(n->usage);
	n->usage = v;
	n->usage_len = len;
	return 0;
}

/* A sketch's estimate, at most cap: the pages it was made of. */
static uint64_t estimate_at_most(const struct hll *h, uint64_t cap)
{
	double e = hll_estimate(h) + 0.5;

	return e < (double)cap ? (uint64_t)e : cap;
}

/*
 * What merging could save, from the nodes' latest censuses (live nodes):
 * node-local merging keeps one page per distinct content and one zero
 * page per node; merging across the cluster keeps, per domain, one page
 * of each content nobody else holds and R copies (the replicas, at most
 * the live nodes) of each content with another copy, and no zero page.
 */
static Cksm__Census *census_of(struct coord *co, Cksm__NodeCensus **nodes)
{
	static Cksm__Census cen;
	static struct hll u, us;
	uint64_t kept = 0, live = 0;
	uint32_t r;

	cksm__census__init(&cen);
	for (uint32_t i = 0; i < co->nnodes; i++)
		live += co->nodes[i].live;
	r = co->rt.cfg->replicas < live ? co->rt.cfg->replicas : (uint32_t)live;
	if (r < 1)
		r = 1;
	for (unsigned d = 0; d < 256; d++) {
		bool any = false, used = false;
		uint64_t distinct, shared, stable = 0;

		/* Only the domains some node reported (clearing a sketch is 16 KiB). */
		for (uint32_t i = 0; i < co->nnodes && !used; i++)
			for (unsigned k = 0; k < co->nodes[i].ncensus; k++)
				used = used || co->nodes[i].census[k].domain == d;
		if (!used)
			continue;

		hll_clear(&u);
		hll_clear(&us);
		for (uint32_t i = 0; i < co->nnodes; i++)
			for (unsigned k = 0; co->nodes[i].live && k < co->nodes[i].ncensus; k++)
				if (co->nodes[i].census[k].domain == d) {
					hll_merge(&u, &co->nodes[i].census[k].h);
					hll_merge(&us, &co->nodes[i].census[k].shared);
					stable += co->nodes[i].census[k].stable;
					any = true;
				}
		if (!any)
			continue;
		distinct = estimate_at_most(&u, stable);
		shared = estimate_at_most(&us, distinct);
		kept += distinct + (uint64_t)(r - 1) * shared;
	}
	for (uint32_t i = 0; i < co->nnodes; i++) {
		const struct node *n = &co->nodes[i];
		uint64_t stable = 0, zero = 0, local = 0;

		for (unsigned k = 0; n->live && k < n->ncensus; k++) {
			uint64_t distinct = estimate_at_most(&n->census[k].h, n->census[k].stable);

			stable += n->census[k].stable;
			zero += n->census[k].zero;
			local += (n->census[k].stable > distinct ? n->census[k].stable - distinct
								 : 0) +
				 (n->census[k].zero ? n->census[k].zero - 1 : 0);
		}
		cksm__node_census__init(nodes[i]);
		nodes[i]->node_id = n->id;
		nodes[i]->stable_pages = stable;
		nodes[i]->zero_pages = zero;
		nodes[i]->local_saveable_pages = local;
		cen.stable_pages += stable;
		cen.zero_pages += zero;
		cen.local_saveable_pages += local;
	}
	cen.cluster_saveable_pages =
		(cen.stable_pages > kept ? cen.stable_pages - kept : 0) + cen.zero_pages;
	/* Estimates may cross; and where KSM saves more, the nodes run it. */
	if (cen.cluster_saveable_pages < cen.local_saveable_pages)
		cen.cluster_saveable_pages = cen.local_saveable_pages;
	cen.copies_kept = r;
	cen.n_nodes = co->nnodes;
	cen.nodes = nodes;
	return &cen;
}

static int handle_stats(struct coord *co, struct conn *c, const Cksm__StatsRequest *q)
{
	static uint32_t tids[STREE_MAX_NODES];
	static uint64_t theld[STREE_MAX_NODES], trefs[STREE_MAX_NODES];
	Cksm__Msg m = CKSM__MSG__INIT;
	Cksm__StatsReply rep = CKSM__STATS_REPLY__INIT;
	Cksm__NodeCounters cl = CKSM__NODE_COUNTERS__INIT;
	Cksm__NodeStats *ns = NULL, **nsp = NULL;
	Cksm__NodeCounters *nc = NULL;
	struct stree_stats s;
	int rc;

	stree_stats(co->tree, &s);
	cl.pages_shared = s.pages_shared;
	cl.pages_sharing = s.pages_sharing;
	cl.pages_unshared = s.pages_unshared;
	rep.cluster = &cl;
	rep.stable_node_chains = s.stable_node_chains;
	rep.stable_node_dups = s.stable_node_dups;
	if (q->per_node && co->nnodes) {
		ns = calloc(co->nnodes, sizeof(*ns));
		nsp = calloc(co->nnodes, sizeof(*nsp));
		nc = calloc(co->nnodes, sizeof(*nc));
		if (!ns || !nsp || !nc) {
			free(ns);
			free(nsp);
			free(nc);
			return conn_fail(c, -ENOMEM, "out of memory answering stats");
		}
		size_t tn = stree_nodes_stats(co->tree, tids, theld, trefs, STREE_MAX_NODES);

		for (uint32_t i = 0; i < co->nnodes; i++) {
			uint64_t held = 0, refs = 0;

			for (size_t j = 0; j < tn; j++)
				if (tids[j] == co->nodes[i].id) {
					held = theld[j];
					refs = trefs[j];
				}
			cksm__node_stats__init(&ns[i]);
			cksm__node_counters__init(&nc[i]);
			nc[i].pages_shared = held;
			nc[i].pages_sharing = refs;
			ns[i].node_id = co->nodes[i].id;
			ns[i].node_name = co->nodes[i].name;
			ns[i].counters = &nc[i];
			nsp[i] = &ns[i];
		}
		rep.n_nodes = co->nnodes;
		rep.nodes = nsp;
		rc = add_matrix(co, &rep);
		if (rc) {
			free(ns);
			free(nsp);
			free(nc);
			return conn_fail(c, rc, "out of memory answering stats");
		}
	}
	{
		static Cksm__NodeCensus ncs[STREE_MAX_NODES], *ncp[STREE_MAX_NODES];
		bool any = false;

		for (uint32_t i = 0; i < co->nnodes && i < STREE_MAX_NODES; i++) {
			ncp[i] = &ncs[i];
			any = any || co->nodes[i].ncensus;
		}
		if (any && co->nnodes <= STREE_MAX_NODES)
			rep.census = census_of(co, ncp);
	}
	m.body_case = CKSM__MSG__BODY_STATS_REPLY;
	m.stats_reply = &rep;
	rc = conn_send(c, &m);
	free_matrix(&rep);
	free(ns);
	free(nsp);
	free(nc);
	return rc;
}

/*
 * A report is taken whole or not at all: a digest of a bucket this shard
 * does not own (the agent's shard map differs), a digest whose domain tag
 * is not the report's, or a zero page count refuses the report with an
 * Error to the agent, counted, and nothing is changed. The connection
 * stays: the agent's other reports may be fine.
 */
static int handle_digest_report(struct coord *co, struct conn *c, const Cksm__DigestReport *r)
{
	const char *why = NULL;
	uint64_t pages = 0;
	uint32_t bad_bucket = 0;
	bool foreign = false;

	if (!c->data)
		return conn_fail(c, -EPROTO, "digest report before register");
	if (r->domain > 255 || r->n_digests == 0 || r->n_digests > 4096)
		why = "domain above 255 or not 1 to 4096 digests";
	for (size_t i = 0; i < r->n_digests && !why; i++) {
		const Cksm__Digest *d = r->digests[i];
		uint32_t b = (uint32_t)(d->id_lo & (co->rt.cfg->buckets - 1));

		if (d->pages == 0)
			why = "a digest with zero pages";
		else if ((d->id_hi >> 56) != r->domain)
			why = "a digest tagged with another domain";
		else if (config_bucket_shard(co->rt.cfg, b) != (int)co->shard) {
			why = "a digest for a bucket this shard does not own";
			bad_bucket = b;
			foreign = true;
		}
		pages += d->pages;
	}
	if (why) {
		char msg[160];
		Cksm__Msg m = CKSM__MSG__INIT;
		Cksm__Error e = CKSM__ERROR__INIT;

		metric_inc(foreign ? co->m_rej_foreign : co->m_rej_invalid);
		if (foreign)
			snprintf(msg, sizeof(msg),
				 "report refused: bucket %u belongs to shard %d, not %u",
				 bad_bucket, config_bucket_shard(co->rt.cfg, bad_bucket),
				 co->shard);
		else
			snprintf(msg, sizeof(msg), "report refused: %s", why);
		log_warn("node %s: %s", c->peer_name, msg);
		e.code = -EINVAL;
		e.message = msg;
		m.body_case = CKSM__MSG__BODY_ERROR;
		m.error = &e;
		if (conn_send(c, &m))
			return -EIO;
		/* The answer all the same, empty, so the node stops waiting. */
		{
			Cksm__DecisionBatch b = CKSM__DECISION_BATCH__INIT;

			b.domain = r->domain;
			b.report_seq = r->seq;
			b.last = true;
			m.body_case = CKSM__MSG__BODY_DECISIONS;
			m.decisions = &b;
			return conn_send(c, &m);
		}
	}
	metric_inc(co->m_reports);
	metric_add(co->m_digests, r->n_digests);
	metric_add(co->m_digest_pages, pages);
	return decide(co, c, r);
}

/* Collects a content's chain for ADMIN_TREE (see stree_visit). */
#define STREE_MAX_DUPS_SHOWN 256

struct tree_view {
	struct coord *co;
	Cksm__ContentTree t;
	Cksm__TreeDup *dups[STREE_MAX_DUPS_SHOWN];
	size_t ndups;
	bool oom;
};

static void view_dup(void *arg, const struct stree_dupref *d, uint32_t total)
{
	struct tree_view *v = arg;
	Cksm__TreeDup *td;

	if (v->ndups == STREE_MAX_DUPS_SHOWN ||
	    !(td = calloc(1, sizeof(*td) + sizeof(Cksm__DupRef)))) {
		v->oom = true;
		return;
	}
	cksm__tree_dup__init(td);
	td->dup = (Cksm__DupRef *)(td + 1);
	fill_dupref(v->co, td->dup, d);
	td->total = total;
	v->dups[v->ndups++] = td;
}

static void view_ref(void *arg, uint32_t node, uint32_t pages)
{
	struct tree_view *v = arg;
	Cksm__TreeDup *td;
	Cksm__NodeRef **nr, *r;

	if (!v->ndups || v->oom)
		return;
	td = v->dups[v->ndups - 1];
	nr = realloc(td->refs, (td->n_refs + 1) * sizeof(*nr));
	r = malloc(sizeof(*r));
	if (!nr || !r) {
		free(r);
		if (nr)
			td->refs = nr;
		v->oom = true;
		return;
	}
	td->refs = nr;
	cksm__node_ref__init(r);
	r->node_id = node;
	r->pages = pages;
	td->refs[td->n_refs++] = r;
}

static void free_tree(Cksm__AdminReply *rep)
{
	if (!rep->tree)
		return;
	for (size_t i = 0; i < rep->tree->n_dups; i++) {
		for (size_t j = 0; j < rep->tree->dups[i]->n_refs; j++)
			free(rep->tree->dups[i]->refs[j]);
		free(rep->tree->dups[i]->refs);
		free(rep->tree->dups[i]);
	}
}

/* ADMIN_TREE: one content of this shard's buckets. */
static int answer_tree(struct coord *co, const Cksm__AdminRequest *req, Cksm__AdminReply *rep,
		       Cksm__Msg *out)
{
	static struct tree_view v;
	static char err[96];
	unsigned long long hi, lo;
	uint32_t bucket;
	int owner, n = 0;

	memset(&v, 0, sizeof(v));
	v.co = co;
	out->body_case = CKSM__MSG__BODY_ADMIN_REPLY;
	out->admin_reply = rep;
	if (req->n_args != 1 || strlen(req->args[0]) != 32 ||
	    sscanf(req->args[0], "%16llx%16llx%n", &hi, &lo, &n) != 2 || n != 32) {
		rep->status = -EINVAL;
		rep->error = (char *)"a content id is 32 hex digits";
		return 0;
	}
	bucket = (uint32_t)(lo & (co->rt.cfg->buckets - 1));
	owner = config_bucket_shard(co->rt.cfg, bucket);
	if (owner != (int)co->shard) {
		snprintf(err, sizeof(err), "bucket %u of this id belongs to shard %d", bucket,
			 owner);
		rep->status = -EXDEV;
		rep->error = err;
		return 0;
	}
	cksm__content_tree__init(&v.t);
	v.t.id_hi = hi;
	v.t.id_lo = lo;
	{
		bool seen;

		v.t.in_tree = stree_visit(co->tree, hi, lo, &seen, &v.t.pending_node, view_dup,
					  view_ref, &v) == 1;
		v.t.seen = seen;
	}
	v.t.n_dups = v.ndups;
	v.t.dups = v.dups;
	rep->tree = &v.t;
	if (v.oom) {
		rep->status = -ENOMEM;
		rep->error = (char *)"out of memory listing the chain";
	}
	return 0;
}

static int proc_by_shareable(const void *x, const void *y)
{
	const Cksm__ProcessUsage *a = *(Cksm__ProcessUsage *const *)x,
				 *b = *(Cksm__ProcessUsage *const *)y;
	uint64_t sa = a->zero_pages + a->shared_pages, sb = b->zero_pages + b->shared_pages;

	return sa != sb ? (sa > sb ? -1 : 1) : 0;
}

static int group_by_shareable(const void *x, const void *y)
{
	const Cksm__CgroupUsage *a = *(Cksm__CgroupUsage *const *)x,
				*b = *(Cksm__CgroupUsage *const *)y;
	uint64_t sa = a->zero_pages + a->shared_pages, sb = b->zero_pages + b->shared_pages;

	return sa != sb ? (sa > sb ? -1 : 1) : 0;
}

/*
 * ADMIN_TOP: every live node's latest usage, named. Shard 0 alone receives
 * usage reports; other shards answer with empty lists.
 */
static int answer_top(struct coord *co, struct conn *c, Cksm__AdminReply *rep, Cksm__Msg *out)
{
	Cksm__UsageReport **u = calloc(co->nnodes ? co->nnodes : 1, sizeof(*u));
	Cksm__ProcessUsage **p = NULL;
	Cksm__CgroupUsage **g = NULL;
	char **pname = NULL, **gname = NULL; /* the names as unpacked */
	size_t np = 0, ng = 0, most = (size_t)co->nnodes * USAGE_MAX + 1;
	int rc;

	p = calloc(most, sizeof(*p));
	g = calloc(most, sizeof(*g));
	pname = calloc(most, sizeof(*pname));
	gname = calloc(most, sizeof(*gname));
	if (!u || !p || !g || !pname || !gname) {
		rep->status = -ENOMEM;
		rep->error = (char *)"out of memory";
		goto send;
	}
	for (uint32_t i = 0; i < co->nnodes; i++) {
		struct node *n = &co->nodes[i];

		if (!n->live || !n->usage)
			continue;
		u[i] = cksm__usage_report__unpack(NULL, n->usage_len, n->usage);
		if (!u[i])
			continue;
		for (size_t k = 0; k < u[i]->n_processes && k < USAGE_MAX; k++) {
			pname[np] = u[i]->processes[k]->node_name;
			u[i]->processes[k]->node_id = n->id;
			u[i]->processes[k]->node_name = n->name;
			p[np++] = u[i]->processes[k];
		}
		for (size_t k = 0; k < u[i]->n_cgroups && k < USAGE_MAX; k++) {
			gname[ng] = u[i]->cgroups[k]->node_name;
			u[i]->cgroups[k]->node_id = n->id;
			u[i]->cgroups[k]->node_name = n->name;
			g[ng++] = u[i]->cgroups[k];
		}
	}
	/* The most shareable first, as many as fit in half a frame each. */
	qsort(p, np, sizeof(*p), proc_by_shareable);
	qsort(g, ng, sizeof(*g), group_by_shareable);
	{
		size_t room = co->rt.cfg->max_frame_bytes / 2 - 1024, used = 0, k;

		for (k = 0; k < np; k++) {
			used += cksm__process_usage__get_packed_size(p[k]) + 8;
			if (used > room)
				break;
		}
		rep->n_processes = k;
		for (k = 0, used = 0; k < ng; k++) {
			used += cksm__cgroup_usage__get_packed_size(g[k]) + 8;
			if (used > room)
				break;
		}
		rep->n_cgroups = k;
	}
	rep->processes = p;
	rep->cgroups = g;
send:
	out->body_case = CKSM__MSG__BODY_ADMIN_REPLY;
	out->admin_reply = rep;
	rc = conn_send(c, out);
	/* The names point into the node table: give back the unpacked ones. */
	for (size_t k = 0; k < np; k++)
		p[k]->node_name = pname[k];
	for (size_t k = 0; k < ng; k++)
		g[k]->node_name = gname[k];
	for (uint32_t i = 0; u && i < co->nnodes; i++)
		if (u[i])
			cksm__usage_report__free_unpacked(u[i], NULL);
	free(u);
	free(p);
	free(g);
	free(pname);
	free(gname);
	return rc;
}

static int handle_admin(struct coord *co, struct conn *c, const Cksm__AdminRequest *req)
{
	Cksm__Msg out = CKSM__MSG__INIT;
	Cksm__AdminReply rep = CKSM__ADMIN_REPLY__INIT;
	Cksm__BucketRange br[CONFIG_MAX_RANGES], *brp[CONFIG_MAX_RANGES];
	Cksm__NodeStatus *ns = NULL, **nsp = NULL;
	uint64_t now = uv_now(&co->rt.loop);
	char shard_name[32];
	int rc;

	if (c->peer_role != CKSM__ROLE__ROLE_ADMIN)
		return conn_fail(c, -EPERM, "admin request from a non-admin peer");
	metric_inc(co->m_admin);
	snprintf(shard_name, sizeof(shard_name), "shard-%u", co->shard);
	rep.shard_id = co->shard;
	rep.shard_name = shard_name;
	rep.version = (char *)CKSM_VERSION;
	rep.uptime_ms = runtime_uptime_ms(&co->rt);
	if (req->command == CKSM__ADMIN_COMMAND__ADMIN_TREE) {
		answer_tree(co, req, &rep, &out);
		rc = conn_send(c, &out);
		free_tree(&rep);
		return rc;
	}
	if (req->command == CKSM__ADMIN_COMMAND__ADMIN_TOP)
		return answer_top(co, c, &rep, &out);
	if (req->command != CKSM__ADMIN_COMMAND__ADMIN_STATUS) {
		rep.status = -EOPNOTSUPP;
		rep.error = (char *)"unknown admin command";
		goto send;
	}
	for (unsigned i = 0; i < co->sc->nranges; i++) {
		cksm__bucket_range__init(&br[i]);
		br[i].first = co->sc->ranges[i].first;
		br[i].last = co->sc->ranges[i].last;
		brp[i] = &br[i];
	}
	rep.n_owned = co->sc->nranges;
	rep.owned = brp;
	if (co->nnodes) {
		ns = calloc(co->nnodes, sizeof(*ns));
		nsp = calloc(co->nnodes, sizeof(*nsp));
		if (!ns || !nsp) {
			rep.status = -ENOMEM;
			rep.error = (char *)"out of memory";
			goto send;
		}
	}
	for (uint32_t i = 0; i < co->nnodes; i++) {
		const struct node *n = &co->nodes[i];

		cksm__node_status__init(&ns[i]);
		ns[i].node_id = n->id;
		ns[i].name = (char *)n->name;
		ns[i].rack = (char *)n->rack;
		ns[i].live = n->live;
		ns[i].address = (char *)n->address;
		ns[i].last_seen_ms = now - n->last_seen_ms;
		ns[i].heartbeats = n->heartbeats;
		ns[i].incarnation = n->incarnation;
		nsp[i] = &ns[i];
	}
	rep.n_nodes = co->nnodes;
	rep.nodes = nsp;
send:
	out.body_case = CKSM__MSG__BODY_ADMIN_REPLY;
	out.admin_reply = &rep;
	rc = conn_send(c, &out);
	free(ns);
	free(nsp);
	return rc;
}

static int on_msg(struct conn *c, const Cksm__Msg *m)
{
	struct coord *co = coord_of(c);

	switch (m->body_case) {
	case CKSM__MSG__BODY_REGISTER:
		return handle_register(co, c, m->register_);
	case CKSM__MSG__BODY_DIGEST_REPORT:
		return handle_digest_report(co, c, m->digest_report);
	case CKSM__MSG__BODY_DUP_CREATED:
		return handle_dup_created(co, c, m->dup_created);
	case CKSM__MSG__BODY_REF_UPDATE:
		return handle_ref_update(co, c, m->ref_update);
	case CKSM__MSG__BODY_RESYNC:
		return handle_resync(co, c, m->resync);
	case CKSM__MSG__BODY_CENSUS_REPORT:
		return handle_census_report(co, c, m->census_report);
	case CKSM__MSG__BODY_USAGE_REPORT:
		return handle_usage_report(co, c, m->usage_report);
	case CKSM__MSG__BODY_STATS_REQUEST:
		if (c->peer_role != CKSM__ROLE__ROLE_ADMIN)
			return conn_fail(c, -EPERM, "stats request from a non-admin peer");
		return handle_stats(co, c, m->stats_request);
	case CKSM__MSG__BODY_HEARTBEAT:
		return handle_heartbeat(co, c, m->heartbeat);
	case CKSM__MSG__BODY_ADMIN_REQUEST:
		return handle_admin(co, c, m->admin_request);
	case CKSM__MSG__BODY_ERROR:
		log_warn("%s %s reports an error: %s", c->peer_addr, c->peer_name,
			 m->error->message);
		return 0;
	default:
		metric_inc(c->net->m.rej_unexpected);
		return conn_fail(c, -EOPNOTSUPP, "message %s is not accepted by a coordinator",
				 wire_body_name(m));
	}
}

static void on_close(struct conn *c)
{
	struct node *n = c->data;

	if (n && n->conn == c) {
		n->conn = NULL;
		log_info("node %s disconnected; dead unless it is back within %llu ms", n->name,
			 (unsigned long long)coord_of(c)->rt.cfg->dead_after_ms);
	}
}

static const struct conn_ops coord_conn_ops = {
	.on_msg = on_msg,
	.on_close = on_close,
};

static void on_sweep(uv_timer_t *t)
{
	struct coord *co = t->data;
	uint64_t now = uv_now(&co->rt.loop);

	for (uint32_t i = 0; i < co->nnodes; i++) {
		struct node *n = &co->nodes[i];

		if (!n->live && !n->forgotten && n->last_seen_ms &&
		    now - n->last_seen_ms > co->rt.cfg->forget_dead_ms) {
			n->forgotten = true;
			stree_node_forget(co->tree, n->id);
			log_warn(
				"node %s dead for %llu s: its references are forgotten, and dups only it used will go",
				n->name, (unsigned long long)(now - n->last_seen_ms) / 1000);
		}
		if (!n->live || now - n->last_seen_ms <= co->rt.cfg->dead_after_ms)
			continue;
		n->live = false;
		stree_node_dead(co->tree, n->id);
		metric_inc(co->m_deaths);
		log_warn("node %s is dead: no heartbeat for %llu ms", n->name,
			 (unsigned long long)(now - n->last_seen_ms));
		if (n->conn) {
			n->conn->data = NULL;
			conn_fail(n->conn, -ETIMEDOUT, "node declared dead");
			n->conn = NULL;
		}
	}
	update_gauges(co);
}

static void coord_stop(struct runtime *rt)
{
	struct coord *co = rt->role;

	listener_destroy(co->listener);
	co->listener = NULL;
	uv_close((uv_handle_t *)&co->sweep, NULL);
	uv_close((uv_handle_t *)&co->prune, NULL);
	uv_close((uv_handle_t *)&co->age, NULL);
	for (uint32_t i = 0; i < co->nnodes; i++) {
		if (co->nodes[i].conn) {
			co->nodes[i].conn->data = NULL;
			conn_close(co->nodes[i].conn);
			co->nodes[i].conn = NULL;
		}
	}
}

static void publish_tree(struct coord *co)
{
	struct stree_stats s;

	stree_round_stats(co->tree, &s);
	metric_set(co->m_shared, (double)s.pages_shared);
	metric_set(co->m_sharing, (double)s.pages_sharing);
	metric_set(co->m_unshared, (double)s.pages_unshared);
	metric_set(co->m_chains, (double)s.stable_node_chains);
	metric_set(co->m_dups, (double)s.stable_node_dups);
	metric_set(co->m_contents, (double)s.contents);
	metric_set(co->m_tree_bytes, (double)s.bytes);
	/* Every reference beyond the dups' own pages is a page not kept. */
	metric_set(co->m_saved,
		   s.refs > s.pages_shared ? (double)(s.refs - s.pages_shared) * 4096 : 0);
}

#define PRUNE_SLICE_MS	    20	  /* a round advances this often ... */
#define PRUNE_SLICE_ENTRIES 65536 /* ... by this many entries */

/*
 * The prune round runs in slices so the loop never stalls on a big tree;
 * a new round starts prune_millisecs after the previous one started.
 */
static void on_prune(uv_timer_t *t)
{
	struct coord *co = t->data;
	uint64_t now = uv_now(&co->rt.loop);

	if (stree_prune_idle(co->tree)) {
		if (now - co->round_started_ms < co->rt.cfg->prune_millisecs)
			return;
		co->round_started_ms = now;
	}
	if (stree_prune_step(co->tree, PRUNE_SLICE_ENTRIES))
		publish_tree(co);
}

static void on_age(uv_timer_t *t)
{
	struct coord *co = t->data;

	stree_age(co->tree);
}

static int register_metrics(struct coord *co)
{
#define NODES_HELP   "Nodes this shard knows, by state."
#define REFUSED	     "cksm_coord_reports_refused_total"
#define REFUSED_HELP "Digest reports refused, nothing changed."
#define MREFUSED     "cksm_coord_refused_total"
#define MREFUSED_HELP \
	"Dup, reference and resync messages refused (a resync from the refused entry on)."
#define DEC	 "cksm_coord_decisions_total"
#define DEC_HELP "Decisions taken on reported contents, by action."
	const struct metric_def defs[] = {
		{ &co->m_live, METRIC_GAUGE, "cksm_coord_nodes", NODES_HELP, "state=\"live\"" },
		{ &co->m_dead, METRIC_GAUGE, "cksm_coord_nodes", NODES_HELP, "state=\"dead\"" },
		METRIC_C(co->m_registrations, "cksm_coord_registrations_total",
			 "Node registrations accepted."),
		METRIC_C(co->m_heartbeats, "cksm_coord_heartbeats_total",
			 "Heartbeats received from nodes."),
		METRIC_C(co->m_deaths, "cksm_coord_node_deaths_total",
			 "Times a node was declared dead for silence."),
		METRIC_C(co->m_admin, "cksm_coord_admin_requests_total",
			 "Admin requests answered."),
		METRIC_G(co->m_buckets, "cksm_coord_buckets",
			 "Content-id buckets this shard owns."),
		METRIC_C(co->m_reports, "cksm_coord_reports_total", "Digest reports accepted."),
		METRIC_C(co->m_digests, "cksm_coord_digests_total", "Digests accepted."),
		METRIC_C(co->m_stays, "cksm_coord_digests_staying_total",
			 "Digests whose pages stay (not evicted soon): no dup made for them."),
		METRIC_C(co->m_digest_pages, "cksm_coord_digest_pages_total",
			 "Pages the accepted digests stand for."),
		METRIC_CL(co->m_rej_foreign, REFUSED, REFUSED_HELP, "reason=\"foreign_bucket\""),
		METRIC_CL(co->m_rej_invalid, REFUSED, REFUSED_HELP, "reason=\"invalid\""),
		METRIC_CL(co->m_decisions[STREE_LEAVE], DEC, DEC_HELP, "action=\"leave\""),
		METRIC_CL(co->m_decisions[STREE_BACK_LOCAL], DEC, DEC_HELP,
			  "action=\"back_local\""),
		METRIC_CL(co->m_decisions[STREE_BACK_REMOTE], DEC, DEC_HELP,
			  "action=\"back_remote\""),
		METRIC_CL(co->m_decisions[STREE_CREATE_DUP], DEC, DEC_HELP,
			  "action=\"create_dup\""),
		METRIC_CL(co->m_refused_dup, MREFUSED, MREFUSED_HELP, "what=\"dup\""),
		METRIC_CL(co->m_refused_ref, MREFUSED, MREFUSED_HELP, "what=\"reference\""),
		METRIC_CL(co->m_refused_census, MREFUSED, MREFUSED_HELP, "what=\"census\""),
		METRIC_CL(co->m_refused_usage, MREFUSED, MREFUSED_HELP, "what=\"usage\""),
		METRIC_C(co->m_orders_create, "cksm_coord_dup_create_orders_total",
			 "Orders to nodes to make a dup (placement, re-replication)."),
		METRIC_C(co->m_orders_release, "cksm_coord_dup_release_orders_total",
			 "Orders to nodes to free an unreferenced dup."),
		METRIC_G(co->m_shared, "cksm_pages_shared", "Dups that back at least one page."),
		METRIC_G(co->m_sharing, "cksm_pages_sharing",
			 "References beyond one per dup in use: pages saved."),
		METRIC_G(co->m_unshared, "cksm_pages_unshared",
			 "Contents seen once in the current unstable generation."),
		METRIC_G(co->m_chains, "cksm_stable_node_chains",
			 "Contents with more than one dup."),
		METRIC_G(co->m_dups, "cksm_stable_node_dups", "Dups in chains."),
		METRIC_G(co->m_saved, "cksm_saved_bytes", "Memory the references save, in bytes."),
		METRIC_G(co->m_contents, "cksm_coord_contents",
			 "Contents in this shard's stable tree."),
		METRIC_G(co->m_tree_bytes, "cksm_coord_tree_bytes",
			 "Memory held by the stable tree and the unstable filter."),
	};

	return metrics_register(co->rt.reg, defs, sizeof(defs) / sizeof(defs[0]));
#undef NODES_HELP
#undef REFUSED
#undef REFUSED_HELP
#undef MREFUSED
#undef MREFUSED_HELP
#undef DEC
#undef DEC_HELP
}

int coord_main(const struct config *cfg, unsigned shard)
{
	struct coord *co;
	char name[32];
	uint64_t owned = 0;
	int rc = 1;

	co = calloc(1, sizeof(*co));
	if (!co)
		return 1;
	co->shard = shard;
	co->sc = &cfg->shards[shard];
	snprintf(name, sizeof(name), "shard-%u", shard);
	if (runtime_init(&co->rt, cfg, CKSM__ROLE__ROLE_COORD, name, co->sc->metrics))
		goto out_fini;
	co->rt.role = co;
	co->rt.stop = coord_stop;
	if (register_metrics(co))
		goto out_fini;
	{
		struct stree_params p = {
			.max_page_sharing = cfg->max_page_sharing,
			.replicas = cfg->replicas,
			.merge_across_nodes = cfg->merge_across_nodes,
			.prune_ticks = (cfg->dup_idle_millisecs + cfg->prune_millisecs - 1) /
				       cfg->prune_millisecs,
			.unstable_capacity = cfg->unstable_capacity,
		};

		co->tree = stree_create(&p, &tree_ops, co);
		if (!co->tree) {
			log_error("out of memory creating the stable tree (unstable_capacity %llu)",
				  (unsigned long long)cfg->unstable_capacity);
			goto out_fini;
		}
	}
	for (unsigned i = 0; i < co->sc->nranges; i++)
		owned += co->sc->ranges[i].last - co->sc->ranges[i].first + 1;
	metric_set(co->m_buckets, (double)owned);
	co->listener = listener_create(&co->rt.net, co->sc->listen, &coord_conn_ops, NULL);
	if (!co->listener)
		goto out_fini;
	log_info("shard %u listening on %s for %llu of %u buckets", shard, co->sc->listen,
		 (unsigned long long)owned, cfg->buckets);
	uv_timer_init(&co->rt.loop, &co->sweep);
	co->sweep.data = co;
	uv_timer_start(&co->sweep, on_sweep, cfg->heartbeat_ms, cfg->heartbeat_ms);
	uv_timer_init(&co->rt.loop, &co->prune);
	co->prune.data = co;
	uv_timer_start(&co->prune, on_prune, PRUNE_SLICE_MS, PRUNE_SLICE_MS);
	uv_timer_init(&co->rt.loop, &co->age);
	co->age.data = co;
	uv_timer_start(&co->age, on_age, cfg->unstable_age_millisecs, cfg->unstable_age_millisecs);
	rc = runtime_run(&co->rt) ? 1 : 0;
out_fini:
	runtime_fini(&co->rt);
	stree_destroy(co->tree);
	for (uint32_t i = 0; i < co->nnodes; i++) {
		free(co->nodes[i].census);
		free(co->nodes[i].usage);
	}
	free(co->nodes);
	free(co);
	return rc;
}
