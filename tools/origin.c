/*
 * origin.c: a small, fast HTTP/1.1 origin server for benchmarks and tests.
 *
 *   origin [-l HOST:PORT]          (default 127.0.0.1:0; port 0 picks one)
 *
 * Once listening it prints "listening HOST:PORT" on stdout, so a driver can
 * start it on port 0 and read the port back. Endpoints:
 *
 *   GET|HEAD /1k   200, 1024-byte body of 'x'
 *   GET|HEAD /1m   200, 1 MiB body of 'x'
 *   POST <any>     reads and discards the body (Content-Length or chunked),
 *                  answers 200 with the body length in decimal (so POST
 *                  /upload is the upload sink of the bench)
 *   GET /ws        with Upgrade: websocket: 101, then a WebSocket echo: each
 *                  data frame comes back as it came (same FIN and opcode,
 *                  unmasked), PING gets PONG, CLOSE gets CLOSE. Frames over
 *                  WS_FRAME_MAX payload bytes get CLOSE 1009. Without the
 *                  upgrade headers: 426
 *   anything else  404
 *
 * One thread, one level-triggered epoll loop, non-blocking sockets,
 * keep-alive and pipelining. It must never be the bottleneck of a bench, so
 * the common path is one read, one sendmsg, no allocation; and it must stay
 * bounded with any client, so each connection has a fixed input buffer (a
 * request head that does not fit gets 431) and a fixed output buffer, and
 * stops reading while its output is backed up. Big bodies are sent straight
 * from one static buffer, never copied.
 *
 * Deliberately not here: TLS, timeouts (the driver kills us).
 */
#include "fy.h"
#include "ws/ws.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define IN_CAP      (64 * 1024)   /* bytes; also the largest request head */
#define OUT_CAP     (32 * 1024)   /* bytes of queued heads and small bodies */
#define RESP_MAX    (2 * 1024)    /* bytes; the largest response we queue into out */
#define BIG_LEN     (1024 * 1024) /* bytes of the /1m body */
#define SMALL_LEN   1024          /* bytes of the /1k body */
#define READ_BUDGET 16            /* reads per wakeup, so one client cannot starve the rest */
#define MAX_EVENTS  256
#define WS_FRAME_MAX (OUT_CAP - FY_WS_MAX_HEADER) /* bytes of payload we echo in one frame */
#define WS_KEY_MAX  64            /* bytes of Sec-WebSocket-Key we keep */

enum body_mode { BODY_NONE, BODY_LENGTH, BODY_CHUNKED };

/* Chunked decoder states (RFC 9112 §7.1), resumable byte by byte. */
enum ck_state {
    CK_SIZE,        /* hex digits of chunk-size */
    CK_EXT,         /* chunk-ext up to LF */
    CK_DATA,        /* ck_left bytes of chunk-data */
    CK_DATA_CR,     /* CRLF after chunk-data */
    CK_DATA_LF,
    CK_TRAILER,     /* start of a trailer line, or the final CRLF */
    CK_TRAILER_LINE,
    CK_END_LF
};

enum route { R_404, R_1K, R_1M, R_UPLOAD, R_WS };

typedef struct conn_s {
    int fd;
    uint32_t events;        /* interest currently registered with epoll */

    /* Request being read. */
    bool in_body;
    enum body_mode body;
    enum ck_state ck;
    int ck_digits;
    uint64_t body_left;     /* bytes, BODY_LENGTH; chunk bytes left, CK_DATA */
    uint64_t ck_size;
    uint64_t body_len;      /* bytes of body seen so far */
    enum route route;
    bool head_only;         /* HEAD: headers without the body */
    bool keep_alive;
    bool http10;
    bool up_ws;             /* Upgrade: websocket */
    bool conn_upgrade;      /* Connection: upgrade */
    size_t ws_key_len;      /* 0: no usable Sec-WebSocket-Key */
    char ws_key[WS_KEY_MAX];

    bool ws;                /* upgraded: in holds WebSocket frames to echo */

    bool rd_eof;            /* the peer half-closed */
    bool close_after;       /* close once out is flushed; read no more */

    /* Output: out[out_pos..out_len) goes first, then big..big+big_left. */
    const char *big;
    size_t big_left;
    size_t out_pos, out_len;
    size_t in_len;
    size_t scan;            /* where to resume looking for the end of a head */

    char in[IN_CAP];
    char out[OUT_CAP];
} conn_t;

