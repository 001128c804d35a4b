/*
 * common.h - what the cmocka tests share: opening the OpenCL devices (or
 * skipping with exit code 77 when there are none), and checks with tolerance
 * that print the mismatches.
 *
 * Include after <cmocka.h>.
 */
#ifndef STRATA_TESTS_COMMON_H
#define STRATA_TESTS_COMMON_H

#include <stdio.h>
#include <stdlib.h>

#include "strata/compare.h"
#include "strata/strata.h"

#define TEST_SKIP 77

typedef struct test_devices {
    st_device_list *list;
    size_t n;
    st_device *dev[ST_MAX_DEVICES];
} test_devices;

/* Opens every device; exits 77 (meson: skipped) when there is none. */
static inline void test_devices_open_or_skip(test_devices *t)
{
    st_status s = st_device_list_create(&t->list);
    if (s == ST_ERR_NO_DEVICE) {
        fprintf(stderr, "skip: no OpenCL device: %s\n", st_last_error());
        exit(TEST_SKIP);
    }
    if (s != ST_OK) {
        fprintf(stderr, "listing devices failed: %s\n", st_last_error());
        exit(1);
    }
    t->n = st_device_list_count(t->list);
    for (size_t i = 0; i < t->n; i++) {
        if (st_device_open(t->list, i, &t->dev[i]) != ST_OK) {
            fprintf(stderr, "opening device %zu failed: %s\n", i, st_last_error());
            exit(1);
        }
    }
}

static inline void test_devices_close(test_devices *t)
{
    for (size_t i = 0; i < t->n; i++)
        st_device_close(t->dev[i]);
    st_device_list_destroy(t->list);
}

/* Fails the test with the status and the last error message. */
#define assert_ok(expr)                                                                \
    do {                                                                               \
        st_status s_ = (expr);                                                         \
        if (s_ != ST_OK)                                                               \
            fail_msg("%s -> %s: %s", #expr, st_status_name(s_), st_last_error());    \
    } while (0)

#define assert_close(got, ref, n, atol, rtol)                                          \
    do {                                                                               \
        if (!st_compare_f32((got), (ref), (n), (atol), (rtol), NULL)) {                \
            char buf_[2048];                                                           \
            fail_msg("%s vs %s: %s", #got, #ref,                                       \
                     st_compare_describe((got), (ref), (n), (atol), (rtol), 5, buf_,   \
                                         sizeof buf_));                                \
        }                                                                              \
    } while (0)

#define assert_contains(haystack, needle)                                              \
    do {                                                                               \
        if (!strstr((haystack), (needle)))                                             \
            fail_msg("expected \"%s\" in: %s", (needle), (haystack));                  \
    } while (0)

#endif
