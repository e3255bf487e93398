/*
 * libcksm - lets an unmodified process be served by the node's cksm agent.
 *
 * Loaded with LD_PRELOAD (or linked), it attaches at start: it connects to
 * the agent's socket (CKSM_SOCKET, default /run/cksm/agent.sock), gets an
 * open /dev/userfaultfd from the agent, makes this process's userfaultfd
 * from it and hands that back, keeping a copy. The copy is what makes a
 * killed agent harmless: the ranges stay registered, a fault waits
 * instead of reading zeroes, and the keeper thread connects again (with
 * backoff) and hands the userfaultfd to the next agent, which takes over
 * the table the killed one kept (local.h, RESUME). The agent does the UFFDIO_API handshake
 * (with the fork, remap, remove and unmap events, which need privileges
 * the process may not have) and from then on registers, write-protects
 * and fills this process's mergeable ranges from outside. What stays here
 * is what only the process itself can do: drop pages the agent has
 * compared and backed (ZAP: madvise(MADV_DONTNEED)) and mark ranges for
 * the kernel's own KSM (madvise(MADV_MERGEABLE)), on one service thread
 * that blocks every signal.
 *
 * Mergeable ranges: what the program passes to madvise(MADV_MERGEABLE)
 * (kept from the kernel's KSM while attached: see madvise below), or
 * with CKSM_MERGE_ALL=1 every private anonymous mapping of at least
 * CKSM_MERGE_MIN bytes (default 1 MiB), found by the agent.
 *
 * Without an agent, or with CKSM_DISABLE=1, it does nothing at all.
 *
 * A forked child (without exec) is served from the start through the
 * userfaultfd the fork event gave the agent; the inherited connection is
 * the parent's, and the child closes its copy. It then attaches again, on
 * a thread of its own, so that its pages can be evicted too: the agent
 * tells it a page of the beacon (a small read-only mapping made at
 * attach, never written) to drop and read, and the fault that read
 * causes tells the agent which userfaultfd is this child's (local.h).
 * fork(), _Fork(), daemon() and clone() without CLONE_VM hold the child
 * back until the agent kept its userfaultfd; mmap(), munmap(), mremap(),
 * brk() and sbrk() wait while a page is being taken out (the map guard).
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <linux/futex.h>
#include <linux/userfaultfd.h>
#include <xxhash.h>

#include "local.h"
#include "uffd_move.h"

#define EXPORT __attribute__((visibility("default")))

/* Set by the thread that attaches; read by madvise() in any thread. */
static int sock = -1;
static pid_t attached_pid;
static struct cksm_local hello; /* as sent at attach, for the children */
static volatile uint8_t *beacon;
static uint8_t *scratch;  /* the agent's, never touched here (local.h) */
static int pagemap = -1;  /* /proc/self/pagemap, for the moves ... */
static dev_t pagemap_dev; /* ... while it is still that file */
static ino_t pagemap_ino;

/* /proc/self/pagemap, opened anew (a fork child reads its own). */
static void pagemap_open(void)
{
	struct stat st;

	if (pagemap >= 0)
		close(pagemap);
	pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (pagemap >= 0 && fstat(pagemap, &st) == 0) {
		pagemap_dev = st.st_dev;
		pagemap_ino = st.st_ino;
	}
}

/* Is pagemap still the file it was opened as (a program may close it)? */
static bool pagemap_ours(void)
{
	struct stat st;

	return pagemap >= 0 && fstat(pagemap, &st) == 0 && st.st_dev == pagemap_dev &&
	       st.st_ino == pagemap_ino;
}
static int (*real_madvise)(void *, size_t, int);
/* This process's userfaultfd, kept while attached (to any agent): -1 if none. */
static int own_uffd = -1;
/* A fork child's key (CHILD in local.h), handed by its parent with a copy
 * of its userfaultfd: until it attached, it comes back by it (RESUME). */
static uint64_t child_key;
/* The connection whose agent answers each fork of this process (its READY
 * said so), -1 if none. */
static int answered_on = -1;

/*
 * The last zap, and the connection it is answered on. A zap runs only on
 * the connection that is current when it starts, and a resume reports it
 * as it was; both under zap_lock, so the agent that takes over hears of
 * every zap exactly once (local.h, RESUME).
 */
static pthread_mutex_t zap_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
	uint64_t token, addr;
	int state; /* enum cksm_local_zap_state */
	int status;
	bool answered;
} last_zap;
/* Where the agent reads it at a fork (local.h): the page after the beacon. */
static volatile struct cksm_local_zapstate *zap_page;
/* A zap holds it to read, a fork to write: they never overlap. */
static pthread_rwlock_t zap_fork = PTHREAD_RWLOCK_INITIALIZER;

/* last_zap, where the agent can read it. zap_lock held. */
static void publish_zap(void)
{
	if (!zap_page)
		return;
	zap_page->token = last_zap.token;
	zap_page->addr = last_zap.addr;
	zap_page->state = last_zap.state;
	zap_page->status = last_zap.status;
}

static int sock_get(void)
{
	return __atomic_load_n(&sock, __ATOMIC_ACQUIRE);
}

static bool attached_here(void)
{
	return __atomic_load_n(&attached_pid, __ATOMIC_ACQUIRE) == getpid();
}

/* fd is the connection from now on. zap_lock held. */
static void attached(int fd)
{
	__atomic_store_n(&attached_pid, getpid(), __ATOMIC_RELEASE);
	__atomic_store_n(&sock, fd, __ATOMIC_RELEASE);
}

static int send_local(int fd, const struct cksm_local *m, int pass_fd)
{
	return cksm_local_send(fd, m, pass_fd, 0);
}

static int recv_local(int fd, struct cksm_local *m, int *got_fd)
{
	const char *why;

	return cksm_local_recv(fd, m, got_fd, 0, &why);
}

/* Has the agent closed its end (its requests may still be queued)? */
static bool agent_gone(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLRDHUP };

	return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP));
}

/* The last zap's answer, on the current connection if there is one. zap_lock held. */
static void answer_zap(void)
{
	struct cksm_local r = cksm_local_msg(CKSM_LOCAL_ZAPPED);
	int fd = sock_get();

	if (fd < 0 || last_zap.state != CKSM_LOCAL_ZAP_DONE || last_zap.answered)
		return;
	r.token = last_zap.token;
	r.status = last_zap.status;
	last_zap.answered = send_local(fd, &r, -1) == 0;
}

/*
 * Ranges the program marked MADV_DONTFORK: memory registered for RDMA
 * (libibverbs marks it so before it pins it). A page there is never
 * dropped for the agent: what a device writes to a pinned page after the
 * drop would be lost. The check and the drop hold dontfork_lock, and so
 * does the marking, so a pin that follows the mark follows any drop. A
 * move needs no such care (the kernel refuses to move a pinned page). A
 * fork holds it too: the agent reads, at the fork's event, which VMAs
 * the child did not get.
 */
#define DONTFORK_MAX 256
static pthread_mutex_t dontfork_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
	uintptr_t lo, hi;
} dontfork[DONTFORK_MAX];
static unsigned ndontfork;
static bool dontfork_full; /* more than DONTFORK_MAX: no zap at all */

