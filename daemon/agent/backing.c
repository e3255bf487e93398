/*
 * backing - see backing.h; backing_int.h names the files it is made of,
 * its threads and its lock order.
 *
 * This file holds the struct's making and unmaking: create (tables,
 * /dev/userfaultfd and its features, the socket, the threads, the loop's
 * handles, each step undone in reverse on failure), and destroy: the
 * threads stop, then every backed page is brought back while the
 * userfaultfds are still open (without the agent a missing page would
 * read as zeroes), then the loop's handles close.
 */
#include "backing_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sys/eventfd.h>
#include <sys/socket.h>

#include "log.h"
#include "uffd.h"
#include "util.h"

static const double lat_bounds[12] = { 5e-6,   10e-6, 20e-6, 50e-6, 100e-6, 200e-6,
				       500e-6, 1e-3,  2e-3,  5e-3,  10e-3,  100e-3 };

void backing_set_hooks(struct backing *b, void (*attached)(void *arg, pid_t pid, bool merge_all),
		       void (*detached)(void *arg, pid_t pid), void *arg)
{
	b->attached = attached;
	b->detached = detached;
	b->hook_arg = arg;
}

bool backing_faults_of(struct backing *b, pid_t pid, uint64_t *refaults, uint64_t *ns,
		       uint32_t *ppm)
{
	struct wset_proc p;
	uint64_t wall;
	double share;

	if (!b || !wset_proc(b->wset, pid, &p))
		return false;
	wall = (now_ms() - p.first_ms) * 1000000ull;
	*refaults = p.refaults;
	*ns = p.fault_ns;
	share = wall ? (double)p.fault_ns * 1e6 / (double)wall : 0;
	*ppm = share < 1e6 ? (uint32_t)share : 1000000u;
	return true;
}

/* ---- set-up ---------------------------------------------------------------------- */

static int register_metrics(struct backing *b, struct metrics *reg)
{
	static const char lat_help[] = "Time to bring back one backed page, in seconds.";
#define FAULTS	    "cksm_faults_total"
#define FAULTS_HELP "Pages brought back on touch, by source (fresh: never backed)."
#define BACKED	    "cksm_pages_backed"
#define BACKED_HELP "Pages of attached processes dropped and backed, by what backs them."
#define HELD	    "cksm_evictions_held_total"
#define HELD_HELP \
	"Pages offered for eviction and held back: a region's sample watched, a hot region, a process out of fault budget."
#define REGIONS	     "cksm_wset_regions"
#define REGIONS_HELP "Regions (2 MiB of a process) whose refaults are followed, by state."
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
		METRIC_C(b->m_remote_deferred, "cksm_remote_reads_deferred_total",
			 "Replicas not asked because their holder hung or failed lately."),
		METRIC_C(b->m_remote_waits, "cksm_remote_fault_waits_total",
			 "Faults that found no replica answering and waited to ask again."),
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
		METRIC_G(
			b->m_waiting, "cksm_processes_waiting",
			"Processes an earlier agent served that have not come back to this one (their faults wait)."),
		METRIC_C(
			b->m_resumed, "cksm_resumed_total",
			"Processes and fork children that came back with their userfaultfds after an agent's end."),
		METRIC_C(b->m_gave_way, "cksm_local_handshakes_displaced_total",
			 "Local connections still in the handshake that gave way to newer ones."),
		METRIC_C(
			b->m_pinned, "cksm_evictions_refused_pinned_total",
			"Pages the kernel refused to move out: pinned for a device, or shared with a fork child."),
		METRIC_C(
			b->m_unkept, "cksm_zaps_unkept_total",
			"Zaps a process answered as done without dropping the page (its evictions stop)."),
		METRIC_C(
			b->m_refused, "cksm_attach_refused_total",
			"Processes refused at attach: not root, not in socket_group, nor let by attach_any_user."),
		METRIC_CL(b->m_held[WSET_WAIT], HELD, HELD_HELP, "reason=\"sampling\""),
		METRIC_CL(b->m_held[WSET_HOT_REGION], HELD, HELD_HELP, "reason=\"hot\""),
		METRIC_CL(b->m_held[WSET_NO_BUDGET], HELD, HELD_HELP, "reason=\"budget\""),
		{ &b->m_regions[WSET_NEW], METRIC_GAUGE, REGIONS, REGIONS_HELP, "state=\"new\"" },
		{ &b->m_regions[WSET_SAMPLING], METRIC_GAUGE, REGIONS, REGIONS_HELP,
		  "state=\"sampling\"" },
		{ &b->m_regions[WSET_OPEN], METRIC_GAUGE, REGIONS, REGIONS_HELP, "state=\"open\"" },
		{ &b->m_regions[WSET_HOT], METRIC_GAUGE, REGIONS, REGIONS_HELP, "state=\"hot\"" },
		METRIC_C(
			b->m_broke, "cksm_fault_budget_exhausted_total",
			"Times a process spent its share of time in faults (fault_budget_pct): its eviction stops until earned back."),
	};
