/*
 * llama.c - the Llama family (model_type "llama", "mistral", "qwen2"):
 * config.json with Hugging Face's field names, and the layer list:
 * embedding (embed_tokens), blocks (RMSNorm, attention with rotary
 * positions and grouped key/value heads, RMSNorm, SwiGLU MLP; nn.Linear
 * weights stored [out, in]), head (RMSNorm, logits through lm_head or the
 * tied embedding, loss). Sizes are what src/stage/llama_layers.c carves.
 *
 * Parameter order within a block puts q, k and v (and their biases) next to
 * each other, and gate and up, so that each group is one matrix [rows, C]
 * for one product; checkpoints name each part.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "model/family.h"

/* Fields that do not change what is computed: accepted, ignored. */
static const char *const ignored_fields[] = {
    "architectures", "torch_dtype", "transformers_version", "_name_or_path", "model_type",
    "initializer_range", "use_cache", "pad_token_id", "bos_token_id", "eos_token_id",
    "pretraining_tp", "attention_dropout", "id2label", "label2id", "tokenizer_class",
    "return_dict", "output_hidden_states", "output_attentions", "torchscript",
    "use_return_dict", "gradient_checkpointing", "problem_type", "max_length", "do_sample",
    "prefix", "task_specific_params", "max_window_layers", "dtype",
};

static bool is_ignored(const char *key)
{
    for (size_t i = 0; i < sizeof ignored_fields / sizeof ignored_fields[0]; i++)
        if (strcmp(key, ignored_fields[i]) == 0)
            return true;
    return false;
}

static st_status rope_scaling(const char *src, json_t *v, st_model_config *c)
{
    if (json_is_null(v))
        return ST_OK;
    if (!json_is_object(v))
        return st_error(ST_ERR_FORMAT, "%s: \"rope_scaling\" must be an object or null", src);
    json_t *t = json_object_get(v, "rope_type");
    if (!t)
        t = json_object_get(v, "type");
    const char *type = t ? json_string_value(t) : NULL;
    if (!type)
        return st_error(ST_ERR_FORMAT, "%s: \"rope_scaling\" needs a \"rope_type\" string", src);
    if (strcmp(type, "default") == 0)
        return ST_OK;
    if (strcmp(type, "llama3") != 0)
        return st_error(ST_ERR_UNSUPPORTED,
                        "%s: \"rope_scaling\" of type \"%s\" is not supported: Strata computes "
                        "rotary embeddings as written or rescaled as Llama 3 does (\"llama3\")",
                        src, type);
    c->rope_type = ST_ROPE_LLAMA3;
    const char *key;
    json_t *f;
    json_object_foreach(v, key, f)
    {
        st_status s = ST_OK;
        if (strcmp(key, "factor") == 0)
            s = st_json_number(src, "rope_scaling.factor", f, &c->rope_factor);
        else if (strcmp(key, "low_freq_factor") == 0)
            s = st_json_number(src, "rope_scaling.low_freq_factor", f, &c->rope_low_freq_factor);
        else if (strcmp(key, "high_freq_factor") == 0)
            s = st_json_number(src, "rope_scaling.high_freq_factor", f,
                               &c->rope_high_freq_factor);
        else if (strcmp(key, "original_max_position_embeddings") == 0)
            s = st_json_int(src, "rope_scaling.original_max_position_embeddings", f,
                            ST_MODEL_MAX_POSITIONS, &c->rope_original_positions);
        else if (strcmp(key, "rope_type") != 0 && strcmp(key, "type") != 0)
            s = st_error(ST_ERR_UNSUPPORTED,
                         "%s: \"rope_scaling.%s\" is not supported with \"llama3\" scaling", src,
                         key);
        if (s != ST_OK)
            return s;
    }
    if (!(c->rope_factor > 0) || !(c->rope_low_freq_factor > 0) ||
        !(c->rope_high_freq_factor > c->rope_low_freq_factor) || c->rope_original_positions < 1)
        return st_error(ST_ERR_FORMAT,
                        "%s: \"rope_scaling\" of type \"llama3\" needs factor > 0, "
                        "high_freq_factor > low_freq_factor > 0 and "
                        "original_max_position_embeddings",
                        src);
    return ST_OK;
}

