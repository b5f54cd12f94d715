/*
 * alog.c: the agent's log lines, with ngrok's field names (t lvl msg obj
 * name addr url err) so that scripts which grep ngrok's logs keep working.
 * Each line is built whole and written with one write(2).
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

void fy_alog_setup(int fd, enum fy_alog_format fmt)
{
    log_fd = fd;
    log_format = fmt == FY_AL_TERM ? FY_AL_LOGFMT : fmt;
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
    bool quote = v[0] == '\0' || strpbrk(v, " \"=\t") != NULL;
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
    char ts[40];
    struct tm tm;
    time_t now;
    line_t l;
    va_list ap;
    const char *k;

    if (log_fd < 0)
        return;
    l.n = 0;
    now = time(NULL);
    localtime_r(&now, &tm);
    strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S%z", &tm);
    if (log_format == FY_AL_JSON) {
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
    while (write(log_fd, l.b, l.n) < 0 && errno == EINTR)
        ;
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
    while (write(1, b, (size_t)n) < 0 && errno == EINTR)
        ;
}
