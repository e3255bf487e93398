/*
 * cksm-datafuzz - a hostile reader of an agent's data port, after the
 * handshake (as an agent, with the cluster key).
 *
 *   cksm-datafuzz ADDR KEYFILE AGENT_PID
 *   cksm-datafuzz --walls STATE_DIR ADDR KEYFILE AGENT_PID
 *
 * Cases, each on a connection of its own: a request split byte by byte;
 * 64 valid requests then one bad one in the same write (the valid ones
 * answered, then the close); flags set; a half request then EOF; 5000
 * requests pipelined without reading any answer (the holder must not
 * grow or stall: another connection is still served); slots and
 * generations out of range. After each the agent must be alive and a
 * fresh connection's stale read answered -ESTALE with zeroes.
 *
 * --walls: a key holder that never registered reads what it has no
 * content id for. STATE_DIR is the agent's, whose "slots" file tells the
 * live slots (read only). Each case on a connection of its own: slots
 * 0..15 at generation 1; slots 0..15 at random generations; live slots
 * at their generation but naming another content id, and the same
 * content's id in another domain. Every read must be refused (-ESTALE
 * and zeroes). Then one live slot asked with its own id must be served,
 * and its bytes hash to that id (the default domain's).
 */
#include <endian.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "agent/pool.h"
#include "auth.h"
#include "cid.h"
#include "datawire.h"
#include "sconn.h"

static const char *addr;
static struct auth_key key;
static pid_t agent;
static int failures;

static int open_data(struct sconn *s)
{
	char err[512];

	if (sconn_open_to(s, addr, &key, CKSM__ROLE__ROLE_AGENT, "datafuzz", CKSM__ROLE__ROLE_AGENT,
			  3000, err, sizeof(err))) {
		fprintf(stderr, "datafuzz: %s\n", err);
		return -1;
	}
	return 0;
}

static int read_full(int fd, void *buf, size_t len, int ms)
{
	for (size_t off = 0; off < len;) {
		struct pollfd p = { fd, POLLIN, 0 };
		ssize_t n;

		if (poll(&p, 1, ms) <= 0)
			return -1;
		n = read(fd, (char *)buf + off, len - off);
		if (n <= 0)
			return -1;
		off += (size_t)n;
	}
	return 0;
}

/* Is fd closed by the other side within ms (answers before it skipped)? */
static bool closed_within(int fd, int ms)
{
	char buf[65536];

	for (;;) {
		struct pollfd p = { fd, POLLIN, 0 };
		ssize_t n;

		if (poll(&p, 1, ms) <= 0)
			return false;
		n = read(fd, buf, sizeof(buf));
		if (n <= 0)
			return true;
	}
}

static struct data_req req(uint32_t slot, uint32_t gen, uint64_t tag)
{
	struct data_req r;

	data_req_encode(&r, slot, gen, &(struct cid){ 0, 0 }, tag);
	return r;
}

/* One stale read answered right on a fresh connection. */
static bool served(void)
{
	struct sconn s;
	struct data_req r = req(0x7fffffff, 7, 99);
	struct data_ans a;
	static uint8_t page[DATA_PAGE], zero[DATA_PAGE];
	bool ok;

	if (open_data(&s))
		return false;
	ok = !sconn_write(&s, &r, sizeof(r)) && !read_full(s.fd, &a, sizeof(a), 3000) &&
	     !read_full(s.fd, page, sizeof(page), 3000) && data_ans_check(&a, 99) == -ESTALE &&
	     !memcmp(page, zero, sizeof(page));
	sconn_close(&s);
	return ok;
}

static void check(const char *name, bool ok)
{
	bool alive = kill(agent, 0) == 0, sv = alive && served();

	printf("%s %s%s%s\n", ok && sv ? "ok  " : "FAIL", name, alive ? "" : " (agent died)",
	       alive && !sv ? " (not served after)" : "");
	if (!ok || !sv)
		failures++;
	if (!alive)
		exit(1);
}

/* ---- --walls ------------------------------------------------------------------- */

#define WALL_SLOTS 16

static struct pool_ref live_at[WALL_SLOTS];
static struct cid live_id[WALL_SLOTS];
static unsigned nlive;

/* A read of (slot, gen) naming content id. */
static struct data_req wall_req(uint32_t slot, uint32_t gen, struct cid id, uint64_t tag)
{
	struct data_req r;

