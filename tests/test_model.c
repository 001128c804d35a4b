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
    st_gpt_config c;
    assert_ok(st_gpt_config_parse(gpt2_small, "gpt2.json", &c));
    assert_int_equal(c.vocab_size, 50257);
    assert_int_equal(c.n_positions, 1024);
    assert_int_equal(c.n_embd, 768);
    assert_int_equal(c.n_layer, 12);
    assert_int_equal(c.n_head, 12);
    assert_int_equal(c.n_inner, 4 * 768);
    assert_float_equal(c.layer_norm_epsilon, 1e-5f, 1e-12f);
}

static void minimal_config_gets_defaults(void **state)
{
    (void)state;
    st_gpt_config c;
    assert_ok(st_gpt_config_parse("{\"vocab_size\": 256, \"n_positions\": 64, \"n_embd\": 48,"
                                  " \"n_layer\": 2, \"n_head\": 4, \"n_inner\": null}",
                                  "mini", &c));
    assert_int_equal(c.n_inner, 192);
    assert_float_equal(c.layer_norm_epsilon, 1e-5f, 1e-12f);
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
         " \"model_type\": \"llama\"}",
         ST_ERR_UNSUPPORTED, "gpt2"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        st_gpt_config c;
        st_status s = st_gpt_config_parse(cases[i].json, "bad.json", &c);
        if (s != cases[i].status)
            fail_msg("case %zu: got %s, wanted %s (%s)", i, st_status_name(s),
                     st_status_name(cases[i].status), st_last_error());
        assert_contains(st_last_error(), "bad.json");
        assert_contains(st_last_error(), cases[i].says);
    }
    st_gpt_config c;
    assert_int_equal(st_gpt_config_load("/nonexistent/config.json", &c), ST_ERR_NOT_FOUND);
    assert_contains(st_last_error(), "/nonexistent/config.json");
}

static void save_and_load_round_trip(void **state)
{
    (void)state;
    st_gpt_config a = {.vocab_size = 256, .n_positions = 32, .n_embd = 64, .n_layer = 3,
                       .n_head = 4, .n_inner = 100, .layer_norm_epsilon = 1e-6f};
    char path[] = "/tmp/strata-config-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    assert_ok(st_gpt_config_save(&a, path));
    st_gpt_config b;
    assert_ok(st_gpt_config_load(path, &b));
    unlink(path);
    assert_int_equal(b.vocab_size, 256);
    assert_int_equal(b.n_positions, 32);
    assert_int_equal(b.n_embd, 64);
    assert_int_equal(b.n_layer, 3);
    assert_int_equal(b.n_head, 4);
    assert_int_equal(b.n_inner, 100);
    assert_float_equal(b.layer_norm_epsilon, 1e-6f, 1e-12f);
}

static void gpt2_small_has_124m_parameters(void **state)
{
    (void)state;
    st_gpt_config c;
    assert_ok(st_gpt_config_parse(gpt2_small, "gpt2.json", &c));
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
    assert_true(fabs(st_layer_act_floats(b, 1, 1024) / 1024 - st_layer_act_floats(b, 1, 256) / 256) <
                1e-9);
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
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
