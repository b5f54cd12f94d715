/*
 * config.c: ferryd's YAML configuration (libyaml's document API: the file
 * is small and read once per start or reload, so a tree is simplest).
 * Every key of SPEC.md is known here; a key this build does not implement
 * yet is refused with a message that says so rather than silently ignored.
 */
#include "master/config.h"
#include "net/net.h"
#include "crypto/token.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sodium.h>
#include <yaml.h>

typedef struct {
    yaml_document_t *doc;
    const char      *file;
    char            *err;
    size_t           errlen;
} loader_t;

static int fail(loader_t *l, const yaml_node_t *n, const char *key, const char *fmt, ...) FY_PRINTF(4, 5);

static int fail(loader_t *l, const yaml_node_t *n, const char *key, const char *fmt, ...)
{
    va_list ap;
    int off = snprintf(l->err, l->errlen, "%s:%lu: %s: ", l->file,
                       n ? (unsigned long)n->start_mark.line + 1 : 0UL, key);
    if (off < 0 || (size_t)off >= l->errlen)
        return FY_ERR;
    va_start(ap, fmt);
    vsnprintf(l->err + off, l->errlen - (size_t)off, fmt, ap);
    va_end(ap);
    return FY_ERR;
}

static const char *scalar(const yaml_node_t *n)
{
    return n && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

static int want_scalar(loader_t *l, const yaml_node_t *n, const char *key, const char **out)
{
    if ((*out = scalar(n)) == NULL)
        return fail(l, n, key, "expected a single value");
    return FY_OK;
}

static int set_str(loader_t *l, const yaml_node_t *n, const char *key, char **dst)
{
    const char *s;
    FY_GUARD(want_scalar(l, n, key, &s));
    free(*dst);
    if ((*dst = strdup(s)) == NULL)
        return fail(l, n, key, "out of memory");
    return FY_OK;
}

static int set_bool(loader_t *l, const yaml_node_t *n, const char *key, bool *dst)
{
    const char *s;
    FY_GUARD(want_scalar(l, n, key, &s));
    if (fy_conf_bool(s, dst) != FY_OK)
        return fail(l, n, key, "\"%s\" is not true or false", s);
    return FY_OK;
}

static int set_duration(loader_t *l, const yaml_node_t *n, const char *key, uint64_t *dst)
{
    const char *s;
    FY_GUARD(want_scalar(l, n, key, &s));
    if (fy_conf_duration(s, dst) != FY_OK)
        return fail(l, n, key, "\"%s\" is not a duration (e.g. 500ms, 10s, 2m, 1h)", s);
    return FY_OK;
}

static int set_uint(loader_t *l, const yaml_node_t *n, const char *key, uint64_t min, uint64_t max, uint64_t *dst)
{
    const char *s;
    FY_GUARD(want_scalar(l, n, key, &s));
    if (fy_conf_size(s, dst) != FY_OK || *dst < min || *dst > max)
        return fail(l, n, key, "\"%s\" is not a number in %llu..%llu", s,
                    (unsigned long long)min, (unsigned long long)max);
    return FY_OK;
}

static int check_addr(loader_t *l, const yaml_node_t *n, const char *key, const char *s)
{
    struct sockaddr_storage ss;
    socklen_t len;
    if (fy_net_parse_addr(s, &ss, &len) != FY_OK)
        return fail(l, n, key, "\"%s\" is not an address (HOST:PORT, [V6]:PORT)", s);
    return FY_OK;
}

int fy_cidr_parse(const char *s, fy_cidr_t *c)
{
    char ip[64];
    const char *slash = strchr(s, '/');
    size_t n = slash ? (size_t)(slash - s) : strlen(s);
    uint64_t bits;

    if (n >= sizeof(ip))
        return FY_ERR;
    memcpy(ip, s, n);
    ip[n] = '\0';
    memset(c, 0, sizeof(*c));
    if (inet_pton(AF_INET, ip, c->addr) == 1)
        c->family = AF_INET;
    else if (inet_pton(AF_INET6, ip, c->addr) == 1)
        c->family = AF_INET6;
    else
        return FY_ERR;
    c->bits = c->family == AF_INET ? 32 : 128;
    if (slash != NULL) {
        if (fy_conf_uint(slash + 1, 0, (uint64_t)c->bits, &bits) != FY_OK)
            return FY_ERR;
        c->bits = (int)bits;
    }
    return FY_OK;
}

static int load_list(loader_t *l, yaml_node_t *n, const char *key, int (*each)(loader_t *, yaml_node_t *, const char *, void *), void *arg)
{
    yaml_node_item_t *it;
    if (n->type == YAML_SCALAR_NODE)
        return each(l, n, key, arg);
    if (n->type != YAML_SEQUENCE_NODE)
        return fail(l, n, key, "expected a list");
    for (it = n->data.sequence.items.start; it < n->data.sequence.items.top; it++)
        FY_GUARD(each(l, yaml_document_get_node(l->doc, *it), key, arg));
    return FY_OK;
}

/* listen and listen_tls: key says which list. */
static int each_listen(loader_t *l, yaml_node_t *n, const char *key, void *arg)
{
    fy_conf_t *c = arg;
    bool tls = strcmp(key, "listen_tls") == 0;
    char **list = tls ? c->listen_tls : c->listen;
    int *count = tls ? &c->nlisten_tls : &c->nlisten;
    const char *s;
    FY_GUARD(want_scalar(l, n, key, &s));
    FY_GUARD(check_addr(l, n, key, s));
    if (c->nlisten + c->nlisten_tls == FY_CONF_MAX_LISTEN)
        return fail(l, n, key, "at most %d listeners (listen and listen_tls together)", FY_CONF_MAX_LISTEN);
    if ((list[*count] = strdup(s)) == NULL)
        return fail(l, n, key, "out of memory");
    (*count)++;
    return FY_OK;
}

static int tls_key(loader_t *l, fy_conf_t *c, const char *k, yaml_node_t *v)
{
    if (!strcmp(k, "cert"))
        return set_str(l, v, "tls.cert", &c->tls_cert);
    if (!strcmp(k, "key"))
        return set_str(l, v, "tls.key", &c->tls_key);
    if (!strcmp(k, "ocsp_staple"))
        return set_str(l, v, "tls.ocsp_staple", &c->tls_ocsp);
    return fail(l, v, k, "unknown key in tls (cert, key, ocsp_staple)");
}

static int each_route(loader_t *l, yaml_node_t *n, const char *key, void *arg)
{
    static const char *const names[] = {"host", "path", "header", "query", "default"};
    fy_conf_t *c = arg;
    const char *s;
    int i;
    FY_GUARD(want_scalar(l, n, key, &s));
    for (i = 0; i < 5; i++)
        if (strcmp(s, names[i]) == 0)
            break;
    if (i == 5)
        return fail(l, n, key, "\"%s\" is not one of host, path, header, query, default", s);
    if (c->nroute == 5)
        return fail(l, n, key, "each method at most once");
    c->route_order[c->nroute++] = i;
    return FY_OK;
}

static int each_trust(loader_t *l, yaml_node_t *n, const char *key, void *arg)
{
    fy_conf_t *c = arg;
    const char *s;
    FY_GUARD(want_scalar(l, n, key, &s));
    if (c->ntrust == FY_CONF_MAX_TRUST)
        return fail(l, n, key, "at most %d entries", FY_CONF_MAX_TRUST);
    if (fy_cidr_parse(s, &c->trust[c->ntrust]) != FY_OK)
        return fail(l, n, key, "\"%s\" is not an address or CIDR", s);
    c->ntrust++;
    return FY_OK;
}

/* One `auth.tokens` entry: {hash: "blake2b:HEX", tunnels: PATTERN}. */
static int each_token(loader_t *l, yaml_node_t *n, const char *key, void *arg)
{
    static const char tag[] = "blake2b:";
    fy_conf_t *c = arg;
    fy_conf_token_t tok, *grown;
    yaml_node_pair_t *p;
    bool have_hash = false, have_tunnels = false;
    size_t hl, i;
    int j;

    if (n->type != YAML_MAPPING_NODE)
        return fail(l, n, key, "each entry is {hash: \"blake2b:HEX\", tunnels: PATTERN}");
    memset(&tok, 0, sizeof(tok));
    for (p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
        yaml_node_t *k = yaml_document_get_node(l->doc, p->key);
        yaml_node_t *v = yaml_document_get_node(l->doc, p->value);
        const char *ks = scalar(k), *vs;
        if (ks == NULL)
            return fail(l, k, key, "keys must be plain words");
        if (!strcmp(ks, "hash")) {
            FY_GUARD(want_scalar(l, v, "auth.tokens.hash", &vs));
            hl = strlen(vs);
            if (hl != sizeof(tag) - 1 + 2 * FY_TOKEN_HASH || memcmp(vs, tag, sizeof(tag) - 1) != 0
                || sodium_hex2bin(tok.hash, sizeof(tok.hash), vs + sizeof(tag) - 1, hl - (sizeof(tag) - 1),
                                  NULL, &i, NULL) != 0 || i != FY_TOKEN_HASH)
                return fail(l, v, "auth.tokens.hash", "not \"blake2b:\" and 64 hex digits "
                            "(ferryd token --static prints one)");
            have_hash = true;
        } else if (!strcmp(ks, "tunnels")) {
            FY_GUARD(want_scalar(l, v, "auth.tokens.tunnels", &vs));
            hl = strlen(vs);
            for (i = 0; i < hl && i < FY_TOKEN_PATTERN_MAX; i++)   /* ids are case-folded */
                tok.tunnels[i] = (char)(vs[i] >= 'A' && vs[i] <= 'Z' ? vs[i] | 0x20 : vs[i]);
            if (hl > FY_TOKEN_PATTERN_MAX || !fy_token_pattern_valid(tok.tunnels, hl))
                return fail(l, v, "auth.tokens.tunnels", "\"%.*s\" is not a tunnel id or a glob of a-z 0-9 - * "
                            "(at most %d characters; \"*\" covers every id)", 200, vs, FY_TOKEN_PATTERN_MAX);
            have_tunnels = true;
        } else {
            return fail(l, k, key, "unknown key \"%s\" (an entry has hash and tunnels)", ks);
        }
    }
    if (!have_hash || !have_tunnels)
        return fail(l, n, key, "each entry needs both hash and tunnels (tunnels: \"*\" covers every id)");
    for (j = 0; j < c->auth_ntokens; j++)
        if (memcmp(c->auth_tokens[j].hash, tok.hash, FY_TOKEN_HASH) == 0)
            return fail(l, n, key, "the same hash is listed twice");
    if (c->auth_ntokens == FY_CONF_MAX_TOKENS)
        return fail(l, n, key, "at most %d static tokens", FY_CONF_MAX_TOKENS);
    if ((grown = realloc(c->auth_tokens, (size_t)(c->auth_ntokens + 1) * sizeof(*grown))) == NULL)
        return fail(l, n, key, "out of memory");
    c->auth_tokens = grown;
    c->auth_tokens[c->auth_ntokens++] = tok;
    return FY_OK;
}

typedef int (*section_fn)(loader_t *, fy_conf_t *, const char *key, yaml_node_t *val);

static int walk_map(loader_t *l, fy_conf_t *c, yaml_node_t *map, const char *what, section_fn fn)
{
    yaml_node_pair_t *p;
    if (map->type != YAML_MAPPING_NODE)
        return fail(l, map, what, "expected a mapping of keys");
    for (p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
        yaml_node_t *k = yaml_document_get_node(l->doc, p->key);
        yaml_node_t *v = yaml_document_get_node(l->doc, p->value);
        const char *ks = scalar(k);
        if (ks == NULL)
            return fail(l, k, what, "keys must be plain words");
        FY_GUARD(fn(l, c, ks, v));
    }
    return FY_OK;
}

static int limits_key(loader_t *l, fy_conf_t *c, const char *k, yaml_node_t *v)
{
    if (!strcmp(k, "max_tunnels"))
        return set_uint(l, v, "limits.max_tunnels", 1, 1u << 24, &c->limits.max_tunnels);
    if (!strcmp(k, "max_header_bytes"))
        return set_uint(l, v, "limits.max_header_bytes", 1024, 1u << 20, &c->limits.max_header_bytes);
    if (!strcmp(k, "max_headers"))
        return set_uint(l, v, "limits.max_headers", 8, 1000, &c->limits.max_headers);
    if (!strcmp(k, "max_streams_per_tunnel"))
        return set_uint(l, v, "limits.max_streams_per_tunnel", 1, 1u << 20, &c->limits.max_streams_per_tunnel);
    if (!strcmp(k, "header_timeout"))
        return set_duration(l, v, "limits.header_timeout", &c->limits.header_timeout);
    if (!strcmp(k, "body_timeout"))
        return set_duration(l, v, "limits.body_timeout", &c->limits.body_timeout);
    if (!strcmp(k, "idle_timeout"))
        return set_duration(l, v, "limits.idle_timeout", &c->limits.idle_timeout);
    if (!strcmp(k, "upstream_timeout"))
        return set_duration(l, v, "limits.upstream_timeout", &c->limits.upstream_timeout);
    if (!strcmp(k, "tunnel_wait"))
        return set_duration(l, v, "limits.tunnel_wait", &c->limits.tunnel_wait);
    if (!strcmp(k, "drain_timeout"))
        return set_duration(l, v, "limits.drain_timeout", &c->limits.drain_timeout);
    return fail(l, v, k, "unknown key in limits");
}

static int auth_key(loader_t *l, fy_conf_t *c, const char *k, yaml_node_t *v)
{
    if (!strcmp(k, "key"))
        return set_str(l, v, "auth.key", &c->auth_key);
    if (!strcmp(k, "revoked"))
        return set_str(l, v, "auth.revoked", &c->auth_revoked);
    if (!strcmp(k, "tokens")) {
        free(c->auth_tokens);
        c->auth_tokens = NULL;
        c->auth_ntokens = 0;
        if (v->type == YAML_SCALAR_NODE && v->data.scalar.length == 0)
            return FY_OK;   /* "tokens:" with nothing: none */
        if (v->type != YAML_SEQUENCE_NODE)
            return fail(l, v, "auth.tokens", "expected a list of {hash: \"blake2b:HEX\", tunnels: PATTERN}");
        return load_list(l, v, "auth.tokens", each_token, c);
    }
    return fail(l, v, k, "unknown key in auth");
}

static int log_key(loader_t *l, fy_conf_t *c, const char *k, yaml_node_t *v)
{
    const char *s;
    if (!strcmp(k, "file"))
        return set_str(l, v, "log.file", &c->log_file);
    if (!strcmp(k, "format")) {
        FY_GUARD(want_scalar(l, v, "log.format", &s));
        if (strcmp(s, "text") && strcmp(s, "json"))
            return fail(l, v, "log.format", "\"%s\" is not text or json", s);
        c->log_json = strcmp(s, "json") == 0;
        return FY_OK;
    }
    return fail(l, v, k, "unknown key in log");
}

static int path_value(loader_t *l, yaml_node_t *v, const char *key, char **dst)
{
    size_t n;
    FY_GUARD(set_str(l, v, key, dst));
    n = strlen(*dst);
    if (n < 2 || (*dst)[0] != '/' || (*dst)[n - 1] == '/' || strpbrk(*dst, "?# \t") != NULL)
        return fail(l, v, key, "\"%s\" must start with / and not end with one", *dst);
    return FY_OK;
}

/* "$argon2id$v=19$m=65536,t=2,p=1$salt$hash" with capped m and t. */
static int check_argon2id(const char *h, char *why, size_t whylen)
{
    unsigned long mem, passes, par;
    if (strncmp(h, "$argon2id$v=19$", 15) != 0
        || sscanf(h + 15, "m=%lu,t=%lu,p=%lu$", &mem, &passes, &par) != 3 || strlen(h) >= 128) {
        snprintf(why, whylen, "not an Argon2id hash (make one with ferryd hash-password)");
        return FY_ERR;
    }
    if (mem > FY_ACCESS_MAX_MEM_KIB || passes > FY_ACCESS_MAX_PASSES || par != 1) {
        snprintf(why, whylen, "Argon2id parameters m=%lu,t=%lu,p=%lu are over the cap m<=%d,t<=%d,p=1 "
                 "(each check would cost too much; ferryd hash-password writes m=65536,t=2)", mem, passes, par,
                 FY_ACCESS_MAX_MEM_KIB, FY_ACCESS_MAX_PASSES);
        return FY_ERR;
    }
    return FY_OK;
}

static int access_list(loader_t *l, yaml_node_t *v, const char *key, fy_access_rule_t *r, int which)
{
    yaml_node_item_t *it;
    if (v->type != YAML_SEQUENCE_NODE)
        return fail(l, v, key, "expected a list");
    for (it = v->data.sequence.items.start; it < v->data.sequence.items.top; it++) {
        yaml_node_t *n = yaml_document_get_node(l->doc, *it);
        const char *s;
        FY_GUARD(want_scalar(l, n, key, &s));
        if (which == 0) {
            const char *colon = strchr(s, ':');
            char why[256];
            fy_access_user_t *u;
            if (r->nusers == FY_ACCESS_MAX_USERS)
                return fail(l, n, key, "at most %d users a rule", FY_ACCESS_MAX_USERS);
            if (colon == NULL || colon == s || (size_t)(colon - s) >= sizeof(u->user))
                return fail(l, n, key, "expected \"user:$argon2id$...\"");
            if (check_argon2id(colon + 1, why, sizeof(why)) != FY_OK)
                return fail(l, n, key, "%s", why);
            u = &r->users[r->nusers++];
            memcpy(u->user, s, (size_t)(colon - s));
            u->user[colon - s] = '\0';
            snprintf(u->hash, sizeof(u->hash), "%s", colon + 1);
        } else {
            fy_cidr_t *list = which == 1 ? r->allow : r->deny;
            int *cnt = which == 1 ? &r->nallow : &r->ndeny;
            if (*cnt == FY_ACCESS_MAX_CIDRS)
                return fail(l, n, key, "at most %d entries", FY_ACCESS_MAX_CIDRS);
            if (fy_cidr_parse(s, &list[*cnt]) != FY_OK)
                return fail(l, n, key, "\"%s\" is not an address or CIDR", s);
            (*cnt)++;
        }
    }
    return FY_OK;
}

static int load_access(loader_t *l, fy_conf_t *c, yaml_node_t *v)
{
    yaml_node_item_t *it;

    if (v->type != YAML_SEQUENCE_NODE)
        return fail(l, v, "access", "expected a list of rules");
    free(c->access);
    c->naccess = 0;
    if ((c->access = calloc(FY_ACCESS_MAX_RULES, sizeof(*c->access))) == NULL)
        return fail(l, v, "access", "out of memory");
    for (it = v->data.sequence.items.start; it < v->data.sequence.items.top; it++) {
        yaml_node_t *rule = yaml_document_get_node(l->doc, *it);
        yaml_node_pair_t *p;
        fy_access_rule_t *r;
        bool have_pattern = false;

        if (c->naccess == FY_ACCESS_MAX_RULES)
            return fail(l, rule, "access", "at most %d rules", FY_ACCESS_MAX_RULES);
        if (rule->type != YAML_MAPPING_NODE)
            return fail(l, rule, "access", "each rule is a mapping: {tunnels, basic_auth, allow, deny}");
        r = &c->access[c->naccess++];
        for (p = rule->data.mapping.pairs.start; p < rule->data.mapping.pairs.top; p++) {
            yaml_node_t *k = yaml_document_get_node(l->doc, p->key);
            yaml_node_t *val = yaml_document_get_node(l->doc, p->value);
            const char *ks = scalar(k), *s;
            if (ks == NULL)
                return fail(l, k, "access", "keys must be plain words");
            if (!strcmp(ks, "tunnels")) {
                FY_GUARD(want_scalar(l, val, "access.tunnels", &s));
                if (strlen(s) >= sizeof(r->pattern) || !fy_token_pattern_valid(s, strlen(s)))
                    return fail(l, val, "access.tunnels", "\"%s\" is not a tunnel id or a pattern with *", s);
                snprintf(r->pattern, sizeof(r->pattern), "%s", s);
                have_pattern = true;
            } else if (!strcmp(ks, "basic_auth")) {
                FY_GUARD(access_list(l, val, "access.basic_auth", r, 0));
            } else if (!strcmp(ks, "allow")) {
                FY_GUARD(access_list(l, val, "access.allow", r, 1));
            } else if (!strcmp(ks, "deny")) {
                FY_GUARD(access_list(l, val, "access.deny", r, 2));
            } else {
                return fail(l, k, ks, "unknown key in an access rule (tunnels, basic_auth, allow, deny)");
            }
        }
        if (!have_pattern)
            return fail(l, rule, "access", "a rule needs tunnels: (an id or a pattern)");
    }
    return FY_OK;
}

/* --- cluster: (docs: README "Running several nodes") --------------------- */

/* "localhost" is the one name accepted (as 127.0.0.1): a worker's loop
 * never resolves names, so every other address must be an IP literal. */
static int cluster_addr(loader_t *l, yaml_node_t *v, const char *key, const char *hostport, char *out, size_t cap)
{
    struct sockaddr_storage ss;
    socklen_t len;
    const char *s = hostport;
    char tmp[128];

    if (!strncmp(s, "localhost:", 10)) {
        snprintf(tmp, sizeof(tmp), "127.0.0.1:%s", s + 10);
        s = tmp;
    }
    if (strlen(s) >= cap || fy_net_parse_addr(s, &ss, &len) != FY_OK)
        return fail(l, v, key, "\"%s\" is not IP:PORT (names other than localhost are not resolved: "
                    "give an address)", hostport);
    memcpy(out, s, strlen(s) + 1);
    return FY_OK;
}

static int cluster_redis(loader_t *l, fy_conf_t *c, yaml_node_t *v)
{
    const char *s, *at, *hp;
    char buf[192];
    size_t n;

    FY_GUARD(set_str(l, v, "cluster.redis", &c->cluster.redis));
    s = c->cluster.redis;
    if (!strncmp(s, "redis://", 8))
        s += 8;
    free(c->cluster.redis_password);
    c->cluster.redis_password = NULL;
    if ((at = strrchr(s, '@')) != NULL) {
        const char *colon = memchr(s, ':', (size_t)(at - s));
        if (colon == NULL || at - colon - 1 == 0)
            return fail(l, v, "cluster.redis", "expected redis://[:PASSWORD@]HOST:PORT");
        if ((c->cluster.redis_password = strndup(colon + 1, (size_t)(at - colon - 1))) == NULL)
            return fail(l, v, "cluster.redis", "out of memory");
        s = at + 1;
    }
    n = strcspn(s, "/");
    if (n == 0 || n >= sizeof(buf) - 8 || (s[n] == '/' && s[n + 1] != '\0'))
        return fail(l, v, "cluster.redis", "\"%s\": expected redis://[:PASSWORD@]HOST:PORT (no database number)",
                    c->cluster.redis);
    memcpy(buf, s, n);
    buf[n] = '\0';
    hp = strrchr(buf, ':');
    if (hp == NULL || (buf[0] == '[' && strchr(hp, ']') != NULL))
        memcpy(buf + n, ":6379", 6);
    return cluster_addr(l, v, "cluster.redis", buf, c->cluster.redis_addr, sizeof(c->cluster.redis_addr));
}

static int cluster_key(loader_t *l, fy_conf_t *c, const char *k, yaml_node_t *v)
{
    const char *s;
    size_t i, n;

    if (!strcmp(k, "redis"))
        return cluster_redis(l, c, v);
    if (!strcmp(k, "node")) {
        FY_GUARD(want_scalar(l, v, "cluster.node", &s));
        n = strlen(s);
        if (n == 0 || n > FY_NODE_MAX || strspn(s, "abcdefghijklmnopqrstuvwxyz0123456789._-") != n)
            return fail(l, v, "cluster.node", "\"%s\" is not a node name (1-%d of a-z 0-9 . _ -)", s, FY_NODE_MAX);
        memcpy(c->cluster.node, s, n + 1);
        return FY_OK;
    }
    if (!strcmp(k, "advertise")) {
        FY_GUARD(set_str(l, v, "cluster.advertise", &c->cluster.advertise));
        s = c->cluster.advertise;
        n = strlen(s);
        while (n > 0 && s[n - 1] == '/')
            c->cluster.advertise[--n] = '\0';
        if (strncmp(s, "http://", 7) != 0 || strchr(s + 7, '/') != NULL)
            return fail(l, v, "cluster.advertise", "\"%s\" is not http://IP:PORT", s);
        return cluster_addr(l, v, "cluster.advertise", s + 7, c->cluster.advertise_addr,
                            sizeof(c->cluster.advertise_addr));
    }
    if (!strcmp(k, "secret")) {
        char why[512];
        char *buf;
        size_t len;

        FY_GUARD(set_str(l, v, "cluster.secret", &c->cluster.secret));
        why[0] = '\0';
        if ((buf = fy_conf_read_file("file", c->cluster.secret, 4096, true, &len, why, sizeof(why))) == NULL)
            return fail(l, v, "cluster.secret", "%s", why);
        while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r' || buf[len - 1] == ' '))
            len--;
        for (i = 0, n = 0; i < len; i++)
            n += buf[i] != buf[0];
        if (len < 32 || n == 0) {
            sodium_memzero(buf, len);
            free(buf);
            return fail(l, v, "cluster.secret", "%s: at least 32 bytes of secret are needed "
                        "(e.g. head -c 32 /dev/urandom | base64 > FILE; chmod 600 FILE)", c->cluster.secret);
        }
        crypto_generichash(c->cluster.key, sizeof(c->cluster.key), (const uint8_t *)buf, len,
                           (const uint8_t *)"ferry.cluster.secret.v1", 23);
        sodium_memzero(buf, len);
        free(buf);
        return FY_OK;
    }
    if (!strcmp(k, "mode")) {
        FY_GUARD(want_scalar(l, v, "cluster.mode", &s));
        if (strcmp(s, "proxy") != 0 && strcmp(s, "redirect") != 0)
            return fail(l, v, "cluster.mode", "\"%s\" is not proxy or redirect", s);
        c->cluster.redirect = !strcmp(s, "redirect");
        return FY_OK;
    }
    if (!strcmp(k, "ttl")) {
        FY_GUARD(set_duration(l, v, "cluster.ttl", &c->cluster.ttl));
        if (c->cluster.ttl < 3000 || c->cluster.ttl > 3600000)
            return fail(l, v, "cluster.ttl", "must be between 3s and 1h");
        return FY_OK;
    }
    if (!strcmp(k, "timeout")) {
        FY_GUARD(set_duration(l, v, "cluster.timeout", &c->cluster.timeout));
        if (c->cluster.timeout < 50 || c->cluster.timeout > 60000)
            return fail(l, v, "cluster.timeout", "must be between 50ms and 60s");
        return FY_OK;
    }
    return fail(l, v, k, "unknown key in cluster (redis, node, advertise, secret, mode, ttl, timeout)");
}

static int load_cluster(loader_t *l, fy_conf_t *c, yaml_node_t *v)
{
    const char *missing = NULL;

    c->cluster.on = true;
    FY_GUARD(walk_map(l, c, v, "cluster", cluster_key));
    if (c->cluster.redis == NULL)
        missing = "redis";
    else if (c->cluster.node[0] == '\0')
        missing = "node";
    else if (c->cluster.advertise == NULL)
        missing = "advertise";
    else if (c->cluster.secret == NULL)
        missing = "secret";
    if (missing != NULL)
        return fail(l, v, "cluster", "cluster.%s is required when cluster: is set", missing);
    return FY_OK;
}

static int top_key(loader_t *l, fy_conf_t *c, const char *k, yaml_node_t *v)
{
    const char *s;

    if (!strcmp(k, "listen")) {
        while (c->nlisten > 0)
            free(c->listen[--c->nlisten]);
        return load_list(l, v, "listen", each_listen, c);
    }
    if (!strcmp(k, "listen_tls")) {
        while (c->nlisten_tls > 0)
            free(c->listen_tls[--c->nlisten_tls]);
        return load_list(l, v, "listen_tls", each_listen, c);
    }
    if (!strcmp(k, "tls"))
        return walk_map(l, c, v, "tls", tls_key);
    if (!strcmp(k, "agents_require_tls"))
        return set_bool(l, v, "agents_require_tls", &c->agents_require_tls);
    if (!strcmp(k, "splice"))
        return set_bool(l, v, "splice", &c->splice);
    if (!strcmp(k, "admin")) {
        FY_GUARD(set_str(l, v, "admin", &c->admin));
        return c->admin[0] ? check_addr(l, v, "admin", c->admin) : FY_OK;
    }
    if (!strcmp(k, "domain")) {
        FY_GUARD(set_str(l, v, "domain", &c->domain));
        if (c->domain[0] == '\0' || strpbrk(c->domain, "/:? \t") != NULL)
            return fail(l, v, "domain", "\"%s\" is not a domain name", c->domain);
        for (char *p = c->domain; *p; p++)
            if (*p >= 'A' && *p <= 'Z')
                *p = (char)(*p | 0x20);
        return FY_OK;
    }
    if (!strcmp(k, "agent_path"))
        return path_value(l, v, "agent_path", &c->agent_path);
    if (!strcmp(k, "path_prefix"))
        return path_value(l, v, "path_prefix", &c->path_prefix);
    if (!strcmp(k, "default_tunnel")) {
        FY_GUARD(want_scalar(l, v, "default_tunnel", &s));
        if (s[0] == '\0') {
            c->default_tunnel[0] = '\0';
            return FY_OK;
        }
        if (fy_conf_tunnel_id(s, strlen(s), c->default_tunnel) != FY_OK)
            return fail(l, v, "default_tunnel", "\"%s\" is not a tunnel id (1-63 of a-z 0-9 -)", s);
        return FY_OK;
    }
    if (!strcmp(k, "route_order")) {
        c->nroute = 0;
        return load_list(l, v, "route_order", each_route, c);
    }
    if (!strcmp(k, "workers")) {
        uint64_t n;
        FY_GUARD(want_scalar(l, v, "workers", &s));
        if (!strcmp(s, "auto")) {
            c->workers = 0;
            return FY_OK;
        }
        if (fy_conf_uint(s, 1, 256, &n) != FY_OK)
            return fail(l, v, "workers", "\"%s\" is not auto or a number in 1..256", s);
        c->workers = (int)n;
        return FY_OK;
    }
    if (!strcmp(k, "pid"))
        return set_str(l, v, "pid", &c->pid);
    if (!strcmp(k, "daemon"))
        return set_bool(l, v, "daemon", &c->daemon);
    if (!strcmp(k, "trust_forwarded_from")) {
        c->ntrust = 0;
        return load_list(l, v, "trust_forwarded_from", each_trust, c);
    }
    if (!strcmp(k, "access"))
        return load_access(l, c, v);
    if (!strcmp(k, "limits"))
        return walk_map(l, c, v, "limits", limits_key);
    if (!strcmp(k, "auth"))
        return walk_map(l, c, v, "auth", auth_key);
    if (!strcmp(k, "log"))
        return walk_map(l, c, v, "log", log_key);
    if (!strcmp(k, "cluster"))
        return load_cluster(l, c, v);
    return fail(l, v, k, "unknown key");
}

static fy_conf_t *defaults(void)
{
    fy_conf_t *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->listen[0] = strdup("127.0.0.1:8080");
    c->nlisten = 1;
    c->admin = strdup("127.0.0.1:8081");
    c->domain = strdup("localhost");
    c->agent_path = strdup("/_ferry/tunnel");
    c->path_prefix = strdup("/t");
    c->route_order[0] = FY_ROUTE_HOST;
    c->route_order[1] = FY_ROUTE_PATH;
    c->route_order[2] = FY_ROUTE_HEADER;
    c->route_order[3] = FY_ROUTE_QUERY;
    c->route_order[4] = FY_ROUTE_DEFAULT;
    c->nroute = 5;
    c->splice = true;
    c->limits.max_tunnels = 65536;
    c->limits.max_header_bytes = 32768;
    c->limits.max_headers = 100;
    c->limits.max_streams_per_tunnel = 1024;
    c->limits.header_timeout = 10000;
    c->limits.body_timeout = 60000;
    c->limits.idle_timeout = 75000;
    c->limits.upstream_timeout = 60000;
    c->limits.tunnel_wait = 3000;
    c->limits.drain_timeout = 30000;
    c->cluster.ttl = 15000;
    c->cluster.timeout = 1000;
    c->log_file = strdup("stderr");
    if (!c->listen[0] || !c->admin || !c->domain || !c->agent_path || !c->path_prefix || !c->log_file) {
        fy_config_free(c);
        return NULL;
    }
    return c;
}

fy_conf_t *fy_config_load(const char *path, char *err, size_t errlen)
{
    yaml_parser_t parser;
    yaml_document_t doc;
    yaml_node_t *root;
    loader_t l = {&doc, path, err, errlen};
    fy_conf_t *c;
    FILE *f;
    int rc;

    if ((c = defaults()) == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    if (path == NULL)
        return c;
    if ((f = fopen(path, "r")) == NULL) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        fy_config_free(c);
        return NULL;
    }
    yaml_parser_initialize(&parser);
    yaml_parser_set_input_file(&parser, f);
    if (!yaml_parser_load(&parser, &doc)) {
        snprintf(err, errlen, "%s:%lu: invalid YAML: %s", path,
                 (unsigned long)parser.problem_mark.line + 1, parser.problem ? parser.problem : "?");
        yaml_parser_delete(&parser);
        fclose(f);
        fy_config_free(c);
        return NULL;
    }
    root = yaml_document_get_root_node(&doc);
    rc = FY_OK;
    if (root != NULL && !(root->type == YAML_SCALAR_NODE && root->data.scalar.length == 0))
        rc = walk_map(&l, c, root, "(top)", top_key);
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    fclose(f);
    if (rc != FY_OK) {
        fy_config_free(c);
        return NULL;
    }
    return c;
}

int fy_config_check(const fy_conf_t *c, char *err, size_t errlen)
{
    bool auth = c->auth_key != NULL || c->auth_ntokens > 0;
    int i;

    if (c->nlisten + c->nlisten_tls == 0) {
        snprintf(err, errlen, "listen: at least one listener is needed (listen or listen_tls)");
        return FY_ERR;
    }
    if (c->nlisten_tls > 0 && (c->tls_cert == NULL || !c->tls_cert[0] || c->tls_key == NULL || !c->tls_key[0])) {
        snprintf(err, errlen, "listen_tls: HTTPS listeners need tls.cert and tls.key (PEM files)");
        return FY_ERR;
    }
    if (c->agents_require_tls && c->nlisten_tls == 0) {
        snprintf(err, errlen, "agents_require_tls: true, but there is no listen_tls: no agent could connect");
        return FY_ERR;
    }
    if (c->auth_key != NULL && c->auth_key[0] == '\0') {
        snprintf(err, errlen, "auth.key: empty; name the key file (ferryd keygen -o FILE writes one)");
        return FY_ERR;
    }
    if (c->auth_revoked != NULL && c->auth_revoked[0] != '\0' && c->auth_key == NULL) {
        snprintf(err, errlen, "auth.revoked lists ids of signed tokens: it needs auth.key "
                 "(a static token is revoked by removing it from auth.tokens)");
        return FY_ERR;
    }
    /* Agent auth is on with a key or static tokens; without either, only
     * loopback listeners are allowed (the admin listener carries no agents). */
    for (i = 0; !auth && i < c->nlisten + c->nlisten_tls; i++) {
        const char *a = i < c->nlisten ? c->listen[i] : c->listen_tls[i - c->nlisten];
        struct sockaddr_storage ss;
        socklen_t len;
        if (fy_net_parse_addr(a, &ss, &len) != FY_OK)
            continue;
        if (!fy_net_is_loopback((struct sockaddr *)&ss)) {
            snprintf(err, errlen, "%s: %s is not a loopback address and agent auth is off: "
                     "anyone could claim a tunnel; configure auth (auth.key or auth.tokens) "
                     "or listen on 127.0.0.1/::1 only", i < c->nlisten ? "listen" : "listen_tls", a);
            return FY_ERR;
        }
    }
    return FY_OK;
}

void fy_config_free(fy_conf_t *c)
{
    int i;
    if (c == NULL)
        return;
    for (i = 0; i < c->nlisten; i++)
        free(c->listen[i]);
    for (i = 0; i < c->nlisten_tls; i++)
        free(c->listen_tls[i]);
    free(c->tls_cert);
    free(c->tls_key);
    free(c->tls_ocsp);
    free(c->admin);
    free(c->domain);
    free(c->agent_path);
    free(c->path_prefix);
    free(c->pid);
    free(c->auth_key);
    free(c->auth_tokens);
    free(c->auth_revoked);
    free(c->log_file);
    free(c->access);
    free(c->cluster.redis);
    free(c->cluster.redis_password);
    free(c->cluster.advertise);
    free(c->cluster.secret);
    sodium_memzero(c->cluster.key, sizeof(c->cluster.key));
    free(c);
}

bool fy_config_trusted(const fy_conf_t *c, const struct sockaddr *sa)
{
    return fy_cidr_match(c->trust, c->ntrust, sa);
}

bool fy_cidr_match(const fy_cidr_t *list, int n, const struct sockaddr *sa)
{
    const uint8_t *a;
    int fam, i;

    if (sa->sa_family == AF_INET) {
        a = (const uint8_t *)&((const struct sockaddr_in *)sa)->sin_addr;
        fam = AF_INET;
    } else if (sa->sa_family == AF_INET6) {
        a = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
        fam = AF_INET6;
    } else {
        return false;
    }
    for (i = 0; i < n; i++) {
        const fy_cidr_t *r = &list[i];
        int full = r->bits / 8, rem = r->bits % 8;
        if (r->family != fam || memcmp(a, r->addr, (size_t)full) != 0)
            continue;
        if (rem == 0 || ((a[full] ^ r->addr[full]) & (0xff << (8 - rem))) == 0)
            return true;
    }
    return false;
}
