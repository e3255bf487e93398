/*
 * local - the protocol between a node's agent and the processes that load
 * libcksm, over the agent's Unix socket (SOCK_SEQPACKET, one message per
 * packet, every message a struct cksm_local; file descriptors travel as
 * SCM_RIGHTS). docs/protocol.md describes it. Both sides check every
 * field: magic, version, type, and the ranges against the process's own.
 *
 *   process -> agent  HELLO    a: the process's flags (CKSM_LOCAL_MERGE_ALL,
 *                              CKSM_LOCAL_FORKED), b: the smallest mapping
 *                              to treat as mergeable, token: its beacon (a
 *                              private read-only mapping of
 *                              CKSM_LOCAL_BEACON_PAGES pages, never written)
 *   agent -> process  DEVFD    with an open /dev/userfaultfd (status < 0:
 *                              refused, with the errno)
 *   process -> agent  UFFD     with the userfaultfd made from it
 *   agent -> process  READY    status 0, or why the agent gives up on it
 *   process -> agent  RANGE    a, b: [start, start + len) was made mergeable
 *   agent -> process  ZAP      token, a, b: drop [a, a + b) (MADV_DONTNEED)
 *   process -> agent  ZAPPED   token, status: 0 or -errno of the madvise
 *   agent -> process  KSM      a, b: madvise(MADV_MERGEABLE) the range
 *   agent -> process  SCRUB    a, b: drop [a, a + b) of the scratch (below)
 *   process -> agent  SCRUBBED a, b, status: done (0 or -errno)
 *   process -> agent  OWN      a, b: [a, a + b) is libcksm's own memory,
 *                              which its zaps touch (its data, the
 *                              stack of the thread that serves the
 *                              agent): never to be evicted
 *   process -> agent  KID      token: a fork child's key (CHILD), a: its
 *                              pid, once fork() returned it
 *
 * Where the kernel has UFFDIO_MOVE (Linux 6.8) and the process has a
 * scratch (HELLO's CKSM_LOCAL_SCRATCH), a ZAP says CKSM_LOCAL_ZAP_MOVE in
 * pad, a page of the scratch in status and, in b, the XXH3-64 of the
 * page's content as compared (the length is one page): libcksm then
 * moves the page into the scratch (UFFDIO_MOVE, on its own userfaultfd)
 * instead of dropping it, and only if the page is still there and
 * write-protected (its pagemap): a page mapped anew since the agent
 * compared it is not the one that was compared, and stays; one mapped
 * anew between that look and the move has another hash, and goes back
 * at once. The kernel moves a page atomically and refuses one pinned for
 * a device or shared with a fork child. The agent
 * checks what was moved before the eviction counts; SCRUB frees the
 * scratch's pages, whose content the pool holds already.
 *
 * The process keeps its userfaultfd for as long as it is attached: if the
 * agent dies, the ranges stay registered and a fault waits for the next
 * agent instead of reading zeroes. It connects again (with backoff) and
 * resumes: HELLO with CKSM_LOCAL_RESUMING, then
 *   process -> agent  RESUME   with its userfaultfd; token, a, status: its
 *                              last zap (token, address, madvise's result)
 *                              and pad its state (CKSM_LOCAL_ZAP_*)
 * and the agent answers READY once it took over the table it kept for
 * the process, or DEVFD when it kept none (the process then closes the
 * old userfaultfd and attaches anew). An agent that stops with every
 * page of a process home unregisters its ranges first, so that the
 * userfaultfd it leaves behind holds nothing up.
 * A forked child's userfaultfd comes to the agent with the fork event;
 * until the child re-attaches (below) the agent's copy would be the only
 * one, so the agent hands one to the parent at once:
 *   agent -> process  CHILD    token: the child's key, with its userfaultfd
 *                              (keep it for the agent); without one, a:
 *                              0 the child is served but not kept past
 *                              this agent, CKSM_LOCAL_CHILD_LOST its
 *                              userfaultfd could not be kept at all
 * Every fork event of a process with a connection is answered so, in the
 * order of the forks; libcksm's fork() holds the child back until the
 * answer comes, and forks again when the child's userfaultfd is lost (no
 * answer before the connection ends: the agent died holding it). READY
 * says so in b (CKSM_LOCAL_FORKS_ANSWERED) once something of the process
 * is registered (its beacon), so that every fork makes an event.
 *   agent -> process  FORGET   token: close the child's (it re-attached
 *                              with a copy of its own, or it is gone)
 * and a parent that resumes sends each one it keeps back, after READY:
 *   process -> agent  CHILD    token: the key, with the child's userfaultfd
 * A forked child re-attaches without a new userfaultfd: the fork event
 * gave the agent one for the child already, and the agent must learn
 * which. HELLO has CKSM_LOCAL_FORKED; the agent answers
 *   agent -> process  BEACON   a: a page index into the beacon
 * and the process drops that page of its beacon (MADV_DONTNEED) and reads
 * it. The read faults on the child's userfaultfd, and the kernel names
 * the faulting thread: the agent pairs that userfaultfd with the
 * connection when the thread is the connecting process's, and sends READY.
 */
#ifndef CKSM_LOCAL_H
#define CKSM_LOCAL_H

#include <stdint.h>

#define CKSM_LOCAL_SOCKET  "/run/cksm/agent.sock"
#define CKSM_LOCAL_MAGIC   0x636b736du /* "cksm" */
#define CKSM_LOCAL_VERSION 1

