/*
 * conn - authenticated, framed control connections on a libuv loop.
 *
 * A conn is one TCP connection carrying Msg frames. Until both sides have
 * proved the cluster key (auth.h) only the three handshake messages are
 * accepted, frames are capped at FRAME_MAX_PREAUTH, and a deadline runs:
 * a peer that sends nothing, or half a frame, is closed when it expires.
 * Any protocol error closes that connection with a logged reason naming
 * the peer, and counts it; nothing else is affected.
 *
 * Unauthenticated peers cannot crowd out the others: at most
 * max_handshakes accepted connections are in the handshake at once, and
 * at most max_per_source of them from one remote address. A new
 * connection always gets a place: when either limit is reached, the
 * oldest connection still in the handshake (of that address, or of all)
 * is closed to make room. An authenticated peer needs no place. A peer
 * that does not read cannot make a daemon buffer without limit: an
 * accepted connection whose unsent bytes would pass max_queued is closed.
 * Nor can one connection hold the loop: after a few frames it yields,
 * and the rest of what it sent waits for the next loop turn.
 *
 * The accepting side is a listener; the connecting side is a dialer
 * (dial.h), which reconnects.
 */
#ifndef CKSM_CONN_H
#define CKSM_CONN_H

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "auth.h"
#include "cksm.pb-c.h"
#include "frame.h"
#include "metrics.h"

/* Counters every daemon keeps about its control connections. */
struct net_metrics {
	struct metric *accepted;    /* connections accepted */
	struct metric *active;	    /* gauge: open connections */
	struct metric *auth_ok;	    /* handshakes completed */
	struct metric *auth_failed; /* handshakes refused */
	struct metric *frames_in;   /* frames received */
	struct metric *frames_out;  /* frames sent */
	struct metric *bytes_in;
	struct metric *bytes_out;
	struct metric *rej_oversized;	 /* frames above the limit */
	struct metric *rej_malformed;	 /* undecodable or empty frames */
	struct metric *rej_unexpected;	 /* a message not allowed now */
	struct metric *auth_timeouts;	 /* peers that did not finish in time */
	struct metric *displaced_source; /* closed for a newer one of its address */
	struct metric *displaced_full;	 /* closed for a newer one: queue full */
	struct metric *overflows;	 /* closed: output queue above max_queued */
};

/* What all connections of one daemon share. */
struct net_ctx {
	uv_loop_t *loop;
	const struct auth_key *key;
	Cksm__Role role;	  /* our role */
	const char *name;	  /* our name, sent in hellos */
	uint32_t max_frame;	  /* frame limit after authentication */
	uint64_t auth_timeout_ms; /* deadline for the handshake */
	unsigned max_pending;	  /* accepted conns in the handshake at once */
	unsigned max_per_source;  /* of them from one remote address */
	uint64_t max_queued;	  /* unsent bytes an accepted conn may hold */
	struct net_metrics m;
	struct conn *conns; /* every open conn, for net_close_all */
	/* Accepted conns still in the handshake, oldest first. */
	struct conn *pending_head, *pending_tail;
	unsigned pending; /* how many */
};

/* Register the net_metrics counters in reg; returns 0 or -ENOMEM. */
int net_metrics_register(struct net_metrics *m, struct metrics *reg);

struct conn;

struct conn_ops {
	/* The handshake finished: the peer is authenticated. */
	void (*on_ready)(struct conn *c);
	/*
	 * One message after the handshake; it is freed when this returns.
	 * Return 0, or a negative errno to close the connection (the
	 * callback should have logged why, or set a reason with conn_fail).
	 */
	int (*on_msg)(struct conn *c, const Cksm__Msg *m);
	/* The connection is going away; c is freed after this returns. */
	void (*on_close)(struct conn *c);
};

enum conn_state {
	CONN_WAIT_SERVER_HELLO, /* client: connected, waiting for the nonce */
	CONN_WAIT_CLIENT_HELLO, /* server: nonce sent */
	CONN_WAIT_AUTH_RESULT,	/* client: hello sent */
	CONN_READY,		/* authenticated */
	CONN_CLOSING,
};

struct conn {
	uv_tcp_t tcp;
	uv_timer_t deadline; /* handshake deadline, then the stall's */
	uv_idle_t turn;	     /* runs the next turn's share of held frames */
	uv_connect_t creq;   /* outgoing: the connect request */
	struct frame_dec dec;
	struct net_ctx *net;
	const struct conn_ops *ops;
	void *data;	       /* owner's, set before on_ready */
	struct dialer *dialer; /* set for outgoing connections */
	enum conn_state state;
	bool client;	      /* we connected (dialer side) */
	bool pending;	      /* in net's pending list */
	bool stalled;	      /* not read: its peer has not read our answers */
	bool yielded;	      /* not read: it had its share of this loop turn */
	unsigned turn_frames; /* frames handled since it last yielded */
	uint8_t *held;	      /* frames read, not yet handled (stalled or yielded) */
	size_t held_len, held_cap;
	uint64_t accepted_ms;	    /* loop time it joined the list */
	struct conn *next, *prev;   /* in net->conns */
	struct conn *pnext, *pprev; /* in net's pending list, while pending */
	int handles_open;	    /* close callbacks still to come */
	uint8_t nonce[AUTH_NONCE_BYTES];
	uint8_t peer_nonce[AUTH_NONCE_BYTES];
	Cksm__Role peer_role;
	char peer_addr[272];		   /* "ip:port" of the other end */
	struct sockaddr_storage peer_ss;   /* the same, for the per-address limit */
	char peer_name[AUTH_NAME_MAX + 1]; /* name it authenticated with */
	char rbuf[16384];
};

struct listener;

/*
 * Listen on addr ("host:port"). Returns NULL with the reason logged.
 * New connections run the server side of the handshake and then get ops,
 * with c->data = data.
 */
struct listener *listener_create(struct net_ctx *net, const char *addr, const struct conn_ops *ops,
				 void *data);

/* Stop accepting; open connections stay. Frees the listener (NULL ok). */
void listener_destroy(struct listener *l);

/* The bound address, for logs and when the port was 0. */
void listener_address(const struct listener *l, char *buf, size_t len);

/*
 * Start the client side on an already connected tcp handle (used by
 * dialer). Takes ownership of the handle's memory via the conn.
 */
struct conn *conn_create(struct net_ctx *net, bool client, const struct conn_ops *ops, void *data);
int conn_start(struct conn *c);

/* Queue m for sending. Returns 0 or a negative errno (then c is closing). */
int conn_send(struct conn *c, const Cksm__Msg *m);

/* Bytes queued but not yet written to the socket (backpressure). */
size_t conn_queued(const struct conn *c);

/*
 * Close with a reason: logged at warn with the peer, sent to the peer as
 * an Error (when authenticated), then the socket is shut down and closed.
 * Safe to call more than once and from inside callbacks. Returns code.
 */
int conn_fail(struct conn *c, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Close quietly (local decision, nothing wrong). */
void conn_close(struct conn *c);

/*
 * Take an authenticated connection out of the loop, for a protocol of
 * its own (the data plane): reading stops, the conn closes without a
 * shutdown, and a duplicate of its socket is returned (or a negative
 * errno: -EAGAIN while frames are still queued for it).
 */
int conn_detach(struct conn *c);

/* Close every connection of net (daemon shutdown). */
void net_close_all(struct net_ctx *net);

#endif
