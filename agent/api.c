/*
 * api.c: the local API on web_addr (default 127.0.0.1:4040, then 4041...
 * when taken), with ngrok's JSON shapes, so that tools written for ngrok
 * (the npm package `ngrok`, scripts that curl :4040) drive ferry unchanged.
 *
 * It runs on the agent's own loop: non-blocking connections, keep-alive
 * and pipelining, requests read with the shared strict parser (common/http1)
 * into bounded buffers. Only Host localhost, 127.0.0.1 or [::1] (any port)
 * is answered, as ngrok's web_allow_hosts default: a web page cannot reach
 * the API through DNS rebinding.
 *
 *   GET    /api/tunnels                      {"tunnels":[...],"uri":"/api/tunnels"}
 *   POST   /api/tunnels                      201 + the tunnel, once the relay made it READY
 *   GET    /api/tunnels/NAME                 the tunnel
 *   DELETE /api/tunnels/NAME                 204
 *   GET    /api/tunnels/NAME/upstreams       the failover set
 *   POST   /api/tunnels/NAME/upstreams/failover {"url"}   pin new streams (DELETE: unpin)
 *   POST   /api/tunnels/NAME/upstreams/reset    {"url"}   healthy now, count 0
 *   GET    /api/status                       session, errors, rtt, upstream health
 *
 * A POST answers only when its tunnel is up (or failed): the connection
 * waits, holding the tunnel's name, and a task resumes it.
 */
#include "agent/agent.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sodium.h>

#define API_MAX_CONNS    64
#define API_MAX_HEAD     16384
#define API_MAX_BODY     65536
#define API_MAX_IN       (API_MAX_HEAD + API_MAX_BODY + 4096)
#define API_MAX_OUT      (4u << 20)
#define API_OUT_PAUSE    (256u * 1024)   /* stop reading requests while this much is unsent */
#define API_IDLE_MS      60000
#define API_WAIT_MS      20000           /* a POST waits this long for READY */
#define API_PORT_TRIES   100

#define ERR_SESSION "a successful ngrok tunnel session has not yet been established"

typedef struct apiconn_s apiconn_t;

struct fy_api_s {
    fy_agent_t *a;
    fy_io_t     lio;
    apiconn_t  *conns;
    unsigned    nconns;
};

struct apiconn_s {
    apiconn_t    *next, *prev;
    fy_api_t     *api;
    fy_io_t       io;
    fy_buf_t      in;
    fy_buf_t      out;
    fy_timer_t    timer;
    fy_task_t     resume_task;   /* go on with pipelined requests after a wait */
    fy_task_t     free_task;
    bool          closing;       /* close once out is written */
    bool          closed;
    bool          close_after;   /* the waiting request asked for Connection: close */
    bool          sent_continue; /* 100 Continue went out for the request being read */
    fy_atunnel_t *wait_tn;       /* a POST waiting for this tunnel's READY */
    char          drop_name[64]; /* a failed POST's tunnel, removed by the resume task */
    char          drop_id[33];
};

static void on_accept(fy_ev_t *ev, fy_io_t *io, uint32_t events);
static void on_io(fy_ev_t *ev, fy_io_t *io, uint32_t events);
static void on_timer(fy_ev_t *ev, fy_timer_t *t);
static void resume_task(fy_ev_t *ev, fy_task_t *t);
static void free_task(fy_ev_t *ev, fy_task_t *t);
static void process(apiconn_t *c);
static void update(apiconn_t *c);

/* --- listening ---------------------------------------------------------------- */

