/*
 * fault - the fault thread: every served mm's userfaultfd, polled at once.
 *
 * A MISSING fault on a page with an entry in the mm's table is filled
 * from what the entry names, and the entry leaves the table:
 *   zero    the zero page (a copy of zeroes for a write);
 *   pool    the slot's bytes, after checking that the slot still holds
 *           the entry's content (generation and id);
 *   remote  the first replica that answers with bytes of the entry's id.
 * A fault on a page without an entry gets what the kernel would have
 * given: zeroes. A backed page whose bytes cannot be had is never filled
 * with zeroes: it is poisoned (or the faulting thread signalled), and the
 * thread that touches it gets SIGBUS, logged and counted.
 *
 * A WP fault is a write that raced an eviction; unless the evictor works
 * on that very page (it releases its writers itself), the protection is
 * lifted and the writer goes on. A MISSING fault on the page the evictor
 * has entered and not finished with waits (kept for retry) until the
 * eviction ends: only then is it known whether the page went by the zap
 * (filled from the entry) or because the program dropped it too (zeroes).
 *
 * Remote bytes are read with no lock held: a slow or dead holder delays
 * this thread, never the loop or the evictor. The entry is looked up
 * again afterwards and filled only if it is still the one that was read.
 *
 * Events keep the tables right. They are read one message at a time, so
 * that a fork is handled before any fault read after it, and each is read
 * and applied under the mm's lock: the evictor, which decides under that
 * lock, never sees a removal that was read and not yet counted (the
 * process's madvise returns once its event is read).
 *   fork    the child's userfaultfd, and a copy of the table for it (its
 *           entries take references of their own);
 *   remap   entries move with the pages;
 *   remove, unmap   entries go (the program dropped the pages: they must
 *           read zeroes, not what cksm kept).
 * A fill refused with EAGAIN met a changing mm (an event not read yet):
 * the fault is kept and served again after the events. While libcksm
 * moves a page out for the evictor, nothing of that process is read
 * (evict.c, "hold"): an unmap it makes meanwhile keeps the move from
 * happening until it is read.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include "backing_int.h"
#include "inject.h"
#include "log.h"
#include "smaps.h"
#include "uffd.h"
#include "util.h"

/* ---- faults ------------------------------------------------------------------ */

/* A backed page nobody can give back: the thread that needs it gets SIGBUS. */
static void lost_page(struct mm *m, const struct uffd_msg *msg, uint64_t addr, const char *why)
{
	pid_t tid = (pid_t)msg->arg.pagefault.feat.ptid;

	metric_inc(m->b->m_sigbus);
	log_error("process %d thread %d: page %#llx cannot be brought back (%s): SIGBUS",
		  (int)m->pid, (int)tid, (unsigned long long)addr, why);
	/* Poisoned, the page gives SIGBUS to whichever thread touches it, in
	 * any pid namespace. Without it (before Linux 6.6) the thread the
	 * fault names is signalled, which is right in the agent's namespace. */
	if ((m->b->features & UFFD_FEATURE_POISON) && uffd_poison(m->uffd, addr) == 0)
		return;
	syscall(SYS_tkill, tid, SIGBUS);
	uffd_wake(m->uffd, addr);
}

/* A write that raced an eviction: let it go, unless the evictor is on it. */
static bool release_writer(struct mm *m, uint64_t addr)
{
	bool busy;

	pthread_mutex_lock(&m->lock);
	busy = m->st->evicting == addr;
	pthread_mutex_unlock(&m->lock);
	return busy || uffd_protect(m->uffd, addr, false) != -EAGAIN;
}

/* What the kernel would have given a page never backed: zeroes. */
static int fill_zero(struct mm *m, uint64_t addr, bool write)
{
	return write ? uffd_copy(m->uffd, addr, zero_page) : uffd_zeropage(m->uffd, addr);
}

