/*
 * tunnel.c: a tunnel of the agent: made from a definition (the command
 * line, the config file or a POST to the local API), started, stopped, and
 * shown as ngrok's tunnel object. A removed tunnel is unlinked at once and
 * freed once the last of its connections is (their frees run as tasks).
 */
#include "agent/agent.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

static void free_task(fy_ev_t *ev, fy_task_t *t)
{
    fy_atunnel_t *tn = t->data;
    fy_upset_fini(&tn->ups);
    free(tn);
}

fy_atunnel_t *fy_atunnel_new(fy_agent_t *a, const fy_tcfg_t *tc, char *err, size_t errlen)
{
    fy_atunnel_t *tn = calloc(1, sizeof(*tn)), **pp;
    uint8_t rid[16];
    unsigned i, best = 0;

    if (tn == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    tn->agent = a;
    snprintf(tn->name, sizeof(tn->name), "%s", tc->name);
    snprintf(tn->id, sizeof(tn->id), "%s", tc->id);
    tn->want_conns = tc->connections ? tc->connections : 1;
    randombytes_buf(rid, sizeof(rid));
    sodium_bin2hex(tn->api_id, sizeof(tn->api_id), rid, sizeof(rid));
    if (tc->host_header[0] == '\0' || strcmp(tc->host_header, "preserve") == 0) {
        tn->hh_mode = FY_HH_PRESERVE;
    } else if (strcmp(tc->host_header, "rewrite") == 0) {
        tn->hh_mode = FY_HH_REWRITE;
    } else {
        tn->hh_mode = FY_HH_VALUE;
        snprintf(tn->hh_value, sizeof(tn->hh_value), "%s", tc->host_header);
    }
    snprintf(tn->basic_auth, sizeof(tn->basic_auth), "%s", tc->basic_auth);
    if (fy_upset_init(&tn->ups, a->ev, tc, tn->name, err, errlen) != FY_OK) {
        fy_upset_fini(&tn->ups);
        free(tn);
        return NULL;
    }
    /* ngrok's config.addr: the upstream new streams prefer. */
    for (i = 1; i < tn->ups.n; i++)
        if (tn->ups.u[i].priority > tn->ups.u[best].priority)
            best = i;
    snprintf(tn->addr_display, sizeof(tn->addr_display), "%s", tn->ups.u[best].url);
    tn->free_task.cb = free_task;
    tn->free_task.data = tn;
    fy__tconn_init_tunnel(tn);
    for (pp = &a->tunnels; *pp != NULL; pp = &(*pp)->next)
        ;
    *pp = tn;
    fy_status_dirty(a);
    return tn;
}

fy_atunnel_t *fy_atunnel_find(fy_agent_t *a, const char *name)
{
    fy_atunnel_t *tn;
    for (tn = a->tunnels; tn != NULL; tn = tn->next)
        if (strcmp(tn->name, name) == 0)
            return tn;
    return NULL;
}

void fy_atunnel_start(fy_atunnel_t *tn)
{
    fy_tconn_open_wanted(tn);
}

void fy_atunnel_remove(fy_atunnel_t *tn)
{
    fy_agent_t *a = tn->agent;
    fy_atunnel_t **pp;

    if (tn->removed)
        return;
    fy_api_tunnel_failed(tn, 503, "the tunnel was stopped", "stopped before the relay accepted it");
    tn->removed = true;
    for (pp = &a->tunnels; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == tn) {
            *pp = tn->next;
            break;
        }
    }
    tn->next = NULL;
    if (tn->ever_ready && !a->stopping)
        fy_alog(FY_AL_INFO, "stopped tunnel", "obj", "tunnels", "name", tn->name, "url", tn->public_url, NULL);
    fy_tconn_stop_all(tn);
    if (tn->conns == NULL)
        fy_task_queue(a->ev, &tn->free_task);
    fy_status_dirty(a);
}

void fy__atunnel_conns_gone(fy_atunnel_t *tn)
{
    if (tn->removed)
        fy_task_queue(tn->agent->ev, &tn->free_task);
}

void fy_atunnel_tick(fy_agent_t *a)
{
    fy_atunnel_t *tn;
    for (tn = a->tunnels; tn != NULL; tn = tn->next) {
        fy_meter_tick(&tn->m_conns);
        fy_meter_tick(&tn->m_http);
    }
}

static void rates(fy_jw_t *w, const fy_meter_t *m, const fy_sample_t *d)
{
    double p[4];
    fy_sample_pcts(d, p);
    fy_jw_key(w, "rate1");
    fy_jw_dbl(w, m->r1);
    fy_jw_key(w, "rate5");
    fy_jw_dbl(w, m->r5);
    fy_jw_key(w, "rate15");
    fy_jw_dbl(w, m->r15);
    fy_jw_key(w, "p50");
    fy_jw_dbl(w, p[0]);
    fy_jw_key(w, "p90");
    fy_jw_dbl(w, p[1]);
    fy_jw_key(w, "p95");
    fy_jw_dbl(w, p[2]);
    fy_jw_key(w, "p99");
    fy_jw_dbl(w, p[3]);
}

void fy_atunnel_json(fy_atunnel_t *tn, fy_jw_t *w)
{
    static const char hex[] = "0123456789ABCDEF";
    char uri[64 * 3 + 16];
    size_t i, o;

    o = (size_t)snprintf(uri, sizeof(uri), "/api/tunnels/");
    for (i = 0; tn->name[i] != '\0'; i++) {
        unsigned char c = (unsigned char)tn->name[i];
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || strchr("-._~", c)) {
            uri[o++] = (char)c;
        } else {
            uri[o++] = '%';
            uri[o++] = hex[c >> 4];
            uri[o++] = hex[c & 15];
        }
    }
    uri[o] = '\0';
    fy_jw_obj(w);
    fy_jw_key(w, "name");
    fy_jw_str(w, tn->name);
    fy_jw_key(w, "ID");
    fy_jw_str(w, tn->api_id);
    fy_jw_key(w, "uri");
    fy_jw_str(w, uri);
    fy_jw_key(w, "public_url");
    fy_jw_str(w, tn->public_url);
    fy_jw_key(w, "proto");
    fy_jw_str(w, strncmp(tn->public_url, "https:", 6) == 0 ? "https" : "http");
    fy_jw_key(w, "config");
    fy_jw_obj(w);
    fy_jw_key(w, "addr");
    fy_jw_str(w, tn->addr_display);
    fy_jw_key(w, "inspect");
    fy_jw_bool(w, true);
    fy_jw_obj_end(w);
    fy_jw_key(w, "metrics");
    fy_jw_obj(w);
    fy_jw_key(w, "conns");
    fy_jw_obj(w);
    fy_jw_key(w, "count");
    fy_jw_u64(w, tn->m_conns.count);
    fy_jw_key(w, "gauge");
    fy_jw_u64(w, tn->streams_open);
    rates(w, &tn->m_conns, &tn->d_conns);
    fy_jw_obj_end(w);
    fy_jw_key(w, "http");
    fy_jw_obj(w);
    fy_jw_key(w, "count");
    fy_jw_u64(w, tn->m_http.count);
    rates(w, &tn->m_http, &tn->d_http);
    fy_jw_obj_end(w);
    fy_jw_obj_end(w);
    fy_jw_obj_end(w);
}
