/* sse.c — which events of a same-format stream C may relay without Lua.
 *
 * A streamed answer in the client's own format (OpenAI to OpenAI, Anthropic
 * to Anthropic) goes to the client byte for byte; Lua's decoder
 * (lua/moongate/codec/decoder.lua, Decoder:_same_event) only looks at each
 * event to learn the usage, to see the end, and to stop at an error. Most
 * events are text deltas about which it learns nothing but the length of the
 * text. mg_sse_plain() recognises exactly those, with the same scans the
 * decoder uses (json.c), so that upstream.c's relay mode can write them to
 * the client without entering Lua; every other event, and anything it is not
 * sure of, is left to Lua.
 *
 * Event boundaries are the ones lua/moongate/sse.lua cuts at (the first of
 * "\n\n", "\r\n\r\n" and "\r\r" to end), so that Lua's reader, started afresh
 * where the relay stopped, sees the same events it would have seen. */
#include <string.h>

#include "ffi.h"

size_t mg_sse_boundary(const char *p, size_t n)
{
    for (size_t i = 0; i + 1 < n; i++) {
        if (p[i] == '\n') {
            if (p[i + 1] == '\n') return i + 2;
        } else if (p[i] == '\r') {
            if (p[i + 1] == '\r') return i + 2;
            if (p[i + 1] == '\n' && i + 3 < n && p[i + 2] == '\r' && p[i + 3] == '\n') return i + 4;
        }
    }
    return 0;
}

/* "name:" and one optional space at p: the length taken, or 0. */
static size_t field(const char *p, size_t n, const char *name)
{
    size_t k = strlen(name);
    if (n < k + 1 || memcmp(p, name, k) != 0 || p[k] != ':') return 0;
    return k + 1 < n && p[k + 1] == ' ' ? k + 2 : k + 1;
}

/* The length of the line at p (up to its first CR or LF; n when none). */
static size_t line_len(const char *p, size_t n)
{
    size_t i = 0;
    while (i < n && p[i] != '\r' && p[i] != '\n') i++;
    return i;
}

static int is_terminator(const char *p, size_t n)
{
    return (n == 2 && (memcmp(p, "\n\n", 2) == 0 || memcmp(p, "\r\r", 2) == 0)) ||
           (n == 4 && memcmp(p, "\r\n\r\n", 4) == 0);
}

long mg_sse_plain(const char *p, size_t n, int fmt, long *chars)
{
    size_t end = mg_sse_boundary(p, n);
    if (end == 0) return 0;
    size_t at = 0;
    if (fmt == MG_SSE_ANTHROPIC) {
        /* event: content_block_delta, one line break, then the data line */
        static const char name[] = "content_block_delta";
        size_t f = field(p, end, "event");
        if (f == 0 || end - f < sizeof name - 1 || memcmp(p + f, name, sizeof name - 1) != 0) return -1;
        at = f + sizeof name - 1;
        if (at + 1 < end && p[at] == '\r' && p[at + 1] == '\n') at += 2;
        else if (at < end && (p[at] == '\n' || p[at] == '\r')) at += 1;
        else return -1;
    } else if (fmt != MG_SSE_OPENAI) {
        return -1;
    }
    size_t f = field(p + at, end - at, "data");
    if (f == 0) return -1;
    const char *data = p + at + f;
    size_t dlen = line_len(data, end - at - f);
    if (!is_terminator(data + dlen, end - at - f - dlen)) return -1;
    mg_json_info_t info;
    if (mg_json_scan(data, dlen, &info) != 0) return -1;
    if (fmt == MG_SSE_OPENAI) {
        /* the decoder's other cases: an error, the usage, the finish ([DONE] is no object) */
        if (mg_json_first_key_is(data, dlen, "error", 5) ||
            mg_json_has_member(data, dlen, "usage", 5, '{') ||
            mg_json_has_member(data, dlen, "finish_reason", 13, '"'))
            return -1;
    }
    *chars = mg_text_chars(data, dlen);
    return (long)end;
}
