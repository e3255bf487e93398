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
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "auth.h"
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

int main(int argc, char **argv)
{
	static const struct {
		const char *name;
		int (*fn)(void);
	} modes[] = {
		{ "status", mode_status },	 { "wrong-key", mode_wrong_key },
		{ "oversized", mode_oversized }, { "garbage", mode_garbage },
		{ "malformed", mode_malformed }, { "replay", mode_replay },
		{ "half-open", mode_half_open }, { "hold", mode_hold },
	};
	char err[512];

	if (argc != 4) {
		fprintf(stderr, "usage: cksm-testpeer ADDR KEYFILE MODE\n");
		return 2;
	}
	addr = argv[1];
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