int fy_api_start(fy_agent_t *a, const char *addr, bool fallback, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t len;
    fy_api_t *api;
    int fd = -1, i, port;

    if (fy_net_parse_addr(addr, &ss, &len) != FY_OK) {
        snprintf(err, errlen, "web_addr %s: not an address (HOST:PORT)", addr);
        return FY_ERR;
    }
    port = fy_net_port((struct sockaddr *)&ss);
    for (i = 0; i < (fallback ? API_PORT_TRIES : 1); i++) {
        int p = port + i;
        if (p > 65535)
            break;
        if (ss.ss_family == AF_INET)
            ((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)p);
        else
            ((struct sockaddr_in6 *)&ss)->sin6_port = htons((uint16_t)p);
        if ((fd = fy_net_listen(&ss, len, 128)) >= 0 || errno != EADDRINUSE)
            break;
    }
    if (fd < 0) {
        snprintf(err, errlen, "web_addr %s: %s", addr, strerror(errno));
        return FY_ERR;
    }
    if ((api = calloc(1, sizeof(*api))) == NULL) {
        close(fd);
        snprintf(err, errlen, "out of memory");
        return FY_ERR;
    }
    api->a = a;
    api->lio.fd = fd;
    api->lio.cb = on_accept;
    api->lio.data = api;
    if (fy_io_set(a->ev, &api->lio, EPOLLIN) != FY_OK) {
        snprintf(err, errlen, "epoll: %s", strerror(errno));
        close(fd);
        free(api);
        return FY_ERR;
    }
    len = sizeof(ss);
    getsockname(fd, (struct sockaddr *)&ss, &len);
    fy_net_format((struct sockaddr *)&ss, a->web_addr);
    a->api = api;
    /* Tools wait for this line, then call the API: it listens already. */
    fy_alog(FY_AL_INFO, "starting web service", "obj", "web", "addr", a->web_addr, NULL);
    return FY_OK;
}

static void conn_free(apiconn_t *c)
{
    fy_api_t *api = c->api;
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        api->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    api->nconns--;
    fy_task_cancel(api->a->ev, &c->resume_task);
    fy_task_cancel(api->a->ev, &c->free_task);
    fy_buf_free(&c->in);
    fy_buf_free(&c->out);
    free(c);
}

static void conn_close(apiconn_t *c)
{
    fy_ev_t *ev = c->api->a->ev;
    if (c->closed)
        return;
    c->closed = true;
    if (c->wait_tn != NULL) {
        /* The caller went away; the tunnel stays (it is coming up). */
        c->wait_tn->waiter = NULL;
        c->wait_tn = NULL;
    }
    fy_timer_stop(ev, &c->timer);
    fy_io_del(ev, &c->io);
    close(c->io.fd);
    c->io.fd = -1;
    fy_task_cancel(ev, &c->resume_task);
    fy_task_queue(ev, &c->free_task);
}

void fy_api_stop(fy_agent_t *a)
{
    fy_api_t *api = a->api;
    if (api == NULL)
        return;
    while (api->conns != NULL) {
        apiconn_t *c = api->conns;
        conn_close(c);
        conn_free(c);
    }
    fy_io_del(a->ev, &api->lio);
    close(api->lio.fd);
    free(api);
    a->api = NULL;
}

static void on_accept(fy_ev_t *ev, fy_io_t *io, uint32_t events)
{
    fy_api_t *api = io->data;
    int i;

    for (i = 0; i < 16; i++) {
        apiconn_t *c;
        int fd = accept4(io->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        if (api->nconns >= API_MAX_CONNS || (c = calloc(1, sizeof(*c))) == NULL) {
            close(fd);
            continue;
        }
        fy_net_nodelay(fd);
        c->api = api;
        c->io.fd = fd;
        c->io.cb = on_io;
        c->io.data = c;
        c->timer.cb = on_timer;
        c->timer.data = c;
        c->resume_task.cb = resume_task;
        c->resume_task.data = c;
        c->free_task.cb = free_task;
        c->free_task.data = c;
        c->next = api->conns;
        if (api->conns != NULL)
            api->conns->prev = c;
        api->conns = c;
        api->nconns++;
        fy_timer_arm(ev, &c->timer, API_IDLE_MS);
        update(c);
    }
}

/* --- responses --------------------------------------------------------------- */

static const char *reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 413: return "Payload Too Large";
    case 431: return "Request Header Fields Too Large";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Error";
    }
}

static void respond(apiconn_t *c, int status, const char *ctype, const void *body, size_t blen)
{
    char head[256];
    int n;

    if (status == 204)
        n = snprintf(head, sizeof(head), "HTTP/1.1 204 No Content\r\nServer: ferry/%s\r\n%s\r\n", FY_VERSION,
                     c->closing ? "Connection: close\r\n" : "");
    else
        n = snprintf(head, sizeof(head), "HTTP/1.1 %d %s\r\nServer: ferry/%s\r\nContent-Type: %s\r\n"
                     "Content-Length: %zu\r\n%s\r\n", status, reason(status), FY_VERSION, ctype, blen,
                     c->closing ? "Connection: close\r\n" : "");
    if (fy_buf_append(&c->out, head, (size_t)n, API_MAX_OUT) != FY_OK
        || (status != 204 && fy_buf_append(&c->out, body, blen, API_MAX_OUT) != FY_OK)) {
        /* Cannot happen with these sizes; never send half an answer. */
        c->closing = true;
    }
}

