/*
 * test_model.c - config.json reading (good files, a table of bad ones, a
 * round trip) and the layer description (parameter names, shapes and counts
 * checked against GPT-2 small's known size, costs).
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "strata/model.h"
#include "tests/common.h"

/* GPT-2 small's config as Hugging Face publishes it (fields and values). */
static const char gpt2_small[] =
    "{\"activation_function\": \"gelu_new\", \"architectures\": [\"GPT2LMHeadModel\"],"
    " \"attn_pdrop\": 0.1, \"bos_token_id\": 50256, \"embd_pdrop\": 0.1,"
    " \"eos_token_id\": 50256, \"initializer_range\": 0.02, \"layer_norm_epsilon\": 1e-05,"
    " \"model_type\": \"gpt2\", \"n_ctx\": 1024, \"n_embd\": 768, \"n_head\": 12,"
    " \"n_layer\": 12, \"n_positions\": 1024, \"resid_pdrop\": 0.1,"
    " \"summary_activation\": null, \"summary_first_dropout\": 0.1,"
    " \"summary_proj_to_labels\": true, \"summary_type\": \"cls_index\","
    " \"summary_use_proj\": true, \"task_specific_params\": {\"text-generation\":"
    " {\"do_sample\": true, \"max_length\": 50}}, \"vocab_size\": 50257}";

static void reads_gpt2_small(void **state)
{
    (void)state;
    st_model_config c;
    assert_ok(st_model_config_parse(gpt2_small, "gpt2.json", &c));
    assert_int_equal(c.vocab_size, 50257);
    assert_int_equal(c.n_positions, 1024);
    assert_int_equal(c.n_embd, 768);
    assert_int_equal(c.n_layer, 12);
    assert_int_equal(c.n_head, 12);
    assert_int_equal(c.n_inner, 4 * 768);
    assert_float_equal(c.norm_eps, 1e-5f, 1e-12f);
}

static void minimal_config_gets_defaults(void **state)
{
    (void)state;
    st_model_config c;
    assert_ok(st_model_config_parse("{\"vocab_size\": 256, \"n_positions\": 64, \"n_embd\": 48,"
                                  " \"n_layer\": 2, \"n_head\": 4, \"n_inner\": null}",
                                  "mini", &c));
    assert_int_equal(c.n_inner, 192);
    assert_float_equal(c.norm_eps, 1e-5f, 1e-12f);
}

