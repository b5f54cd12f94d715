/*
 * conf.h: value parsers shared by the relay's and the agent's config and
 * command line: durations ("500ms", "10s", "2m", "1h", "30d"; a bare number
 * is seconds), sizes ("32768", "32k", "4m"), tunnel ids.
 */
#ifndef FY_CONF_H
#define FY_CONF_H

#include "fy.h"

#define FY_ID_MAX 63

/* Duration in ms. FY_OK or FY_ERR (not a duration, or overflow). */
int fy_conf_duration(const char *s, uint64_t *ms) FY_MUST_USE;
/* Byte size. FY_OK or FY_ERR. */
int fy_conf_size(const char *s, uint64_t *bytes) FY_MUST_USE;
/* A whole number in [min, max]. */
int fy_conf_uint(const char *s, uint64_t min, uint64_t max, uint64_t *v) FY_MUST_USE;
/* Boolean: true/false/yes/no/on/off. */
int fy_conf_bool(const char *s, bool *v) FY_MUST_USE;

/*
 * Validate a tunnel id: 1..63 of [a-z0-9-] after case folding. Writes the
 * folded id (NUL-terminated) to out[FY_ID_MAX + 1]. Returns FY_OK or FY_ERR.
 */
int fy_conf_tunnel_id(const char *s, size_t n, char *out) FY_MUST_USE;

/* Read a whole small file (at most max bytes) into a new buffer, returned
 * owned with a NUL after the data, its length in *len. what names the config
 * key in errors (written to err). When private, refuse a file that group or
 * others can access. The buffer is wiped on failure paths; callers holding
 * secrets wipe it too (sodium_memzero) before free. NULL on error. */
char *fy_conf_read_file(const char *what, const char *path, size_t max, bool private, size_t *len, char *err,
                        size_t errlen);

#endif
