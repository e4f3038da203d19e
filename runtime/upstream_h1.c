/* upstream_h1.c — the native HTTP/1.1 client for plain http:// providers.
 *
 * A transfer to an http:// URL runs here instead of on libcurl (whose
 * per-transfer machinery costs more CPU than the rest of a proxied request):
 * one request, one llhttp response parser, on a connection from this
 * worker's pool. What Lua and the client see is the core's (upstream.c); this
 * file only moves bytes and reports them through the mg_up__* functions.
 *
 * Connections. Each worker keeps a pool per host:port. A connection is made
 * with uv_getaddrinfo (skipped for a numeric address) and uv_tcp_connect,
 * trying each address in turn, with TCP_NODELAY and keep-alive probes, under
 * connect_timeout (300 s when 0, as libcurl). After a complete answer that
 * allows it (HTTP/1.1, no Connection: close, not delimited by the close,
 * nothing after it, the request fully written) the connection goes back to
 * the pool: at most H1_IDLE_PER_HOST idle ones per host, each closed after
 * H1_IDLE_MS unused, and dropped at once if the provider closes it (or sends
 * anything) while idle. A request on a reused connection that ends before
 * any byte of an answer is sent again once, on a new connection: the
 * provider may have closed it as we reused it (libcurl does the same).
 *
 * Requests: the method, the URL's path and query, Host (with the port when
 * it is not 80), Accept (any type) unless given, Accept-Encoding: identity in
 * place of any given one (the body must reach plugins and the client as
 * sent: nothing here decodes gzip; a compressed answer anyway is malformed),
 * the given headers as they are (an empty one is not sent, as with libcurl),
 * and for every method but GET and HEAD the body with its Content-Length and
 * libcurl's default Content-Type. Never Expect: 100-continue. The request is
 * written with one uv_try_write, the rest (if any) queued with one uv_write.
 *
 * Answers: llhttp (strict) in response mode. 1xx answers are skipped; HEAD,
 * 204 and 304 answers have no body; chunked bodies are decoded; a body
 * without length ends with the connection. A header section over
 * H1_HEAD_MAX bytes, a 101, or anything llhttp refuses is MG_EPROTO
 * ("malformed"); the connection ending before the answer is complete is
 * MG_ERESET ("reset"); a refused or unresolvable connection MG_ECONNECT.
 *
 * Back-pressure: a read is parsed whole; when the core says the body must
 * wait (mg_up__body_blocked), reading stops until mg_h1_resume. So at most
 * one read (64 KB) goes beyond the core's caps.
 *
 * Deadlines: each connection has one timer, armed for the nearest of the
 * transfer's total timeout, the connect timeout (while connecting) and the
 * idle (low-speed) limit (no byte for idle_timeout whole seconds, not
 * counting time paused), or for its idle expiry while pooled. It is re-armed
 * lazily: a byte that moves the idle limit costs nothing until the timer
 * fires and finds the deadline moved. */
#include <llhttp.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "ffi.h"
#include "upstream_int.h"

#define H1_IDLE_PER_HOST   64            /* idle connections kept per host:port */
#define H1_IDLE_MS         60000         /* an idle connection unused this long is closed */
#define H1_HEAD_MAX        (64 * 1024)   /* bytes of an answer's status line and headers */
#define H1_HOST_MAX        255
#define H1_CONNECT_DEFAULT 300.0         /* libcurl's connect timeout when none is given */
#define H1_KEEPALIVE_S     60            /* TCP keep-alive probes after this idle time (libcurl's) */

enum { C_NEW = 0, C_RESOLVING, C_CONNECTING, C_OPEN };

struct mg_h1_pool {
    mg_h1_pool_t           *next;
    mg_h1_conn_t           *idle;        /* most recently used first */
    int                     nidle;
    int                     port;
    int                     numeric;     /* host is an address: addr, no resolving */
    struct sockaddr_storage addr;
    char                    host[H1_HOST_MAX + 1];   /* an IPv6 address without brackets */
    char                    hosthdr[H1_HOST_MAX + 16];
};

