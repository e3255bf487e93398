/*
 * backing - see backing.h; backing_int.h names the files it is made of,
 * its threads and its lock order.
 *
 * This file holds what they share: the struct, create and destroy, an
 * mm's lifetime (reference-counted, on the list while served), the
 * accounting of backed-page entries, the reference changes the agent
 * sends the shards, and, at stop, bringing every backed page back while
 * the userfaultfds are still open (without the agent a missing page
 * would read as zeroes).
 */
#include "backing_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sys/eventfd.h>

#include "log.h"
#include "uffd.h"
#include "util.h"

static const double lat_bounds[12] = { 5e-6,   10e-6, 20e-6, 50e-6, 100e-6, 200e-6,
				       500e-6, 1e-3,  2e-3,  5e-3,  10e-3,  100e-3 };

/* ---- reference changes for the coordinator --------------------------------- */

/*
 * This node's references on one of its own slots changed: mark it, to send
 * the slot's count (pool_refs) at the next flush.
 */
static void slot_changed(struct backing *b, struct pool_ref ref, const struct cid *id)
{
	int32_t pos;

	if (ref.slot >= pool_slots(b->pool))
		return;
	pthread_mutex_lock(&b->refs_lock);
	pos = b->ref_pos[ref.slot];
	if (pos && b->refs[pos - 1].ref.gen != ref.gen)
		pos = 0; /* an older generation's change: keep both */
	if (!pos && b->nrefs < pool_slots(b->pool)) {
		b->refs[b->nrefs] = (struct ref_count){ ref, *id, 0, 0 };
		b->ref_pos[ref.slot] = (int32_t)++b->nrefs;
	}
	pthread_mutex_unlock(&b->refs_lock);
}

/* Our references on another node's dup changed by d. */
static void rref_changed(struct backing *b, const struct rdup *r, const struct cid *id, int32_t d)
{
	if (rrefs_change(b->rrefs, r, id, d))
		log_error("out of memory counting references on remote dups");
}

void backing_refs_unsent(struct backing *b, const struct ref_count *r)
{
	struct rdup d = { r->node, r->ref.slot, r->ref.gen };

	if (!r->node)
		slot_changed(b, r->ref, &r->id);
	else
		rrefs_unsent(b->rrefs, &d);
}

static void mark_slot(void *arg, struct pool_ref ref, const struct cid *id, bool held,
		      uint32_t refs)
{
	if (held || refs)
		slot_changed(arg, ref, id);
}

void backing_refs_all_dirty(struct backing *b)
{
	rrefs_all_dirty(b->rrefs);
	pool_foreach(b->pool, mark_slot, b);
}

void backing_foreach_rref(struct backing *b, rrefs_fn fn, void *arg)
{
	rrefs_foreach(b->rrefs, fn, arg);
}

size_t backing_take_refs(struct backing *b, struct ref_count *out, size_t max)
{
	size_t n = rrefs_take(b->rrefs, out, max);

	pthread_mutex_lock(&b->refs_lock);
	while (b->nrefs && n < max) {
		struct ref_count *r = &b->refs[--b->nrefs];

		if (b->ref_pos[r->ref.slot] == (int32_t)b->nrefs + 1)
			b->ref_pos[r->ref.slot] = 0;
		out[n++] = *r; /* changed, even if back where it was */
	}
	pthread_mutex_unlock(&b->refs_lock);
	return n;
}

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
		slot_changed(b, e->ref, &e->id);
	else if (e->kind == BACKED_REMOTE)
		rref_changed(b, &e->rem[0], &e->id, 1);
	metric_gauge_add(backed_gauge(b, e), 1);
	metric_gauge_add(b->m_saved, PAGE);
}

