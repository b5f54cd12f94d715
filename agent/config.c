/*
 * config.c: the agent's config file: ngrok v2's shape (version, authtoken,
 * web_addr, log, tunnels: {NAME: {proto, addr, subdomain, host_header,
 * auth, ...}}) plus ferry's keys (server_addr, server_ca, reconnect,
 * connections, upstreams, health). The YAML is read with libyaml's
 * document API into the JSON tree of json.c, so the local API's POST body
 * and a config file's tunnel are read by the same code.
 *
 * Several files may be given: each is read over the result of the ones
 * before (a key set later wins; a tunnel of the same name is replaced).
 * Keys ferry does not know are ignored, so a config written for ngrok
 * keeps working.
 */
#include "agent/agent.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <yaml.h>

#define YAML_MAX_DEPTH 32
#define YAML_MAX_NODES 20000
#define CONFIG_MAX_BYTES (1u << 20)

static int failf(char *err, size_t errlen, const char *fmt, ...) FY_PRINTF(3, 4);
static int failf(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return FY_ERR;
}

/* --- YAML to a tree ------------------------------------------------------------- */

typedef struct {
    yaml_document_t *doc;
    unsigned         nodes;
} ytree_t;

static fy_jnode_t *from_yaml(ytree_t *y, yaml_node_t *n, int depth)
{
    fy_jnode_t *out = NULL, **tail;

    if (n == NULL || depth > YAML_MAX_DEPTH || ++y->nodes > YAML_MAX_NODES)
        return NULL;
    switch (n->type) {
    case YAML_SCALAR_NODE: {
        const char *v = (const char *)n->data.scalar.value;
        size_t len = n->data.scalar.length;
        bool plain = n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
        if (plain && (len == 0 || (len == 1 && v[0] == '~') || (len == 4 && !memcmp(v, "null", 4))))
            out = fy_jnode_new(FY_J_NULL, NULL, 0);
        else
            out = fy_jnode_new(FY_J_STR, v, len);
        break;
    }
    case YAML_SEQUENCE_NODE: {
        yaml_node_item_t *it;
        if ((out = fy_jnode_new(FY_J_ARR, NULL, 0)) == NULL)
            return NULL;
        tail = &out->kids;
        for (it = n->data.sequence.items.start; it < n->data.sequence.items.top; it++) {
            fy_jnode_t *k = from_yaml(y, yaml_document_get_node(y->doc, *it), depth + 1);
            if (k == NULL) {
                fy_jnode_free(out);
                return NULL;
            }
            *tail = k;
            tail = &k->next;
        }
        break;
    }
    case YAML_MAPPING_NODE: {
        yaml_node_pair_t *pr;
        if ((out = fy_jnode_new(FY_J_OBJ, NULL, 0)) == NULL)
            return NULL;
        tail = &out->kids;
        for (pr = n->data.mapping.pairs.start; pr < n->data.mapping.pairs.top; pr++) {
            yaml_node_t *kn = yaml_document_get_node(y->doc, pr->key);
            fy_jnode_t *k;
            if (kn == NULL || kn->type != YAML_SCALAR_NODE) {
                fy_jnode_free(out);
                return NULL;
            }
            if ((k = from_yaml(y, yaml_document_get_node(y->doc, pr->value), depth + 1)) == NULL
                || (k->key = strdup((const char *)kn->data.scalar.value)) == NULL) {
                fy_jnode_free(k);
                fy_jnode_free(out);
                return NULL;
            }
            k->line = (unsigned)kn->start_mark.line + 1;
            *tail = k;
            tail = &k->next;
        }
        break;
    }
    default:
        return NULL;
    }
    if (out != NULL && out->line == 0)
        out->line = (unsigned)n->start_mark.line + 1;
    return out;
}

