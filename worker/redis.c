/*
 * redis.c: see redis.h. The hiredis event hooks set the fy_io_t interest;
 * one timer watches the connection: while connecting, the attempt's
 * deadline; while commands are in flight, `timeout` after the last sign of
 * progress; while down, the next attempt.
 */
#include "worker/redis.h"
#include "log/log.h"
#include "net/net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TICK_MS 100

typedef struct {
    fy_redis_t        *r;
    fy_redis_reply_cb  cb;
    void              *data;
} cmd_t;

static void connect_now(fy_redis_t *r);

static void want(fy_redis_t *r, uint32_t add, uint32_t del)
{
    uint32_t ev = (r->io.events | add) & ~del;
    if (r->io.fd < 0)
        return;
    if (fy_io_set(r->ev, &r->io, ev) != FY_OK)
        fy_log(FY_LOG_ERR, errno, "redis %s:%d: epoll", r->host, r->port);
}

static void add_read(void *p)  { want(p, EPOLLIN, 0); }
static void del_read(void *p)  { want(p, 0, EPOLLIN); }
static void add_write(void *p) { want(p, EPOLLOUT, 0); }
static void del_write(void *p) { want(p, 0, EPOLLOUT); }

static void cleanup(void *p)
{
    fy_redis_t *r = p;
    fy_io_del(r->ev, &r->io);
    r->io.fd = -1;
}

static void arm(fy_redis_t *r, uint64_t ms)
{
    fy_timer_stop(r->ev, &r->timer);
    fy_timer_arm(r->ev, &r->timer, ms);
}

/* Report a state change once (the first failure too, so that a node that
 * starts without its Redis says so). */
static void report(fy_redis_t *r, int state, const char *why)
{
    if (r->reported == state)
        return;
    r->reported = state;
    r->on_state(r, state == 1, why);
}

/* The context is gone (hiredis frees it): report, retry later. */
static void went_down(fy_redis_t *r, const char *why)
{
    r->ac = NULL;
    r->up = false;
    r->inflight = 0;
    if (!r->stopped)
        arm(r, FY_REDIS_RETRY_MS);
    report(r, 2, why);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    fy_redis_t *r = ac->ev.data;
    char why[160];

    if (r == NULL || r->ac != ac)
        return;
    snprintf(why, sizeof(why), "%s", ac->errstr && ac->errstr[0] ? ac->errstr : "closed by the server");
    went_down(r, why);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    fy_redis_t *r = ac->ev.data;

    if (r == NULL || r->ac != ac || status == REDIS_OK)
        return;
    /* hiredis frees the context after this callback. */
    went_down(r, ac->errstr && ac->errstr[0] ? ac->errstr : "could not connect");
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    cmd_t *cmd = privdata;
    fy_redis_t *r = cmd->r;

    if (reply != NULL && r->inflight > 0) {
        r->inflight--;
        r->progress = fy_ev_now(r->ev);
    }
    if (cmd->cb != NULL)
        cmd->cb(r, reply, cmd->data);
    free(cmd);
}

static int send_cmd(fy_redis_t *r, fy_redis_reply_cb cb, void *data, const char *fmt, va_list ap)
{
    cmd_t *cmd;

    if (r->ac == NULL || (cmd = malloc(sizeof(*cmd))) == NULL)
        return FY_ERR;
    cmd->r = r;
    cmd->cb = cb;
    cmd->data = data;
    if (redisvAsyncCommand(r->ac, on_reply, cmd, fmt, ap) != REDIS_OK) {
        free(cmd);
        return FY_ERR;
    }
    if (r->inflight++ == 0)
        r->progress = fy_ev_now(r->ev);
    if (!fy_timer_armed(&r->timer))
        arm(r, TICK_MS);
    return FY_OK;
}

static int send_fmt(fy_redis_t *r, fy_redis_reply_cb cb, void *data, const char *fmt, ...)
{
    va_list ap;
    int rc;
    va_start(ap, fmt);
    rc = send_cmd(r, cb, data, fmt, ap);
    va_end(ap);
    return rc;
}

static void on_ping(fy_redis_t *r, const redisReply *reply, void *data)
{
    if (reply == NULL || r->ac == NULL)
        return;
    if (reply->type == REDIS_REPLY_ERROR) {
        char why[200];
        snprintf(why, sizeof(why), "%.*s", (int)FY_MIN(reply->len, 150), reply->str);
        report(r, 2, why);   /* e.g. NOAUTH: stays down, retried */
        redisAsyncDisconnect(r->ac);
        return;
    }
    r->up = true;
    report(r, 1, NULL);
}

