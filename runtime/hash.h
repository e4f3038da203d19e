/* hash.h — FNV-1a over a byte string: the hash of every table in the runtime
 * (metric series, gw.shared keys). Short keys, no adversarial input from the
 * network (keys are built by plugins), so speed and simplicity win. */
#ifndef MG_HASH_H
#define MG_HASH_H

#include <stddef.h>
#include <stdint.h>

static inline uint64_t mg_hash(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ULL;
    }
    return h;
}

#endif
