/*
 * bench_ws.c: a WebSocket echo load generator (wrk has no WebSocket), for
 * `make bench`.
 *
 *   bench_ws [-c CONNS] [-t THREADS] [-d SECONDS] [-s BYTES] [-H HOST] [-p PATH] HOST:PORT
 *
 * Opens CONNS connections to HOST:PORT (an IPv4 address), upgrades each with
 * GET PATH (default /ws; Host: HOST, default the address), then, for SECONDS
 * (default 4), keeps one message in flight per connection: it sends a
 * BYTES-byte (default 1024) masked binary message and, once the whole echo
 * is back (same length), sends the next. THREADS (default 2) threads share
 * the connections, each with its own epoll loop, like wrk. At the end it
 * prints one line of key=value pairs:
 *
 *   ws conns=50 seconds=4.000 messages=123456 msg_per_s=30864.0 \
 *      p50_us=1580 p99_us=2900 p999_us=4100 max_us=9000 errors=0
 *
 * messages counts echoes completed within the window; latency is from the
 * send of a message to the last byte of its echo (microseconds, nearest
 * rank). errors counts connections that failed during the run (reset,
 * closed, a wrong echo). Exits 1 if a connection fails its upgrade or no
 * message came back at all, 2 on bad usage.
 *
 * Bounded: a fixed read buffer per connection, a capped latency sample
 * array per thread, and every wait ends at the deadline.
 */
#include "fy.h"
#include "ws/ws.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RBUF_CAP     (128 * 1024)   /* bytes read per connection before the reader consumes */
#define MAX_SIZE     (1024 * 1024)  /* largest message we send */
#define HEAD_CAP     4096           /* bytes of upgrade response head we accept */
#define SAMPLES_CAP  (1u << 22)     /* latency samples kept per thread (grown by doubling) */
#define MAX_EVENTS   256

typedef struct wsconn_s {
    int fd;
    bool dead;
    fy_ws_reader_t rd;
    uint64_t sent_ns;        /* when the message in flight was sent */
    size_t out_pos;          /* bytes of the frame written so far */
    size_t got;              /* payload bytes of the echo so far */
    size_t in_len;
    uint8_t in[RBUF_CAP];
} wsconn_t;

typedef struct worker_s {
    pthread_t tid;
    wsconn_t **conns;
    size_t nconns;
    uint64_t deadline_ns;
    uint64_t messages;
    uint64_t errors;
    uint64_t *samples;
    size_t nsamples, samples_cap;
} worker_t;

static uint8_t *g_frame;      /* the masked message frame every connection sends */
static size_t g_frame_len;
static size_t g_size = 1024;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void usage(void)
{
    fprintf(stderr, "usage: bench_ws [-c CONNS] [-t THREADS] [-d SECONDS] [-s BYTES] "
                    "[-H HOST] [-p PATH] ADDR:PORT\n");
    exit(2);
}

static long num_arg(const char *s, long lo, long hi)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v < lo || v > hi)
        usage();
    return v;
}

static int fcntl_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

/* Blocking connect and upgrade, with 5 s timeouts. Returns the fd (now
 * non-blocking) or -1 with a message on stderr. */
