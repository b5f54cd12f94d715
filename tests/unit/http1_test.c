/*
 * http1_test.c: unit tests of common/http1: the strict request and response
 * head parsers and the chunked scanner. Every accepted input is also fed
 * truncated at every length (must be FY_AGAIN), every rejected input at
 * every length (must never be accepted), each from a heap copy of exactly
 * that length so that a sanitizer build catches any read past the end.
 */
#include "tests/unit/unit.h"
#include "http1/http1.h"

#define MAXH 100
static fy_h1_header_t hdrs[MAXH];
static const fy_h1_limits_t lim = { .max_headers = MAXH, .max_head_bytes = 32768 };

/* Parse from a heap buffer of exactly n bytes. */
static int req_n(const char *s, size_t n, fy_h1_request_t *r, const fy_h1_limits_t *l)
{
    char *copy = malloc(n ? n : 1);
    int rc;

    cr_assert_not_null(copy);
    memcpy(copy, s, n);
    rc = fy_h1_parse_request(copy, n, r, hdrs, l);
    free(copy);
    return rc;
}

static int resp_n(const char *s, size_t n, fy_h1_response_t *r, const fy_h1_limits_t *l, bool head)
{
    char *copy = malloc(n ? n : 1);
    int rc;

    cr_assert_not_null(copy);
    memcpy(copy, s, n);
    rc = fy_h1_parse_response(copy, n, r, hdrs, l, head);
    free(copy);
    return rc;
}

/* A valid request: accepted in full, FY_AGAIN for every proper prefix. The
 * slices are checked by the caller from a parse of the literal itself. */