static void respond_json(apiconn_t *c, int status, fy_buf_t *b)
{
    respond(c, status, "application/json", fy_buf_data(b), fy_buf_len(b));
    fy_buf_free(b);
}

/* ngrok's error body: {"error_code","status_code","msg","details":{"err"}}. */
static void respond_error(apiconn_t *c, int status, int code, const char *msg, const char *detail)
{
    fy_buf_t b = {0};
    fy_jw_t w;

    fy_jw_init(&w, &b, 65536);
    fy_jw_obj(&w);
    fy_jw_key(&w, "error_code");
    fy_jw_u64(&w, (uint64_t)code);
    fy_jw_key(&w, "status_code");
    fy_jw_u64(&w, (uint64_t)status);
    fy_jw_key(&w, "msg");
    fy_jw_str(&w, msg);
    fy_jw_key(&w, "details");
    fy_jw_obj(&w);
    if (detail != NULL) {
        fy_jw_key(&w, "err");
        fy_jw_str(&w, detail);
    }
    fy_jw_obj_end(&w);
    fy_jw_obj_end(&w);
    respond_json(c, status, &b);
}

static void respond_tunnel(apiconn_t *c, int status, fy_atunnel_t *tn)
{
    fy_buf_t b = {0};
    fy_jw_t w;
    fy_jw_init(&w, &b, API_MAX_OUT);
    fy_atunnel_json(tn, &w);
    respond_json(c, status, &b);
}

/* --- the waiting POST ------------------------------------------------------------- */

void fy_api_tunnel_ready(fy_atunnel_t *tn)
{
    apiconn_t *c = tn->waiter;
    if (c == NULL)
        return;
    tn->waiter = NULL;
    c->wait_tn = NULL;
    c->closing = c->close_after;
    respond_tunnel(c, 201, tn);
    fy_task_queue(c->api->a->ev, &c->resume_task);
}

void fy_api_tunnel_failed(fy_atunnel_t *tn, int status, const char *msg, const char *detail)
{
    apiconn_t *c = tn->waiter;
    if (c == NULL)
        return;
    tn->waiter = NULL;
    c->wait_tn = NULL;
    c->closing = c->close_after;
    if (status == 503)
        respond_error(c, 503, 104, msg, ERR_SESSION);
    else
        respond_error(c, status, status == 504 ? 105 : 103, msg, detail);
    /* A failed POST keeps no name: the tunnel goes, outside this call. */
    snprintf(c->drop_name, sizeof(c->drop_name), "%s", tn->name);
    snprintf(c->drop_id, sizeof(c->drop_id), "%s", tn->api_id);
    fy_task_queue(c->api->a->ev, &c->resume_task);
}

static void resume_task(fy_ev_t *ev, fy_task_t *t)
{
    apiconn_t *c = t->data;
    if (c->drop_name[0] != '\0') {
        fy_atunnel_t *tn = fy_atunnel_find(c->api->a, c->drop_name);
        if (tn != NULL && strcmp(tn->api_id, c->drop_id) == 0)
            fy_atunnel_remove(tn);
        c->drop_name[0] = '\0';
    }
    if (c->closed)
        return;
    fy_timer_arm(ev, &c->timer, API_IDLE_MS);
    process(c);
    update(c);
}

static void free_task(fy_ev_t *ev, fy_task_t *t)
{
    conn_free(t->data);
}

/* --- requests -------------------------------------------------------------------- */

/* Host must be localhost, 127.0.0.1 or [::1], with or without a port. */
static bool host_allowed(const char *h, size_t n)
{
    size_t hl = n, i;

    if (h == NULL || n == 0)
        return false;
    if (h[0] == '[') {
        const char *rb = memchr(h, ']', n);
        if (rb == NULL)
            return false;
        hl = (size_t)(rb - h) + 1;
    } else {
        const char *colon = memchr(h, ':', n);
        if (colon != NULL)
            hl = (size_t)(colon - h);
    }
    if (hl < n) {
        if (h[hl] != ':' || hl + 1 == n)
            return false;
        for (i = hl + 1; i < n; i++)
            if (h[i] < '0' || h[i] > '9')
                return false;
    }
    return fy_ieq(h, hl, "localhost") || fy_ieq(h, hl, "127.0.0.1") || fy_ieq(h, hl, "[::1]");
}

