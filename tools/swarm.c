/*
 * swarm.c: many agents, or many idle end users, from one process, to
 * measure what ferryd spends per idle tunnel and per idle client connection
 * (issue 10) and to check that thousands of tunnels work at once.
 *
 *   swarm agents  [-n N] [-p PREFIX] [-c PARALLEL] [-d SECONDS] [-P AGENT_PATH] HOST:PORT
 *   swarm clients [-n N] [-c PARALLEL] [-d SECONDS] [-H HOST] HOST:PORT
 *
 * agents: N tunnel connections to the relay at HOST:PORT (an IPv4
 * address, loopback in tests), each its own tunnel PREFIX-I (I = 0..N-1,
 * PREFIX default "sw"), speaking the real agent protocol (docs/PROTOCOL.md):
 * the WebSocket upgrade under AGENT_PATH (default /_ferry/tunnel) with one
 * Ferry-Session for the whole swarm, HELLO, READY, a mux PING every 10 s.
 * Each tunnel answers every request head it is sent with
 *
 *   HTTP/1.1 200 OK, Content-Type: text/plain, body "swarm PREFIX-I\n"
 *
 * so a test can check that a request reached the right tunnel. Only
 * bodiless requests (GET, HEAD-less) are understood: a request ends at its
 * blank line.
 *
 * clients: N TCP connections to HOST:PORT that send nothing; with -H HOST,
 * each first sends one request (GET /swarm, Host: HOST), reads its whole 200
 * answer and then stays idle on the kept-alive connection.
 *
 * At most PARALLEL (default 128) connections are being set up at a time.
 * Once every connection is up or has failed, one line goes to stdout:
 *
 *   ready agents=10000 failed=0 seconds=2.41
 *
 * Then the swarm holds its connections for SECONDS (default 60) or until
 * SIGTERM/SIGINT, and prints
 *
 *   done agents=10000 alive=10000 requests=25 errors=0
 *
 * (alive: connections the relay had not closed). Exit status 0 when no
 * connection failed or was lost, 1 otherwise, 2 on bad usage. The soft
 * RLIMIT_NOFILE is raised to the hard limit first (20000 here, so runs of
 * 10,000 tunnels and of 10,000 clients are separate processes).
 */
#include "fy.h"
#include "http1/http1.h"
#include "mux/mux.h"
#include "net/net.h"
#include "tun/tun.h"
#include "ws/ws.h"

#include <arpa/inet.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#define HANDSHAKE_MS  10000
#define PING_MS       10000
#define TICK_MS       100
#define HEAD_MAX      2048

enum { S_IDLE = 0, S_CONNECTING, S_UPGRADE, S_HELLO, S_READY, S_FAILED, S_CLOSED };

typedef struct sw_stream_s {
    struct sw_stream_s *next;
    uint32_t            id;
    uint8_t             match;      /* bytes of "\r\n\r\n" matched so far */
    fy_mux_credit_t     credit;
} sw_stream_t;

typedef struct sw_conn_s {
    fy_tun_t     tun;               /* agents, once upgraded */
    fy_io_t      io;                /* connect and upgrade; clients: the whole life */
    int          state;
    uint32_t     index;
    uint64_t     started;           /* ms: connect began */
    uint64_t     pinged;            /* ms: last PING sent */
    char         key[25];
    uint8_t     *head;              /* the upgrade answer while it arrives */
    size_t       hlen;
    sw_stream_t *streams;
} sw_conn_t;

static struct {
    fy_ev_t            *ev;
    bool                agents;
    uint32_t            n, parallel;
    const char         *prefix, *path;
    const char         *host;       /* clients -H: one request with this Host first */
    char                hostport[64];
    struct sockaddr_in  addr;
    char                session[33];
    sw_conn_t          *conns;
    uint32_t            next;       /* next connection to start */
    uint32_t            inflight, up, failed, lost;
    uint64_t            requests, errors;
    uint64_t            t0, deadline;
    bool                announced;
    fy_timer_t          tick;
    fy_task_t           fill;       /* start more connections */
} S;

