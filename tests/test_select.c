/*
 * test_select.c - device choices ("all", "gpu", "0,2", "1-3", names) resolved
 * against made-up device tables: no OpenCL needed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "tests/common.h"

static st_device_info table[4];

static int setup(void **state)
{
    (void)state;
    memset(table, 0, sizeof table);
    const char *names[] = {"NVIDIA GeForce RTX 4090", "AMD Radeon RX 7900 XTX",
                           "pthread-skylake-avx512", "Intel(R) Arc(TM) A770"};
    const char *platforms[] = {"NVIDIA CUDA", "AMD Accelerated Parallel Processing",
                               "Portable Computing Language", "Intel(R) OpenCL Graphics"};
    st_device_type types[] = {ST_DEVICE_GPU, ST_DEVICE_GPU, ST_DEVICE_CPU, ST_DEVICE_GPU};
    for (unsigned i = 0; i < 4; i++) {
        table[i].index = i;
        table[i].type = types[i];
        strcpy(table[i].name, names[i]);
        strcpy(table[i].platform, platforms[i]);
        strcpy(table[i].vendor, i == 2 ? "AuthenticAMD" : "Vendor");
        table[i].global_mem = (uint64_t)(i + 1) << 30;
    }
    return 0;
}

static size_t pick(const char *spec, size_t *idx)
{
    size_t n = 99;
    assert_ok(st_device_select(table, 4, spec, idx, ST_MAX_DEVICES, &n));
    return n;
}

static void all_and_types(void **state)
{
    (void)state;
    size_t idx[ST_MAX_DEVICES];
    assert_int_equal(pick("all", idx), 4);
    assert_int_equal(idx[3], 3);
    assert_int_equal(pick("gpu", idx), 3);
    assert_int_equal(idx[0], 0);
    assert_int_equal(idx[1], 1);
    assert_int_equal(idx[2], 3);
    assert_int_equal(pick("CPU", idx), 1);
    assert_int_equal(idx[0], 2);
    assert_int_equal(pick(NULL, idx), 4);
}

static void indices_ranges_order_and_repeats(void **state)
{
    (void)state;
    size_t idx[ST_MAX_DEVICES];
    assert_int_equal(pick("2,0", idx), 2);
    assert_int_equal(idx[0], 2);
    assert_int_equal(idx[1], 0);
    assert_int_equal(pick("1-3", idx), 3);
    assert_int_equal(idx[0], 1);
    assert_int_equal(idx[2], 3);
    assert_int_equal(pick(" 3 , 3,1-2 ", idx), 3); /* spaces ignored, each device once */
    assert_int_equal(idx[0], 3);
    assert_int_equal(idx[1], 1);
    assert_int_equal(idx[2], 2);
}

static void name_substrings(void **state)
{
    (void)state;
    size_t idx[ST_MAX_DEVICES];
    assert_int_equal(pick("nvidia", idx), 1);
    assert_int_equal(idx[0], 0);
    assert_int_equal(pick("radeon,Arc", idx), 2);
    assert_int_equal(idx[0], 1);
    assert_int_equal(idx[1], 3);
    assert_int_equal(pick("portable", idx), 1); /* the platform name counts too */
    assert_int_equal(idx[0], 2);
}

static void bad_choices_list_what_exists(void **state)
{
    (void)state;
    size_t idx[ST_MAX_DEVICES], n = 42;
    assert_int_equal(st_device_select(table, 4, "7", idx, ST_MAX_DEVICES, &n), ST_ERR_NO_DEVICE);
    assert_int_equal(n, 42); /* *n_out untouched on failure */
    assert_contains(st_last_error(), "index 7");
    assert_contains(st_last_error(), "out of range");
    assert_contains(st_last_error(), "3: Intel(R) Arc(TM) A770 [gpu");
    assert_contains(st_last_error(), "0: NVIDIA GeForce RTX 4090");

    assert_int_equal(st_device_select(table, 4, "0,tpu", idx, ST_MAX_DEVICES, &n),
                     ST_ERR_NO_DEVICE);
    assert_contains(st_last_error(), "'tpu'");
    assert_contains(st_last_error(), "2: pthread-skylake-avx512 [cpu");

    assert_int_equal(st_device_select(table, 4, "3-1", idx, ST_MAX_DEVICES, &n),
                     ST_ERR_NO_DEVICE);
    assert_contains(st_last_error(), "backwards");
    assert_int_equal(st_device_select(table, 4, " , ", idx, ST_MAX_DEVICES, &n),
                     ST_ERR_NO_DEVICE);
    assert_contains(st_last_error(), "empty");
    assert_int_equal(st_device_select(table, 4, "accelerator", idx, ST_MAX_DEVICES, &n),
                     ST_ERR_NO_DEVICE);
    assert_int_equal(st_device_select(table, 4, "0-2", idx, 2, &n), ST_ERR_INVALID);
}

static void spec_resolution_order(void **state)
{
    (void)state;
    unsetenv("STRATA_DEVICES");
    assert_string_equal(st_device_spec_resolve(NULL), "all");
    setenv("STRATA_DEVICES", "gpu", 1);
    assert_string_equal(st_device_spec_resolve(NULL), "gpu");
    assert_string_equal(st_device_spec_resolve("1"), "1");
    setenv("STRATA_DEVICES", "", 1);
    assert_string_equal(st_device_spec_resolve(""), "all");
    unsetenv("STRATA_DEVICES");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(all_and_types, setup),
        cmocka_unit_test_setup(indices_ranges_order_and_repeats, setup),
        cmocka_unit_test_setup(name_substrings, setup),
        cmocka_unit_test_setup(bad_choices_list_what_exists, setup),
        cmocka_unit_test(spec_resolution_order),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
