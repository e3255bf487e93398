/*
 * dial - see dial.h.
 *
 * States: idle (retry timer armed) -> resolving -> connecting -> conn
 * handshake -> ready. Every way out of connecting, handshake or ready ends
 * in dialer_conn_closed, which arms the retry timer; so there is exactly
 * one path back to a connection, and at most one conn per dialer.
 */
#include "dial.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "log.h"
#include "netaddr.h"

#define CONNECT_TIMEOUT_MS 5000

struct dialer {
	struct net_ctx *net;
	const struct conn_ops *ops;
	void *data;
	char addr[272];
	char host[256];
	char port[8];
	struct backoff bo;
	uv_timer_t timer; /* retry delay, then connect deadline */
	uv_getaddrinfo_t gai;
	struct conn *conn; /* the current attempt or connection */
	bool resolving;
	bool ready;
	bool destroying;
	bool timer_closed; /* after dialer_destroy */
};

static void try_connect(uv_timer_t *t);

static void schedule_retry(struct dialer *d)
{
	uint64_t ms = backoff_next(&d->bo, randombytes_random());

	log_debug("reconnecting to %s in %llu ms", d->addr, (unsigned long long)ms);
	uv_timer_start(&d->timer, try_connect, ms, 0);
}

static void on_connect_deadline(uv_timer_t *t)
{
	struct dialer *d = t->data;

	if (d->conn && !d->ready)
		conn_fail(d->conn, -ETIMEDOUT, "connect to %s timed out", d->addr);
}

static void on_connected(uv_connect_t *req, int status)
{
	struct conn *c = req->data;
	struct dialer *d = c->dialer;

	if (status == UV_ECANCELED || c->state == CONN_CLOSING || !d)
		return;
	if (status < 0) {
		/* Say it at the first retry of an outage, then every tenth. */
		if (d->bo.attempt <= 1 || d->bo.attempt % 10 == 0)
			log_warn("cannot connect to %s: %s (try %u)", d->addr, uv_strerror(status),
				 d->bo.attempt + 1);
		else
			log_debug("cannot connect to %s: %s", d->addr, uv_strerror(status));
		conn_close(c);
		return;
	}
	conn_start(c);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
	struct dialer *d = req->data;
	int rc;

	d->resolving = false;
	if (d->destroying) {
		uv_freeaddrinfo(res);
		if (d->timer_closed)
			free(d);
		return;
	}
	if (status < 0) {
		log_warn("cannot resolve %s: %s", d->host, uv_strerror(status));
		schedule_retry(d);
		return;
	}
	d->conn = conn_create(d->net, true, d->ops, d->data);
	if (!d->conn) {
		uv_freeaddrinfo(res);
		schedule_retry(d);
		return;
	}
	d->conn->dialer = d;
	snprintf(d->conn->peer_addr, sizeof(d->conn->peer_addr), "%s", d->addr);
	d->conn->creq.data = d->conn;
	rc = uv_tcp_connect(&d->conn->creq, &d->conn->tcp, res->ai_addr, on_connected);
	uv_freeaddrinfo(res);
	if (rc) {
		log_warn("cannot connect to %s: %s", d->addr, uv_strerror(rc));
		conn_close(d->conn);
		return;
	}
	uv_timer_start(&d->timer, on_connect_deadline, CONNECT_TIMEOUT_MS, 0);
}

static void try_connect(uv_timer_t *t)
{
	struct dialer *d = t->data;
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM };
	int rc;

	d->gai.data = d;
	rc = uv_getaddrinfo(d->net->loop, &d->gai, on_resolved, d->host, d->port, &hints);
	if (rc) {
		log_warn("cannot resolve %s: %s", d->host, uv_strerror(rc));
		schedule_retry(d);
		return;
	}
	d->resolving = true;
}

struct dialer *dialer_create(struct net_ctx *net, const char *addr, const struct conn_ops *ops,
			     void *data, uint64_t backoff_base_ms, uint64_t backoff_max_ms)
{
	struct dialer *d = calloc(1, sizeof(*d));

	if (!d)
		return NULL;
	if (strlen(addr) >= sizeof(d->addr) ||
	    netaddr_split(addr, d->host, sizeof(d->host), d->port, sizeof(d->port))) {
		free(d);
		return NULL;
	}
	strcpy(d->addr, addr);
	d->net = net;
	d->ops = ops;
	d->data = data;
	backoff_init(&d->bo, backoff_base_ms, backoff_max_ms);
	uv_timer_init(net->loop, &d->timer);
	d->timer.data = d;
	return d;
}

void dialer_start(struct dialer *d)
{
	uv_timer_start(&d->timer, try_connect, 0, 0);
}

void dialer_conn_ready(struct dialer *d, struct conn *c)
{
	(void)c;
	uv_timer_stop(&d->timer);
	backoff_reset(&d->bo);
	d->ready = true;
}

void dialer_conn_closed(struct dialer *d, struct conn *c)
{
	(void)c;
	d->conn = NULL;
	d->ready = false;
	uv_timer_stop(&d->timer);
	if (!d->destroying)
		schedule_retry(d);
}

/* A destroyed dialer is freed once its timer is closed and no resolve is pending. */
static void on_timer_closed(uv_handle_t *h)
{
	struct dialer *d = h->data;

	d->timer_closed = true;
	if (!d->resolving)
		free(d);
}

void dialer_destroy(struct dialer *d)
{
	if (!d)
		return;
	d->destroying = true;
	if (d->conn) {
		d->conn->dialer = NULL;
		conn_close(d->conn);
		d->conn = NULL;
	}
	if (d->resolving)
		uv_cancel((uv_req_t *)&d->gai);
	uv_close((uv_handle_t *)&d->timer, on_timer_closed);
}

struct conn *dialer_conn(const struct dialer *d)
{
	return d->ready ? d->conn : NULL;
}

const char *dialer_address(const struct dialer *d)
{
	return d->addr;
}
