/*
 * agentconn.c: the relay's side of an agent's tunnel connection: the
 * WebSocket upgrade under agent_path (SPEC.md "Agents connecting"), the
 * HELLO/READY exchange, the streams multiplexed on the connection, and the
 * heartbeat watchdog.
 */
#include "worker/worker.h"
#include "log/log.h"

#include <sodium.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define AGENT_DEAD_MS   30000     /* agents PING every 10 s */
#define STREAM_BUCKETS  16        /* at first; doubled while streams outnumber them twice */
#define STREAM_BUCKETS_MAX 4096

static void on_frame(fy_tun_t *t, const fy_mux_event_t *e);
static void on_data(fy_tun_t *t, uint32_t stream, const uint8_t *p, size_t n);
static void on_credit(fy_tun_t *t);
static void on_close(fy_tun_t *t, const char *why);
static void on_watchdog(fy_ev_t *ev, fy_timer_t *tm);

static fy_pipe_t *splice_pipe(fy_tun_t *t, uint32_t stream, uint8_t flags, size_t *max);
static void on_spliced(fy_tun_t *t, uint32_t stream, size_t n);
static const fy_tun_ops_t agent_ops = {on_frame, on_data, on_credit, on_close, splice_pipe, on_spliced};

static const char *session_of(const fy_h1_request_t *req, size_t *len)
{
    const fy_h1_header_t *h = fy_h1_find(req->headers, req->nheaders, "ferry-session");
    if (h == NULL || h->value_len == 0 || h->value_len > FY_SESSION_MAX) {
        *len = 0;
        return "";
    }
    *len = h->value_len;
    return h->value;
}

static bool same_session(const fy_tunnel_t *t, const char *s, size_t n)
{
    return n > 0 && strlen(t->session) == n && memcmp(t->session, s, n) == 0;
}

/* A refusal the shared table already shows (the master decides for real). */
static bool refused_by_table(fy_client_t *c, const char *id, const char *holder, const char *sess, size_t sl)
{
    fy_shm_entry_t e;

    if (!fy_shm_lookup(&c->w->shm, id, &e))
        return false;
    if (strcmp(e.holder, holder) != 0) {
        fy_client_error(c, false, 409, "tunnel_taken", "tunnel \"%s\" is held by another token", id);
        return true;
    }
    if (sl == 0 || strlen(e.session) != sl || memcmp(e.session, sess, sl) != 0) {
        fy_client_error(c, false, 409, "tunnel_taken", "tunnel \"%s\" is held by another agent session", id);
        return true;
    }
    if (e.nowners >= FY_TUNNEL_MAX_CONNS) {
        fy_client_error(c, false, 503, "tunnel_busy", "tunnel \"%s\" already has %d connections", id,
                        FY_TUNNEL_MAX_CONNS);
        return true;
    }
    return false;
}

