/* ledger.c — the cost ledger (SPEC §8): JSON lines in <data_dir>/ledger,
 * written by one thread, and the cost aggregates GET /admin/costs reads.
 *
 * Workers build each record's line in Lua (lua/moongate/ledger.lua) and hand
 * it over with mg_ledger_append, which, under one mutex, adds the record to the
 * aggregates and its line to the pending buffer. The writer thread wakes every
 * flush_interval (sooner when the buffer passes 1 MB, or at stop), takes the
 * buffer, appends it with write(2) and fdatasync(2)s: a kill -9 loses at most
 * the last flush_interval of records, a clean stop (mg_ledger_close) none.
 *
 * Aggregates: for each dimension (team, consumer, model, provider, and
 * asked_model: the model the client asked for when it is not the billed one,
 * which a model budget on a client-facing name counts), key and
 * time bucket, four integer counters — requests, prompt tokens, completion
 * tokens, cost in units of 1e-10 USD (integers: sums carry no float noise).
 * Buckets are hours for the current UTC day and the 7 before, days back to the
 * first of the month 13 months ago, calendar months before that
 * (mg_ledger_level_for); the writer merges buckets as they age. A key is a
 * name or none (a request without a consumer or team): key index 0.
 *
 * Snapshots: now and then (snapshot_interval, or 100,000 records, and at a
 * clean stop) the writer copies the aggregates in the same critical section in
 * which it takes the pending lines; once those lines are written, the copy
 * counts exactly the records before the file position they end at. The copy
 * and that position go to snapshot.json (temp file, fsync, rename, fsync of
 * the folder). Start-up (Lua) loads it and replays only the records after the
 * position, so start-up time does not grow with the ledger.
 *
 * Files: ledger-YYYYMMDD-HHMMSS.jsonl (UTC creation time; names sort in
 * order, a new name is always after the current one). The writer starts a
 * new file when the current one has passed rotate_size; old files are kept.
 * A `lock` file (flock) keeps a second process off the same folder. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "ffi.h"
#include "hash.h"
#include "ledger.h"
#include "log.h"

#define NDIMS          5                /* team, consumer, model, provider, asked_model */
#define NAME_LEN       28               /* "ledger-YYYYMMDD-HHMMSS.jsonl" */
#define HIGH_WATER     (1u << 20)       /* pending bytes that wake the writer early */
#define MAX_PENDING    (64u << 20)      /* beyond: records are dropped (and counted) */
#define SNAP_RECORDS   100000           /* records that make a snapshot due early */
#define COMPACT_EVERY  600.0            /* seconds */
#define MAX_AGGS       1000000          /* beyond: coarser buckets (see pressure) */

typedef struct {
    int64_t  start;                     /* bucket start, Unix seconds */
    uint32_t key;                       /* index in keys; 0 = none */
    uint8_t  dim, level;
    int64_t  requests, prompt, completion, cost;
} agg_t;

typedef struct {
    const char *key;                    /* interned (stable), NULL for none */
    uint32_t    klen;
    int64_t     requests, prompt, completion, cost;
} group_t;

static struct {
    pthread_mutex_t mu;                 /* guards everything below but the writer's own */
    pthread_cond_t  cv;                 /* wakes the writer */
    int             inited, open, started, stopping, snap_now;
    pthread_t       thread;

    /* set at open; then the writer's alone */
    char            dir[PATH_MAX];
    char            file[NAME_LEN + 1];
    int             fd, lockfd;
    uint64_t        size;
    int             torn;               /* the file ends in a torn line: newline first */

    double          flush_interval, snapshot_interval;
    uint64_t        rotate_bytes;

    mg_buf_t        pending;
    uint64_t        since_snapshot;     /* records aggregated and not in a snapshot yet */
    uint64_t        dropped;

    agg_t          *aggs;
    size_t          naggs, cap_aggs;
    uint32_t       *slots;              /* open addressing: index + 1, 0 = empty */
    size_t          nslots;
    int             pressure;           /* too many buckets: coarser policy */
    int             warned_full;

    char          **keys;               /* keys[0] = NULL (none) */
    uint32_t       *klens;
    size_t          nkeys, cap_keys;
    uint32_t       *kslots;
    size_t          nkslots;

    int64_t         cut_hour;           /* the hour the two cut-offs were computed for */
    int64_t         hour_from, day_from;
} G = { .fd = -1, .lockfd = -1 };

/* the result of this thread's last mg_ledger_query */
static __thread group_t *Q;
static __thread size_t   qn, qcap;

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int64_t wall(void)
{
    return (int64_t)time(NULL);
}

/* ======================== buckets ======================== */

static int64_t floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;
    if (a % b != 0 && ((a < 0) != (b < 0))) q--;
    return q;
}

