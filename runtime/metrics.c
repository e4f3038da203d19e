/* metrics.c — Prometheus registry (see metrics.h). */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ffi.h"
#include "hash.h"
#include "metrics.h"

#define MAX_METRICS 64
#define MAX_BUCKETS 24

typedef struct series {
    struct series *next;
    int            id;                 /* its metric */
    char          *labels;
    size_t         llen;
    double         value;              /* counter/gauge; histogram: sum */
    int            hidden;             /* not rendered until set again (mg_metric_hide_all) */
    uint64_t       count;
    uint64_t       buckets[MAX_BUCKETS];
} series_t;

typedef struct {
    char      *name;
    char      *help;
    int        type;
    int        nbuckets;
    double     bounds[MAX_BUCKETS];
    series_t **table;
    size_t     nslots, nseries;
} metric_t;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static metric_t metrics[MAX_METRICS];
static int nmetrics;

/* Declaring the same name twice returns the same id (config reloads do). */
int mg_metric_declare(const char *name, int type, const char *help, const double *buckets,
                      int nbuckets)
{
    pthread_mutex_lock(&lock);
    for (int i = 0; i < nmetrics; i++) {
        if (strcmp(metrics[i].name, name) == 0) {
            pthread_mutex_unlock(&lock);
            return i;
        }
    }
    if (nmetrics == MAX_METRICS || nbuckets > MAX_BUCKETS) {
        pthread_mutex_unlock(&lock);
        return -1;
    }
    metric_t *m = &metrics[nmetrics];
    m->name = strdup(name);
    m->help = strdup(help ? help : "");
    m->type = type;
    m->nbuckets = type == MG_METRIC_HISTOGRAM ? nbuckets : 0;
    for (int i = 0; i < m->nbuckets; i++) m->bounds[i] = buckets[i];
    m->nslots = 64;
    m->table = mg_xcalloc(m->nslots, sizeof *m->table);
    int id = nmetrics++;
    pthread_mutex_unlock(&lock);
    return id;
}

/* Called with the lock held. */
static series_t *find(int id, const char *labels, size_t llen)
{
    if (id < 0 || id >= nmetrics) return NULL;
    metric_t *m = &metrics[id];
    uint64_t h = mg_hash(labels, llen);
    series_t **slot = &m->table[h % m->nslots];
    for (series_t *s = *slot; s != NULL; s = s->next)
        if (s->llen == llen && memcmp(s->labels, labels, llen) == 0) return s;
    if (m->nseries >= m->nslots * 2) {
        size_t nslots = m->nslots * 4;
        series_t **t = mg_xcalloc(nslots, sizeof *t);
        for (size_t i = 0; i < m->nslots; i++) {
            series_t *s = m->table[i];
            while (s) {
                series_t *next = s->next;
                size_t k = mg_hash(s->labels, s->llen) % nslots;
                s->next = t[k];
                t[k] = s;
                s = next;
            }
        }
        free(m->table);
        m->table = t;
        m->nslots = nslots;
        slot = &m->table[h % m->nslots];
    }
    series_t *s = mg_xcalloc(1, sizeof *s);
    s->id = id;
    s->labels = mg_xstrndup(labels, llen);
    s->llen = llen;
    s->next = *slot;
    *slot = s;
    m->nseries++;
    return s;
}

/* Called with the lock held. */
static void observe(series_t *s, double v)
{
    const metric_t *m = &metrics[s->id];
    s->value += v;
    s->count++;
    for (int i = 0; i < m->nbuckets; i++)
        if (v <= m->bounds[i]) s->buckets[i]++;
}

void mg_metric_add(int id, const char *labels, size_t llen, double v)
{
    pthread_mutex_lock(&lock);
    series_t *s = find(id, labels, llen);
    if (s) s->value += v;
    pthread_mutex_unlock(&lock);
}

void mg_metric_set(int id, const char *labels, size_t llen, double v)
{
    pthread_mutex_lock(&lock);
    series_t *s = find(id, labels, llen);
    if (s) {
        s->value = v;
        s->hidden = 0;
    }
    pthread_mutex_unlock(&lock);
}

void mg_metric_observe(int id, const char *labels, size_t llen, double v)
{
    pthread_mutex_lock(&lock);
    series_t *s = find(id, labels, llen);
    if (s) observe(s, v);
    pthread_mutex_unlock(&lock);
}

