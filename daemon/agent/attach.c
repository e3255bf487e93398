/*
 * attach - processes attaching to the agent, on the loop thread.
 *
 * The socket (SOCK_SEQPACKET, local.h) is polled by the loop; nothing
 * here ever waits on a process. A connection's life:
 *   1. accepted, with the peer's pid from SO_PEERCRED; at most
 *      PENDING_MAX connections are in the handshake at once, each for at
 *      most HELLO_WAIT_MS (the housekeeping timer ends the slow ones);
 *   2. HELLO: its flags and beacon. The agent answers DEVFD with an open
 *      /dev/userfaultfd;
 *   3. UFFD: the process's userfaultfd, which must come from the process
 *      that connected (the kernel names every message's sender). The
 *      agent does the UFFDIO_API handshake with every feature, answers
 *      READY, puts the mm on the list (the fault thread polls it from
 *      then on) and registers its mergeable ranges;
 *   4. RANGE (madvise(MADV_MERGEABLE)) registers more; ZAPPED answers an
 *      eviction's zap (evict.c);
 *   5. the end of the connection: the process exited or exec'd, and its
 *      mm is forgotten; or it closed the socket while alive (orphan), and
 *      its backed pages are brought home, then it is forgotten.
 *
 * Forked children: the fork event gives the agent the child's
 * userfaultfd (fault.c) and a copy of the table; the child's libcksm
 * connects again with CKSM_LOCAL_FORKED and must be paired with that mm
 * (see reattach_begin).
 *
 * Once a second the housekeeping timer ends slow handshakes, registers
 * new mappings of merge_all processes, forgets fork children that
 * exited, and runs the KSM hand-over.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <sodium.h>

#include "backing_int.h"
#include "inject.h"
#include "log.h"
#include "uffd.h"
#include "util.h"

static int local_send(int fd, const struct cksm_local *m, int pass_fd)
{
	return cksm_local_send(fd, m, pass_fd, MSG_DONTWAIT);
}

static void pending_del(struct backing *b, struct mm *m);
static void serve(struct mm *m, struct cksm_local *ready, const char *how, bool mark);
static bool on_child(struct mm *m, const struct cksm_local *msg, int fd);
static void reattach_begin(struct mm *c);
static void reattach_clear(struct backing *b, struct mm *c);
static void reattach_finish(struct backing *b, struct mm *c, struct mm *fm, bool hand_uffd);
static pid_t parent_of(pid_t pid);

/* ---- a connection's end ------------------------------------------------------ */

static void closed(struct mm *m)
{
	/* The socket closes with the last reference: an evictor may hold one. */
	if (!m->handshaken) {
		pending_del(m->b, m);
		mm_put(m);
	} else if (!m->b->stop && m->tab.n && !uffd_mm_gone(m->uffd)) {
		/* It closed the connection but lives (a daemon closing every
		 * descriptor): with it went, most likely, its copy of its
		 * userfaultfd, and with the agent's then the only one its
		 * pages would not outlive a killed agent. They are brought
		 * home by the fault thread, its ranges unregistered, and it
		 * is forgotten; nothing more is evicted meanwhile. */
		struct backing *b = m->b;

		pthread_mutex_lock(&m->lock);
		log_warn(
			"process %d closed its connection while alive; its %zu backed pages are brought home",
			(int)m->pid, m->tab.n);
		m->orphan = true;
		m->zap_done = true;
		m->zap_status = -ECONNRESET;
		pthread_cond_broadcast(&m->cond);
		pthread_mutex_unlock(&m->lock);
		/* The fault thread may forget m at once: m is not touched after. */
		atomic_store(&m->bring_home, true);
		wake_faults(b);
	} else {
		list_del(m->b, m);
	}
}

static void on_closed(uv_handle_t *h)
{
	struct mm *m = h->data;
	struct backing *b = m->b;

	closed(m);
	/* The backing waits for the last connection's close (attach_stop). */
	if (--b->closing == 0 && b->closed_cb)
		b->closed_cb((uv_handle_t *)&b->lpoll);
}

/* A connection's socket, closed; m dropped or kept by how it ends (loop thread). */
static void close_conn(struct mm *m)
{
	m->b->closing++;
	uv_close((uv_handle_t *)&m->poll, on_closed);
}

void mm_end(struct mm *m, const char *why)
{
	struct backing *b = m->b;

	if (why)
		log_warn("process %d: %s; detached", (int)m->pid, why);
	else if (!m->refused)
		log_info("process %d detached", (int)m->pid);
	if (m->handshaken && b->detached)
		b->detached(b->hook_arg, m->pid);
	if (m->pid)
		wset_forget(b->wset, m->pid);
	uv_poll_stop(&m->poll);
	close_conn(m);
}

/* ---- ranges ------------------------------------------------------------------ */

/*
 * The mark (local.h): a random value in the beacon's last page, put there
 * through m's userfaultfd, so into the address space the agent serves.
 * libcksm drops that page before it hands a new userfaultfd; one that is
 * there already could hold anything the process chose, and a process
 * that cannot be marked is served but never evicted.
 */
static void set_mark(struct mm *m)
{
	uint8_t page[PAGE] = { 0 };
	struct uffdio_copy c = { .dst = m->beacon + CKSM_LOCAL_BEACON_MARK * PAGE,
				 .src = (uint64_t)(uintptr_t)page,
				 .len = PAGE };

	if (!m->beacon) {
		log_warn(
			"process %d has no beacon (local.h): it is served, but nothing of it is evicted",
			(int)m->pid);
		return;
	}
	randombytes_buf(page, sizeof(m->st->mark));
	if (ioctl(m->uffd, UFFDIO_COPY, &c) == 0) {
		memcpy(m->st->mark, page, sizeof(m->st->mark));
		return;
	}
	/* Its mark stays zeroes: evict.c evicts no unmarked mm. */
	log_warn("process %d: its beacon cannot be marked (%s): nothing of it is evicted",
		 (int)m->pid, strerror(errno));
}

/* Address spaces no longer the ones their userfaultfds serve: let go. */
static void end_foreign(struct backing *b)
{
	struct mm *v[64];
	size_t n = 0;

	pthread_mutex_lock(&b->lock);
	for (struct mm *m = b->mms; m && n < 64; m = m->next)
		if (atomic_load(&m->foreign) && m->sock >= 0 && !m->orphan && !m->foreign_ended) {
			m->foreign_ended = true;
			atomic_fetch_add(&m->refs, 1);
			v[n++] = m;
		}
	pthread_mutex_unlock(&b->lock);
	for (size_t i = 0; i < n; i++) {
		mm_end(v[i],
		       "its memory is not the address space of its userfaultfd any more (it ran exec, or its pid was used again)");
		mm_put(v[i]);
	}
}

struct span {
	uint64_t lo, hi;
};

/*
 * Register the private anonymous writable mappings of m that intersect
 * one of sp[0..n) and are at least min bytes, from one reading of
 * /proc/PID/maps.
 */
