/* Unit tests for the small services Lua uses: request ids, clocks, the access log. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <fcntl.h>
#include <sched.h>
#include <stdlib.h>
#include <unistd.h>

#include "ffi.h"
#include "log.h"
#include "test.h"

static void test_request_ids(void)
{
    char a[33], b[33];
    mg_request_id(a);
    mg_request_id(b);
    CHECK(strlen(a) == 32 && strlen(b) == 32);
    CHECK(strspn(a, "0123456789abcdef") == 32);
    CHECK(strcmp(a, b) != 0);
}

static void test_clocks(void)
{
    double t1 = mg_monotonic(), t2 = mg_monotonic();
    CHECK(t2 >= t1);
    CHECK(mg_now() > 1.7e9);   /* after 2023: the wall clock is in seconds */
}

/* workers = "auto": never more than the affinity mask allows, at least 1 */
static void test_cpus_available(void)
{
    int n = mg_cpus_available();
    CHECK(n >= 1);
    CHECK(n <= sysconf(_SC_NPROCESSORS_ONLN));
    cpu_set_t saved, one;
    CHECK(sched_getaffinity(0, sizeof saved, &saved) == 0);
    CPU_ZERO(&one);
    for (int i = 0; i < CPU_SETSIZE; i++) {
        if (CPU_ISSET(i, &saved)) {
            CPU_SET(i, &one);
            break;
        }
    }
    CHECK(sched_setaffinity(0, sizeof one, &one) == 0);
    CHECK(mg_cpus_available() == 1);
    CHECK(sched_setaffinity(0, sizeof saved, &saved) == 0);
}

static void test_access_log_file(void)
{
    char path[] = "/tmp/moongate-test-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    close(fd);
    CHECK(mg_access_log_open(path) == 0);
    mg_access_log_write("one\n", 4);
    /* rotation: the file is moved away and SIGUSR1 reopens the same path */
    char moved[64];
    snprintf(moved, sizeof moved, "%s.1", path);
    CHECK(rename(path, moved) == 0);
    mg_access_log_write("two\n", 4);
    mg_access_log_reopen();
    mg_access_log_write("three\n", 6);
    char buf[64] = "";
    fd = open(moved, O_RDONLY);
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    CHECK(n == 8 && memcmp(buf, "one\ntwo\n", 8) == 0);
    memset(buf, 0, sizeof buf);
    fd = open(path, O_RDONLY);
    n = read(fd, buf, sizeof buf - 1);
    close(fd);
    CHECK(n == 6 && memcmp(buf, "three\n", 6) == 0);
    CHECK(mg_access_log_open("/nonexistent-dir/x.log") < 0);
    mg_access_log_write("still fine\n", 11);  /* the old target stays */
    mg_access_log_open(NULL);
    unlink(path);
    unlink(moved);
}

TEST_MAIN(test_request_ids, test_clocks, test_cpus_available, test_access_log_file)
