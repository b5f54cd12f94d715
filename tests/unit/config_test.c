/*
 * config_test.c: ferryd's config loader and the request router. Includes
 * the .c files under test (h2o's habit) so that statics are reachable.
 */
#include "tests/unit/unit.h"

#include "master/config.c"
#include "worker/route.c"

#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

static fy_conf_t *load_text(const char *yaml, char *err, size_t errlen)
{
    char path[] = "/tmp/ferry-config-test-XXXXXX";
    int fd = mkstemp(path);
    fy_conf_t *c;
    cr_assert(fd >= 0);
    cr_assert(write(fd, yaml, strlen(yaml)) == (ssize_t)strlen(yaml));
    close(fd);
    c = fy_config_load(path, err, errlen);
    unlink(path);
    return c;
}

Test(conf, durations)
{
    uint64_t ms;
    cr_assert(fy_conf_duration("500ms", &ms) == FY_OK && ms == 500);
    cr_assert(fy_conf_duration("10s", &ms) == FY_OK && ms == 10000);
    cr_assert(fy_conf_duration("2m", &ms) == FY_OK && ms == 120000);
    cr_assert(fy_conf_duration("30d", &ms) == FY_OK && ms == 30ull * 86400000);
    cr_assert(fy_conf_duration("7", &ms) == FY_OK && ms == 7000);
    cr_assert(fy_conf_duration("", &ms) == FY_ERR);
    cr_assert(fy_conf_duration("s", &ms) == FY_ERR);
    cr_assert(fy_conf_duration("-1s", &ms) == FY_ERR);
    cr_assert(fy_conf_duration("10x", &ms) == FY_ERR);
    cr_assert(fy_conf_duration("99999999999999999999s", &ms) == FY_ERR);
    cr_assert(fy_conf_duration("18446744073709551615d", &ms) == FY_ERR);
}

Test(conf, tunnel_ids)
{
    char id[FY_ID_MAX + 1];
    cr_assert(fy_conf_tunnel_id("AbC-9", 5, id) == FY_OK);
    cr_assert_str_eq(id, "abc-9");
    cr_assert(fy_conf_tunnel_id("", 0, id) == FY_ERR);
    cr_assert(fy_conf_tunnel_id("a.b", 3, id) == FY_ERR);
    cr_assert(fy_conf_tunnel_id("a_b", 3, id) == FY_ERR);
    cr_assert(fy_conf_tunnel_id("0123456789012345678901234567890123456789012345678901234567890123", 64, id) == FY_ERR);
    cr_assert(fy_conf_tunnel_id("012345678901234567890123456789012345678901234567890123456789012", 63, id) == FY_OK);
}

Test(config, defaults_without_a_file)
{
    char err[256];
    fy_conf_t *c = fy_config_load(NULL, err, sizeof(err));
    cr_assert_not_null(c);
    cr_assert_str_eq(c->listen[0], "127.0.0.1:8080");
    cr_assert_str_eq(c->admin, "127.0.0.1:8081");
    cr_assert_str_eq(c->domain, "localhost");
    cr_assert_eq(c->limits.max_header_bytes, 32768);
    cr_assert_eq(c->limits.header_timeout, 10000);
    cr_assert(fy_config_check(c, err, sizeof(err)) == FY_OK);
    fy_config_free(c);
}

Test(config, keys_are_read)
{
    char err[256];
    fy_conf_t *c = load_text("listen: [\"127.0.0.1:9000\", \"[::1]:9001\"]\n"
                             "domain: Tunnels.Example.COM\n"
                             "route_order: [header, host]\n"
                             "default_tunnel: Fallback\n"
                             "trust_forwarded_from: [10.0.0.0/8, \"::1\"]\n"
                             "limits: {header_timeout: 1500ms, max_headers: 20}\n", err, sizeof(err));
    cr_assert_not_null(c, "%s", err);
    cr_assert_eq(c->nlisten, 2);
    cr_assert_str_eq(c->domain, "tunnels.example.com");
    cr_assert_eq(c->nroute, 2);
    cr_assert_eq(c->route_order[0], FY_ROUTE_HEADER);
    cr_assert_str_eq(c->default_tunnel, "fallback");
    cr_assert_eq(c->limits.header_timeout, 1500);
    cr_assert_eq(c->limits.max_headers, 20);
    cr_assert_eq(c->ntrust, 2);
    fy_config_free(c);
}

