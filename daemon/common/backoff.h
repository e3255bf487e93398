/*
 * backoff - exponential reconnect delays with jitter.
 *
 * The n-th consecutive failure waits a random time in [d/2, d] where
 * d = min(max, base * 2^n): peers that lost the same server do not come
 * back in lockstep, and none waits longer than max.
 */
#ifndef CKSM_BACKOFF_H
#define CKSM_BACKOFF_H

#include <stdint.h>

struct backoff {
	uint64_t base_ms; /* first delay */
	uint64_t max_ms;  /* ceiling */
	unsigned attempt; /* failures since the last success */
};

void backoff_init(struct backoff *b, uint64_t base_ms, uint64_t max_ms);

/*
 * Delay before the next try; rnd is a uniformly random 32-bit value (the
 * caller's source, so tests can pin it). Counts one more failure.
 */
uint64_t backoff_next(struct backoff *b, uint32_t rnd);

/* A try succeeded: start again from base. */
void backoff_reset(struct backoff *b);

#endif
