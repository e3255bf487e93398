/*
 * cksm-testpeer - a scripted, sometimes hostile, peer for integration
 * tests. Each mode does one thing to a daemon's control port and checks
 * the daemon's reaction; exit 0 means the daemon behaved as it must.
 *
 *   cksm-testpeer ADDR KEYFILE MODE
 *
 * modes:
 *   status      authenticate as admin, ask for status, print node count
 *   wrong-key   authenticate with KEYFILE (a key the daemon does not
 *               have): must be refused and disconnected
 *   oversized   authenticate, then announce a 64 MiB frame: disconnected
 *   garbage     send non-protocol bytes before authenticating: disconnected
 *   malformed   authenticate, then send a frame that is not a message
 *   replay      replay a hello that was valid on an earlier connection on
 *               a new one: refused
 *   half-open   send half a frame and wait: disconnected by the deadline
 *   hold        connect and say nothing for 30 s (a slow-loris peer that
 *               other tests run beside a good client)
 *   forged      register as agent node "intruder", then send a reference
 *               update on a dup that does not exist, a negative count, a
 *               dup report that was never ordered, usage reports with
 *               terminal escapes or impossible counts: each must be refused
 *               with an Error while the connection keeps serving
 *   stats       ask for per-node stats, print the cluster counters and
 *               the number of matrix cells
 *   uffd-child  ADDR is an agent's local socket: a child of the process
 *               that said hello sends the userfaultfd; must be refused
 *   data        ADDR is an agent's data port: a read of a slot that is not
 *               live gets -ESTALE and zeroes; a request with a bad magic is
 *               disconnected; so is a peer authenticated as admin
 *   slow-reader authenticate as admin, then ask for per-node stats over
 *               and over and never read an answer: must be disconnected
 *               within 60 s (the daemon's output queue is bounded)
 */
#include <errno.h>
#include <poll.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <linux/userfaultfd.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "auth.h"
#include "datawire.h"
#include "hll.h"
#include "local.h"
#include "sconn.h"
#include "wire.h"

#define TIMEOUT_MS 10000

static const char *addr;
static struct auth_key key;

static int fail(const char *what)
{
	fprintf(stderr, "testpeer: FAIL: %s\n", what);
	return 1;
}

static int expect_closed(struct sconn *s, const char *what)
{
	int rc = sconn_wait_closed(s);

	sconn_close(s);
	if (rc)
		return fail(what);
	printf("testpeer: disconnected as expected (%s)\n", what);
	return 0;
}

static int open_admin(struct sconn *s)
{
	char err[512];

	if (sconn_open(s, addr, &key, CKSM__ROLE__ROLE_ADMIN, "testpeer", TIMEOUT_MS, err,
		       sizeof(err))) {
		fprintf(stderr, "testpeer: %s\n", err);
		return -1;
	}
	return 0;
}

static int mode_status(void)
{
	Cksm__Msg out = CKSM__MSG__INIT, *m;
	Cksm__AdminRequest req = CKSM__ADMIN_REQUEST__INIT;
	struct sconn s;
	int rc;

	if (open_admin(&s))
		return fail("could not authenticate");
	req.command = CKSM__ADMIN_COMMAND__ADMIN_STATUS;
	out.body_case = CKSM__MSG__BODY_ADMIN_REQUEST;
	out.admin_request = &req;
	if (sconn_send(&s, &out))
		return fail("send");
	m = sconn_recv(&s, &rc);
	if (!m || m->body_case != CKSM__MSG__BODY_ADMIN_REPLY)
		return fail("no admin reply");
	printf("testpeer: status ok, %zu node(s)\n", m->admin_reply->n_nodes);
	cksm__msg__free_unpacked(m, NULL);
	sconn_close(&s);
	return 0;
}

static int mode_wrong_key(void)
{
	char err[512];
	struct sconn s;
	int rc;

	rc = sconn_open(&s, addr, &key, CKSM__ROLE__ROLE_AGENT, "intruder", TIMEOUT_MS, err,
			sizeof(err));
	if (rc == 0)
		return fail("a wrong key was accepted");
	if (rc != -EACCES)
		return fail(err);
	printf("testpeer: refused as expected: %s\n", err);
	return 0;
}

static int mode_oversized(void)
{
	static const uint8_t hdr[4] = { 0x04, 0x00, 0x00, 0x00 }; /* 64 MiB */
	struct sconn s;

	if (open_admin(&s))
		return fail("could not authenticate");
	if (sconn_write(&s, hdr, sizeof(hdr)))
		return fail("write");
	return expect_closed(&s, "oversized frame");
}

