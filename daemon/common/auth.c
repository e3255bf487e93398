/*
 * auth - see auth.h.
 *
 * The key file holds any secret of at least 32 bytes (cksmd --gen-key
 * writes 64 hex digits); it is hashed with BLAKE2b into the HMAC key, so
 * its exact encoding does not matter as long as every node has the same
 * bytes.
 */
#include "auth.h"
#include "util.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#define KEYFILE_MAX 4096

static const char label_client[] = "cksm-v1 client";
static const char label_server[] = "cksm-v1 server";

int auth_init(void)
{
	return sodium_init() < 0 ? -EIO : 0;
}

static int check_key_file(int fd, const char *path, char *err, size_t errlen)
{
	struct stat st;

	if (fstat(fd, &st) < 0) {
		snprintf(err, errlen, "cannot stat key file %s: %s", path, strerror(errno));
		return -errno;
	}
	if (!S_ISREG(st.st_mode)) {
		snprintf(err, errlen, "key file %s is not a regular file", path);
		return -EINVAL;
	}
	if (st.st_mode & (S_IRWXG | S_IRWXO)) {
		snprintf(
			err, errlen,
			"key file %s is accessible by group or others (mode %04o); run: chmod 600 %s",
			path, (unsigned)(st.st_mode & 07777), path);
		return -EPERM;
	}
	if (st.st_uid != geteuid()) {
		snprintf(err, errlen,
			 "key file %s is owned by uid %u, not by the running user (uid %u)", path,
			 (unsigned)st.st_uid, (unsigned)geteuid());
		return -EPERM;
	}
	return 0;
}

int auth_key_load(struct auth_key *key, const char *path, char *err, size_t errlen)
{
	uint8_t buf[KEYFILE_MAX + 1];
	size_t len = 0, start = 0;
	ssize_t n;
	int fd, rc;

	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0) {
		rc = -errno;
		snprintf(err, errlen, "cannot open key file %s: %s", path, strerror(errno));
		return rc;
	}
	rc = check_key_file(fd, path, err, errlen);
	if (rc)
		goto out_close;
	while (len < sizeof(buf) && (n = read(fd, buf + len, sizeof(buf) - len)) > 0)
		len += (size_t)n;
	if (len > KEYFILE_MAX) {
		snprintf(err, errlen, "key file %s is larger than %d bytes", path, KEYFILE_MAX);
		rc = -EFBIG;
		goto out_wipe;
	}
	while (start < len && (buf[start] == ' ' || buf[start] == '\n' || buf[start] == '\t' ||
			       buf[start] == '\r'))
		start++;
	while (len > start && (buf[len - 1] == ' ' || buf[len - 1] == '\n' ||
			       buf[len - 1] == '\t' || buf[len - 1] == '\r'))
		len--;
	if (len - start < AUTH_KEYFILE_MIN) {
		snprintf(
			err, errlen,
			"key file %s holds %zu bytes of key; at least %d are needed (cksmd --gen-key makes one)",
			path, len - start, AUTH_KEYFILE_MIN);
		rc = -EINVAL;
		goto out_wipe;
	}
	crypto_generichash(key->k, sizeof(key->k), buf + start, len - start,
			   (const uint8_t *)"cksm cluster key", 16);
	rc = 0;
out_wipe:
	sodium_memzero(buf, sizeof(buf));
out_close:
	close(fd);
	return rc;
}

/* Create the key's directory (one level, as /etc/cksm) if it is missing. */
static void make_parent(const char *path)
{
	char dir[4096];
	char *slash;

	if (strlen(path) >= sizeof(dir))
		return;
	strcpy(dir, path);
	slash = strrchr(dir, '/');
	if (!slash || slash == dir)
		return;
	*slash = '\0';
	mkdir(dir, 0755);
}

int auth_key_generate(const char *path, char *err, size_t errlen)
{
	uint8_t raw[32];
	char hex[sizeof(raw) * 2 + 2];
	int fd, rc = 0;
	size_t len;

	make_parent(path);
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0) {
		rc = -errno;
		snprintf(err, errlen, "cannot create key file %s: %s", path, strerror(errno));
		return rc;
	}
	randombytes_buf(raw, sizeof(raw));
	sodium_bin2hex(hex, sizeof(hex), raw, sizeof(raw));
	len = strlen(hex);
	hex[len++] = '\n';
	if (write(fd, hex, len) != (ssize_t)len) {
		rc = errno ? -errno : -EIO;
		snprintf(err, errlen, "cannot write key file %s: %s", path, strerror(-rc));
	}
	sodium_memzero(raw, sizeof(raw));
	sodium_memzero(hex, sizeof(hex));
	if (close(fd) < 0 && !rc)
		rc = -errno;
	return rc;
}

void auth_nonce(uint8_t nonce[AUTH_NONCE_BYTES])
{
	randombytes_buf(nonce, AUTH_NONCE_BYTES);
}

/* A role as 4 big-endian bytes, as the MACs cover it. */
static void role_bytes(Cksm__Role role, uint8_t r[4])
{
	r[0] = (uint8_t)((uint32_t)role >> 24);
	r[1] = (uint8_t)((uint32_t)role >> 16);
	r[2] = (uint8_t)((uint32_t)role >> 8);
	r[3] = (uint8_t)role;
}

