/* Unit tests for the native HTTP/1.1 client's choice of requests: what it
 * takes (plain http:// it can send as written), and what it leaves to
 * libcurl. Its behaviour on the wire is in spec/integration/upstream_h1_spec.lua. */
#include "test.h"
#include "upstream_int.h"

static int accepts(const char *method, const char *url)
{
    mg_h1_url_t parsed;
    return mg_h1_accepts(method, url, &parsed);
}

/* What mg_h1_start is handed: the host, port and target the request line and Host use. */
static void test_parsed_url(void)
{
    mg_h1_url_t u;
    CHECK(mg_h1_accepts("POST", "http://127.0.0.1:8000/v1/chat/completions?x=1#frag", &u));
    CHECK(u.hlen == 9 && memcmp(u.host, "127.0.0.1", 9) == 0 && u.port == 8000 && !u.v6);
    CHECK(u.tlen == 24 && memcmp(u.target, "/v1/chat/completions?x=1", 24) == 0);
    CHECK(mg_h1_accepts("GET", "http://[::1]/v1", &u));
    CHECK(u.v6 && u.port == 80 && u.hlen == 3 && memcmp(u.host, "::1", 3) == 0);
    CHECK(mg_h1_accepts("GET", "http://example.com", &u) && u.tlen == 0);
}

static void test_takes_plain_http(void)
{
    CHECK(accepts("POST", "http://127.0.0.1:8000/v1/chat/completions"));
    CHECK(accepts("GET", "http://localhost/v1/models?limit=2&x=y"));
    CHECK(accepts("GET", "HTTP://Example.COM"));
    CHECK(accepts("GET", "http://example.com?q=1"));
    CHECK(accepts("GET", "http://example.com/a#fragment"));
    CHECK(accepts("GET", "http://[::1]:8080/v1"));
    CHECK(accepts("GET", "http://my_host.internal:65535/"));
    CHECK(accepts("PATCH", "http://h/%7Euser"));
}

static void test_leaves_the_rest_to_curl(void)
{
    CHECK(!accepts("GET", "https://api.openai.com/v1"));
    CHECK(!accepts("GET", "ftp://h/"));
    CHECK(!accepts("GET", "http://user:pw@h/"));
    CHECK(!accepts("GET", "http://"));
    CHECK(!accepts("GET", "http:///path"));
    CHECK(!accepts("GET", "http://h:/"));
    CHECK(!accepts("GET", "http://h:0/"));
    CHECK(!accepts("GET", "http://h:65536/"));
    CHECK(!accepts("GET", "http://h:80x/"));
    CHECK(!accepts("GET", "http://[::1/"));
    CHECK(!accepts("GET", "http://[zz::1]/"));
    CHECK(!accepts("GET", "http://h%41/"));
    CHECK(!accepts("GET", "http://h/a b"));
    CHECK(!accepts("GET", "http://h/a\r\nX-Injected: 1"));
    CHECK(!accepts("GET", "http://h/caf\xc3\xa9"));
    CHECK(!accepts("", "http://h/"));
    CHECK(!accepts("GET /x HTTP/1.1\r\n", "http://h/"));
    CHECK(!accepts("G:ET", "http://h/"));
}

TEST_MAIN(test_parsed_url, test_takes_plain_http, test_leaves_the_rest_to_curl)
