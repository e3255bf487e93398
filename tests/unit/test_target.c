/* Target collection: sources, precedence, the libcksm hook; report queues. */
#include <stdlib.h>
#include <unistd.h>

#include "agent/report.h"
#include "agent/target.h"
#include "unit.h"

static const struct target *find(const struct targets *t, pid_t pid)
{
	for (size_t i = 0; i < t->n; i++)
		if (t->v[i].pid == pid)
			return &t->v[i];
	return NULL;
}

static void precedence(void **state)
{
	static struct config c;
	struct targets t;
	const struct target *x;

	(void)state;
	config_defaults(&c);
	c.scan_mergeable = 0;
	strcpy(c.domains[0].pids, "200,100");
	c.ndomains = 2;
	strcpy(c.domains[1].name, "tenant");
	c.domains[1].id = 9;
	strcpy(c.domains[1].pids, "100,150");
	strcpy(c.cgroup_root, "/nonexistent");
	assert_int_equal(targets_init(&t, &c), 0);
	assert_int_equal(targets_register(&t, 300, 1, TARGET_WHOLE), 0);
	assert_int_equal(targets_register(&t, 150, 0, TARGET_WHOLE), 0);
	assert_int_equal(targets_collect(&t), 0);
	assert_int_equal(t.n, 4);
	for (size_t i = 1; i < t.n; i++)
		assert_true(t.v[i - 1].pid < t.v[i].pid);
	x = find(&t, 100);
	assert_int_equal(x->domain, 0); /* [agent] pids come first */
	assert_int_equal(x->scope, TARGET_WHOLE);
	assert_int_equal(find(&t, 150)->domain, 1); /* admin pids beat registrations */
	assert_int_equal(find(&t, 300)->domain, 1);
	/* ... but a registered process is served whichever source won. */
	assert_int_equal(find(&t, 150)->attached, 1);
	assert_int_equal(find(&t, 300)->attached, 1);
	assert_int_equal(find(&t, 100)->attached, 0);
	targets_unregister(&t, 300);
	assert_int_equal(targets_collect(&t), 0);
	assert_null(find(&t, 300));
	targets_fini(&t);
}

static void mergeable_everyone_else(void **state)
{
	static struct config c;
	struct targets t;
	char self[16];

	(void)state;
	config_defaults(&c);
	snprintf(self, sizeof(self), "%d", (int)getppid());
	strcpy(c.domains[0].pids, self);
	assert_int_equal(targets_init(&t, &c), 0);
	assert_int_equal(targets_collect(&t), 0);
	assert_null(find(&t, getpid())); /* never the agent itself */
	assert_int_equal(find(&t, getppid())->scope, TARGET_WHOLE);
	assert_int_equal(find(&t, 1)->scope, TARGET_MERGEABLE);
	targets_fini(&t);
}

static void report_queue(void **state)
{
	struct report_queue q;
	struct report_entry e = { 1, 2, 0 }, out[8];

	(void)state;
	assert_int_equal(rq_init(&q, 4), 0);
	for (int i = 0; i < 4; i++) {
		e.lo = (uint64_t)i;
		e.domain = i < 2 ? 0 : 5;
		assert_true(rq_push(&q, &e));
	}
	assert_false(rq_push(&q, &e)); /* bounded */
	/* One domain per batch, oldest first. */
	assert_int_equal(rq_pop(&q, out, 8), 2);
	assert_int_equal(out[0].lo, 0);
	assert_int_equal(out[1].lo, 1);
	assert_true(rq_push(&q, &e)); /* wraps */
	assert_int_equal(rq_pop(&q, out, 1), 1);
	assert_int_equal(out[0].domain, 5);
	assert_int_equal(rq_pop(&q, out, 8), 2);
	assert_int_equal(rq_pop(&q, out, 8), 0);
	rq_fini(&q);
}

static const struct CMUnitTest tests[] = {
	cmocka_unit_test(precedence),
	cmocka_unit_test(mergeable_everyone_else),
	cmocka_unit_test(report_queue),
};

UNIT_MAIN(tests)
