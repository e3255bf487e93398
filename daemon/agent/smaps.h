/*
 * smaps - a process's mappings as /proc/PID/smaps describes them: the
 * address range, whether the mapping is private anonymous memory, the
 * kernel's VmFlags that decide whether cksm may touch it, and its
 * resident size (for counting skipped pages without walking them).
 */
#ifndef CKSM_SMAPS_H
#define CKSM_SMAPS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

enum vma_flag {
	VMA_ANON = 1u << 0,	 /* no backing file ([heap], [stack], anonymous) */
	VMA_SHARED = 1u << 1,	 /* MAP_SHARED (perms "s" or VmFlags "sh") */
	VMA_MERGEABLE = 1u << 2, /* KSM opt-in, VmFlags "mg" */
	VMA_LOCKED = 1u << 3,	 /* mlocked, VmFlags "lo" */
	VMA_HUGETLB = 1u << 4,	 /* hugetlbfs, VmFlags "ht" */
	VMA_IO = 1u << 5,	 /* VM_IO or VM_PFNMAP, VmFlags "io"/"pf" */
	VMA_SPECIAL = 1u << 6,	 /* [vdso], [vvar], [vsyscall] */
	VMA_READABLE = 1u << 7,	 /* perms "r" */
	VMA_UFFD = 1u << 8,	 /* registered with a userfaultfd, VmFlags "um" */
	VMA_DONTCOPY = 1u << 9,	 /* MADV_DONTFORK, VmFlags "dc": DMA-registered */
};

struct vma_info {
	uint64_t start;	       /* first byte */
	uint64_t end;	       /* one past the last byte */
	uint32_t flags;	       /* enum vma_flag */
	uint64_t rss_pages;    /* resident 4 KiB pages (Rss) */
	uint64_t anon_huge_kb; /* AnonHugePages: THP-backed part */
	uint64_t hugetlb_kb;   /* Private_Hugetlb + Shared_Hugetlb */
};

/*
 * Read the mappings of pid into *out (malloc'd, caller frees) and their
 * count into *n. Returns 0, -ESRCH when the process is gone (a normal
 * event), or another negative errno.
 */
int smaps_read(pid_t pid, struct vma_info **out, size_t *n);

/* Parse smaps text from f; for tests and for smaps_read. */
int smaps_parse(FILE *f, struct vma_info **out, size_t *n);

#endif
