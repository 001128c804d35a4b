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

/* Packed documents (st_stage_positions): three documents of random tokens
 * below V laid one after the other in one sequence of T, each with its own
 * positions, give the loss and the gradients that the same documents give
 * as three sequences of their own, padded (padding has no targets), on a
 * stage over desc's whole model made for 3 x T. The mean loss over the
 * same targets weighs the tokens alike: the sums differ by float rounding
 * only (the rows sit elsewhere in the products). Then a table that is not
 * positions is refused. */
static inline void stage_packed_equals_padded(st_device *dev, const st_model_desc *desc, int T)
{
    int V = desc->cfg.vocab_size, lens[3] = {T / 2, T / 4, T - T / 2 - T / 4};
    size_t N = (size_t)3 * T;
    int32_t *tok = calloc(N, sizeof *tok), *tgt = calloc(N, sizeof *tgt);
    int32_t *ptok = calloc(N, sizeof *ptok), *ptgt = calloc(N, sizeof *ptgt);
    int32_t *pos = calloc(N, sizeof *pos);
    uint64_t r = 12345;
    for (int d = 0, at = 0; d < 3; at += lens[d], d++)
        for (int i = 0; i < lens[d]; i++) {
            r = r * 6364136223846793005ull + 1442695040888963407ull;
            int32_t id = (int32_t)((r >> 33) % (uint64_t)V);
            ptok[(size_t)d * T + i] = tok[at + i] = id; /* padded: row d; packed: row 0 */
            pos[at + i] = i;
        }
    for (int d = 0, at = 0; d < 3; at += lens[d], d++)
        for (int i = 0; i < T; i++) {
            if (i < lens[d])
                tgt[at + i] = i + 1 < lens[d] ? tok[at + i + 1] : -1;
            ptgt[(size_t)d * T + i] = i + 1 < lens[d] ? ptok[(size_t)d * T + i + 1] : -1;
        }
    st_stage_options o = {.batch = 3, .seq = T, .slots = 1, .training = true};
    st_stage *g = NULL;
    assert_ok(st_stage_create(dev, desc, &o, &g));
    assert_ok(st_stage_init(g, 7));
    size_t n = st_stage_train_numel(g);
    float *grad[2] = {malloc(n * sizeof(float)), malloc(n * sizeof(float))};
    double sum[2];
    long count[2];
    for (int k = 0; k < 2; k++) { /* 0 packed in one sequence, 1 padded in three */
        int B = k == 0 ? 1 : 3;
        const int32_t *tk = k == 0 ? tok : ptok, *tg = k == 0 ? tgt : ptgt;
        assert_ok(st_stage_zero_grad(g));
        assert_ok(st_stage_positions(g, 0, k == 0 ? pos : NULL, B, T));
        assert_ok(st_stage_forward(g, 0, tk, tg, B, T));
        assert_ok(st_stage_loss(g, 0, tg, B, T, &sum[k], &count[k]));
        assert_ok(st_stage_backward(g, 0, B, T, 1.0f / (float)count[k]));
        assert_ok(st_tensor_read(st_stage_tensor(g, ST_STAGE_GRADS), 0, n, grad[k]));
    }
    assert_int_equal(count[0], count[1]);
    assert_int_equal(count[0], T - 3);
    assert_true(fabs(sum[0] - sum[1]) <= 1e-5 * fabs(sum[1]));
    assert_close(grad[0], grad[1], n, 1e-6, 1e-3);
    /* position 2 after 0: not a document's count */
    pos[1] = 0, pos[2] = 2;
    assert_int_equal(st_stage_positions(g, 0, pos, 1, T), ST_ERR_INVALID);
    assert_contains(st_last_error(), "row 2 has position 2 after 0");
    st_stage_destroy(g);
    free(grad[0]), free(grad[1]), free(tok), free(tgt), free(ptok), free(ptgt), free(pos);
}

#endif