struct mg_h1_conn {
    uv_tcp_t          tcp;
    uv_timer_t        timer;
    uv_connect_t      connect;
    uv_getaddrinfo_t  gai;
    llhttp_t          parser;
    mg_multi_t       *m;
    mg_h1_pool_t     *pool;
    mg_h1_conn_t     *next, *prev;       /* m->h1_conns */
    mg_h1_conn_t     *inext, *iprev;     /* pool->idle, while idle */
    mg_up_t          *u;                 /* the transfer it carries; NULL while idle */
    struct addrinfo  *ai;                /* resolved addresses (owned) */
    struct addrinfo  *ai_next;           /* the next one to try */
    double            connect_deadline;
    size_t            head_bytes;        /* of the current header section */
    int               refs;              /* 1 while open, + each callback still to come */
    int               state;
    int               writes;            /* uv_writes not yet completed */
    int               fail_result;       /* set by a parser callback: end with this */
    unsigned          closing : 1;
    unsigned          idle : 1;
    unsigned          reading : 1;
    unsigned          reused : 1;        /* carried a complete answer before */
    unsigned          got_bytes : 1;     /* a byte of the current answer arrived */
    unsigned          in_head : 1;       /* in a header section (not the trailers) */
    unsigned          in_field : 1;      /* inside a header name */
    unsigned          complete : 1;      /* the final answer is complete */
    unsigned          keep : 1;          /* and the connection may carry another */
};

typedef struct {
    uv_write_t    req;
    mg_h1_conn_t *c;
    char          data[];
} h1_write_t;

static llhttp_settings_t settings;
static pthread_once_t settings_once = PTHREAD_ONCE_INIT;

static void conn_open(mg_up_t *u);
static void conn_close(mg_h1_conn_t *c);
static void arm(mg_h1_conn_t *c);
static void send_request(mg_h1_conn_t *c);

/* ======================== URLs ======================== */

typedef mg_h1_url_t h1_url_t;   /* upstream_int.h */

static int host_char(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '-' || ch == '.' || ch == '_';
}

/* Splits an http:// URL the native client can send as it is. -1 for any
 * other (https, userinfo, odd hosts or ports, bytes libcurl would encode):
 * those stay with libcurl. */
static int parse_url(const char *url, h1_url_t *out)
{
    if (strncasecmp(url, "http://", 7) != 0) return -1;
    const char *p = url + 7;
    out->v6 = 0;
    if (*p == '[') {
        const char *close = strchr(p, ']');
        if (close == NULL) return -1;
        out->host = p + 1;
        out->hlen = (size_t)(close - out->host);
        for (size_t i = 0; i < out->hlen; i++) {
            char ch = out->host[i];
            if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F') ||
                  ch == ':' || ch == '.'))
                return -1;
        }
        out->v6 = 1;
        p = close + 1;
    } else {
        out->host = p;
        while (host_char(*p)) p++;
        out->hlen = (size_t)(p - out->host);
    }
    if (out->hlen == 0 || out->hlen > H1_HOST_MAX) return -1;
    out->port = 80;
    if (*p == ':') {
        p++;
        int port = 0, digits = 0;
        while (*p >= '0' && *p <= '9' && digits < 6) port = port * 10 + (*p++ - '0'), digits++;
        if (digits == 0 || port < 1 || port > 65535) return -1;
        out->port = port;
    }
    if (*p != '\0' && *p != '/' && *p != '?' && *p != '#') return -1;
    out->target = p;
    const char *end = p;
    while (*end != '\0' && *end != '#') {
        unsigned char ch = (unsigned char)*end;
        if (ch <= 0x20 || ch >= 0x7f) return -1;
        end++;
    }
    out->tlen = (size_t)(end - p);
    return 0;
}

/* A method is a token (RFC 9110 §9.1): anything else stays with libcurl. */
static int method_ok(const char *method)
{
    if (method[0] == '\0' || strlen(method) > 32) return 0;
    for (const char *p = method; *p; p++)
        if (!host_char(*p) && strchr("!#$%&'*+^`|~", *p) == NULL) return 0;
    return 1;
}

int mg_h1_accepts(const char *method, const char *url, mg_h1_url_t *parsed)
{
    return method_ok(method) && parse_url(url, parsed) == 0;
}

/* ======================== the pool ======================== */

static mg_h1_pool_t *pool_get(mg_multi_t *m, const h1_url_t *url)
{
    for (mg_h1_pool_t *p = m->h1_pools; p != NULL; p = p->next)
        if (p->port == url->port && strlen(p->host) == url->hlen &&
            memcmp(p->host, url->host, url->hlen) == 0)
            return p;
    mg_h1_pool_t *p = mg_xcalloc(1, sizeof *p);
    memcpy(p->host, url->host, url->hlen);
    p->port = url->port;
    if (uv_ip4_addr(p->host, p->port, (struct sockaddr_in *)&p->addr) == 0 ||
        uv_ip6_addr(p->host, p->port, (struct sockaddr_in6 *)&p->addr) == 0)
        p->numeric = 1;
    snprintf(p->hosthdr, sizeof p->hosthdr, url->v6 ? "[%s]" : "%s", p->host);
    if (p->port != 80) {
        size_t n = strlen(p->hosthdr);
        snprintf(p->hosthdr + n, sizeof p->hosthdr - n, ":%d", p->port);
    }
    p->next = m->h1_pools;
    m->h1_pools = p;
    return p;
}

