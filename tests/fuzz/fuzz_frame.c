/*
 * libFuzzer target: bytes from the network through the frame decoder,
 * split where the input says, and every whole frame through the protobuf
 * decoder, as conn.c does. Nothing may crash, leak or read out of bounds,
 * and the decoder must never hold more than one frame's worth.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "frame.h"
#include "wire.h"

static int on_frame(void *arg, const uint8_t *p, uint32_t len)
{
	Cksm__Msg *m = wire_unpack(p, len);

	(void)arg;
	if (m) {
		/* Re-pack what was decoded: must not crash either. */
		size_t n;
		uint8_t *b = wire_pack(m, &n);

		free(b);
		cksm__msg__free_unpacked(m, NULL);
	}
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct frame_dec d;
	size_t off = 1, step;

	if (size < 1)
		return 0;
	step = data[0] % 17 + 1; /* first byte picks the read size */
	frame_dec_init(&d, 64 * 1024);
	while (off < size) {
		size_t n = size - off < step ? size - off : step;

		if (frame_dec_feed(&d, data + off, n, on_frame, NULL) < 0)
			break;
		if (d.len > FRAME_HDR + d.limit)
			abort();
		off += n;
	}
	frame_dec_fini(&d);
	return 0;
}
