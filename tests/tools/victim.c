/*
 * cksm-victim - a served process for the edges of a killed or stopped
 * agent: it fills a region, waits until the agent has evicted it, then
 * does one awkward thing (SCENARIO) and checks every page.
 *
 *   cksm-victim SCENARIO DIR [--pages N] [--seed S] [--reopen N]
 *
 * The region holds N pages (default 1024): the first half four contents
 * (duplicates, each page's bytes derived from its content and S, default
 * 0: victims of different seeds share no content), the other half
 * zeroes. It is marked mergeable, and the victim waits (30 s at
 * most) until at least 90% of it is out of memory (mincore), then writes
 * "evicted E of N" to DIR/evicted, E the pages out of memory, and runs
 * SCENARIO. The test drives it through files in DIR: the victim waits for
 * DIR/go before it checks.
 *
 *   check      wait for DIR/go, check (tag main)
 *   rewrite    wait for DIR/rewrite, write every page again (each is
 *              faulted back, and evicted anew), create DIR/rewritten,
 *              wait for DIR/go, check (tag main)
 *   closeall   close every descriptor (as a daemon does, libcksm's too),
 *              open /dev/null --reopen times (default 3: the numbers of
 *              stdin, stdout, stderr and on), create DIR/closed, wait for
 *              DIR/go, check (tag main), then write DIR/result-fds:
 *              {"tag":"fds","opened":R,"closed_under_us":C}, C of the
 *              reopened descriptors that were closed behind its back
 *   rawfork    fork with syscall(SYS_fork): no atfork handler runs, so the
 *              child's libcksm never attaches again, and the child stays
 *              served only through the userfaultfd the fork gave the
 *              agent. The child creates DIR/forked, waits for DIR/go and
 *              checks (tag child); the parent waits for it and checks
 *              (tag main)
 *
 * A check reads every page and writes one JSON line to DIR/result-TAG:
 * {"tag","pid","checked","bad","zero","sigbus"}: bad counts the pages
 * that read other bytes than they hold, zero those of them that read all
 * zeroes, sigbus the pages whose read gave SIGBUS (a page the agent knows
 * is lost; it is counted, not read, and the check goes on). Exit 0 once
 * every check ran, whatever it found; 2 for a bad command line.
 */
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define PAGE	 4096u
#define MAX_FDS	 4096 /* closeall closes these */
#define NCONTENT 4    /* distinct non-zero contents */

static size_t npages = 1024;
static unsigned seed; /* the contents of another seed are others */
static int reopen_n = 3;
static const char *dir;
static uint8_t *region;
static sigjmp_buf on_sigbus;

/* 0: zeroes; 1..NCONTENT: a pattern. */
static unsigned content_of(size_t pg)
{
	return pg < npages / 2 ? 1 + (unsigned)(pg % NCONTENT) : 0;
}

static void fill(uint8_t *p, unsigned k)
{
	if (!k) {
		memset(p, 0, PAGE);
		return;
	}
	for (size_t i = 0; i < PAGE; i += 8) {
		uint64_t v = ((uint64_t)seed * NCONTENT + k) * 0x9e3779b97f4a7c15ULL ^ i;

		memcpy(p + i, &v, 8);
	}
}

static void path_of(char *path, size_t len, const char *name)
{
	snprintf(path, len, "%s/%s", dir, name);
}

static bool exists(const char *name)
{
	char path[512];

	path_of(path, sizeof(path), name);
	return access(path, F_OK) == 0;
}

/* DIR/name holds text: whole when it appears (written aside, renamed). */
static void put(const char *name, const char *text)
{
	char path[512], tmp[600];
	size_t len = strlen(text);
	int fd;

	path_of(path, sizeof(path), name);
	snprintf(tmp, sizeof(tmp), "%s.%d", path, (int)getpid());
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return;
	if (write(fd, text, len) != (ssize_t)len || rename(tmp, path) < 0)
		unlink(tmp);
	close(fd);
}

static void wait_for(const char *name)
{
	while (!exists(name))
		usleep(20000);
}

/* Pages of the region in memory now. */
static size_t resident(void)
{
	unsigned char *v = malloc(npages);
	size_t n = 0;

	if (!v || mincore(region, npages * PAGE, v)) {
		free(v);
		return npages;
	}
	for (size_t i = 0; i < npages; i++)
		n += v[i] & 1;
	free(v);
	return n;
}

static void sigbus(int sig)
{
	(void)sig;
	siglongjmp(on_sigbus, 1);
}

