/* HyperLogLog: estimates within the error it claims, merge is the union. */
#include <stdlib.h>

#include "hll.h"
#include "util.h"
#include "unit.h"

static void estimates(void **state)
{
	static struct hll h;
	static const unsigned sizes[] = { 0, 1, 100, 1000, 10000, 100000, 1000000 };

	(void)state;
	for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
		double e;

		hll_clear(&h);
		for (unsigned i = 0; i < sizes[k]; i++) {
			hll_add(&h, mix64(i));
			hll_add(&h, mix64(i)); /* repeats do not count */
		}
		e = hll_estimate(&h);
		/* The census states 5% (plus one) as its tolerance. */
		assert_true(e >= sizes[k] * 0.95 - 1 && e <= sizes[k] * 1.05 + 1);
	}
}

/* No hash ranks above HLL_RANK_MAX: registers above it are forged. */
static void registers_bounded(void **state)
{
	static struct hll h;
	uint64_t x = 1;

	(void)state;
	hll_clear(&h);
	hll_add(&h, 0);			    /* the highest rank there is */
	hll_add(&h, 1ull << HLL_BITS >> 1); /* ... and its neighbours */
	for (int i = 0; i < 100000; i++) {
		x = x * 6364136223846793005ull + 1442695040888963407ull;
		hll_add(&h, x);
	}
	assert_true(hll_registers_valid(h.r, HLL_REGISTERS));
	assert_int_equal(h.r[0], HLL_RANK_MAX);
	h.r[7] = HLL_RANK_MAX + 1;
	assert_false(hll_registers_valid(h.r, HLL_REGISTERS));
	assert_true(hll_registers_valid(h.r, 0));
}

static void merge_is_union(void **state)
{
	static struct hll a, b;

	(void)state;
	hll_clear(&a);
	hll_clear(&b);
	for (unsigned i = 0; i < 3000; i++)
		hll_add(&a, mix64(i));
	for (unsigned i = 2000; i < 5000; i++)
		hll_add(&b, mix64(i));
	hll_merge(&a, &b);
	assert_true(hll_estimate(&a) > 4750 && hll_estimate(&a) < 5250);
}

static const struct CMUnitTest tests[] = {
	cmocka_unit_test(estimates),
	cmocka_unit_test(merge_is_union),
	cmocka_unit_test(registers_bounded),
};

UNIT_MAIN(tests)
