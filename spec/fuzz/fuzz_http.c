/* fuzz_http.c — the HTTP request path: bytes from a client through the same
 * parser and limits the server runs (mg_hp_*, runtime/http.c), split into
 * reads as a socket would deliver them, pipelined requests included. Every
 * complete request is checked for consistency and its body goes through the
 * JSON scanner, as the server does with a POST body.
 *
 * Input: byte 0 chooses the read size (0: all at once, else 1..255 bytes);
 * the rest is what the client sent. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ffi.h"
#include "worker.h"

static mg_limits_t limits = {
    .max_body = 64 * 1024, .max_header = 8 * 1024, .max_connections = 1,
    .header_timeout_ms = 1000, .idle_timeout_ms = 1000,
};

#define REQUIRE(c) do { if (!(c)) __builtin_trap(); } while (0)

static void check_request(mg_req_t *r)
{
    REQUIRE(r->complete);
    REQUIRE((size_t)r->url_off + r->url_len <= r->head.len);
    REQUIRE(r->url_len <= 8192);
    REQUIRE(r->body.len <= limits.max_body);
    REQUIRE(r->nhdrs <= 256);
    size_t sz;
    const char *m = mg_req_method(r, &sz);
    REQUIRE(m != NULL);
    for (int i = 0; i < mg_req_header_count(r); i++) {
        const char *name, *val;
        size_t nl, vl;
        REQUIRE(mg_req_header(r, i, &name, &nl, &val, &vl) == 0);
        REQUIRE(name >= r->head.data && name + nl <= r->head.data + r->head.len);
        for (size_t k = 0; k < nl; k++) REQUIRE(!(name[k] >= 'A' && name[k] <= 'Z'));
        REQUIRE(vl == 0 || (val >= r->head.data && val + vl <= r->head.data + r->head.len));
    }
    mg_json_info_t info;
    const char *body = mg_req_body(r, &sz);
    if (mg_json_scan(body, sz, &info) == 0 && info.model_off >= 0)
        REQUIRE((size_t)(info.model_off + info.model_len) <= sz);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    size_t step = data[0];
    data++;
    size--;
    mg_hp_t p;
    mg_hp_init(&p, &limits);
    size_t off = 0;
    for (int rounds = 0; off < size && rounds < 100000; rounds++) {
        size_t len = step && size - off > step ? step : size - off;
        char *piece = malloc(len);   /* its own allocation: ASan sees reads past it */
        memcpy(piece, data + off, len);
        size_t used = 0;
        int rc = mg_hp_execute(&p, piece, len, &used);
        REQUIRE(used <= len);
        if (rc == MG_HP_ERROR) {
            REQUIRE(p.status == 400 || p.status == 413 || p.status == 414 || p.status == 431 ||
                    p.status == 501);
            REQUIRE(strchr(p.message, '"') == NULL && strchr(p.message, '\\') == NULL);
            free(piece);
            break;
        }
        if (rc == MG_HP_REQUEST) {
            mg_req_t *r = mg_hp_take(&p);
            REQUIRE(r != NULL);
            check_request(r);
            mg_req_unref(r);
            mg_hp_resume(&p);
        } else {
            REQUIRE(used == len);
        }
        off += used;
        free(piece);
    }
    mg_hp_free(&p);
    return 0;
}