#undef FAULTS
#undef FAULTS_HELP
#undef BACKED
#undef BACKED_HELP
#undef HELD
#undef HELD_HELP
#undef REGIONS
#undef REGIONS_HELP

	if (metrics_register(reg, defs, sizeof(defs) / sizeof(defs[0])))
		return -ENOMEM;
	b->m_lat = metrics_histogram(reg, "cksm_fault_seconds", lat_help, lat_bounds, 12);
	return b->m_lat ? 0 : -ENOMEM;
}

/* The tables and the readers, all or nothing. */
static int alloc_tables(struct backing *b)
{
	struct wset_cfg wc = { .off = !b->cfg->wset,
			       .regions = b->cfg->wset_regions,
			       .sample_pages = b->cfg->wset_sample_pages,
			       .sample_ms = b->cfg->wset_sample_ms,
			       .fault_budget_pct = b->cfg->fault_budget_pct };

	b->wset = wset_create(&wc);
	b->offers = calloc(OFFER_MAX, sizeof(*b->offers));
	b->refs = calloc(pool_slots(b->pool), sizeof(*b->refs));
	b->ref_pos = calloc(pool_slots(b->pool), sizeof(*b->ref_pos));
	b->remote = calloc(REMOTE_IDS, sizeof(*b->remote));
	backing_set_dup_idle(b, b->cfg->dup_idle_millisecs);
	oaidx_init(&b->holder_ix);
	b->rrefs = rrefs_create();
	if (!b->wset || !b->offers || !b->refs || !b->ref_pos || !b->remote || !b->rrefs)
		return -ENOMEM;
	b->fault_tr = b->tk->reader(b->cfg, b->key);
	b->evict_tr = b->fault_tr ? b->tk->reader(b->cfg, b->key) : NULL;
	return b->evict_tr ? 0 : -ENOMEM;
}

