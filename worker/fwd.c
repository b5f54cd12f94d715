/*
 * fwd.c: one request carried to the node that owns its tunnel (cluster
 * `mode: proxy`). The worker takes the end user's socket over from its
 * fy_client_t, opens a connection to the owner's advertise address, sends
 * the head as the client sent it plus X-Ferry-Forwarded (the node MAC,
 * cluster.c), then the body as framed by the request (Content-Length or
 * chunked), and relays the response back, framed too (RFC 9112 §6.3), so it
 * knows where it ends. Then the node connection is closed and the end
 * user's connection becomes an ordinary client again with whatever it sent
 * after the request: its next request is routed afresh (the next tunnel may
 * be local, or on a third node). A 101 turns both sides into a byte pipe
 * until each has closed (WebSocket across nodes).
 *
 * Node connections are kept alive and reused (a small idle pool per
 * worker, FWD_POOL of them, closed after FWD_POOL_IDLE_MS): each request on
 * them carries its own MAC, so the owner trusts nothing it did not sign. A
 * reused connection the owner closed at the wrong moment is noticed before
 * any response byte, and the request is routed again as new.
 *
 * Bounds: `up` holds at most the head plus FWD_BUF of body, `down` and
 * `rest` at most FWD_BUF each; reading stops while they are full. Timers:
 * connect within cluster.timeout, the first response byte within
 * limits.upstream_timeout of the request's end, and no byte either way for
 * limits.idle_timeout closes both.
 */
#include "worker/cluster.h"
#include "log/log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define FWD_BUF  (64u * 1024)
#define FWD_POOL 64                 /* idle node connections per worker */
#define FWD_POOL_IDLE_MS 4000       /* well under the owner's idle_timeout */

typedef struct fy_fwd_s {
    fy_worker_t       *w;
    fy_io_t            cio, pio;        /* end user, owner node */
    fy_timer_t         timer;
    fy_task_t          free_task;
    bool               closed;
    fy_buf_t           up, down, rest, orig;
    size_t             down_unscanned;
    int                port;
    uint16_t           hops;
    bool               tls;             /* the end user came over TLS (its plaintext end is ours) */
    char               sni_id[FY_ID_MAX + 1];
    struct sockaddr_storage peer;
    char               peer_addr[FY_ADDRSTRLEN];
    char               id[FY_ID_MAX + 1];
    char               addr[64];
    uint64_t           started, last_active, wait_since;
    bool               connected;
    bool               reused;         /* pio came from the idle pool */
    bool               client_read;    /* bytes came from the end user after the start */
    /* request */
    bool               req_done, req_close, upgrade_asked, is_head;
    fy_h1_framer_t     qbody;           /* the request body */
    bool               client_eof, peer_eof, shut_peer, shut_client;
    /* response */
    bool               in_body;         /* the response head is through: rbody frames the rest */
    fy_h1_framer_t     rbody;
    bool               resp_started, resp_done, resp_close, tunnel;
    int                status;
    uint64_t           rbytes;
    fy_access_t        acc;
} fy_fwd_t;

/* --- idle node connections ------------------------------------------------- */

typedef struct {
    fy_io_t  io;              /* fd -1: a free entry; entries never move (epoll points at them) */
    char     addr[64];
    uint64_t since;           /* ms */
} pooled_t;

static pooled_t   pool[FWD_POOL];
static fy_timer_t pool_timer;
static fy_ev_t   *pool_ev;

static void pool_drop(pooled_t *p)
{
    fy_io_del(pool_ev, &p->io);
    close(p->io.fd);
    p->io.fd = -1;
}

/* An idle connection turned readable: the node closed it (or sent what it
 * should not have). Either way it is done. */
static void on_pooled(fy_ev_t *ev, fy_io_t *io, uint32_t events)
{
    pool_drop(io->data);
}

