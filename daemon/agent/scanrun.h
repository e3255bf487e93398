/*
 * scanrun - the scanner at work inside the agent: its own thread running
 * passes within the CPU budget, the metrics they feed, and one bounded
 * queue of digests per shard that the loop thread drains into
 * DigestReport messages.
 */
#ifndef CKSM_SCANRUN_H
#define CKSM_SCANRUN_H

#include <stddef.h>

#include <uv.h>

#include "auth.h"
#include "config.h"
#include "metrics.h"
#include "hll.h"
#include "report.h"
#include "usage.h"

struct scanrun;

/*
 * Prepare the scanner for cfg. wake(arg) runs on loop's thread whenever
 * digests were queued. Returns NULL with the reason logged.
 */
struct scanrun *scanrun_create(const struct config *cfg, const struct auth_key *key,
			       struct metrics *reg, uv_loop_t *loop, void (*wake)(void *arg),
			       void *arg);

/* Start the scanner thread; 0 or a negative errno. */
int scanrun_start(struct scanrun *r);

/* Stop the thread (waits for it; it stops at its next sleep) and free. */
void scanrun_destroy(struct scanrun *r);

/* Loop thread: take up to max digests of one domain queued for shard. */
size_t scanrun_take(struct scanrun *r, unsigned shard, struct report_entry *out, size_t max);

/*
 * Loop thread: a shard registered again after a loss; drop what was
 * queued for it and offer every stable page again.
 */
void scanrun_rereport(struct scanrun *r, unsigned shard);

/* One domain's census of the last full scan. */
struct scanrun_census {
	uint8_t domain; /* the domain's id */
	uint64_t stable;
	uint64_t zero;
	struct hll h;	   /* its stable pages */
	struct hll shared; /* those with another copy, as the shards said */
};

/*
 * Loop thread: the census of a full scan not taken yet, one per domain
 * into out (room for CONFIG_MAX_DOMAINS); returns how many, 0 if none new.
 */
size_t scanrun_take_census(struct scanrun *r, struct scanrun_census *out);

/* A shard's answer for one reported page. */
struct scan_answer {
	int32_t pid;
	bool shared; /* its content has another copy in the cluster */
	uint64_t addr;
};

/* Loop thread: hand answers to the scanner thread (applied between batches). */
void scanrun_answer(struct scanrun *r, const struct scan_answer *a, size_t n);

/* Loop thread: the usage of a full scan not taken yet into out; false if none. */
bool scanrun_take_usage(struct scanrun *r, struct usage *out);

struct backing;
struct pool;

/*
 * Before the thread starts: offer eviction candidates of libcksm processes
 * to b (zero pages, and pages whose content pool holds).
 */
void scanrun_set_backing(struct scanrun *r, struct backing *b, struct pool *pool);

/* Any thread: pid attached through libcksm (scope: enum target_scope), or
 * left (scope -1); the scanner follows from its next pass. */
void scanrun_attach(struct scanrun *r, pid_t pid, int scope);

/* Loop thread: digests waiting in all queues (also sets the gauge). */
size_t scanrun_queued(struct scanrun *r);

#endif
