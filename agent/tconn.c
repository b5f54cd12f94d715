/*
 * tconn.c: the agent's tunnel connections to the relay: connect, the
 * WebSocket upgrade, HELLO/READY, heartbeat (PING every 10 s; no frame for
 * 20 s means dead), GOAWAY (connect anew, then retire the old connection),
 * and reconnecting with exponential backoff and jitter (SPEC.md). Each
 * tunnel has its own set of connections; what they learn about the relay
 * goes to the session (session.c) and to an API call waiting for the
 * tunnel (api.c).
 */
#include "agent/agent.h"
#include "http1/http1.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sodium.h>

#define HANDSHAKE_MS   10000
#define HANDSHAKE_MAX  8192
#define STREAM_BUCKETS 256

const char *const fy_astate_names[] = {"disconnected", "connecting", "connected", "error"};

static void on_handshake_io(fy_ev_t *ev, fy_io_t *io, uint32_t events);
static void on_timer(fy_ev_t *ev, fy_timer_t *t);
static void free_task(fy_ev_t *ev, fy_task_t *t);
static void on_frame(fy_tun_t *t, const fy_mux_event_t *e);
static void on_data(fy_tun_t *t, uint32_t stream, const uint8_t *p, size_t n);
static void on_credit(fy_tun_t *t);
static void on_tun_close(fy_tun_t *t, const char *why);

static fy_pipe_t *splice_pipe(fy_tun_t *t, uint32_t stream, uint8_t flags, size_t *max);
static void on_spliced(fy_tun_t *t, uint32_t stream, size_t n);
static const fy_tun_ops_t tconn_ops = {on_frame, on_data, on_credit, on_tun_close, splice_pipe, on_spliced};

static void random_id(char *out)
{
    static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789";
    int i;
    for (i = 0; i < 8; i++)
        out[i] = alphabet[randombytes_uniform(sizeof(alphabet) - 1)];
    out[8] = '\0';
}

static unsigned live_conns(const fy_atunnel_t *tn)
{
    const fy_tconn_t *tc;
    unsigned n = 0;
    for (tc = tn->conns; tc != NULL; tc = tc->next)
        if (!tc->closed && !tc->draining)
            n++;
    return n;
}

bool fy_atunnel_any_ready(const fy_atunnel_t *tn)
{
    const fy_tconn_t *tc;
    for (tc = tn->conns; tc != NULL; tc = tc->next)
        if (!tc->closed && tc->state == FY_TC_READY)
            return true;
    return false;
}

void fy_tconn_open_wanted(fy_atunnel_t *tn)
{
    while (!tn->removed && live_conns(tn) < tn->want_conns)
        fy_tconn_start(tn);
}

static void on_reconnect(fy_ev_t *ev, fy_timer_t *t)
{
    fy_tconn_open_wanted(t->data);
}

/* Backoff: base 1 s, doubling, jitter 0.5x..1.5x, capped (SPEC.md). */
static void schedule_reconnect(fy_atunnel_t *tn)
{
    fy_agent_t *a = tn->agent;
    uint64_t base, delay;

    if (tn->removed || a->stopping || fy_timer_armed(&tn->reconnect_timer) || live_conns(tn) >= tn->want_conns)
        return;
    base = tn->backoff_ms ? tn->backoff_ms : a->base_backoff_ms;
    delay = base / 2 + randombytes_uniform((uint32_t)FY_MIN(base, 0xffffffffu) + 1);
    delay = FY_MIN(delay, a->max_backoff_ms);
    tn->backoff_ms = a->backoff ? FY_MIN(base * 2, a->max_backoff_ms) : base;
    tn->reconnects++;
    a->reconnects++;
    fy_timer_arm(a->ev, &tn->reconnect_timer, delay);
}

static void set_state(fy_atunnel_t *tn, enum fy_astate st)
{
    if (st == FY_A_DISCONNECTED && fy_atunnel_any_ready(tn))
        st = FY_A_CONNECTED;
    tn->state = st;
    fy_status_dirty(tn->agent);
}

