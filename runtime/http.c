/* http.c — client-side HTTP/1.1: request parsing, connections, responses.
 *
 * Two layers. The request parser (mg_hp_*) is llhttp plus every limit and
 * framing check it does not make itself; it is pure — bytes in, a request or
 * an error out, no socket, timer or clock — so the fuzzers in spec/fuzz run
 * exactly the code the server runs. The connection layer moves bytes between
 * the socket (through TLS when the listener has it, see tls.h), the parser
 * and the responses Lua writes, and keeps the timers.
 *
 * One request per connection is in flight at a time. When a request is
 * complete the parser is paused; bytes already read (pipelined requests) wait
 * in conn->pending and are parsed once the response is finished, so
 * pipelined requests are answered in order.
 *
 * Limits (SPEC §2 `limits`, docs/security.md) are enforced here, before Lua
 * sees anything: max_header → 431 (and a long request target → 414),
 * max_body → 413, header_timeout and idle_timeout → 408 or close,
 * max_connections → refuse. Malformed framing (Content-Length with
 * Transfer-Encoding, two lengths, bad chunks, obs-fold, a missing or
 * repeated Host) → 400 and close. */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ffi.h"
#include "log.h"
#include "tls.h"
#include "upstream.h"
#include "worker.h"

#define MG_MAX_HEADERS    256
#define MG_MAX_URL        8192            /* request target, when max_header is larger */
#define MG_MAX_CHUNK_EXT  1024            /* chunk extension bytes per chunk */
#define MG_PENDING_MAX    (64 * 1024)     /* pipelined bytes read ahead before reading stops */
#define MG_BODY_MIN_RATE  (16 * 1024)     /* bytes/s a body must average after its grace time */
#define MG_WRITE_HIGH     (256 * 1024)    /* pause the upstream above this much unsent */

static llhttp_settings_t parser_settings;
static pthread_once_t settings_once = PTHREAD_ONCE_INIT;
/* client connections of every worker: limits.max_connections is the process's. The admin
 * listener's are counted apart, against their own small cap: a flood of clients must not fail the
 * health and readiness probes (a Kubernetes liveness probe would kill a pod that is only busy). */
static int total_conns, admin_conns;
#define MG_MAX_ADMIN_CONNECTIONS 256
/* decrypted bytes, parsed before the next record is read */
static __thread char tls_plain[16384];

static void conn_on_close(uv_handle_t *h);
static void conn_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void conn_parse(mg_conn_t *c, const char *data, size_t len);
static void http_settings_init(void);
static void wake_drain_waiter(mg_req_t *r);

/* ======================== requests ======================== */

static mg_req_t *req_new(void)
{
    mg_req_t *r = mg_xcalloc(1, sizeof *r);
    r->refs = 1;                       /* the parser's, then the connection's */
    r->start = mg_monotonic();
    mg_buf_init(&r->head);
    mg_buf_init(&r->body);
    mg_buf_reserve(&r->head, 2048);   /* a typical SDK request's line and headers, in one allocation */
    return r;
}

void mg_req_retain(mg_req_t *r)
{
    r->refs++;
}

void mg_req_unref(mg_req_t *r)
{
    if (--r->refs > 0) return;
    mg_buf_free(&r->head);
    mg_buf_free(&r->body);
    mg_buf_free(&r->head_out);
    free(r->hdrs);
    free(r);
}

/* The client is gone or the request is over for the connection: the request
 * no longer points at it, and transfers it owns stop (Lua hears MG_ECLIENT). */
static void req_detach(mg_req_t *r)
{
    if (r->conn == NULL) return;
    r->conn = NULL;
    if (!r->finished) mg_up_abort_owned(r);
    wake_drain_waiter(r);
}

/* ======================== the request parser ======================== */

/* Records the answer for a refused request; returns HPE_USER for llhttp.
 * Messages are ASCII; quotes and backslashes become ' so that the answer's
 * JSON needs no escaping. */
static int hp_fail(mg_hp_t *p, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int hp_fail(mg_hp_t *p, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->message, sizeof p->message, fmt, ap);
    va_end(ap);
    for (char *m = p->message; *m; m++)
        if (*m == '"' || *m == '\\' || (unsigned char)*m < 0x20 || (unsigned char)*m > 0x7e) *m = '\'';
    p->status = status;
    return HPE_USER;
}

static size_t url_limit(const mg_hp_t *p)
{
    return p->limits->max_header < MG_MAX_URL ? p->limits->max_header : MG_MAX_URL;
}

static int on_message_begin(llhttp_t *h)
{
    mg_hp_t *p = h->data;
    if (p->refuse) return hp_fail(p, 503, "server is shutting down");
    if (p->req != NULL) mg_req_unref(p->req);
    p->req = req_new();
    p->head_bytes = 0;
    p->ext_bytes = 0;
    p->last_was_value = 0;
    p->in_body = 0;
    p->began = 1;
    return 0;
}

static int head_grow(mg_hp_t *p, size_t n)
{
    p->head_bytes += n;
    if (p->head_bytes > p->limits->max_header)
        return hp_fail(p, 431, "request header section is larger than max_header");
    return 0;
}

static int on_url(llhttp_t *h, const char *at, size_t len)
{
    mg_hp_t *p = h->data;
    mg_req_t *r = p->req;
    if (r->url_len + len > url_limit(p))
        return hp_fail(p, 414, "request target is longer than %zu bytes", url_limit(p));
    if (head_grow(p, len)) return HPE_USER;
    if (r->url_len == 0) r->url_off = (uint32_t)r->head.len;
    mg_buf_append(&r->head, at, len);
    r->url_len += (uint32_t)len;
    return 0;
}

/* llhttp, even strict, ends the request line at a bare LF: refuse it as it
 * refuses one after a header line. */
static int on_version(llhttp_t *h, const char *at, size_t len)
{
    mg_hp_t *p = h->data;
    if (at + len < p->exec_end && at[len] == '\n')
        return hp_fail(p, 400, "malformed request: a request line ending in a bare LF");
    p->version_at_end = at + len == p->exec_end;
    return 0;
}

