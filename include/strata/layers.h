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

#include "strata/model.h"
#include "strata/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The linear layer (GPT-2's Conv1D, weights stored [in, out]):
 * out[N,OC] = inp[N,IC] . w[IC,OC] + b[OC]; b may be NULL. Here and in
 * st_linear_*, st_encoder_fwd and st_embedding_fwd the weight matrices may
 * be stored in 16 bits (BF16, F16; strata/gemm.h), the rest is F32. */
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

/* Packed documents: several documents in one sequence of T, each seeing
 * only itself. pos (I32 [B*T]) is each row's position in its own document:
 * 0 where a document starts, else the row before's plus 1, 0 at t = 0
 * (st_stage_positions refuses other tables; the kernels trust them). The functions below that take pos use it for the positions
 * (instead of t) and for attention (query t sees t - pos[t] .. t); NULL:
 * one document a sequence. A document's rows compute what they compute in
 * a sequence of their own. */

/* out[B,T,C] = wte[tokens] + wpe[t]; tokens is I32 [B*T]. With rows (I32
 * [B*T, 2], decoding's table of sequence and position per row), row n's
 * position is rows[2n + 1] (each below wpe's rows: the caller checks);
 * with pos, pos[n] (not both). */
st_status st_encoder_fwd(st_tensor *out, const st_tensor *tokens, const st_tensor *wte,
                         const st_tensor *wpe, const st_tensor *rows, const st_tensor *pos,
                         int B, int T, int C, int V);
/* dwte[V,C] +=, dwpe[T rows of C] += (row n's to position pos[n] with pos) */
st_status st_encoder_bwd(st_tensor *dwte, st_tensor *dwpe, const st_tensor *dout,
                         const st_tensor *tokens, const st_tensor *pos, int B, int T, int C,
                         int V);

/* Causal multi-head attention on qkv[B,T,3C] (q | k | v along the last axis):
 * att[B,NH,T,T] = softmax(q.k^T / sqrt(C/NH)) with the causal mask (kept for
 * backward); out[B,T,C] = att.v, heads side by side. */
st_status st_attention_fwd(st_tensor *out, st_tensor *att, const st_tensor *qkv,
                           const st_tensor *pos, int B, int T, int C, int NH);
/* dqkv[B,T,3C] = gradient (overwrites); datt[B,NH,T,T] is scratch. */
st_status st_attention_bwd(st_tensor *dqkv, st_tensor *datt, const st_tensor *dout,
                           const st_tensor *qkv, const st_tensor *att, const st_tensor *pos,
                           int B, int T, int C, int NH);

/* The same without the T x T matrix (cl/flash.cl; head size C/NH at most
 * ST_FLASH_MAX_HEAD), on qkv + qkv_b (qkv without its bias [3C], added as it
 * is read): lse[B,NH,T] keeps each row's log-sum-exp for the backward,
 * which recomputes the probabilities. */
st_status st_attention_flash_fwd(st_tensor *out, st_tensor *lse, const st_tensor *qkv,
                                 const st_tensor *qkv_b, const st_tensor *pos, int B, int T,
                                 int C, int NH);
/* dqkv[B,T,3C] = gradient (overwrites), from dout and the forward's out and lse. */
st_status st_attention_flash_bwd(st_tensor *dqkv, const st_tensor *dout, const st_tensor *out,
                                 const st_tensor *lse, const st_tensor *qkv,
                                 const st_tensor *qkv_b, const st_tensor *pos, int B, int T,
                                 int C, int NH);

/* The same with grouped key/value heads (Llama family): qkv [B, T, W],
 * W = C + 2 KV*HS (q of NH heads, then k and v of KV heads; query head h
 * uses key/value head h / (NH / KV)); qkv_b [W] or NULL for none. dqkv
 * [B, T, W]. Decoding caches kc, vc [.., S, KV*HS]. */
st_status st_attention_gqa_fwd(st_tensor *out, st_tensor *lse, const st_tensor *qkv,
                               const st_tensor *qkv_b, const st_tensor *pos, int B, int T, int C,
                               int NH, int KV);
st_status st_attention_gqa_bwd(st_tensor *dqkv, const st_tensor *dout, const st_tensor *out,
                               const st_tensor *lse, const st_tensor *qkv,
                               const st_tensor *qkv_b, const st_tensor *pos, int B, int T, int C,
                               int NH, int KV);
st_status st_attention_gqa_decode(st_tensor *out, st_tensor *scores, st_tensor *kc,
                                  st_tensor *vc, const st_tensor *qkv, const st_tensor *qkv_b,
                                  const st_tensor *rows, int n, bool own_row, int seqs, int S,
                                  int C, int NH, int KV);

