/*
 * stream.c: one stream on the agent: a non-blocking connection to the
 * local service, bytes spliced both ways. What the service writes is read
 * straight into the tunnel's output (no copy) as far as the relay's credit
 * allows; what the relay sends is written on, and buffered only up to the
 * stream window we granted.
 */
#include "agent/agent.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define READS_PER_WAKEUP 4

static void on_io(fy_ev_t *ev, fy_io_t *io, uint32_t events);
static void free_task(fy_ev_t *ev, fy_task_t *t);
static void update(fy_astream_t *s);

void fy_astream_open(fy_tconn_t *tc, uint32_t id)
{
    fy_atunnel_t *tn = tc->tn;
    fy_agent_t *a = tn->agent;
    fy_astream_t *s = calloc(1, sizeof(*s));
    int fd;

    if (s == NULL) {
        (void)fy_tun_send_u32(&tc->tun, FY_MUX_RST, id, FY_MUX_RST_INTERNAL, "out of memory");
        return;
    }
    s->tc = tc;
    s->id = id;
    s->io.fd = -1;
    s->io.cb = on_io;
    s->io.data = s;
    s->free_task.cb = free_task;
    s->free_task.data = s;
    fy_mux_credit_init(&s->credit, FY_MUX_STREAM_WINDOW);
    if (fy__tconn_add_stream(tc, s) != FY_OK) {
        free(s);
        (void)fy_tun_send_u32(&tc->tun, FY_MUX_RST, id, FY_MUX_RST_INTERNAL, "out of memory");
        return;
    }
    if ((fd = fy_net_connect((struct sockaddr *)&tn->up, tn->uplen)) < 0) {
        char why[400];
        snprintf(why, sizeof(why), "dial tcp %s: %s", tn->up_name, strerror(errno));
        fy_astream_close(s, FY_MUX_RST_REFUSED, why);
        return;
    }
    s->io.fd = fd;
    if (fy_io_set(a->ev, &s->io, EPOLLOUT) != FY_OK)
        fy_astream_close(s, FY_MUX_RST_INTERNAL, "epoll failed");
}

void fy_astream_close(fy_astream_t *s, uint32_t rst, const char *why)
{
    fy_tconn_t *tc = s->tc;
    fy_agent_t *a = tc->tn->agent;
    size_t unsent = fy_buf_len(&s->out);

    if (s->closed)
        return;
    s->closed = true;
    if (s->io.fd >= 0) {
        fy_io_del(a->ev, &s->io);
        close(s->io.fd);
        s->io.fd = -1;
    }
    if (rst != 0) {
        (void)fy_tun_send_u32(&tc->tun, FY_MUX_RST, s->id, rst, why);
        if (rst == FY_MUX_RST_REFUSED)
            fy_alog(FY_AL_WARN, "failed to dial the local service", "obj", "tunnels", "name", tc->tn->name,
                    "err", why, NULL);
    }
    /* Bytes we will never write still count against the connection window. */
    if (unsent > 0)
        fy_tun_consumed(&tc->tun, 0, NULL, unsent);
    fy_tconn_stream_gone(tc, s);
    fy_task_queue(a->ev, &s->free_task);
}

static void free_task(fy_ev_t *ev, fy_task_t *t)
{
    fy_astream_t *s = t->data;
    fy_buf_free(&s->out);
    free(s);
}

static void maybe_done(fy_astream_t *s)
{
    if (s->fin_rx && s->fin_tx && fy_buf_len(&s->out) == 0)
        fy_astream_close(s, 0, NULL);
}

/* Write buffered bytes to the service and return their credit. */
static void flush_out(fy_astream_t *s)
{
    while (!s->closed && fy_buf_len(&s->out) > 0) {
        ssize_t n = write(s->io.fd, fy_buf_data(&s->out), fy_buf_len(&s->out));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN)
                fy_astream_close(s, FY_MUX_RST_CANCEL, "write to the service failed");
            return;
        }
        fy_buf_consume(&s->out, (size_t)n);
        fy_tun_consumed(&s->tc->tun, s->id, &s->credit, (size_t)n);
    }
    if (s->closed)
        return;
    fy_buf_release_if_empty(&s->out);
    if (s->fin_rx && !s->shut_wr) {
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
    if (s->connected && fy_buf_len(&s->out) == 0) {
        ssize_t w = write(s->io.fd, p, n);
        if (w < 0 && errno != EAGAIN && errno != EINTR) {
            fy_tun_consumed(&s->tc->tun, 0, NULL, n);
            fy_astream_close(s, FY_MUX_RST_CANCEL, "write to the service failed");
            return;
        }
        if (w > 0) {
            fy_tun_consumed(&s->tc->tun, s->id, &s->credit, (size_t)w);
            p += w;
            n -= (size_t)w;
        }
    }
    if (n > 0 && fy_buf_append(&s->out, p, n, FY_MUX_STREAM_WINDOW) != FY_OK) {
        fy_tun_consumed(&s->tc->tun, 0, NULL, n);
        fy_astream_close(s, FY_MUX_RST_INTERNAL, "out of memory");
        return;
    }
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
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN)
                fy_astream_close(s, FY_MUX_RST_CANCEL, "read from the service failed");
            return;
        }
        if (n == 0) {
            s->fin_tx = true;
            (void)fy_tun_send(t, FY_MUX_FIN, s->id, NULL, 0);
            maybe_done(s);
            return;
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
    if (fy_buf_len(&s->out) > 0)
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
            snprintf(why, sizeof(why), "dial tcp %s: %s", s->tc->tn->up_name, strerror(err));
            fy_astream_close(s, FY_MUX_RST_REFUSED, why);
            return;
        }
        s->connected = true;
        flush_out(s);
        update(s);
        return;
    }
    if (events & EPOLLOUT)
        flush_out(s);
    if (!s->closed && (events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
        read_service(s);
    if (!s->closed && (events & EPOLLERR)) {
        fy_astream_close(s, FY_MUX_RST_CANCEL, "the service reset the connection");
        return;
    }
    update(s);
}
