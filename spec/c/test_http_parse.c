/* Unit tests for the request parser in runtime/http.c (mg_hp_*): framing,
 * smuggling refusals and every client-controlled size. Inputs that the
 * fuzzers in spec/fuzz found to misbehave are kept here as regressions. */
#include <stdlib.h>

#include "ffi.h"
#include "test.h"
#include "worker.h"

static mg_limits_t limits = {
    .max_body = 1024, .max_header = 2048, .max_connections = 10,
    .header_timeout_ms = 1000, .idle_timeout_ms = 1000,
};

typedef struct {
    int       rc;          /* of the last execute */
    int       status;      /* MG_HP_ERROR: what the server answers */
    char      message[200];
    int       requests;    /* complete requests seen */
    mg_req_t *last;        /* the last one, kept for inspection (caller unrefs) */
} result_t;

/* Feeds s in pieces of `step` bytes (0: at once), like reads from a socket,
 * handing over each complete request and going on with the rest (pipelining). */
static result_t parse_steps(const char *s, size_t len, size_t step)
{
    result_t out = { 0 };
    mg_hp_t p;
    mg_hp_init(&p, &limits);
    size_t off = 0;
    char *copy = NULL;
    while (off < len) {
        size_t n = step ? (len - off < step ? len - off : step) : len - off;
        /* each piece in its own buffer, as separate reads would be */
        free(copy);
        copy = malloc(n);
        memcpy(copy, s + off, n);
        size_t used = 0;
        out.rc = mg_hp_execute(&p, copy, n, &used);
        if (out.rc == MG_HP_ERROR) {
            out.status = p.status;
            snprintf(out.message, sizeof out.message, "%s", p.message);
            break;
        }
        if (out.rc == MG_HP_REQUEST) {
            out.requests++;
            if (out.last) mg_req_unref(out.last);
            out.last = mg_hp_take(&p);
            mg_hp_resume(&p);
        }
        off += used;
    }
    free(copy);
    mg_hp_free(&p);
    return out;
}

static result_t parse(const char *s)
{
    return parse_steps(s, strlen(s), 0);
}

static void done(result_t *r)
{
    if (r->last) mg_req_unref(r->last);
    r->last = NULL;
}

/* The request is refused with status, and the message contains part. */
static void refused(const char *s, int status, const char *part)
{
    result_t r = parse(s);
    if (r.rc != MG_HP_ERROR || r.status != status || strstr(r.message, part) == NULL)
        fprintf(stderr, "expected %d \"%s\" for %.60s...: rc %d status %d \"%s\"\n", status, part,
                s, r.rc, r.status, r.message);
    CHECK(r.rc == MG_HP_ERROR && r.status == status);
    CHECK(strstr(r.message, part) != NULL);
    done(&r);
}

static void accepted(const char *s, int requests)
{
    result_t r = parse(s);
    if (r.requests != requests || r.rc == MG_HP_ERROR)
        fprintf(stderr, "expected %d request(s) for %.60s...: got %d, rc %d \"%s\"\n", requests, s,
                r.requests, r.rc, r.message);
    CHECK(r.requests == requests);
    CHECK(r.rc != MG_HP_ERROR);
    done(&r);
}

static void test_simple_and_pipelined(void)
{
    const char *req = "POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: h\r\nX-A: one\r\n"
                      "Content-Length: 5\r\n\r\nhello";
    for (size_t step = 0; step < 8; step++) {
        result_t r = parse_steps(req, strlen(req), step);
        CHECK(r.requests == 1);
        CHECK(r.last != NULL && r.last->body.len == 5 && memcmp(r.last->body.data, "hello", 5) == 0);
        CHECK(r.last != NULL && r.last->url_len == 24);
        CHECK(r.last != NULL && r.last->nhdrs == 3);
        if (r.last) {
            mg_hdr_t *h = &r.last->hdrs[1];
            CHECK(h->name_len == 3 && memcmp(r.last->head.data + h->name_off, "x-a", 3) == 0);
            CHECK(h->val_len == 3 && memcmp(r.last->head.data + h->val_off, "one", 3) == 0);
        }
        done(&r);
    }
    accepted("GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n", 2);
    accepted("GET / HTTP/1.0\r\n\r\n", 1);   /* HTTP/1.0 needs no Host */
}

