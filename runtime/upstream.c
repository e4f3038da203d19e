/* upstream.c — upstream transfers (see upstream.h): the core every transfer
 * shares, and the libcurl transport.
 *
 * The core (see upstream_int.h) owns what Lua and the client see: the event
 * order, the body paths, back-pressure, deadlines and the owner list. A
 * transport feeds it: libcurl's multi handle driven by libuv here (https://,
 * HTTP/2, and everything under MOONGATE_UPSTREAM=curl), or the native
 * HTTP/1.1 client of upstream_h1.c for plain http://.
 *
 * This is the one file that talks to libcurl: CURLcode becomes an MG_E* code
 * here and nowhere else.
 *
 * Body bytes take one of three paths:
 *  - before Lua has seen the headers they wait in u->inbuf (capped; beyond
 *    the cap the transfer is paused, so memory stays bounded);
 *  - pipe mode writes them straight to the client's socket (no Lua per chunk),
 *    pausing the transfer while the client's unsent queue is large;
 *  - stream mode hands them to Lua, again pausing above the cap.
 * Back-pressure therefore always ends in pausing the transport, which stops
 * reading from the provider's socket (curl_easy_pause, or uv_read_stop). */
#include <curl/curl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ffi.h"
#include "log.h"
#include "upstream.h"
#include "upstream_int.h"

typedef struct sock sock_t;

#define EASY_POOL MG_UP_EASY_POOL

/* One per socket curl asks us to watch. uv_poll_start() always drops the fd
 * from epoll and adds it again, so a poll is restarted only when what it
 * watches changes; and a connection curl parks in its cache (CURL_POLL_REMOVE)
 * stays watched, so that the next transfer on it costs no epoll_ctl at all.
 * Connection sockets are opened and closed through our callbacks, which is
 * how we know when such a poll must really go. */
struct sock {
    uv_poll_t     poll;        /* first: closing it frees the struct */
    curl_socket_t fd;
    mg_multi_t   *m;
    int           events;      /* UV_READABLE|UV_WRITABLE being watched, 0 if stopped */
    unsigned      owned : 1;   /* a connection socket we opened (closed by on_close_socket) */
    unsigned      idle : 1;    /* parked in curl's connection cache */
    unsigned      polling : 1; /* uv_poll_init_socket done */
};

_Static_assert(MG_UP_ERRLEN >= CURL_ERROR_SIZE, "errbuf is curl's error buffer");

static void check_done(mg_multi_t *m);

/* ======================== errors ======================== */

static int map_result(mg_up_t *u, CURLcode rc)
{
    if (u->aborted) return MG_ECLIENT;
    switch (rc) {
    case CURLE_OK:
        return MG_OK;
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
        return MG_ECONNECT;
    case CURLE_OPERATION_TIMEDOUT:
        return MG_ETIMEDOUT;
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
        return MG_ETLS;
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
        return MG_ERESET;
    case CURLE_WEIRD_SERVER_REPLY:
    case CURLE_BAD_CONTENT_ENCODING:
    case CURLE_UNSUPPORTED_PROTOCOL:
        return MG_EPROTO;
    default:
        return MG_EOTHER;
    }
}

const char *mg_up_result_name(int result)
{
    switch (result) {
    case MG_OK:        return "ok";
    case MG_ECONNECT:  return "connect-failure";
    case MG_ETIMEDOUT: return "timeout";
    case MG_ERESET:    return "reset";
    case MG_ETLS:      return "tls";
    case MG_ECLIENT:   return "client-closed";
    case MG_EPROTO:    return "malformed";
    default:           return "error";
    }
}

/* ======================== the core: waking Lua ======================== */

static void up_unref(mg_up_t *u);
static void stop_transfer(mg_up_t *u);

void mg_up__wake(mg_up_t *u)
{
    if (u->wake_queued || u->freed) return;
    u->wake_queued = 1;
    mg_worker_queue(u->m->w, MG_EV_UP_WAKE, u->waiter, u, 0);
}

void mg_up__finish(mg_up_t *u, int result)
{
    /* a relay's partial last event is Lua's to judge, before the end */
    if (u->mode == MG_UP_RELAY && u->inbuf.len > 0) u->mode = MG_UP_STREAM;
    if (u->running) {
        u->running = 0;
        u->m->active--;
    }
    u->done = 1;
    u->result = u->aborted ? MG_ECLIENT : result;
    mg_up__wake(u);
}