static void register_spans(struct mm *m, const struct span *sp, unsigned n, uint64_t min)
{
	char path[64], line[512];
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/maps", (int)m->pid);
	f = fopen(path, "re");
	if (f && !mm_alive(m)) {
		fclose(f); /* opened after the pid went: maybe another process's */
		return;
	}
	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		unsigned long long s, e, off;
		char perms[8];
		unsigned long ino;
		int name = 0;

		if (sscanf(line, "%llx-%llx %7s %llx %*x:%*x %lu %n", &s, &e, perms, &off, &ino,
			   &name) < 5)
			continue;
		/* private, writable, anonymous, unnamed or the heap */
		if (perms[1] != 'w' || perms[3] != 'p' || ino != 0)
			continue;
		if (name && line[name] && line[name] != '\n' && strncmp(line + name, "[heap]", 6))
			continue;
		for (unsigned i = 0; i < n; i++) {
			uint64_t a = s < sp[i].lo ? sp[i].lo : s, z = e > sp[i].hi ? sp[i].hi : e;

			if (a < z && z - a >= min)
				uffd_register(m->uffd, a, z, true);
		}
	}
	fclose(f);
}

static void register_mappings(struct mm *m, uint64_t lo, uint64_t hi, uint64_t min)
{
	struct span sp = { lo, hi };

	register_spans(m, &sp, 1, min);
}

/* RANGE: kept in *sp (at most SOCK_TURN a turn), registered by on_sock. */
static void handle_range(struct mm *m, const struct cksm_local *msg, struct span *sp, unsigned *n)
{
	uint64_t start = msg->a, len = msg->b;

	if (len == 0)
		return; /* madvise of nothing */
	if (start % PAGE || len % PAGE || start + len < start) {
		log_warn("process %d: a mergeable range %#llx+%#llx that is not whole pages",
			 (int)m->pid, (unsigned long long)start, (unsigned long long)len);
		return;
	}
	for (unsigned i = 0; i < *n; i++)
		if (sp[i].lo == start && sp[i].hi == start + len)
			return; /* the same again */
	sp[(*n)++] = (struct span){ start, start + len };
}

/*
 * OWN: libcksm's own memory. A zap that wrote to the very page under
 * eviction would wait for that eviction's end, which waits for the zap:
 * none of it is evicted. A process that names more than OWN_MAX ranges
 * keeps the first; it only keeps more of its own memory resident.
 */
static void handle_own(struct mm *m, const struct cksm_local *msg)
{
	uint64_t lo = msg->a, len = msg->b;

	if (!len || lo % PAGE || len % PAGE || lo + len < lo) {
		log_warn("process %d: an own range %#llx+%#llx that is not whole pages",
			 (int)m->pid, (unsigned long long)lo, (unsigned long long)len);
		return;
	}
	pthread_mutex_lock(&m->lock);
	if (m->nown < OWN_MAX)
		m->own[m->nown++] = (struct own){ lo, lo + len };
	pthread_mutex_unlock(&m->lock);
}

/*
 * KID: the pid of a fork child of m's, not attached yet. Its kept table
 * lives for as long as that process does (keep_alive): the child holds
 * its own userfaultfd and may come back by its key after its parent went.
 */
static void handle_kid(struct mm *m, const struct cksm_local *msg)
{
	struct backing *b = m->b;
	pid_t pid = (pid_t)msg->a;
	struct mm *c;

	/* Not checked against the process's children: a daemon's parent
	 * has exited by the time this is read. A wrong pid costs only the
	 * child's own table (kept too long, or let go too early). */
	if (msg->a == 0 || msg->a > INT32_MAX)
		return;
	pthread_mutex_lock(&b->lock);
	for (c = b->mms; c; c = c->next)
		if (c->key == msg->token && !c->pid && c->parent == m->pid && !c->gone)
			break;
	if (c)
		atomic_fetch_add(&c->refs, 1);
	pthread_mutex_unlock(&b->lock);
	if (!c)
		return;
	pthread_mutex_lock(&c->lock);
	c->st->kid_start = proc_start_time(pid);
	c->st->kid_pid = pid;
	pthread_mutex_unlock(&c->lock);
	mm_put(c);
}

static bool beacon_ok(uint64_t beacon)
{
	return beacon % PAGE == 0 && beacon + CKSM_LOCAL_BEACON_PAGES * PAGE > beacon;
}

/*
 * How m's pages are dropped: moved out by the agent into the scratch
 * where the kernel can and the process has one (remap_move.c), else by
 * libcksm's zap. The scratch is registered with the process's
 * userfaultfd (a move's destination must be), for missing faults only;
 * a fork child's came registered with the fork.
 */
static void choose_remap(struct mm *m, bool registered)
{
	uint64_t at = m->beacon + CKSM_LOCAL_SCRATCH_AT * PAGE;
	int rc = 0;

	m->remap = &remap_libcksm;
	m->scratch = 0;
	if (!m->beacon || !m->scratch_asked || !(m->b->features & UFFD_FEATURE_MOVE))
		return;
	if (!registered)
		rc = uffd_register(m->uffd, at, at + CKSM_LOCAL_SCRATCH_PAGES * PAGE, false);
	if (rc) {
		log_warn("process %d: its scratch cannot be registered (%s): its pages are zapped",
			 (int)m->pid, strerror(-rc));
		return;
	}
	m->scratch = at;
	m->remap = &remap_move;
}

/* After READY (the first message the process reads after its handshake). */
static void scratch_begin(struct mm *m)
{
	pthread_mutex_lock(&m->lock);
	scratch_reset(m);
	pthread_mutex_unlock(&m->lock);
}

/* The beacon: missing faults only; its pages are never written. */
static void register_beacon(struct mm *m)
{
	int rc;

	if (!m->beacon)
		return;
	rc = uffd_register(m->uffd, m->beacon, m->beacon + CKSM_LOCAL_BEACON_PAGES * PAGE, false);
	if (rc) {
		log_warn(
			"process %d: its beacon cannot be registered (%s): its forked children will not re-attach",
			(int)m->pid, strerror(-rc));
		m->beacon = 0;
	}
}

/* ---- the handshake ------------------------------------------------------------- */

/* The userfaultfd the process made: handshake with every feature. */
static const char *take_uffd(struct mm *m, int uffd)
{
	struct uffdio_api api = { .api = UFFD_API, .features = m->b->features };
	int fl;

	if (ioctl(uffd, UFFDIO_API, &api) < 0)
		return "the descriptor is not a fresh userfaultfd";
	fl = fcntl(uffd, F_GETFL);
	if (fl < 0 || fcntl(uffd, F_SETFL, fl | O_NONBLOCK) < 0)
		return "cannot make the userfaultfd non-blocking";
	m->uffd = uffd;
	return NULL;
}

