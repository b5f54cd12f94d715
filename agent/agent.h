/*
 * agent.h: ferry, the agent. One epoll loop; one session (the agent
 * process, one Ferry-Session id); per tunnel 1..4 tunnel connections to the
 * relay (each a WebSocket carrying mux frames, see common/tun); per stream
 * a non-blocking connection to one upstream of the tunnel's failover set,
 * with bytes spliced both ways under credit flow control. Beside them: the
 * local API (api.c, ngrok's JSON on 127.0.0.1:4040), the config file
 * (config.c), the live terminal status block (status.c) and the logs
 * (alog.c).
 */
#ifndef FY_AGENT_H
#define FY_AGENT_H

#include "fy.h"
#include "buf/buf.h"
#include "conf/conf.h"
#include "ev/ev.h"
#include "http1/http1.h"
#include "net/net.h"
#include "tun/tun.h"
#include "tls/tls.h"

#include <sys/socket.h>

#define FY_AGENT_MAX_CONNS 4
#define FY_AGENT_PING_MS   10000
#define FY_AGENT_DEAD_MS   20000
#define FY_AGENT_STABLE_MS 10000     /* a connection up this long resets the backoff */
#define FY_AGENT_MAX_UPSTREAMS 16
#define FY_AGENT_CONNECT_MS 10000    /* connecting to an upstream takes at most this long */
#define FY_AGENT_SAMPLES   1028      /* durations kept for percentiles (as go-metrics) */
#define FY_AGENT_IDLE_MAX  64        /* idle connections kept per upstream (relay said RST idle) */
#define FY_AGENT_IDLE_MS   1000      /* ... for at most this long: under every usual keep-alive timeout */

typedef struct fy_agent_s fy_agent_t;
typedef struct fy_atunnel_s fy_atunnel_t;
typedef struct fy_tconn_s fy_tconn_t;
typedef struct fy_astream_s fy_astream_t;
typedef struct fy_api_s fy_api_t;
typedef struct fy_status_s fy_status_t;

/* ------------------------------------------------------------------------
 * json.c: a small JSON reader (to a tree) and writer. The config file's
 * YAML is read into the same tree (config.c), so one set of functions turns
 * either into a tunnel definition.
 */
enum fy_jtype { FY_J_NULL = 0, FY_J_BOOL, FY_J_NUM, FY_J_STR, FY_J_ARR, FY_J_OBJ };

typedef struct fy_jnode_s fy_jnode_t;
struct fy_jnode_s {
    enum fy_jtype type;
    char         *key;       /* member name inside an object, else NULL (owned) */
    char         *s;         /* scalars: decoded string, number as written, "true"/"false"; NUL-terminated (owned) */
    size_t        slen;
    unsigned      line;      /* 1-based line in a YAML file; 0 in JSON */
    fy_jnode_t   *kids;      /* array items or object members, in order (owned) */
    fy_jnode_t   *next;
};

/*
 * Parse one JSON value filling p[0..n) (whitespace around it allowed).
 * Returns an owned tree (free with fy_jnode_free), or NULL with err set
 * (syntax error, nesting over 32 levels, out of memory).
 */
fy_jnode_t *fy_json_parse(const char *p, size_t n, char *err, size_t errlen);
fy_jnode_t *fy_jnode_new(enum fy_jtype type, const char *s, size_t slen);
void fy_jnode_free(fy_jnode_t *n);
/* The last member of object obj named key (later keys override), or NULL. Borrows. */
const fy_jnode_t *fy_jnode_get(const fy_jnode_t *obj, const char *key);
/* The text of a string, number or boolean node; NULL for anything else. */
const char *fy_jnode_scalar(const fy_jnode_t *n);

/* Writer: appends to b (bounded by max); err is set once anything did not fit. */
typedef struct fy_jw_s {
    fy_buf_t *b;
    size_t    max;
    bool      err;
    bool      after_key;
    int       depth;
    bool      first[16];
} fy_jw_t;

