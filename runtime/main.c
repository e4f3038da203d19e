/* main.c — the command line (SPEC §1): run, check, mock, version.
 *
 * C does the process-level work (signals, libcurl's global init, finding the
 * Lua tree, the event loop); what each command means is Lua's
 * (lua/moongate/runtime.lua). */
#include <curl/curl.h>
#include <limits.h>
#include <llhttp.h>
#include <luajit.h>
#include <mbedtls/version.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "ledger.h"
#include "log.h"
#include "mg_version.h"
#include "worker.h"

static int is_home(const char *dir)
{
    char p[PATH_MAX + 64];
    struct stat st;
    snprintf(p, sizeof p, "%s/lua/moongate/runtime.lua", dir);
    return stat(p, &st) == 0;
}

/* Where lua/, plugins/ and config/ are: $MOONGATE_HOME, next to the binary's
 * folder (a build tree or an install prefix), the source tree it was built
 * from, or the install data dir. */
static int find_home(char *out, size_t cap)
{
    const char *env = getenv("MOONGATE_HOME");
    if (env && *env) {
        snprintf(out, cap, "%s", env);
        return is_home(out) ? 0 : -1;
    }
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash) *slash = '\0';
        const char *cands[] = { "%s/..", "%s/../share/moongate", "%s" };
        for (size_t i = 0; i < sizeof cands / sizeof cands[0]; i++) {
            char p[PATH_MAX];
            snprintf(p, sizeof p, cands[i], exe);
            if (is_home(p) && realpath(p, out) != NULL) return 0;
        }
    }
    if (is_home(MG_SOURCE_DIR)) {
        snprintf(out, cap, "%s", MG_SOURCE_DIR);
        return 0;
    }
    if (is_home(MG_INSTALL_DATADIR)) {
        snprintf(out, cap, "%s", MG_INSTALL_DATADIR);
        return 0;
    }
    return -1;
}

static void print_version(void)
{
    curl_version_info_data *cv = curl_version_info(CURLVERSION_NOW);
    char mbed[64];
    mbedtls_version_get_string_full(mbed);
    printf("moongate %s\n", MG_VERSION);
    printf("  %s\n", LUAJIT_VERSION);
    printf("  libuv %s\n", uv_version_string());
    printf("  llhttp %d.%d.%d\n", LLHTTP_VERSION_MAJOR, LLHTTP_VERSION_MINOR, LLHTTP_VERSION_PATCH);
    printf("  %s\n", mbed);
    printf("  libcurl %s (%s%s%s)\n", cv->version, cv->ssl_version ? cv->ssl_version : "no TLS",
           cv->nghttp2_version ? ", nghttp2/" : "", cv->nghttp2_version ? cv->nghttp2_version : "");
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: moongate [-c FILE]            run the gateway (FILE: ./gateway.lua, then config/gateway.lua)\n"
            "       moongate check [-c FILE]      validate the config and exit\n"
            "       moongate mock [--listen ADDR] [--latency MS] [--chunks N] [--fail CODE:RATE ...]\n"
            "                                     run a fake OpenAI/Anthropic provider\n"
            "       moongate version              print versions\n");
}

static const char *default_config(const char *home)
{
    static char p[PATH_MAX + 32];
    if (access("gateway.lua", R_OK) == 0) return "gateway.lua";
    if (access("config/gateway.lua", R_OK) == 0) return "config/gateway.lua";
    snprintf(p, sizeof p, "%s/config/gateway.lua", home);
    return p;
}

int main(int argc, char **argv)
{
    const char *mode = "run";
    const char *config = NULL;
    int i = 1;
    if (i < argc && argv[i][0] != '-') {
        mode = argv[i++];
        if (strcmp(mode, "version") == 0) {
            print_version();
            return 0;
        }
        if (strcmp(mode, "help") == 0) {
            usage(stdout);
            return 0;
        }
        if (strcmp(mode, "check") != 0 && strcmp(mode, "mock") != 0) {
            fprintf(stderr, "moongate: unknown command \"%s\"\n", mode);
            usage(stderr);
            return 2;
        }
    }
    int rest = i;
    if (strcmp(mode, "mock") != 0) {
        for (; i < argc; i++) {
            if ((strcmp(argv[i], "-c") == 0 || strcmp(argv[i], "--config") == 0) && i + 1 < argc) {
                config = argv[++i];
            } else if (strncmp(argv[i], "--config=", 9) == 0 && argv[i][9] != '\0') {
                config = argv[i] + 9;
            } else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
                usage(stdout);
                return 0;
            } else if (strcmp(argv[i], "-v") == 0 || strcmp(argv[i], "--version") == 0) {
                print_version();
                return 0;
            } else if (strcmp(argv[i], "-c") == 0 || strcmp(argv[i], "--config") == 0) {
                fprintf(stderr, "moongate: %s needs a file\n", argv[i]);
                usage(stderr);
                return 2;
            } else {
                fprintf(stderr, "moongate: unknown option \"%s\"\n", argv[i]);
                usage(stderr);
                return 2;
            }
        }
        rest = argc;
    }

    char home[PATH_MAX];
    if (find_home(home, sizeof home) != 0) {
        fprintf(stderr, "moongate: cannot find the Lua tree (lua/moongate/runtime.lua); set MOONGATE_HOME\n");
        return 1;
    }
    if (config == NULL && strcmp(mode, "mock") != 0) config = default_config(home);

    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "moongate: cannot initialise libcurl\n");
        return 1;
    }
    /* the main thread: `run` loads the config here, starts the workers and
     * keeps the admin listener and the signals (process.c) */
    static mg_worker_t worker;
    if (mg_worker_init(&worker) != 0) {
        fprintf(stderr, "moongate: cannot initialise the event loop\n");
        return 1;
    }
    mg_process_set_paths(home, config);
    if (strcmp(mode, "check") != 0) mg_worker_signals(&worker);
    int rc = mg_lua_init(&worker, home, config, mode, argc - rest, argv + rest);
    if (rc != 0 || strcmp(mode, "check") == 0) {
        mg_process_join();
        mg_ledger_close();
        mg_worker_close(&worker);
        curl_global_cleanup();
        return rc == MG_INIT_DONE ? 0 : rc;
    }
    rc = mg_worker_run(&worker);
    mg_process_join();
    mg_ledger_close();      /* the workers are gone: every record is in; flush and snapshot */
    mg_worker_close(&worker);
    curl_global_cleanup();
    mg_log(MG_LOG_INFO, "stopped");
    return rc;
}
