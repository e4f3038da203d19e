/* fuzz_chunked.c — chunked request bodies: the input follows a fixed head
 * with Transfer-Encoding: chunked and goes through the server's parser
 * (mg_hp_*). Besides the sanitizers, one property: input that a strict
 * decoder written here accepts (hex sizes, simple extensions, no trailers)
 * must be accepted by the parser with exactly the same body — llhttp may be
 * more lenient, never different.
 *
 * Input: byte 0 chooses the read size (0: all at once, else 1..255 bytes). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "worker.h"

static mg_limits_t limits = {
    .max_body = 16 * 1024, .max_header = 8 * 1024, .max_connections = 1,
    .header_timeout_ms = 1000, .idle_timeout_ms = 1000,
};

static const char head[] = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                           "Transfer-Encoding: chunked\r\n\r\n";

#define REQUIRE(c) do { if (!(c)) __builtin_trap(); } while (0)

static int hexval(uint8_t c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int lower(uint8_t c) { return c >= 'a' && c <= 'z'; }
static int alnum(uint8_t c) { return lower(c) || (c >= '0' && c <= '9'); }

/* 1 when d starts with a strictly framed chunked body ending "0\r\n\r\n",
 * its decoded bytes in out (*olen); 0 otherwise. */
static int strict(const uint8_t *d, size_t n, uint8_t *out, size_t cap, size_t *olen)
{
    size_t i = 0;
    *olen = 0;
    for (;;) {
        size_t size = 0, digits = 0;
        while (i < n && hexval(d[i]) >= 0 && digits < 6) {
            size = size * 16 + (size_t)hexval(d[i++]);
            digits++;
        }
        if (digits == 0 || (i < n && hexval(d[i]) >= 0)) return 0;
        /* ;name, ;name="value", and ;name=value last of all: llhttp 8.1 refuses
         * an unquoted value followed by another extension (a found and kept
         * difference: spec/fuzz/chunked/regress_ext_value_then_ext) */
        while (i < n && d[i] == ';') {
            i++;
            size_t s = i;
            while (i < n && lower(d[i])) i++;
            if (i == s) return 0;
            if (i < n && d[i] == '=') {
                s = ++i;
                if (i < n && d[i] == '"') {
                    i++;
                    while (i < n && alnum(d[i])) i++;
                    if (i >= n || d[i] != '"') return 0;
                    i++;
                } else {
                    while (i < n && alnum(d[i])) i++;
                    if (i == s || (i < n && d[i] == ';')) return 0;
                }
            }
        }
        if (i + 2 > n || d[i] != '\r' || d[i + 1] != '\n') return 0;
        i += 2;
        if (size == 0) return i + 2 <= n && d[i] == '\r' && d[i + 1] == '\n';
        if (i + size + 2 > n || *olen + size > cap) return 0;
        memcpy(out + *olen, d + i, size);
        *olen += size;
        i += size;
        if (d[i] != '\r' || d[i + 1] != '\n') return 0;
        i += 2;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    size_t step = data[0];
    data++;
    size--;
    size_t total = sizeof head - 1 + size;
    char *all = malloc(total ? total : 1);
    memcpy(all, head, sizeof head - 1);
    memcpy(all + sizeof head - 1, data, size);

    static uint8_t expect[16 * 1024];
    size_t elen = 0;
    int must = strict(data, size, expect, sizeof expect, &elen);

    mg_hp_t p;
    mg_hp_init(&p, &limits);
    int got = 0;
    size_t off = 0;
    while (off < total) {
        size_t len = step && total - off > step ? step : total - off;
        char *piece = malloc(len);
        memcpy(piece, all + off, len);
        size_t used = 0;
        int rc = mg_hp_execute(&p, piece, len, &used);
        free(piece);
        if (rc == MG_HP_ERROR) break;
        if (rc == MG_HP_REQUEST) {
            mg_req_t *r = mg_hp_take(&p);
            REQUIRE(r->body.len <= limits.max_body);
            if (must) REQUIRE(r->body.len == elen && (elen == 0 || memcmp(r->body.data, expect, elen) == 0));
            mg_req_unref(r);
            got = 1;
            break;                    /* what follows would be another request */
        }
        off += used;
    }
    if (must) REQUIRE(got);
    mg_hp_free(&p);
    free(all);
    return 0;
}
