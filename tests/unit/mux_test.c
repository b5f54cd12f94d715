/*
 * mux_test.c: unit tests of common/mux (frame codec, key=value payloads,
 * credit flow control).
 *
 * feed() plays the caller: chunks of chosen sizes go to fy_mux_read, and the
 * events are written to a trace in which DATA slices are coalesced per
 * frame, so a stream fed one-shot, byte by byte or in odd chunks must give
 * equal traces.
 */
#include "tests/unit/unit.h"

#include "fy.h"
#include "mux/mux.h"

/* ---- the driver ---- */

#define TRACE_CAP (1u << 22)

typedef struct {
    uint8_t log[TRACE_CAP];
    size_t  n;
    size_t  frames, datas, events;
    bool    in_data;       /* a DATA frame's slices are still coming */
    size_t  data_got;      /* bytes of that frame so far */
    const char *err;
} trace_t;

static void trace_put(trace_t *t, const void *p, size_t len)
{
    cr_assert_leq(len, TRACE_CAP - t->n, "trace full");
    if (len > 0)
        memcpy(t->log + t->n, p, len);
    t->n += len;
}

static void trace_hdr(trace_t *t, char tag, const fy_mux_hdr_t *h)
{
    uint8_t b[FY_MUX_HDR + 1];
    b[0] = (uint8_t)tag;
    fy_mux_put_hdr(b + 1, h->type, h->flags, h->stream, h->length);
    trace_put(t, b, sizeof(b));
}

/*
 * Feed in[0..len) in chunks whose sizes cycle through steps (0 = the rest).
 * Checks what callers rely on: a call with bytes consumes at least one, a
 * DATA slice lies in the bytes that call consumed and ends them, FRAME
 * payloads have hdr.length bytes, at_boundary holds exactly between frames.
 */
static int feed(fy_mux_reader_t *r, const uint8_t *in, size_t len, const size_t *steps, size_t nsteps, trace_t *t)
{
    size_t off = 0, k = 0;

    while (off < len) {
        size_t step = steps[k++ % nsteps];
        if (step == 0 || step > len - off)
            step = len - off;
        const uint8_t *buf = in + off;
        size_t pos = 0;
        while (pos < step) {
            fy_mux_event_t ev;
            ssize_t n = fy_mux_read(r, buf + pos, step - pos, &ev);
            if (n == FY_ERR) {
                cr_assert_not_null(r->err_reason);
                t->err = r->err_reason;
                trace_put(t, "E", 1);
                return FY_ERR;
            }
            cr_assert_gt(n, 0, "a call with bytes must consume some");
            cr_assert_leq((size_t)n, step - pos);
            switch (ev.type) {
            case FY_MUX_EV_NONE:
                break;
            case FY_MUX_EV_FRAME:
                cr_assert_not(t->in_data);
                cr_assert_neq(ev.hdr.type, FY_MUX_DATA);
                cr_assert_eq(ev.len, ev.hdr.length);
                cr_assert_not_null(ev.payload);
                cr_assert(ev.payload == r->ctl || (ev.payload >= buf + pos && ev.payload + ev.len == buf + pos + (size_t)n),
                          "FRAME payloads lie in the reader or end the bytes consumed");
                cr_assert(fy_mux_reader_at_boundary(r));
                trace_hdr(t, 'F', &ev.hdr);
                trace_put(t, ev.payload, ev.len);
                t->frames++;
                break;
            case FY_MUX_EV_DATA:
                cr_assert_eq(ev.hdr.type, FY_MUX_DATA);
                cr_assert(ev.payload + ev.len == buf + pos + (size_t)n, "slice must end at the consumed count");
                cr_assert(ev.len > 0 || (ev.end && ev.hdr.length == 0), "empty slices only for empty frames");
                if (!t->in_data) {
                    trace_hdr(t, 'D', &ev.hdr);
                    t->in_data = true;
                    t->data_got = 0;
                }
                trace_put(t, ev.payload, ev.len);
                t->data_got += ev.len;
                cr_assert_leq(t->data_got, ev.hdr.length);
                cr_assert_eq(ev.end, t->data_got == ev.hdr.length);
                cr_assert_eq(fy_mux_reader_at_boundary(r), ev.end);
                if (ev.end) {
                    t->in_data = false;
                    t->datas++;
                }
                break;
            default:
                cr_assert_fail("unknown event %d", ev.type);
            }
            t->events++;
            pos += (size_t)n;
        }
        off += step;
    }
    trace_put(t, fy_mux_reader_at_boundary(r) ? "B" : "T", 1);
    return FY_OK;
}

static int feed_oneshot(fy_mux_reader_t *r, const uint8_t *in, size_t len, trace_t *t)
{
    static const size_t all[] = { 0 };
    return feed(r, in, len, all, 1, t);
}

static trace_t ta, tb;
static fy_mux_reader_t ra, rb;

