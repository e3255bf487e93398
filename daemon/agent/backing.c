/*
 * backing - see backing.h.
 *
 * Threads and what they own:
 *   loop    the socket: accepts, handshakes, RANGE messages, ZAPPED
 *           answers, and the end of a connection (the process exited or
 *           exec'd: its mm is forgotten and its references released);
 *   fault   every mm's userfaultfd: faults and events;
 *   evict   the offer queue: write-protect, compare, zap.
 * An mm is reference-counted; its table, its eviction in progress and its
 * zap answer are under its own lock. The list of mms is under b->lock.
 */
#include "backing.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <linux/userfaultfd.h>

#include "local.h"
#include "log.h"
#include "util.h"

/* Linux 6.6 and later; the build's headers may be older than the kernel. */
#ifndef UFFD_FEATURE_POISON
#define UFFD_FEATURE_POISON (1 << 14)
struct uffdio_poison {
	struct uffdio_range range;
	__u64 mode;
	__s64 updated;
};
#define UFFDIO_POISON _IOWR(UFFDIO, 0x08, struct uffdio_poison)
#endif

#define PAGE	      4096u
#define OFFER_MAX     65536u	 /* pages waiting for the evictor */
#define ZAP_WAIT_MS   2000	 /* a process that does not answer a zap by then */
#define COOLDOWN_SETS 4096u	 /* recently faulted pages remembered */
#define KSM_WINDOW    (2u << 20) /* what one hot page hands to the kernel's KSM */
#define KSM_WINDOWS   64u	 /* ... at most this many per process */
#define HOT_MAX	      256u	 /* hot pages waiting for the loop */

enum { B_ZERO = 1, B_POOL = 2, B_REMOTE = 3 };

#define REMOTE_MAX  3	   /* replicas an entry remembers */
#define REMOTE_IDS  16384u /* contents whose remote dups are remembered */
#define NODES_KNOWN 256	   /* holders whose data addresses are remembered */

/* A dup on another node (its address is in the backing's node map). */
struct rdup {
	uint32_t node, slot, gen;
};

struct bentry {
	uint64_t page; /* address >> 12, 0 = empty */
	struct pool_ref ref;
	struct cid id;
	uint8_t kind;
	uint8_t nrem;
	struct rdup rem[REMOTE_MAX]; /* B_REMOTE: replicas in order; rem[0] counted */
};

struct mm {
	struct backing *b;
	atomic_int refs;
	int sock; /* -1: a fork child's, with no libcksm connection */
	int uffd;
	pid_t pid;	 /* 0 for a fork child until it re-attaches */
	pid_t parent;	 /* a fork child's: who forked it (0 if not known) */
	uint64_t beacon; /* the process's beacon mapping (local.h), 0 if none */
	int beacon_idx;	 /* a re-attaching connection's beacon page, -1 if none */
	bool claimed;	 /* a fork child's mm paired with a connection (b->lock) */
	struct ksm_window {
		uint64_t start, end;
		bool sent;
	} ksm[KSM_WINDOWS]; /* handed to the kernel's KSM: never evicted (lock) */
	unsigned nksm;
	bool merge_all;
	uint64_t merge_min;
	bool handshaken;
	bool hello_seen;  /* the handshake's first message came */
	uint64_t born_ms; /* loop time of the connection */
	struct mm *pnext; /* in the backing's pending list, until handshaken */
	bool orphan;	  /* its connection closed while it lives: served, not evicted */
	bool gone;	  /* off the list */
	uv_poll_t poll;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct bentry *tab; /* open addressing, linear probing */
	size_t cap, n;
	struct uffd_msg *retry; /* faults to serve again (fault thread's) */
	size_t nretry, capretry;
	uint64_t evicting;   /* address under eviction, 0 if none */
	unsigned evict_hits; /* removals of that page seen meanwhile */
	uint64_t zap_token;
	int zap_status;
	bool zap_done;
	struct mm *next;
};

struct offer {
	pid_t pid;
	uint8_t kind;
	uint8_t nrem;
	uint64_t addr;
	struct pool_ref ref;
	struct cid id;
	struct rdup rem[REMOTE_MAX];
};

struct backing {
	const struct config *cfg;
	uv_loop_t *loop;
	struct pool *pool;
	const struct cid_domain *domains;
	int listen_fd;
	uv_poll_t lpoll;
	int devfd; /* /dev/userfaultfd */
	void (*attached)(void *arg, pid_t pid, bool merge_all);
	void (*detached)(void *arg, pid_t pid);
	void *hook_arg;
	uv_timer_t ranges; /* merge_all: register new mappings */
	uint64_t features; /* UFFD features this kernel has, of those asked for */

	pthread_mutex_t lock; /* the list, the offers, stop, re-attaches */
	struct mm *mms;
	struct reattach {
		struct mm *conn;  /* a forked child's connection, NULL if free */
		uint64_t addr;	  /* the beacon page it was told to read */
		struct mm *found; /* the fork child's mm that faulted there (a ref) */
	} reattach[CKSM_LOCAL_BEACON_PAGES];
	unsigned reattach_next;
	atomic_uint reattaching;   /* slots in use, looked at without the lock */
	uv_async_t reattach_async; /* the fault thread found a pair */
	struct mm *pending;	   /* in the handshake (loop thread only) */
	int npending;
	int wake_fd; /* eventfd: the fault thread rebuilds its poll set */
	bool stop;
	bool stop_evicting;   /* the evictor takes no more offers */
	atomic_bool stopping; /* stop, for waits that do not hold b->lock */
	pthread_t fault_thread, evict_thread;
	bool threads;
	pthread_cond_t offer_cond;
	struct parked {
		struct mm *m; /* with the evictor's reference */
		struct bentry e;
		struct parked *next;
	} * parked; /* evictions waiting for a zap answer (evictor's) */
	struct offer *offers;
	size_t noffers, offer_head; /* a ring of OFFER_MAX */
	uint64_t next_token;
	struct {
		uint64_t key; /* pid << 32 ^ page, 0 = empty */
		uint64_t until_ms;
	} cool[COOLDOWN_SETS];
	struct hot {
		pid_t pid;
		uint64_t addr;
	} hot[HOT_MAX]; /* pages faulted back from the pool a second time */
	unsigned nhot;
	bool ksm_off_said;

	const struct auth_key *key;
	char name[AUTH_NAME_MAX + 1];
	struct transport *fault_tr, *evict_tr; /* one per thread */
	struct {
		uint32_t node;
		char addr[DUP_ADDR_MAX];
	} addrs[NODES_KNOWN]; /* under lock */
	unsigned naddrs;
	struct remote_id {
		struct cid id;
		uint8_t n;
		struct rdup rem[REMOTE_MAX];
	} * remote; /* REMOTE_IDS, by id; under lock */
	struct rref {
		struct rdup d;
		struct cid id;
		int32_t count;
		bool dirty;
	} * rrefs; /* our references on other nodes' dups; under refs_lock */
	size_t nrrefs, caprrefs;
	uint32_t *rindex; /* (node, slot, gen) -> position in rrefs + 1 */
	size_t ricap;

	pthread_mutex_t refs_lock; /* the reference changes not taken yet */
	struct backing_ref *refs;
	size_t nrefs;
	int32_t *ref_pos; /* per pool slot: index in refs + 1, 0 if none */

	struct metric *m_attached, *m_backed_zero, *m_backed_local, *m_evicted, *m_aborted;
	struct metric *m_faults_zero, *m_faults_local, *m_faults_fresh, *m_sigbus, *m_forks;
	struct metric *m_faults_remote, *m_backed_remote, *m_remote_errors;
	struct metric *m_zap_failed, *m_offers_dropped, *m_saved, *m_reattached, *m_ksm_windows;
	struct metric *m_parked;
	struct metric_histogram *m_lat;
};

static const double lat_bounds[12] = { 5e-6,   10e-6, 20e-6, 50e-6, 100e-6, 200e-6,
				       500e-6, 1e-3,  2e-3,  5e-3,  10e-3,  100e-3 };

/* ---- reference changes for the coordinator --------------------------------- */

/*
 * This node's references on one of its own slots changed: mark it, to send
 * the slot's count (pool_refs) at the next flush.
 */
static void ref_changed(struct backing *b, struct pool_ref ref, const struct cid *id)
{
	int32_t pos;

	if (ref.slot >= pool_slots(b->pool))
		return;
	pthread_mutex_lock(&b->refs_lock);
	pos = b->ref_pos[ref.slot];
	if (pos && b->refs[pos - 1].ref.gen != ref.gen)
		pos = 0; /* an older generation's change: keep both */
	if (!pos && b->nrefs < pool_slots(b->pool)) {
		b->refs[b->nrefs] = (struct backing_ref){ ref, *id, 0, 0 };
		b->ref_pos[ref.slot] = (int32_t)++b->nrefs;
	}
	pthread_mutex_unlock(&b->refs_lock);
}

static size_t rhome(const struct rdup *r, size_t cap)
{
	uint64_t k = (uint64_t)r->node << 32 ^ r->slot ^ (uint64_t)r->gen << 20;

	return (size_t)((k * 0x9e3779b97f4a7c15ULL) >> 24) & (cap - 1);
}

/* The index slot naming r, or the empty one where it would go. Lock held. */
static size_t rslot(const struct backing *b, const struct rdup *r)
{
	size_t i = rhome(r, b->ricap);

	while (b->rindex[i]) {
		const struct rdup *x = &b->rrefs[b->rindex[i] - 1].d;

		if (x->node == r->node && x->slot == r->slot && x->gen == r->gen)
			break;
		i = (i + 1) & (b->ricap - 1);
	}
	return i;
}

static int rindex_rebuild(struct backing *b, size_t cap)
{
	uint32_t *v = calloc(cap, sizeof(*v));

	if (!v)
		return -ENOMEM;
	free(b->rindex);
	b->rindex = v;
	b->ricap = cap;
	for (size_t k = 0; k < b->nrrefs; k++)
		b->rindex[rslot(b, &b->rrefs[k].d)] = (uint32_t)k + 1;
	return 0;
}