static int g_ep = -1;
static char g_body[BIG_LEN];   /* every body we send is a prefix of this */

static void on_term(int sig)
{
    /* Nothing to flush or clean up: a bench origin just goes away. */
    _exit(0);
}

static bool out_pending(const conn_t *c)
{
    return c->out_pos < c->out_len || c->big_left > 0;
}

static bool can_read(const conn_t *c)
{
    return !c->rd_eof && !c->close_after && c->in_len < IN_CAP;
}

static void conn_close(conn_t *c)
{
    /* close() drops the fd from the epoll set, and each fd gets at most one
     * event per epoll_wait batch, so freeing here cannot leave a stale
     * pointer in the batch being handled. */
    close(c->fd);
    free(c);
}

static void set_interest(conn_t *c)
{
    uint32_t want = 0;
    struct epoll_event ev;

    if (can_read(c))
        want |= EPOLLIN | EPOLLRDHUP;
    if (out_pending(c))
        want |= EPOLLOUT;
    if (want == c->events)
        return;
    ev.events = want;
    ev.data.ptr = c;
    if (epoll_ctl(g_ep, EPOLL_CTL_MOD, c->fd, &ev) == 0)
        c->events = want;
}

static size_t put(char *dst, const char *s)
{
    size_t n = strlen(s);
    memcpy(dst, s, n);
    return n;
}

static size_t put_u64(char *dst, uint64_t v)
{
    char tmp[24];
    size_t n = 0, i;

    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (i = 0; i < n; i++)
        dst[i] = tmp[n - 1 - i];
    return n;
}

/* Queue one response. The caller checked there are RESP_MAX bytes free in
 * out and no big body pending, so this cannot fail. body may be NULL with
 * len > 0 to mean "len bytes of g_body". */
static void respond(conn_t *c, const char *status, const char *body, size_t len)
{
    char *p = c->out + c->out_len, *start = p;

    p += put(p, "HTTP/1.1 ");
    p += put(p, status);
    p += put(p, "\r\nServer: ferry-origin\r\nContent-Type: text/plain\r\nContent-Length: ");
    p += put_u64(p, len);
    if (!c->keep_alive)
        p += put(p, "\r\nConnection: close");
    else if (c->http10)
        p += put(p, "\r\nConnection: keep-alive");
    p += put(p, "\r\n\r\n");

    if (!c->head_only && len > 0) {
        if (body != NULL || len <= SMALL_LEN) {
            /* Small bodies are copied so pipelined responses leave in one
             * write; the big one goes by reference (writev, no copy). */
            memcpy(p, body != NULL ? body : g_body, len);
            p += len;
        } else {
            c->big = g_body;
            c->big_left = len;
        }
    }
    c->out_len += (size_t)(p - start);
    if (!c->keep_alive)
        c->close_after = true;
}

/* A request we refuse: answer, then close, since the framing of whatever
 * follows cannot be trusted. */
static void reject(conn_t *c, const char *status)
{
    c->keep_alive = false;
    c->head_only = false;
    respond(c, status, status, strlen(status));
}

/* GET /ws: switch to the echo, or 426 without a proper upgrade. */
static void ws_upgrade(conn_t *c)
{
    char accept[29];
    char *p = c->out + c->out_len, *start = p;

    if (!c->up_ws || !c->conn_upgrade || c->head_only || c->http10 || c->body != BODY_NONE ||
        c->ws_key_len == 0 || fy_ws_accept_key(c->ws_key, c->ws_key_len, accept) != FY_OK) {
        c->keep_alive = false;
        respond(c, "426 Upgrade Required", "websocket upgrade required\n", 27);
        return;
    }
    p += put(p, "HTTP/1.1 101 Switching Protocols\r\nServer: ferry-origin\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ");
    p += put(p, accept);
    p += put(p, "\r\n\r\n");
    c->out_len += (size_t)(p - start);
    c->ws = true;
}

static void finish_request(conn_t *c)
{
    char num[24];
    size_t n;

    c->in_body = false;
    switch (c->route) {
    case R_1K:
        respond(c, "200 OK", NULL, SMALL_LEN);
        break;
    case R_1M:
        respond(c, "200 OK", NULL, BIG_LEN);
        break;
    case R_UPLOAD:
        n = put_u64(num, c->body_len);
        respond(c, "200 OK", num, n);
        break;
    case R_WS:
        ws_upgrade(c);
        break;
    case R_404:
    default:
        respond(c, "404 Not Found", "not found\n", 10);
        break;
    }
}

