/*
 * buf.c: the bounded byte buffer of buf.h.
 */
#include "buf/buf.h"

#include <stdlib.h>
#include <string.h>

int fy_buf_reserve(fy_buf_t *b, size_t n, size_t max)
{
    size_t len = fy_buf_len(b), want, ncap;
    uint8_t *p;

    if (b->cap - b->wpos >= n)
        return FY_OK;
    if (len + n > max)
        return FY_ERR;
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
    if (b->base != NULL && fy_buf_len(b) == 0) {
        free(b->base);
        b->base = NULL;
        b->cap = b->rpos = b->wpos = 0;
    }
}

void fy_buf_free(fy_buf_t *b)
{
    free(b->base);
    b->base = NULL;
    b->cap = b->rpos = b->wpos = 0;
}
