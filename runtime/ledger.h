/* ledger.h — the parts of the cost ledger (ledger.c) only C uses: the append
 * (record.c), the clean stop, and the bucket arithmetic the C unit tests
 * check. What Lua calls is in ffi.h (mg_ledger_*). */
#ifndef MG_LEDGER_H
#define MG_LEDGER_H

#include <stddef.h>
#include <stdint.h>

/* Any thread: one record (record.c hands each request's over) — its JSON
 * line (a newline is added when missing) and the figures the aggregates count. A key may be NULL (none);
 * asked is the client's model (counted only when it is not model). cost_units
 * is the cost in 1e-10 USD. 0, or -1 when the ledger is not open or the
 * writer is too far behind (the record is dropped, and logged). */
int     mg_ledger_append(const char *line, size_t len, double time, const char *team,
                         size_t tl, const char *consumer, size_t cl, const char *model,
                         size_t ml, const char *provider, size_t pl, const char *asked,
                         size_t al, double prompt, double completion, double cost_units);

/* Bucket sizes of the aggregates, finest first. */
enum { MG_LEDGER_HOUR = 0, MG_LEDGER_DAY = 1, MG_LEDGER_MONTH = 2 };

/* The clean stop: wakes the writer, which writes every record still pending,
 * fsyncs, writes a last snapshot and ends; then closes the file and drops the
 * aggregates. Call it once nothing appends any more (after the workers are
 * joined). Safe to call when the ledger was never opened, and twice. */
void    mg_ledger_close(void);

/* The bucket of `level` holding time t (Unix seconds, UTC): its start, and
 * the start of the next one (calendar months for MG_LEDGER_MONTH). */
int64_t mg_ledger_bucket_start(int level, int64_t t);
int64_t mg_ledger_bucket_end(int level, int64_t start);
/* The level a record at time t is kept at when it is `now`: hours for the
 * current UTC day and the 7 before, days from the first of the month 13
 * months back, calendar months before that. */
int     mg_ledger_level_for(int64_t now, int64_t t);
/* Merges the buckets that `now` says have aged into a coarser level (the
 * writer does this every ten minutes and before each snapshot). */
void    mg_ledger_compact(int64_t now);

#endif
