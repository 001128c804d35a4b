/*
 * test_llama.c - the Llama family's whole model on each device against
 * Hugging Face transformers (tests/data/llama_reference.bin: LlamaForCausalLM
 * with grouped-query attention, an untied head and Llama 3's rotary scaling;
 * tests/data/qwen2_reference.bin: Qwen2ForCausalLM with q/k/v biases and a
 * tied head; made by tools/llama_reference.py): the config.json transformers
 * wrote parses, then logits, loss, every parameter gradient, five AdamW steps
 * with global-norm clipping (losses, gradient norms, final weights), and
 * decoding with the KV cache against transformers' own cached decoding.
 *
 * Tolerances as test_gpt.c's (fp32 against fp32; differences come from
 * summation order): logits and loss atol 1e-4, rtol 1e-4; gradients atol
 * 2e-5, rtol 1e-3; losses and norms over the steps rtol 1e-4; final weights
 * atol 1e-3, rtol 1e-3 per element with a mean |difference| under 2e-6;
 * decoded logits atol 1e-4, rtol 1e-4.
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

typedef struct ref_param {
    char name[64];
    size_t numel;
    float *init, *grad, *final;
} ref_param;

typedef struct reference {
    const char *file;
    st_model_config cfg;
    int V, B, T, steps;
    float lr, beta1, beta2, adam_eps, wd, clip;
    int32_t *tokens, *targets;
    size_t n_params, numel;
    ref_param *params;
    float *logits, loss, *step_losses, *step_norms, *decoded;
    unsigned char *data;
} reference;

static reference ref;
static st_model_desc *desc;

static uint32_t u32(unsigned char **p)
{
    uint32_t v;
    memcpy(&v, *p, 4);
    *p += 4;
    return v;
}

static int load_reference(const char *file)
{
    memset(&ref, 0, sizeof ref);
    ref.file = file;
    const char *root = getenv("STRATA_SOURCE_ROOT");
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/data/%s", root ? root : ".", file);
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "cannot open %s (set STRATA_SOURCE_ROOT)\n", path);
        return -1;
    }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    ref.data = malloc((size_t)size + 1);
    if (!ref.data || fread(ref.data, 1, (size_t)size, f) != (size_t)size) {
        fprintf(stderr, "cannot read %s\n", path);
        fclose(f);
        return -1;
    }
    fclose(f);
    unsigned char *p = ref.data + 8;
    if (memcmp(ref.data, "STRATALR", 8) != 0 || u32(&p) != 1) {
        fprintf(stderr, "%s: not a version 1 Strata Llama reference file\n", path);
        return -1;
    }
    uint32_t n = u32(&p);
    char *text = malloc(n + 1);
    memcpy(text, p, n);
    text[n] = '\0';
    p += n;
    st_status s = st_model_config_parse(text, file, &ref.cfg);
    free(text);
    if (s != ST_OK || st_model_describe(&ref.cfg, &desc) != ST_OK) {
        fprintf(stderr, "the config transformers wrote: %s\n", st_last_error());
        return -1;
    }
    /* the text is not 4-byte aligned: copy the rest */
    ref.B = (int)u32(&p), ref.T = (int)u32(&p), ref.steps = (int)u32(&p);
    float hp[6];
    memcpy(hp, p, sizeof hp);
    p += sizeof hp;
    ref.lr = hp[0], ref.beta1 = hp[1], ref.beta2 = hp[2], ref.adam_eps = hp[3], ref.wd = hp[4];
    ref.clip = hp[5];
    ref.V = ref.cfg.vocab_size;
    size_t N = (size_t)ref.B * ref.T;
