/*
 * evict - offers and the evictor thread.
 *
 * The scanner offers pages (backing_offer): a duplicate of a pool slot, a
 * zero page, or a page whose content other nodes hold (remote). Offers
 * wait in a ring of OFFER_MAX; a page faulted back within the cool-down
 * is not offered again meanwhile. The evictor takes them one at a time,
 * at most evict_rate a second, and drops each as KSM merges one:
 * write-protect first, then compare (evict_one):
 *
 *   1. protect   UFFDIO_WRITEPROTECT: a write from now on waits on a WP
 *                fault, which the fault thread leaves to the evictor;
 *   2. read      process_vm_readv of the page;
 *   3. compare   byte for byte with what will back it (the pool slot, a
 *                remote replica read and checked beforehand, or zeroes);
 *   4. enter     the entry goes into the mm's table and owns its
 *                reference on what backs it from then on;
 *   5. zap       the remap back-end drops the page; the page's own
 *                REMOVE event is waited for (a second one means the
 *                program dropped or moved the page meanwhile, and the
 *                entry must go: the page then reads as the program left
 *                it);
 *   6. release   the protection goes and the writers that waited are
 *                woken: they find the page, or fault it back.
 * Any doubt before the zap leaves the page where it is. A process that
 * does not answer a zap within ZAP_WAIT_MS (stopped) is parked: its
 * eviction ends when the answer comes, and the evictor goes on with the
 * others meanwhile.
 */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "backing_int.h"
#include "inject.h"
#include "log.h"
#include "uffd.h"
#include "util.h"

/* ---- cool-down ---------------------------------------------------------------- */

static size_t cool_slot(pid_t pid, uint64_t addr, uint64_t *key)
{
	*key = ((uint64_t)(uint32_t)pid << 32 ^ (addr >> 12)) | 1;
	return (size_t)((*key * 0x9e3779b97f4a7c15ULL) >> 52) % COOLDOWN_SETS;
}

void cool_note(struct backing *b, pid_t pid, uint64_t addr, bool pooled, uint8_t domain)
{
	uint64_t k;
	size_t i = cool_slot(pid, addr, &k);

	pthread_mutex_lock(&b->lock);
	if (pooled && b->cool[i].key == k && b->nhot < HOT_MAX)
		b->hot[b->nhot++] = (struct hot){ pid, addr, domain };
	b->cool[i].key = k;
	b->cool[i].until_ms = now_ms() + b->cfg->evict_cooldown_millisecs;
	pthread_mutex_unlock(&b->lock);
}

/* b->lock held. */
static bool cool_active(struct backing *b, pid_t pid, uint64_t addr)
{
	uint64_t k;
	size_t i = cool_slot(pid, addr, &k);

	return b->cool[i].key == k && b->cool[i].until_ms > now_ms();
}

/* ---- offers ------------------------------------------------------------------- */

/* Does the working set let the page go (wset.h)? Counted if not. */
static bool wset_lets(struct backing *b, pid_t pid, uint64_t addr)
{
	enum wset_verdict v = wset_may_evict(b->wset, pid, addr, now_ms());

	if (v != WSET_EVICT)
		metric_inc(b->m_held[v]);
	return v == WSET_EVICT;
}

/* Queue o; false when the ring is full. b->lock held. */
static bool offer_push(struct backing *b, const struct offer *o)
{
	if (b->noffers >= OFFER_MAX)
		return false;
	b->offers[(b->offer_head + b->noffers++) % OFFER_MAX] = *o;
	pthread_cond_signal(&b->offer_cond);
	return true;
}

void backing_offer(struct backing *b, pid_t pid, uint64_t addr, enum backed_by kind,
		   struct pool_ref ref, const struct cid *id)
{
	struct offer o = { .pid = pid, .kind = (uint8_t)kind, .addr = addr, .ref = ref };
	bool dropped;

	if (!b->evicts || addr % PAGE)
		return;
	if (id)
		o.id = *id;
	pthread_mutex_lock(&b->lock);
	dropped = !cool_active(b, pid, addr) && wset_lets(b, pid, addr) && !offer_push(b, &o);
	pthread_mutex_unlock(&b->lock);
	if (dropped)
		metric_inc(b->m_offers_dropped);
}