/* Empty index slot i, shifting back what follows it. Lock held. */
static void rindex_del(struct backing *b, size_t i)
{
	size_t j = i;

	b->rindex[i] = 0;
	for (;;) {
		size_t k;

		j = (j + 1) & (b->ricap - 1);
		if (!b->rindex[j])
			return;
		k = rhome(&b->rrefs[b->rindex[j] - 1].d, b->ricap);
		if ((j > i && (k <= i || k > j)) || (j < i && (k <= i && k > j))) {
			b->rindex[i] = b->rindex[j];
			b->rindex[j] = 0;
			i = j;
		}
	}
}

/* Forget rrefs[p] (the last entry takes its place). Lock held. */
static void rref_drop(struct backing *b, size_t p)
{
	size_t last = b->nrrefs - 1;

	rindex_del(b, rslot(b, &b->rrefs[p].d));
	if (p != last) {
		b->rindex[rslot(b, &b->rrefs[last].d)] = (uint32_t)p + 1;
		b->rrefs[p] = b->rrefs[last];
	}
	b->nrrefs--;
}

/* Our references on another node's dup changed by d. */
static void rref_changed(struct backing *b, const struct rdup *r, const struct cid *id, int32_t d)
{
	size_t i, p;

	pthread_mutex_lock(&b->refs_lock);
	if ((b->nrrefs + 1) * 2 > b->ricap && rindex_rebuild(b, b->ricap ? 2 * b->ricap : 256)) {
		pthread_mutex_unlock(&b->refs_lock);
		log_error("out of memory counting references on remote dups");
		return;
	}
	i = rslot(b, r);
	if (!b->rindex[i]) {
		if (b->nrrefs == b->caprrefs) {
			size_t cap = b->caprrefs ? 2 * b->caprrefs : 64;
			struct rref *v = realloc(b->rrefs, cap * sizeof(*v));

			if (!v) {
				pthread_mutex_unlock(&b->refs_lock);
				log_error("out of memory counting references on remote dups");
				return;
			}
			b->rrefs = v;
			b->caprrefs = cap;
		}
		b->rrefs[b->nrrefs] = (struct rref){ *r, *id, 0, false };
		b->rindex[i] = (uint32_t)++b->nrrefs;
	}
	p = b->rindex[i] - 1;
	b->rrefs[p].count += d;
	b->rrefs[p].dirty = true;
	pthread_mutex_unlock(&b->refs_lock);
}

void backing_refs_unsent(struct backing *b, const struct backing_ref *r)
{
	if (!r->node) {
		ref_changed(b, r->ref, &r->id);
		return;
	}
	pthread_mutex_lock(&b->refs_lock);
	if (b->ricap) {
		struct rdup d = { r->node, r->ref.slot, r->ref.gen };
		size_t i = rslot(b, &d);

		if (b->rindex[i])
			b->rrefs[b->rindex[i] - 1].dirty = true;
	}
	pthread_mutex_unlock(&b->refs_lock);
}

static void mark_slot(void *arg, struct pool_ref ref, const struct cid *id, bool held,
		      uint32_t refs)
{
	if (held || refs)
		ref_changed(arg, ref, id);
}

void backing_refs_all_dirty(struct backing *b)
{
	pthread_mutex_lock(&b->refs_lock);
	for (size_t i = 0; i < b->nrrefs; i++)
		b->rrefs[i].dirty = true;
	pthread_mutex_unlock(&b->refs_lock);
	pool_foreach(b->pool, mark_slot, b);
}

void backing_foreach_rref(struct backing *b, backing_rref_fn fn, void *arg)
{
	pthread_mutex_lock(&b->refs_lock);
	for (size_t i = 0; i < b->nrrefs; i++)
		if (b->rrefs[i].count > 0)
			fn(arg, b->rrefs[i].d.node,
			   (struct pool_ref){ b->rrefs[i].d.slot, b->rrefs[i].d.gen },
			   &b->rrefs[i].id, (uint32_t)b->rrefs[i].count);
	pthread_mutex_unlock(&b->refs_lock);
}

size_t backing_take_refs(struct backing *b, struct backing_ref *out, size_t max)
{
	size_t n = 0;

	pthread_mutex_lock(&b->refs_lock);
	for (size_t i = 0; i < b->nrrefs && n < max;) {
		struct rref *r = &b->rrefs[i];

		if (r->dirty) {
			out[n++] = (struct backing_ref){ { r->d.slot, r->d.gen },
							 r->id,
							 r->d.node,
							 (uint32_t)(r->count > 0 ? r->count : 0) };
			r->dirty = false;
		}
		if (r->count <= 0 && !r->dirty)
			rref_drop(b, i); /* told the shard: forget it */
		else
			i++;
	}
	while (b->nrefs && n < max) {
		struct backing_ref *r = &b->refs[--b->nrefs];

		if (b->ref_pos[r->ref.slot] == (int32_t)b->nrefs + 1)
			b->ref_pos[r->ref.slot] = 0;
		out[n++] = *r; /* changed, even if back where it was */
	}
	pthread_mutex_unlock(&b->refs_lock);
	return n;
}

/* ---- the backed table --------------------------------------------------- */

static size_t slot_of(const struct mm *m, uint64_t page)
{
	return (size_t)((page * 0x9e3779b97f4a7c15ULL) >> 20) & (m->cap - 1);
}

static struct bentry *tab_find(struct mm *m, uint64_t addr)
{
	uint64_t page = addr >> 12;

	if (!m->cap)
		return NULL;
	for (size_t i = slot_of(m, page);; i = (i + 1) & (m->cap - 1)) {
		if (m->tab[i].page == page)
			return &m->tab[i];
		if (!m->tab[i].page)
			return NULL;
	}
}

static int tab_grow(struct mm *m)
{
	size_t ocap = m->cap, cap = ocap ? 2 * ocap : 1024;
	struct bentry *old = m->tab, *t = calloc(cap, sizeof(*t));

	if (!t)
		return -ENOMEM;
	m->tab = t;
	m->cap = cap;
	for (size_t i = 0; i < ocap; i++)
		if (old[i].page) {
			size_t j = slot_of(m, old[i].page);

			while (t[j].page)
				j = (j + 1) & (cap - 1);
			t[j] = old[i];
		}
	free(old);
	return 0;
}

static int tab_put(struct mm *m, const struct bentry *e)
{
	size_t i;

	if ((m->n + 1) * 4 > m->cap * 3 && tab_grow(m))
		return -ENOMEM;
	for (i = slot_of(m, e->page); m->tab[i].page && m->tab[i].page != e->page;
	     i = (i + 1) & (m->cap - 1)) {
	}
	if (!m->tab[i].page)
		m->n++;
	m->tab[i] = *e;
	return 0;
}

/* Remove e (a slot of m->tab), shifting back what follows it. */
static void tab_del(struct mm *m, struct bentry *e)
{
	size_t i = (size_t)(e - m->tab), j = i;

	m->tab[i].page = 0;
	m->n--;
	for (;;) {
		size_t k;

		j = (j + 1) & (m->cap - 1);
		if (!m->tab[j].page)
			return;
		k = slot_of(m, m->tab[j].page);
		/* j's entry may move to i if its home is not in (i, j] */
		if ((j > i && (k <= i || k > j)) || (j < i && (k <= i && k > j))) {
			m->tab[i] = m->tab[j];
			m->tab[j].page = 0;
			i = j;
		}
	}
}

/* Drop an entry and what it holds. Lock held. */
static void entry_release(struct mm *m, struct bentry *e)
{
	struct backing *b = m->b;

	if (e->kind == B_POOL) {
		pool_ref(b->pool, e->ref, -1);
		ref_changed(b, e->ref, &e->id);
		metric_gauge_add(b->m_backed_local, -1);
	} else if (e->kind == B_REMOTE) {
		rref_changed(b, &e->rem[0], &e->id, -1);
		metric_gauge_add(b->m_backed_remote, -1);
	} else {
		metric_gauge_add(b->m_backed_zero, -1);
	}
	metric_gauge_add(b->m_saved, -(double)PAGE);
	tab_del(m, e);
}

/* Drop every entry in [start, end). Lock held. */
static void drop_range(struct mm *m, uint64_t start, uint64_t end)
{
	if (!m->n)
		return;
	if ((end - start) / PAGE < m->cap) {
		for (uint64_t a = start; a < end; a += PAGE) {
			struct bentry *e = tab_find(m, a);

			if (e)
				entry_release(m, e);
		}
		return;
	}
	for (size_t i = 0; i < m->cap;) {
		uint64_t a = m->tab[i].page << 12;

		if (m->tab[i].page && a >= start && a < end)
			entry_release(m, &m->tab[i]); /* i may hold a shifted entry now */
		else
			i++;
	}
}

/* ---- mm lifetime ------------------------------------------------------------ */

static struct mm *mm_new(struct backing *b, int sock, int uffd, pid_t pid)
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
	pthread_mutex_init(&m->lock, NULL);
	pthread_cond_init(&m->cond, NULL);
	return m;
}

static void mm_put(struct mm *m)
{
	if (atomic_fetch_sub(&m->refs, 1) != 1)
		return;
	pthread_mutex_lock(&m->lock);
	drop_range(m, 0, UINT64_MAX);
	pthread_mutex_unlock(&m->lock);
	free(m->tab);
	free(m->retry);
	if (m->uffd >= 0)
		close(m->uffd);
	if (m->sock >= 0)
		close(m->sock);
	pthread_mutex_destroy(&m->lock);
	pthread_cond_destroy(&m->cond);
	free(m);
}

