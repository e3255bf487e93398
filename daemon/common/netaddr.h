/*
 * netaddr - "host:port" strings, as written in the config file.
 */
#ifndef CKSM_NETADDR_H
#define CKSM_NETADDR_H

#include <stddef.h>
#include <sys/socket.h>

/*
 * Parse a numeric "a.b.c.d:port" or "[v6]:port" into ss. Returns 0,
 * -EINVAL for a malformed string or -ERANGE for a port outside 1..65535
 * (0 is allowed: let the kernel choose).
 */
int netaddr_parse(const char *s, struct sockaddr_storage *ss);

/* Split "host:port" or "[host]:port" into host and port strings. */
int netaddr_split(const char *s, char *host, size_t hostlen, char *port, size_t portlen);

/* Format a socket address as "ip:port" or "[ip]:port". */
void netaddr_format(const struct sockaddr *sa, char *buf, size_t len);

#endif
