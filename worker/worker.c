/*
 * worker.c: a worker process: its loop, the accept path, and signals from
 * the master (QUIT: drain; TERM/INT: exit now).
 */
#include "worker/worker.h"
#include "log/log.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#define ACCEPTS_PER_WAKEUP 64
#define DRAIN_CHECK_MS 100

static void on_accept(fy_ev_t *ev, fy_io_t *io, uint32_t events)
{
    fy_listener_t *l = io->data;
    int i;

    for (i = 0; i < ACCEPTS_PER_WAKEUP; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        int fd = accept4(io->fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno != EAGAIN)
                fy_log(FY_LOG_WARN, errno, "accept");
            return;
        }
        fy_net_nodelay(fd);
        fy_client_accept(l->w, l, fd, &ss);
    }
}

static void stop_listening(fy_worker_t *w)
{
    int i;
    for (i = 0; i < w->nlisteners; i++) {
        if (w->listeners[i].admin)
            continue;   /* /health keeps answering "draining" */
        fy_io_del(w->ev, &w->listeners[i].io);
    }
}

/* Drained once no end-user request is in flight and agents had their
 * GOAWAY; or at drain_timeout, whatever is left. */
static void on_drain_timer(fy_ev_t *ev, fy_timer_t *t)
{
    fy_worker_t *w = t->data;
    fy_client_t *c;
    bool busy = false;

    for (c = w->clients; c != NULL; c = c->next)
        if (!c->admin && (c->pending > 0 || c->state == FY_C_BODY || c->state == FY_C_TUNNEL))
            busy = true;
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
            stop_listening(w);
            fy_agentconn_goaway_all(w);
            fy_timer_arm(ev, &w->drain_timer, DRAIN_CHECK_MS);
            break;
        case SIGTERM:
        case SIGINT:
            fy_ev_stop(ev);
            break;
        default:
            break;
        }
    }
}

int fy_worker_main(fy_conf_t *conf, int index, const int *fds, const int *ports, const bool *admin, int nfds)
{
    fy_worker_t w;
    sigset_t set;
    int i;

    memset(&w, 0, sizeof(w));
    w.conf = conf;
    w.index = index;
    if ((w.ev = fy_ev_new()) == NULL) {
        fy_log(FY_LOG_ERR, errno, "worker %d: event loop", index);
        return 1;
    }
    sigemptyset(&set);
    sigaddset(&set, SIGQUIT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigprocmask(SIG_BLOCK, &set, NULL);
    w.sigio.fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    w.sigio.cb = on_signal;
    w.sigio.data = &w;
    w.drain_timer.cb = on_drain_timer;
    w.drain_timer.data = &w;
    if (w.sigio.fd < 0 || fy_io_set(w.ev, &w.sigio, EPOLLIN) != FY_OK) {
        fy_log(FY_LOG_ERR, errno, "worker %d: signalfd", index);
        return 1;
    }
    for (i = 0; i < nfds; i++) {
        fy_listener_t *l = &w.listeners[w.nlisteners++];
        l->io.fd = fds[i];
        l->io.cb = on_accept;
        l->io.data = l;
        l->w = &w;
        l->port = ports[i];
        l->admin = admin[i];
        if (fy_io_set(w.ev, &l->io, EPOLLIN | EPOLLEXCLUSIVE) != FY_OK) {
            fy_log(FY_LOG_ERR, errno, "worker %d: epoll", index);
            return 1;
        }
    }
    fy_log_info("worker %d started", index);
    fy_ev_run(w.ev);
    return 0;
}
