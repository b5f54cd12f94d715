/*
 * main.c: ferryd's entry point and master process. The master parses the
 * command line and config, opens the listen sockets, forks the worker and
 * then only supervises it through a signalfd: it never touches client
 * traffic (DESIGN.md "Processes").
 */
#include "fy.h"
#include "ev/ev.h"
#include "log/log.h"
#include "master/cmd.h"
#include "master/config.h"
#include "master/master.h"
#include "master/directory.h"
#include "net/net.h"
#include "worker/auth.h"
#include "worker/worker.h"
#include "shm/table.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

static void free_conf(fy_conf_t *c)
{
    if (c != NULL && c->auth != NULL)
        fy_auth_free(c->auth);
    fy_config_free(c);
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: ferryd [-c FILE] [-p PIDFILE]        run the relay\n"
            "       ferryd -t [-c FILE]                  test the configuration\n"
            "       ferryd -s reload|quit|stop|reopen|upgrade [-p PIDFILE] [-c FILE]\n"
            "       ferryd token --tunnel PATTERN [--expires 30d] [-c FILE]\n"
            "       ferryd keygen -o FILE\n"
            "       ferryd hash-password\n"
            "       ferryd -v                            print the version\n");
}

static int open_log(master_t *m)
{
    if (fy_log_open(m->conf->log_file, m->conf->log_json) != FY_OK) {
        fy_log(FY_LOG_ERR, errno, "log.file %s", m->conf->log_file);
        return FY_ERR;
    }
    return FY_OK;
}

/* A set of listen sockets: what the config names, in config order. */
typedef struct {
    int  n;
    int  fds[FY_CONF_MAX_LISTEN + 1];
    int  ports[FY_CONF_MAX_LISTEN + 1];
    uint8_t kind[FY_CONF_MAX_LISTEN + 1];   /* enum fy_listen_kind */
    char addrs[FY_CONF_MAX_LISTEN + 1][FY_ADDRSTRLEN];
} lset_t;

/*
 * Open the listeners conf names, reusing the master's socket for an address
 * it already listens on (a reload keeps its accept queue: nothing queued is
 * lost). FY_OK, or FY_ERR with err filled and nothing new left open.
 */
static int open_listeners(master_t *m, const fy_conf_t *conf, lset_t *ls, char *err, size_t errlen)
{
    int i, k;

    ls->n = 0;
    for (i = 0; i <= conf->nlisten + conf->nlisten_tls; i++) {
        uint8_t kind = i < conf->nlisten ? FY_LISTEN_PLAIN
                     : i < conf->nlisten + conf->nlisten_tls ? FY_LISTEN_TLS : FY_LISTEN_ADMIN;
        const char *a = kind == FY_LISTEN_PLAIN ? conf->listen[i]
                      : kind == FY_LISTEN_TLS ? conf->listen_tls[i - conf->nlisten] : conf->admin;
        struct sockaddr_storage ss;
        socklen_t len;
        int fd = -1;

        if (a == NULL || a[0] == '\0')
            continue;
        if (fy_net_parse_addr(a, &ss, &len) != FY_OK) {
            snprintf(err, errlen, "%s: not an address", a);
            goto fail;
        }
        for (k = 0; k < m->nfds; k++)
            if (strcmp(m->addrs[k], a) == 0 && m->kind[k] == kind)
                fd = m->fds[k];
        if (fd < 0 && (fd = fy_net_listen(&ss, len, 4096)) < 0) {
            snprintf(err, errlen, "cannot listen on %s: %s", a, strerror(errno));
            goto fail;
        }
        ls->fds[ls->n] = fd;
        ls->ports[ls->n] = fy_net_port((struct sockaddr *)&ss);
        ls->kind[ls->n] = kind;
        snprintf(ls->addrs[ls->n], FY_ADDRSTRLEN, "%s", a);
        ls->n++;
    }
    return FY_OK;
fail:
    for (i = 0; i < ls->n; i++) {
        bool reused = false;
        for (k = 0; k < m->nfds; k++)
            reused = reused || m->fds[k] == ls->fds[i];
        if (!reused)
            close(ls->fds[i]);
    }
    ls->n = 0;
    return FY_ERR;
}

