/*
 * cluster.h: a worker's side of a ferryd cluster (README "Running several
 * nodes", docs/internals.md "Several nodes"):
 *
 *  - the directory lookup: `GET ferry:tunnel:{id}` on the worker's own
 *    Redis connection (worker/redis.c), asynchronous, with a small cache
 *    per worker (positive answers for FY_CLUSTER_CACHE_MS, misses for
 *    FY_CLUSTER_MISS_MS; a miss or a failed forward drops the entry);
 *  - the node MAC: a request forwarded between nodes carries
 *    `X-Ferry-Forwarded: NODE UNIXTIME CLIENT PROTO MAC` (docs/PROTOCOL.md §6);
 *    the receiving node checks it (forged or older than
 *    FY_CLUSTER_MAC_WINDOW_S: 403) and never forwards such a request again;
 *  - the forwarder (worker/fwd.c): one request carried to the owner node.
 */
#ifndef FY_CLUSTER_H
#define FY_CLUSTER_H

#include "worker/worker.h"

#define FY_CLUSTER_CACHE_MS     1000   /* a found owner is trusted this long */
#define FY_CLUSTER_MISS_MS      200    /* "no owner" is believed this long (parked requests look again) */
#define FY_CLUSTER_BAD_NODE_MS  2000   /* a node that refused a forward is skipped this long */
#define FY_CLUSTER_MAC_WINDOW_S 30     /* a node MAC older or newer than this is stale */
#define FY_CLUSTER_KEY_PREFIX   "ferry:tunnel:"
#define FY_CLUSTER_HEADER       "x-ferry-forwarded"

/* Counters in the worker's shared record (fy_shm_worker_t.cluster). */
enum fy_cluster_counter {
    FY_CC_FORWARDED_OUT = 0,   /* requests proxied to the owner node */
    FY_CC_FORWARDED_IN,        /* requests that arrived from another node (MAC valid) */
    FY_CC_REDIRECTS,           /* 307 to the owner node (mode: redirect) */
    FY_CC_LOOKUPS,             /* directory GETs sent */
    FY_CC_FORWARD_FAILED,      /* owner node unreachable (connect failed or closed early) */
    FY_CC_UNAVAILABLE,         /* 503: the directory was unreachable */
    FY_CC_DIRECTORY_UP,        /* gauge: this worker's Redis connection answers (0/1) */
    FY_CC_N
};

/* What fy_cluster_route decided for a request whose tunnel is not here. */
enum fy_cluster_action {
    FY_CLUSTER_LOCAL = 0,   /* not clustered, or no owner elsewhere: wait for it here (tunnel_wait) */
    FY_CLUSTER_LOOKUP,      /* a lookup is in flight: park c (FY_C_LOOKUP) until it answers */
    FY_CLUSTER_GONE,        /* c was taken over by a forwarder (do not touch it again) */
    FY_CLUSTER_REDIRECT,    /* answer 307 with location */
    FY_CLUSTER_DOWN,        /* the directory is unreachable: answer 503 */
};

/* Connect the worker's directory reader (nothing when cluster: is off). */
int fy_cluster_start(fy_worker_t *w) FY_MUST_USE;
void fy_cluster_stop(fy_worker_t *w);

/*
 * A request head arrived: if it carries X-Ferry-Forwarded, check its MAC.
 * Returns 0 (an ordinary request: c->from_node false), 1 (forwarded by
 * another node: c->from_node set, c's client address replaced by the one
 * the node vouches for), or -1 when the header is forged or stale: *code
 * and *msg then say what to answer (403).
 */
int fy_cluster_inbound(fy_client_t *c, const fy_h1_request_t *req, const char **code, const char **msg);

/* Decide for request req (head_len bytes at the start of c->in) naming
 * tunnel id, which no worker here holds. location[cap] receives the 307
 * target for FY_CLUSTER_REDIRECT. */
enum fy_cluster_action fy_cluster_route(fy_client_t *c, const fy_h1_request_t *req, const char *id,
                                        enum fy_route_via via, char *location, size_t cap);

/* A parked request (tunnel_wait) should look in the directory again now. */
bool fy_cluster_recheck(fy_client_t *c);

/* Drop the cached owner of id (its node refused or did not hold it), and
 * when bad_addr is not NULL skip that node for a while. */
void fy_cluster_invalidate(fy_worker_t *w, const char *id, const char *bad_addr);

static inline void fy_cluster_count(fy_worker_t *w, enum fy_cluster_counter k, uint64_t n)
{
    atomic_fetch_add_explicit(&w->rec->cluster[k], n, memory_order_relaxed);
}

/* fwd.c: carry request req (its head at the start of c->in) to the node at
 * addr (IP:PORT) with a node MAC; c is taken over (freed) either way. When
 * the node cannot be reached before any byte was sent, the connection
 * comes back as a new client with the same bytes (routed afresh). */
void fy_fwd_start(fy_client_t *c, const fy_h1_request_t *req, const char *id, const char *addr);

/* The X-Ferry-Forwarded value for a request (MAC over method, target, Host,
 * node, time, client, http or https) into out[cap]. Returns its length or FY_ERR. */
ssize_t fy_cluster_sign(const fy_conf_t *conf, const fy_h1_request_t *req, const char *client, bool https,
                        int64_t now, char *out, size_t cap);

#endif