static bool fresh_filled(struct mm *m, uint64_t addr, int rc)
{
	if (rc == -EAGAIN)
		return false;
	metric_inc(m->b->m_faults_fresh);
	if (rc && rc != -ENOENT && rc != -ESRCH)
		log_warn("process %d: cannot fill page %#llx: %s", (int)m->pid,
			 (unsigned long long)addr, strerror(-rc));
	if (rc)
		uffd_wake(m->uffd, addr); /* let it fault again */
	return true;
}

/*
 * The bytes e (a copy of an entry) names, or NULL with *lost saying why
 * they cannot be had; with last, every replica is asked, backed off or
 * not (its page is given up otherwise). No lock held: a remote read may
 * take long. A pool
 * slot's bytes stay while any entry holds a reference on it; if this one
 * went meanwhile, fill_backed finds it gone and the fault is tried again.
 */
static const void *entry_bytes(struct mm *m, const struct bentry *e, bool last, const char **lost)
{
	static uint8_t page[PAGE] __attribute__((aligned(PAGE))); /* fault thread's */
	struct backing *b = m->b;
	struct cid got = { 0, 0 };
	const void *bytes;

	if (e->kind == BACKED_REMOTE) {
		if (remote_fetch(b, b->fault_tr, e->rem, e->nrem, &e->id, page, last) < 0) {
			*lost = "no replica could be read";
			return NULL;
		}
		return page;
	}
	/* The slot's generation and id must be the entry's; its bytes were
	 * checked against the id when the dup was made, and a slot with
	 * references never changes. The page is copied out before the
	 * entry's reference can go. */
	bytes = pool_page(b->pool, e->ref, &got);
	if (!bytes || !cid_eq(got, e->id)) {
		*lost = bytes ? "its slot holds another content" : "its slot is gone";
		return NULL;
	}
	return bytes;
}

/* The parts of an entry a fault needs, taken under the lock. */
struct fill {
	struct bentry e;
	struct metric *source;
};

/*
 * Bring back the page of entry f->e, whose bytes are in bytes (NULL for a
 * zero page), if the entry is still there: 0, a negative errno, or
 * -EAGAIN to be tried again (the entry changed meanwhile, or the mm).
 * Takes m->lock.
 */
static int fill_backed(struct mm *m, const struct fill *f, uint64_t addr, bool write,
		       const void *bytes)
{
	struct bentry *e;
	int rc;

	pthread_mutex_lock(&m->lock);
	e = btab_find_same(&m->tab, &f->e);
	if (!e) {
		pthread_mutex_unlock(&m->lock);
		return -EAGAIN;
	}
	rc = bytes ? uffd_copy(m->uffd, addr, bytes) : fill_zero(m, addr, write);
	if (!rc) {
		metric_inc(f->source);
		entry_release(m, e);
	}
	pthread_mutex_unlock(&m->lock);
	return rc;
}

/*
 * What the fault at addr needs, under the lock: 1 with *f filled for a
 * backed page, 0 for a page never backed (filled here, *rc its result),
 * -EAGAIN when the evictor has the page entered and not finished, or
 * -EUCLEAN for a page without an entry in a damaged table (keep.c).
 */
static int fault_look(struct mm *m, uint64_t addr, bool write, struct fill *f, int *rc)
{
	struct backing *b = m->b;
	const struct bentry *e;
	int ret = 1;

	pthread_mutex_lock(&m->lock);
	e = btab_find(&m->tab, addr);
	if (!e && m->damaged) {
		ret = -EUCLEAN; /* evicted or never touched: not known */
	} else if (!e) {
		*rc = fill_zero(m, addr, write);
		ret = 0;
	} else if (m->st->evicting == addr) {
		ret = -EAGAIN;
	} else {
		f->e = *e;
		f->source = e->kind == BACKED_ZERO     ? b->m_faults_zero
			    : e->kind == BACKED_REMOTE ? b->m_faults_remote
						       : b->m_faults_local;
	}
	pthread_mutex_unlock(&m->lock);
	return ret;
}

