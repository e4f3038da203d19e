/* ffi.h — every C function Lua calls, in one place.
 *
 * lua/moongate/ffi.lua declares exactly these signatures with ffi.cdef; keep
 * the two in step (every integration spec loads both). The style is lua-resty-core's: flat functions with an mg_ prefix,
 * plain C types, results as return codes plus out-parameters. None of them
 * calls back into Lua. */
#ifndef MG_FFI_H
#define MG_FFI_H

#include <stddef.h>
#include <stdint.h>

#include "worker.h"

#define MG_EXPORT __attribute__((visibility("default")))

/* -- the request a client sent -------------------------------------------- */
MG_EXPORT const char *mg_req_method(mg_req_t *r, size_t *len);
MG_EXPORT const char *mg_req_target(mg_req_t *r, size_t *len);   /* path and query as sent */
MG_EXPORT int         mg_req_header_count(mg_req_t *r);
MG_EXPORT int         mg_req_header(mg_req_t *r, int i, const char **name, size_t *nlen,
                                    const char **val, size_t *vlen);  /* names lower case */
MG_EXPORT const char *mg_req_body(mg_req_t *r, size_t *len);
MG_EXPORT const char *mg_req_remote(mg_req_t *r);
MG_EXPORT int         mg_req_http_minor(mg_req_t *r);
MG_EXPORT int         mg_req_alive(mg_req_t *r);        /* 1 while the client is connected */
MG_EXPORT double      mg_req_start(mg_req_t *r);        /* monotonic seconds at arrival */
MG_EXPORT void        mg_req_release(mg_req_t *r);      /* Lua is done with it */

/* -- the response --------------------------------------------------------- */
/* headers: "name: value\r\n"... without the status line, the length framing or
 * Connection (added here). content_length < 0 streams the body (chunked, or
 * close-delimited for HTTP/1.0). Returns 0, or -1 when headers were sent already
 * or the client is gone. */
MG_EXPORT int mg_resp_start(mg_req_t *r, int status, const char *headers, size_t hlen,
                            int64_t content_length);
MG_EXPORT int mg_resp_write(mg_req_t *r, const char *data, size_t len);
/* Ends the response. abort != 0 closes the connection without the terminating
 * chunk, so the client sees a cut response and never a clean end. */
MG_EXPORT int mg_resp_finish(mg_req_t *r, int abort);
MG_EXPORT int mg_resp_status(mg_req_t *r);                 /* 0 before headers */
/* For Lua writing a long body itself: 0 when the client's unsent backlog is
 * small; 1 when it is not, and then MG_EV_DRAINED goes to waiter once it is
 * (or the client left); -1 when the client is gone. */
MG_EXPORT int mg_resp_wait_drained(mg_req_t *r, int64_t waiter);
MG_EXPORT uint64_t mg_resp_bytes(mg_req_t *r);

/* -- upstream transfers --------------------------------------------------- */
/* Starts a transfer; events for it go to `waiter`. `owner` (may be NULL) is the
 * client request it serves: it is aborted with MG_ECLIENT if that client leaves.
 * headers: "name: value\r\n"...; the body is copied. Timeouts in seconds, 0 for
 * none: timeout bounds the whole transfer, idle_timeout any stretch without a
 * byte from the provider (streams). ca_file NULL for the system store. Returns NULL with err filled on error. */
MG_EXPORT mg_up_t *mg_up_start(mg_req_t *owner, int64_t waiter, const char *method,
                               const char *url, const char *headers, size_t hlen,
                               const char *body, size_t blen, double connect_timeout,
                               double timeout, double idle_timeout, const char *ca_file,
                               int insecure, char *err, size_t errlen);
MG_EXPORT int      mg_up_status(mg_up_t *u);
MG_EXPORT int      mg_up_header_count(mg_up_t *u);
MG_EXPORT int      mg_up_header(mg_up_t *u, int i, const char **name, size_t *nlen,
                                const char **val, size_t *vlen);
/* After MG_EV_UP_HEADERS, say where the body goes: mg_up_pipe() writes it to
 * the owner's client as it arrives (the response must have been started);
 * mg_up_stream() hands it to Lua as MG_EV_UP_DATA events. A stream may turn
 * into a pipe later (after Lua has read the first bytes): the bytes Lua
 * holds from the event being handled are not written again. */
