/*
 * remap_move - the remap back-end of processes that keep a scratch
 * (local.h), where the kernel has UFFDIO_MOVE (Linux 6.8): libcksm moves
 * the page out of the program's mapping into a page of the scratch that
 * the agent names, rather than dropping it.
 *
 * What this closes that a drop cannot:
 *   - a page mapped anew at the address after the compare (an unmap and a
 *     mapping made by the program, or by its C library: brk, an arena)
 *     is not write-protected, so libcksm leaves it, where madvise would
 *     have dropped what the program wrote there;
 *   - the kernel refuses to move a page pinned for a device (direct I/O,
 *     io_uring's registered buffers, RDMA), or shared with a fork child;
 *   - a mapping made by another thread between libcksm's look and its
 *     move: libcksm copies the page back at once when the address left
 *     the mappings its userfaultfd serves, and what was moved is checked
 *     here before the eviction counts (its content is the entry's, or it
 *     is put back).
 * The ZAP and its answer travel as before; a fork and a move never
 * overlap either (libcksm holds forks back while a zap runs).
 */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <xxhash.h>

#include "backing_int.h"
#include "cid.h"
#include "log.h"
#include "uffd.h"

#define NBATCH (CKSM_LOCAL_SCRATCH_PAGES / CKSM_LOCAL_SCRUB_PAGES)

/* Ask for batch i of m's scratch to be dropped. m->lock held. */
static void scrub_ask(struct mm *m, unsigned i, unsigned n)
{
	struct cksm_local r = cksm_local_msg(CKSM_LOCAL_SCRUB);

	r.a = m->scratch + (uint64_t)i * CKSM_LOCAL_SCRUB_PAGES * PAGE;
	r.b = (uint64_t)n * CKSM_LOCAL_SCRUB_PAGES * PAGE;
	if (m->sock >= 0 && cksm_local_send(m->sock, &r, -1, MSG_DONTWAIT) == 0)
		for (unsigned k = i; k < i + n; k++)
			m->scrub[k] = SCRUB_ASKED;
}

void scratch_reset(struct mm *m)
{
	if (!m->scratch)
		return;
	for (unsigned i = 0; i < NBATCH; i++)
		m->scrub[i] = SCRUB_FILLING;
	m->scratch_next = 0;
	scrub_ask(m, 0, NBATCH);
}

void scratch_scrubbed(struct mm *m, uint64_t a, uint64_t len, int status)
{
	pthread_mutex_lock(&m->lock);
	if (m->scratch && a >= m->scratch && len <= CKSM_LOCAL_SCRATCH_PAGES * PAGE &&
	    a - m->scratch <= CKSM_LOCAL_SCRATCH_PAGES * PAGE - len) {
		unsigned i = (unsigned)((a - m->scratch) / PAGE / CKSM_LOCAL_SCRUB_PAGES);
		unsigned n = (unsigned)(len / PAGE / CKSM_LOCAL_SCRUB_PAGES);

		for (unsigned k = i; k < i + n; k++)
			m->scrub[k] = SCRUB_FREE; /* a page left there makes a move say EEXIST */
		pthread_cond_broadcast(&m->cond); /* a move may wait for it (evict.c) */
		if (status)
			log_warn("process %d could not drop its scratch: %s", (int)m->pid,
				 strerror(-status));
	}
	pthread_mutex_unlock(&m->lock);
}

bool scratch_quiet(const struct mm *m)
{
	for (unsigned i = 0; i < NBATCH; i++)
		if (m->scrub[i] == SCRUB_ASKED)
			return false;
	return true;
}

/* The scratch page to fill next, or 0 when every batch waits for its scrub. */
static uint64_t scratch_slot(struct mm *m)
{
	for (unsigned n = 0; n < NBATCH; n++) {
		unsigned i = m->scratch_next / CKSM_LOCAL_SCRUB_PAGES;

		if (m->scrub[i] != SCRUB_ASKED)
			return m->scratch + (uint64_t)m->scratch_next * PAGE;
		m->scratch_next = (i + 1) % NBATCH * CKSM_LOCAL_SCRUB_PAGES;
	}
	return 0;
}

