/*
 * tun.c: a tunnel connection, mux frames over a WebSocket (see tun.h).
 */
#include "tun/tun.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>


#define TUN_READ_SIZE  (64u * 1024)
#define TUN_IN_MAX     (TUN_READ_SIZE + FY_WS_MAX_HEADER + FY_WS_MAX_CONTROL + 1024)
#define TUN_READS_PER_WAKEUP 4
#define TUN_FREE_CHUNKS 16     /* chunks kept for reuse per process */
#define TUN_MAX_MESSAGE (16u * 1024 * 1024)
#define TUN_IOV 64
/* Fewer payload bytes than this left in the socket are read, not spliced;
 * a DATA frame smaller than it read whole ends the small bites. */
#define TUN_SPLICE_MIN 4096

struct fy_tun_chunk_s {
    fy_tun_chunk_t *next;
    uint32_t        start;    /* where the WebSocket header begins, once sealed */
    uint32_t        len;      /* payload bytes */
    bool            sealed;
    uint8_t         data[FY_WS_MAX_HEADER + FY_TUN_CHUNK];
};

/* Client side: random masking keys, or the all-zero key (tun.h). */
static bool random_masks;

void fy_tun_random_masks(bool on)
{
    random_masks = on;
}

/* A small process-wide free list: tunnel chunks are recycled, not freed. */
static fy_tun_chunk_t *free_chunks;
static unsigned nfree_chunks;

static fy_tun_chunk_t *chunk_get(void)
{
    fy_tun_chunk_t *c = free_chunks;
    if (c != NULL) {
        free_chunks = c->next;
        nfree_chunks--;
    } else if ((c = malloc(sizeof(*c))) == NULL) {
        return NULL;
    }
    c->next = NULL;
    c->start = 0;
    c->len = 0;
    c->sealed = false;
    return c;
}

static void chunk_put(fy_tun_chunk_t *c)
{
    if (nfree_chunks >= TUN_FREE_CHUNKS) {
        free(c);
        return;
    }
    c->next = free_chunks;
    free_chunks = c;
    nfree_chunks++;
}

static void on_io(fy_ev_t *ev, fy_io_t *io, uint32_t events);
static void process_input(fy_tun_t *t);
static void flush_task(fy_ev_t *ev, fy_task_t *task);
static void close_task(fy_ev_t *ev, fy_task_t *task);

int fy_tun_start(fy_tun_t *t, fy_ev_t *ev, int fd, bool client, const fy_tun_ops_t *ops,
                 void *data, const uint8_t *initial, size_t ninitial)
{
    memset(t, 0, sizeof(*t));
    t->ev = ev;
    t->ops = ops;
    t->data = data;
    t->client = client;
    t->io.fd = fd;
    t->io.cb = on_io;
    t->io.data = t;
    t->flush_task.cb = flush_task;
    t->flush_task.data = t;
    t->close_task.cb = close_task;
    t->close_task.data = t;
    t->last_rx = fy_ev_now(ev);
    fy_ws_reader_init(&t->wsr, !client, TUN_MAX_MESSAGE);
    fy_mux_reader_init(&t->muxr);
    fy_mux_credit_init(&t->credit, FY_MUX_CONN_WINDOW);
    t->stream_send = t->stream_recv = FY_MUX_STREAM_WINDOW;
    if (fy_buf_append(&t->in, initial, ninitial, TUN_IN_MAX) != FY_OK
        || fy_io_set(ev, &t->io, EPOLLIN) != FY_OK) {
        fy_buf_free(&t->in);
        close(fd);
        t->closed = true;
        return FY_ERR;
    }
    if (ninitial > 0)
        process_input(t);
    return FY_OK;
}

void fy_tun_close(fy_tun_t *t, const char *why)
{
    if (t->closed)
        return;
    t->closed = true;
    t->why = why;
    fy_io_del(t->ev, &t->io);
    close(t->io.fd);
    t->io.fd = -1;
    fy_task_queue(t->ev, &t->close_task);
}

static void close_task(fy_ev_t *ev, fy_task_t *task)
{
    fy_tun_t *t = task->data;
    t->ops->on_close(t, t->why);
}

