/*
 * config - /etc/cksm/cksm.conf, an INI file read with libinih.
 *
 * Every value is checked where it is read; each bad one is reported as
 * "file:line: [section] key: expected ..., got '...'" and all of them are
 * reported before the load fails. Command-line overrides (--set
 * section.key=value) go through the same checks. The shard map ([shard.N]
 * sections) must give every bucket to exactly one shard.
 */
#ifndef CKSM_CONFIG_H
#define CKSM_CONFIG_H

#include <stdint.h>
#include <stdio.h>

#include "log.h"

#define CONFIG_DEFAULT_PATH "/etc/cksm/cksm.conf"
#define CONFIG_MAX_SHARDS   64
#define CONFIG_MAX_BUCKETS  65536
#define CONFIG_MAX_RANGES   16 /* bucket ranges per shard */
#define CONFIG_MAX_DOMAINS  16
#define CONFIG_LIST_MAX	    1024 /* bytes of a pids or cgroups list */

struct bucket_range {
	uint32_t first;
	uint32_t last;
};

struct shard_conf {
	int defined;	   /* a [shard.N] section was seen */
	char address[128]; /* where agents and cksmctl reach it */
	char listen[128];  /* where it binds (default: address) */
	char metrics[128]; /* its /metrics address */
	struct bucket_range ranges[CONFIG_MAX_RANGES];
	unsigned nranges;
};

/*
 * A dedup domain: the targets whose pages may merge with each other.
 * domains[0] is "default" (id 0) and takes [agent] cgroups and pids.
 */
struct domain_conf {
	int defined;
	char name[65];
	uint8_t id;		       /* tag in content ids, unique */
	char cgroups[CONFIG_LIST_MAX]; /* comma-separated cgroup v2 paths */
	char pids[CONFIG_LIST_MAX];    /* comma-separated pids */
	int ksm;   /* hot duplicates may go to the kernel's KSM (1 for "default" only) */
	int evict; /* its pages may be evicted (merged) at all: 1 by default */
};

struct config {
	/* [cluster] */
	char key_file[256];
	uint32_t buckets; /* content-id buckets, a power of two */
	uint32_t max_frame_bytes;
	uint64_t auth_timeout_ms;
	uint32_t max_handshakes;	    /* accepted connections in the handshake at once */
	uint32_t max_handshakes_per_source; /* of them from one remote address */
	uint64_t max_queued_bytes;	    /* unsent bytes an accepted connection may hold */
	uint64_t heartbeat_ms;
	uint64_t dead_after_ms;
	uint64_t forget_dead_ms; /* a dead node's references on others' dups kept this long */
	uint64_t reconnect_min_ms;
	uint64_t reconnect_max_ms;
	uint32_t max_page_sharing;	 /* references one dup may serve */
	uint32_t replicas;		 /* R: dups on distinct nodes for remote backing */
	int merge_across_nodes;		 /* back pages from other nodes' pools */
	uint32_t prune_millisecs;	 /* stable tree prune tick */
	uint32_t dup_idle_millisecs;	 /* an unreferenced dup is released after this */
	uint64_t unstable_capacity;	 /* ids per unstable filter generation */
	uint32_t unstable_age_millisecs; /* the unstable filter ages this often */
	/* [log] */
	enum log_level log_level;
	/* [agent] */
	char node_name[65];
	char rack[65];
	char agent_metrics[128];
	int scan_mergeable;	     /* scan VMAs with KSM's opt-in (mg) */
	int scan_thp;		     /* scan THP-backed pages too */
	int mergeable_only;	     /* pids and cgroups: only their VMAs with KSM's opt-in */
	uint32_t pages_to_scan;	     /* pages per batch before a sleep */
	uint32_t sleep_millisecs;    /* sleep between batches */
	uint32_t pass_millisecs;     /* least time from one full pass to the next */
	uint32_t rereport_millisecs; /* stable pages are offered again this often */
	uint32_t cpu_percent;	     /* scanner CPU budget, % of one core */
	uint32_t report_queue;	     /* digests held per shard while it is away */
	char cgroup_root[256];	     /* cgroup v2 mount; "" = find it */
	char socket_path[108];	     /* where libcksm attaches (sun_path) */
	char state_dir[200];	     /* the pool and the tables a restarted agent finds */
	char socket_group[65];	     /* who may attach besides root: "" none, else this group */
	int attach_any_user;	     /* any user may, where vm.unprivileged_userfaultfd is 1 */
	char data_listen[128];	     /* where this node serves its pool to peers, "" = not */
	char data_address[128];	     /* what peers are told to dial for it */
	char transport[16];	     /* how other nodes' dups are read: auto, tcp */
	uint32_t data_timeout_ms;    /* one such read is given up after this */
	uint32_t lost_after_ms;	     /* a fault no replica answers for this long: SIGBUS */
	uint32_t stop_wait_ms;	     /* a stopping holder serves its pool this long at most */
	uint32_t pool_pages;	     /* page pool slots */
	int evict;		     /* drop backed pages from attached processes */
	uint32_t evict_age;	     /* scans a page stays unchanged before it goes */
	uint32_t evict_rate;	     /* most pages evicted per second */
	uint32_t evict_cooldown_millisecs; /* a page faulted back stays this long */
	char evict_with[8];		   /* auto, move (UFFDIO_MOVE) or zap (libcksm) */
	int wset;			   /* evict by the working set (wset.h), or as offered */
	uint32_t wset_regions;		   /* regions whose refaults are kept (wset.h) */
	uint32_t wset_sample_pages;	   /* a new region's sample */
	uint32_t wset_sample_ms;	   /* ... watched this long */
	uint32_t fault_budget_pct;	   /* of a process's time, in faults at most */
	char ksm_mode[16];		   /* the kernel's KSM: off, advise, manage */
	uint32_t ksm_max_cpu;		   /* manage: ksmd's CPU cap, percent */
	uint32_t ksm_scan_seconds;	   /* manage: ksmd's target time per pass */
	/* [domain.NAME] */
	struct domain_conf domains[CONFIG_MAX_DOMAINS];
	unsigned ndomains;
	/* [shard.N] */
	struct shard_conf shards[CONFIG_MAX_SHARDS];
	unsigned nshards; /* highest N + 1 */
};

/* Fill c with the built-in defaults (one local shard owning all buckets). */
void config_defaults(struct config *c);

/*
 * Read path into c (on top of what c holds). Errors are written to err,
 * one per line. Returns 0, -ENOENT when the file does not exist, or -EINVAL
 * after reporting every bad line.
 */
int config_load(struct config *c, const char *path, FILE *err);

/*
 * config_load for a file that may be absent when it was not named on the
 * command line: then a note goes to err and the defaults stay. Returns 0
 * or config_load's error.
 */
int config_load_default(struct config *c, const char *path, int named, FILE *err);

/* Apply one "section.key=value" override; -EINVAL with the reason in err. */
int config_set(struct config *c, const char *assignment, FILE *err);

/*
 * Check what no single line can: the shard map covers every bucket exactly
 * once, timeouts fit together. Fills in derived defaults. Returns 0 or
 * -EINVAL with reasons in err.
 */
int config_finish(struct config *c, FILE *err);

/* Index of the shard owning a bucket, from the finished map. */
int config_bucket_shard(const struct config *c, uint32_t bucket);

/* Print the effective configuration as INI. */
void config_dump(const struct config *c, FILE *out);

#endif
