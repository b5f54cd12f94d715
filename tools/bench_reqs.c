/*
 * bench_reqs.c: a tiny deterministic HTTP/1.1 client for the callgrind cost
 * figure (tools/bench_callgrind.sh): N requests, strictly one after another.
 *
 *   bench_reqs [-n N] [-H HOST] [-p PATH] [-C] ADDR:PORT
 *
 * Sends GET PATH (default /1k) with Host: HOST (default ADDR:PORT) N times
 * (default 2000) over one keep-alive connection, or with -C a new
 * connection per request with "Connection: close". Each response must be a
 * 200 framed by Content-Length; its body is read whole before the next
 * request goes out, so every process on the path sees the same sequence of
 * events run after run. Prints "reqs n=N seconds=S" and exits 0, or names
 * the first failure and exits 1 (2 on bad usage). Blocking sockets with
 * 10 s timeouts: a wedged peer ends the run.
 */
#include "fy.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUF_CAP (64 * 1024)

static char g_buf[BUF_CAP];

static void usage(void)
{
    fprintf(stderr, "usage: bench_reqs [-n N] [-H HOST] [-p PATH] [-C] ADDR:PORT\n");
    exit(2);
}

static int dial(const struct sockaddr_in *sa)
{
    struct timeval tv = {10, 0};
    int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0)
        return -1;
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, (const struct sockaddr *)sa, sizeof(*sa)) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* One request and its whole response on fd. Returns 0 or -1 (with a
 * message). */
static int one_request(int fd, const char *req, size_t req_len, long i)
{
    size_t have = 0, hlen, body = 0, want;
    const char *e, *cl;

    if (send(fd, req, req_len, MSG_NOSIGNAL) != (ssize_t)req_len) {
        fprintf(stderr, "bench_reqs: request %ld: send: %s\n", i, strerror(errno));
        return -1;
    }
    for (;;) {
        ssize_t n = read(fd, g_buf + have, BUF_CAP - 1 - have);
        if (n <= 0) {
            fprintf(stderr, "bench_reqs: request %ld: %s before the end of the head\n", i,
                    n == 0 ? "EOF" : strerror(errno));
            return -1;
        }
        have += (size_t)n;
        g_buf[have] = '\0';
        e = strstr(g_buf, "\r\n\r\n");
        if (e != NULL)
            break;
        if (have == BUF_CAP - 1) {
            fprintf(stderr, "bench_reqs: request %ld: head too large\n", i);
            return -1;
        }
    }
    hlen = (size_t)(e + 4 - g_buf);
    if (strncmp(g_buf, "HTTP/1.1 200 ", 13) != 0) {
        fprintf(stderr, "bench_reqs: request %ld: %.*s\n", i, (int)strcspn(g_buf, "\r\n"), g_buf);
        return -1;
    }
    cl = strcasestr(g_buf, "\r\nContent-Length:");
    if (cl == NULL || cl > e) {
        fprintf(stderr, "bench_reqs: request %ld: no Content-Length\n", i);
        return -1;
    }
    want = (size_t)strtoul(cl + strlen("\r\nContent-Length:"), NULL, 10);
    body = have - hlen;
    while (body < want) {
        ssize_t n = read(fd, g_buf, FY_MIN((size_t)BUF_CAP, want - body));
        if (n <= 0) {
            fprintf(stderr, "bench_reqs: request %ld: %s in the body\n", i,
                    n == 0 ? "EOF" : strerror(errno));
            return -1;
        }
        body += (size_t)n;
    }
    if (body != want) {
        fprintf(stderr, "bench_reqs: request %ld: %zu bytes past the body\n", i, body - want);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    long n = 2000, i;
    bool close_each = false;
    const char *host = NULL, *path = "/1k", *target = NULL, *colon;
    char addr[64], req[1024];
    struct sockaddr_in sa;
    struct timespec t0, t1;
    int fd = -1, len;

    for (int a = 1; a < argc; a++) {
        const char *o = argv[a];
        if (strcmp(o, "-C") == 0) {
            close_each = true;
        } else if (o[0] != '-') {
            if (target != NULL)
                usage();
            target = o;
        } else if (a + 1 < argc && strcmp(o, "-n") == 0) {
            char *end;
            n = strtol(argv[++a], &end, 10);
            if (*end != '\0' || n < 1 || n > 100000000)
                usage();
        } else if (a + 1 < argc && strcmp(o, "-H") == 0) {
            host = argv[++a];
        } else if (a + 1 < argc && strcmp(o, "-p") == 0) {
            path = argv[++a];
        } else {
            usage();
        }
    }
    if (target == NULL || (colon = strrchr(target, ':')) == NULL ||
        (size_t)(colon - target) >= sizeof(addr))
        usage();
    memcpy(addr, target, (size_t)(colon - target));
    addr[colon - target] = '\0';
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)atoi(colon + 1));
    if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1 || sa.sin_port == 0)
        usage();
    if (host == NULL)
        host = target;
    signal(SIGPIPE, SIG_IGN);
    len = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: bench_reqs\r\n%s\r\n",
                   path, host, close_each ? "Connection: close\r\n" : "");
    if (len < 0 || (size_t)len >= sizeof(req))
        usage();

    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (i = 1; i <= n; i++) {
        if (fd < 0 && (fd = dial(&sa)) < 0) {
            fprintf(stderr, "bench_reqs: request %ld: connect: %s\n", i, strerror(errno));
            return 1;
        }
        if (one_request(fd, req, (size_t)len, i) < 0)
            return 1;
        if (close_each) {
            close(fd);
            fd = -1;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (fd >= 0)
        close(fd);
    printf("reqs n=%ld seconds=%.3f\n", n,
           (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
    return 0;
}
