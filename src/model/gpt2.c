/*
 * gpt2.c - the GPT-2 family: config.json with Hugging Face GPT-2 field
 * names, and the layer list: embedding (wte, wpe), blocks (LayerNorm,
 * attention with a qkv bias, LayerNorm, GELU MLP; Conv1D weights stored
 * [in, out]), head (LayerNorm, logits through the tied wte, loss).
 *
 * Costs count what Strata computes, not the ideal: flash attention
 * (cl/flash.cl) visits the causal half of the token pairs and recomputes in
 * its backward; the T x T path (heads above ST_FLASH_MAX_HEAD) does full
 * products and masks after. Element-wise work is counted roughly (a few
 * FLOPs per element) so that no layer costs zero. Backward matrix products
 * cost twice the forward (one product for the input gradient, one for the
 * weight gradient). Sizes are what src/stage/gpt2_layers.c carves.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "model/family.h"

/* Fields that do not change what is computed: accepted, ignored. */
static const char *const ignored_fields[] = {
    "resid_pdrop", "embd_pdrop", "attn_pdrop", "initializer_range", "summary_type",
    "summary_use_proj", "summary_activation", "summary_proj_to_labels",
    "summary_first_dropout", "bos_token_id", "eos_token_id", "pad_token_id", "use_cache",
    "architectures", "torch_dtype", "transformers_version", "_name_or_path",
    "task_specific_params", "reorder_and_upcast_attn", "id2label", "label2id",
    "tokenizer_class", "output_past", "n_special", "predict_special_tokens", "return_dict",
    "output_hidden_states", "output_attentions", "torchscript", "use_return_dict",
    "gradient_checkpointing", "vocab_file", "merges_file", "do_sample", "max_length",
    "prefix", "problem_type", "model_type",
};

static bool is_ignored(const char *key)
{
    for (size_t i = 0; i < sizeof ignored_fields / sizeof ignored_fields[0]; i++)
        if (strcmp(key, ignored_fields[i]) == 0)
            return true;
    return false;
}

static st_status from_json(json_t *root, const char *src, st_model_config *c)
{
    st_status s = ST_OK;
    int n_ctx = 0;
    c->norm_eps = 1e-5f;
    c->tied = true;
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v)
    {
        if (strcmp(key, "vocab_size") == 0)
            s = st_json_int(src, key, v, ST_MODEL_MAX_VOCAB, &c->vocab_size);
        else if (strcmp(key, "n_positions") == 0)
            s = st_json_int(src, key, v, ST_MODEL_MAX_POSITIONS, &c->n_positions);
        else if (strcmp(key, "n_ctx") == 0)
            s = st_json_int(src, key, v, ST_MODEL_MAX_POSITIONS, &n_ctx);
        else if (strcmp(key, "n_embd") == 0)
            s = st_json_int(src, key, v, ST_MODEL_MAX_EMBD, &c->n_embd);
        else if (strcmp(key, "n_layer") == 0)
            s = st_json_int(src, key, v, ST_MODEL_MAX_LAYERS, &c->n_layer);
        else if (strcmp(key, "n_head") == 0)
            s = st_json_int(src, key, v, ST_MODEL_MAX_EMBD, &c->n_head);
        else if (strcmp(key, "n_inner") == 0)
            s = json_is_null(v) ? ST_OK : st_json_int(src, key, v, ST_MODEL_MAX_INNER, &c->n_inner);
        else if (strcmp(key, "layer_norm_epsilon") == 0) {
            double e = 0;
            if ((s = st_json_number(src, key, v, &e)) == ST_OK)
                c->norm_eps = (float)e;
        } else if (strcmp(key, "activation_function") == 0) {
            const char *a = json_string_value(v);
            if (!a || (strcmp(a, "gelu_new") != 0 && strcmp(a, "gelu_pytorch_tanh") != 0 &&
                       strcmp(a, "gelu_fast") != 0))
                s = st_error(ST_ERR_UNSUPPORTED,
                             "%s: \"activation_function\" %s%s%s is not supported: Strata "
                             "computes GELU in its tanh form (\"gelu_new\")",
                             src, a ? "\"" : "", a ? a : "(not a string)", a ? "\"" : "");
        } else if (strcmp(key, "scale_attn_weights") == 0)
            s = st_json_bool(src, key, v, true, "attention scores are scaled by 1/sqrt(head size)");
        else if (strcmp(key, "tie_word_embeddings") == 0)
            s = st_json_bool(src, key, v, true, "the output head is tied to wte");
        else if (strcmp(key, "scale_attn_by_inverse_layer_idx") == 0)
            s = st_json_bool(src, key, v, false, "attention is not scaled per layer");
        else if (strcmp(key, "add_cross_attention") == 0)
            s = st_json_bool(src, key, v, false, "GPT-2 here is a decoder without cross-attention");
        else if (!is_ignored(key) && !json_object_get(root, "model_type"))
            s = st_error(ST_ERR_FORMAT,
                         "%s: unknown field \"%s\": the file has no \"model_type\", so it was "
                         "read as a GPT-2 config; add \"model_type\": \"llama\" (or \"mistral\", "
                         "\"qwen2\") if it is one of those, or remove the field",
                         src, key);
        else if (!is_ignored(key))
            s = st_error(ST_ERR_FORMAT,
                         "%s: unknown field \"%s\" (not a field of a GPT-2 config; remove it)",
                         src, key);
        if (s != ST_OK)
            return s;
    }
    if (c->n_positions == 0)
        c->n_positions = n_ctx;
    else if (n_ctx && n_ctx != c->n_positions)
        return st_error(ST_ERR_FORMAT, "%s: \"n_ctx\" (%d) and \"n_positions\" (%d) disagree",
                        src, n_ctx, c->n_positions);
    static const char *const required[] = {"vocab_size", "n_embd", "n_layer", "n_head"};
    for (size_t i = 0; i < 4; i++)
        if (!json_object_get(root, required[i]))
            return st_error(ST_ERR_FORMAT, "%s: required field \"%s\" is missing", src,
                            required[i]);
    if (c->n_positions == 0)
        return st_error(ST_ERR_FORMAT, "%s: required field \"n_positions\" is missing", src);
    if (c->n_inner == 0)
        c->n_inner = 4 * c->n_embd; /* n_embd is at most 65536 here: no overflow */
    c->n_kv_head = c->n_head;
    return ST_OK;
}

