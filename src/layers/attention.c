/*
 * attention.c - causal multi-head attention: the products through CLBlast
 * (one batched call over every sequence and head), the causal
 * softmax in cl/attention.cl.
 *
 * Per sequence b and head h, with HS = C / NH and row stride 3C in qkv:
 *   Q = qkv[b, :, h*HS ...], K = qkv[b, :, C + h*HS ...], V = qkv[b, :, 2C + h*HS ...]
 *   att[b,h] = softmax_causal(Q K^T * scale),  out[b, :, h*HS ...] = att[b,h] V
 * Heads are HS elements apart in qkv and out, T*T apart in att; sequences
 * T*3C, T*C and NH*T*T apart.
 */
#include <math.h>

#include "layers/check.h"
#include "strata/cl.h"
#include "strata/gemm.h"
#include "strata/layers.h"
#include "strata/model.h"

static st_status check_shapes(const char *op, int B, int T, int C, int NH)
{
    if (B < 1 || T < 1 || C < 1 || NH < 1 || C % NH != 0)
        return st_error(ST_ERR_INVALID, "%s: bad shape B=%d T=%d C=%d NH=%d", op, B, T, C, NH);
    return ST_OK;
}

/* One batched call over every (sequence, head): heads are x_stride apart,
 * sequences x_seq apart. Offsets are those of sequence 0. */
static st_status heads_gemm(bool ta, bool tb, size_t m, size_t n, size_t k, float alpha,
                            const st_tensor *a, size_t a_off, size_t lda, size_t a_stride,
                            size_t a_seq, const st_tensor *b, size_t b_off, size_t ldb,
                            size_t b_stride, size_t b_seq, st_tensor *c, size_t c_off,
                            size_t ldc, size_t c_stride, size_t c_seq, int NH, int B)
{
    st_gemm_args g = {.trans_a = ta, .trans_b = tb, .m = m, .n = n, .k = k, .alpha = alpha,
                      .beta = 0.0f,
                      .a = a, .a_offset = a_off, .lda = lda, .a_stride = a_stride,
                      .b = b, .b_offset = b_off, .ldb = ldb, .b_stride = b_stride,
                      .c = c, .c_offset = c_off, .ldc = ldc, .c_stride = c_stride,
                      .batch = (size_t)NH, .outer = (size_t)B,
                      .a_outer = a_seq, .b_outer = b_seq, .c_outer = c_seq};
    return st_gemm(&g);
}

/* pos (I32 [B*T], packed documents) or NULL. */
static st_status check_pos(const char *op, const st_tensor *pos, int B, int T)
{
    return pos ? st_op_need(op, pos, (size_t)B * (size_t)T, ST_I32) : ST_OK;
}

st_status st_attention_fwd(st_tensor *out, st_tensor *att, const st_tensor *qkv,
                           const st_tensor *pos, int B, int T, int C, int NH)
{
    st_status s = check_shapes("attention_fwd", B, T, C, NH);
    if (s == ST_OK)
        s = check_pos("attention_fwd", pos, B, T);
    if (s != ST_OK)
        return s;
    size_t Bs = (size_t)B, Ts = (size_t)T, Cs = (size_t)C, HS = Cs / (size_t)NH;
    NEED("attention_fwd", out, Bs * Ts * Cs);
    NEED("attention_fwd", att, Bs * (size_t)NH * Ts * Ts);
    NEED("attention_fwd", qkv, Bs * Ts * 3 * Cs);
    float scale = (float)(1.0 / sqrt((double)HS));
    /* Sequences are T*3C apart in qkv, T*C in out and NH*T*T in att. */
    size_t qs = Ts * 3 * Cs, os = Ts * Cs, as = (size_t)NH * Ts * Ts;
    /* att = Q K^T * scale */
    if ((s = heads_gemm(false, true, Ts, Ts, HS, scale, qkv, 0, 3 * Cs, HS, qs, qkv, Cs, 3 * Cs,
                        HS, qs, att, 0, Ts, Ts * Ts, as, NH, B)) != ST_OK)
        return s;
    size_t rows = Bs * (size_t)NH * Ts;
    if ((s = ST_LAUNCH(st_tensor_device(att), "attention.cl", "attention_softmax_fwd", rows, 64,
                       ST_KT(att), ST_KT(pos ? pos : att), ST_KI(pos != NULL), ST_KI(rows),
                       ST_KI(T), ST_KI(NH))) != ST_OK)
        return s;
    /* out = att V */
    return heads_gemm(false, false, Ts, HS, Ts, 1.0f, att, 0, Ts, Ts * Ts, as, qkv, 2 * Cs,
                      3 * Cs, HS, qs, out, 0, Cs, HS, os, NH, B);
}