void mg_up__errorf(mg_up_t *u, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(u->errbuf, sizeof u->errbuf, fmt, ap);
    va_end(ap);
}

static void unpause(mg_up_t *u)
{
    if (!u->paused || !u->running) return;
    u->paused = 0;
    /* the time spent paused was the client's, not the provider's silence */
    if (u->watched) u->last_data = mg_monotonic();
    if (u->easy == NULL) {
        mg_h1_resume(u);
        return;
    }
    curl_easy_pause(u->easy, CURLPAUSE_CONT);
    /* unpausing may have delivered data or finished the transfer */
    check_done(u->m);
}

/* Write what waits in inbuf to the client (pipe mode). */
static void pipe_flush(mg_up_t *u)
{
    if (u->inbuf.len == 0 || u->owner == NULL) return;
    mg_resp_write(u->owner, u->inbuf.data, u->inbuf.len);
    mg_buf_reset(&u->inbuf);
}

/* Relay mode: the plain events at the front of inbuf go to the client in one
 * write; the first other one (or a partial one past MG_UP_RELAY_MAX) turns the
 * transfer back into a stream, and Lua is woken for the bytes from there.
 * -1 when the client cannot be written to. */
static int relay_scan(mg_up_t *u)
{
    size_t off = 0;
    int to_lua = 0, rc = 0;
    /* an event arriving in many pieces: look for its end only in what is new (and the 3 bytes
     * before, where a boundary may start), not from its start again each time */
    if (u->relay_open > 0) {
        size_t from = u->relay_open > 3 ? u->relay_open - 3 : 0;
        if (mg_sse_boundary(u->inbuf.data + from, u->inbuf.len - from) == 0) {
            u->relay_open = u->inbuf.len;
            if (u->inbuf.len > MG_UP_RELAY_MAX) to_lua = 1;
            goto out;
        }
    }
    while (off < u->inbuf.len) {
        long chars = 0;
        long n = mg_sse_plain(u->inbuf.data + off, u->inbuf.len - off, u->relay_fmt, &chars);
        if (n < 0 || (n == 0 && u->inbuf.len - off > MG_UP_RELAY_MAX)) {
            to_lua = 1;
            break;
        }
        if (n == 0) break;
        off += (size_t)n;
        u->relay_chars += chars;
    }
    u->relay_open = !to_lua && off < u->inbuf.len ? u->inbuf.len - off : 0;
    if (off > 0) {
        if (u->owner == NULL || u->owner->conn == NULL) return -1;
        rc = mg_resp_write(u->owner, u->inbuf.data, off);
        mg_buf_consume(&u->inbuf, off);
    }
out:
    if (to_lua) u->relay_open = 0;
    if (to_lua || (u->done && u->inbuf.len > 0)) u->mode = MG_UP_STREAM;
    if (u->mode == MG_UP_STREAM || u->done) mg_up__wake(u);
    return rc < 0 ? -1 : 0;
}

/* Called from the drain for a queued wake: tell Lua what is next, in order.
 * Lua may free the transfer while it handles an event; the extra reference
 * taken around each call keeps the memory valid until we have looked. */
void mg_up_deliver(mg_worker_t *w, mg_up_t *u)
{
    u->wake_queued = 0;
    while (!u->freed) {
        mg_event_t ev = { 0, 0, u->waiter, u };
        if (!u->headers_told && (u->headers_done || u->done)) {
            u->headers_told = 1;
            if (u->headers_done) {
                ev.kind = MG_EV_UP_HEADERS;
                ev.arg = u->status;
            } else {
                u->done_told = 1;
                ev.kind = MG_EV_UP_DONE;
                ev.arg = u->result == MG_OK ? MG_EPROTO : u->result;
            }
        } else if (u->headers_told && u->mode == MG_UP_STREAM && u->inbuf.len > 0) {
            ev.kind = MG_EV_UP_DATA;
        } else if (u->headers_told && u->mode != MG_UP_UNDECIDED && u->done && !u->done_told) {
            u->done_told = 1;
            ev.kind = MG_EV_UP_DONE;
            ev.arg = u->result;
        } else {
            return;
        }
        u->refs++;
        if (ev.kind == MG_EV_UP_DATA) u->handed = u->inbuf.len;
        mg_lua_event(w, &ev);
        size_t handed = u->handed;   /* 0 when Lua turned the stream into a pipe or a relay */
        u->handed = 0;
        if (u->freed) {
            up_unref(u);
            return;
        }
        u->refs--;
        if (ev.kind == MG_EV_UP_DATA) {
            /* Lua took the bytes: make room and let the provider send more */
            mg_buf_consume(&u->inbuf, handed);
            if (u->owner == NULL || u->owner->conn == NULL ||
                mg_conn_write_queue_small(u->owner->conn))
                unpause(u);
        }
    }
}

