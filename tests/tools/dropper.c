/*
 * cksm-dropper - a served process that drops its own pages with
 * madvise(MADV_DONTNEED) just as the agent evicts them, and checks what
 * Linux promises: a dropped page reads zeroes, never what it held, and a
 * write is never lost.
 *
 *   cksm-dropper before|during|fixed|fork [--pages N] [--threads T] [--seconds S]
 *                [--delay-us D] [--round-ms MS] [--ahead A] [--verbose]
 *
 * Rounds: the region (N pages, mergeable) is written afresh, and the
 * agent evicts it page after page in address order (the scanner's), until
 * no untouched page is left in memory or MS pass. A watcher thread
 * follows that sweep with mincore(): a page the program has not touched
 * that leaves memory was evicted, and the gaps between such pages give
 * the time one eviction takes. Worker threads (T) each take an untouched
 * page among the A ahead of the sweep:
 *
 *   before  (a page dropped just before its eviction) Every page is a
 *           zero page written with zeroes, which the agent evicts without
 *           a dup. The worker takes the page after the next one to be
 *           evicted and drops it at once; then it writes a distinct
 *           nonzero word into it 0..D us later, or as soon as the page is
 *           seen back in memory (read in by someone else: the agent).
 *           The round's end checks every such page: "lost", it read
 *           zeroes; "seen_back" counts the drops the page came back
 *           after.
 *   during  (a page dropped between its entry and its zap) Pages hold
 *           copies of 8 contents, which the agent backs with pool slots.
 *           The worker takes the next page to be evicted and drops it at
 *           a random moment of the time one eviction takes, then either
 *           reads it at once ("old": it read its old content, not
 *           zeroes) or writes a word into it, checked at the round's
 *           end ("old_under_write": the rest of the page was the old
 *           content; "lost": the page read zeroes).
 *
 *   fixed   as during, but the page is replaced by a new mapping (mmap
 *           MAP_FIXED of that one page, an UNMAP event), which is then
 *           made mergeable (registered by the agent) and read 30 ms
 *           later: zeroes.
 *   fork    as during, but the page is dropped and the process forks at
 *           once; the child reads the page: zeroes ("child_old": it read
 *           the old content).
 *
 * Every check is of what Linux promises, whatever the agent did: the
 * timing only makes the races likely. Prints one JSON line with the
 * counts and the first wrong pages; exit 0 when no page was wrong, 1 when
 * one was, 2 on a usage or setup error.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAGE	   4096u
#define WORDS	   (PAGE / 8)
#define NK	   8 /* contents of the "during" pages */
#define MAXT	   32
#define PER_MAX_NS 20000000ull /* the longest eviction time aimed at */

enum state { IDLE, BUSY, DONE_ZERO, DONE_WORD, WRONG };

static bool during;
static int how; /* during: 0 drop, 1 fixed, 2 fork */
static atomic_ulong n_child_old, n_child_other, n_forks;
static atomic_int in_try; /* workers in a try (end_round waits for none) */
static size_t npages = 1024;
static unsigned nthreads = 4, seconds = 20, delay_us = 1000, round_ms = 3000, ahead = 3;
static bool verbose;

static uint8_t *region;
static _Atomic uint8_t *state;
static uint64_t *want;	   /* the word written, DONE_WORD pages */
static uint16_t *want_at;  /* and where */
static uint16_t *delay_of; /* us from the drop to the write */
static uint8_t *back_of;   /* the page came back before the write */
static uint8_t pats[NK][PAGE];

