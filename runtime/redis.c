/* redis.c — gw.shared across gateway instances (cluster.redis): a small
 * Redis client on each thread's libuv loop.
 *
 * Every thread that runs Lua (the main thread, which serves the admin API,
 * and each gateway worker) starts its own client with mg_redis_start(): one
 * TCP connection, pipelined (commands go out as they come, replies are
 * matched in order), reconnected with a doubling backoff (100 ms .. 2 s) when
 * it is lost. We speak RESP2 ourselves rather than take hiredis: Debian's
 * hiredis is 0.14, its libuv adapter adds a second event layer we would have
 * to own anyway, and what we need — encode a command, parse a reply
 * incrementally, time out, reconnect — is a few hundred lines.
 *
 * The operations are those of gw.shared (shared.c), each atomic in Redis:
 * GET, SET and DEL directly, incr/reserve/settle as one Lua script (loaded at
 * connect, called with EVALSHA; EVAL when Redis answers NOSCRIPT). Values are
 * stored as text: a number as its shortest exact decimal ("3", "0.1"), a
 * string as "s:" and its bytes, so each comes back as what it was. Keys get
 * the configured prefix ("moongate:") so that gateways and apps can share one
 * Redis.
 *
 * How an operation ends, exactly once (ffi.h): its reply; a timeout (the
 * connection is then dropped and every operation on it ends as unavailable:
 * a Redis that does not answer within the timeout is treated as gone); or the
 * loss of the connection. While the connection is down (between attempts)
 * operations are refused at once, so requests do not wait for a dead Redis.
 * While it is being set up they wait, within their timeout.
 *
 * Outside a coroutine (start-up, a plugin's init at reload) nothing can wait
 * on the loop, so mg_redis_call(0, ...) makes a blocking round trip on a
 * separate connection of the thread's, bounded by the timeout.
 *
 * The outage is logged once per process (not once per thread or per
 * operation) and shown as the gauge moongate_cluster_up; operations Redis
 * could not answer are counted in moongate_cluster_unavailable_total. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <mbedtls/sha1.h>

#include "ffi.h"
#include "log.h"
#include "metrics.h"
#include "redis.h"
#include "worker.h"

/* ======================== RESP2 ======================== */

/* "<c><n>\r\n" (a command's "*3" or an argument's "$5" line) */
static void put_len(mg_buf_t *out, char c, size_t n)
{
    char b[24];
    int i = (int)sizeof b;
    b[--i] = '\n';
    b[--i] = '\r';
    do {
        b[--i] = (char)('0' + n % 10);
        n /= 10;
    } while (n > 0);
    b[--i] = c;
    mg_buf_append(out, b + i, sizeof b - (size_t)i);
}

static void put_bulk(mg_buf_t *out, const char *s, size_t len)
{
    put_len(out, '$', len);
    mg_buf_reserve(out, len + 2);
    memcpy(out->data + out->len, s, len);
    out->data[out->len + len] = '\r';
    out->data[out->len + len + 1] = '\n';
    out->len += len + 2;
}

void mg_resp_command(mg_buf_t *out, int argc, const char *const *argv, const size_t *lens)
{
    put_len(out, '*', (size_t)argc);
    for (int i = 0; i < argc; i++) put_bulk(out, argv[i], lens[i]);
}

int mg_resp_number(char *out, double x)
{
    int n = 0;
    for (int prec = 15; prec <= 17; prec++) {
        n = snprintf(out, 32, "%.*g", prec, x);
        if (strtod(out, NULL) == x || x != x) break;
    }
    return n;
}

/* The CRLF ending the line at p: 1 and *cr = its '\r'; 0 when incomplete; -1
 * for a bare '\r' (a line of RESP2 never holds one). */
static int line_end(const char *p, const char *end, const char **cr)
{
    const char *q = memchr(p, '\r', (size_t)(end - p));
    if (q == NULL || q + 1 >= end) return 0;
    if (q[1] != '\n') return -1;
    *cr = q;
    return 1;
}

static int parse_ll(const char *p, const char *end, long long *out)
{
    int neg = 0;
    long long v = 0;
    if (p < end && *p == '-') {
        neg = 1;
        p++;
    }
    if (p == end || end - p > 18) return -1;
    for (; p < end; p++) {
        if (*p < '0' || *p > '9') return -1;
        v = v * 10 + (*p - '0');
    }
    *out = neg ? -v : v;
    return 0;
}

/* One value at *pp: 1 (complete; *pp moves past it), 0 (incomplete), -1
 * (not RESP2). item (may be NULL: skip) gets the value; top, at depth 0, the
 * first elements of an array. */
static int parse_value(const char **pp, const char *end, int depth, mg_resp_item_t *item,
                       mg_resp_t *top)
{
    const char *p = *pp, *cr;
    if (p >= end) return 0;
    int rc = line_end(p + 1, end, &cr);
    if (rc <= 0) return rc;
    const char *next = cr + 2;
    long long n = 0;
    switch (*p) {
    case '+':
    case '-':
        if (item) {
            item->type = *p;
            item->str = p + 1;
            item->len = (size_t)(cr - (p + 1));
        }
        break;
    case ':':
        if (parse_ll(p + 1, cr, &n) != 0) return -1;
        if (item) {
            item->type = MG_RESP_INTEGER;
            item->integer = n;
        }
        break;
    case '$':
        if (parse_ll(p + 1, cr, &n) != 0 || n < -1 || n > (512LL << 20)) return -1;
        if (n == -1) {
            if (item) item->type = MG_RESP_NIL;
            break;
        }
        if ((size_t)(end - next) < (size_t)n + 2) return 0;
        if (next[n] != '\r' || next[n + 1] != '\n') return -1;
        if (item) {
            item->type = MG_RESP_BULK;
            item->str = next;
            item->len = (size_t)n;
        }
        next += n + 2;
        break;
    case '*':
        if (parse_ll(p + 1, cr, &n) != 0 || n < -1 || n > (1LL << 30)) return -1;
        if (n == -1) {
            if (item) item->type = MG_RESP_NIL;
            break;
        }
        if (depth + 1 >= MG_RESP_MAXDEPTH) return -1;
        if (item) {
            item->type = MG_RESP_ARRAY;
            item->integer = n;
        }
        for (long long i = 0; i < n; i++) {
            mg_resp_item_t *sub = (top != NULL && i < MG_RESP_MAXELEM) ? &top->elem[i] : NULL;
            int r = parse_value(&next, end, depth + 1, sub, NULL);
            if (r <= 0) return r;
        }
        if (top) top->nelem = (int)n;
        break;
    default:
        return -1;
    }
    *pp = next;
    return 1;
}

