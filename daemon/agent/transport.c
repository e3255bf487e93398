/*
 * transport - see transport.h; the TCP implementation.
 *
 * Reader: blocking connections (sconn.h) in the calling thread, one per
 * peer address, reopened after any error. A batch to one peer is
 * pipelined: every request goes out before the first answer is read.
 * Holder: a listener on the agent's loop answering PageRead from the pool
 * (a stale (slot, generation) gets -ESTALE, never other bytes).
 */
#include "transport.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "sconn.h"

#define PEERS 16

struct tcp_transport {
	struct transport t;
	const struct auth_key *key;
	char name[AUTH_NAME_MAX + 1];
	int timeout_ms;
	uint64_t tag;
	struct peer {
		char addr[DUP_ADDR_MAX];
		struct sconn s;
		bool open;
		uint64_t used; /* for eviction of the least recent */
	} peers[PEERS];
	uint64_t clock;
};

static struct peer *peer_get(struct tcp_transport *tt, const char *addr, int *rc)
{
	struct peer *p = NULL, *old = &tt->peers[0];
	char err[256];

	for (int i = 0; i < PEERS; i++) {
		if (tt->peers[i].open && !strcmp(tt->peers[i].addr, addr)) {
			p = &tt->peers[i];
			break;
		}
		if (!tt->peers[i].open || tt->peers[i].used < old->used)
			old = &tt->peers[i];
	}
	if (!p) {
		p = old;
		if (p->open)
			sconn_close(&p->s);
		p->open = false;
		*rc = sconn_open_to(&p->s, addr, tt->key, CKSM__ROLE__ROLE_AGENT, tt->name,
				    CKSM__ROLE__ROLE_AGENT, tt->timeout_ms, err, sizeof(err));
		if (*rc) {
			log_warn("data transport: %s", err);
			return NULL;
		}
		snprintf(p->addr, sizeof(p->addr), "%s", addr);
		p->open = true;
	}
	p->used = ++tt->clock;
	*rc = 0;
	return p;
}

static void peer_drop(struct peer *p)
{
	if (p->open)
		sconn_close(&p->s);
	p->open = false;
}

static int send_read(struct tcp_transport *tt, struct peer *p, const struct dup_loc *d,
		     uint64_t tag)
{
	Cksm__Msg m = CKSM__MSG__INIT;
	Cksm__PageRead r = CKSM__PAGE_READ__INIT;

	(void)tt;
	r.tag = tag;
	r.slot = d->slot;
	r.generation = d->gen;
	m.body_case = CKSM__MSG__BODY_PAGE_READ;
	m.page_read = &r;
	return sconn_send(&p->s, &m);
}

static int recv_page(struct peer *p, uint64_t tag, void *buf)
{
	int rc = 0;
	Cksm__Msg *m = sconn_recv(&p->s, &rc);

	if (!m)
		return rc ? rc : -EPROTO;
	if (m->body_case != CKSM__MSG__BODY_PAGE_DATA || m->page_data->tag != tag)
		rc = -EPROTO;
	else if (m->page_data->status)
		rc = m->page_data->status < 0 ? m->page_data->status : -EPROTO;
	else if (m->page_data->data.len != POOL_SLOT)
		rc = -EPROTO;
	else
		memcpy(buf, m->page_data->data.data, POOL_SLOT);
	cksm__msg__free_unpacked(m, NULL);
	return rc;
}

static int tcp_read(struct transport *t, const struct dup_loc *d, void *buf)
{
	struct tcp_transport *tt = (struct tcp_transport *)t;
	uint64_t tag = ++tt->tag;
	int rc;
	struct peer *p = peer_get(tt, d->addr, &rc);

	if (!p)
		return rc;
	rc = send_read(tt, p, d, tag);
	if (!rc)
		rc = recv_page(p, tag, buf);
	if (rc && rc != -ESTALE)
		peer_drop(p); /* the stream is in doubt: start afresh next time */
	return rc;
}

static void tcp_read_batch(struct transport *t, const struct dup_loc *d, void *const *bufs,
			   int *rcs, size_t n)
{
	struct tcp_transport *tt = (struct tcp_transport *)t;

	for (size_t i = 0; i < n;) {
		size_t j = i;
		uint64_t tag0 = tt->tag + 1;
		int rc;
		struct peer *p = peer_get(tt, d[i].addr, &rc);

		/* A run of reads from one peer goes out at once. */
		while (j < n && !strcmp(d[j].addr, d[i].addr))
			j++;
		for (size_t k = i; k < j; k++)
			rcs[k] = !p ? rc : send_read(tt, p, &d[k], ++tt->tag);
		for (size_t k = i; p && k < j; k++)
			if (!rcs[k])
				rcs[k] = recv_page(p, tag0 + (k - i), bufs[k]);
		for (size_t k = i; p && k < j; k++)
			if (rcs[k] && rcs[k] != -ESTALE) {
				peer_drop(p);
				break;
			}
		i = j;
	}
}

static void tcp_destroy(struct transport *t)
{
	struct tcp_transport *tt = (struct tcp_transport *)t;

	for (int i = 0; i < PEERS; i++)
		peer_drop(&tt->peers[i]);
	free(tt);
}

static const struct transport_ops tcp_ops = {
	.name = "tcp",
	.read = tcp_read,
	.read_batch = tcp_read_batch,
	.destroy = tcp_destroy,
};

struct transport *tcp_transport_create(const struct auth_key *key, const char *name, int timeout_ms)
{
	struct tcp_transport *tt = calloc(1, sizeof(*tt));

	if (!tt)
		return NULL;
	tt->t.ops = &tcp_ops;
	tt->key = key;
	snprintf(tt->name, sizeof(tt->name), "%s", name);
	tt->timeout_ms = timeout_ms;
	return &tt->t;
}

/* ---- the holder's side ----------------------------------------------------- */

static int serve_msg(struct conn *c, const Cksm__Msg *m)
{
	struct pool *pool = c->data;
	Cksm__Msg out = CKSM__MSG__INIT;
	Cksm__PageData d = CKSM__PAGE_DATA__INIT;
	struct pool_ref ref;
	const void *bytes;

	if (c->peer_role != CKSM__ROLE__ROLE_AGENT)
		return conn_fail(c, -EPERM, "page reads are for agents");
	if (m->body_case != CKSM__MSG__BODY_PAGE_READ)
		return conn_fail(c, -EOPNOTSUPP, "only page reads on the data port");
	d.tag = m->page_read->tag;
	ref.slot = m->page_read->slot > UINT32_MAX ? UINT32_MAX : (uint32_t)m->page_read->slot;
	ref.gen = m->page_read->generation;
	/* The bytes are copied into the frame at once: no reference needed. */
	bytes = pool_page(pool, ref, NULL);
	if (bytes) {
		d.data.data = (uint8_t *)bytes;
		d.data.len = POOL_SLOT;
	} else {
		d.status = -ESTALE;
	}
	out.body_case = CKSM__MSG__BODY_PAGE_DATA;
	out.page_data = &d;
	return conn_send(c, &out);
}

static void serve_ready(struct conn *c)
{
	(void)c;
}

static void serve_close(struct conn *c)
{
	(void)c;
}

static const struct conn_ops serve_ops = {
	.on_ready = serve_ready,
	.on_msg = serve_msg,
	.on_close = serve_close,
};

struct listener *tcp_transport_serve(struct net_ctx *net, const char *addr, struct pool *pool)
{
	return listener_create(net, addr, &serve_ops, pool);
}
