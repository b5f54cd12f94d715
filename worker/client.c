/*
 * client.c: one end-user connection. The request side reads heads, routes
 * each request on its own (SPEC.md) and forwards head and body over the
 * connection's stream; the response side frames what the agent sends back
 * (RFC 9112 §6.3) so that the relay always knows where a response ends:
 * before the next request may go to another tunnel, for HEAD and 1xx, and
 * for 101, after which bytes flow raw both ways.
 *
 * Memory per connection is bounded: `in` holds at most one head plus a
 * read's worth of body, `out` at most the stream window (the agent cannot
 * send more than the credit we return as we write to the socket).
 */
#include "worker/worker.h"
#include "worker/cluster.h"
#include "log/log.h"

#include <sodium.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define CLIENT_READ     (16u * 1024)
#define CLIENT_BODY_BUF (64u * 1024)   /* body/tunnel bytes read ahead of credit */
#define CLIENT_OUT_MAX  (FY_MUX_STREAM_WINDOW_WIDE + 64u * 1024)
#define LINGER_MS       2000

static void on_io(fy_ev_t *ev, fy_io_t *io, uint32_t events);
static void on_timer(fy_ev_t *ev, fy_timer_t *t);
static void free_task(fy_ev_t *ev, fy_task_t *t);
static void process(fy_client_t *c);
static void read_in(fy_client_t *c);
static void flush_out(fy_client_t *c);
static void update(fy_client_t *c);

static size_t in_max(const fy_client_t *c)
{
    return c->w->conf->limits.max_header_bytes + CLIENT_BODY_BUF;
}

static fy_client_t *client_new(fy_worker_t *w, int fd, int port, bool admin, const struct sockaddr_storage *peer)
{
    fy_client_t *c = calloc(1, sizeof(*c));

    if (c == NULL) {
        close(fd);
        return NULL;
    }
    c->w = w;
    c->io.fd = fd;
    c->io.cb = on_io;
    c->io.data = c;
    c->timer.cb = on_timer;
    c->timer.data = c;
    c->free_task.cb = free_task;
    c->free_task.data = c;
    c->admin = admin;
    c->port = port;
    c->peer = *peer;
    c->handoff_to = -1;
    c->serial = ++w->client_serial;
    fy_net_format_ip((const struct sockaddr *)peer, c->peer_ip);
    fy_net_format((const struct sockaddr *)peer, c->peer_addr);
    c->last_active = fy_ev_now(w->ev);
    /* The first head must arrive within header_timeout of the accept. */
    c->head_started = c->last_active;
    c->next = w->clients;
    if (w->clients)
        w->clients->prev = c;
    w->clients = c;
    w->nclients++;
    return c;
}

void fy_client_accept(fy_worker_t *w, fy_listener_t *l, int fd, const struct sockaddr_storage *peer)
{
    fy_client_t *c = client_new(w, fd, l->port, l->admin, peer);

    if (c == NULL)
        return;
    c->accepted_here = true;
    /* Read at once (HAProxy's speculative read): a client that connects
     * sends its request right away, so it is usually here already. A
     * request handed to another worker then never enters our epoll set,
     * and one served here saves a wakeup. */
    read_in(c);
    if (!c->closed)
        process(c);
    if (!c->closed)
        fy_buf_release_if_empty(&c->in);
    update(c);
}

void fy_client_adopt(fy_worker_t *w, int fd, const fy_handoff_hdr_t *h, const uint8_t *bytes)
{
    fy_client_t *c = client_new(w, fd, h->port, false, &h->peer);

    if (c == NULL)
        return;
    c->hops = h->hops;
    c->prejudged = (h->flags & FY_HANDOFF_F_JUDGED) != 0;
    c->tls = (h->flags & FY_HANDOFF_F_TLS) != 0;
    snprintf(c->sni_id, sizeof(c->sni_id), "%.*s", (int)strnlen(h->sni_id, sizeof(h->sni_id)), h->sni_id);
    if (fy_buf_append(&c->in, bytes, h->len, in_max(c)) != FY_OK) {
        fy_client_error(c, false, 431, "header_too_large", "the request head is too large");
        return;
    }
    process(c);
    if (!c->closed)
        fy_buf_release_if_empty(&c->in);
    update(c);
}

void fy_client_resume(fy_client_t *c)
{
    if (c->closed)
        return;
    process(c);
    update(c);
}

void fy_client_handoff_failed(fy_client_t *c)
{
    c->state = FY_C_HEAD;
    c->w->nparked--;
    atomic_fetch_add_explicit(&c->w->rec->handoffs_failed, 1, memory_order_relaxed);
    fy_client_error(c, false, 503, "handoff_failed", "tunnel \"%s\": its worker is not taking connections; try again",
                    c->tunnel_id);
}

/* --- responses of our own ------------------------------------------------ */

static const char *reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 307: return "Temporary Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 421: return "Misdirected Request";
    case 431: return "Request Header Fields Too Large";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default:  return "Error";
    }
}

void fy_client_respond(fy_client_t *c, int status, const char *ctype, const char *extra,
                       const char *body, size_t blen, bool keep)
{
    char head[1024];
    int n;

    if (c->closed)
        return;
    n = snprintf(head, sizeof(head),
                 "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s%s\r\n",
                 status, reason(status), ctype, blen, extra ? extra : "",
                 keep ? "" : "Connection: close\r\n");
    if (n < 0 || (size_t)n >= sizeof(head)
        || fy_buf_append(&c->out, head, (size_t)n, SIZE_MAX) != FY_OK
        || fy_buf_append(&c->out, body, blen, SIZE_MAX) != FY_OK) {
        fy_client_close(c);
        return;
    }
    if (!keep) {
        c->close_after = true;
        c->state = FY_C_DONE;
    }
    flush_out(c);
}

