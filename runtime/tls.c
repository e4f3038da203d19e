/* tls.c — server-side TLS on mbedTLS 2.28 (see tls.h): the one file that
 * talks to its SSL and X.509 APIs.
 *
 * mbedTLS is built with MBEDTLS_THREADING_PTHREAD on Debian, which is what
 * lets one context serve every worker: a configured mbedtls_ssl_config is
 * only read during handshakes, the CTR-DRBG, the session cache and RSA
 * blinding lock themselves, and ECDSA signing does not write to the key. So
 * there is one random generator for the process (seeded once from
 * mbedtls_entropy) and one context per TLS listener, swapped whole on reload. */
#include <errno.h>
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/pk.h>
#include <mbedtls/platform_util.h>
#include <mbedtls/ssl.h>
#include <mbedtls/ssl_cache.h>
#include <mbedtls/x509_crt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "ffi.h"
#include "metrics.h"
#include "tls.h"

#define MG_TLS_RECORD      16384          /* plaintext per record (the TLS maximum) */
#define MG_TLS_FILE_MAX    (1u << 20)     /* a certificate chain or key file larger is refused */
#define MG_TLS_CACHE_SIZE  1000           /* sessions kept for resumption, per listener */
#define MG_TLS_CACHE_TIME  3600           /* seconds */

/*=== the process-wide random generator and metric ==========================*/

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static mbedtls_entropy_context entropy;
static mbedtls_ctr_drbg_context drbg;
static int drbg_rc = -1;
static int errors_metric = -1;

static void global_init(void)
{
    mbedtls_entropy_init(&entropy);
    mbedtls_ctr_drbg_init(&drbg);
    static const unsigned char pers[] = "moongate tls";
    drbg_rc = mbedtls_ctr_drbg_seed(&drbg, mbedtls_entropy_func, &entropy, pers, sizeof pers - 1);
    errors_metric = mg_metric_declare("moongate_tls_errors_total", MG_METRIC_COUNTER,
                                      "TLS connections that failed, by reason.", NULL, 0);
}

void mg_tls_count_error(const char *reason)
{
    pthread_once(&global_once, global_init);
    char labels[64];
    int n = snprintf(labels, sizeof labels, "reason=\"%s\"", reason);
    mg_metric_add(errors_metric, labels, (size_t)n, 1);
}

/*=== contexts ===============================================================*/

/* The choices documented in docs/security.md. Arrays mbedTLS keeps pointers to. */
static const int suites[] = {
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    MBEDTLS_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    MBEDTLS_TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    MBEDTLS_TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    MBEDTLS_TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    0,
};
static const mbedtls_ecp_group_id curves[] = {
    MBEDTLS_ECP_DP_CURVE25519, MBEDTLS_ECP_DP_SECP256R1, MBEDTLS_ECP_DP_SECP384R1,
    MBEDTLS_ECP_DP_NONE,
};
static const char *alpn[] = { "http/1.1", NULL };

typedef struct {
    char              *name;    /* SNI name, lower case; NULL for the default */
    mbedtls_x509_crt   crt;
    mbedtls_pk_context pk;
} cert_t;

struct mg_tls_ctx {
    int                       refs;      /* atomic */
    mbedtls_ssl_config        conf;
    mbedtls_ssl_cache_context cache;
    cert_t                   *certs;
    int                       n;
};

static void ctx_free(mg_tls_ctx_t *ctx)
{
    mbedtls_ssl_config_free(&ctx->conf);
    mbedtls_ssl_cache_free(&ctx->cache);
    for (int i = 0; i < ctx->n; i++) {
        mbedtls_x509_crt_free(&ctx->certs[i].crt);
        mbedtls_pk_free(&ctx->certs[i].pk);
        free(ctx->certs[i].name);
    }
    free(ctx->certs);
    free(ctx);
}

void mg_tls_ctx_retain(mg_tls_ctx_t *ctx)
{
    __atomic_add_fetch(&ctx->refs, 1, __ATOMIC_RELAXED);
}

void mg_tls_ctx_release(mg_tls_ctx_t *ctx)
{
    if (ctx == NULL) return;
    if (__atomic_sub_fetch(&ctx->refs, 1, __ATOMIC_ACQ_REL) == 0) ctx_free(ctx);
}

