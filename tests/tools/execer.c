/*
 * cksm-execer - an attached process that runs exec and keeps its
 * connection to the agent, to have the agent read another image's
 * memory as if it were the one it serves.
 *
 *   cksm-execer [--pages N]
 *
 * Under libcksm (CKSM_MERGE_ALL=1) it fills N pages with one content P,
 * waits until the agent has evicted some of them, then starts a sibling
 * that shares its address space (clone(CLONE_VM), so that the served
 * memory and its userfaultfd live on), keeps every descriptor across
 * exec and runs itself again without libcksm ("after" mode). The new
 * image maps the same addresses, fills them with another content Q and
 * reads, without answering, what the agent sends on the inherited
 * connection, until a ZAP comes or the agent closes it (at most 45 s). An agent that took the new image for the memory
 * it serves would evict its pages against the old address space's
 * registration: each ZAP it sends tells which of the new image's pages
 * hold Q, and would drop a page of the sibling's. Prints one JSON line:
 * {"evicted_before": E, "zaps_after": Z}; exit 0 unless something
 * failed to run.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "local.h"

#define PAGE 4096u

static void fill(uint8_t *r, size_t n, uint64_t k)
{
	for (size_t p = 0; p < n; p++)
		for (size_t i = 0; i < PAGE; i += 8)
			memcpy(r + p * PAGE + i, &(uint64_t){ k * 0x9e3779b97f4a7c15ULL ^ i }, 8);
}

static size_t evicted(const uint8_t *r, size_t n)
{
	unsigned char *v = malloc(n);
	size_t e = 0;

	if (v && mincore((void *)r, n * PAGE, v) == 0)
		for (size_t i = 0; i < n; i++)
			e += !(v[i] & 1);
	free(v);
	return e;
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int sibling(void *arg)
{
	(void)arg;
	sleep(60); /* holds the served address space while the image is new */
	return 0;
}

/* The new image: same addresses, another content, and the agent's words. */
static int after(uint8_t *want, size_t n, size_t before)
{
	uint8_t *r;
	struct pollfd pf[64];
	unsigned nf = 0, zaps = 0, open = 1;
	DIR *d = opendir("/proc/self/fd");
	struct dirent *de;
	struct cksm_local m;

	while (d && (de = readdir(d)) && nf < 64) {
		int fd = atoi(de->d_name);
		struct stat st;

		if (fd > 2 && fd != dirfd(d) && fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode))
			pf[nf++] = (struct pollfd){ .fd = fd, .events = POLLIN };
	}
	/* A zap of the old image's that was under way at the exec comes
	 * now, before this image has anything there: not counted. */
	for (double end = now() + 0.3; now() < end;)
		for (unsigned i = 0; i < nf; i++)
			while (recv(pf[i].fd, &m, sizeof(m), MSG_DONTWAIT) > 0) {
			}
	r = mmap(want, n * PAGE, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	if (r != want) {
		perror("execer: mmap");
		return 2;
	}
	fill(r, n, 2);
	/* Until a ZAP comes, or the agent lets the connection go. */
	for (double end = now() + 45; now() < end && !zaps;) {
		open = 0;
		for (unsigned i = 0; i < nf; i++)
			open += pf[i].fd >= 0;
		if (!open)
			break;
		if (poll(pf, nf, 200) <= 0)
			continue;
		for (unsigned i = 0; i < nf; i++) {
			if (!(pf[i].revents & POLLIN))
				continue;
			if (recv(pf[i].fd, &m, sizeof(m), MSG_DONTWAIT) == (ssize_t)sizeof(m) &&
			    m.type == CKSM_LOCAL_ZAP)
				zaps++;
			if (pf[i].revents & (POLLHUP | POLLERR))
				pf[i].fd = -1;
		}
	}
	printf("{\"evicted_before\":%zu,\"zaps_after\":%u,\"let_go\":%s}\n", before, zaps,
	       open ? "false" : "true");
	return 0;
}

int main(int argc, char **argv)
{
	size_t n = 1024;
	uint8_t *r;
	char a1[32], a2[32], a3[32];
	DIR *d;
	struct dirent *de;
	static char stack[64 << 10];

	if (argc == 5 && !strcmp(argv[1], "after"))
		return after((uint8_t *)(uintptr_t)strtoull(argv[2], NULL, 16),
			     strtoul(argv[3], NULL, 10), strtoul(argv[4], NULL, 10));
	if (argc == 3 && !strcmp(argv[1], "--pages"))
		n = strtoul(argv[2], NULL, 10);
	r = mmap(NULL, n * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (r == MAP_FAILED)
		return 2;
	fill(r, n, 1);
	for (double end = now() + 30; evicted(r, n) < n / 16 && now() < end;)
		usleep(20000);
	if (evicted(r, n) == 0) {
		fprintf(stderr, "execer: nothing was evicted\n");
		return 2;
	}
	if (clone(sibling, stack + sizeof(stack), CLONE_VM | SIGCHLD, NULL) < 0) {
		perror("execer: clone");
		return 2;
	}
	d = opendir("/proc/self/fd");
	while (d && (de = readdir(d)))
		fcntl(atoi(de->d_name), F_SETFD, 0);
	snprintf(a1, sizeof(a1), "%lx", (unsigned long)(uintptr_t)r);
	snprintf(a2, sizeof(a2), "%zu", n);
	snprintf(a3, sizeof(a3), "%zu", evicted(r, n));
	unsetenv("LD_PRELOAD");
	execl("/proc/self/exe", argv[0], "after", a1, a2, a3, (char *)NULL);
	perror("execer: exec");
	return 2;
}
