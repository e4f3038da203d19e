/* upstream.h — upstream transfers, driven by the worker's libuv loop: plain
 * http:// on the native HTTP/1.1 client (upstream_h1.c), everything else on
 * libcurl's multi interface (uv_poll per socket, one uv_timer for curl).
 *
 * A transfer reports to Lua through one queued "wake" per change; when the
 * drain runs, mg_up_deliver() hands Lua what is next in order: the response
 * headers, then body data (stream mode), then the end. So Lua always sees
 * headers → data* → done, however the bytes arrived. */
#ifndef MG_UPSTREAM_H
#define MG_UPSTREAM_H

#include "worker.h"

int  mg_multi_init(mg_worker_t *w);
void mg_multi_close(mg_worker_t *w);

void mg_up_abort_owned(mg_req_t *r);         /* client gone: abort, Lua hears MG_ECLIENT */
void mg_up_client_drained(mg_req_t *r);      /* client's write queue emptied: unpause */
void mg_up_deliver(mg_worker_t *w, mg_up_t *u);  /* from the drain only */
const char *mg_up_result_name(int result);
const char *mg_up_data(mg_up_t *u, size_t *len);  /* body bytes for an MG_EV_UP_DATA */

#endif