static int on_header_field(llhttp_t *h, const char *at, size_t len)
{
    mg_hp_t *p = h->data;
    mg_req_t *r = p->req;
    if (head_grow(p, len + 4)) return HPE_USER;
    /* Trailers after a chunked body count against max_header and are
     * dropped: a header arriving after the body could otherwise change what
     * plugins saw (credentials, routing) behind their back. */
    if (p->in_body) return 0;
    if (r->nhdrs == 0 || p->last_was_value) {
        if (r->nhdrs >= MG_MAX_HEADERS) return hp_fail(p, 431, "too many request headers");
        if (r->nhdrs == r->hdrs_cap) {
            r->hdrs_cap = r->hdrs_cap ? r->hdrs_cap * 2 : 16;
            r->hdrs = mg_xrealloc(r->hdrs, (size_t)r->hdrs_cap * sizeof *r->hdrs);
        }
        mg_hdr_t *hd = &r->hdrs[r->nhdrs++];
        memset(hd, 0, sizeof *hd);
        hd->name_off = (uint32_t)r->head.len;
        p->last_was_value = 0;
    }
    mg_hdr_t *hd = &r->hdrs[r->nhdrs - 1];
    size_t off = r->head.len;
    mg_buf_append(&r->head, at, len);
    for (size_t i = 0; i < len; i++) {
        char ch = r->head.data[off + i];
        if (ch >= 'A' && ch <= 'Z') r->head.data[off + i] = (char)(ch + 32);
    }
    hd->name_len += (uint32_t)len;
    return 0;
}

static int on_header_value(llhttp_t *h, const char *at, size_t len)
{
    mg_hp_t *p = h->data;
    mg_req_t *r = p->req;
    if (head_grow(p, len)) return HPE_USER;
    if (p->in_body) return 0;          /* a trailer: see on_header_field */
    /* RFC 9110 §5.5: a bare CR in a value must be refused or replaced; it is
     * how one header is smuggled inside another past a lenient parser */
    if (memchr(at, '\r', len) != NULL)
        return hp_fail(p, 400, "malformed request: a CR inside a header value");
    /* llhttp 8 accepts obs-fold continuation lines and reports the folded part
     * as one more piece of the same value. A value legitimately comes in
     * several pieces only when it straddles two reads: the previous piece
     * ended at the end of one buffer and this one starts the next. Anything
     * else is a fold, which RFC 9112 §5.2 lets a server reject and a proxy
     * must not pass on. */
    if (p->last_was_value &&
        !(p->val_at_end && at == p->exec_start && p->val_seq != p->exec_seq))
        return hp_fail(p, 400, "malformed request: obsolete line folding in a header");
    /* A fold after an empty first line ("Transfer-Encoding:\r\n chunked")
     * arrives as the value's first piece: a line break between the colon and
     * the value gives it away (looking back into the previous read when the
     * whitespace began there). An empty value ("X-A:\r\n") arrives as a piece
     * of no bytes placed at the start of the next line: it folds nothing. */
    if (!p->last_was_value && len > 0) {
        const char *q = at;
        while (q > p->exec_start && (q[-1] == ' ' || q[-1] == '\t' || q[-1] == '\r')) q--;
        if ((q > p->exec_start && q[-1] == '\n') || (q == p->exec_start && p->tail_lf))
            return hp_fail(p, 400, "malformed request: obsolete line folding in a header");
    }
    p->val_at_end = at + len == p->exec_end;
    p->val_seq = p->exec_seq;
    mg_hdr_t *hd = &r->hdrs[r->nhdrs - 1];
    if (!p->last_was_value) {
        hd->val_off = (uint32_t)r->head.len;
        p->last_was_value = 1;
    }
    mg_buf_append(&r->head, at, len);
    hd->val_len += (uint32_t)len;
    return 0;
}

static int hdr_is(const mg_req_t *r, const mg_hdr_t *hd, const char *name, size_t nlen)
{
    return hd->name_len == nlen && memcmp(r->head.data + hd->name_off, name, nlen) == 0;
}

static int on_headers_complete(llhttp_t *h)
{
    mg_hp_t *p = h->data;
    mg_req_t *r = p->req;
    r->method = llhttp_get_method(h);
    r->http_minor = llhttp_get_http_minor(h);
    r->keepalive = llhttp_should_keep_alive(h);
    p->in_body = 1;
    p->headers_done = 1;
    p->ext_bytes = 0;
    if (llhttp_get_http_major(h) != 1)
        return hp_fail(p, 400, "malformed request: unsupported HTTP version");
    if (r->method == HTTP_CONNECT) return hp_fail(p, 501, "the CONNECT method is not supported");
    /* RFC 9112 §3.2: a request with no Host (HTTP/1.1) or with several is refused */
    int hosts = 0, expect = 0;
    for (int i = 0; i < r->nhdrs; i++) {
        mg_hdr_t *hd = &r->hdrs[i];
        if (hdr_is(r, hd, "host", 4)) hosts++;
        else if (hdr_is(r, hd, "expect", 6) && hd->val_len == 12 &&
                 strncasecmp(r->head.data + hd->val_off, "100-continue", 12) == 0)
            expect = 1;
    }
    /* llhttp takes "gzip, chunked" as chunked and leaves the gzip undone: RFC 9112 §6.1 has a
     * coding the server does not implement refused with 501 (chunked is the only one) */
    for (int i = 0; (h->flags & F_CHUNKED) && i < r->nhdrs; i++) {
        mg_hdr_t *hd = &r->hdrs[i];
        if (!hdr_is(r, hd, "transfer-encoding", 17)) continue;
        const char *v = r->head.data + hd->val_off;
        size_t n = hd->val_len;
        while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\t')) n--;
        while (n > 0 && (*v == ' ' || *v == '\t')) v++, n--;
        if (!(n == 7 && strncasecmp(v, "chunked", 7) == 0))
            return hp_fail(p, 501, "a transfer coding other than chunked is not supported");
    }
    if (hosts > 1) return hp_fail(p, 400, "malformed request: more than one Host header");
    if (hosts == 0 && r->http_minor >= 1) return hp_fail(p, 400, "malformed request: no Host header");
    /* llhttp already refuses Content-Length together with Transfer-Encoding
     * and duplicate Content-Lengths; check the size here, before any body. */
    if ((h->flags & F_CONTENT_LENGTH) && h->content_length > p->limits->max_body)
        return hp_fail(p, 413, "request body is larger than max_body");
    /* An upgrade (WebSocket, h2c) is not served: the request is answered as
     * plain HTTP and the connection closed, so nothing the client sends after
     * it is ever read as another request. So is a chunked HTTP/1.0 request
     * (RFC 9112 §6.1: its framing cannot be trusted for what follows). */
    if (((h->flags & F_UPGRADE) && (h->flags & F_CONNECTION_UPGRADE)) ||
        (r->http_minor == 0 && (h->flags & F_CHUNKED)))
        r->keepalive = 0;
    p->want_continue = expect;
    return 0;
}

