/*
 * wset - see wset.h.
 *
 * Layout: two open-addressed tables, regions and processes, where a key
 * lives within PROBE entries of its hash; a lookup looks at the whole
 * window (so entries can be freed anywhere), and a key that finds
 * neither itself nor a free entry there takes the window's least
 * recently used entry.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "wset.h"

#define PROBE 16u

struct region {
	uint64_t key;	   /* pid << 36 | region index, + 1; 0: free */
	uint64_t used_ms;  /* last looked at */
	uint64_t until_ms; /* sampling: its verdict (0: none evicted yet); hot: sampled again */
	uint64_t win_ms;   /* open: the window's start; sampling: the first offer */
	uint64_t stripes;  /* sampling: the stripes a sample page was offered from */
	uint64_t asked;	   /* sampling: the stripes a page was let ask for a dup from */
	uint64_t asked_ms; /* ... when the first of them asked */
	uint32_t offered;  /* sampling: sample pages let go to the evictor */
	uint32_t evicted;  /* evictions (sampling: of the sample) in the window */
	uint32_t refaults; /* ... and refaults */
	uint32_t out;	   /* pages evicted and not back, about */
	uint8_t state;	   /* enum wset_state */
	uint8_t level;	   /* hot verdicts in a row */
	uint8_t domain;	   /* of the content that came back last */
};

struct proc {
	pid_t pid; /* 0: free */
	uint64_t used_ms, first_ms, last_ms;
	int64_t tokens; /* ns of faults it may still spend */
	bool broke;	/* its budget ran out, and was counted */
	uint64_t refaults, fault_ns;
};

struct wset {
	pthread_mutex_t lock;
	struct wset_cfg cfg;
	size_t nregions;
	struct region *r;
	struct proc p[WSET_PROCS];
	struct wset_stats st;		     /* the counters; regions[] is counted on demand */
	struct wset_hot hot[WSET_HOT_QUEUE]; /* found hot, not taken yet */
	size_t nhot;
};

static uint64_t mix(uint64_t k)
{
	k ^= k >> 33;
	k *= 0xff51afd7ed558ccdULL;
	k ^= k >> 33;
	return k;
}

static uint64_t region_key(pid_t pid, uint64_t addr)
{
	return ((uint64_t)(uint32_t)pid << 36 |
		((addr >> WSET_REGION_SHIFT) & ((1ull << 36) - 1))) +
	       1;
}

/* The region's entry, made if new (the window's oldest gives way). */
static struct region *region_get(struct wset *w, pid_t pid, uint64_t addr, uint64_t now)
{
	uint64_t key = region_key(pid, addr);
	size_t h = mix(key) % w->nregions;
	struct region *free_r = NULL, *old = NULL;

	for (unsigned i = 0; i < PROBE; i++) {
		struct region *r = &w->r[(h + i) % w->nregions];

		if (r->key == key) {
			r->used_ms = now;
			return r;
		}
		if (!r->key && !free_r)
			free_r = r;
		if (r->key && (!old || r->used_ms < old->used_ms))
			old = r;
	}
	if (!free_r) {
		free_r = old;
		w->st.forgotten++;
	}
	memset(free_r, 0, sizeof(*free_r));
	free_r->key = key;
	free_r->used_ms = now;
	return free_r;
}

static struct proc *proc_get(struct wset *w, pid_t pid, uint64_t now)
{
	size_t h = mix((uint64_t)(uint32_t)pid) % WSET_PROCS;
	struct proc *free_p = NULL, *old = NULL;

	for (unsigned i = 0; i < PROBE; i++) {
		struct proc *p = &w->p[(h + i) % WSET_PROCS];

		if (p->pid == pid) {
			p->used_ms = now;
			return p;
		}
		if (!p->pid && !free_p)
			free_p = p;
		if (p->pid && (!old || p->used_ms < old->used_ms))
			old = p;
	}
	if (!free_p)
		free_p = old;
	memset(free_p, 0, sizeof(*free_p));
	free_p->pid = pid;
	free_p->used_ms = free_p->first_ms = free_p->last_ms = now;
	return free_p;
}

/* The budget, earned up to now. */
static void proc_earn(struct wset *w, struct proc *p, uint64_t now)
{
	if (now > p->last_ms) {
		p->tokens +=
			(int64_t)((now - p->last_ms) * 1000000ull * w->cfg.fault_budget_pct / 100);
		if (p->tokens > (int64_t)WSET_BUDGET_CAP_NS)
			p->tokens = (int64_t)WSET_BUDGET_CAP_NS;
		p->last_ms = now;
	}
	if (p->tokens >= 0)
		p->broke = false;
}

static void go_hot(struct wset *w, struct region *r, uint64_t now)
{
	uint64_t back = (uint64_t)WSET_BACKOFF_MS << (r->level < 6 ? r->level : 6);

	r->state = WSET_HOT;
	r->until_ms = now + (back < WSET_BACKOFF_MAX_MS ? back : WSET_BACKOFF_MAX_MS);
	if (r->level < 255)
		r->level++;
	w->st.hot_verdicts++;
	if (w->nhot < WSET_HOT_QUEUE)
		w->hot[w->nhot++] = (struct wset_hot){
			.pid = (pid_t)((r->key - 1) >> 36),
			.addr = ((r->key - 1) & ((1ull << 36) - 1)) << WSET_REGION_SHIFT,
			.domain = r->domain,
		};
}

