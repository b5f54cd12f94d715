/*
 * net.h: socket helpers shared by relay and agent: address parsing,
 * listening and connecting sockets (non-blocking, close-on-exec), and
 * formatting peer addresses.
 */
#ifndef FY_NET_H
#define FY_NET_H

#include "fy.h"

#include <sys/socket.h>

#define FY_ADDRSTRLEN 64   /* "[v6]:port" with room to spare */

/*
 * Parse "host:port", "[v6]:port" or ":port" / "port" (host 127.0.0.1) into a
 * numeric address (no DNS: listeners are given as addresses). Returns FY_OK
 * or FY_ERR.
 */
int fy_net_parse_addr(const char *s, struct sockaddr_storage *ss, socklen_t *len) FY_MUST_USE;

/* A listening TCP socket (SO_REUSEADDR, non-blocking, CLOEXEC). Returns the
 * fd or FY_ERR (errno set). */
int fy_net_listen(const struct sockaddr_storage *ss, socklen_t len, int backlog);

/* Start a non-blocking connect. Returns the fd (connect may be in progress:
 * wait for writability, then fy_net_connect_result) or FY_ERR (errno). */
int fy_net_connect(const struct sockaddr *sa, socklen_t len);
/* 0 once connected, or the errno of the failed connect. */
int fy_net_connect_result(int fd);

/* "ip:port" of a socket address into out[FY_ADDRSTRLEN]. */
void fy_net_format(const struct sockaddr *sa, char *out);
/* Only the ip part. */
void fy_net_format_ip(const struct sockaddr *sa, char *out);
/* The port of a socket address (host order). */
int fy_net_port(const struct sockaddr *sa);
/* True for 127.0.0.0/8 and ::1 (and v4-mapped loopback). */
bool fy_net_is_loopback(const struct sockaddr *sa);

void fy_net_nodelay(int fd);

#endif
