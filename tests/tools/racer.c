/*
 * cksm-racer - a hostile served process: threads write, read-check and
 * (optionally) madvise(MADV_DONTNEED) random pages of a mergeable region
 * while the agent evicts it, and the main thread mremaps the region back
 * and forth and forks children that check their copy, all at once.
 *
 *   cksm-racer [--pages N] [--threads T] [--seconds S] [--rate OPS]
 *              [--dontneed PCT] [--mremap-ms MS] [--fork-ms MS]
 *              [--settle-ms MS] [--readers R] [--exit-early]
 *
 * Every page holds one of 5 contents (0: zeroes, 1..4: patterns), so
 * that the agent finds duplicates and zero pages to evict. A shadow (not
 * mergeable: below CKSM_MERGE_MIN) says which content each page must
 * hold; a per-page lock keeps the shadow exact. Ops are spread out (RATE
 * per thread per second) so that pages stay still long enough to be
 * evicted between them. A page dropped (DONTNEED) is checked at once: it
 * must read zeroes, as Linux promises. At the end every page is checked
 * against the shadow; a forked child checks its whole copy, writes some
 * pages and checks it again. With --readers, R more threads only read
 * random pages, as fast as they can and through forks too (a fork holds
 * the writers back, not them): a page read back in the parent while it
 * forks must still be the child's content. With --exit-early the process exits 200 ms
 * before its time, with pages evicted and its threads mid-way (the
 * agent must let go of it), after printing its counts so far.
 *
 * Prints one JSON line: ops, checks, bad (pages found with other bytes
 * than the shadow's), old (of those, dropped pages that read a content
 * they held before, not zeroes), the first few bad pages with what they
 * held and the page's last two ops, children forked and their bad pages,
 * and the smallest resident fraction seen (mincore): < 1 means eviction
 * ran. Exit 0 when nothing was wrong.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096u
#define NK   5

enum op { OP_NONE, OP_WRITE, OP_DONTNEED, OP_REMAP, OP_INIT };
static const char *op_name[] = { "none", "write", "dontneed", "remap", "init" };

static size_t npages = 2048;
static unsigned nthreads = 4, seconds = 10, rate = 500, dontneed_pct = 0;
static unsigned mremap_ms = 0, fork_ms = 0, settle_ms = 3000, nreaders = 0;
static bool exit_early;

static uint8_t *region, *other;				  /* the region, and where it moves next */
static uint8_t *shadow;					  /* content per page */
static uint8_t (*hist)[2];				  /* last two ops per page */
static pthread_mutex_t *plock;				  /* per page */
static pthread_rwlock_t big = PTHREAD_RWLOCK_INITIALIZER; /* mremap, fork: write */
static pthread_rwlock_t moving = PTHREAD_RWLOCK_INITIALIZER; /* mremap: write */
static atomic_bool stop;
static atomic_ulong n_ops, n_checks, n_bad, n_old, n_forks, n_child_bad, n_remaps, n_reads;
static pthread_mutex_t report_lock = PTHREAD_MUTEX_INITIALIZER;
static char bad_json[4096];
static size_t bad_len;
static double min_resident = 1.0;

static void pattern(uint8_t *p, unsigned k)
{
	if (!k) {
		memset(p, 0, PAGE);
		return;
	}
	for (size_t i = 0; i < PAGE; i += 8) {
		uint64_t v = (uint64_t)k * 0x9e3779b97f4a7c15ULL ^ i;

		memcpy(p + i, &v, 8);
	}
}

static uint8_t pats[NK][PAGE];

/* Which content p holds, or -1 (other bytes), -2 (a mix of contents). */
static int content_of(const uint8_t *p)
{
	for (int k = 0; k < NK; k++)
		if (!memcmp(p, pats[k], PAGE))
			return k;
	return -1;
}

static void note_bad(size_t pg, unsigned want, const uint8_t *p, const char *who)
{
	atomic_fetch_add(&n_bad, 1);
	if (want == 0 && hist[pg][0] == OP_DONTNEED && content_of(p) > 0)
		atomic_fetch_add(&n_old, 1); /* what cksm kept, not zeroes */
	pthread_mutex_lock(&report_lock);
	if (bad_len < sizeof(bad_json) - 200)
		bad_len += (size_t)snprintf(
			bad_json + bad_len, sizeof(bad_json) - bad_len,
			"%s{\"who\":\"%s\",\"page\":%zu,\"want\":%u,\"got\":%d,\"last\":\"%s\",\"before\":\"%s\"}",
			bad_len ? "," : "", who, pg, want, content_of(p), op_name[hist[pg][0]],
			op_name[hist[pg][1]]);
	pthread_mutex_unlock(&report_lock);
}

static void push_hist(size_t pg, enum op o)
{
	hist[pg][1] = hist[pg][0];
	hist[pg][0] = (uint8_t)o;
}

