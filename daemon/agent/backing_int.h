/*
 * backing_int.h - the backing's insides, shared by the files that make it:
 *
 *   backing.c  the struct, create and destroy, bringing every page back
 *              at stop
 *   mm.c       an mm's lifetime and the accounting of its entries
 *   refs.c     the reference changes the shards are told
 *   attach.c   the socket, the handshake, ranges, forked children
 *              re-attaching, and the once-a-second housekeeping
 *   fault.c    the fault thread: faults and userfaultfd events
 *   evict.c    offers, the evictor thread, parked processes
 *   ksm.c      hot duplicates handed to the kernel's KSM
 *   remote.c   where other nodes' dups are, and reading them checked
 *   remap.h    what a back-end does to a process's memory (remap_libcksm.c)
 *   uffd.h     the userfaultfd ioctls
 *   btab.h     the backed-page table; rrefs.h, references on others' dups
 *
 * Threads:
 *   loop    the socket: accepts, handshakes, RANGE messages, ZAPPED
 *           answers, the end of a connection (the process exited or
 *           exec'd: its mm is forgotten and its references released),
 *           the KSM hand-over and housekeeping timer;
 *   fault   every mm's userfaultfd: faults and events;
 *   evict   the offer queue: write-protect, compare, zap.
 *
 * Locks, in the order they are taken (a thread holding one may take only
 * those below it):
 *   1. mm.lock       an mm's table, its eviction under way, its zap
 *                    answer, its KSM windows
 *   2. backing.lock  the list of mms, offers, re-attaches, the cool-down
 *                    and hot tables, remote dups and holders' addresses,
 *                    stop
 *   3. leaves: backing.refs_lock (changes of this node's pool slots'
 *      counts), the rrefs' own lock, the pool's lock.
 * An mm is reference-counted (mm_get, mm_put); the list holds one
 * reference, and whoever takes an mm off it drops that one.
 */
#ifndef CKSM_BACKING_INT_H
#define CKSM_BACKING_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <linux/userfaultfd.h>
#include <uv.h>

#include "backing.h"
#include "btab.h"
#include "local.h"
#include "metrics.h"
#include "remap.h"
#include "rrefs.h"
#include "transport.h"
#include "wset.h"

#define PAGE		 4096u
#define OFFER_MAX	 65536u	    /* pages waiting for the evictor */
#define ZAP_WAIT_MS	 250	    /* a process that does not answer a zap by then */
#define HOLD_MS		 20	    /* a move's events held back at most so long (evict.c) */
#define SCRUB_WAIT_MS	 50	    /* ... after the scrubs asked before it were answered */
#define OWN_MAX		 8	    /* libcksm's own ranges (OWN) kept per process */
#define COOLDOWN_SETS	 4096u	    /* recently faulted pages remembered */
#define KSM_WINDOW	 (2u << 20) /* what one hot page hands to the kernel's KSM */
#define KSM_WINDOWS	 64u	    /* ... at most this many per process */
#define KSM_RATE_MIN	 100u	    /* manage: pages_to_scan at least */
#define HOT_MAX		 256u	    /* hot pages waiting for the loop */
#define REMOTE_IDS	 16384u	    /* contents whose remote dups are remembered */
#define PENDING_MAX	 64	    /* connections still in the handshake */
#define PENDING_PER_USER 32	    /* ... of one uid (root excepted) */
#define GAVE_WAY_LOGS	 4	    /* their giving way logged one by one a second */
#define HELLO_WAIT_MS	 5000	    /* ... each for at most this long */
#define REMOVED_MAX	 256	    /* ranges the program dropped lately, per mm */
#define REMOVED_MS	 2000	    /* ... not evicted for this long after */

/*
 * What an mm keeps in the state directory beside its table (the file
 * mm-KEY, mapped shared; the table is tab-KEY): whose it is, and what the
 * agent was doing to it, so that an agent killed at any point is
 * followed by one that goes on from there (attach.c, resume).
 */
