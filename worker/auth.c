/*
 * auth.c: agent authentication at the relay (see auth.h; the token format
 * is in common/crypto/token.h).
 *
 * The master loads everything once (fy_auth_load: the key file, the
 * revocation list, a copy of the static-token hashes) before it forks the
 * workers, so a worker's check is pure computation on memory it only
 * reads: parse the Authorization header, one keyed BLAKE2b when static
 * tokens are configured, then at most one base64url decode, a bounded JSON
 * read and one Ed25519 verify. Only the public key stays in memory: the
 * seed and secret key are wiped as soon as the public key is derived.
 *
 * The order of checks decides what a refused agent is told:
 *   no Authorization, or an empty one     401 token_missing
 *   not "Bearer TOKEN", not a token        401 token_malformed
 *   a static-looking token nobody lists    401 token_unknown
 *   signature does not verify              401 token_bad_signature
 *   jti listed in auth.revoked             401 token_revoked
 *   exp <= now                             401 token_expired
 *   pattern does not cover the id          403 tunnel_forbidden
 * The revocation check comes after the signature, so that an unsigned
 * token learns nothing about the list. A static token is looked up by its
 * keyed hash (binary search of the sorted hashes, then one sodium_memcmp),
 * so a thousand entries cost about what one does.
 */
#include "worker/auth.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#define REVOKED_FILE_MAX (1u << 20)

struct fy_auth_s {
    bool             has_key;
    uint8_t          pk[FY_TOKEN_PK];
    uint64_t        *revoked;      /* sorted jtis */
    size_t           nrevoked;
    fy_conf_token_t *tokens;       /* a copy of conf->auth_tokens, sorted by hash */
    int              ntokens;
};

/* --- loading ---------------------------------------------------------------- */

int fy_auth_read_key(const char *path, uint8_t *sk, uint8_t pk[FY_TOKEN_PK], char *err, size_t errlen)
{
    uint8_t seed[FY_TOKEN_SEED];
    const char *why;
    size_t len;
    char *buf;
    int rc;

    if ((buf = fy_conf_read_file("auth.key", path, FY_TOKEN_KEY_FILE_MAX, true, &len, err, errlen)) == NULL)
        return FY_ERR;
    rc = fy_token_key_parse(buf, len, seed, &why);
    sodium_memzero(buf, FY_TOKEN_KEY_FILE_MAX + 1);
    free(buf);
    if (rc != FY_OK) {
        snprintf(err, errlen, "auth.key %s: not a ferryd key file: %s (ferryd keygen -o FILE writes one)", path, why);
        return FY_ERR;
    }
    fy_token_keypair(seed, pk, sk);
    sodium_memzero(seed, sizeof(seed));
    return FY_OK;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = (char)(c | 0x20);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/*
 * auth.revoked: one token id (16 hex digits, as `ferryd token` prints) a
 * line; blank lines and '#' comments (whole-line or trailing) are skipped,
 * spaces around an id trimmed. Anything else is an error that names the
 * line: a typo must not silently leave a token valid.
 */
static int load_revoked(fy_auth_t *a, const char *path, char *err, size_t errlen)
{
    size_t len, i = 0, cap = 0, line = 0;
    char *buf;

    if ((buf = fy_conf_read_file("auth.revoked", path, REVOKED_FILE_MAX, false, &len, err, errlen)) == NULL)
        return FY_ERR;
    while (i < len) {
        size_t s = i, e, k;
        const char *nl = memchr(buf + i, '\n', len - i), *hash;
        uint64_t v = 0;

        e = nl ? (size_t)(nl - buf) : len;
        i = nl ? e + 1 : len;
        line++;
        if ((hash = memchr(buf + s, '#', e - s)) != NULL)
            e = (size_t)(hash - buf);
        while (s < e && (buf[s] == ' ' || buf[s] == '\t'))
            s++;
        while (e > s && (buf[e - 1] == ' ' || buf[e - 1] == '\t' || buf[e - 1] == '\r'))
            e--;
        if (s == e)
            continue;
        for (k = s; k < e && e - s == FY_TOKEN_JTI_HEX; k++) {
            int h = hexval(buf[k]);
            if (h < 0)
                break;
            v = v << 4 | (uint64_t)h;
        }
        if (e - s != FY_TOKEN_JTI_HEX || k != e) {
            snprintf(err, errlen, "auth.revoked %s:%zu: \"%.*s\" is not a token id (16 hex digits, as "
                     "ferryd token prints on stderr)", path, line, (int)FY_MIN(e - s, 40), buf + s);
            free(buf);
            return FY_ERR;
        }
        if (a->nrevoked == cap) {
            uint64_t *grown;
            cap = cap ? cap * 2 : 64;
            if ((grown = realloc(a->revoked, cap * sizeof(*grown))) == NULL) {
                snprintf(err, errlen, "auth.revoked %s: out of memory", path);
                free(buf);
                return FY_ERR;
            }
            a->revoked = grown;
        }
        a->revoked[a->nrevoked++] = v;
    }
    free(buf);
    if (a->nrevoked > 1)
        qsort(a->revoked, a->nrevoked, sizeof(*a->revoked), cmp_u64);
    return FY_OK;
}

static int cmp_hash(const void *a, const void *b)
{
    return memcmp(((const fy_conf_token_t *)a)->hash, ((const fy_conf_token_t *)b)->hash, FY_TOKEN_HASH);
}

/*
 * The entry whose hash is h, or NULL. A binary search over the sorted
 * hashes, then a constant-time compare of the one candidate: the search's
 * timing can only tell an attacker about stored hash values, which are
 * one-way functions of 256-bit random tokens, never about the tokens.
 */
static const fy_conf_token_t *find_static(const fy_auth_t *a, const uint8_t h[FY_TOKEN_HASH])
{
    size_t lo = 0, hi = (size_t)a->ntokens;
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (memcmp(a->tokens[mid].hash, h, FY_TOKEN_HASH) <= 0)
            lo = mid;
        else
            hi = mid;
    }
    if (hi > lo && sodium_memcmp(a->tokens[lo].hash, h, FY_TOKEN_HASH) == 0)
        return &a->tokens[lo];
    return NULL;
}