Test(config, errors_name_file_line_and_key)
{
    char err[256];
    cr_assert_null(load_text("domain: x\nlimits:\n  header_timeout: soon\n", err, sizeof(err)));
    cr_assert(strstr(err, ":3: limits.header_timeout:") != NULL, "%s", err);
    cr_assert_null(load_text("listne: [\"127.0.0.1:1\"]\n", err, sizeof(err)));
    cr_assert(strstr(err, ":1: listne: unknown key") != NULL, "%s", err);
    cr_assert_null(load_text("listen: [\"nowhere\"]\n", err, sizeof(err)));
    cr_assert(strstr(err, "listen") != NULL, "%s", err);
    cr_assert_null(load_text("route_order: [host, sideways]\n", err, sizeof(err)));
    cr_assert_null(load_text("path_prefix: t\n", err, sizeof(err)));
    cr_assert_null(load_text("listen: [\n", err, sizeof(err)));
    cr_assert(strstr(err, "invalid YAML") != NULL, "%s", err);
}

Test(config, public_listener_without_auth_is_refused)
{
    char err[512];
    fy_conf_t *c = load_text("listen: [\"0.0.0.0:8080\"]\n", err, sizeof(err));
    cr_assert_not_null(c, "%s", err);
    cr_assert(fy_config_check(c, err, sizeof(err)) == FY_ERR);
    cr_assert(strstr(err, "not a loopback address") != NULL, "%s", err);
    fy_config_free(c);
}

Test(config, trusted_cidrs)
{
    char err[256];
    struct sockaddr_storage ss;
    socklen_t len;
    fy_conf_t *c = load_text("trust_forwarded_from: [10.0.0.0/8, 192.168.1.7]\n", err, sizeof(err));
    cr_assert_not_null(c, "%s", err);
    cr_assert(fy_net_parse_addr("10.200.3.4:1", &ss, &len) == FY_OK);
    cr_assert(fy_config_trusted(c, (struct sockaddr *)&ss));
    cr_assert(fy_net_parse_addr("11.0.0.1:1", &ss, &len) == FY_OK);
    cr_assert(!fy_config_trusted(c, (struct sockaddr *)&ss));
    cr_assert(fy_net_parse_addr("192.168.1.7:1", &ss, &len) == FY_OK);
    cr_assert(fy_config_trusted(c, (struct sockaddr *)&ss));
    cr_assert(fy_net_parse_addr("192.168.1.8:1", &ss, &len) == FY_OK);
    cr_assert(!fy_config_trusted(c, (struct sockaddr *)&ss));
    fy_config_free(c);
}

/* --- routing ------------------------------------------------------------- */

static fy_worker_t rw;

static void route_setup(void)
{
    char err[256];
    memset(&rw, 0, sizeof(rw));
    rw.conf = fy_config_load(NULL, err, sizeof(err));
    cr_assert_not_null(rw.conf);
}

static void route_teardown(void) { fy_config_free(rw.conf); }

static int route(const char *head, char *id, enum fy_route_via *via)
{
    static fy_h1_header_t hdrs[32];
    fy_h1_limits_t lim = {32, 8192};
    fy_h1_request_t req;
    cr_assert(fy_h1_parse_request(head, strlen(head), &req, hdrs, &lim) > 0, "%s", head);
    return fy_route_resolve(&rw, &req, id, via);
}