static bool in_dontfork(uintptr_t a, size_t len)
{
	if (dontfork_full)
		return true;
	for (unsigned i = 0; i < ndontfork; i++)
		if (a < dontfork[i].hi && a + len > dontfork[i].lo)
			return true;
	return false;
}

/* madvise(MADV_DONTFORK / MADV_DOFORK) of [a, a + len). dontfork_lock held. */
static void note_dontfork(uintptr_t a, size_t len, bool on)
{
	if (!on) {
		for (unsigned i = 0; i < ndontfork;)
			if (dontfork[i].lo >= a && dontfork[i].hi <= a + len)
				dontfork[i] = dontfork[--ndontfork];
			else
				i++;
		return;
	}
	if (ndontfork == DONTFORK_MAX)
		dontfork_full = true;
	else
		dontfork[ndontfork++].lo = a, dontfork[ndontfork - 1].hi = a + len;
}

/*
 * The page at a, moved into page idx of the scratch (local.h) with
 * UFFDIO_MOVE: only if it is still the page the agent write-protected
 * and compared (pagemap: there, and protected through the userfaultfd).
 * A page mapped there anew since is not protected, and stays.
 */
#define PM_THERE   (3ULL << 62) /* present or swapped */
#define PM_UFFD_WP (1ULL << 57)
/* Is the page at a there and write-protected through the userfaultfd? */
static bool protected_here(uintptr_t a)
{
	uint64_t e = 0;

	if (pread(pagemap, &e, sizeof(e), (off_t)(a / 4096 * sizeof(e))) != sizeof(e))
		return false;
	return (e & PM_THERE) && (e & PM_UFFD_WP);
}

static int move_out(uintptr_t a, uint64_t want, int32_t idx)
{
	struct uffdio_move mv = { .src = a, .len = 4096 };

	if (!scratch || own_uffd < 0 || !pagemap_ours() || idx < 0 ||
	    idx >= (int32_t)CKSM_LOCAL_SCRATCH_PAGES)
		return -EINVAL;
	mv.dst = (uintptr_t)scratch + (uintptr_t)idx * 4096;
	if (!protected_here(a))
		return -ECANCELED;
	if (ioctl(own_uffd, UFFDIO_MOVE, &mv))
		return -errno;
	if (mv.move != 4096)
		return -EAGAIN;
	if (XXH3_64bits((const void *)(uintptr_t)mv.dst, 4096) == want)
		return 0;
	/* Not the page compared: another thread unmapped it and mapped and
	 * wrote a new one between the look and the move. Back at once, by a
	 * move where the mapping is served (a write there would fault to
	 * the agent, which waits for this zap), else by a copy. */
	mv = (struct uffdio_move){ .dst = a, .src = mv.dst, .len = 4096 };
	if (ioctl(own_uffd, UFFDIO_MOVE, &mv) && errno == EINVAL)
		memcpy((void *)a, (const void *)(uintptr_t)mv.src, 4096);
	return -ECANCELED;
}

/*
 * The map guard. A page is dropped or moved for the agent only if it is
 * still the one the agent compared (write-protected: its pagemap); a
 * mapping made anew at its address between that look and the drop would
 * lose what the program wrote there. So the look and the drop (or the
 * move, its check and the move back) are made with none of the program's
 * mmap, munmap, mremap, brk or sbrk under way: those wait the few
 * microseconds a zap holds the guard, and a zap that finds them under way
 * for 2 ms gives up (-EAGAIN: the agent tries later). Lock-free, so that
 * a signal handler's or the allocator's first call costs two atomics.
 */
static unsigned map_calls; /* the program's, under way */
static int map_held;	   /* by the zap: 1 (a futex) */

static void map_enter(void)
{
	for (;;) {
		__atomic_add_fetch(&map_calls, 1, __ATOMIC_SEQ_CST);
		if (!__atomic_load_n(&map_held, __ATOMIC_SEQ_CST))
			return;
		__atomic_sub_fetch(&map_calls, 1, __ATOMIC_SEQ_CST);
		/* A drop may wait for the agent to read its event. */
		while (__atomic_load_n(&map_held, __ATOMIC_ACQUIRE))
			syscall(SYS_futex, &map_held, FUTEX_WAIT_PRIVATE, 1, NULL, NULL, 0);
	}
}

static void map_leave(void)
{
	__atomic_sub_fetch(&map_calls, 1, __ATOMIC_SEQ_CST);
}

static void map_release(void)
{
	__atomic_store_n(&map_held, 0, __ATOMIC_SEQ_CST);
	syscall(SYS_futex, &map_held, FUTEX_WAKE_PRIVATE, INT32_MAX, NULL, NULL, 0);
}

static bool map_hold(void)
{
	__atomic_store_n(&map_held, 1, __ATOMIC_SEQ_CST);
	for (int i = 0; __atomic_load_n(&map_calls, __ATOMIC_SEQ_CST); i++) {
		if (i == 200) {
			map_release();
			return false;
		}
		usleep(10);
	}
	return true;
}

/* Drop [a, a + b) for the agent, if fd is still the connection. */
/* The deadline ZAP_LOCK_NS from now, for the timed locks of a zap. */
#define ZAP_LOCK_NS 2000000L
static struct timespec zap_deadline(void)
{
	struct timespec t;

	clock_gettime(CLOCK_REALTIME, &t);
	t.tv_nsec += ZAP_LOCK_NS;
	if (t.tv_nsec >= 1000000000L) {
		t.tv_sec++;
		t.tv_nsec -= 1000000000L;
	}
	return t;
}

/*
 * A zap answered -EAGAIN without looking at the page: a fork, or the
 * program's madvise(MADV_DONTFORK), holds what it needs. Those may wait
 * on the very page (a thread's own stack under eviction faults, and the
 * fault waits for this zap): the answer ends the eviction and lets them
 * go on.
 */
/*
 * The answer to the zap m, sent without zap_lock: another of libcksm's
 * threads holds it and waits, in a fault, for this very eviction (a page
 * of its stack under eviction). last_zap is not told: a killed agent's
 * successor then takes the zap for one that never ran, which is what an
 * -EAGAIN says.
 */
static void zap_answer_unlocked(int fd, const struct cksm_local *m, int status)
{
	struct cksm_local r = cksm_local_msg(CKSM_LOCAL_ZAPPED);

	r.token = m->token;
	r.status = status;
	send_local(fd, &r, -1);
}

static void zap_later(int fd, const struct cksm_local *m)
{
	struct timespec until = zap_deadline();

	if (pthread_mutex_timedlock(&zap_lock, &until)) {
		zap_answer_unlocked(fd, m, -EAGAIN);
		return;
	}
	if (fd == sock_get() && !agent_gone(fd)) {
		last_zap.token = m->token;
		last_zap.addr = m->a;
		last_zap.state = CKSM_LOCAL_ZAP_DONE;
		last_zap.status = -EAGAIN;
		last_zap.answered = false;
		publish_zap();
		answer_zap();
	}
	pthread_mutex_unlock(&zap_lock);
}