static void on_pool_timer(fy_ev_t *ev, fy_timer_t *t)
{
    uint64_t now = fy_ev_now(ev);
    bool any = false;

    for (int i = 0; i < FWD_POOL; i++) {
        if (pool[i].io.fd < 0 || pool[i].io.cb == NULL)
            continue;
        if (now - pool[i].since >= FWD_POOL_IDLE_MS)
            pool_drop(&pool[i]);
        else
            any = true;
    }
    if (any)
        fy_timer_arm(ev, &pool_timer, 1000);
}

static int pool_get(fy_worker_t *w, const char *addr)
{
    pooled_t *best = NULL;
    int fd;

    for (int i = 0; i < FWD_POOL; i++)
        if (pool[i].io.cb != NULL && pool[i].io.fd >= 0 && strcmp(pool[i].addr, addr) == 0
            && (best == NULL || pool[i].since > best->since))
            best = &pool[i];
    if (best == NULL)
        return -1;
    fd = best->io.fd;
    fy_io_del(w->ev, &best->io);
    best->io.fd = -1;
    return fd;
}

/* Keep fd (a node connection between requests) for the next request to addr. */
static void pool_put(fy_worker_t *w, const char *addr, int fd)
{
    pooled_t *slot = NULL;
    int i;

    pool_ev = w->ev;
    for (i = 0; i < FWD_POOL; i++) {
        if (pool[i].io.cb == NULL) {
            pool[i].io.fd = -1;
            pool[i].io.cb = on_pooled;
            pool[i].io.data = &pool[i];
        }
        if (pool[i].io.fd < 0) {
            slot = &pool[i];
            break;
        }
        if (slot == NULL || pool[i].since < slot->since)
            slot = &pool[i];   /* full: the oldest goes */
    }
    if (slot->io.fd >= 0)
        pool_drop(slot);
    slot->io.fd = fd;
    slot->since = fy_ev_now(w->ev);
    snprintf(slot->addr, sizeof(slot->addr), "%s", addr);
    if (fy_io_set(w->ev, &slot->io, EPOLLIN | EPOLLRDHUP) != FY_OK) {
        close(fd);
        slot->io.fd = -1;
        return;
    }
    pool_timer.cb = on_pool_timer;
    if (!fy_timer_armed(&pool_timer))
        fy_timer_arm(w->ev, &pool_timer, 1000);
}

/* --- one forwarded request ------------------------------------------------------ */

static void on_client(fy_ev_t *ev, fy_io_t *io, uint32_t events);
static void on_peer(fy_ev_t *ev, fy_io_t *io, uint32_t events);
static void on_timer(fy_ev_t *ev, fy_timer_t *t);
static void update(fy_fwd_t *f);

static void free_task(fy_ev_t *ev, fy_task_t *t)
{
    fy_fwd_t *f = t->data;
    fy_buf_free(&f->up);
    fy_buf_free(&f->down);
    fy_buf_free(&f->rest);
    fy_buf_free(&f->orig);
    free(f);
}

static void close_fd(fy_fwd_t *f, fy_io_t *io)
{
    fy_io_del(f->w->ev, io);
    if (io->fd >= 0)
        close(io->fd);
    io->fd = -1;
}

static void log_access(fy_fwd_t *f)
{
    fy_client_t fake;   /* the access log reads the client address only */

    if (f->acc.start == 0)
        return;
    memset(&fake, 0, sizeof(fake));
    memcpy(fake.peer_addr, f->peer_addr, sizeof(fake.peer_addr));
    fy_access_log(f->w, &fake, &f->acc, f->status ? f->status : 502, f->rbytes, NULL);
    f->acc.start = 0;
}

static void fwd_close(fy_fwd_t *f)
{
    if (f->closed)
        return;
    f->closed = true;
    log_access(f);
    fy_timer_stop(f->w->ev, &f->timer);
    close_fd(f, &f->cio);
    close_fd(f, &f->pio);
    fy_task_queue(f->w->ev, &f->free_task);
}

/* The end user's connection goes back to being an ordinary client, with
 * bytes (borrowed) as what it has sent so far. */