Test(route, each_method, .init = route_setup, .fini = route_teardown)
{
    char id[FY_ID_MAX + 1];
    enum fy_route_via via;
    cr_assert(route("GET / HTTP/1.1\r\nHost: ABC.localhost:8080\r\n\r\n", id, &via) == FY_OK);
    cr_assert_str_eq(id, "abc");
    cr_assert_eq(via, FY_VIA_HOST);
    cr_assert(route("GET /t/xy-1/rest?q=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", id, &via) == FY_OK);
    cr_assert_str_eq(id, "xy-1");
    cr_assert_eq(via, FY_VIA_PATH);
    cr_assert(route("GET /t/xy HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", id, &via) == FY_OK);
    cr_assert_eq(via, FY_VIA_PATH);
    cr_assert(route("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Tunnel-Id: hdr\r\n\r\n", id, &via) == FY_OK);
    cr_assert_str_eq(id, "hdr");
    cr_assert_eq(via, FY_VIA_HEADER);
    cr_assert(route("GET /a?x=1&tunnelid=q1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", id, &via) == FY_OK);
    cr_assert_str_eq(id, "q1");
    cr_assert_eq(via, FY_VIA_QUERY);
    cr_assert(route("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", id, &via) == FY_ERR);
    cr_assert(route("GET / HTTP/1.1\r\nHost: a.b.localhost\r\n\r\n", id, &via) == FY_ERR);
    cr_assert(route("GET /tx/abc HTTP/1.1\r\nHost: localhost\r\n\r\n", id, &via) == FY_ERR);
    cr_assert(route("GET / HTTP/1.1\r\nHost: notlocalhost\r\n\r\n", id, &via) == FY_ERR);
    cr_assert(route("GET /?xtunnelid=a HTTP/1.1\r\nHost: h\r\n\r\n", id, &via) == FY_ERR);
}

Test(route, order_and_default, .init = route_setup, .fini = route_teardown)
{
    char id[FY_ID_MAX + 1];
    enum fy_route_via via;
    const char *h = "GET /t/bypath/ HTTP/1.1\r\nHost: byhost.localhost\r\nX-Tunnel-Id: byheader\r\n\r\n";
    cr_assert(route(h, id, &via) == FY_OK);
    cr_assert_str_eq(id, "byhost");
    rw.conf->route_order[0] = FY_ROUTE_HEADER;
    rw.conf->nroute = 1;
    cr_assert(route(h, id, &via) == FY_OK);
    cr_assert_str_eq(id, "byheader");
    rw.conf->route_order[0] = FY_ROUTE_DEFAULT;
    cr_assert(route(h, id, &via) == FY_ERR);
    strcpy(rw.conf->default_tunnel, "fallback");
    cr_assert(route(h, id, &via) == FY_OK);
    cr_assert_str_eq(id, "fallback");
}

Test(route, rewrite_strips_prefix_and_spoofed_headers, .init = route_setup, .fini = route_teardown)
{
    static fy_h1_header_t hdrs[32];
    const char *head = "GET /t/abc/x/y?z=1 HTTP/1.1\r\nHost: relay:8080\r\nX-Tunnel-Id: evil\r\n"
                       "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Prefix: /nope\r\nAccept: */*\r\n\r\n";
    fy_h1_limits_t lim = {32, 8192};
    fy_h1_request_t req;
    fy_client_t c;
    char id[FY_ID_MAX + 1], out[2048];
    enum fy_route_via via;
    ssize_t n;
    struct sockaddr_storage ss;
    socklen_t len;

    memset(&c, 0, sizeof(c));
    cr_assert(fy_net_parse_addr("127.0.0.5:4000", &ss, &len) == FY_OK);
    c.peer = ss;
    strcpy(c.peer_ip, "127.0.0.5");
    cr_assert(fy_h1_parse_request(head, strlen(head), &req, hdrs, &lim) > 0);
    rw.conf->route_order[0] = FY_ROUTE_PATH;
    rw.conf->nroute = 1;
    cr_assert(fy_route_resolve(&rw, &req, id, &via) == FY_OK);
    n = fy_route_rewrite(&rw, &c, &req, id, via, (uint8_t *)out, sizeof(out) - 1);
    cr_assert(n > 0);
    out[n] = '\0';
    cr_assert(strncmp(out, "GET /x/y?z=1 HTTP/1.1\r\n", 23) == 0, "%s", out);
    cr_assert(strstr(out, "evil") == NULL, "%s", out);
    cr_assert(strstr(out, "6.6.6.6") == NULL, "%s", out);
    cr_assert(strstr(out, "/nope") == NULL, "%s", out);
    cr_assert(strstr(out, "X-Forwarded-For: 127.0.0.5\r\n") != NULL, "%s", out);
    cr_assert(strstr(out, "X-Tunnel-Id: abc\r\n") != NULL, "%s", out);
    cr_assert(strstr(out, "X-Forwarded-Prefix: /t/abc\r\n") != NULL, "%s", out);
    cr_assert(strstr(out, "X-Forwarded-Host: relay:8080\r\n") != NULL, "%s", out);
    cr_assert(strstr(out, "Accept: */*\r\n") != NULL, "%s", out);
    cr_assert(n >= 4 && memcmp(out + n - 4, "\r\n\r\n", 4) == 0);
    /* A head that does not fit is refused, never cut. */
    cr_assert(fy_route_rewrite(&rw, &c, &req, id, via, (uint8_t *)out, 40) == FY_ERR);
}

