/*
 * cksm-sockfuzz - a hostile client of the agent's local socket.
 *
 *   cksm-sockfuzz SOCKET AGENT_PID
 *
 * Each case runs on a connection of its own: messages out of order, twice,
 * with descriptors attached to every one, huge and overflowing ranges,
 * ZAPPED with tokens nobody asked for, a userfaultfd that is not one,
 * connections held in the handshake beyond the limit, re-attach slots
 * taken and let go. After each case the agent must still be alive, its
 * descriptor count must not grow (nothing leaked), and a valid handshake
 * must still succeed. Prints one line per case; exit 0 when all held.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <linux/userfaultfd.h>

#include "local.h"

static const char *path;
static pid_t agent;
static int failures;
static void *beacon;

static int conn(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	struct timeval tv = { 3, 0 };

	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa))) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	return fd;
}

static int nfds(pid_t pid)
{
	char p[64];
	DIR *d;
	int n = 0;

	snprintf(p, sizeof(p), "/proc/%d/fd", (int)pid);
	d = opendir(p);
	if (!d)
		return -1;
	while (readdir(d))
		n++;
	closedir(d);
	return n;
}

static struct cksm_local msg(uint16_t type, uint64_t a, uint64_t b, uint64_t token)
{
	struct cksm_local m = cksm_local_msg(type);

	m.a = a;
	m.b = b;
	m.token = token;
	return m;
}

static int send_m(int fd, struct cksm_local m, int pass)
{
	return cksm_local_send(fd, &m, pass, MSG_NOSIGNAL);
}

/* Next message; -1 when the connection closed (or timed out). */
static int recv_m(int fd, struct cksm_local *m, int *got)
{
	const char *why;
	int g = -1, rc = cksm_local_recv(fd, m, &g, 0, &why);

	if (got)
		*got = g;
	else if (g >= 0)
		close(g);
	return rc ? -1 : 0;
}

/* Is the connection closed by the agent (within 3 s)? */
static bool closed(int fd)
{
	struct cksm_local m;

	for (int i = 0; i < 20; i++)
		if (recv_m(fd, &m, NULL))
			return true;
	return false;
}

