/*
 * rrefs - see rrefs.h.
 */
#include "rrefs.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

#include "oaidx.h"
#include "util.h"

struct rref {
	struct rdup d;
	struct cid id;
	int32_t count;
	int32_t told; /* the count last given to be sent, 0 if it was not */
	bool dirty;   /* changed since the shards were told */
};

struct rrefs {
	pthread_mutex_t lock;
	struct rref *v; /* dense */
	size_t n, cap;
	struct oaidx ix; /* position + 1 by (node, slot, gen) */
};

static uint64_t key_hash(const struct rdup *d)
{
	return (uint64_t)d->node << 32 ^ d->slot ^ (uint64_t)d->gen << 20;
}

static uint64_t pos_hash(const void *ctx, uint32_t v)
{
	const struct rrefs *r = ctx;

	return key_hash(&r->v[v - 1].d);
}

static bool same(const struct rdup *a, const struct rdup *b)
{
	return a->node == b->node && a->slot == b->slot && a->gen == b->gen;
}

/* The index slot naming d, or the empty one that ends its probe. Lock held. */
static size_t slot_of(const struct rrefs *r, const struct rdup *d)
{
	size_t i;
	uint32_t v;

	for (i = oaidx_home(&r->ix, key_hash(d)); (v = r->ix.v[i]); i = oaidx_next(&r->ix, i))
		if (same(&r->v[v - 1].d, d))
			break;
	return i;
}

/* Forget v[p]; the last count takes its place. Lock held. */
static void drop(struct rrefs *r, size_t p)
{
	size_t last = r->n - 1;

	oaidx_del(&r->ix, slot_of(r, &r->v[p].d), pos_hash, r);
	if (p != last) {
		r->ix.v[oaidx_slot(&r->ix, key_hash(&r->v[last].d), (uint32_t)last + 1)] =
			(uint32_t)p + 1;
		r->v[p] = r->v[last];
	}
	r->n--;
}

/* Room for one more count. Lock held. */
static int reserve(struct rrefs *r)
{
	if (array_reserve((void **)&r->v, &r->cap, r->n + 1, sizeof(*r->v)))
		return -ENOMEM;
	return oaidx_reserve(&r->ix, r->n + 1, pos_hash, r);
}

struct rrefs *rrefs_create(void)
{
	struct rrefs *r = calloc(1, sizeof(*r));

	if (!r)
		return NULL;
	pthread_mutex_init(&r->lock, NULL);
	oaidx_init(&r->ix);
	return r;
}

void rrefs_destroy(struct rrefs *r)
{
	if (!r)
		return;
	oaidx_fini(&r->ix);
	free(r->v);
	pthread_mutex_destroy(&r->lock);
	free(r);
}

int rrefs_change(struct rrefs *r, const struct rdup *d, const struct cid *id, int32_t delta)
{
	size_t i;
	int rc = 0;

	pthread_mutex_lock(&r->lock);
	i = slot_of(r, d);
	if (!r->ix.v[i]) {
		rc = reserve(r);
		if (rc)
			goto out;
		r->v[r->n] = (struct rref){ *d, *id, 0, 0, false };
		oaidx_put(&r->ix, key_hash(d), (uint32_t)++r->n);
		i = slot_of(r, d);
	}
	r->v[r->ix.v[i] - 1].count += delta;
	r->v[r->ix.v[i] - 1].dirty = true;
out:
	pthread_mutex_unlock(&r->lock);
	return rc;
}

void rrefs_unsent(struct rrefs *r, const struct rdup *d)
{
	size_t i;

	pthread_mutex_lock(&r->lock);
	i = slot_of(r, d);
	if (r->ix.v[i]) {
		r->v[r->ix.v[i] - 1].dirty = true;
		r->v[r->ix.v[i] - 1].told = 0;
	}
	pthread_mutex_unlock(&r->lock);
}

bool rrefs_told(struct rrefs *r, const struct rdup *d)
{
	const struct rref *x;
	bool told = false;
	size_t i;

	pthread_mutex_lock(&r->lock);
	i = slot_of(r, d);
	if (r->ix.v[i]) {
		x = &r->v[r->ix.v[i] - 1];
		told = x->count > 0 && x->told > 0;
	}
	pthread_mutex_unlock(&r->lock);
	return told;
}

void rrefs_all_dirty(struct rrefs *r)
{
	pthread_mutex_lock(&r->lock);
	for (size_t i = 0; i < r->n; i++)
		r->v[i].dirty = true;
	pthread_mutex_unlock(&r->lock);
}

size_t rrefs_take(struct rrefs *r, struct ref_count *out, size_t max)
{
	size_t n = 0;

	pthread_mutex_lock(&r->lock);
	for (size_t i = 0; i < r->n && n < max;) {
		struct rref *x = &r->v[i];

		if (x->dirty) {
			out[n++] = (struct ref_count){ { x->d.slot, x->d.gen },
						       x->id,
						       x->d.node,
						       (uint32_t)(x->count > 0 ? x->count : 0) };
			x->dirty = false;
			x->told = x->count > 0 ? x->count : 0;
		}
		if (x->count <= 0 && !x->dirty)
			drop(r, i); /* told the shard: forget it */
		else
			i++;
	}
	pthread_mutex_unlock(&r->lock);
	return n;
}

void rrefs_foreach(struct rrefs *r, rrefs_fn fn, void *arg)
{
	pthread_mutex_lock(&r->lock);
	for (size_t i = 0; i < r->n; i++)
		if (r->v[i].count > 0)
			fn(arg, r->v[i].d.node, (struct pool_ref){ r->v[i].d.slot, r->v[i].d.gen },
			   &r->v[i].id, (uint32_t)r->v[i].count);
	pthread_mutex_unlock(&r->lock);
}

int32_t rrefs_count(struct rrefs *r, const struct rdup *d)
{
	int32_t c = 0;
	size_t i;

	pthread_mutex_lock(&r->lock);
	i = slot_of(r, d);
	if (r->ix.v[i])
		c = r->v[r->ix.v[i] - 1].count;
	pthread_mutex_unlock(&r->lock);
	return c;
}

size_t rrefs_size(struct rrefs *r)
{
	size_t n;

	pthread_mutex_lock(&r->lock);
	n = r->n;
	pthread_mutex_unlock(&r->lock);
	return n;
}

int rrefs_check(struct rrefs *r, const char **why)
{
	int rc = 0;

	pthread_mutex_lock(&r->lock);
	*why = NULL;
	if (r->ix.n != r->n)
		*why = "the index holds another number of counts than the array";
	for (size_t p = 0; !*why && p < r->n; p++) {
		size_t i = slot_of(r, &r->v[p].d);

		if (r->ix.v[i] != p + 1)
			*why = "a count is not found through the index, or its key is twice";
		else if (r->v[p].count <= 0 && !r->v[p].dirty)
			*why = "a count at zero that is not to be told";
	}
	if (*why)
		rc = -EUCLEAN;
	pthread_mutex_unlock(&r->lock);
	return rc;
}