void fy_jw_init(fy_jw_t *w, fy_buf_t *b, size_t max);
void fy_jw_obj(fy_jw_t *w);
void fy_jw_obj_end(fy_jw_t *w);
void fy_jw_arr(fy_jw_t *w);
void fy_jw_arr_end(fy_jw_t *w);
void fy_jw_key(fy_jw_t *w, const char *k);
void fy_jw_str(fy_jw_t *w, const char *s);
void fy_jw_strn(fy_jw_t *w, const char *s, size_t n);
void fy_jw_u64(fy_jw_t *w, uint64_t v);
void fy_jw_dbl(fy_jw_t *w, double v);
void fy_jw_bool(fy_jw_t *w, bool v);
void fy_jw_null(fy_jw_t *w);
/* Append raw bytes (no separator logic): for whole documents. */
void fy_jw_raw(fy_jw_t *w, const char *s);

/* ------------------------------------------------------------------------
 * config.c: the agent's YAML config (ngrok v2's shape plus ferry's keys).
 */
typedef struct fy_upcfg_s {
    char     url[300];
    unsigned priority;
    unsigned weight;
} fy_upcfg_t;

/* One tunnel definition: from the config file, the command line or a POST. */
typedef struct fy_tcfg_s {
    char       name[64];
    char       id[FY_ID_MAX + 1];       /* "" = a random one */
    char       host_header[256];        /* "", "preserve", "rewrite" or the value to send */
    char       basic_auth[256];         /* "USER:PASS" or "" */
    unsigned   connections;             /* 1..4 */
    fy_upcfg_t ups[FY_AGENT_MAX_UPSTREAMS];
    unsigned   nups;
    unsigned   health_failures;         /* failures that mark an upstream unhealthy */
    uint64_t   recovery_ms;             /* probe period of an unhealthy upstream */
    char       health_path[256];
    /* A config-file tunnel ferry cannot run: an error only if it is started. */
    bool       not_http;                /* proto: tcp, tls, ... (ngrok's other kinds) */
    char       err[400];
} fy_tcfg_t;

typedef struct fy_acfg_s {
    char       authtoken[1024];
    bool       has_authtoken;
    char       server_addr[400];
    char       server_ca[512];
    char       web_addr[128];           /* "" = the default; "false" = no local API */
    uint64_t   reconnect_ms;            /* backoff base */
    uint64_t   max_interval_ms;
    bool       backoff;
    int        console_ui;              /* -1 unset, 0 off, 1 on */
    char       log[512];
    char       log_format[16];
    char       log_level[16];
    fy_tcfg_t *tunnels;                 /* owned */
    unsigned   ntunnels;
} fy_acfg_t;

/* Defaults for a tunnel definition named name. */
void fy_tcfg_init(fy_tcfg_t *t, const char *name);
/*
 * Fill t from a tree of config keys (proto, addr, subdomain, hostname,
 * host_header, auth/basic_auth, connections, upstreams, health); unknown
 * keys are ignored. where prefixes error messages. FY_OK or FY_ERR (err).
 */
int fy_tcfg_from_tree(fy_tcfg_t *t, const fy_jnode_t *n, const char *where, char *err, size_t errlen) FY_MUST_USE;
/* Set the id from "ID", "ID.domain" or a URL whose first label is ID. */
int fy_tcfg_set_id(fy_tcfg_t *t, const char *v) FY_MUST_USE;
void fy_acfg_init(fy_acfg_t *c);
/*
 * Read one config file over c (later files override earlier ones; tunnels
 * of the same name are replaced). A missing file is FY_AGAIN (not an
 * error: the caller decides); a malformed one FY_ERR with err set.
 */
int fy_acfg_load(fy_acfg_t *c, const char *path, char *err, size_t errlen) FY_MUST_USE;
const fy_tcfg_t *fy_acfg_tunnel(const fy_acfg_t *c, const char *name);
void fy_acfg_free(fy_acfg_t *c);
/* ~/.config/ferry/ferry.yml ($XDG_CONFIG_HOME honoured) into out. */
void fy_acfg_default_path(char *out, size_t n);
/* Write authtoken into the file at path (created with its directory if
 * missing; other lines kept). FY_OK or FY_ERR (err). */