static void start_sampling(struct region *r)
{
	r->state = WSET_SAMPLING;
	r->until_ms = r->win_ms = 0;
	r->stripes = r->asked = r->asked_ms = 0;
	r->offered = r->evicted = r->refaults = 0;
}

/* A region's sample: one page per stripe, at most 64 stripes. */
static unsigned stripe_of(const struct wset *w, uint64_t addr)
{
	unsigned stripes = w->cfg.sample_pages < 64 ? w->cfg.sample_pages : 64;

	return (unsigned)((addr & (WSET_REGION - 1)) * stripes / WSET_REGION);
}

/* Verdicts that time gives: a sample watched long enough, a back-off
 * over, an open window ended. */
static void region_tick(struct wset *w, struct region *r, uint64_t now)
{
	switch (r->state) {
	case WSET_NEW:
		start_sampling(r);
		break;
	case WSET_SAMPLING:
		/* Offered, and none of it evicted for long (changed, moved, the
		 * queue full): a new sample. */
		if (!r->until_ms && r->offered && now - r->win_ms >= 2ull * w->cfg.sample_ms)
			start_sampling(r);
		/* Asked for dups, none came to be offered (their contents
		 * unique, say): others of those stripes may ask. */
		if (r->asked && !r->offered && now >= r->asked_ms + 2ull * w->cfg.sample_ms)
			r->asked = r->asked_ms = 0;
		if (!r->until_ms || now < r->until_ms)
			break;
		if (r->refaults * 4 >= r->evicted && r->refaults) {
			go_hot(w, r, now);
		} else {
			r->state = WSET_OPEN;
			r->win_ms = now;
			r->evicted = r->refaults = 0;
			if (r->level)
				r->level--;
		}
		break;
	case WSET_HOT:
		if (now >= r->until_ms)
			start_sampling(r);
		break;
	case WSET_OPEN:
		if (now - r->win_ms >= w->cfg.sample_ms) {
			r->win_ms = now;
			r->evicted = r->refaults = 0;
		}
		break;
	}
}

enum wset_verdict wset_may_evict(struct wset *w, pid_t pid, uint64_t addr, uint64_t now_ms)
{
	enum wset_verdict v = WSET_EVICT;
	struct region *r;
	struct proc *p;

	pthread_mutex_lock(&w->lock);
	if (w->cfg.off)
		goto out;
	if (w->cfg.fault_budget_pct) {
		p = proc_get(w, pid, now_ms);
		proc_earn(w, p, now_ms);
		if (p->tokens < 0) {
			v = WSET_NO_BUDGET;
			goto out;
		}
	}
	r = region_get(w, pid, addr, now_ms);
	region_tick(w, r, now_ms);
	if (r->state == WSET_HOT) {
		v = WSET_HOT_REGION;
	} else if (r->state == WSET_SAMPLING) {
		/* One sample page per stripe of the region, the first offered. */
		unsigned stripes = w->cfg.sample_pages < 64 ? w->cfg.sample_pages : 64;
		unsigned s = stripe_of(w, addr);

		if (r->offered >= stripes || (r->stripes >> s & 1)) {
			v = WSET_WAIT;
		} else {
			r->stripes |= 1ull << s;
			if (!r->offered++)
				r->win_ms = now_ms;
		}
	}
out:
	w->st.held[v]++;
	pthread_mutex_unlock(&w->lock);
	return v;
}

bool wset_dup_wanted(struct wset *w, pid_t pid, uint64_t addr, uint64_t now_ms, bool take)
{
	bool want = true;
	struct region *r;
	unsigned s;

	pthread_mutex_lock(&w->lock);
	if (w->cfg.off)
		goto out;
	r = region_get(w, pid, addr, now_ms);
	region_tick(w, r, now_ms);
	switch (r->state) {
	case WSET_HOT:
		want = false;
		break;
	case WSET_SAMPLING:
		/* Its sample's pages only: one per stripe, until one of the
		 * stripe is offered. */
		s = stripe_of(w, addr);
		want = !(r->stripes >> s & 1) && !(r->asked >> s & 1);
		if (want && take) {
			if (!r->asked)
				r->asked_ms = now_ms;
			r->asked |= 1ull << s;
		}
		break;
	default: /* open */
		break;
	}
out:
	pthread_mutex_unlock(&w->lock);
	return want;
}

void wset_evicted(struct wset *w, pid_t pid, uint64_t addr, uint64_t now_ms)
{
	struct region *r;

	pthread_mutex_lock(&w->lock);
	r = region_get(w, pid, addr, now_ms);
	region_tick(w, r, now_ms);
	r->evicted++;
	r->out++;
	/* A sample is watched from its last page's eviction on. */
	if (r->state == WSET_SAMPLING)
		r->until_ms = now_ms + w->cfg.sample_ms;
	pthread_mutex_unlock(&w->lock);
}

