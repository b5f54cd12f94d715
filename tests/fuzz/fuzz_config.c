/*
 * fuzz_config.c: libFuzzer target for ferryd's YAML config loader
 * (master/config.c over libyaml): everything `ferryd -c FILE`, `ferryd -t`
 * and a reload read from an operator's file.
 *
 * `make fuzz` builds each tests/fuzz/fuzz_*.c with the common sources only,
 * so the loader is compiled in here by including its source. Each input is
 * written to a memfd and loaded by its /proc/self/fd path (the loader takes
 * a path and fopen()s it, as ferryd does). Besides crashes, leaks and
 * undefined behaviour, it checks what config.h promises: an error leaves a
 * NUL-terminated "FILE:LINE: KEY: reason" message and no config; a loaded
 * config has every string set, the lists within their bounds, the limits
 * within the ranges the loader enforces, and survives fy_config_check and
 * fy_config_trusted.
 */
#include "master/config.c"

#include <stdint.h>
#include <sys/mman.h>

#define CHECK(c) do { if (!(c)) abort(); } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int memfd = -1;
static char path[64];

static void init(void)
{
    if (memfd >= 0)
        return;
    memfd = memfd_create("fuzz_config", MFD_CLOEXEC);
    CHECK(memfd >= 0);
    snprintf(path, sizeof(path), "/proc/self/fd/%d", memfd);
}

static void write_input(const uint8_t *data, size_t size)
{
    size_t off = 0;

    CHECK(ftruncate(memfd, 0) == 0);
    CHECK(lseek(memfd, 0, SEEK_SET) == 0);
    while (off < size) {
        ssize_t n = write(memfd, data + off, size - off);
        CHECK(n > 0);
        off += (size_t)n;
    }
}

static void check_str(const char *s)
{
    CHECK(s != NULL);
    (void)strlen(s);    /* terminated: ASan reports a read past the end */
}

static void check_loaded(const fy_conf_t *c)
{
    struct sockaddr_in v4 = {.sin_family = AF_INET};
    struct sockaddr_in6 v6 = {.sin6_family = AF_INET6};
    char err[512];
    int i;

    CHECK(c->nlisten >= 0 && c->nlisten <= FY_CONF_MAX_LISTEN);
    for (i = 0; i < c->nlisten; i++)
        check_str(c->listen[i]);
    check_str(c->admin);
    check_str(c->domain);
    check_str(c->agent_path);
    check_str(c->path_prefix);
    check_str(c->log_file);
    CHECK(c->agent_path[0] == '/' && c->path_prefix[0] == '/');
    CHECK(c->domain[0] != '\0');
    CHECK(strlen(c->default_tunnel) <= FY_ID_MAX);
    CHECK(c->nroute >= 0 && c->nroute <= 5);
    for (i = 0; i < c->nroute; i++)
        CHECK(c->route_order[i] >= FY_ROUTE_HOST && c->route_order[i] <= FY_ROUTE_DEFAULT);
    CHECK(c->workers >= 0 && c->workers <= 256);
    CHECK(c->ntrust >= 0 && c->ntrust <= FY_CONF_MAX_TRUST);
    for (i = 0; i < c->ntrust; i++) {
        const fy_cidr_t *r = &c->trust[i];
        CHECK(r->family == AF_INET || r->family == AF_INET6);
        CHECK(r->bits >= 0 && r->bits <= (r->family == AF_INET ? 32 : 128));
    }
    CHECK(c->auth_ntokens >= 0 && c->auth_ntokens <= FY_CONF_MAX_TOKENS);
    CHECK(c->auth_ntokens == 0 || c->auth_tokens != NULL);
    for (i = 0; i < c->auth_ntokens; i++)
        CHECK(strlen(c->auth_tokens[i].tunnels) <= FY_TOKEN_PATTERN_MAX);
    CHECK(c->limits.max_tunnels >= 1 && c->limits.max_tunnels <= (1u << 24));
    CHECK(c->limits.max_header_bytes >= 1024 && c->limits.max_header_bytes <= (1u << 20));
    CHECK(c->limits.max_headers >= 8 && c->limits.max_headers <= 1000);
    CHECK(c->limits.max_streams_per_tunnel >= 1 && c->limits.max_streams_per_tunnel <= (1u << 20));

    err[0] = '\0';
    if (fy_config_check(c, err, sizeof(err)) != FY_OK)
        CHECK(err[0] != '\0' && memchr(err, '\0', sizeof(err)) != NULL);
    (void)fy_config_trusted(c, (const struct sockaddr *)&v4);
    v4.sin_addr.s_addr = htonl(0x0a000001);
    (void)fy_config_trusted(c, (const struct sockaddr *)&v4);
    v6.sin6_addr.s6_addr[15] = 1;
    (void)fy_config_trusted(c, (const struct sockaddr *)&v6);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[512];
    fy_conf_t *c;

    /* Real configs are a few KiB; bigger inputs only slow the search. */
    if (size > 64 * 1024)
        return 0;
    init();
    write_input(data, size);
    memset(err, 0x55, sizeof(err));
    c = fy_config_load(path, err, sizeof(err));
    if (c == NULL) {
        CHECK(memchr(err, '\0', sizeof(err)) != NULL);
        CHECK(err[0] != '\0');
        return 0;
    }
    check_loaded(c);
    fy_config_free(c);
    return 0;
}
