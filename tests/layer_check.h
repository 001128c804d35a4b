/*
 * layer_check.h - what the op tests share (test_layers.c, test_llama_layers.c):
 * random inputs as floats for the device and the same values as doubles for
 * the references, device tensors from them, comparisons with the
 * references, and finite-difference checks of the references' backwards.
 *
 * Tolerances: device (fp32) vs reference (fp64): atol 1e-5, rtol 1e-4 (sums
 * over C of O(1) terms in fp32). Reference backward vs finite differences
 * (h = 1e-5, fp64): atol 1e-7, rtol 1e-6.
 *
 * Include after <cmocka.h> and tests/common.h.
 */
#ifndef STRATA_TESTS_LAYER_CHECK_H
#define STRATA_TESTS_LAYER_CHECK_H

#include <math.h>
#include <stdlib.h>

#include "strata/tensor.h"

#define ATOL 1e-5
#define RTOL 1e-4

/* ---- host arrays: floats for the device, the same values as doubles for the reference */

static inline double *rnd(size_t n, unsigned long long seed, double scale)
{
    float *f = malloc(n * sizeof *f);
    double *d = malloc(n * sizeof *d);
    assert_true(f && d);
    st_fill_random(f, n, seed);
    for (size_t i = 0; i < n; i++)
        d[i] = (double)(float)(f[i] * scale);
    free(f);
    return d;
}

static inline double *zeros(size_t n)
{
    double *d = calloc(n, sizeof *d);
    assert_non_null(d);
    return d;
}

static inline st_tensor *up(st_device *dev, const double *x, size_t n, const char *name)
{
    float *f = malloc(n * sizeof *f);
    assert_non_null(f);
    for (size_t i = 0; i < n; i++)
        f[i] = (float)x[i];
    st_tensor *t;
    assert_ok(st_tensor_create(dev, ST_F32, 1, &n, name, &t));
    assert_ok(st_tensor_write(t, 0, n, f));
    free(f);
    return t;
}

static inline st_tensor *up_int(st_device *dev, const int *x, size_t n)
{
    st_tensor *t;
    assert_ok(st_tensor_create(dev, ST_I32, 1, &n, "targets", &t));
    assert_ok(st_tensor_write(t, 0, n, x));
    return t;
}

/* Reads a device tensor and compares it with a double reference. */
static inline void check(const char *what, const st_tensor *t, const double *ref, size_t n)
{
    float *got = malloc(n * sizeof *got), *want = malloc(n * sizeof *want);
    assert_true(got && want);
    assert_ok(st_tensor_read(t, 0, n, got));
    for (size_t i = 0; i < n; i++)
        want[i] = (float)ref[i];
    if (!st_compare_f32(got, want, n, ATOL, RTOL, NULL)) {
        char buf[2048];
        fail_msg("%s on %s: %s", what, st_device_label(st_tensor_device(t)),
                 st_compare_describe(got, want, n, ATOL, RTOL, 5, buf, sizeof buf));
    }
    free(got);
    free(want);
}

/* ---- finite differences */

typedef double (*loss_fn)(void *ctx);

static inline void check_fd(const char *what, double *x, size_t n, const double *analytic, loss_fn f,
                     void *ctx)
{
    const double h = 1e-5;
    size_t step = n > 64 ? n / 64 : 1; /* up to 64 samples spread over x */
    for (size_t i = 0; i < n; i += step) {
        double keep = x[i];
        x[i] = keep + h;
        double lp = f(ctx);
        x[i] = keep - h;
        double lm = f(ctx);
        x[i] = keep;
        double fd = (lp - lm) / (2 * h);
        if (fabs(fd - analytic[i]) > 1e-7 + 1e-6 * fabs(fd))
            fail_msg("%s[%zu]: backward %.10g, finite difference %.10g", what, i, analytic[i], fd);
    }
}

#endif
