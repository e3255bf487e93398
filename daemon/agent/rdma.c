/*
 * rdma - the RDMA transport kind (transport.h): other nodes read this
 * node's pool with one-sided RDMA READ, with no CPU of the holder.
 *
 * Holder: the pool is registered once per device (ibv_reg_mr, remote read
 * only) and pinned (pool_pin: a freed slot keeps its page, since a hole
 * punched there would leave the device reading the old one). librdmacm
 * listens on data_listen (its own port space: the TCP data server, which
 * runs beside it for peers that read over TCP, has the same port). A
 * connect request must carry a MAC of the cluster key (rdmawire.h); the
 * accept answers with the pool's address, its rkey and slot count. The
 * holder cannot see the READs: while a reader is connected it counts as
 * read from (rdma_served), which keeps a stopping holder for its readers,
 * at most stop_wait_ms. One walled region: a dedup
 * domain is kept apart by its keyed content ids, which a reader needs to
 * find a slot through the shards, not by a region of its own (a node
 * holding the cluster key is trusted with every domain's pages).
 *
 * Reader: one RC queue pair per holder, kept for the process, shared by
 * its reading threads (the fault thread, the evictor, the copier), one
 * READ at a time per holder. Connections are made by a thread of their
 * own, holders taken in turn: to a holder as soon as it is known
 * (rdma_known), and again in the background after an error, a new queue
 * pair made beside the one in use and swapped in under the holder's lock,
 * so that a fault does not wait for a connect unless it is the first read
 * of a holder never seen. A read posts a signalled READ of the slot into
 * a registered buffer, spins SPIN_US on the completion queue, then sleeps
 * on its completion channel; each of its waits (the connect, the holder's
 * lock, the completion) ends at one deadline, data_timeout_ms after the
 * read began. An error completion, a flush or a timeout fails the read
 * (the caller tries the next replica), and the queue pair is made again
 * in the background, if it is still the one that failed (its generation). What was read is checked against the
 * content id it should hold (transport_read_checked): a slot freed and
 * reused while it was read, or torn by its new content, hashes to
 * another id and is refused, which is what the generation check of the
 * TCP kind does.
 */
#include <netinet/in.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>

#include "log.h"
#include "netaddr.h"
#include "rdmawire.h"
#include "transport.h"
#include "util.h"

#define RPEERS	     64	  /* holders a node reads from at once */
#define SPIN_US	     20	  /* a completion is polled this long before sleeping */
#define CLOCK_SKEW   120  /* seconds a connect request's time may be off */
#define NONCES_SEEN  1024 /* connect nonces remembered against replays */
#define DEVS	     8	  /* devices the pool is registered on */
#define READERS	     1024 /* queue pairs of readers at once (a reader per node) */
#define RETRY_MIN_MS 100
#define RETRY_MAX_MS 5000

static bool rdma_devices_here(char *why, size_t len)
{
	int n = 0;
	struct ibv_device **l = ibv_get_device_list(&n);

	if (!l) {
		snprintf(why, len, "no RDMA device list: %s", strerror(errno));
		return false;
	}
	ibv_free_device_list(l);
	if (n <= 0)
		snprintf(why, len, "no RDMA device on this node");
	return n > 0;
}

/* ---- the reader's side --------------------------------------------------------- */

enum rstate { R_DOWN, R_CONNECTING, R_UP };

/* One queue pair to a holder, and what its accept said. */
struct rconn {
	struct rdma_event_channel *ch;
	struct rdma_cm_id *id;
	struct ibv_pd *pd;
	struct ibv_comp_channel *cc;
	struct ibv_cq *cq;
	struct ibv_mr *mr;
	uint8_t *buf;
	uint64_t base, wr;
	uint32_t rkey, slots;
};

struct rpeer {
	char addr[DUP_ADDR_MAX]; /* changed under both locks */
	pthread_mutex_t lock;	 /* c: one READ at a time */
	struct rconn *c;	 /* NULL while down */
	uint64_t gen;		 /* of c, under both locks */
	enum rstate state;	 /* under the net's lock, as are the rest */
	int err;		 /* why the last connect failed */
	uint64_t retry_at;	 /* ms: the next background connect */
	unsigned retry_ms;
	uint64_t used; /* ms: the last read */
};

/* The readers of this process: one set of queue pairs, one connecting thread. */
struct rnet {
	pthread_mutex_t lock;
	pthread_cond_t cv; /* a connect ended (CLOCK_MONOTONIC) */
	struct rpeer peers[RPEERS];
	unsigned npeers, next; /* next: where the connecting thread looks first */
	const struct auth_key *key;
	int timeout_ms;
	int wake;
	pthread_t thread;
	bool running;
	unsigned users; /* readers; the last one ends it (under rnet_lock) */
};

static struct rnet *rnet;
static pthread_mutex_t rnet_lock = PTHREAD_MUTEX_INITIALIZER;

struct rdma_transport {
	struct transport t;
	struct rnet *n;
};

static void deadline_ts(struct timespec *ts, uint64_t dl_ms)
{
	ts->tv_sec = (time_t)(dl_ms / 1000);
	ts->tv_nsec = (long)(dl_ms % 1000) * 1000000;
}

