/*
 * redis.h: one asynchronous Redis connection on a ferryd event loop
 * (hiredis 0.14's async API driven by fy_ev), used by the master to write
 * the cluster directory (master/directory.c) and by each worker to read it
 * (worker/cluster.c).
 *
 * hiredis 0.14 has no timeouts of its own, so the loop's timers give them:
 * a connection that is not up (connected, AUTH done, PING answered) within
 * `timeout`, or that leaves a command unanswered for `timeout`, is dropped
 * (every pending callback then runs with a NULL reply) and tried again a
 * second later, for ever. A SIGSTOPped or overloaded Redis therefore counts
 * as down, as a stopped one does. on_state reports each change once.
 */
#ifndef FY_REDIS_H
#define FY_REDIS_H

#include "fy.h"
#include "ev/ev.h"

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#define FY_REDIS_RETRY_MS 1000   /* between connection attempts */

typedef struct fy_redis_s fy_redis_t;
/* The connection came up (up true) or went down (why says how). */
typedef void (*fy_redis_state_cb)(fy_redis_t *r, bool up, const char *why);
/* A reply; NULL when the connection was lost or timed out first. The reply
 * is borrowed: hiredis frees it after the callback. */
typedef void (*fy_redis_reply_cb)(fy_redis_t *r, const redisReply *reply, void *data);

struct fy_redis_s {
    fy_ev_t            *ev;
    redisAsyncContext  *ac;          /* NULL while disconnected */
    fy_io_t             io;
    fy_timer_t          timer;       /* connect/command timeout, reconnect */
    char                host[64];
    int                 port;
    char               *password;    /* owned copy, or NULL */
    uint64_t            timeout;     /* ms */
    uint64_t            started;     /* ms: the connection attempt began */
    uint64_t            progress;    /* ms: last reply, or first command sent while idle */
    unsigned            inflight;    /* commands sent and not answered */
    bool                up;          /* connected and answering */
    int                 reported;    /* last state told on_state: 0 none, 1 up, 2 down */
    bool                stopped;
    fy_redis_state_cb   on_state;
    void               *data;
};

/* Start connecting to addr (IP:PORT) on ev; reconnects by itself. password
 * is copied. FY_OK, or FY_ERR for a bad address. */
int fy_redis_start(fy_redis_t *r, fy_ev_t *ev, const char *addr, const char *password, uint64_t timeout_ms,
                   fy_redis_state_cb on_state, void *data) FY_MUST_USE;
/* Drop the connection for good (pending callbacks run with NULL). */
void fy_redis_stop(fy_redis_t *r);
/* Send a command (hiredis format); cb may be NULL. FY_OK, or FY_ERR when
 * the connection is not up (cb is then not called). */
int fy_redis_command(fy_redis_t *r, fy_redis_reply_cb cb, void *data, const char *fmt, ...);

#endif