const char *mg_up_data(mg_up_t *u, size_t *len)
{
    *len = u->inbuf.len;
    return u->inbuf.data ? u->inbuf.data : "";
}

/* ======================== the core: what a transport reports ======================== */

void mg_up__head_begin(mg_up_t *u, int status)
{
    if (u->ttfb == 0) u->ttfb = mg_monotonic() - u->t_start;
    u->status = status;
    u->nhdrs = 0;
    mg_buf_reset(&u->hbuf);
}

void mg_up__hdr_new(mg_up_t *u)
{
    if (u->nhdrs == u->hcap) {
        u->hcap = u->hcap ? u->hcap * 2 : 16;
        u->hdrs = mg_xrealloc(u->hdrs, (size_t)u->hcap * sizeof *u->hdrs);
    }
    mg_hdr_t *h = &u->hdrs[u->nhdrs++];
    h->name_off = h->val_off = (uint32_t)u->hbuf.len;
    h->name_len = h->val_len = 0;
}

void mg_up__hdr_name(mg_up_t *u, const char *p, size_t n)
{
    mg_hdr_t *h = &u->hdrs[u->nhdrs - 1];
    size_t at = u->hbuf.len;
    mg_buf_append(&u->hbuf, p, n);
    for (size_t i = at; i < at + n; i++) {
        char ch = u->hbuf.data[i];
        if (ch >= 'A' && ch <= 'Z') u->hbuf.data[i] = (char)(ch + 32);
    }
    h->name_len += (uint32_t)n;
    h->val_off = (uint32_t)u->hbuf.len;
}

void mg_up__hdr_value(mg_up_t *u, const char *p, size_t n)
{
    mg_buf_append(&u->hbuf, p, n);
    u->hdrs[u->nhdrs - 1].val_len += (uint32_t)n;
}

void mg_up__hdr_trim(mg_up_t *u)
{
    mg_hdr_t *h = &u->hdrs[u->nhdrs - 1];
    while (h->val_len > 0) {
        char ch = u->hbuf.data[h->val_off + h->val_len - 1];
        if (ch != ' ' && ch != '\t' && ch != '\r' && ch != '\n') break;
        h->val_len--;
    }
}

void mg_up__head_end(mg_up_t *u)
{
    if (u->status < 200) return;       /* an interim answer: the final one follows */
    u->headers_done = 1;
    mg_up__wake(u);
}

int mg_up__body_blocked(mg_up_t *u, size_t len)
{
    int client_full = u->owner != NULL && u->owner->conn != NULL && !mg_conn_write_queue_small(u->owner->conn);
    if (u->mode == MG_UP_PIPE) return client_full;
    if (u->mode == MG_UP_RELAY && client_full) return 1;
    return u->inbuf.len > 0 && u->inbuf.len + len > MG_UP_INBUF_CAP;
}

int mg_up__body_take(mg_up_t *u, const char *data, size_t len)
{
    if (u->aborted) return -1;
    if (u->watched) {
        u->got_body = 1;
        u->last_data = mg_monotonic();
    }
    if (u->mode == MG_UP_PIPE) {
        mg_req_t *r = u->owner;
        if (r == NULL || r->conn == NULL) return -1;
        unsigned in_cb = u->in_cb;
        u->in_cb = 1;
        int rc = mg_resp_write(r, data, len);
        u->in_cb = in_cb;
        return rc < 0 || u->aborted ? -1 : 0;
    }
    mg_buf_append(&u->inbuf, data, len);
    if (u->mode == MG_UP_STREAM) mg_up__wake(u);
    if (u->mode == MG_UP_RELAY) {
        unsigned in_cb = u->in_cb;
        u->in_cb = 1;
        int rc = relay_scan(u);
        u->in_cb = in_cb;
        return rc < 0 || u->aborted ? -1 : 0;
    }
    return 0;
}

/* ======================== curl callbacks ======================== */

