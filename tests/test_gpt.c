/*
 * test_gpt.c - the whole model on each device against the independent
 * PyTorch reference in tests/data/gpt_reference.bin (made by
 * tools/gpt_reference.py): logits, loss, every parameter gradient, then five
 * AdamW steps with global-norm clipping (losses, gradient norms and the final
 * weights). Also: KV-cache decoding gives the logits of the full forward,
 * and two runs give bitwise equal losses.
 *
 * Tolerances (fp32 on the device vs fp32 PyTorch; differences come from
 * summation order): logits and loss atol 1e-4, rtol 1e-4; gradients atol
 * 2e-5, rtol 1e-3; losses and norms over the steps rtol 1e-4; final weights
 * atol 1e-3, rtol 1e-3 per element
 * (see adamw_steps_match) with a mean |difference| under 2e-6.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "strata/stage.h"
#include "tests/common.h"
#include "tests/stage_steps.h"

static test_devices td;

typedef struct reference {
    int V, NPOS, C, L, NH, F, B, T, steps;
    float eps, lr, beta1, beta2, adam_eps, wd, clip;
    int32_t *tokens, *targets;
    float *params, *logits, loss, *grads, *step_losses, *step_norms, *final;
    size_t numel;
    unsigned char *data;
} reference;

static reference ref;
static st_model_desc *desc;

static void load_reference(void)
{
    const char *root = getenv("STRATA_SOURCE_ROOT");
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/data/gpt_reference.bin", root ? root : ".");
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "cannot open %s (set STRATA_SOURCE_ROOT)\n", path);
        exit(1);
    }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    ref.data = malloc((size_t)size);
    if (!ref.data || fread(ref.data, 1, (size_t)size, f) != (size_t)size) {
        fprintf(stderr, "cannot read %s\n", path);
        exit(1);
    }
    fclose(f);
    uint32_t version;
    memcpy(&version, ref.data + 8, 4);
    if (memcmp(ref.data, "STRATAGR", 8) != 0 || version != 1) {
        fprintf(stderr, "%s: not a version 1 Strata GPT reference file\n", path);
        exit(1);
    }
    unsigned char *p = ref.data + 12;
    int hdr[9];
    memcpy(hdr, p, sizeof hdr);
    p += sizeof hdr;
    ref.V = hdr[0], ref.NPOS = hdr[1], ref.C = hdr[2], ref.L = hdr[3], ref.NH = hdr[4];
    ref.F = hdr[5], ref.B = hdr[6], ref.T = hdr[7], ref.steps = hdr[8];
    float hp[7];
    memcpy(hp, p, sizeof hp);
    p += sizeof hp;
    ref.eps = hp[0], ref.lr = hp[1], ref.beta1 = hp[2], ref.beta2 = hp[3];
    ref.adam_eps = hp[4], ref.wd = hp[5], ref.clip = hp[6];
    size_t N = (size_t)ref.B * ref.T;
    st_model_config cfg = {.vocab_size = ref.V, .n_positions = ref.NPOS, .n_embd = ref.C,
                         .n_layer = ref.L, .n_head = ref.NH, .n_inner = ref.F,
                         .norm_eps = ref.eps};
    if (st_model_describe(&cfg, &desc) != ST_OK) {
        fprintf(stderr, "describe: %s\n", st_last_error());
        exit(1);
    }
    ref.numel = desc->param_numel;
    /* The file is aligned to 4 bytes throughout: point into it. */
    ref.tokens = (int32_t *)p, p += N * 4;
    ref.targets = (int32_t *)p, p += N * 4;
    ref.params = (float *)p, p += ref.numel * 4;
    ref.logits = (float *)p, p += N * ref.V * 4;
    memcpy(&ref.loss, p, 4), p += 4;
    ref.grads = (float *)p, p += ref.numel * 4;
    ref.step_losses = (float *)p, p += (size_t)ref.steps * 4;
    ref.step_norms = (float *)p, p += (size_t)ref.steps * 4;
    ref.final = (float *)p, p += ref.numel * 4;
    if (p != ref.data + size) {
        fprintf(stderr, "%s: size %ld does not match its header\n", path, size);
        exit(1);
    }
}