void fy_agentconn_request(fy_client_t *c, const fy_h1_request_t *req, const char *ids, size_t idl)
{
    fy_worker_t *w = c->w;
    const fy_h1_header_t *key, *ver, *proto, *authz;
    fy_auth_result_t auth;
    fy_pending_agent_t *p;
    char id[FY_ID_MAX + 1], accept[29];
    bool upgrade = (req->flags & FY_H1_F_UPGRADE) != 0;
    const char *sess;
    size_t sl;

    if (ids == NULL) {
        if (upgrade) {
            fy_client_error(c, false, 400, "bad_request", "agents connect to %s/ID", w->conf->agent_path);
            return;
        }
        /* No tunnel yet: the agent learns whether its token is good. */
        authz = fy_h1_find(req->headers, req->nheaders, "authorization");
        fy_auth_check(w->conf->auth, authz ? authz->value : NULL, authz ? authz->value_len : 0, "", &auth);
        if (auth.status == 401) {
            fy_client_error(c, false, auth.status, auth.code, "%s", auth.msg);
            return;
        }
        fy_buf_consume(&c->in, req->head_len);
        fy_client_respond(c, 200, "text/plain; charset=utf-8", NULL, "ok\n", 3, true);
        return;
    }
    if (fy_conf_tunnel_id(ids, idl, id) != FY_OK) {
        fy_client_error(c, false, 400, "bad_tunnel_id", "\"%.*s\" is not a tunnel id (1-63 of a-z 0-9 -)",
                        (int)FY_MIN(idl, 80), ids);
        return;
    }
    authz = fy_h1_find(req->headers, req->nheaders, "authorization");
    fy_auth_check(w->conf->auth, authz ? authz->value : NULL, authz ? authz->value_len : 0, id, &auth);
    if (auth.status != 0) {
        fy_client_error(c, false, auth.status, auth.code, "%s", auth.msg);
        return;
    }
    sess = session_of(req, &sl);
    if (refused_by_table(c, id, auth.holder, sess, sl))
        return;
    if (w->draining) {
        fy_client_error(c, false, 503, "draining", "the relay is shutting down; connect again");
        return;
    }
    if (!upgrade) {
        fy_buf_consume(&c->in, req->head_len);
        fy_client_respond(c, 200, "text/plain; charset=utf-8", NULL, "ok\n", 3, true);
        return;
    }
    key = fy_h1_find(req->headers, req->nheaders, "sec-websocket-key");
    ver = fy_h1_find(req->headers, req->nheaders, "sec-websocket-version");
    proto = fy_h1_find(req->headers, req->nheaders, "sec-websocket-protocol");
    if (!(req->flags & FY_H1_F_WEBSOCKET) || key == NULL || ver == NULL || !fy_ieq(ver->value, ver->value_len, "13")
        || fy_ws_accept_key(key->value, key->value_len, accept) != FY_OK) {
        fy_client_error(c, false, 400, "bad_request", "not a valid WebSocket upgrade (RFC 6455, version 13)");
        return;
    }
    if (proto == NULL || !fy_h1_has_token(proto->value, proto->value_len, "ferry.1")) {
        fy_client_error(c, false, 400, "bad_request", "agents speak the ferry.1 subprotocol");
        return;
    }
    if (sl == 0) {
        fy_client_error(c, false, 400, "bad_request", "agents send a Ferry-Session header");
        return;
    }
    if (fy_client_out_pending(c) || (p = calloc(1, sizeof(*p))) == NULL) {
        fy_client_error(c, false, 503, "busy", "try again");
        return;
    }
    /* The master, the table's only writer, decides: ask and park. */
    strcpy(p->id, id);
    memcpy(p->session, sess, sl);
    p->session[sl] = '\0';
    strcpy(p->holder, auth.holder);
    memcpy(p->accept, accept, sizeof(p->accept));
    p->head_len = req->head_len;
    p->serial = ++w->reg_serial;
    p->conn = ++w->conn_serial;
    if (fy_worker_register(w, p, c->peer_addr) != FY_OK) {
        free(p);
        fy_client_error(c, false, 503, "busy", "the relay is busy; try again");
        return;
    }
    c->reg = p;
    c->state = FY_C_REGISTER;
    /* Counted from now, so that agents arriving together spread out. */
    atomic_fetch_add_explicit(&w->rec->agents, 1, memory_order_relaxed);
    c->wait_until = fy_ev_now(w->ev) + 5000;
    w->nparked++;
}

