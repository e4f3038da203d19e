/* Unit tests for runtime/ledger.c: bucket arithmetic, the aggregates and
 * their queries, the writer (flush, rotation, clean stop), snapshots, the
 * folder lock and the refusals at open. Replay is Lua's (spec/unit/ledger_spec.lua). */
#include <dirent.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ffi.h"
#include "ledger.h"
#include "test.h"

#define S(s) s, strlen(s)

static char root[256];

static void sleep_ms(int ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    size_t got = fread(buf, 1, (size_t)n, f);
    buf[got] = '\0';
    fclose(f);
    if (len) *len = got;
    return buf;
}

static int count_lines(const char *s)
{
    int n = 0;
    for (; s && *s; s++) n += *s == '\n';
    return n;
}

/* the concatenated text of every ledger file in dir, oldest first */
static char *all_records(const char *dir, int *nfiles)
{
    size_t len;
    char *names = mg_ledger_files(dir, &len);
    char *out = calloc(1, 1);
    size_t olen = 0;
    *nfiles = 0;
    for (char *p = names; p && *p;) {
        char *nl = strchr(p, '\n');
        *nl = '\0';
        char path[600];
        snprintf(path, sizeof path, "%s/%s", dir, p);
        size_t n;
        char *text = slurp(path, &n);
        out = realloc(out, olen + n + 1);
        memcpy(out + olen, text, n);
        olen += n;
        out[olen] = '\0';
        free(text);
        (*nfiles)++;
        p = nl + 1;
    }
    free(names);
    return out;
}

static int64_t utc(int y, int mo, int d, int h, int mi, int s)
{
    struct tm tm = { .tm_year = y - 1900, .tm_mon = mo - 1, .tm_mday = d,
                     .tm_hour = h, .tm_min = mi, .tm_sec = s };
    return (int64_t)timegm(&tm);
}

static void test_buckets(void)
{
    int64_t t = utc(2026, 3, 15, 13, 45, 10);
    CHECK(mg_ledger_bucket_start(MG_LEDGER_HOUR, t) == utc(2026, 3, 15, 13, 0, 0));
    CHECK(mg_ledger_bucket_end(MG_LEDGER_HOUR, utc(2026, 3, 15, 13, 0, 0)) == utc(2026, 3, 15, 14, 0, 0));
    CHECK(mg_ledger_bucket_start(MG_LEDGER_DAY, t) == utc(2026, 3, 15, 0, 0, 0));
    CHECK(mg_ledger_bucket_end(MG_LEDGER_DAY, utc(2026, 3, 15, 0, 0, 0)) == utc(2026, 3, 16, 0, 0, 0));
    CHECK(mg_ledger_bucket_start(MG_LEDGER_MONTH, t) == utc(2026, 3, 1, 0, 0, 0));
    CHECK(mg_ledger_bucket_end(MG_LEDGER_MONTH, utc(2026, 2, 1, 0, 0, 0)) == utc(2026, 3, 1, 0, 0, 0));
    CHECK(mg_ledger_bucket_end(MG_LEDGER_MONTH, utc(2026, 12, 1, 0, 0, 0)) == utc(2027, 1, 1, 0, 0, 0));
    /* exactly on a boundary: that bucket, not the one before */
    CHECK(mg_ledger_bucket_start(MG_LEDGER_HOUR, utc(2026, 3, 15, 13, 0, 0)) == utc(2026, 3, 15, 13, 0, 0));
    CHECK(mg_ledger_bucket_start(MG_LEDGER_HOUR, utc(2026, 3, 15, 12, 59, 59)) == utc(2026, 3, 15, 12, 0, 0));
    /* before 1970 (floor, not truncation) */
    CHECK(mg_ledger_bucket_start(MG_LEDGER_HOUR, -1) == -3600);
    CHECK(mg_ledger_bucket_start(MG_LEDGER_DAY, -1) == -86400);

    /* hours for today and the 7 days before, days back to the 1st 13 months ago */
    int64_t now = utc(2026, 3, 15, 13, 45, 10);
    CHECK(mg_ledger_level_for(now, now) == MG_LEDGER_HOUR);
    CHECK(mg_ledger_level_for(now, now + 600) == MG_LEDGER_HOUR);     /* a clock ahead */
    CHECK(mg_ledger_level_for(now, utc(2026, 3, 8, 0, 0, 0)) == MG_LEDGER_HOUR);
    CHECK(mg_ledger_level_for(now, utc(2026, 3, 7, 23, 59, 59)) == MG_LEDGER_DAY);
    CHECK(mg_ledger_level_for(now, utc(2025, 2, 1, 0, 0, 0)) == MG_LEDGER_DAY);
    CHECK(mg_ledger_level_for(now, utc(2025, 1, 31, 23, 59, 59)) == MG_LEDGER_MONTH);
}