/* mbedTLS's description of rc, for messages ("X509 - ..."). */
static const char *describe(int rc, char *buf, size_t len)
{
    mbedtls_strerror(rc, buf, len);
    return buf;
}

/* SNI: the entry for name — exact (case-insensitive) first, then "*.rest"
 * for a name with exactly one more label in front of rest. NULL for none. */
static cert_t *sni_find(mg_tls_ctx_t *ctx, const char *name, size_t len)
{
    for (int i = 1; i < ctx->n; i++) {
        const char *e = ctx->certs[i].name;
        if (strlen(e) == len && strncasecmp(e, name, len) == 0) return &ctx->certs[i];
    }
    const char *dot = memchr(name, '.', len);
    if (dot == NULL || dot == name) return NULL;
    size_t rest = len - (size_t)(dot + 1 - name);
    for (int i = 1; i < ctx->n; i++) {
        const char *e = ctx->certs[i].name;
        if (e[0] == '*' && e[1] == '.' && strlen(e + 2) == rest &&
            strncasecmp(e + 2, dot + 1, rest) == 0)
            return &ctx->certs[i];
    }
    return NULL;
}

/* mbedTLS calls this with the ClientHello's server name. An unknown name is
 * not an error: the default certificate answers it, as nginx does. */
static int on_sni(void *arg, mbedtls_ssl_context *ssl, const unsigned char *name, size_t len)
{
    cert_t *c = sni_find(arg, (const char *)name, len);
    if (c == NULL) return 0;
    return mbedtls_ssl_set_hs_own_cert(ssl, &c->crt, &c->pk);
}

/* An empty context (no certificates yet); NULL when mbedTLS refuses the
 * defaults (it cannot, short of a broken build). */
static mg_tls_ctx_t *ctx_alloc(int n)
{
    pthread_once(&global_once, global_init);
    if (drbg_rc != 0) return NULL;
    mg_tls_ctx_t *ctx = mg_xcalloc(1, sizeof *ctx);
    ctx->refs = 1;
    ctx->certs = mg_xcalloc((size_t)n, sizeof *ctx->certs);
    ctx->n = n;
    for (int i = 0; i < n; i++) {
        mbedtls_x509_crt_init(&ctx->certs[i].crt);
        mbedtls_pk_init(&ctx->certs[i].pk);
    }
    mbedtls_ssl_config_init(&ctx->conf);
    mbedtls_ssl_cache_init(&ctx->cache);
    return ctx;
}

/* Settles the configuration once every certificate is in. 0 or an mbedTLS code. */
static int ctx_configure(mg_tls_ctx_t *ctx)
{
    mbedtls_ssl_config *conf = &ctx->conf;
    int rc = mbedtls_ssl_config_defaults(conf, MBEDTLS_SSL_IS_SERVER, MBEDTLS_SSL_TRANSPORT_STREAM,
                                         MBEDTLS_SSL_PRESET_DEFAULT);
    if (rc != 0) return rc;
    mbedtls_ssl_conf_rng(conf, mbedtls_ctr_drbg_random, &drbg);
    /* 1.0 and 1.1 are on by default in 2.28; 1.2 is its newest */
    mbedtls_ssl_conf_min_version(conf, MBEDTLS_SSL_MAJOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3);
    mbedtls_ssl_conf_max_version(conf, MBEDTLS_SSL_MAJOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3);
    mbedtls_ssl_conf_ciphersuites(conf, suites);
    mbedtls_ssl_conf_curves(conf, curves);
    mbedtls_ssl_conf_renegotiation(conf, MBEDTLS_SSL_RENEGOTIATION_DISABLED);
    rc = mbedtls_ssl_conf_alpn_protocols(conf, alpn);
    if (rc != 0) return rc;
    rc = mbedtls_ssl_conf_own_cert(conf, &ctx->certs[0].crt, &ctx->certs[0].pk);
    if (rc != 0) return rc;
    if (ctx->n > 1) mbedtls_ssl_conf_sni(conf, on_sni, ctx);
    mbedtls_ssl_cache_set_max_entries(&ctx->cache, MG_TLS_CACHE_SIZE);
    mbedtls_ssl_cache_set_timeout(&ctx->cache, MG_TLS_CACHE_TIME);
    mbedtls_ssl_conf_session_cache(conf, &ctx->cache, mbedtls_ssl_cache_get, mbedtls_ssl_cache_set);
    return 0;
}