/* Wait for the next event on ch until dl (ms): 0 and *ev, or a negative errno. */
static int cm_wait(struct rdma_event_channel *ch, uint64_t dl, struct rdma_cm_event **ev)
{
	struct pollfd pfd = { .fd = ch->fd, .events = POLLIN };

	for (;;) {
		uint64_t now;

		if (!rdma_get_cm_event(ch, ev))
			return 0;
		if (errno != EAGAIN)
			return -errno;
		now = now_ms();
		if (now >= dl)
			return -ETIMEDOUT;
		if (poll(&pfd, 1, (int)(dl - now)) < 0 && errno != EINTR)
			return -errno;
	}
}

/* Text a peer sent, printable only. */
static void printable(char *out, size_t len, const void *data, size_t n)
{
	const unsigned char *s = data;
	size_t o = 0;

	for (size_t i = 0; i < n && s[i] && o + 1 < len; i++)
		out[o++] = s[i] >= 0x20 && s[i] < 0x7f ? (char)s[i] : '?';
	out[o] = '\0';
}

/* Wait for event `want` on ch until dl; anything else fails. */
static int cm_expect(struct rdma_event_channel *ch, uint64_t dl, enum rdma_cm_event_type want,
		     struct conn_rep *rep, char *why, size_t len)
{
	struct rdma_cm_event *ev;
	int rc = cm_wait(ch, dl, &ev);

	if (rc) {
		snprintf(why, len, "%s waiting for %s", strerror(-rc), rdma_event_str(want));
		return rc;
	}
	if (ev->event != want) {
		snprintf(why, len, "%s (status %d) where %s was due", rdma_event_str(ev->event),
			 ev->status, rdma_event_str(want));
		if (ev->event == RDMA_CM_EVENT_REJECTED) {
			char text[64];

			printable(text, sizeof(text), ev->param.conn.private_data,
				  ev->param.conn.private_data ? ev->param.conn.private_data_len
							      : 0);
			if (text[0])
				snprintf(why, len, "refused by the holder: %s", text);
			else
				snprintf(why, len, "refused (status %d): nothing listens there",
					 ev->status);
		}
		rc = ev->event == RDMA_CM_EVENT_REJECTED ? -ECONNREFUSED : -EHOSTUNREACH;
		rdma_ack_cm_event(ev);
		return rc;
	}
	if (rep) {
		if (ev->param.conn.private_data_len < sizeof(*rep)) {
			snprintf(why, len, "the holder's accept carries no pool");
			rdma_ack_cm_event(ev);
			return -EPROTO;
		}
		memcpy(rep, ev->param.conn.private_data, sizeof(*rep));
	}
	rdma_ack_cm_event(ev);
	return 0;
}

static void rconn_free(struct rconn *c)
{
	if (!c)
		return;
	if (c->id && c->id->qp) {
		rdma_disconnect(c->id);
		rdma_destroy_qp(c->id);
	}
	if (c->mr)
		ibv_dereg_mr(c->mr);
	if (c->cq)
		ibv_destroy_cq(c->cq);
	if (c->cc)
		ibv_destroy_comp_channel(c->cc);
	if (c->pd)
		ibv_dealloc_pd(c->pd);
	if (c->id)
		rdma_destroy_id(c->id);
	if (c->ch)
		rdma_destroy_event_channel(c->ch);
	free(c->buf);
	free(c);
}

static int nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	return fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) ? -errno : 0;
}

/* A queue pair to addr, every wait until now + timeout (the connecting thread). */
static struct rconn *rconn_open(struct rnet *n, const char *addr, int *err, char *why, size_t len)
{
	struct sockaddr_storage ss;
	struct ibv_qp_init_attr qa = { 0 };
	struct rdma_conn_param cp = { 0 };
	struct conn_req req;
	struct conn_rep rep;
	uint64_t dl = now_ms() + (uint64_t)n->timeout_ms;
	struct rconn *c = calloc(1, sizeof(*c));
	int rc = c ? netaddr_parse(addr, &ss) : -ENOMEM;

	if (rc) {
		snprintf(why, len, "%s", c ? "not an address" : "out of memory");
		goto fail;
	}
	c->ch = rdma_create_event_channel();
	if (!c->ch || nonblock(c->ch->fd) || rdma_create_id(c->ch, &c->id, NULL, RDMA_PS_TCP)) {
		rc = -errno;
		snprintf(why, len, "no rdma_cm id: %s", strerror(errno));
		goto fail;
	}
	if (rdma_resolve_addr(c->id, NULL, (struct sockaddr *)&ss, n->timeout_ms)) {
		rc = -errno;
		snprintf(why, len, "resolving the address: %s", strerror(errno));
		goto fail;
	}
	rc = cm_expect(c->ch, dl, RDMA_CM_EVENT_ADDR_RESOLVED, NULL, why, len);
	if (rc)
		goto fail;
	if (rdma_resolve_route(c->id, n->timeout_ms)) {
		rc = -errno;
		snprintf(why, len, "resolving the route: %s", strerror(errno));
		goto fail;
	}
	rc = cm_expect(c->ch, dl, RDMA_CM_EVENT_ROUTE_RESOLVED, NULL, why, len);
	if (rc)
		goto fail;
	errno = ENOMEM;
	c->pd = ibv_alloc_pd(c->id->verbs);
	c->cc = c->pd ? ibv_create_comp_channel(c->id->verbs) : NULL;
	c->cq = c->cc ? ibv_create_cq(c->id->verbs, 4, NULL, c->cc, 0) : NULL;
	c->buf = c->cq ? aligned_alloc(POOL_SLOT, POOL_SLOT) : NULL;
	c->mr = c->buf ? ibv_reg_mr(c->pd, c->buf, POOL_SLOT, IBV_ACCESS_LOCAL_WRITE) : NULL;
	if (!c->mr || nonblock(c->cc->fd)) {
		rc = -errno;
		snprintf(why, len, "verbs resources: %s", strerror(errno));
		goto fail;
	}
	qa.send_cq = qa.recv_cq = c->cq;
	qa.qp_type = IBV_QPT_RC;
	qa.cap.max_send_wr = 2;
	qa.cap.max_recv_wr = 1;
	qa.cap.max_send_sge = qa.cap.max_recv_sge = 1;
	if (rdma_create_qp(c->id, c->pd, &qa)) {
		rc = -errno;
		snprintf(why, len, "no queue pair: %s", strerror(errno));
		goto fail;
	}
	conn_req_make(&req, n->key, rdma_get_local_addr(c->id), rdma_get_peer_addr(c->id),
		      (int64_t)time(NULL));
	cp.private_data = &req;
	cp.private_data_len = sizeof(req);
	cp.initiator_depth = 1; /* one READ in flight */
	cp.responder_resources = 0;
	cp.retry_count = 7;
	cp.rnr_retry_count = 7;
	if (rdma_connect(c->id, &cp)) {
		rc = -errno;
		snprintf(why, len, "connecting: %s", strerror(errno));
		goto fail;
	}
	rc = cm_expect(c->ch, dl, RDMA_CM_EVENT_ESTABLISHED, &rep, why, len);
	if (rc)
		goto fail;
	if (conn_rep_open(&rep, n->key, req.nonce, &c->base, &c->rkey, &c->slots)) {
		rc = -EACCES;
		snprintf(why, len, "the holder's accept is not MACed with the cluster key");
		goto fail;
	}
	return c;
fail:
	*err = rc ? rc : -EIO;
	rconn_free(c);
	return NULL;
}

