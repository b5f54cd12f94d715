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
#include <stdio.h>
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

static size_t put_path(char *out, size_t cap, const char *s, size_t n, bool json)
{
    if (json)
        return fy_log_json_escape(out, cap, s, n);
    n = FY_MIN(n, cap);
    memcpy(out, s, n);
    return n;
}

void fy_access_log(fy_worker_t *w, const fy_client_t *c, const fy_access_t *a, int status, uint64_t bytes,
                   const char *err_code)
{
    char line[1024], ts[32];
    struct timespec now;
    struct tm tm;
    bool json = w->conf->log_json;
    uint64_t ms = fy_ev_now(w->ev) - a->start;
    size_t n = 0;
    int r;

    if (w->access_buf == NULL)
        return;
    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &tm);
    strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", &tm);
    if (json) {
        r = snprintf(line, sizeof(line), "{\"t\":\"%s\",\"type\":\"access\",\"client\":\"%s\",\"tunnel\":\"%s\","
                     "\"method\":\"", ts, c->peer_addr, a->tunnel[0] ? a->tunnel : "-");
        n = r > 0 ? (size_t)r : 0;
        n += put_path(line + n, 40, a->method, a->method_len, true);
        n += (size_t)snprintf(line + n, sizeof(line) - n, "\",\"path\":\"");
        n += put_path(line + n, sizeof(line) - n - 200, a->path, a->path_len, true);
        r = snprintf(line + n, sizeof(line) - n,
                     "\",\"status\":%d,\"bytes\":%llu,\"duration_ms\":%llu,\"worker\":%d,\"handoff\":%s%s%s%s}\n",
                     status, (unsigned long long)bytes, (unsigned long long)ms, w->index,
                     a->handoff ? "true" : "false", err_code ? ",\"error\":\"" : "", err_code ? err_code : "",
                     err_code ? "\"" : "");
    } else {
        r = snprintf(line, sizeof(line), "%s %s tunnel=%s \"", ts, c->peer_addr, a->tunnel[0] ? a->tunnel : "-");
        n = r > 0 ? (size_t)r : 0;
        n += put_path(line + n, 16, a->method, a->method_len, false);
        line[n++] = ' ';
        n += put_path(line + n, sizeof(line) - n - 200, a->path, a->path_len, false);
        r = snprintf(line + n, sizeof(line) - n, "\" %d %llu %llums worker=%d handoff=%d%s%s\n", status,
                     (unsigned long long)bytes, (unsigned long long)ms, w->index, a->handoff ? 1 : 0,
                     err_code ? " error=" : "", err_code ? err_code : "");
    }
    if (r < 0)
        return;
    n = FY_MIN(n + (size_t)r, sizeof(line));
    if (w->access_len + n > ACCESS_BUF)
        fy_access_flush(w);
    memcpy(w->access_buf + w->access_len, line, n);
    w->access_len += n;
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
    snprintf(a->tunnel, sizeof(a->tunnel), "%s", tunnel ? tunnel : "");
    a->handoff = handoff;
}
