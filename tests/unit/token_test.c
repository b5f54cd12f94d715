/*
 * token_test.c: agent tokens (common/crypto/token.c) and the relay's check
 * (worker/auth.c, included here to reach its statics): round trips,
 * truncated, oversized, re-signed and bit-flipped tokens, the payload's
 * strict shape, expiry, patterns, revocation, static tokens, key files;
 * and a small benchmark of the connect-path cost (printed, not asserted).
 */
#include "tests/unit/unit.h"

#include "worker/auth.c"

#include <sodium.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static uint8_t pk1[FY_TOKEN_PK], sk1[FY_TOKEN_SK], pk2[FY_TOKEN_PK], sk2[FY_TOKEN_SK];

static void setup(void)
{
    cr_assert_geq(sodium_init(), 0);
    crypto_sign_keypair(pk1, sk1);
    crypto_sign_keypair(pk2, sk2);
}

TestSuite(token, .init = setup);
TestSuite(auth, .init = setup);

#define NOW 1767225600ull   /* 2026-01-01T00:00:00Z */

static fy_token_t claims(uint64_t jti, const char *pattern, uint64_t exp)
{
    fy_token_t t;
    memset(&t, 0, sizeof(t));
    t.jti = jti;
    snprintf(t.pattern, sizeof(t.pattern), "%s", pattern);
    t.exp = exp;
    return t;
}

static size_t mint(char *out, size_t cap, const uint8_t *sk, uint64_t jti, const char *pattern, uint64_t exp)
{
    fy_token_t t = claims(jti, pattern, exp);
    ssize_t n = fy_token_encode(&t, sk, out, cap);
    cr_assert_gt(n, 0);
    cr_assert_eq(strlen(out), (size_t)n);
    return (size_t)n;
}

