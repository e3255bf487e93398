/*
 * conn - see conn.h.
 *
 * The life of a connection:
 *
 *   server: accept -> send ServerHello -> WAIT_CLIENT_HELLO
 *           -> check MAC, send AuthResult -> READY
 *   client: connect -> WAIT_SERVER_HELLO -> send ClientHello
 *           -> WAIT_AUTH_RESULT -> check server MAC -> READY
 *   either: error or close -> CLOSING -> (flush, shutdown) -> freed
 *
 * A conn owns three libuv handles (the socket, the deadline timer and the
 * turn handle) and is freed in the close callback of the last. Once
 * CLOSING, nothing more is read, dispatched or sent. ops->on_close is
 * called only for connections that reached READY, exactly once.
 *
 * The handshake queue: an accepted conn is on net's pending list, oldest
 * first, from accept until READY or CLOSING. Before a new conn joins it,
 * make_room closes the oldest of its address when that address has
 * max_per_source places, else the oldest of all when there are
 * max_pending; so the list never exceeds either bound, and a newcomer is
 * never the one refused. A flood of silent peers thus costs each of them
 * its place within one round of newcomers, and a peer that completes its
 * handshake in time always gets through. The walk is linear in
 * max_pending, which config bounds.
 *
 * One conn cannot hold the loop: it handles at most TURN_FRAMES frames,
 * then yields. Reading stops, the frames already read wait in held, as
 * they came, and the turn handle (an idle handle: the loop does not block
 * in poll while it is active) hands them out, TURN_FRAMES a turn, before
 * the socket is read again. A peer that pipelines thousands of requests
 * thus costs the loop TURN_FRAMES answers a turn, and heartbeats and
 * other peers are served in between. (An idle handle, not a 0 ms timer:
 * libuv runs a timer restarted from its own callback again in the same
 * turn.)
 *
 * What an accepted conn leaves unsent is bounded twice. Past max_frame
 * bytes we stop reading it (the loop answers no faster than the peer
 * reads) until half of that is gone; the frames already read meanwhile
 * wait in held too. A conn stalled so for STALL_MS, or whose queue would
 * pass max_queued, is closed. Its kernel send buffer is capped (see
 * cap_send_buffer), so that the bytes unsent are mostly in our queue,
 * where these bounds see them; and the kernel drops the conn when what
 * it sent is unacknowledged for STALL_MS (see bound_unacked), so that
 * the bytes in its buffer are bounded in time too.
 *
 * Reading is on when a conn is neither stalled nor yielded and holds no
 * frame; held frames are handled in order before any newer byte.
 *
 * A listener yields too, after TURN_ACCEPTS accepts: libuv accepts no
 * more until we call uv_accept, which its turn handle does on the next
 * turn. Without it, a burst of thousands of connects is accepted in one
 * callback, and a real peer among them is displaced before the loop has
 * read its ClientHello; with it, the loop reads between two batches, and
 * a peer accepted has max_pending / TURN_ACCEPTS turns to answer.
 */
#include "conn.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dial.h"
#include "log.h"
#include "netaddr.h"
#include "wire.h"

#define CLOSE_FLUSH_MS 1000 /* how long a closing conn may flush */
/*
 * Connections the kernel may hold before we accept them (it caps this at
 * net.core.somaxconn). Under a flood the accept queue fills faster than
 * the loop empties it; a short one would drop a real peer's SYN there,
 * before make_room could give it a place.
 */
#define LISTEN_BACKLOG 4096
#define STALL_MS       10000 /* how long a peer may leave its answers unread */
#define TURN_FRAMES    32    /* frames a conn handles before it yields the loop */
#define TURN_ACCEPTS   32    /* connections a listener accepts before it yields */
/*
 * Displaced connections logged one by one, per reason and per second;
 * the others of that second are summed up in one line.
 */
#define DISPLACED_LOGGED 4

enum { DISPLACED_SOURCE, DISPLACED_FULL, DISPLACED_REASONS };

struct listener {
	uv_tcp_t tcp;
	uv_idle_t turn;	       /* accepts again on the next loop turn */
	uv_timer_t quiet;      /* ends a second of displacements: their summary */
	int handles_open;      /* close callbacks still to come */
	unsigned turn_accepts; /* accepted since it last yielded */
	struct net_ctx *net;
	const struct conn_ops *ops;
	void *data;
	/* Displacements this second: logged one by one, and not logged. */
	unsigned shown[DISPLACED_REASONS], hidden[DISPLACED_REASONS];
	char last_hidden[272]; /* peer_addr of the last not logged */
};

struct write_req {
	uv_write_t req;
	struct conn *c;
	uint8_t *buf;
};

