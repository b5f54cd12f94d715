/*
 * ctx.c: the relay's and the agent's TLS contexts (see tls.h).
 */
#include "tls/tls.h"

#include <openssl/err.h>
#include <openssl/x509.h>

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* TLS 1.2 suites: forward secret AEADs only (TLS 1.3's are fixed and all
 * AEAD). Mozilla's "intermediate" list, minus what BoringSSL lacks. */
#define CIPHERS_TLS12 "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:" \
                      "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:" \
                      "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"

/* Debian's bundle of the system's CAs, then its hashed directory. */
#define SYSTEM_CA_FILE "/etc/ssl/certs/ca-certificates.crt"
#define SYSTEM_CA_DIR "/etc/ssl/certs"

#define OCSP_MAX (64 * 1024)

static const uint8_t alpn_http11[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};

void fy_tls_error(const SSL *ssl, char *buf, size_t n)
{
    unsigned long e;
    long v;

    if (ssl != NULL && (v = SSL_get_verify_result(ssl)) != X509_V_OK) {
        snprintf(buf, n, "certificate verify failed: %s", X509_verify_cert_error_string(v));
        ERR_clear_error();
        return;
    }
    if ((e = ERR_get_error()) == 0) {
        snprintf(buf, n, "%s", errno ? strerror(errno) : "connection closed during the TLS handshake");
        return;
    }
    ERR_error_string_n(e, buf, n);
    ERR_clear_error();
}

/* http/1.1 if the client offers it; without ALPN otherwise (a client that
 * offers only h2 then speaks what it would without ALPN, or gives up). */
static int select_alpn(SSL *ssl, const uint8_t **out, uint8_t *outlen, const uint8_t *in, unsigned inlen, void *arg)
{
    unsigned i = 0;

    while (i < inlen) {
        unsigned l = in[i];
        if (l == 0 || l > inlen - i - 1)
            break;
        if (l == sizeof(alpn_http11) - 1 && memcmp(in + i + 1, alpn_http11 + 1, l) == 0) {
            *out = in + i + 1;
            *outlen = (uint8_t)l;
            return SSL_TLSEXT_ERR_OK;
        }
        i += 1 + l;
    }
    return SSL_TLSEXT_ERR_NOACK;
}

static SSL_CTX *base_ctx(void)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_method());

    if (ctx == NULL)
        return NULL;
    if (!SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) || !SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION)
        || !SSL_CTX_set_strict_cipher_list(ctx, CIPHERS_TLS12)) {
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE);
    return ctx;
}

static int read_file(const char *path, uint8_t *buf, size_t cap, size_t *len)
{
    FILE *f = fopen(path, "rb");
    size_t n;

    if (f == NULL)
        return FY_ERR;
    n = fread(buf, 1, cap, f);
    if (ferror(f) || !feof(f) || n == 0) {
        int e = ferror(f) ? EIO : EFBIG;
        fclose(f);
        errno = e;
        return FY_ERR;
    }
    fclose(f);
    *len = n;
    return FY_OK;
}

SSL_CTX *fy_tls_server_ctx(const char *cert, const char *key, const char *ocsp,
                           const uint8_t ticket_keys[FY_TLS_TICKET_KEYS], char *err, size_t errlen)
{
    SSL_CTX *ctx = base_ctx();
    char why[256];

    if (ctx == NULL) {
        snprintf(err, errlen, "tls: cannot make a TLS context");
        return NULL;
    }
    ERR_clear_error();
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        fy_tls_error(NULL, why, sizeof(why));
        snprintf(err, errlen, "tls.cert: %s: cannot load a PEM certificate chain: %s", cert, why);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        fy_tls_error(NULL, why, sizeof(why));
        snprintf(err, errlen, "tls.key: %s: cannot load a PEM private key: %s", key, why);
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        ERR_clear_error();
        snprintf(err, errlen, "tls.key: %s is not the key of the certificate in %s", key, cert);
        goto fail;
    }
    if (ocsp != NULL && ocsp[0] != '\0') {
        uint8_t *der = malloc(OCSP_MAX);
        size_t n;
        bool ok = der != NULL && read_file(ocsp, der, OCSP_MAX, &n) == FY_OK && SSL_CTX_set_ocsp_response(ctx, der, n);
        free(der);
        if (!ok) {
            snprintf(err, errlen, "tls.ocsp_staple: %s: %s", ocsp,
                     errno == EFBIG ? "empty or over 64 KiB (a DER OCSP response)" : strerror(errno));
            goto fail;
        }
    }
    SSL_CTX_set_alpn_select_cb(ctx, select_alpn, NULL);
    /* Resumption by ticket only, with keys every worker shares: a resumed
     * connection may land on any worker. A per-worker session cache would
     * resume only where it began. */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    if (!SSL_CTX_set_tlsext_ticket_keys(ctx, ticket_keys, FY_TLS_TICKET_KEYS)) {
        snprintf(err, errlen, "tls: cannot set the session ticket keys");
        goto fail;
    }
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

SSL_CTX *fy_tls_client_ctx(const char *ca, bool insecure, char *err, size_t errlen)
{
    SSL_CTX *ctx = base_ctx();
    char why[256];

    if (ctx == NULL) {
        snprintf(err, errlen, "cannot make a TLS context");
        return NULL;
    }
    SSL_CTX_set_alpn_protos(ctx, alpn_http11, sizeof(alpn_http11));
    if (insecure) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
        return ctx;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    ERR_clear_error();
    if (ca != NULL && ca[0] != '\0') {
        if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) {
            fy_tls_error(NULL, why, sizeof(why));
            snprintf(err, errlen, "--ca %s: cannot load PEM certificates: %s", ca, why);
            SSL_CTX_free(ctx);
            return NULL;
        }
    } else if (SSL_CTX_load_verify_locations(ctx, SYSTEM_CA_FILE, SYSTEM_CA_DIR) != 1) {
        fy_tls_error(NULL, why, sizeof(why));
        snprintf(err, errlen, "cannot load the system's CA certificates (%s): %s; name a CA with --ca FILE",
                 SYSTEM_CA_FILE, why);
        SSL_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

static SSL *client_ssl(SSL_CTX *ctx, const char *host)
{
    SSL *ssl = SSL_new(ctx);
    uint8_t ip[16];
    bool literal;

    if (ssl == NULL)
        return NULL;
    literal = inet_pton(AF_INET, host, ip) == 1 || inet_pton(AF_INET6, host, ip) == 1;
    if (!literal && !SSL_set_tlsext_host_name(ssl, host))
        goto fail;
    if (SSL_get_verify_mode(ssl) != SSL_VERIFY_NONE) {
        X509_VERIFY_PARAM *param = SSL_get0_param(ssl);
        if (!(literal ? X509_VERIFY_PARAM_set1_ip_asc(param, host) : X509_VERIFY_PARAM_set1_host(param, host, strlen(host))))
            goto fail;
    }
    SSL_set_connect_state(ssl);
    return ssl;
fail:
    SSL_free(ssl);
    return NULL;
}

fy_tls_pump_t *fy_tls_pump_connect(fy_ev_t *ev, SSL_CTX *ctx, const char *host, int net_fd, int *app_fd,
                                   uint64_t handshake_ms, fy_tls_pump_cb on_handshake, void *data)
{
    SSL *ssl = client_ssl(ctx, host);

    if (ssl == NULL) {
        close(net_fd);
        return NULL;
    }
    return fy_tls_pump_start(ev, ssl, net_fd, app_fd, handshake_ms, UINT64_MAX / 2, on_handshake, data);
}