/* cluster: (README "Running several nodes"): parsed, defaulted, checked. */
Test(config, cluster)
{
    char err[512], secret[] = "/tmp/ferry-config-secret-XXXXXX", yaml[1024];
    const char *words = "0123456789abcdef0123456789abcdef-secret\n";
    int fd = mkstemp(secret);
    fy_conf_t *c;
    uint8_t zero[32] = {0};

    cr_assert(fd >= 0 && write(fd, words, strlen(words)) == (ssize_t)strlen(words));
    close(fd);
    snprintf(yaml, sizeof(yaml), "cluster:\n  redis: \"redis://:pw@localhost\"\n  node: n-1\n"
             "  advertise: \"http://127.0.0.1:8080/\"\n  secret: %s\n", secret);
    c = load_text(yaml, err, sizeof(err));
    cr_assert_not_null(c, "%s", err);
    cr_assert(c->cluster.on && !c->cluster.redirect);
    cr_assert_str_eq(c->cluster.redis_addr, "127.0.0.1:6379");
    cr_assert_str_eq(c->cluster.redis_password, "pw");
    cr_assert_str_eq(c->cluster.advertise, "http://127.0.0.1:8080");
    cr_assert_str_eq(c->cluster.advertise_addr, "127.0.0.1:8080");
    cr_assert(c->cluster.ttl == 15000 && c->cluster.timeout == 1000);
    cr_assert(memcmp(c->cluster.key, zero, 32) != 0);
    fy_config_free(c);

    snprintf(yaml, sizeof(yaml), "cluster:\n  redis: 10.0.0.2:7000\n  node: n1\n  advertise: http://[::1]:80\n"
             "  secret: %s\n  mode: redirect\n  ttl: 5s\n  timeout: 250ms\n", secret);
    c = load_text(yaml, err, sizeof(err));
    cr_assert_not_null(c, "%s", err);
    cr_assert(c->cluster.redirect && c->cluster.ttl == 5000 && c->cluster.timeout == 250);
    cr_assert_str_eq(c->cluster.redis_addr, "10.0.0.2:7000");
    fy_config_free(c);

    cr_assert_null(load_text("cluster:\n  redis: db.example.com:6379\n", err, sizeof(err)));
    cr_assert(strstr(err, ":2: cluster.redis: ") != NULL, "%s", err);
    cr_assert_null(load_text("cluster:\n  node: n1\n", err, sizeof(err)));
    cr_assert(strstr(err, "cluster.redis is required") != NULL, "%s", err);
    cr_assert_null(load_text("cluster:\n  advertise: https://127.0.0.1:1\n", err, sizeof(err)));
    cr_assert(strstr(err, "cluster.advertise") != NULL, "%s", err);
    cr_assert_null(load_text("cluster:\n  ttl: 1s\n", err, sizeof(err)));
    cr_assert(strstr(err, "cluster.ttl") != NULL, "%s", err);
    chmod(secret, 0644);
    snprintf(yaml, sizeof(yaml), "cluster:\n  secret: %s\n", secret);
    cr_assert_null(load_text(yaml, err, sizeof(err)));
    cr_assert(strstr(err, "group or others") != NULL, "%s", err);
    unlink(secret);
}