/* A connection ended; err/body (either may be NULL) say why. */
static void tconn_close(fy_tconn_t *tc, const char *err, const char *body, bool is_error)
{
    fy_atunnel_t *tn = tc->tn;
    fy_agent_t *a = tn->agent;
    bool was_ready = tc->state == FY_TC_READY;
    uint32_t i;

    if (tc->closed)
        return;
    tc->closed = true;
    fy_timer_stop(a->ev, &tc->timer);
    for (i = 0; tc->buckets != NULL && i < tc->nbuckets; i++)
        while (tc->buckets[i] != NULL)
            fy_astream_close(tc->buckets[i], 0, "tunnel connection closed");
    if (tc->upgraded) {
        fy_tun_close(&tc->tun, err);     /* on_tun_close frees it */
    } else {
        if (tc->pump != NULL)
            fy_tls_pump_forget(tc->pump);   /* it sees our end close, and closes */
        tc->pump = NULL;
        fy_io_del(a->ev, &tc->io);
        if (tc->io.fd >= 0)
            close(tc->io.fd);
        tc->io.fd = -1;
        fy_task_queue(a->ev, &tc->free_task);
    }
    if (tn->removed || a->stopping)
        return;
    if (err != NULL)
        snprintf(tn->last_error, sizeof(tn->last_error), "%s", err);
    if (body != NULL)
        snprintf(tn->last_error_body, sizeof(tn->last_error_body), "%s", body);
    if (was_ready && !tc->draining && !tc->retire) {
        if (fy_ev_now(a->ev) - tc->ready_at >= FY_AGENT_STABLE_MS)
            tn->backoff_ms = 0;
    }
    set_state(tn, is_error ? FY_A_ERROR : FY_A_DISCONNECTED);
    if (!tc->draining && !tc->retire)
        fy_session_failed(a, err, body, was_ready);
    schedule_reconnect(tn);
}

static void free_task(fy_ev_t *ev, fy_task_t *t)
{
    fy_tconn_t *tc = t->data, **pp;
    fy_atunnel_t *tn = tc->tn;
    for (pp = &tn->conns; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == tc) {
            *pp = tc->next;
            break;
        }
    }
    fy_buf_free(&tc->hbuf);
    free(tc->buckets);
    free(tc);
    if (tn->conns == NULL)
        fy__atunnel_conns_gone(tn);
}

void fy_tconn_start(fy_atunnel_t *tn)
{
    fy_agent_t *a = tn->agent;
    fy_tconn_t *tc = calloc(1, sizeof(*tc));
    int fd;

    if (tc == NULL)
        return;
    tc->tn = tn;
    tc->io.fd = -1;
    tc->io.cb = on_handshake_io;
    tc->io.data = tc;
    tc->timer.cb = on_timer;
    tc->timer.data = tc;
    tc->free_task.cb = free_task;
    tc->free_task.data = tc;
    tc->next = tn->conns;
    tn->conns = tc;
    if (tn->state != FY_A_CONNECTED)
        tn->state = tn->state == FY_A_ERROR ? FY_A_ERROR : FY_A_CONNECTING;
    if ((fd = fy_net_connect((struct sockaddr *)&a->server, a->serverlen)) < 0) {
        char err[512];
        snprintf(err, sizeof(err), "dial tcp %s: %s", a->host_header, strerror(errno));
        fy_alog(FY_AL_ERROR, "failed to reconnect session", "obj", "csess", "err", err, NULL);
        fy_api_tunnel_failed(tn, 503, "a successful ferry tunnel session has not yet been established", err);
        tconn_close(tc, err, NULL, true);
        return;
    }
    tc->io.fd = fd;
    tc->state = FY_TC_CONNECTING;
    if (fy_io_set(a->ev, &tc->io, EPOLLOUT) != FY_OK) {
        tconn_close(tc, "epoll failed", NULL, true);
        return;
    }
    fy_timer_arm(a->ev, &tc->timer, HANDSHAKE_MS);
}