static int on_chunk_header(llhttp_t *h)
{
    mg_hp_t *p = h->data;
    /* the announced size alone passing max_body: refused before its bytes */
    if (h->content_length > p->limits->max_body - p->req->body.len)
        return hp_fail(p, 413, "request body is larger than max_body");
    p->ext_bytes = 0;                  /* the next chunk's size line starts afresh */
    return 0;
}

static int on_chunk_extension(llhttp_t *h, const char *at, size_t len)
{
    mg_hp_t *p = h->data;
    (void)at;
    p->ext_bytes += len;
    if (p->ext_bytes > MG_MAX_CHUNK_EXT)
        return hp_fail(p, 400, "malformed request: chunk extension longer than %d bytes",
                       MG_MAX_CHUNK_EXT);
    return 0;
}

static int on_body(llhttp_t *h, const char *at, size_t len)
{
    mg_hp_t *p = h->data;
    mg_req_t *r = p->req;
    if (r->body.len + len > p->limits->max_body)
        return hp_fail(p, 413, "request body is larger than max_body");
    mg_buf_append(&r->body, at, len);
    p->body_progress = 1;
    return 0;
}

static int on_message_complete(llhttp_t *h)
{
    mg_hp_t *p = h->data;
    p->req->complete = 1;
    p->in_body = 0;   /* what follows is the next request's header section */
    return HPE_PAUSED;
}

static void http_settings_init(void)
{
    llhttp_settings_t *s = &parser_settings;
    llhttp_settings_init(s);
    s->on_message_begin = on_message_begin;
    s->on_url = on_url;
    s->on_version = on_version;
    s->on_header_field = on_header_field;
    s->on_header_value = on_header_value;
    s->on_headers_complete = on_headers_complete;
    s->on_chunk_header = on_chunk_header;
    s->on_chunk_extension_name = on_chunk_extension;
    s->on_chunk_extension_value = on_chunk_extension;
    s->on_body = on_body;
    s->on_message_complete = on_message_complete;
}

void mg_hp_init(mg_hp_t *p, const mg_limits_t *limits)
{
    pthread_once(&settings_once, http_settings_init);
    memset(p, 0, sizeof *p);
    llhttp_init(&p->http, HTTP_REQUEST, &parser_settings);
    p->http.data = p;
    p->limits = limits;
}

/* llhttp, even strict, takes a bare LF as the empty line that ends the header section
 * ("Host: x\r\n\n"). Two LFs with nothing or a lone LF between them never occur in a header
 * section written with CRLFs, so up to its real end ("\n\r\n") a "\n\n" is refused; the two
 * bytes before this read are the last read's. Returns 1 for a bare LF ending the section. */
static int head_bare_lf(mg_hp_t *p, const char *data, size_t len)
{
    if (p->in_body) return 0;
    for (size_t i = 0; i < len; i++) {
        if (data[i] != '\n') continue;
        char b1 = i >= 1 ? data[i - 1] : p->tail[1];
        char b2 = i >= 2 ? data[i - 2] : (i == 1 ? p->tail[1] : p->tail[0]);
        if (b1 == '\n') return 1;
        if (b1 == '\r' && b2 == '\n') return 0;     /* the section's end: the rest is its body */
    }
    return 0;
}

/* the last two bytes parsed, before the next read's first */
static void keep_tail(mg_hp_t *p, const char *data, size_t n)
{
    if (n >= 2) {
        p->tail[0] = data[n - 2];
        p->tail[1] = data[n - 1];
    } else if (n == 1) {
        p->tail[0] = p->tail[1];
        p->tail[1] = data[0];
    }
}

int mg_hp_execute(mg_hp_t *p, const char *data, size_t len, size_t *used)
{
    p->began = p->headers_done = p->body_progress = p->want_continue = 0;
    p->exec_start = data;
    p->exec_end = data + len;
    p->exec_seq++;
    *used = 0;
    if (p->version_at_end && len > 0 && data[0] == '\n') {
        hp_fail(p, 400, "malformed request: a request line ending in a bare LF");
        return MG_HP_ERROR;
    }
    p->version_at_end = 0;
    if (head_bare_lf(p, data, len)) {
        hp_fail(p, 400, "malformed request: a header section ending in a bare LF");
        return MG_HP_ERROR;
    }
    llhttp_errno_t err = llhttp_execute(&p->http, data, len);
    /* for the next read: does this one end in whitespace holding a line break? */
    const char *q = data + len;
    int lf = 0;
    while (q > data && (q[-1] == ' ' || q[-1] == '\t' || q[-1] == '\r' || q[-1] == '\n'))
        if (*--q == '\n') lf = 1;
    p->tail_lf = q == data ? (p->tail_lf || lf) : lf;
    if (err == HPE_OK) {
        *used = len;
        keep_tail(p, data, len);
        return MG_HP_MORE;
    }
    if (err == HPE_PAUSED && p->req != NULL && p->req->complete) {
        const char *pos = llhttp_get_error_pos(&p->http);
        *used = pos ? (size_t)(pos - data) : len;
        keep_tail(p, data, *used);
        return MG_HP_REQUEST;
    }
    /* a callback refused it (llhttp reports a refusal from on_headers_complete
     * or on_chunk_header as its own error code, not HPE_USER) */
    if (p->status == 0) {
        const char *reason = llhttp_get_error_reason(&p->http);
        hp_fail(p, 400, "malformed request: %s", reason ? reason : llhttp_errno_name(err));
    }
    return MG_HP_ERROR;
}

