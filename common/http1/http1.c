/*
 * http1.c: the strict HTTP/1.1 head parser and the chunked-body scanner
 * declared in http1.h.
 *
 * Heads are parsed picohttpparser-style: every call starts again from the
 * first byte of the buffer and keeps no state, so the caller only appends
 * bytes and calls again on FY_AGAIN. Bytes are checked one at a time against
 * the RFC 9112 grammar, and only inside min(len, max_head_bytes), so nothing
 * depends on a NUL terminator and nothing is read past the window. A relay
 * must never frame a message differently from the server behind it (request
 * smuggling, RFC 9112 §11.2), so whatever the RFC lets a recipient either
 * reject or repair is rejected here.
 *
 * The chunked scanner is a resumable nginx-style sw_* state machine: it
 * reads body bytes split at any point and says where the body ends, without
 * changing or copying them.
 */
#include "fy.h"
#include "http1/http1.h"

#include <limits.h>
#include <string.h>

/* Bounds of the chunked scanner (the values http1.h documents). */
#define CHUNK_SIZE_DIGITS 15    /* hex digits in a chunk-size: sizes stay < 2^60 */
#define CHUNK_LINE_MAX    4096  /* bytes of one size line, extensions included */
#define CHUNK_TRAILER_MAX 32768 /* bytes of the trailer section, final CRLF included */

/* Content-Length is kept below 2^63 so that callers may hold it in an
 * off_t or ssize_t without a second check. */
#define CONTENT_LENGTH_MAX ((uint64_t)INT64_MAX)

/* ---- byte classes (RFC 9110 §5.6.2, §5.5; RFC 3986 §3.2.2) ---- */

/* tchar: the bytes of a token (method, field name, transfer-coding). */
static bool is_tchar(unsigned char c)
{
    unsigned char l = c | 0x20;

    if ((c >= '0' && c <= '9') || (l >= 'a' && l <= 'z'))
        return true;
    switch (c) {
    case '!': case '#': case '$': case '%': case '&': case '\'': case '*':
    case '+': case '-': case '.': case '^': case '_': case '`': case '|':
    case '~':
        return true;
    default:
        return false;
    }
}

/* field-vchar / SP / HTAB, obs-text included: everything but CTLs and DEL.
 * NUL, bare CR and bare LF inside a value all fail here (RFC 9110 §5.5). */
static bool is_field_byte(unsigned char c)
{
    return c == '\t' || (c >= 0x20 && c != 0x7f);
}

/* request-target bytes: visible ASCII. '#' is refused as well: a fragment
 * is never part of a request-target (RFC 9112 §3.2), and a server behind us
 * could cut the path there when we did not. */
static bool is_target_byte(unsigned char c)
{
    return c > 0x20 && c < 0x7f && c != '#';
}

/* The bytes of a uri-host [":" port] (reg-name, IP-literal, IPv4): RFC
 * 3986 unreserved, pct-encoded, sub-delims, ':' and brackets. Notably not
 * '@' (userinfo is an error in http URIs, RFC 9110 §4.2.4), '/', '?', SP. */
static bool is_authority_byte(unsigned char c)
{
    unsigned char l = c | 0x20;

    if ((c >= '0' && c <= '9') || (l >= 'a' && l <= 'z'))
        return true;
    switch (c) {
    case '-': case '.': case '_': case '~': case '%': case '!': case '$':
    case '&': case '\'': case '(': case ')': case '*': case '+': case ',':
    case ';': case '=': case ':': case '[': case ']':
        return true;
    default:
        return false;
    }
}

static bool is_ows(unsigned char c)
{
    return c == ' ' || c == '\t';
}

