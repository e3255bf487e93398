/*
 * config - see config.h.
 *
 * Keys are described by one table (section, name, kind, bounds, default);
 * the INI handler and --set both look a key up there and parse it with
 * the same function, so a value means the same wherever it comes from.
 * config_defaults sets every key's default from the table. [shard.N]
 * sections are parsed apart, into c->shards[N].
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ini.h>

#include "netaddr.h"
#include "util.h"

enum kind {
	K_U32,
	K_U64,
	K_STR,
	K_NAME, /* [A-Za-z0-9._-], 1..64 bytes */
	K_ADDR, /* numeric host:port */
	K_LEVEL,
	K_BOOL,
	K_PIDS,	   /* comma-separated positive integers */
	K_CGROUPS, /* comma-separated absolute cgroup paths */
	K_CHOICE,  /* one of the key's words */
};

#define CGROUPS_WHAT "cgroup paths such as /machine.slice,/system.slice/app.service"
#define PIDS_WHAT    "process ids such as 1234,5678"

struct key {
	const char *section;
	const char *name;
	enum kind kind;
	size_t off;
	size_t size; /* for strings: buffer size */
	uint64_t min, max;
	uint64_t def_num;	  /* numbers: the default */
	const char *def_str;	  /* the others: the default as written, NULL for none */
	const char *const *words; /* K_CHOICE: the accepted values, NULL-terminated */
	const char *what;	  /* what is expected, for messages */
};

#define U(sec, nm, field, def, lo, hi, w)                                                    \
	{                                                                                    \
		.section = sec, .name = nm,                                                  \
		.kind = sizeof(((struct config *)0)->field) == 4 ? K_U32 : K_U64,            \
		.off = offsetof(struct config, field), .min = lo, .max = hi, .def_num = def, \
		.what = w                                                                    \
	}
#define S(sec, nm, k, field, def, w)                                                          \
	{                                                                                     \
		.section = sec, .name = nm, .kind = k, .off = offsetof(struct config, field), \
		.size = sizeof(((struct config *)0)->field), .def_str = def, .what = w        \
	}
#define C(sec, nm, field, list, def, w)                                                     \
	{                                                                                   \
		.section = sec, .name = nm, .kind = K_CHOICE,                               \
		.off = offsetof(struct config, field),                                      \
		.size = sizeof(((struct config *)0)->field), .def_str = def, .words = list, \
		.what = w                                                                   \
	}

/* auto picks the best transport the node has: rdma where a device is there. */
static const char *const transports[] = { "auto", "rdma", "tcp", NULL };
static const char *const ksm_modes[] = { "off", "advise", "manage", NULL };
/* How evicted pages leave a process: auto is move where the kernel can. */
static const char *const evict_withs[] = { "auto", "move", "zap", NULL };

/*
 * Defaults that depend on the machine (node_name) and the built-in domain
 * and shard are set in config_defaults instead.
 */
