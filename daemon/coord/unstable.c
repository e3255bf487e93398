/*
 * unstable - see unstable.h. Ids are already uniform hashes, so their own
 * bits pick the block and the bits within it; no further hashing is needed.
 * The two generations' blocks for one id sit side by side (128 bytes), so
 * a lookup costs one trip to memory, not two.
 */
#include "unstable.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define WORDS 8 /* 512-bit blocks */

/*
 * Every lookup lands on a random block: back large filters with huge
 * pages where the kernel allows, so lookups miss the TLB less.
 */
static uint64_t *huge_alloc(size_t bytes)
{
	size_t huge = 2u << 20, len = (bytes + huge - 1) / huge * huge;
	void *p = aligned_alloc(bytes >= huge ? huge : 128, bytes >= huge ? len : bytes);

	if (p && bytes >= huge)
		madvise(p, len, MADV_HUGEPAGE);
	return p;
}

static uint64_t *block(const struct unstable *u, size_t blk, unsigned gen)
{
	return u->blocks + (blk * 2 + gen) * WORDS;
}

int unstable_init(struct unstable *u, uint64_t capacity)
{
	size_t bytes;

	memset(u, 0, sizeof(*u));
	u->capacity = capacity ? capacity : 1;
	u->nblocks = (size_t)((u->capacity * UNSTABLE_BITS_PER_ID + 511) / 512);
	bytes = u->nblocks * 2 * WORDS * sizeof(uint64_t);
	u->blocks = huge_alloc(bytes);
	if (!u->blocks)
		return -ENOMEM;
	memset(u->blocks, 0, bytes);
	return 0;
}

void unstable_fini(struct unstable *u)
{
	free(u->blocks);
	u->blocks = NULL;
}

static bool has(const uint64_t *b, const unsigned *bit)
{
	for (int i = 0; i < UNSTABLE_K; i++)
		if (!(b[bit[i] >> 6] & (1ULL << (bit[i] & 63))))
			return false;
	return true;
}

static void bits_of(uint64_t hi, uint64_t lo, unsigned *bit)
{
	/* Six positions from hi's low 54 bits (its top byte is the domain
	 * tag), the seventh from lo's low bits (the block comes from lo >> 16). */
	for (int i = 0; i < UNSTABLE_K - 1; i++)
		bit[i] = (unsigned)(hi >> (9 * i)) & 511;
	bit[UNSTABLE_K - 1] = (unsigned)lo & 511;
}

bool unstable_has(const struct unstable *u, uint64_t hi, uint64_t lo)
{
	size_t blk = (size_t)((lo >> 16) % u->nblocks);
	unsigned bit[UNSTABLE_K];

	bits_of(hi, lo, bit);
	return has(block(u, blk, u->cur), bit) || has(block(u, blk, !u->cur), bit);
}

bool unstable_check_insert(struct unstable *u, uint64_t hi, uint64_t lo)
{
	size_t blk = (size_t)((lo >> 16) % u->nblocks);
	uint64_t *cur = block(u, blk, u->cur), *old = block(u, blk, !u->cur);
	unsigned bit[UNSTABLE_K];

	bits_of(hi, lo, bit);
	if (has(cur, bit) || has(old, bit))
		return true;
	for (int i = 0; i < UNSTABLE_K; i++)
		cur[bit[i] >> 6] |= 1ULL << (bit[i] & 63);
	if (++u->inserted >= u->capacity)
		unstable_age(u);
	return false;
}

void unstable_prefetch(const struct unstable *u, uint64_t lo)
{
	const uint64_t *b = block(u, (size_t)((lo >> 16) % u->nblocks), 0);

	__builtin_prefetch(b);
	__builtin_prefetch(b + WORDS);
}

void unstable_age(struct unstable *u)
{
	u->cur = !u->cur;
	for (size_t b = 0; b < u->nblocks; b++)
		memset(block(u, b, u->cur), 0, WORDS * sizeof(uint64_t));
	u->inserted = 0;
	u->generations++;
}

size_t unstable_bytes(const struct unstable *u)
{
	return u->nblocks * 2 * WORDS * sizeof(uint64_t);
}
