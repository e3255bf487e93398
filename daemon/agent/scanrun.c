/*
 * scanrun - see scanrun.h.
 *
 * Threads: the scanner thread owns the scanner and its targets; the loop
 * thread owns the connections. They share only the queues, the census of
 * the last full scan, the rereport and stop flags, all under lock, and the
 * metrics (atomics). The
 * scanner thread sleeps on cond between batches, so a stop is noticed
 * within one batch.
 */
#include "scanrun.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cid.h"
#include "log.h"
#include "scan.h"
#include "target.h"
#include "usage.h"
#include "util.h"
#include "backing.h"

#define ANSWERS_MAX (1u << 18) /* answered pages waiting for the scanner */

struct scanrun {
	const struct config *cfg;
	struct targets targets;
	struct cid_domain domains[CONFIG_MAX_DOMAINS];
	struct scanner *scanner;
	uint8_t *owner;	      /* bucket -> shard */
	pid_t dontcopy_pid;   /* the last process noted with MADV_DONTFORK candidates ... */
	uint64_t dontcopy_ns; /* ... and when (scanner thread's) */
	pthread_t thread;
	bool started;
	pthread_mutex_t lock; /* protects the fields below */
	pthread_cond_t cond;
	bool stop;
	bool rereport;
	struct report_queue queues[CONFIG_MAX_SHARDS];
	bool wake_pending;
	struct scanrun_census census[CONFIG_MAX_DOMAINS]; /* last full scan */
	bool census_new;				  /* not taken yet */
	struct scan_answer *answers;			  /* for the scanner thread */
	size_t nanswers, answers_cap;
	struct scan_answer *applying; /* the scanner thread's own, outside the lock */
	size_t applying_cap;
	struct usage usage; /* last full scan */
	bool usage_new;	    /* not taken yet */
	struct attach_change {
		pid_t pid;
		int8_t scope; /* enum target_scope, or -1 to leave */
	} * changes;	      /* for the scanner thread's targets */
	size_t nchanges, changes_cap;
	struct backing *backing; /* set before the thread starts */
	struct pool *pool;
	uv_async_t async; /* wakes the loop thread */
	void (*wake)(void *arg);
	void *wake_arg;
	/* metrics, written by the scanner thread */
	struct metric *m_scanned, *m_full_scans, *m_cpu, *m_reported, *m_deferred;
	struct metric *m_stable, *m_volatile, *m_new, *m_zero, *m_rate, *m_cpu_ratio;
	struct metric *m_targets, *m_state, *m_tracked, *m_queued, *m_shared, *m_thp_kept;
	struct metric *m_answers_dropped;
	struct metric *m_skipped[SKIP_MAX];
	struct metric *m_group[TARGET_MAX_GROUPS][4];
};

/* Scanner thread: queue a stable page's digest for its shard. */
static int on_report(void *arg, const struct scan_page *pg)
{
	struct scanrun *r = arg;
	struct report_entry e = { pg->id.hi, pg->id.lo, pg->addr, pg->pid, cid_domain_of(pg->id),
				  pg->again, pg->stays };
	unsigned shard = r->owner[cid_bucket(pg->id, r->cfg->buckets)];
	bool ok;

	/* A dup is asked for only where the working set would let the page
	 * go: not in a hot region (the kernel's KSM may merge it), and only
	 * the sample of a region not sampled yet. */
	if (!e.stays && r->backing && !backing_dup_wanted(r->backing, pg->pid, pg->addr, true))
		e.stays = true;

	pthread_mutex_lock(&r->lock);
	ok = rq_push(&r->queues[shard], &e);
	pthread_mutex_unlock(&r->lock);
	if (!ok) {
		metric_inc(r->m_deferred);
		return -ENOBUFS;
	}
	metric_inc(r->m_reported);
	return 0;
}

