/* json.c — a validating scanner for request bodies.
 *
 * The request path needs three things from a JSON body: is it valid, what is
 * its top-level "model", and is "stream" true. Decoding the whole document
 * into Lua tables to learn that costs more than everything else Lua does for a
 * request; this scanner answers in one pass without allocating, and the full
 * decode happens only if a plugin asks for ctx.request.json.
 *
 * It accepts exactly RFC 8259 JSON (no comments, no trailing commas, no NaN),
 * with nesting up to MG_JSON_MAX_DEPTH. */
#include <stddef.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "ffi.h"

#define MG_JSON_MAX_DEPTH 512

typedef struct {
    const char *p, *end;
    int too_deep;   /* failed on MG_JSON_MAX_DEPTH, not on the syntax */
} scan_t;

static void ws(scan_t *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r')) s->p++;
}

static int hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* The first byte at or after q that ends a plain run of string text: a quote,
 * a backslash or a control character (e if there is none). Sixteen bytes at a
 * time where SSE2 is there (every x86-64). */
static const unsigned char *plain_run(const unsigned char *q, const unsigned char *e)
{
#ifdef __SSE2__
    const __m128i quote = _mm_set1_epi8('"'), bslash = _mm_set1_epi8('\\'), ctl = _mm_set1_epi8(0x1f);
    while (e - q >= 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)q);
        /* min(v, 0x1f) == v exactly for the bytes <= 0x1f */
        __m128i hit = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, bslash)),
                                   _mm_cmpeq_epi8(_mm_min_epu8(v, ctl), v));
        int mask = _mm_movemask_epi8(hit);
        if (mask != 0) return q + __builtin_ctz((unsigned)mask);
        q += 16;
    }
#endif
    while (q < e && *q >= 0x20 && *q != '"' && *q != '\\') q++;
    return q;
}

/* A string at s->p (the opening quote). Sets *escaped when it holds escapes.
 * Control characters must be escaped; UTF-8 is not checked here (cjson does
 * not either, and providers answer that themselves). */
static int string(scan_t *s, int *escaped)
{
    s->p++;
    while (s->p < s->end) {
        /* the plain run first, in registers (most of a body is string text) */
        const unsigned char *q = (const unsigned char *)s->p, *e = (const unsigned char *)s->end;
        q = plain_run(q, e);
        s->p = (const char *)q;
        if (q >= e) break;
        unsigned char c = *q;
        if (c == '"') {
            s->p++;
            return 0;
        }
        if (c < 0x20) return -1;
        if (c == '\\') {
            if (escaped) *escaped = 1;
            s->p++;
            if (s->p >= s->end) return -1;
            switch (*s->p) {
            case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
                s->p++;
                break;
            case 'u':
                if (s->end - s->p < 5 || !hex(s->p[1]) || !hex(s->p[2]) || !hex(s->p[3]) || !hex(s->p[4]))
                    return -1;
                s->p += 5;
                break;
            default:
                return -1;
            }
            continue;
        }
        s->p++;
    }
    return -1;
}

static int digits(scan_t *s)
{
    const char *start = s->p;
    while (s->p < s->end && *s->p >= '0' && *s->p <= '9') s->p++;
    return s->p > start ? 0 : -1;
}

static int number(scan_t *s)
{
    if (*s->p == '-') s->p++;
    if (s->p >= s->end) return -1;
    if (*s->p == '0') s->p++;
    else if (digits(s) != 0) return -1;
    if (s->p < s->end && *s->p == '.') {
        s->p++;
        if (digits(s) != 0) return -1;
    }
    if (s->p < s->end && (*s->p == 'e' || *s->p == 'E')) {
        s->p++;
        if (s->p < s->end && (*s->p == '+' || *s->p == '-')) s->p++;
        if (digits(s) != 0) return -1;
    }
    return 0;
}

static int literal(scan_t *s, const char *word, size_t n)
{
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, word, n) != 0) return -1;
    s->p += n;
    return 0;
}

static int value(scan_t *s, int depth);