static const struct key keys[] = {
	S("cluster", "key_file", K_STR, key_file, "/etc/cksm/cluster.key", "a path"),
	U("cluster", "buckets", buckets, 4096, 1, CONFIG_MAX_BUCKETS,
	  "a power of two between 1 and 65536"),
	U("cluster", "max_frame_bytes", max_frame_bytes, 1u << 20, 262144, 16u << 20,
	  "a size in bytes between 262144 and 16777216"),
	U("cluster", "auth_timeout_ms", auth_timeout_ms, 2000, 100, 600000,
	  "milliseconds between 100 and 600000"),
	U("cluster", "max_handshakes", max_handshakes, 256, 1, 4096,
	  "a connection count between 1 and 4096"),
	U("cluster", "max_handshakes_per_source", max_handshakes_per_source, 32, 1, 4096,
	  "a connection count between 1 and 4096"),
	U("cluster", "max_queued_bytes", max_queued_bytes, 32u << 20, 1u << 20, 1ULL << 32,
	  "a size in bytes between 1048576 and 4294967296"),
	U("cluster", "heartbeat_ms", heartbeat_ms, 1000, 50, 60000,
	  "milliseconds between 50 and 60000"),
	U("cluster", "dead_after_ms", dead_after_ms, 5000, 150, 3600000,
	  "milliseconds between 150 and 3600000"),
	U("cluster", "forget_dead_ms", forget_dead_ms, 3600000, 0, 604800000,
	  "milliseconds between 0 and 604800000"),
	U("cluster", "reconnect_min_ms", reconnect_min_ms, 100, 10, 60000,
	  "milliseconds between 10 and 60000"),
	U("cluster", "max_page_sharing", max_page_sharing, 256, 2, 65535,
	  "a reference count between 2 and 65535"),
	U("cluster", "replicas", replicas, 2, 1, 8, "a replica count between 1 and 8"),
	S("cluster", "merge_across_nodes", K_BOOL, merge_across_nodes, "1", "0 or 1"),
	U("cluster", "prune_millisecs", prune_millisecs, 2000, 100, 3600000,
	  "milliseconds between 100 and 3600000"),
	U("cluster", "dup_idle_millisecs", dup_idle_millisecs, 30000, 100, 86400000,
	  "milliseconds between 100 and 86400000"),
	U("cluster", "unstable_capacity", unstable_capacity, 1ULL << 22, 1024, 1ULL << 34,
	  "an id count between 1024 and 17179869184"),
	U("cluster", "unstable_age_millisecs", unstable_age_millisecs, 60000, 100, 86400000,
	  "milliseconds between 100 and 86400000"),
	U("cluster", "reconnect_max_ms", reconnect_max_ms, 30000, 10, 3600000,
	  "milliseconds between 10 and 3600000"),
	S("log", "level", K_LEVEL, log_level, "info", "one of error, warn, info, debug"),
	S("agent", "node_name", K_NAME, node_name, NULL,
	  "a name of 1 to 64 letters, digits, '.', '_' or '-'"),
	S("agent", "rack", K_NAME, rack, "default",
	  "a name of 1 to 64 letters, digits, '.', '_' or '-'"),
	S("agent", "metrics", K_ADDR, agent_metrics, "127.0.0.1:9470",
	  "a numeric host:port such as 127.0.0.1:9470"),
	S("agent", "scan_mergeable", K_BOOL, scan_mergeable, "1", "0 or 1"),
	S("agent", "scan_thp", K_BOOL, scan_thp, "1", "0 or 1"),
	S("agent", "mergeable_only", K_BOOL, mergeable_only, "0", "0 or 1"),
	U("agent", "pages_to_scan", pages_to_scan, 4096, 1, 1u << 20,
	  "a page count between 1 and 1048576"),
	U("agent", "sleep_millisecs", sleep_millisecs, 20, 0, 60000,
	  "milliseconds between 0 and 60000"),
	U("agent", "rereport_millisecs", rereport_millisecs, 60000, 1000, 86400000,
	  "milliseconds between 1000 and 86400000"),
	U("agent", "pass_millisecs", pass_millisecs, 2000, 0, 3600000,
	  "milliseconds between 0 and 3600000"),
	U("agent", "cpu_percent", cpu_percent, 10, 1, 100,
	  "a percentage of one core between 1 and 100"),
	U("agent", "report_queue", report_queue, 65536, 1024, 1u << 24,
	  "a digest count between 1024 and 16777216"),
	S("agent", "cgroup_root", K_STR, cgroup_root, NULL, "a path"),
	S("agent", "socket", K_STR, socket_path, "/run/cksm/agent.sock",
	  "a path of at most 107 bytes"),
	S("agent", "state_dir", K_STR, state_dir, "/run/cksm/state", "a path of at most 199 bytes"),
	S("agent", "socket_group", K_NAME, socket_group, NULL,
	  "a group name of 1 to 64 letters, digits, '.', '_' or '-'"),
	S("agent", "attach_any_user", K_BOOL, attach_any_user, "0", "0 or 1"),
	S("agent", "data_listen", K_ADDR, data_listen, NULL,
	  "a numeric host:port such as 0.0.0.0:9472"),
	S("agent", "data_address", K_ADDR, data_address, NULL,
	  "a numeric host:port such as 192.0.2.6:9472"),
	C("agent", "transport", transport, transports, "auto", "auto, rdma or tcp"),
	U("agent", "data_timeout_ms", data_timeout_ms, 2000, 10, 60000,
	  "milliseconds between 10 and 60000"),
	U("agent", "lost_after_ms", lost_after_ms, 10000, 0, 3600000,
	  "milliseconds between 0 and 3600000"),
	U("agent", "stop_wait_ms", stop_wait_ms, 10000, 0, 60000,
	  "milliseconds between 0 and 60000"),
	U("agent", "pool_pages", pool_pages, 65536, 16, 1u << 28,
	  "a slot count between 16 and 268435456"),
	S("agent", "evict", K_BOOL, evict, "1", "0 or 1"),
	U("agent", "evict_age", evict_age, 3, 1, 31, "a scan count between 1 and 31"),
	U("agent", "evict_rate", evict_rate, 20000, 1, 1u << 24,
	  "pages per second between 1 and 16777216"),
	U("agent", "evict_cooldown_millisecs", evict_cooldown_millisecs, 60000, 0, 86400000,
	  "milliseconds between 0 and 86400000"),
	S("agent", "wset", K_BOOL, wset, "1", "0 or 1"),
	U("agent", "wset_regions", wset_regions, 65536, 64, 1u << 24,
	  "a region count between 64 and 16777216"),
	U("agent", "wset_sample_pages", wset_sample_pages, 8, 1, 64,
	  "a page count between 1 and 64"),
	U("agent", "wset_sample_ms", wset_sample_ms, 5000, 100, 600000,
	  "milliseconds between 100 and 600000"),
	U("agent", "fault_budget_pct", fault_budget_pct, 1, 0, 100,
	  "a percentage between 0 and 100"),
	C("agent", "ksm", ksm_mode, ksm_modes, "advise", "off, advise or manage"),
	C("agent", "evict_with", evict_with, evict_withs, "auto", "auto, move or zap"),
	U("agent", "ksm_max_cpu", ksm_max_cpu, 10, 1, 100, "a percentage between 1 and 100"),
	U("agent", "ksm_scan_seconds", ksm_scan_seconds, 200, 1, 86400,
	  "seconds between 1 and 86400"),
	S("agent", "cgroups", K_CGROUPS, domains[0].cgroups, NULL, CGROUPS_WHAT),
	S("agent", "pids", K_PIDS, domains[0].pids, NULL, PIDS_WHAT),
};

