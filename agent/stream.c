/*
 * stream.c: one stream on the agent: a non-blocking connection to one
 * upstream of the tunnel's failover set, bytes spliced both ways. What the
 * service writes is read straight into the tunnel's output (no copy) as far
 * as the relay's credit allows; what the relay sends is written on, and
 * buffered only up to the stream window we granted.
 *
 * Until the service accepts the connection, the relay's bytes wait in the
 * stream; if the upstream refuses (or does not answer the connect in
 * FY_AGENT_CONNECT_MS), the stream moves to the next pick of the set with
 * those bytes intact, so the end user sees no error.
 *
 * With a Host rewrite the relay's bytes go through raw and the framing of
 * hostrw.c on their way to out; credit is returned in relay bytes (owed),
 * as the buffers drain, so the window still bounds what we hold.
 *
 * A bulk upload may come by splice (tun.h): the relay's DATA payload goes
 * socket -> pipe -> service, never through our memory. The pipe's bytes go
 * before out's; their credit returns as they enter it (kernel memory,
 * bounded by its size, as the socket's own buffer is).
 */
#include "agent/agent.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define READS_PER_WAKEUP 4
/* out may exceed the window by what rewritten heads add. */
#define OUT_MAX (FY_MUX_STREAM_WINDOW_WIDE + 64u * 1024)
/* What a stream on a kept connection holds to send again elsewhere. */
#define REPLAY_MAX (64u * 1024)

static void on_io(fy_ev_t *ev, fy_io_t *io, uint32_t events);
static void on_connect_timeout(fy_ev_t *ev, fy_timer_t *t);
static void free_task(fy_ev_t *ev, fy_task_t *t);
static void update(fy_astream_t *s);
static void flush_out(fy_astream_t *s);
static void connect_next(fy_astream_t *s, const char *last_err);

static size_t piped(const fy_astream_t *s)
{
    return s->pipe != NULL ? s->pipe->len : 0;
}

void fy_astream_open(fy_tconn_t *tc, uint32_t id)
{
    fy_atunnel_t *tn = tc->tn;
    fy_agent_t *a = tn->agent;
    fy_astream_t *s = calloc(1, sizeof(*s));

    if (s == NULL) {
        (void)fy_tun_send_u32(&tc->tun, FY_MUX_RST, id, FY_MUX_RST_INTERNAL, "out of memory");
        return;
    }
    s->tc = tc;
    s->id = id;
    s->io.fd = -1;
    s->io.cb = on_io;
    s->io.data = s;
    s->timer.cb = on_connect_timeout;
    s->timer.data = s;
    s->free_task.cb = free_task;
    s->free_task.data = s;
    s->up = -1;
    s->rewrite = tn->hh_mode != FY_HH_PRESERVE;
    s->opened_at = fy_ev_now(a->ev);
    fy_mux_credit_init_pair(&s->credit, tc->tun.stream_send, tc->tun.stream_recv);
    if (fy__tconn_add_stream(tc, s) != FY_OK) {
        free(s);
        (void)fy_tun_send_u32(&tc->tun, FY_MUX_RST, id, FY_MUX_RST_INTERNAL, "out of memory");
        return;
    }
    tn->streams_open++;
    fy_meter_mark(&tn->m_conns, 1);
    fy_status_dirty(a);
    connect_next(s, NULL);
}

/* Connect to the next upstream this stream has not tried; RST refused when
 * none is left (last_err: why the last one failed). */
