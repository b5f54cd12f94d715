/*
 * upstream.c: a tunnel's failover set (SPEC.md "Upstream selection").
 *
 * Chosen once per stream: healthy upstreams only (if none is, the highest
 * priority one); the highest priority first; smooth weighted round-robin
 * (nginx's) within a priority, so weights 2:1 give a, b, a, a, b, a...
 * A stream whose upstream refuses moves to the next pick with that upstream
 * excluded. Each failure adds one to an upstream's count and each success
 * takes one off; at max_failures it is unhealthy and probed (a GET of the
 * health path) every recovery interval until a probe gets any HTTP answer.
 * A manual failover (the API) pins new streams to one upstream.
 *
 * Also the address forms of `ferry http`: PORT, HOST:PORT, http://HOST[:PORT].
 */
#include "agent/agent.h"

#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

const char *const fy_ustatus_names[] = {"unknown", "healthy", "unhealthy"};

int fy__resolve(const char *host, const char *port, struct sockaddr_storage *ss, socklen_t *len)
{
    struct addrinfo hints, *res = NULL, *ai, *pick = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    if (getaddrinfo(host, port, &hints, &res) != 0 || res == NULL)
        return FY_ERR;
    /* IPv4 first: a "localhost" service usually listens there. */
    for (ai = res; ai != NULL; ai = ai->ai_next)
        if (ai->ai_family == AF_INET && pick == NULL)
            pick = ai;
    if (pick == NULL)
        pick = res;
    memcpy(ss, pick->ai_addr, pick->ai_addrlen);
    *len = pick->ai_addrlen;
    freeaddrinfo(res);
    return FY_OK;
}

int fy__split_url(const char *url, char *scheme, char *host, char *port, char *path, const char *defport)
{
    const char *p = strstr(url, "://"), *h, *slash, *colon;
    size_t n;

    if (p == NULL || p == url || (size_t)(p - url) >= 16)
        return FY_ERR;
    memcpy(scheme, url, (size_t)(p - url));
    scheme[p - url] = '\0';
    h = p + 3;
    slash = strchr(h, '/');
    n = slash ? (size_t)(slash - h) : strlen(h);
    if (n == 0 || n >= 256)
        return FY_ERR;
    if (h[0] == '[') {
        const char *rb = memchr(h, ']', n);
        if (rb == NULL)
            return FY_ERR;
        memcpy(host, h + 1, (size_t)(rb - h - 1));
        host[rb - h - 1] = '\0';
        colon = rb + 1 < h + n && rb[1] == ':' ? rb + 1 : NULL;
    } else {
        colon = memchr(h, ':', n);
        memcpy(host, h, colon ? (size_t)(colon - h) : n);
        host[colon ? (size_t)(colon - h) : n] = '\0';
    }
    if (colon != NULL) {
        size_t pl = (size_t)(h + n - colon - 1);
        if (pl == 0 || pl > 5)
            return FY_ERR;
        memcpy(port, colon + 1, pl);
        port[pl] = '\0';
    } else {
        snprintf(port, 8, "%s", defport);
    }
    snprintf(path, 256, "%s", slash ? slash : "");
    return host[0] ? FY_OK : FY_ERR;
}

int fy_upstream_parse(fy_upstream_t *u, const char *arg, char *err, size_t errlen)
{
    char scheme[16], host[256], port[8], path[256];
    uint64_t pn;
    bool v6;

    if (fy_conf_uint(arg, 1, 65535, &pn) == FY_OK) {
        snprintf(host, sizeof(host), "localhost");
        snprintf(port, sizeof(port), "%s", arg);
    } else if (strstr(arg, "://") != NULL) {
        if (fy__split_url(arg, scheme, host, port, path, "80") != FY_OK) {
            snprintf(err, errlen, "%s: not a URL", arg);
            return FY_ERR;
        }
        if (strcmp(scheme, "http") != 0) {
            snprintf(err, errlen, "%s: only http:// services are supported in ferry %s", arg, FY_VERSION);
            return FY_ERR;
        }
        if (path[0] != '\0' && strcmp(path, "/") != 0) {
            snprintf(err, errlen, "%s: a path is not supported in the service address", arg);
            return FY_ERR;
        }
    } else {
        const char *colon = strrchr(arg, ':');
        size_t hl;
        if (colon == NULL || colon == arg || strlen(colon + 1) > 5 || (size_t)(colon - arg) >= sizeof(host)) {
            snprintf(err, errlen, "%s: expected PORT, HOST:PORT or a URL", arg);
            return FY_ERR;
        }
        hl = (size_t)(colon - arg);
        if (arg[0] == '[' && hl >= 2 && arg[hl - 1] == ']') {
            memcpy(host, arg + 1, hl - 2);
            host[hl - 2] = '\0';
        } else {
            memcpy(host, arg, hl);
            host[hl] = '\0';
        }
        snprintf(port, sizeof(port), "%s", colon + 1);
    }
    if (fy_conf_uint(port, 1, 65535, &pn) != FY_OK) {
        snprintf(err, errlen, "%s: bad port", arg);
        return FY_ERR;
    }
    if (fy__resolve(host, port, &u->sa, &u->salen) != FY_OK) {
        snprintf(err, errlen, "%s: cannot resolve %s", arg, host);
        return FY_ERR;
    }
    v6 = strchr(host, ':') != NULL;
    snprintf(u->url, sizeof(u->url), v6 ? "http://[%s]:%s" : "http://%s:%s", host, port);
    snprintf(u->name, sizeof(u->name), v6 ? "[%s]:%s" : "%s:%s", host, port);
    if (strcmp(port, "80") == 0)
        snprintf(u->host, sizeof(u->host), v6 ? "[%s]" : "%s", host);
    else
        snprintf(u->host, sizeof(u->host), "%s", u->name);
    return FY_OK;
}

