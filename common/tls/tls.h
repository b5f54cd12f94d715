/*
 * tls.h: TLS for ferryd and ferry, on BoringSSL.
 *
 *  - contexts (ctx.c): the relay's (certificate chain, key, OCSP staple,
 *    shared ticket keys, TLS 1.2 and 1.3 with AEAD suites only, ALPN
 *    http/1.1) and the agent's (verifies the relay against a CA file or the
 *    system's, or, when asked, not at all).
 *  - the pump (pump.c): one TLS session on a socket, carried to and from
 *    the plaintext end of a socketpair. Everything above TLS (the HTTP
 *    state machine of a relay connection, the agent's WebSocket) reads and
 *    writes plain bytes on the other end of the pair, unchanged; the pump
 *    moves at most one buffer each way (flow control), and its end of the
 *    pair can be handed to another worker (DESIGN.md "The handoff": a live
 *    TLS session cannot move between processes, its plaintext can).
 */
#ifndef FY_TLS_H
#define FY_TLS_H

#include "fy.h"
#include "ev/ev.h"

#include <openssl/ssl.h>

#define FY_TLS_TICKET_KEYS 48     /* SSL_CTX_set_tlsext_ticket_keys: name, HMAC and AES keys */
#define FY_TLS_PUMP_BUF 16384     /* one TLS record of plaintext each way */

/* The relay's context. ocsp may be NULL or "" (no stapling). NULL and err
 * filled (naming the file and what is wrong) on failure. */
SSL_CTX *fy_tls_server_ctx(const char *cert, const char *key, const char *ocsp,
                           const uint8_t ticket_keys[FY_TLS_TICKET_KEYS], char *err, size_t errlen);

/* The agent's context: trust ca (a PEM file), or the system's CAs when ca
 * is NULL or ""; insecure skips verification. */
SSL_CTX *fy_tls_client_ctx(const char *ca, bool insecure, char *err, size_t errlen);

/* What went wrong in the last failed operation of ssl (may be NULL): the
 * certificate check's verdict if that failed, else BoringSSL's error queue
 * (emptied). */
void fy_tls_error(const SSL *ssl, char *buf, size_t n);

typedef struct fy_tls_pump_s fy_tls_pump_t;
/* The handshake finished: err NULL, or why it failed (the pump closes). */
typedef void (*fy_tls_pump_cb)(void *data, const char *err);

/*
 * Start pumping ssl (a fresh session, accept or connect state set) on
 * net_fd (non-blocking; the pump owns it). *app_fd gets the plaintext end
 * (non-blocking, CLOEXEC) for the caller. The handshake must finish within
 * handshake_ms, and a session that moves no byte for idle_ms closes. The
 * pump frees itself when both sides are done or either fails; on_handshake
 * (may be NULL) is called once. Returns the pump, or NULL (net_fd closed,
 * ssl freed).
 */
fy_tls_pump_t *fy_tls_pump_start(fy_ev_t *ev, SSL *ssl, int net_fd, int *app_fd, uint64_t handshake_ms,
                                 uint64_t idle_ms, fy_tls_pump_cb on_handshake, void *data);

/* The agent's side: a client session to host (its SNI, and the name the
 * certificate must carry; an IP literal is checked against the
 * certificate's addresses) pumped on net_fd, as fy_tls_pump_start. Idle
 * sessions are the caller's to judge (its heartbeat or timeout). */
fy_tls_pump_t *fy_tls_pump_connect(fy_ev_t *ev, SSL_CTX *ctx, const char *host, int net_fd, int *app_fd,
                                   uint64_t handshake_ms, fy_tls_pump_cb on_handshake, void *data);

/* The caller goes away before the handshake is done: no callback then. */
void fy_tls_pump_forget(fy_tls_pump_t *p);

/* At exit: close every session (their frees are queued tasks). */
void fy_tls_pump_close_all(void);
/* Pumps with bytes still to deliver, or that moved some in the last
 * quiet_ms (a draining worker waits for them: its TLS sessions cannot move,
 * though their plaintext may be served by another generation's worker). */
unsigned fy_tls_pumps_busy(uint64_t now, uint64_t quiet_ms);

#endif
