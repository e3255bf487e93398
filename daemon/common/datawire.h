/*
 * datawire - the records of the data plane (docs/protocol.md): after the
 * handshake on an agent's data port, a reader sends data_req records and
 * the holder answers each, in order, with a data_ans and 4096 bytes (the
 * slot's bytes, or zeroes when status is not 0). Little-endian. A request
 * with another magic or flags closes the connection.
 */
#ifndef CKSM_DATAWIRE_H
#define CKSM_DATAWIRE_H

#include <stdint.h>

#define DATA_MAGIC 0x44534b43u /* "CKSD", little-endian on the wire */

/* Reader -> holder, 24 bytes, little-endian. */
struct data_req {
	uint32_t magic;
	uint32_t slot;
	uint32_t gen;
	uint32_t flags; /* 0 */
	uint64_t tag;	/* echoed */
};

/* Holder -> reader: this header, then always 4096 bytes. */
struct data_ans {
	uint32_t magic;
	int32_t status; /* 0, or -ESTALE when (slot, generation) is not live */
	uint64_t tag;
};

_Static_assert(sizeof(struct data_req) == 24, "data_req is 24 bytes on the wire");
_Static_assert(sizeof(struct data_ans) == 16, "data_ans is 16 bytes on the wire");

#define DATA_PAGE 4096u

#endif
