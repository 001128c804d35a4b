/*
 * stage.h - a model, or a contiguous range of its layers (a stage), on one
 * OpenCL device: parameters, gradients, AdamW state, activations, forward,
 * backward, optimizer step and KV-cache decoding, for any family: each
 * layer runs through its type's operations table (src/stage/layer.h).
 *
 * All parameters of the stage live in one buffer, in the order of the model
 * description (st_model_describe); gradients and the two Adam moments share
 * that layout, so the optimizer and the gradient norm are flat loops. A stage
 * that uses a tied parameter another stage owns (the head's copy of the
 * embedding) keeps its own copy (marked tied): the caller keeps the copies
 * equal (st_pipe sums their gradients).
 *
 * Activations are kept per slot (one slot per micro-batch in flight); the
 * gradient scratch is shared, since one backward runs at a time. Every
 * buffer is sized by st_stage_sizes_of (strata/model.h), as the planner
 * predicts it.
 *
 * Usage (one device, the whole model):
 *   st_stage_options o = {.batch = B, .seq = T, .slots = 1, .training = true};
 *   st_stage_create(dev, desc, &o, &g);  st_stage_init(g, seed);
 *   st_stage_zero_grad(g);
 *   st_stage_forward(g, 0, tokens, targets, B, T);
 *   st_stage_loss(g, 0, targets, B, T, &sum, &count);
 *   st_stage_backward(g, 0, B, T, 1.0f / count);
 *   st_stage_grad_sumsq(g, per_layer);  st_stage_step(g, &hp, step, scale);
 *
 * Not here: data, schedules, links between stages, files.
 */
#ifndef STRATA_STAGE_H
#define STRATA_STAGE_H

#include <stdbool.h>
#include <stdint.h>

#include "strata/layers.h"
#include "strata/model.h"
#include "strata/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct st_stage st_stage;

/* st_stage_options: strata/model.h (the planner sizes stages with it too). */

st_status st_stage_create(st_device *dev, const st_model_desc *desc, const st_stage_options *opt,
                        st_stage **out);
void st_stage_destroy(st_stage *g);

st_device *st_stage_device(const st_stage *g);
bool st_stage_has_embedding(const st_stage *g);
bool st_stage_has_head(const st_stage *g);

/* Parameters of the stage, in buffer order. */
typedef struct st_stage_param {
    const st_param_desc *desc; /* name, shape */
    size_t offset;             /* elements into the stage's parameter buffer (of its type) */
    bool tied;                 /* a copy of a parameter another stage owns */
    st_dtype dtype;            /* its storage (st_param_storage): F32, or in the 16-bit
                                * buffer (st_stage_half_tensor) */
} st_stage_param;

size_t st_stage_n_layers(const st_stage *g); /* end - first */
size_t st_stage_n_params(const st_stage *g);
const st_stage_param *st_stage_param_at(const st_stage *g, size_t i);
/* Index of the parameter with this name, or -1. */
long st_stage_param_find(const st_stage *g, const char *name);
size_t st_stage_param_numel(const st_stage *g); /* elements of the whole buffer */
/* Elements of the gradient and of each moment buffer: the parameters that
 * train (frozen ones have none), first in the parameter buffer; 0 without
 * training. */
size_t st_stage_train_numel(const st_stage *g);
/* The trained elements whose moments this stage holds and updates: all
 * of them, or its part when the moments are split over replicas
 * (options.shards); [*lo, *hi) of the parameter buffer. */
void st_stage_moment_range(const st_stage *g, size_t *lo, size_t *hi);
/* A stage whose moments are split: the stages of every part, in part
 * order (itself among them; they outlive it), through which
 * st_stage_read and st_stage_write reach a parameter's whole moments. */
void st_stage_set_peers(st_stage *g, st_stage *const *peers);
/* Split moments whose other parts live in other processes: both moments
 * whole on the host (train_numel floats each; NULL, NULL: none), which
 * st_stage_read then reads (for a save). st_stage_write writes this
 * stage's part only. */
void st_stage_moments_host(st_stage *g, const float *m, const float *v);
/* Memory the stage holds on its device, in bytes. */
uint64_t st_stage_bytes(const st_stage *g);

/* Which buffer to read or write. */
typedef enum st_stage_buf { ST_STAGE_PARAMS, ST_STAGE_GRADS, ST_STAGE_ADAM_M, ST_STAGE_ADAM_V } st_stage_buf;
st_status st_stage_read(const st_stage *g, st_stage_buf which, size_t param, float *host);
st_status st_stage_write(st_stage *g, st_stage_buf which, size_t param, const float *host);
st_tensor *st_stage_tensor(const st_stage *g, st_stage_buf which);
/* The parameters stored in 16 bits (st_param_storage; offsets in
 * st_stage_param), or NULL when there are none. */
st_tensor *st_stage_half_tensor(const st_stage *g);

/* The description's initialisation (st_param_desc.init): each parameter
 * draws from a generator keyed by seed and its name, so any split of the
 * model starts from the same weights. Moments are zeroed. */
