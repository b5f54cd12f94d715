/*
 * route.c: which tunnel a request names (SPEC.md "Routing an end-user
 * request") and the head the relay forwards for it.
 */
#include "worker/worker.h"

#include <string.h>

/* The host without its port ("[v6]:p" keeps its brackets). */
static void host_only(const char *h, size_t n, size_t *out)
{
    size_t i;
    if (n > 0 && h[0] == '[') {
        for (i = 0; i < n && h[i] != ']'; i++)
            ;
        *out = i < n ? i + 1 : n;
        return;
    }
    for (i = 0; i < n && h[i] != ':'; i++)
        ;
    *out = i;
}

static int from_host(const fy_worker_t *w, const fy_h1_request_t *req, char *id)
{
    const char *h = req->authority ? req->authority : req->host;
    size_t n = req->authority ? req->authority_len : req->host_len;

    return h == NULL ? FY_ERR : fy_route_host_id(w, h, n, id);
}

int fy_route_host_id(const fy_worker_t *w, const char *h, size_t n, char *id)
{
    size_t dl = strlen(w->conf->domain), idl;

    host_only(h, n, &n);
    if (n > 0 && h[n - 1] == '.')   /* a fully qualified "id.domain." */
        n--;
    if (n < dl + 2 || h[n - dl - 1] != '.' || !fy_ieq(h + n - dl, dl, w->conf->domain))
        return FY_ERR;
    idl = n - dl - 1;
    if (memchr(h, '.', idl) != NULL)
        return FY_ERR;
    return fy_conf_tunnel_id(h, idl, id);
}

bool fy_route_host_names_tunnel(const fy_worker_t *w, const fy_h1_request_t *req)
{
    char id[FY_ID_MAX + 1];
    return from_host(w, req, id) == FY_OK;
}

/* Over TLS: a Host that names another tunnel than the SNI did (the
 * connection was routed, and its certificate chosen, for the SNI's). */
bool fy_route_misdirected(const fy_worker_t *w, const fy_client_t *c, const fy_h1_request_t *req)
{
    char id[FY_ID_MAX + 1];
    return c->sni_id[0] != '\0' && from_host(w, req, id) == FY_OK && strcmp(id, c->sni_id) != 0;
}

/* "/t/ID/rest", "/t/ID", "/t/ID?q": id and where the rest starts. */
static int from_path(const fy_worker_t *w, const fy_h1_request_t *req, char *id, size_t *rest)
{
    const char *p = req->path, *pre = w->conf->path_prefix;
    size_t n = req->path_len, pl = strlen(pre), i;

    if (p == NULL || n < pl + 2 || memcmp(p, pre, pl) != 0 || p[pl] != '/')
        return FY_ERR;
    for (i = pl + 1; i < n && p[i] != '/' && p[i] != '?'; i++)
        ;
    if (fy_conf_tunnel_id(p + pl + 1, i - pl - 1, id) != FY_OK)
        return FY_ERR;
    if (rest)
        *rest = i;
    return FY_OK;
}

static int from_header(const fy_h1_request_t *req, char *id)
{
    const fy_h1_header_t *h = fy_h1_find(req->headers, req->nheaders, "x-tunnel-id");
    return h ? fy_conf_tunnel_id(h->value, h->value_len, id) : FY_ERR;
}

static int from_query(const fy_h1_request_t *req, char *id)
{
    const char *p = req->path, *q, *end;
    if (p == NULL || (q = memchr(p, '?', req->path_len)) == NULL)
        return FY_ERR;
    end = p + req->path_len;
    q++;
    while (q < end) {
        const char *amp = memchr(q, '&', (size_t)(end - q));
        const char *e = amp ? amp : end;
        if (e - q > 9 && memcmp(q, "tunnelid=", 9) == 0)
            return fy_conf_tunnel_id(q + 9, (size_t)(e - q - 9), id);
        q = e + 1;
    }
    return FY_ERR;
}