void fy_client_error(fy_client_t *c, bool keep, int status, const char *code, const char *fmt, ...)
{
    char body[512], extra[160];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(body, sizeof(body) - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if ((size_t)n > sizeof(body) - 2)
        n = (int)sizeof(body) - 2;
    body[n++] = '\n';
    snprintf(extra, sizeof(extra), "X-Ferry-Error: %s\r\n%s", code,
             status == 503 ? "Retry-After: 1\r\n"
             : status == 401 && !strcmp(code, "denied") ? "WWW-Authenticate: Basic realm=\"ferry\", charset=\"UTF-8\"\r\n"
             : status == 405 ? "Allow: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS\r\n"
             : "");
    fy_worker_count_error(c->w, fy_error_index(code));
    if (c->pending > 0 && c->acc != NULL) {
        fy_access_log(c->w, c, &c->acc[c->acc_head], status, (uint64_t)n, code);
        if (!keep) {
            /* This answer ends the connection's exchanges: no response is
             * owed any more (nothing may answer or time this one out again). */
            c->pending = 0;
            c->waiting_since = 0;
        }
    } else {
        fy_access_t a;
        memset(&a, 0, sizeof(a));
        if (c->err_req != NULL)
            fy_access_note(&a, fy_ev_now(c->w->ev), c->err_req, c->err_tunnel, c->hops > 0);
        else
            a.start = fy_ev_now(c->w->ev), a.method[0] = '-', a.method_len = 1, a.path[0] = '-', a.path_len = 1;
        fy_access_log(c->w, c, &a, status, (uint64_t)n, code);
    }
    fy_client_respond(c, status, "text/plain; charset=utf-8", extra, body, (size_t)n, keep);
}

/*
 * An error for a request that was parsed whole: the connection stays open
 * for the next request when this one carried no body and did not ask to
 * close (as nginx does for a 404), else it closes after the answer.
 */
static bool can_keep(const fy_h1_request_t *req)
{
    return !(req->flags & FY_H1_F_CLOSE)
        && (req->body == FY_H1_BODY_NONE || (req->body == FY_H1_BODY_LENGTH && req->content_length == 0));
}

static void request_error(fy_client_t *c, const fy_h1_request_t *req, int status, const char *code,
                          const char *msg, const char *tunnel)
{
    bool keep = can_keep(req);
    c->wait_until = 0;   /* the next request waits for its own tunnel afresh */
    c->hops = 0;         /* and may move again: this one was answered */
    c->err_req = req;
    c->err_tunnel = tunnel;
    fy_client_error(c, keep, status, code, "%s", msg);
    c->err_req = NULL;
    c->err_tunnel = NULL;
    if (keep && !c->closed) {
        fy_buf_consume(&c->in, req->head_len);
        c->head_started = 0;
    }
}

/* cluster mode: redirect: 307 to the node that holds the tunnel (kept
 * alive as request_error does). */
static void redirect(fy_client_t *c, const fy_h1_request_t *req, const char *id, const char *loc)
{
    char extra[1100];
    bool keep = can_keep(req);
    fy_access_t a;

    memset(&a, 0, sizeof(a));
    fy_access_note(&a, fy_ev_now(c->w->ev), req, id, c->hops > 0);
    fy_access_log(c->w, c, &a, 307, 0, NULL);
    c->wait_until = 0;
    c->hops = 0;
    snprintf(extra, sizeof(extra), "Location: %s\r\n", loc);
    fy_client_respond(c, 307, "text/plain; charset=utf-8", extra, "", 0, keep);
    if (keep && !c->closed) {
        fy_buf_consume(&c->in, req->head_len);
        c->head_started = 0;
    }
}

/* --- closing --------------------------------------------------------------- */

static void unlink_client(fy_client_t *c)
{
    fy_worker_t *w = c->w;
    if (c->prev)
        c->prev->next = c->next;
    else
        w->clients = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->next = c->prev = NULL;
    w->nclients--;
}

void fy_client_close(fy_client_t *c)
{
    if (c->closed)
        return;
    c->closed = true;
    if (c->ac != NULL)
        fy_agentconn_end_stream(c, FY_MUX_RST_CANCEL);
    if (c->state == FY_C_REGISTER || c->state == FY_C_TUNNEL_WAIT || c->state == FY_C_HANDOFF
        || c->state == FY_C_VERIFY || c->state == FY_C_LOOKUP)
        c->w->nparked--;
    if (c->reg != NULL)
        fy_agentconn_unreserve(c->w);
    free(c->reg);   /* the master's answer finds no client and undoes the registration */
    c->reg = NULL;
    /* A socket accepted here has no other descriptor; one handed over may
     * still have the sender's for a moment after it arrives. */
    if (c->accepted_here)
        fy_io_forget(&c->io);
    else
        fy_io_del(c->w->ev, &c->io);
    fy_timer_stop(c->w->ev, &c->timer);
    if (c->io.fd >= 0)
        close(c->io.fd);
    c->io.fd = -1;
    unlink_client(c);
    fy_task_queue(c->w->ev, &c->free_task);
}

static void free_task(fy_ev_t *ev, fy_task_t *t)
{
    fy_client_t *c = t->data;
    fy_buf_free(&c->in);
    fy_buf_free(&c->out);
    fy_pipe_put(c->pipe);
    fy_access_ring_put(c->acc);
    free(c);
}

int fy_client_detach_fd(fy_client_t *c)
{
    int fd = c->io.fd;
    fy_io_del(c->w->ev, &c->io);
    c->io.fd = -1;
    fy_client_close(c);
    return fd;
}

/*
 * nginx's heuristic: a client that asked to close, whose request was read
 * whole and who has sent nothing more, sends nothing more; a plain close()
 * then ends with a FIN and saves the linger (shutdown, a wakeup, a read, two
 * epoll_ctl). Bytes unread in the socket at close() would make it a reset
 * that can destroy the answer on its way: one peek tells.
 */
static bool quiet(fy_client_t *c)
{
    uint8_t b;

    /* Nothing there (EAGAIN), the client's FIN (0) or a dead socket: close. */
    return c->read_whole && fy_buf_len(&c->in) == 0 && recv(c->io.fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) <= 0;
}

/*
 * Finish a connection whose last response is written: close it when the
 * client is done (quiet), else half-close and read what the client still
 * sends for a moment (nginx's lingering close), so an error response is not
 * destroyed by a reset from unread request bytes.
 */
static void finish(fy_client_t *c)
{
    if (c->ac != NULL)
        fy_agentconn_end_stream(c, FY_MUX_RST_DONE);
    if (c->peer_eof || quiet(c)) {
        fy_client_close(c);
        return;
    }
    shutdown(c->io.fd, SHUT_WR);
    c->linger = true;
    c->close_after = false;
    c->pending = 0;
    c->waiting_since = 0;
    fy_buf_free(&c->in);
    c->last_active = fy_ev_now(c->w->ev);
    update(c);
}

/* --- the response side ----------------------------------------------------- */

static void resp_done(fy_client_t *c)
{
    if (c->acc != NULL && c->pending > 0) {
        fy_access_log(c->w, c, &c->acc[c->acc_head], c->resp_status, c->resp_bytes, NULL);
        c->acc_head = (c->acc_head + 1) % FY_PIPELINE_MAX;
    }
    c->resp_bytes = 0;
    c->pending--;
    c->head_bits >>= 1;
    c->upgrade_bits >>= 1;
    c->resp_started = false;
    c->rstate = FY_R_HEAD;
    c->waiting_since = c->pending > 0 ? fy_ev_now(c->w->ev) : 0;
    if (c->pending == 0 && c->acc != NULL) {
        /* An idle keep-alive connection holds no ring. */
        fy_access_ring_put(c->acc);
        c->acc = NULL;
        c->acc_head = 0;
    }
}

/* Drop the unscanned tail (a bad response head) and return its credit. */
static void drop_unscanned(fy_client_t *c)
{
    size_t n = c->out_unscanned;
    c->out.wpos -= n;
    c->out_unscanned = 0;
    n = FY_MIN(n, c->out_credit);
    c->out_credit -= n;
    if (c->ac)
        fy_tun_consumed(&c->ac->tun, c->sid, &c->credit, n);
    if (fy_buf_len(&c->out) == 0)
        c->out.rpos = c->out.wpos = 0;
}

static void bad_response(fy_client_t *c, const char *why)
{
    fy_log_warn("tunnel %s: bad response from the agent's service: %s", c->tunnel_id, why);
    drop_unscanned(c);
    fy_agentconn_end_stream(c, FY_MUX_RST_PROTOCOL);
    c->pending = 0;
    if (c->resp_started) {
        c->close_after = true;
        c->state = FY_C_DONE;
    } else
        fy_client_error(c, false, 502, "bad_response", "tunnel \"%s\": the service sent an invalid response: %s",
                        c->tunnel_id, why);
}

/*
 * The relay closes after this final response (the end user asked to, and
 * the service was not told: route.c): say so in it (RFC 9112 §9.6), before
 * the blank line that ends the head at `at` in out. Best effort.
 */
static void say_close(fy_client_t *c, size_t at)
{
    static const char h[] = "Connection: close\r\n";
    size_t n = sizeof(h) - 1, rel = at - c->out.rpos;   /* reserve may compact the buffer */
    uint8_t *q;

    if (fy_buf_reserve(&c->out, n, CLIENT_OUT_MAX + 64) != FY_OK)
        return;
    q = fy_buf_data(&c->out) + rel;
    memmove(q + n, q, fy_buf_len(&c->out) - rel);
    memcpy(q, h, n);
    c->out.wpos += n;
    c->resp_bytes += n;
}

/* Frame the bytes that arrived; returns false if the client went away. */
static void scan_response(fy_client_t *c)
{
    const fy_conf_t *conf = c->w->conf;

    while (c->out_unscanned > 0 && !c->closed) {
        uint8_t *p = c->out.base + c->out.wpos - c->out_unscanned;
        size_t n = c->out_unscanned, take;

        switch (c->rstate) {
        case FY_R_HEAD: {
            fy_h1_header_t hdrs[128];
            fy_h1_limits_t lim = {FY_NELEM(hdrs), conf->limits.max_header_bytes};
            fy_h1_response_t r;
            int rc;

            if (c->pending == 0) {
                bad_response(c, "bytes without a request");
                return;
            }
            c->waiting_since = 0;
            rc = fy_h1_parse_response((const char *)p, n, &r, hdrs, &lim, c->head_bits & 1);
            if (rc == FY_AGAIN)
                return;
            if (rc < 0) {
                bad_response(c, r.err_reason ? r.err_reason : "malformed head");
                return;
            }
            c->out_unscanned -= (size_t)rc;
            c->resp_started = true;
            c->resp_status = r.status;
            c->resp_bytes += (uint64_t)rc;
            if (r.status == 101) {
                if (!(c->upgrade_bits & 1)) {
                    bad_response(c, "101 to a request that did not ask to upgrade");
                    return;
                }
                resp_done(c);
                c->rstate = FY_R_TUNNEL;
                c->state = FY_C_TUNNEL;
                break;
            }
            if (r.status < 200)
                break;  /* interim: the final response follows */
            if (c->close_after && c->pending == 1 && !(r.flags & FY_H1_F_CLOSE))
                say_close(c, (size_t)(p - c->out.base) + (size_t)rc - 2);
            if (c->state == FY_C_UPGRADE)
                c->state = FY_C_HEAD;
            if (r.flags & FY_H1_F_CLOSE)
                c->close_after = true, c->svc_keep = false;
            switch (r.body) {
            case FY_H1_BODY_NONE:
                resp_done(c);
                break;
            case FY_H1_BODY_LENGTH:
                c->rbody_left = r.content_length;
                c->rstate = FY_R_LENGTH;
                if (c->rbody_left == 0)
                    resp_done(c);
                break;
            case FY_H1_BODY_CHUNKED:
                memset(&c->rchunked, 0, sizeof(c->rchunked));
                c->rstate = FY_R_CHUNKED;
                break;
            case FY_H1_BODY_UNTIL_CLOSE:
                c->rstate = FY_R_CLOSE;
                c->close_after = true;
                c->svc_keep = false;
                break;
            }
            break;
        }
        case FY_R_LENGTH:
            take = (size_t)FY_MIN((uint64_t)n, c->rbody_left);
            c->rbody_left -= take;
            c->out_unscanned -= take;
            c->resp_bytes += take;
            if (c->rbody_left == 0)
                resp_done(c);
            break;
        case FY_R_CHUNKED: {
            ssize_t used = fy_h1_chunked_scan(&c->rchunked, (const char *)p, n);
            if (used < 0) {
                /* Bytes of this response went out already: cut it short. */
                fy_log_warn("tunnel %s: bad chunked response: %s", c->tunnel_id,
                            c->rchunked.err_reason ? c->rchunked.err_reason : "?");
                drop_unscanned(c);
                fy_agentconn_end_stream(c, FY_MUX_RST_PROTOCOL);
                c->pending = 0;
                c->close_after = true;
                c->state = FY_C_DONE;
                return;
            }
            c->out_unscanned -= (size_t)used;
            c->resp_bytes += (uint64_t)used;
            if (c->rchunked.done)
                resp_done(c);
            break;
        }
        case FY_R_CLOSE:
        case FY_R_TUNNEL:
            c->resp_bytes += c->out_unscanned;
            c->out_unscanned = 0;
            break;
        }
        if (c->close_after && c->pending == 0 && c->rstate == FY_R_HEAD && c->out_unscanned > 0) {
            bad_response(c, "bytes after a response that closes the connection");
            return;
        }
    }
}

/* Account body bytes that went to the end user unframed (they need no
 * scanning: the body of a known length, or raw bytes). */
static void body_passed(fy_client_t *c, size_t n)
{
    c->resp_bytes += (uint64_t)n;
    if (c->rstate == FY_R_LENGTH) {
        c->rbody_left -= n;
        if (c->rbody_left == 0)
            resp_done(c);
    }
}

/*
 * Body bytes that need no framing (a body of known length, raw bytes) and
 * arrive while nothing waits in `out` go straight to the client's socket
 * from the tunnel's read buffer; what the socket does not take goes to the
 * pipe (as spliced bytes do), so that later bytes can still be spliced
 * behind them. Returns how many of p[0..n) were passed on.
 */
static size_t write_through(fy_client_t *c, const uint8_t *p, size_t n)
{
    size_t take, room, done = 0;
    ssize_t w;

    if (fy_buf_len(&c->out) > 0 || c->linger)
        return 0;
    switch (c->rstate) {
    case FY_R_LENGTH:
        take = (size_t)FY_MIN((uint64_t)n, c->rbody_left);
        break;
    case FY_R_CLOSE:
    case FY_R_TUNNEL:
        take = n;
        break;
    default:
        return 0;   /* heads and chunked framing go through scan_response */
    }
    if (take == 0)
        return 0;
    if ((c->pipe == NULL || c->pipe->len == 0) && (w = write(c->io.fd, p, take)) > 0) {
        body_passed(c, (size_t)w);
        fy_tun_consumed(&c->ac->tun, c->sid, &c->credit, (size_t)w);
        done = (size_t)w;
    }
    room = take - done;
    if (done < take && fy_pipe_offer(&c->pipe, &room, UINT64_MAX) != NULL
        && (w = write(c->pipe->wfd, p + done, room)) > 0) {
        c->pipe->len += (size_t)w;
        body_passed(c, (size_t)w);
        fy_tun_consumed(&c->ac->tun, c->sid, &c->credit, (size_t)w);
        done += (size_t)w;
    }
    return done;
}

bool fy_client_out_pending(const fy_client_t *c)
{
    return fy_buf_len(&c->out) > 0 || (c->pipe != NULL && c->pipe->len > 0);
}

/* After bytes of the stream went to the end user or their way there:
 * what finished, what may go on. */
static void after_data(fy_client_t *c)
{
    if (c->close_after && c->pending == 0)
        flush_out(c);   /* the response that closes the connection is complete */
    if (!c->closed && c->state == FY_C_WAIT && c->pending == 0)
        c->state = FY_C_HEAD;
    process(c);
    update(c);
}

/*
 * The tunnel may splice body bytes of this stream into our pipe when they
 * need no framing (a body of known length, or raw bytes) and nothing waits
 * in out (the pipe's bytes go before out's). The stream credit bounds what
 * we take, so an agent over its window is caught by fy_client_on_data.
 */
fy_pipe_t *fy_client_splice_pipe(fy_client_t *c, size_t *max)
{
    uint64_t take;

    if (c->closed || c->linger || fy_buf_len(&c->out) > 0 || c->credit.recv <= 0)
        return NULL;
    switch (c->rstate) {
    case FY_R_LENGTH:
        take = c->rbody_left;
        break;
    case FY_R_CLOSE:
    case FY_R_TUNNEL:
        take = UINT64_MAX;
        break;
    default:
        return NULL;
    }
    return fy_pipe_offer(&c->pipe, max, FY_MIN(take, (uint64_t)c->credit.recv));
}

void fy_client_on_spliced(fy_client_t *c, size_t n)
{
    if (fy_mux_credit_received(&c->credit, (uint32_t)n) != FY_OK)
        fy_assert(!"spliced past the stream window");   /* splice_pipe took no more than the credit */
    c->last_active = fy_ev_now(c->w->ev);
    fy_worker_count(c->w, c->ac->tunnel, 0, 0, n);
    body_passed(c, n);
    fy_tun_consumed(&c->ac->tun, c->sid, &c->credit, n);
    flush_out(c);
    if (!c->closed)
        after_data(c);
}

void fy_client_on_data(fy_client_t *c, const uint8_t *p, size_t n)
{
    size_t direct;

    if (fy_mux_credit_received(&c->credit, (uint32_t)n) != FY_OK) {
        fy_log_warn("tunnel %s: agent sent past the stream window", c->tunnel_id);
        fy_tun_consumed(&c->ac->tun, 0, NULL, n);
        fy_agentconn_end_stream(c, FY_MUX_RST_FLOW);
        fy_client_close(c);
        return;
    }
    c->last_active = fy_ev_now(c->w->ev);
    fy_worker_count(c->w, c->ac->tunnel, 0, 0, n);
    direct = write_through(c, p, n);
    p += direct;
    n -= direct;
    if (n == 0) {
        after_data(c);
        return;
    }
    if (fy_buf_append(&c->out, p, n, CLIENT_OUT_MAX) != FY_OK) {
        fy_log_warn("tunnel %s: agent sent past the stream window", c->tunnel_id);
        fy_tun_consumed(&c->ac->tun, 0, NULL, n);
        fy_agentconn_end_stream(c, FY_MUX_RST_FLOW);
        fy_client_close(c);
        return;
    }
    c->out_unscanned += n;
    c->out_credit += n;
    scan_response(c);
    if (c->closed)
        return;
    flush_out(c);
    if (!c->closed && c->state == FY_C_WAIT && c->pending == 0)
        c->state = FY_C_HEAD;
    process(c);
    update(c);
}

static bool response_owed(const fy_client_t *c)
{
    return c->pending > 0 && !c->resp_started;
}

void fy_client_on_fin(fy_client_t *c)
{
    c->fin_rx = true;
    switch (c->rstate) {
    case FY_R_CLOSE:
        resp_done(c);
        c->close_after = true;
        break;
    case FY_R_TUNNEL:
        break;  /* half close: shut our write side once out is flushed */
    case FY_R_HEAD:
        if (response_owed(c) && c->out_unscanned == 0) {
            fy_agentconn_end_stream(c, FY_MUX_RST_DONE);
            fy_client_error(c, false, 502, "upstream_closed",
                            "tunnel \"%s\": the service closed the connection without a response", c->tunnel_id);
            return;
        }
        if (c->pending == 0 && c->out_unscanned == 0) {
            /* The service closed an idle keep-alive connection: the next
             * request opens a new stream. */
            fy_agentconn_end_stream(c, FY_MUX_RST_DONE);
            if (c->state == FY_C_WAIT)
                c->state = FY_C_HEAD;
            process(c);
            update(c);
            return;
        }
        c->close_after = true;
        break;
    default:
        c->close_after = true;  /* truncated response */
        break;
    }
    flush_out(c);
    update(c);
}

void fy_client_on_rst(fy_client_t *c, uint32_t code, const char *msg, size_t len)
{
    bool owed = response_owed(c) && c->out_unscanned == 0;

    fy_agentconn_end_stream(c, 0);
    if (owed) {
        if (code == FY_MUX_RST_TIMEOUT)
            fy_client_error(c, false, 504, "upstream_timeout", "tunnel \"%s\": the service did not answer in time",
                            c->tunnel_id);
        else
            fy_client_error(c, false, 502, "upstream_refused", "tunnel \"%s\": the agent could not reach its service: %.*s",
                            c->tunnel_id, (int)FY_MIN(len, 300), msg);
        return;
    }
    if (c->pending == 0 && c->rstate == FY_R_HEAD && c->state != FY_C_TUNNEL) {
        if (c->state == FY_C_WAIT)
            c->state = FY_C_HEAD;
        process(c);
        update(c);
        return;
    }
    c->close_after = true;
    c->state = FY_C_DONE;
    c->pending = 0;
    flush_out(c);
    update(c);
}

void fy_client_on_credit(fy_client_t *c)
{
    if (!c->blocked || c->closed)
        return;
    c->blocked = false;
    process(c);
    update(c);
}

/* --- writing to the client ------------------------------------------------- */

static void flush_out(fy_client_t *c)
{
    /* The pipe's bytes go before out's. Their credit went back when they
     * entered it: kernel memory, bounded by its size, like the socket's
     * own buffer. */
    if (c->pipe != NULL) {
        ssize_t n = fy_pipe_flush(&c->pipe, c->io.fd);
        if (n < 0) {
            fy_client_close(c);
            return;
        }
        if (n > 0)
            c->last_active = fy_ev_now(c->w->ev);
        if (c->pipe != NULL)
            return;
    }
    while (!c->closed) {
        size_t len = fy_buf_len(&c->out) - c->out_unscanned, credit;
        ssize_t n;

        if (len == 0)
            break;
        n = write(c->io.fd, fy_buf_data(&c->out), len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN)
                return;
            fy_client_close(c);
            return;
        }
        fy_buf_consume(&c->out, (size_t)n);
        credit = FY_MIN((size_t)n, c->out_credit);
        c->out_credit -= credit;
        if (c->ac != NULL && credit > 0)
            fy_tun_consumed(&c->ac->tun, c->sid, &c->credit, credit);
        c->last_active = fy_ev_now(c->w->ev);
    }
    if (c->closed || fy_buf_len(&c->out) > 0)
        return;
    fy_buf_release_if_empty(&c->out);
    if (c->state == FY_C_TUNNEL && c->fin_rx) {
        if (c->fin_tx || c->peer_eof) {
            fy_client_close(c);
            return;
        }
        shutdown(c->io.fd, SHUT_WR);
        return;
    }
    if (c->close_after && c->pending == 0 && c->out_unscanned == 0)
        finish(c);
}

