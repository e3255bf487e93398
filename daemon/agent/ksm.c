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
 * The working set's hot regions (wset.h) are handed over the same way:
 * a region whose sample came straight back is read too often to evict,
 * and its duplicates are KSM's to merge.
 *
 * KSM knows nothing of cksm's dedup domains: a page it merges may share
 * a frame with any equal mergeable page of the node, a tenant's with
 * another's, and the time of a write to it tells. So only the default
 * domain's hot pages are handed over, and another domain's only where
 * its [domain.NAME] says ksm = 1; the others keep their cool-down.
 *
 * [agent] ksm: off hands nothing over; advise (the default) hands over
 * while ksmd runs; manage runs ksmd itself for as long as the agent
 * runs, at a rate the agent sets from what it handed over: a pass over
 * those pages in ksm_scan_seconds, within about ksm_max_cpu % of a core
 * (100 pages a 20 ms sleep per per cent), and puts the settings back as
 * they were at the end. Not the kernel's scan-time advisor: it sets the
 * rate at the end of each pass, so the near-empty passes before anything
 * is handed over bring it down to a few pages a sleep, and the first pass
 * over what comes then takes minutes. Nor the kernel's smart scan
 * (6.7 and later): it skips a page that did not merge for up to 8
 * passes, and a page handed over before its twins in other processes
 * were does not merge at first; at the pace set once the catch-up is
 * over, 8 passes are minutes. What is handed over is known to hold
 * duplicates, so every page of it is worth its look each pass.
 * Since only the windows cksm hands over are mergeable, ksmd's passes
 * cover the duplicates cksm found and nothing else. The settings found
 * are kept in the state directory (ksm-saved) until put back, so that a
 * killed agent's successor puts back the operator's, not the killed
 * agent's.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backing_int.h"
#include "log.h"

#define KSM_SYS "/sys/kernel/mm/ksm/"

/* The settings manage changes, in the order they are put back. */
static const char *const managed[] = {
	"advisor_mode", "advisor_max_cpu", "advisor_target_scan_time",
	"smart_scan",	"pages_to_scan",   "sleep_millisecs",
	"run"
};
#define NMANAGED  (sizeof(managed) / sizeof(managed[0]))
#define KSM_SAVED "ksm-saved"

static int sys_read(const char *name, char *v, size_t n)
{
	char path[128];
	int fd;
	ssize_t k;

	snprintf(path, sizeof(path), KSM_SYS "%s", name);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	k = read(fd, v, n - 1);
	close(fd);
	if (k <= 0)
		return -EIO;
	v[k] = '\0';
	v[strcspn(v, "\n")] = '\0';
	/* advisor_mode reads "[none] scan-time": the word in brackets */
	if (v[0] == '[') {
		size_t e = strcspn(v + 1, "]");

		memmove(v, v + 1, e);
		v[e] = '\0';
	}
	return 0;
}

static int sys_write(const char *name, const char *v)
{
	char path[128];
	int fd, rc = 0;

	snprintf(path, sizeof(path), KSM_SYS "%s", name);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (write(fd, v, strlen(v)) < 0)
		rc = -errno;
	close(fd);
	return rc;
}

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
	struct wset_hot regions[HOT_MAX];
	unsigned n, nhot;

	pthread_mutex_lock(&b->lock);
	n = nhot = b->nhot;
	memcpy(v, b->hot, n * sizeof(v[0]));
	b->nhot = 0;
	pthread_mutex_unlock(&b->lock);
	n += (unsigned)wset_take_hot(b->wset, regions, HOT_MAX);
	if (!strcmp(b->cfg->ksm_mode, "off"))
		return;
	if (n && !ksm_running()) {
		if (!b->ksm_off_said)
			log_info("the kernel's KSM is not running: hot duplicates stay with cksm");
		b->ksm_off_said = true;
		return;
	}
	for (unsigned i = 0; i < n; i++) {
		bool region = i >= nhot;
		pid_t pid = region ? regions[i - nhot].pid : v[i].pid;
		uint8_t dom = region ? regions[i - nhot].domain : v[i].domain;
		struct mm *m = ksm_allowed(b, dom) ? mm_get(b, pid) : NULL;

		if (m) {
			ksm_window(m, region ? regions[i - nhot].addr : v[i].addr);
			mm_put(m);
		}
	}
}

/* ---- manage: ksmd run by the agent ------------------------------------------- */

/* Does buf, "name=value" lines, name setting name? */
static bool saved_has(const char *buf, const char *name)
{
	size_t n = strlen(name);

	for (const char *l = buf; *l;) {
		const char *nl = strchr(l, '\n');

		if (!strncmp(l, name, n) && l[n] == '=')
			return true;
		if (!nl)
			break;
		l = nl + 1;
	}
	return false;
}

/*
 * The settings as found (or as a killed agent found them): kept in
 * KSM_SAVED, one "name=value" line each. A killed agent's file is kept,
 * with the settings it did not manage (an older agent's, say) added as
 * they are now: it never changed them.
 */