struct mm_state {
	uint64_t magic;
	uint32_t version, size;
	int32_t pid;	     /* 0 for a fork child not re-attached yet */
	int32_t parent;	     /* a fork child's parent */
	uint64_t start_time; /* the process's, in clock ticks since boot (/proc/PID/stat) */
	uint64_t beacon;
	uint64_t evicting;	/* address under eviction, 0 if none (lock) */
	uint64_t zap_token;	/* the zap asked for it (lock) */
	uint32_t evict_hits;	/* removals of that page seen meanwhile (lock) */
	uint32_t inbox_counted; /* the inbox's event is in evict_hits already (lock) */
	struct uffd_msg inbox;	/* an event read and not applied yet (lock) */
	uint8_t mark[16];	/* the beacon's mark (local.h); zeroes: none */
	int32_t kid_pid;	/* a fork child not attached yet: its pid (KID), 0 if not told */
	uint32_t handed;	/* ... its userfaultfd is about to go to the parent (CHILD) */
	uint64_t kid_start;	/* ... and its start time */
};

#define MM_STATE_MAGIC	 0x6574617473736d63ull /* "cmsstate" */
#define MM_STATE_VERSION 1u

/* One served address space: a libcksm process, or a fork child of one. */
/* 256 KiB regions of a process whose pages the kernel refused to move lately (pinned). */
#define BUSY_MAX    64
#define BUSY_MS	    10000
#define BUSY_REGION (256ULL << 10)

struct mm {
	struct backing *b;
	atomic_int refs;
	const struct remap_ops *remap; /* how its pages are dropped */
	int sock;		       /* -1: a fork child's, with no libcksm connection */
	int uffd;
	pid_t pid;	     /* 0 for a fork child until it re-attaches */
	uid_t uid;	     /* a connection's peer, as the kernel vouches for it */
	int pidfd;	     /* ... and that process (-1: none), alive while not readable */
	const char *refused; /* why that peer may not attach, or NULL */
	pid_t parent;	     /* a fork child's: who forked it (0 if not known) */
	uint64_t beacon;     /* the process's beacon mapping (local.h), 0 if none */
	bool scratch_asked;  /* its hello said it has a scratch (local.h) */
	uint64_t scratch;    /* ... registered: remap_move drops its pages, 0 if none */
	uint8_t scrub[CKSM_LOCAL_SCRATCH_PAGES / CKSM_LOCAL_SCRUB_PAGES]; /* enum scrub (lock) */
	unsigned scratch_next;	     /* the scratch page to fill next (lock) */
	uint64_t moved_to;	     /* ... and the one the last zap moves the page into (lock) */
	atomic_bool events_held;     /* a move runs: its userfaultfd is not read (evict.c) */
	uint64_t fenced, fenced_len; /* scratch unregistered to end a hold early (lock) */
	struct own {
		uint64_t lo, hi; /* libcksm's own memory (OWN): never evicted */
	} own[OWN_MAX];		 /* (lock) */
	unsigned nown;
	struct busy {
		uint64_t region, until_ms; /* a region where a page was refused as pinned */
	} busy[BUSY_MAX];		   /* (lock) */
	unsigned busy_next;
	int beacon_idx; /* a re-attaching connection's beacon page, -1 if none */
	bool claimed;	/* a fork child's mm paired with a connection (b->lock) */
	struct ksm_window {
		uint64_t start, end;
		bool sent;
	} ksm[KSM_WINDOWS]; /* handed to the kernel's KSM: never evicted (lock) */
	unsigned nksm;
	bool merge_all;
	uint64_t merge_min;
	bool handshaken;
	bool hello_seen;	/* the handshake's first message came */
	bool wants_resume;	/* its hello said RESUME comes next */
	uint64_t born_ms;	/* loop time of the connection */
	struct mm *pnext;	/* in the backing's pending list, until handshaken */
	bool orphan;		/* its connection closed while it lives: served, not evicted */
	atomic_bool foreign;	/* its pid's memory is not its userfaultfd's (evictor) */
	bool unkept;		/* it answered a zap and kept the page: not evicted (lock) */
	uint64_t evict_after;	/* no eviction of it before (now_ms; lock) ... */
	unsigned evict_backoff; /* ... set after a late or failed zap, doubling (ms) */
	bool foreign_ended;	/* ... and its connection was ended for it (b->lock) */
	atomic_bool bring_home; /* ... and its pages are to come home (the fault thread) */
	bool damaged;		/* its kept table was: a page without an entry is lost */
	atomic_bool dontcopy;	/* pages of its MADV_DONTFORK memory may go (scanner) */
	bool gone;		/* off the list */
	uv_poll_t poll;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct btab tab; /* pages dropped and backed (lock) */
	struct retry {
		struct uffd_msg msg;
		uint64_t since_ms; /* when it was first read */
	} * retry;		   /* faults to serve again (fault thread's) */
	size_t nretry, capretry;
	bool short_of;	 /* an event could not be read for want of fds (fault thread's) */
	bool said_short; /* ... and that was logged */
	int pagemap;	 /* /proc/PID/pagemap, -1 until attached (the evictor's) */
	struct removed {
		uint64_t start, end, at_ms;
	} removed[REMOVED_MAX]; /* REMOVE and UNMAP events read lately (lock) */
	unsigned nremoved;
	struct mm_state *st; /* kept in the state directory (the files' key), or in memory */
	uint64_t key;
	int zap_status; /* the answer to st->zap_token (lock) */
	bool zap_done;
	bool resuming;		/* an eviction a killed agent left, waiting for its zap (lock) */
	struct bentry resume_e; /* ... its entry */
	struct mm *wnext;	/* in the backing's waiting list (kept, not attached again) */
	struct mm *next;	/* in the list (b->lock) */
};

