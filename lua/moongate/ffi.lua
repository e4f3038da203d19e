-- moongate.ffi — the one ffi.cdef of the C functions Lua calls (runtime/ffi.h).
--
-- Keep this in step with runtime/ffi.h. Outside the moongate binary (busted
-- unit specs) the symbols do not exist: `available` is false and C is nil,
-- so modules that only need it on the request path can still be loaded.
local ffi = require("ffi")

local _M = { _VERSION = "0.1" }

ffi.cdef[[
typedef struct mg_req mg_req_t;
typedef struct mg_up mg_up_t;

const char *mg_req_method(mg_req_t *r, size_t *len);
const char *mg_req_target(mg_req_t *r, size_t *len);
int         mg_req_header_count(mg_req_t *r);
int         mg_req_header(mg_req_t *r, int i, const char **name, size_t *nlen,
                          const char **val, size_t *vlen);
const char *mg_req_body(mg_req_t *r, size_t *len);
const char *mg_req_remote(mg_req_t *r);
int         mg_req_http_minor(mg_req_t *r);
int         mg_req_alive(mg_req_t *r);
double      mg_req_start(mg_req_t *r);
void        mg_req_release(mg_req_t *r);

int mg_resp_start(mg_req_t *r, int status, const char *headers, size_t hlen, int64_t content_length);
int mg_resp_write(mg_req_t *r, const char *data, size_t len);
int mg_resp_finish(mg_req_t *r, int abort);
int mg_resp_status(mg_req_t *r);
int mg_resp_wait_drained(mg_req_t *r, int64_t waiter);
uint64_t mg_resp_bytes(mg_req_t *r);

mg_up_t *mg_up_start(mg_req_t *owner, int64_t waiter, const char *method, const char *url,
                     const char *headers, size_t hlen, const char *body, size_t blen,
                     double connect_timeout, double timeout, double idle_timeout,
                     const char *ca_file, int insecure, char *err, size_t errlen);
int      mg_up_status(mg_up_t *u);
int      mg_up_header_count(mg_up_t *u);
int      mg_up_header(mg_up_t *u, int i, const char **name, size_t *nlen,
                      const char **val, size_t *vlen);
int      mg_up_pipe(mg_up_t *u);
int      mg_up_stream(mg_up_t *u);
int      mg_up_relay(mg_up_t *u, int fmt, const char *pending, size_t plen);
long     mg_up_relayed(mg_up_t *u);
const char *mg_up_errmsg(mg_up_t *u);
double   mg_up_ttfb(mg_up_t *u);
int      mg_up_watch(mg_up_t *u, double first_byte, double idle);
void     mg_up_free(mg_up_t *u);

typedef struct mg_json_info {
    long model_off, model_len;
    int  model_escaped;
    int  stream;
    int  escaped_keys;
    long usage_off, usage_len;   /* the top-level "usage" value (any type), or off -1 */
    int    usage_plain;          /* usage[] holds its counts (-1: absent), see runtime/ffi.h */
    double usage[9];
} mg_json_info_t;
int mg_json_scan(const char *body, size_t len, mg_json_info_t *out);
long mg_utf8_chars(const char *s, size_t len);
long mg_text_chars(const char *s, size_t len);
long mg_text_bytes(const char *s, size_t len);
int mg_json_has_member(const char *s, size_t len, const char *key, size_t klen, int next);
int mg_json_first_key_is(const char *s, size_t len, const char *key, size_t klen);

void   mg_shared_init(size_t max_keys);
int    mg_shared_get(const char *k, size_t kl, double *num, const char **str, size_t *slen);
int    mg_shared_set(const char *k, size_t kl, int type, double num, const char *str,
                     size_t slen, double ttl);
int    mg_shared_delete(const char *k, size_t kl);
int    mg_shared_incr(const char *k, size_t kl, double n, double ttl, double *out);
int    mg_shared_reserve(const char *k, size_t kl, double n, double limit, double ttl,
                         double *remaining);
int    mg_shared_settle(const char *k, size_t kl, double reserved, double actual, double *out);
size_t mg_shared_count(void);

void mg_sha256(const void *data, size_t len, unsigned char out[32]);
int  mg_hmac_sha256(const void *key, size_t klen, const void *data, size_t len, unsigned char out[32]);
int  mg_const_eq(const void *a, const void *b, size_t len);
enum { MG_JWS_HS256 = 1, MG_JWS_RS256 = 2, MG_JWS_ES256 = 3 };
int  mg_jws_key_check(int alg, const void *k1, size_t k1len, const void *k2, size_t k2len,
                      char *err, size_t errlen);
int  mg_jws_verify(int alg, const void *k1, size_t k1len, const void *k2, size_t k2len,
                   const void *msg, size_t mlen, const void *sig, size_t slen,
                   char *err, size_t errlen);
int  mg_ledger_open(const char *data_dir, char *err, size_t errlen);
void mg_ledger_configure(double flush_interval, double snapshot_interval, double rotate_bytes);
int  mg_ledger_start(int snapshot_now, char *err, size_t errlen);
int  mg_ledger_count(double time, const char *team, size_t tl, const char *consumer, size_t cl,
                     const char *model, size_t ml, const char *provider, size_t pl,
                     const char *asked, size_t al, double prompt, double completion,
                     double cost_units);
int  mg_ledger_load(int dim, int level, double start, const char *key, size_t klen,
                    double requests, double prompt, double completion, double cost_units);
int  mg_ledger_query(int dim, double since, double until, double *eff_since, double *eff_until);
int  mg_ledger_group(int i, const char **key, size_t *klen, double *requests, double *prompt,
                     double *completion, double *cost_units);
char *mg_ledger_files(const char *dir, size_t *len);

typedef struct mg_record {
  const char *id, *consumer, *team, *route, *backend, *target, *provider, *model,
             *client_model, *remote, *method, *path;
  size_t      id_len, consumer_len, team_len, route_len, backend_len, target_len, provider_len,
              model_len, client_model_len, remote_len, method_len, path_len;
  double      time, latency, ttfb, prompt, completion, cached, cost_usd;
  uint64_t    bytes;
  int         has_ttfb, has_cost, usage, status, attempts, stream;
} mg_record_t;
int         mg_record_ledger(const mg_record_t *r);
void        mg_record_access(const mg_record_t *r);
const char *mg_record_line(size_t *len);
const char *mg_record_ledger_line(const mg_record_t *r, size_t *len);
const char *mg_record_access_line(const mg_record_t *r, size_t *len);
int64_t     mg_record_cost_units(double cost_usd);

double mg_now(void);
double mg_monotonic(void);
int    mg_sleep(int64_t waiter, double seconds);
void   mg_log_write(int level, const char *msg, size_t len);
void   mg_request_id(char out[33]);
int    mg_stopping(void);

int  mg_listen(const char *host, int port, int app, char *err, size_t errlen);
void mg_set_limits(double max_body, double max_header, int max_connections,
                   double header_timeout, double idle_timeout, double shutdown_timeout);
int  mg_access_log(const char *target);

int   mg_cpus_available(void);
int   mg_listen_prepare(const char *host, int port, int n, int app, char *err, size_t errlen);
typedef struct mg_tls_ctx mg_tls_ctx_t;
mg_tls_ctx_t *mg_tls_load(int n, const char *const *names, const char *const *certs,
                          const char *const *keys, int *bad, char *err, size_t errlen);
void  mg_tls_release(mg_tls_ctx_t *ctx);
int   mg_listen_tls(int set, mg_tls_ctx_t *ctx);
int   mg_workers_start(int n, char *err, size_t errlen);
int   mg_worker_index(void);
int   mg_worker_count(void);
void  mg_config_set(const char *src, size_t len);
char *mg_config_source(int *gen, size_t *len);
int   mg_reload_publish(const char *src, size_t len, int64_t waiter);
void  mg_reload_done(int gen, int ok, const char *msg, size_t len);
const char *mg_reload_errors(size_t *len);
void  mg_free(void *p);

int  mg_metric_declare(const char *name, int type, const char *help,
                       const double *buckets, int nbuckets);
void mg_metric_add(int id, const char *labels, size_t llen, double v);
void mg_metric_set(int id, const char *labels, size_t llen, double v);
void mg_metric_observe(int id, const char *labels, size_t llen, double v);
typedef struct mg_series mg_series_t;
mg_series_t *mg_metric_series(int id, const char *labels, size_t llen);
void mg_series_add(mg_series_t *s, double v);
void mg_series_set(mg_series_t *s, double v);
void mg_metric_hide_all(int id);
void mg_series_observe(mg_series_t *s, double v);
const char *mg_metrics_text(size_t *len);
]]