long mg_resp_parse(const char *buf, size_t len, mg_resp_t *out)
{
    const char *p = buf;
    out->nelem = 0;
    int r = parse_value(&p, buf + len, 0, &out->v, out);
    if (r <= 0) return r;
    return (long)(p - buf);
}

/* ======================== the script ======================== */

/* KEYS[1] the key; ARGV[1] the operation, then its numbers. Numbers are
 * computed as doubles (as shared.c does) and written back as their shortest
 * exact text; results go back as strings, never as Lua numbers (Redis would
 * truncate those to integers). TTLs in ms, 0 for none, set only when the key
 * is created (SET ... KEEPTTL keeps them afterwards). */
static const char SCRIPT[] =
    "local k, op = KEYS[1], ARGV[1]\n"
    "local v = redis.call('GET', k)\n"
    "if op == 'fetch' then\n"
    "  if not v then return {'0'} end\n"
    "  return {'1', v, tostring(redis.call('PTTL', k))}\n"
    "end\n"
    "local function f(x)\n"
    "  for p = 15, 17 do\n"
    "    local s = string.format('%.' .. p .. 'g', x)\n"
    "    if tonumber(s) == x then return s end\n"
    "  end\n"
    "  return string.format('%.17g', x)\n"
    "end\n"
    "local function put(out, ttl)\n"
    "  if v then redis.call('SET', k, out, 'KEEPTTL')\n"
    "  elseif ttl > 0 then redis.call('SET', k, out, 'PX', ttl)\n"
    "  else redis.call('SET', k, out) end\n"
    "end\n"
    "local cur\n"
    "if v then\n"
    "  if string.sub(v, 1, 2) == 's:' then return {'-1'} end\n"
    "  cur = tonumber(v)\n"
    "  if cur == nil then return {'-1'} end\n"
    "end\n"
    "if op == 'incr' then\n"
    "  local out = f((cur or 0) + tonumber(ARGV[2]))\n"
    "  put(out, tonumber(ARGV[3]))\n"
    "  return {'0', out}\n"
    "elseif op == 'reserve' then\n"
    "  local n, limit = tonumber(ARGV[2]), tonumber(ARGV[3])\n"
    "  local c0 = cur or 0\n"
    "  if c0 < limit then\n"
    "    local out = c0 + n\n"
    "    put(f(out), tonumber(ARGV[4]))\n"
    "    return {'1', f(limit - out)}\n"
    "  end\n"
    "  return {'0', f(limit - c0)}\n"
    "elseif op == 'settle' then\n"
    "  if not cur then return {'1', '0'} end\n"
    "  local out = f(cur + (tonumber(ARGV[3]) - tonumber(ARGV[2])))\n"
    "  put(out, 0)\n"
    "  return {'0', out}\n"
    "end\n"
    "return redis.error_reply('moongate: unknown operation ' .. tostring(op))\n";

static char script_sha[41];
static pthread_once_t sha_once = PTHREAD_ONCE_INIT;

static void compute_sha(void)
{
    unsigned char d[20];
    mbedtls_sha1_ret((const unsigned char *)SCRIPT, sizeof SCRIPT - 1, d);
    for (int i = 0; i < 20; i++) snprintf(script_sha + 2 * i, 3, "%02x", d[i]);
}

/* ======================== the client's types ======================== */

/* What an operation is. The first six are ffi.h's MG_REDIS_GET.. numbers. */
enum {
    K_GET = MG_REDIS_GET, K_SET = MG_REDIS_SET, K_DEL = MG_REDIS_DELETE, K_INCR = MG_REDIS_INCR,
    K_RESERVE = MG_REDIS_RESERVE, K_SETTLE = MG_REDIS_SETTLE,
    K_FETCH = 20,            /* a mirrored key: Redis's value into the local store */
    K_RAW,                   /* XADD and the like: the answer is dropped */
    K_AUTH, K_SELECT, K_NAME, K_LOAD,   /* the handshake */
};

enum { ST_DOWN, ST_RESOLVING, ST_CONNECTING, ST_HANDSHAKE, ST_READY, ST_STOPPED };

typedef struct client client_t;
typedef struct conn conn_t;

struct mg_redis_op {
    mg_redis_op_t *prev, *next;   /* in the client's FIFO (sent or queued) or its done list */
    int            kind;
    int64_t        waiter;        /* > 0: woken with MG_EV_WAKE; 0: nobody waits */
    double         deadline;      /* monotonic seconds */
    int            in_fifo, done;
    int            status, rc, type;
    double         num;
    char          *str;           /* a string result or Redis's error message */
    size_t         slen;
    double         a, b, c;       /* the request, for a NOSCRIPT re-send */
    size_t         klen;
    char           key[];         /* the key without the prefix */
};

struct conn {
    uv_tcp_t     tcp;             /* first: the handle's address is the conn's */
    client_t    *c;               /* NULL once the client dropped it */
    uv_connect_t creq;
    uv_write_t   wreq;
    mg_buf_t     wdata;           /* the bytes of the write in flight */
    mg_buf_t     rbuf;            /* bytes read and not parsed yet */
    int          connected, writing;
};

typedef struct {
    mg_redis_op_t *head, *tail;
} list_t;

struct client {
    mg_worker_t  *w;
    int           refs;           /* the owner, plus each handle close or lookup pending */
    int           state;
    /* configuration */
    char          host[256];
    int           port;
    char         *user, *password, *prefix;
    size_t        plen;
    int           db, fail_open;
    double        timeout, connect_timeout;
    /* the connection */
    conn_t       *conn;
    mg_buf_t      wbuf;           /* encoded and not written yet */
    list_t        fifo;           /* sent or queued, in order: replies come in this order */
    list_t        done;           /* ended, until Lua reads them (mg_redis_result) */
    uv_timer_t    timer;          /* the FIFO head's deadline, or the connect deadline */
    uv_timer_t    retry;          /* backoff before the next attempt */
    int           timer_init, retry_init;
    double        backoff;
    double        connect_deadline;
    int           up;             /* counted in reg.nup */
    int           resolving;
    char          why[160];       /* why the last attempt failed */
    int           sync_fd;        /* the blocking connection (-1: none) */
    double        sync_retry_at;  /* no new blocking connection before this */
    mg_buf_t      sync_in;
    int           logged_replies; /* error replies of fire-and-forget commands logged */
};