static void on_probe_timer(fy_ev_t *ev, fy_timer_t *t);
static void on_probe(fy_probe_t *p, int status, const char *body, size_t blen, const char *err);
static void on_idle_timer(fy_ev_t *ev, fy_timer_t *t);
static void on_idle_io(fy_ev_t *ev, fy_io_t *io, uint32_t events);

int fy_upset_init(fy_upset_t *set, fy_ev_t *ev, const fy_tcfg_t *tc, const char *tunnel, char *err, size_t errlen)
{
    unsigned i;

    memset(set, 0, sizeof(*set));
    set->ev = ev;
    set->tunnel = tunnel;
    set->pinned = -1;
    set->max_failures = tc->health_failures ? tc->health_failures : 3;
    set->recovery_ms = tc->recovery_ms ? tc->recovery_ms : 60000;
    snprintf(set->path, sizeof(set->path), "%s", tc->health_path[0] ? tc->health_path : "/");
    for (i = 0; i < tc->nups; i++) {
        fy_upstream_t *u = &set->u[i];
        if (fy_upstream_parse(u, tc->ups[i].url, err, errlen) != FY_OK)
            return FY_ERR;
        u->set = set;
        u->priority = tc->ups[i].priority;
        u->weight = tc->ups[i].weight ? tc->ups[i].weight : 1;
        u->probe.io.fd = -1;
        u->probe_timer.cb = on_probe_timer;
        u->probe_timer.data = u;
        u->idle_timer.cb = on_idle_timer;
        u->idle_timer.data = u;
        for (unsigned k = 0; k < FY_AGENT_IDLE_MAX; k++) {
            u->idle[k].io.fd = -1;
            u->idle[k].io.cb = on_idle_io;
            u->idle[k].io.data = &u->idle[k];
            u->idle[k].u = u;
        }
        set->n++;
    }
    if (set->n == 0) {
        snprintf(err, errlen, "no upstream");
        return FY_ERR;
    }
    return FY_OK;
}

/* --- idle keep-alive connections to an upstream ----------------------------
 *
 * The relay does not pass an end user's "Connection: close" on, and when it
 * ends a stream whose service connection sits between messages with nothing
 * owed either way, it says so (RST idle). The connection then waits here,
 * watched for a close or stray bytes from the service, for the next stream
 * to the same upstream: a relay serving "Connection: close" end users does
 * not make the agent dial the service once per request. Kept at most
 * FY_AGENT_IDLE_MS, below the keep-alive timeouts of common servers (nginx
 * 75 s, Node 5 s, gunicorn 2 s), so the service never closes one just as it
 * is reused. */

/* The pool is a stack, idle[0..nidle), the most recently kept on top. */
static void idle_drop(fy_aidle_t *e)
{
    fy_upstream_t *u = e->u;
    fy_aidle_t *last = &u->idle[u->nidle - 1];

    fy_io_del(u->set->ev, &e->io);
    close(e->io.fd);
    e->io.fd = -1;
    if (e != last) {
        /* The top fills the hole (an event of this batch for it is then
         * skipped; the loop reports it again). */
        if (fy_io_move(u->set->ev, &last->io, &e->io, EPOLLIN) == FY_OK) {
            e->since = last->since;
        } else {
            fy_io_del(u->set->ev, &last->io);
            close(last->io.fd);
        }
        last->io.fd = -1;
    }
    u->nidle--;
}

/* The service closed it (or sent bytes nobody asked for): drop it. */
static void on_idle_io(fy_ev_t *ev, fy_io_t *io, uint32_t events)
{
    fy_aidle_t *e = io->data;
    if (e->io.fd >= 0)
        idle_drop(e);
}