enum cksm_local_type {
	CKSM_LOCAL_HELLO = 1,
	CKSM_LOCAL_DEVFD = 2,
	CKSM_LOCAL_UFFD = 3,
	CKSM_LOCAL_READY = 4,
	CKSM_LOCAL_RANGE = 5,
	CKSM_LOCAL_ZAP = 6,
	CKSM_LOCAL_ZAPPED = 7,
	CKSM_LOCAL_KSM = 8,
	CKSM_LOCAL_BEACON = 9,
	CKSM_LOCAL_RESUME = 10,
	CKSM_LOCAL_CHILD = 11,
	CKSM_LOCAL_FORGET = 12,
	CKSM_LOCAL_SCRUB = 13,
	CKSM_LOCAL_SCRUBBED = 14,
	CKSM_LOCAL_OWN = 15,
	CKSM_LOCAL_KID = 16,
};

/* A process's last zap, as RESUME tells it. */
enum cksm_local_zap_state {
	CKSM_LOCAL_ZAP_NONE = 0,    /* none since it attached to the agent that died */
	CKSM_LOCAL_ZAP_RUNNING = 1, /* its madvise runs (or is about to) */
	CKSM_LOCAL_ZAP_DONE = 2,    /* its madvise returned status */
};

#define CKSM_LOCAL_MERGE_ALL	  0x1u /* every private anonymous mapping >= b */
#define CKSM_LOCAL_FORKED	  0x2u /* a forked child re-attaching */
#define CKSM_LOCAL_CHILD_LOST	  1u   /* CHILD's a: fork again */
#define CKSM_LOCAL_FORKS_ANSWERED 1u   /* READY's b: every fork of it is answered (CHILD) */
#define CKSM_LOCAL_RESUMING	  0x4u /* attached before: RESUME follows */
#define CKSM_LOCAL_SCRATCH	  0x8u /* it has the scratch (below) */
#define CKSM_LOCAL_ZAP_MOVE	  1u   /* ZAP's pad: move into the scratch page status */

#define CKSM_LOCAL_BEACON_PAGES 64u
/*
 * The beacon's pages 0 to CKSM_LOCAL_BEACON_SLOTS - 1 are told to
 * re-attaching children; the last one is the agent's mark: at attach the
 * agent fills it (UFFDIO_COPY, through the process's userfaultfd) with a
 * random value that only the address space of that userfaultfd holds, and
 * checks it in every read of the process's memory that can lead to a zap,
 * so that a process that ran exec (or a pid used again) is never read in
 * place of the memory the agent serves.
 */
#define CKSM_LOCAL_BEACON_SLOTS 63u
#define CKSM_LOCAL_BEACON_MARK	63u
/*
 * The scratch: CKSM_LOCAL_SCRATCH_PAGES private, writable, anonymous
 * pages at CKSM_LOCAL_SCRATCH_AT pages from the beacon, between two pages
 * of nothing (so that no mapping of the program merges with it). The
 * program never touches it; the agent moves the pages it evicts there,
 * CKSM_LOCAL_SCRUB_PAGES at a time, and asks for them to be dropped.
 */
#define CKSM_LOCAL_SCRATCH_AT	 (CKSM_LOCAL_BEACON_PAGES + 2u)
#define CKSM_LOCAL_SCRATCH_PAGES 64u
#define CKSM_LOCAL_SCRUB_PAGES	 16u
#define CKSM_LOCAL_MAP_PAGES	 (CKSM_LOCAL_SCRATCH_AT + CKSM_LOCAL_SCRATCH_PAGES + 1u)

/*
 * The page right after the beacon is the process's own, writable: libcksm
 * keeps there the state of its last zap. A zap and a fork never overlap
 * (libcksm holds forks back while a zap runs), so when the agent reads a
 * fork event it reads this (process_vm_readv) to learn whether the zap of
 * the page under eviction ran before the fork: the child's copy of that
 * page's entry stands only if the zap, not the program, dropped the page.
 */
struct cksm_local_zapstate {
	uint64_t token, addr;
	int32_t state; /* enum cksm_local_zap_state */
	int32_t status;
};
struct cksm_local {
	uint32_t magic;
	uint16_t version;
	uint16_t type;
	int32_t status;
	uint32_t pad;
	uint64_t token;
	uint64_t a;
	uint64_t b;
};

/* A message of type with magic and version set, the rest zero. */
struct cksm_local cksm_local_msg(uint16_t type);

/* Send m (and pass_fd when >= 0); 0 or a negative errno. flags: MSG_*. */
int cksm_local_send(int fd, const struct cksm_local *m, int pass_fd, int flags);

/*
 * Receive one message into m, a descriptor that came with it into
 * *got_fd (-1 if none; extra ones are closed). Returns 0, a negative
 * errno (-EAGAIN with MSG_DONTWAIT, -ECONNRESET at the end), or -EPROTO
 * with *why naming what was wrong with the message.
 */
int cksm_local_recv(int fd, struct cksm_local *m, int *got_fd, int flags, const char **why);

/*
 * The same, also giving the sender's pid as the kernel vouches for it
 * (SO_PASSCRED set on fd), or 0 when none came.
 */
int cksm_local_recv_from(int fd, struct cksm_local *m, int *got_fd, int flags, const char **why,
			 int *sender);

#endif
