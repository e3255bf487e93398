/*
 * inject - see inject.h.
 */
#include "inject.h"

#ifdef CKSM_INJECT

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

#define POINTS 16

static struct point {
	char name[32];
	unsigned every; /* 1: every call */
	atomic_uint calls;
} points[POINTS];
static unsigned npoints;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void parse(void)
{
	const char *env = getenv("CKSM_INJECT");
	char buf[512], *save, *tok;

	if (!env || strlen(env) >= sizeof(buf))
		return;
	strcpy(buf, env);
	for (tok = strtok_r(buf, ",", &save); tok && npoints < POINTS;
	     tok = strtok_r(NULL, ",", &save)) {
		struct point *p = &points[npoints];
		char *eq = strchr(tok, '=');

		p->every = 1;
		if (eq) {
			*eq = '\0';
			p->every = (unsigned)strtoul(eq + 1, NULL, 10);
			if (!p->every)
				p->every = 1;
		}
		snprintf(p->name, sizeof(p->name), "%s", tok);
		npoints++;
		log_warn("fault point %s is on (one call in %u)", p->name, p->every);
	}
}

void inject_init(void)
{
	pthread_once(&once, parse);
}

bool inject(const char *name)
{
	pthread_once(&once, parse);
	for (unsigned i = 0; i < npoints; i++)
		if (!strcmp(points[i].name, name))
			return atomic_fetch_add(&points[i].calls, 1) % points[i].every == 0;
	return false;
}

#endif
