/* Cluster key files and the challenge-response MACs. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth.h"
#include "unit.h"

static char dir[64];

static int setup(void **state)
{
	(void)state;
	strcpy(dir, "/tmp/cksm-auth-XXXXXX");
	assert_non_null(mkdtemp(dir));
	return auth_init();
}

static void path_of(char *buf, size_t n, const char *name)
{
	snprintf(buf, n, "%s/%s", dir, name);
}

static void write_file(const char *path, const char *content, mode_t mode)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, content, strlen(content)), (ssize_t)strlen(content));
	close(fd);
	assert_int_equal(chmod(path, mode), 0);
}

static void generated_key_loads(void **state)
{
	struct auth_key k;
	struct stat st;
	char p[128], err[256];

	(void)state;
	setup(NULL);
	path_of(p, sizeof(p), "gen.key");
	assert_int_equal(auth_key_generate(p, err, sizeof(err)), 0);
	assert_int_equal(stat(p, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	assert_int_equal(auth_key_load(&k, p, err, sizeof(err)), 0);
	/* Never overwrites an existing key. */
	assert_int_equal(auth_key_generate(p, err, sizeof(err)), -EEXIST);
}

static void readable_by_others_refused(void **state)
{
	struct auth_key k;
	char p[128], err[256];

	(void)state;
	setup(NULL);
	path_of(p, sizeof(p), "open.key");
	write_file(p, "0123456789abcdef0123456789abcdef0123", 0644);
	assert_int_equal(auth_key_load(&k, p, err, sizeof(err)), -EPERM);
	assert_non_null(strstr(err, "chmod 600"));
	write_file(p, "0123456789abcdef0123456789abcdef0123", 0640);
	assert_int_equal(auth_key_load(&k, p, err, sizeof(err)), -EPERM);
	write_file(p, "0123456789abcdef0123456789abcdef0123", 0600);
	assert_int_equal(auth_key_load(&k, p, err, sizeof(err)), 0);
}

static void short_or_missing_refused(void **state)
{
	struct auth_key k;
	char p[128], err[256];

	(void)state;
	setup(NULL);
	path_of(p, sizeof(p), "short.key");
	write_file(p, "  too short  \n", 0600);
	assert_int_equal(auth_key_load(&k, p, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "at least 32"));
	path_of(p, sizeof(p), "absent.key");
	assert_int_equal(auth_key_load(&k, p, err, sizeof(err)), -ENOENT);
	assert_non_null(strstr(err, "absent.key"));
	assert_int_equal(auth_key_load(&k, dir, err, sizeof(err)), -EINVAL);
}

static void same_bytes_same_key(void **state)
{
	struct auth_key a, b;
	char p1[128], p2[128], err[256];

	(void)state;
	setup(NULL);
	path_of(p1, sizeof(p1), "a.key");
	path_of(p2, sizeof(p2), "b.key");
	/* Surrounding whitespace does not matter; the bytes do. */
	write_file(p1, "0123456789abcdef0123456789abcdef\n", 0600);
	write_file(p2, "  0123456789abcdef0123456789abcdef", 0600);
	assert_int_equal(auth_key_load(&a, p1, err, sizeof(err)), 0);
	assert_int_equal(auth_key_load(&b, p2, err, sizeof(err)), 0);
	assert_memory_equal(a.k, b.k, sizeof(a.k));
	write_file(p2, "0123456789abcdef0123456789abcdeF", 0600);
	assert_int_equal(auth_key_load(&b, p2, err, sizeof(err)), 0);
	assert_memory_not_equal(a.k, b.k, sizeof(a.k));
}

static void handshake_checks(void **state)
{
	struct auth_key k, wrong;
	uint8_t sn[AUTH_NONCE_BYTES], sn2[AUTH_NONCE_BYTES];
	struct auth_hello h;
	const char *why;

	(void)state;
	setup(NULL);
	memset(k.k, 1, sizeof(k.k));
	memset(wrong.k, 2, sizeof(wrong.k));
	auth_nonce(sn);
	auth_nonce(sn2);

	auth_hello_make(&h, &k, sn, CKSM__ROLE__ROLE_AGENT, "n1");
	assert_int_equal(auth_check_client_hello(&k, sn, &h.msg, &why), 0);
	/* The same hello on a connection with another server nonce. */
	assert_int_equal(auth_check_client_hello(&k, sn2, &h.msg, &why), -EACCES);
	/* A name changed after the MAC was made. */
	h.msg.name = (char *)"n2";
	assert_int_equal(auth_check_client_hello(&k, sn, &h.msg, &why), -EACCES);
	/* Wrong key. */
	auth_hello_make(&h, &wrong, sn, CKSM__ROLE__ROLE_AGENT, "n1");
	assert_int_equal(auth_check_client_hello(&k, sn, &h.msg, &why), -EACCES);
	/* Shape errors. */
	auth_hello_make(&h, &k, sn, CKSM__ROLE__ROLE_AGENT, "n1");
	h.msg.proto_version = 99;
	assert_int_equal(auth_check_client_hello(&k, sn, &h.msg, &why), -EPROTO);
	auth_hello_make(&h, &k, sn, CKSM__ROLE__ROLE_AGENT, "n1");
	h.msg.nonce.len = 8;
	assert_int_equal(auth_check_client_hello(&k, sn, &h.msg, &why), -EPROTO);
	auth_hello_make(&h, &k, sn, CKSM__ROLE__ROLE_AGENT, "n1");
	h.msg.mac.len = 31;
	assert_int_equal(auth_check_client_hello(&k, sn, &h.msg, &why), -EACCES);
	auth_hello_make(&h, &k, sn, CKSM__ROLE__ROLE_AGENT, "n1");
	h.msg.role = CKSM__ROLE__ROLE_COORD;
	assert_int_equal(auth_check_client_hello(&k, sn, &h.msg, &why), -EPROTO);
	auth_hello_make(&h, &k, sn, CKSM__ROLE__ROLE_AGENT, "bad name with spaces");
	assert_int_equal(auth_check_client_hello(&k, sn, &h.msg, &why), -EPROTO);
}

