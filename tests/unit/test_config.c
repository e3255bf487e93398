/* Configuration: every bad value reported with file:line; the shard map. */
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#include "config.h"
#include "unit.h"

static char errbuf[8192];

/* Load text as a config file; returns config_load's result, errors in errbuf. */
static int load(struct config *c, const char *text, char *path)
{
	FILE *f, *err;
	int fd, rc;

	strcpy(path, "/tmp/cksm-conf-XXXXXX");
	fd = mkstemp(path);
	assert_true(fd >= 0);
	f = fdopen(fd, "w");
	fputs(text, f);
	fclose(f);
	err = fmemopen(errbuf, sizeof(errbuf), "w");
	config_defaults(c);
	rc = config_load(c, path, err);
	if (!rc)
		rc = config_finish(c, err);
	fclose(err);
	unlink(path);
	return rc;
}

static void defaults_are_valid(void **state)
{
	static struct config c;
	FILE *err = fmemopen(errbuf, sizeof(errbuf), "w");

	(void)state;
	config_defaults(&c);
	assert_int_equal(config_finish(&c, err), 0);
	fclose(err);
	assert_int_equal(c.nshards, 1);
	assert_int_equal(config_bucket_shard(&c, 0), 0);
	assert_int_equal(config_bucket_shard(&c, 4095), 0);
}

static void good_file(void **state)
{
	static struct config c;
	char path[64];

	(void)state;
	assert_int_equal(
		load(&c,
		     "; comment\n"
		     "[cluster]\nkey_file = /k\nbuckets = 1024\nheartbeat_ms = 200\n"
		     "[agent]\nnode_name = n-1.rack_a\nrack = r1\n"
		     "[shard.0]\naddress = 10.0.0.1:7470\nmetrics = 127.0.0.1:9471\nbuckets = 0-511\n"
		     "[shard.1]\naddress = [::1]:7471\nmetrics = 127.0.0.1:9472\nbuckets = 512-1023\n",
		     path),
		0);
	assert_string_equal(c.key_file, "/k");
	assert_int_equal(c.buckets, 1024);
	assert_int_equal(c.heartbeat_ms, 200);
	assert_string_equal(c.node_name, "n-1.rack_a");
	assert_int_equal(c.nshards, 2);
	assert_string_equal(c.shards[1].listen, "[::1]:7471");
	assert_int_equal(config_bucket_shard(&c, 511), 0);
	assert_int_equal(config_bucket_shard(&c, 512), 1);
}

static void every_bad_value_reported(void **state)
{
	static struct config c;
	char path[64], want[128];

	(void)state;
	assert_int_equal(load(&c,
			      "[cluster]\n"
			      "buckets = 1000\n"		 /* line 2: not a power of two */
			      "heartbeat_ms = fast\n"		 /* line 3 */
			      "colour = blue\n"			 /* line 4: unknown key */
			      "[log]\nlevel = loud\n"		 /* line 6 */
			      "[agent]\nnode_name = has space\n" /* line 8 */
			      "metrics = localhost\n"		 /* line 9 */
			      "[bogus]\nx = 1\n",		 /* line 11 */
			      path),
			 -EINVAL);
	snprintf(want, sizeof(want), "%s:2: [cluster] buckets: expected a power of two", path);
	assert_non_null(strstr(errbuf, want));
	snprintf(want, sizeof(want), "%s:3: [cluster] heartbeat_ms: expected milliseconds", path);
	assert_non_null(strstr(errbuf, want));
	assert_non_null(strstr(errbuf, "got 'fast'"));
	snprintf(want, sizeof(want), "%s:4: [cluster] colour: unknown key", path);
	assert_non_null(strstr(errbuf, want));
	snprintf(want, sizeof(want), "%s:6: [log] level:", path);
	assert_non_null(strstr(errbuf, want));
	snprintf(want, sizeof(want), "%s:8: [agent] node_name:", path);
	assert_non_null(strstr(errbuf, want));
	snprintf(want, sizeof(want), "%s:9: [agent] metrics:", path);
	assert_non_null(strstr(errbuf, want));
	snprintf(want, sizeof(want), "%s:11: unknown section [bogus]", path);
	assert_non_null(strstr(errbuf, want));
}

static void syntax_error_line(void **state)
{
	static struct config c;
	char path[64], want[96];

	(void)state;
	assert_int_equal(load(&c, "[cluster]\nbuckets = 64\n[unclosed\n", path), -EINVAL);
	snprintf(want, sizeof(want), "%s:3: syntax error", path);
	assert_non_null(strstr(errbuf, want));
	assert_int_equal(load(&c, "[cluster]\njust words\n", path), -EINVAL);
	snprintf(want, sizeof(want), "%s:2: syntax error", path);
	assert_non_null(strstr(errbuf, want));
}

