/*
 * report - the digests waiting to go to one shard.
 *
 * A bounded ring: the scanner thread pushes, the loop thread pops batches
 * for DigestReport messages. When it is full (the shard is slow or away)
 * a push fails and the scanner offers that page again at its next pass,
 * so memory stays bounded and nothing is lost for good. Not thread-safe:
 * the agent holds its lock around every call.
 */
#ifndef CKSM_REPORT_H
#define CKSM_REPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct report_entry {
	uint64_t hi;
	uint64_t lo;
	uint64_t addr;	/* the page that holds it */
	int32_t pid;	/* in this process */
	uint8_t domain; /* the domain's id (the tag in hi) */
	bool again;	/* see scan_page.again */
	bool stays;	/* see scan_page.stays */
};

struct report_queue {
	struct report_entry *v;
	size_t cap;
	size_t head; /* oldest entry */
	size_t n;
};

int rq_init(struct report_queue *q, size_t cap);
void rq_fini(struct report_queue *q);

/* Append e; false when the queue is full. */
bool rq_push(struct report_queue *q, const struct report_entry *e);

/*
 * Take up to max of the oldest entries that share the oldest entry's
 * domain into out; returns how many.
 */
size_t rq_pop(struct report_queue *q, struct report_entry *out, size_t max);

#endif