/*
 * No replica answered: the fault waits (false: kept, asked again shortly)
 * unless it has waited lost_after_ms since since_ms (0: it is new); then
 * the page is lost.
 */
static bool remote_unanswered(struct mm *m, const struct uffd_msg *msg, uint64_t addr,
			      uint64_t since_ms)
{
	if (!since_ms)
		metric_inc(m->b->m_remote_waits);
	if (!since_ms || now_ms() - since_ms < m->b->cfg->lost_after_ms)
		return false;
	lost_page(m, msg, addr, "no replica could be read");
	return true;
}

/* false: not served yet (the mm is changing, or the page's bytes are not
 * to be had yet); it is tried again shortly. since_ms: when it was first
 * tried, 0 for a new fault. */
static bool on_pagefault(struct mm *m, const struct uffd_msg *msg, uint64_t since_ms)
{
	struct backing *b = m->b;
	uint64_t t0 = clock_ns(CLOCK_MONOTONIC), ns;
	uint64_t addr = msg->arg.pagefault.address & ~(uint64_t)(PAGE - 1);
	bool write = msg->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WRITE;
	const char *lost = NULL;
	const void *bytes = NULL;
	struct fill f;
	int rc = 0, look;

	if (msg->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP)
		return release_writer(m, addr);
	look = fault_look(m, addr, write, &f, &rc);
	if (look == -EUCLEAN) {
		lost_page(m, msg, addr, "its process's kept table was damaged");
		return true;
	}
	if (look < 0)
		return false;
	if (look == 0)
		return fresh_filled(m, addr, rc);
	if (f.e.kind != BACKED_ZERO) {
		bytes = entry_bytes(
			m, &f.e, since_ms && now_ms() - since_ms >= b->cfg->lost_after_ms, &lost);
		if (!bytes && f.e.kind == BACKED_REMOTE)
			return remote_unanswered(m, msg, addr, since_ms);
		if (!bytes) {
			lost_page(m, msg, addr, lost);
			return true;
		}
	}
	if (inject("die_in_fault"))
		raise(SIGKILL);
	rc = fill_backed(m, &f, addr, write, bytes);
	if (rc == -EAGAIN)
		return false;
	if (rc) {
		if (rc != -ESRCH)
			log_warn("process %d: cannot bring back page %#llx: %s", (int)m->pid,
				 (unsigned long long)addr, strerror(-rc));
		uffd_wake(m->uffd, addr); /* let it fault again */
		return true;
	}
	ns = clock_ns(CLOCK_MONOTONIC) - t0;
	if (m->pid) {
		cool_note(b, m->pid, addr, f.e.kind == BACKED_POOL, cid_domain_of(f.e.id));
		wset_refault(b->wset, m->pid, addr, ns, now_ms(), cid_domain_of(f.e.id));
	}
	metric_observe(b->m_lat, (double)ns / 1e9);
	return true;
}

static void keep_retry(struct mm *m, const struct uffd_msg *msg, uint64_t since_ms)
{
	if (array_reserve((void **)&m->retry, &m->capretry, m->nretry + 1, sizeof(*m->retry))) {
		log_error("process %d: out of memory keeping a fault to retry", (int)m->pid);
		return;
	}
	m->retry[m->nretry++] = (struct retry){ *msg, since_ms };
}

/* Faults not served yet, once more; those still not served stay. */
static void retry_faults(struct mm *m)
{
	size_t n = m->nretry, k = 0;

	m->nretry = 0;
	for (size_t i = 0; i < n; i++)
		if (!on_pagefault(m, &m->retry[i].msg, m->retry[i].since_ms))
			m->retry[k++] = m->retry[i];
	m->nretry = k;
}

/* ---- events ------------------------------------------------------------------ */