/* the first of t's month, plus k months */
static int64_t month_of(int64_t t, int k)
{
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    tm.tm_mday = 1;
    tm.tm_hour = tm.tm_min = tm.tm_sec = 0;
    tm.tm_mon += k;                     /* timegm normalises the year */
    tm.tm_isdst = 0;
    return (int64_t)timegm(&tm);
}

int64_t mg_ledger_bucket_start(int level, int64_t t)
{
    switch (level) {
    case MG_LEDGER_HOUR: return floor_div(t, 3600) * 3600;
    case MG_LEDGER_DAY:  return floor_div(t, 86400) * 86400;
    default:             return month_of(t, 0);
    }
}

int64_t mg_ledger_bucket_end(int level, int64_t start)
{
    switch (level) {
    case MG_LEDGER_HOUR: return start + 3600;
    case MG_LEDGER_DAY:  return start + 86400;
    default:             return month_of(start, 1);
    }
}

/* Where hours and days begin when it is `now`. The cut-offs are aligned to
 * the coarser level (a day, a month), so a bucket never straddles one and an
 * aged bucket merges whole into the coarser one. Under pressure (more than
 * MAX_AGGS buckets) hours are kept for today only and days for this month. */
static void cutoffs(int64_t now, int pressure, int64_t *hour_from, int64_t *day_from)
{
    int64_t day0 = floor_div(now, 86400) * 86400;
    *hour_from = pressure ? day0 : day0 - 7 * 86400;
    *day_from = pressure ? month_of(now, 0) : month_of(now, -13);
}

static int level_at(int64_t t, int64_t hour_from, int64_t day_from)
{
    if (t >= hour_from) return MG_LEDGER_HOUR;
    if (t >= day_from) return MG_LEDGER_DAY;
    return MG_LEDGER_MONTH;
}

int mg_ledger_level_for(int64_t now, int64_t t)
{
    int64_t h, d;
    cutoffs(now, 0, &h, &d);
    return level_at(t, h, d);
}

/* The level for t now, with the cut-offs cached per hour (G.mu held). */
static int level_now(int64_t t)
{
    int64_t now = wall();
    int64_t hour = floor_div(now, 3600);
    if (hour != G.cut_hour) {
        cutoffs(now, G.pressure, &G.hour_from, &G.day_from);
        G.cut_hour = hour;
    }
    return level_at(t, G.hour_from, G.day_from);
}

/* ======================== keys ======================== */

/* The index of key (interned; NULL is 0, none). G.mu held. Keys are never
 * freed before mg_ledger_close, so a pointer to one stays valid. */
static uint32_t intern(const char *s, size_t len)
{
    if (s == NULL) return 0;
    uint64_t h = mg_hash(s, len);
    size_t mask = G.nkslots - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        uint32_t k = G.kslots[i];
        if (k == 0) break;
        if (G.klens[k] == len && memcmp(G.keys[k], s, len) == 0) return k;
    }
    if (G.nkeys == G.cap_keys) {
        G.cap_keys *= 2;
        G.keys = mg_xrealloc(G.keys, G.cap_keys * sizeof *G.keys);
        G.klens = mg_xrealloc(G.klens, G.cap_keys * sizeof *G.klens);
    }
    uint32_t k = (uint32_t)G.nkeys++;
    G.keys[k] = mg_xstrndup(s, len);
    G.klens[k] = (uint32_t)len;
    if (G.nkeys * 2 > G.nkslots) {
        free(G.kslots);
        G.nkslots *= 2;
        G.kslots = mg_xcalloc(G.nkslots, sizeof *G.kslots);
        mask = G.nkslots - 1;
        for (uint32_t j = 1; j < G.nkeys; j++) {
            size_t i = mg_hash(G.keys[j], G.klens[j]) & mask;
            while (G.kslots[i] != 0) i = (i + 1) & mask;
            G.kslots[i] = j;
        }
    } else {
        size_t i = h & mask;
        while (G.kslots[i] != 0) i = (i + 1) & mask;
        G.kslots[i] = k;
    }
    return k;
}

/* ======================== aggregates ======================== */

static uint64_t agg_hash(int dim, int level, uint32_t key, int64_t start)
{
    uint64_t x = (uint64_t)start * 0x9e3779b97f4a7c15ULL;
    x ^= ((uint64_t)key << 8 | (uint64_t)dim << 4 | (uint64_t)level) * 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 29;
    return x;
}

static void rehash(size_t nslots)
{
    free(G.slots);
    G.nslots = nslots;
    G.slots = mg_xcalloc(nslots, sizeof *G.slots);
    size_t mask = nslots - 1;
    for (size_t j = 0; j < G.naggs; j++) {
        agg_t *a = &G.aggs[j];
        size_t i = agg_hash(a->dim, a->level, a->key, a->start) & mask;
        while (G.slots[i] != 0) i = (i + 1) & mask;
        G.slots[i] = (uint32_t)(j + 1);
    }
}

