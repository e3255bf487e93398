/*
 * pool - see pool.h.
 *
 * Slot table: per slot its generation, reference count, held flag and
 * content id; free slots form a stack, so the most recently freed (and
 * still cached) slot is reused first, with a new generation.
 *
 * Generations start at random, per slot: every free slot gets a fresh
 * one from libsodium's generator when the pool is made or opened, and a
 * slot's generation goes up by one at every reuse. A name (slot,
 * generation) is therefore not guessed from the slot's number, and no
 * two agent starts name the same free slot alike; a live slot keeps its
 * generation across a restart (tables and shards name it).
 *
 * A pool opened in a state directory keeps its pages in the file "pool"
 * and its slot table in the file "slots" (a header, then one struct slot
 * per slot), both shared mappings: they outlive the agent, and the next
 * one opens them again. A slot is named live only once its bytes and id
 * are written, and a killed agent can stop between any two stores, so at
 * open the free stack and the index are rebuilt from the live flags, and
 * the reference counts start from zero: the tables that hold them count
 * them again (pool_ref), then pool_settle frees what nobody holds.
 *
 * A freed slot's page goes back to the system (a hole punched in the
 * shared memory), except in a pool of hugetlb pages, whose pages are
 * whole huge pages: the pool's memory is what its live slots hold.
 */
#include "pool.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "oaidx.h"

#define HUGE_SIZE (2u << 20)

struct slot {
	struct cid id;
	uint32_t gen;
	uint32_t refs;
	bool held;
	bool live;
};

#define SLOTS_MAGIC   0x736c6f74736b6d63ull /* "cmkstols" */
#define SLOTS_VERSION 1u

/* The head of the "slots" file; the slots follow at SLOTS_HEAD. */
struct slots_head {
	uint64_t magic;
	uint32_t version;
	uint32_t slot_size; /* sizeof(struct slot) */
	uint64_t nslots;
};

#define SLOTS_HEAD 64u

struct pool {
	pthread_mutex_t lock;
	int fd;
	uint8_t *base;
	size_t map_bytes;
	size_t nslots;
	struct slot *slots;
	void *slots_map; /* the "slots" file's mapping, NULL for a memfd pool */
	size_t slots_bytes;
	uint32_t *free; /* stack of free slot numbers */
	size_t nfree;
	struct oaidx index; /* id -> slot + 1, for every held slot */
	bool hugetlb;	    /* pages of MAP_HUGETLB: no hole punched per slot */
	bool pinned;	    /* registered for a device: no hole punched either */
};

static uint64_t id_hash(const struct cid *id)
{
	return id->lo ^ id->hi;
}

static uint64_t slot_hash(const void *ctx, uint32_t v)
{
	const struct pool *p = ctx;

	return id_hash(&p->slots[v - 1].id);
}

/* The index slot naming slot, or -1. Lock held. */
static long idx_at(const struct pool *p, uint32_t slot)
{
	const struct oaidx *x = &p->index;
	uint32_t v;

	for (size_t i = oaidx_home(x, id_hash(&p->slots[slot].id)); (v = x->v[i]);
	     i = oaidx_next(x, i))
		if (v == slot + 1)
			return (long)i;
	return -1;
}

/* Room for every slot was reserved at creation: this cannot fail. */
static void idx_put(struct pool *p, uint32_t slot)
{
	if (idx_at(p, slot) < 0)
		oaidx_put(&p->index, id_hash(&p->slots[slot].id), slot + 1);
}

/* Forget slot: no new pages go to it. */
static void idx_del(struct pool *p, uint32_t slot)
{
	long i = idx_at(p, slot);

	if (i >= 0)
		oaidx_del(&p->index, (size_t)i, slot_hash, p);
}

static int map_pool(struct pool *p, bool hugetlb)
{
	size_t bytes = p->nslots * POOL_SLOT;

	if (hugetlb)
		bytes = (bytes + HUGE_SIZE - 1) / HUGE_SIZE * HUGE_SIZE;
	p->fd = memfd_create("cksm-pool", MFD_CLOEXEC | (hugetlb ? MFD_HUGETLB : 0));
	if (p->fd < 0)
		return -errno;
	if (ftruncate(p->fd, (off_t)bytes) < 0)
		goto fail;
	/* hugetlb reserves at mmap: without reserved pages it fails here, not
	 * with a SIGBUS at first touch. */
	p->base = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, p->fd, 0);
	if (p->base == MAP_FAILED) {
		p->base = NULL;
		goto fail;
	}
	p->map_bytes = bytes;
	p->hugetlb = hugetlb;
	if (!hugetlb)
		madvise(p->base, bytes, MADV_HUGEPAGE); /* where shmem THP is enabled */
	return 0;
