/* process.c — one gateway process: the main thread and its workers.
 *
 * The main thread loads gateway.lua, opens one SO_REUSEPORT socket per worker
 * for every `listen` address (probing the port once first), starts `workers`
 * threads, and then serves the admin listener and the signals. Each worker
 * runs the same config from the same source text on its own loop, Lua state
 * and curl multi; they share only what lives in C behind a lock (gw.shared,
 * metrics, the logs) and the messages below.
 *
 * Threads talk through mg_worker_post (an inbox and a uv_async per worker):
 *   main → worker   MG_EV_STOP (drain and end the loop), MG_EV_RELOAD (apply
 *                   config generation N: the source text is fetched from here)
 *   worker → main   MG_EV_WORKER_EXIT, and MG_EV_WAKE once every worker has
 *                   answered a reload (mg_reload_done).
 * Nothing else crosses threads. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ffi.h"
#include "log.h"
#include "tls.h"
#include "worker.h"

#define MAX_SETS 16

typedef struct {
    char host[64];
    int  app;
    int  port;
    int *fds;          /* one per worker; -1 once adopted */
    int  n;
    mg_tls_slot_t *tls;   /* a TLS listener's certificates (every worker's), else NULL */
} listen_set_t;

static struct {
    char          home[PATH_MAX];
    char          config[PATH_MAX];
    mg_worker_t  *main;
    mg_worker_t **workers;
    pthread_t    *threads;
    int           n;            /* workers started */
    int           stopping;
    uv_timer_t    backstop;

    listen_set_t  sets[MAX_SETS];
    int           nsets;

    pthread_mutex_t mu;         /* guards everything below */
    pthread_cond_t  cv;
    int           reported;     /* start-up: workers that finished init */
    int           failed;
    char          starterr[256];
    char         *source;       /* the config text every worker runs */
    size_t        srclen;
    int           gen;
    int           expected, acked;
    int64_t       waiter;       /* main's coroutine waiting for a reload */
    mg_buf_t      errors;       /* the reload's failures, one line each */
} P = { .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER };

void mg_process_set_paths(const char *home, const char *config)
{
    snprintf(P.home, sizeof P.home, "%s", home);
    snprintf(P.config, sizeof P.config, "%s", config ? config : "");
}

int mg_process_nworkers(void)
{
    return P.n;
}

int mg_worker_index(void)
{
    return mg_current ? mg_current->index : 0;
}

int mg_worker_count(void)
{
    return P.n;
}

int mg_stopping(void)
{
    return P.stopping || (mg_current != NULL && mg_current->stopping);
}

void mg_free(void *p)
{
    free(p);
}

/* ======================== CPUs ======================== */

/* The cgroup's CPU quota as a number of CPUs (rounded up), or 0 for none. */
static int cgroup_cpus(void)
{
    char path[PATH_MAX] = "", line[512];
    FILE *f = fopen("/proc/self/cgroup", "r");
    if (f != NULL) {
        while (fgets(line, sizeof line, f)) {
            if (strncmp(line, "0::", 3) == 0) {          /* cgroup v2 */
                line[strcspn(line, "\n")] = '\0';
                snprintf(path, sizeof path, "%s", line + 3);
                break;
            }
        }
        fclose(f);
    }
    int best = 0;
    /* cgroup v2: the tightest cpu.max from our cgroup up to the root */
    for (;;) {
        char file[PATH_MAX + 64];
        snprintf(file, sizeof file, "/sys/fs/cgroup%s/cpu.max", path);
        f = fopen(file, "r");
        if (f != NULL) {
            char q[32] = "";
            long period = 0;
            if (fscanf(f, "%31s %ld", q, &period) == 2 && strcmp(q, "max") != 0 && period > 0) {
                int c = (int)ceil(atof(q) / (double)period);
                if (c < 1) c = 1;
                if (best == 0 || c < best) best = c;
            }
            fclose(f);
        }
        char *slash = strrchr(path, '/');
        if (path[0] == '\0' || slash == NULL) break;
        *slash = '\0';                 /* "/a/b" -> "/a" -> "" (the root) */
    }
    /* cgroup v1 */
    f = fopen("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "r");
    if (f != NULL) {
        long quota = -1, period = 0;
        if (fscanf(f, "%ld", &quota) != 1) quota = -1;
        fclose(f);
        f = fopen("/sys/fs/cgroup/cpu/cpu.cfs_period_us", "r");
        if (f != NULL) {
            if (fscanf(f, "%ld", &period) != 1) period = 0;
            fclose(f);
        }
        if (quota > 0 && period > 0) {
            int c = (int)ceil((double)quota / (double)period);
            if (c < 1) c = 1;
            if (best == 0 || c < best) best = c;
        }
    }
    return best;
}

int mg_cpus_available(void)
{
    int n = 0;
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) n = CPU_COUNT(&set);
    if (n <= 0) n = (int)sysconf(_SC_NPROCESSORS_ONLN);
    int q = cgroup_cpus();
    if (q > 0 && q < n) n = q;
    return n > 0 ? n : 1;
}

