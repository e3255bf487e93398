/*
 * scan - the agent's scanner: KSM's ksmd, one level up.
 *
 * See scan.c for the algorithm. The scanner runs passes over the targets
 * (target.h); each pass reads every present private anonymous page of
 * them, hashes it, and hands every page that did not change since the
 * previous pass (and was not handed out already) to a report callback
 * with its 128-bit content id.
 */
#ifndef CKSM_SCAN_H
#define CKSM_SCAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "cid.h"
#include "hll.h"
#include "config.h"
#include "target.h"

enum scan_skip {
	SKIP_SWAPPED,	/* not present: swapped out */
	SKIP_SHARED,	/* MAP_SHARED mapping */
	SKIP_MLOCKED,	/* mlocked VMA */
	SKIP_HUGETLB,	/* hugetlbfs mapping */
	SKIP_IO,	/* VM_IO / VM_PFNMAP */
	SKIP_KSM,	/* already a KSM page */
	SKIP_THP,	/* backed by a transparent huge page (scan_thp=0) */
	SKIP_ZERO_PAGE, /* the kernel's shared zero page is mapped */
	SKIP_MAX
};

extern const char *const scan_skip_names[SKIP_MAX];

/* What one pass saw (or, summed, what several saw). */
struct scan_counts {
	uint64_t scanned;   /* pages read and hashed */
	uint64_t stable;    /* unchanged since the previous pass, not zero */
	uint64_t volatile_; /* changed since the previous pass */
	uint64_t fresh;	    /* seen for the first time */
	uint64_t zero;	    /* content all zeroes */
	uint64_t reported;  /* handed to the report callback */
	uint64_t shared;    /* stable pages whose shard says another copy exists */
	uint64_t thp_kept;  /* could go, but their huge page is not mostly duplicates */
	uint64_t skipped[SKIP_MAX];
};

/* A stable page, as handed to the report callback. */
struct scan_page {
	pid_t pid;
	uint64_t addr;
	uint8_t domain; /* index into cfg->domains */
	bool again;	/* reported before, unchanged since, to a shard that kept it */
	bool dontcopy;	/* in a VM_DONTCOPY VMA (MADV_DONTFORK) */
	bool stays;	/* reports: no page of this kind here is ever evicted */
	struct cid id;
	const void *bytes; /* the 4 KiB read; valid during the callback */
};

/*
 * Return 0 when the page was taken; anything else leaves it unreported,
 * to be offered again at the next pass (for example while the queue to
 * its shard is full).
 */
typedef int (*scan_report_fn)(void *arg, const struct scan_page *pg);

/*
 * A page of a libcksm process unchanged for evict_age passes, each pass
 * while it stays: all zero (zero), or with its content id. True: it has
 * no dup to go to and is worth one (the scanner then reports it again
 * now and then, to ask for one).
 */
typedef bool (*scan_evict_fn)(void *arg, const struct scan_page *pg, bool zero);

/*
 * Sleep for ms between batches; return true to abandon the pass (the
 * daemon is stopping). NULL: never sleep, never stop.
 */
typedef bool (*scan_sleep_fn)(void *arg, uint64_t ms);

struct scanner;

/*
 * A scanner over targets, with one cid_domain per cfg->domains entry
 * (same order). Returns NULL on allocation failure or when /proc/kpageflags
 * cannot be opened (err says why).
 */
struct scanner *scanner_create(const struct config *cfg, struct targets *targets,
			       const struct cid_domain *domains, scan_report_fn report,
			       void *report_arg, char *err, size_t errlen);
void scanner_destroy(struct scanner *s);

/* Hand eviction candidates to fn. */
void scanner_set_evict(struct scanner *s, scan_evict_fn fn, void *arg);

/*
 * May pages of VM_DONTCOPY VMAs (MADV_DONTFORK) be candidates? Only where
 * they are moved out, not dropped: the kernel refuses to move a pinned
 * page, and MADV_DONTFORK is how memory registered for a device is marked
 * (and how QEMU marks all guest RAM). Off by default.
 */
void scanner_evict_dontcopy(struct scanner *s, bool yes);

/* Throttle passes by pages_to_scan/sleep_millisecs/cpu_percent through sleep. */
void scanner_set_sleep(struct scanner *s, scan_sleep_fn sleep, void *arg);

/*
 * One full pass over the current targets. Fills *out with what it saw.
 * Returns 0, or -EINTR when the sleep callback asked to stop.
 */
int scanner_pass(struct scanner *s, struct scan_counts *out);

/*
 * The sleep that the CPU used since the last sleep calls for under
 * cpu_percent, and the reset after sleeping it (for rests between passes).
 */
uint64_t scanner_budget_ms(const struct scanner *s);
void scanner_rested(struct scanner *s);

/*
 * Offer every stable page again from the next pass: fresh when a shard
 * lost its state (the pages are news to it), otherwise as a refresh of
 * what the shards were told (scan_page.again).
 */
void scanner_rereport(struct scanner *s, bool fresh);

/* Processes and bytes of state the scanner holds now. */
size_t scanner_nprocs(const struct scanner *s);
size_t scanner_state_bytes(const struct scanner *s);
uint64_t scanner_tracked_pages(const struct scanner *s);

/* Visit each VMA state with what the last pass saw in it. */
typedef void (*scan_vma_fn)(void *arg, pid_t pid, uint64_t start, uint64_t end,
			    const struct scan_counts *c);
void scanner_foreach_vma(const struct scanner *s, scan_vma_fn fn, void *arg);

/*
 * The census of the last full pass for domain index d: a sketch of the
 * checksums of its stable pages, how many stable pages and zero pages,
 * and in *shared the sketch of those a shard answered to have another
 * copy. NULL before the first full pass.
 */
const struct hll *scanner_census(const struct scanner *s, unsigned d, uint64_t *stable,
				 uint64_t *zero, const struct hll **shared);

/* Visit each process with what the last pass saw in it (group: -1 or
 * its index in targets.groups). */
typedef void (*scan_proc_fn)(void *arg, pid_t pid, int group, const struct scan_counts *c);
void scanner_foreach_proc(const struct scanner *s, scan_proc_fn fn, void *arg);

/*
 * The shard's answer for a reported page: whether its content has another
 * copy in the cluster. Ignored when the page changed since the report.
 */
void scanner_mark_shared(struct scanner *s, pid_t pid, uint64_t addr, bool shared);

/* Counts of the last pass per configured cgroup (targets.groups order). */
const struct scan_counts *scanner_group_counts(const struct scanner *s, unsigned group);

#endif