static int open_at(const char *sub, char *err, size_t errlen)
{
    char dir[512];
    snprintf(dir, sizeof dir, "%s/%s", root, sub);
    return mg_ledger_open(dir, err, errlen);
}

typedef struct { const char *key; double requests, prompt, completion, units; } row_t;

static int query(int dim, double since, double until, row_t *rows, int max, double *es, double *eu)
{
    int n = mg_ledger_query(dim, since, until, es, eu);
    for (int i = 0; i < n && i < max; i++) {
        size_t kl;
        mg_ledger_group(i, &rows[i].key, &kl, &rows[i].requests, &rows[i].prompt,
                        &rows[i].completion, &rows[i].units);
    }
    return n;
}

static const row_t *find(const row_t *rows, int n, const char *key)
{
    for (int i = 0; i < n; i++) {
        if (key == NULL ? rows[i].key == NULL : (rows[i].key && strcmp(rows[i].key, key) == 0))
            return &rows[i];
    }
    return NULL;
}

/* asked: the client's model (NULL: the billed one) */
static void append_asked(double t, const char *team, const char *consumer, const char *model,
                         const char *asked, double prompt, double completion, double units)
{
    char line[256];
    int n = snprintf(line, sizeof line, "{\"time\":%.3f,\"team\":\"%s\"}", t, team ? team : "");
    if (asked == NULL) asked = model;
    CHECK(mg_ledger_append(line, (size_t)n, t, team, team ? strlen(team) : 0, consumer,
                           consumer ? strlen(consumer) : 0, model, strlen(model), "openai", 6,
                           asked, strlen(asked), prompt, completion, units) == 0);
}

static void append(double t, const char *team, const char *consumer, const char *model,
                   double prompt, double completion, double units)
{
    append_asked(t, team, consumer, model, NULL, prompt, completion, units);
}

