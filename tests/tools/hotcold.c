/*
 * cksm-hotcold - a process with a hot and a cold region of duplicates.
 *
 *   cksm-hotcold [--hot-mb N] [--cold-mb N] [--threads N] [--seconds N]
 *                [--hold-ms N]
 *
 * Both regions hold the same contents (page i of each: content i % 64),
 * so every page has copies. Reader threads read random pages of the hot
 * region for the whole run, as a worker reads a shared table; the cold
 * region is never touched after it is filled. At the end every page is
 * checked. One JSON line says, at the end of the reads, what stayed
 * resident (mincore) and how many reads were done, the first and the
 * last quarter of the run apart:
 *   {"reads":N,"reads_first":N,"reads_last":N,"hot_resident":F,
 *    "cold_resident":F}
 * and after --hold-ms (for a look at the agent's counters before the
 * check faults the cold pages back) a second one:
 *   {"bad":N}
 * Exit 1 when a page was wrong.
 */
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

#define PAGE	 4096u
#define CONTENTS 64u

static uint8_t *hot, *cold;
static size_t hot_pages, cold_pages;
static atomic_bool stop;
static atomic_ulong reads;

static uint8_t byte_of(size_t pg, size_t off)
{
	return (uint8_t)((pg % CONTENTS) * 7 + off * 13 + 1);
}

static void fill(uint8_t *r, size_t n)
{
	for (size_t pg = 0; pg < n; pg++)
		for (size_t off = 0; off < PAGE; off++)
			r[pg * PAGE + off] = byte_of(pg, off);
}

static size_t check(const uint8_t *r, size_t n)
{
	size_t bad = 0;

	for (size_t pg = 0; pg < n; pg++)
		for (size_t off = 0; off < PAGE; off += 512)
			if (r[pg * PAGE + off] != byte_of(pg, off)) {
				bad++;
				break;
			}
	return bad;
}

static double resident(const uint8_t *r, size_t n)
{
	unsigned char *v = malloc(n);
	size_t k = 0;

	if (!v || mincore((void *)r, n * PAGE, v)) {
		free(v);
		return -1;
	}
	for (size_t i = 0; i < n; i++)
		k += v[i] & 1;
	free(v);
	return (double)k / (double)n;
}

static void *reader(void *arg)
{
	uint64_t s = (uint64_t)(uintptr_t)arg * 0x9e3779b97f4a7c15ULL + 1;
	unsigned sum = 0;

	while (!atomic_load(&stop)) {
		s ^= s << 13;
		s ^= s >> 7;
		s ^= s << 17;
		/* A slice of 256 bytes of a random page. */
		const uint8_t *p = hot + (s % hot_pages) * PAGE + (s >> 40) % 16 * 256;

		for (int i = 0; i < 256; i += 64)
			sum += p[i];
		atomic_fetch_add(&reads, 1);
	}
	return (void *)(uintptr_t)sum;
}

int main(int argc, char **argv)
{
	unsigned hot_mb = 16, cold_mb = 16, nthreads = 2, secs = 20, hold_ms = 0;
	pthread_t th[16];
	unsigned long first = 0, last = 0, at;
	size_t bad;

	for (int i = 1; i + 1 < argc; i += 2) {
		unsigned v = (unsigned)strtoul(argv[i + 1], NULL, 10);

		if (!strcmp(argv[i], "--hot-mb"))
			hot_mb = v;
		else if (!strcmp(argv[i], "--cold-mb"))
			cold_mb = v;
		else if (!strcmp(argv[i], "--threads"))
			nthreads = v < 16 ? v : 16;
		else if (!strcmp(argv[i], "--seconds"))
			secs = v;
		else if (!strcmp(argv[i], "--hold-ms"))
			hold_ms = v;
	}
	hot_pages = (size_t)hot_mb * 256;
	cold_pages = (size_t)cold_mb * 256;
	hot = mmap(NULL, hot_pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
		   0);
	cold = mmap(NULL, cold_pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		    -1, 0);
	if (hot == MAP_FAILED || cold == MAP_FAILED || !hot_pages || !cold_pages || !nthreads) {
		fprintf(stderr, "cksm-hotcold: bad sizes or out of memory\n");
		return 2;
	}
	/* Small pages: cksm and KSM alike see them one by one. */
	madvise(hot, hot_pages * PAGE, MADV_NOHUGEPAGE);
	madvise(cold, cold_pages * PAGE, MADV_NOHUGEPAGE);
	fill(hot, hot_pages);
	fill(cold, cold_pages);
	for (unsigned i = 0; i < nthreads; i++)
		pthread_create(&th[i], NULL, reader, (void *)(uintptr_t)(i + 1));
	for (unsigned t = 0; t < secs * 10; t++) {
		usleep(100000);
		at = atomic_load(&reads);
		if (t + 1 == (secs * 10 + 3) / 4)
			first = at;
		if (t + 1 == secs * 10 - (secs * 10 + 3) / 4)
			last = at;
	}
	atomic_store(&stop, true);
	for (unsigned i = 0; i < nthreads; i++)
		pthread_join(th[i], NULL);
	at = atomic_load(&reads);
	printf("{\"reads\":%lu,\"reads_first\":%lu,\"reads_last\":%lu,\"hot_resident\":%.3f,"
	       "\"cold_resident\":%.3f}\n",
	       at, first, at - last, resident(hot, hot_pages), resident(cold, cold_pages));
	fflush(stdout);
	usleep(hold_ms * 1000u);
	bad = check(hot, hot_pages) + check(cold, cold_pages);
	printf("{\"bad\":%zu}\n", bad);
	return bad ? 1 : 0;
}
