/*
 * scan - the agent's scanner.
 *
 * Overview. A pass collects the targets (target.h), merges them with the
 * per-process state kept from earlier passes, and for each target walks
 * the VMAs that /proc/PID/smaps lists:
 *
 *  - VMAs that are not private anonymous memory are not ours: file
 *    mappings, [vdso]/[vvar], and (for scan_mergeable targets) VMAs
 *    without KSM's "mg" flag are passed over without a word;
 *  - shared, mlocked, hugetlb and VM_IO/PFNMAP VMAs are skipped whole and
 *    their resident pages counted by reason (from smaps, without a walk);
 *  - the rest is walked in windows of WIN_PAGES: one pread of
 *    /proc/PID/pagemap says which pages are present; a page that is not
 *    exclusively mapped (or any page of a VMA holding THPs) is looked up
 *    in /proc/kpageflags, which tells KSM pages, the kernel's zero page
 *    and THPs, all skipped and counted; the remaining pages are read with
 *    one process_vm_readv into a buffer small enough to stay in cache and
 *    hashed there.
 *
 * Each page's 64-bit checksum is compared with the previous pass's: a page
 * seen for the first time is fresh, a changed one volatile, an unchanged
 * all-zero one zero, any other unchanged one stable. A stable page that
 * was not reported yet gets its 128-bit content id (cid.h) and goes to the
 * report callback; a later change clears the mark.
 *
 * State. Per page 10 bytes: the checksum and a 16-bit meta word, in chunks
 * of CHUNK_PAGES that exist only while the pass finds present pages in
 * them. A VMA that disappears, a process that exits or is replaced (its
 * start time changes) takes its state with it at the next pass, so memory
 * follows what is mapped now, not what ever was.
 *
 * Exits, execs and unmaps during a pass are normal: ESRCH ends the
 * process's pass, EFAULT a window's.
 */
#include "scan.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "smaps.h"
#include "util.h"

#define PAGE	    4096u
#define CHUNK_PAGES 512u /* pages of state per chunk (2 MiB of address space) */
#define WIN_PAGES   128u /* pages read per process_vm_readv (512 KiB) */

/* /proc/PID/pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst) */
#define PM_PFN_MASK  ((1ULL << 55) - 1)
#define PM_EXCLUSIVE (1ULL << 56)
#define PM_SWAP	     (1ULL << 62)
#define PM_PRESENT   (1ULL << 63)

/* /proc/kpageflags bits */
#define KPF_KSM	      21
#define KPF_THP	      22
#define KPF_ZERO_PAGE 24

/* meta word of a page */
#define M_SEEN	    0x1u /* csum holds the previous pass's checksum */
#define M_REPORTED  0x2u /* handed to the report callback */
#define M_SHARED    0x4u /* its shard says another copy exists */
#define M_AGE_SHIFT 3	 /* passes unchanged, up to M_AGE_MAX */
#define M_AGE_MASK  (0x1fu << M_AGE_SHIFT)
#define M_AGE_MAX   31u
#define M_GEN_SHIFT 8 /* report generation it was handed out in */

const char *const scan_skip_names[SKIP_MAX] = {
	[SKIP_SWAPPED] = "swapped", [SKIP_SHARED] = "shared",	    [SKIP_MLOCKED] = "mlocked",
	[SKIP_HUGETLB] = "hugetlb", [SKIP_IO] = "io_pfnmap",	    [SKIP_KSM] = "ksm",
	[SKIP_THP] = "thp",	    [SKIP_ZERO_PAGE] = "zero_page",
};

struct chunk {
	uint32_t pass; /* last pass that found a present page here */
	uint16_t meta[CHUNK_PAGES];
	uint64_t csum[CHUNK_PAGES];
};

struct vstate {
	uint64_t start, end;
	struct chunk **chunks; /* one slot per CHUNK_PAGES of the VMA */
	size_t nchunks;
	struct scan_counts last; /* what the last pass saw here */
	bool kept;		 /* never evicted: VM_MERGEABLE, or VM_DONTCOPY unless moved */
	bool dontcopy;		 /* VM_DONTCOPY */
	uint64_t span;		 /* the huge page span last judged (thp_span_pays) */
	uint32_t span_pass;	 /* ... in this pass */
	bool span_pays;		 /* ... and the verdict */
};

