/*
 * upgrade.c: binary upgrade, nginx style (SPEC.md signals; DESIGN.md
 * "Reload and binary upgrade"). On USR2 the master execs the binary again
 * with the listen sockets, the shared table's memfd, its workers' mailboxes
 * and a channel to itself, all named in FERRY_INHERIT. The new master joins
 * the same table with the other half of the worker records, so both
 * generations serve at once and hand connections to each other: it sends
 * the old master its own mailboxes, which the old master passes on to its
 * workers. WINCH then tells the old workers to finish (GOAWAY moves their
 * agents to the new workers; a keep-alive client's next request is handed
 * over like any other) and QUIT ends the old master. A new binary that dies
 * at start leaves the old one serving as before.
 *
 * FERRY_INHERIT=base=B;shm=FD;up=FD;listen=FD@ADMIN@ADDR,...;mbox=INDEX@FD,...
 */
#include "master/master.h"
#include "log/log.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define INHERIT_ENV "FERRY_INHERIT"

static void set_cloexec(int fd, bool on)
{
    int fl = fcntl(fd, F_GETFD);
    if (fl >= 0)
        fcntl(fd, F_SETFD, on ? fl | FD_CLOEXEC : fl & ~FD_CLOEXEC);
}

static int parse_int(const char *s, char **end)
{
    long v = strtol(s, end, 10);
    return v < 0 || v > 1 << 20 ? -1 : (int)v;
}

int fy__master_inherit(master_t *m, char *err, size_t errlen)
{
    const char *env = getenv(INHERIT_ENV);
    char buf[4096], *tok, *save = NULL;

    m->inherited_up = -1;
    if (env == NULL)
        return FY_OK;
    snprintf(buf, sizeof(buf), "%s", env);
    unsetenv(INHERIT_ENV);
    for (tok = strtok_r(buf, ";", &save); tok != NULL; tok = strtok_r(NULL, ";", &save)) {
        char *v = strchr(tok, '='), *e, *item, *isave = NULL;
        if (v == NULL)
            continue;
        *v++ = '\0';
        if (!strcmp(tok, "base")) {
            m->base = parse_int(v, &e);
            if (m->base < 0 || m->base + m->nworkers > FY_SHM_MAX_WORKERS) {
                snprintf(err, errlen, "bad worker base %s", v);
                return FY_ERR;
            }
        } else if (!strcmp(tok, "shm")) {
            int fd = parse_int(v, &e);
            if (fd < 0 || fy_shm_attach(&m->shm, fd) != FY_OK) {
                snprintf(err, errlen, "cannot map the inherited table (fd %s): %s", v, strerror(errno));
                return FY_ERR;
            }
            set_cloexec(fd, true);
        } else if (!strcmp(tok, "up")) {
            m->inherited_up = parse_int(v, &e);
            if (m->inherited_up >= 0)
                set_cloexec(m->inherited_up, true);
        } else if (!strcmp(tok, "listen")) {
            for (item = strtok_r(v, ",", &isave); item != NULL && m->nfds <= FY_CONF_MAX_LISTEN;
                 item = strtok_r(NULL, ",", &isave)) {
                int fd = parse_int(item, &e);
                if (fd < 0 || *e != '@' || e[1] < '0' || e[1] > '0' + FY_LISTEN_TLS || e[2] != '@')
                    continue;
                set_cloexec(fd, true);
                m->fds[m->nfds] = fd;
                m->kind[m->nfds] = (uint8_t)(e[1] - '0');
                snprintf(m->addrs[m->nfds], FY_ADDRSTRLEN, "%s", e + 3);
                m->nfds++;
            }
        } else if (!strcmp(tok, "mbox")) {
            for (item = strtok_r(v, ",", &isave); item != NULL; item = strtok_r(NULL, ",", &isave)) {
                int idx = parse_int(item, &e), fd;
                if (idx < 0 || idx >= FY_SHM_MAX_WORKERS || *e != '@' || (fd = parse_int(e + 1, &e)) < 0)
                    continue;
                set_cloexec(fd, true);
                m->foreign[idx] = fd;
            }
        }
    }
    if (m->shm.hdr == NULL) {
        snprintf(err, errlen, "%s names no shared table", INHERIT_ENV);
        return FY_ERR;
    }
    fy_log_info("upgrade: took over %d listeners and the tunnel table; workers %d..%d", m->nfds, m->base,
                m->base + m->nworkers - 1);
    return FY_OK;
}

