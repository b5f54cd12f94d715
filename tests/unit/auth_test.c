/*
 * auth_test.c: the `auth:` config section and its start-up rules
 * (master/config.c), and the subcommands keygen, token and hash-password
 * (master/cmd.c), run in-process with stdin/stdout/stderr redirected to
 * files. The .c files are included (h2o's habit): master/ and worker/ are
 * not linked into unit tests.
 */
#include "tests/unit/unit.h"

#include "master/config.c"
#include "worker/auth.c"
#include "master/cmd.c"

#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[64];

static void setup(void)
{
    cr_assert_geq(sodium_init(), 0);
    strcpy(dir, "/tmp/ferry-auth-test-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(authconf, .init = setup, .fini = teardown);
TestSuite(cmd, .init = setup, .fini = teardown);

static const char *path_in(const char *name)
{
    static char p[64][160];
    static int k;
    k = (k + 1) % 64;
    snprintf(p[k], sizeof(p[k]), "%s/%s", dir, name);
    return p[k];
}

static void put(const char *path, const char *text, mode_t mode)
{
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f, "%s", path);
    fputs(text, f);
    cr_assert_eq(fclose(f), 0);
    cr_assert_eq(chmod(path, mode), 0);
}

static char *slurp(const char *path)
{
    static char buf[4][8192];
    static int k;
    FILE *f = fopen(path, "r");
    size_t n;
    k = (k + 1) % 4;
    cr_assert_not_null(f, "%s", path);
    n = fread(buf[k], 1, sizeof(buf[k]) - 1, f);
    buf[k][n] = '\0';
    fclose(f);
    return buf[k];
}

static fy_conf_t *conf_text(const char *yaml, char *err, size_t errlen)
{
    const char *p = path_in("ferryd.yml");
    put(p, yaml, 0644);
    return fy_config_load(p, err, errlen);
}

/* --- config --------------------------------------------------------------------- */

#define H64 "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"

Test(authconf, tokens_are_parsed)
{
    char err[512];
    fy_conf_t *c = conf_text("auth:\n  tokens:\n"
                             "    - {hash: \"blake2b:" H64 "\", tunnels: \"Team-*\"}\n"
                             "    - hash: \"blake2b:ff112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\"\n"
                             "      tunnels: app\n", err, sizeof(err));
    cr_assert_not_null(c, "%s", err);
    cr_assert_eq(c->auth_ntokens, 2);
    cr_assert_str_eq(c->auth_tokens[0].tunnels, "team-*");
    cr_assert_eq(c->auth_tokens[0].hash[0], 0x00);
    cr_assert_eq(c->auth_tokens[0].hash[31], 0xff);
    cr_assert_eq(c->auth_tokens[1].hash[0], 0xff);
    cr_assert_str_eq(c->auth_tokens[1].tunnels, "app");
    cr_assert_null(c->auth_key);
    fy_config_free(c);

    c = conf_text("auth:\n  tokens: []\n", err, sizeof(err));
    cr_assert_not_null(c, "%s", err);
    cr_assert_eq(c->auth_ntokens, 0);
    fy_config_free(c);
}

Test(authconf, bad_tokens_are_refused_with_the_line)
{
    static const struct { const char *yaml, *want; } cases[] = {
        {"auth:\n  tokens: [{hash: \"sha256:" H64 "\", tunnels: a}]\n", ":2: auth.tokens.hash: not \"blake2b:\""},
        {"auth:\n  tokens: [{hash: \"blake2b:0011\", tunnels: a}]\n", "auth.tokens.hash"},
        {"auth:\n  tokens: [{hash: \"blake2b:" H64 "zz\", tunnels: a}]\n", "auth.tokens.hash"},
        {"auth:\n  tokens: [{hash: \"blake2b:" H64 "\", tunnels: \"a_b\"}]\n", "auth.tokens.tunnels: \"a_b\" is not"},
        {"auth:\n  tokens: [{hash: \"blake2b:" H64 "\"}]\n", "needs both hash and tunnels"},
        {"auth:\n  tokens: [{hash: \"blake2b:" H64 "\", tunnels: a, note: x}]\n", "unknown key \"note\""},
        {"auth:\n  tokens: [{hash: \"blake2b:" H64 "\", tunnels: a}, {hash: \"blake2b:" H64 "\", tunnels: b}]\n",
         "the same hash is listed twice"},
        {"auth:\n  tokens: \"blake2b:" H64 "\"\n", "expected a list"},
        {"auth:\n  tokens: [\"blake2b:" H64 "\"]\n", "each entry is {hash"},
        {"auth:\n  secret: x\n", "unknown key in auth"},
    };
    for (size_t i = 0; i < FY_NELEM(cases); i++) {
        char err[512] = "";
        fy_conf_t *c = conf_text(cases[i].yaml, err, sizeof(err));
        cr_assert_null(c, "accepted: %s", cases[i].yaml);
        cr_assert(strstr(err, cases[i].want) != NULL, "%s => %s", cases[i].yaml, err);
    }
}

Test(authconf, start_rules)
{
    char err[512];
    fy_conf_t *c;

    /* A public listener without agent auth: refused, saying why. */
    c = conf_text("listen: [\"0.0.0.0:8080\"]\n", err, sizeof(err));
    cr_assert_not_null(c, "%s", err);
    cr_assert_eq(fy_config_check(c, err, sizeof(err)), FY_ERR);
    cr_assert(strstr(err, "0.0.0.0:8080 is not a loopback address and agent auth is off") != NULL, "%s", err);
    fy_config_free(c);
    c = conf_text("listen: [\"127.0.0.1:8080\", \"[::]:8080\"]\n", err, sizeof(err));
    cr_assert_eq(fy_config_check(c, err, sizeof(err)), FY_ERR);
    cr_assert(strstr(err, "[::]:8080") != NULL, "%s", err);
    fy_config_free(c);

    /* With a key, or static tokens: allowed. */
    c = conf_text("listen: [\"0.0.0.0:8080\"]\nauth: {key: /etc/ferry/relay.key}\n", err, sizeof(err));
    cr_assert_not_null(c, "%s", err);
    cr_assert_eq(fy_config_check(c, err, sizeof(err)), FY_OK, "%s", err);
    fy_config_free(c);
    c = conf_text("listen: [\"0.0.0.0:8080\"]\nauth:\n  tokens: [{hash: \"blake2b:" H64 "\", tunnels: \"*\"}]\n",
                  err, sizeof(err));
    cr_assert_not_null(c, "%s", err);
    cr_assert_eq(fy_config_check(c, err, sizeof(err)), FY_OK, "%s", err);
    fy_config_free(c);

    /* Loopback only: auth may be off. An admin listener is not for agents. */
    c = conf_text("listen: [\"127.0.0.1:8080\", \"[::1]:8080\"]\nadmin: \"0.0.0.0:8081\"\n", err, sizeof(err));
    cr_assert_eq(fy_config_check(c, err, sizeof(err)), FY_OK, "%s", err);
    fy_config_free(c);

    /* auth.revoked lists signed-token ids: it needs auth.key. */
    c = conf_text("auth:\n  revoked: /tmp/x\n  tokens: [{hash: \"blake2b:" H64 "\", tunnels: \"*\"}]\n",
                  err, sizeof(err));
    cr_assert_not_null(c, "%s", err);
    cr_assert_eq(fy_config_check(c, err, sizeof(err)), FY_ERR);
    cr_assert(strstr(err, "auth.revoked") != NULL && strstr(err, "needs auth.key") != NULL, "%s", err);
    fy_config_free(c);
    c = conf_text("auth: {key: \"\"}\n", err, sizeof(err));
    cr_assert_eq(fy_config_check(c, err, sizeof(err)), FY_ERR);
    fy_config_free(c);
}

/* --- subcommands ----------------------------------------------------------------- */

typedef int (*cmd_fn)(int, char **);

/* Run fn(argv) with stdin from in (may be NULL: empty), stdout and stderr
 * to files; returns the exit status, *out and *errtext the texts. */
static int run(cmd_fn fn, const char *in, char **out, char **errtext, ...)
{
    char *argv[16];
    int argc = 0, saved[3], fd, rc;
    const char *in_p = path_in("stdin"), *out_p = path_in("stdout"), *err_p = path_in("stderr");
    va_list ap;

    va_start(ap, errtext);
    while (argc < 15 && (argv[argc] = va_arg(ap, char *)) != NULL)
        argc++;
    va_end(ap);
    argv[argc] = NULL;
    put(in_p, in ? in : "", 0600);
    fflush(stdout);
    fflush(stderr);
    for (fd = 0; fd < 3; fd++)
        saved[fd] = dup(fd);
    cr_assert_eq(dup2(open(in_p, O_RDONLY), 0), 0);
    cr_assert_eq(dup2(open(out_p, O_WRONLY | O_CREAT | O_TRUNC, 0600), 1), 1);
    cr_assert_eq(dup2(open(err_p, O_WRONLY | O_CREAT | O_TRUNC, 0600), 2), 2);
    rc = fn(argc, argv);
    fflush(stdout);
    fflush(stderr);
    for (fd = 0; fd < 3; fd++) {
        dup2(saved[fd], fd);
        close(saved[fd]);
    }
    *out = slurp(out_p);
    *errtext = slurp(err_p);
    return rc;
}

static void chomp(char *s)
{
    size_t n = strlen(s);
    while (n > 0 && s[n - 1] == '\n')
        s[--n] = '\0';
}

Test(cmd, keygen_writes_a_private_key_once)
{
    const char *key = path_in("relay.key");
    char *out, *err, first[512];
    uint8_t pk[FY_TOKEN_PK], pk2[FY_TOKEN_PK];
    char e[512];
    struct stat st;

    cr_assert_eq(run(fy_cmd_keygen, NULL, &out, &err, "keygen", "-o", key, NULL), 0, "%s", err);
    cr_assert_str_eq(out, "");
    cr_assert(strstr(err, "wrote a new Ed25519 relay key") != NULL, "%s", err);
    cr_assert_eq(stat(key, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0600);
    snprintf(first, sizeof(first), "%s", slurp(key));
    cr_assert(strstr(first, "\ned25519:") != NULL, "%s", first);
    cr_assert_eq(fy_auth_read_key(key, NULL, pk, e, sizeof(e)), FY_OK, "%s", e);

    /* Never overwritten by accident. */
    cr_assert_eq(run(fy_cmd_keygen, NULL, &out, &err, "keygen", "-o", key, NULL), 1);
    cr_assert(strstr(err, "exists; refusing to overwrite") != NULL, "%s", err);
    cr_assert_str_eq(slurp(key), first);
    /* --force makes a new one. */
    cr_assert_eq(run(fy_cmd_keygen, NULL, &out, &err, "keygen", "--force", "-o", key, NULL), 0, "%s", err);
    cr_assert_str_neq(slurp(key), first);
    cr_assert_eq(fy_auth_read_key(key, NULL, pk2, e, sizeof(e)), FY_OK, "%s", e);
    cr_assert(memcmp(pk, pk2, sizeof(pk)) != 0);

    cr_assert_eq(run(fy_cmd_keygen, NULL, &out, &err, "keygen", NULL), 1);
    cr_assert(strstr(err, "usage") != NULL);
    cr_assert_eq(run(fy_cmd_keygen, NULL, &out, &err, "keygen", "-o", NULL), 1);
    cr_assert_eq(run(fy_cmd_keygen, NULL, &out, &err, "keygen", "-o", "/nonexistent/dir/k", NULL), 1);
    cr_assert_eq(run(fy_cmd_keygen, NULL, &out, &err, "keygen", "-x", NULL), 1);
}

static fy_auth_t *auth_for(const char *key, const char *revoked)
{
    fy_conf_t c;
    char e[512];
    fy_auth_t *a;
    memset(&c, 0, sizeof(c));
    c.auth_key = (char *)key;
    c.auth_revoked = (char *)revoked;
    a = fy_auth_load(&c, e, sizeof(e));
    cr_assert_not_null(a, "%s", e);
    return a;
}

Test(cmd, token_signs_with_the_config_key)
{
    const char *key = path_in("relay.key"), *conf = path_in("relay.yml"), *revoked = path_in("revoked");
    char *out, *err, tok[FY_TOKEN_MAX + 1], hdr[FY_TOKEN_MAX + 16], jti[17];
    fy_auth_result_t r;
    fy_auth_t *a;
    const char *p;

    cr_assert_eq(run(fy_cmd_keygen, NULL, &out, &err, "keygen", "-o", key, NULL), 0, "%s", err);
    snprintf(hdr, sizeof(hdr), "auth:\n  key: %s\n", key);
    put(conf, hdr, 0644);

    cr_assert_eq(run(fy_cmd_token, NULL, &out, &err, "token", "--tunnel", "Team-*", "-c", conf, NULL), 0, "%s", err);
    chomp(out);
    snprintf(tok, sizeof(tok), "%s", out);
    cr_assert_eq(strchr(tok, '\n'), NULL);
    cr_assert_gt(strlen(tok), 100);
    cr_assert_eq(strstr(err, tok), NULL, "the token leaked to stderr");
    p = strstr(err, "token id ");
    cr_assert_not_null(p, "%s", err);
    memcpy(jti, p + 9, 16);
    jti[16] = '\0';

    /* The relay accepts it for the pattern, folded to lower case, for 30 days. */
    a = auth_for(key, NULL);
    snprintf(hdr, sizeof(hdr), "Bearer %s", tok);
    fy_auth_check_at(a, hdr, strlen(hdr), "team-a", (uint64_t)time(NULL), &r);
    cr_assert_eq(r.status, 0, "%s", r.msg);
    cr_assert_str_eq(r.holder, jti);
    fy_auth_check_at(a, hdr, strlen(hdr), "team-a", (uint64_t)time(NULL) + 29 * 86400, &r);
    cr_assert_eq(r.status, 0, "%s", r.msg);
    fy_auth_check_at(a, hdr, strlen(hdr), "team-a", (uint64_t)time(NULL) + 31 * 86400, &r);
    cr_assert_eq(r.status, 401);
    fy_auth_check_at(a, hdr, strlen(hdr), "other", (uint64_t)time(NULL), &r);
    cr_assert_eq(r.status, 403);
    fy_auth_free(a);

    /* Revoking the printed id works. */
    snprintf(hdr, sizeof(hdr), "%s\n", jti);
    put(revoked, hdr, 0644);
    a = auth_for(key, revoked);
    snprintf(hdr, sizeof(hdr), "Bearer %s", tok);
    fy_auth_check_at(a, hdr, strlen(hdr), "team-a", (uint64_t)time(NULL), &r);
    cr_assert_str_eq(r.code, "token_revoked");
    fy_auth_free(a);

    /* --expires and --key, in both flag forms. */
    cr_assert_eq(run(fy_cmd_token, NULL, &out, &err, "token", "--tunnel=app", "--expires=2h", "--key", key, NULL),
                 0, "%s", err);
    chomp(out);
    a = auth_for(key, NULL);
    snprintf(hdr, sizeof(hdr), "Bearer %s", out);
    fy_auth_check_at(a, hdr, strlen(hdr), "app", (uint64_t)time(NULL) + 7100, &r);
    cr_assert_eq(r.status, 0, "%s", r.msg);
    fy_auth_check_at(a, hdr, strlen(hdr), "app", (uint64_t)time(NULL) + 7300, &r);
    cr_assert_str_eq(r.code, "token_expired");
    fy_auth_free(a);
}

Test(cmd, token_errors)
{
    const char *key = path_in("relay.key"), *conf = path_in("relay.yml");
    char *out, *err;

    cr_assert_eq(run(fy_cmd_keygen, NULL, &out, &err, "keygen", "-o", key, NULL), 0, "%s", err);
    cr_assert_eq(run(fy_cmd_token, NULL, &out, &err, "token", "--key", key, NULL), 1);
    cr_assert(strstr(err, "--tunnel PATTERN is required") != NULL, "%s", err);
    cr_assert_eq(run(fy_cmd_token, NULL, &out, &err, "token", "--tunnel", "a_b", "--key", key, NULL), 1);
    cr_assert(strstr(err, "is not a tunnel id or a glob") != NULL, "%s", err);
    cr_assert_eq(run(fy_cmd_token, NULL, &out, &err, "token", "--tunnel", "a", "--expires", "0s", "--key", key, NULL), 1);
    cr_assert(strstr(err, "at least 1s") != NULL, "%s", err);
    cr_assert_eq(run(fy_cmd_token, NULL, &out, &err, "token", "--tunnel", "a", "--expires", "soon", "--key", key, NULL), 1);
    cr_assert_eq(run(fy_cmd_token, NULL, &out, &err, "token", "--tunnel", "a", "--expires", "9999999d", "--key", key,
                     NULL), 1);
    cr_assert_eq(run(fy_cmd_token, NULL, &out, &err, "token", "--tunnel", "a", "--bogus", NULL), 1);
    cr_assert(strstr(err, "unknown argument") != NULL, "%s", err);
    cr_assert_str_eq(out, "");

    /* No key in the config (the embedded default has none). */
    put(conf, "domain: example.com\n", 0644);
    cr_assert_eq(run(fy_cmd_token, NULL, &out, &err, "token", "--tunnel", "a", "-c", conf, NULL), 1);
    cr_assert(strstr(err, "has no auth.key") != NULL, "%s", err);
    cr_assert_eq(run(fy_cmd_token, NULL, &out, &err, "token", "--tunnel", "a", NULL), 1);
    cr_assert(strstr(err, "has no auth.key") != NULL, "%s", err);

    /* A key others can read is refused here too. */
    cr_assert_eq(chmod(key, 0644), 0);
    cr_assert_eq(run(fy_cmd_token, NULL, &out, &err, "token", "--tunnel", "a", "--key", key, NULL), 1);
    cr_assert(strstr(err, "chmod 600") != NULL, "%s", err);
    cr_assert_str_eq(out, "");
}

Test(cmd, static_token)
{
    char *out, *err, tok[64], want[128];
    uint8_t h[FY_TOKEN_HASH];
    char hex[2 * FY_TOKEN_HASH + 1];

    cr_assert_eq(run(fy_cmd_token, NULL, &out, &err, "token", "--static", "--tunnel", "CI-*", NULL), 0, "%s", err);
    chomp(out);
    snprintf(tok, sizeof(tok), "%s", out);
    cr_assert_eq(strlen(tok), FY_TOKEN_STATIC_LEN);
    cr_assert(strncmp(tok, "fys_", 4) == 0, "%s", tok);
    fy_token_static_hash(tok, strlen(tok), h);
    sodium_bin2hex(hex, sizeof(hex), h, sizeof(h));
    snprintf(want, sizeof(want), "- {hash: \"blake2b:%s\", tunnels: \"ci-*\"}", hex);
    cr_assert(strstr(err, want) != NULL, "%s", err);
    cr_assert_eq(strstr(err, tok), NULL, "the token leaked to stderr");

    /* The printed line is a valid config entry. */
    char yaml[256], e[512];
    snprintf(yaml, sizeof(yaml), "auth:\n  tokens:\n    %s\n", want);
    fy_conf_t *c = conf_text(yaml, e, sizeof(e));
    cr_assert_not_null(c, "%s", e);
    cr_assert_eq(c->auth_ntokens, 1);
    cr_assert(memcmp(c->auth_tokens[0].hash, h, FY_TOKEN_HASH) == 0);
    fy_config_free(c);

    cr_assert_eq(run(fy_cmd_token, NULL, &out, &err, "token", "--static", "--tunnel", "a", "--expires", "1d", NULL), 1);
    cr_assert_eq(run(fy_cmd_token, NULL, &out, &err, "token", "--static", NULL), 1);
}

Test(cmd, hash_password)
{
    char *out, *err;

    cr_assert_eq(run(fy_cmd_hash_password, "correct horse\n", &out, &err, "hash-password", NULL), 0, "%s", err);
    chomp(out);
    cr_assert(strncmp(out, "$argon2id$", 10) == 0, "%s", out);
    cr_assert_eq(crypto_pwhash_str_verify(out, "correct horse", 13), 0);
    cr_assert_neq(crypto_pwhash_str_verify(out, "correct horse\n", 14), 0);
    cr_assert_eq(crypto_pwhash_str_needs_rehash(out, crypto_pwhash_argon2id_OPSLIMIT_INTERACTIVE,
                                                crypto_pwhash_argon2id_MEMLIMIT_INTERACTIVE), 0);
    cr_assert_eq(strstr(err, "correct horse"), NULL);

    /* Without a final newline, and with CRLF. */
    cr_assert_eq(run(fy_cmd_hash_password, "pw", &out, &err, "hash-password", NULL), 0, "%s", err);
    chomp(out);
    cr_assert_eq(crypto_pwhash_str_verify(out, "pw", 2), 0);
    cr_assert_eq(run(fy_cmd_hash_password, "pw\r\n", &out, &err, "hash-password", NULL), 0, "%s", err);
    chomp(out);
    cr_assert_eq(crypto_pwhash_str_verify(out, "pw", 2), 0);

    cr_assert_eq(run(fy_cmd_hash_password, "", &out, &err, "hash-password", NULL), 1);
    cr_assert(strstr(err, "empty password") != NULL, "%s", err);
    cr_assert_eq(run(fy_cmd_hash_password, "\n", &out, &err, "hash-password", NULL), 1);
    cr_assert_eq(run(fy_cmd_hash_password, "a\nb\n", &out, &err, "hash-password", NULL), 1);
    cr_assert(strstr(err, "one line") != NULL, "%s", err);
    cr_assert_eq(run(fy_cmd_hash_password, "x\n", &out, &err, "hash-password", "extra", NULL), 1);
    static char big[PASSWORD_MAX + 10];
    memset(big, 'p', sizeof(big) - 1);
    cr_assert_eq(run(fy_cmd_hash_password, big, &out, &err, "hash-password", NULL), 1);
    cr_assert(strstr(err, "longer than") != NULL, "%s", err);
}
