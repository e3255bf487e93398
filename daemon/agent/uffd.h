/*
 * uffd - the userfaultfd operations the agent performs on a served
 * process's userfaultfd, one 4 KiB page at a time. Each returns 0 or a
 * negative errno; -EAGAIN means the mm is changing (an event is waiting
 * to be read) and the call is to be made again after it.
 */
#ifndef CKSM_UFFD_H
#define CKSM_UFFD_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <linux/userfaultfd.h>

/* Linux 6.6 and later; the build's headers may be older than the kernel. */
#ifndef UFFD_FEATURE_POISON
#define UFFD_FEATURE_POISON (1 << 14)
struct uffdio_poison {
	struct uffdio_range range;
	__u64 mode;
	__s64 updated;
};
#define UFFDIO_POISON _IOWR(UFFDIO, 0x08, struct uffdio_poison)
#endif

#include "uffd_move.h" /* Linux 6.8 and later */

/* The features the agent asks of every userfaultfd (POISON where there). */
#define UFFD_FEATURES_NEEDED                                                              \
	(UFFD_FEATURE_EVENT_FORK | UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_EVENT_REMOVE | \
	 UFFD_FEATURE_EVENT_UNMAP | UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_THREAD_ID)

/* Fill the missing page at addr with src (EEXIST counts as done). */
int uffd_copy(int uffd, uint64_t addr, const void *src);
/* Map the zero page at addr (EEXIST counts as done). */
int uffd_zeropage(int uffd, uint64_t addr);
/* Set (wp) or clear write-protection of one page; clearing wakes waiters. */
int uffd_protect(int uffd, uint64_t addr, bool wp);
/* Wake the threads waiting on a fault at addr (they fault again). */
void uffd_wake(int uffd, uint64_t addr);
/* The threads waiting on faults in [start, start + len) try again: 0 or -errno. */
int uffd_wake_range(int uffd, uint64_t start, uint64_t len);
/* [start, end) is not watched any more: 0 or a negative errno. */
int uffd_unregister(int uffd, uint64_t start, uint64_t end);
/* Poison the page at addr: whoever touches it gets SIGBUS. */
int uffd_poison(int uffd, uint64_t addr);
/* Register [start, end) for MISSING faults, and WP faults with wp. */
int uffd_register(int uffd, uint64_t start, uint64_t end, bool wp);
/* Has the mm behind uffd gone (no users left)? */
bool uffd_mm_gone(int uffd);
/* /proc/PID/pagemap opened for uffd_protected, or -1. */
int uffd_pagemap_open(pid_t pid);

/*
 * Is the page at addr there (in memory or swapped) and write-protected
 * through the userfaultfd, as pagemap (opened by uffd_pagemap_open) says?
 * Protecting a page that is not there does nothing: a read then faults a
 * fresh page in, unprotected.
 */
bool uffd_protected(int pagemap, uint64_t addr);

/* Is the page at addr there (in memory or swapped): 1, 0, or -1 if unknown. */
int uffd_present(int pagemap, uint64_t addr);

/* The features of this kernel's userfaultfd, among those asked, or 0. */
uint64_t uffd_features(int devfd, uint64_t want);

#endif
