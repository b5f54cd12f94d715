/*
 * conf.c: see conf.h.
 */
#include "conf/conf.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static int parse_number(const char *s, uint64_t *v, const char **rest)
{
    uint64_t n = 0;
    const char *p = s;
    if (*p < '0' || *p > '9')
        return FY_ERR;
    for (; *p >= '0' && *p <= '9'; p++) {
        if (n > (UINT64_MAX - 9) / 10)
            return FY_ERR;
        n = n * 10 + (uint64_t)(*p - '0');
    }
    *v = n;
    *rest = p;
    return FY_OK;
}

int fy_conf_duration(const char *s, uint64_t *ms)
{
    static const struct { const char *suffix; uint64_t mult; } units[] = {
        {"ms", 1}, {"s", 1000}, {"", 1000}, {"m", 60000}, {"h", 3600000}, {"d", 86400000},
    };
    uint64_t n;
    const char *rest;
    size_t i;

    if (parse_number(s, &n, &rest) != FY_OK)
        return FY_ERR;
    for (i = 0; i < FY_NELEM(units); i++) {
        if (strcmp(rest, units[i].suffix) == 0) {
            if (n > UINT64_MAX / units[i].mult)
                return FY_ERR;
            *ms = n * units[i].mult;
            return FY_OK;
        }
    }
    return FY_ERR;
}

int fy_conf_size(const char *s, uint64_t *bytes)
{
    uint64_t n, mult = 1;
    const char *rest;

    if (parse_number(s, &n, &rest) != FY_OK)
        return FY_ERR;
    if (strcmp(rest, "k") == 0 || strcmp(rest, "K") == 0)
        mult = 1024;
    else if (strcmp(rest, "m") == 0 || strcmp(rest, "M") == 0)
        mult = 1024 * 1024;
    else if (*rest != '\0')
        return FY_ERR;
    if (n > UINT64_MAX / mult)
        return FY_ERR;
    *bytes = n * mult;
    return FY_OK;
}

int fy_conf_uint(const char *s, uint64_t min, uint64_t max, uint64_t *v)
{
    const char *rest;
    if (parse_number(s, v, &rest) != FY_OK || *rest != '\0' || *v < min || *v > max)
        return FY_ERR;
    return FY_OK;
}

int fy_conf_bool(const char *s, bool *v)
{
    if (!strcmp(s, "true") || !strcmp(s, "yes") || !strcmp(s, "on")) {
        *v = true;
        return FY_OK;
    }
    if (!strcmp(s, "false") || !strcmp(s, "no") || !strcmp(s, "off")) {
        *v = false;
        return FY_OK;
    }
    return FY_ERR;
}

int fy_conf_tunnel_id(const char *s, size_t n, char *out)
{
    size_t i;
    if (n == 0 || n > FY_ID_MAX)
        return FY_ERR;
    for (i = 0; i < n; i++) {
        char ch = s[i];
        if (ch >= 'A' && ch <= 'Z')
            ch = (char)(ch | 0x20);
        if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-'))
            return FY_ERR;
        out[i] = ch;
    }
    out[n] = '\0';
    return FY_OK;
}
