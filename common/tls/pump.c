/*
 * pump.c: one TLS session carried to and from a socketpair (see tls.h).
 *
 * Two buffers of one record each: `down` holds plaintext read from the
 * session and not yet taken by the pair, `up` plaintext read from the pair
 * and not yet taken by the session. A side is read only when its buffer is
 * empty, so a peer that stops reading stops its counterpart (flow control),
 * and the pump never holds more than the two buffers.
 *
 * Ending: the session's close (close_notify or EOF) half-closes the pair;
 * the pair's EOF sends close_notify and half-closes the socket, which then
 * lingers (reading and dropping) until the peer closes or LINGER_MS pass,
 * so a response is never cut by a reset.
 */
#include "tls/tls.h"

#include <openssl/err.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define LINGER_MS 5000

static fy_tls_pump_t *all;    /* every live pump of the process */

struct fy_tls_pump_s {
    fy_tls_pump_t *next, *prev;
    fy_io_t        net;          /* the TLS socket */
    fy_io_t        app;          /* our end of the pair */
    fy_timer_t     timer;
    fy_task_t      free_task;
    fy_ev_t       *ev;
    SSL           *ssl;
    uint8_t       *down, *up;    /* FY_TLS_PUMP_BUF each, one allocation */
    size_t         down_off, down_len, up_off, up_len;
    uint64_t       idle_ms, last_active, deadline;
    fy_tls_pump_cb on_handshake;
    void          *data;
    bool           handshaken, want_read, want_write;
    bool           net_eof, app_eof, shut_sent, closed;
};

static void run(fy_tls_pump_t *p);

static void free_task(fy_ev_t *ev, fy_task_t *t)
{
    fy_tls_pump_t *p = t->data;
    free(p->down);
    free(p);
}

static void pump_close(fy_tls_pump_t *p, const char *err)
{
    if (p->closed)
        return;
    p->closed = true;
    if (!p->handshaken && p->on_handshake != NULL)
        p->on_handshake(p->data, err != NULL ? err : "connection closed during the TLS handshake");
    fy_timer_stop(p->ev, &p->timer);
    fy_io_del(p->ev, &p->net);
    fy_io_del(p->ev, &p->app);
    close(p->net.fd);
    close(p->app.fd);
    p->net.fd = p->app.fd = -1;
    SSL_free(p->ssl);
    p->ssl = NULL;
    if (p->prev != NULL)
        p->prev->next = p->next;
    else
        all = p->next;
    if (p->next != NULL)
        p->next->prev = p->prev;
    fy_task_queue(p->ev, &p->free_task);
}

static void fail(fy_tls_pump_t *p)
{
    char why[256];
    fy_tls_error(p->ssl, why, sizeof(why));
    pump_close(p, why);
}

/* After SSL_* returned r <= 0: FY_AGAIN (wants the socket), FY_EOF (the
 * peer closed), or FY_ERR. */
static int ssl_status(fy_tls_pump_t *p, int r)
{
    switch (SSL_get_error(p->ssl, r)) {
    case SSL_ERROR_WANT_READ:
        p->want_read = true;
        return FY_AGAIN;
    case SSL_ERROR_WANT_WRITE:
        p->want_write = true;
        return FY_AGAIN;
    case SSL_ERROR_ZERO_RETURN:
        return FY_EOF;
    case SSL_ERROR_SYSCALL:
        /* EOF without close_notify: for HTTP/1.1 the framing says whether
         * anything was cut, as it does over plain TCP. */
        if (ERR_peek_error() == 0 && (r == 0 || errno == 0 || errno == ECONNRESET || errno == EPIPE))
            return FY_EOF;
        return FY_ERR;
    default:
        return FY_ERR;
    }
}