/* HELLO: answered with /dev/userfaultfd, or the re-attach of a fork child. */
static bool on_hello(struct mm *m, const struct cksm_local *msg, int fd)
{
	struct cksm_local r = cksm_local_msg(CKSM_LOCAL_DEVFD);

	if (fd >= 0)
		close(fd);
	if (msg->type != CKSM_LOCAL_HELLO) {
		mm_end(m, "no hello");
		return false;
	}
	m->hello_seen = true;
	if (m->refused) {
		/* Nothing is handed out: no /dev/userfaultfd, no pairing. */
		r.status = -EACCES;
		local_send(m->sock, &r, -1);
		metric_inc(m->b->m_refused);
		log_warn("process %d (uid %u) may not attach: %s", (int)m->pid, (unsigned)m->uid,
			 m->refused);
		mm_end(m, NULL);
		return false;
	}
	m->merge_all = (msg->a & CKSM_LOCAL_MERGE_ALL) != 0;
	m->scratch_asked = (msg->a & CKSM_LOCAL_SCRATCH) != 0;
	m->merge_min = msg->b < PAGE ? PAGE : msg->b;
	if (!beacon_ok(msg->token)) {
		mm_end(m, "a hello with a bad beacon");
		return false;
	}
	m->beacon = msg->token;
	if (msg->a & CKSM_LOCAL_FORKED) {
		reattach_begin(m);
		return false;
	}
	if (msg->a & CKSM_LOCAL_RESUMING) {
		m->wants_resume = true; /* RESUME comes next */
		return true;
	}
	if (local_send(m->sock, &r, m->b->devfd) < 0) {
		mm_end(m, "cannot send the descriptor");
		return false;
	}
	return true;
}

/* UFFD: the process's userfaultfd; the mm is served from now on. */
static bool on_uffd(struct mm *m, int fd, int sender)
{
	struct cksm_local r = cksm_local_msg(CKSM_LOCAL_READY);
	const char *why = fd < 0	     ? "UFFD without a descriptor"
			  : sender != m->pid ? "a userfaultfd sent by another process"
					     : take_uffd(m, fd);

	if (why) {
		if (fd >= 0)
			close(fd);
		r.status = -EINVAL;
		local_send(m->sock, &r, -1);
		mm_end(m, why);
		return false;
	}
	keep_pid(m, m->pid);
	m->st->beacon = m->beacon;
	if (keep_mm(m)) {
		/* Served without a kept table, its pages would be lost with
		 * the agent: it is not served. */
		r.status = -EIO;
		local_send(m->sock, &r, -1);
		mm_end(m, "its table cannot be kept");
		return false;
	}
	serve(m, &r, "attached", true);
	return true;
}

/* m is served from now on: READY, the list, its ranges; marked first when
 * fresh (a process that comes back keeps its mark). */
static void serve(struct mm *m, struct cksm_local *ready, const char *how, bool mark)
{
	struct backing *b = m->b;

	pending_del(b, m);
	m->handshaken = true;
	m->pagemap = uffd_pagemap_open(m->pid);
	if (m->pagemap >= 0 && !mm_alive(m)) {
		close(m->pagemap);
		m->pagemap = -1;
	}
	/* The beacon first: with it registered every fork makes an event,
	 * and each is answered (local.h, CHILD). */
	register_beacon(m);
	if (m->beacon)
		ready->b = CKSM_LOCAL_FORKS_ANSWERED;
	choose_remap(m, false);
	/* Before READY: until then the process waits in its handshake, and
	 * a fork of it (which makes UFFDIO_COPY fail with EAGAIN while its
	 * event is unread) cannot come between. */
	if (mark)
		set_mark(m);
	local_send(m->sock, ready, -1);
	scratch_begin(m);
	log_info("process %d %s%s", (int)m->pid, how,
		 m->merge_all ? " (every private anonymous mapping)" : "");
	list_add(b, m);
	if (m->merge_all)
		register_mappings(m, 0, UINT64_MAX, m->merge_min);
	if (b->attached)
		b->attached(b->hook_arg, m->pid, m->merge_all);
}

/* The waiting mm kept for pid (the same process: its start time too), taken off the list. */
static struct mm *waiting_take(struct backing *b, pid_t pid)
{
	uint64_t t = proc_start_time(pid);

	for (struct mm **p = &b->waiting; *p; p = &(*p)->wnext)
		if ((*p)->st->pid == pid && (*p)->st->start_time == t && t) {
			struct mm *w = *p;

			*p = w->wnext;
			metric_gauge_add(b->m_waiting, -1);
			return w;
		}
	return NULL;
}

static bool is_userfaultfd(int fd)
{
	char path[64], link[64];
	ssize_t n;

	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	n = readlink(path, link, sizeof(link) - 1);
	if (n < 0)
		return false;
	link[n] = 0;
	return strcmp(link, "anon_inode:[userfaultfd]") == 0;
}

/*
 * Every fault that waited while no agent read them is raised again: the
 * whole user address space at once, from the lowest address a mapping
 * may have (vm.mmap_min_addr, at most 64 KiB) to the top of the 47-bit
 * space (TASK_SIZE, one page short of 2^47; with 5-level page tables the
 * same unless a program asked for more, which cksm does not register).
 */
static void wake_all(struct mm *m)
{
	const uint64_t lo = 1u << 16, hi = (1ull << 47) - PAGE;
	int rc = uffd_wake_range(m->uffd, lo, hi - lo);

	if (rc)
		log_error("process %d: its waiting faults cannot be raised again (%s)", (int)m->pid,
			  strerror(-rc));
}

/* ---- fork children's userfaultfds, kept by their parents ------------------------ */

/*
 * The answer to a fork event (local.h, CHILD): the child's userfaultfd
 * for the parent to keep; none when c is not kept in the state directory
 * (served, not past this agent); "lost" when c is NULL.
 */
void kid_keep(struct mm *m, struct mm *c)
{
	struct cksm_local k = cksm_local_msg(CKSM_LOCAL_CHILD);
	int fd = -1, rc;

	if (m->sock < 0)
		return; /* a child of a child not re-attached: nobody to keep it */
	if (!c) {
		k.a = CKSM_LOCAL_CHILD_LOST;
	} else if (c->key) {
		k.token = c->key;
		fd = c->uffd;
		/* Before it goes: a table never handed over is a child that
		 * its parent forks again (libcksm), and the next agent lets
		 * it go (keep.c). */
		c->st->handed = 1;
	}
	rc = local_send(m->sock, &k, fd);
	if (rc >= 0 && fd >= 0 && inject("die_after_child"))
		raise(SIGKILL);
	if (rc < 0) {
		/* Its fork() waits for this answer for as long as the
		 * connection lives: ended, the child is forked again, and the
		 * process comes back (the loop sees the end). */
		log_warn(
			"process %d: the answer to its fork cannot be sent (%s): its connection ends, and the fork is done again",
			(int)m->pid, strerror(-rc));
		shutdown(m->sock, SHUT_RDWR);
	}
}

void kid_forget(struct mm *c)
{
	struct cksm_local f = cksm_local_msg(CKSM_LOCAL_FORGET);
	struct mm *p;

	if (!c->parent || !c->key || !(p = mm_get(c->b, c->parent)))
		return;
	f.token = c->key;
	local_send(p->sock, &f, -1);
	mm_put(p);
}