fail : {
	int e = -errno;

	close(p->fd);
	p->fd = -1;
	return e;
}
}

/* Every free slot a random generation (see the top of this file). */
static void fresh_generations(struct pool *p)
{
	uint32_t r[1024];

	for (size_t i = 0; i < p->nslots; i++) {
		if (i % 1024 == 0)
			randombytes_buf(r, sizeof(r));
		if (!p->slots[i].live)
			p->slots[i].gen = r[i % 1024];
	}
}

/*
 * The free stack and the index, from the slots' live flags (all free in a
 * new pool, slot 0 on top); the free slots get fresh generations. 0 or
 * -ENOMEM.
 */
static int pool_index(struct pool *p)
{
	p->free = malloc(p->nslots * sizeof(*p->free));
	oaidx_init(&p->index);
	if (!p->free || oaidx_reserve(&p->index, p->nslots, slot_hash, p))
		return -ENOMEM;
	p->nfree = 0;
	fresh_generations(p);
	for (size_t i = p->nslots; i-- > 0;) {
		struct slot *s = &p->slots[i];

		if (!s->live)
			p->free[p->nfree++] = (uint32_t)i;
		else if (s->held)
			idx_put(p, (uint32_t)i);
	}
	pthread_mutex_init(&p->lock, NULL);
	return 0;
}

/* An empty pool struct for nslots slots, or NULL with err set. */
static struct pool *pool_new(size_t nslots, char *err, size_t errlen)
{
	struct pool *p = calloc(1, sizeof(*p));

	if (!p || nslots == 0 || nslots > UINT32_MAX) {
		snprintf(err, errlen, "pool of %zu slots: %s", nslots,
			 p ? "out of range" : "out of memory");
		free(p);
		return NULL;
	}
	p->nslots = nslots;
	p->fd = -1;
	return p;
}

struct pool *pool_create(size_t nslots, bool *huge, char *err, size_t errlen)
{
	struct pool *p = pool_new(nslots, err, errlen);
	int rc;

	if (!p)
		return NULL;
	*huge = map_pool(p, true) == 0;
	if (!*huge && (rc = map_pool(p, false))) {
		snprintf(err, errlen, "memfd of %zu bytes: %s", nslots * POOL_SLOT, strerror(-rc));
		free(p);
		return NULL;
	}
	p->slots = calloc(nslots, sizeof(*p->slots));
	if (!p->slots || pool_index(p)) {
		snprintf(err, errlen, "slot table of %zu slots: out of memory", nslots);
		pool_destroy(p);
		return NULL;
	}
	return p;
}

/* A file of bytes in dir, mapped shared: its mapping, or NULL with err set. */
static void *map_file(int dir, const char *name, size_t bytes, int *fdp, char *err, size_t errlen)
{
	int fd = openat(dir, name, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	void *map;

	if (fd < 0 || ftruncate(fd, (off_t)bytes) < 0) {
		snprintf(err, errlen, "%s: %s", name, strerror(errno));
		if (fd >= 0)
			close(fd);
		return NULL;
	}
	map = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (map == MAP_FAILED) {
		snprintf(err, errlen, "%s: mmap of %zu bytes: %s", name, bytes, strerror(errno));
		close(fd);
		return NULL;
	}
	if (fdp)
		*fdp = fd;
	else
		close(fd);
	return map;
}

/*
 * The slot count an existing "slots" file was made with, 0 if there is
 * none (or it is not one: it is made anew), -1 on an error (err set).
 */
static long slots_of_file(int dir, char *err, size_t errlen)
{
	struct slots_head h;
	int fd = openat(dir, "slots", O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0 && errno == ENOENT)
		return 0;
	if (fd < 0) {
		snprintf(err, errlen, "slots: %s", strerror(errno));
		return -1;
	}
	n = pread(fd, &h, sizeof(h), 0);
	close(fd);
	if (n != (ssize_t)sizeof(h) || h.magic != SLOTS_MAGIC || h.version != SLOTS_VERSION ||
	    h.slot_size != sizeof(struct slot) || h.nslots == 0 || h.nslots > UINT32_MAX)
		return 0;
	return (long)h.nslots;
}

struct pool *pool_open(const char *path, size_t nslots, size_t *kept, char *err, size_t errlen)
{
	struct pool *p = pool_new(nslots, err, errlen);
	struct slots_head *h;
	int dir = -1;
	long had;

	*kept = 0;
	if (!p)
		return NULL;
	dir = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dir < 0) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		goto fail;
	}
	had = slots_of_file(dir, err, errlen);
	if (had < 0)
		goto fail;
	/* A pool that outlived an agent keeps its size: its slots are named
	 * by processes' tables and by the shards. */
	p->nslots = had ? (size_t)had : nslots;
	p->slots_bytes = SLOTS_HEAD + p->nslots * sizeof(struct slot);
	p->map_bytes = p->nslots * POOL_SLOT;
	p->slots_map = map_file(dir, "slots", p->slots_bytes, NULL, err, errlen);
	if (!p->slots_map)
		goto fail;
	p->base = map_file(dir, "pool", p->map_bytes, &p->fd, err, errlen);
	if (!p->base)
		goto fail;
	madvise(p->base, p->map_bytes, MADV_HUGEPAGE); /* where shmem THP is enabled */
	h = p->slots_map;
	p->slots = (struct slot *)((uint8_t *)p->slots_map + SLOTS_HEAD);
	if (!had) {
		memset(p->slots, 0, p->nslots * sizeof(struct slot));
		*h = (struct slots_head){ SLOTS_MAGIC, SLOTS_VERSION, sizeof(struct slot),
					  p->nslots };
	}
	for (size_t i = 0; i < p->nslots; i++) {
		p->slots[i].refs = 0; /* counted again by the tables (pool_settle) */
		if (p->slots[i].live)
			(*kept)++;
	}
	if (pool_index(p)) {
		snprintf(err, errlen, "slot table of %zu slots: out of memory", p->nslots);
		goto fail;
	}
	close(dir);
	return p;