mg_req_t *mg_hp_take(mg_hp_t *p)
{
    mg_req_t *r = p->req;
    p->req = NULL;
    return r;
}

void mg_hp_resume(mg_hp_t *p)
{
    llhttp_resume(&p->http);
}

void mg_hp_free(mg_hp_t *p)
{
    if (p->req != NULL) mg_req_unref(p->req);
    p->req = NULL;
}

/* ======================== timers ======================== */

static void conn_error(mg_conn_t *c, int status, const char *message);
static void conn_on_timeout(uv_timer_t *t);

/* The connection's one timer: header, body and keep-alive deadlines while
 * reading, the write-stall deadline while serving. 0 stops it. */
static void conn_arm(mg_conn_t *c, uint64_t ms)
{
    if (ms == 0) uv_timer_stop(&c->timer);
    else uv_timer_start(&c->timer, conn_on_timeout, ms, 0);
}

/* The write-stall deadline: idle_timeout from now, unless the client has
 * taken some of its backlog by then (libuv shrinks write_queue_size as the
 * kernel takes bytes, long before a big write completes). */
static void conn_arm_write(mg_conn_t *c)
{
    c->stall_mark = c->tcp.write_queue_size;
    conn_arm(c, c->w->limits.idle_timeout_ms);
}

/* While a body arrives: idle_timeout without a byte ends it, and so does
 * falling behind a floor of MG_BODY_MIN_RATE after a grace of header_timeout
 * (a trickle that never quite stalls is still bounded). */
static void conn_arm_body(mg_conn_t *c)
{
    const mg_limits_t *l = &c->w->limits;
    uint64_t ms = l->idle_timeout_ms;
    if (l->header_timeout_ms > 0) {
        uint64_t now = uv_now(&c->w->loop);
        uint64_t deadline = c->body_start + l->header_timeout_ms +
                            (uint64_t)c->hp.req->body.len * 1000 / MG_BODY_MIN_RATE;
        uint64_t left = deadline > now ? deadline - now : 1;
        if (ms == 0 || left < ms) ms = left;
    }
    conn_arm(c, ms);
}

static void conn_on_timeout(uv_timer_t *t)
{
    mg_conn_t *c = t->data;
    if (c->closing) return;
    if (c->tcp.write_queue_size > 0) {
        /* an answer (or its tail) is waiting for the client: the write-stall deadline */
        if (c->tcp.write_queue_size < c->stall_mark) {
            conn_arm_write(c);         /* slow, but reading */
            return;
        }
        mg_log(MG_LOG_INFO, "%s: the client read nothing for idle_timeout; closing", c->remote);
        mg_conn_close(c);
        return;
    }
    if (c->req != NULL) return;        /* serving, nothing unsent: nothing to time */
    if (c->close_after) {
        mg_conn_close(c);
        return;
    }
    if (c->hp.req != NULL && (c->hp.head_bytes > 0 || c->hp.in_body)) {
        conn_error(c, 408, c->hp.in_body ? "request body not received in time"
                                         : "request not received in time");
        return;
    }
    /* a TLS connection that never finished its handshake and first header section in time (not
     * one idle after its requests): docs/security.md's timeout */
    if (c->tls != NULL && (!mg_tls_handshake_done(c->tls) || !c->served_any)) {
        mg_log(MG_LOG_INFO, "%s: TLS handshake and first request not done in time (timeout); closing",
               c->remote);
        mg_tls_count_error("timeout");
    }
    mg_conn_close(c);
}

/* ======================== writing ======================== */

static void wake_drain_waiter(mg_req_t *r)
{
    if (r->drain_waiter == 0) return;
    mg_worker_queue(r->w, MG_EV_DRAINED, r->drain_waiter, NULL, 0);
    r->drain_waiter = 0;
}

typedef struct {
    uv_write_t req;
    mg_conn_t *conn;
    size_t     len;
    char       data[];
} write_req_t;

static void conn_on_write(uv_write_t *wr, int status)
{
    write_req_t *w = (write_req_t *)wr;
    mg_conn_t *c = w->conn;
    free(w);
    if (status < 0) {
        if (status != UV_ECANCELED) {
            c->tls_failed = 1;
            mg_conn_close(c);
        }
        return;
    }
    if (c->closing) return;
    /* progress: the write-stall deadline moves (while serving or closing) */
    if (c->tcp.write_queue_size > 0) {
        if (c->req != NULL || c->close_after) conn_arm_write(c);
    } else if (c->req != NULL) {
        uv_timer_stop(&c->timer);
    }
    if (c->req != NULL && mg_conn_write_queue_small(c)) {
        if (c->req->ups != NULL) mg_up_client_drained(c->req);
        wake_drain_waiter(c->req);
    }
    if (c->close_after && c->tcp.write_queue_size == 0 && c->req == NULL) mg_conn_close(c);
}

int mg_conn_write_queue_small(mg_conn_t *c)
{
    return c->tcp.write_queue_size < MG_WRITE_HIGH / 2;
}

/* Writes bufs to the socket in order; what it does not take at once is
 * copied and queued (and a client that then takes nothing for idle_timeout
 * is closed, see conn_on_timeout). Returns 0, or -1 if the connection is
 * closing (it is closed on a write error). */
