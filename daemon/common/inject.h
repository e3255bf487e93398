/*
 * inject - named fault points, for tests to break the daemons at the
 * worst moment (as CRIU's fault_injected, SQLite's I/O faults).
 *
 * In a test build (compiled with -DCKSM_INJECT) the environment variable
 * CKSM_INJECT lists the points switched on: "name" (every time) or
 * "name=N" (one time in N), separated by commas, e.g.
 * CKSM_INJECT=copy_eagain=3,replica_read_fails=2. Elsewhere inject() is
 * a constant false and costs nothing. The points:
 *
 *   copy_eagain          UFFDIO_COPY says EAGAIN (the mm is changing)
 *   replica_read_fails   a read of another node's dup fails
 *   zap_unanswered       a zap is never sent (as if the process stopped)
 *   die_before_zap       the agent is killed (SIGKILL) with a page entered,
 *                        its zap not sent
 *   die_after_zap        ... with the zap sent, its answer not read
 *   die_in_fault         ... with a backed page's bytes read for a fault,
 *                        not filled
 *   die_in_fork          ... with a fork child's userfaultfd read from the
 *                        fork event, not handed to the parent
 *   die_in_child_fork    ... the same, at a fork of a process that is a
 *                        fork child itself
 *   die_after_child      ... right after it handed a fork child's
 *                        userfaultfd to the parent (CHILD), the child
 *                        not attached yet
 *   hold_long            a move's hold (evict.c) lasts until its answer,
 *                        never fenced
 */
#ifndef CKSM_INJECT_H
#define CKSM_INJECT_H

#include <stdbool.h>

#ifdef CKSM_INJECT
/* Read CKSM_INJECT and log the points switched on (at start). */
void inject_init(void);
/* Is the point name switched on for this call? Thread-safe. */
bool inject(const char *name);
#else
static inline void inject_init(void)
{
}

static inline bool inject(const char *name)
{
	(void)name;
	return false;
}
#endif

#endif