/* A copy of e for a fork child's table: its own reference. m->lock held. */
static void fork_entry(struct backing *b, struct mm *c, const struct bentry *e)
{
	if (e->kind == BACKED_POOL && pool_ref(b->pool, e->ref, 1))
		return; /* the slot went: the child reads the page as a fresh one */
	if (btab_put(&c->tab, e)) {
		if (e->kind == BACKED_POOL)
			pool_ref(b->pool, e->ref, -1);
		return;
	}
	entry_count(b, e);
}

/*
 * Does the child's copy of the entry of the page under eviction stand?
 * Only if the page was gone at the fork by the zap alone: then the child
 * reads the content, as its parent would. Gone by the program's own drop
 * (too), the child must read zeroes; not gone yet, the child has the page
 * itself. The process holds its forks back while a zap runs, so its zap
 * state (local.h) says whether the zap ran before this fork; the removals
 * counted so far are all those before it (events come in order). m->lock
 * held.
 */
static bool fork_keeps_evicted(struct mm *m)
{
	struct cksm_local_zapstate z;
	struct iovec local = { &z, sizeof(z) };
	struct iovec remote = { (void *)(uintptr_t)(m->beacon + CKSM_LOCAL_BEACON_PAGES * PAGE),
				sizeof(z) };
	unsigned hits = m->st->evict_hits;
	/* A drop's removal is an event, counted in hits; a move makes none
	 * (remap_move.c), and its answer may not have been read yet. */
	unsigned own = m->remap == &remap_move ? 0 : 1;
	bool zapped;

	if (hits < own)
		return false;
	if (!m->beacon || !m->pid ||
	    process_vm_readv(m->pid, &local, 1, &remote, 1, 0) != (ssize_t)sizeof(z))
		return hits == own; /* cannot tell: the content, rather than zeroes */
	zapped = z.token == m->st->zap_token && z.state == CKSM_LOCAL_ZAP_DONE && z.status == 0;
	return zapped && hits == own;
}

/*
 * The MADV_DONTFORK VMAs of m (VmFlags "dc", in address order), which a
 * fork child does not get: their evicted pages' entries stay out of its
 * table, where a mapping of its own at the same address would otherwise
 * read the parent's content. Read only for a process with such pages
 * offered (m->dontcopy): NULL, 0 otherwise. libcksm holds the program's
 * madvise(MADV_DONTFORK / MADV_DOFORK) back across a fork, so the flags
 * read here are those the fork saw.
 */
static struct vma_info *dontcopy_vmas(struct mm *m, size_t *n)
{
	struct vma_info *v = NULL;
	size_t k = 0;

	*n = 0;
	if (!atomic_load(&m->dontcopy) || m->pid <= 0 || !m->tab.n)
		return NULL;
	if (smaps_read(m->pid, &v, n)) {
		log_warn(
			"process %d forked and its mappings cannot be read: the child's table keeps every entry",
			(int)m->pid);
		*n = 0;
		return NULL;
	}
	for (size_t i = 0; i < *n; i++)
		if (v[i].flags & VMA_DONTCOPY)
			v[k++] = v[i];
	*n = k;
	return v;
}

static bool in_vmas(const struct vma_info *v, size_t n, uint64_t addr)
{
	size_t lo = 0, hi = n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (addr < v[mid].start)
			hi = mid;
		else if (addr >= v[mid].end)
			lo = mid + 1;
		else
			return true;
	}
	return false;
}