static void idle_unlink(mg_h1_conn_t *c)
{
    mg_h1_pool_t *p = c->pool;
    if (c->iprev) c->iprev->inext = c->inext;
    else p->idle = c->inext;
    if (c->inext) c->inext->iprev = c->iprev;
    c->inext = c->iprev = NULL;
    c->idle = 0;
    p->nidle--;
}

static void on_idle_expired(uv_timer_t *t)
{
    conn_close(t->data);
}

static void read_start(mg_h1_conn_t *c);

/* A connection whose answer is complete: kept for the next request, or
 * closed when the pool for its host is full. */
static void pool_put(mg_h1_conn_t *c)
{
    mg_h1_pool_t *p = c->pool;
    if (p->nidle >= H1_IDLE_PER_HOST) {
        conn_close(c);
        return;
    }
    c->idle = 1;
    c->reused = 1;
    c->iprev = NULL;
    c->inext = p->idle;
    if (p->idle) p->idle->iprev = c;
    p->idle = c;
    p->nidle++;
    uv_timer_start(&c->timer, on_idle_expired, H1_IDLE_MS, 0);
    read_start(c);      /* what arrives now is the provider closing it */
}

static mg_h1_conn_t *pool_take(mg_h1_pool_t *p)
{
    mg_h1_conn_t *c = p->idle;
    if (c == NULL) return NULL;
    idle_unlink(c);
    uv_timer_stop(&c->timer);
    return c;
}

/* ======================== connections ======================== */

static void conn_unref(mg_h1_conn_t *c)
{
    if (--c->refs > 0) return;
    if (c->ai != NULL) uv_freeaddrinfo(c->ai);
    free(c);
}

static void on_handle_close(uv_handle_t *h)
{
    conn_unref(h->data);
}

static void settings_init(void);

static mg_h1_conn_t *conn_new(mg_multi_t *m, mg_h1_pool_t *p)
{
    pthread_once(&settings_once, settings_init);
    mg_h1_conn_t *c = mg_xcalloc(1, sizeof *c);
    c->m = m;
    c->pool = p;
    c->refs = 1;
    uv_tcp_init(&m->w->loop, &c->tcp);
    c->tcp.data = c;
    uv_timer_init(&m->w->loop, &c->timer);
    c->timer.data = c;
    c->connect.data = c;
    c->gai.data = c;
    llhttp_init(&c->parser, HTTP_RESPONSE, &settings);
    c->parser.data = c;
    c->next = m->h1_conns;
    if (m->h1_conns) m->h1_conns->prev = c;
    m->h1_conns = c;
    return c;
}

static void attach(mg_h1_conn_t *c, mg_up_t *u)
{
    c->u = u;
    u->h1.conn = c;
}

static void detach(mg_h1_conn_t *c)
{
    if (c->u == NULL) return;
    c->u->h1.conn = NULL;
    c->u = NULL;
}

/* Closes c for good; whatever transfer it carried must have been detached
 * (or is dropped here without a word). Its memory goes once every callback
 * libuv still owes it has run. */
static void conn_close(mg_h1_conn_t *c)
{
    if (c->closing) return;
    c->closing = 1;
    detach(c);
    if (c->idle) idle_unlink(c);
    mg_multi_t *m = c->m;
    if (c->prev) c->prev->next = c->next;
    else m->h1_conns = c->next;
    if (c->next) c->next->prev = c->prev;
    c->next = c->prev = NULL;
    if (c->state == C_RESOLVING) uv_cancel((uv_req_t *)&c->gai);
    c->refs += 2;
    uv_close((uv_handle_t *)&c->tcp, on_handle_close);
    uv_close((uv_handle_t *)&c->timer, on_handle_close);
    conn_unref(c);
}

/* Ends the transfer c carries with result (errbuf says why: fmt, or what a
 * parser callback wrote when fmt is NULL) and closes c. */