static int container(scan_t *s, int depth, char close)
{
    if (depth > MG_JSON_MAX_DEPTH) {
        s->too_deep = 1;
        return -1;
    }
    s->p++;
    ws(s);
    if (s->p < s->end && *s->p == close) {
        s->p++;
        return 0;
    }
    for (;;) {
        if (close == '}') {
            if (s->p >= s->end || *s->p != '"' || string(s, NULL) != 0) return -1;
            ws(s);
            if (s->p >= s->end || *s->p != ':') return -1;
            s->p++;
            ws(s);
        }
        if (value(s, depth + 1) != 0) return -1;
        ws(s);
        if (s->p >= s->end) return -1;
        if (*s->p == ',') {
            s->p++;
            ws(s);
            continue;
        }
        if (*s->p == close) {
            s->p++;
            return 0;
        }
        return -1;
    }
}

static int value(scan_t *s, int depth)
{
    if (s->p >= s->end) return -1;
    switch (*s->p) {
    case '{': return container(s, depth, '}');
    case '[': return container(s, depth, ']');
    case '"': return string(s, NULL);
    case 't': return literal(s, "true", 4);
    case 'f': return literal(s, "false", 5);
    case 'n': return literal(s, "null", 4);
    default:
        if (*s->p == '-' || (*s->p >= '0' && *s->p <= '9')) return number(s);
        return -1;
    }
}

/* ---- the counts of a "usage" object ----------------------------------------
 *
 * Reading an answer's usage was a lua-cjson decode of the member: three tables,
 * a dozen keys and strtod, ~14k instructions a request. The scanner has already
 * validated the member when usage_read runs, so this walk only picks the counts
 * out. It gives up (usage_plain = 0, and Lua decodes the member as before) on
 * anything that is not the plain case: a key with escapes, or a count that is
 * not a non-negative integer of at most 15 digits (so below 2^53, exact in a
 * double). A repeated key: the last one wins, as in every decoder. */

/* lua/moongate/ffi.lua declares the array with its size written out, and decoder.lua reads
 * the slots by number */
_Static_assert(MG_USAGE_N == 9 && MG_USAGE_CACHED == 7 && MG_USAGE_REASONING == 8,
               "mg_json_info_t.usage: keep lua/moongate/ffi.lua and codec/decoder.lua in step");

static const struct { const char *name; size_t len; int slot; } USAGE_KEYS[] = {
    { "prompt_tokens", 13, MG_USAGE_PROMPT },
    { "completion_tokens", 17, MG_USAGE_COMPLETION },
    { "total_tokens", 12, MG_USAGE_TOTAL },
    { "input_tokens", 12, MG_USAGE_INPUT },
    { "output_tokens", 13, MG_USAGE_OUTPUT },
    { "cache_read_input_tokens", 23, MG_USAGE_CACHE_READ },
    { "cache_creation_input_tokens", 27, MG_USAGE_CACHE_CREATION },
};

/* A plain count at s->p: -1 when the value is anything else (it is skipped). */
static double plain_count(scan_t *s)
{
    const char *start = s->p;
    double n = 0;
    while (s->p < s->end && *s->p >= '0' && *s->p <= '9') n = n * 10 + (*s->p++ - '0');
    size_t nd = (size_t)(s->p - start);
    if (nd == 0 || nd > 15 || (s->p < s->end && (*s->p == '.' || *s->p == 'e' || *s->p == 'E'))) {
        s->p = start;
        return -1;
    }
    return n;
}

/* The slot a key of the usage object (details 0) or of one of its two details objects
 * (details: MG_USAGE_CACHED or MG_USAGE_REASONING) fills, or -1. */
static int usage_key(const char *k, size_t kl, int details)
{
    if (details == MG_USAGE_CACHED) return kl == 13 && memcmp(k, "cached_tokens", 13) == 0 ? MG_USAGE_CACHED : -1;
    if (details == MG_USAGE_REASONING)
        return kl == 16 && memcmp(k, "reasoning_tokens", 16) == 0 ? MG_USAGE_REASONING : -1;
    for (size_t i = 0; i < sizeof USAGE_KEYS / sizeof USAGE_KEYS[0]; i++)
        if (kl == USAGE_KEYS[i].len && memcmp(k, USAGE_KEYS[i].name, kl) == 0) return USAGE_KEYS[i].slot;
    return -1;
}