/* Reads a whole file, NUL-terminated (PEM parsers want the NUL counted).
 * Returns the buffer (free it after mbedtls_platform_zeroize for keys) or
 * NULL with err filled. */
static unsigned char *slurp(const char *path, size_t *len, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    unsigned char *buf = mg_xmalloc(MG_TLS_FILE_MAX + 1);
    size_t n = fread(buf, 1, MG_TLS_FILE_MAX + 1, f);
    int bad = ferror(f);
    fclose(f);
    if (bad || n > MG_TLS_FILE_MAX || n == 0) {
        snprintf(err, errlen, "%s: %s", path,
                 bad ? "cannot read the file" : n == 0 ? "the file is empty" : "larger than 1 MB");
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

static int is_pem(const unsigned char *buf)
{
    return strstr((const char *)buf, "-----BEGIN") != NULL;
}

/* Parses one certificate chain (PEM text or DER) into crt. 0, or -1 with err. */
static int parse_cert(mbedtls_x509_crt *crt, const unsigned char *buf, size_t len, const char *what,
                      char *err, size_t errlen)
{
    char why[160];
    int rc = mbedtls_x509_crt_parse(crt, buf, is_pem(buf) ? len + 1 : len);
    if (rc < 0) {
        snprintf(err, errlen, "%s: not a valid certificate (%s)", what, describe(rc, why, sizeof why));
        return -1;
    }
    if (rc > 0) {
        snprintf(err, errlen, "%s: %d certificate(s) in the file could not be read", what, rc);
        return -1;
    }
    return 0;
}

/* Parses a private key and checks it against crt's public key. */
static int parse_key(mbedtls_pk_context *pk, const mbedtls_x509_crt *crt, const unsigned char *buf,
                     size_t len, const char *what, char *err, size_t errlen)
{
    char why[160];
    int rc = mbedtls_pk_parse_key(pk, buf, is_pem(buf) ? len + 1 : len, NULL, 0);
    if (rc == MBEDTLS_ERR_PK_PASSWORD_REQUIRED) {
        snprintf(err, errlen, "%s: encrypted private keys are not supported", what);
        return -1;
    }
    if (rc != 0) {
        snprintf(err, errlen, "%s: not a valid private key (%s)", what, describe(rc, why, sizeof why));
        return -1;
    }
    if (mbedtls_pk_check_pair(&crt->pk, pk) != 0) {
        snprintf(err, errlen, "%s: the key does not match the certificate", what);
        return -1;
    }
    return 0;
}

/* The body of mg_tls_ctx_new and mg_tls_ctx_new_pem: certs and keys are
 * file paths (from_files) or PEM text. */
static mg_tls_ctx_t *ctx_build(int n, const char *const *names, const char *const *certs,
                               const char *const *keys, int from_files, int *bad, char *err,
                               size_t errlen)
{
    char why[160];
    *bad = 0;
    if (n < 1) {
        snprintf(err, errlen, "no certificate");
        return NULL;
    }
    mg_tls_ctx_t *ctx = ctx_alloc(n);
    if (ctx == NULL) {
        snprintf(err, errlen, "cannot seed the random generator (%s)", describe(drbg_rc, why, sizeof why));
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        cert_t *c = &ctx->certs[i];
        if (i > 0) {
            c->name = mg_xstrndup(names[i], strlen(names[i]));
            for (char *q = c->name; *q; q++) if (*q >= 'A' && *q <= 'Z') *q = (char)(*q + 32);
        }
        const char *cwhat = from_files ? certs[i] : "certificate";
        const char *kwhat = from_files ? keys[i] : "key";
        size_t len;
        *bad = 2 * i;
        unsigned char *buf = from_files ? slurp(certs[i], &len, err, errlen)
                                        : (unsigned char *)mg_xstrndup(certs[i], len = strlen(certs[i]));
        if (buf == NULL) goto fail;
        int rc = parse_cert(&c->crt, buf, len, cwhat, err, errlen);
        free(buf);
        if (rc != 0) goto fail;
        *bad = 2 * i + 1;
        buf = from_files ? slurp(keys[i], &len, err, errlen)
                         : (unsigned char *)mg_xstrndup(keys[i], len = strlen(keys[i]));
        if (buf == NULL) goto fail;
        rc = parse_key(&c->pk, &c->crt, buf, len, kwhat, err, errlen);
        mbedtls_platform_zeroize(buf, len);   /* the key's bytes do not outlive the parse */
        free(buf);
        if (rc != 0) goto fail;
    }
    int rc = ctx_configure(ctx);
    if (rc != 0) {
        *bad = 0;
        snprintf(err, errlen, "%s: cannot be used (%s)", from_files ? certs[0] : "certificate",
                 describe(rc, why, sizeof why));
        goto fail;
    }
    return ctx;
fail:
    ctx_free(ctx);
    return NULL;
}

mg_tls_ctx_t *mg_tls_ctx_new(int n, const char *const *names, const char *const *certs,
                             const char *const *keys, int *bad, char *err, size_t errlen)
{
    return ctx_build(n, names, certs, keys, 1, bad, err, errlen);
}

mg_tls_ctx_t *mg_tls_ctx_new_pem(int n, const char *const *names, const char *const *certs,
                                 const char *const *keys, int *bad, char *err, size_t errlen)
{
    return ctx_build(n, names, certs, keys, 0, bad, err, errlen);
}

/*=== slots ==================================================================*/

struct mg_tls_slot {
    pthread_mutex_t mu;
    mg_tls_ctx_t   *ctx;
};

mg_tls_slot_t *mg_tls_slot_new(void)
{
    mg_tls_slot_t *s = mg_xcalloc(1, sizeof *s);
    pthread_mutex_init(&s->mu, NULL);
    return s;
}

void mg_tls_slot_set(mg_tls_slot_t *s, mg_tls_ctx_t *ctx)
{
    pthread_mutex_lock(&s->mu);
    mg_tls_ctx_t *old = s->ctx;
    s->ctx = ctx;
    pthread_mutex_unlock(&s->mu);
    mg_tls_ctx_release(old);
}

mg_tls_ctx_t *mg_tls_slot_get(mg_tls_slot_t *s)
{
    /* under the lock: a reload may be dropping the slot's reference right now */
    pthread_mutex_lock(&s->mu);
    mg_tls_ctx_t *ctx = s->ctx;
    if (ctx != NULL) mg_tls_ctx_retain(ctx);
    pthread_mutex_unlock(&s->mu);
    return ctx;
}

void mg_tls_slot_free(mg_tls_slot_t *s)
{
    if (s == NULL) return;
    mg_tls_ctx_release(s->ctx);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

/*=== sessions ===============================================================*/

struct mg_tls {
    mbedtls_ssl_context ssl;
    mg_tls_ctx_t       *ctx;
    const char         *in;        /* ciphertext not yet taken by mbedTLS */
    size_t              in_len;
    mg_buf_t            out;       /* ciphertext for the peer */
    int                 done;      /* handshake over */
    int                 err;       /* the mbedTLS code of the last MG_TLS_ERROR */
    char                errbuf[160];
};

/* The BIO: mbedTLS asks for exactly the bytes of the record it is reading, so
 * whatever it does not take is still ours when it says WANT_READ. */
static int bio_recv(void *arg, unsigned char *buf, size_t len)
{
    mg_tls_t *t = arg;
    if (t->in_len == 0) return MBEDTLS_ERR_SSL_WANT_READ;
    size_t n = len < t->in_len ? len : t->in_len;
    memcpy(buf, t->in, n);
    t->in += n;
    t->in_len -= n;
    return (int)n;
}

/* Sending never blocks: it collects, and the caller queues it on the socket
 * (where the connection's write-queue accounting sees it). */
static int bio_send(void *arg, const unsigned char *buf, size_t len)
{
    mg_tls_t *t = arg;
    mg_buf_append(&t->out, buf, len);
    return (int)len;
}

mg_tls_t *mg_tls_new(mg_tls_ctx_t *ctx)
{
    mg_tls_t *t = mg_xcalloc(1, sizeof *t);
    mbedtls_ssl_init(&t->ssl);
    if (mbedtls_ssl_setup(&t->ssl, &ctx->conf) != 0) {
        mbedtls_ssl_free(&t->ssl);
        free(t);
        return NULL;
    }
    mbedtls_ssl_set_bio(&t->ssl, t, bio_send, bio_recv, NULL);
    mg_buf_init(&t->out);
    mg_tls_ctx_retain(ctx);
    t->ctx = ctx;
    return t;
}

void mg_tls_free(mg_tls_t *t)
{
    if (t == NULL) return;
    mbedtls_ssl_free(&t->ssl);
    mg_buf_free(&t->out);
    mg_tls_ctx_release(t->ctx);
    free(t);
}

void mg_tls_input(mg_tls_t *t, const char *data, size_t len)
{
    t->in = data;
    t->in_len = len;
}

static int fail(mg_tls_t *t, int rc)
{
    t->err = rc;
    t->in_len = 0;
    return MG_TLS_ERROR;
}

int mg_tls_read(mg_tls_t *t, char *out, size_t cap)
{
    if (!t->done) {
        int rc = mbedtls_ssl_handshake(&t->ssl);
        if (rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE) return MG_TLS_WANT;
        if (rc != 0) return fail(t, rc);
        t->done = 1;
    }
    int rc = mbedtls_ssl_read(&t->ssl, (unsigned char *)out, cap);
    if (rc > 0) return rc;
    if (rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE) return MG_TLS_WANT;
    if (rc == 0 || rc == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY) {
        t->in_len = 0;
        return MG_TLS_CLOSED;
    }
    return fail(t, rc);
}

static int write_all(mg_tls_t *t, const unsigned char *p, size_t len)
{
    while (len > 0) {
        int rc = mbedtls_ssl_write(&t->ssl, p, len);
        if (rc < 0) return fail(t, rc);   /* WANT_WRITE cannot happen: bio_send takes all */
        p += rc;
        len -= (size_t)rc;
    }
    return 0;
}

int mg_tls_writev(mg_tls_t *t, const uv_buf_t *bufs, unsigned n)
{
    if (!t->done) return fail(t, MBEDTLS_ERR_SSL_BAD_INPUT_DATA);
    /* A chunk's size line, data and CRLF go in one record, not three. */
    unsigned char rec[MG_TLS_RECORD];
    size_t fill = 0;
    for (unsigned i = 0; i < n; i++) {
        const unsigned char *p = (const unsigned char *)bufs[i].base;
        size_t l = bufs[i].len;
        while (l > 0) {
            if (fill == 0 && l >= MG_TLS_RECORD) {   /* whole records straight from the caller */
                size_t whole = l - l % MG_TLS_RECORD;
                if (write_all(t, p, whole) != 0) return MG_TLS_ERROR;
                p += whole;
                l -= whole;
                continue;
            }
            size_t k = MG_TLS_RECORD - fill < l ? MG_TLS_RECORD - fill : l;
            memcpy(rec + fill, p, k);
            fill += k;
            p += k;
            l -= k;
            if (fill == MG_TLS_RECORD) {
                if (write_all(t, rec, fill) != 0) return MG_TLS_ERROR;
                fill = 0;
            }
        }
    }
    if (fill > 0 && write_all(t, rec, fill) != 0) return MG_TLS_ERROR;
    return 0;
}

void mg_tls_close_notify(mg_tls_t *t)
{
    if (t->done) mbedtls_ssl_close_notify(&t->ssl);
}

mg_buf_t *mg_tls_output(mg_tls_t *t)
{
    return &t->out;
}

int mg_tls_handshake_done(const mg_tls_t *t)
{
    return t->done;
}

const char *mg_tls_error(mg_tls_t *t)
{
    return describe(t->err, t->errbuf, sizeof t->errbuf);
}

const char *mg_tls_error_reason(const mg_tls_t *t)
{
    switch (t->err) {
    case MBEDTLS_ERR_SSL_BAD_HS_PROTOCOL_VERSION: return "version";
    case MBEDTLS_ERR_SSL_NO_CIPHER_CHOSEN:        return "cipher";
    case MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE:     return "alert";
    default: return t->done ? "record" : "handshake";
    }
}

/*=== FFI (ffi.h): what lua/moongate/tls.lua calls ==========================*/

mg_tls_ctx_t *mg_tls_load(int n, const char *const *names, const char *const *certs,
                          const char *const *keys, int *bad, char *err, size_t errlen)
{
    return mg_tls_ctx_new(n, names, certs, keys, bad, err, errlen);
}

void mg_tls_release(mg_tls_ctx_t *ctx)
{
    mg_tls_ctx_release(ctx);
}