/* Sign an arbitrary payload and encode it as a token. */
static size_t mint_raw(char *out, size_t cap, const uint8_t *sk, const char *payload)
{
    uint8_t raw[2048];
    size_t pl = strlen(payload);
    cr_assert_lt(pl + 64, sizeof(raw));
    memcpy(raw, payload, pl);
    crypto_sign_detached(raw + pl, NULL, raw, pl, sk);
    cr_assert_geq(cap, sodium_base64_ENCODED_LEN(pl + 64, sodium_base64_VARIANT_URLSAFE_NO_PADDING));
    sodium_bin2base64(out, cap, raw, pl + 64, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    return strlen(out);
}

static const char *decode_why(const char *s, size_t n)
{
    fy_token_t t;
    const char *why = NULL;
    if (fy_token_decode(s, n, &t, &why) == FY_OK)
        return NULL;
    cr_assert_not_null(why);
    return why;
}

/* --- format ------------------------------------------------------------------ */

Test(token, round_trip_and_canonical_payload)
{
    char tok[FY_TOKEN_MAX + 1];
    uint8_t raw[FY_TOKEN_RAW_MAX];
    size_t n = mint(tok, sizeof(tok), sk1, 0x0123456789abcdefull, "team-*", NOW), rl;
    fy_token_t t;
    const char *why;

    cr_assert_eq(strspn(tok, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"), n, "%s", tok);
    cr_assert_eq(fy_token_decode(tok, n, &t, &why), FY_OK, "%s", why);
    cr_assert_eq(t.version, 1);
    cr_assert_eq(t.jti, 0x0123456789abcdefull);
    cr_assert_str_eq(t.jti_hex, "0123456789abcdef");
    cr_assert_str_eq(t.pattern, "team-*");
    cr_assert_eq(t.exp, NOW);
    cr_assert_eq(fy_token_verify(&t, pk1), FY_OK);
    cr_assert_eq(fy_token_verify(&t, pk2), FY_ERR);

    cr_assert_eq(sodium_base642bin(raw, sizeof(raw), tok, n, NULL, &rl, NULL,
                                   sodium_base64_VARIANT_URLSAFE_NO_PADDING), 0);
    const char *want = "{\"v\":1,\"jti\":\"0123456789abcdef\",\"pattern\":\"team-*\",\"exp\":1767225600}";
    cr_assert_eq(rl, strlen(want) + 64);
    cr_assert(memcmp(raw, want, strlen(want)) == 0);
}

Test(token, encode_refuses_bad_claims)
{
    char tok[FY_TOKEN_MAX + 1];
    fy_token_t t = claims(1, "Team", NOW);
    cr_assert_eq(fy_token_encode(&t, sk1, tok, sizeof(tok)), FY_ERR);
    t = claims(1, "", NOW);
    cr_assert_eq(fy_token_encode(&t, sk1, tok, sizeof(tok)), FY_ERR);
    t = claims(1, "a", 0);
    cr_assert_eq(fy_token_encode(&t, sk1, tok, sizeof(tok)), FY_ERR);
    t = claims(1, "a", FY_TOKEN_EXP_MAX + 1);
    cr_assert_eq(fy_token_encode(&t, sk1, tok, sizeof(tok)), FY_ERR);
    t = claims(1, "a", NOW);
    cr_assert_eq(fy_token_encode(&t, sk1, tok, 20), FY_ERR);   /* no room */
    /* The longest pattern still fits the length limit. */
    memset(t.pattern, 'a', FY_TOKEN_PATTERN_MAX);
    t.pattern[FY_TOKEN_PATTERN_MAX] = '\0';
    t.exp = FY_TOKEN_EXP_MAX;
    cr_assert_gt(fy_token_encode(&t, sk1, tok, sizeof(tok)), 0);
    cr_assert_null(decode_why(tok, strlen(tok)));
}

Test(token, truncated)
{
    char tok[FY_TOKEN_MAX + 1];
    size_t n = mint(tok, sizeof(tok), sk1, 42, "app", NOW), k;
    for (k = 0; k < n; k++) {
        fy_token_t t;
        const char *why;
        /* Every prefix fails to decode, or decodes (a payload cut inside
         * the signature) but never verifies. */
        if (fy_token_decode(tok, k, &t, &why) == FY_OK)
            cr_assert_eq(fy_token_verify(&t, pk1), FY_ERR, "prefix %zu verified", k);
    }
    cr_assert_str_eq(decode_why(tok, 0), "empty");
    cr_assert_str_eq(decode_why(tok, 12), "too short");
}

Test(token, oversized)
{
    char big[FY_TOKEN_MAX + 2];
    memset(big, 'A', sizeof(big));
    cr_assert_str_eq(decode_why(big, FY_TOKEN_MAX + 1), "longer than 1024 characters");
    /* 1024 characters are read, and refused for their content. */
    cr_assert_str_eq(decode_why(big, FY_TOKEN_MAX), "the payload is not a JSON object");

    /* A signed payload too long for the limit. */
    char payload[1200], tok[2000];
    snprintf(payload, sizeof(payload), "{\"v\":1,\"jti\":\"0000000000000001\",\"pattern\":\"a\",\"exp\":%llu%*s}",
             NOW, 900, "");
    size_t n = mint_raw(tok, sizeof(tok), sk1, payload);
    cr_assert_gt(n, FY_TOKEN_MAX);
    cr_assert_str_eq(decode_why(tok, n), "longer than 1024 characters");
}

Test(token, not_base64url)
{
    char tok[FY_TOKEN_MAX + 1];
    size_t n = mint(tok, sizeof(tok), sk1, 42, "app", NOW);
    static const char bad[] = {'+', '/', '=', '.', ' ', '\0', '\n', (char)0xc3};
    for (size_t i = 0; i < sizeof(bad); i++) {
        char copy[FY_TOKEN_MAX + 1];
        memcpy(copy, tok, n);
        copy[n / 2] = bad[i];
        cr_assert_str_eq(decode_why(copy, n), "not base64url");
    }
    /* Padding is not part of the format. */
    char padded[FY_TOKEN_MAX + 4];
    memcpy(padded, tok, n);
    memcpy(padded + n, "==", 2);
    cr_assert_not_null(decode_why(padded, n + 2));
    /* A length of 4k+1 has no meaning in base64. */
    cr_assert_not_null(decode_why("AAAAA", 5));
}

Test(token, non_canonical_base64_tail_is_refused)
{
    char tok[FY_TOKEN_MAX + 1];
    size_t n = mint(tok, sizeof(tok), sk1, 42, "app", NOW);
    /* 134 payload+signature bytes: the last character carries 2 unused
     * bits; setting them spells the same bytes differently. */
    if (n % 4 != 0) {
        fy_token_t t;
        const char *why;
        const char *alpha = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        int v = (int)(strchr(alpha, tok[n - 1]) - alpha);
        tok[n - 1] = alpha[v | 1];
        if (alpha[v | 1] != alpha[v])
            cr_assert_eq(fy_token_decode(tok, n, &t, &why), FY_ERR);
    }
}

Test(token, re_signed_with_another_key)
{
    char tok[FY_TOKEN_MAX + 1];
    size_t n = mint(tok, sizeof(tok), sk2, 42, "app", NOW);
    fy_token_t t;
    const char *why;
    cr_assert_eq(fy_token_decode(tok, n, &t, &why), FY_OK);
    cr_assert_eq(fy_token_verify(&t, pk1), FY_ERR);
    cr_assert_eq(fy_token_verify(&t, pk2), FY_OK);
}

Test(token, every_flipped_bit_fails)
{
    char tok[FY_TOKEN_MAX + 1], flipped[FY_TOKEN_MAX + 1];
    uint8_t raw[FY_TOKEN_RAW_MAX];
    size_t n = mint(tok, sizeof(tok), sk1, 42, "team-*", NOW), rl, i;
    int bit;

    cr_assert_eq(sodium_base642bin(raw, sizeof(raw), tok, n, NULL, &rl, NULL,
                                   sodium_base64_VARIANT_URLSAFE_NO_PADDING), 0);
    for (i = 0; i < rl; i++) {
        for (bit = 0; bit < 8; bit++) {
            fy_token_t t;
            const char *why;
            raw[i] ^= (uint8_t)(1u << bit);
            sodium_bin2base64(flipped, sizeof(flipped), raw, rl, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
            if (fy_token_decode(flipped, strlen(flipped), &t, &why) == FY_OK)
                cr_assert_eq(fy_token_verify(&t, pk1), FY_ERR, "byte %zu bit %d", i, bit);
            raw[i] ^= (uint8_t)(1u << bit);
        }
    }
}

Test(token, payload_shape)
{
    static const struct { const char *payload, *why; } cases[] = {
        {"{\"v\":2,\"jti\":\"0000000000000001\",\"pattern\":\"a\",\"exp\":1}", "unknown token version (this relay reads v 1)"},
        {"{\"v\":0,\"jti\":\"0000000000000001\",\"pattern\":\"a\",\"exp\":1}", "unknown token version (this relay reads v 1)"},
        {"{\"v\":01,\"jti\":\"0000000000000001\",\"pattern\":\"a\",\"exp\":1}", "v is not a number"},
        {"{\"v\":\"1\",\"jti\":\"0000000000000001\",\"pattern\":\"a\",\"exp\":1}", "v is not a number"},
        {"{\"v\":1,\"jti\":\"000000000000001\",\"pattern\":\"a\",\"exp\":1}", "jti is not 16 hex digits"},
        {"{\"v\":1,\"jti\":\"00000000000000001\",\"pattern\":\"a\",\"exp\":1}", "jti is not 16 hex digits"},
        {"{\"v\":1,\"jti\":\"000000000000000A\",\"pattern\":\"a\",\"exp\":1}", "jti is not 16 hex digits"},
        {"{\"v\":1,\"jti\":\"0000000000000001\",\"pattern\":\"\",\"exp\":1}", "pattern is not an id or a glob of a-z 0-9 - *"},
        {"{\"v\":1,\"jti\":\"0000000000000001\",\"pattern\":\"A\",\"exp\":1}", "pattern is not an id or a glob of a-z 0-9 - *"},
        {"{\"v\":1,\"jti\":\"0000000000000001\",\"pattern\":\"a\\u002a\",\"exp\":1}", "pattern is not an id or a glob of a-z 0-9 - *"},
        {"{\"v\":1,\"jti\":\"0000000000000001\",\"pattern\":\"a\",\"exp\":0}", "exp is not a time in Unix seconds"},
        {"{\"v\":1,\"jti\":\"0000000000000001\",\"pattern\":\"a\",\"exp\":-1}", "exp is not a time in Unix seconds"},
        {"{\"v\":1,\"jti\":\"0000000000000001\",\"pattern\":\"a\",\"exp\":1.5}", "the payload is not {v, jti, pattern, exp} JSON"},
        {"{\"v\":1,\"jti\":\"0000000000000001\",\"pattern\":\"a\",\"exp\":253402300800}", "exp is not a time in Unix seconds"},
        {"{\"v\":1,\"jti\":\"0000000000000001\",\"pattern\":\"a\",\"exp\":99999999999999999999999}", "exp is not a time in Unix seconds"},
        {"{\"v\":1,\"jti\":\"0000000000000001\",\"pattern\":\"a\"}", "the payload lacks one of v, jti, pattern, exp"},
        {"{\"v\":1,\"v\":1,\"jti\":\"0000000000000001\",\"pattern\":\"a\",\"exp\":1}", "the payload repeats a member"},
        {"{\"v\":1,\"jti\":\"0000000000000001\",\"pattern\":\"a\",\"exp\":1,\"sub\":\"x\"}", "the payload has an unknown member"},
        {"{\"v\":1,\"jti\":\"0000000000000001\",\"pattern\":\"a\",\"exp\":1}x", "bytes after the payload"},
        {"{\"v\":1,\"jti\":\"0000000000000001\",\"pattern\":\"a\",\"exp\":1}{}", "bytes after the payload"},
        {"{\"v\":1,\"jti\":\"0000000000000001\",\"pattern\":\"a\",\"exp\":1,}", "the payload is not {v, jti, pattern, exp} JSON"},
        {"[1]", "the payload is not a JSON object"},
        {"{}", "the payload is not {v, jti, pattern, exp} JSON"},
        {"{\"V\":1}", "the payload is not {v, jti, pattern, exp} JSON"},
        {"{\"v\":1", "the payload is not {v, jti, pattern, exp} JSON"},
        {"{\"v\":1,\"jti\":\"0000000000000001", "jti is not 16 hex digits"},
    };
    char tok[4096];
    for (size_t i = 0; i < FY_NELEM(cases); i++) {
        size_t n = mint_raw(tok, sizeof(tok), sk1, cases[i].payload);
        const char *why = decode_why(tok, n);
        cr_assert_not_null(why, "accepted %s", cases[i].payload);
        cr_assert_str_eq(why, cases[i].why, "%s", cases[i].payload);
    }
}

Test(token, payload_whitespace_and_order_are_accepted)
{
    char tok[4096];
    fy_token_t t;
    const char *why;
    size_t n = mint_raw(tok, sizeof(tok), sk1,
                        " {\n \"exp\" : 1767225600 , \"pattern\":\"x-*\",\t\"jti\": \"00000000000000ff\", \"v\": 1 }\r\n");
    cr_assert_eq(fy_token_decode(tok, n, &t, &why), FY_OK, "%s", why);
    cr_assert_eq(t.jti, 255);
    cr_assert_str_eq(t.pattern, "x-*");
    cr_assert_eq(t.exp, NOW);
    cr_assert_eq(fy_token_verify(&t, pk1), FY_OK);
}

/* --- patterns ------------------------------------------------------------------ */

static bool match(const char *p, const char *id)
{
    cr_assert(fy_token_pattern_valid(p, strlen(p)), "%s", p);
    return fy_token_pattern_match(p, strlen(p), id, strlen(id));
}

Test(token, pattern_matching)
{
    cr_assert(match("app", "app"));
    cr_assert(!match("app", "app2"));
    cr_assert(!match("app", "ap"));
    cr_assert(match("*", "anything-at-all"));
    cr_assert(match("team-*", "team-"));
    cr_assert(match("team-*", "team-web"));
    cr_assert(!match("team-*", "team"));
    cr_assert(!match("team-*", "xteam-web"));
    cr_assert(match("*-prod", "api-prod"));
    cr_assert(!match("*-prod", "api-prod2"));
    cr_assert(match("a*b*c", "abc"));
    cr_assert(match("a*b*c", "a-x-b-y-c"));
    cr_assert(!match("a*b*c", "a-x-b-y-cd"));
    cr_assert(match("a**", "a"));
    cr_assert(match("*a*a*a*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab"));
    cr_assert(!match("*a*a*a*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"));
    cr_assert(!fy_token_pattern_valid("", 0));
    cr_assert(!fy_token_pattern_valid("team_1", 6));
    cr_assert(!fy_token_pattern_valid("Team", 4));
    cr_assert(!fy_token_pattern_valid("a?", 2));
    char longp[FY_TOKEN_PATTERN_MAX + 1];
    memset(longp, 'a', sizeof(longp));
    cr_assert(fy_token_pattern_valid(longp, FY_TOKEN_PATTERN_MAX));
    cr_assert(!fy_token_pattern_valid(longp, FY_TOKEN_PATTERN_MAX + 1));
}

/* --- key files ------------------------------------------------------------------ */

Test(token, key_file_round_trip_and_errors)
{
    uint8_t seed[FY_TOKEN_SEED], back[FY_TOKEN_SEED], pk[FY_TOKEN_PK], sk[FY_TOKEN_SK];
    char text[512];
    const char *why;
    ssize_t n;

    randombytes_buf(seed, sizeof(seed));
    n = fy_token_key_format(seed, text, sizeof(text));
    cr_assert_gt(n, 0);
    cr_assert_eq(fy_token_key_parse(text, (size_t)n, back, &why), FY_OK, "%s", why);
    cr_assert(memcmp(seed, back, sizeof(seed)) == 0);
    fy_token_keypair(seed, pk, sk);
    uint8_t pk_again[FY_TOKEN_PK];
    fy_token_keypair(seed, pk_again, NULL);
    cr_assert(memcmp(pk, pk_again, sizeof(pk)) == 0);
    cr_assert(memcmp(sk + 32, pk, 32) == 0);

    cr_assert_eq(fy_token_key_format(seed, text, 40), FY_ERR);
    cr_assert_eq(fy_token_key_parse("", 0, back, &why), FY_ERR);
    cr_assert_str_eq(why, "no \"ed25519:\" line");
    cr_assert_eq(fy_token_key_parse("# only\n\n", 8, back, &why), FY_ERR);
    const char *two = "ed25519:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\ned25519:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n";
    cr_assert_eq(fy_token_key_parse(two, strlen(two), back, &why), FY_ERR);
    cr_assert_str_eq(why, "more than one key");
    const char *one = "  ed25519:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA \r\n";
    cr_assert_eq(fy_token_key_parse(one, strlen(one), back, &why), FY_OK, "%s", why);
    const char *shortk = "ed25519:AAAA\n";
    cr_assert_eq(fy_token_key_parse(shortk, strlen(shortk), back, &why), FY_ERR);
    const char *other = "ssh-ed25519 AAAA\n";
    cr_assert_eq(fy_token_key_parse(other, strlen(other), back, &why), FY_ERR);
    const char *pem = "-----BEGIN PRIVATE KEY-----\n";
    cr_assert_eq(fy_token_key_parse(pem, strlen(pem), back, &why), FY_ERR);
}

/* --- the relay's check (worker/auth.c) ----------------------------------------- */

typedef struct {
    char dir[64];
    char key[128];
    char revoked[128];
} files_t;

static void write_file(const char *path, const char *text, mode_t mode)
{
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f, "%s", path);
    cr_assert_eq(fputs(text, f) >= 0, true);
    cr_assert_eq(fclose(f), 0);
    cr_assert_eq(chmod(path, mode), 0);
}

/* A key file holding sk1's seed, in a fresh directory. */
static void make_files(files_t *f, const char *revoked_text)
{
    uint8_t seed[FY_TOKEN_SEED];
    char text[512];
    strcpy(f->dir, "/tmp/ferry-token-test-XXXXXX");
    cr_assert_not_null(mkdtemp(f->dir));
    snprintf(f->key, sizeof(f->key), "%s/relay.key", f->dir);
    snprintf(f->revoked, sizeof(f->revoked), "%s/revoked", f->dir);
    crypto_sign_ed25519_sk_to_seed(seed, sk1);
    cr_assert_gt(fy_token_key_format(seed, text, sizeof(text)), 0);
    write_file(f->key, text, 0600);
    if (revoked_text != NULL)
        write_file(f->revoked, revoked_text, 0644);
}

static void remove_files(files_t *f)
{
    unlink(f->key);
    unlink(f->revoked);
    rmdir(f->dir);
}

static fy_auth_t *load(files_t *f, bool with_revoked, fy_conf_token_t *tokens, int ntokens, char *err, size_t errlen)
{
    fy_conf_t c;
    memset(&c, 0, sizeof(c));
    c.auth_key = f ? f->key : NULL;
    c.auth_revoked = f && with_revoked ? f->revoked : NULL;
    c.auth_tokens = tokens;
    c.auth_ntokens = ntokens;
    return fy_auth_load(&c, err, errlen);
}

static fy_auth_result_t check(const fy_auth_t *a, const char *authz, const char *id, uint64_t now)
{
    fy_auth_result_t r;
    fy_auth_check_at(a, authz, authz ? strlen(authz) : 0, id, now, &r);
    if (r.status != 0) {
        cr_assert_not_null(r.code);
        cr_assert_eq(r.holder[0], '\0');
    }
    return r;
}

static void bearer(char *out, size_t cap, const char *tok)
{
    snprintf(out, cap, "Bearer %s", tok);
}

Test(auth, off_allows_everything)
{
    char err[256];
    cr_assert_null(load(NULL, false, NULL, 0, err, sizeof(err)));
    cr_assert_str_eq(err, "");
    fy_auth_result_t r = check(NULL, NULL, "app", NOW);
    cr_assert_eq(r.status, 0);
    cr_assert_str_eq(r.holder, "");
}

Test(auth, signed_tokens_every_answer)
{
    files_t f;
    char err[512], tok[FY_TOKEN_MAX + 1], h[FY_TOKEN_MAX + 16];
    fy_auth_result_t r;
    fy_auth_t *a;

    make_files(&f, "# revoked tokens\n\n  00000000000000BB  # leaked\n00000000000000cc\n");
    a = load(&f, true, NULL, 0, err, sizeof(err));
    cr_assert_not_null(a, "%s", err);

    /* 200: a covered id. The holder is the token id. */
    mint(tok, sizeof(tok), sk1, 0xaa, "team-*", NOW + 60);
    bearer(h, sizeof(h), tok);
    r = check(a, h, "team-web", NOW);
    cr_assert_eq(r.status, 0, "%s", r.msg);
    cr_assert_str_eq(r.holder, "00000000000000aa");

    /* 403: an uncovered id. */
    r = check(a, h, "other", NOW);
    cr_assert_eq(r.status, 403);
    cr_assert_str_eq(r.code, "tunnel_forbidden");
    cr_assert_str_eq(r.msg, "token does not cover tunnel \"other\": it covers \"team-*\"");

    /* 401 expired, exactly at exp and after. */
    r = check(a, h, "team-web", NOW + 59);
    cr_assert_eq(r.status, 0);
    r = check(a, h, "team-web", NOW + 60);
    cr_assert_eq(r.status, 401);
    cr_assert_str_eq(r.code, "token_expired");
    cr_assert(strstr(r.msg, "expired token: it expired at 2026-01-01T00:01:00Z") == r.msg, "%s", r.msg);

    /* 401 revoked (listed in upper case with a comment), even if expired. */
    mint(tok, sizeof(tok), sk1, 0xbb, "team-*", NOW + 60);
    bearer(h, sizeof(h), tok);
    r = check(a, h, "team-web", NOW);
    cr_assert_eq(r.status, 401);
    cr_assert_str_eq(r.code, "token_revoked");
    cr_assert_str_eq(r.msg, "revoked token: its id 00000000000000bb is listed in auth.revoked");
    mint(tok, sizeof(tok), sk1, 0xcc, "*", NOW + 60);
    bearer(h, sizeof(h), tok);
    cr_assert_str_eq(check(a, h, "x", NOW + 3600).code, "token_revoked");

    /* 401 bad signature: another key; and a flipped signature byte. */
    mint(tok, sizeof(tok), sk2, 0xaa, "team-*", NOW + 60);
    bearer(h, sizeof(h), tok);
    r = check(a, h, "team-web", NOW);
    cr_assert_eq(r.status, 401);
    cr_assert_str_eq(r.code, "token_bad_signature");
    cr_assert(strncmp(r.msg, "bad signature", 13) == 0, "%s", r.msg);
    size_t n = mint(tok, sizeof(tok), sk1, 0xaa, "team-*", NOW + 60);
    tok[n - 20] = tok[n - 20] == 'A' ? 'B' : 'A';
    bearer(h, sizeof(h), tok);
    cr_assert_str_eq(check(a, h, "team-web", NOW).code, "token_bad_signature");

    /* 401 missing and malformed. */
    r = check(a, NULL, "team-web", NOW);
    cr_assert_eq(r.status, 401);
    cr_assert_str_eq(r.code, "token_missing");
    cr_assert(strncmp(r.msg, "missing token", 13) == 0, "%s", r.msg);
    cr_assert_str_eq(check(a, "   ", "team-web", NOW).code, "token_missing");
    r = check(a, "Basic dXNlcjpwYXNz", "team-web", NOW);
    cr_assert_str_eq(r.code, "token_malformed");
    cr_assert_str_eq(r.msg, "malformed token: the Authorization header is not \"Bearer TOKEN\"");
    cr_assert_str_eq(check(a, "Bearer", "team-web", NOW).code, "token_malformed");
    cr_assert_str_eq(check(a, "Bearer ", "team-web", NOW).code, "token_malformed");
    cr_assert_str_eq(check(a, "Bearerx", "team-web", NOW).code, "token_malformed");
    r = check(a, "Bearer not!a!token", "team-web", NOW);
    cr_assert_str_eq(r.msg, "malformed token: not base64url");
    r = check(a, "Bearer abc", "team-web", NOW);
    cr_assert_str_eq(r.msg, "malformed token: too short");

    /* Scheme case and extra spaces do not matter. */
    n = mint(tok, sizeof(tok), sk1, 0xaa, "team-*", NOW + 60);
    snprintf(h, sizeof(h), "  bEARER \t %s  ", tok);
    cr_assert_eq(check(a, h, "team-web", NOW).status, 0);

    /* Oversized header. */
    char big[FY_TOKEN_MAX + 64];
    memset(big, 'A', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    memcpy(big, "Bearer ", 7);
    r = check(a, big, "team-web", NOW);
    cr_assert_str_eq(r.msg, "malformed token: longer than 1024 characters");

    fy_auth_free(a);
    remove_files(&f);
}

Test(auth, static_tokens)
{
    files_t f;
    fy_conf_token_t toks[2];
    char err[512], st[FY_TOKEN_STATIC_LEN + 1], h[128], tok[FY_TOKEN_MAX + 1], hb[FY_TOKEN_MAX + 16];
    fy_auth_result_t r;
    fy_auth_t *a;

    cr_assert_eq(fy_token_static_new(st, sizeof(st)), FY_TOKEN_STATIC_LEN);
    cr_assert_eq(strlen(st), FY_TOKEN_STATIC_LEN);
    cr_assert(strncmp(st, "fys_", 4) == 0);
    memset(toks, 0, sizeof(toks));
    fy_token_static_hash("some-other-token-0000000000000000", 33, toks[0].hash);
    strcpy(toks[0].tunnels, "*");
    fy_token_static_hash(st, strlen(st), toks[1].hash);
    strcpy(toks[1].tunnels, "ci-*");

    /* Static tokens alone. */
    a = load(NULL, false, toks, 2, err, sizeof(err));
    cr_assert_not_null(a, "%s", err);
    bearer(h, sizeof(h), st);
    r = check(a, h, "ci-42", NOW);
    cr_assert_eq(r.status, 0, "%s", r.msg);
    cr_assert(strncmp(r.holder, "static:", 7) == 0 && strlen(r.holder) == 7 + 16, "%s", r.holder);
    char want[32];
    uint8_t hash[FY_TOKEN_HASH];
    fy_token_static_hash(st, strlen(st), hash);
    memcpy(want, "static:", 7);
    sodium_bin2hex(want + 7, sizeof(want) - 7, hash, 8);
    cr_assert_str_eq(r.holder, want);
    r = check(a, h, "prod", NOW);
    cr_assert_eq(r.status, 403);
    cr_assert_str_eq(r.code, "tunnel_forbidden");
    r = check(a, "Bearer some-other-token-0000000000000000", "prod", NOW);
    cr_assert_eq(r.status, 0);
    cr_assert_neq(strcmp(r.holder, want), 0);
    st[10] ^= 1;
    bearer(h, sizeof(h), st);
    r = check(a, h, "ci-42", NOW);
    cr_assert_eq(r.status, 401);
    cr_assert_str_eq(r.code, "token_unknown");
    /* A signed token means nothing without auth.key. */
    mint(tok, sizeof(tok), sk1, 1, "*", NOW + 60);
    bearer(hb, sizeof(hb), tok);
    cr_assert_str_eq(check(a, hb, "ci-42", NOW).code, "token_unknown");
    fy_auth_free(a);

    /* Both: a signed token passes, an unknown static one is told so. */
    make_files(&f, NULL);
    a = load(&f, false, toks, 2, err, sizeof(err));
    cr_assert_not_null(a, "%s", err);
    cr_assert_eq(check(a, hb, "ci-42", NOW).status, 0);
    cr_assert_str_eq(check(a, h, "ci-42", NOW).code, "token_unknown");
    cr_assert_str_eq(check(a, "Bearer nope", "ci-42", NOW).code, "token_malformed");
    fy_auth_free(a);
    remove_files(&f);
}

Test(auth, key_file_must_be_private)
{
    files_t f;
    char err[512];
    fy_auth_t *a;

    make_files(&f, NULL);
    cr_assert_eq(chmod(f.key, 0640), 0);
    a = load(&f, false, NULL, 0, err, sizeof(err));
    cr_assert_null(a);
    cr_assert(strstr(err, "group or others can access it (mode 0640)") != NULL, "%s", err);
    cr_assert(strstr(err, "chmod 600") != NULL, "%s", err);
    cr_assert_eq(chmod(f.key, 0604), 0);
    cr_assert_null(load(&f, false, NULL, 0, err, sizeof(err)));
    cr_assert_eq(chmod(f.key, 0400), 0);
    a = load(&f, false, NULL, 0, err, sizeof(err));
    cr_assert_not_null(a, "%s", err);
    fy_auth_free(a);

    write_file(f.key, "not a key\n", 0600);
    cr_assert_null(load(&f, false, NULL, 0, err, sizeof(err)));
    cr_assert(strstr(err, "not a ferryd key file") != NULL, "%s", err);
    unlink(f.key);
    cr_assert_null(load(&f, false, NULL, 0, err, sizeof(err)));
    cr_assert(strstr(err, "No such file") != NULL, "%s", err);
    cr_assert_eq(mkdir(f.key, 0700), 0);
    cr_assert_null(load(&f, false, NULL, 0, err, sizeof(err)));
    cr_assert(strstr(err, "not a regular file") != NULL, "%s", err);
    rmdir(f.key);
    remove_files(&f);
}

Test(auth, revoked_file_errors)
{
    files_t f;
    char err[512];
    fy_auth_t *a;

    make_files(&f, "0000000000000001\nnot-a-jti\n");
    cr_assert_null(load(&f, true, NULL, 0, err, sizeof(err)));
    cr_assert(strstr(err, ":2: \"not-a-jti\" is not a token id") != NULL, "%s", err);
    write_file(f.revoked, "00000000000000011\n", 0644);
    cr_assert_null(load(&f, true, NULL, 0, err, sizeof(err)));
    write_file(f.revoked, "", 0644);
    a = load(&f, true, NULL, 0, err, sizeof(err));
    cr_assert_not_null(a, "%s", err);
    cr_assert_eq(a->nrevoked, 0);
    fy_auth_free(a);
    /* No trailing newline, CRLF, many entries: all found. */
    {
        FILE *w = fopen(f.revoked, "w");
        for (unsigned i = 0; i < 5000; i++)
            fprintf(w, "%016x\r\n", i * 7919u);
        fprintf(w, "ffffffffffffffff");
        fclose(w);
    }
    a = load(&f, true, NULL, 0, err, sizeof(err));
    cr_assert_not_null(a, "%s", err);
    cr_assert_eq(a->nrevoked, 5001);
    cr_assert(revoked(a, 7919u * 4999u));
    cr_assert(revoked(a, UINT64_MAX));
    cr_assert(!revoked(a, 7919u * 4999u + 1));
    fy_auth_free(a);
    /* Over 1 MiB. */
    {
        FILE *w = fopen(f.revoked, "w");
        for (unsigned i = 0; i < 70000; i++)
            fprintf(w, "%016x\n", i);
        fclose(w);
    }
    cr_assert_null(load(&f, true, NULL, 0, err, sizeof(err)));
    cr_assert(strstr(err, "larger than 1048576 bytes") != NULL, "%s", err);
    unlink(f.revoked);
    cr_assert_null(load(&f, true, NULL, 0, err, sizeof(err)));
    cr_assert(strstr(err, "auth.revoked") != NULL, "%s", err);
    remove_files(&f);
}

/*
 * The connect-path cost, as a worker pays it: parse the header, decode,
 * verify, check revocation and expiry, match the pattern. Printed, not
 * asserted (machines differ); `make unit` shows the figure.
 */
Test(auth, bench_verify)
{
    files_t f;
    char err[512], tok[FY_TOKEN_MAX + 1], h[FY_TOKEN_MAX + 16];
    fy_auth_result_t r;
    struct timespec t0, t1;
    fy_auth_t *a;
    const int n = 4000;
    double us_check, us_static;

    make_files(&f, "0000000000000001\n");
    a = load(&f, true, NULL, 0, err, sizeof(err));
    cr_assert_not_null(a, "%s", err);
    mint(tok, sizeof(tok), sk1, 0xaa, "team-*", NOW + 60);
    bearer(h, sizeof(h), tok);
    for (int i = 0; i < 200; i++)    /* warm up */
        fy_auth_check_at(a, h, strlen(h), "team-web", NOW, &r);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < n; i++) {
        fy_auth_check_at(a, h, strlen(h), "team-web", NOW, &r);
        cr_assert_eq(r.status, 0);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    us_check = ((double)(t1.tv_sec - t0.tv_sec) * 1e6 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e3) / n;
    fy_auth_free(a);

    /* Static tokens: one keyed BLAKE2b and a scan of 1000 entries. */
    fy_conf_token_t *toks = calloc(1000, sizeof(*toks));
    char st[FY_TOKEN_STATIC_LEN + 1];
    for (int i = 0; i < 1000; i++) {
        cr_assert_gt(fy_token_static_new(st, sizeof(st)), 0);
        fy_token_static_hash(st, strlen(st), toks[i].hash);
        strcpy(toks[i].tunnels, "*");
    }
    a = load(NULL, false, toks, 1000, err, sizeof(err));
    cr_assert_not_null(a, "%s", err);
    bearer(h, sizeof(h), st);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < n; i++) {
        fy_auth_check_at(a, h, strlen(h), "team-web", NOW, &r);
        cr_assert_eq(r.status, 0);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    us_static = ((double)(t1.tv_sec - t0.tv_sec) * 1e6 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e3) / n;
    fy_auth_free(a);
    free(toks);
    remove_files(&f);
    fprintf(stderr, "bench: agent token check %.1f us per connection (signed, Ed25519 verify); "
            "%.1f us (static, 1000 entries); %d runs each\n", us_check, us_static, n);
}