/* Make ls the master's listeners, closing those it no longer names. */
static void take_listeners(master_t *m, const lset_t *ls)
{
    int i, k;
    for (k = 0; k < m->nfds; k++) {
        bool kept = false;
        for (i = 0; i < ls->n; i++)
            kept = kept || ls->fds[i] == m->fds[k];
        if (!kept) {
            fy_log_info("no longer listening on %s", m->addrs[k]);
            close(m->fds[k]);
        }
    }
    m->nfds = ls->n;
    memcpy(m->fds, ls->fds, sizeof(m->fds));
    memcpy(m->ports, ls->ports, sizeof(m->ports));
    memcpy(m->kind, ls->kind, sizeof(m->kind));
    memcpy(m->addrs, ls->addrs, sizeof(m->addrs));
}

static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static void broadcast(master_t *m, const fy_ctl_msg_t *msg)
{
    int i;
    for (i = 0; i < m->nworkers; i++)
        if (m->workers[i].ctl_open)
            (void)fy_chan_send(&m->workers[i].ctl, msg);
}

/* A worker asks; the master, the table's only writer, answers. */
static void on_ctl(fy_chan_t *ch, const fy_ctl_msg_t *msg, int *fds, int nfds)
{
    wslot_t *ws = ch->data;
    master_t *m = ws->m;
    fy_ctl_msg_t r;

    while (nfds > 0)
        close(fds[--nfds]);   /* workers send no fds */
    switch (msg->type) {
    case FY_CTL_REGISTER:
        r = *msg;
        r.type = FY_CTL_REGISTERED;
        r.result = fy_shm_add_owner(&m->shm, msg->id, msg->session, msg->holder, msg->addr,
                                    (uint16_t)ws->index, msg->conn, (int64_t)time(NULL));
        (void)fy_chan_send(ch, &r);
        if (r.result == FY_SHM_ADDED) {
            r.type = FY_CTL_TUNNEL_UP;
            broadcast(m, &r);
            fy_dir_up(msg->id);
        }
        return;
    case FY_CTL_UNREGISTER:
        fy_shm_remove_owner(&m->shm, msg->id, (uint16_t)ws->index, msg->conn);
        fy_dir_check(msg->id);
        return;
    default:
        return;
    }
}

static void on_ctl_close(fy_chan_t *ch)
{
    wslot_t *ws = ch->data;
    ws->ctl_open = false;
}

static void spawn_worker(master_t *m, int i)
{
    wslot_t *ws = &m->workers[i];
    fy_worker_setup_t st;
    int ctl[2], k;
    pid_t pid;

    if (fy_chan_pair(ctl) != FY_OK) {
        fy_log(FY_LOG_ERR, errno, "worker %d: control channel", i);
        fy_timer_arm(m->ev, &m->respawn_timer, 1000);
        return;
    }
    if ((pid = fork()) < 0) {
        fy_log(FY_LOG_ERR, errno, "fork");
        close(ctl[0]);
        close(ctl[1]);
        fy_timer_arm(m->ev, &m->respawn_timer, 1000);
        return;
    }
    if (pid == 0) {
        /* The worker keeps the listeners, the region, its channel and the
         * mailboxes; not the master's loop, signals or other channels. */
        close(m->sigio.fd);
        fy_dir_child();
        fy_ev_free(m->ev);
        close(ctl[0]);
        for (k = 0; k < m->nworkers; k++)
            if (m->workers[k].ctl_open)
                close(m->workers[k].ctl.io.fd);
        memset(&st, 0, sizeof(st));
        st.conf = m->conf;
        memcpy(st.ticket_keys, m->ticket_keys, sizeof(st.ticket_keys));
        st.index = ws->index;
        st.base = m->base;
        st.nworkers = m->nworkers;
        st.nfds = m->nfds;
        memcpy(st.fds, m->fds, sizeof(st.fds));
        memcpy(st.ports, m->ports, sizeof(st.ports));
        memcpy(st.kind, m->kind, sizeof(st.kind));
        st.shm_fd = m->shm.fd;
        st.ctl_fd = ctl[1];
        if (m->up_open)
            close(m->up.io.fd);
        if (m->inherited_up >= 0)
            close(m->inherited_up);   /* the old master's channel, not yet opened as m->up */
        for (k = 0; k < FY_SHM_MAX_WORKERS; k++) {
            st.mailbox_recv[k] = -1;
            st.mailbox_send[k] = m->foreign[k];
        }
        for (k = 0; k < m->nworkers; k++) {
            st.mailbox_recv[m->workers[k].index] = m->workers[k].mailbox[0];
            st.mailbox_send[m->workers[k].index] = m->workers[k].mailbox[1];
        }
        _exit(fy_worker_main(&st));
    }
    close(ctl[1]);
    if (fy_chan_open(&ws->ctl, m->ev, ctl[0], on_ctl, on_ctl_close, ws) != FY_OK) {
        fy_log(FY_LOG_ERR, errno, "worker %d: control channel", i);
        close(ctl[0]);
        kill(pid, SIGKILL);
    }
    ws->ctl_open = true;
    ws->pid = pid;
    ws->started = fy_ev_now(m->ev);
}