static void check_splits(const uint8_t *in, size_t len, size_t max_step)
{
    static const size_t odd[] = { 1, 9, 10, 11, 3, 4097, 2, 8193, 0 };
    int ea, eb;

    memset(&ta, 0, sizeof(ta));
    fy_mux_reader_init(&ra);
    ea = feed_oneshot(&ra, in, len, &ta);
    fy_mux_reader_free(&ra);
    for (size_t step = 1; step <= max_step + 1; step++) {
        memset(&tb, 0, sizeof(tb));
        fy_mux_reader_init(&rb);
        if (step <= max_step)
            eb = feed(&rb, in, len, &step, 1, &tb);
        else
            eb = feed(&rb, in, len, odd, FY_NELEM(odd) - 1, &tb);
        fy_mux_reader_free(&rb);
        cr_assert_eq(ea, eb, "step %zu", step);
        cr_assert_eq(ta.n, tb.n, "step %zu: trace %zu vs %zu", step, ta.n, tb.n);
        cr_assert(memcmp(ta.log, tb.log, ta.n) == 0, "step %zu: traces differ", step);
        cr_assert_eq(ta.frames, tb.frames);
        cr_assert_eq(ta.datas, tb.datas);
    }
}

static size_t put_frame(uint8_t *out, uint8_t type, uint32_t stream, const void *payload, uint32_t len)
{
    fy_mux_put_hdr(out, type, 0, stream, len);
    if (len > 0)
        memcpy(out + FY_MUX_HDR, payload, len);
    return FY_MUX_HDR + len;
}

/* ---- frames ---- */

Test(mux, put_hdr_bytes)
{
    uint8_t out[FY_MUX_HDR];
    static const uint8_t want[] = { 4, 0x5a, 0x01, 0x02, 0x03, 0x04, 0xfe, 0xdc, 0xba, 0x98 };

    fy_mux_put_hdr(out, FY_MUX_DATA, 0x5a, 0x01020304, 0xfedcba98);
    cr_assert(memcmp(out, want, sizeof(want)) == 0);
    cr_assert_eq(fy_mux_get_u32(out + 2), 0x01020304);
    fy_mux_put_u32(out, 0x80000001);
    cr_assert_eq(fy_mux_get_u32(out), 0x80000001);
}

Test(mux, every_frame_type_round_trip)
{
    static uint8_t in[1 << 16];
    static uint8_t payload[FY_MUX_MAX_CONTROL + 32];
    struct { uint8_t type; uint32_t stream; uint32_t len; } cases[] = {
        { FY_MUX_HELLO, 0, 24 }, { FY_MUX_HELLO, 0, 0 }, { FY_MUX_READY, 0, FY_MUX_MAX_CONTROL },
        { FY_MUX_OPEN, 1, 20 }, { FY_MUX_OPEN, 0xffffffffu, 0 }, { FY_MUX_DATA, 7, 1000 },
        { FY_MUX_DATA, 7, 0 }, { FY_MUX_WINDOW, 0, 4 }, { FY_MUX_WINDOW, 9, 4 },
        { FY_MUX_FIN, 9, 0 }, { FY_MUX_RST, 9, 4 }, { FY_MUX_RST, 9, 30 },
        { FY_MUX_PING, 0, 8 }, { FY_MUX_PONG, 0, 8 }, { FY_MUX_GOAWAY, 0, 4 },
        { FY_MUX_GOAWAY, 0, 100 },
    };
    size_t n = 0;

    for (size_t i = 0; i < sizeof(payload); i++)
        payload[i] = (uint8_t)(i * 3 + 1);
    for (size_t i = 0; i < FY_NELEM(cases); i++) {
        fy_mux_put_hdr(in + n, cases[i].type, (uint8_t)i, cases[i].stream, cases[i].len);
        memcpy(in + n + FY_MUX_HDR, payload + i, cases[i].len);
        n += FY_MUX_HDR + cases[i].len;
    }

    /* One call per frame when the buffer holds them all. */
    fy_mux_reader_t r;
    fy_mux_event_t ev;
    size_t pos = 0;
    fy_mux_reader_init(&r);
    cr_assert(fy_mux_reader_at_boundary(&r));
    for (size_t i = 0; i < FY_NELEM(cases); i++) {
        ssize_t c = fy_mux_read(&r, in + pos, n - pos, &ev);
        cr_assert_eq(c, (ssize_t)(FY_MUX_HDR + cases[i].len), "case %zu", i);
        cr_assert_eq(ev.type, cases[i].type == FY_MUX_DATA ? FY_MUX_EV_DATA : FY_MUX_EV_FRAME);
        cr_assert_eq(ev.hdr.type, cases[i].type);
        cr_assert_eq(ev.hdr.flags, (uint8_t)i);
        cr_assert_eq(ev.hdr.stream, cases[i].stream);
        cr_assert_eq(ev.hdr.length, cases[i].len);
        cr_assert_eq(ev.len, cases[i].len);
        cr_assert(ev.end);
        cr_assert(memcmp(ev.payload, in + pos + FY_MUX_HDR, ev.len) == 0);
        if (cases[i].type == FY_MUX_DATA)
            cr_assert(ev.payload == in + pos + FY_MUX_HDR, "DATA is not copied");
        cr_assert(fy_mux_reader_at_boundary(&r));
        pos += (size_t)c;
    }
    cr_assert_eq(pos, n);
    cr_assert_eq(fy_mux_read(&r, in + n, 0, &ev), 0);
    cr_assert_eq(ev.type, FY_MUX_EV_NONE);

    check_splits(in, n, 24);
    cr_assert_eq(ta.frames, FY_NELEM(cases) - 2);
    cr_assert_eq(ta.datas, 2);
}

