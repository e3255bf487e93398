/*
 * btab - see btab.h.
 */
#include "btab.h"

#include <errno.h>
#include <stdlib.h>

#include "util.h"

static uint64_t pos_hash(const void *ctx, uint32_t v)
{
	const struct btab *t = ctx;

	return t->e[v - 1].page;
}

/* The index slot naming page, or the empty one that ends its probe. */
static size_t slot_of(const struct btab *t, uint64_t page)
{
	size_t i;
	uint32_t v;

	for (i = oaidx_home(&t->ix, page); (v = t->ix.v[i]); i = oaidx_next(&t->ix, i))
		if (t->e[v - 1].page == page)
			break;
	return i;
}

void btab_init(struct btab *t)
{
	t->e = NULL;
	t->n = t->cap = 0;
	oaidx_init(&t->ix);
}

void btab_fini(struct btab *t)
{
	oaidx_fini(&t->ix);
	free(t->e);
	btab_init(t);
}

struct bentry *btab_find(const struct btab *t, uint64_t addr)
{
	uint32_t v = t->ix.v[slot_of(t, addr >> 12)];

	return v ? &t->e[v - 1] : NULL;
}

struct bentry *btab_find_same(const struct btab *t, const struct bentry *e)
{
	struct bentry *x = btab_find(t, e->page << 12);

	if (!x || x->kind != e->kind || x->ref.slot != e->ref.slot || x->ref.gen != e->ref.gen ||
	    !cid_eq(x->id, e->id))
		return NULL;
	return x;
}

int btab_put(struct btab *t, const struct bentry *e)
{
	size_t i = slot_of(t, e->page);

	if (t->ix.v[i]) {
		t->e[t->ix.v[i] - 1] = *e;
		return 0;
	}
	if (array_reserve((void **)&t->e, &t->cap, t->n + 1, sizeof(*t->e)) ||
	    oaidx_reserve(&t->ix, t->n + 1, pos_hash, t))
		return -ENOMEM;
	t->e[t->n] = *e;
	oaidx_put(&t->ix, e->page, (uint32_t)++t->n);
	return 0;
}

void btab_del(struct btab *t, struct bentry *e)
{
	size_t p = (size_t)(e - t->e), last = t->n - 1;

	oaidx_del(&t->ix, slot_of(t, e->page), pos_hash, t);
	if (p != last) {
		t->ix.v[oaidx_slot(&t->ix, t->e[last].page, (uint32_t)last + 1)] = (uint32_t)p + 1;
		t->e[p] = t->e[last];
	}
	t->n--;
}

int btab_check(const struct btab *t, const char **why)
{
	*why = NULL;
	if (t->ix.n != t->n)
		*why = "the index holds another number of entries than the array";
	for (size_t p = 0; !*why && p < t->n; p++) {
		const struct bentry *e = &t->e[p];

		if (!e->page)
			*why = "an entry of page 0";
		else if (t->ix.v[slot_of(t, e->page)] != p + 1)
			*why = "an entry is not found through the index, or its page is twice";
		else if (e->kind < BACKED_ZERO || e->kind > BACKED_REMOTE)
			*why = "an entry backed by nothing known";
		else if (e->kind == BACKED_REMOTE && (e->nrem < 1 || e->nrem > BTAB_REPLICAS))
			*why = "a remote entry without replicas, or with too many";
	}
	return *why ? -EUCLEAN : 0;
}