static const char *role_name(Cksm__Role r)
{
	switch (r) {
	case CKSM__ROLE__ROLE_AGENT:
		return "agent";
	case CKSM__ROLE__ROLE_COORD:
		return "coordinator";
	case CKSM__ROLE__ROLE_ADMIN:
		return "admin";
	default:
		return "unknown";
	}
}

int net_metrics_register(struct net_metrics *m, struct metrics *reg)
{
#define REJ	 "cksm_frames_rejected_total"
#define REJ_HELP "Frames refused by a protocol check; the connection was closed."
#define DIS	 "cksm_handshakes_displaced_total"
#define DIS_HELP "Unauthenticated connections closed to make room for a newer one."
	const struct metric_def defs[] = {
		METRIC_C(m->accepted, "cksm_connections_accepted_total",
			 "Control connections accepted."),
		METRIC_G(m->active, "cksm_connections", "Control connections open now."),
		METRIC_C(m->auth_ok, "cksm_auth_succeeded_total",
			 "Handshakes that proved the cluster key."),
		METRIC_C(m->auth_failed, "cksm_auth_failures_total",
			 "Handshakes refused (wrong key, replay, bad hello)."),
		METRIC_C(m->auth_timeouts, "cksm_auth_timeouts_total",
			 "Peers closed for not finishing the handshake in time."),
		METRIC_C(m->frames_in, "cksm_frames_received_total", "Control frames received."),
		METRIC_C(m->frames_out, "cksm_frames_sent_total", "Control frames sent."),
		METRIC_C(m->bytes_in, "cksm_control_received_bytes_total",
			 "Control bytes received."),
		METRIC_C(m->bytes_out, "cksm_control_sent_bytes_total", "Control bytes sent."),
		METRIC_CL(m->rej_oversized, REJ, REJ_HELP, "reason=\"oversized\""),
		METRIC_CL(m->rej_malformed, REJ, REJ_HELP, "reason=\"malformed\""),
		METRIC_CL(m->rej_unexpected, REJ, REJ_HELP, "reason=\"unexpected\""),
		METRIC_CL(m->displaced_source, DIS, DIS_HELP, "reason=\"address\""),
		METRIC_CL(m->displaced_full, DIS, DIS_HELP, "reason=\"full\""),
		METRIC_C(
			m->overflows, "cksm_send_queue_overflows_total",
			"Accepted connections closed because the peer did not read what it was sent."),
	};
#undef REJ
#undef REJ_HELP
#undef DIS
#undef DIS_HELP

	return metrics_register(reg, defs, sizeof(defs) / sizeof(defs[0]));
}

/* ---- closing ------------------------------------------------------------ */

static void on_handle_closed(uv_handle_t *h)
{
	struct conn *c = h->data;

	if (--c->handles_open > 0)
		return;
	frame_dec_fini(&c->dec);
	free(c->held);
	metric_gauge_add(c->net->m.active, -1);
	if (c->prev)
		c->prev->next = c->next;
	else
		c->net->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	free(c);
}

static void close_handles(struct conn *c)
{
	if (!uv_is_closing((uv_handle_t *)&c->tcp))
		uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
	if (!uv_is_closing((uv_handle_t *)&c->deadline))
		uv_close((uv_handle_t *)&c->deadline, on_handle_closed);
	if (!uv_is_closing((uv_handle_t *)&c->turn))
		uv_close((uv_handle_t *)&c->turn, on_handle_closed);
}

static void on_flush_deadline(uv_timer_t *t)
{
	close_handles(t->data);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
	struct conn *c = req->data;

	(void)status;
	free(req);
	close_handles(c);
}

/* A server-side conn leaves the handshake (done or closing). */
static void leave_pending(struct conn *c)
{
	struct net_ctx *net = c->net;

	if (!c->pending)
		return;
	c->pending = false;
	net->pending--;
	if (c->pprev)
		c->pprev->pnext = c->pnext;
	else
		net->pending_head = c->pnext;
	if (c->pnext)
		c->pnext->pprev = c->pprev;
	else
		net->pending_tail = c->pprev;
	c->pnext = c->pprev = NULL;
}

/* An accepted conn joins the handshake queue, as its newest. */
static void enter_pending(struct conn *c)
{
	struct net_ctx *net = c->net;

	c->pending = true;
	c->accepted_ms = uv_now(net->loop);
	c->pprev = net->pending_tail;
	c->pnext = NULL;
	if (net->pending_tail)
		net->pending_tail->pnext = c;
	else
		net->pending_head = c;
	net->pending_tail = c;
	net->pending++;
}

