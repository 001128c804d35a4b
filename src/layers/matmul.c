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
    NEED("matmul_fwd", w, ic * oc);
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
    NEED("matmul_bwd", w, ic * oc);
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
    if ((s = st_gemm(&g)) != ST_OK)
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
    NEED("linear_fwd", w, ic * oc);
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
    NEED("linear_bwd", w, ic * oc);
    NEED("linear_bwd", dw, ic * oc);
    if (dinp) {
        NEED("linear_bwd", dinp, n * ic);
        /* dinp[N,IC] = dout[N,OC] . w[OC,IC] (+ beta * dinp) */
        st_gemm_args g = {.m = n, .n = ic, .k = oc, .alpha = 1.0f, .beta = dinp_beta,
                          .a = dout, .lda = oc, .b = w, .ldb = ic, .c = dinp, .ldc = ic};
        if ((s = st_gemm(&g)) != ST_OK)
            return s;
    }
    /* dw[OC,IC] += dout[N,OC]^T . inp[N,IC] */
    st_gemm_args g = {.trans_a = true, .m = oc, .n = ic, .k = n, .alpha = 1.0f, .beta = 1.0f,
                      .a = dout, .lda = oc, .b = inp, .ldb = ic, .c = dw, .ldc = ic};
    if ((s = st_gemm(&g)) != ST_OK)
        return s;
    return db ? st_bias_bwd(db, dout, N, OC) : ST_OK;
}
