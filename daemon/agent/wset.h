/*
 * wset - the working set, by region: which parts of a process are read
 * too often to evict, and what each process spends in faults.
 *
 * A page evicted and then read is a refault: a fault, where a page left
 * in place (or merged by the kernel's KSM) costs nothing. Pages are not
 * tracked one by one (millions of them); regions are, WSET_REGION bytes
 * of one process's address space (a huge page's span), in a table of a
 * fixed number of entries (wset_regions; the least recently used gives
 * way, and a region forgotten is sampled again: never evicted in bulk
 * unseen). Each region goes:
 *
 *   new      -> sampling  its first wset_sample_pages offers, spread
 *                         over the region, are a sample; no more of it
 *                         goes until the sample, once evicted, was
 *                         watched for wset_sample_ms (a sample none of
 *                         which was evicted for twice that is taken
 *                         anew);
 *   sampling -> open      fewer than a quarter of the sample came back:
 *                         the region is evicted as the scanner offers it;
 *            -> hot       more came back: nothing of it is evicted for
 *                         the back-off, 30 s doubling with each hot
 *                         verdict in a row up to WSET_BACKOFF_MAX_MS,
 *                         then it is sampled again;
 *   open     -> hot       within a window of wset_sample_ms, an eighth
 *                         of its pages that are out came back (and at
 *                         least WSET_HOT_MIN).
 *
 * Each process also has a budget of time in faults: it earns
 * wset_fault_budget_pct of the wall time since it was first seen, up to
 * WSET_BUDGET_CAP_NS ahead, and each refault spends what serving it took
 * (the fault thread's time, plus WSET_FAULT_FLOOR_NS for the round trip
 * through the kernel). While its budget is spent nothing more of it is
 * evicted, whatever its regions say: eviction cannot livelock against
 * refaults, and the refaults that remain are of pages evicted before.
 *
 * Thread-safe: one lock of its own, a leaf.
 */
#ifndef CKSM_WSET_H
#define CKSM_WSET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define WSET_REGION_SHIFT   21
#define WSET_REGION	    (1ull << WSET_REGION_SHIFT)
#define WSET_BACKOFF_MS	    30000u
#define WSET_BACKOFF_MAX_MS (32u * 60u * 1000u)
#define WSET_HOT_MIN	    4u
#define WSET_BUDGET_CAP_NS  (1000ull * 1000 * 1000) /* one second of faults ahead */
#define WSET_FAULT_FLOOR_NS 10000ull		    /* the kernel's part of a fault */
#define WSET_PROCS	    4096u		    /* processes whose budget is kept */

struct wset_cfg {
	bool off;		   /* every page may go: refaults are only counted */
	uint32_t regions;	   /* table entries */
	uint32_t sample_pages;	   /* a new region's sample */
	uint32_t sample_ms;	   /* watched this long; the open window too */
	uint32_t fault_budget_pct; /* of wall time, per process (0: no budget) */
};

enum wset_state {
	WSET_NEW,
	WSET_SAMPLING,
	WSET_OPEN,
	WSET_HOT,
	WSET_STATES,
};

/* Why an eviction was held back, or not (wset_may_evict). */
enum wset_verdict {
	WSET_EVICT,	 /* go */
	WSET_WAIT,	 /* the region's sample is being watched */
	WSET_HOT_REGION, /* the region is read too often */
	WSET_NO_BUDGET,	 /* the process spent its time in faults */
};

struct wset_stats {
	uint64_t regions[WSET_STATES]; /* tracked now, by state */
	uint64_t refaults;	       /* since start */
	uint64_t fault_ns;	       /* ... and the time they took */
	uint64_t hot_verdicts;	       /* regions found hot */
	uint64_t forgotten;	       /* regions that gave way to others */
	uint64_t held[4];	       /* evictions held back, by verdict */
	uint64_t broke;		       /* processes whose budget ran out, counted once each time */
};

struct wset_proc {
	pid_t pid;
	uint64_t refaults, fault_ns, first_ms;
};

struct wset;

/* NULL when out of memory. cfg is copied. */
struct wset *wset_create(const struct wset_cfg *cfg);
void wset_destroy(struct wset *w);

/* May the page of pid at addr be evicted at now_ms? WSET_EVICT takes it
 * as a sample page, in a sampling region. */
enum wset_verdict wset_may_evict(struct wset *w, pid_t pid, uint64_t addr, uint64_t now_ms);

/* The page was evicted after all (after wset_may_evict said go): what a
 * region's verdicts count (and a sample's watch starts from). */
void wset_evicted(struct wset *w, pid_t pid, uint64_t addr, uint64_t now_ms);

/*
 * Is a dup of the page's content worth asking for, since the page may
 * go soon? In an open region, yes; in a hot one, no; in one being
 * sampled (or new), only for a page that may be its sample: one per
 * stripe, counted when take (asked again after two sample_ms without
 * any offered). A dup is made for a content that will be evicted.
 */
bool wset_dup_wanted(struct wset *w, pid_t pid, uint64_t addr, uint64_t now_ms, bool take);

/* An evicted page of pid came back; serving it took ns; its content is
 * of the domain tagged domain. */
void wset_refault(struct wset *w, pid_t pid, uint64_t addr, uint64_t ns, uint64_t now_ms,
		  uint8_t domain);

/* A region found hot, as wset_take_hot hands it on (the kernel's KSM may
 * merge what it holds: a read of a merged page costs no fault). */
struct wset_hot {
	pid_t pid;
	uint64_t addr;	/* the region's start */
	uint8_t domain; /* of the content that came back last */
};

#define WSET_HOT_QUEUE 256u

/* The regions found hot since the last call, at most max; how many. */
size_t wset_take_hot(struct wset *w, struct wset_hot *out, size_t max);

/* pid is gone: its regions and budget are forgotten. */
void wset_forget(struct wset *w, pid_t pid);

void wset_stats(struct wset *w, uint64_t now_ms, struct wset_stats *st);

/* pid's refaults and time in them; false if it is not known. */
bool wset_proc(struct wset *w, pid_t pid, struct wset_proc *out);

/* Every invariant; 0 or -EINVAL (tests). */
int wset_check(struct wset *w);

#endif
