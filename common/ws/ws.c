/*
 * ws.c: RFC 6455 WebSocket framing, sans-I/O (see ws.h).
 *
 * The reader is a small resumable state machine in the nginx sw_* manner.
 * A frame header (2..14 bytes) is not consumed until it is complete: the
 * caller keeps the unconsumed tail, so each call re-parses the header from
 * buf[0], which needs no copy and no header state in the reader. Data payload
 * is then unmasked in place and handed out as slices as it arrives, so a
 * large message never has to be buffered whole. Control frames (<= 125
 * bytes, RFC 6455 §5.5) are only reported once whole, which lets the caller
 * answer a PING or CLOSE from one contiguous slice.
 *
 * Events and consumed counts, per call:
 *   0 bytes, NONE          more bytes are needed (header or control frame
 *                          incomplete, or no payload byte in buf)
 *   n > 0 bytes, NONE      a data frame header with no payload byte after it
 *                          yet, or an empty non-final fragment, was consumed
 *   n > 0 bytes, DATA      payload (data = the unmasked bytes; n also counts
 *                          the frame header when it came in the same call)
 *   n > 0 bytes, CONTROL   a whole control frame (data = its payload)
 *   n >= 0 bytes, MESSAGE_END
 *                          the message is complete. It is its own event, so
 *                          after the DATA event carrying the last payload byte
 *                          it consumes 0 bytes; after an empty final frame it
 *                          consumes that frame's header.
 * So the caller's loop is: call, handle the event, advance by n, and stop
 * only when a call returns 0 with NONE (not merely when n == 0 or len == 0:
 * a MESSAGE_END may be pending with nothing left in buf).
 *
 * After FY_ERR the reader stays failed; the caller sends a CLOSE with
 * r->close_code and drops the connection.
 */
#include "fy.h"
#include "ws/ws.h"

#include <string.h>

#include <openssl/sha.h>
#include <sodium.h>

enum {
    ST_HEADER = 0,     /* between frames: waiting for a frame header */
    ST_PAYLOAD,        /* inside a data frame's payload */
    ST_MESSAGE_END,    /* final frame fully read: MESSAGE_END still to report */
    ST_FAILED,         /* a protocol error was reported; stays failed */
};

/* RFC 6455 §4.2.2: the GUID appended to the client's key. */
static const char ws_guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

#define WS_KEY_LEN 24     /* base64 of 16 bytes, with "==" padding */
#define WS_KEY_RAW 16
#define WS_ACCEPT_LEN 28  /* base64 of a 20-byte SHA-1 digest */

void fy_ws_reader_init(fy_ws_reader_t *r, bool expect_masked, uint64_t max_message)
{
    memset(r, 0, sizeof(*r));
    r->state = ST_HEADER;
    r->expect_masked = expect_masked;
    r->max_message = max_message;
}

static ssize_t fail(fy_ws_reader_t *r, int code, const char *reason)
{
    r->state = ST_FAILED;
    r->close_code = code;
    r->err_reason = reason;
    return FY_ERR;
}

static bool is_control(int opcode)
{
    return (opcode & 0x8) != 0;
}

/*
 * Parse and validate the frame header at buf[0..len) (RFC 6455 §5.2).
 * Validation runs on whatever part of the header is present, so a bad first
 * byte fails at once instead of waiting for the rest. Returns the header
 * length with r->frame_* and r->mask filled in, 0 when more bytes are
 * needed, or FY_ERR.
 */
