/* Unit tests for runtime/metrics.c: the Prometheus text it renders. */
#include <stdlib.h>

#include "ffi.h"
#include "metrics.h"
#include "test.h"

static char *render(void)
{
    size_t n;
    const char *t = mg_metrics_text(&n);
    return strndup(t, n);
}

static void test_counter_and_gauge(void)
{
    int c = mg_metric_declare("t_requests_total", 0, "Requests.", NULL, 0);
    int again = mg_metric_declare("t_requests_total", 0, "Requests.", NULL, 0);
    CHECK(c >= 0 && c == again);
    const char *l1 = "route=\"a\",code=\"200\"";
    const char *l2 = "route=\"b\",code=\"500\"";
    mg_metric_add(c, l1, strlen(l1), 1);
    mg_metric_add(c, l1, strlen(l1), 2);
    mg_metric_add(c, l2, strlen(l2), 1);
    int g = mg_metric_declare("t_inflight", 1, "In flight.", NULL, 0);
    mg_metric_add(g, "", 0, 3);
    mg_metric_add(g, "", 0, -1);
    char *t = render();
    CHECK(strstr(t, "# TYPE t_requests_total counter\n") != NULL);
    CHECK(strstr(t, "t_requests_total{route=\"a\",code=\"200\"} 3\n") != NULL);
    CHECK(strstr(t, "t_requests_total{route=\"b\",code=\"500\"} 1\n") != NULL);
    CHECK(strstr(t, "# TYPE t_inflight gauge\nt_inflight 2\n") != NULL);
    free(t);
}

static void test_histogram(void)
{
    double b[] = { 0.1, 1, 10 };
    int h = mg_metric_declare("t_seconds", 2, "Durations.", b, 3);
    const char *l = "target=\"x\"";
    mg_metric_observe(h, l, strlen(l), 0.05);
    mg_metric_observe(h, l, strlen(l), 0.5);
    mg_metric_observe(h, l, strlen(l), 20);
    char *t = render();
    CHECK(strstr(t, "t_seconds_bucket{target=\"x\",le=\"0.1\"} 1\n") != NULL);
    CHECK(strstr(t, "t_seconds_bucket{target=\"x\",le=\"1\"} 2\n") != NULL);
    CHECK(strstr(t, "t_seconds_bucket{target=\"x\",le=\"10\"} 2\n") != NULL);
    CHECK(strstr(t, "t_seconds_bucket{target=\"x\",le=\"+Inf\"} 3\n") != NULL);
    CHECK(strstr(t, "t_seconds_count{target=\"x\"} 3\n") != NULL);
    CHECK(strstr(t, "t_seconds_sum{target=\"x\"} 20.55") != NULL);
    free(t);
}

/* A handle is the series the by-labels calls update, and stays valid as the table grows. */
static void test_series_handles(void)
{
    double b[] = { 1 };
    int c = mg_metric_declare("t_handle_total", 0, "Handles.", NULL, 0);
    int g = mg_metric_declare("t_handle_gauge", 1, "Handles.", NULL, 0);
    int h = mg_metric_declare("t_handle_seconds", 2, "Handles.", b, 1);
    const char *l = "k=\"v\"";
    mg_series_t *sc = mg_metric_series(c, l, strlen(l));
    CHECK(sc != NULL && sc == mg_metric_series(c, l, strlen(l)));
    CHECK(mg_metric_series(-1, l, strlen(l)) == NULL && mg_metric_series(9999, l, strlen(l)) == NULL);
    mg_series_add(sc, 2);
    char k[32];
    for (int i = 0; i < 500; i++) {   /* the metric's table rehashes several times */
        int n = snprintf(k, sizeof k, "k=\"%d\"", i);
        mg_metric_add(c, k, (size_t)n, 1);
    }
    mg_series_add(sc, 3);
    mg_metric_add(c, l, strlen(l), 1);
    mg_series_set(mg_metric_series(g, "", 0), 7);
    mg_series_observe(mg_metric_series(h, l, strlen(l)), 0.5);
    mg_series_observe(mg_metric_series(h, l, strlen(l)), 2);
    mg_series_add(NULL, 1);   /* an unknown metric's handle: nothing happens */
    char *t = render();
    CHECK(strstr(t, "t_handle_total{k=\"v\"} 6\n") != NULL);
    CHECK(strstr(t, "t_handle_gauge 7\n") != NULL);
    CHECK(strstr(t, "t_handle_seconds_bucket{k=\"v\",le=\"1\"} 1\n") != NULL);
    CHECK(strstr(t, "t_handle_seconds_count{k=\"v\"} 2\n") != NULL);
    free(t);
}

static void test_many_series(void)
{
    int c = mg_metric_declare("t_many_total", 0, "Many.", NULL, 0);
    char l[64];
    for (int i = 0; i < 2000; i++) {
        int n = snprintf(l, sizeof l, "k=\"%d\"", i);
        mg_metric_add(c, l, (size_t)n, i);
    }
    char *t = render();
    CHECK(strstr(t, "t_many_total{k=\"0\"} 0\n") != NULL);
    CHECK(strstr(t, "t_many_total{k=\"1999\"} 1999\n") != NULL);
    CHECK(strstr(t, "t_many_total{k=\"777\"} 777\n") != NULL);
    free(t);
}

TEST_MAIN(test_counter_and_gauge, test_histogram, test_series_handles, test_many_series)
