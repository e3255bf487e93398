/*
 * cksm-rangeflood - an attached process that never stops naming ranges:
 * it makes NMAPS one-page mappings (every other one read-only, so each is
 * a VMA of its own and /proc/PID/maps is long), then NTHREADS threads
 * call madvise(MADV_MERGEABLE) on one page in a loop for SECS seconds;
 * under libcksm each call is a RANGE message. Prints one JSON line with
 * the calls made.
 *
 *   cksm-rangeflood NMAPS NTHREADS SECS
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static char *page;
static int secs;
static unsigned long sent;

static void *spam(void *arg)
{
	time_t end = time(NULL) + secs;
	unsigned long n = 0;

	(void)arg;
	while (time(NULL) < end) {
		madvise(page, 4096, MADV_MERGEABLE);
		n++;
	}
	__atomic_add_fetch(&sent, n, __ATOMIC_RELAXED);
	return NULL;
}

int main(int argc, char **argv)
{
	int nmaps = argc > 1 ? atoi(argv[1]) : 10000, nt = argc > 2 ? atoi(argv[2]) : 2;
	pthread_t t[64];
	char *base;

	secs = argc > 3 ? atoi(argv[3]) : 20;
	if (nmaps < 2 || nt < 1 || nt > 64)
		return 2;
	base = mmap(NULL, (size_t)nmaps * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
		    -1, 0);
	if (base == MAP_FAILED)
		return 2;
	for (int i = 0; i < nmaps; i += 2)
		mprotect(base + (size_t)i * 4096, 4096, PROT_READ);
	page = base + 4096;
	page[0] = 1;
	for (int i = 0; i < nt; i++)
		pthread_create(&t[i], NULL, spam, NULL);
	for (int i = 0; i < nt; i++)
		pthread_join(t[i], NULL);
	printf("{\"madvise_calls\":%lu}\n", sent);
	return 0;
}
