/*
 * mux.c: ferry's stream multiplexing codec (see mux.h, docs/PROTOCOL.md).
 *
 * The reader is resumable over any split of the byte stream, in the nginx
 * sw_* manner, and unlike the WebSocket reader it always consumes what it is
 * given: the 10-byte header is collected in r->hbuf, and a non-DATA payload
 * (bounded by FY_MUX_MAX_CONTROL) is reported from the caller's buffer when
 * it is all there (nearly always), else collected in r->ctl, allocated for
 * that frame only (an idle tunnel connection holds no 8 KiB of it), so the
 * caller never has to keep a tail. DATA payload is not copied: it is reported as slices of the
 * caller's buffer, the last one with end set. Every call with len > 0
 * consumes at least one byte and reports at most one event; a call that
 * completes a header also reports the frame's payload present in the same
 * buffer, so small frames cost one call each.
 *
 * Also here: the key=value payload helpers (HELLO, READY, OPEN) and the
 * credit arithmetic of flow control.
 */
#include "fy.h"
#include "mux/mux.h"

#include "conf/conf.h"

#include <stdlib.h>
#include <string.h>

enum {
    ST_HEADER = 0,  /* collecting the 10-byte frame header in hbuf */
    ST_CONTROL,     /* a non-DATA payload: whole in the next buffer, or collected in ctl */
    ST_DATA,        /* reporting DATA payload slices */
    ST_FAILED,      /* a protocol error was reported; stays failed */
};

void fy_mux_reader_init(fy_mux_reader_t *r)
{
    memset(r, 0, sizeof(*r));
    r->state = ST_HEADER;
}

void fy_mux_reader_free(fy_mux_reader_t *r)
{
    free(r->ctl);
    r->ctl = NULL;
}

static ssize_t fail(fy_mux_reader_t *r, const char *reason)
{
    fy_mux_reader_free(r);
    r->state = ST_FAILED;
    r->err_reason = reason;
    return FY_ERR;
}

/* Check a complete header against the frame rules of docs/PROTOCOL.md
 * before any of its payload is accepted. Returns FY_OK or FY_ERR. */
static int check_header(fy_mux_reader_t *r, const fy_mux_hdr_t *h)
{
    if (h->type < FY_MUX_HELLO || h->type > FY_MUX_TYPE_MAX) {
        r->err_reason = "mux: unknown frame type";
        return FY_ERR;
    }

    /* Stream 0 is the connection itself: only the connection-level frames
     * live there, and stream frames never do. WINDOW serves both. */
    switch (h->type) {
    case FY_MUX_HELLO:
    case FY_MUX_READY:
    case FY_MUX_PING:
    case FY_MUX_PONG:
    case FY_MUX_GOAWAY:
        if (h->stream != 0) {
            r->err_reason = "mux: connection frame on a stream";
            return FY_ERR;
        }
        break;
    case FY_MUX_OPEN:
    case FY_MUX_DATA:
    case FY_MUX_FIN:
    case FY_MUX_RST:
        if (h->stream == 0) {
            r->err_reason = "mux: stream frame on stream 0";
            return FY_ERR;
        }
        break;
    default:
        break;
    }

    if (h->type == FY_MUX_DATA) {
        if (h->length > FY_MUX_MAX_DATA) {
            r->err_reason = "mux: DATA frame too large";
            return FY_ERR;
        }
        return FY_OK;
    }
    /* The reader buffers non-DATA payloads, so they are capped. */
    if (h->length > FY_MUX_MAX_CONTROL) {
        r->err_reason = "mux: control frame too large";
        return FY_ERR;
    }
    switch (h->type) {
    case FY_MUX_WINDOW:
        if (h->length != 4) {
            r->err_reason = "mux: WINDOW payload is not 4 bytes";
            return FY_ERR;
        }
        break;
    case FY_MUX_PING:
    case FY_MUX_PONG:
        if (h->length != 8) {
            r->err_reason = "mux: PING/PONG payload is not 8 bytes";
            return FY_ERR;
        }
        break;
    case FY_MUX_RST:
    case FY_MUX_GOAWAY:
        if (h->length < 4) {
            r->err_reason = "mux: RST/GOAWAY payload shorter than its code";
            return FY_ERR;
        }
        break;
    case FY_MUX_FIN:
        if (h->length != 0) {
            r->err_reason = "mux: FIN with a payload";
            return FY_ERR;
        }
        break;
    default:
        break;
    }
    return FY_OK;
}

static void frame_event(fy_mux_reader_t *r, fy_mux_event_t *ev, const uint8_t *payload, size_t len)
{
    ev->type = FY_MUX_EV_FRAME;
    ev->hdr = r->hdr;
    ev->payload = payload;
    ev->len = len;
    ev->end = true;
    r->state = ST_HEADER;
}

