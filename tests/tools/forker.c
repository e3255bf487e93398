/*
 * cksm-forker - programs that fork in ways libcksm's fork() must keep
 * working as without it.
 *
 *   cksm-forker closefds N   close every descriptor past stderr (as a
 *                            daemon does), then fork N times
 *   cksm-forker cancel N     N rounds: a thread forks in a loop and is
 *                            cancelled (pthread_cancel) somewhere in it;
 *                            then the main thread forks once
 *   cksm-forker _Fork|daemon|twice|clone DIR
 *                            pages of 4 contents, left to be evicted
 *                            (DIR/evicted once half of them are); once
 *                            DIR/go exists, one _Fork(), daemon(1, 1)
 *                            whose child writes DIR/daemon.json, a fork
 *                            whose child forks at once (the grandchild
 *                            checks), or a clone() without CLONE_VM
 *   cksm-forker dontfork DIR
 *                            as QEMU keeps guest RAM: 512 pages of 4
 *                            contents marked MADV_DONTFORK, and 512 more
 *                            not marked; once a third of the marked ones
 *                            were evicted (DIR/evicted), a fork whose
 *                            child maps a new region where the marked
 *                            one was (the child has none there), waits
 *                            3 s and reads it: it must read zeroes; then
 *                            every page is checked. Prints
 *                            {"evicted":N,"bad":N,"child_old":N,"child_bad":N}
 *   cksm-forker toggle N     512 pages marked MADV_DONTFORK and 512 that a
 *                            thread marks and unmarks (MADV_DOFORK) all
 *                            along; once a third of the first were
 *                            evicted, forks for N seconds: a child that
 *                            has the second region checks it. Prints
 *                            {"forks":N,"with_b":N,"bad_children":N}
 *   cksm-forker clonethreads N
 *                            two threads create and join threads and
 *                            malloc and free all along while the main one
 *                            clone()s (without CLONE_VM) for N seconds,
 *                            each child checking every page
 *   cksm-forker exec PROG [ARG...]
 *                            fork; the child waits 300 ms (its libcksm
 *                            attaches again meanwhile) and runs PROG; exit
 *                            with its status
 *
 * Each child checks a page of the parent's and exits. One JSON line:
 *   {"forks":N,"bad_children":N}
 * Exit 0 when every fork worked and every child was right.
 */
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define PAGES 256

static unsigned char *mem;
static atomic_uint forks, bad;
static unsigned kinds = PAGES; /* contents: one per page, or 4 (duplicates) */

static unsigned char want(size_t page)
{
	return (unsigned char)(page % kinds + 1);
}

/* The pages that are not what the parent wrote. */
static unsigned check_all(void)
{
	unsigned n = 0;

	for (size_t i = 0; i < PAGES; i++)
		for (size_t k = 0; k < 4096; k += 512)
			if (mem[i * 4096 + k] != want(i)) {
				n++;
				break;
			}
	return n;
}

static int wait_file(const char *dir, const char *name, unsigned secs)
{
	char path[512];

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	for (unsigned i = 0; i < secs * 100; i++) {
		if (access(path, F_OK) == 0)
			return 0;
		usleep(10000);
	}
	return -1;
}

static void touch(const char *dir, const char *name)
{
	char path[512];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "w");
	if (f)
		fclose(f);
}

/* Half the pages evicted (mincore), within 30 s? */
static bool evicted(void)
{
	unsigned char v[PAGES];

	for (unsigned t = 0; t < 300; t++) {
		unsigned in = 0;

		if (mincore(mem, PAGES * 4096, v))
			return false;
		for (size_t i = 0; i < PAGES; i++)
			in += v[i] & 1;
		if (in <= PAGES / 2)
			return true;
		usleep(100000);
	}
	return false;
}

static int clone_check(void *arg)
{
	(void)arg;
	return check_all() ? 1 : 0;
}

/* A fork whose child forks again at once: the grandchild checks. */
static int fork_twice(void)
{
	pid_t c = fork(), g;
	int st;

	if (c == 0) {
		g = fork();
		if (g == 0)
			_exit(check_all() ? 1 : 0);
		if (g < 0 || waitpid(g, &st, 0) != g)
			_exit(2);
		_exit(WIFEXITED(st) ? WEXITSTATUS(st) : 2);
	}
	return c;
}

/* _Fork, daemon, a fork twice or a clone, held back by libcksm as fork() is. */
static int variant(const char *how, const char *dir)
{
	pid_t c;
	int st;

	if (!evicted()) {
		printf("{\"error\":\"nothing was evicted within 30 s\"}\n");
		return 2;
	}
	touch(dir, "evicted");
	if (wait_file(dir, "go", 60)) {
		printf("{\"error\":\"no go within 60 s\"}\n");
		return 2;
	}
	if (!strcmp(how, "daemon")) {
		char path[512];
		FILE *f;

		if (daemon(1, 1))
			return 2;
		snprintf(path, sizeof(path), "%s/daemon.json", dir);
		f = fopen(path, "w");
		if (f) {
			fprintf(f, "{\"bad_pages\":%u}\n", check_all());
			fclose(f);
		}
		return 0;
	}
	if (!strcmp(how, "twice")) {
		c = fork_twice();
	} else if (!strcmp(how, "clone")) {
		static char stack[256 << 10] __attribute__((aligned(16)));

		c = clone(clone_check, stack + sizeof(stack), SIGCHLD, NULL);
	} else {
		c = _Fork();
		if (c == 0)
			_exit(check_all() ? 1 : 0);
	}
	if (c < 0 || waitpid(c, &st, 0) != c)
		return 2;
	printf("{\"forks\":1,\"bad_children\":%d}\n", !WIFEXITED(st) || WEXITSTATUS(st));
	return !WIFEXITED(st) || WEXITSTATUS(st);
}

