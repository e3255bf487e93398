/*
 * cksm-scan - run the agent's scanner over real processes and print what
 * it saw as JSON: the last pass's totals, each VMA's counts, and every
 * digest reported in any pass. Integration tests compare this with what
 * cksm-planter planted.
 *
 *   cksm-scan -k KEYFILE [--passes N] [--interval-ms MS] [--mergeable] [--thp|--no-thp]
 *             [--domain NAME:ID:PID]... [PID...]
 *
 * PIDs are scanned whole, in the default domain unless --domain puts one
 * in another; --mergeable adds every process's VMAs that carry KSM's
 * opt-in; --thp scans THP-backed pages too (scan_thp=1, the default),
 * --no-thp skips them (scan_thp=0).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "agent/scan.h"
#include "agent/target.h"
#include "auth.h"
#include "cid.h"
#include "config.h"

static FILE *digests;
static unsigned long ndigests;

static int on_report(void *arg, const struct scan_page *pg)
{
	(void)arg;
	fprintf(digests,
		"%s{\"pid\":%d,\"addr\":%llu,\"domain\":%u,\"id\":\"%016llx%016llx\",\"again\":%s}",
		ndigests++ ? "," : "", (int)pg->pid, (unsigned long long)pg->addr, pg->domain,
		(unsigned long long)pg->id.hi, (unsigned long long)pg->id.lo,
		pg->again ? "true" : "false");
	return 0;
}

static void print_counts(FILE *out, const struct scan_counts *c)
{
	fprintf(out,
		"{\"scanned\":%llu,\"stable\":%llu,\"volatile\":%llu,\"fresh\":%llu,\"zero\":%llu,\"reported\":%llu,\"skipped\":{",
		(unsigned long long)c->scanned, (unsigned long long)c->stable,
		(unsigned long long)c->volatile_, (unsigned long long)c->fresh,
		(unsigned long long)c->zero, (unsigned long long)c->reported);
	for (int i = 0; i < SKIP_MAX; i++)
		fprintf(out, "%s\"%s\":%llu", i ? "," : "", scan_skip_names[i],
			(unsigned long long)c->skipped[i]);
	fprintf(out, "}}");
}

static int first_vma = 1;

static void on_vma(void *arg, pid_t pid, uint64_t start, uint64_t end, const struct scan_counts *c)
{
	FILE *out = arg;

	fprintf(out, "%s{\"pid\":%d,\"start\":%llu,\"end\":%llu,\"counts\":", first_vma ? "" : ",",
		(int)pid, (unsigned long long)start, (unsigned long long)end);
	print_counts(out, c);
	fputc('}', out);
	first_vma = 0;
}

static void append(char *list, size_t size, const char *pid)
{
	size_t n = strlen(list);

	snprintf(list + n, size - n, "%s%s", n ? "," : "", pid);
}

int main(int argc, char **argv)
{
	static struct config cfg;
	static struct cid_domain domains[CONFIG_MAX_DOMAINS];
	struct targets targets;
	struct scan_counts c;
	struct scanner *s;
	struct auth_key key;
	const char *keyfile = NULL;
	char err[512] = "cannot initialise libsodium", *dbuf = NULL;
	size_t dlen = 0;
	int passes = 2, interval_ms = 100;

	config_defaults(&cfg);
	cfg.scan_mergeable = 0;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "-k") && i + 1 < argc) {
			keyfile = argv[++i];
		} else if (!strcmp(argv[i], "--passes") && i + 1 < argc) {
			passes = atoi(argv[++i]);
		} else if (!strcmp(argv[i], "--interval-ms") && i + 1 < argc) {
			interval_ms = atoi(argv[++i]);
		} else if (!strcmp(argv[i], "--mergeable")) {
			cfg.scan_mergeable = 1;
		} else if (!strcmp(argv[i], "--thp")) {
			cfg.scan_thp = 1;
		} else if (!strcmp(argv[i], "--no-thp")) {
			cfg.scan_thp = 0;
		} else if (!strcmp(argv[i], "--domain") && i + 1 < argc) {
			char name[65];
			unsigned id;
			char pid[16];
			struct domain_conf *d = &cfg.domains[cfg.ndomains++];

			if (sscanf(argv[++i], "%64[^:]:%u:%15s", name, &id, pid) != 3) {
				fprintf(stderr, "cksm-scan: --domain NAME:ID:PID\n");
				return 2;
			}
			d->defined = 1;
			snprintf(d->name, sizeof(d->name), "%s", name);
			d->id = (uint8_t)id;
			append(d->pids, sizeof(d->pids), pid);
		} else if (argv[i][0] != '-') {
			append(cfg.domains[0].pids, sizeof(cfg.domains[0].pids), argv[i]);
		} else {
			fprintf(stderr,
				"usage: cksm-scan -k KEYFILE [--passes N] [--interval-ms MS] [--mergeable] [--thp] [--domain NAME:ID:PID]... [PID...]\n");
			return 2;
		}
	}
	if (!keyfile || auth_init() || auth_key_load(&key, keyfile, err, sizeof(err))) {
		fprintf(stderr, "cksm-scan: %s\n", keyfile ? err : "-k KEYFILE is required");
		return 2;
	}
	for (unsigned d = 0; d < cfg.ndomains; d++)
		if (cid_domain_init(&domains[d], &key, cfg.domains[d].id, cfg.domains[d].name)) {
			fprintf(stderr, "cksm-scan: bad domain name %s\n", cfg.domains[d].name);
			return 2;
		}
	targets_init(&targets, &cfg);
	digests = open_memstream(&dbuf, &dlen);
	s = scanner_create(&cfg, &targets, domains, on_report, NULL, err, sizeof(err));
	if (!s) {
		fprintf(stderr, "cksm-scan: %s\n", err);
		return 1;
	}
	for (int p = 0; p < passes; p++) {
		if (p) {
			struct timespec ts = { interval_ms / 1000,
					       (interval_ms % 1000) * 1000000L };

			nanosleep(&ts, NULL);
		}
		if (scanner_pass(s, &c)) {
			fprintf(stderr, "cksm-scan: pass failed\n");
			return 1;
		}
	}
	fclose(digests);
	printf("{\"passes\":%d,\"procs\":%zu,\"tracked_pages\":%llu,\"state_bytes\":%zu,\"totals\":",
	       passes, scanner_nprocs(s), (unsigned long long)scanner_tracked_pages(s),
	       scanner_state_bytes(s));
	print_counts(stdout, &c);
	printf(",\"vmas\":[");
	scanner_foreach_vma(s, on_vma, stdout);
	printf("],\"digests\":[%s]}\n", dbuf ? dbuf : "");
	free(dbuf);
	scanner_destroy(s);
	targets_fini(&targets);
	return 0;
}
