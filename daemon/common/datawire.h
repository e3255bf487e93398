/*
 * datawire - the records of the data plane (docs/protocol.md): after the
 * handshake on an agent's data port, a reader sends data_req records and
 * the holder answers each, in order, with a data_ans and 4096 bytes (the
 * slot's bytes, or zeroes when status is not 0). Little-endian. A request
 * with another magic or flags closes the connection.
 */
#ifndef CKSM_DATAWIRE_H
#define CKSM_DATAWIRE_H

#include <stddef.h>
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

/* A request on the wire for (slot, gen), tagged. */
void data_req_encode(struct data_req *w, uint32_t slot, uint32_t gen, uint64_t tag);

/*
 * An answer's header from the wire, for the request tagged tag: its
 * status (0, or the holder's negative errno), or -EPROTO when it is not
 * the answer to that request.
 */
int data_ans_check(const struct data_ans *w, uint64_t tag);

#define DATA_REQS_IN 64 /* requests a holder reads ahead per connection */

/*
 * The holder's side of a connection's requests: bytes as they come off
 * the socket, taken one whole request at a time. A request that is not a
 * page read ends the connection.
 */
struct data_inbuf {
	uint8_t b[DATA_REQS_IN * sizeof(struct data_req)];
	size_t len; /* bytes in b */
	size_t off; /* of them, taken */
};

/* Where the next bytes go, and *room for how many (0: answer first). */
uint8_t *data_inbuf_tail(struct data_inbuf *ib, size_t *room);

/*
 * The next whole request into *r, in host order: 1; 0 when none is whole
 * yet; -EPROTO when the bytes are not a page read.
 */
int data_inbuf_next(struct data_inbuf *ib, struct data_req *r);

/* Keep only what was not taken, at the front. */
void data_inbuf_compact(struct data_inbuf *ib);

#endif
