/*
 * metrics - see metrics.h.
 *
 * Families are kept in registration order so the output is stable; each
 * family is written as its # HELP and # TYPE lines followed by its series.
 */
#include "metrics.h"

#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct metric_family {
	char *name;
	char *help;
	enum metric_type type;
	struct metric *series;	       /* first series */
	struct metric_histogram *hist; /* METRIC_HISTOGRAM */
	struct metric_family *next;    /* next family in registration order */
};

struct metrics {
	pthread_mutex_t lock; /* orders registration against rendering */
	struct metric_family *first;
	struct metric_family *last;
};

struct metrics *metrics_create(void)
{
	struct metrics *r = calloc(1, sizeof(*r));

	if (r)
		pthread_mutex_init(&r->lock, NULL);
	return r;
}

void metrics_destroy(struct metrics *r)
{
	struct metric_family *f, *fn;
	struct metric *m, *mn;

	if (!r)
		return;
	for (f = r->first; f; f = fn) {
		fn = f->next;
		for (m = f->series; m; m = mn) {
			mn = m->next;
			free(m->labels);
			free(m);
		}
		free(f->hist);
		free(f->name);
		free(f->help);
		free(f);
	}
	pthread_mutex_destroy(&r->lock);
	free(r);
}

static int name_valid(const char *s)
{
	if (!(isalpha((unsigned char)*s) || *s == '_' || *s == ':'))
		return 0;
	for (; *s; s++)
		if (!(isalnum((unsigned char)*s) || *s == '_' || *s == ':'))
			return 0;
	return 1;
}

static struct metric_family *family_get(struct metrics *r, const char *name, const char *help,
					enum metric_type type)
{
	struct metric_family *f;

	for (f = r->first; f; f = f->next)
		if (strcmp(f->name, name) == 0)
			return f->type == type ? f : NULL;
	f = calloc(1, sizeof(*f));
	if (!f)
		return NULL;
	f->name = strdup(name);
	f->help = strdup(help);
	if (!f->name || !f->help) {
		free(f->hist);
		free(f->name);
		free(f->help);
		free(f);
		return NULL;
	}
	f->type = type;
	if (r->last)
		r->last->next = f;
	else
		r->first = f;
	r->last = f;
	return f;
}

static struct metric *series_get(struct metric_family *f, const char *labels)
{
	struct metric *m, **tail = &f->series;

	for (m = f->series; m; m = m->next) {
		if ((!m->labels && !labels) ||
		    (m->labels && labels && strcmp(m->labels, labels) == 0))
			return m;
		tail = &m->next;
	}
	m = calloc(1, sizeof(*m));
	if (!m)
		return NULL;
	if (labels && !(m->labels = strdup(labels))) {
		free(m);
		return NULL;
	}
	m->type = f->type;
	m->family = f;
	*tail = m;
	return m;
}

static struct metric *metrics_add(struct metrics *r, const char *name, const char *help,
				  const char *labels, enum metric_type type)
{
	struct metric_family *f;
	struct metric *m = NULL;

	if (!name_valid(name))
		return NULL;
	pthread_mutex_lock(&r->lock);
	f = family_get(r, name, help, type);
	if (f)
		m = series_get(f, labels);
	pthread_mutex_unlock(&r->lock);
	return m;
}

struct metric *metrics_counter(struct metrics *r, const char *name, const char *help,
			       const char *labels)
{
	return metrics_add(r, name, help, labels, METRIC_COUNTER);
}

struct metric_histogram *metrics_histogram(struct metrics *r, const char *name, const char *help,
					   const double *le, size_t n)
{
	struct metric_histogram *h = NULL;
	struct metric_family *f;

	if (!name_valid(name) || n == 0 || n > METRIC_HIST_MAX)
		return NULL;
	pthread_mutex_lock(&r->lock);
	f = family_get(r, name, help, METRIC_HISTOGRAM);
	if (f && !f->hist) {
		f->hist = calloc(1, sizeof(*f->hist));
		if (f->hist) {
			f->hist->n = n;
			memcpy(f->hist->le, le, n * sizeof(*le));
		}
	}
	if (f)
		h = f->hist;
	pthread_mutex_unlock(&r->lock);
	return h;
}

void metric_observe(struct metric_histogram *h, double v)
{
	size_t i = 0;
	uint64_t old, bits;
	double sum;

	while (i < h->n && v > h->le[i])
		i++;
	atomic_fetch_add_explicit(&h->counts[i], 1, memory_order_relaxed);
	old = atomic_load_explicit(&h->sum_bits, memory_order_relaxed);
	do {
		memcpy(&sum, &old, sizeof(sum));
		sum += v;
		memcpy(&bits, &sum, sizeof(bits));
	} while (!atomic_compare_exchange_weak_explicit(
		&h->sum_bits, &old, bits, memory_order_relaxed, memory_order_relaxed));
}

