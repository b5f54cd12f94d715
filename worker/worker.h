/*
 * worker.h: a ferryd worker: one epoll loop that accepts end users and
 * agents, routes each request to its tunnel and carries it over the agent's
 * tunnel connection. This build runs one worker; the tunnel table is local
 * to it (worker/tunnels.c) until the shared-memory table of DESIGN.md lands.
 *
 * Objects:
 *   fy_tunnel_t     a tunnel id, held by one agent session, 1..4 connections
 *   fy_agentconn_t  one agent WebSocket (a fy_tun_t) and the streams on it
 *   fy_client_t     one end-user connection; while it talks to a tunnel it
 *                   is also that stream (one stream per end-user connection)
 */
#ifndef FY_WORKER_H
#define FY_WORKER_H

#include "fy.h"
#include "buf/buf.h"
#include "conf/conf.h"
#include "ev/ev.h"
#include "http1/http1.h"
#include "master/config.h"
#include "net/net.h"
#include "tun/tun.h"
#include "worker/auth.h"
#include "worker/chan.h"
#include "shm/table.h"
#include "tls/tls.h"

#include <sys/socket.h>
#include <time.h>

#define FY_TUNNEL_MAX_CONNS 4
#define FY_SESSION_MAX 64
#define FY_PIPELINE_MAX 16        /* requests in flight on one connection */
#define FY_MAX_HOPS 4             /* handoffs of a connection between two answered requests */

/* What the access log needs of a request until its response is done. */
typedef struct fy_access_s {
    uint64_t start;              /* ms */
    char     method[16];
    char     path[160];          /* the target as sent, cut at 160 bytes */
    char     tunnel[FY_ID_MAX + 1];
    uint8_t  method_len;
    uint16_t path_len;
    bool     handoff;
} fy_access_t;

typedef struct fy_worker_s fy_worker_t;
typedef struct fy_tunnel_s fy_tunnel_t;
typedef struct fy_agentconn_s fy_agentconn_t;
typedef struct fy_client_s fy_client_t;
typedef struct fy_acl_s fy_acl_t;
typedef struct fy_listener_s fy_listener_t;
typedef struct fy_cluster_s fy_cluster_t;

struct fy_listener_s {
    fy_io_t       io;
    fy_worker_t  *w;
    int           port;
    bool          admin;
    bool          tls;             /* HTTPS: the hello stage, then a TLS pump (tls.c) */
    bool          paused;          /* out of the epoll set for a moment (on_accept) */
};

/* The tunnels that have connections on this worker (the host-wide view is
 * the shared-memory table). */
struct fy_tunnel_s {
    fy_tunnel_t    *hnext;
    char            id[FY_ID_MAX + 1];
    char            session[FY_SESSION_MAX + 1];
    char            holder[FY_AUTH_HOLDER_MAX + 1]; /* the token that holds it ("" with auth off) */
    fy_agentconn_t *conns[FY_TUNNEL_MAX_CONNS];
    unsigned        nconns;
    unsigned        rr;              /* round-robin cursor over conns */
    uint32_t        nstreams;
    bool            basic_auth;      /* the agent asked end users for credentials (--basic-auth) */
    uint8_t         basic_digest[32];/* keyed BLAKE2b of "USER:PASS"; the password itself is not kept */
    uint32_t        slot;            /* its slot in the shared table (for counters) */
    uint32_t        slot_epoch;      /* the table's epoch when slot was looked up */
};

struct fy_agentconn_s {
    fy_tun_t        tun;
    fy_worker_t    *w;
    fy_tunnel_t    *tunnel;
    fy_agentconn_t *next, *prev;     /* worker's list of agent connections */
    bool            ready;           /* HELLO received, READY sent */
    bool            draining;        /* GOAWAY sent: no new streams */
    uint32_t        next_stream;
    fy_client_t   **buckets;         /* stream id -> client, chained by snext */
    uint32_t        nbuckets;
    uint32_t        nstreams;
    fy_timer_t      timer;           /* heartbeat watchdog */
    uint32_t        serial;          /* this worker's number for it (shared-table owner) */
    int             port;            /* listener port the agent came in on */
    bool            tls;             /* ... and whether over TLS (its public URL is https) */
    char            addr[FY_ADDRSTRLEN];
};

