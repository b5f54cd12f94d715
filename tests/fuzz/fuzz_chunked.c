/*
 * fuzz_chunked.c: libFuzzer target for fy_h1_chunked_scan, and a
 * differential check of its resumability: the input fed in one piece, in
 * two pieces cut at data[0] % size, and (for small inputs) byte by byte must
 * give the same bytes consumed, the same done and the same error. Every
 * piece is an exact-size heap copy, so a read past it is an ASan report.
 */
#include "fy.h"
#include "http1/http1.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Scan one piece; returns the scanner's answer. */
static ssize_t scan_piece(fy_h1_chunked_t *st, const uint8_t *p, size_t n)
{
    char *copy = malloc(n ? n : 1);
    ssize_t rc;

    if (copy == NULL)
        abort();
    memcpy(copy, p, n);
    rc = fy_h1_chunked_scan(st, copy, n);
    free(copy);
    fy_assert(rc == FY_ERR || (rc >= 0 && (size_t)rc <= n));
    fy_assert(rc == FY_ERR || st->done || (size_t)rc == n);
    if (rc == FY_ERR)
        fy_assert(st->err_reason != NULL && !st->done);
    return rc;
}

/* Total consumed over consecutive pieces of `step` bytes (FY_ERR on error). */
static ssize_t scan_steps(const uint8_t *data, size_t size, size_t step, bool *done)
{
    fy_h1_chunked_t st = { 0 };
    size_t off = 0;

    *done = false;
    while (off < size && !st.done) {
        size_t k = FY_MIN(step, size - off);
        ssize_t rc = scan_piece(&st, data + off, k);
        if (rc == FY_ERR)
            return FY_ERR;
        off += (size_t)rc;
    }
    *done = st.done;
    return (ssize_t)off;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fy_h1_chunked_t st = { 0 };
    ssize_t whole, a, b = 0, two;
    bool whole_done, two_done, bytes_done;
    size_t cut;

    if (size == 0)
        return 0;
    whole = scan_steps(data, size, size, &whole_done);

    cut = data[0] % size;
    a = scan_piece(&st, data, cut);
    if (a != FY_ERR && !st.done)
        b = scan_piece(&st, data + cut, size - cut);
    two = (a == FY_ERR || b == FY_ERR) ? FY_ERR : a + b;
    two_done = st.done;
    fy_assert(two == whole);
    fy_assert(whole == FY_ERR || two_done == whole_done);

    if (size <= 4096) {
        ssize_t bytes = scan_steps(data, size, 1, &bytes_done);
        fy_assert(bytes == whole);
        fy_assert(whole == FY_ERR || bytes_done == whole_done);
    }

    /* once done, the scanner takes nothing more */
    if (whole_done) {
        fy_h1_chunked_t fin = { 0 };
        fy_assert(fy_h1_chunked_scan(&fin, (const char *)data, size) == whole);
        fy_assert(fy_h1_chunked_scan(&fin, (const char *)data, size) == 0);
    }
    return 0;
}
