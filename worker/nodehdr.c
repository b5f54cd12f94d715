/*
 * nodehdr.c: see nodehdr.h.
 */
#include "worker/nodehdr.h"

#include <sodium.h>

#include <string.h>

/* Split at single spaces into exactly five non-empty fields. */
static bool split5(const char *v, size_t n, const char *f[5], size_t fl[5])
{
    size_t i, k = 0, start = 0;

    for (i = 0; i <= n; i++) {
        if (i == n || v[i] == ' ') {
            if (k == 5 || i == start)
                return false;
            f[k] = v + start;
            fl[k++] = i - start;
            start = i + 1;
        }
    }
    return k == 5;
}

/* Every byte of s[0..n) is one of set's. */
static bool only(const char *s, size_t n, const char *set)
{
    size_t i;
    for (i = 0; i < n; i++)
        if (s[i] == '\0' || strchr(set, s[i]) == NULL)
            return false;
    return true;
}

int fy_node_hdr_parse(const char *v, size_t n, fy_node_hdr_t *h)
{
    const char *f[5];
    size_t fl[5], i, binlen;
    uint64_t ts = 0;

    if (!split5(v, n, f, fl) || fl[0] > FY_NODEHDR_NODE_MAX || fl[1] > 18 || fl[2] >= sizeof(h->client)
        || fl[4] != 64)
        return FY_ERR;
    /* A node name (cluster.node) and an "ip:port" ("[v6]:port"), nothing else. */
    if (!only(f[0], fl[0], "abcdefghijklmnopqrstuvwxyz0123456789._-")
        || !only(f[2], fl[2], "0123456789abcdefABCDEF.:[]"))
        return FY_ERR;
    for (i = 0; i < fl[1]; i++) {
        if (f[1][i] < '0' || f[1][i] > '9')
            return FY_ERR;
        ts = ts * 10 + (uint64_t)(f[1][i] - '0');   /* 18 digits: no overflow */
    }
    if (fl[3] == 4 && memcmp(f[3], "http", 4) == 0)
        h->https = false;
    else if (fl[3] == 5 && memcmp(f[3], "https", 5) == 0)
        h->https = true;
    else
        return FY_ERR;
    if (sodium_hex2bin(h->mac, sizeof(h->mac), f[4], 64, NULL, &binlen, NULL) != 0 || binlen != sizeof(h->mac))
        return FY_ERR;
    h->node = f[0];
    h->node_len = fl[0];
    h->ts = (int64_t)ts;
    memcpy(h->client, f[2], fl[2]);
    h->client[fl[2]] = '\0';
    return FY_OK;
}
