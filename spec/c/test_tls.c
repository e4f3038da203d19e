/* Unit tests for runtime/tls.c: a server session (mg_tls_*) against an
 * mbedTLS client in memory — handshake, SNI, records both ways, close_notify,
 * the versions refused — and the errors of loading certificates. */
#include <mbedtls/ssl.h>
#include <stdlib.h>
#include <unistd.h>

#include "../fuzz/testcert.h"
#include "test.h"
#include "tls.h"

static char cert[3][4096], key[3][2048];

typedef struct {
    mbedtls_ssl_context ssl;
    mbedtls_ssl_config  conf;
    mbedtls_ctr_drbg_context rng;
    mbedtls_entropy_context  ent;
    mg_buf_t            in;      /* server → client bytes not yet read */
    mg_buf_t            out;     /* client → server */
} client_t;

static int c_send(void *arg, const unsigned char *b, size_t n)
{
    client_t *c = arg;
    mg_buf_append(&c->out, b, n);
    return (int)n;
}

static int c_recv(void *arg, unsigned char *b, size_t n)
{
    client_t *c = arg;
    if (c->in.len == 0) return MBEDTLS_ERR_SSL_WANT_READ;
    if (n > c->in.len) n = c->in.len;
    memcpy(b, c->in.data, n);
    mg_buf_consume(&c->in, n);
    return (int)n;
}

static void client_init(client_t *c, const char *sni, int minor)
{
    memset(c, 0, sizeof *c);
    mbedtls_ssl_init(&c->ssl);
    mbedtls_ssl_config_init(&c->conf);
    mbedtls_entropy_init(&c->ent);
    mbedtls_ctr_drbg_init(&c->rng);
    mbedtls_ctr_drbg_seed(&c->rng, mbedtls_entropy_func, &c->ent, NULL, 0);
    mbedtls_ssl_config_defaults(&c->conf, MBEDTLS_SSL_IS_CLIENT, MBEDTLS_SSL_TRANSPORT_STREAM,
                                MBEDTLS_SSL_PRESET_DEFAULT);
    mbedtls_ssl_conf_authmode(&c->conf, MBEDTLS_SSL_VERIFY_NONE);
    mbedtls_ssl_conf_rng(&c->conf, mbedtls_ctr_drbg_random, &c->rng);
    mbedtls_ssl_conf_max_version(&c->conf, MBEDTLS_SSL_MAJOR_VERSION_3, minor);
    mbedtls_ssl_conf_min_version(&c->conf, MBEDTLS_SSL_MAJOR_VERSION_3, minor);
    mbedtls_ssl_setup(&c->ssl, &c->conf);
    if (sni) mbedtls_ssl_set_hostname(&c->ssl, sni);
    mbedtls_ssl_set_bio(&c->ssl, c, c_send, c_recv, NULL);
}

static void client_free(client_t *c)
{
    mbedtls_ssl_free(&c->ssl);
    mbedtls_ssl_config_free(&c->conf);
    mbedtls_ctr_drbg_free(&c->rng);
    mbedtls_entropy_free(&c->ent);
    mg_buf_free(&c->in);
    mg_buf_free(&c->out);
}

/* Moves bytes between the two until the client's handshake ends. Returns the
 * client's result (0 done) and the server's last mg_tls_read in *srv. */
static int handshake(client_t *c, mg_tls_t *t, int *srv)
{
    static char plain[16384];
    int rc = MBEDTLS_ERR_SSL_WANT_READ;
    *srv = MG_TLS_WANT;
    for (int round = 0; round < 20; round++) {
        rc = mbedtls_ssl_handshake(&c->ssl);
        if (c->out.len > 0) {
            mg_tls_input(t, c->out.data, c->out.len);
            *srv = mg_tls_read(t, plain, sizeof plain);
            mg_buf_reset(&c->out);
            mg_buf_t *o = mg_tls_output(t);
            mg_buf_append(&c->in, o->data, o->len);
            mg_buf_reset(o);
        }
        if (rc != MBEDTLS_ERR_SSL_WANT_READ || *srv == MG_TLS_ERROR) break;
    }
    return rc;
}

static mg_tls_ctx_t *ctx3(void)
{
    const char *names[] = { NULL, "api.test", "*.wild.test" };
    const char *certs[] = { cert[0], cert[1], cert[2] }, *keys[] = { key[0], key[1], key[2] };
    char err[256];
    int bad;
    mg_tls_ctx_t *ctx = mg_tls_ctx_new_pem(3, names, certs, keys, &bad, err, sizeof err);
    if (ctx == NULL) fprintf(stderr, "ctx: %s\n", err);
    return ctx;
}