static bool is_tchar(unsigned char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
           (ch >= '0' && ch <= '9') || (ch != 0 && strchr("!#$%&'*+-.^_`|~", ch) != NULL);
}

static bool is_ows(char ch)
{
    return ch == ' ' || ch == '\t';
}

/* Does the comma-separated list v[0..n) contain token tok? */
static bool list_has(const char *v, size_t n, const char *tok, bool last_only)
{
    size_t i = 0;
    bool found = false;

    while (i < n) {
        size_t s, e;
        while (i < n && (is_ows(v[i]) || v[i] == ','))
            i++;
        s = i;
        while (i < n && v[i] != ',')
            i++;
        e = i;
        while (e > s && is_ows(v[e - 1]))
            e--;
        if (e > s)
            found = fy_ieq(v + s, e - s, tok);
        if (found && !last_only)
            return true;
    }
    return found;
}

/* Parse the head in in[0..len) (len includes the final CRLFCRLF) into c's
 * request fields. Returns FY_OK, or FY_ERR after queueing the error answer. */
static int parse_head(conn_t *c, const char *h, size_t len)
{
    const char *p = h, *end = h + len - 2, *eol, *m, *t;
    size_t mlen, tlen, plen;
    bool have_cl = false, chunked = false, conn_close_tok = false, conn_ka = false;
    bool expect_continue = false;
    uint64_t cl = 0;

    c->route = R_404;
    c->head_only = false;
    c->body = BODY_NONE;
    c->body_len = 0;
    c->keep_alive = true;
    c->http10 = false;
    c->up_ws = false;
    c->conn_upgrade = false;
    c->ws_key_len = 0;

    /* Request line: method SP target SP HTTP/1.x CRLF. */
    eol = memmem(p, (size_t)(end - p), "\r\n", 2);
    if (eol == NULL)
        goto bad;
    m = p;
    while (p < eol && is_tchar((unsigned char)*p))
        p++;
    mlen = (size_t)(p - m);
    if (mlen == 0 || p >= eol || *p != ' ')
        goto bad;
    t = ++p;
    while (p < eol && *p != ' ' && (unsigned char)*p > 0x20 && *p != 0x7f)
        p++;
    tlen = (size_t)(p - t);
    if (tlen == 0 || p >= eol || *p != ' ')
        goto bad;
    p++;
    if (eol - p != 8 || memcmp(p, "HTTP/1.", 7) != 0 || (p[7] != '0' && p[7] != '1'))
        goto bad;
    if (p[7] == '0') {
        c->http10 = true;
        c->keep_alive = false;
    }

    for (plen = 0; plen < tlen && t[plen] != '?'; plen++)
        ;
    if (mlen == 4 && memcmp(m, "POST", 4) == 0) {
        c->route = R_UPLOAD;
    } else if ((mlen == 3 && memcmp(m, "GET", 3) == 0) ||
               (mlen == 4 && memcmp(m, "HEAD", 4) == 0)) {
        c->head_only = mlen == 4;
        if (plen == 3 && memcmp(t, "/1k", 3) == 0)
            c->route = R_1K;
        else if (plen == 3 && memcmp(t, "/1m", 3) == 0)
            c->route = R_1M;
        else if (plen == 3 && memcmp(t, "/ws", 3) == 0)
            c->route = R_WS;
    }

    /* Header fields: name ":" OWS value OWS CRLF. No obs-fold (RFC 9112
     * §5.2 lets a server reject it), no space before the colon (§5.1). */
    p = eol + 2;
    while (p < end) {
        const char *n = p, *v, *ve;
        size_t nlen, vlen;

        eol = memmem(p, (size_t)(end - p) + 2, "\r\n", 2);
        if (eol == NULL)
            goto bad;
        while (p < eol && is_tchar((unsigned char)*p))
            p++;
        nlen = (size_t)(p - n);
        if (nlen == 0 || p >= eol || *p != ':')
            goto bad;
        v = p + 1;
        while (v < eol && is_ows(*v))
            v++;
        ve = eol;
        while (ve > v && is_ows(ve[-1]))
            ve--;
        vlen = (size_t)(ve - v);

        if (fy_ieq(n, nlen, "content-length")) {
            uint64_t x = 0;
            size_t i;
            if (vlen == 0 || vlen > 18)
                goto bad;
            for (i = 0; i < vlen; i++) {
                if (v[i] < '0' || v[i] > '9')
                    goto bad;
                x = x * 10 + (uint64_t)(v[i] - '0');
            }
            /* Differing duplicates are a smuggling vector (§6.3). */
            if (have_cl && x != cl)
                goto bad;
            have_cl = true;
            cl = x;
        } else if (fy_ieq(n, nlen, "transfer-encoding")) {
            /* Only a final "chunked" frames the body (§6.3). */
            if (!list_has(v, vlen, "chunked", true))
                goto bad;
            chunked = true;
        } else if (fy_ieq(n, nlen, "connection")) {
            conn_close_tok |= list_has(v, vlen, "close", false);
            conn_ka |= list_has(v, vlen, "keep-alive", false);
            c->conn_upgrade |= list_has(v, vlen, "upgrade", false);
        } else if (fy_ieq(n, nlen, "upgrade")) {
            c->up_ws |= list_has(v, vlen, "websocket", false);
        } else if (fy_ieq(n, nlen, "sec-websocket-key")) {
            if (vlen < WS_KEY_MAX) {
                memcpy(c->ws_key, v, vlen);
                c->ws_key_len = vlen;
            }
        } else if (fy_ieq(n, nlen, "expect")) {
            expect_continue = fy_ieq(v, vlen, "100-continue");
        }
        p = eol + 2;
    }

    if (conn_close_tok)
        c->keep_alive = false;
    else if (c->http10 && conn_ka)
        c->keep_alive = true;

    if (chunked) {
        c->body = BODY_CHUNKED;
        c->ck = CK_SIZE;
        c->ck_digits = 0;
        c->ck_size = 0;
        /* Both framings at once: chunked wins, but close afterwards, as
         * RFC 9112 §6.3 asks. */
        if (have_cl)
            c->keep_alive = false;
    } else if (have_cl && cl > 0) {
        c->body = BODY_LENGTH;
        c->body_left = cl;
    }

    /* curl waits a second for this before sending a large body. */
    if (expect_continue && !c->http10 && c->body != BODY_NONE) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        memcpy(c->out + c->out_len, cont, sizeof(cont) - 1);
        c->out_len += sizeof(cont) - 1;
    }
    return FY_OK;