/* Enter CLOSING; with flush, queued frames are written before the close. */
static void begin_close(struct conn *c, bool flush)
{
	bool was_ready = c->state == CONN_READY;
	uv_shutdown_t *req;

	if (c->state == CONN_CLOSING)
		return;
	c->state = CONN_CLOSING;
	leave_pending(c);
	uv_read_stop((uv_stream_t *)&c->tcp);
	uv_timer_stop(&c->deadline);
	uv_idle_stop(&c->turn);
	if (was_ready && c->ops->on_close)
		c->ops->on_close(c);
	if (c->dialer)
		dialer_conn_closed(c->dialer, c);

	req = flush ? malloc(sizeof(*req)) : NULL;
	if (req) {
		req->data = c;
		if (uv_shutdown(req, (uv_stream_t *)&c->tcp, on_shutdown) == 0) {
			uv_timer_start(&c->deadline, on_flush_deadline, CLOSE_FLUSH_MS, 0);
			return;
		}
		free(req);
	}
	close_handles(c);
}

void conn_close(struct conn *c)
{
	begin_close(c, true);
}

int conn_detach(struct conn *c)
{
	uv_os_fd_t fd;
	int dup;

	if (c->state != CONN_READY)
		return -ENOTCONN;
	if (conn_queued(c))
		return -EAGAIN;
	if (uv_fileno((const uv_handle_t *)&c->tcp, &fd))
		return -EBADF;
	dup = fcntl(fd, F_DUPFD_CLOEXEC, 3);
	if (dup < 0)
		return -errno;
	begin_close(c, false);
	return dup;
}

static void send_error(struct conn *c, int code, const char *text)
{
	Cksm__Msg m = CKSM__MSG__INIT;
	Cksm__Error e = CKSM__ERROR__INIT;

	e.code = code;
	e.message = (char *)text;
	m.body_case = CKSM__MSG__BODY_ERROR;
	m.error = &e;
	conn_send(c, &m);
}

int conn_fail(struct conn *c, int code, const char *fmt, ...)
{
	char reason[256];
	va_list ap;

	if (c->state == CONN_CLOSING)
		return code;
	va_start(ap, fmt);
	vsnprintf(reason, sizeof(reason), fmt, ap);
	va_end(ap);
	log_warn("closing connection %s %s%s%s: %s", c->client ? "to" : "from", c->peer_addr,
		 c->peer_name[0] ? " " : "", c->peer_name, reason);
	if (c->state == CONN_READY)
		send_error(c, code, reason);
	begin_close(c, true);
	return code;
}

void net_close_all(struct net_ctx *net)
{
	for (struct conn *c = net->conns; c; c = c->next)
		begin_close(c, true);
}

/* ---- sending ------------------------------------------------------------ */

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void deliver(struct conn *c, const uint8_t *payload, uint32_t len);

/* The peer has not read its answers for STALL_MS. */
static void on_stall(uv_timer_t *t)
{
	struct conn *c = t->data;

	metric_inc(c->net->m.overflows);
	log_warn("closing connection from %s%s%s: it does not read: %zu bytes unsent for %d ms",
		 c->peer_addr, c->peer_name[0] ? " " : "", c->peer_name, conn_queued(c), STALL_MS);
	begin_close(c, false);
}

/* Backpressure on an accepted conn: no more requests until it reads. */
static void stall_reading(struct conn *c)
{
	c->stalled = true;
	uv_read_stop((uv_stream_t *)&c->tcp);
	uv_timer_start(&c->deadline, on_stall, STALL_MS, 0);
}

/*
 * The held frames, as many as this turn allows; then, when none is left
 * and nothing holds c back, the socket again.
 */
static void run_held(struct conn *c)
{
	size_t off = 0;

	while (off < c->held_len && !c->stalled && !c->yielded && c->state != CONN_CLOSING) {
		const uint8_t *h = c->held + off;
		uint32_t len =
			(uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 | h[3];

		off += FRAME_HDR + len;
		deliver(c, h + FRAME_HDR, len);
	}
	if (c->state == CONN_CLOSING)
		return;
	if (off) {
		memmove(c->held, c->held + off, c->held_len - off);
		c->held_len -= off;
	}
	if (c->stalled || c->yielded)
		return;
	free(c->held);
	c->held = NULL;
	c->held_len = c->held_cap = 0;
	if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read))
		conn_fail(c, -EIO, "cannot read again");
}

/* The peer read: the held frames first, then the socket again. */
static void resume_reading(struct conn *c)
{
	c->stalled = false;
	uv_timer_stop(&c->deadline);
	run_held(c);
}

/* A new loop turn: c's next share of its held frames. */
static void on_turn(uv_idle_t *t)
{
	struct conn *c = t->data;

	uv_idle_stop(t);
	c->yielded = false;
	c->turn_frames = 0;
	run_held(c);
}

/* c had its share of this turn: the rest waits for the next. */
static void yield_turn(struct conn *c)
{
	c->yielded = true;
	uv_read_stop((uv_stream_t *)&c->tcp);
	uv_idle_start(&c->turn, on_turn);
}