/*
 * Connect p (the connecting thread). The queue pair is made without p's
 * lock, so that no read waits on a connect: it is swapped in at the end.
 */
static void rpeer_connect(struct rnet *n, struct rpeer *p)
{
	char why[256] = "", addr[DUP_ADDR_MAX];
	struct rconn *c, *old;
	int rc = 0;

	pthread_mutex_lock(&n->lock);
	snprintf(addr, sizeof(addr), "%s", p->addr);
	pthread_mutex_unlock(&n->lock);
	c = rconn_open(n, addr, &rc, why, sizeof(why));

	pthread_mutex_lock(&p->lock);
	pthread_mutex_lock(&n->lock);
	/* p is R_CONNECTING all along, so its entry is not given to another
	 * holder meanwhile (rpeer_find takes only entries down). */
	old = p->c;
	p->c = c;
	p->gen++;
	if (rc) {
		if (p->err != rc || p->retry_ms >= RETRY_MAX_MS)
			log_warn("RDMA to %s: %s", p->addr, why);
		p->err = rc;
		p->state = R_DOWN;
		p->retry_ms = p->retry_ms ? MIN(p->retry_ms * 2, RETRY_MAX_MS) : RETRY_MIN_MS;
		p->retry_at = now_ms() + p->retry_ms;
	} else {
		if (p->err)
			log_info("RDMA to %s: connected", p->addr);
		p->err = 0;
		p->retry_ms = 0;
		p->state = R_UP;
	}
	pthread_cond_broadcast(&n->cv);
	pthread_mutex_unlock(&n->lock);
	pthread_mutex_unlock(&p->lock);
	rconn_free(old);
}

/* p's queue pair of generation gen failed: made again soon. n->lock held. */
static void rpeer_failed(struct rpeer *p, uint64_t gen)
{
	if (p->gen != gen || p->state != R_UP)
		return; /* a newer one is there, or coming */
	p->state = R_DOWN;
	p->err = 0;
	p->retry_ms = 0;
	p->retry_at = now_ms() + RETRY_MIN_MS;
}

static void rnet_wake(struct rnet *n)
{
	uint64_t one = 1;

	if (write(n->wake, &one, sizeof(one)) < 0)
		log_warn("RDMA connector wake: %s", strerror(errno));
}

/* A connected holder's rdma_cm said something (the connecting thread). */
static void rpeer_events(struct rnet *n, struct rpeer *p, struct rdma_event_channel *ch,
			 uint64_t gen)
{
	struct rdma_cm_event *ev;
	bool gone = false;

	while (!rdma_get_cm_event(ch, &ev)) {
		gone |= ev->event == RDMA_CM_EVENT_DISCONNECTED ||
			ev->event == RDMA_CM_EVENT_DEVICE_REMOVAL;
		rdma_ack_cm_event(ev);
	}
	if (!gone)
		return;
	pthread_mutex_lock(&n->lock);
	log_info("RDMA to %s: the holder disconnected", p->addr);
	rpeer_failed(p, gen);
	pthread_mutex_unlock(&n->lock);
}

/*
 * The connecting thread: holders wanted, those whose queue pair broke
 * (again after RETRY_MIN_MS, doubling to RETRY_MAX_MS while it fails),
 * taken in turn, and the connected ones' rdma_cm events (a holder that
 * goes). Only this thread makes or frees a queue pair, so the channels
 * it polls stay while it polls them.
 */
