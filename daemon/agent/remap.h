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
 *   remap_move     the agent moves the page out itself (UFFDIO_MOVE,
 *                  Linux 6.8) into the scratch libcksm keeps (local.h),
 *                  at once, and has libcksm drop the scratch later;
 * the kernel helper (/dev/cksm) will be another, synchronous one.
 */
#ifndef CKSM_REMAP_H
#define CKSM_REMAP_H

#include <stdbool.h>
#include <stdint.h>

struct mm;

struct remap_ops {
	const char *name;
	/*
	 * Drop [addr, addr + len) of m's process, which compared equal to
	 * expect (NULL: zeroes) while write-protected: 0 when it is done,
	 * -EINPROGRESS when the answer comes later through evict_zapped(m,
	 * token, status), or a negative errno (not dropped). m->lock held.
	 */
	int (*zap)(struct mm *m, uint64_t addr, uint64_t len, uint64_t token, const void *expect);
	/* Mark [start, start + len) MADV_MERGEABLE: 0 or a negative errno. */
	int (*ksm_advise)(struct mm *m, uint64_t start, uint64_t len);
};

extern const struct remap_ops remap_libcksm;
extern const struct remap_ops remap_move;

/* Both ask libcksm to mark a range for the kernel's KSM (KSM, local.h). */
int libcksm_ksm_advise(struct mm *m, uint64_t start, uint64_t len);

/* The scratch's batches of pages (local.h), in struct mm's scrub[]. */
enum scrub { SCRUB_FREE, SCRUB_FILLING, SCRUB_ASKED };

/* Ask m's process to drop its whole scratch (after attaching). m->lock held. */
void scratch_reset(struct mm *m);
/* The page libcksm moved for e (remap_move): 0 if it may count, -ESTALE if it was put back. m->lock held. */
struct bentry;
int move_check(struct mm *m, const struct bentry *e);
/* ... or its zap failed: the scratch page it named may be filled all the same. m->lock held. */
void move_unused(struct mm *m);
/* SCRUBBED: [a, a + len) of m's scratch is free again. */
void scratch_scrubbed(struct mm *m, uint64_t a, uint64_t len, int status);
/* Is no scrub of m's scratch asked and unanswered? m->lock held. */
bool scratch_quiet(const struct mm *m);

#endif
