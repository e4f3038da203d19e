/* shared.c — gw.shared: one key-value store for every worker of the process.
 *
 * Rate limits, budgets and balancer state must agree across workers, so they
 * live here, not in a Lua state. Operations are atomic: each runs entirely
 * under the lock of the shard that holds its key (16 shards by key hash, so
 * workers rarely wait on each other). The operations are the ones a Redis
 * backend will implement with Lua scripts (the money issue): get, set, incr,
 * reserve, settle, delete.
 *
 * Values are numbers or strings. A TTL (seconds, 0 for none) is set when a
 * key is created by set/incr/reserve and kept by later incr/reserve/settle,
 * so a rate window expires on time however often it is counted.
 *
 * The store is bounded (mg_shared_init's max_keys, split evenly over the
 * shards). When a shard is full, a new key first evicts an expired key found
 * on the shard's LRU tail, else the least recently used key of that shard.
 * Expired keys are also dropped when they are looked up. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ffi.h"
#include "hash.h"

#define NSHARDS 16

typedef struct entry {
    struct entry *hnext;            /* hash chain */
    struct entry *lprev, *lnext;    /* LRU list: head = most recent */
    uint64_t      hash;
    double        expires;          /* monotonic seconds, 0 = never */
    int           type;             /* MG_SHARED_NUMBER or MG_SHARED_STRING */
    double        num;
    char         *str;
    size_t        slen;
    size_t        klen;
    char          key[];
} entry_t;

typedef struct {
    pthread_mutex_t lock;
    entry_t       **table;
    size_t          nslots, count, max;
    entry_t        *lru_head, *lru_tail;
} shard_t;

static shard_t shards[NSHARDS];
static pthread_once_t once = PTHREAD_ONCE_INIT;
static size_t configured_max = 200000;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void init_once(void)
{
    size_t per = configured_max / NSHARDS;
    if (per < 1) per = 1;
    for (int i = 0; i < NSHARDS; i++) {
        pthread_mutex_init(&shards[i].lock, NULL);
        shards[i].nslots = 64;
        shards[i].table = mg_xcalloc(shards[i].nslots, sizeof(entry_t *));
        shards[i].max = per;
    }
}

void mg_shared_init(size_t max_keys)
{
    if (max_keys > 0) configured_max = max_keys;
    pthread_once(&once, init_once);
}

static shard_t *shard_of(uint64_t h)
{
    pthread_once(&once, init_once);
    return &shards[h % NSHARDS];
}

/* ---- per-shard helpers; the shard's lock is held ---- */

static void lru_unlink(shard_t *s, entry_t *e)
{
    if (e->lprev) e->lprev->lnext = e->lnext;
    else s->lru_head = e->lnext;
    if (e->lnext) e->lnext->lprev = e->lprev;
    else s->lru_tail = e->lprev;
    e->lprev = e->lnext = NULL;
}

static void lru_front(shard_t *s, entry_t *e)
{
    e->lnext = s->lru_head;
    e->lprev = NULL;
    if (s->lru_head) s->lru_head->lprev = e;
    s->lru_head = e;
    if (s->lru_tail == NULL) s->lru_tail = e;
}

static void remove_entry(shard_t *s, entry_t *e)
{
    entry_t **pp = &s->table[(e->hash >> 4) % s->nslots];
    while (*pp && *pp != e) pp = &(*pp)->hnext;
    if (*pp) *pp = e->hnext;
    lru_unlink(s, e);
    s->count--;
    free(e->str);
    free(e);
}

static int expired(const entry_t *e, double t)
{
    return e->expires > 0 && e->expires <= t;
}

static entry_t *lookup(shard_t *s, uint64_t h, const char *k, size_t kl, double t)
{
    for (entry_t *e = s->table[(h >> 4) % s->nslots]; e != NULL; e = e->hnext) {
        if (e->hash == h && e->klen == kl && memcmp(e->key, k, kl) == 0) {
            if (expired(e, t)) {
                remove_entry(s, e);
                return NULL;
            }
            lru_unlink(s, e);
            lru_front(s, e);
            return e;
        }
    }
    return NULL;
}

static void grow(shard_t *s)
{
    size_t nslots = s->nslots * 2;
    entry_t **t = mg_xcalloc(nslots, sizeof *t);
    for (size_t i = 0; i < s->nslots; i++) {
        entry_t *e = s->table[i];
        while (e) {
            entry_t *next = e->hnext;
            size_t k = (e->hash >> 4) % nslots;
            e->hnext = t[k];
            t[k] = e;
            e = next;
        }
    }
    free(s->table);
    s->table = t;
    s->nslots = nslots;
}

static entry_t *create(shard_t *s, uint64_t h, const char *k, size_t kl, double ttl, double t)
{
    if (s->count >= s->max) {
        /* an expired key near the LRU tail goes first, else the LRU one */
        entry_t *victim = s->lru_tail;
        int looked = 0;
        for (entry_t *e = s->lru_tail; e != NULL && looked < 8; e = e->lprev, looked++) {
            if (expired(e, t)) {
                victim = e;
                break;
            }
        }
        if (victim) remove_entry(s, victim);
    }
    if (s->count >= s->nslots) grow(s);
    entry_t *e = mg_xcalloc(1, sizeof *e + kl + 1);
    e->hash = h;
    e->klen = kl;
    memcpy(e->key, k, kl);
    e->expires = ttl > 0 ? t + ttl : 0;
    e->type = MG_SHARED_NUMBER;
    size_t slot = (h >> 4) % s->nslots;
    e->hnext = s->table[slot];
    s->table[slot] = e;
    lru_front(s, e);
    s->count++;
    return e;
}

