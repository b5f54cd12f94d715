/*
 * tls.c: HTTPS in a worker (DESIGN.md "The handoff").
 *
 *  1. The hello stage: a connection accepted on a listen_tls socket is
 *     peeked (MSG_PEEK, edge-triggered: a partial ClientHello does not
 *     spin) until its ClientHello is whole, within header_timeout. Its SNI
 *     `{id}.{domain}` names a tunnel; if another worker holds it, the raw
 *     socket moves there before any handshake (FY_HANDOFF_F_TLS_RAW).
 *  2. Termination, here or after that move: a TLS pump (common/tls) does
 *     the handshake and carries the session to a socketpair whose other
 *     end becomes an ordinary client connection (client.c), marked tls.
 *     When a request names its tunnel only inside (path, header, query),
 *     that plaintext end moves like any connection and the pump stays:
 *     the owner reads and writes plaintext, this worker does the TLS.
 *
 * Garbage, a ClientHello over 16 KiB and a slowloris hello are closed
 * (the last at header_timeout) without a byte of TLS spent on them.
 */
#include "worker/worker.h"
#include "log/log.h"
#include "tls/hello.h"
#include "tls/tls.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

typedef struct hello_s {
    fy_io_t                 io;
    fy_timer_t              timer;
    fy_task_t               free_task;
    fy_worker_t            *w;
    int                     port;
    struct sockaddr_storage peer;
} hello_t;

static void hello_free(fy_ev_t *ev, fy_task_t *t)
{
    free(t->data);
}

/* The hello stage is over: the socket is closed, or passed on (fd -1). */
static void hello_end(hello_t *h, bool close_fd)
{
    fy_worker_t *w = h->w;

    fy_timer_stop(w->ev, &h->timer);
    fy_io_del(w->ev, &h->io);
    if (close_fd)
        close(h->io.fd);
    h->io.fd = -1;
    w->nhellos--;
    fy_task_queue(w->ev, &h->free_task);
}

void fy_tls_terminate(fy_worker_t *w, int fd, int port, const struct sockaddr_storage *peer, const char *sni_id)
{
    fy_handoff_hdr_t h;
    SSL *ssl;
    int app;

    if (w->tls_ctx == NULL || (ssl = SSL_new(w->tls_ctx)) == NULL) {
        close(fd);
        return;
    }
    SSL_set_accept_state(ssl);
    if (fy_tls_pump_start(w->ev, ssl, fd, &app, w->conf->limits.header_timeout, w->conf->limits.idle_timeout,
                          NULL, NULL) == NULL) {
        fy_log(FY_LOG_WARN, errno, "worker %d: TLS session", w->index);
        return;
    }
    memset(&h, 0, sizeof(h));
    h.magic = FY_HANDOFF_MAGIC;
    h.port = (uint16_t)port;
    h.flags = FY_HANDOFF_F_TLS;
    h.peer = *peer;
    snprintf(h.sni_id, sizeof(h.sni_id), "%s", sni_id);
    fy_client_adopt(w, app, &h, (const uint8_t *)"");
}

/* The ClientHello is whole: route it on its SNI. */
static void route_hello(hello_t *h, const char *sni)
{
    fy_worker_t *w = h->w;
    char id[FY_ID_MAX + 1] = "";
    fy_tunnel_t *t;
    int target = -1, fd = h->io.fd;

    if (sni[0] != '\0' && fy_route_host_id(w, sni, strlen(sni), id) != FY_OK)
        id[0] = '\0';
    if (id[0] != '\0' && ((t = fy_tunnel_find(w, id)) == NULL || fy_agentconn_pick(t) == NULL))
        target = fy_worker_owner_elsewhere(w, id);
    if (target >= 0) {
        fy_handoff_hdr_t m;
        memset(&m, 0, sizeof(m));
        m.magic = FY_HANDOFF_MAGIC;
        m.hops = 1;
        m.port = (uint16_t)h->port;
        m.flags = FY_HANDOFF_F_TLS_RAW;
        m.peer = h->peer;
        snprintf(m.sni_id, sizeof(m.sni_id), "%s", id);
        if (fy_handoff_send(w->mailbox_send[target], &m, NULL, fd) == FY_OK) {
            atomic_fetch_add_explicit(&w->rec->handoffs_sent, 1, memory_order_relaxed);
            hello_end(h, true);   /* the owner has it: close ours */
            return;
        }
        /* Its mailbox is full: terminate here; the plaintext can still move. */
    }
    hello_end(h, false);
    fy_tls_terminate(w, fd, h->port, &h->peer, id);
}