struct proc {
	pid_t pid;
	unsigned long long starttime; /* from /proc/PID/stat: tells pid reuse */
	uint8_t domain;
	uint8_t scope;
	int16_t group;
	uint8_t attached; /* a libcksm process: its pages may be evicted */
	struct vstate *v; /* sorted by start */
	size_t nv;
	struct scan_counts total; /* what the last pass saw in it */
};

struct scanner {
	const struct config *cfg;
	struct targets *targets;
	const struct cid_domain *domains;
	scan_report_fn report;
	void *report_arg;
	scan_evict_fn evict;
	void *evict_arg;
	bool evict_dontcopy; /* scanner_evict_dontcopy */
	scan_sleep_fn sleep;
	void *sleep_arg;
	int kpf_fd;	    /* /proc/kpageflags */
	struct proc *procs; /* sorted by pid */
	size_t nprocs;
	uint32_t pass;
	uint8_t gen;  /* report generation */
	bool again;   /* this generation refreshes what the shards were told */
	uint8_t *buf; /* WIN_PAGES pages */
	uint64_t zero_csum;
	size_t state_bytes;
	uint64_t tracked_pages;
	struct scan_counts groups[TARGET_MAX_GROUPS];
	struct census {
		struct hll h;	   /* every stable page */
		struct hll shared; /* those a shard said have another copy */
		uint64_t stable, zero;
	} census_cur[CONFIG_MAX_DOMAINS], census_last[CONFIG_MAX_DOMAINS];
	bool census_valid;     /* census_last holds a complete pass */
	uint64_t batch;	       /* work since the last sleep, in pages */
	uint64_t batch_cpu_ns; /* thread CPU time at the last sleep's end */
	bool budget_started;   /* batch_cpu_ns is from the scanning thread */
	bool stopping;
};

/* ---- state ------------------------------------------------------------- */

static void chunk_free(struct scanner *s, struct chunk **slot)
{
	struct chunk *ch = *slot;

	if (!ch)
		return;
	for (size_t j = 0; j < CHUNK_PAGES; j++)
		s->tracked_pages -= ch->meta[j] & M_SEEN;
	s->state_bytes -= sizeof(*ch);
	free(ch);
	*slot = NULL;
}

static void vstate_free(struct scanner *s, struct vstate *vs)
{
	for (size_t i = 0; i < vs->nchunks; i++)
		chunk_free(s, &vs->chunks[i]);
	s->state_bytes -= vs->nchunks * sizeof(*vs->chunks);
	free(vs->chunks);
	vs->chunks = NULL;
	vs->nchunks = 0;
}

static void proc_free(struct scanner *s, struct proc *p)
{
	for (size_t i = 0; i < p->nv; i++)
		vstate_free(s, &p->v[i]);
	s->state_bytes -= p->nv * sizeof(*p->v);
	free(p->v);
	p->v = NULL;
	p->nv = 0;
}

/* Size vs's chunk table for [start, end), keeping chunks that still fit. */
static int vstate_resize(struct scanner *s, struct vstate *vs, uint64_t end)
{
	size_t n = (size_t)((end - vs->start) / PAGE + CHUNK_PAGES - 1) / CHUNK_PAGES;
	struct chunk **nc;

	if (n == vs->nchunks) {
		vs->end = end;
		return 0;
	}
	for (size_t i = n; i < vs->nchunks; i++)
		chunk_free(s, &vs->chunks[i]);
	nc = realloc(vs->chunks, (n ? n : 1) * sizeof(*nc));
	if (!nc)
		return -ENOMEM;
	for (size_t i = vs->nchunks; i < n; i++)
		nc[i] = NULL;
	s->state_bytes += (n - vs->nchunks) * sizeof(*nc);
	vs->chunks = nc;
	vs->nchunks = n;
	vs->end = end;
	return 0;
}

static unsigned long long read_starttime(pid_t pid)
{
	char buf[1024];
	const char *f = proc_stat_fields((int)pid, buf, sizeof(buf));
	unsigned long long st = 0;

	if (!f ||
	    sscanf(f,
		   "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d %*d %*d %llu",
		   &st) != 1)
		return 0;
	return st;
}

/* ---- throttling --------------------------------------------------------- */

/*
 * After pages_to_scan pages, sleep sleep_millisecs, or longer if the CPU
 * the batch took needs it: a batch that used c of CPU is followed by at
 * least c * (100 - cpu_percent) / cpu_percent of sleep, so the thread's
 * share of one core stays within cpu_percent whatever the batch cost.
 */
