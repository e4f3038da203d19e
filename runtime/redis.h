/* redis.h — the RESP2 codec of the Redis client (redis.c), for its unit
 * tests (spec/c/test_redis.c). What Lua sees of the client is in ffi.h. */
#ifndef MG_REDIS_H
#define MG_REDIS_H

#include <stddef.h>

#include "buf.h"

/* Reply types: the RESP2 type byte, or MG_RESP_NIL for a nil bulk or array. */
enum {
    MG_RESP_NIL     = 0,
    MG_RESP_STATUS  = '+',
    MG_RESP_ERROR   = '-',
    MG_RESP_INTEGER = ':',
    MG_RESP_BULK    = '$',
    MG_RESP_ARRAY   = '*',
};

#define MG_RESP_MAXELEM 8     /* elements of a top-level array kept; the rest are skipped */
#define MG_RESP_MAXDEPTH 8    /* nesting beyond this is a protocol error */

typedef struct mg_resp_item {
    int         type;
    long long   integer;      /* MG_RESP_INTEGER; an array's element count */
    const char *str;          /* STATUS, ERROR, BULK: points into the parsed buffer */
    size_t      len;
} mg_resp_item_t;

typedef struct mg_resp {
    mg_resp_item_t v;                         /* the reply itself */
    int            nelem;                     /* a top-level array's element count */
    mg_resp_item_t elem[MG_RESP_MAXELEM];     /* its first elements (nested arrays: type only) */
} mg_resp_t;

/* Parses one complete reply at the start of buf. Returns the number of bytes
 * it takes (> 0) and fills out, whose strings point into buf; 0 when buf holds
 * only part of a reply (call again with more bytes); -1 when buf is not RESP2
 * (the connection must be dropped). Never reads past len. */
long mg_resp_parse(const char *buf, size_t len, mg_resp_t *out);

/* Appends one command (a RESP2 array of bulk strings) to out. */
void mg_resp_command(mg_buf_t *out, int argc, const char *const *argv, const size_t *lens);

/* A double as the shortest text that reads back as the same double ("%.17g"
 * trimmed: 3, 0.1, 1e+21); out needs 32 bytes. Returns the length. */
int mg_resp_number(char *out, double x);

#endif
