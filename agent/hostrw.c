/*
 * hostrw.c: where each request starts on a stream, for the Host rewrite
 * (--host-header rewrite|VALUE) and for counting requests.
 *
 * The relay sends a stream's request heads (already rewritten and strictly
 * parsed by it) and bodies as they are, one request after another on a
 * keep-alive connection. This follows that framing with the shared parser:
 * a head (fy_h1_parse_request), then its body by Content-Length or chunked
 * (fy_h1_chunked_scan), then the next head. A request that asks for an
 * upgrade (or CONNECT) ends the framing: raw bytes follow for good, whether
 * the service switches or not (the rare refused upgrade followed by more
 * requests then keeps their Host as sent).
 *
 * Observe mode never changes or holds bytes; rewrite mode holds a partial
 * head in the caller's raw buffer until it is whole.
 */
#include "agent/agent.h"

#include <string.h>

#define RW_MAX_HEAD (64u * 1024)
#define RW_MAX_HEADERS 256

static void after_head(fy_rw_t *rw, const fy_h1_request_t *r)
{
    rw->upgrade = (r->flags & (FY_H1_F_UPGRADE | FY_H1_F_CONNECT)) != 0;
    memset(&rw->ch, 0, sizeof(rw->ch));
    switch (r->body) {
    case FY_H1_BODY_LENGTH:
        rw->left = r->content_length;
        rw->state = rw->left > 0 ? FY_RW_LENGTH : (rw->upgrade ? FY_RW_RAW : FY_RW_HEAD);
        return;
    case FY_H1_BODY_CHUNKED:
        rw->state = FY_RW_CHUNKED;
        return;
    default:
        rw->state = rw->upgrade ? FY_RW_RAW : FY_RW_HEAD;
        return;
    }
}

static void after_body(fy_rw_t *rw)
{
    rw->state = rw->upgrade ? FY_RW_RAW : FY_RW_HEAD;
}

static int parse(const uint8_t *p, size_t n, fy_h1_request_t *r, fy_h1_header_t *hdrs)
{
    fy_h1_limits_t lim = {RW_MAX_HEADERS, RW_MAX_HEAD};
    return fy_h1_parse_request((const char *)p, n, r, hdrs, &lim);
}


/* Append head (head_len bytes at p, parsed as r) to out with Host: host. */
static int put_head(const uint8_t *p, size_t head_len, const fy_h1_request_t *r, fy_buf_t *out, size_t max,
                    const char *host)
{
    size_t i, hostlen = strlen(host);
    const fy_h1_header_t *h = NULL;

    for (i = 0; i < r->nheaders; i++)
        if (fy_ieq(r->headers[i].name, r->headers[i].name_len, "host"))
            h = &r->headers[i];
    if (fy_buf_reserve(out, head_len + hostlen + 8, max) != FY_OK)
        return FY_ERR;
    if (h != NULL) {
        size_t before = (size_t)((const uint8_t *)h->value - p);
        size_t after = before + h->value_len;
        FY_GUARD(fy_buf_append(out, p, before, max));
        FY_GUARD(fy_buf_append(out, host, hostlen, max));
        return fy_buf_append(out, p + after, head_len - after, max);
    }
    /* No Host (HTTP/1.0): add one after the request line. */
    {
        const uint8_t *eol = memchr(p, '\n', head_len);
        size_t line = (size_t)(eol - p) + 1;
        FY_GUARD(fy_buf_append(out, p, line, max));
        FY_GUARD(fy_buf_append(out, "Host: ", 6, max));
        FY_GUARD(fy_buf_append(out, host, hostlen, max));
        FY_GUARD(fy_buf_append(out, "\r\n", 2, max));
        return fy_buf_append(out, p + line, head_len - line, max);
    }
}

int fy_rw_pump(fy_rw_t *rw, fy_buf_t *raw, fy_buf_t *out, size_t out_max, const char *host, unsigned *heads)
{
    fy_h1_header_t hdrs[RW_MAX_HEADERS];
    fy_h1_request_t r;
    /* A head may take out past out_max once; bodies never do. */
    size_t hard = out_max + RW_MAX_HEAD + 512;

    while (fy_buf_len(raw) > 0 && fy_buf_len(out) < out_max) {
        size_t len = fy_buf_len(raw), room = out_max - fy_buf_len(out), take;
        const uint8_t *p = fy_buf_data(raw);
        int rc;

        switch (rw->state) {
        case FY_RW_HEAD:
            rc = parse(p, len, &r, hdrs);
            if (rc == FY_AGAIN)
                return len >= RW_MAX_HEAD ? FY_ERR : FY_OK;
            if (rc < 0 || put_head(p, (size_t)rc, &r, out, hard, host) != FY_OK)
                return FY_ERR;
            (*heads)++;
            fy_buf_consume(raw, (size_t)rc);
            after_head(rw, &r);
            break;
        case FY_RW_LENGTH:
            take = (size_t)FY_MIN((uint64_t)FY_MIN(len, room), rw->left);
            FY_GUARD(fy_buf_append(out, p, take, hard));
            fy_buf_consume(raw, take);
            rw->left -= take;
            if (rw->left == 0)
                after_body(rw);
            break;
        case FY_RW_CHUNKED: {
            ssize_t c = fy_h1_chunked_scan(&rw->ch, (const char *)p, FY_MIN(len, room));
            if (c < 0)
                return FY_ERR;
            FY_GUARD(fy_buf_append(out, p, (size_t)c, hard));
            fy_buf_consume(raw, (size_t)c);
            if (rw->ch.done)
                after_body(rw);
            break;
        }
        default:
            take = FY_MIN(len, room);
            FY_GUARD(fy_buf_append(out, p, take, hard));
            fy_buf_consume(raw, take);
            break;
        }
    }
    return FY_OK;
}