static void zap(int fd, const struct cksm_local *m)
{
	struct timespec until = zap_deadline();
	bool held = false;
	int rc;

	if (pthread_rwlock_timedrdlock(&zap_fork, &until)) {
		zap_later(fd, m);
		return;
	}
	until = zap_deadline();
	if (pthread_mutex_timedlock(&zap_lock, &until)) {
		pthread_rwlock_unlock(&zap_fork);
		zap_answer_unlocked(fd, m, -EAGAIN);
		return;
	}
	if (fd != sock_get() || agent_gone(fd)) {
		/* Nobody would bring the page back: a zap that waited (this
		 * process was stopped) while the agent went. */
		pthread_mutex_unlock(&zap_lock);
		pthread_rwlock_unlock(&zap_fork);
		return;
	}
	last_zap.token = m->token;
	last_zap.addr = m->a;
	last_zap.state = CKSM_LOCAL_ZAP_RUNNING;
	last_zap.answered = false;
	publish_zap();
	pthread_mutex_unlock(&zap_lock);
	/* Returns once the agent read the removal: if it was killed, once
	 * the next one did. */
	until = zap_deadline();
	if (pthread_mutex_timedlock(&dontfork_lock, &until)) {
		rc = -EAGAIN; /* the program marks memory: later */
		goto done;
	}
	if (!(m->pad & CKSM_LOCAL_ZAP_MOVE) && in_dontfork((uintptr_t)m->a, (size_t)m->b))
		rc = -EBUSY; /* may be registered for a device: a drop cannot see the pin */
	else if (!(held = map_hold()))
		rc = -EAGAIN; /* the program is mapping or unmapping: later */
	else if (m->pad & CKSM_LOCAL_ZAP_MOVE)
		rc = move_out((uintptr_t)m->a, m->b, m->status);
	else if (m->b == 4096 && pagemap_ours() && !protected_here((uintptr_t)m->a))
		rc = -ECANCELED; /* not the page the agent protected: mapped anew */
	else
		rc = real_madvise((void *)(uintptr_t)m->a, (size_t)m->b, MADV_DONTNEED) ? -errno
											: 0;
	if (held)
		map_release();
	pthread_mutex_unlock(&dontfork_lock);
done:
	until = zap_deadline();
	if (pthread_mutex_timedlock(&zap_lock, &until)) {
		/* Held by a thread that faults on this very page: it moved,
		 * and only the answer ends the eviction the fault waits for. */
		zap_answer_unlocked(fd, m, rc);
		pthread_rwlock_unlock(&zap_fork);
		return;
	}
	last_zap.state = CKSM_LOCAL_ZAP_DONE;
	last_zap.status = rc;
	publish_zap();
	answer_zap();
	pthread_mutex_unlock(&zap_lock);
	pthread_rwlock_unlock(&zap_fork);
}

/*
 * Drop [a, a + b) of the scratch (local.h): pages the agent moved there,
 * whose content it keeps. Nothing outside the scratch is dropped.
 */
static void scrub(int fd, const struct cksm_local *m)
{
	uintptr_t lo = (uintptr_t)scratch, hi = lo + CKSM_LOCAL_SCRATCH_PAGES * 4096;
	struct cksm_local r = cksm_local_msg(CKSM_LOCAL_SCRUBBED);

	r.a = m->a;
	r.b = m->b;
	if (!scratch || m->a < lo || m->a >= hi || m->b > hi - m->a || m->a % 4096 || m->b % 4096)
		r.status = -EINVAL;
	else if (real_madvise((void *)(uintptr_t)m->a, (size_t)m->b, MADV_DONTNEED))
		r.status = -errno;
	send_local(fd, &r, -1);
}

/* The service thread: the agent's requests, until it goes away. */
/*
 * The userfaultfds of fork children that have not re-attached yet, kept
 * for the agent (CHILD, FORGET in local.h). zap_lock held for all three.
 */
#define KIDS_MAX 256
static struct kid {
	uint64_t key;
	int fd;
} kids[KIDS_MAX];
static unsigned nkids;

static void kid_add(uint64_t key, int fd)
{
	if (nkids == KIDS_MAX) {
		close(fd); /* served still, only not past the agent's end */
		return;
	}
	kids[nkids++] = (struct kid){ key, fd };
}

static void kid_del(uint64_t key)
{
	for (unsigned i = 0; i < nkids; i++)
		if (kids[i].key == key) {
			close(kids[i].fd);
			kids[i] = kids[--nkids];
			return;
		}
}

/* After a resume: each kept child's userfaultfd back to the new agent. */
static void kids_resend(int fd)
{
	for (unsigned i = 0; i < nkids; i++) {
		struct cksm_local k = cksm_local_msg(CKSM_LOCAL_CHILD);

		k.token = kids[i].key;
		send_local(fd, &k, kids[i].fd);
	}
}

static void kids_close(void)
{
	while (nkids)
		close(kids[--nkids].fd);
}

/*
 * Forks, as the agent answers them (CHILD, in local.h): answers counted,
 * the lost ones among them, and the connections that ended. zap_lock.
 */
static struct {
	pthread_cond_t cond; /* on CLOCK_MONOTONIC */
	uint64_t answers, lost, ends;
	uint64_t last_key; /* the last answer's child, 0 if not kept */
} forks;

static void fork_answered(bool lost)
{
	forks.answers++;
	forks.lost += lost;
	pthread_cond_broadcast(&forks.cond);
}

/*
 * Is fd still the socket it was (ino)? A program that closes every
 * descriptor (a daemon) closes libcksm's too, and may open others that
 * get the same numbers: those are never read, written or closed here.
 */
static bool still_ours(int fd, ino_t ino)
{
	struct stat st;

	return fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode) && st.st_ino == ino;
}

static ino_t ino_of(int fd)
{
	struct stat st;

	return fstat(fd, &st) == 0 ? st.st_ino : 0;
}

/*
 * libcksm's own memory, which a zap touches: its writable data and the
 * stack of the thread that serves the agent. The agent evicts none of it
 * (OWN): a zap that wrote to the very page it moves would wait on that
 * page's eviction, which waits for the zap.
 */
static int own_data(struct dl_phdr_info *info, size_t size, void *arg)
{
	uintptr_t self = (uintptr_t)&sock, *r = arg;

	(void)size;
	for (unsigned i = 0; i < info->dlpi_phnum; i++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
		uintptr_t lo = info->dlpi_addr + ph->p_vaddr, hi = lo + ph->p_memsz;

		if (ph->p_type == PT_LOAD && (ph->p_flags & PF_W) && self >= lo && self < hi) {
			r[0] = lo & ~(uintptr_t)4095;
			r[1] = (hi + 4095) & ~(uintptr_t)4095;
			return 1;
		}
	}
	return 0;
}

static void send_own(int fd)
{
	struct cksm_local m = cksm_local_msg(CKSM_LOCAL_OWN);
	uintptr_t r[2] = { 0, 0 };
	pthread_attr_t at;
	size_t size;
	void *lo;

	if (dl_iterate_phdr(own_data, r) == 1) {
		m.a = r[0];
		m.b = r[1] - r[0];
		send_local(fd, &m, -1);
	}
	if (pthread_getattr_np(pthread_self(), &at))
		return;
	if (pthread_attr_getstack(&at, &lo, &size) == 0) {
		m.a = (uintptr_t)lo & ~(uintptr_t)4095;
		m.b = (((uintptr_t)lo + size + 4095) & ~(uintptr_t)4095) - m.a;
		send_local(fd, &m, -1);
	}
	pthread_attr_destroy(&at);
}