/* Percent-decode a path segment into out[cap]. FY_OK or FY_ERR. */
static int decode_segment(const char *s, size_t n, char *out, size_t cap)
{
    size_t i, o = 0;
    for (i = 0; i < n; i++) {
        char ch = s[i];
        if (ch == '%') {
            int hi, lo;
            if (i + 2 >= n)
                return FY_ERR;
            hi = s[i + 1] >= '0' && s[i + 1] <= '9' ? s[i + 1] - '0'
                 : (s[i + 1] | 0x20) >= 'a' && (s[i + 1] | 0x20) <= 'f' ? (s[i + 1] | 0x20) - 'a' + 10 : -1;
            lo = s[i + 2] >= '0' && s[i + 2] <= '9' ? s[i + 2] - '0'
                 : (s[i + 2] | 0x20) >= 'a' && (s[i + 2] | 0x20) <= 'f' ? (s[i + 2] | 0x20) - 'a' + 10 : -1;
            if (hi < 0 || lo < 0)
                return FY_ERR;
            ch = (char)(hi << 4 | lo);
            i += 2;
        }
        if (ch == '\0' || o + 1 >= cap)
            return FY_ERR;
        out[o++] = ch;
    }
    out[o] = '\0';
    return FY_OK;
}

/* Decode an already validated chunked body (fy_h1_chunked_scan said done). */
static size_t dechunk(const uint8_t *p, size_t n, uint8_t *out)
{
    size_t i = 0, o = 0;
    while (i < n) {
        uint64_t size = 0;
        while (i < n && ((p[i] >= '0' && p[i] <= '9') || ((p[i] | 0x20) >= 'a' && (p[i] | 0x20) <= 'f'))) {
            size = size * 16 + (uint64_t)(p[i] <= '9' ? p[i] - '0' : (p[i] | 0x20) - 'a' + 10);
            i++;
        }
        while (i < n && p[i] != '\n')
            i++;
        i++;
        if (size == 0 || size > n - FY_MIN(i, n))
            break;
        memcpy(out + o, p + i, (size_t)size);
        o += (size_t)size;
        i += (size_t)size + 2;
    }
    return o;
}

static bool method_is(const fy_h1_request_t *r, const char *m)
{
    return r->method_len == strlen(m) && memcmp(r->method, m, r->method_len) == 0;
}

static fy_atunnel_t *tunnel_or_404(apiconn_t *c, const char *name)
{
    fy_atunnel_t *tn = fy_atunnel_find(c->api->a, name);
    char msg[160];
    if (tn == NULL) {
        snprintf(msg, sizeof(msg), "Tunnel %s not found", name);
        respond_error(c, 404, 100, msg, "tunnel not found");
    }
    return tn;
}

static void list_tunnels(apiconn_t *c)
{
    fy_atunnel_t *tn;
    fy_buf_t b = {0};
    fy_jw_t w;

    fy_jw_init(&w, &b, API_MAX_OUT);
    fy_jw_obj(&w);
    fy_jw_key(&w, "tunnels");
    fy_jw_arr(&w);
    /* As ngrok: only tunnels that are (or were) up, with their public URL. */
    for (tn = c->api->a->tunnels; tn != NULL; tn = tn->next)
        if (tn->public_url[0] != '\0')
            fy_atunnel_json(tn, &w);
    fy_jw_arr_end(&w);
    fy_jw_key(&w, "uri");
    fy_jw_str(&w, "/api/tunnels");
    fy_jw_obj_end(&w);
    respond_json(c, 200, &b);
}

