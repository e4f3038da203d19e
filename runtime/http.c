/* http.c — client-side HTTP/1.1: connections, request parsing, responses.
 *
 * One request per connection is in flight at a time. When llhttp completes a
 * request the parser is paused and reading stops; bytes that were already read
 * (pipelined requests) wait in conn->pending and are parsed once the response
 * is finished, so pipelined requests are answered in order.
 *
 * Limits (SPEC §2 `limits`) are enforced here, before Lua sees anything:
 * max_header → 431, max_body → 413, header_timeout and idle_timeout → close,
 * max_connections → refuse. Malformed requests (including Content-Length with
 * Transfer-Encoding and obs-fold continuation lines) → 400 and close. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ffi.h"
#include "log.h"
#include "upstream.h"
#include "worker.h"

#define MG_MAX_HEADERS 256
#define MG_WRITE_HIGH  (256 * 1024)   /* pause the upstream above this much unsent */

static llhttp_settings_t parser_settings;
static pthread_once_t settings_once = PTHREAD_ONCE_INIT;
/* client connections of every worker: limits.max_connections is the process's */
static int total_conns;

static void conn_on_close(uv_handle_t *h);
static void conn_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void conn_parse(mg_conn_t *c, const char *data, size_t len);
static void http_settings_init(void);
static void wake_drain_waiter(mg_req_t *r);

/* ======================== requests ======================== */

static mg_req_t *req_new(mg_conn_t *c)
{
    mg_req_t *r = mg_xcalloc(1, sizeof *r);
    r->w = c->w;
    r->conn = c;
    r->refs = 1;                       /* the connection's */
    r->app = c->app;
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
        if (status != UV_ECANCELED) mg_conn_close(c);
        return;
    }
    if (c->closing) return;
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

/* Writes bufs in order; what the socket does not take at once is copied and
 * queued. Returns 0, or -1 if the connection is closing. */
static int conn_writev(mg_conn_t *c, uv_buf_t *bufs, unsigned n)
{
    if (c->closing) return -1;
    size_t total = 0;
    for (unsigned i = 0; i < n; i++) total += bufs[i].len;
    if (total == 0) return 0;

    size_t done = 0;
    int rc = uv_try_write((uv_stream_t *)&c->tcp, bufs, n);
    if (rc > 0) done = (size_t)rc;
    else if (rc != UV_EAGAIN && rc != UV_ENOSYS) {
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
        mg_conn_close(c);
        return -1;
    }
    return 0;
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
    case 431: return "header_too_large";
    case 503: return "shutting_down";
    default:  return "bad_request";
    }
}

static void conn_error(mg_conn_t *c, int status, const char *message)
{
    if (c->closing) return;
    /* the client's own error format (SPEC §3), when the path is known yet;
     * messages are fixed ASCII without quotes, so they need no escaping */
    int anthropic = c->req != NULL && c->req->url_len >= 12 &&
                    memcmp(c->req->head.data + c->req->url_off, "/v1/messages", 12) == 0;
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
    char head[256];
    int hlen = snprintf(head, sizeof head,
                        "HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
                        "content-length: %d\r\nconnection: close\r\n\r\n",
                        status, status_text(status), blen);
    uv_buf_t bufs[2] = { uv_buf_init(head, (unsigned)hlen), uv_buf_init(body, (unsigned)blen) };
    mg_log(MG_LOG_INFO, "%s: %d %s", c->remote, status, message);
    if (c->req != NULL && !c->req->complete) {
        /* a request Lua never saw: drop it here */
        mg_req_t *r = c->req;
        c->req = NULL;
        req_detach(r);
        mg_req_unref(r);
    }
    if (conn_writev(c, bufs, 2) == 0) {
        c->close_after = 1;
        if (c->reading) {
            uv_read_stop((uv_stream_t *)&c->tcp);
            c->reading = 0;
        }
        if (c->tcp.write_queue_size == 0 && c->req == NULL) mg_conn_close(c);
    }
}

