/*
 * ksm - hot duplicates handed to the kernel's KSM.
 *
 * A page that keeps coming back from the local pool costs a fault every
 * time; a duplicate that hot is better merged by the kernel's own KSM,
 * whose merged page is read without a fault. The fault thread notes such
 * pages (cool_note); once a second the loop turns each into a window
 * (KSM_WINDOW around it, within its mapping) that the process's remap
 * back-end marks mergeable, and from then on cksm never evicts there: KSM
 * merging a page cksm has write-protected would drop the protection.
 * Only while KSM runs; without it hot pages just keep their cool-down.
 *
 * KSM knows nothing of cksm's dedup domains: a page it merges may share
 * a frame with any equal mergeable page of the node, a tenant's with
 * another's, and the time of a write to it tells. So only the default
 * domain's hot pages are handed over, and another domain's only where
 * its [domain.NAME] says ksm = 1; the others keep their cool-down.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "backing_int.h"
#include "log.h"

bool ksm_owns(const struct mm *m, uint64_t addr)
{
	for (unsigned i = 0; i < m->nksm; i++)
		if (addr >= m->ksm[i].start && addr < m->ksm[i].end)
			return true;
	return false;
}

static bool ksm_running(void)
{
	char v[8] = "";
	int fd = open("/sys/kernel/mm/ksm/run", O_RDONLY | O_CLOEXEC);
	ssize_t n = fd >= 0 ? read(fd, v, sizeof(v) - 1) : -1;

	if (fd >= 0)
		close(fd);
	return n > 0 && v[0] == '1';
}

/* The mapping of pid holding addr, from /proc/PID/maps; 0 or -ENOENT. */
static int mapping_of(pid_t pid, uint64_t addr, uint64_t *start, uint64_t *end)
{
	char path[64], line[512];
	int rc = -ENOENT;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
	f = fopen(path, "re");
	if (!f)
		return -ENOENT;
	while (rc && fgets(line, sizeof(line), f)) {
		unsigned long long s, e;

		if (sscanf(line, "%llx-%llx", &s, &e) == 2 && addr >= s && addr < e) {
			*start = s;
			*end = e;
			rc = 0;
		}
	}
	fclose(f);
	return rc;
}

/* The window must be asked for again at the next tick. */
static void ksm_unsent(struct mm *m, uint64_t start)
{
	pthread_mutex_lock(&m->lock);
	for (unsigned k = 0; k < m->nksm; k++)
		if (m->ksm[k].start == start)
			m->ksm[k].sent = false;
	pthread_mutex_unlock(&m->lock);
}

/* Ask for m's windows that no eviction is working in. */
static void ksm_flush(struct mm *m)
{
	struct ksm_window v[KSM_WINDOWS];
	unsigned n = 0;

	pthread_mutex_lock(&m->lock);
	for (unsigned i = 0; i < m->nksm; i++) {
		struct ksm_window *w = &m->ksm[i];

		if (w->sent || (m->st->evicting >= w->start && m->st->evicting < w->end))
			continue;
		w->sent = true;
		v[n++] = *w;
	}
	pthread_mutex_unlock(&m->lock);
	for (unsigned i = 0; i < n; i++) {
		if (m->remap->ksm_advise(m, v[i].start, v[i].end - v[i].start) < 0) {
			/* Tried again at the next tick; meanwhile nothing is
			 * evicted there either. */
			ksm_unsent(m, v[i].start);
			log_warn("process %d: cannot send a KSM request; trying again",
				 (int)m->pid);
			continue;
		}
		metric_inc(m->b->m_ksm_windows);
		log_info("process %d: hot duplicates in %#llx-%#llx handed to the kernel's KSM",
			 (int)m->pid, (unsigned long long)v[i].start, (unsigned long long)v[i].end);
	}
}

static void ksm_window(struct mm *m, uint64_t addr)
{
	uint64_t s, e, lo = addr & ~(uint64_t)(KSM_WINDOW - 1), hi = lo + KSM_WINDOW;

	if (mapping_of(m->pid, addr, &s, &e))
		return;
	if (lo < s)
		lo = s;
	if (hi > e)
		hi = e;
	pthread_mutex_lock(&m->lock);
	if (!ksm_owns(m, addr) && m->nksm < KSM_WINDOWS)
		m->ksm[m->nksm++] = (struct ksm_window){ lo, hi, false };
	pthread_mutex_unlock(&m->lock);
}

/*
 * May hot pages of the domain tagged tag go to KSM? Told once per domain
 * when not.
 */
static bool ksm_allowed(struct backing *b, uint8_t tag)
{
	const struct config *cfg = b->cfg;

	for (unsigned i = 0; i < cfg->ndomains; i++) {
		const struct domain_conf *d = &cfg->domains[i];

		if (d->id != tag)
			continue;
		if (!d->ksm && !(b->ksm_kept_said & 1u << i)) {
			b->ksm_kept_said |= 1u << i;
			log_info(
				"domain %s: hot duplicates stay with cksm: the kernel's KSM would merge them with any other domain's ([domain.%s] ksm = 1 allows it)",
				d->name, d->name);
		}
		return d->ksm;
	}
	return false;
}

/* The hot pages found since the last tick, each made a window. */
static void take_hot(struct backing *b)
{
	struct hot v[HOT_MAX];
	unsigned n;

	pthread_mutex_lock(&b->lock);
	n = b->nhot;
	memcpy(v, b->hot, n * sizeof(v[0]));
	b->nhot = 0;
	pthread_mutex_unlock(&b->lock);
	if (n && !ksm_running()) {
		if (!b->ksm_off_said)
			log_info("the kernel's KSM is not running: hot duplicates stay with cksm");
		b->ksm_off_said = true;
		return;
	}
	for (unsigned i = 0; i < n; i++) {
		struct mm *m = ksm_allowed(b, v[i].domain) ? mm_get(b, v[i].pid) : NULL;

		if (m) {
			ksm_window(m, v[i].addr);
			mm_put(m);
		}
	}
}

void ksm_handover(struct backing *b)
{
	struct mm *ms[HOT_MAX];
	unsigned nm = 0;

	take_hot(b);
	/* Windows not asked for yet (new ones, or ones an eviction was in). */
	pthread_mutex_lock(&b->lock);
	for (struct mm *m = b->mms; m && nm < HOT_MAX; m = m->next)
		if (m->sock >= 0 && m->handshaken && !m->orphan) {
			atomic_fetch_add(&m->refs, 1);
			ms[nm++] = m;
		}
	pthread_mutex_unlock(&b->lock);
	for (unsigned i = 0; i < nm; i++) {
		ksm_flush(ms[i]);
		mm_put(ms[i]);
	}
}