ssize_t fy_mux_read(fy_mux_reader_t *r, const uint8_t *buf, size_t len, fy_mux_event_t *ev)
{
    size_t pos = 0, n;

    memset(ev, 0, sizeof(*ev));
    if (r->state == ST_FAILED)
        return FY_ERR;
    /* The payload of the frame reported last is no longer the caller's. */
    if (r->ctl != NULL && r->state == ST_HEADER)
        fy_mux_reader_free(r);

    /* At most one event: each branch below either returns with one, or
     * runs out of input, or moves on to the payload of the same frame. */
    while (pos < len || r->state == ST_DATA) {
        switch (r->state) {
        case ST_HEADER:
            n = FY_MIN(len - pos, FY_MUX_HDR - r->hgot);
            memcpy(r->hbuf + r->hgot, buf + pos, n);
            r->hgot += n;
            pos += n;
            if (r->hgot < FY_MUX_HDR)
                return (ssize_t)pos;
            r->hgot = 0;
            r->hdr.type = r->hbuf[0];
            r->hdr.flags = r->hbuf[1];
            r->hdr.stream = fy_mux_get_u32(r->hbuf + 2);
            r->hdr.length = fy_mux_get_u32(r->hbuf + 6);
            if (check_header(r, &r->hdr) != FY_OK)
                return fail(r, r->err_reason);
            r->left = r->hdr.length;
            r->ctl_got = 0;
            if (r->hdr.type == FY_MUX_DATA) {
                r->state = ST_DATA;
                /* A DATA header with nothing of its payload in this buffer
                 * reports nothing yet; an empty DATA frame is reported now. */
                if (pos == len && r->left != 0)
                    return (ssize_t)pos;
            } else if (len - pos >= r->left) {
                /* The whole payload is here: report it where it lies. */
                frame_event(r, ev, buf + pos, r->left);
                pos += r->left;
                r->left = 0;
                return (ssize_t)pos;
            } else {
                r->state = ST_CONTROL;
            }
            break;

        case ST_CONTROL:
            if (r->ctl == NULL && len - pos >= r->left) {
                frame_event(r, ev, buf + pos, r->left);
                pos += r->left;
                r->left = 0;
                return (ssize_t)pos;
            }
            if (r->ctl == NULL && (r->ctl = malloc(r->hdr.length)) == NULL)
                return fail(r, "mux: out of memory");
            n = FY_MIN(len - pos, (size_t)r->left);
            memcpy(r->ctl + r->ctl_got, buf + pos, n);
            r->ctl_got += n;
            r->left -= (uint32_t)n;
            pos += n;
            if (r->left == 0)
                frame_event(r, ev, r->ctl, r->ctl_got);
            return (ssize_t)pos;

        case ST_DATA:
            n = FY_MIN(len - pos, (size_t)r->left);
            if (n == 0 && r->left != 0)
                return (ssize_t)pos;
            r->left -= (uint32_t)n;
            ev->type = FY_MUX_EV_DATA;
            ev->hdr = r->hdr;
            ev->payload = buf + pos;
            ev->len = n;
            ev->end = r->left == 0;
            if (ev->end)
                r->state = ST_HEADER;
            return (ssize_t)(pos + n);

        default:
            fy_assert(!"mux: bad reader state");
        }
    }
    return (ssize_t)pos;
}

uint32_t fy_mux_reader_data_left(const fy_mux_reader_t *r, fy_mux_hdr_t *hdr)
{
    if (r->state != ST_DATA)
        return 0;
    *hdr = r->hdr;
    return r->left;
}

void fy_mux_reader_skip(fy_mux_reader_t *r, uint32_t n)
{
    fy_assert(r->state == ST_DATA && n <= r->left);
    r->left -= n;
    if (r->left == 0)
        r->state = ST_HEADER;
}

bool fy_mux_reader_at_boundary(const fy_mux_reader_t *r)
{
    return r->state == ST_HEADER && r->hgot == 0;
}

void fy_mux_put_hdr(uint8_t *out, uint8_t type, uint8_t flags, uint32_t stream, uint32_t length)
{
    out[0] = type;
    out[1] = flags;
    fy_mux_put_u32(out + 2, stream);
    fy_mux_put_u32(out + 6, length);
}

/* ---- key=value payloads ---- */

static bool kv_key_char(uint8_t c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
}

static bool kv_value_char(uint8_t c)
{
    return c != '\r' && c != '\n' && c != '\0';
}

/*
 * Scan p[0..len) for key; the payload should be valid (fy_mux_kv_valid), and
 * if it is not, lines without '=' and an unterminated last line are skipped
 * rather than trusted. The first occurrence wins. key is a NUL-terminated
 * literal of the caller; vlen may be NULL. Returns a borrowed slice of p.
 */
const char *fy_mux_kv_get(const uint8_t *p, size_t len, const char *key, size_t *vlen)
{
    size_t i = 0;

    if (p == NULL || key == NULL)
        return NULL;
    while (i < len) {
        size_t start = i, eq = len, nl;
        for (nl = i; nl < len && p[nl] != '\n'; nl++)
            if (eq == len && p[nl] == '=')
                eq = nl;
        if (nl == len)
            break;
        i = nl + 1;
        if (eq == len)
            continue;
        /* Exact match: the line's key and the literal end together. */
        size_t k = 0;
        while (start + k < eq && key[k] != '\0' && p[start + k] == (uint8_t)key[k])
            k++;
        if (start + k == eq && key[k] == '\0' && k > 0) {
            if (vlen != NULL)
                *vlen = nl - eq - 1;
            return (const char *)p + eq + 1;
        }
    }
    return NULL;
}