void fy_tun_free(fy_tun_t *t)
{
    fy_task_cancel(t->ev, &t->flush_task);
    fy_task_cancel(t->ev, &t->close_task);
    while (t->head != NULL) {
        fy_tun_chunk_t *c = t->head;
        t->head = c->next;
        chunk_put(c);
    }
    t->tail = NULL;
    t->queued = 0;
    fy_buf_free(&t->in);
    fy_mux_reader_free(&t->muxr);
}

/* --- output ------------------------------------------------------------ */

/*
 * Seal the open chunk: write its WebSocket header just before the payload
 * and, on the client side, mask the payload (RFC 6455 §5.3). The all-zero
 * key leaves the payload as it is: no pass over it here, and the relay can
 * splice it (PROTOCOL.md §2 says why that is safe for an agent).
 */
static void seal(fy_tun_t *t, fy_tun_chunk_t *c)
{
    uint8_t hdr[FY_WS_MAX_HEADER], mask[4] = {0, 0, 0, 0};
    size_t hl;

    if (t->client) {
        if (random_masks)
            fy_ws_new_mask(mask);
        hl = fy_ws_write_header(hdr, true, FY_WS_BINARY, c->len, mask);
        if (random_masks)
            fy_ws_mask(c->data + FY_WS_MAX_HEADER, c->len, mask, 0);
    } else {
        hl = fy_ws_write_header(hdr, true, FY_WS_BINARY, c->len, NULL);
    }
    c->start = (uint32_t)(FY_WS_MAX_HEADER - hl);
    memcpy(c->data + c->start, hdr, hl);
    c->sealed = true;
    t->queued += hl;
}

/* Room for n more payload bytes in an open chunk at the tail. */
static fy_tun_chunk_t *tail_with_room(fy_tun_t *t, size_t n)
{
    fy_tun_chunk_t *c = t->tail;

    if (c != NULL && !c->sealed && FY_TUN_CHUNK - c->len >= n)
        return c;
    if (c != NULL && !c->sealed)
        seal(t, c);
    if ((c = chunk_get()) == NULL)
        return NULL;
    if (t->tail != NULL)
        t->tail->next = c;
    else
        t->head = c;
    t->tail = c;
    fy_task_queue(t->ev, &t->flush_task);
    return c;
}

int fy_tun_send(fy_tun_t *t, uint8_t type, uint32_t stream, const void *p, size_t n)
{
    fy_tun_chunk_t *c;
    uint8_t *w;

    if (t->closed)
        return FY_ERR;
    fy_assert(n <= FY_MUX_MAX_CONTROL);
    if ((c = tail_with_room(t, FY_MUX_HDR + n)) == NULL)
        return FY_ERR;
    w = c->data + FY_WS_MAX_HEADER + c->len;
    fy_mux_put_hdr(w, type, 0, stream, (uint32_t)n);
    if (n > 0)
        memcpy(w + FY_MUX_HDR, p, n);
    c->len += (uint32_t)(FY_MUX_HDR + n);
    t->queued += FY_MUX_HDR + n;
    fy_task_queue(t->ev, &t->flush_task);
    return FY_OK;
}

int fy_tun_send_u32(fy_tun_t *t, uint8_t type, uint32_t stream, uint32_t v, const char *msg)
{
    uint8_t p[4 + 256];
    size_t ml = msg ? FY_MIN(strlen(msg), 256) : 0;
    fy_mux_put_u32(p, v);
    if (ml > 0)
        memcpy(p + 4, msg, ml);
    return fy_tun_send(t, type, stream, p, 4 + ml);
}

size_t fy_tun_data_room(const fy_tun_t *t, const fy_mux_credit_t *sc)
{
    int64_t r = FY_MIN(sc->send, t->credit.send);
    if (t->closed || r <= 0)
        return 0;
    return (size_t)FY_MIN(r, (int64_t)FY_TUN_MAX_DATA);
}

