/* tls.h — server-side TLS on mbedTLS: certificates, SNI, and one session per
 * client connection, with no socket in sight.
 *
 * Three objects:
 *   mg_tls_ctx_t   the certificates and settings of one TLS listener (a
 *                  default certificate and any SNI ones), built on the main
 *                  thread and shared read-only by every worker; reference
 *                  counted, so a reload can replace it while connections that
 *                  started on the old one finish on it.
 *   mg_tls_slot_t  a listener's current context. Workers take a reference on
 *                  accept; the main thread swaps it on reload.
 *   mg_tls_t       one connection's session. Ciphertext goes in with
 *                  mg_tls_input(); mg_tls_read() runs the handshake and then
 *                  yields plaintext; whatever the session wants to send
 *                  (handshake messages, records, alerts) collects in
 *                  mg_tls_output(), which the caller writes to the socket and
 *                  empties. Nothing here blocks or touches a file descriptor:
 *                  http.c moves the bytes, the fuzzer feeds them straight in.
 *
 * Policy (docs/security.md): TLS 1.2 only (mbedTLS 2.28 has no 1.3; 1.0 and
 * 1.1 are refused), ECDHE key exchange with AES-GCM or ChaCha20-Poly1305,
 * curves X25519, P-256, P-384; ALPN offers http/1.1 only; no renegotiation;
 * no client certificates; a server-side session cache for resumption. */
#ifndef MG_TLS_H
#define MG_TLS_H

#include <stddef.h>
#include <uv.h>

#include "buf.h"

typedef struct mg_tls_ctx  mg_tls_ctx_t;
typedef struct mg_tls_slot mg_tls_slot_t;
typedef struct mg_tls      mg_tls_t;

/* mg_tls_read results besides a plaintext length > 0 */
enum {
    MG_TLS_WANT   = 0,    /* every input byte was used; feed more */
    MG_TLS_CLOSED = -1,   /* the peer sent close_notify */
    MG_TLS_ERROR  = -2,   /* handshake or record failure: close the connection */
};

/* ---- contexts ------------------------------------------------------------ */

/* Builds a context from n certificate/key pairs. Entry 0 is the default
 * certificate (names[0] is ignored); entries 1..n-1 are chosen when the
 * client's SNI names[i] matches: exactly (case-insensitive), or "*.example.com"
 * for one label in front of example.com. certs and keys are PEM or DER files.
 * Returns a context with one reference, or NULL with err filled ("PATH:
 * reason", never key material) and *bad = 2*i for entry i's certificate,
 * 2*i + 1 for its key (a key that does not match its certificate counts as
 * the key's fault). */
mg_tls_ctx_t *mg_tls_ctx_new(int n, const char *const *names, const char *const *certs,
                             const char *const *keys, int *bad, char *err, size_t errlen);
/* The same with certs and keys as PEM text in memory; for tests and the fuzzer. */
mg_tls_ctx_t *mg_tls_ctx_new_pem(int n, const char *const *names, const char *const *certs,
                                 const char *const *keys, int *bad, char *err, size_t errlen);
void mg_tls_ctx_retain(mg_tls_ctx_t *ctx);
void mg_tls_ctx_release(mg_tls_ctx_t *ctx);   /* frees it with the last reference */

/* ---- slots (thread-safe) ------------------------------------------------- */

mg_tls_slot_t *mg_tls_slot_new(void);
/* Installs ctx, taking over the caller's reference; the previous context
 * loses the slot's reference (connections on it keep theirs). */
void mg_tls_slot_set(mg_tls_slot_t *s, mg_tls_ctx_t *ctx);
/* The current context with a new reference for the caller, or NULL. */
mg_tls_ctx_t *mg_tls_slot_get(mg_tls_slot_t *s);
void mg_tls_slot_free(mg_tls_slot_t *s);

/* ---- sessions (one thread at a time) ------------------------------------- */

/* A server session on ctx (which gains a reference); NULL when mbedTLS cannot
 * allocate one. */
mg_tls_t *mg_tls_new(mg_tls_ctx_t *ctx);
void mg_tls_free(mg_tls_t *t);
/* Ciphertext from the peer. The bytes are not copied: they must stay valid
 * until mg_tls_read has returned MG_TLS_WANT (or an error) for them. */
void mg_tls_input(mg_tls_t *t, const char *data, size_t len);
/* Runs the handshake while it is not done, then decrypts: returns the number
 * of plaintext bytes put in out (at most cap), or MG_TLS_WANT / _CLOSED /
 * _ERROR. Call it until it returns <= 0; then send mg_tls_output(). */
int  mg_tls_read(mg_tls_t *t, char *out, size_t cap);
/* Encrypts bufs (after the handshake) into the output, coalesced into
 * records of up to 16 KB. 0, or MG_TLS_ERROR. */
int  mg_tls_writev(mg_tls_t *t, const uv_buf_t *bufs, unsigned n);
/* Queues a close_notify alert in the output (after the handshake only). */
void mg_tls_close_notify(mg_tls_t *t);
/* Bytes to send to the peer; the caller resets the buffer once sent. */
mg_buf_t *mg_tls_output(mg_tls_t *t);
int  mg_tls_handshake_done(const mg_tls_t *t);
/* Why the last MG_TLS_ERROR happened, for the log: mbedTLS's description. */
const char *mg_tls_error(mg_tls_t *t);
/* The metric label for it: "version", "cipher", "alert", "record" or
 * "handshake"; see mg_tls_count_error. */
const char *mg_tls_error_reason(const mg_tls_t *t);
/* Counts a failed connection in moongate_tls_errors_total{reason}. */
void mg_tls_count_error(const char *reason);

#endif