void scanrun_answer(struct scanrun *r, const struct scan_answer *a, size_t n)
{
	size_t dropped = 0;

	pthread_mutex_lock(&r->lock);
	if (r->nanswers + n > r->answers_cap && r->answers_cap < ANSWERS_MAX) {
		size_t cap = r->answers_cap ? r->answers_cap : 4096;
		struct scan_answer *v;

		while (cap < r->nanswers + n && cap < ANSWERS_MAX)
			cap *= 2;
		v = realloc(r->answers, cap * sizeof(*v));
		if (v) {
			r->answers = v;
			r->answers_cap = cap;
		}
	}
	if (r->nanswers + n > r->answers_cap) {
		dropped = r->nanswers + n - r->answers_cap;
		n = r->answers_cap - r->nanswers;
	}
	if (n)
		memcpy(r->answers + r->nanswers, a, n * sizeof(*a));
	r->nanswers += n;
	pthread_mutex_unlock(&r->lock);
	metric_add(r->m_answers_dropped, dropped);
}

/* Scanner thread: mark the pages the shards answered for. */
static void apply_answers(struct scanrun *r)
{
	struct scan_answer *mine;
	size_t n;

	pthread_mutex_lock(&r->lock);
	n = r->nanswers;
	if (n > r->applying_cap) {
		struct scan_answer *v = realloc(r->applying, n * sizeof(*v));

		if (v) {
			r->applying = v;
			r->applying_cap = n;
		} else {
			n = r->applying_cap; /* the rest waits */
		}
	}
	mine = r->applying;
	if (n) {
		memcpy(mine, r->answers, n * sizeof(*mine));
		memmove(r->answers, r->answers + n, (r->nanswers - n) * sizeof(*mine));
		r->nanswers -= n;
	}
	pthread_mutex_unlock(&r->lock);
	for (size_t i = 0; i < n; i++)
		scanner_mark_shared(r->scanner, mine[i].pid, mine[i].addr, mine[i].shared);
}

void scanrun_attach(struct scanrun *r, pid_t pid, int scope)
{
	pthread_mutex_lock(&r->lock);
	/* A process naming range after range changes nothing new; but only
	 * its last change says where it stands (attached, detached, attached
	 * again: a fork child that re-attached, then ran exec). */
	for (size_t i = r->nchanges; i-- > 0;)
		if (r->changes[i].pid == pid) {
			if (r->changes[i].scope != scope)
				break;
			pthread_cond_broadcast(&r->cond);
			pthread_mutex_unlock(&r->lock);
			return;
		}
	if (r->nchanges == r->changes_cap) {
		size_t cap = r->changes_cap ? 2 * r->changes_cap : 16;
		struct attach_change *v = realloc(r->changes, cap * sizeof(*v));

		if (!v) {
			pthread_mutex_unlock(&r->lock);
			log_warn("out of memory: process %d not added to the targets", (int)pid);
			return;
		}
		r->changes = v;
		r->changes_cap = cap;
	}
	r->changes[r->nchanges++] = (struct attach_change){ pid, (int8_t)scope };
	pthread_cond_broadcast(&r->cond); /* a rest between passes ends for it */
	pthread_mutex_unlock(&r->lock);
}

/* Scanner thread: processes that attached or left since the last pass. */
static void apply_changes(struct scanrun *r)
{
	pthread_mutex_lock(&r->lock);
	for (size_t i = 0; i < r->nchanges; i++) {
		if (r->changes[i].scope < 0)
			targets_unregister(&r->targets, r->changes[i].pid);
		else if (targets_register(&r->targets, r->changes[i].pid, 0,
					  (uint8_t)r->changes[i].scope))
			log_warn("out of memory: process %d not added to the targets",
				 (int)r->changes[i].pid);
	}
	r->nchanges = 0;
	pthread_mutex_unlock(&r->lock);
}

/*
 * Scanner thread: a page of a libcksm process that could go. True when it
 * has no dup to go to, here or on another node, and one is worth asking
 * for (its region lets it go).
 */
