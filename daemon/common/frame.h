/*
 * frame - length-prefixed frames on a byte stream.
 *
 * A frame is a 4-byte big-endian payload length followed by the payload.
 * The decoder takes bytes as they arrive (any split, any coalescing) and
 * hands out whole payloads. A length of zero or above the decoder's limit
 * is an error as soon as the 4 header bytes are in: an oversized frame is
 * never buffered.
 */
#ifndef CKSM_FRAME_H
#define CKSM_FRAME_H

#include <stddef.h>
#include <stdint.h>

#define FRAME_HDR	  4u
#define FRAME_MAX_HARD	  (16u << 20) /* no limit may be set above this */
#define FRAME_MAX_DEFAULT (1u << 20)
#define FRAME_MAX_PREAUTH 4096u /* before the peer has authenticated */

struct frame_dec {
	uint8_t *buf;	  /* bytes of an incomplete frame */
	size_t len;	  /* bytes held in buf */
	size_t cap;	  /* allocated size of buf */
	uint32_t limit;	  /* largest payload accepted */
	uint32_t bad_len; /* the length that caused -EMSGSIZE */
};

/*
 * Called once per complete payload. Return 0 to go on, anything else to
 * stop decoding (the value is returned by frame_dec_feed).
 */
typedef int (*frame_cb)(void *arg, const uint8_t *payload, uint32_t len);

void frame_dec_init(struct frame_dec *d, uint32_t limit);
void frame_dec_fini(struct frame_dec *d);

/* Change the limit (for example after authentication); clamps to hard max. */
void frame_dec_set_limit(struct frame_dec *d, uint32_t limit);

/*
 * Feed n bytes. Returns 0 when all were consumed, the callback's non-zero
 * value if it stopped, -EMSGSIZE for a frame above the limit, -EBADMSG for
 * a zero-length frame, -ENOMEM. After an error the decoder must not be fed
 * again.
 */
int frame_dec_feed(struct frame_dec *d, const void *data, size_t n, frame_cb cb, void *arg);

/* Write the header for a payload of len bytes into hdr[0..3]. */
void frame_put_header(uint8_t hdr[FRAME_HDR], uint32_t len);

#endif