/* The CN of the certificate the client was given. */
static void peer_cn(client_t *c, char *out, size_t cap)
{
    const mbedtls_x509_crt *crt = mbedtls_ssl_get_peer_cert(&c->ssl);
    out[0] = '\0';
    if (crt) mbedtls_x509_dn_gets(out, cap, &crt->subject);
}

static void test_sni(void)
{
    mg_tls_ctx_t *ctx = ctx3();
    CHECK(ctx != NULL);
    if (!ctx) return;
    const char *sni[] = { NULL, "api.test", "API.TEST", "x.wild.test", "a.b.wild.test", "other" };
    const char *cn[] = { "CN=default.test", "CN=api.test", "CN=api.test", "CN=wild.test",
                         "CN=default.test", "CN=default.test" };
    for (size_t i = 0; i < sizeof sni / sizeof sni[0]; i++) {
        client_t c;
        client_init(&c, sni[i], MBEDTLS_SSL_MINOR_VERSION_3);
        mg_tls_t *t = mg_tls_new(ctx);
        int srv;
        CHECK(handshake(&c, t, &srv) == 0);
        char got[128];
        peer_cn(&c, got, sizeof got);
        if (strcmp(got, cn[i]) != 0) fprintf(stderr, "sni %s: got %s\n", sni[i] ? sni[i] : "-", got);
        CHECK_STR(got, cn[i]);
        mg_tls_free(t);
        client_free(&c);
    }
    mg_tls_ctx_release(ctx);
}

static void test_records_both_ways(void)
{
    mg_tls_ctx_t *ctx = ctx3();
    client_t c;
    client_init(&c, NULL, MBEDTLS_SSL_MINOR_VERSION_3);
    mg_tls_t *t = mg_tls_new(ctx);
    mg_tls_ctx_release(ctx);           /* the session keeps its own reference */
    int srv;
    CHECK(handshake(&c, t, &srv) == 0);
    /* client → server: a request in two records, read back in order */
    static char plain[16384];
    mbedtls_ssl_write(&c.ssl, (const unsigned char *)"GET / HTTP/1.1\r\n", 16);
    mbedtls_ssl_write(&c.ssl, (const unsigned char *)"Host: x\r\n\r\n", 11);
    /* fed one byte at a time, as the worst socket would */
    mg_buf_t got;
    mg_buf_init(&got);
    for (size_t i = 0; i < c.out.len; i++) {
        mg_tls_input(t, c.out.data + i, 1);
        int n;
        while ((n = mg_tls_read(t, plain, sizeof plain)) > 0) mg_buf_append(&got, plain, (size_t)n);
        CHECK(n == MG_TLS_WANT);
    }
    mg_buf_reset(&c.out);
    CHECK(got.len == 27 && memcmp(got.data, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 27) == 0);
    /* server → client: several buffers, one of 100 KB, arrive whole and in order */
    size_t big = 100 * 1024;
    char *body = malloc(big);
    for (size_t i = 0; i < big; i++) body[i] = (char)('a' + i % 26);
    uv_buf_t bufs[3] = { uv_buf_init("6400\r\n", 6), uv_buf_init(body, (unsigned)big),
                         uv_buf_init("\r\n", 2) };
    CHECK(mg_tls_writev(t, bufs, 3) == 0);
    mg_buf_t *o = mg_tls_output(t);
    mg_buf_append(&c.in, o->data, o->len);
    mg_buf_reset(o);
    mg_buf_reset(&got);
    int n;
    while ((n = mbedtls_ssl_read(&c.ssl, (unsigned char *)plain, sizeof plain)) > 0)
        mg_buf_append(&got, plain, (size_t)n);
    CHECK(got.len == big + 8);
    CHECK(got.len == big + 8 && memcmp(got.data, "6400\r\n", 6) == 0 &&
          memcmp(got.data + 6, body, big) == 0 && memcmp(got.data + 6 + big, "\r\n", 2) == 0);
    /* close_notify both ways */
    mg_tls_close_notify(t);
    mg_buf_append(&c.in, o->data, o->len);
    mg_buf_reset(o);
    CHECK(mbedtls_ssl_read(&c.ssl, (unsigned char *)plain, sizeof plain) == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY);
    mbedtls_ssl_close_notify(&c.ssl);
    mg_tls_input(t, c.out.data, c.out.len);
    CHECK(mg_tls_read(t, plain, sizeof plain) == MG_TLS_CLOSED);
    free(body);
    mg_buf_free(&got);
    mg_tls_free(t);
    client_free(&c);
}

