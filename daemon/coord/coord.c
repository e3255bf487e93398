/*
 * coord - a coordinator shard.
 *
 * Agents connect, authenticate and Register under the name they
 * authenticated with; the shard gives each node a small id that is stable
 * for the life of the shard process. Every Heartbeat refreshes the node's
 * last_seen; a liveness sweep marks a node dead when it has been silent
 * longer than dead_after_ms, and a node that registers again is live
 * again. Admin connections (cksmctl) may only ask questions.
 *
 * All state is touched only from the loop thread.
 */
#include "coord.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conn.h"
#include "log.h"
#include "runtime.h"
#include "util.h"
#include "wire.h"

struct node {
	uint32_t id; /* index + 1 */
	char name[AUTH_NAME_MAX + 1];
	char rack[65];
	char address[272];     /* peer address of its connection */
	struct conn *conn;     /* NULL while disconnected */
	uint64_t last_seen_ms; /* loop time of the last heartbeat */
	uint64_t heartbeats;
	uint64_t incarnation;
	bool live;
};

struct coord {
	struct runtime rt;
	unsigned shard;
	const struct shard_conf *sc;
	struct listener *listener;
	uv_timer_t sweep;   /* liveness sweep */
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
	struct metric *m_digest_pages; /* pages they stand for */
	struct metric *m_reports;      /* reports accepted */
	struct metric *m_rej_foreign;  /* reports refused: foreign bucket */
	struct metric *m_rej_invalid;  /* reports refused: bad fields */
};

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
	n->id = co->nnodes;
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
	n = c->data ? c->data : node_by_name(co, r->node_name);
	if (!n)
		n = node_add(co, r->node_name);
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
	if (!n->live || n->incarnation != r->incarnation)
		log_info("node %s (id %u, rack %s) registered from %s", n->name, n->id, n->rack,
			 c->peer_addr);
	n->incarnation = r->incarnation;
	n->live = true;
	n->last_seen_ms = uv_now(&co->rt.loop);
	metric_inc(co->m_registrations);
	update_gauges(co);

	ack.node_id = n->id;
	ack.shard_id = co->shard;
	ack.heartbeat_ms = (uint32_t)co->rt.cfg->heartbeat_ms;
	ack.dead_after_ms = (uint32_t)co->rt.cfg->dead_after_ms;
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
		return conn_send(c, &m);
	}
	metric_inc(co->m_reports);
	metric_add(co->m_digests, r->n_digests);
	metric_add(co->m_digest_pages, pages);
	return 0;
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

		if (!n->live || now - n->last_seen_ms <= co->rt.cfg->dead_after_ms)
			continue;
		n->live = false;
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
	for (uint32_t i = 0; i < co->nnodes; i++) {
		if (co->nodes[i].conn) {
			co->nodes[i].conn->data = NULL;
			conn_close(co->nodes[i].conn);
			co->nodes[i].conn = NULL;
		}
	}
}

static int register_metrics(struct coord *co)
{
	struct metrics *r = co->rt.reg;
	static const char nodes_help[] = "Nodes this shard knows, by state.";

	co->m_live = metrics_gauge(r, "cksm_coord_nodes", nodes_help, "state=\"live\"");
	co->m_dead = metrics_gauge(r, "cksm_coord_nodes", nodes_help, "state=\"dead\"");
	co->m_registrations = metrics_counter(r, "cksm_coord_registrations_total",
					      "Node registrations accepted.", NULL);
	co->m_heartbeats = metrics_counter(r, "cksm_coord_heartbeats_total",
					   "Heartbeats received from nodes.", NULL);
	co->m_deaths = metrics_counter(r, "cksm_coord_node_deaths_total",
				       "Times a node was declared dead for silence.", NULL);
	co->m_admin = metrics_counter(r, "cksm_coord_admin_requests_total",
				      "Admin requests answered.", NULL);
	co->m_buckets =
		metrics_gauge(r, "cksm_coord_buckets", "Content-id buckets this shard owns.", NULL);
	co->m_reports =
		metrics_counter(r, "cksm_coord_reports_total", "Digest reports accepted.", NULL);
	co->m_digests = metrics_counter(r, "cksm_coord_digests_total", "Digests accepted.", NULL);
	co->m_digest_pages = metrics_counter(r, "cksm_coord_digest_pages_total",
					     "Pages the accepted digests stand for.", NULL);
	co->m_rej_foreign = metrics_counter(r, "cksm_coord_reports_refused_total",
					    "Digest reports refused, nothing changed.",
					    "reason=\"foreign_bucket\"");
	co->m_rej_invalid =
		metrics_counter(r, "cksm_coord_reports_refused_total",
				"Digest reports refused, nothing changed.", "reason=\"invalid\"");
	if (!co->m_live || !co->m_dead || !co->m_registrations || !co->m_heartbeats ||
	    !co->m_deaths || !co->m_admin || !co->m_buckets || !co->m_reports || !co->m_digests ||
	    !co->m_digest_pages || !co->m_rej_foreign || !co->m_rej_invalid)
		return -ENOMEM;
	return 0;
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
	rc = runtime_run(&co->rt) ? 1 : 0;
out_fini:
	runtime_fini(&co->rt);
	free(co->nodes);
	free(co);
	return rc;
}