static const char shard_addr_what[] = "a numeric host:port such as 127.0.0.1:7470";

struct parse_ctx {
	struct config *c;
	const char *file;
	FILE *err;
	FILE *in;
	int line;
	int errors;
};

static void report(struct parse_ctx *p, const char *section, const char *name, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static void report(struct parse_ctx *p, const char *section, const char *name, const char *fmt, ...)
{
	va_list ap;

	if (p->line > 0)
		fprintf(p->err, "%s:%d: ", p->file, p->line);
	else
		fprintf(p->err, "%s: ", p->file);
	if (section)
		fprintf(p->err, "[%s] %s: ", section, name);
	va_start(ap, fmt);
	vfprintf(p->err, fmt, ap);
	va_end(ap);
	fputc('\n', p->err);
	p->errors++;
}

static int parse_u64(const char *v, uint64_t *out)
{
	unsigned long long n;
	char *end;

	if (!isdigit((unsigned char)*v))
		return -EINVAL;
	errno = 0;
	n = strtoull(v, &end, 10);
	if (errno || *end)
		return -EINVAL;
	*out = n;
	return 0;
}

static int addr_ok(const char *v)
{
	struct sockaddr_storage ss;

	return netaddr_parse(v, &ss) == 0;
}

static int set_str(struct parse_ctx *p, const char *sec, const char *name, char *dst, size_t size,
		   const char *v)
{
	if (strlen(v) >= size) {
		report(p, sec, name, "value longer than %zu bytes", size - 1);
		return -EINVAL;
	}
	strcpy(dst, v);
	return 0;
}

/* A comma-separated list of pids, or of absolute cgroup paths. */
static int list_ok(enum kind kind, const char *v)
{
	char buf[CONFIG_LIST_MAX], *save, *tok;

	if (strlen(v) >= sizeof(buf))
		return 0;
	strcpy(buf, v);
	for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		while (*tok == ' ')
			tok++;
		if (kind == K_PIDS) {
			uint64_t n;

			if (parse_u64(tok, &n) || n == 0 || n > INT32_MAX)
				return 0;
		} else if (tok[0] != '/' || strstr(tok, "..") || strchr(tok, ' ')) {
			return 0;
		}
	}
	return 1;
}

static int is_word(const char *const *words, const char *v)
{
	for (; *words; words++)
		if (!strcmp(*words, v))
			return 1;
	return 0;
}