int fy_acfg_save_authtoken(const char *path, const char *token, char *err, size_t errlen) FY_MUST_USE;

/* ------------------------------------------------------------------------
 * metrics.c: ngrok's tunnel metrics: counters with 1/5/15-minute rates
 * (EWMA ticked every 5 s, as go-metrics) and duration percentiles.
 */
#define FY_METER_TICK_MS 5000

typedef struct fy_meter_s {
    uint64_t count;
    uint64_t uncounted;
    double   r1, r5, r15;       /* events per second */
    bool     init;
} fy_meter_t;

typedef struct fy_sample_s {
    double   v[FY_AGENT_SAMPLES];   /* nanoseconds, as ngrok reports them */
    unsigned n, next;
} fy_sample_t;

void fy_meter_mark(fy_meter_t *m, uint64_t n);
void fy_meter_tick(fy_meter_t *m);
void fy_sample_add(fy_sample_t *s, double v);
/* p50, p90, p95, p99 into out[4] (0 with no sample). */
void fy_sample_pcts(const fy_sample_t *s, double out[4]);

/* ------------------------------------------------------------------------
 * probe.c: a one-shot HTTP GET on its own connection (the session check
 * against the relay, and upstream health probes).
 */
typedef struct fy_probe_s fy_probe_t;
/* status > 0: the answer's status and body (borrowed); status 0: err says why. */
typedef void (*fy_probe_cb)(fy_probe_t *p, int status, const char *body, size_t blen, const char *err);

struct fy_probe_s {
    fy_ev_t    *ev;
    fy_io_t     io;
    fy_timer_t  timer;
    fy_buf_t    buf;            /* the request going out, then the answer coming in */
    size_t      sent;
    bool        connected;
    bool        busy;
    char        target[280];    /* "host:port" for errors */
    fy_probe_cb cb;
    void       *data;
    SSL_CTX    *tls_ctx;        /* set by the caller: over TLS (the relay's wss://) */
    const char *tls_host;       /* ... to this name */
    fy_tls_pump_t *pump;        /* until its handshake is done */
    char        tls_err[256];   /* why the handshake failed */
};

/* Start a GET (req: the whole request, copied). FY_OK, or FY_ERR when it
 * could not even start (cb is not called then; errno set). */
int fy_probe_start(fy_probe_t *p, fy_ev_t *ev, const struct sockaddr *sa, socklen_t len, const char *target,
                   const char *req, size_t reqlen, uint64_t timeout_ms) FY_MUST_USE;
/* Abandon a running probe (cb not called). */
void fy_probe_cancel(fy_probe_t *p);

/* ------------------------------------------------------------------------
 * upstream.c: a tunnel's failover set and the health of each upstream.
 */
enum fy_ustatus { FY_U_UNKNOWN = 0, FY_U_HEALTHY, FY_U_UNHEALTHY };
extern const char *const fy_ustatus_names[];

typedef struct fy_upset_s fy_upset_t;

/* An idle connection to an upstream, kept for the next stream (upstream.c).
 * In place in its upstream, never freed on its own: an event of the same
 * loop iteration may still name its io. */
typedef struct fy_aidle_s {
    fy_io_t                io;
    struct fy_upstream_s  *u;
    uint64_t               since;
} fy_aidle_t;

typedef struct fy_upstream_s {
    fy_upset_t     *set;
    char            url[300];        /* "http://localhost:3000" */
    char            name[280];       /* "localhost:3000", in errors */
    char            host[280];       /* Host: a rewrite sends to it */
    struct sockaddr_storage sa;
    socklen_t       salen;
    unsigned        priority;
    unsigned        weight;
    int64_t         cw;              /* smooth weighted round-robin (nginx) */
    unsigned        failures;
    enum fy_ustatus status;
    char            last_error[512];
    uint64_t        streams;         /* streams it was chosen for */
    fy_probe_t      probe;
    fy_timer_t      probe_timer;
    fy_aidle_t      idle[FY_AGENT_IDLE_MAX];  /* idle keep-alive connections: a stack, idle[0..nidle) */
    unsigned        nidle;
    fy_timer_t      idle_timer;      /* closes those idle for FY_AGENT_IDLE_MS */
} fy_upstream_t;