static atomic_bool stop, paused;
static _Atomic long front = -1;			   /* the page evicted last */
static _Atomic uint64_t front_ns, per_ns = 500000; /* when; one eviction's time */
static atomic_ulong n_tries, n_evicted, n_seen_back, n_lost, n_old, n_old_under, n_bad, n_checks;
static atomic_ulong n_serial;
static pthread_mutex_t report_lock = PTHREAD_MUTEX_INITIALIZER;
static char bad_json[2048];
static size_t bad_len;

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t xs(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static void pattern(uint8_t *p, unsigned k)
{
	for (size_t i = 0; i < PAGE; i += 8) {
		uint64_t v = (uint64_t)(k + 1) * 0x9e3779b97f4a7c15ULL ^ i;

		memcpy(p + i, &v, 8);
	}
}

static uint8_t *page_at(size_t pg)
{
	return region + pg * PAGE;
}

static unsigned content_of(size_t pg)
{
	return (unsigned)(pg % NK);
}

static bool resident(size_t pg)
{
	unsigned char v = 0;

	return mincore(page_at(pg), PAGE, &v) == 0 && (v & 1);
}

/* What a page holds, word w set aside: 0 zeroes, 1 its old content, 2 other. */
static int holds(size_t pg, size_t w)
{
	const uint64_t *p = (const uint64_t *)page_at(pg),
		       *o = (const uint64_t *)pats[content_of(pg)];
	bool zero = true, old = during;

	for (size_t i = 0; i < WORDS; i++) {
		if (i == w)
			continue;
		zero = zero && !p[i];
		old = old && p[i] == o[i];
	}
	return zero ? 0 : old ? 1 : 2;
}

static void note(size_t pg, const char *what)
{
	pthread_mutex_lock(&report_lock);
	if (bad_len < sizeof(bad_json) - 160 && during)
		bad_len += (size_t)snprintf(bad_json + bad_len, sizeof(bad_json) - bad_len,
					    "%s{\"page\":%zu,\"what\":\"%s\"}", bad_len ? "," : "",
					    pg, what);
	else if (bad_len < sizeof(bad_json) - 160)
		bad_len += (size_t)snprintf(bad_json + bad_len, sizeof(bad_json) - bad_len,
					    "%s{\"page\":%zu,\"what\":\"%s\",\"delay_us\":%u,"
					    "\"seen_back\":%s}",
					    bad_len ? "," : "", pg, what, (unsigned)delay_of[pg],
					    back_of[pg] ? "true" : "false");
	pthread_mutex_unlock(&report_lock);
}

/*
 * Check page pg as the program left it: zeroes (DONE_ZERO), or zeroes and
 * its word (DONE_WORD). Counts and notes what is wrong (once: the page is
 * WRONG from then on); true when right.
 */
static bool check(size_t pg)
{
	uint8_t st = atomic_load(&state[pg]);
	size_t w = st == DONE_WORD ? want_at[pg] : WORDS;
	const uint64_t *p = (const uint64_t *)page_at(pg);
	int h;

	atomic_fetch_add(&n_checks, 1);
	h = holds(pg, w);
	if (st == DONE_WORD && h == 0 && p[w] == want[pg])
		return true;
	if (st == DONE_ZERO && h == 0)
		return true;
	if (h == 1 && st == DONE_ZERO) {
		atomic_fetch_add(&n_old, 1);
		note(pg, "old content after DONTNEED");
	} else if (h == 1) {
		atomic_fetch_add(&n_old_under, 1);
		note(pg, "a write after DONTNEED landed on the old content");
	} else if (st == DONE_WORD && h == 0 && p[w] == 0) {
		atomic_fetch_add(&n_lost, 1);
		note(pg, "lost write");
	} else {
		atomic_fetch_add(&n_bad, 1);
		note(pg, "other bytes");
	}
	atomic_store(&state[pg], WRONG); /* counted once */
	return false;
}

static unsigned long wrong(void)
{
	return atomic_load(&n_child_old) + atomic_load(&n_child_other) + atomic_load(&n_lost) +
	       atomic_load(&n_old) + atomic_load(&n_old_under) + atomic_load(&n_bad);
}

/* ---- following the sweep --------------------------------------------------- */

/* A page the program has not touched this round that left memory: evicted. */
static void *watcher(void *arg)
{
	unsigned char *was = malloc(npages), *is = malloc(npages);
	struct timespec nap = { 0, 20000 };
	uint64_t last = 0;

	(void)arg;
	if (!was || !is)
		abort();
	memset(was, 1, npages);
	while (!atomic_load(&stop)) {
		uint64_t t;
		long hi = -1;
		unsigned n = 0;

		if (mincore(region, npages * PAGE, is))
			abort();
		t = now_ns();
		for (size_t pg = 0; pg < npages; pg++) {
			if ((was[pg] & 1) && !(is[pg] & 1) && atomic_load(&state[pg]) == IDLE) {
				hi = (long)pg;
				n++;
			}
		}
		if (n) {
			if (last) { /* a pause of the sweep moves the estimate a little */
				uint64_t gap = (t - last) / n, p = atomic_load(&per_ns);

				gap = gap < p / 4 ? p / 4 : gap > p * 4 ? p * 4 : gap;
				p = (p * 7 + gap) / 8;
				atomic_store(&per_ns, p < PER_MAX_NS ? p : PER_MAX_NS);
			}
			last = t;
			atomic_fetch_add(&n_evicted, n);
			atomic_store(&front_ns, t);
			atomic_store(&front, hi);
		}
		memcpy(was, is, npages);
		nanosleep(&nap, NULL);
	}
	free(was);
	free(is);
	return NULL;
}

/* An untouched page of the `ahead` from first on, taken; -1 if none. */
static long take_target(long first)
{
	for (long pg = first; pg < first + (long)ahead && pg < (long)npages; pg++) {
		uint8_t idle = IDLE;

		if (resident((size_t)pg) && atomic_compare_exchange_strong(&state[pg], &idle, BUSY))
			return pg;
	}
	return -1;
}

/* Sleep until t: the CPUs are the agent's too (a spinning program would
 * keep the threads the agent waits on from running). */
static void sleep_until(uint64_t t)
{
	struct timespec ts = { (time_t)(t / 1000000000ull), (long)(t % 1000000000ull) };

	clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
}

static void nap_us(long us)
{
	struct timespec ts = { 0, us * 1000 };

	nanosleep(&ts, NULL);
}

/* before: drop, then write a word 0..delay_us later (at once when the page comes back). */
static void drop_before(size_t pg, uint64_t *s)
{
	uint64_t d = xs(s) % ((uint64_t)delay_us * 1000 + 1), t0, v;
	volatile uint64_t *p = (volatile uint64_t *)page_at(pg);
	size_t w = xs(s) % WORDS;
	bool back = false;

	madvise(page_at(pg), PAGE, MADV_DONTNEED);
	t0 = now_ns();
	while (now_ns() - t0 < d) {
		if (resident(pg)) {
			back = true;
			break;
		}
		nap_us(5);
	}
	v = atomic_fetch_add(&n_serial, 1) << 1 | 1ull << 63 | 1;
	p[w] = v;
	want[pg] = v;
	want_at[pg] = (uint16_t)w;
	delay_of[pg] = (uint16_t)((now_ns() - t0) / 1000);
	back_of[pg] = back;
	atomic_store(&state[pg], DONE_WORD);
	if (back)
		atomic_fetch_add(&n_seen_back, 1);
}

/*
 * during: drop, then read it at once (zeroes), or write a word (checked
 * at the round's end: a fill of the old content under the write, or the
 * eviction's zap after it, shows then).
 */
static void drop_during(size_t pg, uint64_t *s)
{
	volatile uint64_t *p = (volatile uint64_t *)page_at(pg);

	if (how == 1) {
		if (mmap(page_at(pg), PAGE, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED)
			abort();
		madvise(page_at(pg), PAGE, MADV_MERGEABLE); /* registered by the agent */
		nap_us(30000);
		atomic_store(&state[pg], DONE_ZERO);
		check(pg);
		return;
	}
	madvise(page_at(pg), PAGE, MADV_DONTNEED);
	if (how == 2) {
		pid_t c = fork();
		int st = 0;

		if (c == 0) {
			int h = holds(pg, WORDS);

			_exit(h == 0 ? 0 : h == 1 ? 3 : 4);
		}
		atomic_fetch_add(&n_forks, 1);
		if (c > 0 && waitpid(c, &st, 0) == c && WIFEXITED(st) && WEXITSTATUS(st)) {
			if (WEXITSTATUS(st) == 3) {
				atomic_fetch_add(&n_child_old, 1);
				note(pg, "fork child read the old content after DONTNEED");
			} else {
				atomic_fetch_add(&n_child_other, 1);
				note(pg, "fork child read other bytes");
			}
		}
		atomic_store(&state[pg], DONE_ZERO);
		check(pg);
		return;
	}
	if (xs(s) & 1) {
		atomic_store(&state[pg], DONE_ZERO);
		check(pg);
	} else {
		size_t w = xs(s) % WORDS;
		uint64_t v = atomic_fetch_add(&n_serial, 1) << 1 | 1ull << 63 | 1;

		p[w] = v;
		want[pg] = v;
		want_at[pg] = (uint16_t)w;
		atomic_store(&state[pg], DONE_WORD);
	}
}

/*
 * Each try takes a page ahead of the sweep. before: the page after the
 * next one, dropped at once (before the agent starts on it). during: the
 * next one, dropped at a random moment of the time one eviction takes
 * (while the agent works on it, or about to).
 */
static void *worker(void *arg)
{
	uint64_t s = (uint64_t)(uintptr_t)arg * 0x9e3779b97f4a7c15ULL + now_ns();

	while (!atomic_load(&stop)) {
		long f, pg;
		uint64_t per = atomic_load(&per_ns);

		/* In a try from before the pause is looked at to its end: the
		 * round ends only once no try is under way (end_round). */
		atomic_fetch_add(&in_try, 1);
		f = atomic_load(&front);
		if (atomic_load(&paused) || f < 0 || (pg = take_target(f + (during ? 1 : 2))) < 0) {
			atomic_fetch_sub(&in_try, 1);
			nap_us(50);
			continue;
		}
		atomic_fetch_add(&n_tries, 1);
		if (during) {
			sleep_until(atomic_load(&front_ns) + (uint64_t)(pg - f - 1) * per +
				    xs(&s) % (per + per / 4 + 1));
			drop_during((size_t)pg, &s);
		} else {
			drop_before((size_t)pg, &s);
		}
		atomic_fetch_sub(&in_try, 1);
	}
	return NULL;
}

/* ---- rounds ------------------------------------------------------------------ */

static void fill_round(void)
{
	for (size_t pg = 0; pg < npages; pg++) {
		if (during)
			memcpy(page_at(pg), pats[content_of(pg)], PAGE);
		else
			memset(page_at(pg), 0, PAGE);
		atomic_store(&state[pg], IDLE);
	}
	atomic_store(&front, -1);
}

/* Untouched pages still in memory: the sweep is not over. */
static size_t left_in_memory(void)
{
	size_t n = 0;

	for (size_t pg = 0; pg < npages; pg++)
		n += atomic_load(&state[pg]) == IDLE && resident(pg);
	return n;
}

static void end_round(void)
{
	atomic_store(&paused, true);
	/* A try still under way (a fork waited on, say) checks its page after
	 * the next round's fill otherwise, and finds the fill's bytes. */
	while (atomic_load(&in_try))
		usleep(1000);
	usleep(100000); /* every eviction in flight ends */
	for (size_t pg = 0; pg < npages; pg++) {
		uint8_t st = atomic_load(&state[pg]);

		if (st == DONE_ZERO || st == DONE_WORD)
			check(pg);
	}
}

static int usage(const char *a)
{
	fprintf(stderr, "dropper: bad argument %s\n", a);
	return 2;
}

int main(int argc, char **argv)
{
	pthread_t th[MAXT], w;
	uint64_t t_end;
	unsigned rounds = 0;

	if (argc < 2 || (strcmp(argv[1], "before") && strcmp(argv[1], "during") &&
			 strcmp(argv[1], "fixed") && strcmp(argv[1], "fork")))
		return usage(argc > 1 ? argv[1] : "(none)");
	during = strcmp(argv[1], "before") != 0;
	how = !strcmp(argv[1], "fixed") ? 1 : !strcmp(argv[1], "fork") ? 2 : 0;
	for (int i = 2; i < argc; i++) {
		const char *a = argv[i];
		unsigned long v;

		if (!strcmp(a, "--verbose")) {
			verbose = true;
			continue;
		}
		if (i + 1 >= argc)
			return usage(a);
		v = strtoul(argv[++i], NULL, 10);
		if (!strcmp(a, "--pages"))
			npages = v;
		else if (!strcmp(a, "--threads"))
			nthreads = (unsigned)v;
		else if (!strcmp(a, "--seconds"))
			seconds = (unsigned)v;
		else if (!strcmp(a, "--delay-us"))
			delay_us = (unsigned)v;
		else if (!strcmp(a, "--round-ms"))
			round_ms = (unsigned)v;
		else if (!strcmp(a, "--ahead"))
			ahead = (unsigned)v;
		else
			return usage(a);
	}
	if (nthreads < 1 || nthreads > MAXT || npages < 64 || ahead < 1)
		return usage("--threads, --pages or --ahead");
	prctl(PR_SET_TIMERSLACK, 1UL);
	for (unsigned k = 0; k < NK; k++)
		pattern(pats[k], k);
	region = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
		      0);
	state = calloc(npages, sizeof(*state));
	want = calloc(npages, sizeof(*want));
	want_at = calloc(npages, sizeof(*want_at));
	delay_of = calloc(npages, sizeof(*delay_of));
	back_of = calloc(npages, sizeof(*back_of));
	if (region == MAP_FAILED || !state || !want || !want_at || !delay_of || !back_of)
		return 2;
	fill_round();
	madvise(region, npages * PAGE, MADV_MERGEABLE);
	atomic_store(&paused, true);
	pthread_create(&w, NULL, watcher, NULL);
	for (unsigned i = 0; i < nthreads; i++)
		pthread_create(&th[i], NULL, worker, (void *)(uintptr_t)(i + 1));
	t_end = now_ns() + seconds * 1000000000ull;
	while (now_ns() < t_end) {
		uint64_t r_end = now_ns() + round_ms * 1000000ull;

		atomic_store(&paused, false);
		/* Until the sweep has been through (or the round's time is up). */
		while (now_ns() < r_end && now_ns() < t_end && left_in_memory())
			usleep(20000);
		end_round();
		rounds++;
		if (verbose)
			fprintf(stderr,
				"dropper: round %u: %.0f ms, left in memory %zu, evicted %lu, tries %lu, seen back %lu, wrong %lu\n",
				rounds, (double)(now_ns() - (r_end - round_ms * 1000000ull)) / 1e6,
				left_in_memory(), atomic_load(&n_evicted), atomic_load(&n_tries),
				atomic_load(&n_seen_back), wrong());
		fill_round();
	}
	atomic_store(&stop, true);
	for (unsigned i = 0; i < nthreads; i++)
		pthread_join(th[i], NULL);
	pthread_join(w, NULL);
	printf("{\"forks\":%lu,\"child_old\":%lu,\"child_other\":%lu,", atomic_load(&n_forks),
	       atomic_load(&n_child_old), atomic_load(&n_child_other));
	printf("\"mode\":\"%s\",\"rounds\":%u,\"tries\":%lu,\"evicted_seen\":%lu,"
	       "\"seen_back\":%lu,\"checks\":%lu,\"lost\":%lu,\"old\":%lu,\"old_under_write\":%lu,"
	       "\"bad\":%lu,\"eviction_us\":%.1f,\"wrong_pages\":[%s]}\n",
	       argv[1], rounds, atomic_load(&n_tries), atomic_load(&n_evicted),
	       atomic_load(&n_seen_back), atomic_load(&n_checks), atomic_load(&n_lost),
	       atomic_load(&n_old), atomic_load(&n_old_under), atomic_load(&n_bad),
	       (double)atomic_load(&per_ns) / 1000, bad_json);
	return wrong() ? 1 : 0;
}