Test(mux, partial_header_and_payload)
{
    uint8_t in[64];
    fy_mux_reader_t r;
    fy_mux_event_t ev;
    size_t n = put_frame(in, FY_MUX_PING, 0, "12345678", 8);

    fy_mux_reader_init(&r);
    cr_assert_eq(fy_mux_read(&r, in, 3, &ev), 3);
    cr_assert_eq(ev.type, FY_MUX_EV_NONE);
    cr_assert_not(fy_mux_reader_at_boundary(&r));
    cr_assert_eq(fy_mux_read(&r, in + 3, 9, &ev), 9);
    cr_assert_eq(ev.type, FY_MUX_EV_NONE);
    cr_assert_not(fy_mux_reader_at_boundary(&r));
    cr_assert_eq(fy_mux_read(&r, in + 12, n - 12, &ev), (ssize_t)(n - 12));
    cr_assert_eq(ev.type, FY_MUX_EV_FRAME);
    cr_assert(memcmp(ev.payload, "12345678", 8) == 0);
    cr_assert(ev.payload == r.ctl, "a payload that came in pieces is collected in the reader");

    /* A DATA header alone reports nothing; the payload then comes as
     * slices of the caller's buffer. */
    n = put_frame(in, FY_MUX_DATA, 5, "abcdef", 6);
    cr_assert_eq(fy_mux_read(&r, in, FY_MUX_HDR, &ev), FY_MUX_HDR);
    cr_assert_null(r.ctl, "an idle reader holds no payload buffer");
    cr_assert_eq(ev.type, FY_MUX_EV_NONE);
    cr_assert_not(fy_mux_reader_at_boundary(&r));
    cr_assert_eq(fy_mux_read(&r, in + FY_MUX_HDR, 0, &ev), 0);
    cr_assert_eq(ev.type, FY_MUX_EV_NONE);
    cr_assert_eq(fy_mux_read(&r, in + FY_MUX_HDR, 2, &ev), 2);
    cr_assert_eq(ev.type, FY_MUX_EV_DATA);
    cr_assert(ev.payload == in + FY_MUX_HDR && ev.len == 2 && !ev.end);
    cr_assert_eq(ev.hdr.stream, 5);
    /* The slice stops at the frame's end even if more bytes follow. */
    n += put_frame(in + n, FY_MUX_FIN, 5, NULL, 0);
    cr_assert_eq(fy_mux_read(&r, in + 12, n - 12, &ev), 4);
    cr_assert(ev.type == FY_MUX_EV_DATA && ev.len == 4 && ev.end);
    cr_assert(memcmp(ev.payload, "cdef", 4) == 0);
    cr_assert(fy_mux_reader_at_boundary(&r));
    cr_assert_eq(fy_mux_read(&r, in + 16, n - 16, &ev), FY_MUX_HDR);
    cr_assert_eq(ev.type, FY_MUX_EV_FRAME);
    cr_assert_eq(ev.hdr.type, FY_MUX_FIN);
    cr_assert_eq(ev.len, 0);

    /* A control payload whole in the buffer is reported where it lies,
     * even when its header came in an earlier call. */
    n = put_frame(in, FY_MUX_PING, 0, "abcdefgh", 8);
    cr_assert_eq(fy_mux_read(&r, in, FY_MUX_HDR, &ev), FY_MUX_HDR);
    cr_assert_eq(ev.type, FY_MUX_EV_NONE);
    cr_assert_eq(fy_mux_read(&r, in + FY_MUX_HDR, 8, &ev), 8);
    cr_assert_eq(ev.type, FY_MUX_EV_FRAME);
    cr_assert(ev.payload == in + FY_MUX_HDR && ev.len == 8);
    cr_assert_null(r.ctl);
    fy_mux_reader_free(&r);
}

Test(mux, zero_length_frames_reported_at_once)
{
    uint8_t in[32];
    fy_mux_reader_t r;
    fy_mux_event_t ev;

    put_frame(in, FY_MUX_DATA, 3, NULL, 0);
    fy_mux_reader_init(&r);
    for (size_t i = 1; i < FY_MUX_HDR; i++) {
        cr_assert_eq(fy_mux_read(&r, in + i - 1, 1, &ev), 1);
        cr_assert_eq(ev.type, FY_MUX_EV_NONE);
    }
    cr_assert_eq(fy_mux_read(&r, in + FY_MUX_HDR - 1, 1, &ev), 1);
    cr_assert_eq(ev.type, FY_MUX_EV_DATA);
    cr_assert_eq(ev.len, 0);
    cr_assert(ev.end);
    cr_assert(fy_mux_reader_at_boundary(&r));

    put_frame(in, FY_MUX_HELLO, 0, NULL, 0);
    cr_assert_eq(fy_mux_read(&r, in, FY_MUX_HDR, &ev), FY_MUX_HDR);
    cr_assert_eq(ev.type, FY_MUX_EV_FRAME);
    cr_assert_eq(ev.len, 0);
    cr_assert_not_null(ev.payload);
}