static void test_chunked(void)
{
    result_t r = parse("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                       "5\r\nhello\r\n6;name=value\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n");
    CHECK(r.requests == 1);
    CHECK(r.last != NULL && r.last->body.len == 11 && memcmp(r.last->body.data, "hello world", 11) == 0);
    /* the trailer is not a header */
    CHECK(r.last != NULL && r.last->nhdrs == 2);
    done(&r);
}

/* Found by fuzz_chunked: llhttp 8.1 refuses an unquoted extension value
 * followed by another extension, whole or split. Refused is safe (and such
 * extensions are unheard of); the fuzzer's strict decoder leaves the shape out. */
static void test_chunk_extension_shapes(void)
{
    const char *head = "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";
    const char *ok[] = { "3;a\r\n", "3;a;b\r\n", "3;a=b\r\n", "3;a=\"b\";c\r\n", "3;a;b=c\r\n" };
    char buf[256];
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        snprintf(buf, sizeof buf, "%s%sabc\r\n0\r\n\r\n", head, ok[i]);
        for (size_t step = 0; step < 6; step++) {
            result_t r = parse_steps(buf, strlen(buf), step);
            CHECK(r.requests == 1 && r.last->body.len == 3);
            done(&r);
        }
    }
    snprintf(buf, sizeof buf, "%s3;a=b;c\r\nabc\r\n0\r\n\r\n", head);
    refused(buf, 400, "chunk size");
}