/* A full handshake: the connected fd, with *uffd the userfaultfd, or -1. */
static int handshake(int *uffd, bool merge_all)
{
	struct cksm_local m;
	int fd = conn(), devfd = -1, u;

	if (fd < 0)
		return -1;
	if (send_m(fd,
		   msg(CKSM_LOCAL_HELLO, merge_all ? CKSM_LOCAL_MERGE_ALL : 0, 4096,
		       (uint64_t)(uintptr_t)beacon),
		   -1) ||
	    recv_m(fd, &m, &devfd) || m.type != CKSM_LOCAL_DEVFD || devfd < 0)
		goto fail;
	u = ioctl(devfd, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
	close(devfd);
	if (u < 0 || send_m(fd, msg(CKSM_LOCAL_UFFD, 0, 0, 0), u) || recv_m(fd, &m, NULL) ||
	    m.type != CKSM_LOCAL_READY || m.status) {
		if (u >= 0)
			close(u);
		goto fail;
	}
	if (uffd)
		*uffd = u;
	else
		close(u);
	return fd;
fail:
	close(fd);
	return -1;
}

static void check(const char *name, bool ok, int fds_before)
{
	int h, after;

	usleep(200000);
	after = nfds(agent);
	h = handshake(NULL, false);
	if (kill(agent, 0)) {
		printf("FAIL %s: the agent died\n", name);
		failures++;
		exit(1);
	}
	if (h < 0)
		ok = false;
	else
		close(h);
	printf("%s %s (agent fds %d -> %d)\n", ok ? "ok  " : "FAIL", name, fds_before, after);
	if (!ok || after > fds_before + 2)
		failures++;
}

int main(int argc, char **argv)
{
	int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC), fd, u, before;
	struct cksm_local m;
	bool ok;

	if (argc != 3)
		return 2;
	path = argv[1];
	agent = (pid_t)atoi(argv[2]);
	beacon = mmap(NULL, CKSM_LOCAL_BEACON_PAGES * 4096, PROT_READ,
		      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	signal(SIGPIPE, SIG_IGN);

	/* 1. HELLO twice. */
	before = nfds(agent);
	fd = conn();
	ok = fd >= 0 && !send_m(fd, msg(CKSM_LOCAL_HELLO, 0, 0, (uint64_t)(uintptr_t)beacon), -1) &&
	     !recv_m(fd, &m, NULL) && m.type == CKSM_LOCAL_DEVFD &&
	     !send_m(fd, msg(CKSM_LOCAL_HELLO, 0, 0, (uint64_t)(uintptr_t)beacon), -1) &&
	     closed(fd);
	close(fd);
	check("hello twice: closed", ok, before);

	/* 2. Every pre-handshake message with a descriptor, 300 times. */
	before = nfds(agent);
	ok = true;
	for (int i = 0; i < 300; i++) {
		uint16_t types[] = { CKSM_LOCAL_HELLO, CKSM_LOCAL_ZAPPED, CKSM_LOCAL_RANGE,
				     CKSM_LOCAL_UFFD,  CKSM_LOCAL_READY,  CKSM_LOCAL_KSM };

		fd = conn();
		if (fd < 0) {
			usleep(10000);
			continue;
		}
		send_m(fd, msg(types[i % 6], ~0ull, ~0ull, ~0ull), devnull);
		send_m(fd, msg(CKSM_LOCAL_UFFD, 0, 0, 0), devnull);
		close(fd);
	}
	sleep(1);
	check("300 connections, a descriptor on every message: no descriptor kept", ok, before);

	/* 3. UFFD that is not a userfaultfd (/dev/null, the socket itself, devfd). */
	before = nfds(agent);
	ok = true;
	for (int k = 0; k < 3; k++) {
		int devfd = -1, pass;

		fd = conn();
		send_m(fd, msg(CKSM_LOCAL_HELLO, 0, 0, 0), -1);
		recv_m(fd, &m, &devfd);
		pass = k == 0 ? devnull : k == 1 ? fd : devfd;
		send_m(fd, msg(CKSM_LOCAL_UFFD, 0, 0, 0), pass);
		if (!recv_m(fd, &m, NULL) && m.type == CKSM_LOCAL_READY && m.status == 0)
			ok = false;
		ok = ok && closed(fd);
		close(fd);
		if (devfd >= 0)
			close(devfd);
	}
	check("UFFD with /dev/null, the socket, /dev/userfaultfd: refused", ok, before);

	/* 4. A userfaultfd already handshaken (UFFDIO_API done by us). */
	before = nfds(agent);
	{
		int devfd = -1;
		struct uffdio_api api = { .api = UFFD_API };

		fd = conn();
		send_m(fd, msg(CKSM_LOCAL_HELLO, 0, 0, 0), -1);
		recv_m(fd, &m, &devfd);
		u = ioctl(devfd, USERFAULTFD_IOC_NEW, O_CLOEXEC);
		ioctl(u, UFFDIO_API, &api);
		send_m(fd, msg(CKSM_LOCAL_UFFD, 0, 0, 0), u);
		ok = !(!recv_m(fd, &m, NULL) && m.type == CKSM_LOCAL_READY && m.status == 0);
		close(fd);
		close(u);
		close(devfd);
	}
	check("UFFD already handshaken: refused", ok, before);

	/* 5. After the handshake: ZAPPED with tokens nobody asked, every
	 * message with a descriptor, RANGE huge, overflowing, unaligned, 0. */
	before = nfds(agent);
	fd = handshake(&u, false);
	ok = fd >= 0;
	for (int i = 0; ok && i < 2000; i++) {
		int st[] = { 0, -1, -ECONNRESET, -ESRCH, 1, 0x7fffffff, (int)0x80000000 };
		struct cksm_local z = msg(CKSM_LOCAL_ZAPPED, ~0ull, ~0ull, (uint64_t)i * 7919 - 3);

		z.status = st[i % 7];
		if (send_m(fd, z, i % 2 ? devnull : -1))
			ok = false;
	}
	{
		uint64_t ranges[][2] = {
			{ ~0ull & ~4095ull, 4096 },
			{ 4096, ~0ull & ~4095ull },
			{ 0, ~0ull & ~4095ull },
			{ 0, 0 },
			{ 1, 4096 },
			{ 4096, 1 },
			{ 1ull << 47, 1ull << 47 },
			{ 0x1000, 0x1000 },
		};
		for (unsigned i = 0; ok && i < sizeof(ranges) / sizeof(ranges[0]); i++)
			if (send_m(fd, msg(CKSM_LOCAL_RANGE, ranges[i][0], ranges[i][1], 0),
				   devnull))
				ok = false;
	}
	usleep(300000);
	/* still served */
	ok = ok && !send_m(fd, msg(CKSM_LOCAL_ZAPPED, 0, 0, 0), -1);
	{
		struct cksm_local r;
		int g = -1;
		/* nothing should have come back except maybe KSM/ZAP; drain briefly */
		struct timeval tv = { 0, 200000 };

		setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		while (!recv_m(fd, &r, &g))
			if (g >= 0)
				close(g), g = -1;
	}
	/* then HELLO again after the handshake: closed */
	send_m(fd, msg(CKSM_LOCAL_HELLO, 0, 0, 0), -1);
	{
		struct timeval tv = { 3, 0 };

		setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	}
	ok = ok && closed(fd);
	close(fd);
	close(u);
	check("after the handshake: 2000 ZAPPED, RANGEs huge/overflowing, fds, then HELLO: closed",
	      ok, before);

	/* 6. UFFD twice (second after READY), with a fresh userfaultfd. */
	before = nfds(agent);
	fd = handshake(&u, false);
	{
		int devfd = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
		int u2 = devfd >= 0 ? ioctl(devfd, USERFAULTFD_IOC_NEW, O_CLOEXEC) : -1;

		send_m(fd, msg(CKSM_LOCAL_UFFD, 0, 0, 0), u2);
		ok = closed(fd);
		if (u2 >= 0)
			close(u2);
		if (devfd >= 0)
			close(devfd);
	}
	close(fd);
	close(u);
	check("UFFD again after READY: closed", ok, before);

	/* 7. More than PENDING_MAX connections in the handshake. */
	before = nfds(agent);
	{
		int v[100], n = 0, refused = 0;

		for (int i = 0; i < 100; i++)
			if ((v[n] = conn()) >= 0)
				n++;
		usleep(300000);
		for (int i = 0; i < n; i++) {
			struct cksm_local r;
			int rc = recv(v[i], &r, sizeof(r), MSG_DONTWAIT);

			if (rc == 0)
				refused++;
		}
		printf("     %d connected, %d closed at once (PENDING_MAX 64)\n", n, refused);
		ok = refused >= n - 64;
		/* the ones held are reaped within HELLO_WAIT_MS */
		sleep(7);
		for (int i = 0; i < n; i++) {
			struct cksm_local r;

			if (recv(v[i], &r, sizeof(r), MSG_DONTWAIT) != 0)
				ok = false;
			close(v[i]);
		}
	}
	check("100 silent connections: beyond 64 refused, the rest reaped in 5 s", ok, before);

	/* 8. Re-attach slots: 63 FORKED hellos held (the beacon's last page
	 * is the agent's mark), the 64th refused, all freed when they close,
	 * then one more gets a BEACON. */
	before = nfds(agent);
	{
		int v[70], n = 0, beacons = 0, busy = 0;

		for (int i = 0; i < (int)CKSM_LOCAL_BEACON_SLOTS + 1; i++) {
			struct cksm_local r;

			v[n] = conn();
			if (v[n] < 0)
				continue;
			send_m(v[n],
			       msg(CKSM_LOCAL_HELLO, CKSM_LOCAL_FORKED, 0,
				   (uint64_t)(uintptr_t)beacon),
			       devnull);
			if (!recv_m(v[n], &r, NULL)) {
				if (r.type == CKSM_LOCAL_BEACON)
					beacons++;
				else if (r.type == CKSM_LOCAL_READY && r.status == -EBUSY)
					busy++;
			} else {
				busy++; /* refused at accept: PENDING_MAX is 64 too */
			}
			n++;
		}
		printf("     %d beacons, %d refused (busy or at accept)\n", beacons, busy);
		ok = beacons == (int)CKSM_LOCAL_BEACON_SLOTS && busy == 1;
		for (int i = 0; i < n; i++)
			close(v[i]);
		usleep(300000);
		fd = conn();
		send_m(fd, msg(CKSM_LOCAL_HELLO, CKSM_LOCAL_FORKED, 0, (uint64_t)(uintptr_t)beacon),
		       -1);
		ok = ok && !recv_m(fd, &m, NULL) && m.type == CKSM_LOCAL_BEACON;
		/* garbage while re-attaching */
		send_m(fd, msg(CKSM_LOCAL_ZAPPED, 0, 0, 1), devnull);
		ok = ok && closed(fd);
		close(fd);
	}
	check("64 FORKED hellos: 63 beacons, 1 busy; slots freed on close", ok, before);

	/* 9. A FORKED hello with a beacon that overflows / is unaligned. */
	before = nfds(agent);
	ok = true;
	{
		uint64_t bad[] = { ~0ull & ~4095ull, 123, ~0ull - 64 * 4096 + 4096 + 1 };

		for (unsigned i = 0; i < 3; i++) {
			fd = conn();
			send_m(fd, msg(CKSM_LOCAL_HELLO, CKSM_LOCAL_FORKED, 0, bad[i]), -1);
			ok = ok && closed(fd);
			close(fd);
		}
	}
	check("FORKED hellos with bad beacons: closed", ok, before);

	/* 10. Raw garbage of odd sizes, with descriptors. */
	before = nfds(agent);
	ok = true;
	for (int i = 0; i < 50; i++) {
		char buf[256];
		struct iovec iov = { buf, (size_t)(i * 5 % 200) + 1 };
		char c[CMSG_SPACE(sizeof(int) * 3)];
		struct msghdr mh = { .msg_iov = &iov,
				     .msg_iovlen = 1,
				     .msg_control = c,
				     .msg_controllen = sizeof(c) };
		struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
		int fds3[3] = { devnull, devnull, devnull };

		memset(buf, i, sizeof(buf));
		if (i % 3 == 0) { /* a valid header with garbage after */
			struct cksm_local h = msg(CKSM_LOCAL_HELLO, 0, 0, 0);

			memcpy(buf, &h, sizeof(h));
		}
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(fds3));
		memcpy(CMSG_DATA(cm), fds3, sizeof(fds3));
		fd = conn();
		sendmsg(fd, &mh, MSG_NOSIGNAL);
		ok = ok && closed(fd);
		close(fd);
	}
	check("garbage of odd sizes with 3 descriptors each: closed, none kept", ok, before);

	printf("%d failures\n", failures);
	return failures ? 1 : 0;
}