static void test_aggregates_and_writer(void)
{
    char err[512];
    CHECK(open_at("a", err, sizeof err) == 0);
    mg_ledger_configure(0.05, 3600, 0);
    CHECK(mg_ledger_start(0, err, sizeof err) == 0);
    double now = (double)time(NULL);
    append(now, "search", "alice", "gpt-4o", 11, 29, 3175000);
    append_asked(now, "search", "bob", "gpt-4o", "fast", 10, 20, 2000000);   /* asked for an alias */
    append(now, NULL, NULL, "gpt-4o-mini", 1, 2, 1);
    append(now - 40 * 86400.0, "search", "alice", "gpt-4o", 100, 100, 10);   /* a day bucket */

    row_t rows[8];
    double es, eu;
    int n = query(MG_LEDGER_TEAM, now - 3600, now + 1, rows, 8, &es, &eu);
    CHECK(n == 2);
    const row_t *s = find(rows, n, "search"), *none = find(rows, n, NULL);
    CHECK(s && s->requests == 2 && s->prompt == 21 && s->completion == 49 && s->units == 5175000);
    CHECK(none && none->requests == 1 && none->units == 1);
    /* widened to the hour the range starts in */
    CHECK(es == (double)mg_ledger_bucket_start(MG_LEDGER_HOUR, (int64_t)(now - 3600)));
    n = query(MG_LEDGER_CONSUMER, 0, now + 1, rows, 8, &es, &eu);
    CHECK(n == 3);
    const row_t *a = find(rows, n, "alice");
    CHECK(a && a->requests == 2 && a->prompt == 111 && a->units == 3175010);
    n = query(MG_LEDGER_MODEL, now - 41 * 86400.0, now - 39 * 86400.0, rows, 8, &es, &eu);
    CHECK(n == 1 && find(rows, n, "gpt-4o") && find(rows, n, "gpt-4o")->requests == 1);
    CHECK(es == (double)mg_ledger_bucket_start(MG_LEDGER_DAY, (int64_t)(now - 41 * 86400.0)));
    n = query(MG_LEDGER_PROVIDER, now - 3600, now + 1, rows, 8, &es, &eu);
    CHECK(n == 1 && find(rows, n, "openai") && find(rows, n, "openai")->requests == 3);
    /* the asked model counts only where it is not the billed one */
    n = query(MG_LEDGER_ASKED_MODEL, now - 3600, now + 1, rows, 8, &es, &eu);
    CHECK(n == 2 && find(rows, n, "fast") && find(rows, n, "fast")->units == 2000000);
    CHECK(find(rows, n, NULL) && find(rows, n, NULL)->requests == 2 && !find(rows, n, "gpt-4o"));
    CHECK(mg_ledger_query(7, 0, now, &es, &eu) == -1);
    CHECK(mg_ledger_group(99, &rows[0].key, &(size_t){ 0 }, &es, &es, &es, &es) == -1);

    /* the writer flushes within flush_interval, without a stop */
    char dir[512];
    snprintf(dir, sizeof dir, "%s/a/ledger", root);
    int nf = 0, lines = 0;
    for (int i = 0; i < 200 && lines < 4; i++) {
        char *text = all_records(dir, &nf);
        lines = count_lines(text);
        free(text);
        if (lines < 4) sleep_ms(10);
    }
    CHECK(lines == 4 && nf == 1);

    /* a merge keeps the sums: 9 days on, today's hours are one day bucket */
    mg_ledger_compact((int64_t)now + 9 * 86400);
    n = query(MG_LEDGER_TEAM, now - 3600, now + 1, rows, 8, &es, &eu);
    s = find(rows, n, "search");
    CHECK(s && s->requests == 2 && s->units == 5175000);

    mg_ledger_close();
    CHECK(mg_ledger_query(MG_LEDGER_TEAM, 0, now, &es, &eu) == -1);
    CHECK(mg_ledger_append(S("{}"), now, NULL, 0, NULL, 0, NULL, 0, NULL, 0, NULL, 0, 0, 0, 0) == -1);

    /* the snapshot: the position after the 4 lines, one line per bucket */
    char path[600];
    snprintf(path, sizeof path, "%s/snapshot.json", dir);
    char *snap = slurp(path, NULL);
    CHECK(snap != NULL);
    if (snap) {
        CHECK(strstr(snap, "\"version\":1") != NULL);
        CHECK(strstr(snap, "\"file\":\"ledger-") != NULL);
        CHECK(strstr(snap, "[\"team\",\"search\",1,") != NULL);     /* merged into a day */
        CHECK(strstr(snap, "[\"team\",null,") != NULL);
        CHECK(strstr(snap, "[\"consumer\",\"alice\",") != NULL);
        char *text = all_records(dir, &nf);
        char want[64];
        snprintf(want, sizeof want, "\"offset\":%zu,", strlen(text));
        CHECK(strstr(snap, want) != NULL);
        free(text);
        free(snap);
    }
}

static void test_load_and_reopen(void)
{
    char err[512];
    CHECK(open_at("a", err, sizeof err) == 0);     /* the same folder again: appends */
    int64_t h = mg_ledger_bucket_start(MG_LEDGER_HOUR, time(NULL));
    CHECK(mg_ledger_load(MG_LEDGER_TEAM, MG_LEDGER_HOUR, (double)h, S("search"), 3, 33, 87, 9525000) == 0);
    CHECK(mg_ledger_load(MG_LEDGER_TEAM, MG_LEDGER_HOUR, (double)h, NULL, 0, 1, 0, 0, 0) == 0);
    CHECK(mg_ledger_load(MG_LEDGER_TEAM, MG_LEDGER_HOUR, (double)h + 5, S("x"), 1, 0, 0, 0) == -1);
    CHECK(mg_ledger_load(9, MG_LEDGER_HOUR, (double)h, S("x"), 1, 0, 0, 0) == -1);
    CHECK(mg_ledger_count((double)h + 10, S("search"), S("alice"), S("m"), S("p"), S("m"), 1, 2, 5) == 0);
    row_t rows[4];
    double es, eu;
    int n = query(MG_LEDGER_TEAM, (double)h, (double)h + 3600, rows, 4, &es, &eu);
    const row_t *s = find(rows, n, "search");
    CHECK(n == 2 && s && s->requests == 4 && s->prompt == 34 && s->completion == 89 && s->units == 9525005);
    CHECK(es == (double)h);
    /* a second open while open is refused */
    CHECK(open_at("a", err, sizeof err) == -1);
    mg_ledger_close();
    mg_ledger_close();                              /* twice is harmless */
}

