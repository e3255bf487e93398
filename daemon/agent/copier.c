/*
 * copier - see copier.h.
 */
#include "copier.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "log.h"

#define JOBS	 1024
#define MORE_MAX 65536 /* jobs past JOBS, held until the ring has room */

struct copier {
	const struct config *cfg;
	struct pool *pool;
	const struct cid_domain *domains;
	struct transport *tr;
	void (*done)(void *arg, const struct copy_job *j);
	void *arg;
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool stop;
	struct copy_job todo[JOBS], out[JOBS];
	size_t ntodo, todo_head, nout;
	struct copy_job *more; /* a burst's overflow, in order (lock) */
	size_t nmore, more_head, capmore;
	uv_async_t async;
};

/* Is the page of pid at addr in memory (not dropped, evicted, swapped)? */
static bool present(pid_t pid, uint64_t addr)
{
	char path[64];
	uint64_t e = 0;
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/pagemap", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	if (pread(fd, &e, sizeof(e), (off_t)(addr / POOL_SLOT * sizeof(e))) != sizeof(e))
		e = 0;
	close(fd);
	return e >> 63;
}

/* One of this node's pages holding j->id, into page; 0 or -ENOENT. A
 * page not present is passed over: reading it would wait on a fault. */
static int read_local(const struct copy_local *l, const struct cid_domain *dom,
		      const struct cid *id, uint8_t *page)
{
	struct iovec lv = { page, POOL_SLOT }, rv = { (void *)(uintptr_t)l->addr, POOL_SLOT };

	if (!present(l->pid, l->addr) || process_vm_readv(l->pid, &lv, 1, &rv, 1, 0) != POOL_SLOT)
		return -ENOENT;
	return cid_eq(cid_of(dom, page), *id) ? 0 : -ENOENT;
}

static void copy_one(struct copier *c, struct copy_job *j)
{
	static uint8_t page[POOL_SLOT] __attribute__((aligned(POOL_SLOT)));
	const struct cid_domain *dom = cid_domain_find(c->domains, c->cfg->ndomains, j->id);

	j->ok = false;
	j->why = j->nlocal ? "the pages changed" : "no source answered with the content's bytes";
	if (!dom) {
		j->why = "a domain this node does not know";
		return;
	}
	for (unsigned i = 0; i < j->nsrc + j->nlocal; i++) {
		if (i >= j->nsrc ? read_local(&j->local[i - j->nsrc], dom, &j->id, page)
				 : !j->src[i].addr[0] || transport_read_checked(c->tr, &j->src[i],
										dom, &j->id, page))
			continue;
		if (pool_add(c->pool, &j->id, page, &j->ref)) {
			j->why = "the page pool is full";
			return;
		}
		j->ok = true;
		j->why = NULL;
		return;
	}
}

static void *copier_main(void *arg)
{
	struct copier *c = arg;

	pthread_mutex_lock(&c->lock);
	for (;;) {
		struct copy_job j;

		while (!c->stop && !c->ntodo)
			pthread_cond_wait(&c->cond, &c->lock);
		if (c->stop)
			break;
		j = c->todo[c->todo_head];
		c->todo_head = (c->todo_head + 1) % JOBS;
		c->ntodo--;
		if (c->nmore) { /* the ring has room again */
			c->todo[(c->todo_head + c->ntodo++) % JOBS] = c->more[c->more_head++];
			if (--c->nmore == 0)
				c->more_head = 0;
		}
		pthread_mutex_unlock(&c->lock);
		copy_one(c, &j);
		pthread_mutex_lock(&c->lock);
		while (c->nout == JOBS && !c->stop) /* the loop is behind: wait for it */
			pthread_cond_wait(&c->cond, &c->lock);
		if (c->stop)
			break;
		c->out[c->nout++] = j;
		uv_async_send(&c->async);
	}
	pthread_mutex_unlock(&c->lock);
	return NULL;
}

static void on_done(uv_async_t *h)
{
	struct copier *c = h->data;
	static struct copy_job got[JOBS];
	size_t n;

	pthread_mutex_lock(&c->lock);
	n = c->nout;
	memcpy(got, c->out, n * sizeof(*got));
	c->nout = 0;
	pthread_cond_broadcast(&c->cond);
	pthread_mutex_unlock(&c->lock);
	for (size_t i = 0; i < n; i++)
		c->done(c->arg, &got[i]);
}

/*
 * A burst (the first pass over a large process reports thousands of
 * duplicates at once) goes past the ring into the overflow: a job refused
 * would be a dup never made, since its pages are not reported again.
 * The overflow is compacted when it has drained halfway. c->lock held.
 */
static bool more_push(struct copier *c, const struct copy_job *j)
{
	if (c->nmore >= MORE_MAX)
		return false;
	if (c->more_head && c->more_head >= c->nmore) {
		memmove(c->more, c->more + c->more_head, c->nmore * sizeof(*c->more));
		c->more_head = 0;
	}
	if (c->more_head + c->nmore == c->capmore) {
		size_t cap = c->capmore ? c->capmore * 2 : 1024;
		struct copy_job *m;

		m = realloc(c->more, cap * sizeof(*m));
		if (!m)
			return false;
		c->more = m;
		c->capmore = cap;
	}
	c->more[c->more_head + c->nmore++] = *j;
	return true;
}

bool copier_push(struct copier *c, const struct copy_job *j)
{
	bool ok;

	pthread_mutex_lock(&c->lock);
	if (c->ntodo < JOBS && !c->nmore) {
		c->todo[(c->todo_head + c->ntodo++) % JOBS] = *j;
		ok = true;
	} else {
		ok = more_push(c, j);
	}
	if (ok)
		pthread_cond_broadcast(&c->cond);
	pthread_mutex_unlock(&c->lock);
	return ok;
}

struct copier *copier_create(const struct config *cfg, uv_loop_t *loop, struct pool *pool,
			     const struct cid_domain *domains, const struct transport_kind *tk,
			     const struct auth_key *key,
			     void (*done)(void *arg, const struct copy_job *j), void *arg)
{
	struct copier *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->cfg = cfg;
	c->pool = pool;
	c->domains = domains;
	c->done = done;
	c->arg = arg;
	c->tr = tk->reader(cfg, key);
	if (!c->tr)
		goto free_c;
	pthread_mutex_init(&c->lock, NULL);
	pthread_cond_init(&c->cond, NULL);
	/* The thread first: it sends nothing to the loop before a job comes,
	 * and a failure after the async is in would need the loop to free c. */
	if (pthread_create(&c->thread, NULL, copier_main, c))
		goto destroy_sync;
	uv_async_init(loop, &c->async, on_done);
	c->async.data = c;
	return c;
destroy_sync:
	pthread_cond_destroy(&c->cond);
	pthread_mutex_destroy(&c->lock);
	transport_destroy(c->tr);
free_c:
	free(c);
	return NULL;
}

static void on_closed(uv_handle_t *h)
{
	struct copier *c = h->data;

	pthread_mutex_destroy(&c->lock);
	pthread_cond_destroy(&c->cond);
	free(c->more);
	free(c);
}

void copier_destroy(struct copier *c)
{
	if (!c)
		return;
	pthread_mutex_lock(&c->lock);
	c->stop = true;
	pthread_cond_broadcast(&c->cond);
	pthread_mutex_unlock(&c->lock);
	pthread_join(c->thread, NULL);
	transport_destroy(c->tr);
	uv_close((uv_handle_t *)&c->async, on_closed);
}
