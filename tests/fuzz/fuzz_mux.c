/*
 * fuzz_mux.c: libFuzzer target for the mux frame reader, the key=value
 * helpers and the credit arithmetic (common/mux).
 *
 * Input layout: byte 0 seeds the chunk sizes and the credit window; the rest
 * is the byte stream. It is read one-shot and in chunks, and the two traces
 * (frames, DATA coalesced per frame, errors) must be equal. Every FRAME
 * payload goes through fy_mux_kv_valid, and a valid one must survive a
 * kv_get and kv_put round trip byte for byte. DATA and WINDOW frames drive
 * a credit pair whose invariants are checked after each step.
 */
#include "fy.h"
#include "mux/mux.h"

#include <stdlib.h>
#include <string.h>

#define MAX_INPUT (1u << 16)
#define TRACE_CAP (3 * MAX_INPUT + 64)

typedef struct {
    uint8_t log[TRACE_CAP];
    size_t  n;
} trace_t;

static trace_t ta, tb;
static fy_mux_reader_t reader;

#define CHECK(c) do { if (!(c)) abort(); } while (0)

static void put(trace_t *t, const void *p, size_t len)
{
    CHECK(len <= TRACE_CAP - t->n);
    if (len > 0)
        memcpy(t->log + t->n, p, len);
    t->n += len;
}

static void put_hdr(trace_t *t, char tag, const fy_mux_hdr_t *h)
{
    uint8_t b[FY_MUX_HDR + 1];
    b[0] = (uint8_t)tag;
    fy_mux_put_hdr(b + 1, h->type, h->flags, h->stream, h->length);
    put(t, b, sizeof(b));
}

static bool key_char(uint8_t c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
}

/* A payload kv_valid accepts: every key is found (first occurrence), and
 * re-encoding the lines with kv_put gives the same bytes. */
static void check_kv(const uint8_t *p, size_t len)
{
    static uint8_t out[FY_MUX_MAX_CONTROL];
    size_t olen = 0, i = 0;

    /* kv_get on arbitrary payloads: a slice inside p, without LF. */
    static const char *keys[] = { "session", "url", "client", "a", "" };
    for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++) {
        size_t vlen = 0;
        const char *v = fy_mux_kv_get(p, len, keys[k], &vlen);
        if (v != NULL) {
            CHECK((const uint8_t *)v >= p && (const uint8_t *)v + vlen < p + len);
            CHECK(memchr(v, '\n', vlen) == NULL);
            CHECK(v[vlen] == '\n');
        }
    }

    if (!fy_mux_kv_valid(p, len))
        return;
    while (i < len) {
        char key[FY_MUX_MAX_CONTROL + 1];
        size_t k = 0, vlen = 0;
        while (p[i + k] != '=') {
            CHECK(key_char(p[i + k]));
            key[k] = (char)p[i + k];
            k++;
        }
        key[k] = '\0';
        const uint8_t *val = p + i + k + 1;
        const uint8_t *nl = memchr(val, '\n', len - (size_t)(val - p));
        CHECK(nl != NULL);
        size_t vl = (size_t)(nl - val);

        const char *got = fy_mux_kv_get(p, len, key, &vlen);
        CHECK(got != NULL);
        CHECK((const uint8_t *)got <= val);   /* the first occurrence */
        if ((const uint8_t *)got == val)
            CHECK(vlen == vl);
        CHECK(fy_mux_kv_put(out, &olen, sizeof(out), key, (const char *)val, vl) == FY_OK);
        i = (size_t)(nl - p) + 1;
    }
    CHECK(olen == len && memcmp(out, p, len) == 0);
}

static uint32_t next_step(uint32_t *s, uint32_t seed)
{
    static const uint32_t bounds[] = { 1, 2, 9, 11, 16, 100, 4096, 70000 };
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return 1 + *s % bounds[seed & 7];
}

