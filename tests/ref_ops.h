/*
 * ref_ops.h - plain-C references of the ops in strata/layers.h, in double
 * precision: the device kernels (float) are compared with them, and their
 * backward passes are compared with finite differences of their forwards.
 * Same argument order and accumulation rules as strata/layers.h.
 */
#ifndef STRATA_TESTS_REF_OPS_H
#define STRATA_TESTS_REF_OPS_H

#include <stddef.h>

void ref_layernorm_fwd(double *out, double *mean, double *rstd, const double *inp,
                       const double *w, const double *b, int N, int C, double eps);
void ref_layernorm_bwd(double *dinp, double *dw, double *db, const double *dout,
                       const double *inp, const double *w, const double *mean,
                       const double *rstd, int N, int C);
void ref_gelu_fwd(double *out, const double *inp, size_t n);
void ref_gelu_bwd(double *dinp, const double *inp, const double *dout, size_t n);
void ref_bias_fwd(double *out, const double *bias, int N, int C);
void ref_bias_bwd(double *dbias, const double *dout, int N, int C);
void ref_xent_fwd(double *probs, double *losses, const double *logits, const int *targets, int N,
                  int V);
void ref_xent_bwd(double *dlogits, const double *probs, const int *targets, double dloss, int N,
                  int V);
void ref_adamw_step(double *param, const double *grad, double *m, double *v, size_t n, double lr,
                    double b1, double b2, double eps, double wd, long t, double grad_scale);

void ref_encoder_fwd(double *out, const int *tokens, const double *wte, const double *wpe, int B,
                     int T, int C);
void ref_encoder_bwd(double *dwte, double *dwpe, const double *dout, const int *tokens, int B,
                     int T, int C);
/* qkv[B,T,3C] -> att[B,NH,T,T] (probabilities, 0 above the diagonal), out[B,T,C] */
void ref_attention_fwd(double *out, double *att, const double *qkv, int B, int T, int C, int NH);
/* dqkv[B,T,3C] = gradient (overwrites) */
void ref_attention_bwd(double *dqkv, const double *dout, const double *qkv, const double *att,
                       int B, int T, int C, int NH);

/* out[N,OC] = inp[N,IC] . w[IC,OC] + b[OC] (b may be NULL) */
void ref_matmul_fwd(double *out, const double *inp, const double *w, const double *b, int N,
                    int IC, int OC);
/* dinp = dout . w^T (overwrites); dw += inp^T . dout; db += column sums of dout */
void ref_matmul_bwd(double *dinp, double *dw, double *db, const double *dout, const double *inp,
                    const double *w, int N, int IC, int OC);

/* ---- Llama family (strata/layers.h) */

/* nn.Linear: out[N,OC] = inp . w[OC,IC]^T + b; dinp = dout . w (overwrites,
 * skipped when NULL); dw += dout^T . inp; db += column sums of dout */
void ref_linear_fwd(double *out, const double *inp, const double *w, const double *b, int N,
                    int IC, int OC);
void ref_linear_bwd(double *dinp, double *dw, double *db, const double *dout, const double *inp,
                    const double *w, int N, int IC, int OC);
void ref_rmsnorm_fwd(double *out, double *rstd, const double *inp, const double *w, int N, int C,
                     double eps);
/* dinp +=, dw += */
void ref_rmsnorm_bwd(double *dinp, double *dw, const double *dout, const double *inp,
                     const double *w, const double *rstd, int N, int C);
/* In place on qkv [N, (NH + 2 KV) HS]; bias may be NULL. */
void ref_rope_fwd(double *qkv, const double *bias, const double *inv_freq, int N, int T,
                  int pos0, int NH, int KV, int HS);
void ref_rope_bwd(double *dqkv, const double *inv_freq, int N, int T, int pos0, int NH, int KV,
                  int HS);
void ref_swiglu_fwd(double *h, const double *gu, int N, int F);
void ref_swiglu_bwd(double *dgu, const double *dh, const double *gu, int N, int F);
/* qkv [B, T, (NH + 2 KV) HS]; att [B, NH, T, T]; dqkv overwritten */
void ref_gqa_attention_fwd(double *out, double *att, const double *qkv, int B, int T, int C,
                           int NH, int KV);
void ref_gqa_attention_bwd(double *dqkv, const double *dout, const double *qkv,
                           const double *att, int B, int T, int C, int NH, int KV);

#endif
