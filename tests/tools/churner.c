/*
 * cksm-churner - a workload that checks its own memory while cksm evicts
 * it and brings it back.
 *
 *   cksm-churner [--threads N] [--pages N] [--seconds S] [--quiet-ms MS]
 *                [--burst-pages N] [--report-ms MS] [--contents N] [--check-pages N]
 *
 * One mergeable region (madvise(MADV_MERGEABLE)) of N pages, each page
 * holding one of N contents (8 by default; content 0 is all zeroes), so that duplicates
 * and zero pages abound. Each thread owns every Nth page and keeps, per
 * page, which content it wrote last. Rounds alternate: a burst of random
 * rewrites (racing the agent's write-protect, compare and zap), then a
 * quiet spell long enough for pages to turn stable and be evicted, then a
 * check of every owned page against what was written (touching evicted
 * pages brings them back). At the end the main thread digests the whole
 * region and compares it with the digest of what was written. Prints one
 * JSON line; exit 0 when every check matched. With --burst-pages a burst
 * rewrites that many pages per thread instead of rewriting for 200 ms;
 * with --check-pages a check looks at that many of a thread's pages, at
 * random, instead of all; with --report-ms a JSON line of progress (with
 * VmRSS) every MS.
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "../../bench/bench.h"

#define PAGE 4096u

static unsigned nthreads = 4, seconds = 10, quiet_ms = 1500, burst_pages, report_ms;
static unsigned contents = 8; /* content 0 is the zero page */
static unsigned check_pages;  /* per round and thread; 0: every owned page */
static size_t npages = 2048;
static uint8_t *region;
static uint8_t *shadow; /* content written last, per page */
static atomic_ulong mismatches, checks, writes;
static atomic_bool done;

static void fill(uint8_t *p, unsigned k)
{
	if (k == 0) {
		memset(p, 0, PAGE);
		return;
	}
	for (size_t i = 0; i < PAGE; i += 8) {
		uint64_t v = (uint64_t)k * 0x9e3779b97f4a7c15ULL ^ i;

		memcpy(p + i, &v, 8);
	}
}

static bool holds(const uint8_t *p, unsigned k)
{
	static __thread uint8_t want[PAGE];

	fill(want, k);
	return memcmp(p, want, PAGE) == 0;
}

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void *worker(void *arg)
{
	unsigned id = (unsigned)(uintptr_t)arg, seed = id * 7919 + 1;

	while (!atomic_load(&done)) {
		uint64_t until = now_ms() + 200;
		unsigned left = burst_pages;

		/* burst */
		while (burst_pages ? left-- > 0 : now_ms() < until) {
			size_t pg = id + (size_t)((unsigned)rand_r(&seed) % (npages / nthreads)) *
						 nthreads;
			unsigned k = (unsigned)rand_r(&seed) % contents;

			if (pg >= npages)
				continue;
			fill(region + pg * PAGE, k);
			shadow[pg] = (uint8_t)k;
			atomic_fetch_add(&writes, 1);
		}
		/* quiet: the agent scans, finds stable pages, evicts */
		usleep(quiet_ms * 1000u);
		/* check every owned page, or check_pages of them at random */
		for (size_t i = 0, pg = id; pg < npages && (!check_pages || i < check_pages); i++,
			    pg = check_pages ? id + (size_t)((unsigned)rand_r(&seed) %
							     (npages / nthreads)) * nthreads
					     : pg + nthreads) {
			if (pg >= npages)
				continue;
			if (!holds(region + pg * PAGE, shadow[pg])) {
				atomic_fetch_add(&mismatches, 1);
				fprintf(stderr, "churner: page %zu does not hold content %u\n", pg,
					shadow[pg]);
			}
			atomic_fetch_add(&checks, 1);
		}
	}
	return NULL;
}