static void server_proof(void **state)
{
	struct auth_key k, wrong;
	uint8_t cn[AUTH_NONCE_BYTES], sn[AUTH_NONCE_BYTES];
	uint8_t mac[AUTH_MAC_BYTES], expect[AUTH_MAC_BYTES];
	ProtobufCBinaryData got = { sizeof(mac), mac };

	(void)state;
	setup(NULL);
	memset(k.k, 1, sizeof(k.k));
	memset(wrong.k, 2, sizeof(wrong.k));
	auth_nonce(cn);
	auth_nonce(sn);
	auth_server_mac(&k, cn, sn, CKSM__ROLE__ROLE_COORD, "shard-0", expect);
	auth_server_mac(&k, cn, sn, CKSM__ROLE__ROLE_COORD, "shard-0", mac);
	assert_int_equal(auth_mac_check(expect, &got), 0);
	auth_server_mac(&wrong, cn, sn, CKSM__ROLE__ROLE_COORD, "shard-0", mac);
	assert_int_equal(auth_mac_check(expect, &got), -EACCES);
	/* An altered name or role in ServerHello breaks the proof. */
	auth_server_mac(&k, cn, sn, CKSM__ROLE__ROLE_COORD, "shard-1", mac);
	assert_int_equal(auth_mac_check(expect, &got), -EACCES);
	auth_server_mac(&k, cn, sn, CKSM__ROLE__ROLE_AGENT, "shard-0", mac);
	assert_int_equal(auth_mac_check(expect, &got), -EACCES);
	/* The client's MAC is not a valid server proof (labels differ). */
	auth_client_mac(&k, sn, cn, CKSM__ROLE__ROLE_AGENT, "", mac);
	assert_int_equal(auth_mac_check(expect, &got), -EACCES);
}

static void server_hello_checks(void **state)
{
	Cksm__ServerHello sh = CKSM__SERVER_HELLO__INIT;
	uint8_t n[AUTH_NONCE_BYTES] = { 0 };
	const char *why;

	(void)state;
	sh.proto_version = CKSM__PROTO_VERSION__PROTO_VERSION_CURRENT;
	sh.nonce.data = n;
	sh.nonce.len = sizeof(n);
	sh.role = CKSM__ROLE__ROLE_COORD;
	sh.name = (char *)"shard-0";
	assert_int_equal(auth_check_server_hello(&sh, CKSM__ROLE__ROLE_COORD, &why), 0);
	sh.role = CKSM__ROLE__ROLE_AGENT;
	assert_int_equal(auth_check_server_hello(&sh, CKSM__ROLE__ROLE_COORD, &why), -EPROTO);
	/* an agent's data port, when that is what was dialled */
	assert_int_equal(auth_check_server_hello(&sh, CKSM__ROLE__ROLE_AGENT, &why), 0);
	sh.role = CKSM__ROLE__ROLE_COORD;
	assert_int_equal(auth_check_server_hello(&sh, CKSM__ROLE__ROLE_AGENT, &why), -EPROTO);
	sh.name = (char *)"a\nb";
	assert_int_equal(auth_check_server_hello(&sh, CKSM__ROLE__ROLE_COORD, &why), -EPROTO);
	sh.name = (char *)"shard-0";
	sh.proto_version = 2;
	assert_int_equal(auth_check_server_hello(&sh, CKSM__ROLE__ROLE_COORD, &why), -EPROTO);
	sh.proto_version = CKSM__PROTO_VERSION__PROTO_VERSION_CURRENT;
	sh.nonce.len = 31;
	assert_int_equal(auth_check_server_hello(&sh, CKSM__ROLE__ROLE_COORD, &why), -EPROTO);
}

static const struct CMUnitTest tests[] = {
	cmocka_unit_test(server_hello_checks),
	cmocka_unit_test(generated_key_loads),
	cmocka_unit_test(readable_by_others_refused),
	cmocka_unit_test(short_or_missing_refused),
	cmocka_unit_test(same_bytes_same_key),
	cmocka_unit_test(handshake_checks),
	cmocka_unit_test(server_proof),
};

UNIT_MAIN(tests)