static void connect_next(fy_astream_t *s, const char *last_err)
{
    fy_atunnel_t *tn = s->tc->tn;
    fy_agent_t *a = tn->agent;
    char why[400];
    int i, fd;

    for (;;) {
        fy_upstream_t *u;
        if ((i = fy_upset_pick(&tn->ups, s->tried, true)) < 0) {
            fy_astream_close(s, FY_MUX_RST_REFUSED, last_err ? last_err : "no upstream");
            return;
        }
        u = &tn->ups.u[i];
        s->up = i;
        if (!s->sent_any && fy_upstream_take_idle(u, &s->io)) {
            /* A kept connection: no dial, nothing to wait for. */
            fy_buf_t *held = s->rewrite ? &s->raw : &s->out;
            s->connected = true;
            s->reused = true;
            /* What waits for it (nothing sent yet) is the start of the replay. */
            if (fy_buf_len(held) > REPLAY_MAX
                || fy_buf_append(&s->replay, fy_buf_data(held), fy_buf_len(held), REPLAY_MAX) != FY_OK)
                s->replay_lost = true;
            flush_out(s);
            update(s);
            return;
        }
        if ((fd = fy_net_connect((struct sockaddr *)&u->sa, u->salen)) >= 0)
            break;
        snprintf(why, sizeof(why), "dial tcp %s: %s", u->name, strerror(errno));
        fy_upset_failure(&tn->ups, i, why);
        s->tried |= 1u << i;
        last_err = why;
    }
    s->io.fd = fd;
    if (fy_io_set(a->ev, &s->io, EPOLLOUT) != FY_OK) {
        fy_astream_close(s, FY_MUX_RST_INTERNAL, "epoll failed");
        return;
    }
    fy_timer_arm(a->ev, &s->timer, FY_AGENT_CONNECT_MS);
}

/* The current upstream refused before any byte went to it: try the next. */
static void attempt_failed(fy_astream_t *s, const char *why)
{
    fy_atunnel_t *tn = s->tc->tn;
    char copy[400];

    snprintf(copy, sizeof(copy), "%s", why);
    fy_timer_stop(tn->agent->ev, &s->timer);
    fy_io_del(tn->agent->ev, &s->io);
    close(s->io.fd);
    s->io.fd = -1;
    fy_upset_failure(&tn->ups, s->up, copy);
    s->tried |= 1u << s->up;
    if (tn->ups.n > 1 && fy_upset_pick(&tn->ups, s->tried, false) >= 0)
        fy_alog(FY_AL_INFO, "upstream refused, trying the next", "obj", "upstreams", "name", tn->name,
                "url", tn->ups.u[s->up].url, "err", copy, NULL);
    connect_next(s, copy);
}

/*
 * A kept connection closed (or failed) before any byte of an answer: the
 * service timed it out just as it was reused. Send what went on it again on
 * a fresh connection, so the end user sees nothing of it. false when that
 * cannot be done: more than REPLAY_MAX sent, or a POST, PATCH or LOCK (then
 * the caller fails the stream as it would have, and the end user gets 502).
 */
static bool retry_fresh(fy_astream_t *s)
{
    fy_ev_t *ev = s->tc->tn->agent->ev;
    const char *m = (const char *)fy_buf_data(&s->replay);
    size_t ml = fy_buf_len(&s->replay);

    if (!s->reused || s->replay_lost || s->closed)
        return false;
    /* As nginx: a request that is not idempotent is not sent twice (the
     * service may have acted on it before it closed). */
    if ((ml >= 5 && memcmp(m, "POST ", 5) == 0) || (ml >= 6 && memcmp(m, "PATCH ", 6) == 0)
        || (ml >= 5 && memcmp(m, "LOCK ", 5) == 0))
        return false;
    fy_io_del(ev, &s->io);
    close(s->io.fd);
    s->io.fd = -1;
    s->reused = false;
    s->connected = false;
    s->shut_wr = false;
    s->sent_any = true;   /* no kept connection for it again: dial */
    /* Everything goes again from the start: the relay's bytes as they came. */
    fy_buf_free(&s->out);
    fy_buf_free(&s->raw);
    if (s->rewrite) {
        memset(&s->rw, 0, sizeof(s->rw));
        s->raw = s->replay;
    } else {
        s->out = s->replay;
    }
    memset(&s->replay, 0, sizeof(s->replay));
    connect_next(s, NULL);
    return true;
}

/* A byte of the answer came: the kept connection is good. */
static void answered(fy_astream_t *s)
{
    s->reused = false;
    fy_buf_free(&s->replay);
}

static void on_connect_timeout(fy_ev_t *ev, fy_timer_t *t)
{
    fy_astream_t *s = t->data;
    char why[400];
    if (s->closed || s->connected)
        return;
    snprintf(why, sizeof(why), "dial tcp %s: i/o timeout", s->tc->tn->ups.u[s->up].name);
    attempt_failed(s, why);
}

