/*
 * auth.h: agent authentication at the relay (SPEC.md "Agents connecting",
 * `auth:`): Ed25519 tokens minted by `ferryd token`, static random tokens
 * kept as keyed BLAKE2b hashes, and the revocation list. The master loads
 * it (so `ferryd -t` checks the key files) before forking the workers.
 */
#ifndef FY_AUTH_H
#define FY_AUTH_H

#include "fy.h"
#include "master/config.h"

#define FY_AUTH_HOLDER_MAX 64

typedef struct fy_auth_s fy_auth_t;

/*
 * Load what conf's auth section names. Returns NULL with *err empty when
 * auth is off (no key and no static tokens), NULL with err filled on
 * failure (unreadable key, key readable by others, bad revoked file), or
 * the loaded context (owned by the caller).
 */
fy_auth_t *fy_auth_load(const fy_conf_t *conf, char *err, size_t errlen);
void fy_auth_free(fy_auth_t *a);

typedef struct fy_auth_result_s {
    int         status;                    /* 0 allowed, else 401 or 403 */
    const char *code;                      /* X-Ferry-Error code when refused */
    char        msg[200];                  /* the body: says exactly why */
    char        holder[FY_AUTH_HOLDER_MAX + 1]; /* who holds the tunnel: the token's identity */
} fy_auth_result_t;

/*
 * Check an agent's credentials for tunnel id. authz is the Authorization
 * header value (NULL if absent). With a == NULL (auth off) everything is
 * allowed and holder is empty. Never slow: one Ed25519 verify or one keyed
 * BLAKE2b, no password hash.
 */
void fy_auth_check(const fy_auth_t *a, const char *authz, size_t authz_len, const char *id,
                   fy_auth_result_t *res);

/* fy_auth_check at Unix time now (seconds), for expiry: tests and benches. */
void fy_auth_check_at(const fy_auth_t *a, const char *authz, size_t authz_len, const char *id, uint64_t now,
                      fy_auth_result_t *res);

/*
 * Read the relay's key file (written by `ferryd keygen`): a regular file
 * that group and others cannot access (mode & 077 == 0), else refused.
 * Fills pk (32 bytes) and, if sk is not NULL, the 64-byte libsodium secret
 * key, which the caller wipes with sodium_memzero when done. Everything
 * else read is wiped here. FY_OK, or FY_ERR with err filled ("auth.key
 * FILE: why"); never logs key material.
 */
int fy_auth_read_key(const char *path, uint8_t *sk, uint8_t pk[FY_TOKEN_PK], char *err, size_t errlen) FY_MUST_USE;

#endif
