/* fuzz_tls.c — TLS record input: the bytes a client sends to a TLS listener
 * (ClientHello and whatever follows) fed to a server session exactly as
 * http.c does (mg_tls_input / mg_tls_read), with SNI entries configured so
 * that the SNI callback runs too. The certificate is made in memory at start.
 *
 * Input: byte 0 chooses the read size (0: all at once, else 1..255 bytes). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testcert.h"
#include "tls.h"

#define REQUIRE(c) do { if (!(c)) __builtin_trap(); } while (0)

static mg_tls_ctx_t *ctx;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    static char cert[2][4096], key[2][2048];
    char err[256];
    if (mg_testcert("fuzz.test", cert[0], sizeof cert[0], key[0], sizeof key[0]) != 0 ||
        mg_testcert("sni.fuzz.test", cert[1], sizeof cert[1], key[1], sizeof key[1]) != 0)
        abort();
    const char *names[] = { NULL, "*.fuzz.test" };
    const char *certs[] = { cert[0], cert[1] }, *keys[] = { key[0], key[1] };
    int bad;
    ctx = mg_tls_ctx_new_pem(2, names, certs, keys, &bad, err, sizeof err);
    if (ctx == NULL) {
        fprintf(stderr, "fuzz_tls: %s\n", err);
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    size_t step = data[0];
    data++;
    size--;
    mg_tls_t *t = mg_tls_new(ctx);
    REQUIRE(t != NULL);
    static char plain[16384];
    size_t off = 0;
    int rc = MG_TLS_WANT;
    while (off < size) {
        size_t len = step && size - off > step ? step : size - off;
        char *piece = malloc(len);
        memcpy(piece, data + off, len);
        mg_tls_input(t, piece, len);
        while ((rc = mg_tls_read(t, plain, sizeof plain)) > 0) REQUIRE((size_t)rc <= sizeof plain);
        free(piece);
        mg_buf_reset(mg_tls_output(t));
        off += len;
        if (rc != MG_TLS_WANT) break;
    }
    if (rc == MG_TLS_ERROR) REQUIRE(mg_tls_error(t) != NULL && mg_tls_error_reason(t) != NULL);
    mg_tls_free(t);
    return 0;
}
