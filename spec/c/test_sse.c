/* Unit tests for runtime/sse.c: which events of a same-format stream the relay passes on without
 * Lua. Whatever it is not sure of must go to Lua (-1), and an event not all there yet waits (0). */
#include "ffi.h"
#include "test.h"

static long plain(const char *s, int fmt, long *chars)
{
    *chars = -1;
    return mg_sse_plain(s, strlen(s), fmt, chars);
}

#define DELTA "{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"h\xc3\xa9llo\"},\"finish_reason\":null}]}"

static void test_openai_plain(void)
{
    long chars;
    const char *ev = "data: " DELTA "\n\n";
    CHECK(plain(ev, MG_SSE_OPENAI, &chars) == (long)strlen(ev));
    CHECK(chars == 5);
    /* without the space, with CRLF or CR line ends */
    const char *nosp = "data:" DELTA "\n\n";
    CHECK(plain(nosp, MG_SSE_OPENAI, &chars) == (long)strlen(nosp));
    const char *crlf = "data: " DELTA "\r\n\r\n";
    CHECK(plain(crlf, MG_SSE_OPENAI, &chars) == (long)strlen(crlf));
    const char *cr = "data: " DELTA "\r\r";
    CHECK(plain(cr, MG_SSE_OPENAI, &chars) == (long)strlen(cr));
    /* only the first event counts: what follows is the next one's */
    const char *two = "data: " DELTA "\n\ndata: [DONE]\n\n";
    CHECK(plain(two, MG_SSE_OPENAI, &chars) == (long)strlen("data: " DELTA "\n\n"));
    /* "usage": null is no usage */
    const char *nullu = "data: {\"choices\":[{\"delta\":{\"content\":\"ab\"}}],\"usage\":null}\n\n";
    CHECK(plain(nullu, MG_SSE_OPENAI, &chars) == (long)strlen(nullu));
    CHECK(chars == 2);
}

static void test_openai_to_lua(void)
{
    long chars;
    const char *lua[] = {
        "data: [DONE]\n\n",
        "data: {\"error\":{\"message\":\"overloaded\"}}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\n",
        "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
        "data: not json\n\n",
        "data: \n\n",
        "data: [1,2]\n\n",
        "data: {\"a\":1} trailing\n\n",
        ": keep-alive\n\n",
        "id: 7\ndata: " DELTA "\n\n",
        "data: " DELTA "\nid: 7\n\n",
        "event: message\ndata: " DELTA "\n\n",
        "data: {\"a\":\ndata: 1}\n\n",                   /* two data lines */
        "data: " DELTA "\n\r\n",                          /* no boundary Lua knows: ends later */
        "\n\n",
        "dat: " DELTA "\n\n",
        "DATA: " DELTA "\n\n",
    };
    for (size_t k = 0; k < sizeof lua / sizeof lua[0]; k++) {
        long rc = plain(lua[k], MG_SSE_OPENAI, &chars);
        if (rc > 0) fprintf(stderr, "relayed: %s\n", lua[k]);
        CHECK(rc <= 0);
    }
    /* "\n\r\n" is no boundary: that event runs on to the next blank line, and Lua gets it */
    CHECK(plain("data: " DELTA "\n\r\ndata: x\n\n", MG_SSE_OPENAI, &chars) == -1);
    /* an unknown format relays nothing */
    CHECK(plain("data: " DELTA "\n\n", 0, &chars) == -1);
    CHECK(plain("data: " DELTA "\n\n", MG_SSE_ANTHROPIC, &chars) == -1);
}

static void test_incomplete(void)
{
    long chars;
    const char *ev = "data: " DELTA "\r\n\r\n";
    /* every cut short of the whole event waits for the rest */
    for (size_t n = 0; n < strlen(ev); n++) {
        long rc = mg_sse_plain(ev, n, MG_SSE_OPENAI, &chars);
        if (rc != 0) fprintf(stderr, "cut at %zu: %ld\n", n, rc);
        CHECK(rc == 0);
    }
    CHECK(mg_sse_plain(ev, strlen(ev), MG_SSE_OPENAI, &chars) == (long)strlen(ev));
}

static void test_anthropic(void)
{
    long chars;
    const char *d = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,"
                    "\"delta\":{\"type\":\"text_delta\",\"text\":\"abc\"}}\n\n";
    CHECK(plain(d, MG_SSE_ANTHROPIC, &chars) == (long)strlen(d));
    CHECK(chars == 3);
#define JSON_DELTA "{\"type\":\"content_block_delta\",\"delta\":" \
                   "{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"a\\\"\"}}"
    const char *crlf = "event:content_block_delta\r\ndata:" JSON_DELTA "\r\n\r\n";
    CHECK(plain(crlf, MG_SSE_ANTHROPIC, &chars) == (long)strlen(crlf));
    /* counted as the decoder counts it (usage.scan_chars) */
    CHECK(chars == mg_text_chars(JSON_DELTA, strlen(JSON_DELTA)));
    CHECK(chars > 0);
    CHECK(plain(d, MG_SSE_OPENAI, &chars) == -1);
    const char *lua[] = {
        "event: message_start\ndata: {\"type\":\"message_start\"}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":3}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        "event: error\ndata: {\"type\":\"error\",\"error\":{\"message\":\"x\"}}\n\n",
        "event: content_block_delta \ndata: {\"type\":\"content_block_delta\"}\n\n",
        "event: content_block_deltas\ndata: {\"type\":\"content_block_delta\"}\n\n",
        "event: content_block_delta\ndata: nope\n\n",
        "event: content_block_delta\n\n",
        "data: {\"type\":\"content_block_delta\"}\n\n",       /* no event line: Lua reads the type */
        "event: content_block_delta\nid: 1\ndata: {\"type\":\"content_block_delta\"}\n\n",
    };
    for (size_t k = 0; k < sizeof lua / sizeof lua[0]; k++) {
        long rc = plain(lua[k], MG_SSE_ANTHROPIC, &chars);
        if (rc > 0) fprintf(stderr, "relayed: %s\n", lua[k]);
        CHECK(rc == -1);
    }
    for (size_t n = 0; n < strlen(d); n++) CHECK(mg_sse_plain(d, n, MG_SSE_ANTHROPIC, &chars) == 0);
}

TEST_MAIN(test_openai_plain, test_openai_to_lua, test_incomplete, test_anthropic)