static void *serve(void *arg)
{
	int fd = (int)(intptr_t)arg;
	ino_t ino = ino_of(fd);
	struct cksm_local m = cksm_local_msg(0);
	bool ours = true;
	int extra;

	send_own(fd);
	for (;;) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		int n = poll(&p, 1, 1000); /* the descriptor is looked at once a second */

		if ((n < 0 && errno != EINTR) || (p.revents & POLLNVAL) ||
		    !(ours = still_ours(fd, ino)))
			break;
		if (n <= 0)
			continue;
		if (recv_local(fd, &m, &extra) != 0)
			break;
		if (m.type == CKSM_LOCAL_CHILD) {
			pthread_mutex_lock(&zap_lock);
			if (extra >= 0)
				kid_add(m.token, extra);
			forks.last_key = extra >= 0 ? m.token : 0;
			fork_answered(extra < 0 && m.a == CKSM_LOCAL_CHILD_LOST);
			pthread_mutex_unlock(&zap_lock);
			continue;
		}
		if (extra >= 0)
			close(extra);
		if (m.type == CKSM_LOCAL_ZAP) {
			zap(fd, &m);
		} else if (m.type == CKSM_LOCAL_SCRUB) {
			scrub(fd, &m);
		} else if (m.type == CKSM_LOCAL_KSM) {
			real_madvise((void *)(uintptr_t)m.a, (size_t)m.b, MADV_MERGEABLE);
		} else if (m.type == CKSM_LOCAL_FORGET) {
			pthread_mutex_lock(&zap_lock);
			kid_del(m.token);
			pthread_mutex_unlock(&zap_lock);
		}
	}
	pthread_mutex_lock(&zap_lock);
	if (sock_get() == fd)
		__atomic_store_n(&sock, -1, __ATOMIC_RELEASE);
	forks.ends++; /* a fork it did not answer lost its child's userfaultfd */
	pthread_cond_broadcast(&forks.cond);
	pthread_mutex_unlock(&zap_lock);
	if (ours && still_ours(fd, ino))
		close(fd);
	return NULL;
}

/* A thread that takes no signal of the program's, running fn(arg). */
static int start_thread(void *(*fn)(void *), void *arg)
{
	sigset_t all, old;
	pthread_attr_t at;
	pthread_t t;
	int rc;

	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	pthread_attr_init(&at);
	pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
	pthread_attr_setstacksize(&at, 64 << 10);
	rc = pthread_create(&t, &at, fn, arg);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	pthread_attr_destroy(&at);
	return rc;
}

static int connect_agent(void)
{
	const char *path = getenv("CKSM_SOCKET");
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct timeval tv = { 2, 0 };
	int fd;

	if (!path || !*path)
		path = CKSM_LOCAL_SOCKET;
	if (strlen(path) >= sizeof(sa.sun_path))
		return -1;
	strcpy(sa.sun_path, path);
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		close(fd);
		return -1;
	}
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	return fd;
}

/* The requests of the agent come without a deadline once attached. */
static void no_timeout(int fd)
{
	struct timeval tv = { 0, 0 };

	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
}

static int start_kept(int fd);
static int handshake(int fd);

/* One try at a forked child's re-attach: 0 once served and kept. */
static int reattach_once(void)
{
	struct cksm_local m = hello;
	int fd = connect_agent(), extra = -1;

	if (fd < 0)
		return -1;
	if (child_key) {
		/* It holds its userfaultfd (fork_child_wait): back by its key. */
		if (handshake(fd)) {
			close(fd);
			return -1;
		}
		child_key = 0;
		no_timeout(fd);
		if (start_kept(fd)) {
			close(fd);
			return -1;
		}
		return 0;
	}
	m.a |= CKSM_LOCAL_FORKED;
	if (send_local(fd, &m, -1) || recv_local(fd, &m, &extra) || m.type != CKSM_LOCAL_BEACON ||
	    m.a >= CKSM_LOCAL_BEACON_SLOTS)
		goto fail;
	/* Dropped first: the page may be there already, from a parent's own
	 * re-attach; the read must fault. */
	real_madvise((void *)(beacon + m.a * 4096), 4096, MADV_DONTNEED);
	(void)beacon[m.a * 4096];
	if (recv_local(fd, &m, &extra) || m.type != CKSM_LOCAL_READY || m.status || extra < 0)
		goto fail;
	/* READY brings the child's own userfaultfd (the fork event gave it to
	 * the agent): kept from now on, like any attached process's. */
	__atomic_store_n(&answered_on, m.b & CKSM_LOCAL_FORKS_ANSWERED ? fd : -1, __ATOMIC_RELEASE);
	pthread_mutex_lock(&zap_lock);
	if (own_uffd >= 0)
		close(own_uffd);
	own_uffd = extra;
	pthread_mutex_unlock(&zap_lock);
	extra = -1;
	no_timeout(fd);
	if (start_kept(fd))
		goto fail;
	return 0;
fail:
	if (extra >= 0)
		close(extra);
	close(fd);
	return -1;
}

/*
 * A forked child's re-attach under way: its own forks wait for it, since
 * their children's userfaultfds are answered on its connection (CHILD),
 * which it has only once attached.
 */
static pthread_mutex_t reattach_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t reattach_cond = PTHREAD_COND_INITIALIZER;
static bool reattaching;
static bool child_waits; /* a held fork's child: until its parent's word (reattach_lock) */

/*
 * A forked child's thread: attach again (with backoff, as the keeper: the
 * agent may be between a killed one and the next, which gets this
 * child's userfaultfd from the parent), then serve.
 */
static void *reattach(void *arg)
{
	unsigned wait_ms = 50;
	struct timespec until;

	(void)arg;
	/* A child forked by another thread while a held fork was under way
	 * has child_waits from its parent and no word to wait for: 5 s. */
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += 5;
	pthread_mutex_lock(&reattach_lock);
	while (child_waits &&
	       pthread_cond_timedwait(&reattach_cond, &reattach_lock, &until) != ETIMEDOUT)
		;
	pthread_mutex_unlock(&reattach_lock);
	for (int tries = 0; tries < 64 && reattach_once(); tries++) {
		usleep(wait_ms * 1000);
		wait_ms = wait_ms * 2 > 5000 ? 5000 : wait_ms * 2;
	}
	pthread_mutex_lock(&reattach_lock);
	reattaching = false;
	pthread_cond_broadcast(&reattach_cond);
	pthread_mutex_unlock(&reattach_lock);
	return NULL;
}

/*
 * No zap runs across a fork (local.h, struct cksm_local_zapstate), nor a
 * madvise(MADV_DONTFORK / MADV_DOFORK) or a mapping call of the
 * program's: the agent reads, once it has the fork's event, which VMAs
 * the child did not get (MADV_DONTFORK ones), and the parent's must not
 * change before. A fork that waits for its answer (held_fork) keeps them
 * until the answer came; others let go when the fork returns.
 */