static void *rnet_main(void *arg)
{
	struct rnet *n = arg;

	for (;;) {
		struct pollfd pfd[RPEERS + 1];
		struct rpeer *todo = NULL, *up[RPEERS];
		uint64_t gens[RPEERS];
		unsigned nup = 0;
		uint64_t now = now_ms(), next = now + 1000;

		pthread_mutex_lock(&n->lock);
		if (!n->running) {
			pthread_mutex_unlock(&n->lock);
			return NULL;
		}
		for (unsigned k = 0; k < n->npeers; k++) {
			unsigned i = (n->next + k) % n->npeers;
			struct rpeer *p = &n->peers[i];

			if (!todo && (p->state == R_CONNECTING ||
				      (p->state == R_DOWN && p->retry_at <= now))) {
				todo = p;
				n->next = i + 1;
			} else if (p->state == R_DOWN) {
				next = MIN(next, p->retry_at);
			} else if (p->state == R_UP && p->c) {
				pfd[nup + 1] =
					(struct pollfd){ .fd = p->c->ch->fd, .events = POLLIN };
				gens[nup] = p->gen;
				up[nup++] = p;
			}
		}
		if (todo)
			todo->state = R_CONNECTING;
		pthread_mutex_unlock(&n->lock);
		if (todo) {
			rpeer_connect(n, todo);
			continue;
		}
		pfd[0] = (struct pollfd){ .fd = n->wake, .events = POLLIN };
		if (poll(pfd, nup + 1, (int)(next > now ? next - now : 0)) <= 0)
			continue;
		if (pfd[0].revents) {
			uint64_t v;

			if (read(n->wake, &v, sizeof(v)) < 0 && errno != EAGAIN)
				log_warn("RDMA connector wake: %s", strerror(errno));
		}
		for (unsigned i = 0; i < nup; i++) {
			struct rdma_event_channel *ch = NULL;

			if (!pfd[i + 1].revents)
				continue;
			pthread_mutex_lock(&n->lock);
			if (up[i]->gen == gens[i] && up[i]->c)
				ch = up[i]->c->ch;
			pthread_mutex_unlock(&n->lock);
			if (ch)
				rpeer_events(n, up[i], ch, gens[i]);
		}
	}
}

/*
 * The holder at addr, made (and connected in the background) if new: in
 * a free entry, or in that of the holder read the longest ago among
 * those down. n->lock held.
 */
static struct rpeer *rpeer_find(struct rnet *n, const char *addr, bool make)
{
	struct rpeer *p = NULL;
	bool reused = false;

	for (unsigned i = 0; i < n->npeers; i++)
		if (!strcmp(n->peers[i].addr, addr))
			return &n->peers[i];
	if (!make || strlen(addr) >= DUP_ADDR_MAX)
		return NULL;
	if (n->npeers < RPEERS) {
		p = &n->peers[n->npeers++];
		pthread_mutex_init(&p->lock, NULL);
	} else {
		for (unsigned i = 0; i < n->npeers; i++) {
			struct rpeer *q = &n->peers[i];

			if (q->state == R_DOWN && !q->c && (!p || q->used < p->used))
				p = q;
		}
		if (!p)
			return NULL;
		if (pthread_mutex_trylock(&p->lock))
			return NULL; /* a read holds it: the next time */
		reused = true;
		p->gen++;
	}
	snprintf(p->addr, sizeof(p->addr), "%s", addr);
	p->state = R_CONNECTING;
	p->err = 0;
	p->retry_ms = 0;
	p->used = now_ms();
	if (reused)
		pthread_mutex_unlock(&p->lock);
	rnet_wake(n);
	return p;
}

static struct rnet *rnet_get(const struct config *cfg, const struct auth_key *key)
{
	struct rnet *n;

	pthread_mutex_lock(&rnet_lock);
	n = rnet;
	if (!n && (n = calloc(1, sizeof(*n)))) {
		pthread_condattr_t ca;

		pthread_mutex_init(&n->lock, NULL);
		pthread_condattr_init(&ca);
		pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		pthread_cond_init(&n->cv, &ca);
		pthread_condattr_destroy(&ca);
		n->key = key;
		n->timeout_ms = (int)cfg->data_timeout_ms;
		n->wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		n->running = true;
		if (n->wake < 0 || pthread_create(&n->thread, NULL, rnet_main, n)) {
			log_error("cannot start the RDMA connecting thread");
			if (n->wake >= 0)
				close(n->wake);
			free(n);
			n = NULL;
		} else {
			rnet = n;
		}
	}
	if (n)
		n->users++;
	pthread_mutex_unlock(&rnet_lock);
	return n;
}

/* A reader goes; the last one takes the queue pairs and the thread with it. */
static void rnet_put(struct rnet *n)
{
	pthread_mutex_lock(&rnet_lock);
	if (--n->users) {
		pthread_mutex_unlock(&rnet_lock);
		return;
	}
	rnet = NULL;
	pthread_mutex_unlock(&rnet_lock);
	pthread_mutex_lock(&n->lock);
	n->running = false;
	pthread_mutex_unlock(&n->lock);
	rnet_wake(n);
	pthread_join(n->thread, NULL);
	for (unsigned i = 0; i < n->npeers; i++) {
		rconn_free(n->peers[i].c);
		pthread_mutex_destroy(&n->peers[i].lock);
	}
	close(n->wake);
	pthread_cond_destroy(&n->cv);
	pthread_mutex_destroy(&n->lock);
	free(n);
}

/*
 * Wait until p is up or its connect failed, at most until dl; -ENOTCONN
 * if its entry went to another holder meanwhile. n->lock held.
 */
