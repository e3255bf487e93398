/*
 * runtime - what every cksm daemon runs on: the libuv loop, the cluster
 * key, the metrics registry and its HTTP endpoint, signals, and the
 * systemd handshake.
 *
 * The order is fixed: runtime_init loads the key and binds /metrics; the
 * role binds or dials its sockets; runtime_run tells systemd READY=1 (only
 * now, with every listener bound) and runs the loop until SIGTERM/SIGINT,
 * when the role's stop hook closes its handles and the loop drains.
 */
#ifndef CKSM_RUNTIME_H
#define CKSM_RUNTIME_H

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#include "auth.h"
#include "config.h"
#include "conn.h"
#include "httpd.h"
#include "metrics.h"

struct runtime {
	uv_loop_t loop;
	const struct config *cfg;
	struct auth_key key;
	struct metrics *reg;
	struct httpd *httpd;
	struct net_ctx net;
	uv_signal_t sigterm;
	uv_signal_t sigint;
	uint64_t start_ms;		  /* loop time at start */
	char name[80];			  /* our name on the wire and in logs */
	void (*stop)(struct runtime *rt); /* the role closes its handles */
	bool stop_later;		  /* set by stop: it ends with runtime_stopped */
	void *role;			  /* the role's state */
};

/* A stop hook that set stop_later is done: the connections close. */
void runtime_stopped(struct runtime *rt);

/*
 * Load the key, create the registry with cksm_build_info and bind the
 * metrics address. Returns 0, or a negative errno after logging why.
 */
int runtime_init(struct runtime *rt, const struct config *cfg, Cksm__Role role, const char *name,
		 const char *metrics_addr);

/* Notify systemd, run until stopped; returns 0 after a clean stop. */
int runtime_run(struct runtime *rt);

/* Free what init made (after runtime_run returned or instead of it). */
void runtime_fini(struct runtime *rt);

/* Milliseconds of loop time since the daemon started. */
uint64_t runtime_uptime_ms(struct runtime *rt);

#endif