Test(mux, byte_by_byte_equals_one_shot)
{
    static uint8_t in[1 << 22], payload[FY_MUX_MAX_DATA];
    size_t n = 0;
    uint8_t w[4], rst[12];

    for (size_t i = 0; i < sizeof(payload); i++)
        payload[i] = (uint8_t)(i * 11 + (i >> 10));
    fy_mux_put_u32(w, 65536);
    fy_mux_put_u32(rst, FY_MUX_RST_REFUSED);
    memcpy(rst + 4, "refused!", 8);
    n += put_frame(in + n, FY_MUX_HELLO, 0, "session=abc\nversion=1\n", 22);
    n += put_frame(in + n, FY_MUX_OPEN, 1, "client=192.0.2.1:5555\n", 22);
    n += put_frame(in + n, FY_MUX_DATA, 1, payload, 1);
    n += put_frame(in + n, FY_MUX_DATA, 1, payload, 0);
    n += put_frame(in + n, FY_MUX_DATA, 2, payload + 5, 300);
    n += put_frame(in + n, FY_MUX_WINDOW, 0, w, 4);
    n += put_frame(in + n, FY_MUX_FIN, 1, NULL, 0);
    n += put_frame(in + n, FY_MUX_RST, 2, rst, 12);
    n += put_frame(in + n, FY_MUX_PING, 0, "abcdefgh", 8);
    n += put_frame(in + n, FY_MUX_READY, 0, payload, 1000);
    n += put_frame(in + n, FY_MUX_GOAWAY, 0, rst, 4);
    n += put_frame(in + n, FY_MUX_DATA, 3, payload, 7);
    n -= 3;   /* the last frame is cut short */
    check_splits(in, n, 40);
    cr_assert_eq(ta.frames, 8);
    cr_assert_eq(ta.datas, 3);
    cr_assert_eq(ta.log[ta.n - 1], 'T', "ends inside a frame");

    /* Big frames: a full-size DATA and a full-size control payload. */
    n = 0;
    n += put_frame(in + n, FY_MUX_DATA, 9, payload, FY_MUX_MAX_DATA);
    n += put_frame(in + n, FY_MUX_OPEN, 9, payload, FY_MUX_MAX_CONTROL);
    n += put_frame(in + n, FY_MUX_DATA, 9, payload, 70000);
    check_splits(in, n, 2);
    cr_assert_eq(ta.log[ta.n - 1], 'B');
    cr_assert_eq(ta.datas, 2);
}

/* ---- errors ---- */

static void expect_error(uint8_t type, uint32_t stream, uint32_t len)
{
    uint8_t in[FY_MUX_HDR];
    fy_mux_reader_t r;
    fy_mux_event_t ev;
    ssize_t rc = 0;

    fy_mux_put_hdr(in, type, 0, stream, len);
    /* Fails on the header alone, byte by byte too, and stays failed. */
    fy_mux_reader_init(&r);
    for (size_t i = 0; i < FY_MUX_HDR; i++) {
        rc = fy_mux_read(&r, in + i, 1, &ev);
        if (i + 1 < FY_MUX_HDR)
            cr_assert_eq(rc, 1);
    }
    cr_assert_eq(rc, FY_ERR, "type %u stream %u len %u accepted", type, stream, len);
    cr_assert_not_null(r.err_reason);
    cr_assert_eq(fy_mux_read(&r, in, sizeof(in), &ev), FY_ERR);
    cr_assert_eq(fy_mux_read(&r, in, 0, &ev), FY_ERR);

    fy_mux_reader_init(&r);
    cr_assert_eq(fy_mux_read(&r, in, sizeof(in), &ev), FY_ERR);
}

static void expect_ok(uint8_t type, uint32_t stream, uint32_t len)
{
    uint8_t in[FY_MUX_HDR];
    fy_mux_reader_t r;
    fy_mux_event_t ev;

    fy_mux_put_hdr(in, type, 0, stream, len);
    fy_mux_reader_init(&r);
    cr_assert_eq(fy_mux_read(&r, in, sizeof(in), &ev), FY_MUX_HDR, "type %u stream %u len %u refused: %s",
                 type, stream, len, r.err_reason ? r.err_reason : "");
}

Test(mux, error_unknown_type)
{
    expect_error(0, 0, 0);
    expect_error(0, 1, 0);
    expect_error(FY_MUX_TYPE_MAX + 1, 0, 4);
    expect_error(FY_MUX_TYPE_MAX + 1, 1, 0);
    expect_error(0x80, 0, 0);
    expect_error(0xff, 1, 0);
}