/* A sliding window that would cut the attention of a sequence Strata runs. */
static st_status sliding_window(const char *src, json_t *root, const st_model_config *c)
{
    json_t *use = json_object_get(root, "use_sliding_window");
    json_t *w = json_object_get(root, "sliding_window");
    json_t *types = json_object_get(root, "layer_types");
    if (use && !json_is_boolean(use))
        return st_error(ST_ERR_FORMAT, "%s: \"use_sliding_window\" must be true or false", src);
    if (types) {
        size_t i;
        json_t *t;
        json_array_foreach(types, i, t)
        {
            const char *s = json_string_value(t);
            if (!s || strcmp(s, "full_attention") != 0)
                return st_error(ST_ERR_UNSUPPORTED,
                                "%s: \"layer_types\"[%zu] is \"%s\": Strata computes full causal "
                                "attention in every layer, not sliding windows",
                                src, i, s ? s : "(not a string)");
        }
    }
    bool on = use ? json_is_true(use) : strcmp(c->model_type, "mistral") == 0;
    if (!on || !w || json_is_null(w))
        return ST_OK;
    if (!json_is_integer(w) || json_integer_value(w) < 1)
        return st_error(ST_ERR_FORMAT, "%s: \"sliding_window\" must be a positive integer or null",
                        src);
    if (json_integer_value(w) < c->n_positions)
        return st_error(ST_ERR_UNSUPPORTED,
                        "%s: \"sliding_window\" is %lld, shorter than the %d positions: Strata "
                        "computes full causal attention, not a sliding window (set it to null "
                        "or to at least max_position_embeddings if the model was trained "
                        "without one)",
                        src, (long long)json_integer_value(w), c->n_positions);
    return ST_OK;
}