st_status st_attention_bwd(st_tensor *dqkv, st_tensor *datt, const st_tensor *dout,
                           const st_tensor *qkv, const st_tensor *att, const st_tensor *pos,
                           int B, int T, int C, int NH)
{
    st_status s = check_shapes("attention_bwd", B, T, C, NH);
    if (s == ST_OK)
        s = check_pos("attention_bwd", pos, B, T);
    if (s != ST_OK)
        return s;
    size_t Bs = (size_t)B, Ts = (size_t)T, Cs = (size_t)C, HS = Cs / (size_t)NH;
    NEED("attention_bwd", dqkv, Bs * Ts * 3 * Cs);
    NEED("attention_bwd", datt, Bs * (size_t)NH * Ts * Ts);
    NEED("attention_bwd", dout, Bs * Ts * Cs);
    NEED("attention_bwd", qkv, Bs * Ts * 3 * Cs);
    NEED("attention_bwd", att, Bs * (size_t)NH * Ts * Ts);
    float scale = (float)(1.0 / sqrt((double)HS));
    size_t qs = Ts * 3 * Cs, os = Ts * Cs, as = (size_t)NH * Ts * Ts;
    /* datt = dout V^T;  dV = att^T dout */
    if ((s = heads_gemm(false, true, Ts, Ts, HS, 1.0f, dout, 0, Cs, HS, os, qkv, 2 * Cs, 3 * Cs,
                        HS, qs, datt, 0, Ts, Ts * Ts, as, NH, B)) != ST_OK ||
        (s = heads_gemm(true, false, Ts, HS, Ts, 1.0f, att, 0, Ts, Ts * Ts, as, dout, 0, Cs, HS,
                        os, dqkv, 2 * Cs, 3 * Cs, HS, qs, NH, B)) != ST_OK)
        return s;
    size_t rows = Bs * (size_t)NH * Ts;
    if ((s = ST_LAUNCH(st_tensor_device(datt), "attention.cl", "attention_softmax_bwd", rows, 64,
                       ST_KT(datt), ST_KT(att), ST_KT(pos ? pos : att), ST_KI(pos != NULL),
                       ST_KI(rows), ST_KI(T), ST_KI(NH))) != ST_OK)
        return s;
    /* dQ = dS K * scale;  dK = dS^T Q * scale */
    if ((s = heads_gemm(false, false, Ts, HS, Ts, scale, datt, 0, Ts, Ts * Ts, as, qkv, Cs,
                        3 * Cs, HS, qs, dqkv, 0, 3 * Cs, HS, qs, NH, B)) != ST_OK ||
        (s = heads_gemm(true, false, Ts, HS, Ts, scale, datt, 0, Ts, Ts * Ts, as, qkv, 0, 3 * Cs,
                        HS, qs, dqkv, Cs, 3 * Cs, HS, qs, NH, B)) != ST_OK)
        return s;
    return ST_OK;
}

enum { FA_TILE = 16 }; /* cl/flash.cl's tile: rows per work-group */

static st_status flash_shapes(const char *op, int B, int T, int C, int NH, int KV)
{
    st_status s = check_shapes(op, B, T, C, NH);
    if (s == ST_OK && !st_attention_is_flash(C, NH))
        s = st_error(ST_ERR_INVALID, "%s: head size %d is above %d", op, C / NH,
                     ST_FLASH_MAX_HEAD);
    if (s == ST_OK && (KV < 1 || NH % KV != 0))
        s = st_error(ST_ERR_INVALID, "%s: %d key/value heads do not divide %d heads", op, KV, NH);
    return s;
}

/* qkv's row: q of NH heads, k and v of KV heads each. */
static size_t row_width(int C, int NH, int KV)
{
    return (size_t)C + 2 * (size_t)KV * (size_t)(C / NH);
}

