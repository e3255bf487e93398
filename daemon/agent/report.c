/*
 * report - see report.h.
 */
#include "report.h"

#include <errno.h>
#include <stdlib.h>

int rq_init(struct report_queue *q, size_t cap)
{
	q->v = calloc(cap, sizeof(*q->v));
	q->cap = q->v ? cap : 0;
	q->head = q->n = 0;
	return q->v ? 0 : -ENOMEM;
}

void rq_fini(struct report_queue *q)
{
	free(q->v);
	q->v = NULL;
	q->cap = q->n = 0;
}

bool rq_push(struct report_queue *q, const struct report_entry *e)
{
	if (q->n == q->cap)
		return false;
	q->v[(q->head + q->n) % q->cap] = *e;
	q->n++;
	return true;
}

size_t rq_pop(struct report_queue *q, struct report_entry *out, size_t max)
{
	size_t k = 0;

	while (k < max && q->n &&
	       q->v[q->head].domain == (k ? out[0].domain : q->v[q->head].domain)) {
		out[k++] = q->v[q->head];
		q->head = (q->head + 1) % q->cap;
		q->n--;
	}
	return k;
}
