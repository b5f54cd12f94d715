/*
 * token.h: agent tokens, sans I/O (SPEC.md "Agents connecting"; libsodium).
 *
 * A signed token is base64url without padding (RFC 4648 §5) of
 *
 *     payload || Ed25519 signature of payload (64 bytes)
 *
 * where payload is compact JSON with exactly four members:
 *
 *     {"v":1,"jti":"<16 lowercase hex>","pattern":"team-*","exp":1767225600}
 *
 * v is the format version (1), jti the token id `auth.revoked` lists (8
 * random bytes), pattern the tunnel ids it covers (an id, or a glob where
 * `*` matches any run of id characters, the empty one included), exp the
 * expiry in Unix seconds. The encoder writes that exact form; the decoder
 * accepts JSON whitespace and any member order but nothing else: no
 * escapes, no unknown or repeated members, no leading zeros, no bytes after
 * the object, at most FY_TOKEN_MAX characters. It parses before the
 * signature is checked (so a fuzzer reaches it), and is bounded and
 * allocation-free, so untrusted bytes cost at most one pass.
 *
 * Static tokens (`auth.tokens`) are random strings the relay keeps only as
 * keyed BLAKE2b-256 hashes (fy_token_static_hash): they carry 256 bits of
 * entropy, so a fast hash is right (no password hash on the connect path);
 * the key is the fixed context string FY_TOKEN_STATIC_KEY, which separates
 * these hashes from any other use of BLAKE2b.
 *
 * The relay key file holds the 32-byte Ed25519 seed:
 *
 *     # ferryd relay signing key (Ed25519) ...     (comment lines, optional)
 *     ed25519:<43 base64url characters>
 *
 * Nothing here logs, allocates or reads files; callers wipe the secret
 * buffers they pass in (sodium_memzero).
 */
#ifndef FY_TOKEN_H
#define FY_TOKEN_H

#include "fy.h"

#define FY_TOKEN_MAX          1024  /* characters of an encoded token */
#define FY_TOKEN_RAW_MAX      768   /* its bytes: FY_TOKEN_MAX * 3 / 4 */
#define FY_TOKEN_SIG          64    /* crypto_sign_BYTES */
#define FY_TOKEN_PK           32    /* crypto_sign_PUBLICKEYBYTES */
#define FY_TOKEN_SK           64    /* crypto_sign_SECRETKEYBYTES */
#define FY_TOKEN_SEED         32    /* crypto_sign_SEEDBYTES */
#define FY_TOKEN_PATTERN_MAX  128
#define FY_TOKEN_JTI_HEX      16
#define FY_TOKEN_VERSION      1
#define FY_TOKEN_EXP_MAX      253402300799ull   /* 9999-12-31T23:59:59Z */
#define FY_TOKEN_HASH         32    /* BLAKE2b-256 of a static token */
#define FY_TOKEN_STATIC_KEY   "ferry.auth.tokens.blake2b.v1"
#define FY_TOKEN_STATIC_PREFIX "fys_"
#define FY_TOKEN_STATIC_LEN   47    /* "fys_" + base64url of 32 random bytes */
#define FY_TOKEN_KEY_FILE_MAX 4096

typedef struct fy_token_s {
    uint32_t version;                              /* FY_TOKEN_VERSION */
    uint64_t jti;
    char     jti_hex[FY_TOKEN_JTI_HEX + 1];        /* the same, as 16 lowercase hex */
    char     pattern[FY_TOKEN_PATTERN_MAX + 1];
    uint64_t exp;                                  /* Unix seconds */
    /* Filled by fy_token_decode, read by fy_token_verify. */
    uint8_t  raw[FY_TOKEN_RAW_MAX];                /* payload || signature */
    size_t   payload_len;
} fy_token_t;

/*
 * Encode and sign: t's jti, pattern and exp (version is always
 * FY_TOKEN_VERSION) with the 64-byte libsodium secret key sk (borrowed).
 * Writes a NUL-terminated token into out[cap]. Returns its length, or
 * FY_ERR (invalid pattern, exp 0 or beyond FY_TOKEN_EXP_MAX, cap too small).
 */
ssize_t fy_token_encode(const fy_token_t *t, const uint8_t sk[FY_TOKEN_SK], char *out, size_t cap) FY_MUST_USE;

/*
 * Decode s[n] (untrusted, not NUL-terminated) into t without checking the
 * signature. FY_OK, or FY_ERR with *why set to a static phrase ("not
 * base64url", "unknown version 2", ...) fit to follow "malformed token: ".
 * Never FY_AGAIN.
 */
int fy_token_decode(const char *s, size_t n, fy_token_t *t, const char **why) FY_MUST_USE;

/* FY_OK when t (from fy_token_decode) carries pk's signature, else FY_ERR. */
int fy_token_verify(const fy_token_t *t, const uint8_t pk[FY_TOKEN_PK]) FY_MUST_USE;

/* A pattern is 1..FY_TOKEN_PATTERN_MAX of [a-z0-9-*]. */
bool fy_token_pattern_valid(const char *p, size_t n);

/*
 * Does pattern p[pn] cover id[idn]? `*` matches any run (empty included);
 * every other character matches itself. Two-pointer glob that backtracks
 * only to the last star: at most pn * idn steps (128 * 63), never
 * exponential, so untrusted patterns are safe.
 */
bool fy_token_pattern_match(const char *p, size_t pn, const char *id, size_t idn);

/* out = keyed BLAKE2b-256 of a static token (key FY_TOKEN_STATIC_KEY). */
void fy_token_static_hash(const char *tok, size_t n, uint8_t out[FY_TOKEN_HASH]);

/*
 * A new random static token, "fys_" + base64url of 32 random bytes,
 * NUL-terminated in out[cap]. Returns its length or FY_ERR (cap too small).
 */
ssize_t fy_token_static_new(char *out, size_t cap) FY_MUST_USE;

/* Key file text for seed into out[cap] (NUL-terminated). Length or FY_ERR. */
ssize_t fy_token_key_format(const uint8_t seed[FY_TOKEN_SEED], char *out, size_t cap) FY_MUST_USE;

/*
 * Parse key file text buf[n] (untrusted, bounded by FY_TOKEN_KEY_FILE_MAX):
 * comment and blank lines, then exactly one "ed25519:" line. FY_OK with
 * seed filled, or FY_ERR with *why set.
 */
int fy_token_key_parse(const char *buf, size_t n, uint8_t seed[FY_TOKEN_SEED], const char **why) FY_MUST_USE;

/* The public half of a seed (crypto_sign_seed_keypair), sk optional. */
void fy_token_keypair(const uint8_t seed[FY_TOKEN_SEED], uint8_t pk[FY_TOKEN_PK], uint8_t *sk);

#endif
