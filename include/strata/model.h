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
#include <stdint.h>

#include "strata/dtype.h"
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

typedef enum st_family {
    ST_FAMILY_GPT2,  /* LayerNorm, learned positions, GELU MLP, tied head, biases */
    ST_FAMILY_LLAMA, /* RMSNorm, rotary positions, SwiGLU MLP, grouped-query attention */
    ST_FAMILIES
} st_family;

/* "gpt2", "llama" */
const char *st_family_name(st_family f);

/* Rotary embedding frequencies: as written, or rescaled as Llama 3 does. */
typedef enum st_rope_type { ST_ROPE_DEFAULT, ST_ROPE_LLAMA3 } st_rope_type;

/* LoRA (low-rank adapters): each targeted projection W [out, in] gains
 * A [rank, in] and B [out, rank], and computes x W^T + (alpha / rank)
 * (x A^T) B^T; the base weights are frozen and only A and B train. The
 * targets are bits of the family's projections (st_lora_target_names). */
typedef struct st_lora {
    int rank;          /* 0: no adapters */
    float alpha;
    unsigned targets;  /* bit i: st_lora_target_names(family)[i] */
} st_lora;

typedef struct st_model_config {
    st_family family;
    char model_type[16];      /* config.json's model_type: "gpt2", "llama", "mistral", "qwen2" */
    int vocab_size;           /* V */
    int n_positions;          /* longest sequence (max_position_embeddings) */
    int n_embd;               /* C (hidden_size) */
    int n_layer;              /* L */
    int n_head;               /* NH */
    int n_kv_head;            /* KV heads (num_key_value_heads); GPT-2: NH */
    int n_inner;              /* F (intermediate_size); GPT-2: 0 in a file means 4C */
    float norm_eps;           /* layer_norm_epsilon / rms_norm_eps */
    /* Llama family */
    bool tied;                /* the output head is the token embedding (GPT-2: always) */
    bool attn_bias;           /* q, k, v projections have biases (Qwen2; Llama's attention_bias) */
    bool attn_out_bias;       /* so does the output projection (Llama's attention_bias) */
    double rope_theta;
    st_rope_type rope_type;
    double rope_factor, rope_low_freq_factor, rope_high_freq_factor;
    int rope_original_positions;
    /* Adapters trained on the model (not part of config.json: a run's
     * settings keep them). */
    st_lora lora;
    /* How the 2-D weights that do not train are stored on the devices: F32
     * (0, the default), or BF16 / F16 (st_param_storage): every matrix of an
     * inference stage, the frozen base of a LoRA run. Products widen them
     * to float (exactly) as they read; the arithmetic is float. */
    st_dtype weights;
} st_model_config;

/* The projections LoRA can target in a family, in bit order, NULL-ended:
 * the names PEFT's target_modules use ("q_proj", ...). */
const char *const *st_lora_target_names(st_family f);
/* Parses "q_proj,v_proj" or "all" into bits; an error names a wrong one. */
st_status st_lora_targets_parse(st_family f, const char *list, unsigned *targets);
/* "q_proj,k_proj,..." of the bits. */
void st_lora_targets_format(st_family f, unsigned targets, char *out, size_t size);

/* Reads and checks config.json. Fields of Hugging Face's GPT-2 config that do
 * not change the computation (dropout, ids, summary_*) are accepted and
 * ignored; fields that would change it to something Strata does not compute
 * (another activation, untied head) and fields GPT-2 does not have are errors
 * that name the field. */
st_status st_model_config_load(const char *path, st_model_config *out);
/* The same from text; `source` names it in messages. */
st_status st_model_config_parse(const char *json_text, const char *source, st_model_config *out);
/* The family's defaults for fields left 0 (key/value heads = heads, GPT-2's
 * tied head, model_type, rope_theta 10000): for a config built in code. */
void st_model_config_complete(st_model_config *cfg);
/* Sizes from 1 to the limits above, n_embd divisible by n_head, sane epsilon. */
st_status st_model_config_check(const st_model_config *cfg);
/* Writes config.json that Hugging Face transformers loads as GPT2LMHeadModel. */
st_status st_model_config_save(const st_model_config *cfg, const char *path);
/* The config.json text of cfg (the caller frees it), for embedding. */
char *st_model_config_json(const st_model_config *cfg);

/* A layer's place in the model: the first layer turns tokens into the
 * residual stream, blocks map it to itself, the last layer ends in the loss.
 * The pipeline and the planner need only this. */
typedef enum st_layer_kind {
    ST_LAYER_EMBEDDING, /* tokens -> x[B,T,C] */
    ST_LAYER_BLOCK,     /* x -> x */
    ST_LAYER_HEAD       /* x -> logits, loss */
} st_layer_kind;

/* What computes a layer: each type has an operations table in the stage
 * (src/stage/layer.h) and is described by its family's file in src/model/. */
