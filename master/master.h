/*
 * master.h: the master process's state, shared by main.c (start, workers,
 * signals, reload) and upgrade.c (binary upgrade, nginx style).
 */
#ifndef FY_MASTER_H
#define FY_MASTER_H

#include "fy.h"
#include "ev/ev.h"
#include "master/config.h"
#include "net/net.h"
#include "shm/table.h"
#include "worker/chan.h"
#include "tls/tls.h"

#include <sys/types.h>

typedef struct master_s master_t;

/* The master's view of one worker slot (an index keeps its mailbox across
 * restarts; the process and its control channel are new each time). */
typedef struct {
    master_t   *m;
    int         index;
    pid_t       pid;
    uint64_t    started;       /* ms */
    fy_chan_t   ctl;
    bool        ctl_open;
    int         mailbox[2];    /* [0] the worker reads, [1] every worker sends */
} wslot_t;

struct master_s {
    fy_conf_t  *conf;
    const char *conf_path;
    const char *pid_path;
    char        pid_buf[4096];
    fy_ev_t    *ev;
    fy_io_t     sigio;
    fy_timer_t  respawn_timer;
    int         fds[FY_CONF_MAX_LISTEN + 1];
    int         ports[FY_CONF_MAX_LISTEN + 1];
    uint8_t     kind[FY_CONF_MAX_LISTEN + 1];    /* enum fy_listen_kind */
    uint8_t     ticket_keys[FY_TLS_TICKET_KEYS]; /* TLS session tickets, shared by all workers */
    char        addrs[FY_CONF_MAX_LISTEN + 1][FY_ADDRSTRLEN];
    int         nfds;
    fy_shm_t    shm;
    int         nworkers;
    int         base;          /* this generation's first worker index (0 or 32) */
    wslot_t     workers[FY_SHM_MAX_WORKERS];
    bool        stopping;
    bool        winched;       /* WINCH: the workers were told to leave; do not replace them */
    char      **argv;
    int         inherited_up;  /* the channel to the old master, before the loop exists (-1) */
    /* binary upgrade (USR2): the channel between the two generations'
     * masters, and the other generation's mailboxes (-1 where none) */
    pid_t       new_master;
    bool        renamed_pid;   /* our pidfile is PIDFILE.oldbin */
    fy_chan_t   up;
    bool        up_open;
    int         foreign[FY_SHM_MAX_WORKERS];
    fy_timer_t  sweep_timer;   /* after a failed upgrade: clear what its workers held */
};

/* upgrade.c */
/* At start: take what an old master handed over (FERRY_INHERIT), if any.
 * FY_OK (nothing or all taken), FY_ERR with err filled. */
int fy__master_inherit(master_t *m, char *err, size_t errlen) FY_MUST_USE;
/* After the workers started: tell the old master where our mailboxes are. */
void fy__master_announce(master_t *m);
/* USR2: start the new binary with the listen sockets and the table. */
void fy__master_upgrade(master_t *m);
/* The new master exited (status from waitpid): the old one goes on. */
void fy__master_upgrade_failed(master_t *m, int status);
/* Hand the other generation's mailboxes to worker ws (all of them if NULL). */
void fy__master_share_foreign(master_t *m, int only_index);

#endif