Test(mux, error_stream_rules)
{
    static const uint8_t conn_only[] = { FY_MUX_HELLO, FY_MUX_READY, FY_MUX_PING, FY_MUX_PONG, FY_MUX_GOAWAY };
    static const uint8_t stream_only[] = { FY_MUX_OPEN, FY_MUX_DATA, FY_MUX_FIN, FY_MUX_RST };
    static const uint32_t good_len[] = { [FY_MUX_HELLO] = 0, [FY_MUX_READY] = 0, [FY_MUX_OPEN] = 0,
        [FY_MUX_DATA] = 0, [FY_MUX_WINDOW] = 4, [FY_MUX_FIN] = 0, [FY_MUX_RST] = 4,
        [FY_MUX_PING] = 8, [FY_MUX_PONG] = 8, [FY_MUX_GOAWAY] = 4 };

    for (size_t i = 0; i < FY_NELEM(conn_only); i++) {
        uint8_t t = conn_only[i];
        expect_ok(t, 0, good_len[t]);
        expect_error(t, 1, good_len[t]);
        expect_error(t, 0x80000000u, good_len[t]);
        expect_error(t, 0xffffffffu, good_len[t]);
    }
    for (size_t i = 0; i < FY_NELEM(stream_only); i++) {
        uint8_t t = stream_only[i];
        expect_ok(t, 1, good_len[t]);
        expect_ok(t, 0xffffffffu, good_len[t]);
        expect_error(t, 0, good_len[t]);
    }
    expect_ok(FY_MUX_WINDOW, 0, 4);
    expect_ok(FY_MUX_WINDOW, 1, 4);
    expect_ok(FY_MUX_WINDOW, 0xffffffffu, 4);
}

Test(mux, error_payload_sizes)
{
    expect_error(FY_MUX_WINDOW, 0, 0);
    expect_error(FY_MUX_WINDOW, 1, 3);
    expect_error(FY_MUX_WINDOW, 1, 5);
    expect_error(FY_MUX_WINDOW, 1, 8);
    for (uint8_t t = FY_MUX_PING; t <= FY_MUX_PONG; t++) {
        expect_error(t, 0, 0);
        expect_error(t, 0, 7);
        expect_error(t, 0, 9);
        expect_error(t, 0, 0xffffffffu);
    }
    for (uint32_t len = 0; len < 4; len++) {
        expect_error(FY_MUX_RST, 1, len);
        expect_error(FY_MUX_GOAWAY, 0, len);
    }
    expect_ok(FY_MUX_RST, 1, 4);
    expect_ok(FY_MUX_RST, 1, FY_MUX_MAX_CONTROL);
    expect_ok(FY_MUX_GOAWAY, 0, FY_MUX_MAX_CONTROL);
    expect_error(FY_MUX_RST, 1, FY_MUX_MAX_CONTROL + 1);
    expect_error(FY_MUX_GOAWAY, 0, 0xffffffffu);
    expect_error(FY_MUX_FIN, 1, 1);
    expect_error(FY_MUX_FIN, 1, 0xffffffffu);
}

Test(mux, error_oversized)
{
    expect_ok(FY_MUX_HELLO, 0, FY_MUX_MAX_CONTROL);
    expect_error(FY_MUX_HELLO, 0, FY_MUX_MAX_CONTROL + 1);
    expect_ok(FY_MUX_READY, 0, FY_MUX_MAX_CONTROL);
    expect_error(FY_MUX_READY, 0, FY_MUX_MAX_CONTROL + 1);
    expect_ok(FY_MUX_OPEN, 1, FY_MUX_MAX_CONTROL);
    expect_error(FY_MUX_OPEN, 1, FY_MUX_MAX_CONTROL + 1);
    expect_error(FY_MUX_OPEN, 1, 0xffffffffu);
    expect_ok(FY_MUX_DATA, 1, FY_MUX_MAX_DATA);
    expect_error(FY_MUX_DATA, 1, FY_MUX_MAX_DATA + 1);
    expect_error(FY_MUX_DATA, 1, 0xffffffffu);
}

Test(mux, error_after_good_frames)
{
    uint8_t in[64];
    size_t n = put_frame(in, FY_MUX_PING, 0, "abcdefgh", 8);
    n += put_frame(in + n, FY_MUX_DATA, 0, "x", 1);

    check_splits(in, n, 20);
    cr_assert_eq(ta.frames, 1);
    cr_assert_eq(ta.log[ta.n - 1], 'E');
    cr_assert_not_null(ta.err);
}

/* ---- key=value payloads ---- */