/* --- the request side ------------------------------------------------------ */

static bool agent_path(const fy_worker_t *w, const fy_h1_request_t *req, const char **id, size_t *idl)
{
    const char *ap = w->conf->agent_path, *p = req->path;
    size_t al = strlen(ap), n = req->path_len, i;

    if (p == NULL || n < al || memcmp(p, ap, al) != 0)
        return false;
    if (n > al && p[al] != '/' && p[al] != '?')
        return false;
    *id = NULL;
    *idl = 0;
    if (n > al + 1 && p[al] == '/') {
        for (i = al + 1; i < n && p[i] != '?' && p[i] != '/'; i++)
            ;
        if (i < n && p[i] == '/')
            return false;
        *id = p + al + 1;
        *idl = i - al - 1;
    }
    return true;
}

/*
 * The worker to hand c to for tunnel id, when another worker holds it, or
 * -1. Owners are taken in turn. A connection moves at most FY_MAX_HOPS
 * times before a request of it is answered, so a table that changes under
 * it (an upgrade moves every agent) cannot bounce it around for ever.
 */
static int owner_elsewhere(fy_client_t *c, const char *id)
{
    if (c->admin || c->hops >= FY_MAX_HOPS)
        return -1;
    return fy_worker_owner_elsewhere(c->w, id);
}