static bool is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static int hex_value(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c |= 0x20;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Exact (case-sensitive) equality of a wire slice with a C literal. */
static bool slice_eq(const char *s, size_t n, const char *lit)
{
    size_t i;

    for (i = 0; i < n; i++)
        if (lit[i] == '\0' || s[i] != lit[i])
            return false;
    return lit[n] == '\0';
}

/* Case-insensitive equality of two slices from the wire. */
static bool slice_ieq(const char *a, size_t an, const char *b, size_t bn)
{
    size_t i;

    if (an != bn)
        return false;
    for (i = 0; i < an; i++) {
        unsigned char x = (unsigned char)a[i], y = (unsigned char)b[i];
        if (x >= 'A' && x <= 'Z')
            x |= 0x20;
        if (y >= 'A' && y <= 'Z')
            y |= 0x20;
        if (x != y)
            return false;
    }
    return true;
}

/* ---- the head scanner shared by requests and responses ---- */

struct h1_scan {
    const char *b;
    size_t      n;      /* bytes we may look at: min(len, max_head_bytes) */
    size_t      pos;    /* next byte to read */
    int         status; /* on FY_ERR: 400, 431 or 505 */
    const char *reason; /* on FY_ERR: static string */
};

static int scan_fail(struct h1_scan *s, int status, const char *reason)
{
    s->status = status;
    s->reason = reason;
    return FY_ERR;
}

/*
 * b[p] is a CR: the line ends only if an LF follows (RFC 9112 §2.2; a bare
 * CR is an error, not whitespace). Returns FY_OK, FY_AGAIN or FY_ERR.
 */
static int expect_lf(struct h1_scan *s, size_t p)
{
    if (p + 1 >= s->n)
        return FY_AGAIN;
    if (s->b[p + 1] != '\n')
        return scan_fail(s, 400, "bare CR");
    return FY_OK;
}

/*
 * HTTP-version = "HTTP/" DIGIT "." DIGIT, then CRLF (RFC 9112 §2.3). The
 * name is case-sensitive. A well-formed version other than 1.0/1.1 is 505,
 * decided only once the whole line is in, so that a truncated line is never
 * answered before it is complete.
 */
static int scan_version_crlf(struct h1_scan *s, int *minor)
{
    static const char pat[] = "HTTP/D.D\r\n";
    size_t p = s->pos, i;

    for (i = 0; i < sizeof(pat) - 1; i++) {
        unsigned char c;
        if (p + i >= s->n)
            return FY_AGAIN;
        c = (unsigned char)s->b[p + i];
        if (pat[i] == 'D') {
            if (!is_digit(c))
                return scan_fail(s, 400, "malformed HTTP version");
        } else if (c != (unsigned char)pat[i]) {
            if (c == '\n')
                return scan_fail(s, 400, "bare LF");
            if (pat[i] == '\n')
                return scan_fail(s, 400, "bare CR");
            return scan_fail(s, 400, "malformed HTTP version");
        }
    }
    s->pos = p + i;
    if (s->b[p + 5] != '1' || (s->b[p + 7] != '0' && s->b[p + 7] != '1'))
        return scan_fail(s, 505, "unsupported HTTP version");
    *minor = s->b[p + 7] - '0';
    return FY_OK;
}

/* request-line = method SP request-target SP HTTP-version CRLF (§3). */
static int scan_request_line(struct h1_scan *s, fy_h1_request_t *req)
{
    const char *b = s->b;
    size_t p = 0, start;
    int rc;

    /* method = token. An empty line before the request line is allowed to
     * be skipped (§2.2), but we reject it: nothing legitimate sends it and
     * head_len stays simply "from the first byte". */
    while (p < s->n && is_tchar((unsigned char)b[p]))
        p++;
    if (p == s->n)
        return FY_AGAIN;
    if (p == 0) {
        if (b[0] == '\r' || b[0] == '\n')
            return scan_fail(s, 400, "empty line before request line");
        return scan_fail(s, 400, "invalid method");
    }
    if (b[p] != ' ')
        return scan_fail(s, 400, "invalid method");
    req->method = b;
    req->method_len = p;

    /* request-target: exactly one SP on each side (no lenient runs of
     * whitespace, §3). */
    start = ++p;
    while (p < s->n && is_target_byte((unsigned char)b[p]))
        p++;
    if (p == s->n)
        return FY_AGAIN;
    if (p == start)
        return scan_fail(s, 400, "invalid request target");
    req->target = b + start;
    req->target_len = p - start;

    if (b[p] == '\r') {
        /* "GET /" CRLF: an HTTP/0.9 simple request, which has no version
         * to answer in; 505 says we only speak 1.x. */
        rc = expect_lf(s, p);
        if (rc != FY_OK)
            return rc;
        return scan_fail(s, 505, "HTTP/0.9 request");
    }
    if (b[p] == '\n')
        return scan_fail(s, 400, "bare LF");
    if (b[p] != ' ')
        return scan_fail(s, 400, "invalid request target");
    s->pos = p + 1;
    return scan_version_crlf(s, &req->minor);
}

/* status-line = HTTP-version SP status-code SP [ reason-phrase ] CRLF
 * (RFC 9112 §4). "HTTP/1.1 200" CRLF, with no SP, is accepted too: many
 * servers send it and it is unambiguous. */
static int scan_status_line(struct h1_scan *s, fy_h1_response_t *resp)
{
    static const char pat[] = "HTTP/D.D DDD";
    const char *b = s->b;
    size_t p, i;
    int rc;

    for (i = 0; i < sizeof(pat) - 1; i++) {
        unsigned char c;
        if (i >= s->n)
            return FY_AGAIN;
        c = (unsigned char)b[i];
        if (pat[i] == 'D') {
            if (!is_digit(c))
                return scan_fail(s, 400, "malformed status line");
        } else if (c != (unsigned char)pat[i]) {
            return scan_fail(s, 400, "malformed status line");
        }
    }
    if (b[5] != '1' || (b[7] != '0' && b[7] != '1'))
        return scan_fail(s, 505, "unsupported HTTP version");
    if (b[9] == '0')
        return scan_fail(s, 400, "status code below 100");
    resp->minor = b[7] - '0';
    resp->status = (b[9] - '0') * 100 + (b[10] - '0') * 10 + (b[11] - '0');

    p = i;
    if (p >= s->n)
        return FY_AGAIN;
    if (b[p] == ' ') {
        size_t start = ++p;
        /* reason-phrase = 1*( HTAB / SP / VCHAR / obs-text ) */
        while (p < s->n && is_field_byte((unsigned char)b[p]))
            p++;
        if (p == s->n)
            return FY_AGAIN;
        resp->reason = b + start;
        resp->reason_len = p - start;
    } else {
        resp->reason = b + p;
        resp->reason_len = 0;
    }
    if (b[p] == '\n')
        return scan_fail(s, 400, "bare LF");
    if (b[p] != '\r')
        return scan_fail(s, 400, "malformed status line");
    rc = expect_lf(s, p);
    if (rc != FY_OK)
        return rc;
    s->pos = p + 2;
    return FY_OK;
}

/*
 * field-line = field-name ":" OWS field-value OWS, each ending in CRLF,
 * then an empty line (RFC 9112 §5, RFC 9110 §5.5). Fills headers[] with the
 * value's OWS trimmed; more than max fields is 431.
 */
static int scan_fields(struct h1_scan *s, fy_h1_header_t *headers, size_t max, size_t *nheaders)
{
    const char *b = s->b;
    size_t p = s->pos;
    int rc;

    *nheaders = 0;
    for (;;) {
        size_t name, name_end, value, value_end;

        if (p >= s->n)
            return FY_AGAIN;
        if (b[p] == '\r') {
            rc = expect_lf(s, p);
            if (rc != FY_OK)
                return rc;
            s->pos = p + 2;
            return FY_OK;
        }
        if (b[p] == '\n')
            return scan_fail(s, 400, "bare LF");
        /* A line that starts with whitespace is obs-fold (or, first, a
         * field the origin might glue to the start line); §5.2 lets us
         * reject it, and we do. */
        if (is_ows((unsigned char)b[p]))
            return scan_fail(s, 400, "obs-fold");
        if (*nheaders == max)
            return scan_fail(s, 431, "too many header fields");

        /* field-name = token, then ':' at once: whitespace before the
         * colon is a 400 (§5.1). */
        name = p;
        while (p < s->n && is_tchar((unsigned char)b[p]))
            p++;
        if (p == s->n)
            return FY_AGAIN;
        if (b[p] != ':' || p == name) {
            if (b[p] == '\n')
                return scan_fail(s, 400, "bare LF");
            if (is_ows((unsigned char)b[p]) && p != name)
                return scan_fail(s, 400, "whitespace before colon");
            return scan_fail(s, 400, "invalid field name");
        }
        name_end = p++;

        while (p < s->n && is_ows((unsigned char)b[p]))
            p++;
        value = value_end = p;
        while (p < s->n && b[p] != '\r') {
            unsigned char c = (unsigned char)b[p];
            if (c == '\n')
                return scan_fail(s, 400, "bare LF");
            if (!is_field_byte(c))
                return scan_fail(s, 400, "invalid byte in field value");
            p++;
            if (!is_ows(c))
                value_end = p;
        }
        if (p == s->n)
            return FY_AGAIN;
        rc = expect_lf(s, p);
        if (rc != FY_OK)
            return rc;
        p += 2;

        headers[*nheaders] = (fy_h1_header_t){
            .name = b + name, .name_len = name_end - name,
            .value = b + value, .value_len = value_end - value,
        };
        (*nheaders)++;
    }
}

/* Content-Length = 1*DIGIT (RFC 9110 §8.6), no sign, no list, no OWS
 * inside, below CONTENT_LENGTH_MAX. */
static bool parse_content_length(const char *v, size_t n, uint64_t *out)
{
    uint64_t x = 0;
    size_t i;

    if (n == 0)
        return false;
    for (i = 0; i < n; i++) {
        unsigned d;
        if (!is_digit((unsigned char)v[i]))
            return false;
        d = (unsigned)(v[i] - '0');
        if (x > (CONTENT_LENGTH_MAX - d) / 10)
            return false;
        x = x * 10 + d;
    }
    *out = x;
    return true;
}

/* uri-host [":" port] made only of authority bytes. require_port: the
 * authority-form of CONNECT, which must name a port (RFC 9112 §3.2.3). */
static bool valid_authority(const char *a, size_t n, bool require_port)
{
    size_t i, colon = n;

    if (n == 0)
        return false;
    for (i = 0; i < n; i++) {
        if (!is_authority_byte((unsigned char)a[i]))
            return false;
        if (a[i] == ':')
            colon = i;
        else if (a[i] == ']')
            colon = n; /* colons inside an IPv6 literal name no port */
    }
    if (!require_port)
        return true;
    if (colon == n || colon == 0 || colon + 1 == n)
        return false;
    for (i = colon + 1; i < n; i++)
        if (!is_digit((unsigned char)a[i]))
            return false;
    return true;
}

/* The Connection tokens every message carries: "close" wins; HTTP/1.0
 * closes unless it asks for keep-alive (RFC 9112 §9.3). */
static unsigned connection_flags(const fy_h1_header_t *h, size_t n, int minor, bool *upgrade_token)
{
    bool close = false, keep_alive = false;
    size_t i;

    *upgrade_token = false;
    for (i = 0; i < n; i++) {
        if (!fy_ieq(h[i].name, h[i].name_len, "connection"))
            continue;
        close |= fy_h1_has_token(h[i].value, h[i].value_len, "close");
        keep_alive |= fy_h1_has_token(h[i].value, h[i].value_len, "keep-alive");
        *upgrade_token |= fy_h1_has_token(h[i].value, h[i].value_len, "upgrade");
    }
    if (close || (minor == 0 && !keep_alive))
        return FY_H1_F_CLOSE;
    return 0;
}

/* Whether any Upgrade field exists, and whether one names websocket. */
static bool upgrade_header(const fy_h1_header_t *h, size_t n, bool *websocket)
{
    bool found = false;
    size_t i;

    *websocket = false;
    for (i = 0; i < n; i++) {
        if (!fy_ieq(h[i].name, h[i].name_len, "upgrade"))
            continue;
        found = true;
        *websocket |= fy_h1_has_token(h[i].value, h[i].value_len, "websocket");
    }
    return found;
}

/* The request-target forms of RFC 9112 §3.2, checked against the method
 * and, for absolute-form, against Host. */
static int request_target(struct h1_scan *s, fy_h1_request_t *req)
{
    const char *t = req->target;
    size_t n = req->target_len, skip, end;

    /* Method names are case-sensitive (RFC 9110 §9.1): "connect" is some
     * other method and gets no authority-form. */
    if (slice_eq(req->method, req->method_len, "CONNECT")) {
        if (!valid_authority(t, n, true))
            return scan_fail(s, 400, "CONNECT target is not host:port");
        req->flags |= FY_H1_F_CONNECT;
        req->path = NULL;
        req->path_len = 0;
        return FY_OK;
    }

    if (t[0] == '/') {
        req->path = t;
        req->path_len = n;
        return FY_OK;
    }
    if (n == 1 && t[0] == '*') {
        if (!slice_eq(req->method, req->method_len, "OPTIONS"))
            return scan_fail(s, 400, "asterisk-form outside OPTIONS");
        req->path = t;
        req->path_len = 1;
        return FY_OK;
    }

    if (n >= 7 && fy_ieq(t, 7, "http://"))
        skip = 7;
    else if (n >= 8 && fy_ieq(t, 8, "https://"))
        skip = 8;
    else
        return scan_fail(s, 400, "invalid request target");

    for (end = skip; end < n && t[end] != '/' && t[end] != '?'; end++)
        ;
    if (!valid_authority(t + skip, end - skip, false))
        return scan_fail(s, 400, "invalid authority in request target");
    /* "http://h?q" has a query but no path; forwarding it in origin-form
     * would need a "/" we have no room to insert, and nobody sends it. */
    if (end < n && t[end] == '?')
        return scan_fail(s, 400, "absolute-form target without a path");
    req->flags |= FY_H1_F_ABSOLUTE;
    req->authority = t + skip;
    req->authority_len = end - skip;
    if (end == n) {
        req->path = "/";
        req->path_len = 1;
    } else {
        req->path = t + end;
        req->path_len = n - end;
    }
    return FY_OK;
}

/* What a complete request head means: framing, Host, target, flags. */
static int request_semantics(struct h1_scan *s, fy_h1_request_t *req)
{
    const fy_h1_header_t *h = req->headers;
    size_t i, n_host = 0, n_cl = 0, n_te = 0;
    bool upgrade_token, websocket;
    int rc;

    for (i = 0; i < req->nheaders; i++) {
        const char *v = h[i].value;
        size_t vn = h[i].value_len;

        if (fy_ieq(h[i].name, h[i].name_len, "host")) {
            /* RFC 9112 §3.2: more than one Host, or an invalid one, is 400.
             * An empty Host is valid syntax there; routing decides. */
            if (++n_host > 1)
                return scan_fail(s, 400, "duplicate Host");
            if (vn > 0 && !valid_authority(v, vn, false))
                return scan_fail(s, 400, "invalid Host");
            req->host = v;
            req->host_len = vn;
        } else if (fy_ieq(h[i].name, h[i].name_len, "content-length")) {
            /* A second Content-Length, even an equal one, is refused: a
             * server behind us may join or pick them differently. */
            if (++n_cl > 1)
                return scan_fail(s, 400, "duplicate Content-Length");
            if (!parse_content_length(v, vn, &req->content_length))
                return scan_fail(s, 400, "invalid Content-Length");
        } else if (fy_ieq(h[i].name, h[i].name_len, "transfer-encoding")) {
            /* Only plain "chunked" frames a request we can forward
             * unambiguously (RFC 9112 §6.1); a second field would make a
             * coding list. */
            if (++n_te > 1)
                return scan_fail(s, 400, "duplicate Transfer-Encoding");
            if (!fy_ieq(v, vn, "chunked"))
                return scan_fail(s, 400, "Transfer-Encoding other than chunked");
        }
    }

    if (n_te > 0 && req->minor == 0)
        return scan_fail(s, 400, "Transfer-Encoding in an HTTP/1.0 request");
    if (n_te > 0 && n_cl > 0)
        return scan_fail(s, 400, "both Transfer-Encoding and Content-Length");
    if (n_host == 0 && req->minor == 1)
        return scan_fail(s, 400, "missing Host");

    rc = request_target(s, req);
    if (rc != FY_OK)
        return rc;
    if (req->flags & FY_H1_F_ABSOLUTE) {
        /* RFC 9112 §3.2.2 lets a server ignore Host here; a relay that
         * routes on Host must not, or Host and target could name two
         * different tunnels. Compared as sent: no port defaulting. */
        if (req->host == NULL) {
            req->host = req->authority; /* HTTP/1.0 without Host */
            req->host_len = req->authority_len;
        } else if (!slice_ieq(req->host, req->host_len, req->authority, req->authority_len)) {
            return scan_fail(s, 400, "absolute-form authority differs from Host");
        }
    }

    /* Content-Length: 0 is reported as no body (content_length 0) so that
     * callers never special-case an empty LENGTH body. */
    if (n_te > 0)
        req->body = FY_H1_BODY_CHUNKED;
    else if (n_cl > 0 && req->content_length > 0)
        req->body = FY_H1_BODY_LENGTH;
    else
        req->body = FY_H1_BODY_NONE;

    req->flags |= connection_flags(h, req->nheaders, req->minor, &upgrade_token);
    /* A server MUST ignore Upgrade and Expect in an HTTP/1.0 request (RFC
     * 9110 §7.8, §10.1.1), so neither raises a flag there. */
    if (req->minor == 1) {
        if (upgrade_header(h, req->nheaders, &websocket)) {
            if (upgrade_token)
                req->flags |= FY_H1_F_UPGRADE;
            if (websocket)
                req->flags |= FY_H1_F_WEBSOCKET;
        }
        for (i = 0; i < req->nheaders; i++)
            if (fy_ieq(h[i].name, h[i].name_len, "expect")
                && fy_ieq(h[i].value, h[i].value_len, "100-continue"))
                req->flags |= FY_H1_F_CONTINUE;
    }
    return FY_OK;
}

static const char *status_code_name(int status)
{
    switch (status) {
    case 431:
        return "header_too_large";
    case 505:
        return "bad_version";
    default:
        return "bad_request";
    }
}

int fy_h1_parse_request(const char *buf, size_t len, fy_h1_request_t *req,
                        fy_h1_header_t *headers, const fy_h1_limits_t *limits)
{
    /* head_len is returned as an int, so the window never exceeds INT_MAX. */
    size_t cap = FY_MIN(limits->max_head_bytes, (size_t)INT_MAX);
    struct h1_scan s = { .b = buf, .n = FY_MIN(len, cap) };
    int rc;

    *req = (fy_h1_request_t){ .headers = headers };
    rc = scan_request_line(&s, req);
    if (rc == FY_OK)
        rc = scan_fields(&s, headers, limits->max_headers, &req->nheaders);
    if (rc == FY_AGAIN) {
        if (len < cap)
            return FY_AGAIN;
        rc = scan_fail(&s, 431, "header section too large");
    }
    if (rc == FY_OK) {
        req->head_len = s.pos;
        rc = request_semantics(&s, req);
    }
    if (rc != FY_OK) {
        req->err_status = s.status;
        req->err_code = status_code_name(s.status);
        req->err_reason = s.reason;
        return FY_ERR;
    }
    return (int)req->head_len;
}

/* Body framing of a response (RFC 9112 §6.3, in its order). */
static int response_semantics(struct h1_scan *s, fy_h1_response_t *resp, bool request_was_head)
{
    const fy_h1_header_t *h = resp->headers;
    const char *te_last = NULL;
    size_t i, te_last_len = 0, n_cl = 0, n_te = 0;
    uint64_t cl = 0;
    bool upgrade_token, websocket;

    for (i = 0; i < resp->nheaders; i++) {
        if (fy_ieq(h[i].name, h[i].name_len, "content-length")) {
            uint64_t v;
            /* Equal duplicates are one length (RFC 9110 §8.6); differing
             * ones leave no safe framing. Lists stay an error. */
            if (!parse_content_length(h[i].value, h[i].value_len, &v))
                return scan_fail(s, 400, "invalid Content-Length");
            if (n_cl++ > 0 && v != cl)
                return scan_fail(s, 400, "differing Content-Length");
            cl = v;
        } else if (fy_ieq(h[i].name, h[i].name_len, "transfer-encoding")) {
            /* Several fields form one list; keep its last non-empty
             * element (RFC 9110 §5.3, §5.6.1). */
            const char *v = h[i].value;
            size_t vn = h[i].value_len, j = vn;
            n_te++;
            while (j > 0) {
                size_t end = j, start;
                while (j > 0 && v[j - 1] != ',')
                    j--;
                start = j;
                while (start < end && is_ows((unsigned char)v[start]))
                    start++;
                while (end > start && is_ows((unsigned char)v[end - 1]))
                    end--;
                if (end > start) {
                    te_last = v + start;
                    te_last_len = end - start;
                    break;
                }
                if (j > 0)
                    j--; /* step over the comma */
            }
        }
    }

    resp->flags |= connection_flags(h, resp->nheaders, resp->minor, &upgrade_token);
    if (resp->status == 101) {
        resp->flags |= FY_H1_F_UPGRADE;
        if (upgrade_header(h, resp->nheaders, &websocket) && websocket)
            resp->flags |= FY_H1_F_WEBSOCKET;
    }

    if (request_was_head || resp->status < 200 || resp->status == 204 || resp->status == 304) {
        resp->body = FY_H1_BODY_NONE;
        return FY_OK;
    }
    if (n_te > 0) {
        /* Transfer-Encoding wins; a Content-Length beside it hints at
         * smuggling, so the connection is not reused (RFC 9112 §6.1).
         * An HTTP/1.0 message with it has faulty framing: read to close. */
        if (n_cl > 0 || resp->minor == 0)
            resp->flags |= FY_H1_F_CLOSE;
        if (resp->minor == 1 && te_last != NULL && fy_ieq(te_last, te_last_len, "chunked"))
            resp->body = FY_H1_BODY_CHUNKED;
        else
            resp->body = FY_H1_BODY_UNTIL_CLOSE;
        return FY_OK;
    }
    if (n_cl > 0) {
        /* As for requests, Content-Length: 0 is no body. */
        resp->content_length = cl;
        resp->body = cl > 0 ? FY_H1_BODY_LENGTH : FY_H1_BODY_NONE;
        return FY_OK;
    }
    resp->body = FY_H1_BODY_UNTIL_CLOSE;
    return FY_OK;
}

int fy_h1_parse_response(const char *buf, size_t len, fy_h1_response_t *resp,
                         fy_h1_header_t *headers, const fy_h1_limits_t *limits,
                         bool request_was_head)
{
    size_t cap = FY_MIN(limits->max_head_bytes, (size_t)INT_MAX);
    struct h1_scan s = { .b = buf, .n = FY_MIN(len, cap) };
    int rc;

    *resp = (fy_h1_response_t){ .headers = headers };
    rc = scan_status_line(&s, resp);
    if (rc == FY_OK)
        rc = scan_fields(&s, headers, limits->max_headers, &resp->nheaders);
    if (rc == FY_AGAIN) {
        if (len < cap)
            return FY_AGAIN;
        rc = scan_fail(&s, 431, "header section too large");
    }
    if (rc == FY_OK) {
        resp->head_len = s.pos;
        rc = response_semantics(&s, resp, request_was_head);
    }
    if (rc != FY_OK) {
        resp->err_reason = s.reason;
        return FY_ERR;
    }
    return (int)resp->head_len;
}

/* ---- chunked body (RFC 9112 §7.1) ---- */

/* States of fy_h1_chunked_t.state; zero is the start of a size line. */
enum {
    sw_size_start = 0, /* first hex digit of a chunk-size */
    sw_size,           /* more hex digits, or what ends the size */
    sw_size_ws,        /* BWS after the size: only ';' may follow */
    sw_ext,            /* chunk-ext, skipped up to CR */
    sw_size_lf,        /* LF ending the size line */
    sw_data,           /* st->remaining data bytes */
    sw_data_cr,        /* CRLF after the data */
    sw_data_lf,
    sw_trailer_start,  /* start of a trailer line, or the final CRLF */
    sw_trailer_name,
    sw_trailer_value,
    sw_trailer_lf,
    sw_final_lf,
    sw_done,
    sw_error,
};

static ssize_t chunk_fail(fy_h1_chunked_t *st, const char *reason)
{
    st->state = sw_error;
    st->err_reason = reason;
    return FY_ERR;
}

ssize_t fy_h1_chunked_scan(fy_h1_chunked_t *st, const char *buf, size_t len)
{
    size_t i = 0;

    if (st->state == sw_error)
        return FY_ERR;
    if (st->done || st->state == sw_done)
        return 0;

    while (i < len) {
        unsigned char c = (unsigned char)buf[i];
        int v;

        /* Every trailer byte, the final CRLF included, counts to the
         * trailer bound. */
        if (st->state >= sw_trailer_start && st->state <= sw_final_lf
            && ++st->line_bytes > CHUNK_TRAILER_MAX)
            return chunk_fail(st, "trailer section too large");

        switch (st->state) {
        case sw_size_start:
            v = hex_value(c);
            if (v < 0)
                return chunk_fail(st, c == '\n' ? "bare LF" : "invalid chunk size");
            st->remaining = (uint64_t)v;
            st->size_digits = 1;
            st->line_bytes = 1;
            st->state = sw_size;
            break;

        case sw_size:
            v = hex_value(c);
            if (v >= 0) {
                /* Leading zeros count too: the bound is on the line, not
                 * just the value, and keeps remaining below 2^60. */
                if (st->size_digits == CHUNK_SIZE_DIGITS)
                    return chunk_fail(st, "chunk size too large");
                st->remaining = st->remaining << 4 | (uint64_t)v;
                st->size_digits++;
            } else if (c == ';') {
                st->state = sw_ext;
            } else if (is_ows(c)) {
                st->state = sw_size_ws;
            } else if (c == '\r') {
                st->state = sw_size_lf;
            } else {
                return chunk_fail(st, c == '\n' ? "bare LF" : "invalid chunk size");
            }
            st->line_bytes++;
            break;

        case sw_size_ws:
            /* chunk-ext = *( BWS ";" ... ): whitespace only before ';' */
            if (c == ';')
                st->state = sw_ext;
            else if (!is_ows(c))
                return chunk_fail(st, "invalid chunk size");
            if (++st->line_bytes > CHUNK_LINE_MAX)
                return chunk_fail(st, "chunk extensions too long");
            break;

        case sw_ext:
            /* Extensions are not interpreted, but a CTL in one would let
             * two parsers disagree on where the line ends. */
            if (c == '\r')
                st->state = sw_size_lf;
            else if (c == '\n')
                return chunk_fail(st, "bare LF");
            else if (!is_field_byte(c))
                return chunk_fail(st, "invalid byte in chunk extension");
            else if (++st->line_bytes > CHUNK_LINE_MAX)
                return chunk_fail(st, "chunk extensions too long");
            break;

        case sw_size_lf:
            if (c != '\n')
                return chunk_fail(st, "bare CR");
            if (st->remaining == 0) {
                st->line_bytes = 0;
                st->state = sw_trailer_start;
            } else {
                st->state = sw_data;
            }
            break;

        case sw_data: {
            size_t take = len - i;
            if ((uint64_t)take > st->remaining)
                take = (size_t)st->remaining;
            st->remaining -= take;
            i += take;
            if (st->remaining == 0)
                st->state = sw_data_cr;
            continue;
        }

        case sw_data_cr:
            if (c != '\r')
                return chunk_fail(st, "missing CRLF after chunk data");
            st->state = sw_data_lf;
            break;

        case sw_data_lf:
            if (c != '\n')
                return chunk_fail(st, "missing CRLF after chunk data");
            st->state = sw_size_start;
            break;

        case sw_trailer_start:
            /* trailer-section = *( field-line CRLF ), then CRLF (§7.1.2). */
            if (c == '\r')
                st->state = sw_final_lf;
            else if (is_tchar(c))
                st->state = sw_trailer_name;
            else
                return chunk_fail(st, c == '\n' ? "bare LF" : "invalid trailer field");
            break;

        case sw_trailer_name:
            if (c == ':')
                st->state = sw_trailer_value;
            else if (!is_tchar(c))
                return chunk_fail(st, c == '\n' ? "bare LF" : "invalid trailer field");
            break;

        case sw_trailer_value:
            if (c == '\r')
                st->state = sw_trailer_lf;
            else if (c == '\n')
                return chunk_fail(st, "bare LF");
            else if (!is_field_byte(c))
                return chunk_fail(st, "invalid byte in trailer field");
            break;

        case sw_trailer_lf:
            if (c != '\n')
                return chunk_fail(st, "bare CR");
            st->state = sw_trailer_start;
            break;

        case sw_final_lf:
            if (c != '\n')
                return chunk_fail(st, "bare CR");
            st->state = sw_done;
            st->done = true;
            return (ssize_t)(i + 1);

        default:
            return chunk_fail(st, "invalid scanner state");
        }
        i++;
    }
    return (ssize_t)i;
}

/* ---- field helpers ---- */

const fy_h1_header_t *fy_h1_find(const fy_h1_header_t *h, size_t n, const char *name)
{
    size_t i;

    for (i = 0; i < n; i++)
        if (fy_ieq(h[i].name, h[i].name_len, name))
            return &h[i];
    return NULL;
}

bool fy_h1_has_token(const char *value, size_t len, const char *token)
{
    size_t i = 0;

    while (i < len) {
        size_t start, end;
        while (i < len && (is_ows((unsigned char)value[i]) || value[i] == ','))
            i++;
        start = i;
        while (i < len && value[i] != ',')
            i++;
        end = i;
        while (end > start && is_ows((unsigned char)value[end - 1]))
            end--;
        if (end > start && fy_ieq(value + start, end - start, token))
            return true;
    }
    return false;
}

void fy_h1_framer_start(fy_h1_framer_t *f, enum fy_h1_body kind, uint64_t content_length)
{
    memset(f, 0, sizeof(*f));
    f->kind = kind;
    f->left = kind == FY_H1_BODY_LENGTH ? content_length : 0;
    f->done = kind == FY_H1_BODY_NONE || (kind == FY_H1_BODY_LENGTH && content_length == 0);
}

ssize_t fy_h1_framer_scan(fy_h1_framer_t *f, const char *buf, size_t len)
{
    ssize_t used;

    if (f->done)
        return 0;
    switch (f->kind) {
    case FY_H1_BODY_LENGTH:
        used = (ssize_t)(len < f->left ? len : f->left);
        f->left -= (uint64_t)used;
        f->done = f->left == 0;
        return used;
    case FY_H1_BODY_CHUNKED:
        used = fy_h1_chunked_scan(&f->chunked, buf, len);
        f->done = used >= 0 && f->chunked.done;
        return used;
    case FY_H1_BODY_UNTIL_CLOSE:
        return (ssize_t)len;
    default:
        f->done = true;
        return 0;
    }
}