int fy_route_resolve(const fy_worker_t *w, const fy_h1_request_t *req, char *id, enum fy_route_via *via)
{
    const fy_conf_t *c = w->conf;
    int i;

    for (i = 0; i < c->nroute; i++) {
        switch (c->route_order[i]) {
        case FY_ROUTE_HOST:
            if (from_host(w, req, id) == FY_OK) {
                *via = FY_VIA_HOST;
                return FY_OK;
            }
            break;
        case FY_ROUTE_PATH:
            if (from_path(w, req, id, NULL) == FY_OK) {
                *via = FY_VIA_PATH;
                return FY_OK;
            }
            break;
        case FY_ROUTE_HEADER:
            if (from_header(req, id) == FY_OK) {
                *via = FY_VIA_HEADER;
                return FY_OK;
            }
            break;
        case FY_ROUTE_QUERY:
            if (from_query(req, id) == FY_OK) {
                *via = FY_VIA_QUERY;
                return FY_OK;
            }
            break;
        case FY_ROUTE_DEFAULT:
            if (c->default_tunnel[0] != '\0') {
                strcpy(id, c->default_tunnel);
                *via = FY_VIA_DEFAULT;
                return FY_OK;
            }
            break;
        }
    }
    *via = FY_VIA_NONE;
    return FY_ERR;
}

/* Bounded appender for the forwarded head. */
typedef struct {
    uint8_t *p;
    size_t   len, cap;
    bool     overflow;
} out_t;

static void put(out_t *o, const void *s, size_t n)
{
    if (o->overflow || o->cap - o->len < n) {
        o->overflow = true;
        return;
    }
    memcpy(o->p + o->len, s, n);
    o->len += n;
}

static void puts_(out_t *o, const char *s) { put(o, s, strlen(s)); }

static void put_header(out_t *o, const char *name, const char *v, size_t vl)
{
    puts_(o, name);
    put(o, ": ", 2);
    put(o, v, vl);
    put(o, "\r\n", 2);
}

/*
 * True when a Connection header of req names h (then h is meant for this
 * hop only and is dropped), except Upgrade, which an upgrade carries on,
 * and the framing and routing fields, which the relay has already acted on.
 */
static bool nominated(const fy_h1_request_t *req, const fy_h1_header_t *h)
{
    char name[128];
    size_t i, k;

    /* Never the fields that frame or route the message: dropping them would
     * let a client smuggle its body past the relay as a request. */
    if (h->name_len >= sizeof(name) || fy_ieq(h->name, h->name_len, "upgrade")
        || fy_ieq(h->name, h->name_len, "host") || fy_ieq(h->name, h->name_len, "content-length")
        || fy_ieq(h->name, h->name_len, "transfer-encoding"))
        return false;
    for (k = 0; k < h->name_len; k++)
        name[k] = h->name[k];
    name[k] = '\0';
    for (i = 0; i < req->nheaders; i++) {
        const fy_h1_header_t *c = &req->headers[i];
        if (fy_ieq(c->name, c->name_len, "connection") && fy_h1_has_token(c->value, c->value_len, name))
            return true;
    }
    return false;
}

