/*
 * token.c: agent tokens, sans I/O (see token.h for the format). The payload
 * reader is a bounded cursor over the decoded bytes (s2n's stuffer habit):
 * it never reads past n, never allocates, and recognises only the four
 * members of version 1.
 */
#include "crypto/token.h"

#include <stdio.h>
#include <string.h>

#include <sodium.h>

#define B64_VARIANT sodium_base64_VARIANT_URLSAFE_NO_PADDING

_Static_assert(FY_TOKEN_SIG == crypto_sign_BYTES, "signature size");
_Static_assert(FY_TOKEN_PK == crypto_sign_PUBLICKEYBYTES, "public key size");
_Static_assert(FY_TOKEN_SK == crypto_sign_SECRETKEYBYTES, "secret key size");
_Static_assert(FY_TOKEN_SEED == crypto_sign_SEEDBYTES, "seed size");
_Static_assert(FY_TOKEN_RAW_MAX * 4 / 3 >= FY_TOKEN_MAX, "raw buffer holds a whole token");
_Static_assert(sizeof(FY_TOKEN_STATIC_KEY) - 1 >= crypto_generichash_KEYBYTES_MIN
               && sizeof(FY_TOKEN_STATIC_KEY) - 1 <= crypto_generichash_KEYBYTES_MAX, "BLAKE2b key size");

/* The longest payload the encoder writes; the decoder allows what fits. */
#define PAYLOAD_MAX (FY_TOKEN_RAW_MAX - FY_TOKEN_SIG)

static bool b64url_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