/* A page offered for eviction. */
struct offer {
	pid_t pid;
	uint8_t kind; /* enum backed_by */
	uint8_t nrem;
	uint64_t addr;
	struct pool_ref ref;
	struct cid id;
	struct rdup rem[BTAB_REPLICAS];
	uint64_t learned_ms; /* BACKED_REMOTE: when a shard named rem */
};

/* Contents whose dups on other nodes a shard named (BACK_REMOTE). */
struct remote_id {
	struct cid id;
	uint8_t n;
	struct rdup rem[BTAB_REPLICAS];
	uint64_t learned_ms; /* when (remote.c: used for a third of dup_idle) */
};

struct backing {
	const struct config *cfg;
	uv_loop_t *loop;
	struct pool *pool;
	const struct cid_domain *domains;
	int listen_fd;
	bool attach_group; /* socket_group's members may attach */
	gid_t attach_gid;
	uv_poll_t lpoll;
	unsigned closing;		/* connections whose close has not run yet (loop) */
	uv_close_cb stop_cb, closed_cb; /* the backing's own end, once they ran (attach_stop) */
	int devfd;			/* /dev/userfaultfd */
	void (*attached)(void *arg, pid_t pid, bool merge_all);
	void (*detached)(void *arg, pid_t pid);
	void *hook_arg;
	uv_timer_t ranges; /* housekeeping, every second */
	uint64_t features; /* UFFD features this kernel has, of those asked for */
	bool evicts;	   /* [agent] evict, and a way to take pages out that sees pins */

	pthread_mutex_t lock;
	struct mm *mms;
	struct mm *waiting; /* kept by a killed agent, their processes not back yet (loop) */
	int state_fd;	    /* the state directory */
	struct reattach {
		struct mm *conn;  /* a forked child's connection, NULL if free */
		uint64_t addr;	  /* the beacon page it was told to read */
		struct mm *found; /* the fork child's mm that faulted there (a ref) */
	} reattach[CKSM_LOCAL_BEACON_PAGES];
	unsigned reattach_next;
	atomic_uint reattaching;   /* slots in use, looked at without the lock */
	uv_async_t reattach_async; /* the fault thread found a pair */
	struct mm *pending;	   /* in the handshake (loop thread only) */
	bool accept_paused;	   /* out of descriptors: listening again next tick (loop) */
	int npending;
	uint64_t gave_way_at; /* the second the last giving way was logged in */
	unsigned gave_way_logged, gave_way_quiet;
	int wake_fd; /* eventfd: the fault thread rebuilds its poll set */
	bool stop;
	bool stop_evicting;   /* the evictor takes no more offers */
	atomic_bool stopping; /* stop, for waits that do not hold b->lock */
	pthread_t fault_thread, evict_thread;
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
		uint8_t domain; /* its content's domain tag */
	} hot[HOT_MAX];		/* pages faulted back from the pool a second time */
	unsigned nhot;
	struct wset *wset; /* refaults by region, and each process's time in faults */
	struct metric *m_held[4], *m_regions[WSET_STATES], *m_broke;
	uint64_t broke_seen; /* wset's count of budgets spent, as last added (loop) */
	bool ksm_off_said;
	bool ksm_managed;	/* ksm = manage, and ksmd started */
	unsigned ksm_rate;	/* ... and the pages_to_scan set (ksm.c) */
	uint64_t ksm_handed;	/* ... pages handed over at the last turn */
	uint64_t ksm_catchup;	/* ... ksmd's full_scans to reach at full rate */
	uint32_t ksm_kept_said; /* domains (by index) told to keep their hot pages (loop) */

	const struct transport_kind *tk;
	const struct auth_key *key;
	struct transport *fault_tr, *evict_tr; /* one reader per thread */
	struct holder {
		uint32_t node;
		char addr[DUP_ADDR_MAX];
		uint64_t down_until_ms; /* its replicas not asked until then */
		uint32_t fails;		/* reads failed in a row */
	} * holders;			/* every holder told of, dense (lock) */
	size_t nholders, capholders;
	struct oaidx holder_ix;	     /* position + 1 by node id (lock) */
	struct remote_id *remote;    /* REMOTE_IDS, by id */
	atomic_uint remote_fresh_ms; /* how long a BACK_REMOTE answer is used */

	struct rrefs *rrefs; /* our references on other nodes' dups */
	pthread_mutex_t refs_lock;
	struct ref_count *refs; /* own slots whose counts changed, not taken yet */
	size_t nrefs;
	int32_t *ref_pos; /* per pool slot: index in refs + 1, 0 if none */

	struct metric *m_attached, *m_backed_zero, *m_backed_local, *m_evicted, *m_aborted;
	struct metric *m_faults_zero, *m_faults_local, *m_faults_fresh, *m_sigbus, *m_forks;
	struct metric *m_faults_remote, *m_backed_remote, *m_remote_errors, *m_remote_deferred;
	struct metric *m_remote_waits;
	struct metric *m_zap_failed, *m_offers_dropped, *m_saved, *m_reattached, *m_ksm_windows;
	struct metric *m_parked, *m_waiting, *m_resumed, *m_refused, *m_unkept, *m_gave_way;
	struct metric *m_pinned;
	struct metric_histogram *m_lat;
};