/* Read and parse a YAML file. FY_AGAIN: no such file. */
static int load_yaml(const char *path, fy_jnode_t **root, char *err, size_t errlen)
{
    yaml_parser_t parser;
    yaml_document_t doc;
    ytree_t y;
    FILE *f;
    struct stat st;
    int rc = FY_OK;

    *root = NULL;
    if ((f = fopen(path, "re")) == NULL) {
        if (errno == ENOENT)
            return FY_AGAIN;
        return failf(err, errlen, "%s: %s", path, strerror(errno));
    }
    if (fstat(fileno(f), &st) == 0 && (size_t)st.st_size > CONFIG_MAX_BYTES) {
        fclose(f);
        return failf(err, errlen, "%s: over %u bytes", path, CONFIG_MAX_BYTES);
    }
    if (!yaml_parser_initialize(&parser)) {
        fclose(f);
        return failf(err, errlen, "%s: out of memory", path);
    }
    yaml_parser_set_input_file(&parser, f);
    if (!yaml_parser_load(&parser, &doc)) {
        rc = failf(err, errlen, "%s:%lu: %s", path, (unsigned long)parser.problem_mark.line + 1,
                   parser.problem ? parser.problem : "invalid YAML");
        yaml_parser_delete(&parser);
        fclose(f);
        return rc;
    }
    y.doc = &doc;
    y.nodes = 0;
    if (yaml_document_get_root_node(&doc) == NULL) {
        *root = fy_jnode_new(FY_J_OBJ, NULL, 0);     /* an empty file */
    } else if ((*root = from_yaml(&y, yaml_document_get_root_node(&doc), 0)) == NULL) {
        rc = failf(err, errlen, "%s: not a config this agent can read (keys must be plain values, "
                   "at most %d levels deep)", path, YAML_MAX_DEPTH);
    } else if ((*root)->type == FY_J_NULL) {
        fy_jnode_free(*root);
        *root = fy_jnode_new(FY_J_OBJ, NULL, 0);
    } else if ((*root)->type != FY_J_OBJ) {
        fy_jnode_free(*root);
        *root = NULL;
        rc = failf(err, errlen, "%s: the top level must be a mapping of keys", path);
    }
    if (rc == FY_OK && *root == NULL)
        rc = failf(err, errlen, "%s: out of memory", path);
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    fclose(f);
    return rc;
}

/* --- values ------------------------------------------------------------------ */

typedef struct {
    const char *where;
    char       *err;
    size_t      errlen;
} ctx_t;

static int bad(ctx_t *c, const fy_jnode_t *n, const char *key, const char *fmt, ...) FY_PRINTF(4, 5);
static int bad(ctx_t *c, const fy_jnode_t *n, const char *key, const char *fmt, ...)
{
    va_list ap;
    int off;
    if (n != NULL && n->line > 0)
        off = snprintf(c->err, c->errlen, "%s:%u: %s: ", c->where, n->line, key);
    else
        off = snprintf(c->err, c->errlen, "%s: %s: ", c->where, key);
    if (off < 0 || (size_t)off >= c->errlen)
        return FY_ERR;
    va_start(ap, fmt);
    vsnprintf(c->err + off, c->errlen - (size_t)off, fmt, ap);
    va_end(ap);
    return FY_ERR;
}

static int get_str(ctx_t *c, const fy_jnode_t *n, const char *key, char *dst, size_t cap)
{
    const char *s = fy_jnode_scalar(n);
    if (s == NULL)
        return bad(c, n, key, "expected a single value");
    if (strlen(s) >= cap)
        return bad(c, n, key, "too long (at most %zu bytes)", cap - 1);
    memcpy(dst, s, strlen(s) + 1);
    return FY_OK;
}

static int get_uint(ctx_t *c, const fy_jnode_t *n, const char *key, uint64_t min, uint64_t max, unsigned *dst)
{
    const char *s = fy_jnode_scalar(n);
    uint64_t v;
    if (s == NULL || fy_conf_uint(s, min, max, &v) != FY_OK)
        return bad(c, n, key, "expected a number from %llu to %llu", (unsigned long long)min,
                   (unsigned long long)max);
    *dst = (unsigned)v;
    return FY_OK;
}

static int get_duration(ctx_t *c, const fy_jnode_t *n, const char *key, uint64_t *dst)
{
    const char *s = fy_jnode_scalar(n);
    if (s == NULL || fy_conf_duration(s, dst) != FY_OK)
        return bad(c, n, key, "expected a duration (e.g. 500ms, 10s, 2m)");
    return FY_OK;
}

static int get_bool(ctx_t *c, const fy_jnode_t *n, const char *key, bool *dst)
{
    const char *s = fy_jnode_scalar(n);
    if (s == NULL || fy_conf_bool(s, dst) != FY_OK)
        return bad(c, n, key, "expected true or false");
    return FY_OK;
}

/* --- tunnels ----------------------------------------------------------------- */