static void bad_configs_name_the_problem(void **state)
{
    (void)state;
    static const struct {
        const char *json;
        st_status status;
        const char *says;
    } cases[] = {
        {"{\"vocab_size\": 256, ", ST_ERR_FORMAT, "not valid JSON"},
        {"[1, 2]", ST_ERR_FORMAT, "JSON object"},
        {"{\"n_positions\": 8, \"n_embd\": 8, \"n_layer\": 1, \"n_head\": 2}", ST_ERR_FORMAT,
         "\"vocab_size\" is missing"},
        {"{\"vocab_size\": 9, \"n_embd\": 8, \"n_layer\": 1, \"n_head\": 2}", ST_ERR_FORMAT,
         "\"n_positions\" is missing"},
        {"{\"vocab_size\": 9, \"n_positions\": 8, \"n_embd\": 10, \"n_layer\": 1, \"n_head\": 4}",
         ST_ERR_INVALID, "not divisible by n_head"},
        {"{\"vocab_size\": 9, \"n_positions\": 8, \"n_embd\": 8, \"n_layer\": 1, \"n_head\": 2,"
         " \"n_hidden\": 3}",
         ST_ERR_FORMAT, "unknown field \"n_hidden\""},
        {"{\"vocab_size\": 9, \"n_positions\": 8, \"n_embd\": 8, \"n_layer\": 1, \"n_head\": 2,"
         " \"activation_function\": \"relu\"}",
         ST_ERR_UNSUPPORTED, "\"relu\""},
        {"{\"vocab_size\": 9, \"n_positions\": 8, \"n_embd\": 8, \"n_layer\": 1, \"n_head\": 2,"
         " \"tie_word_embeddings\": false}",
         ST_ERR_UNSUPPORTED, "tie_word_embeddings"},
        {"{\"vocab_size\": 9, \"n_positions\": 8, \"n_ctx\": 16, \"n_embd\": 8, \"n_layer\": 1,"
         " \"n_head\": 2}",
         ST_ERR_FORMAT, "disagree"},
        {"{\"vocab_size\": -9, \"n_positions\": 8, \"n_embd\": 8, \"n_layer\": 1, \"n_head\": 2}",
         ST_ERR_FORMAT, "\"vocab_size\" must be an integer from 1 to 16777216"},
        {"{\"vocab_size\": \"9\", \"n_positions\": 8, \"n_embd\": 8, \"n_layer\": 1,"
         " \"n_head\": 2}",
         ST_ERR_FORMAT, "must be an integer from 1"},
        /* Sizes beyond the limits are refused before anything is allocated; 4 x n_embd
         * (the default n_inner) can no longer overflow. */
        {"{\"vocab_size\": 9, \"n_positions\": 8, \"n_embd\": 8, \"n_layer\": 3000000,"
         " \"n_head\": 2}",
         ST_ERR_FORMAT, "\"n_layer\" must be an integer from 1 to 4096"},
        {"{\"vocab_size\": 9, \"n_positions\": 8, \"n_embd\": 1073741824, \"n_layer\": 1,"
         " \"n_head\": 2}",
         ST_ERR_FORMAT, "\"n_embd\" must be an integer from 1 to 65536"},
        {"{\"vocab_size\": 9, \"vocab_size\": 10, \"n_positions\": 8, \"n_embd\": 8,"
         " \"n_layer\": 1, \"n_head\": 2}",
         ST_ERR_FORMAT, "duplicate"},
        {"{\"vocab_size\": 9, \"n_positions\": 8, \"n_embd\": 8, \"n_layer\": 1, \"n_head\": 2,"
         " \"layer_norm_epsilon\": 0}",
         ST_ERR_INVALID, "layer_norm_epsilon"},
        {"{\"vocab_size\": 9, \"n_positions\": 8, \"n_embd\": 8, \"n_layer\": 1, \"n_head\": 2,"
         " \"model_type\": \"bert\"}",
         ST_ERR_UNSUPPORTED, "\"bert\" is not supported"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        st_model_config c;
        st_status s = st_model_config_parse(cases[i].json, "bad.json", &c);
        if (s != cases[i].status)
            fail_msg("case %zu: got %s, wanted %s (%s)", i, st_status_name(s),
                     st_status_name(cases[i].status), st_last_error());
        assert_contains(st_last_error(), "bad.json");
        assert_contains(st_last_error(), cases[i].says);
    }
    st_model_config c;
    assert_int_equal(st_model_config_load("/nonexistent/config.json", &c), ST_ERR_NOT_FOUND);
    assert_contains(st_last_error(), "/nonexistent/config.json");
}

static void save_and_load_round_trip(void **state)
{
    (void)state;
    st_model_config a = {.vocab_size = 256, .n_positions = 32, .n_embd = 64, .n_layer = 3,
                       .n_head = 4, .n_inner = 100, .norm_eps = 1e-6f};
    char path[] = "/tmp/strata-config-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    assert_ok(st_model_config_save(&a, path));
    st_model_config b;
    assert_ok(st_model_config_load(path, &b));
    unlink(path);
    assert_int_equal(b.vocab_size, 256);
    assert_int_equal(b.n_positions, 32);
    assert_int_equal(b.n_embd, 64);
    assert_int_equal(b.n_layer, 3);
    assert_int_equal(b.n_head, 4);
    assert_int_equal(b.n_inner, 100);
    assert_float_equal(b.norm_eps, 1e-6f, 1e-12f);
}

/* TinyLlama-1.1B's config.json as transformers writes it. */
static const char *tinyllama =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"attention_bias\": false,"
    " \"attention_dropout\": 0.0, \"bos_token_id\": 1, \"eos_token_id\": 2,"
    " \"hidden_act\": \"silu\", \"hidden_size\": 2048, \"initializer_range\": 0.02,"
    " \"intermediate_size\": 5632, \"max_position_embeddings\": 2048, \"model_type\": \"llama\","
    " \"num_attention_heads\": 32, \"num_hidden_layers\": 22, \"num_key_value_heads\": 4,"
    " \"pretraining_tp\": 1, \"rms_norm_eps\": 1e-05, \"rope_scaling\": null,"
    " \"rope_theta\": 10000.0, \"tie_word_embeddings\": false, \"torch_dtype\": \"bfloat16\","
    " \"transformers_version\": \"4.35.0\", \"use_cache\": true, \"vocab_size\": 32000}";

static void reads_llama_family_configs(void **state)
{
    (void)state;
    st_model_config c;
    assert_ok(st_model_config_parse(tinyllama, "tinyllama.json", &c));
    assert_int_equal(c.family, ST_FAMILY_LLAMA);
    assert_int_equal(c.n_kv_head, 4);
    assert_int_equal(c.n_inner, 5632);
    assert_false(c.tied);
    st_model_desc *d;
    assert_ok(st_model_describe(&c, &d));
    /* 1,100,048,384: TinyLlama's published size (untied head). */
    assert_int_equal(d->param_numel, 1100048384);
    size_t layer;
    const st_param_desc *p = st_model_find_param(d, "model.layers.3.self_attn.k_proj.weight",
                                                 &layer);
    assert_non_null(p);
    assert_int_equal(layer, 4);
    assert_int_equal(p->shape[0], 256); /* nn.Linear: [out, in]; 4 heads of 64 */
    assert_int_equal(p->shape[1], 2048);
    assert_non_null(st_model_find_param(d, "lm_head.weight", NULL));
    assert_string_equal(d->layers[4].name, "layers.3");
    st_model_desc_destroy(d);
    /* Llama 3's rotary scaling, Qwen2 (q/k/v biases, a tied head), Mistral without a window */
    assert_ok(st_model_config_parse(
        "{\"model_type\": \"llama\", \"vocab_size\": 128256, \"hidden_size\": 2048,"
        " \"intermediate_size\": 8192, \"num_hidden_layers\": 16, \"num_attention_heads\": 32,"
        " \"num_key_value_heads\": 8, \"max_position_embeddings\": 131072, \"rope_theta\": 500000.0,"
        " \"rope_scaling\": {\"factor\": 32.0, \"high_freq_factor\": 4.0, \"low_freq_factor\": 1.0,"
        " \"original_max_position_embeddings\": 8192, \"rope_type\": \"llama3\"},"
        " \"tie_word_embeddings\": true, \"head_dim\": 64, \"mlp_bias\": false}",
        "llama32.json", &c));
    assert_int_equal(c.rope_type, ST_ROPE_LLAMA3);
    assert_true(c.rope_factor == 32.0 && c.rope_original_positions == 8192);
    assert_ok(st_model_describe(&c, &d));
    /* 1,235,814,400: Llama 3.2 1B's published size (tied head). */
    assert_int_equal(d->param_numel, 1235814400);
    st_model_desc_destroy(d);
    assert_ok(st_model_config_parse(
        "{\"model_type\": \"qwen2\", \"vocab_size\": 151936, \"hidden_size\": 896,"
        " \"intermediate_size\": 4864, \"num_hidden_layers\": 24, \"num_attention_heads\": 14,"
        " \"num_key_value_heads\": 2, \"max_position_embeddings\": 32768, \"rope_theta\": 1000000.0,"
        " \"sliding_window\": 32768, \"use_sliding_window\": false, \"max_window_layers\": 21,"
        " \"tie_word_embeddings\": true, \"rms_norm_eps\": 1e-06}",
        "qwen2.json", &c));
    assert_true(c.attn_bias && !c.attn_out_bias && c.tied);
    assert_ok(st_model_describe(&c, &d));
    /* 494,032,768: Qwen2-0.5B's published size. */
    assert_int_equal(d->param_numel, 494032768);
    assert_non_null(st_model_find_param(d, "model.layers.0.self_attn.q_proj.bias", NULL));
    assert_null(st_model_find_param(d, "model.layers.0.self_attn.o_proj.bias", NULL));
    st_model_desc_destroy(d);
    assert_ok(st_model_config_parse(
        "{\"model_type\": \"mistral\", \"vocab_size\": 32000, \"hidden_size\": 64,"
        " \"intermediate_size\": 160, \"num_hidden_layers\": 2, \"num_attention_heads\": 4,"
        " \"num_key_value_heads\": 2, \"max_position_embeddings\": 512, \"sliding_window\": null}",
        "mistral.json", &c));
}

static void bad_llama_configs_name_the_problem(void **state)
{
    (void)state;
#define BASE "\"model_type\": \"llama\", \"vocab_size\": 64, \"hidden_size\": 32," \
             " \"intermediate_size\": 80, \"num_hidden_layers\": 2, \"num_attention_heads\": 4," \
             " \"max_position_embeddings\": 64"
    static const struct {
        const char *json;
        st_status status;
        const char *says;
    } cases[] = {
        {"{" BASE ", \"hidden_act\": \"gelu\"}", ST_ERR_UNSUPPORTED, "\"hidden_act\" \"gelu\""},
        {"{" BASE ", \"mlp_bias\": true}", ST_ERR_UNSUPPORTED, "mlp_bias"},
        {"{" BASE ", \"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4.0}}",
         ST_ERR_UNSUPPORTED, "\"yarn\""},
        {"{" BASE ", \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0}}",
         ST_ERR_FORMAT, "original_max_position_embeddings"},
        {"{" BASE ", \"num_key_value_heads\": 3}", ST_ERR_INVALID, "not a multiple"},
        {"{" BASE ", \"head_dim\": 16}", ST_ERR_UNSUPPORTED, "head_dim"},
        {"{" BASE ", \"n_embd\": 32}", ST_ERR_FORMAT, "unknown field \"n_embd\""},
        {"{\"model_type\": \"mistral\", \"vocab_size\": 64, \"hidden_size\": 32,"
         " \"intermediate_size\": 80, \"num_hidden_layers\": 2, \"num_attention_heads\": 4,"
         " \"max_position_embeddings\": 64, \"sliding_window\": 16}",
         ST_ERR_UNSUPPORTED, "sliding_window"},
        {"{\"model_type\": \"qwen2\", \"vocab_size\": 64, \"hidden_size\": 32,"
         " \"intermediate_size\": 80, \"num_hidden_layers\": 2, \"num_attention_heads\": 4,"
         " \"max_position_embeddings\": 64, \"use_sliding_window\": true, \"sliding_window\": 8}",
         ST_ERR_UNSUPPORTED, "sliding_window"},
        {"{\"model_type\": \"llama\", \"vocab_size\": 64, \"hidden_size\": 32,"
         " \"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"max_position_embeddings\": 64}",
         ST_ERR_FORMAT, "\"intermediate_size\" is missing"},
        {"{" BASE ", \"num_attention_heads\": 2}", ST_ERR_FORMAT, "duplicate"},
    };
#undef BASE
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        st_model_config c;
        st_status s = st_model_config_parse(cases[i].json, "bad.json", &c);
        if (s != cases[i].status)
            fail_msg("case %zu: got %s, wanted %s (%s)", i, st_status_name(s),
                     st_status_name(cases[i].status), st_last_error());
        assert_contains(st_last_error(), "bad.json");
        assert_contains(st_last_error(), cases[i].says);
    }
}