/* The bucket (created empty when new). G.mu held. */
static agg_t *bucket(int dim, int level, uint32_t key, int64_t start)
{
    size_t mask = G.nslots - 1;
    size_t i = agg_hash(dim, level, key, start) & mask;
    for (;; i = (i + 1) & mask) {
        uint32_t j = G.slots[i];
        if (j == 0) break;
        agg_t *a = &G.aggs[j - 1];
        if (a->start == start && a->key == key && a->dim == dim && a->level == level) return a;
    }
    if (G.naggs == G.cap_aggs) {
        G.cap_aggs *= 2;
        G.aggs = mg_xrealloc(G.aggs, G.cap_aggs * sizeof *G.aggs);
    }
    agg_t *a = &G.aggs[G.naggs++];
    memset(a, 0, sizeof *a);
    a->start = start;
    a->key = key;
    a->dim = (uint8_t)dim;
    a->level = (uint8_t)level;
    G.slots[i] = (uint32_t)G.naggs;
    if (G.naggs * 2 > G.nslots) {
        rehash(G.nslots * 2);
        return &G.aggs[G.naggs - 1];
    }
    return a;
}

static void add_to(agg_t *a, int64_t requests, int64_t prompt, int64_t completion, int64_t cost)
{
    a->requests += requests;
    a->prompt += prompt;
    a->completion += completion;
    a->cost += cost;
}

static int64_t count_of(double v)
{
    if (!(v > 0)) return 0;             /* also NaN */
    if (v > 9e18) return INT64_MAX / 4;
    return (int64_t)llround(v);
}

/* One record into every dimension. G.mu held. */
static void add_record(double time, const char *const keys[NDIMS], const size_t lens[NDIMS],
                       double prompt, double completion, double cost_units)
{
    int64_t t = (int64_t)floor(time);
    int level = level_now(t);
    int64_t start = mg_ledger_bucket_start(level, t);
    int64_t p = count_of(prompt), c = count_of(completion), u = count_of(cost_units);
    for (int d = 0; d < NDIMS; d++) {
        uint32_t k = intern(keys[d], lens[d]);
        add_to(bucket(d, level, k, start), 1, p, c, u);
    }
    G.since_snapshot++;
}

/* Re-buckets what has aged past its level (G.mu held). Entries are merged
 * into a fresh array; the old one goes. */
static void compact_locked(int64_t now)
{
    if (G.naggs > MAX_AGGS && !G.pressure) {
        G.pressure = 1;
        mg_log(MG_LOG_WARN, "ledger: more than %d cost buckets; keeping hours for today and "
               "days for this month only", MAX_AGGS);
    }
    int64_t hour_from, day_from;
    cutoffs(now, G.pressure, &hour_from, &day_from);
    G.cut_hour = INT64_MIN;             /* level_now recomputes */
    size_t aged = 0;
    for (size_t j = 0; j < G.naggs; j++)
        if (level_at(G.aggs[j].start, hour_from, day_from) > G.aggs[j].level) aged++;
    if (aged == 0) goto check;
    agg_t *old = G.aggs;
    size_t n = G.naggs;
    G.aggs = mg_xmalloc(G.cap_aggs * sizeof *G.aggs);
    G.naggs = 0;
    rehash(G.nslots);
    for (size_t j = 0; j < n; j++) {
        agg_t *a = &old[j];
        int level = level_at(a->start, hour_from, day_from);
        if (level < a->level) level = a->level;      /* never finer than it is */
        int64_t start = level == a->level ? a->start : mg_ledger_bucket_start(level, a->start);
        add_to(bucket(a->dim, level, a->key, start), a->requests, a->prompt, a->completion, a->cost);
    }
    free(old);
check:
    if (G.naggs > MAX_AGGS && !G.warned_full) {
        G.warned_full = 1;
        mg_log(MG_LOG_WARN, "ledger: %zu cost buckets after merging; memory grows with the number of "
               "distinct teams, consumers, models and providers", G.naggs);
    }
}

void mg_ledger_compact(int64_t now)
{
    pthread_mutex_lock(&G.mu);
    if (G.open) compact_locked(now);
    pthread_mutex_unlock(&G.mu);
}

/* ======================== files ======================== */

static int is_ledger_name(const char *n)
{
    if (strlen(n) != NAME_LEN || strncmp(n, "ledger-", 7) != 0 || strcmp(n + 22, ".jsonl") != 0)
        return 0;
    for (int i = 7; i < 22; i++) {
        if (i == 15 ? n[i] != '-' : (n[i] < '0' || n[i] > '9')) return 0;
    }
    return 1;
}

static int64_t name_time(const char *n)
{
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    if (sscanf(n, "ledger-%4d%2d%2d-%2d%2d%2d", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
               &tm.tm_min, &tm.tm_sec) != 6)
        return 0;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return (int64_t)timegm(&tm);
}

