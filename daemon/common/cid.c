/*
 * cid - see cid.h.
 */
#include "cid.h"

#include <errno.h>
#include <string.h>

#include <sodium.h>
#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>
#include <xxh_x86dispatch.h> /* libxxhash picks SSE2, AVX2 or AVX-512 at run time */

#include "util.h"

int cid_domain_init(struct cid_domain *d, const struct auth_key *key, uint8_t id, const char *name)
{
	static const char label[] = "cksm-v1 domain ";
	crypto_auth_hmacsha256_state st;
	uint8_t seed[crypto_auth_hmacsha256_BYTES];

	if (!name_valid(name))
		return -EINVAL;
	memset(d, 0, sizeof(*d));
	d->id = id;
	strcpy(d->name, name);
	crypto_auth_hmacsha256_init(&st, key->k, sizeof(key->k));
	crypto_auth_hmacsha256_update(&st, (const uint8_t *)label, sizeof(label) - 1);
	crypto_auth_hmacsha256_update(&st, (const uint8_t *)name, strlen(name));
	crypto_auth_hmacsha256_final(&st, seed);
	if (XXH3_generateSecret(d->secret, sizeof(d->secret), seed, sizeof(seed)) != XXH_OK)
		return -EINVAL;
	sodium_memzero(seed, sizeof(seed));
	return 0;
}

struct cid cid_of(const struct cid_domain *d, const void *page)
{
	XXH128_hash_t h =
		XXH3_128bits_withSecret(page, CID_PAGE_SIZE, d->secret, sizeof(d->secret));
	struct cid id;

	id.hi = (h.high64 & ~(0xffULL << 56)) | (uint64_t)d->id << 56;
	id.lo = h.low64;
	return id;
}

uint64_t cid_checksum(const void *page)
{
	return XXH3_64bits_dispatch(page, CID_PAGE_SIZE);
}

const struct cid_domain *cid_domain_find(const struct cid_domain *doms, unsigned n, struct cid id)
{
	for (unsigned i = 0; i < n; i++)
		if (doms[i].id == cid_domain_of(id))
			return &doms[i];
	return NULL;
}
