/*
 * http1-t.h: types of the strict HTTP/1.1 head parser and chunked scanner
 * (RFC 9110, RFC 9112). Types only; the API is in http1.h.
 */
#ifndef FY_HTTP1_T_H
#define FY_HTTP1_T_H

#include "fy.h"

/* A header field as it stands in the caller's buffer (borrowed slices). The
 * value has leading and trailing OWS trimmed. */
typedef struct fy_h1_header_s {
    const char *name;
    size_t      name_len;
    const char *value;
    size_t      value_len;
} fy_h1_header_t;

/* How the message body that follows the head is delimited (RFC 9112 §6.3). */
enum fy_h1_body {
    FY_H1_BODY_NONE = 0,    /* no body: requests without CL/TE, 1xx/204/304, HEAD responses */
    FY_H1_BODY_LENGTH,      /* content_length bytes */
    FY_H1_BODY_CHUNKED,     /* chunked; use fy_h1_chunked_scan to find its end */
    FY_H1_BODY_UNTIL_CLOSE, /* responses only: body ends when the connection closes */
};

/* Message flags. */
#define FY_H1_F_CLOSE     0x01u /* Connection: close, or HTTP/1.0 without keep-alive */
#define FY_H1_F_UPGRADE   0x02u /* Connection has the "upgrade" token and an Upgrade header is present */
#define FY_H1_F_CONTINUE  0x04u /* request: Expect: 100-continue */
#define FY_H1_F_ABSOLUTE  0x08u /* request: absolute-form target (authority/host filled from it) */
#define FY_H1_F_CONNECT   0x10u /* request: the CONNECT method (authority-form target) */
#define FY_H1_F_WEBSOCKET 0x20u /* Upgrade header names "websocket" (case-insensitive) */

/* A parsed request head. Every pointer borrows the parsed buffer. */
typedef struct fy_h1_request_s {
    const char     *method;
    size_t          method_len;
    const char     *target;      /* as sent: origin-form "/p?q", absolute-form, "*", or authority */
    size_t          target_len;
    const char     *path;        /* origin-form part of target ("/p?q"; for absolute-form the
                                  * part after the authority, "/" if empty) */
    size_t          path_len;
    const char     *host;        /* Host header value (NULL if absent) */
    size_t          host_len;
    const char     *authority;   /* absolute-form authority, else NULL */
    size_t          authority_len;
    int             minor;       /* HTTP/1.minor: 0 or 1 */
    fy_h1_header_t *headers;     /* the caller's array, nheaders filled */
    size_t          nheaders;
    size_t          head_len;    /* bytes from the start of the buffer through the final CRLF CRLF */
    enum fy_h1_body body;
    uint64_t        content_length; /* when body == FY_H1_BODY_LENGTH */
    unsigned        flags;       /* FY_H1_F_* */
    /* On FY_ERR: the status to answer (400, 431, 501, 505) and a stable
     * symbolic code for X-Ferry-Error ("bad_request", "header_too_large",
     * "bad_version", "not_implemented") plus a short human reason. */
    int             err_status;
    const char     *err_code;
    const char     *err_reason;
} fy_h1_request_t;

/* A parsed response head. */
typedef struct fy_h1_response_s {
    int             status;      /* 100..999 */
    int             minor;
    const char     *reason;
    size_t          reason_len;
    fy_h1_header_t *headers;
    size_t          nheaders;
    size_t          head_len;
    enum fy_h1_body body;        /* already accounts for HEAD, 1xx, 204, 304 */
    uint64_t        content_length;
    unsigned        flags;       /* FY_H1_F_CLOSE, FY_H1_F_UPGRADE (101) */
    const char     *err_reason;  /* on FY_ERR */
} fy_h1_response_t;

/* Limits the caller passes in (from limits.max_headers / max_header_bytes). */
typedef struct fy_h1_limits_s {
    size_t max_headers;      /* header fields, at most the caller's array size */
    size_t max_head_bytes;   /* request line + fields + CRLFs */
} fy_h1_limits_t;

/* Resumable chunked-body scanner state (nginx sw_* style). Zero it to start. */
typedef struct fy_h1_chunked_s {
    int      state;          /* private */
    uint64_t remaining;      /* data bytes left in the current chunk */
    size_t   line_bytes;     /* bytes of the current size line / trailer section, for limits */
    size_t   size_digits;    /* hex digits seen in the current size */
    bool     done;           /* the last-chunk, trailers and final CRLF were consumed */
    const char *err_reason;  /* on FY_ERR */
} fy_h1_chunked_t;

/* Where a message body ends, as its bytes arrive (RFC 9112 §6.3): one
 * state for any framing. Start it with fy_h1_framer_start. */
typedef struct fy_h1_framer_s {
    enum fy_h1_body kind;
    uint64_t        left;        /* FY_H1_BODY_LENGTH: bytes still to come */
    fy_h1_chunked_t chunked;     /* FY_H1_BODY_CHUNKED */
    bool            done;        /* the body ended (never for FY_H1_BODY_UNTIL_CLOSE) */
} fy_h1_framer_t;

#endif
