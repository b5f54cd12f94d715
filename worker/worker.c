/*
 * worker.c: a worker process: its loop, the accept path, and signals from
 * the master (QUIT: drain; TERM/INT: exit now).
 */
#include "worker/worker.h"
#include "worker/cluster.h"
#include "log/log.h"

#include <sodium.h>

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <poll.h>
#include <sys/signalfd.h>
#include <unistd.h>

#define ACCEPTS_PER_WAKEUP 64
#define ACCEPT_PAUSE_MS 50
#define DRAIN_CHECK_MS 100
#define TLS_QUIET_MS 1000     /* a TLS session this long without a byte is idle */

/*
 * After a batch of accepts. EPOLLEXCLUSIVE wakes the first waiter in the
 * socket's queue, which would be this worker again and again: going to the
 * back of the queue lets the workers (and, during an upgrade, both
 * generations) take turns. But a connection accepted by a worker that does
 * not hold its tunnel costs a handoff, and the owner does the work anyway:
 * so a worker whose recent connections stayed here (it holds the busy
 * tunnels) keeps its place at the front, and one whose connections nearly
 * all went to other workers stops accepting for ACCEPT_PAUSE_MS (the owner,
 * which never pauses, takes them meanwhile; the backlog holds them if it
 * is busy). The counts decay, so the choice follows the traffic; with
 * tunnels spread over the workers, or nothing routed yet, everyone takes
 * turns as before.
 */
static void take_turns(fy_listener_t *l)
{
    fy_worker_t *w = l->w;
    bool stays = w->accepted_local > w->accepted_moved;
    bool elsewhere = w->accepted_moved >= 8 && w->accepted_moved > 8 * w->accepted_local;

    w->accepted_local /= 2;
    w->accepted_moved /= 2;
    if (stays)
        return;
    fy_io_del(w->ev, &l->io);
    if (elsewhere && !w->draining) {
        l->paused = true;
        if (!fy_timer_armed(&w->accept_timer))
            fy_timer_arm(w->ev, &w->accept_timer, ACCEPT_PAUSE_MS);
        return;
    }
    if (fy_io_set(w->ev, &l->io, EPOLLIN | EPOLLEXCLUSIVE) != FY_OK)
        fy_log(FY_LOG_ERR, errno, "worker %d: listener", w->index);
}

static void on_accept_timer(fy_ev_t *ev, fy_timer_t *t)
{
    fy_worker_t *w = t->data;
    int i;

    for (i = 0; i < w->nlisteners; i++) {
        fy_listener_t *l = &w->listeners[i];
        if (!l->paused)
            continue;
        l->paused = false;
        if (l->io.fd >= 0 && !w->draining && fy_io_set(ev, &l->io, EPOLLIN | EPOLLEXCLUSIVE) != FY_OK)
            fy_log(FY_LOG_ERR, errno, "worker %d: listener", w->index);
    }
}

static void on_accept(fy_ev_t *ev, fy_io_t *io, uint32_t events)
{
    fy_listener_t *l = io->data;
    int i;

    if (io->fd < 0)
        return;   /* closed by a drain earlier in this batch of events */
    for (i = 0; i < ACCEPTS_PER_WAKEUP; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        int fd = accept4(io->fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno != EAGAIN)
                fy_log(FY_LOG_WARN, errno, "accept");
            break;
        }
        /* The address travels whole in a handoff's header: no byte of it
         * may be left uninitialised (sendmsg would send stack garbage). */
        if (sl < sizeof(ss))
            memset((char *)&ss + sl, 0, sizeof(ss) - sl);
        fy_net_nodelay(fd);
        if (l->tls)
            fy_tls_accept(l->w, l, fd, &ss);
        else
            fy_client_accept(l->w, l, fd, &ss);
    }
    if (l->w->nworkers > 1 || l->w->base > 0)
        take_turns(l);
}

/* Draining: close the listen sockets (the admin one answers "draining"
 * until the end). Once every process has closed them, the kernel refuses
 * new connections instead of queueing them for nobody; during an upgrade
 * the new generation still holds them and takes the new connections. */
