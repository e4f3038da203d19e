/* Unit tests for runtime/record.c: a request's ledger line and access log line,
 * written from an mg_record_t (what lua/moongate/record.lua fills it with:
 * spec/unit/ledger_spec.lua). */
#include <math.h>
#include <stdlib.h>

#include "ffi.h"
#include "test.h"

#define SET(r, f, s) ((r)->f = (s), (r)->f##_len = strlen(s))

static const double NOW = 1767225600.25;   /* 2026-01-01T00:00:00.250Z */

static mg_record_t full(void)
{
    mg_record_t r;
    memset(&r, 0, sizeof r);
    SET(&r, id, "req-1");
    SET(&r, consumer, "alice");
    SET(&r, team, "search");
    SET(&r, route, "chat");
    SET(&r, backend, "main");
    SET(&r, target, "openai/gpt-4o");
    SET(&r, provider, "openai");
    SET(&r, model, "gpt-4o");
    SET(&r, client_model, "gpt-4o-client");
    SET(&r, remote, "127.0.0.1");
    SET(&r, method, "POST");
    SET(&r, path, "/v1/chat/completions");
    r.time = NOW;
    r.latency = 0.0456;
    r.ttfb = 0.0123;
    r.has_ttfb = 1;
    r.usage = 1;
    r.prompt = 11;
    r.completion = 29;
    r.cached = 3;
    r.cost_usd = 0.0003175;
    r.has_cost = 1;
    r.bytes = 445;
    r.status = 200;
    r.attempts = 2;
    return r;
}

/* a line as a C string (the buffer it is in is reused by the next call) */
static const char *as_string(const char *l, size_t n)
{
    static char out[2048];
    CHECK(n < sizeof out);
    if (n >= sizeof out) n = sizeof out - 1;
    memcpy(out, l, n);
    out[n] = '\0';
    return out;
}

static const char *ledger_line(const mg_record_t *r)
{
    size_t n;
    const char *l = mg_record_ledger_line(r, &n);
    return as_string(l, n);
}

static const char *access_line(const mg_record_t *r)
{
    size_t n;
    const char *l = mg_record_access_line(r, &n);
    return as_string(l, n);
}

/* the "cost_usd" of a record with that cost */
static const char *cost_of(double cost)
{
    mg_record_t r = full();
    r.cost_usd = cost;
    const char *l = ledger_line(&r);
    static char out[64];
    const char *p = strstr(l, "\"cost_usd\":");
    const char *e = p ? strchr(p, ',') : NULL;
    if (p == NULL || e == NULL) return "?";
    p += strlen("\"cost_usd\":");
    snprintf(out, sizeof out, "%.*s", (int)(e - p), p);
    return out;
}

static void test_ledger_line(void)
{
    mg_record_t r = full();
    CHECK_STR(ledger_line(&r),
              "{\"id\":\"req-1\",\"time\":1767225600.250,\"ts\":\"2026-01-01T00:00:00.250Z\","
              "\"consumer\":\"alice\",\"team\":\"search\",\"route\":\"chat\",\"backend\":\"main\","
              "\"target\":\"openai/gpt-4o\",\"provider\":\"openai\",\"model\":\"gpt-4o\","
              "\"client_model\":\"gpt-4o-client\",\"prompt_tokens\":11,\"completion_tokens\":29,"
              "\"cached_tokens\":3,\"usage\":\"reported\",\"cost_usd\":0.0003175,\"status\":200,"
              "\"latency_ms\":45.600,\"ttfb_ms\":12.300,\"attempts\":2,\"stream\":false}\n");
    /* what is left once the record has gone */
    size_t n;
    const char *again = mg_record_line(&n);
    CHECK(n > 0 && again[n - 1] == '\n');
}

static void test_costs(void)
{
    CHECK_STR(cost_of(0.1 + 0.2), "0.3");            /* no float noise */
    CHECK_STR(cost_of(0.0009525), "0.0009525");
    CHECK_STR(cost_of(12), "12");
    CHECK_STR(cost_of(0), "0");
    CHECK_STR(cost_of(1e-10), "0.0000000001");
    CHECK_STR(cost_of(1.5), "1.5");
    CHECK_STR(cost_of(1e-12), "0");                  /* below one unit */
    CHECK(mg_record_cost_units(0.0009525) == 9525000);
    CHECK(mg_record_cost_units(-1) == 0);
    CHECK(mg_record_cost_units(NAN) == 0);
    mg_record_t r = full();
    r.has_cost = 0;                                  /* no cost plugin: unknown */
    CHECK(strstr(ledger_line(&r), "\"cost_usd\":null,") != NULL);
}