static void give_back(fy_fwd_t *f, const fy_buf_t *bytes, uint16_t hops)
{
    fy_handoff_hdr_t h;
    int fd = f->cio.fd;

    memset(&h, 0, sizeof(h));
    h.magic = FY_HANDOFF_MAGIC;
    h.hops = hops;
    h.port = (uint16_t)f->port;
    h.len = (uint32_t)fy_buf_len(bytes);
    h.flags = f->tls ? FY_HANDOFF_F_TLS : 0;
    memcpy(h.sni_id, f->sni_id, FY_MIN(sizeof(h.sni_id), sizeof(f->sni_id)));
    h.peer = f->peer;
    fy_io_del(f->w->ev, &f->cio);
    f->cio.fd = -1;
    fy_client_adopt(f->w, fd, &h, fy_buf_data(bytes));
}

/* An answer of our own to the end user (nothing of the response came). */
static void answer(fy_fwd_t *f, int status, const char *code, const char *msg)
{
    char b[512];
    int n = snprintf(b, sizeof(b),
                     "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %zu\r\n"
                     "X-Ferry-Error: %s\r\n%sConnection: close\r\n\r\n%s\n",
                     status, status == 504 ? "Gateway Timeout" : "Bad Gateway", strlen(msg) + 1, code,
                     status == 503 ? "Retry-After: 1\r\n" : "", msg);
    fy_worker_count_error(f->w, fy_error_index(code));
    close_fd(f, &f->pio);
    f->down.rpos = f->down.wpos = 0;
    f->down_unscanned = 0;
    f->status = status;
    f->resp_started = f->resp_done = f->resp_close = true;
    if (n > 0 && (size_t)n < sizeof(b) && fy_buf_append(&f->down, b, (size_t)n, SIZE_MAX) == FY_OK)
        f->rbytes = (uint64_t)n;
}

/* --- the request side -------------------------------------------------------- */

/* Body bytes of the request go to `up`, anything after it to `rest`. */
static int feed_client(fy_fwd_t *f, const uint8_t *p, size_t n)
{
    size_t body;
    ssize_t used;

    if (f->tunnel)
        return fy_buf_append(&f->up, p, n, SIZE_MAX);
    if (f->req_done)
        return fy_buf_append(&f->rest, p, n, SIZE_MAX);
    used = fy_h1_framer_scan(&f->qbody, (const char *)p, n);
    if (used < 0)
        return FY_ERR;
    body = (size_t)used;
    f->req_done = f->qbody.done;
    if (fy_buf_append(&f->up, p, body, SIZE_MAX) != FY_OK)
        return FY_ERR;
    return body < n ? fy_buf_append(&f->rest, p + body, n - body, SIZE_MAX) : FY_OK;
}

static bool want_client_read(const fy_fwd_t *f)
{
    if (f->client_eof || f->resp_done)
        return false;
    if (f->tunnel || !f->req_done)
        return fy_buf_len(&f->up) < FWD_BUF;
    return f->upgrade_asked && fy_buf_len(&f->rest) < FWD_BUF;   /* bytes the client sends before the 101 */
}

static void read_client(fy_fwd_t *f)
{
    uint8_t buf[16384];
    ssize_t n = read(f->cio.fd, buf, sizeof(buf));

    if (n < 0) {
        if (errno != EAGAIN && errno != EINTR)
            fwd_close(f);
        return;
    }
    if (n == 0) {
        f->client_eof = true;
        if (!f->req_done && !f->tunnel)
            fwd_close(f);   /* gave up mid-request */
        return;
    }
    f->last_active = fy_ev_now(f->w->ev);
    f->client_read = true;
    if (feed_client(f, buf, (size_t)n) != FY_OK) {
        fwd_close(f);
        return;
    }
    if (f->req_done && f->wait_since == 0 && !f->tunnel)
        f->wait_since = f->last_active;
}

