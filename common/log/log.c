/*
 * log.c: see log.h.
 */
#include "log/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int log_fd = 2;
static bool log_json;
static enum fy_log_level log_level = FY_LOG_INFO;

void fy_log_set_fd(int fd) { log_fd = fd; }
int fy_log_fd(void) { return log_fd; }
void fy_log_set_level(enum fy_log_level lvl) { log_level = lvl; }

int fy_log_open(const char *file, bool json)
{
    int fd;

    if (file == NULL || !strcmp(file, "stderr"))
        fd = 2;
    else if (!strcmp(file, "stdout"))
        fd = 1;
    else if ((fd = open(file, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640)) < 0)
        return FY_ERR;
    if (log_fd > 2 && log_fd != fd)
        close(log_fd);
    log_fd = fd;
    log_json = json;
    return FY_OK;
}

void fy_log_close(void)
{
    if (log_fd > 2)
        close(log_fd);
    log_fd = 2;
}

size_t fy_log_json_escape(char *out, size_t cap, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0, i;

    for (i = 0; i < n && o + 7 < cap; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\') {
            out[o++] = '\\';
            out[o++] = (char)ch;
        } else if (ch < 0x20 || ch == 0x7f) {
            out[o++] = '\\';
            out[o++] = 'u';
            out[o++] = '0';
            out[o++] = '0';
            out[o++] = hex[ch >> 4];
            out[o++] = hex[ch & 15];
        } else {
            out[o++] = (char)ch;
        }
    }
    return o;
}

void fy_log(enum fy_log_level lvl, int err, const char *fmt, ...)
{
    static const char *const names[] = {"error", "warn", "info", "debug"};
    char line[2048];
    struct timespec ts;
    struct tm tm;
    va_list ap;
    size_t n;
    int r;

    if (lvl > log_level)
        return;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    if (log_json) {
        char msg[1536];
        size_t ml;
        int k;
        va_start(ap, fmt);
        k = vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        ml = k < 0 ? 0 : FY_MIN((size_t)k, sizeof(msg) - 1);
        if (err > 0) {
            k = snprintf(msg + ml, sizeof(msg) - ml, ": %s", strerror(err));
            if (k > 0)
                ml = FY_MIN(ml + (size_t)k, sizeof(msg) - 1);
        }
        n = strftime(line, sizeof(line), "{\"t\":\"%Y-%m-%dT%H:%M:%SZ\"", &tm);
        r = snprintf(line + n, sizeof(line) - n, ",\"lvl\":\"%s\",\"pid\":%d,\"msg\":\"", names[lvl], (int)getpid());
        if (r > 0)
            n += (size_t)r;
        n += fy_log_json_escape(line + n, sizeof(line) - n - 3, msg, ml);
        line[n++] = '"';
        line[n++] = '}';
        line[n++] = '\n';
        while (write(log_fd, line, n) < 0 && errno == EINTR)
            ;
        return;
    }
    n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%SZ", &tm);
    r = snprintf(line + n, sizeof(line) - n, " [%s] %d: ", names[lvl], (int)getpid());
    if (r > 0)
        n += (size_t)r;
    va_start(ap, fmt);
    r = vsnprintf(line + n, sizeof(line) - n, fmt, ap);
    va_end(ap);
    if (r > 0)
        n = FY_MIN(n + (size_t)r, sizeof(line) - 2);
    if (err > 0) {
        r = snprintf(line + n, sizeof(line) - n, ": %s", strerror(err));
        if (r > 0)
            n = FY_MIN(n + (size_t)r, sizeof(line) - 2);
    }
    line[n++] = '\n';
    while (write(log_fd, line, n) < 0 && errno == EINTR)
        ;
}
