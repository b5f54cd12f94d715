/*
 * probe.c: a one-shot HTTP GET on a connection of its own, on the agent's
 * loop: connect, write the request, read the answer's head and a small
 * body, call back, close. Used to ask the relay whether the session can be
 * up (a plain GET {agent_path}) and to probe an unhealthy upstream.
 */
#include "agent/agent.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define PROBE_MAX 8192

static void on_io(fy_ev_t *ev, fy_io_t *io, uint32_t events);
static void on_timeout(fy_ev_t *ev, fy_timer_t *t);

static void drop_pump(fy_probe_t *p)
{
    if (p->pump != NULL)
        fy_tls_pump_forget(p->pump);
    p->pump = NULL;
}

static void finish(fy_probe_t *p, int status, const char *body, size_t blen, const char *err)
{
    drop_pump(p);
    if (p->io.fd >= 0) {
        fy_io_del(p->ev, &p->io);
        close(p->io.fd);
        p->io.fd = -1;
    }
    fy_timer_stop(p->ev, &p->timer);
    p->busy = false;
    /* The callback may start the probe again: the buffer is freed after. */
    if (p->cb != NULL)
        p->cb(p, status, body, blen, err);
    if (!p->busy)
        fy_buf_free(&p->buf);
}

int fy_probe_start(fy_probe_t *p, fy_ev_t *ev, const struct sockaddr *sa, socklen_t len, const char *target,
                   const char *req, size_t reqlen, uint64_t timeout_ms)
{
    int fd;

    if (p->busy)
        fy_probe_cancel(p);
    p->ev = ev;
    p->io.fd = -1;
    p->io.cb = on_io;
    p->io.data = p;
    p->timer.cb = on_timeout;
    p->timer.data = p;
    p->sent = 0;
    p->connected = false;
    p->tls_err[0] = '\0';
    snprintf(p->target, sizeof(p->target), "%s", target);
    fy_buf_free(&p->buf);
    if (fy_buf_append(&p->buf, req, reqlen, PROBE_MAX) != FY_OK) {
        errno = ENOMEM;
        return FY_ERR;
    }
    if ((fd = fy_net_connect(sa, len)) < 0) {
        int e = errno;
        fy_buf_free(&p->buf);
        errno = e;
        return FY_ERR;
    }
    p->io.fd = fd;
    if (fy_io_set(ev, &p->io, EPOLLOUT) != FY_OK) {
        int e = errno;
        close(fd);
        p->io.fd = -1;
        fy_buf_free(&p->buf);
        errno = e;
        return FY_ERR;
    }
    p->busy = true;
    fy_timer_arm(ev, &p->timer, timeout_ms);
    return FY_OK;
}

void fy_probe_cancel(fy_probe_t *p)
{
    if (!p->busy)
        return;
    drop_pump(p);
    if (p->io.fd >= 0) {
        fy_io_del(p->ev, &p->io);
        close(p->io.fd);
        p->io.fd = -1;
    }
    fy_timer_stop(p->ev, &p->timer);
    fy_buf_free(&p->buf);
    p->busy = false;
}

static void on_timeout(fy_ev_t *ev, fy_timer_t *t)
{
    fy_probe_t *p = t->data;
    char err[400];
    snprintf(err, sizeof(err), "%s: no answer in time", p->target);
    finish(p, 0, NULL, 0, err);
}

