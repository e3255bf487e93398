/*
 * copier - see copier.h.
 */
#include "copier.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

#define JOBS 1024

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
	uv_async_t async;
};

static void copy_one(struct copier *c, struct copy_job *j)
{
	static uint8_t page[POOL_SLOT] __attribute__((aligned(POOL_SLOT)));
	const struct cid_domain *dom = cid_domain_find(c->domains, c->cfg->ndomains, j->id);

	j->ok = false;
	j->why = "no source answered with the content's bytes";
	if (!dom) {
		j->why = "a domain this node does not know";
		return;
	}
	for (unsigned i = 0; i < j->nsrc; i++) {
		if (!j->src[i].addr[0] ||
		    transport_read_checked(c->tr, &j->src[i], dom, &j->id, page))
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

bool copier_push(struct copier *c, const struct copy_job *j)
{
	bool ok;

	pthread_mutex_lock(&c->lock);
	ok = c->ntodo < JOBS;
	if (ok) {
		c->todo[(c->todo_head + c->ntodo++) % JOBS] = *j;
		pthread_cond_broadcast(&c->cond);
	}
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
