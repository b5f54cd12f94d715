/*
 * status.c: the live status block on a terminal, as ngrok's console: the
 * session's state, the relay, the latency, a Forwarding line per tunnel,
 * connection and request counters. It lives on the terminal's alternate
 * screen, redrawn in place from the top (every line cleared to its end,
 * cut to the terminal's width and height, so nothing ever scrolls), at
 * most ten times a second and at least once a second; leaving restores the
 * screen the user had, so nothing is left behind on exit.
 *
 * Only when stdout is a terminal that does not carry the log (main.c).
 */
#include "agent/agent.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#define STATUS_PERIOD_MS 1000
#define STATUS_MIN_MS    100
#define LABEL_W          30

struct fy_status_s {
    fy_agent_t *a;
    fy_timer_t  timer;
    uint64_t    last_draw;
    unsigned    cols;
    unsigned    rows;
};

typedef struct {
    fy_buf_t  b;
    unsigned  cols;
    unsigned  rows;
    unsigned  lines;
} screen_t;

/* One line, cut to the width (escape sequences in color do not count). */
static void line(screen_t *s, const char *color, const char *label, const char *fmt, ...) FY_PRINTF(4, 5);
static void line(screen_t *s, const char *color, const char *label, const char *fmt, ...)
{
    char text[1024], out[1200];
    va_list ap;
    size_t n, w = s->cols > 1 ? s->cols - 1 : 1;
    int len;

    if (s->lines + 1 >= s->rows)
        return;
    va_start(ap, fmt);
    len = snprintf(text, sizeof(text), "%-*s", label ? LABEL_W : 0, label ? label : "");
    if (len < 0)
        len = 0;
    if ((size_t)len < sizeof(text))
        vsnprintf(text + len, sizeof(text) - (size_t)len, fmt, ap);
    va_end(ap);
    n = strlen(text);
    if (n > w)
        n = w;
    if (color != NULL && (size_t)len < n)
        snprintf(out, sizeof(out), "%.*s\033[%sm%.*s\033[0m\033[K\r\n", len, text, color, (int)(n - (size_t)len),
                 text + len);
    else
        snprintf(out, sizeof(out), "%.*s\033[K\r\n", (int)n, text);
    if (fy_buf_append(&s->b, out, strlen(out), 1u << 20) == FY_OK)
        s->lines++;
}

static void fmt_rate(char *o, size_t n, double v) { snprintf(o, n, "%.2f", v); }