uint64_t scanner_budget_ms(const struct scanner *s)
{
	uint64_t now = clock_ns(CLOCK_THREAD_CPUTIME_ID);
	uint64_t cpu = now > s->batch_cpu_ns ? now - s->batch_cpu_ns : 0;
	unsigned pct = s->cfg->cpu_percent;

	return pct < 100 ? (cpu * (100 - pct) / pct + 999999) / 1000000 : 0; /* round up */
}

void scanner_rested(struct scanner *s)
{
	s->batch = 0;
	s->batch_cpu_ns = clock_ns(CLOCK_THREAD_CPUTIME_ID);
}

static int throttle(struct scanner *s)
{
	uint64_t need, ms;

	if (!s->sleep || s->batch < s->cfg->pages_to_scan)
		return 0;
	need = scanner_budget_ms(s);
	ms = need > s->cfg->sleep_millisecs ? need : s->cfg->sleep_millisecs;
	if (s->sleep(s->sleep_arg, ms)) {
		s->stopping = true;
		return -EINTR;
	}
	scanner_rested(s);
	return 0;
}

/* ---- one page ------------------------------------------------------------ */

static bool all_zero(const void *p)
{
	const uint64_t *w = p;

	for (size_t i = 0; i < PAGE / sizeof(*w); i++)
		if (w[i])
			return false;
	return true;
}

/*
 * Pages of an attached process may be offered for eviction, except:
 *  - in VMAs the kernel's KSM may merge: KSM's merge builds a new PTE
 *    without the userfaultfd write-protect bit, so a write racing with
 *    an eviction there would not be caught. Those are KSM's alone;
 *  - in VM_DONTCOPY VMAs (MADV_DONTFORK), unless pages are moved out
 *    (scanner_evict_dontcopy): that is how memory registered for DMA is
 *    marked (libibverbs does it for every memory region), and a pinned
 *    page must never be dropped: the device would go on writing the old
 *    page. A drop cannot see a pin; a move can (the kernel refuses it).
 */
static bool evictable(const struct scanner *s, const struct proc *p, const struct vstate *vs)
{
	return p->attached && s->evict && !vs->kept;
}

/*
 * A page of a transparent huge page goes only with most of its huge
 * page: dropping one page splits the huge page, and the TLB reach it
 * gave is lost for the whole span. That pays when at least THP_PAYS of
 * the span's pages are stable and have another copy (or are zero):
 * judged once per span and pass, from the previous pass's state.
 */
#define THP_SPAN_PAGES 512u
#define THP_PAYS       384u

static bool thp_span_pays(struct scanner *s, struct vstate *vs, size_t pi)
{
	uint64_t span = (vs->start + (uint64_t)pi * PAGE) & ~((uint64_t)THP_SPAN_PAGES * PAGE - 1);
	size_t lo, hi, npages = (size_t)((vs->end - vs->start) / PAGE);
	unsigned n = 0;

	if (vs->span == span && vs->span_pass == s->pass)
		return vs->span_pays;
	lo = span > vs->start ? (size_t)((span - vs->start) / PAGE) : 0;
	hi = lo + THP_SPAN_PAGES - (size_t)((vs->start > span ? vs->start - span : 0) / PAGE);
	if (hi > npages)
		hi = npages;
	for (size_t j = lo; j < hi; j++) {
		const struct chunk *ch = vs->chunks[j / CHUNK_PAGES];
		unsigned meta, age;

		if (!ch)
			continue;
		meta = ch->meta[j % CHUNK_PAGES];
		age = (meta & M_AGE_MASK) >> M_AGE_SHIFT;
		if ((meta & M_SEEN) && age + 1 >= s->cfg->evict_age &&
		    ((meta & M_SHARED) || ch->csum[j % CHUNK_PAGES] == s->zero_csum))
			n++;
	}
	vs->span = span;
	vs->span_pass = s->pass;
	vs->span_pays = n >= THP_PAYS;
	return vs->span_pays;
}

/* May this page go (after its age and content said so)? */
static bool may_go(struct scanner *s, const struct proc *p, struct vstate *vs, size_t pi, bool thp,
		   struct scan_counts *c)
{
	if (!evictable(s, p, vs))
		return false;
	if (thp && !thp_span_pays(s, vs, pi)) {
		c->thp_kept++;
		return false;
	}
	return true;
}

/*
 * A page reported as unique is reported again (as such: scan_page.again)
 * once in RECHECK_PASSES passes, its turn spread by its place. The first
 * copy of a content to be reported is unique when the shard sees it; the
 * second makes the shard keep the content and order a dup, and only this
 * report again tells the first copy's node that its page may go too (as
 * KSM's unstable tree is searched anew on every pass).
 */