static void flush_up(fy_fwd_t *f)
{
    while (f->connected && fy_buf_len(&f->up) > 0) {
        ssize_t n = write(f->pio.fd, fy_buf_data(&f->up), fy_buf_len(&f->up));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN)
                f->peer_eof = true;   /* reading tells the rest */
            return;
        }
        fy_buf_consume(&f->up, (size_t)n);
        f->last_active = fy_ev_now(f->w->ev);
    }
    if (!f->connected)
        return;
    fy_buf_release_if_empty(&f->up);
    if (f->tunnel && f->client_eof && !f->shut_peer && fy_buf_len(&f->up) == 0) {
        shutdown(f->pio.fd, SHUT_WR);
        f->shut_peer = true;
        if (f->shut_client)
            fwd_close(f);
    }
}

/* --- the response side --------------------------------------------------------- */

static void resp_end(fy_fwd_t *f)
{
    f->resp_done = true;
    log_access(f);
}

/* Frame what arrived from the node. */
static void scan_down(fy_fwd_t *f)
{
    const fy_conf_t *conf = f->w->conf;

    while (f->down_unscanned > 0 && !f->resp_done && !f->tunnel) {
        uint8_t *p = f->down.base + f->down.wpos - f->down_unscanned;
        size_t n = f->down_unscanned;
        fy_h1_header_t hdrs[128];
        fy_h1_limits_t lim = {FY_NELEM(hdrs), conf->limits.max_header_bytes};
        fy_h1_response_t r;
        const fy_h1_header_t *e;
        ssize_t used;
        int rc;

        if (f->in_body) {
            if ((used = fy_h1_framer_scan(&f->rbody, (const char *)p, n)) < 0) {
                /* A bad chunk: cut the response short, without it. */
                f->down.wpos -= f->down_unscanned;
                f->down_unscanned = 0;
                f->resp_close = true;
                resp_end(f);
                return;
            }
            f->down_unscanned -= (size_t)used;
            f->rbytes += (uint64_t)used;
            if (f->rbody.done)
                resp_end(f);
            continue;
        }
        rc = fy_h1_parse_response((const char *)p, n, &r, hdrs, &lim, f->is_head);
        if (rc == FY_AGAIN && n < conf->limits.max_header_bytes)
            return;
        if (rc < 0) {
            fy_log_warn("cluster: node %s sent an invalid response for tunnel %s", f->addr, f->id);
            if (f->resp_started) {
                f->resp_close = true;
                resp_end(f);
            } else {
                answer(f, 502, "bad_response", "the owner node sent an invalid response");
            }
            return;
        }
        f->down_unscanned -= (size_t)rc;
        f->rbytes += (uint64_t)rc;
        f->resp_started = true;
        fy_buf_free(&f->orig);   /* the node answers: no replay from here on */
        f->wait_since = 0;
        if (r.status == 101) {
            if (!f->upgrade_asked) {
                answer(f, 502, "bad_response", "the owner node switched protocols unasked");
                return;
            }
            f->status = 101;
            f->tunnel = true;
            resp_end(f);
            f->resp_done = false;
            /* What the client sent after its upgrade request goes on. */
            if (fy_buf_len(&f->rest) > 0 && fy_buf_append(&f->up, fy_buf_data(&f->rest), fy_buf_len(&f->rest),
                                                          SIZE_MAX) != FY_OK) {
                fwd_close(f);
                return;
            }
            f->rest.rpos = f->rest.wpos = 0;
            f->rbytes += f->down_unscanned;
            f->down_unscanned = 0;
            return;
        }
        if (r.status < 200)
            continue;   /* interim: the final response follows */
        f->status = r.status;
        if (r.status == 404 && (e = fy_h1_find(r.headers, r.nheaders, "x-ferry-error")) != NULL
            && fy_ieq(e->value, e->value_len, "tunnel_offline"))
            fy_cluster_invalidate(f->w, f->id, NULL);   /* the directory was behind: look again next time */
        if ((r.flags & FY_H1_F_CLOSE) || r.body == FY_H1_BODY_UNTIL_CLOSE)
            f->resp_close = true;
        fy_h1_framer_start(&f->rbody, r.body, r.content_length);
        f->in_body = true;
        if (f->rbody.done)
            resp_end(f);
    }
    if (f->resp_done && f->down_unscanned > 0) {
        /* Bytes after the one response we asked for: not ours to pass on. */
        f->down.wpos -= f->down_unscanned;
        f->down_unscanned = 0;
        f->resp_close = true;
    }
}