static st_status from_json(json_t *root, const char *src, st_model_config *c)
{
    c->norm_eps = 1e-6f;
    c->rope_theta = 10000.0;
    c->tied = false;
    bool qwen2 = strcmp(c->model_type, "qwen2") == 0;
    c->attn_bias = qwen2; /* Qwen2's q, k and v always have biases, its o_proj none */
    int head_dim = 0;
    st_status s = ST_OK;
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v)
    {
        if (strcmp(key, "vocab_size") == 0)
            s = st_json_int(src, key, v, ST_MODEL_MAX_VOCAB, &c->vocab_size);
        else if (strcmp(key, "max_position_embeddings") == 0)
            s = st_json_int(src, key, v, ST_MODEL_MAX_POSITIONS, &c->n_positions);
        else if (strcmp(key, "hidden_size") == 0)
            s = st_json_int(src, key, v, ST_MODEL_MAX_EMBD, &c->n_embd);
        else if (strcmp(key, "num_hidden_layers") == 0)
            s = st_json_int(src, key, v, ST_MODEL_MAX_LAYERS, &c->n_layer);
        else if (strcmp(key, "num_attention_heads") == 0)
            s = st_json_int(src, key, v, ST_MODEL_MAX_EMBD, &c->n_head);
        else if (strcmp(key, "num_key_value_heads") == 0)
            s = json_is_null(v) ? ST_OK : st_json_int(src, key, v, ST_MODEL_MAX_EMBD, &c->n_kv_head);
        else if (strcmp(key, "intermediate_size") == 0)
            s = st_json_int(src, key, v, ST_MODEL_MAX_INNER, &c->n_inner);
        else if (strcmp(key, "head_dim") == 0)
            s = json_is_null(v) ? ST_OK : st_json_int(src, key, v, ST_MODEL_MAX_EMBD, &head_dim);
        else if (strcmp(key, "rms_norm_eps") == 0) {
            double e = 0;
            if ((s = st_json_number(src, key, v, &e)) == ST_OK)
                c->norm_eps = (float)e;
        } else if (strcmp(key, "rope_theta") == 0) {
            s = st_json_number(src, key, v, &c->rope_theta);
            /* 0 stood for "absent" and silently became 10000 */
            if (s == ST_OK && !(c->rope_theta > 1.0))
                s = st_error(ST_ERR_FORMAT,
                             "%s: \"rope_theta\" is %g; it must be above 1 (10000 and 500000 "
                             "are usual; leave the field out for 10000)",
                             src, c->rope_theta);
        }
        else if (strcmp(key, "rope_scaling") == 0)
            s = rope_scaling(src, v, c);
        else if (strcmp(key, "tie_word_embeddings") == 0) {
            if (!json_is_boolean(v))
                s = st_error(ST_ERR_FORMAT, "%s: \"%s\" must be true or false", src, key);
            c->tied = json_is_true(v);
        } else if (strcmp(key, "attention_bias") == 0 && !qwen2) {
            if (!json_is_boolean(v))
                s = st_error(ST_ERR_FORMAT, "%s: \"%s\" must be true or false", src, key);
            c->attn_bias = c->attn_out_bias = json_is_true(v);
        } else if (strcmp(key, "mlp_bias") == 0)
            s = st_json_bool(src, key, v, false, "the MLP's projections have no biases here");
        else if (strcmp(key, "hidden_act") == 0) {
            const char *a = json_string_value(v);
            if (!a || strcmp(a, "silu") != 0)
                s = st_error(ST_ERR_UNSUPPORTED,
                             "%s: \"hidden_act\" %s%s%s is not supported: Strata's SwiGLU MLP "
                             "uses SiLU (\"silu\")",
                             src, a ? "\"" : "", a ? a : "(not a string)", a ? "\"" : "");
        } else if (strcmp(key, "sliding_window") == 0 || strcmp(key, "use_sliding_window") == 0 ||
                   strcmp(key, "layer_types") == 0)
            s = ST_OK; /* checked below, once the positions are known */
        else if (!is_ignored(key))
            s = st_error(ST_ERR_FORMAT,
                         "%s: unknown field \"%s\" (not a field of a %s config that Strata "
                         "reads; remove it)",
                         src, key, c->model_type);
        if (s != ST_OK)
            return s;
    }
    static const char *const required[] = {"vocab_size", "hidden_size", "num_hidden_layers",
                                           "num_attention_heads", "intermediate_size",
                                           "max_position_embeddings"};
    for (size_t i = 0; i < sizeof required / sizeof required[0]; i++)
        if (!json_object_get(root, required[i]))
            return st_error(ST_ERR_FORMAT, "%s: required field \"%s\" is missing", src,
                            required[i]);
    if (c->n_kv_head == 0)
        c->n_kv_head = c->n_head;
    if (head_dim && head_dim * c->n_head != c->n_embd)
        return st_error(ST_ERR_UNSUPPORTED,
                        "%s: \"head_dim\" %d is not hidden_size / num_attention_heads (%d / %d): "
                        "Strata's heads split the hidden size",
                        src, head_dim, c->n_embd, c->n_head);
    return sliding_window(src, root, c);
}

static st_status check(const st_model_config *c)
{
    static const struct {
        const char *name;
        long max;
    } limits[] = {{"vocab_size", ST_MODEL_MAX_VOCAB},
                  {"max_position_embeddings", ST_MODEL_MAX_POSITIONS},
                  {"hidden_size", ST_MODEL_MAX_EMBD},
                  {"num_hidden_layers", ST_MODEL_MAX_LAYERS},
                  {"num_attention_heads", ST_MODEL_MAX_EMBD},
                  {"num_key_value_heads", ST_MODEL_MAX_EMBD},
                  {"intermediate_size", ST_MODEL_MAX_INNER}};
    const int values[] = {c->vocab_size, c->n_positions, c->n_embd, c->n_layer,
                          c->n_head,     c->n_kv_head,   c->n_inner};
    for (size_t i = 0; i < sizeof limits / sizeof limits[0]; i++) {
        if (values[i] < 1)
            return st_error(ST_ERR_INVALID, "%s must be at least 1", limits[i].name);
        if (values[i] > limits[i].max)
            return st_error(ST_ERR_INVALID, "%s is %d; Strata takes at most %ld", limits[i].name,
                            values[i], limits[i].max);
    }
    if (c->n_embd % c->n_head != 0)
        return st_error(ST_ERR_INVALID,
                        "hidden_size (%d) is not divisible by num_attention_heads (%d)",
                        c->n_embd, c->n_head);
    if (c->n_head % c->n_kv_head != 0)
        return st_error(ST_ERR_INVALID,
                        "num_attention_heads (%d) is not a multiple of num_key_value_heads (%d): "
                        "each key/value head serves a group of query heads",
                        c->n_head, c->n_kv_head);
    int HS = c->n_embd / c->n_head;
    if (HS % 2 != 0 || HS > ST_FLASH_MAX_HEAD)
        return st_error(ST_ERR_UNSUPPORTED,
                        "the head size is %d: Strata's rotary attention takes even head sizes "
                        "up to %d",
                        HS, ST_FLASH_MAX_HEAD);
    if (!(c->norm_eps > 0.0f && c->norm_eps < 1.0f) || isnan(c->norm_eps))
        return st_error(ST_ERR_INVALID, "rms_norm_eps (%g) must be between 0 and 1",
                        (double)c->norm_eps);
    if (!(c->rope_theta > 1.0) || !isfinite(c->rope_theta))
        return st_error(ST_ERR_INVALID, "rope_theta (%g) must be above 1", c->rope_theta);
    return ST_OK;
}

