/*
 * http1.h: strict HTTP/1.1 head parser and chunked-body scanner. Sans-I/O:
 * it reads the caller's bytes and never touches a socket. Shared by the
 * relay (routing, framing of both directions) and the agent (Host rewrite).
 *
 * Strictness (a relay must never parse a message differently from the origin
 * behind it): CRLF line endings only (bare LF or bare CR is an error), no
 * obs-fold, no whitespace between a field name and its colon, field names are
 * tokens, field values have no CTL but HTAB (no NUL), Content-Length is
 * 1*DIGIT without overflow and may appear once, Transfer-Encoding in a request
 * must be exactly "chunked" (case-insensitive) and never with Content-Length,
 * Host exactly once in HTTP/1.1 requests, and the absolute-form authority must
 * agree with Host (RFC 9112 §3.2.2).
 */
#ifndef FY_HTTP1_H
#define FY_HTTP1_H

#include "http1/http1-t.h"

/*
 * Parse a request head at the start of buf[0..len).
 * headers/limits->max_headers: the caller's array that receives the fields.
 * Returns head_len (> 0) when the head is complete and valid; FY_AGAIN when
 * more bytes are needed (only while len < limits->max_head_bytes); FY_ERR with
 * req->err_status/err_code/err_reason set:
 *   400 bad_request      malformed line or field, bare CR/LF, obs-fold, NUL,
 *                        CL+TE, duplicate/differing/invalid Content-Length, TE
 *                        other than "chunked", missing or duplicate Host in 1.1,
 *                        absolute-form authority that disagrees with Host
 *   431 header_too_large head over max_head_bytes or more than max_headers fields
 *   505 bad_version      HTTP version other than 1.0/1.1 (includes the HTTP/2
 *                        preface "PRI * HTTP/2.0" and HTTP/0.9 "GET /")
 * Borrows buf; req's slices point into it.
 */
int fy_h1_parse_request(const char *buf, size_t len, fy_h1_request_t *req,
                        fy_h1_header_t *headers, const fy_h1_limits_t *limits) FY_MUST_USE;

/*
 * Parse a response head. request_was_head: the request this answers used
 * HEAD (so no body whatever the headers say). Returns head_len, FY_AGAIN or
 * FY_ERR (resp->err_reason) as above. Body framing per RFC 9112 §6.3: 1xx,
 * 204, 304 and HEAD have none; 101 sets FY_H1_F_UPGRADE; Transfer-Encoding
 * whose last coding is chunked is chunked (and wins over Content-Length,
 * which is then ignored); other Transfer-Encoding means until close;
 * Content-Length (differing duplicates are an error); else until close.
 */
int fy_h1_parse_response(const char *buf, size_t len, fy_h1_response_t *resp,
                         fy_h1_header_t *headers, const fy_h1_limits_t *limits,
                         bool request_was_head) FY_MUST_USE;

/*
 * Scan chunked-body bytes (RFC 9112 §7.1) without changing them: the relay
 * forwards them as they are and only needs to know where the body ends.
 * Consumes from buf[0..len) and returns how many bytes belong to the body
 * (== len unless st->done became true inside buf), or FY_ERR with
 * st->err_reason (bad hex, size over 2^60, missing CRLF, bare LF, a size line
 * with extensions over 4096 bytes, trailers over 32768 bytes, invalid
 * trailer field). Never returns FY_AGAIN: 0..len bytes consumed is normal.
 * Chunk extensions are accepted and skipped (bounded); trailers are skipped.
 */
ssize_t fy_h1_chunked_scan(fy_h1_chunked_t *st, const char *buf, size_t len) FY_MUST_USE;

/* Begin framing a body of this kind (content_length for FY_H1_BODY_LENGTH).
 * A body of kind NONE or of length 0 is done at once. */
void fy_h1_framer_start(fy_h1_framer_t *f, enum fy_h1_body kind, uint64_t content_length);
/* Of buf[0..len), the bytes that belong to the body (the rest, if any,
 * follows it); sets f->done when the body ends. FY_ERR on a bad chunked
 * body (f->chunked.err_reason says why). Borrows buf. */
ssize_t fy_h1_framer_scan(fy_h1_framer_t *f, const char *buf, size_t len) FY_MUST_USE;

/* Find a header by name (case-insensitive). Returns the first match or NULL. */
const fy_h1_header_t *fy_h1_find(const fy_h1_header_t *h, size_t n, const char *name);

/* True if the comma-separated value list contains token (case-insensitive,
 * OWS around elements ignored). */
bool fy_h1_has_token(const char *value, size_t len, const char *token);

#endif
