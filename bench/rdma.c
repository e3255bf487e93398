/*
 * bench/rdma - page reads of another node's pool through a data transport
 * kind, as the agent's reading threads make them: latency with one
 * thread, and throughput with several.
 *
 *   build/bench/rdma STATE_DIR HOST:PORT KEY_FILE KIND [THREADS [SECONDS]]
 *
 * STATE_DIR is a running agent's state directory (its pool's dups are
 * what is read), HOST:PORT where it serves them, KEY_FILE the cluster
 * key, KIND tcp or rdma. Each thread has its own reader (transport.h)
 * and reads the pool's dups in turn, for SECONDS (default 5), timing
 * each read; every read's bytes are checked against the dup's content id
 * in the default domain. Prints one line:
 *   KIND threads N: R reads/s, M MB/s, p50 X us, p99 Y us, bad B, errors E
 * bench/vm/rdma.sh runs it in the guest beside perftest's ib_read_lat and
 * ib_read_bw.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "agent/transport.h"

#define DUPS_MAX 4096

static struct {
	struct config cfg;
	struct auth_key key;
	const struct transport_kind *tk;
	struct cid_domain dom;
	struct dup_loc loc[DUPS_MAX];
	struct cid id[DUPS_MAX];
	long ndups;
	double seconds;
} B;

struct worker {
	pthread_t t;
	double *lat;
	size_t n, cap, bad, errors;
	unsigned no;
};

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static void *work(void *arg)
{
	struct worker *w = arg;
	struct transport *t = B.tk->reader(&B.cfg, &B.key);
	static __thread uint8_t page[4096];
	double end = now_s() + B.seconds;

	if (!t)
		return NULL;
	for (size_t i = w->no; now_s() < end; i++) {
		long d = (long)(i % (size_t)B.ndups);
		double t0 = now_s();
		int rc = t->ops->read(t, &B.loc[d], &B.id[d], page);

		if (rc) {
			w->errors++;
			continue;
		}
		if (w->n == w->cap) {
			w->cap = w->cap ? w->cap * 2 : 65536;
			w->lat = realloc(w->lat, w->cap * sizeof(*w->lat));
			if (!w->lat)
				break;
		}
		w->lat[w->n++] = now_s() - t0;
		if (!cid_eq(cid_of(&B.dom, page), B.id[d]))
			w->bad++;
	}
	transport_destroy(t);
	return NULL;
}

int main(int argc, char **argv)
{
	struct pool_ref ref[DUPS_MAX];
	struct worker *w;
	unsigned threads = argc > 5 ? (unsigned)atoi(argv[5]) : 1;
	size_t n = 0, bad = 0, errors = 0, k = 0;
	double *all, t0;
	char err[256];

	if (argc < 5 || !threads || threads > 64) {
		fprintf(stderr,
			"usage: rdma STATE_DIR HOST:PORT KEY_FILE KIND [THREADS (1-64) [SECONDS]]\n");
		return 2;
	}
	B.seconds = argc > 6 ? atof(argv[6]) : 5;
	if (auth_init() || auth_key_load(&B.key, argv[3], err, sizeof(err))) {
		fprintf(stderr, "rdma: %s\n", err);
		return 1;
	}
	config_defaults(&B.cfg);
	snprintf(B.cfg.node_name, sizeof(B.cfg.node_name), "bench-rdma");
	snprintf(B.cfg.transport, sizeof(B.cfg.transport), "%s", argv[4]);
	B.tk = transport_kind_choose(&B.cfg);
	if (!B.tk)
		return 1;
	if (cid_domain_init(&B.dom, &B.key, B.cfg.domains[0].id, B.cfg.domains[0].name))
		return 1;
	B.ndups = pool_peek(argv[1], ref, B.id, DUPS_MAX);
	if (B.ndups <= 0) {
		fprintf(stderr, "rdma: no dup to read in %s\n", argv[1]);
		return 1;
	}
	for (long i = 0; i < B.ndups; i++) {
		B.loc[i].slot = ref[i].slot;
		B.loc[i].gen = ref[i].gen;
		snprintf(B.loc[i].addr, sizeof(B.loc[i].addr), "%s", argv[2]);
	}
	w = calloc(threads, sizeof(*w));
	if (!w)
		return 1;
	t0 = now_s();
	for (unsigned i = 0; i < threads; i++) {
		w[i].no = i * 97;
		pthread_create(&w[i].t, NULL, work, &w[i]);
	}
	for (unsigned i = 0; i < threads; i++) {
		pthread_join(w[i].t, NULL);
		n += w[i].n;
		bad += w[i].bad;
		errors += w[i].errors;
	}
	t0 = now_s() - t0;
	all = malloc((n ? n : 1) * sizeof(*all));
	if (!all)
		return 1;
	for (unsigned i = 0; i < threads; i++) {
		memcpy(all + k, w[i].lat, w[i].n * sizeof(*all));
		k += w[i].n;
		free(w[i].lat);
	}
	qsort(all, n, sizeof(*all), cmp_double);
	printf("%s threads %u: %.0f reads/s, %.1f MB/s, p50 %.2f us, p99 %.2f us, bad %zu, errors %zu (%ld dups)\n",
	       B.tk->name, threads, (double)n / t0, (double)n * 4096 / t0 / 1e6,
	       n ? all[n / 2] * 1e6 : 0, n ? all[n * 99 / 100] * 1e6 : 0, bad, errors, B.ndups);
	free(all);
	free(w);
	return bad || !n ? 1 : 0;
}