void fy_tcfg_init(fy_tcfg_t *t, const char *name)
{
    memset(t, 0, sizeof(*t));
    snprintf(t->name, sizeof(t->name), "%s", name);
    t->connections = 1;
    t->health_failures = 3;
    t->recovery_ms = 60000;
    snprintf(t->health_path, sizeof(t->health_path), "/");
}

int fy_tcfg_set_id(fy_tcfg_t *t, const char *v)
{
    const char *s = strstr(v, "://") ? strstr(v, "://") + 3 : v;
    return fy_conf_tunnel_id(s, strcspn(s, ".:/"), t->id);
}

static int add_upstream(ctx_t *c, fy_tcfg_t *t, const fy_jnode_t *n)
{
    fy_upcfg_t *u;
    const fy_jnode_t *v;

    if (t->nups >= FY_AGENT_MAX_UPSTREAMS)
        return bad(c, n, "upstreams", "at most %d upstreams", FY_AGENT_MAX_UPSTREAMS);
    u = &t->ups[t->nups];
    u->priority = 1;
    u->weight = 1;
    if (fy_jnode_scalar(n) != NULL) {
        FY_GUARD(get_str(c, n, "upstreams", u->url, sizeof(u->url)));
    } else if (n->type == FY_J_OBJ) {
        if ((v = fy_jnode_get(n, "url")) == NULL && (v = fy_jnode_get(n, "addr")) == NULL)
            return bad(c, n, "upstreams", "each upstream needs a url");
        FY_GUARD(get_str(c, v, "upstreams.url", u->url, sizeof(u->url)));
        if ((v = fy_jnode_get(n, "priority")) != NULL)
            FY_GUARD(get_uint(c, v, "upstreams.priority", 0, 1000000, &u->priority));
        if ((v = fy_jnode_get(n, "weight")) != NULL)
            FY_GUARD(get_uint(c, v, "upstreams.weight", 1, 1000000, &u->weight));
    } else {
        return bad(c, n, "upstreams", "expected a url or {url, priority, weight}");
    }
    t->nups++;
    return FY_OK;
}

static int host_header(ctx_t *c, fy_tcfg_t *t, const fy_jnode_t *n)
{
    FY_GUARD(get_str(c, n, "host_header", t->host_header, sizeof(t->host_header)));
    if (strpbrk(t->host_header, "\r\n") != NULL)
        return bad(c, n, "host_header", "no line breaks");
    return FY_OK;
}

