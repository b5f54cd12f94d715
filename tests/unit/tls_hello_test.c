/*
 * tls_hello_test.c: unit tests of common/tls/hello.c, the SNI of a
 * ClientHello read before any handshake.
 *
 * Real hellos come from BoringSSL itself (a client session writing into a
 * memory BIO); hand-made ones cover what clients rarely send: records split
 * mid-message, no extensions, malformed lengths.
 */
#include "tests/unit/unit.h"

#include "fy.h"
#include "tls/hello.h"

#include <openssl/bio.h>
#include <openssl/ssl.h>

#include <string.h>

/* A ClientHello as BoringSSL sends it, for server name sni (NULL: none). */
static size_t real_hello(const char *sni, uint8_t *out, size_t cap)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_method());
    SSL *ssl = SSL_new(ctx);
    BIO *rb = BIO_new(BIO_s_mem()), *wb = BIO_new(BIO_s_mem());
    size_t n;

    cr_assert(ctx && ssl && rb && wb);
    SSL_set_bio(ssl, rb, wb);
    if (sni != NULL)
        cr_assert(SSL_set_tlsext_host_name(ssl, sni));
    SSL_set_connect_state(ssl);
    cr_assert_eq(SSL_do_handshake(ssl), -1);   /* wants the server's answer */
    n = (size_t)BIO_read(wb, out, (int)cap);
    cr_assert_gt(n, 50);
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    return n;
}

static int sni_of(const uint8_t *p, size_t n, char *sni)
{
    const char *why = NULL;
    return fy_tls_hello_sni(p, n, sni, FY_TLS_SNI_MAX + 1, &why);
}

Test(tls_hello, real_hello_names_its_server)
{
    uint8_t h[4096];
    char sni[FY_TLS_SNI_MAX + 1];
    size_t n = real_hello("App-1.Example.COM", h, sizeof(h));

    cr_assert_eq(sni_of(h, n, sni), FY_OK);
    cr_assert_str_eq(sni, "app-1.example.com");
}

Test(tls_hello, real_hello_without_sni)
{
    uint8_t h[4096];
    char sni[FY_TLS_SNI_MAX + 1] = "x";
    size_t n = real_hello(NULL, h, sizeof(h));

    cr_assert_eq(sni_of(h, n, sni), FY_OK);
    cr_assert_str_eq(sni, "");
}

/* Every prefix of a hello asks for more; never an answer from half of one. */
Test(tls_hello, every_prefix_wants_more)
{
    uint8_t h[4096];
    char sni[FY_TLS_SNI_MAX + 1];
    size_t n = real_hello("abc.localhost", h, sizeof(h)), i;

    for (i = 0; i < n; i++)
        cr_assert_eq(sni_of(h, i, sni), FY_AGAIN, "prefix %zu of %zu", i, n);
    cr_assert_eq(sni_of(h, n, sni), FY_OK);
}

/* The same handshake message split over three records (RFC 8446 §5.1
 * allows it), with bytes of the next flight after it. */
Test(tls_hello, split_over_records)
{
    uint8_t h[4096], s[4200];
    char sni[FY_TLS_SNI_MAX + 1];
    size_t n = real_hello("split.localhost", h, sizeof(h)), body = n - 5, cut1 = 3, cut2 = body / 2, o = 0;
    size_t cuts[4] = {0, cut1, cut2, body}, k;

    for (k = 0; k < 3; k++) {
        size_t len = cuts[k + 1] - cuts[k];
        s[o++] = 22;
        s[o++] = 3;
        s[o++] = 1;
        s[o++] = (uint8_t)(len >> 8);
        s[o++] = (uint8_t)len;
        memcpy(s + o, h + 5 + cuts[k], len);
        o += len;
    }
    memcpy(s + o, "\x14\x03\x03\x00\x01\x01", 6);   /* a ChangeCipherSpec after it */
    cr_assert_eq(sni_of(s, o, sni), FY_OK);
    cr_assert_str_eq(sni, "split.localhost");
    cr_assert_eq(sni_of(s, o + 6, sni), FY_OK);
    cr_assert_eq(sni_of(s, o - 1, sni), FY_AGAIN);
}

/* A minimal hand-made hello: version, random, no session id, one suite,
 * null compression, then exts (may be NULL: none at all). */
static size_t make_hello(uint8_t *out, const uint8_t *exts, size_t extlen, bool with_exts)
{
    uint8_t body[1024];
    size_t b = 0;

    body[b++] = 3;
    body[b++] = 3;
    memset(body + b, 0xab, 32);
    b += 32;
    body[b++] = 0;                    /* session id */
    body[b++] = 0; body[b++] = 2; body[b++] = 0x13; body[b++] = 0x01;
    body[b++] = 1; body[b++] = 0;     /* compression: null */
    if (with_exts) {
        body[b++] = (uint8_t)(extlen >> 8);
        body[b++] = (uint8_t)extlen;
        memcpy(body + b, exts, extlen);
        b += extlen;
    }
    out[0] = 22; out[1] = 3; out[2] = 1;
    out[3] = (uint8_t)((b + 4) >> 8);
    out[4] = (uint8_t)(b + 4);
    out[5] = 1;
    out[6] = 0; out[7] = (uint8_t)(b >> 8); out[8] = (uint8_t)b;
    memcpy(out + 9, body, b);
    return 9 + b;
}