void fy_tconn_stop_all(fy_atunnel_t *tn)
{
    fy_tconn_t *tc;
    fy_timer_stop(tn->agent->ev, &tn->reconnect_timer);
    tn->want_conns = 0;
    for (tc = tn->conns; tc != NULL; tc = tc->next)
        tconn_close(tc, "agent stopping", NULL, false);
}

void fy__tconn_init_tunnel(fy_atunnel_t *tn)
{
    tn->reconnect_timer.cb = on_reconnect;
    tn->reconnect_timer.data = tn;
    if (tn->id[0] == '\0') {
        random_id(tn->id);
        tn->random_id = true;
    }
}

/* --- the upgrade ---------------------------------------------------------- */

static int send_upgrade(fy_tconn_t *tc)
{
    fy_agent_t *a = tc->tn->agent;
    char req[2048];
    int n;

    fy_ws_make_key(tc->ws_key);
    n = snprintf(req, sizeof(req),
                 "GET %s/%s?tunnelid=%s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: ferry.1\r\n"
                 "Ferry-Session: %s\r\nUser-Agent: ferry/%s\r\n%s%s%s\r\n",
                 a->agent_path, tc->tn->id, tc->tn->id, a->host_header, tc->ws_key, a->session, FY_VERSION,
                 a->authtoken[0] ? "Authorization: Bearer " : "", a->authtoken, a->authtoken[0] ? "\r\n" : "");
    if (n < 0 || (size_t)n >= sizeof(req))
        return FY_ERR;
    /* A fresh socket takes a 2 KiB request whole. */
    if (write(tc->io.fd, req, (size_t)n) != n)
        return FY_ERR;
    tc->state = FY_TC_UPGRADE;
    return fy_io_set(a->ev, &tc->io, EPOLLIN);
}

static void send_hello(fy_tconn_t *tc)
{
    fy_atunnel_t *tn = tc->tn;
    uint8_t p[1024];
    size_t pl = 0;
    char conns[8], window[16];

    snprintf(conns, sizeof(conns), "%u", tn->want_conns);
    snprintf(window, sizeof(window), "%u", FY_MUX_STREAM_WINDOW_WIDE);
    if (fy_mux_kv_put(p, &pl, sizeof(p), "session", tn->agent->session, strlen(tn->agent->session)) != FY_OK
        || fy_mux_kv_put(p, &pl, sizeof(p), "tunnel", tn->id, strlen(tn->id)) != FY_OK
        || fy_mux_kv_put(p, &pl, sizeof(p), "version", FY_VERSION, strlen(FY_VERSION)) != FY_OK
        || fy_mux_kv_put(p, &pl, sizeof(p), "connections", conns, strlen(conns)) != FY_OK
        || fy_mux_kv_put(p, &pl, sizeof(p), "window", window, strlen(window)) != FY_OK
        /* The relay keeps only a keyed digest of it (SPEC.md). */
        || (tn->basic_auth[0] != '\0'
            && fy_mux_kv_put(p, &pl, sizeof(p), "basic_auth", tn->basic_auth, strlen(tn->basic_auth)) != FY_OK)
        || fy_tun_send(&tc->tun, FY_MUX_HELLO, 0, p, pl) != FY_OK)
        tconn_close(tc, "could not send HELLO", NULL, true);
}

