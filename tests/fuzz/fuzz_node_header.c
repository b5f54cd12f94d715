/*
 * fuzz_node_header.c: libFuzzer target for the X-Ferry-Forwarded parser
 * (worker/nodehdr.c), which reads a header any end user can send to a node
 * of a cluster.
 *
 * Checks: a parsed header has five non-empty fields without spaces, a
 * client that fits with its NUL, and formats back to a value that parses to
 * the same fields (the MAC in lower-case hex).
 */
#include "worker/nodehdr.c"

#include <stdio.h>
#include <stdlib.h>

#define CHECK(c) do { if (!(c)) abort(); } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fy_node_hdr_t h, again;
    char hex[65], out[512];
    int n;

    if (fy_node_hdr_parse((const char *)data, size, &h) != FY_OK)
        return 0;
    CHECK(h.node_len > 0 && memchr(h.node, ' ', h.node_len) == NULL);
    CHECK(h.ts >= 0);
    CHECK(strlen(h.client) > 0 && strlen(h.client) < sizeof(h.client) && strchr(h.client, ' ') == NULL);
    sodium_bin2hex(hex, sizeof(hex), h.mac, sizeof(h.mac));
    n = snprintf(out, sizeof(out), "%.*s %lld %s %s %s", (int)h.node_len, h.node, (long long)h.ts, h.client,
                 h.https ? "https" : "http", hex);
    CHECK(n > 0 && (size_t)n < sizeof(out));
    CHECK(fy_node_hdr_parse(out, (size_t)n, &again) == FY_OK);
    CHECK(again.node_len == h.node_len && memcmp(again.node, h.node, h.node_len) == 0);
    CHECK(again.ts == h.ts && again.https == h.https && strcmp(again.client, h.client) == 0);
    CHECK(memcmp(again.mac, h.mac, sizeof(h.mac)) == 0);
    return 0;
}