st_status st_attention_gqa_fwd(st_tensor *out, st_tensor *lse, const st_tensor *qkv,
                               const st_tensor *qkv_b, const st_tensor *pos, int B, int T, int C,
                               int NH, int KV)
{
    st_status s = flash_shapes("attention_flash_fwd", B, T, C, NH, KV);
    if (s == ST_OK)
        s = check_pos("attention_flash_fwd", pos, B, T);
    if (s != ST_OK)
        return s;
    size_t Bs = (size_t)B, Ts = (size_t)T, Cs = (size_t)C, W = row_width(C, NH, KV);
    NEED("attention_flash_fwd", out, Bs * Ts * Cs);
    NEED("attention_flash_fwd", lse, Bs * (size_t)NH * Ts);
    NEED("attention_flash_fwd", qkv, Bs * Ts * W);
    if (qkv_b)
        NEED("attention_flash_fwd", qkv_b, W);
    float scale = (float)(1.0 / sqrt((double)(C / NH)));
    size_t groups = Bs * (size_t)NH * ((Ts + FA_TILE - 1) / FA_TILE);
    return ST_LAUNCH(st_tensor_device(out), "flash.cl", "attention_flash_fwd", groups * FA_TILE,
                     FA_TILE, ST_KT(out), ST_KT(lse), ST_KT(qkv), ST_KT(qkv_b ? qkv_b : qkv),
                     ST_KT(pos ? pos : qkv), ST_KI(pos != NULL), ST_KI(qkv_b != NULL), ST_KI(T),
                     ST_KI(C), ST_KI(NH), ST_KI(KV), ST_KF(scale));
}

st_status st_attention_flash_fwd(st_tensor *out, st_tensor *lse, const st_tensor *qkv,
                                 const st_tensor *qkv_b, const st_tensor *pos, int B, int T,
                                 int C, int NH)
{
    if (!qkv_b)
        return st_error(ST_ERR_INVALID, "attention_flash_fwd: no qkv bias");
    return st_attention_gqa_fwd(out, lse, qkv, qkv_b, pos, B, T, C, NH, NH);
}

st_status st_attention_gqa_bwd(st_tensor *dqkv, const st_tensor *dout, const st_tensor *out,
                               const st_tensor *lse, const st_tensor *qkv,
                               const st_tensor *qkv_b, const st_tensor *pos, int B, int T, int C,
                               int NH, int KV)
{
    st_status s = flash_shapes("attention_flash_bwd", B, T, C, NH, KV);
    if (s == ST_OK)
        s = check_pos("attention_flash_bwd", pos, B, T);
    if (s != ST_OK)
        return s;
    size_t Bs = (size_t)B, Ts = (size_t)T, Cs = (size_t)C, W = row_width(C, NH, KV);
    NEED("attention_flash_bwd", dqkv, Bs * Ts * W);
    NEED("attention_flash_bwd", dout, Bs * Ts * Cs);
    NEED("attention_flash_bwd", out, Bs * Ts * Cs);
    NEED("attention_flash_bwd", lse, Bs * (size_t)NH * Ts);
    NEED("attention_flash_bwd", qkv, Bs * Ts * W);
    if (qkv_b)
        NEED("attention_flash_bwd", qkv_b, W);
    float scale = (float)(1.0 / sqrt((double)(C / NH)));
    size_t tiles = (Ts + FA_TILE - 1) / FA_TILE;
    st_device *dev = st_tensor_device(dqkv);
    const st_tensor *bias = qkv_b ? qkv_b : qkv, *ptab = pos ? pos : qkv;
    if ((s = ST_LAUNCH(dev, "flash.cl", "attention_flash_bwd_kv",
                       Bs * (size_t)KV * tiles * FA_TILE, FA_TILE, ST_KT(dqkv), ST_KT(dout),
                       ST_KT(out), ST_KT(lse), ST_KT(qkv), ST_KT(bias), ST_KT(ptab),
                       ST_KI(pos != NULL), ST_KI(qkv_b != NULL), ST_KI(T), ST_KI(C), ST_KI(NH),
                       ST_KI(KV), ST_KF(scale))) != ST_OK)
        return s;
    return ST_LAUNCH(dev, "flash.cl", "attention_flash_bwd_q", Bs * (size_t)NH * tiles * FA_TILE,
                     FA_TILE, ST_KT(dqkv), ST_KT(dout), ST_KT(out), ST_KT(lse), ST_KT(qkv),
                     ST_KT(bias), ST_KT(ptab), ST_KI(pos != NULL), ST_KI(qkv_b != NULL), ST_KI(T),
                     ST_KI(C), ST_KI(NH), ST_KI(KV), ST_KF(scale));
}

st_status st_attention_flash_bwd(st_tensor *dqkv, const st_tensor *dout, const st_tensor *out,
                                 const st_tensor *lse, const st_tensor *qkv,
                                 const st_tensor *qkv_b, const st_tensor *pos, int B, int T,
                                 int C, int NH)
{
    if (!qkv_b)
        return st_error(ST_ERR_INVALID, "attention_flash_bwd: no qkv bias");
    return st_attention_gqa_bwd(dqkv, dout, out, lse, qkv, qkv_b, pos, B, T, C, NH, NH);
}