static void test_usage_and_nulls(void)
{
    mg_record_t r = full();
    r.usage = 2;
    r.prompt = 5.4;
    r.completion = 6.5;
    r.cached = 0;
    const char *l = ledger_line(&r);
    CHECK(strstr(l, "\"prompt_tokens\":5,\"completion_tokens\":7,\"cached_tokens\":0,"
                    "\"usage\":\"estimated\"") != NULL);
    r.usage = 0;                                     /* none: the figures are not read */
    l = ledger_line(&r);
    CHECK(strstr(l, "\"prompt_tokens\":0,\"completion_tokens\":0,\"cached_tokens\":0,"
                    "\"usage\":\"none\"") != NULL);

    mg_record_t e;
    memset(&e, 0, sizeof e);
    SET(&e, id, "x");
    SET(&e, model, "m");
    e.time = NOW;
    e.latency = 0.001;
    e.status = 499;
    e.stream = 1;
    CHECK_STR(ledger_line(&e),
              "{\"id\":\"x\",\"time\":1767225600.250,\"ts\":\"2026-01-01T00:00:00.250Z\","
              "\"consumer\":null,\"team\":null,\"route\":null,\"backend\":null,\"target\":null,"
              "\"provider\":null,\"model\":\"m\",\"client_model\":null,\"prompt_tokens\":0,"
              "\"completion_tokens\":0,\"cached_tokens\":0,\"usage\":\"none\",\"cost_usd\":null,"
              "\"status\":499,\"latency_ms\":1.000,\"ttfb_ms\":null,\"attempts\":0,\"stream\":true}\n");
}

static void test_times(void)
{
    mg_record_t r = full();
    r.time = 1767225600.9999;                        /* "time" and "ts": the same millisecond */
    const char *l = ledger_line(&r);
    CHECK(strstr(l, "\"time\":1767225600.999,\"ts\":\"2026-01-01T00:00:00.999Z\"") != NULL);
    r.time = 1767225601.0004;                        /* the next second */
    l = ledger_line(&r);
    CHECK(strstr(l, "\"time\":1767225601.000,\"ts\":\"2026-01-01T00:00:01.000Z\"") != NULL);
    r.latency = 1.23456789;
    r.ttfb = 0;
    l = ledger_line(&r);
    CHECK(strstr(l, "\"latency_ms\":1234.568,\"ttfb_ms\":0.000,") != NULL);
}

static void test_escapes(void)
{
    static const char nasty[] = "a\"b\\c\nd\re\tf\001g\177h\b\f\xc3\xa9";
    mg_record_t r = full();
    SET(&r, id, nasty);
    SET(&r, consumer, nasty);
    const char *l = ledger_line(&r);
    const char *want = "\"a\\\"b\\\\c\\nd\\re\\tf\\u0001g\\u007fh\\b\\f\xc3\xa9\"";
    char expect[256];
    snprintf(expect, sizeof expect, "{\"id\":%s,", want);
    CHECK(strncmp(l, expect, strlen(expect)) == 0);
    snprintf(expect, sizeof expect, "\"consumer\":%s,", want);
    CHECK(strstr(l, expect) != NULL);
    CHECK(strchr(l, '\n') == l + strlen(l) - 1);     /* one line, whatever a name holds */
    CHECK(strchr(l, '\r') == NULL);
    /* a NUL inside a name is written, not where the name ends */
    r.id = "a\0b";
    r.id_len = 3;
    CHECK(strncmp(ledger_line(&r), "{\"id\":\"a\\u0000b\",", 17) == 0);
}

static void test_access_line(void)
{
    mg_record_t r = full();
    CHECK_STR(access_line(&r),
              "{\"time\":\"2026-01-01T00:00:00.250Z\",\"id\":\"req-1\",\"remote\":\"127.0.0.1\","
              "\"method\":\"POST\",\"path\":\"/v1/chat/completions\",\"consumer\":\"alice\","
              "\"team\":\"search\",\"route\":\"chat\",\"target\":\"openai/gpt-4o\",\"model\":\"gpt-4o\","
              "\"status\":200,\"attempts\":2,\"prompt_tokens\":11,\"completion_tokens\":29,"
              "\"cost_usd\":0.0003175,\"bytes\":445,\"latency_ms\":45.600,\"ttfb_ms\":12.300}\n");
    mg_record_t e;
    memset(&e, 0, sizeof e);
    SET(&e, id, "x");
    SET(&e, method, "GET");
    SET(&e, path, "/nope");
    SET(&e, remote, "::1");
    e.time = NOW;
    e.latency = 0.001;
    e.status = 404;
    CHECK_STR(access_line(&e),
              "{\"time\":\"2026-01-01T00:00:00.250Z\",\"id\":\"x\",\"remote\":\"::1\",\"method\":\"GET\","
              "\"path\":\"/nope\",\"consumer\":null,\"team\":null,\"route\":null,\"target\":null,"
              "\"model\":null,\"status\":404,\"attempts\":0,\"prompt_tokens\":0,\"completion_tokens\":0,"
              "\"cost_usd\":null,\"bytes\":0,\"latency_ms\":1.000,\"ttfb_ms\":null}\n");
}

static void test_ledger_not_open(void)
{
    mg_record_t r = full();
    CHECK(mg_record_ledger(&r) == -1);               /* no mg_ledger_open: refused, nothing kept */
    size_t n;
    CHECK(mg_record_line(&n) != NULL && n > 0);      /* the line was still made (Redis gets it) */
}

TEST_MAIN(test_ledger_line, test_costs, test_usage_and_nulls, test_times, test_escapes,
          test_access_line, test_ledger_not_open)