static void wake_faults(struct backing *b)
{
	uint64_t one = 1;

	if (write(b->wake_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		log_warn("cannot wake the fault thread: %s", strerror(errno));
}

static void list_add(struct backing *b, struct mm *m)
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

static void list_del_done(struct backing *b, struct mm *m);

/* Take m off the list and drop the list's reference. */
static void list_del(struct backing *b, struct mm *m)
{
	bool found;

	pthread_mutex_lock(&b->lock);
	found = list_unlink(b, m);
	pthread_mutex_unlock(&b->lock);
	if (found)
		list_del_done(b, m);
}

/* The same for a fork child's mm whose userfaultfd ended, unless a
 * connection has been paired with it meanwhile (its close decides then). */
static void list_del_unpaired(struct backing *b, struct mm *m)
{
	bool found = false;

	pthread_mutex_lock(&b->lock);
	if (m->sock < 0 && !m->claimed)
		found = list_unlink(b, m);
	pthread_mutex_unlock(&b->lock);
	if (found)
		list_del_done(b, m);
}

static void list_del_done(struct backing *b, struct mm *m)
{
	metric_gauge_add(b->m_attached, -1);
	pthread_mutex_lock(&m->lock);
	m->zap_done = true; /* an evictor waiting on it gives up */
	m->zap_status = -ESRCH;
	pthread_cond_broadcast(&m->cond);
	pthread_mutex_unlock(&m->lock);
	wake_faults(b);
	mm_put(m);
}

/* The attached mm of pid, with a reference, or NULL. */
static struct mm *mm_get(struct backing *b, pid_t pid)
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

/* ---- the socket ------------------------------------------------------------ */

static int local_send(int fd, const struct cksm_local *m, int pass_fd)
{
	return cksm_local_send(fd, m, pass_fd, MSG_DONTWAIT);
}

/* One message; 0, -EAGAIN, or another error (the connection is done). */
static int local_recv(int fd, struct cksm_local *m, int *got_fd, const char **why, int *sender)
{
	return cksm_local_recv_from(fd, m, got_fd, MSG_DONTWAIT, why, sender);
}

static bool mm_exited(const struct mm *m);
static void pending_del(struct backing *b, struct mm *m);

static void on_closed(uv_handle_t *h)
{
	struct mm *m = h->data;

	/* The socket closes with the last reference: an evictor may hold one. */
	if (!m->handshaken) {
		pending_del(m->b, m);
		mm_put(m);
	} else if (!m->b->stop && m->n && !mm_exited(m)) {
		/* It closed the connection but lives (a daemon closing every
		 * descriptor): its backed pages are still served, from the
		 * table, until it exits; nothing more is evicted. */
		pthread_mutex_lock(&m->lock);
		m->orphan = true;
		m->zap_done = true;
		m->zap_status = -ECONNRESET;
		pthread_cond_broadcast(&m->cond);
		pthread_mutex_unlock(&m->lock);
		log_warn(
			"process %d closed its connection while alive; its backed pages stay served",
			(int)m->pid);
	} else {
		list_del(m->b, m);
	}
}

/* The process is gone (exit, exec) or misbehaved: forget it. */
static void mm_end(struct mm *m, const char *why)
{
	struct backing *b = m->b;

	if (why)
		log_warn("process %d: %s; detached", (int)m->pid, why);
	else
		log_info("process %d detached", (int)m->pid);
	if (m->handshaken && b->detached)
		b->detached(b->hook_arg, m->pid);
	uv_poll_stop(&m->poll);
	uv_close((uv_handle_t *)&m->poll, on_closed);
}

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

/* Register [start, end) of m for MISSING and WP faults. */
static int register_range(struct mm *m, uint64_t start, uint64_t end)
{
	struct uffdio_register r = {
		.range = { .start = start, .len = end - start },
		.mode = UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP,
	};

	return ioctl(m->uffd, UFFDIO_REGISTER, &r) < 0 ? -errno : 0;
}

/*
 * Register the private anonymous writable mappings of m that intersect
 * [lo, hi) and are at least min bytes (from /proc/PID/maps).
 */
static void register_mappings(struct mm *m, uint64_t lo, uint64_t hi, uint64_t min)
{
	char path[64], line[512];
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/maps", (int)m->pid);
	f = fopen(path, "re");
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
		if (s < lo)
			s = lo;
		if (e > hi)
			e = hi;
		if (s >= e || e - s < min)
			continue;
		register_range(m, s, e);
	}
	fclose(f);
}

static void handle_range(struct mm *m, const struct cksm_local *msg)
{
	uint64_t start = msg->a, len = msg->b;

	if (len == 0)
		return; /* madvise of nothing */
	if (start % PAGE || len % PAGE || start + len < start) {
		log_warn("process %d: a mergeable range %#llx+%#llx that is not whole pages",
			 (int)m->pid, (unsigned long long)start, (unsigned long long)len);
		return;
	}
	register_mappings(m, start, start + len, 0);
	if (m->b->attached) /* the scanner looks at the new range at once */
		m->b->attached(m->b->hook_arg, m->pid, m->merge_all);
}

static bool beacon_ok(uint64_t beacon)
{
	return beacon % PAGE == 0 && beacon + CKSM_LOCAL_BEACON_PAGES * PAGE > beacon;
}

/* The beacon: missing faults only; its pages are never written. */
static void register_beacon(struct mm *m)
{
	struct uffdio_register r = {
		.range = { .start = m->beacon, .len = CKSM_LOCAL_BEACON_PAGES * PAGE },
		.mode = UFFDIO_REGISTER_MODE_MISSING,
	};

	if (m->beacon && ioctl(m->uffd, UFFDIO_REGISTER, &r) < 0) {
		log_warn(
			"process %d: its beacon cannot be registered (%s): its forked children will not re-attach",
			(int)m->pid, strerror(errno));
		m->beacon = 0;
	}
}

static void reattach_begin(struct mm *c);

static void on_sock(uv_poll_t *h, int status, int events)
{
	struct mm *m = h->data;
	struct backing *b = m->b;
	struct cksm_local msg = cksm_local_msg(0);
	const char *why;
	int fd, rc, sender = 0;

	(void)events;
	if (status < 0) {
		mm_end(m, "socket error");
		return;
	}
	while ((rc = local_recv(m->sock, &msg, &fd, &why, &sender)) == 0) {
		if (!m->hello_seen) {
			struct cksm_local r = cksm_local_msg(CKSM_LOCAL_DEVFD);

			if (fd >= 0)
				close(fd);
			if (msg.type != CKSM_LOCAL_HELLO) {
				mm_end(m, "no hello");
				return;
			}
			m->hello_seen = true;
			m->merge_all = (msg.a & CKSM_LOCAL_MERGE_ALL) != 0;
			m->merge_min = msg.b < PAGE ? PAGE : msg.b;
			if (!beacon_ok(msg.token)) {
				mm_end(m, "a hello with a bad beacon");
				return;
			}
			m->beacon = msg.token;
			if (msg.a & CKSM_LOCAL_FORKED) {
				reattach_begin(m);
				return;
			}
			if (local_send(m->sock, &r, b->devfd) < 0) {
				mm_end(m, "cannot send the descriptor");
				return;
			}
			continue;
		}
		if (!m->handshaken && msg.type == CKSM_LOCAL_UFFD && m->uffd < 0) {
			struct cksm_local r = cksm_local_msg(CKSM_LOCAL_READY);

			why = fd < 0		 ? "UFFD without a descriptor"
			      : sender != m->pid ? "a userfaultfd sent by another process"
						 : take_uffd(m, fd);
			if (why) {
				if (fd >= 0)
					close(fd);
				r.status = -EINVAL;
				local_send(m->sock, &r, -1);
				mm_end(m, why);
				return;
			}
			pending_del(b, m);
			m->handshaken = true;
			local_send(m->sock, &r, -1);
			log_info("process %d attached%s", (int)m->pid,
				 m->merge_all ? " (every private anonymous mapping)" : "");
			list_add(b, m);
			register_beacon(m);
			if (m->merge_all)
				register_mappings(m, 0, UINT64_MAX, m->merge_min);
			if (b->attached)
				b->attached(b->hook_arg, m->pid, m->merge_all);
			continue;
		}
		if (fd >= 0)
			close(fd);
		if (!m->handshaken) {
			mm_end(m, "a message before the handshake ended");
			return;
		}
		switch (msg.type) {
		case CKSM_LOCAL_RANGE:
			handle_range(m, &msg);
			break;
		case CKSM_LOCAL_ZAPPED:
			pthread_mutex_lock(&m->lock);
			if (msg.token == m->zap_token && !m->zap_done) {
				m->zap_status = msg.status;
				m->zap_done = true;
				pthread_cond_broadcast(&m->cond);
			}
			pthread_mutex_unlock(&m->lock);
			break;
		default:
			mm_end(m, "an unexpected message");
			return;
		}
	}
	if (rc != -EAGAIN)
		mm_end(m, rc == -ECONNRESET ? NULL : why ? why : strerror(-rc));
}

#define PENDING_MAX   64   /* connections still in the handshake */
#define HELLO_WAIT_MS 5000 /* ... each for at most this long */

static void reattach_clear(struct backing *b, struct mm *c);

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
 * through on_sock, without the loop ever waiting for them. At most
 * PENDING_MAX at once, each given HELLO_WAIT_MS (on_ranges reaps).
 */
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
	if (fd < 0)
		return;
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) < 0 || cred.pid <= 0) {
		close(fd);
		return;
	}
	if (b->npending >= PENDING_MAX) {
		log_warn("process %d: %d connections in the handshake already; refused",
			 (int)cred.pid, PENDING_MAX);
		close(fd);
		return;
	}
	/* The kernel names the sender of every message: the userfaultfd must
	 * come from the process that connected, not from a child of it. */
	if (setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &(int){ 1 }, sizeof(int)) < 0) {
		close(fd);
		return;
	}
	m = mm_new(b, fd, -1, cred.pid);
	if (!m) {
		close(fd);
		return;
	}
	m->born_ms = uv_now(b->loop);
	m->pnext = b->pending;
	b->pending = m;
	b->npending++;
	uv_poll_init(b->loop, &m->poll, fd);
	m->poll.data = m;
	uv_poll_start(&m->poll, UV_READABLE | UV_DISCONNECT, on_sock);
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
	for (unsigned k = 0; c->beacon && k < CKSM_LOCAL_BEACON_PAGES; k++) {
		unsigned i = (b->reattach_next + k) % CKSM_LOCAL_BEACON_PAGES;

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
static void reattach_match(struct mm *m, const struct uffd_msg *msg)
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
static void reattach_finish(struct backing *b, struct mm *c, struct mm *fm)
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
	 * look at them under it. */
	pthread_mutex_lock(&b->lock);
	fm->pid = c->pid;
	fm->sock = fd;
	pthread_mutex_unlock(&b->lock);
	fm->merge_all = c->merge_all;
	fm->merge_min = c->merge_min;
	fm->hello_seen = true;
	fm->born_ms = c->born_ms;
	uv_poll_init(b->loop, &fm->poll, fd);
	fm->poll.data = fm;
	uv_poll_start(&fm->poll, UV_READABLE | UV_DISCONNECT, on_sock);
	local_send(fd, &r, -1);
	log_info("process %d re-attached (forked from %d)", (int)fm->pid, (int)fm->parent);
	metric_inc(b->m_reattached);
	/* The connection lives on in fm; its own mm goes without a word. */
	uv_poll_stop(&c->poll);
	uv_close((uv_handle_t *)&c->poll, on_closed);
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
		reattach_finish(b, v[i].c, v[i].fm);
}

