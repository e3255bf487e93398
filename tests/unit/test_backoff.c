/* Reconnect backoff: growth, ceiling, jitter bounds, reset. */
#include "backoff.h"
#include "unit.h"

static void grows_and_caps(void **state)
{
	struct backoff b;

	(void)state;
	backoff_init(&b, 100, 1000);
	/* rnd = max gives the top of [d/2, d]. */
	assert_int_equal(backoff_next(&b, UINT32_MAX), 100);
	assert_int_equal(backoff_next(&b, UINT32_MAX), 200);
	assert_int_equal(backoff_next(&b, UINT32_MAX), 400);
	assert_int_equal(backoff_next(&b, UINT32_MAX), 800);
	assert_int_equal(backoff_next(&b, UINT32_MAX), 1000);
	for (int i = 0; i < 100; i++)
		assert_int_equal(backoff_next(&b, UINT32_MAX), 1000);
	backoff_reset(&b);
	assert_int_equal(backoff_next(&b, UINT32_MAX), 100);
}

static void jitter_in_bounds(void **state)
{
	struct backoff b;
	uint32_t x = 12345;

	(void)state;
	backoff_init(&b, 100, 30000);
	assert_int_equal(backoff_next(&b, 0), 50);
	for (int i = 0; i < 1000; i++) {
		unsigned n = b.attempt;
		uint64_t d = 100, v;

		for (unsigned k = 0; k < n && d < 30000; k++)
			d *= 2;
		if (d > 30000)
			d = 30000;
		x = x * 1103515245u + 12345u;
		v = backoff_next(&b, x);
		assert_true(v >= d / 2 && v <= d);
	}
}

static const struct CMUnitTest tests[] = {
	cmocka_unit_test(grows_and_caps),
	cmocka_unit_test(jitter_in_bounds),
};

UNIT_MAIN(tests)