static void fail(mg_h1_conn_t *c, int result, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void fail(mg_h1_conn_t *c, int result, const char *fmt, ...)
{
    mg_up_t *u = c->u;
    detach(c);
    conn_close(c);
    if (u == NULL) return;
    if (fmt != NULL) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(u->errbuf, sizeof u->errbuf, fmt, ap);
        va_end(ap);
    }
    mg_up__finish(u, result);
}

/* The connection failed before any byte of an answer (EOF, reset, a write
 * error). On a reused connection that is the provider having closed it as
 * we picked it: the request goes again, once, on a new connection. */
static void io_error(mg_h1_conn_t *c, int status)
{
    mg_up_t *u = c->u;
    if (c->reused && !c->got_bytes && !u->h1.retried) {
        u->h1.retried = 1;
        detach(c);
        conn_close(c);
        conn_open(u);
        return;
    }
    if (!c->got_bytes && status == UV_EOF)
        fail(c, MG_ERESET, "Empty reply from server");
    else if (!c->got_bytes)
        fail(c, MG_ERESET, "Send/recv failure: %s", uv_strerror(status));
    else
        fail(c, MG_ERESET, "the connection ended before the answer was complete (%s)",
             status == UV_EOF ? "closed" : uv_strerror(status));
}

/* The final answer is complete: the transfer ends well, and c is pooled
 * when it can carry another request. */
static void message_done(mg_h1_conn_t *c)
{
    mg_up_t *u = c->u;
    int keep = c->keep && !u->h1.close && c->writes == 0 && !u->aborted;
    detach(c);
    if (keep) pool_put(c);
    else conn_close(c);
    mg_up__finish(u, MG_OK);
}

/* ======================== reading ======================== */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    mg_h1_conn_t *c = h->data;
    /* parsed before the callback returns, so the worker's one buffer is enough */
    buf->base = c->m->w->read_buf;
    buf->len = sizeof c->m->w->read_buf;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void read_start(mg_h1_conn_t *c)
{
    if (c->reading || c->closing) return;
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0) c->reading = 1;
}

static void read_stop(mg_h1_conn_t *c)
{
    if (!c->reading) return;
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = 0;
}

static void parse(mg_h1_conn_t *c, const char *data, size_t len)
{
    mg_up_t *u = c->u;
    u->h1.last_rx = mg_monotonic();
    c->got_bytes = 1;
    /* in_cb: a client leaving meanwhile only marks the transfer aborted */
    u->in_cb = 1;
    llhttp_errno_t err = llhttp_execute(&c->parser, data, len);
    u->in_cb = 0;
    if (u->aborted) {
        fail(c, MG_ECLIENT, "the client went away");
    } else if (c->fail_result != 0) {
        fail(c, c->fail_result, NULL);
    } else if (c->complete) {
        /* bytes after the answer: the provider does not speak as we think */
        if (llhttp_get_error_pos(&c->parser) != data + len) c->keep = 0;
        message_done(c);
    } else if (err != HPE_OK) {
        fail(c, MG_EPROTO, "malformed answer: %s", llhttp_get_error_reason(&c->parser));
    } else if (mg_up__body_blocked(u, 1)) {
        u->paused = 1;
        read_stop(c);
        arm(c);
    }
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    mg_h1_conn_t *c = s->data;
    if (nread == 0 || c->closing) return;
    if (c->u == NULL) {
        /* idle: the provider closed it, or sent what nobody asked for */
        conn_close(c);
        return;
    }
    if (nread > 0) {
        parse(c, buf->base, (size_t)nread);
        return;
    }
    if (c->got_bytes) {
        /* the end of a body delimited by the close completes it */
        mg_up_t *u = c->u;
        u->in_cb = 1;
        llhttp_finish(&c->parser);
        u->in_cb = 0;
        if (c->complete && !u->aborted && c->fail_result == 0) {
            c->keep = 0;
            message_done(c);
            return;
        }
    }
    io_error(c, (int)nread);
}

/* ======================== llhttp callbacks ======================== */

static int head_grow(mg_h1_conn_t *c, size_t n)
{
    c->head_bytes += n;
    if (c->head_bytes <= H1_HEAD_MAX) return 0;
    mg_up__errorf(c->u, "malformed answer: a header section larger than %d bytes", H1_HEAD_MAX);
    c->fail_result = MG_EPROTO;
    return HPE_USER;
}

static int on_message_begin(llhttp_t *p)
{
    mg_h1_conn_t *c = p->data;
    c->head_bytes = 0;
    c->in_head = 1;
    c->in_field = 0;
    mg_up__head_begin(c->u, 0);
    return 0;
}