bool backing_offer_remote(struct backing *b, pid_t pid, uint64_t addr, const struct cid *id)
{
	struct offer o = { .pid = pid, .kind = BACKED_REMOTE, .addr = addr, .id = *id };
	struct remote_id r;
	bool ok;

	if (!b->evicts || addr % PAGE)
		return false;
	pthread_mutex_lock(&b->lock);
	ok = remote_known(b, id, &r) && remote_usable(b, r.rem, r.n, r.learned_ms) &&
	     !cool_active(b, pid, addr) && wset_lets(b, pid, addr);
	if (ok) {
		o.nrem = r.n;
		memcpy(o.rem, r.rem, sizeof(o.rem));
		o.learned_ms = r.learned_ms;
		ok = offer_push(b, &o);
	}
	pthread_mutex_unlock(&b->lock);
	return ok;
}

/* ---- one eviction ------------------------------------------------------------- */

static bool all_zero(const uint8_t *p)
{
	return memcmp(p, zero_page, PAGE) == 0;
}

/* Wait on m->cond until cond_fn holds or ms pass; m->lock held. */
static bool wait_for(struct mm *m, bool (*cond_fn)(const struct mm *), unsigned ms)
{
	struct timespec until = deadline_after(CLOCK_REALTIME, ms);

	while (!cond_fn(m))
		if (pthread_cond_timedwait(&m->cond, &m->lock, &until) == ETIMEDOUT)
			return cond_fn(m);
	return true;
}

static bool zap_or_gone(const struct mm *m)
{
	return m->zap_done || m->gone || m->orphan;
}

static bool removal_or_gone(const struct mm *m)
{
	return m->st->evict_hits > 0 || m->gone || m->orphan;
}

static void evict_settle(struct backing *b, struct mm *m, const struct bentry *e);

/*
 * m's zap failed: no eviction of it for a while, from 500 ms doubling to
 * 30 s, so that a failing process costs the evictor, which all processes
 * share, one wait now and then (a late one is parked: the evictor waits
 * ZAP_WAIT_MS for it, no more). A zap answered in time ends it. m->lock
 * held.
 */
static void back_off(struct mm *m)
{
	m->evict_backoff = m->evict_backoff ? m->evict_backoff * 2 : 500;
	if (m->evict_backoff > 30000)
		m->evict_backoff = 30000;
	m->evict_after = now_ms() + m->evict_backoff;
}

/* Has m the mark (local.h) that every read for an eviction checks? */
static bool marked(const struct mm *m)
{
	static const uint8_t none[sizeof(m->st->mark)];

	return m->beacon && memcmp(m->st->mark, none, sizeof(none)) != 0;
}

/*
 * An answered zap's removal is read before the answer can be sent (the
 * process's madvise returns once the agent read its event), so it is
 * counted by then; this bounds the wait for a process that answers
 * without dropping the page.
 */
#define REMOVAL_WAIT_MS 1000

/*
 * The zap of addr was answered (done) and no removal came: if the page
 * is still there, the process answered without dropping it. Its entry
 * goes (evict_settle, for a failed zap), and nothing more of it is
 * evicted: a process that does not keep its word could otherwise hold
 * every eviction of the node. m->lock held.
 */
static void zap_unkept(struct backing *b, struct mm *m, uint64_t addr)
{
	if (uffd_present(m->pagemap, addr) == 0)
		return; /* gone after all: the entry stands */
	m->zap_status = -EPROTO;
	if (!m->unkept) {
		m->unkept = true;
		log_warn(
			"process %d answered the zap of page %#llx without dropping it (pagemap): nothing more of it is evicted",
			(int)m->pid, (unsigned long long)addr);
	}
	metric_inc(b->m_unkept);
}