/* A frame read while stalled or yielded waits its turn. */
static int hold_frame(struct conn *c, const uint8_t *payload, uint32_t len)
{
	size_t need = c->held_len + FRAME_HDR + len;

	if (need > c->held_cap) {
		size_t cap = c->held_cap ? c->held_cap : sizeof(c->rbuf);
		uint8_t *nb;

		while (cap < need)
			cap *= 2;
		nb = realloc(c->held, cap);
		if (!nb) {
			conn_fail(c, -ENOMEM, "out of memory holding a frame");
			return 1;
		}
		c->held = nb;
		c->held_cap = cap;
	}
	frame_put_header(c->held + c->held_len, len);
	memcpy(c->held + c->held_len + FRAME_HDR, payload, len);
	c->held_len = need;
	return 0;
}

/*
 * A peer that does not read what it is sent (or asks faster than it
 * reads): closed at once, without an Error (that would queue too) and
 * without a flush (it would not be read).
 */
static int overflow(struct conn *c, const Cksm__Msg *m, size_t len)
{
	metric_inc(c->net->m.overflows);
	log_warn("closing connection from %s%s%s: it does not read: %zu bytes unsent, and a %s "
		 "message of %zu more would pass max_queued_bytes (%llu)",
		 c->peer_addr, c->peer_name[0] ? " " : "", c->peer_name, conn_queued(c),
		 wire_body_name(m), len, (unsigned long long)c->net->max_queued);
	begin_close(c, false);
	return -ENOBUFS;
}

/* The kernel gave up on an accepted conn: see bound_unacked. */
static void unacked(struct conn *c)
{
	metric_inc(c->net->m.overflows);
	log_warn("closing connection from %s%s%s: it does not read: what it was sent was not "
		 "acknowledged within %d ms",
		 c->peer_addr, c->peer_name[0] ? " " : "", c->peer_name, STALL_MS);
	begin_close(c, false);
}

static void on_written(uv_write_t *req, int status)
{
	struct write_req *w = (struct write_req *)req;
	struct conn *c = w->c;

	free(w->buf);
	free(w);
	if (status == UV_ETIMEDOUT && !c->client && c->state != CONN_CLOSING)
		unacked(c);
	else if (status < 0 && status != UV_ECANCELED)
		conn_fail(c, -EIO, "write failed: %s", uv_strerror(status));
	else if (c->stalled && c->state == CONN_READY && conn_queued(c) <= c->net->max_frame / 2)
		resume_reading(c);
}

int conn_send(struct conn *c, const Cksm__Msg *m)
{
	struct write_req *w;
	uv_buf_t b;
	size_t len;
	int rc;

	if (c->state == CONN_CLOSING)
		return -EPIPE;
	len = cksm__msg__get_packed_size(m);
	if (len > c->net->max_frame)
		return conn_fail(c, -EMSGSIZE, "%s message larger than max_frame_bytes (%u)",
				 wire_body_name(m), c->net->max_frame);
	if (!c->client && conn_queued(c) + FRAME_HDR + len > c->net->max_queued)
		return overflow(c, m, len);
	w = malloc(sizeof(*w));
	if (!w)
		goto nomem;
	w->buf = wire_pack(m, &len);
	if (!w->buf) {
		free(w);
		goto nomem;
	}
	w->c = c;
	b = uv_buf_init((char *)w->buf, (unsigned)len);
	rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_written);
	if (rc) {
		free(w->buf);
		free(w);
		conn_fail(c, -EIO, "write failed: %s", uv_strerror(rc));
		return -EIO;
	}
	metric_inc(c->net->m.frames_out);
	metric_add(c->net->m.bytes_out, len);
	return 0;
nomem:
	conn_fail(c, -ENOMEM, "out of memory sending %s", wire_body_name(m));
	return -ENOMEM;
}

size_t conn_queued(const struct conn *c)
{
	return uv_stream_get_write_queue_size((const uv_stream_t *)&c->tcp);
}

/* ---- the handshake ------------------------------------------------------ */

static void become_ready(struct conn *c)
{
	leave_pending(c);
	uv_timer_stop(&c->deadline);
	frame_dec_set_limit(&c->dec, c->net->max_frame);
	c->state = CONN_READY;
	metric_inc(c->net->m.auth_ok);
	log_info("authenticated %s %s as %s %s", c->client ? "server" : "peer", c->peer_addr,
		 role_name(c->peer_role), c->peer_name);
	if (c->dialer)
		dialer_conn_ready(c->dialer, c);
	if (c->state == CONN_READY && c->ops->on_ready)
		c->ops->on_ready(c);
}

static int unexpected(struct conn *c, const Cksm__Msg *m, const char *want)
{
	metric_inc(c->net->m.rej_unexpected);
	return conn_fail(c, -EPROTO, "unexpected %s message, expected %s", wire_body_name(m), want);
}