#define TAKE(dst, count)                                                       \
    do {                                                                       \
        dst = malloc((count) * 4);                                             \
        memcpy(dst, p, (count) * 4);                                           \
        p += (count) * 4;                                                      \
    } while (0)
    TAKE(ref.tokens, N);
    TAKE(ref.targets, N);
    ref.n_params = u32(&p);
    ref.params = calloc(ref.n_params, sizeof *ref.params);
    for (size_t i = 0; i < ref.n_params; i++) {
        ref_param *rp = &ref.params[i];
        uint32_t len = u32(&p);
        memcpy(rp->name, p, len < 63 ? len : 63);
        p += len;
        uint32_t ndim = u32(&p);
        rp->numel = 1;
        for (uint32_t d = 0; d < ndim; d++)
            rp->numel *= u32(&p);
        TAKE(rp->init, rp->numel);
        ref.numel += rp->numel;
    }
    TAKE(ref.logits, N * ref.V);
    memcpy(&ref.loss, p, 4), p += 4;
    for (size_t i = 0; i < ref.n_params; i++)
        TAKE(ref.params[i].grad, ref.params[i].numel);
    TAKE(ref.step_losses, (size_t)ref.steps);
    TAKE(ref.step_norms, (size_t)ref.steps);
    for (size_t i = 0; i < ref.n_params; i++)
        TAKE(ref.params[i].final, ref.params[i].numel);
    TAKE(ref.decoded, (size_t)ref.T * ref.V);
#undef TAKE
    if (p != ref.data + size) {
        fprintf(stderr, "%s: size %ld does not match its contents\n", path, size);
        return -1;
    }
    if (ref.numel != desc->param_numel) {
        fprintf(stderr, "%s: %zu parameters, the description has %zu\n", path, ref.numel,
                desc->param_numel);
        return -1;
    }
    return 0;
}

static const ref_param *ref_find(const char *name)
{
    for (size_t i = 0; i < ref.n_params; i++)
        if (strcmp(ref.params[i].name, name) == 0)
            return &ref.params[i];
    fail_msg("%s: no parameter '%s'", ref.file, name);
    return NULL;
}

/* Writes which of the reference's values (0 initial, 2 final) into the stage, by name. */
static void put(st_stage *g, int which)
{
    for (size_t i = 0; i < st_stage_n_params(g); i++) {
        const ref_param *rp = ref_find(st_stage_param_at(g, i)->desc->name);
        assert_int_equal(rp->numel, st_stage_param_at(g, i)->desc->numel);
        assert_ok(st_stage_write(g, ST_STAGE_PARAMS, i, which == 0 ? rp->init : rp->final));
    }
}

static st_stage *make_model(st_device *dev, int kv)
{
    st_stage *g = NULL;
    st_stage_options o = {.batch = ref.B, .seq = ref.T, .slots = 1, .training = true,
                          .kv_seq = kv};
    assert_ok(st_stage_create(dev, desc, &o, &g));
    assert_int_equal(st_stage_param_numel(g), ref.numel);
    assert_ok(st_stage_init(g, 0)); /* zeroes the moments; the weights are the reference's */
    put(g, 0);
    return g;
}

/* Compares a buffer of the stage with the reference's, parameter by parameter. */
static void compare(st_stage *g, st_stage_buf which, const char *what, double atol, double rtol)
{
    for (size_t i = 0; i < st_stage_n_params(g); i++) {
        const st_stage_param *p = st_stage_param_at(g, i);
        const ref_param *rp = ref_find(p->desc->name);
        float *x = malloc(p->desc->numel * sizeof *x);
        assert_ok(st_stage_read(g, which, i, x));
        const float *want = which == ST_STAGE_GRADS ? rp->grad : rp->final;
        if (!st_compare_f32(x, want, p->desc->numel, atol, rtol, NULL)) {
            char buf[2048];
            fail_msg("%s: %s of %s on %s: %s", ref.file, what, p->desc->name,
                     st_device_label(st_stage_device(g)),
                     st_compare_describe(x, want, p->desc->numel, atol, rtol, 5, buf,
                                         sizeof buf));
        }
        free(x);
    }
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
        compare(g, ST_STAGE_GRADS, "gradient", 2e-5, 1e-3);
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
        float losses[16], norms[16], again[16], norms2[16];
        train_steps(g, losses, norms);
        assert_close(losses, ref.step_losses, (size_t)ref.steps, 0, 1e-4);
        assert_close(norms, ref.step_norms, (size_t)ref.steps, 0, 1e-4);
        compare(g, ST_STAGE_PARAMS, "final weights", 1e-3, 1e-3);
        double mean_diff = 0;
        for (size_t i = 0; i < st_stage_n_params(g); i++) {
            const st_stage_param *p = st_stage_param_at(g, i);
            const ref_param *rp = ref_find(p->desc->name);
            float *x = malloc(p->desc->numel * sizeof *x);
            assert_ok(st_stage_read(g, ST_STAGE_PARAMS, i, x));
            for (size_t e = 0; e < p->desc->numel; e++)
                mean_diff += fabs((double)x[e] - rp->final[e]);
            free(x);
        }
        mean_diff /= (double)ref.numel;
        print_message("%s: final weights: mean |diff| %.3g\n", ref.file, mean_diff);
        assert_true(mean_diff < 2e-6);
        st_stage_destroy(g);
        /* The same again from the same start: bitwise the same losses. */
        g = make_model(td.dev[d], 0);
        train_steps(g, again, norms2);
        assert_memory_equal(losses, again, (size_t)ref.steps * sizeof *losses);
        assert_memory_equal(norms, norms2, (size_t)ref.steps * sizeof *norms);
        st_stage_destroy(g);
    }
}

