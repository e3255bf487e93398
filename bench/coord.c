/*
 * bench/coord - one shard core's ingest rate and the stable tree's memory.
 *
 *   coord [MILLIONS]        (default 10: 10^7 digests)
 *
 * Feeds MILLIONS * 10^6 digests to a stable tree on one core, as a shard
 * receives them: half of the ids seen once (unique pages, kept only in the
 * unstable filter), half in pairs from two nodes (shared contents that
 * enter the tree and get a dup). It prints digests/s (to set against the
 * scanner's pages/s per core from bench/scan: the target is 4x), and the
 * bytes per unique id and per shared content, by RSS growth and by the
 * tree's own accounting.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench.h"

#include "coord/stree.h"
#include "util.h"

int main(int argc, char **argv)
{
	double millions = argc > 1 ? atof(argv[1]) : 10;
	uint64_t n = (uint64_t)(millions * 1e6), unique = n / 2, shared = n / 4;
	struct stree_params p = { 256, 2, true, 1000, unique + shared };
	struct stree *t;
	struct stree_decision d;
	struct stree_stats s;
	uint64_t creates = 0;
	long rss0, rss1, rss2;
	double t0, dt;

	rss0 = rss_kb();
	t = stree_create(&p, NULL, NULL);
	stree_node_add(t, 1, 0);
	stree_node_add(t, 2, 1);
	stree_node_room(t, 1, UINT32_MAX);
	stree_node_room(t, 2, UINT32_MAX);
	rss1 = rss_kb();
	printf("feeding %llu digests: %llu unique ids, %llu shared contents seen by two nodes\n",
	       (unsigned long long)n, (unsigned long long)unique, (unsigned long long)shared);
	t0 = now_s();
	/* As a shard does for each report: prefetch a few ids ahead. */
	for (uint64_t i = 0; i < unique; i++) {
		stree_prefetch(t, 0, mix64(i + 8 + n));
		stree_report(t, 1, mix64(i) & ~(0xffULL << 56), mix64(i + n), 1, &d);
	}
	for (uint64_t i = 0; i < shared; i++) {
		uint64_t hi = mix64(2 * n + i) & ~(0xffULL << 56), lo = mix64(3 * n + i);

		stree_prefetch(t, 0, mix64(3 * n + i + 8));
		stree_report(t, 1, hi, lo, 1, &d);
		stree_report(t, 2, hi, lo, 1, &d);
		if (d.action == STREE_CREATE_DUP) {
			stree_dup_created(t, 2, hi, lo, i, 1);
			creates++;
		}
	}
	dt = now_s() - t0;
	rss2 = rss_kb();
	stree_stats(t, &s);
	printf("ingest: %.2f M digests/s on one core (%.2f s)\n", n / dt / 1e6, dt);
	printf("tree: %llu contents, %llu dups (%llu creates); filter %.1f MB for %llu ids per generation\n",
	       (unsigned long long)s.contents, (unsigned long long)s.dups,
	       (unsigned long long)creates, 2.0 * (unique + shared) * 10 / 8 / 1e6,
	       (unsigned long long)(unique + shared));
	printf("memory by the tree's accounting: %.1f bytes per shared content (filter excluded), %.2f bytes per unique id (filter, both generations)\n",
	       (double)(s.bytes - 2 * ((unique + shared) * 10 / 8)) / (double)s.contents,
	       2.0 * ((unique + shared) * 10 / 8) / (double)(unique + shared));
	printf("memory by RSS: %.1f MB for the filter at creation, %.1f MB after; %.1f bytes per shared content beyond the filter\n",
	       (rss1 - rss0) / 1024.0, (rss2 - rss0) / 1024.0,
	       (rss2 - rss1) * 1024.0 / (double)s.contents);
	stree_destroy(t);
	return 0;
}