/* fork: the child's userfaultfd, and a copy of the table for it. m->lock held. */
static void on_fork(struct mm *m, int ufd)
{
	struct backing *b = m->b;
	struct mm *c = mm_new(b, -1, ufd, 0);
	int fl = fcntl(ufd, F_GETFL);
	struct vma_info *dc;
	size_t ndc;

	if (!c || fl < 0 || fcntl(ufd, F_SETFL, fl | O_NONBLOCK) < 0) {
		/* Without it the child's backed pages would read as zeroes:
		 * libcksm kills that child before it runs and forks again. */
		log_error("process %d forked and the child's table cannot be kept: it forks again",
			  (int)m->pid);
		free(c);
		close(ufd);
		kid_keep(m, NULL);
		return;
	}
	c->handshaken = true;
	c->parent = m->pid;
	c->beacon = m->beacon;
	c->st->parent = m->pid;
	c->st->beacon = m->beacon;
	memcpy(c->st->mark, m->st->mark, sizeof(c->st->mark)); /* the child's copy of the page */
	keep_mm(c); /* logged if it cannot be: then served from memory only */
	dc = dontcopy_vmas(m, &ndc);
	for (size_t i = 0; i < m->tab.n; i++) {
		uint64_t addr = m->tab.e[i].page << 12;

		if (ndc && in_vmas(dc, ndc, addr))
			continue; /* not the child's */
		if (addr != m->st->evicting || fork_keeps_evicted(m))
			fork_entry(b, c, &m->tab.e[i]);
	}
	free(dc);
	metric_inc(b->m_forks);
	list_add(b, c);
	if (inject("die_in_fork"))
		raise(SIGKILL);
	if (m->parent && inject("die_in_child_fork"))
		raise(SIGKILL);
	kid_keep(m, c);
}

/*
 * The inbox's event removed or moved the page under eviction: counted
 * once, even when a killed agent's event is applied again (resume).
 * m->lock held.
 */
static void count_hits(struct mm *m, unsigned n)
{
	if (m->st->inbox_counted)
		return;
	m->st->evict_hits += n;
	m->st->inbox_counted = 1;
}

/* m->lock held. */
static void on_remap(struct mm *m, uint64_t from, uint64_t to, uint64_t len)
{
	struct bentry *moved = NULL;
	size_t n = 0, cap = 0;

	for (uint64_t a = from; m->tab.n && a < from + len; a += PAGE) {
		struct bentry *e = btab_find(&m->tab, a);

		if (!e)
			continue;
		if (array_reserve((void **)&moved, &cap, n + 1, sizeof(*moved))) {
			entry_release(m, e); /* cannot follow it: the page is lost */
			log_error("process %d: out of memory following an mremap", (int)m->pid);
			continue;
		}
		moved[n] = *e;
		moved[n].page = (to + (a - from)) >> 12;
		n++;
		btab_del(&m->tab, e);
	}
	for (size_t i = 0; i < n; i++)
		if (btab_put(&m->tab, &moved[i])) {
			log_error("process %d: out of memory following an mremap", (int)m->pid);
			if (moved[i].kind == BACKED_POOL)
				pool_ref(m->b->pool, moved[i].ref, -1);
		}
	if (m->st->evicting >= from && m->st->evicting < from + len) {
		/* The page under eviction moved, with its entry and its
		 * protection: the eviction follows it. Its zap, sent for the
		 * old address, finds it only if it is moved back there; else
		 * it finds nothing, or a page mapped there since, which is
		 * not protected (libcksm leaves it). */
		m->st->evicting = to + (m->st->evicting - from);
		pthread_cond_broadcast(&m->cond);
	}
	free(moved);
}

/*
 * The program dropped [start, end) (REMOVE), or unmapped it (unmap).
 * m->lock held.
 */
static void on_remove(struct mm *m, uint64_t start, uint64_t end, bool unmap)
{
	bool evicting = m->st->evicting >= start && m->st->evicting < end;

	/* libcksm dropping its scratch (SCRUB): nothing of the program's. */
	if (!unmap && m->scratch && start >= m->scratch &&
	    end <= m->scratch + CKSM_LOCAL_SCRATCH_PAGES * PAGE)
		return;

	/* The page under eviction alone, dropped: the evictor's own zap, or
	 * a drop its decision counts (evict_end). Anything else is the
	 * program's and remembered; an unmap never comes from the zap. */
	if (unmap || start != m->st->evicting || end != m->st->evicting + PAGE)
		removed_note(m, start, end);
	if (evicting) {
		count_hits(m, unmap ? 2 : 1);
		pthread_cond_broadcast(&m->cond);
		if (start < m->st->evicting)
			drop_range(m, start, m->st->evicting);
		if (m->st->evicting + PAGE < end)
			drop_range(m, m->st->evicting + PAGE, end);
	} else {
		drop_range(m, start, end);
	}
}

