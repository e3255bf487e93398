/*
 * rdmawire - see rdmawire.h.
 */
#include "rdmawire.h"

#include <endian.h>
#include <errno.h>
#include <sodium.h>
#include <stddef.h>
#include <string.h>

#include "netaddr.h"

static const uint8_t req_magic[4] = { 'C', 'K', 'R', 'q' };
static const uint8_t rep_magic[4] = { 'C', 'K', 'R', 'p' };

static void req_mac(const struct conn_req *r, const struct auth_key *key,
		    const struct sockaddr *src, const struct sockaddr *dst, uint8_t mac[32])
{
	crypto_auth_hmacsha512256_state st;
	char a[2][64] = { "", "" };

	if (src)
		netaddr_format(src, a[0], sizeof(a[0]));
	if (dst)
		netaddr_format(dst, a[1], sizeof(a[1]));
	crypto_auth_hmacsha512256_init(&st, key->k, AUTH_KEY_BYTES);
	crypto_auth_hmacsha512256_update(&st, (const uint8_t *)r, offsetof(struct conn_req, mac));
	crypto_auth_hmacsha512256_update(&st, (const uint8_t *)a, sizeof(a));
	crypto_auth_hmacsha512256_final(&st, mac);
}

void conn_req_make(struct conn_req *r, const struct auth_key *key, const struct sockaddr *src,
		   const struct sockaddr *dst, int64_t when)
{
	uint64_t t = htobe64((uint64_t)when);

	memcpy(r->magic, req_magic, 4);
	randombytes_buf(r->nonce, sizeof(r->nonce));
	memcpy(r->time, &t, 8);
	req_mac(r, key, src, dst, r->mac);
}

const char *conn_req_check(const struct conn_req *r, const struct auth_key *key,
			   const struct sockaddr *src, const struct sockaddr *dst)
{
	uint8_t mac[32];

	if (memcmp(r->magic, req_magic, 4))
		return "no cksm connect request";
	req_mac(r, key, src, dst, mac);
	return sodium_memcmp(mac, r->mac, 32) ? "bad key" : NULL;
}

int64_t conn_req_time(const struct conn_req *r)
{
	uint64_t t;

	memcpy(&t, r->time, 8);
	return (int64_t)be64toh(t);
}

static void rep_mac(const struct conn_rep *p, const struct auth_key *key, const uint8_t nonce[12],
		    uint8_t mac[32])
{
	uint8_t m[12 + offsetof(struct conn_rep, mac)];

	memcpy(m, nonce, 12);
	memcpy(m + 12, p, offsetof(struct conn_rep, mac));
	crypto_auth(mac, m, sizeof(m), key->k);
}

void conn_rep_make(struct conn_rep *p, const struct auth_key *key, const uint8_t nonce[12],
		   uint64_t base, uint32_t rkey, uint32_t slots)
{
	base = htobe64(base);
	rkey = htobe32(rkey);
	slots = htobe32(slots);
	memcpy(p->magic, rep_magic, 4);
	memcpy(p->base, &base, 8);
	memcpy(p->rkey, &rkey, 4);
	memcpy(p->slots, &slots, 4);
	rep_mac(p, key, nonce, p->mac);
}

int conn_rep_open(const struct conn_rep *p, const struct auth_key *key, const uint8_t nonce[12],
		  uint64_t *base, uint32_t *rkey, uint32_t *slots)
{
	uint8_t mac[32];

	rep_mac(p, key, nonce, mac);
	if (memcmp(p->magic, rep_magic, 4) || sodium_memcmp(mac, p->mac, 32))
		return -EACCES;
	memcpy(base, p->base, 8);
	memcpy(rkey, p->rkey, 4);
	memcpy(slots, p->slots, 4);
	*base = be64toh(*base);
	*rkey = be32toh(*rkey);
	*slots = be32toh(*slots);
	return 0;
}