/* Row ops (LayerNorm, the fused GELU backward) come in two forms with the
 * same results up to the order of sums: for GPUs a work-group per row (or a
 * work-item per column, reads side by side), for CPUs a work-item walking a
 * row (a CPU runs a group's work-items one after another; the GELU backward
 * then takes two launches). By default the device's type decides
 * (STRATA_KERNEL_FORM=gpu or cpu overrides it); tests force one with
 * st_layers_set_variant (-1: as by default). */
enum { ST_LAYERS_GPU = 0, ST_LAYERS_CPU = 1 };
void st_layers_set_variant(int variant);
/* Whether dev gets the CPU form (also: AdamW one launch per parameter,
 * which PoCL runs as vectorised straight-line code, rather than one launch
 * whose work-items loop, 5x slower there). */
bool st_layers_cpu_form(const st_device *dev);

/* Decoding with a KV cache (cl/flash.cl, heads up to ST_FLASH_MAX_HEAD):
 * n rows of qkv [n, 3C] (+ qkv_b), row r the token of sequence rows[2r] at
 * position rows[2r + 1] (rows: I32 [n, 2]; tokens decoded for several
 * sequences, a prompt's chunk read in one pass, or both): writes their keys
 * and values into kc and vc [seqs, S, C] (sequence q's cache at rows
 * q * S ..), then out [n, C] = the attention of each row's query over its
 * sequence's cached rows up to its own position. own_row: no two rows of
 * one sequence (each row writes its own key and value as it attends: one
 * launch less); otherwise the rows of a sequence are in position order and
 * attend each other. scores [n, NH, S] is scratch. A row gives the same
 * bits whatever the other rows of its pass. */
st_status st_attention_decode(st_tensor *out, st_tensor *scores, st_tensor *kc, st_tensor *vc,
                              const st_tensor *qkv, const st_tensor *qkv_b,
                              const st_tensor *rows, int n, bool own_row, int seqs, int S,
                              int C, int NH);

/* Fused ops (one launch each where the plain ones take two or three; each
 * equal to its plain composition, checked against the fp64 references):
 *   res = y + bias + x, then out = LayerNorm(res)                [N, C] */
st_status st_bias_residual_layernorm_fwd(st_tensor *res, st_tensor *out, st_tensor *mean,
                                         st_tensor *rstd, const st_tensor *y,
                                         const st_tensor *bias, const st_tensor *x,
                                         const st_tensor *w, const st_tensor *b, int N, int C,
                                         float eps);
/*   out = (out + bias) + res                                        [N, C] */
st_status st_bias_residual_fwd(st_tensor *out, const st_tensor *bias, const st_tensor *res,
                               int N, int C);
/*   pre += bias, act = gelu(pre)                                    [N, F] */
st_status st_bias_gelu_fwd(st_tensor *pre, st_tensor *act, const st_tensor *bias, int N, int F);
/*   dinp = dout * gelu'(pre), dbias += column sums of dinp           [N, F] */
st_status st_gelu_bwd_bias(st_tensor *dinp, const st_tensor *pre, const st_tensor *dout,
                           st_tensor *dbias, int N, int F);
/*   st_layernorm_bwd, and in its weight-gradient pass dbias2 += column
 *   sums of src2 [N, C2] and dbias3 += those of src3 [N, C3] (a NULL
 *   dbias skips it). The column sums are read before dinp is updated, so
 *   src2 may be dinp. */
st_status st_layernorm_bwd_biases(st_tensor *dinp, st_tensor *dw, st_tensor *db,
                                  const st_tensor *dout, const st_tensor *inp,
                                  const st_tensor *w, const st_tensor *mean,
                                  const st_tensor *rstd, int N, int C, st_tensor *dbias2,
                                  const st_tensor *src2, int C2, st_tensor *dbias3,
                                  const st_tensor *src3, int C3);

/* ---- Llama family ---- */

/* The linear layer of nn.Linear (weights stored [out, in]):
 * out[N,OC] = inp[N,IC] . w[OC,IC]^T + b[OC]; b may be NULL. */
st_status st_linear_fwd(st_tensor *out, const st_tensor *inp, const st_tensor *w,
                        const st_tensor *b, int N, int IC, int OC);
/* dinp[N,IC] = dout . w + dinp_beta * dinp (skipped when dinp is NULL);
 * dw[OC,IC] += dout^T . inp (skipped when dw is NULL: a frozen weight);
 * db[OC] += column sums of dout (when not NULL). */