static void free_tables(struct backing *b)
{
	transport_destroy(b->fault_tr);
	transport_destroy(b->evict_tr);
	remote_fini(b);
	rrefs_destroy(b->rrefs);
	wset_destroy(b->wset);
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
	got = uffd_features(b->devfd,
			    UFFD_FEATURES_NEEDED | UFFD_FEATURE_POISON | UFFD_FEATURE_MOVE);
	if ((got & UFFD_FEATURES_NEEDED) != UFFD_FEATURES_NEEDED) {
		log_error(
			"this kernel's userfaultfd lacks events or write-protection (processes cannot attach)");
		close(b->devfd);
		b->devfd = -1;
		return -ENOTSUP;
	}
	if (!strcmp(b->cfg->evict_with, "zap"))
		got &= ~(uint64_t)UFFD_FEATURE_MOVE;
	else if (!strcmp(b->cfg->evict_with, "move") && !(got & UFFD_FEATURE_MOVE)) {
		log_error(
			"evict_with = move, and this kernel's userfaultfd cannot move pages (Linux 6.8 and later)");
		close(b->devfd);
		b->devfd = -1;
		return -ENOTSUP;
	}
	b->features = got;
	b->evicts = b->cfg->evict;
	if (!b->evicts)
		log_info("eviction is off ([agent] evict = 0)");
	else if (got & UFFD_FEATURE_MOVE)
		log_info(
			"evicted pages leave processes by UFFDIO_MOVE (libcksm moves them; the kernel refuses pinned ones)");
	else if (!strcmp(b->cfg->evict_with, "zap"))
		log_warn(
			"evicted pages leave processes by libcksm's madvise (evict_with = zap), which cannot see a page pinned for a device (an O_DIRECT read under way, an io_uring buffer): what a device writes into one is lost (operations.md, \"Limits of eviction\")");
	else {
		b->evicts = false;
		log_warn(
			"eviction is off: this kernel's userfaultfd cannot move pages (Linux 6.8 and later), and a drop cannot see a page pinned for a device; evict_with = zap evicts all the same (operations.md, \"Limits of eviction\")");
	}
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
			       struct pool *pool, int state_fd, const struct cid_domain *domains,
			       const struct transport_kind *tk, const struct auth_key *key)
{
	struct backing *b = calloc(1, sizeof(*b));
	size_t freed;

	if (!b)
		return NULL;
	b->cfg = cfg;
	b->loop = loop;
	b->pool = pool;
	b->state_fd = state_fd;
	/* Zap tokens of a killed agent's evictions are told apart from this one's. */
	b->next_token = clock_ns(CLOCK_REALTIME);
	b->domains = domains;
	b->tk = tk;
	b->key = key;
	b->listen_fd = b->devfd = b->wake_fd = -1;
	pthread_mutex_init(&b->lock, NULL);
	pthread_mutex_init(&b->refs_lock, NULL);
	pthread_cond_init(&b->offer_cond, NULL);
	if (alloc_tables(b) || register_metrics(b, reg))
		goto free_tables;
	keep_holders_load(b);
	keep_load_all(b);
	freed = pool_settle(pool);
	if (freed)
		log_info("freed %zu pool slots that nothing holds or uses", freed);
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
	ksm_manage_start(b);
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

/* What bringing the pages back came to. */
struct restored {
	size_t done, poisoned, failed, waiting;
};

/*
 * One pass over m's table: copy back what can be. The page of an
 * eviction whose zap was not answered stays (see below). A remote page whose
 * replicas cannot be read now stays in the table, kept for the next
 * agent: its holder is likely stopping too (an upgrade), and comes back
 * with its pool. A page of this node's pool whose slot is gone cannot
 * come back from anywhere: it is poisoned where the kernel can (whoever
 * touches it gets SIGBUS), never left to read as zeroes. Entries whose
 * copy met a changing mm (EAGAIN) stay, counted in *again. *remote_ok
 * goes false at the first remote page that cannot be read: holders that
 * do not answer now will not later, so the rest are not waited for.
 */
static void restore_pass(struct backing *b, struct mm *m, bool *remote_ok, struct restored *r,
			 size_t *again)
{
	static uint8_t page[PAGE] __attribute__((aligned(PAGE)));

	for (size_t i = 0; i < m->tab.n;) {
		struct bentry *e = &m->tab.e[i];
		uint64_t addr = e->page << 12;
		const void *bytes = zero_page;
		int rc;

		if (addr == m->st->evicting && !m->zap_done) {
			/* Its zap went unanswered: the process may still drop
			 * the page after it was brought back, with no agent to
			 * see it. It stays kept, its range watched, for the
			 * next agent, which settles it (evict_resume). */
			r->waiting++;
			i++;
			continue;
		}
		if (e->kind == BACKED_POOL)
			bytes = pool_page(b->pool, e->ref, NULL);
		else if (e->kind == BACKED_REMOTE)
			bytes = *remote_ok && remote_fetch(b, b->fault_tr, e->rem, e->nrem, &e->id,
							   page, false) >= 0
					? page
					: NULL;
		if (e->kind == BACKED_REMOTE && !bytes) {
			*remote_ok = false;
			r->waiting++;
			i++;
			continue;
		}
		rc = bytes ? uffd_copy(m->uffd, addr, bytes) : -ESTALE;
		if (rc == -ESTALE && (b->features & UFFD_FEATURE_POISON))
			rc = uffd_poison(m->uffd, addr) == 0 ? -EHWPOISON : -ESTALE;
		if (rc == -EAGAIN) {
			(*again)++;
			i++;
			continue;
		}
		if (rc && rc != -EHWPOISON && rc != -ESRCH && rc != -ENOENT && rc != -EEXIST) {
			r->failed++; /* kept: the next agent tries again */
			i++;
			continue;
		}
		if (rc == -EHWPOISON)
			r->poisoned++;
		else
			r->done++;
		entry_release(m, e); /* i holds the last entry now */
	}
}

/* Bring back every page of m that can be; count the rest in r. */
static void restore_mm(struct backing *b, struct mm *m, struct restored *r)
{
	bool remote_ok = true;

	if (!m->tab.n || uffd_mm_gone(m->uffd))
		return; /* nothing backed, or nobody left to read it */
	/* Events the process caused meanwhile make copies fail with EAGAIN
	 * until they are read: read them, and go again. */
	for (int round = 0; m->tab.n && round < 100; round++) {
		size_t again = 0, waiting = r->waiting;

		pthread_mutex_lock(&m->lock);
		restore_pass(b, m, &remote_ok, r, &again);
		pthread_mutex_unlock(&m->lock);
		if (!again)
			break;
		r->waiting = waiting; /* counted again in the next pass */
		drain_uffd(m);
		usleep(1000);
	}
}

/*
 * Every page of m is home: its ranges are unregistered, so that the
 * userfaultfd the process keeps (libcksm) holds no fault up once the
 * agent is gone. Poisoned pages stay poisoned.
 */
static void unregister_all(struct mm *m)
{
	char path[64], line[512];
	FILE *f;

	if (!m->pid || uffd_mm_gone(m->uffd))
		return; /* a fork child not re-attached: the agent holds its only descriptor */
	snprintf(path, sizeof(path), "/proc/%d/maps", (int)m->pid);
	f = fopen(path, "re");
	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		unsigned long long s, e;

		if (sscanf(line, "%llx-%llx", &s, &e) == 2)
			uffd_unregister(m->uffd, s, e); /* not every mapping can be registered */
	}
	fclose(f);
}