static void run(const uint8_t *in, size_t len, uint32_t seed, bool oneshot, trace_t *t)
{
    fy_mux_reader_t *r = &reader;
    fy_mux_credit_t c;
    size_t off = 0, data_got = 0;
    uint32_t s = seed * 2654435761u + 1;
    static const uint32_t windows[] = { 0, 1, 16, 1000, FY_MUX_STREAM_WINDOW, FY_MUX_CONN_WINDOW, FY_MUX_MAX_WINDOW };

    t->n = 0;
    fy_mux_reader_init(r);
    fy_mux_credit_init(&c, windows[(seed >> 3) % 7]);
    while (off < len) {
        size_t step = oneshot ? len - off : next_step(&s, seed);
        if (step > len - off)
            step = len - off;
        const uint8_t *buf = in + off;
        size_t pos = 0;
        while (pos < step) {
            fy_mux_event_t ev;
            ssize_t n = fy_mux_read(r, buf + pos, step - pos, &ev);
            if (n == FY_ERR) {
                CHECK(r->err_reason != NULL);
                CHECK(fy_mux_read(r, buf, step, &ev) == FY_ERR);
                put(t, "E", 1);
                return;
            }
            CHECK(n > 0 && (size_t)n <= step - pos);
            switch (ev.type) {
            case FY_MUX_EV_NONE:
                break;
            case FY_MUX_EV_FRAME:
                CHECK(data_got == 0);
                CHECK(ev.hdr.type >= FY_MUX_HELLO && ev.hdr.type <= FY_MUX_TYPE_MAX && ev.hdr.type != FY_MUX_DATA);
                CHECK(ev.len == ev.hdr.length && ev.len <= FY_MUX_MAX_CONTROL);
                CHECK(fy_mux_reader_at_boundary(r));
                put_hdr(t, 'F', &ev.hdr);
                put(t, ev.payload, ev.len);
                check_kv(ev.payload, ev.len);
                if (ev.hdr.type == FY_MUX_WINDOW) {
                    CHECK(ev.len == 4);
                    if (fy_mux_credit_granted(&c, fy_mux_get_u32(ev.payload)) == FY_OK)
                        CHECK(c.send > 0 && c.send <= FY_MUX_MAX_WINDOW);
                    if (c.send > 0)
                        fy_mux_credit_sent(&c, (uint32_t)(c.send / 2));
                }
                break;
            case FY_MUX_EV_DATA:
                CHECK(ev.hdr.type == FY_MUX_DATA && ev.hdr.stream != 0);
                CHECK(ev.payload + ev.len == buf + pos + (size_t)n);
                if (data_got == 0)
                    put_hdr(t, 'D', &ev.hdr);
                put(t, ev.payload, ev.len);
                data_got += ev.len;
                CHECK(data_got <= ev.hdr.length);
                CHECK(ev.end == (data_got == ev.hdr.length));
                CHECK(fy_mux_reader_at_boundary(r) == ev.end);
                if (ev.end) {
                    if (fy_mux_credit_received(&c, ev.hdr.length) == FY_OK)
                        (void)fy_mux_credit_consumed(&c, ev.hdr.length);
                    /* All received bytes are consumed at once here, so
                     * the window is either open or announced-pending. */
                    CHECK(c.recv >= 0 && c.recv + c.unacked == c.initial);
                    data_got = 0;
                }
                break;
            default:
                abort();
            }
            pos += (size_t)n;
        }
        off += step;
    }
    put(t, fy_mux_reader_at_boundary(r) ? "B" : "T", 1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size - 1 > MAX_INPUT)
        return 0;
    run(data + 1, size - 1, data[0], true, &ta);
    fy_mux_reader_free(&reader);
    run(data + 1, size - 1, data[0], false, &tb);
    fy_mux_reader_free(&reader);
    CHECK(ta.n == tb.n && memcmp(ta.log, tb.log, ta.n) == 0);
    /* And the helpers on the raw input too, valid or not. */
    check_kv(data + 1, FY_MIN(size - 1, (size_t)FY_MUX_MAX_CONTROL));
    return 0;
}
