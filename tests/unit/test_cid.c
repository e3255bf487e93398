/* Content ids: keyed per domain, tagged, stable, bucketed. */
#include <errno.h>
#include <stdlib.h>

#include "cid.h"
#include "unit.h"

static uint8_t page[CID_PAGE_SIZE], other[CID_PAGE_SIZE];

static void ids(void **state)
{
	struct auth_key k1, k2;
	static struct cid_domain a, a2, b, c;
	struct cid x, y;

	(void)state;
	assert_int_equal(auth_init(), 0);
	memset(k1.k, 1, sizeof(k1.k));
	memset(k2.k, 2, sizeof(k2.k));
	for (size_t i = 0; i < sizeof(page); i++)
		page[i] = (uint8_t)(i * 7);
	memcpy(other, page, sizeof(page));
	other[4095] ^= 1;
	assert_int_equal(cid_domain_init(&a, &k1, 0, "default"), 0);
	assert_int_equal(cid_domain_init(&a2, &k1, 0, "default"), 0);
	assert_int_equal(cid_domain_init(&b, &k1, 3, "tenant"), 0);
	assert_int_equal(cid_domain_init(&c, &k2, 0, "default"), 0);
	assert_int_equal(cid_domain_init(&c, &k2, 0, "bad name"), -EINVAL);
	assert_int_equal(cid_domain_init(&c, &k2, 0, "default"), 0);

	/* Same key, same domain, same bytes: the same id on every node. */
	x = cid_of(&a, page);
	y = cid_of(&a2, page);
	assert_true(cid_eq(x, y));
	assert_int_equal(cid_domain_of(x), 0);
	/* One bit differs: another id. */
	y = cid_of(&a, other);
	assert_false(cid_eq(x, y));
	/* Another domain: tagged, never equal. */
	y = cid_of(&b, page);
	assert_int_equal(cid_domain_of(y), 3);
	assert_false(x.hi == y.hi);
	/* Another cluster key: another id. */
	y = cid_of(&c, page);
	assert_false(cid_eq(x, y));
	assert_true(cid_bucket(x, 4096) < 4096);
	assert_int_equal(cid_bucket(x, 1), 0);
}

static void checksum(void **state)
{
	(void)state;
	assert_int_equal(cid_checksum(page), cid_checksum(page));
	other[0] ^= 1;
	assert_true(cid_checksum(page) != cid_checksum(other));
}

/* Ids order by hi, then lo, both unsigned; equal ids compare 0. */
static void order(void **state)
{
	struct cid a = { 1, UINT64_MAX }, b = { 2, 0 }, c = { UINT64_MAX, 0 };

	(void)state;
	assert_int_equal(cid_cmp(a, b), -1);
	assert_int_equal(cid_cmp(b, a), 1);
	assert_int_equal(cid_cmp(c, b), 1);
	assert_int_equal(cid_cmp(b, (struct cid){ 2, 1 }), -1);
	assert_int_equal(cid_cmp(a, a), 0);
	assert_true(cid_eq(a, (struct cid){ 1, UINT64_MAX }));
	assert_false(cid_eq(a, (struct cid){ 1, 0 }));
}

static const struct CMUnitTest tests[] = {
	cmocka_unit_test(ids),
	cmocka_unit_test(order),
	cmocka_unit_test(checksum),
};

UNIT_MAIN(tests)
