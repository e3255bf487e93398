/*
 * test_wset - the working set by region: a sample first, hot regions
 * backed off and sampled again, open regions that turn hot, the fault
 * budget, and a table far smaller than the regions it sees.
 */
#include "unit.h"

#include <errno.h>

#include "agent/wset.h"

#define PG	  4096ull
#define SAMPLE_MS 1000u
#define PID	  100

static struct wset *mk(unsigned regions, unsigned pct)
{
	struct wset_cfg c = { .regions = regions,
			      .sample_pages = 8,
			      .sample_ms = SAMPLE_MS,
			      .fault_budget_pct = pct };
	struct wset *w = wset_create(&c);

	assert_non_null(w);
	return w;
}

/* Offer every page of the region at base once; how many may go. */
static unsigned offer_region(struct wset *w, pid_t pid, uint64_t base, uint64_t now)
{
	unsigned go = 0;

	for (uint64_t a = base; a < base + WSET_REGION; a += PG)
		if (wset_may_evict(w, pid, a, now) == WSET_EVICT) {
			wset_evicted(w, pid, a, now); /* at once */
			go++;
		}
	return go;
}

/* A new region gives one sample page per stripe, then waits; a quiet
 * sample opens it, and then every page may go. */
static void sample_then_open(void **state)
{
	struct wset *w = mk(1024, 0);
	uint64_t base = 64 * WSET_REGION;

	(void)state;
	assert_int_equal(offer_region(w, PID, base, 0), 8);
	assert_int_equal(offer_region(w, PID, base, SAMPLE_MS - 1), 0);
	assert_int_equal(wset_may_evict(w, PID, base, SAMPLE_MS - 1), WSET_WAIT);
	/* One sample page back of eight: not hot. */
	wset_refault(w, PID, base, 1000, 10, 0);
	assert_int_equal(offer_region(w, PID, base, SAMPLE_MS), 512);
	assert_int_equal(wset_check(w), 0);
	wset_destroy(w);
}

/*
 * Dups are asked for a region's sample only, one page per stripe, until
 * its verdict; then for every page of an open region. Asks that led to
 * no offer are let go after two sample_ms.
 */
static void dups_for_the_sample(void **state)
{
	struct wset *w = mk(1024, 0);
	uint64_t base = 40 * WSET_REGION, stripe = WSET_REGION / 8, other = 80 * WSET_REGION;

	(void)state;
	for (unsigned s = 0; s < 8; s++) {
		assert_true(wset_dup_wanted(w, PID, base + s * stripe + 4096, 0, false));
		assert_true(wset_dup_wanted(w, PID, base + s * stripe + 4096, 0, true));
		assert_false(wset_dup_wanted(w, PID, base + s * stripe + 8192, 0, true));
	}
	/* The sample goes and stays out: the region opens, every page asks. */
	assert_int_equal(offer_region(w, PID, base, 1), 8);
	assert_int_equal(offer_region(w, PID, base, 1 + SAMPLE_MS), 512);
	for (uint64_t a = base; a < base + WSET_REGION; a += 4096)
		assert_true(wset_dup_wanted(w, PID, a, 2 + SAMPLE_MS, true));
	/* Asked, none offered (unique contents): others ask after 2 x. */
	assert_true(wset_dup_wanted(w, PID, other, 0, true));
	assert_false(wset_dup_wanted(w, PID, other + 4096, SAMPLE_MS, true));
	assert_true(wset_dup_wanted(w, PID, other + 4096, 2 * SAMPLE_MS + 1, true));
	assert_int_equal(wset_check(w), 0);
	wset_destroy(w);
}

/* A sample that comes back is hot: nothing goes for the back-off, which
 * doubles with each hot verdict in a row. */
static void hot_backs_off(void **state)
{
	struct wset *w = mk(1024, 0);
	uint64_t base = 3 * WSET_REGION, t = 0;
	struct wset_stats st;

	(void)state;
	for (unsigned round = 0; round < 3; round++) {
		uint64_t back = (uint64_t)WSET_BACKOFF_MS << round;

		assert_int_equal(offer_region(w, PID, base, t), 8);
		for (uint64_t a = base; a < base + WSET_REGION; a += WSET_REGION / 8)
			wset_refault(w, PID, a, 1000, t + 1, 0);
		assert_int_equal(wset_may_evict(w, PID, base, t + SAMPLE_MS), WSET_HOT_REGION);
		/* Hot while held back: no dup is asked for its pages. */
		assert_false(wset_dup_wanted(w, PID, base + 4096, t + SAMPLE_MS + back - 1, true));
		assert_int_equal(offer_region(w, PID, base, t + SAMPLE_MS + back - 1), 0);
		t += SAMPLE_MS + back;
	}
	wset_stats(w, t, &st);
	assert_int_equal(st.hot_verdicts, 3);
	{
		struct wset_hot h[8];

		assert_int_equal(wset_take_hot(w, h, 8), 3);
		assert_int_equal(h[0].pid, PID);
		assert_int_equal(h[0].addr, base);
		assert_int_equal(wset_take_hot(w, h, 8), 0);
	}
	assert_int_equal(st.refaults, 24);
	/* A quiet sample now opens it, and the back-off shrinks again. */
	assert_int_equal(offer_region(w, PID, base, t), 8);
	assert_int_equal(offer_region(w, PID, base, t + SAMPLE_MS), 512);
	wset_destroy(w);
}

