/*
 * httpd - see httpd.h. Only GET and HEAD of /metrics and / are answered;
 * anything else gets 404 or 405. Requests are small and answered at once,
 * with a connection limit and timeout so a slow client cannot pin threads.
 */
#include "httpd.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <microhttpd.h>

#include "log.h"
#include "netaddr.h"

#define HTTPD_CONN_LIMIT 64
#define HTTPD_TIMEOUT_S	 10

struct httpd {
	struct MHD_Daemon *mhd;
	struct metrics *reg;
};

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned status, const char *ctype,
			     char *body, size_t len, enum MHD_ResponseMemoryMode mode)
{
	struct MHD_Response *resp;
	enum MHD_Result ret;

	resp = MHD_create_response_from_buffer(len, body, mode);
	if (!resp) {
		if (mode == MHD_RESPMEM_MUST_FREE)
			free(body);
		return MHD_NO;
	}
	MHD_add_response_header(resp, "Content-Type", ctype);
	ret = MHD_queue_response(conn, status, resp);
	MHD_destroy_response(resp);
	return ret;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *conn, const char *url,
			      const char *method, const char *version, const char *upload_data,
			      size_t *upload_data_size, void **con_cls)
{
	static const char index_page[] = "cksm: metrics at /metrics\n";
	static const char not_found[] = "not found\n";
	static const char bad_method[] = "method not allowed\n";
	struct httpd *h = cls;
	char *body;
	size_t len;

	(void)version;
	(void)upload_data;
	(void)upload_data_size;
	(void)con_cls;
	if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
		return reply(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "text/plain", (char *)bad_method,
			     sizeof(bad_method) - 1, MHD_RESPMEM_PERSISTENT);
	if (strcmp(url, "/") == 0)
		return reply(conn, MHD_HTTP_OK, "text/plain", (char *)index_page,
			     sizeof(index_page) - 1, MHD_RESPMEM_PERSISTENT);
	if (strcmp(url, "/metrics") != 0)
		return reply(conn, MHD_HTTP_NOT_FOUND, "text/plain", (char *)not_found,
			     sizeof(not_found) - 1, MHD_RESPMEM_PERSISTENT);
	body = metrics_render(h->reg, &len);
	if (!body)
		return MHD_NO;
	return reply(conn, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", body, len,
		     MHD_RESPMEM_MUST_FREE);
}

static void mhd_log(void *cls, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
	char msg[256];

	(void)cls;
	vsnprintf(msg, sizeof(msg), fmt, ap);
	msg[strcspn(msg, "\n")] = '\0';
	log_warn("%s", msg);
}

struct httpd *httpd_create(const char *addr, struct metrics *reg)
{
	struct sockaddr_storage ss;
	struct httpd *h;
	unsigned flags;
	int err;

	err = netaddr_parse(addr, &ss);
	if (err) {
		log_error("metrics address %s: %s", addr, strerror(-err));
		return NULL;
	}
	h = calloc(1, sizeof(*h));
	if (!h)
		return NULL;
	h->reg = reg;
	flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG | MHD_USE_EPOLL;
	if (ss.ss_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	h->mhd = MHD_start_daemon(flags, 0, NULL, NULL, handle, h, MHD_OPTION_EXTERNAL_LOGGER,
				  mhd_log, NULL, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
				  MHD_OPTION_CONNECTION_LIMIT, (unsigned)HTTPD_CONN_LIMIT,
				  MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)HTTPD_TIMEOUT_S,
				  MHD_OPTION_END);
	if (!h->mhd) {
		log_error("cannot serve metrics on %s (address in use?)", addr);
		free(h);
		return NULL;
	}
	log_info("metrics on http://%s/metrics", addr);
	return h;
}

void httpd_destroy(struct httpd *h)
{
	if (!h)
		return;
	MHD_stop_daemon(h->mhd);
	free(h);
}