	data_req_encode(&r, slot, gen, &id, tag);
	return r;
}

/*
 * Send v[0..n) on a fresh connection and read every answer: true when
 * each is refused with zeroes. Prints how many were served.
 */
static bool all_refused(const struct data_req *v, unsigned n)
{
	static uint8_t page[DATA_PAGE], zero[DATA_PAGE];
	unsigned refused = 0, served_n = 0;
	struct sconn s;
	bool ok;

	ok = !open_data(&s) && !sconn_write(&s, v, n * sizeof(*v));
	for (unsigned i = 0; ok && i < n; i++) {
		struct data_ans a;
		int st;

		ok = !read_full(s.fd, &a, sizeof(a), 3000) &&
		     !read_full(s.fd, page, sizeof(page), 3000);
		st = ok ? data_ans_check(&a, le64toh(v[i].tag)) : -EPROTO;
		if (st == 0)
			served_n++;
		else if (st == -ESTALE && !memcmp(page, zero, sizeof(page)))
			refused++;
	}
	sconn_close(&s);
	printf("     %u asked: %u refused, %u served\n", n, refused, served_n);
	return ok && refused == n;
}

static int walls(const char *dir)
{
	struct data_req v[2 * WALL_SLOTS];
	struct cid made_up = { 0, 0 };
	uint32_t rnd[WALL_SLOTS];
	unsigned n;

	long got = pool_peek(dir, live_at, live_id, WALL_SLOTS);

	if (got < 0) {
		fprintf(stderr, "datafuzz: %s keeps no pool of this version\n", dir);
		return 2;
	}
	nlive = (unsigned)got;
	printf("     %u live slots in the pool\n", nlive);
	if (!nlive) {
		fprintf(stderr, "datafuzz: the pool has no live slot to ask for\n");
		return 2;
	}
	if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd))
		return 2;

	for (uint32_t i = 0; i < WALL_SLOTS; i++)
		v[i] = wall_req(i, 1, made_up, i + 1);
	check("slots 0..15 at generation 1: refused", all_refused(v, WALL_SLOTS));

	for (uint32_t i = 0; i < WALL_SLOTS; i++)
		v[i] = wall_req(i, rnd[i] ? rnd[i] : 1, made_up, i + 1);
	check("slots 0..15 at random generations: refused", all_refused(v, WALL_SLOTS));

	for (n = 0; n < nlive; n++) {
		struct cid wrong = live_id[n];

		wrong.lo ^= 1;
		v[n] = wall_req(live_at[n].slot, live_at[n].gen, wrong, n + 1);
	}
	check("live slots with a wrong content id: refused", all_refused(v, n));

	for (n = 0; n < nlive; n++) {
		struct cid other = live_id[n];

		other.hi ^= 0x07ull << 56; /* the same bits, another domain's tag */
		v[n] = wall_req(live_at[n].slot, live_at[n].gen, other, n + 1);
	}
	check("live slots with another domain's id: refused", all_refused(v, n));

	/* The wall is not a closed door: the content's own id is served. */
	{
		static uint8_t page[DATA_PAGE];
		static struct cid_domain dom;
		struct data_req r = wall_req(live_at[0].slot, live_at[0].gen, live_id[0], 7);
		struct data_ans a;
		struct sconn s;
		bool ok = !cid_domain_init(&dom, &key, 0, "default") && !open_data(&s);

		if (ok) {
			ok = !sconn_write(&s, &r, sizeof(r)) &&
			     !read_full(s.fd, &a, sizeof(a), 3000) &&
			     !read_full(s.fd, page, sizeof(page), 3000) &&
			     data_ans_check(&a, 7) == 0 && cid_eq(cid_of(&dom, page), live_id[0]);
			sconn_close(&s);
		}
		check("a live slot asked with its own content id: served, those bytes", ok);
	}
	printf("%d failures\n", failures);
	return failures ? 1 : 0;
}