static int on_status(llhttp_t *p, const char *at, size_t len)
{
    return head_grow(p->data, len);
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    mg_h1_conn_t *c = p->data;
    if (!c->in_head) return 0;                 /* a trailer: ignored, as with libcurl */
    if (!c->in_field) {
        c->in_field = 1;
        if (head_grow(c, 4) != 0) return HPE_USER;   /* ": " and CRLF */
        mg_up__hdr_new(c->u);
    }
    if (head_grow(c, len) != 0) return HPE_USER;
    mg_up__hdr_name(c->u, at, len);
    return 0;
}

static int on_header_field_complete(llhttp_t *p)
{
    mg_h1_conn_t *c = p->data;
    c->in_field = 0;
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    mg_h1_conn_t *c = p->data;
    if (!c->in_head) return 0;
    if (head_grow(c, len) != 0) return HPE_USER;
    mg_up__hdr_value(c->u, at, len);
    return 0;
}

static int on_header_value_complete(llhttp_t *p)
{
    mg_h1_conn_t *c = p->data;
    if (c->in_head) mg_up__hdr_trim(c->u);
    return 0;
}

/* We ask for identity: a compressed body would reach plugins and the
 * client undecoded, with its Content-Encoding dropped. */
static int encoded(mg_up_t *u)
{
    for (int i = 0; i < u->nhdrs; i++) {
        mg_hdr_t *h = &u->hdrs[i];
        if (h->name_len != 16 || memcmp(u->hbuf.data + h->name_off, "content-encoding", 16) != 0)
            continue;
        const char *v = u->hbuf.data + h->val_off;
        if (!(h->val_len == 8 && strncasecmp(v, "identity", 8) == 0) && h->val_len > 0) {
            mg_up__errorf(u, "malformed answer: Content-Encoding %.*s although identity was asked for",
                          (int)(h->val_len > 40 ? 40 : h->val_len), v);
            return 1;
        }
    }
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    mg_h1_conn_t *c = p->data;
    mg_up_t *u = c->u;
    int status = p->status_code;
    c->in_head = 0;
    u->status = status;
    if (status == 101 || p->upgrade) {
        mg_up__errorf(u, "malformed answer: a switch of protocols nobody asked for");
        c->fail_result = MG_EPROTO;
        return -1;
    }
    if (status >= 200) {
        if (encoded(u)) {
            c->fail_result = MG_EPROTO;
            return -1;
        }
        mg_up__head_end(u);
    }
    /* 1: no body (llhttp knows 1xx, 204 and 304 too; a HEAD only we know) */
    if (u->h1.head_only || status < 200 || status == 204 || status == 304) return 1;
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    mg_h1_conn_t *c = p->data;
    mg_up_t *u = c->u;
    u->h1.rx_bytes += len;
    if (mg_up__body_take(u, at, len) == 0) return 0;
    mg_up__errorf(u, "the answer could not be passed on: the client is gone");
    c->fail_result = MG_EOTHER;
    return HPE_USER;
}

static int on_message_complete(llhttp_t *p)
{
    mg_h1_conn_t *c = p->data;
    if (c->u->status < 200) return 0;          /* interim: the final answer follows */
    c->complete = 1;
    c->keep = llhttp_should_keep_alive(p) && p->http_major == 1 && p->http_minor == 1;
    return HPE_PAUSED;                         /* stop here: what follows is not ours */
}

static void settings_init(void)
{
    llhttp_settings_init(&settings);
    settings.on_message_begin = on_message_begin;
    settings.on_status = on_status;
    settings.on_header_field = on_header_field;
    settings.on_header_field_complete = on_header_field_complete;
    settings.on_header_value = on_header_value;
    settings.on_header_value_complete = on_header_value_complete;
    settings.on_headers_complete = on_headers_complete;
    settings.on_body = on_body;
    settings.on_message_complete = on_message_complete;
}

/* ======================== writing ======================== */

static void on_write(uv_write_t *wr, int status)
{
    h1_write_t *w = (h1_write_t *)wr;
    mg_h1_conn_t *c = w->c;
    free(w);
    c->writes--;
    if (status < 0 && !c->closing) {
        if (c->u != NULL) io_error(c, status);
        else conn_close(c);
    }
    conn_unref(c);
}