static st_stage *make_model(st_device *dev, int kv)
{
    st_stage *g = NULL;
    st_stage_options o = {.batch = ref.B, .seq = ref.T, .slots = 1, .training = true, .kv_seq = kv};
    assert_ok(st_stage_create(dev, desc, &o, &g));
    assert_int_equal(st_stage_param_numel(g), ref.numel);
    for (size_t i = 0; i < st_stage_n_params(g); i++)
        assert_ok(st_stage_write(g, ST_STAGE_PARAMS, i, ref.params + st_stage_param_at(g, i)->offset));
    return g;
}

static float *read_all(st_stage *g, st_stage_buf which)
{
    float *x = malloc(ref.numel * sizeof *x);
    assert_non_null(x);
    for (size_t i = 0; i < st_stage_n_params(g); i++)
        assert_ok(st_stage_read(g, which, i, x + st_stage_param_at(g, i)->offset));
    return x;
}

static void forward_and_gradients_match(void **state)
{
    (void)state;
    size_t N = (size_t)ref.B * ref.T;
    for (size_t d = 0; d < td.n; d++) {
        st_stage *g = make_model(td.dev[d], 0);
        float *logits = malloc(N * ref.V * sizeof *logits);
        assert_ok(st_stage_forward(g, 0, ref.tokens, NULL, ref.B, ref.T));
        assert_ok(st_stage_output_read(g, 0, ref.B, ref.T, logits));
        assert_close(logits, ref.logits, N * ref.V, 1e-4, 1e-4);

        double sum = 0;
        long count = 0;
        assert_ok(st_stage_zero_grad(g));
        assert_ok(st_stage_forward(g, 0, ref.tokens, ref.targets, ref.B, ref.T));
        assert_ok(st_stage_loss(g, 0, ref.targets, ref.B, ref.T, &sum, &count));
        assert_int_equal(count, (long)N - 4);
        float loss = (float)(sum / count);
        assert_close(&loss, &ref.loss, 1, 1e-4, 1e-4);
        assert_ok(st_stage_backward(g, 0, ref.B, ref.T, 1.0f / (float)count));
        float *grads = read_all(g, ST_STAGE_GRADS);
        for (size_t i = 0; i < st_stage_n_params(g); i++) {
            const st_stage_param *p = st_stage_param_at(g, i);
            if (!st_compare_f32(grads + p->offset, ref.grads + p->offset, p->desc->numel, 2e-5,
                                1e-3, NULL)) {
                char buf[2048];
                fail_msg("gradient of %s on %s: %s", p->desc->name,
                         st_device_label(td.dev[d]),
                         st_compare_describe(grads + p->offset, ref.grads + p->offset,
                                             p->desc->numel, 2e-5, 1e-3, 5, buf, sizeof buf));
            }
        }
        free(grads);
        free(logits);
        st_stage_destroy(g);
    }
}

/* Five AdamW steps with clipping, as the reference script does. */
static void train_steps(st_stage *g, float *losses, float *norms)
{
    st_adamw_hparams hp = {ref.lr, ref.beta1, ref.beta2, ref.adam_eps, ref.wd};
    stage_train_steps(g, &hp, ref.clip, ref.tokens, ref.targets, ref.B, ref.T, ref.steps, losses,
                      norms);
}