fail:
	if (dir >= 0)
		close(dir);
	pool_destroy(p);
	return NULL;
}

long pool_peek(const char *path, struct pool_ref *ref, struct cid *id, size_t n)
{
	char err[256];
	int dir = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	long nslots = dir >= 0 ? slots_of_file(dir, err, sizeof(err)) : -1;
	int fd = nslots > 0 ? openat(dir, "slots", O_RDONLY | O_CLOEXEC) : -1;
	size_t got = 0;

	for (long i = 0; fd >= 0 && i < nslots && got < n; i++) {
		struct slot s;

		if (pread(fd, &s, sizeof(s), SLOTS_HEAD + (off_t)i * (off_t)sizeof(s)) !=
		    (ssize_t)sizeof(s))
			break;
		if (s.live && s.held) {
			ref[got] = (struct pool_ref){ (uint32_t)i, s.gen };
			id[got++] = s.id;
		}
	}
	if (fd >= 0)
		close(fd);
	if (dir >= 0)
		close(dir);
	return nslots > 0 ? (long)got : -ENOENT;
}

void pool_destroy(struct pool *p)
{
	if (!p)
		return;
	if (p->base)
		munmap(p->base, p->map_bytes);
	if (p->fd >= 0)
		close(p->fd);
	if (p->slots_map)
		munmap(p->slots_map, p->slots_bytes);
	else
		free(p->slots);
	free(p->free);
	oaidx_fini(&p->index);
	pthread_mutex_destroy(&p->lock);
	free(p);
}

/* The live slot ref names, or NULL. Lock held. */
static struct slot *lookup(struct pool *p, struct pool_ref ref)
{
	struct slot *s;

	if (ref.slot >= p->nslots)
		return NULL;
	s = &p->slots[ref.slot];
	return s->live && s->gen == ref.gen ? s : NULL;
}

static void slot_free(struct pool *p, struct slot *s)
{
	idx_del(p, (uint32_t)(s - p->slots));
	s->live = false;
	s->held = false;
	/* Before it can be taken again (under p->lock): its memory goes. */
	if (!p->hugetlb && !p->pinned && p->fd >= 0)
		fallocate(p->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
			  (off_t)((size_t)(s - p->slots) * POOL_SLOT), POOL_SLOT);
	p->free[p->nfree++] = (uint32_t)(s - p->slots);
}

int pool_add(struct pool *p, const struct cid *id, const void *bytes, struct pool_ref *out)
{
	struct slot *s;
	uint32_t n;

	pthread_mutex_lock(&p->lock);
	if (!p->nfree) {
		pthread_mutex_unlock(&p->lock);
		return -ENOSPC;
	}
	n = p->free[--p->nfree];
	s = &p->slots[n];
	s->gen = s->gen + 1 ? s->gen + 1 : 1; /* never 0 */
	s->id = *id;
	s->refs = 0;
	s->held = true;
	memcpy(p->base + (size_t)n * POOL_SLOT, bytes, POOL_SLOT);
	s->live = true; /* named only once its bytes are in */
	idx_put(p, n);
	out->slot = n;
	out->gen = s->gen;
	pthread_mutex_unlock(&p->lock);
	return 0;
}

