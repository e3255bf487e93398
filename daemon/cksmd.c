/*
 * cksmd - the cksm daemon: a node agent or a coordinator shard.
 *
 *   cksmd --role agent [--config FILE] [--set section.key=value]...
 *   cksmd --role coord --shard N ...
 *   cksmd --role agent --restore        bring every kept page home, then exit
 *   cksmd --check-config [--role ...]   validate, print nothing else, exit
 *   cksmd --gen-key FILE                write a new cluster key (mode 0600)
 *
 * Exit codes: 0 clean stop or valid configuration, 1 runtime failure,
 * 2 bad usage or configuration.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/agent.h"
#include "auth.h"
#include "config.h"
#include "coord/coord.h"
#include "log.h"

enum role { ROLE_NONE, ROLE_AGENT, ROLE_COORD };

struct args {
	const char *config;
	int config_given;
	enum role role;
	long shard;
	int check;
	int print;
	int restore;
	const char *gen_key;
	const char *sets[64];
	int nsets;
};

static void usage(FILE *out)
{
	fprintf(out,
		"usage: cksmd --role agent|coord [--shard N] [options]\n"
		"       cksmd --check-config [--role ...] [options]\n"
		"       cksmd --gen-key FILE\n"
		"\n"
		"  -c, --config FILE     configuration (default " CONFIG_DEFAULT_PATH ")\n"
		"  -r, --role ROLE       agent (one per node) or coord (one per shard)\n"
		"  -n, --shard N         which [shard.N] a coordinator serves\n"
		"  -s, --set SEC.KEY=V   override one configuration value (repeatable)\n"
		"  -l, --log-level LVL   error, warn, info or debug\n"
		"      --restore         (agent) take over what a stopped or killed agent kept,\n"
		"                        bring every backed page home, then exit\n"
		"      --check-config    validate the configuration and key file, then exit\n"
		"      --print-config    print the effective configuration, then exit\n"
		"      --gen-key FILE    create a new cluster key file\n"
		"  -V, --version         print the version\n"
		"  -h, --help            this help\n");
}

static int parse_args(int argc, char **argv, struct args *a)
{
	static const struct option opts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "role", required_argument, NULL, 'r' },
		{ "shard", required_argument, NULL, 'n' },
		{ "set", required_argument, NULL, 's' },
		{ "log-level", required_argument, NULL, 'l' },
		{ "check-config", no_argument, NULL, 'C' },
		{ "restore", no_argument, NULL, 'R' },
		{ "print-config", no_argument, NULL, 'P' },
		{ "gen-key", required_argument, NULL, 'G' },
		{ "version", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	char *end;
	int o;

	a->config = CONFIG_DEFAULT_PATH;
	a->shard = -1;
	while ((o = getopt_long(argc, argv, "c:r:n:s:l:Vh", opts, NULL)) != -1) {
		switch (o) {
		case 'c':
			a->config = optarg;
			a->config_given = 1;
			break;
		case 'r':
			if (strcmp(optarg, "agent") == 0)
				a->role = ROLE_AGENT;
			else if (strcmp(optarg, "coord") == 0)
				a->role = ROLE_COORD;
			else {
				fprintf(stderr,
					"cksmd: --role: expected agent or coord, got '%s'\n",
					optarg);
				return 2;
			}
			break;
		case 'n':
			errno = 0;
			a->shard = strtol(optarg, &end, 10);
			if (errno || *end || a->shard < 0 || a->shard >= CONFIG_MAX_SHARDS) {
				fprintf(stderr,
					"cksmd: --shard: expected a number between 0 and %d, got '%s'\n",
					CONFIG_MAX_SHARDS - 1, optarg);
				return 2;
			}
			break;
		case 's':
		case 'l':
			if (a->nsets == (int)(sizeof(a->sets) / sizeof(a->sets[0]))) {
				fprintf(stderr, "cksmd: too many --set options\n");
				return 2;
			}
			if (o == 'l') {
				static char buf[64];

				snprintf(buf, sizeof(buf), "log.level=%s", optarg);
				a->sets[a->nsets++] = buf;
			} else {
				a->sets[a->nsets++] = optarg;
			}
			break;
		case 'R':
			a->restore = 1;
			break;
		case 'C':
			a->check = 1;
			break;
		case 'P':
			a->print = 1;
			break;
		case 'G':
			a->gen_key = optarg;
			break;
		case 'V':
			printf("cksmd %s\n", CKSM_VERSION);
			exit(0);
		case 'h':
			usage(stdout);
			exit(0);
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "cksmd: unexpected argument '%s'\n", argv[optind]);
		return 2;
	}
	return 0;
}

static int load_config(const struct args *a, struct config *cfg)
{
	config_defaults(cfg);
	if (config_load_default(cfg, a->config, a->config_given, stderr))
		return 2;
	for (int i = 0; i < a->nsets; i++)
		if (config_set(cfg, a->sets[i], stderr))
			return 2;
	if (config_finish(cfg, stderr))
		return 2;
	return 0;
}

static int check_role(const struct args *a, const struct config *cfg)
{
	if (a->role == ROLE_COORD) {
		if (a->shard < 0) {
			fprintf(stderr, "cksmd: a coordinator needs --shard N\n");
			return 2;
		}
		if ((unsigned)a->shard >= cfg->nshards) {
			fprintf(stderr, "cksmd: --shard %ld: the shard map has shards 0..%u\n",
				a->shard, cfg->nshards - 1);
			return 2;
		}
	} else if (a->role == ROLE_AGENT && a->shard >= 0) {
		fprintf(stderr, "cksmd: --shard is for coordinators\n");
		return 2;
	}
	return 0;
}

static int check_key(const struct config *cfg)
{
	struct auth_key key;
	char err[512] = "cannot initialise libsodium";

	if (auth_init() || auth_key_load(&key, cfg->key_file, err, sizeof(err))) {
		fprintf(stderr, "cksmd: %s\n", err);
		return 2;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct args a = { 0 };
	static struct config cfg;
	int rc;

	rc = parse_args(argc, argv, &a);
	if (rc)
		return rc;
	if (a.gen_key) {
		char err[512] = "cannot initialise libsodium";

		if (auth_init() || auth_key_generate(a.gen_key, err, sizeof(err))) {
			fprintf(stderr, "cksmd: %s\n", err);
			return 1;
		}
		return 0;
	}
	rc = load_config(&a, &cfg);
	if (!rc)
		rc = check_role(&a, &cfg);
	if (rc)
		return rc;
	if (a.print) {
		config_dump(&cfg, stdout);
		return 0;
	}
	if (a.check) {
		rc = check_key(&cfg);
		if (!rc)
			printf("%s: configuration OK\n", a.config);
		return rc;
	}
	if (a.role == ROLE_NONE) {
		fprintf(stderr, "cksmd: --role agent or --role coord is required\n");
		usage(stderr);
		return 2;
	}
	log_threshold = cfg.log_level;
	log_init(a.role == ROLE_AGENT ? "cksm-agent" : "cksm-coord");
	if (a.restore && a.role != ROLE_AGENT) {
		fprintf(stderr, "cksmd: --restore is for --role agent\n");
		return 2;
	}
	if (a.role == ROLE_AGENT)
		return agent_main(&cfg, a.restore);
	return coord_main(&cfg, (unsigned)a.shard);
}