bad:
    reject(c, "400 Bad Request");
    return FY_ERR;
}

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* Consume body bytes from p[0..n). Returns bytes consumed, or FY_ERR after
 * queueing a 400. Sets c->in_body false when the body is complete. */
static ssize_t eat_body(conn_t *c, const char *p, size_t n)
{
    size_t i = 0, k;

    if (c->body == BODY_LENGTH) {
        k = (size_t)FY_MIN((uint64_t)n, c->body_left);
        c->body_left -= k;
        c->body_len += k;
        if (c->body_left == 0)
            c->in_body = false;
        return (ssize_t)k;
    }

    while (i < n && c->in_body) {
        char ch = p[i];
        int hv;

        switch (c->ck) {
        case CK_SIZE:
            hv = hexval(ch);
            if (hv >= 0) {
                /* 15 hex digits keep the size well inside uint64_t. */
                if (++c->ck_digits > 15)
                    goto bad;
                c->ck_size = c->ck_size * 16 + (uint64_t)hv;
                i++;
                break;
            }
            if (c->ck_digits == 0)
                goto bad;
            if (ch == '\r' || ch == ';' || is_ows(ch)) {
                c->ck = CK_EXT;
                i++;
                break;
            }
            if (ch == '\n') {
                c->ck = CK_EXT;   /* handled there, without consuming */
                break;
            }
            goto bad;
        case CK_EXT:
            i++;
            if (ch != '\n')
                break;
            if (c->ck_size == 0) {
                c->ck = CK_TRAILER;
            } else {
                c->ck = CK_DATA;
                c->body_left = c->ck_size;
            }
            c->ck_size = 0;
            c->ck_digits = 0;
            break;
        case CK_DATA:
            k = (size_t)FY_MIN((uint64_t)(n - i), c->body_left);
            c->body_left -= k;
            c->body_len += k;
            i += k;
            if (c->body_left == 0)
                c->ck = CK_DATA_CR;
            break;
        case CK_DATA_CR:
            if (ch != '\r')
                goto bad;
            c->ck = CK_DATA_LF;
            i++;
            break;
        case CK_DATA_LF:
            if (ch != '\n')
                goto bad;
            c->ck = CK_SIZE;
            i++;
            break;
        case CK_TRAILER:
            i++;
            if (ch == '\r')
                c->ck = CK_END_LF;
            else if (ch == '\n')
                c->in_body = false;
            else
                c->ck = CK_TRAILER_LINE;
            break;
        case CK_TRAILER_LINE:
            i++;
            if (ch == '\n')
                c->ck = CK_TRAILER;
            break;
        case CK_END_LF:
            if (ch != '\n')
                goto bad;
            i++;
            c->in_body = false;
            break;
        default:
            goto bad;
        }
    }
    return (ssize_t)i;

bad:
    c->in_body = false;
    reject(c, "400 Bad Request");
    return FY_ERR;
}