struct fy_upset_s {
    fy_ev_t        *ev;
    const char     *tunnel;          /* the tunnel's name, for logs (borrowed) */
    fy_upstream_t   u[FY_AGENT_MAX_UPSTREAMS];
    unsigned        n;
    unsigned        max_failures;
    uint64_t        recovery_ms;
    char            path[256];
    int             pinned;          /* manual failover: index, or -1 */
};

/* Resolve host:port (IPv4 first). FY_OK or FY_ERR. */
int fy__resolve(const char *host, const char *port, struct sockaddr_storage *ss, socklen_t *len) FY_MUST_USE;
/* Split "scheme://host[:port][/path]" (host may be [v6]) into scheme[16],
 * host[256], port[8] (defport when absent) and path[256]. FY_OK or FY_ERR. */
int fy__split_url(const char *url, char *scheme, char *host, char *port, char *path,
                  const char *defport) FY_MUST_USE;
/* Parse PORT, HOST:PORT or http://HOST[:PORT] and resolve it. FY_OK or FY_ERR (err). */
int fy_upstream_parse(fy_upstream_t *u, const char *addr, char *err, size_t errlen) FY_MUST_USE;
/* Build the set of a tunnel definition. FY_OK or FY_ERR (err). */
int fy_upset_init(fy_upset_t *set, fy_ev_t *ev, const fy_tcfg_t *tc, const char *tunnel, char *err,
                  size_t errlen) FY_MUST_USE;
/* Stop probes (before the set is freed). */
void fy_upset_fini(fy_upset_t *set);
/* A connection to u the relay ended a stream on at a message boundary (RST
 * idle): keep it for a later stream (takes from's fd and registration;
 * closes it when the pool is full or it is not clean).
 * fy_upstream_take_idle: hand one over to `to` (fd set, in the loop for
 * EPOLLIN), or false when none is kept. */
void fy_upstream_keep_idle(fy_upstream_t *u, fy_io_t *from);
bool fy_upstream_take_idle(fy_upstream_t *u, fy_io_t *to);
/*
 * The upstream for a new stream or its next attempt: tried is the mask of
 * upstreams this stream already failed on. Returns an index, or -1 when
 * every upstream was tried. commit false only predicts (the API's "next").
 */
int fy_upset_pick(fy_upset_t *set, uint32_t tried, bool commit);
void fy_upset_success(fy_upset_t *set, int i);
void fy_upset_failure(fy_upset_t *set, int i, const char *err);
/* Mark healthy now, failure count 0 (the API's reset). */
void fy_upset_reset(fy_upset_t *set, int i);
/* Index of the upstream whose url (or host:port) is url, or -1. */
int fy_upset_find(const fy_upset_t *set, const char *url);
/* One JSON object per upstream, inside an array the caller opened (GET
 * .../upstreams; /api/status adds the tunnel's name to each). */
void fy_upset_json(fy_upset_t *set, fy_jw_t *w, const char *tunnel);

/* ------------------------------------------------------------------------
 * hostrw.c: request framing on a stream, to rewrite each request's Host
 * (--host-header rewrite or VALUE; otherwise the relay's HEAD flag on DATA
 * frames is all the agent needs to count requests).
 */
enum fy_rw_state { FY_RW_HEAD = 0, FY_RW_LENGTH, FY_RW_CHUNKED, FY_RW_RAW, FY_RW_OFF };

typedef struct fy_rw_s {
    enum fy_rw_state state;
    bool             upgrade;     /* the current request asks for an upgrade: raw bytes after it */
    uint64_t         left;        /* body bytes left (FY_RW_LENGTH) */
    fy_h1_chunked_t  ch;
} fy_rw_t;