/* Process-wide: how many clients there are and how many are up, for the log
 * and the gauge. */
static struct {
    pthread_mutex_t mu;
    int             nclients, nup, outage, ever_up;
    int             m_up, m_unavailable;
} reg = { .mu = PTHREAD_MUTEX_INITIALIZER, .m_up = -1, .m_unavailable = -1 };

static __thread client_t *tc;        /* this thread's client */
static __thread mg_buf_t  keybuf;    /* prefix + key, while encoding */
static __thread char     *result_str; /* the string of the last mg_redis_result */

/* ======================== lists ======================== */

static void list_push(list_t *l, mg_redis_op_t *op)
{
    op->next = NULL;
    op->prev = l->tail;
    if (l->tail) l->tail->next = op;
    else l->head = op;
    l->tail = op;
}

static void list_unlink(list_t *l, mg_redis_op_t *op)
{
    if (op->prev) op->prev->next = op->next;
    else l->head = op->next;
    if (op->next) op->next->prev = op->prev;
    else l->tail = op->prev;
    op->prev = op->next = NULL;
}

static void op_free(mg_redis_op_t *op)
{
    free(op->str);
    free(op);
}

static mg_redis_op_t *op_new(int kind, int64_t waiter, const char *k, size_t kl, double a,
                             double b, double c)
{
    mg_redis_op_t *op = mg_xcalloc(1, sizeof *op + kl + 1);
    op->kind = kind;
    op->waiter = waiter;
    op->a = a;
    op->b = b;
    op->c = c;
    op->klen = kl;
    if (kl) memcpy(op->key, k, kl);
    return op;
}

/* ======================== up and down ======================== */

static void metrics_declare(void)
{
    pthread_mutex_lock(&reg.mu);
    if (reg.m_up < 0) {
        reg.m_up = mg_metric_declare("moongate_cluster_up", MG_METRIC_GAUGE,
                                     "1 while every thread of this instance is connected to Redis (cluster.redis).",
                                     NULL, 0);
        reg.m_unavailable = mg_metric_declare("moongate_cluster_unavailable_total", MG_METRIC_COUNTER,
                                              "gw.shared operations Redis could not answer (fail_open: served from this instance's store).",
                                              NULL, 0);
    }
    pthread_mutex_unlock(&reg.mu);
}

static void count_unavailable(void)
{
    if (reg.m_unavailable >= 0) mg_metric_add(reg.m_unavailable, "", 0, 1);
}

/* Called on every change of c->up, and when an attempt fails: logs the
 * outage once per process, and its end. */
static void set_up(client_t *c, int up)
{
    pthread_mutex_lock(&reg.mu);
    if (up != c->up) {
        reg.nup += up ? 1 : -1;
        c->up = up;
    }
    int all = reg.nclients > 0 && reg.nup == reg.nclients;
    if (c->state == ST_STOPPED) {
        /* shutting down: not an outage */
    } else if (!up && !reg.outage) {
        reg.outage = 1;
        mg_log(MG_LOG_WARN, "cluster: Redis at %s:%d is unreachable (%s); %s", c->host, c->port,
               c->why[0] ? c->why : "connection lost",
               c->fail_open ? "gw.shared uses this instance's own store until it is back (fail_open): "
                              "limits and budgets are per instance meanwhile"
                            : "operations on shared keys fail until it is back (fail_open = false): "
                              "rate-limited and budgeted requests are refused with 503");
    } else if (up && all) {
        if (reg.outage) mg_log(MG_LOG_WARN, "cluster: Redis at %s:%d is reachable again", c->host, c->port);
        else if (!reg.ever_up) mg_log(MG_LOG_INFO, "cluster: connected to Redis at %s:%d (keys prefixed \"%s\")",
                                      c->host, c->port, c->prefix);
        reg.outage = 0;
        reg.ever_up = 1;
    }
    if (reg.m_up >= 0) mg_metric_set(reg.m_up, "", 0, all ? 1 : 0);
    pthread_mutex_unlock(&reg.mu);
}

/* ======================== ending operations ======================== */

/* The op is over: it joins the done list and its waiter hears of it; an op
 * nobody waits for is freed. */
static void complete(client_t *c, mg_redis_op_t *op, int status)
{
    if (op->in_fifo) {
        list_unlink(&c->fifo, op);
        op->in_fifo = 0;
    }
    op->status = status;
    op->done = 1;
    if (status == MG_REDIS_DOWN || status == MG_REDIS_TIMEOUT) count_unavailable();
    if (op->waiter > 0) {
        list_push(&c->done, op);
        mg_worker_queue(c->w, MG_EV_WAKE, op->waiter, op, status);
    } else {
        if (status == MG_REDIS_ERROR && op->kind != K_FETCH && c->logged_replies < 20) {
            c->logged_replies++;
            mg_log(MG_LOG_WARN, "cluster: Redis refused a command: %.*s", (int)op->slen,
                   op->str ? op->str : "");
        }
        op_free(op);
    }
}

static void arm_timer(client_t *c);
static void flush(client_t *c);
static void connect_start(client_t *c);

static void on_conn_closed(uv_handle_t *h)
{
    conn_t *conn = (conn_t *)h;
    mg_buf_free(&conn->wdata);
    mg_buf_free(&conn->rbuf);
    free(conn);
}

static void on_retry(uv_timer_t *t)
{
    client_t *c = t->data;
    if (c->state == ST_DOWN) connect_start(c);
}

/* The connection is lost (or could not be made): every operation on it ends
 * with `status`, and the next attempt is scheduled. */
static void drop(client_t *c, int status, const char *why)
{
    if (c->state == ST_STOPPED || c->state == ST_DOWN) return;
    snprintf(c->why, sizeof c->why, "%s", why);
    conn_t *conn = c->conn;
    if (conn) {
        c->conn = NULL;
        conn->c = NULL;
        uv_close((uv_handle_t *)&conn->tcp, on_conn_closed);
    }
    c->state = ST_DOWN;
    mg_buf_reset(&c->wbuf);
    while (c->fifo.head) complete(c, c->fifo.head, status);
    arm_timer(c);
    set_up(c, 0);
    uv_timer_start(&c->retry, on_retry, (uint64_t)(c->backoff * 1000), 0);
    c->backoff = c->backoff * 2 > 2.0 ? 2.0 : c->backoff * 2;
}

