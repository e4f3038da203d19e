/* worker.h — the types one worker's event loop is made of.
 *
 * A worker is one thread with its own libuv loop, LuaJIT state and curl multi
 * handle. Every object here belongs to exactly one worker and is only touched
 * from its thread; the one exception is the inbox, which other threads post to
 * (mg_worker_post) under its mutex, waking the loop with a uv_async.
 *
 * The process (process.c) has a main worker — the main thread: signals, the
 * admin listener, reload — and `workers` gateway workers, each on a thread of
 * its own, accepting on the same ports through SO_REUSEPORT sockets.
 *
 * The one rule that keeps C and Lua apart: C enters Lua only from the worker's
 * event drain (mg_worker_drain), never from inside a call Lua made into C. A
 * C function called from Lua that produces something Lua must hear about
 * (a new pipelined request, an aborted transfer) queues an event instead. */
#ifndef MG_WORKER_H
#define MG_WORKER_H

#include <pthread.h>
#include <stdint.h>
#include <stddef.h>
#include <uv.h>
#include <llhttp.h>

#include "buf.h"

typedef struct mg_worker   mg_worker_t;
typedef struct mg_conn     mg_conn_t;
typedef struct mg_req      mg_req_t;
typedef struct mg_up       mg_up_t;
typedef struct mg_multi    mg_multi_t;
typedef struct mg_listener mg_listener_t;

/* What a listener serves. The number is passed to Lua with each request. */
enum {
    MG_APP_GATEWAY = 1,
    MG_APP_ADMIN   = 2,
    MG_APP_MOCK    = 3,
};

/* Events Lua hears about (lua/moongate/runtime.lua has the same numbers). */
enum {
    MG_EV_REQUEST    = 1,   /* ptr = mg_req_t*, arg = app */
    MG_EV_UP_HEADERS = 2,   /* ptr = mg_up_t*, arg = status */
    MG_EV_UP_DATA    = 3,   /* ptr = mg_up_t*, body bytes passed as a string */
    MG_EV_UP_DONE    = 4,   /* ptr = mg_up_t*, arg = MG_OK or an MG_E* code */
    MG_EV_TIMER      = 5,   /* waiter's sleep is over */
    MG_EV_DRAINED    = 6,   /* the client took its backlog (or left): write more */
    MG_EV_WAKE       = 7,   /* another thread finished what waiter waits for */
    MG_EV_RELOAD     = 8,   /* main: reload (SIGHUP); worker: apply config generation arg */
    /* C-only events, handled without entering Lua */
    MG_EV_CONN_RESUME = 100, /* ptr = mg_conn_t*: parse what was pipelined */
    MG_EV_UP_WAKE     = 101, /* ptr = mg_up_t*: tell Lua what the transfer has next */
    MG_EV_STOP        = 102, /* posted: stop accepting and drain (SIGTERM on main) */
    MG_EV_WORKER_EXIT = 103  /* posted to main: a worker's loop has ended */
};

/* Result codes of an upstream transfer, converted from CURLcode in upstream.c
 * (and given by the native HTTP/1.1 client in upstream_h1.c). */
enum {
    MG_OK        = 0,
    MG_ECONNECT  = -1,   /* "connect-failure" */
    MG_ETIMEDOUT = -2,   /* "timeout" */
    MG_ERESET    = -3,   /* "reset" */
    MG_ETLS      = -4,   /* "tls" */
    MG_ECLIENT   = -5,   /* the client went away; the transfer was aborted */
    MG_EPROTO    = -6,   /* a malformed answer */
    MG_EOTHER    = -7,
};

typedef struct mg_limits {
    size_t   max_body;
    size_t   max_header;
    int      max_connections;
    uint64_t header_timeout_ms;
    uint64_t idle_timeout_ms;
} mg_limits_t;

typedef struct mg_event {
    int      kind;
    int      arg;
    int64_t  waiter;
    void    *ptr;
} mg_event_t;

struct mg_listener {
    uv_tcp_t     tcp;
    mg_worker_t *w;
    int          app;
    int          port;          /* the bound port (useful with port 0) */
    struct mg_tls_slot *tls;    /* NULL for plain TCP; the process's, shared by workers */
    char         address[80];
};

struct mg_worker {
    uv_loop_t       loop;
    int             index;          /* 0: the main thread; 1..n: gateway workers */
    struct lua_State *L;
    int             lua_event_ref;  /* registry ref of runtime.event */
    int             lua_traceback_ref;  /* registry ref of the error handler for it */
    mg_multi_t     *multi;
    mg_limits_t     limits;