/*
 * CHILD after a resume: the userfaultfd of a fork child the parent kept
 * while no agent was there. The child's kept table takes it, and the
 * child is served again (it re-attaches as any fork child does).
 */
static bool on_child(struct mm *m, const struct cksm_local *msg, int fd)
{
	struct backing *b = m->b;
	struct cksm_local f = cksm_local_msg(CKSM_LOCAL_FORGET);
	struct mm **p, *w = NULL;
	int fl;

	for (p = &b->waiting; *p; p = &(*p)->wnext)
		if ((*p)->key == msg->token && (*p)->st->pid == 0 && (*p)->st->parent == m->pid) {
			w = *p;
			break;
		}
	fl = fd >= 0 && is_userfaultfd(fd) ? fcntl(fd, F_GETFL) : -1;
	if (!w || fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
		/* Nothing kept for it: the parent lets go. */
		log_warn(
			"process %d: a fork child's userfaultfd %s; the process is told to let go of it",
			(int)m->pid,
			fd < 0 ? "without the descriptor"
			: !w ? "for a child no table is kept for (a forged key, or its table went)"
			     : "that is not a userfaultfd");
		if (fd >= 0)
			close(fd);
		f.token = msg->token;
		local_send(m->sock, &f, -1);
		return true;
	}
	*p = w->wnext;
	metric_gauge_add(b->m_waiting, -1);
	metric_inc(b->m_resumed);
	w->uffd = fd;
	w->handshaken = true;
	pthread_mutex_lock(&w->lock);
	resume_inbox(w);
	pthread_mutex_unlock(&w->lock);
	list_add(b, w);
	wake_all(w);
	log_info("process %d: its fork child came back with %zu backed pages", (int)m->pid,
		 w->tab.n);
	return true;
}

/*
 * A fork child that never attached comes back by its key (RESUME's b),
 * with its own copy of its userfaultfd, which its parent handed it at the
 * fork (local.h). Its table is the fork child's with that key and no
 * process yet whose beacon mark the connecting process's memory holds:
 * only the parent's descendants have it (siblings are trusted alike, as
 * with the beacon, below).
 */
static bool holds_mark(struct backing *b, const struct mm *m, const struct mm_state *st)
{
	static const uint8_t none[sizeof(st->mark)];
	uint8_t mark[sizeof(st->mark)];
	struct iovec l = { mark, sizeof(mark) },
		     r = { (void *)(uintptr_t)(st->beacon + CKSM_LOCAL_BEACON_MARK * PAGE),
			   sizeof(mark) };
	struct mm *served = mm_get(b, m->pid);

	/* Not a process served already (its parent, say), and while the
	 * parent lives, one of its children. */
	if (served) {
		mm_put(served);
		return false;
	}
	if (m->pid == st->parent || (kill(st->parent, 0) == 0 && parent_of(m->pid) != st->parent))
		return false;
	return st->beacon && memcmp(st->mark, none, sizeof(none)) != 0 &&
	       process_vm_readv(m->pid, &l, 1, &r, 1, 0) == (ssize_t)sizeof(mark) && mm_alive(m) &&
	       memcmp(mark, st->mark, sizeof(mark)) == 0;
}

/* ... served by this agent: claimed, with a reference; NULL if none. */
static struct mm *child_served(struct backing *b, struct mm *m, uint64_t key)
{
	struct mm *c = NULL;

	pthread_mutex_lock(&b->lock);
	for (c = b->mms; c; c = c->next)
		if (c->key == key && !c->pid && c->sock < 0 && !c->claimed && !c->gone)
			break;
	if (c)
		atomic_fetch_add(&c->refs, 1);
	pthread_mutex_unlock(&b->lock);
	if (!c)
		return NULL;
	if (!holds_mark(b, m, c->st)) {
		mm_put(c);
		return NULL;
	}
	pthread_mutex_lock(&b->lock);
	if (c->claimed || c->gone || c->sock >= 0) {
		pthread_mutex_unlock(&b->lock);
		mm_put(c);
		return NULL;
	}
	c->claimed = true;
	pthread_mutex_unlock(&b->lock);
	return c;
}

/* ... kept by a killed agent: taken off the waiting list; NULL if none. */
static struct mm *child_kept(struct backing *b, struct mm *m, uint64_t key)
{
	for (struct mm **p = &b->waiting; *p; p = &(*p)->wnext)
		if ((*p)->key == key && (*p)->st->pid == 0 && holds_mark(b, m, (*p)->st)) {
			struct mm *w = *p;

			*p = w->wnext;
			metric_gauge_add(b->m_waiting, -1);
			return w;
		}
	return NULL;
}

/*
 * RESUME: a process attached to a killed agent is back with its
 * userfaultfd. Its mm takes over the table kept for it (keep.c), applies
 * the event the killed agent read last, settles the eviction it left,
 * and every fault that waited is raised again. With no table kept for
 * it, the process attaches anew (DEVFD).
 */
static bool on_resume(struct mm *m, const struct cksm_local *msg, int fd, int sender)
{
	struct backing *b = m->b;
	struct cksm_local r = cksm_local_msg(CKSM_LOCAL_READY);
	struct mm *w;
	int fl;

	m->wants_resume = false;
	if (fd < 0 || sender != m->pid || !is_userfaultfd(fd)) {
		if (fd >= 0)
			close(fd);
		mm_end(m, "a resume without its own userfaultfd");
		return false;
	}
	w = waiting_take(b, m->pid);
	if (!w && msg->b) {
		struct mm *c = child_served(b, m, msg->b);

		if (c) {
			/* The agent that read its fork serves it: the
			 * connection is paired with it, as by its beacon. */
			close(fd);
			log_info("process %d: a fork child came back by its key", (int)m->pid);
			reattach_finish(b, m, c, false);
			return false; /* the connection lives on in c */
		}
		w = child_kept(b, m, msg->b);
		if (w)
			log_info("process %d: a fork child came back by its key to its kept table",
				 (int)m->pid);
	}
	if (!w) {
		struct cksm_local d = cksm_local_msg(CKSM_LOCAL_DEVFD);

		close(fd);
		if (local_send(m->sock, &d, b->devfd) < 0) {
			mm_end(m, "cannot send the descriptor");
			return false;
		}
		return true; /* UFFD comes next */
	}
	fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
		close(fd);
		w->wnext = b->waiting;
		b->waiting = w;
		metric_gauge_add(b->m_waiting, 1);
		mm_end(m, "cannot make the userfaultfd non-blocking");
		return false;
	}
	/* The connection's mm takes w's table and state; w goes empty. */
	m->uffd = fd;
	m->tab = w->tab;
	btab_init(&w->tab);
	free(m->st);
	m->st = w->st;
	m->key = w->key;
	m->damaged = w->damaged;
	/* What the scanner noted went with the killed agent: the next fork
	 * reads the mappings rather than give the child entries not its own. */
	atomic_store(&m->dontcopy, m->tab.n > 0);
	w->st = NULL;
	w->key = 0;
	mm_put(w);
	m->st->beacon = m->beacon;
	pthread_mutex_lock(&m->lock);
	if (!m->st->pid)
		keep_pid(m, m->pid); /* a fork child's: known by its pid from now on */
	resume_inbox(m);
	pthread_mutex_unlock(&m->lock);
	evict_resume(m, msg->token, (int)msg->pad, msg->status);
	serve(m, &r, "came back to this agent", false);
	metric_inc(b->m_resumed);
	log_info("process %d: %zu backed pages taken over", (int)m->pid, m->tab.n);
	wake_all(m);
	return true;
}