#define RECHECK_PASSES 8u
#define REDUP_PASSES   4u
static bool recheck_due(const struct scanner *s, const struct proc *p, size_t pi, unsigned meta)
{
	return !(meta & M_SHARED) &&
	       ((unsigned)pi + (unsigned)p->pid + s->pass) % RECHECK_PASSES == 0;
}

static void page_update(struct scanner *s, struct proc *p, struct vstate *vs, size_t pi,
			const uint8_t *bytes, bool thp, struct scan_counts *c)
{
	struct chunk *ch = vs->chunks[pi / CHUNK_PAGES];
	size_t j = pi % CHUNK_PAGES;
	uint64_t csum = cid_checksum(bytes);
	unsigned meta = ch->meta[j], age;
	struct scan_page pg;
	bool zero;

	c->scanned++;
	if (!(meta & M_SEEN)) {
		c->fresh++;
		s->tracked_pages++;
		ch->meta[j] = M_SEEN;
		ch->csum[j] = csum;
		return;
	}
	if (csum != ch->csum[j]) {
		c->volatile_++;
		ch->meta[j] = M_SEEN; /* forget any report: the content is gone */
		ch->csum[j] = csum;
		return;
	}
	age = (meta & M_AGE_MASK) >> M_AGE_SHIFT;
	if (age < M_AGE_MAX) {
		meta = (meta & ~M_AGE_MASK) | (age + 1) << M_AGE_SHIFT;
		ch->meta[j] = (uint16_t)meta;
	}
	age++;
	pg.pid = p->pid;
	pg.addr = vs->start + (uint64_t)pi * PAGE;
	pg.domain = p->domain;
	pg.bytes = bytes;
	pg.dontcopy = vs->dontcopy;
	zero = csum == s->zero_csum && all_zero(bytes);
	if (zero) {
		c->zero++;
		s->census_cur[p->domain].zero++;
		if (age >= s->cfg->evict_age && may_go(s, p, vs, pi, thp, c)) {
			pg.again = false;
			memset(&pg.id, 0, sizeof(pg.id));
			s->evict(s->evict_arg, &pg, true);
		}
		return; /* zero pages need no coordinator */
	}
	c->stable++;
	c->shared += (meta & M_SHARED) != 0;
	s->census_cur[p->domain].stable++;
	hll_add(&s->census_cur[p->domain].h, csum);
	if (meta & M_SHARED)
		hll_add(&s->census_cur[p->domain].shared, csum);
	if ((meta & M_REPORTED) && (meta >> M_GEN_SHIFT) == s->gen &&
	    !recheck_due(s, p, pi, meta)) {
		/* Only a content with another copy can have a dup to go to:
		 * unique pages are not hashed again on every pass. */
		if (age >= s->cfg->evict_age && (meta & M_SHARED) && may_go(s, p, vs, pi, thp, c)) {
			pg.again = true;
			pg.id = cid_of(&s->domains[p->domain], bytes);
			/* No dup for it yet (none was asked for while its region
			 * was sampled or hot): ask, once in REDUP_PASSES. */
			if (s->evict(s->evict_arg, &pg, false) &&
			    ((unsigned)pi + (unsigned)p->pid + s->pass) % REDUP_PASSES == 0) {
				pg.stays = false;
				if (s->report(s->report_arg, &pg) == 0)
					c->reported++;
			}
		}
		return;
	}
	pg.again = (meta & M_REPORTED) && (s->again || (meta >> M_GEN_SHIFT) == s->gen);
	/* A dup is made only where a page of the content may go. */
	pg.stays = !evictable(s, p, vs) || !s->cfg->domains[p->domain].evict;
	pg.id = cid_of(&s->domains[p->domain], bytes);
	if (s->report(s->report_arg, &pg) == 0) {
		/* A report again keeps what the last answer said until the next. */
		ch->meta[j] = (uint16_t)(M_SEEN | M_REPORTED | (meta & (M_SHARED | M_AGE_MASK)) |
					 (unsigned)s->gen << M_GEN_SHIFT);
		c->reported++;
	}
	if (age >= s->cfg->evict_age && may_go(s, p, vs, pi, thp, c))
		s->evict(s->evict_arg, &pg, false);
}

/* ---- one VMA ------------------------------------------------------------- */