/* ======================== encoding ======================== */

typedef struct {
    int         n;
    const char *v[24];
    size_t      l[24];
    char        nums[6][32];
    int         nn;
} args_t;

static void arg(args_t *a, const char *s, size_t l)
{
    if (a->n < 24) {
        a->v[a->n] = s;
        a->l[a->n] = l;
        a->n++;
    }
}

static void arg_s(args_t *a, const char *s)
{
    arg(a, s, strlen(s));
}

static void arg_num(args_t *a, double x)
{
    char *b = a->nums[a->nn++];
    arg(a, b, (size_t)mg_resp_number(b, x));
}

static double ttl_ms(double ttl)
{
    return ttl > 0 ? ceil(ttl * 1000) : 0;
}

static void arg_key(args_t *a, const client_t *c, const char *k, size_t kl)
{
    mg_buf_reset(&keybuf);
    mg_buf_append(&keybuf, c->prefix, c->plen);
    mg_buf_append(&keybuf, k, kl);
    arg(a, keybuf.data, keybuf.len);
}

/* Appends the command for op to out. eval: send the script itself (EVAL),
 * not its digest. str/slen: the string of a SET. */
static void encode(const client_t *c, const mg_redis_op_t *op, int eval, const char *str,
                   size_t slen, mg_buf_t *out)
{
    args_t a = { 0 };
    mg_buf_t val = { 0 };
    switch (op->kind) {
    case K_GET:
        arg_s(&a, "GET");
        arg_key(&a, c, op->key, op->klen);
        break;
    case K_DEL:
        arg_s(&a, "DEL");
        arg_key(&a, c, op->key, op->klen);
        break;
    case K_SET:
        arg_s(&a, "SET");
        arg_key(&a, c, op->key, op->klen);
        if ((int)op->a == MG_SHARED_STRING) {
            mg_buf_append(&val, "s:", 2);
            mg_buf_append(&val, str, slen);
            arg(&a, val.data, val.len);
        } else {
            arg_num(&a, op->b);
        }
        if (op->c > 0) {
            arg_s(&a, "PX");
            arg_num(&a, ttl_ms(op->c));
        }
        break;
    case K_INCR:
    case K_RESERVE:
    case K_SETTLE:
    case K_FETCH:
        if (eval) {
            arg_s(&a, "EVAL");
            arg(&a, SCRIPT, sizeof SCRIPT - 1);
        } else {
            arg_s(&a, "EVALSHA");
            arg(&a, script_sha, 40);
        }
        arg_s(&a, "1");
        arg_key(&a, c, op->key, op->klen);
        if (op->kind == K_INCR) {
            arg_s(&a, "incr");
            arg_num(&a, op->a);
            arg_num(&a, ttl_ms(op->b));
        } else if (op->kind == K_RESERVE) {
            arg_s(&a, "reserve");
            arg_num(&a, op->a);
            arg_num(&a, op->b);
            arg_num(&a, ttl_ms(op->c));
        } else if (op->kind == K_SETTLE) {
            arg_s(&a, "settle");
            arg_num(&a, op->a);
            arg_num(&a, op->b);
        } else {
            arg_s(&a, "fetch");
        }
        break;
    default:
        break;
    }
    mg_resp_command(out, a.n, a.v, a.l);
    mg_buf_free(&val);
}

/* ======================== replies ======================== */

/* A stored value: "s:..." a string, a number's text a number; anything else
 * (written by someone else) a string as it is. */
static void decode_value(const char *s, size_t len, int *type, double *num, char **str,
                         size_t *slen)
{
    if (len >= 2 && s[0] == 's' && s[1] == ':') {
        *type = MG_SHARED_STRING;
        *str = mg_xstrndup(s + 2, len - 2);
        *slen = len - 2;
        return;
    }
    if (len > 0 && len < 40) {
        char b[40], *end;
        memcpy(b, s, len);
        b[len] = '\0';
        double x = strtod(b, &end);
        if (end == b + len) {
            *type = MG_SHARED_NUMBER;
            *num = x;
            return;
        }
    }
    *type = MG_SHARED_STRING;
    *str = mg_xstrndup(s, len);
    *slen = len;
}

static double item_num(const mg_resp_item_t *it)
{
    if (it->type == MG_RESP_INTEGER) return (double)it->integer;
    if (it->type != MG_RESP_BULK && it->type != MG_RESP_STATUS) return 0;
    char b[40];
    size_t l = it->len < sizeof b - 1 ? it->len : sizeof b - 1;
    memcpy(b, it->str, l);
    b[l] = '\0';
    return strtod(b, NULL);
}

/* Error replies that mean "Redis cannot serve now" rather than "this command
 * is wrong": the same as an outage for fail_open. */
static int transient_error(const char *s, size_t len)
{
    static const char *const words[] = { "LOADING", "BUSY", "MASTERDOWN", "READONLY", "TRYAGAIN",
                                         "CLUSTERDOWN", "NOAUTH", NULL };
    for (int i = 0; words[i]; i++) {
        size_t wl = strlen(words[i]);
        if (len >= wl && memcmp(s, words[i], wl) == 0) return 1;
    }
    return 0;
}