/* The relay refused the upgrade: its status and body say why. */
static void refused(fy_tconn_t *tc, const fy_h1_response_t *r, const uint8_t *body, size_t blen)
{
    fy_atunnel_t *tn = tc->tn;
    char err[200], status[8], text[512];
    size_t i, n = FY_MIN(blen, sizeof(text) - 1);

    for (i = 0; i < n; i++)
        text[i] = (body[i] == '\n' || body[i] == '\r') ? ' ' : (char)body[i];
    while (n > 0 && text[n - 1] == ' ')
        n--;
    text[n] = '\0';
    snprintf(status, sizeof(status), "%d", r->status);
    snprintf(err, sizeof(err), "the relay answered %d %.*s", r->status, (int)FY_MIN(r->reason_len, 80), r->reason);
    fy_alog(FY_AL_ERROR, "tunnel refused by the relay", "obj", "tunnels", "name", tn->name, "status", status,
            "err", text[0] ? text : err, NULL);
    if (r->status == 409 && tn->random_id) {
        /* Our random id is someone else's: draw another one at once. */
        random_id(tn->id);
        tconn_close(tc, err, text, false);
        fy_timer_stop(tn->agent->ev, &tn->reconnect_timer);
        tn->backoff_ms = 0;
        fy_timer_arm(tn->agent->ev, &tn->reconnect_timer, 0);
        return;
    }
    {
        char detail[800];
        snprintf(detail, sizeof(detail), "%s%s%s", err, text[0] ? ": " : "", text);
        fy_api_tunnel_failed(tn, 502, "the relay refused the tunnel", detail);
    }
    tconn_close(tc, err, text, true);
}

static void read_upgrade_answer(fy_tconn_t *tc)
{
    fy_agent_t *a = tc->tn->agent;
    fy_h1_header_t hdrs[64];
    fy_h1_limits_t lim = {FY_NELEM(hdrs), HANDSHAKE_MAX};
    fy_h1_response_t r;
    const fy_h1_header_t *h;
    char accept[29];
    ssize_t n;
    int rc;

    if (fy_buf_reserve(&tc->hbuf, 2048, HANDSHAKE_MAX) != FY_OK) {
        tconn_close(tc, "the relay's answer is too large", NULL, true);
        return;
    }
    n = read(tc->io.fd, fy_buf_end(&tc->hbuf), fy_buf_room(&tc->hbuf));
    if (n < 0) {
        if (errno != EAGAIN && errno != EINTR)
            tconn_close(tc, strerror(errno), NULL, true);
        return;
    }
    if (n > 0)
        tc->hbuf.wpos += (size_t)n;
    rc = fy_h1_parse_response((const char *)fy_buf_data(&tc->hbuf), fy_buf_len(&tc->hbuf), &r, hdrs, &lim, false);
    if (rc == FY_AGAIN) {
        if (n == 0)
            tconn_close(tc, "the relay closed the connection during the upgrade", NULL, true);
        return;
    }
    if (rc < 0) {
        tconn_close(tc, "the relay sent an invalid HTTP answer", NULL, true);
        return;
    }
    if (r.status != 101) {
        size_t have = fy_buf_len(&tc->hbuf) - (size_t)rc;
        /* Wait for the (small) body the relay's error carries. */
        if (r.body == FY_H1_BODY_LENGTH && have < r.content_length && n > 0 && r.content_length < 4096)
            return;
        refused(tc, &r, fy_buf_data(&tc->hbuf) + rc, FY_MIN(have, (size_t)r.content_length));
        return;
    }
    h = fy_h1_find(r.headers, r.nheaders, "sec-websocket-accept");
    if (fy_ws_accept_key(tc->ws_key, strlen(tc->ws_key), accept) != FY_OK || h == NULL
        || h->value_len != 28 || memcmp(h->value, accept, 28) != 0) {
        tconn_close(tc, "the relay's WebSocket accept key is wrong", NULL, true);
        return;
    }
    fy_buf_consume(&tc->hbuf, (size_t)rc);
    fy_io_del(a->ev, &tc->io);
    tc->upgraded = true;
    tc->state = FY_TC_HELLO;
    if (fy_tun_start(&tc->tun, a->ev, tc->io.fd, true, &tconn_ops, tc, fy_buf_data(&tc->hbuf),
                     fy_buf_len(&tc->hbuf)) != FY_OK) {
        tc->io.fd = -1;
        tc->upgraded = false;
        tconn_close(tc, "could not start the tunnel", NULL, true);
        return;
    }
    tc->io.fd = -1;
    fy_buf_free(&tc->hbuf);
    send_hello(tc);
}