/*
 * Agents spread over the workers: the accepting worker is whichever epoll
 * woke (with EPOLLEXCLUSIVE, mostly the same one), so an agent's upgrade
 * moves to the worker of this generation holding the fewest agent
 * connections when that is fewer than here. Returns the worker or -1.
 */
static int least_loaded(fy_client_t *c)
{
    fy_worker_t *w = c->w;
    uint32_t mine = atomic_load(&w->rec->agents), best = mine;
    int k, target = -1;

    if (c->hops >= FY_MAX_HOPS)
        return -1;
    for (k = 1; k < w->nworkers; k++) {   /* from the next worker on: ties spread */
        int i = w->base + (w->index - w->base + k) % w->nworkers;
        fy_shm_worker_t *r = fy_shm_worker(&w->shm, (unsigned)i);
        uint32_t n = atomic_load(&r->agents);
        if (i != w->index && w->mailbox_send[i] >= 0 && atomic_load(&r->state) == FY_SHM_W_UP && n < best) {
            best = n;
            target = i;
        }
    }
    return target;
}

/* A tunnel that is not connected: wait up to tunnel_wait for it (an agent
 * reconnecting after a crash or a restart loses no request). */
static bool park_for_tunnel(fy_client_t *c, const char *id)
{
    fy_worker_t *w = c->w;
    uint64_t now = fy_ev_now(w->ev);

    /* A draining worker still waits when another generation serves: the
     * tunnel's agent is moving there (GOAWAY), and the request follows. */
    if (w->conf->limits.tunnel_wait == 0 || (w->draining && fy_worker_successor(w) < 0))
        return false;
    if (c->wait_until == 0)
        c->wait_until = now + w->conf->limits.tunnel_wait;
    else if (now >= c->wait_until)
        return false;
    strcpy(c->tunnel_id, id);
    c->state = FY_C_TUNNEL_WAIT;
    w->nparked++;
    fy_worker_arm_retry(w);
    return true;
}

