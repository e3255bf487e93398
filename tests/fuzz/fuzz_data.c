/*
 * libFuzzer target: the holder's side of the data plane, the request
 * records of datawire.h taken as tcp.c's dconn_serve takes them, and
 * answered from a real pool. The input is a run of arrivals on the
 * connection:
 *
 *	size   bit 7 clear: bits 0-6 bytes (0..127); set: bits 0-6 times 32
 *	       (up to 4064, more than the buffer's room)
 *	block  bits 0-2: after that many answers the socket is full (the
 *	       answer waits, and the next event sends it first); 0 never
 *	bytes  what arrived (the input's rest when it is shorter)
 *
 * and after each arrival the connection is served once, as one event of
 * epoll would: a pending answer goes out, what fits in the room is read
 * (the rest stays in the socket), whole requests are taken and answered
 * until none is whole, the socket is full or one is not a page read;
 * then the buffer is compacted. When the input ends, the connection is
 * served until nothing is left. Every request is checked against the
 * bytes that arrived, decoded here independently, and re-encoded with
 * data_req_encode to the same bytes; an answer names bytes exactly for a
 * live (slot, generation) whose content is the id the request names, and
 * they are that slot's; no more than
 * DATA_REQS_IN requests are ever buffered; after -EPROTO the connection
 * ends. data_ans_check is checked on headers from the input and on the
 * answers the holder would send.
 *
 * The pool's generations start at random; a request's generation g is
 * taken as the slot's g-th (its first is 1), so that inputs can name
 * live slots. Slot s holds content id {s, s}.
 */
#include <endian.h>
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/pool.h"
#include "datawire.h"

#define SLOTS 8
#define REQ   sizeof(struct data_req)

static struct pool *pool;

/* The live slots as make_pool leaves them; their bytes are fill()'s. */
static struct pool_ref live[3];
static uint32_t first_gen[3]; /* each slot's first generation */

struct conn {
	struct data_inbuf in;
	const uint8_t *stream; /* every byte that arrived, in order */
	size_t arrived;	       /* of them, in the socket or read */
	size_t received;       /* of them, read into in */
	size_t taken;	       /* requests taken */
	bool out_pending;      /* an answer waits for room in the socket */
	bool closed;	       /* after a request that is not a page read */
};

static void die(const char *what)
{
	fprintf(stderr, "fuzz_data: %s\n", what);
	abort();
}

static void fill(uint8_t *page, uint32_t slot)
{
	for (size_t i = 0; i < POOL_SLOT; i++)
		page[i] = (uint8_t)(slot * 37 + i * 7 + (i >> 8));
}

/*
 * Slots 0, 1 and 2 filled; slot 2 released and filled again, so its first
 * name is stale and its second live; the other slots never held anything.
 */
static void make_pool(void)
{
	static uint8_t page[POOL_SLOT];
	struct pool_ref ref;
	char err[128];
	bool huge;

	pool = pool_create(SLOTS, &huge, err, sizeof(err));
	if (!pool)
		die(err);
	for (uint32_t s = 0; s < 3; s++) {
		fill(page, s);
		if (pool_add(pool, &(struct cid){ s, s }, page, &live[s]) || live[s].slot != s)
			die("the pool does not fill as expected");
		first_gen[s] = live[s].gen;
	}
	if (pool_release(pool, live[2]))
		die("cannot release slot 2");
	fill(page, 2);
	if (pool_add(pool, &(struct cid){ 2, 2 }, page, &ref) || ref.slot != 2 ||
	    ref.gen != live[2].gen + 1)
		die("slot 2 does not come back with its next generation");
	live[2] = ref;
}

static bool is_live(uint32_t slot, uint32_t gen)
{
	for (size_t i = 0; i < sizeof(live) / sizeof(live[0]); i++)
		if (live[i].slot == slot && live[i].gen == gen)
			return true;
	return false;
}

static uint32_t le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t le64(const uint8_t *p)
{
	return le32(p) | (uint64_t)le32(p + 4) << 32;
}

/* The pool's name for the generation a request names (see the top). */
static struct pool_ref pool_name(const struct data_req *r)
{
	uint32_t gen = r->slot < 3 ? first_gen[r->slot] + r->gen - 1 : r->gen;

	return (struct pool_ref){ r->slot, gen };
}

/* An answer's header as the holder builds it (tcp.c's page_for and answer). */
static void check_answer(const struct data_req *r)
{
	static uint8_t want[POOL_SLOT];
	struct pool_ref ref = pool_name(r);
	struct cid held;
	const void *bytes = pool_page(pool, ref, &held);
	int32_t status;

	if (bytes && !cid_eq(held, data_req_id(r)))
		bytes = NULL; /* another content than the one named */
	status = bytes ? 0 : -ESTALE;
	struct data_ans a = { .magic = htole32(DATA_MAGIC),
			      .status = (int32_t)htole32((uint32_t)status),
			      .tag = htole64(r->tag) };

	if (!bytes != !(is_live(ref.slot, ref.gen) && r->id_hi == r->slot && r->id_lo == r->slot))
		die("bytes for a stale (slot, gen) or another content, or none for a live one");
	if (bytes) {
		fill(want, r->slot);
		if (memcmp(bytes, want, POOL_SLOT))
			die("the bytes are not the slot's");
	}
	if (data_ans_check(&a, r->tag) != status)
		die("data_ans_check does not give the answer's status");
	if (data_ans_check(&a, r->tag + 1) != -EPROTO)
		die("data_ans_check takes the answer to another request");
}