/* Fills op's result from reply. Returns its status. */
static int read_result(mg_redis_op_t *op, const mg_resp_t *r)
{
    const mg_resp_item_t *v = &r->v;
    if (v->type == MG_RESP_ERROR) {
        free(op->str);
        op->str = mg_xstrndup(v->str, v->len);
        op->slen = v->len;
        return transient_error(v->str, v->len) ? MG_REDIS_DOWN : MG_REDIS_ERROR;
    }
    switch (op->kind) {
    case K_GET:
        op->type = MG_SHARED_MISSING;
        if (v->type == MG_RESP_BULK) decode_value(v->str, v->len, &op->type, &op->num, &op->str, &op->slen);
        return MG_REDIS_OK;
    case K_SET:
        return MG_REDIS_OK;
    case K_DEL:
        op->rc = v->type == MG_RESP_INTEGER && v->integer > 0;
        return MG_REDIS_OK;
    case K_INCR:
    case K_RESERVE:
    case K_SETTLE:
        if (v->type != MG_RESP_ARRAY || r->nelem < 1) return MG_REDIS_ERROR;
        op->rc = (int)item_num(&r->elem[0]);
        op->type = MG_SHARED_NUMBER;
        if (r->nelem >= 2) op->num = item_num(&r->elem[1]);
        return MG_REDIS_OK;
    case K_FETCH:
        if (v->type != MG_RESP_ARRAY || r->nelem < 1) return MG_REDIS_ERROR;
        if (item_num(&r->elem[0]) == 0) {
            mg_shared_delete(op->key, op->klen);
        } else if (r->nelem >= 3 && r->elem[1].type == MG_RESP_BULK) {
            int type;
            double num = 0;
            char *str = NULL;
            size_t slen = 0;
            decode_value(r->elem[1].str, r->elem[1].len, &type, &num, &str, &slen);
            double pttl = item_num(&r->elem[2]);
            mg_shared_set(op->key, op->klen, type, num, str, slen, pttl > 0 ? pttl / 1000.0 : 0);
            free(str);
        }
        return MG_REDIS_OK;
    default:
        return MG_REDIS_OK;
    }
}

/* A write of op's key is queued behind op (a mirrored key changed here). */
static int written_after(const mg_redis_op_t *op)
{
    for (const mg_redis_op_t *o = op->next; o != NULL; o = o->next) {
        if (o->kind >= K_SET && o->kind <= K_SETTLE && o->klen == op->klen &&
            memcmp(o->key, op->key, op->klen) == 0)
            return 1;
    }
    return 0;
}

static void on_reply(client_t *c, const mg_resp_t *r)
{
    mg_redis_op_t *op = c->fifo.head;
    if (op == NULL) {
        drop(c, MG_REDIS_DOWN, "a reply nobody asked for");
        return;
    }
    const mg_resp_item_t *v = &r->v;
    if (op->kind >= K_AUTH) {
        if (v->type == MG_RESP_ERROR) {
            char why[160];
            snprintf(why, sizeof why, "%s refused: %.*s",
                     op->kind == K_AUTH ? "AUTH" : op->kind == K_SELECT ? "SELECT"
                     : op->kind == K_NAME ? "CLIENT SETNAME" : "SCRIPT LOAD",
                     (int)(v->len > 100 ? 100 : v->len), v->str);
            drop(c, MG_REDIS_DOWN, why);
            return;
        }
        int last = op->kind == K_LOAD;
        complete(c, op, MG_REDIS_OK);
        if (last) {
            c->state = ST_READY;
            c->backoff = 0.1;
            c->why[0] = '\0';
            set_up(c, 1);
        }
        return;
    }
    if (v->type == MG_RESP_ERROR && v->len >= 8 && memcmp(v->str, "NOSCRIPT", 8) == 0 &&
        (op->kind == K_INCR || op->kind == K_RESERVE || op->kind == K_SETTLE || op->kind == K_FETCH)) {
        /* the script is gone (SCRIPT FLUSH, a failover): send it whole; it
         * goes to the end of the pipeline, with a fresh deadline */
        list_unlink(&c->fifo, op);
        encode(c, op, 1, NULL, 0, &c->wbuf);
        op->deadline = mg_monotonic() + c->timeout;
        list_push(&c->fifo, op);
        arm_timer(c);
        flush(c);
        return;
    }
    if (op->kind == K_FETCH && written_after(op)) {
        /* this thread changed the key after asking: the answer is older
         * than what the local store has */
        complete(c, op, MG_REDIS_OK);
    } else {
        complete(c, op, read_result(op, r));
    }
    arm_timer(c);
}

/* ======================== the connection ======================== */

static void on_timer(uv_timer_t *t)
{
    client_t *c = t->data;
    double now = mg_monotonic();
    if ((c->state == ST_RESOLVING || c->state == ST_CONNECTING) && now >= c->connect_deadline) {
        drop(c, MG_REDIS_TIMEOUT, "no connection within cluster.connect_timeout");
        return;
    }
    if (c->fifo.head && now >= c->fifo.head->deadline) {
        drop(c, MG_REDIS_TIMEOUT, "no answer within cluster.timeout");
        return;
    }
    arm_timer(c);
}

/* The timer goes off at the earliest deadline: the FIFO head's (deadlines
 * only grow along the FIFO: each is set to now + timeout when the op joins
 * it) or the connection attempt's. */
static void arm_timer(client_t *c)
{
    if (!c->timer_init) return;
    double next = 0;
    if (c->state == ST_RESOLVING || c->state == ST_CONNECTING) next = c->connect_deadline;
    if (c->fifo.head && (next == 0 || c->fifo.head->deadline < next)) next = c->fifo.head->deadline;
    if (next == 0) {
        uv_timer_stop(&c->timer);
        return;
    }
    double ms = ceil((next - mg_monotonic()) * 1000);
    uv_timer_start(&c->timer, on_timer, ms < 1 ? 1 : (uint64_t)ms, 0);
}

static void on_written(uv_write_t *req, int status)
{
    conn_t *conn = req->data;
    conn->writing = 0;
    mg_buf_reset(&conn->wdata);
    client_t *c = conn->c;
    if (c == NULL) return;           /* dropped meanwhile: the close callback frees it */
    if (status < 0) {
        drop(c, MG_REDIS_DOWN, uv_strerror(status));
        return;
    }
    flush(c);
}

/* Writes what is queued, one write at a time: what comes meanwhile waits in
 * wbuf and goes out together (pipelining does the batching). */