static int rpeer_wait(struct rnet *n, struct rpeer *p, const char *addr, uint64_t dl)
{
	struct timespec ts;

	deadline_ts(&ts, dl);
	if (p->state == R_DOWN && !p->err) {
		p->state = R_CONNECTING;
		rnet_wake(n);
	}
	while (p->state == R_CONNECTING && !strcmp(p->addr, addr))
		if (pthread_cond_timedwait(&n->cv, &n->lock, &ts) == ETIMEDOUT)
			return -ETIMEDOUT;
	if (strcmp(p->addr, addr))
		return -ENOTCONN;
	return p->state == R_UP ? 0 : p->err ? p->err : -ENOTCONN;
}

static uint64_t now_us(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000 + (uint64_t)t.tv_nsec / 1000;
}

/* The READ's completion until dl: a short spin, then the completion channel. p->lock held. */
static int rconn_complete(struct rconn *c, const char *addr, uint64_t dl)
{
	uint64_t spin_end = now_us() + SPIN_US;
	struct ibv_wc wc;
	int k;

	do
		k = ibv_poll_cq(c->cq, 1, &wc);
	while (!k && now_us() < spin_end);
	while (!k) {
		struct ibv_cq *cq;
		void *ctx;
		struct pollfd pfd = { .fd = c->cc->fd, .events = POLLIN };
		uint64_t now;

		if (ibv_req_notify_cq(c->cq, 0))
			return -EIO;
		k = ibv_poll_cq(c->cq, 1, &wc);
		if (k)
			break;
		now = now_ms();
		if (now >= dl)
			return -ETIMEDOUT;
		if (poll(&pfd, 1, (int)(dl - now)) < 0 && errno != EINTR)
			return -errno;
		if (!ibv_get_cq_event(c->cc, &cq, &ctx))
			ibv_ack_cq_events(cq, 1);
	}
	if (k < 0)
		return -EIO;
	if (wc.wr_id != c->wr) {
		log_warn("RDMA READ from %s: the completion of another read (%llu, not %llu)", addr,
			 (unsigned long long)wc.wr_id, (unsigned long long)c->wr);
		return -EIO;
	}
	if (wc.status != IBV_WC_SUCCESS) {
		log_warn("RDMA READ from %s: %s", addr, ibv_wc_status_str(wc.status));
		return wc.status == IBV_WC_WR_FLUSH_ERR ? -ECONNRESET : -EIO;
	}
	return 0;
}

/*
 * Read the dup d into buf: every wait (the first connect to a holder, the
 * queue pair another thread reads on, the completion) until one deadline,
 * data_timeout_ms from now.
 */
static int rdma_read(struct transport *t, const struct dup_loc *d, const struct cid *id, void *buf)
{
	struct rnet *n = ((struct rdma_transport *)t)->n;
	uint64_t dl = now_ms() + (uint64_t)n->timeout_ms, gen = 0;
	struct timespec ts;
	struct rpeer *p;
	struct rconn *c;
	struct ibv_sge sge;
	struct ibv_send_wr wr = { 0 }, *bad;
	int rc;

	(void)id; /* checked on the bytes: transport_read_checked */
	pthread_mutex_lock(&n->lock);
	p = rpeer_find(n, d->addr, true);
	rc = p ? rpeer_wait(n, p, d->addr, dl) : -EMFILE;
	if (p)
		p->used = now_ms();
	pthread_mutex_unlock(&n->lock);
	if (rc)
		return rc;
	deadline_ts(&ts, dl);
	if (pthread_mutex_clocklock(&p->lock, CLOCK_MONOTONIC, &ts))
		return -ETIMEDOUT;
	c = p->c;
	if (!c || strcmp(p->addr, d->addr)) {
		pthread_mutex_unlock(&p->lock);
		return -ENOTCONN;
	}
	gen = p->gen;
	if (d->slot >= c->slots) {
		pthread_mutex_unlock(&p->lock);
		return -ESTALE;
	}
	sge.addr = (uintptr_t)c->buf;
	sge.length = POOL_SLOT;
	sge.lkey = c->mr->lkey;
	wr.wr_id = ++c->wr;
	wr.opcode = IBV_WR_RDMA_READ;
	wr.send_flags = IBV_SEND_SIGNALED;
	wr.sg_list = &sge;
	wr.num_sge = 1;
	wr.wr.rdma.remote_addr = c->base + (uint64_t)d->slot * POOL_SLOT;
	wr.wr.rdma.rkey = c->rkey;
	rc = ibv_post_send(c->id->qp, &wr, &bad) ? -EIO : rconn_complete(c, p->addr, dl);
	if (!rc)
		memcpy(buf, c->buf, POOL_SLOT);
	else
		c->slots = 0; /* in doubt: nothing more is posted on it */
	pthread_mutex_unlock(&p->lock);
	if (rc) {
		/* The queue pair is made again in the background. */
		pthread_mutex_lock(&n->lock);
		rpeer_failed(p, gen);
		pthread_mutex_unlock(&n->lock);
		rnet_wake(n);
	}
	return rc;
}

/* The queue pairs are the process's: the last reader to go closes them. */
static void rdma_destroy(struct transport *t)
{
	rnet_put(((struct rdma_transport *)t)->n);
	free(t);
}

static const struct transport_ops rdma_ops = {
	.read = rdma_read,
	.destroy = rdma_destroy,
};

static struct transport *rdma_reader(const struct config *cfg, const struct auth_key *key)
{
	struct rdma_transport *rt;
	char why[128];

	if (!rdma_devices_here(why, sizeof(why))) {
		log_error("RDMA transport: %s", why);
		return NULL;
	}
	rt = calloc(1, sizeof(*rt));
	if (!rt || !(rt->n = rnet_get(cfg, key))) {
		free(rt);
		return NULL;
	}
	rt->t.ops = &rdma_ops;
	return &rt->t;
}

