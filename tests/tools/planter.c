/*
 * cksm-planter - a process with planted memory, for scanner tests.
 *
 *   cksm-planter [--seed N] [--mergeable] [--lifetime-ms MS] [--extra-mib N]
 *
 * Maps one VMA per kind of page (each between two PROT_NONE guard pages,
 * so the kernel cannot merge it with a neighbour), fills it, prints one JSON line
 * describing the regions, and then lives until SIGTERM (or MS):
 *
 *   unique    32 pages, each different (same seed, same bytes)
 *   dup       32 copies of one page
 *   zero      16 pages written with zeroes
 *   volatile   8 pages a thread rewrites continuously
 *   mlocked    8 different pages, mlock()ed
 *   shared     8 pages of a MAP_SHARED anonymous mapping
 *   kzero      8 pages only read, so they map the kernel's zero page
 *
 *   extra      N MiB of different pages (--extra-mib, default 0)
 *   thp        with --thp, 2 MiB aligned, MADV_HUGEPAGE, written: one THP
 *              when the kernel can give one ("thp_backed" says whether)
 *
 * With --mergeable the private regions get MADV_MERGEABLE (KSM's opt-in).
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "util.h"

#define PAGE 4096

struct region {
	const char *name;
	size_t pages;
	int shared;
	uint8_t *p;
};

static struct region regions[] = {
	{ "unique", 32, 0, NULL },  { "dup", 32, 0, NULL },    { "zero", 16, 0, NULL },
	{ "volatile", 8, 0, NULL }, { "mlocked", 8, 0, NULL }, { "shared", 8, 1, NULL },
	{ "kzero", 8, 0, NULL },    { "extra", 0, 0, NULL },   { "thp", 0, 0, NULL },
};

static atomic_int stop;

static void fill(uint8_t *page, uint64_t seed)
{
	uint64_t *w = (uint64_t *)page;

	for (size_t i = 0; i < PAGE / 8; i++)
		w[i] = mix64(seed * 1000003 + i + 1);
}

static uint8_t *map_region(size_t pages, int shared)
{
	size_t len = (pages + 2) * PAGE;
	uint8_t *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
			  (shared ? MAP_SHARED : MAP_PRIVATE) | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	/* PROT_NONE guards on both sides keep the region a VMA of its own. */
	if (mprotect(p, PAGE, PROT_NONE) || mprotect(p + (pages + 1) * PAGE, PAGE, PROT_NONE)) {
		perror("mprotect");
		exit(1);
	}
	return p + PAGE;
}

static void *rewrite(void *arg)
{
	struct region *r = arg;
	uint64_t n = 0;

	while (!atomic_load(&stop))
		for (size_t i = 0; i < r->pages; i++) {
			volatile uint64_t *w = (volatile uint64_t *)(r->p + i * PAGE);

			n++;
			w[n % (PAGE / 8)] = n;
		}
	return NULL;
}

/* One 2 MiB aligned region between guards, asking for a THP. */
static void map_thp(struct region *r)
{
	size_t huge = 2u << 20, len = 3 * huge;
	uint8_t *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint8_t *a;

	if (p == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	a = (uint8_t *)(((uintptr_t)p + huge) & ~(huge - 1));
	mprotect(p, (size_t)(a - p), PROT_NONE);
	mprotect(a + huge, (size_t)(p + len - (a + huge)), PROT_NONE);
	madvise(a, huge, MADV_HUGEPAGE);
	r->p = a;
	r->pages = huge / PAGE;
	for (size_t i = 0; i < r->pages; i++)
		fill(r->p + i * PAGE, 500000 + i);
}

/* Does smaps show the region backed by a huge page? */
static int thp_backed(const struct region *r)
{
	char line[256];
	unsigned long start = 0, end = 0, kb = 0;
	int in = 0;
	FILE *f = fopen("/proc/self/smaps", "r");

	while (f && fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%lx-%lx ", &start, &end) == 2 &&
		    strchr(line, '-') < strchr(line, ' '))
			in = start == (uintptr_t)r->p;
		else if (in && sscanf(line, "AnonHugePages: %lu kB", &kb) == 1)
			break;
	}
	if (f)
		fclose(f);
	return kb >= 2048;
}

