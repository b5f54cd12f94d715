/*
 * tun.h: one tunnel connection: a WebSocket (after its HTTP upgrade) that
 * carries mux frames, shared by the relay (server side) and the agent
 * (client side, which masks what it sends).
 *
 * Output is a queue of chunks, each one WebSocket binary message: frames of
 * many streams queued in one loop iteration leave together in one message
 * and one writev. DATA is written straight into the chunk (a socket read can
 * land there with no copy). Connection-level credit lives here; stream-level
 * credit lives with the stream owner and is passed in.
 *
 * Memory is bounded: queued DATA never exceeds the credit the peer granted,
 * and the read buffer holds at most one socket read plus a partial frame.
 *
 * A bulk DATA payload may bypass the receiver's memory (splice, pipe.h):
 * a receiver that finds its read buffer empty in the middle of a DATA
 * payload asks the stream's owner for a pipe (splice_pipe), moves the
 * payload there, then tells it (on_spliced). That needs a payload that is
 * not masked: the relay's, or the agent's, masked with the all-zero key
 * unless told otherwise (fy_tun_random_masks; docs/PROTOCOL.md §2).
 * Splicing only receives: a message spliced out of a pipe on loopback cost
 * the sender more CPU than a copy and the receiver more to read (measured).
 */
#ifndef FY_TUN_H
#define FY_TUN_H

#include "fy.h"
#include "buf/buf.h"
#include "ev/ev.h"
#include "mux/mux.h"
#include "pipe/pipe.h"
#include "ws/ws.h"

/* Payload bytes of one output chunk (one WebSocket message). */
#define FY_TUN_CHUNK (128u * 1024)
/* Largest DATA payload one reservation gives. */
#define FY_TUN_MAX_DATA (FY_TUN_CHUNK - FY_MUX_HDR)

typedef struct fy_tun_s fy_tun_t;
typedef struct fy_tun_chunk_s fy_tun_chunk_t;

typedef struct fy_tun_ops_s {
    /* A complete frame other than DATA, PING, and stream-0 WINDOW (handled
     * here). Stream WINDOW frames come here for the stream owner. */
    void (*on_frame)(fy_tun_t *t, const fy_mux_event_t *ev);
    /* DATA bytes of a stream, borrowed: take them now. The connection
     * credit is already charged; the owner charges its stream credit. */
    void (*on_data)(fy_tun_t *t, uint32_t stream, const uint8_t *p, size_t n);
    /* Connection credit grew: streams waiting on it may send again. */
    void (*on_credit)(fy_tun_t *t);
    /* The connection is gone (peer closed, error, protocol violation). Called
     * once, from the loop; the owner then calls fy_tun_free. */
    void (*on_close)(fy_tun_t *t, const char *why);
    /* Optional (NULL: never). The read buffer is empty inside a DATA
     * payload of stream: the pipe to move up to *max of its bytes into
     * (the owner lowers *max to what it takes), or NULL to read them as
     * usual. flags: the frame's on its first slice, else 0. */
    fy_pipe_t *(*splice_pipe)(fy_tun_t *t, uint32_t stream, uint8_t flags, size_t *max);
    /* n DATA bytes of stream were moved into that pipe (connection credit
     * charged, as for on_data). */
    void (*on_spliced)(fy_tun_t *t, uint32_t stream, size_t n);
} fy_tun_ops_t;

struct fy_tun_s {
    fy_io_t             io;
    fy_ev_t            *ev;
    const fy_tun_ops_t *ops;
    void               *data;        /* the owner's */
    bool                client;      /* agent side: mask output, expect unmasked input */
    bool                closed;
    const char         *why;         /* static reason once closed */
    fy_buf_t            in;
    fy_ws_reader_t      wsr;
    fy_mux_reader_t     muxr;
    fy_tun_chunk_t     *head;        /* sealed chunks first, the open one last */
    fy_tun_chunk_t     *tail;
    size_t              head_off;    /* bytes of head already written */
    size_t              queued;      /* bytes queued for the socket */
    fy_task_t           flush_task;
    fy_task_t           close_task;
    fy_mux_credit_t     credit;      /* connection-level */
    uint32_t            stream_send; /* initial credit of a new stream: what the peer grants ... */
    uint32_t            stream_recv; /* ... and what we grant (HELLO/READY `window`, else 256 KiB) */
    uint64_t            last_rx;     /* ms: when the peer last sent anything */
    uint8_t             data_flags;  /* during on_data: the frame's flags on its first slice, else 0 */
    bool                in_data;     /* a DATA frame's slices are being delivered */
    bool                splicing;    /* the last DATA payload was spliced in: read headers in small bites */
};

/*
 * Start a tunnel on an upgraded socket (takes fd; initial: bytes already
 * read after the HTTP head, copied). Returns FY_OK or FY_ERR (fd closed).
 */
int fy_tun_start(fy_tun_t *t, fy_ev_t *ev, int fd, bool client, const fy_tun_ops_t *ops,
                 void *data, const uint8_t *initial, size_t ninitial) FY_MUST_USE;

/* Close now (idempotent): the fd is closed and on_close runs from the loop. */
void fy_tun_close(fy_tun_t *t, const char *why);

/* Release the queue and buffers of a closed tunnel (not the struct). */
void fy_tun_free(fy_tun_t *t);

/* Queue a non-DATA frame (copies payload). FY_ERR if closed or out of memory. */
int fy_tun_send(fy_tun_t *t, uint8_t type, uint32_t stream, const void *p, size_t n);
int fy_tun_send_u32(fy_tun_t *t, uint8_t type, uint32_t stream, uint32_t v, const char *msg);

/* How many DATA bytes a stream with credit sc may send now. */
size_t fy_tun_data_room(const fy_tun_t *t, const fy_mux_credit_t *sc);

/*
 * Reserve space for a DATA frame of up to want bytes (want <= FY_TUN_MAX_DATA)
 * and return where its payload goes; *room gets the space (<= want). Finish
 * with fy_tun_data_commit (n may be 0 to cancel). NULL if out of memory.
 */
uint8_t *fy_tun_data_reserve(fy_tun_t *t, size_t want, size_t *room);
void fy_tun_data_commit(fy_tun_t *t, uint32_t stream, fy_mux_credit_t *sc, size_t n);
/* The same with DATA flags (FY_MUX_F_*). */
void fy_tun_data_commit_flags(fy_tun_t *t, uint32_t stream, fy_mux_credit_t *sc, size_t n, uint8_t flags);

/*
 * Client side: mask with fresh random keys (RFC 6455 §5.3) instead of the
 * all-zero key (process-wide; `ferry --random-mask`).
 */
void fy_tun_random_masks(bool on);

/* Copy DATA out of p (n <= fy_tun_data_room). */
int fy_tun_send_data(fy_tun_t *t, uint32_t stream, fy_mux_credit_t *sc, const void *p, size_t n);

/*
 * The owner wrote n bytes of stream's received DATA on: return the credit
 * (stream and connection), batched into WINDOW frames.
 */
void fy_tun_consumed(fy_tun_t *t, uint32_t stream, fy_mux_credit_t *sc, size_t n);

#endif