static int set_key(struct parse_ctx *p, const struct key *k, const char *v)
{
	char *field = (char *)p->c + k->off;
	uint64_t n;

	switch (k->kind) {
	case K_U32:
	case K_U64:
		if (parse_u64(v, &n) || n < k->min || n > k->max ||
		    (strcmp(k->name, "buckets") == 0 && (n & (n - 1)))) {
			report(p, k->section, k->name, "expected %s, got '%s'", k->what, v);
			return -EINVAL;
		}
		if (k->kind == K_U32)
			*(uint32_t *)(void *)field = (uint32_t)n;
		else
			*(uint64_t *)(void *)field = n;
		return 0;
	case K_LEVEL:
		if (log_level_parse(v, (enum log_level *)(void *)field)) {
			report(p, k->section, k->name, "expected %s, got '%s'", k->what, v);
			return -EINVAL;
		}
		return 0;
	case K_BOOL:
		if (strcmp(v, "0") && strcmp(v, "1") && strcmp(v, "true") && strcmp(v, "false")) {
			report(p, k->section, k->name, "expected %s, got '%s'", k->what, v);
			return -EINVAL;
		}
		*(int *)(void *)field = !strcmp(v, "1") || !strcmp(v, "true");
		return 0;
	case K_PIDS:
	case K_CGROUPS:
		if (!list_ok(k->kind, v)) {
			report(p, k->section, k->name, "expected %s, got '%s'", k->what, v);
			return -EINVAL;
		}
		return set_str(p, k->section, k->name, field, k->size, v);
	case K_NAME:
	case K_ADDR:
	case K_CHOICE:
		if ((k->kind == K_NAME && !name_valid(v)) || (k->kind == K_ADDR && !addr_ok(v)) ||
		    (k->kind == K_CHOICE && !is_word(k->words, v))) {
			report(p, k->section, k->name, "expected %s, got '%s'", k->what, v);
			return -EINVAL;
		}
		/* fall through */
	case K_STR:
		return set_str(p, k->section, k->name, field, k->size, v);
	}
	return -EINVAL;
}

/* "0-2047,4096-8191" or "17"; bounds are checked in config_finish. */
static int parse_ranges(struct shard_conf *s, const char *v)
{
	const char *p = v;

	s->nranges = 0;
	while (*p) {
		uint64_t a, b;
		char *end;

		if (s->nranges == CONFIG_MAX_RANGES || !isdigit((unsigned char)*p))
			return -EINVAL;
		a = strtoull(p, &end, 10);
		b = a;
		if (*end == '-') {
			p = end + 1;
			if (!isdigit((unsigned char)*p))
				return -EINVAL;
			b = strtoull(p, &end, 10);
		}
		if (b < a || b >= CONFIG_MAX_BUCKETS)
			return -EINVAL;
		s->ranges[s->nranges].first = (uint32_t)a;
		s->ranges[s->nranges].last = (uint32_t)b;
		s->nranges++;
		p = end;
		if (*p == ',')
			p++;
		else if (*p)
			return -EINVAL;
	}
	return s->nranges ? 0 : -EINVAL;
}

static int set_shard(struct parse_ctx *p, const char *section, const char *name, const char *v)
{
	struct config *c = p->c;
	struct shard_conf *s;
	unsigned long id;
	char *end;

	errno = 0;
	id = strtoul(section + 6, &end, 10);
	if (!isdigit((unsigned char)section[6]) || *end || errno || id >= CONFIG_MAX_SHARDS) {
		report(p, NULL, NULL, "[%s]: expected a section [shard.N] with N between 0 and %d",
		       section, CONFIG_MAX_SHARDS - 1);
		return -EINVAL;
	}
	s = &c->shards[id];
	if (!s->defined) {
		/*
		 * The built-in local shard 0 gives its values to a [shard.0]
		 * (or --set shard.0.*) that does not name them; a map that
		 * starts elsewhere replaces it.
		 */
		int builtin0 = c->nshards == 1 && !c->shards[0].defined && c->shards[0].address[0];

		if (builtin0 && id != 0)
			memset(&c->shards[0], 0, sizeof(c->shards[0]));
		if (!(builtin0 && id == 0))
			memset(s, 0, sizeof(*s));
		s->defined = 1;
		if (id + 1 > c->nshards)
			c->nshards = (unsigned)id + 1;
	}
	if (strcmp(name, "address") == 0 || strcmp(name, "listen") == 0 ||
	    strcmp(name, "metrics") == 0) {
		char *dst = name[0] == 'a' ? s->address : name[0] == 'l' ? s->listen : s->metrics;

		if (!addr_ok(v)) {
			report(p, section, name, "expected %s, got '%s'", shard_addr_what, v);
			return -EINVAL;
		}
		return set_str(p, section, name, dst, sizeof(s->address), v);
	}
	if (strcmp(name, "buckets") == 0) {
		if (parse_ranges(s, v)) {
			report(p, section, name,
			       "expected bucket ranges such as 0-2047 or 0-99,200-299 (at most %d, below %d), got '%s'",
			       CONFIG_MAX_RANGES, CONFIG_MAX_BUCKETS, v);
			return -EINVAL;
		}
		return 0;
	}
	report(p, section, name, "unknown key (a shard has address, listen, metrics, buckets)");
	return -EINVAL;
}