/* The master registered the owner: answer 101 and start the tunnel. */
static void upgrade(fy_client_t *c, fy_pending_agent_t *p)
{
    fy_worker_t *w = c->w;
    fy_agentconn_t *ac;
    fy_tunnel_t *t;
    fy_shm_entry_t e;
    char resp[512];
    size_t left;
    int n, fd;

    n = snprintf(resp, sizeof(resp),
                 "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 "Sec-WebSocket-Accept: %s\r\nSec-WebSocket-Protocol: ferry.1\r\n\r\n", p->accept);
    /* Nothing was written to this connection yet: the 101 goes out whole. */
    if (write(c->io.fd, resp, (size_t)n) != n || (ac = calloc(1, sizeof(*ac))) == NULL) {
        fy_worker_unregister(w, p->id, p->conn);
        fy_agentconn_unreserve(w);
        fy_client_close(c);
        return;
    }
    if ((t = fy_tunnel_find(w, p->id)) == NULL && (t = fy_tunnel_add(w, p->id, p->session, p->holder)) == NULL) {
        free(ac);
        fy_worker_unregister(w, p->id, p->conn);
        fy_agentconn_unreserve(w);
        fy_client_close(c);
        return;
    }
    t->slot_epoch = atomic_load(&w->shm.hdr->epoch);
    if (fy_shm_lookup(&w->shm, p->id, &e))
        t->slot = e.index;
    else
        t->slot_epoch = 1;   /* odd: look it up again on first use */
    ac->w = w;
    ac->tunnel = t;
    ac->serial = p->conn;
    ac->port = c->port;
    ac->tls = c->tls;
    memcpy(ac->addr, c->peer_addr, sizeof(ac->addr));
    t->conns[t->nconns++] = ac;
    ac->timer.cb = on_watchdog;
    ac->timer.data = ac;
    ac->next = w->agents;
    if (w->agents)
        w->agents->prev = ac;
    w->agents = ac;
    atomic_fetch_add_explicit(&w->rec->agent_connects, 1, memory_order_relaxed);
    fy_buf_consume(&c->in, p->head_len);
    left = fy_buf_len(&c->in);
    fd = c->io.fd;
    fy_io_del(w->ev, &c->io);
    c->io.fd = -1;
    if (fy_tun_start(&ac->tun, w->ev, fd, false, &agent_ops, ac, fy_buf_data(&c->in), left) != FY_OK) {
        fy_client_close(c);
        on_close(&ac->tun, "could not start");
        return;
    }
    fy_client_close(c);
    fy_timer_arm(w->ev, &ac->timer, AGENT_DEAD_MS);
    fy_log_info("agent %s connected for tunnel \"%s\" on worker %d (connection %u of session %.8s...)",
                ac->addr, p->id, w->index, t->nconns, p->session);
}

void fy_agentconn_registered(fy_client_t *c, int result)
{
    fy_pending_agent_t *p = c->reg;

    c->reg = NULL;
    c->state = FY_C_HEAD;
    c->w->nparked--;
    if (result != FY_SHM_ADDED)
        fy_agentconn_unreserve(c->w);
    switch (result) {
    case FY_SHM_ADDED:
        upgrade(c, p);
        break;
    case FY_SHM_TAKEN_TOKEN:
        fy_client_error(c, false, 409, "tunnel_taken", "tunnel \"%s\" is held by another token", p->id);
        break;
    case FY_SHM_TAKEN_SESSION:
        fy_client_error(c, false, 409, "tunnel_taken", "tunnel \"%s\" is held by another agent session", p->id);
        break;
    case FY_SHM_TOO_MANY:
        fy_client_error(c, false, 503, "tunnel_busy", "tunnel \"%s\" already has %d connections", p->id,
                        FY_TUNNEL_MAX_CONNS);
        break;
    default:
        fy_client_error(c, false, 503, "relay_full", "the relay holds its limit of %llu tunnels",
                        (unsigned long long)c->w->conf->limits.max_tunnels);
        break;
    }
    free(p);
}

void fy_agentconn_unreserve(fy_worker_t *w)
{
    atomic_fetch_sub_explicit(&w->rec->agents, 1, memory_order_relaxed);
}

fy_agentconn_t *fy_agentconn_pick_draining(fy_tunnel_t *t)
{
    unsigned i;
    for (i = 0; i < t->nconns; i++)
        if (t->conns[i]->ready && !t->conns[i]->tun.closed)
            return t->conns[i];
    return NULL;
}

fy_agentconn_t *fy_agentconn_pick(fy_tunnel_t *t)
{
    unsigned i;
    for (i = 0; i < t->nconns; i++) {
        fy_agentconn_t *ac = t->conns[(t->rr + i) % t->nconns];
        if (ac->ready && !ac->draining && !ac->tun.closed) {
            t->rr = (t->rr + i + 1) % t->nconns;
            return ac;
        }
    }
    return NULL;
}

static fy_client_t **bucket(fy_agentconn_t *ac, uint32_t sid)
{
    return &ac->buckets[sid & (ac->nbuckets - 1)];
}

static fy_client_t *stream_find(fy_agentconn_t *ac, uint32_t sid)
{
    fy_client_t *c;
    if (ac->buckets == NULL)
        return NULL;
    for (c = *bucket(ac, sid); c != NULL; c = c->snext)
        if (c->sid == sid)
            return c;
    return NULL;
}

/* Double the stream table (a failed allocation keeps the old one: chains
 * just grow longer). */
static void grow_buckets(fy_agentconn_t *ac)
{
    uint32_t n = ac->nbuckets * 2, i;
    fy_client_t **nb = calloc(n, sizeof(*nb));

    if (nb == NULL)
        return;
    for (i = 0; i < ac->nbuckets; i++) {
        while (ac->buckets[i] != NULL) {
            fy_client_t *c = ac->buckets[i];
            ac->buckets[i] = c->snext;
            c->snext = nb[c->sid & (n - 1)];
            nb[c->sid & (n - 1)] = c;
        }
    }
    free(ac->buckets);
    ac->buckets = nb;
    ac->nbuckets = n;
}

int fy_agentconn_open_stream(fy_agentconn_t *ac, fy_client_t *c)
{
    uint8_t open[128];
    size_t ol = 0;
    fy_client_t **b;

    if (ac->buckets == NULL) {
        if ((ac->buckets = calloc(STREAM_BUCKETS, sizeof(*ac->buckets))) == NULL)
            return FY_ERR;
        ac->nbuckets = STREAM_BUCKETS;
    } else if (ac->nstreams >= 2 * ac->nbuckets && ac->nbuckets < STREAM_BUCKETS_MAX) {
        grow_buckets(ac);
    }
    if (ac->next_stream >= 0x7fffffffu) {
        /* Ids are never reused on a connection: this one is spent. */
        ac->draining = true;
        (void)fy_tun_send_u32(&ac->tun, FY_MUX_GOAWAY, 0, FY_MUX_GOAWAY_DRAIN, "stream ids exhausted");
        return FY_ERR;
    }
    if (fy_mux_kv_put(open, &ol, sizeof(open), "client", c->peer_addr, strlen(c->peer_addr)) != FY_OK)
        return FY_ERR;
    c->sid = ++ac->next_stream;
    if (fy_tun_send(&ac->tun, FY_MUX_OPEN, c->sid, open, ol) != FY_OK)
        return FY_ERR;
    c->ac = ac;
    fy_mux_credit_init_pair(&c->credit, ac->tun.stream_send, ac->tun.stream_recv);
    c->fin_rx = c->fin_tx = false;
    c->svc_keep = true;
    c->rstate = FY_R_HEAD;
    b = bucket(ac, c->sid);
    c->snext = *b;
    *b = c;
    ac->nstreams++;
    ac->tunnel->nstreams++;
    return FY_OK;
}

void fy_agentconn_end_stream(fy_client_t *c, uint32_t code)
{
    fy_agentconn_t *ac = c->ac;
    fy_client_t **pp;

    if (ac == NULL)
        return;
    for (pp = bucket(ac, c->sid); *pp != NULL; pp = &(*pp)->snext) {
        if (*pp == c) {
            *pp = c->snext;
            break;
        }
    }
    c->snext = NULL;
    ac->nstreams--;
    if (ac->tunnel)
        ac->tunnel->nstreams--;
    /* Ended between messages, nothing owed either way, nobody asked to
     * close: the agent may keep its connection to the service. */
    if (code == FY_MUX_RST_DONE && c->svc_keep && c->pending == 0 && c->rstate == FY_R_HEAD && !c->fin_rx
        && c->out_unscanned == 0 && c->state != FY_C_BODY && c->state != FY_C_UPGRADE && c->state != FY_C_TUNNEL)
        code = FY_MUX_RST_IDLE;
    if (code != 0 && !ac->tun.closed)
        (void)fy_tun_send_u32(&ac->tun, FY_MUX_RST, c->sid, code, NULL);
    /* Bytes of this stream still waiting for the client no longer count
     * against the connection window. */
    if (c->out_credit > 0)
        fy_tun_consumed(&ac->tun, 0, NULL, c->out_credit);
    c->out_credit = 0;
    c->ac = NULL;
    c->sid = 0;
    c->blocked = false;
}

void fy_agentconn_goaway_all(fy_worker_t *w)
{
    fy_agentconn_t *ac;
    for (ac = w->agents; ac != NULL; ac = ac->next) {
        if (ac->draining || ac->tun.closed)
            continue;
        ac->draining = true;
        (void)fy_tun_send_u32(&ac->tun, FY_MUX_GOAWAY, 0, FY_MUX_GOAWAY_DRAIN, "relay draining");
    }
}

/* --- tunnel connection callbacks ---------------------------------------- */

static void send_ready(fy_agentconn_t *ac)
{
    uint8_t p[512];
    char url[400], window[16];
    size_t pl = 0;
    int n;

    snprintf(window, sizeof(window), "%u", ac->tun.stream_recv);
    /* The public URL, on the scheme and port the agent came in on. */
    if (ac->port == (ac->tls ? 443 : 80))
        n = snprintf(url, sizeof(url), "%s://%s.%s", ac->tls ? "https" : "http", ac->tunnel->id,
                     ac->w->conf->domain);
    else
        n = snprintf(url, sizeof(url), "%s://%s.%s:%d", ac->tls ? "https" : "http", ac->tunnel->id,
                     ac->w->conf->domain, ac->port);
    if (n < 0 || (size_t)n >= sizeof(url)
        || fy_mux_kv_put(p, &pl, sizeof(p), "url", url, (size_t)n) != FY_OK
        || fy_mux_kv_put(p, &pl, sizeof(p), "tunnel", ac->tunnel->id, strlen(ac->tunnel->id)) != FY_OK
        || (ac->tun.stream_recv != FY_MUX_STREAM_WINDOW
            && fy_mux_kv_put(p, &pl, sizeof(p), "window", window, strlen(window)) != FY_OK)
        || fy_tun_send(&ac->tun, FY_MUX_READY, 0, p, pl) != FY_OK) {
        fy_tun_close(&ac->tun, "could not send READY");
        return;
    }
    ac->ready = true;
}

static void on_frame(fy_tun_t *t, const fy_mux_event_t *e)
{
    fy_agentconn_t *ac = t->data;
    fy_client_t *c;
    const char *v;
    size_t vl;

    switch (e->hdr.type) {
    case FY_MUX_HELLO:
        if (ac->ready) {
            fy_tun_close(t, "second HELLO");
            return;
        }
        if (!fy_mux_kv_valid(e->payload, e->len)
            || (v = fy_mux_kv_get(e->payload, e->len, "session", &vl)) == NULL
            || !same_session(ac->tunnel, v, vl)) {
            fy_tun_close(t, "HELLO without the session of the upgrade");
            return;
        }
        if ((v = fy_mux_kv_get(e->payload, e->len, "basic_auth", &vl)) != NULL && vl > 0) {
            /* Keep only a keyed digest of the agent's USER:PASS. */
            crypto_generichash(ac->tunnel->basic_digest, sizeof(ac->tunnel->basic_digest), (const uint8_t *)v, vl,
                               ac->w->digest_key, sizeof(ac->w->digest_key));
            ac->tunnel->basic_auth = true;
        }
        /* An agent that says what it grants a stream gets the wide window
         * back in READY; one that does not keeps 256 KiB both ways. */
        if (fy_mux_kv_window(e->payload, e->len, &t->stream_send) == FY_OK)
            t->stream_recv = FY_MUX_STREAM_WINDOW_WIDE;
        send_ready(ac);
        fy_worker_wake(ac->w, ac->tunnel->id);
        return;
    case FY_MUX_WINDOW:
        if ((c = stream_find(ac, e->hdr.stream)) == NULL)
            return;
        if (fy_mux_credit_granted(&c->credit, fy_mux_get_u32(e->payload)) != FY_OK) {
            fy_agentconn_end_stream(c, FY_MUX_RST_FLOW);
            fy_client_close(c);
            return;
        }
        fy_client_on_credit(c);
        return;
    case FY_MUX_FIN:
        if ((c = stream_find(ac, e->hdr.stream)) != NULL)
            fy_client_on_fin(c);
        return;
    case FY_MUX_RST:
        if ((c = stream_find(ac, e->hdr.stream)) != NULL)
            fy_client_on_rst(c, fy_mux_get_u32(e->payload), (const char *)e->payload + 4, e->len - 4);
        return;
    case FY_MUX_PONG:
    case FY_MUX_GOAWAY:
        return;
    default:
        fy_tun_close(t, "unexpected frame from the agent");
        return;
    }
}

static void on_data(fy_tun_t *t, uint32_t stream, const uint8_t *p, size_t n)
{
    fy_agentconn_t *ac = t->data;
    fy_client_t *c = stream_find(ac, stream);

    if (c == NULL) {
        /* A stream we already ended: its bytes still return their credit. */
        fy_tun_consumed(t, 0, NULL, n);
        return;
    }
    fy_client_on_data(c, p, n);
}

static fy_pipe_t *splice_pipe(fy_tun_t *t, uint32_t stream, uint8_t flags, size_t *max)
{
    fy_client_t *c = stream_find(t->data, stream);
    return c != NULL ? fy_client_splice_pipe(c, max) : NULL;
}

static void on_spliced(fy_tun_t *t, uint32_t stream, size_t n)
{
    fy_client_on_spliced(stream_find(t->data, stream), n);
}

static void on_credit(fy_tun_t *t)
{
    fy_agentconn_t *ac = t->data;
    uint32_t i;

    for (i = 0; ac->buckets != NULL && i < ac->nbuckets && !t->closed; i++) {
        fy_client_t *c = ac->buckets[i], *next;
        for (; c != NULL; c = next) {
            next = c->snext;
            fy_client_on_credit(c);
        }
    }
}

static void on_close(fy_tun_t *t, const char *why)
{
    fy_agentconn_t *ac = t->data;
    fy_worker_t *w = ac->w;
    fy_tunnel_t *tn = ac->tunnel;
    uint32_t i;
    unsigned k;

    fy_timer_stop(w->ev, &ac->timer);
    atomic_fetch_sub_explicit(&w->rec->agents, 1, memory_order_relaxed);
    for (i = 0; ac->buckets != NULL && i < ac->nbuckets; i++) {
        while (ac->buckets[i] != NULL) {
            fy_client_t *c = ac->buckets[i];
            bool owed = c->pending > 0 && !c->resp_started && c->out_unscanned == 0;
            fy_agentconn_end_stream(c, 0);
            if (owed)
                fy_client_error(c, false, 502, "tunnel_lost", "tunnel \"%s\": the agent disconnected", c->tunnel_id);
            else if (c->pending > 0 || c->state == FY_C_TUNNEL)
                fy_client_close(c);
        }
    }
    if (tn != NULL) {
        for (k = 0; k < tn->nconns; k++) {
            if (tn->conns[k] == ac) {
                tn->conns[k] = tn->conns[--tn->nconns];
                break;
            }
        }
        fy_log_info("agent %s disconnected from tunnel \"%s\": %s", ac->addr, tn->id, why ? why : "closed");
        fy_worker_unregister(w, tn->id, ac->serial);
        if (tn->nconns == 0)
            fy_tunnel_remove(w, tn);
    }
    if (ac->prev)
        ac->prev->next = ac->next;
    else
        w->agents = ac->next;
    if (ac->next)
        ac->next->prev = ac->prev;
    fy_tun_free(t);
    free(ac->buckets);
    free(ac);
}

static void on_watchdog(fy_ev_t *ev, fy_timer_t *tm)
{
    fy_agentconn_t *ac = tm->data;
    uint64_t now = fy_ev_now(ev);

    if (ac->tun.closed)
        return;
    if (now - ac->tun.last_rx >= AGENT_DEAD_MS) {
        fy_tun_close(&ac->tun, "no frame for 30 s (heartbeat lost)");
        return;
    }
    fy_timer_arm_at(ev, tm, ac->tun.last_rx + AGENT_DEAD_MS);
}
