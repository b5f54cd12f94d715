/*
 * conf.c: see conf.h.
 */
#include "conf/conf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

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

/*
 * Read a whole small file into a new buffer (owned by the caller, with a
 * NUL after the data). what names the config key in errors. When private,
 * refuse a file that group or others can access.
 */
char *fy_conf_read_file(const char *what, const char *path, size_t max, bool private, size_t *len, char *err,
                       size_t errlen)
{
    struct stat st;
    char *buf = NULL;
    size_t got = 0;
    ssize_t n;
    int fd;

    if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY)) < 0) {
        snprintf(err, errlen, "%s %s: %s", what, path, strerror(errno));
        return NULL;
    }
    if (fstat(fd, &st) != 0) {
        snprintf(err, errlen, "%s %s: %s", what, path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s %s: not a regular file", what, path);
        goto fail;
    }
    if (private && (st.st_mode & 077) != 0) {
        snprintf(err, errlen, "%s %s: group or others can access it (mode %04o); it must be readable by its "
                 "owner only: chmod 600 %s", what, path, (unsigned)(st.st_mode & 07777), path);
        goto fail;
    }
    if ((uint64_t)st.st_size > max) {
        snprintf(err, errlen, "%s %s: larger than %zu bytes", what, path, max);
        goto fail;
    }
    if ((buf = malloc(max + 1)) == NULL) {
        snprintf(err, errlen, "%s %s: out of memory", what, path);
        goto fail;
    }
    /* The size may change under us: read to EOF, but never past max. */
    while ((n = read(fd, buf + got, max + 1 - got)) != 0) {
        if (n < 0) {
            if (errno == EINTR)
                continue;
            snprintf(err, errlen, "%s %s: %s", what, path, strerror(errno));
            goto fail;
        }
        got += (size_t)n;
        if (got > max) {
            snprintf(err, errlen, "%s %s: larger than %zu bytes", what, path, max);
            goto fail;
        }
    }
    close(fd);
    buf[got] = '\0';
    *len = got;
    return buf;
fail:
    if (buf != NULL) {
        sodium_memzero(buf, max + 1);
        free(buf);
    }
    close(fd);
    return NULL;
}