static void flush(client_t *c)
{
    conn_t *conn = c->conn;
    if (conn == NULL || !conn->connected || conn->writing || c->wbuf.len == 0) return;
    mg_buf_t t = conn->wdata;
    conn->wdata = c->wbuf;
    c->wbuf = t;
    uv_buf_t b = uv_buf_init(conn->wdata.data, (unsigned)conn->wdata.len);
    conn->wreq.data = conn;
    int rc = uv_write(&conn->wreq, (uv_stream_t *)&conn->tcp, &b, 1, on_written);
    if (rc < 0) {
        mg_buf_reset(&conn->wdata);
        drop(c, MG_REDIS_DOWN, uv_strerror(rc));
        return;
    }
    conn->writing = 1;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    conn_t *conn = (conn_t *)h;
    (void)suggested;
    mg_buf_reserve(&conn->rbuf, 16384);
    *buf = uv_buf_init(conn->rbuf.data + conn->rbuf.len, (unsigned)(conn->rbuf.cap - conn->rbuf.len));
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    conn_t *conn = (conn_t *)s;
    client_t *c = conn->c;
    (void)buf;
    if (c == NULL) return;
    if (nread < 0) {
        drop(c, MG_REDIS_DOWN, nread == UV_EOF ? "Redis closed the connection" : uv_strerror((int)nread));
        return;
    }
    conn->rbuf.len += (size_t)nread;
    size_t off = 0;
    while (off < conn->rbuf.len) {
        mg_resp_t r;
        long n = mg_resp_parse(conn->rbuf.data + off, conn->rbuf.len - off, &r);
        if (n == 0) break;
        if (n < 0) {
            drop(c, MG_REDIS_DOWN, "not the Redis protocol");
            return;
        }
        off += (size_t)n;
        on_reply(c, &r);
        if (c->conn != conn) return;   /* the reply dropped the connection */
    }
    mg_buf_consume(&conn->rbuf, off);
}

static void push_handshake(client_t *c, list_t *l, mg_buf_t *out, int kind, int argc,
                           const char *const *argv)
{
    size_t lens[4];
    for (int i = 0; i < argc; i++) lens[i] = strlen(argv[i]);
    mg_resp_command(out, argc, argv, lens);
    mg_redis_op_t *op = op_new(kind, 0, NULL, 0, 0, 0, 0);
    op->in_fifo = 1;
    /* before the queued ops' deadlines, as its place in the FIFO is */
    op->deadline = c->fifo.head && c->fifo.head->deadline < mg_monotonic() + c->timeout
                       ? c->fifo.head->deadline
                       : mg_monotonic() + c->timeout;
    list_push(l, op);
}

static void on_connect(uv_connect_t *req, int status)
{
    conn_t *conn = req->data;
    client_t *c = conn->c;
    if (c == NULL) return;
    if (status < 0) {
        drop(c, MG_REDIS_DOWN, uv_strerror(status));
        return;
    }
    conn->connected = 1;
    uv_tcp_nodelay(&conn->tcp, 1);
    uv_tcp_keepalive(&conn->tcp, 1, 30);
    uv_read_start((uv_stream_t *)&conn->tcp, on_alloc, on_read);
    /* the handshake goes before what was queued meanwhile, on the wire and
     * in the FIFO */
    mg_buf_t hs = { 0 };
    list_t l = { 0 };
    if (c->password) {
        if (c->user) {
            const char *av[] = { "AUTH", c->user, c->password };
            push_handshake(c, &l, &hs, K_AUTH, 3, av);
        } else {
            const char *av[] = { "AUTH", c->password };
            push_handshake(c, &l, &hs, K_AUTH, 2, av);
        }
    }
    if (c->db != 0) {
        char db[16];
        snprintf(db, sizeof db, "%d", c->db);
        const char *av[] = { "SELECT", db };
        push_handshake(c, &l, &hs, K_SELECT, 2, av);
    }
    char name[32];
    snprintf(name, sizeof name, "moongate-%d", c->w ? c->w->index : 0);
    const char *nv[] = { "CLIENT", "SETNAME", name };
    push_handshake(c, &l, &hs, K_NAME, 3, nv);
    const char *lv[] = { "SCRIPT", "LOAD", SCRIPT };
    push_handshake(c, &l, &hs, K_LOAD, 3, lv);
    mg_buf_append(&hs, c->wbuf.data, c->wbuf.len);
    mg_buf_free(&c->wbuf);
    c->wbuf = hs;
    if (c->fifo.head) {
        l.tail->next = c->fifo.head;
        c->fifo.head->prev = l.tail;
        l.tail = c->fifo.tail;
    }
    c->fifo = l;
    c->state = ST_HANDSHAKE;
    arm_timer(c);
    flush(c);
}

static void do_connect(client_t *c, const struct sockaddr *sa)
{
    conn_t *conn = mg_xcalloc(1, sizeof *conn);
    conn->c = c;
    uv_tcp_init(c->w ? &c->w->loop : uv_default_loop(), &conn->tcp);
    uv_unref((uv_handle_t *)&conn->tcp);
    c->conn = conn;
    c->state = ST_CONNECTING;
    conn->creq.data = conn;
    int rc = uv_tcp_connect(&conn->creq, &conn->tcp, sa, on_connect);
    if (rc < 0) drop(c, MG_REDIS_DOWN, uv_strerror(rc));
}

static void release(client_t *c);

typedef struct {
    uv_getaddrinfo_t req;
    client_t        *c;
} lookup_t;

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    lookup_t *lk = (lookup_t *)req;
    client_t *c = lk->c;
    free(lk);
    c->resolving = 0;
    if (c->state == ST_RESOLVING) {
        if (status < 0 || res == NULL) {
            char why[160];
            snprintf(why, sizeof why, "cannot resolve %.100s: %s", c->host, uv_strerror(status));
            drop(c, MG_REDIS_DOWN, why);
        } else {
            do_connect(c, res->ai_addr);
        }
    }
    if (res) uv_freeaddrinfo(res);
    release(c);
}

static void connect_start(client_t *c)
{
    c->connect_deadline = mg_monotonic() + c->connect_timeout;
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    if (uv_ip4_addr(c->host, c->port, (struct sockaddr_in *)&ss) == 0 ||
        uv_ip6_addr(c->host, c->port, (struct sockaddr_in6 *)&ss) == 0) {
        do_connect(c, (struct sockaddr *)&ss);
        if (c->state == ST_CONNECTING) arm_timer(c);
        return;
    }
    lookup_t *lk = mg_xcalloc(1, sizeof *lk);
    lk->c = c;
    char port[16];
    snprintf(port, sizeof port, "%d", c->port);
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    c->state = ST_RESOLVING;
    c->refs++;
    c->resolving = 1;
    int rc = uv_getaddrinfo(&c->w->loop, &lk->req, on_resolved, c->host, port, &hints);
    if (rc < 0) {
        free(lk);
        c->refs--;
        c->resolving = 0;
        char why[160];
        snprintf(why, sizeof why, "cannot resolve %.100s: %s", c->host, uv_strerror(rc));
        drop(c, MG_REDIS_DOWN, why);
        return;
    }
    arm_timer(c);
}

/* ======================== the blocking path ======================== */