const void *pool_page(struct pool *p, struct pool_ref ref, struct cid *id)
{
	const void *bytes = NULL;
	struct slot *s;

	pthread_mutex_lock(&p->lock);
	s = lookup(p, ref);
	if (s) {
		if (id)
			*id = s->id;
		bytes = p->base + (size_t)ref.slot * POOL_SLOT;
	}
	pthread_mutex_unlock(&p->lock);
	return bytes;
}

int pool_find(struct pool *p, const struct cid *id, uint32_t room, struct pool_ref *out)
{
	const struct oaidx *x = &p->index;
	int rc = -ENOENT;
	uint32_t v;

	pthread_mutex_lock(&p->lock);
	for (size_t i = oaidx_home(x, id_hash(id)); (v = x->v[i]); i = oaidx_next(x, i)) {
		const struct slot *s = &p->slots[v - 1];

		if (!cid_eq(s->id, *id))
			continue;
		rc = -ENOSPC;
		if (!room || s->refs < room) {
			out->slot = v - 1;
			out->gen = s->gen;
			rc = 0;
			break;
		}
	}
	pthread_mutex_unlock(&p->lock);
	return rc;
}

int pool_ref(struct pool *p, struct pool_ref ref, int32_t delta)
{
	struct slot *s;
	int rc = 0;

	pthread_mutex_lock(&p->lock);
	s = lookup(p, ref);
	if (!s)
		rc = -ESTALE;
	else if ((int64_t)s->refs + delta < 0 || (int64_t)s->refs + delta > UINT32_MAX)
		rc = -ERANGE;
	else {
		s->refs = (uint32_t)((int64_t)s->refs + delta);
		if (!s->refs && !s->held)
			slot_free(p, s);
	}
	pthread_mutex_unlock(&p->lock);
	return rc;
}

uint32_t pool_refs(struct pool *p, struct pool_ref ref)
{
	struct slot *s;
	uint32_t n = 0;

	pthread_mutex_lock(&p->lock);
	s = lookup(p, ref);
	if (s)
		n = s->refs;
	pthread_mutex_unlock(&p->lock);
	return n;
}

bool pool_held(struct pool *p, struct pool_ref ref)
{
	struct slot *s;
	bool held;

	pthread_mutex_lock(&p->lock);
	s = lookup(p, ref);
	held = s && s->held;
	pthread_mutex_unlock(&p->lock);
	return held;
}

int pool_release(struct pool *p, struct pool_ref ref)
{
	struct slot *s;
	int rc = 0;

	pthread_mutex_lock(&p->lock);
	s = lookup(p, ref);
	if (!s || !s->held) {
		rc = -ESTALE;
	} else {
		s->held = false;
		if (!s->refs)
			slot_free(p, s);
		else
			idx_del(p, ref.slot); /* no new pages on a released dup */
	}
	pthread_mutex_unlock(&p->lock);
	return rc;
}

void pool_foreach(struct pool *p, pool_visit_fn fn, void *arg)
{
	pthread_mutex_lock(&p->lock);
	for (size_t i = 0; i < p->nslots; i++) {
		const struct slot *s = &p->slots[i];

		if (s->live)
			fn(arg, (struct pool_ref){ (uint32_t)i, s->gen }, &s->id, s->held, s->refs);
	}
	pthread_mutex_unlock(&p->lock);
}

size_t pool_slots(const struct pool *p)
{
	return p->nslots;
}

size_t pool_resident_bytes(const struct pool *p)
{
	struct stat st;

	if (p->fd < 0 || fstat(p->fd, &st) < 0)
		return 0;
	return (size_t)st.st_blocks * 512;
}

size_t pool_free_slots(struct pool *p)
{
	size_t n;

	pthread_mutex_lock(&p->lock);
	n = p->nfree;
	pthread_mutex_unlock(&p->lock);
	return n;
}

int pool_fd(const struct pool *p)
{
	return p->fd;
}

void *pool_memory(struct pool *p, size_t *bytes)
{
	*bytes = p->nslots * POOL_SLOT;
	return p->base;
}

void pool_pin(struct pool *p)
{
	pthread_mutex_lock(&p->lock); /* no slot_free punching meanwhile */
	p->pinned = true;
	pthread_mutex_unlock(&p->lock);
}

size_t pool_settle(struct pool *p)
{
	size_t freed = 0;

	pthread_mutex_lock(&p->lock);
	for (size_t i = 0; i < p->nslots; i++) {
		struct slot *s = &p->slots[i];

		if (s->live && !s->held && !s->refs) {
			slot_free(p, s);
			freed++;
		}
	}
	pthread_mutex_unlock(&p->lock);
	return freed;
}