/*
 * The hold. libcksm looks at the page (still write-protected: the one
 * compared), then moves it out. A program that unmaps the page between
 * the two, by whatever call (a raw system call, or its C library's own
 * brk and mmap, which no wrapper sees), and maps and writes a new one
 * there would have the new page moved in its stead. The kernel refuses a
 * move (EAGAIN) from the moment an unmap, a drop, an mremap or a fork of
 * the process's registered memory begins until its event is read,
 * atomically with the move (the userfaultfd's mmap_changing). So while a
 * move runs, the fault thread reads nothing of that process: such a call
 * waits for its event to be read, and the move gives way to it. The
 * process's faults wait meanwhile; a move takes microseconds. A move not
 * answered within HOLD_MS (a stopped process, a libcksm thread waiting on
 * a fault of its own) is fenced first: the scratch page it would fill is
 * unregistered, so that it cannot happen any more (EINVAL), and the
 * events are read again. The page is registered again at the eviction's
 * end. m->lock held for all of them.
 */
static void hold_events(struct mm *m)
{
	if (m->remap == &remap_move)
		atomic_store(&m->events_held, true);
}

static bool scrubs_answered(const struct mm *m)
{
	return scratch_quiet(m) || m->gone || m->orphan;
}

static void release_events(struct mm *m)
{
	if (atomic_exchange(&m->events_held, false))
		wake_faults(m->b);
}

static void fence(struct mm *m, uint64_t lo, uint64_t len)
{
	int rc = uffd_unregister(m->uffd, lo, lo + len);

	if (rc == 0) {
		m->fenced = lo;
		m->fenced_len = len;
	} else if (rc != -ESRCH) {
		/* The move may still happen: the hold lasts until its answer. */
		log_warn(
			"process %d: its scratch cannot be fenced (%s): its events wait for the move's answer",
			(int)m->pid, strerror(-rc));
		return;
	}
	release_events(m);
}

static void unfence(struct mm *m)
{
	if (!m->fenced)
		return;
	uffd_register(m->uffd, m->fenced, m->fenced + m->fenced_len, false);
	m->fenced = 0;
}

void evict_zapped(struct mm *m, uint64_t token, int status)
{
	pthread_mutex_lock(&m->lock);
	if (token == m->st->zap_token && !m->zap_done) {
		m->zap_status = status;
		m->zap_done = true;
		release_events(m);
		pthread_cond_broadcast(&m->cond);
		if (m->resuming) {
			evict_settle(m->b, m, &m->resume_e);
			return;
		}
	}
	pthread_mutex_unlock(&m->lock);
}

/* Why a page was not dropped, by the zap's (or the move's) status. */
static const char *zap_failure(int status)
{
	switch (status) {
	case -ESRCH:
		return "the process is gone";
	case -EBUSY:
		return "pinned, or shared with another process";
	case -ECANCELED:
		return "dropped or mapped anew before it was moved";
	case -ENOENT:
		return "not there when it was to move";
	case -ENOSPC:
	case -EEXIST:
		return "the scratch is full";
	case -EAGAIN:
		return "the program was mapping or unmapping memory";
	case -ETIMEDOUT:
		return "its move came too late";
	default:
		return "the zap failed";
	}
}

/*
 * The zap's answer (or the end of the process, or of the agent) decides
 * what becomes of the entry; the removals were counted already. m->lock
 * held; released.
 */
