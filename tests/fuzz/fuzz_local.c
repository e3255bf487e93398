/*
 * libFuzzer target: the receive side of the local protocol (local.h), what
 * any unprivileged process can send to the agent's socket. Each input is
 * a run of packets over a fresh SOCK_SEQPACKET pair, the receiving end
 * with SO_PASSCRED as the agent's; a packet is
 *
 *	ctl   bits 0-1: 0 a message's bytes follow (sizeof(struct
 *	      cksm_local)), 1 a length byte and fewer bytes than a message
 *	      (0 too), 2 a length byte and 1..64 bytes more than a message,
 *	      3 a message's bytes with magic and version forced right (the
 *	      type and fields explored);
 *	      bits 2-4: descriptors attached (dups of /dev/null), 0..6;
 *	      bit 5: receive at once (else packets queue up);
 *	      bit 6: the sender closes after this packet
 *	[len] bytes
 *
 * Every packet is received with cksm_local_recv_from(MSG_DONTWAIT) and
 * the outcome is predicted from what was sent: 0 exactly for a whole
 * message with the right magic and version and at most 4 descriptors,
 * with its bytes, the sender's pid and a descriptor when one came; -EPROTO
 * with *why and no descriptor otherwise; -ECONNRESET for an empty packet
 * or the end. The caller (attach.c's on_sock) owns the descriptor only on
 * 0, as the handlers close it: a descriptor with any other return is one
 * nobody closes. After each input no descriptor may be left open.
 *
 * The agent's checks of accepted messages (beacon_ok, handle_range's) are
 * static in attach.c: there is nothing pure to call after the receive.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "local.h"

#define MSG	     sizeof(struct cksm_local)
#define MAX_PACKETS  16
#define MAX_FDS	     6
#define QUEUE_ROOM   8 /* below the kernel's 10 queued datagrams */
#define MAX_RECV_FDS 4 /* what cksm_local_recv_from has room for */

struct sent {
	size_t len;
	unsigned nfds;
	uint8_t head[MSG]; /* the first bytes */
};

static int devnull = -1;
static dev_t devnull_rdev;

static void die(const char *what)
{
	fprintf(stderr, "fuzz_local: %s\n", what);
	abort();
}

static int open_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	int n = 0;

	if (!d)
		die("cannot list /proc/self/fd");
	while (readdir(d))
		n++;
	closedir(d);
	return n;
}

/* Input bytes, zeroes once they run out. */
struct input {
	const uint8_t *p;
	size_t left;
};

static uint8_t in_byte(struct input *in)
{
	if (!in->left)
		return 0;
	in->left--;
	return *in->p++;
}

static void in_bytes(struct input *in, uint8_t *to, size_t n)
{
	for (size_t i = 0; i < n; i++)
		to[i] = in_byte(in);
}

