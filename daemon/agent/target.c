/*
 * target - see target.h. A collection is a fresh sorted array each pass;
 * the scanner merges it with its own per-process state, so a process that
 * left every source simply stops being visited.
 */
#include "target.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

static bool oom; /* an add failed during this collection */

static int add(struct target **v, size_t *n, size_t *cap, pid_t pid, uint8_t domain, uint8_t scope,
	       int16_t group)
{
	if (*n == *cap) {
		size_t c = *cap ? *cap * 2 : 64;
		struct target *nv = realloc(*v, c * sizeof(*nv));

		if (!nv) {
			oom = true;
			return -ENOMEM;
		}
		*v = nv;
		*cap = c;
	}
	(*v)[*n] = (struct target){ pid, domain, scope, group, (uint32_t)*n };
	(*n)++;
	return 0;
}

static void find_root(struct targets *t)
{
	static const char *const candidates[] = { "/sys/fs/cgroup", "/sys/fs/cgroup/unified" };
	char probe[300];

	if (t->cfg->cgroup_root[0]) {
		snprintf(t->root, sizeof(t->root), "%s", t->cfg->cgroup_root);
		return;
	}
	for (size_t i = 0; i < sizeof(candidates) / sizeof(candidates[0]); i++) {
		snprintf(probe, sizeof(probe), "%s/cgroup.controllers", candidates[i]);
		if (access(probe, F_OK) == 0) {
			snprintf(t->root, sizeof(t->root), "%s", candidates[i]);
			return;
		}
	}
	t->root[0] = '\0';
}

static int add_groups(struct targets *t, const char *list, uint8_t domain)
{
	char buf[CONFIG_LIST_MAX], *save, *tok;

	snprintf(buf, sizeof(buf), "%s", list);
	for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		while (*tok == ' ')
			tok++;
		if (t->ngroups == TARGET_MAX_GROUPS) {
			log_warn("more than %d cgroups configured; %s is ignored",
				 TARGET_MAX_GROUPS, tok);
			continue;
		}
		snprintf(t->groups[t->ngroups].path, sizeof(t->groups[0].path), "%s", tok);
		t->groups[t->ngroups++].domain = domain;
	}
	return 0;
}

static int deeper_first(const void *a, const void *b)
{
	size_t x = strlen(((const struct target_group *)a)->path);
	size_t y = strlen(((const struct target_group *)b)->path);

	return x < y ? 1 : x > y ? -1 : 0;
}

int targets_init(struct targets *t, const struct config *cfg)
{
	memset(t, 0, sizeof(*t));
	t->cfg = cfg;
	t->self = getpid();
	find_root(t);
	for (unsigned d = 0; d < cfg->ndomains; d++)
		add_groups(t, cfg->domains[d].cgroups, (uint8_t)d);
	/* A process in nested configured cgroups belongs to the deepest one:
	 * visit longer paths first (the first entry of a pid wins). */
	qsort(t->groups, t->ngroups, sizeof(t->groups[0]), deeper_first);
	if (t->ngroups && !t->root[0])
		log_warn(
			"cgroups are configured but no cgroup v2 hierarchy was found; set [agent] cgroup_root");
	return 0;
}

void targets_fini(struct targets *t)
{
	free(t->v);
	free(t->reg);
	t->v = t->reg = NULL;
}

/* Named processes are scanned whole, unless mergeable_only says otherwise. */
static uint8_t whole_scope(const struct targets *t)
{
	return t->cfg->mergeable_only ? TARGET_MERGEABLE : TARGET_WHOLE;
}

static void add_pid_list(struct targets *t, const char *list, uint8_t domain)
{
	char buf[CONFIG_LIST_MAX], *save, *tok;

	snprintf(buf, sizeof(buf), "%s", list);
	for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
		add(&t->v, &t->n, &t->cap, (pid_t)atoi(tok), domain, whole_scope(t), -1);
}

