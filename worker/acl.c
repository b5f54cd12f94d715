/*
 * acl.c: end-user access control (SPEC.md `access:`): per tunnel pattern,
 * deny and allow lists of CIDRs and HTTP basic auth against Argon2id hashes.
 *
 * An Argon2id check costs about 100 ms and 64 MiB here, so it never runs on
 * the worker's loop: one verifier thread per worker takes jobs from a
 * bounded queue (full: 503), and the loop learns the result through a pipe.
 * Credentials that verified are cached as a keyed BLAKE2b of what was
 * presented (bounded, five minutes); wrong ones are never cached, so every
 * new guess costs a full check while a right one is cheap to check again.
 */
#include "worker/worker.h"
#include "crypto/token.h"
#include "log/log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sodium.h>

#define QUEUE_MAX   64
#define CACHE_SIZE  1024
#define CACHE_TTL_MS (300u * 1000)

typedef struct {
    uint64_t serial;           /* the client's */
    char     hash[128];
    char     pass[256];
    size_t   passlen;
    uint8_t  key[32];          /* the cache key of these credentials */
    bool     unknown;          /* no such user: checked all the same, then refused */
} job_t;

typedef struct {
    uint64_t serial;
    int      ok;
    uint8_t  key[32];
} result_t;

struct fy_acl_s {
    pthread_t       thread;
    pthread_mutex_t mu;
    pthread_cond_t  cv;
    job_t           queue[QUEUE_MAX];
    unsigned        head, len;
    bool            stop;
    int             pipe[2];   /* results: [1] the thread writes, [0] the loop reads */
    fy_io_t         io;
    fy_worker_t    *w;
    struct {
        uint8_t  key[32];
        uint64_t expires;      /* ms; 0 = empty */
    } cache[CACHE_SIZE];
};

/* A user name that is not configured still costs a full check, against
 * this hash of a throwaway password (made once with the INTERACTIVE limits;
 * computing it at start would cost every worker 64 MiB). */
static const char dummy_hash[] =
    "$argon2id$v=19$m=65536,t=2,p=1$U6bj8XkVx0KXkx3frdTVrw$vQIzSDGXtj+Nen59kGZTxk/92O1XfOmC+UJo+0RwTNs";

static void *verifier(void *arg)
{
    fy_acl_t *a = arg;
    for (;;) {
        job_t j;
        result_t r;
        pthread_mutex_lock(&a->mu);
        while (a->len == 0 && !a->stop)
            pthread_cond_wait(&a->cv, &a->mu);
        if (a->stop) {
            pthread_mutex_unlock(&a->mu);
            return NULL;
        }
        j = a->queue[a->head];
        sodium_memzero(&a->queue[a->head], sizeof(j));
        a->head = (a->head + 1) % QUEUE_MAX;
        a->len--;
        pthread_mutex_unlock(&a->mu);
        memset(&r, 0, sizeof(r));
        r.serial = j.serial;
        r.ok = j.hash[0] != '\0' && crypto_pwhash_str_verify(j.hash, j.pass, j.passlen) == 0 && !j.unknown;
        memcpy(r.key, j.key, sizeof(r.key));
        sodium_memzero(&j, sizeof(j));
        /* One result is far below PIPE_BUF: written whole or not at all. */
        while (write(a->pipe[1], &r, sizeof(r)) < 0 && errno == EINTR)
            ;
    }
}

static bool cache_has(fy_acl_t *a, const uint8_t key[32], uint64_t now)
{
    unsigned i = (key[0] | (unsigned)key[1] << 8) % CACHE_SIZE;
    return a->cache[i].expires > now && sodium_memcmp(a->cache[i].key, key, 32) == 0;
}

static void cache_put(fy_acl_t *a, const uint8_t key[32], uint64_t now)
{
    unsigned i = (key[0] | (unsigned)key[1] << 8) % CACHE_SIZE;
    memcpy(a->cache[i].key, key, 32);
    a->cache[i].expires = now + CACHE_TTL_MS;
}

static void on_results(fy_ev_t *ev, fy_io_t *io, uint32_t events)
{
    fy_acl_t *a = io->data;
    result_t r;

    while (read(io->fd, &r, sizeof(r)) == (ssize_t)sizeof(r)) {
        fy_client_t *c;
        if (r.ok)
            cache_put(a, r.key, fy_ev_now(ev));
        for (c = a->w->clients; c != NULL; c = c->next) {
            if (c->serial == r.serial && c->state == FY_C_VERIFY) {
                c->verified = r.ok ? 1 : 2;
                memcpy(c->verified_key, r.key, sizeof(c->verified_key));
                c->state = FY_C_HEAD;
                a->w->nparked--;
                fy_client_resume(c);
                break;
            }
        }
    }
}

