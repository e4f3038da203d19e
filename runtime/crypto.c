/* crypto.c — digests and signatures for Lua (API keys stored hashed, JWT
 * signatures), on mbedTLS: the one file that talks to its message-digest,
 * RSA and ECDSA APIs. */
#include <mbedtls/bignum.h>
#include <mbedtls/ecdsa.h>
#include <mbedtls/ecp.h>
#include <mbedtls/md.h>
#include <mbedtls/rsa.h>
#include <mbedtls/sha256.h>
#include <stdio.h>
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

/*=== JWS signatures (RFC 7515, 7518): HS256, RS256, ES256 ===================
 *
 * Stateless: every call builds the key from its JWK components (RSA n/e, EC
 * P-256 x/y, the raw HMAC secret), checks it, verifies and frees everything
 * before returning, so Lua holds no C object and nothing outlives the call.
 * Building a public key is cheap next to the verification itself.
 *
 * The detailed reason for a refusal goes to err (NUL-terminated, cut to
 * errlen) for the log; it never contains key or signature bytes. */
#define MG_RSA_MIN_BITS 2048   /* RFC 7518 §3.3: 2048 bits or larger MUST be used */
#define MG_HS256_MIN_KEY 32    /* RFC 7518 §3.2: a key at least as long as the hash */

static int jws_fail(char *err, size_t errlen, int rc, const char *msg)
{
    if (err != NULL && errlen > 0) snprintf(err, errlen, "%s", msg);
    return rc;
}

/* Loads an RSA public key from big-endian n and e into an initialised rsa;
 * 0, or -1 with err filled. */
static int rsa_load(mbedtls_rsa_context *rsa, const unsigned char *n, size_t nlen,
                    const unsigned char *e, size_t elen, char *err, size_t errlen)
{
    if (nlen == 0 || elen == 0) return jws_fail(err, errlen, -1, "RSA key without n or e");
    if (nlen > MBEDTLS_MPI_MAX_SIZE || elen > 8)
        return jws_fail(err, errlen, -1, "RSA key too large");
    if (mbedtls_rsa_import_raw(rsa, n, nlen, NULL, 0, NULL, 0, NULL, 0, e, elen) != 0 ||
        mbedtls_rsa_complete(rsa) != 0 || mbedtls_rsa_check_pubkey(rsa) != 0)
        return jws_fail(err, errlen, -1, "not a usable RSA public key");
    if (mbedtls_rsa_get_len(rsa) * 8 < MG_RSA_MIN_BITS)
        return jws_fail(err, errlen, -1, "RSA modulus shorter than 2048 bits");
    return 0;
}

/* Loads a P-256 public point from x and y (32 bytes each, RFC 7518 §6.2.1);
 * 0, or -1 with err filled. The point is checked to be on the curve, so an
 * invalid-curve key never reaches a verification. */
static int p256_load(mbedtls_ecp_group *grp, mbedtls_ecp_point *q, const unsigned char *x,
                     size_t xlen, const unsigned char *y, size_t ylen, char *err, size_t errlen)
{
    unsigned char pt[65];
    if (xlen != 32 || ylen != 32)
        return jws_fail(err, errlen, -1, "P-256 key coordinates must be 32 bytes each");
    if (mbedtls_ecp_group_load(grp, MBEDTLS_ECP_DP_SECP256R1) != 0)
        return jws_fail(err, errlen, -1, "P-256 not available in this mbedTLS");
    pt[0] = 0x04;   /* uncompressed: 04 || x || y */
    memcpy(pt + 1, x, 32);
    memcpy(pt + 33, y, 32);
    if (mbedtls_ecp_point_read_binary(grp, q, pt, sizeof pt) != 0 ||
        mbedtls_ecp_check_pubkey(grp, q) != 0)
        return jws_fail(err, errlen, -1, "EC key is not a point on P-256");
    return 0;
}