MG_EXPORT int      mg_up_pipe(mg_up_t *u);
MG_EXPORT int      mg_up_stream(mg_up_t *u);
/* From stream mode: relay the provider's SSE events of format fmt (MG_SSE_*) to the client as
 * they come, as a pipe does, while each is one mg_sse_plain() passes; pending (plen bytes) is the
 * start of an event Lua's reader held, which goes first. At the first one it does not (or a partial event past 64 KB) the transfer goes back to
 * stream mode and Lua gets the bytes from that event on as MG_EV_UP_DATA; at the end Lua gets
 * what is left that way, then MG_EV_UP_DONE. mg_up_relayed() returns the text characters of
 * the events relayed since it was last called. -1 (nothing taken, the mode unchanged) when the
 * transfer is not in stream mode or is over: the rest, and its end, are then Lua's to read. */
MG_EXPORT int      mg_up_relay(mg_up_t *u, int fmt, const char *pending, size_t plen);
MG_EXPORT long     mg_up_relayed(mg_up_t *u);
MG_EXPORT const char *mg_up_errmsg(mg_up_t *u);
MG_EXPORT double   mg_up_ttfb(mg_up_t *u);      /* seconds from start to first header byte */
/* Deadlines for the first body byte (seconds from the start) and for the
 * silence between body bytes; 0 turns either off. Missing one ends the
 * transfer as a timeout. -1 when the transfer is already over. */
MG_EXPORT int      mg_up_watch(mg_up_t *u, double first_byte, double idle);
MG_EXPORT void     mg_up_free(mg_up_t *u);      /* aborts if running; no event follows */

/* -- JSON bodies (json.c) ------------------------------------------------ */
enum {
    MG_USAGE_PROMPT, MG_USAGE_COMPLETION, MG_USAGE_TOTAL,          /* OpenAI */
    MG_USAGE_INPUT, MG_USAGE_OUTPUT, MG_USAGE_CACHE_READ, MG_USAGE_CACHE_CREATION,  /* Anthropic */
    MG_USAGE_CACHED,             /* prompt_tokens_details.cached_tokens */
    MG_USAGE_REASONING,          /* completion_tokens_details.reasoning_tokens */
    MG_USAGE_N                   /* 9: lua/moongate/ffi.lua spells the array's size out */
};
typedef struct mg_json_info {
    long model_off, model_len;   /* the top-level "model" string's contents, or off -1 */
    int  model_escaped;          /* it holds escapes: decode it before use */
    int  stream;                 /* top-level "stream" is true */
    int  escaped_keys;           /* some top-level key holds escapes */
    long usage_off, usage_len;   /* the top-level "usage" value (any type), or off -1 */
    /* When "usage" is an object whose counts (those below, where present) are all plain
     * integers, usage_plain is 1 and usage[] holds them, -1 for each one absent; otherwise
     * usage_plain is 0 and usage[] means nothing (decode the member instead). */
    int    usage_plain;
    double usage[MG_USAGE_N];
} mg_json_info_t;
/* Validates body as one JSON object and reads model and stream from it.
 * Returns 0, -1 when the body is not a valid JSON object, -2 when it nests deeper than 512
 * levels (the top object is level 1). */
MG_EXPORT int mg_json_scan(const char *body, size_t len, mg_json_info_t *out);
/* Scans of a provider's JSON text without decoding it (streamed events), each matching the Lua
 * pattern it replaced: UTF-8 characters (bytes less continuation bytes); characters of answer
 * text, the string values of the keys content, text, arguments, partial_json, reasoning_content,
 * thinking and refusal anywhere in s; 1 when "key" %s* : %s* then the byte next occurs anywhere;
 * 1 when s starts (after whitespace) with { and the key "key". */
MG_EXPORT long mg_utf8_chars(const char *s, size_t len);
MG_EXPORT long mg_text_chars(const char *s, size_t len);
MG_EXPORT long mg_text_bytes(const char *s, size_t len);   /* the same text, in bytes */
MG_EXPORT int  mg_json_has_member(const char *s, size_t len, const char *key, size_t klen, int next);
MG_EXPORT int  mg_json_first_key_is(const char *s, size_t len, const char *key, size_t klen);