static int save_settings(struct backing *b)
{
	char buf[1024] = "", v[64];
	size_t len = 0;
	ssize_t k;
	int fd;

	fd = openat(b->state_fd, KSM_SAVED, O_RDONLY | O_CLOEXEC);
	if (fd >= 0) { /* a killed agent's: the operator's settings are in it */
		k = read(fd, buf, sizeof(buf) - 1);
		close(fd);
		len = k > 0 ? (size_t)k : 0;
		buf[len] = '\0';
		if (len && buf[len - 1] != '\n' && len + 1 < sizeof(buf))
			buf[len++] = '\n';
	}
	for (size_t i = 0; i < NMANAGED; i++)
		if (!saved_has(buf, managed[i]) && !sys_read(managed[i], v, sizeof(v)) &&
		    len < sizeof(buf))
			len += (size_t)snprintf(buf + len, sizeof(buf) - len, "%s=%s\n", managed[i],
						v);
	if (len >= sizeof(buf))
		return -ENOSPC;
	fd = openat(b->state_fd, KSM_SAVED ".new", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0 || write(fd, buf, len) != (ssize_t)len) {
		if (fd >= 0)
			close(fd);
		return -EIO;
	}
	close(fd);
	return renameat(b->state_fd, KSM_SAVED ".new", b->state_fd, KSM_SAVED) ? -errno : 0;
}

void ksm_manage_start(struct backing *b)
{
	char v[32];
	int rc;

	if (strcmp(b->cfg->ksm_mode, "manage"))
		return;
	if (b->state_fd < 0 || save_settings(b)) {
		log_error(
			"ksm = manage: the kernel's KSM settings cannot be kept in %s; KSM is left as it is",
			b->cfg->state_dir);
		return;
	}
	if (!sys_read("advisor_mode", v, sizeof(v)))
		sys_write("advisor_mode", "none");
	if (!sys_read("smart_scan", v, sizeof(v)))
		sys_write("smart_scan", "0");
	sys_write("sleep_millisecs", "20");
	b->ksm_rate = KSM_RATE_MIN;
	snprintf(v, sizeof(v), "%u", b->ksm_rate);
	rc = sys_write("pages_to_scan", v);
	if (!rc)
		rc = sys_write("run", "1");
	if (rc) {
		log_error("ksm = manage: cannot start the kernel's KSM (%s)", strerror(-rc));
		return;
	}
	b->ksm_managed = true;
	log_info(
		"running the kernel's KSM on the duplicates handed to it: a pass in about %u s, at most %u%% of a CPU",
		b->cfg->ksm_scan_seconds, b->cfg->ksm_max_cpu);
}

void ksm_manage_stop(struct backing *b)
{
	char buf[1024], *line, *save = NULL;
	ssize_t k;
	int fd;

	if (!b->ksm_managed)
		return;
	fd = openat(b->state_fd, KSM_SAVED, O_RDONLY | O_CLOEXEC);
	k = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : -1;
	if (fd >= 0)
		close(fd);
	if (k <= 0) {
		log_error("the kernel's KSM settings as found are lost; KSM is left running");
		return;
	}
	buf[k] = '\0';
	for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char *eq = strchr(line, '=');

		if (eq) {
			*eq = '\0';
			sys_write(line, eq + 1);
		}
	}
	unlinkat(b->state_fd, KSM_SAVED, 0);
	log_info("the kernel's KSM settings put back as they were");
}

/* The pages of m's windows handed over. */
static uint64_t ksm_handed(struct mm *m)
{
	uint64_t pages = 0;

	pthread_mutex_lock(&m->lock);
	for (unsigned i = 0; i < m->nksm; i++)
		if (m->ksm[i].sent)
			pages += (m->ksm[i].end - m->ksm[i].start) / PAGE;
	pthread_mutex_unlock(&m->lock);
	return pages;
}

/*
 * manage: the pages handed over, scanned once in ksm_scan_seconds at 20
 * ms a sleep, within the CPU cap. Pages newly handed over are hot
 * duplicates, each a fault or a copy until merged, and ksmd merges a
 * page at its second pass over it (the first puts it in the unstable
 * tree): after pages came, two passes go at the cap, then the pace.
 */
static void ksm_rate(struct backing *b, uint64_t pages)
{
	uint64_t want, scans = 0;
	char v[32];

	if (!sys_read("full_scans", v, sizeof(v)))
		scans = strtoull(v, NULL, 10);
	if (pages > b->ksm_handed)
		b->ksm_catchup = scans + 2;
	b->ksm_handed = pages;
	want = (pages * 20 + b->cfg->ksm_scan_seconds * 1000ull - 1) /
	       (b->cfg->ksm_scan_seconds * 1000ull);
	if (scans < b->ksm_catchup)
		want = 100ull * b->cfg->ksm_max_cpu;
	if (want < KSM_RATE_MIN)
		want = KSM_RATE_MIN;
	if (want > 100ull * b->cfg->ksm_max_cpu)
		want = 100ull * b->cfg->ksm_max_cpu;
	if (want == b->ksm_rate)
		return;
	b->ksm_rate = (unsigned)want;
	snprintf(v, sizeof(v), "%u", b->ksm_rate);
	sys_write("pages_to_scan", v);
}

void ksm_handover(struct backing *b)
{
	struct mm *ms[HOT_MAX];
	unsigned nm = 0;
	uint64_t handed = 0;

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
		handed += ksm_handed(ms[i]);
		mm_put(ms[i]);
	}
	if (b->ksm_managed)
		ksm_rate(b, handed);
}
