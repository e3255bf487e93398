/*
 * libFuzzer target: a payload straight into the Msg decoder, and the
 * authentication check for any ClientHello it yields (the first thing an
 * unauthenticated peer can reach).
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "auth.h"
#include "wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const uint8_t nonce[AUTH_NONCE_BYTES];
	struct auth_key key;
	Cksm__Msg *m;
	const char *why;

	m = wire_unpack(data, size);
	if (!m)
		return 0;
	memset(key.k, 7, sizeof(key.k));
	if (m->body_case == CKSM__MSG__BODY_CLIENT_HELLO)
		auth_check_client_hello(&key, nonce, m->client_hello, &why);
	(void)wire_body_name(m);
	cksm__msg__free_unpacked(m, NULL);
	return 0;
}