static size_t on_header(char *buf, size_t size, size_t n, void *ud)
{
    mg_up_t *u = ud;
    size_t len = size * n;
    if (len >= 5 && memcmp(buf, "HTTP/", 5) == 0) {
        /* a status line starts a new header section (1xx, redirects, the final one) */
        const char *sp = memchr(buf, ' ', len);
        mg_up__head_begin(u, sp ? atoi(sp + 1) : 0);
        u->in_headers = 1;
        return len;
    }
    if (u->ttfb == 0) u->ttfb = mg_monotonic() - u->t_start;
    if (!u->in_headers) return len;      /* trailers */
    if (len <= 2 && (buf[0] == '\r' || buf[0] == '\n')) {
        u->in_headers = 0;
        mg_up__head_end(u);
        return len;
    }
    const char *colon = memchr(buf, ':', len);
    if (colon == NULL) return len;
    const char *v = colon + 1;
    const char *end = buf + len;
    while (v < end && (*v == ' ' || *v == '\t')) v++;
    mg_up__hdr_new(u);
    mg_up__hdr_name(u, buf, (size_t)(colon - buf));
    mg_up__hdr_value(u, v, (size_t)(end - v));
    mg_up__hdr_trim(u);
    return len;
}

static size_t on_write(char *data, size_t size, size_t n, void *ud)
{
    mg_up_t *u = ud;
    size_t len = size * n;
    if (u->aborted) return 0;
    if (mg_up__body_blocked(u, len)) {
        u->paused = 1;
        return CURL_WRITEFUNC_PAUSE;
    }
    return mg_up__body_take(u, data, len) < 0 ? 0 : len;
}

/* ======================== the multi handle on libuv ======================== */

static void on_poll(uv_poll_t *p, int status, int events)
{
    sock_t *s = p->data;
    if (s->idle) {
        /* a parked connection became readable: the provider closed it (or
         * broke protocol). Stop watching; curl finds it dead on reuse. */
        uv_poll_stop(&s->poll);
        s->events = 0;
        return;
    }
    int flags = 0;
    if (status < 0) flags = CURL_CSELECT_ERR;
    if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
    int running;
    curl_multi_socket_action(s->m->multi, s->fd, flags, &running);
    check_done(s->m);
}

static sock_t *sock_get(mg_multi_t *m, curl_socket_t fd)
{
    return fd >= 0 && fd < m->nsocks ? m->socks[fd] : NULL;
}

static void sock_put(mg_multi_t *m, curl_socket_t fd, sock_t *s)
{
    if (fd >= m->nsocks) {
        int n = m->nsocks ? m->nsocks : 64;
        while (n <= fd) n *= 2;
        m->socks = mg_xrealloc(m->socks, (size_t)n * sizeof *m->socks);
        memset(m->socks + m->nsocks, 0, (size_t)(n - m->nsocks) * sizeof *m->socks);
        m->nsocks = n;
    }
    m->socks[fd] = s;
}

static void sock_drop(mg_multi_t *m, sock_t *s)
{
    sock_put(m, s->fd, NULL);
    if (s->polling) uv_close((uv_handle_t *)&s->poll, (uv_close_cb)free);
    else free(s);
}

static curl_socket_t on_open_socket(void *ud, curlsocktype purpose, struct curl_sockaddr *a)
{
    mg_multi_t *m = ud;
    curl_socket_t fd = socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
    if (fd == CURL_SOCKET_BAD) return fd;
    sock_t *old = sock_get(m, fd);
    if (old != NULL) sock_drop(m, old);    /* an fd number closed behind our back */
    sock_t *s = mg_xcalloc(1, sizeof *s);
    s->fd = fd;
    s->m = m;
    s->owned = 1;
    sock_put(m, fd, s);
    return fd;
}

static int on_close_socket(void *ud, curl_socket_t fd)
{
    mg_multi_t *m = ud;
    sock_t *s = sock_get(m, fd);
    /* uv_close takes the fd out of epoll, so it must come before close() */
    if (s != NULL) sock_drop(m, s);
    return close(fd);
}

