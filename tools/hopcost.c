/*
 * hopcost.c: what one forwarding hop costs the kernel on loopback, the
 * figure behind ferry's 1 MiB result (docs/internals.md "Splicing").
 *
 *   hopcost [-m copy|splice] [-g GIB]
 *
 * Three processes and two loopback TCP connections: a source writes GIB
 * GiB (default 2) in 64 KiB writes; the hop reads it and sends it on in
 * messages of up to 128 KiB, each behind a 24-byte header (as ferry's
 * agent frames a DATA payload); the sink reads each header and splices
 * the payload to /dev/null (as ferryd moves a DATA payload). The hop
 * either copies (read, then writev of header and payload) or splices
 * (source -> pipe, the header with MSG_MORE, pipe -> socket). Prints
 * "hopcost mode=M hop_ms=H sink_ms=S source_ms=O" (CPU ms, user + system,
 * per 100 MiB) and exits 0; 1 on a failure, 2 on bad usage.
 *
 * A benchmark of the kernel, not of ferry: nginx as a proxy is one such
 * hop; ferry on one box is two (the agent and the relay).
 */
#include "fy.h"
#include "net/net.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#define MSG_MAX   (128 * 1024)
#define HDR_LEN   24
#define PIPE_SIZE (256 * 1024)

static void die(const char *what)
{
    fprintf(stderr, "hopcost: %s: %s\n", what, strerror(errno));
    exit(1);
}

/* A listening socket on 127.0.0.1, any port: its port in *port. */
static int listen_any(int *port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    int s = socket(AF_INET, SOCK_STREAM, 0);

    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(s, 1) != 0
        || getsockname(s, (struct sockaddr *)&a, &len) != 0)
        die("listen");
    *port = ntohs(a.sin_port);
    return s;
}

static int dial(int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int s = socket(AF_INET, SOCK_STREAM, 0);

    if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof(a)) != 0)
        die("connect");
    fy_net_nodelay(s);
    return s;
}

static int accept_one(int l)
{
    int c = accept(l, NULL, NULL);
    if (c < 0)
        die("accept");
    close(l);
    return c;
}

static void make_pipe(int p[2])
{
    if (pipe(p) != 0)
        die("pipe");
    (void)fcntl(p[1], F_SETPIPE_SZ, PIPE_SIZE);
}

static void source(int l, uint64_t total)
{
    static char block[64 * 1024];
    int c = accept_one(l);

    memset(block, 'x', sizeof(block));
    while (total > 0) {
        ssize_t n = write(c, block, (size_t)FY_MIN((uint64_t)sizeof(block), total));
        if (n <= 0)
            die("source write");
        total -= (uint64_t)n;
    }
    exit(0);
}

static bool read_full(int fd, uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t r = read(fd, p, n);
        if (r <= 0)
            return false;
        p += r;
        n -= (size_t)r;
    }
    return true;
}

static void sink(int l)
{
    uint8_t hdr[HDR_LEN];
    int c = accept_one(l), p[2], null = open("/dev/null", O_WRONLY);

    if (null < 0)
        die("/dev/null");
    make_pipe(p);
    while (read_full(c, hdr, sizeof(hdr))) {
        uint32_t left = (uint32_t)hdr[20] << 24 | (uint32_t)hdr[21] << 16 | (uint32_t)hdr[22] << 8 | hdr[23];
        while (left > 0) {
            ssize_t in = splice(c, NULL, p[1], NULL, left, SPLICE_F_MOVE);
            if (in <= 0)
                die("sink splice");
            left -= (uint32_t)in;
            while (in > 0) {
                ssize_t out = splice(p[0], NULL, null, NULL, (size_t)in, SPLICE_F_MOVE);
                if (out <= 0)
                    die("sink splice out");
                in -= out;
            }
        }
    }
    exit(0);
}

static void put_len(uint8_t *hdr, size_t n)
{
    hdr[20] = (uint8_t)(n >> 24);
    hdr[21] = (uint8_t)(n >> 16);
    hdr[22] = (uint8_t)(n >> 8);
    hdr[23] = (uint8_t)n;
}

