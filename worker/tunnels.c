/*
 * tunnels.c: the worker's tunnel table, id -> tunnel. A chained hash of a
 * fixed size, local to the worker in this build; the shared-memory table of
 * DESIGN.md takes its place when several workers share tunnels.
 */
#include "worker/worker.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TUNNEL_BUCKETS 4096

static uint32_t hash_id(const char *s)
{
    uint32_t h = 2166136261u;   /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

fy_tunnel_t *fy_tunnel_find(fy_worker_t *w, const char *id)
{
    fy_tunnel_t *t;
    if (w->tunnels == NULL)
        return NULL;
    for (t = w->tunnels[hash_id(id) & (w->ntbuckets - 1)]; t != NULL; t = t->hnext)
        if (strcmp(t->id, id) == 0)
            return t;
    return NULL;
}

fy_tunnel_t *fy_tunnel_add(fy_worker_t *w, const char *id, const char *session, const char *holder)
{
    fy_tunnel_t *t, **b;

    if (w->tunnels == NULL) {
        if ((w->tunnels = calloc(TUNNEL_BUCKETS, sizeof(*w->tunnels))) == NULL)
            return NULL;
        w->ntbuckets = TUNNEL_BUCKETS;
    }
    if ((t = calloc(1, sizeof(*t))) == NULL)
        return NULL;
    strcpy(t->id, id);
    strcpy(t->session, session);
    strcpy(t->holder, holder);
    b = &w->tunnels[hash_id(id) & (w->ntbuckets - 1)];
    t->hnext = *b;
    *b = t;
    w->ntunnels++;
    return t;
}

void fy_tunnel_remove(fy_worker_t *w, fy_tunnel_t *t)
{
    fy_tunnel_t **pp;
    for (pp = &w->tunnels[hash_id(t->id) & (w->ntbuckets - 1)]; *pp != NULL; pp = &(*pp)->hnext) {
        if (*pp == t) {
            *pp = t->hnext;
            w->ntunnels--;
            free(t);
            return;
        }
    }
}