/* A header and a tag from the input: the check, written out. */
static void check_ans_bytes(const uint8_t *p)
{
	struct data_ans a;
	uint64_t tag = le64(p + sizeof(a));
	int32_t status = (int32_t)le32(p + 4);
	int want = le32(p) != DATA_MAGIC || le64(p + 8) != tag || status > 0 ? -EPROTO : status;

	memcpy(&a, p, sizeof(a));
	if (data_ans_check(&a, tag) != want)
		die("data_ans_check disagrees with the record");
}

/* The request taken: the next one that arrived, and a page read. */
static void check_request(const struct conn *c, const struct data_req *r)
{
	const uint8_t *w = c->stream + c->taken * REQ;
	struct data_req enc;

	if ((c->taken + 1) * REQ > c->received)
		die("a request taken before all of it was read");
	if (le32(w) != DATA_MAGIC || le32(w + 12) != 0)
		die("a request taken that is not a page read");
	if (r->magic != DATA_MAGIC || r->flags || r->slot != le32(w + 4) || r->gen != le32(w + 8) ||
	    r->tag != le64(w + 16) || r->id_hi != le64(w + 24) || r->id_lo != le64(w + 32))
		die("the request is not the bytes that came");
	data_req_encode(&enc, r->slot, r->gen, &(struct cid){ r->id_hi, r->id_lo }, r->tag);
	if (memcmp(&enc, w, REQ))
		die("data_req_encode does not give the bytes back");
}

static void check_buffer(const struct conn *c)
{
	if (c->in.len > sizeof(c->in.b) || c->in.off > c->in.len)
		die("the buffer's length or offset out of bounds");
	if ((c->in.len - c->in.off) / REQ > DATA_REQS_IN)
		die("more than DATA_REQS_IN requests buffered");
	if (c->received - c->taken * REQ != c->in.len - c->in.off)
		die("the buffer does not hold what was read and not taken");
}

/* One event on the connection, as dconn_serve handles it. */
static void serve(struct conn *c, unsigned block_after)
{
	struct data_req r;
	size_t room, answers = 0;
	uint8_t *tail = data_inbuf_tail(&c->in, &room);
	int rc;

	c->out_pending = false; /* the socket took the pending answer */
	if (room != sizeof(c->in.b) - c->in.len || tail != c->in.b + c->in.len)
		die("data_inbuf_tail names another room");
	if (room) { /* recv: what is there, up to the room */
		size_t n = c->arrived - c->received < room ? c->arrived - c->received : room;

		memcpy(tail, c->stream + c->received, n);
		c->in.len += n;
		c->received += n;
	}
	check_buffer(c);
	while ((rc = data_inbuf_next(&c->in, &r)) > 0) {
		check_request(c, &r);
		c->taken++;
		check_buffer(c);
		check_answer(&r);
		if (++answers == block_after) {
			c->out_pending = true;
			break;
		}
	}
	if (rc < 0) {
		const uint8_t *w = c->stream + c->taken * REQ;
		size_t off = c->in.off;

		if (rc != -EPROTO || (c->taken + 1) * REQ > c->received ||
		    (le32(w) == DATA_MAGIC && le32(w + 12) == 0))
			die("a page read refused, or one not whole");
		if (data_inbuf_next(&c->in, &r) != -EPROTO || c->in.off != off)
			die("data_inbuf_next goes past a request that is not a page read");
		c->closed = true; /* "a request that is not a page read" */
		return;
	}
	if (rc == 0 && c->in.len - c->in.off >= REQ)
		die("0 with a whole request buffered");
	data_inbuf_compact(&c->in);
	if (c->in.off)
		die("compact leaves an offset");
	check_buffer(c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct conn c;
	uint8_t *stream = malloc(size + 1);
	size_t i = 0;

	if (!stream)
		die("out of memory");
	if (!pool)
		make_pool();
	memset(&c, 0, sizeof(c));
	c.stream = stream;
	while (i < size && !c.closed) {
		uint8_t sz = data[i++];
		unsigned block = i < size ? data[i++] & 7 : 0;
		size_t n = sz & 0x80 ? (size_t)(sz & 0x7f) * 32 : sz;

		if (n > size - i)
			n = size - i;
		memcpy(stream + c.arrived, data + i, n);
		if (n >= sizeof(struct data_ans) + 8)
			check_ans_bytes(data + i);
		c.arrived += n;
		i += n;
		serve(&c, block);
	}
	/* epoll keeps the connection ready while anything is left. */
	for (unsigned k = 0;
	     !c.closed && (c.received < c.arrived || c.in.len - c.in.off >= REQ || c.out_pending);
	     k++) {
		if (k > 1000)
			die("the connection makes no progress");
		serve(&c, 0);
	}
	free(stream);
	return 0;
}