static volatile sig_atomic_t stop_signal;

static void on_signal(int sig)
{
    stop_signal = sig;
}

static void usage(void)
{
    fprintf(stderr, "usage: swarm agents [-n N] [-p PREFIX] [-c PARALLEL] [-d SECONDS] [-P AGENT_PATH] HOST:PORT\n"
                    "       swarm clients [-n N] [-c PARALLEL] [-d SECONDS] [-H HOST] HOST:PORT\n");
    exit(2);
}

static void tunnel_id(const sw_conn_t *c, char *out, size_t cap)
{
    snprintf(out, cap, "%s-%u", S.prefix, c->index);
}

/* A connection is set up (or failed): the next one may start. */
static void settled(sw_conn_t *c, bool ok)
{
    S.inflight--;
    if (ok) {
        S.up++;
    } else {
        S.failed++;
        c->state = S_FAILED;
    }
    free(c->head);
    c->head = NULL;
    fy_task_queue(S.ev, &S.fill);
}

static void drop_streams(sw_conn_t *c)
{
    while (c->streams != NULL) {
        sw_stream_t *s = c->streams;
        c->streams = s->next;
        free(s);
    }
}

static sw_stream_t **find_stream(sw_conn_t *c, uint32_t id)
{
    sw_stream_t **pp;
    for (pp = &c->streams; *pp != NULL; pp = &(*pp)->next)
        if ((*pp)->id == id)
            return pp;
    return NULL;
}

/* --- agents: the tunnel protocol --------------------------------------------- */

static void answer(sw_conn_t *c, sw_stream_t *s)
{
    char id[80], resp[256];
    int bl, n;

    tunnel_id(c, id, sizeof(id));
    bl = (int)strlen(id) + 7;
    n = snprintf(resp, sizeof(resp),
                 "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\nswarm %s\n", bl, id);
    if (fy_tun_data_room(&c->tun, &s->credit) < (size_t)n
        || fy_tun_send_data(&c->tun, s->id, &s->credit, resp, (size_t)n) != FY_OK) {
        S.errors++;
        return;
    }
    S.requests++;
}

static void on_frame(fy_tun_t *t, const fy_mux_event_t *e)
{
    sw_conn_t *c = t->data;
    sw_stream_t *s, **pp;

    switch (e->hdr.type) {
    case FY_MUX_READY:
        if (c->state == S_HELLO) {
            c->state = S_READY;
            c->pinged = fy_ev_now(S.ev);
            settled(c, true);
        }
        return;
    case FY_MUX_OPEN:
        if (find_stream(c, e->hdr.stream) != NULL || (s = calloc(1, sizeof(*s))) == NULL) {
            (void)fy_tun_send_u32(t, FY_MUX_RST, e->hdr.stream, FY_MUX_RST_PROTOCOL, "bad OPEN");
            return;
        }
        s->id = e->hdr.stream;
        fy_mux_credit_init(&s->credit, FY_MUX_STREAM_WINDOW);
        s->next = c->streams;
        c->streams = s;
        return;
    case FY_MUX_WINDOW:
        if ((pp = find_stream(c, e->hdr.stream)) != NULL
            && fy_mux_credit_granted(&(*pp)->credit, fy_mux_get_u32(e->payload)) != FY_OK)
            S.errors++;
        return;
    case FY_MUX_FIN:
        /* The end user is done: so are we. */
        if ((pp = find_stream(c, e->hdr.stream)) != NULL) {
            s = *pp;
            *pp = s->next;
            (void)fy_tun_send(t, FY_MUX_FIN, s->id, NULL, 0);
            free(s);
        }
        return;
    case FY_MUX_RST:
        if ((pp = find_stream(c, e->hdr.stream)) != NULL) {
            s = *pp;
            *pp = s->next;
            free(s);
        }
        return;
    default:
        return;
    }
}

