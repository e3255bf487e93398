/*
 * sconn - see sconn.h.
 */
#include "sconn.h"

#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "netaddr.h"
#include "util.h"
#include "wire.h"

int sconn_connect(struct sconn *s, const char *addr, int timeout_ms, char *err, size_t errlen)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res;
	char host[256], port[8];
	struct pollfd pfd;
	int rc, soerr = 0;
	socklen_t sl = sizeof(soerr);

	memset(s, 0, sizeof(*s));
	s->fd = -1;
	s->timeout_ms = timeout_ms;
	frame_dec_init(&s->dec, FRAME_MAX_HARD);
	if (netaddr_split(addr, host, sizeof(host), port, sizeof(port))) {
		snprintf(err, errlen, "%s: expected host:port", addr);
		return -EINVAL;
	}
	rc = getaddrinfo(host, port, &hints, &res);
	if (rc) {
		snprintf(err, errlen, "%s: %s", addr, gai_strerror(rc));
		return -EHOSTUNREACH;
	}
	s->fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (s->fd < 0) {
		rc = -errno;
		freeaddrinfo(res);
		snprintf(err, errlen, "socket: %s", strerror(-rc));
		return rc;
	}
	rc = connect(s->fd, res->ai_addr, res->ai_addrlen);
	freeaddrinfo(res);
	if (rc < 0 && errno != EINPROGRESS) {
		rc = -errno;
		goto fail;
	}
	pfd.fd = s->fd;
	pfd.events = POLLOUT;
	rc = poll(&pfd, 1, timeout_ms);
	if (rc == 0) {
		rc = -ETIMEDOUT;
		goto fail;
	}
	getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
	if (soerr) {
		rc = -soerr;
		goto fail;
	}
	return 0;
fail:
	snprintf(err, errlen, "cannot connect to %s: %s", addr, strerror(-rc));
	close(s->fd);
	s->fd = -1;
	return rc;
}