static bool hex_char(uint8_t c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

static bool pattern_char(uint8_t c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '*';
}

static bool key_char(uint8_t c)
{
    return c >= 'a' && c <= 'z';
}

bool fy_token_pattern_valid(const char *p, size_t n)
{
    size_t i;
    if (n == 0 || n > FY_TOKEN_PATTERN_MAX)
        return false;
    for (i = 0; i < n; i++)
        if (!pattern_char((uint8_t)p[i]))
            return false;
    return true;
}

bool fy_token_pattern_match(const char *p, size_t pn, const char *s, size_t sn)
{
    size_t pi = 0, si = 0, star = SIZE_MAX, mark = 0;

    while (si < sn) {
        if (pi < pn && p[pi] == '*') {
            star = pi++;
            mark = si;
        } else if (pi < pn && p[pi] == s[si]) {
            pi++;
            si++;
        } else if (star != SIZE_MAX) {
            /* Let the last star swallow one more character and retry. */
            pi = star + 1;
            si = ++mark;
        } else {
            return false;
        }
    }
    while (pi < pn && p[pi] == '*')
        pi++;
    return pi == pn;
}

/* --- the payload reader --------------------------------------------------- */

typedef struct {
    const uint8_t *p;
    size_t         n, i;
} rd_t;

static void skip_ws(rd_t *r)
{
    while (r->i < r->n && (r->p[r->i] == ' ' || r->p[r->i] == '\t' || r->p[r->i] == '\n' || r->p[r->i] == '\r'))
        r->i++;
}

static bool take(rd_t *r, uint8_t c)
{
    skip_ws(r);
    if (r->i < r->n && r->p[r->i] == c) {
        r->i++;
        return true;
    }
    return false;
}

/* A JSON string whose characters all satisfy ok (which never admits '"'
 * or '\\', so no escapes), at most cap - 1 of them, into out (NUL-ended). */
static bool read_str(rd_t *r, bool (*ok)(uint8_t), char *out, size_t cap, size_t *len)
{
    size_t k = 0;
    if (!take(r, '"'))
        return false;
    while (r->i < r->n && r->p[r->i] != '"') {
        if (!ok(r->p[r->i]) || k + 1 >= cap)
            return false;
        out[k++] = (char)r->p[r->i++];
    }
    if (r->i == r->n)
        return false;
    r->i++;
    out[k] = '\0';
    *len = k;
    return true;
}

/* A JSON non-negative integer without leading zeros, at most max. */
static bool read_uint(rd_t *r, uint64_t max, uint64_t *v)
{
    uint64_t x = 0;
    size_t start;
    skip_ws(r);
    start = r->i;
    while (r->i < r->n && r->p[r->i] >= '0' && r->p[r->i] <= '9') {
        if (x > (max - (uint64_t)(r->p[r->i] - '0')) / 10)
            return false;
        x = x * 10 + (uint64_t)(r->p[r->i] - '0');
        r->i++;
    }
    if (r->i == start || (r->p[start] == '0' && r->i - start > 1))
        return false;
    *v = x;
    return true;
}

enum { M_V = 1, M_JTI = 2, M_PATTERN = 4, M_EXP = 8, M_ALL = 15 };

static int parse_payload(const uint8_t *p, size_t n, fy_token_t *t, const char **why)
{
    rd_t r = {p, n, 0};
    unsigned seen = 0;
    char key[16];
    size_t kl, len, i;
    uint64_t v;

    if (!take(&r, '{')) {
        *why = "the payload is not a JSON object";
        return FY_ERR;
    }
    for (;;) {
        unsigned m;
        if (!read_str(&r, key_char, key, sizeof(key), &kl) || !take(&r, ':')) {
            *why = "the payload is not {v, jti, pattern, exp} JSON";
            return FY_ERR;
        }
        m = !strcmp(key, "v") ? M_V : !strcmp(key, "jti") ? M_JTI : !strcmp(key, "pattern") ? M_PATTERN
            : !strcmp(key, "exp") ? M_EXP : 0;
        if (m == 0) {
            *why = "the payload has an unknown member";
            return FY_ERR;
        }
        if (seen & m) {
            *why = "the payload repeats a member";
            return FY_ERR;
        }
        seen |= m;
        switch (m) {
        case M_V:
            if (!read_uint(&r, UINT32_MAX, &v)) {
                *why = "v is not a number";
                return FY_ERR;
            }
            if (v != FY_TOKEN_VERSION) {
                *why = "unknown token version (this relay reads v 1)";
                return FY_ERR;
            }
            t->version = (uint32_t)v;
            break;
        case M_JTI:
            if (!read_str(&r, hex_char, t->jti_hex, sizeof(t->jti_hex), &len) || len != FY_TOKEN_JTI_HEX) {
                *why = "jti is not 16 hex digits";
                return FY_ERR;
            }
            t->jti = 0;
            for (i = 0; i < len; i++) {
                uint8_t c = (uint8_t)t->jti_hex[i];
                t->jti = t->jti << 4 | (uint64_t)(c <= '9' ? c - '0' : c - 'a' + 10);
            }
            break;
        case M_PATTERN:
            if (!read_str(&r, pattern_char, t->pattern, sizeof(t->pattern), &len) || len == 0) {
                *why = "pattern is not an id or a glob of a-z 0-9 - *";
                return FY_ERR;
            }
            break;
        case M_EXP:
            if (!read_uint(&r, FY_TOKEN_EXP_MAX, &t->exp) || t->exp == 0) {
                *why = "exp is not a time in Unix seconds";
                return FY_ERR;
            }
            break;
        default:
            *why = "internal error";
            return FY_ERR;
        }
        if (take(&r, '}'))
            break;
        if (!take(&r, ',')) {
            *why = "the payload is not {v, jti, pattern, exp} JSON";
            return FY_ERR;
        }
    }
    if (seen != M_ALL) {
        *why = "the payload lacks one of v, jti, pattern, exp";
        return FY_ERR;
    }
    skip_ws(&r);
    if (r.i != r.n) {
        *why = "bytes after the payload";
        return FY_ERR;
    }
    return FY_OK;
}

int fy_token_decode(const char *s, size_t n, fy_token_t *t, const char **why)
{
    size_t bin_len = 0, i;
    const char *end = NULL;

    memset(t, 0, sizeof(*t));
    *why = NULL;
    if (n == 0) {
        *why = "empty";
        return FY_ERR;
    }
    if (n > FY_TOKEN_MAX) {
        *why = "longer than 1024 characters";
        return FY_ERR;
    }
    for (i = 0; i < n; i++) {
        if (!b64url_char(s[i])) {
            *why = "not base64url";
            return FY_ERR;
        }
    }
    /* libsodium also refuses a length of 4k+1 and non-zero padding bits,
     * so each token has exactly one spelling. */
    if (sodium_base642bin(t->raw, sizeof(t->raw), s, n, NULL, &bin_len, &end, B64_VARIANT) != 0
        || end != s + n) {
        *why = "not base64url";
        return FY_ERR;
    }
    if (bin_len < FY_TOKEN_SIG + 2) {
        *why = "too short";
        return FY_ERR;
    }
    t->payload_len = bin_len - FY_TOKEN_SIG;
    return parse_payload(t->raw, t->payload_len, t, why);
}

int fy_token_verify(const fy_token_t *t, const uint8_t pk[FY_TOKEN_PK])
{
    if (t->payload_len == 0 || t->payload_len > PAYLOAD_MAX)
        return FY_ERR;
    return crypto_sign_verify_detached(t->raw + t->payload_len, t->raw, t->payload_len, pk) == 0 ? FY_OK : FY_ERR;
}

ssize_t fy_token_encode(const fy_token_t *t, const uint8_t sk[FY_TOKEN_SK], char *out, size_t cap)
{
    uint8_t raw[FY_TOKEN_RAW_MAX];
    size_t plen, need;
    int n;

    if (!fy_token_pattern_valid(t->pattern, strnlen(t->pattern, sizeof(t->pattern)))
        || t->exp == 0 || t->exp > FY_TOKEN_EXP_MAX)
        return FY_ERR;
    n = snprintf((char *)raw, PAYLOAD_MAX, "{\"v\":%u,\"jti\":\"%016llx\",\"pattern\":\"%s\",\"exp\":%llu}",
                 FY_TOKEN_VERSION, (unsigned long long)t->jti, t->pattern, (unsigned long long)t->exp);
    if (n < 0 || (size_t)n >= PAYLOAD_MAX)
        return FY_ERR;
    plen = (size_t)n;
    need = sodium_base64_ENCODED_LEN(plen + FY_TOKEN_SIG, B64_VARIANT);
    if (need > cap || need - 1 > FY_TOKEN_MAX)
        return FY_ERR;
    crypto_sign_detached(raw + plen, NULL, raw, plen, sk);
    sodium_bin2base64(out, cap, raw, plen + FY_TOKEN_SIG, B64_VARIANT);
    return (ssize_t)(need - 1);
}

void fy_token_static_hash(const char *tok, size_t n, uint8_t out[FY_TOKEN_HASH])
{
    crypto_generichash(out, FY_TOKEN_HASH, (const uint8_t *)tok, n, (const uint8_t *)FY_TOKEN_STATIC_KEY,
                       sizeof(FY_TOKEN_STATIC_KEY) - 1);
}

ssize_t fy_token_static_new(char *out, size_t cap)
{
    uint8_t r[32];
    size_t pre = sizeof(FY_TOKEN_STATIC_PREFIX) - 1;

    if (cap < FY_TOKEN_STATIC_LEN + 1)
        return FY_ERR;
    randombytes_buf(r, sizeof(r));
    memcpy(out, FY_TOKEN_STATIC_PREFIX, pre);
    sodium_bin2base64(out + pre, cap - pre, r, sizeof(r), B64_VARIANT);
    sodium_memzero(r, sizeof(r));
    return FY_TOKEN_STATIC_LEN;
}

ssize_t fy_token_key_format(const uint8_t seed[FY_TOKEN_SEED], char *out, size_t cap)
{
    char b64[sodium_base64_ENCODED_LEN(FY_TOKEN_SEED, B64_VARIANT)];
    int n;

    sodium_bin2base64(b64, sizeof(b64), seed, FY_TOKEN_SEED, B64_VARIANT);
    n = snprintf(out, cap,
                 "# ferryd relay signing key (Ed25519 seed), written by `ferryd keygen`.\n"
                 "# Keep it secret (mode 0600): whoever reads it can mint agent tokens.\n"
                 "ed25519:%s\n", b64);
    sodium_memzero(b64, sizeof(b64));
    if (n < 0 || (size_t)n >= cap)
        return FY_ERR;
    return n;
}

int fy_token_key_parse(const char *buf, size_t n, uint8_t seed[FY_TOKEN_SEED], const char **why)
{
    static const char tag[] = "ed25519:";
    size_t i = 0, found = 0, bin_len;
    const char *end;

    *why = NULL;
    if (n > FY_TOKEN_KEY_FILE_MAX) {
        *why = "larger than a key file";
        return FY_ERR;
    }
    while (i < n) {
        size_t a = i, b;
        const char *nl = memchr(buf + i, '\n', n - i);
        b = nl ? (size_t)(nl - buf) : n;
        i = nl ? b + 1 : n;
        while (a < b && (buf[a] == ' ' || buf[a] == '\t'))
            a++;
        while (b > a && (buf[b - 1] == ' ' || buf[b - 1] == '\t' || buf[b - 1] == '\r'))
            b--;
        if (a == b || buf[a] == '#')
            continue;
        if (b - a < sizeof(tag) - 1 || memcmp(buf + a, tag, sizeof(tag) - 1) != 0) {
            *why = "a line is neither a comment nor \"ed25519:KEY\"";
            return FY_ERR;
        }
        if (found++) {
            *why = "more than one key";
            return FY_ERR;
        }
        a += sizeof(tag) - 1;
        if (sodium_base642bin(seed, FY_TOKEN_SEED, buf + a, b - a, NULL, &bin_len, &end, B64_VARIANT) != 0
            || end != buf + b || bin_len != FY_TOKEN_SEED) {
            sodium_memzero(seed, FY_TOKEN_SEED);
            *why = "the key is not 32 bytes of base64url";
            return FY_ERR;
        }
    }
    if (!found) {
        *why = "no \"ed25519:\" line";
        return FY_ERR;
    }
    return FY_OK;
}

void fy_token_keypair(const uint8_t seed[FY_TOKEN_SEED], uint8_t pk[FY_TOKEN_PK], uint8_t *sk)
{
    uint8_t tmp[FY_TOKEN_SK];
    crypto_sign_seed_keypair(pk, sk ? sk : tmp, seed);
    sodium_memzero(tmp, sizeof(tmp));
}