static void evict_settle(struct backing *b, struct mm *m, const struct bentry *e)
{
	uint64_t addr = e->page << 12;
	const char *why = NULL;

	release_events(m);
	if (m->fenced && m->zap_done && m->zap_status == -EINVAL)
		m->zap_status = -ETIMEDOUT; /* the move came after its fence */
	/* Unanswered (the agent stops), the move may still come: the fence
	 * stays, and the next agent registers the scratch anew. */
	if (m->zap_done)
		unfence(m);
	if (m->zap_done && m->zap_status == 0) {
		/* The page is gone. More than one removal means the program
		 * dropped or moved the page too, and it must then read as the
		 * program left it: zeroes. (Faults on it waited for this.) */
		if (m->st->evict_hits > 1) {
			struct bentry *x = btab_find_same(&m->tab, e);

			if (x)
				entry_release(m, x);
			why = "the program removed the page";
		}
	} else if (m->zap_done && m->zap_status != -ECONNRESET) {
		/* Not dropped (or the process is gone): the entry must not stay. */
		struct bentry *x = btab_find_same(&m->tab, e);

		if (x)
			entry_release(m, x);
		why = zap_failure(m->zap_status);
		if (m->zap_status == -EBUSY) {
			/* Pinned (or shared): its neighbours likely too, as a
			 * device's buffer is; none of them for a while. */
			m->busy[m->busy_next++ % BUSY_MAX] =
				(struct busy){ addr & ~(BUSY_REGION - 1), now_ms() + BUSY_MS };
			metric_inc(b->m_pinned);
		}
		if (m->zap_status == -ENOSPC || m->zap_status == -EEXIST ||
		    m->zap_status == -EAGAIN || m->zap_status == -ETIMEDOUT)
			m->evict_after = now_ms() + 100;
		else if (m->zap_status != -EBUSY && m->zap_status != -ECANCELED)
			back_off(m);
	} else {
		/* No answer (the agent is stopping, or the process closed its
		 * connection): the page may or may not have been dropped. The
		 * entry stays: a present page never consults it, a missing
		 * one is served from it. */
		why = m->zap_done ? "the process left" : "the agent is stopping";
	}
	/* Unanswered, the zap may still run: the page stays the one under
	 * eviction, for the stop (kept, not brought home) and the next agent
	 * (evict_resume). */
	if (m->zap_done)
		m->st->evicting = 0;
	m->resuming = false;
	pthread_mutex_unlock(&m->lock);
	metric_inc(why ? b->m_aborted : b->m_evicted);
	if (!why && m->pid)
		wset_evicted(b->wset, m->pid, addr, now_ms());
	/* Writers that raced the eviction: they retry, and either find the
	 * page or fault it back. */
	uffd_protect(m->uffd, addr, false);
	uffd_wake(m->uffd, addr);
	if (why)
		log_debug("process %d page %#llx: %s (%d)", (int)m->pid, (unsigned long long)addr,
			  why, m->zap_status);
}

/*
 * After the zap was asked for: wait for its answer, and for its removal
 * to be counted (the fault thread reads and applies an event under
 * m->lock, and the process answers only once its madvise's event was
 * read), then settle. m->lock held; released, with the evictor's
 * reference on m.
 */
static void evict_end(struct backing *b, struct mm *m, const struct bentry *e)
{
	while (!zap_or_gone(m) && !atomic_load(&b->stopping))
		wait_for(m, zap_or_gone, 200);
	if (m->zap_done && m->remap == &remap_move) {
		if (m->zap_status == 0)
			m->zap_status = move_check(m, e);
		else
			move_unused(m);
		/* Moved: its own removal, since a move makes no event. A page
		 * still there waits for a removal, as for a zap (zap_unkept). */
		if (m->zap_status == 0 && uffd_present(m->pagemap, e->page << 12) == 0)
			m->st->evict_hits++;
	}
	if (m->zap_done && m->zap_status == 0 && !wait_for(m, removal_or_gone, REMOVAL_WAIT_MS))
		zap_unkept(b, m, e->page << 12);
	evict_settle(b, m, e);
	mm_put(m);
}

/* Has m's process no page at addr (pagemap)? */
static bool page_gone(struct mm *m, uint64_t addr)
{
	int pm = m->pagemap >= 0 ? m->pagemap : uffd_pagemap_open(m->pid);
	bool gone = pm >= 0 && uffd_present(pm, addr) == 0;

	if (pm >= 0 && pm != m->pagemap)
		close(pm);
	return gone;
}