static void status(apiconn_t *c)
{
    fy_agent_t *a = c->api->a;
    fy_atunnel_t *tn;
    fy_buf_t b = {0};
    fy_jw_t w;
    unsigned n = 0;

    for (tn = a->tunnels; tn != NULL; tn = tn->next)
        n++;
    fy_jw_init(&w, &b, API_MAX_OUT);
    fy_jw_obj(&w);
    fy_jw_key(&w, "status");
    fy_jw_str(&w, fy_session_status(a));
    fy_jw_key(&w, "agent_version");
    fy_jw_str(&w, FY_VERSION);
    fy_jw_key(&w, "session_id");
    fy_jw_str(&w, a->session);
    fy_jw_key(&w, "server_addr");
    fy_jw_str(&w, a->server_url);
    fy_jw_key(&w, "web_addr");
    fy_jw_str(&w, a->web_addr);
    fy_jw_key(&w, "state");
    fy_jw_str(&w, fy_astate_names[a->state]);
    fy_jw_key(&w, "last_error");
    fy_jw_str(&w, a->last_error);
    fy_jw_key(&w, "last_error_body");
    fy_jw_str(&w, a->last_error_body);
    fy_jw_key(&w, "reconnects");
    fy_jw_u64(&w, a->reconnects);
    fy_jw_key(&w, "rtt");
    fy_jw_u64(&w, a->rtt_ms);
    fy_jw_key(&w, "tunnels");
    fy_jw_u64(&w, n);
    fy_jw_key(&w, "upstreams");
    fy_jw_arr(&w);
    for (tn = a->tunnels; tn != NULL; tn = tn->next)
        fy_upset_json(&tn->ups, &w, tn->name);
    fy_jw_arr_end(&w);
    fy_jw_key(&w, "uri");
    fy_jw_str(&w, "/api/status");
    fy_jw_obj_end(&w);
    respond_json(c, 200, &b);
}

static void upstreams(apiconn_t *c, fy_atunnel_t *tn, int status_code)
{
    fy_buf_t b = {0};
    fy_jw_t w;
    char uri[160];
    int next = fy_upset_pick(&tn->ups, 0, false);

    fy_jw_init(&w, &b, API_MAX_OUT);
    fy_jw_obj(&w);
    fy_jw_key(&w, "name");
    fy_jw_str(&w, tn->name);
    fy_jw_key(&w, "upstreams");
    fy_jw_arr(&w);
    fy_upset_json(&tn->ups, &w, NULL);
    fy_jw_arr_end(&w);
    fy_jw_key(&w, "next");
    if (next >= 0)
        fy_jw_str(&w, tn->ups.u[next].url);
    else
        fy_jw_null(&w);
    fy_jw_key(&w, "pinned");
    if (tn->ups.pinned >= 0)
        fy_jw_str(&w, tn->ups.u[tn->ups.pinned].url);
    else
        fy_jw_null(&w);
    fy_jw_key(&w, "uri");
    snprintf(uri, sizeof(uri), "/api/tunnels/%s/upstreams", tn->name);
    fy_jw_str(&w, uri);
    fy_jw_obj_end(&w);
    respond_json(c, status_code, &b);
}

/* The "url" of a failover/reset body: the upstream's index, or -1 (answered). */
static int body_upstream(apiconn_t *c, fy_atunnel_t *tn, const uint8_t *body, size_t blen)
{
    char err[200];
    fy_jnode_t *root = fy_json_parse((const char *)body, blen, err, sizeof(err));
    const char *url = fy_jnode_scalar(fy_jnode_get(root, "url"));
    int i = -1;

    if (url == NULL) {
        respond_error(c, 400, 102, "the body must be a JSON object with the upstream's \"url\"",
                      root == NULL ? err : "no url");
    } else if ((i = fy_upset_find(&tn->ups, url)) < 0) {
        char msg[400];
        snprintf(msg, sizeof(msg), "tunnel %s has no upstream %s", tn->name, url);
        respond_error(c, 404, 100, msg, "upstream not found");
    }
    fy_jnode_free(root);
    return i;
}