static bool fork_keeps_locks; /* held_fork lets go (fork_lock) */

static void map_hold_all(void)
{
	__atomic_store_n(&map_held, 1, __ATOMIC_SEQ_CST);
	while (__atomic_load_n(&map_calls, __ATOMIC_SEQ_CST))
		usleep(20);
}

static void on_fork_prepare(void)
{
	pthread_rwlock_wrlock(&zap_fork);
	pthread_mutex_lock(&dontfork_lock);
	map_hold_all();
}

static void fork_release(void)
{
	map_release();
	pthread_mutex_unlock(&dontfork_lock);
	pthread_rwlock_unlock(&zap_fork);
}

static void on_fork_parent(void)
{
	if (!fork_keeps_locks)
		fork_release();
}

static bool in_clone_child; /* set in a clone()'s child, before on_fork_child */

static void on_fork_child(void)
{
	int fd = sock_get();

	/* The lock on_fork_prepare took belongs to a thread of the parent's:
	 * the child, alone, starts with one of its own (glibc's rwlock
	 * remembers its writer by thread id). */
	pthread_rwlock_init(&zap_fork, NULL);
	pthread_mutex_init(&dontfork_lock, NULL); /* a parent's thread may have held it */
	fork_keeps_locks = false;
	pthread_mutex_init(&reattach_lock, NULL);
	pthread_cond_init(&reattach_cond, NULL);
	reattaching = false;
	map_calls = 0; /* the parent's threads' calls: not this child's */
	map_held = 0;
	if (getpid() == __atomic_load_n(&attached_pid, __ATOMIC_ACQUIRE))
		return;
	/* The connection belongs to the parent, and so do its threads, its
	 * userfaultfd and the agent's view of it. */
	pthread_mutex_init(&zap_lock, NULL);
	memset(&last_zap, 0, sizeof(last_zap));
	publish_zap();
	pagemap_open(); /* the parent's names the parent's pages */
	kids_close();	/* its siblings', the parent's to keep */
	__atomic_store_n(&sock, -1, __ATOMIC_RELEASE);
	if (fd >= 0)
		close(fd);
	if (own_uffd >= 0)
		close(own_uffd);
	own_uffd = -1;
	/* A clone()'s child gets no thread: the C library's locks another
	 * thread held at the clone stay held in it (pthread_create's among
	 * them). It is served, not evicted. */
	if (beacon && !in_clone_child) {
		reattaching = true; /* before the thread, which clears it */
		if (start_thread(reattach, NULL))
			reattaching = false;
	}
}

/*
 * fork(). The kernel hands the child's userfaultfd to the agent with the
 * fork event, and until the agent hands a copy to this process (CHILD)
 * that descriptor lives in the agent alone: an agent killed then takes
 * it along, and the child's dropped pages would read as zeroes. So the
 * child waits, before it returns from fork(), for the parent's word: the
 * parent gives it once the answer to this fork came. When the connection
 * ends without an answer, or the agent says the child's userfaultfd could
 * not be kept, the child is killed before it returns from fork() and the
 * fork is done again. Forks go through here one at a time, and each
 * waits for its own answer, for as long as the connection lives: every
 * fork of a process whose agent said it answers forks (READY) makes an
 * event and gets one answer, in order, on the connection of the agent
 * that read it (an agent that cannot send one ends the connection). A
 * fork child that forks before it attached again waits for that first:
 * its children are answered on its own connection.
 */
#define FORK_TRIES 16
static pthread_mutex_t fork_lock = PTHREAD_MUTEX_INITIALIZER;
static pid_t (*real_fork)(void);

/*
 * One way to make a child: start() returns its pid in the parent and, for
 * a fork, 0 in the child; a clone()'s child runs elsewhere (clone_child).
 */
struct spawn {
	pid_t (*start)(struct spawn *);
	int rd, wr; /* the child's word: it reads rd, the parent writes wr (a socket pair) */
	int cancel; /* the caller's cancel state, the child's too */
	/* clone(): */
	int (*fn)(void *);
	void *stack, *arg, *ptid, *tls, *ctid;
	int flags;
};

/* The child's side: held until the parent's word (or the parent's end). */
/*
 * The child, held until its parent had the agent's answer: with it comes
 * the parent's copy of the child's userfaultfd and its key (CHILD), so
 * that the child holds one of its own from its first instruction on. Its
 * pages then outlive its parent's exit while no agent runs; it comes back
 * by its key (reattach_once). A re-attach already made has a copy.
 */
static void fork_child_wait(struct spawn *sp)
{
	struct cksm_local m = cksm_local_msg(0);
	int fd = -1;

	pthread_mutex_init(&fork_lock, NULL); /* held by the parent's thread */
	close(sp->wr);
	while (recv_local(sp->rd, &m, &fd) == -EINTR)
		;
	close(sp->rd);
	if (fd >= 0 && m.type == CKSM_LOCAL_CHILD && m.token) {
		pthread_mutex_lock(&zap_lock);
		if (own_uffd < 0) {
			own_uffd = fd;
			child_key = m.token;
			fd = -1;
		}
		pthread_mutex_unlock(&zap_lock);
	}
	if (fd >= 0)
		close(fd);
	pthread_mutex_lock(&reattach_lock);
	child_waits = false;
	pthread_cond_broadcast(&reattach_cond);
	pthread_mutex_unlock(&reattach_lock);
	pthread_setcancelstate(sp->cancel, NULL);
}

/*
 * The agent learns the pid of the child it kept (KID): it keeps the
 * child's table for as long as that process lives. zap_lock held.
 */
static void kid_pid(pid_t pid)
{
	struct cksm_local m = cksm_local_msg(CKSM_LOCAL_KID);
	int fd = sock_get();

	if (!forks.last_key || fd < 0)
		return;
	m.token = forks.last_key;
	m.a = (uint64_t)pid;
	send_local(fd, &m, -1);
}

/* The child's word: go, with its userfaultfd and key if the agent kept it. zap_lock held. */
static void fork_let_go(int wr)
{
	struct cksm_local m = cksm_local_msg(CKSM_LOCAL_CHILD);
	int fd = -1;

	for (unsigned i = 0; forks.last_key && i < nkids; i++)
		if (kids[i].key == forks.last_key)
			fd = kids[i].fd;
	m.token = fd >= 0 ? forks.last_key : 0;
	send_local(wr, &m, fd);
}

/* Is fd a userfaultfd of this process's? */
static bool is_uffd(int fd)
{
	char path[64], link[64];
	ssize_t n;

	if (fd < 0)
		return false;
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	n = readlink(path, link, sizeof(link) - 1);
	if (n <= 0)
		return false;
	link[n] = '\0';
	return strcmp(link, "anon_inode:[userfaultfd]") == 0;
}

/* Is the beacon registered with the userfaultfd (VmFlags "um")? Then a
 * fork makes an event, which the next agent reads and answers. */
static bool beacon_registered(void)
{
	char line[512];
	bool in = false, um = false;
	FILE *f;

	if (!beacon)
		return false;
	f = fopen("/proc/self/smaps", "re");
	while (f && fgets(line, sizeof(line), f)) {
		unsigned long long s, e;

		if (sscanf(line, "%llx-%llx ", &s, &e) == 2 &&
		    strchr(line, '-') < strchr(line, ' '))
			in = s == (uintptr_t)beacon;
		else if (in && !strncmp(line, "VmFlags:", 8)) {
			um = strstr(line, " um") != NULL;
			break;
		}
	}
	if (f)
		fclose(f);
	return um;
}