int fy_acl_start(fy_worker_t *w)
{
    fy_acl_t *a = calloc(1, sizeof(*a));

    if (a == NULL || pipe2(a->pipe, O_NONBLOCK | O_CLOEXEC) < 0) {
        free(a);
        return FY_ERR;
    }
    /* The thread's end blocks: a result is never dropped. */
    fcntl(a->pipe[1], F_SETFL, 0);
    pthread_mutex_init(&a->mu, NULL);
    pthread_cond_init(&a->cv, NULL);
    a->w = w;
    a->io.fd = a->pipe[0];
    a->io.cb = on_results;
    a->io.data = a;
    if (pthread_create(&a->thread, NULL, verifier, a) != 0 || fy_io_set(w->ev, &a->io, EPOLLIN) != FY_OK) {
        close(a->pipe[0]);
        close(a->pipe[1]);
        free(a);
        return FY_ERR;
    }
    w->acl = a;
    return FY_OK;
}

void fy_acl_stop(fy_worker_t *w)
{
    fy_acl_t *a = w->acl;
    if (a == NULL)
        return;
    pthread_mutex_lock(&a->mu);
    a->stop = true;
    pthread_cond_signal(&a->cv);
    pthread_mutex_unlock(&a->mu);
    pthread_join(a->thread, NULL);
    fy_io_del(w->ev, &a->io);
    close(a->pipe[0]);
    close(a->pipe[1]);
    sodium_memzero(a, sizeof(*a));
    free(a);
    w->acl = NULL;
}

/* The address the rules judge: the peer, or, when the peer is a trusted
 * load balancer, the nearest address in X-Forwarded-For it did not add. */
/* Judge one X-Forwarded-For line right to left. Returns true when the
 * walk must go on to the line before (every address so far trusted). */
static bool walk_xff(const fy_conf_t *conf, const fy_h1_header_t *h, struct sockaddr_storage *out)
{
    const char *p, *end = h->value + h->value_len;

    while (end > h->value) {
        char ip[64];
        struct sockaddr_storage ss;
        size_t n;
        for (p = end; p > h->value && p[-1] != ','; p--)
            ;
        while (p < end && (*p == ' ' || *p == '\t'))
            p++;
        n = (size_t)(end - p);
        while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
            n--;
        end = p > h->value ? p - 1 : p;
        while (end > h->value && end[-1] == ',')
            end--;
        if (n == 0)
            continue;   /* an empty list element */
        if (n >= sizeof(ip))
            return false;
        memcpy(ip, p, n);
        ip[n] = '\0';
        memset(&ss, 0, sizeof(ss));
        if (inet_pton(AF_INET, ip, &((struct sockaddr_in *)&ss)->sin_addr) == 1)
            ss.ss_family = AF_INET;
        else if (inet_pton(AF_INET6, ip, &((struct sockaddr_in6 *)&ss)->sin6_addr) == 1)
            ss.ss_family = AF_INET6;
        else
            return false;   /* garbage: keep what was judged so far */
        *out = ss;
        if (!fy_config_trusted(conf, (const struct sockaddr *)&ss))
            return false;
    }
    return true;
}

/* The address the rules judge: the peer, or, when the peer is a trusted
 * load balancer, the nearest address in X-Forwarded-For (all its lines, as
 * one list, RFC 9110 §5.3) that a trusted proxy did not add. */
static void client_addr(const fy_client_t *c, const fy_h1_request_t *req, struct sockaddr_storage *out)
{
    const fy_conf_t *conf = c->w->conf;
    size_t i;

    *out = c->peer;
    if (!fy_config_trusted(conf, (const struct sockaddr *)&c->peer))
        return;
    for (i = req->nheaders; i-- > 0;) {
        const fy_h1_header_t *h = &req->headers[i];
        if (fy_ieq(h->name, h->name_len, "x-forwarded-for") && !walk_xff(conf, h, out))
            return;
    }
}

bool fy_acl_applies(const fy_conf_t *conf, const char *id)
{
    int i;
    for (i = 0; i < conf->naccess; i++)
        if (fy_token_pattern_match(conf->access[i].pattern, strlen(conf->access[i].pattern), id, strlen(id)))
            return true;
    return false;
}

