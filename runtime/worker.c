/* worker.c — one worker: its loop, listeners, event queue, signals, shutdown.
 *
 * The event queue is how everything reaches Lua. Producers (socket reads,
 * curl callbacks, timers, and C functions Lua itself called) append to it; a
 * uv_check handle drains it once per loop iteration, after I/O (what was queued
 * before the pass began: the rest waits for the next one), and a uv_idle handle
 * is kept running while it is non-empty so that the loop does not block in poll
 * with work waiting. */
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "ffi.h"
#include "log.h"
#include "record.h"
#include "tls.h"
#include "upstream.h"
#include "worker.h"

__thread mg_worker_t *mg_current;

/* ======================== event queue ======================== */

static void on_idle(uv_idle_t *h)
{
    (void)h;   /* exists only to make uv_run poll with a zero timeout */
}

void mg_worker_queue(mg_worker_t *w, int kind, int64_t waiter, void *ptr, int arg)
{
    if (w->ev_len == w->ev_cap) {
        size_t cap = w->ev_cap ? w->ev_cap * 2 : 64;
        mg_event_t *ev = mg_xmalloc(cap * sizeof *ev);
        for (size_t i = 0; i < w->ev_len; i++) ev[i] = w->ev[(w->ev_head + i) % w->ev_cap];
        free(w->ev);
        w->ev = ev;
        w->ev_cap = cap;
        w->ev_head = 0;
    }
    mg_event_t *e = &w->ev[(w->ev_head + w->ev_len) % w->ev_cap];
    e->kind = kind;
    e->waiter = waiter;
    e->ptr = ptr;
    e->arg = arg;
    w->ev_len++;
    if (!uv_is_active((uv_handle_t *)&w->idle)) uv_idle_start(&w->idle, on_idle);
}

void mg_worker_unqueue_ptr(mg_worker_t *w, void *ptr)
{
    for (size_t i = 0; i < w->ev_len; i++) {
        mg_event_t *e = &w->ev[(w->ev_head + i) % w->ev_cap];
        if (e->ptr == ptr) e->kind = 0;
    }
}

static void drain(uv_check_t *h)
{
    mg_worker_t *w = h->data;
    if (w->draining_events) return;
    w->draining_events = 1;
    /* only what was queued before this pass: what its handlers queue waits for the next
     * iteration, after the loop has polled (with a zero timeout, the idle handle is on), so
     * that a coroutine yielding with gw.sleep(0) lets the worker's sockets in */
    size_t n = w->ev_len;
    while (n-- > 0 && w->ev_len > 0) {
        mg_event_t ev = w->ev[w->ev_head];
        w->ev_head = (w->ev_head + 1) % w->ev_cap;
        w->ev_len--;
        switch (ev.kind) {
        case 0:
            break;                          /* cancelled */
        case MG_EV_CONN_RESUME:
            mg_conn_resume(ev.ptr);
            break;
        case MG_EV_UP_WAKE:
            mg_up_deliver(w, ev.ptr);
            break;
        default:
            mg_lua_event(w, &ev);
            break;
        }
    }
    w->draining_events = 0;
    if (w->ev_len == 0) uv_idle_stop(&w->idle);
    mg_worker_maybe_exit(w);
}

/* ======================== timers for Lua ======================== */

typedef struct {
    uv_timer_t   t;
    mg_worker_t *w;
    int64_t      waiter;
} sleep_t;

static char sleep_mark;   /* data of the timers that are sleep_t's */

static void on_sleep(uv_timer_t *t)
{
    sleep_t *s = (sleep_t *)t;
    mg_worker_queue(s->w, MG_EV_TIMER, s->waiter, NULL, 0);
    uv_close((uv_handle_t *)t, (uv_close_cb)free);
}

int mg_sleep(int64_t waiter, double seconds)
{
    mg_worker_t *w = mg_current;
    if (seconds <= 0) {
        mg_worker_queue(w, MG_EV_TIMER, waiter, NULL, 0);
        return 0;
    }
    sleep_t *s = mg_xmalloc(sizeof *s);
    s->w = w;
    s->waiter = waiter;
    uv_timer_init(&w->loop, &s->t);
    s->t.data = &sleep_mark;           /* mg_worker_close frees a sleep still pending */
    uv_timer_start(&s->t, on_sleep, (uint64_t)(seconds * 1000.0 + 0.5), 0);
    return 0;
}