static void on_timer(uv_timer_t *t)
{
    mg_multi_t *m = t->data;
    int running;
    curl_multi_socket_action(m->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(m);
}

static int on_curl_timer(CURLM *multi, long timeout_ms, void *ud)
{
    mg_multi_t *m = ud;
    if (timeout_ms < 0) uv_timer_stop(&m->timer);
    else uv_timer_start(&m->timer, on_timer, (uint64_t)timeout_ms, 0);
    return 0;
}

static int on_curl_socket(CURL *e, curl_socket_t fd, int what, void *ud, void *sockp)
{
    mg_multi_t *m = ud;
    sock_t *s = sock_get(m, fd);
    if (what == CURL_POLL_REMOVE) {
        if (s == NULL) return 0;
        if (s->owned) s->idle = 1;          /* keep watching: see sock_t */
        else sock_drop(m, s);               /* e.g. the resolver's: curl closes it itself */
        return 0;
    }
    if (s == NULL) {
        s = mg_xcalloc(1, sizeof *s);
        s->fd = fd;
        s->m = m;
        sock_put(m, fd, s);
    }
    if (!s->polling) {
        if (uv_poll_init_socket(&m->w->loop, &s->poll, fd) != 0) return -1;
        s->poll.data = s;
        s->polling = 1;
    }
    s->idle = 0;
    int events = 0;
    if (what & CURL_POLL_IN) events |= UV_READABLE;
    if (what & CURL_POLL_OUT) events |= UV_WRITABLE;
    if (events != s->events) {
        uv_poll_start(&s->poll, events, on_poll);
        s->events = events;
    }
    return 0;
}

static void check_done(mg_multi_t *m)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(m->multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE) continue;
        mg_up_t *u = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&u);
        CURLcode rc = msg->data.result;
        curl_multi_remove_handle(m->multi, msg->easy_handle);
        if (u == NULL) continue;
        if (rc != CURLE_OK && u->errbuf[0] == '\0')
            snprintf(u->errbuf, sizeof u->errbuf, "%s", curl_easy_strerror(rc));
        mg_up__finish(u, map_result(u, rc));
    }
}

/* ======================== deadlines ======================== */

#define WATCH_TICK_MS 20

static void watch_unlink(mg_up_t *u)
{
    if (!u->watched) return;
    mg_multi_t *m = u->m;
    if (u->wprev) u->wprev->wnext = u->wnext;
    else m->watched = u->wnext;
    if (u->wnext) u->wnext->wprev = u->wprev;
    u->wnext = u->wprev = NULL;
    u->watched = 0;
}

/* Ends a watched transfer whose provider missed its deadline, as curl would
 * have with CURLE_OPERATION_TIMEDOUT. */
static void watch_expire(mg_up_t *u, const char *what, double limit)
{
    watch_unlink(u);
    stop_transfer(u);
    mg_up__errorf(u, "%s after %.3f s", what, limit);
    mg_up__finish(u, MG_ETIMEDOUT);
}

static void on_watchdog(uv_timer_t *t)
{
    mg_multi_t *m = t->data;
    double now = mg_monotonic();
    mg_up_t *next;
    for (mg_up_t *u = m->watched; u != NULL; u = next) {
        next = u->wnext;
        if (u->done || u->freed) {
            watch_unlink(u);
        } else if (!u->got_body) {
            if (u->first_deadline > 0 && now >= u->first_deadline)
                watch_expire(u, "no first byte", u->first_deadline - u->t_start);
        } else if (u->idle_limit > 0 && !u->paused && now - u->last_data >= u->idle_limit) {
            watch_expire(u, "provider silent", u->idle_limit);
        }
    }
    if (m->watched == NULL) uv_timer_stop(t);
}

/* A deadline for the first body byte (seconds from the start) and for the
 * silence between body bytes after it; 0 turns either off. */
int mg_up_watch(mg_up_t *u, double first_byte, double idle)
{
    mg_multi_t *m = u->m;
    if (u->freed || u->done) return -1;
    u->first_deadline = first_byte > 0 ? u->t_start + first_byte : 0;
    u->idle_limit = idle > 0 ? idle : 0;
    u->last_data = mg_monotonic();
    if (u->first_deadline == 0 && u->idle_limit == 0) {
        watch_unlink(u);
        return 0;
    }
    if (!u->watched) {
        u->watched = 1;
        u->wprev = NULL;
        u->wnext = m->watched;
        if (m->watched) m->watched->wprev = u;
        m->watched = u;
    }
    if (!uv_is_active((uv_handle_t *)m->watchdog))
        uv_timer_start(m->watchdog, on_watchdog, WATCH_TICK_MS, WATCH_TICK_MS);
    return 0;
}

/* MOONGATE_UPSTREAM=curl: every transfer on libcurl (the kill switch of
 * the native client), read once for the process. */
static int curl_only;
static pthread_once_t mode_once = PTHREAD_ONCE_INIT;