static json_t *to_json(const st_model_config *c)
{
    const char *arch = strcmp(c->model_type, "qwen2") == 0     ? "Qwen2ForCausalLM"
                       : strcmp(c->model_type, "mistral") == 0 ? "MistralForCausalLM"
                                                               : "LlamaForCausalLM";
    json_t *root = json_pack(
        "{s:[s], s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:s, s:f, s:f, s:b, s:f, s:f}",
        "architectures", arch, "model_type", c->model_type, "vocab_size", c->vocab_size,
        "max_position_embeddings", c->n_positions, "hidden_size", c->n_embd,
        "num_hidden_layers", c->n_layer, "num_attention_heads", c->n_head,
        "num_key_value_heads", c->n_kv_head, "intermediate_size", c->n_inner, "hidden_act",
        "silu", "rms_norm_eps", (double)c->norm_eps, "rope_theta", c->rope_theta,
        "tie_word_embeddings", c->tied, "initializer_range", 0.02, "attention_dropout", 0.0);
    if (!root)
        return NULL;
    if (strcmp(c->model_type, "qwen2") != 0)
        json_object_set_new(root, "attention_bias", json_boolean(c->attn_bias));
    if (strcmp(c->model_type, "llama") == 0)
        json_object_set_new(root, "mlp_bias", json_false());
    if (strcmp(c->model_type, "llama") != 0)
        json_object_set_new(root, "sliding_window", json_null());
    if (strcmp(c->model_type, "qwen2") == 0)
        json_object_set_new(root, "use_sliding_window", json_false());
    if (c->rope_type == ST_ROPE_LLAMA3)
        json_object_set_new(root, "rope_scaling",
                            json_pack("{s:s, s:f, s:f, s:f, s:i}", "rope_type", "llama3",
                                      "factor", c->rope_factor, "low_freq_factor",
                                      c->rope_low_freq_factor, "high_freq_factor",
                                      c->rope_high_freq_factor,
                                      "original_max_position_embeddings",
                                      c->rope_original_positions));
    else
        json_object_set_new(root, "rope_scaling", json_null());
    return root;
}

static size_t n_layers(const st_model_config *c)
{
    return (size_t)c->n_layer + 2;
}

/* Hugging Face's initialisation for these models: every matrix N(0, 0.02)
 * (initializer_range), biases 0, RMSNorm weights 1; decay on matrices. */
#define W(l, name, d0, d1) st_desc_add_param(l, name, 2, d0, d1, ST_INIT_NORMAL, 0.02, true)
#define ONES(l, name, d0) st_desc_add_param(l, name, 1, d0, 0, ST_INIT_ONE, 0, false)
#define ZEROS(l, name, d0) st_desc_add_param(l, name, 1, d0, 0, ST_INIT_ZERO, 0, false)