static struct region *find(const char *name)
{
	for (size_t i = 0; i < sizeof(regions) / sizeof(regions[0]); i++)
		if (!strcmp(regions[i].name, name))
			return &regions[i];
	return NULL;
}

static void on_term(int sig)
{
	(void)sig;
	atomic_store(&stop, 1);
}

int main(int argc, char **argv)
{
	uint64_t seed = 1;
	long lifetime_ms = -1;
	int mergeable = 0, thp = 0;
	pthread_t writer;
	struct region *r;
	volatile uint8_t sink = 0;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--seed") && i + 1 < argc)
			seed = strtoull(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--mergeable"))
			mergeable = 1;
		else if (!strcmp(argv[i], "--lifetime-ms") && i + 1 < argc)
			lifetime_ms = strtol(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--thp"))
			thp = 1;
		else if (!strcmp(argv[i], "--extra-mib") && i + 1 < argc)
			find("extra")->pages = strtoul(argv[++i], NULL, 10) * 256;
		else {
			fprintf(stderr,
				"usage: cksm-planter [--seed N] [--mergeable] [--lifetime-ms MS]\n");
			return 2;
		}
	}
	signal(SIGTERM, on_term);
	signal(SIGINT, on_term);
	for (size_t i = 0; i < sizeof(regions) / sizeof(regions[0]); i++) {
		regions[i].p = map_region(regions[i].pages, regions[i].shared);
		if (mergeable && !regions[i].shared &&
		    madvise(regions[i].p, regions[i].pages * PAGE, MADV_MERGEABLE)) {
			perror("madvise(MADV_MERGEABLE)");
			return 1;
		}
	}
	r = find("unique");
	for (size_t i = 0; i < r->pages; i++)
		fill(r->p + i * PAGE, seed * 7919 + i);
	r = find("dup");
	for (size_t i = 0; i < r->pages; i++)
		fill(r->p + i * PAGE, seed * 7919 + 100000);
	r = find("zero");
	memset(r->p, 0, r->pages * PAGE);
	r = find("mlocked");
	for (size_t i = 0; i < r->pages; i++)
		fill(r->p + i * PAGE, seed * 7919 + 200000 + i);
	if (mlock(r->p, r->pages * PAGE)) {
		perror("mlock");
		return 1;
	}
	r = find("shared");
	for (size_t i = 0; i < r->pages; i++)
		fill(r->p + i * PAGE, seed * 7919 + 300000 + i);
	r = find("kzero");
	for (size_t i = 0; i < r->pages; i++)
		sink += r->p[i * PAGE];
	if (thp)
		map_thp(find("thp"));
	r = find("extra");
	for (size_t i = 0; i < r->pages; i++)
		fill(r->p + i * PAGE, seed * 7919 + 1000000 + i);
	r = find("volatile");
	for (size_t i = 0; i < r->pages; i++)
		fill(r->p + i * PAGE, seed * 7919 + 400000 + i);
	if (pthread_create(&writer, NULL, rewrite, r)) {
		perror("pthread_create");
		return 1;
	}

	printf("{\"pid\":%d,\"regions\":{", (int)getpid());
	for (size_t i = 0; i < sizeof(regions) / sizeof(regions[0]); i++)
		printf("%s\"%s\":{\"start\":%llu,\"pages\":%zu}", i ? "," : "", regions[i].name,
		       (unsigned long long)(uintptr_t)regions[i].p, regions[i].pages);
	printf("},\"thp_backed\":%d}\n", thp && thp_backed(find("thp")));
	fflush(stdout);

	if (lifetime_ms >= 0) {
		struct timespec ts = { lifetime_ms / 1000, (lifetime_ms % 1000) * 1000000 };

		while (nanosleep(&ts, &ts) && errno == EINTR && !atomic_load(&stop)) {
		}
		atomic_store(&stop, 1);
	}
	while (!atomic_load(&stop))
		usleep(10000);
	pthread_join(writer, NULL);
	return sink == 255 ? 3 : 0;
}