static void send_server_hello(struct conn *c)
{
	Cksm__Msg m = CKSM__MSG__INIT;
	Cksm__ServerHello sh = CKSM__SERVER_HELLO__INIT;

	auth_nonce(c->nonce);
	sh.proto_version = CKSM__PROTO_VERSION__PROTO_VERSION_CURRENT;
	sh.nonce.data = c->nonce;
	sh.nonce.len = sizeof(c->nonce);
	sh.role = c->net->role;
	sh.name = (char *)c->net->name;
	m.body_case = CKSM__MSG__BODY_SERVER_HELLO;
	m.server_hello = &sh;
	conn_send(c, &m);
}

static void send_auth_result(struct conn *c, const uint8_t *mac, const char *reason)
{
	Cksm__Msg m = CKSM__MSG__INIT;
	Cksm__AuthResult ar = CKSM__AUTH_RESULT__INIT;

	ar.ok = mac != NULL;
	if (mac) {
		ar.mac.data = (uint8_t *)mac;
		ar.mac.len = AUTH_MAC_BYTES;
	}
	ar.reason = (char *)(reason ? reason : "");
	m.body_case = CKSM__MSG__BODY_AUTH_RESULT;
	m.auth_result = &ar;
	conn_send(c, &m);
}

/* Server: the client's answer to our nonce. */
static int server_got_hello(struct conn *c, const Cksm__Msg *m)
{
	const Cksm__ClientHello *ch = m->client_hello;
	uint8_t mac[AUTH_MAC_BYTES];
	const char *why;
	int rc;

	if (m->body_case != CKSM__MSG__BODY_CLIENT_HELLO)
		return unexpected(c, m, "client_hello");
	rc = auth_check_client_hello(c->net->key, c->nonce, ch, &why);
	if (rc) {
		metric_inc(c->net->m.auth_failed);
		send_auth_result(c, NULL, "authentication failed");
		return conn_fail(c, rc, "authentication failed: %s", why);
	}
	memcpy(c->peer_nonce, ch->nonce.data, AUTH_NONCE_BYTES);
	snprintf(c->peer_name, sizeof(c->peer_name), "%s", ch->name);
	c->peer_role = ch->role;
	auth_server_mac(c->net->key, c->peer_nonce, c->nonce, c->net->role, c->net->name, mac);
	send_auth_result(c, mac, NULL);
	become_ready(c);
	return 0;
}

/* Client: the server's nonce; answer with ours and the MAC. */
static int client_got_server_hello(struct conn *c, const Cksm__Msg *m)
{
	Cksm__Msg out = CKSM__MSG__INIT;
	const Cksm__ServerHello *sh = m->server_hello;
	struct auth_hello h;
	const char *why;

	if (m->body_case != CKSM__MSG__BODY_SERVER_HELLO)
		return unexpected(c, m, "server_hello");
	if (auth_check_server_hello(sh, CKSM__ROLE__ROLE_COORD, &why)) {
		metric_inc(c->net->m.auth_failed);
		return conn_fail(c, -EPROTO, "%s (its protocol version %u, ours %u)", why,
				 sh->proto_version, CKSM__PROTO_VERSION__PROTO_VERSION_CURRENT);
	}
	memcpy(c->peer_nonce, sh->nonce.data, AUTH_NONCE_BYTES);
	snprintf(c->peer_name, sizeof(c->peer_name), "%s", sh->name);
	c->peer_role = sh->role;
	auth_hello_make(&h, c->net->key, c->peer_nonce, c->net->role, c->net->name);
	memcpy(c->nonce, h.nonce, sizeof(c->nonce));
	out.body_case = CKSM__MSG__BODY_CLIENT_HELLO;
	out.client_hello = &h.msg;
	c->state = CONN_WAIT_AUTH_RESULT;
	return conn_send(c, &out);
}

/* Client: the server's verdict and its proof of the key. */
static int client_got_result(struct conn *c, const Cksm__Msg *m)
{
	const Cksm__AuthResult *ar = m->auth_result;
	uint8_t mac[AUTH_MAC_BYTES];

	if (m->body_case != CKSM__MSG__BODY_AUTH_RESULT)
		return unexpected(c, m, "auth_result");
	if (!ar->ok) {
		metric_inc(c->net->m.auth_failed);
		return conn_fail(c, -EACCES,
				 "server refused authentication: %s (is the cluster key the same?)",
				 ar->reason ? ar->reason : "");
	}
	auth_server_mac(c->net->key, c->nonce, c->peer_nonce, c->peer_role, c->peer_name, mac);
	if (auth_mac_check(mac, &ar->mac)) {
		metric_inc(c->net->m.auth_failed);
		return conn_fail(c, -EACCES, "server did not prove the cluster key");
	}
	become_ready(c);
	return 0;
}

