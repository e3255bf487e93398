/*
 * frame - see frame.h.
 *
 * Whole frames that sit in the caller's buffer are handed out from it
 * directly; only a frame split across reads is copied into buf, and buf
 * never grows beyond header + limit.
 */
#include "frame.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void frame_dec_init(struct frame_dec *d, uint32_t limit)
{
	memset(d, 0, sizeof(*d));
	frame_dec_set_limit(d, limit);
}

void frame_dec_fini(struct frame_dec *d)
{
	free(d->buf);
	d->buf = NULL;
	d->len = d->cap = 0;
}

void frame_dec_set_limit(struct frame_dec *d, uint32_t limit)
{
	d->limit = limit > FRAME_MAX_HARD ? FRAME_MAX_HARD : limit;
}

void frame_put_header(uint8_t hdr[FRAME_HDR], uint32_t len)
{
	hdr[0] = (uint8_t)(len >> 24);
	hdr[1] = (uint8_t)(len >> 16);
	hdr[2] = (uint8_t)(len >> 8);
	hdr[3] = (uint8_t)len;
}

static uint32_t get_header(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static int check_len(struct frame_dec *d, uint32_t len)
{
	if (len == 0)
		return -EBADMSG;
	if (len > d->limit) {
		d->bad_len = len;
		return -EMSGSIZE;
	}
	return 0;
}

static int stash(struct frame_dec *d, const uint8_t *p, size_t n)
{
	if (d->len + n > d->cap) {
		size_t cap = d->cap ? d->cap : 256;
		uint8_t *nb;

		while (cap < d->len + n)
			cap *= 2;
		/* Never more than one frame's worth. */
		if (cap > FRAME_HDR + (size_t)d->limit)
			cap = FRAME_HDR + (size_t)d->limit;
		nb = realloc(d->buf, cap);
		if (!nb)
			return -ENOMEM;
		d->buf = nb;
		d->cap = cap;
	}
	memcpy(d->buf + d->len, p, n);
	d->len += n;
	return 0;
}

/*
 * Complete the frame held in buf from the front of p. Returns the number
 * of bytes taken from p, or a negative errno; *done tells whether a frame
 * was completed and delivered (its callback result in *rc).
 */
static long finish_stashed(struct frame_dec *d, const uint8_t *p, size_t n, frame_cb cb, void *arg,
			   int *rc)
{
	size_t take, need;
	uint32_t len;
	int err;

	*rc = 0;
	if (d->len < FRAME_HDR) {
		take = FRAME_HDR - d->len;
		if (take > n)
			take = n;
		err = stash(d, p, take);
		if (err)
			return err;
		if (d->len < FRAME_HDR)
			return (long)take;
		err = check_len(d, get_header(d->buf));
		if (err)
			return err;
		p += take;
		n -= take;
	} else {
		take = 0;
	}
	len = get_header(d->buf);
	need = FRAME_HDR + len - d->len;
	if (need > n)
		need = n;
	err = stash(d, p, need);
	if (err)
		return err;
	take += need;
	if (d->len == FRAME_HDR + (size_t)len) {
		d->len = 0;
		*rc = cb(arg, d->buf + FRAME_HDR, len);
	}
	return (long)take;
}

int frame_dec_feed(struct frame_dec *d, const void *data, size_t n, frame_cb cb, void *arg)
{
	const uint8_t *p = data;
	int rc, err;

	if (d->len) {
		long took = finish_stashed(d, p, n, cb, arg, &rc);

		if (took < 0)
			return (int)took;
		if (rc)
			return rc;
		p += took;
		n -= (size_t)took;
	}
	while (n >= FRAME_HDR) {
		uint32_t len = get_header(p);

		err = check_len(d, len);
		if (err)
			return err;
		if (n - FRAME_HDR < len)
			break;
		rc = cb(arg, p + FRAME_HDR, len);
		if (rc)
			return rc;
		p += FRAME_HDR + len;
		n -= FRAME_HDR + len;
	}
	if (n) {
		/* The rest is a partial frame; its header, if complete, is valid. */
		err = stash(d, p, n);
		if (err)
			return err;
	}
	return 0;
}