Test(mux, kv_put_get_round_trip)
{
    uint8_t buf[128];
    size_t len = 0, vlen = 99;
    const char *v;

    cr_assert_eq(fy_mux_kv_put(buf, &len, sizeof(buf), "session", "s3cr3t", 6), FY_OK);
    cr_assert_eq(fy_mux_kv_put(buf, &len, sizeof(buf), "url", "https://a.example/?x=1", 22), FY_OK);
    cr_assert_eq(fy_mux_kv_put(buf, &len, sizeof(buf), "empty", "", 0), FY_OK);
    cr_assert_eq(fy_mux_kv_put(buf, &len, sizeof(buf), "nul_ok", NULL, 0), FY_OK);
    cr_assert_eq(fy_mux_kv_put(buf, &len, sizeof(buf), "a_9", "\t\x01 \xff", 4), FY_OK);
    static const char want[] = "session=s3cr3t\nurl=https://a.example/?x=1\nempty=\nnul_ok=\na_9=\t\x01 \xff\n";
    cr_assert_eq(len, sizeof(want) - 1);
    cr_assert(memcmp(buf, want, len) == 0);
    cr_assert(fy_mux_kv_valid(buf, len));

    v = fy_mux_kv_get(buf, len, "url", &vlen);
    cr_assert_not_null(v);
    cr_assert_eq(vlen, 22);
    cr_assert(memcmp(v, "https://a.example/?x=1", 22) == 0, "the value keeps its '='");
    v = fy_mux_kv_get(buf, len, "session", &vlen);
    cr_assert(v != NULL && vlen == 6 && memcmp(v, "s3cr3t", 6) == 0);
    v = fy_mux_kv_get(buf, len, "empty", &vlen);
    cr_assert(v != NULL && vlen == 0);
    v = fy_mux_kv_get(buf, len, "a_9", NULL);
    cr_assert_not_null(v);

    /* Exact matches only. */
    cr_assert_null(fy_mux_kv_get(buf, len, "ur", &vlen));
    cr_assert_null(fy_mux_kv_get(buf, len, "urlx", &vlen));
    cr_assert_null(fy_mux_kv_get(buf, len, "rl", &vlen));
    cr_assert_null(fy_mux_kv_get(buf, len, "URL", &vlen));
    cr_assert_null(fy_mux_kv_get(buf, len, "", &vlen));
    cr_assert_null(fy_mux_kv_get(buf, len, "s3cr3t", &vlen), "values are not keys");
    cr_assert_null(fy_mux_kv_get(buf, 0, "url", &vlen));
    cr_assert_null(fy_mux_kv_get(NULL, 0, "url", &vlen));
}

Test(mux, kv_put_rejects_bad_keys_and_values)
{
    uint8_t buf[64];
    size_t len = 0;
    static const char *bad_keys[] = { "", "Url", "u-rl", "u=rl", "u rl", "u\nrl", "\xc3\xa9", "url.x" };

    for (size_t i = 0; i < FY_NELEM(bad_keys); i++)
        cr_assert_eq(fy_mux_kv_put(buf, &len, sizeof(buf), bad_keys[i], "v", 1), FY_ERR, "key %zu", i);
    cr_assert_eq(fy_mux_kv_put(buf, &len, sizeof(buf), "k", "a\rb", 3), FY_ERR);
    cr_assert_eq(fy_mux_kv_put(buf, &len, sizeof(buf), "k", "a\nb", 3), FY_ERR);
    cr_assert_eq(fy_mux_kv_put(buf, &len, sizeof(buf), "k", "a\0b", 3), FY_ERR);
    cr_assert_eq(fy_mux_kv_put(buf, &len, sizeof(buf), "k", "ab\n", 3), FY_ERR);
    cr_assert_eq(fy_mux_kv_put(buf, &len, sizeof(buf), "k", NULL, 1), FY_ERR);
    cr_assert_eq(len, 0, "failures write nothing");
}

Test(mux, kv_put_overflow)
{
    uint8_t buf[16];
    size_t len = 0;

    memset(buf, 0xaa, sizeof(buf));
    /* "k=" + 12 + "\n" = 15: fits; then "a=\n" (3) does not fit in 1. */
    cr_assert_eq(fy_mux_kv_put(buf, &len, 15, "k", "123456789012", 12), FY_OK);
    cr_assert_eq(len, 15);
    cr_assert_eq(buf[15], 0xaa, "nothing written past cap");
    cr_assert_eq(fy_mux_kv_put(buf, &len, 16, "a", "", 0), FY_ERR);
    cr_assert_eq(len, 15);
    cr_assert_eq(buf[15], 0xaa);

    len = 0;
    cr_assert_eq(fy_mux_kv_put(buf, &len, 16, "k", "1234567890123", 13), FY_OK);   /* exactly 16 */
    cr_assert_eq(len, 16);
    len = 0;
    cr_assert_eq(fy_mux_kv_put(buf, &len, 16, "k", "12345678901234", 14), FY_ERR); /* 17 */
    cr_assert_eq(len, 0);
    len = 17;
    cr_assert_eq(fy_mux_kv_put(buf, &len, 16, "k", "", 0), FY_ERR, "*len past cap");
    len = 0;
    cr_assert_eq(fy_mux_kv_put(buf, &len, 0, "k", "", 0), FY_ERR);
    cr_assert_eq(fy_mux_kv_put(buf, &len, SIZE_MAX, "k", "v", SIZE_MAX - 1), FY_ERR);
}