static void describe_embedding(const st_model_config *c, st_layer_desc *l)
{
    size_t C = (size_t)c->n_embd;
    l->kind = ST_LAYER_EMBEDDING;
    l->type = ST_LLAMA_EMBEDDING;
    l->block = -1;
    snprintf(l->name, sizeof l->name, "embedding");
    W(l, "model.embed_tokens.weight", (size_t)c->vocab_size, C);
    l->params[0].frozen = c->lora.rank > 0;
    l->fwd_flops_per_token = (double)C;
    l->bwd_flops_per_token = c->lora.rank > 0 ? 0 : (double)C;
    l->out_floats_per_token = C;
    l->launches_fwd = l->launches_dec = 1;
    l->launches_bwd = c->lora.rank > 0 ? 0 : 1;
}

static void describe_block(const st_model_config *c, int i, st_layer_desc *l)
{
    size_t C = (size_t)c->n_embd, F = (size_t)c->n_inner, NH = (size_t)c->n_head;
    size_t KVD = (size_t)c->n_kv_head * (C / NH), QKV = C + 2 * KVD;
    l->kind = ST_LAYER_BLOCK;
    l->type = ST_LLAMA_BLOCK;
    l->block = i;
    snprintf(l->name, sizeof l->name, "layers.%d", i);
    char n[64];
#define N(suffix) (snprintf(n, sizeof n, "model.layers.%d." suffix, i), n)
    ONES(l, N("input_layernorm.weight"), C);
    W(l, N("self_attn.q_proj.weight"), C, C);
    W(l, N("self_attn.k_proj.weight"), KVD, C);
    W(l, N("self_attn.v_proj.weight"), KVD, C);
    if (c->attn_bias) {
        ZEROS(l, N("self_attn.q_proj.bias"), C);
        ZEROS(l, N("self_attn.k_proj.bias"), KVD);
        ZEROS(l, N("self_attn.v_proj.bias"), KVD);
    }
    W(l, N("self_attn.o_proj.weight"), C, C);
    if (c->attn_out_bias)
        ZEROS(l, N("self_attn.o_proj.bias"), C);
    ONES(l, N("post_attention_layernorm.weight"), C);
    W(l, N("mlp.gate_proj.weight"), F, C);
    W(l, N("mlp.up_proj.weight"), F, C);
    W(l, N("mlp.down_proj.weight"), C, F);
    /* LoRA: the base frozen, then the adapters of the targets in groups
     * that share an input (q k v; o; gate up; down), each group's A
     * matrices next to each other (one product for the group), then its
     * B matrices. */
    const st_lora *lo = &c->lora;
    double lora_fwd = 0;
    size_t lora_cols = 0;
    int lora_groups = 0, lora_targets = 0;
    if (lo->rank > 0) {
        for (size_t k = 0; k < l->n_params; k++)
            l->params[k].frozen = true;
        static const char *const mod[7] = {"self_attn.q_proj", "self_attn.k_proj",
                                           "self_attn.v_proj", "self_attn.o_proj",
                                           "mlp.gate_proj",    "mlp.up_proj",
                                           "mlp.down_proj"};
        size_t in[7] = {C, C, C, C, C, C, F}, out[7] = {C, KVD, KVD, C, F, F, C};
        static const int group[5] = {0, 3, 4, 6, 7}; /* targets [group[g], group[g + 1]) */
        size_t R = (size_t)lo->rank;
        for (int g = 0; g < 4; g++) {
            int any = 0;
            for (int t = group[g]; t < group[g + 1]; t++)
                if (lo->targets & (1u << t)) {
                    snprintf(n, sizeof n, "model.layers.%d.%s.lora_A.weight", i, mod[t]);
                    /* PEFT's kaiming-uniform A has variance 1 / (3 in) */
                    st_desc_add_param(l, n, 2, R, in[t], ST_INIT_NORMAL,
                                      1.0 / sqrt(3.0 * (double)in[t]), true);
                    l->params[l->n_params - 1].adapter = true;
                    lora_fwd += 2.0 * (double)R * (double)(in[t] + out[t]) + 2.0 * (double)out[t];
                    lora_cols += R;
                    lora_targets++;
                    any = 1;
                }
            for (int t = group[g]; t < group[g + 1]; t++)
                if (lo->targets & (1u << t)) {
                    snprintf(n, sizeof n, "model.layers.%d.%s.lora_B.weight", i, mod[t]);
                    st_desc_add_param(l, n, 2, out[t], R, ST_INIT_ZERO, 0, true);
                    l->params[l->n_params - 1].adapter = true;
                }
            lora_groups += any;
        }
    }
#undef N
    double Cd = (double)C, Fd = (double)F, NHd = (double)NH;
    double matmul = 2.0 * (Cd * (double)QKV + Cd * Cd + 3.0 * Cd * Fd);
    double elementwise = 20.0 * Cd + 10.0 * Fd + 6.0 * (double)QKV;
    l->fwd_flops_per_token = matmul + elementwise + lora_fwd;
    /* frozen weights: the input's gradient only, no weight gradient */
    l->bwd_flops_per_token = (lo->rank > 0 ? 1.0 : 2.0) * matmul + 2.0 * elementwise +
                             2.0 * lora_fwd;
    /* flash attention over the causal half of the pairs (as GPT-2's) */
    l->fwd_flops_per_token_ctx = 2.0 * Cd + 2.5 * NHd;
    l->bwd_flops_per_token_ctx = 7.0 * Cd + 2.5 * NHd;
    /* Kept: input norm out and rstd, rotated q k v, attention out and
     * log-sum-exp, residual, post norm out and rstd, gate|up, SwiGLU out,
     * block out. Work: dC, dqkv, dh, dgate|dup. Decoding: norm out and
     * rstd, qkv, attention out, residual, gate|up, SwiGLU out, scores;
     * the cache keeps k and v of the KV heads. Table: the rotary
     * frequencies. */
    l->act_per_token = 6 * C + 2 * KVD + 2 + 3 * F + NH;
    l->work_per_token = 2 * C + 2 * KVD + 3 * F;
    l->dec = 4 * C + 2 * KVD + 1 + 3 * F;
    /* LoRA keeps x A^T of every target, and its backward's gradient */
    l->act_per_token += lora_cols;
    l->work_per_token += lora_cols;
    l->dec += lora_cols;
    l->dec_per_position = NH;
    l->kv_per_position = 2 * KVD;
    l->consts = C / NH / 2;
    l->launches_fwd = 10 + (c->attn_out_bias ? 1 : 0) + lora_groups + lora_targets;
    l->launches_bwd = 16 + (c->attn_bias ? 1 : 0) + (c->attn_out_bias ? 1 : 0) +
                      2 * lora_groups + 2 * lora_targets - (lo->rank > 0 ? 6 : 0);
    l->launches_dec = l->launches_fwd;
    l->out_floats_per_token = C;
}