fy_auth_t *fy_auth_load(const fy_conf_t *conf, char *err, size_t errlen)
{
    fy_auth_t *a;

    if (errlen > 0)
        err[0] = '\0';
    if (conf->auth_key == NULL && conf->auth_ntokens == 0)
        return NULL;
    if ((a = calloc(1, sizeof(*a))) == NULL) {
        snprintf(err, errlen, "auth: out of memory");
        return NULL;
    }
    if (conf->auth_key != NULL) {
        if (fy_auth_read_key(conf->auth_key, NULL, a->pk, err, errlen) != FY_OK)
            goto fail;
        a->has_key = true;
    }
    if (conf->auth_revoked != NULL && conf->auth_revoked[0] != '\0'
        && load_revoked(a, conf->auth_revoked, err, errlen) != FY_OK)
        goto fail;
    if (conf->auth_ntokens > 0) {
        if ((a->tokens = calloc((size_t)conf->auth_ntokens, sizeof(*a->tokens))) == NULL) {
            snprintf(err, errlen, "auth: out of memory");
            goto fail;
        }
        memcpy(a->tokens, conf->auth_tokens, (size_t)conf->auth_ntokens * sizeof(*a->tokens));
        a->ntokens = conf->auth_ntokens;
        qsort(a->tokens, (size_t)a->ntokens, sizeof(*a->tokens), cmp_hash);
    }
    return a;
fail:
    if (errlen > 0 && err[0] == '\0')
        snprintf(err, errlen, "auth: could not load");
    fy_auth_free(a);
    return NULL;
}

void fy_auth_free(fy_auth_t *a)
{
    if (a == NULL)
        return;
    free(a->revoked);
    a->revoked = NULL;
    free(a->tokens);
    a->tokens = NULL;
    sodium_memzero(a, sizeof(*a));
    free(a);
}

/* --- checking --------------------------------------------------------------- */

static void refuse(fy_auth_result_t *res, int status, const char *code, const char *fmt, ...) FY_PRINTF(4, 5);

static void refuse(fy_auth_result_t *res, int status, const char *code, const char *fmt, ...)
{
    va_list ap;
    res->status = status;
    res->code = code;
    va_start(ap, fmt);
    vsnprintf(res->msg, sizeof(res->msg), fmt, ap);
    va_end(ap);
    res->holder[0] = '\0';
}

static bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