/* -- same-format streams (sse.c) ----------------------------------------- */
enum { MG_SSE_OPENAI = 1, MG_SSE_ANTHROPIC = 2 };
/* Whether the event at the start of p[0..n) is one the relay passes on without Lua: a text delta
 * of the given format (see sse.c). Returns its length in bytes (setting *chars to its text's
 * characters), 0 when its end has not arrived yet, -1 when Lua must see it. */
MG_EXPORT long mg_sse_plain(const char *p, size_t n, int fmt, long *chars);
/* The end (one past) of the first event boundary in p[0..n) as lua/moongate/sse.lua finds it (the
 * first of "\n\n", "\r\n\r\n" and "\r\r" to end), or 0 when there is none. */
MG_EXPORT size_t mg_sse_boundary(const char *p, size_t n);

/* -- gw.shared (shared.c): one store for every worker ------------------- */
enum { MG_SHARED_MISSING = 0, MG_SHARED_NUMBER = 1, MG_SHARED_STRING = 2 };
MG_EXPORT void   mg_shared_init(size_t max_keys);      /* before first use; 0 keeps the default */
/* Returns the type; a string is valid until this thread's next mg_shared_get. */
MG_EXPORT int    mg_shared_get(const char *k, size_t kl, double *num, const char **str, size_t *slen);
MG_EXPORT int    mg_shared_set(const char *k, size_t kl, int type, double num, const char *str,
                               size_t slen, double ttl);
MG_EXPORT int    mg_shared_delete(const char *k, size_t kl);
/* incr: 0 and *out = the new value, or -1 when the key holds a string. */
MG_EXPORT int    mg_shared_incr(const char *k, size_t kl, double n, double ttl, double *out);
/* reserve: 1 (admitted: the value was below limit, n added), 0 (refused), -1
 * (not a number); *remaining = limit - the value after. */
MG_EXPORT int    mg_shared_reserve(const char *k, size_t kl, double n, double limit, double ttl,
                                   double *remaining);
/* settle: value += actual - reserved. 0 and *out = the new value; 1 when the
 * key has expired (nothing to correct); -1 when it holds a string. */
MG_EXPORT int    mg_shared_settle(const char *k, size_t kl, double reserved, double actual,
                                  double *out);
MG_EXPORT size_t mg_shared_count(void);

/* -- digests (crypto.c, mbedTLS) ----------------------------------------- */
MG_EXPORT void mg_sha256(const void *data, size_t len, unsigned char out[32]);
MG_EXPORT int  mg_hmac_sha256(const void *key, size_t klen, const void *data, size_t len,
                              unsigned char out[32]);
/* 1 when the two buffers are equal; time depends only on len */
MG_EXPORT int  mg_const_eq(const void *a, const void *b, size_t len);

/* -- JWS signatures (crypto.c, mbedTLS; the jwt plugin) ------------------ */
/* Keys as JWK components, raw bytes (base64url-decoded): HS256 k1 = the
 * secret (32 bytes at least), k2 unused; RS256 k1 = n, k2 = e (2048 bits at
 * least); ES256 k1 = x, k2 = y (P-256, 32 bytes each). sig is the JWS
 * signature as sent: the HMAC, the PKCS#1 v1.5 block, or raw r || s for
 * ES256. msg is the signing input, "header.payload" as sent. err (may be NULL)
 * gets a reason for the log, never key or signature bytes. */
enum { MG_JWS_HS256 = 1, MG_JWS_RS256 = 2, MG_JWS_ES256 = 3 };
/* 0 when the key is usable for alg, -1 (err says why) when not. */
MG_EXPORT int mg_jws_key_check(int alg, const void *k1, size_t k1len, const void *k2,
                               size_t k2len, char *err, size_t errlen);
/* 1 the signature verifies; 0 it does not; -1 the key is unusable. */
MG_EXPORT int mg_jws_verify(int alg, const void *k1, size_t k1len, const void *k2, size_t k2len,
                            const void *msg, size_t mlen, const void *sig, size_t slen,
                            char *err, size_t errlen);

/* -- the cost ledger (ledger.c): <data_dir>/ledger, one writer thread ---- */
/* Dimensions of the aggregates, in the order the arguments below take them. */
enum { MG_LEDGER_TEAM = 0, MG_LEDGER_CONSUMER = 1, MG_LEDGER_MODEL = 2, MG_LEDGER_PROVIDER = 3,
       MG_LEDGER_ASKED_MODEL = 4 };
