/*
 * dial - outgoing control connections that keep themselves up.
 *
 * A dialer resolves and connects to one "host:port", runs the client side
 * of the handshake, and after any failure or close tries again after an
 * exponential, jittered delay (backoff.h). A successful handshake resets
 * the delay.
 */
#ifndef CKSM_DIAL_H
#define CKSM_DIAL_H

#include <stdbool.h>

#include "backoff.h"
#include "conn.h"

struct dialer;

/*
 * Create a dialer for addr; connections get ops with c->data = data.
 * Returns NULL if addr is not host:port or memory runs out.
 */
struct dialer *dialer_create(struct net_ctx *net, const char *addr, const struct conn_ops *ops,
			     void *data, uint64_t backoff_base_ms, uint64_t backoff_max_ms);

/* Start connecting (now). */
void dialer_start(struct dialer *d);

/* Close any connection, stop retrying, free d (NULL ok). */
void dialer_destroy(struct dialer *d);

/* The authenticated connection, or NULL while there is none. */
struct conn *dialer_conn(const struct dialer *d);

const char *dialer_address(const struct dialer *d);

/* Called by conn. */
void dialer_conn_ready(struct dialer *d, struct conn *c);
void dialer_conn_closed(struct dialer *d, struct conn *c);

#endif
