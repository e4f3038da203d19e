/* upstream_int.h — what the two transports of an upstream transfer share.
 *
 * A transfer (mg_up_t) runs on one of two transports: libcurl's multi handle
 * (upstream.c: https://, and everything when MOONGATE_UPSTREAM=curl) or the
 * native HTTP/1.1 client for plain http:// (upstream_h1.c). Everything Lua
 * and the client see — the event order, the three body paths, back-pressure,
 * deadlines, the owner list — is the core's, in upstream.c; a transport only
 * feeds it through the mg_up__* functions below and answers stop/resume.
 *
 * Only upstream.c and upstream_h1.c include this file. */
#ifndef MG_UPSTREAM_INT_H
#define MG_UPSTREAM_INT_H

#include <stdarg.h>

#include "worker.h"

#define MG_UP_INBUF_CAP (256 * 1024)   /* body bytes held for Lua before reading pauses */
#define MG_UP_ERRLEN    256             /* CURL_ERROR_SIZE */
#define MG_UP_EASY_POOL 64              /* idle curl easy handles kept */

enum { MG_UP_UNDECIDED = 0, MG_UP_PIPE = 1, MG_UP_STREAM = 2, MG_UP_RELAY = 3 };
#define MG_UP_RELAY_MAX (64 * 1024)    /* a partial event the relay holds before Lua takes over */

typedef struct mg_h1_conn mg_h1_conn_t;
typedef struct mg_h1_pool mg_h1_pool_t;

/* A native transfer's own state (upstream_h1.c). */
typedef struct mg_h1_xfer {
    mg_h1_conn_t *conn;            /* the connection carrying it; NULL once it ended */
    mg_h1_pool_t *pool;            /* its host:port */
    double        deadline;        /* monotonic end of the whole transfer, 0 none */
    double        connect_timeout; /* seconds for each new connection, name resolution included */
    double        low_speed;       /* whole seconds without a byte that end it, 0 none */
    double        last_rx;         /* monotonic time a byte last arrived */
    uint64_t      rx_bytes;        /* body bytes received, for the timeout message */
    unsigned      head_only : 1;   /* a HEAD request: the answer has no body */
    unsigned      close : 1;       /* the request asked for Connection: close */
    unsigned      retried : 1;     /* already sent again after a reused connection failed */
} mg_h1_xfer_t;

struct mg_multi {
    uv_timer_t    timer;           /* first: closing it frees the struct */
    void         *multi;           /* CURLM* */
    mg_worker_t  *w;
    struct { void *easy; int custom_tls; } pool[MG_UP_EASY_POOL];
    int           npool;
    int           active;
    struct sock **socks;           /* by fd */
    int           nsocks;
    uv_timer_t   *watchdog;        /* ticks while some transfer is watched (mg_up_watch) */
    mg_up_t      *watched;         /* transfers with a first-byte or idle deadline */
    int           curl_only;       /* MOONGATE_UPSTREAM=curl */
    mg_h1_pool_t *h1_pools;        /* native: one per host:port */
    mg_h1_conn_t *h1_conns;        /* native: every open connection */
};

struct mg_up {
    void              *easy;       /* CURL*, NULL for a native transfer */
    mg_multi_t        *m;
    int64_t            waiter;
    mg_req_t          *owner;
    mg_up_t           *onext, *oprev;      /* owner's list */
    struct curl_slist *hout;
    mg_buf_t           bout;               /* curl: the body; native: the whole request */
    double             t_start;
    double             ttfb;

    int                status;
    mg_buf_t           hbuf;
    mg_hdr_t          *hdrs;
    int                nhdrs, hcap;
    int                in_headers;         /* curl: saw a status line, not yet the blank line */

    mg_buf_t           inbuf;
    int                mode;
    unsigned           running : 1;
    unsigned           headers_done : 1;
    unsigned           headers_told : 1;
    unsigned           done : 1;
    unsigned           done_told : 1;
    unsigned           paused : 1;
    unsigned           aborted : 1;
    unsigned           in_cb : 1;
    unsigned           wake_queued : 1;
    unsigned           freed : 1;
    unsigned           custom_tls : 1;
    int                refs;
    int                result;
    char               errbuf[MG_UP_ERRLEN];

    /* mg_up_watch(): deadlines libcurl has no option for (its low-speed
     * limit counts whole seconds) */
    mg_up_t           *wnext, *wprev;
    double             first_deadline;     /* monotonic time the first body byte is due, 0 none */
    double             idle_limit;         /* most seconds between body bytes, 0 none */
    double             last_data;
    unsigned           watched : 1;
    unsigned           got_body : 1;
    size_t             handed;             /* inbuf bytes Lua holds in the current MG_EV_UP_DATA */
    int                relay_fmt;          /* relay mode: MG_SSE_* */
    long               relay_chars;        /* text characters relayed, not yet told */
    size_t             relay_open;         /* inbuf's first bytes, known to hold no event boundary */

    mg_h1_xfer_t       h1;
};

/* ---- the core (upstream.c), for the transports ---- */

void mg_up__wake(mg_up_t *u);
/* The transport has ended: records result (MG_ECLIENT if the client went
 * away meanwhile) and wakes Lua. errbuf is the transport's to fill first. */
void mg_up__finish(mg_up_t *u, int result);
void mg_up__errorf(mg_up_t *u, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A header section starts (a status line) / gets a header / ends. Names
 * and values may come in pieces: hdr_new, then name pieces, then value
 * pieces. Names are lowercased. */
void mg_up__head_begin(mg_up_t *u, int status);
void mg_up__hdr_new(mg_up_t *u);
void mg_up__hdr_name(mg_up_t *u, const char *p, size_t n);
void mg_up__hdr_value(mg_up_t *u, const char *p, size_t n);
void mg_up__hdr_trim(mg_up_t *u);       /* drop trailing blanks of the last value */
void mg_up__head_end(mg_up_t *u);
/* Body bytes. blocked: 1 when len more bytes must wait (the client's queue
 * is large in pipe mode, or inbuf is full). take: passes them on (to the
 * client, or into inbuf for Lua); -1 when they cannot go anywhere (the
 * client is gone): the transfer must end. */
int  mg_up__body_blocked(mg_up_t *u, size_t len);
int  mg_up__body_take(mg_up_t *u, const char *data, size_t len);

/* ---- the native transport (upstream_h1.c) ---- */

/* A URL as the native client reads it: pointers into the URL string. */
typedef struct mg_h1_url {
    const char *host;
    size_t      hlen;
    int         port;
    int         v6;
    const char *target;     /* from the '/' or '?' after the authority, up to any '#' */
    size_t      tlen;
} mg_h1_url_t;

/* Whether the native client takes this request: an http://host[:port][/...]
 * URL without userinfo or anything it would have to encode, and a method
 * that is a token. When it does, *parsed is the URL for mg_h1_start. */
int  mg_h1_accepts(const char *method, const char *url, mg_h1_url_t *parsed);
/* Starts a native transfer for u (its core fields set) to a URL mg_h1_accepts
 * parsed (the URL string still alive). A failure the transport finds ends the
 * transfer through mg_up__finish. */
void mg_h1_start(mg_up_t *u, const char *method, const mg_h1_url_t *url, const char *headers,
                 size_t hlen, const char *body, size_t blen, double connect_timeout,
                 double timeout, double idle_timeout);
void mg_h1_stop(mg_up_t *u);            /* ends a running transfer; its connection is closed */
void mg_h1_resume(mg_up_t *u);          /* u->paused was cleared: read the provider again */
void mg_h1_close_all(mg_multi_t *m);    /* worker shutdown: every connection */

#endif
