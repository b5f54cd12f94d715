/*
 * nodehdr.h: the X-Ferry-Forwarded header a node puts on a request it
 * forwards to the tunnel's owner node (docs/PROTOCOL.md §6):
 *
 *     NODE SP UNIXTIME SP CLIENT SP PROTO SP MAC
 *
 * single spaces, PROTO "http" or "https", MAC 64 hex digits. Any end user
 * can send this header, so it is parsed strictly here (and fuzzed:
 * tests/fuzz/fuzz_node_header.c) before cluster.c checks the MAC.
 */
#ifndef FY_NODEHDR_H
#define FY_NODEHDR_H

#include "fy.h"
#include "net/net.h"

#define FY_NODEHDR_NODE_MAX 63         /* as cluster.node (FY_NODE_MAX) */

typedef struct fy_node_hdr_s {
    const char *node;                  /* into the header value */
    size_t      node_len;
    int64_t     ts;                    /* seconds since the epoch */
    char        client[FY_ADDRSTRLEN]; /* "ip:port" as the node saw it, NUL-terminated */
    bool        https;
    uint8_t     mac[32];
} fy_node_hdr_t;

/* FY_OK and h filled, or FY_ERR (malformed). */
int fy_node_hdr_parse(const char *v, size_t n, fy_node_hdr_t *h) FY_MUST_USE;

#endif