static void rdma_known(const char *addr)
{
	struct rnet *n;

	pthread_mutex_lock(&rnet_lock);
	n = rnet;
	if (n && addr[0]) {
		pthread_mutex_lock(&n->lock);
		rpeer_find(n, addr, true);
		pthread_mutex_unlock(&n->lock);
	}
	pthread_mutex_unlock(&rnet_lock);
}

/* ---- the holder's side --------------------------------------------------------- */

struct rdev {
	struct ibv_context *verbs;
	struct ibv_pd *pd;
	struct ibv_mr *mr;
	struct ibv_cq *cq;
	int rd_atom; /* READs a peer may have in flight */
};

struct rdma_server {
	struct data_server ds;
	struct data_server *tcp; /* the TCP data server beside it */
	struct pool *pool;
	const struct auth_key *key;
	struct rdma_event_channel *ch;
	struct rdma_cm_id *listen;
	struct rdev devs[DEVS];
	unsigned ndevs;
	struct reader {
		struct rdma_cm_id *id;
		bool up;    /* established */
		bool going; /* disconnected to make room, its event not in yet */
	} * readers;	    /* accepted: at most READERS, the oldest first */
	size_t nreaders, capreaders;
	struct seen {
		uint8_t nonce[12];
		int64_t time;
	} seen[NONCES_SEEN]; /* the last connect requests' nonces, against replays */
	unsigned nseen;
	int wake;
	pthread_t thread;
	atomic_bool stop;
	atomic_int conns;
	struct metric *m_conns, *m_refused;
};

static struct rdev *rdev_get(struct rdma_server *s, struct ibv_context *verbs, char *why,
			     size_t len)
{
	struct rdev *d;
	struct ibv_device_attr attr;
	size_t bytes;
	void *mem;

	for (unsigned i = 0; i < s->ndevs; i++)
		if (s->devs[i].verbs == verbs)
			return &s->devs[i];
	if (s->ndevs == DEVS) {
		snprintf(why, len, "more than %d devices", DEVS);
		return NULL;
	}
	d = &s->devs[s->ndevs];
	mem = pool_memory(s->pool, &bytes);
	d->verbs = verbs;
	d->rd_atom = ibv_query_device(verbs, &attr) ? 1 : MIN(attr.max_qp_rd_atom, 16);
	pool_pin(s->pool); /* first: no hole is punched under the registration */
	d->pd = ibv_alloc_pd(verbs);
	d->mr = d->pd ? ibv_reg_mr(d->pd, mem, bytes, IBV_ACCESS_REMOTE_READ) : NULL;
	d->cq = d->mr ? ibv_create_cq(verbs, 2, NULL, NULL, 0) : NULL;
	if (!d->cq) {
		snprintf(why, len, "registering the pool (%zu MiB) on %s: %s (memlock limit?)",
			 bytes >> 20, ibv_get_device_name(verbs->device), strerror(errno));
		if (d->mr)
			ibv_dereg_mr(d->mr);
		if (d->pd)
			ibv_dealloc_pd(d->pd);
		return NULL;
	}
	log_info("pool (%zu MiB) registered for RDMA READ on %s", bytes >> 20,
		 ibv_get_device_name(verbs->device));
	s->ndevs++;
	return d;
}

static void rdev_free(struct rdma_server *s)
{
	for (unsigned i = 0; i < s->ndevs; i++) {
		ibv_destroy_cq(s->devs[i].cq);
		ibv_dereg_mr(s->devs[i].mr);
		ibv_dealloc_pd(s->devs[i].pd);
	}
	s->ndevs = 0;
}

/*
 * A connect request's proof of the cluster key, from the address it came
 * from to this one, fresh and never seen: its nonce is remembered for
 * twice the skew allowed, and while NONCES_SEEN such are remembered, new
 * requests are refused.
 */
static const char *req_check(struct rdma_server *s, struct rdma_cm_id *id, const void *data,
			     size_t len)
{
	struct conn_req r;
	int64_t now = (int64_t)time(NULL), skew;
	struct seen *slot = &s->seen[s->nseen % NONCES_SEEN];
	const char *bad;

	if (!data || len < sizeof(r))
		return "no cksm connect request";
	memcpy(&r, data, sizeof(r));
	bad = conn_req_check(&r, s->key, rdma_get_peer_addr(id), rdma_get_local_addr(id));
	if (bad)
		return bad;
	skew = conn_req_time(&r) - now;
	if (skew > CLOCK_SKEW || skew < -CLOCK_SKEW)
		return "stale request (clocks apart?)";
	for (unsigned i = 0; i < MIN(s->nseen, NONCES_SEEN); i++)
		if (!memcmp(s->seen[i].nonce, r.nonce, 12))
			return "replayed request";
	if (s->nseen >= NONCES_SEEN && now - slot->time <= 2 * CLOCK_SKEW)
		return "too many connects: try again later";
	memcpy(slot->nonce, r.nonce, 12);
	slot->time = now;
	s->nseen++;
	return NULL;
}

static void refuse(struct rdma_server *s, struct rdma_cm_id *id, const char *why)
{
	char peer[64] = "?";
	struct sockaddr *sa = rdma_get_peer_addr(id);

	if (sa)
		netaddr_format(sa, peer, sizeof(peer));
	log_warn("RDMA connect from %s refused: %s", peer, why);
	metric_inc(s->m_refused);
	rdma_reject(id, why, (uint8_t)(strlen(why) + 1));
}

