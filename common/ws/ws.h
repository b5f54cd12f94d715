/*
 * ws.h: RFC 6455 WebSocket framing, sans-I/O. The reader is resumable: feed
 * it whatever bytes arrived, it unmasks payload in place and reports data
 * slices, complete control frames and message ends. The writer formats frame
 * headers. The handshake helper computes Sec-WebSocket-Accept.
 */
#ifndef FY_WS_H
#define FY_WS_H

#include "fy.h"

enum fy_ws_opcode {
    FY_WS_CONT = 0x0, FY_WS_TEXT = 0x1, FY_WS_BINARY = 0x2,
    FY_WS_CLOSE = 0x8, FY_WS_PING = 0x9, FY_WS_PONG = 0xA,
};

/* Close codes (RFC 6455 §7.4.1) a reader error maps to. */
#define FY_WS_CLOSE_NORMAL    1000
#define FY_WS_CLOSE_GOING     1001
#define FY_WS_CLOSE_PROTOCOL  1002
#define FY_WS_CLOSE_TOO_BIG   1009

#define FY_WS_MAX_HEADER 14        /* 2 + 8 (length) + 4 (mask) */
#define FY_WS_MAX_CONTROL 125      /* RFC 6455 §5.5 */

enum fy_ws_event_type {
    FY_WS_EV_NONE = 0,
    FY_WS_EV_DATA,        /* data: payload bytes of a data message (unmasked, in place) */
    FY_WS_EV_MESSAGE_END, /* the current data message is complete (FIN frame fully read) */
    FY_WS_EV_CONTROL,     /* a complete control frame: opcode, data (<= 125 bytes) */
};

typedef struct fy_ws_event_s {
    enum fy_ws_event_type type;
    int            opcode;      /* EV_CONTROL: CLOSE/PING/PONG; EV_DATA: the message's opcode (TEXT or BINARY) */
    uint8_t       *data;        /* borrowed: points into the buffer given to fy_ws_read */
    size_t         len;
} fy_ws_event_t;

/* Reader state. Initialise with fy_ws_reader_init. */
typedef struct fy_ws_reader_s {
    int      state;            /* private: header or payload */
    bool     expect_masked;    /* a server reads masked frames, a client unmasked ones */
    bool     in_message;       /* a fragmented data message is open */
    int      message_opcode;   /* opcode of the open data message */
    bool     frame_fin;
    int      frame_opcode;
    uint8_t  mask[4];
    bool     frame_masked;     /* the payload needs unmasking (a key that is not all zeros) */
    uint64_t frame_left;       /* payload bytes of the current frame not yet read */
    uint64_t mask_pos;         /* payload bytes already unmasked in this frame */
    uint64_t max_message;      /* largest data message accepted (sum of fragments) */
    uint64_t message_len;      /* bytes of the open data message so far */
    int      close_code;       /* on FY_ERR: the code to close with */
    const char *err_reason;    /* on FY_ERR */
} fy_ws_reader_t;

void fy_ws_reader_init(fy_ws_reader_t *r, bool expect_masked, uint64_t max_message);

/*
 * Consume bytes from buf[0..len) and produce at most one event in *ev.
 * Returns the number of bytes consumed (0 with ev NONE when
 * more bytes are needed: the caller keeps the unconsumed tail and calls
 * again with more; 0 also with MESSAGE_END, which follows the last payload
 * byte as an event of its own), or FY_ERR with r->close_code and r->err_reason (RSV bits
 * set, unknown opcode, mask bit not as expected, control frame fragmented or
 * over 125 bytes, continuation without a message, a new data frame inside a
 * fragmented message, non-minimal length encoding, 64-bit length with the top
 * bit set, message over max_message (1009)).
 * Control frames are only reported once their whole payload is in buf (they
 * are at most 125 bytes, so the caller's buffer always holds one). Data
 * payload is reported as it arrives, unmasked in place (so buf is writable).
 * Text messages are reported like binary ones (the caller decides); UTF-8 is
 * not validated here.
 */
ssize_t fy_ws_read(fy_ws_reader_t *r, uint8_t *buf, size_t len, fy_ws_event_t *ev) FY_MUST_USE;

/*
 * Payload bytes of the current data frame a caller may take from the
 * socket itself (splice) instead of through fy_ws_read: frame_left inside
 * a data frame's payload that is unmasked or masked with the all-zero key,
 * else 0. fy_ws_reader_skip accounts n (<= that) of them as read; the
 * frame's end is then reported by the next fy_ws_read.
 */
uint64_t fy_ws_reader_raw_left(const fy_ws_reader_t *r);
void fy_ws_reader_skip(fy_ws_reader_t *r, uint64_t n);
/* The reader expects a frame header next. */
bool fy_ws_reader_at_header(const fy_ws_reader_t *r);

/*
 * A look at the frame header at p[0..n) without reading it (the caller
 * peeked): its length, or 0 if n does not hold all of it. *plen gets the
 * payload length, *zero_key whether the payload is unmasked or masked with
 * the all-zero key. Validation is fy_ws_read's, when the bytes are read.
 */
size_t fy_ws_peek_header(const uint8_t *p, size_t n, uint64_t *plen, bool *zero_key);

/*
 * Write a frame header for a payload of len bytes into out (>= 14 bytes).
 * mask: NULL for an unmasked (server) frame, else the 4-byte key (client).
 * Uses the minimal length encoding. Returns the header length (2..14).
 */
size_t fy_ws_header_size(uint64_t len, bool masked);
size_t fy_ws_write_header(uint8_t *out, bool fin, int opcode, uint64_t len, const uint8_t *mask);

/* A fresh masking key for a client frame (§5.3: unpredictable), from a
 * pool of random bytes refilled 1 KiB at a time: one getrandom() per 256
 * frames instead of one per frame. */
void fy_ws_new_mask(uint8_t mask[4]);

/* XOR data with mask, starting at mask position offset (so a payload can
 * be masked in pieces). Masks in place. */
void fy_ws_mask(uint8_t *data, size_t len, const uint8_t mask[4], uint64_t offset);

/* Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 §4.2.2):
 * base64(SHA-1(key + GUID)). out receives 28 chars plus NUL. Returns FY_OK,
 * or FY_ERR if the key is not 24 base64 chars decoding to 16 bytes. */
int fy_ws_accept_key(const char *key, size_t key_len, char out[29]) FY_MUST_USE;

/* A fresh random Sec-WebSocket-Key (24 chars + NUL), for clients. */
void fy_ws_make_key(char out[25]);

#endif