/*
 * Rewrite: move bytes from raw to out, giving each request head the Host
 * host, while out stays under out_max. *heads counts the heads moved.
 * Returns FY_OK (raw may keep a partial head or what did not fit) or
 * FY_ERR (a head the parser refuses or over 64 KiB).
 */
int fy_rw_pump(fy_rw_t *rw, fy_buf_t *raw, fy_buf_t *out, size_t out_max, const char *host,
               unsigned *heads) FY_MUST_USE;

/* ------------------------------------------------------------------------
 * tunnels, connections, streams
 */
enum fy_astate { FY_A_DISCONNECTED = 0, FY_A_CONNECTING, FY_A_CONNECTED, FY_A_ERROR };
extern const char *const fy_astate_names[];

enum fy_tconn_state {
    FY_TC_CONNECTING = 0,  /* TCP connect in progress */
    FY_TC_TLS,             /* wss://: the TLS handshake (a pump, common/tls) */
    FY_TC_UPGRADE,         /* upgrade request sent, reading the answer */
    FY_TC_HELLO,           /* 101 received, HELLO sent, waiting for READY */
    FY_TC_READY,
};

enum fy_hh_mode { FY_HH_PRESERVE = 0, FY_HH_REWRITE, FY_HH_VALUE };

struct fy_astream_s {
    fy_astream_t   *hnext;
    fy_tconn_t     *tc;
    uint32_t        id;
    fy_io_t         io;
    fy_timer_t      timer;        /* connect deadline */
    fy_task_t       free_task;
    int             up;           /* index in the tunnel's upstream set */
    uint32_t        tried;        /* upstreams that refused this stream */
    bool            connected;
    bool            closed;
    bool            blocked;      /* no credit to send what the service writes */
    bool            fin_rx;       /* the relay sent FIN: shut the service's write side when out drains */
    bool            fin_tx;       /* we sent FIN (the service closed) */
    bool            shut_wr;
    bool            rewrite;      /* Host rewrite: relay bytes go through raw and rw */
    bool            sent_any;     /* the service got bytes from us */
    bool            reused;       /* on a kept connection (upstream.c) and no answer byte yet: */
    bool            replay_lost;  /* ... what was sent on it went past the replay buffer */
    fy_buf_t        replay;       /* ... the relay's bytes so far, sent again on a fresh connection
                                     if the kept one turns out closed before answering */
    uint64_t        opened_at;    /* ms */
    uint64_t        req_at;       /* ms: a request head went out and awaits its first answer byte; 0 none */
    uint64_t        owed;         /* relay bytes whose credit is not yet returned */
    fy_buf_t        raw;          /* rewrite: relay bytes not yet framed */
    fy_buf_t        out;          /* bytes for the service */
    fy_pipe_t      *pipe;         /* spliced bytes for the service, ahead of out (or NULL) */
    fy_rw_t         rw;
    fy_mux_credit_t credit;
};

struct fy_tconn_s {
    fy_tconn_t     *next;
    fy_atunnel_t   *tn;
    enum fy_tconn_state state;
    bool            draining;     /* GOAWAY received: a replacement is on its way */
    bool            retire;       /* the replacement is ready: close once idle */
    bool            upgraded;     /* tun is live */
    bool            closed;
    fy_io_t         io;           /* before the upgrade (over wss://, the pump's plaintext end) */
    fy_tls_pump_t  *pump;         /* wss://: until its handshake is done */
    fy_buf_t        hbuf;         /* handshake bytes in or out */
    size_t          hsent;
    char            ws_key[25];
    fy_tun_t        tun;          /* after the upgrade */
    fy_timer_t      timer;        /* handshake deadline, then heartbeat */
    fy_task_t       free_task;
    uint64_t        ready_at;     /* ms */
    uint64_t        ping_sent;    /* ms, 0 = none outstanding */
    fy_astream_t  **buckets;
    uint32_t        nbuckets;
    uint32_t        nstreams;
};

