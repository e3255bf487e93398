/*
 * tcp - the TCP transport kind (transport.h).
 *
 * A data connection starts with the handshake every cksm connection has
 * (frames, the cluster key); after it, page reads travel as fixed binary
 * records (data_req, data_ans below): page bytes need no encoding, and a
 * fault waits on this round trip.
 *
 * Reader: blocking connections in the calling thread, one per peer
 * address (at most PEERS, the least recently used closed first), reopened
 * after any error; every wait bounded by data_timeout_ms.
 * Holder: the handshake on the agent's loop, then the connection moves to
 * a thread of its own that answers from the pool with one sendmsg per
 * read, straight from the slot. A read names the content id it wants; a
 * stale (slot, generation), or a slot that holds another content, gets
 * -ESTALE and zeroes, never other bytes, and is logged with what was
 * wrong (the first REFUSALS_LOGGED of each connection; all are counted).
 * The key lets a peer connect; only the content id, which nobody derives
 * without holding the content in its domain, lets it read.
 */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "datawire.h"
#include "log.h"
#include "sconn.h"
#include "transport.h"

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

/* After the handshake: blocking, no Nagle, every wait bounded. */
static int data_mode(int fd, int timeout_ms)
{
	struct timeval tv = { timeout_ms / 1000, (timeout_ms % 1000) * 1000 };
	int fl = fcntl(fd, F_GETFL), one = 1;

	if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0 ||
	    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) ||
	    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) ||
	    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)))
		return -errno;
	return 0;
}

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
		*rc = data_mode(p->s.fd, tt->timeout_ms);
		if (*rc) {
			sconn_close(&p->s);
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

static int send_all(int fd, const void *buf, size_t len)
{
	for (size_t off = 0; off < len;) {
		ssize_t n = send(fd, (const char *)buf + off, len - off, MSG_NOSIGNAL);

		if (n <= 0)
			return n < 0 && errno != EAGAIN ? -errno : -ETIMEDOUT;
		off += (size_t)n;
	}
	return 0;
}

static int recv_page(struct peer *p, uint64_t tag, void *buf)
{
	struct data_ans a;
	struct iovec iov[2] = { { &a, sizeof(a) }, { buf, POOL_SLOT } };
	struct msghdr mh = { .msg_iov = iov, .msg_iovlen = 2 };
	ssize_t n = recvmsg(p->s.fd, &mh, MSG_WAITALL);

	if (n != (ssize_t)(sizeof(a) + POOL_SLOT))
		return n < 0 && errno != EAGAIN ? -errno : n == 0 ? -ECONNRESET : -ETIMEDOUT;
	return data_ans_check(&a, tag);
}

static int tcp_read(struct transport *t, const struct dup_loc *d, const struct cid *id, void *buf)
{
	struct tcp_transport *tt = (struct tcp_transport *)t;
	uint64_t tag = ++tt->tag;
	int rc;
	struct peer *p = peer_get(tt, d->addr, &rc);
	struct data_req r;

	if (!p)
		return rc;
	data_req_encode(&r, d->slot, d->gen, id, tag);
	rc = send_all(p->s.fd, &r, sizeof(r));
	if (!rc)
		rc = recv_page(p, tag, buf);
	if (rc && rc != -ESTALE)
		peer_drop(p); /* the stream is in doubt: start afresh next time */
	return rc;
}

static void tcp_destroy(struct transport *t)
{
	struct tcp_transport *tt = (struct tcp_transport *)t;

	for (int i = 0; i < PEERS; i++)
		peer_drop(&tt->peers[i]);
	free(tt);
}

static const struct transport_ops tcp_ops = {
	.read = tcp_read,
	.destroy = tcp_destroy,
};

/* Authenticated as this node (the cluster key, node_name). */
static struct transport *tcp_reader(const struct config *cfg, const struct auth_key *key)
{
	struct tcp_transport *tt = calloc(1, sizeof(*tt));

	if (!tt) {
		log_error("data transport: out of memory");
		return NULL;
	}
	tt->t.ops = &tcp_ops;
	tt->key = key;
	snprintf(tt->name, sizeof(tt->name), "%s", cfg->node_name);
	tt->timeout_ms = (int)cfg->data_timeout_ms;
	return &tt->t;
}

/* ---- the holder's side ------------------------------------------------------- */

#define SERVE_CONNS	256 /* data connections at once */
#define REFUSALS_LOGGED 16  /* refused reads logged one by one, per connection */

struct dconn {
	int fd;
	char peer[AUTH_NAME_MAX + 1];
	struct data_inbuf in;
	uint8_t out[sizeof(struct data_ans) + POOL_SLOT]; /* an answer not all sent */
	size_t outoff, outlen;
	bool want_out;	  /* waiting for EPOLLOUT */
	unsigned refused; /* reads refused on it so far */
	struct dconn *next;
};

struct tcp_server {
	struct data_server ds;
	struct listener *l;
	struct pool *pool;
	int epfd, wakefd;
	pthread_t thread;
	pthread_mutex_t lock; /* incoming, stop */
	struct dconn *incoming;
	bool stop;
	struct dconn *conns; /* the thread's */
	atomic_int n;
	struct metric *m_reads, *m_stale, *m_other, *m_conns;
};

static void dconn_close(struct tcp_server *ds, struct dconn *dc, const char *why)
{
	if (why)
		log_warn("data connection from %s closed: %s", dc->peer, why);
	epoll_ctl(ds->epfd, EPOLL_CTL_DEL, dc->fd, NULL);
	close(dc->fd);
	for (struct dconn **pp = &ds->conns; *pp; pp = &(*pp)->next)
		if (*pp == dc) {
			*pp = dc->next;
			break;
		}
	atomic_fetch_sub(&ds->n, 1);
	metric_gauge_add(ds->m_conns, -1);
	free(dc);
}

/* Send what is left of the pending answer; 0 when all of it went. */
static int dconn_flush(struct dconn *dc)
{
	while (dc->outoff < dc->outlen) {
		ssize_t n = send(dc->fd, dc->out + dc->outoff, dc->outlen - dc->outoff,
				 MSG_DONTWAIT | MSG_NOSIGNAL);

		if (n < 0)
			return errno == EAGAIN ? -EAGAIN : -errno;
		dc->outoff += (size_t)n;
	}
	dc->outoff = dc->outlen = 0;
	return 0;
}

/*
 * The bytes r may have: the slot's, if it is live at r's generation and
 * holds the content r names; NULL otherwise, logged and counted.
 */
static const void *page_for(struct tcp_server *ds, struct dconn *dc, const struct data_req *r)
{
	struct pool_ref ref = { .slot = r->slot, .gen = r->gen };
	struct cid want = data_req_id(r), held;
	const void *bytes = pool_page(ds->pool, ref, &held);

	if (bytes && cid_eq(held, want))
		return bytes;
	metric_inc(bytes ? ds->m_other : ds->m_stale);
	if (++dc->refused <= REFUSALS_LOGGED)
		log_warn("read of slot %u generation %u from %s refused: %s %016llx%016llx",
			 r->slot, r->gen, dc->peer,
			 bytes ? "it holds another content than" : "no such live slot, for",
			 (unsigned long long)want.hi, (unsigned long long)want.lo);
	else if (dc->refused == REFUSALS_LOGGED + 1)
		log_warn("data connection from %s: more reads refused (counted, not logged)",
			 dc->peer);
	return NULL;
}

/* One answer, straight from the slot; what the socket does not take now is kept. */
static int answer(struct tcp_server *ds, struct dconn *dc, const struct data_req *r)
{
	static const uint8_t zeroes[POOL_SLOT];
	const void *bytes = page_for(ds, dc, r);
	struct data_ans a = { .magic = htole32(DATA_MAGIC),
			      .status = bytes ? 0 : (int32_t)htole32((uint32_t)-ESTALE),
			      .tag = htole64(r->tag) };
	struct iovec iov[2] = { { &a, sizeof(a) },
				{ (void *)(bytes ? bytes : zeroes), POOL_SLOT } };
	struct msghdr mh = { .msg_iov = iov, .msg_iovlen = 2 };
	ssize_t n = sendmsg(dc->fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
	size_t done = n > 0 ? (size_t)n : 0;

	if (bytes) {
		metric_inc(ds->m_reads);
		atomic_fetch_add(&ds->ds.served, 1);
	}
	if (n < 0 && errno != EAGAIN)
		return -errno;
	if (done == sizeof(a) + POOL_SLOT)
		return 0;
	/* The rest waits for room; the bytes are taken now (a slot may be
	 * reused once this returns). */
	memcpy(dc->out, &a, sizeof(a));
	memcpy(dc->out + sizeof(a), iov[1].iov_base, POOL_SLOT);
	dc->outoff = done;
	dc->outlen = sizeof(dc->out);
	return -EAGAIN;
}

static int dconn_want(struct tcp_server *ds, struct dconn *dc, bool out)
{
	struct epoll_event ev = { .events = out ? EPOLLOUT : EPOLLIN, .data.ptr = dc };

	if (dc->want_out == out)
		return 0;
	dc->want_out = out;
	return epoll_ctl(ds->epfd, EPOLL_CTL_MOD, dc->fd, &ev) ? -errno : 0;
}

/* The connection is ready: send what waits, read, answer. NULL or why it ends. */
static const char *dconn_serve(struct tcp_server *ds, struct dconn *dc, bool *gone)
{
	struct data_req r;
	size_t room;
	uint8_t *tail = data_inbuf_tail(&dc->in, &room);
	int rc;

	*gone = false;
	rc = dconn_flush(dc);
	if (rc == -EAGAIN)
		return dconn_want(ds, dc, true) ? "epoll" : NULL;
	if (rc)
		return strerror(-rc);
	if (room) {
		ssize_t n = recv(dc->fd, tail, room, MSG_DONTWAIT);

		if (n == 0) {
			*gone = true;
			return "closed";
		}
		if (n < 0 && errno != EAGAIN)
			return strerror(errno);
		dc->in.len += n > 0 ? (size_t)n : 0;
	}
	while ((rc = data_inbuf_next(&dc->in, &r)) > 0) {
		int arc = answer(ds, dc, &r);

		if (arc == -EAGAIN)
			break;
		if (arc)
			return strerror(-arc);
	}
	if (rc < 0)
		return "a request that is not a page read";
	data_inbuf_compact(&dc->in);
	return dconn_want(ds, dc, dc->outlen > 0) ? "epoll" : NULL;
}

static void *serve_main(void *arg)
{
	struct tcp_server *ds = arg;
	struct epoll_event ev[32];

	for (;;) {
		int n = epoll_wait(ds->epfd, ev, 32, -1);

		if (n < 0 && errno != EINTR) {
			log_error("data server: epoll_wait: %s", strerror(errno));
			break;
		}
		for (int i = 0; i < n; i++) {
			struct dconn *dc = ev[i].data.ptr;
			const char *why;
			bool gone;

			if (!dc) {
				uint64_t v;
				struct dconn *in;
				bool stop;

				if (read(ds->wakefd, &v, sizeof(v)) < 0 && errno != EAGAIN)
					log_warn("data server wake: %s", strerror(errno));
				pthread_mutex_lock(&ds->lock);
				in = ds->incoming;
				ds->incoming = NULL;
				stop = ds->stop;
				pthread_mutex_unlock(&ds->lock);
				while (in) {
					struct dconn *next = in->next;
					struct epoll_event e = { .events = EPOLLIN,
								 .data.ptr = in };

					in->next = ds->conns;
					ds->conns = in;
					if (epoll_ctl(ds->epfd, EPOLL_CTL_ADD, in->fd, &e))
						dconn_close(ds, in, "epoll");
					in = next;
				}
				if (stop)
					goto out;
				continue;
			}
			why = dconn_serve(ds, dc, &gone);
			if (why)
				dconn_close(ds, dc, gone ? NULL : why);
		}
	}
out:
	while (ds->conns)
		dconn_close(ds, ds->conns, NULL);
	return NULL;
}

/* A reader's node that vanished (no FIN) lets go of its connection. */
static void keepalive(int fd)
{
	int one = 1, idle = 60, intvl = 10, cnt = 3;

	setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
}

/* The handshake is done: the connection leaves the loop for the data thread. */
static void serve_ready(struct conn *c)
{
	struct tcp_server *ds = c->data;
	struct dconn *dc;
	int fd, one = 1;

	if (c->peer_role != CKSM__ROLE__ROLE_AGENT) {
		conn_fail(c, -EPERM, "page reads are for agents");
		return;
	}
	if (atomic_load(&ds->n) >= SERVE_CONNS) {
		conn_fail(c, -EBUSY, "%d data connections already", SERVE_CONNS);
		return;
	}
	dc = calloc(1, sizeof(*dc));
	if (!dc) {
		conn_fail(c, -ENOMEM, "out of memory");
		return;
	}
	snprintf(dc->peer, sizeof(dc->peer), "%s", c->peer_name);
	fd = conn_detach(c);
	if (fd < 0) {
		free(dc);
		conn_fail(c, fd, "cannot take the connection over: %s", strerror(-fd));
		return;
	}
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	keepalive(fd);
	dc->fd = fd;
	atomic_fetch_add(&ds->n, 1);
	metric_gauge_add(ds->m_conns, 1);
	pthread_mutex_lock(&ds->lock);
	dc->next = ds->incoming;
	ds->incoming = dc;
	pthread_mutex_unlock(&ds->lock);
	if (eventfd_write(ds->wakefd, 1))
		log_warn("data server wake: %s", strerror(errno));
}

/* Nothing comes through the loop once the handshake is done. */
static int serve_msg(struct conn *c, const Cksm__Msg *m)
{
	(void)m;
	return conn_fail(c, -EPROTO, "a frame on the data port after the handshake");
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

static struct data_server *tcp_serve(struct net_ctx *net, const struct config *cfg,
				     const struct auth_key *key, struct pool *pool,
				     struct metrics *reg)
{
	struct tcp_server *ds = calloc(1, sizeof(*ds));
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };

	(void)key; /* the listener's handshake has it (net) */
	if (!ds)
		return NULL;
	ds->ds.kind = &transport_tcp;
	ds->pool = pool;
	ds->m_reads =
		metrics_counter(reg, "cksm_data_reads_total",
				"Page reads served to other nodes, by answer.", "status=\"ok\"");
	ds->m_stale =
		metrics_counter(reg, "cksm_data_reads_total",
				"Page reads served to other nodes, by answer.", "status=\"stale\"");
	ds->m_other = metrics_counter(reg, "cksm_data_reads_total",
				      "Page reads served to other nodes, by answer.",
				      "status=\"other_content\"");
	ds->m_conns = metrics_gauge(reg, "cksm_data_connections",
				    "Data connections being served (after their handshake).", NULL);
	if (!ds->m_reads || !ds->m_stale || !ds->m_other || !ds->m_conns)
		goto free_ds;
	pthread_mutex_init(&ds->lock, NULL);
	ds->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (ds->epfd < 0)
		goto destroy_lock;
	ds->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (ds->wakefd < 0)
		goto close_epoll;
	if (epoll_ctl(ds->epfd, EPOLL_CTL_ADD, ds->wakefd, &ev))
		goto close_wake;
	if (pthread_create(&ds->thread, NULL, serve_main, ds)) {
		log_error("cannot start the data server thread");
		goto close_wake;
	}
	ds->l = listener_create(net, cfg->data_listen, &serve_ops, ds);
	if (!ds->l)
		goto stop_thread;
	return &ds->ds;
stop_thread:
	pthread_mutex_lock(&ds->lock);
	ds->stop = true;
	pthread_mutex_unlock(&ds->lock);
	eventfd_write(ds->wakefd, 1);
	pthread_join(ds->thread, NULL);
close_wake:
	close(ds->wakefd);
close_epoll:
	close(ds->epfd);
destroy_lock:
	pthread_mutex_destroy(&ds->lock);
free_ds:
	free(ds);
	return NULL;
}

static void tcp_serve_stop(struct data_server *base)
{
	struct tcp_server *ds = (struct tcp_server *)base;

	listener_destroy(ds->l);
	pthread_mutex_lock(&ds->lock);
	ds->stop = true;
	pthread_mutex_unlock(&ds->lock);
	if (eventfd_write(ds->wakefd, 1))
		log_warn("data server wake: %s", strerror(errno));
	pthread_join(ds->thread, NULL);
	while (ds->incoming) {
		struct dconn *dc = ds->incoming;

		ds->incoming = dc->next;
		close(dc->fd);
		free(dc);
	}
	close(ds->epfd);
	close(ds->wakefd);
	pthread_mutex_destroy(&ds->lock);
	free(ds);
}

const struct transport_kind transport_tcp = {
	.name = "tcp",
	.reader = tcp_reader,
	.serve = tcp_serve,
	.serve_stop = tcp_serve_stop,
};