void wset_refault(struct wset *w, pid_t pid, uint64_t addr, uint64_t ns, uint64_t now_ms,
		  uint8_t domain)
{
	struct region *r;
	struct proc *p;

	ns += WSET_FAULT_FLOOR_NS;
	pthread_mutex_lock(&w->lock);
	w->st.refaults++;
	w->st.fault_ns += ns;
	p = proc_get(w, pid, now_ms);
	proc_earn(w, p, now_ms);
	p->refaults++;
	p->fault_ns += ns;
	if (w->cfg.fault_budget_pct) {
		p->tokens -= (int64_t)ns;
		if (p->tokens < 0 && !p->broke) {
			p->broke = true;
			w->st.broke++;
		}
	}
	r = region_get(w, pid, addr, now_ms);
	r->domain = domain;
	region_tick(w, r, now_ms);
	r->refaults++;
	if (r->out)
		r->out--;
	/* Open: hot when, within a window, an eighth of what is out came
	 * back (and at least WSET_HOT_MIN pages). */
	if (r->state == WSET_OPEN && r->refaults >= WSET_HOT_MIN && r->refaults * 8 >= r->out)
		go_hot(w, r, now_ms);
	pthread_mutex_unlock(&w->lock);
}

void wset_forget(struct wset *w, pid_t pid)
{
	pthread_mutex_lock(&w->lock);
	for (unsigned i = 0; i < WSET_PROCS; i++)
		if (w->p[i].pid == pid)
			memset(&w->p[i], 0, sizeof(w->p[i]));
	for (size_t i = 0; i < w->nregions; i++)
		if (w->r[i].key && (w->r[i].key - 1) >> 36 == (uint64_t)(uint32_t)pid)
			memset(&w->r[i], 0, sizeof(w->r[i]));
	pthread_mutex_unlock(&w->lock);
}

void wset_stats(struct wset *w, uint64_t now_ms, struct wset_stats *st)
{
	pthread_mutex_lock(&w->lock);
	*st = w->st;
	memset(st->regions, 0, sizeof(st->regions));
	for (size_t i = 0; i < w->nregions; i++) {
		struct region *r = &w->r[i];

		if (!r->key)
			continue;
		region_tick(w, r, now_ms);
		st->regions[r->state]++;
	}
	pthread_mutex_unlock(&w->lock);
}

size_t wset_take_hot(struct wset *w, struct wset_hot *out, size_t max)
{
	size_t n;

	pthread_mutex_lock(&w->lock);
	n = w->nhot < max ? w->nhot : max;
	memcpy(out, w->hot, n * sizeof(*out));
	memmove(w->hot, w->hot + n, (w->nhot - n) * sizeof(*out));
	w->nhot -= n;
	pthread_mutex_unlock(&w->lock);
	return n;
}

bool wset_proc(struct wset *w, pid_t pid, struct wset_proc *out)
{
	size_t h = mix((uint64_t)(uint32_t)pid) % WSET_PROCS;
	bool found = false;

	pthread_mutex_lock(&w->lock);
	for (unsigned i = 0; i < PROBE && !found; i++) {
		struct proc *p = &w->p[(h + i) % WSET_PROCS];

		if (p->pid == pid && pid) {
			*out = (struct wset_proc){ pid, p->refaults, p->fault_ns, p->first_ms };
			found = true;
		}
	}
	pthread_mutex_unlock(&w->lock);
	return found;
}

int wset_check(struct wset *w)
{
	int rc = 0;

	pthread_mutex_lock(&w->lock);
	for (size_t i = 0; i < w->nregions && !rc; i++) {
		const struct region *r = &w->r[i];
		size_t h;
		bool in_window = false;

		if (!r->key)
			continue;
		h = mix(r->key) % w->nregions;
		for (unsigned k = 0; k < PROBE; k++)
			in_window |= (h + k) % w->nregions == i;
		if (!in_window || r->state >= WSET_STATES ||
		    (r->state == WSET_SAMPLING && r->evicted > 64))
			rc = -EINVAL;
		/* No key twice. */
		for (unsigned k = 0; k < PROBE && !rc; k++) {
			size_t j = (h + k) % w->nregions;

			if (j != i && w->r[j].key == r->key)
				rc = -EINVAL;
		}
	}
	pthread_mutex_unlock(&w->lock);
	return rc;
}

struct wset *wset_create(const struct wset_cfg *cfg)
{
	struct wset *w = calloc(1, sizeof(*w));

	if (!w)
		return NULL;
	w->cfg = *cfg;
	w->nregions = cfg->regions > PROBE ? cfg->regions : PROBE;
	if (!w->cfg.sample_pages)
		w->cfg.sample_pages = 1;
	w->r = calloc(w->nregions, sizeof(*w->r));
	if (!w->r) {
		free(w);
		return NULL;
	}
	pthread_mutex_init(&w->lock, NULL);
	return w;
}

void wset_destroy(struct wset *w)
{
	if (!w)
		return;
	pthread_mutex_destroy(&w->lock);
	free(w->r);
	free(w);
}