int main(int argc, char **argv)
{
	const char *walls_dir = NULL;
	char err[512];
	struct sconn s;
	bool ok;

	if (argc == 6 && !strcmp(argv[1], "--walls")) {
		walls_dir = argv[2];
		argv += 2;
		argc -= 2;
	}
	if (argc != 4)
		return 2;
	addr = argv[1];
	agent = (pid_t)atoi(argv[3]);
	signal(SIGPIPE, SIG_IGN);
	if (auth_init() || auth_key_load(&key, argv[2], err, sizeof(err))) {
		fprintf(stderr, "datafuzz: %s\n", err);
		return 2;
	}
	if (walls_dir)
		return walls(walls_dir);

	/* 1. A request a byte at a time: answered. */
	{
		struct data_req r = req(0x7ffffff0, 1, 5);
		struct data_ans a;
		static uint8_t page[DATA_PAGE];

		ok = !open_data(&s);
		for (size_t i = 0; ok && i < sizeof(r); i++) {
			ok = !sconn_write(&s, (uint8_t *)&r + i, 1);
			usleep(20000);
		}
		ok = ok && !read_full(s.fd, &a, sizeof(a), 3000) &&
		     !read_full(s.fd, page, sizeof(page), 3000) && data_ans_check(&a, 5) == -ESTALE;
		sconn_close(&s);
		check("a request a byte at a time: answered", ok);
	}

	/* 2. 63 valid requests and a bad one in one write: 63 answers, then closed. */
	{
		struct data_req v[64];
		static uint8_t buf[64 * (sizeof(struct data_ans) + DATA_PAGE)];
		size_t got = 0;

		for (int i = 0; i < 63; i++)
			v[i] = req((uint32_t)i + 0x10000000u, 1, (uint64_t)i + 1);
		v[63] = req(1, 1, 64);
		v[63].magic = 0xdeadbeef;
		ok = !open_data(&s) && !sconn_write(&s, v, sizeof(v));
		for (;;) {
			struct pollfd p = { s.fd, POLLIN, 0 };
			ssize_t n;

			if (poll(&p, 1, 3000) <= 0) {
				ok = false;
				break;
			}
			n = read(s.fd, buf + got, sizeof(buf) - got);
			if (n <= 0)
				break;
			got += (size_t)n;
		}
		printf("     %zu answers before the close\n",
		       got / (sizeof(struct data_ans) + DATA_PAGE));
		ok = ok && got == 63 * (sizeof(struct data_ans) + DATA_PAGE);
		sconn_close(&s);
		check("63 requests then a bad magic: 63 answered, closed", ok);
	}

	/* 3. flags set. */
	{
		struct data_req r = req(1, 1, 1);

		r.flags = 1;
		ok = !open_data(&s) && !sconn_write(&s, &r, sizeof(r)) && closed_within(s.fd, 3000);
		sconn_close(&s);
		check("a request with flags: closed", ok);
	}

	/* 4. half a request, then shutdown(WR). */
	{
		struct data_req r = req(1, 1, 1);

		ok = !open_data(&s) && !sconn_write(&s, &r, 10);
		shutdown(s.fd, SHUT_WR);
		ok = ok && closed_within(s.fd, 3000);
		sconn_close(&s);
		check("half a request then EOF: closed", ok);
	}

	/* 5. 20000 requests without reading an answer, then another connection. */
	{
		struct data_req v[256];
		size_t sent = 0;

		ok = !open_data(&s);
		for (int i = 0; i < 256; i++)
			v[i] = req((uint32_t)i, 0xffffffffu, (uint64_t)i);
		{
			struct timeval tv = { 2, 0 };

			setsockopt(s.fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
		}
		for (int k = 0; ok && k < 80; k++) {
			ssize_t n = send(s.fd, v, sizeof(v), MSG_NOSIGNAL);

			if (n <= 0)
				break; /* the holder stopped reading: fine */
			sent += (size_t)n;
		}
		printf("     %zu requests went out unanswered-read\n",
		       sent / sizeof(struct data_req));
		check("pipelined requests never read: others still served", ok);
		sconn_close(&s);
	}

	/* 6. 300 connections at once (limit 256): the rest refused, then served. */
	{
		static struct sconn v[300];
		int n = 0;

		for (int i = 0; i < 300; i++)
			if (!open_data(&v[n]))
				n++;
		printf("     %d handshakes done (SERVE_CONNS 256)\n", n);
		for (int i = 0; i < n; i++)
			sconn_close(&v[i]);
		usleep(500000);
		check("300 data connections: still served after", true);
	}

	printf("%d failures\n", failures);
	return failures ? 1 : 0;
}
