/*
 * json.c: the local API's JSON. A recursive-descent reader (RFC 8259) that
 * builds a small tree: the API's bodies are a few hundred bytes and read
 * once, so a tree is simplest; nesting is capped so that a hostile body
 * cannot exhaust the stack. And a writer that appends to a bounded buffer,
 * placing commas itself.
 */
#include "agent/agent.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define JSON_MAX_DEPTH 32

typedef struct {
    const char *p;
    const char *end;
    int         depth;
    const char *err;
} reader_t;

fy_jnode_t *fy_jnode_new(enum fy_jtype type, const char *s, size_t slen)
{
    fy_jnode_t *n = calloc(1, sizeof(*n));
    if (n == NULL)
        return NULL;
    n->type = type;
    if (s != NULL) {
        if ((n->s = malloc(slen + 1)) == NULL) {
            free(n);
            return NULL;
        }
        memcpy(n->s, s, slen);
        n->s[slen] = '\0';
        n->slen = slen;
    }
    return n;
}

void fy_jnode_free(fy_jnode_t *n)
{
    while (n != NULL) {
        fy_jnode_t *next = n->next;
        fy_jnode_free(n->kids);
        free(n->key);
        free(n->s);
        free(n);
        n = next;
    }
}

const fy_jnode_t *fy_jnode_get(const fy_jnode_t *obj, const char *key)
{
    const fy_jnode_t *k, *found = NULL;
    if (obj == NULL || obj->type != FY_J_OBJ)
        return NULL;
    for (k = obj->kids; k != NULL; k = k->next)
        if (k->key != NULL && strcmp(k->key, key) == 0)
            found = k;
    return found;
}

const char *fy_jnode_scalar(const fy_jnode_t *n)
{
    if (n == NULL || (n->type != FY_J_STR && n->type != FY_J_NUM && n->type != FY_J_BOOL))
        return NULL;
    return n->s;
}