static void adamw_steps_match(void **state)
{
    (void)state;
    for (size_t d = 0; d < td.n; d++) {
        st_stage *g = make_model(td.dev[d], 0);
        assert_ok(st_stage_init(g, 0)); /* zeroes the moments; weights are rewritten below */
        for (size_t i = 0; i < st_stage_n_params(g); i++)
            assert_ok(st_stage_write(g, ST_STAGE_PARAMS, i, ref.params + st_stage_param_at(g, i)->offset));
        float losses[16], norms[16], again[16], norms2[16];
        train_steps(g, losses, norms);
        assert_close(losses, ref.step_losses, (size_t)ref.steps, 0, 1e-4);
        assert_close(norms, ref.step_norms, (size_t)ref.steps, 0, 1e-4);
        float *w = read_all(g, ST_STAGE_PARAMS);
        /* The key bias's true gradient is zero (q.b_k is the same for every
         * position of a softmax row), so both sides' gradients are rounding
         * noise that Adam scales up to steps of +-lr: leave it out. */
        for (size_t i = 0; i < st_stage_n_params(g); i++) {
            const st_stage_param *p = st_stage_param_at(g, i);
            if (strstr(p->desc->name, "attn.c_attn.bias")) {
                memcpy(w + p->offset + ref.C, ref.final + p->offset + ref.C, ref.C * sizeof *w);
            }
        }
        /* Elsewhere, a weight whose gradient is near zero can also get a
         * noise-sized Adam step: allow lr/10 per element, and hold the mean
         * difference to rounding size. */
        assert_close(w, ref.final, ref.numel, 1e-3, 1e-3);
        double mean_diff = 0;
        for (size_t i = 0; i < ref.numel; i++)
            mean_diff += fabs((double)w[i] - ref.final[i]);
        mean_diff /= (double)ref.numel;
        print_message("final weights: mean |diff| %.3g\n", mean_diff);
        assert_true(mean_diff < 2e-6);
        free(w);
        st_stage_destroy(g);

        /* The same again from the same start: bitwise the same losses. */
        g = make_model(td.dev[d], 0);
        assert_ok(st_stage_init(g, 0));
        for (size_t i = 0; i < st_stage_n_params(g); i++)
            assert_ok(st_stage_write(g, ST_STAGE_PARAMS, i, ref.params + st_stage_param_at(g, i)->offset));
        train_steps(g, again, norms2);
        assert_memory_equal(losses, again, (size_t)ref.steps * sizeof *losses);
        assert_memory_equal(norms, norms2, (size_t)ref.steps * sizeof *norms);
        st_stage_destroy(g);
    }
}

static void kv_decoding_matches_full_forward(void **state)
{
    (void)state;
    size_t N = (size_t)ref.B * ref.T;
    for (size_t d = 0; d < td.n; d++) {
        st_stage *g = make_model(td.dev[d], ref.T);
        float *logits = malloc(N * ref.V * sizeof *logits), *step = malloc(ref.V * sizeof *step);
        assert_ok(st_stage_forward(g, 0, ref.tokens, NULL, ref.B, ref.T));
        assert_ok(st_stage_output_read(g, 0, ref.B, ref.T, logits));
        for (int b = 0; b < ref.B; b++)
            for (int t = 0; t < ref.T; t++) {
                assert_ok(st_stage_decode(g, ref.tokens[b * ref.T + t], t, step));
                assert_close(step, logits + ((size_t)b * ref.T + t) * ref.V, (size_t)ref.V, 1e-4,
                             1e-4);
            }
        assert_int_equal(st_stage_decode(g, 1, ref.T, step), ST_ERR_INVALID);
        assert_contains(st_last_error(), "past the KV cache");
        assert_int_equal(st_stage_decode(g, ref.V, 0, step), ST_ERR_INVALID);
        free(logits);
        free(step);
        st_stage_destroy(g);
    }
}

/* A prompt read in passes of several tokens (prefill) gives the logits that
 * feeding it token by token gives (within 1e-5: one product over the rows
 * against one per row), and the cache it leaves decodes the next token
 * alike: chunks 1+4+rest and the whole prompt at once. */
static void prefill_matches_token_by_token(void **state)
{
    (void)state;
    int T = ref.T;
    for (size_t d = 0; d < td.n; d++) {
        st_stage *g = NULL;
        st_stage_options o = {.kv_seq = T, .prefill = T};
        assert_ok(st_stage_create(td.dev[d], desc, &o, &g));
        assert_int_equal(st_stage_prefill_max(g), T);
        for (size_t i = 0; i < st_stage_n_params(g); i++)
            assert_ok(st_stage_write(g, ST_STAGE_PARAMS, i,
                                     ref.params + st_stage_param_at(g, i)->offset));
        float *want = malloc((size_t)T * ref.V * sizeof *want), *got = malloc(ref.V * sizeof *got);
        for (int t = 0; t < T; t++)
            assert_ok(st_stage_decode(g, ref.tokens[t], t, want + (size_t)t * ref.V));
        static const int cuts[][3] = {{1, 4, 0}, {0, 0, 0}};
        for (size_t c = 0; c < 2; c++) {
            int pos = 0;
            for (int k = 0; k < 3 && pos < T; k++) {
                int n = cuts[c][k] ? cuts[c][k] : T - pos;
                n = n < T - pos ? n : T - pos;
                assert_ok(st_stage_prefill_seq(g, 0, ref.tokens + pos, n, pos, got));
                pos += n;
                assert_close(got, want + (size_t)(pos - 1) * ref.V, (size_t)ref.V, 1e-5, 1e-5);
            }
            assert_int_equal(pos, T);
        }
        /* the cache the whole-prompt pass left: the last token again, alone */
        assert_ok(st_stage_decode(g, ref.tokens[T - 1], T - 1, got));
        assert_close(got, want + (size_t)(T - 1) * ref.V, (size_t)ref.V, 1e-5, 1e-5);
        assert_int_equal(st_stage_prefill_seq(g, 0, ref.tokens, T, 1, got), ST_ERR_INVALID);
        assert_contains(st_last_error(), "past the KV cache");
        assert_int_equal(st_stage_prefill_seq(g, 0, ref.tokens, T + 1, 0, got), ST_ERR_INVALID);
        st_error_clear();
        free(want);
        free(got);
        st_stage_destroy(g);
    }
}