static void draw(fy_status_t *st)
{
    fy_agent_t *a = st->a;
    fy_atunnel_t *tn;
    screen_t s;
    const char *state = fy_session_status(a);
    uint64_t conns = 0, open = 0, reqs = 0;
    double r1 = 0, r5 = 0, h1 = 0, h5 = 0, pc[4], ph[4];
    fy_sample_t *mc, *mh;
    char c1[16], c2[16], c3[16], c4[16];
    unsigned i;

    memset(&s, 0, sizeof(s));
    s.cols = st->cols;
    s.rows = st->rows;
    if ((mc = calloc(1, sizeof(*mc))) == NULL || (mh = calloc(1, sizeof(*mh))) == NULL) {
        free(mc);
        return;
    }
    for (tn = a->tunnels; tn != NULL; tn = tn->next) {
        conns += tn->m_conns.count;
        open += tn->streams_open;
        reqs += tn->m_http.count;
        r1 += tn->m_conns.r1;
        r5 += tn->m_conns.r5;
        h1 += tn->m_http.r1;
        h5 += tn->m_http.r5;
        for (i = 0; i < tn->d_conns.n; i++)
            fy_sample_add(mc, tn->d_conns.v[i]);
        for (i = 0; i < tn->d_http.n; i++)
            fy_sample_add(mh, tn->d_http.v[i]);
    }
    fy_sample_pcts(mc, pc);
    fy_sample_pcts(mh, ph);
    free(mc);
    free(mh);
    if (fy_buf_append(&s.b, "\033[H", 3, 1u << 20) != FY_OK)
        return;
    line(&s, "36", NULL, "ferry%*s", (int)FY_MIN(s.cols > 22 ? s.cols - 22 : 1, 60), "(Ctrl+C to quit)");
    line(&s, NULL, NULL, "%s", "");
    line(&s, a->sess_up ? "32" : "33", "Session Status", "%s", state);
    line(&s, NULL, "Session ID", "%s", a->session);
    line(&s, NULL, "Version", "%s", FY_VERSION);
    line(&s, NULL, "Relay", "%s", a->server_url);
    if (a->rtt_ms > 0 || a->sess_up)
        line(&s, NULL, "Latency", "%llums", (unsigned long long)a->rtt_ms);
    else
        line(&s, NULL, "Latency", "-");
    if (a->web_addr[0] != '\0')
        line(&s, NULL, "Web Interface", "http://%s", a->web_addr);
    if (!a->sess_up && (a->last_error[0] || a->last_error_body[0]))
        line(&s, "31", "Last Error", "%s%s%s", a->last_error, a->last_error_body[0] ? ": " : "",
             a->last_error_body);
    for (tn = a->tunnels; tn != NULL; tn = tn->next) {
        if (tn->public_url[0] != '\0' && tn->state == FY_A_CONNECTED)
            line(&s, NULL, "Forwarding", "%s -> %s", tn->public_url, tn->addr_display);
        else
            line(&s, "33", "Forwarding", "%s (%s) -> %s", tn->public_url[0] ? tn->public_url : tn->name,
                 fy_astate_names[tn->state], tn->addr_display);
    }
    line(&s, NULL, NULL, "%s", "");
    line(&s, NULL, "Connections", "%-8s%-8s%-8s%-8s%-8s%-8s", "ttl", "opn", "rt1", "rt5", "p50", "p90");
    fmt_rate(c1, sizeof(c1), r1);
    fmt_rate(c2, sizeof(c2), r5);
    fmt_rate(c3, sizeof(c3), pc[0] / 1e9);
    fmt_rate(c4, sizeof(c4), pc[1] / 1e9);
    line(&s, NULL, "", "%-8llu%-8llu%-8s%-8s%-8s%-8s", (unsigned long long)conns, (unsigned long long)open, c1, c2,
         c3, c4);
    line(&s, NULL, NULL, "%s", "");
    line(&s, NULL, "HTTP Requests", "%-8s%-8s%-8s%-8s%-8s", "ttl", "rt1", "rt5", "p50", "p90");
    fmt_rate(c1, sizeof(c1), h1);
    fmt_rate(c2, sizeof(c2), h5);
    fmt_rate(c3, sizeof(c3), ph[0] / 1e9);
    fmt_rate(c4, sizeof(c4), ph[1] / 1e9);
    line(&s, NULL, "", "%-8llu%-8s%-8s%-8s%-8s", (unsigned long long)reqs, c1, c2, c3, c4);
    if (fy_buf_append(&s.b, "\033[J", 3, 1u << 20) == FY_OK)
        fy_awrite(1, (const char *)fy_buf_data(&s.b), fy_buf_len(&s.b));
    fy_buf_free(&s.b);
    st->last_draw = fy_ev_now(a->ev);
}

static void on_timer(fy_ev_t *ev, fy_timer_t *t)
{
    fy_status_t *st = t->data;
    draw(st);
    fy_timer_arm(ev, t, STATUS_PERIOD_MS);
}

static void get_size(fy_status_t *st)
{
    struct winsize ws;
    st->cols = 80;
    st->rows = 24;
    if (ioctl(1, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0 && ws.ws_row > 0) {
        st->cols = ws.ws_col;
        st->rows = ws.ws_row;
    }
}

int fy_status_start(fy_agent_t *a)
{
    static const char enter[] = "\033[?1049h\033[?25l\033[H\033[2J";
    fy_status_t *st = calloc(1, sizeof(*st));

    if (st == NULL)
        return FY_ERR;
    st->a = a;
    st->timer.cb = on_timer;
    st->timer.data = st;
    get_size(st);
    a->status = st;
    fy_awrite(1, enter, sizeof(enter) - 1);
    draw(st);
    fy_timer_arm(a->ev, &st->timer, STATUS_PERIOD_MS);
    return FY_OK;
}

void fy_status_dirty(fy_agent_t *a)
{
    fy_status_t *st = a->status;
    uint64_t at;
    if (st == NULL)
        return;
    at = FY_MAX(fy_ev_now(a->ev), st->last_draw + STATUS_MIN_MS);
    if (!fy_timer_armed(&st->timer) || st->timer.deadline > at)
        fy_timer_arm_at(a->ev, &st->timer, at);
}

void fy_status_resize(fy_agent_t *a)
{
    static const char clear[] = "\033[H\033[2J";
    fy_status_t *st = a->status;
    if (st == NULL)
        return;
    get_size(st);
    fy_awrite(1, clear, sizeof(clear) - 1);
    draw(st);
}

void fy_status_stop(fy_agent_t *a)
{
    static const char leave[] = "\033[?25h\033[?1049l";
    fy_status_t *st = a->status;
    if (st == NULL)
        return;
    fy_timer_stop(a->ev, &st->timer);
    fy_awrite(1, leave, sizeof(leave) - 1);
    free(st);
    a->status = NULL;
}
