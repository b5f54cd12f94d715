/*
 * chan.h: the two kinds of channel between ferryd's processes (DESIGN.md
 * "The handoff"), both AF_UNIX SOCK_SEQPACKET socketpairs made by the
 * master: a message boundary per sendmsg, and on a short read no chance of
 * picking up the next message's fds.
 *
 *  - control (one per worker, master <-> worker): fixed-size fy_ctl_msg_t
 *    messages: register/unregister a tunnel owner (the master is the
 *    table's only writer), and "tunnel X is up" broadcasts.
 *  - mailbox (one per worker, any worker -> its owner): a connection handed
 *    over, as one message: fy_handoff_hdr_t, the bytes already read, and the
 *    socket in SCM_RIGHTS. The master keeps every mailbox's receiving end
 *    open, so what is queued for a worker that dies waits for its
 *    replacement.
 */
#ifndef FY_CHAN_H
#define FY_CHAN_H

#include "fy.h"
#include "buf/buf.h"
#include "ev/ev.h"
#include "shm/table-t.h"

#include <sys/socket.h>

enum fy_ctl_type {
    FY_CTL_REGISTER = 1,   /* worker -> master: add an owner of id */
    FY_CTL_REGISTERED,     /* master -> worker: result (enum fy_shm_add) for serial */
    FY_CTL_UNREGISTER,     /* worker -> master: remove an owner of id */
    FY_CTL_TUNNEL_UP,      /* master -> workers: id gained an owner (wake tunnel_wait) */
    FY_CTL_RELOAD,         /* master -> workers: fds[0] = the validated config (memfd), then the
                            * listen sockets; ports[]/kind[] describe them */
    FY_CTL_MAILBOXES,      /* master -> workers, and new master -> old master during an upgrade:
                            * the other generation's mailboxes; fds[k] is worker ports[k]'s */
};

#define FY_CTL_MAX_FDS 18      /* the config, and up to 16 listeners plus admin */

typedef struct fy_ctl_msg_s {
    uint32_t type;
    uint32_t serial;       /* the worker's request serial, echoed */
    int32_t  result;
    uint32_t conn;         /* the worker's agent-connection serial */
    uint16_t worker;
    uint16_t pad;
    uint32_t pad2;
    char     id[FY_SHM_ID_LEN];
    char     session[FY_SHM_TOKEN_LEN];
    char     holder[FY_SHM_TOKEN_LEN];
    char     addr[64];
    uint16_t ports[FY_CTL_MAX_FDS];
    uint8_t  kind[FY_CTL_MAX_FDS];   /* enum fy_listen_kind */
    uint32_t nfds;
} fy_ctl_msg_t;

typedef struct fy_chan_s fy_chan_t;
/* A message arrived; fds (nfds of them) are the callee's to keep or close. */
typedef void (*fy_chan_cb)(fy_chan_t *ch, const fy_ctl_msg_t *m, int *fds, int nfds);

/* One end of a control channel with its outgoing queue (bounded). */
struct fy_chan_s {
    fy_io_t    io;
    fy_ev_t   *ev;
    fy_buf_t   out;
    fy_chan_cb on_msg;
    void     (*on_close)(fy_chan_t *ch);
    void      *data;
    bool       closed;
};

/* Start using fd (non-blocking SEQPACKET) on ev. */
int fy_chan_open(fy_chan_t *ch, fy_ev_t *ev, int fd, fy_chan_cb on_msg, void (*on_close)(fy_chan_t *), void *data) FY_MUST_USE;
/* Queue a message (sent at once if the socket takes it). FY_ERR if the queue is over its bound. */
int fy_chan_send(fy_chan_t *ch, const fy_ctl_msg_t *m);
/* Send a message with fds now (duplicated into the receiver). Only when the
 * queue is empty: FY_ERR otherwise, or if the socket does not take it. */
int fy_chan_send_fds(fy_chan_t *ch, const fy_ctl_msg_t *m, const int *fds, int nfds);
void fy_chan_close(fy_chan_t *ch);

/* Handoff message header. */
#define FY_HANDOFF_MAGIC 0x48414e44u  /* "HAND" */
#define FY_HANDOFF_F_JUDGED 1u        /* the first request passed the access rules */
#define FY_HANDOFF_F_TLS 2u           /* plaintext of a TLS session the sender terminates (a pump) */
#define FY_HANDOFF_F_TLS_RAW 4u       /* a TLS socket before its handshake: the receiver terminates it */
typedef struct fy_handoff_hdr_s {
    uint32_t                magic;
    uint16_t                hops;     /* handoffs so far: a connection moves at most twice */
    uint16_t                port;     /* the listener it came in on */
    uint32_t                len;      /* bytes already read, following this header */
    uint32_t                flags;    /* FY_HANDOFF_F_* */
    struct sockaddr_storage peer;
    char                    sni_id[FY_SHM_ID_LEN];   /* the tunnel the TLS SNI named, or "" */
} fy_handoff_hdr_t;

/* Make a SEQPACKET socketpair (non-blocking, CLOEXEC) with big buffers. */
int fy_chan_pair(int fds[2]);

/* Send one handoff: hdr + bytes + fd. FY_OK (the receiver owns the fd now;
 * close ours), FY_AGAIN (mailbox full: we still own it), FY_ERR. */
int fy_handoff_send(int mailbox, const fy_handoff_hdr_t *h, const void *bytes, int fd);

/* Receive one handoff into buf[cap] (hdr then bytes); *fd gets the socket.
 * Returns the total message length, FY_AGAIN when none is waiting, or
 * FY_ERR for a malformed message (any fd received is closed). */
ssize_t fy_handoff_recv(int mailbox, void *buf, size_t cap, int *fd);

#endif