Test(mux, kv_get_first_match_and_malformed_lines)
{
    static const char p[] = "noequals\nkey=1\nkey=2\n=orphan\nlast=x";
    size_t vlen;
    const char *v;

    v = fy_mux_kv_get((const uint8_t *)p, sizeof(p) - 1, "key", &vlen);
    cr_assert(v != NULL && vlen == 1 && v[0] == '1', "the first occurrence wins");
    cr_assert_null(fy_mux_kv_get((const uint8_t *)p, sizeof(p) - 1, "noequals", &vlen));
    cr_assert_null(fy_mux_kv_get((const uint8_t *)p, sizeof(p) - 1, "last", &vlen), "unterminated line");
    cr_assert_null(fy_mux_kv_get((const uint8_t *)p, sizeof(p) - 1, "", &vlen));
    cr_assert_not(fy_mux_kv_valid((const uint8_t *)p, sizeof(p) - 1));

    /* A key only matches at a line start. */
    static const char q[] = "a=key=3\n";
    cr_assert_null(fy_mux_kv_get((const uint8_t *)q, sizeof(q) - 1, "key", &vlen));
    v = fy_mux_kv_get((const uint8_t *)q, sizeof(q) - 1, "a", &vlen);
    cr_assert(v != NULL && vlen == 5 && memcmp(v, "key=3", 5) == 0);
}

Test(mux, kv_valid)
{
    static const struct { const char *p; size_t len; bool ok; } cases[] = {
        { "", 0, true },
        { "a=\n", 3, true },
        { "a=b\nc_1=d=e\n", 12, true },
        { "k=\t\x01\xff\n", 6, true },
        { "a=b", 3, false },
        { "a=b\nc=d", 7, false },
        { "=b\n", 3, false },
        { "a\n", 2, false },
        { "\n", 1, false },
        { "A=b\n", 4, false },
        { "a-b=c\n", 6, false },
        { "a b=c\n", 6, false },
        { "a=b\r\n", 5, false },
        { "a=b\0c\n", 6, false },
        { "a\0=b\n", 5, false },
        { "a=b\n\n", 5, false },
    };

    for (size_t i = 0; i < FY_NELEM(cases); i++)
        cr_assert_eq(fy_mux_kv_valid((const uint8_t *)cases[i].p, cases[i].len), cases[i].ok, "case %zu", i);
    cr_assert(fy_mux_kv_valid(NULL, 0));
}

/* ---- credit ---- */

Test(mux, credit_init)
{
    fy_mux_credit_t c;

    fy_mux_credit_init(&c, FY_MUX_STREAM_WINDOW);
    cr_assert_eq(c.send, FY_MUX_STREAM_WINDOW);
    cr_assert_eq(c.recv, FY_MUX_STREAM_WINDOW);
    cr_assert_eq(c.initial, FY_MUX_STREAM_WINDOW);
    cr_assert_eq(c.unacked, 0);
}

Test(mux, credit_received_beyond_window)
{
    fy_mux_credit_t c;

    fy_mux_credit_init(&c, 1000);
    cr_assert_eq(fy_mux_credit_received(&c, 1001), FY_ERR);
    cr_assert_eq(c.recv, 1000, "a refused count changes nothing");
    cr_assert_eq(fy_mux_credit_received(&c, 600), FY_OK);
    cr_assert_eq(fy_mux_credit_received(&c, 401), FY_ERR);
    cr_assert_eq(fy_mux_credit_received(&c, 400), FY_OK);
    cr_assert_eq(c.recv, 0);
    cr_assert_eq(fy_mux_credit_received(&c, 0), FY_OK);
    cr_assert_eq(fy_mux_credit_received(&c, 1), FY_ERR);
    cr_assert_eq(fy_mux_credit_received(&c, UINT32_MAX), FY_ERR);
}

Test(mux, credit_consumed_batches_at_half)
{
    fy_mux_credit_t c;

    fy_mux_credit_init(&c, 1000);
    cr_assert_eq(fy_mux_credit_received(&c, 1000), FY_OK);
    cr_assert_eq(fy_mux_credit_consumed(&c, 0), 0);
    cr_assert_eq(fy_mux_credit_consumed(&c, 200), 0);
    cr_assert_eq(fy_mux_credit_consumed(&c, 299), 0);
    cr_assert_eq(c.unacked, 499);
    cr_assert_eq(c.recv, 0);
    cr_assert_eq(fy_mux_credit_consumed(&c, 1), 500, "announced at half the window");
    cr_assert_eq(c.recv, 500);
    cr_assert_eq(c.unacked, 0);
    cr_assert_eq(fy_mux_credit_consumed(&c, 500), 500, "one big consume goes out at once");
    cr_assert_eq(c.recv, 1000);
    cr_assert_eq(fy_mux_credit_received(&c, 1000), FY_OK, "the whole window is open again");
    cr_assert_eq(fy_mux_credit_received(&c, 1), FY_ERR);

    /* The real windows. */
    fy_mux_credit_init(&c, FY_MUX_STREAM_WINDOW);
    cr_assert_eq(fy_mux_credit_received(&c, FY_MUX_STREAM_WINDOW), FY_OK);
    uint32_t total = 0;
    for (int i = 0; i < 256; i++)
        total += fy_mux_credit_consumed(&c, 1024);
    cr_assert_eq(total, FY_MUX_STREAM_WINDOW);
    cr_assert_eq(c.recv, FY_MUX_STREAM_WINDOW);
}