static void read_peer(fy_fwd_t *f)
{
    ssize_t n;

    if (fy_buf_reserve(&f->down, 16384, FWD_BUF + 16384) != FY_OK)
        return;
    n = read(f->pio.fd, fy_buf_end(&f->down), fy_buf_room(&f->down));
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR)
            return;
        n = 0;
    }
    if (n == 0) {
        f->peer_eof = true;
        if (f->tunnel)
            return;   /* flush_down passes the close on once the bytes are out */
        if (f->in_body && f->rbody.kind == FY_H1_BODY_UNTIL_CLOSE) {
            resp_end(f);
        } else if (!f->resp_started && f->reused && f->down_unscanned == 0 && fy_buf_len(&f->orig) > 0
                   && !f->client_read) {
            /* An idle connection the node closed just as we reused it. */
            fy_buf_t b = f->orig;
            close_fd(f, &f->pio);
            f->acc.start = 0;
            give_back(f, &b, (uint16_t)(f->hops + 1));
            fwd_close(f);
        } else if (!f->resp_started) {
            fy_cluster_count(f->w, FY_CC_FORWARD_FAILED, 1);
            fy_cluster_invalidate(f->w, f->id, NULL);
            answer(f, 502, "upstream_closed", "the owner node closed the connection without a response");
        } else if (!f->resp_done) {
            f->resp_close = true;   /* truncated: the end user sees the connection close */
            resp_end(f);
        }
        return;
    }
    f->down.wpos += (size_t)n;
    f->last_active = fy_ev_now(f->w->ev);
    if (f->tunnel)
        f->rbytes += (uint64_t)n;
    else
        f->down_unscanned += (size_t)n;
    scan_down(f);
}

/* Write what is framed to the end user; when the response is done, finish. */
static void flush_down(fy_fwd_t *f)
{
    while (fy_buf_len(&f->down) > f->down_unscanned) {
        ssize_t n = write(f->cio.fd, fy_buf_data(&f->down), fy_buf_len(&f->down) - f->down_unscanned);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN)
                fwd_close(f);
            return;
        }
        fy_buf_consume(&f->down, (size_t)n);
        f->last_active = fy_ev_now(f->w->ev);
    }
    if (f->down_unscanned == 0)
        fy_buf_release_if_empty(&f->down);
    if (f->tunnel) {
        if (f->peer_eof && !f->shut_client) {
            shutdown(f->cio.fd, SHUT_WR);
            f->shut_client = true;
        }
        if (f->shut_client && f->shut_peer)
            fwd_close(f);
        return;
    }
    if (!f->resp_done)
        return;
    /* The response is out whole: the node connection serves the next
     * forwarded request unless something says it is finished. */
    if (f->pio.fd >= 0 && f->connected && f->req_done && !f->req_close && !f->resp_close && !f->peer_eof
        && fy_buf_len(&f->up) == 0 && f->down_unscanned == 0) {
        int fd = f->pio.fd;
        fy_io_del(f->w->ev, &f->pio);
        f->pio.fd = -1;
        pool_put(f->w, f->addr, fd);
    }
    close_fd(f, &f->pio);
    if (f->resp_close || f->req_close || f->client_eof || !f->req_done) {
        fwd_close(f);
        return;
    }
    give_back(f, &f->rest, 0);
    fwd_close(f);
}

/* --- events ------------------------------------------------------------------------ */