static void shard_map_checked(void **state)
{
	static struct config c;
	char path[64];

	(void)state;
	/* Overlap. */
	assert_int_equal(
		load(&c,
		     "[cluster]\nbuckets = 16\n"
		     "[shard.0]\naddress = 127.0.0.1:1\nmetrics = 127.0.0.1:2\nbuckets = 0-9\n"
		     "[shard.1]\naddress = 127.0.0.1:3\nmetrics = 127.0.0.1:4\nbuckets = 8-15\n",
		     path),
		-EINVAL);
	assert_non_null(strstr(errbuf, "bucket 8 is given to both [shard.0] and [shard.1]"));
	/* Gap. */
	assert_int_equal(
		load(&c,
		     "[cluster]\nbuckets = 16\n"
		     "[shard.0]\naddress = 127.0.0.1:1\nmetrics = 127.0.0.1:2\nbuckets = 0-3,8-15\n",
		     path),
		-EINVAL);
	assert_non_null(strstr(errbuf, "buckets 4-7 are given to no shard"));
	/* Beyond the bucket count, and a missing shard number. */
	assert_int_equal(
		load(&c,
		     "[cluster]\nbuckets = 16\n"
		     "[shard.1]\naddress = 127.0.0.1:1\nmetrics = 127.0.0.1:2\nbuckets = 0-16\n",
		     path),
		-EINVAL);
	assert_non_null(strstr(errbuf, "[shard.0] is missing"));
	assert_non_null(strstr(errbuf, "bucket 16 is beyond"));
	/* Bad range syntax names the line. */
	assert_int_equal(load(&c, "[shard.0]\nbuckets = 9-3\n", path), -EINVAL);
	assert_non_null(strstr(errbuf, ":2: [shard.0] buckets: expected bucket ranges"));
	assert_int_equal(load(&c, "[shard.x]\naddress = 127.0.0.1:1\n", path), -EINVAL);
	assert_non_null(strstr(errbuf, "[shard.x]: expected a section [shard.N]"));
}

static void timeouts_fit(void **state)
{
	static struct config c;
	char path[64];

	(void)state;
	assert_int_equal(load(&c, "[cluster]\nheartbeat_ms = 1000\ndead_after_ms = 2000\n", path),
			 -EINVAL);
	assert_non_null(strstr(errbuf, "at least three heartbeats"));
}

static void overrides(void **state)
{
	static struct config c;
	FILE *err = fmemopen(errbuf, sizeof(errbuf), "w");

	(void)state;
	config_defaults(&c);
	assert_int_equal(config_set(&c, "agent.node_name=x1", err), 0);
	assert_int_equal(config_set(&c, "cluster.heartbeat_ms=250", err), 0);
	assert_int_equal(config_set(&c, "shard.0.metrics=127.0.0.1:1", err), 0);
	assert_int_equal(config_set(&c, "agent.node_name", err), -EINVAL);
	assert_int_equal(config_set(&c, "cluster.heartbeat_ms=-5", err), -EINVAL);
	assert_int_equal(config_set(&c, "agent.nope=1", err), -EINVAL);
	fclose(err);
	assert_string_equal(c.node_name, "x1");
	assert_int_equal(c.heartbeat_ms, 250);
	assert_string_equal(c.shards[0].metrics, "127.0.0.1:1");
	assert_non_null(strstr(errbuf, "--set agent.node_name: expected section.key=value"));
	assert_non_null(strstr(errbuf, "--set: [cluster] heartbeat_ms: expected milliseconds"));
	assert_non_null(strstr(errbuf, "--set: [agent] nope: unknown key"));
}

static void override_builtin_shard(void **state)
{
	static struct config c;
	FILE *err = fmemopen(errbuf, sizeof(errbuf), "w");

	(void)state;
	/* --set on the built-in shard changes one value, keeps the rest. */
	config_defaults(&c);
	assert_int_equal(config_set(&c, "shard.0.metrics=127.0.0.1:9999", err), 0);
	assert_int_equal(config_finish(&c, err), 0);
	fclose(err);
	assert_string_equal(c.shards[0].metrics, "127.0.0.1:9999");
	assert_string_equal(c.shards[0].address, "127.0.0.1:7470");
	assert_int_equal(config_bucket_shard(&c, 4095), 0);
}

static void missing_file(void **state)
{
	static struct config c;
	FILE *err = fmemopen(errbuf, sizeof(errbuf), "w");

	(void)state;
	config_defaults(&c);
	assert_int_equal(config_load(&c, "/nonexistent/cksm.conf", err), -ENOENT);
	fclose(err);
	assert_non_null(strstr(errbuf, "/nonexistent/cksm.conf: cannot open"));
}