static void on_hello(fy_ev_t *ev, fy_io_t *io, uint32_t events)
{
    hello_t *h = io->data;
    uint8_t buf[FY_TLS_HELLO_MAX + 5];
    char sni[FY_TLS_SNI_MAX + 1];
    const char *why = NULL;
    ssize_t n;
    int rc;

    if (io->fd < 0)
        return;
    n = recv(io->fd, buf, sizeof(buf), MSG_PEEK);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        hello_end(h, true);
        return;
    }
    rc = fy_tls_hello_sni(buf, (size_t)n, sni, sizeof(sni), &why);
    if (rc == FY_AGAIN && !(events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)))
        return;   /* edge-triggered: woken again when more arrives */
    if (rc != FY_OK) {
        char addr[FY_ADDRSTRLEN];
        fy_net_format((const struct sockaddr *)&h->peer, addr);
        fy_log_debug("worker %d: %s: not a TLS ClientHello (%s); closed", h->w->index, addr,
                     why ? why : "closed before it was whole");
        fy_worker_count_error(h->w, fy_error_index("tls_hello"));
        hello_end(h, true);
        return;
    }
    route_hello(h, sni);
}

static void on_hello_timer(fy_ev_t *ev, fy_timer_t *t)
{
    hello_t *h = t->data;
    fy_worker_count_error(h->w, fy_error_index("tls_hello"));
    hello_end(h, true);
}

void fy_tls_accept(fy_worker_t *w, fy_listener_t *l, int fd, const struct sockaddr_storage *peer)
{
    hello_t *h;

    if (w->tls_ctx == NULL || (h = calloc(1, sizeof(*h))) == NULL) {
        close(fd);
        return;
    }
    h->w = w;
    h->port = l->port;
    h->peer = *peer;
    h->io.fd = fd;
    h->io.cb = on_hello;
    h->io.data = h;
    h->timer.cb = on_hello_timer;
    h->timer.data = h;
    h->free_task.cb = hello_free;
    h->free_task.data = h;
    w->nhellos++;
    if (fy_io_set(w->ev, &h->io, EPOLLIN | EPOLLRDHUP | EPOLLET) != FY_OK) {
        hello_end(h, true);
        return;
    }
    fy_timer_arm(w->ev, &h->timer, w->conf->limits.header_timeout);
    on_hello(w->ev, &h->io, EPOLLIN);   /* the hello may be here already */
}

void fy_tls_adopt_raw(fy_worker_t *w, int fd, const fy_handoff_hdr_t *h)
{
    char id[FY_ID_MAX + 1];
    snprintf(id, sizeof(id), "%.*s", (int)strnlen(h->sni_id, sizeof(h->sni_id)), h->sni_id);
    fy_tls_terminate(w, fd, h->port, &h->peer, id);
}

int fy_tls_load(fy_worker_t *w, const fy_conf_t *conf)
{
    char err[512];
    SSL_CTX *ctx;

    if (conf->nlisten_tls == 0)
        return FY_OK;
    if ((ctx = fy_tls_server_ctx(conf->tls_cert, conf->tls_key, conf->tls_ocsp, w->ticket_keys, err,
                                 sizeof(err))) == NULL) {
        fy_log_err("worker %d: %s", w->index, err);
        return FY_ERR;
    }
    if (w->tls_ctx != NULL)
        SSL_CTX_free(w->tls_ctx);   /* sessions in progress hold their own reference */
    w->tls_ctx = ctx;
    return FY_OK;
}

int fy_tls_check(const fy_conf_t *conf, char *err, size_t errlen)
{
    uint8_t keys[FY_TLS_TICKET_KEYS] = {0};
    SSL_CTX *ctx;

    if (conf->nlisten_tls == 0)
        return FY_OK;
    if ((ctx = fy_tls_server_ctx(conf->tls_cert, conf->tls_key, conf->tls_ocsp, keys, err, errlen)) == NULL)
        return FY_ERR;
    SSL_CTX_free(ctx);
    return FY_OK;
}