static int ws_open(const struct sockaddr_in *sa, const char *host, const char *path)
{
    struct timeval tv = {5, 0};
    char key[25], want[29], req[1024], head[HEAD_CAP + 1];
    size_t hl = 0;
    int fd, one = 1, n;
    const char *acc;

    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        perror("bench_ws: socket");
        return -1;
    }
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, (const struct sockaddr *)sa, sizeof(*sa)) < 0) {
        perror("bench_ws: connect");
        goto fail;
    }
    fy_ws_make_key(key);
    if (fy_ws_accept_key(key, strlen(key), want) != FY_OK)
        goto fail;
    n = snprintf(req, sizeof(req),
                 "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n",
                 path, host, key);
    if (n < 0 || (size_t)n >= sizeof(req) || send(fd, req, (size_t)n, MSG_NOSIGNAL) != n) {
        fprintf(stderr, "bench_ws: cannot send the upgrade request\n");
        goto fail;
    }
    /* Read byte by byte up to the end of the head, so no frame byte that
     * follows it is swallowed here. Only at setup, so the cost is moot. */
    while (hl < HEAD_CAP) {
        ssize_t r = read(fd, head + hl, 1);
        if (r <= 0) {
            fprintf(stderr, "bench_ws: upgrade: %s\n", r == 0 ? "connection closed" : strerror(errno));
            goto fail;
        }
        hl++;
        if (hl >= 4 && memcmp(head + hl - 4, "\r\n\r\n", 4) == 0)
            break;
    }
    head[hl] = '\0';
    if (strncmp(head, "HTTP/1.1 101", 12) != 0) {
        fprintf(stderr, "bench_ws: upgrade refused: %.*s\n", (int)strcspn(head, "\r\n"), head);
        goto fail;
    }
    acc = strcasestr(head, "\r\nSec-WebSocket-Accept:");
    if (acc == NULL) {
        fprintf(stderr, "bench_ws: no Sec-WebSocket-Accept\n");
        goto fail;
    }
    acc += strlen("\r\nSec-WebSocket-Accept:");
    acc += strspn(acc, " \t");
    if (strncmp(acc, want, 28) != 0) {
        fprintf(stderr, "bench_ws: wrong Sec-WebSocket-Accept\n");
        goto fail;
    }
    if (fcntl_nonblock(fd) < 0)
        goto fail;
    return fd;

fail:
    close(fd);
    return -1;
}

static void conn_fail(worker_t *w, int ep, wsconn_t *c)
{
    if (c->dead)
        return;
    c->dead = true;
    w->errors++;
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
}

/* Write what is left of the frame in flight. Returns false on error. */
static bool conn_send(int ep, wsconn_t *c)
{
    while (c->out_pos < g_frame_len) {
        ssize_t n = send(c->fd, g_frame + c->out_pos, g_frame_len - c->out_pos, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
                return epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) == 0;
            }
            return false;
        }
        c->out_pos += (size_t)n;
    }
    return true;
}

static bool start_message(int ep, wsconn_t *c)
{
    c->out_pos = 0;
    c->got = 0;
    c->sent_ns = now_ns();
    return conn_send(ep, c);
}

/* Consume what sits in c->in. Returns false on error. */
static bool conn_parse(worker_t *w, int ep, wsconn_t *c)
{
    size_t pos = 0;

    for (;;) {
        fy_ws_event_t ev;
        ssize_t n = fy_ws_read(&c->rd, c->in + pos, c->in_len - pos, &ev);

        if (n < 0)
            return false;
        pos += (size_t)n;
        if (ev.type == FY_WS_EV_NONE) {
            if (n == 0)
                break;
        } else if (ev.type == FY_WS_EV_DATA) {
            c->got += ev.len;
        } else if (ev.type == FY_WS_EV_CONTROL) {
            if (ev.opcode == FY_WS_CLOSE)
                return false;
        } else if (ev.type == FY_WS_EV_MESSAGE_END) {
            uint64_t t = now_ns();
            /* A whole echo before the first send is done is not ours. */
            if (c->got != g_size || c->out_pos < g_frame_len)
                return false;
            if (t <= w->deadline_ns) {
                w->messages++;
                if (w->nsamples == w->samples_cap && w->samples_cap < SAMPLES_CAP) {
                    uint64_t *ns = realloc(w->samples, 2 * w->samples_cap * sizeof(uint64_t));
                    if (ns != NULL) {
                        w->samples = ns;
                        w->samples_cap *= 2;
                    }
                }
                if (w->nsamples < w->samples_cap)
                    w->samples[w->nsamples++] = t - c->sent_ns;
            }
            if (t < w->deadline_ns && !start_message(ep, c))
                return false;
        }
    }
    if (pos > 0) {
        memmove(c->in, c->in + pos, c->in_len - pos);
        c->in_len -= pos;
    }
    return true;
}