int fy_tcfg_from_tree(fy_tcfg_t *t, const fy_jnode_t *n, const char *where, char *err, size_t errlen)
{
    ctx_t c = {where, err, errlen};
    const fy_jnode_t *v, *k;
    const char *s;

    if (n == NULL || n->type != FY_J_OBJ)
        return bad(&c, n, t->name, "a tunnel is a mapping of keys (proto, addr, ...)");
    if ((v = fy_jnode_get(n, "proto")) != NULL && (s = fy_jnode_scalar(v)) != NULL && strcmp(s, "http") != 0)
        return bad(&c, v, "proto", "\"%s\": ferry tunnels HTTP only (proto: http)", s);
    if ((v = fy_jnode_get(n, "addr")) != NULL) {
        t->nups = 0;
        if ((s = fy_jnode_scalar(v)) == NULL)
            return bad(&c, v, "addr", "expected a port, host:port or URL");
        FY_GUARD(get_str(&c, v, "addr", t->ups[0].url, sizeof(t->ups[0].url)));
        t->ups[0].priority = 1;
        t->ups[0].weight = 1;
        t->nups = 1;
    }
    if ((v = fy_jnode_get(n, "upstreams")) != NULL) {
        if (v->type != FY_J_ARR)
            return bad(&c, v, "upstreams", "expected a list");
        t->nups = 0;
        for (k = v->kids; k != NULL; k = k->next)
            FY_GUARD(add_upstream(&c, t, k));
    }
    if (t->nups == 0)
        return bad(&c, n, t->name, "the tunnel needs addr (or upstreams)");
    /* ngrok's hostname/domain/url/subdomain all name the id here. */
    if ((v = fy_jnode_get(n, "subdomain")) != NULL || (v = fy_jnode_get(n, "hostname")) != NULL
        || (v = fy_jnode_get(n, "domain")) != NULL || (v = fy_jnode_get(n, "url")) != NULL) {
        if ((s = fy_jnode_scalar(v)) == NULL || fy_tcfg_set_id(t, s) != FY_OK)
            return bad(&c, v, "subdomain", "not a tunnel id (1-63 of a-z 0-9 -)");
    }
    if ((v = fy_jnode_get(n, "host_header")) != NULL)
        FY_GUARD(host_header(&c, t, v));
    if ((v = fy_jnode_get(n, "basic_auth")) != NULL || (v = fy_jnode_get(n, "auth")) != NULL) {
        if (v->type == FY_J_ARR && v->kids != NULL)
            v = v->kids;   /* ngrok v3 takes a list; the relay checks one pair */
        FY_GUARD(get_str(&c, v, "basic_auth", t->basic_auth, sizeof(t->basic_auth)));
        if (t->basic_auth[0] != '\0' && (strchr(t->basic_auth, ':') == NULL || strpbrk(t->basic_auth, "\r\n")))
            return bad(&c, v, "basic_auth", "expected USER:PASS");
    }
    if ((v = fy_jnode_get(n, "connections")) != NULL)
        FY_GUARD(get_uint(&c, v, "connections", 1, FY_AGENT_MAX_CONNS, &t->connections));
    if ((v = fy_jnode_get(n, "health")) != NULL) {
        if (v->type != FY_J_OBJ)
            return bad(&c, v, "health", "expected {failures, recovery_interval, path}");
        if ((k = fy_jnode_get(v, "failures")) != NULL)
            FY_GUARD(get_uint(&c, k, "health.failures", 1, 1000000, &t->health_failures));
        if ((k = fy_jnode_get(v, "recovery_interval")) != NULL) {
            FY_GUARD(get_duration(&c, k, "health.recovery_interval", &t->recovery_ms));
            if (t->recovery_ms < 100)
                return bad(&c, k, "health.recovery_interval", "at least 100ms");
        }
        if ((k = fy_jnode_get(v, "path")) != NULL) {
            FY_GUARD(get_str(&c, k, "health.path", t->health_path, sizeof(t->health_path)));
            if (t->health_path[0] != '/' || strpbrk(t->health_path, " \r\n\t") != NULL)
                return bad(&c, k, "health.path", "a path starting with /");
        }
    }
    return FY_OK;
}

/* --- the file ---------------------------------------------------------------- */

void fy_acfg_init(fy_acfg_t *c)
{
    memset(c, 0, sizeof(*c));
    c->reconnect_ms = 1000;
    c->max_interval_ms = 120000;
    c->backoff = true;
    c->console_ui = -1;
}

void fy_acfg_free(fy_acfg_t *c)
{
    free(c->tunnels);
    c->tunnels = NULL;
    c->ntunnels = 0;
}

const fy_tcfg_t *fy_acfg_tunnel(const fy_acfg_t *c, const char *name)
{
    unsigned i;
    for (i = 0; i < c->ntunnels; i++)
        if (strcmp(c->tunnels[i].name, name) == 0)
            return &c->tunnels[i];
    return NULL;
}

static int load_tunnels(ctx_t *c, fy_acfg_t *cfg, const fy_jnode_t *n)
{
    const fy_jnode_t *k;

    if (n->type == FY_J_NULL)
        return FY_OK;
    if (n->type != FY_J_OBJ)
        return bad(c, n, "tunnels", "expected a mapping of tunnel names");
    for (k = n->kids; k != NULL; k = k->next) {
        fy_tcfg_t t, *slot = NULL;
        unsigned i;

        if (k->key[0] == '\0' || strlen(k->key) >= sizeof(t.name) || strpbrk(k->key, "/?#%\"\\ \t"))
            return bad(c, k, "tunnels", "\"%s\" is not a usable tunnel name", k->key);
        fy_tcfg_init(&t, k->key);
        /* A tunnel that is never started does not stop the others. */
        if (fy_tcfg_from_tree(&t, k, c->where, t.err, sizeof(t.err)) != FY_OK) {
            const char *proto = fy_jnode_scalar(fy_jnode_get(k, "proto"));
            t.not_http = proto != NULL && strcmp(proto, "http") != 0;
        }
        for (i = 0; i < cfg->ntunnels; i++)
            if (strcmp(cfg->tunnels[i].name, t.name) == 0)
                slot = &cfg->tunnels[i];
        if (slot == NULL) {
            fy_tcfg_t *nt = realloc(cfg->tunnels, (cfg->ntunnels + 1) * sizeof(*nt));
            if (nt == NULL)
                return bad(c, k, "tunnels", "out of memory");
            cfg->tunnels = nt;
            slot = &cfg->tunnels[cfg->ntunnels++];
        }
        *slot = t;
    }
    return FY_OK;
}

