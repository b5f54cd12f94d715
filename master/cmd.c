/*
 * cmd.c: ferryd keygen, token and hash-password (see cmd.h). They run in
 * the foreground of a shell, so they print plainly: the result alone on
 * stdout (a script captures it with $(...)), notes and errors on stderr.
 *
 * - keygen writes the 32-byte Ed25519 seed in the text form of
 *   common/crypto/token.h, creating the file with O_EXCL and mode 0600 (the
 *   relay refuses a key file group or others can access).
 * - token signs {v, jti, pattern, exp} with the key named by --key or the
 *   config's auth.key; the token id (jti) goes to stderr, as auth.revoked
 *   lists it. --static instead prints a random token and, on stderr, the
 *   auth.tokens entry that holds its keyed BLAKE2b hash: the relay never
 *   sees the token itself in its config.
 * - hash-password hashes one line of stdin with Argon2id at libsodium's
 *   INTERACTIVE limits (for access.basic_auth; never on the agent path).
 */
#include "master/cmd.h"
#include "master/config.h"
#include "worker/auth.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#define PASSWORD_MAX 4096

/*
 * Is argv[*i] the option name, as "NAME VALUE" or "NAME=VALUE"? 1 with *val
 * set (and *i past the value), 0 if it is another argument, FY_ERR when
 * the value is missing (reported).
 */
static int opt(int argc, char **argv, int *i, const char *cmd, const char *name, const char **val)
{
    const char *a = argv[*i];
    size_t n = strlen(name);

    if (strncmp(a, name, n) != 0)
        return 0;
    if (a[n] == '=') {
        *val = a + n + 1;
        return 1;
    }
    if (a[n] != '\0')
        return 0;
    if (*i + 1 >= argc) {
        fprintf(stderr, "ferryd %s: %s needs a value\n", cmd, name);
        return FY_ERR;
    }
    *val = argv[++*i];
    return 1;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return FY_ERR;
        }
        p += w;
        n -= (size_t)w;
    }
    return FY_OK;
}