/*
 * Is the mm behind a fork child's userfaultfd gone? Nothing tells when a
 * process without a libcksm connection exits; a write-protect request
 * does: the kernel refuses it with ESRCH once the mm has no users.
 */
static bool mm_exited(const struct mm *m)
{
	struct uffdio_writeprotect w = { .range = { .start = 1u << 20, .len = PAGE } };

	return ioctl(m->uffd, UFFDIO_WRITEPROTECT, &w) < 0 && errno == ESRCH;
}

/*
 * Every second: merge_all processes get their new mappings registered;
 * fork children that exited are forgotten (their references released).
 */
static void ksm_handover(struct backing *b);

static void on_ranges(uv_timer_t *t)
{
	struct backing *b = t->data;
	struct mm *v[256];
	size_t n = 0;

	for (struct mm *m = b->pending, *next; m; m = next) {
		next = m->pnext;
		if (uv_now(b->loop) - m->born_ms > HELLO_WAIT_MS &&
		    !uv_is_closing((uv_handle_t *)&m->poll))
			mm_end(m, "no handshake within 5 s");
	}

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
		else if (!v[i]->gone && mm_exited(v[i]))
			list_del(b, v[i]);
		mm_put(v[i]);
	}
	ksm_handover(b);
}

/* ---- hot pages to the kernel's KSM ---------------------------------------------- */

/*
 * A page that keeps coming back from the local pool costs a fault every
 * time; a duplicate that hot is better merged by the kernel's own KSM,
 * whose merged page is read without a fault. Its window (KSM_WINDOW
 * around it, within its mapping) is marked mergeable by the process
 * itself (the KSM request), and from then on never evicted by cksm: KSM
 * merging a page cksm has write-protected would drop the protection.
 * Only while KSM runs; without it hot pages just keep their cool-down.
 */

/* Is addr in a window handed to KSM? m->lock held. */
static bool ksm_owns(const struct mm *m, uint64_t addr)
{
	for (unsigned i = 0; i < m->nksm; i++)
		if (addr >= m->ksm[i].start && addr < m->ksm[i].end)
			return true;
	return false;
}

static bool ksm_running(void)
{
	char v[8] = "";
	int fd = open("/sys/kernel/mm/ksm/run", O_RDONLY | O_CLOEXEC);
	ssize_t n = fd >= 0 ? read(fd, v, sizeof(v) - 1) : -1;

	if (fd >= 0)
		close(fd);
	return n > 0 && v[0] == '1';
}

/* The mapping of pid holding addr, from /proc/PID/maps; 0 or -ENOENT. */
static int mapping_of(pid_t pid, uint64_t addr, uint64_t *start, uint64_t *end)
{
	char path[64], line[512];
	int rc = -ENOENT;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
	f = fopen(path, "re");
	if (!f)
		return -ENOENT;
	while (rc && fgets(line, sizeof(line), f)) {
		unsigned long long s, e;

		if (sscanf(line, "%llx-%llx", &s, &e) == 2 && addr >= s && addr < e) {
			*start = s;
			*end = e;
			rc = 0;
		}
	}
	fclose(f);
	return rc;
}

/* Send the KSM requests of m's windows that no eviction is working in. */
static void ksm_flush(struct mm *m)
{
	struct ksm_window v[KSM_WINDOWS];
	unsigned n = 0;

	pthread_mutex_lock(&m->lock);
	for (unsigned i = 0; i < m->nksm; i++) {
		struct ksm_window *w = &m->ksm[i];

		if (w->sent || (m->evicting >= w->start && m->evicting < w->end))
			continue;
		w->sent = true;
		v[n++] = *w;
	}
	pthread_mutex_unlock(&m->lock);
	for (unsigned i = 0; i < n; i++) {
		struct cksm_local r = cksm_local_msg(CKSM_LOCAL_KSM);

		r.a = v[i].start;
		r.b = v[i].end - v[i].start;
		if (local_send(m->sock, &r, -1) < 0) {
			/* Tried again at the next tick; meanwhile nothing is
			 * evicted there either. */
			pthread_mutex_lock(&m->lock);
			for (unsigned k = 0; k < m->nksm; k++)
				if (m->ksm[k].start == v[i].start)
					m->ksm[k].sent = false;
			pthread_mutex_unlock(&m->lock);
			log_warn("process %d: cannot send a KSM request; trying again",
				 (int)m->pid);
			continue;
		}
		metric_inc(m->b->m_ksm_windows);
		log_info("process %d: hot duplicates in %#llx-%#llx handed to the kernel's KSM",
			 (int)m->pid, (unsigned long long)v[i].start, (unsigned long long)v[i].end);
	}
}

static void ksm_window(struct mm *m, uint64_t addr)
{
	uint64_t s, e, lo = addr & ~(uint64_t)(KSM_WINDOW - 1), hi = lo + KSM_WINDOW;

	if (mapping_of(m->pid, addr, &s, &e))
		return;
	if (lo < s)
		lo = s;
	if (hi > e)
		hi = e;
	pthread_mutex_lock(&m->lock);
	if (ksm_owns(m, addr) || m->nksm == KSM_WINDOWS) {
		pthread_mutex_unlock(&m->lock);
		return;
	}
	m->ksm[m->nksm++] = (struct ksm_window){ lo, hi, false };
	pthread_mutex_unlock(&m->lock);
}

/* Loop thread, every second: the hot pages found meanwhile. */
static void ksm_handover(struct backing *b)
{
	struct hot v[HOT_MAX];
	struct mm *ms[HOT_MAX];
	unsigned n, nm = 0;

	pthread_mutex_lock(&b->lock);
	n = b->nhot;
	memcpy(v, b->hot, n * sizeof(v[0]));
	b->nhot = 0;
	pthread_mutex_unlock(&b->lock);
	if (n && !ksm_running()) {
		if (!b->ksm_off_said)
			log_info("the kernel's KSM is not running: hot duplicates stay with cksm");
		b->ksm_off_said = true;
		n = 0;
	}
	for (unsigned i = 0; i < n; i++) {
		struct mm *m = mm_get(b, v[i].pid);

		if (m) {
			ksm_window(m, v[i].addr);
			mm_put(m);
		}
	}
	/* Windows not sent yet (new ones, or ones an eviction was in). */
	pthread_mutex_lock(&b->lock);
	for (struct mm *m = b->mms; m && nm < HOT_MAX; m = m->next)
		if (m->sock >= 0 && m->handshaken && !m->orphan) {
			atomic_fetch_add(&m->refs, 1);
			ms[nm++] = m;
		}
	pthread_mutex_unlock(&b->lock);
	for (unsigned i = 0; i < nm; i++) {
		ksm_flush(ms[i]);
		mm_put(ms[i]);
	}
}

/* ---- faults ------------------------------------------------------------------ */

static const uint8_t zeroes[PAGE] __attribute__((aligned(PAGE)));