static void on_tls_handshake(void *data, const char *err)
{
    fy_tconn_t *tc = data;
    char msg[512];

    tc->pump = NULL;
    if (err == NULL) {
        if (send_upgrade(tc) != FY_OK)
            tconn_close(tc, "could not send the upgrade request", NULL, true);
        return;
    }
    snprintf(msg, sizeof(msg), "TLS handshake with %s failed: %s", tc->tn->agent->host_header, err);
    fy_alog(FY_AL_ERROR, "failed to reconnect session", "obj", "csess", "err", msg, NULL);
    fy_api_tunnel_failed(tc->tn, 503, "a successful ferry tunnel session has not yet been established", msg);
    tconn_close(tc, msg, NULL, true);
}

/* wss://: the socket goes to a TLS pump; the upgrade and the tunnel run
 * on its plaintext end once the handshake is done. */
static void start_tls(fy_tconn_t *tc)
{
    fy_agent_t *a = tc->tn->agent;
    int net = tc->io.fd, app;

    fy_io_del(a->ev, &tc->io);
    tc->io.fd = -1;
    tc->pump = fy_tls_pump_connect(a->ev, a->tls_ctx, a->server_host, net, &app, HANDSHAKE_MS, on_tls_handshake, tc);
    if (tc->pump == NULL) {
        tconn_close(tc, "could not start TLS", NULL, true);
        return;
    }
    tc->io.fd = app;
    tc->state = FY_TC_TLS;
}

static void on_handshake_io(fy_ev_t *ev, fy_io_t *io, uint32_t events)
{
    fy_tconn_t *tc = io->data;
    int err;

    if (tc->closed)
        return;
    if (tc->state == FY_TC_CONNECTING) {
        if ((err = fy_net_connect_result(io->fd)) != 0) {
            char msg[512];
            snprintf(msg, sizeof(msg), "dial tcp %s: %s", tc->tn->agent->host_header, strerror(err));
            fy_alog(FY_AL_ERROR, "failed to reconnect session", "obj", "csess", "err", msg, NULL);
            fy_api_tunnel_failed(tc->tn, 503, "a successful ferry tunnel session has not yet been established", msg);
            tconn_close(tc, msg, NULL, true);
            return;
        }
        if (tc->tn->agent->server_tls)
            start_tls(tc);
        else if (send_upgrade(tc) != FY_OK)
            tconn_close(tc, "could not send the upgrade request", NULL, true);
        return;
    }
    read_upgrade_answer(tc);
}

/* --- the live connection ---------------------------------------------------- */

static void retire_replaced(fy_atunnel_t *tn)
{
    fy_tconn_t *tc;
    for (tc = tn->conns; tc != NULL; tc = tc->next) {
        if (tc->closed || !tc->draining || tc->retire)
            continue;
        tc->retire = true;
        if (tc->nstreams == 0)
            tconn_close(tc, "replaced after GOAWAY", NULL, false);
    }
}