uint8_t *fy_tun_data_reserve(fy_tun_t *t, size_t want, size_t *room)
{
    fy_tun_chunk_t *c;
    size_t need;

    fy_assert(want > 0 && want <= FY_TUN_MAX_DATA);
    /* Start a new chunk rather than send a sliver: a small tail space is
     * used only when it holds the whole of what is wanted. */
    need = FY_MUX_HDR + FY_MIN(want, 4096u);
    if ((c = tail_with_room(t, need)) == NULL)
        return NULL;
    *room = FY_MIN(want, FY_TUN_CHUNK - c->len - FY_MUX_HDR);
    return c->data + FY_WS_MAX_HEADER + c->len + FY_MUX_HDR;
}

void fy_tun_data_commit(fy_tun_t *t, uint32_t stream, fy_mux_credit_t *sc, size_t n)
{
    fy_tun_data_commit_flags(t, stream, sc, n, 0);
}

void fy_tun_data_commit_flags(fy_tun_t *t, uint32_t stream, fy_mux_credit_t *sc, size_t n, uint8_t flags)
{
    fy_tun_chunk_t *c = t->tail;

    if (n == 0)
        return;
    fy_assert(c != NULL && !c->sealed && (int64_t)n <= sc->send && (int64_t)n <= t->credit.send);
    fy_mux_put_hdr(c->data + FY_WS_MAX_HEADER + c->len, FY_MUX_DATA, flags, stream, (uint32_t)n);
    c->len += (uint32_t)(FY_MUX_HDR + n);
    t->queued += FY_MUX_HDR + n;
    fy_mux_credit_sent(sc, (uint32_t)n);
    fy_mux_credit_sent(&t->credit, (uint32_t)n);
    fy_task_queue(t->ev, &t->flush_task);
}

int fy_tun_send_data(fy_tun_t *t, uint32_t stream, fy_mux_credit_t *sc, const void *p, size_t n)
{
    const uint8_t *s = p;
    while (n > 0) {
        size_t room;
        uint8_t *w = fy_tun_data_reserve(t, FY_MIN(n, FY_TUN_MAX_DATA), &room);
        if (w == NULL)
            return FY_ERR;
        memcpy(w, s, room);
        fy_tun_data_commit(t, stream, sc, room);
        s += room;
        n -= room;
    }
    return FY_OK;
}

void fy_tun_consumed(fy_tun_t *t, uint32_t stream, fy_mux_credit_t *sc, size_t n)
{
    uint32_t inc;

    if (n == 0 || t->closed)
        return;
    if (sc != NULL && (inc = fy_mux_credit_consumed(sc, (uint32_t)n)) > 0)
        (void)fy_tun_send_u32(t, FY_MUX_WINDOW, stream, inc, NULL);
    if ((inc = fy_mux_credit_consumed(&t->credit, (uint32_t)n)) > 0)
        (void)fy_tun_send_u32(t, FY_MUX_WINDOW, 0, inc, NULL);
}

/* Write queued chunks; keep EPOLLOUT only while the socket pushes back. */
static void flush(fy_tun_t *t)
{
    struct iovec iov[TUN_IOV];
    fy_tun_chunk_t *c;
    ssize_t n;
    int cnt;

    if (t->closed)
        return;
    if (t->tail != NULL && !t->tail->sealed && t->tail->len > 0)
        seal(t, t->tail);
    while (t->head != NULL && t->head->sealed) {
        size_t off = t->head_off;
        cnt = 0;
        for (c = t->head; c != NULL && c->sealed && cnt < TUN_IOV; c = c->next) {
            iov[cnt].iov_base = c->data + c->start + off;
            iov[cnt].iov_len = FY_WS_MAX_HEADER + c->len - c->start - off;
            off = 0;
            cnt++;
        }
        n = writev(t->io.fd, iov, cnt);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                if (fy_io_set(t->ev, &t->io, EPOLLIN | EPOLLOUT) != FY_OK)
                    fy_tun_close(t, "epoll failed");
                return;
            }
            fy_tun_close(t, "write failed");
            return;
        }
        t->queued -= (size_t)n;
        while (n > 0) {
            size_t left;
            c = t->head;
            left = FY_WS_MAX_HEADER + c->len - c->start - t->head_off;
            if ((size_t)n < left) {
                t->head_off += (size_t)n;
                break;
            }
            n -= (ssize_t)left;
            t->head_off = 0;
            t->head = c->next;
            if (t->tail == c)
                t->tail = NULL;
            chunk_put(c);
        }
    }
    if (t->io.events & EPOLLOUT)
        if (fy_io_set(t->ev, &t->io, EPOLLIN) != FY_OK)
            fy_tun_close(t, "epoll failed");
}

