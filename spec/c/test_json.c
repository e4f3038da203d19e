/* Unit tests for runtime/json.c: the validating scanner of request bodies. */
#include "ffi.h"
#include "test.h"

static int scan(const char *s, mg_json_info_t *info)
{
    return mg_json_scan(s, strlen(s), info);
}

static void test_valid_documents(void)
{
    mg_json_info_t i;
    const char *ok[] = {
        "{}", " { } ", "{\"a\":1}", "{\"a\":[1,2,{\"b\":null}],\"c\":true,\"d\":false}",
        "{\"n\":-0.5e+10,\"m\":12345678901234567890,\"z\":0,\"e\":1E5,\"f\":1.0000000000000001}",
        "{\"s\":\"\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\"}", "{\"empty\":[],\"obj\":{}}",
        "{\"utf8\":\"h\xc3\xa9llo\"}", "\r\n\t{\"a\" : \"b\" , \"c\" : [ ] }\n",
    };
    for (size_t k = 0; k < sizeof ok / sizeof ok[0]; k++) {
        int rc = scan(ok[k], &i);
        if (rc != 0) fprintf(stderr, "rejected valid: %s\n", ok[k]);
        CHECK(rc == 0);
    }
}

static void test_invalid_documents(void)
{
    mg_json_info_t i;
    const char *bad[] = {
        "", "   ", "[]", "\"str\"", "1", "null", "{", "}", "{\"a\"}", "{\"a\":}", "{\"a\":1,}",
        "{,}", "{\"a\":1 \"b\":2}", "{\"a\":01}", "{\"a\":1.}", "{\"a\":.5}", "{\"a\":-}", "{\"a\":1e}",
        "{\"a\":tru}", "{\"a\":nul}", "{\"a\":NaN}", "{\"a\":\"\\x\"}", "{\"a\":\"\\u12g4\"}",
        "{\"a\":\"unterminated}", "{\"a\":\"tab\there\"}", "{a:1}", "{'a':1}", "{\"a\":1} x",
        "{\"a\":1}{}", "{\"a\":[1,2}", "{\"a\":{\"b\":1]}", "{\"a\":1 // c\n}",
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        int rc = scan(bad[k], &i);
        if (rc == 0) fprintf(stderr, "accepted invalid: %s\n", bad[k]);
        CHECK(rc != 0);
    }
}

static void test_model_and_stream(void)
{
    mg_json_info_t i;
    const char *s = "{\"messages\":[{\"model\":\"nested\"}],\"model\":\"gpt-4o\",\"stream\":true}";
    CHECK(scan(s, &i) == 0);
    CHECK(i.model_off >= 0 && i.model_len == 6 && memcmp(s + i.model_off, "gpt-4o", 6) == 0);
    CHECK(i.stream == 1 && i.model_escaped == 0 && i.escaped_keys == 0);

    CHECK(scan("{\"stream\":false,\"model\":\"a\\\"b\"}", &i) == 0);
    CHECK(i.stream == 0 && i.model_escaped == 1 && i.model_len == 4);

    CHECK(scan("{\"stream\":\"true\"}", &i) == 0);    /* a string is not true */
    CHECK(i.stream == 0 && i.model_off == -1);

    CHECK(scan("{\"model\":\"a\",\"model\":\"bb\"}", &i) == 0);   /* the last wins */
    CHECK(i.model_len == 2);

    CHECK(scan("{\"model\":\"a\",\"model\":null}", &i) == 0);
    CHECK(i.model_off == -1);

    CHECK(scan("{\"mod\\u0065l\":\"x\"}", &i) == 0);
    CHECK(i.escaped_keys == 1 && i.model_off == -1);
}

