/*
 * auth - the cluster key and the challenge-response that proves it.
 *
 * Every connection is authenticated both ways with HMAC-SHA256 under a
 * 32-byte key derived from the cluster key file. Each side contributes a
 * fresh 32-byte nonce, and each MAC covers both nonces, so a recorded
 * exchange is worthless on a new connection (the other side's nonce will
 * differ). MACs are compared in constant time.
 */
#ifndef CKSM_AUTH_H
#define CKSM_AUTH_H

#include <stddef.h>
#include <stdint.h>

#include "cksm.pb-c.h"

#define AUTH_KEY_BYTES	 32
#define AUTH_NONCE_BYTES 32
#define AUTH_MAC_BYTES	 32
#define AUTH_KEYFILE_MIN 32 /* bytes of key material a key file must hold */
#define AUTH_NAME_MAX	 64 /* longest peer name accepted */

struct auth_key {
	uint8_t k[AUTH_KEY_BYTES];
};

/* Initialise libsodium; returns 0 or -EIO. Call once before anything else. */
int auth_init(void);

/*
 * Load the key from path. Refuses (with a message in err) a file that is
 * not a regular file, is readable or writable by group or others, or holds
 * fewer than AUTH_KEYFILE_MIN bytes after trimming whitespace. Returns 0 or
 * a negative errno.
 */
int auth_key_load(struct auth_key *key, const char *path, char *err, size_t errlen);

/* Write a new random key (64 hex digits) to path, created with mode 0600. */
int auth_key_generate(const char *path, char *err, size_t errlen);

void auth_nonce(uint8_t nonce[AUTH_NONCE_BYTES]);

/* MAC the client sends in ClientHello. */
void auth_client_mac(const struct auth_key *key, const uint8_t server_nonce[AUTH_NONCE_BYTES],
		     const uint8_t client_nonce[AUTH_NONCE_BYTES], Cksm__Role role,
		     const char *name, uint8_t mac[AUTH_MAC_BYTES]);

/* A ClientHello ready to pack; its byte fields point into this struct. */
struct auth_hello {
	Cksm__ClientHello msg;
	uint8_t nonce[AUTH_NONCE_BYTES];
	uint8_t mac[AUTH_MAC_BYTES];
};

/* Build the hello answering server_nonce, with a fresh client nonce. */
void auth_hello_make(struct auth_hello *h, const struct auth_key *key,
		     const uint8_t server_nonce[AUTH_NONCE_BYTES], Cksm__Role role,
		     const char *name);

/*
 * MAC the server sends in AuthResult; it also covers the role and name
 * the server announced in ServerHello, so neither can be altered.
 */
void auth_server_mac(const struct auth_key *key, const uint8_t client_nonce[AUTH_NONCE_BYTES],
		     const uint8_t server_nonce[AUTH_NONCE_BYTES], Cksm__Role role,
		     const char *name, uint8_t mac[AUTH_MAC_BYTES]);

/* Constant-time compare of a received MAC; 0 when equal, -EACCES if not. */
int auth_mac_check(const uint8_t expected[AUTH_MAC_BYTES], const ProtobufCBinaryData *got);

/*
 * Client side: check a ServerHello before answering it: our protocol
 * version, a 32-byte nonce, the role we dialled (a coordinator, or an
 * agent's data port) and a valid name. Returns 0 or -EPROTO with why.
 */
int auth_check_server_hello(const Cksm__ServerHello *sh, Cksm__Role expect, const char **why);

/*
 * Server side: check a ClientHello against the nonce sent in ServerHello.
 * Returns 0, or a negative errno with the reason in why (a static string):
 * -EPROTO for a version or shape error, -EACCES for a bad MAC.
 */
int auth_check_client_hello(const struct auth_key *key,
			    const uint8_t server_nonce[AUTH_NONCE_BYTES],
			    const Cksm__ClientHello *ch, const char **why);

#endif