static void read_mode(void)
{
    const char *v = getenv("MOONGATE_UPSTREAM");
    curl_only = v != NULL && strcmp(v, "curl") == 0;
    if (v != NULL && !curl_only && strcmp(v, "native") != 0)
        mg_log(MG_LOG_WARN, "MOONGATE_UPSTREAM=%s: not curl or native, using native for http://", v);
}

int mg_multi_init(mg_worker_t *w)
{
    mg_multi_t *m = mg_xcalloc(1, sizeof *m);
    m->w = w;
    pthread_once(&mode_once, read_mode);
    m->curl_only = curl_only;
    m->multi = curl_multi_init();
    if (m->multi == NULL) {
        free(m);
        return -1;
    }
    curl_multi_setopt(m->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket);
    curl_multi_setopt(m->multi, CURLMOPT_SOCKETDATA, m);
    curl_multi_setopt(m->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
    curl_multi_setopt(m->multi, CURLMOPT_TIMERDATA, m);
    /* keep enough idle connections to providers for reuse under load */
    curl_multi_setopt(m->multi, CURLMOPT_MAXCONNECTS, 1024L);
    uv_timer_init(&w->loop, &m->timer);
    m->timer.data = m;
    m->watchdog = mg_xcalloc(1, sizeof *m->watchdog);
    uv_timer_init(&w->loop, m->watchdog);
    m->watchdog->data = m;
    w->multi = m;
    return 0;
}

void mg_multi_close(mg_worker_t *w)
{
    mg_multi_t *m = w->multi;
    if (m == NULL) return;
    mg_h1_close_all(m);
    for (int i = 0; i < m->npool; i++) curl_easy_cleanup(m->pool[i].easy);
    curl_multi_cleanup(m->multi);      /* closes cached connections: on_close_socket */
    for (int i = 0; i < m->nsocks; i++)
        if (m->socks[i] != NULL) sock_drop(m, m->socks[i]);
    free(m->socks);
    uv_close((uv_handle_t *)m->watchdog, (uv_close_cb)free);
    uv_close((uv_handle_t *)&m->timer, (uv_close_cb)free);
    w->multi = NULL;
}

/* ======================== transfers ======================== */

/* The options every transfer shares, set once per handle. */
static void easy_defaults(CURL *e, mg_multi_t *m)
{
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    /* decoded bodies: plugins read usage from them; the client gets identity */
    curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, on_open_socket);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, m);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, on_close_socket);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, m);
}

static void owner_link(mg_up_t *u, mg_req_t *r)
{
    u->owner = r;
    mg_req_retain(r);
    u->onext = r->ups;
    if (r->ups) r->ups->oprev = u;
    r->ups = u;
}

static void owner_unlink(mg_up_t *u)
{
    mg_req_t *r = u->owner;
    if (r == NULL) return;
    if (u->oprev) u->oprev->onext = u->onext;
    else r->ups = u->onext;
    if (u->onext) u->onext->oprev = u->oprev;
    u->owner = NULL;
    u->onext = u->oprev = NULL;
    mg_req_unref(r);
}

static void stop_transfer(mg_up_t *u)
{
    if (!u->running) return;
    if (u->easy != NULL) curl_multi_remove_handle(u->m->multi, u->easy);
    else mg_h1_stop(u);
    u->running = 0;
    u->m->active--;
}

static void up_unref(mg_up_t *u)
{
    if (--u->refs > 0) return;
    mg_multi_t *m = u->m;
    if (u->easy) {
        if (m->npool < EASY_POOL) {
            /* drop pointers into u before the handle outlives it */
            curl_easy_setopt(u->easy, CURLOPT_HTTPHEADER, (struct curl_slist *)NULL);
            curl_easy_setopt(u->easy, CURLOPT_POSTFIELDS, (char *)NULL);
            curl_easy_setopt(u->easy, CURLOPT_ERRORBUFFER, (char *)NULL);
            curl_easy_setopt(u->easy, CURLOPT_PRIVATE, (void *)NULL);
            m->pool[m->npool].easy = u->easy;
            m->pool[m->npool].custom_tls = u->custom_tls;
            m->npool++;
        } else {
            curl_easy_cleanup(u->easy);
        }
    }
    curl_slist_free_all(u->hout);
    mg_buf_free(&u->bout);
    mg_buf_free(&u->hbuf);
    mg_buf_free(&u->inbuf);
    free(u->hdrs);
    free(u);
}

