/*
 * cksm-hotcold - a process with a hot and a cold region of duplicates.
 *
 *   cksm-hotcold [--hot-mb N] [--cold-mb N] [--threads N] [--seconds N]
 *                [--hold-ms N] [--thp] [--mixed-mb N] [--mergeable]
 *
 * Both regions hold the same contents (page i of each: content i % 64),
 * so every page has copies. --mixed-mb adds a cold region where only one
 * page in four is such a copy (the others unique). --thp puts each
 * region in transparent huge pages (2 MiB aligned, MADV_HUGEPAGE) where
 * the kernel gives them, and "thp_kb" says how much it gave
 * (AnonHugePages). --mergeable marks each region MADV_MERGEABLE once it
 * is filled (how a program names its ranges to libcksm without
 * CKSM_MERGE_ALL: their first touch is then the kernel's, which gives
 * huge pages, where a range registered at attach has its first touches
 * filled page by page). Reader threads read random pages of the hot
 * region for the whole run, as a worker reads a shared table; the cold
 * region is never touched after it is filled. At the end every page is
 * checked. One JSON line says, at the end of the reads, what stayed
 * resident (mincore) and how many reads were done, the first and the
 * last quarter of the run apart:
 *   {"reads":N,"reads_first":N,"reads_last":N,"hot_resident":F,
 *    "cold_resident":F,"mixed_resident":F,"thp_kb":N}
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

static uint8_t *hot, *cold, *mixed;
static size_t hot_pages, cold_pages, mixed_pages;
static atomic_bool stop;
static atomic_ulong reads;

/* Page pg of a region: content pg % CONTENTS, or (unique) one of its own. */
static uint8_t byte_of(size_t pg, size_t off, bool unique)
{
	if (unique)
		return (uint8_t)(off == 0   ? pg
				 : off == 1 ? pg >> 8
				 : off == 2 ? 0xa5
					    : off * 31 + 7);
	return (uint8_t)((pg % CONTENTS) * 7 + off * 13 + 1);
}

/* In the mixed region, three pages in four are unique. */
static bool unique_in(const uint8_t *r, size_t pg)
{
	return r == mixed && pg % 4 != 0;
}

static void fill(uint8_t *r, size_t n)
{
	for (size_t pg = 0; pg < n; pg++)
		for (size_t off = 0; off < PAGE; off++)
			r[pg * PAGE + off] = byte_of(pg, off, unique_in(r, pg));
}

static size_t check(const uint8_t *r, size_t n)
{
	size_t bad = 0;

	for (size_t pg = 0; pg < n; pg++)
		for (size_t off = 0; off < PAGE; off += 511)
			if (r[pg * PAGE + off] != byte_of(pg, off, unique_in(r, pg))) {
				bad++;
				break;
			}
	return bad;
}

/* n pages, 2 MiB aligned for huge pages if asked. */
static uint8_t *region(size_t n, bool thp)
{
	size_t len = n * PAGE, huge = 2u << 20;
	uint8_t *p;

	if (!n)
		return NULL;
	p = mmap(NULL, len + huge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return NULL;
	p = (uint8_t *)(((uintptr_t)p + huge - 1) & ~(uintptr_t)(huge - 1));
	madvise(p, len, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
	return p;
}

static unsigned long anon_huge_kb(void)
{
	char line[256];
	unsigned long kb = 0;
	FILE *f = fopen("/proc/self/smaps_rollup", "re");

	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "AnonHugePages: %lu kB", &kb) == 1)
			break;
	if (f)
		fclose(f);
	return kb;
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
	unsigned hot_mb = 16, cold_mb = 16, mixed_mb = 0, nthreads = 2, secs = 20, hold_ms = 0;
	bool thp = false, mergeable = false;
	unsigned long thp_kb;
	pthread_t th[16];
	unsigned long first = 0, last = 0, at;
	size_t bad;

	for (int i = 1; i < argc; i += 2) {
		unsigned v = i + 1 < argc ? (unsigned)strtoul(argv[i + 1], NULL, 10) : 0;

		if (!strcmp(argv[i], "--thp") || !strcmp(argv[i], "--mergeable")) {
			*(argv[i][2] == 't' ? &thp : &mergeable) = true;
			i--;
			continue;
		}
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
		else if (!strcmp(argv[i], "--mixed-mb"))
			mixed_mb = v;
	}
	hot_pages = (size_t)hot_mb * 256;
	cold_pages = (size_t)cold_mb * 256;
	mixed_pages = (size_t)mixed_mb * 256;
	/* Without --thp small pages: cksm and KSM alike see them one by one. */
	hot = region(hot_pages, thp);
	cold = region(cold_pages, thp);
	mixed = region(mixed_pages, thp);
	if (!hot || !cold || (mixed_pages && !mixed) || !nthreads) {
		fprintf(stderr, "cksm-hotcold: bad sizes or out of memory\n");
		return 2;
	}
	fill(hot, hot_pages);
	fill(cold, cold_pages);
	fill(mixed, mixed_pages);
	thp_kb = anon_huge_kb();
	if (mergeable) {
		madvise(hot, hot_pages * PAGE, MADV_MERGEABLE);
		madvise(cold, cold_pages * PAGE, MADV_MERGEABLE);
		if (mixed_pages)
			madvise(mixed, mixed_pages * PAGE, MADV_MERGEABLE);
	}
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
	       "\"cold_resident\":%.3f,\"mixed_resident\":%.3f,\"thp_kb\":%lu}\n",
	       at, first, at - last, resident(hot, hot_pages), resident(cold, cold_pages),
	       mixed_pages ? resident(mixed, mixed_pages) : 1.0, thp_kb);
	fflush(stdout);
	usleep(hold_ms * 1000u);
	bad = check(hot, hot_pages) + check(cold, cold_pages) + check(mixed, mixed_pages);
	printf("{\"bad\":%zu}\n", bad);
	return bad ? 1 : 0;
}