/* ======================== small FFI services ======================== */

double mg_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

double mg_monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void mg_log_write(int level, const char *msg, size_t len)
{
    mg_log_line(level, msg, len);
}

/* Request ids: 128 random bits from a per-thread xorshift seeded by the
 * kernel. Unpredictability is not needed, uniqueness across restarts is. */
void mg_request_id(char out[33])
{
    static __thread uint64_t s[2];
    if (s[0] == 0 && s[1] == 0) {
        if (getrandom(s, sizeof s, 0) != sizeof s) {
            s[0] = (uint64_t)time(NULL) ^ (uint64_t)getpid();
            s[1] = (uint64_t)(uintptr_t)&s ^ 0x9e3779b97f4a7c15ULL;
        }
    }
    static const char hex[] = "0123456789abcdef";
    for (int k = 0; k < 2; k++) {
        uint64_t x = s[0], y = s[1];
        s[0] = y;
        x ^= x << 23;
        s[1] = x ^ y ^ (x >> 17) ^ (y >> 26);
        uint64_t v = s[1] + y;
        for (int i = 0; i < 16; i++) out[k * 16 + i] = hex[(v >> (i * 4)) & 15];
    }
    out[32] = '\0';
}

/* ======================== listeners ======================== */

static int resolve(const char *host, int port, struct sockaddr_storage *ss, char *err, size_t errlen)
{
    memset(ss, 0, sizeof *ss);
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)ss) != 0 &&
        uv_ip6_addr(host, port, (struct sockaddr_in6 *)ss) != 0) {
        if (strcmp(host, "localhost") != 0) {
            snprintf(err, errlen, "%s:%d: not an IP address", host, port);
            return -1;
        }
        uv_ip4_addr("127.0.0.1", port, (struct sockaddr_in *)ss);
    }
    return ss->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
}

static int sock_port(int fd)
{
    struct sockaddr_storage bound;
    socklen_t bl = sizeof bound;
    if (getsockname(fd, (struct sockaddr *)&bound, &bl) != 0) return -1;
    return ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                             : ((struct sockaddr_in *)&bound)->sin_port);
}