static st_status check(const st_model_config *c)
{
    if (c->vocab_size < 1 || c->n_positions < 1 || c->n_embd < 1 || c->n_layer < 1 ||
        c->n_head < 1 || c->n_inner < 1)
        return st_error(ST_ERR_INVALID,
                        "vocab_size, n_positions, n_embd, n_layer, n_head and n_inner must all "
                        "be at least 1");
    static const struct {
        const char *name;
        long max;
    } limits[] = {{"vocab_size", ST_MODEL_MAX_VOCAB}, {"n_positions", ST_MODEL_MAX_POSITIONS},
                  {"n_embd", ST_MODEL_MAX_EMBD},      {"n_layer", ST_MODEL_MAX_LAYERS},
                  {"n_head", ST_MODEL_MAX_EMBD},      {"n_inner", ST_MODEL_MAX_INNER}};
    const int values[] = {c->vocab_size, c->n_positions, c->n_embd,
                          c->n_layer, c->n_head, c->n_inner};
    for (size_t i = 0; i < sizeof limits / sizeof limits[0]; i++)
        if (values[i] > limits[i].max)
            return st_error(ST_ERR_INVALID, "%s is %d; Strata takes at most %ld", limits[i].name,
                            values[i], limits[i].max);
    if (c->n_embd % c->n_head != 0)
        return st_error(ST_ERR_INVALID,
                        "n_embd (%d) is not divisible by n_head (%d): each head gets n_embd / "
                        "n_head channels",
                        c->n_embd, c->n_head);
    if ((c->n_kv_head != 0 && c->n_kv_head != c->n_head) || c->attn_bias || c->attn_out_bias)
        return st_error(ST_ERR_INVALID, "a GPT-2 model has as many key/value heads as heads and "
                                        "no separate q/k/v biases");
    if (!(c->norm_eps > 0.0f && c->norm_eps < 1.0f) || isnan(c->norm_eps))
        return st_error(ST_ERR_INVALID, "layer_norm_epsilon (%g) must be between 0 and 1",
                        (double)c->norm_eps);
    return ST_OK;
}

static json_t *to_json(const st_model_config *c)
{
    return json_pack(
        "{s:[s], s:s, s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:f, s:b, s:b, s:f, s:f, s:f}",
        "architectures", "GPT2LMHeadModel", "model_type", "gpt2", "activation_function",
        "gelu_new", "vocab_size", c->vocab_size, "n_positions", c->n_positions, "n_ctx",
        c->n_positions, "n_embd", c->n_embd, "n_layer", c->n_layer, "n_head", c->n_head,
        "n_inner", c->n_inner, "layer_norm_epsilon", (double)c->norm_eps,
        "tie_word_embeddings", 1, "scale_attn_weights", 1, "resid_pdrop", 0.0, "embd_pdrop",
        0.0, "attn_pdrop", 0.0);
}

static size_t n_layers(const st_model_config *c)
{
    return (size_t)c->n_layer + 2;
}

