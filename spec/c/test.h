/* test.h — a minimal test runner for the C unit tests (ctest runs each file).
 * CHECK records a failure and goes on; main returns non-zero on any failure. */
#ifndef MG_TEST_H
#define MG_TEST_H

#include <stdio.h>
#include <string.h>

static int mg_test_failures;
static int mg_test_checks;

#define CHECK(cond)                                                                  \
    do {                                                                             \
        mg_test_checks++;                                                            \
        if (!(cond)) {                                                               \
            mg_test_failures++;                                                      \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                            \
    } while (0)

#define CHECK_STR(a, b) CHECK(strcmp((a), (b)) == 0)

#define TEST_MAIN(...)                                                          \
    int main(void)                                                              \
    {                                                                           \
        void (*tests[])(void) = { __VA_ARGS__ };                                \
        for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++) tests[i](); \
        printf("%d checks, %d failed\n", mg_test_checks, mg_test_failures);     \
        return mg_test_failures ? 1 : 0;                                        \
    }

#endif
