/*
 * bench/fault - what a fault on an evicted page costs, beside its floor
 * measured in the same run, and how much of the planted saving cksm
 * reaches after 1, 2 and 3 scan intervals.
 *
 *   build/bench/fault [PAGES]      (root: /dev/userfaultfd, the agent)
 *
 * Floor: a bare userfaultfd round trip in this process, a handler thread
 * that sleeps in poll(2), reads the fault and does UFFDIO_COPY from a
 * ready buffer (what cksm's fault thread does at the least).
 *
 * Then a real shard and agent (build/cksmd) and a workload under
 * LD_PRELOAD=build/libcksm.so: PAGES pages, half of them copies of 32
 * contents, a quarter zero pages, a quarter unique. The workload samples
 * its resident pages (mincore) every scan interval, waits until the agent
 * evicted what it can, then touches the copies and the zero pages, two
 * copies then one zero page in turn, timing each fault by what backed it
 * (a local pool dup, or the zero page). Last, it forks FORKS times (each
 * child ends at once), against as many forks of this process, as large
 * and not attached: libcksm's fork() waits for the agent to keep the
 * child's userfaultfd.
 *
 * The environment picks the data transport: FAULT_TRANSPORT (auto, tcp,
 * rdma; default auto), FAULT_DATA_IP (the address the agents serve their
 * pools on, default 127.0.0.1; an RDMA device's for rdma) and
 * FAULT_EVICT_WITH ([agent] evict_with, for kernels without UFFDIO_MOVE).
 */
#include <errno.h>
#include <ftw.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"
#include "agent/transport.h"

#define PAGE	 4096u
#define PASS_MS	 500
#define CONTENTS 32u /* copies per content stay below max_page_sharing */

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static double pct(double *v, size_t n, double p)
{
	qsort(v, n, sizeof(*v), cmp_double);
	return n ? v[(size_t)(p * (double)(n - 1))] : 0;
}

/* ---- the floor ------------------------------------------------------------ */

static int floor_uffd;
static uint8_t floor_src[PAGE] __attribute__((aligned(PAGE)));

static void *floor_handler(void *arg)
{
	size_t n = (size_t)(uintptr_t)arg;

	for (size_t i = 0; i < n;) {
		struct pollfd p = { floor_uffd, POLLIN, 0 };
		struct uffd_msg msg;

		if (poll(&p, 1, -1) < 0 || read(floor_uffd, &msg, sizeof(msg)) != sizeof(msg))
			continue;
		if (msg.event != UFFD_EVENT_PAGEFAULT)
			continue;
		{
			struct uffdio_copy c = {
				.dst = msg.arg.pagefault.address & ~(uint64_t)(PAGE - 1),
				.src = (uint64_t)(uintptr_t)floor_src,
				.len = PAGE,
			};

			ioctl(floor_uffd, UFFDIO_COPY, &c);
		}
		i++;
	}
	return NULL;
}