/* A page of zeroes: what a page never backed, or backed by nothing, reads. */
extern const uint8_t zero_page[PAGE];

/* ---- mm.c ----------------------------------------------------------------- */

struct mm *mm_new(struct backing *b, int sock, int uffd, pid_t pid);
/* Is m's process (by its pidfd) still the one that connected, alive? */
bool mm_alive(const struct mm *m);
void mm_put(struct mm *m);
/* The attached (evictable) mm of pid, with a reference, or NULL. */
struct mm *mm_get(struct backing *b, pid_t pid);
/* Put m on the list (the list takes the caller's reference). */
void list_add(struct backing *b, struct mm *m);
/* Take m off the list and drop the list's reference (once, whoever asks). */
void list_del(struct backing *b, struct mm *m);
/* The same for a fork child's mm, unless a connection was paired with it. */
void list_del_unpaired(struct backing *b, struct mm *m);
/* The fault thread rebuilds its set of userfaultfds. */
void wake_faults(struct backing *b);

/*
 * An entry's accounting, as one pair: entry_count when an entry comes
 * into a table (it owns its reference on what backs it from then on),
 * entry_release when it leaves one (dropped from the table too). m->lock
 * held for entry_release.
 */
void entry_count(struct backing *b, const struct bentry *e);
void entry_uncount(struct backing *b, const struct bentry *e);
void entry_release(struct mm *m, struct bentry *e);
/* Release every entry of m in [start, end). m->lock held. */
void drop_range(struct mm *m, uint64_t start, uint64_t end);
/*
 * The program dropped [start, end): its event is read before the kernel
 * drops the pages, so for a while a page there may still be present and
 * is about to go without another word. removed_note remembers the range
 * (REMOVED_MS); removed_covers says whether addr is in one. m->lock held.
 */
void removed_note(struct mm *m, uint64_t start, uint64_t end);
bool removed_covers(struct mm *m, uint64_t addr);

/* ---- backing.c ----------------------------------------------------------- */

/*
 * Fault thread: bring every backed page of m home, then unregister its
 * ranges if all came. Returns the pages left.
 */
size_t bring_home(struct backing *b, struct mm *m);

/* ---- keep.c -------------------------------------------------------------- */

/* Keep m's state and table in the state directory: 0 or -errno (logged). */
int keep_mm(struct mm *m);
/* m is the process pid's from now on (its start time too). m->lock or unlisted. */
void keep_pid(struct mm *m, pid_t pid);
/* Remove m's files (it is done with); keep_unmap frees its state. */
void keep_forget(struct mm *m);
void keep_unmap(struct mm *m);
/*
 * Load what a killed agent kept: every mm whose process still lives goes
 * on b->waiting with its entries counted; the others' files are removed.
 * Returns the number of entries loaded.
 */