/* Each request head ends at its blank line: answer it there. */
static void on_data(fy_tun_t *t, uint32_t stream, const uint8_t *p, size_t n)
{
    static const char end[] = "\r\n\r\n";
    sw_conn_t *c = t->data;
    sw_stream_t **pp = find_stream(c, stream), *s;
    size_t i;

    if (pp == NULL) {
        fy_tun_consumed(t, 0, NULL, n);
        return;
    }
    s = *pp;
    if (fy_mux_credit_received(&s->credit, (uint32_t)n) != FY_OK) {
        S.errors++;
        fy_tun_close(t, "stream window exceeded");
        return;
    }
    for (i = 0; i < n; i++) {
        if (p[i] == (uint8_t)end[s->match]) {
            if (++s->match == 4) {
                s->match = 0;
                answer(c, s);
            }
        } else {
            s->match = p[i] == '\r' ? 1 : 0;
        }
    }
    fy_tun_consumed(t, stream, &s->credit, n);
}

static void on_credit(fy_tun_t *t)
{
}

static void on_close(fy_tun_t *t, const char *why)
{
    sw_conn_t *c = t->data;

    if (c->state == S_HELLO) {
        fprintf(stderr, "swarm: tunnel %s-%u: closed before READY: %s\n", S.prefix, c->index, why ? why : "");
        settled(c, false);
    } else if (c->state == S_READY) {
        if (S.lost < 10)
            fprintf(stderr, "swarm: tunnel %s-%u lost: %s\n", S.prefix, c->index, why ? why : "");
        S.lost++;
    }
    if (c->state != S_FAILED)
        c->state = S_CLOSED;
    drop_streams(c);
    fy_tun_free(t);
}

static const fy_tun_ops_t ops = {on_frame, on_data, on_credit, on_close, NULL, NULL};

static void fail_handshake(sw_conn_t *c, const char *why)
{
    if (S.failed < 10)
        fprintf(stderr, "swarm: connection %u: %s\n", c->index, why);
    fy_io_del(S.ev, &c->io);
    if (c->io.fd >= 0)
        close(c->io.fd);
    c->io.fd = -1;
    settled(c, false);
}

static void send_upgrade(sw_conn_t *c)
{
    char req[1024], id[80];
    int n;

    tunnel_id(c, id, sizeof(id));
    fy_ws_make_key(c->key);
    n = snprintf(req, sizeof(req),
                 "GET %s/%s?tunnelid=%s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: ferry.1\r\n"
                 "Ferry-Session: %s\r\nUser-Agent: ferry-swarm/%s\r\n\r\n",
                 S.path, id, id, S.hostport, c->key, S.session, FY_VERSION);
    /* A fresh socket takes a 1 KiB request whole. */
    if (n < 0 || (size_t)n >= sizeof(req) || write(c->io.fd, req, (size_t)n) != n) {
        fail_handshake(c, "could not send the upgrade request");
        return;
    }
    c->state = S_UPGRADE;
    if (fy_io_set(S.ev, &c->io, EPOLLIN) != FY_OK)
        fail_handshake(c, "epoll failed");
}

static void send_hello(sw_conn_t *c)
{
    uint8_t p[512];
    size_t pl = 0;
    char id[80];

    tunnel_id(c, id, sizeof(id));
    if (fy_mux_kv_put(p, &pl, sizeof(p), "session", S.session, strlen(S.session)) != FY_OK
        || fy_mux_kv_put(p, &pl, sizeof(p), "tunnel", id, strlen(id)) != FY_OK
        || fy_mux_kv_put(p, &pl, sizeof(p), "version", FY_VERSION, strlen(FY_VERSION)) != FY_OK
        || fy_mux_kv_put(p, &pl, sizeof(p), "connections", "1", 1) != FY_OK
        || fy_tun_send(&c->tun, FY_MUX_HELLO, 0, p, pl) != FY_OK)
        fy_tun_close(&c->tun, "could not send HELLO");
}