mg_up_t *mg_up_start(mg_req_t *owner, int64_t waiter, const char *method, const char *url,
                     const char *headers, size_t hlen, const char *body, size_t blen,
                     double connect_timeout, double timeout, double idle_timeout,
                     const char *ca_file, int insecure, char *err, size_t errlen)
{
    mg_worker_t *w = mg_current;
    mg_multi_t *m = w->multi;
    mg_up_t *u = mg_xcalloc(1, sizeof *u);
    u->m = m;
    u->waiter = waiter;
    u->refs = 1;
    u->t_start = mg_monotonic();
    mg_h1_url_t parsed;
    if (!m->curl_only && mg_h1_accepts(method, url, &parsed)) {
        /* running first: a failure the transport finds at once still ends it
         * through mg_up__finish, heard by Lua from the drain like any other */
        u->running = 1;
        m->active++;
        mg_h1_start(u, method, &parsed, headers, hlen, body, blen, connect_timeout, timeout,
                    idle_timeout);
        if (owner != NULL) owner_link(u, owner);
        return u;
    }
    /* A pooled handle keeps the options every transfer shares; only what
     * varies is set again (curl_easy_reset and a full set-up cost more than
     * the rest of curl's per-transfer work). One that had TLS options
     * changed is reset, so they cannot leak into the next transfer. */
    int custom_tls = (ca_file != NULL && ca_file[0] != '\0') || insecure;
    CURL *e = NULL;
    if (m->npool > 0) {
        m->npool--;
        e = m->pool[m->npool].easy;
        if (m->pool[m->npool].custom_tls) {
            curl_easy_reset(e);
            easy_defaults(e, m);
        }
    } else {
        e = curl_easy_init();
        if (e != NULL) easy_defaults(e, m);
    }
    if (e == NULL) {
        snprintf(err, errlen, "cannot create a transfer");
        free(u);
        return NULL;
    }
    u->easy = e;
    u->custom_tls = custom_tls;
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, u);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, u->errbuf);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, u);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, u);
    /* 0 restores each default: curl's 300 s connect timeout, no total, no idle limit */
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)(connect_timeout * 1000));
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(timeout * 1000));
    /* under 1 byte/s for idle_timeout seconds: a stalled provider */
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, idle_timeout >= 1 ? 1L : 0L);
    curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, idle_timeout >= 1 ? (long)idle_timeout : 0L);
    if (ca_file != NULL && ca_file[0] != '\0') curl_easy_setopt(e, CURLOPT_CAINFO, ca_file);
    if (insecure) {
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
    }

    /* headers: one "name: value\r\n" per line */
    const char *p = headers, *end = headers + hlen;
    int has_ctype = 0;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        size_t l = eol ? (size_t)(eol - p) : (size_t)(end - p);
        size_t tl = l;
        if (tl > 0 && p[tl - 1] == '\r') tl--;
        if (tl >= 13 && strncasecmp(p, "content-type:", 13) == 0) has_ctype = 1;
        if (tl > 0) {
            /* curl_slist_append copies: a NUL-terminated line on the stack is enough */
            char stack[512];
            char *line = tl < sizeof stack ? stack : mg_xmalloc(tl + 1);
            memcpy(line, p, tl);
            line[tl] = '\0';
            struct curl_slist *nl = curl_slist_append(u->hout, line);
            if (line != stack) free(line);
            if (nl != NULL) u->hout = nl;
        }
        p += l + 1;
    }
    /* curl adds these unless told not to: we send exactly what Lua asked for (a body without a
     * Content-Type goes without one: pass-through means unchanged) */
    u->hout = curl_slist_append(u->hout, "Expect:");
    if (!has_ctype) u->hout = curl_slist_append(u->hout, "Content-Type:");
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, u->hout);

    /* the method: every option that decides it is set, since the handle
     * may carry the previous transfer's */
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, (char *)NULL);
    curl_easy_setopt(e, CURLOPT_NOBODY, 0L);
    if (strcmp(method, "GET") == 0) {
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    } else if (strcmp(method, "HEAD") == 0) {
        curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    } else {
        mg_buf_init(&u->bout);
        mg_buf_append(&u->bout, body, blen);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)blen);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, u->bout.data ? u->bout.data : "");
        if (strcmp(method, "POST") != 0) curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    }
    if (owner != NULL) owner_link(u, owner);

    CURLMcode mc = curl_multi_add_handle(m->multi, e);
    if (mc != CURLM_OK) {
        snprintf(err, errlen, "%s", curl_multi_strerror(mc));
        owner_unlink(u);
        u->refs = 1;
        up_unref(u);
        return NULL;
    }
    u->running = 1;
    m->active++;
    return u;
}