Test(config, tls_keys)
{
    char err[512];
    fy_conf_t *c = load_text("listen: []\nlisten_tls: [\"127.0.0.1:8443\", \"[::1]:8443\"]\n"
                             "tls: {cert: /x/cert.pem, key: /x/key.pem, ocsp_staple: /x/ocsp.der}\n"
                             "agents_require_tls: true\n", err, sizeof(err));
    cr_assert_not_null(c, "%s", err);
    cr_assert_eq(c->nlisten, 0);
    cr_assert_eq(c->nlisten_tls, 2);
    cr_assert_str_eq(c->listen_tls[1], "[::1]:8443");
    cr_assert_str_eq(c->tls_cert, "/x/cert.pem");
    cr_assert_str_eq(c->tls_key, "/x/key.pem");
    cr_assert_str_eq(c->tls_ocsp, "/x/ocsp.der");
    cr_assert(c->agents_require_tls);
    cr_assert_eq(fy_config_check(c, err, sizeof(err)), FY_OK, "%s", err);
    fy_config_free(c);
}

Test(config, tls_refusals)
{
    static const struct { const char *yaml, *says; } cases[] = {
        {"listen_tls: [\"127.0.0.1:8443\"]\n", "need tls.cert and tls.key"},
        {"listen_tls: [\"127.0.0.1:8443\"]\ntls: {cert: /x/c.pem}\n", "need tls.cert and tls.key"},
        {"agents_require_tls: true\n", "no listen_tls"},
        {"listen: []\n", "at least one listener"},
        {"listen_tls: [\"0.0.0.0:8443\"]\ntls: {cert: /c, key: /k}\n", "agent auth is off"},
    };
    static const struct { const char *yaml, *says; } load_cases[] = {
        {"tls: {cert: /c, chain: /x}\n", "unknown key in tls"},
        {"agents_require_tls: maybe\n", "is not true or false"},
        {"listen_tls: \"nope\"\n", "listen_tls"},
    };
    char err[512];
    size_t i;

    for (i = 0; i < FY_NELEM(cases); i++) {
        fy_conf_t *c = load_text(cases[i].yaml, err, sizeof(err));
        cr_assert_not_null(c, "%s: %s", cases[i].yaml, err);
        cr_assert_eq(fy_config_check(c, err, sizeof(err)), FY_ERR, "%s", cases[i].yaml);
        cr_assert(strstr(err, cases[i].says) != NULL, "%s: %s", cases[i].yaml, err);
        fy_config_free(c);
    }
    for (i = 0; i < FY_NELEM(load_cases); i++) {
        cr_assert_null(load_text(load_cases[i].yaml, err, sizeof(err)), "%s", load_cases[i].yaml);
        cr_assert(strstr(err, load_cases[i].says) != NULL, "%s: %s", load_cases[i].yaml, err);
    }
}

/* listen and listen_tls share FY_CONF_MAX_LISTEN (the listen sockets a
 * reload passes in one message). */
Test(config, listeners_together_are_bounded)
{
    char yaml[2048], err[512];
    size_t o = 0;
    int i;

    o += (size_t)snprintf(yaml + o, sizeof(yaml) - o, "listen: [");
    for (i = 0; i < 10; i++)
        o += (size_t)snprintf(yaml + o, sizeof(yaml) - o, "%s\"127.0.0.1:%d\"", i ? ", " : "", 9000 + i);
    o += (size_t)snprintf(yaml + o, sizeof(yaml) - o, "]\nlisten_tls: [");
    for (i = 0; i < 7; i++)
        o += (size_t)snprintf(yaml + o, sizeof(yaml) - o, "%s\"127.0.0.1:%d\"", i ? ", " : "", 9500 + i);
    snprintf(yaml + o, sizeof(yaml) - o, "]\n");
    cr_assert_null(load_text(yaml, err, sizeof(err)));
    cr_assert(strstr(err, "at most 16 listeners") != NULL, "%s", err);
}