/*
 * The tunnel's agent set --basic-auth: the request's `Authorization: Basic`
 * must be that USER:PASS. Compared as keyed BLAKE2b digests in constant
 * time (the relay never keeps the password).
 */
static bool basic_auth_ok(fy_client_t *c, const fy_h1_request_t *req, const fy_tunnel_t *t)
{
    const fy_h1_header_t *h = fy_h1_find(req->headers, req->nheaders, "authorization");
    uint8_t raw[512], digest[32];
    size_t n;
    const char *v;

    if (h == NULL || h->value_len < 7 || !fy_ieq(h->value, 6, "basic ") )
        return false;
    v = h->value + 6;
    while (v < h->value + h->value_len && *v == ' ')
        v++;
    if (sodium_base642bin(raw, sizeof(raw), v, (size_t)(h->value + h->value_len - v), NULL, &n, NULL,
                          sodium_base64_VARIANT_ORIGINAL) != 0)
        return false;
    crypto_generichash(digest, sizeof(digest), raw, n, c->w->digest_key, sizeof(c->w->digest_key));
    sodium_memzero(raw, sizeof(raw));
    return sodium_memcmp(digest, t->basic_digest, sizeof(digest)) == 0;
}

static bool step_head(fy_client_t *c)
{
    fy_worker_t *w = c->w;
    const fy_conf_t *conf = w->conf;
    fy_h1_header_t hdrs[1000];
    fy_h1_limits_t lim = {FY_MIN(conf->limits.max_headers, FY_NELEM(hdrs)), conf->limits.max_header_bytes};
    fy_h1_request_t req;
    char id[FY_ID_MAX + 1];
    enum fy_route_via via;
    fy_tunnel_t *t;
    const char *aid, *ccode, *cmsg;
    size_t aidl, room, want;
    uint8_t *dst;
    ssize_t hl;
    int rc;

    if (fy_buf_len(&c->in) == 0 || c->pending >= FY_PIPELINE_MAX)
        return false;
    if (c->head_started == 0)
        c->head_started = fy_ev_now(w->ev);
    rc = fy_h1_parse_request((const char *)fy_buf_data(&c->in), fy_buf_len(&c->in), &req, hdrs, &lim);
    if (rc == FY_AGAIN)
        return false;
    if (rc < 0 || c->admin || c->pending > 0) {
        /* Anything but the next request on the same stream waits until
         * the responses in flight are written. */
        if (c->pending > 0) {
            if (rc >= 0 && !c->admin && c->ac != NULL && !c->fin_rx
                && fy_route_resolve(w, &req, id, &via) == FY_OK && strcmp(id, c->tunnel_id) == 0
                && !agent_path(w, &req, &aid, &aidl)
                && !(w->conf->naccess > 0 && fy_acl_applies(w->conf, id)))
                goto forward;
            c->state = FY_C_WAIT;
            return false;
        }
        if (rc < 0) {
            fy_client_error(c, false, req.err_status, req.err_code, "%s", req.err_reason);
            return false;
        }
        if (req.body != FY_H1_BODY_NONE && !(req.body == FY_H1_BODY_LENGTH && req.content_length == 0)) {
            fy_client_error(c, false, 400, "bad_request", "the admin API takes no request body");
            return false;
        }
        fy_buf_consume(&c->in, (size_t)rc);
        c->head_started = 0;
        fy_admin_request(c, &req);
        return !c->closed && c->state == FY_C_HEAD;
    }
    if (req.flags & FY_H1_F_CONNECT) {
        fy_client_error(c, false, 405, "bad_request", "CONNECT is not supported");
        return false;
    }
    if (fy_cluster_inbound(c, &req, &ccode, &cmsg) < 0) {
        request_error(c, &req, 403, ccode, cmsg, NULL);
        return !c->closed && c->state == FY_C_HEAD;
    }
    if (agent_path(w, &req, &aid, &aidl) && !fy_route_host_names_tunnel(w, &req)) {
        int target;
        if (c->ac != NULL)
            fy_agentconn_end_stream(c, FY_MUX_RST_DONE);
        if (conf->agents_require_tls && !c->tls) {
            request_error(c, &req, 403, "tls_required", "this relay takes agents over TLS only: connect with wss://",
                          NULL);
            return false;
        }
        /* A draining worker passes an agent's upgrade to a worker that
         * stays (another generation's, during an upgrade) rather than
         * refusing it: the agent moving after GOAWAY lands at once. */
        /* Over TLS it stays: its pump is here, and moving the plaintext
         * would add a hop to every frame of the tunnel. */
        if ((req.flags & FY_H1_F_UPGRADE) && !c->tls && !fy_client_out_pending(c)
            && (target = w->draining ? fy_worker_successor(w) : least_loaded(c)) >= 0) {
            fy_worker_handoff(w, c, target);
            return false;
        }
        fy_agentconn_request(c, &req, aid, aidl);
        return false;   /* c may be gone: it became an agent connection */
    }
    if (c->tls && fy_route_misdirected(w, c, &req)) {
        request_error(c, &req, 421, "misdirected",
                      "this TLS connection was opened for another tunnel; open a new one for this host", NULL);
        return !c->closed && c->state == FY_C_HEAD;
    }
    if (fy_route_resolve(w, &req, id, &via) != FY_OK) {
        request_error(c, &req, 404, "no_tunnel", "no tunnel named in this request", NULL);
        return !c->closed && c->state == FY_C_HEAD;
    }
    /* Access rules first: a refused request opens no stream and no
     * connection to the agent's service, and tells nothing of the tunnel. */
    c->judged_ok = false;
    if (w->conf->naccess > 0 && fy_acl_applies(w->conf, id)) {
        if (c->pending > 0) {
            c->state = FY_C_WAIT;   /* protected: judged one request at a time */
            return false;
        }
        switch (fy_acl_check(c, &req, id)) {
        case FY_ACL_OK:
            c->judged_ok = true;   /* a handoff tells the owner */
            break;
        case FY_ACL_PENDING:
            c->state = FY_C_VERIFY;
            w->nparked++;
            return false;
        case FY_ACL_DENY:
            request_error(c, &req, 403, "denied", "access to this tunnel is not allowed from your address", id);
            return !c->closed && c->state == FY_C_HEAD;
        case FY_ACL_AUTH:
            request_error(c, &req, 401, "denied", "this tunnel asks for a user name and password", id);
            return !c->closed && c->state == FY_C_HEAD;
        default:
            request_error(c, &req, 503, "busy", "too many credential checks at once; try again", id);
            return !c->closed && c->state == FY_C_HEAD;
        }
    }
    if (c->ac != NULL && (c->fin_rx || c->ac->draining || strcmp(id, c->tunnel_id) != 0))
        fy_agentconn_end_stream(c, FY_MUX_RST_DONE);
    if (c->ac == NULL) {
        fy_agentconn_t *ac = NULL;
        if ((t = fy_tunnel_find(w, id)) != NULL)
            ac = fy_agentconn_pick(t);
        if (ac == NULL) {
            int target = owner_elsewhere(c, id);
            if (target >= 0 && fy_client_out_pending(c)) {
                c->state = FY_C_WAIT;   /* the socket moves once what is owed on it is written */
                return false;
            }
            if (target >= 0) {
                fy_worker_handoff(w, c, target);
                return false;
            }
        }
        if (ac == NULL && t != NULL && fy_worker_successor(w) < 0)
            ac = fy_agentconn_pick_draining(t);
        if (ac == NULL && t == NULL && w->cluster != NULL) {
            char loc[1024];
            switch (fy_cluster_route(c, &req, id, via, loc, sizeof(loc))) {
            case FY_CLUSTER_GONE:
                return false;
            case FY_CLUSTER_LOOKUP:
                strcpy(c->tunnel_id, id);
                c->state = FY_C_LOOKUP;
                w->nparked++;
                return false;
            case FY_CLUSTER_REDIRECT:
                redirect(c, &req, id, loc);
                return !c->closed && c->state == FY_C_HEAD;
            case FY_CLUSTER_DOWN:
                request_error(c, &req, 503, "cluster_unavailable",
                              "this tunnel is not on this node and the cluster directory is unreachable; try again", id);
                return !c->closed && c->state == FY_C_HEAD;
            default:
                break;
            }
        }
        if (ac == NULL) {
            if (park_for_tunnel(c, id))
                return false;
            char msg[128];
            snprintf(msg, sizeof(msg), "tunnel \"%s\" is not connected", id);
            request_error(c, &req, 404, "tunnel_offline", msg, id);
            return !c->closed && c->state == FY_C_HEAD;
        }
        c->wait_until = 0;
        if (t->nstreams >= conf->limits.max_streams_per_tunnel) {
            fy_client_error(c, false, 503, "tunnel_busy", "tunnel \"%s\" is at its limit of %llu streams", id,
                            (unsigned long long)conf->limits.max_streams_per_tunnel);
            return false;
        }
        strcpy(c->tunnel_id, id);
        if (fy_agentconn_open_stream(ac, c) != FY_OK) {
            fy_client_error(c, false, 502, "tunnel_error", "tunnel \"%s\": could not open a stream", id);
            return false;
        }
        if (c->hops == 0)
            w->accepted_local++;
    }
forward:
    if (c->ac->tunnel->basic_auth && !basic_auth_ok(c, &req, c->ac->tunnel)) {
        if (c->pending > 0) {
            c->state = FY_C_WAIT;   /* answered in order, once the responses in flight are out */
            return false;
        }
        request_error(c, &req, 401, "denied", "this tunnel asks for a user name and password", id);
        return !c->closed && c->state == FY_C_HEAD;
    }
    /* The rewritten head goes out whole in one DATA frame. */
    want = FY_MIN((size_t)rc + 1024 + strlen(conf->path_prefix) + 2 * FY_ADDRSTRLEN, FY_TUN_MAX_DATA);
    room = fy_tun_data_room(&c->ac->tun, &c->credit);
    if (room < want) {
        c->blocked = true;
        return false;
    }
    if ((dst = fy_tun_data_reserve(&c->ac->tun, want, &room)) == NULL) {
        fy_client_close(c);
        return false;
    }
    hl = fy_route_rewrite(w, c, &req, id, via, dst, room);
    if (hl < 0) {
        fy_client_error(c, false, 431, "header_too_large", "the request head is too large to forward");
        return false;
    }
    /* The head goes whole in one frame, marked: the agent counts requests
     * (and finds heads to rewrite) without parsing. */
    fy_tun_data_commit_flags(&c->ac->tun, c->sid, &c->credit, (size_t)hl, FY_MUX_F_HEAD);
    if (req.minor == 0 || (req.flags & (FY_H1_F_UPGRADE | FY_H1_F_CONNECT)))
        c->svc_keep = false;   /* the service may close after this one (route.c) */
    fy_buf_consume(&c->in, (size_t)rc);
    c->judged_ok = false;
    c->head_started = 0;
    if (c->acc == NULL)
        c->acc = fy_access_ring_get();   /* while requests are pending */
    if (c->acc != NULL)
        fy_access_note(&c->acc[(c->acc_head + c->pending) % FY_PIPELINE_MAX], fy_ev_now(w->ev), &req, id,
                       c->hops > 0);
    /* Served here: the hop limit counts moves without progress only, so a
     * keep-alive connection may follow its requests from worker to worker. */
    c->hops = 0;
    if (req.flags & FY_H1_F_UPGRADE)
        c->upgrade_bits |= 1ull << c->pending;
    if (req.method_len == 4 && memcmp(req.method, "HEAD", 4) == 0)
        c->head_bits |= 1ull << c->pending;
    /* upstream_timeout runs from the whole request being sent: a request
     * with a body starts it when the body is done (step_forward). */
    if (c->pending++ == 0 && !(req.body == FY_H1_BODY_CHUNKED
                               || (req.body == FY_H1_BODY_LENGTH && req.content_length > 0)))
        c->waiting_since = fy_ev_now(w->ev);
    fy_worker_count(w, c->ac->tunnel, 1, (uint64_t)hl, 0);
    c->asked_close = (req.flags & FY_H1_F_CLOSE) != 0;
    if (req.flags & FY_H1_F_CLOSE)
        c->state = FY_C_DONE, c->close_after = true;
    if (req.body == FY_H1_BODY_CHUNKED) {
        memset(&c->chunked, 0, sizeof(c->chunked));
        c->body_chunked = true;
        c->state = FY_C_BODY;
    } else if (req.body == FY_H1_BODY_LENGTH && req.content_length > 0) {
        c->body_chunked = false;
        c->body_left = req.content_length;
        c->state = FY_C_BODY;
    } else if (req.flags & FY_H1_F_UPGRADE) {
        c->state = FY_C_UPGRADE;
    }
    if ((req.flags & FY_H1_F_CLOSE) && c->state != FY_C_BODY) {
        c->state = FY_C_DONE;
        c->read_whole = !(req.flags & FY_H1_F_UPGRADE);
    }
    c->close_after = c->close_after || (req.flags & FY_H1_F_CLOSE);
    return true;
}

