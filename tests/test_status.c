/* test_status.c - status names, OpenCL error names, the last-error message. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <string.h>

#include <cmocka.h>

#include "strata/cl.h"
#include "tests/common.h"

static void status_names(void **state)
{
    (void)state;
    assert_string_equal(st_status_name(ST_OK), "ST_OK");
    assert_string_equal(st_status_name(ST_ERR_DEVICE_MEMORY), "ST_ERR_DEVICE_MEMORY");
    assert_string_equal(st_status_name((st_status)999), "ST_STATUS_UNKNOWN");
    assert_string_equal(st_status_text(ST_ERR_BUILD), "kernel build failed");
}

static void cl_error_names_cover_opencl_3(void **state)
{
    (void)state;
    /* Every code from 0 to -19 and -30 to -72 is named in OpenCL 3.0. */
    for (int code = 0; code >= -72; code--) {
        if (code < -19 && code > -30)
            continue;
        const char *name = st_cl_error_name(code);
        if (strcmp(name, "CL_UNKNOWN_ERROR") == 0)
            fail_msg("OpenCL error %d has no name", code);
        assert_int_equal(strncmp(name, "CL_", 3), 0);
    }
    assert_string_equal(st_cl_error_name(CL_SUCCESS), "CL_SUCCESS");
    assert_string_equal(st_cl_error_name(CL_OUT_OF_RESOURCES), "CL_OUT_OF_RESOURCES");
    assert_string_equal(st_cl_error_name(CL_INVALID_KERNEL_ARGS), "CL_INVALID_KERNEL_ARGS");
    assert_string_equal(st_cl_error_name(-72), "CL_MAX_SIZE_RESTRICTION_EXCEEDED");
    assert_string_equal(st_cl_error_name(-1001), "CL_PLATFORM_NOT_FOUND_KHR");
    assert_string_equal(st_cl_error_name(-25), "CL_UNKNOWN_ERROR");
    assert_string_equal(st_cl_error_name(12345), "CL_UNKNOWN_ERROR");
}

static void cl_fail_message_names_everything(void **state)
{
    (void)state;
    st_status s = ST_CL_FAIL(CL_INVALID_WORK_GROUP_SIZE, "clEnqueueNDRangeKernel", NULL);
    assert_int_equal(s, ST_ERR_CL);
    const char *m = st_last_error();
    assert_contains(m, "clEnqueueNDRangeKernel");
    assert_contains(m, "CL_INVALID_WORK_GROUP_SIZE (-54)");
    assert_contains(m, "test_status.c:");
    s = ST_CL_FAIL(CL_MEM_OBJECT_ALLOCATION_FAILURE, "clCreateBuffer", NULL);
    assert_int_equal(s, ST_ERR_DEVICE_MEMORY);
    assert_contains(st_last_error(), "smaller batch");
}

static void error_context_prepends(void **state)
{
    (void)state;
    st_error(ST_ERR_IO, "cannot open x.bin");
    st_error_context("loading checkpoint %s", "run1");
    assert_string_equal(st_last_error(), "loading checkpoint run1: cannot open x.bin");
    st_error_clear();
    assert_string_equal(st_last_error(), "");
}

static void long_message_is_cut_and_says_so(void **state)
{
    (void)state;
    size_t n = 200000;
    char *big = malloc(n + 1);
    assert_non_null(big);
    memset(big, 'x', n);
    big[n] = '\0';
    st_error(ST_ERR_BUILD, "log: %s", big);
    assert_contains(st_last_error(), "message cut");
    st_error_context("building");
    assert_int_equal(strncmp(st_last_error(), "building: log: x", 16), 0);
    assert_contains(st_last_error(), "message cut");
    free(big);
}

static void format_bytes(void **state)
{
    (void)state;
    char b[32];
    assert_string_equal(st_format_bytes(100, b, sizeof b), "100 B");
    assert_string_equal(st_format_bytes(1536, b, sizeof b), "1.50 KiB");
    assert_string_equal(st_format_bytes(3ull << 30, b, sizeof b), "3.00 GiB");
    assert_string_equal(st_format_bytes(600ull << 20, b, sizeof b), "600.0 MiB");
}

static void compare_reports_mismatches(void **state)
{
    (void)state;
    float ref[4] = {1.0f, 2.0f, 3.0f, 4.0f};
    float got[4] = {1.0f, 2.00001f, 3.5f, NAN};
    st_compare c;
    assert_false(st_compare_f32(got, ref, 4, 1e-4, 1e-4, &c));
    assert_int_equal(c.n_bad, 2);
    assert_int_equal(c.first_bad, 2);
    assert_true(st_compare_f32(got, ref, 2, 1e-4, 1e-4, &c));
    char buf[512];
    assert_contains(st_compare_describe(got, ref, 4, 1e-4, 1e-4, 5, buf, sizeof buf),
                    "[2] got 3.5 want 3");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(status_names),
        cmocka_unit_test(cl_error_names_cover_opencl_3),
        cmocka_unit_test(cl_fail_message_names_everything),
        cmocka_unit_test(error_context_prepends),
        cmocka_unit_test(long_message_is_cut_and_says_so),
        cmocka_unit_test(format_bytes),
        cmocka_unit_test(compare_reports_mismatches),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
