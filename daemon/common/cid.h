/*
 * cid - 128-bit content ids, keyed by dedup domain.
 *
 * A content id is XXH3-128 of the page under a secret derived from the
 * cluster key and the domain's name, with the domain's number (0..255) in
 * the top byte. Two domains therefore never produce the same id for the
 * same bytes (the top bytes differ), and without the cluster key nobody
 * can compute which id a given page will get. Every node derives the same
 * secret for the same domain, so ids agree across the cluster.
 *
 * The bucket of an id (which shard owns it) comes from the low bits of
 * id.lo, which the domain tag does not touch.
 */
#ifndef CKSM_CID_H
#define CKSM_CID_H

#include <stdint.h>

#include "auth.h"

#define CID_SECRET_BYTES 192
#define CID_PAGE_SIZE	 4096u

struct cid {
	uint64_t hi;
	uint64_t lo;
};

struct cid_domain {
	uint8_t id; /* tag in the top byte */
	char name[65];
	_Alignas(64) uint8_t secret[CID_SECRET_BYTES]; /* XXH3 secret */
};

/* Derive a domain's secret from the cluster key; returns 0 or -EINVAL. */
int cid_domain_init(struct cid_domain *d, const struct auth_key *key, uint8_t id, const char *name);

/* The id of one 4 KiB page in domain d. */
struct cid cid_of(const struct cid_domain *d, const void *page);

static inline int cid_eq(struct cid a, struct cid b)
{
	return a.hi == b.hi && a.lo == b.lo;
}

/* Orders ids by hi, then lo: -1, 0 or 1. */
static inline int cid_cmp(struct cid a, struct cid b)
{
	if (a.hi != b.hi)
		return a.hi < b.hi ? -1 : 1;
	return a.lo < b.lo ? -1 : a.lo > b.lo;
}

static inline uint32_t cid_bucket(struct cid id, uint32_t buckets)
{
	return (uint32_t)(id.lo & (buckets - 1)); /* buckets is a power of two */
}

static inline uint8_t cid_domain_of(struct cid id)
{
	return (uint8_t)(id.hi >> 56);
}

/* The domain of id among doms[0..n), or NULL when none has its tag. */
const struct cid_domain *cid_domain_find(const struct cid_domain *doms, unsigned n, struct cid id);

/* 64-bit checksum of a page for volatility (XXH3-64, unkeyed). */
uint64_t cid_checksum(const void *page);

#endif