/*
 * Will this fork be answered? Only while the process has its userfaultfd
 * (a program that closed every descriptor closed it, and the connection
 * too); then, connected, when its agent said so (READY), and between
 * agents when its beacon is still registered: the fork's event waits for
 * the next agent, which answers it. An agent that stopped cleanly
 * unregistered everything: then forks make no event.
 */
static bool forks_will_be_answered(void)
{
	int fd = sock_get();

	if (!attached_here() || !is_uffd(__atomic_load_n(&own_uffd, __ATOMIC_ACQUIRE)))
		return false;
	if (fd >= 0)
		return fd == __atomic_load_n(&answered_on, __ATOMIC_ACQUIRE);
	return beacon_registered();
}

/* Did the fork that saw (answers, lost, ends) before it keep its child?
 * zap_lock held. */
static bool fork_kept(uint64_t answers, uint64_t lost, uint64_t ends)
{
	while (forks.answers == answers && forks.ends == ends)
		pthread_cond_wait(&forks.cond, &zap_lock);
	/* A lost answer among them may not be this fork's: the child is
	 * forked again all the same, which is always safe. */
	return forks.answers != answers && forks.lost == lost;
}

/* A fork child's forks wait for its re-attach (while the agent would
 * answer them: its beacon registered). */
static void reattach_wait(void)
{
	pthread_mutex_lock(&reattach_lock);
	while (reattaching && beacon_registered()) {
		struct timespec t;

		clock_gettime(CLOCK_REALTIME, &t);
		t.tv_sec += 1;
		pthread_cond_timedwait(&reattach_cond, &reattach_lock, &t);
	}
	pthread_mutex_unlock(&reattach_lock);
}

/*
 * A fork by sp, held back in the child until the agent answered it and
 * done again when the child's userfaultfd was lost (above).
 */
static pid_t held_fork(struct spawn *sp)
{
	pid_t pid = -1;

	/* fork() is no cancellation point; the waits below are. */
	pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &sp->cancel);
	reattach_wait();
	if (!forks_will_be_answered()) {
		pthread_setcancelstate(sp->cancel, NULL);
		return sp->start(sp);
	}
	pthread_mutex_lock(&fork_lock);
	for (int tries = 0; tries < FORK_TRIES; tries++) {
		uint64_t answers, lost, ends;
		bool kept;
		int p[2], st, e;

		sp->rd = sp->wr = -1;
		if (tries && !forks_will_be_answered()) {
			pid = sp->start(sp); /* the connection ended for good */
			break;
		}
		if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, p)) {
			pid = sp->start(sp); /* no way to hold the child back */
			break;
		}
		sp->rd = p[0];
		sp->wr = p[1];
		pthread_mutex_lock(&zap_lock);
		answers = forks.answers;
		lost = forks.lost;
		ends = forks.ends;
		pthread_mutex_unlock(&zap_lock);
		fork_keeps_locks = true;
		child_waits = true; /* the child's copy: its re-attach waits for the word */
		pid = sp->start(sp);
		if (pid == 0) {
			fork_child_wait(sp);
			return 0;
		}
		child_waits = false;
		e = errno;
		close(p[0]);
		if (pid < 0) {
			fork_keeps_locks = false;
			fork_release();
			close(p[1]);
			errno = e;
			break;
		}
		pthread_mutex_lock(&zap_lock);
		kept = fork_kept(answers, lost, ends);
		if (kept) {
			fork_let_go(p[1]);
			kid_pid(pid);
		}
		pthread_mutex_unlock(&zap_lock);
		fork_keeps_locks = false;
		fork_release();
		if (kept) {
			close(p[1]);
			break;
		}
		/* It never returned from fork(), nor ran clone's function: gone. */
		kill(pid, SIGKILL);
		while (waitpid(pid, &st, __WALL) < 0 && errno == EINTR)
			;
		close(p[1]);
		if ((sp->flags & CLONE_PIDFD) && sp->ptid)
			close(*(int *)sp->ptid);
		pid = -1;
		errno = EAGAIN;
	}
	pthread_mutex_unlock(&fork_lock);
	pthread_setcancelstate(sp->cancel, NULL);
	return pid;
}

static pid_t fork_start(struct spawn *sp)
{
	(void)sp;
	return real_fork();
}

EXPORT pid_t fork(void)
{
	struct spawn sp = { .start = fork_start };

	if (!real_fork)
		real_fork = (pid_t(*)(void))dlsym(RTLD_NEXT, "fork");
	if (!real_fork) {
		errno = ENOSYS;
		return -1;
	}
	return held_fork(&sp);
}

/*
 * _Fork() and clone() run no atfork handler, so libcksm's own are run
 * around them: no zap runs across them, and the child starts with its
 * own state.
 */
static pid_t (*real__Fork)(void);

static pid_t fork_bare(struct spawn *sp)
{
	pid_t pid;
	int e;

	(void)sp;
	on_fork_prepare();
	pid = real__Fork();
	e = errno;
	if (pid == 0)
		on_fork_child();
	else
		on_fork_parent();
	errno = e;
	return pid;
}

EXPORT pid_t _Fork(void)
{
	struct spawn sp = { .start = fork_bare };

	if (!real__Fork)
		real__Fork = (pid_t(*)(void))dlsym(RTLD_NEXT, "_Fork");
	if (!real__Fork) {
		errno = ENOSYS;
		return -1;
	}
	return held_fork(&sp);
}

/*
 * clone() without CLONE_VM makes a process with a copy of this one's
 * memory, as fork() does (a sandbox, a container's init): its child is
 * held back the same way, before its function runs. With CLONE_VM (a
 * thread, posix_spawn) there is no new memory and no fork event; with
 * CLONE_VFORK the parent waits for the child, which cannot wait for it;
 * with CLONE_FILES the child shares this process's descriptors, which
 * libcksm's child side would close (the connection, the userfaultfd).
 */
static int (*real_clone)(int (*)(void *), void *, int, void *, ...);

/* The child's start, in its own copy of the memory (sp too). */
static __attribute__((noreturn)) int clone_child(void *arg)
{
	struct spawn *sp = arg;

	in_clone_child = true;
	on_fork_child();
	if (sp->rd >= 0)
		fork_child_wait(sp);
	/* The whole process ends with the function, libcksm's threads in it
	 * too (clone's own return would end this thread only). */
	_exit(sp->fn(sp->arg));
}

static pid_t clone_start(struct spawn *sp)
{
	pid_t pid;
	int e;

	on_fork_prepare();
	pid = real_clone(clone_child, sp->stack, sp->flags, sp, sp->ptid, sp->tls, sp->ctid);
	e = errno;
	on_fork_parent();
	errno = e;
	return pid;
}

