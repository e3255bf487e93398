/*
 * remap - what the agent has a back-end do to a served process's memory.
 *
 * The fault and evict paths drive the process's userfaultfd themselves
 * (uffd.h); what only the process's side can do goes through these
 * operations: drop a page that compared equal to what backs it, and mark
 * a range mergeable for the kernel's KSM. Each mm is served by one
 * back-end, chosen when it attaches:
 *   remap_libcksm  the process loads libcksm and does it on request,
 *                  over its connection (answers come later);
 * the kernel helper (/dev/cksm) will be the second, synchronous one.
 */
#ifndef CKSM_REMAP_H
#define CKSM_REMAP_H

#include <stdint.h>

struct mm;

struct remap_ops {
	const char *name;
	/*
	 * Drop [addr, addr + len) of m's process (MADV_DONTNEED): 0 when it
	 * is done, -EINPROGRESS when the answer comes later through
	 * evict_zapped(m, token, status), or a negative errno (not dropped).
	 */
	int (*zap)(struct mm *m, uint64_t addr, uint64_t len, uint64_t token);
	/* Mark [start, start + len) MADV_MERGEABLE: 0 or a negative errno. */
	int (*ksm_advise)(struct mm *m, uint64_t start, uint64_t len);
};

extern const struct remap_ops remap_libcksm;

#endif
