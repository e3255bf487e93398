/*
 * copier - making dups off the loop: a shard's DupCreate orders (copy a
 * dup from another node's pool into this node's, over the data
 * transport) and its CREATE_DUP decisions (copy one of this node's pages
 * that hold the content).
 *
 * The loop thread queues jobs; a thread of its own reads the first
 * source that gives bytes of the right content id (checked), adds them to
 * the pool, and hands the outcome back to the loop, which answers the
 * shard with DupCreated. The loop never waits on another node, nor on a
 * page of a served process: reading one that was just evicted faults,
 * and serving that fault may need the loop (the zap's answer comes on
 * it).
 */
#ifndef CKSM_COPIER_H
#define CKSM_COPIER_H

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "auth.h"
#include "cid.h"
#include "config.h"
#include "pool.h"
#include "transport.h"

#define COPY_SOURCES 4

struct copy_job {
	unsigned shard; /* who ordered it */
	struct cid id;
	uint32_t domain;
	struct dup_loc src[COPY_SOURCES];
	unsigned nsrc;
	struct copy_local {
		pid_t pid;
		uint64_t addr;
	} local[COPY_SOURCES]; /* or pages of this node's processes */
	unsigned nlocal;
	/* the outcome */
	bool ok;
	struct pool_ref ref;
	const char *why;
};

struct copier;

/* done(arg, job) runs on loop's thread for every job, made or not. */
/* Sources are read with a reader of kind tk, authenticated with key. */
struct copier *copier_create(const struct config *cfg, uv_loop_t *loop, struct pool *pool,
			     const struct cid_domain *domains, const struct transport_kind *tk,
			     const struct auth_key *key,
			     void (*done)(void *arg, const struct copy_job *j), void *arg);
void copier_destroy(struct copier *c);

/* Loop thread: queue a job; false when the queue is full (answer failed). */
bool copier_push(struct copier *c, const struct copy_job *j);

#endif
