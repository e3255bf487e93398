/*
 * cksm-flood - silent TCP peers for integration tests: COUNT connections
 * to ADDR that never send a byte, from NSOURCES loopback addresses
 * starting at FIRST (127.a.b.c, counting up), spread round-robin. Each one
 * the daemon closes is opened again PAUSE_MS later (a scanner's retry; 0:
 * at once), for SECONDS; then all are closed (also on SIGTERM) and the
 * totals printed:
 *
 *   cksm-flood ADDR FIRST NSOURCES COUNT SECONDS PAUSE_MS
 *   flood ADDR: opened N, closed by the daemon M, connect errors E
 *
 * Exits 0 unless it could not start. It raises its own descriptor limit;
 * COUNT must fit under the hard limit.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define COUNT_MAX 4096

static struct sockaddr_in to;
static uint32_t first;
static unsigned nsources;
static unsigned long opened, closed, errors;
static volatile sig_atomic_t stop;

static void on_term(int sig)
{
	(void)sig;
	stop = 1;
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Connection i: bound to its source address, connected (or in progress). */
static int open_one(unsigned i)
{
	struct sockaddr_in from = { .sin_family = AF_INET };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -1;
	from.sin_addr.s_addr = htonl(first + i % nsources);
	if (bind(fd, (struct sockaddr *)&from, sizeof(from)) ||
	    (connect(fd, (struct sockaddr *)&to, sizeof(to)) && errno != EINPROGRESS)) {
		errors++;
		close(fd);
		return -1;
	}
	opened++;
	return fd;
}

static int parse_addr(const char *s, struct sockaddr_in *sa)
{
	char host[64];
	const char *colon = strrchr(s, ':');

	if (!colon || (size_t)(colon - s) >= sizeof(host))
		return -1;
	memcpy(host, s, (size_t)(colon - s));
	host[colon - s] = '\0';
	sa->sin_family = AF_INET;
	sa->sin_port = htons((uint16_t)atoi(colon + 1));
	return inet_pton(AF_INET, host, &sa->sin_addr) == 1 ? 0 : -1;
}

int main(int argc, char **argv)
{
	static struct pollfd pfd[COUNT_MAX];
	static double again[COUNT_MAX]; /* when a closed one is opened again */
	struct in_addr f;
	struct rlimit rl;
	unsigned count;
	double end, pause;

	if (argc != 7 || parse_addr(argv[1], &to) || inet_pton(AF_INET, argv[2], &f) != 1) {
		fprintf(stderr, "usage: cksm-flood ADDR FIRST NSOURCES COUNT SECONDS PAUSE_MS\n");
		return 2;
	}
	first = ntohl(f.s_addr);
	nsources = (unsigned)atoi(argv[3]);
	count = (unsigned)atoi(argv[4]);
	if (!nsources || !count || count > COUNT_MAX) {
		fprintf(stderr, "cksm-flood: 1 to %d connections from at least one source\n",
			COUNT_MAX);
		return 2;
	}
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	signal(SIGTERM, on_term);
	end = now_s() + atof(argv[5]);
	pause = atof(argv[6]) / 1000;
	for (unsigned i = 0; i < count; i++) {
		pfd[i].fd = open_one(i);
		pfd[i].events = POLLIN;
	}
	while (!stop && now_s() < end) {
		int n = poll(pfd, count, 20);

		double t;

		for (unsigned i = 0; i < count && n > 0; i++) {
			char b[64];
			ssize_t r;

			if (pfd[i].fd < 0 || !pfd[i].revents)
				continue;
			/* A ServerHello is read and dropped; an end or error is a close. */
			r = recv(pfd[i].fd, b, sizeof(b), MSG_DONTWAIT);
			if (r > 0 || (r < 0 && errno == EAGAIN))
				continue;
			close(pfd[i].fd);
			pfd[i].fd = -1;
			closed++;
			again[i] = now_s() + pause;
		}
		t = now_s();
		for (unsigned i = 0; i < count; i++)
			if (pfd[i].fd < 0 && t >= again[i]) {
				pfd[i].fd = open_one(i);
				again[i] = t + pause;
			}
	}
	for (unsigned i = 0; i < count; i++)
		if (pfd[i].fd >= 0)
			close(pfd[i].fd);
	printf("flood %s: opened %lu, closed by the daemon %lu, connect errors %lu\n", argv[1],
	       opened, closed, errors);
	return 0;
}