/* The last byte of a request body went to the tunnel. */
static void body_read(fy_client_t *c)
{
    c->state = c->close_after ? FY_C_DONE : FY_C_HEAD;
    c->read_whole = c->asked_close;
    if (c->waiting_since == 0 && c->pending > 0 && !c->resp_started)
        c->waiting_since = fy_ev_now(c->w->ev);
}

/* Forward what `in` holds of a body or of tunnel bytes, within credit. */
static bool step_forward(fy_client_t *c)
{
    size_t len = fy_buf_len(&c->in), room, n;
    const uint8_t *p = fy_buf_data(&c->in);
    bool done = false;

    if (len == 0 || c->ac == NULL)
        return false;
    room = fy_tun_data_room(&c->ac->tun, &c->credit);
    if (room == 0) {
        c->blocked = true;
        return false;
    }
    n = FY_MIN(len, room);
    if (c->state == FY_C_BODY) {
        if (c->body_chunked) {
            ssize_t used = fy_h1_chunked_scan(&c->chunked, (const char *)p, n);
            if (used < 0) {
                fy_agentconn_end_stream(c, FY_MUX_RST_PROTOCOL);
                c->pending = 0;
                fy_client_error(c, false, 400, "bad_request", "invalid chunked body: %s",
                                c->chunked.err_reason ? c->chunked.err_reason : "?");
                return false;
            }
            n = (size_t)used;
            done = c->chunked.done;
        } else {
            n = (size_t)FY_MIN((uint64_t)n, c->body_left);
            c->body_left -= n;
            done = c->body_left == 0;
        }
    }
    if (n > 0 && fy_tun_send_data(&c->ac->tun, c->sid, &c->credit, p, n) != FY_OK) {
        fy_client_close(c);
        return false;
    }
    fy_buf_consume(&c->in, n);
    fy_worker_count(c->w, c->ac->tunnel, 0, n, 0);
    if (done)
        body_read(c);
    return n > 0 || done;
}