static void create_tunnel(apiconn_t *c, const uint8_t *body, size_t blen)
{
    fy_agent_t *a = c->api->a;
    char err[600], name[64];
    fy_jnode_t *root;
    const char *s;
    fy_tcfg_t tc;
    fy_atunnel_t *tn;

    if ((root = fy_json_parse((const char *)body, blen, err, sizeof(err))) == NULL || root->type != FY_J_OBJ) {
        respond_error(c, 400, 102, "the body must be a JSON object of tunnel options", root ? "not an object" : err);
        fy_jnode_free(root);
        return;
    }
    if ((s = fy_jnode_scalar(fy_jnode_get(root, "name"))) != NULL && s[0] != '\0') {
        if (strlen(s) >= sizeof(name) || strchr(s, '/') != NULL) {
            respond_error(c, 400, 102, "invalid tunnel name", "at most 63 bytes, no '/'");
            fy_jnode_free(root);
            return;
        }
        snprintf(name, sizeof(name), "%s", s);
    } else {
        uint8_t r[8];
        char hex[17];
        randombytes_buf(r, sizeof(r));
        sodium_bin2hex(hex, sizeof(hex), r, sizeof(r));
        snprintf(name, sizeof(name), "tunnel-%s", hex);
    }
    fy_tcfg_init(&tc, name);
    if (fy_tcfg_from_tree(&tc, root, "POST /api/tunnels", err, sizeof(err)) != FY_OK) {
        respond_error(c, 400, 102, "invalid tunnel configuration", err);
        fy_jnode_free(root);
        return;
    }
    fy_jnode_free(root);
    if (!a->sess_up) {
        respond_error(c, 503, 104, "the agent has no session with the relay yet; retry", ERR_SESSION);
        return;
    }
    if (fy_atunnel_find(a, name) != NULL) {
        char msg[160];
        snprintf(msg, sizeof(msg), "a tunnel named %s already exists", name);
        respond_error(c, 409, 102, msg, "tunnel name in use");
        return;
    }
    if ((tn = fy_atunnel_new(a, &tc, err, sizeof(err))) == NULL) {
        respond_error(c, 400, 102, "invalid tunnel configuration", err);
        return;
    }
    tn->waiter = c;
    c->wait_tn = tn;
    fy_timer_arm(a->ev, &c->timer, API_WAIT_MS);
    fy_atunnel_start(tn);
}

static void route(apiconn_t *c, const fy_h1_request_t *r, const uint8_t *body, size_t blen)
{
    const char *path = r->path;
    size_t plen = strcspn(path, "?#");
    char name[64], rest[64];
    fy_atunnel_t *tn;

    if (plen > r->path_len)
        plen = r->path_len;
    if (!host_allowed(r->host, r->host_len)) {
        respond_error(c, 403, 106, "Invalid Host header: the local API answers only Host localhost, 127.0.0.1 "
                      "or [::1]", "host not allowed");
        return;
    }
    if (plen == 12 && !memcmp(path, "/api/tunnels", 12)) {
        if (method_is(r, "GET"))
            list_tunnels(c);
        else if (method_is(r, "POST"))
            create_tunnel(c, body, blen);
        else
            respond_error(c, 405, 101, "method not allowed", NULL);
        return;
    }
    if (plen == 11 && !memcmp(path, "/api/status", 11)) {
        if (method_is(r, "GET"))
            status(c);
        else
            respond_error(c, 405, 101, "method not allowed", NULL);
        return;
    }
    if (plen == 18 && !memcmp(path, "/api/requests/http", 18)) {
        if (method_is(r, "DELETE")) {
            respond(c, 204, NULL, NULL, 0);
        } else {
            static const char j[] = "{\"requests\":[],\"uri\":\"/api/requests/http\"}";
            respond(c, 200, "application/json", j, sizeof(j) - 1);
        }
        return;
    }
    if (plen > 13 && !memcmp(path, "/api/tunnels/", 13)) {
        const char *seg = path + 13, *slash = memchr(seg, '/', plen - 13);
        size_t sl = slash ? (size_t)(slash - seg) : plen - 13;
        size_t rl = slash ? plen - 13 - sl : 0;

        if (decode_segment(seg, sl, name, sizeof(name)) != FY_OK || rl >= sizeof(rest)) {
            respond_error(c, 404, 100, "no such tunnel", "tunnel not found");
            return;
        }
        memcpy(rest, slash ? slash : "", rl);
        rest[rl] = '\0';
        if (rest[0] == '\0' || !strcmp(rest, "/")) {
            if (method_is(r, "GET")) {
                if ((tn = tunnel_or_404(c, name)) != NULL)
                    respond_tunnel(c, 200, tn);
            } else if (method_is(r, "DELETE")) {
                if ((tn = tunnel_or_404(c, name)) != NULL) {
                    fy_atunnel_remove(tn);
                    respond(c, 204, NULL, NULL, 0);
                }
            } else {
                respond_error(c, 405, 101, "method not allowed", NULL);
            }
            return;
        }
        if (!strcmp(rest, "/upstreams")) {
            if (!method_is(r, "GET"))
                respond_error(c, 405, 101, "method not allowed", NULL);
            else if ((tn = tunnel_or_404(c, name)) != NULL)
                upstreams(c, tn, 200);
            return;
        }
        if (!strcmp(rest, "/upstreams/failover")) {
            int i;
            if (!method_is(r, "POST") && !method_is(r, "DELETE")) {
                respond_error(c, 405, 101, "method not allowed", NULL);
                return;
            }
            if ((tn = tunnel_or_404(c, name)) == NULL)
                return;
            if (method_is(r, "DELETE")) {
                if (tn->ups.pinned >= 0)
                    fy_alog(FY_AL_INFO, "manual failover released", "obj", "upstreams", "name", tn->name, NULL);
                tn->ups.pinned = -1;
                respond(c, 204, NULL, NULL, 0);
                return;
            }
            if ((i = body_upstream(c, tn, body, blen)) < 0)
                return;
            tn->ups.pinned = i;
            fy_alog(FY_AL_INFO, "manual failover", "obj", "upstreams", "name", tn->name, "url", tn->ups.u[i].url,
                    NULL);
            upstreams(c, tn, 200);
            return;
        }
        if (!strcmp(rest, "/upstreams/reset")) {
            int i;
            if (!method_is(r, "POST")) {
                respond_error(c, 405, 101, "method not allowed", NULL);
                return;
            }
            if ((tn = tunnel_or_404(c, name)) == NULL || (i = body_upstream(c, tn, body, blen)) < 0)
                return;
            fy_upset_reset(&tn->ups, i);
            upstreams(c, tn, 200);
            return;
        }
    }
    if (plen == 1 && path[0] == '/' && method_is(r, "GET")) {
        char text[256];
        int n = snprintf(text, sizeof(text), "ferry %s local API: /api/tunnels, /api/status\n", FY_VERSION);
        respond(c, 200, "text/plain; charset=utf-8", text, (size_t)n);
        return;
    }
    respond_error(c, 404, 100, "not found", "no such endpoint");
}

