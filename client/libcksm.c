/*
 * libcksm - lets an unmodified process be served by the node's cksm agent.
 *
 * Loaded with LD_PRELOAD (or linked), it attaches at start: it connects to
 * the agent's socket (CKSM_SOCKET, default /run/cksm/agent.sock), gets an
 * open /dev/userfaultfd from the agent, makes this process's userfaultfd
 * from it and hands that back. The agent does the UFFDIO_API handshake
 * (with the fork, remap, remove and unmap events, which need privileges
 * the process may not have) and from then on registers, write-protects
 * and fills this process's mergeable ranges from outside. What stays here
 * is what only the process itself can do: drop pages the agent has
 * compared and backed (ZAP: madvise(MADV_DONTNEED)) and mark ranges for
 * the kernel's own KSM (madvise(MADV_MERGEABLE)), on one service thread
 * that blocks every signal.
 *
 * Mergeable ranges: what the program passes to madvise(MADV_MERGEABLE)
 * (passed on to the kernel as well), or with CKSM_MERGE_ALL=1 every
 * private anonymous mapping of at least CKSM_MERGE_MIN bytes (default
 * 1 MiB), found by the agent.
 *
 * Without an agent, or with CKSM_DISABLE=1, it does nothing at all. In a
 * forked child the inherited connection is the parent's: the child closes
 * its copy; its pages are served through the userfaultfd the fork event
 * gave the agent.
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <linux/userfaultfd.h>

#include "local.h"

#define EXPORT __attribute__((visibility("default")))

static int sock = -1;
static pid_t attached_pid;
static int (*real_madvise)(void *, size_t, int);

static int send_local(int fd, const struct cksm_local *m, int pass_fd)
{
	return cksm_local_send(fd, m, pass_fd, 0);
}

static int recv_local(int fd, struct cksm_local *m, int *got_fd)
{
	const char *why;

	return cksm_local_recv(fd, m, got_fd, 0, &why);
}

/* The service thread: the agent's requests, until it goes away. */
static void *serve(void *arg)
{
	int fd = (int)(intptr_t)arg;
	struct cksm_local m = cksm_local_msg(0);
	int extra;

	while (recv_local(fd, &m, &extra) == 0) {
		if (extra >= 0)
			close(extra);
		if (m.type == CKSM_LOCAL_ZAP) {
			struct cksm_local r = cksm_local_msg(CKSM_LOCAL_ZAPPED);

			r.token = m.token;
			r.status = real_madvise((void *)(uintptr_t)m.a, (size_t)m.b, MADV_DONTNEED)
					   ? -errno
					   : 0;
			if (send_local(fd, &r, -1))
				break;
		} else if (m.type == CKSM_LOCAL_KSM) {
			real_madvise((void *)(uintptr_t)m.a, (size_t)m.b, MADV_MERGEABLE);
		}
	}
	return NULL;
}

static void detach_child(void)
{
	/* The connection belongs to the parent; so do its service thread and
	 * the agent's view of it. */
	if (sock >= 0 && getpid() != attached_pid) {
		close(sock);
		sock = -1;
	}
}

static size_t env_size(const char *name, size_t dflt)
{
	const char *v = getenv(name);
	char *end;
	unsigned long long x;

	if (!v || !*v)
		return dflt;
	x = strtoull(v, &end, 10);
	return *end ? dflt : (size_t)x;
}

static void attach(void)
{
	const char *path = getenv("CKSM_SOCKET");
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct timeval tv = { 2, 0 };
	struct cksm_local m = cksm_local_msg(CKSM_LOCAL_HELLO);
	sigset_t all, old;
	pthread_attr_t at;
	pthread_t t;
	int fd, devfd = -1, uffd = -1, extra;

	if (!path || !*path)
		path = CKSM_LOCAL_SOCKET;
	if (strlen(path) >= sizeof(sa.sun_path))
		return;
	strcpy(sa.sun_path, path);
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		goto fail;
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	if (getenv("CKSM_MERGE_ALL") && !strcmp(getenv("CKSM_MERGE_ALL"), "1"))
		m.a = CKSM_LOCAL_MERGE_ALL;
	m.b = env_size("CKSM_MERGE_MIN", 1u << 20);
	if (send_local(fd, &m, -1) || recv_local(fd, &m, &devfd) || m.type != CKSM_LOCAL_DEVFD ||
	    m.status || devfd < 0)
		goto fail;
	uffd = ioctl(devfd, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
	close(devfd);
	devfd = -1;
	if (uffd < 0)
		goto fail;
	m = cksm_local_msg(CKSM_LOCAL_UFFD);
	if (send_local(fd, &m, uffd))
		goto fail;
	close(uffd); /* the agent holds it now */
	uffd = -1;
	if (recv_local(fd, &m, &extra) || m.type != CKSM_LOCAL_READY || m.status) {
		if (extra >= 0)
			close(extra);
		goto fail;
	}
	tv.tv_sec = 0;
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	/* The service thread takes no signal of the program's. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	pthread_attr_init(&at);
	pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
	pthread_attr_setstacksize(&at, 64 << 10);
	if (pthread_create(&t, &at, serve, (void *)(intptr_t)fd)) {
		pthread_sigmask(SIG_SETMASK, &old, NULL);
		pthread_attr_destroy(&at);
		goto fail;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	pthread_attr_destroy(&at);
	attached_pid = getpid();
	sock = fd;
	pthread_atfork(NULL, NULL, detach_child);
	return;
fail:
	if (uffd >= 0)
		close(uffd);
	close(fd);
}

__attribute__((constructor)) static void cksm_init(void)
{
	real_madvise = (int (*)(void *, size_t, int))dlsym(RTLD_NEXT, "madvise");
	if (!real_madvise)
		return;
	if (getenv("CKSM_DISABLE") && !strcmp(getenv("CKSM_DISABLE"), "1"))
		return;
	attach();
}

/* madvise(MADV_MERGEABLE) goes to the kernel and names the range to the agent. */
EXPORT int madvise(void *addr, size_t len, int advice)
{
	int rc;

	if (!real_madvise) {
		real_madvise = (int (*)(void *, size_t, int))dlsym(RTLD_NEXT, "madvise");
		if (!real_madvise) {
			errno = ENOSYS;
			return -1;
		}
	}
	rc = real_madvise(addr, len, advice);
	if (rc == 0 && advice == MADV_MERGEABLE && sock >= 0 && getpid() == attached_pid) {
		struct cksm_local m = cksm_local_msg(CKSM_LOCAL_RANGE);
		int e = errno;

		m.a = (uint64_t)(uintptr_t)addr;
		m.b = len;
		/* Never wait on the agent: a range not named is found later. */
		cksm_local_send(sock, &m, -1, MSG_DONTWAIT);
		errno = e;
	}
	return rc;
}