/* Queue a CLOSE with code (0: none) and stop reading: the connection closes
 * once out is flushed. The caller checked there are 16 bytes free in out. */
static void ws_close(conn_t *c, unsigned code)
{
    uint8_t *p = (uint8_t *)c->out + c->out_len;
    size_t n = fy_ws_write_header(p, true, FY_WS_CLOSE, code ? 2 : 0, NULL);

    if (code) {
        p[n++] = (uint8_t)(code >> 8);
        p[n++] = (uint8_t)code;
    }
    c->out_len += n;
    c->close_after = true;
}

/* Echo the one WebSocket frame at the start of b[0..len), whole frames only
 * (so a frame goes back as it came). Returns the bytes consumed, 0 when the
 * frame is not all here yet or out has no room for the echo (we are called
 * again after more input or a flush), FY_ERR after queueing a CLOSE. */
static ssize_t ws_echo(conn_t *c, char *b, size_t len)
{
    const uint8_t *h = (const uint8_t *)b;
    size_t hlen = 2, room = OUT_CAP - c->out_len, i;
    uint64_t plen;
    bool fin;
    int op;
    uint8_t mask[4];
    char *dst;

    if (room < 16 || len < 2)
        return 0;
    fin = (h[0] & 0x80) != 0;
    op = h[0] & 0x0f;
    plen = h[1] & 0x7f;
    /* RSV bits, an unmasked client frame, an unknown opcode: protocol error. */
    if ((h[0] & 0x70) != 0 || (h[1] & 0x80) == 0 || (op > FY_WS_BINARY && op < FY_WS_CLOSE) ||
        op > FY_WS_PONG || (op >= FY_WS_CLOSE && (!fin || plen > FY_WS_MAX_CONTROL)))
        goto protocol;
    if (plen == 126)
        hlen += 2;
    else if (plen == 127)
        hlen += 8;
    if (len < hlen + 4)
        return 0;
    if (plen >= 126) {
        plen = 0;
        for (i = 2; i < hlen; i++)
            plen = plen << 8 | h[i];
    }
    if (plen > WS_FRAME_MAX) {
        ws_close(c, FY_WS_CLOSE_TOO_BIG);
        return FY_ERR;
    }
    memcpy(mask, h + hlen, 4);
    hlen += 4;
    if (len - hlen < plen)
        return 0;
    if (room < FY_WS_MAX_HEADER + plen)
        return 0;

    switch (op) {
    case FY_WS_PONG:
        return (ssize_t)(hlen + plen);
    case FY_WS_CLOSE:
        /* Echo the status code (the reason is dropped) and close. */
        ws_close(c, plen >= 2 ? ((unsigned)(uint8_t)(b[hlen] ^ mask[0]) << 8 |
                                 (uint8_t)(b[hlen + 1] ^ mask[1]))
                              : 0);
        return (ssize_t)(hlen + plen);
    case FY_WS_PING:
        op = FY_WS_PONG;
        break;
    default:
        break;
    }
    dst = c->out + c->out_len;
    dst += fy_ws_write_header((uint8_t *)dst, fin, op, plen, NULL);
    memcpy(dst, b + hlen, (size_t)plen);
    fy_ws_mask((uint8_t *)dst, (size_t)plen, mask, 0);
    c->out_len = (size_t)(dst + plen - c->out);
    return (ssize_t)(hlen + plen);

protocol:
    ws_close(c, FY_WS_CLOSE_PROTOCOL);
    return FY_ERR;
}

/* Handle whatever complete requests sit in c->in, as long as there is room
 * to answer. Returns whether anything was consumed or queued. */
