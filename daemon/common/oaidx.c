/*
 * oaidx - see oaidx.h.
 */
#include "oaidx.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/mman.h>

/* The table of an empty index: one empty slot, never written. */
static uint32_t empty_table[1];

void oaidx_init(struct oaidx *x)
{
	x->v = empty_table;
	x->cap = 1;
	x->n = 0;
}

void oaidx_fini(struct oaidx *x)
{
	if (x->v != empty_table)
		free(x->v);
	oaidx_init(x);
}

/* Lookups are random: a large table gets huge pages where the kernel allows. */
static void advise_huge(void *p, size_t bytes)
{
	uintptr_t huge = 2u << 20, a = ((uintptr_t)p + huge - 1) & ~(huge - 1);
	uintptr_t e = ((uintptr_t)p + bytes) & ~(huge - 1);

	if (e > a)
		madvise((void *)a, e - a, MADV_HUGEPAGE);
}

int oaidx_reserve(struct oaidx *x, size_t n, oaidx_hash_fn hash, const void *ctx)
{
	struct oaidx old = *x;
	size_t cap = x->cap > 16 ? x->cap : 16;

	if (n * 4 <= x->cap * 3)
		return 0;
	while (n * 4 > cap * 3)
		cap *= 2;
	x->v = calloc(cap, sizeof(*x->v));
	if (!x->v) {
		*x = old;
		return -ENOMEM;
	}
	advise_huge(x->v, cap * sizeof(*x->v));
	x->cap = cap;
	x->n = 0;
	for (size_t i = 0; i < old.cap; i++)
		if (old.v[i])
			oaidx_put(x, hash(ctx, old.v[i]), old.v[i]);
	if (old.v != empty_table)
		free(old.v);
	return 0;
}

void oaidx_put(struct oaidx *x, uint64_t hash, uint32_t v)
{
	size_t i = oaidx_home(x, hash);

	while (x->v[i])
		i = oaidx_next(x, i);
	x->v[i] = v;
	x->n++;
}

size_t oaidx_slot(const struct oaidx *x, uint64_t hash, uint32_t v)
{
	size_t i = oaidx_home(x, hash);

	while (x->v[i] != v)
		i = oaidx_next(x, i);
	return i;
}

void oaidx_del(struct oaidx *x, size_t i, oaidx_hash_fn hash, const void *ctx)
{
	size_t hole = i, mask = x->cap - 1;

	x->v[hole] = 0;
	x->n--;
	for (size_t s = oaidx_next(x, hole); x->v[s]; s = oaidx_next(x, s)) {
		size_t home = oaidx_home(x, hash(ctx, x->v[s]));

		/* s's value may fill the hole unless its home lies in (hole, s]. */
		if (((s - home) & mask) >= ((s - hole) & mask)) {
			x->v[hole] = x->v[s];
			x->v[s] = 0;
			hole = s;
		}
	}
}