static void test_old_versions_refused(void)
{
    mg_tls_ctx_t *ctx = ctx3();
    for (int minor = MBEDTLS_SSL_MINOR_VERSION_1; minor <= MBEDTLS_SSL_MINOR_VERSION_2; minor++) {
        client_t c;
        client_init(&c, NULL, minor);
        mg_tls_t *t = mg_tls_new(ctx);
        int srv;
        CHECK(handshake(&c, t, &srv) != 0);
        CHECK(srv == MG_TLS_ERROR);
        CHECK_STR(mg_tls_error_reason(t), "version");
        mg_tls_free(t);
        client_free(&c);
    }
    mg_tls_ctx_release(ctx);
}

static void test_garbage_is_an_error(void)
{
    mg_tls_ctx_t *ctx = ctx3();
    mg_tls_t *t = mg_tls_new(ctx);
    static char plain[64];
    const char junk[] = "\x16\x03\x01\x00\x05hello";
    mg_tls_input(t, junk, sizeof junk - 1);
    CHECK(mg_tls_read(t, plain, sizeof plain) == MG_TLS_ERROR);
    CHECK(strlen(mg_tls_error(t)) > 0);
    mg_tls_free(t);
    mg_tls_ctx_release(ctx);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
}

static void test_load_errors_name_the_file(void)
{
    char dir[] = "/tmp/mg-test-tls-XXXXXX";
    if (mkdtemp(dir) == NULL) return;
    char c0[300], k0[300], k1[300], junk[300];
    snprintf(c0, sizeof c0, "%s/c0.pem", dir);
    snprintf(k0, sizeof k0, "%s/k0.pem", dir);
    snprintf(k1, sizeof k1, "%s/k1.pem", dir);
    snprintf(junk, sizeof junk, "%s/junk.pem", dir);
    write_file(c0, cert[0]);
    write_file(k0, key[0]);
    write_file(k1, key[1]);
    write_file(junk, "junk\n");
    char err[256];
    int bad;
    const char *names[] = { NULL, "api.test" };
    {
        const char *certs[] = { c0 }, *keys[] = { k0 };
        mg_tls_ctx_t *ctx = mg_tls_ctx_new(1, names, certs, keys, &bad, err, sizeof err);
        CHECK(ctx != NULL);
        mg_tls_ctx_release(ctx);
    }
    {
        const char *certs[] = { c0, "/nonexistent/x.pem" }, *keys[] = { k0, k1 };
        CHECK(mg_tls_ctx_new(2, names, certs, keys, &bad, err, sizeof err) == NULL);
        CHECK(bad == 2);
        CHECK(strstr(err, "/nonexistent/x.pem: No such file") != NULL);
    }
    {
        const char *certs[] = { junk }, *keys[] = { k0 };
        CHECK(mg_tls_ctx_new(1, names, certs, keys, &bad, err, sizeof err) == NULL);
        CHECK(bad == 0 && strstr(err, "junk.pem: not a valid certificate") != NULL);
    }
    {
        const char *certs[] = { c0 }, *keys[] = { k1 };
        CHECK(mg_tls_ctx_new(1, names, certs, keys, &bad, err, sizeof err) == NULL);
        CHECK(bad == 1 && strstr(err, "k1.pem: the key does not match the certificate") != NULL);
        CHECK(strstr(err, "PRIVATE") == NULL);
    }
    {
        const char *certs[] = { c0 }, *keys[] = { c0 };
        CHECK(mg_tls_ctx_new(1, names, certs, keys, &bad, err, sizeof err) == NULL);
        CHECK(bad == 1 && strstr(err, "not a valid private key") != NULL);
    }
    unlink(c0);
    unlink(k0);
    unlink(k1);
    unlink(junk);
    rmdir(dir);
}

static void test_slots(void)
{
    mg_tls_slot_t *s = mg_tls_slot_new();
    CHECK(mg_tls_slot_get(s) == NULL);
    mg_tls_ctx_t *a = ctx3();
    mg_tls_slot_set(s, a);
    mg_tls_ctx_t *got = mg_tls_slot_get(s);
    CHECK(got == a);
    mg_tls_t *t = mg_tls_new(got);      /* a connection on the old context */
    mg_tls_ctx_release(got);
    mg_tls_slot_set(s, ctx3());          /* reload: the old one lives on in t */
    mg_tls_ctx_t *b = mg_tls_slot_get(s);
    CHECK(b != NULL && b != a);
    mg_tls_ctx_release(b);
    mg_tls_free(t);                      /* frees the old context */
    mg_tls_slot_free(s);
}

static void setup(void)
{
    const char *cn[] = { "default.test", "api.test", "wild.test" };
    for (int i = 0; i < 3; i++) CHECK(mg_testcert(cn[i], cert[i], sizeof cert[i], key[i], sizeof key[i]) == 0);
}

TEST_MAIN(setup, test_sni, test_records_both_ways, test_old_versions_refused, test_garbage_is_an_error,
          test_load_errors_name_the_file, test_slots)