static int set_domain(struct parse_ctx *p, const char *section, const char *name, const char *v)
{
	struct config *c = p->c;
	const char *dname = section + 7;
	struct domain_conf *d = NULL;
	uint64_t n;

	if (!name_valid(dname) || !strcmp(dname, "default")) {
		report(p, NULL, NULL,
		       "[%s]: expected [domain.NAME] with a name of 1 to 64 letters, digits, '.', '_' or '-' other than 'default'",
		       section);
		return -EINVAL;
	}
	for (unsigned i = 1; i < c->ndomains; i++)
		if (!strcmp(c->domains[i].name, dname))
			d = &c->domains[i];
	if (!d) {
		if (c->ndomains == CONFIG_MAX_DOMAINS) {
			report(p, NULL, NULL, "[%s]: at most %d domains", section,
			       CONFIG_MAX_DOMAINS);
			return -EINVAL;
		}
		d = &c->domains[c->ndomains++];
		memset(d, 0, sizeof(*d));
		d->defined = 1;
		d->evict = 1;
		strcpy(d->name, dname);
	}
	if (!strcmp(name, "id")) {
		if (parse_u64(v, &n) || n < 1 || n > 255) {
			report(p, section, name,
			       "expected a domain number between 1 and 255, got '%s'", v);
			return -EINVAL;
		}
		d->id = (uint8_t)n;
		return 0;
	}
	if (!strcmp(name, "cgroups") || !strcmp(name, "pids")) {
		enum kind k = name[0] == 'c' ? K_CGROUPS : K_PIDS;

		if (!list_ok(k, v)) {
			report(p, section, name, "expected %s, got '%s'",
			       k == K_PIDS ? PIDS_WHAT : CGROUPS_WHAT, v);
			return -EINVAL;
		}
		return set_str(p, section, name, k == K_PIDS ? d->pids : d->cgroups,
			       sizeof(d->pids), v);
	}
	if (!strcmp(name, "ksm")) {
		if (strcmp(v, "0") && strcmp(v, "1")) {
			report(p, section, name,
			       "expected 0 or 1 (whether hot duplicates may go to the kernel's KSM, which merges across domains), got '%s'",
			       v);
			return -EINVAL;
		}
		d->ksm = v[0] == '1';
		return 0;
	}
	if (!strcmp(name, "evict")) {
		if (strcmp(v, "0") && strcmp(v, "1")) {
			report(p, section, name,
			       "expected 0 or 1 (whether the domain's pages may be evicted, that is merged), got '%s'",
			       v);
			return -EINVAL;
		}
		d->evict = v[0] == '1';
		return 0;
	}
	report(p, section, name, "unknown key (a domain has id, cgroups, pids, ksm, evict)");
	return -EINVAL;
}

static int apply(struct parse_ctx *p, const char *section, const char *name, const char *value)
{
	int known_section = 0;

	if (strncmp(section, "shard.", 6) == 0)
		return set_shard(p, section, name, value);
	if (strncmp(section, "domain.", 7) == 0)
		return set_domain(p, section, name, value);
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
		if (strcmp(keys[i].section, section) != 0)
			continue;
		known_section = 1;
		if (strcmp(keys[i].name, name) == 0)
			return set_key(p, &keys[i], value);
	}
	if (known_section)
		report(p, section, name, "unknown key");
	else
		report(p, NULL, NULL,
		       "unknown section [%s] (expected cluster, log, agent, shard.N or domain.NAME)",
		       section);
	return -EINVAL;
}

static int ini_cb(void *user, const char *section, const char *name, const char *value)
{
	struct parse_ctx *p = user;

	if (!name) /* a section header alone (libinih with CALL_HANDLER_ON_NEW_SECTION) */
		return 1;
	if (!*section) {
		report(p, NULL, NULL, "key '%s' outside any [section]", name);
		return 1;
	}
	apply(p, section, name, value);
	return 1; /* go on: every error is reported */
}