void entry_uncount(struct backing *b, const struct bentry *e)
{
	if (e->kind == BACKED_POOL) {
		pool_ref(b->pool, e->ref, -1);
		slot_changed(b, e->ref, &e->id);
	} else if (e->kind == BACKED_REMOTE) {
		rref_changed(b, &e->rem[0], &e->id, -1);
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
	btab_init(&m->tab);
	pthread_mutex_init(&m->lock, NULL);
	pthread_cond_init(&m->cond, NULL);
	return m;
}

void mm_put(struct mm *m)
{
	if (atomic_fetch_sub(&m->refs, 1) != 1)
		return;
	pthread_mutex_lock(&m->lock);
	drop_range(m, 0, UINT64_MAX);
	pthread_mutex_unlock(&m->lock);
	btab_fini(&m->tab);
	free(m->retry);
	if (m->uffd >= 0)
		close(m->uffd);
	if (m->sock >= 0)
		close(m->sock);
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
	if (found)
		list_del_done(b, m);
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

bool backing_attached(struct backing *b, pid_t pid)
{
	struct mm *m = mm_get(b, pid);

	if (m)
		mm_put(m);
	return m != NULL;
}

void backing_set_hooks(struct backing *b, void (*attached)(void *arg, pid_t pid, bool merge_all),
		       void (*detached)(void *arg, pid_t pid), void *arg)
{
	b->attached = attached;
	b->detached = detached;
	b->hook_arg = arg;
}

/* ---- set-up ---------------------------------------------------------------------- */

static int register_metrics(struct backing *b, struct metrics *reg)
{
	static const char lat_help[] = "Time to bring back one backed page, in seconds.";
#define FAULTS	    "cksm_faults_total"
#define FAULTS_HELP "Pages brought back on touch, by source (fresh: never backed)."
#define BACKED	    "cksm_pages_backed"
#define BACKED_HELP "Pages of attached processes dropped and backed, by what backs them."
	const struct metric_def defs[] = {
		METRIC_G(b->m_attached, "cksm_attached_processes",
			 "Address spaces served (libcksm processes and their fork children)."),
		{ &b->m_backed_zero, METRIC_GAUGE, BACKED, BACKED_HELP, "source=\"zero\"" },
		{ &b->m_backed_local, METRIC_GAUGE, BACKED, BACKED_HELP, "source=\"local\"" },
		METRIC_G(b->m_saved, "cksm_saved_bytes", "Memory the backed pages no longer use."),
		METRIC_C(b->m_evicted, "cksm_evictions_total", "Pages dropped from processes."),
		METRIC_C(b->m_aborted, "cksm_evictions_aborted_total",
			 "Evictions abandoned (the page changed, moved, or the process went)."),
		METRIC_CL(b->m_faults_zero, FAULTS, FAULTS_HELP, "source=\"zero\""),
		METRIC_CL(b->m_faults_local, FAULTS, FAULTS_HELP, "source=\"local\""),
		METRIC_CL(b->m_faults_fresh, FAULTS, FAULTS_HELP, "source=\"fresh\""),
		METRIC_CL(b->m_faults_remote, FAULTS, FAULTS_HELP, "source=\"remote\""),
		{ &b->m_backed_remote, METRIC_GAUGE, BACKED, BACKED_HELP, "source=\"remote\"" },
		METRIC_C(
			b->m_remote_errors, "cksm_remote_read_errors_total",
			"Reads of remote dups that failed or brought other bytes than the content's."),
		METRIC_C(
			b->m_sigbus, "cksm_sigbus_total",
			"Backed pages that could not be brought back: the thread got SIGBUS. Alarm if not 0."),
		METRIC_C(b->m_forks, "cksm_forks_total", "Forks of attached processes followed."),
		METRIC_C(b->m_reattached, "cksm_reattached_total",
			 "Forked children that attached again (their pages can be evicted)."),
		METRIC_C(b->m_ksm_windows, "cksm_ksm_windows_total",
			 "Windows of hot duplicates handed to the kernel's KSM."),
		METRIC_G(
			b->m_parked, "cksm_evictions_parked",
			"Evictions waiting for a process that has not answered its zap (stopped?)."),
		METRIC_C(b->m_offers_dropped, "cksm_eviction_offers_dropped_total",
			 "Pages offered for eviction while the queue was full."),
	};
#undef FAULTS
#undef FAULTS_HELP
#undef BACKED
#undef BACKED_HELP

	if (metrics_register(reg, defs, sizeof(defs) / sizeof(defs[0])))
		return -ENOMEM;
	b->m_lat = metrics_histogram(reg, "cksm_fault_seconds", lat_help, lat_bounds, 12);
	return b->m_lat ? 0 : -ENOMEM;
}

/* The tables and the readers, all or nothing. */
static int alloc_tables(struct backing *b)
{
	b->offers = calloc(OFFER_MAX, sizeof(*b->offers));
	b->refs = calloc(pool_slots(b->pool), sizeof(*b->refs));
	b->ref_pos = calloc(pool_slots(b->pool), sizeof(*b->ref_pos));
	b->remote = calloc(REMOTE_IDS, sizeof(*b->remote));
	b->rrefs = rrefs_create();
	if (!b->offers || !b->refs || !b->ref_pos || !b->remote || !b->rrefs)
		return -ENOMEM;
	b->fault_tr = b->tk->reader(b->cfg, b->key);
	b->evict_tr = b->fault_tr ? b->tk->reader(b->cfg, b->key) : NULL;
	return b->evict_tr ? 0 : -ENOMEM;
}

static void free_tables(struct backing *b)
{
	transport_destroy(b->fault_tr);
	transport_destroy(b->evict_tr);
	rrefs_destroy(b->rrefs);
	free(b->remote);
	free(b->ref_pos);
	free(b->refs);
	free(b->offers);
}

/* /dev/userfaultfd, and what this kernel's userfaultfd offers. */
static int open_uffd_dev(struct backing *b)
{
	uint64_t got;

	b->devfd = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
	if (b->devfd < 0) {
		log_error("cannot open /dev/userfaultfd: %s (processes cannot attach)",
			  strerror(errno));
		return -errno;
	}
	got = uffd_features(b->devfd, UFFD_FEATURES_NEEDED | UFFD_FEATURE_POISON);
	if ((got & UFFD_FEATURES_NEEDED) != UFFD_FEATURES_NEEDED) {
		log_error(
			"this kernel's userfaultfd lacks events or write-protection (processes cannot attach)");
		close(b->devfd);
		b->devfd = -1;
		return -ENOTSUP;
	}
	b->features = got;
	return 0;
}

/* The fault and eviction threads; both or neither. */
static int start_threads(struct backing *b)
{
	if (pthread_create(&b->fault_thread, NULL, fault_main, b))
		goto err;
	if (pthread_create(&b->evict_thread, NULL, evict_main, b))
		goto stop_fault;
	return 0;
stop_fault:
	pthread_mutex_lock(&b->lock);
	b->stop = true;
	pthread_mutex_unlock(&b->lock);
	wake_faults(b);
	pthread_join(b->fault_thread, NULL);
err:
	log_error("cannot start the fault and eviction threads");
	return -EAGAIN;
}

struct backing *backing_create(const struct config *cfg, uv_loop_t *loop, struct metrics *reg,
			       struct pool *pool, const struct cid_domain *domains,
			       const struct transport_kind *tk, const struct auth_key *key)
{
	struct backing *b = calloc(1, sizeof(*b));

	if (!b)
		return NULL;
	b->cfg = cfg;
	b->loop = loop;
	b->pool = pool;
	b->domains = domains;
	b->tk = tk;
	b->key = key;
	b->listen_fd = b->devfd = b->wake_fd = -1;
	pthread_mutex_init(&b->lock, NULL);
	pthread_mutex_init(&b->refs_lock, NULL);
	pthread_cond_init(&b->offer_cond, NULL);
	if (alloc_tables(b) || register_metrics(b, reg))
		goto free_tables;
	if (open_uffd_dev(b))
		goto free_tables;
	b->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (b->wake_fd < 0)
		goto close_dev;
	if (attach_listen(b))
		goto close_wake;
	/* The threads first: a failure after the loop's handles are in
	 * would leave them pointing into freed memory. */
	if (start_threads(b))
		goto close_listen;
	attach_start(b);
	log_info("processes attach at %s (page pool of %zu slots)", cfg->socket_path,
		 pool_slots(pool));
	return b;
close_listen:
	attach_unlisten(b);
close_wake:
	close(b->wake_fd);
close_dev:
	close(b->devfd);
free_tables:
	free_tables(b);
	pthread_cond_destroy(&b->offer_cond);
	pthread_mutex_destroy(&b->refs_lock);
	pthread_mutex_destroy(&b->lock);
	free(b);
	return NULL;
}

/* The last of the loop's handles closed: nothing uses b any more. */
static void on_backing_closed(uv_handle_t *h)
{
	struct backing *b = h->data;

	free_tables(b);
	close(b->wake_fd);
	close(b->devfd);
	pthread_cond_destroy(&b->offer_cond);
	pthread_mutex_destroy(&b->refs_lock);
	pthread_mutex_destroy(&b->lock);
	free(b);
}

/* ---- bringing pages back at stop --------------------------------------------- */

/*
 * One pass over m's table: copy back what can be; entries whose copy
 * met a changing mm (EAGAIN) stay, counted in *again. *remote_ok goes
 * false at the first remote page that cannot be read: holders that do
 * not answer now will not later, so the rest are not waited for.
 */
static void restore_pass(struct backing *b, struct mm *m, bool *remote_ok, size_t *done,
			 size_t *failed, size_t *again)
{
	static uint8_t page[PAGE] __attribute__((aligned(PAGE)));
	static const uint8_t zeroes[PAGE] __attribute__((aligned(PAGE)));

	for (size_t i = 0; i < m->tab.n;) {
		struct bentry *e = &m->tab.e[i];
		const void *bytes = zeroes;
		int rc;

		if (e->kind == BACKED_POOL)
			bytes = pool_page(b->pool, e->ref, NULL);
		else if (e->kind == BACKED_REMOTE)
			bytes = *remote_ok && remote_fetch(b, b->fault_tr, e->rem, e->nrem, &e->id,
							   page) >= 0
					? page
					: NULL;
		if (e->kind == BACKED_REMOTE && !bytes)
			*remote_ok = false;
		rc = bytes ? uffd_copy(m->uffd, e->page << 12, bytes) : -ESTALE;
		if (rc == -EAGAIN) {
			(*again)++;
			i++;
			continue;
		}
		if (rc && rc != -ESRCH && rc != -ENOENT)
			(*failed)++;
		else
			(*done)++;
		entry_release(m, e); /* i holds the last entry now */
	}
}

static void restore_all(struct backing *b)
{
	size_t done = 0, failed = 0;

	for (struct mm *m = b->mms; m; m = m->next) {
		bool remote_ok = true;

		if (!m->tab.n || uffd_mm_gone(m->uffd))
			continue; /* nothing backed, or nobody left to read it */
		/* Events the process caused meanwhile make copies fail with
		 * EAGAIN until they are read: read them, and go again. */
		for (int round = 0; m->tab.n && round < 100; round++) {
			size_t again = 0;

			pthread_mutex_lock(&m->lock);
			restore_pass(b, m, &remote_ok, &done, &failed, &again);
			pthread_mutex_unlock(&m->lock);
			if (!again)
				break;
			drain_uffd(m);
			usleep(1000);
		}
		failed += m->tab.n;
	}
	if (failed)
		log_error(
			"brought back %zu backed pages before stopping; %zu could not be and will read as zeroes",
			done, failed);
	else if (done)
		log_info("brought back %zu backed pages before stopping", done);
}

/* The threads, in order: the evictor, then the fault thread. */
static void stop_threads(struct backing *b)
{
	struct timespec until;

	/* The evictor first: the eviction under way may finish (its process
	 * answering and the fault thread reading the removal) for a second;
	 * after that its waits give up and the entry stays. */
	pthread_mutex_lock(&b->lock);
	b->stop_evicting = true;
	pthread_cond_broadcast(&b->offer_cond);
	pthread_mutex_unlock(&b->lock);
	until = deadline_after(CLOCK_REALTIME, 1000);
	if (pthread_timedjoin_np(b->evict_thread, NULL, &until)) {
		atomic_store(&b->stopping, true);
		pthread_join(b->evict_thread, NULL);
	}
	atomic_store(&b->stopping, true);
	pthread_mutex_lock(&b->lock);
	b->stop = true;
	pthread_mutex_unlock(&b->lock);
	wake_faults(b);
	pthread_join(b->fault_thread, NULL);
}

void backing_destroy(struct backing *b)
{
	if (!b)
		return;
	stop_threads(b);
	restore_all(b);
	/* The backing's own handle closes first, so that its callback runs
	 * after every mm's, which still use b. */
	attach_stop(b, on_backing_closed);
}