void fy_astream_close(fy_astream_t *s, uint32_t rst, const char *why)
{
    fy_tconn_t *tc = s->tc;
    fy_atunnel_t *tn = tc->tn;
    fy_agent_t *a = tn->agent;

    if (s->closed)
        return;
    s->closed = true;
    fy_timer_stop(a->ev, &s->timer);
    if (s->io.fd >= 0) {
        fy_io_del(a->ev, &s->io);
        close(s->io.fd);
        s->io.fd = -1;
    }
    if (rst != 0) {
        (void)fy_tun_send_u32(&tc->tun, FY_MUX_RST, s->id, rst, why);
        if (rst == FY_MUX_RST_REFUSED)
            fy_alog(FY_AL_WARN, "failed to dial the local service", "obj", "tunnels", "name", tn->name,
                    "err", why, NULL);
    }
    /* Bytes we will never write still count against the connection window. */
    if (s->owed > 0)
        fy_tun_consumed(&tc->tun, 0, NULL, (size_t)s->owed);
    s->owed = 0;
    tn->streams_open--;
    fy_sample_add(&tn->d_conns, (double)(fy_ev_now(a->ev) - s->opened_at) * 1e6);
    fy_status_dirty(a);
    fy_tconn_stream_gone(tc, s);
    fy_task_queue(a->ev, &s->free_task);
}

/* The relay ended the stream between messages (RST idle): a clean service
 * connection goes to the upstream's idle pool instead of being closed. */
void fy_astream_idle(fy_astream_t *s)
{
    fy_upstream_t *u;

    if (s->closed)
        return;
    if (s->connected && s->up >= 0 && !s->fin_rx && !s->fin_tx && !s->shut_wr && !s->blocked
        && fy_buf_len(&s->out) == 0 && fy_buf_len(&s->raw) == 0 && piped(s) == 0
        && (!s->rewrite || s->rw.state == FY_RW_HEAD)) {
        u = &s->tc->tn->ups.u[s->up];
        fy_upstream_keep_idle(u, &s->io);
        s->io.fd = -1;
    }
    fy_astream_close(s, 0, NULL);
}

static void free_task(fy_ev_t *ev, fy_task_t *t)
{
    fy_astream_t *s = t->data;
    fy_pipe_put(s->pipe);
    fy_buf_free(&s->out);
    fy_buf_free(&s->raw);
    fy_buf_free(&s->replay);
    free(s);
}

static void maybe_done(fy_astream_t *s)
{
    if (s->fin_rx && s->fin_tx && fy_buf_len(&s->out) == 0 && piped(s) == 0)
        fy_astream_close(s, 0, NULL);
}

/* Return the credit of relay bytes no longer held (in raw or out). */
static void give_credit(fy_astream_t *s)
{
    uint64_t held = fy_buf_len(&s->out) + fy_buf_len(&s->raw);
    if (s->owed > held) {
        uint64_t n = s->owed - held;
        s->owed -= n;
        fy_tun_consumed(&s->tc->tun, s->id, &s->credit, (size_t)n);
    }
}

static void saw_requests(fy_astream_t *s, unsigned heads)
{
    fy_atunnel_t *tn = s->tc->tn;
    if (heads == 0)
        return;
    fy_meter_mark(&tn->m_http, heads);
    if (s->req_at == 0)
        s->req_at = fy_ev_now(tn->agent->ev);
    fy_status_dirty(tn->agent);
}

static const char *rewrite_host(const fy_astream_t *s)
{
    const fy_atunnel_t *tn = s->tc->tn;
    return tn->hh_mode == FY_HH_VALUE ? tn->hh_value : tn->ups.u[s->up].host;
}

/* Rewrite mode: frame what raw holds into out. FY_ERR closes the stream. */
static int pump(fy_astream_t *s)
{
    unsigned heads = 0;
    if (fy_rw_pump(&s->rw, &s->raw, &s->out, OUT_MAX, rewrite_host(s), &heads) != FY_OK) {
        fy_astream_close(s, FY_MUX_RST_PROTOCOL, "the agent could not frame the request to rewrite its Host");
        return FY_ERR;
    }
    saw_requests(s, heads);
    return FY_OK;
}