static int apply(ctx_t *c, fy_acfg_t *cfg, const fy_jnode_t *root)
{
    const fy_jnode_t *v, *k;

    if ((v = fy_jnode_get(root, "authtoken")) != NULL && v->type != FY_J_NULL) {
        FY_GUARD(get_str(c, v, "authtoken", cfg->authtoken, sizeof(cfg->authtoken)));
        cfg->has_authtoken = cfg->authtoken[0] != '\0';
    }
    if ((v = fy_jnode_get(root, "server_addr")) != NULL)
        FY_GUARD(get_str(c, v, "server_addr", cfg->server_addr, sizeof(cfg->server_addr)));
    if ((v = fy_jnode_get(root, "server_ca")) != NULL)
        FY_GUARD(get_str(c, v, "server_ca", cfg->server_ca, sizeof(cfg->server_ca)));
    if ((v = fy_jnode_get(root, "web_addr")) != NULL)
        FY_GUARD(get_str(c, v, "web_addr", cfg->web_addr, sizeof(cfg->web_addr)));
    if ((v = fy_jnode_get(root, "console_ui")) != NULL && fy_jnode_scalar(v) != NULL) {
        bool b = true;
        /* ngrok also takes "iftty": on when stdout is a terminal, as ours. */
        if (strcmp(v->s, "iftty") != 0)
            FY_GUARD(get_bool(c, v, "console_ui", &b));
        cfg->console_ui = b ? 1 : 0;
    }
    if ((v = fy_jnode_get(root, "log")) != NULL && v->type != FY_J_NULL)
        FY_GUARD(get_str(c, v, "log", cfg->log, sizeof(cfg->log)));
    if ((v = fy_jnode_get(root, "log_format")) != NULL)
        FY_GUARD(get_str(c, v, "log_format", cfg->log_format, sizeof(cfg->log_format)));
    if ((v = fy_jnode_get(root, "log_level")) != NULL)
        FY_GUARD(get_str(c, v, "log_level", cfg->log_level, sizeof(cfg->log_level)));
    if ((v = fy_jnode_get(root, "reconnect")) != NULL && v->type != FY_J_NULL) {
        if (v->type != FY_J_OBJ)
            return bad(c, v, "reconnect", "expected {interval, backoff, max_interval}");
        if ((k = fy_jnode_get(v, "interval")) != NULL)
            FY_GUARD(get_duration(c, k, "reconnect.interval", &cfg->reconnect_ms));
        if ((k = fy_jnode_get(v, "backoff")) != NULL)
            FY_GUARD(get_bool(c, k, "reconnect.backoff", &cfg->backoff));
        if ((k = fy_jnode_get(v, "max_interval")) != NULL)
            FY_GUARD(get_duration(c, k, "reconnect.max_interval", &cfg->max_interval_ms));
        if (cfg->reconnect_ms == 0 || cfg->max_interval_ms == 0)
            return bad(c, v, "reconnect", "intervals must be above 0");
    }
    if ((v = fy_jnode_get(root, "tunnels")) != NULL)
        FY_GUARD(load_tunnels(c, cfg, v));
    return FY_OK;
}

int fy_acfg_load(fy_acfg_t *cfg, const char *path, char *err, size_t errlen)
{
    fy_jnode_t *root;
    ctx_t c = {path, err, errlen};
    int rc = load_yaml(path, &root, err, errlen);

    if (rc != FY_OK)
        return rc;
    rc = apply(&c, cfg, root);
    fy_jnode_free(root);
    return rc;
}

void fy_acfg_default_path(char *out, size_t n)
{
    const char *xdg = getenv("XDG_CONFIG_HOME"), *home = getenv("HOME");
    if (xdg != NULL && xdg[0] == '/')
        snprintf(out, n, "%s/ferry/ferry.yml", xdg);
    else
        snprintf(out, n, "%s/.config/ferry/ferry.yml", home && home[0] ? home : ".");
}