static int mode_garbage(void)
{
	static const char junk[] = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
	char err[256];
	struct sconn s;

	if (sconn_connect(&s, addr, TIMEOUT_MS, err, sizeof(err)))
		return fail(err);
	if (sconn_write(&s, junk, sizeof(junk) - 1))
		return fail("write");
	return expect_closed(&s, "garbage bytes");
}

static int mode_malformed(void)
{
	static const uint8_t frame[] = { 0, 0, 0, 6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
	struct sconn s;

	if (open_admin(&s))
		return fail("could not authenticate");
	if (sconn_write(&s, frame, sizeof(frame)))
		return fail("write");
	return expect_closed(&s, "malformed message");
}

/* Read a ServerHello and build a valid ClientHello for it. */
static uint8_t *valid_hello(struct sconn *s, size_t *len)
{
	Cksm__Msg out = CKSM__MSG__INIT, *m;
	struct auth_hello h;
	int rc;

	m = sconn_recv(s, &rc);
	if (!m || m->body_case != CKSM__MSG__BODY_SERVER_HELLO ||
	    m->server_hello->nonce.len != AUTH_NONCE_BYTES) {
		if (m)
			cksm__msg__free_unpacked(m, NULL);
		return NULL;
	}
	auth_hello_make(&h, &key, m->server_hello->nonce.data, CKSM__ROLE__ROLE_ADMIN, "testpeer");
	cksm__msg__free_unpacked(m, NULL);
	out.body_case = CKSM__MSG__BODY_CLIENT_HELLO;
	out.client_hello = &h.msg;
	return wire_pack(&out, len);
}

static int mode_replay(void)
{
	struct sconn a, b;
	Cksm__Msg *m;
	uint8_t *hello;
	size_t len;
	char err[256];
	int rc, ok;

	/* First connection: the hello is valid and accepted. */
	if (sconn_connect(&a, addr, TIMEOUT_MS, err, sizeof(err)))
		return fail(err);
	hello = valid_hello(&a, &len);
	if (!hello || sconn_write(&a, hello, len))
		return fail("first handshake");
	m = sconn_recv(&a, &rc);
	ok = m && m->body_case == CKSM__MSG__BODY_AUTH_RESULT && m->auth_result->ok;
	if (m)
		cksm__msg__free_unpacked(m, NULL);
	sconn_close(&a);
	if (!ok)
		return fail("the original hello was not accepted");
	/* Second connection: the same bytes again. */
	if (sconn_connect(&b, addr, TIMEOUT_MS, err, sizeof(err)))
		return fail(err);
	m = sconn_recv(&b, &rc);
	if (m)
		cksm__msg__free_unpacked(m, NULL);
	if (sconn_write(&b, hello, len))
		return fail("write");
	free(hello);
	m = sconn_recv(&b, &rc);
	if (m && m->body_case == CKSM__MSG__BODY_AUTH_RESULT && m->auth_result->ok)
		return fail("a replayed hello was accepted");
	if (m)
		cksm__msg__free_unpacked(m, NULL);
	return expect_closed(&b, "replayed hello");
}

static int mode_half_open(void)
{
	static const uint8_t half[] = { 0, 0 };
	char err[256];
	struct sconn s;

	if (sconn_connect(&s, addr, TIMEOUT_MS, err, sizeof(err)))
		return fail(err);
	if (sconn_write(&s, half, sizeof(half)))
		return fail("write");
	return expect_closed(&s, "half-open peer");
}

/* The next message that is not a heartbeat ack; NULL on timeout or close. */
static Cksm__Msg *next_msg(struct sconn *s)
{
	Cksm__Msg *m;
	int rc;

	while ((m = sconn_recv(s, &rc)) && m->body_case == CKSM__MSG__BODY_HEARTBEAT_ACK)
		cksm__msg__free_unpacked(m, NULL);
	return m;
}

static int expect_error(struct sconn *s, const char *what, const char *want)
{
	Cksm__Msg *m = next_msg(s);
	int ok = m && m->body_case == CKSM__MSG__BODY_ERROR && strstr(m->error->message, want);

	if (ok)
		printf("testpeer: %s refused: %s\n", what, m->error->message);
	if (m)
		cksm__msg__free_unpacked(m, NULL);
	return ok ? 0 : fail(what);
}

static int mode_forged(void)
{
	Cksm__Msg out = CKSM__MSG__INIT, *m;
	Cksm__Register reg = CKSM__REGISTER__INIT;
	Cksm__RefUpdate ru = CKSM__REF_UPDATE__INIT;
	Cksm__DupCreated dc = CKSM__DUP_CREATED__INIT;
	Cksm__Heartbeat hb = CKSM__HEARTBEAT__INIT;
	Cksm__DupRef dr = CKSM__DUP_REF__INIT;
	char err[512];
	struct sconn s;
	int rc;

	if (sconn_open(&s, addr, &key, CKSM__ROLE__ROLE_AGENT, "intruder", TIMEOUT_MS, err,
		       sizeof(err)))
		return fail(err);
	reg.node_name = (char *)"intruder";
	reg.buckets = 4096;
	out.body_case = CKSM__MSG__BODY_REGISTER;
	out.register_ = &reg;
	if (sconn_send(&s, &out))
		return fail("register");
	m = sconn_recv(&s, &rc);
	if (!m || m->body_case != CKSM__MSG__BODY_REGISTER_ACK)
		return fail("no register ack");
	dr.node_id = m->register_ack->node_id;
	cksm__msg__free_unpacked(m, NULL);

	dr.slot = 77;
	dr.generation = 1;
	ru.id_hi = 0x00ab;
	ru.id_lo = 0xcd;
	ru.dup = &dr;
	ru.delta = 1;
	out.body_case = CKSM__MSG__BODY_REF_UPDATE;
	out.ref_update = &ru;
	if (sconn_send(&s, &out) || expect_error(&s, "a forged dup reference", "no such content"))
		return 1;
	ru.delta = -5;
	if (sconn_send(&s, &out) || expect_error(&s, "a negative count", "no such content"))
		return 1;
	dc.id_hi = 0x00ab;
	dc.id_lo = 0xcd;
	dc.ok = true;
	dc.dup = &dr;
	out.body_case = CKSM__MSG__BODY_DUP_CREATED;
	out.dup_created = &dc;
	if (sconn_send(&s, &out) || expect_error(&s, "an unordered dup", "dup refused"))
		return 1;
	{
		Cksm__UsageReport ur = CKSM__USAGE_REPORT__INIT;
		Cksm__ProcessUsage pu = CKSM__PROCESS_USAGE__INIT, *pp = &pu;

		pu.pid = 1;
		pu.comm = (char *)"evil\033[31m";
		ur.n_processes = 1;
		ur.processes = &pp;
		out.body_case = CKSM__MSG__BODY_USAGE_REPORT;
		out.usage_report = &ur;
		if (sconn_send(&s, &out) ||
		    expect_error(&s, "a usage report with escapes", "not printable"))
			return 1;
		pu.comm = (char *)"fine";
		pu.stable_pages = 1;
		pu.shared_pages = 2;
		if (sconn_send(&s, &out) ||
		    expect_error(&s, "a usage report with more shared than stable", "more shared"))
			return 1;
	}
	{
		static uint8_t regs[HLL_REGISTERS + 1];
		Cksm__CensusReport cr = CKSM__CENSUS_REPORT__INIT;

		cr.registers.data = regs;
		cr.registers.len = HLL_REGISTERS;
		cr.shared_registers.data = regs;
		cr.shared_registers.len = 100;
		out.body_case = CKSM__MSG__BODY_CENSUS_REPORT;
		out.census_report = &cr;
		if (sconn_send(&s, &out) ||
		    expect_error(&s, "a census whose shared sketch is cut", "census report"))
			return 1;
		cr.shared_registers.len = HLL_REGISTERS + 1;
		if (sconn_send(&s, &out) ||
		    expect_error(&s, "a census whose shared sketch is too long", "census report"))
			return 1;
		/* Registers no sketch can hold (above the highest rank). */
		memset(regs, 0xff, sizeof(regs));
		cr.shared_registers.len = HLL_REGISTERS;
		if (sconn_send(&s, &out) ||
		    expect_error(&s, "a census of impossible registers", "census report"))
			return 1;
		/* More pages than a node holds. */
		memset(regs, 0, sizeof(regs));
		cr.stable_pages = 1ull << 62;
		if (sconn_send(&s, &out) ||
		    expect_error(&s, "a census of 2^62 pages", "census report"))
			return 1;
		/* Taken: the highest registers, over 1000 pages. The estimate
		 * (about 2^79) must not reach the figures (two_shards.sh). */
		memset(regs, HLL_RANK_MAX, sizeof(regs));
		cr.stable_pages = 1000;
		if (sconn_send(&s, &out))
			return fail("census");
	}
	/* Still served: a heartbeat is answered. */
	hb.seq = 1;
	out.body_case = CKSM__MSG__BODY_HEARTBEAT;
	out.heartbeat = &hb;
	if (sconn_send(&s, &out))
		return fail("heartbeat");
	m = sconn_recv(&s, &rc);
	if (!m || m->body_case != CKSM__MSG__BODY_HEARTBEAT_ACK)
		return fail("the connection did not survive the refusals");
	cksm__msg__free_unpacked(m, NULL);
	printf("testpeer: connection kept after the refusals\n");
	sconn_close(&s);
	return 0;
}

static int mode_stats(void)
{
	Cksm__Msg out = CKSM__MSG__INIT, *m;
	Cksm__StatsRequest q = CKSM__STATS_REQUEST__INIT;
	struct sconn s;
	int rc;

	if (open_admin(&s))
		return fail("could not authenticate");
	q.per_node = true;
	out.body_case = CKSM__MSG__BODY_STATS_REQUEST;
	out.stats_request = &q;
	if (sconn_send(&s, &out))
		return fail("send");
	m = sconn_recv(&s, &rc);
	if (!m || m->body_case != CKSM__MSG__BODY_STATS_REPLY || !m->stats_reply->cluster)
		return fail("no stats reply");
	printf("pages_shared %llu pages_sharing %llu pages_unshared %llu nodes %zu matrix %zu\n",
	       (unsigned long long)m->stats_reply->cluster->pages_shared,
	       (unsigned long long)m->stats_reply->cluster->pages_sharing,
	       (unsigned long long)m->stats_reply->cluster->pages_unshared, m->stats_reply->n_nodes,
	       m->stats_reply->n_matrix);
	cksm__msg__free_unpacked(m, NULL);
	sconn_close(&s);
	return 0;
}

/*
 * uffd-child: on an agent's local socket (ADDR is its path), a process
 * says hello, gets the /dev/userfaultfd descriptor, and lets a child of
 * it send the userfaultfd: the agent must refuse it (the READY carries an
 * error, or the connection closes) and attach nobody.
 */
static int mode_uffd_child(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct cksm_local m = cksm_local_msg(CKSM_LOCAL_HELLO);
	const char *why;
	int fd, devfd = -1, st, rc;
	pid_t c;

	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", addr);
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) ||
	    cksm_local_send(fd, &m, -1, 0) || cksm_local_recv(fd, &m, &devfd, 0, &why) ||
	    m.type != CKSM_LOCAL_DEVFD || devfd < 0)
		return fail("no descriptor from the agent");
	c = fork();
	if (c == 0) {
		int uffd = ioctl(devfd, USERFAULTFD_IOC_NEW, O_CLOEXEC);
		struct cksm_local u = cksm_local_msg(CKSM_LOCAL_UFFD);

		_exit(uffd < 0 || cksm_local_send(fd, &u, uffd, 0) ? 1 : 0);
	}
	if (c < 0 || waitpid(c, &st, 0) != c || !WIFEXITED(st) || WEXITSTATUS(st))
		return fail("the child could not send its userfaultfd");
	rc = cksm_local_recv(fd, &m, &devfd, 0, &why);
	if (rc == 0 && m.type == CKSM_LOCAL_READY && m.status == 0)
		return fail("the agent took a userfaultfd from another process");
	printf("testpeer: a child's userfaultfd refused (%s)\n",
	       rc ? "connection closed" : "READY with an error");
	close(fd);
	return 0;
}