static void on_respawn(fy_ev_t *ev, fy_timer_t *t)
{
    master_t *m = t->data;
    int i;
    if (m->stopping)
        return;
    for (i = 0; i < m->nworkers; i++)
        if (m->workers[i].pid == 0)
            spawn_worker(m, i);
}

static bool any_worker(const master_t *m)
{
    int i;
    for (i = 0; i < m->nworkers; i++)
        if (m->workers[i].pid > 0)
            return true;
    return false;
}

static void reap(master_t *m)
{
    int status, i;
    pid_t pid;

    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        wslot_t *ws = NULL;
        uint32_t gone;
        if (pid == m->new_master) {
            fy__master_upgrade_failed(m, status);
            continue;
        }
        for (i = 0; i < m->nworkers; i++)
            if (m->workers[i].pid == pid)
                ws = &m->workers[i];
        if (ws == NULL)
            continue;
        ws->pid = 0;
        if (ws->ctl_open) {
            fy_chan_close(&ws->ctl);
            ws->ctl_open = false;
        }
        /* Its tunnels leave the table at once; their agents reconnect. */
        fy_dir_before_sweep((uint16_t)ws->index);
        gone = fy_shm_sweep_worker(&m->shm, (uint16_t)ws->index);
        fy_dir_after_sweep();
        atomic_store(&fy_shm_worker(&m->shm, (unsigned)ws->index)->state, FY_SHM_W_DOWN);
        if (m->stopping) {
            if (!any_worker(m))
                fy_ev_stop(m->ev);
            continue;
        }
        if (m->winched) {
            fy_log_info("worker %d (pid %d) left after WINCH", ws->index, (int)pid);
            continue;
        }
        if (WIFSIGNALED(status))
            fy_log_err("worker %d (pid %d) killed by signal %d; %u tunnels dropped; starting a new one",
                       ws->index, (int)pid, WTERMSIG(status), gone);
        else
            fy_log_err("worker %d (pid %d) exited with status %d; %u tunnels dropped; starting a new one",
                       ws->index, (int)pid, WEXITSTATUS(status), gone);
        atomic_fetch_add(&m->shm.hdr->worker_restarts, 1);
        /* A worker that dies at once would otherwise be forked in a loop. */
        if (fy_ev_now(m->ev) - ws->started < 1000)
            fy_timer_arm(m->ev, &m->respawn_timer, 500);
        else
            spawn_worker(m, ws->index);
    }
}

static void signal_workers(master_t *m, int sig)
{
    int i;
    for (i = 0; i < m->nworkers; i++)
        if (m->workers[i].pid > 0)
            kill(m->workers[i].pid, sig);
}

/* The config file's bytes in a memfd: what the master validates is exactly
 * what the workers load, whatever happens to the file meanwhile. */
