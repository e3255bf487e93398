/* The page pool: generations, references, no reuse of a referenced slot. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "agent/pool.h"
#include "unit.h"

static void fill(uint8_t *page, uint64_t seed)
{
	for (size_t i = 0; i < POOL_SLOT; i += 8)
		memcpy(page + i, &(uint64_t){ seed * 0x9e3779b97f4a7c15ULL + i }, 8);
}

static struct pool *make(size_t n)
{
	char err[128];
	bool huge;
	struct pool *p = pool_create(n, &huge, err, sizeof(err));

	assert_non_null(p);
	return p;
}

/*
 * Several slots of one content (more pages than max_page_sharing): each
 * is found while it has room, the next once it is full, and a released
 * or freed one is never named again while the others are.
 */
static void chain(void **state)
{
	struct pool *p = make(4);
	uint8_t a[POOL_SLOT];
	struct cid ia = { 5, 6 };
	struct pool_ref r1, r2, r3, got;

	(void)state;
	fill(a, 5);
	assert_int_equal(pool_add(p, &ia, a, &r1), 0);
	assert_int_equal(pool_find(p, &ia, 2, &got), 0);
	assert_true(got.slot == r1.slot && got.gen == r1.gen);
	assert_int_equal(pool_ref(p, r1, 2), 0);
	assert_int_equal(pool_find(p, &ia, 2, &got), -ENOSPC); /* full: ask for another */
	assert_int_equal(pool_find(p, &ia, 0, &got), 0);       /* any */
	assert_int_equal(pool_add(p, &ia, a, &r2), 0);
	assert_int_equal(pool_find(p, &ia, 2, &got), 0);
	assert_true(got.slot == r2.slot && got.gen == r2.gen);
	assert_int_equal(pool_ref(p, r2, 2), 0);
	assert_int_equal(pool_add(p, &ia, a, &r3), 0);
	assert_int_equal(pool_find(p, &ia, 2, &got), 0);
	assert_true(got.slot == r3.slot);
	/* The second released: the first, freed of a page, takes the next. */
	assert_int_equal(pool_release(p, r2), 0);
	assert_int_equal(pool_ref(p, r3, 2), 0);
	assert_int_equal(pool_find(p, &ia, 2, &got), -ENOSPC);
	assert_int_equal(pool_ref(p, r1, -1), 0);
	assert_int_equal(pool_find(p, &ia, 2, &got), 0);
	assert_true(got.slot == r1.slot && got.gen == r1.gen);
	/* The first freed: only the third is left to name. */
	assert_int_equal(pool_release(p, r1), 0);
	assert_int_equal(pool_ref(p, r1, -1), 0);
	assert_null(pool_page(p, r1, NULL));
	assert_int_equal(pool_ref(p, r3, -2), 0);
	assert_int_equal(pool_find(p, &ia, 2, &got), 0);
	assert_true(got.slot == r3.slot && got.gen == r3.gen);
	assert_int_equal(pool_release(p, r3), 0);
	assert_int_equal(pool_find(p, &ia, 0, &got), -ENOENT);
	pool_destroy(p);
}

