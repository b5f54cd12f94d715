/*
 * fy.c: the out-of-line half of fy.h.
 */
#include "fy.h"

#include <stdio.h>
#include <stdlib.h>

void fy__assert_fail(const char *expr, const char *file, int line)
{
    fprintf(stderr, "ferry: assertion failed: %s (%s:%d)\n", expr, file, line);
    abort();
}
