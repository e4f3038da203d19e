/* log.c — error and access logs (see log.h). */
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

int mg_log_level = MG_LOG_INFO;

static const char *level_names[] = { "error", "warn", "info", "debug" };

static pthread_mutex_t access_lock = PTHREAD_MUTEX_INITIALIZER;
static int   access_fd = -1;
static char *access_path;           /* NULL for stdout/stderr/off */

static void write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return;                 /* a log that cannot be written must not stop the gateway */
        }
        p += w;
        n -= (size_t)w;
    }
}

static size_t timestamp(char *out, size_t cap)
{
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    size_t n = strftime(out, cap, "%Y-%m-%dT%H:%M:%S", &tm);
    n += (size_t)snprintf(out + n, cap - n, ".%03ldZ", (long)(tv.tv_usec / 1000));
    return n;
}

void mg_log_line(int level, const char *msg, size_t len)
{
    if (level > mg_log_level) return;
    if (level < 0) level = 0;
    if (level > MG_LOG_DEBUG) level = MG_LOG_DEBUG;
    char stack[1024];
    char *line = stack;
    size_t need = len + 64;
    if (need > sizeof stack) line = malloc(need);
    if (line == NULL) return;
    size_t n = timestamp(line, 40);
    n += (size_t)snprintf(line + n, need - n, " [%s] ", level_names[level]);
    memcpy(line + n, msg, len);
    n += len;
    line[n++] = '\n';
    write_all(STDERR_FILENO, line, n);
    if (line != stack) free(line);
}

void mg_log(int level, const char *fmt, ...)
{
    if (level > mg_log_level) return;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n >= sizeof msg) n = sizeof msg - 1;
    mg_log_line(level, msg, (size_t)n);
}

int mg_access_log_open(const char *target)
{
    int fd = -1;
    char *path = NULL;
    if (target == NULL) {
        fd = -1;
    } else if (strcmp(target, "stdout") == 0) {
        fd = STDOUT_FILENO;
    } else if (strcmp(target, "stderr") == 0) {
        fd = STDERR_FILENO;
    } else {
        fd = open(target, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
        if (fd < 0) return -errno;
        path = strdup(target);
    }
    pthread_mutex_lock(&access_lock);
    if (access_path != NULL && access_fd >= 0) close(access_fd);
    free(access_path);
    access_fd = fd;
    access_path = path;
    pthread_mutex_unlock(&access_lock);
    return 0;
}

void mg_access_log_reopen(void)
{
    pthread_mutex_lock(&access_lock);
    if (access_path != NULL) {
        int fd = open(access_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
        if (fd >= 0) {
            close(access_fd);
            access_fd = fd;
        }
    }
    pthread_mutex_unlock(&access_lock);
}

void mg_access_log_write(const char *line, size_t len)
{
    pthread_mutex_lock(&access_lock);
    if (access_fd >= 0) write_all(access_fd, line, len);
    pthread_mutex_unlock(&access_lock);
}
