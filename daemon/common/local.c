/*
 * local - see local.h: one message a packet, a descriptor with it.
 *
 * Built into libcksm as well as the agent: no dependency beyond libc.
 */
#include "local.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct cksm_local cksm_local_msg(uint16_t type)
{
	struct cksm_local m;

	memset(&m, 0, sizeof(m));
	m.magic = CKSM_LOCAL_MAGIC;
	m.version = CKSM_LOCAL_VERSION;
	m.type = type;
	return m;
}

int cksm_local_send(int fd, const struct cksm_local *m, int pass_fd, int flags)
{
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} u;
	struct iovec iov = { (void *)m, sizeof(*m) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	ssize_t n;

	if (pass_fd >= 0) {
		struct cmsghdr *c;

		memset(&u, 0, sizeof(u));
		mh.msg_control = u.buf;
		mh.msg_controllen = sizeof(u.buf);
		c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &pass_fd, sizeof(int));
	}
	do
		n = sendmsg(fd, &mh, MSG_NOSIGNAL | flags);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	return n == (ssize_t)sizeof(*m) ? 0 : -EMSGSIZE;
}

int cksm_local_recv(int fd, struct cksm_local *m, int *got_fd, int flags, const char **why)
{
	int sender;

	return cksm_local_recv_from(fd, m, got_fd, flags, why, &sender);
}

int cksm_local_recv_from(int fd, struct cksm_local *m, int *got_fd, int flags, const char **why,
			 int *sender)
{
	union {
		char buf[CMSG_SPACE(sizeof(int) * 4) + CMSG_SPACE(sizeof(struct ucred))];
		struct cmsghdr align;
	} u;
	struct iovec iov = { m, sizeof(*m) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	ssize_t n;

	memset(m, 0, sizeof(*m));
	*got_fd = -1;
	*why = NULL;
	*sender = 0;
	mh.msg_control = u.buf;
	mh.msg_controllen = sizeof(u.buf);
	do
		n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC | flags);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS &&
		    c->cmsg_len == CMSG_LEN(sizeof(struct ucred))) {
			struct ucred cr;

			memcpy(&cr, CMSG_DATA(c), sizeof(cr));
			*sender = cr.pid;
		}
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
			size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);

			for (size_t i = 0; i < k; i++) {
				int f;

				memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
				if (*got_fd < 0)
					*got_fd = f;
				else
					close(f); /* one descriptor per message at most */
			}
		}
	}
	if (n == 0) {
		/* An empty packet ends the connection; a descriptor it carried
		 * is nobody's to close but ours. */
		if (*got_fd >= 0)
			close(*got_fd);
		*got_fd = -1;
		return -ECONNRESET;
	}
	if (n != (ssize_t)sizeof(*m) || (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)))
		*why = "a message of the wrong size";
	else if (m->magic != CKSM_LOCAL_MAGIC || m->version != CKSM_LOCAL_VERSION)
		*why = "a bad magic or version";
	if (*why) {
		if (*got_fd >= 0)
			close(*got_fd);
		*got_fd = -1;
		return -EPROTO;
	}
	return 0;
}
