/*
 * config.h: ferryd's configuration: embedded defaults (SPEC.md), the YAML
 * file (libyaml), and validation. Errors name the file, line and key.
 */
#ifndef FY_CONFIG_H
#define FY_CONFIG_H

#include "fy.h"
#include "conf/conf.h"
#include "crypto/token.h"

#include <sys/socket.h>

#define FY_CONF_MAX_LISTEN 16
#define FY_CONF_MAX_TRUST 64
#define FY_CONF_MAX_TOKENS 10000

/* What a listen socket carries (the master tells workers with each socket). */
enum fy_listen_kind { FY_LISTEN_PLAIN = 0, FY_LISTEN_ADMIN = 1, FY_LISTEN_TLS = 2 };

enum fy_route { FY_ROUTE_HOST, FY_ROUTE_PATH, FY_ROUTE_HEADER, FY_ROUTE_QUERY, FY_ROUTE_DEFAULT };

typedef struct fy_cidr_s {
    int     family;      /* AF_INET or AF_INET6 */
    uint8_t addr[16];
    int     bits;
} fy_cidr_t;

/* One `auth.tokens` entry: a static agent token, kept only as its keyed
 * BLAKE2b-256 hash (fy_token_static_hash), and the tunnel ids it covers. */
typedef struct fy_conf_token_s {
    uint8_t hash[FY_TOKEN_HASH];
    char    tunnels[FY_TOKEN_PATTERN_MAX + 1];   /* an id or a glob with * */
} fy_conf_token_t;

/* access: one rule for the tunnels its pattern names (the first that matches). */
#define FY_ACCESS_MAX_USERS 64
#define FY_ACCESS_MAX_CIDRS 64
typedef struct fy_access_user_s {
    char user[64];
    char hash[128];            /* $argon2id$..., parameters capped at load */
} fy_access_user_t;

typedef struct fy_access_rule_s {
    char             pattern[128];
    fy_access_user_t users[FY_ACCESS_MAX_USERS];
    int              nusers;
    fy_cidr_t        allow[FY_ACCESS_MAX_CIDRS];
    int              nallow;
    fy_cidr_t        deny[FY_ACCESS_MAX_CIDRS];
    int              ndeny;
} fy_access_rule_t;

#define FY_ACCESS_MAX_RULES 64
/* Argon2id parameters the config accepts: libsodium's INTERACTIVE (64 MiB,
 * 2 passes) and at most twice the passes. A verify never runs on a worker's
 * loop, but it must stay bounded. */
#define FY_ACCESS_MAX_MEM_KIB 65536
#define FY_ACCESS_MAX_PASSES 4

/* cluster: several ferryd nodes sharing a Redis tunnel directory
 * (worker/cluster.c, master/directory.c). Addresses are IP:PORT, checked at
 * load: nothing on a worker's loop ever resolves a name. */
#define FY_NODE_MAX 63
typedef struct fy_conf_cluster_s {
    bool     on;                        /* a cluster: section is present */
    bool     redirect;                  /* mode: redirect (307) instead of proxy */
    char     node[FY_NODE_MAX + 1];     /* [a-z0-9._-], unique per node */
    char    *redis;                     /* as written, for logs */
    char     redis_addr[64];            /* IP:PORT */
    char    *redis_password;            /* from redis://:PASSWORD@..., or NULL */
    char    *advertise;                 /* http://IP:PORT, no trailing slash */
    char     advertise_addr[64];        /* its IP:PORT */
    char    *secret;                    /* the secret file's path */
    uint8_t  key[32];                   /* BLAKE2b-256 of the secret file's bytes */
    uint64_t ttl;                       /* ms: directory entries expire after this */
    uint64_t timeout;                   /* ms: Redis connect and each command */
} fy_conf_cluster_t;

typedef struct fy_conf_s {
    char       *listen[FY_CONF_MAX_LISTEN];
    int         nlisten;
    char       *listen_tls[FY_CONF_MAX_LISTEN];   /* HTTPS listeners (together with listen: at most 16) */
    int         nlisten_tls;
    char       *tls_cert, *tls_key, *tls_ocsp;   /* tls: PEM chain, PEM key, DER OCSP response (NULL: none) */
    bool        agents_require_tls;
    bool        splice;          /* bulk bodies by splice(2) (common/pipe); default true */
    char       *admin;           /* "" disables the admin listener */
    char       *domain;
    char       *agent_path;
    char       *path_prefix;
    char        default_tunnel[FY_ID_MAX + 1];
    int         route_order[5];
    int         nroute;
    int         workers;         /* 0 = auto */
    char       *pid;
    bool        daemon;
    char       *auth_key;        /* auth.key: the relay's Ed25519 key file */
    fy_conf_token_t *auth_tokens; /* auth.tokens (owned), auth_ntokens of them */
    int         auth_ntokens;
    char       *auth_revoked;    /* auth.revoked: file of revoked token ids */
    struct fy_auth_s *auth;       /* loaded by the master from the above (worker/auth.h) */
    fy_access_rule_t *access;     /* access: rules (owned), naccess of them */
    int         naccess;
    fy_cidr_t   trust[FY_CONF_MAX_TRUST];
    int         ntrust;
    char       *log_file;
    bool        log_json;
    struct {
        uint64_t max_tunnels;
        uint64_t max_header_bytes;
        uint64_t max_headers;
        uint64_t max_streams_per_tunnel;
        uint64_t header_timeout;   /* ms, as all durations here */
        uint64_t body_timeout;
        uint64_t idle_timeout;
        uint64_t upstream_timeout;
        uint64_t tunnel_wait;
        uint64_t drain_timeout;
    } limits;
    fy_conf_cluster_t cluster;   /* cluster: (docs/cluster.md) */
} fy_conf_t;

/*
 * Load the config: defaults, then path if not NULL. On error returns NULL
 * and writes "FILE:LINE: KEY: reason" into err[errlen].
 */
fy_conf_t *fy_config_load(const char *path, char *err, size_t errlen);

/* Checks that need the whole config (e.g. a public listener without agent
 * auth). FY_OK, or FY_ERR with err filled. */
int fy_config_check(const fy_conf_t *c, char *err, size_t errlen) FY_MUST_USE;

void fy_config_free(fy_conf_t *c);

/* True if addr (AF_INET/AF_INET6 sockaddr) is inside one of the CIDRs. */
bool fy_config_trusted(const fy_conf_t *c, const struct sockaddr *addr);
bool fy_cidr_match(const fy_cidr_t *list, int n, const struct sockaddr *addr);
/* Parse "1.2.3.4", "::1", "10.0.0.0/8". FY_OK or FY_ERR. */
int fy_cidr_parse(const char *s, fy_cidr_t *c) FY_MUST_USE;

#endif
