/*
 * transport - reading pages of other nodes' pools: the data plane.
 *
 * An ops table, so that RDMA READ can stand beside TCP. Each thread that
 * reads (the fault thread, the evictor) has its own instance: instances
 * are not shared between threads. A read either fills the 4 KiB buffer
 * with the slot's bytes or fails; the caller checks the bytes' id.
 */
#ifndef CKSM_TRANSPORT_H
#define CKSM_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>

#include "auth.h"
#include "conn.h"
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
	const char *name;
	/* Read the dup into buf (4096 bytes): 0 or a negative errno. */
	int (*read)(struct transport *t, const struct dup_loc *d, void *buf);
	/* n reads at once; rcs[i] as read's. */
	void (*read_batch)(struct transport *t, const struct dup_loc *d, void *const *bufs,
			   int *rcs, size_t n);
	void (*destroy)(struct transport *t);
};

struct transport {
	const struct transport_ops *ops;
};

/*
 * TCP: authenticated connections (the cluster key, as node `name`) kept
 * open per peer; a read waits at most timeout_ms.
 */
struct transport *tcp_transport_create(const struct auth_key *key, const char *name,
				       int timeout_ms);

/*
 * The holder's side: serve page reads of pool on addr (the handshake on
 * net's loop, the reads on a thread of their own). NULL on failure.
 */
struct data_server;
struct data_server *tcp_transport_serve(struct net_ctx *net, const char *addr, struct pool *pool,
					struct metrics *reg);
void tcp_transport_serve_stop(struct data_server *ds);

#endif
