/*
 * usage - which processes and cgroups hold the most shareable memory.
 *
 * After a full scan the scanner thread collects, per process, its stable,
 * zero and shared pages (shared: its shard says the content has another
 * copy in the cluster), adds them up per cgroup v2 path, and keeps the
 * USAGE_TOP of each by shareable pages (zero + shared). Shard 0 gets them
 * for `cksmctl top`.
 */
#ifndef CKSM_USAGE_H
#define CKSM_USAGE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "scan.h"

#define USAGE_TOP 64

struct usage_row {
	pid_t pid;	    /* processes only */
	uint32_t processes; /* cgroups only */
	char comm[16];	    /* processes only */
	char *cgroup;	    /* its cgroup v2 path, printable ASCII */
	uint64_t stable, zero, shared;
};

struct usage {
	struct usage_row procs[USAGE_TOP];
	size_t nprocs;
	struct usage_row groups[USAGE_TOP];
	size_t ngroups;
};

/* Fill u from the scanner's last pass; 0 or -ENOMEM (u is then empty). */
int usage_collect(struct usage *u, const struct scanner *s);

/* Free what u holds and leave it empty. */
void usage_clear(struct usage *u);

/* Replace *to with *from, leaving from empty. */
void usage_move(struct usage *to, struct usage *from);

/* Printable ASCII: every other byte of s becomes '?'. */
void usage_printable(char *s);

#endif