void evict_resume(struct mm *m, uint64_t token, int state, int status)
{
	struct bentry *e;
	uint64_t addr;

	pthread_mutex_lock(&m->lock);
	addr = m->st->evicting;
	e = addr ? btab_find(&m->tab, addr) : NULL;
	if (!addr) {
		pthread_mutex_unlock(&m->lock);
		return;
	}
	m->resume_e = e ? *e : (struct bentry){ .page = addr >> 12 };
	if (e && token == m->st->zap_token && state == CKSM_LOCAL_ZAP_RUNNING) {
		/* The process is dropping the page now: its answer settles it
		 * (evict_zapped), as it would have for the killed agent. */
		m->zap_done = false;
		m->resuming = true;
		/* It may be moving now, with events read from here on: the
		 * move is made impossible first (the hold, above). */
		if (m->remap == &remap_move && m->scratch)
			fence(m, m->scratch, CKSM_LOCAL_SCRATCH_PAGES * PAGE);
		pthread_mutex_unlock(&m->lock);
		log_info(
			"process %d: the eviction of page %#llx a killed agent left settles at its zap's answer",
			(int)m->pid, (unsigned long long)addr);
		return;
	}
	if (e && token == m->st->zap_token && state == CKSM_LOCAL_ZAP_DONE) {
		m->zap_done = true;
		m->zap_status = status;
	} else if (e && m->scratch_asked && !m->st->evict_hits && page_gone(m, addr)) {
		/* Moved out (remap_move) before the agent was killed: the
		 * program's own drop or unmap would have been counted, or is
		 * still to be read, and then drops the entry. */
		m->zap_done = true;
		m->zap_status = 0;
		m->st->evict_hits = 1;
	} else {
		/* The zap never ran: the page is there (or the program dropped
		 * it itself), and the entry must go. */
		m->zap_done = true;
		m->zap_status = -ECANCELED;
	}
	log_info("process %d: settling the eviction of page %#llx a killed agent left", (int)m->pid,
		 (unsigned long long)addr);
	evict_settle(m->b, m, &m->resume_e);
}

/* An eviction whose process has not answered its zap yet. */
static void park(struct backing *b, struct mm *m, const struct bentry *e)
{
	struct parked *p = malloc(sizeof(*p));

	if (!p) { /* nothing else to do but wait */
		pthread_mutex_lock(&m->lock);
		evict_end(b, m, e);
		return;
	}
	log_warn(
		"process %d has not answered a zap for %d ms (stopped?): its evictions wait, the others go on",
		(int)m->pid, ZAP_WAIT_MS);
	p->m = m;
	p->e = *e;
	p->next = b->parked;
	b->parked = p;
	metric_gauge_add(b->m_parked, 1);
}

/*
 * A process that does not answer its zap may have run exec, its socket
 * kept by another holding the old memory (attach_exec.sh): is the mark
 * still where its userfaultfd's memory had it? If not it is foreign, and
 * attach.c lets it go, which ends the wait. A live libcksm process never
 * unmaps its beacon: a mark that cannot be read is not its.
 */
static void mark_check(struct mm *m)
{
	uint8_t mark[sizeof(m->st->mark)];
	struct iovec l = { mark, sizeof(mark) },
		     r = { (void *)(uintptr_t)(m->beacon + CKSM_LOCAL_BEACON_MARK * PAGE),
			   sizeof(mark) };
	ssize_t got;

	if (!marked(m) || atomic_load(&m->foreign))
		return;
	got = process_vm_readv(m->pid, &l, 1, &r, 1, 0);
	if (!mm_alive(m) || (got < 0 && errno != EFAULT))
		return;
	if ((got != (ssize_t)sizeof(mark) || memcmp(mark, m->st->mark, sizeof(mark))) &&
	    !atomic_exchange(&m->foreign, true))
		log_warn("process %d: its memory is not its userfaultfd's (it ran exec?)",
			 (int)m->pid);
}

/* Evictor thread: end the parked evictions whose answer came (all of
 * them once the agent stops). */
static void unpark(struct backing *b, bool all)
{
	for (struct parked **pp = &b->parked, *p; (p = *pp);) {
		pthread_mutex_lock(&p->m->lock);
		if (!all && !zap_or_gone(p->m)) {
			pthread_mutex_unlock(&p->m->lock);
			mark_check(p->m);
			pp = &p->next;
			continue;
		}
		*pp = p->next;
		evict_end(b, p->m, &p->e);
		metric_gauge_add(b->m_parked, -1);
		free(p);
	}
}

/*
 * What will back the page, before it is touched: a reference on the pool
 * slot (at most max_page_sharing pages on one dup, as with KSM), or the
 * first replica that answers, read into rbuf and checked. NULL for a zero
 * page; false when the offer is to be passed over.
 */
