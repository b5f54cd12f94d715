/*
 * mux.h: ferry's stream multiplexing codec (docs/PROTOCOL.md), sans-I/O.
 * A mux frame is a 10-byte header, type u8, flags u8, stream u32, length u32
 * (network byte order), then length bytes of payload. WebSocket binary
 * messages carry one or more whole frames; a frame never spans messages.
 * The reader is resumable over a byte stream; control payloads are buffered
 * inside the reader (bounded), DATA payload is reported as it arrives.
 */
#ifndef FY_MUX_H
#define FY_MUX_H

#include "fy.h"

#define FY_MUX_HDR 10
#define FY_MUX_MAX_CONTROL 8192          /* largest non-DATA payload */
#define FY_MUX_MAX_DATA   (1u << 20)     /* largest DATA payload in one frame */
#define FY_MUX_STREAM_WINDOW (256u * 1024) /* initial per-stream credit, unless both sides said `window` */
#define FY_MUX_STREAM_WINDOW_WIDE (1024u * 1024) /* what ferry grants once they did (PROTOCOL.md §4) */
#define FY_MUX_CONN_WINDOW  (4u * 1024 * 1024) /* initial per-connection credit */
#define FY_MUX_MAX_WINDOW   0x7fffffffu

enum fy_mux_type {
    FY_MUX_HELLO = 1,  /* agent -> relay, stream 0: key=value lines (session, ...) */
    FY_MUX_READY,      /* relay -> agent, stream 0: key=value lines (url, ...) */
    FY_MUX_OPEN,       /* relay -> agent: a new stream; payload key=value (client=ip:port) */
    FY_MUX_DATA,       /* stream bytes */
    FY_MUX_WINDOW,     /* u32 credit increment; stream 0 = connection window */
    FY_MUX_FIN,        /* no more DATA from the sender on this stream (half close) */
    FY_MUX_RST,        /* abort a stream: u32 code, then a UTF-8 message */
    FY_MUX_PING,       /* stream 0: 8 opaque bytes */
    FY_MUX_PONG,       /* stream 0: the PING's 8 bytes echoed */
    FY_MUX_GOAWAY,     /* stream 0: u32 code, message; open a new connection and move */
    FY_MUX_TYPE_MAX = FY_MUX_GOAWAY,
};

/* DATA flags. */
#define FY_MUX_F_HEAD 0x01   /* relay -> agent: this frame starts with a whole request head */

/* RST and GOAWAY codes. */
enum fy_mux_code {
    FY_MUX_RST_CANCEL = 1,       /* the sender gave the stream up (client went away) */
    FY_MUX_RST_REFUSED = 2,      /* agent: the local service refused or is unreachable */
    FY_MUX_RST_TIMEOUT = 3,      /* idle or upstream timeout */
    FY_MUX_RST_PROTOCOL = 4,     /* the peer broke the protocol on this stream */
    FY_MUX_RST_FLOW = 5,         /* the peer sent more than its credit */
    FY_MUX_RST_INTERNAL = 6,
    FY_MUX_RST_DONE = 7,         /* relay: the end-user connection moved on; close quietly */
    FY_MUX_RST_IDLE = 8,         /* relay: as DONE, and the service connection sits between messages
                                    with nothing owed either way: the agent may keep it for another stream */
    FY_MUX_GOAWAY_DRAIN = 1,     /* relay shutting down or reloading: reconnect */
};

typedef struct fy_mux_hdr_s {
    uint8_t  type;
    uint8_t  flags;
    uint32_t stream;
    uint32_t length;
} fy_mux_hdr_t;

enum fy_mux_event_type {
    FY_MUX_EV_NONE = 0,
    FY_MUX_EV_FRAME,  /* a complete non-DATA frame: hdr, payload (len = hdr.length) */
    FY_MUX_EV_DATA,   /* DATA bytes of hdr.stream: payload slice; end = last slice of the frame */
};

typedef struct fy_mux_event_s {
    enum fy_mux_event_type type;
    fy_mux_hdr_t   hdr;
    const uint8_t *payload;   /* borrowed, valid until the next call: the caller's buffer, or for a
                                 FRAME whose payload came in pieces, the reader's */
    size_t         len;
    bool           end;
} fy_mux_event_t;

typedef struct fy_mux_reader_s {
    int          state;                 /* private */
    uint8_t      hbuf[FY_MUX_HDR];
    size_t       hgot;
    fy_mux_hdr_t hdr;
    uint32_t     left;                  /* payload bytes of the current frame still to read */
    uint8_t     *ctl;                   /* heap: a non-DATA payload split across calls (else NULL) */
    size_t       ctl_got;
    const char  *err_reason;            /* on FY_ERR */
} fy_mux_reader_t;