/* Sends the transfer's request on c (connected, or taken from the pool). */
static void send_request(mg_h1_conn_t *c)
{
    mg_up_t *u = c->u;
    llhttp_reset(&c->parser);
    c->got_bytes = c->complete = c->keep = c->in_head = c->in_field = 0;
    c->fail_result = 0;
    u->h1.last_rx = mg_monotonic();
    uv_buf_t b = uv_buf_init(u->bout.data, (unsigned)u->bout.len);
    int rc = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    if (rc < 0 && rc != UV_EAGAIN) {
        io_error(c, rc);
        return;
    }
    size_t done = rc > 0 ? (size_t)rc : 0;
    if (done < u->bout.len) {
        /* copied: the transfer may be freed before the write completes */
        size_t left = u->bout.len - done;
        h1_write_t *w = mg_xmalloc(sizeof *w + left);
        w->c = c;
        memcpy(w->data, u->bout.data + done, left);
        b = uv_buf_init(w->data, (unsigned)left);
        rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_write);
        if (rc < 0) {
            free(w);
            io_error(c, rc);
            return;
        }
        c->refs++;
        c->writes++;
    }
    if (!u->paused) read_start(c);
    arm(c);
}

/* ======================== connecting ======================== */

static void try_next(mg_h1_conn_t *c, int last_error);

static void on_connect(uv_connect_t *req, int status)
{
    mg_h1_conn_t *c = req->data;
    if (!c->closing && c->u != NULL) {
        if (status < 0) {
            try_next(c, status);
        } else {
            c->state = C_OPEN;
            uv_tcp_nodelay(&c->tcp, 1);
            uv_tcp_keepalive(&c->tcp, 1, H1_KEEPALIVE_S);
            send_request(c);
        }
    }
    conn_unref(c);
}

static void connect_to(mg_h1_conn_t *c, const struct sockaddr *addr)
{
    c->state = C_CONNECTING;
    int rc = uv_tcp_connect(&c->connect, &c->tcp, addr, on_connect);
    if (rc < 0) {
        try_next(c, rc);
        return;
    }
    c->refs++;
    arm(c);
}

/* Connects to the next resolved address; after a failed attempt the
 * handle is spent, so the transfer and the addresses left move to a new
 * connection. With none left the transfer fails (last_error says why). */
static void try_next(mg_h1_conn_t *c, int last_error)
{
    struct addrinfo *a = c->ai_next;
    while (a != NULL && a->ai_family != AF_INET && a->ai_family != AF_INET6) a = a->ai_next;
    if (a == NULL) {
        if (last_error == 0) last_error = UV_EADDRNOTAVAIL;
        fail(c, MG_ECONNECT, "Failed to connect to %s port %d: %s", c->pool->host, c->pool->port,
             uv_strerror(last_error));
        return;
    }
    if (c->state == C_CONNECTING) {
        mg_h1_conn_t *n = conn_new(c->m, c->pool);
        n->ai = c->ai;
        n->connect_deadline = c->connect_deadline;
        c->ai = NULL;
        mg_up_t *u = c->u;
        detach(c);
        conn_close(c);
        attach(n, u);
        c = n;
    }
    c->ai_next = a->ai_next;
    connect_to(c, a->ai_addr);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    mg_h1_conn_t *c = req->data;
    if (c->closing || c->u == NULL) {
        if (res != NULL) uv_freeaddrinfo(res);
    } else if (status < 0) {
        c->state = C_NEW;
        fail(c, MG_ECONNECT, "Could not resolve host: %s (%s)", c->pool->host, uv_strerror(status));
    } else {
        c->state = C_NEW;
        c->ai = c->ai_next = res;
        try_next(c, 0);
    }
    conn_unref(c);
}

/* A new connection for u: resolve (unless numeric), then connect. */
static void conn_open(mg_up_t *u)
{
    mg_h1_pool_t *p = u->h1.pool;
    mg_h1_conn_t *c = conn_new(u->m, p);
    attach(c, u);
    c->connect_deadline = mg_monotonic() + u->h1.connect_timeout;
    if (p->numeric) {
        connect_to(c, (const struct sockaddr *)&p->addr);
        return;
    }
    char port[8];
    snprintf(port, sizeof port, "%d", p->port);
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    hints.ai_flags = AI_NUMERICSERV;
    c->state = C_RESOLVING;
    int rc = uv_getaddrinfo(&u->m->w->loop, &c->gai, on_resolved, p->host, port, &hints);
    if (rc < 0) {
        c->state = C_NEW;
        fail(c, MG_ECONNECT, "Could not resolve host: %s (%s)", p->host, uv_strerror(rc));
        return;
    }
    c->refs++;
    arm(c);
}

