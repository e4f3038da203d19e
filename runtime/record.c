/* record.c — a finished request's two JSON lines: its ledger record (SPEC §8,
 * docs/ledger.md) and its access log line (SPEC §2 `access_log`).
 *
 * Lua fills one mg_record_t from ctx (lua/moongate/record.lua) and hands it
 * over once; the lines are written here, in C, because they are built on every
 * request and a string built of twenty pieces, with number formatting, was the
 * largest single cost of a request in Lua (docs: README "Performance"). The
 * fields are known and few, so this is a writer by hand, not a JSON library:
 * names are quoted with the escapes of JSON (control characters as \u00XX,
 * other bytes as they are), numbers are written from integers, so that a
 * record's cost and its aggregates agree to the last unit (1e-10 USD).
 *
 * Each line is built in a buffer of the calling thread, which stays valid
 * until that thread's next call (mg_record_line). */
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "buf.h"
#include "ffi.h"
#include "ledger.h"
#include "log.h"
#include "record.h"

static __thread mg_buf_t line;
static __thread int64_t  iso_sec = INT64_MIN;   /* the second iso_date was made for */
static __thread char     iso_date[20];          /* "YYYY-MM-DDTHH:MM:SS" */

/* every line starts with a reserve that fits a usual one: this stays a memcpy */
static inline void put(const char *s, size_t n)
{
    mg_buf_append(&line, s, n);
}

#define PUT(lit) put(lit, sizeof(lit) - 1)

static void put_uint(uint64_t v)
{
    mg_buf_append_uint(&line, v);
}

static void put_int(int64_t v)
{
    if (v < 0) {
        PUT("-");
        put_uint((uint64_t)0 - (uint64_t)v);
    } else {
        put_uint((uint64_t)v);
    }
}

/* v rounded to the nearest integer; 0 for NaN and what is not finite */
static int64_t round_int(double v)
{
    if (!(v == v) || v > 9e18 || v < -9e18) return 0;
    return (int64_t)floor(v + 0.5);
}

/* thousandths as "I.FFF" (milliseconds written from an integer count of them) */
static void put_milli(int64_t thousandths)
{
    if (thousandths < 0) {
        PUT("-");
        thousandths = -thousandths;
    }
    put_uint((uint64_t)(thousandths / 1000));
    char frac[4] = { '.', (char)('0' + thousandths / 100 % 10), (char)('0' + thousandths / 10 % 10),
                     (char)('0' + thousandths % 10) };
    put(frac, 4);
}

/* seconds as milliseconds with three decimals ("latency_ms":45.600); NaN or below 0: null */
static void put_ms(double seconds)
{
    if (!(seconds >= 0)) {
        PUT("null");
        return;
    }
    put_milli(round_int(seconds * 1e6));
}

/* A cost in 1e-10 USD as a plain decimal without trailing zeros: 9525000 -> 0.0009525 */
static void put_units(int64_t u)
{
    put_int(u / 10000000000LL);
    int64_t frac = u % 10000000000LL;
    if (frac == 0) return;
    char digits[11];
    digits[0] = '.';
    for (int i = 10; i >= 1; i--) {
        digits[i] = (char)('0' + frac % 10);
        frac /= 10;
    }
    size_t n = 11;
    while (digits[n - 1] == '0') n--;
    put(digits, n);
}

#define STR(r, f) mg_buf_json_string(&line, (r)->f, (r)->f##_len)

/* "2026-01-01T00:00:00.250Z" for a count of milliseconds since the epoch; the part up to the
 * second is made once per second */
static void put_iso(int64_t ms)
{
    int64_t sec = ms >= 0 ? ms / 1000 : (ms - 999) / 1000;
    if (sec != iso_sec) {
        time_t t = (time_t)sec;
        struct tm tm;
        gmtime_r(&t, &tm);
        strftime(iso_date, sizeof iso_date, "%Y-%m-%dT%H:%M:%S", &tm);
        iso_sec = sec;
    }
    PUT("\"");
    put(iso_date, strlen(iso_date));
    char frac[6] = { '.', (char)('0' + (ms - sec * 1000) / 100), (char)('0' + (ms - sec * 1000) / 10 % 10),
                     (char)('0' + (ms - sec * 1000) % 10), 'Z', '"' };
    put(frac, 6);
}

int64_t mg_record_cost_units(double cost_usd)
{
    if (!(cost_usd > 0)) return 0;
    double u = floor(cost_usd * 1e10 + 0.5);
    return u > 9e18 ? INT64_MAX : (int64_t)u;
}

static void put_cost(const mg_record_t *r)
{
    if (!r->has_cost) {
        PUT("null");
        return;
    }
    put_units(mg_record_cost_units(r->cost_usd));
}