/* After the handshake: RANGE, ZAPPED, and CHILD after a resume. */
static bool on_request(struct mm *m, const struct cksm_local *msg, int fd, struct span *sp,
		       unsigned *nsp)
{
	if (m->handshaken && msg->type == CKSM_LOCAL_CHILD)
		return on_child(m, msg, fd);
	if (fd >= 0)
		close(fd);
	if (!m->handshaken) {
		mm_end(m, "a message before the handshake ended");
		return false;
	}
	switch (msg->type) {
	case CKSM_LOCAL_RANGE:
		handle_range(m, msg, sp, nsp);
		return true;
	case CKSM_LOCAL_ZAPPED:
		evict_zapped(m, msg->token, msg->status);
		return true;
	case CKSM_LOCAL_SCRUBBED:
		scratch_scrubbed(m, msg->a, msg->b, msg->status);
		return true;
	case CKSM_LOCAL_OWN:
		handle_own(m, msg);
		return true;
	case CKSM_LOCAL_KID:
		handle_kid(m, msg);
		return true;
	default:
		mm_end(m, "an unexpected message");
		return false;
	}
}

#define SOCK_TURN 16

static void on_sock(uv_poll_t *h, int status, int events)
{
	struct mm *m = h->data;
	struct cksm_local msg = cksm_local_msg(0);
	const char *why;
	struct span sp[SOCK_TURN];
	unsigned nsp = 0;
	int fd, rc = 0, sender = 0;
	bool go = true;

	(void)events;
	if (status < 0) {
		mm_end(m, "socket error");
		return;
	}
	/* At most SOCK_TURN messages a loop turn: a process that never stops
	 * talking (madvise in a loop) gets its share, the others theirs; the
	 * socket, still readable, comes back at the next turn. */
	for (unsigned n = 0; go && n < SOCK_TURN; n++) {
		rc = cksm_local_recv_from(m->sock, &msg, &fd, MSG_DONTWAIT, &why, &sender);
		if (rc)
			break;
		if (!m->hello_seen)
			go = on_hello(m, &msg, fd);
		else if (!m->handshaken && msg.type == CKSM_LOCAL_UFFD && m->uffd < 0 &&
			 !m->wants_resume)
			go = on_uffd(m, fd, sender);
		else if (!m->handshaken && msg.type == CKSM_LOCAL_RESUME && m->wants_resume)
			go = on_resume(m, &msg, fd, sender);
		else
			go = on_request(m, &msg, fd, sp, &nsp);
	}
	if (go && nsp) {
		register_spans(m, sp, nsp, 0);
		if (m->b->attached) /* the scanner looks at the new ranges at once */
			m->b->attached(m->b->hook_arg, m->pid, m->merge_all);
	}
	if (go && rc && rc != -EAGAIN)
		mm_end(m, rc == -ECONNRESET ? NULL : why ? why : strerror(-rc));
}

/* A connection in the handshake is done with (loop thread). */
static void pending_del(struct backing *b, struct mm *m)
{
	if (m->beacon_idx >= 0)
		reattach_clear(b, m);
	for (struct mm **p = &b->pending; *p; p = &(*p)->pnext)
		if (*p == m) {
			*p = m->pnext;
			b->npending--;
			return;
		}
}

/*
 * A new connection: its hello, the descriptor and the userfaultfd come
 * through on_sock, without the loop ever waiting for them.
 */
/* Is vm.unprivileged_userfaultfd 1 (any user may trap kernel-mode faults)? */
static bool unprivileged_userfaultfd(void)
{
	FILE *f = fopen("/proc/sys/vm/unprivileged_userfaultfd", "re");
	int v = 0;

	if (f) {
		if (fscanf(f, "%d", &v) != 1)
			v = 0;
		fclose(f);
	}
	return v == 1;
}

/*
 * May the peer of fd attach? Attaching grants a userfaultfd that traps
 * kernel-mode faults too (the agent hands out /dev/userfaultfd and does
 * the handshake with every feature), which vm.unprivileged_userfaultfd=0
 * keeps from ordinary users: root and socket_group's members may, and
 * with attach_any_user any user where that sysctl is 1. The groups are
 * the peer's at connect (SO_PEERGROUPS). NULL, or why not.
 */
static const char *may_attach(struct backing *b, int fd, const struct ucred *cred)
{
	gid_t *g = NULL;
	socklen_t len = 64 * sizeof(gid_t);
	bool in = false;

	if (cred->uid == 0)
		return NULL;
	if (b->attach_group) {
		in = cred->gid == b->attach_gid;
		for (int tries = 0; !in && tries < 2; tries++) {
			gid_t *ng = realloc(g, len ? len : sizeof(gid_t));

			if (!ng)
				break;
			g = ng;
			if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, g, &len) == 0) {
				for (size_t i = 0; i < len / sizeof(gid_t); i++)
					in = in || g[i] == b->attach_gid;
				break;
			}
			if (errno != ERANGE)
				break;
		}
		free(g);
		if (in)
			return NULL;
	}
	if (b->cfg->attach_any_user)
		return unprivileged_userfaultfd()
			       ? NULL
			       : "it is neither root nor in socket_group, and vm.unprivileged_userfaultfd is 0";
	return b->attach_group ? "it is neither root nor in socket_group" : "it is not root";
}

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77 /* Linux 6.5 */
#endif

/*
 * A pidfd of the peer of fd: the connecting process itself (SO_PEERPIDFD),
 * or before Linux 6.5 one opened by its pid while its end is still open,
 * so that the pid was not given to another process meanwhile. -1 if none.
 */
static int peer_pidfd(int fd, pid_t pid)
{
	struct pollfd p = { .fd = fd, .events = POLLRDHUP };
	socklen_t len = sizeof(int);
	int pidfd = -1;

	if (getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &len) == 0 && pidfd >= 0)
		return pidfd;
	pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	if (pidfd >= 0 && poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP))) {
		close(pidfd);
		return -1;
	}
	if (pidfd >= 0)
		fcntl(pidfd, F_SETFD, FD_CLOEXEC);
	return pidfd;
}

bool mm_alive(const struct mm *m)
{
	struct pollfd p = { .fd = m->pidfd, .events = POLLIN };

	return m->pidfd < 0 || poll(&p, 1, 0) == 0;
}

/*
 * Room in the handshake for a new connection of uid. A new connection is
 * never refused: when uid (root excepted) has PENDING_PER_USER there, its
 * own oldest gives way; when PENDING_MAX are, the oldest of the user with
 * the most. So silent connections (of a user refused anyway, or of a
 * group member) cannot keep others from attaching, and an honest
 * handshake, microseconds long, is not the one to go. Logged at most
 * GAVE_WAY_LOGS times a second, then summed up.
 */
