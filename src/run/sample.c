/*
 * sample.c - the next token from logits (see strata/sample.h).
 */
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>

#include "strata/sample.h"

uint64_t st_sample_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int by_logit(const void *a, const void *b)
{
    const st_candidate *x = a, *y = b;
    if (x->logit != y->logit)
        return x->logit > y->logit ? -1 : 1;
    return x->id - y->id;
}

/* The repetition penalty, then: temperature 0 the most likely token; else
 * softmax(logits / temperature) over the top_k most likely, cut to those of
 * at least min_p times the first's probability, then to the fewest whose
 * probabilities reach top_p of the rest's sum, and sampled. With the
 * defaults (top_p 1, min_p 0, penalty 1) the draws are the ones before these
 * settings existed. recent: the last tokens of the text, n_recent of them. */
int st_sample(const float *logits, int V, const st_sampling *sp, const int *recent,
              long n_recent, st_candidate *c, uint64_t *rng)
{
    for (int v = 0; v < V; v++)
        c[v] = (st_candidate){logits[v], v};
    if (sp->repeat_penalty != 1.0 && sp->repeat_last_n > 0) {
        long from = n_recent > sp->repeat_last_n ? n_recent - sp->repeat_last_n : 0;
        for (long i = from; i < n_recent; i++) {
            int t = recent[i];
            bool seen = t < 0 || t >= V; /* outside the sampled ids */
            for (long j = from; j < i && !seen; j++)
                seen = recent[j] == t; /* each token once */
            if (seen)
                continue;
            float l = c[t].logit;
            c[t].logit = l > 0 ? (float)(l / sp->repeat_penalty) : (float)(l * sp->repeat_penalty);
        }
    }
    qsort(c, (size_t)V, sizeof *c, by_logit);
    double temperature = sp->temperature;
    if (temperature <= 0)
        return c[0].id;
    int k = sp->top_k > 0 && sp->top_k < V ? sp->top_k : V;
    double sum = 0, *p = malloc((size_t)k * sizeof *p);
    if (!p)
        return c[0].id;
    for (int i = 0; i < k; i++)
        sum += p[i] = exp((c[i].logit - c[0].logit) / temperature);
    if (sp->min_p > 0) { /* p[0] is the likeliest's, exp(0) = 1 */
        int keep = 1;
        while (keep < k && p[keep] >= sp->min_p * p[0])
            keep++;
        if (keep < k) {
            k = keep;
            sum = 0;
            for (int i = 0; i < k; i++)
                sum += p[i];
        }
    }
    if (sp->top_p < 1) {
        double acc = 0;
        int keep = 0;
        while (keep < k && (keep == 0 || acc < sp->top_p * sum))
            acc += p[keep++];
        if (keep < k) {
            k = keep;
            sum = acc;
        }
    }
    double u = (double)(st_sample_next(rng) >> 11) * 0x1.0p-53 * sum;
    int pick = k - 1;
    for (int i = 0; i < k; i++) {
        if (u < p[i]) {
            pick = i;
            break;
        }
        u -= p[i];
    }
    free(p);
    return c[pick].id;
}

