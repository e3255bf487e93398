/*
 * btab - the backed-page table of one address space.
 *
 * One entry per page the agent dropped from the process: what backs it
 * (the zero page, a slot of this node's pool, or dups on other nodes),
 * the content id its bytes must have, and for remote backing the
 * replicas in the order a fault tries them. A fault on a page with an
 * entry is filled from what the entry names; a fault on a page without
 * one gets what the kernel would have given. Entries are added by the
 * evictor once a page compared equal, and leave when the page comes back
 * or the process drops, moves or unmaps it.
 *
 * Layout: a dense array of entries found through an oaidx by page
 * number; deletion moves the last entry into the hole, so a walk that
 * deletes stays at the same position. Any put or delete may move entries:
 * pointers into the table are good until the next change.
 *
 * Kept on disk (btab_keep, btab_load), the dense array lives in a shared
 * file mapping that outlives the agent: a head, then the entries. The
 * agent can be killed between any two stores, so every change leaves a
 * state the next agent reads right: an entry is written whole (stamped
 * with a sequence number and a checksum) before the count that includes
 * it is published; a replacement is a new entry appended and then the
 * old one deleted; a deletion copies the last entry into the hole before
 * the count drops. At load, entries whose checksum fails are torn writes
 * never published, and of two entries of one page the later stamp wins.
 *
 * Invariants (btab_check): every entry is found through the index under
 * its own page and the index holds nothing else; no two entries share a
 * page; no entry has page 0; a remote entry names 1..BTAB_REPLICAS dups.
 *
 * Not thread-safe: the owning mm's lock covers it.
 */
#ifndef CKSM_BTAB_H
#define CKSM_BTAB_H

#include <stddef.h>
#include <stdint.h>

#include "cid.h"
#include "oaidx.h"
#include "pool.h"
#include "rrefs.h"

/* What backs a page that was dropped (or is offered to be). */
enum backed_by {
	BACKED_ZERO = 1,   /* an all-zero page: no dup needed */
	BACKED_POOL = 2,   /* a slot of this node's pool */
	BACKED_REMOTE = 3, /* dups on other nodes, read over a transport */
};

#define BTAB_REPLICAS 3 /* replicas an entry remembers */

struct bentry {
	uint64_t page;	     /* address >> 12, never 0 */
	struct pool_ref ref; /* BACKED_POOL: the slot (the entry holds a reference) */
	struct cid id;
	uint8_t kind; /* enum backed_by */
	uint8_t nrem;
	struct rdup rem[BTAB_REPLICAS]; /* BACKED_REMOTE: in order; rem[0] is counted */
	uint64_t seq;			/* stamped by btab_put */
	uint64_t sum;			/* of the bytes before it, by btab_put */
};

struct btab_head; /* a kept table's file head (btab.c) */

struct btab {
	struct bentry *e; /* dense */
	size_t n, cap;
	uint64_t seq;		/* the latest stamp */
	struct oaidx ix;	/* position + 1 by page */
	int fd;			/* the file it is kept in, -1 if only in memory */
	struct btab_head *head; /* the file's mapping: the head, then e */
	size_t map_bytes;
};

/* An empty table (allocates nothing). */
void btab_init(struct btab *t);
void btab_fini(struct btab *t);

/* The entry of the page holding addr, or NULL. */
struct bentry *btab_find(const struct btab *t, uint64_t addr);

/*
 * The entry of e's page if it is still e (the same backing and content,
 * as a copy taken earlier says), or NULL: it left, or another took its
 * place meanwhile.
 */
struct bentry *btab_find_same(const struct btab *t, const struct bentry *e);

/* Enter e, replacing an entry of the same page: 0 or -ENOMEM (unchanged). */
int btab_put(struct btab *t, const struct bentry *e);

/* Remove e (an entry of t); the last entry moves into its place. */
void btab_del(struct btab *t, struct bentry *e);

/*
 * Keep t from now on in the file name of the directory dirfd, made anew
 * with t's entries: 0 or a negative errno (t unchanged).
 */
int btab_keep(struct btab *t, int dirfd, const char *name);

/*
 * Load the kept table name of dirfd into t (empty, in memory), which is
 * kept there from then on: 0, -ENOENT, or another negative errno. *torn
 * gets the number of entries dropped as torn or superseded, or missing
 * from a file cut short. A killed agent leaves at most two (a deletion's
 * torn copy, and the entry it copied); more is damage.
 */
int btab_load(struct btab *t, int dirfd, const char *name, size_t *torn);

/* Check the invariants above: 0, or -EUCLEAN with *why naming the broken one. */
int btab_check(const struct btab *t, const char **why);

#endif