/* A Llama config written by Strata reads back the same, and transformers'
 * field names are what it writes. */
static void llama_config_round_trip(void **state)
{
    (void)state;
    st_model_config a = {.family = ST_FAMILY_LLAMA, .model_type = "qwen2", .vocab_size = 300,
                         .n_positions = 128, .n_embd = 64, .n_layer = 3, .n_head = 8,
                         .n_kv_head = 2, .n_inner = 96, .norm_eps = 1e-6f, .tied = true,
                         .attn_bias = true, .rope_theta = 1e6};
    char *text = st_model_config_json(&a);
    assert_non_null(text);
    assert_contains(text, "\"Qwen2ForCausalLM\"");
    assert_contains(text, "\"num_key_value_heads\": 2");
    st_model_config b;
    assert_ok(st_model_config_parse(text, "written.json", &b));
    free(text);
    assert_int_equal(b.family, ST_FAMILY_LLAMA);
    assert_string_equal(b.model_type, "qwen2");
    assert_int_equal(b.n_kv_head, 2);
    assert_int_equal(b.n_inner, 96);
    assert_true(b.tied && b.attn_bias && !b.attn_out_bias && b.rope_theta == 1e6);
    a.model_type[0] = '\0';
    snprintf(a.model_type, sizeof a.model_type, "llama");
    a.attn_bias = false;
    a.rope_type = ST_ROPE_LLAMA3;
    a.rope_factor = 8, a.rope_low_freq_factor = 1, a.rope_high_freq_factor = 4;
    a.rope_original_positions = 64;
    text = st_model_config_json(&a);
    assert_ok(st_model_config_parse(text, "written.json", &b));
    free(text);
    assert_int_equal(b.rope_type, ST_ROPE_LLAMA3);
    assert_int_equal(b.rope_original_positions, 64);
}