static void bare_floor(size_t n, double *p50, double *p99)
{
	struct uffdio_api api = { .api = UFFD_API };
	double *lat = malloc(n * sizeof(*lat));
	uint8_t *r =
		mmap(NULL, n * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct uffdio_register reg = { .range = { (uint64_t)(uintptr_t)r, n * PAGE },
				       .mode = UFFDIO_REGISTER_MODE_MISSING };
	pthread_t t;
	volatile uint8_t sink;

	floor_uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (floor_uffd < 0 || ioctl(floor_uffd, UFFDIO_API, &api) ||
	    ioctl(floor_uffd, UFFDIO_REGISTER, &reg)) {
		fprintf(stderr, "fault: userfaultfd: %s\n", strerror(errno));
		exit(1);
	}
	memset(floor_src, 0x5a, PAGE);
	pthread_create(&t, NULL, floor_handler, (void *)(uintptr_t)n);
	for (size_t i = 0; i < n; i++) {
		double t0 = now_s();

		sink = r[i * PAGE];
		lat[i] = now_s() - t0;
	}
	(void)sink;
	pthread_join(t, NULL);
	*p50 = pct(lat, n, 0.50) * 1e6;
	*p99 = pct(lat, n, 0.99) * 1e6;
	close(floor_uffd);
	munmap(r, n * PAGE);
	free(lat);
}

/* ---- a 4 KiB TCP round trip on loopback ----------------------------------- */

static int tcp_listen_fd;

static void *tcp_echo(void *arg)
{
	size_t n = (size_t)(uintptr_t)arg;
	int c = accept(tcp_listen_fd, NULL, NULL), one = 1;
	char req[16], page[PAGE];

	memset(page, 0x5a, sizeof(page));
	setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	for (size_t i = 0; c >= 0 && i < n; i++)
		if (recv(c, req, sizeof(req), MSG_WAITALL) != sizeof(req) ||
		    send(c, page, sizeof(page), 0) != sizeof(page))
			break;
	if (c >= 0)
		close(c);
	return NULL;
}

/* Request 16 bytes, get 4 KiB back: what one remote read costs at least. */
static void tcp_floor(size_t n, double *p50, double *p99)
{
	struct sockaddr_in sa = { .sin_family = AF_INET,
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t sl = sizeof(sa);
	double *lat = malloc(n * sizeof(*lat));
	char req[16] = "read", page[PAGE];
	pthread_t t;
	int c, one = 1;

	tcp_listen_fd = socket(AF_INET, SOCK_STREAM, 0);
	if (tcp_listen_fd < 0 || bind(tcp_listen_fd, (struct sockaddr *)&sa, sizeof(sa)) ||
	    listen(tcp_listen_fd, 1) || getsockname(tcp_listen_fd, (struct sockaddr *)&sa, &sl))
		exit(1);
	pthread_create(&t, NULL, tcp_echo, (void *)(uintptr_t)n);
	c = socket(AF_INET, SOCK_STREAM, 0);
	if (connect(c, (struct sockaddr *)&sa, sizeof(sa)))
		exit(1);
	setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	for (size_t i = 0; i < n; i++) {
		double t0 = now_s();

		if (send(c, req, sizeof(req), 0) != sizeof(req) ||
		    recv(c, page, sizeof(page), MSG_WAITALL) != sizeof(page))
			exit(1);
		lat[i] = now_s() - t0;
	}
	close(c);
	pthread_join(t, NULL);
	close(tcp_listen_fd);
	*p50 = pct(lat, n, 0.50) * 1e6;
	*p99 = pct(lat, n, 0.99) * 1e6;
	free(lat);
}

/* ---- the workload (run under LD_PRELOAD) ------------------------------------ */

static unsigned kind_of(size_t pg, size_t n)
{
	if (pg < n / 2)
		return 1 + (unsigned)(pg % CONTENTS); /* copies */
	if (pg < n / 2 + n / 4)
		return 0; /* zero */
	return 100;	  /* unique */
}

static void fill(uint8_t *p, size_t pg, unsigned k)
{
	if (!k) {
		memset(p, 0, PAGE);
		return;
	}
	for (size_t i = 0; i < PAGE; i += 8) {
		uint64_t v = (uint64_t)(k == 100 ? 1000 + pg : k) * 0x9e3779b97f4a7c15ULL ^ i;

		memcpy(p + i, &v, 8);
	}
}

static size_t resident(const uint8_t *r, size_t n, unsigned char *v)
{
	size_t k = 0;

	if (mincore((void *)r, n * PAGE, v))
		return n;
	for (size_t i = 0; i < n; i++)
		k += v[i] & 1;
	return k;
}

/* forks times fork() in this process, each child ending at once: the
 * time fork() took to return in the parent, p50 and p99 (us). */
#define FORKS 200
static void fork_times(double *p50, double *p99)
{
	static double lat[FORKS];

	for (int i = 0; i < FORKS; i++) {
		double t0 = now_s();
		pid_t c = fork();
		int st;

		if (c == 0)
			_exit(0);
		lat[i] = now_s() - t0;
		if (c > 0)
			waitpid(c, &st, 0);
	}
	*p50 = pct(lat, FORKS, 0.5) * 1e6;
	*p99 = pct(lat, FORKS, 0.99) * 1e6;
}

static int workload(size_t n)
{
	uint8_t *r =
		mmap(NULL, n * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	unsigned char *v = malloc(n);
	double *lat_dup = malloc(n * sizeof(double)), *lat_zero = malloc(n * sizeof(double));
	size_t ideal = n / 2 - CONTENTS + n / 4, nd = 0, nz = 0, bad = 0, res[4];
	double f50, f99, t50, t99, k50, k99;
	uint8_t want[PAGE];
	volatile uint8_t sink;

	for (size_t pg = 0; pg < n; pg++)
		fill(r + pg * PAGE, pg, kind_of(pg, n));
	madvise(r, n * PAGE, MADV_MERGEABLE);
	res[0] = resident(r, n, v);
	for (int k = 1; k <= 3; k++) {
		usleep(PASS_MS * 1000);
		res[k] = resident(r, n, v);
	}
	/* Until the agent has done what it can (or 60 s). */
	for (int i = 0; i < 600 && n - resident(r, n, v) < ideal + CONTENTS; i++)
		usleep(100000);
	/* ... and has settled: nothing more dropped for a second. */
	for (int i = 0, last = -1; i < 20; i++) {
		int now = (int)resident(r, n, v);

		if (now == last)
			break;
		last = now;
		usleep(500000);
	}
	resident(r, n, v);
	/* The floor now, in this process, beside the agent as it is now. */
	bare_floor(n / 4, &f50, &f99);
	tcp_floor(n / 4, &t50, &t99);
	/* Two copies, then a zero page: both kinds share one history. On a
	 * guest whose idle vCPUs halt, tens of ms of back-to-back faults can
	 * move the fault thread and this one onto two vCPUs, and from then on
	 * every wake-up is an interrupt to a halted vCPU (docs/benchmarks.md);
	 * touched one kind after the other, the later kind alone paid it. */
	for (size_t i = 0; i < n / 2 + n / 4; i++) {
		size_t pg = i % 3 == 2 ? n / 2 + i / 3 : 2 * (i / 3) + i % 3;
		unsigned k = kind_of(pg, n);
		double t0;

		if (v[pg] & 1)
			continue;
		t0 = now_s();
		sink = r[pg * PAGE];
		if (k)
			lat_dup[nd++] = now_s() - t0;
		else
			lat_zero[nz++] = now_s() - t0;
	}
	(void)sink;
	for (size_t pg = 0; pg < n; pg++) {
		fill(want, pg, kind_of(pg, n));
		bad += memcmp(want, r + pg * PAGE, PAGE) != 0;
	}
	fork_times(&k50, &k99);
	printf("%zu %zu %zu %zu %zu %zu %.2f %.2f %zu %.2f %.2f %zu %.2f %.2f %.2f %.2f %.2f %.2f\n",
	       ideal, res[0], res[1], res[2], res[3], nd, pct(lat_dup, nd, 0.5) * 1e6,
	       pct(lat_dup, nd, 0.99) * 1e6, nz, pct(lat_zero, nz, 0.5) * 1e6,
	       pct(lat_zero, nz, 0.99) * 1e6, bad, f50, f99, t50, t99, k50, k99);
	return bad ? 1 : 0;
}

/* ---- the cluster ------------------------------------------------------------------ */

static pid_t spawned[4];
static int nspawned;

/* The daemons go with the benchmark, however it ends. */
static void stop_spawned(void)
{
	int st;

	for (int i = nspawned - 1; i >= 0; i--)
		kill(spawned[i], SIGTERM);
	for (int i = nspawned - 1; i >= 0; i--)
		waitpid(spawned[i], &st, 0);
	nspawned = 0;
}

static pid_t spawn(char *const argv[], const char *log, char *const env[])
{
	pid_t p = fork();

	if (p == 0) {
		int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

		if (fd >= 0) {
			dup2(fd, 2);
			if (!env)
				dup2(fd, 1);
		}
		if (env)
			execve(argv[0], argv, env);
		else
			execv(argv[0], argv);
		_exit(127);
	}
	if (p > 0 && nspawned < 4)
		spawned[nspawned++] = p;
	return p;
}

struct result {
	size_t ideal, r0, r1, r2, r3, nd, nz, bad;
	double d50, d99, z50, z99, w50, w99, t50, t99, k50, k99;
};

/* Run the workload against the agent at sock; 0 and *r, or -1. */
static int run_workload(const char *self, const char *lib, const char *sock, size_t n,
			struct result *r)
{
	int pipefd[2], st;
	char line[512] = "";
	ssize_t k;
	pid_t w;

	if (pipe(pipefd))
		return -1;
	w = fork();
	if (w == 0) {
		char np[32], e1[700], e2[200],
			*wa[] = { (char *)self, np, (char *)"--workload", NULL };
		char *env[] = { e1, e2, NULL };

		snprintf(np, sizeof(np), "%zu", n);
		snprintf(e1, sizeof(e1), "LD_PRELOAD=%s", lib);
		snprintf(e2, sizeof(e2), "CKSM_SOCKET=%s", sock);
		dup2(pipefd[1], 1);
		execve(self, wa, env);
		_exit(127);
	}
	close(pipefd[1]);
	k = read(pipefd[0], line, sizeof(line) - 1);
	close(pipefd[0]);
	waitpid(w, &st, 0);
	if (k <= 0 ||
	    sscanf(line, "%zu %zu %zu %zu %zu %zu %lf %lf %zu %lf %lf %zu %lf %lf %lf %lf %lf %lf",
		   &r->ideal, &r->r0, &r->r1, &r->r2, &r->r3, &r->nd, &r->d50, &r->d99, &r->nz,
		   &r->z50, &r->z99, &r->bad, &r->w50, &r->w99, &r->t50, &r->t99, &r->k50,
		   &r->k99) != 18)
		return -1;
	return 0;
}

static double pool_dups(const char *metrics)
{
	char cmd[128], ml[256];
	double dups = -1;
	FILE *m;

	snprintf(cmd, sizeof(cmd), "curl -sf http://%s/metrics", metrics);
	m = popen(cmd, "r");
	while (m && fgets(ml, sizeof(ml), m))
		if (sscanf(ml, "cksm_pool_dups %lf", &dups) == 1)
			break;
	if (m)
		pclose(m);
	return dups;
}

/* nftw: remove what can be, and go on. */
static int remove_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	remove(path);
	return 0;
}

int main(int argc, char **argv)
{
	size_t n = argc > 1 ? (size_t)atol(argv[1]) : 8192;
	/* tmpfs, as /run is where agents run: the agents' state directories
	 * are in it. */
	char dir[] = "/dev/shm/cksm-bench-fault.XXXXXX", conf[128], key[128], sock[128], sockb[128],
	     bin[512], lib[600], daemon[600], *slash;
	double f50, f99;
	struct result r;
	FILE *f;
	const char *kind = getenv("FAULT_TRANSPORT"), *ip = getenv("FAULT_DATA_IP"),
		   *evict_with = getenv("FAULT_EVICT_WITH");
	char data_a[64], data_b[64];

	kind = kind ? kind : "auto";
	ip = ip ? ip : "127.0.0.1";
	snprintf(data_a, sizeof(data_a), "%s:19574", ip);
	snprintf(data_b, sizeof(data_b), "%s:19575", ip);
	if (argc > 2 && !strcmp(argv[2], "--workload"))
		return workload(n);
	atexit(stop_spawned);
	if (n < 64 || n % 4) {
		fprintf(stderr, "usage: fault [PAGES], a multiple of 4 from 64\n");
		return 2;
	}
	bare_floor(n, &f50, &f99);
	printf("floor alone (bare userfaultfd round trip, handler sleeping in poll, idle machine), %zu faults: p50 %.2f us, p99 %.2f us\n",
	       n, f50, f99);

	if (!mkdtemp(dir))
		return 1;
	snprintf(bin, sizeof(bin), "%s", argv[0]);
	slash = strrchr(bin, '/');
	if (!slash)
		return 1;
	*slash = '\0';
	slash = strrchr(bin, '/'); /* build/bench -> build */
	if (!slash)
		return 1;
	*slash = '\0';
	snprintf(conf, sizeof(conf), "%s/cksm.conf", dir);
	snprintf(key, sizeof(key), "%s/cluster.key", dir);
	snprintf(sock, sizeof(sock), "%s/agent.sock", dir);
	snprintf(sockb, sizeof(sockb), "%s/b.sock", dir);
	snprintf(lib, sizeof(lib), "%s/libcksm.so", bin);
	snprintf(daemon, sizeof(daemon), "%s/cksmd", bin);
	{
		char cmd[1024];

		snprintf(cmd, sizeof(cmd), "%s --gen-key %s", daemon, key);
		if (system(cmd))
			return 1;
	}
	f = fopen(conf, "w");
	if (!f)
		return 1;
	/* replicas = 1: a second node backs its pages by the first node's dups */
	fprintf(f,
		"[cluster]\nkey_file = %s\nheartbeat_ms = 200\ndead_after_ms = 2000\nreplicas = 1\n"
		"[log]\nlevel = warn\n"
		"[agent]\nnode_name = bench-a\nmetrics = 127.0.0.1:19570\nsocket = %s\nstate_dir = %s/a.state\n"
		"pass_millisecs = %d\nsleep_millisecs = 0\npages_to_scan = 65536\nevict_age = 1\n"
		"data_listen = %s\ndata_address = %s\ntransport = %s\n%s%s%s"
		"[shard.0]\naddress = 127.0.0.1:19571\nmetrics = 127.0.0.1:19572\n",
		key, sock, dir, PASS_MS, data_a, data_a, kind, evict_with ? "evict_with = " : "",
		evict_with ? evict_with : "", evict_with ? "\n" : "");
	fclose(f);
	{
		char *ca[] = { daemon,		(char *)"-c",	   conf,	(char *)"--role",
			       (char *)"coord", (char *)"--shard", (char *)"0", NULL };
		char *aa[] = {
			daemon, (char *)"-c", conf, (char *)"--role", (char *)"agent", NULL
		};
		char l1[200], l2[200];

		snprintf(l1, sizeof(l1), "%s/coord.log", dir);
		snprintf(l2, sizeof(l2), "%s/agent.log", dir);
		spawn(ca, l1, NULL);
		spawn(aa, l2, NULL);
	}
	for (int i = 0; i < 100 && access(sock, F_OK); i++)
		usleep(50000);
	sleep(1); /* registered */
	if (run_workload(argv[0], lib, sock, n, &r)) {
		fprintf(stderr, "fault: the workload failed (logs in %s)\n", dir);
		return 1;
	}
	printf("workload: %zu pages, planted saving (ideal) %zu pages; scan interval %d ms\n", n,
	       r.ideal, PASS_MS);
	for (int i = 1; i <= 3; i++) {
		size_t rr = i == 1 ? r.r1 : i == 2 ? r.r2 : r.r3;
		size_t saved = r.r0 > rr ? r.r0 - rr : 0;

		printf("  after %d scan interval%s: %zu pages dropped, %.1f%% of the ideal\n", i,
		       i > 1 ? "s" : "", saved,
		       r.ideal ? 100.0 * (double)saved / (double)r.ideal : 0);
	}
	{
		double dups = pool_dups("127.0.0.1:19570");

		if (dups >= 0)
			printf("  the pool holds %.0f dups: net saving after 3 intervals %.0f pages, %.1f%% of the ideal\n",
			       dups, (double)(r.r0 - r.r3) - dups,
			       100.0 * ((double)(r.r0 - r.r3) - dups) / (double)r.ideal);
	}
	printf("floor in the workload, just before its faults, %zu faults: p50 %.2f us, p99 %.2f us\n",
	       n / 4, r.w50, r.w99);
	printf("faults from the local pool, %zu: p50 %.2f us (%.2fx floor), p99 %.2f us (%.2fx floor)\n",
	       r.nd, r.d50, r.d50 / r.w50, r.d99, r.d99 / r.w99);
	printf("faults on zero pages, %zu: p50 %.2f us (%.2fx floor), p99 %.2f us (%.2fx floor)\n",
	       r.nz, r.z50, r.z50 / r.w50, r.z99, r.z99 / r.w99);
	printf("pages read back wrong: %zu\n", r.bad);
	{
		/* fork() of a process as large, not attached, against the workload's
		 * under libcksm (which waits for the agent to keep the child). */
		uint8_t *same = mmap(NULL, n * PAGE, PROT_READ | PROT_WRITE,
				     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		double b50, b99;

		if (same != MAP_FAILED) {
			memset(same, 1, n * PAGE);
			fork_times(&b50, &b99);
			printf("fork(), %d each: not attached p50 %.1f us, p99 %.1f us; under libcksm p50 %.1f us, p99 %.1f us\n",
			       FORKS, b50, b99, r.k50, r.k99);
			munmap(same, n * PAGE);
		}
	}

	/* cksm's own transport, alone: a page read of one of the first node's dups. */
	{
		struct auth_key k;
		char err[256];
		struct config c;
		const struct transport_kind *tk;
		struct transport *t;
		struct dup_loc d = { 0 };
		char state[300];
		struct pool_ref ref;
		struct cid id;
		uint8_t page[PAGE];
		size_t m = n / 4, ok = 0;
		double *lat = malloc(m * sizeof(*lat));

		if (auth_init() || auth_key_load(&k, key, err, sizeof(err)))
			return 1;
		config_defaults(&c);
		snprintf(d.addr, sizeof(d.addr), "%s", data_a);
		strcpy(c.node_name, "bench-reader");
		snprintf(c.transport, sizeof(c.transport), "%s", kind);
		tk = transport_kind_choose(&c);
		t = tk ? tk->reader(&c, &k) : NULL;
		/* A read names its slot's content: the first node's first dup. */
		snprintf(state, sizeof(state), "%s/a.state", dir);
		if (pool_peek(state, &ref, &id, 1) != 1) {
			fprintf(stderr, "fault: no dup in %s to read\n", state);
			transport_destroy(t);
			t = NULL;
		}
		d.slot = ref.slot;
		d.gen = ref.gen;
		for (size_t i = 0; t && i < m; i++) {
			double t0 = now_s();

			if (t->ops->read(t, &d, &id, page) == 0)
				lat[ok++] = now_s() - t0;
		}
		printf("the %s data transport alone (a page read of a dup, authenticated connection kept), %zu reads: p50 %.2f us, p99 %.2f us\n",
		       tk ? tk->name : kind, ok, pct(lat, ok, 0.5) * 1e6, pct(lat, ok, 0.99) * 1e6);
		kind = tk ? tk->name : kind;
		transport_destroy(t);
		free(lat);
	}

	/* A second node: the same contents, backed by the first node's dups. */
	{
		char *ab[] = { daemon,
			       (char *)"-c",
			       conf,
			       (char *)"--role",
			       (char *)"agent",
			       (char *)"--set",
			       (char *)"agent.node_name=bench-b",
			       (char *)"--set",
			       (char *)"agent.metrics=127.0.0.1:19573",
			       (char *)"--set",
			       sockb,
			       (char *)"--set",
			       (char *)"agent.data_listen=127.0.0.1:19575",
			       (char *)"--set",
			       (char *)"agent.data_address=127.0.0.1:19575",
			       (char *)"--set",
			       NULL,
			       NULL };
		char l3[200], setsock[200], setstate[200], setl[100], seta[100];

		snprintf(setl, sizeof(setl), "agent.data_listen=%s", data_b);
		snprintf(seta, sizeof(seta), "agent.data_address=%s", data_b);
		ab[12] = setl;
		ab[14] = seta;
		snprintf(setsock, sizeof(setsock), "agent.socket=%s", sockb);
		ab[10] = setsock;
		snprintf(setstate, sizeof(setstate), "agent.state_dir=%s/b.state", dir);
		ab[16] = setstate;
		snprintf(l3, sizeof(l3), "%s/agent-b.log", dir);
		spawn(ab, l3, NULL);
	}
	for (int i = 0; i < 100 && access(sockb, F_OK); i++)
		usleep(50000);
	sleep(1);
	if (run_workload(argv[0], lib, sockb, n, &r)) {
		fprintf(stderr, "fault: the second workload failed (logs in %s)\n", dir);
		return 1;
	}
	printf("second node: floor in its workload: userfaultfd p50 %.2f us, p99 %.2f us; 4 KiB TCP loopback round trip p50 %.2f us, p99 %.2f us\n",
	       r.w50, r.w99, r.t50, r.t99);
	printf("faults from a remote dup over %s, %zu: p50 %.2f us (%.2fx floor + TCP round trip), p99 %.2f us (%.2fx)\n",
	       kind, r.nd, r.d50, r.d50 / (r.w50 + r.t50), r.d99, r.d99 / (r.w99 + r.t99));
	printf("pages read back wrong: %zu; the second node's pool holds %.0f dups\n", r.bad,
	       pool_dups("127.0.0.1:19573"));
	if (getenv("FAULT_HIST") &&
	    system("curl -sf http://127.0.0.1:19573/metrics | grep -E 'cksm_fault_seconds|faults_total'"))
		return 1;
	stop_spawned();
	/* The agents' pools are files in tmpfs: memory, until removed. */
	nftw(dir, remove_one, 16, FTW_DEPTH | FTW_PHYS);
	return 0;
}
