/*
 * layers.h - forward and backward of the element-wise and per-row ops of a
 * GPT block, on one device. Each call queues kernels and returns; outputs
 * first, then inputs, then sizes. Gradients marked "+=" accumulate (the
 * caller zeroes them once per step); the others overwrite.
 *
 * Shapes: N rows (B*T), C channels, V vocabulary, n elements.
 * Every op has a plain-C reference in tests/ref_ops.c.
 */
#ifndef STRATA_LAYERS_H
#define STRATA_LAYERS_H

#include "strata/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The linear layer (GPT-2's Conv1D, weights stored [in, out]):
 * out[N,OC] = inp[N,IC] . w[IC,OC] + b[OC]; b may be NULL. */
st_status st_matmul_fwd(st_tensor *out, const st_tensor *inp, const st_tensor *w,
                        const st_tensor *b, int N, int IC, int OC);
/* dinp[N,IC] = dout . w^T + dinp_beta * dinp (skipped when dinp is NULL);
 * dw[IC,OC] += inp^T . dout; db[OC] += column sums of dout (skipped when NULL). */
st_status st_matmul_bwd(st_tensor *dinp, float dinp_beta, st_tensor *dw, st_tensor *db,
                        const st_tensor *dout, const st_tensor *inp, const st_tensor *w, int N,
                        int IC, int OC);

/* out[N,C] = (inp - mean) * rstd * w + b; mean[N], rstd[N] kept. */
st_status st_layernorm_fwd(st_tensor *out, st_tensor *mean, st_tensor *rstd,
                           const st_tensor *inp, const st_tensor *w, const st_tensor *b,
                           int N, int C, float eps);
/* dinp[N,C] +=, dw[C] +=, db[C] += */
st_status st_layernorm_bwd(st_tensor *dinp, st_tensor *dw, st_tensor *db, const st_tensor *dout,
                           const st_tensor *inp, const st_tensor *w, const st_tensor *mean,
                           const st_tensor *rstd, int N, int C);

/* out[n] = gelu(inp) (tanh form) */
st_status st_gelu_fwd(st_tensor *out, const st_tensor *inp, size_t n);
/* dinp[n] = dout * gelu'(inp)  (overwrites) */
st_status st_gelu_bwd(st_tensor *dinp, const st_tensor *inp, const st_tensor *dout, size_t n);

/* out[n] = a + b */
st_status st_residual_fwd(st_tensor *out, const st_tensor *a, const st_tensor *b, size_t n);
/* da[n] += dout; db[n] += dout */
st_status st_residual_bwd(st_tensor *da, st_tensor *db, const st_tensor *dout, size_t n);

/* out[N,C] += bias[C] */
st_status st_bias_fwd(st_tensor *out, const st_tensor *bias, int N, int C);
/* dbias[C] += column sums of dout[N,C] */
st_status st_bias_bwd(st_tensor *dbias, const st_tensor *dout, int N, int C);

/* probs[N,V] = softmax(logits); losses[N] = -log probs[target] (0 where target < 0).
 * probs may be the logits tensor itself. targets is I32. */
st_status st_xent_fwd(st_tensor *probs, st_tensor *losses, const st_tensor *logits,
                      const st_tensor *targets, int N, int V);
/* dlogits[N,V] = (probs - onehot) * dloss (overwrites; may be the probs tensor) */
st_status st_xent_bwd(st_tensor *dlogits, const st_tensor *probs, const st_tensor *targets,
                      float dloss, int N, int V);

/* out[B,T,C] = wte[tokens] + wpe[t]; tokens is I32 [B*T]. */
st_status st_encoder_fwd(st_tensor *out, const st_tensor *tokens, const st_tensor *wte,
                         const st_tensor *wpe, int B, int T, int C, int V);
/* dwte[V,C] +=, dwpe[T rows of C] += */
st_status st_encoder_bwd(st_tensor *dwte, st_tensor *dwpe, const st_tensor *dout,
                         const st_tensor *tokens, int B, int T, int C, int V);

/* Causal multi-head attention on qkv[B,T,3C] (q | k | v along the last axis):
 * att[B,NH,T,T] = softmax(q.k^T / sqrt(C/NH)) with the causal mask (kept for
 * backward); out[B,T,C] = att.v, heads side by side. */
st_status st_attention_fwd(st_tensor *out, st_tensor *att, const st_tensor *qkv, int B, int T,
                           int C, int NH);
/* dqkv[B,T,3C] = gradient (overwrites); datt[B,NH,T,T] is scratch. */
st_status st_attention_bwd(st_tensor *dqkv, st_tensor *datt, const st_tensor *dout,
                           const st_tensor *qkv, const st_tensor *att, int B, int T, int C,
                           int NH);

/* The same without the T x T matrix (cl/flash.cl; head size C/NH at most
 * ST_FLASH_MAX_HEAD): lse[B,NH,T] keeps each row's log-sum-exp for the
 * backward, which recomputes the probabilities. Causal positions only. */
st_status st_attention_flash_fwd(st_tensor *out, st_tensor *lse, const st_tensor *qkv, int B,
                                 int T, int C, int NH);
/* dqkv[B,T,3C] = gradient (overwrites), from dout and the forward's out and lse. */
st_status st_attention_flash_bwd(st_tensor *dqkv, const st_tensor *dout, const st_tensor *out,
                                 const st_tensor *lse, const st_tensor *qkv, int B, int T, int C,
                                 int NH);

/* Parts of the first pass of st_sumsq_accumulate: scratch holds this many floats. */
#define ST_SUMSQ_PARTS 256

/* acc[0] += sum of x[i]^2 over n elements, in a fixed order (global gradient
 * norm). scratch: ST_SUMSQ_PARTS floats. */
st_status st_sumsq_accumulate(st_tensor *acc, st_tensor *scratch, const st_tensor *x, size_t n);

typedef struct st_adamw_hparams {
    float lr, beta1, beta2, eps, weight_decay;
} st_adamw_hparams;

/* One AdamW step at step number t (from 1) on n elements; grad_scale
 * multiplies the gradient first (1 without clipping). */
st_status st_adamw_step(st_tensor *param, const st_tensor *grad, st_tensor *m, st_tensor *v,
                        size_t n, const st_adamw_hparams *h, long t, float grad_scale);

#ifdef __cplusplus
}
#endif

#endif