static ssize_t parse_header(fy_ws_reader_t *r, const uint8_t *buf, size_t len)
{
    if (len < 2)
        return 0;

    uint8_t b0 = buf[0], b1 = buf[1];
    bool fin = (b0 & 0x80) != 0;
    int opcode = b0 & 0x0f;
    bool masked = (b1 & 0x80) != 0;
    uint64_t plen = b1 & 0x7f;

    /* §5.2: no extension was negotiated, so RSV1-3 must be 0. */
    if (b0 & 0x70)
        return fail(r, FY_WS_CLOSE_PROTOCOL, "ws: reserved bits set");
    switch (opcode) {
    case FY_WS_CONT:
        /* §5.4: a continuation needs an open fragmented message. */
        if (!r->in_message)
            return fail(r, FY_WS_CLOSE_PROTOCOL, "ws: continuation without a message");
        break;
    case FY_WS_TEXT:
    case FY_WS_BINARY:
        /* §5.4: fragments of different messages must not interleave. */
        if (r->in_message)
            return fail(r, FY_WS_CLOSE_PROTOCOL, "ws: new data frame inside a fragmented message");
        break;
    case FY_WS_CLOSE:
    case FY_WS_PING:
    case FY_WS_PONG:
        /* §5.5: control frames are never fragmented and carry <= 125 bytes
         * (so the 16- and 64-bit length forms are excluded too). */
        if (!fin)
            return fail(r, FY_WS_CLOSE_PROTOCOL, "ws: fragmented control frame");
        if (plen > FY_WS_MAX_CONTROL)
            return fail(r, FY_WS_CLOSE_PROTOCOL, "ws: control frame over 125 bytes");
        break;
    default:
        /* §5.2: 0x3-0x7 and 0xB-0xF are reserved. */
        return fail(r, FY_WS_CLOSE_PROTOCOL, "ws: unknown opcode");
    }
    /* §5.1: a client masks every frame, a server masks none. */
    if (masked != r->expect_masked)
        return fail(r, FY_WS_CLOSE_PROTOCOL,
                    r->expect_masked ? "ws: unmasked frame from client" : "ws: masked frame from server");

    size_t hlen = 2;
    if (plen == 126) {
        if (len < 4)
            return 0;
        plen = (uint64_t)buf[2] << 8 | buf[3];
        /* §5.2: "the minimal number of bytes MUST be used". */
        if (plen < 126)
            return fail(r, FY_WS_CLOSE_PROTOCOL, "ws: non-minimal 16-bit length");
        hlen = 4;
    } else if (plen == 127) {
        if (len < 10)
            return 0;
        plen = 0;
        for (size_t i = 2; i < 10; i++)
            plen = plen << 8 | buf[i];
        if (plen >> 63)
            return fail(r, FY_WS_CLOSE_PROTOCOL, "ws: 64-bit length with the top bit set");
        if (plen <= 0xffff)
            return fail(r, FY_WS_CLOSE_PROTOCOL, "ws: non-minimal 64-bit length");
        hlen = 10;
    }

    /* Refuse an oversized message from its header, before any of its payload
     * is accepted (§10.4); message_len holds the earlier fragments. */
    if (!is_control(opcode) && plen > r->max_message - FY_MIN(r->message_len, r->max_message))
        return fail(r, FY_WS_CLOSE_TOO_BIG, "ws: message too big");

    if (masked) {
        if (len < hlen + 4)
            return 0;
        memcpy(r->mask, buf + hlen, 4);
        hlen += 4;
    }

    r->frame_fin = fin;
    r->frame_opcode = opcode;
    /* The all-zero key masks nothing: no pass over the payload. */
    r->frame_masked = masked && (r->mask[0] | r->mask[1] | r->mask[2] | r->mask[3]) != 0;
    r->frame_left = plen;
    r->mask_pos = 0;
    return (ssize_t)hlen;
}

/* Hand out up to len payload bytes of the current data frame at buf,
 * unmasked in place. Leaves the state at the frame's end. */
static size_t take_payload(fy_ws_reader_t *r, uint8_t *buf, size_t len, fy_ws_event_t *ev)
{
    size_t n = (size_t)FY_MIN((uint64_t)len, r->frame_left);

    if (r->frame_masked)
        fy_ws_mask(buf, n, r->mask, r->mask_pos);
    r->mask_pos += n;
    r->frame_left -= n;
    r->message_len += n;
    ev->type = FY_WS_EV_DATA;
    ev->opcode = r->message_opcode;
    ev->data = buf;
    ev->len = n;
    if (r->frame_left == 0)
        r->state = r->frame_fin ? ST_MESSAGE_END : ST_HEADER;
    else
        r->state = ST_PAYLOAD;
    return n;
}

uint64_t fy_ws_reader_raw_left(const fy_ws_reader_t *r)
{
    return r->state == ST_PAYLOAD && !r->frame_masked ? r->frame_left : 0;
}