    mg_listener_t  *listeners[16];
    int             nlisteners;

    /* event queue, drained from a uv_check with a uv_idle keeping poll from blocking */
    mg_event_t     *ev;
    size_t          ev_head, ev_len, ev_cap;
    uv_idle_t       idle;
    uv_check_t      check;
    int             draining_events;

    /* events posted from other threads */
    uv_async_t      async;
    pthread_mutex_t inbox_mu;
    mg_event_t     *inbox;
    size_t          inbox_len, inbox_cap;
    int             inbox_open;      /* async is live: posts are accepted */

    mg_conn_t      *conns;           /* all open client connections */
    int             nconns;
    int64_t         inflight;        /* requests handed to Lua and not yet released */

    int             stopping;        /* SIGTERM seen: no new connections or requests */
    int             shutdown_cut;    /* shutdown_timeout passed: connections closed */
    int             holds;           /* main: workers still running (its loop waits for them) */
    double          shutdown_timeout;
    uv_timer_t      shutdown_timer;
    uv_signal_t     signals[5];
    int             signals_on;      /* main: mg_worker_signals ran */
    int             exit_code;

    char            read_buf[65536]; /* shared: everything read is parsed at once */
};

/* The request parser (http.c): llhttp plus the limits and the framing
 * checks llhttp does not make, and nothing else — no socket, no timer, no
 * clock — so that the connection code and the fuzzers run the same code.
 * mg_hp_execute() reports what happened through its result and the flags
 * below; the caller acts on them (answers, timers, queueing the request). */
typedef struct mg_hp {
    llhttp_t           http;
    const mg_limits_t *limits;
    mg_req_t          *req;          /* the request being read; the parser's until taken */
    size_t             head_bytes;   /* its request target, header section and trailers */
    size_t             ext_bytes;    /* chunk extension bytes of the current chunk */
    const char        *exec_start, *exec_end;  /* the buffer llhttp is parsing */
    unsigned           exec_seq, val_seq;      /* which execute call; see on_header_value */
    unsigned           val_at_end : 1;         /* the last value piece ended its buffer */
    unsigned           last_was_value : 1;
    unsigned           tail_lf : 1;   /* the last read ended in whitespace with a line break */
    unsigned           version_at_end : 1;  /* the last read ended just after the HTTP version */
    unsigned           in_body : 1;            /* past the header section */
    char               tail[2];      /* the last two bytes of the last read (see head_bare_lf) */
    unsigned           refuse : 1;   /* set by the caller: a new request gets 503 */
    /* what the last execute did */
    unsigned           began : 1;          /* a request's first byte arrived */
    unsigned           headers_done : 1;   /* its header section is complete */
    unsigned           body_progress : 1;  /* body bytes arrived */
    unsigned           want_continue : 1;  /* it asked for 100 Continue */
    int                status;             /* MG_HP_ERROR: the status to answer */
    char               message[200];       /* and its message (fixed ASCII, no quotes) */
} mg_hp_t;

enum { MG_HP_MORE = 0, MG_HP_REQUEST = 1, MG_HP_ERROR = 2 };

struct mg_conn {
    uv_tcp_t       tcp;              /* first: the handle's address is the conn's */
    mg_worker_t   *w;
    mg_conn_t     *prev, *next;
    int            app;
    mg_hp_t        hp;
    uv_timer_t     timer;

    mg_req_t      *req;              /* the request being served (handed to Lua) */
    mg_buf_t       pending;          /* bytes read past a complete request (pipelining) */
    uint64_t       body_start;       /* loop time (ms) the current body began */
    size_t         stall_mark;       /* unsent bytes when the write-stall timer was armed */
    struct mg_tls *tls;              /* the TLS session on a TLS listener, else NULL */

    unsigned       reading : 1;
    unsigned       paused : 1;       /* parser paused on a complete request */
    unsigned       closing : 1;
    unsigned       close_after : 1;  /* close once the response is written */
    unsigned       tls_seen : 1;     /* the first bytes of a TLS connection were looked at */
    unsigned       tls_failed : 1;   /* no close_notify: the session is broken */
    unsigned       served_any : 1;   /* a request was handed over on this connection */
    int            closes_pending;   /* handle close callbacks still to come */
    char           remote[64];
};

typedef struct mg_hdr {
    uint32_t name_off, name_len, val_off, val_len;
} mg_hdr_t;

struct mg_req {
    mg_worker_t   *w;
    mg_conn_t     *conn;             /* NULL once the client is gone */
    int            refs;
    int            app;
    double         start;            /* monotonic seconds */