static void name_at(char out[NAME_LEN + 1], int64_t t)
{
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    strftime(out, NAME_LEN + 1, "ledger-%Y%m%d-%H%M%S.jsonl", &tm);
}

static void fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

/* mkdir -p; 0 or -1 with errno */
static int mkdirs(const char *path)
{
    char p[PATH_MAX];
    if (snprintf(p, sizeof p, "%s", path) >= (int)sizeof p) {
        errno = ENAMETOOLONG;
        return -1;
    }
    for (char *s = p + 1; *s; s++) {
        if (*s != '/') continue;
        *s = '\0';
        if (mkdir(p, 0750) != 0 && errno != EEXIST) return -1;
        *s = '/';
    }
    if (mkdir(p, 0750) != 0 && errno != EEXIST) return -1;
    struct stat st;
    if (stat(p, &st) != 0) return -1;
    if (!S_ISDIR(st.st_mode)) {
        errno = ENOTDIR;
        return -1;
    }
    return 0;
}

/* Opens name in G.dir for appending. A last line cut short (a power cut) is
 * noted: the first write closes it with a newline, so the next record starts
 * on a line of its own (the torn one is kept, and skipped on replay). */
static int open_file(const char *name, char *err, size_t errlen)
{
    char path[PATH_MAX + NAME_LEN + 2];
    snprintf(path, sizeof path, "%s/%s", G.dir, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (fd < 0) {
        snprintf(err, errlen, "cannot write the ledger %s: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    fstat(fd, &st);
    uint64_t size = (uint64_t)st.st_size;
    int torn = 0;
    if (size > 0) {
        char last = '\n';
        int rfd = open(path, O_RDONLY | O_CLOEXEC);
        if (rfd >= 0) {
            if (pread(rfd, &last, 1, (off_t)size - 1) != 1) last = '\n';
            close(rfd);
        }
        /* the writer closes it before its first record (after replay has
         * read it, and warned, as the torn last line it is) */
        torn = last != '\n';
    }
    if (G.fd >= 0) close(G.fd);
    G.fd = fd;
    G.size = size;
    G.torn = torn;
    snprintf(G.file, sizeof G.file, "%s", name);
    fsync_dir(G.dir);
    return 0;
}

/* Starts the next file: named for now, or just after the current one when
 * the clock says otherwise (names must sort in order). Writer thread. */
static int rotate(void)
{
    int64_t t = wall();
    int64_t after = G.file[0] ? name_time(G.file) + 1 : t;
    if (t < after) t = after;
    char name[NAME_LEN + 1];
    name_at(name, t);
    char err[PATH_MAX + 64];
    int prev = G.fd;
    G.fd = -1;
    if (open_file(name, err, sizeof err) != 0) {
        G.fd = prev;                    /* keep writing where we were */
        mg_log(MG_LOG_ERROR, "ledger: cannot rotate: %s", err);
        return -1;
    }
    if (prev >= 0) {
        fdatasync(prev);
        close(prev);
    }
    mg_log(MG_LOG_INFO, "ledger: now writing %s/%s", G.dir, G.file);
    return 0;
}

/* ======================== the writer ======================== */

static double last_error_log;

/* Writes out's bytes (consumed as they go) and fdatasyncs. Returns 0 when
 * everything is on disk; -1 leaves the rest in out for the next round. */
static int write_out(mg_buf_t *out, uint64_t rotate_bytes)
{
    if (out->len == 0) return 0;
    if (rotate_bytes > 0 && G.size >= rotate_bytes) rotate();
    if (G.torn) {
        if (write(G.fd, "\n", 1) != 1) return -1;
        G.size++;
        G.torn = 0;
    }
    size_t done = 0;
    int rc = 0;
    while (done < out->len) {
        ssize_t n = write(G.fd, out->data + done, out->len - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            rc = -1;
            break;
        }
        done += (size_t)n;
    }
    G.size += done;
    if (rc == 0 && fdatasync(G.fd) != 0) rc = -1;
    /* past the size: the next records go to a new file (and a snapshot
     * taken now already points there) */
    if (rc == 0 && rotate_bytes > 0 && G.size >= rotate_bytes) rotate();
    if (rc != 0 && mono() - last_error_log >= 10) {
        last_error_log = mono();
        mg_log(MG_LOG_ERROR, "ledger: cannot write %s/%s: %s (%zu bytes wait for the next try)",
               G.dir, G.file, strerror(errno), out->len - done);
    }
    mg_buf_consume(out, done);
    return rc;
}

static const char *const DIM_NAMES[NDIMS] = { "team", "consumer", "model", "provider", "asked_model" };

/* snapshot.json: a header line, then one line per bucket:
 *   {"version":1,"file":"ledger-….jsonl","offset":N,"time":T,"buckets":N}
 *   ["team","search",0,1767225600,3,33,87,9525000]
 *   (dimension, key or null, level, start, requests, prompt, completion, cost in 1e-10 USD)
 * Written to snapshot.json.tmp, fsynced and renamed over the old one. */
static int write_snapshot(const agg_t *aggs, size_t n, char **keys, const uint32_t *klens)
{
    char tmp[PATH_MAX + 32], path[PATH_MAX + 32];
    snprintf(tmp, sizeof tmp, "%s/snapshot.json.tmp", G.dir);
    snprintf(path, sizeof path, "%s/snapshot.json", G.dir);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (f == NULL) {
        if (fd >= 0) close(fd);
        mg_log(MG_LOG_ERROR, "ledger: cannot write %s: %s", tmp, strerror(errno));
        return -1;
    }
    fprintf(f, "{\"version\":1,\"file\":\"%s\",\"offset\":%llu,\"time\":%lld,\"buckets\":%zu}\n",
            G.file, (unsigned long long)G.size, (long long)wall(), n);
    mg_buf_t key;
    mg_buf_init(&key);
    for (size_t j = 0; j < n; j++) {
        const agg_t *a = &aggs[j];
        fprintf(f, "[\"%s\",", DIM_NAMES[a->dim]);
        mg_buf_reset(&key);
        mg_buf_json_string(&key, keys[a->key], klens[a->key]);
        fwrite(key.data, 1, key.len, f);
        fprintf(f, ",%d,%lld,%lld,%lld,%lld,%lld]\n", a->level, (long long)a->start,
                (long long)a->requests, (long long)a->prompt, (long long)a->completion,
                (long long)a->cost);
    }
    mg_buf_free(&key);
    int bad = fflush(f) != 0 || ferror(f) || fsync(fileno(f)) != 0;
    if (fclose(f) != 0) bad = 1;
    if (bad || rename(tmp, path) != 0) {
        mg_log(MG_LOG_ERROR, "ledger: cannot write %s: %s", path, strerror(errno));
        unlink(tmp);
        return -1;
    }
    fsync_dir(G.dir);
    return 0;
}

static void add_seconds(struct timespec *ts, double s)
{
    double whole = floor(s);
    ts->tv_sec += (time_t)whole;
    ts->tv_nsec += (long)((s - whole) * 1e9);
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

static void *writer_main(void *arg)
{
    (void)arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);

    mg_buf_t out, batch;
    mg_buf_init(&out);
    mg_buf_init(&batch);
    double last_flush = mono(), last_snap = mono(), last_compact = mono();
    agg_t *copy = NULL;
    size_t copy_cap = 0;
    char **kcopy = NULL;
    uint32_t *lcopy = NULL;
    size_t kcap = 0;

    pthread_mutex_lock(&G.mu);
    for (;;) {
        /* sleep until the flush is due, the buffer is large, or we stop */
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        double wait = last_flush + G.flush_interval - mono();
        add_seconds(&until, wait > 0 ? wait : 0);
        while (!G.stopping && !G.snap_now && G.pending.len < HIGH_WATER) {
            if (pthread_cond_timedwait(&G.cv, &G.mu, &until) == ETIMEDOUT) break;
        }
        int stop = G.stopping;
        /* the lines: swapped out, not copied (the workers get an empty buffer) */
        if (out.len < MAX_PENDING) {
            mg_buf_t t = G.pending;
            G.pending = batch;
            batch = t;
        }
        uint64_t rotate_bytes = G.rotate_bytes;
        double now = mono();
        int snap = G.since_snapshot > 0 &&
                   (stop || G.snap_now || now - last_snap >= G.snapshot_interval ||
                    G.since_snapshot >= SNAP_RECORDS);
        if (snap || now - last_compact >= COMPACT_EVERY || G.naggs > MAX_AGGS) {
            compact_locked(wall());
            last_compact = now;
        }
        G.snap_now = 0;
        uint64_t snap_records = 0;
        size_t ncopy = 0, nk = 0;
        if (snap) {
            /* the aggregates as of exactly the lines taken above */
            ncopy = G.naggs;
            if (ncopy > copy_cap) {
                copy_cap = ncopy * 2;
                copy = mg_xrealloc(copy, copy_cap * sizeof *copy);
            }
            memcpy(copy, G.aggs, ncopy * sizeof *copy);
            nk = G.nkeys;
            if (nk > kcap) {
                kcap = nk * 2;
                kcopy = mg_xrealloc(kcopy, kcap * sizeof *kcopy);
                lcopy = mg_xrealloc(lcopy, kcap * sizeof *lcopy);
            }
            memcpy(kcopy, G.keys, nk * sizeof *kcopy);
            memcpy(lcopy, G.klens, nk * sizeof *lcopy);
            snap_records = G.since_snapshot;
            G.since_snapshot = 0;
        }
        pthread_mutex_unlock(&G.mu);

        last_flush = now;
        if (batch.len > 0) {
            mg_buf_append(&out, batch.data, batch.len);
            mg_buf_reset(&batch);
        }
        int written = write_out(&out, rotate_bytes) == 0;
        if (snap) {
            last_snap = now;
            /* a snapshot is only true once every line before it is on disk */
            if (!written || write_snapshot(copy, ncopy, kcopy, lcopy) != 0) {
                pthread_mutex_lock(&G.mu);
                G.since_snapshot += snap_records;
                pthread_mutex_unlock(&G.mu);
            }
        }

        pthread_mutex_lock(&G.mu);
        if (stop && G.pending.len == 0 && (out.len == 0 || !written)) break;
    }
    pthread_mutex_unlock(&G.mu);
    mg_buf_free(&out);
    mg_buf_free(&batch);
    free(copy);
    free(kcopy);
    free(lcopy);
    return NULL;
}

/* ======================== FFI ======================== */

static void init_once(void)
{
    if (G.inited) return;
    G.inited = 1;
    pthread_mutex_init(&G.mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&G.cv, &ca);
    pthread_condattr_destroy(&ca);
}

int mg_ledger_open(const char *data_dir, char *err, size_t errlen)
{
    init_once();        /* main thread, before any worker exists */
    if (G.open) {
        snprintf(err, errlen, "the ledger is already open");
        return -1;
    }
    if (snprintf(G.dir, sizeof G.dir, "%s/ledger", data_dir) >= (int)sizeof G.dir) {
        snprintf(err, errlen, "data_dir %s: path too long", data_dir);
        return -1;
    }
    if (mkdirs(G.dir) != 0) {
        snprintf(err, errlen, "cannot create the ledger folder %s: %s", G.dir, strerror(errno));
        return -1;
    }
    if (access(G.dir, W_OK | X_OK) != 0) {
        snprintf(err, errlen, "cannot write the ledger folder %s: %s", G.dir, strerror(errno));
        return -1;
    }
    char lock[PATH_MAX + 8];
    snprintf(lock, sizeof lock, "%s/lock", G.dir);
    int lfd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
    if (lfd < 0) {
        snprintf(err, errlen, "cannot write the ledger folder %s: %s", G.dir, strerror(errno));
        return -1;
    }
    if (flock(lfd, LOCK_EX | LOCK_NB) != 0) {
        snprintf(err, errlen, "the ledger folder %s is in use by another moongate process", G.dir);
        close(lfd);
        return -1;
    }
    char pid[32];
    int pl = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(lfd, 0) != 0 || write(lfd, pid, (size_t)pl) != pl) { /* informative only */ }

    /* the newest file, or a new one */
    char latest[NAME_LEN + 1] = "";
    DIR *d = opendir(G.dir);
    if (d != NULL) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (is_ledger_name(e->d_name) && strcmp(e->d_name, latest) > 0) {
                memcpy(latest, e->d_name, NAME_LEN);     /* is_ledger_name checked the length */
                latest[NAME_LEN] = '\0';
            }
        }
        closedir(d);
    }
    if (latest[0] == '\0') name_at(latest, wall());
    G.file[0] = '\0';
    if (open_file(latest, err, errlen) != 0) {
        close(lfd);
        return -1;
    }
    G.lockfd = lfd;

    pthread_mutex_lock(&G.mu);
    G.flush_interval = 1;
    G.snapshot_interval = 300;
    G.rotate_bytes = 64u << 20;
    mg_buf_init(&G.pending);
    G.since_snapshot = 0;
    G.dropped = 0;
    G.cap_aggs = 1024;
    G.aggs = mg_xmalloc(G.cap_aggs * sizeof *G.aggs);
    G.naggs = 0;
    G.nslots = 0;
    G.slots = NULL;
    rehash(2048);
    G.cap_keys = 64;
    G.keys = mg_xmalloc(G.cap_keys * sizeof *G.keys);
    G.klens = mg_xmalloc(G.cap_keys * sizeof *G.klens);
    G.keys[0] = NULL;
    G.klens[0] = 0;
    G.nkeys = 1;
    G.nkslots = 128;
    G.kslots = mg_xcalloc(G.nkslots, sizeof *G.kslots);
    G.cut_hour = INT64_MIN;
    G.pressure = 0;
    G.warned_full = 0;
    G.stopping = 0;
    G.snap_now = 0;
    G.open = 1;
    pthread_mutex_unlock(&G.mu);
    return 0;
}

