/*
 * btab - see btab.h.
 */
#include "btab.h"

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

#include "util.h"

#define BTAB_MAGIC   0x626174626b736d63ull /* "cmskbtab" */
#define BTAB_VERSION 1u
#define BTAB_HEAD    64u /* the entries start here */

struct btab_head {
	uint64_t magic;
	uint32_t version;
	uint32_t entry_size;
	uint64_t n; /* entries published: stored after they are written */
};

static uint64_t entry_sum(const struct bentry *e)
{
	return XXH3_64bits(e, offsetof(struct bentry, sum));
}

/* A kept table tells its file how many entries it has, last. */
static void publish(struct btab *t)
{
	if (t->head)
		__atomic_store_n(&t->head->n, (uint64_t)t->n, __ATOMIC_RELEASE);
}

/* Room for cap entries: in memory, or in the file (grown and mapped again). */
static int grow(struct btab *t, size_t want)
{
	size_t cap = t->cap ? t->cap : 64, bytes;
	void *map;

	if (want <= t->cap)
		return 0;
	if (t->fd < 0)
		return array_reserve((void **)&t->e, &t->cap, want, sizeof(*t->e));
	while (cap < want)
		cap *= 2;
	bytes = BTAB_HEAD + cap * sizeof(*t->e);
	if (ftruncate(t->fd, (off_t)bytes) < 0)
		return -errno;
	map = mremap(t->head, t->map_bytes, bytes, MREMAP_MAYMOVE);
	if (map == MAP_FAILED)
		return -errno;
	t->head = map;
	t->map_bytes = bytes;
	t->e = (struct bentry *)((uint8_t *)map + BTAB_HEAD);
	t->cap = cap;
	return 0;
}

static uint64_t pos_hash(const void *ctx, uint32_t v)
{
	const struct btab *t = ctx;

	return t->e[v - 1].page;
}

/* The index slot naming page, or the empty one that ends its probe. */
static size_t slot_of(const struct btab *t, uint64_t page)
{
	size_t i;
	uint32_t v;

	for (i = oaidx_home(&t->ix, page); (v = t->ix.v[i]); i = oaidx_next(&t->ix, i))
		if (t->e[v - 1].page == page)
			break;
	return i;
}

void btab_init(struct btab *t)
{
	t->e = NULL;
	t->n = t->cap = 0;
	t->seq = 0;
	t->fd = -1;
	t->head = NULL;
	t->map_bytes = 0;
	oaidx_init(&t->ix);
}

void btab_fini(struct btab *t)
{
	oaidx_fini(&t->ix);
	if (t->head) {
		munmap(t->head, t->map_bytes);
		close(t->fd);
	} else {
		free(t->e);
	}
	btab_init(t);
}

struct bentry *btab_find(const struct btab *t, uint64_t addr)
{
	uint32_t v = t->ix.v[slot_of(t, addr >> 12)];

	return v ? &t->e[v - 1] : NULL;
}

struct bentry *btab_find_same(const struct btab *t, const struct bentry *e)
{
	struct bentry *x = btab_find(t, e->page << 12);

	if (!x || x->kind != e->kind || x->ref.slot != e->ref.slot || x->ref.gen != e->ref.gen ||
	    !cid_eq(x->id, e->id))
		return NULL;
	return x;
}

/*
 * Remove the entry at position p, which the index no longer names: the
 * last entry moves into its place (copied whole before the count drops).
 */
static void btab_del_at(struct btab *t, size_t p)
{
	size_t last = t->n - 1;

	if (p != last) {
		t->ix.v[oaidx_slot(&t->ix, t->e[last].page, (uint32_t)last + 1)] = (uint32_t)p + 1;
		memcpy(&t->e[p], &t->e[last], sizeof(t->e[p]));
	}
	t->n--;
	publish(t);
}

/* Write e whole at position n, stamped; the count is not published yet. */
static void append(struct btab *t, const struct bentry *e)
{
	struct bentry *x = &t->e[t->n];

	memcpy(x, e, sizeof(*x));
	x->seq = ++t->seq;
	x->sum = entry_sum(x);
}

int btab_put(struct btab *t, const struct bentry *e)
{
	size_t i = slot_of(t, e->page);
	uint32_t old = t->ix.v[i];

	if (grow(t, t->n + 1) || oaidx_reserve(&t->ix, t->n + 1, pos_hash, t))
		return -ENOMEM;
	/* The new entry is published before the old one goes: at any moment
	 * the page has one of the two, whole. */
	append(t, e);
	t->n++;
	publish(t);
	if (old) {
		i = slot_of(t, e->page); /* the reserve may have rebuilt the index */
		t->ix.v[i] = (uint32_t)t->n;
		btab_del_at(t, old - 1);
	} else {
		oaidx_put(&t->ix, e->page, (uint32_t)t->n);
	}
	return 0;
}

void btab_del(struct btab *t, struct bentry *e)
{
	oaidx_del(&t->ix, slot_of(t, e->page), pos_hash, t);
	btab_del_at(t, (size_t)(e - t->e));
}

int btab_check(const struct btab *t, const char **why)
{
	*why = NULL;
	if (t->ix.n != t->n)
		*why = "the index holds another number of entries than the array";
	for (size_t p = 0; !*why && p < t->n; p++) {
		const struct bentry *e = &t->e[p];

		if (!e->page)
			*why = "an entry of page 0";
		else if (t->ix.v[slot_of(t, e->page)] != p + 1)
			*why = "an entry is not found through the index, or its page is twice";
		else if (e->kind < BACKED_ZERO || e->kind > BACKED_REMOTE)
			*why = "an entry backed by nothing known";
		else if (e->kind == BACKED_REMOTE && (e->nrem < 1 || e->nrem > BTAB_REPLICAS))
			*why = "a remote entry without replicas, or with too many";
	}
	return *why ? -EUCLEAN : 0;
}