static void fill(void)
{
	mem = mmap(NULL, PAGES * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		exit(2);
	for (size_t i = 0; i < PAGES * 4096; i++)
		mem[i] = want(i / 4096);
}

/* The pages of [p, p + n pages) not holding the byte want(page) + add. */
static unsigned check_region(const unsigned char *p, size_t n, unsigned add)
{
	unsigned bad_pages = 0;

	for (size_t i = 0; i < n; i++)
		for (size_t k = 0; k < 4096; k += 512)
			if (p[i * 4096 + k] != (unsigned char)(i % 4 + 1 + add)) {
				bad_pages++;
				break;
			}
	return bad_pages;
}

/* n pages, page i holding the byte i % 4 + 1 + add; NULL if no memory. */
static unsigned char *region(size_t n, unsigned add)
{
	unsigned char *p =
		mmap(NULL, n * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		return NULL;
	for (size_t i = 0; i < n * 4096; i++)
		p[i] = (unsigned char)(i / 4096 % 4 + 1 + add);
	return p;
}

/* How many of p's n pages are gone, once a third of them are (or 30 s). */
static unsigned wait_evicted(const unsigned char *p, size_t n)
{
	unsigned char v[512];
	unsigned gone = 0;

	for (unsigned k = 0; k < 300 && gone < n / 3; k++) {
		usleep(100000);
		if (mincore((void *)p, n * 4096, v))
			return 0;
		gone = 0;
		for (size_t i = 0; i < n; i++)
			gone += !(v[i] & 1);
	}
	return gone;
}

/* MADV_DONTFORK memory (as QEMU's guest RAM) evicted, and a fork. */
static int dontfork(const char *dir)
{
	const size_t n = 512;
	unsigned char *g = region(n, 0), *h = region(n, 10);
	unsigned evicted, bad_pages, old = 0, cbad = 0;
	pid_t c;
	int st;

	/* marked as QEMU marks guest RAM */
	if (!g || !h || madvise(g, n * 4096, MADV_DONTFORK))
		return 2;
	evicted = wait_evicted(g, n);
	touch(dir, "evicted");
	c = fork(); /* while the marked pages are evicted: the parent's table has them */
	if (c == 0) {
		unsigned char *r = mmap(g, n * 4096, PROT_READ | PROT_WRITE,
					MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
		unsigned o = 0;

		if (r != g)
			_exit(4);
		sleep(3); /* its agent registers the new mapping meanwhile */

		for (size_t i = 0; i < n * 4096; i += 4096)
			o += r[i] != 0;
		_exit((o ? 1 : 0) | (check_region(h, n, 10) ? 2 : 0));
	}
	if (c < 0 || waitpid(c, &st, 0) != c || !WIFEXITED(st) || WEXITSTATUS(st) > 3)
		return 2;
	old = WEXITSTATUS(st) & 1;
	cbad = (WEXITSTATUS(st) & 2) != 0;
	bad_pages = check_region(g, n, 0) + check_region(h, n, 10);
	printf("{\"evicted\":%u,\"bad\":%u,\"child_old\":%u,\"child_bad\":%u}\n", evicted,
	       bad_pages, old, cbad);
	return evicted < n / 3 || bad_pages || old || cbad;
}

static atomic_bool stop_all;

static void *toggler(void *arg)
{
	for (bool on = true; !atomic_load(&stop_all); on = !on)
		madvise(arg, 512 * 4096, on ? MADV_DONTFORK : MADV_DOFORK);
	return NULL;
}

/* Is [p, p + len) mapped here? */
static bool mapped(void *p, size_t len)
{
	unsigned char v[512];

	return mincore(p, len, v) == 0;
}

/* MADV_DONTFORK marked and unmarked by a thread while the main one forks. */
static int toggle(unsigned secs)
{
	const size_t n = 512;
	unsigned char *a = region(n, 0), *b = region(n, 20);
	unsigned with_b = 0, bad_kids = 0, nforks = 0;
	pthread_t t;

	if (!a || !b || madvise(a, n * 4096, MADV_DONTFORK))
		return 2;
	if (wait_evicted(a, n) < n / 3) {
		printf("{\"error\":\"nothing was evicted within 30 s\"}\n");
		return 2;
	}
	pthread_create(&t, NULL, toggler, b);
	for (time_t end = time(NULL) + secs; time(NULL) < end; nforks++) {
		pid_t c = fork();
		int st;

		if (c == 0)
			_exit(mapped(b, n * 4096) ? (check_region(b, n, 20) ? 1 : 2) : 0);
		if (c < 0 || waitpid(c, &st, 0) != c || !WIFEXITED(st))
			return 2;
		with_b += WEXITSTATUS(st) != 0;
		bad_kids += WEXITSTATUS(st) == 1;
	}
	atomic_store(&stop_all, true);
	pthread_join(t, NULL);
	printf("{\"forks\":%u,\"with_b\":%u,\"bad_children\":%u,\"bad\":%u}\n", nforks, with_b,
	       bad_kids, check_region(a, n, 0) + check_region(b, n, 20));
	return bad_kids || check_region(a, n, 0) || check_region(b, n, 20);
}

static void *idle_thread(void *arg)
{
	return arg;
}

static void *churner(void *arg)
{
	(void)arg;
	while (!atomic_load(&stop_all)) {
		pthread_t t;
		void *p = malloc(4096 + (size_t)(rand() % 65536));

		if (!pthread_create(&t, NULL, idle_thread, p))
			pthread_join(t, NULL);
		free(p);
	}
	return NULL;
}

/* clone()s while other threads hold the C library's locks now and then. */
static int clonethreads(unsigned secs)
{
	static char stack[256 << 10] __attribute__((aligned(16)));
	unsigned nclones = 0, bad_kids = 0;
	pthread_t t[2];

	for (int i = 0; i < 2; i++)
		pthread_create(&t[i], NULL, churner, NULL);
	for (time_t end = time(NULL) + secs; time(NULL) < end; nclones++) {
		pid_t c = clone(clone_check, stack + sizeof(stack), SIGCHLD, NULL);
		int st;

		if (c < 0 || waitpid(c, &st, 0) != c)
			return 2;
		bad_kids += !WIFEXITED(st) || WEXITSTATUS(st);
	}
	atomic_store(&stop_all, true);
	for (int i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	printf("{\"forks\":%u,\"bad_children\":%u}\n", nclones, bad_kids);
	return bad_kids != 0;
}

/* One fork: the child checks every page and exits 0 or 1. */
static int fork_once(void)
{
	pid_t c = fork();
	int st;

	if (c < 0)
		return -1;
	if (c == 0) {
		_exit(check_all() ? 1 : 0);
	}
	if (waitpid(c, &st, 0) != c || !WIFEXITED(st) || WEXITSTATUS(st))
		atomic_fetch_add(&bad, 1);
	atomic_fetch_add(&forks, 1);
	return 0;
}

static void *forking(void *arg)
{
	(void)arg;
	for (;;)
		if (fork_once())
			return NULL;
}

int main(int argc, char **argv)
{
	unsigned n = argc > 2 ? (unsigned)atoi(argv[2]) : 10;
	int rc = 0;

	if (argc < 3) {
		fprintf(stderr,
			"usage: cksm-forker closefds|cancel|toggle|clonethreads N, _Fork|daemon|twice|clone|dontfork DIR, toggle|clonethreads N, or exec PROG [ARG...]\n");
		return 2;
	}
	if (!strcmp(argv[1], "exec")) {
		pid_t c = fork();
		int st;

		if (c == 0) {
			usleep(300000);
			execv(argv[2], argv + 2);
			_exit(127);
		}
		if (c < 0 || waitpid(c, &st, 0) != c)
			return 2;
		return WIFEXITED(st) ? WEXITSTATUS(st) : 2;
	}
	if (!strcmp(argv[1], "dontfork"))
		return dontfork(argv[2]);
	if (!strcmp(argv[1], "_Fork") || !strcmp(argv[1], "daemon") || !strcmp(argv[1], "twice") ||
	    !strcmp(argv[1], "clone")) {
		kinds = 4;
		fill();
		return variant(argv[1], argv[2]);
	}
	if (!strcmp(argv[1], "toggle"))
		return toggle(n);
	if (!strcmp(argv[1], "clonethreads")) {
		kinds = 4; /* duplicates: evicted while the clones go on */
		fill();
		return clonethreads(n);
	}
	fill();
	if (!strcmp(argv[1], "closefds")) {
		syscall(SYS_close_range, 3u, ~0u, 0u);
		for (unsigned i = 0; i < n; i++)
			rc |= fork_once();
	} else if (!strcmp(argv[1], "cancel")) {
		for (unsigned round = 0; round < n; round++) {
			unsigned from = atomic_load(&forks);
			pthread_t t;

			pthread_create(&t, NULL, forking, NULL);
			while (atomic_load(&forks) < from + 2)
				usleep(100);
			usleep(round * 97 % 1000); /* somewhere else in a fork each round */
			pthread_cancel(t);
			pthread_join(t, NULL);
			rc |= fork_once();
		}
	} else {
		return 2;
	}
	printf("{\"forks\":%u,\"bad_children\":%u}\n", atomic_load(&forks), atomic_load(&bad));
	return rc || atomic_load(&bad) ? 1 : 0;
}