static void make_room(struct backing *b, uid_t uid)
{
	struct mm *live[PENDING_MAX * 2], *go = NULL;
	unsigned n = 0, own = 0, most = 0;
	uint64_t now = uv_now(b->loop);

	for (struct mm *m = b->pending; m && n < PENDING_MAX * 2; m = m->pnext)
		if (!uv_is_closing((uv_handle_t *)&m->poll))
			live[n++] = m; /* newest first */
	for (unsigned i = 0; i < n; i++)
		own += live[i]->uid == uid;
	if (uid != 0 && own >= PENDING_PER_USER) {
		for (unsigned i = 0; i < n; i++)
			if (live[i]->uid == uid)
				go = live[i];
	} else if (n >= PENDING_MAX) {
		for (unsigned i = 0; i < n; i++) {
			unsigned k = 0;

			for (unsigned j = 0; j < n; j++)
				k += live[j]->uid == live[i]->uid;
			if (k >= most) { /* ties: the older */
				most = k;
				go = live[i];
			}
		}
	}
	if (!go)
		return;
	metric_inc(b->m_gave_way);
	if (now - b->gave_way_at >= 1000) {
		if (b->gave_way_quiet)
			log_warn("%u more connections in the handshake gave way within a second",
				 b->gave_way_quiet);
		b->gave_way_at = now;
		b->gave_way_logged = b->gave_way_quiet = 0;
	}
	if (b->gave_way_logged < GAVE_WAY_LOGS) {
		b->gave_way_logged++;
		log_warn(
			"process %d (uid %u): its connection in the handshake for %llu ms gives way to a newer one (%s)",
			(int)go->pid, (unsigned)go->uid, (unsigned long long)(now - go->born_ms),
			uid != 0 && own >= PENDING_PER_USER ? "its user's limit"
							    : "the handshake is full");
	} else {
		b->gave_way_quiet++;
	}
	uv_poll_stop(&go->poll);
	close_conn(go);
}

static void on_accept(uv_poll_t *h, int status, int events)
{
	struct backing *b = h->data;
	struct ucred cred;
	socklen_t cl = sizeof(cred);
	struct mm *m;
	int fd;

	(void)status;
	(void)events;
	fd = accept4(b->listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
	if (fd < 0 && (errno == EMFILE || errno == ENFILE || errno == ENOMEM || errno == ENOBUFS)) {
		/* The connection waits in the backlog: listen again at the
		 * next tick, not at once (the socket stays readable). */
		log_warn("cannot take a connection: %s; listening again in a second",
			 strerror(errno));
		uv_poll_stop(&b->lpoll);
		b->accept_paused = true;
		return;
	}
	if (fd < 0)
		return;
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) < 0 || cred.pid <= 0)
		goto close_fd;
	make_room(b, cred.uid);
	/* The kernel names the sender of every message: the userfaultfd must
	 * come from the process that connected, not from a child of it. */
	if (setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &(int){ 1 }, sizeof(int)) < 0)
		goto close_fd;
	m = mm_new(b, fd, -1, cred.pid);
	if (!m)
		goto close_fd;
	m->uid = cred.uid;
	m->refused = may_attach(b, fd, &cred);
	/* Known by its pidfd from now on: a pid used again is never taken
	 * for it (the mark, local.h, guards what is read of its memory). */
	m->pidfd = peer_pidfd(fd, cred.pid);
	if (m->pidfd < 0 && !m->refused)
		m->refused = "it exited, or no pidfd can be had for it";
	m->born_ms = uv_now(b->loop);
	m->pnext = b->pending;
	b->pending = m;
	b->npending++;
	uv_poll_init(b->loop, &m->poll, fd);
	m->poll.data = m;
	uv_poll_start(&m->poll, UV_READABLE | UV_DISCONNECT, on_sock);
	return;
close_fd:
	close(fd);
}

/* ---- forked children re-attaching ------------------------------------------- */

/*
 * A forked child's libcksm connects again with CKSM_LOCAL_FORKED. Its
 * pages are served already, through the userfaultfd the fork event gave
 * us; the connection has to be paired with that one mm among the fork
 * children's. The child is told a page of its beacon (a page index free
 * among the re-attaches under way) to drop and read. The read faults on
 * the child's userfaultfd and the kernel names the faulting thread: the
 * fork child's mm that faults there from a thread of the connecting
 * process is that process's. Then the mm takes the connection, and the
 * child's pages can be evicted like any attached process's.
 */
static void reattach_begin(struct mm *c)
{
	struct backing *b = c->b;
	struct cksm_local r = cksm_local_msg(CKSM_LOCAL_BEACON);
	int idx = -1;

	pthread_mutex_lock(&b->lock);
	for (unsigned k = 0; c->beacon && k < CKSM_LOCAL_BEACON_SLOTS; k++) {
		unsigned i = (b->reattach_next + k) % CKSM_LOCAL_BEACON_SLOTS;

		if (!b->reattach[i].conn) {
			idx = (int)i;
			break;
		}
	}
	if (idx >= 0) {
		b->reattach_next = (unsigned)idx + 1;
		b->reattach[idx] =
			(struct reattach){ .conn = c, .addr = c->beacon + (uint64_t)idx * PAGE };
		atomic_fetch_add(&b->reattaching, 1);
		c->beacon_idx = idx;
	}
	pthread_mutex_unlock(&b->lock);
	if (idx < 0) {
		r = cksm_local_msg(CKSM_LOCAL_READY);
		r.status = c->beacon ? -EBUSY : -EINVAL;
		local_send(c->sock, &r, -1);
		mm_end(c, c->beacon ? "too many forked children re-attaching at once"
				    : "a forked child without a beacon");
		return;
	}
	r.a = (uint64_t)idx;
	if (local_send(c->sock, &r, -1) < 0)
		mm_end(c, "cannot send the beacon page");
}

/* A re-attach slot is free again; b->lock held. */
static void reattach_free(struct backing *b, struct reattach *r)
{
	r->conn->beacon_idx = -1;
	*r = (struct reattach){ 0 };
	atomic_fetch_sub(&b->reattaching, 1);
}

/* The connection c is done with; so is its re-attach slot. */
static void reattach_clear(struct backing *b, struct mm *c)
{
	struct mm *found = NULL;
	struct reattach *r;

	pthread_mutex_lock(&b->lock);
	r = &b->reattach[c->beacon_idx];
	if (r->conn == c) {
		found = r->found;
		if (found)
			found->claimed = false;
		reattach_free(b, r);
	}
	pthread_mutex_unlock(&b->lock);
	c->beacon_idx = -1;
	if (found)
		mm_put(found);
}