static bool process(conn_t *c)
{
    size_t pos = 0;
    bool progress = false;

    while (!c->close_after && pos < c->in_len) {
        if (c->ws) {
            ssize_t k = ws_echo(c, c->in + pos, c->in_len - pos);
            if (k == 0)
                break;
            progress = true;
            if (k < 0)
                break;
            pos += (size_t)k;
            continue;
        }
        if (c->in_body) {
            ssize_t k = eat_body(c, c->in + pos, c->in_len - pos);
            progress = true;
            if (k < 0)
                break;
            pos += (size_t)k;
            if (!c->in_body)
                finish_request(c);
            continue;
        }

        /* One response per request, so checking for room before reading
         * the head reserves it. Waiting here is our back-pressure. */
        if (c->big_left > 0 || OUT_CAP - c->out_len < RESP_MAX)
            break;

        /* RFC 9112 §2.2: ignore empty lines before a request line. */
        if (c->in[pos] == '\r' || c->in[pos] == '\n') {
            pos++;
            progress = true;
            continue;
        }

        {
            size_t from = FY_MAX(c->scan, pos);
            const char *e = memmem(c->in + from, c->in_len - from, "\r\n\r\n", 4);
            size_t hlen;

            if (e == NULL) {
                if (pos == 0 && c->in_len == IN_CAP) {
                    reject(c, "431 Request Header Fields Too Large");
                    progress = true;
                }
                /* Resume three bytes back: the CRLFCRLF may straddle. */
                c->scan = c->in_len >= 3 ? c->in_len - 3 : 0;
                break;
            }
            hlen = (size_t)(e + 4 - (c->in + pos));
            progress = true;
            if (parse_head(c, c->in + pos, hlen) < 0)
                break;
            pos += hlen;
            c->scan = 0;
            if (c->body != BODY_NONE)
                c->in_body = true;
            else
                finish_request(c);
        }
    }

    if (pos > 0) {
        memmove(c->in, c->in + pos, c->in_len - pos);
        c->in_len -= pos;
        c->scan = c->scan >= pos ? c->scan - pos : 0;
    }
    return progress;
}

/* Returns FY_OK when everything queued is sent, FY_AGAIN when the socket
 * is full, FY_ERR when the peer is gone. */
static int flush(conn_t *c)
{
    while (out_pending(c)) {
        struct iovec iov[2];
        struct msghdr mh;
        int n = 0;
        ssize_t w;
        size_t hd;

        if (c->out_pos < c->out_len) {
            iov[n].iov_base = c->out + c->out_pos;
            iov[n].iov_len = c->out_len - c->out_pos;
            n++;
        }
        if (c->big_left > 0) {
            iov[n].iov_base = (void *)(uintptr_t)c->big;
            iov[n].iov_len = c->big_left;
            n++;
        }
        memset(&mh, 0, sizeof(mh));
        mh.msg_iov = iov;
        mh.msg_iovlen = (size_t)n;
        w = sendmsg(c->fd, &mh, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return FY_AGAIN;
            return FY_ERR;
        }
        hd = FY_MIN((size_t)w, c->out_len - c->out_pos);
        c->out_pos += hd;
        c->big += (size_t)w - hd;
        c->big_left -= (size_t)w - hd;
    }
    c->out_pos = c->out_len = 0;
    c->big = NULL;
    return FY_OK;
}

static void conn_run(conn_t *c, bool readable, bool writable)
{
    int budget = READ_BUDGET;

    if (writable && out_pending(c) && flush(c) == FY_ERR)
        goto dead;

    for (;;) {
        bool progress = process(c);

        if (out_pending(c)) {
            int r = flush(c);
            if (r == FY_ERR)
                goto dead;
            /* Room again: process() may be able to take the next request. */
            if (r == FY_OK)
                progress = true;
        }
        if (readable && can_read(c) && budget > 0) {
            size_t room = IN_CAP - c->in_len;
            ssize_t n = read(c->fd, c->in + c->in_len, room);

            budget--;
            if (n > 0) {
                c->in_len += (size_t)n;
                progress = true;
                /* A short read drained the socket; level-triggered epoll
                 * tells us when more comes, so skip the EAGAIN read. */
                if ((size_t)n < room)
                    readable = false;
            } else if (n == 0) {
                c->rd_eof = true;
                progress = true;
            } else if (errno == EINTR) {
                progress = true;
            } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
                readable = false;
            } else {
                goto dead;
            }
        }
        if (!progress)
            break;
    }

    if (!out_pending(c)) {
        if (c->close_after) {
            /* Half-close first so the client reads our FIN after the
             * response rather than a reset. */
            shutdown(c->fd, SHUT_WR);
            goto dead;
        }
        /* The peer is done and what is left in in can never complete. */
        if (c->rd_eof)
            goto dead;
    }
    set_interest(c);
    return;

