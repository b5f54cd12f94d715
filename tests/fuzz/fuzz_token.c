/*
 * fuzz_token.c: libFuzzer target for the agent-token decoder and its
 * helpers (common/crypto/token.c): everything a relay reads from an
 * Authorization header or a key file.
 *
 * Input layout: byte 0 picks what the rest is (mod 3):
 *   0  a token: fy_token_decode must accept only well-formed claims, and
 *      re-encoding those claims with the fuzz key must give a token that
 *      decodes to the same claims and verifies;
 *   1  key file text: a parsed seed formats and parses back to itself;
 *   2  "PATTERN\0ID": fy_token_pattern_match agrees with a reference
 *      dynamic-programming glob matcher.
 * The seed corpus (tests/fuzz/corpus/fuzz_token) holds tokens signed with
 * the fuzz key below, so mutations start from valid ones.
 */
#include "fy.h"
#include "conf/conf.h"
#include "crypto/token.h"

#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#define CHECK(c) do { if (!(c)) abort(); } while (0)

/* The fuzz key's seed: bytes 1..32 (key file "ed25519:AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA"). */
static uint8_t pk[FY_TOKEN_PK], sk[FY_TOKEN_SK];

static void init(void)
{
    static bool done;
    uint8_t seed[FY_TOKEN_SEED];
    if (done)
        return;
    CHECK(sodium_init() >= 0);
    for (int i = 0; i < FY_TOKEN_SEED; i++)
        seed[i] = (uint8_t)(i + 1);
    fy_token_keypair(seed, pk, sk);
    done = true;
}

static void fuzz_decode(const char *s, size_t n)
{
    fy_token_t t, u;
    const char *why = NULL;
    char out[FY_TOKEN_MAX + 1];
    ssize_t len;

    if (fy_token_decode(s, n, &t, &why) != FY_OK) {
        CHECK(why != NULL && why[0] != '\0');
        return;
    }
    CHECK(n <= FY_TOKEN_MAX);
    CHECK(t.version == FY_TOKEN_VERSION);
    CHECK(t.exp > 0 && t.exp <= FY_TOKEN_EXP_MAX);
    CHECK(fy_token_pattern_valid(t.pattern, strlen(t.pattern)));
    CHECK(strlen(t.jti_hex) == FY_TOKEN_JTI_HEX);
    CHECK(t.payload_len > 0 && t.payload_len + FY_TOKEN_SIG <= FY_TOKEN_RAW_MAX);
    (void)fy_token_verify(&t, pk);   /* may pass for a corpus token */

    len = fy_token_encode(&t, sk, out, sizeof(out));
    CHECK(len > 0 && (size_t)len == strlen(out));
    CHECK(fy_token_decode(out, (size_t)len, &u, &why) == FY_OK);
    CHECK(u.jti == t.jti && u.exp == t.exp && strcmp(u.pattern, t.pattern) == 0
          && strcmp(u.jti_hex, t.jti_hex) == 0);
    CHECK(fy_token_verify(&u, pk) == FY_OK);
    /* The canonical encoding of canonical claims is a fixed point. */
    if ((size_t)len == n && memcmp(out, s, n) == 0)
        CHECK(fy_token_verify(&t, pk) == FY_OK);
}

static void fuzz_key(const char *s, size_t n)
{
    uint8_t seed[FY_TOKEN_SEED], back[FY_TOKEN_SEED];
    char text[512];
    const char *why = NULL;
    ssize_t len;

    if (fy_token_key_parse(s, n, seed, &why) != FY_OK) {
        CHECK(why != NULL);
        return;
    }
    len = fy_token_key_format(seed, text, sizeof(text));
    CHECK(len > 0);
    CHECK(fy_token_key_parse(text, (size_t)len, back, &why) == FY_OK);
    CHECK(memcmp(seed, back, sizeof(seed)) == 0);
}

/* Reference glob: dp[i][j] = pattern[i..] matches id[j..]. */
static bool ref_match(const char *p, size_t pn, const char *s, size_t sn)
{
    static bool dp[FY_TOKEN_PATTERN_MAX + 2][FY_ID_MAX + 2];
    size_t i, j;
    for (i = pn + 1; i-- > 0;) {
        for (j = sn + 1; j-- > 0;) {
            if (i == pn)
                dp[i][j] = j == sn;
            else if (p[i] == '*')
                dp[i][j] = dp[i + 1][j] || (j < sn && dp[i][j + 1]);
            else
                dp[i][j] = j < sn && p[i] == s[j] && dp[i + 1][j + 1];
        }
    }
    return dp[0][0];
}

static void fuzz_pattern(const char *s, size_t n)
{
    const char *nul = memchr(s, '\0', n);
    size_t pn, sn;
    if (nul == NULL)
        return;
    pn = (size_t)(nul - s);
    sn = n - pn - 1;
    if (!fy_token_pattern_valid(s, pn) || sn > FY_ID_MAX)
        return;
    CHECK(fy_token_pattern_match(s, pn, nul + 1, sn) == ref_match(s, pn, nul + 1, sn));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 4 * FY_TOKEN_MAX)
        return 0;
    init();
    switch (data[0] % 3) {
    case 0:
        fuzz_decode((const char *)data + 1, size - 1);
        break;
    case 1:
        fuzz_key((const char *)data + 1, size - 1);
        break;
    default:
        fuzz_pattern((const char *)data + 1, size - 1);
        break;
    }
    return 0;
}
