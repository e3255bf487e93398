/*
 * cksmctl - the cksm admin CLI.
 *
 *   cksmctl [-c FILE] [-o text|json] [-t MS] status
 *
 * Speaks the authenticated admin protocol to every shard of the shard map
 * in the configuration. Exit codes: 0 everything answered and every node
 * is live; 1 a shard is unreachable or a node is dead (the output names
 * which); 2 bad usage or configuration.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#include <libsmartcols.h>

#include "auth.h"
#include "config.h"
#include "sconn.h"

#define EXIT_DOWN  1
#define EXIT_USAGE 2

struct shard_answer {
	int rc;		       /* 0 or the negative errno of the failure */
	char err[512];	       /* what failed, when rc != 0 */
	Cksm__AdminReply *rep; /* the answer, when rc == 0 */
	Cksm__Msg *msg;	       /* owns rep */
};

struct opts {
	const char *config;
	int config_named; /* given with -c */
	int json;
	int timeout_ms;
	int color;
};

static void usage(FILE *out)
{
	fprintf(out,
		"usage: cksmctl [options] COMMAND\n"
		"\n"
		"commands:\n"
		"  status    shards and nodes, and whether each is up\n"
		"\n"
		"options:\n"
		"  -c, --config FILE   configuration with the shard map (default " CONFIG_DEFAULT_PATH
		")\n"
		"  -o, --output FMT    text (default) or json\n"
		"  -t, --timeout MS    timeout of each network wait (default 3000)\n"
		"  -h, --help          this help\n"
		"\n"
		"exit status: 0 all up, 1 a shard or node is down, 2 usage or configuration error\n");
}

static void ask_shard(const struct config *cfg, const struct auth_key *key, unsigned shard,
		      int timeout_ms, struct shard_answer *a)
{
	Cksm__Msg out = CKSM__MSG__INIT;
	Cksm__AdminRequest req = CKSM__ADMIN_REQUEST__INIT;
	struct sconn s;
	int rc;

	rc = sconn_open(&s, cfg->shards[shard].address, key, CKSM__ROLE__ROLE_ADMIN, "cksmctl",
			timeout_ms, a->err, sizeof(a->err));
	if (rc) {
		a->rc = rc;
		return;
	}
	req.command = CKSM__ADMIN_COMMAND__ADMIN_STATUS;
	out.body_case = CKSM__MSG__BODY_ADMIN_REQUEST;
	out.admin_request = &req;
	rc = sconn_send(&s, &out);
	if (!rc)
		a->msg = sconn_recv(&s, &rc);
	if (!a->msg || a->msg->body_case != CKSM__MSG__BODY_ADMIN_REPLY) {
		a->rc = rc ? rc : -EPROTO;
		snprintf(a->err, sizeof(a->err), "%s: no status answer (%s)",
			 cfg->shards[shard].address, rc ? strerror(-rc) : "unexpected message");
	} else if (a->msg->admin_reply->status) {
		a->rc = a->msg->admin_reply->status;
		snprintf(a->err, sizeof(a->err), "%s: %s", cfg->shards[shard].address,
			 a->msg->admin_reply->error);
	} else {
		a->rep = a->msg->admin_reply;
	}
	sconn_close(&s);
}