/* curl waits a second for this before sending a body over 1 KiB. */
static void expect_continue(apiconn_t *c, const fy_h1_request_t *r)
{
    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    if ((r->flags & FY_H1_F_CONTINUE) && !c->sent_continue && r->minor == 1) {
        c->sent_continue = true;
        if (fy_buf_append(&c->out, cont, sizeof(cont) - 1, API_MAX_OUT) != FY_OK)
            c->closing = true;
    }
}

/* Handle complete requests in c->in, one at a time, while c may. */
static void process(apiconn_t *c)
{
    while (!c->closed && !c->closing && c->wait_tn == NULL && fy_buf_len(&c->out) < API_OUT_PAUSE
           && fy_buf_len(&c->in) > 0) {
        fy_h1_header_t hdrs[64];
        fy_h1_limits_t lim = {FY_NELEM(hdrs), API_MAX_HEAD};
        fy_h1_request_t r;
        const uint8_t *p = fy_buf_data(&c->in), *body = NULL;
        size_t len = fy_buf_len(&c->in), blen = 0, total;
        uint8_t *decoded = NULL;
        int rc = fy_h1_parse_request((const char *)p, len, &r, hdrs, &lim);

        if (rc == FY_AGAIN)
            return;
        if (rc < 0) {
            c->closing = true;
            respond_error(c, r.err_status ? r.err_status : 400, 102, r.err_reason ? r.err_reason : "bad request",
                          r.err_code);
            return;
        }
        total = (size_t)rc;
        if (r.body == FY_H1_BODY_LENGTH) {
            if (r.content_length > API_MAX_BODY) {
                c->closing = true;
                respond_error(c, 413, 102, "request body too large", "at most 64 KiB");
                return;
            }
            if (len - total < r.content_length) {
                expect_continue(c, &r);
                return;
            }
            body = p + total;
            blen = (size_t)r.content_length;
            total += blen;
        } else if (r.body == FY_H1_BODY_CHUNKED) {
            fy_h1_chunked_t ch;
            ssize_t used;
            memset(&ch, 0, sizeof(ch));
            used = fy_h1_chunked_scan(&ch, (const char *)p + total, len - total);
            if (used < 0) {
                c->closing = true;
                respond_error(c, 400, 102, "bad chunked body", ch.err_reason);
                return;
            }
            if (!ch.done) {
                if (len - total > API_MAX_BODY) {
                    c->closing = true;
                    respond_error(c, 413, 102, "request body too large", "at most 64 KiB");
                } else {
                    expect_continue(c, &r);
                }
                return;
            }
            if ((decoded = malloc((size_t)used + 1)) == NULL) {
                c->closing = true;
                respond_error(c, 500, 102, "out of memory", NULL);
                return;
            }
            blen = dechunk(p + total, (size_t)used, decoded);
            body = decoded;
            total += (size_t)used;
        }
        c->sent_continue = false;
        c->close_after = (r.flags & FY_H1_F_CLOSE) != 0;
        c->closing = c->close_after;
        route(c, &r, body, blen);
        free(decoded);
        /* The answer comes with READY: hold Connection: close until then. */
        if (c->wait_tn != NULL)
            c->closing = false;
        fy_buf_consume(&c->in, total);
    }
}

