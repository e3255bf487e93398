/* host:port parsing. */
#include <errno.h>
#include <netinet/in.h>

#include "netaddr.h"
#include "unit.h"

static void parses(void **state)
{
	struct sockaddr_storage ss;
	char buf[64];

	(void)state;
	assert_int_equal(netaddr_parse("127.0.0.1:7470", &ss), 0);
	netaddr_format((struct sockaddr *)&ss, buf, sizeof(buf));
	assert_string_equal(buf, "127.0.0.1:7470");
	assert_int_equal(netaddr_parse("[::1]:80", &ss), 0);
	netaddr_format((struct sockaddr *)&ss, buf, sizeof(buf));
	assert_string_equal(buf, "[::1]:80");
	assert_int_equal(netaddr_parse("0.0.0.0:0", &ss), 0);
}

static void refuses(void **state)
{
	struct sockaddr_storage ss;

	(void)state;
	assert_int_equal(netaddr_parse("127.0.0.1", &ss), -EINVAL);
	assert_int_equal(netaddr_parse("127.0.0.1:", &ss), -EINVAL);
	assert_int_equal(netaddr_parse(":80", &ss), -EINVAL);
	assert_int_equal(netaddr_parse("127.0.0.1:65536", &ss), -ERANGE);
	assert_int_equal(netaddr_parse("127.0.0.1:-1", &ss), -EINVAL);
	assert_int_equal(netaddr_parse("127.0.0.1:80x", &ss), -EINVAL);
	assert_int_equal(netaddr_parse("::1:80", &ss), -EINVAL);
	assert_int_equal(netaddr_parse("[::1:80", &ss), -EINVAL);
	assert_int_equal(netaddr_parse("localhost:80", &ss), -EINVAL);
	assert_int_equal(netaddr_parse("300.1.1.1:80", &ss), -EINVAL);
}

static const struct CMUnitTest tests[] = {
	cmocka_unit_test(parses),
	cmocka_unit_test(refuses),
};

UNIT_MAIN(tests)