static bool on_evict(void *arg, const struct scan_page *pg, bool zero)
{
	struct scanrun *r = arg;
	struct pool_ref ref = { 0, 0 };

	if (!r->cfg->domains[pg->domain].evict)
		return false; /* [domain.NAME] evict = 0: nothing of it merges */
	if (pg->dontcopy) {
		/* Once a second per process is plenty: the mark is sticky. */
		uint64_t now = clock_ns(CLOCK_MONOTONIC);

		if (pg->pid != r->dontcopy_pid || now - r->dontcopy_ns > 1000000000ull) {
			backing_note_dontcopy(r->backing, pg->pid);
			r->dontcopy_pid = pg->pid;
			r->dontcopy_ns = now;
		}
	}
	if (zero)
		backing_offer(r->backing, pg->pid, pg->addr, BACKED_ZERO, ref, NULL);
	else if (pool_find(r->pool, &pg->id, r->cfg->max_page_sharing, &ref) == 0)
		backing_offer(r->backing, pg->pid, pg->addr, BACKED_POOL, ref, &pg->id);
	else if (!backing_offer_remote(r->backing, pg->pid, pg->addr, &pg->id))
		return !backing_remote_known(r->backing, &pg->id) &&
		       backing_dup_wanted(r->backing, pg->pid, pg->addr, false);
	return false;
}

void scanrun_set_backing(struct scanrun *r, struct backing *b, struct pool *pool)
{
	r->backing = b;
	r->pool = pool;
	scanner_set_evict(r->scanner, b ? on_evict : NULL, r);
	scanner_evict_dontcopy(r->scanner, b && backing_moves(b));
}

/*
 * Scanner thread: wait ms, or less if stopped; true when stopping. With
 * early, a process that attached ends the wait too (between passes only:
 * the CPU budget's sleeps are not cut short).
 */
static bool wait_ms(struct scanrun *r, uint64_t ms, bool early)
{
	struct timespec until;
	bool stop;

	apply_answers(r);
	until = deadline_after(CLOCK_MONOTONIC, ms);
	pthread_mutex_lock(&r->lock);
	/* Let the loop drain what this batch queued. */
	if (!r->wake_pending) {
		r->wake_pending = true;
		uv_async_send(&r->async);
	}
	while (!r->stop && !(early && r->nchanges) &&
	       pthread_cond_timedwait(&r->cond, &r->lock, &until) != ETIMEDOUT) {
	}
	stop = r->stop;
	pthread_mutex_unlock(&r->lock);
	return stop;
}

static bool on_sleep(void *arg, uint64_t ms)
{
	return wait_ms(arg, ms, false);
}

static void publish(struct scanrun *r, const struct scan_counts *c, uint64_t wall_ns,
		    uint64_t cpu_ns)
{
	metric_add(r->m_scanned, c->scanned);
	metric_inc(r->m_full_scans);
	metric_gauge_add(r->m_cpu, cpu_ns / 1e9);
	metric_set(r->m_stable, (double)c->stable);
	metric_set(r->m_volatile, (double)c->volatile_);
	metric_set(r->m_new, (double)c->fresh);
	metric_set(r->m_zero, (double)c->zero);
	for (int i = 0; i < SKIP_MAX; i++)
		metric_set(r->m_skipped[i], (double)c->skipped[i]);
	metric_set(r->m_rate, wall_ns ? c->scanned * 1e9 / (double)wall_ns : 0);
	metric_set(r->m_cpu_ratio, wall_ns ? (double)cpu_ns / (double)wall_ns : 0);
	metric_set(r->m_targets, (double)scanner_nprocs(r->scanner));
	metric_set(r->m_state, (double)scanner_state_bytes(r->scanner));
	metric_set(r->m_tracked, (double)scanner_tracked_pages(r->scanner));
	metric_set(r->m_shared, (double)c->shared);
	metric_set(r->m_thp_kept, (double)c->thp_kept);
	for (unsigned g = 0; g < r->targets.ngroups; g++) {
		const struct scan_counts *gc = scanner_group_counts(r->scanner, g);

		metric_set(r->m_group[g][0], (double)gc->scanned);
		metric_set(r->m_group[g][1], (double)gc->stable);
		metric_set(r->m_group[g][2], (double)gc->volatile_);
		metric_set(r->m_group[g][3], (double)gc->zero);
	}
}