int mg_jws_key_check(int alg, const void *k1, size_t k1len, const void *k2, size_t k2len,
                     char *err, size_t errlen)
{
    int rc;
    if (err != NULL && errlen > 0) err[0] = '\0';
    switch (alg) {
    case MG_JWS_HS256:
        if (k1len < MG_HS256_MIN_KEY)
            return jws_fail(err, errlen, -1, "HS256 secret shorter than 32 bytes");
        return 0;
    case MG_JWS_RS256: {
        mbedtls_rsa_context rsa;
        mbedtls_rsa_init(&rsa, MBEDTLS_RSA_PKCS_V15, 0);
        rc = rsa_load(&rsa, k1, k1len, k2, k2len, err, errlen);
        mbedtls_rsa_free(&rsa);
        return rc;
    }
    case MG_JWS_ES256: {
        mbedtls_ecp_group grp;
        mbedtls_ecp_point q;
        mbedtls_ecp_group_init(&grp);
        mbedtls_ecp_point_init(&q);
        rc = p256_load(&grp, &q, k1, k1len, k2, k2len, err, errlen);
        mbedtls_ecp_point_free(&q);
        mbedtls_ecp_group_free(&grp);
        return rc;
    }
    default:
        return jws_fail(err, errlen, -1, "unsupported algorithm");
    }
}

int mg_jws_verify(int alg, const void *k1, size_t k1len, const void *k2, size_t k2len,
                  const void *msg, size_t mlen, const void *sig, size_t slen,
                  char *err, size_t errlen)
{
    unsigned char hash[32];
    int rc;
    if (err != NULL && errlen > 0) err[0] = '\0';
    if (mg_jws_key_check(alg, k1, k1len, k2, k2len, err, errlen) != 0) return -1;

    if (alg == MG_JWS_HS256) {
        if (mg_hmac_sha256(k1, k1len, msg, mlen, hash) != 0)
            return jws_fail(err, errlen, -1, "HMAC-SHA256 not available");
        if (slen != sizeof hash) return jws_fail(err, errlen, 0, "signature length");
        return mg_const_eq(hash, sig, sizeof hash) ? 1
                                                   : jws_fail(err, errlen, 0, "signature mismatch");
    }

    mg_sha256(msg, mlen, hash);
    if (alg == MG_JWS_RS256) {
        mbedtls_rsa_context rsa;
        mbedtls_rsa_init(&rsa, MBEDTLS_RSA_PKCS_V15, 0);
        rc = rsa_load(&rsa, k1, k1len, k2, k2len, err, errlen);
        if (rc == 0) {
            /* mbedTLS reads exactly the modulus length from sig */
            if (slen != mbedtls_rsa_get_len(&rsa))
                rc = jws_fail(err, errlen, 0, "signature length");
            else if (mbedtls_rsa_rsassa_pkcs1_v15_verify(&rsa, NULL, NULL, MBEDTLS_RSA_PUBLIC,
                                                         MBEDTLS_MD_SHA256, sizeof hash, hash,
                                                         sig) != 0)
                rc = jws_fail(err, errlen, 0, "signature mismatch");
            else
                rc = 1;
        }
        mbedtls_rsa_free(&rsa);
        return rc;
    }

    /* ES256: the JWS signature is r || s, 32 bytes each (RFC 7518 §3.4), not
     * the DER of X.509; mbedtls_ecdsa_verify takes r and s as numbers, and
     * refuses r or s outside [1, n-1]. */
    {
        mbedtls_ecp_group grp;
        mbedtls_ecp_point q;
        mbedtls_mpi r, s;
        mbedtls_ecp_group_init(&grp);
        mbedtls_ecp_point_init(&q);
        mbedtls_mpi_init(&r);
        mbedtls_mpi_init(&s);
        rc = p256_load(&grp, &q, k1, k1len, k2, k2len, err, errlen);
        if (rc == 0) {
            const unsigned char *b = sig;
            if (slen != 64)
                rc = jws_fail(err, errlen, 0, "signature length");
            else if (mbedtls_mpi_read_binary(&r, b, 32) != 0 ||
                     mbedtls_mpi_read_binary(&s, b + 32, 32) != 0)
                rc = jws_fail(err, errlen, -1, "out of memory");
            else if (mbedtls_ecdsa_verify(&grp, hash, sizeof hash, &q, &r, &s) != 0)
                rc = jws_fail(err, errlen, 0, "signature mismatch");
            else
                rc = 1;
        }
        mbedtls_mpi_free(&s);
        mbedtls_mpi_free(&r);
        mbedtls_ecp_point_free(&q);
        mbedtls_ecp_group_free(&grp);
        return rc;
    }
}