static int handshake(fy_tls_pump_t *p)
{
    int r = SSL_do_handshake(p->ssl), st;

    if (r == 1) {
        p->handshaken = true;
        p->last_active = fy_ev_now(p->ev);
        if (p->on_handshake != NULL)
            p->on_handshake(p->data, NULL);
        p->on_handshake = NULL;
        return FY_OK;
    }
    if ((st = ssl_status(p, r)) == FY_AGAIN)
        return FY_AGAIN;
    fail(p);
    return FY_ERR;
}

/* Session -> pair. true if a byte moved or a side ended. */
static bool move_down(fy_tls_pump_t *p)
{
    bool moved = false;
    ssize_t n;

    if (p->down_len == 0 && !p->net_eof) {
        int r = SSL_read(p->ssl, p->down, FY_TLS_PUMP_BUF), st;
        if (r > 0) {
            p->down_off = 0;
            p->down_len = (size_t)r;
            moved = true;
        } else if ((st = ssl_status(p, r)) == FY_EOF) {
            p->net_eof = true;
            shutdown(p->app.fd, SHUT_WR);
            moved = true;
        } else if (st == FY_ERR) {
            if (p->shut_sent) {          /* lingering: whatever it was, we are done */
                pump_close(p, NULL);
                return false;
            }
            fail(p);
            return false;
        }
    }
    if (p->down_len > p->down_off) {
        if (p->shut_sent) {              /* nobody reads the pair any more */
            p->down_len = p->down_off = 0;
            return true;
        }
        n = write(p->app.fd, p->down + p->down_off, p->down_len - p->down_off);
        if (n > 0) {
            p->down_off += (size_t)n;
            if (p->down_off == p->down_len)
                p->down_off = p->down_len = 0;
            moved = true;
        } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
            pump_close(p, NULL);         /* the plaintext side is gone */
            return false;
        }
    }
    return moved;
}

/* Pair -> session. */
static bool move_up(fy_tls_pump_t *p)
{
    bool moved = false;
    ssize_t n;

    if (p->up_len == 0 && !p->app_eof) {
        n = read(p->app.fd, p->up, FY_TLS_PUMP_BUF);
        if (n > 0) {
            p->up_off = 0;
            p->up_len = (size_t)n;
            moved = true;
        } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
            p->app_eof = true;
            moved = true;
        }
    }
    if (p->up_len > p->up_off) {
        int r = SSL_write(p->ssl, p->up + p->up_off, (int)(p->up_len - p->up_off));
        if (r > 0) {
            p->up_off += (size_t)r;
            if (p->up_off == p->up_len)
                p->up_off = p->up_len = 0;
            moved = true;
        } else if (ssl_status(p, r) != FY_AGAIN) {
            fail(p);
            return false;
        }
    }
    if (p->app_eof && p->up_len == 0 && !p->shut_sent) {
        (void)SSL_shutdown(p->ssl);      /* close_notify; its answer is not awaited */
        shutdown(p->net.fd, SHUT_WR);
        p->shut_sent = true;
        p->deadline = fy_ev_now(p->ev) + LINGER_MS;
        fy_timer_arm_at(p->ev, &p->timer, p->deadline);
        moved = true;
    }
    return moved;
}

static void run(fy_tls_pump_t *p)
{
    uint32_t net_ev = 0, app_ev = 0;
    bool moved = true;

    /* SSL_get_error and the EOF test read the thread's error queue: it must
     * hold nothing from another session. */
    ERR_clear_error();
    p->want_read = p->want_write = false;
    if (!p->handshaken && handshake(p) != FY_OK) {
        if (p->closed)
            return;
        goto interest;
    }
    while (moved && !p->closed) {
        p->want_read = p->want_write = false;
        moved = move_down(p);
        if (!p->closed)
            moved = move_up(p) || moved;
        if (moved)
            p->last_active = fy_ev_now(p->ev);
    }
    if (p->closed)
        return;
    if (p->net_eof && (p->shut_sent || (p->app_eof && p->up_len == 0 && p->down_len == 0))) {
        pump_close(p, NULL);
        return;
    }
interest:
    if (p->want_write)
        net_ev |= EPOLLOUT;
    if (!p->handshaken ? p->want_read : (!p->net_eof && p->down_len == 0))
        net_ev |= EPOLLIN;
    if (p->handshaken && !p->app_eof && p->up_len == 0)
        app_ev |= EPOLLIN;
    if (p->down_len > 0 && !p->shut_sent)
        app_ev |= EPOLLOUT;
    if (fy_io_set(p->ev, &p->net, net_ev) != FY_OK || fy_io_set(p->ev, &p->app, app_ev) != FY_OK)
        pump_close(p, strerror(errno));
}

