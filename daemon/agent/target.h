/*
 * target - which processes the scanner visits, and in which dedup domain.
 *
 * Four sources, in order of precedence when a process appears in several:
 *   1. pids named by the administrator ([agent] pids, [domain.X] pids);
 *   2. processes that registered through libcksm (targets_register);
 *   3. processes in configured cgroup v2 paths, descendants included;
 *   4. with scan_mergeable, every other process, but only its VMAs that
 *      carry KSM's opt-in (VmFlags "mg", what QEMU sets on guest RAM).
 * Sources 1-3 make the whole process a target; source 4 only its
 * mergeable VMAs, in the default domain.
 */
#ifndef CKSM_TARGET_H
#define CKSM_TARGET_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "config.h"

#define TARGET_MAX_GROUPS 64

enum target_scope {
	TARGET_MERGEABLE = 0, /* only VMAs with VmFlags "mg" */
	TARGET_WHOLE = 1,     /* every private anonymous VMA */
};

struct target {
	pid_t pid;
	uint8_t domain;	  /* index into cfg->domains */
	uint8_t scope;	  /* enum target_scope */
	int16_t group;	  /* index into targets.groups, -1 if none */
	uint32_t order;	  /* insertion order: earlier sources win */
	uint8_t attached; /* registered through libcksm: its pages may be evicted */
};

struct target_group {
	char path[256]; /* as configured, e.g. /machine.slice */
	uint8_t domain; /* index into cfg->domains */
};

struct targets {
	const struct config *cfg;
	char root[256]; /* cgroup v2 mount point, "" if none */
	struct target_group groups[TARGET_MAX_GROUPS];
	unsigned ngroups;
	struct target *v; /* the last collection, sorted by pid */
	size_t n, cap;
	struct target *reg; /* libcksm registrations */
	size_t nreg, capreg;
	pid_t self;
};

/* Prepare from cfg (finds the cgroup v2 mount). Returns 0 or -ENOMEM. */
int targets_init(struct targets *t, const struct config *cfg);
void targets_fini(struct targets *t);

/* Rebuild t->v from the sources above. Returns 0 or -ENOMEM. */
int targets_collect(struct targets *t);

/*
 * A process registered through libcksm joins (or leaves) the targets,
 * whole or only its mergeable VMAs (scope).
 */
int targets_register(struct targets *t, pid_t pid, uint8_t domain, uint8_t scope);
void targets_unregister(struct targets *t, pid_t pid);

#endif