/* Main thread, at start: creates <data_dir>/ledger, takes its lock and opens
 * the newest ledger file (or a new one) for appending. 0, or -1 with err
 * naming the path (nothing is left open then). */
MG_EXPORT int  mg_ledger_open(const char *data_dir, char *err, size_t errlen);
/* Seconds, seconds, bytes (0: never rotate); a value <= 0 (< 0 for
 * rotate_bytes) keeps the current one. Any thread, any time. */
MG_EXPORT void mg_ledger_configure(double flush_interval, double snapshot_interval,
                                   double rotate_bytes);
/* Starts the writer thread once the snapshot is loaded and the records after
 * it replayed; snapshot_now: write a snapshot at its first flush. */
MG_EXPORT int  mg_ledger_start(int snapshot_now, char *err, size_t errlen);
/* Replay at start: the same figures into the aggregates, no line written. */
MG_EXPORT int  mg_ledger_count(double time, const char *team, size_t tl, const char *consumer,
                               size_t cl, const char *model, size_t ml, const char *provider,
                               size_t pl, const char *asked, size_t al, double prompt,
                               double completion, double cost_units);
/* Snapshot load at start: adds to one bucket (level: 0 hour, 1 day, 2 month;
 * start must be that bucket's start). -1 for a bad dimension, level or start. */
MG_EXPORT int  mg_ledger_load(int dim, int level, double start, const char *key, size_t klen,
                              double requests, double prompt, double completion,
                              double cost_units);
/* Sums per key of dimension dim over the buckets overlapping [since, until):
 * returns the number of groups (read them with mg_ledger_group, on the same
 * thread, before its next query), or -1; eff_since, eff_until: the range
 * widened to the whole buckets it covers. */
MG_EXPORT int  mg_ledger_query(int dim, double since, double until, double *eff_since,
                               double *eff_until);
/* Group i of this thread's last query; key NULL for none. 0, or -1. */
MG_EXPORT int  mg_ledger_group(int i, const char **key, size_t *klen, double *requests,
                               double *prompt, double *completion, double *cost_units);
/* The ledger file names in dir, sorted (oldest first), one per line; free
 * with mg_free. NULL when dir cannot be read. */
MG_EXPORT char *mg_ledger_files(const char *dir, size_t *len);

/* -- a finished request's ledger record and access log line (record.c) ---- */
/* Filled by lua/moongate/record.lua. A string is pointer and length; NULL is
 * JSON null. Numbers are as Lua has them: tokens are rounded here, the cost is
 * turned into 1e-10 USD units here (the line and the aggregates from one value). */
typedef struct mg_record {
    const char *id, *consumer, *team, *route, *backend, *target, *provider, *model,
               *client_model, *remote, *method, *path;
    size_t      id_len, consumer_len, team_len, route_len, backend_len, target_len, provider_len,
                model_len, client_model_len, remote_len, method_len, path_len;
    double      time;                    /* wall clock at the end, seconds */
    double      latency, ttfb;           /* seconds; ttfb only with has_ttfb */
    double      prompt, completion, cached;
    double      cost_usd;                /* only with has_cost (else the cost is null) */
    uint64_t    bytes;                   /* body bytes sent to the client */
    int         has_ttfb, has_cost;
    int         usage;                   /* 0 none, 1 reported, 2 estimated */
    int         status, attempts, stream;
} mg_record_t;
/* Encodes the record's ledger line and appends it (with the aggregates): 0, or
 * -1 when the ledger is not open or the writer is too far behind. */
MG_EXPORT int         mg_record_ledger(const mg_record_t *r);
/* Encodes its access log line and writes it to the access log. */
MG_EXPORT void        mg_record_access(const mg_record_t *r);
/* The line the calling thread encoded last (valid until its next record call). */
MG_EXPORT const char *mg_record_line(size_t *len);
/* The lines alone, in the calling thread's buffer (what the two above write; the C tests). */
MG_EXPORT const char *mg_record_ledger_line(const mg_record_t *r, size_t *len);
MG_EXPORT const char *mg_record_access_line(const mg_record_t *r, size_t *len);
MG_EXPORT int64_t     mg_record_cost_units(double cost_usd);

