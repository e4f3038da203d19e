/* Unit tests for runtime/buf.c. */
#include "buf.h"
#include "test.h"

static void test_append_and_consume(void)
{
    mg_buf_t b;
    mg_buf_init(&b);
    CHECK(b.len == 0 && b.data == NULL);
    mg_buf_append(&b, "hello ", 6);
    mg_buf_appendf(&b, "%s %d", "world", 42);
    CHECK(b.len == 14);
    CHECK(memcmp(b.data, "hello world 42", 14) == 0);
    mg_buf_consume(&b, 6);
    CHECK(b.len == 8 && memcmp(b.data, "world 42", 8) == 0);
    mg_buf_consume(&b, 100);
    CHECK(b.len == 0);
    mg_buf_free(&b);
    CHECK(b.data == NULL && b.cap == 0);
}

static void test_growth_keeps_bytes(void)
{
    mg_buf_t b;
    mg_buf_init(&b);
    for (int i = 0; i < 100000; i++) {
        char c = (char)('a' + i % 26);
        mg_buf_append(&b, &c, 1);
    }
    CHECK(b.len == 100000);
    int ok = 1;
    for (int i = 0; i < 100000; i++) ok &= b.data[i] == (char)('a' + i % 26);
    CHECK(ok);
    CHECK(b.cap >= b.len);
    mg_buf_append(&b, "", 0);   /* appending nothing changes nothing */
    CHECK(b.len == 100000);
    mg_buf_free(&b);
}

static void test_appendf_long(void)
{
    mg_buf_t b;
    mg_buf_init(&b);
    char big[5000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    mg_buf_appendf(&b, "[%s]", big);
    CHECK(b.len == sizeof big + 1);
    CHECK(b.data[0] == '[' && b.data[b.len - 1] == ']');
    mg_buf_free(&b);
}

TEST_MAIN(test_append_and_consume, test_growth_keeps_bytes, test_appendf_long)