/*
 * A reader gone without a word (its node died) leaves its queue pair:
 * past READERS, the oldest give way (they go at their DISCONNECTED).
 */
static void make_room(struct rdma_server *s)
{
	size_t staying = 0;

	for (size_t i = 0; i < s->nreaders; i++)
		staying += !s->readers[i].going;
	for (size_t i = 0; i < s->nreaders && staying > READERS; i++) {
		if (s->readers[i].going)
			continue;
		log_warn("RDMA: over %d readers: the oldest is disconnected", READERS);
		rdma_disconnect(s->readers[i].id);
		s->readers[i].going = true;
		staying--;
	}
}

/* A reader connects: check it, give it a queue pair and the pool's key. */
static bool on_connect(struct rdma_server *s, struct rdma_cm_event *ev)
{
	struct rdma_cm_id *id = ev->id;
	const char *bad =
		req_check(s, id, ev->param.conn.private_data, ev->param.conn.private_data_len);
	struct ibv_qp_init_attr qa = { 0 };
	struct rdma_conn_param cp = { 0 };
	struct conn_rep rep;
	char why[256];
	struct rdev *d;
	size_t bytes;
	void *mem;

	if (bad) {
		refuse(s, id, bad);
		return false;
	}
	d = rdev_get(s, id->verbs, why, sizeof(why));
	if (!d) {
		log_error("RDMA: %s", why);
		refuse(s, id, "no pool on this device");
		return false;
	}
	qa.send_cq = qa.recv_cq = d->cq;
	qa.qp_type = IBV_QPT_RC;
	qa.cap.max_send_wr = qa.cap.max_recv_wr = 1;
	qa.cap.max_send_sge = qa.cap.max_recv_sge = 1;
	if (rdma_create_qp(id, d->pd, &qa)) {
		log_warn("RDMA: no queue pair for a reader: %s", strerror(errno));
		refuse(s, id, "no queue pair");
		return false;
	}
	mem = pool_memory(s->pool, &bytes);
	conn_rep_make(&rep, s->key, ((const struct conn_req *)ev->param.conn.private_data)->nonce,
		      (uint64_t)(uintptr_t)mem, d->mr->rkey, (uint32_t)(bytes / POOL_SLOT));
	cp.private_data = &rep;
	cp.private_data_len = sizeof(rep);
	cp.responder_resources = (uint8_t)d->rd_atom;
	cp.initiator_depth = 0;
	if (array_reserve((void **)&s->readers, &s->capreaders, s->nreaders + 1,
			  sizeof(*s->readers))) {
		refuse(s, id, "out of memory");
		return false;
	}
	if (rdma_accept(id, &cp)) {
		log_warn("RDMA: accepting a reader: %s", strerror(errno));
		return false;
	}
	s->readers[s->nreaders++] = (struct reader){ .id = id };
	make_room(s);
	return true;
}

static struct reader *reader_of(struct rdma_server *s, struct rdma_cm_id *id)
{
	for (size_t i = 0; i < s->nreaders; i++)
		if (s->readers[i].id == id)
			return &s->readers[i];
	return NULL;
}

static void readers_count(struct rdma_server *s)
{
	int n = 0;

	for (size_t i = 0; i < s->nreaders; i++)
		n += s->readers[i].up;
	atomic_store(&s->conns, n);
	atomic_fetch_add(&s->ds.served, 1); /* readers came or went: not quiet yet */
	metric_set(s->m_conns, n);
}

/* A reader's id goes (after its event was acked). */
static void reader_drop(struct rdma_server *s, struct rdma_cm_id *id)
{
	struct reader *r = reader_of(s, id);

	if (r) {
		memmove(r, r + 1, (size_t)(s->readers + s->nreaders - (r + 1)) * sizeof(*r));
		s->nreaders--;
		readers_count(s);
	}
	if (id->qp)
		rdma_destroy_qp(id);
	rdma_destroy_id(id);
}

static void *serve_main(void *arg)
{
	struct rdma_server *s = arg;

	while (!atomic_load(&s->stop)) {
		struct pollfd pfd[2] = { { .fd = s->ch->fd, .events = POLLIN },
					 { .fd = s->wake, .events = POLLIN } };
		struct rdma_cm_event *ev;

		if (poll(pfd, 2, -1) < 0 && errno != EINTR)
			break;
		while (!rdma_get_cm_event(s->ch, &ev)) {
			struct rdma_cm_id *id = ev->id;
			bool drop = false;

			switch (ev->event) {
			case RDMA_CM_EVENT_CONNECT_REQUEST:
				drop = !on_connect(s, ev);
				break;
			case RDMA_CM_EVENT_ESTABLISHED: {
				struct reader *r = reader_of(s, id);

				if (r) {
					r->up = true;
					readers_count(s);
				}
				break;
			}
			case RDMA_CM_EVENT_DISCONNECTED:
				drop = true;
				break;
			case RDMA_CM_EVENT_DEVICE_REMOVAL:
				log_error("RDMA: the device went: nothing more is served by RDMA");
				drop = id != s->listen;
				break;
			case RDMA_CM_EVENT_REJECTED:
			case RDMA_CM_EVENT_CONNECT_ERROR:
			case RDMA_CM_EVENT_UNREACHABLE:
				drop = id != s->listen;
				break;
			default:
				break;
			}
			rdma_ack_cm_event(ev);
			if (drop)
				reader_drop(s, id);
		}
	}
	return NULL;
}

