/* test_sample.c - drawing the next token (strata/sample.h) against the
 * distribution each setting defines, computed here from the same logits. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <string.h>

#include <cmocka.h>

#include "strata/sample.h"

enum { V = 6, DRAWS = 20000 };
/* probabilities at temperature 1: 0.40, 0.24, 0.15, 0.11, 0.07, 0.03 (rounded) */
static const float logits[V] = {2.0f, 1.5f, 1.0f, 0.7f, 0.25f, -0.6f};

/* How often each id is drawn over DRAWS seeded draws. */
static void histogram(const st_sampling *sp, const int *recent, long n, double *freq)
{
    st_candidate c[V];
    uint64_t rng = 12345;
    int count[V] = {0};
    for (int i = 0; i < DRAWS; i++) {
        int t = st_sample(logits, V, sp, recent, n, c, &rng);
        assert_true(t >= 0 && t < V);
        count[t]++;
    }
    for (int v = 0; v < V; v++)
        freq[v] = (double)count[v] / DRAWS;
}

/* The softmax at temperature T over the ids in keep (others 0). */
static void expected(double T, const int *keep, double *p)
{
    double sum = 0;
    for (int v = 0; v < V; v++)
        sum += p[v] = keep[v] ? exp(logits[v] / T) : 0;
    for (int v = 0; v < V; v++)
        p[v] /= sum;
}

static void near(const double *got, const double *want)
{
    for (int v = 0; v < V; v++)
        if (fabs(got[v] - want[v]) > 0.015) /* 20,000 draws: under 4 standard deviations */
            fail_msg("id %d drawn %.4f of the time, expected %.4f", v, got[v], want[v]);
}

static void greedy_and_ties(void **state)
{
    (void)state;
    st_sampling sp = {.temperature = 0, .top_p = 1, .repeat_penalty = 1};
    st_candidate c[V];
    uint64_t rng = 1, before = rng;
    assert_int_equal(st_sample(logits, V, &sp, NULL, 0, c, &rng), 0);
    assert_true(rng == before); /* greedy draws nothing */
    float tie[3] = {1.0f, 3.0f, 3.0f};
    assert_int_equal(st_sample(tie, 3, &sp, NULL, 0, c, &rng), 1); /* the lower id */
}

static void temperature_top_k_min_p_top_p(void **state)
{
    (void)state;
    double got[V], want[V];
    int all[V] = {1, 1, 1, 1, 1, 1};
    st_sampling sp = {.temperature = 1, .top_p = 1, .repeat_penalty = 1};
    histogram(&sp, NULL, 0, got);
    expected(1, all, want);
    near(got, want);
    sp.temperature = 0.5;
    histogram(&sp, NULL, 0, got);
    expected(0.5, all, want);
    near(got, want);
    /* top-k 3: the three likeliest, renormalised */
    sp.temperature = 1;
    sp.top_k = 3;
    int three[V] = {1, 1, 1, 0, 0, 0};
    histogram(&sp, NULL, 0, got);
    expected(1, three, want);
    near(got, want);
    /* min-p 0.3: exp(l - 2) >= 0.3 keeps ids 0-2 (1, 0.61, 0.37; 0.27 is out) */
    sp.top_k = 0;
    sp.min_p = 0.3;
    histogram(&sp, NULL, 0, got);
    near(got, want);
    /* top-p 0.6: 0.40 + 0.24 reaches it with two */
    sp.min_p = 0;
    sp.top_p = 0.6;
    int two[V] = {1, 1, 0, 0, 0, 0};
    histogram(&sp, NULL, 0, got);
    expected(1, two, want);
    near(got, want);
    /* a top-p below the likeliest's share keeps it alone */
    sp.top_p = 1e-9;
    histogram(&sp, NULL, 0, got);
    assert_true(got[0] == 1.0);
}

static void defaults_draw_as_before(void **state)
{
    (void)state;
    /* the new settings at their neutral values change no draw */
    st_sampling a = {.temperature = 0.8, .top_k = 4, .top_p = 1, .repeat_penalty = 1},
                b = {.temperature = 0.8, .top_k = 4, .top_p = 1, .min_p = 0,
                     .repeat_penalty = 1, .repeat_last_n = 64};
    st_candidate c[V];
    uint64_t r1 = 99, r2 = 99;
    int recent[3] = {0, 1, 0};
    for (int i = 0; i < 1000; i++)
        assert_int_equal(st_sample(logits, V, &a, NULL, 0, c, &r1),
                         st_sample(logits, V, &b, recent, 3, c, &r2));
}

static void repetition_penalty(void **state)
{
    (void)state;
    st_candidate c[V];
    uint64_t rng = 1;
    /* id 0 (2.0) seen: 2.0 / 2 = 1.0 < 1.5, so greedy takes id 1; seen
     * twice, still divided once */
    int recent[4] = {0, 3, 0, 0};
    st_sampling sp = {.temperature = 0, .top_p = 1, .repeat_penalty = 2, .repeat_last_n = 64};
    assert_int_equal(st_sample(logits, V, &sp, recent, 4, c, &rng), 1);
    /* a window of the last token: id 0 is there, then it is not */
    sp.repeat_last_n = 1;
    assert_int_equal(st_sample(logits, V, &sp, recent, 4, c, &rng), 1);
    int old[4] = {0, 3, 5, 5};
    assert_int_equal(st_sample(logits, V, &sp, old, 4, c, &rng), 0); /* 0 is out of the window */
    /* a negative logit is multiplied: id 5 (-0.6) seen, penalty 3 gives -1.8 */
    float neg[2] = {-1.0f, -0.6f};
    int five[1] = {1};
    sp.repeat_last_n = 8;
    sp.repeat_penalty = 3;
    assert_int_equal(st_sample(neg, 2, &sp, five, 1, c, &rng), 0);
    /* ids outside 0..V-1 in the text are ignored */
    int odd[2] = {-4, 1000};
    sp.repeat_penalty = 2;
    assert_int_equal(st_sample(logits, V, &sp, odd, 2, c, &rng), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(greedy_and_ties),
        cmocka_unit_test(temperature_top_k_min_p_top_p),
        cmocka_unit_test(defaults_draw_as_before),
        cmocka_unit_test(repetition_penalty),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
