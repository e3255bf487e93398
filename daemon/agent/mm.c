/*
 * mm - one served address space: its lifetime, and its entries' accounting.
 *
 * An mm is reference-counted. It is made when a process connects (or
 * forks), put on the backing's list when it is served (the list holds a
 * reference; whoever takes it off drops that one), and freed with its
 * last reference: its remaining entries are released then and its
 * userfaultfd and socket closed. mm_get finds the mm of an attached
 * process for the evictor and the KSM hand-over.
 *
 * Every entry of a table is counted once, from the moment it comes in
 * (entry_count: the reference it owns on what backs it, for the shards,
 * and the gauges) to the moment it leaves (entry_release).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backing_int.h"
#include "log.h"
#include "uffd.h"
#include "util.h"

/* ---- entries ---------------------------------------------------------------- */

static struct metric *backed_gauge(struct backing *b, const struct bentry *e)
{
	return e->kind == BACKED_POOL	  ? b->m_backed_local
	       : e->kind == BACKED_REMOTE ? b->m_backed_remote
					  : b->m_backed_zero;
}

void entry_count(struct backing *b, const struct bentry *e)
{
	if (e->kind == BACKED_POOL)
		ref_slot_changed(b, e->ref, &e->id);
	else if (e->kind == BACKED_REMOTE)
		ref_remote_changed(b, &e->rem[0], &e->id, 1);
	metric_gauge_add(backed_gauge(b, e), 1);
	metric_gauge_add(b->m_saved, PAGE);
}

void entry_uncount(struct backing *b, const struct bentry *e)
{
	if (e->kind == BACKED_POOL) {
		pool_ref(b->pool, e->ref, -1);
		ref_slot_changed(b, e->ref, &e->id);
	} else if (e->kind == BACKED_REMOTE) {
		ref_remote_changed(b, &e->rem[0], &e->id, -1);
	}
	metric_gauge_add(backed_gauge(b, e), -1);
	metric_gauge_add(b->m_saved, -(double)PAGE);
}

void entry_release(struct mm *m, struct bentry *e)
{
	entry_uncount(m->b, e);
	btab_del(&m->tab, e);
}

void drop_range(struct mm *m, uint64_t start, uint64_t end)
{
	if (!m->tab.n)
		return;
	if ((end - start) / PAGE < m->tab.n) {
		for (uint64_t a = start; a < end; a += PAGE) {
			struct bentry *e = btab_find(&m->tab, a);

			if (e)
				entry_release(m, e);
		}
		return;
	}
	for (size_t i = 0; i < m->tab.n;) {
		uint64_t a = m->tab.e[i].page << 12;

		if (a >= start && a < end)
			entry_release(m, &m->tab.e[i]); /* i holds the last entry now */
		else
			i++;
	}
}

/* ---- mm lifetime ------------------------------------------------------------ */

const uint8_t zero_page[PAGE] __attribute__((aligned(PAGE)));

struct mm *mm_new(struct backing *b, int sock, int uffd, pid_t pid)
{
	struct mm *m = calloc(1, sizeof(*m));

	if (!m)
		return NULL;
	m->b = b;
	atomic_init(&m->refs, 1); /* the list's */
	m->sock = sock;
	m->uffd = uffd;
	m->pid = pid;
	m->beacon_idx = -1;
	m->pagemap = -1;
	m->pidfd = -1;
	m->st = calloc(1, sizeof(*m->st));
	if (!m->st) {
		free(m);
		return NULL;
	}
	m->st->pid = pid;
	btab_init(&m->tab);
	pthread_mutex_init(&m->lock, NULL);
	pthread_cond_init(&m->cond, NULL);
	return m;
}

void mm_put(struct mm *m)
{
	if (atomic_fetch_sub(&m->refs, 1) != 1)
		return;
	if (m->key && m->b->stop && m->tab.n) {
		/* The agent stops with pages of m it could not bring back:
		 * they stay kept, and wait for the next agent. */
		log_warn("process %d: %zu backed pages wait for the next agent", (int)m->pid,
			 m->tab.n);
	} else {
		pthread_mutex_lock(&m->lock);
		drop_range(m, 0, UINT64_MAX);
		pthread_mutex_unlock(&m->lock);
		keep_forget(m);
	}
	btab_fini(&m->tab);
	keep_unmap(m);
	free(m->retry);
	if (m->uffd >= 0)
		close(m->uffd);
	if (m->sock >= 0)
		close(m->sock);
	if (m->pagemap >= 0)
		close(m->pagemap);
	if (m->pidfd >= 0)
		close(m->pidfd);
	pthread_mutex_destroy(&m->lock);
	pthread_cond_destroy(&m->cond);
	free(m);
}

