/*
 * cksm-remapper - a served process that maps a page anew while the agent
 * evicts it: the case of an allocator that unmaps a page (munmap, brk)
 * and maps it again, and writes there, between the agent's compare and
 * the page's drop. Used by tests/integration/evict_remap_page.sh.
 *
 *   cksm-remapper DIR [--pages N] [--back | --touch] [--raw]
 *
 * N pages (256) of one content, marked mergeable once DIR/arm exists. Run
 * under libcksm and libcksm-slowzap.so: when DIR/inzap names the page whose
 * zap is held, a thread unmaps the page, maps it anew at the same address
 * and writes it with another content; DIR/zapgo lets the zap go on once
 * that is done, or after 300 ms if the program's mapping calls wait for
 * the zap (libcksm's map guard). After 1.5 s the page must hold what was
 * written there, and every other page its content. With --back the page
 * is instead moved away and back (mremap, twice): it must hold its
 * content still. With --touch the thread then reads the page for 1 s, and
 * must never find it all zeroes (slowzap's DIR/after widens the moment
 * between libcksm's move and its check). With --raw the unmap and the
 * mapping are made by system calls of its own (no C library wrapper, as
 * an allocator inside the C library makes them), which libcksm cannot
 * hold back. Prints one JSON line (with
 * during_hold: whether the remap was made while the zap was held); exit
 * 0 when nothing was wrong.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096u

static uint8_t *a; /* the page under eviction */
static bool back, touch, raw;
static atomic_bool remapped;
static atomic_uint zeroes_seen;
static const char *remap_error;

static int wait_file(const char *path, unsigned ms)
{
	for (unsigned i = 0; i < ms / 10; i++) {
		if (access(path, F_OK) == 0)
			return 0;
		usleep(10000);
	}
	return -1;
}

static const char *what(const uint8_t *p, uint8_t want)
{
	size_t same = 0, zero = 0;

	for (size_t i = 0; i < PAGE; i++) {
		same += p[i] == want;
		zero += p[i] == 0;
	}
	return same == PAGE ? "written" : zero == PAGE ? "zeroes" : "other";
}

/* A system call made here, not through the C library (x86-64). */
static long raw6(long nr, long a1, long a2, long a3, long a4, long a5, long a6)
{
#if defined(__x86_64__)
	long ret;
	register long r10 __asm__("r10") = a4;
	register long r8 __asm__("r8") = a5;
	register long r9 __asm__("r9") = a6;

	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(nr), "D"(a1), "S"(a2), "d"(a3), "r"(r10), "r"(r8), "r"(r9)
			 : "rcx", "r11", "memory");
	return ret;
#else
	return syscall(nr, a1, a2, a3, a4, a5, a6);
#endif
}

static bool unmap_map(void)
{
	if (!raw)
		return munmap(a, PAGE) == 0 &&
		       mmap(a, PAGE, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == a;
	return raw6(SYS_munmap, (long)a, PAGE, 0, 0, 0, 0) == 0 &&
	       raw6(SYS_mmap, (long)a, PAGE, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == (long)a;
}

static double now_s(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void *remap(void *arg)
{
	(void)arg;
	if (back) {
		/* The page under eviction, moved away and back, unchanged. */
		uint8_t *spare = mmap(NULL, PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

		if (spare == MAP_FAILED ||
		    mremap(a, PAGE, PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, spare) != spare ||
		    mremap(spare, PAGE, PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, a) != a)
			remap_error = "mremap failed";
		atomic_store(&remapped, true);
		return NULL;
	}
	/* The page under eviction, mapped anew and written. */
	if (!unmap_map()) {
		remap_error = "munmap or mmap failed";
		atomic_store(&remapped, true);
		return NULL;
	}
	memset(a, 0xc3, PAGE);
	atomic_store(&remapped, true);
	for (double end = now_s() + 1; touch && now_s() < end;)
		if (!strcmp(what(a, 0xc3), "zeroes"))
			atomic_fetch_add(&zeroes_seen, 1);
	return NULL;
}

int main(int argc, char **argv)
{
	size_t npages = 256, others_bad = 0;
	char path[512];
	uint8_t *region;
	bool during;
	pthread_t t;
	FILE *f;
	void *at = NULL;

	if (argc < 2) {
		fprintf(stderr,
			"usage: cksm-remapper DIR [--pages N] [--back | --touch] [--raw]\n");
		return 2;
	}
	for (int i = 2; i < argc; i++)
		if (!strcmp(argv[i], "--pages") && i + 1 < argc)
			npages = strtoul(argv[++i], NULL, 10);
		else if (!strcmp(argv[i], "--back"))
			back = true;
		else if (!strcmp(argv[i], "--touch"))
			touch = true;
		else if (!strcmp(argv[i], "--raw"))
			raw = true;
	region = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
		      0);
	if (region == MAP_FAILED) {
		perror("mmap");
		return 1;
	}
	/* Filled and marked once the test armed the hold (after attaching):
	 * nothing of it is evicted before. */
	snprintf(path, sizeof(path), "%s/arm", argv[1]);
	if (wait_file(path, 30000)) {
		printf("{\"error\":\"%s never came\"}\n", path);
		return 1;
	}
	memset(region, 0x5a, npages * PAGE);
	madvise(region, npages * PAGE, MADV_MERGEABLE);
	snprintf(path, sizeof(path), "%s/inzap", argv[1]);
	if (wait_file(path, 60000)) {
		printf("{\"error\":\"no zap was held within 60 s\"}\n");
		return 1;
	}
	f = fopen(path, "r");
	if (!f || fscanf(f, "%p", &at) != 1) {
		printf("{\"error\":\"cannot read %s\"}\n", path);
		return 1;
	}
	fclose(f);
	a = at;
	if (a < region || a >= region + npages * PAGE) {
		printf("{\"error\":\"the held zap is not of the region\"}\n");
		return 1;
	}
	if (pthread_create(&t, NULL, remap, NULL)) {
		printf("{\"error\":\"no thread\"}\n");
		return 1;
	}
	for (int i = 0; i < 30 && !atomic_load(&remapped); i++)
		usleep(10000);
	during = atomic_load(&remapped);
	snprintf(path, sizeof(path), "%s/zapgo", argv[1]);
	fclose(fopen(path, "w"));
	pthread_join(t, NULL);
	if (remap_error) {
		printf("{\"error\":\"%s\"}\n", remap_error);
		return 1;
	}
	usleep(1500 * 1000);
	if (back) {
		for (size_t i = 0; i < npages; i++)
			if (strcmp(what(region + i * PAGE, 0x5a), "written"))
				others_bad++;
		printf("{\"addr\":\"%p\",\"during_hold\":%s,\"moved_back\":\"%s\",\"bad\":%zu}\n",
		       (void *)a, during ? "true" : "false",
		       strcmp(what(a, 0x5a), "written") ? what(a, 0x5a) : "kept", others_bad);
		return others_bad != 0;
	}
	for (size_t i = 0; i < npages; i++)
		if (region + i * PAGE != a && strcmp(what(region + i * PAGE, 0x5a), "written"))
			others_bad++;
	printf("{\"addr\":\"%p\",\"during_hold\":%s,\"page\":\"%s\",\"zeroes_seen\":%u,\"others_bad\":%zu}\n",
	       (void *)a, during ? "true" : "false", what(a, 0xc3), atomic_load(&zeroes_seen),
	       others_bad);
	return strcmp(what(a, 0xc3), "written") || others_bad || atomic_load(&zeroes_seen);
}