static void connect_failed(fy_fwd_t *f, int err)
{
    fy_log_warn("cluster: node %s (owner of tunnel %s) unreachable: %s; looking again", f->addr, f->id,
                strerror(err));
    fy_cluster_count(f->w, FY_CC_FORWARD_FAILED, 1);
    fy_cluster_invalidate(f->w, f->id, f->addr);
    close_fd(f, &f->pio);
    if (fy_buf_len(&f->orig) > 0 && !f->client_read) {
        /* Nothing reached the node: the request is routed again, as new. */
        fy_buf_t b = f->orig;
        f->acc.start = 0;
        give_back(f, &b, (uint16_t)(f->hops + 1));
    } else {
        answer(f, 502, "upstream_refused", "the node that holds this tunnel is unreachable");
        update(f);
        return;
    }
    fwd_close(f);
}

static void on_peer(fy_ev_t *ev, fy_io_t *io, uint32_t events)
{
    fy_fwd_t *f = io->data;

    if (f->closed)
        return;
    if (!f->connected) {
        int err = fy_net_connect_result(io->fd);
        if (err != 0 || (events & (EPOLLERR | EPOLLHUP))) {
            connect_failed(f, err ? err : ECONNREFUSED);
            return;
        }
        f->connected = true;
    }
    if (events & EPOLLOUT)
        flush_up(f);
    if (!f->closed && (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) && f->pio.fd >= 0 && !f->peer_eof)
        read_peer(f);
    if (!f->closed && f->cio.fd >= 0)
        flush_down(f);
    if (!f->closed)
        update(f);
}

static void on_client(fy_ev_t *ev, fy_io_t *io, uint32_t events)
{
    fy_fwd_t *f = io->data;

    if (f->closed)
        return;
    if (events & EPOLLOUT)
        flush_down(f);
    if (!f->closed && (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) && want_client_read(f))
        read_client(f);
    if (!f->closed && f->connected)
        flush_up(f);
    if (!f->closed && (events & EPOLLERR))
        fwd_close(f);
    if (!f->closed)
        update(f);
}

static void update(fy_fwd_t *f)
{
    const fy_conf_t *conf = f->w->conf;
    uint32_t cw, pw = 0;
    uint64_t d;

    if (f->closed)
        return;
    cw = (want_client_read(f) ? EPOLLIN : 0) | (fy_buf_len(&f->down) > f->down_unscanned ? EPOLLOUT : 0);
    if (f->pio.fd >= 0) {
        if (!f->connected)
            pw = EPOLLOUT;
        else
            pw = (!f->peer_eof && fy_buf_len(&f->down) < FWD_BUF ? EPOLLIN : 0)
               | (fy_buf_len(&f->up) > 0 ? EPOLLOUT : 0);
    }
    if (fy_io_set(f->w->ev, &f->cio, cw) != FY_OK
        || (f->pio.fd >= 0 && fy_io_set(f->w->ev, &f->pio, pw) != FY_OK)) {
        fwd_close(f);
        return;
    }
    if (!f->connected)
        d = f->started + conf->cluster.timeout;
    else if (f->wait_since != 0 && !f->resp_started)
        d = f->wait_since + conf->limits.upstream_timeout;
    else
        d = f->last_active + conf->limits.idle_timeout;
    if (!fy_timer_armed(&f->timer) || f->timer.deadline != d)
        fy_timer_arm_at(f->w->ev, &f->timer, d);
}

static void on_timer(fy_ev_t *ev, fy_timer_t *t)
{
    fy_fwd_t *f = t->data;
    uint64_t now = fy_ev_now(ev);

    if (f->closed)
        return;
    if (!f->connected) {
        connect_failed(f, ETIMEDOUT);
        return;
    }
    if (f->wait_since != 0 && !f->resp_started && now >= f->wait_since + f->w->conf->limits.upstream_timeout) {
        answer(f, 504, "upstream_timeout", "the owner node did not answer in time");
        flush_down(f);
        update(f);
        return;
    }
    if (now >= f->last_active + f->w->conf->limits.idle_timeout) {
        fwd_close(f);
        return;
    }
    update(f);
}

