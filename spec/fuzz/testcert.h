/* testcert.h — a throwaway self-signed P-256 certificate made in memory with
 * mbedTLS, for the TLS fuzzer and unit tests: no key is ever committed. */
#ifndef MG_TESTCERT_H
#define MG_TESTCERT_H

#include <mbedtls/bignum.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/ecp.h>
#include <mbedtls/entropy.h>
#include <mbedtls/pk.h>
#include <mbedtls/x509_crt.h>
#include <string.h>

/* Fills cert and key (PEM, NUL-terminated) for subject CN=cn, valid
 * 2020..2099. Returns 0, or an mbedTLS error code. */
static int mg_testcert(const char *cn, char *cert, size_t certcap, char *key, size_t keycap)
{
    mbedtls_entropy_context ent;
    mbedtls_ctr_drbg_context rng;
    mbedtls_pk_context pk;
    mbedtls_x509write_cert w;
    mbedtls_mpi serial;
    char name[128];
    int rc;
    mbedtls_entropy_init(&ent);
    mbedtls_ctr_drbg_init(&rng);
    mbedtls_pk_init(&pk);
    mbedtls_x509write_crt_init(&w);
    mbedtls_mpi_init(&serial);
    snprintf(name, sizeof name, "CN=%s", cn);
    if ((rc = mbedtls_ctr_drbg_seed(&rng, mbedtls_entropy_func, &ent, NULL, 0)) != 0 ||
        (rc = mbedtls_pk_setup(&pk, mbedtls_pk_info_from_type(MBEDTLS_PK_ECKEY))) != 0 ||
        (rc = mbedtls_ecp_gen_key(MBEDTLS_ECP_DP_SECP256R1, mbedtls_pk_ec(pk), mbedtls_ctr_drbg_random,
                                  &rng)) != 0 ||
        (rc = mbedtls_pk_write_key_pem(&pk, (unsigned char *)key, keycap)) != 0 ||
        (rc = mbedtls_mpi_lset(&serial, 1)) != 0)
        goto out;
    mbedtls_x509write_crt_set_subject_key(&w, &pk);
    mbedtls_x509write_crt_set_issuer_key(&w, &pk);
    mbedtls_x509write_crt_set_version(&w, MBEDTLS_X509_CRT_VERSION_3);
    mbedtls_x509write_crt_set_md_alg(&w, MBEDTLS_MD_SHA256);
    if ((rc = mbedtls_x509write_crt_set_subject_name(&w, name)) != 0 ||
        (rc = mbedtls_x509write_crt_set_issuer_name(&w, name)) != 0 ||
        (rc = mbedtls_x509write_crt_set_serial(&w, &serial)) != 0 ||
        (rc = mbedtls_x509write_crt_set_validity(&w, "20200101000000", "20991231235959")) != 0 ||
        (rc = mbedtls_x509write_crt_pem(&w, (unsigned char *)cert, certcap, mbedtls_ctr_drbg_random,
                                        &rng)) != 0)
        goto out;
out:
    mbedtls_mpi_free(&serial);
    mbedtls_x509write_crt_free(&w);
    mbedtls_pk_free(&pk);
    mbedtls_ctr_drbg_free(&rng);
    mbedtls_entropy_free(&ent);
    return rc;
}

#endif