static void stop_listening(fy_worker_t *w)
{
    int i;
    for (i = 0; i < w->nlisteners; i++) {
        fy_listener_t *l = &w->listeners[i];
        if (l->admin || l->io.fd < 0)
            continue;
        fy_io_del(w->ev, &l->io);
        close(l->io.fd);
        l->io.fd = -1;
    }
}

/* A worker that keeps serving (another generation's, after an upgrade), or -1. */
static int live_worker(fy_worker_t *w)
{
    int k;
    for (k = 1; k <= FY_SHM_MAX_WORKERS; k++) {
        int i = (w->index + k) % FY_SHM_MAX_WORKERS;
        if (i != w->index && w->mailbox_send[i] >= 0
            && atomic_load(&fy_shm_worker(&w->shm, (unsigned)i)->state) == FY_SHM_W_UP)
            return i;
    }
    return -1;
}

int fy_worker_owner_elsewhere(fy_worker_t *w, const char *id)
{
    fy_shm_entry_t e;
    uint32_t i, pass;

    if (!fy_shm_lookup(&w->shm, id, &e))
        return -1;
    /*
     * A draining owner (the old generation's during an upgrade: its agent
     * was sent GOAWAY and is moving) is the last resort. While an owner
     * stays, the connection goes to it; when that owner is this worker, it
     * stays here and waits for the agent's new connection to be ready
     * (registered in the table a moment before this worker knows it),
     * instead of bouncing to the old owner and back until its hops run out
     * and it is answered 404 (issue 6).
     */
    for (pass = 0; pass < 2; pass++) {
        bool staying_here = false;
        for (i = 0; i < e.nowners; i++) {
            const fy_shm_owner_t *o = &e.owners[(w->rr + i) % e.nowners];
            uint32_t st;
            if (o->worker >= FY_SHM_MAX_WORKERS)
                continue;
            st = atomic_load(&fy_shm_worker(&w->shm, o->worker)->state);
            if (o->worker == w->index)
                staying_here = staying_here || (!w->draining && st == FY_SHM_W_UP);
            else if (w->mailbox_send[o->worker] >= 0 && (pass == 0 ? st == FY_SHM_W_UP : st != FY_SHM_W_DOWN)) {
                w->rr++;
                return o->worker;
            }
        }
        if (staying_here)
            return -1;
    }
    return -1;
}

int fy_worker_successor(fy_worker_t *w)
{
    return live_worker(w);
}

/*
 * Draining: a keep-alive connection between requests goes to a worker that
 * stays (its next request is served there), so nothing a client sends meets
 * a closing socket. With none left (a plain shutdown) it closes at exit.
 */
static void hand_over_idle(fy_worker_t *w)
{
    fy_client_t *c, *next;
    int target = live_worker(w);

    if (target < 0)
        return;
    for (c = w->clients; c != NULL; c = next) {
        next = c->next;
        /* A TLS session stays with its pump here: it closes at exit, as
         * nginx closes idle keep-alive connections. */
        if (c->closed || c->admin || c->tls || c->linger || c->state != FY_C_HEAD || c->pending > 0
            || fy_client_out_pending(c))
            continue;
        if (c->ac != NULL)
            fy_agentconn_end_stream(c, FY_MUX_RST_DONE);
        c->hops = 0;
        c->judged_ok = false;
        fy_worker_handoff(w, c, target);
    }
}

static void on_drain_timer(fy_ev_t *ev, fy_timer_t *t)
{
    fy_worker_t *w = t->data;
    fy_client_t *c;
    bool busy = w->nhellos > 0 || fy_tls_pumps_busy(fy_ev_now(ev), TLS_QUIET_MS) > 0;

    hand_over_idle(w);
    for (c = w->clients; c != NULL; c = c->next)
        if (!c->admin && (c->pending > 0 || c->state == FY_C_BODY || c->state == FY_C_TUNNEL
                          || c->state == FY_C_REGISTER || c->state == FY_C_TUNNEL_WAIT || c->state == FY_C_HANDOFF
                          || c->state == FY_C_VERIFY || (!c->linger && fy_client_out_pending(c))))
            busy = true;   /* including a response still on its way to a slow reader */
    if (!busy || fy_ev_now(ev) >= w->drain_deadline) {
        fy_log_info("worker %d drained, exiting", w->index);
        fy_ev_stop(ev);
        return;
    }
    fy_timer_arm(ev, t, DRAIN_CHECK_MS);
}

