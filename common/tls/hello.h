/*
 * hello.h: the server name (SNI, RFC 6066 §3) of a TLS ClientHello, read
 * before any handshake so that ferryd can route a raw TLS connection to the
 * worker that owns the tunnel it names (DESIGN.md "The handoff").
 *
 * Written by hand, sans I/O: BoringSSL parses a ClientHello only inside a
 * handshake, and the worker that peeks must not start one. The parser reads
 * whole records, reassembles a handshake message split over several, and
 * never trusts a length it has not bounds-checked.
 */
#ifndef FY_TLS_HELLO_H
#define FY_TLS_HELLO_H

#include "fy.h"

/* The most bytes of records a ClientHello may take (records of up to
 * 2^14 bytes of handshake data; real ones take 0.5 to 2 KiB). */
#define FY_TLS_HELLO_MAX 16384
#define FY_TLS_SNI_MAX 255

/*
 * Look at the first n bytes a client sent. Returns FY_OK when the whole
 * ClientHello is there: sni[cap] holds the lower-cased host name, or "" when
 * the hello names none; FY_AGAIN when more bytes are needed (never once n
 * reaches FY_TLS_HELLO_MAX + 5); FY_ERR when the bytes are not a TLS
 * ClientHello (*why says what).
 */
int fy_tls_hello_sni(const uint8_t *p, size_t n, char *sni, size_t cap, const char **why);

#endif