static void put_histogram(FILE *out, const char *name, struct metric_histogram *h)
{
	uint64_t cum = 0;
	double sum;
	uint64_t bits = atomic_load_explicit(&h->sum_bits, memory_order_relaxed);

	for (size_t i = 0; i <= h->n; i++) {
		cum += atomic_load_explicit(&h->counts[i], memory_order_relaxed);
		if (i < h->n)
			fprintf(out, "%s_bucket{le=\"%g\"} %llu\n", name, h->le[i],
				(unsigned long long)cum);
		else
			fprintf(out, "%s_bucket{le=\"+Inf\"} %llu\n", name,
				(unsigned long long)cum);
	}
	memcpy(&sum, &bits, sizeof(sum));
	fprintf(out, "%s_sum %.17g\n%s_count %llu\n", name, sum, name, (unsigned long long)cum);
}

int metrics_register(struct metrics *r, const struct metric_def *defs, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		*defs[i].out =
			metrics_add(r, defs[i].name, defs[i].help, defs[i].labels, defs[i].type);
		if (!*defs[i].out)
			return -ENOMEM;
	}
	return 0;
}

char *metrics_label(char *buf, size_t len, const char *name, const char *value)
{
	size_t n = (size_t)snprintf(buf, len, "%s=\"", name);

	for (; *value && n + 3 < len; value++) {
		if (*value == '\\' || *value == '"') {
			buf[n++] = '\\';
			buf[n++] = *value;
		} else if (*value == '\n') {
			buf[n++] = '\\';
			buf[n++] = 'n';
		} else {
			buf[n++] = *value;
		}
	}
	if (n + 2 <= len) {
		buf[n++] = '"';
		buf[n] = '\0';
	}
	return buf;
}

struct metric *metrics_gauge(struct metrics *r, const char *name, const char *help,
			     const char *labels)
{
	return metrics_add(r, name, help, labels, METRIC_GAUGE);
}

void metric_set(struct metric *m, double v)
{
	uint64_t bits;

	memcpy(&bits, &v, sizeof(bits));
	atomic_store_explicit(&m->bits, bits, memory_order_relaxed);
}

void metric_gauge_add(struct metric *m, double delta)
{
	uint64_t old = atomic_load_explicit(&m->bits, memory_order_relaxed);
	uint64_t bits;
	double v;

	do {
		memcpy(&v, &old, sizeof(v));
		v += delta;
		memcpy(&bits, &v, sizeof(bits));
	} while (!atomic_compare_exchange_weak_explicit(&m->bits, &old, bits, memory_order_relaxed,
							memory_order_relaxed));
}

double metric_value(const struct metric *m)
{
	uint64_t bits = atomic_load_explicit(&m->bits, memory_order_relaxed);
	double v;

	if (m->type == METRIC_COUNTER)
		return (double)bits;
	memcpy(&v, &bits, sizeof(v));
	return v;
}

/* HELP text escapes backslash and newline. */
static void put_help(FILE *out, const char *s)
{
	for (; *s; s++) {
		if (*s == '\\')
			fputs("\\\\", out);
		else if (*s == '\n')
			fputs("\\n", out);
		else
			fputc(*s, out);
	}
}

static void put_value(FILE *out, const struct metric *m)
{
	if (m->type == METRIC_COUNTER)
		fprintf(out, "%llu\n",
			(unsigned long long)atomic_load_explicit(&m->bits, memory_order_relaxed));
	else
		fprintf(out, "%.17g\n", metric_value(m));
}

char *metrics_render(struct metrics *r, size_t *len)
{
	struct metric_family *f;
	struct metric *m;
	char *buf = NULL;
	size_t n = 0;
	FILE *out;

	out = open_memstream(&buf, &n);
	if (!out)
		return NULL;
	pthread_mutex_lock(&r->lock);
	for (f = r->first; f; f = f->next) {
		fprintf(out, "# HELP %s ", f->name);
		put_help(out, f->help);
		fprintf(out, "\n# TYPE %s %s\n", f->name,
			f->type == METRIC_GAUGE	      ? "gauge"
			: f->type == METRIC_HISTOGRAM ? "histogram"
						      : "counter");
		if (f->hist)
			put_histogram(out, f->name, f->hist);
		for (m = f->series; m; m = m->next) {
			if (m->labels)
				fprintf(out, "%s{%s} ", f->name, m->labels);
			else
				fprintf(out, "%s ", f->name);
			put_value(out, m);
		}
	}
	pthread_mutex_unlock(&r->lock);
	if (fclose(out) != 0) {
		free(buf);
		return NULL;
	}
	*len = n;
	return buf;
}