/* Write buffered bytes to the service and return their credit. */
static void flush_out(fy_astream_t *s)
{
    if (s->pipe != NULL) {   /* the pipe's bytes go before out's */
        ssize_t n = fy_pipe_flush(&s->pipe, s->io.fd);
        if (n < 0) {
            fy_astream_close(s, FY_MUX_RST_CANCEL, "write to the service failed");
            return;
        }
        if (n > 0)
            s->sent_any = true;
        if (s->pipe != NULL)
            return;
    }
    for (;;) {
        ssize_t n;
        if (s->rewrite && fy_buf_len(&s->raw) > 0 && fy_buf_len(&s->out) < OUT_MAX && pump(s) != FY_OK)
            return;
        if (fy_buf_len(&s->out) == 0)
            break;
        n = write(s->io.fd, fy_buf_data(&s->out), fy_buf_len(&s->out));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && !retry_fresh(s))
                fy_astream_close(s, FY_MUX_RST_CANCEL, "write to the service failed");
            return;
        }
        s->sent_any = true;
        fy_buf_consume(&s->out, (size_t)n);
    }
    if (s->closed)
        return;
    give_credit(s);
    fy_buf_release_if_empty(&s->out);
    fy_buf_release_if_empty(&s->raw);
    if (s->fin_rx && !s->shut_wr && fy_buf_len(&s->out) == 0 && piped(s) == 0) {
        shutdown(s->io.fd, SHUT_WR);
        s->shut_wr = true;
    }
    maybe_done(s);
}

void fy_astream_on_data(fy_astream_t *s, const uint8_t *p, size_t n)
{
    if (fy_mux_credit_received(&s->credit, (uint32_t)n) != FY_OK || s->fin_rx) {
        fy_tun_consumed(&s->tc->tun, 0, NULL, n);
        fy_astream_close(s, FY_MUX_RST_FLOW, "data past the stream window");
        return;
    }
    s->owed += n;
    if (s->reused && !s->replay_lost) {
        if (fy_buf_len(&s->replay) + n > REPLAY_MAX || fy_buf_append(&s->replay, p, n, REPLAY_MAX) != FY_OK) {
            s->replay_lost = true;
            fy_buf_free(&s->replay);
        }
    }
    if (s->rewrite) {
        if (fy_buf_append(&s->raw, p, n, s->credit.initial) != FY_OK) {
            fy_astream_close(s, FY_MUX_RST_INTERNAL, "out of memory");
            return;
        }
        if (s->connected)
            flush_out(s);
        if (!s->closed)
            update(s);
        return;
    }
    /* The relay marks each frame that begins with a request head: counting
     * requests costs no parsing when the Host is left alone. */
    if (s->tc->tun.data_flags & FY_MUX_F_HEAD)
        saw_requests(s, 1);
    if (s->connected && fy_buf_len(&s->out) == 0 && piped(s) == 0) {
        ssize_t w = write(s->io.fd, p, n);
        if (w < 0 && errno != EAGAIN && errno != EINTR) {
            if (!retry_fresh(s))
                fy_astream_close(s, FY_MUX_RST_CANCEL, "write to the service failed");
            return;
        }
        if (w > 0) {
            s->sent_any = true;
            p += w;
            n -= (size_t)w;
        }
    }
    if (n > 0 && fy_buf_append(&s->out, p, n, s->credit.initial) != FY_OK) {
        fy_astream_close(s, FY_MUX_RST_INTERNAL, "out of memory");
        return;
    }
    give_credit(s);
    update(s);
}

/*
 * The tunnel may splice this stream's bytes into our pipe when they go to
 * the service as they are: connected, no Host rewrite, no copy kept for a
 * replay, not the first slice of a frame that starts a request (counted in
 * on_data), nothing waiting in out. Within the stream credit, so a relay
 * over its window is caught by on_data.
 */
fy_pipe_t *fy_astream_splice_pipe(fy_astream_t *s, uint8_t flags, size_t *max)
{
    if (s->closed || !s->connected || s->rewrite || s->fin_rx || (s->reused && !s->replay_lost)
        || (flags & FY_MUX_F_HEAD) || fy_buf_len(&s->out) > 0 || s->credit.recv <= 0)
        return NULL;
    return fy_pipe_offer(&s->pipe, max, (uint64_t)s->credit.recv);
}