static void on_idle_timer(fy_ev_t *ev, fy_timer_t *t)
{
    fy_upstream_t *u = t->data;
    uint64_t now = fy_ev_now(ev), oldest = 0;
    unsigned i = 0;

    while (i < u->nidle) {
        fy_aidle_t *e = &u->idle[i];
        if (now - e->since >= FY_AGENT_IDLE_MS) {
            idle_drop(e);   /* the top moved here: look at i again */
            continue;
        }
        if (oldest == 0 || e->since < oldest)
            oldest = e->since;
        i++;
    }
    if (u->nidle > 0)
        fy_timer_arm_at(ev, t, oldest + FY_AGENT_IDLE_MS);
}

void fy_upstream_keep_idle(fy_upstream_t *u, fy_io_t *from)
{
    fy_ev_t *ev = u->set->ev;
    fy_aidle_t *e = &u->idle[u->nidle];
    uint8_t b;

    /* Nothing may be waiting on it: no close, no early bytes of an answer. */
    if (u->nidle == FY_AGENT_IDLE_MAX || recv(from->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) != -1 || errno != EAGAIN
        || fy_io_move(ev, from, &e->io, EPOLLIN) != FY_OK) {
        fy_io_del(ev, from);
        close(from->fd);
        if (u->nidle < FY_AGENT_IDLE_MAX)
            e->io.fd = -1;
        return;
    }
    e->since = fy_ev_now(ev);
    u->nidle++;
    if (!fy_timer_armed(&u->idle_timer))
        fy_timer_arm(ev, &u->idle_timer, FY_AGENT_IDLE_MS);
}

bool fy_upstream_take_idle(fy_upstream_t *u, fy_io_t *to)
{
    fy_aidle_t *e;

    if (u->nidle == 0)
        return false;
    /* The top: the most recently used, the least likely to be timed out. */
    e = &u->idle[u->nidle - 1];
    if (fy_io_move(u->set->ev, &e->io, to, EPOLLIN) != FY_OK) {
        idle_drop(e);
        to->fd = -1;
        return false;
    }
    e->io.fd = -1;
    if (--u->nidle == 0)
        fy_timer_stop(u->set->ev, &u->idle_timer);
    return true;
}

void fy_upset_fini(fy_upset_t *set)
{
    unsigned i;
    for (i = 0; i < set->n; i++) {
        fy_timer_stop(set->ev, &set->u[i].probe_timer);
        fy_probe_cancel(&set->u[i].probe);
        fy_buf_free(&set->u[i].probe.buf);
        fy_timer_stop(set->ev, &set->u[i].idle_timer);
        while (set->u[i].nidle > 0)
            idle_drop(&set->u[i].idle[set->u[i].nidle - 1]);
    }
}

int fy_upset_pick(fy_upset_t *set, uint32_t tried, bool commit)
{
    int64_t saved[FY_AGENT_MAX_UPSTREAMS], total = 0;
    bool any_healthy = false, found = false;
    unsigned i, top = 0;
    int best = -1;

    if (set->pinned >= 0 && !(tried & (1u << set->pinned))) {
        if (commit)
            set->u[set->pinned].streams++;
        return set->pinned;
    }
    for (i = 0; i < set->n; i++)
        if (!(tried & (1u << i)) && set->u[i].status != FY_U_UNHEALTHY)
            any_healthy = true;
    for (i = 0; i < set->n; i++) {
        const fy_upstream_t *u = &set->u[i];
        if ((tried & (1u << i)) || (any_healthy && u->status == FY_U_UNHEALTHY))
            continue;
        if (!found || u->priority > top)
            top = u->priority;
        found = true;
    }
    if (!found)
        return -1;
    for (i = 0; i < set->n; i++)
        saved[i] = set->u[i].cw;
    for (i = 0; i < set->n; i++) {
        fy_upstream_t *u = &set->u[i];
        if ((tried & (1u << i)) || (any_healthy && u->status == FY_U_UNHEALTHY) || u->priority != top)
            continue;
        u->cw += u->weight;
        total += u->weight;
        if (best < 0 || u->cw > set->u[best].cw)
            best = (int)i;
    }
    set->u[best].cw -= total;
    if (!commit) {
        for (i = 0; i < set->n; i++)
            set->u[i].cw = saved[i];
    } else {
        set->u[best].streams++;
    }
    return best;
}

static void arm_probe(fy_upstream_t *u)
{
    if (!u->probe.busy)
        fy_timer_arm(u->set->ev, &u->probe_timer, u->set->recovery_ms);
}