static int snapshot_config(const char *path)
{
    char buf[65536];
    ssize_t n;
    int in, fd;

    if ((in = open(path, O_RDONLY | O_CLOEXEC)) < 0)
        return -1;
    if ((fd = memfd_create("ferry-config", MFD_CLOEXEC)) < 0) {
        close(in);
        return -1;
    }
    while ((n = read(in, buf, sizeof(buf))) > 0) {
        if (write(fd, buf, (size_t)n) != n) {
            n = -1;
            break;
        }
    }
    close(in);
    if (n < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/*
 * HUP: re-read and validate the config; on any error keep running as before
 * and log exactly why. Otherwise the workers adopt it in place (their tunnels
 * and connections stay): the master sends each the validated bytes and the
 * listen sockets. Settings that size shared structures (workers,
 * limits.max_tunnels) need a restart or a binary upgrade.
 */
static void reload(master_t *m)
{
    char err[1024], path[64];
    fy_conf_t *nc;
    lset_t ls;
    fy_ctl_msg_t msg;
    int fd, i, fds[FY_CTL_MAX_FDS], nworkers;

    if (m->conf_path == NULL) {
        fy_log_warn("reload: running on the embedded defaults (no -c FILE): nothing to re-read");
        return;
    }
    if ((fd = snapshot_config(m->conf_path)) < 0) {
        fy_log(FY_LOG_ERR, errno, "reload: %s: kept the running configuration", m->conf_path);
        return;
    }
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    err[0] = '\0';
    nc = fy_config_load(path, err, sizeof(err));
    if (nc != NULL && fy_config_check(nc, err, sizeof(err)) == FY_OK && fy_tls_check(nc, err, sizeof(err)) == FY_OK) {
        nc->auth = fy_auth_load(nc, err, sizeof(err));
        if (nc->auth == NULL && err[0] != '\0') {
            fy_config_free(nc);
            nc = NULL;
        }
    } else if (nc != NULL) {
        fy_config_free(nc);
        nc = NULL;
    }
    if (nc == NULL) {
        /* Errors name the snapshot; say the file the operator edits. */
        char *p = strstr(err, path);
        fy_log_err("reload: %s%s: kept the running configuration", p ? m->conf_path : "", p ? p + strlen(path) : err);
        close(fd);
        return;
    }
    nworkers = nc->workers > 0 ? nc->workers : (int)sysconf(_SC_NPROCESSORS_ONLN);
    nworkers = FY_MAX(1, FY_MIN(nworkers, FY_SHM_MAX_WORKERS));
    if (nc->cluster.on != m->conf->cluster.on || strcmp(nc->cluster.node, m->conf->cluster.node) != 0
        || strcmp(nc->cluster.redis_addr, m->conf->cluster.redis_addr) != 0
        || (nc->cluster.on && strcmp(nc->cluster.advertise, m->conf->cluster.advertise) != 0)) {
        fy_log_err("reload: %s: cluster.redis, cluster.node and cluster.advertise change only with a restart or an "
                   "upgrade (-s upgrade); kept the running configuration", m->conf_path);
        fy_config_free(nc);
        close(fd);
        return;
    }
    if (nworkers != m->nworkers || nc->limits.max_tunnels != m->conf->limits.max_tunnels) {
        fy_log_err("reload: %s: workers and limits.max_tunnels change only with a restart or an upgrade "
                   "(-s upgrade); kept the running configuration", m->conf_path);
        fy_config_free(nc);
        close(fd);
        return;
    }
    if (open_listeners(m, nc, &ls, err, sizeof(err)) != FY_OK) {
        fy_log_err("reload: %s: %s; kept the running configuration", m->conf_path, err);
        fy_config_free(nc);
        close(fd);
        return;
    }
    take_listeners(m, &ls);
    free_conf(m->conf);
    m->conf = nc;
    (void)open_log(m);
    memset(&msg, 0, sizeof(msg));
    msg.type = FY_CTL_RELOAD;
    msg.nfds = (uint32_t)(m->nfds + 1);
    fds[0] = fd;
    for (i = 0; i < m->nfds; i++) {
        fds[i + 1] = m->fds[i];
        msg.ports[i + 1] = (uint16_t)m->ports[i];
        msg.kind[i + 1] = m->kind[i];
    }
    for (i = 0; i < m->nworkers; i++) {
        wslot_t *ws = &m->workers[i];
        if (ws->ctl_open && fy_chan_send_fds(&ws->ctl, &msg, fds, m->nfds + 1) != FY_OK) {
            /* It could not take the new config: a new worker will. */
            fy_log_err("reload: worker %d did not take the configuration; replacing it", i);
            kill(ws->pid, SIGQUIT);
        }
    }
    close(fd);
    atomic_fetch_add(&m->shm.hdr->reloads, 1);
    fy_log_info("reload: %s applied (%d listeners)", m->conf_path, m->nfds);
}

/* Stopping: the master's copies of the public listen sockets go, so that
 * once the workers close theirs the kernel refuses new connections. */
static void close_public_listeners(master_t *m)
{
    int i;
    for (i = 0; i < m->nfds; i++) {
        if (m->kind[i] != FY_LISTEN_ADMIN && m->fds[i] >= 0) {
            close(m->fds[i]);
            m->fds[i] = -1;
        }
    }
}

/* At exit: every fd and byte the master holds goes back, so that valgrind's
 * fd and leak checks (make test-valgrind) see only what leaked. */
static void master_free(master_t *m)
{
    int i;
    for (i = 0; i < m->nfds; i++)
        if (m->fds[i] >= 0)
            close(m->fds[i]);
    m->nfds = 0;
    for (i = 0; i < m->nworkers; i++) {
        if (m->workers[i].ctl_open)
            fy_chan_close(&m->workers[i].ctl);
        m->workers[i].ctl_open = false;
        close(m->workers[i].mailbox[0]);
        close(m->workers[i].mailbox[1]);
    }
    for (i = 0; i < FY_SHM_MAX_WORKERS; i++) {
        if (m->foreign[i] >= 0)
            close(m->foreign[i]);
        m->foreign[i] = -1;
    }
    if (m->up_open)
        fy_chan_close(&m->up);
    m->up_open = false;
    if (m->inherited_up >= 0)
        close(m->inherited_up);
    m->inherited_up = -1;
    fy_io_del(m->ev, &m->sigio);
    close(m->sigio.fd);
    fy_timer_stop(m->ev, &m->respawn_timer);
    fy_timer_stop(m->ev, &m->sweep_timer);
    close(m->shm.fd);
    fy_shm_detach(&m->shm);
    free_conf(m->conf);
    m->conf = NULL;
    fy_ev_free(m->ev);
    m->ev = NULL;
    fy_log_close();
}

static void on_signal(fy_ev_t *ev, fy_io_t *io, uint32_t events)
{
    master_t *m = io->data;
    struct signalfd_siginfo si;

    while (read(io->fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
        switch (si.ssi_signo) {
        case SIGCHLD:
            reap(m);
            break;
        case SIGTERM:
        case SIGINT:
        case SIGQUIT:
            fy_log_info("%s: %s shutdown", strsignal((int)si.ssi_signo),
                        si.ssi_signo == SIGQUIT ? "graceful" : "fast");
            m->stopping = true;
            close_public_listeners(m);
            if (any_worker(m))
                signal_workers(m, si.ssi_signo == SIGQUIT ? SIGQUIT : SIGTERM);
            else
                fy_ev_stop(ev);
            break;
        case SIGHUP:
            if (m->winched || m->stopping)
                fy_log_warn("SIGHUP: this master is finishing; reload the new master");
            else
                reload(m);
            break;
        case SIGUSR2:
            fy__master_upgrade(m);
            break;
        case SIGWINCH:
            if (m->new_master <= 0 && !m->up_open) {
                fy_log_warn("SIGWINCH: no new master is running; ignored (it follows -s upgrade)");
                break;
            }
            fy_log_info("SIGWINCH: telling the workers to finish and leave");
            m->winched = true;
            signal_workers(m, SIGQUIT);
            break;
        case SIGUSR1:
            if (open_log(m) == FY_OK)
                fy_log_info("log file reopened");
            signal_workers(m, SIGUSR1);
            break;
        default:
            fy_log_warn("%s: not implemented yet in this version; ignored", strsignal((int)si.ssi_signo));
            break;
        }
    }
}

static int write_pidfile(const char *path)
{
    char buf[32];
    int fd, n;
    if (path == NULL || path[0] == '\0')
        return FY_OK;
    if ((fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)) < 0) {
        fprintf(stderr, "ferryd: pidfile %s: %s\n", path, strerror(errno));
        return FY_ERR;
    }
    n = snprintf(buf, sizeof(buf), "%d\n", (int)getpid());
    if (write(fd, buf, (size_t)n) != n) {
        close(fd);
        return FY_ERR;
    }
    close(fd);
    return FY_OK;
}

/* Remove our pidfile: PIDFILE, or PIDFILE.oldbin once a new master took the
 * name (never the new master's file). */
static void unlink_pidfile(master_t *m)
{
    char path[4200], buf[32];
    ssize_t n;
    int fd;

    snprintf(path, sizeof(path), "%s%s", m->pid_path, m->renamed_pid ? ".oldbin" : "");
    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
        return;
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n > 0 && (buf[n] = '\0', strtol(buf, NULL, 10) == (long)getpid()))
        unlink(path);
}

static int send_signal(const char *what, const char *pid_path)
{
    static const struct { const char *name; int sig; } sigs[] = {
        {"reload", SIGHUP}, {"quit", SIGQUIT}, {"stop", SIGTERM}, {"reopen", SIGUSR1}, {"upgrade", SIGUSR2},
    };
    char buf[32];
    size_t i;
    ssize_t n;
    long pid;
    int fd;

    for (i = 0; i < FY_NELEM(sigs); i++)
        if (!strcmp(what, sigs[i].name))
            break;
    if (i == FY_NELEM(sigs)) {
        fprintf(stderr, "ferryd: -s takes reload, quit, stop, reopen or upgrade, not \"%s\"\n", what);
        return 1;
    }
    if (pid_path == NULL || pid_path[0] == '\0') {
        fprintf(stderr, "ferryd: -s needs a pidfile: -p PIDFILE or pid: in the config\n");
        return 1;
    }
    if ((fd = open(pid_path, O_RDONLY)) < 0) {
        fprintf(stderr, "ferryd: %s: %s\n", pid_path, strerror(errno));
        return 1;
    }
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0 || (buf[n] = '\0', pid = strtol(buf, NULL, 10)) <= 0) {
        fprintf(stderr, "ferryd: %s: no pid in it\n", pid_path);
        return 1;
    }
    if (kill((pid_t)pid, sigs[i].sig) < 0) {
        fprintf(stderr, "ferryd: signal %s to %ld: %s\n", what, pid, strerror(errno));
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    master_t m;
    char err[1024];
    const char *signal_name = NULL;
    bool test = false;
    sigset_t set;
    int i;

    memset(&m, 0, sizeof(m));
    if (argc > 1 && !strcmp(argv[1], "token"))
        return fy_cmd_token(argc - 1, argv + 1);
    if (argc > 1 && !strcmp(argv[1], "keygen"))
        return fy_cmd_keygen(argc - 1, argv + 1);
    if (argc > 1 && !strcmp(argv[1], "hash-password"))
        return fy_cmd_hash_password(argc - 1, argv + 1);
    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-v") || !strcmp(a, "--version")) {
            printf("ferryd %s\n", FY_VERSION);
            return 0;
        } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "-t")) {
            test = true;
        } else if (!strcmp(a, "-c") && i + 1 < argc) {
            m.conf_path = argv[++i];
        } else if (!strcmp(a, "-p") && i + 1 < argc) {
            m.pid_path = argv[++i];
        } else if (!strcmp(a, "-s") && i + 1 < argc) {
            signal_name = argv[++i];
        } else {
            fprintf(stderr, "ferryd: unknown or incomplete argument \"%s\"\n", a);
            usage(stderr);
            return 1;
        }
    }
    if (sodium_init() < 0) {
        fprintf(stderr, "ferryd: libsodium failed to initialise\n");
        return 1;
    }
    randombytes_buf(m.ticket_keys, sizeof(m.ticket_keys));
    if ((m.conf = fy_config_load(m.conf_path, err, sizeof(err))) == NULL
        || fy_config_check(m.conf, err, sizeof(err)) != FY_OK || fy_tls_check(m.conf, err, sizeof(err)) != FY_OK) {
        fprintf(stderr, "ferryd: %s\n", err);
        if (test)
            fprintf(stderr, "ferryd: configuration test failed\n");
        return 1;
    }
    m.conf->auth = fy_auth_load(m.conf, err, sizeof(err));
    if (m.conf->auth == NULL && err[0] != '\0') {
        fprintf(stderr, "ferryd: %s\n", err);
        if (test)
            fprintf(stderr, "ferryd: configuration test failed\n");
        return 1;
    }
    if (m.pid_path == NULL && m.conf->pid != NULL) {
        snprintf(m.pid_buf, sizeof(m.pid_buf), "%s", m.conf->pid);   /* the config may be replaced on reload */
        m.pid_path = m.pid_buf;
    }
    if (signal_name != NULL || test) {
        int rc = test ? (printf("ferryd: configuration ok\n"), 0) : send_signal(signal_name, m.pid_path);
        free_conf(m.conf);
        return rc;
    }
    if (m.conf->daemon) {
        fprintf(stderr, "ferryd: daemon: true is not implemented yet; run under systemd or with daemon: false\n");
        return 1;
    }
    m.nworkers = m.conf->workers > 0 ? m.conf->workers : (int)sysconf(_SC_NPROCESSORS_ONLN);
    /* Two generations share the table during an upgrade: half the records each. */
    m.nworkers = FY_MAX(1, FY_MIN(m.nworkers, FY_SHM_MAX_WORKERS / 2));
    m.argv = argv;
    for (i = 0; i < FY_SHM_MAX_WORKERS; i++)
        m.foreign[i] = -1;
    raise_nofile();
    signal(SIGPIPE, SIG_IGN);
    if (fy__master_inherit(&m, err, sizeof(err)) != FY_OK) {
        fprintf(stderr, "ferryd: upgrade: %s\n", err);
        return 1;
    }
    {
        lset_t ls;
        if (open_listeners(&m, m.conf, &ls, err, sizeof(err)) != FY_OK) {
            fprintf(stderr, "ferryd: %s\n", err);
            return 1;
        }
        take_listeners(&m, &ls);
    }
    if (open_log(&m) != FY_OK || write_pidfile(m.pid_path) != FY_OK)
        return 1;
    if (m.shm.hdr == NULL
        && fy_shm_create(&m.shm, (uint32_t)m.conf->limits.max_tunnels, (uint32_t)m.nworkers) != FY_OK) {
        fprintf(stderr, "ferryd: shared memory for %llu tunnels: %s\n",
                (unsigned long long)m.conf->limits.max_tunnels, strerror(errno));
        return 1;
    }
    for (i = 0; i < m.nworkers; i++) {
        m.workers[i].m = &m;
        m.workers[i].index = m.base + i;
        if (fy_chan_pair(m.workers[i].mailbox) != FY_OK) {
            fprintf(stderr, "ferryd: mailbox: %s\n", strerror(errno));
            return 1;
        }
    }
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGQUIT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGUSR2);
    sigaddset(&set, SIGWINCH);
    sigprocmask(SIG_BLOCK, &set, NULL);
    if ((m.ev = fy_ev_new()) == NULL || (m.sigio.fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC)) < 0) {
        fprintf(stderr, "ferryd: %s\n", strerror(errno));
        return 1;
    }
    m.sigio.cb = on_signal;
    m.sigio.data = &m;
    m.respawn_timer.cb = on_respawn;
    m.respawn_timer.data = &m;
    if (fy_io_set(m.ev, &m.sigio, EPOLLIN) != FY_OK)
        return 1;
    {
        const char *plain = m.conf->nlisten > 0 ? m.conf->listen[0] : NULL;
        const char *tls = m.conf->nlisten_tls > 0 ? m.conf->listen_tls[0] : NULL;
        fy_log_info("ferryd %s: listening on %s%s%s (end users and agents), admin on %s, domain %s, %d workers",
                    FY_VERSION, plain ? plain : "", plain && tls ? " and HTTPS " : tls ? "HTTPS " : "",
                    tls ? tls : "", m.conf->admin[0] ? m.conf->admin : "(off)", m.conf->domain, m.nworkers);
        fy_log_info("connect an agent: ferry http 3000 --server %s://%s", plain && !m.conf->agents_require_tls
                    ? "ws" : "wss", plain && !m.conf->agents_require_tls ? plain : tls);
    }
    for (i = 0; i < m.nworkers; i++)
        spawn_worker(&m, i);
    fy__master_announce(&m);
    if (fy_dir_start(&m) != FY_OK) {
        fy_log_err("cluster: cannot start the directory writer");
        return 1;
    }
    fy_ev_run(m.ev);
    fy_dir_stop();
    if (m.pid_path != NULL && m.pid_path[0] != '\0')
        unlink_pidfile(&m);
    fy_log_info("master exiting");
    master_free(&m);
    return 0;
}