static void lifecycle(void **state)
{
	struct pool *p = make(2);
	uint8_t a[POOL_SLOT], b[POOL_SLOT];
	struct cid ia = { 1, 2 }, ib = { 3, 4 }, got;
	struct pool_ref ra, rb, rc2;
	const uint8_t *bytes;

	(void)state;
	fill(a, 1);
	fill(b, 2);
	assert_int_equal(pool_add(p, &ia, a, &ra), 0);
	assert_int_equal(pool_add(p, &ib, b, &rb), 0);
	assert_int_not_equal(ra.gen, 0);
	assert_int_equal(pool_free_slots(p), 0);
	assert_int_equal(pool_add(p, &ia, a, &rc2), -ENOSPC);
	bytes = pool_page(p, ra, &got);
	assert_non_null(bytes);
	assert_memory_equal(bytes, a, POOL_SLOT);
	assert_true(got.hi == 1 && got.lo == 2);
	assert_int_equal(pool_find(p, &ib, 0, &rc2), 0);
	assert_true(rc2.slot == rb.slot && rc2.gen == rb.gen);
	assert_int_equal(pool_find(p, &(struct cid){ 9, 9 }, 0, &rc2), -ENOENT);

	/* Three pages reference a; the coordinator releases it: it stays. */
	assert_int_equal(pool_ref(p, ra, 3), 0);
	assert_true(pool_held(p, ra));
	assert_int_equal(pool_release(p, ra), 0);
	assert_false(pool_held(p, ra)); /* used here, no longer counted to the shard */
	assert_int_equal(pool_release(p, ra), -ESTALE);	       /* released already */
	assert_int_equal(pool_find(p, &ia, 0, &rc2), -ENOENT); /* no new pages on it */
	assert_int_equal(pool_free_slots(p), 0);
	assert_int_equal(pool_add(p, &ib, b, &rc2), -ENOSPC);
	assert_int_equal(pool_ref(p, ra, -4), -ERANGE);
	assert_int_equal(pool_ref(p, ra, -2), 0);
	assert_non_null(pool_page(p, ra, NULL));
	assert_memory_equal(pool_page(p, ra, NULL), a, POOL_SLOT);
	/* The last reference goes: freed, and its name is stale from now on. */
	assert_int_equal(pool_ref(p, ra, -1), 0);
	assert_int_equal(pool_free_slots(p), 1);
	assert_null(pool_page(p, ra, NULL));
	assert_int_equal(pool_ref(p, ra, 1), -ESTALE);
	assert_int_equal(pool_find(p, &ia, 0, &rc2), -ENOENT);
	/* Reused with a new generation. */
	assert_int_equal(pool_add(p, &ib, b, &rc2), 0);
	assert_int_equal(rc2.slot, ra.slot);
	assert_int_not_equal(rc2.gen, ra.gen);
	assert_null(pool_page(p, ra, NULL));
	/* Forged names. */
	assert_null(pool_page(p, (struct pool_ref){ 7, 1 }, NULL));
	assert_int_equal(pool_ref(p, (struct pool_ref){ 99, 1 }, 1), -ESTALE);
	assert_int_equal(pool_release(p, (struct pool_ref){ rb.slot, rb.gen + 1 }), -ESTALE);
	/* Released with no reference: freed at once. */
	assert_int_equal(pool_release(p, rb), 0);
	assert_int_equal(pool_free_slots(p), 1);
	assert_true(pool_fd(p) >= 0);
	pool_destroy(p);
}

/*
 * Threads add, reference, release and check their slots at once: a slot
 * a thread references always holds the bytes it put there (never reused
 * under it), and every slot comes back in the end.
 */
#define THREADS 4
#define ROUNDS	20000
#define SLOTS	64

static struct pool *shared_pool;

static void *churn(void *arg)
{
	unsigned seed = (unsigned)(uintptr_t)arg;
	struct {
		struct pool_ref r;
		uint64_t v;
		bool used;
	} mine[8] = { 0 };
	uint8_t page[POOL_SLOT];
	long bad = 0;

	for (int i = 0; i < ROUNDS; i++) {
		unsigned k = (unsigned)rand_r(&seed) % 8;

		if (!mine[k].used) {
			struct cid id = { seed, (uint64_t)i };

			mine[k].v = ((uint64_t)seed << 32) | (uint64_t)i;
			fill(page, mine[k].v);
			if (pool_add(shared_pool, &id, page, &mine[k].r) == 0) {
				pool_ref(shared_pool, mine[k].r, 1);
				pool_release(shared_pool, mine[k].r); /* only the ref keeps it */
				mine[k].used = true;
			}
		} else {
			const uint8_t *b = pool_page(shared_pool, mine[k].r, NULL);

			fill(page, mine[k].v);
			if (!b || memcmp(b, page, POOL_SLOT))
				bad++;
			if (pool_ref(shared_pool, mine[k].r, -1))
				bad++;
			mine[k].used = false;
		}
	}
	for (unsigned k = 0; k < 8; k++)
		if (mine[k].used && pool_ref(shared_pool, mine[k].r, -1))
			bad++;
	return (void *)bad;
}

