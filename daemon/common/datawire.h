/*
 * datawire - the records of the data plane (docs/protocol.md): after the
 * handshake on an agent's data port, a reader sends data_req records and
 * the holder answers each, in order, with a data_ans and 4096 bytes (the
 * slot's bytes, or zeroes when status is not 0). Little-endian. A request
 * with another magic or flags closes the connection.
 *
 * A request names the content it wants as well as the slot: the 128-bit
 * content id the reader already knows (from its own table entry or the
 * shard's answer). Ids are keyed by dedup domain and by the cluster key,
 * so the holder serving a slot only to a reader that names its content
 * gives nobody a content it does not already have, in that domain.
 */
#ifndef CKSM_DATAWIRE_H
#define CKSM_DATAWIRE_H

#include <stddef.h>
#include <stdint.h>

#include "cid.h"

/* "CKSE", little-endian on the wire ("CKSD" was the request without an id) */
#define DATA_MAGIC 0x45534b43u

/* Reader -> holder, 40 bytes, little-endian. */
struct data_req {
	uint32_t magic;
	uint32_t slot;
	uint32_t gen;
	uint32_t flags; /* 0 */
	uint64_t tag;	/* echoed */
	uint64_t id_hi; /* the content id the slot must hold */
	uint64_t id_lo;
};

/* Holder -> reader: this header, then always 4096 bytes. */
struct data_ans {
	uint32_t magic;
	int32_t status; /* 0, or -ESTALE when (slot, generation) is not live or
			   holds another content than the id named */
	uint64_t tag;
};

_Static_assert(sizeof(struct data_req) == 40, "data_req is 40 bytes on the wire");
_Static_assert(sizeof(struct data_ans) == 16, "data_ans is 16 bytes on the wire");

#define DATA_PAGE 4096u

/* A request on the wire for content id in (slot, gen), tagged. */
void data_req_encode(struct data_req *w, uint32_t slot, uint32_t gen, const struct cid *id,
		     uint64_t tag);

/* The content id a request (in host order) names. */
static inline struct cid data_req_id(const struct data_req *r)
{
	return (struct cid){ .hi = r->id_hi, .lo = r->id_lo };
}

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
