/*
 * admin.c: the admin listener (SPEC.md "Admin listener"): /health,
 * /metrics (Prometheus text) and /api/tunnels (JSON).
 */
#include "worker/worker.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdarg.h>
#include <unistd.h>

const char *const fy_error_codes[] = {
    "other", "no_tunnel", "tunnel_offline", "upstream_refused", "upstream_timeout", "tunnel_busy",
    "bad_request", "header_too_large", "header_timeout", "body_timeout", "bad_version", "bad_response",
    "upstream_closed", "tunnel_lost", "tunnel_taken", NULL,
};

int fy_error_index(const char *code)
{
    int i;
    for (i = 1; fy_error_codes[i] != NULL; i++)
        if (strcmp(fy_error_codes[i], code) == 0)
            return i;
    return 0;
}

/* A growable text buffer for one admin answer (bounded by the table size). */
typedef struct {
    fy_buf_t b;
    bool     oom;
} text_t;

static void tprintf(text_t *t, const char *fmt, ...) FY_PRINTF(2, 3);

static void tprintf(text_t *t, const char *fmt, ...)
{
    va_list ap;
    int n;

    if (t->oom || fy_buf_reserve(&t->b, 512, 64u << 20) != FY_OK) {
        t->oom = true;
        return;
    }
    va_start(ap, fmt);
    n = vsnprintf((char *)fy_buf_end(&t->b), fy_buf_room(&t->b), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= fy_buf_room(&t->b)) {
        if (fy_buf_reserve(&t->b, (size_t)n + 1, 64u << 20) != FY_OK) {
            t->oom = true;
            return;
        }
        va_start(ap, fmt);
        vsnprintf((char *)fy_buf_end(&t->b), fy_buf_room(&t->b), fmt, ap);
        va_end(ap);
    }
    t->b.wpos += (size_t)n;
}

static void metrics(fy_worker_t *w, text_t *t)
{
    int i;
    tprintf(t, "# TYPE ferry_tunnels gauge\nferry_tunnels %u\n", w->ntunnels);
    tprintf(t, "# TYPE ferry_agent_connections_total counter\nferry_agent_connections_total %llu\n",
            (unsigned long long)w->agent_connects);
    tprintf(t, "# TYPE ferry_clients gauge\nferry_clients %u\n", w->nclients);
    tprintf(t, "# TYPE ferry_requests_total counter\nferry_requests_total %llu\n", (unsigned long long)w->requests);
    tprintf(t, "# TYPE ferry_bytes_total counter\n");
    tprintf(t, "ferry_bytes_total{direction=\"in\"} %llu\n", (unsigned long long)w->bytes_from_clients);
    tprintf(t, "ferry_bytes_total{direction=\"out\"} %llu\n", (unsigned long long)w->bytes_to_clients);
    tprintf(t, "# TYPE ferry_errors_total counter\n");
    for (i = 0; fy_error_codes[i] != NULL; i++)
        tprintf(t, "ferry_errors_total{code=\"%s\"} %llu\n", fy_error_codes[i], (unsigned long long)w->errors[i]);
    tprintf(t, "# TYPE ferry_worker_restarts_total counter\nferry_worker_restarts_total 0\n");
    tprintf(t, "# TYPE ferry_handoffs_total counter\nferry_handoffs_total{outcome=\"ok\"} 0\n");
}

static void tunnels_json(fy_worker_t *w, text_t *t)
{
    uint32_t i;
    bool first = true;

    tprintf(t, "{\"tunnels\":[");
    for (i = 0; w->tunnels != NULL && i < w->ntbuckets; i++) {
        fy_tunnel_t *tn;
        for (tn = w->tunnels[i]; tn != NULL; tn = tn->hnext) {
            /* ids are [a-z0-9-] and addresses are numeric: nothing to escape */
            tprintf(t, "%s{\"id\":\"%s\",\"worker\":%d,\"worker_pid\":%d,\"connections\":%u,"
                    "\"connected_since\":%lld,\"requests\":%llu,\"bytes_in\":%llu,\"bytes_out\":%llu,"
                    "\"streams\":%u,\"agent\":\"%s\"}",
                    first ? "" : ",", tn->id, w->index, (int)getpid(), tn->nconns,
                    (long long)tn->connected_since, (unsigned long long)tn->requests,
                    (unsigned long long)tn->bytes_in, (unsigned long long)tn->bytes_out, tn->nstreams,
                    tn->agent_addr);
            first = false;
        }
    }
    tprintf(t, "]}\n");
}

void fy_admin_request(fy_client_t *c, const fy_h1_request_t *req)
{
    fy_worker_t *w = c->w;
    text_t t = {{0}, false};
    const char *ctype = "text/plain; charset=utf-8";
    size_t pl = req->path ? req->path_len : 0;
    const char *q = req->path ? memchr(req->path, '?', pl) : NULL;
    bool keep = !(req->flags & FY_H1_F_CLOSE);

    if (q != NULL)
        pl = (size_t)(q - req->path);
    if (!(fy_ieq(req->method, req->method_len, "GET") || fy_ieq(req->method, req->method_len, "HEAD"))) {
        fy_client_respond(c, 405, ctype, "Allow: GET, HEAD\r\n", "method not allowed\n", 19, keep);
        return;
    }
    if (pl == 7 && memcmp(req->path, "/health", 7) == 0) {
        fy_client_respond(c, 200, ctype, NULL, w->draining ? "draining\n" : "ok\n", w->draining ? 9 : 3, keep);
        return;
    }
    if (pl == 8 && memcmp(req->path, "/metrics", 8) == 0) {
        metrics(w, &t);
        ctype = "text/plain; version=0.0.4";
    } else if (pl == 12 && memcmp(req->path, "/api/tunnels", 12) == 0) {
        tunnels_json(w, &t);
        ctype = "application/json";
    } else {
        fy_client_respond(c, 404, ctype, NULL, "not found\n", 10, keep);
        return;
    }
    if (t.oom)
        fy_client_respond(c, 503, ctype, NULL, "out of memory\n", 14, false);
    else
        fy_client_respond(c, 200, ctype, NULL, (const char *)fy_buf_data(&t.b), fy_buf_len(&t.b), keep);
    fy_buf_free(&t.b);
}
