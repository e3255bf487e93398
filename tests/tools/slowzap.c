/*
 * libcksm-slowzap.so - holds one zap of an eviction between libcksm's
 * check and its madvise, for as long as a test likes. Used by tests only.
 *
 *   LD_PRELOAD="libcksm.so libcksm-slowzap.so" SLOWZAP_DIR=DIR program
 *
 * Loaded after libcksm, its madvise is the one libcksm finds behind its
 * own (dlsym(RTLD_NEXT)). Once DIR/arm exists, the first one-page
 * madvise(MADV_DONTNEED), the zap libcksm's service thread makes when
 * the agent has backed a page, writes the page's address to DIR/inzap
 * and waits for DIR/zapgo before it goes on to the kernel: the moment a
 * process is descheduled or stopped (SIGSTOP) after libcksm saw the agent
 * there and before the page is dropped, made long. Once DIR/lie exists,
 * every one-page madvise(MADV_DONTNEED) returns 0 and drops nothing: a
 * process that answers its zaps without keeping them. Once DIR/slow
 * exists (holding a number of milliseconds), every one-page
 * madvise(MADV_DONTNEED) sleeps that long first, and with DIR/fail too
 * it then fails (EAGAIN) instead of dropping the page: a process whose
 * zaps come late, or late and failed. Every other call goes straight
 * through. A zap that moves the page (UFFDIO_MOVE, local.h) rather than
 * dropping it is held, slowed, failed or faked the same way, at its
 * ioctl; with DIR/after (a number of milliseconds) the held move, once
 * made, sleeps that long before libcksm goes on to check what it moved.
 */
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "uffd_move.h"

#define PAGE 4096u

static bool held; /* the one zap was held already */

static bool in_dir(char *path, size_t len, const char *dir, const char *name)
{
	snprintf(path, len, "%s/%s", dir, name);
	return access(path, F_OK) == 0;
}

/* Hold the zap of the page at addr until DIR/zapgo exists. */
static void hold(const char *dir, void *addr)
{
	char path[512], tmp[520];
	FILE *f;

	held = true;
	snprintf(path, sizeof(path), "%s/inzap", dir);
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	f = fopen(tmp, "w");
	if (f) {
		fprintf(f, "%p\n", addr);
		if (fclose(f) == 0)
			rename(tmp, path);
	}
	while (!in_dir(path, sizeof(path), dir, "zapgo"))
		usleep(10000);
}

/* DIR/slow: sleep its milliseconds; true when DIR/fail says to fail then. */
static bool slowed(const char *dir)
{
	char path[512];
	unsigned ms = 0;
	FILE *f;

	if (!in_dir(path, sizeof(path), dir, "slow"))
		return false;
	f = fopen(path, "r");
	if (f) {
		if (fscanf(f, "%u", &ms) != 1)
			ms = 0;
		fclose(f);
	}
	usleep(ms * 1000u);
	return in_dir(path, sizeof(path), dir, "fail");
}

int madvise(void *addr, size_t len, int advice)
{
	static int (*real)(void *, size_t, int);
	const char *dir = getenv("SLOWZAP_DIR");
	char path[512];

	if (!real)
		real = (int (*)(void *, size_t, int))dlsym(RTLD_NEXT, "madvise");
	if (!real) {
		errno = ENOSYS;
		return -1;
	}
	if (dir && advice == MADV_DONTNEED && len == PAGE && in_dir(path, sizeof(path), dir, "lie"))
		return 0;
	if (dir && advice == MADV_DONTNEED && len == PAGE && slowed(dir)) {
		errno = EAGAIN;
		return -1;
	}
	if (dir && !held && advice == MADV_DONTNEED && len == PAGE &&
	    in_dir(path, sizeof(path), dir, "arm"))
		hold(dir, addr);
	return real(addr, len, advice);
}

/* libcksm's moves, as its one-page drops above. */
int ioctl(int fd, unsigned long req, ...)
{
	static int (*real)(int, unsigned long, ...);
	const char *dir = getenv("SLOWZAP_DIR");
	struct uffdio_move *mv;
	char path[512];
	va_list ap;
	void *arg;

	va_start(ap, req);
	arg = va_arg(ap, void *);
	va_end(ap);
	if (!real)
		real = (int (*)(int, unsigned long, ...))dlsym(RTLD_NEXT, "ioctl");
	if (!real) {
		errno = ENOSYS;
		return -1;
	}
	if (!dir || req != UFFDIO_MOVE)
		return real(fd, req, arg);
	mv = arg;
	if (in_dir(path, sizeof(path), dir, "lie")) {
		mv->move = (int64_t)mv->len;
		return 0;
	}
	if (slowed(dir)) {
		errno = EAGAIN;
		return -1;
	}
	if (!held && in_dir(path, sizeof(path), dir, "arm")) {
		unsigned ms = 0;
		FILE *f;
		int rc, e;

		hold(dir, (void *)(uintptr_t)mv->src);
		rc = real(fd, req, arg);
		e = errno;
		if (in_dir(path, sizeof(path), dir, "after") && (f = fopen(path, "r"))) {
			if (fscanf(f, "%u", &ms) != 1)
				ms = 0;
			fclose(f);
			usleep(ms * 1000u);
		}
		errno = e;
		return rc;
	}
	return real(fd, req, arg);
}