void fy_mux_reader_init(fy_mux_reader_t *r);
/* Release what the reader holds (a control payload that came in pieces);
 * it may be initialised again afterwards. */
void fy_mux_reader_free(fy_mux_reader_t *r);

/*
 * Consume bytes and produce at most one event. Returns bytes consumed (0
 * only when buf is empty), or FY_ERR with r->err_reason: unknown type, a
 * control frame over FY_MUX_MAX_CONTROL, DATA over FY_MUX_MAX_DATA, a
 * stream-0-only frame on another stream or a stream frame on stream 0,
 * WINDOW/PING/PONG/RST/GOAWAY payloads of the wrong size (WINDOW 4, PING and
 * PONG 8, RST and GOAWAY >= 4). A zero-length DATA frame yields one DATA event
 * with len 0 and end set.
 */
ssize_t fy_mux_read(fy_mux_reader_t *r, const uint8_t *buf, size_t len, fy_mux_event_t *ev) FY_MUST_USE;

/*
 * Inside a DATA payload: how many of its bytes are still to come (*hdr
 * gets the frame's header), else 0. fy_mux_reader_skip takes n (<= that)
 * of them as read, for bytes the caller moved itself (splice).
 */
uint32_t fy_mux_reader_data_left(const fy_mux_reader_t *r, fy_mux_hdr_t *hdr);
void fy_mux_reader_skip(fy_mux_reader_t *r, uint32_t n);

/* True when the reader sits between frames (a WebSocket message may end). */
bool fy_mux_reader_at_boundary(const fy_mux_reader_t *r);

/* Encode a frame header into out[FY_MUX_HDR]. */
void fy_mux_put_hdr(uint8_t *out, uint8_t type, uint8_t flags, uint32_t stream, uint32_t length);

/* Big-endian helpers for payload fields. */
static inline uint32_t fy_mux_get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline void fy_mux_put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}

/*
 * key=value payloads (HELLO, READY, OPEN): lines "key=value\n", keys
 * [a-z0-9_], values without CR, LF or NUL. fy_mux_kv_get finds key and
 * returns its value slice (borrowed) or NULL. fy_mux_kv_put appends one pair
 * to out[*len..cap) and returns FY_OK, or FY_ERR if it does not fit or the
 * value has a forbidden byte.
 */
const char *fy_mux_kv_get(const uint8_t *p, size_t len, const char *key, size_t *vlen);
int fy_mux_kv_put(uint8_t *out, size_t *len, size_t cap, const char *key, const char *val, size_t vlen) FY_MUST_USE;
bool fy_mux_kv_valid(const uint8_t *p, size_t len);

/*
 * Credit flow control of one direction pair (a stream, or the connection).
 * send: what we may still send; recv: what the peer may still send us;
 * unacked: bytes we consumed and have not yet returned as WINDOW.
 */
typedef struct fy_mux_credit_s {
    int64_t  send;
    int64_t  recv;
    uint32_t initial;   /* the receive window we grant */
    uint32_t unacked;
} fy_mux_credit_t;

void fy_mux_credit_init(fy_mux_credit_t *c, uint32_t initial);
/* The same when the two directions start apart: send what the peer grants,
 * recv what we grant. */
void fy_mux_credit_init_pair(fy_mux_credit_t *c, uint32_t send, uint32_t recv);
/* A `window=` value of HELLO or READY: FY_OK with *w, or FY_ERR if absent
 * or not a number in [FY_MUX_STREAM_WINDOW, 16 MiB]. */
int fy_mux_kv_window(const uint8_t *p, size_t len, uint32_t *w) FY_MUST_USE;
/* The peer sent n bytes: FY_ERR if n exceeds what we granted. */
int fy_mux_credit_received(fy_mux_credit_t *c, uint32_t n) FY_MUST_USE;
/* We consumed n received bytes (wrote them on). Returns the increment to
 * announce now in a WINDOW frame, or 0 to wait (batched: announced once half
 * the window is pending). */
uint32_t fy_mux_credit_consumed(fy_mux_credit_t *c, uint32_t n);
/* The peer granted n more: FY_ERR if the window would pass 2^31-1 or n == 0. */
int fy_mux_credit_granted(fy_mux_credit_t *c, uint32_t n) FY_MUST_USE;
/* We sent n bytes (n <= c->send). */
static inline void fy_mux_credit_sent(fy_mux_credit_t *c, uint32_t n) { c->send -= n; }

#endif
