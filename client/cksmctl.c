/*
 * cksmctl - the cksm admin CLI.
 *
 *   cksmctl [-c FILE] [-o text|json] [-t MS] COMMAND [--help]
 *
 * Commands: status, nodes, stats, matrix, top, tree (docs/cli.md has the
 * JSON schema of each).
 * Speaks the authenticated admin protocol to every shard of the shard map
 * in the configuration. Exit codes: 0 everything answered and every node
 * is live; 1 a shard is unreachable or a node is dead (the output names
 * which); 2 bad usage or configuration.
 */
#include <errno.h>
#include <stdbool.h>
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
	int rc;			 /* 0 or the negative errno of the failure */
	char err[512];		 /* what failed, when rc != 0 */
	Cksm__AdminReply *rep;	 /* the status answer, when rc == 0 */
	Cksm__StatsReply *stats; /* the stats answer, when rc == 0 */
	Cksm__Msg *msg;		 /* owns rep or stats */
};

struct opts {
	const char *config;
	int config_named; /* given with -c */
	int json;
	int timeout_ms;
	int color;
	int nodes_only;	 /* status: print the nodes alone */
	const char *arg; /* the command's argument, if it takes one */
};

static void usage(FILE *out)
{
	fprintf(out,
		"usage: cksmctl [options] COMMAND [--help]\n"
		"\n"
		"commands:\n"
		"  status    shards and nodes, and whether each is up\n"
		"  nodes     the nodes the shards know, live or dead\n"
		"  stats     KSM's counters, cluster-wide and per node, and the memory saved\n"
		"  matrix    pages each node backs from dups on each node\n"
		"  top       processes and cgroups by shareable memory\n"
		"  tree ID   one content: its shard's entry, dups and references\n"
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

/* Send one request to a shard and keep its answer (of body `want`) in a. */
static void ask(const struct config *cfg, const struct auth_key *key, unsigned shard,
		int timeout_ms, const Cksm__Msg *out, Cksm__Msg__BodyCase want,
		struct shard_answer *a)
{
	struct sconn s;
	int rc;

	rc = sconn_open(&s, cfg->shards[shard].address, key, CKSM__ROLE__ROLE_ADMIN, "cksmctl",
			timeout_ms, a->err, sizeof(a->err));
	if (rc) {
		a->rc = rc;
		return;
	}
	rc = sconn_send(&s, out);
	if (!rc)
		a->msg = sconn_recv(&s, &rc);
	if (!a->msg || a->msg->body_case != want) {
		a->rc = rc ? rc : -EPROTO;
		snprintf(a->err, sizeof(a->err), "%s: no answer (%s)", cfg->shards[shard].address,
			 rc ? strerror(-rc) : "unexpected message");
	} else if (want == CKSM__MSG__BODY_ADMIN_REPLY && a->msg->admin_reply->status) {
		a->rc = a->msg->admin_reply->status;
		snprintf(a->err, sizeof(a->err), "%s: %s", cfg->shards[shard].address,
			 a->msg->admin_reply->error);
	} else if (want == CKSM__MSG__BODY_ADMIN_REPLY) {
		a->rep = a->msg->admin_reply;
	} else {
		a->stats = a->msg->stats_reply;
	}
	sconn_close(&s);
}

/* Send one admin command (with arg, if not NULL) to a shard. */
static void ask_admin(const struct config *cfg, const struct auth_key *key, unsigned shard,
		      int timeout_ms, Cksm__AdminCommand command, const char *arg,
		      struct shard_answer *a)
{
	Cksm__Msg out = CKSM__MSG__INIT;
	Cksm__AdminRequest req = CKSM__ADMIN_REQUEST__INIT;
	char *args[1] = { (char *)arg };

	req.command = command;
	if (arg) {
		req.n_args = 1;
		req.args = args;
	}
	out.body_case = CKSM__MSG__BODY_ADMIN_REQUEST;
	out.admin_request = &req;
	ask(cfg, key, shard, timeout_ms, &out, CKSM__MSG__BODY_ADMIN_REPLY, a);
}

static void ask_shard(const struct config *cfg, const struct auth_key *key, unsigned shard,
		      int timeout_ms, struct shard_answer *a)
{
	ask_admin(cfg, key, shard, timeout_ms, CKSM__ADMIN_COMMAND__ADMIN_STATUS, NULL, a);
}

static void ask_stats(const struct config *cfg, const struct auth_key *key, unsigned shard,
		      int timeout_ms, struct shard_answer *a)
{
	Cksm__Msg out = CKSM__MSG__INIT;
	Cksm__StatsRequest req = CKSM__STATS_REQUEST__INIT;

	req.per_node = true;
	out.body_case = CKSM__MSG__BODY_STATS_REQUEST;
	out.stats_request = &req;
	ask(cfg, key, shard, timeout_ms, &out, CKSM__MSG__BODY_STATS_REPLY, a);
}

/* Print j as every command's JSON output is printed, and free it. */
static void print_json(json_t *j)
{
	json_dumpf(j, stdout, JSON_INDENT(2) | JSON_SORT_KEYS);
	putchar('\n');
	json_decref(j);
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

/* nodes -o json: every node as each shard sees it, flat. */
static json_t *nodes_json(const struct config *cfg, const struct shard_answer *ans)
{
	json_t *root = json_object(), *nodes = json_array();

	for (unsigned i = 0; i < cfg->nshards; i++)
		for (size_t n = 0; ans[i].rep && n < ans[i].rep->n_nodes; n++) {
			const Cksm__NodeStatus *ns = ans[i].rep->nodes[n];

			json_array_append_new(
				nodes, json_pack("{s:I,s:I,s:s,s:s,s:b,s:s,s:I}", "shard",
						 (json_int_t)i, "node_id", (json_int_t)ns->node_id,
						 "name", ns->name, "rack", ns->rack, "live",
						 ns->live, "address", ns->address, "last_seen_ms",
						 (json_int_t)ns->last_seen_ms));
		}
	json_object_set_new(root, "nodes", nodes);
	return root;
}

static void print_text(const struct config *cfg, const struct shard_answer *ans, int use_color,
		       int nodes_only)
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
	if (!nodes_only)
		scols_print_table(t);
	if (scols_table_get_nlines(nt)) {
		if (!nodes_only)
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
	if (o->json && o->nodes_only)
		print_json(nodes_json(cfg, ans));
	else if (o->json)
		print_json(status_json(cfg, ans));
	else
		print_text(cfg, ans, o->color, o->nodes_only);
	for (unsigned i = 0; i < cfg->nshards; i++) {
		if (ans[i].rc && !o->json)
			fprintf(stderr, "cksmctl: shard %u unreachable: %s\n", i, ans[i].err);
		if (ans[i].msg)
			cksm__msg__free_unpacked(ans[i].msg, NULL);
	}
	return rc;
}

/* ---- stats, nodes and matrix ----------------------------------------------- */

/* 1536 -> "1.5 KiB": IEC units, as ls -h and free -h print them. */
static const char *iec(uint64_t bytes, char *buf, size_t len)
{
	static const char *const unit[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB" };
	double v = (double)bytes;
	int u = 0;

	while (v >= 1024 && u < 5) {
		v /= 1024;
		u++;
	}
	if (u == 0)
		snprintf(buf, len, "%llu B", (unsigned long long)bytes);
	else
		snprintf(buf, len, "%.1f %s", v, unit[u]);
	return buf;
}

/* Per-node figures summed over shards. */
struct node_sum {
	uint32_t id;
	const char *name;
	uint64_t held; /* dups in its pool */
	uint64_t refs; /* its pages backed by dups */
};

static struct node_sum *node_of(struct node_sum *v, size_t *n, uint32_t id, const char *name)
{
	for (size_t i = 0; i < *n; i++)
		if (v[i].id == id)
			return &v[i];
	v[*n] = (struct node_sum){ id, name, 0, 0 };
	return &v[(*n)++];
}

/* Ask every shard for stats; returns EXIT_DOWN if one did not answer. */
static int gather_stats(const struct config *cfg, const struct auth_key *key, const struct opts *o,
			struct shard_answer *ans)
{
	int rc = 0;

	memset(ans, 0, CONFIG_MAX_SHARDS * sizeof(*ans));
	for (unsigned i = 0; i < cfg->nshards; i++) {
		ask_stats(cfg, key, i, o->timeout_ms, &ans[i]);
		if (ans[i].rc) {
			rc = EXIT_DOWN;
			fprintf(stderr, "cksmctl: shard %u unreachable: %s\n", i, ans[i].err);
		}
	}
	return rc;
}

static void free_answers(const struct config *cfg, struct shard_answer *ans)
{
	for (unsigned i = 0; i < cfg->nshards; i++)
		if (ans[i].msg)
			cksm__msg__free_unpacked(ans[i].msg, NULL);
}

static json_t *shards_json(const struct config *cfg, const struct shard_answer *ans)
{
	json_t *a = json_array();

	for (unsigned i = 0; i < cfg->nshards; i++)
		json_array_append_new(
			a, json_pack("{s:I,s:s,s:b,s:o}", "id", (json_int_t)i, "address",
				     cfg->shards[i].address, "up", ans[i].rc == 0, "error",
				     ans[i].rc ? json_string(ans[i].err) : json_null()));
	return a;
}

/* The census as JSON (sizes in bytes), or null before the first one. */
static json_t *census_json(const Cksm__Census *c)
{
	json_t *j, *nodes;

	if (!c)
		return json_null();
	nodes = json_array();
	for (size_t i = 0; i < c->n_nodes; i++)
		json_array_append_new(
			nodes,
			json_pack("{s:I,s:I,s:I,s:I}", "node_id", (json_int_t)c->nodes[i]->node_id,
				  "stable_bytes", (json_int_t)(c->nodes[i]->stable_pages * 4096),
				  "zero_bytes", (json_int_t)(c->nodes[i]->zero_pages * 4096),
				  "local_saveable_bytes",
				  (json_int_t)(c->nodes[i]->local_saveable_pages * 4096)));
	j = json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:o}", "stable_bytes",
		      (json_int_t)(c->stable_pages * 4096), "zero_bytes",
		      (json_int_t)(c->zero_pages * 4096), "local_saveable_bytes",
		      (json_int_t)(c->local_saveable_pages * 4096), "cluster_saveable_bytes",
		      (json_int_t)(c->cluster_saveable_pages * 4096), "cluster_adds_bytes",
		      (json_int_t)((c->cluster_saveable_pages - c->local_saveable_pages) * 4096),
		      "cluster_copies_kept", (json_int_t)c->copies_kept, "nodes", nodes);
	return j;
}

#define MAX_NODES 8192

/* The stats of every shard, added up. */
struct stats_sum {
	uint64_t shared, sharing, unshared, chains, dups;
	const Cksm__Census *census; /* shard 0's (it adds the census up), or NULL */
	struct node_sum nodes[MAX_NODES];
	size_t nn;
};

static void sum_nodes(struct stats_sum *s, const Cksm__StatsReply *st)
{
	for (size_t k = 0; k < st->n_nodes && s->nn < MAX_NODES; k++) {
		struct node_sum *ns =
			node_of(s->nodes, &s->nn, st->nodes[k]->node_id, st->nodes[k]->node_name);

		if (st->nodes[k]->counters) {
			ns->held += st->nodes[k]->counters->pages_shared;
			ns->refs += st->nodes[k]->counters->pages_sharing;
		}
	}
}

static void sum_stats(const struct config *cfg, const struct shard_answer *ans, struct stats_sum *s)
{
	memset(s, 0, sizeof(*s));
	for (unsigned i = 0; i < cfg->nshards; i++) {
		const Cksm__StatsReply *st = ans[i].stats;

		if (!st)
			continue;
		if (st->cluster) {
			s->shared += st->cluster->pages_shared;
			s->sharing += st->cluster->pages_sharing;
			s->unshared += st->cluster->pages_unshared;
		}
		s->chains += st->stable_node_chains;
		s->dups += st->stable_node_dups;
		if (st->census && i == 0)
			s->census = st->census;
		sum_nodes(s, st);
	}
}

/*
 * The pages the nodes' processes no longer hold, less the pool pages that
 * hold their contents (every replica counted): what the cluster saves.
 */
static int64_t net_saved(const struct stats_sum *s)
{
	int64_t n = 0;

	for (size_t k = 0; k < s->nn; k++)
		n += (int64_t)s->nodes[k].refs - (int64_t)s->nodes[k].held;
	return n * 4096;
}

static void print_stats_json(const struct config *cfg, const struct shard_answer *ans,
			     const struct stats_sum *s)
{
	json_t *root = json_object(), *jn = json_array();

	json_object_set_new(root, "shards", shards_json(cfg, ans));
	json_object_set_new(
		root, "cluster",
		json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "pages_shared", (json_int_t)s->shared,
			  "pages_sharing", (json_int_t)s->sharing, "pages_unshared",
			  (json_int_t)s->unshared, "stable_node_chains", (json_int_t)s->chains,
			  "stable_node_dups", (json_int_t)s->dups, "saved_bytes",
			  (json_int_t)(s->sharing * 4096), "net_saved_bytes",
			  (json_int_t)net_saved(s)));
	for (size_t k = 0; k < s->nn; k++)
		json_array_append_new(jn, json_pack("{s:I,s:s,s:I,s:I}", "node_id",
						    (json_int_t)s->nodes[k].id, "name",
						    s->nodes[k].name, "dups_held",
						    (json_int_t)s->nodes[k].held, "pages_backed",
						    (json_int_t)s->nodes[k].refs));
	json_object_set_new(root, "nodes", jn);
	json_object_set_new(root, "census", census_json(s->census));
	print_json(root);
}

static void print_census_text(const Cksm__Census *cen)
{
	char b1[32], b2[32], b3[32], b4[32], b5[32];

	if (!cen) {
		printf("census: none yet (nodes send one after each full scan)\n\n");
		return;
	}
	printf("census: %s in stable pages and %s in zero pages; node-local merging (KSM) "
	       "could save %s, merging across the cluster %s (%s more, %u %s of each shared "
	       "content kept)\n\n",
	       iec(cen->stable_pages * 4096, b1, sizeof(b1)),
	       iec(cen->zero_pages * 4096, b2, sizeof(b2)),
	       iec(cen->local_saveable_pages * 4096, b3, sizeof(b3)),
	       iec(cen->cluster_saveable_pages * 4096, b4, sizeof(b4)),
	       iec((cen->cluster_saveable_pages - cen->local_saveable_pages) * 4096, b5,
		   sizeof(b5)),
	       cen->copies_kept, cen->copies_kept == 1 ? "copy" : "copies");
}

static void print_node_sums(const struct stats_sum *s)
{
	struct libscols_table *t = scols_new_table();

	scols_table_new_column(t, "NODE", 0, 0);
	scols_table_new_column(t, "ID", 0, SCOLS_FL_RIGHT);
	scols_table_new_column(t, "DUPS HELD", 0, SCOLS_FL_RIGHT);
	scols_table_new_column(t, "PAGES BACKED", 0, SCOLS_FL_RIGHT);
	for (size_t k = 0; k < s->nn; k++) {
		struct libscols_line *ln = scols_table_new_line(t, NULL);
		char b[32];

		scols_line_set_data(ln, 0, s->nodes[k].name);
		snprintf(b, sizeof(b), "%u", s->nodes[k].id);
		scols_line_set_data(ln, 1, b);
		snprintf(b, sizeof(b), "%llu", (unsigned long long)s->nodes[k].held);
		scols_line_set_data(ln, 2, b);
		snprintf(b, sizeof(b), "%llu", (unsigned long long)s->nodes[k].refs);
		scols_line_set_data(ln, 3, b);
	}
	if (s->nn)
		scols_print_table(t);
	else
		printf("no nodes registered\n");
	scols_unref_table(t);
}

static void print_stats_text(const struct stats_sum *s)
{
	char b[32];

	print_census_text(s->census);
	printf("pages_shared        %llu\npages_sharing       %llu\npages_unshared      %llu\n"
	       "stable_node_chains  %llu\nstable_node_dups    %llu\nsaved               %s\n",
	       (unsigned long long)s->shared, (unsigned long long)s->sharing,
	       (unsigned long long)s->unshared, (unsigned long long)s->chains,
	       (unsigned long long)s->dups, iec(s->sharing * 4096, b, sizeof(b)));
	printf("net saved           %s%s (pages backed less the pool's dups, every replica)\n\n",
	       net_saved(s) < 0 ? "-" : "",
	       iec((uint64_t)(net_saved(s) < 0 ? -net_saved(s) : net_saved(s)), b, sizeof(b)));
	print_node_sums(s);
}

/* stats: KSM's counters over every shard, per node, and shard 0's census. */
static int cmd_stats(const struct config *cfg, const struct auth_key *key, const struct opts *o)
{
	struct shard_answer ans[CONFIG_MAX_SHARDS];
	static struct stats_sum sum;
	int rc = gather_stats(cfg, key, o, ans);

	sum_stats(cfg, ans, &sum);
	if (o->json)
		print_stats_json(cfg, ans, &sum);
	else
		print_stats_text(&sum);
	free_answers(cfg, ans);
	return rc;
}

static int cmd_matrix(const struct config *cfg, const struct auth_key *key, const struct opts *o)
{
	struct shard_answer ans[CONFIG_MAX_SHARDS];
	static struct node_sum nodes[MAX_NODES];
	static struct {
		uint32_t from, to;
		uint64_t pages;
	} cells[65536];
	size_t nn = 0, nc = 0;
	int rc = gather_stats(cfg, key, o, ans);

	for (unsigned i = 0; i < cfg->nshards; i++) {
		const Cksm__StatsReply *st = ans[i].stats;

		for (size_t k = 0; st && k < st->n_nodes && nn < MAX_NODES; k++)
			node_of(nodes, &nn, st->nodes[k]->node_id, st->nodes[k]->node_name);
		for (size_t k = 0; st && k < st->n_matrix; k++) {
			const Cksm__MatrixCell *m = st->matrix[k];
			size_t j;

			for (j = 0; j < nc; j++)
				if (cells[j].from == m->from && cells[j].to == m->to)
					break;
			if (j == nc && nc < 65536)
				cells[nc++] = (typeof(cells[0])){ m->from, m->to, 0 };
			if (j < nc)
				cells[j].pages += m->pages;
		}
	}
	if (o->json) {
		json_t *root = json_object(), *jn = json_array(), *jc = json_array();

		for (size_t k = 0; k < nn; k++)
			json_array_append_new(jn, json_pack("{s:I,s:s}", "node_id",
							    (json_int_t)nodes[k].id, "name",
							    nodes[k].name));
		for (size_t k = 0; k < nc; k++)
			json_array_append_new(jc, json_pack("{s:I,s:I,s:I,s:I}", "from",
							    (json_int_t)cells[k].from, "to",
							    (json_int_t)cells[k].to, "pages",
							    (json_int_t)cells[k].pages, "bytes",
							    (json_int_t)(cells[k].pages * 4096)));
		json_object_set_new(root, "shards", shards_json(cfg, ans));
		json_object_set_new(root, "nodes", jn);
		json_object_set_new(root, "cells", jc);
		print_json(root);
	} else {
		struct libscols_table *t = scols_new_table();

		scols_table_new_column(t, "NODE", 0, 0);
		scols_table_new_column(t, "BACKED FROM", 0, 0);
		scols_table_new_column(t, "PAGES", 0, SCOLS_FL_RIGHT);
		scols_table_new_column(t, "SIZE", 0, SCOLS_FL_RIGHT);
		for (size_t k = 0; k < nc; k++) {
			struct libscols_line *ln = scols_table_new_line(t, NULL);
			char b[32];

			scols_line_set_data(ln, 0, node_of(nodes, &nn, cells[k].from, "?")->name);
			scols_line_set_data(ln, 1, node_of(nodes, &nn, cells[k].to, "?")->name);
			snprintf(b, sizeof(b), "%llu", (unsigned long long)cells[k].pages);
			scols_line_set_data(ln, 2, b);
			scols_line_set_data(ln, 3, iec(cells[k].pages * 4096, b, sizeof(b)));
		}
		if (nc)
			scols_print_table(t);
		else
			printf("no node backs pages from another's dups\n");
		scols_unref_table(t);
	}
	free_answers(cfg, ans);
	return rc;
}

/* status, nodes only: the nodes table, or {"nodes":[...]} */
static int cmd_nodes(const struct config *cfg, const struct auth_key *key, const struct opts *o)
{
	struct opts no = *o;

	no.nodes_only = 1;
	return cmd_status(cfg, key, &no);
}

/* A content id as cksmctl takes it: 32 hex digits. 0 or -EINVAL. */
static int parse_id(const char *arg, uint64_t *lo)
{
	unsigned long long hi, l;
	int n = 0;

	if (strlen(arg) != 32 || sscanf(arg, "%16llx%16llx%n", &hi, &l, &n) != 2 || n != 32)
		return -EINVAL;
	*lo = l;
	return 0;
}

static json_t *tree_dup_json(const Cksm__TreeDup *d)
{
	json_t *refs = json_array();

	for (size_t k = 0; k < d->n_refs; k++)
		json_array_append_new(refs, json_pack("{s:I,s:I}", "node_id",
						      (json_int_t)d->refs[k]->node_id, "pages",
						      (json_int_t)d->refs[k]->pages));
	return json_pack("{s:I,s:I,s:I,s:I,s:o}", "node_id", (json_int_t)d->dup->node_id, "slot",
			 (json_int_t)d->dup->slot, "generation", (json_int_t)d->dup->generation,
			 "total", (json_int_t)d->total, "refs", refs);
}

static void print_tree_json(const char *id, int shard, const Cksm__ContentTree *t)
{
	json_t *dups = json_array();

	for (size_t i = 0; t && i < t->n_dups; i++)
		json_array_append_new(dups, tree_dup_json(t->dups[i]));
	print_json(json_pack("{s:s,s:I,s:b,s:b,s:o,s:o}", "id", id, "shard", (json_int_t)shard,
			     "in_tree", t && t->in_tree, "seen", t && t->seen, "pending_node",
			     t && t->pending_node ? json_integer(t->pending_node) : json_null(),
			     "dups", dups));
}

/* The node's name in a status answer (NULL: none came), or "?". */
static const char *node_name(const Cksm__AdminReply *status, uint32_t node_id)
{
	const char *name = "?";

	for (size_t m = 0; status && m < status->n_nodes; m++)
		if (status->nodes[m]->node_id == node_id)
			name = status->nodes[m]->name;
	return name;
}

static void print_tree_dup(const Cksm__TreeDup *d, const Cksm__AdminReply *status)
{
	printf("  dup on node %u, slot %llu, generation %u: %u reference%s\n", d->dup->node_id,
	       (unsigned long long)d->dup->slot, d->dup->generation, d->total,
	       d->total == 1 ? "" : "s");
	for (size_t k = 0; k < d->n_refs; k++)
		printf("    %s (%u): %u page%s\n", node_name(status, d->refs[k]->node_id),
		       d->refs[k]->node_id, d->refs[k]->pages, d->refs[k]->pages == 1 ? "" : "s");
}

static void print_tree_text(const char *id, int shard, const Cksm__ContentTree *t,
			    const Cksm__AdminReply *status)
{
	printf("content %s (shard %d): %s\n", id, shard,
	       !t	    ? "no answer"
	       : t->in_tree ? "in the stable tree"
	       : t->seen    ? "seen once (in the unstable filter)"
			    : "not known to its shard");
	if (t && t->pending_node)
		printf("  a dup is ordered from node %u\n", t->pending_node);
	for (size_t i = 0; t && i < t->n_dups; i++)
		print_tree_dup(t->dups[i], status);
}

/* tree ID: the content's entry, asked of the shard owning its bucket. */
static int cmd_tree(const struct config *cfg, const struct auth_key *key, const struct opts *o)
{
	struct shard_answer a, st;
	uint64_t lo;
	int shard;

	if (parse_id(o->arg, &lo)) {
		fprintf(stderr, "cksmctl: tree: a content id is 32 hex digits, got '%s'\n", o->arg);
		return EXIT_USAGE;
	}
	shard = config_bucket_shard(cfg, (uint32_t)(lo & (cfg->buckets - 1)));
	memset(&a, 0, sizeof(a));
	memset(&st, 0, sizeof(st));
	ask_admin(cfg, key, (unsigned)shard, o->timeout_ms, CKSM__ADMIN_COMMAND__ADMIN_TREE, o->arg,
		  &a);
	if (a.rc) {
		fprintf(stderr, "cksmctl: shard %d: %s\n", shard, a.err);
		if (a.msg)
			cksm__msg__free_unpacked(a.msg, NULL);
		return EXIT_DOWN;
	}
	ask_shard(cfg, key, (unsigned)shard, o->timeout_ms, &st); /* node names */
	if (o->json)
		print_tree_json(o->arg, shard, a.rep->tree);
	else
		print_tree_text(o->arg, shard, a.rep->tree, st.rep);
	cksm__msg__free_unpacked(a.msg, NULL);
	if (st.msg)
		cksm__msg__free_unpacked(st.msg, NULL);
	return 0;
}

#define TOP_TEXT_ROWS 20 /* rows of each table in text; JSON lists every one */

static uint64_t proc_shareable(const Cksm__ProcessUsage *p)
{
	return p->zero_pages + p->shared_pages;
}

static uint64_t group_shareable(const Cksm__CgroupUsage *g)
{
	return g->zero_pages + g->shared_pages;
}

static int proc_order(const void *x, const void *y)
{
	const Cksm__ProcessUsage *a = *(Cksm__ProcessUsage *const *)x,
				 *b = *(Cksm__ProcessUsage *const *)y;

	if (proc_shareable(a) != proc_shareable(b))
		return proc_shareable(a) > proc_shareable(b) ? -1 : 1;
	if (a->node_id != b->node_id)
		return a->node_id < b->node_id ? -1 : 1;
	return a->pid < b->pid ? -1 : a->pid > b->pid;
}

static int group_order(const void *x, const void *y)
{
	const Cksm__CgroupUsage *a = *(Cksm__CgroupUsage *const *)x,
				*b = *(Cksm__CgroupUsage *const *)y;

	if (group_shareable(a) != group_shareable(b))
		return group_shareable(a) > group_shareable(b) ? -1 : 1;
	if (a->node_id != b->node_id)
		return a->node_id < b->node_id ? -1 : 1;
	return strcmp(a->cgroup, b->cgroup);
}

static json_t *usage_json(const char *cgroup, uint64_t stable, uint64_t zero, uint64_t shared,
			  uint32_t node_id, const char *node)
{
	return json_pack("{s:s,s:I,s:s,s:I,s:I,s:I,s:I}", "cgroup", cgroup, "node_id",
			 (json_int_t)node_id, "node", node, "stable_bytes",
			 (json_int_t)(stable * 4096), "zero_bytes", (json_int_t)(zero * 4096),
			 "shared_bytes", (json_int_t)(shared * 4096), "shareable_bytes",
			 (json_int_t)((zero + shared) * 4096));
}

static void size_cell(struct libscols_line *ln, int col, uint64_t pages)
{
	char b[32];

	scols_line_set_data(ln, col, iec(pages * 4096, b, sizeof(b)));
}

static json_t *processes_json(const Cksm__AdminReply *r)
{
	json_t *jp = json_array();

	for (size_t i = 0; i < r->n_processes; i++) {
		const Cksm__ProcessUsage *p = r->processes[i];
		json_t *j = usage_json(p->cgroup, p->stable_pages, p->zero_pages, p->shared_pages,
				       p->node_id, p->node_name);

		json_object_set_new(j, "pid", json_integer(p->pid));
		json_object_set_new(j, "comm", json_string(p->comm));
		json_object_set_new(j, "refaults", json_integer((json_int_t)p->refaults));
		json_object_set_new(j, "fault_seconds", json_real((double)p->fault_nanos / 1e9));
		json_object_set_new(j, "fault_share", json_real((double)p->fault_ppm / 1e6));
		json_array_append_new(jp, j);
	}
	return jp;
}

static json_t *cgroups_json(const Cksm__AdminReply *r)
{
	json_t *jg = json_array();

	for (size_t i = 0; i < r->n_cgroups; i++) {
		const Cksm__CgroupUsage *g = r->cgroups[i];
		json_t *j = usage_json(g->cgroup, g->stable_pages, g->zero_pages, g->shared_pages,
				       g->node_id, g->node_name);

		json_object_set_new(j, "processes", json_integer(g->processes));
		json_array_append_new(jg, j);
	}
	return jg;
}

static void print_top_json(const Cksm__AdminReply *r)
{
	json_t *root = json_object();

	json_object_set_new(root, "processes", processes_json(r));
	json_object_set_new(root, "cgroups", cgroups_json(r));
	print_json(root);
}

static void print_processes_table(const Cksm__AdminReply *r)
{
	static const char *const cols[] = { "NODE", "PID",    "COMMAND",  "SHAREABLE", "SHARED",
					    "ZERO", "STABLE", "REFAULTS", "IN FAULTS", "CGROUP" };
	struct libscols_table *t = scols_new_table();

	for (size_t c = 0; c < 10; c++)
		scols_table_new_column(t, cols[c], 0,
				       c == 1 || (c >= 3 && c <= 8) ? SCOLS_FL_RIGHT : 0);
	for (size_t i = 0; i < r->n_processes && i < TOP_TEXT_ROWS; i++) {
		const Cksm__ProcessUsage *p = r->processes[i];
		struct libscols_line *ln = scols_table_new_line(t, NULL);
		char b[24];

		scols_line_set_data(ln, 0, p->node_name);
		snprintf(b, sizeof(b), "%u", p->pid);
		scols_line_set_data(ln, 1, b);
		scols_line_set_data(ln, 2, p->comm);
		size_cell(ln, 3, proc_shareable(p));
		size_cell(ln, 4, p->shared_pages);
		size_cell(ln, 5, p->zero_pages);
		size_cell(ln, 6, p->stable_pages);
		snprintf(b, sizeof(b), "%llu", (unsigned long long)p->refaults);
		scols_line_set_data(ln, 7, b);
		snprintf(b, sizeof(b), "%.2f%%", (double)p->fault_ppm / 1e4);
		scols_line_set_data(ln, 8, b);
		scols_line_set_data(ln, 9, p->cgroup);
	}
	scols_print_table(t);
	scols_unref_table(t);
}

static void print_cgroups_table(const Cksm__AdminReply *r)
{
	static const char *const cols[] = { "NODE",   "CGROUP", "PROCS", "SHAREABLE",
					    "SHARED", "ZERO",	"STABLE" };
	struct libscols_table *t = scols_new_table();

	for (size_t c = 0; c < 7; c++)
		scols_table_new_column(t, cols[c], 0, c >= 2 ? SCOLS_FL_RIGHT : 0);
	for (size_t i = 0; i < r->n_cgroups && i < TOP_TEXT_ROWS; i++) {
		const Cksm__CgroupUsage *g = r->cgroups[i];
		struct libscols_line *ln = scols_table_new_line(t, NULL);
		char b[16];

		scols_line_set_data(ln, 0, g->node_name);
		scols_line_set_data(ln, 1, g->cgroup[0] ? g->cgroup : "-");
		snprintf(b, sizeof(b), "%u", g->processes);
		scols_line_set_data(ln, 2, b);
		size_cell(ln, 3, group_shareable(g));
		size_cell(ln, 4, g->shared_pages);
		size_cell(ln, 5, g->zero_pages);
		size_cell(ln, 6, g->stable_pages);
	}
	scols_print_table(t);
	scols_unref_table(t);
}

static void print_top_text(const Cksm__AdminReply *r)
{
	if (!r->n_processes) {
		printf("no node has reported a full scan to shard 0 yet\n");
		return;
	}
	print_processes_table(r);
	putchar('\n');
	print_cgroups_table(r);
}

/* top: processes and cgroups by shareable memory, from shard 0. */
static int cmd_top(const struct config *cfg, const struct auth_key *key, const struct opts *o)
{
	struct shard_answer a;
	const Cksm__AdminReply *r;

	memset(&a, 0, sizeof(a));
	ask_admin(cfg, key, 0, o->timeout_ms, CKSM__ADMIN_COMMAND__ADMIN_TOP, NULL, &a);
	if (a.rc) {
		fprintf(stderr, "cksmctl: shard 0 unreachable: %s\n", a.err);
		if (a.msg)
			cksm__msg__free_unpacked(a.msg, NULL);
		return EXIT_DOWN;
	}
	r = a.rep;
	if (r->n_processes) /* none: protobuf-c leaves the array NULL */
		qsort(r->processes, r->n_processes, sizeof(*r->processes), proc_order);
	if (r->n_cgroups)
		qsort(r->cgroups, r->n_cgroups, sizeof(*r->cgroups), group_order);
	if (o->json)
		print_top_json(r);
	else
		print_top_text(r);
	cksm__msg__free_unpacked(a.msg, NULL);
	return 0;
}

static const struct command {
	const char *name;
	int (*fn)(const struct config *cfg, const struct auth_key *key, const struct opts *o);
	const char *help;
	int nargs;
} commands[] = {
	{ "status", cmd_status,
	  "usage: cksmctl [options] status\n\nShards and the nodes each knows: up or down, live or dead.\n"
	  "Exit status 1 when a shard is unreachable or a node is dead.\n" },
	{ "nodes", cmd_nodes,
	  "usage: cksmctl [options] nodes\n\nThe nodes the shards know: name, shard, rack, state, address,\n"
	  "time since the last heartbeat. Exit status 1 when a shard is unreachable or a node is dead.\n" },
	{ "stats", cmd_stats,
	  "usage: cksmctl [options] stats\n\nKSM's counters summed over the shards (pages_shared, pages_sharing,\n"
	  "pages_unshared, stable_node_chains, stable_node_dups), the memory saved, gross\n"
	  "and net of the pools (pages backed less the dups held), per node\n"
	  "the dups it holds and its pages backed by dups, and the census: what node-local\n"
	  "merging (KSM) could save and what merging across the cluster adds (estimates within\n"
	  "5% + 2 pages). Exit status 1 when a shard is unreachable.\n" },
	{ "matrix", cmd_matrix,
	  "usage: cksmctl [options] matrix\n\nFor each pair of nodes, the pages the first backs from dups held by\n"
	  "the second. Exit status 1 when a shard is unreachable.\n" },
	{ "top", cmd_top,
	  "usage: cksmctl [options] top\n\nThe processes and cgroups with the most shareable memory, from every\n"
	  "live node's last full scan (as reported to shard 0, up to 64 of each per node):\n"
	  "SHAREABLE = SHARED (stable pages whose content has another copy in the cluster)\n"
	  "+ ZERO (pages of zeroes); STABLE counts every page unchanged over a scan.\n"
	  "Text shows the first 20 rows of each table. Exit status 1 when shard 0 is unreachable.\n" },
	{ "tree", cmd_tree,
	  "usage: cksmctl [options] tree CONTENT_ID\n\nOne content, asked of the shard that owns its bucket: whether it is in\n"
	  "the stable tree or seen once, the dup ordered, and each dup of its chain with\n"
	  "every node's references. CONTENT_ID is 32 hex digits. Exit status 1 when\n"
	  "the shard is unreachable, 2 for a malformed id.\n",
	  1 },
};

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
	const struct command *cmd = NULL;
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
	if (optind >= argc) {
		usage(stderr);
		return EXIT_USAGE;
	}
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		if (!strcmp(argv[optind], commands[i].name))
			cmd = &commands[i];
	if (!cmd) {
		fprintf(stderr, "cksmctl: unknown command '%s'\n", argv[optind]);
		usage(stderr);
		return EXIT_USAGE;
	}
	if (optind + 1 < argc &&
	    (!strcmp(argv[optind + 1], "--help") || !strcmp(argv[optind + 1], "-h"))) {
		fputs(cmd->help, stdout);
		return 0;
	}
	if (argc - optind - 1 != cmd->nargs) {
		fprintf(stderr, "cksmctl: %s takes %d argument%s\n%s", cmd->name, cmd->nargs,
			cmd->nargs == 1 ? "" : "s", cmd->help);
		return EXIT_USAGE;
	}
	o.arg = cmd->nargs ? argv[optind + 1] : NULL;
	o.color = isatty(STDOUT_FILENO) && !getenv("NO_COLOR");
	config_defaults(&cfg);
	if (config_load_default(&cfg, o.config, o.config_named, stderr) ||
	    config_finish(&cfg, stderr))
		return EXIT_USAGE;
	if (auth_init() || auth_key_load(&key, cfg.key_file, err, sizeof(err))) {
		fprintf(stderr, "cksmctl: %s\n", err);
		return EXIT_USAGE;
	}
	return cmd->fn(&cfg, &key, &o);
}
