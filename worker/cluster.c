/*
 * cluster.c: see cluster.h. Each worker keeps its own Redis connection for
 * lookups (a few bytes a second per tunnel in use: answers are cached) and a
 * direct-mapped cache of FY_CLUSTER_SLOTS ids. Requests waiting for an answer
 * are parked (FY_C_LOOKUP); the answer wakes every parked request for that
 * id, so a burst for one remote tunnel costs one GET.
 *
 * The directory value is "NODE ADVERTISE" (master/directory.c writes it).
 */
#include "worker/cluster.h"
#include "worker/nodehdr.h"
#include "worker/redis.h"
#include "log/log.h"

#include <sodium.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define FY_CLUSTER_SLOTS 1024u
#define BAD_NODES        8

enum { E_EMPTY = 0, E_PENDING, E_FOUND, E_ABSENT };

typedef struct {
    char     id[FY_ID_MAX + 1];
    uint8_t  state;
    char     node[FY_NODE_MAX + 1];
    char     advertise[128];
    char     addr[64];        /* IP:PORT of advertise */
    uint64_t expires;         /* ms */
} entry_t;

typedef struct {
    char     addr[64];
    uint64_t until;           /* ms */
} bad_t;

struct fy_cluster_s {
    fy_worker_t *w;
    fy_redis_t   redis;
    entry_t      cache[FY_CLUSTER_SLOTS];
    bad_t        bad[BAD_NODES];
};

static entry_t *slot_of(fy_cluster_t *cl, const char *id)
{
    uint64_t h = 1469598103934665603ull;
    for (const char *p = id; *p; p++)
        h = (h ^ (uint8_t)*p) * 1099511628211ull;
    return &cl->cache[h & (FY_CLUSTER_SLOTS - 1)];
}

static entry_t *find(fy_cluster_t *cl, const char *id)
{
    entry_t *e = slot_of(cl, id);
    return e->state != E_EMPTY && strcmp(e->id, id) == 0 ? e : NULL;
}

static bool is_bad(fy_cluster_t *cl, const char *addr, uint64_t now)
{
    for (int i = 0; i < BAD_NODES; i++)
        if (cl->bad[i].until > now && strcmp(cl->bad[i].addr, addr) == 0)
            return true;
    return false;
}

static void on_state(fy_redis_t *r, bool up, const char *why)
{
    fy_cluster_t *cl = r->data;
    fy_worker_t *w = cl->w;

    atomic_store(&w->rec->cluster[FY_CC_DIRECTORY_UP], up ? 1 : 0);
    /* The master says it loudly once for the node; each worker notes it. */
    if (up)
        fy_log_info("worker %d: cluster directory %s answers", w->index, w->conf->cluster.redis);
    else
        fy_log_info("worker %d: cluster directory %s unreachable: %s", w->index, w->conf->cluster.redis,
                    why ? why : "?");
}

int fy_cluster_start(fy_worker_t *w)
{
    const fy_conf_cluster_t *cc = &w->conf->cluster;
    fy_cluster_t *cl;

    if (!cc->on)
        return FY_OK;
    if ((cl = calloc(1, sizeof(*cl))) == NULL)
        return FY_ERR;
    cl->w = w;
    w->cluster = cl;
    atomic_store(&w->rec->cluster[FY_CC_DIRECTORY_UP], 0);
    return fy_redis_start(&cl->redis, w->ev, cc->redis_addr, cc->redis_password, cc->timeout, on_state, cl);
}

void fy_cluster_stop(fy_worker_t *w)
{
    if (w->cluster == NULL)
        return;
    fy_redis_stop(&w->cluster->redis);
    free(w->cluster);
    w->cluster = NULL;
}

/* --- the node MAC ------------------------------------------------------------ */

static void mac(const fy_conf_t *conf, const fy_h1_request_t *req, const char *node, size_t nl, int64_t ts,
                const char *client, size_t cl, bool https, uint8_t out[32])
{
    crypto_generichash_state st;
    char tsb[24];
    int tl = snprintf(tsb, sizeof(tsb), "%lld", (long long)ts);

    crypto_generichash_init(&st, conf->cluster.key, sizeof(conf->cluster.key), 32);
    crypto_generichash_update(&st, (const uint8_t *)"ferry.node.v1\n", 14);
    crypto_generichash_update(&st, (const uint8_t *)req->method, req->method_len);
    crypto_generichash_update(&st, (const uint8_t *)" ", 1);
    crypto_generichash_update(&st, (const uint8_t *)req->target, req->target_len);
    crypto_generichash_update(&st, (const uint8_t *)"\n", 1);
    if (req->host != NULL)
        crypto_generichash_update(&st, (const uint8_t *)req->host, req->host_len);
    crypto_generichash_update(&st, (const uint8_t *)"\n", 1);
    crypto_generichash_update(&st, (const uint8_t *)node, nl);
    crypto_generichash_update(&st, (const uint8_t *)"\n", 1);
    crypto_generichash_update(&st, (const uint8_t *)tsb, (size_t)tl);
    crypto_generichash_update(&st, (const uint8_t *)"\n", 1);
    crypto_generichash_update(&st, (const uint8_t *)client, cl);
    crypto_generichash_update(&st, (const uint8_t *)(https ? "\nhttps" : "\nhttp"), https ? 6 : 5);
    crypto_generichash_final(&st, out, 32);
}