static void connect_now(fy_redis_t *r)
{
    redisAsyncContext *ac = redisAsyncConnect(r->host, r->port);

    if (ac == NULL) {
        went_down(r, "out of memory");
        return;
    }
    if (ac->err) {
        char why[160];
        snprintf(why, sizeof(why), "%s", ac->errstr);
        redisAsyncFree(ac);
        went_down(r, why);
        return;
    }
    r->ac = ac;
    (void)fcntl(ac->c.fd, F_SETFD, FD_CLOEXEC);   /* not into an upgraded binary */
    r->io.fd = ac->c.fd;
    r->io.events = 0;
    r->io.added = false;
    ac->ev.data = r;
    ac->ev.addRead = add_read;
    ac->ev.delRead = del_read;
    ac->ev.addWrite = add_write;
    ac->ev.delWrite = del_write;
    ac->ev.cleanup = cleanup;
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    r->started = fy_ev_now(r->ev);
    r->inflight = 0;
    /* Up means answering: a stopped server's kernel still accepts. */
    if (r->password != NULL)
        (void)send_fmt(r, NULL, NULL, "AUTH %s", r->password);
    (void)send_fmt(r, on_ping, NULL, "PING");
    arm(r, TICK_MS);
}

static void on_timer(fy_ev_t *ev, fy_timer_t *t)
{
    fy_redis_t *r = t->data;
    uint64_t now = fy_ev_now(ev);

    if (r->stopped)
        return;
    if (r->ac == NULL) {
        connect_now(r);
        return;
    }
    if ((!r->up && now - r->started >= r->timeout) || (r->inflight > 0 && now - r->progress >= r->timeout)) {
        char why[96];
        redisAsyncContext *ac = r->ac;
        snprintf(why, sizeof(why), "no answer within %llu ms", (unsigned long long)r->timeout);
        went_down(r, why);
        ac->ev.data = r;
        redisAsyncFree(ac);   /* pending callbacks run with NULL */
        return;
    }
    if (!r->up || r->inflight > 0)
        arm(r, TICK_MS);
}

static void on_io(fy_ev_t *ev, fy_io_t *io, uint32_t events)
{
    fy_redis_t *r = io->data;

    if (r->ac != NULL && (events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
        redisAsyncHandleRead(r->ac);
    if (r->ac != NULL && (events & EPOLLOUT))
        redisAsyncHandleWrite(r->ac);
}

int fy_redis_start(fy_redis_t *r, fy_ev_t *ev, const char *addr, const char *password, uint64_t timeout_ms,
                   fy_redis_state_cb on_state, void *data)
{
    const char *colon = strrchr(addr, ':');
    size_t hl;

    memset(r, 0, sizeof(*r));
    if (colon == NULL)
        return FY_ERR;
    hl = (size_t)(colon - addr);
    if (addr[0] == '[' && hl >= 2) {   /* [v6]:port */
        addr++;
        hl -= 2;
    }
    if (hl == 0 || hl >= sizeof(r->host))
        return FY_ERR;
    memcpy(r->host, addr, hl);
    r->host[hl] = '\0';
    r->port = atoi(colon + 1);
    r->ev = ev;
    if (password != NULL && (r->password = strdup(password)) == NULL)
        return FY_ERR;
    r->timeout = timeout_ms;
    r->on_state = on_state;
    r->data = data;
    r->io.fd = -1;
    r->io.cb = on_io;
    r->io.data = r;
    r->timer.cb = on_timer;
    r->timer.data = r;
    connect_now(r);
    return FY_OK;
}

void fy_redis_stop(fy_redis_t *r)
{
    redisAsyncContext *ac = r->ac;

    if (r->ev == NULL)
        return;
    r->stopped = true;
    fy_timer_stop(r->ev, &r->timer);
    if (ac != NULL) {
        r->ac = NULL;
        r->up = false;
        redisAsyncFree(ac);
    }
    free(r->password);
    r->password = NULL;
}

int fy_redis_command(fy_redis_t *r, fy_redis_reply_cb cb, void *data, const char *fmt, ...)
{
    va_list ap;
    int rc;

    if (!r->up)
        return FY_ERR;
    va_start(ap, fmt);
    rc = send_cmd(r, cb, data, fmt, ap);
    va_end(ap);
    return rc;
}
