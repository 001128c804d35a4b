/*
 * layer.h - a layer of a stage and the operations table of its type.
 *
 * The stage (stage.c) owns every buffer, sized by st_stage_sizes_of from the
 * description; a layer gets views of them: its parameters and gradients (its
 * own in description order, then the tied ones it uses), its activation
 * buffer per slot, the backward's shared work buffer, the decoding work
 * buffer and its KV cache, its table of constants. `bind` makes the views
 * its ops need once; the ops then only queue kernels.
 *
 * The stream between layers is [N, C] (N = B*T rows): the embedding writes
 * the stage's input tensor, a block returns a view of its own output, the
 * head ends it. Backward runs one flowing gradient `dres` [N, C] through the
 * layers in reverse: the head writes it, each block updates it in place, the
 * embedding reads it.
 */
#ifndef STRATA_STAGE_LAYER_H
#define STRATA_STAGE_LAYER_H

#include "strata/layers.h"
#include "strata/model.h"
#include "strata/tensor.h"

typedef struct st_layer st_layer;

/* A decoding pass (strata/stage.h, st_stage_rows) as the layers see it. */
typedef struct st_pass {
    int n;                 /* rows */
    const int *seq, *pos;  /* [n] on the host: each row's sequence and position */
    const st_tensor *rows; /* I32 [n, 2]: the same pairs on the device */
    bool own_row;          /* no two rows of one sequence */
    int n_out;             /* the head: logits of rows out[0] < out[1] < ... */
    const int *out;
} st_pass;

/* What a step gives the layers besides the stream. */
typedef struct st_layer_io {
    const st_tensor *tokens;  /* I32 [N] (the embedding) */
    const st_tensor *targets; /* I32 [N] (the head); NULL: logits only, no loss */
    const st_tensor *pos;     /* I32 [N]: packed documents' positions (strata/layers.h); NULL: none */
    st_tensor *x0;            /* the stage's input tensor (the embedding writes it) */
    const st_tensor *token;   /* decoding: I32 [n], the pass's tokens */
    st_tensor *logits;        /* decoding: the head's output [n_out, V] (NULL elsewhere) */
} st_layer_io;

typedef struct st_layer_ops {
    st_status (*bind)(st_layer *l);
    void (*unbind)(st_layer *l);
    /* *y: the layer's output [N, C] (the embedding: io->x0; the head: NULL). */
    st_status (*forward)(st_layer *l, int slot, const st_tensor *x, const st_tensor **y,
                         const st_layer_io *io, int B, int T);
    /* x: the input the forward of this slot had (NULL for the embedding);
     * dres: the gradient of the output on entry, of the input on exit
     * (the head writes it, the embedding only reads it). dloss scales each
     * token's loss (the head). */
    st_status (*backward)(st_layer *l, int slot, const st_tensor *x, st_tensor *dres,
                          const st_layer_io *io, int B, int T, float dloss);
    /* A decoding pass of ps->n rows (1 to the layer's prefill): x [n, C] in
     * and out (the embedding writes it from io->token; the head takes the
     * rows ps->out and points io->logits at their logits [n_out, V]; x is
     * its scratch). */
    st_status (*decode)(st_layer *l, const st_pass *ps, st_tensor *x, st_layer_io *io);
    /* The head's probabilities (after a forward with targets) or logits
     * [N, V], and per-token losses [N], of a slot. */
    st_tensor *(*output)(st_layer *l, int slot);
    st_tensor *(*losses)(st_layer *l, int slot);
} st_layer_ops;

struct st_layer {
    const st_layer_desc *desc;
    const st_layer_ops *ops;
    const st_model_config *cfg;
    st_device *dev;
    /* Parameters and gradients: desc->params in order, then desc->tied. */
    st_tensor **p, **g;
    /* The buffers they are views of, and each one's offset there (for a
     * view over several neighbours: q, k and v as one matrix). */
    st_tensor *pbuf, *gbuf;
    st_tensor *hbuf; /* the stage's 16-bit parameters (st_param_storage), or NULL */
    const size_t *offset;
    int B, T, slots, kv_seq, kv_seqs;
    int prefill; /* rows one decoding pass may hold (st_decode_rows) */
    bool training;
    st_tensor **acts;  /* per slot; NULL when the layer keeps nothing */
    st_tensor *work;   /* the backward's work, shared; NULL without training */
    st_tensor *dec;    /* decoding work, shared; NULL without decoding */
    st_tensor *kv;     /* this layer's KV cache; NULL when none */
    st_tensor *consts; /* this layer's table; NULL when none */
    void *state;       /* the type's views */
};

/* The table of each layer type (src/stage/<family>_layers.c). */
const st_layer_ops *st_layer_ops_of(st_layer_type type);
extern const st_layer_ops st_gpt2_embedding_ops, st_gpt2_block_ops, st_gpt2_head_ops;
extern const st_layer_ops st_llama_embedding_ops, st_llama_block_ops, st_llama_head_ops;

/* Carves views out of one buffer, in order: how bind makes its views. */
typedef struct st_carver {
    st_tensor *base;
    size_t off;
    st_status status;
} st_carver;

st_tensor *st_carve(st_carver *c, size_t n);
/* A view of n elements at offset off of base; NULL and a status on failure. */
st_tensor *st_view_at(st_tensor *base, size_t off, size_t n, st_status *s);
void st_views_destroy(st_tensor **views, size_t n);
/* The head's rows of a pass: *view [n_out, C] of x holding rows ps->out
 * of x (moved to its first rows when there are several). */
st_status st_pass_out_rows(const st_pass *ps, st_tensor *x, size_t C, st_tensor **view);

/* The profiler counts what a block launches (strata/profiler.h). */
void st_layer_scope(const st_layer *l, bool enter);

#endif
