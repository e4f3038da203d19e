/* Unit tests for the native HTTP/1.1 client's choice of requests: what it
 * takes (plain http:// it can send as written), and what it leaves to
 * libcurl. Its behaviour on the wire is in spec/integration/upstream_h1_spec.lua. */
#include "test.h"
#include "upstream_int.h"

static void test_takes_plain_http(void)
{
    CHECK(mg_h1_accepts("POST", "http://127.0.0.1:8000/v1/chat/completions"));
    CHECK(mg_h1_accepts("GET", "http://localhost/v1/models?limit=2&x=y"));
    CHECK(mg_h1_accepts("GET", "HTTP://Example.COM"));
    CHECK(mg_h1_accepts("GET", "http://example.com?q=1"));
    CHECK(mg_h1_accepts("GET", "http://example.com/a#fragment"));
    CHECK(mg_h1_accepts("GET", "http://[::1]:8080/v1"));
    CHECK(mg_h1_accepts("GET", "http://my_host.internal:65535/"));
    CHECK(mg_h1_accepts("PATCH", "http://h/%7Euser"));
}

static void test_leaves_the_rest_to_curl(void)
{
    CHECK(!mg_h1_accepts("GET", "https://api.openai.com/v1"));
    CHECK(!mg_h1_accepts("GET", "ftp://h/"));
    CHECK(!mg_h1_accepts("GET", "http://user:pw@h/"));
    CHECK(!mg_h1_accepts("GET", "http://"));
    CHECK(!mg_h1_accepts("GET", "http:///path"));
    CHECK(!mg_h1_accepts("GET", "http://h:/"));
    CHECK(!mg_h1_accepts("GET", "http://h:0/"));
    CHECK(!mg_h1_accepts("GET", "http://h:65536/"));
    CHECK(!mg_h1_accepts("GET", "http://h:80x/"));
    CHECK(!mg_h1_accepts("GET", "http://[::1/"));
    CHECK(!mg_h1_accepts("GET", "http://[zz::1]/"));
    CHECK(!mg_h1_accepts("GET", "http://h%41/"));
    CHECK(!mg_h1_accepts("GET", "http://h/a b"));
    CHECK(!mg_h1_accepts("GET", "http://h/a\r\nX-Injected: 1"));
    CHECK(!mg_h1_accepts("GET", "http://h/caf\xc3\xa9"));
    CHECK(!mg_h1_accepts("", "http://h/"));
    CHECK(!mg_h1_accepts("GET /x HTTP/1.1\r\n", "http://h/"));
    CHECK(!mg_h1_accepts("G:ET", "http://h/"));
}

TEST_MAIN(test_takes_plain_http, test_leaves_the_rest_to_curl)