static bool evict_source(struct backing *b, const struct offer *o, struct bentry *e, uint8_t *rbuf,
			 const void **dup)
{
	int first;

	*dup = NULL;
	if (o->kind == BACKED_POOL) {
		*dup = pool_page(b->pool, o->ref, NULL);
		return *dup && pool_refs(b->pool, o->ref) < b->cfg->max_page_sharing &&
		       pool_ref(b->pool, o->ref, 1) == 0;
	}
	if (o->kind == BACKED_REMOTE) {
		/* The shard may release what it named long ago: the page's
		 * count might cross the release (remote.c). */
		if (!remote_usable(b, o->rem, o->nrem, o->learned_ms))
			return false;
		first = remote_fetch(b, b->evict_tr, o->rem, o->nrem, &o->id, rbuf, false);
		if (first < 0 || !remote_usable(b, &o->rem[first], 1, o->learned_ms))
			return false;
		e->nrem = 0;
		for (unsigned i = (unsigned)first; i < o->nrem; i++)
			e->rem[e->nrem++] = o->rem[i];
		*dup = rbuf;
	}
	return true;
}

/* Was a page of addr's region refused as pinned lately? m->lock held. */
static bool busy_covers(const struct mm *m, uint64_t addr)
{
	uint64_t now = now_ms();

	for (unsigned i = 0; i < BUSY_MAX; i++)
		if (m->busy[i].region == (addr & ~(BUSY_REGION - 1)) && m->busy[i].until_ms > now)
			return true;
	return false;
}

/* Is addr libcksm's own memory (OWN), which its zaps touch? m->lock held. */
static bool own_covers(const struct mm *m, uint64_t addr)
{
	for (unsigned i = 0; i < m->nown; i++)
		if (addr >= m->own[i].lo && addr < m->own[i].hi)
			return true;
	return false;
}

/*
 * Claim m's one eviction slot for addr, if nothing forbids it: another
 * eviction, an entry, KSM's window, libcksm's own memory, or the
 * program having dropped the page lately (its event comes before the
 * kernel drops the page: a page still there may go without another
 * event, and an eviction of it would keep its old content for a page
 * that must read zeroes).
 */
static bool evict_claim(struct mm *m, uint64_t addr)
{
	bool ok;

	pthread_mutex_lock(&m->lock);
	ok = !m->st->evicting && !m->orphan && !m->unkept && marked(m) &&
	     !(addr >= m->beacon && addr - m->beacon < CKSM_LOCAL_MAP_PAGES * PAGE) &&
	     now_ms() >= m->evict_after && !btab_find(&m->tab, addr) && !ksm_owns(m, addr) &&
	     !removed_covers(m, addr) && !busy_covers(m, addr) && !own_covers(m, addr);
	if (ok) {
		m->st->evicting = addr;
		m->st->evict_hits = 0;
	}
	pthread_mutex_unlock(&m->lock);
	return ok;
}

/* Enter e, counted, with a new zap token into *token. */
static bool evict_enter(struct backing *b, struct mm *m, const struct bentry *e, uint64_t *token)
{
	bool ok;

	pthread_mutex_lock(&m->lock);
	/* The token first: a killed agent's successor tells by it whether
	 * the zap the process ran last was this entry's. */
	m->st->zap_token = *token = ++b->next_token;
	ok = !m->st->evict_hits && m->st->evicting == e->page << 12 && !m->orphan &&
	     btab_put(&m->tab, e) == 0;
	if (ok) {
		entry_count(b, e);
		m->zap_done = false;
	}
	pthread_mutex_unlock(&m->lock);
	return ok;
}

/*
 * Have the page dropped and see the eviction to its end, or park it when
 * the process does not answer in time. Until then the page stays
 * write-protected, so nothing written can be lost.
 */
