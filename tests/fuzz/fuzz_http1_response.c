/*
 * fuzz_http1_response.c: libFuzzer target for fy_h1_parse_response. The
 * first byte picks request_was_head; the rest is the response, parsed from
 * an exact-size heap copy. Checks the framing promises of http1.h besides
 * memory safety, and that a complete head is stable when cut after it.
 */
#include "fy.h"
#include "http1/http1.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const fy_h1_limits_t lim = { .max_headers = 100, .max_head_bytes = 32768 };

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static fy_h1_header_t hdrs[100];
    fy_h1_response_t resp, again;
    bool head;
    char *buf;
    int n;

    if (size == 0)
        return 0;
    head = data[0] & 1;
    data++;
    size--;
    buf = malloc(size ? size : 1);
    if (buf == NULL)
        return 0;
    memcpy(buf, data, size);
    n = fy_h1_parse_response(buf, size, &resp, hdrs, &lim, head);
    if (n == FY_AGAIN) {
        fy_assert(size < lim.max_head_bytes);
    } else if (n == FY_ERR) {
        fy_assert(resp.err_reason != NULL);
    } else {
        fy_assert(n > 0 && (size_t)n <= size && resp.head_len == (size_t)n);
        fy_assert(resp.status >= 100 && resp.status <= 999);
        fy_assert(resp.minor == 0 || resp.minor == 1);
        fy_assert(resp.nheaders <= 100);
        fy_assert(resp.reason != NULL && resp.reason >= buf
                  && (size_t)(resp.reason - buf) + resp.reason_len <= (size_t)n);
        if (head || resp.status < 200 || resp.status == 204 || resp.status == 304)
            fy_assert(resp.body == FY_H1_BODY_NONE);
        if (resp.status == 101)
            fy_assert(resp.flags & FY_H1_F_UPGRADE);
        if (resp.body == FY_H1_BODY_LENGTH)
            fy_assert(resp.content_length > 0);
        fy_assert(fy_h1_parse_response(buf, (size_t)n, &again, hdrs, &lim, head) == n);
        fy_assert(again.body == resp.body && again.flags == resp.flags);
        fy_assert(fy_h1_parse_response(buf, (size_t)n - 1, &again, hdrs, &lim, head) == FY_AGAIN);
    }
    free(buf);
    return 0;
}
