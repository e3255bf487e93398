/*
 * cksm-ksmwork - one worker of bench/ksm/ksm.sh: a table of duplicates as
 * a worker keeps a shared read-only table in anonymous memory. Page i of
 * the table holds content i (so every worker's table is the same, and no
 * two pages of one table are), filled at start.
 *
 *   cksm-ksmwork --mb N --seconds S [--threads T] [--mode MODE]
 *                [--contents N] [--mergeable] [--out FILE]
 *
 * MODE: hot   T threads read random pages (a 64-byte line each) all along
 *       cold  nothing touches the table after it is filled
 *       thp   as cold, in transparent huge pages (MADV_HUGEPAGE)
 *       mix   as hot, and one read in 64 is a write (of the same byte
 *             back: the page is written, its content stays)
 * --contents N: page i holds content i % N instead (N = 1: every page
 * holds the same bytes, as a guest's pages poisoned at their free do).
 * --mergeable marks the table MADV_MERGEABLE once filled (the kernel's
 * KSM, or libcksm's agent, then look at it). Every second a line
 * "t reads" goes to FILE (or stdout); at the end every page is checked
 * and one JSON line says {"reads":N,"bad":N}. Exit 1 when a page was
 * wrong.
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

#define PAGE 4096u

static uint8_t *table;
static size_t npages;
static atomic_bool stop;
static atomic_ullong reads;
static bool writes;
static size_t contents; /* page i holds content i % contents (0: i) */

static uint64_t word_of(size_t page, size_t w)
{
	if (contents)
		page %= contents;
	return (uint64_t)page * 0x9e3779b97f4a7c15ull ^ (uint64_t)w * 0xbf58476d1ce4e5b9ull;
}

static void fill(void)
{
	for (size_t i = 0; i < npages; i++) {
		uint64_t *p = (uint64_t *)(table + i * PAGE);

		for (size_t w = 0; w < PAGE / 8; w++)
			p[w] = word_of(i, w);
	}
}

static void *reader(void *arg)
{
	uint64_t x = (uintptr_t)arg * 0x2545f4914f6cdd1dull + 1, sum = 0, n = 0;

	while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
		size_t page, line;
		volatile uint64_t *p;

		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		page = (size_t)(x % npages);
		line = (size_t)(x >> 40) % (PAGE / 64);
		p = (volatile uint64_t *)(table + page * PAGE + line * 64);
		sum += p[0];
		if (writes && (x & 63) == 0)
			p[1] = p[1];
		if (++n == 4096) {
			atomic_fetch_add_explicit(&reads, n, memory_order_relaxed);
			n = 0;
		}
	}
	atomic_fetch_add(&reads, n);
	return (void *)(uintptr_t)(sum & 1);
}

int main(int argc, char **argv)
{
	unsigned mb = 64, secs = 30, threads = 1, bad = 0;
	const char *mode = "hot", *out = NULL;
	bool mergeable = false, thp, hot;
	pthread_t t[64];
	FILE *o = stdout;
	size_t len;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--mb") && i + 1 < argc)
			mb = (unsigned)atoi(argv[++i]);
		else if (!strcmp(argv[i], "--seconds") && i + 1 < argc)
			secs = (unsigned)atoi(argv[++i]);
		else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
			threads = (unsigned)atoi(argv[++i]);
		else if (!strcmp(argv[i], "--mode") && i + 1 < argc)
			mode = argv[++i];
		else if (!strcmp(argv[i], "--out") && i + 1 < argc)
			out = argv[++i];
		else if (!strcmp(argv[i], "--contents") && i + 1 < argc)
			contents = (size_t)atoi(argv[++i]);
		else if (!strcmp(argv[i], "--mergeable"))
			mergeable = true;
		else {
			fprintf(stderr,
				"usage: cksm-ksmwork --mb N --seconds S [--threads T] "
				"[--mode hot|cold|thp|mix] [--contents N] [--mergeable] [--out FILE]\n");
			return 2;
		}
	}
	if (threads < 1 || threads > 64 || !mb)
		return 2;
	thp = !strcmp(mode, "thp");
	hot = !strcmp(mode, "hot") || !strcmp(mode, "mix");
	writes = !strcmp(mode, "mix");
	if (out && !(o = fopen(out, "w")))
		return 2;
	npages = (size_t)mb << 8;
	len = npages * PAGE;
	/* 2 MiB aligned, for huge pages */
	table = mmap(NULL, len + (2u << 20), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		     -1, 0);
	if (table == MAP_FAILED)
		return 2;
	table = (uint8_t *)(((uintptr_t)table + (2u << 20) - 1) & ~(uintptr_t)((2u << 20) - 1));
	if (thp)
		madvise(table, len, MADV_HUGEPAGE);
	fill();
	if (mergeable)
		madvise(table, len, MADV_MERGEABLE);
	for (unsigned i = 0; hot && i < threads; i++)
		pthread_create(&t[i], NULL, reader, (void *)(uintptr_t)(i + 1));
	for (unsigned s = 1; s <= secs; s++) {
		sleep(1);
		fprintf(o, "%u %llu\n", s, (unsigned long long)atomic_load(&reads));
		fflush(o);
	}
	atomic_store(&stop, true);
	for (unsigned i = 0; hot && i < threads; i++)
		pthread_join(t[i], NULL);
	for (size_t i = 0; i < npages; i++) {
		const uint64_t *p = (const uint64_t *)(table + i * PAGE);

		for (size_t w = 0; w < PAGE / 8; w += 64)
			if (p[w] != word_of(i, w)) {
				bad++;
				break;
			}
	}
	fprintf(o, "{\"reads\":%llu,\"bad\":%u}\n", (unsigned long long)atomic_load(&reads), bad);
	if (o != stdout)
		fclose(o);
	return bad != 0;
}
