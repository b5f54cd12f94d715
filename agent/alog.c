/*
 * alog.c: the agent's log lines, with ngrok's field names (t lvl msg obj
 * name addr url err) so that scripts which grep ngrok's logs keep working.
 * Three formats as ngrok's: logfmt, json (the same fields as one object a
 * line), and term (log15's human lines, only on a terminal: elsewhere term
 * means logfmt). Each line is built whole and written with one write(2),
 * so a pipe reader never sees half a line.
 */
#include "agent/agent.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int log_fd = -1;
static enum fy_alog_format log_format = FY_AL_LOGFMT;
static enum fy_alog_level log_min = FY_AL_INFO;

void fy_alog_setup(int fd, enum fy_alog_format fmt, enum fy_alog_level min)
{
    log_fd = fd;
    log_min = min;
    /* term is for a person at a terminal; anywhere else, logfmt. */
    if (fmt == FY_AL_TERM && (fd < 0 || !isatty(fd)))
        fmt = FY_AL_LOGFMT;
    log_format = fmt;
}

int fy_alog_fd(void) { return log_fd; }

void fy_awrite(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        p += w;
        n -= (size_t)w;
    }
}

typedef struct {
    char   b[4096];
    size_t n;
} line_t;

static void add(line_t *l, const char *s, size_t n)
{
    if (n > sizeof(l->b) - 2 - l->n)
        n = sizeof(l->b) - 2 - l->n;
    memcpy(l->b + l->n, s, n);
    l->n += n;
}

static void adds(line_t *l, const char *s) { add(l, s, strlen(s)); }

/* logfmt: quote when the value has a space, quote, = or is empty. */
static void add_logfmt_value(line_t *l, const char *v)
{
    bool quote = v[0] == '\0' || strpbrk(v, " \"=\t\r\n\\") != NULL;
    const char *p;
    if (!quote) {
        adds(l, v);
        return;
    }
    add(l, "\"", 1);
    for (p = v; *p; p++) {
        if (*p == '"' || *p == '\\')
            add(l, "\\", 1);
        if (*p == '\n')
            adds(l, "\\n");
        else if (*p == '\r')
            adds(l, "\\r");
        else
            add(l, p, 1);
    }
    add(l, "\"", 1);
}

static void add_json_string(line_t *l, const char *v)
{
    const char *p;
    add(l, "\"", 1);
    for (p = v; *p; p++) {
        unsigned char ch = (unsigned char)*p;
        if (ch == '"' || ch == '\\') {
            add(l, "\\", 1);
            add(l, p, 1);
        } else if (ch < 0x20) {
            char esc[8];
            snprintf(esc, sizeof(esc), "\\u%04x", ch);
            adds(l, esc);
        } else {
            add(l, p, 1);
        }
    }
    add(l, "\"", 1);
}

void fy_alog(enum fy_alog_level lvl, const char *msg, ...)
{
    static const char *const names[] = {"dbug", "info", "warn", "eror", "crit"};
    static const char *const upper[] = {"DBUG", "INFO", "WARN", "EROR", "CRIT"};
    static const int colors[] = {36, 32, 33, 31, 35};
    char ts[40];
    struct tm tm;
    time_t now;
    line_t l;
    va_list ap;
    const char *k;

    if (log_fd < 0 || lvl < log_min)
        return;
    l.n = 0;
    now = time(NULL);
    localtime_r(&now, &tm);
    if (log_format == FY_AL_TERM) {
        /* log15: INFO[01-02|15:04:05] msg (padded to 40) k=v ... */
        char head[64];
        size_t ml = strlen(msg);
        strftime(ts, sizeof(ts), "%m-%d|%H:%M:%S", &tm);
        snprintf(head, sizeof(head), "\033[%dm%s\033[0m[%s] ", colors[lvl], upper[lvl], ts);
        adds(&l, head);
        adds(&l, msg);
        while (ml++ < 40)
            add(&l, " ", 1);
    } else {
        strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S%z", &tm);
    }
    if (log_format == FY_AL_TERM) {
        /* done above */
    } else if (log_format == FY_AL_JSON) {
        adds(&l, "{\"t\":");
        add_json_string(&l, ts);
        adds(&l, ",\"lvl\":");
        add_json_string(&l, names[lvl]);
        adds(&l, ",\"msg\":");
        add_json_string(&l, msg);
    } else {
        adds(&l, "t=");
        adds(&l, ts);
        adds(&l, " lvl=");
        adds(&l, names[lvl]);
        adds(&l, " msg=");
        add_logfmt_value(&l, msg);
    }
    va_start(ap, msg);
    while ((k = va_arg(ap, const char *)) != NULL) {
        const char *v = va_arg(ap, const char *);
        if (v == NULL)
            v = "";
        if (log_format == FY_AL_JSON) {
            add(&l, ",", 1);
            add_json_string(&l, k);
            add(&l, ":", 1);
            add_json_string(&l, v);
        } else if (log_format == FY_AL_TERM) {
            char kc[80];
            snprintf(kc, sizeof(kc), " \033[%dm%s\033[0m=", colors[lvl], k);
            adds(&l, kc);
            add_logfmt_value(&l, v);
        } else {
            add(&l, " ", 1);
            adds(&l, k);
            add(&l, "=", 1);
            add_logfmt_value(&l, v);
        }
    }
    va_end(ap);
    if (log_format == FY_AL_JSON)
        add(&l, "}", 1);
    l.b[l.n++] = '\n';
    fy_awrite(log_fd, l.b, l.n);
}

void fy_aprint(const char *fmt, ...)
{
    char b[1024];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(b, sizeof(b), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof(b))
        n = (int)sizeof(b) - 1;
    fy_awrite(1, b, (size_t)n);
}
