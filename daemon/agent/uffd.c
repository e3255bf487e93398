/*
 * uffd - see uffd.h.
 */
#include "uffd.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "inject.h"

#define PAGE 4096u

int uffd_copy(int uffd, uint64_t addr, const void *src)
{
	struct uffdio_copy c = { .dst = addr, .src = (uint64_t)(uintptr_t)src, .len = PAGE };

	if (inject("copy_eagain"))
		return -EAGAIN;
	if (ioctl(uffd, UFFDIO_COPY, &c) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

int uffd_zeropage(int uffd, uint64_t addr)
{
	struct uffdio_zeropage z = { .range = { .start = addr, .len = PAGE } };

	if (ioctl(uffd, UFFDIO_ZEROPAGE, &z) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

int uffd_protect(int uffd, uint64_t addr, bool wp)
{
	struct uffdio_writeprotect w = {
		.range = { .start = addr, .len = PAGE },
		.mode = wp ? UFFDIO_WRITEPROTECT_MODE_WP : 0,
	};

	return ioctl(uffd, UFFDIO_WRITEPROTECT, &w) < 0 ? -errno : 0;
}

void uffd_wake(int uffd, uint64_t addr)
{
	uffd_wake_range(uffd, addr, PAGE);
}

int uffd_wake_range(int uffd, uint64_t start, uint64_t len)
{
	struct uffdio_range r = { .start = start, .len = len };

	return ioctl(uffd, UFFDIO_WAKE, &r) < 0 ? -errno : 0;
}

int uffd_unregister(int uffd, uint64_t start, uint64_t end)
{
	struct uffdio_range r = { .start = start, .len = end - start };

	return ioctl(uffd, UFFDIO_UNREGISTER, &r) < 0 ? -errno : 0;
}

int uffd_poison(int uffd, uint64_t addr)
{
	struct uffdio_poison p = { .range = { .start = addr, .len = PAGE } };

	return ioctl(uffd, UFFDIO_POISON, &p) < 0 ? -errno : 0;
}

int uffd_register(int uffd, uint64_t start, uint64_t end, bool wp)
{
	struct uffdio_register r = {
		.range = { .start = start, .len = end - start },
		.mode = UFFDIO_REGISTER_MODE_MISSING | (wp ? UFFDIO_REGISTER_MODE_WP : 0),
	};

	return ioctl(uffd, UFFDIO_REGISTER, &r) < 0 ? -errno : 0;
}

/*
 * Nothing tells when a process without a libcksm connection exits; a
 * write-protect request does: the kernel refuses it with ESRCH once the
 * mm has no users.
 */
bool uffd_mm_gone(int uffd)
{
	struct uffdio_writeprotect w = { .range = { .start = 1u << 20, .len = PAGE } };

	return ioctl(uffd, UFFDIO_WRITEPROTECT, &w) < 0 && errno == ESRCH;
}

int uffd_pagemap_open(pid_t pid)
{
	char path[64];

	snprintf(path, sizeof(path), "/proc/%d/pagemap", (int)pid);
	return open(path, O_RDONLY | O_CLOEXEC);
}

#define PM_PRESENT (1ULL << 63)
#define PM_SWAP	   (1ULL << 62)
#define PM_UFFD_WP (1ULL << 57)

bool uffd_protected(int pagemap, uint64_t addr)
{
	uint64_t e;

	if (pread(pagemap, &e, sizeof(e), (off_t)(addr / PAGE * sizeof(e))) != sizeof(e))
		return false;
	return (e & (PM_PRESENT | PM_SWAP)) && (e & PM_UFFD_WP);
}

int uffd_present(int pagemap, uint64_t addr)
{
	uint64_t e;

	if (pread(pagemap, &e, sizeof(e), (off_t)(addr / PAGE * sizeof(e))) != sizeof(e))
		return -1;
	return (e & (PM_PRESENT | PM_SWAP)) != 0;
}

/* Asked of a userfaultfd of our own, made from /dev/userfaultfd. */
uint64_t uffd_features(int devfd, uint64_t want)
{
	struct uffdio_api api = { .api = UFFD_API };
	int probe = ioctl(devfd, USERFAULTFD_IOC_NEW, O_CLOEXEC);
	uint64_t got = 0;

	if (probe >= 0 && ioctl(probe, UFFDIO_API, &api) == 0)
		got = api.features & want;
	if (probe >= 0)
		close(probe);
	return got;
}