static void concurrent(void **state)
{
	pthread_t t[THREADS];

	(void)state;
	shared_pool = make(SLOTS);
	for (uintptr_t i = 0; i < THREADS; i++)
		pthread_create(&t[i], NULL, churn, (void *)(i + 1));
	for (int i = 0; i < THREADS; i++) {
		void *bad;

		pthread_join(t[i], &bad);
		assert_int_equal((long)bad, 0);
	}
	assert_int_equal(pool_free_slots(shared_pool), SLOTS);
	pool_destroy(shared_pool);
}

/*
 * A pool kept in a directory outlives its agent: opened again, it has
 * the held slots with their bytes and names, references counted anew
 * (zero until the tables count them), and pool_settle frees what nobody
 * holds or uses; names from before stay stale once freed.
 */
static void kept(void **state)
{
	char dir[] = "/tmp/cksm-pool.XXXXXX", err[128], path[64];
	uint8_t a[POOL_SLOT], b[POOL_SLOT];
	struct cid ia = { 1, 2 }, ib = { 3, 4 }, ic = { 5, 6 }, got;
	struct pool_ref ra, rb, rc;
	struct pool *p;
	size_t kept_slots;

	(void)state;
	assert_non_null(mkdtemp(dir));
	fill(a, 1);
	fill(b, 2);
	p = pool_open(dir, 8, &kept_slots, err, sizeof(err));
	assert_non_null(p);
	assert_int_equal(kept_slots, 0);
	assert_int_equal(pool_add(p, &ia, a, &ra), 0); /* held */
	assert_int_equal(pool_add(p, &ib, b, &rb), 0); /* released, used by a page */
	assert_int_equal(pool_ref(p, rb, 1), 0);
	assert_int_equal(pool_release(p, rb), 0);
	assert_int_equal(pool_add(p, &ic, b, &rc), 0); /* released, used by nobody after */
	assert_int_equal(pool_ref(p, rc, 1), 0);
	assert_int_equal(pool_release(p, rc), 0);
	pool_destroy(p); /* as a killed agent leaves it: nothing is undone */

	/* Another size asked for: the kept pool keeps its own. */
	p = pool_open(dir, 16, &kept_slots, err, sizeof(err));
	assert_non_null(p);
	assert_int_equal(pool_slots(p), 8);
	assert_int_equal(kept_slots, 3);
	assert_int_equal(pool_refs(p, rb), 0);
	assert_int_equal(pool_ref(p, rb, 1), 0); /* the table that uses b counts it */
	assert_int_equal(pool_settle(p), 1);	 /* c: released, and nobody counted it */
	assert_null(pool_page(p, rc, NULL));
	assert_memory_equal(pool_page(p, ra, &got), a, POOL_SLOT);
	assert_true(cid_eq(got, ia));
	assert_memory_equal(pool_page(p, rb, NULL), b, POOL_SLOT);
	assert_int_equal(pool_find(p, &ia, 0, &rc), 0); /* held: found by content */
	assert_true(rc.slot == ra.slot && rc.gen == ra.gen);
	assert_int_equal(pool_find(p, &ib, 0, &rc), -ENOENT); /* released: not */
	assert_int_equal(pool_free_slots(p), 6);
	assert_int_equal(pool_ref(p, rb, -1), 0); /* its last page went: freed */
	assert_null(pool_page(p, rb, NULL));
	pool_destroy(p);
	snprintf(path, sizeof(path), "%s/pool", dir);
	unlink(path);
	snprintf(path, sizeof(path), "%s/slots", dir);
	unlink(path);
	rmdir(dir);
}