/* [agent] transport takes only its words; data_timeout_ms its range. */
static void data_transport(void **state)
{
	static struct config c;
	char path[64], want[128];

	(void)state;
	config_defaults(&c);
	assert_string_equal(c.transport, "auto");
	assert_int_equal(c.data_timeout_ms, 2000);
	assert_int_equal(load(&c, "[agent]\ntransport = tcp\ndata_timeout_ms = 250\n", path), 0);
	assert_string_equal(c.transport, "tcp");
	assert_int_equal(c.data_timeout_ms, 250);
	assert_int_equal(load(&c, "[agent]\ntransport = rdma\n", path), 0);
	assert_string_equal(c.transport, "rdma");
	assert_int_equal(load(&c, "[agent]\ntransport = roce\n", path), -EINVAL);
	snprintf(want, sizeof(want),
		 "%s:2: [agent] transport: expected auto, rdma or tcp, got 'roce'", path);
	assert_non_null(strstr(errbuf, want));
	assert_int_equal(load(&c, "[agent]\ndata_timeout_ms = 9\ndata_timeout_ms = 60001\n", path),
			 -EINVAL);
	snprintf(want, sizeof(want), "%s:2: [agent] data_timeout_ms: expected milliseconds", path);
	assert_non_null(strstr(errbuf, want));
	snprintf(want, sizeof(want), "%s:3: [agent] data_timeout_ms: expected milliseconds", path);
	assert_non_null(strstr(errbuf, want));
	assert_non_null(strstr(errbuf, "between 10 and 60000, got '60001'"));
}

/* [domain.NAME] ksm: only the default domain hands hot pages to KSM unless told. */
static void domain_ksm(void **state)
{
	static struct config c;
	char path[64], want[160];
	FILE *err;

	(void)state;
	config_defaults(&c);
	assert_int_equal(c.domains[0].ksm, 1);
	assert_int_equal(load(&c,
			      "[domain.tenant]\nid = 7\n"
			      "[domain.shared]\nid = 8\nksm = 1\n"
			      "[domain.walled]\nid = 9\nksm = 0\n",
			      path),
			 0);
	assert_int_equal(c.ndomains, 4);
	assert_int_equal(c.domains[0].ksm, 1);
	assert_int_equal(c.domains[1].ksm, 0);
	assert_int_equal(c.domains[2].ksm, 1);
	assert_int_equal(c.domains[3].ksm, 0);
	assert_int_equal(load(&c, "[domain.tenant]\nid = 7\nksm = yes\n", path), -EINVAL);
	snprintf(want, sizeof(want), "%s:3: [domain.tenant] ksm: expected 0 or 1", path);
	assert_non_null(strstr(errbuf, want));
	assert_non_null(strstr(errbuf, "got 'yes'"));
	err = fmemopen(errbuf, sizeof(errbuf), "w");
	config_defaults(&c);
	assert_int_equal(config_set(&c, "domain.tenant.ksm=1", err), 0);
	assert_int_equal(config_set(&c, "domain.tenant.ksm=2", err), -EINVAL);
	fclose(err);
	assert_int_equal(c.domains[1].ksm, 1);
	assert_non_null(strstr(errbuf, "--set: [domain.tenant] ksm: expected 0 or 1"));
}

/* [domain.NAME] evict: 1 unless a domain says 0. */
static void domain_evict(void **state)
{
	static struct config c;
	char path[64], want[160];

	(void)state;
	config_defaults(&c);
	assert_int_equal(c.domains[0].evict, 1);
	assert_int_equal(
		load(&c, "[domain.tenant]\nid = 7\n[domain.walled]\nid = 9\nevict = 0\n", path), 0);
	assert_int_equal(c.domains[1].evict, 1);
	assert_int_equal(c.domains[2].evict, 0);
	assert_int_equal(load(&c, "[domain.tenant]\nid = 7\nevict = no\n", path), -EINVAL);
	snprintf(want, sizeof(want), "%s:3: [domain.tenant] evict: expected 0 or 1", path);
	assert_non_null(strstr(errbuf, want));
}

static const struct CMUnitTest tests[] = {
	cmocka_unit_test(defaults_are_valid),
	cmocka_unit_test(good_file),
	cmocka_unit_test(every_bad_value_reported),
	cmocka_unit_test(syntax_error_line),
	cmocka_unit_test(shard_map_checked),
	cmocka_unit_test(timeouts_fit),
	cmocka_unit_test(overrides),
	cmocka_unit_test(override_builtin_shard),
	cmocka_unit_test(missing_file),
	cmocka_unit_test(data_transport),
	cmocka_unit_test(domain_ksm),
	cmocka_unit_test(domain_evict),
};

UNIT_MAIN(tests)
