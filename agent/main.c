/*
 * main.c: ferry's command line (ngrok's shape, SPEC.md "ferry (the agent)")
 * and the agent's loop.
 */
#include "agent/agent.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <sodium.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: ferry http [flags] PORT|HOST:PORT|URL   expose a local HTTP service\n"
            "       ferry version | --version\n"
            "flags: --subdomain ID | --url ID|ID.DOMAIN|URL   tunnel id (default: random)\n"
            "       --server URL          relay (env FERRY_SERVER; default ws://127.0.0.1:8080)\n"
            "       --authtoken TOKEN     agent token (env FERRY_AUTHTOKEN)\n"
            "       --connections N       tunnel connections, 1..4 (default 1)\n"
            "       --log stdout|stderr|FILE, --log-format term|logfmt|json\n"
            "       --region R            accepted and ignored (ngrok compatibility)\n");
}

static int fatal(const char *fmt, ...) FY_PRINTF(1, 2);
static int fatal(const char *fmt, ...)
{
    va_list ap;
    fputs("ERROR:  ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return 1;
}

/* Resolve host:port, IPv4 first (a "localhost" service usually listens there). */
static int resolve(const char *host, const char *port, struct sockaddr_storage *ss, socklen_t *len)
{
    struct addrinfo hints, *res = NULL, *ai, *pick = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    if (getaddrinfo(host, port, &hints, &res) != 0)
        return FY_ERR;
    for (ai = res; ai != NULL; ai = ai->ai_next)
        if (ai->ai_family == AF_INET && pick == NULL)
            pick = ai;
    if (pick == NULL)
        pick = res;
    memcpy(ss, pick->ai_addr, pick->ai_addrlen);
    *len = pick->ai_addrlen;
    freeaddrinfo(res);
    return FY_OK;
}

/* Split "scheme://host:port/path" into its parts (host may be [v6]). */
static int split_url(const char *url, char *scheme, char *host, char *port, char *path, const char *defport)
{
    const char *p = strstr(url, "://"), *h, *slash, *colon;
    size_t n;

    if (p == NULL || (size_t)(p - url) >= 16)
        return FY_ERR;
    memcpy(scheme, url, (size_t)(p - url));
    scheme[p - url] = '\0';
    h = p + 3;
    slash = strchr(h, '/');
    n = slash ? (size_t)(slash - h) : strlen(h);
    if (n == 0 || n >= 256)
        return FY_ERR;
    if (h[0] == '[') {
        const char *rb = memchr(h, ']', n);
        if (rb == NULL)
            return FY_ERR;
        memcpy(host, h + 1, (size_t)(rb - h - 1));
        host[rb - h - 1] = '\0';
        colon = rb + 1 < h + n && rb[1] == ':' ? rb + 1 : NULL;
    } else {
        colon = memchr(h, ':', n);
        memcpy(host, h, colon ? (size_t)(colon - h) : n);
        host[colon ? (size_t)(colon - h) : n] = '\0';
    }
    if (colon != NULL) {
        size_t pl = (size_t)(h + n - colon - 1);
        if (pl == 0 || pl > 5)
            return FY_ERR;
        memcpy(port, colon + 1, pl);
        port[pl] = '\0';
    } else {
        strcpy(port, defport);
    }
    snprintf(path, 256, "%s", slash ? slash : "");
    return host[0] ? FY_OK : FY_ERR;
}

static int set_server(fy_agent_t *a, const char *url)
{
    char scheme[16], host[256], port[8], path[256];
    size_t pl;

    if (split_url(url, scheme, host, port, path, strcmp(url, "wss") > 0 && !strncmp(url, "wss", 3) ? "443" : "80") != FY_OK)
        return fatal("--server %s: not a ws:// URL (e.g. ws://relay.example.com:8080)", url);
    if (!strcmp(scheme, "wss") || !strcmp(scheme, "https"))
        return fatal("--server %s: wss:// (TLS to the relay) is not implemented yet in ferry %s", url, FY_VERSION);
    if (strcmp(scheme, "ws") && strcmp(scheme, "http"))
        return fatal("--server %s: the scheme must be ws://", url);
    if (resolve(host, port, &a->server, &a->serverlen) != FY_OK)
        return fatal("--server %s: cannot resolve %s", url, host);
    pl = strlen(path);
    while (pl > 0 && path[pl - 1] == '/')
        path[--pl] = '\0';
    snprintf(a->agent_path, sizeof(a->agent_path), "%s", pl ? path : "/_ferry/tunnel");
    if (strchr(host, ':'))
        snprintf(a->host_header, sizeof(a->host_header), "[%s]:%s", host, port);
    else
        snprintf(a->host_header, sizeof(a->host_header), "%s:%s", host, port);
    snprintf(a->server_url, sizeof(a->server_url), "%s", url);
    return 0;
}

static int set_upstream(fy_atunnel_t *tn, const char *arg)
{
    char scheme[16], host[256], port[8], path[256];
    uint64_t p;

    if (fy_conf_uint(arg, 1, 65535, &p) == FY_OK) {
        strcpy(host, "localhost");
        snprintf(port, sizeof(port), "%s", arg);
    } else if (strstr(arg, "://") != NULL) {
        if (split_url(arg, scheme, host, port, path, "80") != FY_OK)
            return fatal("%s: not a URL", arg);
        if (strcmp(scheme, "http") != 0)
            return fatal("%s: only http:// services are supported in ferry %s", arg, FY_VERSION);
    } else {
        const char *colon = strrchr(arg, ':');
        if (colon == NULL || colon == arg || strlen(colon + 1) > 5 || (size_t)(colon - arg) >= sizeof(host))
            return fatal("%s: expected PORT, HOST:PORT or a URL", arg);
        memcpy(host, arg, (size_t)(colon - arg));
        host[colon - arg] = '\0';
        snprintf(port, sizeof(port), "%s", colon + 1);
    }
    if (fy_conf_uint(port, 1, 65535, &p) != FY_OK)
        return fatal("%s: bad port", arg);
    if (resolve(host, port, &tn->up, &tn->uplen) != FY_OK)
        return fatal("%s: cannot resolve %s", arg, host);
    snprintf(tn->addr_display, sizeof(tn->addr_display), "http://%s:%s", host, port);
    snprintf(tn->up_name, sizeof(tn->up_name), "%s:%s", host, port);
    return 0;
}

/* --url / --subdomain: "ID", "ID.domain" or a URL whose first label is ID. */
static int set_id(fy_atunnel_t *tn, const char *v)
{
    const char *s = strstr(v, "://") ? strstr(v, "://") + 3 : v;
    size_t n = strcspn(s, ".:/");
    if (fy_conf_tunnel_id(s, n, tn->id) != FY_OK)
        return fatal("%s: not a tunnel id (1-63 of a-z 0-9 -)", v);
    return 0;
}

static void on_signal(fy_ev_t *ev, fy_io_t *io, uint32_t events)
{
    struct signalfd_siginfo si;
    while (read(io->fd, &si, sizeof(si)) == (ssize_t)sizeof(si))
        fy_ev_stop(ev);
}

int main(int argc, char **argv)
{
    fy_agent_t a;
    fy_atunnel_t tn;
    const char *server = getenv("FERRY_SERVER"), *token = getenv("FERRY_AUTHTOKEN");
    const char *log_to = NULL, *log_format = "term", *addr = NULL;
    enum fy_alog_format fmt;
    uint8_t sid[16];
    sigset_t set;
    int i, log_fd = -1;

    memset(&a, 0, sizeof(a));
    memset(&tn, 0, sizeof(tn));
    if (argc < 2) {
        usage(stderr);
        return 1;
    }
    if (!strcmp(argv[1], "version") || !strcmp(argv[1], "--version") || !strcmp(argv[1], "-v")) {
        printf("ferry version %s\n", FY_VERSION);
        return 0;
    }
    if (!strcmp(argv[1], "help") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "http") != 0) {
        usage(stderr);
        return fatal("unknown command \"%s\" (this version has: http, version)", argv[1]);
    }
    if (sodium_init() < 0)
        return fatal("libsodium failed to initialise");
    snprintf(tn.name, sizeof(tn.name), "command_line");
    tn.want_conns = 1;
    for (i = 2; i < argc; i++) {
        char flag[64];
        const char *arg = argv[i], *val = NULL, *eq;

        if (strncmp(arg, "--", 2) != 0) {
            if (addr != NULL)
                return fatal("one address to expose, got \"%s\" and \"%s\"", addr, arg);
            addr = arg;
            continue;
        }
        eq = strchr(arg, '=');
        snprintf(flag, sizeof(flag), "%.*s", eq ? (int)(eq - arg) : (int)strlen(arg), arg);
        if (eq)
            val = eq + 1;
        else if (i + 1 < argc)
            val = argv[++i];
        if (val == NULL) {
            usage(stderr);
            return fatal("%s needs a value", flag);
        }
        if (!strcmp(flag, "--subdomain") || !strcmp(flag, "--url") || !strcmp(flag, "--domain")) {
            if (set_id(&tn, val))
                return 1;
        } else if (!strcmp(flag, "--server")) {
            server = val;
        } else if (!strcmp(flag, "--authtoken")) {
            token = val;
        } else if (!strcmp(flag, "--connections")) {
            uint64_t n;
            if (fy_conf_uint(val, 1, FY_AGENT_MAX_CONNS, &n) != FY_OK)
                return fatal("--connections %s: a number from 1 to %d", val, FY_AGENT_MAX_CONNS);
            tn.want_conns = (unsigned)n;
        } else if (!strcmp(flag, "--log")) {
            log_to = val;
        } else if (!strcmp(flag, "--log-format")) {
            if (strcmp(val, "term") && strcmp(val, "logfmt") && strcmp(val, "json"))
                return fatal("--log-format %s: term, logfmt or json", val);
            log_format = val;
        } else if (!strcmp(flag, "--region")) {
            /* accepted for ngrok compatibility */
        } else if (!strcmp(flag, "--host-header")) {
            if (strcmp(val, "preserve") != 0)
                return fatal("--host-header %s: only preserve is implemented in ferry %s", val, FY_VERSION);
        } else {
            usage(stderr);
            return fatal("unknown flag %s", flag);
        }
    }
    if (addr == NULL) {
        usage(stderr);
        return fatal("ferry http needs the address to expose: PORT, HOST:PORT or URL");
    }
    if (set_upstream(&tn, addr) || set_server(&a, server ? server : "ws://127.0.0.1:8080"))
        return 1;
    if (token != NULL)
        snprintf(a.authtoken, sizeof(a.authtoken), "%s", token);
    fmt = !strcmp(log_format, "json") ? FY_AL_JSON : !strcmp(log_format, "logfmt") ? FY_AL_LOGFMT : FY_AL_TERM;
    if (log_to != NULL) {
        if (!strcmp(log_to, "stdout"))
            log_fd = 1;
        else if (!strcmp(log_to, "stderr"))
            log_fd = 2;
        else if (strcmp(log_to, "false") != 0
                 && (log_fd = open(log_to, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644)) < 0)
            return fatal("--log %s: %s", log_to, strerror(errno));
    }
    fy_alog_setup(log_fd, fmt);
    a.print_forwarding = log_fd != 1;
    a.max_backoff_ms = 120000;
    randombytes_buf(sid, sizeof(sid));
    sodium_bin2hex(a.session, sizeof(a.session), sid, sizeof(sid));
    signal(SIGPIPE, SIG_IGN);
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigprocmask(SIG_BLOCK, &set, NULL);
    if ((a.ev = fy_ev_new()) == NULL || (a.sigio.fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC)) < 0)
        return fatal("%s", strerror(errno));
    a.sigio.cb = on_signal;
    a.sigio.data = &a;
    if (fy_io_set(a.ev, &a.sigio, EPOLLIN) != FY_OK)
        return fatal("epoll: %s", strerror(errno));
    tn.agent = &a;
    a.tunnels = &tn;
    fy_alog(FY_AL_INFO, "starting ferry", "obj", "app", "version", FY_VERSION, "server", a.server_url, NULL);
    fy_atunnel_start(&tn);
    fy_ev_run(a.ev);
    fy_alog(FY_AL_INFO, "received stop request", "obj", "app", NULL);
    fy_atunnel_stop(&tn);
    fy_ev_run_tasks(a.ev);   /* closes queue frees that queue more: two rounds */
    fy_ev_run_tasks(a.ev);
    close(a.sigio.fd);
    fy_ev_free(a.ev);
    return 0;
}