/* strings longer than one 16-byte block: the block scan stops where the byte loop would */
static void test_long_strings(void)
{
    mg_json_info_t i;
    CHECK(scan("{\"model\":\"a-model-name-longer-than-sixteen-bytes\",\"x\":1}", &i) == 0);
    CHECK(i.model_len == 38);
    CHECK(scan("{\"k\":\"0123456789abcdef0123456789\\\"abcdef0123456789\"}", &i) == 0);
    CHECK(scan("{\"k\":\"0123456789abcdef0123456789\tabcdef0123456789\"}", &i) != 0);
    CHECK(scan("{\"k\":\"0123456789abcdef0123456789\x7f\xc3\xa9\x01\"}", &i) != 0);
    CHECK(scan("{\"k\":\"0123456789abcdef0123456789\x7f\xc3\xa9\x20\"}", &i) == 0);
    CHECK(scan("{\"k\":\"0123456789abcdef0123456789", &i) != 0);
}

static void test_usage_member(void)
{
    mg_json_info_t i;
    const char *s = "{\"id\":\"x\",\"choices\":[{\"usage\":1}],"
                    "\"usage\": {\"prompt_tokens\":5,\"completion_tokens\":7} ,\"z\":0}";
    CHECK(scan(s, &i) == 0);
    CHECK(i.usage_off >= 0);
    /* the top-level member only, exactly its value's text */
    CHECK(i.usage_len == 41 && memcmp(s + i.usage_off, "{\"prompt_tokens\":5,\"completion_tokens\":7}", 41) == 0);
    CHECK(scan("{\"choices\":[{\"usage\":{}}]}", &i) == 0 && i.usage_off == -1);
    CHECK(scan("{\"usage\":null}", &i) == 0 && i.usage_len == 4);
}

/* The counts of a plain usage object, read without decoding it; anything else says so. */
static void test_usage_counts(void)
{
    mg_json_info_t i;
    CHECK(scan("{\"usage\":{\"prompt_tokens\":52,\"completion_tokens\":49,\"total_tokens\":101,"
               "\"prompt_tokens_details\":{\"cached_tokens\":3,\"audio_tokens\":0},"
               "\"completion_tokens_details\":{\"audio_tokens\":0,\"reasoning_tokens\":11}}}", &i) == 0);
    CHECK(i.usage_plain == 1);
    CHECK(i.usage[MG_USAGE_PROMPT] == 52 && i.usage[MG_USAGE_COMPLETION] == 49 && i.usage[MG_USAGE_TOTAL] == 101);
    CHECK(i.usage[MG_USAGE_CACHED] == 3 && i.usage[MG_USAGE_REASONING] == 11);
    CHECK(i.usage[MG_USAGE_INPUT] == -1 && i.usage[MG_USAGE_CACHE_READ] == -1);

    /* Anthropic's, with spaces and unknown members of any type */
    CHECK(scan("{ \"usage\" : { \"input_tokens\" : 10 , \"x\":[1,{\"a\":\"}\"}],"
               "\"cache_creation_input_tokens\":0, \"cache_read_input_tokens\": 999999999999999,"
               "\"output_tokens\":7 } }", &i) == 0);
    CHECK(i.usage_plain == 1 && i.usage[MG_USAGE_INPUT] == 10 && i.usage[MG_USAGE_OUTPUT] == 7);
    CHECK(i.usage[MG_USAGE_CACHE_CREATION] == 0 && i.usage[MG_USAGE_CACHE_READ] == 999999999999999.0);
    CHECK(i.usage[MG_USAGE_PROMPT] == -1 && i.usage[MG_USAGE_CACHED] == -1);

    /* the last of a repeated key wins; a later details object replaces an earlier one */
    CHECK(scan("{\"usage\":{\"prompt_tokens\":1,\"prompt_tokens\":2,"
               "\"prompt_tokens_details\":{\"cached_tokens\":1},\"prompt_tokens_details\":{}}}", &i) == 0);
    CHECK(i.usage_plain == 1 && i.usage[MG_USAGE_PROMPT] == 2 && i.usage[MG_USAGE_CACHED] == -1);
    /* details that are not objects count as absent; so do counts nested deeper */
    CHECK(scan("{\"usage\":{\"prompt_tokens_details\":null,\"x\":{\"prompt_tokens\":\"s\"}}}", &i) == 0);
    CHECK(i.usage_plain == 1 && i.usage[MG_USAGE_CACHED] == -1 && i.usage[MG_USAGE_PROMPT] == -1);
    CHECK(scan("{\"usage\":{}}", &i) == 0 && i.usage_plain == 1 && i.usage[MG_USAGE_PROMPT] == -1);

    /* not plain: Lua decodes the member instead */
    const char *odd[] = {
        "{\"usage\":{\"prompt_tokens\":1.5}}", "{\"usage\":{\"prompt_tokens\":-1}}",
        "{\"usage\":{\"prompt_tokens\":1e3}}", "{\"usage\":{\"prompt_tokens\":\"5\"}}",
        "{\"usage\":{\"prompt_tokens\":null}}", "{\"usage\":{\"prompt_tokens\":1234567890123456}}",
        "{\"usage\":{\"prompt\\u005ftokens\":5}}", "{\"usage\":[1]}", "{\"usage\":null}",
        "{\"usage\":{\"completion_tokens_details\":{\"reasoning_tokens\":true}}}",
    };
    for (size_t k = 0; k < sizeof odd / sizeof odd[0]; k++) {
        CHECK(scan(odd[k], &i) == 0);
        if (i.usage_plain) fprintf(stderr, "called plain: %s\n", odd[k]);
        CHECK(i.usage_plain == 0);
    }
    /* an invalid document is refused, whatever its usage holds */
    CHECK(scan("{\"usage\":{\"prompt_tokens\":1},", &i) != 0);
}

