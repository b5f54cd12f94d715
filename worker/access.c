/*
 * access.c: the access log: one line per request (SPEC.md `log:`), text or
 * JSON, with time, client, tunnel, method, path, status, bytes, duration,
 * worker and whether the connection was handed over. Lines are gathered in
 * a per-worker buffer and written every 100 ms or when it fills (nginx's
 * `buffer=`), so the request path costs no syscall for logging.
 */
#include "worker/worker.h"
#include "log/log.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define ACCESS_BUF   (64u * 1024)
#define ACCESS_FLUSH_MS 100

void fy_access_flush(fy_worker_t *w)
{
    size_t off = 0;
    while (off < w->access_len) {
        ssize_t n = write(fy_log_fd(), w->access_buf + off, w->access_len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;   /* a full disk must not stall the relay: the lines are dropped */
        off += (size_t)n;
    }
    w->access_len = 0;
}

static void on_flush(fy_ev_t *ev, fy_timer_t *t)
{
    fy_access_flush(t->data);
}

/* A bounded line builder: the access log runs once per request, so it
 * formats by hand (printf and strftime cost more than the request). */
typedef struct {
    char  *p;
    size_t n, cap;
} line_t;

static void add(line_t *l, const char *s, size_t n)
{
    n = FY_MIN(n, l->cap - l->n);
    memcpy(l->p + l->n, s, n);
    l->n += n;
}

static void adds(line_t *l, const char *s) { add(l, s, strlen(s)); }

static void addu(line_t *l, uint64_t v)
{
    char b[24];
    size_t i = sizeof(b);
    do
        b[--i] = (char)('0' + v % 10);
    while ((v /= 10) != 0);
    add(l, b + i, sizeof(b) - i);
}

static void addq(line_t *l, const char *s, size_t n, bool json)
{
    if (json)
        l->n += fy_log_json_escape(l->p + l->n, l->cap - l->n, s, n);
    else
        add(l, s, n);
}

/* "2026-01-01T12:00:00Z", formatted once a second. */
static const char *stamp(fy_worker_t *w)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME_COARSE, &now);
    if (now.tv_sec != w->access_sec) {
        struct tm tm;
        gmtime_r(&now.tv_sec, &tm);
        strftime(w->access_ts, sizeof(w->access_ts), "%Y-%m-%dT%H:%M:%SZ", &tm);
        w->access_sec = now.tv_sec;
    }
    return w->access_ts;
}

void fy_access_log(fy_worker_t *w, const fy_client_t *c, const fy_access_t *a, int status, uint64_t bytes,
                   const char *err_code)
{
    char buf[1024];
    line_t l = {buf, 0, sizeof(buf) - 1};
    bool json = w->conf->log_json;
    uint64_t ms = fy_ev_now(w->ev) - a->start;
    const char *tunnel = a->tunnel[0] ? a->tunnel : "-";

    if (w->access_buf == NULL)
        return;
    if (json) {
        adds(&l, "{\"t\":\"");
        adds(&l, stamp(w));
        adds(&l, "\",\"type\":\"access\",\"client\":\"");
        adds(&l, c->peer_addr);
        adds(&l, "\",\"tunnel\":\"");
        adds(&l, tunnel);
        adds(&l, "\",\"method\":\"");
        addq(&l, a->method, a->method_len, true);
        adds(&l, "\",\"path\":\"");
        addq(&l, a->path, a->path_len, true);
        adds(&l, "\",\"status\":");
        addu(&l, (uint64_t)status);
        adds(&l, ",\"bytes\":");
        addu(&l, bytes);
        adds(&l, ",\"duration_ms\":");
        addu(&l, ms);
        adds(&l, ",\"worker\":");
        addu(&l, (uint64_t)w->index);
        adds(&l, a->handoff ? ",\"handoff\":true" : ",\"handoff\":false");
        if (err_code != NULL) {
            adds(&l, ",\"error\":\"");
            adds(&l, err_code);
            adds(&l, "\"");
        }
        adds(&l, "}");
    } else {
        adds(&l, stamp(w));
        adds(&l, " ");
        adds(&l, c->peer_addr);
        adds(&l, " tunnel=");
        adds(&l, tunnel);
        adds(&l, " \"");
        addq(&l, a->method, a->method_len, false);
        adds(&l, " ");
        addq(&l, a->path, a->path_len, false);
        adds(&l, "\" ");
        addu(&l, (uint64_t)status);
        adds(&l, " ");
        addu(&l, bytes);
        adds(&l, " ");
        addu(&l, ms);
        adds(&l, "ms worker=");
        addu(&l, (uint64_t)w->index);
        adds(&l, a->handoff ? " handoff=1" : " handoff=0");
        if (err_code != NULL) {
            adds(&l, " error=");
            adds(&l, err_code);
        }
    }
    buf[l.n++] = '\n';
    if (w->access_len + l.n > ACCESS_BUF)
        fy_access_flush(w);
    memcpy(w->access_buf + w->access_len, buf, l.n);
    w->access_len += l.n;
    if (!fy_timer_armed(&w->access_timer))
        fy_timer_arm(w->ev, &w->access_timer, ACCESS_FLUSH_MS);
}

int fy_access_init(fy_worker_t *w)
{
    static char buf[ACCESS_BUF];
    w->access_buf = buf;
    w->access_len = 0;
    w->access_timer.cb = on_flush;
    w->access_timer.data = w;
    return FY_OK;
}

void fy_access_note(fy_access_t *a, uint64_t now, const fy_h1_request_t *req, const char *tunnel, bool handoff)
{
    a->start = now;
    a->method_len = (uint8_t)FY_MIN(req->method_len, sizeof(a->method));
    memcpy(a->method, req->method, a->method_len);
    a->path_len = (uint16_t)FY_MIN(req->target_len, sizeof(a->path));
    memcpy(a->path, req->target, a->path_len);
    size_t tl = tunnel ? FY_MIN(strlen(tunnel), sizeof(a->tunnel) - 1) : 0;
    memcpy(a->tunnel, tunnel ? tunnel : "", tl);
    a->tunnel[tl] = '\0';
    a->handoff = handoff;
}

/* Rings of connections that went idle or away, kept for the next ones: a
 * connection per request (Connection: close) allocates none. */
#define RING_CACHE 64
static fy_access_t *ring_cache[RING_CACHE];
static unsigned nring_cache;

fy_access_t *fy_access_ring_get(void)
{
    if (nring_cache > 0)
        return ring_cache[--nring_cache];
    return malloc(FY_PIPELINE_MAX * sizeof(fy_access_t));
}

void fy_access_ring_put(fy_access_t *ring)
{
    if (ring == NULL)
        return;
    if (nring_cache < RING_CACHE)
        ring_cache[nring_cache++] = ring;
    else
        free(ring);
}