int mg_up_status(mg_up_t *u)
{
    return u->status;
}

int mg_up_header_count(mg_up_t *u)
{
    return u->nhdrs;
}

int mg_up_header(mg_up_t *u, int i, const char **name, size_t *nlen, const char **val,
                 size_t *vlen)
{
    if (i < 0 || i >= u->nhdrs) return -1;
    mg_hdr_t *h = &u->hdrs[i];
    *name = u->hbuf.data + h->name_off;
    *nlen = h->name_len;
    *val = h->val_len ? u->hbuf.data + h->val_off : "";
    *vlen = h->val_len;
    return 0;
}

int mg_up_pipe(mg_up_t *u)
{
    if (u->owner == NULL || u->mode == MG_UP_PIPE) return -1;
    if (u->handed > 0) {
        /* Lua already has these bytes (it switches while handling them) */
        mg_buf_consume(&u->inbuf, u->handed);
        u->handed = 0;
    }
    u->mode = MG_UP_PIPE;
    pipe_flush(u);
    if (u->done) mg_up__wake(u);
    else if (u->owner->conn == NULL || mg_conn_write_queue_small(u->owner->conn)) unpause(u);
    return 0;
}

int mg_up_stream(mg_up_t *u)
{
    if (u->mode != MG_UP_UNDECIDED) return -1;
    u->mode = MG_UP_STREAM;
    if (u->inbuf.len > 0 || u->done) mg_up__wake(u);
    return 0;
}

int mg_up_relay(mg_up_t *u, int fmt, const char *pending, size_t plen)
{
    /* once the transfer is over, what is left is Lua's (its end follows the bytes it holds) */
    if (u->owner == NULL || u->mode != MG_UP_STREAM || u->done) return -1;
    if (u->handed > 0) {
        /* Lua already has these bytes (it switches while handling them) */
        mg_buf_consume(&u->inbuf, u->handed);
        u->handed = 0;
    }
    if (plen > 0) {
        /* the start of an event Lua's reader held: it goes back in front */
        mg_buf_t b;
        mg_buf_init(&b);
        mg_buf_append(&b, pending, plen);
        mg_buf_append(&b, u->inbuf.data, u->inbuf.len);
        mg_buf_free(&u->inbuf);
        u->inbuf = b;
    }
    u->mode = MG_UP_RELAY;
    u->relay_fmt = fmt;
    u->relay_open = 0;
    if (u->inbuf.len > 0) {
        if (relay_scan(u) < 0) mg_up_abort_owned(u->owner);
        if (u->mode != MG_UP_RELAY) return 0;
    }
    if (u->owner->conn == NULL || mg_conn_write_queue_small(u->owner->conn)) unpause(u);
    return 0;
}

long mg_up_relayed(mg_up_t *u)
{
    long n = u->relay_chars;
    u->relay_chars = 0;
    return n;
}

const char *mg_up_errmsg(mg_up_t *u)
{
    return u->errbuf;
}

double mg_up_ttfb(mg_up_t *u)
{
    return u->ttfb;
}

void mg_up_free(mg_up_t *u)
{
    if (u->freed) return;
    u->freed = 1;
    watch_unlink(u);
    /* never inside a curl callback: Lua only runs from the event drain */
    stop_transfer(u);
    owner_unlink(u);
    if (u->wake_queued) mg_worker_unqueue_ptr(u->m->w, u);
    u->wake_queued = 0;
    up_unref(u);
}

void mg_up_abort_owned(mg_req_t *r)
{
    for (mg_up_t *u = r->ups; u != NULL; u = u->onext) {
        if (u->done) continue;
        u->aborted = 1;
        /* inside a transport's callback: it sees aborted and ends the transfer */
        if (u->in_cb) continue;
        stop_transfer(u);
        mg_up__finish(u, MG_ECLIENT);
    }
}

void mg_up_client_drained(mg_req_t *r)
{
    for (mg_up_t *u = r->ups; u != NULL; u = u->onext) {
        if (u->paused && (u->mode == MG_UP_PIPE || u->mode == MG_UP_RELAY || u->inbuf.len == 0))
            unpause(u);
    }
}