static struct data_server *rdma_serve(struct net_ctx *net, const struct config *cfg,
				      const struct auth_key *key, struct pool *pool,
				      struct metrics *reg)
{
	struct rdma_server *s;
	struct sockaddr_storage ss;
	char why[256];

	if (!rdma_devices_here(why, sizeof(why))) {
		log_error("RDMA transport: %s", why);
		return NULL;
	}
	if (netaddr_parse(cfg->data_listen, &ss)) {
		log_error("RDMA transport: data_listen = %s is not an address", cfg->data_listen);
		return NULL;
	}
	s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->ds.kind = &transport_rdma;
	s->pool = pool;
	s->key = key;
	s->m_conns =
		metrics_gauge(reg, "cksm_rdma_readers",
			      "Queue pairs of other nodes reading this node's pool by RDMA.", NULL);
	s->m_refused = metrics_counter(
		reg, "cksm_rdma_connects_refused_total",
		"RDMA connect requests refused (bad key, replay, no resources).", NULL);
	s->wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	s->ch = rdma_create_event_channel();
	if (!s->m_conns || !s->m_refused || s->wake < 0 || !s->ch ||
	    fcntl(s->ch->fd, F_SETFL, fcntl(s->ch->fd, F_GETFL) | O_NONBLOCK) ||
	    rdma_create_id(s->ch, &s->listen, s, RDMA_PS_TCP)) {
		log_error("RDMA transport: %s", strerror(errno));
		goto fail;
	}
	if (rdma_bind_addr(s->listen, (struct sockaddr *)&ss) || rdma_listen(s->listen, 64)) {
		log_error("RDMA transport: listening on %s: %s (no RDMA device with that address?)",
			  cfg->data_listen, strerror(errno));
		goto fail;
	}
	if (s->listen->verbs && !rdev_get(s, s->listen->verbs, why, sizeof(why))) {
		log_error("RDMA transport: %s", why);
		goto fail;
	}
	s->tcp = transport_tcp.serve(net, cfg, key, pool, reg);
	if (!s->tcp)
		goto fail;
	if (pthread_create(&s->thread, NULL, serve_main, s)) {
		log_error("cannot start the RDMA server thread");
		transport_tcp.serve_stop(s->tcp);
		goto fail;
	}
	log_info("serving the pool by RDMA READ on %s", cfg->data_listen);
	return &s->ds;
fail:
	rdev_free(s);
	if (s->listen)
		rdma_destroy_id(s->listen);
	if (s->ch)
		rdma_destroy_event_channel(s->ch);
	if (s->wake >= 0)
		close(s->wake);
	free(s);
	return NULL;
}

static void rdma_serve_stop(struct data_server *base)
{
	struct rdma_server *s = (struct rdma_server *)base;
	uint64_t one = 1;

	atomic_store(&s->stop, true);
	if (write(s->wake, &one, sizeof(one)) < 0)
		log_warn("RDMA server wake: %s", strerror(errno));
	pthread_join(s->thread, NULL);
	transport_tcp.serve_stop(s->tcp);
	while (s->nreaders) {
		struct rdma_cm_id *id = s->readers[s->nreaders - 1].id;

		rdma_disconnect(id);
		reader_drop(s, id);
	}
	free(s->readers);
	rdma_destroy_id(s->listen);
	rdev_free(s);
	rdma_destroy_event_channel(s->ch);
	close(s->wake);
	free(s);
}

static uint64_t rdma_served(struct data_server *base)
{
	struct rdma_server *s = (struct rdma_server *)base;

	/* Reads by RDMA are not seen here: a reader connected counts as reading. */
	if (atomic_load(&s->conns) > 0)
		atomic_fetch_add(&s->ds.served, 1);
	return atomic_load(&s->ds.served) + transport_served(s->tcp);
}

static bool addr_any(const struct sockaddr_storage *ss)
{
	if (ss->ss_family == AF_INET)
		return ((const struct sockaddr_in *)ss)->sin_addr.s_addr == htonl(INADDR_ANY);
	return IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *)ss)->sin6_addr);
}

/* A device, and one on data_listen's address when it names one. */
static bool rdma_usable(const struct config *cfg, char *why, size_t len)
{
	struct sockaddr_storage ss;
	struct rdma_cm_id *id;
	bool ok;

	if (!rdma_devices_here(why, len))
		return false;
	if (!cfg->data_listen[0] || netaddr_parse(cfg->data_listen, &ss))
		return true;
	if (ss.ss_family == AF_INET)
		((struct sockaddr_in *)&ss)->sin_port = 0;
	else
		((struct sockaddr_in6 *)&ss)->sin6_port = 0;
	if (rdma_create_id(NULL, &id, NULL, RDMA_PS_TCP)) {
		snprintf(why, len, "no rdma_cm: %s", strerror(errno));
		return false;
	}
	errno = 0;
	/* A wildcard address binds no device yet; any other must bind one. */
	ok = !rdma_bind_addr(id, (struct sockaddr *)&ss) && (id->verbs || addr_any(&ss));
	if (!ok)
		snprintf(why, len, "no RDMA device has the address of data_listen = %s%s%s",
			 cfg->data_listen, errno ? ": " : "", errno ? strerror(errno) : "");
	rdma_destroy_id(id);
	return ok;
}

const struct transport_kind transport_rdma = {
	.name = "rdma",
	.usable = rdma_usable,
	.reader = rdma_reader,
	.serve = rdma_serve,
	.serve_stop = rdma_serve_stop,
	.served = rdma_served,
	.known = rdma_known,
};