static uint64_t kpageflags(struct scanner *s, uint64_t pfn)
{
	uint64_t f;

	if (pfn == 0 || s->kpf_fd < 0)
		return 0; /* no PFN without CAP_SYS_ADMIN: nothing known */
	if (pread(s->kpf_fd, &f, sizeof(f), (off_t)(pfn * sizeof(f))) != sizeof(f))
		return 0;
	return f;
}

/* Is page entry e to be read? If not, count why. */
static bool page_wanted(struct scanner *s, uint64_t e, bool thp_vma, bool *thp,
			struct scan_counts *c)
{
	uint64_t f;

	*thp = false;
	if (!(e & PM_PRESENT)) {
		if (e & PM_SWAP)
			c->skipped[SKIP_SWAPPED]++;
		return false;
	}
	if ((e & PM_EXCLUSIVE) && !thp_vma)
		return true;
	f = kpageflags(s, e & PM_PFN_MASK);
	if (f & (1ULL << KPF_ZERO_PAGE)) {
		c->skipped[SKIP_ZERO_PAGE]++;
		return false;
	}
	if (f & (1ULL << KPF_KSM)) {
		c->skipped[SKIP_KSM]++;
		return false;
	}
	*thp = f & (1ULL << KPF_THP);
	if (*thp && !s->cfg->scan_thp) {
		c->skipped[SKIP_THP]++;
		return false;
	}
	return true;
}

static int scan_window(struct scanner *s, struct proc *p, struct vstate *vs, int pm_fd,
		       size_t first, size_t n, bool thp_vma, struct scan_counts *c)
{
	uint64_t pm[WIN_PAGES];
	struct iovec remote[WIN_PAGES], local;
	uint16_t idx[WIN_PAGES];
	bool thp[WIN_PAGES];
	size_t nidx = 0, nrem = 0, got;
	uint64_t base = vs->start + (uint64_t)first * PAGE;
	ssize_t r;

	r = pread(pm_fd, pm, n * sizeof(pm[0]), (off_t)(base / PAGE * sizeof(pm[0])));
	if (r < 0)
		return errno == ESRCH ? -ESRCH : 0;
	n = (size_t)r / sizeof(pm[0]);
	for (size_t i = 0; i < n; i++) {
		uint64_t addr = base + (uint64_t)i * PAGE;

		if (!page_wanted(s, pm[i], thp_vma, &thp[nidx], c))
			continue;
		idx[nidx++] = (uint16_t)i;
		if (nrem &&
		    (uint64_t)remote[nrem - 1].iov_base + remote[nrem - 1].iov_len == addr) {
			remote[nrem - 1].iov_len += PAGE;
		} else {
			remote[nrem].iov_base = (void *)addr;
			remote[nrem].iov_len = PAGE;
			nrem++;
		}
	}
	s->batch += n;
	if (!nidx)
		return 0;
	{
		struct chunk **slot = &vs->chunks[first / CHUNK_PAGES];

		if (!*slot) {
			*slot = calloc(1, sizeof(**slot));
			if (!*slot)
				return -ENOMEM;
			s->state_bytes += sizeof(**slot);
		}
		(*slot)->pass = s->pass;
	}
	local.iov_base = s->buf;
	local.iov_len = nidx * PAGE;
	r = process_vm_readv(p->pid, &local, 1, remote, nrem, 0);
	if (r < 0)
		return errno == ESRCH ? -ESRCH : 0; /* EFAULT: unmapped under us */
	got = (size_t)r / PAGE;
	for (size_t k = 0; k < got; k++)
		page_update(s, p, vs, first + idx[k], s->buf + k * PAGE, thp[k], c);
	return 0;
}

static int scan_vma(struct scanner *s, struct proc *p, struct vstate *vs, const struct vma_info *vi,
		    int pm_fd)
{
	size_t npages = (size_t)((vs->end - vs->start) / PAGE);
	bool thp_vma = vi->anon_huge_kb > 0;
	int rc = 0;

	for (size_t w = 0; w < npages && !rc; w += WIN_PAGES) {
		/* Windows never straddle a chunk: WIN_PAGES divides CHUNK_PAGES. */
		size_t n = npages - w < WIN_PAGES ? npages - w : WIN_PAGES;

		rc = scan_window(s, p, vs, pm_fd, w, n, thp_vma, &vs->last);
		if (!rc)
			rc = throttle(s);
	}
	/* Chunks where this pass found nothing present go. */
	for (size_t i = 0; i < vs->nchunks && !rc; i++)
		if (vs->chunks[i] && vs->chunks[i]->pass != s->pass)
			chunk_free(s, &vs->chunks[i]);
	return rc;
}