/* len bytes from the non-blocking fd, within the deadline; 0 or -1. */
static int read_full(int fd, void *buf, size_t len)
{
	for (size_t off = 0; off < len;) {
		struct pollfd p = { fd, POLLIN, 0 };
		ssize_t n;

		if (poll(&p, 1, TIMEOUT_MS) <= 0)
			return -1;
		n = read(fd, (char *)buf + off, len - off);
		if (n <= 0)
			return -1;
		off += (size_t)n;
	}
	return 0;
}

static int mode_data(void)
{
	struct data_req r = { .magic = DATA_MAGIC, .slot = 0x7fffffff, .gen = 7, .tag = 42 };
	struct data_ans a;
	static uint8_t page[DATA_PAGE], zero[DATA_PAGE];
	char err[512];
	struct sconn s;

	if (sconn_open_to(&s, addr, &key, CKSM__ROLE__ROLE_AGENT, "testpeer",
			  CKSM__ROLE__ROLE_AGENT, TIMEOUT_MS, err, sizeof(err)))
		return fail(err);
	if (sconn_write(&s, &r, sizeof(r)) || read_full(s.fd, &a, sizeof(a)) ||
	    read_full(s.fd, page, sizeof(page)))
		return fail("no answer to a read of a slot that is not live");
	if (a.magic != DATA_MAGIC || a.tag != 42 || a.status != -ESTALE ||
	    memcmp(page, zero, sizeof(page)))
		return fail(
			"a read of a slot that is not live was not answered -ESTALE with zeroes");
	printf("testpeer: a stale slot answered -ESTALE\n");
	r.magic = 0x12345678;
	if (sconn_write(&s, &r, sizeof(r)))
		return fail("write");
	if (expect_closed(&s, "a request with a bad magic"))
		return 1;
	if (sconn_open_to(&s, addr, &key, CKSM__ROLE__ROLE_ADMIN, "testpeer",
			  CKSM__ROLE__ROLE_AGENT, TIMEOUT_MS, err, sizeof(err)))
		return fail(err);
	return expect_closed(&s, "an admin on the data port");
}