int fy_acl_check(fy_client_t *c, const fy_h1_request_t *req, const char *id)
{
    fy_worker_t *w = c->w;
    const fy_conf_t *conf = w->conf;
    const fy_access_rule_t *r = NULL;
    const fy_h1_header_t *h;
    struct sockaddr_storage who;
    char raw[400], *colon;
    const char *v, *hash = NULL;
    size_t n, ul;
    uint8_t key[32];
    crypto_generichash_state st;
    int i, verdict;
    fy_acl_t *a;
    job_t *j;

    for (i = 0; i < conf->naccess && r == NULL; i++)
        if (fy_token_pattern_match(conf->access[i].pattern, strlen(conf->access[i].pattern), id, strlen(id)))
            r = &conf->access[i];
    verdict = c->verified;
    c->verified = 0;
    if (c->prejudged) {
        /* The worker that handed this request over judged it already. */
        c->prejudged = false;
        return FY_ACL_OK;
    }
    if (r == NULL)
        return FY_ACL_OK;
    /* The verifier starts with the first rule that needs it. */
    if (r->nusers > 0 && w->acl == NULL && fy_acl_start(w) != FY_OK)
        return FY_ACL_BUSY;
    a = w->acl;
    client_addr(c, req, &who);
    if (fy_cidr_match(r->deny, r->ndeny, (struct sockaddr *)&who)
        || (r->nallow > 0 && !fy_cidr_match(r->allow, r->nallow, (struct sockaddr *)&who)))
        return FY_ACL_DENY;
    if (r->nusers == 0)
        return FY_ACL_OK;
    h = fy_h1_find(req->headers, req->nheaders, "authorization");
    if (h == NULL || h->value_len < 7 || !fy_ieq(h->value, 6, "basic "))
        return FY_ACL_AUTH;
    for (v = h->value + 6; v < h->value + h->value_len && *v == ' '; v++)
        ;
    if (sodium_base642bin((uint8_t *)raw, sizeof(raw) - 1, v, (size_t)(h->value + h->value_len - v), NULL, &n, NULL,
                          sodium_base64_VARIANT_ORIGINAL) != 0
        || (raw[n] = '\0', colon = memchr(raw, ':', n)) == NULL) {
        sodium_memzero(raw, sizeof(raw));
        return FY_ACL_AUTH;
    }
    ul = (size_t)(colon - raw);
    for (i = 0; i < r->nusers; i++)
        if (strlen(r->users[i].user) == ul && memcmp(r->users[i].user, raw, ul) == 0)
            hash = r->users[i].hash;
    /* The cache key binds the rule's hash, so a changed password (reload)
     * never matches an old entry. */
    crypto_generichash_init(&st, w->digest_key, sizeof(w->digest_key), sizeof(key));
    crypto_generichash_update(&st, (const uint8_t *)raw, n);
    crypto_generichash_update(&st, (const uint8_t *)(hash ? hash : "-"), hash ? strlen(hash) : 1);
    crypto_generichash_final(&st, key, sizeof(key));
    /* An answer counts only for the very credentials and hash it was
     * asked about (a later request of the connection must not inherit it). */
    if (verdict != 0 && sodium_memcmp(c->verified_key, key, sizeof(key)) == 0) {
        sodium_memzero(raw, sizeof(raw));
        return verdict == 1 && hash != NULL ? FY_ACL_OK : FY_ACL_AUTH;
    }
    if (hash != NULL && cache_has(a, key, fy_ev_now(w->ev))) {
        sodium_memzero(raw, sizeof(raw));
        return FY_ACL_OK;
    }
    pthread_mutex_lock(&a->mu);
    if (a->len == QUEUE_MAX) {
        pthread_mutex_unlock(&a->mu);
        sodium_memzero(raw, sizeof(raw));
        return FY_ACL_BUSY;
    }
    j = &a->queue[(a->head + a->len) % QUEUE_MAX];
    j->serial = c->serial;
    snprintf(j->hash, sizeof(j->hash), "%s", hash ? hash : dummy_hash);
    j->passlen = FY_MIN(n - ul - 1, sizeof(j->pass));
    memcpy(j->pass, colon + 1, j->passlen);
    memcpy(j->key, key, sizeof(key));
    j->unknown = hash == NULL;   /* the answer is no, but not sooner than for a known user */
    a->len++;
    pthread_cond_signal(&a->cv);
    pthread_mutex_unlock(&a->mu);
    sodium_memzero(raw, sizeof(raw));
    return FY_ACL_PENDING;
}
