/* crypto.c — digests for Lua (API keys stored hashed, JWT signatures), on
 * mbedTLS: the one file that talks to its message-digest API. */
#include <mbedtls/md.h>
#include <mbedtls/sha256.h>
#include <string.h>

#include "ffi.h"

void mg_sha256(const void *data, size_t len, unsigned char out[32])
{
    /* mbedtls_sha256_ret: 0 = SHA-256 (1 would be SHA-224) */
    mbedtls_sha256_ret(data, len, out, 0);
}

/* Returns 0, or -1 when mbedTLS cannot (no SHA-256 in this build). */
int mg_hmac_sha256(const void *key, size_t klen, const void *data, size_t len,
                   unsigned char out[32])
{
    const mbedtls_md_info_t *md = mbedtls_md_info_from_type(MBEDTLS_MD_SHA256);
    if (md == NULL) return -1;
    return mbedtls_md_hmac(md, key, klen, data, len, out) == 0 ? 0 : -1;
}

int mg_const_eq(const void *a, const void *b, size_t len)
{
    const volatile unsigned char *x = a, *y = b;
    unsigned char d = 0;
    for (size_t i = 0; i < len; i++) d |= (unsigned char)(x[i] ^ y[i]);
    return d == 0;
}