static int raw_writev(mg_conn_t *c, uv_buf_t *bufs, unsigned n)
{
    if (c->closing) return -1;
    size_t total = 0;
    for (unsigned i = 0; i < n; i++) total += bufs[i].len;
    if (total == 0) return 0;

    size_t done = 0;
    int rc = uv_try_write((uv_stream_t *)&c->tcp, bufs, n);
    if (rc > 0) done = (size_t)rc;
    else if (rc != UV_EAGAIN && rc != UV_ENOSYS) {
        c->tls_failed = 1;
        mg_conn_close(c);
        return -1;
    }
    if (done == total) return 0;

    write_req_t *w = mg_xmalloc(sizeof *w + (total - done));
    w->conn = c;
    w->len = total - done;
    size_t skip = done, off = 0;
    for (unsigned i = 0; i < n; i++) {
        size_t l = bufs[i].len;
        if (skip >= l) { skip -= l; continue; }
        memcpy(w->data + off, bufs[i].base + skip, l - skip);
        off += l - skip;
        skip = 0;
    }
    uv_buf_t b = uv_buf_init(w->data, (unsigned)w->len);
    rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, conn_on_write);
    if (rc < 0) {
        free(w);
        c->tls_failed = 1;
        mg_conn_close(c);
        return -1;
    }
    if (!uv_is_active((uv_handle_t *)&c->timer)) conn_arm_write(c);
    return 0;
}

/* Sends what the TLS session has for the peer. 0, or -1 (closing). */
static int tls_flush(mg_conn_t *c)
{
    mg_buf_t *out = mg_tls_output(c->tls);
    if (out->len == 0) return 0;
    uv_buf_t b = uv_buf_init(out->data, (unsigned)out->len);
    int rc = raw_writev(c, &b, 1);
    mg_buf_reset(out);
    if (out->cap > MG_WRITE_HIGH) mg_buf_free(out);   /* one big answer does not pin its size */
    return rc;
}

/* Writes bufs in order, through TLS on a TLS connection. 0, or -1 when the
 * connection is closing. */
static int conn_writev(mg_conn_t *c, uv_buf_t *bufs, unsigned n)
{
    if (c->closing) return -1;
    if (c->tls == NULL) return raw_writev(c, bufs, n);
    if (mg_tls_writev(c->tls, bufs, n) != 0) {
        mg_log(MG_LOG_WARN, "%s: TLS write failed: %s", c->remote, mg_tls_error(c->tls));
        c->tls_failed = 1;
        mg_conn_close(c);
        return -1;
    }
    return tls_flush(c);
}

static int conn_write(mg_conn_t *c, const char *data, size_t len)
{
    uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
    return conn_writev(c, &b, 1);
}

static const char *status_text(int code)
{
    switch (code) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Payload Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Entity";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default:  return "Unknown";
    }
}

/* An error the server answers itself (bad framing, limits), before or instead
 * of Lua. The connection is closed after it: what follows on the wire cannot
 * be trusted once framing is in doubt. */
static const char *error_code(int status)
{
    switch (status) {
    case 408: return "request_timeout";
    case 413: return "request_too_large";
    case 414: return "uri_too_long";
    case 431: return "header_too_large";
    case 501: return "not_implemented";
    case 503: return "shutting_down";
    default:  return "bad_request";
    }
}

/* The x-request-id of an answer made here (SPEC §3): the client's own when its header section was
 * read whole and the id is one the gateway takes (1 to 200 bytes, as the Lua side does), else a
 * new one. */
static void error_request_id(const mg_conn_t *c, char *out, size_t cap)
{
    const mg_req_t *r = c->hp.req;
    if (r != NULL && c->hp.in_body) {
        for (int i = 0; i < r->nhdrs; i++) {
            const mg_hdr_t *hd = &r->hdrs[i];
            if (hd->name_len == 12 && memcmp(r->head.data + hd->name_off, "x-request-id", 12) == 0 &&
                hd->val_len > 0 && hd->val_len <= 200 && hd->val_len < cap) {
                memcpy(out, r->head.data + hd->val_off, hd->val_len);
                out[hd->val_len] = '\0';
                return;
            }
        }
    }
    char id[33];
    mg_request_id(id);
    snprintf(out, cap, "%s", id);
}

static void conn_error(mg_conn_t *c, int status, const char *message)
{
    if (c->closing) return;
    /* the client's own error format (SPEC §3), when the path is known yet;
     * messages are fixed ASCII without quotes, so they need no escaping */
    mg_req_t *r = c->hp.req;
    int anthropic = r != NULL && r->url_len >= 12 &&
                    memcmp(r->head.data + r->url_off, "/v1/messages", 12) == 0;
    char body[512];
    int blen;
    if (anthropic)
        blen = snprintf(body, sizeof body,
                        "{\"type\":\"error\",\"error\":{\"type\":\"%s\",\"message\":\"%s\"}}",
                        status == 413 ? "request_too_large" : "invalid_request_error", message);
    else
        blen = snprintf(body, sizeof body,
                        "{\"error\":{\"message\":\"%s\",\"type\":\"invalid_request_error\",\"code\":\"%s\"}}",
                        message, error_code(status));
    char rid[201];
    error_request_id(c, rid, sizeof rid);
    char head[512];
    int hlen = snprintf(head, sizeof head,
                        "HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
                        "content-length: %d\r\nx-request-id: %s\r\nconnection: close\r\n\r\n",
                        status, status_text(status), blen, rid);
    uv_buf_t bufs[2] = { uv_buf_init(head, (unsigned)hlen), uv_buf_init(body, (unsigned)blen) };
    mg_log(MG_LOG_INFO, "%s: %d %s", c->remote, status, message);
    /* before a TLS handshake (plain HTTP on a TLS port) the answer is plain too */
    int rc = c->tls != NULL && !mg_tls_handshake_done(c->tls) ? raw_writev(c, bufs, 2)
                                                               : conn_writev(c, bufs, 2);
    if (rc == 0) {
        c->close_after = 1;
        if (c->reading) {
            uv_read_stop((uv_stream_t *)&c->tcp);
            c->reading = 0;
        }
        if (c->tcp.write_queue_size == 0 && c->req == NULL) mg_conn_close(c);
        else conn_arm_write(c);
    }
}

/* ======================== connections ======================== */

static void conn_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    mg_conn_t *c = h->data;
    buf->base = c->w->read_buf;
    buf->len = sizeof c->w->read_buf;
}

