/*
 * sample.h - drawing the next token from a model's logits: greedy, or
 * sampled with temperature, top-k, min-p and top-p, after a repetition
 * penalty. Every draw is a function of the logits, the settings, the text so
 * far and the caller's random state alone (a seeded run repeats).
 */
#ifndef STRATA_SAMPLE_H
#define STRATA_SAMPLE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct st_sampling {
    double temperature;    /* 0: the most likely token */
    int top_k;             /* the k most likely only; 0: all */
    double top_p;          /* then the fewest most likely whose probabilities reach top_p of
                            * the rest's sum; 1: all */
    double min_p;          /* then those at least min_p times as likely as the likeliest;
                            * 0: all */
    double repeat_penalty; /* first, each token among the last repeat_last_n of the text:
                            * its logit divided by the penalty when positive, multiplied
                            * when negative, once however often it occurs; 1: none */
    int repeat_last_n;
} st_sampling;

/* A token and its logit, the caller's scratch of V of them. */
typedef struct st_candidate {
    float logit;
    int id;
} st_candidate;

/* The next token among ids 0..V-1 of logits. recent: the text's tokens so
 * far, n_recent of them (the penalty's window is their end). rng: the
 * caller's state, advanced by one draw when sampling. Ties go to the lower
 * id. top_p 1, min_p 0 and penalty 1 draw exactly as temperature and top-k
 * alone do. */
int st_sample(const float *logits, int V, const st_sampling *sp, const int *recent,
              long n_recent, st_candidate *scratch, uint64_t *rng);

/* The random state's next 64 bits (splitmix64). */
uint64_t st_sample_next(uint64_t *state);

#ifdef __cplusplus
}
#endif

#endif