/* GPT-2's initialisation: weights N(0, 0.02), residual projections
 * N(0, 0.02/sqrt(2L)), biases 0, LayerNorm weights 1; decay on matrices. */
#define W(l, name, d0, d1, std) st_desc_add_param(l, name, 2, d0, d1, ST_INIT_NORMAL, std, true)
#define ONES(l, name, d0) st_desc_add_param(l, name, 1, d0, 0, ST_INIT_ONE, 0, false)
#define ZEROS(l, name, d0) st_desc_add_param(l, name, 1, d0, 0, ST_INIT_ZERO, 0, false)

static void describe_embedding(const st_model_config *c, st_layer_desc *l)
{
    size_t C = (size_t)c->n_embd;
    l->kind = ST_LAYER_EMBEDDING;
    l->type = ST_GPT2_EMBEDDING;
    l->block = -1;
    snprintf(l->name, sizeof l->name, "embedding");
    W(l, "wte.weight", (size_t)c->vocab_size, C, 0.02);
    W(l, "wpe.weight", (size_t)c->n_positions, C, 0.02);
    l->params[0].frozen = l->params[1].frozen = c->lora.rank > 0;
    l->fwd_flops_per_token = (double)C; /* x = wte[tok] + wpe[pos] */
    l->bwd_flops_per_token = c->lora.rank > 0 ? 0 : 2.0 * (double)C; /* scatter-add into both */
    l->out_floats_per_token = C;              /* into the stage's input tensor: no own buffers */
    l->launches_fwd = l->launches_bwd = l->launches_dec = 1;
}

static void describe_block(const st_model_config *c, int i, st_layer_desc *l)
{
    double C = c->n_embd, F = c->n_inner, NH = c->n_head;
    size_t Cs = (size_t)c->n_embd, Fs = (size_t)c->n_inner, NHs = (size_t)c->n_head;
    double proj_std = 0.02 / sqrt(2.0 * c->n_layer);
    l->kind = ST_LAYER_BLOCK;
    l->type = ST_GPT2_BLOCK;
    l->block = i;
    snprintf(l->name, sizeof l->name, "h.%d", i);
    char n[64];
#define N(suffix) (snprintf(n, sizeof n, "h.%d." suffix, i), n)
    ONES(l, N("ln_1.weight"), Cs);
    ZEROS(l, N("ln_1.bias"), Cs);
    W(l, N("attn.c_attn.weight"), Cs, 3 * Cs, 0.02);
    ZEROS(l, N("attn.c_attn.bias"), 3 * Cs);
    W(l, N("attn.c_proj.weight"), Cs, Cs, proj_std);
    ZEROS(l, N("attn.c_proj.bias"), Cs);
    ONES(l, N("ln_2.weight"), Cs);
    ZEROS(l, N("ln_2.bias"), Cs);
    W(l, N("mlp.c_fc.weight"), Cs, Fs, 0.02);
    ZEROS(l, N("mlp.c_fc.bias"), Fs);
    W(l, N("mlp.c_proj.weight"), Fs, Cs, proj_std);
    ZEROS(l, N("mlp.c_proj.bias"), Cs);
    for (size_t k = 0; k < l->n_params; k++) /* Conv1D: the 2-D weights are [in, out] */
        l->params[k].in_out = l->params[k].ndim == 2;
    /* LoRA: the base frozen, then each target's A [R, in] and B [out, R]
     * (as PEFT stores them for Conv1D too) */
    const st_lora *lo = &c->lora;
    double lora_fwd = 0;
    size_t lora_cols = 0;
    int lora_targets = 0;
    if (lo->rank > 0) {
        for (size_t k = 0; k < l->n_params; k++)
            l->params[k].frozen = true;
        static const char *const mod[4] = {"attn.c_attn", "attn.c_proj", "mlp.c_fc",
                                           "mlp.c_proj"};
        size_t in[4] = {Cs, Cs, Cs, Fs}, out[4] = {3 * Cs, Cs, Fs, Cs}, R = (size_t)lo->rank;
        for (int t = 0; t < 4; t++) {
            if (!(lo->targets & (1u << t)))
                continue;
            snprintf(n, sizeof n, "h.%d.%s.lora_A.weight", i, mod[t]);
            st_desc_add_param(l, n, 2, R, in[t], ST_INIT_NORMAL, 1.0 / sqrt(3.0 * (double)in[t]),
                              true);
            l->params[l->n_params - 1].adapter = true;
            snprintf(n, sizeof n, "h.%d.%s.lora_B.weight", i, mod[t]);
            st_desc_add_param(l, n, 2, out[t], R, ST_INIT_ZERO, 0, true);
            l->params[l->n_params - 1].adapter = true;
            lora_fwd += 2.0 * (double)R * (double)(in[t] + out[t]) + 2.0 * (double)out[t];
            lora_cols += R;
            lora_targets++;
        }
    }
#undef N
    double matmul = 2.0 * (C * 3 * C + C * C + 2 * C * F);
    double elementwise = 20.0 * C + 12.0 * F;
    l->fwd_flops_per_token = matmul + elementwise + lora_fwd;
    l->bwd_flops_per_token = (lo->rank > 0 ? 1.0 : 2.0) * matmul + 2.0 * elementwise +
                             2.0 * lora_fwd;
    /* Kept: ln_1 out and stats, qkv, attention out, residual, ln_2 out and
     * stats, fc out, gelu out, block out; and what attention keeps. The
     * backward's work: dC, d3C, dF. Decoding: ln out and stats, qkv,
     * attention out, residual, fc out, scores per head and position. */
    l->act_per_token = 8 * Cs + 2 * Fs + 4;
    l->work_per_token = 4 * Cs + Fs;
    l->dec = 6 * Cs + 2 + Fs;
    l->dec_per_position = NHs;
    l->kv_per_position = 2 * Cs;
    if (st_attention_is_flash(c->n_embd, c->n_head)) {
        /* cl/flash.cl: the causal half of the pairs, each Q.K and P.V (2C
         * per token and key each), the backward recomputing Q.K and dO.V
         * twice; it keeps one log-sum-exp per row and head. */
        l->fwd_flops_per_token_ctx = 2.0 * C + 2.5 * NH;
        l->bwd_flops_per_token_ctx = 7.0 * C + 2.5 * NH;
        l->act_per_token += NHs;
        l->launches_fwd = 9;
        l->launches_bwd = 15;
    } else {
        /* Full T x T products (the mask applied after), the probabilities
         * kept, and their gradient in the backward's work. */
        l->fwd_flops_per_token_ctx = 4.0 * C + 5.0 * NH;
        l->bwd_flops_per_token_ctx = 8.0 * C + 5.0 * NH;
        l->act_per_token_ctx = NHs;
        l->work_per_token_ctx = NHs;
        l->launches_fwd = 11;
        l->launches_bwd = 18;
    }
    l->launches_dec = 9;
    /* LoRA: x A^T of every target kept, and its gradient in the work */
    l->act_per_token += lora_cols;
    l->work_per_token += lora_cols;
    l->dec += lora_cols;
    l->launches_fwd += 2 * lora_targets;
    l->launches_dec += 2 * lora_targets;
    l->launches_bwd += 4 * lora_targets - (lo->rank > 0 ? 5 : 0);
    l->out_floats_per_token = Cs;
}

