/*
 * hll - HyperLogLog: how many distinct values a stream held, in 16 KiB.
 *
 * The census uses it to count distinct stable contents: a node's stable
 * pages minus its distinct contents is what node-local merging could
 * save, and the same over the union of every node's sketch (registers
 * merged by maximum) is what merging across the cluster could save. With
 * 16384 registers (16 KiB) the standard error is 0.8%; below about 40,000
 * distinct values linear counting is used, within a few percent.
 */
#ifndef CKSM_HLL_H
#define CKSM_HLL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HLL_BITS      14
#define HLL_REGISTERS (1u << HLL_BITS)
#define HLL_RANK_MAX  (64 - HLL_BITS + 1) /* the highest value a register takes */

struct hll {
	uint8_t r[HLL_REGISTERS];
};

void hll_clear(struct hll *h);

/* Add a uniformly distributed 64-bit hash. */
static inline void hll_add(struct hll *h, uint64_t hash)
{
	uint32_t idx = (uint32_t)(hash >> (64 - HLL_BITS));
	uint64_t w = hash << HLL_BITS | (1ULL << (HLL_BITS - 1));
	uint8_t rho = (uint8_t)(__builtin_clzll(w) + 1);

	if (rho > h->r[idx])
		h->r[idx] = rho;
}

/* into |= from: the sketch of the union. */
void hll_merge(struct hll *into, const struct hll *from);

/* Estimated distinct values. */
double hll_estimate(const struct hll *h);

/* Could n registers from elsewhere be a sketch (none above HLL_RANK_MAX)? */
bool hll_registers_valid(const uint8_t *r, size_t n);

#endif
