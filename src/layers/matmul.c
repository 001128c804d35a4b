/*
 * matmul.c - the linear layer of GPT-2 (Hugging Face's Conv1D): a CLBlast
 * product plus a bias. Weights are stored [in, out], so out = inp . w + b
 * without transposes.
 */
#include "layers/check.h"
#include "strata/gemm.h"
#include "strata/layers.h"

static st_status check_dims(const char *op, int N, int IC, int OC)
{
    if (N < 1 || IC < 1 || OC < 1)
        return st_error(ST_ERR_INVALID, "%s: bad shape N=%d IC=%d OC=%d", op, N, IC, OC);
    return ST_OK;
}

st_status st_matmul_fwd(st_tensor *out, const st_tensor *inp, const st_tensor *w,
                        const st_tensor *b, int N, int IC, int OC)
{
    st_status s = check_dims("matmul_fwd", N, IC, OC);
    if (s != ST_OK)
        return s;
    size_t n = (size_t)N, ic = (size_t)IC, oc = (size_t)OC;
    NEED("matmul_fwd", out, n * oc);
    NEED("matmul_fwd", inp, n * ic);
    NEED_W("matmul_fwd", w, ic * oc);
    st_gemm_args g = {.m = n, .n = oc, .k = ic, .alpha = 1.0f, .beta = 0.0f,
                      .a = inp, .lda = ic, .b = w, .ldb = oc, .c = out, .ldc = oc};
    if ((s = st_gemm(&g)) != ST_OK)
        return s;
    return b ? st_bias_fwd(out, b, N, OC) : ST_OK;
}

st_status st_matmul_bwd(st_tensor *dinp, float dinp_beta, st_tensor *dw, st_tensor *db,
                        const st_tensor *dout, const st_tensor *inp, const st_tensor *w, int N,
                        int IC, int OC)
{
    st_status s = check_dims("matmul_bwd", N, IC, OC);
    if (s != ST_OK)
        return s;
    size_t n = (size_t)N, ic = (size_t)IC, oc = (size_t)OC;
    NEED("matmul_bwd", dout, n * oc);
    NEED("matmul_bwd", inp, n * ic);
    NEED_W("matmul_bwd", w, ic * oc);
    if (dw) /* NULL: a frozen weight */
        NEED("matmul_bwd", dw, ic * oc);
    if (dinp) {
        NEED("matmul_bwd", dinp, n * ic);
        /* dinp[N,IC] = dout[N,OC] . w[IC,OC]^T (+ beta * dinp) */
        st_gemm_args g = {.trans_b = true, .m = n, .n = ic, .k = oc, .alpha = 1.0f,
                          .beta = dinp_beta, .a = dout, .lda = oc, .b = w, .ldb = oc,
                          .c = dinp, .ldc = ic};
        if ((s = st_gemm(&g)) != ST_OK)
            return s;
    }
    /* dw[IC,OC] += inp[N,IC]^T . dout[N,OC] */
    st_gemm_args g = {.trans_a = true, .m = ic, .n = oc, .k = n, .alpha = 1.0f, .beta = 1.0f,
                      .a = inp, .lda = ic, .b = dout, .ldb = oc, .c = dw, .ldc = oc};
    if (dw && (s = st_gemm(&g)) != ST_OK)
        return s;
    return db ? st_bias_bwd(db, dout, N, OC) : ST_OK;
}

/* nn.Linear: weights stored [out, in]. */
st_status st_linear_fwd(st_tensor *out, const st_tensor *inp, const st_tensor *w,
                        const st_tensor *b, int N, int IC, int OC)
{
    st_status s = check_dims("linear_fwd", N, IC, OC);
    if (s != ST_OK)
        return s;
    size_t n = (size_t)N, ic = (size_t)IC, oc = (size_t)OC;
    NEED("linear_fwd", out, n * oc);
    NEED("linear_fwd", inp, n * ic);
    NEED_W("linear_fwd", w, ic * oc);
    /* out[N,OC] = inp[N,IC] . w[OC,IC]^T */
    st_gemm_args g = {.trans_b = true, .m = n, .n = oc, .k = ic, .alpha = 1.0f, .beta = 0.0f,
                      .a = inp, .lda = ic, .b = w, .ldb = ic, .c = out, .ldc = oc};
    if ((s = st_gemm(&g)) != ST_OK)
        return s;
    return b ? st_bias_fwd(out, b, N, OC) : ST_OK;
}

st_status st_linear_bwd(st_tensor *dinp, float dinp_beta, st_tensor *dw, st_tensor *db,
                        const st_tensor *dout, const st_tensor *inp, const st_tensor *w, int N,
                        int IC, int OC)
{
    st_status s = check_dims("linear_bwd", N, IC, OC);
    if (s != ST_OK)
        return s;
    size_t n = (size_t)N, ic = (size_t)IC, oc = (size_t)OC;
    NEED("linear_bwd", dout, n * oc);
    NEED("linear_bwd", inp, n * ic);
    NEED_W("linear_bwd", w, ic * oc);
    if (dw)
        NEED("linear_bwd", dw, ic * oc);
    if (dinp) {
        NEED("linear_bwd", dinp, n * ic);
        /* dinp[N,IC] = dout[N,OC] . w[OC,IC] (+ beta * dinp) */
        st_gemm_args g = {.m = n, .n = ic, .k = oc, .alpha = 1.0f, .beta = dinp_beta,
                          .a = dout, .lda = oc, .b = w, .ldb = ic, .c = dinp, .ldc = ic};
        if ((s = st_gemm(&g)) != ST_OK)
            return s;
    }
    /* dw[OC,IC] += dout[N,OC]^T . inp[N,IC]; none for a frozen weight */
    st_gemm_args g = {.trans_a = true, .m = oc, .n = ic, .k = n, .alpha = 1.0f, .beta = 1.0f,
                      .a = dout, .lda = oc, .b = inp, .ldb = ic, .c = dw, .ldc = ic};
    if (dw && (s = st_gemm(&g)) != ST_OK)
        return s;
    return db ? st_bias_bwd(db, dout, N, OC) : ST_OK;
}