/* Every page of m that can come home does; with all home, its ranges go. */
static void home(struct backing *b, struct mm *m, struct restored *r)
{
	restore_mm(b, m, r);
	if (!m->tab.n)
		unregister_all(m);
}

size_t bring_home(struct backing *b, struct mm *m)
{
	struct restored r = { 0 };

	home(b, m, &r);
	log_info("process %d: %zu backed pages brought home, %zu poisoned, %zu left", (int)m->pid,
		 r.done, r.poisoned, m->tab.n);
	return m->tab.n;
}

static void restore_all(struct backing *b)
{
	struct restored r = { 0 };
	struct mm *done = NULL;

	/* A fork read meanwhile puts its child at the list's head: the walk
	 * goes again over what came in before the last head. */
	for (;;) {
		struct mm *head = b->mms;

		for (struct mm *m = head; m && m != done; m = m->next)
			home(b, m, &r);
		if (b->mms == head)
			break;
		done = head;
	}
	if (r.failed || r.poisoned)
		log_error(
			"brought back %zu backed pages before stopping; %zu could not be and were poisoned (SIGBUS when touched), %zu could not be copied and wait for the next agent",
			r.done, r.poisoned, r.failed);
	else if (r.done)
		log_info("brought back %zu backed pages before stopping", r.done);
	if (r.waiting)
		log_warn(
			"%zu backed pages whose holders do not answer now, or whose zap was not answered, wait for the next agent (kept in %s)",
			r.waiting, b->cfg->state_dir);
}

/* The threads, in order: the evictor, then the fault thread. */
static void stop_threads(struct backing *b)
{
	struct timespec until;

	/* No zap is run from now on: a process drops the zaps still queued
	 * for it once it sees the agent's end closed (libcksm), so none can
	 * drop a page after it was brought back. The evictor goes next: the
	 * eviction under way may finish (its process answering and the fault
	 * thread reading the removal) for a second; after that its waits give
	 * up and the entry stays. */
	pthread_mutex_lock(&b->lock);
	for (struct mm *m = b->mms; m; m = m->next)
		if (m->sock >= 0 && !m->orphan)
			shutdown(m->sock, SHUT_WR);
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

size_t backing_waiting(const struct backing *b)
{
	size_t n = 0;

	for (const struct mm *w = b->waiting; w; w = w->wnext)
		n++;
	return n;
}

void backing_destroy(struct backing *b)
{
	if (!b)
		return;
	stop_threads(b);
	restore_all(b);
	ksm_manage_stop(b);
	/* Processes that never came back keep their tables for the next agent. */
	while (b->waiting) {
		struct mm *w = b->waiting;

		b->waiting = w->wnext;
		mm_put(w);
	}
	/* The backing's own handle closes first, so that its callback runs
	 * after every mm's, which still use b. */
	attach_stop(b, on_backing_closed);
}

double backing_saved_bytes(const struct backing *b)
{
	return metric_value(b->m_saved);
}
