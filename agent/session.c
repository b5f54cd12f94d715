/*
 * session.c: the agent's session with the relay, as ngrok's tools see it:
 * "client session established" once the relay is reachable and accepts us,
 * "session closed, starting reconnect loop" when it stops being so.
 *
 * In ferry each tunnel is its own WebSocket, so the session is up while
 * any tunnel connection is READY. With no tunnel up (`ferry start --none`,
 * or every tunnel deleted through the API) a plain GET {agent_path} to the
 * relay answers what an upgrade would (SPEC.md): 200 means up. It is asked
 * every 10 s while up, and with backoff while down. A relay that refuses a
 * tunnel with an HTTP answer is still there: that does not end the session.
 */
#include "agent/agent.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#define SESSION_CHECK_MS 10000
#define SESSION_PROBE_MS 10000

static void on_timer(fy_ev_t *ev, fy_timer_t *t);
static void on_probe(fy_probe_t *p, int status, const char *body, size_t blen, const char *err);

bool fy_session_any_ready(const fy_agent_t *a)
{
    const fy_atunnel_t *tn;
    for (tn = a->tunnels; tn != NULL; tn = tn->next)
        if (fy_atunnel_any_ready(tn))
            return true;
    return false;
}

const char *fy_session_status(const fy_agent_t *a)
{
    if (a->sess_up)
        return "online";
    return a->sess_ever ? "reconnecting" : "connecting";
}

static void set_up(fy_agent_t *a)
{
    a->state = FY_A_CONNECTED;
    a->sess_backoff_ms = 0;
    if (a->sess_up)
        return;
    a->sess_up = true;
    a->sess_ever = true;
    a->last_error[0] = '\0';
    a->last_error_body[0] = '\0';
    fy_alog(FY_AL_INFO, "client session established", "obj", "csess", "id", a->session, NULL);
    fy_status_dirty(a);
}

static void set_down(fy_agent_t *a, const char *err, bool is_error)
{
    a->state = is_error ? FY_A_ERROR : FY_A_DISCONNECTED;
    fy_status_dirty(a);
    if (!a->sess_up)
        return;
    a->sess_up = false;
    fy_alog(FY_AL_WARN, "session closed, starting reconnect loop", "obj", "csess", "err", err ? err : "closed",
            NULL);
}

static void note_error(fy_agent_t *a, const char *err, const char *body)
{
    if (err != NULL)
        snprintf(a->last_error, sizeof(a->last_error), "%s", err);
    if (body != NULL)
        snprintf(a->last_error_body, sizeof(a->last_error_body), "%s", body);
}

static uint64_t next_backoff(fy_agent_t *a)
{
    uint64_t base = a->sess_backoff_ms ? a->sess_backoff_ms : a->base_backoff_ms;
    a->sess_backoff_ms = a->backoff ? FY_MIN(base * 2, a->max_backoff_ms) : base;
    return FY_MIN(base, a->max_backoff_ms);
}

void fy_session_start(fy_agent_t *a)
{
    a->stimer.cb = on_timer;
    a->stimer.data = a;
    a->sprobe.io.fd = -1;
    a->state = FY_A_CONNECTING;
    /* With tunnels starting, their READY usually answers first. */
    fy_timer_arm(a->ev, &a->stimer, a->tunnels != NULL ? 1000 : 0);
}

void fy_session_stop(fy_agent_t *a)
{
    fy_timer_stop(a->ev, &a->stimer);
    fy_probe_cancel(&a->sprobe);
    fy_buf_free(&a->sprobe.buf);
}

void fy_session_ready(fy_agent_t *a)
{
    set_up(a);
}

void fy_session_failed(fy_agent_t *a, const char *err, const char *body, bool was_ready)
{
    if (a->stopping)
        return;
    if (body != NULL) {
        /* The relay answered (a refusal): it is there. */
        note_error(a, err, body);
        if (!a->sess_up)
            a->state = FY_A_ERROR;
        fy_status_dirty(a);
        return;
    }
    if (fy_session_any_ready(a))
        return;
    note_error(a, err, NULL);
    set_down(a, err, !was_ready);
    /* Ask the relay soon, so that the session state does not lag. */
    if (!a->sprobe.busy && (!fy_timer_armed(&a->stimer) || a->stimer.deadline > fy_ev_now(a->ev) + 2000))
        fy_timer_arm(a->ev, &a->stimer, 1000);
}

static void on_timer(fy_ev_t *ev, fy_timer_t *t)
{
    fy_agent_t *a = t->data;
    char req[2048];
    int n;

    if (a->stopping)
        return;
    if (fy_session_any_ready(a)) {
        set_up(a);
        fy_timer_arm(ev, t, SESSION_CHECK_MS);
        return;
    }
    if (a->sprobe.busy)
        return;
    n = snprintf(req, sizeof(req),
                 "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: ferry/%s\r\nFerry-Session: %s\r\n%s%s%s"
                 "Connection: close\r\n\r\n",
                 a->agent_path, a->host_header, FY_VERSION, a->session,
                 a->authtoken[0] ? "Authorization: Bearer " : "", a->authtoken, a->authtoken[0] ? "\r\n" : "");
    a->sprobe.cb = on_probe;
    a->sprobe.data = a;
    a->sprobe.tls_ctx = a->tls_ctx;
    a->sprobe.tls_host = a->server_host;
    if (n < 0 || (size_t)n >= sizeof(req)
        || fy_probe_start(&a->sprobe, ev, (struct sockaddr *)&a->server, a->serverlen, a->host_header, req,
                          (size_t)n, SESSION_PROBE_MS) != FY_OK) {
        char err[400];
        snprintf(err, sizeof(err), "dial tcp %s: %s", a->host_header, strerror(errno));
        on_probe(&a->sprobe, 0, NULL, 0, err);
    }
}

static void on_probe(fy_probe_t *p, int status, const char *body, size_t blen, const char *err)
{
    fy_agent_t *a = p->data;
    char text[512], msg[200];
    size_t i, n;

    if (a->stopping)
        return;
    if (fy_session_any_ready(a)) {
        set_up(a);
        fy_timer_arm(a->ev, &a->stimer, SESSION_CHECK_MS);
        return;
    }
    if (status == 200) {
        set_up(a);
        fy_timer_arm(a->ev, &a->stimer, SESSION_CHECK_MS);
        return;
    }
    if (status > 0) {
        n = FY_MIN(blen, sizeof(text) - 1);
        for (i = 0; i < n; i++)
            text[i] = (body[i] == '\n' || body[i] == '\r') ? ' ' : body[i];
        while (n > 0 && text[n - 1] == ' ')
            n--;
        text[n] = '\0';
        snprintf(msg, sizeof(msg), "the relay answered %d", status);
        if (a->sess_up || a->state != FY_A_ERROR || strcmp(a->last_error_body, text) != 0)
            fy_alog(FY_AL_ERROR, "session refused by the relay", "obj", "csess", "err", text[0] ? text : msg,
                    NULL);
        note_error(a, msg, text);
        set_down(a, msg, true);
    } else {
        if (a->sess_up || a->state == FY_A_CONNECTING)
            fy_alog(FY_AL_ERROR, "failed to reconnect session", "obj", "csess", "err", err, NULL);
        note_error(a, err, NULL);
        set_down(a, err, true);
    }
    fy_timer_arm(a->ev, &a->stimer, next_backoff(a));
}