/* Try to read an answer out of what arrived; eof: nothing more will. */
static void try_answer(fy_probe_t *p, bool eof)
{
    fy_h1_header_t hdrs[64];
    fy_h1_limits_t lim = {FY_NELEM(hdrs), PROBE_MAX};
    fy_h1_response_t r;
    char err[600];
    size_t have;
    int rc = fy_h1_parse_response((const char *)fy_buf_data(&p->buf), fy_buf_len(&p->buf), &r, hdrs, &lim, false);

    if (rc == FY_AGAIN && !eof && fy_buf_len(&p->buf) < PROBE_MAX)
        return;
    if (rc < 0) {
        snprintf(err, sizeof(err), "%s: %s", p->target,
                 p->tls_err[0] ? p->tls_err : rc == FY_AGAIN ? "closed before answering" : "not an HTTP answer");
        finish(p, 0, NULL, 0, err);
        return;
    }
    have = fy_buf_len(&p->buf) - (size_t)rc;
    /* Wait for a small body; a large or endless one is cut short. */
    if (!eof && fy_buf_len(&p->buf) < PROBE_MAX
        && ((r.body == FY_H1_BODY_LENGTH && have < r.content_length) || r.body == FY_H1_BODY_UNTIL_CLOSE))
        return;
    if (r.body == FY_H1_BODY_LENGTH)
        have = FY_MIN(have, (size_t)r.content_length);
    else if (r.body == FY_H1_BODY_NONE || r.body == FY_H1_BODY_CHUNKED)
        have = 0;
    {
        int status = r.status;
        char body[PROBE_MAX];
        memcpy(body, fy_buf_data(&p->buf) + rc, have);
        finish(p, status, body, have, NULL);
    }
}

static void on_tls_handshake(void *data, const char *err)
{
    fy_probe_t *p = data;
    p->pump = NULL;
    if (err != NULL)
        snprintf(p->tls_err, sizeof(p->tls_err), "TLS handshake failed: %s", err);
}

/* Over TLS the request goes into the pump's plaintext end at once: it
 * waits there for the handshake. */
static int start_tls(fy_probe_t *p)
{
    int net = p->io.fd, app;

    fy_io_del(p->ev, &p->io);
    p->io.fd = -1;
    /* The probe's own timeout bounds the handshake. */
    if ((p->pump = fy_tls_pump_connect(p->ev, p->tls_ctx, p->tls_host, net, &app, UINT64_MAX / 2,
                                       on_tls_handshake, p)) == NULL)
        return FY_ERR;
    p->io.fd = app;
    return fy_io_set(p->ev, &p->io, EPOLLOUT);
}

static void on_io(fy_ev_t *ev, fy_io_t *io, uint32_t events)
{
    fy_probe_t *p = io->data;
    char err[400];
    int e;

    if (!p->connected) {
        if ((e = fy_net_connect_result(io->fd)) != 0) {
            snprintf(err, sizeof(err), "dial tcp %s: %s", p->target, strerror(e));
            finish(p, 0, NULL, 0, err);
            return;
        }
        p->connected = true;
        if (p->tls_ctx != NULL && start_tls(p) != FY_OK) {
            snprintf(err, sizeof(err), "%s: could not start TLS", p->target);
            finish(p, 0, NULL, 0, err);
        }
        return;
    }
    if (p->sent != SIZE_MAX) {   /* still writing the request */
        ssize_t n = write(io->fd, fy_buf_data(&p->buf) + p->sent, fy_buf_len(&p->buf) - p->sent);
        if (n < 0 && errno != EAGAIN && errno != EINTR) {
            snprintf(err, sizeof(err), "%s: %s", p->target, strerror(errno));
            finish(p, 0, NULL, 0, err);
            return;
        }
        if (n > 0)
            p->sent += (size_t)n;
        if (p->sent < fy_buf_len(&p->buf))
            return;
        /* The request is out: the buffer now gathers the answer. */
        p->buf.rpos = p->buf.wpos = 0;
        p->sent = SIZE_MAX;
        if (fy_io_set(ev, io, EPOLLIN) != FY_OK) {
            finish(p, 0, NULL, 0, "epoll failed");
            return;
        }
        return;
    }
    for (;;) {
        ssize_t n;
        if (fy_buf_reserve(&p->buf, 2048, PROBE_MAX) != FY_OK) {
            try_answer(p, true);
            return;
        }
        n = read(io->fd, fy_buf_end(&p->buf), fy_buf_room(&p->buf));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                try_answer(p, false);
                return;
            }
            snprintf(err, sizeof(err), "%s: %s", p->target, strerror(errno));
            finish(p, 0, NULL, 0, err);
            return;
        }
        if (n == 0) {
            try_answer(p, true);
            return;
        }
        p->buf.wpos += (size_t)n;
    }
}