void fy__master_share_foreign(master_t *m, int only_index)
{
    fy_ctl_msg_t msg;
    int fds[FY_CTL_MAX_FDS], n = 0, i;

    memset(&msg, 0, sizeof(msg));
    msg.type = FY_CTL_MAILBOXES;
    for (i = 0; i < FY_SHM_MAX_WORKERS && n < FY_CTL_MAX_FDS; i++) {
        if (m->foreign[i] < 0)
            continue;
        msg.ports[n] = (uint16_t)i;
        fds[n++] = m->foreign[i];
    }
    msg.nfds = (uint32_t)n;
    if (n == 0)
        return;
    for (i = 0; i < m->nworkers; i++) {
        wslot_t *ws = &m->workers[i];
        if ((only_index < 0 || ws->index == only_index) && ws->ctl_open)
            if (fy_chan_send_fds(&ws->ctl, &msg, fds, n) != FY_OK)
                fy_log_warn("upgrade: worker %d did not take the other generation's mailboxes", ws->index);
    }
}

/* What the other master says: its workers' mailboxes. */
static void on_up_msg(fy_chan_t *ch, const fy_ctl_msg_t *msg, int *fds, int nfds)
{
    master_t *m = ch->data;
    int k;

    if (msg->type != FY_CTL_MAILBOXES || (uint32_t)nfds != msg->nfds) {
        while (nfds > 0)
            close(fds[--nfds]);
        return;
    }
    for (k = 0; k < nfds; k++) {
        unsigned idx = msg->ports[k];
        if (idx >= FY_SHM_MAX_WORKERS) {
            close(fds[k]);
            continue;
        }
        if (m->foreign[idx] >= 0)
            close(m->foreign[idx]);
        m->foreign[idx] = fds[k];
    }
    fy_log_info("upgrade: the new workers are up; both generations serve (WINCH/QUIT the old master to finish)");
    fy__master_share_foreign(m, -1);
}

static void on_up_close(fy_chan_t *ch)
{
    master_t *m = ch->data;
    m->up_open = false;
}

static void own_mailboxes(master_t *m, fy_ctl_msg_t *msg, int *fds, int *n)
{
    int i;
    *n = 0;
    for (i = 0; i < m->nworkers && *n < FY_CTL_MAX_FDS; i++) {
        msg->ports[*n] = (uint16_t)m->workers[i].index;
        fds[(*n)++] = m->workers[i].mailbox[1];
    }
    msg->nfds = (uint32_t)*n;
}

void fy__master_announce(master_t *m)
{
    fy_ctl_msg_t msg;
    int fds[FY_CTL_MAX_FDS], n;

    if (m->inherited_up < 0)
        return;
    if (fy_chan_open(&m->up, m->ev, m->inherited_up, on_up_msg, on_up_close, m) != FY_OK) {
        close(m->inherited_up);
        m->inherited_up = -1;
        return;
    }
    m->up_open = true;
    m->inherited_up = -1;
    memset(&msg, 0, sizeof(msg));
    msg.type = FY_CTL_MAILBOXES;
    own_mailboxes(m, &msg, fds, &n);
    if (fy_chan_send_fds(&m->up, &msg, fds, n) != FY_OK)
        fy_log_warn("upgrade: could not tell the old master where the new workers are");
}

static int rename_pid(master_t *m, bool to_old)
{
    char old[4200];
    if (m->pid_path == NULL || m->pid_path[0] == '\0')
        return FY_OK;
    snprintf(old, sizeof(old), "%s.oldbin", m->pid_path);
    if (to_old ? rename(m->pid_path, old) : rename(old, m->pid_path)) {
        fy_log(FY_LOG_ERR, errno, "upgrade: renaming the pidfile");
        return FY_ERR;
    }
    m->renamed_pid = to_old;
    return FY_OK;
}