/* -- time, sleep, logs, ids ----------------------------------------------- */
MG_EXPORT double mg_now(void);          /* wall clock, seconds */
MG_EXPORT double mg_monotonic(void);
MG_EXPORT int    mg_sleep(int64_t waiter, double seconds);
MG_EXPORT void   mg_log_write(int level, const char *msg, size_t len);
MG_EXPORT void   mg_request_id(char out[33]);   /* 32 hex chars + NUL */
MG_EXPORT int    mg_stopping(void);

/* -- set-up, called by lua/moongate/runtime.lua at start ------------------ */
/* Opens a listener for app (MG_APP_*); returns the bound port or -1 with err. */
MG_EXPORT int  mg_listen(const char *host, int port, int app, char *err, size_t errlen);
MG_EXPORT void mg_set_limits(double max_body, double max_header, int max_connections,
                             double header_timeout, double idle_timeout, double shutdown_timeout);
MG_EXPORT int  mg_access_log(const char *target);   /* NULL: off; 0 or -errno */

/* -- workers and reload (process.c) --------------------------------------- */
MG_EXPORT int   mg_cpus_available(void);    /* affinity and cgroup quota ("auto") */
/* n SO_REUSEPORT sockets on host:port, one per worker; returns the port. */
MG_EXPORT int   mg_listen_prepare(const char *host, int port, int n, int app, char *err,
                                  size_t errlen);
/* TLS listeners (tls.c, process.c). mg_tls_load builds the certificates of
 * one listener: n pairs, entry 0 the default (names[0] unused), entries 1..
 * chosen by SNI names[i] ("*.example.com" allowed). NULL on error, with err
 * ("PATH: reason") and *bad = 2*i (entry i's cert) or 2*i + 1 (its key).
 * mg_listen_tls gives listen set `set` (the order of mg_listen_prepare
 * calls, from 0) that context, taking over the reference (also on error);
 * called again (reload), new connections get the new one. */
typedef struct mg_tls_ctx mg_tls_ctx_t;
MG_EXPORT mg_tls_ctx_t *mg_tls_load(int n, const char *const *names, const char *const *certs,
                                    const char *const *keys, int *bad, char *err, size_t errlen);
MG_EXPORT void  mg_tls_release(mg_tls_ctx_t *ctx);
MG_EXPORT int   mg_listen_tls(int set, mg_tls_ctx_t *ctx);
/* Starts n workers and waits until each has loaded the config and taken its
 * sockets; 0, or -1 with err (none is left running then). */
MG_EXPORT int   mg_workers_start(int n, char *err, size_t errlen);
MG_EXPORT int   mg_worker_index(void);      /* 0 on the main thread, 1..n in workers */
MG_EXPORT int   mg_worker_count(void);
/* The config text every worker runs: set once at start, then by each reload,
 * which sends MG_EV_RELOAD (arg = generation) to every worker; a worker
 * answers with mg_reload_done, and when all have, main's waiter gets
 * MG_EV_WAKE. mg_config_source returns a copy to free with mg_free. */
MG_EXPORT void  mg_config_set(const char *src, size_t len);
MG_EXPORT char *mg_config_source(int *gen, size_t *len);
MG_EXPORT int   mg_reload_publish(const char *src, size_t len, int64_t waiter);
MG_EXPORT void  mg_reload_done(int gen, int ok, const char *msg, size_t len);
MG_EXPORT const char *mg_reload_errors(size_t *len);
MG_EXPORT void  mg_free(void *p);

/* -- metrics (metrics.c) -------------------------------------------------- */
MG_EXPORT int  mg_metric_declare(const char *name, int type, const char *help,
                                 const double *buckets, int nbuckets);
MG_EXPORT void mg_metric_add(int id, const char *labels, size_t llen, double v);
MG_EXPORT void mg_metric_set(int id, const char *labels, size_t llen, double v);
MG_EXPORT void mg_metric_observe(int id, const char *labels, size_t llen, double v);
/* One series' handle (valid for the life of the process; NULL for an unknown id), and the
 * same three updates through it: no hashing of the labels per update. */