#define REQ_OK(lit, r)                                                        \
    do {                                                                      \
        size_t k_;                                                            \
        for (k_ = 0; k_ < sizeof(lit) - 1; k_++) {                            \
            fy_h1_request_t t_;                                               \
            cr_assert_eq(req_n(lit, k_, &t_, &lim), FY_AGAIN,                 \
                         "prefix %zu of %s", k_, #lit);                       \
        }                                                                     \
        cr_assert_eq(fy_h1_parse_request(lit, sizeof(lit) - 1, r, hdrs, &lim), \
                     (int)(sizeof(lit) - 1), "%s: %s", #lit,                  \
                     (r)->err_reason ? (r)->err_reason : "");                 \
    } while (0)

/* A rejected request: the expected status in full, and no prefix is ever
 * accepted (each prefix is FY_AGAIN or the same error). */
#define REQ_BAD(lit, status, code)                                            \
    do {                                                                      \
        fy_h1_request_t r_;                                                   \
        size_t k_;                                                            \
        int rc_;                                                              \
        for (k_ = 0; k_ < sizeof(lit) - 1; k_++) {                            \
            rc_ = req_n(lit, k_, &r_, &lim);                                  \
            cr_assert(rc_ == FY_AGAIN || (rc_ == FY_ERR && r_.err_status == (status)), \
                      "prefix %zu of %s gave %d", k_, #lit, rc_);             \
        }                                                                     \
        rc_ = req_n(lit, sizeof(lit) - 1, &r_, &lim);                         \
        cr_assert_eq(rc_, FY_ERR, "%s was accepted", #lit);                   \
        cr_assert_eq(r_.err_status, (status), "%s: %d %s", #lit,              \
                     r_.err_status, r_.err_reason);                           \
        cr_assert_str_eq(r_.err_code, (code));                                \
        cr_assert_not_null(r_.err_reason);                                    \
    } while (0)

#define BAD400(lit) REQ_BAD(lit, 400, "bad_request")

#define RESP_OK(lit, r, head)                                                 \
    do {                                                                      \
        size_t k_;                                                            \
        for (k_ = 0; k_ < sizeof(lit) - 1; k_++) {                            \
            fy_h1_response_t t_;                                              \
            cr_assert_eq(resp_n(lit, k_, &t_, &lim, head), FY_AGAIN,          \
                         "prefix %zu of %s", k_, #lit);                       \
        }                                                                     \
        cr_assert_eq(fy_h1_parse_response(lit, sizeof(lit) - 1, r, hdrs, &lim, head), \
                     (int)(sizeof(lit) - 1), "%s: %s", #lit,                  \
                     (r)->err_reason ? (r)->err_reason : "");                 \
    } while (0)

#define RESP_BAD(lit)                                                         \
    do {                                                                      \
        fy_h1_response_t r_;                                                  \
        size_t k_;                                                            \
        for (k_ = 0; k_ < sizeof(lit) - 1; k_++)                              \
            cr_assert_neq(resp_n(lit, k_, &r_, &lim, false), (int)k_);        \
        cr_assert_eq(resp_n(lit, sizeof(lit) - 1, &r_, &lim, false), FY_ERR,  \
                     "%s was accepted", #lit);                                \
        cr_assert_not_null(r_.err_reason);                                    \
    } while (0)

static bool slice_is(const char *p, size_t n, const char *lit)
{
    return p != NULL && n == strlen(lit) && memcmp(p, lit, n) == 0;
}

/* ---------------------------------------------------------------- requests */

Test(request, simple_get)
{
    static const char m[] = "GET /index.html?a=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\n\r\n";
    fy_h1_request_t r;

    REQ_OK(m, &r);
    cr_assert(slice_is(r.method, r.method_len, "GET"));
    cr_assert(slice_is(r.target, r.target_len, "/index.html?a=1"));
    cr_assert(slice_is(r.path, r.path_len, "/index.html?a=1"));
    cr_assert(slice_is(r.host, r.host_len, "example.com"));
    cr_assert_null(r.authority);
    cr_assert_eq(r.minor, 1);
    cr_assert_eq(r.nheaders, 2);
    cr_assert_eq(r.headers, hdrs);
    cr_assert(slice_is(hdrs[1].name, hdrs[1].name_len, "User-Agent"));
    cr_assert(slice_is(hdrs[1].value, hdrs[1].value_len, "t"));
    cr_assert_eq(r.head_len, sizeof(m) - 1);
    cr_assert_eq(r.body, FY_H1_BODY_NONE);
    cr_assert_eq(r.flags, 0);
}

Test(request, post_content_length)
{
    static const char m[] = "POST /u HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello world";
    fy_h1_request_t r;

    cr_assert_eq(fy_h1_parse_request(m, sizeof(m) - 1, &r, hdrs, &lim), (int)(sizeof(m) - 1 - 11));
    cr_assert_eq(r.body, FY_H1_BODY_LENGTH);
    cr_assert_eq(r.content_length, 11);
    cr_assert_eq(r.flags, 0);
}

Test(request, content_length_zero_is_no_body)
{
    static const char m[] = "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n";
    fy_h1_request_t r;

    REQ_OK(m, &r);
    cr_assert_eq(r.body, FY_H1_BODY_NONE);
    cr_assert_eq(r.content_length, 0);
}

Test(request, content_length_max)
{
    static const char ok[] = "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 9223372036854775807\r\n\r\n";
    fy_h1_request_t r;

    REQ_OK(ok, &r);
    cr_assert_eq(r.content_length, (uint64_t)INT64_MAX);
    BAD400("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 9223372036854775808\r\n\r\n");
    BAD400("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 18446744073709551616\r\n\r\n");
    BAD400("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999999\r\n\r\n");
}

Test(request, chunked)
{
    static const char m[] = "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:  ChUnKeD \t\r\n\r\n";
    fy_h1_request_t r;

    REQ_OK(m, &r);
    cr_assert_eq(r.body, FY_H1_BODY_CHUNKED);
}

Test(request, http10)
{
    static const char m[] = "GET / HTTP/1.0\r\n\r\n";
    static const char ka[] = "GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n";
    fy_h1_request_t r;

    REQ_OK(m, &r);
    cr_assert_eq(r.minor, 0);
    cr_assert_null(r.host);
    cr_assert_eq(r.flags, FY_H1_F_CLOSE);
    REQ_OK(ka, &r);
    cr_assert_eq(r.flags, 0);
}

Test(request, keep_alive_and_close)
{
    static const char c[] = "GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Close\r\n\r\n";
    static const char k[] = "GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n\r\n";
    static const char two[] = "GET / HTTP/1.1\r\nHost: h\r\nConnection: foo\r\nConnection: close\r\n\r\n";
    static const char notok[] = "GET / HTTP/1.1\r\nHost: h\r\nConnection: closed\r\n\r\n";
    fy_h1_request_t r;

    REQ_OK(c, &r);
    cr_assert_eq(r.flags, FY_H1_F_CLOSE);
    REQ_OK(k, &r);
    cr_assert_eq(r.flags, 0);
    REQ_OK(two, &r);
    cr_assert_eq(r.flags, FY_H1_F_CLOSE);
    REQ_OK(notok, &r);
    cr_assert_eq(r.flags, 0);
}

Test(request, websocket_upgrade)
{
    static const char m[] = "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\n"
                            "Upgrade: WebSocket\r\nSec-WebSocket-Version: 13\r\n\r\n";
    static const char no_conn[] = "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n";
    static const char no_upg[] = "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\n\r\n";
    static const char h2c[] = "GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n";
    static const char v10[] = "GET / HTTP/1.0\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
    fy_h1_request_t r;

    REQ_OK(m, &r);
    cr_assert_eq(r.flags, FY_H1_F_UPGRADE | FY_H1_F_WEBSOCKET);
    REQ_OK(no_conn, &r);
    cr_assert_eq(r.flags, FY_H1_F_WEBSOCKET);
    REQ_OK(no_upg, &r);
    cr_assert_eq(r.flags, 0);
    REQ_OK(h2c, &r);
    cr_assert_eq(r.flags, FY_H1_F_UPGRADE);
    /* RFC 9110 §7.8: Upgrade in an HTTP/1.0 request is ignored */
    REQ_OK(v10, &r);
    cr_assert_eq(r.flags, FY_H1_F_CLOSE);
}

Test(request, expect_continue)
{
    static const char m[] = "PUT /f HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nContent-Length: 5\r\n\r\n";
    static const char other[] = "PUT /f HTTP/1.1\r\nHost: h\r\nExpect: 100-continuex\r\n\r\n";
    static const char v10[] = "PUT /f HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n";
    fy_h1_request_t r;

    REQ_OK(m, &r);
    cr_assert_eq(r.flags, FY_H1_F_CONTINUE);
    cr_assert_eq(r.body, FY_H1_BODY_LENGTH);
    REQ_OK(other, &r);
    cr_assert_eq(r.flags, 0);
    REQ_OK(v10, &r);
    cr_assert_eq(r.flags, FY_H1_F_CLOSE);
}

Test(request, ows_trimmed_and_empty_value)
{
    static const char m[] = "GET / HTTP/1.1\r\nHost:h\r\nX-A: \t a b \t \r\nX-Empty:\r\nX-Sp:   \r\n\r\n";
    fy_h1_request_t r;

    REQ_OK(m, &r);
    cr_assert_eq(r.nheaders, 4);
    cr_assert(slice_is(hdrs[0].value, hdrs[0].value_len, "h"));
    cr_assert(slice_is(hdrs[1].value, hdrs[1].value_len, "a b"));
    cr_assert_eq(hdrs[2].value_len, 0);
    cr_assert_eq(hdrs[3].value_len, 0);
}

Test(request, obs_text_in_value)
{
    static const char m[] = "GET / HTTP/1.1\r\nHost: h\r\nX-U: caf\xc3\xa9\r\n\r\n";
    fy_h1_request_t r;

    REQ_OK(m, &r);
}

Test(request, absolute_form)
{
    static const char m[] = "GET http://Example.COM:8080/a/b?c HTTP/1.1\r\nHost: example.com:8080\r\n\r\n";
    static const char nopath[] = "GET HTTPS://example.com HTTP/1.1\r\nHost: example.com\r\n\r\n";
    static const char v10[] = "GET http://e.com/x HTTP/1.0\r\n\r\n";
    fy_h1_request_t r;

    REQ_OK(m, &r);
    cr_assert_eq(r.flags & FY_H1_F_ABSOLUTE, FY_H1_F_ABSOLUTE);
    cr_assert(slice_is(r.authority, r.authority_len, "Example.COM:8080"));
    cr_assert(slice_is(r.path, r.path_len, "/a/b?c"));
    cr_assert(slice_is(r.host, r.host_len, "example.com:8080"));
    cr_assert(slice_is(r.target, r.target_len, "http://Example.COM:8080/a/b?c"));

    /* the comparison folds case on both sides */
    {
        static const char up[] = "GET http://a.com/ HTTP/1.1\r\nHost: A.COM\r\n\r\n";
        REQ_OK(up, &r);
    }

    REQ_OK(nopath, &r);
    cr_assert(slice_is(r.path, r.path_len, "/"));
    cr_assert(slice_is(r.authority, r.authority_len, "example.com"));

    /* HTTP/1.0 without Host: host is taken from the authority */
    REQ_OK(v10, &r);
    cr_assert(slice_is(r.host, r.host_len, "e.com"));
    cr_assert(slice_is(r.path, r.path_len, "/x"));
}

Test(request, absolute_form_rejections)
{
    BAD400("GET http://a.com/ HTTP/1.1\r\nHost: b.com\r\n\r\n");
    BAD400("GET http://a.com/ HTTP/1.1\r\nHost: a.com:80\r\n\r\n");
    BAD400("GET http://a.com/ HTTP/1.1\r\nHost: a.co\r\n\r\n");
    BAD400("GET http://a.com/ HTTP/1.1\r\n\r\n");
    BAD400("GET http:///x HTTP/1.1\r\nHost: h\r\n\r\n");
    BAD400("GET http://u@a.com/ HTTP/1.1\r\nHost: u@a.com\r\n\r\n");
    BAD400("GET http://a.com?q HTTP/1.1\r\nHost: a.com\r\n\r\n");
    BAD400("GET ftp://a.com/ HTTP/1.1\r\nHost: a.com\r\n\r\n");
    BAD400("GET a.com/ HTTP/1.1\r\nHost: a.com\r\n\r\n");
}

Test(request, connect)
{
    static const char m[] = "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n";
    static const char v6[] = "CONNECT [::1]:8443 HTTP/1.1\r\nHost: [::1]:8443\r\n\r\n";
    fy_h1_request_t r;

    REQ_OK(m, &r);
    cr_assert_eq(r.flags, FY_H1_F_CONNECT);
    cr_assert_null(r.path);
    cr_assert_eq(r.path_len, 0);
    cr_assert(slice_is(r.target, r.target_len, "example.com:443"));
    REQ_OK(v6, &r);
    cr_assert_eq(r.flags, FY_H1_F_CONNECT);

    BAD400("CONNECT example.com HTTP/1.1\r\nHost: h\r\n\r\n");
    BAD400("CONNECT example.com: HTTP/1.1\r\nHost: h\r\n\r\n");
    BAD400("CONNECT :443 HTTP/1.1\r\nHost: h\r\n\r\n");
    BAD400("CONNECT / HTTP/1.1\r\nHost: h\r\n\r\n");
    BAD400("CONNECT [::1] HTTP/1.1\r\nHost: h\r\n\r\n");
    BAD400("CONNECT a.com:44x3 HTTP/1.1\r\nHost: h\r\n\r\n");
}

Test(request, asterisk)
{
    static const char m[] = "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n";
    fy_h1_request_t r;

    REQ_OK(m, &r);
    cr_assert(slice_is(r.path, r.path_len, "*"));
    cr_assert_eq(r.flags, 0);
    BAD400("GET * HTTP/1.1\r\nHost: h\r\n\r\n");
    BAD400("options * HTTP/1.1\r\nHost: h\r\n\r\n");
}

Test(request, framing_rejections)
{
    /* CL+TE in both orders */
    BAD400("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n");
    BAD400("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n");
    /* duplicate Content-Length, same or differing */
    BAD400("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n");
    BAD400("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n");
    BAD400("POST / HTTP/1.1\r\nHost: h\r\ncontent-length: 5\r\nCONTENT-LENGTH: 5\r\n\r\n");
    /* invalid Content-Length values */
    BAD400("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\n");
    BAD400("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\n");
    BAD400("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n");
    BAD400("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x10\r\n\r\n");
    BAD400("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1 0\r\n\r\n");
    BAD400("POST / HTTP/1.1\r\nHost: h\r\nContent-Length:\r\n\r\n");
    BAD400("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\t;\r\n\r\n");
    /* Transfer-Encoding other than exactly chunked */
    BAD400("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity\r\n\r\n");
    BAD400("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity\r\n\r\n");
    BAD400("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
    BAD400("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked,\r\n\r\n");
    BAD400("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n");
    BAD400("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: \"chunked\"\r\n\r\n");
    BAD400("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n\r\n");
    BAD400("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n");
    /* Transfer-Encoding in HTTP/1.0 */
    BAD400("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n");
}

Test(request, host_rejections)
{
    BAD400("GET / HTTP/1.1\r\n\r\n");
    BAD400("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n");
    BAD400("GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n");
    BAD400("GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n");
    BAD400("GET / HTTP/1.1\r\nHost: a b\r\n\r\n");
    BAD400("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n");
    BAD400("GET / HTTP/1.1\r\nHost: user@a\r\n\r\n");
}

Test(request, line_ending_rejections)
{
    BAD400("GET / HTTP/1.1\nHost: h\r\n\r\n");
    BAD400("GET / HTTP/1.1\r\nHost: h\n\r\n");
    BAD400("GET / HTTP/1.1\r\nHost: h\r\n\n");
    BAD400("GET / HTTP/1.1\r\nHost: h\r\nX: a\nb\r\n\r\n");
    BAD400("GET / HTTP/1.1\rHost: h\r\n\r\n");
    BAD400("GET / HTTP/1.1\r\nHost: h\r\r\n\r\n");
    BAD400("GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n");
    BAD400("GET / HTTP/1.1\r\nHost: h\r\n\r\r\n");
    BAD400("GET\r / HTTP/1.1\r\nHost: h\r\n\r\n");
    BAD400("GET /\r HTTP/1.1\r\nHost: h\r\n\r\n");
    BAD400("GET /\n\r\n");
    /* a leading empty line is rejected, not skipped */
    BAD400("\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n");
    BAD400("\nGET / HTTP/1.1\r\nHost: h\r\n\r\n");
}

Test(request, field_rejections)
{
    /* obs-fold, SP or HTAB */
    BAD400("GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n");
    BAD400("GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n\tb\r\n\r\n");
    BAD400("GET / HTTP/1.1\r\n Host: h\r\n\r\n");
    /* whitespace before the colon, empty or invalid name */
    BAD400("GET / HTTP/1.1\r\nHost : h\r\n\r\n");
    BAD400("GET / HTTP/1.1\r\nHost\t: h\r\n\r\n");
    BAD400("GET / HTTP/1.1\r\nHost: h\r\n: v\r\n\r\n");
    BAD400("GET / HTTP/1.1\r\nHost: h\r\nX(y): v\r\n\r\n");
    BAD400("GET / HTTP/1.1\r\nHost: h\r\nX\x80: v\r\n\r\n");
    BAD400("GET / HTTP/1.1\r\nHost: h\r\nNoColon\r\n\r\n");
    BAD400("GET / HTTP/1.1\r\nHost: h\r\nNoColon\n\r\n");
    /* CTLs in values: NUL, DEL, ESC, VT, FF */
    BAD400("GET / HTTP/1.1\r\nHost: h\r\nX: a\0b\r\n\r\n");
    BAD400("GET / HTTP/1.1\r\nHost: h\r\nX: \0\r\n\r\n");
    BAD400("GET / HTTP/1.1\r\nHost: h\r\nX: a\x7f\r\n\r\n");
    BAD400("GET / HTTP/1.1\r\nHost: h\r\nX: a\x1b\r\n\r\n");
    BAD400("GET / HTTP/1.1\r\nHost: h\r\nX: a\x0b\r\n\r\n");
    BAD400("GET / HTTP/1.1\r\nHost: h\r\nX: a\x0c\r\n\r\n");
}

Test(request, request_line_rejections)
{
    BAD400("G(T / HTTP/1.1\r\nHost: h\r\n\r\n");
    BAD400("GE@T / HTTP/1.1\r\nHost: h\r\n\r\n");
    BAD400("G\0T / HTTP/1.1\r\nHost: h\r\n\r\n");
    BAD400(" GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    BAD400("GET  / HTTP/1.1\r\nHost: h\r\n\r\n");
    BAD400("GET /  HTTP/1.1\r\nHost: h\r\n\r\n");
    BAD400("GET\t/ HTTP/1.1\r\nHost: h\r\n\r\n");
    BAD400("GET /\tHTTP/1.1\r\nHost: h\r\n\r\n");
    BAD400("GET /a\x01 HTTP/1.1\r\nHost: h\r\n\r\n");
    BAD400("GET /caf\xc3\xa9 HTTP/1.1\r\nHost: h\r\n\r\n");
    BAD400("GET /a\x7f HTTP/1.1\r\nHost: h\r\n\r\n");
    BAD400("GET /a#frag HTTP/1.1\r\nHost: h\r\n\r\n");
    BAD400("GET / HTTP/1.1 \r\nHost: h\r\n\r\n");
    BAD400("GET / http/1.1\r\nHost: h\r\n\r\n");
    BAD400("GET / HTTP/1.10\r\nHost: h\r\n\r\n");
    BAD400("GET / HTTP/11.1\r\nHost: h\r\n\r\n");
    BAD400("GET / HTTP/1\r\nHost: h\r\n\r\n");
    BAD400("GET / HTTP/1.x\r\nHost: h\r\n\r\n");
    BAD400("GET / FOO\r\nHost: h\r\n\r\n");
    BAD400("GET\r\n\r\n");
    BAD400("GET \r\n\r\n");
    BAD400("\r\n\r\n");
}

Test(request, versions)
{
    REQ_BAD("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, "bad_version");
    REQ_BAD("GET / HTTP/1.2\r\nHost: h\r\n\r\n", 505, "bad_version");
    REQ_BAD("GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505, "bad_version");
    REQ_BAD("GET / HTTP/0.9\r\n\r\n", 505, "bad_version");
    REQ_BAD("GET / HTTP/3.1\r\n\r\n", 505, "bad_version");
    /* HTTP/0.9: 505 once the line is complete, not before */
    REQ_BAD("GET /\r\n", 505, "bad_version");
    REQ_BAD("GET /index.html\r\n\r\n", 505, "bad_version");
}

Test(request, http09_needs_crlf)
{
    fy_h1_request_t r;

    cr_assert_eq(fy_h1_parse_request("GET /", 5, &r, hdrs, &lim), FY_AGAIN);
    cr_assert_eq(fy_h1_parse_request("GET /\r", 6, &r, hdrs, &lim), FY_AGAIN);
    cr_assert_eq(fy_h1_parse_request("GET /\r\n", 7, &r, hdrs, &lim), FY_ERR);
    cr_assert_eq(r.err_status, 505);
    /* an error is reported as soon as it is seen, head incomplete or not */
    cr_assert_eq(fy_h1_parse_request("GET / HTTP/1.1\r\nX : y", 21, &r, hdrs, &lim), FY_ERR);
    cr_assert_eq(r.err_status, 400);
}

Test(request, too_many_headers)
{
    static const char m[] = "GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\n\r\n";
    fy_h1_limits_t l3 = { .max_headers = 3, .max_head_bytes = 32768 };
    fy_h1_limits_t l2 = { .max_headers = 2, .max_head_bytes = 32768 };
    fy_h1_limits_t l0 = { .max_headers = 0, .max_head_bytes = 32768 };
    fy_h1_request_t r;

    cr_assert_eq(req_n(m, sizeof(m) - 1, &r, &l3), (int)(sizeof(m) - 1));
    cr_assert_eq(r.nheaders, 3);
    cr_assert_eq(req_n(m, sizeof(m) - 1, &r, &l2), FY_ERR);
    cr_assert_eq(r.err_status, 431);
    cr_assert_str_eq(r.err_code, "header_too_large");
    /* reported as soon as the extra field starts */
    cr_assert_eq(req_n(m, 33, &r, &l2), FY_ERR);
    cr_assert_eq(r.err_status, 431);
    cr_assert_eq(req_n("GET / HTTP/1.0\r\n\r\n", 18, &r, &l0), 18);
    cr_assert_eq(req_n(m, sizeof(m) - 1, &r, &l0), FY_ERR);
    cr_assert_eq(r.err_status, 431);
}

Test(request, many_headers_at_limit)
{
    static char m[8192];
    size_t n = 0, i;
    fy_h1_limits_t l = { .max_headers = MAXH, .max_head_bytes = sizeof(m) };
    fy_h1_request_t r;

    n += (size_t)snprintf(m + n, sizeof(m) - n, "GET / HTTP/1.1\r\nHost: h\r\n");
    for (i = 1; i < MAXH; i++)
        n += (size_t)snprintf(m + n, sizeof(m) - n, "X-%zu: %zu\r\n", i, i);
    n += (size_t)snprintf(m + n, sizeof(m) - n, "\r\n");
    cr_assert_eq(req_n(m, n, &r, &l), (int)n);
    cr_assert_eq(r.nheaders, MAXH);

    n -= 2;
    n += (size_t)snprintf(m + n, sizeof(m) - n, "X-last: 1\r\n\r\n");
    cr_assert_eq(req_n(m, n, &r, &l), FY_ERR);
    cr_assert_eq(r.err_status, 431);
}

Test(request, head_size_limit)
{
    static const char m[] = "GET / HTTP/1.1\r\nHost: h\r\n\r\n";
    const size_t n = sizeof(m) - 1;
    fy_h1_limits_t at = { .max_headers = MAXH, .max_head_bytes = n };
    fy_h1_limits_t under = { .max_headers = MAXH, .max_head_bytes = n - 1 };
    fy_h1_request_t r;
    size_t k;

    /* exactly at the limit is accepted, with or without bytes after it */
    cr_assert_eq(req_n(m, n, &r, &at), (int)n);
    cr_assert_eq(fy_h1_parse_request("GET / HTTP/1.1\r\nHost: h\r\n\r\nXYZ", n + 3, &r, hdrs, &at), (int)n);
    for (k = 0; k < n; k++)
        cr_assert_eq(req_n(m, k, &r, &at), FY_AGAIN, "prefix %zu", k);

    /* one byte over: 431 once max_head_bytes are in, FY_AGAIN before */
    for (k = 0; k < n - 1; k++)
        cr_assert_eq(req_n(m, k, &r, &under), FY_AGAIN, "prefix %zu", k);
    for (k = n - 1; k <= n; k++) {
        cr_assert_eq(req_n(m, k, &r, &under), FY_ERR, "len %zu", k);
        cr_assert_eq(r.err_status, 431);
        cr_assert_str_eq(r.err_code, "header_too_large");
    }
}

Test(request, long_head_431)
{
    static char m[40000];
    fy_h1_request_t r;
    size_t n;

    memset(m, 'a', sizeof(m));
    memcpy(m, "GET / HTTP/1.1\r\nHost: h\r\nX-Long: ", 33);
    /* a value that never ends: FY_AGAIN below the limit, 431 at it */
    cr_assert_eq(req_n(m, 32767, &r, &lim), FY_AGAIN);
    cr_assert_eq(req_n(m, 32768, &r, &lim), FY_ERR);
    cr_assert_eq(r.err_status, 431);
    cr_assert_eq(req_n(m, sizeof(m), &r, &lim), FY_ERR);
    cr_assert_eq(r.err_status, 431);
    /* a long request-target is caught the same way */
    memcpy(m, "GET /", 5);
    cr_assert_eq(req_n(m, sizeof(m), &r, &lim), FY_ERR);
    cr_assert_eq(r.err_status, 431);
    /* ending exactly at 32768 is fine */
    n = 32768;
    memcpy(m, "GET / HTTP/1.1\r\nHost: h\r\nX-Long: ", 33);
    memcpy(m + n - 4, "\r\n\r\n", 4);
    cr_assert_eq(req_n(m, sizeof(m), &r, &lim), (int)n);
    cr_assert_eq(hdrs[1].value_len, n - 4 - 33);
}

Test(request, pipelined_bytes_not_counted)
{
    static const char m[] = "GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n";
    fy_h1_request_t r;
    int n;

    n = fy_h1_parse_request(m, sizeof(m) - 1, &r, hdrs, &lim);
    cr_assert_eq(n, 28);
    cr_assert(slice_is(r.path, r.path_len, "/a"));
    cr_assert_eq(fy_h1_parse_request(m + n, sizeof(m) - 1 - (size_t)n, &r, hdrs, &lim), 28);
    cr_assert(slice_is(r.path, r.path_len, "/b"));
}

Test(request, methods)
{
    static const char t[] = "x!#$%&'*+-.^_`|~9 / HTTP/1.1\r\nHost: h\r\n\r\n";
    fy_h1_request_t r;

    /* asterisk-form is for OPTIONS only (RFC 9112 §3.2.4) */
    BAD400("M-SEARCH * HTTP/1.1\r\nHost: h\r\n\r\n");
    REQ_OK(t, &r);
    cr_assert_eq(r.method_len, 17);
}

/* --------------------------------------------------------------- responses */

Test(response, simple)
{
    static const char m[] = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: x\r\n\r\n";
    fy_h1_response_t r;

    RESP_OK(m, &r, false);
    cr_assert_eq(r.status, 200);
    cr_assert_eq(r.minor, 1);
    cr_assert(slice_is(r.reason, r.reason_len, "OK"));
    cr_assert_eq(r.nheaders, 2);
    cr_assert_eq(r.body, FY_H1_BODY_LENGTH);
    cr_assert_eq(r.content_length, 5);
    cr_assert_eq(r.flags, 0);
    cr_assert_eq(r.head_len, sizeof(m) - 1);
}

Test(response, reason_forms)
{
    static const char none[] = "HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n";
    static const char empty[] = "HTTP/1.1 404 \r\nContent-Length: 0\r\n\r\n";
    static const char sp[] = "HTTP/1.0 500 Internal  Server\tError \xe2\x9c\x97\r\n\r\n";
    fy_h1_response_t r;

    RESP_OK(none, &r, false);
    cr_assert_eq(r.status, 200);
    cr_assert_eq(r.reason_len, 0);
    cr_assert_eq(r.body, FY_H1_BODY_NONE);
    RESP_OK(empty, &r, false);
    cr_assert_eq(r.status, 404);
    cr_assert_eq(r.reason_len, 0);
    RESP_OK(sp, &r, false);
    cr_assert_eq(r.minor, 0);
    cr_assert_eq(r.body, FY_H1_BODY_UNTIL_CLOSE);
    cr_assert_eq(r.flags, FY_H1_F_CLOSE);
}

Test(response, head_request)
{
    static const char m[] = "HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n";
    static const char c[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    static const char u[] = "HTTP/1.1 200 OK\r\n\r\n";
    fy_h1_response_t r;

    RESP_OK(m, &r, true);
    cr_assert_eq(r.body, FY_H1_BODY_NONE);
    RESP_OK(c, &r, true);
    cr_assert_eq(r.body, FY_H1_BODY_NONE);
    RESP_OK(u, &r, true);
    cr_assert_eq(r.body, FY_H1_BODY_NONE);
}

Test(response, no_body_statuses)
{
    static const char s204[] = "HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n";
    static const char s304[] = "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n";
    static const char s100[] = "HTTP/1.1 100 Continue\r\n\r\n";
    static const char s103[] = "HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n";
    fy_h1_response_t r;

    RESP_OK(s204, &r, false);
    cr_assert_eq(r.body, FY_H1_BODY_NONE);
    RESP_OK(s304, &r, false);
    cr_assert_eq(r.body, FY_H1_BODY_NONE);
    RESP_OK(s100, &r, false);
    cr_assert_eq(r.status, 100);
    cr_assert_eq(r.body, FY_H1_BODY_NONE);
    cr_assert_eq(r.flags, 0);
    RESP_OK(s103, &r, false);
    cr_assert_eq(r.body, FY_H1_BODY_NONE);
}

Test(response, switching_protocols)
{
    static const char m[] = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                            "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
    fy_h1_response_t r;

    RESP_OK(m, &r, false);
    cr_assert_eq(r.status, 101);
    cr_assert_eq(r.body, FY_H1_BODY_NONE);
    cr_assert_eq(r.flags & FY_H1_F_UPGRADE, FY_H1_F_UPGRADE);
    cr_assert_eq(r.flags & FY_H1_F_WEBSOCKET, FY_H1_F_WEBSOCKET);
    cr_assert_eq(r.flags & FY_H1_F_CLOSE, 0);
}

Test(response, chunked)
{
    static const char m[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n";
    static const char cl[] = "HTTP/1.1 200 OK\r\nContent-Length: 7\r\nTransfer-Encoding: chunked\r\n\r\n";
    static const char two[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked , \r\n\r\n";
    fy_h1_response_t r;

    RESP_OK(m, &r, false);
    cr_assert_eq(r.body, FY_H1_BODY_CHUNKED);
    cr_assert_eq(r.flags, 0);
    /* chunked wins over Content-Length, and the connection is not reused */
    RESP_OK(cl, &r, false);
    cr_assert_eq(r.body, FY_H1_BODY_CHUNKED);
    cr_assert_eq(r.flags, FY_H1_F_CLOSE);
    RESP_OK(two, &r, false);
    cr_assert_eq(r.body, FY_H1_BODY_CHUNKED);
}

Test(response, until_close)
{
    static const char none[] = "HTTP/1.1 200 OK\r\n\r\n";
    static const char notlast[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\nContent-Length: 3\r\n\r\n";
    static const char gz[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n";
    static const char v10[] = "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n";
    static const char empty[] = "HTTP/1.1 200 OK\r\nTransfer-Encoding:\r\n\r\n";
    fy_h1_response_t r;

    RESP_OK(none, &r, false);
    cr_assert_eq(r.body, FY_H1_BODY_UNTIL_CLOSE);
    RESP_OK(notlast, &r, false);
    cr_assert_eq(r.body, FY_H1_BODY_UNTIL_CLOSE);
    RESP_OK(gz, &r, false);
    cr_assert_eq(r.body, FY_H1_BODY_UNTIL_CLOSE);
    RESP_OK(v10, &r, false);
    cr_assert_eq(r.body, FY_H1_BODY_UNTIL_CLOSE);
    cr_assert_eq(r.flags, FY_H1_F_CLOSE);
    RESP_OK(empty, &r, false);
    cr_assert_eq(r.body, FY_H1_BODY_UNTIL_CLOSE);
}

Test(response, content_length_duplicates)
{
    static const char same[] = "HTTP/1.1 200 OK\r\nContent-Length: 42\r\ncontent-length: 42\r\n\r\n";
    fy_h1_response_t r;

    RESP_OK(same, &r, false);
    cr_assert_eq(r.body, FY_H1_BODY_LENGTH);
    cr_assert_eq(r.content_length, 42);
    RESP_BAD("HTTP/1.1 200 OK\r\nContent-Length: 42\r\nContent-Length: 43\r\n\r\n");
    RESP_BAD("HTTP/1.1 200 OK\r\nContent-Length: 42, 42\r\n\r\n");
    RESP_BAD("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n");
    RESP_BAD("HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n");
    RESP_BAD("HTTP/1.1 200 OK\r\nContent-Length: x\r\nTransfer-Encoding: chunked\r\n\r\n");
}

Test(response, close_flag)
{
    static const char c[] = "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
    static const char k[] = "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n";
    fy_h1_response_t r;

    RESP_OK(c, &r, false);
    cr_assert_eq(r.flags, FY_H1_F_CLOSE);
    RESP_OK(k, &r, false);
    cr_assert_eq(r.flags, 0);
}

Test(response, rejections)
{
    RESP_BAD("HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n");
    RESP_BAD("HTTP/1.1 200 OK\r\nContent-Length: 0\n\r\n");
    RESP_BAD("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\n");
    RESP_BAD("HTTP/1.1 200\n\r\n");
    RESP_BAD("HTTP/1.1 200\r\r\n");
    RESP_BAD("HTTP/1.1 200 OK\r\nNoColon\n\r\n");
    RESP_BAD("HTTP/1.1 200 OK\rX: y\r\n\r\n");
    RESP_BAD("HTTP/1.1 200 O\rK\r\n\r\n");
    RESP_BAD("HTTP/1.1 200 O\0K\r\n\r\n");
    RESP_BAD("HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n");
    RESP_BAD("HTTP/1.1 200 OK\r\nX : a\r\n\r\n");
    RESP_BAD("HTTP/1.1 200 OK\r\nX: a\0\r\n\r\n");
    RESP_BAD("HTTP/1.1 20 OK\r\n\r\n");
    RESP_BAD("HTTP/1.1 2000 OK\r\n\r\n");
    RESP_BAD("HTTP/1.1 099 OK\r\n\r\n");
    RESP_BAD("HTTP/1.1  200 OK\r\n\r\n");
    RESP_BAD("HTTP/1.1 2x0 OK\r\n\r\n");
    RESP_BAD("HTTP/1.2 200 OK\r\n\r\n");
    RESP_BAD("HTTP/2.0 200 OK\r\n\r\n");
    RESP_BAD("http/1.1 200 OK\r\n\r\n");
    RESP_BAD("ICY 200 OK\r\n\r\n");
    RESP_BAD("\r\nHTTP/1.1 200 OK\r\n\r\n");
}

Test(response, size_limits)
{
    static const char m[] = "HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\n\r\n";
    fy_h1_limits_t few = { .max_headers = 1, .max_head_bytes = 32768 };
    fy_h1_limits_t at = { .max_headers = MAXH, .max_head_bytes = sizeof(m) - 1 };
    fy_h1_limits_t under = { .max_headers = MAXH, .max_head_bytes = sizeof(m) - 2 };
    fy_h1_response_t r;

    cr_assert_eq(resp_n(m, sizeof(m) - 1, &r, &few, false), FY_ERR);
    cr_assert_not_null(r.err_reason);
    cr_assert_eq(resp_n(m, sizeof(m) - 1, &r, &at, false), (int)(sizeof(m) - 1));
    cr_assert_eq(resp_n(m, sizeof(m) - 3, &r, &under, false), FY_AGAIN);
    cr_assert_eq(resp_n(m, sizeof(m) - 2, &r, &under, false), FY_ERR);
}

/* ---------------------------------------------------------------- chunked */

struct scan_result {
    ssize_t consumed; /* total, or FY_ERR */
    bool    done;
};

/* Feed s in pieces of `step` bytes (0: one piece), each from an exact heap
 * copy; stop at done or error. */
static struct scan_result scan_steps(const char *s, size_t n, size_t step)
{
    fy_h1_chunked_t st = { 0 };
    struct scan_result res = { 0, false };
    size_t off = 0;

    if (step == 0)
        step = n ? n : 1;
    while (off < n && !st.done) {
        size_t k = FY_MIN(step, n - off);
        char *copy = malloc(k);
        ssize_t rc;

        cr_assert_not_null(copy);
        memcpy(copy, s + off, k);
        rc = fy_h1_chunked_scan(&st, copy, k);
        free(copy);
        if (rc < 0) {
            cr_assert_eq(rc, FY_ERR);
            cr_assert_not_null(st.err_reason);
            res.consumed = FY_ERR;
            return res;
        }
        cr_assert(rc == (ssize_t)k || st.done, "short consume without done");
        off += (size_t)rc;
    }
    res.consumed = (ssize_t)off;
    res.done = st.done;
    return res;
}

/* Every way of feeding agrees: one piece, byte by byte, every 2/3/7 bytes,
 * and every single split point. */
static struct scan_result scan_all_ways(const char *s, size_t n)
{
    struct scan_result one = scan_steps(s, n, 0);
    size_t steps[] = { 1, 2, 3, 7 }, i, cut;

    for (i = 0; i < FY_NELEM(steps); i++) {
        struct scan_result r = scan_steps(s, n, steps[i]);
        cr_assert_eq(r.consumed, one.consumed, "step %zu", steps[i]);
        cr_assert_eq(r.done, one.done, "step %zu", steps[i]);
    }
    for (cut = 0; cut <= n; cut++) {
        fy_h1_chunked_t st = { 0 };
        ssize_t a = fy_h1_chunked_scan(&st, s, cut), b = 0;
        ssize_t total;
        if (a >= 0 && !st.done)
            b = fy_h1_chunked_scan(&st, s + cut, n - cut);
        total = (a < 0 || b < 0) ? FY_ERR : a + b;
        cr_assert_eq(total, one.consumed, "cut %zu", cut);
        cr_assert_eq(st.done, one.done, "cut %zu", cut);
    }
    return one;
}

#define CHUNK_OK(lit, body_len)                                               \
    do {                                                                      \
        struct scan_result r_ = scan_all_ways(lit, sizeof(lit) - 1);          \
        cr_assert_eq(r_.consumed, (ssize_t)(body_len), "%s", #lit);           \
        cr_assert(r_.done, "%s not done", #lit);                              \
    } while (0)

/* The whole input is the body. */
#define CHUNK_ALL(lit) CHUNK_OK(lit, sizeof(lit) - 1)

#define CHUNK_BAD(lit)                                                        \
    do {                                                                      \
        struct scan_result r_ = scan_all_ways(lit, sizeof(lit) - 1);          \
        cr_assert_eq(r_.consumed, FY_ERR, "%s accepted", #lit);               \
    } while (0)

Test(chunked, simple)
{
    CHUNK_ALL("5\r\nhello\r\n0\r\n\r\n");
    CHUNK_ALL("0\r\n\r\n");
    CHUNK_ALL("1\r\na\r\nA\r\n0123456789\r\nff\r\n"
              "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
              "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
              "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
              "\r\n0\r\n\r\n");
    /* data may hold anything, CR and LF included */
    CHUNK_ALL("4\r\n\r\n\n\r\r\n0\r\n\r\n");
    CHUNK_ALL("000000000000005\r\nhello\r\n000\r\n\r\n");
}

Test(chunked, bytes_after_body_not_consumed)
{
    static const char m[] = "3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
    fy_h1_chunked_t st = { 0 };
    ssize_t n;

    CHUNK_OK("3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n", 13);
    n = fy_h1_chunked_scan(&st, m, sizeof(m) - 1);
    cr_assert_eq(n, 13);
    cr_assert(st.done);
    /* once done, nothing more is taken */
    cr_assert_eq(fy_h1_chunked_scan(&st, m + n, sizeof(m) - 1 - (size_t)n), 0);
}

Test(chunked, incomplete)
{
    static const char m[] = "5\r\nhello\r\n0\r\n\r\n";
    size_t k;

    for (k = 0; k < sizeof(m) - 1; k++) {
        struct scan_result r = scan_steps(m, k, 1);
        cr_assert_eq(r.consumed, (ssize_t)k);
        cr_assert(!r.done);
    }
}

Test(chunked, extensions)
{
    CHUNK_ALL("5;name=value\r\nhello\r\n0;last\r\n\r\n");
    CHUNK_ALL("5 ;a=\"q;\\\"x\"\t; b\r\nhello\r\n0\r\n\r\n");
    CHUNK_BAD("5;a\nhello\r\n0\r\n\r\n");
    CHUNK_BAD("5;a\0b\r\nhello\r\n0\r\n\r\n");
    CHUNK_BAD("5;a\rb\r\nhello\r\n0\r\n\r\n");
}

Test(chunked, extension_length)
{
    static char m[4200];
    size_t n;

    /* a size line of exactly 4096 bytes is fine, 4097 is not */
    memset(m, 'e', sizeof(m));
    m[0] = '1';
    m[1] = ';';
    memcpy(m + 4096, "\r\nx\r\n0\r\n\r\n", 10);
    n = 4106;
    {
        struct scan_result r = scan_steps(m, n, 0);
        cr_assert_eq(r.consumed, (ssize_t)n);
        cr_assert(r.done);
        r = scan_steps(m, n, 1);
        cr_assert_eq(r.consumed, (ssize_t)n);
    }
    memset(m, 'e', sizeof(m));
    m[0] = '1';
    m[1] = ';';
    memcpy(m + 4097, "\r\nx\r\n0\r\n\r\n", 10);
    n = 4107;
    cr_assert_eq(scan_steps(m, n, 0).consumed, FY_ERR);
    cr_assert_eq(scan_steps(m, n, 1).consumed, FY_ERR);
    /* so is a run of BWS that never reaches its ';' */
    memset(m, ' ', sizeof(m));
    m[0] = '1';
    cr_assert_eq(scan_steps(m, 4096, 0).consumed, 4096);
    cr_assert_eq(scan_steps(m, 4097, 0).consumed, FY_ERR);
    memset(m, 'e', sizeof(m));
    m[0] = '1';
    m[1] = ';';
    /* an extension that never ends fails without waiting for its CR */
    cr_assert_eq(scan_steps(m, 4097, 0).consumed, FY_ERR);
    cr_assert_eq(scan_steps(m, 4096, 0).consumed, 4096);
}

Test(chunked, size_bounds)
{
    static const char big[] = "fffffffffffffff\r\n";
    fy_h1_chunked_t st = { 0 };

    /* 15 hex digits is the most: 2^60 - 1 */
    cr_assert_eq(fy_h1_chunked_scan(&st, big, sizeof(big) - 1), (ssize_t)(sizeof(big) - 1));
    cr_assert_eq(st.remaining, (UINT64_C(1) << 60) - 1);
    cr_assert(!st.done);
    CHUNK_BAD("1000000000000000\r\n");
    CHUNK_BAD("ffffffffffffffffffffffffffffffff1\r\nx\r\n0\r\n\r\n");
    CHUNK_BAD("0000000000000000\r\n\r\n");
    CHUNK_BAD("10000000000000001\r\nx\r\n0\r\n\r\n");
}

Test(chunked, bad_size_lines)
{
    CHUNK_BAD("\r\nhello\r\n0\r\n\r\n");
    CHUNK_BAD("g\r\n");
    CHUNK_BAD("-1\r\n");
    CHUNK_BAD("+1\r\na\r\n0\r\n\r\n");
    CHUNK_BAD("0x5\r\nhello\r\n0\r\n\r\n");
    CHUNK_BAD(" 5\r\nhello\r\n0\r\n\r\n");
    CHUNK_BAD("5 \r\nhello\r\n0\r\n\r\n");
    CHUNK_BAD("5 x\r\nhello\r\n0\r\n\r\n");
    CHUNK_BAD("5\nhello\r\n0\r\n\r\n");
    CHUNK_BAD("5\rhello\r\n0\r\n\r\n");
    CHUNK_BAD("5\r\r\nhello\r\n0\r\n\r\n");
    CHUNK_BAD("0\n\r\n");
    CHUNK_BAD("0\r\n\n");
}

Test(chunked, bad_data_crlf)
{
    CHUNK_BAD("5\r\nhelloX\r\n0\r\n\r\n");
    CHUNK_BAD("5\r\nhello\n0\r\n\r\n");
    CHUNK_BAD("5\r\nhello\rX0\r\n\r\n");
    CHUNK_BAD("5\r\nhello\r\r\n0\r\n\r\n");
    CHUNK_BAD("5\r\nhell\r\n0\r\n\r\n");
    CHUNK_BAD("3\r\nhello\r\n0\r\n\r\n");
    /* from fuzz_chunked (a harness bug, kept as a regression input) */
    CHUNK_BAD("5;a=b;c=\"d\"\r\nh89\r\n0;last\r\n\r\n");
}

Test(chunked, trailers)
{
    CHUNK_ALL("5\r\nhello\r\n0\r\nExpires: never\r\nX-Sum:  ab \t\r\nEmpty:\r\n\r\n");
    CHUNK_OK("0\r\nA:\xc3\xa9\r\n\r\nrest", 11);
    CHUNK_BAD("0\r\nX : v\r\n\r\n");
    CHUNK_BAD("0\r\n: v\r\n\r\n");
    CHUNK_BAD("0\r\nNoColon\r\n\r\n");
    CHUNK_BAD("0\r\n X: v\r\n\r\n");
    CHUNK_BAD("0\r\nX: a\r\n b\r\n\r\n");
    CHUNK_BAD("0\r\nX: a\nY: b\r\n\r\n");
    CHUNK_BAD("0\r\nX: a\rY: b\r\n\r\n");
    CHUNK_BAD("0\r\nX: a\0\r\n\r\n");
    CHUNK_BAD("0\r\nX: a\x7f\r\n\r\n");
    CHUNK_BAD("0\r\nX(: v\r\n\r\n");
    CHUNK_BAD("0\r\nX: v\r\n\n");
    CHUNK_BAD("0\r\nX: v\r\n\rX");
}

Test(chunked, trailer_size)
{
    static char m[33000];
    size_t n;

    /* trailer bytes, final CRLF included: exactly 32768 passes */
    memset(m, 'v', sizeof(m));
    memcpy(m, "0\r\nX: ", 6);
    n = 3 + 32768;
    memcpy(m + n - 4, "\r\n\r\n", 4);
    cr_assert_eq(scan_steps(m, n, 0).consumed, (ssize_t)n);
    cr_assert_eq(scan_steps(m, n, 1000).consumed, (ssize_t)n);
    memset(m, 'v', sizeof(m));
    memcpy(m, "0\r\nX: ", 6);
    n = 3 + 32769;
    memcpy(m + n - 4, "\r\n\r\n", 4);
    cr_assert_eq(scan_steps(m, n, 0).consumed, FY_ERR);
    cr_assert_eq(scan_steps(m, n, 1000).consumed, FY_ERR);
}

Test(chunked, error_is_sticky)
{
    fy_h1_chunked_t st = { 0 };

    cr_assert_eq(fy_h1_chunked_scan(&st, "z", 1), FY_ERR);
    cr_assert_not_null(st.err_reason);
    cr_assert_eq(fy_h1_chunked_scan(&st, "0\r\n\r\n", 5), FY_ERR);
    cr_assert(!st.done);
}

Test(chunked, empty_input)
{
    fy_h1_chunked_t st = { 0 };

    cr_assert_eq(fy_h1_chunked_scan(&st, "", 0), 0);
    cr_assert(!st.done);
}

/* --------------------------------------------------------------- helpers */

Test(helpers, find)
{
    static const char m[] = "GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nx-a: 2\r\n\r\n";
    fy_h1_request_t r;
    const fy_h1_header_t *h;

    REQ_OK(m, &r);
    h = fy_h1_find(r.headers, r.nheaders, "X-a");
    cr_assert_not_null(h);
    cr_assert(slice_is(h->value, h->value_len, "1"));
    cr_assert_null(fy_h1_find(r.headers, r.nheaders, "X"));
    cr_assert_null(fy_h1_find(r.headers, r.nheaders, "X-AB"));
    cr_assert_null(fy_h1_find(r.headers, 0, "host"));
}

Test(helpers, has_token)
{
    static const char v[] = " keep-alive ,\tUpgrade\t, , close";

    cr_assert(fy_h1_has_token(v, sizeof(v) - 1, "upgrade"));
    cr_assert(fy_h1_has_token(v, sizeof(v) - 1, "KEEP-ALIVE"));
    cr_assert(fy_h1_has_token(v, sizeof(v) - 1, "close"));
    cr_assert(!fy_h1_has_token(v, sizeof(v) - 1, "clos"));
    cr_assert(!fy_h1_has_token(v, sizeof(v) - 2, "close"));
    cr_assert(!fy_h1_has_token(v, sizeof(v) - 1, "keep"));
    cr_assert(!fy_h1_has_token("upgrade2", 8, "upgrade"));
    cr_assert(!fy_h1_has_token("", 0, "close"));
    cr_assert(!fy_h1_has_token(",,,", 3, "close"));
    /* the length bounds the scan: no NUL needed */
    cr_assert(!fy_h1_has_token("closeXXX", 4, "close"));
    cr_assert(fy_h1_has_token("closeXXX", 5, "close"));
}

/* fy_h1_framer: one state for every body framing (used by worker/fwd.c). */
Test(framer, length_none_close_and_chunked)
{
    fy_h1_framer_t f;
    const char *ch = "5\r\nhello\r\n0\r\n\r\nGET";
    size_t i, got = 0;
    ssize_t n;

    fy_h1_framer_start(&f, FY_H1_BODY_NONE, 0);
    cr_assert(f.done);
    cr_assert_eq(fy_h1_framer_scan(&f, "GET", 3), 0);
    fy_h1_framer_start(&f, FY_H1_BODY_LENGTH, 0);
    cr_assert(f.done);
    fy_h1_framer_start(&f, FY_H1_BODY_LENGTH, 5);
    cr_assert_eq(fy_h1_framer_scan(&f, "abc", 3), 3);
    cr_assert(!f.done);
    cr_assert_eq(fy_h1_framer_scan(&f, "deNEXT", 6), 2);   /* the next message is not the body's */
    cr_assert(f.done);
    fy_h1_framer_start(&f, FY_H1_BODY_UNTIL_CLOSE, 0);
    cr_assert_eq(fy_h1_framer_scan(&f, "abcdef", 6), 6);
    cr_assert(!f.done);
    /* chunked, fed one byte at a time: the body ends before "GET" */
    fy_h1_framer_start(&f, FY_H1_BODY_CHUNKED, 0);
    for (i = 0; i < strlen(ch) && !f.done; i++) {
        n = fy_h1_framer_scan(&f, ch + i, 1);
        cr_assert(n == 0 || n == 1);
        got += (size_t)n;
    }
    cr_assert(f.done);
    cr_assert_eq(got, strlen(ch) - 3);
    /* a bad chunk size */
    fy_h1_framer_start(&f, FY_H1_BODY_CHUNKED, 0);
    cr_assert_eq(fy_h1_framer_scan(&f, "zz\r\n", 4), FY_ERR);
    cr_assert(!f.done);
}
