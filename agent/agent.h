/*
 * agent.h: ferry, the agent. One epoll loop; per tunnel 1..4 tunnel
 * connections to the relay (each a WebSocket carrying mux frames, see
 * common/tun); per stream a non-blocking connection to the local service,
 * with bytes spliced both ways under credit flow control.
 */
#ifndef FY_AGENT_H
#define FY_AGENT_H

#include "fy.h"
#include "buf/buf.h"
#include "conf/conf.h"
#include "ev/ev.h"
#include "net/net.h"
#include "tun/tun.h"

#include <sys/socket.h>

#define FY_AGENT_MAX_CONNS 4
#define FY_AGENT_PING_MS   10000
#define FY_AGENT_DEAD_MS   20000
#define FY_AGENT_STABLE_MS 10000     /* a connection up this long resets the backoff */

typedef struct fy_agent_s fy_agent_t;
typedef struct fy_atunnel_s fy_atunnel_t;
typedef struct fy_tconn_s fy_tconn_t;
typedef struct fy_astream_s fy_astream_t;

enum fy_astate { FY_A_DISCONNECTED = 0, FY_A_CONNECTING, FY_A_CONNECTED, FY_A_ERROR };
extern const char *const fy_astate_names[];

enum fy_tconn_state {
    FY_TC_CONNECTING = 0,  /* TCP connect in progress */
    FY_TC_UPGRADE,         /* upgrade request sent, reading the answer */
    FY_TC_HELLO,           /* 101 received, HELLO sent, waiting for READY */
    FY_TC_READY,
};

struct fy_astream_s {
    fy_astream_t   *hnext;
    fy_tconn_t     *tc;
    uint32_t        id;
    fy_io_t         io;
    fy_task_t       free_task;
    bool            connected;
    bool            closed;
    bool            blocked;      /* no credit to send what the service writes */
    bool            fin_rx;       /* the relay sent FIN: shut the service's write side when out drains */
    bool            fin_tx;       /* we sent FIN (the service closed) */
    bool            shut_wr;
    fy_buf_t        out;          /* bytes for the service, at most the stream window */
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
    fy_io_t         io;           /* before the upgrade */
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
    char            id[FY_ID_MAX + 1];
    bool            random_id;
    char            addr_display[300];      /* "http://localhost:3000" */
    struct sockaddr_storage up;             /* the local service */
    socklen_t       uplen;
    char            up_name[280];           /* "127.0.0.1:3000" for errors */
    unsigned        want_conns;
    fy_tconn_t     *conns;
    enum fy_astate  state;
    char            last_error[256];
    char            last_error_body[512];
    char            public_url[400];
    bool            announced;
    uint64_t        backoff_ms;
    fy_timer_t      reconnect_timer;
    uint64_t        reconnects;
    uint64_t        rtt_ms;
    uint64_t        streams_total;
};

struct fy_agent_s {
    fy_ev_t        *ev;
    char            session[33];
    char            server_url[400];
    bool            server_tls;
    char            host_header[300];       /* Host: of the upgrade */
    char            agent_path[256];
    struct sockaddr_storage server;
    socklen_t       serverlen;
    char            authtoken[1024];
    uint64_t        max_backoff_ms;
    fy_atunnel_t   *tunnels;
    bool            print_forwarding;       /* stdout is not the log: print Forwarding lines */
    fy_io_t         sigio;
};

/* tconn.c */
void fy_tconn_start(fy_atunnel_t *tn);
void fy_atunnel_start(fy_atunnel_t *tn);
/* Close every connection of tn (frees happen in the loop's tasks). */
void fy_atunnel_stop(fy_atunnel_t *tn);
fy_astream_t *fy_tconn_stream(fy_tconn_t *tc, uint32_t id);
void fy_tconn_stream_gone(fy_tconn_t *tc, fy_astream_t *s);
int fy__tconn_add_stream(fy_tconn_t *tc, fy_astream_t *s) FY_MUST_USE;

/* stream.c */
void fy_astream_open(fy_tconn_t *tc, uint32_t id);
void fy_astream_on_data(fy_astream_t *s, const uint8_t *p, size_t n);
void fy_astream_on_fin(fy_astream_t *s);
void fy_astream_on_window(fy_astream_t *s, uint32_t inc);
void fy_astream_on_credit(fy_astream_t *s);
/* Close the service connection; rst != 0 also tells the relay. */
void fy_astream_close(fy_astream_t *s, uint32_t rst, const char *why);

/* alog.c: ngrok-style logs (logfmt or json) */
enum fy_alog_level { FY_AL_DEBUG, FY_AL_INFO, FY_AL_WARN, FY_AL_ERROR, FY_AL_CRIT };
enum fy_alog_format { FY_AL_TERM, FY_AL_LOGFMT, FY_AL_JSON };
/* fd -1: no log. */
void fy_alog_setup(int fd, enum fy_alog_format fmt);
/* Key/value pairs follow msg, ending with NULL: fy_alog(FY_AL_INFO, "started tunnel", "obj", "tunnels", NULL). */
void fy_alog(enum fy_alog_level lvl, const char *msg, ...) __attribute__((sentinel));
/* Write one whole line to stdout. */
void fy_aprint(const char *fmt, ...) FY_PRINTF(1, 2);

#endif