static void flush(apiconn_t *c)
{
    while (fy_buf_len(&c->out) > 0) {
        ssize_t n = write(c->io.fd, fy_buf_data(&c->out), fy_buf_len(&c->out));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN)
                conn_close(c);
            return;
        }
        fy_buf_consume(&c->out, (size_t)n);
    }
    fy_buf_release_if_empty(&c->out);
    if (c->closing)
        conn_close(c);
}

static void update(apiconn_t *c)
{
    uint32_t want = 0;
    if (c->closed)
        return;
    if (fy_buf_len(&c->out) > 0)
        flush(c);
    if (c->closed)
        return;
    if (!c->closing && c->wait_tn == NULL && fy_buf_len(&c->out) < API_OUT_PAUSE)
        want |= EPOLLIN;
    if (fy_buf_len(&c->out) > 0)
        want |= EPOLLOUT;
    if (fy_io_set(c->api->a->ev, &c->io, want) != FY_OK)
        conn_close(c);
}

static void on_io(fy_ev_t *ev, fy_io_t *io, uint32_t events)
{
    apiconn_t *c = io->data;
    bool eof = false;
    int i;

    if (c->closed)
        return;
    if ((events & (EPOLLHUP | EPOLLERR)) && c->wait_tn != NULL) {
        conn_close(c);    /* the caller is gone; the tunnel comes up anyway */
        return;
    }
    if (events & EPOLLOUT)
        flush(c);
    if (c->closed)
        return;
    for (i = 0; i < 4 && (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) && !c->closing && c->wait_tn == NULL; i++) {
        ssize_t n;
        if (fy_buf_reserve(&c->in, 4096, API_MAX_IN) != FY_OK) {
            /* A request larger than the limits: the parser says which. */
            break;
        }
        n = read(io->fd, fy_buf_end(&c->in), fy_buf_room(&c->in));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN)
                eof = true;
            break;
        }
        if (n == 0) {
            eof = true;
            break;
        }
        c->in.wpos += (size_t)n;
        fy_timer_arm(ev, &c->timer, API_IDLE_MS);
    }
    process(c);
    if (!c->closed && fy_buf_len(&c->in) >= API_MAX_IN && c->wait_tn == NULL && !c->closing) {
        c->closing = true;
        respond_error(c, 431, 102, "request too large", NULL);
    }
    if (eof && !c->closed && c->wait_tn == NULL) {
        /* The client half-closed: finish what it sent, then close. */
        c->closing = true;
        if (fy_buf_len(&c->out) == 0) {
            conn_close(c);
            return;
        }
    }
    update(c);
}

static void on_timer(fy_ev_t *ev, fy_timer_t *t)
{
    apiconn_t *c = t->data;
    if (c->closed)
        return;
    if (c->wait_tn != NULL) {
        fy_api_tunnel_failed(c->wait_tn, 504, "the relay did not make the tunnel ready in time",
                             c->wait_tn->last_error[0] ? c->wait_tn->last_error : "timeout");
        return;
    }
    conn_close(c);
}
