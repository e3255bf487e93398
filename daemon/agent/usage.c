/*
 * usage - see usage.h.
 */
#include "usage.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void usage_printable(char *s)
{
	for (; *s; s++)
		if (*s < 0x20 || *s > 0x7e)
			*s = '?';
}

/* /proc/PID/<name> into buf (NUL-terminated, final newline cut); bytes or -1. */
static ssize_t read_proc(pid_t pid, const char *name, char *buf, size_t len)
{
	char path[64];
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/%s", (int)pid, name);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	n = read(fd, buf, len - 1);
	close(fd);
	if (n < 0)
		return -1;
	buf[n] = '\0';
	if (n && buf[n - 1] == '\n')
		buf[--n] = '\0';
	return n;
}

/* The cgroup v2 path of pid ("0::/a/b"), or "" when it has none. */
static char *cgroup_of(pid_t pid)
{
	static char buf[8192];
	char *line, *save = NULL;

	if (read_proc(pid, "cgroup", buf, sizeof(buf)) < 0)
		return strdup("");
	for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
		if (strncmp(line, "0::", 3) == 0) {
			char *p = strdup(line + 3);

			if (p)
				usage_printable(p);
			return p;
		}
	return strdup("");
}

static uint64_t shareable(const struct usage_row *r)
{
	return r->zero + r->shared;
}

/* Most shareable first, then most stable, then by pid or path. */
static int by_shareable(const void *x, const void *y)
{
	const struct usage_row *a = x, *b = y;

	if (shareable(a) != shareable(b))
		return shareable(a) > shareable(b) ? -1 : 1;
	if (a->stable != b->stable)
		return a->stable > b->stable ? -1 : 1;
	if (a->pid != b->pid)
		return a->pid < b->pid ? -1 : 1;
	return strcmp(a->cgroup, b->cgroup);
}

static int by_cgroup(const void *x, const void *y)
{
	return strcmp(((const struct usage_row *)x)->cgroup, ((const struct usage_row *)y)->cgroup);
}

struct gather {
	struct usage_row *v;
	size_t n, cap;
	int err;
};

static void gather_proc(void *arg, pid_t pid, int group, const struct scan_counts *c)
{
	struct gather *g = arg;
	struct usage_row *r;

	(void)group;
	if (g->err || (!c->stable && !c->zero))
		return;
	if (g->n == g->cap) {
		size_t cap = g->cap ? 2 * g->cap : 64;
		struct usage_row *v = realloc(g->v, cap * sizeof(*v));

		if (!v) {
			g->err = -ENOMEM;
			return;
		}
		g->v = v;
		g->cap = cap;
	}
	r = &g->v[g->n];
	memset(r, 0, sizeof(*r));
	r->pid = pid;
	r->processes = 1;
	if (read_proc(pid, "comm", r->comm, sizeof(r->comm)) < 0)
		r->comm[0] = '\0';
	usage_printable(r->comm);
	r->cgroup = cgroup_of(pid);
	if (!r->cgroup) {
		g->err = -ENOMEM;
		return;
	}
	r->stable = c->stable;
	r->zero = c->zero;
	r->shared = c->shared;
	g->n++;
}

int usage_collect(struct usage *u, const struct scanner *s)
{
	struct gather g = { 0 };
	struct usage_row *groups = NULL;
	size_t ng = 0;

	usage_clear(u);
	scanner_foreach_proc(s, gather_proc, &g);
	if (!g.err && g.n) {
		groups = calloc(g.n, sizeof(*groups));
		if (!groups)
			g.err = -ENOMEM;
	}
	if (!g.err && g.n) {
		/* Sum by cgroup: sort by path, add up the runs. */
		qsort(g.v, g.n, sizeof(*g.v), by_cgroup);
		for (size_t i = 0; i < g.n; i++) {
			struct usage_row *r = &g.v[i];

			if (!ng || strcmp(groups[ng - 1].cgroup, r->cgroup)) {
				groups[ng].cgroup = r->cgroup; /* borrowed until the copy */
				groups[ng].pid = 0;
				ng++;
			}
			groups[ng - 1].processes++;
			groups[ng - 1].stable += r->stable;
			groups[ng - 1].zero += r->zero;
			groups[ng - 1].shared += r->shared;
		}
		qsort(groups, ng, sizeof(*groups), by_shareable);
		qsort(g.v, g.n, sizeof(*g.v), by_shareable);
		for (size_t i = 0; i < ng && i < USAGE_TOP && !g.err; i++) {
			u->groups[i] = groups[i];
			u->groups[i].cgroup = strdup(groups[i].cgroup);
			if (!u->groups[i].cgroup)
				g.err = -ENOMEM;
			u->ngroups++;
		}
		for (size_t i = 0; i < g.n && i < USAGE_TOP; i++) {
			u->procs[i] = g.v[i];
			g.v[i].cgroup = NULL; /* moved */
			u->nprocs++;
		}
	}
	for (size_t i = 0; i < g.n; i++)
		free(g.v[i].cgroup);
	free(g.v);
	free(groups);
	if (g.err)
		usage_clear(u);
	return g.err;
}

void usage_clear(struct usage *u)
{
	for (size_t i = 0; i < u->nprocs; i++)
		free(u->procs[i].cgroup);
	for (size_t i = 0; i < u->ngroups; i++)
		free(u->groups[i].cgroup);
	u->nprocs = u->ngroups = 0;
}

void usage_move(struct usage *to, struct usage *from)
{
	usage_clear(to);
	memcpy(to, from, sizeof(*to));
	from->nprocs = from->ngroups = 0;
}