Test(mux, credit_granted_and_sent)
{
    fy_mux_credit_t c;

    fy_mux_credit_init(&c, FY_MUX_CONN_WINDOW);
    cr_assert_eq(fy_mux_credit_granted(&c, 0), FY_ERR);
    fy_mux_credit_sent(&c, FY_MUX_CONN_WINDOW);
    cr_assert_eq(c.send, 0);
    cr_assert_eq(fy_mux_credit_granted(&c, 100), FY_OK);
    cr_assert_eq(c.send, 100);
    cr_assert_eq(fy_mux_credit_granted(&c, FY_MUX_MAX_WINDOW - 100), FY_OK, "up to 2^31-1 exactly");
    cr_assert_eq(c.send, FY_MUX_MAX_WINDOW);
    cr_assert_eq(fy_mux_credit_granted(&c, 1), FY_ERR);
    cr_assert_eq(c.send, FY_MUX_MAX_WINDOW, "a refused grant changes nothing");

    fy_mux_credit_init(&c, 10);
    cr_assert_eq(fy_mux_credit_granted(&c, UINT32_MAX), FY_ERR);
    cr_assert_eq(fy_mux_credit_granted(&c, FY_MUX_MAX_WINDOW - 9), FY_ERR);
    cr_assert_eq(fy_mux_credit_granted(&c, FY_MUX_MAX_WINDOW - 10), FY_OK);
}

/* Bytes of a DATA payload the caller moved itself (splice): the reader
 * says how many are left, takes them as read, and goes on with the next
 * frame. Outside a DATA payload there is nothing to skip. */
Test(mux, data_left_and_skip)
{
    uint8_t in[64];
    fy_mux_reader_t r;
    fy_mux_event_t ev;
    fy_mux_hdr_t hdr;
    size_t n = put_frame(in, FY_MUX_DATA, 9, "0123456789", 10);

    n += put_frame(in + n, FY_MUX_FIN, 9, NULL, 0);
    fy_mux_reader_init(&r);
    cr_assert_eq(fy_mux_reader_data_left(&r, &hdr), 0);
    cr_assert_eq(fy_mux_read(&r, in, FY_MUX_HDR + 3, &ev), FY_MUX_HDR + 3);
    cr_assert(ev.type == FY_MUX_EV_DATA && ev.len == 3 && !ev.end);
    cr_assert_eq(fy_mux_reader_data_left(&r, &hdr), 7);
    cr_assert(hdr.stream == 9 && hdr.type == FY_MUX_DATA && hdr.length == 10);
    fy_mux_reader_skip(&r, 4);
    cr_assert_eq(fy_mux_reader_data_left(&r, &hdr), 3);
    cr_assert_not(fy_mux_reader_at_boundary(&r));
    fy_mux_reader_skip(&r, 3);
    cr_assert_eq(fy_mux_reader_data_left(&r, &hdr), 0);
    cr_assert(fy_mux_reader_at_boundary(&r));
    cr_assert_eq(fy_mux_read(&r, in + FY_MUX_HDR + 10, n - FY_MUX_HDR - 10, &ev), FY_MUX_HDR);
    cr_assert(ev.type == FY_MUX_EV_FRAME && ev.hdr.type == FY_MUX_FIN && ev.hdr.stream == 9);
    fy_mux_reader_free(&r);
}

/* HELLO and READY may carry `window=`, the per-stream credit the sender
 * grants; only a plain number from 256 KiB to 16 MiB counts. */
Test(mux, kv_window)
{
    static const struct { const char *kv; int rc; uint32_t w; } cases[] = {
        {"window=1048576\n", FY_OK, 1048576},
        {"session=x\nwindow=262144\n", FY_OK, 262144},
        {"window=16777216\n", FY_OK, 16777216},
        {"window=262143\n", FY_ERR, 0},
        {"window=16777217\n", FY_ERR, 0},
        {"window=1e6\n", FY_ERR, 0},
        {"window=-1048576\n", FY_ERR, 0},
        {"window=\n", FY_ERR, 0},
        {"window=999999999999\n", FY_ERR, 0},
        {"session=x\n", FY_ERR, 0},
    };
    size_t i;

    for (i = 0; i < FY_NELEM(cases); i++) {
        uint32_t w = 7;
        int rc = fy_mux_kv_window((const uint8_t *)cases[i].kv, strlen(cases[i].kv), &w);
        cr_assert_eq(rc, cases[i].rc, "%s", cases[i].kv);
        cr_assert_eq(w, rc == FY_OK ? cases[i].w : 7, "%s", cases[i].kv);
    }
}

Test(mux, credit_init_pair)
{
    fy_mux_credit_t c;
    fy_mux_credit_init_pair(&c, FY_MUX_STREAM_WINDOW, FY_MUX_STREAM_WINDOW_WIDE);
    cr_assert_eq(c.send, FY_MUX_STREAM_WINDOW);
    cr_assert_eq(c.recv, FY_MUX_STREAM_WINDOW_WIDE);
    cr_assert_eq(c.initial, FY_MUX_STREAM_WINDOW_WIDE, "WINDOW batching follows what we grant");
}
