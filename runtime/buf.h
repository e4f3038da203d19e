/* buf.h — a growable byte buffer.
 *
 * A buffer owns its memory; mg_buf_free() releases it and leaves the buffer
 * empty and reusable. Appends grow geometrically; an allocation failure
 * aborts the process (as Redis's zmalloc does): a gateway that cannot
 * allocate a few KB cannot serve anyway, and checking every append would hide
 * the real error paths. */
#ifndef MG_BUF_H
#define MG_BUF_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct mg_buf {
    char  *data;
    size_t len;
    size_t cap;
} mg_buf_t;

void  mg_buf_init(mg_buf_t *b);
void  mg_buf_free(mg_buf_t *b);
void  mg_buf_grow(mg_buf_t *b, size_t extra);   /* the slow path of the two below */
/* The two calls of every line written: inline, a compare and a memcpy when it fits. */
static inline void mg_buf_reserve(mg_buf_t *b, size_t extra)
{
    if (b->len + extra > b->cap) mg_buf_grow(b, extra);
}
static inline void mg_buf_append(mg_buf_t *b, const void *data, size_t len)
{
    if (len == 0) return;
    mg_buf_reserve(b, len);
    memcpy(b->data + b->len, data, len);
    b->len += len;
}
void  mg_buf_append_uint(mg_buf_t *b, uint64_t v);   /* decimal, without printf */
void  mg_buf_appendf(mg_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void  mg_buf_consume(mg_buf_t *b, size_t n);   /* drop n bytes from the front */
/* s (n bytes) as a JSON string: quotes, backslashes and control characters (and DEL)
 * escaped, other bytes as they are (names are UTF-8); NULL as null. */
void  mg_buf_json_string(mg_buf_t *b, const char *s, size_t n);
static inline void mg_buf_reset(mg_buf_t *b) { b->len = 0; }

void *mg_xmalloc(size_t n);
void *mg_xcalloc(size_t n, size_t size);
void *mg_xrealloc(void *p, size_t n);
char *mg_xstrndup(const char *s, size_t n);

#endif
