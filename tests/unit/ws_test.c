/*
 * ws_test.c: unit tests of common/ws (RFC 6455 framing and handshake).
 *
 * Most tests push a byte stream through feed(), which behaves like the
 * relay's read loop: bytes arrive in chunks of chosen sizes, the reader is
 * called until it asks for more, and the unconsumed tail is kept. Events are
 * written to a trace in which data slices are coalesced per message, so one
 * stream fed one-shot, byte by byte and in odd chunks must give equal traces.
 */
#include "tests/unit/unit.h"

#include "fy.h"
#include "ws/ws.h"

#include <sodium.h>

static const uint8_t key_a[4] = { 0x37, 0xfa, 0x21, 0x3d };   /* RFC 6455 §5.7 */

static void setup(void)
{
    cr_assert_geq(sodium_init(), 0);
}

TestSuite(ws, .init = setup);

/* ---- the driver ---- */

#define TRACE_CAP (1u << 18)
#define WIN_CAP   (TRACE_CAP + 256)

typedef struct {
    uint8_t log[TRACE_CAP];
    size_t  n;
    uint8_t msg[TRACE_CAP];   /* data of the open message, coalesced */
    size_t  msg_n;
    int     msg_opcode;
    int     err;              /* 0, or the close code of the error */
    size_t  controls, ends, datas;
} trace_t;

static void trace_put(trace_t *t, const void *p, size_t len)
{
    cr_assert_leq(len, TRACE_CAP - t->n, "trace full");
    memcpy(t->log + t->n, p, len);
    t->n += len;
}

static void trace_byte(trace_t *t, uint8_t b)
{
    trace_put(t, &b, 1);
}