typedef enum st_layer_type {
    ST_GPT2_EMBEDDING,  /* wte[tok] + wpe[pos] */
    ST_GPT2_BLOCK,      /* LN, attention (qkv bias), LN, GELU MLP, biases */
    ST_GPT2_HEAD,       /* LN, logits through the tied wte, loss */
    ST_LLAMA_EMBEDDING, /* embed_tokens[tok] */
    ST_LLAMA_BLOCK,     /* RMSNorm, RoPE GQA attention, RMSNorm, SwiGLU MLP */
    ST_LLAMA_HEAD,      /* RMSNorm, logits through lm_head (or the tied embedding), loss */
    ST_LAYER_TYPES
} st_layer_type;

#define ST_MAX_LAYER_PARAMS 32

/* How a parameter starts (st_stage_init): a constant, or normal with a
 * standard deviation, drawn from a generator keyed by the seed and the
 * parameter's name, so that any split of the model starts the same. */
typedef enum st_init { ST_INIT_ZERO, ST_INIT_ONE, ST_INIT_NORMAL } st_init;

typedef struct st_param_desc {
    char name[64];    /* checkpoint (Hugging Face) name: "h.3.attn.c_attn.weight" */
    int ndim;         /* 1 or 2 */
    size_t shape[2];  /* as stored: GPT-2's Conv1D [in, out], nn.Linear [out, in] */
    size_t numel;
    st_init init;
    double init_std;  /* ST_INIT_NORMAL */
    bool decay;       /* AdamW's weight decay applies */
    bool in_out;      /* a 2-D weight stored [in, out] (GPT-2's Conv1D), else [out, in] */
    bool frozen;      /* not trained: no gradient, no AdamW moments */
    bool adapter;     /* a LoRA matrix (lora_A / lora_B), not part of the base model */
} st_param_desc;

/* A parameter a layer uses but another layer owns (a tied head). */
typedef struct st_tied_ref {
    size_t layer, param; /* the owner: desc->layers[layer].params[param] */
} st_tied_ref;

typedef struct st_layer_desc {
    st_layer_kind kind;
    st_layer_type type;
    int block;              /* block index for ST_LAYER_BLOCK, else -1 */
    char name[32];          /* "embedding", "h.3", "head" */
    size_t n_params;
    st_param_desc params[ST_MAX_LAYER_PARAMS];
    size_t param_numel;     /* elements of the parameters this layer owns */
    size_t n_tied;          /* parameters it uses that another layer owns */
    st_tied_ref tied[2];
    size_t tied_numel;
    /* Costs per token of a sequence of length T: value = per_token + per_token_ctx * T. */
    double fwd_flops_per_token, fwd_flops_per_token_ctx;
    double bwd_flops_per_token, bwd_flops_per_token_ctx;
    /* Device memory, in floats, that the stage allocates for the layer
     * (st_stage_sizes); N = B*T rows of a micro-batch:
     *   act:   kept from forward for backward, per micro-batch in flight:
     *          N * act_per_token + N * T * act_per_token_ctx
     *   work:  the backward's scratch, shared by a stage's layers (the
     *          largest counts): N * work_per_token + N * T * work_per_token_ctx
     *   dec:   decoding one token, shared: dec + S * dec_per_position
     *          (S: KV cache positions)
     *   kv:    the KV cache, per sequence: S * kv_per_position
     *   consts: tables the layer keeps (rotary frequencies) */
    size_t act_per_token, act_per_token_ctx;
    size_t work_per_token, work_per_token_ctx;
    size_t dec, dec_per_position, kv_per_position;
    size_t consts;
    size_t out_floats_per_token; /* what goes to the next layer: C (1 for the head's loss) */
    /* Kernel launches per micro-batch (forward, backward) and per decoded
     * token; `strata train --profile` counts them. */
    int launches_fwd, launches_bwd, launches_dec;
} st_layer_desc;

typedef struct st_model_desc {
    st_model_config cfg;
    size_t n_layers;    /* L + 2 */
    st_layer_desc *layers;
    size_t param_numel; /* all parameters, tied ones counted once */
    size_t train_numel; /* those not frozen */
    bool any_frozen;
} st_model_desc;

/* The description of cfg's family: its layers, parameters and sizes. */
st_status st_model_describe(const st_model_config *cfg, st_model_desc **out);
void st_model_desc_destroy(st_model_desc *desc);

/* Cost of a layer for B sequences of length T. */
double st_layer_fwd_flops(const st_layer_desc *l, size_t B, size_t T);
double st_layer_bwd_flops(const st_layer_desc *l, size_t B, size_t T);
/* Floats of its activations for one micro-batch of B x T. */
size_t st_layer_act_floats(const st_layer_desc *l, size_t B, size_t T);

/* Finds a parameter by checkpoint name; NULL when absent. Sets *layer. */
const st_param_desc *st_model_find_param(const st_model_desc *desc, const char *name,
                                         size_t *layer);

/* ---- a stage: a contiguous range of layers on one device ------------------ */

