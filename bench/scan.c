/*
 * bench/scan - the scanner against memcpy on this machine.
 *
 *   scan [GIB] [BUDGET_SECONDS]     (defaults: 1 GiB, 10 s)
 *
 * A child process fills GIB GiB with distinct pages. The bench then times
 * full scanner passes over it (read with process_vm_readv, checksum,
 * content ids), and, as the yardstick in the same run, memcpy of the same
 * number of bytes from a buffer of the same size in this process into a
 * cache-sized window (what the scanner's reads amount to). It prints
 * pages/s, bytes/s, the ratio to memcpy, the scanner's state per page,
 * and then runs throttled passes for BUDGET_SECONDS with the default
 * pages_to_scan, sleep_millisecs and cpu_percent and prints the CPU share
 * it actually took, read from /proc/self/stat.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>

#include "bench.h"
#include <unistd.h>

#include "agent/scan.h"
#include "agent/target.h"
#include "auth.h"
#include "cid.h"
#include "config.h"

#define PAGE   4096UL
#define WINDOW (512UL << 10)

static void fill(uint8_t *p, size_t pages, uint64_t salt)
{
	for (size_t i = 0; i < pages; i++) {
		uint64_t *w = (uint64_t *)(p + i * PAGE);

		for (size_t k = 0; k < PAGE / 8; k++)
			w[k] = (i + 1) * 0x9e3779b97f4a7c15ULL + k + salt;
	}
}

/* The child: GIB of distinct pages, then wait to be killed. */
static pid_t spawn(size_t bytes)
{
	int fds[2];
	pid_t pid;
	char c = 0;

	if (pipe(fds))
		exit(1);
	pid = fork();
	if (pid == 0) {
		uint8_t *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
				  -1, 0);

		if (p == MAP_FAILED)
			_exit(1);
		madvise(p, bytes, MADV_NOHUGEPAGE);
		fill(p, bytes / PAGE, 0);
		if (write(fds[1], &c, 1) != 1)
			_exit(1);
		for (;;)
			pause();
	}
	close(fds[1]);
	if (read(fds[0], &c, 1) != 1) {
		fprintf(stderr, "scan: the child could not map its memory\n");
		exit(1);
	}
	close(fds[0]);
	return pid;
}

static int count_report(void *arg, const struct scan_page *pg)
{
	(void)pg;
	++*(uint64_t *)arg;
	return 0;
}

static bool do_sleep(void *arg, uint64_t ms)
{
	struct timespec ts = { (time_t)(ms / 1000), (long)(ms % 1000) * 1000000L };

	(void)arg;
	nanosleep(&ts, NULL);
	return false;
}

static double cpu_seconds(void)
{
	unsigned long ut, st;
	char buf[1024], *p;
	FILE *f = fopen("/proc/self/stat", "r");

	if (!f || !fgets(buf, sizeof(buf), f))
		exit(1);
	fclose(f);
	p = strrchr(buf, ')');
	if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
		exit(1);
	return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static double memcpy_rate(size_t bytes)
{
	uint8_t *src =
		mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint8_t *dst = aligned_alloc(PAGE, WINDOW);
	double t0, best = 0;

	if (src == MAP_FAILED || !dst)
		exit(1);
	madvise(src, bytes, MADV_NOHUGEPAGE);
	fill(src, bytes / PAGE, 1);
	for (int r = 0; r < 2; r++) {
		t0 = now_s();
		for (size_t off = 0; off < bytes; off += WINDOW)
			memcpy(dst, src + off, WINDOW);
		__asm__ volatile("" : : "r"(dst) : "memory");
		t0 = bytes / (now_s() - t0);
		if (t0 > best)
			best = t0;
	}
	munmap(src, bytes);
	free(dst);
	return best;
}

int main(int argc, char **argv)
{
	double gib = argc > 1 ? atof(argv[1]) : 1.0;
	double budget_s = argc > 2 ? atof(argv[2]) : 10.0;
	size_t bytes = (size_t)(gib * (1UL << 30)) / PAGE * PAGE, pages = bytes / PAGE;
	static struct config cfg;
	static struct cid_domain dom;
	struct targets targets;
	struct scan_counts c;
	struct scanner *s;
	struct auth_key key;
	uint64_t reported = 0;
	char err[256], pid[16];
	double mc, t0, dt, cpu0, rate[3];
	long rss0;
	pid_t child;

	if (auth_init())
		return 1;
	memset(key.k, 5, sizeof(key.k));
	mc = memcpy_rate(bytes);
	child = spawn(bytes);

	config_defaults(&cfg);
	cfg.scan_mergeable = 0;
	snprintf(pid, sizeof(pid), "%d", (int)child);
	strcpy(cfg.domains[0].pids, pid);
	cid_domain_init(&dom, &key, 0, "default");
	targets_init(&targets, &cfg);
	rss0 = rss_kb();
	s = scanner_create(&cfg, &targets, &dom, count_report, &reported, err, sizeof(err));
	if (!s) {
		fprintf(stderr, "scan: %s\n", err);
		return 1;
	}
	printf("scanning %.2f GiB (%zu pages) of one process; memcpy of the same bytes: %.0f MB/s\n",
	       gib, pages, mc / 1e6);
	for (int pass = 0; pass < 3; pass++) {
		t0 = now_s();
		scanner_pass(s, &c);
		dt = now_s() - t0;
		rate[pass] = c.scanned * PAGE / dt;
		printf("pass %d (%s): %8.0f pages/s %7.0f MB/s  ratio to memcpy %.2f  (scanned %llu, reported %llu)\n",
		       pass + 1,
		       pass == 0   ? "first sight"
		       : pass == 1 ? "stable, ids computed"
				   : "steady",
		       c.scanned / dt, rate[pass] / 1e6, rate[pass] / mc,
		       (unsigned long long)c.scanned, (unsigned long long)c.reported);
	}
	printf("state: %.2f bytes per scanned page (scanner accounting), %.2f by RSS growth\n",
	       (double)scanner_state_bytes(s) / (double)scanner_tracked_pages(s),
	       (rss_kb() - rss0) * 1024.0 / (double)pages);

	if (budget_s > 0) {
		scanner_set_sleep(s, do_sleep, NULL);
		t0 = now_s();
		uint64_t scanned = 0;

		cpu0 = cpu_seconds();
		while (now_s() - t0 < budget_s) {
			scanner_pass(s, &c);
			scanned += c.scanned;
		}
		dt = now_s() - t0;
		printf("throttled (pages_to_scan %u, sleep_millisecs %u, cpu_percent %u): %.1f%% of one core over %.1f s, %.0f pages/s\n",
		       cfg.pages_to_scan, cfg.sleep_millisecs, cfg.cpu_percent,
		       100.0 * (cpu_seconds() - cpu0) / dt, dt, scanned / dt);
	}
	scanner_destroy(s);
	targets_fini(&targets);
	kill(child, SIGKILL);
	waitpid(child, NULL, 0);
	return 0;
}
