/* The copier: a burst of dup orders past its ring is made, all of it. */
#include <stdlib.h>
#include <unistd.h>

#include "agent/copier.h"
#include "unit.h"

#define BURST 3000 /* the ring holds 1024 */

static uint8_t pages[BURST][POOL_SLOT] __attribute__((aligned(POOL_SLOT)));

struct seen {
	size_t done, ok;
	uv_loop_t *loop;
};

static void done(void *arg, const struct copy_job *j)
{
	struct seen *s = arg;

	s->done++;
	s->ok += j->ok;
	if (s->done == BURST)
		uv_stop(s->loop);
}

static void burst(void **state)
{
	static struct cid_domain dom;
	struct config cfg;
	struct auth_key key;
	uv_loop_t loop;
	struct seen s = { 0, 0, &loop };
	char err[128];
	bool huge;
	struct pool *pool = pool_create(BURST, &huge, err, sizeof(err));
	struct copier *c;
	size_t pushed = 0;

	(void)state;
	assert_non_null(pool);
	assert_int_equal(auth_init(), 0);
	memset(key.k, 7, sizeof(key.k));
	assert_int_equal(cid_domain_init(&dom, &key, 0, "default"), 0);
	config_defaults(&cfg);
	assert_int_equal(uv_loop_init(&loop), 0);
	c = copier_create(&cfg, &loop, pool, &dom, &transport_tcp, &key, done, &s);
	assert_non_null(c);
	/* Every order at once, as a first pass's reports bring them. */
	for (size_t i = 0; i < BURST; i++) {
		struct copy_job j = { 0 };

		for (size_t k = 0; k < POOL_SLOT; k += 8)
			memcpy(pages[i] + k, &(uint64_t){ i * 0x9e3779b97f4a7c15ULL + k }, 8);
		j.id = cid_of(&dom, pages[i]);
		j.local[0] = (struct copy_local){ getpid(), (uint64_t)(uintptr_t)pages[i] };
		j.nlocal = 1;
		pushed += copier_push(c, &j);
	}
	assert_int_equal(pushed, BURST);
	uv_run(&loop, UV_RUN_DEFAULT);
	assert_int_equal(s.done, BURST);
	assert_int_equal(s.ok, BURST);
	assert_int_equal(pool_free_slots(pool), 0);
	copier_destroy(c);
	uv_run(&loop, UV_RUN_DEFAULT);
	uv_loop_close(&loop);
	pool_destroy(pool);
}

static const struct CMUnitTest tests[] = {
	cmocka_unit_test(burst),
};

UNIT_MAIN(tests)