/* --- start --------------------------------------------------------------------------- */

void fy_fwd_start(fy_client_t *c, const fy_h1_request_t *req, const char *id, const char *addr)
{
    fy_worker_t *w = c->w;
    const uint8_t *in = fy_buf_data(&c->in);
    size_t inlen = fy_buf_len(&c->in), line_end, start = (size_t)((const uint8_t *)req->method - in);
    char hdr[FY_ADDRSTRLEN + FY_NODE_MAX + 160];
    struct sockaddr_storage ss;
    socklen_t sl;
    ssize_t hl;
    fy_fwd_t *f = calloc(1, sizeof(*f));
    const uint8_t *eol;

    if (f == NULL) {
        fy_client_close(c);
        return;
    }
    f->w = w;
    f->cio.fd = f->pio.fd = -1;
    f->cio.cb = on_client;
    f->pio.cb = on_peer;
    f->cio.data = f->pio.data = f;
    f->timer.cb = on_timer;
    f->timer.data = f;
    f->free_task.cb = free_task;
    f->free_task.data = f;
    f->port = c->port;
    f->hops = c->hops;
    f->tls = c->tls;
    memcpy(f->sni_id, c->sni_id, sizeof(f->sni_id));
    f->peer = c->peer;
    memcpy(f->peer_addr, c->peer_addr, sizeof(f->peer_addr));
    snprintf(f->id, sizeof(f->id), "%s", id);
    snprintf(f->addr, sizeof(f->addr), "%s", addr);
    f->started = f->last_active = fy_ev_now(w->ev);
    f->is_head = req->method_len == 4 && memcmp(req->method, "HEAD", 4) == 0;
    f->upgrade_asked = (req->flags & FY_H1_F_UPGRADE) != 0;
    f->req_close = (req->flags & FY_H1_F_CLOSE) != 0;
    fy_h1_framer_start(&f->qbody, req->body, req->content_length);
    f->req_done = f->qbody.done;
    fy_access_note(&f->acc, f->started, req, id, false);
    /* The head as sent, with our header after the request line. */
    eol = memchr(in + start, '\n', req->head_len - start);
    line_end = eol ? (size_t)(eol - in) + 1 : 0;
    hl = fy_cluster_sign(w->conf, req, c->peer_addr, c->tls, (int64_t)time(NULL), hdr, sizeof(hdr));
    if (line_end == 0 || hl < 0 || fy_buf_append(&f->orig, in, inlen, SIZE_MAX) != FY_OK
        || fy_buf_append(&f->up, in + start, line_end - start, SIZE_MAX) != FY_OK
        || fy_buf_append(&f->up, "X-Ferry-Forwarded: ", 19, SIZE_MAX) != FY_OK
        || fy_buf_append(&f->up, hdr, (size_t)hl, SIZE_MAX) != FY_OK
        || fy_buf_append(&f->up, "\r\n", 2, SIZE_MAX) != FY_OK
        || fy_buf_append(&f->up, in + line_end, req->head_len - line_end, SIZE_MAX) != FY_OK
        || (inlen > req->head_len && feed_client(f, in + req->head_len, inlen - req->head_len) != FY_OK)) {
        free_task(w->ev, &f->free_task);
        fy_client_error(c, false, 400, "bad_request", "this request cannot be forwarded");
        return;
    }
    if (f->req_done)
        f->wait_since = f->started;
    f->cio.fd = fy_client_detach_fd(c);   /* c is gone from here on */
    if ((f->pio.fd = pool_get(w, addr)) >= 0) {
        f->connected = f->reused = true;
        flush_up(f);
        update(f);
        return;
    }
    if (fy_net_parse_addr(addr, &ss, &sl) != FY_OK || (f->pio.fd = fy_net_connect((struct sockaddr *)&ss, sl)) < 0) {
        connect_failed(f, errno ? errno : EINVAL);
        return;
    }
    update(f);
}
