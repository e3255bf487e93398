/*
 * datawire - see datawire.h.
 */
#include "datawire.h"

#include <endian.h>
#include <errno.h>
#include <string.h>

void data_req_encode(struct data_req *w, uint32_t slot, uint32_t gen, const struct cid *id,
		     uint64_t tag)
{
	w->magic = htole32(DATA_MAGIC);
	w->slot = htole32(slot);
	w->gen = htole32(gen);
	w->flags = 0;
	w->tag = htole64(tag);
	w->id_hi = htole64(id->hi);
	w->id_lo = htole64(id->lo);
}

int data_ans_check(const struct data_ans *w, uint64_t tag)
{
	int32_t st;

	if (le32toh(w->magic) != DATA_MAGIC || le64toh(w->tag) != tag)
		return -EPROTO;
	st = (int32_t)le32toh((uint32_t)w->status);
	return st > 0 ? -EPROTO : st;
}

uint8_t *data_inbuf_tail(struct data_inbuf *ib, size_t *room)
{
	*room = sizeof(ib->b) - ib->len;
	return ib->b + ib->len;
}

int data_inbuf_next(struct data_inbuf *ib, struct data_req *r)
{
	struct data_req w;

	if (ib->len - ib->off < sizeof(w))
		return 0;
	memcpy(&w, ib->b + ib->off, sizeof(w));
	if (le32toh(w.magic) != DATA_MAGIC || w.flags)
		return -EPROTO;
	ib->off += sizeof(w);
	r->magic = DATA_MAGIC;
	r->slot = le32toh(w.slot);
	r->gen = le32toh(w.gen);
	r->flags = 0;
	r->tag = le64toh(w.tag);
	r->id_hi = le64toh(w.id_hi);
	r->id_lo = le64toh(w.id_lo);
	return 1;
}

void data_inbuf_compact(struct data_inbuf *ib)
{
	memmove(ib->b, ib->b + ib->off, ib->len - ib->off);
	ib->len -= ib->off;
	ib->off = 0;
}