typedef struct mg_series mg_series_t;
MG_EXPORT mg_series_t *mg_metric_series(int id, const char *labels, size_t llen);
MG_EXPORT void mg_series_add(mg_series_t *s, double v);
MG_EXPORT void mg_series_set(mg_series_t *s, double v);
MG_EXPORT void mg_series_observe(mg_series_t *s, double v);
/* A gauge family whose series come and go (one per configured target): every series is left
 * out of the text until it is set again. */
MG_EXPORT void mg_metric_hide_all(int id);
MG_EXPORT const char *mg_metrics_text(size_t *len);   /* Prometheus text format */

/* -- Redis (redis.c): gw.shared across instances, cluster.redis ---------- */
/* Operations, as gw.shared has them; results as mg_shared_* gives them. */
enum { MG_REDIS_GET = 1, MG_REDIS_SET = 2, MG_REDIS_DELETE = 3, MG_REDIS_INCR = 4,
       MG_REDIS_RESERVE = 5, MG_REDIS_SETTLE = 6 };
/* How an operation ended: answered; Redis unreachable (refused while the
 * connection is down, or lost with it); no answer within the timeout (the
 * connection is dropped too); Redis answered with an error (in the result's
 * string). */
enum { MG_REDIS_OK = 0, MG_REDIS_DOWN = -1, MG_REDIS_TIMEOUT = -2, MG_REDIS_ERROR = -3 };
typedef struct mg_redis_op mg_redis_op_t;
/* Starts this thread's client on its loop (once per thread): connects to
 * host:port and keeps reconnecting (100 ms doubling to 2 s) when the
 * connection is lost. user/password may be NULL (no AUTH); keys get prefix.
 * Timeouts in seconds. 0, or -1 with err. */
MG_EXPORT int  mg_redis_start(const char *host, int port, const char *user, const char *password,
                              int db, const char *prefix, double timeout, double connect_timeout,
                              int fail_open, char *err, size_t errlen);
MG_EXPORT void mg_redis_stop(void);          /* this thread's Lua is closing */
MG_EXPORT int  mg_redis_up(void);            /* 1 while this thread's connection is ready */
/* One operation on key (the prefix is added here). a, b, c: get/delete none;
 * set type (MG_SHARED_NUMBER or _STRING), number, ttl (str/slen for a string);
 * incr n, ttl; reserve n, limit, ttl; settle reserved, actual.
 * waiter > 0: sent on the loop, and exactly one MG_EV_WAKE (ptr = the op)
 * goes to waiter when its answer, a timeout or the loss of the connection
 * ends it; NULL (nothing sent, no event) while the connection is down.
 * waiter 0: a blocking round trip on a connection of its own, bounded by the
 * timeouts (start-up, a plugin's init), complete on return.
 * Either way mg_redis_result() reads the op once and frees it. */
MG_EXPORT mg_redis_op_t *mg_redis_call(int64_t waiter, int op, const char *k, size_t kl, double a,
                                       double b, double c, const char *str, size_t slen);
/* Returns the status (MG_REDIS_*); rc: reserve 1 admitted / 0 refused,
 * settle 1 the key had expired, delete 1 it existed, incr/reserve/settle -1
 * the key holds a string; type MG_SHARED_*; num; str (a string value or
 * Redis's error), valid until this thread's next mg_redis_result. Frees op. */
MG_EXPORT int  mg_redis_result(mg_redis_op_t *op, int *rc, int *type, double *num,
                               const char **str, size_t *slen);
/* Fire-and-forget: the operation is sent, its answer dropped. -1 when down. */
MG_EXPORT int  mg_redis_send(int op, const char *k, size_t kl, double a, double b, double c,
                             const char *str, size_t slen);
/* Fire-and-forget: key's value and TTL in Redis go into the local store
 * (mg_shared_set, or mg_shared_delete when Redis has none) when the answer
 * comes. -1 (nothing sent) unless the connection is ready. */
MG_EXPORT int  mg_redis_fetch(const char *k, size_t kl);
/* Fire-and-forget: XADD <prefix>stream MAXLEN ~ maxlen * argv[0] argv[1] ...
 * (n strings: field, value, ...). -1 when down. */
MG_EXPORT int  mg_redis_xadd(const char *stream, size_t sl, double maxlen, const char *const *argv,
                             const size_t *lens, int n);

#endif