/* ======================== deadlines ======================== */

static double sooner(double a, double b)
{
    if (a == 0) return b;
    if (b == 0) return a;
    return a < b ? a : b;
}

static void on_deadline(uv_timer_t *t);

static void arm(mg_h1_conn_t *c)
{
    mg_up_t *u = c->u;
    if (u == NULL || c->closing) return;
    double at = u->h1.deadline;
    if (c->state != C_OPEN) at = sooner(at, c->connect_deadline);
    else if (u->h1.low_speed > 0 && !u->paused) at = sooner(at, u->h1.last_rx + u->h1.low_speed);
    if (at == 0) {
        uv_timer_stop(&c->timer);
        return;
    }
    double ms = (at - mg_monotonic()) * 1000;
    uv_timer_start(&c->timer, on_deadline, ms > 0 ? (uint64_t)ms + 1 : 0, 0);
}

static void on_deadline(uv_timer_t *t)
{
    mg_h1_conn_t *c = t->data;
    mg_up_t *u = c->u;
    if (u == NULL) return;
    double now = mg_monotonic();
    if (u->h1.deadline > 0 && now >= u->h1.deadline) {
        fail(c, MG_ETIMEDOUT, "Operation timed out after %.0f milliseconds with %llu bytes received",
             (now - u->t_start) * 1000, (unsigned long long)u->h1.rx_bytes);
    } else if (c->state != C_OPEN) {
        if (now >= c->connect_deadline)
            fail(c, MG_ETIMEDOUT, "%s timed out after %.0f milliseconds",
                 c->state == C_RESOLVING ? "Resolving" : "Connection",
                 u->h1.connect_timeout * 1000);
        else
            arm(c);
    } else if (u->h1.low_speed > 0 && !u->paused && now - u->h1.last_rx >= u->h1.low_speed) {
        fail(c, MG_ETIMEDOUT, "Operation too slow. Less than 1 bytes/sec transferred the last %.0f seconds",
             u->h1.low_speed);
    } else {
        arm(c);
    }
}

/* ======================== transfers ======================== */

static int name_is(const char *p, size_t n, const char *name)
{
    return strlen(name) == n && strncasecmp(p, name, n) == 0;
}

/* Whether a Connection header value has the token close. */
static int says_close(const char *v, size_t n)
{
    for (size_t i = 0; i + 5 <= n; i++)
        if (strncasecmp(v + i, "close", 5) == 0 && (i == 0 || v[i - 1] == ',' || v[i - 1] == ' ') &&
            (i + 5 == n || v[i + 5] == ',' || v[i + 5] == ' '))
            return 1;
    return 0;
}

/* One "name: value" line of Lua's header block, or -1 for one not sent. */
static int header_line(const char *p, size_t l, size_t *nlen, const char **val, size_t *vlen)
{
    const char *colon = memchr(p, ':', l);
    if (colon == NULL || colon == p) return -1;
    for (size_t i = 0; i < l; i++) {
        unsigned char ch = (unsigned char)p[i];
        if ((ch < 0x20 && ch != '\t') || ch == 0x7f) return -1;
    }
    *nlen = (size_t)(colon - p);
    const char *v = colon + 1, *end = p + l;
    while (v < end && (*v == ' ' || *v == '\t')) v++;
    while (end > v && (end[-1] == ' ' || end[-1] == '\t')) end--;
    if (end == v) return -1;        /* "name:" alone: libcurl sends nothing either */
    *val = v;
    *vlen = (size_t)(end - v);
    return 0;
}

enum { H_SEND = 0, H_DROP = 1, H_HOST = 2, H_ACCEPT = 4, H_CTYPE = 8, H_CLOSE = 16 };

static int header_kind(const char *p, size_t nlen, const char *v, size_t vlen)
{
    if (name_is(p, nlen, "accept-encoding") || name_is(p, nlen, "content-length") ||
        name_is(p, nlen, "transfer-encoding") || name_is(p, nlen, "expect"))
        return H_DROP;
    if (name_is(p, nlen, "host")) return H_HOST;
    if (name_is(p, nlen, "accept")) return H_ACCEPT;
    if (name_is(p, nlen, "content-type")) return H_CTYPE;
    if (name_is(p, nlen, "connection") && says_close(v, vlen)) return H_CLOSE;
    return H_SEND;
}

/* Appends to out each line of Lua's header block that is to be sent;
 * returns the H_* flags of the lines seen. */