/* Is tid, as its own pid namespace numbers it, a thread of process pid? */
static bool thread_of(pid_t pid, pid_t tid)
{
	char path[80], line[256];
	struct dirent *de;
	bool yes = false;
	DIR *d;

	snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
	d = opendir(path);
	if (!d)
		return false;
	while (!yes && (de = readdir(d))) {
		FILE *f;

		if (de->d_name[0] < '1' || de->d_name[0] > '9')
			continue;
		snprintf(path, sizeof(path), "/proc/%d/task/%.16s/status", (int)pid, de->d_name);
		f = fopen(path, "re");
		if (!f)
			continue;
		while (fgets(line, sizeof(line), f)) {
			char *p = line + 6, *end;
			long last = -1;

			if (strncmp(line, "NSpid:", 6))
				continue;
			for (long v; (v = strtol(p, &end, 10)), end != p; p = end)
				last = v;
			yes = last == tid;
			break;
		}
		fclose(f);
	}
	closedir(d);
	return yes;
}

/* The parent of pid (as this agent's pid namespace numbers it), or 0. */
static pid_t parent_of(pid_t pid)
{
	char buf[512];
	const char *f = proc_stat_fields((int)pid, buf, sizeof(buf));
	int ppid = 0;

	if (!f || sscanf(f, "%*c %d", &ppid) != 1)
		return 0;
	return (pid_t)ppid;
}

/*
 * Fault thread: a fault of a fork child's mm on a beacon page a
 * re-attaching connection was told? It is that connection's when the
 * connecting process is a child of the one that forked m and the faulting
 * thread is one of its own. (Beacons of different processes may overlap:
 * every slot naming the page is tried.)
 */
void reattach_match(struct mm *m, const struct uffd_msg *msg)
{
	struct backing *b = m->b;
	uint64_t addr = msg->arg.pagefault.address & ~(uint64_t)(PAGE - 1);
	pid_t tid = (pid_t)msg->arg.pagefault.feat.ptid, parent;
	struct {
		int idx;
		pid_t pid;
	} cand[CKSM_LOCAL_BEACON_PAGES];
	unsigned n = 0;
	bool paired = false;

	pthread_mutex_lock(&b->lock);
	parent = m->parent;
	for (unsigned i = 0; m->sock < 0 && !m->claimed && i < CKSM_LOCAL_BEACON_PAGES; i++)
		if (b->reattach[i].conn && !b->reattach[i].found && b->reattach[i].addr == addr) {
			cand[n].idx = (int)i;
			cand[n++].pid = b->reattach[i].conn->pid;
		}
	pthread_mutex_unlock(&b->lock);
	for (unsigned k = 0; k < n && !paired; k++) {
		struct reattach *r = &b->reattach[cand[k].idx];

		if (!parent || parent_of(cand[k].pid) != parent || !thread_of(cand[k].pid, tid))
			continue;
		pthread_mutex_lock(&b->lock);
		if (r->conn && r->conn->pid == cand[k].pid && !r->found && !m->claimed &&
		    !m->gone) {
			r->found = m;
			m->claimed = true;
			atomic_fetch_add(&m->refs, 1);
			paired = true;
		}
		pthread_mutex_unlock(&b->lock);
	}
	if (paired)
		uv_async_send(&b->reattach_async);
}

/* Loop thread: the connection c takes the fork child's mm fm. */
static void reattach_finish(struct backing *b, struct mm *c, struct mm *fm, bool hand_uffd)
{
	struct cksm_local r = cksm_local_msg(CKSM_LOCAL_READY);
	int fd = -1;

	if (uv_is_closing((uv_handle_t *)&c->poll) || fm->gone ||
	    (fd = fcntl(c->sock, F_DUPFD_CLOEXEC, 3)) < 0) {
		pthread_mutex_lock(&b->lock);
		fm->claimed = false;
		pthread_mutex_unlock(&b->lock);
		if (!uv_is_closing((uv_handle_t *)&c->poll)) {
			r.status = -ESRCH;
			local_send(c->sock, &r, -1);
			mm_end(c, "its fork child's table is gone");
		}
		mm_put(fm);
		return;
	}
	/* pid and sock change under b->lock: mm_get and the fault thread
	 * look at them under it, and the evictor may use fm from then on. */
	fm->scratch_asked = c->scratch_asked;
	choose_remap(fm, true);
	fm->pagemap = uffd_pagemap_open(c->pid);
	if (c->pidfd >= 0)
		fm->pidfd = fcntl(c->pidfd, F_DUPFD_CLOEXEC, 3);
	pthread_mutex_lock(&b->lock);
	fm->pid = c->pid;
	fm->sock = fd;
	pthread_mutex_unlock(&b->lock);
	pthread_mutex_lock(&fm->lock);
	keep_pid(fm, c->pid); /* a killed agent's successor knows it by its pid now */
	pthread_mutex_unlock(&fm->lock);
	fm->merge_all = c->merge_all;
	fm->merge_min = c->merge_min;
	fm->hello_seen = true;
	fm->born_ms = c->born_ms;
	uv_poll_init(b->loop, &fm->poll, fd);
	fm->poll.data = fm;
	uv_poll_start(&fm->poll, UV_READABLE | UV_DISCONNECT, on_sock);
	/* The child keeps a copy of its userfaultfd, as every attached process
	 * does: a killed agent's successor gets it back from the child (one
	 * that came back by its key has one already). Its beacon's
	 * registration came with the fork: its forks make events. */
	if (fm->beacon)
		r.b = CKSM_LOCAL_FORKS_ANSWERED;
	local_send(fd, &r, hand_uffd ? fm->uffd : -1);
	scratch_begin(fm);
	kid_forget(fm);
	log_info("process %d re-attached (forked from %d)", (int)fm->pid, (int)fm->parent);
	metric_inc(b->m_reattached);
	/* The connection lives on in fm; its own mm goes without a word. */
	uv_poll_stop(&c->poll);
	close_conn(c);
	if (fm->merge_all)
		register_mappings(fm, 0, UINT64_MAX, fm->merge_min);
	if (b->attached)
		b->attached(b->hook_arg, fm->pid, fm->merge_all);
	mm_put(fm); /* the slot's reference */
}

static void on_reattach(uv_async_t *h)
{
	struct backing *b = h->data;
	struct {
		struct mm *c, *fm;
	} v[CKSM_LOCAL_BEACON_PAGES];
	size_t n = 0;

	pthread_mutex_lock(&b->lock);
	for (unsigned i = 0; i < CKSM_LOCAL_BEACON_PAGES; i++) {
		struct reattach *r = &b->reattach[i];

		if (!r->conn || !r->found)
			continue;
		v[n].c = r->conn;
		v[n++].fm = r->found;
		reattach_free(b, r);
	}
	pthread_mutex_unlock(&b->lock);
	for (size_t i = 0; i < n; i++)
		reattach_finish(b, v[i].c, v[i].fm, true);
}

/* ---- housekeeping ---------------------------------------------------------------- */

static void end_slow_handshakes(struct backing *b)
{
	for (struct mm *m = b->pending, *next; m; m = next) {
		next = m->pnext;
		if (uv_now(b->loop) - m->born_ms > HELLO_WAIT_MS &&
		    !uv_is_closing((uv_handle_t *)&m->poll))
			mm_end(m, "no handshake within 5 s");
	}
}