enum fy_client_state {
    FY_C_HEAD = 0,    /* reading a request head */
    FY_C_BODY,        /* forwarding a request body */
    FY_C_WAIT,        /* next request waits for the responses in flight */
    FY_C_UPGRADE,     /* upgrade request sent, waiting for 101 or not */
    FY_C_TUNNEL,      /* after 101: raw bytes both ways */
    FY_C_DONE,        /* no more requests: finish responses, then close */
    FY_C_REGISTER,    /* agent upgrade: waiting for the master to register the tunnel */
    FY_C_TUNNEL_WAIT, /* the named tunnel is not connected: waiting up to tunnel_wait */
    FY_C_HANDOFF,     /* the owner's mailbox was full: retrying the handoff */
    FY_C_VERIFY,      /* basic auth credentials are being checked off the loop (acl.c) */
    FY_C_LOOKUP,      /* the tunnel is not on this host: asking the cluster directory (cluster.c) */
};

/* What an agent upgrade needs once the master has answered. */
typedef struct fy_pending_agent_s {
    char     id[FY_ID_MAX + 1];
    char     session[FY_SESSION_MAX + 1];
    char     holder[FY_AUTH_HOLDER_MAX + 1];
    char     accept[29];
    size_t   head_len;
    uint32_t serial;       /* the REGISTER request's */
    uint32_t conn;         /* the agent connection's serial */
} fy_pending_agent_t;

enum fy_resp_state {
    FY_R_HEAD = 0, FY_R_LENGTH, FY_R_CHUNKED, FY_R_CLOSE, FY_R_TUNNEL,
};

struct fy_client_s {
    fy_io_t          io;
    fy_timer_t       timer;
    fy_task_t        free_task;
    fy_worker_t     *w;
    uint64_t         serial;          /* unique in the worker: names it to the verifier thread */
    int              verified;        /* result of the credential check for the head in `in`: 0 none, 1 ok, 2 no */
    uint8_t          verified_key[32];/* ... for these credentials (the cache key) */
    bool             prejudged;       /* the first request was judged by the worker that handed it over */
    bool             judged_ok;       /* the head in `in` passed the access rules here */
    bool             from_node;       /* the head in `in` came from another cluster node (MAC checked) */
    fy_client_t     *next, *prev;     /* worker's list */
    bool             closed;
    bool             admin;
    bool             peer_eof;
    bool             blocked;         /* waiting for stream or connection credit */
    bool             linger;          /* final response written: draining input before close */
    bool             tls;             /* the plaintext of a TLS session (tls.c): X-Forwarded-Proto https */
    char             sni_id[FY_ID_MAX + 1];   /* the tunnel the TLS SNI named, or "" */
    enum fy_client_state state;
    int              port;            /* the listener's */
    struct sockaddr_storage peer;
    char             peer_ip[FY_ADDRSTRLEN];
    char             peer_addr[FY_ADDRSTRLEN];
    uint64_t         head_started;    /* ms: first byte of the current head, 0 if none */
    uint64_t         last_active;     /* ms */
    fy_buf_t         in;              /* from the end user */
    fy_buf_t         out;             /* to the end user */
    size_t           out_unscanned;   /* tail of out not yet framed (response parser) */
    size_t           out_credit;      /* bytes of out that came from the stream (owed credit) */
    fy_pipe_t       *pipe;            /* spliced body bytes to the end user, ahead of out (or NULL) */
    /* request side */
    uint64_t         body_left;
    bool             body_chunked;
    fy_h1_chunked_t  chunked;
    /* the stream, while attached to a tunnel */
    fy_agentconn_t  *ac;
    fy_client_t     *snext;
    uint32_t         sid;
    fy_mux_credit_t  credit;
    bool             fin_rx;          /* agent sent FIN */
    bool             fin_tx;          /* we sent FIN */
    bool             svc_keep;        /* neither side of the service connection asked to close it */
    char             tunnel_id[FY_ID_MAX + 1];
    /* response side */
    enum fy_resp_state rstate;
    uint64_t         rbody_left;
    fy_h1_chunked_t  rchunked;
    unsigned         pending;         /* requests sent whose final response has not fully arrived */
    uint64_t         head_bits;       /* bit i: pending request i (oldest = bit 0) was HEAD */
    uint64_t         upgrade_bits;    /* bit i: pending request i asked to upgrade */
    bool             resp_started;    /* bytes of the current response have arrived */
    bool             close_after;     /* close once the responses in flight are written */
    bool             asked_close;     /* the request being read said Connection: close */
    bool             read_whole;      /* ... and it was read whole, body and all */
    bool             accepted_here;   /* io.fd is the socket's only descriptor (not handed over to us) */
    uint64_t         waiting_since;   /* ms: request sent and no response byte yet (0 = not waiting) */
    uint64_t         wait_until;      /* ms: FY_C_TUNNEL_WAIT / FY_C_HANDOFF deadline */
    uint16_t         hops;            /* times this connection was handed over */
    int              handoff_to;      /* FY_C_HANDOFF: the target worker */
    fy_pending_agent_t *reg;          /* FY_C_REGISTER */
    fy_access_t     *acc;             /* ring of FY_PIPELINE_MAX, oldest pending first (lazily allocated) */
    unsigned         acc_head;        /* index of the oldest pending request */
    uint64_t         resp_bytes;      /* bytes of the current response so far */
    const fy_h1_request_t *err_req;   /* while answering an error for a parsed request */
    const char      *err_tunnel;      /* and the tunnel it named, if any */
    int              resp_status;
};