/* ---- one process --------------------------------------------------------- */

/* Does this VMA belong to the target at all? */
static bool vma_in_scope(const struct proc *p, const struct vma_info *vi)
{
	if (!(vi->flags & VMA_ANON) || (vi->flags & VMA_SPECIAL))
		return false;
	/* An attached process's mergeable ranges are registered with its
	 * userfaultfd (libcksm keeps them from the kernel's KSM). */
	return p->scope == TARGET_WHOLE || (vi->flags & VMA_MERGEABLE) ||
	       (p->attached && (vi->flags & VMA_UFFD));
}

/* Whole-VMA skips, counted from smaps; false if the VMA is to be walked. */
static bool vma_skipped(const struct vma_info *vi, struct scan_counts *c)
{
	if (vi->flags & VMA_SHARED)
		c->skipped[SKIP_SHARED] += vi->rss_pages;
	else if (vi->flags & VMA_HUGETLB)
		c->skipped[SKIP_HUGETLB] += vi->hugetlb_kb / 4;
	else if (vi->flags & VMA_IO)
		c->skipped[SKIP_IO] += vi->rss_pages;
	else if (vi->flags & VMA_LOCKED)
		c->skipped[SKIP_MLOCKED] += vi->rss_pages;
	else
		return !(vi->flags & VMA_READABLE);
	return true;
}

/*
 * A VMA with nothing resident (Rss counts neither the kernel's zero page
 * nor swap) that is large enough to be a reservation is not walked: its
 * pagemap would cost more than it could tell.
 */
static bool empty_and_large(const struct vma_info *vi)
{
	return vi->rss_pages == 0 && vi->end - vi->start > (256ULL << 20);
}

/* Line p's VMA states up with the mappings vi (both sorted by start). */
static int proc_merge_vmas(struct scanner *s, struct proc *p, const struct vma_info *vi, size_t n)
{
	struct vstate *nv = calloc(n ? n : 1, sizeof(*nv));
	size_t o = 0, k = 0;

	if (!nv)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		if (!vma_in_scope(p, &vi[i]))
			continue;
		while (o < p->nv && p->v[o].start < vi[i].start)
			vstate_free(s, &p->v[o++]);
		if (o < p->nv && p->v[o].start == vi[i].start)
			nv[k] = p->v[o++];
		else
			nv[k].start = vi[i].start;
		memset(&nv[k].last, 0, sizeof(nv[k].last));
		/* The chunk table is sized when the VMA is walked (scan_proc). */
		if (nv[k].chunks && vstate_resize(s, &nv[k], vi[i].end))
			vstate_free(s, &nv[k]);
		nv[k].end = vi[i].end;
		k++;
	}
	while (o < p->nv)
		vstate_free(s, &p->v[o++]);
	s->state_bytes -= p->nv * sizeof(*p->v);
	s->state_bytes += k * sizeof(*nv);
	free(p->v);
	p->v = nv;
	p->nv = k;
	return 0;
}

static void add_counts(struct scan_counts *to, const struct scan_counts *c)
{
	to->scanned += c->scanned;
	to->stable += c->stable;
	to->volatile_ += c->volatile_;
	to->fresh += c->fresh;
	to->zero += c->zero;
	to->reported += c->reported;
	to->shared += c->shared;
	to->thp_kept += c->thp_kept;
	for (int i = 0; i < SKIP_MAX; i++)
		to->skipped[i] += c->skipped[i];
}

static int scan_proc(struct scanner *s, struct proc *p, struct scan_counts *out)
{
	struct vma_info *vi = NULL;
	size_t n = 0, k = 0;
	char path[64];
	int pm_fd, rc;

	rc = smaps_read(p->pid, &vi, &n);
	if (rc)
		return rc == -ESRCH ? -ESRCH : 0;
	snprintf(path, sizeof(path), "/proc/%d/pagemap", (int)p->pid);
	pm_fd = open(path, O_RDONLY | O_CLOEXEC);
	if (pm_fd < 0) {
		free(vi);
		return -ESRCH;
	}
	rc = proc_merge_vmas(s, p, vi, n);
	memset(&p->total, 0, sizeof(p->total));
	for (size_t i = 0; i < n && !rc; i++) {
		struct vstate *vs;

		if (!vma_in_scope(p, &vi[i]))
			continue;
		vs = &p->v[k++];
		vs->dontcopy = (vi[i].flags & VMA_DONTCOPY) != 0;
		vs->kept = (vi[i].flags & VMA_MERGEABLE) || (vs->dontcopy && !s->evict_dontcopy);
		s->batch++; /* a VMA costs something even when empty */
		if (vma_skipped(&vi[i], &vs->last) || empty_and_large(&vi[i])) {
			/* Not ours, or a large reservation with nothing resident:
			 * no walk, and no state kept. */
			vstate_free(s, vs);
		} else if (vs->chunks || vstate_resize(s, vs, vs->end) == 0) {
			rc = scan_vma(s, p, vs, &vi[i], pm_fd);
		}
		add_counts(out, &vs->last);
		add_counts(&p->total, &vs->last);
		if (p->group >= 0)
			add_counts(&s->groups[p->group], &vs->last);
	}
	close(pm_fd);
	free(vi);
	return rc;
}

