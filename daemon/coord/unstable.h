/*
 * unstable - the shard's memory of contents seen once: KSM's unstable
 * tree, as a filter of content ids instead of a tree of pages.
 *
 * Two generations of a blocked Bloom filter (one 64-byte block per id,
 * UNSTABLE_K bits set in it). An id is "seen" when either generation has
 * it; new ids go into the current one. When the current generation holds
 * its capacity, or when the shard ages it (unstable_age), it becomes the
 * old one and a fresh current starts, so the filter follows the recent
 * reports the way KSM rebuilds its unstable tree every scan. At 10 bits
 * per id per generation it costs 2.5 bytes per unique id at capacity, and
 * answers "seen" wrongly for about 1% of new ids: such an id is treated as
 * a second sighting, which costs a little work, never correctness.
 */
#ifndef CKSM_UNSTABLE_H
#define CKSM_UNSTABLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define UNSTABLE_K	     7
#define UNSTABLE_BITS_PER_ID 10

struct unstable {
	uint64_t *blocks; /* nblocks pairs of 512-bit blocks, both generations */
	unsigned cur;	  /* which of a pair is the current generation */
	size_t nblocks;
	uint64_t capacity;    /* ids per generation before it ages */
	uint64_t inserted;    /* ids in the current generation */
	uint64_t generations; /* times it aged */
};

/* Size for capacity ids per generation; 0 or -ENOMEM. */
int unstable_init(struct unstable *u, uint64_t capacity);
void unstable_fini(struct unstable *u);

/*
 * True when the id was seen before (in either generation); otherwise it is
 * remembered and false is returned.
 */
bool unstable_check_insert(struct unstable *u, uint64_t hi, uint64_t lo);

/* Whether either generation has the id (nothing is inserted). */
bool unstable_has(const struct unstable *u, uint64_t hi, uint64_t lo);

/* Start loading the block pair of an id. */
void unstable_prefetch(const struct unstable *u, uint64_t lo);

/* Start a new generation; the current one becomes the old one. */
void unstable_age(struct unstable *u);

size_t unstable_bytes(const struct unstable *u);

#endif
