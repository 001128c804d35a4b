/*
 * test_tune.c - CLBlast tuning: a (very short) tuner run gives parameters
 * that CLBlast accepts and that still compute the right products; tunings
 * survive a save and load; a damaged tuning file is a clear error; reset
 * removes it. The tuner's search is kept tiny: this checks the plumbing, not
 * the speed (`strata tune` reports that).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "strata/tune.h"
#include "tests/common.h"

static test_devices td;

static void products_match_sized(st_device *dev, size_t m, size_t n, size_t k)
{
    float *a = malloc(m * k * sizeof *a), *b = malloc(k * n * sizeof *b);
    float *c = malloc(m * n * sizeof *c), *ref = calloc(m * n, sizeof *ref);
    st_fill_random(a, m * k, 1);
    st_fill_random(b, k * n, 2);
    st_tensor *ta = NULL, *tb = NULL, *tc = NULL;
    size_t sa[2] = {m, k}, sb[2] = {k, n}, sc[2] = {m, n};
    assert_ok(st_tensor_create(dev, ST_F32, 2, sa, "a", &ta));
    assert_ok(st_tensor_create(dev, ST_F32, 2, sb, "b", &tb));
    assert_ok(st_tensor_create(dev, ST_F32, 2, sc, "c", &tc));
    assert_ok(st_tensor_write(ta, 0, m * k, a));
    assert_ok(st_tensor_write(tb, 0, k * n, b));
    assert_ok(st_matmul(false, false, 1.0f, ta, tb, 0.0f, tc));
    assert_ok(st_tensor_read(tc, 0, m * n, c));
    st_gemm_ref(false, false, m, n, k, 1.0f, a, k, b, n, 0.0f, ref, n);
    assert_close(c, ref, m * n, 1e-4, 1e-4);
    st_tensor_destroy(ta);
    st_tensor_destroy(tb);
    st_tensor_destroy(tc);
    free(a), free(b), free(c), free(ref);
}

/* A small product (CLBlast's direct kernel) and one large enough for the
 * indirect one. */
static void products_match(st_device *dev)
{
    products_match_sized(dev, 70, 50, 90);
    products_match_sized(dev, 200, 300, 150);
}

static void tuned_parameters_compute_right_and_persist(void **state)
{
    (void)state;
    if (!st_tune_available()) {
        st_tuning t;
        assert_int_equal(st_tune_kernel(td.dev[0], "Xgemm", 64, 64, 64, 0.001, &t),
                         ST_ERR_UNSUPPORTED);
        skip();
    }
    st_device *dev = td.dev[0];
    st_tuning t;
    assert_int_equal(st_tune_kernel(dev, "Xnope", 64, 64, 64, 0.001, &t), ST_ERR_INVALID);
    assert_ok(st_tune_kernel(dev, "XgemmDirect", 64, 64, 64, 0.0005, &t));
    assert_string_equal(t.kernel, "XgemmDirect");
    assert_true(t.n > 0);
    assert_ok(st_tuning_apply(dev, &t));
    products_match(dev);

    assert_ok(st_tuning_save(dev, &t, 1));
    st_tuning back[2];
    size_t n = 0;
    assert_ok(st_tuning_read(dev, back, 2, &n));
    assert_int_equal(n, 1);
    assert_string_equal(back[0].kernel, "XgemmDirect");
    assert_int_equal(back[0].n, t.n);
    /* Loading applies the family's built-in values first, then the saved ones. */
    st_tuning builtin[4];
    size_t nb = st_tuning_builtin(st_device_get_info(dev), builtin, 4);
    size_t applied = 0;
    assert_ok(st_tuning_load(dev, &applied));
    assert_int_equal(applied, nb + 1);
    assert_int_equal(st_device_tuning_source(dev), ST_TUNING_SAVED);
    products_match(dev);

    char path[4200];
    st_tuning_path(dev, path, sizeof path);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("{\"kernels\": 3}", f);
    fclose(f);
    assert_int_equal(st_tuning_load(dev, &applied), ST_ERR_FORMAT);
    assert_contains(st_last_error(), "damaged or not this device's");

    assert_ok(st_tuning_save(dev, NULL, 0));
    assert_int_equal(access(path, F_OK), -1);
    assert_ok(st_tuning_load(dev, &applied));
    assert_int_equal(applied, nb);
    assert_int_equal(st_device_tuning_source(dev), nb ? ST_TUNING_BUILTIN : ST_TUNING_DEFAULT);
}

/* The table: PoCL's CPU devices have known-good values; a GPU of an unknown
 * family has none. */
static void builtin_values_by_family(void **state)
{
    (void)state;
    st_device_info info;
    memset(&info, 0, sizeof info);
    snprintf(info.platform, sizeof info.platform, "Portable Computing Language");
    info.type = ST_DEVICE_CPU;
    st_tuning t[4];
    size_t n = st_tuning_builtin(&info, t, 4);
    assert_true(n >= 1);
    assert_string_equal(t[0].kernel, "Xgemm");
    assert_int_equal(t[0].n, 16); /* every Xgemm parameter, as CLBlast wants them */
    info.type = ST_DEVICE_GPU;
    assert_int_equal(st_tuning_builtin(&info, t, 4), 0);
    snprintf(info.platform, sizeof info.platform, "NVIDIA CUDA");
    assert_int_equal(st_tuning_builtin(&info, t, 4), 0);
}

/* The budgeted search: it times at least one candidate, never returns
 * something slower than where it started, leaves its best applied, and the
 * products stay right. */
static void search_keeps_the_best_and_stays_right(void **state)
{
    (void)state;
    if (!st_tune_available())
        skip();
    st_device *dev = td.dev[0];
    st_tuning start, now;
    assert_ok(st_tuning_current(dev, "Xgemm", &start));
    assert_true(start.n > 0);
    st_tune_shape sh[1] = {{128, 128, 128}};
    st_tune_result r;
    assert_int_equal(st_tune_search(dev, &start, sh, 0, 1, 1, &r), ST_ERR_INVALID);
    assert_ok(st_tune_search(dev, &start, sh, 1, 3.0, 7, &r));
    assert_true(r.tried >= 1);
    assert_true(r.start_gflops > 0);
    assert_true(r.best_gflops >= r.start_gflops);
    assert_ok(st_tuning_current(dev, "Xgemm", &now));
    assert_int_equal(now.n, r.best.n);
    for (size_t i = 0; i < now.n; i++)
        for (size_t j = 0; j < r.best.n; j++)
            if (strcmp(now.names[i], r.best.names[j]) == 0)
                assert_int_equal(now.values[i], r.best.values[j]);
    products_match(dev);
    double g = 0;
    assert_ok(st_tune_rate(dev, sh, 1, &g));
    assert_true(g > 0);
    assert_ok(st_tuning_apply(dev, &start));
}

static int group_teardown(void **state)
{
    (void)state;
    test_devices_close(&td);
    return 0;
}

int main(void)
{
    test_devices_open_or_skip(&td);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(tuned_parameters_compute_right_and_persist),
        cmocka_unit_test(builtin_values_by_family),
        cmocka_unit_test(search_keeps_the_best_and_stays_right),
    };
    return cmocka_run_group_tests(tests, NULL, group_teardown);
}