void fy_astream_on_spliced(fy_astream_t *s, size_t n)
{
    if (fy_mux_credit_received(&s->credit, (uint32_t)n) != FY_OK)
        fy_assert(!"spliced past the stream window");   /* splice_pipe took no more than the credit */
    fy_tun_consumed(&s->tc->tun, s->id, &s->credit, n);
    flush_out(s);
    if (!s->closed)
        update(s);
}

void fy_astream_on_fin(fy_astream_t *s)
{
    s->fin_rx = true;
    if (s->connected)
        flush_out(s);
}

void fy_astream_on_window(fy_astream_t *s, uint32_t inc)
{
    if (fy_mux_credit_granted(&s->credit, inc) != FY_OK) {
        fy_astream_close(s, FY_MUX_RST_FLOW, "bad window update");
        return;
    }
    fy_astream_on_credit(s);
}

void fy_astream_on_credit(fy_astream_t *s)
{
    if (s->blocked && !s->closed) {
        s->blocked = false;
        update(s);
    }
}

/* Read what the service wrote straight into DATA frames, within credit. */
static void read_service(fy_astream_t *s)
{
    fy_tun_t *t = &s->tc->tun;
    int i;

    for (i = 0; i < READS_PER_WAKEUP && !s->closed && !s->fin_tx; i++) {
        size_t room = fy_tun_data_room(t, &s->credit), got;
        uint8_t *dst;
        ssize_t n;

        if (room == 0) {
            s->blocked = true;
            return;
        }
        if ((dst = fy_tun_data_reserve(t, room, &got)) == NULL) {
            fy_astream_close(s, FY_MUX_RST_INTERNAL, "out of memory");
            return;
        }
        n = read(s->io.fd, dst, got);
        if (n < 0) {
            fy_tun_data_commit(t, s->id, &s->credit, 0);
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && !retry_fresh(s))
                fy_astream_close(s, FY_MUX_RST_CANCEL, "read from the service failed");
            return;
        }
        if (n == 0) {
            fy_tun_data_commit(t, s->id, &s->credit, 0);
            if (retry_fresh(s))
                return;
            s->fin_tx = true;
            (void)fy_tun_send(t, FY_MUX_FIN, s->id, NULL, 0);
            maybe_done(s);
            return;
        }
        if (s->reused)
            answered(s);
        if (s->req_at != 0) {
            fy_atunnel_t *tn = s->tc->tn;
            fy_sample_add(&tn->d_http, (double)(fy_ev_now(tn->agent->ev) - s->req_at) * 1e6);
            s->req_at = 0;
        }
        fy_tun_data_commit(t, s->id, &s->credit, (size_t)n);
        if ((size_t)n < got)
            return;
    }
}

static void update(fy_astream_t *s)
{
    uint32_t want = 0;
    if (s->closed || !s->connected)
        return;
    if (!s->fin_tx && !s->blocked)
        want |= EPOLLIN;
    if (fy_buf_len(&s->out) > 0 || piped(s) > 0)
        want |= EPOLLOUT;
    if (fy_io_set(s->tc->tn->agent->ev, &s->io, want) != FY_OK)
        fy_astream_close(s, FY_MUX_RST_INTERNAL, "epoll failed");
}

static void on_io(fy_ev_t *ev, fy_io_t *io, uint32_t events)
{
    fy_astream_t *s = io->data;
    int err;

    if (s->closed)
        return;
    if (!s->connected) {
        if ((err = fy_net_connect_result(io->fd)) != 0) {
            char why[400];
            snprintf(why, sizeof(why), "dial tcp %s: %s", s->tc->tn->ups.u[s->up].name, strerror(err));
            attempt_failed(s, why);
            return;
        }
        fy_timer_stop(ev, &s->timer);
        fy_upset_success(&s->tc->tn->ups, s->up);
        s->connected = true;
        flush_out(s);
        update(s);
        return;
    }
    if (events & EPOLLOUT)
        flush_out(s);
    if (!s->closed && s->connected && (events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
        read_service(s);
    if (!s->connected)
        return;   /* a kept connection failed: a fresh one is being dialed */
    if (!s->closed && (events & EPOLLERR)) {
        if (!retry_fresh(s))
            fy_astream_close(s, FY_MUX_RST_CANCEL, "the service reset the connection");
        return;
    }
    update(s);
}