static void test_smuggling(void)
{
    refused("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
            "0\r\n\r\n", 400, "Transfer-Encoding");
    refused("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
            "0\r\n\r\n", 400, "Transfer-Encoding");
    refused("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
            400, "Content-Length");
    refused("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            400, "Content-Length");
    refused("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\nhello", 400, "Content-Length");
    refused("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\nhello", 400, "Content-Length");
    refused("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n", 400, "Content-Length");
    refused("POST / HTTP/1.1\r\nHost: h\r\nContent-Length : 5\r\n\r\nhello", 400, "malformed");
    refused("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\nxx", 400, "Transfer-Encoding");
    refused("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
            400, "Transfer-Encoding");
    refused("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
            501, "transfer coding");
    accepted("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", 1);
    /* obs-fold, also of a framing header */
    refused("GET / HTTP/1.1\r\nHost: h\r\nX-F: a\r\n b\r\n\r\n", 400, "folding");
    refused("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
            400, "malformed");
    /* the same split across reads at every position */
    {
        const char *f = "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n";
        for (size_t step = 1; step < 12; step++) {
            result_t r = parse_steps(f, strlen(f), step);
            CHECK(r.rc == MG_HP_ERROR && r.status == 400);
            done(&r);
        }
    }
    /* bare LF and bare CR */
    refused("GET / HTTP/1.1\r\nHost: h\nX-A: b\r\n\r\n", 400, "malformed");
    refused("GET / HTTP/1.1\nHost: h\r\n\r\n", 400, "malformed");
    for (size_t step = 1; step < 20; step++) {
        const char *lf = "GET / HTTP/1.1\nHost: h\r\n\r\n";
        result_t r = parse_steps(lf, strlen(lf), step);
        CHECK(r.rc == MG_HP_ERROR && r.status == 400);
        done(&r);
        const char *ok = "GET / HTTP/1.1\r\nHost: h\r\n\r\n";
        r = parse_steps(ok, strlen(ok), step);
        CHECK(r.requests == 1);
        done(&r);
    }
    refused("GET / HTTP/1.1\r\nHost: h\rX-A: b\r\n\r\n", 400, "malformed");
    /* a bare LF as the empty line that ends the header section, at every split, and in a
     * pipelined request after a good one; a body holding blank lines stays fine */
    for (size_t step = 0; step < 24; step++) {
        const char *bare = "GET / HTTP/1.1\r\nHost: h\r\n\nGET / HTTP/1.1\r\nHost: h\r\n\r\n";
        result_t r = parse_steps(bare, strlen(bare), step);
        CHECK(r.rc == MG_HP_ERROR && r.status == 400 && r.requests == 0);
        done(&r);
        const char *second = "GET / HTTP/1.1\r\nHost: h\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\n";
        r = parse_steps(second, strlen(second), step);
        CHECK(r.rc == MG_HP_ERROR && r.status == 400 && r.requests == 1);
        done(&r);
        const char *body = "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\n\r\na\n\n\nbc"
                           "GET / HTTP/1.1\r\nHost: h\r\n\r\n";
        r = parse_steps(body, strlen(body), step);
        CHECK(r.requests == 2 && r.rc != MG_HP_ERROR);
        done(&r);
    }
    refused("GET / HTTP/1.1\r\nHost: h\r\n\n", 400, "bare LF");
    {
        static const char nul[] = "GET / HTTP/1.1\r\nHost: h\r\nX-A: b\0c\r\n\r\n";
        result_t r = parse_steps(nul, sizeof nul - 1, 0);
        CHECK(r.rc == MG_HP_ERROR && r.status == 400);
        done(&r);
    }
    /* chunk framing */
    refused("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhi\r\n0\r\n\r\n",
            400, "chunk size");
    refused("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nhi\r\n0\r\n\r\n",
            400, "chunk size");
    refused("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0x2\r\nhi\r\n0\r\n\r\n",
            400, "malformed");
    refused("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            "fffffffffffffffffff\r\nhi\r\n0\r\n\r\n", 400, "malformed");
    refused("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhiXX0\r\n\r\n",
            400, "malformed");
    refused("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\nhi\r\n0\r\n\r\n",
            400, "malformed");
    /* Host */
    refused("GET / HTTP/1.1\r\n\r\n", 400, "no Host");
    refused("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "more than one Host");
    refused("GET / HTTP/1.0\r\nHost: a\r\nhost: b\r\n\r\n", 400, "more than one Host");
    /* versions and methods */
    refused("GET / HTTP/2.0\r\nHost: h\r\n\r\n", 400, "malformed");
    refused("GET / HTTP/0.9\r\nHost: h\r\n\r\n", 400, "malformed");
    refused("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n", 501, "CONNECT");
    refused("HELLO / HTTP/1.1\r\nHost: h\r\n\r\n", 400, "malformed");
}

/* An empty value ("X-A:" then the line's end, what an SDK sends for a header set to "") is a
 * value, not a fold: first, in the middle, last, with or without a space, at every split. */
static void test_empty_header_values(void)
{
    static const char *const shapes[] = {
        "POST / HTTP/1.1\r\nX-A:\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}",
        "POST / HTTP/1.1\r\nHost: h\r\nX-A:\r\nContent-Length: 2\r\n\r\n{}",
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nX-A:\r\n\r\n{}",
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nX-A: \r\n\r\n{}",
        "POST / HTTP/1.1\r\nHost: h\r\nX-A:\r\nX-B:\r\nContent-Length: 2\r\n\r\n{}",
    };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        for (size_t step = 0; step < 24; step++) {
            result_t r = parse_steps(shapes[i], strlen(shapes[i]), step);
            if (r.requests != 1) fprintf(stderr, "shape %zu step %zu: %s\n", i, step, r.message);
            CHECK(r.requests == 1 && r.rc != MG_HP_ERROR);
            if (r.last) {
                const char *name, *value;
                size_t nl, vl;
                int found = 0;
                for (int k = 0; k < mg_req_header_count(r.last); k++) {
                    mg_req_header(r.last, k, &name, &nl, &value, &vl);
                    if (nl == 3 && memcmp(name, "x-a", 3) == 0) found = vl == 0 ? 1 : -1;
                }
                CHECK(found == 1);   /* there, and empty */
                CHECK(r.last->body.len == 2);
            }
            done(&r);
        }
    }
    /* and a fold is still a fold, after an empty first line too */
    refused("GET / HTTP/1.1\r\nHost: h\r\nX-A:\r\n b\r\n\r\n", 400, "folding");
}

static void test_upgrade_closes(void)
{
    result_t r = parse("GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
                       "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    CHECK(r.requests == 1);
    CHECK(r.last != NULL && r.last->keepalive == 0);
    done(&r);
    r = parse("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
              "0\r\n\r\n");
    CHECK(r.last == NULL || r.last->keepalive == 0);
    done(&r);
}

static void test_limits(void)
{
    char big[8192];
    /* request target: min(max_header, 8 KB) -> 414 */
    snprintf(big, sizeof big, "GET /%0*d HTTP/1.1\r\nHost: h\r\n\r\n", 2100, 0);
    refused(big, 414, "request target");
    /* header section -> 431 */
    snprintf(big, sizeof big, "GET / HTTP/1.1\r\nHost: h\r\nX-Big: %0*d\r\n\r\n", 2100, 0);
    refused(big, 431, "max_header");
    /* header count -> 431 */
    limits.max_header = 64 * 1024;
    {
        static char many[16384];
        size_t off = (size_t)snprintf(many, sizeof many, "GET / HTTP/1.1\r\nHost: h\r\n");
        for (int i = 0; i < 300; i++) off += (size_t)snprintf(many + off, sizeof many - off, "a%d: b\r\n", i);
        snprintf(many + off, sizeof many - off, "\r\n");
        refused(many, 431, "too many request headers");
    }
    limits.max_header = 2048;
    /* trailers count against max_header */
    snprintf(big, sizeof big, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
             "1\r\na\r\n0\r\nX-T: %0*d\r\n\r\n", 2100, 0);
    refused(big, 431, "max_header");
    /* body: by Content-Length before any byte, by running total, by one chunk's size */
    refused("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1025\r\n\r\n", 413, "max_body");
    refused("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n401\r\n", 413, "max_body");
    {
        char body[4096];
        size_t off = (size_t)snprintf(body, sizeof body,
                                      "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n");
        for (int i = 0; i < 3; i++) {
            off += (size_t)snprintf(body + off, sizeof body - off, "190\r\n");
            memset(body + off, 'x', 400);
            off += 400;
            off += (size_t)snprintf(body + off, sizeof body - off, "\r\n");
        }
        body[off] = '\0';
        refused(body, 413, "max_body");
    }
    accepted("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1024\r\n\r\n", 0);
    /* chunk extensions: 1 KB per chunk */
    snprintf(big, sizeof big, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
             "1;e=%0*d\r\na\r\n0\r\n\r\n", 1100, 0);
    refused(big, 400, "chunk extension");
    snprintf(big, sizeof big, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
             "1;e=%0*d\r\na\r\n1;e=%0*d\r\nb\r\n0\r\n\r\n", 900, 0, 900, 0);
    accepted(big, 1);
}

static void test_refuse_when_stopping(void)
{
    mg_hp_t p;
    mg_hp_init(&p, &limits);
    p.refuse = 1;
    size_t used;
    const char *s = "GET / HTTP/1.1\r\nHost: h\r\n\r\n";
    CHECK(mg_hp_execute(&p, s, strlen(s), &used) == MG_HP_ERROR);
    CHECK(p.status == 503);
    mg_hp_free(&p);
}

static void test_messages_need_no_escaping(void)
{
    /* llhttp's reasons quote with backticks; nothing that breaks JSON gets through */
    result_t r = parse("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n");
    CHECK(r.rc == MG_HP_ERROR);
    CHECK(strchr(r.message, '"') == NULL && strchr(r.message, '\\') == NULL);
    done(&r);
}

static void test_flags(void)
{
    mg_hp_t p;
    mg_hp_init(&p, &limits);
    size_t used;
    const char *a = "POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n";
    CHECK(mg_hp_execute(&p, a, strlen(a), &used) == MG_HP_MORE);
    CHECK(p.began && p.headers_done && p.want_continue && !p.body_progress);
    CHECK(mg_hp_execute(&p, "h", 1, &used) == MG_HP_MORE);
    CHECK(!p.began && !p.headers_done && p.body_progress);
    CHECK(mg_hp_execute(&p, "iGET", 4, &used) == MG_HP_REQUEST);
    CHECK(used == 1);
    mg_req_t *r = mg_hp_take(&p);
    CHECK(r != NULL && r->complete);
    mg_req_unref(r);
    mg_hp_free(&p);
}

TEST_MAIN(test_simple_and_pipelined, test_chunked, test_chunk_extension_shapes, test_smuggling, test_empty_header_values, test_upgrade_closes, test_limits,
          test_refuse_when_stopping, test_messages_need_no_escaping, test_flags)