void fy__master_upgrade(master_t *m)
{
    char env[4096];
    int up[2], i, n, len;
    sigset_t none;
    pid_t pid;

    if (m->new_master > 0 || m->up_open || m->winched) {
        fy_log_warn("USR2: an upgrade is already under way (or this is the old master); ignored");
        return;
    }
    if (fy_chan_pair(up) != FY_OK) {
        fy_log(FY_LOG_ERR, errno, "upgrade: channel");
        return;
    }
    len = snprintf(env, sizeof(env), "%s=base=%d;shm=%d;up=%d;listen=", INHERIT_ENV,
                   m->base == 0 ? FY_SHM_MAX_WORKERS / 2 : 0, m->shm.fd, up[1]);
    for (i = 0; i < m->nfds; i++)
        len += snprintf(env + len, sizeof(env) - (size_t)len, "%s%d@%d@%s", i ? "," : "", m->fds[i],
                        m->kind[i], m->addrs[i]);
    len += snprintf(env + len, sizeof(env) - (size_t)len, ";mbox=");
    for (i = 0, n = 0; i < m->nworkers; i++)
        len += snprintf(env + len, sizeof(env) - (size_t)len, "%s%d@%d", n++ ? "," : "", m->workers[i].index,
                        m->workers[i].mailbox[1]);
    if ((size_t)len >= sizeof(env) || rename_pid(m, true) != FY_OK) {
        close(up[0]);
        close(up[1]);
        return;
    }
    /* What the new binary inherits across exec: the rest stays close-on-exec. */
    set_cloexec(m->shm.fd, false);
    set_cloexec(up[1], false);
    for (i = 0; i < m->nfds; i++)
        set_cloexec(m->fds[i], false);
    for (i = 0; i < m->nworkers; i++)
        set_cloexec(m->workers[i].mailbox[1], false);
    if ((pid = fork()) == 0) {
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        putenv(env);
        execv(m->argv[0], m->argv);
        fprintf(stderr, "ferryd: upgrade: exec %s: %s\n", m->argv[0], strerror(errno));
        _exit(127);
    }
    set_cloexec(m->shm.fd, true);
    for (i = 0; i < m->nfds; i++)
        set_cloexec(m->fds[i], true);
    for (i = 0; i < m->nworkers; i++)
        set_cloexec(m->workers[i].mailbox[1], true);
    close(up[1]);
    if (pid < 0) {
        fy_log(FY_LOG_ERR, errno, "upgrade: fork");
        close(up[0]);
        (void)rename_pid(m, false);
        return;
    }
    if (fy_chan_open(&m->up, m->ev, up[0], on_up_msg, on_up_close, m) != FY_OK) {
        close(up[0]);
    } else {
        m->up_open = true;
    }
    m->new_master = pid;
    fy_log_info("upgrade: started %s as pid %d; this master's pidfile is now .oldbin", m->argv[0], (int)pid);
}

/* The failed generation's workers exit once their master's channel closes;
 * then what they held leaves the table. */
static void on_sweep(fy_ev_t *ev, fy_timer_t *t)
{
    master_t *m = t->data;
    int i;
    for (i = 0; i < FY_SHM_MAX_WORKERS; i++)
        if ((i < m->base || i >= m->base + m->nworkers)
            && atomic_load(&fy_shm_worker(&m->shm, (unsigned)i)->state) == FY_SHM_W_DOWN)
            fy_shm_sweep_worker(&m->shm, (uint16_t)i);
}

void fy__master_upgrade_failed(master_t *m, int status)
{
    int i;

    if (WIFSIGNALED(status))
        fy_log_err("upgrade: the new master (pid %d) was killed by signal %d", (int)m->new_master, WTERMSIG(status));
    else
        fy_log_err("upgrade: the new master (pid %d) exited with status %d", (int)m->new_master, WEXITSTATUS(status));
    m->new_master = 0;
    if (m->up_open) {
        fy_chan_close(&m->up);
        m->up_open = false;
    }
    /* Whatever its workers held leaves the table; their agents come back here. */
    for (i = 0; i < FY_SHM_MAX_WORKERS; i++) {
        if (m->foreign[i] >= 0) {
            close(m->foreign[i]);
            m->foreign[i] = -1;
        }
    }
    m->sweep_timer.cb = on_sweep;
    m->sweep_timer.data = m;
    on_sweep(m->ev, &m->sweep_timer);
    fy_timer_arm(m->ev, &m->sweep_timer, 2000);
    if (!m->winched) {
        (void)rename_pid(m, false);
        fy_log_info("upgrade: this master goes on serving");
    }
}