static void when_utc(uint64_t t, char *out, size_t cap)
{
    struct tm tm;
    time_t tt = (time_t)t;
    if (gmtime_r(&tt, &tm) == NULL || strftime(out, cap, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        snprintf(out, cap, "%llu", (unsigned long long)t);
}

/* --- keygen ----------------------------------------------------------------- */

int fy_cmd_keygen(int argc, char **argv)
{
    uint8_t pk[FY_TOKEN_PK], sk[FY_TOKEN_SK], seed[FY_TOKEN_SEED];
    char text[512];
    const char *out = NULL;
    bool force = false;
    ssize_t len;
    int i, r, fd, rc = 1;

    for (i = 1; i < argc; i++) {
        if ((r = opt(argc, argv, &i, "keygen", "-o", &out)) != 0
            || (r = opt(argc, argv, &i, "keygen", "--output", &out)) != 0) {
            if (r < 0)
                return 1;
        } else if (!strcmp(argv[i], "--force")) {
            force = true;
        } else {
            fprintf(stderr, "ferryd keygen: unknown argument \"%s\"\nusage: ferryd keygen -o FILE [--force]\n",
                    argv[i]);
            return 1;
        }
    }
    if (out == NULL || out[0] == '\0') {
        fprintf(stderr, "usage: ferryd keygen -o FILE [--force]   (writes a new relay signing key)\n");
        return 1;
    }
    if (sodium_init() < 0) {
        fprintf(stderr, "ferryd keygen: libsodium failed to initialise\n");
        return 1;
    }
    crypto_sign_keypair(pk, sk);
    crypto_sign_ed25519_sk_to_seed(seed, sk);
    sodium_memzero(sk, sizeof(sk));
    len = fy_token_key_format(seed, text, sizeof(text));
    sodium_memzero(seed, sizeof(seed));
    if (len < 0) {
        fprintf(stderr, "ferryd keygen: internal error\n");
        goto done;
    }
    if (force && unlink(out) != 0 && errno != ENOENT) {
        fprintf(stderr, "ferryd keygen: %s: %s\n", out, strerror(errno));
        goto done;
    }
    /* O_EXCL: never overwrite (or follow a link to) an existing file. */
    if ((fd = open(out, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600)) < 0) {
        if (errno == EEXIST)
            fprintf(stderr, "ferryd keygen: %s exists; refusing to overwrite a key (tokens signed with it "
                    "would stop working): choose another file, or add --force\n", out);
        else
            fprintf(stderr, "ferryd keygen: %s: %s\n", out, strerror(errno));
        goto done;
    }
    if (fchmod(fd, 0600) != 0 || write_all(fd, text, (size_t)len) != FY_OK || fsync(fd) != 0) {
        fprintf(stderr, "ferryd keygen: %s: %s\n", out, strerror(errno));
        close(fd);
        unlink(out);
        goto done;
    }
    if (close(fd) != 0) {
        fprintf(stderr, "ferryd keygen: %s: %s\n", out, strerror(errno));
        unlink(out);
        goto done;
    }
    fprintf(stderr, "ferryd: wrote a new Ed25519 relay key to %s (mode 0600). Set auth.key: %s in the "
            "relay's config, then mint agent tokens with: ferryd token --tunnel PATTERN -c CONFIG\n", out, out);
    rc = 0;
done:
    sodium_memzero(text, sizeof(text));
    return rc;
}

/* --- token ------------------------------------------------------------------ */

static int usage_token(const char *why)
{
    if (why != NULL)
        fprintf(stderr, "ferryd token: %s\n", why);
    fprintf(stderr,
            "usage: ferryd token --tunnel PATTERN [--expires 30d] [-c FILE] [--key FILE]\n"
            "       ferryd token --static --tunnel PATTERN\n"
            "  PATTERN: a tunnel id, or a glob with * (\"team-*\", \"*\")\n"
            "  signed tokens use auth.key of the config (-c FILE) or --key FILE;\n"
            "  --static prints a random token and, on stderr, its auth.tokens entry\n");
    return 1;
}

static int token_static(const char *pattern)
{
    char tok[FY_TOKEN_STATIC_LEN + 1], hex[2 * FY_TOKEN_HASH + 1];
    uint8_t h[FY_TOKEN_HASH];
    int rc = 1;

    if (fy_token_static_new(tok, sizeof(tok)) < 0) {
        fprintf(stderr, "ferryd token: internal error\n");
        return 1;
    }
    fy_token_static_hash(tok, strlen(tok), h);
    sodium_bin2hex(hex, sizeof(hex), h, sizeof(h));
    if (printf("%s\n", tok) < 0 || fflush(stdout) != 0) {
        fprintf(stderr, "ferryd token: stdout: %s\n", strerror(errno));
        goto done;
    }
    fprintf(stderr, "ferryd: a new static agent token for tunnels \"%s\" (printed on stdout; the relay "
            "keeps only its hash). Add this entry to auth.tokens in the relay's config:\n"
            "  - {hash: \"blake2b:%s\", tunnels: \"%s\"}\n", pattern, hex, pattern);
    rc = 0;
done:
    sodium_memzero(tok, sizeof(tok));
    return rc;
}

int fy_cmd_token(int argc, char **argv)
{
    const char *pattern_arg = NULL, *expires = NULL, *conf_path = NULL, *key_path = NULL, *val;
    uint8_t sk[FY_TOKEN_SK], pk[FY_TOKEN_PK], jti[8];
    char err[1024], out[FY_TOKEN_MAX + 1], when[32];
    fy_conf_t *conf = NULL;
    bool is_static = false;
    fy_token_t t;
    uint64_t ms, now;
    ssize_t len;
    size_t i, pl;
    int a, r, rc = 1;

    memset(&t, 0, sizeof(t));
    for (a = 1; a < argc; a++) {
        if ((r = opt(argc, argv, &a, "token", "--tunnel", &val)) != 0
            || (r = opt(argc, argv, &a, "token", "--tunnels", &val)) != 0) {
            if (r < 0)
                return 1;
            pattern_arg = val;
        } else if ((r = opt(argc, argv, &a, "token", "--expires", &val)) != 0) {
            if (r < 0)
                return 1;
            expires = val;
        } else if ((r = opt(argc, argv, &a, "token", "-c", &val)) != 0
                   || (r = opt(argc, argv, &a, "token", "--config", &val)) != 0) {
            if (r < 0)
                return 1;
            conf_path = val;
        } else if ((r = opt(argc, argv, &a, "token", "--key", &val)) != 0) {
            if (r < 0)
                return 1;
            key_path = val;
        } else if (!strcmp(argv[a], "--static")) {
            is_static = true;
        } else {
            snprintf(err, sizeof(err), "unknown argument \"%s\"", argv[a]);
            return usage_token(err);
        }
    }
    if (pattern_arg == NULL)
        return usage_token("--tunnel PATTERN is required (\"*\" covers every id)");
    pl = strlen(pattern_arg);
    for (i = 0; i < pl && i < FY_TOKEN_PATTERN_MAX; i++)   /* ids are case-folded */
        t.pattern[i] = (char)(pattern_arg[i] >= 'A' && pattern_arg[i] <= 'Z' ? pattern_arg[i] | 0x20 : pattern_arg[i]);
    if (pl > FY_TOKEN_PATTERN_MAX || !fy_token_pattern_valid(t.pattern, pl)) {
        fprintf(stderr, "ferryd token: --tunnel \"%s\" is not a tunnel id or a glob of a-z 0-9 - * "
                "(at most %d characters)\n", pattern_arg, FY_TOKEN_PATTERN_MAX);
        return 1;
    }
    if (sodium_init() < 0) {
        fprintf(stderr, "ferryd token: libsodium failed to initialise\n");
        return 1;
    }
    if (is_static) {
        if (expires != NULL || key_path != NULL)
            return usage_token("--static tokens have no key and do not expire (remove them from "
                               "auth.tokens to revoke them)");
        return token_static(t.pattern);
    }
    if (fy_conf_duration(expires ? expires : "30d", &ms) != FY_OK || ms < 1000) {
        fprintf(stderr, "ferryd token: --expires \"%s\" is not a duration of at least 1s (e.g. 12h, 30d, 365d)\n",
                expires ? expires : "30d");
        return 1;
    }
    now = (uint64_t)time(NULL);
    if (ms / 1000 > FY_TOKEN_EXP_MAX - now) {
        fprintf(stderr, "ferryd token: --expires %s is past the year 9999\n", expires);
        return 1;
    }
    t.exp = now + ms / 1000;
    if (key_path == NULL) {
        if ((conf = fy_config_load(conf_path, err, sizeof(err))) == NULL) {
            fprintf(stderr, "ferryd token: %s\n", err);
            return 1;
        }
        key_path = conf->auth_key;
        if (key_path == NULL || key_path[0] == '\0') {
            fprintf(stderr, "ferryd token: %s has no auth.key to sign with; give the config with -c FILE "
                    "or the key with --key FILE (ferryd keygen -o FILE writes one)\n",
                    conf_path ? conf_path : "the embedded default config");
            goto done;
        }
    }
    if (fy_auth_read_key(key_path, sk, pk, err, sizeof(err)) != FY_OK) {
        fprintf(stderr, "ferryd token: %s\n", err);
        goto done;
    }
    randombytes_buf(jti, sizeof(jti));
    for (i = 0; i < sizeof(jti); i++)
        t.jti = t.jti << 8 | jti[i];
    len = fy_token_encode(&t, sk, out, sizeof(out));
    sodium_memzero(sk, sizeof(sk));
    if (len < 0) {
        fprintf(stderr, "ferryd token: internal error: could not encode the token\n");
        goto done;
    }
    if (printf("%s\n", out) < 0 || fflush(stdout) != 0) {
        fprintf(stderr, "ferryd token: stdout: %s\n", strerror(errno));
        goto done;
    }
    when_utc(t.exp, when, sizeof(when));
    fprintf(stderr, "ferryd: token id %016llx for tunnels \"%s\", expires %s (to revoke it, add the id to "
            "auth.revoked)\n", (unsigned long long)t.jti, t.pattern, when);
    rc = 0;
done:
    sodium_memzero(sk, sizeof(sk));
    sodium_memzero(out, sizeof(out));
    fy_config_free(conf);
    return rc;
}

/* --- hash-password ---------------------------------------------------------- */

int fy_cmd_hash_password(int argc, char **argv)
{
    char pw[PASSWORD_MAX + 2], hash[crypto_pwhash_argon2id_STRBYTES];
    struct termios old, quiet;
    bool tty = isatty(0) == 1, echo_off = false;
    size_t n = 0;
    ssize_t r;
    int rc = 1;

    if (argc > 1) {
        fprintf(stderr, "usage: ferryd hash-password   (reads one line, the password, on stdin; "
                "prints an Argon2id hash for access.basic_auth)\n");
        return 1;
    }
    if (sodium_init() < 0) {
        fprintf(stderr, "ferryd hash-password: libsodium failed to initialise\n");
        return 1;
    }
    if (tty) {
        fprintf(stderr, "Password: ");
        if (tcgetattr(0, &old) == 0) {
            quiet = old;
            quiet.c_lflag &= ~(tcflag_t)ECHO;
            echo_off = tcsetattr(0, TCSAFLUSH, &quiet) == 0;
        }
    }
    /* One line: a terminal hands it over at Enter; a pipe may close early. */
    while (n < sizeof(pw) - 1 && (n == 0 || pw[n - 1] != '\n')) {
        r = read(0, pw + n, sizeof(pw) - 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        n += (size_t)r;
        if (tty)
            break;
    }
    if (echo_off)
        tcsetattr(0, TCSAFLUSH, &old);
    if (tty)
        fputc('\n', stderr);
    if (n > 0 && pw[n - 1] == '\n')
        n--;
    if (n > 0 && pw[n - 1] == '\r')
        n--;
    if (n > PASSWORD_MAX) {
        fprintf(stderr, "ferryd hash-password: longer than %d bytes\n", PASSWORD_MAX);
        goto done;
    }
    if (memchr(pw, '\n', n) != NULL) {
        fprintf(stderr, "ferryd hash-password: give one line, the password, on stdin\n");
        goto done;
    }
    if (n == 0) {
        fprintf(stderr, "ferryd hash-password: empty password\n");
        goto done;
    }
    if (crypto_pwhash_argon2id_str(hash, pw, n, crypto_pwhash_argon2id_OPSLIMIT_INTERACTIVE,
                                   crypto_pwhash_argon2id_MEMLIMIT_INTERACTIVE) != 0) {
        fprintf(stderr, "ferryd hash-password: out of memory\n");
        goto done;
    }
    printf("%s\n", hash);
    rc = fflush(stdout) == 0 ? 0 : 1;
done:
    sodium_memzero(pw, sizeof(pw));
    return rc;
}
