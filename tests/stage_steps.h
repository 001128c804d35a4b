/*
 * stage_steps.h - what the whole-model tests (test_gpt.c, test_llama.c) do
 * as their reference scripts do: training steps of a stage holding the
 * whole model, each a forward, the loss, a backward, the global gradient
 * norm and one AdamW step with that norm clipped to `clip`.
 *
 * Include after <cmocka.h> and tests/common.h.
 */
#ifndef STRATA_TESTS_STAGE_STEPS_H
#define STRATA_TESTS_STAGE_STEPS_H

#include <math.h>

#include "strata/stage.h"

/* steps steps on tokens/targets (B x T); losses and norms (before
 * clipping) out, one per step. */
static inline void stage_train_steps(st_stage *g, const st_adamw_hparams *hp, float clip,
                                     const int32_t *tokens, const int32_t *targets, int B, int T,
                                     int steps, float *losses, float *norms)
{
    for (int t = 1; t <= steps; t++) {
        double sum = 0, ss = 0;
        long count = 0;
        float per_layer[256];
        assert_true(st_stage_n_layers(g) <= 256);
        assert_ok(st_stage_zero_grad(g));
        assert_ok(st_stage_forward(g, 0, tokens, targets, B, T));
        assert_ok(st_stage_loss(g, 0, targets, B, T, &sum, &count));
        assert_ok(st_stage_backward(g, 0, B, T, 1.0f / (float)count));
        assert_ok(st_stage_grad_sumsq(g, per_layer));
        for (size_t l = 0; l < st_stage_n_layers(g); l++)
            ss += per_layer[l];
        double norm = sqrt(ss);
        float scale = (float)fmin(1.0, clip / (norm + 1e-6));
        assert_ok(st_stage_step(g, hp, t, scale));
        losses[t - 1] = (float)(sum / count);
        norms[t - 1] = (float)norm;
    }
}

#endif