static int scan_headers(const char *headers, size_t hlen, mg_buf_t *out)
{
    int seen = 0;
    const char *p = headers, *end = headers + hlen;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        size_t l = eol ? (size_t)(eol - p) : (size_t)(end - p);
        size_t tl = l;
        if (tl > 0 && p[tl - 1] == '\r') tl--;
        size_t nlen, vlen;
        const char *v;
        if (header_line(p, tl, &nlen, &v, &vlen) == 0) {
            int kind = header_kind(p, nlen, v, vlen);
            seen |= kind;
            if (kind != H_DROP) {
                mg_buf_append(out, p, tl);
                mg_buf_append(out, "\r\n", 2);
            }
        }
        p += l + 1;
    }
    return seen;
}

/* The request, whole, into u->bout (kept until the transfer is freed: a
 * retry sends it again). */
static void build_request(mg_up_t *u, const char *method, const h1_url_t *url,
                          const char *headers, size_t hlen, const char *body, size_t blen)
{
    mg_buf_t *b = &u->bout;
    int with_body = strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0;
    /* one pass over Lua's block: the lines to send, and what they hold */
    mg_buf_t lines;
    mg_buf_init(&lines);
    mg_buf_reserve(&lines, hlen + 2);
    int seen = scan_headers(headers, hlen, &lines);
    mg_buf_init(b);
    mg_buf_reserve(b, 160 + strlen(method) + url->tlen + hlen + (with_body ? blen : 0));
    mg_buf_append(b, method, strlen(method));
    mg_buf_append(b, " ", 1);
    if (url->tlen == 0 || url->target[0] == '?') mg_buf_append(b, "/", 1);
    mg_buf_append(b, url->target, url->tlen);
    mg_buf_append(b, " HTTP/1.1\r\n", 11);
    if (!(seen & H_HOST)) {
        mg_buf_append(b, "Host: ", 6);
        mg_buf_append(b, u->h1.pool->hosthdr, strlen(u->h1.pool->hosthdr));
        mg_buf_append(b, "\r\n", 2);
    }
    if (!(seen & H_ACCEPT)) mg_buf_append(b, "Accept: */*\r\n", 13);
    mg_buf_append(b, "Accept-Encoding: identity\r\n", 27);
    mg_buf_append(b, lines.data, lines.len);
    mg_buf_free(&lines);
    if (with_body) {
        mg_buf_append(b, "Content-Length: ", 16);
        mg_buf_append_uint(b, blen);
        mg_buf_append(b, "\r\n", 2);
    }
    mg_buf_append(b, "\r\n", 2);
    if (with_body) mg_buf_append(b, body, blen);
    u->h1.close = (seen & H_CLOSE) != 0;
}

void mg_h1_start(mg_up_t *u, const char *method, const mg_h1_url_t *url, const char *headers,
                size_t hlen, const char *body, size_t blen, double connect_timeout,
                double timeout, double idle_timeout)
{
    u->h1.pool = pool_get(u->m, url);
    build_request(u, method, url, headers, hlen, body, blen);
    u->h1.head_only = strcmp(method, "HEAD") == 0;
    /* as libcurl reads them: whole milliseconds, 0 for its defaults */
    u->h1.deadline = (long)(timeout * 1000) > 0 ? u->t_start + timeout : 0;
    u->h1.connect_timeout = (long)(connect_timeout * 1000) > 0 ? connect_timeout : H1_CONNECT_DEFAULT;
    u->h1.low_speed = idle_timeout >= 1 ? floor(idle_timeout) : 0;
    mg_h1_conn_t *c = pool_take(u->h1.pool);
    if (c == NULL) {
        conn_open(u);
        return;
    }
    attach(c, u);
    send_request(c);
}

void mg_h1_stop(mg_up_t *u)
{
    mg_h1_conn_t *c = u->h1.conn;
    if (c == NULL) return;
    detach(c);
    conn_close(c);
}

void mg_h1_resume(mg_up_t *u)
{
    mg_h1_conn_t *c = u->h1.conn;
    if (c == NULL || c->closing || c->state != C_OPEN) return;
    read_start(c);
    u->h1.last_rx = mg_monotonic();
    arm(c);
}

void mg_h1_close_all(mg_multi_t *m)
{
    while (m->h1_conns != NULL) conn_close(m->h1_conns);
    mg_h1_pool_t *next;
    for (mg_h1_pool_t *p = m->h1_pools; p != NULL; p = next) {
        next = p->next;
        free(p);
    }
    m->h1_pools = NULL;
}
