/* compare.c - tolerance checks against a reference, and seeded test data. */
#include <math.h>
#include <stdio.h>

#include "strata/compare.h"

static bool close_enough(float got, float ref, double atol, double rtol)
{
    if (isnan(got) || isnan(ref))
        return false;
    return fabs((double)got - (double)ref) <= atol + rtol * fabs((double)ref);
}

bool st_compare_f32(const float *got, const float *ref, size_t n, double atol, double rtol,
                    st_compare *out)
{
    st_compare c = {.first_bad = n};
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - (double)ref[i]);
        if (isnan(d) || d > c.max_abs) {
            c.max_abs = isnan(d) ? INFINITY : d;
            c.max_at = i;
        }
        if (!close_enough(got[i], ref[i], atol, rtol)) {
            if (c.n_bad == 0)
                c.first_bad = i;
            c.n_bad++;
        }
    }
    if (out)
        *out = c;
    return c.n_bad == 0;
}

const char *st_compare_describe(const float *got, const float *ref, size_t n, double atol,
                                double rtol, size_t show, char *buf, size_t size)
{
    st_compare c;
    st_compare_f32(got, ref, n, atol, rtol, &c);
    size_t len = (size_t)snprintf(buf, size,
                                  "max |diff| %.3g at %zu; %zu of %zu outside atol %.1e + "
                                  "rtol %.1e*|ref|",
                                  c.max_abs, c.max_at, c.n_bad, n, atol, rtol);
    for (size_t i = c.first_bad, shown = 0; i < n && shown < show && len < size; i++) {
        if (close_enough(got[i], ref[i], atol, rtol))
            continue;
        len += (size_t)snprintf(buf + len, size - len, "%s [%zu] got %.8g want %.8g",
                                shown ? ";" : ":", i, got[i], ref[i]);
        shown++;
    }
    return buf;
}

void st_fill_random(float *x, size_t n, unsigned long long seed)
{
    /* splitmix64: simple, seedable, the same on every platform. */
    unsigned long long s = seed;
    for (size_t i = 0; i < n; i++) {
        unsigned long long z = (s += 0x9e3779b97f4a7c15ULL);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        z ^= z >> 31;
        x[i] = (float)((double)(z >> 40) / (double)(1ULL << 24) * 2.0 - 1.0);
    }
}