static size_t sni_ext(uint8_t *e, const char *name)
{
    size_t l = strlen(name);
    e[0] = 0; e[1] = 0;                          /* server_name */
    e[2] = (uint8_t)((l + 5) >> 8); e[3] = (uint8_t)(l + 5);
    e[4] = (uint8_t)((l + 3) >> 8); e[5] = (uint8_t)(l + 3);
    e[6] = 0;                                    /* host_name */
    e[7] = (uint8_t)(l >> 8); e[8] = (uint8_t)l;
    memcpy(e + 9, name, l);
    return 9 + l;
}

Test(tls_hello, hand_made_cases)
{
    uint8_t h[2048], e[600];
    char sni[FY_TLS_SNI_MAX + 1], long_name[300];
    size_t n, el;

    n = make_hello(h, NULL, 0, false);           /* no extensions block at all */
    cr_assert_eq(sni_of(h, n, sni), FY_OK);
    cr_assert_str_eq(sni, "");

    el = sni_ext(e, "t1.localhost");
    n = make_hello(h, e, el, true);
    cr_assert_eq(sni_of(h, n, sni), FY_OK);
    cr_assert_str_eq(sni, "t1.localhost");

    el += sni_ext(e + el, "t2.localhost");       /* two server_name extensions */
    n = make_hello(h, e, el, true);
    cr_assert_eq(sni_of(h, n, sni), FY_ERR);

    el = sni_ext(e, "bad name");                 /* not a host name */
    n = make_hello(h, e, el, true);
    cr_assert_eq(sni_of(h, n, sni), FY_ERR);

    memset(long_name, 'a', 256);
    long_name[256] = '\0';
    el = sni_ext(e, long_name);                  /* over 255 bytes */
    n = make_hello(h, e, el, true);
    cr_assert_eq(sni_of(h, n, sni), FY_ERR);

    el = sni_ext(e, "t1.localhost");
    e[5]++;                                      /* list length disagrees */
    n = make_hello(h, e, el, true);
    cr_assert_eq(sni_of(h, n, sni), FY_ERR);

    el = sni_ext(e, "t1.localhost");
    n = make_hello(h, e, el, true);
    h[n - el + 3]++;                             /* the extension claims more than the block holds */
    cr_assert_neq(sni_of(h, n, sni), FY_OK);
}

Test(tls_hello, not_tls)
{
    char sni[FY_TLS_SNI_MAX + 1];
    const char *get = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    uint8_t alert[] = {21, 3, 3, 0, 2, 2, 40};
    uint8_t server_hello[] = {22, 3, 3, 0, 4, 2, 0, 0, 0};
    uint8_t empty_record[] = {22, 3, 1, 0, 0};
    uint8_t huge_record[] = {22, 3, 1, 0x40, 0x01};

    cr_assert_eq(sni_of((const uint8_t *)get, strlen(get), sni), FY_ERR);
    cr_assert_eq(sni_of((const uint8_t *)get, 1, sni), FY_ERR);   /* one byte is enough to tell */
    cr_assert_eq(sni_of(alert, sizeof(alert), sni), FY_ERR);
    cr_assert_eq(sni_of(server_hello, sizeof(server_hello), sni), FY_ERR);
    cr_assert_eq(sni_of(empty_record, sizeof(empty_record), sni), FY_ERR);
    cr_assert_eq(sni_of(huge_record, sizeof(huge_record), sni), FY_ERR);
}

/* A hello that claims more than 16 KiB is refused before it is all read,
 * and so is a stream of tiny records that never completes one. */
Test(tls_hello, bounded)
{
    static uint8_t buf[FY_TLS_HELLO_MAX + 64];
    char sni[FY_TLS_SNI_MAX + 1];
    uint8_t big[] = {22, 3, 1, 0, 4, 1, 0x01, 0x00, 0x00};   /* a 64 KiB ClientHello */
    const uint8_t head[4] = {1, 0x00, 0x30, 0x00};              /* a 12 KiB ClientHello... */
    size_t o = 0, k = 0;

    /* Told by the first bytes of a record that has not all arrived. */
    uint8_t early[] = {22, 3, 1, 0x40, 0x00, 1, 0x10, 0x00, 0x00};
    uint8_t early_type[] = {22, 3, 1, 0x40, 0x00, 2};

    cr_assert_eq(sni_of(big, sizeof(big), sni), FY_ERR);
    cr_assert_eq(sni_of(early, sizeof(early), sni), FY_ERR);
    cr_assert_eq(sni_of(early, sizeof(early) - 1, sni), FY_AGAIN);
    cr_assert_eq(sni_of(early_type, sizeof(early_type), sni), FY_ERR);
    while (o + 6 <= sizeof(buf)) {               /* ...sent one byte per record */
        buf[o++] = 22; buf[o++] = 3; buf[o++] = 1; buf[o++] = 0; buf[o++] = 1;
        buf[o++] = k < 4 ? head[k] : 0x7f;
        k++;
    }
    cr_assert_eq(sni_of(buf, 6000, sni), FY_AGAIN);
    cr_assert_eq(sni_of(buf, o, sni), FY_ERR);
}