int mg_listen_socket(const char *host, int port, int probe, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    int sl = resolve(host, port, &ss, err, errlen);
    if (sl < 0) return -1;
    int on = 1;
    if (probe && port != 0) {
        /* SO_REUSEPORT lets a second process share the port silently. Probe
         * first without it: a port anyone else holds is refused, as a user
         * expects; only our own sockets then share it. */
        int p = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (p >= 0) {
            setsockopt(p, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
            if (bind(p, (struct sockaddr *)&ss, (socklen_t)sl) != 0) {
                snprintf(err, errlen, "%s:%d: %s", host, port, strerror(errno));
                close(p);
                return -1;
            }
            close(p);
        }
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    /* libuv 1.44 has no flag for it; every worker binds the same port */
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof on);
    if (bind(fd, (struct sockaddr *)&ss, (socklen_t)sl) != 0 || listen(fd, 511) != 0) {
        snprintf(err, errlen, "%s:%d: %s", host, port, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

/* Serves the listening socket fd on w's loop (fd is closed on error). tls,
 * when not NULL, makes it a TLS listener: the slot is the process's and
 * outlives the listener. Returns the bound port, or -1 with err filled. */
int mg_worker_adopt(mg_worker_t *w, int fd, int app, const char *host, mg_tls_slot_t *tls,
                    char *err, size_t errlen)
{
    if (w->nlisteners == (int)(sizeof w->listeners / sizeof w->listeners[0])) {
        snprintf(err, errlen, "too many listeners");
        close(fd);
        return -1;
    }
    int port = sock_port(fd);
    mg_listener_t *l = mg_xcalloc(1, sizeof *l);
    l->w = w;
    l->app = app;
    l->port = port;
    l->tls = tls;
    snprintf(l->address, sizeof l->address, "%s:%d", host, port);
    uv_tcp_init(&w->loop, &l->tcp);
    l->tcp.data = l;
    if (uv_tcp_open(&l->tcp, fd) != 0) {
        snprintf(err, errlen, "%s: cannot use socket", l->address);
        close(fd);
        uv_close((uv_handle_t *)&l->tcp, (uv_close_cb)free);
        return -1;
    }
    int rc = uv_listen((uv_stream_t *)&l->tcp, 511, mg_http_on_accept);
    if (rc != 0) {
        snprintf(err, errlen, "%s: %s", l->address, uv_strerror(rc));
        uv_close((uv_handle_t *)&l->tcp, (uv_close_cb)free);
        return -1;
    }
    w->listeners[w->nlisteners++] = l;
    return port;
}

int mg_worker_listen(mg_worker_t *w, const char *host, int port, int app, char *err, size_t errlen)
{
    int fd = mg_listen_socket(host, port, 1, err, errlen);
    if (fd < 0) return -1;
    return mg_worker_adopt(w, fd, app, host, NULL, err, errlen);
}

void mg_worker_stop_accepting(mg_worker_t *w)
{
    for (int i = 0; i < w->nlisteners; i++) uv_close((uv_handle_t *)&w->listeners[i]->tcp, (uv_close_cb)free);
    w->nlisteners = 0;
}

/* ======================== posts from other threads ======================== */

int mg_worker_post(mg_worker_t *w, int kind, int64_t waiter, void *ptr, int arg)
{
    pthread_mutex_lock(&w->inbox_mu);
    if (!w->inbox_open) {
        pthread_mutex_unlock(&w->inbox_mu);
        return -1;
    }
    if (w->inbox_len == w->inbox_cap) {
        w->inbox_cap = w->inbox_cap ? w->inbox_cap * 2 : 16;
        w->inbox = mg_xrealloc(w->inbox, w->inbox_cap * sizeof *w->inbox);
    }
    w->inbox[w->inbox_len++] = (mg_event_t){ .kind = kind, .arg = arg, .waiter = waiter, .ptr = ptr };
    uv_async_send(&w->async);   /* under the lock: the handle cannot be closing */
    pthread_mutex_unlock(&w->inbox_mu);
    return 0;
}

static void on_async(uv_async_t *a)
{
    mg_worker_t *w = a->data;
    mg_event_t local[16];
    for (;;) {
        size_t n = 0;
        pthread_mutex_lock(&w->inbox_mu);
        n = w->inbox_len < 16 ? w->inbox_len : 16;
        memcpy(local, w->inbox, n * sizeof *local);
        memmove(w->inbox, w->inbox + n, (w->inbox_len - n) * sizeof *local);
        w->inbox_len -= n;
        pthread_mutex_unlock(&w->inbox_mu);
        if (n == 0) break;
        for (size_t i = 0; i < n; i++) {
            if (local[i].kind >= MG_EV_STOP) mg_process_on_post(w, &local[i]);
            else mg_worker_queue(w, local[i].kind, local[i].waiter, local[i].ptr, local[i].arg);
        }
    }
}

/* ======================== shutdown ======================== */

#define SHUTDOWN_GRACE_MS 2000   /* after shutdown_timeout: for the cut requests' records */

static void on_shutdown_timeout(uv_timer_t *t)
{
    mg_worker_t *w = t->data;
    if (!w->shutdown_cut && (w->nconns > 0 || w->inflight > 0)) {
        mg_log(MG_LOG_WARN, "shutdown_timeout passed with %d connection(s) open; closing them",
               w->nconns);
        /* closing aborts the requests' transfers: their coroutines hear it, end and write
         * their ledger record and access-log line (499) in the loop's next turns, before
         * the worker stops (mg_worker_maybe_exit) or the grace runs out */
        w->shutdown_cut = 1;
        mg_conn_close_all(w);
        uv_timer_start(&w->shutdown_timer, on_shutdown_timeout, SHUTDOWN_GRACE_MS, 0);
        mg_worker_maybe_exit(w);
        return;
    }
    /* if Lua still holds requests (sleeping plugins), give up on them */
    uv_stop(&w->loop);
}

void mg_worker_stop(mg_worker_t *w, const char *why)
{
    if (w->stopping) return;
    w->stopping = 1;
    mg_log(MG_LOG_INFO, "%s: stopping, finishing %lld request(s) in flight", why, (long long)w->inflight);
    mg_worker_stop_accepting(w);
    mg_conn_close_idle(w);
    uv_timer_start(&w->shutdown_timer, on_shutdown_timeout, (uint64_t)(w->shutdown_timeout * 1000), 0);
    mg_worker_maybe_exit(w);
}

void mg_worker_maybe_exit(mg_worker_t *w)
{
    if (w->stopping && w->nconns == 0 && w->inflight == 0 && w->ev_len == 0 && w->holds == 0)
        uv_stop(&w->loop);
}

static void on_signal(uv_signal_t *s, int signum)
{
    mg_worker_t *w = s->data;
    if (mg_process_nworkers() > 0) {
        mg_process_on_signal(w, signum);   /* the gateway: every worker hears it */
        return;
    }
    switch (signum) {                      /* `moongate mock`: one thread */
    case SIGTERM: mg_worker_stop(w, "SIGTERM"); break;
    case SIGINT:  mg_worker_stop(w, "SIGINT"); break;
    case SIGUSR1: mg_access_log_reopen(); break;
    default: break;
    }
}

/* ======================== life cycle ======================== */

int mg_worker_init(mg_worker_t *w)
{
    memset(w, 0, sizeof *w);
    if (uv_loop_init(&w->loop) != 0) return -1;
    w->loop.data = w;
    uv_idle_init(&w->loop, &w->idle);
    uv_check_init(&w->loop, &w->check);
    w->check.data = w;
    uv_check_start(&w->check, drain);
    uv_unref((uv_handle_t *)&w->check);
    uv_timer_init(&w->loop, &w->shutdown_timer);
    w->shutdown_timer.data = w;
    uv_unref((uv_handle_t *)&w->shutdown_timer);
    w->shutdown_timeout = 30;
    w->limits.max_body = 10u << 20;
    w->limits.max_header = 64u << 10;
    w->limits.max_connections = 10000;
    w->limits.header_timeout_ms = 30000;
    w->limits.idle_timeout_ms = 60000;
    pthread_mutex_init(&w->inbox_mu, NULL);
    uv_async_init(&w->loop, &w->async, on_async);
    w->async.data = w;
    w->inbox_open = 1;
    mg_current = w;
    if (mg_multi_init(w) != 0) return -1;
    return 0;
}

void mg_worker_signals(mg_worker_t *w)
{
    static const int sigs[] = { SIGTERM, SIGINT, SIGHUP, SIGUSR1 };
    if (w->index != 0 || w->signals_on) return;   /* signals are the main thread's */
    w->signals_on = 1;
    for (int i = 0; i < 4; i++) {
        uv_signal_init(&w->loop, &w->signals[i]);
        w->signals[i].data = w;
        uv_signal_start(&w->signals[i], on_signal, sigs[i]);
        uv_unref((uv_handle_t *)&w->signals[i]);
    }
}

int mg_worker_run(mg_worker_t *w)
{
    mg_worker_signals(w);
    /* the signal handles are unref'd: the loop lives while listeners do */
    uv_run(&w->loop, UV_RUN_DEFAULT);
    return w->exit_code;
}

static void close_walk(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (uv_is_closing(h)) return;
    /* a gw.sleep still pending (a background job, e.g. the health prober) owns its memory */
    if (h->type == UV_TIMER && h->data == &sleep_mark) uv_close(h, (uv_close_cb)free);
    else uv_close(h, NULL);
}

/* Close what is left; called once uv_run has returned. Handles still open
 * belong to objects that are abandoned with the process. */
void mg_worker_close(mg_worker_t *w)
{
    pthread_mutex_lock(&w->inbox_mu);
    w->inbox_open = 0;                 /* no post can touch the async from here on */
    pthread_mutex_unlock(&w->inbox_mu);
    mg_lua_close(w);
    mg_record_thread_done();
    mg_multi_close(w);
    uv_walk(&w->loop, close_walk, NULL);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    uv_loop_close(&w->loop);
    free(w->ev);
    free(w->inbox);
    /* the mutex is not destroyed: another thread may still be about to find
     * inbox_open == 0 under it (it is a no-op on Linux, and the memory goes
     * with the worker after pthread_join) */
}