static json_t *status_json(const struct config *cfg, const struct shard_answer *ans)
{
	json_t *root = json_object(), *shards = json_array();

	for (unsigned i = 0; i < cfg->nshards; i++) {
		const struct shard_answer *a = &ans[i];
		json_t *sh = json_object(), *nodes = json_array();

		json_object_set_new(sh, "id", json_integer(i));
		json_object_set_new(sh, "address", json_string(cfg->shards[i].address));
		json_object_set_new(sh, "up", json_boolean(a->rc == 0));
		json_object_set_new(sh, "error", a->rc ? json_string(a->err) : json_null());
		if (a->rep) {
			json_t *b = json_array();

			json_object_set_new(sh, "version", json_string(a->rep->version));
			json_object_set_new(sh, "uptime_ms",
					    json_integer((json_int_t)a->rep->uptime_ms));
			for (size_t r = 0; r < a->rep->n_owned; r++)
				json_array_append_new(
					b, json_pack("[I,I]", (json_int_t)a->rep->owned[r]->first,
						     (json_int_t)a->rep->owned[r]->last));
			json_object_set_new(sh, "buckets", b);
			for (size_t n = 0; n < a->rep->n_nodes; n++) {
				const Cksm__NodeStatus *ns = a->rep->nodes[n];

				json_array_append_new(
					nodes, json_pack("{s:I,s:s,s:s,s:b,s:s,s:I,s:I}", "node_id",
							 (json_int_t)ns->node_id, "name", ns->name,
							 "rack", ns->rack, "live", ns->live,
							 "address", ns->address, "last_seen_ms",
							 (json_int_t)ns->last_seen_ms, "heartbeats",
							 (json_int_t)ns->heartbeats));
			}
		}
		json_object_set_new(sh, "nodes", nodes);
		json_array_append_new(shards, sh);
	}
	json_object_set_new(root, "shards", shards);
	return root;
}

static void cell(struct libscols_line *ln, int col, const char *text, const char *color,
		 int use_color)
{
	scols_line_set_data(ln, (size_t)col, text);
	if (use_color && color)
		scols_cell_set_color(scols_line_get_cell(ln, (size_t)col), color);
}

static void print_text(const struct config *cfg, const struct shard_answer *ans, int use_color)
{
	struct libscols_table *t = scols_new_table();
	struct libscols_table *nt = scols_new_table();
	char buf[64];

	scols_table_enable_colors(t, use_color);
	scols_table_enable_colors(nt, use_color);
	scols_table_new_column(t, "SHARD", 0, 0);
	scols_table_new_column(t, "ADDRESS", 0, 0);
	scols_table_new_column(t, "STATE", 0, 0);
	scols_table_new_column(t, "UPTIME", 0, SCOLS_FL_RIGHT);
	scols_table_new_column(t, "NODES", 0, SCOLS_FL_RIGHT);
	scols_table_new_column(t, "DETAIL", 0, SCOLS_FL_WRAP);
	scols_table_new_column(nt, "NODE", 0, 0);
	scols_table_new_column(nt, "SHARD", 0, 0);
	scols_table_new_column(nt, "RACK", 0, 0);
	scols_table_new_column(nt, "STATE", 0, 0);
	scols_table_new_column(nt, "ADDRESS", 0, 0);
	scols_table_new_column(nt, "LAST SEEN", 0, SCOLS_FL_RIGHT);
	for (unsigned i = 0; i < cfg->nshards; i++) {
		const struct shard_answer *a = &ans[i];
		struct libscols_line *ln = scols_table_new_line(t, NULL);

		snprintf(buf, sizeof(buf), "%u", i);
		cell(ln, 0, buf, NULL, 0);
		cell(ln, 1, cfg->shards[i].address, NULL, 0);
		cell(ln, 2, a->rc ? "down" : "up", a->rc ? "red" : "green", use_color);
		if (!a->rep) {
			cell(ln, 5, a->err, NULL, 0);
			continue;
		}
		snprintf(buf, sizeof(buf), "%llus", (unsigned long long)(a->rep->uptime_ms / 1000));
		cell(ln, 3, buf, NULL, 0);
		snprintf(buf, sizeof(buf), "%zu", a->rep->n_nodes);
		cell(ln, 4, buf, NULL, 0);
		cell(ln, 5, a->rep->version, NULL, 0);
		for (size_t n = 0; n < a->rep->n_nodes; n++) {
			const Cksm__NodeStatus *ns = a->rep->nodes[n];
			struct libscols_line *nl = scols_table_new_line(nt, NULL);

			cell(nl, 0, ns->name, NULL, 0);
			snprintf(buf, sizeof(buf), "%u", i);
			cell(nl, 1, buf, NULL, 0);
			cell(nl, 2, ns->rack, NULL, 0);
			cell(nl, 3, ns->live ? "live" : "dead", ns->live ? "green" : "red",
			     use_color);
			cell(nl, 4, ns->address, NULL, 0);
			snprintf(buf, sizeof(buf), "%.1fs", ns->last_seen_ms / 1000.0);
			cell(nl, 5, buf, NULL, 0);
		}
	}
	scols_print_table(t);
	if (scols_table_get_nlines(nt)) {
		putchar('\n');
		scols_print_table(nt);
	} else {
		printf("\nno nodes registered\n");
	}
	scols_unref_table(t);
	scols_unref_table(nt);
}