/* Line-counting reader, so the handler knows where it is. */
static char *read_line(char *str, int num, void *stream)
{
	struct parse_ctx *p = stream;
	char *s = fgets(str, num, p->in);

	if (s)
		p->line++;
	return s;
}

/* Set k's default; a bad one in the table is reported like a bad value. */
static void set_default(struct parse_ctx *p, const struct key *k)
{
	char *field = (char *)p->c + k->off;

	if (k->kind == K_U32)
		*(uint32_t *)(void *)field = (uint32_t)k->def_num;
	else if (k->kind == K_U64)
		*(uint64_t *)(void *)field = k->def_num;
	else if (k->def_str)
		set_key(p, k, k->def_str);
}

void config_defaults(struct config *c)
{
	struct parse_ctx p = { .c = c, .file = "built-in default", .err = stderr };

	memset(c, 0, sizeof(*c));
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
		set_default(&p, &keys[i]);
	if (gethostname(c->node_name, sizeof(c->node_name) - 1) || !name_valid(c->node_name))
		strcpy(c->node_name, "node");
	c->ndomains = 1;
	c->domains[0].defined = 1;
	c->domains[0].ksm = 1;
	c->domains[0].evict = 1;
	strcpy(c->domains[0].name, "default");
	c->nshards = 1;
	strcpy(c->shards[0].address, "127.0.0.1:7470");
	strcpy(c->shards[0].metrics, "127.0.0.1:9471");
}

int config_load(struct config *c, const char *path, FILE *err)
{
	struct parse_ctx p = { .c = c, .file = path, .err = err };
	int rc;

	p.in = fopen(path, "re");
	if (!p.in) {
		rc = -errno;
		fprintf(err, "%s: cannot open: %s\n", path, strerror(errno));
		return rc;
	}
	rc = ini_parse_stream(read_line, &p, ini_cb, &p);
	fclose(p.in);
	if (rc > 0) {
		p.line = rc;
		report(&p, NULL, NULL,
		       "syntax error: expected [section], key = value, or a ; comment");
	} else if (rc < 0) {
		fprintf(err, "%s: cannot parse (out of memory)\n", path);
		return -ENOMEM;
	}
	return p.errors ? -EINVAL : 0;
}

int config_load_default(struct config *c, const char *path, int named, FILE *err)
{
	if (!named && access(path, F_OK) < 0 && errno == ENOENT) {
		fprintf(err, "%s does not exist; using built-in defaults\n", path);
		return 0;
	}
	return config_load(c, path, err);
}

int config_set(struct config *c, const char *assignment, FILE *err)
{
	struct parse_ctx p = { .c = c, .file = "--set", .err = err };
	char buf[512], *dot, *eq;

	if (strlen(assignment) >= sizeof(buf))
		goto bad;
	strcpy(buf, assignment);
	eq = strchr(buf, '=');
	if (!eq)
		goto bad;
	*eq = '\0';
	dot = strrchr(buf, '.');
	if (!dot || dot == buf || !dot[1])
		goto bad;
	*dot = '\0';
	return apply(&p, buf, dot + 1, eq + 1) ? -EINVAL : 0;
bad:
	fprintf(err, "--set %s: expected section.key=value\n", assignment);
	return -EINVAL;
}

static int check_shards(struct config *c, FILE *err)
{
	static int16_t owner[CONFIG_MAX_BUCKETS];
	int errors = 0;

	if (c->nshards == 1 && c->shards[0].nranges == 0) { /* one shard: all buckets */
		c->shards[0].ranges[0].first = 0;
		c->shards[0].ranges[0].last = c->buckets - 1;
		c->shards[0].nranges = 1;
	}
	memset(owner, 0xff, sizeof(owner));
	for (unsigned i = 0; i < c->nshards; i++) {
		struct shard_conf *s = &c->shards[i];

		if (!s->defined && (i > 0 || !s->address[0])) {
			fprintf(err,
				"[shard.%u] is missing: shards must be numbered 0..%u without gaps\n",
				i, c->nshards - 1);
			errors++;
			continue;
		}
		if (!s->address[0]) {
			fprintf(err, "[shard.%u] has no address\n", i);
			errors++;
		}
		if (!s->listen[0])
			strcpy(s->listen, s->address);
		if (!s->metrics[0] && s->defined) {
			fprintf(err, "[shard.%u] has no metrics address\n", i);
			errors++;
		}
		if (!s->nranges) {
			fprintf(err, "[shard.%u] has no buckets\n", i);
			errors++;
		}
		for (unsigned r = 0; r < s->nranges; r++) {
			for (uint32_t b = s->ranges[r].first; b <= s->ranges[r].last; b++) {
				if (b >= c->buckets) {
					fprintf(err,
						"[shard.%u] buckets: bucket %u is beyond the %u buckets of [cluster] buckets\n",
						i, b, c->buckets);
					errors++;
					break;
				}
				if (owner[b] >= 0) {
					fprintf(err,
						"bucket %u is given to both [shard.%d] and [shard.%u]\n",
						b, owner[b], i);
					errors++;
					break;
				}
				owner[b] = (int16_t)i;
			}
		}
	}
	for (uint32_t b = 0; b < c->buckets && !errors; b++) {
		if (owner[b] < 0) {
			uint32_t e = b;

			while (e + 1 < c->buckets && owner[e + 1] < 0)
				e++;
			fprintf(err, "buckets %u-%u are given to no shard\n", b, e);
			errors++;
		}
	}
	return errors;
}

