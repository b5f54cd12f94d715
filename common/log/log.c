/*
 * log.c: see log.h.
 */
#include "log/log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int log_fd = 2;
static enum fy_log_level log_level = FY_LOG_INFO;

void fy_log_set_fd(int fd) { log_fd = fd; }
void fy_log_set_level(enum fy_log_level lvl) { log_level = lvl; }

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