static void evict_zap(struct backing *b, struct mm *m, const struct bentry *e, uint64_t token,
		      const void *dup)
{
	int rc;

	if (inject("die_before_zap"))
		raise(SIGKILL);
	pthread_mutex_lock(&m->lock);
	/* libcksm drops its scratch (SCRUB) in the thread that moves, and
	 * that drop waits for its event to be read: not under a hold. */
	if (m->remap == &remap_move)
		wait_for(m, scrubs_answered, SCRUB_WAIT_MS);
	hold_events(m);
	rc = m->remap->zap(m, e->page << 12, PAGE, token, dup);
	if (inject("die_after_zap"))
		raise(SIGKILL);
	if (rc == -EINPROGRESS) {
		bool lasts = inject("hold_long");

		if (!wait_for(m, zap_or_gone, HOLD_MS) && atomic_load(&m->events_held) && !lasts)
			fence(m, m->moved_to, PAGE);
		while (lasts && !zap_or_gone(m) && !atomic_load(&b->stopping))
			wait_for(m, zap_or_gone, 200);
		if (!wait_for(m, zap_or_gone, ZAP_WAIT_MS - HOLD_MS) &&
		    !atomic_load(&b->stopping)) {
			pthread_mutex_unlock(&m->lock);
			park(b, m, e);
			return;
		}
	} else {
		m->zap_done = true;
		m->zap_status = rc;
	}
	release_events(m);
	if (m->zap_done && m->zap_status == 0)
		m->evict_backoff = 0; /* answered in time */
	evict_end(b, m, e);
}

/*
 * The page at addr of m's process, into buf, and its mark with it: one
 * process_vm_readv reads one address space, so the page is of the one
 * m's userfaultfd serves only if the mark (local.h) is there too. A
 * process that ran exec, or a pid used again, is read no further: m is
 * let go (attach.c). An mm without a mark (no beacon, or a mark that
 * could not be set) is never read for an eviction.
 */
static bool read_own(struct mm *m, uint64_t addr, uint8_t *buf)
{
	uint8_t mark[sizeof(m->st->mark)];
	struct iovec local[2] = { { buf, PAGE }, { mark, sizeof(mark) } };
	struct iovec remote[2] = {
		{ (void *)(uintptr_t)addr, PAGE },
		{ (void *)(uintptr_t)(m->beacon + CKSM_LOCAL_BEACON_MARK * PAGE), sizeof(mark) },
	};
	ssize_t got;

	if (!marked(m))
		return false; /* nothing tells its memory from another's */
	got = process_vm_readv(m->pid, local, 2, remote, 2, 0);
	if (got < PAGE || !mm_alive(m))
		return false;
	if (got != PAGE + (ssize_t)sizeof(mark) || memcmp(mark, m->st->mark, sizeof(mark))) {
		/* The page is there and the mark is not (or is another). */
		if (!atomic_exchange(&m->foreign, true))
			log_warn("process %d: its memory is not its userfaultfd's (it ran exec?)",
				 (int)m->pid);
		return false;
	}
	return true;
}

/*
 * One page: write-protect, read, compare, enter, zap, release. From the
 * moment it is entered, the entry owns the reference on its dup and is
 * counted, so whoever removes it (a fault, an event, evict_end) releases
 * it once.
 */
/*
 * May a page of id's domain be evicted? Not when its section says
 * evict = 0: nothing of it is merged, so no write to it can be timed
 * against a copy another process holds (operations.md, "Threat model").
 */
static bool domain_evicts(struct backing *b, struct cid id)
{
	const struct config *cfg = b->cfg;
	uint8_t tag = cid_domain_of(id);

	for (unsigned i = 0; i < cfg->ndomains; i++)
		if (cfg->domains[i].id == tag)
			return cfg->domains[i].evict;
	return true;
}