static void describe_head(const st_model_config *c, st_layer_desc *l)
{
    double C = c->n_embd, V = c->vocab_size;
    size_t Cs = (size_t)c->n_embd, Vs = (size_t)c->vocab_size;
    l->kind = ST_LAYER_HEAD;
    l->type = ST_GPT2_HEAD;
    l->block = -1;
    snprintf(l->name, sizeof l->name, "head");
    ONES(l, "ln_f.weight", Cs);
    ZEROS(l, "ln_f.bias", Cs);
    l->params[0].frozen = l->params[1].frozen = c->lora.rank > 0;
    l->n_tied = 1;
    l->tied[0] = (st_tied_ref){0, 0}; /* logits = ln_f(x) . wte^T */
    l->tied_numel = Vs * Cs;
    l->fwd_flops_per_token = 2.0 * C * V + 10.0 * C + 5.0 * V;
    l->bwd_flops_per_token = (c->lora.rank > 0 ? 2.0 : 4.0) * C * V + 20.0 * C + 2.0 * V;
    l->act_per_token = Cs + 3 + Vs; /* ln_f out and stats, probabilities, loss */
    l->work_per_token = Cs;         /* dlnf */
    l->dec = Cs + 2 + Vs;           /* ln_f out and stats, logits */
    l->launches_fwd = 4;
    l->launches_bwd = 6;
    l->launches_dec = 2;
    l->out_floats_per_token = 1;
}

static void describe(const st_model_config *c, st_layer_desc *layers)
{
    describe_embedding(c, &layers[0]);
    for (int i = 0; i < c->n_layer; i++)
        describe_block(c, i, &layers[i + 1]);
    describe_head(c, &layers[c->n_layer + 1]);
}

static const char *const model_types[] = {"gpt2", NULL};

const st_family_ops st_gpt2_family = {
    .family = ST_FAMILY_GPT2,
    .name = "gpt2",
    .model_types = model_types,
    .config_from_json = from_json,
    .config_check = check,
    .config_to_json = to_json,
    .n_layers = n_layers,
    .describe = describe,
};