int config_finish(struct config *c, FILE *err)
{
	int errors = check_shards(c, err);

	if (c->dead_after_ms < 3 * c->heartbeat_ms) {
		fprintf(err,
			"[cluster] dead_after_ms (%llu) must be at least three heartbeats (3 x %llu ms)\n",
			(unsigned long long)c->dead_after_ms, (unsigned long long)c->heartbeat_ms);
		errors++;
	}
	for (unsigned i = 1; i < c->ndomains; i++) {
		if (!c->domains[i].id) {
			fprintf(err, "[domain.%s] has no id\n", c->domains[i].name);
			errors++;
		}
		for (unsigned j = 1; j < i; j++)
			if (c->domains[i].id && c->domains[i].id == c->domains[j].id) {
				fprintf(err, "[domain.%s] and [domain.%s] have the same id %u\n",
					c->domains[j].name, c->domains[i].name, c->domains[i].id);
				errors++;
			}
	}
	if (c->dup_idle_millisecs / c->prune_millisecs > 250) {
		fprintf(err,
			"[cluster] dup_idle_millisecs (%u) is more than 250 prune ticks of %u ms; raise prune_millisecs\n",
			c->dup_idle_millisecs, c->prune_millisecs);
		errors++;
	}
	if (c->rereport_millisecs > c->unstable_age_millisecs) {
		fprintf(err,
			"[agent] rereport_millisecs (%u) exceeds [cluster] unstable_age_millisecs (%u): shards would forget first sightings before they are repeated\n",
			c->rereport_millisecs, c->unstable_age_millisecs);
		errors++;
	}
	if (c->max_handshakes_per_source > c->max_handshakes) {
		fprintf(err,
			"[cluster] max_handshakes_per_source (%u) exceeds max_handshakes (%u)\n",
			c->max_handshakes_per_source, c->max_handshakes);
		errors++;
	}
	if (c->max_queued_bytes < 2ULL * c->max_frame_bytes) {
		fprintf(err,
			"[cluster] max_queued_bytes (%llu) is less than two frames of max_frame_bytes (2 x %u)\n",
			(unsigned long long)c->max_queued_bytes, c->max_frame_bytes);
		errors++;
	}
	if (c->reconnect_max_ms < c->reconnect_min_ms) {
		fprintf(err, "[cluster] reconnect_max_ms is below reconnect_min_ms\n");
		errors++;
	}
	return errors ? -EINVAL : 0;
}

int config_bucket_shard(const struct config *c, uint32_t bucket)
{
	for (unsigned i = 0; i < c->nshards; i++)
		for (unsigned r = 0; r < c->shards[i].nranges; r++)
			if (bucket >= c->shards[i].ranges[r].first &&
			    bucket <= c->shards[i].ranges[r].last)
				return (int)i;
	return -ENOENT;
}