static void process(fy_client_t *c)
{
    for (;;) {
        bool progress;
        if (c->closed || c->linger)
            return;
        switch (c->state) {
        case FY_C_HEAD:
            progress = step_head(c);
            break;
        case FY_C_BODY:
        case FY_C_TUNNEL:
            progress = step_forward(c);
            break;
        default:
            progress = false;
            break;
        }
        if (!progress)
            break;
    }
    if (c->closed)
        return;
    if (c->peer_eof && fy_buf_len(&c->in) == 0) {
        if (c->state == FY_C_TUNNEL) {
            if (!c->fin_tx && c->ac != NULL) {
                c->fin_tx = true;
                (void)fy_tun_send(&c->ac->tun, FY_MUX_FIN, c->sid, NULL, 0);
            }
            if (c->fin_rx && !fy_client_out_pending(c))
                fy_client_close(c);
        } else if (c->state == FY_C_BODY) {
            fy_client_close(c);     /* the client gave up mid-body */
        } else if (c->pending == 0 && !fy_client_out_pending(c)) {
            fy_client_close(c);
        } else {
            c->state = FY_C_DONE;
            c->close_after = true;
        }
    } else if (c->peer_eof && c->state == FY_C_HEAD && c->pending == 0) {
        /* A partial head and then EOF: nothing more will come. */
        fy_client_close(c);
    }
}

/* --- readiness and timers --------------------------------------------------- */

static bool want_read(const fy_client_t *c)
{
    if (c->closed || c->peer_eof)
        return false;
    if (c->linger)
        return true;
    switch (c->state) {
    case FY_C_HEAD:
    case FY_C_BODY:
    case FY_C_TUNNEL:
        return !c->blocked && fy_buf_len(&c->in) < in_max(c);
    case FY_C_UPGRADE:
    case FY_C_WAIT:
        return fy_buf_len(&c->in) < in_max(c);
    default:
        return false;
    }
}