void mg_ledger_configure(double flush_interval, double snapshot_interval, double rotate_bytes)
{
    if (!G.inited) return;
    pthread_mutex_lock(&G.mu);
    if (flush_interval > 0) G.flush_interval = flush_interval;
    if (snapshot_interval > 0) G.snapshot_interval = snapshot_interval;
    if (rotate_bytes >= 0) G.rotate_bytes = (uint64_t)rotate_bytes;
    pthread_cond_signal(&G.cv);
    pthread_mutex_unlock(&G.mu);
}

int mg_ledger_start(int snapshot_now, char *err, size_t errlen)
{
    pthread_mutex_lock(&G.mu);
    if (!G.open || G.started) {
        pthread_mutex_unlock(&G.mu);
        snprintf(err, errlen, "%s", G.open ? "the ledger writer runs already" : "the ledger is not open");
        return -1;
    }
    G.snap_now = snapshot_now != 0;
    G.since_snapshot = snapshot_now ? (G.since_snapshot > 0 ? G.since_snapshot : 1) : 0;
    pthread_mutex_unlock(&G.mu);
    int rc = pthread_create(&G.thread, NULL, writer_main, NULL);
    if (rc != 0) {
        snprintf(err, errlen, "cannot start the ledger writer: %s", strerror(rc));
        return -1;
    }
    G.started = 1;
    return 0;
}