struct fy_worker_s {
    fy_ev_t         *ev;
    fy_conf_t       *conf;
    int              index;
    int              base;            /* this generation's first worker index */
    int              nworkers;
    fy_shm_t         shm;
    fy_shm_worker_t *rec;             /* this worker's record in the shared region */
    fy_chan_t        ctl;             /* to the master */
    fy_io_t          mailbox;         /* handoffs to this worker */
    int              mailbox_send[FY_SHM_MAX_WORKERS];   /* by worker index, -1 if unknown */
    uint8_t         *mailbox_buf;
    size_t           mailbox_cap;
    uint32_t         conn_serial, reg_serial;
    unsigned         rr;
    unsigned         accepted_local;  /* connections accepted here whose tunnel is here ... */
    unsigned         accepted_moved;  /* ... or was handed to its owner (on_accept; decaying) */
    fy_timer_t       accept_timer;    /* paused listeners listen again */
    fy_timer_t       retry_timer;     /* handoff retries and tunnel_wait expiry */
    char            *access_buf;      /* access log lines not yet written */
    char             access_ts[32];   /* the access log's time stamp ... */
    time_t           access_sec;      /* ... formatted for this second */
    size_t           access_len;
    fy_timer_t       access_timer;
    SSL_CTX         *tls_ctx;         /* listen_tls: the relay's context (tls.c), NULL without */
    uint8_t          ticket_keys[FY_TLS_TICKET_KEYS];   /* the master's: every worker resumes every session */
    uint32_t         nhellos;         /* TLS connections in the hello stage */
    uint8_t          digest_key[32];  /* for keyed BLAKE2b digests of credentials (random per process) */
    fy_acl_t        *acl;             /* the access rules' verifier */
    uint64_t         client_serial;
    fy_listener_t    listeners[FY_CONF_MAX_LISTEN + 1];
    int              nlisteners;
    fy_tunnel_t    **tunnels;         /* hash buckets */
    uint32_t         ntbuckets;
    uint32_t         ntunnels;
    fy_agentconn_t  *agents;
    fy_client_t     *clients;
    uint32_t         nclients;
    uint32_t         nparked;         /* clients in REGISTER, TUNNEL_WAIT or HANDOFF */
    bool             draining;
    uint64_t         drain_deadline;
    fy_io_t          sigio;
    fy_timer_t       drain_timer;
    fy_cluster_t    *cluster;         /* the directory reader (cluster.c), NULL without cluster: */
};

/* What the master gives a worker it forks. */
typedef struct fy_worker_setup_s {
    fy_conf_t *conf;
    int        index;       /* absolute: base + the worker's number */
    int        base;        /* this generation's first index */
    int        nworkers;
    int        nfds;
    int        fds[FY_CONF_MAX_LISTEN + 1];
    int        ports[FY_CONF_MAX_LISTEN + 1];
    uint8_t    kind[FY_CONF_MAX_LISTEN + 1];   /* enum fy_listen_kind */
    uint8_t    ticket_keys[FY_TLS_TICKET_KEYS];
    int        shm_fd;
    int        ctl_fd;
    int        mailbox_recv[FY_SHM_MAX_WORKERS];   /* by index, -1 if none; the worker keeps only its own */
    int        mailbox_send[FY_SHM_MAX_WORKERS];   /* by index, -1 if none */
} fy_worker_setup_t;

/* worker.c */
int fy_worker_main(const fy_worker_setup_t *setup);
/* Ask the master to add or remove a tunnel owner. */
int fy_worker_register(fy_worker_t *w, const fy_pending_agent_t *p, const char *addr) FY_MUST_USE;
void fy_worker_unregister(fy_worker_t *w, const char *id, uint32_t conn);
/* Hand c over to worker target (c is gone afterwards, or parked to retry). */
void fy_worker_handoff(fy_worker_t *w, fy_client_t *c, int target);
/* Re-examine parked clients (a tunnel came up, a deadline passed). */
void fy_worker_wake(fy_worker_t *w, const char *id);
/* Another worker holding tunnel id (taken in turn), or -1. */
int fy_worker_owner_elsewhere(fy_worker_t *w, const char *id);
/* A worker that is not draining and can take connections (another
 * generation's, during an upgrade): its index, or -1. */