/* ---- receiving ---------------------------------------------------------- */

static void dispatch(struct conn *c, const Cksm__Msg *m)
{
	int rc;

	switch (c->state) {
	case CONN_WAIT_CLIENT_HELLO:
		server_got_hello(c, m);
		break;
	case CONN_WAIT_SERVER_HELLO:
		client_got_server_hello(c, m);
		break;
	case CONN_WAIT_AUTH_RESULT:
		client_got_result(c, m);
		break;
	case CONN_READY:
		rc = c->ops->on_msg(c, m);
		if (rc < 0)
			conn_fail(c, rc, "%s message refused: %s", wire_body_name(m),
				  strerror(-rc));
		break;
	case CONN_CLOSING:
		break;
	}
}

/*
 * One frame: unpack, dispatch; stall an accepted conn whose peer does not
 * read, and yield when c has had its share of the turn.
 */
static void deliver(struct conn *c, const uint8_t *payload, uint32_t len)
{
	Cksm__Msg *m = wire_unpack(payload, len);

	if (!m) {
		metric_inc(c->net->m.rej_malformed);
		conn_fail(c, -EBADMSG, "malformed frame: %u bytes that are not a cksm message",
			  len);
		return;
	}
	dispatch(c, m);
	cksm__msg__free_unpacked(m, NULL);
	if (c->state == CONN_CLOSING)
		return;
	if (!c->client && c->state == CONN_READY && !c->stalled &&
	    conn_queued(c) > c->net->max_frame)
		stall_reading(c);
	if (++c->turn_frames >= TURN_FRAMES && !c->yielded)
		yield_turn(c);
}

static int on_frame(void *arg, const uint8_t *payload, uint32_t len)
{
	struct conn *c = arg;

	metric_inc(c->net->m.frames_in);
	if (c->stalled || c->yielded)
		return hold_frame(c, payload, len);
	deliver(c, payload, len);
	return c->state == CONN_CLOSING;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	struct conn *c = h->data;

	(void)suggested;
	*buf = uv_buf_init(c->rbuf, sizeof(c->rbuf));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
	struct conn *c = s->data;
	int rc;

	if (nread == 0 || c->state == CONN_CLOSING)
		return;
	if (nread == UV_ETIMEDOUT && !c->client) {
		unacked(c);
		return;
	}
	if (nread < 0) {
		if (nread == UV_EOF && c->state == CONN_READY)
			log_info("%s %s closed the connection", role_name(c->peer_role),
				 c->peer_name);
		else if (nread == UV_EOF)
			log_warn("%s closed the connection during the handshake", c->peer_addr);
		else
			log_warn("read from %s %s: %s", c->peer_addr, c->peer_name,
				 uv_strerror((int)nread));
		begin_close(c, false);
		return;
	}
	metric_add(c->net->m.bytes_in, (uint64_t)nread);
	rc = frame_dec_feed(&c->dec, buf->base, (size_t)nread, on_frame, c);
	if (rc == -EMSGSIZE) {
		metric_inc(c->net->m.rej_oversized);
		conn_fail(c, rc, "oversized frame: %u bytes announced, limit %u", c->dec.bad_len,
			  c->dec.limit);
	} else if (rc == -EBADMSG) {
		metric_inc(c->net->m.rej_malformed);
		conn_fail(c, rc, "malformed frame: zero length");
	} else if (rc == -ENOMEM) {
		conn_fail(c, rc, "out of memory reading a frame");
	}
}

static void on_deadline(uv_timer_t *t)
{
	struct conn *c = t->data;

	metric_inc(c->net->m.auth_timeouts);
	conn_fail(c, -ETIMEDOUT, "no authentication within %llu ms",
		  (unsigned long long)c->net->auth_timeout_ms);
}

/* ---- lifecycle ---------------------------------------------------------- */

struct conn *conn_create(struct net_ctx *net, bool client, const struct conn_ops *ops, void *data)
{
	struct conn *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->net = net;
	c->ops = ops;
	c->data = data;
	c->client = client;
	c->state = client ? CONN_WAIT_SERVER_HELLO : CONN_WAIT_CLIENT_HELLO;
	c->peer_role = client ? CKSM__ROLE__ROLE_COORD : CKSM__ROLE__ROLE_UNSPECIFIED;
	strcpy(c->peer_addr, "?");
	frame_dec_init(&c->dec, FRAME_MAX_PREAUTH);
	uv_tcp_init(net->loop, &c->tcp);
	uv_timer_init(net->loop, &c->deadline);
	uv_idle_init(net->loop, &c->turn);
	c->tcp.data = c;
	c->deadline.data = c;
	c->turn.data = c;
	c->handles_open = 3;
	c->next = net->conns;
	if (c->next)
		c->next->prev = c;
	net->conns = c;
	metric_gauge_add(net->m.active, 1);
	return c;
}