static uint64_t xs(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static void *worker(void *arg)
{
	uint64_t s = (uint64_t)(uintptr_t)arg * 0x9e3779b97f4a7c15ULL + 1;
	struct timespec gap = { 0, rate ? 1000000000L / rate : 0 };

	while (!atomic_load(&stop)) {
		size_t pg = xs(&s) % npages;
		unsigned r = (unsigned)(xs(&s) % 100);
		uint8_t *p;

		pthread_rwlock_rdlock(&big);
		p = region + pg * PAGE;
		pthread_mutex_lock(&plock[pg]);
		if (r < 50) {
			atomic_fetch_add(&n_checks, 1);
			if (memcmp(p, pats[shadow[pg]], PAGE))
				note_bad(pg, shadow[pg], p, "parent");
		} else if (r < 50 + dontneed_pct) {
			madvise(p, PAGE, MADV_DONTNEED);
			shadow[pg] = 0;
			push_hist(pg, OP_DONTNEED);
			/* Linux: zeroes from now on, at once */
			atomic_fetch_add(&n_checks, 1);
			if (memcmp(p, pats[0], PAGE))
				note_bad(pg, 0, p, "parent");
		} else {
			unsigned k = (shadow[pg] + 1 + (unsigned)(xs(&s) % (NK - 1))) % NK;

			memcpy(p, pats[k], PAGE);
			shadow[pg] = (uint8_t)k;
			push_hist(pg, OP_WRITE);
		}
		pthread_mutex_unlock(&plock[pg]);
		pthread_rwlock_unlock(&big);
		atomic_fetch_add(&n_ops, 1);
		if (gap.tv_nsec)
			nanosleep(&gap, NULL);
	}
	return NULL;
}

/* Reads only: a page of the region at a time, faulting it back. */
static void *reader(void *arg)
{
	uint64_t s = (uint64_t)(uintptr_t)arg * 0x2545f4914f6cdd1dULL + 7;

	while (!atomic_load(&stop)) {
		pthread_rwlock_rdlock(&moving);
		(void)*(volatile uint8_t *)(region + (xs(&s) % npages) * PAGE + 64);
		pthread_rwlock_unlock(&moving);
		atomic_fetch_add(&n_reads, 1);
	}
	return NULL;
}

static size_t verify_all(const char *who)
{
	size_t bad = 0;

	for (size_t pg = 0; pg < npages; pg++)
		if (memcmp(region + pg * PAGE, pats[shadow[pg]], PAGE)) {
			note_bad(pg, shadow[pg], region + pg * PAGE, who);
			bad++;
		}
	return bad;
}

static double resident(void)
{
	static unsigned char *v;
	size_t n = 0;

	if (!v)
		v = malloc(npages);
	if (!v || mincore(region, npages * PAGE, v))
		return 1.0;
	for (size_t i = 0; i < npages; i++)
		n += v[i] & 1;
	return (double)n / (double)npages;
}

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* A child checks its copy (the shadow as it was at the fork), writes some
 * pages, checks again, and exits with its bad count. */
static void child(void)
{
	uint64_t s = (uint64_t)getpid() * 2654435761u;
	size_t bad;

	bad_len = 0; /* the parent's list is not this child's */
	bad = verify_all("child");

	for (int i = 0; i < 64; i++) {
		size_t pg = xs(&s) % npages;
		unsigned k = (unsigned)(xs(&s) % NK);

		memcpy(region + pg * PAGE, pats[k], PAGE);
		shadow[pg] = (uint8_t)k;
	}
	usleep(300000); /* let the agent look at the child too */
	bad += verify_all("child");
	if (bad) {
		struct timespec ts;

		clock_gettime(CLOCK_REALTIME, &ts);
		fprintf(stderr, "%lld.%03ld child %d of %d: %zu bad pages: [%s]\n",
			(long long)ts.tv_sec, ts.tv_nsec / 1000000, (int)getpid(), (int)getppid(),
			bad, bad_json);
	}
	_exit(bad > 250 ? 250 : (int)bad);
}

static void reap(bool block)
{
	int st;
	pid_t c;

	while ((c = waitpid(-1, &st, block ? 0 : WNOHANG)) > 0) {
		if (!WIFEXITED(st))
			atomic_fetch_add(&n_child_bad, 1000);
		else
			atomic_fetch_add(&n_child_bad, (unsigned long)WEXITSTATUS(st));
	}
}

/* The JSON line; the exit status: 1 when a page was wrong. */
static int report(size_t final_bad, bool exited)
{
	pthread_mutex_lock(&report_lock);
	printf("{\"ops\":%lu,\"checks\":%lu,\"bad\":%lu,\"old\":%lu,\"final_bad\":%zu,"
	       "\"remaps\":%lu,\"forks\":%lu,\"child_bad\":%lu,\"reads\":%lu,\"min_resident\":%.3f,"
	       "\"exited_early\":%s,\"bad_pages\":[%s]}\n",
	       atomic_load(&n_ops), atomic_load(&n_checks), atomic_load(&n_bad),
	       atomic_load(&n_old), final_bad, atomic_load(&n_remaps), atomic_load(&n_forks),
	       atomic_load(&n_child_bad), atomic_load(&n_reads), min_resident,
	       exited ? "true" : "false", bad_json);
	fflush(stdout);
	pthread_mutex_unlock(&report_lock);
	return atomic_load(&n_bad) || atomic_load(&n_child_bad) ? 1 : 0;
}

int main(int argc, char **argv)
{
	pthread_t th[64], rd[16];
	uint64_t t_end, next_remap, next_fork;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : "0";

		if (!strcmp(a, "--pages"))
			npages = strtoul(v, NULL, 10), i++;
		else if (!strcmp(a, "--threads"))
			nthreads = (unsigned)strtoul(v, NULL, 10), i++;
		else if (!strcmp(a, "--seconds"))
			seconds = (unsigned)strtoul(v, NULL, 10), i++;
		else if (!strcmp(a, "--rate"))
			rate = (unsigned)strtoul(v, NULL, 10), i++;
		else if (!strcmp(a, "--dontneed"))
			dontneed_pct = (unsigned)strtoul(v, NULL, 10), i++;
		else if (!strcmp(a, "--mremap-ms"))
			mremap_ms = (unsigned)strtoul(v, NULL, 10), i++;
		else if (!strcmp(a, "--fork-ms"))
			fork_ms = (unsigned)strtoul(v, NULL, 10), i++;
		else if (!strcmp(a, "--settle-ms"))
			settle_ms = (unsigned)strtoul(v, NULL, 10), i++;
		else if (!strcmp(a, "--readers"))
			nreaders = (unsigned)strtoul(v, NULL, 10), i++;
		else if (!strcmp(a, "--exit-early"))
			exit_early = true;
		else {
			fprintf(stderr, "racer: unknown option %s\n", a);
			return 2;
		}
	}
	if (nthreads > 64)
		nthreads = 64;
	if (nreaders > 16)
		nreaders = 16;
	if (dontneed_pct > 50)
		dontneed_pct = 50;
	for (int k = 0; k < NK; k++)
		pattern(pats[k], (unsigned)k);
	region = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
		      0);
	other = mmap(NULL, npages * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
		     -1, 0);
	shadow = calloc(npages, 1);
	hist = calloc(npages, sizeof(*hist));
	plock = calloc(npages, sizeof(*plock));
	if (region == MAP_FAILED || other == MAP_FAILED || !shadow || !hist || !plock)
		return 2;
	for (size_t pg = 0; pg < npages; pg++) {
		shadow[pg] = (uint8_t)(pg % NK);
		memcpy(region + pg * PAGE, pats[shadow[pg]], PAGE);
		hist[pg][0] = OP_INIT;
		pthread_mutex_init(&plock[pg], NULL);
	}
	madvise(region, npages * PAGE, MADV_MERGEABLE);
	/* Let the agent evict most of it before the races start. */
	for (uint64_t until = now_ms() + settle_ms; now_ms() < until;) {
		double r = resident();

		if (r < min_resident)
			min_resident = r;
		if (r < 0.5)
			break;
		usleep(50000);
	}
	for (unsigned i = 0; i < nthreads; i++)
		pthread_create(&th[i], NULL, worker, (void *)(uintptr_t)(i + 1));
	for (unsigned i = 0; i < nreaders; i++)
		pthread_create(&rd[i], NULL, reader, (void *)(uintptr_t)(i + 1));
	t_end = now_ms() + seconds * 1000ull;
	next_remap = mremap_ms ? now_ms() + mremap_ms : UINT64_MAX;
	next_fork = fork_ms ? now_ms() + fork_ms : UINT64_MAX;
	while (now_ms() < t_end) {
		double r = resident();

		if (r < min_resident)
			min_resident = r;
		if (now_ms() >= next_remap) {
			void *to;

			pthread_rwlock_wrlock(&big);
			pthread_rwlock_wrlock(&moving);
			to = mremap(region, npages * PAGE, npages * PAGE,
				    MREMAP_MAYMOVE | MREMAP_FIXED, other);
			if (to == MAP_FAILED) {
				perror("mremap");
			} else {
				other = region;
				region = to;
				for (size_t pg = 0; pg < npages; pg++)
					push_hist(pg, OP_REMAP);
				atomic_fetch_add(&n_remaps, 1);
			}
			pthread_rwlock_unlock(&moving);
			pthread_rwlock_unlock(&big);
			next_remap = now_ms() + mremap_ms;
		}
		if (now_ms() >= next_fork) {
			pid_t c;

			pthread_rwlock_wrlock(&big);
			c = fork();
			if (c == 0)
				child();
			pthread_rwlock_unlock(&big);
			if (c > 0)
				atomic_fetch_add(&n_forks, 1);
			next_fork = now_ms() + fork_ms;
		}
		reap(false);
		if (exit_early && now_ms() + 200 >= t_end) {
			/* Exit with pages evicted and writers mid-way. */
			fflush(stdout);
			_exit(report(0, true));
		}
		usleep(10000);
	}
	atomic_store(&stop, true);
	for (unsigned i = 0; i < nthreads; i++)
		pthread_join(th[i], NULL);
	for (unsigned i = 0; i < nreaders; i++)
		pthread_join(rd[i], NULL);
	reap(true);
	return report(verify_all("final"), false);
}