static void on_ready(fy_tconn_t *tc, const fy_mux_event_t *e)
{
    fy_atunnel_t *tn = tc->tn;
    fy_agent_t *a = tn->agent;
    const char *url;
    size_t ul;
    bool first = !fy_atunnel_any_ready(tn);
    uint64_t ms;

    if ((url = fy_mux_kv_get(e->payload, e->len, "url", &ul)) == NULL || ul >= sizeof(tn->public_url)) {
        tconn_close(tc, "READY without a url", NULL, true);
        return;
    }
    /* A relay that answers our `window` grants its own: both directions
     * widen. One that does not (an older relay) keeps 256 KiB both ways. */
    if (fy_mux_kv_window(e->payload, e->len, &tc->tun.stream_send) == FY_OK)
        tc->tun.stream_recv = FY_MUX_STREAM_WINDOW_WIDE;
    tc->state = FY_TC_READY;
    tc->ready_at = fy_ev_now(a->ev);
    tn->state = FY_A_CONNECTED;
    tn->last_error[0] = '\0';
    tn->last_error_body[0] = '\0';
    memcpy(tn->public_url, url, ul);
    tn->public_url[ul] = '\0';
    /* A first PING soon, so that the latency is known early. */
    ms = FY_MIN(FY_AGENT_PING_MS, 1000);
    fy_timer_arm(a->ev, &tc->timer, ms);
    fy_session_ready(a);
    if (first)
        fy_alog(FY_AL_INFO, "started tunnel", "obj", "tunnels", "name", tn->name, "addr", tn->addr_display,
                "url", tn->public_url, NULL);
    tn->ever_ready = true;
    if (!tn->announced && a->print_forwarding) {
        fy_aprint("Forwarding                    %s -> %s\n", tn->public_url, tn->addr_display);
        tn->announced = true;
    }
    fy_status_dirty(a);
    retire_replaced(tn);
    fy_api_tunnel_ready(tn);
}

static void on_goaway(fy_tconn_t *tc)
{
    fy_atunnel_t *tn = tc->tn;
    if (tc->draining)
        return;
    fy_alog(FY_AL_INFO, "relay asked to move (GOAWAY): connecting anew", "obj", "csess", "name", tn->name, NULL);
    tc->draining = true;
    /* The new connection comes up before this one goes. */
    while (live_conns(tn) < tn->want_conns)
        fy_tconn_start(tn);
}

static void on_frame(fy_tun_t *t, const fy_mux_event_t *e)
{
    fy_tconn_t *tc = t->data;
    fy_astream_t *s;

    switch (e->hdr.type) {
    case FY_MUX_READY:
        if (tc->state != FY_TC_HELLO) {
            tconn_close(tc, "unexpected READY", NULL, true);
            return;
        }
        on_ready(tc, e);
        return;
    case FY_MUX_OPEN:
        if (tc->state != FY_TC_READY || fy_tconn_stream(tc, e->hdr.stream) != NULL) {
            (void)fy_tun_send_u32(t, FY_MUX_RST, e->hdr.stream, FY_MUX_RST_PROTOCOL, "bad OPEN");
            return;
        }
        fy_astream_open(tc, e->hdr.stream);
        return;
    case FY_MUX_WINDOW:
        if ((s = fy_tconn_stream(tc, e->hdr.stream)) != NULL)
            fy_astream_on_window(s, fy_mux_get_u32(e->payload));
        return;
    case FY_MUX_FIN:
        if ((s = fy_tconn_stream(tc, e->hdr.stream)) != NULL)
            fy_astream_on_fin(s);
        return;
    case FY_MUX_RST:
        if ((s = fy_tconn_stream(tc, e->hdr.stream)) == NULL)
            return;
        if (fy_mux_get_u32(e->payload) == FY_MUX_RST_IDLE)
            fy_astream_idle(s);
        else
            fy_astream_close(s, 0, "reset by the relay");
        return;
    case FY_MUX_PONG:
        if (tc->ping_sent != 0) {
            tc->tn->rtt_ms = fy_ev_now(tc->tn->agent->ev) - tc->ping_sent;
            tc->tn->agent->rtt_ms = tc->tn->rtt_ms;
            tc->ping_sent = 0;
            fy_status_dirty(tc->tn->agent);
        }
        return;
    case FY_MUX_GOAWAY:
        on_goaway(tc);
        return;
    default:
        return;
    }
}

static void on_data(fy_tun_t *t, uint32_t stream, const uint8_t *p, size_t n)
{
    fy_tconn_t *tc = t->data;
    fy_astream_t *s = fy_tconn_stream(tc, stream);
    if (s == NULL) {
        fy_tun_consumed(t, 0, NULL, n);
        return;
    }
    fy_astream_on_data(s, p, n);
}

