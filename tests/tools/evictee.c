/*
 * cksm-evictee - scenarios on pages cksm has evicted, each checking that
 * the process reads what Linux promises.
 *
 *   cksm-evictee SCENARIO [--pages N] [--wait-s S] [--stop]
 *
 * A mergeable region of N pages: the first half copies of 4 contents,
 * the second half zero pages. The process waits (up to S seconds) until
 * at least 90% of the region is no longer resident (mincore), that is,
 * evicted by the agent, then runs SCENARIO:
 *
 *   verify    read everything back and check it
 *   fork      fork; the child checks the region and exits; so does the
 *             parent after the child wrote to its copy (no leak across)
 *   children  fork 3 children at once, and one more that execs true: each
 *             of the 3 checks the region, writes it again (the same
 *             contents, its own pages now), waits until at least 90% of
 *             it is evicted again (which needs the child attached to the
 *             agent) and checks it once more; "children_evicted" counts
 *             those that saw it
 *   mremap    move the region elsewhere, check it at the new place
 *   munmap    unmap the first quarter, check the rest
 *   dontneed  madvise(MADV_DONTNEED) the first quarter: it must read as
 *             zeroes; the rest as written
 *   dma       a second region like the first, marked MADV_DONTFORK (as
 *             memory registered for RDMA is): once the first is evicted,
 *             "dma_evicted" counts the second's pages gone (0 where pages
 *             are dropped; where they are moved, the kernel guards pins)
 *   hold      stay (checked by the test from outside) until SIGTERM
 *   hot       print the region's address, then read it all every 20 ms
 *             (every evicted page comes back, again and again) and check
 *             it, until SIGTERM
 *
 * With --stop the process stops itself (SIGSTOP) once the region is
 * written, before anything is evicted, until continued.
 *
 * Prints one JSON line: {"scenario", "evicted", "checked", "bad"}; exit 0
 * when nothing was wrong.
 */
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include <time.h>

#define PAGE 4096u

static size_t npages = 1024;

static unsigned content_of(size_t pg)
{
	return pg < npages / 2 ? 1 + (unsigned)(pg % 4) : 0;
}

static void fill(uint8_t *p, unsigned k)
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

/* Pages of [from, to) of region not holding want(pg). */
static size_t check(const uint8_t *region, size_t from, size_t to, bool zero)
{
	uint8_t want[PAGE];
	size_t bad = 0;

	for (size_t pg = from; pg < to; pg++) {
		fill(want, zero ? 0 : content_of(pg));
		if (memcmp(region + pg * PAGE, want, PAGE)) {
			fprintf(stderr, "evictee: page %zu is wrong\n", pg);
			bad++;
		}
	}
	return bad;
}

static size_t resident(const uint8_t *region)
{
	unsigned char *v = malloc(npages);
	size_t n = 0;

	if (!v || mincore((void *)region, npages * PAGE, v)) {
		free(v);
		return npages;
	}
	for (size_t i = 0; i < npages; i++)
		n += v[i] & 1;
	free(v);
	return n;
}

static volatile sig_atomic_t stop;
static uint8_t *dma; /* the "dma" scenario's second region */

static void on_term(int sig)
{
	(void)sig;
	stop = 1;
}

static size_t wait_evicted(const uint8_t *r, unsigned wait_s)
{
	for (unsigned i = 0; i < wait_s * 10 && resident(r) > npages / 10; i++)
		usleep(100000);
	return npages - resident(r);
}

/* A forked child: check, write again, be evicted, check. 0, 1 bad, 3 not evicted. */
static int child_work(uint8_t *r, unsigned wait_s)
{
	size_t bad = check(r, 0, npages, false);

	for (size_t pg = 0; pg < npages; pg++)
		fill(r + pg * PAGE, content_of(pg));
	if (wait_evicted(r, wait_s) < npages - npages / 10)
		return bad ? 1 : 3;
	bad += check(r, 0, npages, false);
	return bad ? 1 : 0;
}