void mg_http_on_accept(uv_stream_t *server, int status)
{
    mg_listener_t *l = server->data;
    mg_worker_t *w = l->w;
    if (status < 0) {
        mg_log(MG_LOG_WARN, "accept on %s: %s", l->address, uv_strerror(status));
        return;
    }
    mg_conn_t *c = mg_xcalloc(1, sizeof *c);
    c->w = w;
    c->app = l->app;
    uv_tcp_init(&w->loop, &c->tcp);
    c->tcp.data = c;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        uv_close((uv_handle_t *)&c->tcp, (uv_close_cb)free);
        return;
    }
    uv_timer_init(&w->loop, &c->timer);
    c->timer.data = c;
    mg_buf_init(&c->pending);
    mg_hp_init(&c->hp, &w->limits);
    /* link in */
    c->next = w->conns;
    if (w->conns) w->conns->prev = c;
    w->conns = c;
    w->nconns++;
    int admin = c->app == MG_APP_ADMIN;
    int total = __atomic_add_fetch(admin ? &admin_conns : &total_conns, 1, __ATOMIC_RELAXED);
    int cap = admin ? MG_MAX_ADMIN_CONNECTIONS : w->limits.max_connections;

    struct sockaddr_storage ss;
    int sl = sizeof ss;
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sl) == 0) {
        char ip[48] = "";
        if (ss.ss_family == AF_INET6) uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof ip);
        else uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof ip);
        snprintf(c->remote, sizeof c->remote, "%s", ip);
    }
    if (cap > 0 && total > cap) {
        mg_log(MG_LOG_WARN, "%s: refused, %s (%d) reached", c->remote,
               admin ? "the admin listener's connection cap" : "max_connections", cap);
        mg_conn_close(c);
        return;
    }
    if (l->tls != NULL) {
        /* the context current now: a reload later does not change this session */
        mg_tls_ctx_t *ctx = mg_tls_slot_get(l->tls);
        c->tls = ctx != NULL ? mg_tls_new(ctx) : NULL;
        mg_tls_ctx_release(ctx);
        if (c->tls == NULL) {
            mg_log(MG_LOG_WARN, "%s: cannot start a TLS session", c->remote);
            mg_conn_close(c);
            return;
        }
    }
    uv_tcp_nodelay(&c->tcp, 1);
    uv_read_start((uv_stream_t *)&c->tcp, conn_alloc, conn_on_read);
    c->reading = 1;
    /* for a TLS connection this bounds the handshake too */
    conn_arm(c, w->limits.header_timeout_ms);
}

void mg_conn_close(mg_conn_t *c)
{
    if (c->closing) return;
    c->closing = 1;
    mg_worker_t *w = c->w;
    if (c->tls != NULL && mg_tls_handshake_done(c->tls) && !c->tls_failed &&
        c->tcp.write_queue_size == 0) {
        /* best effort: a close_notify lets the client tell an end from a cut */
        mg_tls_close_notify(c->tls);
        mg_buf_t *out = mg_tls_output(c->tls);
        uv_buf_t b = uv_buf_init(out->data, (unsigned)out->len);
        if (out->len > 0) uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
        mg_buf_reset(out);
    }
    if (c->req != NULL) {
        mg_req_t *r = c->req;
        c->req = NULL;
        req_detach(r);
        mg_req_unref(r);
    }
    mg_worker_unqueue_ptr(w, c);
    uv_timer_stop(&c->timer);
    /* two handles live in c: it is freed when the second close callback runs
     * (libuv gives no order between them) */
    c->closes_pending = 2;
    uv_close((uv_handle_t *)&c->timer, conn_on_close);
    uv_close((uv_handle_t *)&c->tcp, conn_on_close);
}

static void conn_on_close(uv_handle_t *h)
{
    mg_conn_t *c = h->data;
    mg_worker_t *w = c->w;
    if (--c->closes_pending > 0) return;
    if (c->prev) c->prev->next = c->next;
    else w->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    w->nconns--;
    __atomic_sub_fetch(c->app == MG_APP_ADMIN ? &admin_conns : &total_conns, 1, __ATOMIC_RELAXED);
    mg_buf_free(&c->pending);
    mg_hp_free(&c->hp);
    mg_tls_free(c->tls);
    free(c);
    mg_worker_maybe_exit(w);
}

/* Close every connection that has no request in flight (shutdown). */
void mg_conn_close_idle(mg_worker_t *w)
{
    mg_conn_t *c = w->conns;
    while (c != NULL) {
        mg_conn_t *next = c->next;
        if (c->req == NULL) mg_conn_close(c);
        else c->close_after = 1;
        c = next;
    }
}

void mg_conn_close_all(mg_worker_t *w)
{
    mg_conn_t *c = w->conns;
    while (c != NULL) {
        mg_conn_t *next = c->next;
        mg_conn_close(c);
        c = next;
    }
}

/* Bytes from a TLS connection's socket: the handshake, then records whose
 * plaintext goes to the parser as if it had come from a plain socket. */
static void tls_on_read(mg_conn_t *c, const char *data, size_t len)
{
    if (!c->tls_seen) {
        c->tls_seen = 1;
        /* a TLS connection starts with a handshake record (0x16); an
         * upper-case letter is an HTTP method: answer in plain text, not with
         * a TLS alert the client cannot read */
        if (data[0] >= 'A' && data[0] <= 'Z') {
            mg_tls_count_error("plaintext_http");
            c->tls_failed = 1;
            conn_error(c, 400, "plain HTTP request sent to a TLS port; use https");
            return;
        }
    }
    int was_done = mg_tls_handshake_done(c->tls);
    mg_tls_input(c->tls, data, len);
    int rc;
    while ((rc = mg_tls_read(c->tls, tls_plain, sizeof tls_plain)) > 0) {
        conn_parse(c, tls_plain, (size_t)rc);
        if (c->closing) return;
    }
    if (tls_flush(c) != 0) return;     /* handshake messages, alerts */
    if (rc == MG_TLS_CLOSED) {
        mg_conn_close(c);
    } else if (rc == MG_TLS_ERROR) {
        const char *reason = mg_tls_error_reason(c->tls);
        mg_tls_count_error(reason);
        mg_log(MG_LOG_INFO, "%s: TLS %s failed (%s): %s", c->remote,
               was_done ? "connection" : "handshake", reason, mg_tls_error(c->tls));
        c->tls_failed = 1;
        mg_conn_close(c);
    }
}

