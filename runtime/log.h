/* log.h — the error log (stderr) and the access log (stdout, a file, or off).
 *
 * Both are safe to call from any thread: each line is formatted first and
 * written with one write(2), so lines from different workers never interleave. */
#ifndef MG_LOG_H
#define MG_LOG_H

#include <stddef.h>

enum { MG_LOG_ERROR = 0, MG_LOG_WARN = 1, MG_LOG_INFO = 2, MG_LOG_DEBUG = 3 };

extern int mg_log_level;

void mg_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void mg_log_line(int level, const char *msg, size_t len);

/* Access log target: "stdout", "stderr", a file path, or NULL for off.
 * Returns 0, or -errno when the file cannot be opened (the old target stays). */
int  mg_access_log_open(const char *target);
void mg_access_log_reopen(void);      /* SIGUSR1: reopen the same path (log rotation) */
void mg_access_log_write(const char *line, size_t len);

#endif
