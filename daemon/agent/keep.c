/*
 * keep - what the agent keeps in its state directory, so that a killed
 * agent loses nothing.
 *
 * The directory ([agent] state_dir, under /run/cksm: tmpfs, kept until
 * reboot) holds:
 *   lock        flock'd by the agent that uses the directory: one at a time;
 *   pool,slots  the page pool and its slot table (pool.c);
 *   mm-KEY      one per served mm: struct mm_state, mapped shared;
 *   tab-KEY     ... and its backed-page table (btab.c);
 *   holders     where each node that holds dups the tables name serves
 *               reads ("NODE ADDRESS" lines, written whole by rename).
 * Every store into them is made in an order that leaves them right if the
 * agent is killed between any two (see btab.h and the callers), and the
 * kernel keeps a killed process's writes to a shared mapping: nothing is
 * synced, and nothing needs to be until the machine reboots, when the
 * processes are gone too.
 *
 * At start, keep_load_all reads every mm whose process still lives (its
 * pid with the same start time) onto the waiting list, counts its entries
 * (pool references, references on other nodes' dups, gauges) before the
 * pool frees what nobody uses, and removes the files of the others. A
 * waiting mm is taken over by its process's connection when libcksm
 * comes back with its userfaultfd (attach.c, resume).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backing_int.h"
#include "log.h"
#include "util.h"

#define STATE_BYTES 4096u /* an mm-KEY file */
#define TORN_MAX    2	  /* torn entries one killed agent can leave in a table */

uint64_t proc_start_time(pid_t pid)
{
	char path[64], buf[1024], *p;
	unsigned long long t = 0;
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	buf[n] = 0;
	/* After the command's closing parenthesis: state is field 3, the
	 * start time field 22. */
	p = strrchr(buf, ')');
	if (!p ||
	    sscanf(p + 2,
		   "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d %*d %*d %llu",
		   &t) != 1)
		return 0;
	return t;
}