static void sync_close(client_t *c)
{
    if (c->sync_fd >= 0) close(c->sync_fd);
    c->sync_fd = -1;
    mg_buf_free(&c->sync_in);
}

/* Waits for fd to be ready for events until the monotonic deadline: 1, 0
 * (timed out) or -1. */
static int wait_fd(int fd, short events, double deadline)
{
    for (;;) {
        double left = deadline - mg_monotonic();
        if (left <= 0) return 0;
        struct pollfd p = { .fd = fd, .events = events };
        int rc = poll(&p, 1, (int)ceil(left * 1000));
        if (rc > 0) return 1;
        if (rc == 0) return 0;
        if (errno != EINTR) return -1;
    }
}

/* Sends cmd and reads one reply into *r (pointing into c->sync_in). 0, or -1
 * (the connection is closed then). */
static int sync_roundtrip(client_t *c, const mg_buf_t *cmd, mg_resp_t *r, double deadline)
{
    size_t off = 0;
    while (off < cmd->len) {
        ssize_t n = send(c->sync_fd, cmd->data + off, cmd->len - off, MSG_NOSIGNAL);
        if (n > 0) {
            off += (size_t)n;
        } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            if (wait_fd(c->sync_fd, POLLOUT, deadline) <= 0) goto fail;
        } else {
            goto fail;
        }
    }
    mg_buf_reset(&c->sync_in);
    for (;;) {
        if (c->sync_in.len > 0) {
            long n = mg_resp_parse(c->sync_in.data, c->sync_in.len, r);
            if (n > 0) return 0;
            if (n < 0) goto fail;
        }
        mg_buf_reserve(&c->sync_in, 16384);
        ssize_t n = recv(c->sync_fd, c->sync_in.data + c->sync_in.len, c->sync_in.cap - c->sync_in.len, 0);
        if (n > 0) {
            c->sync_in.len += (size_t)n;
        } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            if (wait_fd(c->sync_fd, POLLIN, deadline) <= 0) goto fail;
        } else {
            goto fail;
        }
    }
fail:
    sync_close(c);
    return -1;
}

static int sync_simple(client_t *c, int argc, const char *const *argv, double deadline)
{
    size_t lens[4];
    for (int i = 0; i < argc; i++) lens[i] = strlen(argv[i]);
    mg_buf_t cmd = { 0 };
    mg_resp_command(&cmd, argc, argv, lens);
    mg_resp_t r;
    int rc = sync_roundtrip(c, &cmd, &r, deadline);
    mg_buf_free(&cmd);
    if (rc == 0 && r.v.type == MG_RESP_ERROR) {
        sync_close(c);
        return -1;
    }
    return rc;
}