/* ---- a pass --------------------------------------------------------------- */

/* Rebuild s->procs from the targets, keeping state of processes that stay. */
static int merge_targets(struct scanner *s)
{
	const struct targets *t = s->targets;
	struct proc *np = calloc(t->n ? t->n : 1, sizeof(*np));
	size_t o = 0;

	if (!np)
		return -ENOMEM;
	for (size_t i = 0; i < t->n; i++) {
		const struct target *tg = &t->v[i];
		struct proc *p = &np[i];

		while (o < s->nprocs && s->procs[o].pid < tg->pid)
			proc_free(s, &s->procs[o++]);
		if (o < s->nprocs && s->procs[o].pid == tg->pid)
			*p = s->procs[o++];
		else
			p->pid = tg->pid;
		/* A new process behind the same pid, or another domain: start over. */
		{
			unsigned long long st = read_starttime(tg->pid);

			if (p->starttime != st || p->domain != tg->domain ||
			    p->scope != tg->scope) {
				proc_free(s, p);
				p->starttime = st;
			}
		}
		p->domain = tg->domain;
		p->scope = tg->scope;
		p->group = tg->group;
		p->attached = tg->attached;
	}
	while (o < s->nprocs)
		proc_free(s, &s->procs[o++]);
	s->state_bytes -= s->nprocs * sizeof(*s->procs);
	s->state_bytes += t->n * sizeof(*np);
	free(s->procs);
	s->procs = np;
	s->nprocs = t->n;
	return 0;
}

int scanner_pass(struct scanner *s, struct scan_counts *out)
{
	size_t w = 0;
	int rc;

	memset(out, 0, sizeof(*out));
	memset(s->groups, 0, sizeof(s->groups));
	s->pass++;
	s->stopping = false;
	/* Thread CPU clocks are per thread: start the budget on the one that
	 * scans, at its first throttled pass. */
	if (s->sleep && !s->budget_started) {
		scanner_rested(s);
		s->budget_started = true;
	}
	rc = targets_collect(s->targets);
	if (!rc)
		rc = merge_targets(s);
	if (rc)
		return rc;
	for (unsigned d = 0; d < s->cfg->ndomains; d++) {
		hll_clear(&s->census_cur[d].h);
		hll_clear(&s->census_cur[d].shared);
		s->census_cur[d].stable = s->census_cur[d].zero = 0;
	}
	for (size_t i = 0; i < s->nprocs; i++) {
		struct proc *p = &s->procs[i];

		rc = s->stopping ? -EINTR : scan_proc(s, p, out);
		if (rc == -ENOMEM)
			log_warn("out of memory scanning pid %d; its state is partial",
				 (int)p->pid);
		if (rc == -ESRCH) {
			proc_free(s, p); /* exited: a normal event */
			continue;
		}
		s->procs[w++] = *p;
	}
	s->nprocs = w;
	if (s->stopping)
		return -EINTR;
	memcpy(s->census_last, s->census_cur, s->cfg->ndomains * sizeof(s->census_cur[0]));
	s->census_valid = true;
	return 0;
}

const struct hll *scanner_census(const struct scanner *s, unsigned d, uint64_t *stable,
				 uint64_t *zero, const struct hll **shared)
{
	if (!s->census_valid || d >= s->cfg->ndomains)
		return NULL;
	*stable = s->census_last[d].stable;
	*zero = s->census_last[d].zero;
	*shared = &s->census_last[d].shared;
	return &s->census_last[d].h;
}

/* ---- life ------------------------------------------------------------------ */