/* mkdir -p of path (mode 0700 for what is made). */
static int mkdirs(const char *path)
{
	char buf[256];
	size_t n = strlen(path);

	if (n >= sizeof(buf))
		return -ENAMETOOLONG;
	memcpy(buf, path, n + 1);
	for (char *p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = 0;
		if (mkdir(buf, 0755) < 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	return mkdir(buf, 0700) < 0 && errno != EEXIST ? -errno : 0;
}

int keep_open(const char *dir)
{
	int fd, lock, rc;

	rc = mkdirs(dir);
	fd = rc ? -1 : open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0) {
		log_error("state directory %s: %s", dir, strerror(rc ? -rc : errno));
		return rc ? rc : -errno;
	}
	lock = openat(fd, "lock", O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (lock < 0 || flock(lock, LOCK_EX | LOCK_NB) < 0) {
		rc = -errno;
		log_error("state directory %s: %s", dir,
			  rc == -EWOULDBLOCK ? "another agent uses it" : strerror(-rc));
		if (lock >= 0)
			close(lock);
		close(fd);
		return rc;
	}
	/* The lock lives as long as the agent: its descriptor is never closed. */
	return fd;
}

static void names(uint64_t key, char *st, char *tab, size_t len)
{
	snprintf(st, len, "mm-%016" PRIx64, key);
	snprintf(tab, len, "tab-%016" PRIx64, key);
}

/* The file of an mm_state, mapped: NULL on failure (errno set). */
static struct mm_state *map_state(int dirfd, const char *name, int flags)
{
	int fd = openat(dirfd, name, flags | O_RDWR | O_CLOEXEC, 0600);
	struct stat sb;
	void *map;

	if (fd < 0)
		return NULL;
	if ((flags & O_CREAT) && ftruncate(fd, STATE_BYTES) < 0) {
		close(fd);
		return NULL;
	}
	/* One a killed agent made and never sized has nothing in it yet:
	 * mapped as it is, a read would fault. */
	if (!(flags & O_CREAT) && (fstat(fd, &sb) < 0 || sb.st_size < (off_t)STATE_BYTES)) {
		close(fd);
		errno = EUCLEAN;
		return NULL;
	}
	map = mmap(NULL, STATE_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	return map == MAP_FAILED ? NULL : map;
}

int keep_mm(struct mm *m)
{
	struct backing *b = m->b;
	static atomic_uint_fast64_t next;
	char sn[32], tn[32];
	struct mm_state *st;
	int rc;

	if (!atomic_load(&next))
		atomic_store(&next, clock_ns(CLOCK_REALTIME));
	do {
		m->key = atomic_fetch_add(&next, 1);
		names(m->key, sn, tn, sizeof(sn));
		st = map_state(b->state_fd, sn, O_CREAT | O_EXCL);
	} while (!st && errno == EEXIST);
	if (!st) {
		rc = -errno;
		goto fail;
	}
	memcpy(st, m->st, sizeof(*st));
	st->magic = MM_STATE_MAGIC;
	st->version = MM_STATE_VERSION;
	st->size = sizeof(*st);
	rc = btab_keep(&m->tab, b->state_fd, tn);
	if (rc) {
		munmap(st, STATE_BYTES);
		unlinkat(b->state_fd, sn, 0);
		goto fail;
	}
	free(m->st);
	m->st = st;
	return 0;
fail:
	m->key = 0;
	log_error("process %d: cannot keep its table in %s: %s", (int)m->pid, b->cfg->state_dir,
		  strerror(-rc));
	return rc;
}

void keep_pid(struct mm *m, pid_t pid)
{
	m->st->start_time = proc_start_time(pid);
	m->st->pid = pid;
}

void keep_forget(struct mm *m)
{
	char sn[32], tn[32];

	if (!m->key)
		return;
	names(m->key, sn, tn, sizeof(sn));
	unlinkat(m->b->state_fd, tn, 0);
	unlinkat(m->b->state_fd, sn, 0);
}

void keep_unmap(struct mm *m)
{
	if (m->key)
		munmap(m->st, STATE_BYTES);
	else
		free(m->st);
	m->st = NULL;
}

/* Count an entry loaded from a killed agent's table, as it was counted then. */
static void count_loaded(struct backing *b, const struct bentry *e)
{
	if (e->kind == BACKED_POOL && pool_ref(b->pool, e->ref, 1))
		return; /* its slot is gone: a fault on it finds that and says so */
	entry_count(b, e);
}

/* A fork child's table whose userfaultfd never went to the parent: its
 * child was killed and forked again (local.h, CHILD). */
/* A fork child not attached, kept with the fields KID and CHILD fill? */
static bool kid_kept(const struct mm_state *st)
{
	return !st->pid && st->size >= offsetof(struct mm_state, kid_start) + sizeof(st->kid_start);
}

static bool kid_ghost(const struct mm_state *st)
{
	return kid_kept(st) && !st->handed;
}

bool keep_kid_known(const struct mm_state *st)
{
	return kid_kept(st) && st->kid_pid > 0;
}

bool keep_alive(const struct mm_state *st)
{
	char path[32];

	if (st->pid)
		return proc_start_time(st->pid) == st->start_time;
	if (keep_kid_known(st))
		return proc_start_time(st->kid_pid) == st->kid_start; /* KID told it */
	/* A fork child not re-attached: its parent keeps its userfaultfd (and
	 * the child a copy of its own, forget_waiting). */
	snprintf(path, sizeof(path), "/proc/%d", (int)st->parent);
	return st->parent > 0 && access(path, F_OK) == 0;
}

/* One kept mm, onto the waiting list if its process lives. */
static size_t load_one(struct backing *b, uint64_t key)
{
	char sn[32], tn[32];
	struct mm_state *st;
	struct mm *m;
	size_t torn = 0;
	int rc;

	names(key, sn, tn, sizeof(sn));
	st = map_state(b->state_fd, sn, 0);
	/* Kept before the mark was (a smaller size): its mark reads zeroes. */
	if (!st || st->magic != MM_STATE_MAGIC || st->version != MM_STATE_VERSION ||
	    st->size > sizeof(*st) || st->size < offsetof(struct mm_state, mark) || st->pid < 0 ||
	    ((st->pid || keep_kid_known(st)) && !keep_alive(st)) || kid_ghost(st)) {
		/* Its process is gone (or it never was attached): nothing to keep. */
		if (st)
			munmap(st, STATE_BYTES);
		unlinkat(b->state_fd, tn, 0);
		unlinkat(b->state_fd, sn, 0);
		return 0;
	}
	m = mm_new(b, -1, -1, st->pid);
	if (!m) {
		munmap(st, STATE_BYTES);
		return 0;
	}
	free(m->st);
	m->st = st;
	m->key = key;
	m->beacon = st->beacon;
	m->parent = st->parent;
	m->born_ms = now_ms(); /* a fork child may come back by its key for a while */
	rc = btab_load(&m->tab, b->state_fd, tn, &torn);
	if (rc == -ENOENT)
		btab_keep(&m->tab, b->state_fd, tn);
	if ((rc && rc != -ENOENT) || torn > TORN_MAX) {
		/* Which of its pages were evicted is not known any more: none
		 * may read zeroes for it, so every one not in memory is lost. */
		m->damaged = true;
		log_error(
			"process %d: its kept table is damaged (%s%s%zu entries unreadable): every page of it not in memory now gives SIGBUS when touched",
			(int)st->pid, rc && rc != -ENOENT ? strerror(-rc) : "",
			rc && rc != -ENOENT ? "; " : "", torn);
	} else if (torn) {
		log_info("process %d: %zu entries of its kept table were torn or superseded",
			 (int)st->pid, torn);
	}
	for (size_t i = 0; i < m->tab.n; i++)
		count_loaded(b, &m->tab.e[i]);
	m->wnext = b->waiting;
	b->waiting = m;
	metric_gauge_add(b->m_waiting, 1);
	return m->tab.n;
}

size_t keep_load_all(struct backing *b)
{
	DIR *d = fdopendir(dup(b->state_fd));
	struct dirent *de;
	size_t n = 0, mms = 0;

	if (!d)
		return 0;
	while ((de = readdir(d))) {
		uint64_t key;
		char end;

		if (sscanf(de->d_name, "mm-%16" SCNx64 "%c", &key, &end) != 1)
			continue;
		n += load_one(b, key);
		mms++;
	}
	closedir(d);
	if (b->waiting)
		log_info("found %zu backed pages kept for processes that wait for this agent", n);
	(void)mms;
	return n;
}

void keep_holders(struct backing *b)
{
	int fd = openat(b->state_fd, "holders.new", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
	bool ok = f != NULL;

	for (size_t i = 0; ok && i < b->nholders; i++)
		ok = fprintf(f, "%u %s\n", b->holders[i].node, b->holders[i].addr) > 0;
	if (f)
		ok = fclose(f) == 0 && ok;
	else if (fd >= 0)
		close(fd);
	if (!ok || renameat(b->state_fd, "holders.new", b->state_fd, "holders") < 0)
		log_warn("cannot keep the holders' addresses in %s: %s", b->cfg->state_dir,
			 strerror(errno));
}

void keep_holders_load(struct backing *b)
{
	int fd = openat(b->state_fd, "holders", O_RDONLY | O_CLOEXEC);
	FILE *f = fd >= 0 ? fdopen(fd, "r") : NULL;
	char line[128], addr[DUP_ADDR_MAX];
	unsigned node;

	if (!f) {
		if (fd >= 0)
			close(fd);
		return;
	}
	pthread_mutex_lock(&b->lock);
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "%u %63s", &node, addr) == 2 && node)
			remote_holder_learn(b, node, addr, false);
	pthread_mutex_unlock(&b->lock);
	fclose(f);
}