/*
 * merge_all processes get their new mappings registered; fork children
 * that exited (and orphans) are forgotten, their references released.
 */
static void follow_mappings(struct backing *b)
{
	struct mm *v[256];
	size_t n = 0;

	pthread_mutex_lock(&b->lock);
	for (struct mm *m = b->mms; m && n < 256; m = m->next)
		if ((m->merge_all && m->sock >= 0 && !m->orphan) || m->sock < 0 || m->orphan) {
			atomic_fetch_add(&m->refs, 1);
			v[n++] = m;
		}
	pthread_mutex_unlock(&b->lock);
	for (size_t i = 0; i < n; i++) {
		if (v[i]->sock >= 0 && !v[i]->orphan)
			register_mappings(v[i], 0, UINT64_MAX, v[i]->merge_min);
		else if (!v[i]->gone && uffd_mm_gone(v[i]->uffd))
			list_del(b, v[i]);
		mm_put(v[i]);
	}
}

/*
 * Kept mms whose processes exited without coming back: released. A fork
 * child not attached yet holds its userfaultfd itself and may come back
 * by its key (on_resume) after its parent exited: its table waits
 * CHILD_GRACE_MS from the agent's start.
 */
#define CHILD_GRACE_MS 60000
static void forget_waiting(struct backing *b)
{
	for (struct mm **p = &b->waiting, *w; (w = *p);) {
		if (keep_alive(w->st) || (!w->st->pid && !keep_kid_known(w->st) &&
					  now_ms() - w->born_ms < CHILD_GRACE_MS)) {
			p = &w->wnext;
			continue;
		}
		*p = w->wnext;
		metric_gauge_add(b->m_waiting, -1);
		if (w->st->pid)
			log_info(
				"process %d exited before it came back; its %zu kept pages are released",
				(int)w->st->pid, w->tab.n);
		else
			log_info(
				"a fork child of process %d did not come back, nor did its parent; its %zu kept pages are released",
				(int)w->st->parent, w->tab.n);
		mm_put(w);
	}
}

/* The working set's regions by state, and the budgets spent. */
static void wset_gauges(struct backing *b)
{
	struct wset_stats st;

	wset_stats(b->wset, now_ms(), &st);
	for (int s = 0; s < WSET_STATES; s++)
		metric_set(b->m_regions[s], (double)st.regions[s]);
	metric_add(b->m_broke, st.broke - b->broke_seen);
	b->broke_seen = st.broke;
}

static void on_housekeeping(uv_timer_t *t)
{
	struct backing *b = t->data;

	if (b->accept_paused) {
		b->accept_paused = false;
		uv_poll_start(&b->lpoll, UV_READABLE, on_accept);
	}
	end_slow_handshakes(b);
	forget_waiting(b);
	end_foreign(b);
	follow_mappings(b);
	ksm_handover(b);
	wset_gauges(b);
}

/* ---- the socket ------------------------------------------------------------------ */

/*
 * Who may connect: root (mode 0600); with socket_group its members too
 * (root:GROUP, 0660); with attach_any_user anyone (0666), for the agent
 * to decide (may_attach). The mode comes with bind (the umask) and the
 * group with lchown: neither follows a link put at the path.
 */
static mode_t socket_umask(const struct backing *b)
{
	return b->cfg->attach_any_user ? 0111 : b->attach_group ? 0117 : 0177;
}

static int listen_on(struct backing *b, const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	mode_t old;
	int fd, rc;

	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	strcpy(sa.sun_path, path);
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	/* Another agent serving there keeps its socket. */
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 || errno == EAGAIN) {
		close(fd);
		return -EADDRINUSE;
	}
	close(fd);
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	unlink(path);
	old = umask(socket_umask(b));
	rc = bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ? -errno : 0;
	umask(old);
	if (rc || listen(fd, 64) < 0) {
		rc = rc ? rc : -errno;
		goto close_fd;
	}
	if (b->attach_group && lchown(path, 0, b->attach_gid)) {
		rc = -errno;
		unlink(path);
		goto close_fd;
	}
	return fd;
close_fd:
	close(fd);
	return rc;
}

int attach_listen(struct backing *b)
{
	const struct config *cfg = b->cfg;
	struct group gr, *g = NULL;
	char buf[4096];
	int rc;

	if (cfg->socket_group[0]) {
		if (getgrnam_r(cfg->socket_group, &gr, buf, sizeof(buf), &g) || !g) {
			log_error("cannot listen on %s: there is no group %s (socket_group)",
				  cfg->socket_path, cfg->socket_group);
			return -ENXIO;
		}
		b->attach_group = true;
		b->attach_gid = g->gr_gid;
	}
	rc = listen_on(b, cfg->socket_path);
	if (rc < 0) {
		log_error("cannot listen on %s: %s", cfg->socket_path, strerror(-rc));
		return rc;
	}
	b->listen_fd = rc;
	return 0;
}

void attach_unlisten(struct backing *b)
{
	close(b->listen_fd);
	unlink(b->cfg->socket_path);
}

void attach_start(struct backing *b)
{
	uv_poll_init(b->loop, &b->lpoll, b->listen_fd);
	b->lpoll.data = b;
	uv_poll_start(&b->lpoll, UV_READABLE, on_accept);
	uv_timer_init(b->loop, &b->ranges);
	b->ranges.data = b;
	uv_timer_start(&b->ranges, on_housekeeping, 1000, 1000);
	uv_async_init(b->loop, &b->reattach_async, on_reattach);
	b->reattach_async.data = b;
}

static void on_lpoll_closed(uv_handle_t *h)
{
	struct backing *b = h->data;

	if (b->closing)
		b->closed_cb = b->stop_cb; /* the last connection's close ends it */
	else
		b->stop_cb(h);
}

void attach_stop(struct backing *b, uv_close_cb last)
{
	struct mm *m;

	uv_poll_stop(&b->lpoll);
	attach_unlisten(b);
	/* b goes with the last close: the listener's, or a connection's
	 * closed before it (a close asked for earlier in this loop turn
	 * runs after the listener's). */
	b->stop_cb = last;
	uv_close((uv_handle_t *)&b->lpoll, on_lpoll_closed);
	uv_timer_stop(&b->ranges);
	uv_close((uv_handle_t *)&b->ranges, NULL);
	uv_close((uv_handle_t *)&b->reattach_async, NULL);
	for (struct mm *p = b->pending; p; p = p->pnext)
		if (!uv_is_closing((uv_handle_t *)&p->poll)) {
			uv_poll_stop(&p->poll);
			close_conn(p);
		}
	while ((m = b->mms)) {
		b->mms = m->next;
		m->handshaken = false; /* off the list: its close only drops it */
		if (m->sock >= 0 && !m->orphan && !uv_is_closing((uv_handle_t *)&m->poll)) {
			uv_poll_stop(&m->poll);
			close_conn(m);
		} else if (m->sock < 0 || m->orphan) {
			mm_put(m);
		} /* else its close is under way and drops it */
	}
}