void config_dump(const struct config *c, FILE *out)
{
	static const char *const levels[] = { "error", "warn", "info", "debug" };

	fprintf(out,
		"[cluster]\nkey_file = %s\nbuckets = %u\nmax_frame_bytes = %u\n"
		"auth_timeout_ms = %llu\nmax_handshakes = %u\nmax_handshakes_per_source = %u\n"
		"max_queued_bytes = %llu\nheartbeat_ms = %llu\ndead_after_ms = %llu\n"
		"forget_dead_ms = %llu\nreconnect_min_ms = %llu\nreconnect_max_ms = %llu\n",
		c->key_file, c->buckets, c->max_frame_bytes, (unsigned long long)c->auth_timeout_ms,
		c->max_handshakes, c->max_handshakes_per_source,
		(unsigned long long)c->max_queued_bytes, (unsigned long long)c->heartbeat_ms,
		(unsigned long long)c->dead_after_ms, (unsigned long long)c->forget_dead_ms,
		(unsigned long long)c->reconnect_min_ms, (unsigned long long)c->reconnect_max_ms);
	fprintf(out,
		"max_page_sharing = %u\nreplicas = %u\nmerge_across_nodes = %d\nprune_millisecs = %u\n"
		"dup_idle_millisecs = %u\nunstable_capacity = %llu\nunstable_age_millisecs = %u\n\n",
		c->max_page_sharing, c->replicas, c->merge_across_nodes, c->prune_millisecs,
		c->dup_idle_millisecs, (unsigned long long)c->unstable_capacity,
		c->unstable_age_millisecs);
	fprintf(out, "[log]\nlevel = %s\n\n", levels[c->log_level]);
	fprintf(out, "[agent]\nnode_name = %s\nrack = %s\nmetrics = %s\n", c->node_name, c->rack,
		c->agent_metrics);
	fprintf(out,
		"scan_mergeable = %d\nscan_thp = %d\nmergeable_only = %d\npages_to_scan = %u\nsleep_millisecs = %u\n"
		"pass_millisecs = %u\nrereport_millisecs = %u\n"
		"cpu_percent = %u\nreport_queue = %u\n",
		c->scan_mergeable, c->scan_thp, c->mergeable_only, c->pages_to_scan,
		c->sleep_millisecs, c->pass_millisecs, c->rereport_millisecs, c->cpu_percent,
		c->report_queue);
	if (c->data_listen[0])
		fprintf(out, "data_listen = %s\n", c->data_listen);
	if (c->data_address[0])
		fprintf(out, "data_address = %s\n", c->data_address);
	fprintf(out,
		"transport = %s\ndata_timeout_ms = %u\nlost_after_ms = %u\nstop_wait_ms = %u\n"
		"socket = %s\nstate_dir = %s\npool_pages = %u\nevict = %d\nevict_age = %u\nevict_rate = %u\n"
		"evict_cooldown_millisecs = %u\nevict_with = %s\n",
		c->transport, c->data_timeout_ms, c->lost_after_ms, c->stop_wait_ms, c->socket_path,
		c->state_dir, c->pool_pages, c->evict, c->evict_age, c->evict_rate,
		c->evict_cooldown_millisecs, c->evict_with);
	fprintf(out,
		"wset = %d\nwset_regions = %u\nwset_sample_pages = %u\nwset_sample_ms = %u\nfault_budget_pct = %u\n"
		"ksm = %s\nksm_max_cpu = %u\nksm_scan_seconds = %u\n",
		c->wset, c->wset_regions, c->wset_sample_pages, c->wset_sample_ms,
		c->fault_budget_pct, c->ksm_mode, c->ksm_max_cpu, c->ksm_scan_seconds);
	if (c->socket_group[0])
		fprintf(out, "socket_group = %s\n", c->socket_group);
	fprintf(out, "attach_any_user = %d\n", c->attach_any_user);
	if (c->cgroup_root[0])
		fprintf(out, "cgroup_root = %s\n", c->cgroup_root);
	if (c->domains[0].cgroups[0])
		fprintf(out, "cgroups = %s\n", c->domains[0].cgroups);
	if (c->domains[0].pids[0])
		fprintf(out, "pids = %s\n", c->domains[0].pids);
	for (unsigned i = 1; i < c->ndomains; i++) {
		const struct domain_conf *d = &c->domains[i];

		fprintf(out, "\n[domain.%s]\nid = %u\nksm = %d\nevict = %d\n", d->name, d->id,
			d->ksm, d->evict);
		if (d->cgroups[0])
			fprintf(out, "cgroups = %s\n", d->cgroups);
		if (d->pids[0])
			fprintf(out, "pids = %s\n", d->pids);
	}
	for (unsigned i = 0; i < c->nshards; i++) {
		const struct shard_conf *s = &c->shards[i];

		fprintf(out, "\n[shard.%u]\naddress = %s\nlisten = %s\nmetrics = %s\nbuckets = ", i,
			s->address, s->listen, s->metrics);
		for (unsigned r = 0; r < s->nranges; r++)
			fprintf(out, "%s%u-%u", r ? "," : "", s->ranges[r].first,
				s->ranges[r].last);
		fputc('\n', out);
	}
}