int main(int argc, char **argv)
{
	const char *sc = argc > 1 ? argv[1] : "";
	unsigned wait_s = 30;
	bool stop_self = false;
	size_t bad = 0, checked, evicted;
	uint8_t *r;

	for (int i = 2; i < argc; i += 2) {
		if (!strcmp(argv[i], "--stop")) {
			stop_self = true;
			i--;
		} else if (i + 1 >= argc) {
			break;
		} else if (!strcmp(argv[i], "--pages"))
			npages = (size_t)atol(argv[i + 1]);
		else if (!strcmp(argv[i], "--wait-s"))
			wait_s = (unsigned)atoi(argv[i + 1]);
	}
	if (npages < 8 || npages % 4) {
		fprintf(stderr, "evictee: --pages takes a multiple of 4, at least 8\n");
		return 2;
	}
	checked = npages;
	r = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (r == MAP_FAILED)
		return 1;
	if (!strcmp(sc, "dma")) {
		uint8_t *d = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE,
				  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

		if (d == MAP_FAILED)
			return 1;
		for (size_t pg = 0; pg < npages; pg++)
			fill(d + pg * PAGE, content_of(pg));
		if (madvise(d, npages * PAGE, MADV_MERGEABLE) ||
		    madvise(d, npages * PAGE, MADV_DONTFORK))
			perror("evictee: madvise");
		dma = d;
	}
	for (size_t pg = 0; pg < npages; pg++)
		fill(r + pg * PAGE, content_of(pg));
	if (madvise(r, npages * PAGE, MADV_MERGEABLE))
		perror("evictee: madvise(MADV_MERGEABLE)");
	if (stop_self)
		raise(SIGSTOP);
	evicted = wait_evicted(r, wait_s);

	if (!strcmp(sc, "verify")) {
		bad = check(r, 0, npages, false);
	} else if (!strcmp(sc, "fork")) {
		pid_t c = fork();
		int st = 0;

		if (c == 0) {
			size_t b = check(r, 0, npages, false);

			fill(r, 7); /* the child's copy only */
			_exit(b ? 1 : 0);
		}
		if (c < 0 || waitpid(c, &st, 0) != c || !WIFEXITED(st) || WEXITSTATUS(st))
			bad++;
		bad += check(r, 0, npages, false);
	} else if (!strcmp(sc, "children")) {
		pid_t c[4];
		unsigned good = 0;

		for (int i = 0; i < 4; i++) {
			c[i] = fork();
			if (c[i] == 0 && i == 3)
				execlp("true", "true", (char *)NULL);
			if (c[i] == 0)
				_exit(child_work(r, wait_s));
		}
		for (int i = 0; i < 4; i++) {
			int st = 0;

			if (c[i] < 0 || waitpid(c[i], &st, 0) != c[i] || !WIFEXITED(st)) {
				bad++;
				continue;
			}
			if (WEXITSTATUS(st) == 1 || (i == 3 && WEXITSTATUS(st)))
				bad++;
			good += i < 3 && WEXITSTATUS(st) == 0;
		}
		bad += check(r, 0, npages, false);
		printf("{\"scenario\":\"%s\",\"evicted\":%zu,\"checked\":%zu,\"bad\":%zu,\"children_evicted\":%u}\n",
		       sc, evicted, checked, bad, good);
		return bad ? 1 : 0;
	} else if (!strcmp(sc, "mremap")) {
		uint8_t *to =
			mmap(NULL, npages * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		uint8_t *m =
			mremap(r, npages * PAGE, npages * PAGE, MREMAP_MAYMOVE | MREMAP_FIXED, to);

		if (m == MAP_FAILED) {
			perror("evictee: mremap");
			return 1;
		}
		bad = check(m, 0, npages, false);
	} else if (!strcmp(sc, "munmap")) {
		munmap(r, npages / 4 * PAGE);
		bad = check(r, npages / 4, npages, false);
		checked = npages - npages / 4;
	} else if (!strcmp(sc, "dontneed")) {
		madvise(r, npages / 4 * PAGE, MADV_DONTNEED);
		bad = check(r, 0, npages / 4, true) + check(r, npages / 4, npages, false);
	} else if (!strcmp(sc, "hot")) {
		signal(SIGTERM, on_term);
		printf("{\"scenario\":\"hot\",\"pid\":%d,\"addr\":\"%lx\",\"evicted\":%zu}\n",
		       (int)getpid(), (unsigned long)(uintptr_t)r, evicted);
		fflush(stdout);
		while (!stop && !bad) {
			bad += check(r, 0, npages, false);
			usleep(20000);
		}
	} else if (!strcmp(sc, "dma")) {
		size_t gone = npages - resident(dma);

		bad = check(r, 0, npages, false) + check(dma, 0, npages, false);
		printf("{\"scenario\":\"dma\",\"evicted\":%zu,\"dma_evicted\":%zu,\"bad\":%zu}\n",
		       evicted, gone, bad);
		return bad ? 1 : 0;
	} else if (!strcmp(sc, "hold")) {
		signal(SIGTERM, on_term);
		printf("{\"scenario\":\"hold\",\"pid\":%d,\"evicted\":%zu}\n", (int)getpid(),
		       evicted);
		fflush(stdout);
		while (!stop)
			pause();
		bad = check(r, 0, npages, false);
	} else {
		fprintf(stderr, "evictee: unknown scenario '%s'\n", sc);
		return 2;
	}
	printf("{\"scenario\":\"%s\",\"evicted\":%zu,\"checked\":%zu,\"bad\":%zu}\n", sc, evicted,
	       checked, bad);
	return bad ? 1 : 0;
}
