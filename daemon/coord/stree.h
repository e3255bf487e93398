/*
 * stree - a shard's stable tree: KSM's stable tree of chains and dups,
 * across a cluster.
 *
 * A content (128-bit id) that was seen twice gets an entry. Its dups are
 * copies in nodes' page pools, each named by (node, slot, generation);
 * each dup carries, per node, how many of that node's pages it backs
 * (agents keep their own page -> dup maps; the shard never stores pages).
 * Several dups form a chain: replicas on distinct nodes, or more dups
 * because every dup reached max_page_sharing.
 *
 * See stree.c for the decisions and the invariants the tree keeps.
 */
#ifndef CKSM_STREE_H
#define CKSM_STREE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define STREE_MAX_NODES	   4096
#define STREE_MAX_REPLICAS 8

struct stree_params {
	uint32_t max_page_sharing;  /* references one dup may serve */
	uint32_t replicas;	    /* R: dups on distinct nodes for remote backing */
	bool merge_across_nodes;    /* false: every node backs only from itself */
	uint32_t prune_ticks;	    /* ticks a dup may stay unreferenced */
	uint64_t unstable_capacity; /* ids per unstable generation */
};

struct stree_dupref {
	uint32_t node; /* node id (the wire's, not the index) */
	uint64_t slot;
	uint32_t gen;
};

enum stree_action {
	STREE_LEAVE = 1,       /* keep the page resident (seen once, or waiting) */
	STREE_BACK_LOCAL = 2,  /* back it by the dup in the reporter's pool */
	STREE_BACK_REMOTE = 3, /* back it by these remote replicas, in order */
	STREE_CREATE_DUP = 4,  /* copy the page into the reporter's pool */
};

struct stree_decision {
	enum stree_action action;
	bool shared; /* the content is in the tree: another copy exists */
	unsigned ndups;
	struct stree_dupref dups[STREE_MAX_REPLICAS];
};

/* Orders the tree gives to nodes other than a reporter. */
struct stree_ops {
	/* node must copy content id into its pool from one of sources. */
	void (*create)(void *arg, uint32_t node, uint64_t hi, uint64_t lo,
		       const struct stree_dupref *sources, unsigned nsources);
	/* node must free this dup once nothing on it references it. */
	void (*release)(void *arg, uint64_t hi, uint64_t lo, const struct stree_dupref *dup);
};

struct stree_stats {
	uint64_t contents;	     /* entries in the tree */
	uint64_t pages_shared;	     /* dups with at least one reference */
	uint64_t pages_sharing;	     /* references beyond one per such dup: pages saved */
	uint64_t pages_unshared;     /* ids seen once in the current generation */
	uint64_t stable_node_chains; /* contents with more than one dup */
	uint64_t stable_node_dups;   /* dups in those chains */
	uint64_t dups;		     /* every dup */
	uint64_t refs;		     /* every reference */
	uint64_t bytes;		     /* memory the tree and filter hold */
};

struct stree;

struct stree *stree_create(const struct stree_params *p, const struct stree_ops *ops, void *arg);
void stree_destroy(struct stree *t);

/*
 * Nodes. A node must be added before anything names it; rack groups nodes
 * into failure domains; room is the number of free pool slots it reported
 * (a node without room is never asked to create a dup).
 */
int stree_node_add(struct stree *t, uint32_t node, uint32_t rack);
void stree_node_room(struct stree *t, uint32_t node, uint64_t free_slots);
/*
 * The node is dead: its dups leave their chains (their references go
 * with them), pending creates on it are forgotten, and every content that
 * still backs pages remotely gets create orders until it has R dups on
 * distinct live nodes again (as far as live nodes with room allow). Its
 * references on other nodes' dups stay (its processes may be waiting for
 * their agent) until stree_node_forget.
 */
void stree_node_dead(struct stree *t, uint32_t node);
/*
 * The node's references on dups go: it is back and resyncs what it uses
 * now, or it has been dead too long to come back.
 */
void stree_node_forget(struct stree *t, uint32_t node);
/* A dead node is back (it must resync what it holds). */
void stree_node_live(struct stree *t, uint32_t node);

/*
 * Start loading what a report of this id will touch (index slot, filter
 * block). Reports come in batches: prefetching a few ids ahead hides the
 * memory latency that dominates a large tree.
 */
void stree_prefetch(const struct stree *t, uint64_t hi, uint64_t lo);

/* A node reported a stable content it holds in `pages` pages. */
int stree_report(struct stree *t, uint32_t node, uint64_t hi, uint64_t lo, uint32_t pages,
		 struct stree_decision *out);

