/*
 * bench/control - the control plane's per-message costs on this machine:
 * frames decoded per second (a heartbeat-sized and a 4096-digest report),
 * and handshakes (client MAC + check + server MAC) per second, with
 * memcpy of the same bytes as the yardstick. Prints figures only.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench.h"

#include "auth.h"
#include "frame.h"
#include "wire.h"

static unsigned long frames;

static int count(void *arg, const uint8_t *p, uint32_t len)
{
	Cksm__Msg *m = wire_unpack(p, len);

	(void)arg;
	if (m) {
		frames++;
		cksm__msg__free_unpacked(m, NULL);
	}
	return 0;
}

/* n copies of one packed message, back to back, as a socket would deliver. */
static uint8_t *stream_of(const Cksm__Msg *m, int n, size_t *total)
{
	size_t len;
	uint8_t *one = wire_pack(m, &len), *all = malloc(len * (size_t)n);

	for (int i = 0; i < n; i++)
		memcpy(all + len * (size_t)i, one, len);
	free(one);
	*total = len * (size_t)n;
	return all;
}

/* Returns frames decoded per second. */
static double bench_decode(const char *what, const Cksm__Msg *m, int n)
{
	struct frame_dec d;
	size_t total;
	uint8_t *s = stream_of(m, n, &total), *copy = malloc(total);
	double t0, t1, t2;

	memset(copy, 0, total); /* fault the pages in before timing */
	frame_dec_init(&d, FRAME_MAX_HARD);
	frames = 0;
	t0 = now_s();
	for (size_t off = 0; off < total; off += 65536)
		frame_dec_feed(&d, s + off, total - off < 65536 ? total - off : 65536, count, NULL);
	t1 = now_s();
	memcpy(copy, s, total);
	__asm__ volatile("" : : "r"(copy) : "memory");
	t2 = now_s();
	printf("%-28s %10.0f frames/s %8.1f MB/s   (memcpy %8.1f MB/s, %lu frames of %zu B)\n",
	       what, frames / (t1 - t0), total / (t1 - t0) / 1e6, total / (t2 - t1) / 1e6, frames,
	       total / (size_t)n);
	frame_dec_fini(&d);
	free(s);
	free(copy);
	return frames / (t1 - t0);
}

int main(void)
{
	Cksm__Msg m = CKSM__MSG__INIT;
	Cksm__Heartbeat hb = CKSM__HEARTBEAT__INIT;
	Cksm__NodeCounters nc = CKSM__NODE_COUNTERS__INIT;
	Cksm__DigestReport rep = CKSM__DIGEST_REPORT__INIT;
	static Cksm__Digest dg[4096];
	static Cksm__Digest *dgp[4096];
	struct auth_key key;
	uint8_t sn[32], cn[32], mac[32];
	double t0, t1;
	int n = 200000;

	if (auth_init())
		return 1;

	hb.seq = 123456;
	nc.pages_scanned = 1u << 30;
	hb.counters = &nc;
	m.body_case = CKSM__MSG__BODY_HEARTBEAT;
	m.heartbeat = &hb;
	bench_decode("heartbeat", &m, 1000000);

	for (int i = 0; i < 4096; i++) {
		cksm__digest__init(&dg[i]);
		dg[i].id_hi = (uint64_t)rand() << 32 | (uint64_t)rand();
		dg[i].id_lo = (uint64_t)rand() << 32 | (uint64_t)rand();
		dg[i].pages = 1;
		dgp[i] = &dg[i];
	}
	rep.n_digests = 4096;
	rep.digests = dgp;
	m.body_case = CKSM__MSG__BODY_DIGEST_REPORT;
	m.digest_report = &rep;
	printf("%-28s %10.0f digests/s decoded\n", "",
	       4096.0 * bench_decode("digest report (4096 ids)", &m, 500));

	memset(key.k, 3, sizeof(key.k));
	auth_nonce(sn);
	auth_nonce(cn);
	t0 = now_s();
	for (int i = 0; i < n; i++) {
		auth_client_mac(&key, sn, cn, CKSM__ROLE__ROLE_AGENT, "node-1", mac);
		auth_server_mac(&key, cn, sn, CKSM__ROLE__ROLE_COORD, "shard-0", mac);
		sn[0] = mac[0];
	}
	t1 = now_s();
	printf("%-28s %10.0f handshakes/s (two HMAC-SHA256 each, one core)\n", "auth",
	       n / (t1 - t0));
	return 0;
}