/*
 * Between passes: at least sleep_millisecs, at least what the CPU budget
 * asks for, and at least the rest of pass_millisecs since the pass began,
 * so a host with little to scan costs next to nothing.
 */
static uint64_t rest_ms(struct scanrun *r, uint64_t pass_start_ns)
{
	uint64_t ms = r->cfg->sleep_millisecs, b = scanner_budget_ms(r->scanner);
	uint64_t took = (clock_ns(CLOCK_MONOTONIC) - pass_start_ns) / 1000000;

	if (b > ms)
		ms = b;
	if (r->cfg->pass_millisecs > took && r->cfg->pass_millisecs - took > ms)
		ms = r->cfg->pass_millisecs - took;
	return ms;
}

/* Scanner thread: hand the pass's census to the loop thread. */
static void keep_census(struct scanrun *r)
{
	pthread_mutex_lock(&r->lock);
	for (unsigned d = 0; d < r->cfg->ndomains; d++) {
		const struct hll *shared = NULL;
		const struct hll *h = scanner_census(r->scanner, d, &r->census[d].stable,
						     &r->census[d].zero, &shared);

		r->census[d].domain = r->cfg->domains[d].id;
		if (h) {
			r->census[d].h = *h;
			r->census[d].shared = *shared;
		}
	}
	r->census_new = true;
	pthread_mutex_unlock(&r->lock);
}

/* Scanner thread: the pass's usage for the loop thread. */
static void keep_usage(struct scanrun *r)
{
	static struct usage u;

	if (usage_collect(&u, r->scanner)) {
		log_warn("out of memory collecting per-process usage");
		return;
	}
	pthread_mutex_lock(&r->lock);
	usage_move(&r->usage, &u);
	r->usage_new = true;
	pthread_mutex_unlock(&r->lock);
}

bool scanrun_take_usage(struct scanrun *r, struct usage *out)
{
	bool got;

	pthread_mutex_lock(&r->lock);
	got = r->usage_new;
	if (got)
		usage_move(out, &r->usage);
	r->usage_new = false;
	pthread_mutex_unlock(&r->lock);
	return got;
}

size_t scanrun_take_census(struct scanrun *r, struct scanrun_census *out)
{
	size_t n = 0;

	pthread_mutex_lock(&r->lock);
	if (r->census_new) {
		n = r->cfg->ndomains;
		memcpy(out, r->census, n * sizeof(*out));
		r->census_new = false;
	}
	pthread_mutex_unlock(&r->lock);
	return n;
}

static void *scan_thread(void *arg)
{
	struct scanrun *r = arg;
	struct scan_counts c;
	uint64_t last_rereport = clock_ns(CLOCK_MONOTONIC);

	for (;;) {
		uint64_t wall0 = clock_ns(CLOCK_MONOTONIC),
			 cpu0 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
		bool fresh, periodic = false;
		int rc;

		pthread_mutex_lock(&r->lock);
		fresh = r->rereport;
		r->rereport = false;
		pthread_mutex_unlock(&r->lock);
		/* Shards forget first sightings as their unstable filters age:
		 * offer stable pages again every rereport_millisecs, as ksmd
		 * refills its unstable tree on every scan. */
		if (wall0 - last_rereport >= (uint64_t)r->cfg->rereport_millisecs * 1000000) {
			periodic = true;
			last_rereport = wall0;
		}
		if (fresh || periodic)
			scanner_rereport(r->scanner, fresh);
		apply_changes(r);
		rc = scanner_pass(r->scanner, &c);
		if (rc == -EINTR)
			break;
		if (rc)
			log_warn("scan pass failed: %s", strerror(-rc));
		else {
			publish(r, &c, clock_ns(CLOCK_MONOTONIC) - wall0,
				clock_ns(CLOCK_THREAD_CPUTIME_ID) - cpu0);
			keep_census(r);
			apply_answers(r);
			keep_usage(r);
		}
		if (wait_ms(r, rest_ms(r, wall0), true))
			break;
		scanner_rested(r->scanner);
	}
	return NULL;
}

