/*
 * model.h - a GPT-2-style model as data: its configuration (config.json with
 * Hugging Face GPT-2 field names) and its description as a list of layers
 * (embedding, N transformer blocks, final norm + tied head), each with its
 * parameters (Hugging Face names and layouts), FLOPs and activation sizes.
 *
 * The planner reads the description to split a model over devices; the
 * runtime reads it to allocate parameters. Not here: OpenCL, numbers of any
 * particular run (batch, micro-batches).
 *
 * Shape letters: B batch, T sequence (time), C channels (n_embd), V vocab,
 * L layers, NH heads, HS head size (C / NH), F MLP width (n_inner, 4C).
 */
#ifndef STRATA_MODEL_H
#define STRATA_MODEL_H

#include <stdbool.h>
#include <stddef.h>

#include "strata/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The largest models Strata accepts, checked before anything is allocated
 * (every size below also keeps each product in 64-bit arithmetic). */
#define ST_MODEL_MAX_LAYERS 4096
#define ST_MODEL_MAX_EMBD 65536
#define ST_MODEL_MAX_INNER 1048576
#define ST_MODEL_MAX_VOCAB 16777216
#define ST_MODEL_MAX_POSITIONS 1048576
/* Attention without the T x T matrix (cl/flash.cl) for head sizes up to
 * this; larger heads use the T x T path. */
#define ST_FLASH_MAX_HEAD 128
#define st_attention_is_flash(n_embd, n_head) ((n_embd) / (n_head) <= ST_FLASH_MAX_HEAD)

typedef struct st_gpt_config {
    int vocab_size;           /* V */
    int n_positions;          /* longest sequence, rows of wpe */
    int n_embd;               /* C */
    int n_layer;              /* L */
    int n_head;               /* NH */
    int n_inner;              /* F; 0 in a file means 4C */
    float layer_norm_epsilon; /* 1e-5 when absent */
} st_gpt_config;

/* Reads and checks config.json. Fields of Hugging Face's GPT-2 config that do
 * not change the computation (dropout, ids, summary_*) are accepted and
 * ignored; fields that would change it to something Strata does not compute
 * (another activation, untied head) and fields GPT-2 does not have are errors
 * that name the field. */
st_status st_gpt_config_load(const char *path, st_gpt_config *out);
/* The same from text; `source` names it in messages. */
st_status st_gpt_config_parse(const char *json_text, const char *source, st_gpt_config *out);
/* Sizes from 1 to the limits above, n_embd divisible by n_head, sane epsilon. */
st_status st_gpt_config_check(const st_gpt_config *cfg);
/* Writes config.json that Hugging Face transformers loads as GPT2LMHeadModel. */
st_status st_gpt_config_save(const st_gpt_config *cfg, const char *path);
/* The config.json text of cfg (the caller frees it), for embedding. */
char *st_gpt_config_json(const st_gpt_config *cfg);

typedef enum st_layer_kind {
    ST_LAYER_EMBEDDING, /* wte, wpe: tokens -> x[B,T,C] */
    ST_LAYER_BLOCK,     /* ln_1, attn, ln_2, mlp with residuals: x -> x */
    ST_LAYER_HEAD       /* ln_f, logits through wte^T, loss: x -> loss */
} st_layer_kind;

#define ST_MAX_LAYER_PARAMS 12

typedef struct st_param_desc {
    char name[64];    /* Hugging Face name: "h.3.attn.c_attn.weight" */
    int ndim;         /* 1 or 2 */
    size_t shape[2];  /* as stored: Conv1D weights are [in, out] */
    size_t numel;
} st_param_desc;

typedef struct st_layer_desc {
    st_layer_kind kind;
    int block;              /* block index for ST_LAYER_BLOCK, else -1 */
    char name[32];          /* "embedding", "h.3", "head" */
    size_t n_params;
    st_param_desc params[ST_MAX_LAYER_PARAMS];
    size_t param_numel;     /* elements of the parameters this layer owns */
    size_t tied_numel;      /* elements it uses but another layer owns (wte for the head) */
    /* Costs per token of a sequence of length T: value = per_token + per_token_ctx * T. */
    double fwd_flops_per_token, fwd_flops_per_token_ctx;
    double bwd_flops_per_token, bwd_flops_per_token_ctx;
    /* Floats kept from forward for backward, per token (same form). */
    double act_floats_per_token, act_floats_per_token_ctx;
    size_t out_floats_per_token; /* what goes to the next layer: C (1 for the head's loss) */
} st_layer_desc;

typedef struct st_model_desc {
    st_gpt_config cfg;
    size_t n_layers; /* L + 2 */
    st_layer_desc *layers;
    size_t param_numel; /* all parameters, the tied wte counted once */
} st_model_desc;

st_status st_model_describe(const st_gpt_config *cfg, st_model_desc **out);
void st_model_desc_destroy(st_model_desc *desc);

/* Cost of a layer for B sequences of length T. */
double st_layer_fwd_flops(const st_layer_desc *l, size_t B, size_t T);
double st_layer_bwd_flops(const st_layer_desc *l, size_t B, size_t T);
double st_layer_act_floats(const st_layer_desc *l, size_t B, size_t T);

/* Finds a parameter by Hugging Face name; NULL when absent. Sets *layer. */
const st_param_desc *st_model_find_param(const st_model_desc *desc, const char *name,
                                         size_t *layer);

#ifdef __cplusplus
}
#endif

#endif