void fy_ws_reader_skip(fy_ws_reader_t *r, uint64_t n)
{
    fy_assert(r->state == ST_PAYLOAD && n <= r->frame_left);
    r->mask_pos += n;
    r->frame_left -= n;
    r->message_len += n;
    if (r->frame_left == 0)
        r->state = r->frame_fin ? ST_MESSAGE_END : ST_HEADER;
}

bool fy_ws_reader_at_header(const fy_ws_reader_t *r)
{
    return r->state == ST_HEADER;
}

size_t fy_ws_peek_header(const uint8_t *p, size_t n, uint64_t *plen, bool *zero_key)
{
    static const uint8_t zero[4];
    uint64_t len;
    size_t ext, hl, i;

    if (n < 2)
        return 0;
    len = p[1] & 0x7f;
    ext = len == 126 ? 2 : len == 127 ? 8 : 0;
    hl = 2 + ext + ((p[1] & 0x80) ? 4 : 0);
    if (n < hl)
        return 0;
    if (ext > 0)
        for (len = 0, i = 0; i < ext; i++)
            len = len << 8 | p[2 + i];
    *plen = len;
    *zero_key = !(p[1] & 0x80) || memcmp(p + hl - 4, zero, 4) == 0;
    return hl;
}

static void end_message(fy_ws_reader_t *r, fy_ws_event_t *ev)
{
    ev->type = FY_WS_EV_MESSAGE_END;
    ev->opcode = r->message_opcode;
    r->in_message = false;
    r->message_len = 0;
    r->state = ST_HEADER;
}

ssize_t fy_ws_read(fy_ws_reader_t *r, uint8_t *buf, size_t len, fy_ws_event_t *ev)
{
    ev->type = FY_WS_EV_NONE;
    ev->opcode = 0;
    ev->data = NULL;
    ev->len = 0;

    switch (r->state) {
    case ST_FAILED:
        return FY_ERR;

    case ST_MESSAGE_END:
        end_message(r, ev);
        return 0;

    case ST_PAYLOAD:
        if (len == 0)
            return 0;
        return (ssize_t)take_payload(r, buf, len, ev);

    case ST_HEADER:
        break;

    default:
        fy_assert(!"ws: bad reader state");
    }

    ssize_t h = parse_header(r, buf, len);
    if (h <= 0)
        return h;
    size_t hlen = (size_t)h;

    if (is_control(r->frame_opcode)) {
        /* Consume header and payload together, or neither: the caller keeps
         * the partial frame (at most 14 + 125 bytes) and calls again. */
        size_t plen = (size_t)r->frame_left;
        if (len - hlen < plen)
            return 0;
        if (r->frame_masked)
            fy_ws_mask(buf + hlen, plen, r->mask, 0);
        r->frame_left = 0;
        ev->type = FY_WS_EV_CONTROL;
        ev->opcode = r->frame_opcode;
        ev->data = buf + hlen;
        ev->len = plen;
        return (ssize_t)(hlen + plen);
    }

    if (r->frame_opcode != FY_WS_CONT) {
        r->in_message = true;
        r->message_opcode = r->frame_opcode;
        r->message_len = 0;
    }
    if (r->frame_left == 0) {
        /* An empty frame: the final one ends the message right here. */
        if (r->frame_fin)
            end_message(r, ev);
        return (ssize_t)hlen;
    }
    if (len == hlen) {
        r->state = ST_PAYLOAD;
        return (ssize_t)hlen;
    }
    return (ssize_t)(hlen + take_payload(r, buf + hlen, len - hlen, ev));
}

size_t fy_ws_header_size(uint64_t len, bool masked)
{
    size_t n = 2;

    if (len >= 65536)
        n += 8;
    else if (len >= 126)
        n += 2;
    return n + (masked ? 4 : 0);
}

size_t fy_ws_write_header(uint8_t *out, bool fin, int opcode, uint64_t len, const uint8_t *mask)
{
    size_t n = 2;

    out[0] = (uint8_t)((fin ? 0x80 : 0) | (opcode & 0x0f));
    out[1] = mask != NULL ? 0x80 : 0;
    /* §5.2: the minimal length encoding, which our reader also demands. */
    if (len < 126) {
        out[1] |= (uint8_t)len;
    } else if (len < 65536) {
        out[1] |= 126;
        out[2] = (uint8_t)(len >> 8);
        out[3] = (uint8_t)len;
        n = 4;
    } else {
        out[1] |= 127;
        for (size_t i = 0; i < 8; i++)
            out[2 + i] = (uint8_t)(len >> (56 - 8 * i));
        n = 10;
    }
    if (mask != NULL) {
        memcpy(out + n, mask, 4);
        n += 4;
    }
    return n;
}