static void flush_task(fy_ev_t *ev, fy_task_t *task)
{
    flush(task->data);
}

/* --- input ------------------------------------------------------------- */

static void handle_mux(fy_tun_t *t, const fy_mux_event_t *e)
{
    if (e->type == FY_MUX_EV_DATA) {
        /* Splicing follows the sender: a big DATA frame it spliced (its
         * payload not masked) starts it, a small frame read whole ends it. */
        if (!t->in_data)
            t->splicing = e->hdr.length >= TUN_SPLICE_MIN && fy_ws_reader_raw_left(&t->wsr) > 0;
        else if (e->end && e->hdr.length < TUN_SPLICE_MIN)
            t->splicing = false;
        t->data_flags = t->in_data ? 0 : e->hdr.flags;
        t->in_data = !e->end;
        if (e->len == 0)
            return;
        if (fy_mux_credit_received(&t->credit, (uint32_t)e->len) != FY_OK) {
            fy_tun_close(t, "peer exceeded the connection window");
            return;
        }
        t->ops->on_data(t, e->hdr.stream, e->payload, e->len);
        return;
    }
    switch (e->hdr.type) {
    case FY_MUX_PING:
        (void)fy_tun_send(t, FY_MUX_PONG, 0, e->payload, e->len);
        return;
    case FY_MUX_WINDOW:
        if (e->hdr.stream == 0) {
            if (fy_mux_credit_granted(&t->credit, fy_mux_get_u32(e->payload)) != FY_OK) {
                fy_tun_close(t, "bad connection window update");
                return;
            }
            t->ops->on_credit(t);
            return;
        }
        break;
    default:
        break;
    }
    t->ops->on_frame(t, e);
}

/* Feed a WebSocket data slice to the mux reader. */
static void feed_mux(fy_tun_t *t, const uint8_t *p, size_t n)
{
    while (n > 0 && !t->closed) {
        fy_mux_event_t e;
        ssize_t used = fy_mux_read(&t->muxr, p, n, &e);
        if (used < 0) {
            fy_tun_close(t, t->muxr.err_reason ? t->muxr.err_reason : "bad mux frame");
            return;
        }
        p += used;
        n -= (size_t)used;
        if (e.type != FY_MUX_EV_NONE)
            handle_mux(t, &e);
    }
}

static void handle_ws_control(fy_tun_t *t, const fy_ws_event_t *e)
{
    uint8_t hdr[FY_WS_MAX_HEADER];

    switch (e->opcode) {
    case FY_WS_PING:
    case FY_WS_CLOSE: {
        /* Answer a WebSocket ping or close directly, ahead of any queue:
         * these are rare (our heartbeat is the mux PING). Best effort. */
        uint8_t frame[FY_WS_MAX_HEADER + FY_WS_MAX_CONTROL], mask[4];
        size_t hl;
        int op = e->opcode == FY_WS_PING ? FY_WS_PONG : FY_WS_CLOSE;
        if (t->client)
            fy_ws_new_mask(mask);
        hl = fy_ws_write_header(hdr, true, op, e->len, t->client ? mask : NULL);
        memcpy(frame, hdr, hl);
        memcpy(frame + hl, e->data, e->len);
        if (t->client)
            fy_ws_mask(frame + hl, e->len, mask, 0);
        if (t->queued == 0)
            (void)!write(t->io.fd, frame, hl + e->len);
        if (op == FY_WS_CLOSE)
            fy_tun_close(t, "peer closed the websocket");
        return;
    }
    default:
        return;
    }
}

