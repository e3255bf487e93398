/*
 * wire - see wire.h.
 */
#include "wire.h"

#include <stdlib.h>

#include "frame.h"

uint8_t *wire_pack(const Cksm__Msg *m, size_t *len)
{
	size_t n = cksm__msg__get_packed_size(m);
	uint8_t *buf;

	if (n == 0 || n > FRAME_MAX_HARD)
		return NULL;
	buf = malloc(FRAME_HDR + n);
	if (!buf)
		return NULL;
	frame_put_header(buf, (uint32_t)n);
	cksm__msg__pack(m, buf + FRAME_HDR);
	*len = FRAME_HDR + n;
	return buf;
}

Cksm__Msg *wire_unpack(const uint8_t *p, size_t len)
{
	Cksm__Msg *m = cksm__msg__unpack(NULL, len, p);

	if (m && m->body_case == CKSM__MSG__BODY__NOT_SET) {
		cksm__msg__free_unpacked(m, NULL);
		return NULL;
	}
	return m;
}

const char *wire_body_name(const Cksm__Msg *m)
{
	const ProtobufCFieldDescriptor *f;

	f = protobuf_c_message_descriptor_get_field(&cksm__msg__descriptor, (unsigned)m->body_case);
	return f ? f->name : "none";
}
