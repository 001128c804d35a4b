/*
 * config.c - config.json with Hugging Face GPT-2 field names: read, check, write.
 */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/atomic.h"
#include "core/file.h"
#include "strata/model.h"

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
    "prefix", "problem_type",
};

static bool is_ignored(const char *key)
{
    for (size_t i = 0; i < sizeof ignored_fields / sizeof ignored_fields[0]; i++)
        if (strcmp(key, ignored_fields[i]) == 0)
            return true;
    return false;
}

static st_status want_int(const char *src, const char *key, json_t *v, json_int_t max, int *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > max)
        return st_error(ST_ERR_FORMAT, "%s: \"%s\" must be an integer from 1 to %lld", src, key,
                        (long long)max);
    *out = (int)json_integer_value(v);
    return ST_OK;
}

static st_status want_bool(const char *src, const char *key, json_t *v, bool want,
                           const char *why)
{
    if (!json_is_boolean(v))
        return st_error(ST_ERR_FORMAT, "%s: \"%s\" must be true or false", src, key);
    if (json_is_true(v) != want)
        return st_error(ST_ERR_UNSUPPORTED, "%s: \"%s\": %s is not supported: %s", src, key,
                        want ? "false" : "true", why);
    return ST_OK;
}

st_status st_gpt_config_parse(const char *json_text, const char *src, st_gpt_config *out)
{
    json_error_t jerr;
    json_t *root = json_loads(json_text, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return st_error(ST_ERR_FORMAT, "%s: not valid JSON (line %d, column %d): %s", src,
                        jerr.line, jerr.column, jerr.text);
    st_status s = ST_OK;
    st_gpt_config c = {.layer_norm_epsilon = 1e-5f};
    int n_ctx = 0;
    if (!json_is_object(root)) {
        s = st_error(ST_ERR_FORMAT, "%s: the top level must be a JSON object", src);
        goto done;
    }
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v)
    {
        if (strcmp(key, "vocab_size") == 0)
            s = want_int(src, key, v, ST_MODEL_MAX_VOCAB, &c.vocab_size);
        else if (strcmp(key, "n_positions") == 0)
            s = want_int(src, key, v, ST_MODEL_MAX_POSITIONS, &c.n_positions);
        else if (strcmp(key, "n_ctx") == 0)
            s = want_int(src, key, v, ST_MODEL_MAX_POSITIONS, &n_ctx);
        else if (strcmp(key, "n_embd") == 0)
            s = want_int(src, key, v, ST_MODEL_MAX_EMBD, &c.n_embd);
        else if (strcmp(key, "n_layer") == 0)
            s = want_int(src, key, v, ST_MODEL_MAX_LAYERS, &c.n_layer);
        else if (strcmp(key, "n_head") == 0)
            s = want_int(src, key, v, ST_MODEL_MAX_EMBD, &c.n_head);
        else if (strcmp(key, "n_inner") == 0)
            s = json_is_null(v) ? ST_OK : want_int(src, key, v, ST_MODEL_MAX_INNER, &c.n_inner);
        else if (strcmp(key, "layer_norm_epsilon") == 0) {
            if (!json_is_number(v))
                s = st_error(ST_ERR_FORMAT, "%s: \"layer_norm_epsilon\" must be a number", src);
            else
                c.layer_norm_epsilon = (float)json_number_value(v);
        } else if (strcmp(key, "activation_function") == 0) {
            const char *a = json_string_value(v);
            if (!a || (strcmp(a, "gelu_new") != 0 && strcmp(a, "gelu_pytorch_tanh") != 0 &&
                       strcmp(a, "gelu_fast") != 0))
                s = st_error(ST_ERR_UNSUPPORTED,
                             "%s: \"activation_function\" %s%s%s is not supported: Strata "
                             "computes GELU in its tanh form (\"gelu_new\")",
                             src, a ? "\"" : "", a ? a : "(not a string)", a ? "\"" : "");
        } else if (strcmp(key, "model_type") == 0) {
            const char *m = json_string_value(v);
            if (!m || strcmp(m, "gpt2") != 0)
                s = st_error(ST_ERR_UNSUPPORTED,
                             "%s: \"model_type\" must be \"gpt2\" (Strata runs GPT-2-style "
                             "models)",
                             src);
        } else if (strcmp(key, "scale_attn_weights") == 0)
            s = want_bool(src, key, v, true, "attention scores are scaled by 1/sqrt(head size)");
        else if (strcmp(key, "tie_word_embeddings") == 0)
            s = want_bool(src, key, v, true, "the output head is tied to wte");
        else if (strcmp(key, "scale_attn_by_inverse_layer_idx") == 0)
            s = want_bool(src, key, v, false, "attention is not scaled per layer");
        else if (strcmp(key, "add_cross_attention") == 0)
            s = want_bool(src, key, v, false, "GPT-2 here is a decoder without cross-attention");
        else if (!is_ignored(key))
            s = st_error(ST_ERR_FORMAT,
                         "%s: unknown field \"%s\" (not a field of a GPT-2 config; remove it)",
                         src, key);
        if (s != ST_OK)
            goto done;
    }
    if (c.n_positions == 0)
        c.n_positions = n_ctx;
    else if (n_ctx && n_ctx != c.n_positions) {
        s = st_error(ST_ERR_FORMAT, "%s: \"n_ctx\" (%d) and \"n_positions\" (%d) disagree", src,
                     n_ctx, c.n_positions);
        goto done;
    }
    static const char *const required[] = {"vocab_size", "n_embd", "n_layer", "n_head"};
    for (size_t i = 0; i < 4; i++)
        if (!json_object_get(root, required[i])) {
            s = st_error(ST_ERR_FORMAT, "%s: required field \"%s\" is missing", src, required[i]);
            goto done;
        }
    if (c.n_positions == 0) {
        s = st_error(ST_ERR_FORMAT, "%s: required field \"n_positions\" is missing", src);
        goto done;
    }
    if (c.n_inner == 0)
        c.n_inner = 4 * c.n_embd; /* n_embd is at most 65536 here: no overflow */
    s = st_gpt_config_check(&c);
    if (s != ST_OK) {
        st_error_context("%s", src);
        goto done;
    }
    *out = c;
done:
    json_decref(root);
    return s;
}

