/*
 * fuzz_ws.c: libFuzzer target for the WebSocket frame reader (common/ws).
 *
 * Input layout: byte 0 picks the side (bit 0: expect_masked) and
 * max_message (bits 1-3); byte 1 seeds the chunk sizes; the rest is the
 * byte stream. The stream is read three times, one-shot, in chunks the way
 * the relay's read loop gets them (keeping the unconsumed tail), and in
 * chunks with payload that may bypass the reader (unmasked or all-zero key)
 * skipped whenever the buffer is empty, as the tunnel splices it; the
 * traces (data coalesced per message, control frames, errors) must be equal.
 * Every call is also checked for what callers rely on: consumed counts stay
 * in the buffer, slices lie in it, control payloads are <= 125 bytes.
 */
#include "fy.h"
#include "ws/ws.h"

#include <stdlib.h>
#include <string.h>

#define MAX_INPUT (1u << 16)
#define TRACE_CAP (4 * MAX_INPUT + 64)

typedef struct {
    uint8_t log[TRACE_CAP];
    size_t  n;
} trace_t;

static trace_t ta, tb;
static uint8_t win[MAX_INPUT + 256];

#define CHECK(c) do { if (!(c)) abort(); } while (0)

static void put(trace_t *t, const void *p, size_t len)
{
    CHECK(len <= TRACE_CAP - t->n);
    memcpy(t->log + t->n, p, len);
    t->n += len;
}

static void put_byte(trace_t *t, uint8_t b)
{
    put(t, &b, 1);
}

static uint32_t next_step(uint32_t *s, uint32_t seed)
{
    /* xorshift32; chunk sizes from 1 up to a seed-chosen bound, so some
     * runs go byte by byte and others cut big frames in a few places. */
    static const uint32_t bounds[] = { 1, 2, 3, 7, 16, 130, 1000, 70000 };
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return 1 + *s % bounds[seed & 7];
}