static void trace_u32(trace_t *t, uint32_t v)
{
    uint8_t b[4] = { (uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v };
    trace_put(t, b, 4);
}

static void trace_flush(trace_t *t, char tag)
{
    trace_byte(t, (uint8_t)tag);
    trace_byte(t, (uint8_t)t->msg_opcode);
    trace_u32(t, (uint32_t)t->msg_n);
    trace_put(t, t->msg, t->msg_n);
    t->msg_n = 0;
}

static uint8_t win[WIN_CAP];

/*
 * Feed in[0..len) in chunks whose sizes cycle through steps[0..nsteps) (a
 * step of 0 means "the rest"). Returns FY_OK, or FY_ERR with t->err set.
 * Checks on the way what every caller relies on: consumed counts stay in
 * the buffer, a 0 count comes with NONE or MESSAGE_END only, DATA slices
 * start where the unconsumed bytes start (after a header in the same call).
 */
static int feed(fy_ws_reader_t *r, const uint8_t *in, size_t len, const size_t *steps, size_t nsteps, trace_t *t)
{
    size_t off = 0, wlen = 0, k = 0;

    for (;;) {
        size_t step = steps[k++ % nsteps];
        if (step == 0 || step > len - off)
            step = len - off;
        cr_assert_leq(wlen + step, sizeof(win));
        memcpy(win + wlen, in + off, step);
        wlen += step;
        off += step;

        size_t pos = 0;
        for (;;) {
            fy_ws_event_t ev;
            ssize_t n = fy_ws_read(r, win + pos, wlen - pos, &ev);
            if (n == FY_ERR) {
                cr_assert_not_null(r->err_reason);
                t->err = r->close_code;
                if (t->msg_n > 0)
                    trace_flush(t, 'P');
                trace_byte(t, 'E');
                trace_u32(t, (uint32_t)r->close_code);
                return FY_ERR;
            }
            cr_assert_geq(n, 0);
            cr_assert_leq((size_t)n, wlen - pos, "consumed more than given");
            switch (ev.type) {
            case FY_WS_EV_NONE:
                break;
            case FY_WS_EV_DATA:
                cr_assert_gt(ev.len, 0);
                cr_assert(ev.data + ev.len == win + pos + (size_t)n, "DATA slice must end at the consumed count");
                cr_assert(ev.opcode == FY_WS_TEXT || ev.opcode == FY_WS_BINARY);
                if (t->msg_n == 0)
                    t->msg_opcode = ev.opcode;
                cr_assert_eq(ev.opcode, t->msg_opcode);
                cr_assert_leq(ev.len, TRACE_CAP - t->msg_n);
                memcpy(t->msg + t->msg_n, ev.data, ev.len);
                t->msg_n += ev.len;
                t->datas++;
                break;
            case FY_WS_EV_MESSAGE_END:
                t->msg_opcode = ev.opcode;
                trace_flush(t, 'M');
                t->ends++;
                break;
            case FY_WS_EV_CONTROL:
                cr_assert_gt(n, 0);
                cr_assert_leq(ev.len, FY_WS_MAX_CONTROL);
                cr_assert(ev.data + ev.len == win + pos + (size_t)n, "control payload must end the frame");
                trace_byte(t, 'C');
                trace_byte(t, (uint8_t)ev.opcode);
                trace_byte(t, (uint8_t)ev.len);
                trace_put(t, ev.data, ev.len);
                t->controls++;
                break;
            default:
                cr_assert_fail("unknown event %d", ev.type);
            }
            pos += (size_t)n;
            if (n == 0 && ev.type == FY_WS_EV_NONE)
                break;
        }
        memmove(win, win + pos, wlen - pos);
        wlen -= pos;
        if (off == len)
            break;
    }
    if (t->msg_n > 0)
        trace_flush(t, 'P');
    trace_byte(t, 'T');
    trace_u32(t, (uint32_t)wlen);   /* bytes left over (an incomplete frame) */
    return FY_OK;
}

static int feed_oneshot(fy_ws_reader_t *r, const uint8_t *in, size_t len, trace_t *t)
{
    static const size_t all[] = { 0 };
    return feed(r, in, len, all, 1, t);
}

/* Build a frame with fy_ws_write_header; mask NULL for server frames. */
static size_t frame(uint8_t *out, bool fin, int opcode, const void *payload, size_t len, const uint8_t *mask)
{
    size_t h = fy_ws_write_header(out, fin, opcode, len, mask);
    if (len > 0)
        memcpy(out + h, payload, len);
    if (mask != NULL)
        fy_ws_mask(out + h, len, mask, 0);
    return h + len;
}

static trace_t ta, tb;

/* The stream must give the same trace one-shot and in every fixed chunk
 * size from 1 to max_step, plus an irregular pattern. */
static void check_splits(bool masked, const uint8_t *in, size_t len, size_t max_step)
{
    static const size_t odd[] = { 1, 3, 2, 7, 1, 13, 126, 5, 0 };
    fy_ws_reader_t r;
    int ra, rb;

    memset(&ta, 0, sizeof(ta));
    fy_ws_reader_init(&r, masked, 1u << 20);
    ra = feed_oneshot(&r, in, len, &ta);

    for (size_t step = 1; step <= max_step + 1; step++) {
        memset(&tb, 0, sizeof(tb));
        fy_ws_reader_init(&r, masked, 1u << 20);
        if (step <= max_step)
            rb = feed(&r, in, len, &step, 1, &tb);
        else
            rb = feed(&r, in, len, odd, FY_NELEM(odd) - 1, &tb);
        cr_assert_eq(ra, rb, "step %zu", step);
        cr_assert_eq(ta.n, tb.n, "step %zu: trace lengths %zu vs %zu", step, ta.n, tb.n);
        cr_assert(memcmp(ta.log, tb.log, ta.n) == 0, "step %zu: traces differ", step);
        cr_assert_eq(ta.ends, tb.ends);
        cr_assert_eq(ta.controls, tb.controls);
    }
}

/* ---- masking ---- */

static void mask_ref(uint8_t *p, size_t len, const uint8_t m[4], uint64_t off)
{
    for (size_t i = 0; i < len; i++)
        p[i] ^= m[(off + i) % 4];
}

Test(ws, mask_matches_reference_all_offsets_and_alignments)
{
    uint8_t a[80], b[80];
    const uint8_t m[4] = { 0x01, 0x80, 0xfe, 0x5a };

    for (size_t start = 0; start < 8; start++)
        for (size_t len = 0; len + start <= sizeof(a); len++)
            for (uint64_t off = 0; off < 9; off++) {
                for (size_t i = 0; i < sizeof(a); i++)
                    a[i] = b[i] = (uint8_t)(i * 31 + 7);
                fy_ws_mask(a + start, len, m, off);
                mask_ref(b + start, len, m, off);
                cr_assert(memcmp(a, b, sizeof(a)) == 0, "start %zu len %zu off %lu", start, len, (unsigned long)off);
            }
}

Test(ws, mask_in_pieces_at_every_split)
{
    uint8_t plain[100], whole[100], pieces[100];
    const uint8_t m[4] = { 0xde, 0xad, 0xbe, 0xef };

    for (size_t i = 0; i < sizeof(plain); i++)
        plain[i] = (uint8_t)(i ^ 0x55);
    memcpy(whole, plain, sizeof(whole));
    fy_ws_mask(whole, sizeof(whole), m, 0);

    for (size_t s1 = 0; s1 <= sizeof(plain); s1++)
        for (size_t s2 = s1; s2 <= sizeof(plain); s2 += 7) {
            memcpy(pieces, plain, sizeof(pieces));
            fy_ws_mask(pieces, s1, m, 0);
            fy_ws_mask(pieces + s1, s2 - s1, m, s1);
            fy_ws_mask(pieces + s2, sizeof(pieces) - s2, m, s2);
            cr_assert(memcmp(pieces, whole, sizeof(whole)) == 0, "splits %zu %zu", s1, s2);
            /* Masking is its own inverse, in pieces too. */
            fy_ws_mask(pieces, s2, m, 0);
            fy_ws_mask(pieces + s2, sizeof(pieces) - s2, m, s2);
            cr_assert(memcmp(pieces, plain, sizeof(plain)) == 0);
        }
}

Test(ws, mask_large_offset)
{
    uint8_t a[16] = { 0 }, b[16] = { 0 };
    const uint8_t m[4] = { 1, 2, 3, 4 };

    fy_ws_mask(a, sizeof(a), m, UINT64_MAX - 2);
    mask_ref(b, sizeof(b), m, UINT64_MAX - 2);
    cr_assert(memcmp(a, b, sizeof(a)) == 0);
    cr_assert_eq(a[0], 2);   /* (2^64 - 3) % 4 == 1 */
}

/* ---- the writer ---- */

Test(ws, header_sizes_and_minimal_encoding)
{
    static const struct { uint64_t len; size_t size; } cases[] = {
        { 0, 2 }, { 1, 2 }, { 125, 2 }, { 126, 4 }, { 127, 4 }, { 65535, 4 },
        { 65536, 10 }, { 1u << 24, 10 }, { (uint64_t)1 << 40, 10 }, { UINT64_MAX >> 1, 10 },
    };
    uint8_t out[FY_WS_MAX_HEADER];

    for (size_t i = 0; i < FY_NELEM(cases); i++) {
        cr_assert_eq(fy_ws_header_size(cases[i].len, false), cases[i].size);
        cr_assert_eq(fy_ws_header_size(cases[i].len, true), cases[i].size + 4);
        cr_assert_eq(fy_ws_write_header(out, true, FY_WS_BINARY, cases[i].len, NULL), cases[i].size);
        cr_assert_eq(fy_ws_write_header(out, true, FY_WS_BINARY, cases[i].len, key_a), cases[i].size + 4);
        cr_assert(memcmp(out + cases[i].size, key_a, 4) == 0);
        cr_assert_eq(out[1] & 0x80, 0x80);

        /* The reader accepts what the writer wrote, whatever the length. */
        fy_ws_reader_t r;
        fy_ws_event_t ev;
        fy_ws_reader_init(&r, true, UINT64_MAX);
        ssize_t n = fy_ws_read(&r, out, cases[i].size + 4, &ev);
        cr_assert_eq(n, (ssize_t)(cases[i].size + 4), "len %lu", (unsigned long)cases[i].len);
        cr_assert_eq(r.frame_left, cases[i].len);
        cr_assert_eq(r.frame_fin, true);
        cr_assert(memcmp(r.mask, key_a, 4) == 0);
    }
}

Test(ws, header_bytes)
{
    uint8_t out[FY_WS_MAX_HEADER];

    cr_assert_eq(fy_ws_write_header(out, true, FY_WS_TEXT, 5, NULL), 2);
    cr_assert_eq(out[0], 0x81);
    cr_assert_eq(out[1], 0x05);
    cr_assert_eq(fy_ws_write_header(out, false, FY_WS_CONT, 256, NULL), 4);
    cr_assert_eq(out[0], 0x00);
    cr_assert_eq(out[1], 126);
    cr_assert_eq(out[2], 0x01);
    cr_assert_eq(out[3], 0x00);
    cr_assert_eq(fy_ws_write_header(out, true, FY_WS_BINARY, 65536, key_a), 14);
    static const uint8_t want[] = { 0x82, 0xff, 0, 0, 0, 0, 0, 1, 0, 0, 0x37, 0xfa, 0x21, 0x3d };
    cr_assert(memcmp(out, want, sizeof(want)) == 0);
}

/* ---- RFC 6455 §5.7 examples ---- */

Test(ws, rfc_examples)
{
    static const uint8_t hello_unmasked[] = { 0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f };
    static const uint8_t hello_masked[] = { 0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58 };
    static const uint8_t fragmented[] = { 0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f };
    static const uint8_t ping[] = { 0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f };
    static const uint8_t pong_masked[] = { 0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58 };
    uint8_t buf[16];
    fy_ws_reader_t r;
    fy_ws_event_t ev;
    ssize_t n;

    /* Client side reads an unmasked "Hello". */
    memcpy(buf, hello_unmasked, sizeof(hello_unmasked));
    fy_ws_reader_init(&r, false, 1024);
    n = fy_ws_read(&r, buf, sizeof(hello_unmasked), &ev);
    cr_assert_eq(n, 7);
    cr_assert_eq(ev.type, FY_WS_EV_DATA);
    cr_assert_eq(ev.opcode, FY_WS_TEXT);
    cr_assert_eq(ev.len, 5);
    cr_assert(memcmp(ev.data, "Hello", 5) == 0);
    n = fy_ws_read(&r, buf + 7, 0, &ev);
    cr_assert_eq(n, 0);
    cr_assert_eq(ev.type, FY_WS_EV_MESSAGE_END);
    n = fy_ws_read(&r, buf + 7, 0, &ev);
    cr_assert_eq(n, 0);
    cr_assert_eq(ev.type, FY_WS_EV_NONE);

    /* Server side reads the masked "Hello", unmasked in place. */
    memcpy(buf, hello_masked, sizeof(hello_masked));
    fy_ws_reader_init(&r, true, 1024);
    n = fy_ws_read(&r, buf, sizeof(hello_masked), &ev);
    cr_assert_eq(n, 11);
    cr_assert_eq(ev.type, FY_WS_EV_DATA);
    cr_assert(ev.data == buf + 6);
    cr_assert(memcmp(buf + 6, "Hello", 5) == 0);

    /* Our writer produces the same masked frame. */
    cr_assert_eq(frame(buf, true, FY_WS_TEXT, "Hello", 5, key_a), sizeof(hello_masked));
    cr_assert(memcmp(buf, hello_masked, sizeof(hello_masked)) == 0);

    memset(&ta, 0, sizeof(ta));
    fy_ws_reader_init(&r, false, 1024);
    cr_assert_eq(feed_oneshot(&r, fragmented, sizeof(fragmented), &ta), FY_OK);
    cr_assert_eq(ta.ends, 1);
    static const uint8_t want_frag[] = { 'M', 1, 0, 0, 0, 5, 'H', 'e', 'l', 'l', 'o', 'T', 0, 0, 0, 0 };
    cr_assert_eq(ta.n, sizeof(want_frag));
    cr_assert(memcmp(ta.log, want_frag, sizeof(want_frag)) == 0);
    check_splits(false, fragmented, sizeof(fragmented), sizeof(fragmented));

    memcpy(buf, ping, sizeof(ping));
    fy_ws_reader_init(&r, false, 1024);
    n = fy_ws_read(&r, buf, sizeof(ping), &ev);
    cr_assert_eq(n, 7);
    cr_assert_eq(ev.type, FY_WS_EV_CONTROL);
    cr_assert_eq(ev.opcode, FY_WS_PING);
    cr_assert_eq(ev.len, 5);
    cr_assert(memcmp(ev.data, "Hello", 5) == 0);

    memcpy(buf, pong_masked, sizeof(pong_masked));
    fy_ws_reader_init(&r, true, 1024);
    n = fy_ws_read(&r, buf, sizeof(pong_masked), &ev);
    cr_assert_eq(n, 11);
    cr_assert_eq(ev.type, FY_WS_EV_CONTROL);
    cr_assert_eq(ev.opcode, FY_WS_PONG);
    cr_assert(memcmp(ev.data, "Hello", 5) == 0);
}

/* ---- lengths ---- */

static uint8_t big_in[200000], big_payload[150000];

static void check_length(uint64_t len, size_t hdr_size)
{
    fy_ws_reader_t r;
    size_t n;

    for (size_t i = 0; i < len; i++)
        big_payload[i] = (uint8_t)(i * 7 + (i >> 8));
    n = frame(big_in, true, FY_WS_BINARY, big_payload, len, key_a);
    cr_assert_eq(n, hdr_size + 4 + len);

    memset(&ta, 0, sizeof(ta));
    fy_ws_reader_init(&r, true, len);     /* exactly max_message is allowed */
    cr_assert_eq(feed_oneshot(&r, big_in, n, &ta), FY_OK);
    cr_assert_eq(ta.ends, 1);
    cr_assert_eq(ta.n, 6 + len + 5);
    cr_assert(memcmp(ta.log + 6, big_payload, len) == 0);

    /* In pieces too, and the unmasking stays in phase across them. */
    static const size_t steps[] = { 1, 4093, 3, 65536, 9 };
    memset(&tb, 0, sizeof(tb));
    fy_ws_reader_init(&r, true, len);
    n = frame(big_in, true, FY_WS_BINARY, big_payload, len, key_a);
    cr_assert_eq(feed(&r, big_in, n, steps, FY_NELEM(steps), &tb), FY_OK);
    cr_assert_eq(ta.n, tb.n);
    cr_assert(memcmp(ta.log, tb.log, ta.n) == 0);
}

Test(ws, length_7_bit)  { check_length(0, 2); check_length(1, 2); check_length(125, 2); }
Test(ws, length_16_bit) { check_length(126, 4); check_length(1000, 4); check_length(65535, 4); }
Test(ws, length_64_bit) { check_length(65536, 10); check_length(140000, 10); }

/* ---- errors ---- */

/* in must fail with code, one-shot and byte by byte, and stay failed. */
static void expect_error(bool masked, const uint8_t *in, size_t len, int code)
{
    static const size_t one = 1;
    static uint8_t copy[4096];
    fy_ws_reader_t r;
    fy_ws_event_t ev;

    cr_assert_leq(len, sizeof(copy));
    memcpy(copy, in, len);
    memset(&ta, 0, sizeof(ta));
    fy_ws_reader_init(&r, masked, 1000);
    cr_assert_eq(feed_oneshot(&r, copy, len, &ta), FY_ERR, "expected an error");
    cr_assert_eq(r.close_code, code, "close code %d, want %d (%s)", r.close_code, code, r.err_reason);
    cr_assert_not_null(r.err_reason);
    uint8_t b = 0x82;
    cr_assert_eq(fy_ws_read(&r, &b, 1, &ev), FY_ERR, "the reader stays failed");

    memcpy(copy, in, len);
    memset(&tb, 0, sizeof(tb));
    fy_ws_reader_init(&r, masked, 1000);
    cr_assert_eq(feed(&r, copy, len, &one, 1, &tb), FY_ERR);
    cr_assert_eq(r.close_code, code);
    cr_assert_eq(ta.n, tb.n);
    cr_assert(memcmp(ta.log, tb.log, ta.n) == 0);
}

Test(ws, error_reserved_bits)
{
    for (int bit = 0x10; bit <= 0x40; bit <<= 1) {
        uint8_t f[] = { (uint8_t)(0x82 | bit), 0x00 };
        expect_error(false, f, sizeof(f), FY_WS_CLOSE_PROTOCOL);
        uint8_t p[] = { (uint8_t)(0x89 | bit), 0x00 };
        expect_error(false, p, sizeof(p), FY_WS_CLOSE_PROTOCOL);
    }
}

Test(ws, error_unknown_opcodes)
{
    static const int bad[] = { 3, 4, 5, 6, 7, 0xb, 0xc, 0xd, 0xe, 0xf };
    for (size_t i = 0; i < FY_NELEM(bad); i++) {
        uint8_t f[] = { (uint8_t)(0x80 | bad[i]), 0x00 };
        expect_error(false, f, sizeof(f), FY_WS_CLOSE_PROTOCOL);
        /* Fails on the first two bytes, before the rest of the header. */
        uint8_t m[] = { (uint8_t)(0x80 | bad[i]), 0x80 };
        expect_error(true, m, sizeof(m), FY_WS_CLOSE_PROTOCOL);
    }
}

Test(ws, error_mask_bit)
{
    static const uint8_t unmasked[] = { 0x82, 0x01, 'x' };
    static const uint8_t masked[] = { 0x82, 0x81, 1, 2, 3, 4, 'x' };
    static const uint8_t ping_unmasked[] = { 0x89, 0x00 };
    expect_error(true, unmasked, sizeof(unmasked), FY_WS_CLOSE_PROTOCOL);
    expect_error(false, masked, sizeof(masked), FY_WS_CLOSE_PROTOCOL);
    expect_error(true, ping_unmasked, sizeof(ping_unmasked), FY_WS_CLOSE_PROTOCOL);
}

Test(ws, error_control_frames)
{
    for (int op = FY_WS_CLOSE; op <= FY_WS_PONG; op++) {
        uint8_t nofin[] = { (uint8_t)op, 0x00 };
        expect_error(false, nofin, sizeof(nofin), FY_WS_CLOSE_PROTOCOL);
        uint8_t big7[] = { (uint8_t)(0x80 | op), 126, 0x00, 126 };
        expect_error(false, big7, sizeof(big7), FY_WS_CLOSE_PROTOCOL);
        uint8_t big16[] = { (uint8_t)(0x80 | op), 126 };   /* fails before the length bytes */
        expect_error(false, big16, sizeof(big16), FY_WS_CLOSE_PROTOCOL);
        uint8_t big64[] = { (uint8_t)(0x80 | op), 127 };
        expect_error(false, big64, sizeof(big64), FY_WS_CLOSE_PROTOCOL);
    }

    /* 125 bytes is the most a control frame may carry. */
    static uint8_t in[200];
    static uint8_t payload[125];
    memset(payload, 'p', sizeof(payload));
    size_t n = frame(in, true, FY_WS_PING, payload, 125, key_a);
    fy_ws_reader_t r;
    fy_ws_event_t ev;
    fy_ws_reader_init(&r, true, 0);
    cr_assert_eq(fy_ws_read(&r, in, n, &ev), (ssize_t)n);
    cr_assert_eq(ev.type, FY_WS_EV_CONTROL);
    cr_assert_eq(ev.len, 125);
    cr_assert(memcmp(ev.data, payload, 125) == 0);
}

Test(ws, error_continuation_without_message)
{
    static const uint8_t cont[] = { 0x80, 0x01, 'x' };
    static const uint8_t cont_nofin[] = { 0x00, 0x00 };
    expect_error(false, cont, sizeof(cont), FY_WS_CLOSE_PROTOCOL);
    expect_error(false, cont_nofin, sizeof(cont_nofin), FY_WS_CLOSE_PROTOCOL);
    /* After a complete message, a continuation has nothing to continue. */
    static const uint8_t after[] = { 0x81, 0x01, 'a', 0x80, 0x01, 'b' };
    expect_error(false, after, sizeof(after), FY_WS_CLOSE_PROTOCOL);
    cr_assert_eq(ta.ends, 1);
}

Test(ws, error_new_message_inside_fragmented_one)
{
    static const uint8_t text[] = { 0x01, 0x01, 'a', 0x81, 0x01, 'b' };
    static const uint8_t binary[] = { 0x02, 0x01, 'a', 0x89, 0x00, 0x02, 0x01, 'b' };
    expect_error(false, text, sizeof(text), FY_WS_CLOSE_PROTOCOL);
    expect_error(false, binary, sizeof(binary), FY_WS_CLOSE_PROTOCOL);
    cr_assert_eq(ta.controls, 1);
}

Test(ws, error_non_minimal_lengths)
{
    static const uint8_t l16_0[] = { 0x82, 126, 0x00, 0x00 };
    static const uint8_t l16_125[] = { 0x82, 126, 0x00, 125 };
    static const uint8_t l64_0[] = { 0x82, 127, 0, 0, 0, 0, 0, 0, 0, 0 };
    static const uint8_t l64_125[] = { 0x82, 127, 0, 0, 0, 0, 0, 0, 0, 125 };
    static const uint8_t l64_65535[] = { 0x82, 127, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
    expect_error(false, l16_0, sizeof(l16_0), FY_WS_CLOSE_PROTOCOL);
    expect_error(false, l16_125, sizeof(l16_125), FY_WS_CLOSE_PROTOCOL);
    expect_error(false, l64_0, sizeof(l64_0), FY_WS_CLOSE_PROTOCOL);
    expect_error(false, l64_125, sizeof(l64_125), FY_WS_CLOSE_PROTOCOL);
    expect_error(false, l64_65535, sizeof(l64_65535), FY_WS_CLOSE_PROTOCOL);

    /* The smallest minimal forms are fine. */
    static const uint8_t ok16[] = { 0x82, 126, 0x00, 126 };
    static const uint8_t ok64[] = { 0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0 };
    fy_ws_reader_t r;
    fy_ws_event_t ev;
    uint8_t b[10];
    memcpy(b, ok16, sizeof(ok16));
    fy_ws_reader_init(&r, false, UINT64_MAX);
    cr_assert_eq(fy_ws_read(&r, b, sizeof(ok16), &ev), 4);
    cr_assert_eq(r.frame_left, 126);
    memcpy(b, ok64, sizeof(ok64));
    fy_ws_reader_init(&r, false, UINT64_MAX);
    cr_assert_eq(fy_ws_read(&r, b, sizeof(ok64), &ev), 10);
    cr_assert_eq(r.frame_left, 65536);
}

Test(ws, error_64_bit_top_bit)
{
    static const uint8_t top[] = { 0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0 };
    static const uint8_t all[] = { 0x82, 127, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
    expect_error(false, top, sizeof(top), FY_WS_CLOSE_PROTOCOL);
    expect_error(false, all, sizeof(all), FY_WS_CLOSE_PROTOCOL);

    /* 2^63 - 1 is legal framing; only max_message refuses it. */
    static const uint8_t max[] = { 0x82, 127, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
    expect_error(false, max, sizeof(max), FY_WS_CLOSE_TOO_BIG);
    fy_ws_reader_t r;
    fy_ws_event_t ev;
    uint8_t b[10];
    memcpy(b, max, sizeof(max));
    fy_ws_reader_init(&r, false, UINT64_MAX);
    cr_assert_eq(fy_ws_read(&r, b, sizeof(max), &ev), 10);
    cr_assert_eq(r.frame_left, UINT64_MAX >> 1);
}

Test(ws, error_message_too_big)
{
    static uint8_t in[4096], payload[1001];
    size_t n;

    /* expect_error uses max_message 1000. One frame over it: */
    n = frame(in, true, FY_WS_BINARY, payload, 1001, NULL);
    expect_error(false, in, n, FY_WS_CLOSE_TOO_BIG);
    /* Refused from the header alone, before the payload arrives. */
    expect_error(false, in, 4, FY_WS_CLOSE_TOO_BIG);

    /* Fragments that only together pass it; a ping in between is no data. */
    n = frame(in, false, FY_WS_TEXT, payload, 600, NULL);
    n += frame(in + n, true, FY_WS_PING, payload, 100, NULL);
    n += frame(in + n, true, FY_WS_CONT, payload, 401, NULL);
    expect_error(false, in, n, FY_WS_CLOSE_TOO_BIG);
    cr_assert_eq(ta.controls, 1);

    /* Exactly 1000 across fragments is accepted, and the count restarts
     * with the next message. */
    fy_ws_reader_t r;
    n = frame(in, false, FY_WS_TEXT, payload, 600, NULL);
    n += frame(in + n, true, FY_WS_CONT, payload, 400, NULL);
    n += frame(in + n, true, FY_WS_BINARY, payload, 1000, NULL);
    memset(&ta, 0, sizeof(ta));
    fy_ws_reader_init(&r, false, 1000);
    cr_assert_eq(feed_oneshot(&r, in, n, &ta), FY_OK);
    cr_assert_eq(ta.ends, 2);

    /* Control frames do not count against max_message. */
    n = frame(in, true, FY_WS_CLOSE, payload, 125, NULL);
    memset(&ta, 0, sizeof(ta));
    fy_ws_reader_init(&r, false, 0);
    cr_assert_eq(feed_oneshot(&r, in, n, &ta), FY_OK);
    cr_assert_eq(ta.controls, 1);
}

/* ---- framing ---- */

Test(ws, fragmentation_with_ping_in_the_middle)
{
    static uint8_t in[256];
    size_t n = 0;
    fy_ws_reader_t r;
    fy_ws_event_t ev;
    ssize_t c;

    n += frame(in + n, false, FY_WS_TEXT, "Hel", 3, key_a);
    n += frame(in + n, true, FY_WS_PING, "pi", 2, key_a);
    n += frame(in + n, false, FY_WS_CONT, "lo", 2, key_a);
    n += frame(in + n, false, FY_WS_CONT, "", 0, key_a);
    n += frame(in + n, true, FY_WS_CONT, " world", 6, key_a);
    n += frame(in + n, true, FY_WS_BINARY, "\x01\x02", 2, key_a);

    fy_ws_reader_init(&r, true, 1 << 16);
    size_t pos = 0;
    c = fy_ws_read(&r, in + pos, n - pos, &ev);
    cr_assert_eq(c, 9);
    cr_assert_eq(ev.type, FY_WS_EV_DATA);
    cr_assert_eq(ev.opcode, FY_WS_TEXT);
    cr_assert(ev.len == 3 && memcmp(ev.data, "Hel", 3) == 0);
    pos += (size_t)c;
    c = fy_ws_read(&r, in + pos, n - pos, &ev);
    cr_assert_eq(c, 8);
    cr_assert_eq(ev.type, FY_WS_EV_CONTROL);
    cr_assert_eq(ev.opcode, FY_WS_PING);
    cr_assert(ev.len == 2 && memcmp(ev.data, "pi", 2) == 0);
    cr_assert(r.in_message, "the ping leaves the message open");
    pos += (size_t)c;
    c = fy_ws_read(&r, in + pos, n - pos, &ev);
    cr_assert_eq(c, 8);
    cr_assert_eq(ev.type, FY_WS_EV_DATA);
    cr_assert_eq(ev.opcode, FY_WS_TEXT, "continuations report the message's opcode");
    cr_assert(ev.len == 2 && memcmp(ev.data, "lo", 2) == 0);
    pos += (size_t)c;
    c = fy_ws_read(&r, in + pos, n - pos, &ev);
    cr_assert_eq(c, 6, "an empty non-final fragment is consumed silently");
    cr_assert_eq(ev.type, FY_WS_EV_NONE);
    pos += (size_t)c;
    c = fy_ws_read(&r, in + pos, n - pos, &ev);
    cr_assert_eq(c, 12);
    cr_assert_eq(ev.type, FY_WS_EV_DATA);
    cr_assert(ev.len == 6 && memcmp(ev.data, " world", 6) == 0);
    pos += (size_t)c;
    c = fy_ws_read(&r, in + pos, n - pos, &ev);
    cr_assert_eq(c, 0);
    cr_assert_eq(ev.type, FY_WS_EV_MESSAGE_END);
    cr_assert_not(r.in_message);
    c = fy_ws_read(&r, in + pos, n - pos, &ev);
    cr_assert_eq(c, 8);
    cr_assert_eq(ev.type, FY_WS_EV_DATA);
    cr_assert_eq(ev.opcode, FY_WS_BINARY);
    pos += (size_t)c;
    c = fy_ws_read(&r, in + pos, n - pos, &ev);
    cr_assert_eq(c, 0);
    cr_assert_eq(ev.type, FY_WS_EV_MESSAGE_END);
    c = fy_ws_read(&r, in + pos, n - pos, &ev);
    cr_assert_eq(c, 0);
    cr_assert_eq(ev.type, FY_WS_EV_NONE);
    cr_assert_eq(pos, n);

    /* Masked, so every split also checks unmasking in pieces. */
    n = 0;
    n += frame(in + n, false, FY_WS_TEXT, "Hel", 3, key_a);
    n += frame(in + n, true, FY_WS_PING, "pi", 2, key_a);
    n += frame(in + n, false, FY_WS_CONT, "lo", 2, key_a);
    n += frame(in + n, false, FY_WS_CONT, "", 0, key_a);
    n += frame(in + n, true, FY_WS_CONT, " world", 6, key_a);
    check_splits(true, in, n, n);
}

Test(ws, zero_length_final_frame_ends_message_after_header)
{
    uint8_t in[32];
    fy_ws_reader_t r;
    fy_ws_event_t ev;
    size_t n = frame(in, true, FY_WS_TEXT, "", 0, key_a);

    fy_ws_reader_init(&r, true, 10);
    for (size_t i = 0; i < n; i++) {
        cr_assert_eq(fy_ws_read(&r, in, i, &ev), 0);
        cr_assert_eq(ev.type, FY_WS_EV_NONE);
    }
    cr_assert_eq(fy_ws_read(&r, in, n, &ev), (ssize_t)n);
    cr_assert_eq(ev.type, FY_WS_EV_MESSAGE_END);
    cr_assert_eq(fy_ws_read(&r, in + n, 0, &ev), 0);
    cr_assert_eq(ev.type, FY_WS_EV_NONE);

    /* An empty final continuation ends a fragmented message. */
    size_t m = frame(in, false, FY_WS_BINARY, "ab", 2, NULL);
    m += frame(in + m, true, FY_WS_CONT, "", 0, NULL);
    fy_ws_reader_init(&r, false, 10);
    cr_assert_eq(fy_ws_read(&r, in, m, &ev), 4);
    cr_assert_eq(ev.type, FY_WS_EV_DATA);
    cr_assert_eq(fy_ws_read(&r, in + 4, m - 4, &ev), 2);
    cr_assert_eq(ev.type, FY_WS_EV_MESSAGE_END);
    cr_assert_eq(ev.opcode, FY_WS_BINARY);
}

Test(ws, incomplete_header_and_control_consume_nothing)
{
    uint8_t in[200], copy[200];
    uint8_t payload[125];
    fy_ws_reader_t r;
    fy_ws_event_t ev;

    memset(payload, 'c', sizeof(payload));
    size_t n = frame(in, true, FY_WS_CLOSE, payload, sizeof(payload), key_a);
    fy_ws_reader_init(&r, true, 0);
    for (size_t i = 0; i < n; i++) {
        memcpy(copy, in, n);
        cr_assert_eq(fy_ws_read(&r, copy, i, &ev), 0, "prefix %zu", i);
        cr_assert_eq(ev.type, FY_WS_EV_NONE);
        cr_assert(memcmp(copy, in, n) == 0, "nothing unmasked before the frame is whole");
    }
    cr_assert_eq(fy_ws_read(&r, in, n, &ev), (ssize_t)n);
    cr_assert_eq(ev.type, FY_WS_EV_CONTROL);
    cr_assert_eq(ev.opcode, FY_WS_CLOSE);

    /* A data header is not consumed until whole (16- and 64-bit forms). */
    static const uint64_t lens[] = { 5, 300, 70000 };
    for (size_t k = 0; k < FY_NELEM(lens); k++) {
        size_t h = fy_ws_write_header(in, true, FY_WS_BINARY, lens[k], key_a);
        fy_ws_reader_init(&r, true, 1 << 20);
        for (size_t i = 0; i < h; i++) {
            cr_assert_eq(fy_ws_read(&r, in, i, &ev), 0);
            cr_assert_eq(ev.type, FY_WS_EV_NONE);
        }
        /* The whole header alone is consumed, with nothing to report. */
        cr_assert_eq(fy_ws_read(&r, in, h, &ev), (ssize_t)h);
        cr_assert_eq(ev.type, FY_WS_EV_NONE);
        cr_assert_eq(fy_ws_read(&r, in, 0, &ev), 0);
        cr_assert_eq(ev.type, FY_WS_EV_NONE);
        cr_assert_eq(r.frame_left, lens[k]);
    }
}

Test(ws, data_slices_stop_at_frame_end)
{
    uint8_t in[64];
    fy_ws_reader_t r;
    fy_ws_event_t ev;
    size_t n = frame(in, true, FY_WS_BINARY, "abcdef", 6, NULL);
    n += frame(in + n, true, FY_WS_PING, "", 0, NULL);

    fy_ws_reader_init(&r, false, 100);
    cr_assert_eq(fy_ws_read(&r, in, 5, &ev), 5);
    cr_assert_eq(ev.type, FY_WS_EV_DATA);
    cr_assert(ev.data == in + 2 && ev.len == 3);
    cr_assert_eq(fy_ws_read(&r, in + 5, n - 5, &ev), 3, "the slice ends with the frame");
    cr_assert(ev.data == in + 5 && ev.len == 3);
    cr_assert_eq(fy_ws_read(&r, in + 8, n - 8, &ev), 0);
    cr_assert_eq(ev.type, FY_WS_EV_MESSAGE_END);
    cr_assert_eq(fy_ws_read(&r, in + 8, n - 8, &ev), 2);
    cr_assert_eq(ev.type, FY_WS_EV_CONTROL);
    cr_assert_eq(ev.len, 0);
}

Test(ws, byte_by_byte_equals_one_shot)
{
    static uint8_t in[1 << 18], payload[70000];
    size_t n = 0;
    const uint8_t k2[4] = { 0, 0xff, 0x10, 0x01 };

    for (size_t i = 0; i < sizeof(payload); i++)
        payload[i] = (uint8_t)(i * 13 + 1);
    n += frame(in + n, true, FY_WS_TEXT, payload, 0, key_a);
    n += frame(in + n, true, FY_WS_BINARY, payload, 1, key_a);
    n += frame(in + n, false, FY_WS_BINARY, payload, 125, k2);
    n += frame(in + n, true, FY_WS_PONG, payload, 125, key_a);
    n += frame(in + n, false, FY_WS_CONT, payload + 3, 126, key_a);
    n += frame(in + n, true, FY_WS_PING, payload, 0, k2);
    n += frame(in + n, true, FY_WS_CONT, payload + 7, 1000, k2);
    n += frame(in + n, true, FY_WS_TEXT, payload, 65535, key_a);
    n += frame(in + n, true, FY_WS_CLOSE, "\x03\xe8", 2, key_a);
    n += frame(in + n, true, FY_WS_BINARY, payload + 1, 65536, k2);
    n += frame(in + n, true, FY_WS_BINARY, payload, 9, k2);     /* cut short below */
    n -= 4;

    /* Every chunk size up to 40, and the odd pattern; one-shot leaves the
     * truncated last frame's header consumed, so all leave 0 bytes. */
    check_splits(true, in, n, 40);
    cr_assert_eq(ta.ends, 5);
    cr_assert_eq(ta.controls, 3);

    /* The same stream from the server's side, unmasked. */
    n = 0;
    n += frame(in + n, false, FY_WS_TEXT, payload, 130, NULL);
    n += frame(in + n, true, FY_WS_PING, payload, 20, NULL);
    n += frame(in + n, true, FY_WS_CONT, payload, 70000, NULL);
    n += frame(in + n, true, FY_WS_PING, payload, 20, NULL);
    check_splits(false, in, n, 20);
    cr_assert_eq(ta.ends, 1);
    cr_assert_eq(ta.controls, 2);
}

/* ---- handshake ---- */

Test(ws, accept_key_rfc_example)
{
    char out[29];
    static const char key[] = "dGhlIHNhbXBsZSBub25jZQ==";

    cr_assert_eq(fy_ws_accept_key(key, sizeof(key) - 1, out), FY_OK);
    /* RFC 6455 §1.3's worked example (also base64(SHA-1(key + GUID)) as
     * computed by any other SHA-1, e.g. Python's hashlib). */
    cr_assert_str_eq(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

Test(ws, accept_key_rejects_bad_keys)
{
    static const char *bad[] = {
        "",
        "dGhlIHNhbXBsZSBub25jZQ=",       /* 23 chars */
        "dGhlIHNhbXBsZSBub25jZQ===",     /* 25 chars */
        "dGhlIHNhbXBsZSBub25jZQ",        /* no padding: 22 */
        "dGhlIHNhbXBsZSBub25jZQAA",      /* 24 chars decoding to 18 bytes */
        "dGhlIHNhbXBsZSBub25jZ===",      /* bad padding */
        "dGhlIHNhbXBsZSBub25j=Q==",      /* padding in the middle */
        "dGhlIHNhbXBsZSBub25jZ!==",      /* not base64 */
        "dGhlIHNhbXBsZSBub25jZ-==",      /* URL-safe alphabet */
        "dGhlIHNhbXBsZSBub25jZR==",      /* non-zero trailing bits */
        "dGhlIHNhbXBsZSBub25jZQ= ",
        " dGhlIHNhbXBsZSBub25jZQ=",
        "dGhlIHNhbXBsZSBu\nb25jZQ=",
    };
    char out[29];

    for (size_t i = 0; i < FY_NELEM(bad); i++) {
        size_t len = 0;
        while (bad[i][len] != '\0')
            len++;
        cr_assert_eq(fy_ws_accept_key(bad[i], len, out), FY_ERR, "key \"%s\"", bad[i]);
    }
    /* A good key with a length that cuts it. */
    cr_assert_eq(fy_ws_accept_key("dGhlIHNhbXBsZSBub25jZQ==", 20, out), FY_ERR);
    /* An embedded NUL is not base64. */
    cr_assert_eq(fy_ws_accept_key("dGhlIHNhbXBsZSBub2\0jZQ==", 24, out), FY_ERR);
}

Test(ws, make_key_is_fresh_and_acceptable)
{
    char a[25], b[25], out[29];

    fy_ws_make_key(a);
    fy_ws_make_key(b);
    cr_assert_eq(a[24], '\0');
    cr_assert_eq(a[22], '=');
    cr_assert_eq(a[23], '=');
    cr_assert(memcmp(a, b, 24) != 0);
    cr_assert_eq(fy_ws_accept_key(a, 24, out), FY_OK);
    cr_assert_eq(out[28], '\0');
}

/* ---- splicing: a payload taken from the socket by the caller ---- */

/* A masked frame with the all-zero key reads like an unmasked one, and its
 * payload may be skipped (spliced); a random key's may not. */
Test(ws, zero_key_payload_is_raw_and_skippable)
{
    static const uint8_t zero[4];
    uint8_t frame[16 + 300];
    fy_ws_reader_t r;
    fy_ws_event_t ev;
    size_t hl = fy_ws_write_header(frame, true, FY_WS_BINARY, 300, zero);
    ssize_t used;

    memset(frame + hl, 'x', 300);
    fy_ws_reader_init(&r, true, 1 << 20);
    /* The header and 100 payload bytes arrive; the rest is spliced. */
    used = fy_ws_read(&r, frame, hl + 100, &ev);
    cr_assert_eq(used, (ssize_t)(hl + 100));
    cr_assert_eq(ev.type, FY_WS_EV_DATA);
    cr_assert_eq(ev.len, 100);
    cr_assert_eq(ev.data[0], 'x', "a zero key leaves the payload as it is");
    cr_assert_eq(fy_ws_reader_raw_left(&r), 200);
    fy_ws_reader_skip(&r, 150);
    cr_assert_eq(fy_ws_reader_raw_left(&r), 50);
    fy_ws_reader_skip(&r, 50);
    cr_assert_eq(fy_ws_reader_raw_left(&r), 0);
    cr_assert_not(fy_ws_reader_at_header(&r), "the message end is still to be reported");
    used = fy_ws_read(&r, NULL, 0, &ev);
    cr_assert_eq(used, 0);
    cr_assert_eq(ev.type, FY_WS_EV_MESSAGE_END);
    cr_assert(fy_ws_reader_at_header(&r));

    /* The same frame masked with a real key: nothing may bypass the reader. */
    hl = fy_ws_write_header(frame, true, FY_WS_BINARY, 300, key_a);
    fy_ws_reader_init(&r, true, 1 << 20);
    used = fy_ws_read(&r, frame, hl + 100, &ev);
    cr_assert_eq(used, (ssize_t)(hl + 100));
    cr_assert_eq(fy_ws_reader_raw_left(&r), 0);
}

Test(ws, peek_header_all_lengths_and_keys)
{
    static const uint8_t zero[4];
    static const uint64_t lens[] = {0, 125, 126, 65535, 65536, 1u << 20};
    uint8_t h[FY_WS_MAX_HEADER];
    size_t i, hl, k;

    for (i = 0; i < FY_NELEM(lens); i++) {
        const uint8_t *keys[] = {NULL, zero, key_a};
        for (k = 0; k < 3; k++) {
            uint64_t plen = 0;
            bool zk = false;
            hl = fy_ws_write_header(h, true, FY_WS_BINARY, lens[i], keys[k]);
            cr_assert_eq(fy_ws_peek_header(h, hl - 1, &plen, &zk), 0, "a partial header says nothing");
            cr_assert_eq(fy_ws_peek_header(h, hl, &plen, &zk), hl);
            cr_assert_eq(plen, lens[i]);
            cr_assert_eq(zk, k < 2, "len %llu key %zu", (unsigned long long)lens[i], k);
        }
    }
    cr_assert_eq(fy_ws_peek_header(h, 1, &(uint64_t){0}, &(bool){false}), 0);
}