static void process_input(fy_tun_t *t)
{
    /* Also with nothing buffered: a message whose payload was spliced
     * still reports its end. */
    while (!t->closed) {
        fy_ws_event_t e;
        ssize_t used = fy_ws_read(&t->wsr, fy_buf_data(&t->in), fy_buf_len(&t->in), &e);
        if (used < 0) {
            fy_tun_close(t, t->wsr.err_reason ? t->wsr.err_reason : "bad websocket frame");
            return;
        }
        if (used == 0 && e.type == FY_WS_EV_NONE)
            break;
        switch (e.type) {
        case FY_WS_EV_DATA:
            if (e.opcode != FY_WS_BINARY) {
                fy_tun_close(t, "text message on a tunnel connection");
                return;
            }
            feed_mux(t, e.data, e.len);
            break;
        case FY_WS_EV_MESSAGE_END:
            if (!fy_mux_reader_at_boundary(&t->muxr)) {
                fy_tun_close(t, "mux frame split across websocket messages");
                return;
            }
            break;
        case FY_WS_EV_CONTROL:
            handle_ws_control(t, &e);
            break;
        default:
            break;
        }
        if (!t->closed)
            fy_buf_consume(&t->in, (size_t)used);
    }
}

/*
 * The read buffer is empty inside a DATA payload: move what of it the
 * stream's owner takes straight into its pipe. Returns the bytes moved,
 * 0 when it takes none (read *want bytes), -1 when the socket has nothing
 * now or the tunnel closed. An owner that takes none at the payload's start
 * is usually reading a response head: a small bite shows it the head, and
 * the body behind it can still be spliced.
 */
static ssize_t splice_in(fy_tun_t *t, size_t *want)
{
    fy_mux_hdr_t hdr;
    uint64_t left = fy_ws_reader_raw_left(&t->wsr);
    uint32_t data_left;
    size_t max, had;
    fy_pipe_t *p;
    ssize_t n;

    if (left < TUN_SPLICE_MIN || t->ops->splice_pipe == NULL)
        return 0;
    data_left = fy_mux_reader_data_left(&t->muxr, &hdr);
    if ((left = FY_MIN(left, data_left)) < TUN_SPLICE_MIN)
        return 0;
    max = (size_t)left;
    if ((p = t->ops->splice_pipe(t, hdr.stream, t->in_data ? 0 : hdr.flags, &max)) == NULL || max == 0) {
        if (data_left == hdr.length)
            *want = TUN_SPLICE_MIN;
        else
            t->splicing = false;
        return 0;
    }
    had = p->len;
    n = fy_pipe_fill(p, t->io.fd, max);
    if (n < 0 && errno == EAGAIN && had > 0) {
        /* A pipe that holds bytes may be out of slots rather than the
         * socket out of bytes: read instead, the read tells. */
        t->splicing = false;
        return 0;
    }
    if (n <= 0) {
        if (n == 0)
            fy_tun_close(t, "connection closed by peer");
        else if (errno != EAGAIN)
            fy_tun_close(t, "read failed");
        return -1;
    }
    if (fy_mux_credit_received(&t->credit, (uint32_t)n) != FY_OK) {
        fy_tun_close(t, "peer exceeded the connection window");
        return -1;
    }
    fy_ws_reader_skip(&t->wsr, (uint64_t)n);
    fy_mux_reader_skip(&t->muxr, (uint32_t)n);
    t->in_data = (uint64_t)n < left;
    t->splicing = true;
    t->last_rx = fy_ev_now(t->ev);
    t->ops->on_spliced(t, hdr.stream, (size_t)n);
    process_input(t);
    return n;
}

/*
 * The offset just past the DATA header whose payload can be spliced, when
 * the first or the second frame at p[off..n) is such a DATA frame, with at
 * least TUN_SPLICE_MIN of its payload inside this WebSocket frame (which
 * ends at limit); else 0 and, in *second, how many bytes would show the
 * second frame's header.
 */