static void evict_one(struct backing *b, const struct offer *o, uint8_t *buf, uint8_t *rbuf)
{
	struct mm *m = mm_get(b, o->pid);
	struct bentry e = { .page = o->addr >> 12, .ref = o->ref, .id = o->id, .kind = o->kind };
	const void *dup;
	const char *why = NULL;
	uint64_t token;
	int rc;

	if (!m)
		return;
	if (!domain_evicts(b, o->id) || !evict_source(b, o, &e, rbuf, &dup))
		goto put_mm;
	if (!evict_claim(m, o->addr))
		goto drop_ref;
	rc = uffd_protect(m->uffd, o->addr, true);
	/* An event waits to be read (a scratch dropped, a program's drop):
	 * the fault thread reads it in a moment. */
	for (unsigned i = 0; rc == -EAGAIN && i < 50; i++) {
		usleep(200);
		rc = uffd_protect(m->uffd, o->addr, true);
	}
	if (rc) {
		why = rc == -EAGAIN ? "the mm is changing" : "not registered";
		goto unclaim;
	}
	if (!uffd_protected(m->pagemap, o->addr)) {
		/* Dropped by the program: protecting it did nothing, and the
		 * read would fault in a fresh page that writes go through. */
		why = "not there";
		goto unprotect;
	}
	if (!read_own(m, o->addr, buf)) {
		why = "unreadable, or not its userfaultfd's memory";
		goto unprotect;
	}
	if (o->kind == BACKED_ZERO ? !all_zero(buf) : memcmp(buf, dup, PAGE) != 0) {
		why = "changed";
		goto unprotect;
	}
	if (!evict_enter(b, m, &e, &token)) {
		why = "moved, or out of memory";
		goto unprotect;
	}
	evict_zap(b, m, &e, token, dup); /* the entry and m are its now */
	return;
unprotect:
	uffd_protect(m->uffd, o->addr, false);
unclaim:
	pthread_mutex_lock(&m->lock);
	m->st->evicting = 0;
	pthread_mutex_unlock(&m->lock);
	uffd_wake(m->uffd, o->addr);
	metric_inc(b->m_aborted);
	log_debug("process %d page %#llx stays: %s", (int)m->pid, (unsigned long long)o->addr, why);
drop_ref:
	if (o->kind == BACKED_POOL)
		pool_ref(b->pool, o->ref, -1);
put_mm:
	mm_put(m);
}

/* ---- the thread ---------------------------------------------------------------- */

/*
 * The next offer into *o; false when the evictor stops. Parked evictions
 * are looked at every 200 ms meanwhile. b->lock taken.
 */
static bool next_offer(struct backing *b, struct offer *o)
{
	pthread_mutex_lock(&b->lock);
	while (!b->stop_evicting && !b->noffers) {
		struct timespec ts;

		if (!b->parked) {
			pthread_cond_wait(&b->offer_cond, &b->lock);
			continue;
		}
		pthread_mutex_unlock(&b->lock);
		unpark(b, false);
		pthread_mutex_lock(&b->lock);
		if (b->parked && !b->noffers && !b->stop_evicting) {
			ts = deadline_after(CLOCK_REALTIME, 200);
			pthread_cond_timedwait(&b->offer_cond, &b->lock, &ts);
		}
	}
	if (b->stop_evicting) {
		pthread_mutex_unlock(&b->lock);
		return false;
	}
	*o = b->offers[b->offer_head];
	b->offer_head = (b->offer_head + 1) % OFFER_MAX;
	b->noffers--;
	pthread_mutex_unlock(&b->lock);
	return true;
}

/* A token bucket: at most rate a second, in bursts of a tenth of a second's. */
struct pace {
	double tokens, rate;
	uint64_t last_ns;
};

static void pace_wait(struct pace *p)
{
	uint64_t now = clock_ns(CLOCK_MONOTONIC);

	p->tokens += (double)(now - p->last_ns) / 1e9 * p->rate;
	p->last_ns = now;
	if (p->tokens > p->rate / 10 + 1)
		p->tokens = p->rate / 10 + 1;
	if (p->tokens < 1) {
		uint64_t ns = (uint64_t)((1 - p->tokens) / p->rate * 1e9);
		struct timespec ts = { (time_t)(ns / 1000000000ULL), (long)(ns % 1000000000ULL) };

		nanosleep(&ts, NULL);
		p->tokens = 1;
		p->last_ns = clock_ns(CLOCK_MONOTONIC);
	}
	p->tokens -= 1;
}

void *evict_main(void *arg)
{
	struct backing *b = arg;
	uint8_t *buf = aligned_alloc(PAGE, 2 * PAGE);
	struct pace pace = { 0, b->cfg->evict_rate, clock_ns(CLOCK_MONOTONIC) };
	struct offer o;

	if (!buf)
		return NULL;
	while (next_offer(b, &o)) {
		pace_wait(&pace);
		if (b->parked)
			unpark(b, false);
		evict_one(b, &o, buf, buf + PAGE);
	}
	unpark(b, true);
	free(buf);
	return NULL;
}