static void conn_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    mg_conn_t *c = s->data;
    if (nread < 0) {
        /* EOF or error: a request still being served loses its client */
        mg_conn_close(c);
        return;
    }
    if (nread == 0) return;
    if (c->tls != NULL) tls_on_read(c, buf->base, (size_t)nread);
    else conn_parse(c, buf->base, (size_t)nread);
}

/* The response to c->req is complete: go on with the next request. */
static void conn_request_done(mg_conn_t *c)
{
    mg_req_t *r = c->req;
    c->req = NULL;
    int keep = r->keepalive && !c->close_after && !c->w->stopping;
    r->conn = NULL;
    mg_req_unref(r);
    if (!keep) {
        c->close_after = 1;
        if (c->tcp.write_queue_size == 0) mg_conn_close(c);
        return;
    }
    /* parse what was pipelined from the drain, not from inside a Lua call */
    mg_worker_queue(c->w, MG_EV_CONN_RESUME, 0, c, 0);
}

void mg_conn_resume(mg_conn_t *c)
{
    if (c->closing || c->req != NULL) return;
    if (c->paused) {
        c->paused = 0;
        mg_hp_resume(&c->hp);
    }
    if (c->pending.len > 0) {
        /* parse from a private copy: parsing may pause again and refill pending */
        mg_buf_t p = c->pending;
        mg_buf_init(&c->pending);
        conn_parse(c, p.data, p.len);
        mg_buf_free(&p);
        if (c->closing || c->req != NULL || c->close_after) return;
    }
    if (!c->reading) {
        uv_read_start((uv_stream_t *)&c->tcp, conn_alloc, conn_on_read);
        c->reading = 1;
    }
    if (c->hp.req == NULL) conn_arm(c, c->w->limits.idle_timeout_ms);
}

static void conn_parse(mg_conn_t *c, const char *data, size_t len)
{
    /* after an error answer nothing more is read as a request */
    if (c->closing || (c->close_after && c->req == NULL)) return;
    if (c->paused) {
        /* A request is being served (or its successor not yet started):
         * pipelined bytes wait and are parsed once it is done. Reading goes
         * on meanwhile, so that a client that hangs up is seen at once and
         * its upstream transfer stops instead of spending tokens — up to
         * MG_PENDING_MAX bytes read ahead; then reading stops until the
         * response is done, and TCP holds the client back. */
        mg_buf_append(&c->pending, data, len);
        if (c->pending.len > MG_PENDING_MAX && c->reading) {
            uv_read_stop((uv_stream_t *)&c->tcp);
            c->reading = 0;
        }
        return;
    }
    mg_hp_t *p = &c->hp;
    p->refuse = c->w->stopping;
    size_t used = 0;
    int rc = mg_hp_execute(p, data, len, &used);
    if (rc == MG_HP_ERROR) {
        conn_error(c, p->status, p->message);
        return;
    }
    if (p->began) conn_arm(c, c->w->limits.header_timeout_ms);
    if (p->headers_done) c->body_start = uv_now(&c->w->loop);
    if (p->want_continue) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        if (conn_write(c, cont, sizeof cont - 1) != 0) return;
    }
    if (rc == MG_HP_REQUEST) {
        uv_timer_stop(&c->timer);
        mg_req_t *r = mg_hp_take(p);
        r->w = c->w;
        r->conn = c;
        r->app = c->app;
        c->req = r;                    /* the parser's reference is now the connection's */
        c->served_any = 1;
        mg_req_retain(r);              /* Lua's, dropped by mg_req_release */
        c->w->inflight++;
        mg_worker_queue(c->w, MG_EV_REQUEST, 0, r, r->app);
        if (used < len) mg_buf_append(&c->pending, data + used, len - used);
        c->paused = 1;
        return;
    }
    if (p->in_body && p->req != NULL && (p->headers_done || p->body_progress)) conn_arm_body(c);
}

/* ======================== FFI: the request ======================== */

const char *mg_req_method(mg_req_t *r, size_t *len)
{
    const char *m = llhttp_method_name((llhttp_method_t)r->method);
    *len = strlen(m);
    return m;
}

const char *mg_req_target(mg_req_t *r, size_t *len)
{
    *len = r->url_len;
    return r->head.data + r->url_off;
}

int mg_req_header_count(mg_req_t *r)
{
    return r->nhdrs;
}

int mg_req_header(mg_req_t *r, int i, const char **name, size_t *nlen, const char **val,
                  size_t *vlen)
{
    if (i < 0 || i >= r->nhdrs) return -1;
    mg_hdr_t *h = &r->hdrs[i];
    *name = r->head.data + h->name_off;
    *nlen = h->name_len;
    /* trim trailing whitespace llhttp leaves in values */
    const char *v = r->head.data + h->val_off;
    size_t n = h->val_len;
    while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\t')) n--;
    *val = h->val_len ? v : "";
    *vlen = n;
    return 0;
}

const char *mg_req_body(mg_req_t *r, size_t *len)
{
    *len = r->body.len;
    return r->body.len ? r->body.data : "";
}

const char *mg_req_remote(mg_req_t *r)
{
    return r->conn ? r->conn->remote : "";
}

int mg_req_http_minor(mg_req_t *r)
{
    return r->http_minor;
}

int mg_req_alive(mg_req_t *r)
{
    return r->conn != NULL && !r->conn->closing;
}

double mg_req_start(mg_req_t *r)
{
    return r->start;
}

