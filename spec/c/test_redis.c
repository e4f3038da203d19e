/* Unit tests for runtime/redis.c's RESP2 codec: commands encoded byte-exact,
 * every reply type parsed, a reply cut at every byte reported incomplete
 * (never misread), pipelined replies taken one at a time, and malformed
 * input refused. The client itself is tested against a real redis-server by
 * spec/integration/cluster_spec.lua. */
#include <stdlib.h>

#include "redis.h"
#include "test.h"

static long parse(const char *s, mg_resp_t *r)
{
    return mg_resp_parse(s, strlen(s), r);
}

static int item_is(const mg_resp_item_t *it, int type, const char *s)
{
    return it->type == type && it->len == strlen(s) && memcmp(it->str, s, it->len) == 0;
}

static void test_command(void)
{
    mg_buf_t b = { 0 };
    const char *argv[] = { "SET", "moongate:k", "" , "a\r\nb" };
    size_t lens[] = { 3, 10, 0, 4 };
    mg_resp_command(&b, 4, argv, lens);
    const char want[] = "*4\r\n$3\r\nSET\r\n$10\r\nmoongate:k\r\n$0\r\n\r\n$4\r\na\r\nb\r\n";
    CHECK(b.len == sizeof want - 1 && memcmp(b.data, want, b.len) == 0);
    /* binary-safe: a NUL in an argument */
    mg_buf_reset(&b);
    const char *a2[] = { "x\0y" };
    size_t l2[] = { 3 };
    mg_resp_command(&b, 1, a2, l2);
    CHECK(b.len == 13 && memcmp(b.data, "*1\r\n$3\r\nx\0y\r\n", 13) == 0);
    /* long arguments get their length right */
    mg_buf_reset(&b);
    char big[12345];
    memset(big, 'z', sizeof big);
    const char *a3[] = { big };
    size_t l3[] = { sizeof big };
    mg_resp_command(&b, 1, a3, l3);
    CHECK(memcmp(b.data, "*1\r\n$12345\r\n", 12) == 0 && b.len == 12 + sizeof big + 2);
    mg_buf_free(&b);
}

static void test_number(void)
{
    char b[32];
    CHECK(mg_resp_number(b, 3) == 1 && strcmp(b, "3") == 0);
    mg_resp_number(b, 0.1);
    CHECK_STR(b, "0.1");
    mg_resp_number(b, 0.1 + 0.2);
    CHECK(strtod(b, NULL) == 0.1 + 0.2);      /* 0.30000000000000004, exactly */
    mg_resp_number(b, -20);
    CHECK_STR(b, "-20");
    mg_resp_number(b, 1e21);
    CHECK(strtod(b, NULL) == 1e21);
    mg_resp_number(b, 123456789012.5);
    CHECK_STR(b, "123456789012.5");
}

static void test_scalars(void)
{
    mg_resp_t r;
    CHECK(parse("+OK\r\n", &r) == 5 && item_is(&r.v, MG_RESP_STATUS, "OK"));
    CHECK(parse("-NOSCRIPT No matching script\r\n", &r) == 30 &&
          item_is(&r.v, MG_RESP_ERROR, "NOSCRIPT No matching script"));
    CHECK(parse(":1\r\n", &r) == 4 && r.v.type == MG_RESP_INTEGER && r.v.integer == 1);
    CHECK(parse(":-42\r\n", &r) == 6 && r.v.integer == -42);
    CHECK(parse("$5\r\nhello\r\n", &r) == 11 && item_is(&r.v, MG_RESP_BULK, "hello"));
    CHECK(parse("$0\r\n\r\n", &r) == 6 && item_is(&r.v, MG_RESP_BULK, ""));
    CHECK(parse("$-1\r\n", &r) == 5 && r.v.type == MG_RESP_NIL);
    CHECK(parse("*-1\r\n", &r) == 5 && r.v.type == MG_RESP_NIL);
    /* a bulk string may hold CR LF and NUL: its length decides */
    CHECK(mg_resp_parse("$4\r\na\r\n\0\r\n", 10, &r) == 10 && r.v.len == 4 && r.v.str[3] == '\0');
}