static void test_depth_limit(void)
{
    mg_json_info_t i;
    char deep[4000];
    size_t n = 0;
    deep[n++] = '{';
    memcpy(deep + n, "\"a\":", 4);
    n += 4;
    for (int k = 0; k < 1000; k++) deep[n++] = '[';
    for (int k = 0; k < 1000; k++) deep[n++] = ']';
    deep[n++] = '}';
    CHECK(mg_json_scan(deep, n, &i) != 0);   /* too deep: refused, not a stack overflow */
    char ok[1200];
    n = 0;
    ok[n++] = '{';
    memcpy(ok + n, "\"a\":", 4);
    n += 4;
    for (int k = 0; k < 100; k++) ok[n++] = '[';
    for (int k = 0; k < 100; k++) ok[n++] = ']';
    ok[n++] = '}';
    CHECK(mg_json_scan(ok, n, &i) == 0);
}

/* 512 levels, the top object being the first: 512 pass, 513 are refused as too deep (-2) */
static void test_depth_is_levels(void)
{
    static char doc[2048];
    for (int levels = 511; levels <= 514; levels++) {
        size_t n = 0;
        doc[n++] = '{';
        memcpy(doc + n, "\"a\":", 4);
        n += 4;
        for (int k = 1; k < levels; k++) doc[n++] = '[';
        for (int k = 1; k < levels; k++) doc[n++] = ']';
        doc[n++] = '}';
        mg_json_info_t i;
        CHECK(mg_json_scan(doc, n, &i) == (levels <= 512 ? 0 : -2));
    }
    mg_json_info_t i;
    CHECK(mg_json_scan("{\"a\":[}", 7, &i) == -1);   /* a syntax error is -1 */
}

static void test_truncations_never_pass(void)
{
    /* every strict prefix of a valid object is invalid */
    const char *s = "{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"user\",\"content\":\"h\\u00e9\"}],\"n\":1.5e3}";
    mg_json_info_t i;
    size_t len = strlen(s);
    int accepted = 0;
    for (size_t k = 0; k < len; k++) accepted += mg_json_scan(s, k, &i) == 0;
    CHECK(accepted == 0);
    CHECK(mg_json_scan(s, len, &i) == 0);
}