/* 0: right, 1: wrong, 2: wrong and all zeroes, 3: SIGBUS. */
static int check_page(size_t pg)
{
	static const uint8_t zeroes[PAGE];
	uint8_t want[PAGE];
	const uint8_t *p = region + pg * PAGE;

	fill(want, content_of(pg));
	if (sigsetjmp(on_sigbus, 1))
		return 3;
	if (!memcmp(p, want, PAGE))
		return 0;
	return memcmp(p, zeroes, PAGE) ? 1 : 2;
}

static void check(const char *tag)
{
	struct sigaction sa = { .sa_handler = sigbus };
	size_t n[4] = { 0 };
	char name[64], line[256];

	sigemptyset(&sa.sa_mask);
	sigaction(SIGBUS, &sa, NULL);
	for (size_t pg = 0; pg < npages; pg++)
		n[check_page(pg)]++;
	snprintf(name, sizeof(name), "result-%s", tag);
	snprintf(
		line, sizeof(line),
		"{\"tag\":\"%s\",\"pid\":%d,\"checked\":%zu,\"bad\":%zu,\"zero\":%zu,\"sigbus\":%zu}\n",
		tag, (int)getpid(), npages, n[1] + n[2], n[2], n[3]);
	put(name, line);
}

static void rewrite(void)
{
	wait_for("rewrite");
	for (size_t pg = 0; pg < npages; pg++)
		fill(region + pg * PAGE, content_of(pg));
	put("rewritten", "");
	wait_for("go");
	check("main");
}

static void closeall(void)
{
	int opened = 0, lost = 0;
	char line[128];

	for (int fd = 0; fd < MAX_FDS; fd++)
		close(fd);
	/* A daemon opens its own files again: the same numbers. */
	while (opened < reopen_n && open("/dev/null", O_RDONLY) >= 0)
		opened++;
	put("closed", "");
	wait_for("go");
	check("main");
	for (int fd = 0; fd < opened; fd++)
		if (fcntl(fd, F_GETFD) < 0)
			lost++;
	snprintf(line, sizeof(line), "{\"tag\":\"fds\",\"opened\":%d,\"closed_under_us\":%d}\n",
		 opened, lost);
	put("result-fds", line);
}

static void rawfork(void)
{
	pid_t child = (pid_t)syscall(SYS_fork);

	if (child < 0) {
		perror("cksm-victim: fork");
		exit(1);
	}
	if (child == 0) {
		put("forked", "");
		wait_for("go");
		check("child");
		_exit(0);
	}
	waitpid(child, NULL, 0);
	check("main");
}

/* Fill the region and wait until the agent has evicted it. */
static int setup(void)
{
	char line[128];
	size_t out;

	region = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
		      0);
	if (region == MAP_FAILED) {
		perror("cksm-victim: mmap");
		return -1;
	}
	for (size_t pg = 0; pg < npages; pg++)
		fill(region + pg * PAGE, content_of(pg));
	madvise(region, npages * PAGE, MADV_MERGEABLE);
	for (unsigned i = 0; i < 300 && resident() > npages / 10; i++)
		usleep(100000);
	out = npages - resident();
	snprintf(line, sizeof(line), "evicted %zu of %zu\n", out, npages);
	put("evicted", line);
	return 0;
}

static int usage(void)
{
	fprintf(stderr,
		"usage: cksm-victim check|rewrite|closeall|rawfork DIR [--pages N] [--seed S] [--reopen N]\n");
	return 2;
}

int main(int argc, char **argv)
{
	const char *scenario;

	if (argc < 3)
		return usage();
	scenario = argv[1];
	dir = argv[2];
	for (int i = 3; i < argc; i += 2) {
		if (i + 1 >= argc)
			return usage();
		if (!strcmp(argv[i], "--pages"))
			npages = strtoul(argv[i + 1], NULL, 10);
		else if (!strcmp(argv[i], "--seed"))
			seed = (unsigned)strtoul(argv[i + 1], NULL, 10);
		else if (!strcmp(argv[i], "--reopen"))
			reopen_n = atoi(argv[i + 1]);
		else
			return usage();
	}
	if (npages < 2 || reopen_n < 0 || reopen_n > MAX_FDS)
		return usage();
	if (strcmp(scenario, "check") && strcmp(scenario, "rewrite") &&
	    strcmp(scenario, "closeall") && strcmp(scenario, "rawfork"))
		return usage();
	if (setup())
		return 1;
	if (!strcmp(scenario, "rewrite")) {
		rewrite();
	} else if (!strcmp(scenario, "closeall")) {
		closeall();
	} else if (!strcmp(scenario, "rawfork")) {
		rawfork();
	} else {
		wait_for("go");
		check("main");
	}
	return 0;
}