/* ---- LoRA --------------------------------------------------------------------- */

static st_status lora_check(const st_lora_group *g, int N)
{
    if (g->n < 1 || g->n > 3 || g->r < 1 || g->IC < 1 || g->ldo < 1 || N < 1)
        return st_error(ST_ERR_INVALID, "lora: bad group (%d projections, rank %d, %d rows)",
                        g->n, g->r, N);
    for (int j = 0; j < g->n; j++)
        if (g->col[j] < 0 || g->oc[j] < 1 || g->col[j] + g->oc[j] > g->ldo)
            return st_error(ST_ERR_INVALID, "lora: columns %d..%d outside a row of %d",
                            g->col[j], g->col[j] + g->oc[j], g->ldo);
    return ST_OK;
}

st_status st_lora_fwd(const st_lora_group *g, st_tensor *out, st_tensor *xa,
                      const st_tensor *x, int N)
{
    st_status s = lora_check(g, N);
    if (s != ST_OK)
        return s;
    size_t n = (size_t)N, w = (size_t)g->n * g->r, r = (size_t)g->r, ic = (size_t)g->IC;
    /* xa[N, w] = x[N, IC] . A[w, IC]^T */
    st_gemm_args ga = {.trans_b = true, .m = n, .n = w, .k = ic, .alpha = 1.0f, .beta = 0.0f,
                       .a = x, .lda = ic, .b = g->a, .ldb = ic, .c = xa, .ldc = w};
    if ((s = st_gemm(&ga)) != ST_OK)
        return s;
    for (int j = 0; j < g->n; j++) {
        /* out[:, col_j + (0..oc_j)] += scale xa[:, j r + (0..r)] . B_j[oc_j, r]^T */
        st_gemm_args gb = {.trans_b = true, .m = n, .n = (size_t)g->oc[j], .k = r,
                           .alpha = g->scale, .beta = 1.0f, .a = xa, .a_offset = (size_t)j * r,
                           .lda = w, .b = g->b[j], .ldb = r, .c = out,
                           .c_offset = (size_t)g->col[j], .ldc = (size_t)g->ldo};
        if ((s = st_gemm(&gb)) != ST_OK)
            return s;
    }
    return ST_OK;
}

st_status st_lora_bwd(const st_lora_group *g, st_tensor *dx, st_tensor *dxa,
                      const st_tensor *dout, const st_tensor *xa, const st_tensor *x, int N)
{
    st_status s = lora_check(g, N);
    if (s != ST_OK)
        return s;
    size_t n = (size_t)N, w = (size_t)g->n * g->r, r = (size_t)g->r, ic = (size_t)g->IC;
    size_t ldo = (size_t)g->ldo;
    for (int j = 0; j < g->n; j++) {
        size_t oc = (size_t)g->oc[j], col = (size_t)g->col[j];
        /* dB_j[oc, r] += scale dout_j[N, oc]^T . xa_j[N, r] */
        st_gemm_args gb = {.trans_a = true, .m = oc, .n = r, .k = n, .alpha = g->scale,
                           .beta = 1.0f, .a = dout, .a_offset = col, .lda = ldo, .b = xa,
                           .b_offset = (size_t)j * r, .ldb = w, .c = g->db[j], .ldc = r};
        /* dxa_j[N, r] = scale dout_j[N, oc] . B_j[oc, r] */
        st_gemm_args gx = {.m = n, .n = r, .k = oc, .alpha = g->scale, .beta = 0.0f,
                           .a = dout, .a_offset = col, .lda = ldo, .b = g->b[j], .ldb = r,
                           .c = dxa, .c_offset = (size_t)j * r, .ldc = w};
        if ((s = st_gemm(&gb)) != ST_OK || (s = st_gemm(&gx)) != ST_OK)
            return s;
    }
    /* dA[w, IC] += dxa[N, w]^T . x[N, IC]; dx[N, IC] += dxa[N, w] . A[w, IC] */
    st_gemm_args ga = {.trans_a = true, .m = w, .n = ic, .k = n, .alpha = 1.0f, .beta = 1.0f,
                       .a = dxa, .lda = w, .b = x, .ldb = ic, .c = g->da, .ldc = ic};
    st_gemm_args gd = {.m = n, .n = ic, .k = w, .alpha = 1.0f, .beta = 1.0f, .a = dxa,
                       .lda = w, .b = g->a, .ldb = ic, .c = dx, .ldc = ic};
    if ((s = st_gemm(&ga)) != ST_OK)
        return s;
    return st_gemm(&gd);
}