static void send_packet(int fd, const uint8_t *buf, size_t len, unsigned nfds)
{
	union {
		char buf[CMSG_SPACE(sizeof(int) * MAX_FDS)];
		struct cmsghdr align;
	} u;
	struct iovec iov = { (void *)buf, len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	int fds[MAX_FDS];

	for (unsigned i = 0; i < nfds; i++) {
		fds[i] = dup(devnull);
		if (fds[i] < 0)
			die("dup");
	}
	if (nfds) {
		struct cmsghdr *c;

		memset(&u, 0, sizeof(u));
		mh.msg_control = u.buf;
		mh.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
		c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
		memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
	}
	if (sendmsg(fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL) != (ssize_t)len)
		die("sendmsg");
	for (unsigned i = 0; i < nfds; i++)
		close(fds[i]);
}

static bool whole(const struct sent *s)
{
	struct cksm_local m;

	if (s->len != MSG || s->nfds > MAX_RECV_FDS)
		return false;
	memcpy(&m, s->head, MSG);
	return m.magic == CKSM_LOCAL_MAGIC && m.version == CKSM_LOCAL_VERSION;
}

/* Receive one packet (s, or the end when NULL) and check the outcome. */
static void receive(int fd, const struct sent *s)
{
	struct cksm_local m;
	const char *why;
	int got_fd, sender, rc;
	struct stat st;

	rc = cksm_local_recv_from(fd, &m, &got_fd, MSG_DONTWAIT, &why, &sender);
	if (rc && got_fd >= 0)
		die("a descriptor with an error return: the caller never closes it");
	if (!s) {
		if (rc != -ECONNRESET && rc != -EAGAIN)
			die("no packet, yet neither the end nor nothing to read");
		return;
	}
	if (rc == 0) {
		if (!whole(s))
			die("a message accepted that is not whole, or of a bad magic or version");
		if (m.magic != CKSM_LOCAL_MAGIC || m.version != CKSM_LOCAL_VERSION)
			die("0 with a bad magic or version");
		if (memcmp(&m, s->head, MSG))
			die("the message is not the bytes sent");
		if (why)
			die("0 with a reason");
		if (sender != (int)getpid())
			die("the sender's pid is not ours");
		if ((got_fd >= 0) != (s->nfds > 0))
			die("a descriptor sent and none received, or the other way round");
		if (got_fd >= 0) {
			if (fstat(got_fd, &st) || st.st_rdev != devnull_rdev)
				die("the descriptor received is not the one sent");
			if (!(fcntl(got_fd, F_GETFD) & FD_CLOEXEC))
				die("the descriptor received is not close-on-exec");
			close(got_fd); /* the handlers close it */
		}
		return;
	}
	if (rc == -EPROTO) {
		if (!why)
			die("-EPROTO without a reason");
		if (got_fd != -1)
			die("-EPROTO with a descriptor");
		if (whole(s))
			die("a whole message refused");
		return;
	}
	if (rc == -ECONNRESET && s->len == 0)
		return; /* an empty packet reads as the end */
	fprintf(stderr, "fuzz_local: rc %d for a packet of %zu bytes, %u descriptors\n", rc, s->len,
		s->nfds);
	abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct input in = { data, size };
	struct sent q[MAX_PACKETS];
	size_t head = 0, tail = 0;
	uint8_t buf[128];
	int sv[2], before;
	bool closed = false;

	if (devnull < 0) {
		struct stat st;

		devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
		if (devnull < 0 || fstat(devnull, &st))
			die("cannot open /dev/null");
		devnull_rdev = st.st_rdev;
	}
	before = open_fds();
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv))
		die("socketpair");
	if (setsockopt(sv[1], SOL_SOCKET, SO_PASSCRED, &(int){ 1 }, sizeof(int)))
		die("SO_PASSCRED");
	while (in.left && tail < MAX_PACKETS && !closed) {
		uint8_t ctl = in_byte(&in);
		struct sent *s = &q[tail];
		struct cksm_local m;

		switch (ctl & 3) {
		case 1:
			s->len = in_byte(&in) % MSG;
			break;
		case 2:
			s->len = MSG + 1 + in_byte(&in) % 64;
			break;
		default:
			s->len = MSG;
			break;
		}
		in_bytes(&in, buf, s->len);
		if ((ctl & 3) == 3) {
			memcpy(&m, buf, MSG);
			m.magic = CKSM_LOCAL_MAGIC;
			m.version = CKSM_LOCAL_VERSION;
			memcpy(buf, &m, MSG);
		}
		s->nfds = (ctl >> 2) & 7;
		if (s->nfds > MAX_FDS)
			s->nfds = 0;
		memset(s->head, 0, MSG);
		memcpy(s->head, buf, s->len < MSG ? s->len : MSG);
		if (tail - head >= QUEUE_ROOM)
			receive(sv[1], &q[head++]);
		send_packet(sv[0], buf, s->len, s->nfds);
		tail++;
		if (ctl & 0x20)
			while (head < tail)
				receive(sv[1], &q[head++]);
		if (ctl & 0x40) {
			close(sv[0]);
			closed = true;
		}
	}
	while (head < tail)
		receive(sv[1], &q[head++]);
	receive(sv[1], NULL); /* nothing more, or the end */
	if (!closed)
		close(sv[0]);
	receive(sv[1], NULL);
	close(sv[1]);
	if (open_fds() != before)
		die("a descriptor leaked");
	return 0;
}
