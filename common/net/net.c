/*
 * net.c: see net.h.
 */
#include "net/net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int fy_net_parse_addr(const char *s, struct sockaddr_storage *ss, socklen_t *len)
{
    char host[128];
    const char *colon, *port_s;
    char *end;
    long port;
    size_t hl;

    memset(ss, 0, sizeof(*ss));
    if (s[0] == '[') {
        const char *rb = strchr(s, ']');
        if (rb == NULL || rb[1] != ':')
            return FY_ERR;
        hl = (size_t)(rb - s - 1);
        if (hl >= sizeof(host))
            return FY_ERR;
        memcpy(host, s + 1, hl);
        host[hl] = '\0';
        port_s = rb + 2;
    } else if ((colon = strrchr(s, ':')) != NULL) {
        hl = (size_t)(colon - s);
        if (hl >= sizeof(host))
            return FY_ERR;
        memcpy(host, s, hl);
        host[hl] = '\0';
        if (hl == 0)
            strcpy(host, "127.0.0.1");
        port_s = colon + 1;
    } else {
        strcpy(host, "127.0.0.1");
        port_s = s;
    }
    if (strcmp(host, "localhost") == 0)
        strcpy(host, "127.0.0.1");
    errno = 0;
    port = strtol(port_s, &end, 10);
    if (errno != 0 || end == port_s || *end != '\0' || port < 0 || port > 65535)
        return FY_ERR;
    if (strchr(host, ':') != NULL) {
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
        if (inet_pton(AF_INET6, host, &a6->sin6_addr) != 1)
            return FY_ERR;
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        *len = sizeof(*a6);
    } else {
        struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
        if (inet_pton(AF_INET, host, &a4->sin_addr) != 1)
            return FY_ERR;
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        *len = sizeof(*a4);
    }
    return FY_OK;
}

int fy_net_listen(const struct sockaddr_storage *ss, socklen_t len, int backlog)
{
    int fd, one = 1;

    fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return FY_ERR;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (ss->ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fd, (const struct sockaddr *)ss, len) < 0 || listen(fd, backlog) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return FY_ERR;
    }
    return fd;
}

int fy_net_connect(const struct sockaddr *sa, socklen_t len)
{
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return FY_ERR;
    if (connect(fd, sa, len) < 0 && errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        errno = e;
        return FY_ERR;
    }
    fy_net_nodelay(fd);
    return fd;
}

int fy_net_connect_result(int fd)
{
    int err = 0;
    socklen_t l = sizeof(err);
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &l) < 0)
        return errno;
    return err;
}

/* Decimal digits of v (< 100000) at out; returns the end. */
static char *put_uint(char *out, unsigned v)
{
    char tmp[8];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v > 0);
    while (n > 0)
        *out++ = tmp[--n];
    return out;
}

/* Dotted quad of a network-order IPv4 address, NUL-terminated; returns the
 * end. inet_ntop goes through sprintf and costs ten times as much, once per
 * accepted connection. */
static char *put_ipv4(char *out, const struct in_addr *a)
{
    const uint8_t *b = (const uint8_t *)&a->s_addr;
    int i;
    for (i = 0; i < 4; i++) {
        if (i > 0)
            *out++ = '.';
        out = put_uint(out, b[i]);
    }
    *out = '\0';
    return out;
}

void fy_net_format_ip(const struct sockaddr *sa, char *out)
{
    out[0] = '\0';
    if (sa->sa_family == AF_INET)
        put_ipv4(out, &((const struct sockaddr_in *)sa)->sin_addr);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, out, FY_ADDRSTRLEN);
    else
        strcpy(out, "unix");
}

int fy_net_port(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)sa)->sin_port);
    if (sa->sa_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
    return 0;
}

void fy_net_format(const struct sockaddr *sa, char *out)
{
    char ip[FY_ADDRSTRLEN];
    if (sa->sa_family == AF_INET) {
        char *e = put_ipv4(out, &((const struct sockaddr_in *)sa)->sin_addr);
        *e++ = ':';
        *put_uint(e, (unsigned)fy_net_port(sa)) = '\0';
        return;
    }
    fy_net_format_ip(sa, ip);
    if (sa->sa_family == AF_INET6)
        snprintf(out, FY_ADDRSTRLEN, "[%.45s]:%d", ip, fy_net_port(sa));
    else
        snprintf(out, FY_ADDRSTRLEN, "%.45s:%d", ip, fy_net_port(sa));
}

bool fy_net_is_loopback(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
    if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        if (IN6_IS_ADDR_LOOPBACK(a))
            return true;
        if (IN6_IS_ADDR_V4MAPPED(a))
            return a->s6_addr[12] == 127;
    }
    return false;
}

void fy_net_nodelay(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}
