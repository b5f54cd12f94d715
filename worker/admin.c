/*
 * admin.c: the admin listener (SPEC.md "Admin listener"): /health,
 * /metrics (Prometheus text) and /api/tunnels (JSON).
 */
#include "worker/worker.h"
#include "worker/cluster.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdarg.h>
#include <unistd.h>

const char *const fy_error_codes[] = {
    "other", "no_tunnel", "tunnel_offline", "upstream_refused", "upstream_timeout", "tunnel_busy",
    "bad_request", "header_too_large", "header_timeout", "body_timeout", "bad_version", "bad_response",
    "upstream_closed", "tunnel_lost", "tunnel_taken", "handoff_failed", "busy", "draining", "relay_full",
    "bad_tunnel_id", "token_missing", "token_malformed", "token_bad_signature", "token_expired", "token_revoked",
    "token_unknown", "tunnel_forbidden", "denied", "tls_hello", "misdirected", "tls_required",
    "cluster_unavailable", "node_mac_invalid", "node_mac_stale", NULL,
};

_Static_assert(sizeof(fy_error_codes) / sizeof(fy_error_codes[0]) <= 1 + sizeof(((fy_shm_worker_t *)0)->errors) / sizeof(uint64_t),
               "every error code has a counter in the shared worker record");

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

static uint64_t sum(fy_worker_t *w, size_t offset)
{
    uint64_t n = 0;
    int i;
    for (i = 0; i < FY_SHM_MAX_WORKERS; i++)   /* every generation's records */
        n += atomic_load_explicit((_Atomic uint64_t *)((char *)fy_shm_worker(&w->shm, (unsigned)i) + offset),
                                  memory_order_relaxed);
    return n;
}

#define SUM(field) (unsigned long long)sum(w, offsetof(fy_shm_worker_t, field))

/* The cluster's share of /metrics (README "Running several nodes"). */
static void cluster_metrics(fy_worker_t *w, text_t *t)
{
    unsigned up = 1;
    int i;

    for (i = w->base; i < w->base + w->nworkers; i++)
        up &= (unsigned)atomic_load(&fy_shm_worker(&w->shm, (unsigned)i)->cluster[FY_CC_DIRECTORY_UP]) & 1u;
    tprintf(t, "# TYPE ferry_cluster_node_info gauge\nferry_cluster_node_info{node=\"%s\",mode=\"%s\"} 1\n",
            w->conf->cluster.node, w->conf->cluster.redirect ? "redirect" : "proxy");
    tprintf(t, "# TYPE ferry_cluster_directory_up gauge\nferry_cluster_directory_up %u\n", up);
    tprintf(t, "# TYPE ferry_cluster_requests_total counter\n");
    tprintf(t, "ferry_cluster_requests_total{direction=\"forwarded_out\"} %llu\n", SUM(cluster[FY_CC_FORWARDED_OUT]));
    tprintf(t, "ferry_cluster_requests_total{direction=\"forwarded_in\"} %llu\n", SUM(cluster[FY_CC_FORWARDED_IN]));
    tprintf(t, "ferry_cluster_requests_total{direction=\"redirected\"} %llu\n", SUM(cluster[FY_CC_REDIRECTS]));
    tprintf(t, "# TYPE ferry_cluster_lookups_total counter\nferry_cluster_lookups_total %llu\n",
            SUM(cluster[FY_CC_LOOKUPS]));
    tprintf(t, "# TYPE ferry_cluster_forward_failures_total counter\nferry_cluster_forward_failures_total %llu\n",
            SUM(cluster[FY_CC_FORWARD_FAILED]));
    tprintf(t, "# TYPE ferry_cluster_unavailable_total counter\nferry_cluster_unavailable_total %llu\n",
            SUM(cluster[FY_CC_UNAVAILABLE]));
}