/* Walks the object at s->p (already validated). Returns 0, or -1: not the plain case. */
static int usage_object(scan_t *s, mg_json_info_t *out, int details)
{
    s->p++;   /* { */
    ws(s);
    if (s->p < s->end && *s->p == '}') {
        s->p++;
        return 0;
    }
    while (s->p < s->end) {
        const char *k = s->p + 1;
        int kesc = 0;
        if (string(s, &kesc) != 0 || kesc) return -1;
        size_t kl = (size_t)(s->p - 1 - k);
        ws(s);
        s->p++;   /* : */
        ws(s);
        int slot = usage_key(k, kl, details);
        int nested = -1;
        if (!details && kl == 21 && memcmp(k, "prompt_tokens_details", 21) == 0) nested = MG_USAGE_CACHED;
        if (!details && kl == 25 && memcmp(k, "completion_tokens_details", 25) == 0) nested = MG_USAGE_REASONING;
        if (slot >= 0) {
            double n = plain_count(s);
            if (n < 0) return -1;
            out->usage[slot] = n;
        } else if (nested >= 0 && s->p < s->end && *s->p == '{') {
            out->usage[nested] = -1;   /* a later object replaces an earlier one whole */
            if (usage_object(s, out, nested) != 0) return -1;
        } else if (value(s, 1) != 0) {
            return -1;
        }
        ws(s);
        if (s->p < s->end && *s->p == ',') {
            s->p++;
            ws(s);
            continue;
        }
        break;
    }
    if (s->p >= s->end || *s->p != '}') return -1;
    s->p++;
    return 0;
}

static void usage_read(const char *v, const char *end, mg_json_info_t *out)
{
    for (int i = 0; i < MG_USAGE_N; i++) out->usage[i] = -1;
    scan_t s = { v, end, 0 };
    out->usage_plain = *v == '{' && usage_object(&s, out, 0) == 0 && s.p == end;
}

int mg_json_scan(const char *body, size_t len, mg_json_info_t *out)
{
    scan_t s = { body, body + len, 0 };
    memset(out, 0, sizeof *out);
    out->model_off = -1;
    out->usage_off = -1;
    ws(&s);
    if (s.p >= s.end || *s.p != '{') {
        /* valid JSON that is not an object still fails here: every endpoint
         * that needs JSON wants an object */
        return -1;
    }
    s.p++;
    ws(&s);
    if (s.p < s.end && *s.p == '}') {
        s.p++;
    } else {
        for (;;) {
            if (s.p >= s.end || *s.p != '"') return -1;
            const char *k = s.p + 1;
            int kesc = 0;
            if (string(&s, &kesc) != 0) return -1;
            size_t klen = (size_t)(s.p - 1 - k);
            ws(&s);
            if (s.p >= s.end || *s.p != ':') return -1;
            s.p++;
            ws(&s);
            const char *v = s.p;
            int vesc = 0;
            if (s.p < s.end && *s.p == '"') {
                if (string(&s, &vesc) != 0) return -1;
            } else if (value(&s, 2) != 0) {   /* depth: the level, the top object's being 1 */
                return s.too_deep ? -2 : -1;
            }
            if (!kesc && klen == 5 && memcmp(k, "model", 5) == 0) {
                /* the last one wins, as in every decoder */
                if (*v == '"') {
                    out->model_off = (long)(v + 1 - body);
                    out->model_len = (long)(s.p - 1 - (v + 1));
                    out->model_escaped = vesc;
                } else {
                    out->model_off = -1;
                }
            } else if (!kesc && klen == 6 && memcmp(k, "stream", 6) == 0) {
                out->stream = s.p - v == 4 && memcmp(v, "true", 4) == 0;
            } else if (!kesc && klen == 5 && memcmp(k, "usage", 5) == 0) {
                out->usage_off = (long)(v - body);
                out->usage_len = (long)(s.p - v);
                usage_read(v, s.p, out);
            } else if (kesc) {
                out->escaped_keys = 1;
            }
            ws(&s);
            if (s.p >= s.end) return -1;
            if (*s.p == ',') {
                s.p++;
                ws(&s);
                continue;
            }
            if (*s.p == '}') {
                s.p++;
                break;
            }
            return -1;
        }
    }
    ws(&s);
    return s.p == s.end ? 0 : -1;
}

/* ---- scans of a provider's JSON text, for streamed events ----------------
 *
 * A stream passed through in the client's own format is not decoded event by
 * event: the decoder only needs to know whether an event holds an error, a
 * usage object or a finish reason, and how much answer text it carries (the
 * completion estimate when the provider reports no usage). These answer that
 * in one pass each, and match byte for byte what Lua's patterns did before
 * (%s is the C locale's isspace, %w its isalnum): the estimate a user may be
 * billed on cannot change with the scanner. */

