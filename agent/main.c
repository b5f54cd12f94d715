/*
 * main.c: ferry's command line, in ngrok's shape (SPEC.md "ferry (the
 * agent)") so that scripts and libraries written for ngrok drive it:
 *
 *   ferry http [flags] PORT|HOST:PORT|URL
 *   ferry start [flags] NAME... | --all | --none
 *   ferry config add-authtoken TOKEN      (and the v2 verb: ferry authtoken TOKEN)
 *   ferry version | --version
 *
 * Flags take "--flag value" or "--flag=value" (and, as Go's flag package
 * that ngrok uses, one dash). Settings come from the flag, else the
 * environment (FERRY_SERVER, FERRY_AUTHTOKEN), else the config files, else
 * the defaults. Then the agent's loop: the local API, the session, the
 * tunnels, the status block, until SIGTERM or SIGINT.
 */
#include "agent/agent.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <sodium.h>

#define MAX_CONFIGS 16
#define MAX_NAMES   64

static void usage(FILE *f)
{
    fprintf(f,
            "usage: ferry http [flags] PORT|HOST:PORT|URL     expose a local HTTP service\n"
            "       ferry start [flags] NAME... | --all | --none  start tunnels of the config file\n"
            "       ferry config add-authtoken TOKEN           save the token in the config file\n"
            "       ferry authtoken TOKEN                      (the same, ngrok v2's verb)\n"
            "       ferry version | --version\n"
            "flags: --url ID|ID.DOMAIN|URL, --subdomain ID  tunnel id (default: random)\n"
            "       --server URL          relay (env FERRY_SERVER; default ws://127.0.0.1:8080)\n"
            "       --authtoken TOKEN     agent token (env FERRY_AUTHTOKEN)\n"
            "       --config FILE         config file, repeatable (default ~/.config/ferry/ferry.yml)\n"
            "       --host-header rewrite|preserve|VALUE   Host sent to the service (default preserve)\n"
            "       --basic-auth USER:PASS  end users must log in (checked by the relay)\n"
            "       --connections N       tunnel connections, 1..4 (default 1)\n"
            "       --log stdout|stderr|FILE, --log-format term|logfmt|json, --log-level LEVEL\n"
            "       --web-addr ADDR       local API (default 127.0.0.1:4040; false: none)\n"
            "       --ca FILE, --insecure  TLS to a wss:// relay\n"
            "       --random-mask         mask frames with random keys, not the zero key (PROTOCOL.md)\n"
            "       --region R            accepted and ignored (ngrok compatibility)\n"
            "flags also take the form --flag=value\n");
}