static void *worker_run(void *arg)
{
    worker_t *w = arg;
    struct epoll_event evs[MAX_EVENTS];
    size_t i, live = w->nconns;
    int ep = epoll_create1(EPOLL_CLOEXEC);

    if (ep < 0) {
        perror("bench_ws: epoll_create1");
        w->errors += w->nconns;
        return NULL;
    }
    for (i = 0; i < w->nconns; i++) {
        wsconn_t *c = w->conns[i];
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0 || !start_message(ep, c))
            conn_fail(w, ep, c);
    }
    while (live > 0) {
        uint64_t t = now_ns();
        int n, k;

        if (t >= w->deadline_ns)
            break;
        n = epoll_wait(ep, evs, MAX_EVENTS, (int)((w->deadline_ns - t) / 1000000u) + 1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            perror("bench_ws: epoll_wait");
            break;
        }
        for (k = 0; k < n; k++) {
            wsconn_t *c = evs[k].data.ptr;
            bool ok = true;

            if (c->dead)
                continue;
            if (evs[k].events & EPOLLOUT) {
                ok = conn_send(ep, c);
                if (ok && c->out_pos == g_frame_len) {
                    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
                    ok = epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) == 0;
                }
            }
            if (ok && (evs[k].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) {
                ssize_t r = read(c->fd, c->in + c->in_len, RBUF_CAP - c->in_len);
                if (r > 0) {
                    c->in_len += (size_t)r;
                    ok = conn_parse(w, ep, c);
                } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
                    ok = false;
                }
            }
            if (!ok) {
                conn_fail(w, ep, c);
                live--;
            }
        }
    }
    for (i = 0; i < w->nconns; i++) {
        if (!w->conns[i]->dead) {
            close(w->conns[i]->fd);
            w->conns[i]->dead = true;
        }
    }
    close(ep);
    return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of sorted v[0..n), in microseconds. */
static uint64_t pct_us(const uint64_t *v, size_t n, double p)
{
    size_t r;
    if (n == 0)
        return 0;
    r = (size_t)(p / 100.0 * (double)n + 0.999999);
    if (r < 1)
        r = 1;
    if (r > n)
        r = n;
    return v[r - 1] / 1000u;
}