static void init_is_deterministic_and_gpt2_like(void **state)
{
    (void)state;
    st_stage *g = NULL, *h = NULL;
    st_stage_options o = {.batch = 1, .seq = 4, .training = true};
    assert_ok(st_stage_create(td.dev[0], desc, &o, &g));
    assert_ok(st_stage_create(td.dev[0], desc, &o, &h));
    assert_ok(st_stage_init(g, 7));
    assert_ok(st_stage_init(h, 7));
    float *a = read_all(g, ST_STAGE_PARAMS), *b = read_all(h, ST_STAGE_PARAMS);
    assert_memory_equal(a, b, ref.numel * sizeof *a);
    long wte = st_stage_param_find(g, "wte.weight"), ln = st_stage_param_find(g, "h.1.ln_2.weight");
    assert_true(wte >= 0 && ln >= 0);
    const st_stage_param *p = st_stage_param_at(g, (size_t)wte);
    double s2 = 0;
    for (size_t i = 0; i < p->desc->numel; i++)
        s2 += (double)a[p->offset + i] * a[p->offset + i];
    double std = sqrt(s2 / p->desc->numel);
    assert_true(std > 0.018 && std < 0.022);
    assert_true(a[st_stage_param_at(g, (size_t)ln)->offset] == 1.0f);
    assert_ok(st_stage_init(h, 8));
    free(b);
    b = read_all(h, ST_STAGE_PARAMS);
    assert_true(memcmp(a, b, ref.numel * sizeof *a) != 0);
    free(a);
    free(b);
    st_stage_destroy(g);
    st_stage_destroy(h);
}

static void bad_requests_are_refused(void **state)
{
    (void)state;
    st_stage *g = NULL;
    st_stage_options o = {.batch = 2, .seq = ref.NPOS + 1, .training = true};
    assert_int_equal(st_stage_create(td.dev[0], desc, &o, &g), ST_ERR_INVALID);
    assert_contains(st_last_error(), "positions");
    o.seq = 4;
    o.first_layer = 3;
    o.end_layer = 2;
    assert_int_equal(st_stage_create(td.dev[0], desc, &o, &g), ST_ERR_INVALID);
    o.first_layer = o.end_layer = 0;
    assert_ok(st_stage_create(td.dev[0], desc, &o, &g));
    int32_t tok[8] = {0, 1, 2, ref.V, 0, 0, 0, 0};
    assert_int_equal(st_stage_forward(g, 0, tok, NULL, 2, 4), ST_ERR_INVALID);
    assert_contains(st_last_error(), "outside the vocabulary");
    assert_int_equal(st_stage_forward(g, 0, tok, NULL, 3, 4), ST_ERR_INVALID);
    assert_int_equal(st_stage_forward(g, 1, tok, NULL, 2, 4), ST_ERR_INVALID);
    st_stage_destroy(g);
}


/* LoRA on GPT-2's Conv1D weights W [in, out] (y = x W + b): the model with
 * adapters equals the model with W' = W + s (B A)^T, whose gradient dW'
 * gives dB = s dW'^T A^T and dA = s B^T dW'^T; the loss the same, and
 * nothing frozen has a gradient. */