static void arm_timer(fy_client_t *c)
{
    const fy_conf_t *conf = c->w->conf;
    uint64_t d;

    if (c->linger)
        d = c->last_active + LINGER_MS;
    else if (c->state == FY_C_REGISTER || c->state == FY_C_TUNNEL_WAIT || c->state == FY_C_HANDOFF
             || c->state == FY_C_VERIFY || c->state == FY_C_LOOKUP)
        d = c->last_active + conf->limits.idle_timeout;   /* the worker's retry timer handles them */
    else if (c->state == FY_C_BODY)
        d = c->last_active + conf->limits.body_timeout;
    else if (c->waiting_since != 0)
        d = c->waiting_since + conf->limits.upstream_timeout;
    else if (c->state == FY_C_HEAD && c->head_started != 0 && c->pending == 0)
        d = c->head_started + conf->limits.header_timeout;
    else
        d = c->last_active + conf->limits.idle_timeout;
    if (!fy_timer_armed(&c->timer) || c->timer.deadline != d)
        fy_timer_arm_at(c->w->ev, &c->timer, d);
}

static void update(fy_client_t *c)
{
    uint32_t want;

    if (c->closed)
        return;
    want = (want_read(c) ? EPOLLIN : 0)
         | (fy_buf_len(&c->out) > c->out_unscanned || (c->pipe != NULL && c->pipe->len > 0) ? EPOLLOUT : 0);
    if (fy_io_set(c->w->ev, &c->io, want) != FY_OK) {
        fy_client_close(c);
        return;
    }
    arm_timer(c);
}

static void on_timer(fy_ev_t *ev, fy_timer_t *t)
{
    fy_client_t *c = t->data;
    uint64_t now = fy_ev_now(ev);
    const fy_conf_t *conf = c->w->conf;

    if (c->closed)
        return;
    if (c->linger) {
        fy_client_close(c);
        return;
    }
    if (c->state == FY_C_BODY && now >= c->last_active + conf->limits.body_timeout) {
        fy_agentconn_end_stream(c, FY_MUX_RST_CANCEL);
        c->pending = 0;
        fy_client_error(c, false, 408, "body_timeout", "no request body byte within %llu ms",
                        (unsigned long long)conf->limits.body_timeout);
        return;
    }
    if (c->waiting_since != 0 && now >= c->waiting_since + conf->limits.upstream_timeout) {
        if (!c->resp_started && c->out_unscanned == 0) {
            fy_agentconn_end_stream(c, FY_MUX_RST_TIMEOUT);
            fy_client_error(c, false, 504, "upstream_timeout", "tunnel \"%s\": no response within %llu ms",
                            c->tunnel_id, (unsigned long long)conf->limits.upstream_timeout);
        } else {
            fy_client_close(c);
        }
        return;
    }
    if (c->state == FY_C_HEAD && c->head_started != 0 && c->pending == 0
        && now >= c->head_started + conf->limits.header_timeout) {
        if (fy_buf_len(&c->in) > 0)
            fy_client_error(c, false, 408, "header_timeout", "the request head did not arrive within %llu ms",
                            (unsigned long long)conf->limits.header_timeout);
        else
            fy_client_close(c);   /* an idle connection: nothing to answer */
        return;
    }
    if (c->state == FY_C_VERIFY && now >= c->last_active + conf->limits.idle_timeout) {
        /* The verifier is that far behind: answer rather than drop (its
         * late verdict finds the request gone: the serial no longer waits). */
        c->state = FY_C_HEAD;
        c->w->nparked--;
        fy_client_error(c, false, 503, "busy", "the credential check did not finish in time; try again");
        return;
    }
    if (now >= c->last_active + conf->limits.idle_timeout) {
        fy_client_close(c);
        return;
    }
    arm_timer(c);
}

/*
 * A Content-Length body or tunnel bytes with nothing buffered: read from the
 * socket straight into a DATA frame of the tunnel's output, as far as the
 * credit goes (no copy in the relay). Returns false when it did not apply.
 */
static bool read_direct(fy_client_t *c)
{
    size_t room, want, got;
    uint8_t *dst;
    ssize_t n;

    if (fy_buf_len(&c->in) > 0 || c->ac == NULL
        || !(c->state == FY_C_TUNNEL || (c->state == FY_C_BODY && !c->body_chunked)))
        return false;
    if ((room = fy_tun_data_room(&c->ac->tun, &c->credit)) == 0) {
        c->blocked = true;
        return true;
    }
    want = c->state == FY_C_BODY ? (size_t)FY_MIN((uint64_t)room, c->body_left) : room;
    if ((dst = fy_tun_data_reserve(&c->ac->tun, want, &got)) == NULL) {
        fy_client_close(c);
        return true;
    }
    n = read(c->io.fd, dst, got);
    if (n < 0) {
        if (errno != EAGAIN && errno != EINTR)
            fy_client_close(c);
        return true;
    }
    if (n == 0) {
        c->peer_eof = true;
        return true;
    }
    fy_tun_data_commit(&c->ac->tun, c->sid, &c->credit, (size_t)n);
    fy_worker_count(c->w, c->ac->tunnel, 0, (uint64_t)n, 0);
    c->last_active = fy_ev_now(c->w->ev);
    if (c->state == FY_C_BODY && (c->body_left -= (uint64_t)n) == 0)
        body_read(c);
    return true;
}

static void read_in(fy_client_t *c)
{
    ssize_t n;

    if (read_direct(c))
        return;
    if (c->linger) {
        uint8_t sink[4096];
        n = read(c->io.fd, sink, sizeof(sink));
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
            fy_client_close(c);
        return;
    }
    if (fy_buf_reserve(&c->in, CLIENT_READ, in_max(c)) != FY_OK
        && fy_buf_reserve(&c->in, 1, in_max(c)) != FY_OK)
        return;
    n = read(c->io.fd, fy_buf_end(&c->in), fy_buf_room(&c->in));
    if (n < 0) {
        if (errno != EAGAIN && errno != EINTR)
            fy_client_close(c);
        return;
    }
    if (n == 0) {
        c->peer_eof = true;
        return;
    }
    c->in.wpos += (size_t)n;
    c->last_active = fy_ev_now(c->w->ev);
    if (c->state == FY_C_HEAD && c->head_started == 0)
        c->head_started = c->last_active;
}

static void on_io(fy_ev_t *ev, fy_io_t *io, uint32_t events)
{
    fy_client_t *c = io->data;

    if (c->closed)
        return;
    if (events & EPOLLOUT) {
        flush_out(c);
        /* A request that waited for the bytes owed to go out (its tunnel
         * lives on another worker) may move now. */
        if (!c->closed && c->state == FY_C_WAIT && c->pending == 0 && !fy_client_out_pending(c)) {
            c->state = FY_C_HEAD;
            process(c);
        }
    }
    if (!c->closed && (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) && want_read(c)) {
        read_in(c);
        if (!c->closed)
            process(c);
        /* An idle keep-alive connection keeps no read buffer (the next one
         * comes from the spares of buf.c, not malloc). */
        if (!c->closed)
            fy_buf_release_if_empty(&c->in);
    }
    /* A reset or fully closed peer: level-triggered epoll would report it
     * forever, and nothing can be written to it any more. */
    if (!c->closed && (events & (EPOLLHUP | EPOLLERR)))
        fy_client_close(c);
    update(c);
}