/*
 * §5.3: octet i of the payload is XORed with mask[i % 4]. This is on every
 * byte the relay carries, so it works 8 bytes at a time: the key, rotated to
 * the starting offset, is laid out twice in a 64-bit word (memcpy keeps it
 * free of alignment and aliasing trouble, and compilers turn it into plain
 * loads and stores). 8 is a multiple of 4, so the word stays in phase.
 */
/* 16-byte lanes (SSE2 on every x86-64; GCC and clang vector extensions):
 * masking is on the agent's and the relay's hot path for every byte. */
typedef uint64_t fy_ws_v2 __attribute__((vector_size(16)));

void fy_ws_mask(uint8_t *data, size_t len, const uint8_t mask[4], uint64_t offset)
{
    uint8_t rot[16];
    fy_ws_v2 m, w0, w1, w2, w3;
    size_t i = 0;

    for (size_t k = 0; k < 16; k++)
        rot[k] = mask[(offset + k) & 3];
    memcpy(&m, rot, 16);
    for (; i + 64 <= len; i += 64) {
        memcpy(&w0, data + i, 16);
        memcpy(&w1, data + i + 16, 16);
        memcpy(&w2, data + i + 32, 16);
        memcpy(&w3, data + i + 48, 16);
        w0 ^= m;
        w1 ^= m;
        w2 ^= m;
        w3 ^= m;
        memcpy(data + i, &w0, 16);
        memcpy(data + i + 16, &w1, 16);
        memcpy(data + i + 32, &w2, 16);
        memcpy(data + i + 48, &w3, 16);
    }
    for (; i + 16 <= len; i += 16) {
        memcpy(&w0, data + i, 16);
        w0 ^= m;
        memcpy(data + i, &w0, 16);
    }
    for (; i < len; i++)
        data[i] ^= rot[i & 15];
}

int fy_ws_accept_key(const char *key, size_t key_len, char out[29])
{
    uint8_t raw[WS_KEY_RAW + 1];
    size_t raw_len = 0;
    const char *end = NULL;
    char input[WS_KEY_LEN + sizeof(ws_guid) - 1];
    uint8_t digest[SHA_DIGEST_LENGTH];

    out[0] = '\0';
    /* §4.1: the key is a base64-encoded 16-byte nonce; anything else is a
     * broken or hostile client (§4.2.1 item 5). The spare byte in raw makes
     * a longer decoding fail on size instead of on buffer space alone. */
    if (key == NULL || key_len != WS_KEY_LEN)
        return FY_ERR;
    if (sodium_base642bin(raw, sizeof(raw), key, key_len, NULL, &raw_len, &end,
                          sodium_base64_VARIANT_ORIGINAL) != 0)
        return FY_ERR;
    if (raw_len != WS_KEY_RAW || end != key + key_len)
        return FY_ERR;

    memcpy(input, key, WS_KEY_LEN);
    memcpy(input + WS_KEY_LEN, ws_guid, sizeof(ws_guid) - 1);
    SHA1((const uint8_t *)input, sizeof(input), digest);
    sodium_bin2base64(out, WS_ACCEPT_LEN + 1, digest, sizeof(digest), sodium_base64_VARIANT_ORIGINAL);
    return FY_OK;
}

void fy_ws_new_mask(uint8_t mask[4])
{
    static uint8_t pool[1024];
    static size_t used = sizeof(pool);

    if (used == sizeof(pool)) {
        randombytes_buf(pool, sizeof(pool));
        used = 0;
    }
    memcpy(mask, pool + used, 4);
    sodium_memzero(pool + used, 4);   /* a key is handed out once */
    used += 4;
}

void fy_ws_make_key(char out[25])
{
    uint8_t raw[WS_KEY_RAW];

    /* §4.1: "randomly selected", so a fresh nonce per handshake. */
    randombytes_buf(raw, sizeof(raw));
    sodium_bin2base64(out, WS_KEY_LEN + 1, raw, sizeof(raw), sodium_base64_VARIANT_ORIGINAL);
}