/* ======================== listeners ======================== */

int mg_listen_prepare(const char *host, int port, int n, int app, char *err, size_t errlen)
{
    if (P.nsets == MAX_SETS) {
        snprintf(err, errlen, "too many listen addresses (at most %d)", MAX_SETS);
        return -1;
    }
    listen_set_t *s = &P.sets[P.nsets];
    memset(s, 0, sizeof *s);
    snprintf(s->host, sizeof s->host, "%s", host);
    s->app = app;
    s->fds = mg_xmalloc((size_t)n * sizeof *s->fds);
    for (int i = 0; i < n; i++) {
        /* the first socket probes (and resolves port 0); the rest join it */
        int fd = mg_listen_socket(host, i == 0 ? port : s->port, i == 0, err, errlen);
        if (fd < 0) {
            for (int k = 0; k < i; k++) close(s->fds[k]);
            free(s->fds);
            s->fds = NULL;
            return -1;
        }
        s->fds[i] = fd;
        if (i == 0) {
            struct sockaddr_storage b;
            socklen_t bl = sizeof b;
            getsockname(fd, (struct sockaddr *)&b, &bl);
            s->port = ntohs(b.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&b)->sin6_port
                                                    : ((struct sockaddr_in *)&b)->sin_port);
        }
    }
    s->n = n;
    P.nsets++;
    return s->port;
}

/* Makes listen set `set` (the order of mg_listen_prepare calls, from 0) a TLS
 * listener on ctx, or gives it ctx in place of its current one (reload: new
 * connections get the new certificates, open ones keep theirs). Takes over
 * the caller's reference to ctx, also on error. Main thread only, before the
 * workers start for a new TLS listener. */
int mg_listen_tls(int set, mg_tls_ctx_t *ctx)
{
    if (set < 0 || set >= P.nsets || ctx == NULL) {
        mg_tls_ctx_release(ctx);
        return -1;
    }
    listen_set_t *s = &P.sets[set];
    if (s->tls == NULL) {
        if (P.n > 0) {                 /* workers adopted it as plain TCP already */
            mg_tls_ctx_release(ctx);
            return -1;
        }
        s->tls = mg_tls_slot_new();
    }
    mg_tls_slot_set(s->tls, ctx);
    return 0;
}

int mg_process_adopt_listeners(mg_worker_t *w, char *err, size_t errlen)
{
    for (int i = 0; i < P.nsets; i++) {
        listen_set_t *s = &P.sets[i];
        int k = w->index - 1;
        if (k < 0 || k >= s->n) continue;
        int fd = s->fds[k];
        s->fds[k] = -1;
        if (mg_worker_adopt(w, fd, s->app, s->host, s->tls, err, errlen) < 0) return -1;
    }
    return 0;
}

/* ======================== workers ======================== */

static void report(int failed, const char *msg)
{
    pthread_mutex_lock(&P.mu);
    P.reported++;
    if (failed && !P.failed) {
        P.failed = 1;
        snprintf(P.starterr, sizeof P.starterr, "%s", msg);
    }
    pthread_cond_signal(&P.cv);
    pthread_mutex_unlock(&P.mu);
}