static int fatal(const char *fmt, ...) FY_PRINTF(1, 2);
static int fatal(const char *fmt, ...)
{
    va_list ap;
    fflush(stdout);
    fputs("ERROR:  ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return 1;
}

/* What the command line said. */
typedef struct {
    const char *cmd;
    const char *sub;                 /* config's subcommand */
    const char *args[MAX_NAMES];     /* positional arguments after the command */
    unsigned    nargs;
    const char *configs[MAX_CONFIGS];
    unsigned    nconfigs;
    const char *server, *authtoken, *log, *log_format, *log_level, *web_addr, *ca;
    const char *id, *host_header, *basic_auth, *connections;
    bool        all, none, insecure, random_mask, tunnel_flags;
} cli_t;

enum { F_VALUE = 1, F_BOOL = 2, F_TUNNEL = 4 };

static const struct {
    const char *name;
    int         kind;
} flags[] = {
    {"url", F_VALUE | F_TUNNEL}, {"subdomain", F_VALUE | F_TUNNEL}, {"domain", F_VALUE | F_TUNNEL},
    {"hostname", F_VALUE | F_TUNNEL}, {"host-header", F_VALUE | F_TUNNEL}, {"basic-auth", F_VALUE | F_TUNNEL},
    {"auth", F_VALUE | F_TUNNEL}, {"connections", F_VALUE | F_TUNNEL}, {"inspect", F_BOOL | F_TUNNEL},
    {"server", F_VALUE}, {"authtoken", F_VALUE}, {"config", F_VALUE}, {"log", F_VALUE},
    {"log-format", F_VALUE}, {"log-level", F_VALUE}, {"web-addr", F_VALUE}, {"ca", F_VALUE},
    {"insecure", F_BOOL}, {"region", F_VALUE}, {"all", F_BOOL}, {"none", F_BOOL}, {"random-mask", F_BOOL},
};

static int parse_cli(cli_t *c, int argc, char **argv)
{
    int i;

    for (i = 1; i < argc; i++) {
        const char *arg = argv[i], *name, *eq, *val = NULL;
        char flag[64];
        size_t k, nl;
        int kind = -1;

        if (arg[0] != '-' || arg[1] == '\0') {
            if (c->cmd == NULL)
                c->cmd = arg;
            else if (!strcmp(c->cmd, "config") && c->sub == NULL)
                c->sub = arg;
            else if (c->nargs < MAX_NAMES)
                c->args[c->nargs++] = arg;
            else
                return fatal("too many arguments");
            continue;
        }
        name = arg + (arg[1] == '-' ? 2 : 1);
        eq = strchr(name, '=');
        nl = eq ? (size_t)(eq - name) : strlen(name);
        if (nl == 0 || nl >= sizeof(flag)) {
            fatal("unknown flag %s", arg);
            usage(stderr);
            return 1;
        }
        memcpy(flag, name, nl);
        flag[nl] = '\0';
        if (!strcmp(flag, "help") || !strcmp(flag, "h")) {
            usage(stdout);
            exit(0);
        }
        if (!strcmp(flag, "version") || !strcmp(flag, "v")) {
            printf("ferry version %s\n", FY_VERSION);
            exit(0);
        }
        for (k = 0; k < FY_NELEM(flags); k++)
            if (!strcmp(flags[k].name, flag))
                kind = flags[k].kind;
        if (kind < 0) {
            fatal("unknown flag --%s", flag);
            usage(stderr);
            return 1;
        }
        if (eq != NULL)
            val = eq + 1;
        else if (kind & F_VALUE) {
            if (i + 1 >= argc) {
                fatal("--%s needs a value", flag);
                usage(stderr);
                return 1;
            }
            val = argv[++i];
        }
        if (kind & F_BOOL) {
            bool b = true;
            if (val != NULL && fy_conf_bool(val, &b) != FY_OK)
                return fatal("--%s=%s: true or false", flag, val);
            if (!strcmp(flag, "insecure"))
                c->insecure = b;
            else if (!strcmp(flag, "random-mask"))
                c->random_mask = b;
            else if (!strcmp(flag, "all"))
                c->all = b;
            else if (!strcmp(flag, "none"))
                c->none = b;
            continue;
        }
        if (kind & F_TUNNEL)
            c->tunnel_flags = true;
        if (!strcmp(flag, "url") || !strcmp(flag, "subdomain") || !strcmp(flag, "domain")
            || !strcmp(flag, "hostname"))
            c->id = val;
        else if (!strcmp(flag, "host-header"))
            c->host_header = val;
        else if (!strcmp(flag, "basic-auth") || !strcmp(flag, "auth"))
            c->basic_auth = val;
        else if (!strcmp(flag, "connections"))
            c->connections = val;
        else if (!strcmp(flag, "server"))
            c->server = val;
        else if (!strcmp(flag, "authtoken"))
            c->authtoken = val;
        else if (!strcmp(flag, "config")) {
            if (c->nconfigs >= MAX_CONFIGS)
                return fatal("at most %d --config files", MAX_CONFIGS);
            c->configs[c->nconfigs++] = val;
        } else if (!strcmp(flag, "log"))
            c->log = val;
        else if (!strcmp(flag, "log-format"))
            c->log_format = val;
        else if (!strcmp(flag, "log-level"))
            c->log_level = val;
        else if (!strcmp(flag, "web-addr"))
            c->web_addr = val;
        else if (!strcmp(flag, "ca"))
            c->ca = val;
        /* region: accepted and ignored */
    }
    return 0;
}

static int set_server(fy_agent_t *a, const char *url)
{
    char scheme[16], host[256], port[8], path[256];
    size_t pl;
    bool tls = !strncmp(url, "wss://", 6) || !strncmp(url, "https://", 8);

    if (fy__split_url(url, scheme, host, port, path, tls ? "443" : "80") != FY_OK)
        return fatal("--server %s: not a ws:// URL (e.g. ws://relay.example.com:8080)", url);
    if (strcmp(scheme, tls ? "wss" : "ws") && strcmp(scheme, tls ? "https" : "http"))
        return fatal("--server %s: the scheme must be ws:// or wss://", url);
    a->server_tls = tls;
    snprintf(a->server_host, sizeof(a->server_host), "%s", host);
    if (fy__resolve(host, port, &a->server, &a->serverlen) != FY_OK)
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

static int save_token(const cli_t *c, const char *token)
{
    char path[1024], err[1200];
    if (token == NULL)
        return fatal("usage: ferry config add-authtoken TOKEN [--config FILE]");
    if (c->nconfigs > 0)
        snprintf(path, sizeof(path), "%s", c->configs[c->nconfigs - 1]);
    else
        fy_acfg_default_path(path, sizeof(path));
    if (fy_acfg_save_authtoken(path, token, err, sizeof(err)) != FY_OK)
        return fatal("%s", err);
    printf("Authtoken saved to configuration file: %s\n", path);
    return 0;
}

static int open_log(const char *to, int *fd)
{
    *fd = -1;
    if (to == NULL || to[0] == '\0' || !strcmp(to, "false") || !strcmp(to, "none"))
        return 0;
    if (!strcmp(to, "stdout"))
        *fd = 1;
    else if (!strcmp(to, "stderr"))
        *fd = 2;
    else if ((*fd = open(to, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644)) < 0)
        return fatal("--log %s: %s", to, strerror(errno));
    return 0;
}

static void on_signal(fy_ev_t *ev, fy_io_t *io, uint32_t events)
{
    fy_agent_t *a = io->data;
    struct signalfd_siginfo si;
    while (read(io->fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
        if (si.ssi_signo == SIGWINCH)
            fy_status_resize(a);
        else
            fy_ev_stop(ev);
    }
}

static void on_tick(fy_ev_t *ev, fy_timer_t *t)
{
    fy_agent_t *a = t->data;
    fy_atunnel_tick(a);
    fy_status_dirty(a);
    fy_timer_arm(ev, t, FY_METER_TICK_MS);
}

/* The tunnel of `ferry http ADDR` and its flags. */
static int http_tunnel(const cli_t *c, fy_tcfg_t *tc)
{
    uint64_t n;

    if (c->nargs == 0) {
        usage(stderr);
        return fatal("ferry http needs the address to expose: PORT, HOST:PORT or URL");
    }
    if (c->nargs > 1)
        return fatal("one address to expose, got \"%s\" and \"%s\"", c->args[0], c->args[1]);
    fy_tcfg_init(tc, "command_line");
    snprintf(tc->ups[0].url, sizeof(tc->ups[0].url), "%s", c->args[0]);
    tc->ups[0].priority = 1;
    tc->ups[0].weight = 1;
    tc->nups = 1;
    if (c->id != NULL && fy_tcfg_set_id(tc, c->id) != FY_OK)
        return fatal("%s: not a tunnel id (1-63 of a-z 0-9 -)", c->id);
    if (c->host_header != NULL) {
        if (c->host_header[0] == '\0' || strlen(c->host_header) >= sizeof(tc->host_header)
            || strpbrk(c->host_header, "\r\n"))
            return fatal("--host-header %s: rewrite, preserve or a host name", c->host_header);
        snprintf(tc->host_header, sizeof(tc->host_header), "%s", c->host_header);
    }
    if (c->basic_auth != NULL) {
        if (strchr(c->basic_auth, ':') == NULL || strlen(c->basic_auth) >= sizeof(tc->basic_auth)
            || strpbrk(c->basic_auth, "\r\n"))
            return fatal("--basic-auth %s: expected USER:PASS", c->basic_auth);
        snprintf(tc->basic_auth, sizeof(tc->basic_auth), "%s", c->basic_auth);
    }
    if (c->connections != NULL) {
        if (fy_conf_uint(c->connections, 1, FY_AGENT_MAX_CONNS, &n) != FY_OK)
            return fatal("--connections %s: a number from 1 to %d", c->connections, FY_AGENT_MAX_CONNS);
        tc->connections = (unsigned)n;
    }
    return 0;
}

static int level_of(const char *s, enum fy_alog_level *lvl)
{
    static const char *const names[] = {"debug", "info", "warn", "error", "crit"};
    unsigned i;
    for (i = 0; i < FY_NELEM(names); i++)
        if (!strcmp(s, names[i]) || (i == 0 && !strcmp(s, "dbug")) || (i == 3 && !strcmp(s, "eror"))) {
            *lvl = (enum fy_alog_level)i;
            return 0;
        }
    return -1;
}

static int run(cli_t *c)
{
    fy_agent_t a;
    fy_acfg_t cfg;
    fy_tcfg_t http;
    const fy_tcfg_t *defs[MAX_NAMES + 1];
    unsigned ndefs = 0, i;
    char path[1024], err[1400], missing[1100] = "";
    const char *server, *token, *log_to, *log_format, *log_level, *web_addr;
    enum fy_alog_format fmt;
    enum fy_alog_level lvl = FY_AL_INFO;
    bool is_http = !strcmp(c->cmd, "http"), tty;
    uint8_t sid[16];
    sigset_t set;
    int log_fd = -1, rc = 0;

    memset(&a, 0, sizeof(a));
    a.sigio.fd = -1;
    fy_acfg_init(&cfg);
    if (!is_http && c->tunnel_flags)
        return fatal("tunnel flags (--subdomain, --host-header, ...) go with ferry http; "
                     "ferry start takes its tunnels from the config file");
    /* Config files: later override earlier; a missing one is not fatal. */
    if (c->nconfigs == 0) {
        fy_acfg_default_path(path, sizeof(path));
        c->configs[c->nconfigs++] = path;
    }
    for (i = 0; i < c->nconfigs; i++) {
        int lrc = fy_acfg_load(&cfg, c->configs[i], err, sizeof(err));
        if (lrc == FY_AGAIN)
            snprintf(missing, sizeof(missing), "%s", c->configs[i]);
        else if (lrc != FY_OK) {
            fy_acfg_free(&cfg);
            return fatal("%s", err);
        }
    }
    if (is_http) {
        if (http_tunnel(c, &http) != 0)
            goto fail;
        defs[ndefs++] = &http;
    } else {
        if (c->nargs == 0 && !c->all && !c->none) {
            usage(stderr);
            fatal("ferry start needs tunnel names from the config file, --all or --none");
            goto fail;
        }
        if (c->all)
            for (i = 0; i < cfg.ntunnels && ndefs < MAX_NAMES; i++)
                if (!cfg.tunnels[i].not_http)      /* --all skips tcp/tls tunnels of an ngrok config */
                    defs[ndefs++] = &cfg.tunnels[i];
        for (i = 0; i < c->nargs; i++) {
            const fy_tcfg_t *t = fy_acfg_tunnel(&cfg, c->args[i]);
            unsigned j;
            bool dup = false;
            if (t == NULL) {
                fatal("tunnel \"%s\" is not defined in the config file%s (%s)", c->args[i],
                      c->nconfigs > 1 ? "s" : "", c->configs[c->nconfigs - 1]);
                goto fail;
            }
            for (j = 0; j < ndefs; j++)
                dup = dup || defs[j] == t;
            if (!dup && ndefs < MAX_NAMES)
                defs[ndefs++] = t;
        }
    }
    server = c->server ? c->server : getenv("FERRY_SERVER");
    if (server == NULL || server[0] == '\0')
        server = cfg.server_addr[0] ? cfg.server_addr : "ws://127.0.0.1:8080";
    token = c->authtoken ? c->authtoken : getenv("FERRY_AUTHTOKEN");
    if (token == NULL || token[0] == '\0')
        token = cfg.has_authtoken ? cfg.authtoken : NULL;
    log_to = c->log ? c->log : (cfg.log[0] ? cfg.log : NULL);
    log_format = c->log_format ? c->log_format : (cfg.log_format[0] ? cfg.log_format : "term");
    log_level = c->log_level ? c->log_level : (cfg.log_level[0] ? cfg.log_level : "info");
    web_addr = c->web_addr ? c->web_addr : (cfg.web_addr[0] ? cfg.web_addr : NULL);
    if (strcmp(log_format, "term") && strcmp(log_format, "logfmt") && strcmp(log_format, "json")) {
        fatal("--log-format %s: term, logfmt or json", log_format);
        goto fail;
    }
    if (level_of(log_level, &lvl) != 0) {
        fatal("--log-level %s: debug, info, warn, error or crit", log_level);
        goto fail;
    }
    if (set_server(&a, server) != 0)
        goto fail;
    if (a.server_tls) {
        const char *ca = c->ca ? c->ca : cfg.server_ca;
        if ((a.tls_ctx = fy_tls_client_ctx(ca, c->insecure, err, sizeof(err))) == NULL) {
            fatal("%s", err);
            goto fail;
        }
    } else if (c->ca != NULL || c->insecure) {
        fatal("--ca and --insecure are for a wss:// relay; --server %s is not one", server);
        goto fail;
    }
    if (token != NULL && (strlen(token) >= sizeof(a.authtoken) || strpbrk(token, "\r\n"))) {
        fatal("the authtoken is not valid (one line, at most %zu bytes)", sizeof(a.authtoken) - 1);
        goto fail;
    }
    if (token != NULL)
        snprintf(a.authtoken, sizeof(a.authtoken), "%s", token);
    if (sodium_init() < 0) {
        fatal("libsodium failed to initialise");
        goto fail;
    }
    if (open_log(log_to, &log_fd) != 0)
        goto fail;
    fmt = !strcmp(log_format, "json") ? FY_AL_JSON : !strcmp(log_format, "logfmt") ? FY_AL_LOGFMT : FY_AL_TERM;
    fy_alog_setup(log_fd, fmt, lvl);
    tty = isatty(1) == 1;
    a.print_forwarding = log_fd != 1 && (!tty || cfg.console_ui == 0);
    a.base_backoff_ms = cfg.reconnect_ms;
    a.max_backoff_ms = FY_MAX(cfg.max_interval_ms, cfg.reconnect_ms);
    a.backoff = cfg.backoff;
    randombytes_buf(sid, sizeof(sid));
    sodium_bin2hex(a.session, sizeof(a.session), sid, sizeof(sid));
    signal(SIGPIPE, SIG_IGN);
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGWINCH);
    sigprocmask(SIG_BLOCK, &set, NULL);
    if ((a.ev = fy_ev_new()) == NULL || (a.sigio.fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC)) < 0) {
        fatal("%s", strerror(errno));
        goto fail;
    }
    a.sigio.cb = on_signal;
    a.sigio.data = &a;
    if (fy_io_set(a.ev, &a.sigio, EPOLLIN) != FY_OK) {
        fatal("epoll: %s", strerror(errno));
        goto fail;
    }
    /* Every tunnel is checked (addresses resolved) before anything starts. */
    for (i = 0; i < ndefs; i++) {
        if (defs[i]->err[0] != '\0') {
            fatal("%s", defs[i]->err);
            goto fail;
        }
        if (fy_atunnel_new(&a, defs[i], err, sizeof(err)) == NULL) {
            fatal("tunnel %s: %s", defs[i]->name, err);
            goto fail;
        }
    }
    fy_alog(FY_AL_INFO, "starting ferry", "obj", "app", "version", FY_VERSION, "server", a.server_url, NULL);
    if (missing[0] != '\0')
        fy_alog(FY_AL_DEBUG, "no config file", "obj", "config", "path", missing, NULL);
    fy_tun_random_masks(c->random_mask);
    if (c->insecure)
        fy_alog(FY_AL_WARN, "--insecure: the relay's TLS certificate will NOT be verified", "obj", "app", NULL);
    if (web_addr == NULL || strcmp(web_addr, "false") != 0) {
        if (fy_api_start(&a, web_addr ? web_addr : "127.0.0.1:4040", web_addr == NULL, err, sizeof(err)) != FY_OK) {
            if (web_addr != NULL) {
                fatal("%s", err);
                goto fail;
            }
            fy_alog(FY_AL_WARN, "no local API: every port from 4040 on is taken", "obj", "web", "err", err, NULL);
        }
    }
    if (tty && log_fd != 1 && cfg.console_ui != 0 && fy_status_start(&a) != FY_OK) {
        fatal("out of memory");
        goto fail;
    }
    a.tick.cb = on_tick;
    a.tick.data = &a;
    fy_timer_arm(a.ev, &a.tick, FY_METER_TICK_MS);
    {
        fy_atunnel_t *tn;
        for (tn = a.tunnels; tn != NULL; tn = tn->next)
            fy_atunnel_start(tn);
    }
    fy_session_start(&a);
    fy_ev_run(a.ev);
    fy_alog(FY_AL_INFO, "received stop request", "obj", "app", NULL);
    goto out;
fail:
    rc = 1;
out:
    a.stopping = true;
    if (a.ev != NULL) {
        fy_api_stop(&a);
        fy_status_stop(&a);
        fy_session_stop(&a);
        fy_timer_stop(a.ev, &a.tick);
        while (a.tunnels != NULL)
            fy_atunnel_remove(a.tunnels);
        fy_tls_pump_close_all();
        /* Closes queue frees that queue more frees: a few rounds. */
        for (i = 0; i < 6; i++)
            fy_ev_run_tasks(a.ev);
        fy_pipe_pool_free();
        fy_ev_free(a.ev);
    }
    if (a.tls_ctx != NULL)
        SSL_CTX_free(a.tls_ctx);
    if (a.sigio.fd >= 0)
        close(a.sigio.fd);
    if (log_fd > 2)
        close(log_fd);
    fy_acfg_free(&cfg);
    return rc;
}

int main(int argc, char **argv)
{
    cli_t c;
    int rc;

    /* Line-buffered stdout even on a pipe: tools read it line by line. */
    setvbuf(stdout, NULL, _IOLBF, 0);
    memset(&c, 0, sizeof(c));
    if ((rc = parse_cli(&c, argc, argv)) != 0)
        return rc;
    if (c.cmd == NULL) {
        usage(stderr);
        return fatal("a command is needed: http, start, config, authtoken or version");
    }
    if (!strcmp(c.cmd, "version")) {
        printf("ferry version %s\n", FY_VERSION);
        return 0;
    }
    if (!strcmp(c.cmd, "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(c.cmd, "authtoken"))
        return save_token(&c, c.nargs > 0 ? c.args[0] : NULL);
    if (!strcmp(c.cmd, "config")) {
        if (c.sub != NULL && !strcmp(c.sub, "add-authtoken"))
            return save_token(&c, c.nargs > 0 ? c.args[0] : NULL);
        usage(stderr);
        return fatal("unknown config command \"%s\" (this version has: config add-authtoken TOKEN)",
                     c.sub ? c.sub : "");
    }
    if (!strcmp(c.cmd, "http") || !strcmp(c.cmd, "start"))
        return run(&c);
    fatal("unknown command \"%s\"", c.cmd);
    usage(stderr);
    return 1;
}
