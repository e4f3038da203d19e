/* fuzz_json.c — the JSON scanner every POST body goes through
 * (mg_json_scan, runtime/json.c), and the scans of streamed events: never
 * read outside the bytes, and what they report lies inside them. */
#include <stdint.h>
#include <string.h>

#include "ffi.h"

#define REQUIRE(c) do { if (!(c)) __builtin_trap(); } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mg_json_info_t info;
    memset(&info, 0xa5, sizeof info);
    int rc = mg_json_scan((const char *)data, size, &info);
    REQUIRE(rc == 0 || rc == -1 || rc == -2);   /* -2: nested deeper than 512 levels */
    /* the scans of streamed events read the same bytes: nothing outside them, counts within them */
    long chars = mg_text_chars((const char *)data, size);
    REQUIRE(chars >= 0 && (size_t)chars <= size);
    long bytes = mg_text_bytes((const char *)data, size);
    REQUIRE(bytes >= chars && (size_t)bytes <= size);
    REQUIRE(mg_utf8_chars((const char *)data, size) <= (long)size);
    int m = mg_json_has_member((const char *)data, size, "usage", 5, '{');
    REQUIRE(m == 0 || m == 1);
    m = mg_json_first_key_is((const char *)data, size, "error", 5);
    REQUIRE(m == 0 || m == 1);
    if (rc == 0) {
        REQUIRE(size >= 2);
        if (info.model_off >= 0) {
            REQUIRE(info.model_len >= 0);
            REQUIRE((size_t)(info.model_off + info.model_len) < size);   /* the closing quote follows */
            REQUIRE(info.model_off >= 1 && data[info.model_off - 1] == '"');
            REQUIRE(data[info.model_off + info.model_len] == '"');
        }
        REQUIRE(info.stream == 0 || info.stream == 1);
    }
    return 0;
}