EXPORT int clone(int (*fn)(void *), void *stack, int flags, void *arg, ...)
{
	struct spawn sp = { .start = clone_start,
			    .rd = -1,
			    .wr = -1,
			    .fn = fn,
			    .stack = stack,
			    .arg = arg,
			    .flags = flags };
	va_list ap;

	if (!real_clone)
		real_clone = (int (*)(int (*)(void *), void *, int, void *, ...))dlsym(RTLD_NEXT,
										       "clone");
	if (!real_clone) {
		errno = ENOSYS;
		return -1;
	}
	va_start(ap, arg);
	sp.ptid = va_arg(ap, void *);
	sp.tls = va_arg(ap, void *);
	sp.ctid = va_arg(ap, void *);
	va_end(ap);
	if (flags & (CLONE_VM | CLONE_VFORK | CLONE_FILES))
		return real_clone(fn, stack, flags, arg, sp.ptid, sp.tls, sp.ctid);
	return held_fork(&sp);
}

/*
 * glibc's daemon() forks inside itself, out of reach: the same through
 * fork() above, so that its child is held back like any other.
 */
EXPORT int daemon(int nochdir, int noclose)
{
	pid_t pid = fork();
	int fd;

	if (pid < 0)
		return -1;
	if (pid > 0)
		_exit(0);
	if (setsid() < 0)
		return -1;
	if (!nochdir)
		(void)!chdir("/");
	if (!noclose) {
		fd = open("/dev/null", O_RDWR | O_CLOEXEC);
		if (fd < 0)
			return -1;
		dup2(fd, 0);
		dup2(fd, 1);
		dup2(fd, 2);
		if (fd > 2)
			close(fd);
	}
	return 0;
}

static size_t env_size(const char *name, size_t dflt)
{
	const char *v = getenv(name);
	char *end;
	unsigned long long x;

	if (!v || !*v)
		return dflt;
	x = strtoull(v, &end, 10);
	return *end ? dflt : (size_t)x;
}

/*
 * The handshake on a new connection fd: a fresh attach, or with a kept
 * userfaultfd a resume (the agent answers DEVFD if it kept nothing for
 * this process: the old one is closed then and a new one made). 0 once
 * READY came; own_uffd is this process's userfaultfd.
 */
static int handshake(int fd)
{
	struct cksm_local m = hello;
	int devfd = -1, uffd = -1, extra = -1;

	if (own_uffd >= 0) {
		struct cksm_local r = cksm_local_msg(CKSM_LOCAL_RESUME);

		m.a |= CKSM_LOCAL_RESUMING;
		pthread_mutex_lock(&zap_lock);
		r.token = last_zap.token;
		r.a = last_zap.addr;
		r.status = last_zap.status;
		r.pad = (uint32_t)last_zap.state;
		r.b = child_key; /* a fork child not attached yet: its table's key */
		if (last_zap.state == CKSM_LOCAL_ZAP_DONE)
			last_zap.answered = true; /* told here */
		pthread_mutex_unlock(&zap_lock);
		if (send_local(fd, &m, -1) || send_local(fd, &r, own_uffd) ||
		    recv_local(fd, &m, &devfd))
			goto fail;
		if (m.type == CKSM_LOCAL_READY && m.status == 0 && devfd < 0) {
			__atomic_store_n(&answered_on, m.b & CKSM_LOCAL_FORKS_ANSWERED ? fd : -1,
					 __ATOMIC_RELEASE);
			return 0;
		}
		/* A fork child whose table the agent does not know (yet): its
		 * userfaultfd stays, and its pages wait; it asks again later. */
		if (child_key)
			goto fail;
		/* Nothing kept for it: its old ranges were unregistered, and
		 * its children's are nobody's now. */
		close(own_uffd);
		own_uffd = -1;
		pthread_mutex_lock(&zap_lock);
		kids_close();
		pthread_mutex_unlock(&zap_lock);
	} else if (send_local(fd, &m, -1) || recv_local(fd, &m, &devfd)) {
		goto fail;
	}
	if (m.type != CKSM_LOCAL_DEVFD || m.status || devfd < 0)
		goto fail;
	/* The agent marks the beacon anew through the new userfaultfd (local.h):
	 * a mark left by an earlier attach must go first. */
	if (beacon)
		real_madvise((void *)(beacon + CKSM_LOCAL_BEACON_MARK * 4096), 4096, MADV_DONTNEED);
	uffd = ioctl(devfd, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
	close(devfd);
	devfd = -1;
	if (uffd < 0)
		goto fail;
	m = cksm_local_msg(CKSM_LOCAL_UFFD);
	if (send_local(fd, &m, uffd) || recv_local(fd, &m, &extra) || m.type != CKSM_LOCAL_READY ||
	    m.status)
		goto fail;
	__atomic_store_n(&answered_on, m.b & CKSM_LOCAL_FORKS_ANSWERED ? fd : -1, __ATOMIC_RELEASE);
	own_uffd = uffd; /* kept: the agent's death must not unregister it */
	return 0;
fail:
	if (extra >= 0)
		close(extra);
	if (devfd >= 0)
		close(devfd);
	if (uffd >= 0)
		close(uffd);
	return -1;
}

/*
 * The keeper: waits for the connection to end, then connects again with
 * backoff (50 ms doubling to 5 s) for as long as the process lives, and
 * resumes. A separate thread from the service one, which may be in a
 * zap's madvise that returns only once the next agent reads its event.
 */
static void *keeper(void *arg)
{
	int kfd = (int)(intptr_t)arg;

	for (;;) {
		struct pollfd p = { .fd = kfd, .events = POLLRDHUP };
		unsigned wait_ms = 50;
		ino_t ino = ino_of(kfd);
		int fd;

		while (!(p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) &&
		       still_ours(kfd, ino))
			poll(&p, 1, 1000);
		if ((p.revents & POLLNVAL) || !still_ours(kfd, ino)) {
			/* The program closed libcksm's descriptors (and so, most
			 * likely, its userfaultfd): the agent brings its pages
			 * home when the connection ends; nothing to resume. */
			return NULL;
		}
		close(kfd);
		pthread_mutex_lock(&zap_lock);
		__atomic_store_n(&sock, -1, __ATOMIC_RELEASE);
		pthread_mutex_unlock(&zap_lock);
		for (;;) {
			fd = connect_agent();
			if (fd >= 0 && handshake(fd) == 0)
				break;
			if (fd >= 0)
				close(fd);
			usleep(wait_ms * 1000);
			wait_ms = wait_ms * 2 > 5000 ? 5000 : wait_ms * 2;
		}
		no_timeout(fd);
		kfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
		pthread_mutex_lock(&zap_lock);
		attached(fd);
		answer_zap(); /* a zap that ended while no agent was there */
		kids_resend(fd);
		pthread_mutex_unlock(&zap_lock);
		if (kfd < 0 || start_thread(serve, (void *)(intptr_t)fd)) {
			if (kfd >= 0)
				close(kfd);
			return NULL; /* out of resources: served as far as it goes */
		}
	}
	return NULL;
}

/* Attached on fd: serve it, and keep it (reconnecting when it ends). 0 or -1. */
static int start_kept(int fd)
{
	int kfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);

	if (kfd < 0)
		return -1;
	pthread_mutex_lock(&zap_lock);
	attached(fd);
	pthread_mutex_unlock(&zap_lock);
	if (start_thread(serve, (void *)(intptr_t)fd)) {
		close(kfd);
		return -1;
	}
	if (start_thread(keeper, (void *)(intptr_t)kfd))
		close(kfd); /* served, not kept */
	return 0;
}