/*
 * HMAC-SHA256 over label, the nonce the sender received, its own nonce,
 * the role and the name. The labels keep a client's MAC from ever passing
 * as a server's; the nonce order follows from who sends.
 */
static void hello_mac(const struct auth_key *key, const char *label,
		      const uint8_t their_nonce[AUTH_NONCE_BYTES],
		      const uint8_t own_nonce[AUTH_NONCE_BYTES], Cksm__Role role, const char *name,
		      uint8_t mac[AUTH_MAC_BYTES])
{
	crypto_auth_hmacsha256_state st;
	uint8_t r[4];

	role_bytes(role, r);
	crypto_auth_hmacsha256_init(&st, key->k, sizeof(key->k));
	crypto_auth_hmacsha256_update(&st, (const uint8_t *)label, strlen(label));
	crypto_auth_hmacsha256_update(&st, their_nonce, AUTH_NONCE_BYTES);
	crypto_auth_hmacsha256_update(&st, own_nonce, AUTH_NONCE_BYTES);
	crypto_auth_hmacsha256_update(&st, r, sizeof(r));
	crypto_auth_hmacsha256_update(&st, (const uint8_t *)name, strlen(name));
	crypto_auth_hmacsha256_final(&st, mac);
}

void auth_client_mac(const struct auth_key *key, const uint8_t server_nonce[AUTH_NONCE_BYTES],
		     const uint8_t client_nonce[AUTH_NONCE_BYTES], Cksm__Role role,
		     const char *name, uint8_t mac[AUTH_MAC_BYTES])
{
	hello_mac(key, label_client, server_nonce, client_nonce, role, name, mac);
}

void auth_hello_make(struct auth_hello *h, const struct auth_key *key,
		     const uint8_t server_nonce[AUTH_NONCE_BYTES], Cksm__Role role,
		     const char *name)
{
	cksm__client_hello__init(&h->msg);
	auth_nonce(h->nonce);
	auth_client_mac(key, server_nonce, h->nonce, role, name, h->mac);
	h->msg.proto_version = CKSM__PROTO_VERSION__PROTO_VERSION_CURRENT;
	h->msg.role = role;
	h->msg.name = (char *)name;
	h->msg.nonce.data = h->nonce;
	h->msg.nonce.len = sizeof(h->nonce);
	h->msg.mac.data = h->mac;
	h->msg.mac.len = sizeof(h->mac);
}

void auth_server_mac(const struct auth_key *key, const uint8_t client_nonce[AUTH_NONCE_BYTES],
		     const uint8_t server_nonce[AUTH_NONCE_BYTES], Cksm__Role role,
		     const char *name, uint8_t mac[AUTH_MAC_BYTES])
{
	hello_mac(key, label_server, client_nonce, server_nonce, role, name, mac);
}

int auth_mac_check(const uint8_t expected[AUTH_MAC_BYTES], const ProtobufCBinaryData *got)
{
	if (got->len != AUTH_MAC_BYTES)
		return -EACCES;
	return crypto_verify_32(expected, got->data) == 0 ? 0 : -EACCES;
}

int auth_check_server_hello(const Cksm__ServerHello *sh, Cksm__Role expect, const char **why)
{
	if (sh->proto_version != CKSM__PROTO_VERSION__PROTO_VERSION_CURRENT) {
		*why = "server speaks another protocol version";
		return -EPROTO;
	}
	if (sh->nonce.len != AUTH_NONCE_BYTES) {
		*why = "server nonce is not 32 bytes";
		return -EPROTO;
	}
	if (sh->role != expect) {
		*why = expect == CKSM__ROLE__ROLE_COORD ? "server is not a coordinator"
							: "server is not an agent";
		return -EPROTO;
	}
	if (!name_valid(sh->name)) {
		*why = "server name is not 1 to 64 letters, digits, '.', '_' or '-'";
		return -EPROTO;
	}
	return 0;
}

int auth_check_client_hello(const struct auth_key *key,
			    const uint8_t server_nonce[AUTH_NONCE_BYTES],
			    const Cksm__ClientHello *ch, const char **why)
{
	uint8_t mac[AUTH_MAC_BYTES];

	if (ch->proto_version != CKSM__PROTO_VERSION__PROTO_VERSION_CURRENT) {
		*why = "unsupported protocol version";
		return -EPROTO;
	}
	if (ch->nonce.len != AUTH_NONCE_BYTES) {
		*why = "client nonce is not 32 bytes";
		return -EPROTO;
	}
	if (!name_valid(ch->name)) {
		*why = "peer name is not 1 to 64 letters, digits, '.', '_' or '-'";
		return -EPROTO;
	}
	if (ch->role != CKSM__ROLE__ROLE_AGENT && ch->role != CKSM__ROLE__ROLE_ADMIN) {
		*why = "role is neither agent nor admin";
		return -EPROTO;
	}
	auth_client_mac(key, server_nonce, ch->nonce.data, ch->role, ch->name, mac);
	if (auth_mac_check(mac, &ch->mac)) {
		*why = "bad MAC (wrong cluster key or replayed hello)";
		return -EACCES;
	}
	return 0;
}