st_status st_linear_bwd(st_tensor *dinp, float dinp_beta, st_tensor *dw, st_tensor *db,
                        const st_tensor *dout, const st_tensor *inp, const st_tensor *w, int N,
                        int IC, int OC);

/* out[N,C] = inp * rstd * w, rstd[N] = 1/sqrt(mean(inp^2) + eps) kept. */
st_status st_rmsnorm_fwd(st_tensor *out, st_tensor *rstd, const st_tensor *inp,
                         const st_tensor *w, int N, int C, float eps);
/* res = y + x, then out = RMSNorm(res)                           [N, C] */
st_status st_residual_rmsnorm_fwd(st_tensor *res, st_tensor *out, st_tensor *rstd,
                                  const st_tensor *y, const st_tensor *x, const st_tensor *w,
                                  int N, int C, float eps);
/* LoRA over a group of n projections (1 to 3) that share an input x
 * [N, IC] and write neighbouring columns of one output [N, ldo] (q, k and
 * v; gate and up): projection j adds scale * (x A_j^T) B_j^T to columns
 * [col[j], col[j] + oc[j]). a holds the A's one after another [n r, IC];
 * b[j] is B_j [oc[j], r]. */
typedef struct st_lora_group {
    int n, r, IC, ldo;
    int col[3], oc[3];
    float scale;
    const st_tensor *a, *b[3];
    st_tensor *da, *db[3]; /* their gradients (training) */
} st_lora_group;
/* xa[N, n r] = x A^T kept; out += the adapters' products. */
st_status st_lora_fwd(const st_lora_group *g, st_tensor *out, st_tensor *xa,
                      const st_tensor *x, int N);
/* From dout [N, ldo]: dB_j += scale dout_j^T xa_j; dxa_j = scale dout_j B_j
 * (dxa [N, n r], scratch); dA += dxa^T x; dx [N, IC] += dxa A. */
st_status st_lora_bwd(const st_lora_group *g, st_tensor *dx, st_tensor *dxa,
                      const st_tensor *dout, const st_tensor *xa, const st_tensor *x, int N);

/* dinp[N,C] +=, dw[C] += (dw NULL: a frozen weight, not computed) */
st_status st_rmsnorm_bwd(st_tensor *dinp, st_tensor *dw, const st_tensor *dout,
                         const st_tensor *inp, const st_tensor *w, const st_tensor *rstd, int N,
                         int C);

/* Rotary position embeddings on qkv [N, W] in place (W = (NH + 2 KV) HS;
 * row n at position pos0 + n % T, or with rows (I32 [N, 2], decoding's
 * table of sequence and position per row) at rows[2n + 1], or with pos
 * (packed documents) at pos[n]), bias [W] (or
 * NULL) added to every column first; inv_freq [HS/2] (cl/rope.cl). The
 * backward rotates the gradient of q and k back (v's passes unchanged). */
st_status st_rope_fwd(st_tensor *qkv, const st_tensor *bias, const st_tensor *inv_freq,
                      const st_tensor *rows, const st_tensor *pos, int N, int T, int pos0,
                      int NH, int KV, int HS);
st_status st_rope_bwd(st_tensor *dqkv, const st_tensor *inv_freq, const st_tensor *pos, int N,
                      int T, int pos0, int NH, int KV, int HS);

/* h[N,F] = silu(g) * u for gu[N,2F] = [g | u] per row; the backward
 * overwrites dgu[N,2F]. */
st_status st_swiglu_fwd(st_tensor *h, const st_tensor *gu, int N, int F);
st_status st_swiglu_bwd(st_tensor *dgu, const st_tensor *dh, const st_tensor *gu, int N, int F);

/* out[N,C] = wte[tokens] (no positions); the backward adds each token's
 * gradient into dwte[V,C] in a fixed order per channel. */
st_status st_embedding_fwd(st_tensor *out, const st_tensor *tokens, const st_tensor *wte, int N,
                           int C, int V);
st_status st_embedding_bwd(st_tensor *dwte, const st_tensor *dout, const st_tensor *tokens, int N,
                           int C, int V);

/* The first pass of st_sumsq_accumulate has ST_SUMSQ_PARTS parts (strata/model.h). */

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
/* The same over n elements in one launch, weight decay by runs: runs is I32
 * [3 * n_runs], per run its first element as two 31-bit halves (high, low)
 * and 1 (decay) or 0; the first run starts at 0, the runs in order. */
st_status st_adamw_step_runs(st_tensor *param, const st_tensor *grad, st_tensor *m, st_tensor *v,
                             const st_tensor *runs, int n_runs, size_t n,
                             const st_adamw_hparams *h, long t, float grad_scale);

#ifdef __cplusplus
}
#endif

#endif
