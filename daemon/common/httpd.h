/*
 * httpd - the /metrics endpoint (libmicrohttpd on its own thread).
 */
#ifndef CKSM_HTTPD_H
#define CKSM_HTTPD_H

#include "metrics.h"

struct httpd;

/*
 * Serve GET /metrics from reg on addr ("host:port", numeric host).
 * Returns NULL (with the reason logged) when the address cannot be bound.
 * The server reads reg from its own thread until httpd_destroy.
 */
struct httpd *httpd_create(const char *addr, struct metrics *reg);
void httpd_destroy(struct httpd *h);

#endif