/* cgroup.procs of one directory. */
static void add_procs(struct targets *t, const char *dir, unsigned g)
{
	char path[4200], line[32];
	FILE *f;

	snprintf(path, sizeof(path), "%s/cgroup.procs", dir);
	f = fopen(path, "re");
	if (!f)
		return;
	while (fgets(line, sizeof(line), f))
		add(&t->v, &t->n, &t->cap, (pid_t)atoi(line), t->groups[g].domain, whole_scope(t),
		    (int16_t)g);
	fclose(f);
}

/* The cgroup and its descendants; a cgroup that vanished is skipped. */
static void add_group_tree(struct targets *t, const char *dir, unsigned g, int depth)
{
	struct dirent *de;
	DIR *d;

	add_procs(t, dir, g);
	if (depth > 32)
		return;
	d = opendir(dir);
	if (!d)
		return;
	while ((de = readdir(d))) {
		char sub[4200];

		if (de->d_type != DT_DIR || de->d_name[0] == '.')
			continue;
		snprintf(sub, sizeof(sub), "%s/%s", dir, de->d_name);
		add_group_tree(t, sub, g, depth + 1);
	}
	closedir(d);
}

static void add_mergeable(struct targets *t)
{
	struct dirent *de;
	DIR *d = opendir("/proc");

	if (!d)
		return;
	while ((de = readdir(d))) {
		if (!isdigit((unsigned char)de->d_name[0]))
			continue;
		add(&t->v, &t->n, &t->cap, (pid_t)atoi(de->d_name), 0, TARGET_MERGEABLE, -1);
	}
	closedir(d);
}

/*
 * Sort by pid, then by insertion order (the sources were added by
 * precedence), so the first entry of each pid is the one that counts.
 */
static int by_pid(const void *a, const void *b)
{
	const struct target *x = a, *y = b;

	if (x->pid != y->pid)
		return x->pid < y->pid ? -1 : 1;
	return x->order < y->order ? -1 : x->order > y->order;
}

static int by_pid_only(const void *a, const void *b)
{
	const struct target *x = a, *y = b;

	return x->pid < y->pid ? -1 : x->pid > y->pid;
}

int targets_collect(struct targets *t)
{
	size_t w = 0;

	t->n = 0;
	oom = false;
	for (unsigned d = 0; d < t->cfg->ndomains; d++)
		add_pid_list(t, t->cfg->domains[d].pids, (uint8_t)d);
	for (size_t i = 0; i < t->nreg; i++)
		add(&t->v, &t->n, &t->cap, t->reg[i].pid, t->reg[i].domain, t->reg[i].scope, -1);
	if (t->root[0])
		for (unsigned g = 0; g < t->ngroups; g++) {
			char dir[600];

			snprintf(dir, sizeof(dir), "%s%s", t->root, t->groups[g].path);
			add_group_tree(t, dir, g, 0);
		}
	if (t->cfg->scan_mergeable)
		add_mergeable(t);
	if (!t->v)
		return 0;
	qsort(t->v, t->n, sizeof(*t->v), by_pid);
	for (size_t i = 0; i < t->n; i++) {
		if (t->v[i].pid <= 0 || t->v[i].pid == t->self)
			continue;
		if (w && t->v[w - 1].pid == t->v[i].pid)
			continue;
		t->v[w++] = t->v[i];
	}
	t->n = w;
	/* Whatever source named it first, a libcksm process can be served. */
	for (size_t i = 0; i < t->nreg; i++) {
		struct target key = { .pid = t->reg[i].pid }, *x;

		x = bsearch(&key, t->v, t->n, sizeof(*t->v), by_pid_only);
		if (x)
			x->attached = 1;
	}
	return oom ? -ENOMEM : 0;
}

int targets_register(struct targets *t, pid_t pid, uint8_t domain, uint8_t scope)
{
	targets_unregister(t, pid);
	return add(&t->reg, &t->nreg, &t->capreg, pid, domain, scope, -1);
}

void targets_unregister(struct targets *t, pid_t pid)
{
	for (size_t i = 0; i < t->nreg; i++)
		if (t->reg[i].pid == pid)
			t->reg[i--] = t->reg[--t->nreg];
}