/* Parts of the gradient norm's first pass: the stage keeps this many floats. */
#define ST_SUMSQ_PARTS 4096

/* What a stage is made for. */
typedef struct st_stage_options {
    size_t first_layer, end_layer; /* layers [first, end) of the description; 0, 0: all */
    int batch, seq;                /* largest micro-batch B x T; 0: no training buffers */
    int slots;                     /* activation sets (micro-batches in flight); 0 means 1 */
    bool training;                 /* gradients and AdamW moments */
    int kv_seq;                    /* decoding: KV cache length; 0: no decoding */
    int kv_seqs;                   /* decoding: sequences with their own cache; 0 means 1 */
    int prefill;                   /* decoding: tokens of one sequence a pass may take (a
                                      prompt's chunk); 0 means 1 */
    bool recompute;                /* training: blocks keep their input only, and run their
                                      forward again before their backward (one set of block
                                      activations for the stage instead of one per slot) */
    int shards, shard;             /* training: the AdamW moments split over `shards`
                                      replicas of the stage (ZeRO stage 1), this one holding
                                      and updating part `shard`; 0 or 1: unsplit */
} st_stage_options;

/* Rows one decoding pass may hold: a prompt's chunk (prefill), or a token
 * of every cached sequence (batched decoding), whichever is more. */
static inline int st_decode_rows(int prefill, int kv_seqs)
{
    int p = prefill > 1 ? prefill : 1, q = kv_seqs > 1 ? kv_seqs : 1;
    return p > q ? p : q;
}

/* The buffers a stage allocates, from the description alone: the stage
 * allocates exactly these, and the planner predicts a stage's memory with
 * them (one computation, so the two cannot disagree). */
/* A parameter's storage on a stage: the config's 16-bit weights type for a
 * 2-D base weight that does not train (every one when !training, the
 * frozen ones when training), else F32. */
st_dtype st_param_storage(const st_model_desc *d, const st_param_desc *p, bool training);
/* The KV cache's storage on an inference stage: the config's 16-bit
 * weights type when every block's attention reads its cache through
 * cl/flash.cl (head sizes up to ST_FLASH_MAX_HEAD; larger heads read it by
 * products over float rows), else F32. Keys and values are rounded to it
 * (to nearest even) as they are written; the arithmetic is float. */
st_dtype st_kv_storage(const st_model_desc *d);
/* The most floats a stage's widening scratch holds (16 MiB): a larger
 * matrix is widened and multiplied a block of rows at a time. */
#define ST_UNPACK_FLOATS ((size_t)1 << 22)

typedef struct st_stage_sizes {
    size_t param_numel;      /* its parameters with copies of tied ones */
    size_t half_numel;       /* of them stored in 16 bits (st_param_storage) */
    size_t unpack_floats;    /* the scratch its 16-bit matrices are widened into for
                              * products: the largest, up to ST_UNPACK_FLOATS */
    size_t train_numel;      /* of them not frozen: the gradient buffer */
    size_t moment_numel;     /* each AdamW moment buffer: train_numel, or its share of a
                              * split over replicas (st_stage_sizes_shard) */
    int param_buffers;       /* 1, or 4 when training (gradients, two AdamW moments) */
    size_t adam_run_ints;    /* AdamW's decay runs */
    size_t slot_floats;      /* per slot: boundary tensors and every layer's activations
                              * (recomputing: the blocks' inputs instead of theirs) */
    size_t slot_ints;        /* per slot: tokens, targets and positions */
    size_t work_floats;      /* backward scratch: the flowing gradient, the layers' work,
                              * the gradient norm's partial sums */
    size_t recompute_floats; /* recomputing: one block's activations, shared by the slots */
    size_t kept_floats;      /* recomputing: per slot, the blocks' inputs (in slot_floats) */
    size_t consts;           /* the layers' tables */
    size_t decode_floats;    /* decoding work, and KV caches stored as floats */
    size_t kv_half_numel;    /* KV caches stored in 16 bits (st_kv_storage) */
    size_t decode_ints;
    uint64_t bytes;          /* everything, for the options' slots */
} st_stage_sizes;

st_status st_stage_sizes_of(const st_model_desc *desc, const st_stage_options *opt,
                            st_stage_sizes *out);
/* The moments split over `shards` replicas (options.shards): each holds
 * ceil(train_numel / shards) of each moment. */
void st_stage_sizes_shard(st_stage_sizes *z, int shards);

/* The same for many ranges of one model and shape (the planner's search):
 * made once, each range answered in about constant time. The shape's
 * layers and slots are ignored; slots come with each range. */
typedef struct st_sizes_table st_sizes_table;
st_status st_sizes_table_make(const st_model_desc *desc, const st_stage_options *shape,
                              st_sizes_table **out);
void st_sizes_table_range(const st_sizes_table *t, size_t first, size_t end, int slots,
                          st_stage_sizes *out);
void st_sizes_table_free(st_sizes_table *t);

#ifdef __cplusplus
}
#endif

#endif