static void on_io(fy_ev_t *ev, fy_io_t *io, uint32_t events)
{
    fy_tls_pump_t *p = io->data;
    if (!p->closed)
        run(p);
}

static void on_timer(fy_ev_t *ev, fy_timer_t *t)
{
    fy_tls_pump_t *p = t->data;
    uint64_t now = fy_ev_now(ev);

    if (!p->handshaken) {
        pump_close(p, "the TLS handshake did not finish in time");
        return;
    }
    if (p->shut_sent && now >= p->deadline) {
        pump_close(p, NULL);
        return;
    }
    if (now >= p->last_active + p->idle_ms) {
        pump_close(p, NULL);
        return;
    }
    fy_timer_arm_at(ev, t, p->shut_sent ? FY_MIN(p->deadline, p->last_active + p->idle_ms)
                                        : p->last_active + p->idle_ms);
}

fy_tls_pump_t *fy_tls_pump_start(fy_ev_t *ev, SSL *ssl, int net_fd, int *app_fd, uint64_t handshake_ms,
                                 uint64_t idle_ms, fy_tls_pump_cb on_handshake, void *data)
{
    fy_tls_pump_t *p = calloc(1, sizeof(*p));
    int pair[2] = {-1, -1};

    if (p == NULL || (p->down = malloc(2 * FY_TLS_PUMP_BUF)) == NULL
        || socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, pair) != 0
        || SSL_set_fd(ssl, net_fd) != 1)
        goto fail;
    p->up = p->down + FY_TLS_PUMP_BUF;
    p->ev = ev;
    p->ssl = ssl;
    p->net.fd = net_fd;
    p->net.cb = on_io;
    p->net.data = p;
    p->app.fd = pair[0];
    p->app.cb = on_io;
    p->app.data = p;
    p->timer.cb = on_timer;
    p->timer.data = p;
    p->free_task.cb = free_task;
    p->free_task.data = p;
    p->idle_ms = idle_ms > 0 ? idle_ms : 75000;
    p->on_handshake = on_handshake;
    p->data = data;
    p->last_active = fy_ev_now(ev);
    /* The first readiness starts the handshake: never a callback from
     * inside this call. */
    if (fy_io_set(ev, &p->net, EPOLLIN | EPOLLOUT) != FY_OK) {
        p->net.fd = -1;
        goto fail;
    }
    p->next = all;
    if (all != NULL)
        all->prev = p;
    all = p;
    *app_fd = pair[1];
    fy_timer_arm(ev, &p->timer, handshake_ms > 0 ? handshake_ms : 10000);
    return p;
fail:
    if (pair[0] >= 0) {
        close(pair[0]);
        close(pair[1]);
    }
    if (p != NULL)
        free(p->down);
    free(p);
    SSL_free(ssl);
    close(net_fd);
    return NULL;
}

void fy_tls_pump_close_all(void)
{
    while (all != NULL)
        pump_close(all, "the process is exiting");
}

unsigned fy_tls_pumps_busy(uint64_t now, uint64_t quiet_ms)
{
    unsigned n = 0;
    for (fy_tls_pump_t *p = all; p != NULL; p = p->next)
        n += p->up_len > 0 || p->down_len > 0 || p->want_write || (p->app_eof && !p->shut_sent)
             || now < p->last_active + quiet_ms;
    return n;
}

void fy_tls_pump_forget(fy_tls_pump_t *p)
{
    p->on_handshake = NULL;
}