st_status st_attention_gqa_decode(st_tensor *out, st_tensor *scores, st_tensor *kc,
                                  st_tensor *vc, const st_tensor *qkv, const st_tensor *qkv_b,
                                  const st_tensor *rows, int n, bool own_row, int seqs, int S,
                                  int C, int NH, int KV)
{
    st_status s = flash_shapes("attention_decode", 1, 1, C, NH, KV);
    if (s != ST_OK)
        return s;
    if (n < 1 || seqs < 1 || S < 1)
        return st_error(ST_ERR_INVALID, "attention_decode: %d rows, %d caches of %d positions",
                        n, seqs, S);
    size_t Cs = (size_t)C, Ss = (size_t)S, Ns = (size_t)n, W = row_width(C, NH, KV);
    size_t KVD = (size_t)KV * (Cs / (size_t)NH);
    NEED("attention_decode", out, Ns * Cs);
    NEED("attention_decode", scores, Ns * (size_t)NH * Ss);
    /* the caches: float, or both in one 16-bit type (cl/flash.cl KV_LOAD) */
    NEED_W("attention_decode", kc, (size_t)seqs * Ss * KVD);
    st_dtype kt = st_tensor_dtype(kc);
    if ((s = st_op_need("attention_decode", vc, (size_t)seqs * Ss * KVD, kt)) != ST_OK)
        return s;
    NEED("attention_decode", qkv, Ns * W);
    if (qkv_b)
        NEED("attention_decode", qkv_b, W);
    if ((s = st_op_need("attention_decode", rows, 2 * Ns, ST_I32)) != ST_OK)
        return s;
    st_device *dev = st_tensor_device(out);
    float scale = (float)(1.0 / sqrt((double)(C / NH)));
    enum { DEC_WG = 64 }; /* cl/flash.cl FA_DEC_WG */
    const st_tensor *bias = qkv_b ? qkv_b : qkv;
    /* rows of one sequence: their keys and values first (a row reads the
     * rows before it, written by other work-groups) */
    char buf[32];
    const char *file = st_typed_file("flash.cl", kt, buf, sizeof buf);
    if (!own_row &&
        (s = ST_LAUNCH(dev, file, "attention_kv_write", Ns * KVD, 64, ST_KT(kc), ST_KT(vc),
                       ST_KT(qkv), ST_KT(bias), ST_KI(qkv_b != NULL), ST_KT(rows), ST_KI(n),
                       ST_KI(S), ST_KI(C), ST_KI(NH), ST_KI(KV))) != ST_OK)
        return s;
    /* CPUs: a work-item per row and head, without barriers (cl/flash.cl),
     * each its own work-group. Every launch here has a fixed work-group
     * size: left to the driver it follows the number of rows, and PoCL
     * compiles the kernel again for each new size it picks (half a second
     * each, stalling a server's first passes of each size). Size 1 ran
     * decoding fastest (m82, 16 sequences, 2026-12-05: one pthread device
     * 173.6 tok/s against 156.1 with a row's heads per group; two basic
     * devices 153.2 against 82.5; the same texts). */
    bool cpu = st_layers_cpu_form(dev);
    return ST_LAUNCH(dev, file, cpu ? "attention_decode_cpu" : "attention_decode",
                     Ns * (size_t)NH * (cpu ? 1 : DEC_WG), cpu ? 1 : DEC_WG, ST_KT(out), ST_KT(scores), ST_KT(kc), ST_KT(vc), ST_KT(qkv), ST_KT(bias),
                     ST_KI(qkv_b != NULL), ST_KT(rows), ST_KI(own_row), ST_KI(S), ST_KI(C),
                     ST_KI(NH), ST_KI(KV), ST_KF(scale));
}

st_status st_attention_decode(st_tensor *out, st_tensor *scores, st_tensor *kc, st_tensor *vc,
                              const st_tensor *qkv, const st_tensor *qkv_b,
                              const st_tensor *rows, int n, bool own_row, int seqs, int S,
                              int C, int NH)
{
    if (!qkv_b)
        return st_error(ST_ERR_INVALID, "attention_decode: no qkv bias");
    return st_attention_gqa_decode(out, scores, kc, vc, qkv, qkv_b, rows, n, own_row, seqs, S,
                                   C, NH, NH);
}