    /* what the client sent */
    int            method;           /* llhttp_method_t */
    int            http_minor;
    int            keepalive;
    mg_buf_t       head;             /* url and header bytes; offsets below point in here */
    uint32_t       url_off, url_len;
    mg_hdr_t      *hdrs;
    int            nhdrs, hdrs_cap;
    mg_buf_t       body;
    int            complete;

    /* what it gets back */
    int            status;           /* 0 until headers were sent */
    mg_buf_t       head_out;         /* header block held for the first body bytes */
    int            chunked;
    int            finished;
    uint64_t       bytes_out;

    mg_up_t       *ups;              /* transfers this request owns */
    int64_t        drain_waiter;     /* woken by MG_EV_DRAINED, 0 for none */
};

/* worker.c */
extern __thread mg_worker_t *mg_current;
int  mg_worker_init(mg_worker_t *w);
void mg_worker_queue(mg_worker_t *w, int kind, int64_t waiter, void *ptr, int arg);
/* From any thread: queue an event on w's loop. Returns -1 once w has closed. */
int  mg_worker_post(mg_worker_t *w, int kind, int64_t waiter, void *ptr, int arg);
void mg_worker_stop(mg_worker_t *w, const char *why);
void mg_worker_unqueue_ptr(mg_worker_t *w, void *ptr);  /* drop events for a freed object */
int  mg_worker_listen(mg_worker_t *w, const char *host, int port, int app, char *err, size_t errlen);
/* A bound, listening SO_REUSEPORT socket (probe: refuse a port another
 * process holds); mg_worker_adopt serves it on w's loop. */
int  mg_listen_socket(const char *host, int port, int probe, char *err, size_t errlen);
int  mg_worker_adopt(mg_worker_t *w, int fd, int app, const char *host, struct mg_tls_slot *tls,
                     char *err, size_t errlen);
void mg_worker_stop_accepting(mg_worker_t *w);
void mg_worker_maybe_exit(mg_worker_t *w);
/* The main thread's signal handlers (SIGTERM, SIGINT, SIGHUP, SIGUSR1), started before
 * anything listens: a reload or a log reopen sent right after start waits for the loop
 * instead of killing the process. mg_worker_run starts them when not done yet. */
void mg_worker_signals(mg_worker_t *w);
int  mg_worker_run(mg_worker_t *w);
void mg_worker_close(mg_worker_t *w);

/* process.c — the main thread and the gateway workers */
int  mg_process_nworkers(void);
void mg_process_on_signal(mg_worker_t *main, int signum);   /* main thread, run mode */
void mg_process_on_post(mg_worker_t *w, const mg_event_t *ev);  /* C-only posted events */
int  mg_process_adopt_listeners(mg_worker_t *w, char *err, size_t errlen);
void mg_process_set_paths(const char *home, const char *config);
void mg_process_join(void);

/* shared.c: free this thread's buffers before it ends */
void mg_shared_thread_done(void);

/* http.c — client side HTTP/1.1 */
void mg_http_on_accept(uv_stream_t *server, int status);
void mg_conn_resume(mg_conn_t *c);
void mg_conn_close(mg_conn_t *c);
void mg_conn_close_idle(mg_worker_t *w);
void mg_conn_close_all(mg_worker_t *w);
void mg_req_retain(mg_req_t *r);
void mg_req_unref(mg_req_t *r);
int  mg_conn_write_queue_small(mg_conn_t *c);
/* The request parser (mg_hp_t above). init: limits must outlive p. execute:
 * MG_HP_MORE (all of data used; feed more), MG_HP_REQUEST (a request is
 * complete after *used bytes: mg_hp_take it; the rest of data waits until
 * mg_hp_resume), MG_HP_ERROR (p->status and p->message say what to answer;
 * the parser is done). take: the complete request, with one reference for
 * the caller. free: drops a request still being read. */
void      mg_hp_init(mg_hp_t *p, const mg_limits_t *limits);
int       mg_hp_execute(mg_hp_t *p, const char *data, size_t len, size_t *used);
mg_req_t *mg_hp_take(mg_hp_t *p);
void      mg_hp_resume(mg_hp_t *p);
void      mg_hp_free(mg_hp_t *p);

/* lbridge.c */
#define MG_INIT_DONE 3   /* mg_lua_init: nothing to run (help shown): exit 0 */
int  mg_lua_init(mg_worker_t *w, const char *home, const char *config_path, const char *mode,
                 int argc, char **argv);
void mg_lua_event(mg_worker_t *w, const mg_event_t *ev);
void mg_lua_close(mg_worker_t *w);

#endif