/* Who is at the other end, for logs and the per-address limit. */
static void note_peer(struct conn *c)
{
	int len = sizeof(c->peer_ss);

	if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&c->peer_ss, &len) == 0)
		netaddr_format((struct sockaddr *)&c->peer_ss, c->peer_addr, sizeof(c->peer_addr));
}

int conn_start(struct conn *c)
{
	int rc;

	if (!c->peer_ss.ss_family)
		note_peer(c);
	uv_tcp_nodelay(&c->tcp, 1);
	uv_timer_start(&c->deadline, on_deadline, c->net->auth_timeout_ms, 0);
	rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
	if (rc) {
		conn_fail(c, -EIO, "cannot read: %s", uv_strerror(rc));
		return -EIO;
	}
	if (!c->client)
		send_server_hello(c);
	return 0;
}

/* The same remote address (the port aside). */
static bool same_host(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
	const struct sockaddr_in *a4 = (const void *)a, *b4 = (const void *)b;
	const struct sockaddr_in6 *a6 = (const void *)a, *b6 = (const void *)b;

	if (a->ss_family != b->ss_family)
		return false;
	if (a->ss_family == AF_INET)
		return a4->sin_addr.s_addr == b4->sin_addr.s_addr;
	if (a->ss_family == AF_INET6)
		return !memcmp(&a6->sin6_addr, &b6->sin6_addr, sizeof(a6->sin6_addr));
	return true; /* unknown: one source */
}

/* The displacements of l's second that were not logged one by one. */
static void log_hidden(struct listener *l)
{
	unsigned a = l->hidden[DISPLACED_SOURCE], f = l->hidden[DISPLACED_FULL];

	if (a + f)
		log_warn(
			"displaced %u more unauthenticated connections within a second, not logged "
			"one by one: %u for their address's share (max_handshakes_per_source), "
			"%u from a full queue (max_handshakes); the last from %s",
			a + f, a, f, l->last_hidden);
	memset(l->shown, 0, sizeof(l->shown));
	memset(l->hidden, 0, sizeof(l->hidden));
}

static void on_quiet(uv_timer_t *t)
{
	log_hidden(t->data);
}

/*
 * Close the unauthenticated victim to make room for a newcomer on l. The
 * first DISPLACED_LOGGED of each reason in a second are logged, the rest
 * summed up when the second ends: a reconnect flood displaces thousands
 * a second, and the log must not be the next thing it floods. The metric
 * counts every one.
 */
static void displace(struct listener *l, struct conn *victim, int reason, const char *why,
		     unsigned n)
{
	struct net_ctx *net = l->net;

	metric_inc(reason == DISPLACED_SOURCE ? net->m.displaced_source : net->m.displaced_full);
	if (!uv_is_active((uv_handle_t *)&l->quiet))
		uv_timer_start(&l->quiet, on_quiet, 1000, 0);
	if (l->shown[reason] < DISPLACED_LOGGED) {
		l->shown[reason]++;
		conn_fail(victim, -EBUSY,
			  "unauthenticated after %llu ms, displaced by a newer connection: %u %s",
			  (unsigned long long)(uv_now(net->loop) - victim->accepted_ms), n, why);
		return;
	}
	l->hidden[reason]++;
	snprintf(l->last_hidden, sizeof(l->last_hidden), "%s", victim->peer_addr);
	begin_close(victim, true);
}

/*
 * A connection from c's address is about to join the handshake queue
 * through l: when that address has its share of places, its oldest gives
 * way; else, when the queue is full, the oldest of all does.
 */
static void make_room(struct listener *l, const struct conn *c)
{
	struct net_ctx *net = l->net;
	struct conn *oldest = NULL;
	unsigned same = 0;

	for (struct conn *p = net->pending_head; p; p = p->pnext)
		if (same_host(&p->peer_ss, &c->peer_ss) && same++ == 0)
			oldest = p;
	if (oldest && same >= net->max_per_source)
		displace(l, oldest, DISPLACED_SOURCE,
			 "from its address in the handshake (max_handshakes_per_source)", same);
	else if (net->pending_head && net->pending >= net->max_pending)
		displace(l, net->pending_head, DISPLACED_FULL,
			 "peers in the handshake (max_handshakes)", net->pending);
}

/*
 * An accepted conn's kernel send buffer is capped at max_frame / 2 (the
 * kernel doubles it for its bookkeeping). What the kernel holds unsent is
 * out of the sight of the stall and of max_queued; autotuned, it would
 * take MBs of answers for a peer that does not read before our own queue
 * grew at all. Counting it instead (SIOCOUTQ) would cost an ioctl a
 * frame, and nothing would tell the loop when the kernel's share drains,
 * to resume a stalled conn (on_written fires when bytes reach the
 * kernel, not the peer); the cap needs neither. A window of max_frame
 * bytes still carries 1 GB/s at 1 ms of round trip by default, more
 * than a control connection or a page reader needs.
 */