/* ---- the operations (ffi.h) ---- */

/* mg_shared_get copies a string out under the lock into this thread's buffer */
static __thread char  *get_buf;
static __thread size_t get_cap;

void mg_shared_thread_done(void)
{
    free(get_buf);
    get_buf = NULL;
    get_cap = 0;
}

int mg_shared_get(const char *k, size_t kl, double *num, const char **str, size_t *slen)
{
    /* a string is copied out: the entry may change once the lock is gone */
    uint64_t h = mg_hash(k, kl);
    shard_t *s = shard_of(h);
    pthread_mutex_lock(&s->lock);
    entry_t *e = lookup(s, h, k, kl, now());
    int type = MG_SHARED_MISSING;
    if (e != NULL) {
        type = e->type;
        if (type == MG_SHARED_NUMBER) {
            *num = e->num;
        } else {
            if (e->slen + 1 > get_cap) {
                get_cap = e->slen + 1;
                get_buf = mg_xrealloc(get_buf, get_cap);
            }
            memcpy(get_buf, e->str, e->slen);
            *str = get_buf;
            *slen = e->slen;
        }
    }
    pthread_mutex_unlock(&s->lock);
    return type;
}

int mg_shared_set(const char *k, size_t kl, int type, double num, const char *str, size_t slen,
                  double ttl)
{
    if (type != MG_SHARED_NUMBER && type != MG_SHARED_STRING) return -1;
    uint64_t h = mg_hash(k, kl);
    shard_t *s = shard_of(h);
    double t = now();
    pthread_mutex_lock(&s->lock);
    entry_t *e = lookup(s, h, k, kl, t);
    if (e == NULL) e = create(s, h, k, kl, ttl, t);
    else e->expires = ttl > 0 ? t + ttl : 0;     /* set replaces the TTL, like Redis SET */
    free(e->str);
    e->str = NULL;
    e->slen = 0;
    e->type = type;
    e->num = 0;
    if (type == MG_SHARED_NUMBER) {
        e->num = num;
    } else {
        e->str = mg_xstrndup(str, slen);
        e->slen = slen;
    }
    pthread_mutex_unlock(&s->lock);
    return 0;
}

int mg_shared_delete(const char *k, size_t kl)
{
    uint64_t h = mg_hash(k, kl);
    shard_t *s = shard_of(h);
    pthread_mutex_lock(&s->lock);
    entry_t *e = lookup(s, h, k, kl, now());
    if (e) remove_entry(s, e);
    pthread_mutex_unlock(&s->lock);
    return e != NULL;
}

int mg_shared_incr(const char *k, size_t kl, double n, double ttl, double *out)
{
    uint64_t h = mg_hash(k, kl);
    shard_t *s = shard_of(h);
    double t = now();
    int rc = 0;
    pthread_mutex_lock(&s->lock);
    entry_t *e = lookup(s, h, k, kl, t);
    if (e == NULL) e = create(s, h, k, kl, ttl, t);
    if (e->type != MG_SHARED_NUMBER) {
        rc = -1;                                  /* not a number: changes nothing */
    } else {
        e->num += n;
        *out = e->num;
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

int mg_shared_reserve(const char *k, size_t kl, double n, double limit, double ttl,
                      double *remaining)
{
    uint64_t h = mg_hash(k, kl);
    shard_t *s = shard_of(h);
    double t = now();
    int ok;
    pthread_mutex_lock(&s->lock);
    entry_t *e = lookup(s, h, k, kl, t);
    if (e != NULL && e->type != MG_SHARED_NUMBER) {
        pthread_mutex_unlock(&s->lock);
        return -1;
    }
    double cur = e ? e->num : 0;
    /* admitted while the value is below the limit (SPEC §5): the request that
     * crosses it is served, so concurrent callers overshoot by one each at most */
    ok = cur < limit;
    if (ok) {
        if (e == NULL) e = create(s, h, k, kl, ttl, t);
        e->num = cur + n;
        cur = e->num;
    }
    *remaining = limit - cur;
    pthread_mutex_unlock(&s->lock);
    return ok;
}

int mg_shared_settle(const char *k, size_t kl, double reserved, double actual, double *out)
{
    uint64_t h = mg_hash(k, kl);
    shard_t *s = shard_of(h);
    int rc = 0;
    pthread_mutex_lock(&s->lock);
    entry_t *e = lookup(s, h, k, kl, now());
    if (e == NULL) {
        rc = 1;           /* the window expired meanwhile: nothing to correct */
        *out = 0;
    } else if (e->type != MG_SHARED_NUMBER) {
        rc = -1;
    } else {
        e->num += actual - reserved;
        *out = e->num;
    }
    pthread_mutex_unlock(&s->lock);
    return rc;
}

size_t mg_shared_count(void)
{
    size_t n = 0;
    pthread_once(&once, init_once);
    for (int i = 0; i < NSHARDS; i++) {
        pthread_mutex_lock(&shards[i].lock);
        n += shards[i].count;
        pthread_mutex_unlock(&shards[i].lock);
    }
    return n;
}