struct fy_atunnel_s {
    fy_atunnel_t   *next;
    fy_agent_t     *agent;
    char            name[64];
    char            api_id[33];             /* "ID" of the local API: 32 hex */
    char            id[FY_ID_MAX + 1];
    bool            random_id;
    char            addr_display[300];      /* "http://localhost:3000" */
    enum fy_hh_mode hh_mode;
    char            hh_value[256];
    char            basic_auth[256];
    fy_upset_t      ups;
    unsigned        want_conns;
    fy_tconn_t     *conns;
    enum fy_astate  state;
    char            last_error[256];
    char            last_error_body[512];
    char            public_url[400];
    bool            ever_ready;
    bool            announced;
    bool            removed;                /* stopping: freed once its connections are gone */
    uint64_t        backoff_ms;
    fy_timer_t      reconnect_timer;
    fy_task_t       free_task;
    uint64_t        reconnects;
    uint64_t        rtt_ms;
    uint64_t        streams_open;
    fy_meter_t      m_conns;
    fy_meter_t      m_http;
    fy_sample_t     d_conns;                /* stream durations */
    fy_sample_t     d_http;                 /* request head to first answer byte */
    void           *waiter;                 /* the API connection waiting for READY (api.c) */
};

struct fy_agent_s {
    fy_ev_t        *ev;
    char            session[33];
    char            server_url[400];
    bool            server_tls;
    char            server_host[256];       /* wss://: the name its certificate must carry (and SNI) */
    SSL_CTX        *tls_ctx;                /* wss:// */
    char            host_header[300];       /* Host: of the upgrade */
    char            agent_path[256];
    struct sockaddr_storage server;
    socklen_t       serverlen;
    char            authtoken[1024];
    uint64_t        base_backoff_ms;
    uint64_t        max_backoff_ms;
    bool            backoff;
    fy_atunnel_t   *tunnels;
    bool            print_forwarding;       /* stdout is not the log: print Forwarding lines */
    bool            stopping;
    fy_io_t         sigio;
    fy_timer_t      tick;                   /* metrics (5 s) */
    /* session (session.c) */
    bool            sess_up;
    bool            sess_ever;              /* it was up once */
    enum fy_astate  state;
    char            last_error[256];
    char            last_error_body[512];
    uint64_t        reconnects;
    uint64_t        rtt_ms;
    uint64_t        sess_backoff_ms;
    fy_probe_t      sprobe;
    fy_timer_t      stimer;
    fy_api_t       *api;
    char            web_addr[FY_ADDRSTRLEN]; /* bound, "" without API */
    fy_status_t    *status;
};

/* tunnel.c */
/* A new tunnel from a definition, linked last in a->tunnels, not started.
 * Returns it, or NULL with err set (bad upstream, out of memory). */
fy_atunnel_t *fy_atunnel_new(fy_agent_t *a, const fy_tcfg_t *tc, char *err, size_t errlen);
fy_atunnel_t *fy_atunnel_find(fy_agent_t *a, const char *name);
void fy_atunnel_start(fy_atunnel_t *tn);
/* Unlink and stop tn; it is freed once its connections are gone. */
void fy_atunnel_remove(fy_atunnel_t *tn);
/* Called by tconn.c when tn's last connection is freed. */
void fy__atunnel_conns_gone(fy_atunnel_t *tn);
/* The tunnel object of ngrok's API. */
void fy_atunnel_json(fy_atunnel_t *tn, fy_jw_t *w);
/* The metrics tick of every tunnel (5 s). */
void fy_atunnel_tick(fy_agent_t *a);