/* Prometheus text for the whole host: every worker's record is summed. */
static void metrics(fy_worker_t *w, text_t *t)
{
    const fy_shm_hdr_t *h = w->shm.hdr;
    int i;

    tprintf(t, "# TYPE ferry_tunnels gauge\nferry_tunnels %u\n", h->used);
    tprintf(t, "# TYPE ferry_workers gauge\nferry_workers %d\n", w->nworkers);
    tprintf(t, "# TYPE ferry_agent_connections_total counter\nferry_agent_connections_total %llu\n",
            SUM(agent_connects));
    tprintf(t, "# TYPE ferry_requests_total counter\nferry_requests_total %llu\n", SUM(requests));
    tprintf(t, "# TYPE ferry_bytes_total counter\n");
    tprintf(t, "ferry_bytes_total{direction=\"in\"} %llu\n", SUM(bytes_in));
    tprintf(t, "ferry_bytes_total{direction=\"out\"} %llu\n", SUM(bytes_out));
    tprintf(t, "# TYPE ferry_handoffs_total counter\n");
    tprintf(t, "ferry_handoffs_total{outcome=\"sent\"} %llu\n", SUM(handoffs_sent));
    tprintf(t, "ferry_handoffs_total{outcome=\"received\"} %llu\n", SUM(handoffs_received));
    tprintf(t, "ferry_handoffs_total{outcome=\"failed\"} %llu\n", SUM(handoffs_failed));
    tprintf(t, "# TYPE ferry_errors_total counter\n");
    for (i = 0; fy_error_codes[i] != NULL; i++)
        tprintf(t, "ferry_errors_total{code=\"%s\"} %llu\n", fy_error_codes[i],
                (unsigned long long)sum(w, offsetof(fy_shm_worker_t, errors) + (size_t)i * sizeof(uint64_t)));
    if (w->conf->cluster.on)
        cluster_metrics(w, t);
    tprintf(t, "# TYPE ferry_worker_restarts_total counter\nferry_worker_restarts_total %llu\n",
            (unsigned long long)atomic_load(&w->shm.hdr->worker_restarts));
    tprintf(t, "# TYPE ferry_reloads_total counter\nferry_reloads_total %llu\n",
            (unsigned long long)atomic_load(&w->shm.hdr->reloads));
}

/* Every tunnel on the host, from the shared table, whichever worker asks.
 * A scan that a table rebuild overlapped (slots moved) is done again. */
static void tunnels_json(fy_worker_t *w, text_t *t)
{
    int attempt;

    for (attempt = 0; attempt < 8; attempt++) {
        uint32_t e1 = atomic_load_explicit(&w->shm.hdr->epoch, memory_order_acquire), i;
        bool first = true;

        t->b.rpos = t->b.wpos = 0;
        if (e1 & 1)
            continue;
        if (w->conf->cluster.on)   /* node names are [a-z0-9._-] */
            tprintf(t, "{\"node\":\"%s\",\"tunnels\":[", w->conf->cluster.node);
        else
            tprintf(t, "{\"tunnels\":[");
        for (i = 0; i < w->shm.hdr->capacity; i++) {
            fy_shm_entry_t e;
            int owner;
            if (!fy_shm_read_slot(&w->shm, i, &e))
                continue;
            owner = e.nowners > 0 ? e.owners[0].worker : -1;
            /* ids are [a-z0-9-] and addresses are numeric: nothing to escape */
            tprintf(t, "%s{\"id\":\"%s\",\"worker\":%d,\"worker_pid\":%d,\"workers\":[",
                    first ? "" : ",", e.id, owner,
                    owner >= 0 ? (int)atomic_load(&fy_shm_worker(&w->shm, (unsigned)owner)->pid) : 0);
            for (uint32_t k = 0; k < e.nowners; k++)
                tprintf(t, "%s%u", k ? "," : "", e.owners[k].worker);
            tprintf(t, "],\"connections\":%u,\"connected_since\":%lld,\"requests\":%llu,\"bytes_in\":%llu,"
                    "\"bytes_out\":%llu,\"agent\":\"%s\",\"local\":true}",
                    e.nowners, (long long)e.connected_since, (unsigned long long)e.requests,
                    (unsigned long long)e.bytes_in, (unsigned long long)e.bytes_out, e.agent_addr);
            first = false;
        }
        tprintf(t, "]}\n");
        if (atomic_load_explicit(&w->shm.hdr->epoch, memory_order_acquire) == e1)
            return;
    }
}

static bool all_workers_up(fy_worker_t *w)
{
    int i;
    for (i = w->base; i < w->base + w->nworkers; i++)
        if (atomic_load(&fy_shm_worker(&w->shm, (unsigned)i)->state) != FY_SHM_W_UP)
            return false;
    return true;
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
        if (w->draining)
            fy_client_respond(c, 503, ctype, NULL, "draining\n", 9, keep);
        else if (!all_workers_up(w))
            fy_client_respond(c, 503, ctype, NULL, "a worker is down\n", 17, keep);
        else
            fy_client_respond(c, 200, ctype, NULL, "ok\n", 3, keep);
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
