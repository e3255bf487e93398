/*
 * backing - dropping duplicate pages from processes and bringing them back.
 *
 * Processes attach through libcksm (local.h): the agent hands each an open
 * /dev/userfaultfd, gets back the process's userfaultfd, and does the
 * UFFDIO_API handshake with the fork, remap, remove and unmap events and
 * write-protect faults. Their mergeable ranges are then registered for
 * MISSING and WP faults from here.
 *
 * Eviction (KSM write-protects before it compares; so does this):
 *   write-protect the page, read it, compare it byte for byte with what
 *   will back it (a pool slot, or nothing for a zero page), enter it in
 *   the mm's backed table, have the process drop it (ZAP), release the
 *   write-protection. A write that races waits on the write-protect fault
 *   until the eviction is finished or abandoned, and then continues on the
 *   right data: the page itself, or the copy the fault brings back.
 *
 * Faults: one fault thread (not the loop) reads every attached mm's
 * userfaultfd. A MISSING fault on a backed page is filled from its pool
 * slot after checking the 128-bit id of the bytes (UFFDIO_COPY), or with
 * the zero page; on a page never backed with what the kernel would have
 * given (zeroes). A backed page whose bytes cannot be had is never
 * filled with zeroes: the faulting thread gets SIGBUS, logged and counted.
 * Events keep the tables right: fork copies the table to the child's
 * userfaultfd, mremap moves entries, remove and unmap drop them.
 */
#ifndef CKSM_BACKING_H
#define CKSM_BACKING_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <uv.h>

#include "btab.h"
#include "cid.h"
#include "config.h"
#include "metrics.h"
#include "pool.h"
#include "rrefs.h"
#include "transport.h"

struct backing;

/*
 * The state directory dir, made if need be and locked for this agent
 * alone (keep.c): its descriptor, or a negative errno (logged).
 */
int keep_open(const char *dir);

/*
 * Listen on cfg->socket_path and start the fault and eviction threads;
 * remote dups are read with readers of kind tk (authenticated with key).
 * What a killed agent kept in the state directory state_fd is loaded
 * first (the processes' tables), before the pool, opened from the same
 * directory, frees the slots nobody uses. Returns NULL with the reason
 * logged.
 */
struct backing *backing_create(const struct config *cfg, uv_loop_t *loop, struct metrics *reg,
			       struct pool *pool, int state_fd, const struct cid_domain *domains,
			       const struct transport_kind *tk, const struct auth_key *key);
void backing_destroy(struct backing *b);

/* Processes an earlier agent served that have not come back yet (loop thread). */
size_t backing_waiting(const struct backing *b);

/* Called when a process attaches or detaches (loop thread). */
void backing_set_hooks(struct backing *b, void (*attached)(void *arg, pid_t pid, bool merge_all),
		       void (*detached)(void *arg, pid_t pid), void *arg);

/*
 * Offer a page for eviction (any thread). For BACKED_POOL, ref names the
 * slot and id its content; the eviction takes its own reference. Pages of
 * processes that are not attached, pages faulted back within the
 * cool-down and offers beyond the queue are passed over.
 */
void backing_offer(struct backing *b, pid_t pid, uint64_t addr, enum backed_by kind,
		   struct pool_ref ref, const struct cid *id);

/*
 * Take up to max changes of this node's references not taken yet (for
 * RefUpdate messages): counts on other nodes' dups (rrefs.h), and this
 * node's own slots whose counts changed (node 0; the count to send is
 * then the slot's, pool_refs).
 */
size_t backing_take_refs(struct backing *b, struct ref_count *out, size_t max);

/*
 * A shard said content id is backed by these dups on other nodes (its
 * BACK_REMOTE decision): remember them, and where their holders serve.
 */
void backing_remote_learn(struct backing *b, const struct cid *id, const struct dup_loc *d,
			  unsigned n);

/* Offer a page for eviction backed by the remote dups known for id. */
bool backing_offer_remote(struct backing *b, pid_t pid, uint64_t addr, const struct cid *id);

/* A change taken that could not be sent: it is taken again later. */
void backing_refs_unsent(struct backing *b, const struct ref_count *r);

/* Every count is to be sent again (a shard registered: it may lack any). */
void backing_refs_all_dirty(struct backing *b);

/* Visit this node's references on other nodes' dups (for resync). */
void backing_foreach_rref(struct backing *b, rrefs_fn fn, void *arg);

/* Is pid attached (any thread)? */
/* pid's faults on its evicted pages since the agent first saw it, their
 * time (ns) and that time's share of the wall time since (ppm); false
 * if it had none. */
bool backing_faults_of(struct backing *b, pid_t pid, uint64_t *refaults, uint64_t *ns,
		       uint32_t *ppm);

/* Loop thread: is pid a process an earlier agent served that has not
 * come back to this one yet (a fault of it waits until it does)? */
bool backing_waits_for(struct backing *b, pid_t pid);
/* Bytes the backed pages of every served process no longer take (cksm_saved_bytes). */
double backing_saved_bytes(const struct backing *b);

bool backing_attached(struct backing *b, pid_t pid);

/* Are evicted pages moved out (UFFDIO_MOVE), which the kernel refuses for
 * a pinned page? Then pages of MADV_DONTFORK memory may go too. */
bool backing_moves(const struct backing *b);

/*
 * Scanner thread: is a dup worth asking for this page of pid, which may
 * go (wset_dup_wanted; take: it is asked for now)? Not while its region
 * is held back as hot, and only its sample while it is being sampled.
 */
bool backing_dup_wanted(struct backing *b, pid_t pid, uint64_t addr, bool take);

/*
 * The shortest dup_idle_millisecs of the shards: what a shard names for
 * remote backing is evicted against for a third of it, or while this node
 * holds references on it (remote.c).
 */
void backing_set_dup_idle(struct backing *b, uint32_t ms);

/* Scanner thread: may pages of id go to a dup other nodes hold (remote.c)? */
bool backing_remote_known(struct backing *b, const struct cid *id);

/* Scanner thread: pid has a candidate page in MADV_DONTFORK memory (its
 * forks then leave those pages' entries out of the child's table). */
void backing_note_dontcopy(struct backing *b, pid_t pid);

#endif