/*
 * The node offers again a content it reported before (unchanged since):
 * the unstable filter remembers it anew, but it is not a second sighting
 * on its own; otherwise as stree_report.
 */
int stree_report_again(struct stree *t, uint32_t node, uint64_t hi, uint64_t lo, uint32_t pages,
		       struct stree_decision *out);

/*
 * Either of the above (flags: STREE_AGAIN), and with STREE_STAYS for a
 * content none of whose pages on the node may be evicted: no dup is
 * made or ordered for such a report, as no page would use it.
 */
#define STREE_AGAIN 1u
#define STREE_STAYS 2u
int stree_report_flags(struct stree *t, uint32_t node, uint64_t hi, uint64_t lo, uint32_t pages,
		       unsigned flags, struct stree_decision *out);

/*
 * The node made the dup it was asked for. Returns 0, -ENOENT (unknown
 * content), -EPERM (no create was ordered from this node) or -EEXIST.
 */
int stree_dup_created(struct stree *t, uint32_t node, uint64_t hi, uint64_t lo, uint64_t slot,
		      uint32_t gen);
/* The node could not make it: forget the order. */
void stree_dup_failed(struct stree *t, uint32_t node, uint64_t hi, uint64_t lo);

/*
 * The node's references on a dup changed by delta. Returns 0, -ENOENT
 * (no such content or dup: a forged reference), -ERANGE (the node's count
 * would go negative) or -E2BIG (above max_page_sharing); nothing changes
 * on error.
 */
int stree_ref(struct stree *t, uint32_t node, uint64_t hi, uint64_t lo,
	      const struct stree_dupref *dup, int32_t delta);

/*
 * The node's references on a dup are now refs (capped so that the dup's
 * total stays within max_page_sharing). Returns 0 or -ENOENT.
 */
int stree_ref_set(struct stree *t, uint32_t node, uint64_t hi, uint64_t lo,
		  const struct stree_dupref *dr, uint32_t refs);

/*
 * After a shard restart: the node says it holds (held_here) or references
 * (refs) this dup. Idempotent; the order of nodes does not matter.
 */
int stree_resync(struct stree *t, uint32_t node, uint64_t hi, uint64_t lo,
		 const struct stree_dupref *dup, uint32_t refs, bool held_here);

/*
 * Pruning walks the tree in rounds: each entry visited counts one tick
 * toward releasing its unreferenced dups and dropping it when it has none,
 * gets re-replication orders if it lacks replicas, and is added to the
 * round's statistics. stree_prune_step visits at most max entries and
 * returns true when it completed a round; stree_prune runs a whole round.
 * The shard steps in small slices so its loop never stalls on a big tree.
 */
bool stree_prune_step(struct stree *t, size_t max);
void stree_prune(struct stree *t);
/* No round in progress. */
bool stree_prune_idle(const struct stree *t);
/* The statistics of the last completed round (cheap). */
void stree_round_stats(const struct stree *t, struct stree_stats *s);

/* Age the unstable filter (a scan interval passed). */
void stree_age(struct stree *t);

void stree_stats(const struct stree *t, struct stree_stats *s);

/*
 * Per-node figures in one walk: ids[i], the dups node i holds (held[i])
 * and its pages they back (refs[i]), for up to max nodes; returns how many.
 */
size_t stree_nodes_stats(const struct stree *t, uint32_t *ids, uint64_t *held, uint64_t *refs,
			 size_t max);

/* m[i * n + j]: pages node i backs from dups on node j (node ids in ids[]). */
size_t stree_matrix(const struct stree *t, uint32_t *ids, uint64_t *m, size_t max_nodes);

/*
 * One content, for operators: whether it is in the tree or the filter
 * remembers it, the node ordered to make a dup, and each dup with every
 * node's references (dup_cb once per dup, then ref_cb per node on it).
 * Returns 1 if the content is in the tree, 0 if not.
 */
int stree_visit(const struct stree *t, uint64_t hi, uint64_t lo, bool *seen, uint32_t *pending,
		void (*dup_cb)(void *arg, const struct stree_dupref *d, uint32_t total),
		void (*ref_cb)(void *arg, uint32_t node, uint32_t pages), void *arg);

/* Write the tree in a canonical text form (sorted), for comparisons. */
void stree_dump(const struct stree *t, FILE *out);

/* Check the invariants; returns 0 or -EUCLEAN with the first violation in why. */
int stree_check(const struct stree *t, char *why, size_t len);

#endif
