/*
 * gpt.h - a GPT-2-style model, or a contiguous range of its layers (a
 * stage), on one OpenCL device: parameters, gradients, AdamW state,
 * activations, forward, backward, optimizer step and KV-cache decoding.
 *
 * All parameters of the stage live in one buffer, in the order of the model
 * description (st_model_describe); gradients and the two Adam moments share
 * that layout, so the optimizer and the gradient norm are flat loops. A stage
 * that holds the head but not the embedding keeps its own copy of the tied
 * `wte.weight` (marked tied): the caller keeps the copies equal.
 *
 * Activations are kept per slot (one slot per micro-batch in flight); the
 * gradient scratch is shared, since one backward runs at a time.
 *
 * Usage (one device, the whole model):
 *   st_gpt_options o = {.batch = B, .seq = T, .slots = 1, .training = true};
 *   st_gpt_create(dev, desc, &o, &g);  st_gpt_init(g, seed);
 *   st_gpt_zero_grad(g);
 *   st_gpt_forward(g, 0, tokens, targets, B, T);
 *   st_gpt_loss(g, 0, targets, B, T, &sum, &count);
 *   st_gpt_backward(g, 0, B, T, 1.0f / count);
 *   st_gpt_grad_sumsq(g, &ss);  st_gpt_step(g, &hp, step, scale);
 *
 * Not here: data, schedules, links between stages, files.
 */
#ifndef STRATA_GPT_H
#define STRATA_GPT_H

#include <stdbool.h>
#include <stdint.h>

#include "strata/layers.h"
#include "strata/model.h"
#include "strata/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct st_gpt st_gpt;

typedef struct st_gpt_options {
    size_t first_layer, end_layer; /* layers [first, end) of the description; 0, 0: all */
    int batch, seq;                /* largest micro-batch B x T; 0: no training buffers */
    int slots;                     /* activation sets (micro-batches in flight); 0 means 1 */
    bool training;                 /* gradients and AdamW moments */
    int kv_seq;                    /* decoding: KV cache length; 0: no decoding */
    int kv_seqs;                   /* decoding: sequences with their own cache; 0 means 1 */
} st_gpt_options;

st_status st_gpt_create(st_device *dev, const st_model_desc *desc, const st_gpt_options *opt,
                        st_gpt **out);
void st_gpt_destroy(st_gpt *g);

st_device *st_gpt_device(const st_gpt *g);
bool st_gpt_has_embedding(const st_gpt *g);
bool st_gpt_has_head(const st_gpt *g);

/* Parameters of the stage, in buffer order. */
typedef struct st_gpt_param {
    const st_param_desc *desc; /* name, shape */
    size_t offset;             /* elements into the stage's parameter buffer */
    bool tied;                 /* a copy of a parameter another stage owns */
} st_gpt_param;

size_t st_gpt_n_params(const st_gpt *g);
const st_gpt_param *st_gpt_param_at(const st_gpt *g, size_t i);
/* Index of the parameter with this name, or -1. */
long st_gpt_param_find(const st_gpt *g, const char *name);
size_t st_gpt_param_numel(const st_gpt *g); /* elements of the whole buffer */
/* Memory the stage holds on its device, in bytes. */
uint64_t st_gpt_bytes(const st_gpt *g);

/* Which buffer to read or write. */
typedef enum st_gpt_buf { ST_GPT_PARAMS, ST_GPT_GRADS, ST_GPT_ADAM_M, ST_GPT_ADAM_V } st_gpt_buf;
st_status st_gpt_read(const st_gpt *g, st_gpt_buf which, size_t param, float *host);
st_status st_gpt_write(st_gpt *g, st_gpt_buf which, size_t param, const float *host);
st_tensor *st_gpt_tensor(const st_gpt *g, st_gpt_buf which);

/* GPT-2's initialisation: weights N(0, 0.02), residual projections
 * N(0, 0.02/sqrt(2L)), biases 0, LayerNorm weights 1. Each parameter draws
 * from a generator keyed by seed and its name, so any split of the model
 * starts from the same weights. Moments are zeroed. */
st_status st_gpt_init(st_gpt *g, uint64_t seed);

/* Training, on micro-batches of B sequences of T tokens (B, T at most the
 * sizes given at creation). tokens: [B*T] for a stage with the embedding
 * (else the input comes from st_gpt_io); targets: [B*T], < 0 for no loss,
 * needed by the stage with the head (NULL there: logits kept, no loss). */
st_status st_gpt_zero_grad(st_gpt *g);
st_status st_gpt_forward(st_gpt *g, int slot, const int32_t *tokens, const int32_t *targets,
                         int B, int T);
/* Sum of the per-token losses of a slot and how many tokens had a target
 * (targets: the ones given to the forward); waits for the forward. */
st_status st_gpt_loss(st_gpt *g, int slot, const int32_t *targets, int B, int T, double *sum,
                      long *count);
/* Accumulates the gradients of a slot; dloss scales each token's loss
 * (1 / tokens counted over the whole step). */
st_status st_gpt_backward(st_gpt *g, int slot, int B, int T, float dloss);
/* The head's output of a slot: probabilities [B*T, V] after a forward with
 * targets, logits without. */
st_status st_gpt_output_read(st_gpt *g, int slot, int B, int T, float *host);

/* Boundary tensors of a stage [B*T, C]: the input of a stage without the
 * embedding, the output of a stage without the head, and their gradients. */
typedef enum st_gpt_io { ST_GPT_IN, ST_GPT_OUT, ST_GPT_DIN, ST_GPT_DOUT } st_gpt_io;
st_tensor *st_gpt_io_tensor(const st_gpt *g, int slot, st_gpt_io which);

/* Sum of squares of all gradients (tied copies excluded), fixed order. */
st_status st_gpt_grad_sumsq(st_gpt *g, double *out);
/* AdamW at step t (from 1); weight decay on 2-D weights only; grad_scale
 * multiplies the gradients first (clipping). */
st_status st_gpt_step(st_gpt *g, const st_adamw_hparams *h, long t, float grad_scale);

/* Decoding one sequence with the KV cache (kv_seq > 0 at creation): feeds
 * token `tok` at position pos (0, 1, 2, ... in order; pos 0 starts over) and,
 * for the stage with the head, writes the next-token logits [V] to host. */
st_status st_gpt_decode(st_gpt *g, int tok, int pos, float *logits);
/* The same for sequence `seq` of kv_seqs, each with its own cache. */
st_status st_gpt_decode_seq(st_gpt *g, int seq, int tok, int pos, float *logits);
/* The decoding activation [C]: the input of a stage without the embedding
 * (written by the caller before st_gpt_decode), the output of one without
 * the head. */
st_tensor *st_gpt_decode_x(const st_gpt *g);

#ifdef __cplusplus
}
#endif

#endif