static const char *const USAGE[] = { "none", "reported", "estimated" };

static int usage_of(const mg_record_t *r)
{
    return r->usage >= 0 && r->usage <= 2 ? r->usage : 0;
}

/* a token count as the lines and the aggregates have it: rounded, 0 without usage */
static int64_t tokens(const mg_record_t *r, double v)
{
    return usage_of(r) ? round_int(v) : 0;
}

const char *mg_record_ledger_line(const mg_record_t *r, size_t *len)
{
    mg_buf_reset(&line);
    mg_buf_reserve(&line, 640);
    int64_t ms = (int64_t)floor(r->time * 1000);   /* "time" and "ts" say the same millisecond */
    PUT("{\"id\":");
    STR(r, id);
    PUT(",\"time\":");
    put_milli(ms);
    PUT(",\"ts\":");
    put_iso(ms);
    PUT(",\"consumer\":");
    STR(r, consumer);
    PUT(",\"team\":");
    STR(r, team);
    PUT(",\"route\":");
    STR(r, route);
    PUT(",\"backend\":");
    STR(r, backend);
    PUT(",\"target\":");
    STR(r, target);
    PUT(",\"provider\":");
    STR(r, provider);
    PUT(",\"model\":");
    STR(r, model);
    PUT(",\"client_model\":");
    STR(r, client_model);
    PUT(",\"prompt_tokens\":");
    put_int(tokens(r, r->prompt));
    PUT(",\"completion_tokens\":");
    put_int(tokens(r, r->completion));
    PUT(",\"cached_tokens\":");
    put_int(tokens(r, r->cached));
    PUT(",\"usage\":\"");
    put(USAGE[usage_of(r)], strlen(USAGE[usage_of(r)]));
    PUT("\",\"cost_usd\":");
    put_cost(r);
    PUT(",\"status\":");
    put_int(r->status);
    PUT(",\"latency_ms\":");
    put_ms(r->latency);
    PUT(",\"ttfb_ms\":");
    put_ms(r->has_ttfb ? r->ttfb : -1);
    PUT(",\"attempts\":");
    put_int(r->attempts);
    PUT(",\"stream\":");
    if (r->stream) PUT("true");
    else PUT("false");
    PUT("}\n");
    *len = line.len;
    return line.data;
}

const char *mg_record_access_line(const mg_record_t *r, size_t *len)
{
    mg_buf_reset(&line);
    mg_buf_reserve(&line, 512);
    PUT("{\"time\":");
    put_iso(round_int(r->time * 1000));
    PUT(",\"id\":");
    STR(r, id);
    PUT(",\"remote\":");
    STR(r, remote);
    PUT(",\"method\":");
    STR(r, method);
    PUT(",\"path\":");
    STR(r, path);
    PUT(",\"consumer\":");
    STR(r, consumer);
    PUT(",\"team\":");
    STR(r, team);
    PUT(",\"route\":");
    STR(r, route);
    PUT(",\"target\":");
    STR(r, target);
    PUT(",\"model\":");
    STR(r, model);
    PUT(",\"status\":");
    put_int(r->status);
    PUT(",\"attempts\":");
    put_int(r->attempts);
    PUT(",\"prompt_tokens\":");
    put_int(tokens(r, r->prompt));
    PUT(",\"completion_tokens\":");
    put_int(tokens(r, r->completion));
    PUT(",\"cost_usd\":");
    put_cost(r);
    PUT(",\"bytes\":");
    put_uint(r->bytes);
    PUT(",\"latency_ms\":");
    put_ms(r->latency);
    PUT(",\"ttfb_ms\":");
    put_ms(r->has_ttfb ? r->ttfb : -1);
    PUT("}\n");
    *len = line.len;
    return line.data;
}

int mg_record_ledger(const mg_record_t *r)
{
    size_t n;
    const char *l = mg_record_ledger_line(r, &n);
    return mg_ledger_append(l, n, r->time, r->team, r->team_len, r->consumer, r->consumer_len,
                            r->model, r->model_len, r->provider, r->provider_len,
                            r->client_model, r->client_model_len,
                            (double)tokens(r, r->prompt),
                            (double)tokens(r, r->completion),
                            r->has_cost ? (double)mg_record_cost_units(r->cost_usd) : 0);
}

void mg_record_access(const mg_record_t *r)
{
    size_t n;
    const char *l = mg_record_access_line(r, &n);
    mg_access_log_write(l, n);
}

const char *mg_record_line(size_t *len)
{
    *len = line.len;
    return line.data;
}

void mg_record_thread_done(void)
{
    mg_buf_free(&line);
}