void fy_upset_success(fy_upset_t *set, int i)
{
    fy_upstream_t *u = &set->u[i];
    if (u->failures > 0)
        u->failures--;
    if (u->status == FY_U_UNKNOWN)
        u->status = FY_U_HEALTHY;
}

void fy_upset_failure(fy_upset_t *set, int i, const char *err)
{
    fy_upstream_t *u = &set->u[i];
    char n[16];

    u->failures++;
    snprintf(u->last_error, sizeof(u->last_error), "%s", err);
    if (u->status != FY_U_UNHEALTHY && u->failures >= set->max_failures) {
        u->status = FY_U_UNHEALTHY;
        snprintf(n, sizeof(n), "%u", u->failures);
        fy_alog(FY_AL_WARN, "upstream marked unhealthy", "obj", "upstreams", "name", set->tunnel, "url", u->url,
                "failures", n, "err", err, NULL);
        arm_probe(u);
    }
}

static void restore(fy_upstream_t *u, const char *why)
{
    bool was = u->status == FY_U_UNHEALTHY;
    fy_timer_stop(u->set->ev, &u->probe_timer);
    fy_probe_cancel(&u->probe);
    fy_buf_free(&u->probe.buf);
    u->failures = 0;
    u->status = FY_U_HEALTHY;
    if (was)
        fy_alog(FY_AL_INFO, "upstream healthy again", "obj", "upstreams", "name", u->set->tunnel, "url", u->url,
                "reason", why, NULL);
}

void fy_upset_reset(fy_upset_t *set, int i)
{
    set->u[i].last_error[0] = '\0';
    restore(&set->u[i], "reset");
}

int fy_upset_find(const fy_upset_t *set, const char *url)
{
    unsigned i;
    fy_upstream_t tmp;
    char err[256];

    for (i = 0; i < set->n; i++)
        if (strcmp(set->u[i].url, url) == 0 || strcmp(set->u[i].name, url) == 0)
            return (int)i;
    /* Another spelling of the same address (a port, a trailing slash). */
    memset(&tmp, 0, sizeof(tmp));
    if (fy_upstream_parse(&tmp, url, err, sizeof(err)) != FY_OK)
        return -1;
    for (i = 0; i < set->n; i++)
        if (strcmp(set->u[i].url, tmp.url) == 0)
            return (int)i;
    return -1;
}

static void on_probe_timer(fy_ev_t *ev, fy_timer_t *t)
{
    fy_upstream_t *u = t->data;
    char req[600];
    int n;

    if (u->status != FY_U_UNHEALTHY)
        return;
    n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: ferry/%s (health probe)\r\n"
                 "Connection: close\r\n\r\n", u->set->path, u->host, FY_VERSION);
    u->probe.cb = on_probe;
    u->probe.data = u;
    if (n < 0 || (size_t)n >= sizeof(req)
        || fy_probe_start(&u->probe, ev, (struct sockaddr *)&u->sa, u->salen, u->name, req, (size_t)n,
                          FY_MAX(1000, FY_MIN(u->set->recovery_ms, 5000))) != FY_OK) {
        snprintf(u->last_error, sizeof(u->last_error), "dial tcp %s: %s", u->name, strerror(errno));
        arm_probe(u);
    }
}

static void on_probe(fy_probe_t *p, int status, const char *body, size_t blen, const char *err)
{
    fy_upstream_t *u = p->data;
    if (status > 0) {
        restore(u, "probe answered");
        return;
    }
    snprintf(u->last_error, sizeof(u->last_error), "%s", err);
    arm_probe(u);
}

void fy_upset_json(fy_upset_t *set, fy_jw_t *w, const char *tunnel)
{
    unsigned i;
    for (i = 0; i < set->n; i++) {
        const fy_upstream_t *u = &set->u[i];
        fy_jw_obj(w);
        if (tunnel != NULL) {
            fy_jw_key(w, "tunnel");
            fy_jw_str(w, tunnel);
        }
        fy_jw_key(w, "url");
        fy_jw_str(w, u->url);
        fy_jw_key(w, "priority");
        fy_jw_u64(w, u->priority);
        fy_jw_key(w, "weight");
        fy_jw_u64(w, u->weight);
        fy_jw_key(w, "status");
        fy_jw_str(w, fy_ustatus_names[u->status]);
        fy_jw_key(w, "failures");
        fy_jw_u64(w, u->failures);
        fy_jw_key(w, "last_error");
        fy_jw_str(w, u->last_error);
        fy_jw_key(w, "streams");
        fy_jw_u64(w, u->streams);
        fy_jw_key(w, "pinned");
        fy_jw_bool(w, set->pinned == (int)i);
        fy_jw_obj_end(w);
    }
}
