/*
 * fy.h: the few definitions every ferry file shares: return codes, guard
 * macros and invariant checks. Included first by every .c file.
 */
#ifndef FY_H
#define FY_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include <sys/types.h>

#define FY_VERSION "0.1.0"

/* I/O and parser return values (nginx/libuv style): >= 0 is success or a
 * byte count; these are the only negative values. */
#define FY_OK     0
#define FY_ERR   -1
#define FY_AGAIN -2
#define FY_EOF   -3

#define FY_MUST_USE __attribute__((warn_unused_result))
#define FY_UNUSED   __attribute__((unused))
#define FY_PRINTF(a, b) __attribute__((format(printf, a, b)))

#define FY_GUARD(x)  do { if ((x) < 0) return FY_ERR; } while (0)
#define FY_ENSURE(c) do { if (!(c)) return FY_ERR; } while (0)

#define FY_MIN(a, b) ((a) < (b) ? (a) : (b))
#define FY_MAX(a, b) ((a) > (b) ? (a) : (b))
#define FY_NELEM(a)  (sizeof(a) / sizeof((a)[0]))

/* Invariants. fy_assert aborts in every build: it guards our own logic,
 * never peer input (a worker never aborts on what a peer sends). */
void fy__assert_fail(const char *expr, const char *file, int line) __attribute__((noreturn));
#define fy_assert(e) ((e) ? (void)0 : fy__assert_fail(#e, __FILE__, __LINE__))

/* Case-insensitive ASCII compare of a length-delimited slice with a C
 * literal; no locale, no NUL needed in s. */
static inline bool fy_ieq(const char *s, size_t n, const char *lit)
{
    size_t i;
    for (i = 0; i < n; i++) {
        unsigned char a = (unsigned char)s[i], b = (unsigned char)lit[i];
        if (b == '\0')
            return false;
        if (a >= 'A' && a <= 'Z')
            a |= 0x20;
        if (b >= 'A' && b <= 'Z')
            b |= 0x20;
        if (a != b)
            return false;
    }
    return lit[n] == '\0';
}

#endif