static int cmd_status(const struct config *cfg, const struct auth_key *key, const struct opts *o)
{
	struct shard_answer ans[CONFIG_MAX_SHARDS];
	int rc = 0;

	memset(ans, 0, sizeof(ans));
	for (unsigned i = 0; i < cfg->nshards; i++) {
		ask_shard(cfg, key, i, o->timeout_ms, &ans[i]);
		if (ans[i].rc)
			rc = EXIT_DOWN;
		for (size_t n = 0; ans[i].rep && n < ans[i].rep->n_nodes; n++)
			if (!ans[i].rep->nodes[n]->live)
				rc = EXIT_DOWN;
	}
	if (o->json) {
		json_t *j = status_json(cfg, ans);

		json_dumpf(j, stdout, JSON_INDENT(2) | JSON_SORT_KEYS);
		putchar('\n');
		json_decref(j);
	} else {
		print_text(cfg, ans, o->color);
	}
	for (unsigned i = 0; i < cfg->nshards; i++) {
		if (ans[i].rc && !o->json)
			fprintf(stderr, "cksmctl: shard %u unreachable: %s\n", i, ans[i].err);
		if (ans[i].msg)
			cksm__msg__free_unpacked(ans[i].msg, NULL);
	}
	return rc;
}

int main(int argc, char **argv)
{
	static const struct option lopts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "output", required_argument, NULL, 'o' },
		{ "timeout", required_argument, NULL, 't' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct opts o = { .config = CONFIG_DEFAULT_PATH, .timeout_ms = 3000 };
	static struct config cfg;
	struct auth_key key;
	char err[512] = "cannot initialise libsodium", *end;
	int c;

	while ((c = getopt_long(argc, argv, "+c:o:t:h", lopts, NULL)) != -1) {
		switch (c) {
		case 'c':
			o.config = optarg;
			o.config_named = 1;
			break;
		case 'o':
			if (strcmp(optarg, "json") && strcmp(optarg, "text")) {
				fprintf(stderr, "cksmctl: -o: expected text or json, got '%s'\n",
					optarg);
				return EXIT_USAGE;
			}
			o.json = strcmp(optarg, "json") == 0;
			break;
		case 't':
			o.timeout_ms = (int)strtol(optarg, &end, 10);
			if (*end || o.timeout_ms <= 0) {
				fprintf(stderr, "cksmctl: -t: expected milliseconds, got '%s'\n",
					optarg);
				return EXIT_USAGE;
			}
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return EXIT_USAGE;
		}
	}
	if (optind != argc - 1) {
		usage(stderr);
		return EXIT_USAGE;
	}
	if (strcmp(argv[optind], "status") != 0) {
		fprintf(stderr, "cksmctl: unknown command '%s'\n", argv[optind]);
		usage(stderr);
		return EXIT_USAGE;
	}
	o.color = isatty(STDOUT_FILENO) && !getenv("NO_COLOR");
	config_defaults(&cfg);
	if (config_load_default(&cfg, o.config, o.config_named, stderr) ||
	    config_finish(&cfg, stderr))
		return EXIT_USAGE;
	if (auth_init() || auth_key_load(&key, cfg.key_file, err, sizeof(err))) {
		fprintf(stderr, "cksmctl: %s\n", err);
		return EXIT_USAGE;
	}
	return cmd_status(&cfg, &key, &o);
}