/* A series, found once: a series lives as long as the process, so Lua keeps the
 * handle per label set and each update skips hashing the labels. */
mg_series_t *mg_metric_series(int id, const char *labels, size_t llen)
{
    pthread_mutex_lock(&lock);
    series_t *s = find(id, labels, llen);
    pthread_mutex_unlock(&lock);
    return (mg_series_t *)s;
}

void mg_series_add(mg_series_t *h, double v)
{
    series_t *s = (series_t *)h;
    if (s == NULL) return;
    pthread_mutex_lock(&lock);
    s->value += v;
    pthread_mutex_unlock(&lock);
}

void mg_series_set(mg_series_t *h, double v)
{
    series_t *s = (series_t *)h;
    if (s == NULL) return;
    pthread_mutex_lock(&lock);
    s->value = v;
    s->hidden = 0;
    pthread_mutex_unlock(&lock);
}

void mg_metric_hide_all(int id)
{
    pthread_mutex_lock(&lock);
    if (id >= 0 && id < nmetrics) {
        metric_t *m = &metrics[id];
        for (size_t k = 0; k < m->nslots; k++)
            for (series_t *s = m->table[k]; s != NULL; s = s->next) s->hidden = 1;
    }
    pthread_mutex_unlock(&lock);
}

void mg_series_observe(mg_series_t *h, double v)
{
    series_t *s = (series_t *)h;
    if (s == NULL) return;
    pthread_mutex_lock(&lock);
    observe(s, v);
    pthread_mutex_unlock(&lock);
}

static void put_labels(mg_buf_t *out, const series_t *s, const char *extra)
{
    if (s->llen == 0 && extra == NULL) return;
    mg_buf_append(out, "{", 1);
    mg_buf_append(out, s->labels, s->llen);
    if (extra) {
        if (s->llen) mg_buf_append(out, ",", 1);
        mg_buf_append(out, extra, strlen(extra));
    }
    mg_buf_append(out, "}", 1);
}

static void put_number(mg_buf_t *out, double v)
{
    if (v == floor(v) && fabs(v) < 1e15) mg_buf_appendf(out, " %.0f\n", v);
    else mg_buf_appendf(out, " %.17g\n", v);
}

void mg_metrics_render(mg_buf_t *out)
{
    static const char *types[] = { "counter", "gauge", "histogram" };
    pthread_mutex_lock(&lock);
    for (int i = 0; i < nmetrics; i++) {
        metric_t *m = &metrics[i];
        mg_buf_appendf(out, "# HELP %s %s\n# TYPE %s %s\n", m->name, m->help, m->name, types[m->type]);
        for (size_t k = 0; k < m->nslots; k++) {
            for (series_t *s = m->table[k]; s != NULL; s = s->next) {
                if (s->hidden) continue;
                if (m->type != MG_METRIC_HISTOGRAM) {
                    mg_buf_append(out, m->name, strlen(m->name));
                    put_labels(out, s, NULL);
                    put_number(out, s->value);
                    continue;
                }
                char le[48];
                for (int b = 0; b < m->nbuckets; b++) {
                    mg_buf_appendf(out, "%s_bucket", m->name);
                    snprintf(le, sizeof le, "le=\"%g\"", m->bounds[b]);
                    put_labels(out, s, le);
                    put_number(out, (double)s->buckets[b]);
                }
                mg_buf_appendf(out, "%s_bucket", m->name);
                put_labels(out, s, "le=\"+Inf\"");
                put_number(out, (double)s->count);
                mg_buf_appendf(out, "%s_sum", m->name);
                put_labels(out, s, NULL);
                put_number(out, s->value);
                mg_buf_appendf(out, "%s_count", m->name);
                put_labels(out, s, NULL);
                put_number(out, (double)s->count);
            }
        }
    }
    pthread_mutex_unlock(&lock);
}

/* The rendered text lives in a per-thread buffer until the next call. */
const char *mg_metrics_text(size_t *len)
{
    static __thread mg_buf_t out;
    mg_buf_reset(&out);
    mg_metrics_render(&out);
    *len = out.len;
    return out.data ? out.data : "";
}