static void keys_of(const char *team, size_t tl, const char *consumer, size_t cl,
                    const char *model, size_t ml, const char *provider, size_t pl,
                    const char *asked, size_t al, const char *keys[NDIMS], size_t lens[NDIMS])
{
    keys[0] = team;     lens[0] = tl;
    keys[1] = consumer; lens[1] = cl;
    keys[2] = model;    lens[2] = ml;
    keys[3] = provider; lens[3] = pl;
    /* the asked model counts only where it is not the billed one (else none) */
    if (asked != NULL && model != NULL && al == ml && memcmp(asked, model, al) == 0) asked = NULL;
    keys[4] = asked;    lens[4] = asked ? al : 0;
}

int mg_ledger_append(const char *line, size_t len, double time, const char *team, size_t tl,
                     const char *consumer, size_t cl, const char *model, size_t ml,
                     const char *provider, size_t pl, const char *asked, size_t al,
                     double prompt, double completion, double cost_units)
{
    if (!G.open) return -1;
    const char *keys[NDIMS];
    size_t lens[NDIMS];
    keys_of(team, tl, consumer, cl, model, ml, provider, pl, asked, al, keys, lens);
    pthread_mutex_lock(&G.mu);
    if (!G.open || G.pending.len + len > MAX_PENDING) {
        uint64_t dropped = ++G.dropped;
        pthread_mutex_unlock(&G.mu);
        if (dropped == 1 || dropped % 10000 == 0)
            mg_log(MG_LOG_ERROR, "ledger: the writer is behind (disk full or slow?); %llu record(s) "
                   "dropped so far", (unsigned long long)dropped);
        return -1;
    }
    add_record(time, keys, lens, prompt, completion, cost_units);
    mg_buf_append(&G.pending, line, len);
    if (len == 0 || line[len - 1] != '\n') mg_buf_append(&G.pending, "\n", 1);
    if (G.pending.len >= HIGH_WATER) pthread_cond_signal(&G.cv);
    pthread_mutex_unlock(&G.mu);
    return 0;
}

