/*
 * log.h: ferryd's event log: one line per event, written whole with one
 * write(2) so lines from several processes never interleave. Text
 * ("2026-01-01T12:00:00Z [info] 1234: message") on the configured fd.
 */
#ifndef FY_LOG_H
#define FY_LOG_H

#include "fy.h"

enum fy_log_level { FY_LOG_ERR = 0, FY_LOG_WARN, FY_LOG_INFO, FY_LOG_DEBUG };

/* Where lines go (default 2) and the most verbose level written. */
void fy_log_set_fd(int fd);
int fy_log_fd(void);
void fy_log_set_level(enum fy_log_level lvl);

/*
 * (Re)open the log: "stderr", "stdout" or a file path (appended to, created
 * 0640), in text or JSON lines. The previous file is closed once the new one
 * is open (USR1 after logrotate moved it). FY_OK, or FY_ERR (errno) with the
 * old destination kept.
 */
int fy_log_open(const char *file, bool json) FY_MUST_USE;
/* At exit: close the log file (later lines go to stderr). */
void fy_log_close(void);

/* Append s[0..n) to out as the inside of a JSON string (escaped). */
size_t fy_log_json_escape(char *out, size_t cap, const char *s, size_t n);

/* Log one line; err > 0 appends ": strerror(err)". */
void fy_log(enum fy_log_level lvl, int err, const char *fmt, ...) FY_PRINTF(3, 4);

#define fy_log_err(...)  fy_log(FY_LOG_ERR, 0, __VA_ARGS__)
#define fy_log_warn(...) fy_log(FY_LOG_WARN, 0, __VA_ARGS__)
#define fy_log_info(...) fy_log(FY_LOG_INFO, 0, __VA_ARGS__)
#ifdef FY_DEBUG
#define fy_log_debug(...) fy_log(FY_LOG_DEBUG, 0, __VA_ARGS__)
#else
#define fy_log_debug(...) ((void)0)
#endif

#endif
