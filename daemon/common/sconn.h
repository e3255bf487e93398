/*
 * sconn - a blocking control connection, for tools (cksmctl, test peers)
 * that ask one question and wait for the answer. It speaks the same
 * frames and handshake as conn.h, with a deadline on every wait.
 */
#ifndef CKSM_SCONN_H
#define CKSM_SCONN_H

#include <stddef.h>
#include <stdint.h>

#include "auth.h"
#include "cksm.pb-c.h"
#include "frame.h"

struct sconn {
	int fd;
	int timeout_ms; /* per wait */
	struct frame_dec dec;
	Cksm__Msg *queue[32]; /* decoded messages not yet returned */
	unsigned head, count;
	int error; /* a decode error ended the stream */
	char peer_name[AUTH_NAME_MAX + 1];
};

/*
 * Connect to addr (host:port) and authenticate as role/name with key.
 * Returns 0, or a negative errno with a message in err: -ECONNREFUSED and
 * friends for the network, -EACCES when the key is refused or the server
 * does not prove it, -ETIMEDOUT, -EPROTO.
 */
int sconn_open(struct sconn *s, const char *addr, const struct auth_key *key, Cksm__Role role,
	       const char *name, int timeout_ms, char *err, size_t errlen);

/* The same, to a server of role `server` (an agent's data port). */
int sconn_open_to(struct sconn *s, const char *addr, const struct auth_key *key, Cksm__Role role,
		  const char *name, Cksm__Role server, int timeout_ms, char *err, size_t errlen);

/* Plain TCP connect without the handshake (test peers). */
int sconn_connect(struct sconn *s, const char *addr, int timeout_ms, char *err, size_t errlen);

int sconn_send(struct sconn *s, const Cksm__Msg *m);

/* Write raw bytes (test peers). */
int sconn_write(struct sconn *s, const void *buf, size_t len);

/*
 * Wait for the next message; NULL with *rc = -ETIMEDOUT, -ECONNRESET (the
 * peer closed), -EBADMSG or -EMSGSIZE. Free with cksm__msg__free_unpacked.
 */
Cksm__Msg *sconn_recv(struct sconn *s, int *rc);

/* Wait until the peer closes; 0 if it did, -ETIMEDOUT if not. */
int sconn_wait_closed(struct sconn *s);

void sconn_close(struct sconn *s);

#endif
