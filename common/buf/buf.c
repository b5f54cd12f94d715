/*
 * buf.c: the bounded byte buffer of buf.h.
 */
#include "buf/buf.h"

#include <stdlib.h>
#include <string.h>

/*
 * Released buffers kept for the next reserve (per thread, a few, none over
 * SPARE_MAX_CAP): a connection that reads a request, passes it on and
 * releases its buffer, or a connection per request, costs no malloc and
 * free each time.
 */
#define SPARES 4
#define SPARE_MAX_CAP (256u * 1024)
static _Thread_local struct { uint8_t *base; size_t cap; } spares[SPARES];
static _Thread_local unsigned nspares;

/* An empty buffer without memory takes a spare of cap in [want, max]. */
static bool take_spare(fy_buf_t *b, size_t want, size_t max)
{
    unsigned i;
    for (i = nspares; i-- > 0;) {
        if (spares[i].cap >= want && spares[i].cap <= max) {
            b->base = spares[i].base;
            b->cap = spares[i].cap;
            b->rpos = b->wpos = 0;
            spares[i] = spares[--nspares];
            return true;
        }
    }
    return false;
}

/* Keep the memory of b for a later reserve, or free it. */
static void put_spare(fy_buf_t *b)
{
    if (b->base != NULL && b->cap <= SPARE_MAX_CAP && nspares < SPARES) {
        spares[nspares].base = b->base;
        spares[nspares].cap = b->cap;
        nspares++;
    } else {
        free(b->base);
    }
    b->base = NULL;
    b->cap = b->rpos = b->wpos = 0;
}

int fy_buf_reserve(fy_buf_t *b, size_t n, size_t max)
{
    size_t len = fy_buf_len(b), want, ncap;
    uint8_t *p;

    if (b->cap - b->wpos >= n)
        return FY_OK;
    if (len + n > max)
        return FY_ERR;
    if (b->base == NULL && take_spare(b, n, max))
        return FY_OK;
    if (b->rpos > 0 && b->cap - len >= n) {
        memmove(b->base, b->base + b->rpos, len);
        b->rpos = 0;
        b->wpos = len;
        return FY_OK;
    }
    want = len + n;
    ncap = b->cap ? b->cap : 4096;
    while (ncap < want)
        ncap *= 2;
    if (ncap > max)
        ncap = max;
    if (b->rpos > 0) {
        memmove(b->base, b->base + b->rpos, len);
        b->rpos = 0;
        b->wpos = len;
    }
    p = realloc(b->base, ncap);
    if (p == NULL)
        return FY_ERR;
    b->base = p;
    b->cap = ncap;
    return FY_OK;
}

void fy_buf_consume(fy_buf_t *b, size_t n)
{
    fy_assert(n <= fy_buf_len(b));
    b->rpos += n;
    if (b->rpos == b->wpos)
        b->rpos = b->wpos = 0;
}

int fy_buf_append(fy_buf_t *b, const void *p, size_t n, size_t max)
{
    if (n == 0)
        return FY_OK;
    if (fy_buf_reserve(b, n, max) != FY_OK)
        return FY_ERR;
    memcpy(b->base + b->wpos, p, n);
    b->wpos += n;
    return FY_OK;
}

void fy_buf_release_if_empty(fy_buf_t *b)
{
    if (b->base != NULL && fy_buf_len(b) == 0)
        put_spare(b);
}

void fy_buf_free(fy_buf_t *b)
{
    put_spare(b);
}