static int mode_hold(void)
{
	char err[256];
	struct sconn s;

	if (sconn_connect(&s, addr, TIMEOUT_MS, err, sizeof(err)))
		return fail(err);
	sleep(30);
	sconn_close(&s);
	return 0;
}

static int mode_slow_reader(void)
{
	Cksm__Msg out = CKSM__MSG__INIT;
	Cksm__StatsRequest q = CKSM__STATS_REQUEST__INIT;
	uint8_t batch[64 * 32];
	size_t len, n = 0;
	unsigned long sent = 0;
	uint8_t *one;
	struct sconn s;
	time_t end = time(NULL) + 60;
	int small = 4096;

	if (open_admin(&s))
		return fail("could not authenticate");
	setsockopt(s.fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
	q.per_node = true;
	out.body_case = CKSM__MSG__BODY_STATS_REQUEST;
	out.stats_request = &q;
	one = wire_pack(&out, &len);
	if (!one || len > 64)
		return fail("pack");
	while (n + len <= sizeof(batch)) {
		memcpy(batch + n, one, len);
		n += len;
	}
	free(one);
	/* Batch after batch, each written whole (a send cut short goes on
	 * where it stopped: the stream stays whole frames). */
	for (size_t off = 0; time(NULL) < end;) {
		struct pollfd p = { .fd = s.fd, .events = POLLOUT };
		ssize_t w = send(s.fd, batch + off, n - off, MSG_NOSIGNAL | MSG_DONTWAIT);

		if (w < 0 && (errno == EPIPE || errno == ECONNRESET)) {
			sconn_close(&s);
			printf("testpeer: disconnected as expected after %lu requests (a reader "
			       "that does not read)\n",
			       sent);
			return 0;
		}
		if (w < 0 && errno != EAGAIN)
			return fail("write");
		if (w < 0) {
			poll(&p, 1, 1000);
			continue;
		}
		off += (size_t)w;
		if (off == n) {
			sent += n / len;
			off = 0;
		}
	}
	sconn_close(&s);
	fprintf(stderr, "testpeer: %lu stats requests sent in 60 s, none read, still connected\n",
		sent);
	return fail("a peer that does not read was not disconnected");
}

int main(int argc, char **argv)
{
	static const struct {
		const char *name;
		int (*fn)(void);
	} modes[] = {
		{ "status", mode_status },	     { "wrong-key", mode_wrong_key },
		{ "oversized", mode_oversized },     { "garbage", mode_garbage },
		{ "malformed", mode_malformed },     { "replay", mode_replay },
		{ "half-open", mode_half_open },     { "hold", mode_hold },
		{ "forged", mode_forged },	     { "stats", mode_stats },
		{ "uffd-child", mode_uffd_child },   { "data", mode_data },
		{ "slow-reader", mode_slow_reader },
	};
	char err[512];

	if (argc != 4) {
		fprintf(stderr, "usage: cksm-testpeer ADDR KEYFILE MODE\n");
		return 2;
	}
	addr = argv[1];
	if (strcmp(argv[3], "uffd-child") == 0) /* no key: a local socket */
		return mode_uffd_child();
	if (auth_init() || auth_key_load(&key, argv[2], err, sizeof(err))) {
		fprintf(stderr, "testpeer: %s\n", err);
		return 2;
	}
	for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++)
		if (strcmp(argv[3], modes[i].name) == 0)
			return modes[i].fn();
	fprintf(stderr, "testpeer: unknown mode %s\n", argv[3]);
	return 2;
}
