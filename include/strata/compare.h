/*
 * compare.h - comparing results with a reference: an element passes when
 * |got - ref| <= atol + rtol * |ref| (and neither is NaN).
 */
#ifndef STRATA_COMPARE_H
#define STRATA_COMPARE_H

#include <stdbool.h>
#include <stddef.h>

typedef struct st_compare {
    size_t n_bad;     /* elements outside the tolerance */
    size_t first_bad; /* index of the first of them (n when none) */
    double max_abs;   /* largest |got - ref| */
    size_t max_at;    /* where it is */
} st_compare;

bool st_compare_f32(const float *got, const float *ref, size_t n, double atol, double rtol,
                    st_compare *out);

/* Writes "max |diff| 3.1e-06 at 17; 2 of 400 outside atol 1e-05 + rtol 1e-04*|ref|:
 * [17] got 1.0 want 1.1; ..." (up to `show` mismatches) into buf. */
const char *st_compare_describe(const float *got, const float *ref, size_t n, double atol,
                                double rtol, size_t show, char *buf, size_t size);

/* Deterministic pseudo-random floats in [-1, 1) for tests and checks. */
void st_fill_random(float *x, size_t n, unsigned long long seed);

#endif