int mg_ledger_count(double time, const char *team, size_t tl, const char *consumer, size_t cl,
                    const char *model, size_t ml, const char *provider, size_t pl,
                    const char *asked, size_t al, double prompt, double completion,
                    double cost_units)
{
    if (!G.open) return -1;
    const char *keys[NDIMS];
    size_t lens[NDIMS];
    keys_of(team, tl, consumer, cl, model, ml, provider, pl, asked, al, keys, lens);
    pthread_mutex_lock(&G.mu);
    add_record(time, keys, lens, prompt, completion, cost_units);
    pthread_mutex_unlock(&G.mu);
    return 0;
}

int mg_ledger_load(int dim, int level, double start, const char *key, size_t klen, double requests,
                   double prompt, double completion, double cost_units)
{
    if (!G.open || dim < 0 || dim >= NDIMS || level < MG_LEDGER_HOUR || level > MG_LEDGER_MONTH)
        return -1;
    int64_t s = (int64_t)floor(start);
    if (mg_ledger_bucket_start(level, s) != s) return -1;
    pthread_mutex_lock(&G.mu);
    uint32_t k = intern(key, klen);
    add_to(bucket(dim, level, k, s), count_of(requests), count_of(prompt), count_of(completion),
           count_of(cost_units));
    pthread_mutex_unlock(&G.mu);
    return 0;
}

