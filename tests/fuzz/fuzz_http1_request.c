/*
 * fuzz_http1_request.c: libFuzzer target for fy_h1_parse_request, and for
 * fy_h1_chunked_scan over whatever follows a complete chunked head. Besides
 * crashes and out-of-bounds reads (each input is parsed from an exact-size
 * heap copy), it checks what the API promises: slices inside the buffer, an
 * error always carrying a status and a code, and a complete head parsing the
 * same when cut right after it and asking for more when cut one byte short.
 */
#include "fy.h"
#include "http1/http1.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const fy_h1_limits_t lim = { .max_headers = 100, .max_head_bytes = 32768 };

static bool inside(const char *p, size_t n, const char *buf, size_t len)
{
    return p != NULL && p >= buf && n <= len && (size_t)(p - buf) <= len - n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static fy_h1_header_t hdrs[100];
    fy_h1_request_t req;
    char *buf = malloc(size ? size : 1);
    int n;
    size_t i;

    if (buf == NULL)
        return 0;
    memcpy(buf, data, size);
    n = fy_h1_parse_request(buf, size, &req, hdrs, &lim);
    if (n == FY_AGAIN) {
        fy_assert(size < lim.max_head_bytes);
    } else if (n == FY_ERR) {
        fy_assert(req.err_status == 400 || req.err_status == 431 || req.err_status == 505);
        fy_assert(req.err_code != NULL && req.err_reason != NULL);
    } else {
        fy_h1_request_t again;
        fy_assert(n > 0 && (size_t)n <= size && (size_t)n <= lim.max_head_bytes);
        fy_assert(req.head_len == (size_t)n && req.nheaders <= 100);
        fy_assert(req.minor == 0 || req.minor == 1);
        fy_assert(inside(req.method, req.method_len, buf, (size_t)n));
        fy_assert(inside(req.target, req.target_len, buf, (size_t)n));
        if (req.host != NULL)
            fy_assert(inside(req.host, req.host_len, buf, (size_t)n));
        if (req.flags & FY_H1_F_CONNECT)
            fy_assert(req.path == NULL);
        else
            fy_assert(req.path != NULL && req.path_len > 0);
        for (i = 0; i < req.nheaders; i++) {
            fy_assert(inside(hdrs[i].name, hdrs[i].name_len, buf, (size_t)n));
            fy_assert(hdrs[i].value_len == 0 || inside(hdrs[i].value, hdrs[i].value_len, buf, (size_t)n));
        }
        fy_assert(req.body != FY_H1_BODY_UNTIL_CLOSE);
        if (req.body == FY_H1_BODY_LENGTH)
            fy_assert(req.content_length > 0);

        /* the head alone parses the same; one byte short asks for more */
        fy_assert(fy_h1_parse_request(buf, (size_t)n, &again, hdrs, &lim) == n);
        fy_assert(fy_h1_parse_request(buf, (size_t)n - 1, &again, hdrs, &lim) == FY_AGAIN);
        /* slices of the first parse point into the same buffer: restore */
        fy_assert(fy_h1_parse_request(buf, size, &req, hdrs, &lim) == n);

        if (req.body == FY_H1_BODY_CHUNKED) {
            fy_h1_chunked_t st = { 0 };
            ssize_t c = fy_h1_chunked_scan(&st, buf + n, size - (size_t)n);
            fy_assert(c == FY_ERR || (c >= 0 && (size_t)c <= size - (size_t)n));
            fy_assert(c == FY_ERR || st.done || (size_t)c == size - (size_t)n);
        }
    }
    free(buf);
    return 0;
}