/* Read what came of an answer into c->head and parse its head: the bytes
 * read (0 at EOF) with *rc the parser's result, or -1 when there is nothing
 * to do now (no bytes yet, or the connection failed and was dropped). */
static ssize_t read_head(sw_conn_t *c, fy_h1_response_t *r, fy_h1_header_t *hdrs, size_t nhdrs, int *rc)
{
    fy_h1_limits_t lim = {nhdrs, HEAD_MAX};
    ssize_t n;

    if (c->head == NULL && (c->head = malloc(HEAD_MAX)) == NULL) {
        fail_handshake(c, "out of memory");
        return -1;
    }
    n = read(c->io.fd, c->head + c->hlen, HEAD_MAX - c->hlen);
    if (n < 0) {
        if (errno != EAGAIN && errno != EINTR)
            fail_handshake(c, strerror(errno));
        return -1;
    }
    c->hlen += (size_t)n;
    *rc = fy_h1_parse_response((const char *)c->head, c->hlen, r, hdrs, &lim, false);
    return n;
}

static void read_upgrade_answer(sw_conn_t *c)
{
    fy_h1_header_t hdrs[32];
    fy_h1_response_t r;
    const fy_h1_header_t *h;
    char accept[29], why[160];
    ssize_t n;
    int rc, fd;

    if ((n = read_head(c, &r, hdrs, FY_NELEM(hdrs), &rc)) < 0)
        return;
    if (rc == FY_AGAIN) {
        if (n == 0 || c->hlen == HEAD_MAX)
            fail_handshake(c, "the relay closed the connection during the upgrade");
        return;
    }
    if (rc < 0) {
        fail_handshake(c, "the relay sent an invalid answer");
        return;
    }
    if (r.status != 101) {
        snprintf(why, sizeof(why), "the relay answered %d: %.*s", r.status,
                 (int)FY_MIN(c->hlen - (size_t)rc, 100), (const char *)c->head + rc);
        fail_handshake(c, why);
        return;
    }
    h = fy_h1_find(r.headers, r.nheaders, "sec-websocket-accept");
    if (fy_ws_accept_key(c->key, strlen(c->key), accept) != FY_OK || h == NULL || h->value_len != 28
        || memcmp(h->value, accept, 28) != 0) {
        fail_handshake(c, "wrong Sec-WebSocket-Accept");
        return;
    }
    fd = c->io.fd;
    fy_io_del(S.ev, &c->io);
    c->io.fd = -1;
    c->state = S_HELLO;
    if (fy_tun_start(&c->tun, S.ev, fd, true, &ops, c, c->head + rc, c->hlen - (size_t)rc) != FY_OK) {
        settled(c, false);
        return;
    }
    free(c->head);
    c->head = NULL;
    if (!c->tun.closed)
        send_hello(c);
}

/* --- the handshake, and idle clients ------------------------------------------ */

/* A client's answer to its one request: a whole 200 response, then idle. */
static void read_answer(sw_conn_t *c)
{
    fy_h1_header_t hdrs[32];
    fy_h1_response_t r;
    ssize_t n;
    int rc;

    if ((n = read_head(c, &r, hdrs, FY_NELEM(hdrs), &rc)) < 0)
        return;
    if (rc == FY_AGAIN || (rc >= 0 && r.body == FY_H1_BODY_LENGTH && c->hlen < (size_t)rc + r.content_length)) {
        if (n == 0 || c->hlen == HEAD_MAX)
            fail_handshake(c, "the relay closed the connection before answering");
        return;
    }
    if (rc < 0 || r.status != 200 || r.body != FY_H1_BODY_LENGTH || (r.flags & FY_H1_F_CLOSE)) {
        fail_handshake(c, rc < 0 ? "invalid answer" : "not a 200 on a kept-alive connection");
        return;
    }
    S.requests++;
    c->state = S_READY;
    settled(c, true);
}

