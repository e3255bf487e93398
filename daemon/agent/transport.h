/*
 * transport - reading pages of other nodes' pools: the data plane.
 *
 * A transport kind is one way of reading another node's pool (TCP today;
 * RDMA READ will be the second). Its table names it, makes readers and
 * serves this node's pool to the readers of other nodes. The agent
 * chooses the kind once, from [agent] transport, and hands it to the
 * backing and the copier, which never name a kind.
 *
 * A reader belongs to one thread (the fault thread, the evictor, the
 * copier each have their own). A read either fills the 4 KiB buffer with
 * the slot's bytes or fails; each of its waits (connect, handshake, send,
 * receive) is bounded by cfg->data_timeout_ms. A read names the content
 * id it wants (the holder refuses a slot that holds another), and the
 * caller checks the bytes' id (transport_read_checked does both).
 */
#ifndef CKSM_TRANSPORT_H
#define CKSM_TRANSPORT_H

#include <stddef.h>
#include <stdatomic.h>
#include <stdint.h>

#include "auth.h"
#include "cid.h"
#include "config.h"
#include "conn.h"
#include "metrics.h"
#include "pool.h"

#define DUP_ADDR_MAX 64

/* One dup on another node, and where that node serves reads. */
struct dup_loc {
	uint32_t node;
	uint32_t slot;
	uint32_t gen;
	char addr[DUP_ADDR_MAX]; /* host:port */
};

struct transport;

struct transport_ops {
	/*
	 * Read the dup, which should hold content id, into buf (4096 bytes):
	 * 0 or a negative errno. The holder is told the id, and serves the
	 * slot only if it holds that content.
	 */
	int (*read)(struct transport *t, const struct dup_loc *d, const struct cid *id, void *buf);
	void (*destroy)(struct transport *t);
};

/* A reader; each kind's own struct starts with it. */
struct transport {
	const struct transport_ops *ops;
};

/* A kind's server of this node's pool; each kind's own struct starts with it. */
struct data_server {
	const struct transport_kind *kind;
	atomic_uint_fast64_t served; /* page reads answered with bytes, by every kind */
};

struct transport_kind {
	const char *name;
	/* Whether the kind can run here (NULL: always); why not in why. */
	bool (*usable)(const struct config *cfg, char *why, size_t len);
	/* A reader for one thread, or NULL with the reason logged. */
	struct transport *(*reader)(const struct config *cfg, const struct auth_key *key);
	/* Serve reads of pool on cfg->data_listen, or NULL with the reason logged. */
	struct data_server *(*serve)(struct net_ctx *net, const struct config *cfg,
				     const struct auth_key *key, struct pool *pool,
				     struct metrics *reg);
	void (*serve_stop)(struct data_server *ds);
	/* What transport_served says (NULL: ds->served). */
	uint64_t (*served)(struct data_server *ds);
	/* A holder's data address became known: connect ahead of its first read (may be NULL). */
	void (*known)(const char *addr);
};

extern const struct transport_kind transport_tcp, transport_rdma;

/*
 * The kind cfg->transport names; "auto" is the best kind this node can
 * run (RDMA where a device is there, else TCP). NULL, with the reason
 * logged, when the kind named cannot run here: never another kind in its
 * place.
 */
const struct transport_kind *transport_kind_choose(const struct config *cfg);

/* Read d into buf and check that the bytes are content id of domain dom:
 * 0, the read's error, or -EBADMSG (other bytes; logged). */
int transport_read_checked(struct transport *t, const struct dup_loc *d,
			   const struct cid_domain *dom, const struct cid *id, void *buf);

/* Either accepts NULL. */
void transport_destroy(struct transport *t);
void transport_serve_stop(struct data_server *ds);

/*
 * A count that moves while other nodes read from ds (any thread): the
 * page reads answered with bytes where the holder sees them (TCP); where
 * it does not (RDMA READ), it also moves while any reader is connected.
 */
uint64_t transport_served(struct data_server *ds);

#endif