static int uffd_copy(int uffd, uint64_t addr, const void *src)
{
	struct uffdio_copy c = { .dst = addr, .src = (uint64_t)(uintptr_t)src, .len = PAGE };

	if (ioctl(uffd, UFFDIO_COPY, &c) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

static int uffd_zeropage(int uffd, uint64_t addr)
{
	struct uffdio_zeropage z = { .range = { .start = addr, .len = PAGE } };

	if (ioctl(uffd, UFFDIO_ZEROPAGE, &z) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

/* Set (wp) or clear write-protection of one page; clearing wakes waiters. */
static int uffd_protect(int uffd, uint64_t addr, bool wp)
{
	struct uffdio_writeprotect w = {
		.range = { .start = addr, .len = PAGE },
		.mode = wp ? UFFDIO_WRITEPROTECT_MODE_WP : 0,
	};

	return ioctl(uffd, UFFDIO_WRITEPROTECT, &w) < 0 ? -errno : 0;
}

static void uffd_wake(int uffd, uint64_t addr)
{
	struct uffdio_range r = { .start = addr, .len = PAGE };

	ioctl(uffd, UFFDIO_WAKE, &r);
}

static void observe(struct backing *b, uint64_t ns)
{
	metric_observe(b->m_lat, (double)ns / 1e9);
}

static uint64_t cool_key(pid_t pid, uint64_t addr)
{
	return ((uint64_t)(uint32_t)pid << 32 ^ (addr >> 12)) | 1;
}

/*
 * A page came back: not evicted again for the cool-down. A page that
 * comes back from the pool while its last return is still remembered is
 * hot: its window goes to the kernel's KSM (ksm_handover).
 */
static void cool_note(struct backing *b, pid_t pid, uint64_t addr, bool pooled)
{
	uint64_t k = cool_key(pid, addr);
	size_t i = (size_t)((k * 0x9e3779b97f4a7c15ULL) >> 52) % COOLDOWN_SETS;

	pthread_mutex_lock(&b->lock);
	if (pooled && b->cool[i].key == k && b->nhot < HOT_MAX)
		b->hot[b->nhot++] = (struct hot){ pid, addr };
	b->cool[i].key = k;
	b->cool[i].until_ms = now_ms() + b->cfg->evict_cooldown_millisecs;
	pthread_mutex_unlock(&b->lock);
}

/* Lock held. */
static bool cool_active(struct backing *b, pid_t pid, uint64_t addr)
{
	uint64_t k = cool_key(pid, addr);
	size_t i = (size_t)((k * 0x9e3779b97f4a7c15ULL) >> 52) % COOLDOWN_SETS;

	return b->cool[i].key == k && b->cool[i].until_ms > now_ms();
}

/* ---- remote dups ----------------------------------------------------------- */

static size_t remote_slot(const struct cid *id)
{
	return (size_t)((id->lo ^ id->hi) * 0x9e3779b97f4a7c15ULL >> 40) % REMOTE_IDS;
}

void backing_remote_learn(struct backing *b, const struct cid *id, const struct dup_loc *d,
			  unsigned n)
{
	struct remote_id *r;

	if (n > REMOTE_MAX)
		n = REMOTE_MAX;
	pthread_mutex_lock(&b->lock);
	r = &b->remote[remote_slot(id)];
	r->id = *id;
	r->n = (uint8_t)n;
	for (unsigned i = 0; i < n; i++) {
		unsigned k;

		r->rem[i] = (struct rdup){ d[i].node, d[i].slot, d[i].gen };
		for (k = 0; k < b->naddrs && b->addrs[k].node != d[i].node; k++) {
		}
		if (k == b->naddrs && b->naddrs < NODES_KNOWN)
			b->naddrs++;
		if (k == NODES_KNOWN)
			k = d[i].node % NODES_KNOWN; /* many holders: the oldest may go */
		b->addrs[k].node = d[i].node;
		snprintf(b->addrs[k].addr, sizeof(b->addrs[k].addr), "%s", d[i].addr);
	}
	pthread_mutex_unlock(&b->lock);
}

/* Where node serves reads, into loc; false if unknown. */
static bool locate(struct backing *b, const struct rdup *r, struct dup_loc *loc)
{
	bool found = false;

	pthread_mutex_lock(&b->lock);
	for (unsigned k = 0; k < b->naddrs; k++)
		if (b->addrs[k].node == r->node && b->addrs[k].addr[0]) {
			memcpy(loc->addr, b->addrs[k].addr, sizeof(loc->addr));
			found = true;
			break;
		}
	pthread_mutex_unlock(&b->lock);
	loc->node = r->node;
	loc->slot = r->slot;
	loc->gen = r->gen;
	return found;
}

static int domain_index(const struct backing *b, uint8_t domain_id)
{
	for (unsigned i = 0; i < b->cfg->ndomains; i++)
		if (b->cfg->domains[i].id == domain_id)
			return (int)i;
	return -1;
}

/*
 * The bytes of a remote dup, checked against the content id: the first
 * replica that answers with the right bytes. Returns its index, or -1.
 */
static int fetch(struct backing *b, struct transport *tr, const struct rdup *rem, unsigned n,
		 const struct cid *id, uint8_t *buf)
{
	int d = domain_index(b, cid_domain_of(*id));

	for (unsigned i = 0; tr && d >= 0 && i < n; i++) {
		struct dup_loc loc;
		struct cid got;

		if (!locate(b, &rem[i], &loc) || tr->ops->read(tr, &loc, buf)) {
			metric_inc(b->m_remote_errors);
			continue;
		}
		got = cid_of(&b->domains[d], buf);
		if (got.hi == id->hi && got.lo == id->lo)
			return (int)i;
		metric_inc(b->m_remote_errors);
		log_warn("node %u slot %u/%u: bytes that are not the content they should hold",
			 rem[i].node, rem[i].slot, rem[i].gen);
	}
	return -1;
}

/* A backed page nobody can give back: the thread that needs it gets SIGBUS. */
static void lost_page(struct mm *m, const struct uffd_msg *msg, uint64_t addr, const char *why)
{
	pid_t tid = (pid_t)msg->arg.pagefault.feat.ptid;
	struct uffdio_poison p = { .range = { .start = addr, .len = PAGE } };

	metric_inc(m->b->m_sigbus);
	log_error("process %d thread %d: page %#llx cannot be brought back (%s): SIGBUS",
		  (int)m->pid, (int)tid, (unsigned long long)addr, why);
	/* Poisoned, the page gives SIGBUS to whichever thread touches it, in
	 * any pid namespace. Without it (before Linux 6.6) the thread the
	 * fault names is signalled, which is right in the agent's namespace. */
	if ((m->b->features & UFFD_FEATURE_POISON) && ioctl(m->uffd, UFFDIO_POISON, &p) == 0)
		return;
	syscall(SYS_tkill, tid, SIGBUS);
	uffd_wake(m->uffd, addr);
}

/* false: the mm is changing (an event is in flight); try again shortly. */
static bool on_pagefault(struct mm *m, const struct uffd_msg *msg)
{
	struct backing *b = m->b;
	uint64_t t0 = clock_ns(CLOCK_MONOTONIC), addr = msg->arg.pagefault.address & ~(uint64_t)(PAGE - 1);
	bool write = msg->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WRITE;
	struct bentry *e;
	bool pooled = false;
	int rc;

	if (msg->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP) {
		bool busy;

		/* The evictor releases writers of the page it works on. */
		pthread_mutex_lock(&m->lock);
		busy = m->evicting == addr;
		pthread_mutex_unlock(&m->lock);
		if (!busy && uffd_protect(m->uffd, addr, false) == -EAGAIN)
			return false;
		return true;
	}
	pthread_mutex_lock(&m->lock);
	e = tab_find(m, addr);
	if (!e) {
		/* Never backed: what the kernel itself would have given. */
		rc = write ? uffd_copy(m->uffd, addr, zeroes) : uffd_zeropage(m->uffd, addr);
		pthread_mutex_unlock(&m->lock);
		if (rc == -EAGAIN)
			return false;
		metric_inc(b->m_faults_fresh);
		if (rc && rc != -ENOENT && rc != -ESRCH)
			log_warn("process %d: cannot fill page %#llx: %s", (int)m->pid,
				 (unsigned long long)addr, strerror(-rc));
		if (rc)
			uffd_wake(m->uffd, addr); /* let it fault again */
		return true;
	}
	if (e->kind == B_ZERO) {
		rc = write ? uffd_copy(m->uffd, addr, zeroes) : uffd_zeropage(m->uffd, addr);
		if (!rc) {
			metric_inc(b->m_faults_zero);
			entry_release(m, e);
		}
	} else if (e->kind == B_REMOTE) {
		static uint8_t page[PAGE] __attribute__((aligned(PAGE))); /* fault thread's */

		if (fetch(b, b->fault_tr, e->rem, e->nrem, &e->id, page) < 0) {
			pthread_mutex_unlock(&m->lock);
			lost_page(m, msg, addr, "no replica could be read");
			return true;
		}
		rc = uffd_copy(m->uffd, addr, page);
		if (!rc) {
			metric_inc(b->m_faults_remote);
			entry_release(m, e);
		}
	} else {
		/* The slot's generation and id must be the entry's; its bytes were
		 * checked against the id when the dup was made, and a slot with
		 * references never changes. */
		struct cid got = { 0, 0 };
		const uint8_t *bytes = pool_page(b->pool, e->ref, &got);

		if (!bytes || got.hi != e->id.hi || got.lo != e->id.lo) {
			pthread_mutex_unlock(&m->lock);
			lost_page(m, msg, addr,
				  bytes ? "its slot holds another content" : "its slot is gone");
			return true;
		}
		rc = uffd_copy(m->uffd, addr, bytes);
		if (!rc) {
			metric_inc(b->m_faults_local);
			entry_release(m, e);
			pooled = true;
		}
	}
	pthread_mutex_unlock(&m->lock);
	if (rc == -EAGAIN)
		return false;
	if (rc) {
		if (rc != -ESRCH)
			log_warn("process %d: cannot bring back page %#llx: %s", (int)m->pid,
				 (unsigned long long)addr, strerror(-rc));
		uffd_wake(m->uffd, addr); /* let it fault again */
		return true;
	}
	if (m->pid)
		cool_note(b, m->pid, addr, pooled);
	observe(b, clock_ns(CLOCK_MONOTONIC) - t0);
	return true;
}

/* fork: the child's userfaultfd, and a copy of the table for it. */
static void on_fork(struct mm *m, int ufd)
{
	struct backing *b = m->b;
	struct mm *c = mm_new(b, -1, ufd, 0);
	int fl = fcntl(ufd, F_GETFL);

	if (!c || fl < 0 || fcntl(ufd, F_SETFL, fl | O_NONBLOCK) < 0) {
		/* Without it the child's backed pages read as zeroes: never. */
		log_error("process %d forked and the child's table cannot be kept", (int)m->pid);
		free(c);
		close(ufd);
		return;
	}
	c->handshaken = true;
	c->parent = m->pid;
	c->beacon = m->beacon;
	pthread_mutex_lock(&m->lock);
	for (size_t i = 0; i < m->cap; i++) {
		struct bentry *e = &m->tab[i];

		if (!e->page)
			continue;
		if (e->kind == B_POOL && pool_ref(b->pool, e->ref, 1))
			continue;
		if (e->kind == B_POOL)
			ref_changed(b, e->ref, &e->id);
		else if (e->kind == B_REMOTE)
			rref_changed(b, &e->rem[0], &e->id, 1);
		if (tab_put(c, e)) {
			if (e->kind == B_POOL) {
				pool_ref(b->pool, e->ref, -1);
				ref_changed(b, e->ref, &e->id);
			} else if (e->kind == B_REMOTE) {
				rref_changed(b, &e->rem[0], &e->id, -1);
			}
			continue;
		}
		metric_gauge_add(e->kind == B_POOL     ? b->m_backed_local
				 : e->kind == B_REMOTE ? b->m_backed_remote
						       : b->m_backed_zero,
				 1);
		metric_gauge_add(b->m_saved, PAGE);
	}
	pthread_mutex_unlock(&m->lock);
	metric_inc(b->m_forks);
	list_add(b, c);
}

static void on_remap(struct mm *m, uint64_t from, uint64_t to, uint64_t len)
{
	struct bentry *moved = NULL;
	size_t n = 0, cap = 0;

	pthread_mutex_lock(&m->lock);
	for (uint64_t a = from; m->n && a < from + len; a += PAGE) {
		struct bentry *e = tab_find(m, a);

		if (!e)
			continue;
		if (n == cap) {
			size_t nc = cap ? 2 * cap : 64;
			struct bentry *v = realloc(moved, nc * sizeof(*v));

			if (!v) {
				entry_release(m, e); /* cannot follow it: the page is lost */
				log_error("process %d: out of memory following an mremap",
					  (int)m->pid);
				continue;
			}
			moved = v;
			cap = nc;
		}
		moved[n] = *e;
		moved[n].page = (to + (a - from)) >> 12;
		n++;
		tab_del(m, e);
	}
	for (size_t i = 0; i < n; i++)
		if (tab_put(m, &moved[i])) {
			log_error("process %d: out of memory following an mremap", (int)m->pid);
			if (moved[i].kind == B_POOL)
				pool_ref(m->b->pool, moved[i].ref, -1);
		}
	if (m->evicting >= from && m->evicting < from + len) {
		m->evict_hits += 2; /* moved away: the evictor gives up */
		pthread_cond_broadcast(&m->cond);
	}
	pthread_mutex_unlock(&m->lock);
	free(moved);
}

static void on_remove(struct mm *m, uint64_t start, uint64_t end)
{
	pthread_mutex_lock(&m->lock);
	if (m->evicting >= start && m->evicting < end) {
		/* The evictor's own zap is one such event; it decides. */
		m->evict_hits++;
		pthread_cond_broadcast(&m->cond);
		if (start < m->evicting)
			drop_range(m, start, m->evicting);
		if (m->evicting + PAGE < end)
			drop_range(m, m->evicting + PAGE, end);
	} else {
		drop_range(m, start, end);
	}
	pthread_mutex_unlock(&m->lock);
}

static void keep_retry(struct mm *m, const struct uffd_msg *msg)
{
	if (m->nretry == m->capretry) {
		size_t cap = m->capretry ? 2 * m->capretry : 16;
		struct uffd_msg *v = realloc(m->retry, cap * sizeof(*v));

		if (!v) {
			log_error("process %d: out of memory keeping a fault to retry",
				  (int)m->pid);
			return;
		}
		m->retry = v;
		m->capretry = cap;
	}
	m->retry[m->nretry++] = *msg;
}

/* Faults that met a changing mm, once more; those still refused stay. */
static void retry_faults(struct mm *m)
{
	size_t n = m->nretry, k = 0;

	m->nretry = 0;
	for (size_t i = 0; i < n; i++)
		if (!on_pagefault(m, &m->retry[i]))
			m->retry[k++] = m->retry[i];
	m->nretry = k;
}

/* Read what the mm's userfaultfd has; false when it is finished. */
static bool drain_uffd(struct mm *m)
{
	/* One message per read: a fork is handled before any fault read after
	 * it is served (serving it first would miss the child's copy). */
	struct uffd_msg msgs[1];

	for (;;) {
		ssize_t n = read(m->uffd, msgs, sizeof(msgs));

		if (n < 0)
			return errno == EAGAIN || errno == EINTR;
		if (n == 0 || n % (ssize_t)sizeof(msgs[0]))
			return false;
		for (ssize_t i = 0; i < n / (ssize_t)sizeof(msgs[0]); i++) {
			const struct uffd_msg *msg = &msgs[i];

			switch (msg->event) {
			case UFFD_EVENT_PAGEFAULT:
				if (atomic_load(&m->b->reattaching))
					reattach_match(m, msg);
				if (!on_pagefault(m, msg))
					keep_retry(m, msg);
				break;
			case UFFD_EVENT_FORK:
				on_fork(m, (int)msg->arg.fork.ufd);
				break;
			case UFFD_EVENT_REMAP:
				on_remap(m, msg->arg.remap.from, msg->arg.remap.to,
					 msg->arg.remap.len);
				break;
			case UFFD_EVENT_REMOVE:
			case UFFD_EVENT_UNMAP:
				on_remove(m, msg->arg.remove.start, msg->arg.remove.end);
				break;
			default:
				break;
			}
		}
	}
}

static void *fault_main(void *arg)
{
	struct backing *b = arg;
	struct pollfd *pf = NULL;
	struct mm **mv = NULL;
	size_t cap = 0;

	for (;;) {
		size_t n = 0;

		pthread_mutex_lock(&b->lock);
		if (b->stop) {
			pthread_mutex_unlock(&b->lock);
			break;
		}
		{
			size_t want = 1;

			for (struct mm *m = b->mms; m; m = m->next)
				want++;
			if (want > cap) {
				struct pollfd *np = realloc(pf, want * sizeof(*np));
				struct mm **nm = np ? realloc(mv, want * sizeof(*nm)) : NULL;

				if (np)
					pf = np;
				if (nm)
					mv = nm;
				if (np && nm)
					cap = want;
			}
		}
		pf[n++] = (struct pollfd){ b->wake_fd, POLLIN, 0 };
		for (struct mm *m = b->mms; m && n < cap; m = m->next) {
			atomic_fetch_add(&m->refs, 1);
			mv[n] = m;
			pf[n++] = (struct pollfd){ m->uffd, POLLIN, 0 };
		}
		pthread_mutex_unlock(&b->lock);
		{
			bool retrying = false;

			for (size_t i = 1; i < n; i++)
				retrying = retrying || mv[i]->nretry;
			if (poll(pf, n, retrying ? 1 : -1) < 0 && errno != EINTR)
				log_warn("fault thread poll: %s", strerror(errno));
		}
		if (pf[0].revents & POLLIN) {
			uint64_t v;

			if (read(b->wake_fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
				log_warn("fault thread wake: %s", strerror(errno));
		}
		for (size_t i = 1; i < n; i++) {
			if (mv[i]->nretry)
				retry_faults(mv[i]);
			if (pf[i].revents && !drain_uffd(mv[i])) {
				/* A fork child's userfaultfd ended: the child is gone. */
				list_del_unpaired(b, mv[i]);
			}
			mm_put(mv[i]);
		}
	}
	free(pf);
	free(mv);
	return NULL;
}

/* ---- eviction ------------------------------------------------------------------- */

void backing_offer(struct backing *b, pid_t pid, uint64_t addr, enum evict_kind kind,
		   struct pool_ref ref, const struct cid *id)
{
	bool dropped = false;

	if (!b->cfg->evict || addr % PAGE)
		return;
	pthread_mutex_lock(&b->lock);
	if (cool_active(b, pid, addr)) {
		pthread_mutex_unlock(&b->lock);
		return;
	}
	if (b->noffers < OFFER_MAX) {
		struct offer *o = &b->offers[(b->offer_head + b->noffers++) % OFFER_MAX];

		o->pid = pid;
		o->addr = addr;
		o->kind = (uint8_t)kind;
		o->ref = ref;
		if (id)
			o->id = *id;
		else
			memset(&o->id, 0, sizeof(o->id));
		pthread_cond_signal(&b->offer_cond);
	} else {
		dropped = true;
	}
	pthread_mutex_unlock(&b->lock);
	if (dropped)
		metric_inc(b->m_offers_dropped);
}

bool backing_offer_remote(struct backing *b, pid_t pid, uint64_t addr, const struct cid *id)
{
	struct remote_id r = { .n = 0 };

	if (!b->cfg->evict || addr % PAGE)
		return false;
	pthread_mutex_lock(&b->lock);
	{
		const struct remote_id *x = &b->remote[remote_slot(id)];

		if (x->n && x->id.hi == id->hi && x->id.lo == id->lo)
			r = *x;
	}
	if (!r.n || cool_active(b, pid, addr) || b->noffers >= OFFER_MAX) {
		pthread_mutex_unlock(&b->lock);
		return false;
	}
	b->offers[(b->offer_head + b->noffers++) % OFFER_MAX] = (struct offer){
		.pid = pid, .kind = EVICT_REMOTE, .nrem = r.n, .addr = addr, .id = *id
	};
	memcpy(b->offers[(b->offer_head + b->noffers - 1) % OFFER_MAX].rem, r.rem, sizeof(r.rem));
	pthread_cond_signal(&b->offer_cond);
	pthread_mutex_unlock(&b->lock);
	return true;
}

static bool all_zero(const uint8_t *p)
{
	static const uint64_t z[PAGE / 8];

	return memcmp(p, z, PAGE) == 0;
}

/* Wait on m->cond until cond_fn holds or ms pass; lock held. */
static bool wait_for(struct mm *m, bool (*cond_fn)(const struct mm *), unsigned ms)
{
	struct timespec until;

	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += ms / 1000;
	until.tv_nsec += (long)(ms % 1000) * 1000000L;
	if (until.tv_nsec >= 1000000000L) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
	while (!cond_fn(m))
		if (pthread_cond_timedwait(&m->cond, &m->lock, &until) == ETIMEDOUT)
			return cond_fn(m);
	return true;
}

/* Count a new entry (its reference, the gauges). Lock held. */
static void entry_counted(struct backing *b, const struct bentry *e)
{
	if (e->kind == B_POOL)
		ref_changed(b, e->ref, &e->id);
	else if (e->kind == B_REMOTE)
		rref_changed(b, &e->rem[0], &e->id, 1);
	metric_gauge_add(e->kind == B_POOL     ? b->m_backed_local
			 : e->kind == B_REMOTE ? b->m_backed_remote
					       : b->m_backed_zero,
			 1);
	metric_gauge_add(b->m_saved, PAGE);
}

/* The evictor's entry at addr, if it is still there and still its own. */
static struct bentry *own_entry(struct mm *m, const struct bentry *e)
{
	struct bentry *x = tab_find(m, e->page << 12);

	if (!x || x->kind != e->kind || x->ref.slot != e->ref.slot || x->ref.gen != e->ref.gen ||
	    x->id.hi != e->id.hi || x->id.lo != e->id.lo)
		return NULL;
	return x;
}

static bool zap_or_gone(const struct mm *m)
{
	return m->zap_done || m->gone || m->orphan;
}

static bool removal_or_gone(const struct mm *m)
{
	return m->evict_hits > 0 || m->gone || m->orphan;
}

/*
 * After the zap was sent: the answer (or the end of the process, or of
 * the agent) decides what becomes of the entry. m->lock held; released,
 * with the evictor's reference on m.
 */
static void evict_end(struct backing *b, struct mm *m, const struct bentry *e)
{
	uint64_t addr = e->page << 12;
	const char *why = NULL;

	while (!zap_or_gone(m) && !atomic_load(&b->stopping))
		wait_for(m, zap_or_gone, 200);
	if (m->zap_done && m->zap_status == 0) {
		/* The page is gone: wait for our own REMOVE. More than one
		 * means the program dropped or moved the page too, and it
		 * must then read as the program left it. */
		while (!wait_for(m, removal_or_gone, 200) && !atomic_load(&b->stopping)) {
		}
		if (m->evict_hits > 1) {
			struct bentry *x = own_entry(m, e);

			if (x)
				entry_release(m, x);
			why = "the program removed the page";
		}
	} else if (m->zap_done && m->zap_status != -ECONNRESET) {
		/* Not dropped (or the process is gone): the entry must not stay. */
		struct bentry *x = own_entry(m, e);

		if (x)
			entry_release(m, x);
		why = m->zap_status == -ESRCH ? "the process is gone" : "the zap failed";
	} else {
		/* No answer (the agent is stopping, or the process closed its
		 * connection): the page may or may not have been dropped. The
		 * entry stays: a present page never consults it, a missing
		 * one is served from it. */
		why = m->zap_done ? "the process left" : "the agent is stopping";
	}
	m->evicting = 0;
	pthread_mutex_unlock(&m->lock);
	if (!why)
		metric_inc(b->m_evicted);
	else
		metric_inc(b->m_aborted);
	/* Writers that raced the eviction: they retry, and either find the
	 * page or fault it back. */
	uffd_protect(m->uffd, addr, false);
	uffd_wake(m->uffd, addr);
	if (why)
		log_debug("process %d page %#llx: %s", (int)m->pid, (unsigned long long)addr, why);
	mm_put(m);
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

/* Evictor thread: end the parked evictions whose answer came (all of
 * them once the agent stops). */
static void unpark(struct backing *b, bool all)
{
	for (struct parked **pp = &b->parked, *p; (p = *pp);) {
		pthread_mutex_lock(&p->m->lock);
		if (!all && !zap_or_gone(p->m)) {
			pthread_mutex_unlock(&p->m->lock);
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
 * One page: write-protect, read, compare, enter, zap, release. Any doubt
 * before the zap leaves the page where it is. From the moment it is
 * entered, the entry owns the reference on its dup and is counted, so
 * whoever removes it (a fault, an event, this function) releases it once.
 */
static void evict_one(struct backing *b, const struct offer *o, uint8_t *buf, uint8_t *rbuf)
{
	struct mm *m = mm_get(b, o->pid);
	struct bentry e = { .page = o->addr >> 12, .ref = o->ref, .id = o->id, .kind = o->kind };
	int first;
	struct iovec local = { buf, PAGE }, remote = { (void *)(uintptr_t)o->addr, PAGE };
	struct cksm_local zap = cksm_local_msg(CKSM_LOCAL_ZAP);
	const void *dup = NULL;
	const char *why = NULL;
	bool entered = false, ok;

	if (!m)
		return;
	if (o->kind == EVICT_POOL) {
		/* At most max_page_sharing pages on one dup, as with KSM. */
		dup = pool_page(b->pool, o->ref, NULL);
		if (!dup || pool_refs(b->pool, o->ref) >= b->cfg->max_page_sharing ||
		    pool_ref(b->pool, o->ref, 1)) {
			mm_put(m);
			return; /* the dup went meanwhile, or is full */
		}
	} else if (o->kind == EVICT_REMOTE) {
		/* The replica the page will come back from, read and checked now;
		 * it is compared with the page once that is write-protected. */
		first = fetch(b, b->evict_tr, o->rem, o->nrem, &o->id, rbuf);
		if (first < 0) {
			mm_put(m);
			return;
		}
		e.nrem = 0;
		for (unsigned i = (unsigned)first; i < o->nrem; i++)
			e.rem[e.nrem++] = o->rem[i];
		dup = rbuf;
	}
	pthread_mutex_lock(&m->lock);
	ok = !m->evicting && !m->orphan && !tab_find(m, o->addr) && !ksm_owns(m, o->addr);
	if (ok) {
		m->evicting = o->addr;
		m->evict_hits = 0;
	}
	pthread_mutex_unlock(&m->lock);
	if (!ok)
		goto out_ref;
	if (uffd_protect(m->uffd, o->addr, true)) {
		why = "not registered";
		goto out_idle;
	}
	if (process_vm_readv(m->pid, &local, 1, &remote, 1, 0) != PAGE) {
		why = "unreadable";
		goto out_unprotect;
	}
	if (o->kind == EVICT_ZERO ? !all_zero(buf) : memcmp(buf, dup, PAGE) != 0) {
		why = "changed";
		goto out_unprotect;
	}
	pthread_mutex_lock(&m->lock);
	ok = !m->evict_hits && !m->orphan && tab_put(m, &e) == 0;
	if (ok) {
		entered = true;
		entry_counted(b, &e);
		m->zap_token = ++b->next_token;
		m->zap_done = false;
		zap.token = m->zap_token;
	}
	pthread_mutex_unlock(&m->lock);
	if (!ok) {
		why = "moved, or out of memory";
		goto out_unprotect;
	}
	zap.a = o->addr;
	zap.b = PAGE;
	pthread_mutex_lock(&m->lock);
	if (local_send(m->sock, &zap, -1) == 0) {
		/* Until the process answers (or is gone): the page stays
		 * write-protected meanwhile, so nothing written can be lost.
		 * A process that does not answer in time (stopped, say) is
		 * parked: the evictor goes on with other processes. */
		if (!wait_for(m, zap_or_gone, ZAP_WAIT_MS) && !atomic_load(&b->stopping)) {
			pthread_mutex_unlock(&m->lock);
			park(b, m, &e);
			return;
		}
	} else {
		m->zap_done = true;
		m->zap_status = -ESRCH;
	}
	evict_end(b, m, &e);
	return;
out_unprotect:
	uffd_protect(m->uffd, o->addr, false);
out_idle:
	pthread_mutex_lock(&m->lock);
	m->evicting = 0;
	pthread_mutex_unlock(&m->lock);
	uffd_wake(m->uffd, o->addr);
	metric_inc(b->m_aborted);
	log_debug("process %d page %#llx stays: %s", (int)m->pid, (unsigned long long)o->addr, why);
out_ref:
	if (o->kind == EVICT_POOL && !entered)
		pool_ref(b->pool, o->ref, -1);
	mm_put(m);
}

static void *evict_main(void *arg)
{
	struct backing *b = arg;
	uint8_t *buf = aligned_alloc(PAGE, 2 * PAGE);
	double tokens = 0, rate = b->cfg->evict_rate;
	uint64_t last = clock_ns(CLOCK_MONOTONIC);
	struct offer o;

	if (!buf)
		return NULL;
	for (;;) {
		pthread_mutex_lock(&b->lock);
		while (!b->stop_evicting && !b->noffers) {
			if (!b->parked) {
				pthread_cond_wait(&b->offer_cond, &b->lock);
				continue;
			}
			/* Parked evictions are looked at every 200 ms. */
			pthread_mutex_unlock(&b->lock);
			unpark(b, false);
			pthread_mutex_lock(&b->lock);
			if (b->parked && !b->noffers && !b->stop_evicting) {
				struct timespec ts;

				clock_gettime(CLOCK_REALTIME, &ts);
				ts.tv_nsec += 200000000L;
				if (ts.tv_nsec >= 1000000000L) {
					ts.tv_sec++;
					ts.tv_nsec -= 1000000000L;
				}
				pthread_cond_timedwait(&b->offer_cond, &b->lock, &ts);
			}
		}
		if (b->stop_evicting) {
			pthread_mutex_unlock(&b->lock);
			unpark(b, true);
			break;
		}
		o = b->offers[b->offer_head];
		b->offer_head = (b->offer_head + 1) % OFFER_MAX;
		b->noffers--;
		pthread_mutex_unlock(&b->lock);
		/* At most evict_rate pages per second, in bursts of up to one
		 * tenth of a second's worth. */
		{
			uint64_t now = clock_ns(CLOCK_MONOTONIC);

			tokens += (double)(now - last) / 1e9 * rate;
			last = now;
			if (tokens > rate / 10 + 1)
				tokens = rate / 10 + 1;
			if (tokens < 1) {
				uint64_t ns = (uint64_t)((1 - tokens) / rate * 1e9);
				struct timespec ts = { (time_t)(ns / 1000000000ULL),
						       (long)(ns % 1000000000ULL) };

				nanosleep(&ts, NULL);
				tokens = 1;
				last = clock_ns(CLOCK_MONOTONIC);
			}
			tokens -= 1;
		}
		if (b->parked)
			unpark(b, false);
		evict_one(b, &o, buf, buf + PAGE);
	}
	free(buf);
	return NULL;
}

/* ---- set-up ---------------------------------------------------------------------- */

/*
 * Who may attach: anyone (mode 0666), or with socket_group the members of
 * that group (root:GROUP, mode 0660). Each process is served only with
 * its own userfaultfd, whoever it is; the group keeps other users from
 * the agent's capacity.
 */
static int socket_access(const char *path, const char *group)
{
	struct group gr, *g = NULL;
	char buf[4096];

	if (!group[0])
		return chmod(path, 0666) ? -errno : 0;
	if (getgrnam_r(group, &gr, buf, sizeof(buf), &g) || !g)
		return -ENOENT;
	if (chown(path, 0, g->gr_gid) || chmod(path, 0660))
		return -errno;
	return 0;
}

static int listen_on(const char *path, const char *group)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
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
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 64) < 0) {
		int e = -errno;

		close(fd);
		return e;
	}
	rc = socket_access(path, group);
	if (rc) {
		close(fd);
		unlink(path);
		return rc == -ENOENT ? -ENXIO : rc;
	}
	return fd;
}

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

struct backing *backing_create(const struct config *cfg, uv_loop_t *loop, struct metrics *reg,
			       struct pool *pool, const struct cid_domain *domains,
			       const struct auth_key *key, const char *name)
{
	struct backing *b = calloc(1, sizeof(*b));
	int rc;

	if (!b)
		return NULL;
	b->cfg = cfg;
	b->loop = loop;
	b->pool = pool;
	b->domains = domains;
	b->key = key;
	snprintf(b->name, sizeof(b->name), "%s", name);
	b->listen_fd = b->devfd = b->wake_fd = -1;
	pthread_mutex_init(&b->lock, NULL);
	pthread_mutex_init(&b->refs_lock, NULL);
	pthread_cond_init(&b->offer_cond, NULL);
	b->offers = calloc(OFFER_MAX, sizeof(*b->offers));
	b->refs = calloc(pool_slots(pool), sizeof(*b->refs));
	b->ref_pos = calloc(pool_slots(pool), sizeof(*b->ref_pos));
	b->remote = calloc(REMOTE_IDS, sizeof(*b->remote));
	b->fault_tr = tcp_transport_create(key, name, 2000);
	b->evict_tr = tcp_transport_create(key, name, 2000);
	if (!b->offers || !b->refs || !b->ref_pos || !b->remote || !b->fault_tr || !b->evict_tr ||
	    register_metrics(b, reg))
		goto fail;
	b->devfd = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
	if (b->devfd < 0) {
		log_error("cannot open /dev/userfaultfd: %s (processes cannot attach)",
			  strerror(errno));
		goto fail;
	}
	/* What this kernel offers, asked of a userfaultfd of our own. */
	{
		struct uffdio_api api = { .api = UFFD_API };
		int probe = ioctl(b->devfd, USERFAULTFD_IOC_NEW, O_CLOEXEC);
		uint64_t want = UFFD_FEATURE_EVENT_FORK | UFFD_FEATURE_EVENT_REMAP |
				UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_UNMAP |
				UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_THREAD_ID;

		if (probe < 0 || ioctl(probe, UFFDIO_API, &api) < 0 ||
		    (api.features & want) != want) {
			log_error(
				"this kernel's userfaultfd lacks events or write-protection (processes cannot attach)");
			if (probe >= 0)
				close(probe);
			goto fail;
		}
		b->features = want | (api.features & UFFD_FEATURE_POISON);
		close(probe);
	}
	b->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (b->wake_fd < 0)
		goto fail;
	rc = listen_on(cfg->socket_path, cfg->socket_group);
	if (rc == -ENXIO) {
		log_error("cannot listen on %s: there is no group %s (socket_group)",
			  cfg->socket_path, cfg->socket_group);
		goto fail;
	}
	if (rc < 0) {
		log_error("cannot listen on %s: %s", cfg->socket_path, strerror(-rc));
		goto fail;
	}
	b->listen_fd = rc;
	/* The threads first: a failure after the loop's handles are in
	 * would leave them pointing into freed memory. */
	if (pthread_create(&b->fault_thread, NULL, fault_main, b) == 0) {
		if (pthread_create(&b->evict_thread, NULL, evict_main, b) == 0) {
			b->threads = true;
		} else {
			pthread_mutex_lock(&b->lock);
			b->stop = true;
			pthread_mutex_unlock(&b->lock);
			wake_faults(b);
			pthread_join(b->fault_thread, NULL);
		}
	}
	if (!b->threads) {
		log_error("cannot start the fault and eviction threads");
		unlink(cfg->socket_path);
		goto fail;
	}
	uv_poll_init(loop, &b->lpoll, b->listen_fd);
	b->lpoll.data = b;
	uv_poll_start(&b->lpoll, UV_READABLE, on_accept);
	uv_timer_init(loop, &b->ranges);
	b->ranges.data = b;
	uv_timer_start(&b->ranges, on_ranges, 1000, 1000);
	uv_async_init(loop, &b->reattach_async, on_reattach);
	b->reattach_async.data = b;
	log_info("processes attach at %s (page pool of %zu slots)", cfg->socket_path,
		 pool_slots(pool));
	return b;
fail:
	if (b->listen_fd >= 0)
		close(b->listen_fd);
	if (b->devfd >= 0)
		close(b->devfd);
	if (b->wake_fd >= 0)
		close(b->wake_fd);
	free(b->offers);
	free(b->refs);
	free(b->ref_pos);
	free(b->remote);
	if (b->fault_tr)
		b->fault_tr->ops->destroy(b->fault_tr);
	if (b->evict_tr)
		b->evict_tr->ops->destroy(b->evict_tr);
	free(b);
	return NULL;
}

void backing_set_hooks(struct backing *b, void (*attached)(void *arg, pid_t pid, bool merge_all),
		       void (*detached)(void *arg, pid_t pid), void *arg)
{
	b->attached = attached;
	b->detached = detached;
	b->hook_arg = arg;
}

static void on_backing_closed(uv_handle_t *h)
{
	struct backing *b = h->data;

	free(b->offers);
	free(b->refs);
	free(b->ref_pos);
	free(b->remote);
	free(b->rrefs);
	free(b->rindex);
	close(b->wake_fd);
	close(b->devfd);
	pthread_mutex_destroy(&b->lock);
	pthread_mutex_destroy(&b->refs_lock);
	pthread_cond_destroy(&b->offer_cond);
	free(b);
}

/*
 * Put every backed page back before the userfaultfds close: without the
 * agent a missing page would read as zeroes.
 */
static void restore_all(struct backing *b)
{
	static uint8_t page[PAGE] __attribute__((aligned(PAGE)));
	size_t done = 0, failed = 0;

	for (struct mm *m = b->mms; m; m = m->next) {
		bool remote_ok = true;

		if (!m->n || mm_exited(m))
			continue; /* nothing backed, or nobody left to read it */
		/* Events the process caused meanwhile make copies fail with
		 * EAGAIN until they are read: read them, and go again. */
		for (int round = 0; m->n && round < 100; round++) {
			size_t again = 0;

			pthread_mutex_lock(&m->lock);
			for (size_t i = 0; i < m->cap;) {
				struct bentry *e = &m->tab[i];
				const void *bytes = e->kind == B_POOL
							    ? pool_page(b->pool, e->ref, NULL)
							    : zeroes;
				int rc;

				if (!e->page) {
					i++;
					continue;
				}
				/* Holders that do not answer now will not later: after
				 * the first failure the rest of this mm's remote pages
				 * are not waited for. */
				if (e->kind == B_REMOTE)
					bytes = remote_ok && fetch(b, b->fault_tr, e->rem, e->nrem,
								   &e->id, page) >= 0
							? page
							: NULL;
				if (e->kind == B_REMOTE && !bytes)
					remote_ok = false;
				rc = bytes ? uffd_copy(m->uffd, e->page << 12, bytes) : -ESTALE;
				if (rc == -EAGAIN) {
					again++;
					i++;
					continue;
				}
				if (rc && rc != -ESRCH && rc != -ENOENT)
					failed++;
				else
					done++;
				entry_release(m, e); /* slot i holds the next entry now */
			}
			pthread_mutex_unlock(&m->lock);
			if (!again)
				break;
			drain_uffd(m);
			usleep(1000);
		}
		failed += m->n;
	}
	if (failed)
		log_error(
			"brought back %zu backed pages before stopping; %zu could not be and will read as zeroes",
			done, failed);
	else if (done)
		log_info("brought back %zu backed pages before stopping", done);
}

void backing_destroy(struct backing *b)
{
	struct timespec until;
	struct mm *m;

	if (!b)
		return;
	/* The evictor first: the eviction under way may finish (its process
	 * answering and the fault thread reading the removal) for a second;
	 * after that its waits give up and the entry stays. */
	pthread_mutex_lock(&b->lock);
	b->stop_evicting = true;
	pthread_cond_broadcast(&b->offer_cond);
	pthread_mutex_unlock(&b->lock);
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += 1;
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
	restore_all(b);
	b->fault_tr->ops->destroy(b->fault_tr);
	b->evict_tr->ops->destroy(b->evict_tr);
	uv_poll_stop(&b->lpoll);
	close(b->listen_fd);
	unlink(b->cfg->socket_path);
	/* Close callbacks run last-registered first: the backing's own goes
	 * first here, so that it runs after every mm's, which still use b. */
	uv_close((uv_handle_t *)&b->lpoll, on_backing_closed);
	uv_timer_stop(&b->ranges);
	uv_close((uv_handle_t *)&b->ranges, NULL);
	uv_close((uv_handle_t *)&b->reattach_async, NULL);
	for (struct mm *p = b->pending; p; p = p->pnext)
		if (!uv_is_closing((uv_handle_t *)&p->poll)) {
			uv_poll_stop(&p->poll);
			uv_close((uv_handle_t *)&p->poll, on_closed);
		}
	while ((m = b->mms)) {
		b->mms = m->next;
		m->handshaken = false; /* off the list: its close only drops it */
		if (m->sock >= 0 && !m->orphan && !uv_is_closing((uv_handle_t *)&m->poll)) {
			uv_poll_stop(&m->poll);
			uv_close((uv_handle_t *)&m->poll, on_closed);
		} else if (m->sock < 0 || m->orphan) {
			mm_put(m);
		} /* else its close is under way and drops it */
	}
}