static void on_signal(fy_ev_t *ev, fy_io_t *io, uint32_t events)
{
    fy_worker_t *w = io->data;
    struct signalfd_siginfo si;

    while (read(io->fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
        switch (si.ssi_signo) {
        case SIGQUIT:
            if (w->draining)
                break;
            w->draining = true;
            w->drain_deadline = fy_ev_now(ev) + w->conf->limits.drain_timeout;
            atomic_store(&w->rec->state, FY_SHM_W_DRAINING);
            stop_listening(w);
            fy_agentconn_goaway_all(w);
            fy_timer_arm(ev, &w->drain_timer, DRAIN_CHECK_MS);
            break;
        case SIGTERM:
        case SIGINT:
            fy_ev_stop(ev);
            break;
        case SIGUSR1:
            fy_access_flush(w);
            if (fy_log_open(w->conf->log_file, w->conf->log_json) != FY_OK)
                fy_log(FY_LOG_ERR, errno, "worker %d: reopening %s", w->index, w->conf->log_file);
            break;
        default:
            break;
        }
    }
}

/* --- the control channel to the master ------------------------------------- */

int fy_worker_register(fy_worker_t *w, const fy_pending_agent_t *p, const char *addr)
{
    fy_ctl_msg_t m;
    memset(&m, 0, sizeof(m));
    m.type = FY_CTL_REGISTER;
    m.serial = p->serial;
    m.conn = p->conn;
    m.worker = (uint16_t)w->index;
    snprintf(m.id, sizeof(m.id), "%s", p->id);
    snprintf(m.session, sizeof(m.session), "%s", p->session);
    snprintf(m.holder, sizeof(m.holder), "%s", p->holder);
    snprintf(m.addr, sizeof(m.addr), "%s", addr);
    return fy_chan_send(&w->ctl, &m) == FY_OK ? FY_OK : FY_ERR;
}

void fy_worker_unregister(fy_worker_t *w, const char *id, uint32_t conn)
{
    fy_ctl_msg_t m;
    if (w->ctl.closed)
        return;   /* the master is gone (this worker is leaving): nobody to tell */
    memset(&m, 0, sizeof(m));
    m.type = FY_CTL_UNREGISTER;
    m.conn = conn;
    m.worker = (uint16_t)w->index;
    snprintf(m.id, sizeof(m.id), "%s", id);
    if (fy_chan_send(&w->ctl, &m) != FY_OK)
        fy_log_err("worker %d: could not tell the master that tunnel \"%s\" lost a connection", w->index, id);
}

/* Adopt the configuration the master validated, and its listen sockets.
 * Connections and tunnels stay; new requests see the new settings. */
static void reload(fy_worker_t *w, const fy_ctl_msg_t *m, int *fds, int nfds)
{
    char path[64], err[1024];
    fy_conf_t *nc;
    int i;

    snprintf(path, sizeof(path), "/proc/self/fd/%d", fds[0]);
    err[0] = '\0';
    if ((nc = fy_config_load(path, err, sizeof(err))) == NULL
        || ((nc->auth = fy_auth_load(nc, err, sizeof(err))) == NULL && err[0] != '\0')) {
        fy_log_err("worker %d: reload failed, keeping the running configuration: %s", w->index, err);
        fy_config_free(nc);
        for (i = 0; i < nfds; i++)
            close(fds[i]);
        return;
    }
    close(fds[0]);
    if (fy_tls_load(w, nc) != FY_OK)
        fy_log_err("worker %d: reload: kept the TLS certificate it had", w->index);
    for (i = 0; i < w->nlisteners; i++) {
        if (w->listeners[i].io.fd < 0)
            continue;
        fy_io_del(w->ev, &w->listeners[i].io);
        close(w->listeners[i].io.fd);
    }
    w->nlisteners = 0;
    for (i = 1; i < nfds; i++) {
        fy_listener_t *l = &w->listeners[w->nlisteners++];
        memset(l, 0, sizeof(*l));
        l->io.fd = fds[i];
        l->io.cb = on_accept;
        l->io.data = l;
        l->w = w;
        l->port = m->ports[i];
        l->admin = m->kind[i] == FY_LISTEN_ADMIN;
        l->tls = m->kind[i] == FY_LISTEN_TLS;
        if (!w->draining && fy_io_set(w->ev, &l->io, EPOLLIN | EPOLLEXCLUSIVE) != FY_OK)
            fy_log(FY_LOG_ERR, errno, "worker %d: listener after reload", w->index);
    }
    if (w->conf->auth != NULL)
        fy_auth_free(w->conf->auth);
    fy_config_free(w->conf);
    w->conf = nc;
    fy_pipe_enable(nc->splice);
    if (fy_log_open(nc->log_file, nc->log_json) != FY_OK)
        fy_log(FY_LOG_ERR, errno, "worker %d: log.file %s", w->index, nc->log_file);
    fy_log_info("worker %d: configuration reloaded", w->index);
}

static void on_ctl(fy_chan_t *ch, const fy_ctl_msg_t *m, int *fds, int nfds)
{
    fy_worker_t *w = ch->data;
    fy_client_t *c;

    if (m->type == FY_CTL_RELOAD && nfds >= 1 && (uint32_t)nfds == m->nfds) {
        reload(w, m, fds, nfds);
        return;
    }
    if (m->type == FY_CTL_MAILBOXES && (uint32_t)nfds == m->nfds) {
        /* The other generation of an upgrade: its workers can be handed to. */
        for (int k = 0; k < nfds; k++) {
            unsigned idx = m->ports[k];
            if (idx >= FY_SHM_MAX_WORKERS || (int)idx == w->index) {
                close(fds[k]);
                continue;
            }
            if (w->mailbox_send[idx] >= 0)
                close(w->mailbox_send[idx]);
            w->mailbox_send[idx] = fds[k];
        }
        return;
    }
    while (nfds > 0)
        close(fds[--nfds]);
    switch (m->type) {
    case FY_CTL_REGISTERED:
        for (c = w->clients; c != NULL; c = c->next) {
            if (c->state == FY_C_REGISTER && c->reg != NULL && c->reg->serial == m->serial) {
                fy_agentconn_registered(c, m->result);
                return;
            }
        }
        /* The agent went away while the master was deciding. */
        if (m->result == FY_SHM_ADDED)
            fy_worker_unregister(w, m->id, m->conn);
        return;
    case FY_CTL_TUNNEL_UP:
        fy_worker_wake(w, m->id);
        return;
    default:
        return;
    }
}

static void on_ctl_close(fy_chan_t *ch)
{
    fy_worker_t *w = ch->data;
    /* The master is gone: nothing can register or supervise; leave. */
    fy_log_err("worker %d: lost the master; exiting", w->index);
    fy_ev_stop(w->ev);
}

/* --- handoffs ----------------------------------------------------------------- */

void fy_worker_handoff(fy_worker_t *w, fy_client_t *c, int target)
{
    fy_handoff_hdr_t h;
    int rc, fd;

    memset(&h, 0, sizeof(h));
    h.magic = FY_HANDOFF_MAGIC;
    h.hops = (uint16_t)(c->hops + 1);
    h.port = (uint16_t)c->port;
    h.len = (uint32_t)fy_buf_len(&c->in);
    h.flags = (c->judged_ok ? FY_HANDOFF_F_JUDGED : 0) | (c->tls ? FY_HANDOFF_F_TLS : 0);
    h.peer = c->peer;
    memcpy(h.sni_id, c->sni_id, sizeof(c->sni_id));
    rc = fy_handoff_send(w->mailbox_send[target], &h, fy_buf_data(&c->in), c->io.fd);
    if (rc == FY_OK) {
        if (c->hops == 0)
            w->accepted_moved++;
        atomic_fetch_add_explicit(&w->rec->handoffs_sent, 1, memory_order_relaxed);
        if (c->state == FY_C_HANDOFF)
            w->nparked--;
        c->state = FY_C_HEAD;
        /* The owner has the socket now: close ours, never shutdown(). */
        fd = fy_client_detach_fd(c);
        close(fd);
        return;
    }
    if (rc == FY_AGAIN && c->state != FY_C_HANDOFF) {
        c->state = FY_C_HANDOFF;
        c->handoff_to = target;
        c->wait_until = fy_ev_now(w->ev) + 500;
        w->nparked++;
        fy_worker_arm_retry(w);
        return;
    }
    if (rc == FY_AGAIN && fy_ev_now(w->ev) < c->wait_until)
        return;
    if (c->state != FY_C_HANDOFF) {
        c->state = FY_C_HANDOFF;
        w->nparked++;
    }
    fy_log_warn("worker %d: handoff to worker %d failed: %s", w->index, target,
                rc == FY_AGAIN ? "its mailbox stayed full" : strerror(errno));
    fy_client_handoff_failed(c);
}

static void on_mailbox(fy_ev_t *ev, fy_io_t *io, uint32_t events)
{
    fy_worker_t *w = io->data;
    int i;

    for (i = 0; i < 64; i++) {
        int fd;
        ssize_t n = fy_handoff_recv(io->fd, w->mailbox_buf, w->mailbox_cap, &fd);
        if (n == FY_AGAIN)
            return;
        if (n < 0) {
            fy_log_warn("worker %d: dropped a malformed handoff message", w->index);
            continue;
        }
        /* No TCP_NODELAY here: the worker that accepted the socket set it. */
        atomic_fetch_add_explicit(&w->rec->handoffs_received, 1, memory_order_relaxed);
        if (((const fy_handoff_hdr_t *)w->mailbox_buf)->flags & FY_HANDOFF_F_TLS_RAW)
            fy_tls_adopt_raw(w, fd, (const fy_handoff_hdr_t *)w->mailbox_buf);
        else
            fy_client_adopt(w, fd, (const fy_handoff_hdr_t *)w->mailbox_buf,
                            w->mailbox_buf + sizeof(fy_handoff_hdr_t));
    }
}

/* --- parked clients ------------------------------------------------------------- */

#define RETRY_MS 20

void fy_worker_arm_retry(fy_worker_t *w)
{
    if (!fy_timer_armed(&w->retry_timer))
        fy_timer_arm(w->ev, &w->retry_timer, RETRY_MS);
}

void fy_worker_wake(fy_worker_t *w, const char *id)
{
    fy_client_t *c, *next;
    uint64_t now = fy_ev_now(w->ev);

    for (c = w->clients; c != NULL && w->nparked > 0; c = next) {
        next = c->next;
        switch (c->state) {
        case FY_C_TUNNEL_WAIT:
            if ((id != NULL && strcmp(id, c->tunnel_id) == 0) || now >= c->wait_until
                || (id == NULL && fy_shm_lookup(&w->shm, c->tunnel_id, &(fy_shm_entry_t){0}))
                || (id == NULL && fy_cluster_recheck(c))) {
                c->state = FY_C_HEAD;
                w->nparked--;
                fy_client_resume(c);
            }
            break;
        case FY_C_HANDOFF:
            if (id == NULL)
                fy_worker_handoff(w, c, c->handoff_to);
            break;
        case FY_C_REGISTER:
            if (now >= c->wait_until) {
                free(c->reg);
                c->reg = NULL;
                fy_agentconn_unreserve(w);
                c->state = FY_C_HEAD;
                w->nparked--;
                fy_client_error(c, false, 503, "busy", "the relay did not register the tunnel in time");
            }
            break;
        default:
            break;
        }
    }
    if (w->nparked > 0)
        fy_worker_arm_retry(w);
}

static void on_retry(fy_ev_t *ev, fy_timer_t *t)
{
    fy_worker_wake(t->data, NULL);
}

/* Leaving: handoffs still queued in this worker's mailbox (sent before the
 * others saw it leave) go on, as they came, to a worker that stays; with
 * none (a plain shutdown) they are closed. The short wait catches a sender
 * that read this worker's state just before it became DOWN. */
static void pass_on_mailbox(fy_worker_t *w)
{
    struct pollfd p;
    int i;

    p.fd = w->mailbox.fd;
    p.events = POLLIN;
    for (i = 0; i < 4096; i++) {
        const fy_handoff_hdr_t *h = (const fy_handoff_hdr_t *)w->mailbox_buf;
        int fd, target;
        ssize_t n;
        p.revents = 0;
        if (poll(&p, 1, 20) <= 0)
            return;
        if ((n = fy_handoff_recv(p.fd, w->mailbox_buf, w->mailbox_cap, &fd)) == FY_AGAIN)
            continue;
        if (n < 0)
            continue;
        target = fy_worker_successor(w);
        if (target < 0 || fy_handoff_send(w->mailbox_send[target], h, w->mailbox_buf + sizeof(*h), fd) != FY_OK)
            fy_log_warn("worker %d: leaving: a connection handed to it could not be passed on", w->index);
        close(fd);
    }
}

/* At exit: close every connection and fd the worker holds and free its
 * memory, so that nothing is left to the kernel's cleanup (valgrind's leak
 * and fd checks run on the e2e suite: make test-valgrind). */
static void worker_free(fy_worker_t *w)
{
    fy_agentconn_t *ac;
    uint32_t b;
    int i;

    while (w->clients != NULL)
        fy_client_close(w->clients);
    for (ac = w->agents; ac != NULL; ac = ac->next)
        fy_tun_close(&ac->tun, "the worker is exiting");
    while (fy_ev_tasks_pending(w->ev))
        fy_ev_run_tasks(w->ev);   /* the agents' closes and every deferred free */
    fy_pipe_pool_free();
    fy_access_flush(w);
    for (b = 0; w->tunnels != NULL && b < w->ntbuckets; b++)
        while (w->tunnels[b] != NULL)
            fy_tunnel_remove(w, w->tunnels[b]);
    free(w->tunnels);
    w->tunnels = NULL;
    for (i = 0; i < w->nlisteners; i++) {
        if (w->listeners[i].io.fd >= 0) {
            fy_io_del(w->ev, &w->listeners[i].io);
            close(w->listeners[i].io.fd);
            w->listeners[i].io.fd = -1;
        }
    }
    for (i = 0; i < FY_SHM_MAX_WORKERS; i++) {
        if (w->mailbox_send[i] >= 0)
            close(w->mailbox_send[i]);
        w->mailbox_send[i] = -1;
    }
    fy_io_del(w->ev, &w->mailbox);
    close(w->mailbox.fd);
    fy_io_del(w->ev, &w->sigio);
    close(w->sigio.fd);
    fy_chan_close(&w->ctl);
    fy_timer_stop(w->ev, &w->retry_timer);
    fy_timer_stop(w->ev, &w->drain_timer);
    fy_timer_stop(w->ev, &w->accept_timer);
    fy_timer_stop(w->ev, &w->access_timer);
    close(w->shm.fd);
    fy_shm_detach(&w->shm);
    w->rec = NULL;
    free(w->mailbox_buf);
    w->mailbox_buf = NULL;
    if (w->conf->auth != NULL)
        fy_auth_free(w->conf->auth);
    fy_config_free(w->conf);
    w->conf = NULL;
    fy_ev_free(w->ev);
    w->ev = NULL;
    fy_log_close();
}

int fy_worker_main(const fy_worker_setup_t *st)
{
    fy_worker_t w;
    sigset_t set;
    int i;

    memset(&w, 0, sizeof(w));
    w.conf = st->conf;
    w.index = st->index;
    w.base = st->base;
    w.nworkers = st->nworkers;
    if ((w.ev = fy_ev_new()) == NULL || fy_shm_attach(&w.shm, st->shm_fd) != FY_OK) {
        fy_log(FY_LOG_ERR, errno, "worker %d: start", st->index);
        return 1;
    }
    w.rec = fy_shm_worker(&w.shm, (unsigned)w.index);
    /* The other workers' mailboxes are theirs to read. */
    for (i = 0; i < FY_SHM_MAX_WORKERS; i++) {
        w.mailbox_send[i] = st->mailbox_send[i];
        if (i != st->index && st->mailbox_recv[i] >= 0)
            close(st->mailbox_recv[i]);
    }
    w.mailbox_cap = sizeof(fy_handoff_hdr_t) + w.conf->limits.max_header_bytes + 128 * 1024;
    if ((w.mailbox_buf = malloc(w.mailbox_cap)) == NULL)
        return 1;
    w.mailbox.fd = st->mailbox_recv[st->index];
    w.mailbox.cb = on_mailbox;
    w.mailbox.data = &w;
    fy_access_init(&w);
    randombytes_buf(w.digest_key, sizeof(w.digest_key));
    memcpy(w.ticket_keys, st->ticket_keys, sizeof(w.ticket_keys));
    fy_pipe_enable(w.conf->splice);
    if (fy_tls_load(&w, w.conf) != FY_OK)
        fy_log_err("worker %d: HTTPS connections will be closed until a reload loads a certificate", w.index);
    w.retry_timer.cb = on_retry;
    w.retry_timer.data = &w;
    sigemptyset(&set);
    sigaddset(&set, SIGQUIT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGUSR1);
    sigprocmask(SIG_BLOCK, &set, NULL);
    w.sigio.fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    w.sigio.cb = on_signal;
    w.sigio.data = &w;
    w.drain_timer.cb = on_drain_timer;
    w.drain_timer.data = &w;
    w.accept_timer.cb = on_accept_timer;
    w.accept_timer.data = &w;
    if (w.sigio.fd < 0 || fy_io_set(w.ev, &w.sigio, EPOLLIN) != FY_OK
        || fy_chan_open(&w.ctl, w.ev, st->ctl_fd, on_ctl, on_ctl_close, &w) != FY_OK
        || fy_io_set(w.ev, &w.mailbox, EPOLLIN) != FY_OK) {
        fy_log(FY_LOG_ERR, errno, "worker %d: setup", w.index);
        return 1;
    }
    for (i = 0; i < st->nfds; i++) {
        fy_listener_t *l = &w.listeners[w.nlisteners++];
        l->io.fd = st->fds[i];
        l->io.cb = on_accept;
        l->io.data = l;
        l->w = &w;
        l->port = st->ports[i];
        l->admin = st->kind[i] == FY_LISTEN_ADMIN;
        l->tls = st->kind[i] == FY_LISTEN_TLS;
        if (fy_io_set(w.ev, &l->io, EPOLLIN | EPOLLEXCLUSIVE) != FY_OK) {
            fy_log(FY_LOG_ERR, errno, "worker %d: epoll", w.index);
            return 1;
        }
    }
    atomic_store(&w.rec->pid, (int32_t)getpid());
    atomic_fetch_add(&w.rec->generation, 1);
    atomic_store(&w.rec->state, FY_SHM_W_UP);
    if (fy_cluster_start(&w) != FY_OK) {
        fy_log(FY_LOG_ERR, errno, "worker %d: cluster", w.index);
        return 1;
    }
    fy_log_info("worker %d started", w.index);
    fy_ev_run(w.ev);
    fy_cluster_stop(&w);
    fy_tls_pump_close_all();
    fy_ev_run_tasks(w.ev);
    if (w.tls_ctx != NULL)
        SSL_CTX_free(w.tls_ctx);
    fy_acl_stop(&w);
    fy_access_flush(&w);
    atomic_store(&w.rec->state, FY_SHM_W_DOWN);
    pass_on_mailbox(&w);
    worker_free(&w);
    return 0;
}
