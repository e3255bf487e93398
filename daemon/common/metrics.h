/*
 * metrics - a registry of counters and gauges in Prometheus text format.
 *
 * Metrics are registered at startup (under the registry lock) and updated
 * from any thread with atomics; the HTTP thread renders them under the
 * same lock, which only orders rendering against registration. Names carry
 * the cksm_ prefix and base units; counters end in _total. Series of one
 * family share a name and differ in a label set fixed at registration
 * (never per pid or per page: cardinality stays bounded).
 */
#ifndef CKSM_METRICS_H
#define CKSM_METRICS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

enum metric_type {
	METRIC_COUNTER,	  /* integer, only grows */
	METRIC_GAUGE,	  /* double */
	METRIC_COUNTER_F, /* double that only grows (seconds), metric_gauge_add */
	METRIC_HISTOGRAM, /* see metrics_histogram */
};

struct metric {
	_Atomic uint64_t bits; /* counter value, or the bits of a double */
	enum metric_type type;
	char *labels; /* e.g. reason="oversized", or NULL */
	struct metric_family *family;
	struct metric *next; /* next series in the family */
};

struct metrics;

struct metrics *metrics_create(void);
void metrics_destroy(struct metrics *r);

/*
 * Register one series. name and help are copied; labels is the inside of
 * the braces (label="value",...), NULL for none. Registering the same name
 * and labels twice returns the existing series. Returns NULL on allocation
 * failure or a name that is not a valid metric name.
 */
struct metric *metrics_counter(struct metrics *r, const char *name, const char *help,
			       const char *labels);
struct metric *metrics_gauge(struct metrics *r, const char *name, const char *help,
			     const char *labels);

static inline void metric_add(struct metric *m, uint64_t n)
{
	atomic_fetch_add_explicit(&m->bits, n, memory_order_relaxed);
}

static inline void metric_inc(struct metric *m)
{
	metric_add(m, 1);
}

void metric_set(struct metric *m, double v);
/* Add delta (may be negative) to a gauge. */
void metric_gauge_add(struct metric *m, double delta);
double metric_value(const struct metric *m);

#define METRIC_HIST_MAX 16

/* A histogram: counts of observations at or below each bound. */
struct metric_histogram {
	size_t n;
	double le[METRIC_HIST_MAX];
	_Atomic uint64_t counts[METRIC_HIST_MAX + 1]; /* per bucket, not cumulative */
	_Atomic uint64_t sum_bits;		      /* a double */
};

/* Register a histogram family with n (at most 16) increasing bounds. */
struct metric_histogram *metrics_histogram(struct metrics *r, const char *name, const char *help,
					   const double *le, size_t n);
void metric_observe(struct metric_histogram *h, double v);

/* One series to register: where to store it, and what it is. */
struct metric_def {
	struct metric **out;
	enum metric_type type;
	const char *name;
	const char *help;
	const char *labels; /* NULL for none */
};

#define METRIC_C(out, name, help)                        \
	{                                                \
		&(out), METRIC_COUNTER, name, help, NULL \
	}
#define METRIC_CL(out, name, help, labels)                 \
	{                                                  \
		&(out), METRIC_COUNTER, name, help, labels \
	}
#define METRIC_G(out, name, help)                      \
	{                                              \
		&(out), METRIC_GAUGE, name, help, NULL \
	}

/* Register every def in turn; 0, or -ENOMEM at the first that fails. */
int metrics_register(struct metrics *r, const struct metric_def *defs, size_t n);

/*
 * Write name="value" into buf with the value escaped as the text format
 * requires (backslash, double quote, newline). Returns buf.
 */
char *metrics_label(char *buf, size_t len, const char *name, const char *value);

/*
 * Render every family in text format 0.0.4 into a new NUL-terminated
 * buffer (caller frees); NULL on allocation failure.
 */
char *metrics_render(struct metrics *r, size_t *len);

#endif