/* ======================== timers ======================== */

static void conn_on_timeout(uv_timer_t *t)
{
    mg_conn_t *c = t->data;
    if (c->req != NULL && !c->req->complete && c->head_bytes > 0) {
        conn_error(c, 408, "request not received in time");
        return;
    }
    if (c->req == NULL || !c->req->complete) mg_conn_close(c);
}

static void conn_arm(mg_conn_t *c, uint64_t ms)
{
    if (ms == 0) uv_timer_stop(&c->timer);
    else uv_timer_start(&c->timer, conn_on_timeout, ms, 0);
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
    /* link in */
    c->next = w->conns;
    if (w->conns) w->conns->prev = c;
    w->conns = c;
    w->nconns++;
    int total = __atomic_add_fetch(&total_conns, 1, __ATOMIC_RELAXED);

    struct sockaddr_storage ss;
    int sl = sizeof ss;
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sl) == 0) {
        char ip[48] = "";
        if (ss.ss_family == AF_INET6) uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof ip);
        else uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof ip);
        snprintf(c->remote, sizeof c->remote, "%s", ip);
    }
    if (w->limits.max_connections > 0 && total > w->limits.max_connections) {
        mg_log(MG_LOG_WARN, "%s: refused, max_connections (%d) reached", c->remote,
               w->limits.max_connections);
        mg_conn_close(c);
        return;
    }
    pthread_once(&settings_once, http_settings_init);
    llhttp_init(&c->parser, HTTP_REQUEST, &parser_settings);
    c->parser.data = c;
    uv_tcp_nodelay(&c->tcp, 1);
    uv_read_start((uv_stream_t *)&c->tcp, conn_alloc, conn_on_read);
    c->reading = 1;
    conn_arm(c, w->limits.header_timeout_ms);
}

void mg_conn_close(mg_conn_t *c)
{
    if (c->closing) return;
    c->closing = 1;
    mg_worker_t *w = c->w;
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
    __atomic_sub_fetch(&total_conns, 1, __ATOMIC_RELAXED);
    mg_buf_free(&c->pending);
    free(c);
    mg_worker_maybe_exit(w);
}

