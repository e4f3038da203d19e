/* fuzz_sse.c — the relay's reading of a provider's streamed events (mg_sse_plain, runtime/sse.c):
 * it never reads outside the bytes, an event it relays lies inside them, is relayed the same
 * when it comes alone, and is waited for while any of its end is missing. */
#include <stdint.h>
#include <string.h>

#include "ffi.h"

#define REQUIRE(c) do { if (!(c)) __builtin_trap(); } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = (const char *)data;
    for (int fmt = MG_SSE_OPENAI; fmt <= MG_SSE_ANTHROPIC; fmt++) {
        long chars = -1;
        long rc = mg_sse_plain(p, size, fmt, &chars);
        REQUIRE(rc >= -1 && rc <= (long)size);
        if (rc <= 0) continue;
        REQUIRE(chars >= 0 && chars <= rc);
        long again = -1;
        REQUIRE(mg_sse_plain(p, (size_t)rc, fmt, &again) == rc && again == chars);
        REQUIRE(mg_sse_plain(p, (size_t)rc - 1, fmt, &again) == 0);
    }
    return 0;
}