static bool revoked(const fy_auth_t *a, uint64_t jti)
{
    size_t lo = 0, hi = a->nrevoked;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (a->revoked[mid] == jti)
            return true;
        if (a->revoked[mid] < jti)
            lo = mid + 1;
        else
            hi = mid;
    }
    return false;
}

static bool covers(const char *pattern, const char *id)
{
    return fy_token_pattern_match(pattern, strlen(pattern), id, strlen(id));
}

static void forbid(fy_auth_result_t *res, const char *pattern, const char *id)
{
    size_t pl = strlen(pattern);
    refuse(res, 403, "tunnel_forbidden", "token does not cover tunnel \"%s\": it covers \"%.*s%s\"", id,
           (int)FY_MIN(pl, 80), pattern, pl > 80 ? "..." : "");
}

void fy_auth_check_at(const fy_auth_t *a, const char *authz, size_t authz_len, const char *id, uint64_t now,
                      fy_auth_result_t *res)
{
    const char *tok, *why;
    size_t tl, i = 0;
    fy_token_t t;

    memset(res, 0, sizeof(*res));
    if (a == NULL)
        return;
    while (authz != NULL && i < authz_len && is_ows(authz[i]))
        i++;
    while (authz != NULL && authz_len > i && is_ows(authz[authz_len - 1]))
        authz_len--;
    if (authz == NULL || i == authz_len) {
        refuse(res, 401, "token_missing", "missing token: this relay requires an agent token "
               "(ferry --authtoken TOKEN, or FERRY_AUTHTOKEN)");
        return;
    }
    if (authz_len - i < 7 || !fy_ieq(authz + i, 6, "bearer") || !is_ows(authz[i + 6])) {
        refuse(res, 401, "token_malformed", "malformed token: the Authorization header is not \"Bearer TOKEN\"");
        return;
    }
    for (i += 6; i < authz_len && is_ows(authz[i]); i++)
        ;
    tok = authz + i;
    tl = authz_len - i;
    if (tl > FY_TOKEN_MAX) {
        refuse(res, 401, "token_malformed", "malformed token: longer than %d characters", FY_TOKEN_MAX);
        return;
    }

    if (a->ntokens > 0) {
        uint8_t h[FY_TOKEN_HASH];
        const fy_conf_token_t *hit;

        fy_token_static_hash(tok, tl, h);
        if ((hit = find_static(a, h)) != NULL) {
            if (!covers(hit->tunnels, id)) {
                forbid(res, hit->tunnels, id);
                return;
            }
            memcpy(res->holder, "static:", 7);
            sodium_bin2hex(res->holder + 7, sizeof(res->holder) - 7, h, 8);
            return;
        }
        if (!a->has_key || (tl >= 4 && memcmp(tok, FY_TOKEN_STATIC_PREFIX, 4) == 0)) {
            refuse(res, 401, "token_unknown", "unknown token: it matches no auth.tokens entry of this relay");
            return;
        }
    }

    if (fy_token_decode(tok, tl, &t, &why) != FY_OK) {
        refuse(res, 401, "token_malformed", "malformed token: %s", why);
        return;
    }
    if (fy_token_verify(&t, a->pk) != FY_OK) {
        refuse(res, 401, "token_bad_signature", "bad signature: the token was not signed by this relay's key");
        return;
    }
    if (revoked(a, t.jti)) {
        refuse(res, 401, "token_revoked", "revoked token: its id %s is listed in auth.revoked", t.jti_hex);
        return;
    }
    if (t.exp <= now) {
        struct tm tm;
        char when[32];
        time_t e = (time_t)t.exp;
        if (gmtime_r(&e, &tm) == NULL || strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
            snprintf(when, sizeof(when), "%llu", (unsigned long long)t.exp);
        refuse(res, 401, "token_expired", "expired token: it expired at %s; ask for a new one (ferryd token)", when);
        return;
    }
    if (!covers(t.pattern, id)) {
        forbid(res, t.pattern, id);
        return;
    }
    memcpy(res->holder, t.jti_hex, sizeof(t.jti_hex));
}

void fy_auth_check(const fy_auth_t *a, const char *authz, size_t authz_len, const char *id, fy_auth_result_t *res)
{
    fy_auth_check_at(a, authz, authz_len, id, (uint64_t)time(NULL), res);
}