/* Close every connection that has no request in flight (shutdown). */
void mg_conn_close_idle(mg_worker_t *w)
{
    mg_conn_t *c = w->conns;
    while (c != NULL) {
        mg_conn_t *next = c->next;
        if (c->req == NULL || !c->req->complete) mg_conn_close(c);
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

static void conn_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    mg_conn_t *c = s->data;
    if (nread < 0) {
        /* EOF or error: a request still being served loses its client */
        mg_conn_close(c);
        return;
    }
    if (nread == 0) return;
    conn_parse(c, buf->base, (size_t)nread);
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
    c->head_bytes = 0;
    /* parse what was pipelined from the drain, not from inside a Lua call */
    mg_worker_queue(c->w, MG_EV_CONN_RESUME, 0, c, 0);
}

void mg_conn_resume(mg_conn_t *c)
{
    if (c->closing || c->req != NULL) return;
    if (c->paused) {
        c->paused = 0;
        llhttp_resume(&c->parser);
    }
    if (c->pending.len > 0) {
        /* parse from a private copy: parsing may pause again and refill pending */
        mg_buf_t p = c->pending;
        mg_buf_init(&c->pending);
        conn_parse(c, p.data, p.len);
        mg_buf_free(&p);
        if (c->closing || c->req != NULL) return;
    }
    if (!c->reading) {
        uv_read_start((uv_stream_t *)&c->tcp, conn_alloc, conn_on_read);
        c->reading = 1;
    }
    conn_arm(c, c->w->limits.idle_timeout_ms);
}

static void conn_parse(mg_conn_t *c, const char *data, size_t len)
{
    if (c->closing) return;
    if (c->paused) {
        /* a request is being served (or its successor not yet started):
         * pipelined bytes wait, bounded, and are parsed once it is done */
        mg_buf_append(&c->pending, data, len);
        if (c->pending.len > c->w->limits.max_header + c->w->limits.max_body) {
            mg_log(MG_LOG_INFO, "%s: too much pipelined data; closing", c->remote);
            mg_conn_close(c);
        }
        return;
    }
    c->exec_start = data;
    c->exec_end = data + len;
    c->exec_seq++;
    llhttp_errno_t err = llhttp_execute(&c->parser, data, len);
    if (c->closing) return;
    if (err == HPE_OK) return;
    if (err == HPE_PAUSED) {
        const char *pos = llhttp_get_error_pos(&c->parser);
        size_t used = pos ? (size_t)(pos - data) : len;
        if (used < len) mg_buf_append(&c->pending, data + used, len - used);
        c->paused = 1;
        /* Reading goes on while the request is served: pipelined bytes wait
         * in pending (bounded), and a client that hangs up is seen at once,
         * so its upstream transfer stops instead of spending tokens. */
        return;
    }
    if (err == HPE_USER) return;       /* a callback already answered */
    const char *reason = llhttp_get_error_reason(&c->parser);
    char msg[200];
    snprintf(msg, sizeof msg, "malformed request: %s", reason ? reason : llhttp_errno_name(err));
    /* JSON-escape is not needed: llhttp reasons are fixed ASCII without quotes */
    conn_error(c, 400, msg);
}

/* ======================== llhttp callbacks ======================== */

static int on_message_begin(llhttp_t *p)
{
    mg_conn_t *c = p->data;
    if (c->w->stopping) {
        conn_error(c, 503, "server is shutting down");
        return HPE_USER;
    }
    c->req = req_new(c);
    c->head_bytes = 0;
    c->last_was_value = 0;
    conn_arm(c, c->w->limits.header_timeout_ms);
    return 0;
}

static int head_grow(mg_conn_t *c, size_t n)
{
    c->head_bytes += n;
    if (c->head_bytes > c->w->limits.max_header) {
        conn_error(c, 431, "request header section is larger than max_header");
        return HPE_USER;
    }
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len)
{
    mg_conn_t *c = p->data;
    mg_req_t *r = c->req;
    if (head_grow(c, len)) return HPE_USER;
    if (r->url_len == 0) r->url_off = (uint32_t)r->head.len;
    mg_buf_append(&r->head, at, len);
    r->url_len += (uint32_t)len;
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    mg_conn_t *c = p->data;
    mg_req_t *r = c->req;
    if (head_grow(c, len + 4)) return HPE_USER;
    if (r->nhdrs == 0 || c->last_was_value) {
        if (r->nhdrs >= MG_MAX_HEADERS) {
            conn_error(c, 431, "too many request headers");
            return HPE_USER;
        }
        if (r->nhdrs == r->hdrs_cap) {
            r->hdrs_cap = r->hdrs_cap ? r->hdrs_cap * 2 : 16;
            r->hdrs = mg_xrealloc(r->hdrs, (size_t)r->hdrs_cap * sizeof *r->hdrs);
        }
        mg_hdr_t *h = &r->hdrs[r->nhdrs++];
        memset(h, 0, sizeof *h);
        h->name_off = (uint32_t)r->head.len;
        c->last_was_value = 0;
    }
    mg_hdr_t *h = &r->hdrs[r->nhdrs - 1];
    size_t off = r->head.len;
    mg_buf_append(&r->head, at, len);
    for (size_t i = 0; i < len; i++) {
        char ch = r->head.data[off + i];
        if (ch >= 'A' && ch <= 'Z') r->head.data[off + i] = (char)(ch + 32);
    }
    h->name_len += (uint32_t)len;
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    mg_conn_t *c = p->data;
    mg_req_t *r = c->req;
    if (head_grow(c, len)) return HPE_USER;
    /* llhttp 8 accepts obs-fold continuation lines and reports the folded part
     * as one more piece of the same value. A value legitimately comes in
     * several pieces only when it straddles two reads: the previous piece
     * ended at the end of one buffer and this one starts the next. Anything
     * else is a fold, which RFC 9112 §5.2 lets a server reject and a proxy
     * must not pass on. */
    if (c->last_was_value &&
        !(c->val_at_end && at == c->exec_start && c->val_seq != c->exec_seq)) {
        conn_error(c, 400, "malformed request: obsolete line folding in a header");
        return HPE_USER;
    }
    c->val_at_end = at + len == c->exec_end;
    c->val_seq = c->exec_seq;
    mg_hdr_t *h = &r->hdrs[r->nhdrs - 1];
    if (!c->last_was_value) {
        h->val_off = (uint32_t)r->head.len;
        c->last_was_value = 1;
    }
    mg_buf_append(&r->head, at, len);
    h->val_len += (uint32_t)len;
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    mg_conn_t *c = p->data;
    mg_req_t *r = c->req;
    mg_worker_t *w = c->w;
    r->method = llhttp_get_method(p);
    r->http_minor = llhttp_get_http_minor(p);
    r->keepalive = llhttp_should_keep_alive(p);
    if (llhttp_get_http_major(p) != 1) {
        conn_error(c, 400, "malformed request: unsupported HTTP version");
        return HPE_USER;
    }
    /* llhttp already refuses Content-Length together with Transfer-Encoding
     * and duplicate Content-Lengths; check the size here, before any body. */
    if ((p->flags & F_CONTENT_LENGTH) && p->content_length > w->limits.max_body) {
        conn_error(c, 413, "request body is larger than max_body");
        return HPE_USER;
    }
    /* body phase: a stalled sender is cut after idle_timeout without progress */
    conn_arm(c, w->limits.idle_timeout_ms);
    for (int i = 0; i < r->nhdrs; i++) {
        mg_hdr_t *h = &r->hdrs[i];
        if (h->name_len == 6 && memcmp(r->head.data + h->name_off, "expect", 6) == 0 &&
            h->val_len == 12 && strncasecmp(r->head.data + h->val_off, "100-continue", 12) == 0) {
            static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
            conn_write(c, cont, sizeof cont - 1);
        }
    }
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    mg_conn_t *c = p->data;
    mg_req_t *r = c->req;
    if (r->body.len + len > c->w->limits.max_body) {
        conn_error(c, 413, "request body is larger than max_body");
        return HPE_USER;
    }
    mg_buf_append(&r->body, at, len);
    conn_arm(c, c->w->limits.idle_timeout_ms);
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    mg_conn_t *c = p->data;
    mg_req_t *r = c->req;
    r->complete = 1;
    uv_timer_stop(&c->timer);
    mg_req_retain(r);                  /* Lua's reference, dropped by mg_req_release */
    c->w->inflight++;
    mg_worker_queue(c->w, MG_EV_REQUEST, 0, r, r->app);
    return HPE_PAUSED;
}

static void http_settings_init(void)
{
    llhttp_settings_t *s = &parser_settings;
    llhttp_settings_init(s);
    s->on_message_begin = on_message_begin;
    s->on_url = on_url;
    s->on_header_field = on_header_field;
    s->on_header_value = on_header_value;
    s->on_headers_complete = on_headers_complete;
    s->on_body = on_body;
    s->on_message_complete = on_message_complete;
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
    r->status = status;
    mg_conn_t *c = r->conn;
    if (c == NULL || c->closing) return -1;
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
    int n = snprintf(b.data, b.cap, "HTTP/1.%d %d %s\r\n", r->http_minor ? 1 : 0, status,
                     status_text(status));
    b.len = (size_t)n;
    memcpy(b.data + b.len, headers, hlen);
    b.len += hlen;
    if (no_body) {
        /* nothing */
    } else if (content_length >= 0) {
        b.len += (size_t)snprintf(b.data + b.len, b.cap - b.len, "content-length: %lld\r\n",
                                  (long long)content_length);
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
    char size[24];
    int n = snprintf(size, sizeof size, "%zx\r\n", len);
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