static void on_io(fy_ev_t *ev, fy_io_t *io, uint32_t events)
{
    sw_conn_t *c = io->data;
    int err;

    if (c->state == S_CONNECTING) {
        if ((err = fy_net_connect_result(io->fd)) != 0) {
            fail_handshake(c, strerror(err));
            return;
        }
        if (S.agents) {
            send_upgrade(c);
            return;
        }
        if (fy_io_set(ev, io, EPOLLIN) != FY_OK) {
            fail_handshake(c, "epoll failed");
            return;
        }
        if (S.host != NULL) {
            /* One request first, then idle on the kept-alive connection. */
            char req[256];
            int n = snprintf(req, sizeof(req), "GET /swarm HTTP/1.1\r\nHost: %s\r\n\r\n", S.host);
            if (n < 0 || (size_t)n >= sizeof(req) || write(io->fd, req, (size_t)n) != n) {
                fail_handshake(c, "could not send the request");
                return;
            }
            c->state = S_UPGRADE;
            return;
        }
        /* An idle client: up once connected; from now on only a close
         * from the relay wakes it. */
        c->state = S_READY;
        settled(c, true);
        return;
    }
    if (c->state == S_UPGRADE && !S.agents) {
        read_answer(c);
        return;
    }
    if (c->state == S_UPGRADE) {
        read_upgrade_answer(c);
        return;
    }
    if (c->state == S_READY) {
        uint8_t b[512];
        ssize_t n = read(io->fd, b, sizeof(b));
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        if (S.lost < 10)
            fprintf(stderr, "swarm: client %u: %s\n", c->index,
                    n == 0 ? "closed by the relay" : n > 0 ? "answered (not idle any more)" : strerror(errno));
        S.lost++;
        c->state = S_CLOSED;
        fy_io_del(ev, io);
        close(io->fd);
        io->fd = -1;
    }
}

static void start_one(sw_conn_t *c)
{
    int fd = fy_net_connect((const struct sockaddr *)&S.addr, sizeof(S.addr));

    c->io.cb = on_io;
    c->io.data = c;
    c->io.fd = fd;
    c->started = fy_ev_now(S.ev);
    c->state = S_CONNECTING;
    S.inflight++;
    if (fd < 0) {
        fail_handshake(c, strerror(errno));
        return;
    }
    if (fy_io_set(S.ev, &c->io, EPOLLOUT) != FY_OK)
        fail_handshake(c, "epoll failed");
}

static void on_fill(fy_ev_t *ev, fy_task_t *t)
{
    while (S.next < S.n && S.inflight < S.parallel)
        start_one(&S.conns[S.next++]);
}

static void on_tick(fy_ev_t *ev, fy_timer_t *tm)
{
    uint64_t now = fy_ev_now(ev);
    uint32_t i;

    on_fill(ev, NULL);
    for (i = 0; i < S.next; i++) {
        sw_conn_t *c = &S.conns[i];
        if ((c->state == S_CONNECTING || c->state == S_UPGRADE) && now - c->started >= HANDSHAKE_MS) {
            fail_handshake(c, "no answer to the upgrade in 10 s");
        } else if (c->state == S_HELLO && now - c->started >= HANDSHAKE_MS) {
            fy_tun_close(&c->tun, "no READY in 10 s");
        } else if (S.agents && c->state == S_READY && now - c->pinged >= PING_MS) {
            uint8_t p[8] = {0};
            c->pinged = now;
            (void)fy_tun_send(&c->tun, FY_MUX_PING, 0, p, sizeof(p));
        }
    }
    if (!S.announced && S.next == S.n && S.inflight == 0) {
        S.announced = true;
        printf("ready %s=%u failed=%u seconds=%.2f\n", S.agents ? "agents" : "clients", S.up, S.failed,
               (double)(now - S.t0) / 1000.0);
        fflush(stdout);
    }
    if (stop_signal || now >= S.deadline) {
        fy_ev_stop(ev);
        return;
    }
    fy_timer_arm(ev, tm, TICK_MS);
}