/* The slot scratch_slot gave is full now: on to the next, asking for a batch's scrub when it ends. */
static void scratch_filled(struct mm *m)
{
	unsigned i = m->scratch_next / CKSM_LOCAL_SCRUB_PAGES;

	m->scrub[i] = SCRUB_FILLING;
	m->scratch_next = (m->scratch_next + 1) % CKSM_LOCAL_SCRATCH_PAGES;
	if (m->scratch_next % CKSM_LOCAL_SCRUB_PAGES == 0)
		scrub_ask(m, i, 1);
}

static const uint8_t zeroes[PAGE];

static int move_zap(struct mm *m, uint64_t addr, uint64_t len, uint64_t token, const void *expect)
{
	struct cksm_local r = cksm_local_msg(CKSM_LOCAL_ZAP);
	uint64_t slot;

	if (len != PAGE || !m->scratch)
		return -EINVAL;
	slot = scratch_slot(m);
	if (!slot)
		return -ENOSPC; /* the process has not dropped its scratch yet */
	r.token = token;
	r.a = addr;
	r.b = XXH3_64bits(expect ? expect : zeroes, PAGE); /* the page is what was compared */
	r.pad = CKSM_LOCAL_ZAP_MOVE;
	r.status = (int32_t)((slot - m->scratch) / PAGE);
	if (cksm_local_send(m->sock, &r, -1, MSG_DONTWAIT))
		return -ESRCH; /* not sent: the process is gone */
	m->moved_to = slot; /* filled once checked (move_check): its batch is not dropped before */
	return -EINPROGRESS;
}

/*
 * libcksm moved the page at addr into m->moved_to: is it what was
 * compared? (It moves only a page still write-protected, and copies one
 * back at once if the address left the mappings its userfaultfd serves
 * in between.) Otherwise it goes back, and the eviction fails; a mapping
 * the program made over the address since (its unmap event drops the
 * entry) takes nothing back. m->lock held.
 */
int move_check(struct mm *m, const struct bentry *e)
{
	const struct cid_domain *dom = cid_domain_find(m->b->domains, m->b->cfg->ndomains, e->id);
	uint64_t addr = e->page << 12;
	uint8_t buf[PAGE];
	struct iovec local = { buf, PAGE };
	struct iovec remote = { (void *)(uintptr_t)m->moved_to, PAGE };
	bool same;

	pid_t pid = m->pid;
	ssize_t got = -1;

	/* Read without m->lock: should the process drop its scratch page
	 * meanwhile, the read faults, and the fault thread needs the lock.
	 * (Faults on addr wait for this eviction's end all the same.) */
	if (pid && uffd_present(m->pagemap, m->moved_to) == 1) {
		pthread_mutex_unlock(&m->lock);
		got = process_vm_readv(pid, &local, 1, &remote, 1, 0);
		pthread_mutex_lock(&m->lock);
	}
	scratch_filled(m); /* only now: its batch may be dropped from here on */
	if (got != PAGE)
		return 0; /* the process is gone, or nothing to tell by: as answered */
	if (e->kind == BACKED_ZERO) {
		same = true;
		for (size_t i = 0; i < PAGE && same; i++)
			same = buf[i] == 0;
	} else {
		same = dom && cid_eq(cid_of(dom, buf), e->id);
	}
	if (same)
		return 0;
	log_error("process %d: the page moved out of %#llx was not the one compared; %s",
		  (int)m->pid, (unsigned long long)addr,
		  uffd_copy(m->uffd, addr, buf) ? "its mapping is gone" : "put back");
	return -ESTALE;
}

void move_unused(struct mm *m)
{
	scratch_filled(m);
}

const struct remap_ops remap_move = {
	.name = "move",
	.zap = move_zap,
	.ksm_advise = libcksm_ksm_advise,
};