static void test_arrays(void)
{
    mg_resp_t r;
    const char *s = "*3\r\n$1\r\n1\r\n$3\r\n0.5\r\n:7\r\n";
    CHECK(parse(s, &r) == (long)strlen(s));
    CHECK(r.v.type == MG_RESP_ARRAY && r.nelem == 3);
    CHECK(item_is(&r.elem[0], MG_RESP_BULK, "1"));
    CHECK(item_is(&r.elem[1], MG_RESP_BULK, "0.5"));
    CHECK(r.elem[2].type == MG_RESP_INTEGER && r.elem[2].integer == 7);
    CHECK(parse("*0\r\n", &r) == 4 && r.v.type == MG_RESP_ARRAY && r.nelem == 0);
    /* nested arrays and nil elements are walked over (XRANGE-like replies) */
    s = "*2\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\na\r\n$-1\r\n$1\r\nb\r\n";
    CHECK(parse(s, &r) == (long)strlen(s) && r.nelem == 2);
    CHECK(r.elem[0].type == MG_RESP_ARRAY && r.elem[0].integer == 2);
    CHECK(item_is(&r.elem[1], MG_RESP_BULK, "b"));
    /* more elements than are kept: all are consumed, the first ones kept */
    mg_buf_t b = { 0 };
    mg_buf_append(&b, "*12\r\n", 5);
    for (int i = 0; i < 12; i++) mg_buf_appendf(&b, ":%d\r\n", i);
    CHECK(mg_resp_parse(b.data, b.len, &r) == (long)b.len && r.nelem == 12);
    CHECK(r.elem[MG_RESP_MAXELEM - 1].integer == MG_RESP_MAXELEM - 1);
    mg_buf_free(&b);
}

/* Every prefix of a reply is "incomplete", never a different reply. */
static void test_incomplete(void)
{
    const char *replies[] = {
        "+OK\r\n", ":123\r\n", "$5\r\nhello\r\n", "$-1\r\n", "-ERR x\r\n",
        "*3\r\n$1\r\n1\r\n$19\r\n0.30000000000000004\r\n$5\r\n59999\r\n",
        "*2\r\n*1\r\n:1\r\n$0\r\n\r\n",
    };
    for (size_t k = 0; k < sizeof replies / sizeof replies[0]; k++) {
        const char *s = replies[k];
        size_t n = strlen(s);
        for (size_t cut = 0; cut < n; cut++) {
            mg_resp_t r;
            char *copy = malloc(cut + 1);   /* exact size: ASan sees any read past it */
            memcpy(copy, s, cut);
            long got = mg_resp_parse(copy, cut, &r);
            if (got != 0) fprintf(stderr, "reply %zu cut at %zu: %ld\n", k, cut, got);
            CHECK(got == 0);
            free(copy);
        }
        mg_resp_t r;
        CHECK(mg_resp_parse(s, n, &r) == (long)n);
    }
}

static void test_pipelined(void)
{
    const char *s = "+OK\r\n:1\r\n$2\r\nhi\r\n$-1\r\n*1\r\n$1\r\n0\r\n:";
    size_t len = strlen(s), off = 0;
    int types[8], n = 0;
    for (;;) {
        mg_resp_t r;
        long got = mg_resp_parse(s + off, len - off, &r);
        if (got <= 0) {
            CHECK(got == 0);     /* the last ":" is the start of a reply still coming */
            break;
        }
        types[n++] = r.v.type;
        off += (size_t)got;
    }
    CHECK(n == 5);
    CHECK(types[0] == MG_RESP_STATUS && types[1] == MG_RESP_INTEGER && types[2] == MG_RESP_BULK &&
          types[3] == MG_RESP_NIL && types[4] == MG_RESP_ARRAY);
    CHECK(off == len - 1);
}

static void test_malformed(void)
{
    mg_resp_t r;
    CHECK(parse("?what\r\n", &r) == -1);             /* unknown type */
    CHECK(parse(":12a\r\n", &r) == -1);
    CHECK(parse(":\r\n", &r) == -1);
    CHECK(parse("$-2\r\n", &r) == -1);
    CHECK(parse("$3\r\nabcd\r\n", &r) == -1);        /* length and bytes disagree */
    CHECK(parse("+OK\rX\n", &r) == -1);              /* a bare CR */
    CHECK(parse("$99999999999999999999\r\n", &r) == -1);
    CHECK(parse("*-5\r\n", &r) == -1);
    CHECK(parse("*1\r\n?\r\n", &r) == -1);           /* a bad element */
    /* nesting beyond MG_RESP_MAXDEPTH */
    mg_buf_t b = { 0 };
    for (int i = 0; i < MG_RESP_MAXDEPTH + 2; i++) mg_buf_append(&b, "*1\r\n", 4);
    mg_buf_append(&b, ":1\r\n", 4);
    CHECK(mg_resp_parse(b.data, b.len, &r) == -1);
    mg_buf_free(&b);
}

TEST_MAIN(test_command, test_number, test_scalars, test_arrays, test_incomplete, test_pipelined,
          test_malformed)