/*
 * Append "key=value\n" to out[*len..cap). key: NUL-terminated, 1+ chars of
 * [a-z0-9_]; val: vlen bytes without CR, LF or NUL (val may be NULL when
 * vlen == 0). Returns FY_OK with *len advanced, or FY_ERR leaving out and
 * *len untouched.
 */
int fy_mux_kv_put(uint8_t *out, size_t *len, size_t cap, const char *key, const char *val, size_t vlen)
{
    size_t klen = 0, avail, need;

    if (out == NULL || len == NULL || key == NULL || *len > cap)
        return FY_ERR;
    if (val == NULL && vlen != 0)
        return FY_ERR;
    while (key[klen] != '\0') {
        if (!kv_key_char((uint8_t)key[klen]))
            return FY_ERR;
        klen++;
    }
    if (klen == 0)
        return FY_ERR;
    /* Size first, in a form that cannot overflow, so a wrong vlen is
     * refused before val is read that far. */
    avail = cap - *len;
    if (klen > avail || avail - klen < 2 || vlen > avail - klen - 2)
        return FY_ERR;
    for (size_t i = 0; i < vlen; i++)
        if (!kv_value_char((uint8_t)val[i]))
            return FY_ERR;

    need = klen + 1 + vlen + 1;
    memcpy(out + *len, key, klen);
    out[*len + klen] = '=';
    if (vlen != 0)
        memcpy(out + *len + klen + 1, val, vlen);
    out[*len + klen + 1 + vlen] = '\n';
    *len += need;
    return FY_OK;
}

/* True when p[0..len) is zero or more "key=value\n" lines, each with a
 * non-empty [a-z0-9_] key and a value free of CR and NUL. */
bool fy_mux_kv_valid(const uint8_t *p, size_t len)
{
    size_t i = 0;

    if (len != 0 && p == NULL)
        return false;
    while (i < len) {
        size_t k = i;
        while (k < len && kv_key_char(p[k]))
            k++;
        if (k == i || k == len || p[k] != '=')
            return false;
        i = k + 1;
        while (i < len && p[i] != '\n') {
            if (!kv_value_char(p[i]))
                return false;
            i++;
        }
        if (i == len)
            return false;
        i++;
    }
    return true;
}

/* ---- credit flow control ---- */

/* Both sides grant the same initial connection window (FY_MUX_CONN_WINDOW)
 * and stream window (FY_MUX_STREAM_WINDOW, or what HELLO and READY agreed),
 * so what we may send starts at the value we grant. */
void fy_mux_credit_init(fy_mux_credit_t *c, uint32_t initial)
{
    fy_mux_credit_init_pair(c, initial, initial);
}

void fy_mux_credit_init_pair(fy_mux_credit_t *c, uint32_t send, uint32_t recv)
{
    c->send = send;
    c->recv = recv;
    c->initial = recv;
    c->unacked = 0;
}

int fy_mux_kv_window(const uint8_t *p, size_t len, uint32_t *w)
{
    size_t vl;
    const char *v = fy_mux_kv_get(p, len, "window", &vl);
    char s[16];
    uint64_t n;

    if (v == NULL || vl >= sizeof(s))
        return FY_ERR;
    memcpy(s, v, vl);
    s[vl] = '\0';
    if (fy_conf_uint(s, FY_MUX_STREAM_WINDOW, 16u * 1024 * 1024, &n) != FY_OK)
        return FY_ERR;
    *w = (uint32_t)n;
    return FY_OK;
}

int fy_mux_credit_received(fy_mux_credit_t *c, uint32_t n)
{
    if ((int64_t)n > c->recv)
        return FY_ERR;
    c->recv -= n;
    return FY_OK;
}

/*
 * Returning credit byte by byte would cost a WINDOW frame per DATA frame;
 * waiting for half the window keeps the frames few while the sender, which
 * still holds the other half, never stalls on a fast reader.
 */
uint32_t fy_mux_credit_consumed(fy_mux_credit_t *c, uint32_t n)
{
    uint32_t inc;

    /* Saturate rather than wrap: more consumed than was ever granted is a
     * caller bug, and a wrapped count would under-announce forever. */
    c->unacked = n > UINT32_MAX - c->unacked ? UINT32_MAX : c->unacked + n;
    if (c->unacked == 0 || c->unacked < c->initial / 2)
        return 0;
    inc = c->unacked;
    c->recv += inc;
    c->unacked = 0;
    return inc;
}

int fy_mux_credit_granted(fy_mux_credit_t *c, uint32_t n)
{
    if (n == 0 || c->send + (int64_t)n > (int64_t)FY_MUX_MAX_WINDOW)
        return FY_ERR;
    c->send += n;
    return FY_OK;
}