static void gpt2_small_has_124m_parameters(void **state)
{
    (void)state;
    st_model_config c;
    assert_ok(st_model_config_parse(gpt2_small, "gpt2.json", &c));
    st_model_desc *d;
    assert_ok(st_model_describe(&c, &d));
    assert_int_equal(d->n_layers, 14);
    /* 124,439,808: GPT-2 small with the head tied to wte. */
    assert_int_equal(d->param_numel, 124439808);
    assert_int_equal(d->layers[0].kind, ST_LAYER_EMBEDDING);
    assert_int_equal(d->layers[13].kind, ST_LAYER_HEAD);
    assert_int_equal(d->layers[13].tied_numel, 50257u * 768u);
    assert_string_equal(d->layers[5].name, "h.4");
    size_t layer;
    const st_param_desc *p = st_model_find_param(d, "h.4.attn.c_attn.weight", &layer);
    assert_non_null(p);
    assert_int_equal(layer, 5);
    assert_int_equal(p->shape[0], 768); /* Conv1D layout: [in, out] */
    assert_int_equal(p->shape[1], 2304);
    p = st_model_find_param(d, "h.11.mlp.c_proj.weight", &layer);
    assert_non_null(p);
    assert_int_equal(p->shape[0], 3072);
    assert_int_equal(p->shape[1], 768);
    assert_null(st_model_find_param(d, "lm_head.weight", NULL));

    /* A block's products: 24 C^2 per token forward, twice that backward;
     * flash attention adds 2 C per token per position of context (the causal
     * half of 4 C), and keeps 12 floats per token (a log-sum-exp per head),
     * nothing growing with the context. */
    const st_layer_desc *b = &d->layers[1];
    double C = 768;
    assert_true(b->fwd_flops_per_token >= 24 * C * C && b->fwd_flops_per_token < 24.1 * C * C);
    assert_true(st_layer_bwd_flops(b, 2, 64) > 1.9 * st_layer_fwd_flops(b, 2, 64));
    assert_true(st_layer_fwd_flops(b, 1, 1024) > 1024 * (24 * C * C + 2 * C * 1024));
    assert_true(st_layer_fwd_flops(b, 1, 1024) < 1024 * (24.1 * C * C + 2.1 * C * 1024));
    assert_int_equal(st_layer_act_floats(b, 1, 1024) / 1024, st_layer_act_floats(b, 1, 256) / 256);
    /* The head costs 2 C V per token: the largest single product of GPT-2 small. */
    assert_true(d->layers[13].fwd_flops_per_token > 2 * C * 50257);
    assert_true(st_layer_act_floats(b, 4, 128) > 4 * 128 * (8 * C + 12));
    st_model_desc_destroy(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(reads_gpt2_small),
        cmocka_unit_test(minimal_config_gets_defaults),
        cmocka_unit_test(bad_configs_name_the_problem),
        cmocka_unit_test(save_and_load_round_trip),
        cmocka_unit_test(gpt2_small_has_124m_parameters),
        cmocka_unit_test(reads_llama_family_configs),
        cmocka_unit_test(bad_llama_configs_name_the_problem),
        cmocka_unit_test(llama_config_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