static void describe_head(const st_model_config *c, st_layer_desc *l)
{
    double Cd = c->n_embd, Vd = c->vocab_size;
    size_t C = (size_t)c->n_embd, V = (size_t)c->vocab_size;
    l->kind = ST_LAYER_HEAD;
    l->type = ST_LLAMA_HEAD;
    l->block = -1;
    snprintf(l->name, sizeof l->name, "head");
    ONES(l, "model.norm.weight", C);
    if (c->tied) {
        l->n_tied = 1;
        l->tied[0] = (st_tied_ref){0, 0};
        l->tied_numel = V * C;
    } else {
        W(l, "lm_head.weight", V, C);
    }
    for (size_t k = 0; k < l->n_params; k++)
        l->params[k].frozen = c->lora.rank > 0;
    l->fwd_flops_per_token = 2.0 * Cd * Vd + 6.0 * Cd + 5.0 * Vd;
    l->bwd_flops_per_token = (c->lora.rank > 0 ? 2.0 : 4.0) * Cd * Vd + 12.0 * Cd + 2.0 * Vd;
    l->act_per_token = C + 2 + V; /* norm out and rstd, probabilities, loss */
    l->work_per_token = C;
    l->dec = C + 1 + V;
    l->launches_fwd = 3;
    l->launches_bwd = c->lora.rank > 0 ? 4 : 6;
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

static const char *const model_types[] = {"llama", "mistral", "qwen2", NULL};

const st_family_ops st_llama_family = {
    .family = ST_FAMILY_LLAMA,
    .name = "llama",
    .model_types = model_types,
    .config_from_json = from_json,
    .config_check = check,
    .config_to_json = to_json,
    .n_layers = n_layers,
    .describe = describe,
};