static size_t spliceable_data(const uint8_t *p, size_t n, size_t off, uint64_t limit, size_t *second)
{
    uint32_t len;
    int i;

    *second = 0;
    for (i = 0; i < 2 && off + FY_MUX_HDR <= n; i++) {
        len = fy_mux_get_u32(p + off + 6);
        if (p[off] == FY_MUX_DATA && len >= TUN_SPLICE_MIN)
            return off + FY_MUX_HDR + TUN_SPLICE_MIN <= limit ? off + FY_MUX_HDR : 0;
        off += FY_MUX_HDR + (size_t)len;
    }
    if (i == 1 && off + FY_MUX_HDR + TUN_SPLICE_MIN <= limit)
        *second = off + FY_MUX_HDR;
    return 0;
}

/*
 * While payloads are spliced in: at a frame boundary, peek at the headers
 * ahead; when a DATA frame that can be spliced comes next, or right after
 * one small frame (the tail of another stream's body, a WINDOW: a sender
 * batches the frames of several streams into one message), read only up
 * to its payload, so that the whole payload can follow by splice. At the
 * start of a message the WebSocket header comes first; inside one, the
 * message's payload must be unmasked. Returns how much to read.
 */
static size_t header_bite(fy_tun_t *t)
{
    uint8_t p[FY_WS_MAX_HEADER + 2 * FY_MUX_HDR + TUN_SPLICE_MIN];
    size_t off = 0, at, second;
    uint64_t limit, plen;
    bool zero_key;
    ssize_t n;

    if (!fy_mux_reader_at_boundary(&t->muxr))
        return TUN_READ_SIZE;
    if (fy_ws_reader_at_header(&t->wsr)) {
        n = recv(t->io.fd, p, FY_WS_MAX_HEADER + FY_MUX_HDR, MSG_PEEK);
        if (n > 0 && (off = fy_ws_peek_header(p, (size_t)n, &plen, &zero_key)) > 0 && zero_key)
            limit = off + plen;
        else
            limit = 0;
    } else {
        limit = fy_ws_reader_raw_left(&t->wsr);
        n = limit >= FY_MUX_HDR + TUN_SPLICE_MIN ? recv(t->io.fd, p, FY_MUX_HDR, MSG_PEEK) : 0;
    }
    if (n > 0 && limit > 0) {
        if ((at = spliceable_data(p, (size_t)n, off, limit, &second)) > 0)
            return at;
        if (second > 0 && second <= sizeof(p)
            && (n = recv(t->io.fd, p, second, MSG_PEEK)) == (ssize_t)second
            && (at = spliceable_data(p, (size_t)n, off, limit, &second)) > 0)
            return at;
    }
    if (n < 0 && errno == EAGAIN)
        return TUN_READ_SIZE;   /* nothing yet: the read will say so */
    t->splicing = false;
    return TUN_READ_SIZE;   /* a read says what the peek could not (EOF, error) */
}

static void on_io(fy_ev_t *ev, fy_io_t *io, uint32_t events)
{
    fy_tun_t *t = io->data;
    int reads;

    if (t->closed)
        return;
    if (events & EPOLLOUT)
        flush(t);
    if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
        return;
    process_input(t);
    for (reads = 0; reads < TUN_READS_PER_WAKEUP && !t->closed; reads++) {
        size_t want = TUN_READ_SIZE;
        ssize_t n;
        if (fy_buf_len(&t->in) == 0) {
            if ((n = splice_in(t, &want)) != 0) {
                if (n < 0)
                    break;
                continue;
            }
            if (want == TUN_READ_SIZE && t->splicing && (want = header_bite(t)) < TUN_READ_SIZE)
                reads--;   /* a few header bytes: not a read that counts */
        }
        if (fy_buf_reserve(&t->in, want, TUN_IN_MAX) != FY_OK) {
            fy_tun_close(t, "out of memory");
            return;
        }
        n = read(io->fd, fy_buf_end(&t->in), FY_MIN(want, fy_buf_room(&t->in)));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN)
                break;
            fy_tun_close(t, "read failed");
            return;
        }
        if (n == 0) {
            fy_tun_close(t, "connection closed by peer");
            return;
        }
        t->in.wpos += (size_t)n;
        t->last_rx = fy_ev_now(ev);
        process_input(t);
        if ((size_t)n < want)
            break;
    }
    if (!t->closed)
        fy_buf_release_if_empty(&t->in);
}