static void write_all_iov(int fd, struct iovec *iov, int cnt)
{
    while (cnt > 0) {
        ssize_t n = writev(fd, iov, cnt);
        if (n < 0)
            die("hop writev");
        while (cnt > 0 && (size_t)n >= iov->iov_len) {
            n -= (ssize_t)iov->iov_len;
            iov++;
            cnt--;
        }
        if (cnt > 0) {
            iov->iov_base = (char *)iov->iov_base + n;
            iov->iov_len -= (size_t)n;
        }
    }
}

/* The hop: from src to dst, by copy or by splice. */
static void hop(int src, int dst, bool spliced)
{
    static uint8_t buf[MSG_MAX];
    uint8_t hdr[HDR_LEN] = {0x82, 127};
    int p[2];

    make_pipe(p);
    for (;;) {
        ssize_t n = spliced ? splice(src, NULL, p[1], NULL, MSG_MAX, SPLICE_F_MOVE) : read(src, buf, MSG_MAX);
        if (n < 0)
            die("hop read");
        if (n == 0)
            return;
        put_len(hdr, (size_t)n);
        if (!spliced) {
            struct iovec iov[2] = {{hdr, sizeof(hdr)}, {buf, (size_t)n}};
            write_all_iov(dst, iov, 2);
            continue;
        }
        if (send(dst, hdr, sizeof(hdr), MSG_MORE) != (ssize_t)sizeof(hdr))
            die("hop send");
        while (n > 0) {
            ssize_t out = splice(p[0], NULL, dst, NULL, (size_t)n, SPLICE_F_MOVE | SPLICE_F_MORE);
            if (out <= 0)
                die("hop splice out");
            n -= out;
        }
    }
}

static double cpu_ms(const struct rusage *r)
{
    return (double)(r->ru_utime.tv_sec + r->ru_stime.tv_sec) * 1e3
           + (double)(r->ru_utime.tv_usec + r->ru_stime.tv_usec) / 1e3;
}

int main(int argc, char **argv)
{
    struct rusage self, src_ru = {0}, sink_ru = {0}, ru;
    bool spliced = false;
    uint64_t total = 2ULL << 30;
    pid_t src_pid, sink_pid, pid;
    int opt, lsrc, lsink, psrc, psink, src, dst, status, failed = 0;
    double per;

    while ((opt = getopt(argc, argv, "m:g:")) != -1) {
        if (opt == 'm' && (strcmp(optarg, "copy") == 0 || strcmp(optarg, "splice") == 0))
            spliced = strcmp(optarg, "splice") == 0;
        else if (opt == 'g' && atoi(optarg) > 0)
            total = (uint64_t)atoi(optarg) << 30;
        else {
            fprintf(stderr, "usage: hopcost [-m copy|splice] [-g GIB]\n");
            return 2;
        }
    }
    lsrc = listen_any(&psrc);
    lsink = listen_any(&psink);
    if ((src_pid = fork()) == 0) {
        close(lsink);
        source(lsrc, total);
    }
    if ((sink_pid = fork()) == 0) {
        close(lsrc);
        sink(lsink);
    }
    if (src_pid < 0 || sink_pid < 0)
        die("fork");
    close(lsrc);
    close(lsink);
    src = dial(psrc);
    dst = dial(psink);
    hop(src, dst, spliced);
    getrusage(RUSAGE_SELF, &self);
    close(src);
    close(dst);
    while ((pid = wait4(-1, &status, 0, &ru)) > 0) {
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            failed = 1;
        if (pid == src_pid)
            src_ru = ru;
        else if (pid == sink_pid)
            sink_ru = ru;
    }
    if (failed) {
        fprintf(stderr, "hopcost: the source or the sink failed\n");
        return 1;
    }
    per = 100.0 * (1 << 20) / (double)total;
    printf("hopcost mode=%s hop_ms=%.0f sink_ms=%.0f source_ms=%.0f\n", spliced ? "splice" : "copy",
           cpu_ms(&self) * per, cpu_ms(&sink_ru) * per, cpu_ms(&src_ru) * per);
    return 0;
}
