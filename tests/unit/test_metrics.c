/* Metrics registry and its text format. */
#include <pthread.h>
#include <stdlib.h>

#include "metrics.h"
#include "unit.h"

static void renders_families(void **state)
{
	struct metrics *r = metrics_create();
	struct metric *a, *b, *g, *again;
	size_t len;
	char *out;

	(void)state;
	a = metrics_counter(r, "cksm_x_total", "Things.", "reason=\"a\"");
	b = metrics_counter(r, "cksm_x_total", "Things.", "reason=\"b\"");
	g = metrics_gauge(r, "cksm_y_bytes", "Size with \\ and\nnewline.", NULL);
	again = metrics_counter(r, "cksm_x_total", "Things.", "reason=\"a\"");
	assert_ptr_equal(a, again);
	metric_add(a, 5);
	metric_inc(b);
	metric_set(g, 1.5);
	metric_gauge_add(g, -0.25);
	out = metrics_render(r, &len);
	assert_non_null(out);
	assert_int_equal(strlen(out), len);
	assert_string_equal(out, "# HELP cksm_x_total Things.\n"
				 "# TYPE cksm_x_total counter\n"
				 "cksm_x_total{reason=\"a\"} 5\n"
				 "cksm_x_total{reason=\"b\"} 1\n"
				 "# HELP cksm_y_bytes Size with \\\\ and\\nnewline.\n"
				 "# TYPE cksm_y_bytes gauge\n"
				 "cksm_y_bytes 1.25\n");
	free(out);
	metrics_destroy(r);
}

static void bad_names_refused(void **state)
{
	struct metrics *r = metrics_create();

	(void)state;
	assert_null(metrics_counter(r, "1abc", "x", NULL));
	assert_null(metrics_counter(r, "a-b", "x", NULL));
	assert_null(metrics_counter(r, "", "x", NULL));
	/* One name, one type. */
	assert_non_null(metrics_counter(r, "cksm_z_total", "x", NULL));
	assert_null(metrics_gauge(r, "cksm_z_total", "x", NULL));
	metrics_destroy(r);
}

static struct metric *shared_c, *shared_g;

static void *adder(void *arg)
{
	(void)arg;
	for (int i = 0; i < 25000; i++) {
		metric_inc(shared_c);
		metric_gauge_add(shared_g, 1);
	}
	return NULL;
}

static void concurrent_adds(void **state)
{
	struct metrics *r = metrics_create();
	pthread_t t[4];

	(void)state;
	shared_c = metrics_counter(r, "cksm_c_total", "x", NULL);
	shared_g = metrics_gauge(r, "cksm_g", "x", NULL);
	for (int i = 0; i < 4; i++)
		pthread_create(&t[i], NULL, adder, NULL);
	for (int i = 0; i < 4; i++)
		pthread_join(t[i], NULL);
	assert_int_equal((uint64_t)metric_value(shared_c), 100000);
	assert_true(metric_value(shared_g) == 100000.0);
	metrics_destroy(r);
}

static void labels_and_float_counters(void **state)
{
	struct metrics *r = metrics_create();
	struct metric *m;
	char buf[64], *out;
	size_t len;

	(void)state;
	assert_string_equal(metrics_label(buf, sizeof(buf), "cgroup", "/a\\x2d\"b\nc"),
			    "cgroup=\"/a\\\\x2d\\\"b\\nc\"");
	{
		const struct metric_def def = { &m, METRIC_COUNTER_F, "cksm_cpu_seconds_total",
						"CPU.", NULL };

		assert_int_equal(metrics_register(r, &def, 1), 0);
	}
	metric_gauge_add(m, 0.25);
	metric_gauge_add(m, 0.5);
	out = metrics_render(r, &len);
	assert_non_null(strstr(
		out, "# TYPE cksm_cpu_seconds_total counter\ncksm_cpu_seconds_total 0.75\n"));
	free(out);
	metrics_destroy(r);
}

static const struct CMUnitTest tests[] = {
	cmocka_unit_test(labels_and_float_counters),
	cmocka_unit_test(renders_families),
	cmocka_unit_test(bad_names_refused),
	cmocka_unit_test(concurrent_adds),
};

UNIT_MAIN(tests)
