/*
 * directory.c: see directory.h. The master is the node's one writer, as it
 * is the shared table's: REGISTER/UNREGISTER and worker deaths pass through
 * it, so it knows first when a tunnel appears or goes.
 *
 * Writes:
 *   up       SET key value PX ttl                  (newest holder wins: an agent
 *                                                    that moved here after a node
 *                                                    died takes over its entry)
 *   refresh  EVAL "set if absent or ours" key value ttl   every ttl/3, for every id
 *                                                    in the table (after Redis
 *                                                    restarts empty, this is the
 *                                                    re-registration)
 *   down     EVAL "del if ours" key value
 * Replies are not waited for; a failed write is repaired by the next refresh
 * or by expiry.
 */
#include "master/directory.h"
#include "worker/cluster.h"
#include "worker/redis.h"
#include "log/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char REFRESH_LUA[] =
    "local v = redis.call('GET', KEYS[1]) "
    "if v == false or v == ARGV[1] then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end "
    "return 0";
static const char DELETE_LUA[] =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

static struct {
    master_t   *m;
    fy_redis_t  redis;
    fy_timer_t  refresh;
    char        value[FY_NODE_MAX + 160];    /* "NODE ADVERTISE" */
    char      (*swept)[FY_SHM_ID_LEN];       /* ids of a dying worker */
    uint32_t    nswept;
    bool        on;
} D;

static uint64_t ttl(void)
{
    return D.m->conf->cluster.ttl;
}

static unsigned refresh_all(void)
{
    fy_shm_t *s = &D.m->shm;
    unsigned n = 0;
    uint32_t i;

    for (i = 0; i < s->hdr->capacity; i++) {
        fy_shm_entry_t e;
        if (!fy_shm_read_slot(s, i, &e) || e.nowners == 0)
            continue;
        if (fy_redis_command(&D.redis, NULL, NULL, "EVAL %s 1 %s%s %s %llu", REFRESH_LUA, FY_CLUSTER_KEY_PREFIX,
                             e.id, D.value, (unsigned long long)ttl()) != FY_OK)
            break;
        n++;
    }
    return n;
}

static void on_refresh(fy_ev_t *ev, fy_timer_t *t)
{
    /* The PING notices a Redis that stopped answering even on a node that
     * holds no tunnel (a command unanswered for cluster.timeout: down). */
    if (D.redis.up && fy_redis_command(&D.redis, NULL, NULL, "PING") == FY_OK)
        (void)refresh_all();
    fy_timer_arm(ev, &D.refresh, ttl() / 3);
}

static void on_state(fy_redis_t *r, bool up, const char *why)
{
    const fy_conf_cluster_t *cc = &D.m->conf->cluster;

    if (up) {
        unsigned n = refresh_all();
        fy_log_warn("cluster: directory %s answers (node %s): registered %u local tunnel%s; "
                    "requests for other nodes' tunnels are served", cc->redis, cc->node, n, n == 1 ? "" : "s");
        return;
    }
    fy_log_err("cluster: DIRECTORY %s UNREACHABLE (node %s): %s; this node keeps serving its own tunnels, "
               "requests for other nodes' tunnels get 503 until it answers again (retrying every %d ms)",
               cc->redis, cc->node, why ? why : "?", FY_REDIS_RETRY_MS);
}

int fy_dir_start(master_t *m)
{
    const fy_conf_cluster_t *cc = &m->conf->cluster;

    if (!cc->on)
        return FY_OK;
    D.m = m;
    D.on = true;
    snprintf(D.value, sizeof(D.value), "%s %s", cc->node, cc->advertise);
    D.refresh.cb = on_refresh;
    fy_timer_arm(m->ev, &D.refresh, cc->ttl / 3);
    fy_log_info("cluster: node %s, advertised as %s, directory %s (ttl %llu ms), mode %s", cc->node, cc->advertise,
                cc->redis, (unsigned long long)cc->ttl, cc->redirect ? "redirect" : "proxy");
    return fy_redis_start(&D.redis, m->ev, cc->redis_addr, cc->redis_password, cc->timeout, on_state, NULL);
}

void fy_dir_stop(void)
{
    if (!D.on)
        return;
    fy_timer_stop(D.m->ev, &D.refresh);
    fy_redis_stop(&D.redis);
    free(D.swept);
    D.swept = NULL;
    D.on = false;
}

void fy_dir_child(void)
{
    if (D.on && D.redis.io.fd >= 0)
        close(D.redis.io.fd);
}

void fy_dir_up(const char *id)
{
    if (D.on)
        (void)fy_redis_command(&D.redis, NULL, NULL, "SET %s%s %s PX %llu", FY_CLUSTER_KEY_PREFIX, id, D.value,
                               (unsigned long long)ttl());
}

void fy_dir_check(const char *id)
{
    fy_shm_entry_t e;

    if (!D.on || (fy_shm_lookup(&D.m->shm, id, &e) && e.nowners > 0))
        return;
    (void)fy_redis_command(&D.redis, NULL, NULL, "EVAL %s 1 %s%s %s", DELETE_LUA, FY_CLUSTER_KEY_PREFIX, id, D.value);
}

void fy_dir_before_sweep(uint16_t worker)
{
    fy_shm_t *s;
    uint32_t i, k;

    D.nswept = 0;
    if (!D.on)
        return;
    s = &D.m->shm;
    free(D.swept);
    if ((D.swept = calloc(s->hdr->capacity, sizeof(*D.swept))) == NULL)
        return;   /* the entries expire instead */
    for (i = 0; i < s->hdr->capacity; i++) {
        fy_shm_entry_t e;
        if (!fy_shm_read_slot(s, i, &e))
            continue;
        for (k = 0; k < e.nowners; k++)
            if (e.owners[k].worker == worker) {
                memcpy(D.swept[D.nswept++], e.id, FY_SHM_ID_LEN);
                break;
            }
    }
}

void fy_dir_after_sweep(void)
{
    uint32_t i;

    for (i = 0; D.swept != NULL && i < D.nswept; i++)
        fy_dir_check(D.swept[i]);
    free(D.swept);
    D.swept = NULL;
    D.nswept = 0;
}