static int lua_space(unsigned char c)
{
    return c == ' ' || (c >= '\t' && c <= '\r');
}

static int word_char(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}

static const unsigned char *skip_space(const unsigned char *p, const unsigned char *e)
{
    while (p < e && lua_space(*p)) p++;
    return p;
}

long mg_utf8_chars(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s, *e = p + len;
    long cont = 0;
    for (; p < e; p++) cont += (*p & 0xc0) == 0x80;
    return (long)len - cont;
}

/* the keys whose string values are answer text (usage.lua's TEXT_KEYS) */
static int text_key(const unsigned char *k, size_t n)
{
    switch (n) {
    case 4: return memcmp(k, "text", 4) == 0;
    case 7: return memcmp(k, "content", 7) == 0 || memcmp(k, "refusal", 7) == 0;
    case 8: return memcmp(k, "thinking", 8) == 0;
    case 9: return memcmp(k, "arguments", 9) == 0;
    case 12: return memcmp(k, "partial_json", 12) == 0;
    case 17: return memcmp(k, "reasoning_content", 17) == 0;
    default: return 0;
    }
}

/* `"word"` %s* `:` %s* `"` at p (p at the first quote): the value's opening quote, or NULL */
static const unsigned char *member_string(const unsigned char *p, const unsigned char *e,
                                          const unsigned char **key_end)
{
    const unsigned char *q = p + 1;
    while (q < e && word_char(*q)) q++;
    if (q == p + 1 || q >= e || *q != '"') return NULL;
    *key_end = q;
    q = skip_space(q + 1, e);
    if (q >= e || *q != ':') return NULL;
    q = skip_space(q + 1, e);
    return q < e && *q == '"' ? q : NULL;
}

/* the answer text's characters (utf8) or bytes: usage.scan_chars and pricing.text_len */
static long text_count(const char *s, size_t len, int utf8)
{
    const unsigned char *p = (const unsigned char *)s, *e = p + len;
    long n = 0;
    while (p < e) {
        p = memchr(p, '"', (size_t)(e - p));
        if (!p) break;
        const unsigned char *key_end = NULL;
        const unsigned char *open = member_string(p, e, &key_end);
        if (!open) {
            p++;
            continue;
        }
        /* the value runs to the next quote not escaped by a backslash (or to the end) */
        const unsigned char *q = open + 1;
        while (q < e && *q != '"') q += *q == '\\' && e - q >= 2 ? 2 : 1;
        if (text_key(p + 1, (size_t)(key_end - p - 1))) {
            size_t vl = (size_t)(q - open - 1);
            n += utf8 ? mg_utf8_chars((const char *)open + 1, vl) : (long)vl;
        }
        if (q >= e) break;
        p = q + 1;
    }
    return n;
}

long mg_text_chars(const char *s, size_t len)
{
    return text_count(s, len, 1);
}

long mg_text_bytes(const char *s, size_t len)
{
    return text_count(s, len, 0);
}

int mg_json_has_member(const char *s, size_t len, const char *key, size_t klen, int next)
{
    const unsigned char *p = (const unsigned char *)s, *e = p + len;
    while ((size_t)(e - p) >= klen + 2) {
        p = memchr(p, '"', (size_t)(e - p));
        if (!p || (size_t)(e - p) < klen + 2) return 0;
        if (memcmp(p + 1, key, klen) == 0 && p[klen + 1] == '"') {
            const unsigned char *q = skip_space(p + klen + 2, e);
            if (q < e && *q == ':') {
                q = skip_space(q + 1, e);
                if (q < e && *q == (unsigned char)next) return 1;
            }
        }
        p++;
    }
    return 0;
}

int mg_json_first_key_is(const char *s, size_t len, const char *key, size_t klen)
{
    const unsigned char *p = (const unsigned char *)s, *e = p + len;
    p = skip_space(p, e);
    if (p >= e || *p != '{') return 0;
    p = skip_space(p + 1, e);
    return (size_t)(e - p) >= klen + 2 && *p == '"' && memcmp(p + 1, key, klen) == 0 && p[klen + 1] == '"';
}