static fy_pipe_t *splice_pipe(fy_tun_t *t, uint32_t stream, uint8_t flags, size_t *max)
{
    fy_astream_t *s = fy_tconn_stream(t->data, stream);
    return s != NULL ? fy_astream_splice_pipe(s, flags, max) : NULL;
}

static void on_spliced(fy_tun_t *t, uint32_t stream, size_t n)
{
    fy_astream_on_spliced(fy_tconn_stream(t->data, stream), n);
}

static void on_credit(fy_tun_t *t)
{
    fy_tconn_t *tc = t->data;
    uint32_t i;
    for (i = 0; tc->buckets != NULL && i < tc->nbuckets && !t->closed; i++) {
        fy_astream_t *s, *next;
        for (s = tc->buckets[i]; s != NULL; s = next) {
            next = s->hnext;
            fy_astream_on_credit(s);
        }
    }
}

static void on_tun_close(fy_tun_t *t, const char *why)
{
    fy_tconn_t *tc = t->data;
    if (tc->state != FY_TC_READY && !tc->closed)
        fy_api_tunnel_failed(tc->tn, 502, "the relay closed the tunnel connection", why);
    tconn_close(tc, why, NULL, false);
    fy_tun_free(t);
    fy_task_queue(tc->tn->agent->ev, &tc->free_task);
}

static void on_timer(fy_ev_t *ev, fy_timer_t *t)
{
    fy_tconn_t *tc = t->data;
    uint64_t now = fy_ev_now(ev), next;

    if (tc->closed)
        return;
    if (tc->state != FY_TC_READY) {
        tconn_close(tc, "the relay did not complete the handshake in time", NULL, true);
        return;
    }
    if (now - tc->tun.last_rx >= FY_AGENT_DEAD_MS) {
        tconn_close(tc, "no frame from the relay for 20 s (heartbeat lost)", NULL, false);
        return;
    }
    if (tc->ping_sent == 0 || now - tc->ping_sent >= FY_AGENT_PING_MS) {
        uint8_t p[8] = {0};
        fy_mux_put_u32(p + 4, (uint32_t)now);
        if (tc->ping_sent == 0)
            tc->ping_sent = now;
        (void)fy_tun_send(&tc->tun, FY_MUX_PING, 0, p, sizeof(p));
    }
    next = FY_MIN(now + FY_AGENT_PING_MS, tc->tun.last_rx + FY_AGENT_DEAD_MS);
    fy_timer_arm_at(ev, t, next);
}

/* --- streams table ------------------------------------------------------------ */

fy_astream_t *fy_tconn_stream(fy_tconn_t *tc, uint32_t id)
{
    fy_astream_t *s;
    if (tc->buckets == NULL)
        return NULL;
    for (s = tc->buckets[id & (tc->nbuckets - 1)]; s != NULL; s = s->hnext)
        if (s->id == id)
            return s;
    return NULL;
}

int fy__tconn_add_stream(fy_tconn_t *tc, fy_astream_t *s)
{
    fy_astream_t **b;
    if (tc->buckets == NULL) {
        if ((tc->buckets = calloc(STREAM_BUCKETS, sizeof(*tc->buckets))) == NULL)
            return FY_ERR;
        tc->nbuckets = STREAM_BUCKETS;
    }
    b = &tc->buckets[s->id & (tc->nbuckets - 1)];
    s->hnext = *b;
    *b = s;
    tc->nstreams++;
    return FY_OK;
}

void fy_tconn_stream_gone(fy_tconn_t *tc, fy_astream_t *s)
{
    fy_astream_t **pp;
    for (pp = &tc->buckets[s->id & (tc->nbuckets - 1)]; *pp != NULL; pp = &(*pp)->hnext) {
        if (*pp == s) {
            *pp = s->hnext;
            tc->nstreams--;
            break;
        }
    }
    if (tc->retire && tc->nstreams == 0 && !tc->closed)
        tconn_close(tc, "replaced after GOAWAY", NULL, false);
}
