/* record.h — record.c's C-only part (its FFI functions are in ffi.h). */
#ifndef MG_RECORD_H
#define MG_RECORD_H

/* Frees the calling thread's line buffer; called as a worker's thread ends (mg_worker_close). */
void mg_record_thread_done(void);

#endif
