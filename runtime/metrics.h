/* metrics.h — a small Prometheus registry shared by every worker.
 *
 * Lua declares the metrics (lua/moongate/metrics.lua) and feeds them through
 * the FFI (ffi.h); the admin listener renders them. Label sets arrive
 * preformatted (`route="x",code="200"`) and are the series key. One mutex
 * guards it all: a few increments per request are far from contention. */
#ifndef MG_METRICS_H
#define MG_METRICS_H

#include "buf.h"

enum { MG_METRIC_COUNTER = 0, MG_METRIC_GAUGE = 1, MG_METRIC_HISTOGRAM = 2 };

void mg_metrics_render(mg_buf_t *out);

#endif