static void test_rotation(void)
{
    char err[512], dir[512];
    snprintf(dir, sizeof dir, "%s/r/ledger", root);
    CHECK(open_at("r", err, sizeof err) == 0);
    mg_ledger_configure(0.02, 3600, 60);            /* a new file once one passes 60 bytes */
    CHECK(mg_ledger_start(0, err, sizeof err) == 0);
    double now = (double)time(NULL);
    int nf = 0;
    for (int i = 0; i < 6; i++) {
        append(now, "t", "c", "m", 1, 1, 1);
        /* one batch per file: wait for this record to be written */
        for (int k = 0; k < 300; k++) {
            char *text = all_records(dir, &nf);
            int lines = count_lines(text);
            free(text);
            if (lines == i + 1) break;
            sleep_ms(10);
        }
    }
    mg_ledger_close();
    char *text = all_records(dir, &nf);
    CHECK(count_lines(text) == 6);
    CHECK(nf >= 2);
    free(text);
    /* names sort in time order and each one is new */
    size_t len;
    char *names = mg_ledger_files(dir, &len);
    CHECK(names != NULL && len == (size_t)nf * 29);
    for (int i = 1; names && i < nf; i++)
        CHECK(strncmp(names + (i - 1) * 29, names + i * 29, 28) < 0);
    free(names);
}

static void test_clean_stop_without_wait(void)
{
    char err[512], dir[512];
    snprintf(dir, sizeof dir, "%s/s/ledger", root);
    CHECK(open_at("s", err, sizeof err) == 0);
    mg_ledger_configure(3600, 3600, 0);             /* nothing would flush for an hour */
    CHECK(mg_ledger_start(0, err, sizeof err) == 0);
    double now = (double)time(NULL);
    for (int i = 0; i < 1000; i++) append(now, "t", "c", "m", 1, 1, 1);
    mg_ledger_close();                              /* ...but the stop writes all */
    int nf;
    char *text = all_records(dir, &nf);
    CHECK(count_lines(text) == 1000);
    free(text);
}

static void test_torn_tail(void)
{
    char err[512], dir[512], path[600];
    snprintf(dir, sizeof dir, "%s/t/ledger", root);
    char mk[600];
    snprintf(mk, sizeof mk, "%s/t", root);
    mkdir(mk, 0750);
    mkdir(dir, 0750);
    snprintf(path, sizeof path, "%s/ledger-20260101-000000.jsonl", dir);
    FILE *f = fopen(path, "w");
    fputs("{\"time\":1}\n{\"time\":2,\"te", f);
    fclose(f);
    CHECK(open_at("t", err, sizeof err) == 0);
    CHECK(mg_ledger_start(0, err, sizeof err) == 0);
    append(1767225600.0, "t", "c", "m", 1, 1, 1);
    mg_ledger_close();
    char *text = slurp(path, NULL);
    /* the torn line is closed, kept, and the new record is a line of its own */
    CHECK(text && strncmp(text, "{\"time\":1}\n{\"time\":2,\"te\n{\"time\":1767225600.000", 47) == 0);
    free(text);
}

static void test_refusals(void)
{
    char err[512], path[600];
    /* data_dir below a regular file: cannot be created (even as root) */
    snprintf(path, sizeof path, "%s/file", root);
    FILE *f = fopen(path, "w");
    fclose(f);
    CHECK(open_at("file/data", err, sizeof err) == -1);
    CHECK(strstr(err, "/file/data/ledger") != NULL);

    /* the folder locked by another process (here: another open file description) */
    CHECK(open_at("l", err, sizeof err) == 0);
    mg_ledger_close();
    snprintf(path, sizeof path, "%s/l/ledger/lock", root);
    int fd = open(path, O_RDWR);
    CHECK(fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) == 0);
    CHECK(open_at("l", err, sizeof err) == -1);
    CHECK(strstr(err, "in use by another moongate") != NULL && strstr(err, "/l/ledger") != NULL);
    close(fd);
    CHECK(open_at("l", err, sizeof err) == 0);
    mg_ledger_close();
}

static void setup(void)
{
    snprintf(root, sizeof root, "/tmp/mg-test-ledger-XXXXXX");
    if (mkdtemp(root) == NULL) {
        perror("mkdtemp");
        exit(1);
    }
}

static void teardown(void)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", root);
}

TEST_MAIN(setup, test_buckets, test_aggregates_and_writer, test_load_and_reopen, test_rotation,
          test_clean_stop_without_wait, test_torn_tail, test_refusals, teardown)