dead:
    conn_close(c);
}

static void on_accept(int lfd)
{
    for (;;) {
        struct epoll_event ev;
        conn_t *c;
        int one = 1;
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                perror("origin: accept4");
            return;
        }
        /* Responses leave in one write anyway; this keeps a partial-write
         * tail from waiting on Nagle. */
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

        /* No zeroing of the buffers: only the small header is cleared. */
        c = malloc(sizeof(*c));
        if (c == NULL) {
            close(fd);
            continue;
        }
        memset(c, 0, offsetof(conn_t, in));
        c->fd = fd;
        c->events = EPOLLIN | EPOLLRDHUP;
        ev.events = c->events;
        ev.data.ptr = c;
        if (epoll_ctl(g_ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
            perror("origin: epoll_ctl");
            close(fd);
            free(c);
        }
    }
}

static int listen_on(const char *spec, struct sockaddr_in *sa)
{
    const char *colon = strrchr(spec, ':');
    char host[64];
    char *endp;
    long port;
    int fd, one = 1;
    socklen_t slen = sizeof(*sa);

    if (colon == NULL || (size_t)(colon - spec) >= sizeof(host)) {
        fprintf(stderr, "origin: -l wants HOST:PORT, got '%s'\n", spec);
        return -1;
    }
    memcpy(host, spec, (size_t)(colon - spec));
    host[colon - spec] = '\0';
    port = strtol(colon + 1, &endp, 10);
    if (*endp != '\0' || port < 0 || port > 65535) {
        fprintf(stderr, "origin: bad port in '%s'\n", spec);
        return -1;
    }
    memset(sa, 0, sizeof(*sa));
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &sa->sin_addr) != 1) {
        fprintf(stderr, "origin: bad IPv4 address '%s'\n", host);
        return -1;
    }

    fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        perror("origin: socket");
        return -1;
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)sa, sizeof(*sa)) < 0 || listen(fd, 4096) < 0 ||
        getsockname(fd, (struct sockaddr *)sa, &slen) < 0) {
        fprintf(stderr, "origin: cannot listen on %s: %s\n", spec, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

int main(int argc, char **argv)
{
    const char *spec = "127.0.0.1:0";
    struct sockaddr_in sa;
    struct epoll_event ev, evs[MAX_EVENTS];
    char addr[INET_ADDRSTRLEN];
    int lfd, i;

    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-l") == 0 && i + 1 < argc) {
            spec = argv[++i];
        } else {
            fprintf(stderr, "usage: origin [-l HOST:PORT]\n");
            return 2;
        }
    }

    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_term);
    signal(SIGINT, on_term);
    memset(g_body, 'x', sizeof(g_body));

    lfd = listen_on(spec, &sa);
    if (lfd < 0)
        return 1;
    g_ep = epoll_create1(EPOLL_CLOEXEC);
    if (g_ep < 0) {
        perror("origin: epoll_create1");
        return 1;
    }
    ev.events = EPOLLIN;
    ev.data.ptr = NULL;   /* NULL marks the listener */
    if (epoll_ctl(g_ep, EPOLL_CTL_ADD, lfd, &ev) < 0) {
        perror("origin: epoll_ctl");
        return 1;
    }

    inet_ntop(AF_INET, &sa.sin_addr, addr, sizeof(addr));
    printf("listening %s:%u\n", addr, (unsigned)ntohs(sa.sin_port));
    fflush(stdout);

    for (;;) {
        int n = epoll_wait(g_ep, evs, MAX_EVENTS, -1);

        if (n < 0) {
            if (errno == EINTR)
                continue;
            perror("origin: epoll_wait");
            return 1;
        }
        for (i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            uint32_t e = evs[i].events;

            if (c == NULL) {
                on_accept(lfd);
                continue;
            }
            conn_run(c, (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0,
                     (e & (EPOLLOUT | EPOLLHUP | EPOLLERR)) != 0);
        }
    }
}