static void *worker_main(void *arg)
{
    int idx = (int)(intptr_t)arg;
    mg_worker_t *w = P.workers[idx - 1];
    /* signals belong to the main thread */
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);

    char err[256];
    if (mg_worker_init(w) != 0) {
        snprintf(err, sizeof err, "worker %d: cannot initialise its event loop", idx);
        report(1, err);
        return NULL;
    }
    w->index = idx;
    /* copy the limits main set; the worker's config sets them again */
    w->limits = P.main->limits;
    w->shutdown_timeout = P.main->shutdown_timeout;
    if (mg_lua_init(w, P.home, P.config, "worker", 0, NULL) != 0) {
        snprintf(err, sizeof err, "worker %d: cannot load the config", idx);
        report(1, err);
        mg_worker_close(w);
        mg_shared_thread_done();
        return NULL;
    }
    if (mg_process_adopt_listeners(w, err, sizeof err) != 0) {
        report(1, err);
        mg_worker_close(w);
        mg_shared_thread_done();
        return NULL;
    }
    report(0, NULL);
    mg_worker_run(w);
    mg_worker_close(w);
    mg_shared_thread_done();
    mg_worker_post(P.main, MG_EV_WORKER_EXIT, 0, NULL, idx);
    return NULL;
}

int mg_workers_start(int n, char *err, size_t errlen)
{
    mg_worker_t *main_w = mg_current;
    if (main_w == NULL || main_w->index != 0 || P.n > 0 || n < 1) {
        snprintf(err, errlen, "workers can only be started once, from the main thread");
        return -1;
    }
    P.main = main_w;
    P.workers = mg_xcalloc((size_t)n, sizeof *P.workers);
    P.threads = mg_xcalloc((size_t)n, sizeof *P.threads);
    int started = 0;
    for (int i = 0; i < n; i++) {
        P.workers[i] = mg_xcalloc(1, sizeof(mg_worker_t));
        if (pthread_create(&P.threads[i], NULL, worker_main, (void *)(intptr_t)(i + 1)) != 0) {
            snprintf(err, errlen, "cannot start worker %d: %s", i + 1, strerror(errno));
            break;
        }
        started++;
    }
    pthread_mutex_lock(&P.mu);
    while (P.reported < started) pthread_cond_wait(&P.cv, &P.mu);
    int failed = P.failed || started < n;
    if (P.failed) snprintf(err, errlen, "%s", P.starterr);
    pthread_mutex_unlock(&P.mu);

    P.n = started;
    main_w->holds = started;
    if (failed) {
        /* the workers that did start are stopped and joined before we fail */
        for (int i = 0; i < started; i++) mg_worker_post(P.workers[i], MG_EV_STOP, 0, NULL, 0);
        mg_process_join();
        P.n = 0;
        main_w->holds = 0;
        return -1;
    }
    uv_timer_init(&main_w->loop, &P.backstop);
    uv_unref((uv_handle_t *)&P.backstop);
    return 0;
}

void mg_process_join(void)
{
    for (int i = 0; i < P.n; i++) {
        if (P.workers[i] == NULL) continue;
        pthread_join(P.threads[i], NULL);
        free(P.workers[i]);
        P.workers[i] = NULL;
    }
    for (int i = 0; i < P.nsets; i++) {
        for (int k = 0; k < P.sets[i].n; k++)
            if (P.sets[i].fds[k] >= 0) close(P.sets[i].fds[k]);
        free(P.sets[i].fds);
        mg_tls_slot_free(P.sets[i].tls);   /* the workers and their connections are gone */
        P.sets[i].tls = NULL;
    }
    P.nsets = 0;
    free(P.workers);
    free(P.threads);
    P.workers = NULL;
    P.threads = NULL;
    pthread_mutex_lock(&P.mu);
    free(P.source);
    P.source = NULL;
    mg_buf_free(&P.errors);
    pthread_mutex_unlock(&P.mu);
}

/* ======================== stop ======================== */

static void on_backstop(uv_timer_t *t)
{
    (void)t;
    mg_log(MG_LOG_ERROR, "workers did not stop within shutdown_timeout; exiting");
    _exit(1);
}