/* An event other than a fault. m->lock held. */
static void on_event(struct mm *m, const struct uffd_msg *msg)
{
	switch (msg->event) {
	case UFFD_EVENT_FORK:
		on_fork(m, (int)msg->arg.fork.ufd);
		break;
	case UFFD_EVENT_REMAP:
		on_remap(m, msg->arg.remap.from, msg->arg.remap.to, msg->arg.remap.len);
		break;
	case UFFD_EVENT_REMOVE:
	case UFFD_EVENT_UNMAP:
		on_remove(m, msg->arg.remove.start, msg->arg.remove.end,
			  msg->event == UFFD_EVENT_UNMAP);
		break;
	default:
		break;
	}
}

/* The inbox is empty again: its event is applied. m->lock held. */
static void clear_inbox(struct mm *m)
{
	__atomic_store_n(&m->st->inbox.event, 0, __ATOMIC_RELEASE);
}

/*
 * A read that failed: is the userfaultfd finished? Not for want of a
 * descriptor or memory (a fork event stays queued then, and is read again
 * later); only when the kernel says it is over.
 */
static bool uffd_finished(struct mm *m, int err)
{
	if (err == EAGAIN || err == EINTR)
		return false;
	if (err == EMFILE || err == ENFILE || err == ENOMEM) {
		if (!m->said_short)
			log_error("process %d: an event cannot be read (%s); read again later",
				  (int)m->pid, strerror(err));
		m->said_short = true;
		m->short_of = true;
		return false;
	}
	return true;
}

bool drain_uffd(struct mm *m)
{
	/* One message per read: a fork is handled before any fault read after
	 * it is served (serving it first would miss the child's copy). An
	 * event is read straight into the kept state's inbox and cleared once
	 * applied: the kernel lets the process go on as soon as it is read,
	 * so an agent killed in between leaves it for the next (resume). */
	struct uffd_msg msg;

	for (;;) {
		ssize_t n;

		pthread_mutex_lock(&m->lock);
		if (atomic_load(&m->events_held)) {
			/* A move runs (evict.c, "hold"): read on its answer. */
			pthread_mutex_unlock(&m->lock);
			return true;
		}
		m->st->inbox_counted = 0; /* the inbox is empty */
		n = read(m->uffd, &m->st->inbox, sizeof(m->st->inbox));
		msg = m->st->inbox;
		if (n == (ssize_t)sizeof(msg) && msg.event != UFFD_EVENT_PAGEFAULT) {
			on_event(m, &msg);
			clear_inbox(m);
			pthread_mutex_unlock(&m->lock);
			continue;
		}
		if (n > 0)
			clear_inbox(m);
		pthread_mutex_unlock(&m->lock);
		if (n < 0)
			return !uffd_finished(m, errno);
		if (n != (ssize_t)sizeof(msg))
			return false;
		m->short_of = false;
		if (atomic_load(&m->b->reattaching))
			reattach_match(m, &msg);
		if (!on_pagefault(m, &msg, 0))
			keep_retry(m, &msg, now_ms());
	}
}