int sconn_write(struct sconn *s, const void *buf, size_t len)
{
	const char *p = buf;
	struct pollfd pfd = { .fd = s->fd, .events = POLLOUT };

	while (len) {
		ssize_t n = send(s->fd, p, len, MSG_NOSIGNAL);

		if (n < 0 && errno == EAGAIN) {
			if (poll(&pfd, 1, s->timeout_ms) <= 0)
				return -ETIMEDOUT;
			continue;
		}
		if (n < 0)
			return -errno;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

int sconn_send(struct sconn *s, const Cksm__Msg *m)
{
	size_t len;
	uint8_t *buf = wire_pack(m, &len);
	int rc;

	if (!buf)
		return -ENOMEM;
	rc = sconn_write(s, buf, len);
	free(buf);
	return rc;
}

static int take_frame(void *arg, const uint8_t *p, uint32_t len)
{
	struct sconn *s = arg;
	Cksm__Msg *m;

	if (s->count == ARRAY_SIZE(s->queue))
		return -ENOBUFS;
	m = wire_unpack(p, len);
	if (!m)
		return -EBADMSG;
	s->queue[(s->head + s->count++) % ARRAY_SIZE(s->queue)] = m;
	return 0;
}

Cksm__Msg *sconn_recv(struct sconn *s, int *rc)
{
	struct pollfd pfd = { .fd = s->fd, .events = POLLIN };
	uint8_t buf[16384]; /* a page and its frame in one read */

	for (;;) {
		ssize_t n;

		if (s->count) {
			Cksm__Msg *m = s->queue[s->head];

			s->head = (s->head + 1) % ARRAY_SIZE(s->queue);
			s->count--;
			*rc = 0;
			return m;
		}
		if (s->error) {
			*rc = s->error;
			return NULL;
		}
		/* Read first: poll only when nothing is there yet. */
		n = recv(s->fd, buf, sizeof(buf), MSG_DONTWAIT);
		if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
			if (poll(&pfd, 1, s->timeout_ms) <= 0) {
				*rc = -ETIMEDOUT;
				return NULL;
			}
			continue;
		}
		if (n <= 0) {
			*rc = -ECONNRESET;
			return NULL;
		}
		*rc = frame_dec_feed(&s->dec, buf, (size_t)n, take_frame, s);
		if (*rc < 0) {
			/* The stream is unusable after a bad frame: read no more. */
			s->error = *rc;
			if (!s->count)
				return NULL;
		}
	}
}

int sconn_wait_closed(struct sconn *s)
{
	struct pollfd pfd = { .fd = s->fd, .events = POLLIN };
	uint8_t buf[16384]; /* a page and its frame in one read */

	for (;;) {
		ssize_t n;

		if (poll(&pfd, 1, s->timeout_ms) <= 0)
			return -ETIMEDOUT;
		n = recv(s->fd, buf, sizeof(buf), 0);
		if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
			return 0;
	}
}

int sconn_open(struct sconn *s, const char *addr, const struct auth_key *key, Cksm__Role role,
	       const char *name, int timeout_ms, char *err, size_t errlen)
{
	return sconn_open_to(s, addr, key, role, name, CKSM__ROLE__ROLE_COORD, timeout_ms, err,
			     errlen);
}

int sconn_open_to(struct sconn *s, const char *addr, const struct auth_key *key, Cksm__Role role,
		  const char *name, Cksm__Role server, int timeout_ms, char *err, size_t errlen)
{
	Cksm__Msg out = CKSM__MSG__INIT, *m;
	uint8_t server_nonce[AUTH_NONCE_BYTES], mac[AUTH_MAC_BYTES];
	Cksm__Role server_role;
	struct auth_hello h;
	const char *why = "unexpected message";
	int rc;

	rc = sconn_connect(s, addr, timeout_ms, err, errlen);
	if (rc)
		return rc;
	frame_dec_set_limit(&s->dec, FRAME_MAX_PREAUTH);
	m = sconn_recv(s, &rc);
	if (!m || m->body_case != CKSM__MSG__BODY_SERVER_HELLO ||
	    auth_check_server_hello(m->server_hello, server, &why)) {
		snprintf(err, errlen, "%s: no valid server hello (%s)", addr,
			 rc ? strerror(-rc) : why);
		if (m)
			cksm__msg__free_unpacked(m, NULL);
		rc = rc ? rc : -EPROTO;
		goto fail;
	}
	memcpy(server_nonce, m->server_hello->nonce.data, AUTH_NONCE_BYTES);
	snprintf(s->peer_name, sizeof(s->peer_name), "%s", m->server_hello->name);
	server_role = m->server_hello->role;
	cksm__msg__free_unpacked(m, NULL);

	auth_hello_make(&h, key, server_nonce, role, name);
	out.body_case = CKSM__MSG__BODY_CLIENT_HELLO;
	out.client_hello = &h.msg;
	rc = sconn_send(s, &out);
	if (rc) {
		snprintf(err, errlen, "%s: %s", addr, strerror(-rc));
		goto fail;
	}
	m = sconn_recv(s, &rc);
	if (!m || m->body_case != CKSM__MSG__BODY_AUTH_RESULT) {
		snprintf(err, errlen, "%s: no authentication result (%s)", addr,
			 rc ? strerror(-rc) : "unexpected message");
		rc = rc ? rc : -EPROTO;
		goto fail;
	}
	auth_server_mac(key, h.nonce, server_nonce, server_role, s->peer_name, mac);
	if (!m->auth_result->ok || auth_mac_check(mac, &m->auth_result->mac)) {
		snprintf(err, errlen, "%s: authentication failed: %s", addr,
			 m->auth_result->ok ? "the server did not prove the cluster key"
					    : "the server refused our cluster key");
		cksm__msg__free_unpacked(m, NULL);
		rc = -EACCES;
		goto fail;
	}
	cksm__msg__free_unpacked(m, NULL);
	frame_dec_set_limit(&s->dec, FRAME_MAX_HARD);
	return 0;
fail:
	sconn_close(s);
	return rc;
}

void sconn_close(struct sconn *s)
{
	if (s->fd >= 0)
		close(s->fd);
	s->fd = -1;
	while (s->count) {
		cksm__msg__free_unpacked(s->queue[s->head], NULL);
		s->head = (s->head + 1) % ARRAY_SIZE(s->queue);
		s->count--;
	}
	frame_dec_fini(&s->dec);
}