-- Redis (runtime/redis.c): gw.shared across instances (cluster.redis)
ffi.cdef[[
typedef struct mg_redis_op mg_redis_op_t;
int  mg_redis_start(const char *host, int port, const char *user, const char *password, int db,
                    const char *prefix, double timeout, double connect_timeout, int fail_open,
                    char *err, size_t errlen);
void mg_redis_stop(void);
int  mg_redis_up(void);
mg_redis_op_t *mg_redis_call(int64_t waiter, int op, const char *k, size_t kl, double a, double b,
                             double c, const char *str, size_t slen);
int  mg_redis_result(mg_redis_op_t *op, int *rc, int *type, double *num, const char **str,
                     size_t *slen);
int  mg_redis_send(int op, const char *k, size_t kl, double a, double b, double c,
                   const char *str, size_t slen);
int  mg_redis_fetch(const char *k, size_t kl);
int  mg_redis_xadd(const char *stream, size_t sl, double maxlen, const char *const *argv,
                   const size_t *lens, int n);
]]

local ok = pcall(function() return ffi.C.mg_now end)
_M.available = ok
-- C is a plain table in front of ffi.C: each function's cdata is looked up in ffi.C once, then
-- read like any table field. Interpreted Lua (most of a request's Lua runs in short bursts
-- between coroutine switches) pays ffi.C's __index metamethod on every C.x otherwise; compiled
-- code calls through the cached function as fast as through ffi.C.
if ok then
  _M.C = setmetatable({}, { __index = function(t, name)
    local fn = ffi.C[name]   -- an unknown name raises here, as ffi.C would
    rawset(t, name, fn)
    return fn
  end })
end

-- Shared scratch out-parameters: every call that uses them copies the result
-- into a Lua string before the next call, so one set per state is enough.
_M.sz1 = ffi.new("size_t[1]")
_M.sz2 = ffi.new("size_t[1]")
_M.cp1 = ffi.new("const char *[1]")
_M.cp2 = ffi.new("const char *[1]")
_M.errbuf = ffi.new("char[256]")
_M.int1 = ffi.new("int[1]")

return _M