void resume_inbox(struct mm *m)
{
	struct uffd_msg msg = m->st->inbox;

	if (!msg.event)
		return;
	if (msg.event == UFFD_EVENT_FORK) {
		/* Its descriptor died with the agent that read it: libcksm,
		 * which had no answer to that fork, kills the child before it
		 * runs and forks again. */
		log_warn(
			"process %d forked as the agent was killed: the child, whose userfaultfd died with it, is forked again",
			(int)m->pid);
	} else if (msg.event != UFFD_EVENT_PAGEFAULT) {
		/* Each is idempotent: a range already dropped or moved is
		 * dropped or moved again to the same effect. */
		log_info("process %d: applying the event a killed agent read", (int)m->pid);
		on_event(m, &msg);
	}
	clear_inbox(m);
}

/* ---- the thread -------------------------------------------------------------- */

struct pollset {
	struct pollfd *pf;
	struct mm **mv; /* mv[i] for pf[i], i >= 1; each with a reference */
	size_t n, cap;
};

/*
 * The wake eventfd and every listed mm's userfaultfd, each mm with a
 * reference. False when the backing stops. b->lock taken.
 */
static bool pollset_fill(struct backing *b, struct pollset *ps)
{
	size_t want = 1;

	pthread_mutex_lock(&b->lock);
	if (b->stop) {
		pthread_mutex_unlock(&b->lock);
		return false;
	}
	for (struct mm *m = b->mms; m; m = m->next)
		want++;
	if (want > ps->cap) {
		struct pollfd *np = realloc(ps->pf, want * sizeof(*np));
		struct mm **nm = np ? realloc(ps->mv, want * sizeof(*nm)) : NULL;

		if (np)
			ps->pf = np;
		if (nm)
			ps->mv = nm;
		if (np && nm)
			ps->cap = want;
	}
	ps->n = 0;
	ps->pf[ps->n++] = (struct pollfd){ b->wake_fd, POLLIN, 0 };
	for (struct mm *m = b->mms; m && ps->n < ps->cap; m = m->next) {
		atomic_fetch_add(&m->refs, 1);
		ps->mv[ps->n] = m;
		/* One short of descriptors stays readable: it is read again on
		 * a timer instead, not at every wake-up. One whose events are
		 * held is read when the hold ends (wake_faults). */
		ps->pf[ps->n++] = (struct pollfd){
			m->uffd, m->short_of || atomic_load(&m->events_held) ? 0 : POLLIN, 0
		};
	}
	pthread_mutex_unlock(&b->lock);
	return true;
}

void *fault_main(void *arg)
{
	struct backing *b = arg;
	struct pollset ps = { 0 };

	ps.pf = malloc(sizeof(*ps.pf));
	ps.mv = malloc(sizeof(*ps.mv));
	ps.cap = ps.pf && ps.mv ? 1 : 0;
	while (ps.cap && pollset_fill(b, &ps)) {
		bool retrying = false, short_of = false;

		for (size_t i = 1; i < ps.n; i++) {
			retrying = retrying || ps.mv[i]->nretry;
			short_of = short_of || ps.mv[i]->short_of;
		}
		if (poll(ps.pf, ps.n, retrying ? 1 : short_of ? 10 : -1) < 0 && errno != EINTR)
			log_warn("fault thread poll: %s", strerror(errno));
		if (ps.pf[0].revents & POLLIN) {
			uint64_t v;

			if (read(b->wake_fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
				log_warn("fault thread wake: %s", strerror(errno));
		}
		for (size_t i = 1; i < ps.n; i++) {
			struct mm *m = ps.mv[i];

			if (m->nretry)
				retry_faults(m);
			/* An orphan's pages come home; then it is forgotten. */
			if (atomic_exchange(&m->bring_home, false) && !bring_home(b, m))
				list_del(b, m);
			/* A fork child's userfaultfd that ended: the child is gone. */
			if ((ps.pf[i].revents || m->short_of) && !drain_uffd(m))
				list_del_unpaired(b, m);
			mm_put(m);
		}
	}
	if (!ps.cap)
		log_error("fault thread: out of memory");
	free(ps.pf);
	free(ps.mv);
	return NULL;
}
