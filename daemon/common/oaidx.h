/*
 * oaidx - the one hash index of the program: open addressing over 32-bit
 * values.
 *
 * The items live in the caller's own storage, usually a dense array; the
 * index holds one nonzero 32-bit value per item (its position + 1, with
 * bits of its key above the position if the caller likes) in a table of
 * a power-of-two size, at most 3/4 full, probed linearly from the slot the
 * item's 64-bit hash names. Deletion shifts the following run back (no
 * tombstones), so every probe ends at the first empty slot.
 *
 * The index never looks at the items. Where it needs an item's hash
 * (deletion, growth) it asks the caller's oaidx_hash_fn with the stored
 * value. A lookup is the caller's loop:
 *
 *	for (i = oaidx_home(x, h); (v = x->v[i]); i = oaidx_next(x, i))
 *		if (the item v names has the key)
 *			return it;
 *
 * Not thread-safe: the caller's lock covers the index with its items.
 */
#ifndef CKSM_OAIDX_H
#define CKSM_OAIDX_H

#include <stddef.h>
#include <stdint.h>

struct oaidx {
	uint32_t *v; /* per slot: a value of the caller's, 0 empty */
	size_t cap;  /* a power of two (1 before the first reserve) */
	size_t n;    /* values held */
};

typedef uint64_t (*oaidx_hash_fn)(const void *ctx, uint32_t v);

/* An empty index; allocates nothing (and cannot fail). */
void oaidx_init(struct oaidx *x);
void oaidx_fini(struct oaidx *x);

/*
 * Room for n values in all (growing, and placing every value anew with
 * hash, when n would fill more than 3/4). 0 or -ENOMEM (nothing changed).
 */
int oaidx_reserve(struct oaidx *x, size_t n, oaidx_hash_fn hash, const void *ctx);

/* Where the probe for hash starts. */
static inline size_t oaidx_home(const struct oaidx *x, uint64_t hash)
{
	return (size_t)((hash * 0x9e3779b97f4a7c15ULL) >> 32) & (x->cap - 1);
}

static inline size_t oaidx_next(const struct oaidx *x, size_t i)
{
	return (i + 1) & (x->cap - 1);
}

/* Add v (nonzero, not in yet) under hash; room must be reserved. */
void oaidx_put(struct oaidx *x, uint64_t hash, uint32_t v);

/* The slot holding exactly v, which is in under hash. */
size_t oaidx_slot(const struct oaidx *x, uint64_t hash, uint32_t v);

/* Empty slot i, shifting back the values after it that may move. */
void oaidx_del(struct oaidx *x, size_t i, oaidx_hash_fn hash, const void *ctx);

/* Bytes of the table, for memory accounting. */
static inline size_t oaidx_bytes(const struct oaidx *x)
{
	return x->cap > 1 ? x->cap * sizeof(*x->v) : 0;
}

#endif