/* The scans of streamed events count what lua/moongate/codec/usage.lua's patterns counted
 * (the pattern versions still run in the unit specs, outside the gateway). */
static long text_chars(const char *s)
{
    return mg_text_chars(s, strlen(s));
}

static void test_text_chars(void)
{
    /* an OpenAI chunk: only delta.content counts; "role" is no text key */
    CHECK(text_chars("{\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"Hello\"}}]}") == 5);
    /* UTF-8 characters, not bytes: \u00e9 written raw is two bytes, one character */
    CHECK(text_chars("{\"text\":\"caf\xc3\xa9 \xe2\x82\xac\"}") == 6);
    /* escapes are counted as written (the estimate reads raw text), and an escaped quote does not end it */
    CHECK(text_chars("{\"content\":\"a\\\"b\"}") == 4);
    /* every text key, at any depth; whitespace around the colon */
    CHECK(text_chars("{\"arguments\" : \"{}\",\"partial_json\":\t\"ab\",\"reasoning_content\":\"c\","
                     "\"thinking\":\"d\",\"refusal\":\"e\",\"x\":{\"text\":\"f\"}}") == 8);
    /* a text key whose value is not a string, a key with escapes, a value left open */
    CHECK(text_chars("{\"content\":null,\"te\\u0078t\":\"zz\"}") == 0);
    CHECK(text_chars("{\"content\":\"abc") == 3);
    CHECK(text_chars("{\"content\":\"ab\\") == 3);   /* a trailing backslash is text too */
    CHECK(text_chars("") == 0);
    /* the same text in bytes (pricing.text_len): the two-byte é counts twice */
    const char *b = "{\"text\":\"caf\xc3\xa9\",\"role\":\"x\"}";
    CHECK(mg_text_bytes(b, strlen(b)) == 5);
    CHECK(mg_utf8_chars("\xe2\x82\xac\x80x", 5) == 2);
}

static void test_members(void)
{
    const char *u = "{\"id\":\"c\",\"choices\":[],\"usage\" :\n {\"prompt_tokens\":3}}";
    CHECK(mg_json_has_member(u, strlen(u), "usage", 5, '{') == 1);
    CHECK(mg_json_has_member(u, strlen(u), "usage", 5, 'n') == 0);
    const char *nu = "{\"usage\":null,\"x\":\"\\\"usage\\\": {\"}";   /* the second is escaped text */
    CHECK(mg_json_has_member(nu, strlen(nu), "usage", 5, '{') == 0);
    const char *f = "{\"choices\":[{\"finish_reason\":\"stop\"}]}";
    CHECK(mg_json_has_member(f, strlen(f), "finish_reason", 13, '"') == 1);
    const char *fn = "{\"choices\":[{\"finish_reason\":null}]}";
    CHECK(mg_json_has_member(fn, strlen(fn), "finish_reason", 13, '"') == 0);
    CHECK(mg_json_has_member("\"usage\"", 7, "usage", 5, '{') == 0);   /* cut short */
    const char *e = " \n{ \"error\":{\"message\":\"x\"}}";
    CHECK(mg_json_first_key_is(e, strlen(e), "error", 5) == 1);
    const char *e2 = "{\"id\":1,\"error\":{}}";
    CHECK(mg_json_first_key_is(e2, strlen(e2), "error", 5) == 0);
    CHECK(mg_json_first_key_is("{\"errors\":1}", 11, "error", 5) == 0);
    CHECK(mg_json_first_key_is("{\"error", 7, "error", 5) == 0);
}

TEST_MAIN(test_valid_documents, test_invalid_documents, test_model_and_stream, test_long_strings, test_usage_member, test_usage_counts, test_depth_limit,
          test_truncations_never_pass, test_text_chars, test_members, test_depth_is_levels)