int mg_ledger_query(int dim, double since, double until, double *eff_since, double *eff_until)
{
    if (!G.open || dim < 0 || dim >= NDIMS) return -1;
    int64_t s = (int64_t)floor(since), u = (int64_t)ceil(until);
    int64_t now = wall();
    pthread_mutex_lock(&G.mu);
    /* the range widened to whole buckets: by the policy, then by the data;
     * never past now (or until, when that is later): nothing is newer */
    int64_t hour_from, day_from;
    cutoffs(now, G.pressure, &hour_from, &day_from);
    int64_t lo = mg_ledger_bucket_start(level_at(s, hour_from, day_from), s);
    int64_t hi = u, cap = u > now ? u : now;
    if (u < now) {
        int lv = level_at(u - 1, hour_from, day_from);
        hi = mg_ledger_bucket_end(lv, mg_ledger_bucket_start(lv, u - 1));
    }
    int32_t *slot = mg_xmalloc(G.nkeys * sizeof *slot);
    for (size_t i = 0; i < G.nkeys; i++) slot[i] = -1;
    qn = 0;
    for (size_t j = 0; j < G.naggs; j++) {
        const agg_t *a = &G.aggs[j];
        if (a->dim != dim || a->start >= u) continue;
        int64_t end = mg_ledger_bucket_end(a->level, a->start);
        if (end <= s) continue;
        if (a->start < lo) lo = a->start;
        if (end > hi) hi = end;
        int32_t g = slot[a->key];
        if (g < 0) {
            if (qn == qcap) {
                qcap = qcap ? qcap * 2 : 64;
                Q = mg_xrealloc(Q, qcap * sizeof *Q);
            }
            g = (int32_t)qn++;
            slot[a->key] = g;
            memset(&Q[g], 0, sizeof Q[g]);
            Q[g].key = G.keys[a->key];
            Q[g].klen = G.klens[a->key];
        }
        Q[g].requests += a->requests;
        Q[g].prompt += a->prompt;
        Q[g].completion += a->completion;
        Q[g].cost += a->cost;
    }
    if (hi > cap) hi = cap;
    if (hi < u) hi = u;
    pthread_mutex_unlock(&G.mu);
    free(slot);
    *eff_since = (double)lo;
    *eff_until = (double)hi;
    return (int)qn;
}

int mg_ledger_group(int i, const char **key, size_t *klen, double *requests, double *prompt,
                    double *completion, double *cost_units)
{
    if (i < 0 || (size_t)i >= qn) return -1;
    const group_t *g = &Q[i];
    *key = g->key;                      /* interned: valid until mg_ledger_close */
    *klen = g->klen;
    *requests = (double)g->requests;
    *prompt = (double)g->prompt;
    *completion = (double)g->completion;
    *cost_units = (double)g->cost;
    return 0;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

char *mg_ledger_files(const char *dir, size_t *len)
{
    *len = 0;
    DIR *d = opendir(dir);
    if (d == NULL) return NULL;
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!is_ledger_name(e->d_name)) continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            names = mg_xrealloc(names, cap * sizeof *names);
        }
        names[n++] = mg_xstrndup(e->d_name, NAME_LEN);
    }
    closedir(d);
    qsort(names, n, sizeof *names, cmp_names);
    char *out = mg_xmalloc(n * (NAME_LEN + 1) + 1);
    for (size_t i = 0; i < n; i++) {
        memcpy(out + i * (NAME_LEN + 1), names[i], NAME_LEN);
        out[i * (NAME_LEN + 1) + NAME_LEN] = '\n';
        free(names[i]);
    }
    free(names);
    *len = n * (NAME_LEN + 1);
    out[*len] = '\0';
    return out;
}

void mg_ledger_close(void)
{
    if (!G.inited || !G.open) return;
    pthread_mutex_lock(&G.mu);
    G.stopping = 1;
    pthread_cond_signal(&G.cv);
    pthread_mutex_unlock(&G.mu);
    if (G.started) {
        pthread_join(G.thread, NULL);
        G.started = 0;
    } else if (G.pending.len > 0) {
        mg_buf_t out = G.pending;       /* never started: write what there is */
        mg_buf_init(&G.pending);
        write_out(&out, 0);
        mg_buf_free(&out);
    }
    pthread_mutex_lock(&G.mu);
    G.open = 0;
    if (G.fd >= 0) {
        fdatasync(G.fd);
        close(G.fd);
        G.fd = -1;
    }
    if (G.lockfd >= 0) {
        close(G.lockfd);                /* releases the flock */
        G.lockfd = -1;
    }
    mg_buf_free(&G.pending);
    free(G.aggs);
    free(G.slots);
    for (size_t i = 1; i < G.nkeys; i++) free(G.keys[i]);
    free(G.keys);
    free(G.klens);
    free(G.kslots);
    G.aggs = NULL;
    G.slots = NULL;
    G.keys = NULL;
    G.klens = NULL;
    G.kslots = NULL;
    G.naggs = G.nkeys = 0;
    pthread_mutex_unlock(&G.mu);
    free(Q);
    Q = NULL;
    qn = qcap = 0;
}