void wake_faults(struct backing *b)
{
	uint64_t one = 1;

	if (write(b->wake_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		log_warn("cannot wake the fault thread: %s", strerror(errno));
}

void list_add(struct backing *b, struct mm *m)
{
	pthread_mutex_lock(&b->lock);
	m->next = b->mms;
	b->mms = m;
	pthread_mutex_unlock(&b->lock);
	metric_gauge_add(b->m_attached, 1);
	wake_faults(b);
}

/* Take m off the list; b->lock held. False if another thread did first. */
static bool list_unlink(struct backing *b, struct mm *m)
{
	for (struct mm **p = &b->mms; *p; p = &(*p)->next)
		if (*p == m) {
			*p = m->next;
			m->gone = true;
			return true;
		}
	return false;
}

/* m is off the list: an evictor waiting on it gives up; drop the list's reference. */
static void list_del_done(struct backing *b, struct mm *m)
{
	metric_gauge_add(b->m_attached, -1);
	pthread_mutex_lock(&m->lock);
	m->zap_done = true;
	m->zap_status = -ESRCH;
	pthread_cond_broadcast(&m->cond);
	pthread_mutex_unlock(&m->lock);
	wake_faults(b);
	mm_put(m);
}

void list_del(struct backing *b, struct mm *m)
{
	bool found;

	pthread_mutex_lock(&b->lock);
	found = list_unlink(b, m);
	pthread_mutex_unlock(&b->lock);
	if (found)
		list_del_done(b, m);
}

void list_del_unpaired(struct backing *b, struct mm *m)
{
	bool found = false;

	pthread_mutex_lock(&b->lock);
	if (m->sock < 0 && !m->claimed)
		found = list_unlink(b, m);
	pthread_mutex_unlock(&b->lock);
	if (found) {
		kid_forget(m);
		list_del_done(b, m);
	}
}

struct mm *mm_get(struct backing *b, pid_t pid)
{
	struct mm *m;

	pthread_mutex_lock(&b->lock);
	for (m = b->mms; m; m = m->next)
		if (m->pid == pid && m->sock >= 0 && m->handshaken && !m->orphan)
			break;
	if (m)
		atomic_fetch_add(&m->refs, 1);
	pthread_mutex_unlock(&b->lock);
	return m;
}

bool backing_waits_for(struct backing *b, pid_t pid)
{
	for (const struct mm *w = b->waiting; w; w = w->wnext)
		if (w->st->pid == pid)
			return true;
	return false;
}

bool backing_attached(struct backing *b, pid_t pid)
{
	struct mm *m = mm_get(b, pid);

	if (m)
		mm_put(m);
	return m != NULL;
}

bool backing_moves(const struct backing *b)
{
	return b->evicts && (b->features & UFFD_FEATURE_MOVE);
}

bool backing_dup_wanted(struct backing *b, pid_t pid, uint64_t addr, bool take)
{
	return b->evicts && wset_dup_wanted(b->wset, pid, addr, now_ms(), take);
}

bool backing_remote_known(struct backing *b, const struct cid *id)
{
	struct remote_id r;
	bool known;

	pthread_mutex_lock(&b->lock);
	known = remote_known(b, id, &r) && remote_usable(b, r.rem, r.n, r.learned_ms);
	pthread_mutex_unlock(&b->lock);
	return known;
}

void backing_note_dontcopy(struct backing *b, pid_t pid)
{
	struct mm *m = mm_get(b, pid);

	if (!m)
		return;
	atomic_store(&m->dontcopy, true);
	mm_put(m);
}

/* Forget the ranges older than REMOVED_MS. m->lock held. */
static void removed_expire(struct mm *m, uint64_t now)
{
	unsigned k = 0;

	for (unsigned i = 0; i < m->nremoved; i++)
		if (now - m->removed[i].at_ms < REMOVED_MS)
			m->removed[k++] = m->removed[i];
	m->nremoved = k;
}

void removed_note(struct mm *m, uint64_t start, uint64_t end)
{
	uint64_t now = now_ms();
	struct removed *r;

	removed_expire(m, now);
	if (m->nremoved == REMOVED_MAX) {
		/* Too many at once: the newest covers the last one's too. */
		r = &m->removed[m->nremoved - 1];
		r->start = start < r->start ? start : r->start;
		r->end = end > r->end ? end : r->end;
		r->at_ms = now;
		return;
	}
	m->removed[m->nremoved++] = (struct removed){ start, end, now };
}

bool removed_covers(struct mm *m, uint64_t addr)
{
	removed_expire(m, now_ms());
	for (unsigned i = 0; i < m->nremoved; i++)
		if (addr >= m->removed[i].start && addr < m->removed[i].end)
			return true;
	return false;
}