/* mkdir -p of path's directory. */
static int make_parent(const char *path)
{
    char dir[1024];
    size_t i, n = strlen(path);

    if (n >= sizeof(dir))
        return FY_ERR;
    memcpy(dir, path, n + 1);
    while (n > 0 && dir[n - 1] != '/')
        n--;
    if (n <= 1)
        return FY_OK;
    dir[n - 1] = '\0';
    for (i = 1; i <= n - 1; i++) {
        if (dir[i] == '/' || dir[i] == '\0') {
            char keep = dir[i];
            dir[i] = '\0';
            if (mkdir(dir, 0700) < 0 && errno != EEXIST)
                return FY_ERR;
            dir[i] = keep;
        }
    }
    return FY_OK;
}

static bool plain_token(const char *t)
{
    const char *p;
    for (p = t; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9')
              || *p == '_' || *p == '-' || *p == '.' || *p == '~'))
            return false;
    return t[0] != '\0';
}

int fy_acfg_save_authtoken(const char *path, const char *token, char *err, size_t errlen)
{
    fy_buf_t in = {0}, out = {0};
    char tmp[1100], line[1200];
    const uint8_t *p, *end;
    bool replaced = false, wrote;
    int fd, n;
    FILE *f;

    if (token[0] == '\0' || strpbrk(token, "\r\n") != NULL)
        return failf(err, errlen, "the authtoken must be one line");
    if (plain_token(token))
        n = snprintf(line, sizeof(line), "authtoken: %s\n", token);
    else
        n = snprintf(line, sizeof(line), "authtoken: '%s'\n", token);   /* '' inside: rare, refused below */
    if (n < 0 || (size_t)n >= sizeof(line) || (!plain_token(token) && strchr(token, '\'')))
        return failf(err, errlen, "the authtoken is too long or has a quote");
    if ((f = fopen(path, "re")) != NULL) {
        char b[4096];
        size_t got;
        while ((got = fread(b, 1, sizeof(b), f)) > 0)
            if (fy_buf_append(&in, b, got, CONFIG_MAX_BYTES) != FY_OK) {
                fclose(f);
                fy_buf_free(&in);
                return failf(err, errlen, "%s: too large", path);
            }
        fclose(f);
    } else if (errno != ENOENT) {
        return failf(err, errlen, "%s: %s", path, strerror(errno));
    }
    if (fy_buf_len(&in) == 0 && fy_buf_append(&out, "version: \"2\"\n", 13, CONFIG_MAX_BYTES) != FY_OK)
        goto nomem;
    /* Keep every line; replace a top-level authtoken: line in place. */
    p = fy_buf_data(&in);
    end = p + fy_buf_len(&in);
    while (p < end) {
        const uint8_t *nl = memchr(p, '\n', (size_t)(end - p));
        size_t ll = nl ? (size_t)(nl - p) + 1 : (size_t)(end - p);
        if (ll >= 10 && memcmp(p, "authtoken:", 10) == 0) {
            if (!replaced && fy_buf_append(&out, line, (size_t)n, CONFIG_MAX_BYTES) != FY_OK)
                goto nomem;
            replaced = true;
        } else {
            if (fy_buf_append(&out, p, ll, CONFIG_MAX_BYTES) != FY_OK)
                goto nomem;
            if (nl == NULL && fy_buf_append(&out, "\n", 1, CONFIG_MAX_BYTES) != FY_OK)
                goto nomem;
        }
        p += ll;
    }
    if (!replaced && fy_buf_append(&out, line, (size_t)n, CONFIG_MAX_BYTES) != FY_OK)
        goto nomem;
    fy_buf_free(&in);
    if (make_parent(path) != FY_OK) {
        fy_buf_free(&out);
        return failf(err, errlen, "%s: cannot create its directory: %s", path, strerror(errno));
    }
    /* Write a temporary file and rename it over: never half a config. */
    snprintf(tmp, sizeof(tmp), "%s.tmp%ld", path, (long)getpid());
    if ((fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)) < 0) {
        fy_buf_free(&out);
        return failf(err, errlen, "%s: %s", path, strerror(errno));
    }
    wrote = write(fd, fy_buf_data(&out), fy_buf_len(&out)) == (ssize_t)fy_buf_len(&out) && fsync(fd) == 0;
    if (close(fd) < 0)
        wrote = false;
    if (!wrote || rename(tmp, path) < 0) {
        int e = errno ? errno : EIO;
        unlink(tmp);
        fy_buf_free(&out);
        return failf(err, errlen, "%s: %s", path, strerror(e));
    }
    fy_buf_free(&out);
    return FY_OK;
nomem:
    fy_buf_free(&in);
    fy_buf_free(&out);
    return failf(err, errlen, "out of memory");
}