static float *param_of(st_stage *g, st_stage_buf which, const char *name)
{
    long i = st_stage_param_find(g, name);
    if (i < 0)
        fail_msg("no parameter '%s'", name);
    float *x = malloc(st_stage_param_at(g, (size_t)i)->desc->numel * sizeof *x);
    assert_ok(st_stage_read(g, which, (size_t)i, x));
    return x;
}

static void lora_gradients_match_merged(void **state)
{
    (void)state;
    st_model_config lc = desc->cfg;
    lc.lora = (st_lora){.rank = 4, .alpha = 8.0f};
    assert_ok(st_lora_targets_parse(lc.family, "all", &lc.lora.targets));
    st_model_desc *ld = NULL;
    assert_ok(st_model_describe(&lc, &ld));
    float scale = lc.lora.alpha / (float)lc.lora.rank;
    static const char *const mods[4] = {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"};
    for (size_t d = 0; d < td.n; d++) {
        st_stage *mg = make_model(td.dev[d], 0), *lg = NULL;
        st_stage_options o = {.batch = ref.B, .seq = ref.T, .slots = 1, .training = true};
        assert_ok(st_stage_create(td.dev[d], ld, &o, &lg));
        st_stage_sizes z;
        assert_ok(st_stage_sizes_of(ld, &o, &z));
        assert_int_equal(st_stage_bytes(lg), z.bytes);
        assert_ok(st_stage_init(lg, 0));
        for (size_t i = 0; i < st_stage_n_params(lg); i++) {
            const st_param_desc *p = st_stage_param_at(lg, i)->desc;
            float *x = malloc(p->numel * sizeof *x);
            if (p->adapter) {
                st_fill_random(x, p->numel, 500 + i);
                for (size_t e = 0; e < p->numel; e++)
                    x[e] *= 0.05f;
            } else {
                free(x);
                x = param_of(mg, ST_STAGE_PARAMS, p->name);
            }
            assert_ok(st_stage_write(lg, ST_STAGE_PARAMS, i, x));
            free(x);
        }
        char an[96], bn[96], wn[96];
        size_t R = (size_t)lc.lora.rank;
        for (int l = 0; l < lc.n_layer; l++)
            for (int t = 0; t < 4; t++) {
                snprintf(an, sizeof an, "h.%d.%s.lora_A.weight", l, mods[t]);
                snprintf(bn, sizeof bn, "h.%d.%s.lora_B.weight", l, mods[t]);
                snprintf(wn, sizeof wn, "h.%d.%s.weight", l, mods[t]);
                const st_param_desc *wd = st_model_find_param(desc, wn, NULL);
                size_t in = wd->shape[0], out = wd->shape[1];
                float *A = param_of(lg, ST_STAGE_PARAMS, an), *Bm = param_of(lg, ST_STAGE_PARAMS, bn);
                float *W = param_of(mg, ST_STAGE_PARAMS, wn);
                for (size_t i = 0; i < in; i++)
                    for (size_t c = 0; c < out; c++) {
                        double acc = 0;
                        for (size_t k = 0; k < R; k++)
                            acc += (double)Bm[c * R + k] * A[k * in + i];
                        W[i * out + c] = (float)((double)W[i * out + c] + scale * acc);
                    }
                assert_ok(st_stage_write(mg, ST_STAGE_PARAMS, (size_t)st_stage_param_find(mg, wn), W));
                free(A);
                free(Bm);
                free(W);
            }
        double sl = 0, sm = 0;
        long cl = 0, cm = 0;
        assert_ok(st_stage_zero_grad(lg));
        assert_ok(st_stage_zero_grad(mg));
        assert_ok(st_stage_forward(lg, 0, ref.tokens, ref.targets, ref.B, ref.T));
        assert_ok(st_stage_forward(mg, 0, ref.tokens, ref.targets, ref.B, ref.T));
        assert_ok(st_stage_loss(lg, 0, ref.targets, ref.B, ref.T, &sl, &cl));
        assert_ok(st_stage_loss(mg, 0, ref.targets, ref.B, ref.T, &sm, &cm));
        float fl = (float)(sl / cl), fm = (float)(sm / cm);
        assert_close(&fl, &fm, 1, 1e-5, 1e-5);
        assert_ok(st_stage_backward(lg, 0, ref.B, ref.T, 1.0f / (float)cl));
        assert_ok(st_stage_backward(mg, 0, ref.B, ref.T, 1.0f / (float)cm));
        for (int l = 0; l < lc.n_layer; l++)
            for (int t = 0; t < 4; t++) {
                snprintf(an, sizeof an, "h.%d.%s.lora_A.weight", l, mods[t]);
                snprintf(bn, sizeof bn, "h.%d.%s.lora_B.weight", l, mods[t]);
                snprintf(wn, sizeof wn, "h.%d.%s.weight", l, mods[t]);
                const st_param_desc *wd = st_model_find_param(desc, wn, NULL);
                size_t in = wd->shape[0], out = wd->shape[1];
                float *A = param_of(lg, ST_STAGE_PARAMS, an), *Bm = param_of(lg, ST_STAGE_PARAMS, bn);
                float *dA = param_of(lg, ST_STAGE_GRADS, an), *dB = param_of(lg, ST_STAGE_GRADS, bn);
                float *dW = param_of(mg, ST_STAGE_GRADS, wn);
                float *wa = malloc(R * in * sizeof *wa), *wb = malloc(out * R * sizeof *wb);
                for (size_t k = 0; k < R; k++)
                    for (size_t i = 0; i < in; i++) {
                        double acc = 0;
                        for (size_t c = 0; c < out; c++)
                            acc += (double)Bm[c * R + k] * dW[i * out + c];
                        wa[k * in + i] = (float)(scale * acc);
                    }
                for (size_t c = 0; c < out; c++)
                    for (size_t k = 0; k < R; k++) {
                        double acc = 0;
                        for (size_t i = 0; i < in; i++)
                            acc += (double)dW[i * out + c] * A[k * in + i];
                        wb[c * R + k] = (float)(scale * acc);
                    }
                char buf[2048];
                if (!st_compare_f32(dA, wa, R * in, 2e-5, 2e-3, NULL))
                    fail_msg("LoRA gradient of %s: %s", an,
                             st_compare_describe(dA, wa, R * in, 2e-5, 2e-3, 5, buf, sizeof buf));
                if (!st_compare_f32(dB, wb, out * R, 2e-5, 2e-3, NULL))
                    fail_msg("LoRA gradient of %s: %s", bn,
                             st_compare_describe(dB, wb, out * R, 2e-5, 2e-3, 5, buf, sizeof buf));
                free(A); free(Bm); free(dA); free(dB); free(dW); free(wa); free(wb);
            }
        float dummy[1];
        assert_int_not_equal(st_stage_read(lg, ST_STAGE_GRADS,
                                           (size_t)st_stage_param_find(lg, "wte.weight"), dummy),
                             ST_OK);
        st_error_clear();
        st_stage_destroy(lg);
        st_stage_destroy(mg);
    }
    st_model_desc_destroy(ld);
}

/* A sequence of packed documents gives what they give as sequences of their own. */
static void packed_documents_equal_padded(void **state)
{
    (void)state;
    for (size_t d = 0; d < td.n; d++)
        stage_packed_equals_padded(td.dev[d], desc, ref.T);
}

/* Weights held in 16 bits compute what their float copies compute. */
static void weights_in_16_bits_match(void **state)
{
    (void)state;
    for (size_t d = 0; d < td.n; d++)
        stage_16bit_weights_match(td.dev[d], desc, ref.T);
}

static int group_teardown(void **state)
{
    (void)state;
    test_devices_close(&td);
    st_model_desc_destroy(desc);
    free(ref.data);
    return 0;
}

int main(void)
{
    load_reference();
    test_devices_open_or_skip(&td);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(forward_and_gradients_match),
        cmocka_unit_test(adamw_steps_match),
        cmocka_unit_test(kv_decoding_matches_full_forward),
        cmocka_unit_test(prefill_matches_token_by_token),
        cmocka_unit_test(init_is_deterministic_and_gpt2_like),
        cmocka_unit_test(packed_documents_equal_padded),
        cmocka_unit_test(weights_in_16_bits_match),
        cmocka_unit_test(bad_requests_are_refused),
        cmocka_unit_test(lora_gradients_match_merged),
    };
    return cmocka_run_group_tests(tests, NULL, group_teardown);
}