int main(int argc, char **argv)
{
    long conns = 50, threads = 2, seconds = 4;
    const char *host = NULL, *path = "/ws", *target = NULL;
    struct sockaddr_in sa;
    char addr[64];
    const char *colon;
    uint8_t mask[4] = {0x12, 0x34, 0x56, 0x78};
    worker_t *ws;
    wsconn_t **all;
    uint64_t start, msgs = 0, errs = 0, *samples;
    size_t nsamples = 0, i, hl;
    long t;

    for (int a = 1; a < argc; a++) {
        const char *o = argv[a], *val;
        if (o[0] != '-') {
            if (target != NULL)
                usage();
            target = o;
            continue;
        }
        /* -c 50 or -c50 */
        if (o[1] == '\0' || strchr("ctdsHp", o[1]) == NULL)
            usage();
        if (o[2] != '\0') {
            val = o + 2;
        } else {
            if (a + 1 >= argc)
                usage();
            val = argv[++a];
        }
        switch (o[1]) {
        case 'c': conns = num_arg(val, 1, 100000); break;
        case 't': threads = num_arg(val, 1, 64); break;
        case 'd': seconds = num_arg(val, 1, 3600); break;
        case 's': g_size = (size_t)num_arg(val, 1, MAX_SIZE); break;
        case 'H': host = val; break;
        default: path = val; break;
        }
    }
    if (target == NULL || (colon = strrchr(target, ':')) == NULL ||
        (size_t)(colon - target) >= sizeof(addr))
        usage();
    memcpy(addr, target, (size_t)(colon - target));
    addr[colon - target] = '\0';
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)num_arg(colon + 1, 1, 65535));
    if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1)
        usage();
    if (host == NULL)
        host = target;
    if (threads > conns)
        threads = conns;
    signal(SIGPIPE, SIG_IGN);
    if (sodium_init() < 0)
        return 1;

    /* The one frame everybody sends: masked once, here. */
    hl = fy_ws_header_size(g_size, true);
    g_frame_len = hl + g_size;
    g_frame = malloc(g_frame_len);
    all = calloc((size_t)conns, sizeof(*all));
    ws = calloc((size_t)threads, sizeof(*ws));
    if (g_frame == NULL || all == NULL || ws == NULL)
        return 1;
    fy_ws_write_header(g_frame, true, FY_WS_BINARY, g_size, mask);
    memset(g_frame + hl, 'm', g_size);
    fy_ws_mask(g_frame + hl, g_size, mask, 0);

    for (i = 0; i < (size_t)conns; i++) {
        all[i] = malloc(sizeof(wsconn_t));
        if (all[i] == NULL)
            return 1;
        memset(all[i], 0, offsetof(wsconn_t, in));
        all[i]->fd = ws_open(&sa, host, path);
        if (all[i]->fd < 0) {
            fprintf(stderr, "bench_ws: connection %zu of %ld failed its upgrade\n", i + 1, conns);
            return 1;
        }
        fy_ws_reader_init(&all[i]->rd, false, MAX_SIZE);
    }

    for (t = 0; t < threads; t++) {
        worker_t *w = &ws[t];
        w->conns = all + (size_t)t * (size_t)conns / (size_t)threads;
        w->nconns = (size_t)(t + 1) * (size_t)conns / (size_t)threads -
                    (size_t)t * (size_t)conns / (size_t)threads;
        w->samples_cap = 65536;
        w->samples = malloc(w->samples_cap * sizeof(uint64_t));
        if (w->samples == NULL)
            return 1;
    }
    start = now_ns();
    for (t = 0; t < threads; t++) {
        ws[t].deadline_ns = start + (uint64_t)seconds * 1000000000u;
        if (pthread_create(&ws[t].tid, NULL, worker_run, &ws[t]) != 0) {
            fprintf(stderr, "bench_ws: pthread_create failed\n");
            return 1;
        }
    }
    for (t = 0; t < threads; t++) {
        pthread_join(ws[t].tid, NULL);
        msgs += ws[t].messages;
        errs += ws[t].errors;
        nsamples += ws[t].nsamples;
    }
    samples = malloc((nsamples ? nsamples : 1) * sizeof(uint64_t));
    if (samples == NULL)
        return 1;
    nsamples = 0;
    for (t = 0; t < threads; t++) {
        memcpy(samples + nsamples, ws[t].samples, ws[t].nsamples * sizeof(uint64_t));
        nsamples += ws[t].nsamples;
    }
    qsort(samples, nsamples, sizeof(uint64_t), cmp_u64);
    /* The rate is over the nominal window: messages completed after the
     * deadline are not counted. */
    printf("ws conns=%ld seconds=%.3f messages=%llu msg_per_s=%.1f p50_us=%llu p99_us=%llu "
           "p999_us=%llu max_us=%llu errors=%llu\n",
           conns, (double)seconds, (unsigned long long)msgs, (double)msgs / (double)seconds,
           (unsigned long long)pct_us(samples, nsamples, 50),
           (unsigned long long)pct_us(samples, nsamples, 99),
           (unsigned long long)pct_us(samples, nsamples, 99.9),
           (unsigned long long)(nsamples ? samples[nsamples - 1] / 1000u : 0),
           (unsigned long long)errs);
    fflush(stdout);
    for (t = 0; t < threads; t++)
        free(ws[t].samples);
    for (i = 0; i < (size_t)conns; i++)
        free(all[i]);
    free(samples);
    free(all);
    free(ws);
    free(g_frame);
    return msgs > 0 ? 0 : 1;
}