static int sync_open(client_t *c, double deadline)
{
    char port[16];
    snprintf(port, sizeof port, "%d", c->port);
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(c->host, port, &hints, &res) != 0 || res == NULL) return -1;
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        freeaddrinfo(res);
        return -1;
    }
    int rc = connect(fd, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    if (rc != 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    if (rc != 0) {
        int err = 0;
        socklen_t el = sizeof err;
        if (wait_fd(fd, POLLOUT, deadline) <= 0 ||
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0 || err != 0) {
            close(fd);
            return -1;
        }
    }
    int on = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    c->sync_fd = fd;
    if (c->password) {
        const char *av3[] = { "AUTH", c->user, c->password };
        const char *av2[] = { "AUTH", c->password };
        if (sync_simple(c, c->user ? 3 : 2, c->user ? av3 : av2, deadline) != 0) return -1;
    }
    if (c->db != 0) {
        char db[16];
        snprintf(db, sizeof db, "%d", c->db);
        const char *av[] = { "SELECT", db };
        if (sync_simple(c, 2, av, deadline) != 0) return -1;
    }
    return 0;
}

/* One operation as a blocking round trip: the op is complete on return. */
static void sync_call(client_t *c, mg_redis_op_t *op, const char *str, size_t slen)
{
    int status = MG_REDIS_DOWN;
    for (int attempt = 0; attempt < 2 && status == MG_REDIS_DOWN; attempt++) {
        /* an idle connection Redis closed fails once: then a fresh one */
        double deadline = mg_monotonic() + c->timeout;
        int fresh = c->sync_fd < 0;
        if (fresh && mg_monotonic() < c->sync_retry_at) break;
        if (fresh && sync_open(c, mg_monotonic() + c->connect_timeout) != 0) {
            /* a Redis that cannot be reached is not tried again by every
             * call of a start-up that makes many */
            sync_close(c);
            c->sync_retry_at = mg_monotonic() + 1;
            break;
        }
        mg_buf_t cmd = { 0 };
        encode(c, op, 1, str, slen, &cmd);
        mg_resp_t r;
        int rc = sync_roundtrip(c, &cmd, &r, deadline);
        mg_buf_free(&cmd);
        if (rc == 0) status = read_result(op, &r);
        if (fresh) break;
    }
    op->status = status;
    op->done = 1;
    if (status == MG_REDIS_DOWN || status == MG_REDIS_TIMEOUT) count_unavailable();
    list_push(&c->done, op);
}

/* ======================== the FFI ======================== */

static void release(client_t *c)
{
    if (--c->refs > 0) return;
    pthread_mutex_lock(&reg.mu);
    reg.nclients--;
    pthread_mutex_unlock(&reg.mu);
    free(c->user);
    free(c->password);
    free(c->prefix);
    free(c);
}

static void on_handle_closed(uv_handle_t *h)
{
    release(h->data);
}

int mg_redis_start(const char *host, int port, const char *user, const char *password, int db,
                   const char *prefix, double timeout, double connect_timeout, int fail_open,
                   char *err, size_t errlen)
{
    mg_worker_t *w = mg_current;
    if (w == NULL || tc != NULL) {
        snprintf(err, errlen, "the Redis client is started once per thread, on its loop");
        return -1;
    }
    if (host == NULL || strlen(host) >= sizeof tc->host || port <= 0 || port > 65535) {
        snprintf(err, errlen, "bad Redis address");
        return -1;
    }
    pthread_once(&sha_once, compute_sha);
    metrics_declare();
    client_t *c = mg_xcalloc(1, sizeof *c);
    c->w = w;
    c->refs = 1;
    snprintf(c->host, sizeof c->host, "%s", host);
    c->port = port;
    c->user = user && *user ? strdup(user) : NULL;
    c->password = password && *password ? strdup(password) : NULL;
    c->prefix = strdup(prefix ? prefix : "");
    c->plen = strlen(c->prefix);
    c->db = db;
    c->fail_open = fail_open;
    c->timeout = timeout > 0 ? timeout : 0.25;
    c->connect_timeout = connect_timeout > 0 ? connect_timeout : 1;
    c->backoff = 0.1;
    c->sync_fd = -1;
    c->state = ST_DOWN;
    uv_timer_init(&w->loop, &c->timer);
    c->timer.data = c;
    uv_unref((uv_handle_t *)&c->timer);
    uv_timer_init(&w->loop, &c->retry);
    c->retry.data = c;
    uv_unref((uv_handle_t *)&c->retry);
    c->timer_init = c->retry_init = 1;
    pthread_mutex_lock(&reg.mu);
    reg.nclients++;
    if (reg.m_up >= 0) mg_metric_set(reg.m_up, "", 0, 0);
    pthread_mutex_unlock(&reg.mu);
    tc = c;
    connect_start(c);
    return 0;
}

/* Lua is closing (its state is going away with the thread): every operation
 * is dropped without a word, the handles are closed. */
void mg_redis_stop(void)
{
    client_t *c = tc;
    if (c == NULL) return;
    tc = NULL;
    c->state = ST_STOPPED;
    set_up(c, 0);
    if (c->conn) {
        c->conn->c = NULL;
        uv_close((uv_handle_t *)&c->conn->tcp, on_conn_closed);
        c->conn = NULL;
    }
    for (list_t *l = &c->fifo; l != NULL; l = l == &c->fifo ? &c->done : NULL) {
        while (l->head) {
            mg_redis_op_t *op = l->head;
            list_unlink(l, op);
            if (op->waiter > 0 && c->w) mg_worker_unqueue_ptr(c->w, op);
            op_free(op);
        }
    }
    mg_buf_free(&c->wbuf);
    sync_close(c);
    mg_buf_free(&keybuf);
    free(result_str);
    result_str = NULL;
    c->refs += 2;
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
    uv_close((uv_handle_t *)&c->retry, on_handle_closed);
    release(c);
}

int mg_redis_up(void)
{
    return tc != NULL && tc->state == ST_READY;
}

/* Queues op on the connection: refused (0) while it is down. */
static int submit(client_t *c, mg_redis_op_t *op, const char *str, size_t slen)
{
    if (c->state == ST_DOWN || c->state == ST_STOPPED) {
        count_unavailable();
        return 0;
    }
    encode(c, op, 0, str, slen, &c->wbuf);
    op->deadline = mg_monotonic() + c->timeout;
    op->in_fifo = 1;
    int first = c->fifo.head == NULL;
    list_push(&c->fifo, op);
    if (first) arm_timer(c);
    flush(c);
    return 1;
}

mg_redis_op_t *mg_redis_call(int64_t waiter, int op, const char *k, size_t kl, double a, double b,
                             double c, const char *str, size_t slen)
{
    client_t *cl = tc;
    if (cl == NULL || op < MG_REDIS_GET || op > MG_REDIS_SETTLE) return NULL;
    mg_redis_op_t *o = op_new(op, waiter, k, kl, a, b, c);
    if (waiter <= 0) {
        o->waiter = 0;
        sync_call(cl, o, str, slen);
        return o;
    }
    if (!submit(cl, o, str, slen)) {
        op_free(o);
        return NULL;
    }
    return o;
}

int mg_redis_result(mg_redis_op_t *op, int *rc, int *type, double *num, const char **str,
                    size_t *slen)
{
    client_t *c = tc;
    if (op == NULL || !op->done) return MG_REDIS_DOWN;
    if (c) list_unlink(&c->done, op);
    int status = op->status;
    *rc = op->rc;
    *type = op->type;
    *num = op->num;
    free(result_str);
    result_str = op->str;
    op->str = NULL;
    *str = result_str ? result_str : "";
    *slen = result_str ? op->slen : 0;
    free(op);
    return status;
}

int mg_redis_send(int op, const char *k, size_t kl, double a, double b, double c, const char *str,
                  size_t slen)
{
    client_t *cl = tc;
    if (cl == NULL || op < MG_REDIS_GET || op > MG_REDIS_SETTLE) return -1;
    mg_redis_op_t *o = op_new(op, 0, k, kl, a, b, c);
    if (!submit(cl, o, str, slen)) {
        op_free(o);
        return -1;
    }
    return 0;
}

int mg_redis_fetch(const char *k, size_t kl)
{
    client_t *cl = tc;
    if (cl == NULL || cl->state != ST_READY) return -1;   /* nothing to learn while it is not */
    mg_redis_op_t *o = op_new(K_FETCH, 0, k, kl, 0, 0, 0);
    if (!submit(cl, o, NULL, 0)) {
        op_free(o);
        return -1;
    }
    return 0;
}

int mg_redis_xadd(const char *stream, size_t sl, double maxlen, const char *const *argv,
                  const size_t *lens, int n)
{
    client_t *c = tc;
    if (c == NULL || n <= 0 || n % 2 != 0) return -1;
    if (c->state == ST_DOWN || c->state == ST_STOPPED) {
        count_unavailable();
        return -1;
    }
    mg_buf_t key = { 0 };
    mg_buf_append(&key, c->prefix, c->plen);
    mg_buf_append(&key, stream, sl);
    char ml[32];
    int mll = mg_resp_number(ml, maxlen > 0 ? floor(maxlen) : 1000000);
    /* the command's head, then the fields as they are */
    put_len(&c->wbuf, '*', (size_t)(6 + n));
    const char *head[] = { "XADD", key.data, "MAXLEN", "~", ml, "*" };
    size_t hl[] = { 4, key.len, 6, 1, (size_t)mll, 1 };
    for (int i = 0; i < 6; i++) put_bulk(&c->wbuf, head[i], hl[i]);
    for (int i = 0; i < n; i++) put_bulk(&c->wbuf, argv[i], lens[i]);
    mg_buf_free(&key);
    mg_redis_op_t *o = op_new(K_RAW, 0, NULL, 0, 0, 0, 0);
    o->deadline = mg_monotonic() + c->timeout;
    o->in_fifo = 1;
    int first = c->fifo.head == NULL;
    list_push(&c->fifo, o);
    if (first) arm_timer(c);
    flush(c);
    return 0;
}
