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

typedef struct fy_conf_s {
    char       *listen[FY_CONF_MAX_LISTEN];
    int         nlisten;
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

#endif