ssize_t fy_route_rewrite(const fy_worker_t *w, const fy_client_t *c, const fy_h1_request_t *req,
                         const char *id, enum fy_route_via via, uint8_t *buf, size_t cap)
{
    out_t o = {buf, 0, cap, false};
    bool trusted = fy_config_trusted(w->conf, (const struct sockaddr *)&c->peer);
    const char *host = req->host ? req->host : req->authority;
    size_t hostlen = req->host ? req->host_len : req->authority_len, i;
    bool have_proto = false, have_fhost = false;

    /* Request line: origin-form towards the agent's service. */
    put(&o, req->method, req->method_len);
    put(&o, " ", 1);
    if (via == FY_VIA_PATH) {
        size_t rest;
        char tmp[FY_ID_MAX + 1];
        (void)from_path(w, req, tmp, &rest);
        if (rest == req->path_len || req->path[rest] == '?')
            put(&o, "/", 1);
        put(&o, req->path + rest, req->path_len - rest);
    } else if (req->path != NULL) {
        put(&o, req->path, req->path_len);
    } else {
        put(&o, req->target, req->target_len);
    }
    puts_(&o, req->minor == 0 ? " HTTP/1.0\r\n" : " HTTP/1.1\r\n");

    for (i = 0; i < req->nheaders; i++) {
        const fy_h1_header_t *h = &req->headers[i];
        if (fy_ieq(h->name, h->name_len, "x-tunnel-id") || fy_ieq(h->name, h->name_len, "connection")
            || fy_ieq(h->name, h->name_len, "x-ferry-forwarded")   /* node to node only (worker/cluster.c) */
            || fy_ieq(h->name, h->name_len, "keep-alive") || fy_ieq(h->name, h->name_len, "proxy-connection")
            || nominated(req, h))
            continue;
        if (fy_ieq(h->name, h->name_len, "x-forwarded-for")) {
            continue;   /* written below, all lines as one list */
        }
        if (fy_ieq(h->name, h->name_len, "x-forwarded-proto")) {
            if (!trusted || have_proto)
                continue;
            have_proto = true;
        } else if (fy_ieq(h->name, h->name_len, "x-forwarded-host")) {
            if (!trusted || have_fhost)
                continue;
            have_fhost = true;
        } else if (fy_ieq(h->name, h->name_len, "x-forwarded-prefix")) {
            continue;
        }
        put(&o, h->name, h->name_len);
        put(&o, ": ", 2);
        put(&o, h->value, h->value_len);
        put(&o, "\r\n", 2);
    }
    /* Connection is hop-by-hop (RFC 9110 §7.6.1): the relay says only what
     * it means itself, so no client can nominate the headers it adds. An
     * HTTP/1.1 client's "close" is the relay's business alone (it closes
     * that connection after the response): the agent's connection to the
     * service stays open for the next stream, as nginx keeps its upstreams. */
    if ((req->flags & FY_H1_F_CLOSE) && req->minor == 1 && !(req->flags & FY_H1_F_UPGRADE))
        ;
    else if (req->flags & FY_H1_F_CLOSE)
        puts_(&o, (req->flags & FY_H1_F_UPGRADE) ? "Connection: close, upgrade\r\n" : "Connection: close\r\n");
    else if (req->flags & FY_H1_F_UPGRADE)
        puts_(&o, "Connection: upgrade\r\n");
    else if (req->minor == 0)
        puts_(&o, "Connection: keep-alive\r\n");
    puts_(&o, "X-Forwarded-For: ");
    /* A trusted proxy's list goes on, every line of it in order (RFC 9110
     * §5.3 makes repeated lines one list); an untrusted client's is replaced. */
    for (i = 0; trusted && i < req->nheaders; i++) {
        const fy_h1_header_t *h = &req->headers[i];
        if (!fy_ieq(h->name, h->name_len, "x-forwarded-for") || h->value_len == 0)
            continue;
        put(&o, h->value, h->value_len);
        put(&o, ", ", 2);
    }
    puts_(&o, c->peer_ip);
    put(&o, "\r\n", 2);
    if (!have_proto)
        put_header(&o, "X-Forwarded-Proto", c->tls ? "https" : "http", c->tls ? 5 : 4);
    if (!have_fhost && host != NULL)
        put_header(&o, "X-Forwarded-Host", host, hostlen);
    put_header(&o, "X-Tunnel-Id", id, strlen(id));
    if (via == FY_VIA_PATH) {
        puts_(&o, "X-Forwarded-Prefix: ");
        puts_(&o, w->conf->path_prefix);
        put(&o, "/", 1);
        puts_(&o, id);
        put(&o, "\r\n", 2);
    }
    put(&o, "\r\n", 2);
    return o.overflow ? FY_ERR : (ssize_t)o.len;
}