int main(int argc, char **argv)
{
    struct rlimit rl;
    struct sigaction sa;
    double seconds = 60;
    uint32_t i, alive = 0;
    int opt;

    if (argc < 2)
        usage();
    if (strcmp(argv[1], "agents") == 0)
        S.agents = true;
    else if (strcmp(argv[1], "clients") != 0)
        usage();
    S.n = 1000;
    S.parallel = 128;
    S.prefix = "sw";
    S.path = "/_ferry/tunnel";
    optind = 2;
    while ((opt = getopt(argc, argv, "n:p:c:d:P:H:")) != -1) {
        switch (opt) {
        case 'n': S.n = (uint32_t)strtoul(optarg, NULL, 10); break;
        case 'p': S.prefix = optarg; break;
        case 'c': S.parallel = (uint32_t)strtoul(optarg, NULL, 10); break;
        case 'd': seconds = strtod(optarg, NULL); break;
        case 'P': S.path = optarg; break;
        case 'H': S.host = optarg; break;
        default: usage();
        }
    }
    if (optind != argc - 1 || S.n == 0 || S.parallel == 0 || !(seconds > 0) || strlen(S.prefix) > 50)
        usage();
    {
        const char *hp = argv[optind], *colon = strrchr(hp, ':');
        char host[48];
        if (colon == NULL || (size_t)(colon - hp) >= sizeof(host) || strlen(hp) >= sizeof(S.hostport))
            usage();
        memcpy(host, hp, (size_t)(colon - hp));
        host[colon - hp] = '\0';
        S.addr.sin_family = AF_INET;
        S.addr.sin_port = htons((uint16_t)atoi(colon + 1));
        if (inet_pton(AF_INET, host, &S.addr.sin_addr) != 1)
            usage();
        strcpy(S.hostport, hp);
    }
    if (sodium_init() < 0)
        return 1;
    /* The hard limit is 20000 per process here: take all of it. */
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        (void)setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)S.n + 64) {
        fprintf(stderr, "swarm: RLIMIT_NOFILE %llu is too low for %u connections\n",
                (unsigned long long)rl.rlim_cur, S.n);
        return 1;
    }
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    {
        uint8_t rnd[16];
        randombytes_buf(rnd, sizeof(rnd));
        for (i = 0; i < 16; i++)
            snprintf(S.session + 2 * i, 3, "%02x", rnd[i]);
    }
    if ((S.ev = fy_ev_new()) == NULL || (S.conns = calloc(S.n, sizeof(*S.conns))) == NULL) {
        fprintf(stderr, "swarm: out of memory\n");
        return 1;
    }
    for (i = 0; i < S.n; i++) {
        S.conns[i].index = i;
        S.conns[i].io.fd = -1;
    }
    S.t0 = fy_ev_now(S.ev);
    S.deadline = S.t0 + (uint64_t)(seconds * 1000);
    S.tick.cb = on_tick;
    S.fill.cb = on_fill;
    fy_timer_arm(S.ev, &S.tick, 0);
    fy_ev_run(S.ev);
    if (!S.announced)
        fprintf(stderr, "swarm: stopped before every connection was set up (%u of %u started)\n", S.next, S.n);
    for (i = 0; i < S.n; i++)
        if (S.conns[i].state == S_READY)
            alive++;
    printf("done %s=%u alive=%u requests=%llu errors=%llu\n", S.agents ? "agents" : "clients", S.up, alive,
           (unsigned long long)S.requests, (unsigned long long)S.errors);
    fflush(stdout);
    return S.announced && S.failed == 0 && S.lost == 0 && S.errors == 0 ? 0 : 1;
}