st_status st_gpt_config_check(const st_gpt_config *c)
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
    if (!(c->layer_norm_epsilon > 0.0f && c->layer_norm_epsilon < 1.0f) ||
        isnan(c->layer_norm_epsilon))
        return st_error(ST_ERR_INVALID, "layer_norm_epsilon (%g) must be between 0 and 1",
                        (double)c->layer_norm_epsilon);
    return ST_OK;
}

st_status st_gpt_config_load(const char *path, st_gpt_config *out)
{
    char *text;
    st_status s = st_read_text_file(path, "model config", &text, NULL);
    if (s != ST_OK)
        return s;
    s = st_gpt_config_parse(text, path, out);
    free(text);
    return s;
}

char *st_gpt_config_json(const st_gpt_config *c)
{
    json_t *root = json_pack(
        "{s:[s], s:s, s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:f, s:b, s:b, s:f, s:f, s:f}",
        "architectures", "GPT2LMHeadModel", "model_type", "gpt2", "activation_function",
        "gelu_new", "vocab_size", c->vocab_size, "n_positions", c->n_positions, "n_ctx",
        c->n_positions, "n_embd", c->n_embd, "n_layer", c->n_layer, "n_head", c->n_head,
        "n_inner", c->n_inner, "layer_norm_epsilon", (double)c->layer_norm_epsilon,
        "tie_word_embeddings", 1, "scale_attn_weights", 1, "resid_pdrop", 0.0, "embd_pdrop",
        0.0, "attn_pdrop", 0.0);
    char *text = root ? json_dumps(root, JSON_INDENT(2) | JSON_SORT_KEYS) : NULL;
    json_decref(root);
    return text;
}

st_status st_gpt_config_save(const st_gpt_config *c, const char *path)
{
    char *text = st_gpt_config_json(c);
    if (!text)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory writing %s", path);
    size_t len = strlen(text);
    text[len] = '\n'; /* json_dumps leaves the terminator: the newline replaces it */
    st_status s = st_write_file_atomic(path, text, len + 1, NULL);
    free(text);
    return s;
}