struct scanner *scanner_create(const struct config *cfg, struct targets *targets,
			       const struct cid_domain *domains, scan_report_fn report,
			       void *report_arg, char *err, size_t errlen)
{
	struct scanner *s = calloc(1, sizeof(*s));
	static const uint8_t zero[PAGE];

	if (!s) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	s->cfg = cfg;
	s->targets = targets;
	s->domains = domains;
	s->report = report;
	s->report_arg = report_arg;
	s->zero_csum = cid_checksum(zero);
	s->kpf_fd = open("/proc/kpageflags", O_RDONLY | O_CLOEXEC);
	if (s->kpf_fd < 0)
		log_warn(
			"cannot open /proc/kpageflags (%s): KSM pages, THPs and the zero page are not told apart",
			strerror(errno));
	if (posix_memalign((void **)&s->buf, PAGE, WIN_PAGES * PAGE)) {
		snprintf(err, errlen, "out of memory");
		scanner_destroy(s);
		return NULL;
	}
	return s;
}

void scanner_destroy(struct scanner *s)
{
	if (!s)
		return;
	for (size_t i = 0; i < s->nprocs; i++)
		proc_free(s, &s->procs[i]);
	free(s->procs);
	free(s->buf);
	if (s->kpf_fd >= 0)
		close(s->kpf_fd);
	free(s);
}

void scanner_set_evict(struct scanner *s, scan_evict_fn fn, void *arg)
{
	s->evict = fn;
	s->evict_arg = arg;
}

void scanner_evict_dontcopy(struct scanner *s, bool yes)
{
	s->evict_dontcopy = yes;
}

void scanner_set_sleep(struct scanner *s, scan_sleep_fn sleep, void *arg)
{
	s->sleep = sleep;
	s->sleep_arg = arg;
	s->budget_started = false;
}

void scanner_rereport(struct scanner *s, bool fresh)
{
	s->gen++;
	s->again = !fresh;
}

size_t scanner_nprocs(const struct scanner *s)
{
	return s->nprocs;
}

size_t scanner_state_bytes(const struct scanner *s)
{
	return s->state_bytes + sizeof(*s) + WIN_PAGES * PAGE;
}

uint64_t scanner_tracked_pages(const struct scanner *s)
{
	return s->tracked_pages;
}

void scanner_foreach_vma(const struct scanner *s, scan_vma_fn fn, void *arg)
{
	for (size_t i = 0; i < s->nprocs; i++)
		for (size_t j = 0; j < s->procs[i].nv; j++)
			fn(arg, s->procs[i].pid, s->procs[i].v[j].start, s->procs[i].v[j].end,
			   &s->procs[i].v[j].last);
}

void scanner_foreach_proc(const struct scanner *s, scan_proc_fn fn, void *arg)
{
	for (size_t i = 0; i < s->nprocs; i++)
		fn(arg, s->procs[i].pid, s->procs[i].group, &s->procs[i].total);
}

static int pid_cmp(const void *key, const void *elem)
{
	pid_t pid = *(const pid_t *)key, other = ((const struct proc *)elem)->pid;

	return pid < other ? -1 : pid > other;
}

/* The state of the page at addr in pid, or NULL. */
static uint16_t *page_meta(struct scanner *s, pid_t pid, uint64_t addr)
{
	struct proc *p = bsearch(&pid, s->procs, s->nprocs, sizeof(*s->procs), pid_cmp);
	size_t lo = 0, hi;

	if (!p)
		return NULL;
	for (hi = p->nv; lo < hi;) { /* the VMA with the last start <= addr */
		size_t mid = lo + (hi - lo) / 2;

		if (p->v[mid].start <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == 0 || addr >= p->v[lo - 1].end) {
		return NULL;
	} else {
		struct vstate *vs = &p->v[lo - 1];
		size_t pi = (size_t)((addr - vs->start) / PAGE);
		struct chunk *ch =
			pi / CHUNK_PAGES < vs->nchunks ? vs->chunks[pi / CHUNK_PAGES] : NULL;

		return ch ? &ch->meta[pi % CHUNK_PAGES] : NULL;
	}
}

void scanner_mark_shared(struct scanner *s, pid_t pid, uint64_t addr, bool shared)
{
	uint16_t *meta = page_meta(s, pid, addr);

	/* Only while the page still holds what was reported. */
	if (!meta || !(*meta & M_REPORTED))
		return;
	if (shared)
		*meta |= M_SHARED;
	else
		*meta &= (uint16_t)~M_SHARED;
}

const struct scan_counts *scanner_group_counts(const struct scanner *s, unsigned group)
{
	return group < TARGET_MAX_GROUPS ? &s->groups[group] : NULL;
}
