/*
 * hello.c: the SNI of a ClientHello (RFC 8446 §4.1.2, RFC 5246 §7.4.1.2,
 * RFC 6066 §3). See hello.h.
 */
#include "tls/hello.h"

#include <string.h>

#define REC_HANDSHAKE 22
#define HS_CLIENT_HELLO 1
#define EXT_SERVER_NAME 0
#define NAME_HOST 0
#define REC_MAX 16384

static int fail(const char **why, const char *msg)
{
    if (why != NULL)
        *why = msg;
    return FY_ERR;
}

static uint32_t be16(const uint8_t *p) { return (uint32_t)p[0] << 8 | p[1]; }

/* The host names list of a server_name extension: the first host_name. */
static int server_name(const uint8_t *p, size_t n, char *sni, size_t cap, const char **why)
{
    size_t off = 2, i;

    if (n < 2 || be16(p) != n - 2 || n == 2)
        return fail(why, "malformed server_name extension");
    while (off < n) {
        uint32_t type, len;
        if (n - off < 3)
            return fail(why, "malformed server_name entry");
        type = p[off];
        len = be16(p + off + 1);
        off += 3;
        if (len > n - off)
            return fail(why, "malformed server_name entry");
        if (type == NAME_HOST && sni[0] == '\0') {
            if (len == 0 || len > FY_TLS_SNI_MAX || len >= cap)
                return fail(why, "server name of a bad length");
            for (i = 0; i < len; i++) {
                char c = (char)p[off + i];
                if (c >= 'A' && c <= 'Z')
                    c = (char)(c | 0x20);
                if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_'))
                    return fail(why, "server name with a character no host name has");
                sni[i] = c;
            }
            sni[len] = '\0';
        }
        off += len;
    }
    return FY_OK;
}

/* The body of a ClientHello message, n bytes. */
static int client_hello(const uint8_t *p, size_t n, char *sni, size_t cap, const char **why)
{
    size_t off = 34, len, end;
    bool seen = false;

    if (n < off + 1)
        return fail(why, "ClientHello too short");
    if (p[0] != 3)
        return fail(why, "not a TLS ClientHello version");
    len = p[off];                                /* legacy_session_id */
    if (len > 32 || n - off - 1 < len)
        return fail(why, "bad session id");
    off += 1 + len;
    if (n - off < 2 || (len = be16(p + off)) < 2 || (len & 1) || n - off - 2 < len)
        return fail(why, "bad cipher suites");
    off += 2 + len;
    if (n - off < 1 || (len = p[off]) < 1 || n - off - 1 < len)
        return fail(why, "bad compression methods");
    off += 1 + len;
    if (off == n)
        return FY_OK;                            /* no extensions: no SNI */
    if (n - off < 2 || be16(p + off) != n - off - 2)
        return fail(why, "bad extensions length");
    off += 2;
    while (off < n) {
        uint32_t type;
        if (n - off < 4)
            return fail(why, "truncated extension");
        type = be16(p + off);
        len = be16(p + off + 2);
        off += 4;
        if (len > n - off)
            return fail(why, "truncated extension");
        end = off + len;
        if (type == EXT_SERVER_NAME) {
            if (seen)
                return fail(why, "two server_name extensions");
            seen = true;
            FY_GUARD(server_name(p + off, len, sni, cap, why));
        }
        off = end;
    }
    return FY_OK;
}

int fy_tls_hello_sni(const uint8_t *p, size_t n, char *sni, size_t cap, const char **why)
{
    uint8_t hs[FY_TLS_HELLO_MAX];
    size_t hl = 0, off = 0, need = 0;

    if (cap == 0)
        return fail(why, "no room for the name");
    sni[0] = '\0';
    while (need == 0 || hl < need) {
        size_t rl;
        if (n - off >= 1 && p[off] != REC_HANDSHAKE)
            return fail(why, "not a TLS handshake record");
        if (n - off >= 2 && p[off + 1] != 3)
            return fail(why, "not a TLS record version");
        if (n - off < 5)
            goto more;
        rl = be16(p + off + 3);
        if (rl == 0 || rl > REC_MAX)
            return fail(why, "bad TLS record length");
        if (n - off - 5 < rl) {
            /* A partial first record already shows what the message is
             * and how long it claims to be: refuse early what cannot be. */
            const uint8_t *m = p + off + 5;
            size_t avail = n - off - 5;
            if (hl == 0 && avail >= 1 && m[0] != HS_CLIENT_HELLO)
                return fail(why, "not a ClientHello");
            if (hl == 0 && avail >= 4 && 4 + ((size_t)m[1] << 16 | (size_t)m[2] << 8 | m[3]) > sizeof(hs))
                return fail(why, "ClientHello too large");
            goto more;
        }
        if (rl > sizeof(hs) - hl)
            return fail(why, "ClientHello too large");
        memcpy(hs + hl, p + off + 5, rl);
        hl += rl;
        off += 5 + rl;
        if (need == 0 && hl >= 4) {
            if (hs[0] != HS_CLIENT_HELLO)
                return fail(why, "not a ClientHello");
            need = 4 + ((size_t)hs[1] << 16 | (size_t)hs[2] << 8 | hs[3]);
            if (need > sizeof(hs))
                return fail(why, "ClientHello too large");
        }
    }
    return client_hello(hs + 4, need - 4, sni, cap, why);
more:
    if (n >= FY_TLS_HELLO_MAX + 5)
        return fail(why, "ClientHello too large");
    return FY_AGAIN;
}