static void process_stop(mg_worker_t *main_w, const char *why)
{
    if (P.stopping) return;
    P.stopping = 1;
    mg_log(MG_LOG_INFO, "%s: stopping %d worker(s)", why, P.n);
    for (int i = 0; i < P.n; i++) mg_worker_post(P.workers[i], MG_EV_STOP, 0, NULL, 0);
    /* every worker gives up at shutdown_timeout; this only catches one that
     * could not (a plugin stuck in a loop) */
    uv_timer_start(&P.backstop, on_backstop, (uint64_t)(main_w->shutdown_timeout * 1000) + 10000, 0);
}

void mg_process_on_signal(mg_worker_t *main_w, int signum)
{
    switch (signum) {
    case SIGTERM: process_stop(main_w, "SIGTERM"); break;
    case SIGINT:  process_stop(main_w, "SIGINT"); break;
    case SIGUSR1: mg_access_log_reopen(); break;
    case SIGHUP:
        if (!P.stopping) mg_worker_queue(main_w, MG_EV_RELOAD, 0, NULL, 0);
        break;
    default: break;
    }
}

void mg_process_on_post(mg_worker_t *w, const mg_event_t *ev)
{
    switch (ev->kind) {
    case MG_EV_STOP:
        mg_worker_stop(w, "stop");
        break;
    case MG_EV_WORKER_EXIT:
        w->holds--;
        if (!P.stopping) {
            mg_log(MG_LOG_ERROR, "worker %d stopped unexpectedly; stopping the gateway", ev->arg);
            process_stop(w, "worker exit");
        }
        if (w->holds == 0) {
            /* the admin listener goes last: /ready says 503 while workers drain */
            uv_timer_stop(&P.backstop);
            mg_worker_stop(w, "workers stopped");
        }
        break;
    default:
        break;
    }
}

/* ======================== config and reload ======================== */

void mg_config_set(const char *src, size_t len)
{
    pthread_mutex_lock(&P.mu);
    free(P.source);
    P.source = mg_xstrndup(src, len);
    P.srclen = len;
    pthread_mutex_unlock(&P.mu);
}

char *mg_config_source(int *gen, size_t *len)
{
    pthread_mutex_lock(&P.mu);
    char *copy = P.source ? mg_xstrndup(P.source, P.srclen) : NULL;
    *len = P.source ? P.srclen : 0;
    *gen = P.gen;
    pthread_mutex_unlock(&P.mu);
    return copy;
}

int mg_reload_publish(const char *src, size_t len, int64_t waiter)
{
    pthread_mutex_lock(&P.mu);
    free(P.source);
    P.source = mg_xstrndup(src, len);
    P.srclen = len;
    int gen = ++P.gen;
    P.expected = P.n;
    P.acked = 0;
    P.waiter = waiter;
    mg_buf_reset(&P.errors);
    pthread_mutex_unlock(&P.mu);
    if (P.n == 0) mg_worker_queue(mg_current, MG_EV_WAKE, waiter, NULL, gen);
    for (int i = 0; i < P.n; i++) mg_worker_post(P.workers[i], MG_EV_RELOAD, 0, NULL, gen);
    return gen;
}

void mg_reload_done(int gen, int ok, const char *msg, size_t len)
{
    int done = 0;
    int64_t waiter = 0;
    pthread_mutex_lock(&P.mu);
    if (gen == P.gen) {
        if (!ok) {
            mg_buf_appendf(&P.errors, "worker %d: ", mg_worker_index());
            mg_buf_append(&P.errors, msg, len);
            mg_buf_append(&P.errors, "\n", 1);
        }
        P.acked++;
        done = P.acked == P.expected;
        waiter = P.waiter;
    }
    pthread_mutex_unlock(&P.mu);
    if (done) mg_worker_post(P.main, MG_EV_WAKE, waiter, NULL, gen);
}

/* Read by main once every worker has answered (nothing writes it then). */
const char *mg_reload_errors(size_t *len)
{
    *len = P.errors.len;
    return P.errors.data ? P.errors.data : "";
}