/* An open region turns hot when an eighth of what is out comes back
 * within a window; refaults spread over windows do not add up. */
static void open_turns_hot(void **state)
{
	struct wset *w = mk(1024, 0);
	uint64_t base = 9 * WSET_REGION, t = SAMPLE_MS;

	(void)state;
	offer_region(w, PID, base, 0);
	assert_int_equal(offer_region(w, PID, base, t), 512);
	/* 520 out: 50 back within a window is less than an eighth of the
	 * 470 still out: not hot. */
	for (unsigned i = 0; i < 50; i++)
		wset_refault(w, PID, base + i * PG, 1000, t + 10, 0);
	assert_int_not_equal(wset_may_evict(w, PID, base, t + 20), WSET_HOT_REGION);
	/* Slow refaults, a few per window, for many windows: still open. */
	for (unsigned k = 1; k <= 20; k++)
		for (unsigned i = 0; i < 3; i++)
			wset_refault(w, PID, base + (100 + k * 3 + i) * PG, 1000,
				     t + k * SAMPLE_MS + 30, 0);
	assert_int_not_equal(wset_may_evict(w, PID, base, t + 21 * SAMPLE_MS), WSET_HOT_REGION);
	/* A burst: hot. */
	t += 22 * SAMPLE_MS;
	for (unsigned i = 0; i < 60; i++)
		wset_refault(w, PID, base + (200 + i) * PG, 1000, t, 0);
	assert_int_equal(wset_may_evict(w, PID, base, t + 1), WSET_HOT_REGION);
	assert_int_equal(wset_check(w), 0);
	wset_destroy(w);
}

/* 1 % of the wall time: a process whose refaults spent it gets nothing
 * evicted until it has earned it again; another process is not held. */
static void budget(void **state)
{
	struct wset *w = mk(4096, 1);
	struct wset_proc p;

	(void)state;
	assert_int_equal(wset_may_evict(w, PID, 0, 0), WSET_EVICT);
	/* 20 ms of faults, spread over regions so that none turns hot. */
	for (unsigned i = 0; i < 200; i++)
		wset_refault(w, PID, (uint64_t)(i + 16) * WSET_REGION, 100000 - WSET_FAULT_FLOOR_NS,
			     10, 0);
	assert_int_equal(wset_may_evict(w, PID, 4000 * WSET_REGION, 20), WSET_NO_BUDGET);
	assert_int_equal(wset_may_evict(w, PID + 1, 4000 * WSET_REGION, 20), WSET_EVICT);
	/* 1 % of 2 s is 20 ms: earned back. */
	assert_int_equal(wset_may_evict(w, PID, 4000 * WSET_REGION, 2020), WSET_EVICT);
	assert_true(wset_proc(w, PID, &p));
	assert_int_equal(p.refaults, 200);
	assert_int_equal(p.fault_ns, 200 * 100000ull);
	wset_forget(w, PID);
	assert_false(wset_proc(w, PID, &p));
	wset_destroy(w);
}

/* Far more regions than entries: the oldest give way, no key is held
 * twice, a forgotten region is sampled again (never opened unseen). */
static void bounded(void **state)
{
	struct wset *w = mk(256, 0);
	struct wset_stats st;
	uint64_t t = 0;

	(void)state;
	for (unsigned i = 0; i < 5000; i++, t++) {
		pid_t pid = (pid_t)(1 + i % 7);
		uint64_t a = (uint64_t)(i * 2654435761u % 100000) * WSET_REGION + (i % 512) * PG;

		(void)wset_may_evict(w, pid, a, t);
		if (i % 3 == 0)
			wset_refault(w, pid, a, 500, t, 0);
	}
	assert_int_equal(wset_check(w), 0);
	wset_stats(w, t, &st);
	assert_true(st.forgotten > 0);
	assert_true(st.regions[WSET_NEW] + st.regions[WSET_SAMPLING] + st.regions[WSET_OPEN] +
			    st.regions[WSET_HOT] <=
		    256);
	/* A region seen once long ago and forgotten starts with a sample. */
	assert_int_equal(offer_region(w, 99, 7 * WSET_REGION, t), 8);
	wset_destroy(w);
}

static const struct CMUnitTest tests[] = {
	cmocka_unit_test(sample_then_open), cmocka_unit_test(dups_for_the_sample),
	cmocka_unit_test(hot_backs_off),    cmocka_unit_test(open_turns_hot),
	cmocka_unit_test(budget),	    cmocka_unit_test(bounded),
};

UNIT_MAIN(tests)