static void on_async(uv_async_t *h)
{
	struct scanrun *r = h->data;

	pthread_mutex_lock(&r->lock);
	r->wake_pending = false;
	pthread_mutex_unlock(&r->lock);
	r->wake(r->wake_arg);
}

size_t scanrun_take(struct scanrun *r, unsigned shard, struct report_entry *out, size_t max)
{
	size_t n;

	pthread_mutex_lock(&r->lock);
	n = rq_pop(&r->queues[shard], out, max);
	pthread_mutex_unlock(&r->lock);
	return n;
}

void scanrun_rereport(struct scanrun *r, unsigned shard)
{
	pthread_mutex_lock(&r->lock);
	r->queues[shard].head = r->queues[shard].n = 0; /* stale: the shard starts over */
	r->rereport = true;
	pthread_mutex_unlock(&r->lock);
}

size_t scanrun_queued(struct scanrun *r)
{
	size_t n = 0;

	pthread_mutex_lock(&r->lock);
	for (unsigned s = 0; s < r->cfg->nshards; s++)
		n += r->queues[s].n;
	pthread_mutex_unlock(&r->lock);
	metric_set(r->m_queued, (double)n);
	return n;
}

static int register_metrics(struct scanrun *r, struct metrics *reg)
{
	static const char skip_help[] = "Pages the last full scan passed over, by reason.";
	static const char *const group_names[4] = { "scanned", "stable", "volatile", "zero" };

	const struct metric_def defs[] = {
		METRIC_C(r->m_scanned, "cksm_pages_scanned_total", "Pages read and hashed."),
		METRIC_C(r->m_full_scans, "cksm_full_scans_total", "Full scans completed."),
		{ &r->m_cpu, METRIC_COUNTER_F, "cksm_scan_cpu_seconds_total",
		  "CPU time the scanner thread used.", NULL },
		METRIC_C(r->m_reported, "cksm_digests_reported_total",
			 "Stable pages queued for their shard."),
		METRIC_C(r->m_deferred, "cksm_digests_deferred_total",
			 "Stable pages not queued (queue full); offered again next scan."),
		METRIC_G(r->m_stable, "cksm_pages_stable",
			 "Pages unchanged over the last scan interval (not zero)."),
		METRIC_G(r->m_volatile, "cksm_pages_volatile",
			 "Pages that changed over the last scan interval."),
		METRIC_G(r->m_new, "cksm_pages_new",
			 "Pages the last full scan saw for the first time."),
		METRIC_G(r->m_zero, "cksm_pages_zero", "Pages whose content is all zeroes."),
		METRIC_G(r->m_rate, "cksm_scan_pages_per_second",
			 "Scan rate of the last full scan."),
		METRIC_G(r->m_cpu_ratio, "cksm_scan_cpu_ratio",
			 "CPU used by the last full scan, as a fraction of one core."),
		METRIC_G(r->m_targets, "cksm_scan_processes", "Processes the scanner visits."),
		METRIC_G(r->m_state, "cksm_scan_state_bytes", "Memory held by scanner state."),
		METRIC_G(r->m_tracked, "cksm_scan_tracked_pages", "Pages with scanner state."),
		METRIC_G(r->m_queued, "cksm_report_queue_digests",
			 "Digests waiting for their shard."),
		METRIC_G(
			r->m_shared, "cksm_pages_shared_elsewhere",
			"Stable pages whose content has another copy in the cluster (last full scan)."),
		METRIC_G(
			r->m_thp_kept, "cksm_thp_pages_kept",
			"Pages of huge pages that could have been evicted, kept because their huge page is not mostly duplicates (last full scan)."),
		METRIC_C(r->m_answers_dropped, "cksm_answers_dropped_total",
			 "Shard answers about pages dropped because the scanner was behind."),
	};

	if (metrics_register(reg, defs, sizeof(defs) / sizeof(defs[0])))
		return -ENOMEM;
	for (int i = 0; i < SKIP_MAX; i++) {
		char labels[64];

		snprintf(labels, sizeof(labels), "reason=\"%s\"", scan_skip_names[i]);
		r->m_skipped[i] = metrics_gauge(reg, "cksm_pages_skipped", skip_help, labels);
		if (!r->m_skipped[i])
			return -ENOMEM;
	}
	for (unsigned g = 0; g < r->targets.ngroups; g++)
		for (int k = 0; k < 4; k++) {
			char name[64], labels[320];

			snprintf(name, sizeof(name), "cksm_cgroup_pages_%s", group_names[k]);
			metrics_label(labels, sizeof(labels), "cgroup", r->targets.groups[g].path);
			r->m_group[g][k] = metrics_gauge(
				reg, name, "Pages of a configured cgroup in the last full scan.",
				labels);
			if (!r->m_group[g][k])
				return -ENOMEM;
		}
	return 0;
}

