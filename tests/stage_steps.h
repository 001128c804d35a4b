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

/* Every parameter of g0 rounded to dt and written back (the values a
 * 16-bit stage holds exactly), and the same values into g1. */
static inline void stage_round_weights(st_stage *g0, st_stage *g1, st_dtype dt)
{
    for (size_t i = 0; i < st_stage_n_params(g0); i++) {
        size_t n = st_stage_param_at(g0, i)->desc->numel;
        float *x = malloc(n * sizeof *x);
        uint16_t *h = malloc(n * sizeof *h);
        assert_ok(st_stage_read(g0, ST_STAGE_PARAMS, i, x));
        st_f32_to_16(dt, x, h, n);
        st_16_to_f32(dt, h, x, n);
        assert_ok(st_stage_write(g0, ST_STAGE_PARAMS, i, x));
        assert_string_equal(st_stage_param_at(g1, i)->desc->name,
                            st_stage_param_at(g0, i)->desc->name);
        assert_ok(st_stage_write(g1, ST_STAGE_PARAMS, i, x));
        float *y = malloc(n * sizeof *y); /* read back as written */
        assert_ok(st_stage_read(g1, ST_STAGE_PARAMS, i, y));
        assert_memory_equal(x, y, n * sizeof *x);
        free(x), free(h), free(y);
    }
}

/* Weights stored in 16 bits (st_model_config.weights, BF16 and F16):
 * holding values a 16-bit type represents, an inference stage gives the
 * logits of the float stage holding the same values, a whole sequence at
 * once (products through the widening scratch), and close logits token by
 * token from its KV cache (products reading the 16-bit weights; keys and
 * values stored in the 16-bit type); it holds the 2-D weights and the KV
 * cache in two bytes each, to the byte of st_stage_sizes_of. A LoRA
 * stage over a 16-bit frozen base gives the adapters the gradients of one
 * over a float base. */
static inline void stage_16bit_weights_match(st_device *dev, const st_model_desc *desc, int T)
{
    const st_dtype types[2] = {ST_BF16, ST_F16};
    int V = desc->cfg.vocab_size;
    size_t N = (size_t)2 * T;
    int32_t *tok = malloc(N * sizeof *tok), *tgt = malloc(N * sizeof *tgt);
    for (size_t i = 0; i < N; i++) {
        tok[i] = (int32_t)((i * 7 + 3) % (size_t)V);
        tgt[i] = (int32_t)((i * 5 + 1) % (size_t)V);
    }
    float *l0 = malloc(N * V * sizeof *l0), *l1 = malloc(N * V * sizeof *l1);
    for (int k = 0; k < 2; k++) {
        st_model_config c = desc->cfg;
        c.weights = types[k];
        st_model_desc *d16 = NULL;
        assert_ok(st_model_describe(&c, &d16));
        st_stage_options o = {.batch = 2, .seq = T, .slots = 1, .kv_seq = T};
        st_stage *g0 = NULL, *g1 = NULL;
        assert_ok(st_stage_create(dev, desc, &o, &g0));
        assert_ok(st_stage_create(dev, d16, &o, &g1));
        st_stage_sizes z0, z1;
        assert_ok(st_stage_sizes_of(desc, &o, &z0));
        assert_ok(st_stage_sizes_of(d16, &o, &z1));
        assert_int_equal(st_stage_bytes(g1), z1.bytes);
        assert_true(z1.half_numel > 0 && z0.half_numel == 0);
        assert_true(z1.kv_half_numel > 0 && z0.kv_half_numel == 0);
        assert_int_equal(z0.decode_floats - z1.decode_floats, z1.kv_half_numel);
        assert_int_equal(z0.bytes - z1.bytes, 2 * (uint64_t)z1.half_numel +
                                                  2 * (uint64_t)z1.kv_half_numel -
                                                  4 * (uint64_t)z1.unpack_floats);
        assert_ok(st_stage_init(g0, 11));
        stage_round_weights(g0, g1, types[k]);
        assert_ok(st_stage_forward(g0, 0, tok, NULL, 2, T));
        assert_ok(st_stage_output_read(g0, 0, 2, T, l0));
        assert_ok(st_stage_forward(g1, 0, tok, NULL, 2, T));
        assert_ok(st_stage_output_read(g1, 0, 2, T, l1));
        assert_close(l1, l0, N * V, 1e-6, 1e-5);
        /* decoding: the KV cache holds keys and values in the 16-bit
         * type too (rounded: close, not equal; test_llama_layers checks
         * the kernels exactly) */
        for (int t = 0; t < 4; t++) {
            assert_ok(st_stage_decode(g0, tok[t], t, l0));
            assert_ok(st_stage_decode(g1, tok[t], t, l1));
            assert_close(l1, l0, (size_t)V, 1e-2, 1e-2);
        }
        st_stage_destroy(g0);
        st_stage_destroy(g1);
        /* LoRA over the frozen base: the adapters' gradients */
        st_model_config lc = desc->cfg, lc16;
        lc.lora.rank = 2;
        lc.lora.alpha = 4;
        assert_ok(st_lora_targets_parse(lc.family, "all", &lc.lora.targets));
        lc16 = lc;
        lc16.weights = types[k];
        st_model_desc *ld = NULL, *ld16 = NULL;
        assert_ok(st_model_describe(&lc, &ld));
        assert_ok(st_model_describe(&lc16, &ld16));
        st_stage_options ot = {.batch = 2, .seq = T, .slots = 1, .training = true};
        assert_ok(st_stage_create(dev, ld, &ot, &g0));
        assert_ok(st_stage_create(dev, ld16, &ot, &g1));
        assert_ok(st_stage_sizes_of(ld16, &ot, &z1));
        assert_int_equal(st_stage_bytes(g1), z1.bytes);
        assert_true(z1.half_numel > 0);
        assert_ok(st_stage_init(g0, 12));
        for (size_t i = 0; i < st_stage_n_params(g0); i++) /* B of every adapter not zero */
            if (st_stage_param_at(g0, i)->desc->adapter) {
                size_t n = st_stage_param_at(g0, i)->desc->numel;
                float *x = malloc(n * sizeof *x);
                for (size_t j = 0; j < n; j++)
                    x[j] = 0.01f * (float)((int)(j % 7) - 3);
                assert_ok(st_stage_write(g0, ST_STAGE_PARAMS, i, x));
                free(x);
            }
        stage_round_weights(g0, g1, types[k]);
        size_t n = st_stage_train_numel(g0);
        assert_int_equal(st_stage_train_numel(g1), n);
        float *d0 = malloc(n * sizeof *d0), *d1 = malloc(n * sizeof *d1);
        st_stage *gs[2] = {g0, g1};
        float *ds[2] = {d0, d1};
        for (int j = 0; j < 2; j++) {
            double sum;
            long count;
            assert_ok(st_stage_zero_grad(gs[j]));
            assert_ok(st_stage_forward(gs[j], 0, tok, tgt, 2, T));
            assert_ok(st_stage_loss(gs[j], 0, tgt, 2, T, &sum, &count));
            assert_ok(st_stage_backward(gs[j], 0, 2, T, 1.0f / (float)count));
            assert_ok(st_tensor_read(st_stage_tensor(gs[j], ST_STAGE_GRADS), 0, n, ds[j]));
        }
        assert_close(d1, d0, n, 1e-6, 1e-4);
        free(d0), free(d1);
        st_stage_destroy(g0);
        st_stage_destroy(g1);
        st_model_desc_destroy(d16);
        st_model_desc_destroy(ld);
        st_model_desc_destroy(ld16);
    }
    free(tok), free(tgt), free(l0), free(l1);
}

#endif