static uint64_t digest(const uint8_t *p, size_t len)
{
	uint64_t h = 0xcbf29ce484222325ULL;

	for (size_t i = 0; i < len; i += 8) {
		uint64_t v;

		memcpy(&v, p + i, 8);
		h = (h ^ v) * 0x100000001b3ULL;
	}
	return h;
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "threads", required_argument, NULL, 't' },
		{ "pages", required_argument, NULL, 'p' },
		{ "seconds", required_argument, NULL, 's' },
		{ "quiet-ms", required_argument, NULL, 'q' },
		{ "burst-pages", required_argument, NULL, 'b' },
		{ "report-ms", required_argument, NULL, 'r' },
		{ "contents", required_argument, NULL, 'c' },
		{ "check-pages", required_argument, NULL, 'k' },
		{ NULL, 0, NULL, 0 },
	};
	pthread_t t[64];
	uint8_t *expect;
	uint64_t got, want;
	int c;

	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		if (c == 't')
			nthreads = (unsigned)atoi(optarg);
		else if (c == 'p')
			npages = (size_t)atol(optarg);
		else if (c == 's')
			seconds = (unsigned)atoi(optarg);
		else if (c == 'q')
			quiet_ms = (unsigned)atoi(optarg);
		else if (c == 'b')
			burst_pages = (unsigned)atoi(optarg);
		else if (c == 'r')
			report_ms = (unsigned)atoi(optarg);
		else if (c == 'c')
			contents = (unsigned)atoi(optarg);
		else if (c == 'k')
			check_pages = (unsigned)atoi(optarg);
		else
			return 2;
	}
	if (nthreads < 1 || nthreads > 64 || npages < nthreads || contents < 2 || contents > 255) {
		fprintf(stderr,
			"churner: 1 to 64 threads, at least one page each, 2 to 255 contents\n");
		return 2;
	}
	region = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
		      0);
	shadow = calloc(npages, 1);
	expect = malloc(npages * PAGE);
	if (region == MAP_FAILED || !shadow || !expect)
		return 1;
	if (madvise(region, npages * PAGE, MADV_MERGEABLE))
		perror("churner: madvise(MADV_MERGEABLE)");
	for (size_t pg = 0; pg < npages; pg++) {
		shadow[pg] = (uint8_t)(pg % contents);
		fill(region + pg * PAGE, shadow[pg]);
	}
	if (report_ms)
		printf("{\"pid\":%d,\"writes\":0,\"checks\":0,\"mismatches\":0,\"rss_kb\":%ld}\n",
		       (int)getpid(), rss_kb());
	for (unsigned i = 0; i < nthreads; i++)
		pthread_create(&t[i], NULL, worker, (void *)(uintptr_t)i);
	if (report_ms) {
		setvbuf(stdout, NULL, _IOLBF, 0);
		for (uint64_t end = now_ms() + seconds * 1000ULL; now_ms() < end;) {
			usleep(report_ms * 1000u);
			printf("{\"pid\":%d,\"writes\":%lu,\"checks\":%lu,\"mismatches\":%lu,"
			       "\"rss_kb\":%ld}\n",
			       (int)getpid(), atomic_load(&writes), atomic_load(&checks),
			       atomic_load(&mismatches), rss_kb());
		}
	} else {
		sleep(seconds);
	}
	atomic_store(&done, true);
	for (unsigned i = 0; i < nthreads; i++)
		pthread_join(t[i], NULL);
	for (size_t pg = 0; pg < npages; pg++)
		fill(expect + pg * PAGE, shadow[pg]);
	got = digest(region, npages * PAGE);
	want = digest(expect, npages * PAGE);
	printf("{\"pid\":%d,\"writes\":%lu,\"checks\":%lu,\"mismatches\":%lu,"
	       "\"digest\":\"%016llx\",\"expected\":\"%016llx\"}\n",
	       (int)getpid(), atomic_load(&writes), atomic_load(&checks), atomic_load(&mismatches),
	       (unsigned long long)got, (unsigned long long)want);
	return atomic_load(&mismatches) || got != want ? 1 : 0;
}
