/*
 * rdmawire - what an RDMA reader and a holder say when they connect
 * (rdma.c): the private data of librdmacm's connect request and accept.
 *
 * The request proves the cluster key: a MAC over a fresh nonce, the time
 * and both ends' addresses as each side sees them (a request copied off
 * the wire is worth nothing from another address or to another holder).
 * The accept names the pool (its address in the holder, its rkey, its
 * slots), MACed over the request's nonce. Multi-byte fields are
 * big-endian.
 */
#ifndef CKSM_RDMAWIRE_H
#define CKSM_RDMAWIRE_H

#include <stdint.h>
#include <sys/socket.h>

#include "auth.h"

/* A connect request's private data: 56 bytes, what RC over rdma_cm allows. */
struct conn_req {
	uint8_t magic[4];
	uint8_t nonce[12];
	uint8_t time[8]; /* unix seconds */
	uint8_t mac[32];
};

/* The holder's accept: where its pool is. */
struct conn_rep {
	uint8_t magic[4];
	uint8_t base[8];
	uint8_t rkey[4];
	uint8_t slots[4];
	uint8_t mac[32];
};

_Static_assert(sizeof(struct conn_req) == 56, "RC connect private data is 56 bytes");
_Static_assert(sizeof(struct conn_rep) <= 196, "RC accept private data is 196 bytes");

/* A request from src to dst made at time when (unix seconds): a new nonce, its MAC. */
void conn_req_make(struct conn_req *r, const struct auth_key *key, const struct sockaddr *src,
		   const struct sockaddr *dst, int64_t when);

/* Whether r is a cksm request whose MAC is right for src to dst (magic,
 * then MAC): NULL, or what is wrong. Its time is the caller's to judge. */
const char *conn_req_check(const struct conn_req *r, const struct auth_key *key,
			   const struct sockaddr *src, const struct sockaddr *dst);

/* The request's time, unix seconds. */
int64_t conn_req_time(const struct conn_req *r);

/* An accept for request nonce: the pool at base, rkey, slots. */
void conn_rep_make(struct conn_rep *p, const struct auth_key *key, const uint8_t nonce[12],
		   uint64_t base, uint32_t rkey, uint32_t slots);

/* 0 and the pool, or -EACCES when p is not an accept MACed for nonce. */
int conn_rep_open(const struct conn_rep *p, const struct auth_key *key, const uint8_t nonce[12],
		  uint64_t *base, uint32_t *rkey, uint32_t *slots);

#endif