static void attach(void)
{
	int fd;
	void *bp;

	fd = connect_agent();
	if (fd < 0)
		return;
	hello = cksm_local_msg(CKSM_LOCAL_HELLO);
	if (getenv("CKSM_MERGE_ALL") && !strcmp(getenv("CKSM_MERGE_ALL"), "1"))
		hello.a = CKSM_LOCAL_MERGE_ALL;
	pagemap_open(); /* a zap drops only the page the agent protected */
	hello.b = env_size("CKSM_MERGE_MIN", 1u << 20);
	/* Read-only and never written: no memory, and no merging with the
	 * program's own mappings. */
	bp = mmap(NULL, CKSM_LOCAL_MAP_PAGES * 4096, PROT_READ,
		  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (bp != MAP_FAILED) {
		uint8_t *zp = (uint8_t *)bp + CKSM_LOCAL_BEACON_PAGES * 4096;
		uint8_t *sp = (uint8_t *)bp + CKSM_LOCAL_SCRATCH_AT * 4096;

		beacon = bp;
		hello.token = (uint64_t)(uintptr_t)bp;
		/* The zap page, the scratch, each followed by a page of
		 * nothing: the program's own mappings never merge with them
		 * (their flags, MADV_DONTFORK's for one, stay their own). */
		mprotect(zp + 4096, 4096, PROT_NONE);
		mprotect(sp + CKSM_LOCAL_SCRATCH_PAGES * 4096, 4096, PROT_NONE);
		if (mprotect(zp, 4096, PROT_READ | PROT_WRITE) == 0)
			zap_page = (volatile struct cksm_local_zapstate *)zp;
		if (pagemap >= 0 &&
		    mprotect(sp, CKSM_LOCAL_SCRATCH_PAGES * 4096, PROT_READ | PROT_WRITE) == 0) {
			scratch = sp;
			hello.a |= CKSM_LOCAL_SCRATCH;
		}
	}
	if (handshake(fd))
		goto fail;
	no_timeout(fd);
	if (start_kept(fd))
		goto fail;
	pthread_atfork(on_fork_prepare, on_fork_parent, on_fork_child);
	return;
fail:
	close(fd);
}

__attribute__((constructor)) static void cksm_init(void)
{
	pthread_condattr_t ca;

	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&forks.cond, &ca);
	pthread_condattr_destroy(&ca);
	real_madvise = (int (*)(void *, size_t, int))dlsym(RTLD_NEXT, "madvise");
	if (!real_madvise)
		return;
	if (getenv("CKSM_DISABLE") && !strcmp(getenv("CKSM_DISABLE"), "1"))
		return;
	attach();
}

/*
 * madvise(MADV_MERGEABLE) names the range to the agent. While attached it
 * does not reach the kernel: KSM merging a page that the agent has
 * write-protected would drop the protection, so the agent decides which
 * windows go to KSM (the KSM request). Otherwise it goes to the kernel.
 */
EXPORT int madvise(void *addr, size_t len, int advice)
{
	if (!real_madvise) {
		real_madvise = (int (*)(void *, size_t, int))dlsym(RTLD_NEXT, "madvise");
		if (!real_madvise) {
			errno = ENOSYS;
			return -1;
		}
	}
	if (advice == MADV_DONTFORK || advice == MADV_DOFORK) {
		int rc;

		pthread_mutex_lock(&dontfork_lock);
		rc = real_madvise(addr, len, advice);
		if (rc == 0)
			note_dontfork((uintptr_t)addr, len, advice == MADV_DONTFORK);
		pthread_mutex_unlock(&dontfork_lock);
		return rc;
	}
	if (advice == MADV_MERGEABLE && attached_here() && own_uffd >= 0) {
		struct cksm_local m = cksm_local_msg(CKSM_LOCAL_RANGE);
		int e = errno;

		if ((uintptr_t)addr % 4096) {
			errno = EINVAL;
			return -1;
		}
		if (len == 0)
			return 0;
		m.a = (uint64_t)(uintptr_t)addr;
		m.b = (len + 4095) & ~(size_t)4095;
		/* Never wait on the agent; a range it was not told of goes to
		 * the kernel's KSM as the program asked, unless no agent is
		 * there now: the ranges the next one watches are still
		 * registered, and KSM must not merge in them. */
		if (sock_get() < 0 || cksm_local_send(sock_get(), &m, -1, MSG_DONTWAIT) == 0) {
			errno = e;
			return 0;
		}
		errno = e;
	}
	return real_madvise(addr, len, advice);
}

/* ---- the program's mappings, under the map guard (above) ---- */

static void *(*real_mmap)(void *, size_t, int, int, int, off_t);
static int (*real_munmap)(void *, size_t);
static void *(*real_mremap)(void *, size_t, size_t, int, ...);
static int (*real_brk)(void *);
static void *(*real_sbrk)(intptr_t);

#define REAL(f)                                                     \
	do {                                                        \
		if (!real_##f)                                      \
			*(void **)&real_##f = dlsym(RTLD_NEXT, #f); \
	} while (0)

EXPORT void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	void *p;
	int e;

	REAL(mmap);
	if (!real_mmap) {
		errno = ENOSYS;
		return MAP_FAILED;
	}
	map_enter();
	p = real_mmap(addr, len, prot, flags, fd, off);
	e = errno;
	map_leave();
	errno = e;
	return p;
}

EXPORT void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	return mmap(addr, len, prot, flags, fd, off);
}

EXPORT int munmap(void *addr, size_t len)
{
	int rc, e;

	REAL(munmap);
	if (!real_munmap) {
		errno = ENOSYS;
		return -1;
	}
	map_enter();
	rc = real_munmap(addr, len);
	e = errno;
	map_leave();
	errno = e;
	return rc;
}

EXPORT void *mremap(void *old, size_t old_len, size_t new_len, int flags, ...)
{
	void *to = NULL, *p;
	va_list ap;
	int e;

	REAL(mremap);
	if (!real_mremap) {
		errno = ENOSYS;
		return MAP_FAILED;
	}
	if (flags & (MREMAP_FIXED | MREMAP_DONTUNMAP)) {
		va_start(ap, flags);
		to = va_arg(ap, void *);
		va_end(ap);
	}
	map_enter();
	p = real_mremap(old, old_len, new_len, flags, to);
	e = errno;
	map_leave();
	errno = e;
	return p;
}

EXPORT int brk(void *addr)
{
	int rc, e;

	REAL(brk);
	if (!real_brk) {
		errno = ENOSYS;
		return -1;
	}
	map_enter();
	rc = real_brk(addr);
	e = errno;
	map_leave();
	errno = e;
	return rc;
}

EXPORT void *sbrk(intptr_t inc)
{
	void *p;
	int e;

	REAL(sbrk);
	if (!real_sbrk) {
		errno = ENOSYS;
		return (void *)-1;
	}
	map_enter();
	p = real_sbrk(inc);
	e = errno;
	map_leave();
	errno = e;
	return p;
}