void mg_req_release(mg_req_t *r)
{
    mg_worker_t *w = r->w;
    if (!r->finished && r->conn != NULL) {
        /* Lua ended without answering: never leave a client hanging */
        mg_log(MG_LOG_ERROR, "request ended without a response; closing the connection");
        mg_resp_finish(r, 1);
    }
    w->inflight--;
    mg_req_unref(r);
    mg_worker_maybe_exit(w);
}

/* ======================== FFI: the response ======================== */

int mg_resp_start(mg_req_t *r, int status, const char *headers, size_t hlen,
                  int64_t content_length)
{
    if (r->status != 0 || r->finished) return -1;
    mg_conn_t *c = r->conn;
    /* a client that left before its answer began: no status (the logs say 499) */
    if (c == NULL || c->closing) return -1;
    r->status = status;
    if (c->w->stopping) c->close_after = 1;
    int no_body = status == 204 || status == 304 || r->method == HTTP_HEAD;
    mg_buf_t b;
    char stack[1024];
    b.data = stack;
    b.len = 0;
    b.cap = sizeof stack;
    /* mg_buf reallocates from a heap pointer only: start on the heap if needed */
    if (hlen + 160 > sizeof stack) {
        mg_buf_init(&b);
        mg_buf_reserve(&b, hlen + 160);
    }
    /* the status line and content-length without printf: this runs for every answer */
    mg_buf_append(&b, r->http_minor ? "HTTP/1.1 " : "HTTP/1.0 ", 9);
    mg_buf_append_uint(&b, (uint64_t)status);
    mg_buf_append(&b, " ", 1);
    const char *text = status_text(status);
    mg_buf_append(&b, text, strlen(text));
    mg_buf_append(&b, "\r\n", 2);
    mg_buf_append(&b, headers, hlen);
    if (no_body) {
        /* nothing */
    } else if (content_length >= 0) {
        mg_buf_append(&b, "content-length: ", 16);
        mg_buf_append_uint(&b, (uint64_t)content_length);
        mg_buf_append(&b, "\r\n", 2);
    } else if (r->http_minor >= 1) {
        static const char te[] = "transfer-encoding: chunked\r\n";
        memcpy(b.data + b.len, te, sizeof te - 1);
        b.len += sizeof te - 1;
        r->chunked = 1;
    } else {
        c->close_after = 1;   /* HTTP/1.0: the end of the body is the close */
    }
    if (!r->keepalive || c->close_after) {
        static const char cl[] = "connection: close\r\n\r\n";
        memcpy(b.data + b.len, cl, sizeof cl - 1);
        b.len += sizeof cl - 1;
        c->close_after = 1;
    } else {
        if (r->http_minor == 0) {
            static const char ka[] = "connection: keep-alive\r\n";
            memcpy(b.data + b.len, ka, sizeof ka - 1);
            b.len += sizeof ka - 1;
        }
        b.data[b.len++] = '\r';
        b.data[b.len++] = '\n';
    }
    if (content_length > 0 && !no_body) {
        /* A body of known length follows: hold the header block and send it
         * with the first body bytes, one write instead of two. (A stream's
         * headers go at once: its first event may be a long way off.) */
        mg_buf_reset(&r->head_out);
        mg_buf_append(&r->head_out, b.data, b.len);
        if (b.data != stack) mg_buf_free(&b);
        return 0;
    }
    int rc = conn_write(c, b.data, b.len);
    if (b.data != stack) mg_buf_free(&b);
    return rc;
}

/* Sends a held header block, with data after it when given. */
static int flush_head(mg_req_t *r, mg_conn_t *c, const char *data, size_t len)
{
    uv_buf_t bufs[2] = { uv_buf_init(r->head_out.data, (unsigned)r->head_out.len),
                         uv_buf_init((char *)data, (unsigned)len) };
    int rc = conn_writev(c, bufs, len ? 2 : 1);
    mg_buf_free(&r->head_out);
    return rc;
}

int mg_resp_write(mg_req_t *r, const char *data, size_t len)
{
    mg_conn_t *c = r->conn;
    if (c == NULL || c->closing || r->status == 0 || r->finished) return -1;
    if (len == 0) return 0;
    if (r->method == HTTP_HEAD || r->status == 204 || r->status == 304) return 0;
    r->bytes_out += len;
    if (r->head_out.len > 0) return flush_head(r, c, data, len);
    if (!r->chunked) return conn_write(c, data, len);
    /* the chunk's size line, in hex (a stream writes one per event: no printf) */
    char size[24];
    int n = 0;
    for (int shift = (int)(sizeof len * 8) - 4; shift >= 0; shift -= 4) {
        unsigned d = (unsigned)(len >> shift) & 15u;
        if (d != 0 || n > 0 || shift == 0) size[n++] = "0123456789abcdef"[d];
    }
    size[n++] = '\r';
    size[n++] = '\n';
    uv_buf_t bufs[3] = {
        uv_buf_init(size, (unsigned)n),
        uv_buf_init((char *)data, (unsigned)len),
        uv_buf_init("\r\n", 2),
    };
    return conn_writev(c, bufs, 3);
}

int mg_resp_finish(mg_req_t *r, int abort)
{
    if (r->finished) return 0;
    r->finished = 1;
    mg_conn_t *c = r->conn;
    if (c == NULL || c->closing) return -1;
    if (abort || r->status == 0) {
        /* cut: the client must not mistake this for a complete answer */
        c->req = NULL;
        r->conn = NULL;
        mg_req_unref(r);
        mg_conn_close(c);
        return 0;
    }
    if (r->head_out.len > 0) flush_head(r, c, NULL, 0);
    if (r->chunked) conn_write(c, "0\r\n\r\n", 5);
    if (c->req == r) conn_request_done(c);
    return 0;
}

int mg_resp_status(mg_req_t *r)
{
    return r->status;
}

int mg_resp_wait_drained(mg_req_t *r, int64_t waiter)
{
    mg_conn_t *c = r->conn;
    if (c == NULL || c->closing) return -1;
    if (mg_conn_write_queue_small(c)) return 0;
    r->drain_waiter = waiter;
    return 1;
}

uint64_t mg_resp_bytes(mg_req_t *r)
{
    return r->bytes_out;
}
