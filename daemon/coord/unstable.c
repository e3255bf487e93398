/*
 * unstable - see unstable.h. Ids are already uniform hashes, so their own
 * bits pick the block (from lo) and the bits within it (9 bits each from
 * hi); no further hashing is needed.
 */
#include "unstable.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define WORDS 8 /* 512-bit blocks */

int unstable_init(struct unstable *u, uint64_t capacity)
{
	memset(u, 0, sizeof(*u));
	u->capacity = capacity ? capacity : 1;
	u->nblocks = (size_t)((u->capacity * UNSTABLE_BITS_PER_ID + 511) / 512);
	u->cur = aligned_alloc(64, u->nblocks * WORDS * sizeof(uint64_t));
	u->old = aligned_alloc(64, u->nblocks * WORDS * sizeof(uint64_t));
	if (!u->cur || !u->old) {
		unstable_fini(u);
		return -ENOMEM;
	}
	memset(u->cur, 0, u->nblocks * WORDS * sizeof(uint64_t));
	memset(u->old, 0, u->nblocks * WORDS * sizeof(uint64_t));
	return 0;
}

void unstable_fini(struct unstable *u)
{
	free(u->cur);
	free(u->old);
	u->cur = u->old = NULL;
}

static bool has(const uint64_t *b, const unsigned *bit)
{
	for (int i = 0; i < UNSTABLE_K; i++)
		if (!(b[bit[i] >> 6] & (1ULL << (bit[i] & 63))))
			return false;
	return true;
}

bool unstable_check_insert(struct unstable *u, uint64_t hi, uint64_t lo)
{
	size_t blk = (size_t)((lo >> 16) % u->nblocks) * WORDS;
	unsigned bit[UNSTABLE_K];

	/* Six positions from hi's low 54 bits (its top byte is the domain
	 * tag), the seventh from lo's low bits (the block comes from lo >> 16). */
	for (int i = 0; i < UNSTABLE_K - 1; i++)
		bit[i] = (unsigned)(hi >> (9 * i)) & 511;
	bit[UNSTABLE_K - 1] = (unsigned)lo & 511;
	if (has(u->cur + blk, bit) || has(u->old + blk, bit))
		return true;
	for (int i = 0; i < UNSTABLE_K; i++)
		u->cur[blk + (bit[i] >> 6)] |= 1ULL << (bit[i] & 63);
	if (++u->inserted >= u->capacity)
		unstable_age(u);
	return false;
}

void unstable_age(struct unstable *u)
{
	uint64_t *t = u->old;

	u->old = u->cur;
	u->cur = t;
	memset(u->cur, 0, u->nblocks * WORDS * sizeof(uint64_t));
	u->inserted = 0;
	u->generations++;
}

size_t unstable_bytes(const struct unstable *u)
{
	return 2 * u->nblocks * WORDS * sizeof(uint64_t);
}