/*
 * Generations start at random: no slot of a new pool is named with
 * generation 1, two pools name their slots apart, and a pool opened
 * again gives its free slots new generations while its live ones keep
 * theirs (the chance of a false failure is 2^-32 per compare).
 */
static void random_generations(void **state)
{
	char dir[] = "/tmp/cksm-pool.XXXXXX", err[128], path[64];
	uint8_t a[POOL_SLOT];
	struct pool_ref ra[8], rb[8], live, again;
	struct pool *p = make(8), *q = make(8);
	size_t kept_slots;
	bool differ = false;

	(void)state;
	fill(a, 1);
	for (int i = 0; i < 8; i++) {
		assert_int_equal(pool_add(p, &(struct cid){ 1, (uint64_t)i }, a, &ra[i]), 0);
		assert_int_equal(pool_add(q, &(struct cid){ 1, (uint64_t)i }, a, &rb[i]), 0);
		assert_int_not_equal(ra[i].gen, 1);
		assert_int_not_equal(rb[i].gen, 1);
		differ = differ || ra[i].gen != rb[i].gen;
	}
	assert_true(differ);
	pool_destroy(p);
	pool_destroy(q);

	assert_non_null(mkdtemp(dir));
	p = pool_open(dir, 8, &kept_slots, err, sizeof(err));
	assert_non_null(p);
	assert_int_equal(pool_add(p, &(struct cid){ 1, 1 }, a, &live), 0);
	assert_int_equal(pool_add(p, &(struct cid){ 1, 2 }, a, &ra[0]), 0);
	assert_int_equal(pool_release(p, ra[0]), 0); /* freed: its next name is gen + 1 */
	pool_destroy(p);
	p = pool_open(dir, 8, &kept_slots, err, sizeof(err));
	assert_non_null(p);
	assert_int_equal(kept_slots, 1);
	assert_non_null(pool_page(p, live, NULL)); /* the live slot keeps its name */
	assert_int_equal(pool_add(p, &(struct cid){ 1, 3 }, a, &again), 0);
	assert_int_equal(again.slot, ra[0].slot);
	assert_int_not_equal(again.gen, ra[0].gen + 1); /* not where the last agent left it */
	pool_destroy(p);
	snprintf(path, sizeof(path), "%s/pool", dir);
	unlink(path);
	snprintf(path, sizeof(path), "%s/slots", dir);
	unlink(path);
	rmdir(dir);
}

/* A freed slot's memory goes back: the pool takes what its live slots hold. */
static void resident(void **state)
{
	char err[128];
	bool huge;
	struct pool *p = pool_create(16, &huge, err, sizeof(err));
	struct pool_ref r[4];
	uint8_t page[POOL_SLOT];
	size_t full;

	(void)state;
	assert_non_null(p);
	if (huge) { /* whole huge pages: nothing to give back per slot */
		pool_destroy(p);
		return;
	}
	for (unsigned i = 0; i < 4; i++) {
		fill(page, 100 + i);
		assert_int_equal(pool_add(p, &(struct cid){ 7, i }, page, &r[i]), 0);
	}
	full = pool_resident_bytes(p);
	assert_true(full >= 4 * POOL_SLOT);
	assert_int_equal(pool_release(p, r[0]), 0);
	assert_int_equal(pool_release(p, r[1]), 0);
	assert_int_equal(pool_resident_bytes(p), full - 2 * POOL_SLOT);
	/* A slot taken again is whole again. */
	fill(page, 200);
	assert_int_equal(pool_add(p, &(struct cid){ 8, 0 }, page, &r[0]), 0);
	assert_memory_equal(pool_page(p, r[0], NULL), page, POOL_SLOT);
	assert_int_equal(pool_resident_bytes(p), full - POOL_SLOT);
	pool_destroy(p);
}

static const struct CMUnitTest tests[] = {
	cmocka_unit_test(lifecycle),  cmocka_unit_test(chain), cmocka_unit_test(resident),
	cmocka_unit_test(concurrent), cmocka_unit_test(kept),  cmocka_unit_test(random_generations),
};
UNIT_MAIN(tests)
