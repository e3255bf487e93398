/*
 * pool - this node's page pool: the dups it holds for the cluster.
 *
 * One memfd (hugetlb pages when the system has them reserved, shared
 * memory with transparent huge pages advised otherwise) cut into 4 KiB
 * slots. A slot holds one content; it is named by (slot, generation), and
 * the generation changes every time the slot is freed, so a stale name is
 * always refused. Generations start at random, per slot and per open: a
 * name is not guessed from a slot's number. A slot lives while its dup is held (the coordinator
 * knows it) or while pages of this node reference it; it is freed only
 * when both have ended, so a slot with references is never reused.
 *
 * Kept in a state directory (pool_open), the pool outlives the agent: a
 * restarted agent finds its pages and slots again. The fd is what the
 * data transports read from. Thread-safe: one lock around the
 * slot table; page bytes are written once, before the slot is named.
 */
#ifndef CKSM_POOL_H
#define CKSM_POOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cid.h"

#define POOL_SLOT 4096u

struct pool;

struct pool_ref {
	uint32_t slot;
	uint32_t gen; /* never 0 for a live slot */
};

/*
 * A pool of nslots slots. err gets the reason on failure (NULL returned).
 * *huge tells whether hugetlb pages back it.
 */
struct pool *pool_create(size_t nslots, bool *huge, char *err, size_t errlen);
void pool_destroy(struct pool *p);

/*
 * The pool kept in the directory path (files "pool" and "slots"), made
 * there with nslots slots if there is none; one that outlived an agent
 * keeps its own slot count. *kept gets the number of live slots found.
 * Their references start at zero: the caller counts the pages that use
 * them again (pool_ref) and then calls pool_settle. NULL with err set on
 * failure.
 */
struct pool *pool_open(const char *path, size_t nslots, size_t *kept, char *err, size_t errlen);

/* After a pool_open's recount: free the live slots neither held nor used.
 * Returns how many were freed. */
size_t pool_settle(struct pool *p);

/*
 * Copy one page of content id into a free slot, held, with no references.
 * Returns 0, or -ENOSPC when every slot is in use.
 */
int pool_add(struct pool *p, const struct cid *id, const void *bytes, struct pool_ref *out);

/*
 * The slot's bytes and id if ref names a live slot (NULL otherwise). The
 * bytes stay valid while the caller holds a reference on the slot.
 */
const void *pool_page(struct pool *p, struct pool_ref ref, struct cid *id);

/*
 * A held slot holding content id with fewer than room references (room
 * 0: any). A node may hold several slots of one content, each serving at
 * most max_page_sharing pages, as KSM chains its merged pages. Returns 0,
 * -ENOSPC (every such slot is full) or -ENOENT (none).
 */
int pool_find(struct pool *p, const struct cid *id, uint32_t room, struct pool_ref *out);

/*
 * Local references: delta pages of this node now use (or stopped using)
 * the slot. Returns 0, -ESTALE (no such live slot) or -ERANGE (the count
 * would go below zero). A slot released by the coordinator is freed when
 * its last reference goes.
 */
int pool_ref(struct pool *p, struct pool_ref ref, int32_t delta);

/* The slot's local references (0 for a stale name). */
uint32_t pool_refs(struct pool *p, struct pool_ref ref);

/* Is ref a live slot the coordinator has not released? */
bool pool_held(struct pool *p, struct pool_ref ref);

/*
 * The coordinator released the dup (or its creation failed): the slot is
 * freed once no local reference is left. Returns 0 or -ESTALE.
 */
int pool_release(struct pool *p, struct pool_ref ref);

/* Visit every live slot (for resync): held, references, id. */
typedef void (*pool_visit_fn)(void *arg, struct pool_ref ref, const struct cid *id, bool held,
			      uint32_t refs);
void pool_foreach(struct pool *p, pool_visit_fn fn, void *arg);

/*
 * For tools beside a running agent: the first live, held slots of the
 * pool kept in the directory path, read without opening the pool
 * (nothing changes), at most n of them into ref[] and id[]. Returns how
 * many, or -ENOENT when path keeps no pool (or another version's).
 */
long pool_peek(const char *path, struct pool_ref *ref, struct cid *id, size_t n);

size_t pool_slots(const struct pool *p);
size_t pool_free_slots(struct pool *p);
/* The memory the pool's pages take now (a freed slot's page goes back). */
size_t pool_resident_bytes(const struct pool *p);
int pool_fd(const struct pool *p);

/* The slots' memory (slot n at n * POOL_SLOT), for a device to register. */
void *pool_memory(struct pool *p, size_t *bytes);

/*
 * A device holds the pool's pages (an RDMA registration): a freed slot
 * keeps its page, since the device would go on reading the page it
 * pinned, not the one a hole punched there would bring.
 */
void pool_pin(struct pool *p);

#endif
