/* Frame codec: splits, coalescing, truncation, oversize, garbage. */
#include <errno.h>
#include <stdlib.h>

#include "frame.h"
#include "unit.h"

struct sink {
	int frames;
	uint32_t lens[64];
	uint8_t first[64];
	int stop_after;
};

static int collect(void *arg, const uint8_t *p, uint32_t len)
{
	struct sink *s = arg;

	s->lens[s->frames] = len;
	s->first[s->frames] = p[0];
	s->frames++;
	return s->stop_after && s->frames == s->stop_after ? 7 : 0;
}

/* Three frames of lengths 1, 300 and 5 with payload bytes = frame index. */
static size_t build(uint8_t *buf)
{
	static const uint32_t lens[] = { 1, 300, 5 };
	size_t n = 0;

	for (int i = 0; i < 3; i++) {
		frame_put_header(buf + n, lens[i]);
		n += FRAME_HDR;
		memset(buf + n, 'a' + i, lens[i]);
		n += lens[i];
	}
	return n;
}

static void coalesced(void **state)
{
	uint8_t buf[512];
	size_t n = build(buf);
	struct frame_dec d;
	struct sink s = { 0 };

	(void)state;
	frame_dec_init(&d, 4096);
	assert_int_equal(frame_dec_feed(&d, buf, n, collect, &s), 0);
	assert_int_equal(s.frames, 3);
	assert_int_equal(s.lens[1], 300);
	assert_int_equal(s.first[2], 'c');
	assert_int_equal(d.len, 0);
	frame_dec_fini(&d);
}

static void split_everywhere(void **state)
{
	uint8_t buf[512];
	size_t n = build(buf);

	(void)state;
	/* Every split point, and byte-at-a-time. */
	for (size_t cut = 0; cut <= n; cut++) {
		struct frame_dec d;
		struct sink s = { 0 };

		frame_dec_init(&d, 4096);
		assert_int_equal(frame_dec_feed(&d, buf, cut, collect, &s), 0);
		assert_int_equal(frame_dec_feed(&d, buf + cut, n - cut, collect, &s), 0);
		assert_int_equal(s.frames, 3);
		assert_int_equal(s.lens[0], 1);
		assert_int_equal(s.lens[1], 300);
		assert_int_equal(s.lens[2], 5);
		frame_dec_fini(&d);
	}
	{
		struct frame_dec d;
		struct sink s = { 0 };

		frame_dec_init(&d, 4096);
		for (size_t i = 0; i < n; i++)
			assert_int_equal(frame_dec_feed(&d, buf + i, 1, collect, &s), 0);
		assert_int_equal(s.frames, 3);
		assert_int_equal(s.first[1], 'b');
		frame_dec_fini(&d);
	}
}

static void truncated(void **state)
{
	uint8_t buf[512];
	size_t n = build(buf);
	struct frame_dec d;
	struct sink s = { 0 };

	(void)state;
	frame_dec_init(&d, 4096);
	/* Everything but the last byte: two frames out, the third held. */
	assert_int_equal(frame_dec_feed(&d, buf, n - 1, collect, &s), 0);
	assert_int_equal(s.frames, 2);
	assert_int_equal(d.len, FRAME_HDR + 4);
	frame_dec_fini(&d);
}

static void oversized_not_buffered(void **state)
{
	uint8_t hdr[FRAME_HDR];
	struct frame_dec d;
	struct sink s = { 0 };

	(void)state;
	frame_dec_init(&d, 1000);
	frame_put_header(hdr, 1001);
	/* Header split in two: the error comes with its fourth byte. */
	assert_int_equal(frame_dec_feed(&d, hdr, 2, collect, &s), 0);
	assert_int_equal(frame_dec_feed(&d, hdr + 2, 2, collect, &s), -EMSGSIZE);
	assert_int_equal(d.bad_len, 1001);
	assert_true(d.cap < 1000);
	assert_int_equal(s.frames, 0);
	frame_dec_fini(&d);

	frame_dec_init(&d, 1000);
	frame_put_header(hdr, 1000);
	assert_int_equal(frame_dec_feed(&d, hdr, 4, collect, &s), 0);
	frame_dec_fini(&d);
}

static void zero_length(void **state)
{
	static const uint8_t z[4] = { 0 };
	struct frame_dec d;
	struct sink s = { 0 };

	(void)state;
	frame_dec_init(&d, 1000);
	assert_int_equal(frame_dec_feed(&d, z, 4, collect, &s), -EBADMSG);
	frame_dec_fini(&d);
}

static void garbage(void **state)
{
	static const char http[] = "GET /metrics HTTP/1.1\r\n";
	struct frame_dec d;
	struct sink s = { 0 };

	(void)state;
	frame_dec_init(&d, FRAME_MAX_PREAUTH);
	assert_int_equal(frame_dec_feed(&d, http, sizeof(http) - 1, collect, &s), -EMSGSIZE);
	assert_int_equal(s.frames, 0);
	frame_dec_fini(&d);
}

static void limit_clamped(void **state)
{
	struct frame_dec d;

	(void)state;
	frame_dec_init(&d, 10);
	frame_dec_set_limit(&d, UINT32_MAX);
	assert_int_equal(d.limit, FRAME_MAX_HARD);
	frame_dec_fini(&d);
}

static void callback_stops(void **state)
{
	uint8_t buf[512];
	size_t n = build(buf);
	struct frame_dec d;
	struct sink s = { .stop_after = 1 };

	(void)state;
	frame_dec_init(&d, 4096);
	assert_int_equal(frame_dec_feed(&d, buf, n, collect, &s), 7);
	assert_int_equal(s.frames, 1);
	frame_dec_fini(&d);
}

static const struct CMUnitTest tests[] = {
	cmocka_unit_test(coalesced),	 cmocka_unit_test(split_everywhere),
	cmocka_unit_test(truncated),	 cmocka_unit_test(oversized_not_buffered),
	cmocka_unit_test(zero_length),	 cmocka_unit_test(garbage),
	cmocka_unit_test(limit_clamped), cmocka_unit_test(callback_stops),
};

UNIT_MAIN(tests)