/* tconn.c */
void fy_tconn_start(fy_atunnel_t *tn);
/* Close every connection of tn (frees happen in the loop's tasks). */
void fy_tconn_stop_all(fy_atunnel_t *tn);
void fy_tconn_open_wanted(fy_atunnel_t *tn);
/* Timers and id of a new tunnel (a random id when it has none). */
void fy__tconn_init_tunnel(fy_atunnel_t *tn);
fy_astream_t *fy_tconn_stream(fy_tconn_t *tc, uint32_t id);
void fy_tconn_stream_gone(fy_tconn_t *tc, fy_astream_t *s);
int fy__tconn_add_stream(fy_tconn_t *tc, fy_astream_t *s) FY_MUST_USE;
bool fy_atunnel_any_ready(const fy_atunnel_t *tn);

/* stream.c */
void fy_astream_open(fy_tconn_t *tc, uint32_t id);
void fy_astream_on_data(fy_astream_t *s, const uint8_t *p, size_t n);
/* Splicing the relay's bytes to the service (tun.h splice_pipe, on_spliced). */
fy_pipe_t *fy_astream_splice_pipe(fy_astream_t *s, uint8_t flags, size_t *max);
void fy_astream_on_spliced(fy_astream_t *s, size_t n);
void fy_astream_on_fin(fy_astream_t *s);
void fy_astream_on_window(fy_astream_t *s, uint32_t inc);
void fy_astream_on_credit(fy_astream_t *s);
/* Close the service connection; rst != 0 also tells the relay. */
void fy_astream_close(fy_astream_t *s, uint32_t rst, const char *why);
/* The relay ended the stream at a message boundary (RST idle): keep the
 * service connection for another stream when it is clean, then close. */
void fy_astream_idle(fy_astream_t *s);

/* session.c: is the relay there (a READY tunnel connection, or a plain
 * GET {agent_path} answering 200 while no tunnel is up)? */
void fy_session_start(fy_agent_t *a);
void fy_session_stop(fy_agent_t *a);
void fy_session_ready(fy_agent_t *a);
/* A tunnel connection failed or dropped: err/body say why (may be NULL). */
void fy_session_failed(fy_agent_t *a, const char *err, const char *body, bool was_ready);
bool fy_session_any_ready(const fy_agent_t *a);
const char *fy_session_status(const fy_agent_t *a);

/* api.c: the local API on web_addr. */
/* Listen (port+1.. when the default is taken and fallback is set). FY_OK or FY_ERR (err). */
int fy_api_start(fy_agent_t *a, const char *addr, bool fallback, char *err, size_t errlen) FY_MUST_USE;
void fy_api_stop(fy_agent_t *a);
/* The tunnel a POST waits on came up, or failed (status: the HTTP status to answer). */
void fy_api_tunnel_ready(fy_atunnel_t *tn);
void fy_api_tunnel_failed(fy_atunnel_t *tn, int status, const char *msg, const char *detail);

/* status.c: the live terminal block. */
int fy_status_start(fy_agent_t *a) FY_MUST_USE;
/* Something changed: redraw soon. */
void fy_status_dirty(fy_agent_t *a);
void fy_status_resize(fy_agent_t *a);
void fy_status_stop(fy_agent_t *a);

/* alog.c: ngrok-style logs (term, logfmt or json) */
enum fy_alog_level { FY_AL_DEBUG, FY_AL_INFO, FY_AL_WARN, FY_AL_ERROR, FY_AL_CRIT };
enum fy_alog_format { FY_AL_TERM, FY_AL_LOGFMT, FY_AL_JSON };
/* fd -1: no log. term becomes logfmt unless fd is a terminal. */
void fy_alog_setup(int fd, enum fy_alog_format fmt, enum fy_alog_level min);
int fy_alog_fd(void);
/* Key/value pairs follow msg, ending with NULL: fy_alog(FY_AL_INFO, "started tunnel", "obj", "tunnels", NULL). */
void fy_alog(enum fy_alog_level lvl, const char *msg, ...) __attribute__((sentinel));
/* Write one whole line to stdout. */
void fy_aprint(const char *fmt, ...) FY_PRINTF(1, 2);
/* Write n bytes whole to fd (retrying short writes). */
void fy_awrite(int fd, const char *p, size_t n);

#endif