static void run(const uint8_t *in, size_t len, bool masked, uint64_t max, uint32_t seed, bool oneshot, bool splice,
                trace_t *t)
{
    fy_ws_reader_t r;
    size_t off = 0, wlen = 0;
    uint32_t s = seed * 2654435761u + 1;

    t->n = 0;
    fy_ws_reader_init(&r, masked, max);
    while (off < len) {
        size_t step = oneshot ? len - off : next_step(&s, seed);
        uint64_t raw = fy_ws_reader_raw_left(&r);
        if (step > len - off)
            step = len - off;
        if (splice && wlen == 0 && raw > 0) {
            /* The payload as it lies in the stream is the payload. */
            if (step > raw)
                step = (size_t)raw;
            put(t, in + off, step);
            fy_ws_reader_skip(&r, step);
            CHECK(r.message_len <= max);
        } else {
            memcpy(win + wlen, in + off, step);
            wlen += step;
        }
        off += step;

        size_t pos = 0;
        for (;;) {
            fy_ws_event_t ev;
            ssize_t n = fy_ws_read(&r, win + pos, wlen - pos, &ev);
            if (n == FY_ERR) {
                CHECK(r.err_reason != NULL);
                CHECK(r.close_code == FY_WS_CLOSE_PROTOCOL || r.close_code == FY_WS_CLOSE_TOO_BIG);
                put_byte(t, 'E');
                put_byte(t, (uint8_t)(r.close_code & 0xff));
                return;
            }
            CHECK(n >= 0 && (size_t)n <= wlen - pos);
            switch (ev.type) {
            case FY_WS_EV_NONE:
                break;
            case FY_WS_EV_DATA:
                CHECK(ev.len > 0 && ev.data + ev.len == win + pos + (size_t)n);
                CHECK(ev.opcode == FY_WS_TEXT || ev.opcode == FY_WS_BINARY);
                CHECK(r.message_len <= max);
                put(t, ev.data, ev.len);
                break;
            case FY_WS_EV_MESSAGE_END:
                put_byte(t, 'M');
                put_byte(t, (uint8_t)ev.opcode);
                break;
            case FY_WS_EV_CONTROL:
                CHECK(n > 0 && ev.len <= FY_WS_MAX_CONTROL);
                CHECK(ev.data + ev.len == win + pos + (size_t)n);
                CHECK(ev.opcode == FY_WS_CLOSE || ev.opcode == FY_WS_PING || ev.opcode == FY_WS_PONG);
                put_byte(t, 'C');
                put_byte(t, (uint8_t)ev.opcode);
                put_byte(t, (uint8_t)ev.len);
                put(t, ev.data, ev.len);
                break;
            default:
                abort();
            }
            pos += (size_t)n;
            if (n == 0 && ev.type == FY_WS_EV_NONE)
                break;
        }
        /* What is kept is at most a header or a control frame. */
        CHECK(wlen - pos <= FY_WS_MAX_HEADER + FY_WS_MAX_CONTROL);
        memmove(win, win + pos, wlen - pos);
        wlen -= pos;
    }
    put_byte(t, 'T');
    put_byte(t, (uint8_t)wlen);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const uint64_t maxes[] = { 0, 1, 125, 126, 1000, 65535, 65536, UINT64_MAX };

    if (size < 2 || size - 2 > MAX_INPUT)
        return 0;
    bool masked = data[0] & 1;
    uint64_t max = maxes[(data[0] >> 1) & 7];
    uint32_t seed = data[1];

    run(data + 2, size - 2, masked, max, seed, true, false, &ta);
    run(data + 2, size - 2, masked, max, seed, false, false, &tb);
    CHECK(ta.n == tb.n && memcmp(ta.log, tb.log, ta.n) == 0);
    run(data + 2, size - 2, masked, max, seed, false, true, &tb);
    CHECK(ta.n == tb.n && memcmp(ta.log, tb.log, ta.n) == 0);

    /* A peek at a header (tun.c reads just the headers it sees) never
     * reads past what it is given, and agrees with the reader on a frame
     * the reader accepts. */
    {
        uint64_t plen = 0;
        bool zero = false;
        size_t hl = fy_ws_peek_header(data + 2, size - 2, &plen, &zero);
        fy_ws_reader_t r;
        fy_ws_event_t ev;
        CHECK(hl <= size - 2 && hl <= FY_WS_MAX_HEADER);
        fy_ws_reader_init(&r, masked, UINT64_MAX);
        if (hl > 0 && fy_ws_read(&r, (uint8_t *)memcpy(win, data + 2, hl), hl, &ev) == (ssize_t)hl
            && ev.type == FY_WS_EV_NONE && r.frame_left > 0)
            CHECK(r.frame_left == plen && zero == !r.frame_masked);
    }

    /* The handshake helper on arbitrary bytes: never more than it may
     * write, and only 28 base64 chars when it accepts. */
    if (size >= 26) {
        char out[29];
        if (fy_ws_accept_key((const char *)data + 2, 24, out) == FY_OK)
            CHECK(out[28] == '\0');
    }

    /* The writer's headers read back as written. */
    uint64_t len = 0;
    for (size_t i = 0; i < 8 && i + 2 < size; i++)
        len = len << 8 | data[2 + i];
    len &= UINT64_MAX >> 1;
    uint8_t h[FY_WS_MAX_HEADER];
    const uint8_t key[4] = { data[0], data[1], 0x5a, 0xa5 };
    size_t hl = fy_ws_write_header(h, data[0] & 0x80, FY_WS_BINARY, len, masked ? key : NULL);
    CHECK(hl == fy_ws_header_size(len, masked));
    fy_ws_reader_t r;
    fy_ws_event_t ev;
    fy_ws_reader_init(&r, masked, UINT64_MAX);
    CHECK(fy_ws_read(&r, h, hl, &ev) == (ssize_t)hl);
    CHECK(r.frame_left == 0 || r.frame_left == len);
    return 0;
}