size_t keep_load_all(struct backing *b);
/* Write every holder's address to the file "holders". b->lock held. */
void keep_holders(struct backing *b);
/* Learn the holders' addresses kept by an earlier agent. */
void keep_holders_load(struct backing *b);
/* Does the process of a waiting mm live (a fork child's: its parent)? */
bool keep_alive(const struct mm_state *st);
/* Is st a fork child not attached whose pid its parent told (KID)? */
bool keep_kid_known(const struct mm_state *st);
/* The start time of pid (clock ticks since boot), 0 if it is gone. */
uint64_t proc_start_time(pid_t pid);

/* ---- refs.c --------------------------------------------------------------- */

/* This node's references on one of its own slots changed (sent at the next flush). */
void ref_slot_changed(struct backing *b, struct pool_ref ref, const struct cid *id);
/* Our references on another node's dup changed by d. */
void ref_remote_changed(struct backing *b, const struct rdup *r, const struct cid *id, int32_t d);

/* ---- attach.c ------------------------------------------------------------- */

/* Listen on the socket: 0 or a negative errno (logged). */
int attach_listen(struct backing *b);
void attach_unlisten(struct backing *b);
/* The loop's handles: the listener, the housekeeping timer, re-attaches. */
void attach_start(struct backing *b);
/* Close every handle and connection; last runs when all are closed. */
void attach_stop(struct backing *b, uv_close_cb last);
/* The process is gone or misbehaved: forget it (loop thread). */
void mm_end(struct mm *m, const char *why);
/* The parent m keeps a copy of its fork child c's userfaultfd (CHILD). */
void kid_keep(struct mm *m, struct mm *c);
/* c's parent lets go of its copy: c re-attached, or is gone (FORGET). */
void kid_forget(struct mm *c);
/* Fault thread: pair a fork child's mm faulting on a beacon page. */
void reattach_match(struct mm *m, const struct uffd_msg *msg);

/* ---- fault.c -------------------------------------------------------------- */

void *fault_main(void *arg);
/* Read what m's userfaultfd has; false when it is finished. */
bool drain_uffd(struct mm *m);
/* Apply the event a killed agent read into m's kept inbox. m->lock held. */
void resume_inbox(struct mm *m);

/* ---- evict.c -------------------------------------------------------------- */

void *evict_main(void *arg);
/* The process answered the zap token (loop thread). */
void evict_zapped(struct mm *m, uint64_t token, int status);
/*
 * A killed agent's eviction of m, settled by the process's last zap as it
 * says at resume: token, state (CKSM_LOCAL_ZAP_*) and status (loop thread).
 */
void evict_resume(struct mm *m, uint64_t token, int state, int status);
/* A page came back: not evicted again for the cool-down; hot if it came
 * back from the pool while its last return is remembered. domain: the
 * tag of its content's domain. */
void cool_note(struct backing *b, pid_t pid, uint64_t addr, bool pooled, uint8_t domain);

/* ---- ksm.c ---------------------------------------------------------------- */

/* Is addr in a window handed to KSM? m->lock held. */
bool ksm_owns(const struct mm *m, uint64_t addr);
/* Loop thread, every second: hot pages' windows to the kernel's KSM. */
void ksm_handover(struct backing *b);
/* [agent] ksm = manage: the kernel's KSM run by the agent, from backing
 * creation to its end, and its settings put back after. */
void ksm_manage_start(struct backing *b);
void ksm_manage_stop(struct backing *b);

/* ---- remote.c ------------------------------------------------------------- */

/* What the holders' table holds, freed. */
void remote_fini(struct backing *b);
/* node serves reads at addr; keep: write the table to the state directory. b->lock held. */
void remote_holder_learn(struct backing *b, uint32_t node, const char *addr, bool keep);
/* The remote dups known for id, into r: false if none. b->lock held. */
bool remote_known(struct backing *b, const struct cid *id, struct remote_id *r);
/*
 * May a page be evicted against one of the n dups rem, named by a shard
 * at learned_ms: can no shard release it before the page's count comes?
 */
bool remote_usable(struct backing *b, const struct rdup *rem, unsigned n, uint64_t learned_ms);
/*
 * The bytes of one of n remote dups, checked against the content id: the
 * first replica that answers with the right bytes. Its index, or -1.
 * Holders backed off after failures are skipped, unless anyway.
 */
int remote_fetch(struct backing *b, struct transport *tr, const struct rdup *rem, unsigned n,
		 const struct cid *id, uint8_t *buf, bool anyway);

#endif