ssize_t fy_cluster_sign(const fy_conf_t *conf, const fy_h1_request_t *req, const char *client, bool https,
                        int64_t now, char *out, size_t cap)
{
    uint8_t m[32];
    char hex[65];
    int n;

    mac(conf, req, conf->cluster.node, strlen(conf->cluster.node), now, client, strlen(client), https, m);
    sodium_bin2hex(hex, sizeof(hex), m, sizeof(m));
    n = snprintf(out, cap, "%s %lld %s %s %s", conf->cluster.node, (long long)now, client, https ? "https" : "http",
                 hex);
    return n < 0 || (size_t)n >= cap ? FY_ERR : n;
}

int fy_cluster_inbound(fy_client_t *c, const fy_h1_request_t *req, const char **code, const char **msg)
{
    const fy_conf_t *conf = c->w->conf;
    const fy_h1_header_t *h;
    fy_node_hdr_t nh;
    uint8_t want[32];
    struct sockaddr_storage ss;
    socklen_t sl;
    int64_t now = (int64_t)time(NULL);

    c->from_node = false;
    if (!conf->cluster.on || (h = fy_h1_find(req->headers, req->nheaders, FY_CLUSTER_HEADER)) == NULL)
        return 0;   /* not clustered: rewritten away, never trusted */
    *code = "node_mac_invalid";
    *msg = "X-Ferry-Forwarded: not a valid node signature";
    if (fy_node_hdr_parse(h->value, h->value_len, &nh) != FY_OK)
        return -1;
    mac(conf, req, nh.node, nh.node_len, nh.ts, nh.client, strlen(nh.client), nh.https, want);
    if (sodium_memcmp(want, nh.mac, sizeof(want)) != 0)
        return -1;
    if (nh.ts < now - FY_CLUSTER_MAC_WINDOW_S || nh.ts > now + FY_CLUSTER_MAC_WINDOW_S) {
        *code = "node_mac_stale";
        *msg = "X-Ferry-Forwarded: the node signature is too old (or the nodes' clocks disagree)";
        return -1;
    }
    if (fy_net_parse_addr(nh.client, &ss, &sl) != FY_OK)
        return -1;
    /* The node vouches for the client: rules and X-Forwarded-For see it. */
    c->peer = ss;
    fy_net_format_ip((const struct sockaddr *)&ss, c->peer_ip);
    fy_net_format((const struct sockaddr *)&ss, c->peer_addr);
    c->from_node = true;
    c->tls = nh.https;   /* X-Forwarded-Proto says what the end user used */
    if (c->hops == 0)
        fy_cluster_count(c->w, FY_CC_FORWARDED_IN, 1);
    return 1;
}

/* --- lookups ------------------------------------------------------------------- */

/* Wake the requests parked on slot e (its id's, and any whose id shares
 * the slot and found it taken: they look again). */
static void wake(fy_cluster_t *cl, const entry_t *e)
{
    fy_worker_t *w = cl->w;
    fy_client_t *c, *next;

    for (c = w->clients; c != NULL && w->nparked > 0; c = next) {
        next = c->next;
        if (c->state == FY_C_LOOKUP && slot_of(cl, c->tunnel_id) == e) {
            c->state = FY_C_HEAD;
            w->nparked--;
            fy_client_resume(c);
        }
    }
}

static void on_lookup(fy_redis_t *r, const redisReply *reply, void *data)
{
    fy_cluster_t *cl = r->data;
    char *id = data;
    entry_t *e = slot_of(cl, id);
    uint64_t now = fy_ev_now(cl->w->ev);

    if (strcmp(e->id, id) == 0 && e->state == E_PENDING) {
        e->state = E_EMPTY;
        if (reply != NULL && reply->type == REDIS_REPLY_NIL) {
            e->state = E_ABSENT;
            e->expires = now + FY_CLUSTER_MISS_MS;
        } else if (reply != NULL && reply->type == REDIS_REPLY_STRING) {
            const char *sp = memchr(reply->str, ' ', reply->len);
            size_t nl = sp ? (size_t)(sp - reply->str) : 0, al = sp ? reply->len - nl - 1 : 0;
            if (sp != NULL && nl > 0 && nl <= FY_NODE_MAX && al > 7 && al < sizeof(e->advertise)
                && memcmp(sp + 1, "http://", 7) == 0 && al - 7 < sizeof(e->addr)) {
                memcpy(e->node, reply->str, nl);
                e->node[nl] = '\0';
                memcpy(e->advertise, sp + 1, al);
                e->advertise[al] = '\0';
                memcpy(e->addr, sp + 8, al - 7);
                e->addr[al - 7] = '\0';
                e->state = E_FOUND;
                e->expires = now + FY_CLUSTER_CACHE_MS;
            } else {
                fy_log_warn("cluster: directory entry for tunnel %s is malformed; ignored", id);
                e->state = E_ABSENT;
                e->expires = now + FY_CLUSTER_MISS_MS;
            }
        }
    }
    wake(cl, e);
    free(id);
}