/* ---- kept on disk ------------------------------------------------------------ */

/* Map the file fd of bytes as t's array of cap entries. */
static int map_kept(struct btab *t, int fd, size_t cap)
{
	size_t bytes = BTAB_HEAD + cap * sizeof(struct bentry);
	void *map;

	if (ftruncate(fd, (off_t)bytes) < 0)
		return -errno;
	map = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (map == MAP_FAILED)
		return -errno;
	t->fd = fd;
	t->head = map;
	t->map_bytes = bytes;
	t->e = (struct bentry *)((uint8_t *)map + BTAB_HEAD);
	t->cap = cap;
	return 0;
}

/*
 * Write entries n of e to a new file name of dirfd (through a temporary
 * one: a file of that name is whole, old or new) and keep t there.
 */
static int write_kept(struct btab *t, int dirfd, const char *name, const struct bentry *e, size_t n)
{
	char tmp[128];
	size_t cap = 64;
	int fd, rc;

	while (cap < n)
		cap *= 2;
	snprintf(tmp, sizeof(tmp), "%s.new", name);
	fd = openat(dirfd, tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	rc = map_kept(t, fd, cap);
	if (rc) {
		close(fd);
		unlinkat(dirfd, tmp, 0);
		return rc;
	}
	*t->head = (struct btab_head){ BTAB_MAGIC, BTAB_VERSION, sizeof(struct bentry), 0 };
	if (n)
		memcpy(t->e, e, n * sizeof(*e));
	t->n = n;
	publish(t);
	if (renameat(dirfd, tmp, dirfd, name) < 0) {
		rc = -errno;
		munmap(t->head, t->map_bytes);
		close(fd);
		unlinkat(dirfd, tmp, 0);
		t->fd = -1;
		t->head = NULL;
		return rc;
	}
	return 0;
}

int btab_keep(struct btab *t, int dirfd, const char *name)
{
	struct bentry *mem = t->e;
	size_t cap = t->cap;
	int rc;

	rc = write_kept(t, dirfd, name, mem, t->n);
	if (rc) {
		t->e = mem;
		t->cap = cap;
		return rc;
	}
	free(mem);
	return 0;
}

/* Enter e as it is, stamp and all, into an in-memory table without its page. */
static int btab_put_raw(struct btab *t, const struct bentry *e)
{
	if (grow(t, t->n + 1) || oaidx_reserve(&t->ix, t->n + 1, pos_hash, t))
		return -ENOMEM;
	memcpy(&t->e[t->n], e, sizeof(*e));
	oaidx_put(&t->ix, e->page, (uint32_t)++t->n);
	return 0;
}

/* Is the entry at position i of a loaded file whole, and one to keep? */
static bool entry_whole(const struct bentry *e)
{
	return e->page && e->sum == entry_sum(e) && e->kind >= BACKED_ZERO &&
	       e->kind <= BACKED_REMOTE &&
	       (e->kind != BACKED_REMOTE || (e->nrem >= 1 && e->nrem <= BTAB_REPLICAS));
}

int btab_load(struct btab *t, int dirfd, const char *name, size_t *torn)
{
	struct btab_head h;
	struct btab in;
	const struct bentry *fe;
	void *map;
	size_t bytes, n;
	int fd, rc = 0;

	*torn = 0;
	fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (pread(fd, &h, sizeof(h), 0) != (ssize_t)sizeof(h) || h.magic != BTAB_MAGIC ||
	    h.version != BTAB_VERSION || h.entry_size != sizeof(struct bentry)) {
		close(fd);
		return -EUCLEAN;
	}
	bytes = (size_t)lseek(fd, 0, SEEK_END);
	n = bytes < BTAB_HEAD ? 0 : (bytes - BTAB_HEAD) / sizeof(struct bentry);
	if (h.n < n)
		n = h.n;
	else if (h.n > n)
		*torn += h.n - n; /* published, and not in the file: cut short */
	map = n ? mmap(NULL, BTAB_HEAD + n * sizeof(struct bentry), PROT_READ, MAP_PRIVATE, fd, 0)
		: NULL;
	close(fd);
	if (map == MAP_FAILED)
		return -errno;
	fe = map ? (const struct bentry *)((const uint8_t *)map + BTAB_HEAD) : NULL;
	/* Whole entries, one per page: the latest stamp. */
	btab_init(&in);
	for (size_t i = 0; i < n && !rc; i++) {
		const struct bentry *e = &fe[i];
		struct bentry *have;

		if (!entry_whole(e)) {
			(*torn)++;
			continue;
		}
		if (e->seq > in.seq)
			in.seq = e->seq;
		have = btab_find(&in, e->page << 12);
		if (have && have->seq > e->seq) {
			(*torn)++;
			continue;
		}
		if (have)
			(*torn)++;
		rc = have ? (memcpy(have, e, sizeof(*e)), 0) : btab_put_raw(&in, e);
	}
	if (map)
		munmap(map, BTAB_HEAD + n * sizeof(struct bentry));
	if (!rc)
		rc = write_kept(t, dirfd, name, in.e, in.n);
	if (!rc) {
		t->seq = in.seq;
		rc = oaidx_reserve(&t->ix, t->n, pos_hash, t);
		for (size_t i = 0; !rc && i < t->n; i++)
			oaidx_put(&t->ix, t->e[i].page, (uint32_t)i + 1);
	}
	btab_fini(&in);
	if (rc)
		btab_fini(t);
	return rc;
}