st_status st_stage_init(st_stage *g, uint64_t seed);

/* Training, on micro-batches of B sequences of T tokens (B, T at most the
 * sizes given at creation). tokens: [B*T] for a stage with the embedding
 * (else the input comes from st_stage_io); targets: [B*T], < 0 for no loss,
 * needed by the stage with the head (NULL there: logits kept, no loss). */
st_status st_stage_zero_grad(st_stage *g);
/* Packed documents (strata/layers.h): pos [B*T] is each token's position in
 * its own document, for the slot's next forwards and backwards (until set
 * again); NULL, or positions 0 .. T-1 in every sequence: one document a
 * sequence. Refuses a table that does not count 0, 1, 2, ... within each
 * document (st_positions_check). */
st_status st_stage_positions(st_stage *g, int slot, const int32_t *pos, int B, int T);
st_status st_positions_check(const int32_t *pos, int B, int T);
st_status st_stage_forward(st_stage *g, int slot, const int32_t *tokens, const int32_t *targets,
                         int B, int T);
/* Sum of the per-token losses of a slot and how many tokens had a target
 * (targets: the ones given to the forward); waits for the forward. */
st_status st_stage_loss(st_stage *g, int slot, const int32_t *targets, int B, int T, double *sum,
                      long *count);
/* Accumulates the gradients of a slot; dloss scales each token's loss
 * (1 / tokens counted over the whole step). */
st_status st_stage_backward(st_stage *g, int slot, int B, int T, float dloss);
/* The head's output of a slot: probabilities [B*T, V] after a forward with
 * targets, logits without. */
st_status st_stage_output_read(st_stage *g, int slot, int B, int T, float *host);

/* Boundary tensors of a stage [B*T, C]: the input of a stage without the
 * embedding, the output of a stage without the head, and their gradients. */
typedef enum st_stage_io { ST_STAGE_IN, ST_STAGE_OUT, ST_STAGE_DIN, ST_STAGE_DOUT } st_stage_io;
st_tensor *st_stage_io_tensor(const st_stage *g, int slot, st_stage_io which);

/* Per layer of the stage (first to end), the sum of squares of its own
 * gradients (tied copies excluded), in a fixed order that does not depend on
 * the stage's other layers: per_layer holds end - first floats. */
st_status st_stage_grad_sumsq(st_stage *g, float *per_layer);
/* AdamW at step t (from 1); weight decay where the description says; grad_scale
 * multiplies the gradients first (clipping). */
st_status st_stage_step(st_stage *g, const st_adamw_hparams *h, long t, float grad_scale);

/* Decoding one sequence with the KV cache (kv_seq > 0 at creation): feeds
 * token `tok` at position pos (0, 1, 2, ... in order; pos 0 starts over) and,
 * for the stage with the head, writes the next-token logits [V] to host. */
st_status st_stage_decode(st_stage *g, int tok, int pos, float *logits);
/* The same for sequence `seq` of kv_seqs, each with its own cache. */
st_status st_stage_decode_seq(st_stage *g, int seq, int tok, int pos, float *logits);
/* n tokens of sequence seq at positions pos .. pos + n - 1 in one pass (a
 * prompt read at once, prefill; n from 1 to the options' prefill): one
 * product per linear layer for all of them, their keys and values into the
 * cache, each attending the positions up to its own. The logits are the
 * last token's; each token's computation is the one decoding it alone does
 * (the tests compare them). The decoding activation holds n rows. */
st_status st_stage_prefill_seq(st_stage *g, int seq, const int *tok, int n, int pos,
                               float *logits);
/* The most tokens st_stage_prefill_seq takes at once (the options' prefill). */
int st_stage_prefill_max(const st_stage *g);

/* A decoding pass of n rows, each a token of one of the cached sequences:
 * tokens decoded for many sequences at once (batched decoding), chunks of
 * prompts, or both. Row i is token tok[i] (read by the stage with the
 * embedding) of sequence seq[i] at position pos[i]; the rows of one
 * sequence are in position order, and a row attends its sequence's cache
 * up to its own position (the rows before it in the pass included). The
 * stage with the head gives the logits of rows out[0] < out[1] < ... (at
 * most kv_seqs of them: a sequence's last row each). */
typedef struct st_stage_rows {
    int n;                /* 1 to st_decode_rows of the options */
    const int *tok;       /* [n] */
    const int *seq, *pos; /* [n] */
    int n_out;            /* rows whose logits are wanted */
    const int *out;       /* [n_out] */
} st_stage_rows;

/* One pass: one product per linear layer over all its rows; logits
 * [n_out, V] for the stage with the head. Each row's computation is the
 * one decoding it alone does, whatever the other rows (the tests compare
 * them bit for bit). */
st_status st_stage_pass(st_stage *g, const st_stage_rows *r, float *logits);

/* The decoding activation [rows, C]: the input of a stage without the
 * embedding (written by the caller before a pass), the output of one
 * without the head. */
st_tensor *st_stage_decode_x(const st_stage *g);

#ifdef __cplusplus
}
#endif

#endif