/* Sequence 0 token by token through the KV cache, with the final weights:
 * transformers' cached decoding, and the stage's own full forward. */
static void kv_decoding_matches_transformers(void **state)
{
    (void)state;
    size_t N = (size_t)ref.B * ref.T;
    for (size_t d = 0; d < td.n; d++) {
        st_stage *g = make_model(td.dev[d], ref.T);
        put(g, 2);
        float *logits = malloc(N * ref.V * sizeof *logits), *step = malloc(ref.V * sizeof *step);
        assert_ok(st_stage_forward(g, 0, ref.tokens, NULL, ref.B, ref.T));
        assert_ok(st_stage_output_read(g, 0, ref.B, ref.T, logits));
        for (int t = 0; t < ref.T; t++) {
            assert_ok(st_stage_decode(g, ref.tokens[t], t, step));
            assert_close(step, ref.decoded + (size_t)t * ref.V, (size_t)ref.V, 1e-4, 1e-4);
            assert_close(step, logits + (size_t)t * ref.V, (size_t)ref.V, 1e-4, 1e-4);
        }
        assert_int_equal(st_stage_decode(g, 1, ref.T, step), ST_ERR_INVALID);
        assert_contains(st_last_error(), "past the KV cache");
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
        put(g, 2);
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

/* Hugging Face's initialisation: matrices N(0, 0.02), norms 1, biases 0;
 * the same seed the same weights, another seed others. */
static void init_is_deterministic_and_hf_like(void **state)
{
    (void)state;
    st_stage *g = NULL, *h = NULL;
    st_stage_options o = {.batch = 1, .seq = 4, .training = true};
    assert_ok(st_stage_create(td.dev[0], desc, &o, &g));
    assert_ok(st_stage_create(td.dev[0], desc, &o, &h));
    assert_ok(st_stage_init(g, 7));
    assert_ok(st_stage_init(h, 7));
    size_t n = st_stage_param_numel(g);
    float *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b);
    for (size_t i = 0; i < st_stage_n_params(g); i++) {
        assert_ok(st_stage_read(g, ST_STAGE_PARAMS, i, a + st_stage_param_at(g, i)->offset));
        assert_ok(st_stage_read(h, ST_STAGE_PARAMS, i, b + st_stage_param_at(h, i)->offset));
    }
    assert_memory_equal(a, b, n * sizeof *a);
    long emb = st_stage_param_find(g, "model.embed_tokens.weight");
    long norm = st_stage_param_find(g, "model.layers.1.post_attention_layernorm.weight");
    assert_true(emb >= 0 && norm >= 0);
    const st_stage_param *p = st_stage_param_at(g, (size_t)emb);
    double s2 = 0;
    for (size_t i = 0; i < p->desc->numel; i++)
        s2 += (double)a[p->offset + i] * a[p->offset + i];
    double std = sqrt(s2 / p->desc->numel);
    assert_true(std > 0.017 && std < 0.023);
    assert_true(a[st_stage_param_at(g, (size_t)norm)->offset] == 1.0f);
    assert_ok(st_stage_init(h, 8));
    for (size_t i = 0; i < st_stage_n_params(h); i++)
        assert_ok(st_stage_read(h, ST_STAGE_PARAMS, i, b + st_stage_param_at(h, i)->offset));
    assert_true(memcmp(a, b, n * sizeof *a) != 0);
    free(a);
    free(b);
    st_stage_destroy(g);
    st_stage_destroy(h);
}


/* ---- LoRA: a model with adapters is the model with W + s B A ------------------ */

/* The adapter matrices of a LoRA stage: random, small, nonzero (B too, so
 * that every gradient is nonzero). */
static void put_adapters(st_stage *g)
{
    for (size_t i = 0; i < st_stage_n_params(g); i++) {
        const st_param_desc *p = st_stage_param_at(g, i)->desc;
        if (!p->adapter)
            continue;
        float *x = malloc(p->numel * sizeof *x);
        st_fill_random(x, p->numel, 1000 + i);
        for (size_t e = 0; e < p->numel; e++)
            x[e] *= 0.05f;
        assert_ok(st_stage_write(g, ST_STAGE_PARAMS, i, x));
        free(x);
    }
}

static float *read_param(st_stage *g, st_stage_buf which, const char *name)
{
    long i = st_stage_param_find(g, name);
    if (i < 0)
        fail_msg("no parameter '%s'", name);
    float *x = malloc(st_stage_param_at(g, (size_t)i)->desc->numel * sizeof *x);
    assert_ok(st_stage_read(g, which, (size_t)i, x));
    return x;
}

/* The gradients of a model with adapters (base frozen) against those of the
 * model whose weights are W' = W + s B A: for y = x W'^T, dB = s dW' A^T and
 * dA = s B^T dW', the loss the same; nothing frozen has a gradient or
 * moves in AdamW steps, and the stage holds no gradient or moment for it. */
static void lora_gradients_match_merged(void **state)
{
    (void)state;
    st_model_config lc = desc->cfg;
    lc.lora = (st_lora){.rank = 4, .alpha = 8.0f};
    assert_ok(st_lora_targets_parse(lc.family, "all", &lc.lora.targets));
    st_model_desc *ld = NULL;
    assert_ok(st_model_describe(&lc, &ld));
    assert_true(ld->train_numel < ld->param_numel / 5);
    float scale = lc.lora.alpha / (float)lc.lora.rank;
    size_t N = (size_t)ref.B * ref.T;
    static const char *const mods[7] = {"self_attn.q_proj", "self_attn.k_proj",
                                        "self_attn.v_proj", "self_attn.o_proj",
                                        "mlp.gate_proj",    "mlp.up_proj",
                                        "mlp.down_proj"};
    for (size_t d = 0; d < td.n; d++) {
        st_stage_options o = {.batch = ref.B, .seq = ref.T, .slots = 1, .training = true};
        st_stage *lg = NULL, *mg = NULL;
        assert_ok(st_stage_create(td.dev[d], ld, &o, &lg));
        assert_ok(st_stage_create(td.dev[d], desc, &o, &mg));
        st_stage_sizes zl;
        assert_ok(st_stage_sizes_of(ld, &o, &zl));
        assert_int_equal(st_stage_bytes(lg), zl.bytes);
        assert_int_equal(st_stage_train_numel(lg), ld->train_numel);
        assert_ok(st_stage_init(lg, 0));
        assert_ok(st_stage_init(mg, 0));
        put(mg, 0);
        for (size_t i = 0; i < st_stage_n_params(lg); i++) {
            const st_param_desc *p = st_stage_param_at(lg, i)->desc;
            if (!p->adapter)
                assert_ok(st_stage_write(lg, ST_STAGE_PARAMS, i, ref_find(p->name)->init));
        }
        put_adapters(lg);
        /* the merged weights */
        char an[96], bn[96], wn[96];
        for (int l = 0; l < lc.n_layer; l++)
            for (int t = 0; t < 7; t++) {
                snprintf(an, sizeof an, "model.layers.%d.%s.lora_A.weight", l, mods[t]);
                snprintf(bn, sizeof bn, "model.layers.%d.%s.lora_B.weight", l, mods[t]);
                snprintf(wn, sizeof wn, "model.layers.%d.%s.weight", l, mods[t]);
                const st_param_desc *wd = st_model_find_param(desc, wn, NULL);
                size_t out = wd->shape[0], in = wd->shape[1], R = (size_t)lc.lora.rank;
                float *A = read_param(lg, ST_STAGE_PARAMS, an), *Bm = read_param(lg, ST_STAGE_PARAMS, bn);
                float *W = read_param(mg, ST_STAGE_PARAMS, wn);
                for (size_t r = 0; r < out; r++)
                    for (size_t c = 0; c < in; c++) {
                        double acc = 0;
                        for (size_t k = 0; k < R; k++)
                            acc += (double)Bm[r * R + k] * A[k * in + c];
                        W[r * in + c] = (float)((double)W[r * in + c] + scale * acc);
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
        assert_int_equal(cl, cm);
        float fl = (float)(sl / cl), fm = (float)(sm / cm);
        assert_close(&fl, &fm, 1, 1e-5, 1e-5);
        assert_ok(st_stage_backward(lg, 0, ref.B, ref.T, 1.0f / (float)cl));
        assert_ok(st_stage_backward(mg, 0, ref.B, ref.T, 1.0f / (float)cm));
        for (int l = 0; l < lc.n_layer; l++)
            for (int t = 0; t < 7; t++) {
                snprintf(an, sizeof an, "model.layers.%d.%s.lora_A.weight", l, mods[t]);
                snprintf(bn, sizeof bn, "model.layers.%d.%s.lora_B.weight", l, mods[t]);
                snprintf(wn, sizeof wn, "model.layers.%d.%s.weight", l, mods[t]);
                const st_param_desc *wd = st_model_find_param(desc, wn, NULL);
                size_t out = wd->shape[0], in = wd->shape[1], R = (size_t)lc.lora.rank;
                float *A = read_param(lg, ST_STAGE_PARAMS, an), *Bm = read_param(lg, ST_STAGE_PARAMS, bn);
                float *dA = read_param(lg, ST_STAGE_GRADS, an), *dB = read_param(lg, ST_STAGE_GRADS, bn);
                float *dW = read_param(mg, ST_STAGE_GRADS, wn);
                float *wantA = malloc(R * in * sizeof *wantA), *wantB = malloc(out * R * sizeof *wantB);
                for (size_t k = 0; k < R; k++)
                    for (size_t c = 0; c < in; c++) {
                        double acc = 0;
                        for (size_t r = 0; r < out; r++)
                            acc += (double)Bm[r * R + k] * dW[r * in + c];
                        wantA[k * in + c] = (float)(scale * acc);
                    }
                for (size_t r = 0; r < out; r++)
                    for (size_t k = 0; k < R; k++) {
                        double acc = 0;
                        for (size_t c = 0; c < in; c++)
                            acc += (double)dW[r * in + c] * A[k * in + c];
                        wantB[r * R + k] = (float)(scale * acc);
                    }
                if (!st_compare_f32(dA, wantA, R * in, 2e-5, 2e-3, NULL) ||
                    !st_compare_f32(dB, wantB, out * R, 2e-5, 2e-3, NULL)) {
                    char buf[2048];
                    bool a_bad = !st_compare_f32(dA, wantA, R * in, 2e-5, 2e-3, NULL);
                    fail_msg("%s: LoRA gradient of %s: %s", ref.file, a_bad ? an : bn,
                             a_bad ? st_compare_describe(dA, wantA, R * in, 2e-5, 2e-3, 5, buf, sizeof buf)
                                   : st_compare_describe(dB, wantB, out * R, 2e-5, 2e-3, 5, buf, sizeof buf));
                }
                free(A); free(Bm); free(dA); free(dB); free(dW); free(wantA); free(wantB);
            }
        /* frozen: no gradient buffer of its own */
        float dummy[1];
        long emb = st_stage_param_find(lg, "model.embed_tokens.weight");
        assert_int_not_equal(st_stage_read(lg, ST_STAGE_GRADS, (size_t)emb, dummy), ST_OK);
        st_error_clear();
        /* AdamW steps move the adapters only, and lower the loss */
        float *before = malloc(st_stage_param_numel(lg) * sizeof *before);
        float *after = malloc(st_stage_param_numel(lg) * sizeof *after);
        for (size_t i = 0; i < st_stage_n_params(lg); i++)
            assert_ok(st_stage_read(lg, ST_STAGE_PARAMS, i, before + st_stage_param_at(lg, i)->offset));
        st_adamw_hparams hp = {1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f};
        float losses[6], norms[6];
        stage_train_steps(lg, &hp, 1.0f, ref.tokens, ref.targets, ref.B, ref.T, 6, losses, norms);
        assert_true(losses[5] < losses[0]);
        for (size_t i = 0; i < st_stage_n_params(lg); i++) {
            const st_stage_param *p = st_stage_param_at(lg, i);
            assert_ok(st_stage_read(lg, ST_STAGE_PARAMS, i, after + p->offset));
            bool same = memcmp(before + p->offset, after + p->offset, p->desc->numel * sizeof *after) == 0;
            if (same != p->desc->frozen)
                fail_msg("%s: %s %s in AdamW steps", ref.file, p->desc->name,
                         p->desc->frozen ? "frozen, changed" : "trained, did not change");
        }
        print_message("%s on %s: LoRA losses %.5f -> %.5f; stage %llu bytes, full %llu\n",
                      ref.file, st_device_label(td.dev[d]), losses[0], losses[5],
                      (unsigned long long)st_stage_bytes(lg), (unsigned long long)st_stage_bytes(mg));
        (void)N;
        free(before);
        free(after);
        st_stage_destroy(lg);
        st_stage_destroy(mg);
    }
    st_model_desc_destroy(ld);
}

/* ---- activation recomputation ------------------------------------------------- */

/* Two micro-batches in flight (both forwards, then the backwards in reverse),
 * with and without recomputation, on the whole model and on its blocks
 * alone (a middle stage: the input from outside, the output kept for the
 * next): the same losses, outputs and gradients, bitwise; the stage holds
 * what st_stage_sizes_of says, less for the activations. */
static void recompute_is_bitwise(void **state)
{
    (void)state;
    int T = ref.T, half = ref.B; /* micro-batch 1: the reference's batch shifted by a token */
    size_t C = (size_t)desc->cfg.n_embd, N = (size_t)half * T;
    int32_t *tokens = malloc(2 * N * sizeof *tokens), *targets = malloc(2 * N * sizeof *targets);
    for (size_t i = 0; i < N; i++) {
        tokens[i] = ref.tokens[i];
        targets[i] = ref.targets[i];
        tokens[N + i] = ref.tokens[(i + 1) % N];
        targets[N + i] = ref.targets[(i + 1) % N];
    }
    for (int part = 0; part < 2; part++) {
        size_t first = part == 0 ? 0 : 1, end = part == 0 ? desc->n_layers : desc->n_layers - 1;
        uint64_t bytes[2];
        float *grads[2] = {NULL, NULL}, *outs[2] = {NULL, NULL};
        double loss[2] = {0, 0};
        for (int rc = 0; rc < 2; rc++) {
            st_stage_options o = {.first_layer = first, .end_layer = end, .batch = half,
                                  .seq = T, .slots = 2, .training = true, .recompute = rc == 1};
            st_stage *g = NULL;
            assert_ok(st_stage_create(td.dev[0], desc, &o, &g));
            st_stage_sizes z;
            assert_ok(st_stage_sizes_of(desc, &o, &z));
            assert_int_equal(st_stage_bytes(g), z.bytes);
            bytes[rc] = z.bytes;
            assert_ok(st_stage_init(g, 3));
            assert_ok(st_stage_zero_grad(g));
            outs[rc] = malloc(2 * N * C * sizeof(float));
            for (int k = 0; k < 2; k++) {
                const int32_t *tok = tokens + (size_t)k * N, *tgt = targets + (size_t)k * N;
                if (part == 1) { /* a middle stage: an input from outside */
                    float *x = malloc(N * C * sizeof *x);
                    st_fill_random(x, N * C, 50 + (unsigned)k);
                    assert_ok(st_tensor_write(st_stage_io_tensor(g, k, ST_STAGE_IN), 0, N * C, x));
                    free(x);
                }
                assert_ok(st_stage_forward(g, k, part == 0 ? tok : NULL, part == 0 ? tgt : NULL,
                                           half, T));
                if (part == 0) {
                    double sum = 0;
                    long count = 0;
                    assert_ok(st_stage_loss(g, k, tgt, half, T, &sum, &count));
                    loss[rc] += sum;
                } else {
                    assert_ok(st_tensor_read(st_stage_io_tensor(g, k, ST_STAGE_OUT), 0, N * C,
                                             outs[rc] + (size_t)k * N * C));
                }
            }
            for (int k = 1; k >= 0; k--) {
                if (part == 1) { /* the gradient of the output from outside */
                    float *d = malloc(N * C * sizeof *d);
                    st_fill_random(d, N * C, 70 + (unsigned)k);
                    assert_ok(st_tensor_write(st_stage_io_tensor(g, k, ST_STAGE_DOUT), 0, N * C, d));
                    free(d);
                }
                assert_ok(st_stage_backward(g, k, half, T, 0.01f));
            }
            size_t n = st_stage_train_numel(g);
            grads[rc] = malloc(n * sizeof(float));
            assert_ok(st_tensor_read(st_stage_tensor(g, ST_STAGE_GRADS), 0, n, grads[rc]));
            if (rc == 1)
                assert_memory_equal(grads[0], grads[1], n * sizeof(float));
            st_stage_destroy(g);
        }
        if (part == 0)
            assert_memory_equal(&loss[0], &loss[1], sizeof loss[0]);
        else
            assert_memory_equal(outs[0], outs[1], 2 * N * C * sizeof(float));
        assert_true(bytes[1] < bytes[0]);
        print_message("%s, layers %zu..%zu: %llu bytes, %llu recomputing\n", ref.file, first,
                      end - 1, (unsigned long long)bytes[0], (unsigned long long)bytes[1]);
        for (int i = 0; i < 2; i++) {
            free(grads[i]);
            free(outs[i]);
        }
    }
    free(tokens);
    free(targets);
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

static int teardown(void **state)
{
    (void)state;
    st_model_desc_destroy(desc);
    desc = NULL;
    for (size_t i = 0; i < ref.n_params; i++) {
        free(ref.params[i].init);
        free(ref.params[i].grad);
        free(ref.params[i].final);
    }
    free(ref.params);
    free(ref.tokens);
    free(ref.targets);
    free(ref.logits);
    free(ref.step_losses);
    free(ref.step_norms);
    free(ref.decoded);
    free(ref.data);
    return 0;
}

static int setup_llama(void **state)
{
    (void)state;
    return load_reference("llama_reference.bin");
}

static int setup_qwen2(void **state)
{
    (void)state;
    return load_reference("qwen2_reference.bin");
}

int main(void)
{
    test_devices_open_or_skip(&td);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(forward_and_gradients_match),
        cmocka_unit_test(adamw_steps_match),
        cmocka_unit_test(kv_decoding_matches_transformers),
        cmocka_unit_test(prefill_matches_token_by_token),
        cmocka_unit_test(init_is_deterministic_and_hf_like),
        cmocka_unit_test(lora_gradients_match_merged),
        cmocka_unit_test(recompute_is_bitwise),
        cmocka_unit_test(packed_documents_equal_padded),
        cmocka_unit_test(weights_in_16_bits_match),
    };
    int failed = cmocka_run_group_tests_name("llama", tests, setup_llama, teardown);
    failed += cmocka_run_group_tests_name("qwen2", tests, setup_qwen2, teardown);
    test_devices_close(&td);
    return failed;
}