int fy_worker_successor(fy_worker_t *w);
/* Make sure the parked clients are looked at again soon (never recurses). */
void fy_worker_arm_retry(fy_worker_t *w);
static inline void fy_worker_count_error(fy_worker_t *w, int idx)
{
    atomic_fetch_add_explicit(&w->rec->errors[idx], 1, memory_order_relaxed);
}
/* Traffic of a tunnel (its shared slot) and of this worker. */
static inline void fy_worker_count(fy_worker_t *w, fy_tunnel_t *t, uint64_t requests, uint64_t in, uint64_t out)
{
    uint32_t epoch = atomic_load_explicit(&w->shm.hdr->epoch, memory_order_acquire);
    if (t->slot_epoch != epoch) {
        fy_shm_entry_t e;
        if (!(epoch & 1) && fy_shm_lookup(&w->shm, t->id, &e)) {
            t->slot = e.index;
            t->slot_epoch = epoch;
        }
    }
    if (t->slot_epoch == epoch)
        fy_shm_count(&w->shm, t->slot, requests, in, out);
    if (requests)
        atomic_fetch_add_explicit(&w->rec->requests, requests, memory_order_relaxed);
    if (in)
        atomic_fetch_add_explicit(&w->rec->bytes_in, in, memory_order_relaxed);
    if (out)
        atomic_fetch_add_explicit(&w->rec->bytes_out, out, memory_order_relaxed);
}

/* tunnels.c: the worker's tunnel table. */
fy_tunnel_t *fy_tunnel_find(fy_worker_t *w, const char *id);
fy_tunnel_t *fy_tunnel_add(fy_worker_t *w, const char *id, const char *session, const char *holder);
void fy_tunnel_remove(fy_worker_t *w, fy_tunnel_t *t);

/* agentconn.c */
/* Handle a request under agent_path on client c (upgrade or plain GET). */
void fy_agentconn_request(fy_client_t *c, const fy_h1_request_t *req, const char *id, size_t id_len);
/* Pick a connection of t for a new stream (NULL: none ready). */
fy_agentconn_t *fy_agentconn_pick(fy_tunnel_t *t);
/* A connection that was sent GOAWAY but still serves: only when nothing
 * can take over (a plain shutdown), never during an upgrade, where the
 * agent may close it as soon as its replacement is ready. */
fy_agentconn_t *fy_agentconn_pick_draining(fy_tunnel_t *t);
/* Attach client c as a new stream of ac (sends OPEN). FY_OK or FY_ERR. */
int fy_agentconn_open_stream(fy_agentconn_t *ac, fy_client_t *c) FY_MUST_USE;
/* Detach c's stream from its connection (RST with code unless 0). */
void fy_agentconn_end_stream(fy_client_t *c, uint32_t code);
void fy_agentconn_goaway_all(fy_worker_t *w);
/* An agent connection counted at its upgrade did not come to be. */
void fy_agentconn_unreserve(fy_worker_t *w);
/* The master answered c's registration (enum fy_shm_add). */
void fy_agentconn_registered(fy_client_t *c, int result);

/* client.c */
void fy_client_accept(fy_worker_t *w, fy_listener_t *l, int fd, const struct sockaddr_storage *peer);
/* Take over a connection handed over by another worker, with the bytes it read. */
void fy_client_adopt(fy_worker_t *w, int fd, const fy_handoff_hdr_t *h, const uint8_t *bytes);
/* Continue a parked client (registration answer, tunnel up, retry). */
void fy_client_resume(fy_client_t *c);
/* Called when the handoff of c could not be done: answers 503. */
void fy_client_handoff_failed(fy_client_t *c);
/* Stream events from the agent side. */
void fy_client_on_data(fy_client_t *c, const uint8_t *p, size_t n);
/* Splicing a response body (tun.h splice_pipe, on_spliced). */
fy_pipe_t *fy_client_splice_pipe(fy_client_t *c, size_t *max);
void fy_client_on_spliced(fy_client_t *c, size_t n);
/* Bytes still to be written to the end user (pipe or out). */
bool fy_client_out_pending(const fy_client_t *c);
void fy_client_on_fin(fy_client_t *c);
void fy_client_on_rst(fy_client_t *c, uint32_t code, const char *msg, size_t len);
void fy_client_on_credit(fy_client_t *c);
/* Queue a small error response; closes after it unless keep is true. */
void fy_client_error(fy_client_t *c, bool keep, int status, const char *code, const char *fmt, ...) FY_PRINTF(5, 6);
void fy_client_respond(fy_client_t *c, int status, const char *ctype, const char *extra_headers,
                       const char *body, size_t blen, bool keep);