struct scanrun *scanrun_create(const struct config *cfg, const struct auth_key *key,
			       struct metrics *reg, uv_loop_t *loop, void (*wake)(void *arg),
			       void *arg)
{
	struct scanrun *r = calloc(1, sizeof(*r));
	char err[256];

	if (!r)
		return NULL;
	r->cfg = cfg;
	r->wake = wake;
	r->wake_arg = arg;
	pthread_mutex_init(&r->lock, NULL);
	{
		pthread_condattr_t ca;

		/* Monotonic: a step of the wall clock cannot stall the scanner. */
		pthread_condattr_init(&ca);
		pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		pthread_cond_init(&r->cond, &ca);
		pthread_condattr_destroy(&ca);
	}
	targets_init(&r->targets, cfg);
	for (unsigned d = 0; d < cfg->ndomains; d++)
		if (cid_domain_init(&r->domains[d], key, cfg->domains[d].id, cfg->domains[d].name))
			goto fini_targets;
	r->owner = calloc(cfg->buckets, 1);
	if (!r->owner)
		goto fini_targets;
	for (uint32_t b = 0; b < cfg->buckets; b++)
		r->owner[b] = (uint8_t)config_bucket_shard(cfg, b);
	for (unsigned s = 0; s < cfg->nshards; s++)
		if (rq_init(&r->queues[s], cfg->report_queue))
			goto fini_queues;
	r->scanner = scanner_create(cfg, &r->targets, r->domains, on_report, r, err, sizeof(err));
	if (!r->scanner) {
		log_error("cannot create the scanner: %s", err);
		goto fini_queues;
	}
	scanner_set_sleep(r->scanner, on_sleep, r);
	if (register_metrics(r, reg))
		goto destroy_scanner;
	uv_async_init(loop, &r->async, on_async);
	r->async.data = r;
	return r;
destroy_scanner:
	scanner_destroy(r->scanner);
fini_queues:
	for (unsigned s = 0; s < cfg->nshards; s++)
		rq_fini(&r->queues[s]); /* untouched ones are zero: nothing to free */
	free(r->owner);
fini_targets:
	targets_fini(&r->targets);
	pthread_cond_destroy(&r->cond);
	pthread_mutex_destroy(&r->lock);
	free(r);
	log_error("cannot set up scanning");
	return NULL;
}

int scanrun_start(struct scanrun *r)
{
	int rc = pthread_create(&r->thread, NULL, scan_thread, r);

	if (rc)
		return -rc;
	r->started = true;
	return 0;
}

static void on_async_closed(uv_handle_t *h)
{
	struct scanrun *r = h->data;

	for (unsigned s = 0; s < r->cfg->nshards; s++)
		rq_fini(&r->queues[s]);
	free(r->owner);
	free(r->answers);
	free(r->applying);
	free(r->changes);
	usage_clear(&r->usage);
	pthread_mutex_destroy(&r->lock);
	pthread_cond_destroy(&r->cond);
	free(r);
}

void scanrun_destroy(struct scanrun *r)
{
	if (!r)
		return;
	pthread_mutex_lock(&r->lock);
	r->stop = true;
	pthread_cond_broadcast(&r->cond);
	pthread_mutex_unlock(&r->lock);
	if (r->started)
		pthread_join(r->thread, NULL);
	scanner_destroy(r->scanner);
	targets_fini(&r->targets);
	uv_close((uv_handle_t *)&r->async, on_async_closed);
}