static void skip_ws(reader_t *r)
{
    while (r->p < r->end && (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r'))
        r->p++;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static int read_hex4(reader_t *r, unsigned *out)
{
    unsigned v = 0;
    int i, h;
    if (r->end - r->p < 4)
        return FY_ERR;
    for (i = 0; i < 4; i++) {
        if ((h = hexval(r->p[i])) < 0)
            return FY_ERR;
        v = v << 4 | (unsigned)h;
    }
    r->p += 4;
    *out = v;
    return FY_OK;
}

static size_t put_utf8(char *o, unsigned cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xc0 | cp >> 6);
        o[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xe0 | cp >> 12);
        o[1] = (char)(0x80 | (cp >> 6 & 0x3f));
        o[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (char)(0xf0 | cp >> 18);
    o[1] = (char)(0x80 | (cp >> 12 & 0x3f));
    o[2] = (char)(0x80 | (cp >> 6 & 0x3f));
    o[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

/* A string at r->p (on the opening quote): decoded into an owned buffer. */
static char *read_string(reader_t *r, size_t *len)
{
    const char *start = ++r->p;
    char *out, *o;

    /* Decoded text is never longer than its escaped form. */
    while (r->p < r->end && *r->p != '"')
        r->p += (*r->p == '\\' && r->end - r->p > 1) ? 2 : 1;
    if (r->p >= r->end) {
        r->err = "unterminated string";
        return NULL;
    }
    if ((out = malloc((size_t)(r->p - start) + 1)) == NULL) {
        r->err = "out of memory";
        return NULL;
    }
    r->p = start;
    o = out;
    while (*r->p != '"') {
        unsigned char c = (unsigned char)*r->p++;
        unsigned cp, lo;
        if (c < 0x20) {
            r->err = "control character in a string";
            goto fail;
        }
        if (c != '\\') {
            *o++ = (char)c;
            continue;
        }
        switch (*r->p++) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '/': *o++ = '/'; break;
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'n': *o++ = '\n'; break;
        case 'r': *o++ = '\r'; break;
        case 't': *o++ = '\t'; break;
        case 'u':
            if (read_hex4(r, &cp) != FY_OK) {
                r->err = "bad \\u escape";
                goto fail;
            }
            if (cp >= 0xd800 && cp < 0xdc00) {
                if (r->end - r->p < 6 || r->p[0] != '\\' || r->p[1] != 'u') {
                    r->err = "lone surrogate";
                    goto fail;
                }
                r->p += 2;
                if (read_hex4(r, &lo) != FY_OK || lo < 0xdc00 || lo > 0xdfff) {
                    r->err = "bad surrogate pair";
                    goto fail;
                }
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            } else if (cp >= 0xdc00 && cp < 0xe000) {
                r->err = "lone surrogate";
                goto fail;
            }
            /* \u escapes are at least 6 bytes; UTF-8 needs at most 4. */
            o += put_utf8(o, cp);
            break;
        default:
            r->err = "bad escape";
            goto fail;
        }
    }
    r->p++;
    *o = '\0';
    *len = (size_t)(o - out);
    return out;
fail:
    free(out);
    return NULL;
}

static fy_jnode_t *read_value(reader_t *r);

static fy_jnode_t *read_number(reader_t *r)
{
    const char *s = r->p;
    if (r->p < r->end && *r->p == '-')
        r->p++;
    if (r->p >= r->end || *r->p < '0' || *r->p > '9')
        goto bad;
    if (*r->p == '0')
        r->p++;
    else
        while (r->p < r->end && *r->p >= '0' && *r->p <= '9')
            r->p++;
    if (r->p < r->end && *r->p == '.') {
        r->p++;
        if (r->p >= r->end || *r->p < '0' || *r->p > '9')
            goto bad;
        while (r->p < r->end && *r->p >= '0' && *r->p <= '9')
            r->p++;
    }
    if (r->p < r->end && (*r->p == 'e' || *r->p == 'E')) {
        r->p++;
        if (r->p < r->end && (*r->p == '+' || *r->p == '-'))
            r->p++;
        if (r->p >= r->end || *r->p < '0' || *r->p > '9')
            goto bad;
        while (r->p < r->end && *r->p >= '0' && *r->p <= '9')
            r->p++;
    }
    return fy_jnode_new(FY_J_NUM, s, (size_t)(r->p - s));
bad:
    r->err = "bad number";
    return NULL;
}

static fy_jnode_t *read_word(reader_t *r, const char *w, enum fy_jtype type, const char *text)
{
    size_t n = strlen(w);
    if ((size_t)(r->end - r->p) < n || memcmp(r->p, w, n) != 0) {
        r->err = "unexpected character";
        return NULL;
    }
    r->p += n;
    return fy_jnode_new(type, text, text ? strlen(text) : 0);
}

static fy_jnode_t *read_container(reader_t *r, bool obj)
{
    fy_jnode_t *n = fy_jnode_new(obj ? FY_J_OBJ : FY_J_ARR, NULL, 0), **tail;
    char close = obj ? '}' : ']';

    if (n == NULL) {
        r->err = "out of memory";
        return NULL;
    }
    if (++r->depth > JSON_MAX_DEPTH) {
        r->err = "nested too deeply";
        goto fail;
    }
    tail = &n->kids;
    r->p++;
    skip_ws(r);
    if (r->p < r->end && *r->p == close) {
        r->p++;
        r->depth--;
        return n;
    }
    for (;;) {
        char *key = NULL;
        size_t klen;
        fy_jnode_t *v;

        skip_ws(r);
        if (obj) {
            if (r->p >= r->end || *r->p != '"') {
                r->err = "expected a member name";
                goto fail;
            }
            if ((key = read_string(r, &klen)) == NULL)
                goto fail;
            skip_ws(r);
            if (r->p >= r->end || *r->p != ':') {
                free(key);
                r->err = "expected ':'";
                goto fail;
            }
            r->p++;
        }
        if ((v = read_value(r)) == NULL) {
            free(key);
            goto fail;
        }
        v->key = key;
        *tail = v;
        tail = &v->next;
        skip_ws(r);
        if (r->p < r->end && *r->p == ',') {
            r->p++;
            continue;
        }
        if (r->p < r->end && *r->p == close) {
            r->p++;
            r->depth--;
            return n;
        }
        r->err = obj ? "expected ',' or '}'" : "expected ',' or ']'";
        goto fail;
    }
fail:
    fy_jnode_free(n);
    return NULL;
}

static fy_jnode_t *read_value(reader_t *r)
{
    fy_jnode_t *n;
    char *s;
    size_t len;

    skip_ws(r);
    if (r->p >= r->end) {
        r->err = "unexpected end";
        return NULL;
    }
    switch (*r->p) {
    case '{':
        return read_container(r, true);
    case '[':
        return read_container(r, false);
    case '"':
        if ((s = read_string(r, &len)) == NULL)
            return NULL;
        if ((n = fy_jnode_new(FY_J_STR, NULL, 0)) == NULL) {
            free(s);
            r->err = "out of memory";
            return NULL;
        }
        n->s = s;
        n->slen = len;
        return n;
    case 't':
        return read_word(r, "true", FY_J_BOOL, "true");
    case 'f':
        return read_word(r, "false", FY_J_BOOL, "false");
    case 'n':
        return read_word(r, "null", FY_J_NULL, NULL);
    default:
        return read_number(r);
    }
}

fy_jnode_t *fy_json_parse(const char *p, size_t n, char *err, size_t errlen)
{
    reader_t r = {p, p + n, 0, NULL};
    fy_jnode_t *v = read_value(&r);

    if (v != NULL) {
        skip_ws(&r);
        if (r.p != r.end) {
            fy_jnode_free(v);
            v = NULL;
            r.err = "trailing bytes after the value";
        }
    }
    if (v == NULL)
        snprintf(err, errlen, "invalid JSON at byte %zu: %s", (size_t)(r.p - p),
                 r.err ? r.err : "out of memory");
    return v;
}

/* --- writer ----------------------------------------------------------------- */

void fy_jw_init(fy_jw_t *w, fy_buf_t *b, size_t max)
{
    memset(w, 0, sizeof(*w));
    w->b = b;
    w->max = max;
}

static void put(fy_jw_t *w, const char *s, size_t n)
{
    if (!w->err && fy_buf_append(w->b, s, n, w->max) != FY_OK)
        w->err = true;
}

void fy_jw_raw(fy_jw_t *w, const char *s) { put(w, s, strlen(s)); }

static void sep(fy_jw_t *w)
{
    if (w->after_key) {
        w->after_key = false;
        return;
    }
    if (w->depth > 0) {
        if (!w->first[w->depth])
            put(w, ",", 1);
        w->first[w->depth] = false;
    }
}

static void open_c(fy_jw_t *w, const char *c)
{
    sep(w);
    put(w, c, 1);
    if (w->depth + 1 >= (int)FY_NELEM(w->first)) {
        w->err = true;
        return;
    }
    w->first[++w->depth] = true;
}

static void close_c(fy_jw_t *w, const char *c)
{
    if (w->depth > 0)
        w->depth--;
    put(w, c, 1);
}

void fy_jw_obj(fy_jw_t *w) { open_c(w, "{"); }
void fy_jw_obj_end(fy_jw_t *w) { close_c(w, "}"); }
void fy_jw_arr(fy_jw_t *w) { open_c(w, "["); }
void fy_jw_arr_end(fy_jw_t *w) { close_c(w, "]"); }

static void put_string(fy_jw_t *w, const char *s, size_t n)
{
    size_t i, run = 0;
    put(w, "\"", 1);
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[8];
        if (c >= 0x20 && c != '"' && c != '\\' && c != 0x7f)
            continue;
        put(w, s + run, i - run);
        run = i + 1;
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            put(w, esc, 2);
        } else if (c == '\n') {
            put(w, "\\n", 2);
        } else {
            snprintf(esc, sizeof(esc), "\\u%04x", c);
            put(w, esc, 6);
        }
    }
    put(w, s + run, n - run);
    put(w, "\"", 1);
}

void fy_jw_key(fy_jw_t *w, const char *k)
{
    sep(w);
    put_string(w, k, strlen(k));
    put(w, ":", 1);
    w->after_key = true;
}

void fy_jw_strn(fy_jw_t *w, const char *s, size_t n)
{
    sep(w);
    put_string(w, s, n);
}

void fy_jw_str(fy_jw_t *w, const char *s) { fy_jw_strn(w, s, strlen(s)); }

void fy_jw_u64(fy_jw_t *w, uint64_t v)
{
    char b[24];
    int n = snprintf(b, sizeof(b), "%llu", (unsigned long long)v);
    sep(w);
    put(w, b, (size_t)n);
}

void fy_jw_dbl(fy_jw_t *w, double v)
{
    char b[40];
    int n;
    if (!isfinite(v))
        v = 0;
    /* Whole numbers print as such; others keep 6 significant decimals. */
    if (v > -1e15 && v < 1e15 && v == (double)(int64_t)v)
        n = snprintf(b, sizeof(b), "%lld", (long long)v);
    else
        n = snprintf(b, sizeof(b), "%.6f", v);
    sep(w);
    put(w, b, (size_t)n);
}

void fy_jw_bool(fy_jw_t *w, bool v)
{
    sep(w);
    fy_jw_raw(w, v ? "true" : "false");
}

void fy_jw_null(fy_jw_t *w)
{
    sep(w);
    fy_jw_raw(w, "null");
}