void fy_cluster_invalidate(fy_worker_t *w, const char *id, const char *bad_addr)
{
    fy_cluster_t *cl = w->cluster;
    entry_t *e;
    int i, oldest = 0;

    if (cl == NULL)
        return;
    if ((e = find(cl, id)) != NULL && e->state != E_PENDING)
        e->state = E_EMPTY;
    if (bad_addr == NULL)
        return;
    for (i = 1; i < BAD_NODES; i++)
        if (cl->bad[i].until < cl->bad[oldest].until)
            oldest = i;
    snprintf(cl->bad[oldest].addr, sizeof(cl->bad[oldest].addr), "%s", bad_addr);
    cl->bad[oldest].until = fy_ev_now(w->ev) + FY_CLUSTER_BAD_NODE_MS;
}

bool fy_cluster_recheck(fy_client_t *c)
{
    fy_cluster_t *cl = c->w->cluster;
    entry_t *e;

    if (cl == NULL || c->from_node || c->hops >= FY_MAX_HOPS)
        return false;
    e = find(cl, c->tunnel_id);
    if (e == NULL)
        return true;
    if (e->state == E_PENDING)
        return false;
    if (fy_ev_now(c->w->ev) >= e->expires)
        return true;   /* time to ask again */
    /* A fresh owner elsewhere that is neither us nor a node that just refused. */
    return e->state == E_FOUND && strcmp(e->node, c->w->conf->cluster.node) != 0
        && !is_bad(cl, e->addr, fy_ev_now(c->w->ev));
}

/* The 307 target: the owner's advertise URL and a target that names the
 * tunnel there (a Host-routed request is sent by path prefix, since the
 * owner's address names no tunnel). */
static bool location(const fy_conf_t *conf, const entry_t *e, const fy_h1_request_t *req, const char *id,
                     enum fy_route_via via, char *out, size_t cap)
{
    int n;
    if (via == FY_VIA_HOST)
        n = snprintf(out, cap, "%s%s/%s%.*s", e->advertise, conf->path_prefix, id, (int)req->path_len, req->path);
    else
        n = snprintf(out, cap, "%s%.*s", e->advertise, (int)req->path_len, req->path);
    return n > 0 && (size_t)n < cap;
}

enum fy_cluster_action fy_cluster_route(fy_client_t *c, const fy_h1_request_t *req, const char *id,
                                        enum fy_route_via via, char *loc, size_t cap)
{
    fy_worker_t *w = c->w;
    fy_cluster_t *cl = w->cluster;
    uint64_t now = fy_ev_now(w->ev);
    fy_shm_entry_t se;
    entry_t *e;
    char *key;

    if (cl == NULL || c->from_node || c->admin || c->hops >= FY_MAX_HOPS
        || (fy_shm_lookup(&w->shm, id, &se) && se.nowners > 0))
        return FY_CLUSTER_LOCAL;   /* a worker here holds it, or may again soon */
    e = find(cl, id);
    if (e != NULL && e->state == E_FOUND && now < e->expires) {
        if (strcmp(e->node, w->conf->cluster.node) == 0 || is_bad(cl, e->addr, now))
            return FY_CLUSTER_LOCAL;   /* a stale entry of ours, or a node that just refused */
        if (w->conf->cluster.redirect) {
            if (!location(w->conf, e, req, id, via, loc, cap))
                return FY_CLUSTER_LOCAL;
            fy_cluster_count(w, FY_CC_REDIRECTS, 1);
            return FY_CLUSTER_REDIRECT;
        }
        fy_cluster_count(w, FY_CC_FORWARDED_OUT, 1);
        fy_fwd_start(c, req, id, e->addr);
        return FY_CLUSTER_GONE;
    }
    if (e != NULL && e->state == E_ABSENT && now < e->expires)
        return FY_CLUSTER_LOCAL;
    if (e != NULL && e->state == E_PENDING)
        return FY_CLUSTER_LOOKUP;
    if (!cl->redis.up) {
        fy_cluster_count(w, FY_CC_UNAVAILABLE, 1);
        return FY_CLUSTER_DOWN;
    }
    if ((key = strdup(id)) == NULL)
        return FY_CLUSTER_DOWN;
    e = slot_of(cl, id);
    if (e->state == E_PENDING) {
        free(key);
        return FY_CLUSTER_LOOKUP;   /* another id's lookup holds the slot: woken with it, then look again */
    }
    memset(e, 0, sizeof(*e));
    snprintf(e->id, sizeof(e->id), "%s", id);
    e->state = E_PENDING;
    if (fy_redis_command(&cl->redis, on_lookup, key, "GET %s%s", FY_CLUSTER_KEY_PREFIX, id) != FY_OK) {
        free(key);
        e->state = E_EMPTY;
        fy_cluster_count(w, FY_CC_UNAVAILABLE, 1);
        return FY_CLUSTER_DOWN;
    }
    fy_cluster_count(w, FY_CC_LOOKUPS, 1);
    return FY_CLUSTER_LOOKUP;
}