void fy_client_close(fy_client_t *c);
/* Give the fd and leftover bytes of c to someone else; c is freed. */
int fy_client_detach_fd(fy_client_t *c);

/* route.c */
/* Resolve the tunnel id of a request per route_order. Returns FY_OK with id
 * filled (and *via set), or FY_ERR when the request names none. */
enum fy_route_via { FY_VIA_NONE = 0, FY_VIA_HOST, FY_VIA_PATH, FY_VIA_HEADER, FY_VIA_QUERY, FY_VIA_DEFAULT };
int fy_route_resolve(const fy_worker_t *w, const fy_h1_request_t *req, char *id, enum fy_route_via *via);
/* True when the Host names a tunnel ({id}.{domain}). */
bool fy_route_host_names_tunnel(const fy_worker_t *w, const fy_h1_request_t *req);
/* The tunnel a host name (port and a final dot allowed) names as {id}.{domain}. */
int fy_route_host_id(const fy_worker_t *w, const char *h, size_t n, char *id);
bool fy_route_misdirected(const fy_worker_t *w, const fy_client_t *c, const fy_h1_request_t *req);
/* Write the head to forward into out[cap]: path rewritten for path routing,
 * client X-Tunnel-Id/X-Forwarded-* dropped, ours added. Returns the length
 * or FY_ERR if it does not fit. */
ssize_t fy_route_rewrite(const fy_worker_t *w, const fy_client_t *c, const fy_h1_request_t *req,
                         const char *id, enum fy_route_via via, uint8_t *out, size_t cap);

/* access.c */
int fy_access_init(fy_worker_t *w);
void fy_access_note(fy_access_t *a, uint64_t now, const fy_h1_request_t *req, const char *tunnel, bool handoff);
void fy_access_log(fy_worker_t *w, const fy_client_t *c, const fy_access_t *a, int status, uint64_t bytes,
                   const char *err_code);
void fy_access_flush(fy_worker_t *w);
/* A ring of FY_PIPELINE_MAX notes for a connection's pending requests, from
 * a small per-process cache (NULL if out of memory), and back. */
fy_access_t *fy_access_ring_get(void);
void fy_access_ring_put(fy_access_t *ring);

/* acl.c: access rules (SPEC.md access:) */
enum { FY_ACL_OK = 0, FY_ACL_DENY, FY_ACL_AUTH, FY_ACL_PENDING, FY_ACL_BUSY };
int fy_acl_start(fy_worker_t *w) FY_MUST_USE;
void fy_acl_stop(fy_worker_t *w);
bool fy_acl_applies(const fy_conf_t *conf, const char *id);
/* Judge a request for tunnel id: FY_ACL_PENDING parks it until the
 * verifier answers (then it is judged again with the answer). */
int fy_acl_check(fy_client_t *c, const fy_h1_request_t *req, const char *id);

/* tls.c: HTTPS listeners. */
void fy_tls_accept(fy_worker_t *w, fy_listener_t *l, int fd, const struct sockaddr_storage *peer);
/* A raw TLS socket handed over for its SNI: do the handshake here. */
void fy_tls_adopt_raw(fy_worker_t *w, int fd, const fy_handoff_hdr_t *h);
/* Terminate TLS on fd here; the plaintext becomes a client connection. */
void fy_tls_terminate(fy_worker_t *w, int fd, int port, const struct sockaddr_storage *peer, const char *sni_id);
/* (Re)build the worker's context from conf (kept as it was on failure). */
int fy_tls_load(fy_worker_t *w, const fy_conf_t *conf) FY_MUST_USE;
/* Can conf's certificate and key be loaded? (-t, start, reload) */
int fy_tls_check(const fy_conf_t *conf, char *err, size_t errlen) FY_MUST_USE;

/* admin.c */
void fy_admin_request(fy_client_t *c, const fy_h1_request_t *req);

/* error codes for /metrics (index into fy_worker_t.errors) */
int fy_error_index(const char *code);
extern const char *const fy_error_codes[];

#endif