static void cap_send_buffer(struct conn *c)
{
	int bytes = (int)(c->net->max_frame / 2);
	int rc = uv_send_buffer_size((uv_handle_t *)&c->tcp, &bytes);

	if (rc)
		log_warn("cannot cap the send buffer for %s: %s", c->peer_addr, uv_strerror(rc));
}

/*
 * What an accepted conn sends must be acknowledged within STALL_MS
 * (TCP_USER_TIMEOUT), else the kernel drops it and the conn is closed
 * as one whose peer does not read. The stall sees only our queue; this
 * sees the kernel's share, which a peer can leave there for good: one
 * that shrinks its receive buffer below the window it has advertised
 * drops our segments, the acknowledgements of its own requests with
 * them, so it soon stops sending too and our queue never grows. (The
 * kernel applies the bound to a window left closed as well.)
 */
static void bound_unacked(struct conn *c)
{
	unsigned ms = STALL_MS;
	uv_os_fd_t fd;

	if (uv_fileno((const uv_handle_t *)&c->tcp, &fd))
		return;
	if (setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &ms, sizeof(ms)))
		log_warn("cannot bound the unacknowledged bytes of %s: %s", c->peer_addr,
			 strerror(errno));
}

/* The connection libuv has accepted for l: a place in the handshake queue. */
static void accept_one(struct listener *l)
{
	struct conn *c = conn_create(l->net, false, l->ops, l->data);

	if (!c) {
		log_error("out of memory accepting a connection");
		return;
	}
	if (uv_accept((uv_stream_t *)&l->tcp, (uv_stream_t *)&c->tcp) < 0) {
		begin_close(c, false);
		return;
	}
	note_peer(c);
	cap_send_buffer(c);
	bound_unacked(c);
	make_room(l, c);
	enter_pending(c);
	metric_inc(l->net->m.accepted);
	conn_start(c);
}

/* A new loop turn: the connection l left waiting, and libuv's accepts again. */
static void on_listener_turn(uv_idle_t *t)
{
	struct listener *l = t->data;

	uv_idle_stop(t);
	l->turn_accepts = 0;
	accept_one(l);
}

static void on_connection(uv_stream_t *server, int status)
{
	struct listener *l = server->data;

	if (status < 0) {
		log_warn("accept: %s", uv_strerror(status));
		return;
	}
	if (l->turn_accepts >= TURN_ACCEPTS) {
		uv_idle_start(&l->turn, on_listener_turn);
		return;
	}
	l->turn_accepts++;
	accept_one(l);
}

struct listener *listener_create(struct net_ctx *net, const char *addr, const struct conn_ops *ops,
				 void *data)
{
	struct sockaddr_storage ss;
	struct listener *l;
	int rc;

	rc = netaddr_parse(addr, &ss);
	if (rc) {
		log_error("listen address %s is not a numeric host:port", addr);
		return NULL;
	}
	l = calloc(1, sizeof(*l));
	if (!l)
		return NULL;
	l->net = net;
	l->ops = ops;
	l->data = data;
	uv_tcp_init(net->loop, &l->tcp);
	uv_idle_init(net->loop, &l->turn);
	uv_timer_init(net->loop, &l->quiet);
	l->tcp.data = l;
	l->turn.data = l;
	l->quiet.data = l;
	l->handles_open = 3;
	rc = uv_tcp_bind(&l->tcp, (struct sockaddr *)&ss, 0);
	if (!rc)
		rc = uv_listen((uv_stream_t *)&l->tcp, LISTEN_BACKLOG, on_connection);
	if (rc) {
		log_error("cannot listen on %s: %s", addr, uv_strerror(rc));
		listener_destroy(l);
		return NULL;
	}
	return l;
}

static void on_listener_closed(uv_handle_t *h)
{
	struct listener *l = h->data;

	if (--l->handles_open == 0)
		free(l);
}

void listener_destroy(struct listener *l)
{
	if (!l)
		return;
	log_hidden(l);
	uv_close((uv_handle_t *)&l->tcp, on_listener_closed);
	uv_close((uv_handle_t *)&l->turn, on_listener_closed);
	uv_close((uv_handle_t *)&l->quiet, on_listener_closed);
}

void listener_address(const struct listener *l, char *buf, size_t len)
{
	struct sockaddr_storage ss;
	int n = sizeof(ss);

	if (uv_tcp_getsockname(&l->tcp, (struct sockaddr *)&ss, &n) == 0)
		netaddr_format((struct sockaddr *)&ss, buf, len);
	else
		snprintf(buf, len, "?");
}
