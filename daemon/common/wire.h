/*
 * wire - protobuf messages in frames.
 */
#ifndef CKSM_WIRE_H
#define CKSM_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "cksm.pb-c.h"

/*
 * Pack m as one frame (header + payload) into a new buffer of *len bytes;
 * the caller frees it. Returns NULL on allocation failure or when the
 * payload would exceed FRAME_MAX_HARD.
 */
uint8_t *wire_pack(const Cksm__Msg *m, size_t *len);

/*
 * Unpack one payload. Returns NULL for bytes that are not a Msg or a Msg
 * with no body; the caller frees with cksm__msg__free_unpacked(m, NULL).
 */
Cksm__Msg *wire_unpack(const uint8_t *p, size_t len);

/* Short name of the message's body, for logs ("heartbeat"). */
const char *wire_body_name(const Cksm__Msg *m);

#endif
