/*
 * buf.h: one byte buffer type for the whole code base: a heap area with a
 * read and a write cursor (nginx's pos/last, h2o's buffer). Data lives in
 * base[rpos..wpos); free space is base[wpos..cap). Growth is always bounded
 * by a caller-given maximum: no buffer in ferry grows without limit.
 */
#ifndef FY_BUF_H
#define FY_BUF_H

#include "fy.h"

typedef struct fy_buf_s {
    uint8_t *base;
    size_t   cap;
    size_t   rpos;
    size_t   wpos;
} fy_buf_t;

static inline size_t fy_buf_len(const fy_buf_t *b) { return b->wpos - b->rpos; }
static inline uint8_t *fy_buf_data(const fy_buf_t *b) { return b->base + b->rpos; }
static inline size_t fy_buf_room(const fy_buf_t *b) { return b->cap - b->wpos; }
static inline uint8_t *fy_buf_end(const fy_buf_t *b) { return b->base + b->wpos; }

/*
 * Make room for at least n more bytes at the end, compacting first and then
 * growing up to max total capacity. Returns FY_OK, or FY_ERR if the data
 * plus n would exceed max or memory ran out (the buffer is unchanged).
 */
int fy_buf_reserve(fy_buf_t *b, size_t n, size_t max) FY_MUST_USE;

/* Drop n bytes from the front; an emptied buffer rewinds to the start. */
void fy_buf_consume(fy_buf_t *b, size_t n);

/* Append n bytes (reserving up to max). FY_OK or FY_ERR as fy_buf_reserve. */
int fy_buf_append(fy_buf_t *b, const void *p, size_t n, size_t max) FY_MUST_USE;

/* Release the memory of an empty buffer (idle connections keep none). A
 * few released buffers (up to 256 KiB each) are kept per thread for the
 * next reserve of an empty buffer, so a buffer per request costs no
 * malloc. */
void fy_buf_release_if_empty(fy_buf_t *b);

/* Release the memory (kept as a spare, as above). */
void fy_buf_free(fy_buf_t *b);

#endif
