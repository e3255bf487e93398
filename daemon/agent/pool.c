/*
 * pool - see pool.h.
 *
 * Slot table: per slot its generation, reference count, held flag and
 * content id; free slots form a stack, so the most recently freed (and
 * still cached) slot is reused first, with a new generation.
 */
#include "pool.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define HUGE_SIZE (2u << 20)

struct slot {
	struct cid id;
	uint32_t gen;
	uint32_t refs;
	bool held;
	bool live;
};

struct pool {
	pthread_mutex_t lock;
	int fd;
	uint8_t *base;
	size_t map_bytes;
	size_t nslots;
	struct slot *slots;
	uint32_t *free; /* stack of free slot numbers */
	size_t nfree;
	uint32_t *index; /* id -> slot + 1; 0 empty, IDX_GONE deleted */
	size_t icap, igone;
};

#define IDX_GONE UINT32_MAX

static size_t idx_home(const struct pool *p, const struct cid *id)
{
	return (size_t)((id->lo ^ id->hi) * 0x9e3779b97f4a7c15ULL >> 17) & (p->icap - 1);
}

/* The slot holding id in the index, or -1. Lock held. */
static long idx_find(const struct pool *p, const struct cid *id)
{
	for (size_t i = idx_home(p, id);; i = (i + 1) & (p->icap - 1)) {
		uint32_t v = p->index[i];

		if (!v)
			return -1;
		if (v != IDX_GONE && p->slots[v - 1].id.hi == id->hi &&
		    p->slots[v - 1].id.lo == id->lo)
			return (long)i;
	}
}

static void idx_put(struct pool *p, uint32_t slot)
{
	size_t i = idx_home(p, &p->slots[slot].id);

	if (idx_find(p, &p->slots[slot].id) >= 0)
		return; /* one slot per id is enough to find */
	while (p->index[i] && p->index[i] != IDX_GONE)
		i = (i + 1) & (p->icap - 1);
	if (p->index[i] == IDX_GONE)
		p->igone--;
	p->index[i] = slot + 1;
}

static void idx_rebuild(struct pool *p)
{
	memset(p->index, 0, p->icap * sizeof(*p->index));
	p->igone = 0;
	for (size_t k = 0; k < p->nslots; k++)
		if (p->slots[k].live && p->slots[k].held)
			idx_put(p, (uint32_t)k);
}

static void idx_del(struct pool *p, uint32_t slot)
{
	long i = idx_find(p, &p->slots[slot].id);

	if (i < 0 || p->index[i] != slot + 1)
		return;
	p->index[i] = IDX_GONE;
	if (++p->igone > p->icap / 4)
		idx_rebuild(p);
	else
		return;
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

struct pool *pool_create(size_t nslots, bool *huge, char *err, size_t errlen)
{
	struct pool *p = calloc(1, sizeof(*p));
	int rc;

	if (!p || nslots == 0 || nslots > UINT32_MAX) {
		snprintf(err, errlen, "pool of %zu slots: %s", nslots,
			 p ? "out of range" : "out of memory");
		free(p);
		return NULL;
	}
	p->nslots = nslots;
	p->fd = -1;
	*huge = map_pool(p, true) == 0;
	if (!*huge && (rc = map_pool(p, false))) {
		snprintf(err, errlen, "memfd of %zu bytes: %s", nslots * POOL_SLOT, strerror(-rc));
		free(p);
		return NULL;
	}
	p->slots = calloc(nslots, sizeof(*p->slots));
	p->free = malloc(nslots * sizeof(*p->free));
	for (p->icap = 16; p->icap < 2 * nslots; p->icap *= 2) {
	}
	p->index = calloc(p->icap, sizeof(*p->index));
	if (!p->slots || !p->free || !p->index) {
		snprintf(err, errlen, "slot table of %zu slots: out of memory", nslots);
		pool_destroy(p);
		return NULL;
	}
	for (size_t i = 0; i < nslots; i++)
		p->free[i] = (uint32_t)(nslots - 1 - i); /* slot 0 on top */
	p->nfree = nslots;
	pthread_mutex_init(&p->lock, NULL);
	return p;
}

void pool_destroy(struct pool *p)
{
	if (!p)
		return;
	if (p->base)
		munmap(p->base, p->map_bytes);
	if (p->fd >= 0)
		close(p->fd);
	free(p->slots);
	free(p->free);
	free(p->index);
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

int pool_find(struct pool *p, const struct cid *id, struct pool_ref *out)
{
	long i;

	pthread_mutex_lock(&p->lock);
	i = idx_find(p, id);
	if (i >= 0) {
		out->slot = p->index[i] - 1;
		out->gen = p->slots[out->slot].gen;
	}
	pthread_mutex_unlock(&p->lock);
	return i >= 0 ? 0 : -ENOENT;
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
