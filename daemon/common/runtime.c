/*
 * runtime - see runtime.h.
 */
#include "runtime.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <sys/resource.h>

#include <systemd/sd-daemon.h>

#include "inject.h"
#include "log.h"

static const char *role_label(Cksm__Role role)
{
	return role == CKSM__ROLE__ROLE_AGENT	? "agent"
	       : role == CKSM__ROLE__ROLE_COORD ? "coordinator"
						: "admin";
}

static int register_base_metrics(struct runtime *rt, Cksm__Role role)
{
	char labels[128];
	struct metric *build, *start;
	struct timespec ts;

	snprintf(labels, sizeof(labels), "version=\"%s\",role=\"%s\"", CKSM_VERSION,
		 role_label(role));
	build = metrics_gauge(rt->reg, "cksm_build_info", "Build of this daemon; always 1.",
			      labels);
	start = metrics_gauge(rt->reg, "cksm_start_time_seconds", "Unix time the daemon started.",
			      NULL);
	if (!build || !start)
		return -ENOMEM;
	metric_set(build, 1);
	clock_gettime(CLOCK_REALTIME, &ts);
	metric_set(start, (double)ts.tv_sec + ts.tv_nsec / 1e9);
	return net_metrics_register(&rt->net.m, rt->reg);
}

/*
 * What every daemon needs of the process: a write to a connection its
 * peer closed is an error to handle (EPIPE), never a signal that kills;
 * and as many descriptors as the hard limit allows (the agent holds one
 * userfaultfd per served address space, fork children's included).
 */
static void process_setup(void)
{
	struct rlimit rl;

	signal(SIGPIPE, SIG_IGN);
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl))
			log_warn("cannot raise the descriptor limit: %s", strerror(errno));
	}
}

int runtime_init(struct runtime *rt, const struct config *cfg, Cksm__Role role, const char *name,
		 const char *metrics_addr)
{
	char err[512];
	int rc;

	memset(rt, 0, sizeof(*rt));
	process_setup();
	inject_init();
	rt->cfg = cfg;
	snprintf(rt->name, sizeof(rt->name), "%s", name);
	rc = auth_init();
	if (rc) {
		log_error("cannot initialise libsodium");
		return rc;
	}
	rc = auth_key_load(&rt->key, cfg->key_file, err, sizeof(err));
	if (rc) {
		log_error("%s", err);
		return rc;
	}
	rc = uv_loop_init(&rt->loop);
	if (rc) {
		log_error("cannot create the event loop: %s", uv_strerror(rc));
		return -EIO;
	}
	rt->start_ms = uv_now(&rt->loop);
	rt->reg = metrics_create();
	if (!rt->reg || register_base_metrics(rt, role)) {
		log_error("out of memory creating metrics");
		return -ENOMEM;
	}
	rt->net.loop = &rt->loop;
	rt->net.key = &rt->key;
	rt->net.role = role;
	rt->net.name = rt->name;
	rt->net.max_frame = cfg->max_frame_bytes;
	rt->net.auth_timeout_ms = cfg->auth_timeout_ms;
	rt->net.max_pending = cfg->max_handshakes;
	rt->net.max_per_source = cfg->max_handshakes_per_source;
	rt->net.max_queued = cfg->max_queued_bytes;
	rt->httpd = httpd_create(metrics_addr, rt->reg);
	if (!rt->httpd)
		return -EADDRINUSE;
	return 0;
}

static void on_signal(uv_signal_t *s, int signum)
{
	struct runtime *rt = s->data;

	log_info("%s received, stopping", strsignal(signum));
	sd_notify(0, "STOPPING=1");
	uv_signal_stop(&rt->sigterm);
	uv_signal_stop(&rt->sigint);
	uv_close((uv_handle_t *)&rt->sigterm, NULL);
	uv_close((uv_handle_t *)&rt->sigint, NULL);
	if (rt->stop)
		rt->stop(rt);
	if (!rt->stop_later)
		net_close_all(&rt->net);
}

void runtime_stopped(struct runtime *rt)
{
	net_close_all(&rt->net);
}

int runtime_run(struct runtime *rt)
{
	int rc;

	uv_signal_init(&rt->loop, &rt->sigterm);
	uv_signal_init(&rt->loop, &rt->sigint);
	rt->sigterm.data = rt->sigint.data = rt;
	uv_signal_start(&rt->sigterm, on_signal, SIGTERM);
	uv_signal_start(&rt->sigint, on_signal, SIGINT);
	sd_notifyf(0, "READY=1\nSTATUS=%s running", rt->name);
	log_info("%s ready (cksm %s)", rt->name, CKSM_VERSION);
	rc = uv_run(&rt->loop, UV_RUN_DEFAULT);
	log_info("%s stopped", rt->name);
	return rc ? -EBUSY : 0;
}

void runtime_fini(struct runtime *rt)
{
	httpd_destroy(rt->httpd);
	rt->httpd = NULL;
	if (rt->net.loop && uv_loop_close(&rt->loop) == UV_EBUSY) {
		/* Let pending close callbacks run, then close for good. */
		uv_run(&rt->loop, UV_RUN_DEFAULT);
		uv_loop_close(&rt->loop);
	}
	metrics_destroy(rt->reg);
	rt->reg = NULL;
}

uint64_t runtime_uptime_ms(struct runtime *rt)
{
	return uv_now(&rt->loop) - rt->start_ms;
}
