/*
 * ops.c - host side of the element-wise and per-row ops: argument checks and
 * kernel launches. The kernels are in cl/<op>.cl.
 */
#include <math.h>

#include "strata/cl.h"
#include "strata/layers.h"
#include "layers/check.h"

#define LOCAL 64 /* work-group size for 1-D element-wise launches */

/* Every tensor an op touches must hold at least `need` elements of the right type. */
st_status st_op_need(const char *op, const st_tensor *t, size_t n, st_dtype dtype)
{
    if (!t)
        return st_error(ST_ERR_INVALID, "%s: a tensor argument is missing", op);
    if (st_tensor_dtype(t) != dtype)
        return st_error(ST_ERR_INVALID, "%s: tensor '%s' is %s, expected %s", op,
                        st_tensor_name(t), st_dtype_name(st_tensor_dtype(t)),
                        st_dtype_name(dtype));
    if (st_tensor_numel(t) < n)
        return st_error(ST_ERR_INVALID, "%s: tensor '%s' has %zu elements, needs %zu", op,
                        st_tensor_name(t), st_tensor_numel(t), n);
    return ST_OK;
}

static st_status check_rows(const char *op, int N, int C)
{
    if (N < 1 || C < 1)
        return st_error(ST_ERR_INVALID, "%s: empty shape [%d, %d]", op, N, C);
    return ST_OK;
}

st_status st_layernorm_fwd(st_tensor *out, st_tensor *mean, st_tensor *rstd,
                           const st_tensor *inp, const st_tensor *w, const st_tensor *b,
                           int N, int C, float eps)
{
    st_status s = check_rows("layernorm_fwd", N, C);
    if (s != ST_OK)
        return s;
    size_t NC = (size_t)N * C;
    NEED("layernorm_fwd", out, NC);
    NEED("layernorm_fwd", mean, (size_t)N);
    NEED("layernorm_fwd", rstd, (size_t)N);
    NEED("layernorm_fwd", inp, NC);
    NEED("layernorm_fwd", w, (size_t)C);
    NEED("layernorm_fwd", b, (size_t)C);
    return ST_LAUNCH(st_tensor_device(out), "layernorm.cl", "layernorm_fwd", (size_t)N, LOCAL,
                     ST_KT(out), ST_KT(mean), ST_KT(rstd), ST_KT(inp), ST_KT(w), ST_KT(b),
                     ST_KI(N), ST_KI(C), ST_KF(eps));
}

st_status st_layernorm_bwd(st_tensor *dinp, st_tensor *dw, st_tensor *db, const st_tensor *dout,
                           const st_tensor *inp, const st_tensor *w, const st_tensor *mean,
                           const st_tensor *rstd, int N, int C)
{
    st_status s = check_rows("layernorm_bwd", N, C);
    if (s != ST_OK)
        return s;
    size_t NC = (size_t)N * C;
    NEED("layernorm_bwd", dinp, NC);
    NEED("layernorm_bwd", dw, (size_t)C);
    NEED("layernorm_bwd", db, (size_t)C);
    NEED("layernorm_bwd", dout, NC);
    NEED("layernorm_bwd", inp, NC);
    NEED("layernorm_bwd", w, (size_t)C);
    NEED("layernorm_bwd", mean, (size_t)N);
    NEED("layernorm_bwd", rstd, (size_t)N);
    st_device *dev = st_tensor_device(dinp);
    s = ST_LAUNCH(dev, "layernorm.cl", "layernorm_bwd_inp", (size_t)N, LOCAL, ST_KT(dinp),
                  ST_KT(dout), ST_KT(inp), ST_KT(w), ST_KT(mean), ST_KT(rstd), ST_KI(N),
                  ST_KI(C));
    if (s != ST_OK)
        return s;
    return ST_LAUNCH(dev, "layernorm.cl", "layernorm_bwd_params", (size_t)C, LOCAL, ST_KT(dw),
                     ST_KT(db), ST_KT(dout), ST_KT(inp), ST_KT(mean), ST_KT(rstd), ST_KI(N),
                     ST_KI(C));
}

st_status st_gelu_fwd(st_tensor *out, const st_tensor *inp, size_t n)
{
    NEED("gelu_fwd", out, n);
    NEED("gelu_fwd", inp, n);
    return ST_LAUNCH(st_tensor_device(out), "gelu.cl", "gelu_fwd", n, LOCAL, ST_KT(out),
                     ST_KT(inp), ST_KU(n));
}

st_status st_gelu_bwd(st_tensor *dinp, const st_tensor *inp, const st_tensor *dout, size_t n)
{
    NEED("gelu_bwd", dinp, n);
    NEED("gelu_bwd", inp, n);
    NEED("gelu_bwd", dout, n);
    return ST_LAUNCH(st_tensor_device(dinp), "gelu.cl", "gelu_bwd", n, LOCAL, ST_KT(dinp),
                     ST_KT(inp), ST_KT(dout), ST_KU(n));
}

st_status st_residual_fwd(st_tensor *out, const st_tensor *a, const st_tensor *b, size_t n)
{
    NEED("residual_fwd", out, n);
    NEED("residual_fwd", a, n);
    NEED("residual_fwd", b, n);
    return ST_LAUNCH(st_tensor_device(out), "residual.cl", "residual_fwd", n, LOCAL, ST_KT(out),
                     ST_KT(a), ST_KT(b), ST_KU(n));
}

st_status st_residual_bwd(st_tensor *da, st_tensor *db, const st_tensor *dout, size_t n)
{
    NEED("residual_bwd", da, n);
    NEED("residual_bwd", db, n);
    NEED("residual_bwd", dout, n);
    return ST_LAUNCH(st_tensor_device(da), "residual.cl", "residual_bwd", n, LOCAL, ST_KT(da),
                     ST_KT(db), ST_KT(dout), ST_KU(n));
}

st_status st_bias_fwd(st_tensor *out, const st_tensor *bias, int N, int C)
{
    st_status s = check_rows("bias_fwd", N, C);
    if (s != ST_OK)
        return s;
    NEED("bias_fwd", out, (size_t)N * C);
    NEED("bias_fwd", bias, (size_t)C);
    return ST_LAUNCH(st_tensor_device(out), "bias.cl", "bias_fwd", (size_t)N * C, LOCAL,
                     ST_KT(out), ST_KT(bias), ST_KI(N), ST_KI(C));
}

st_status st_bias_bwd(st_tensor *dbias, const st_tensor *dout, int N, int C)
{
    st_status s = check_rows("bias_bwd", N, C);
    if (s != ST_OK)
        return s;
    NEED("bias_bwd", dbias, (size_t)C);
    NEED("bias_bwd", dout, (size_t)N * C);
    return ST_LAUNCH(st_tensor_device(dbias), "bias.cl", "bias_bwd", (size_t)C, LOCAL,
                     ST_KT(dbias), ST_KT(dout), ST_KI(N), ST_KI(C));
}

st_status st_xent_fwd(st_tensor *probs, st_tensor *losses, const st_tensor *logits,
                      const st_tensor *targets, int N, int V)
{
    st_status s = check_rows("xent_fwd", N, V);
    if (s != ST_OK)
        return s;
    NEED("xent_fwd", probs, (size_t)N * V);
    NEED("xent_fwd", losses, (size_t)N);
    NEED("xent_fwd", logits, (size_t)N * V);
    if ((s = st_op_need("xent_fwd", targets, (size_t)N, ST_I32)) != ST_OK)
        return s;
    return ST_LAUNCH(st_tensor_device(probs), "xent.cl", "xent_fwd", (size_t)N, LOCAL,
                     ST_KT(probs), ST_KT(losses), ST_KT(logits), ST_KT(targets), ST_KI(N),
                     ST_KI(V));
}

st_status st_xent_bwd(st_tensor *dlogits, const st_tensor *probs, const st_tensor *targets,
                      float dloss, int N, int V)
{
    st_status s = check_rows("xent_bwd", N, V);
    if (s != ST_OK)
        return s;
    NEED("xent_bwd", dlogits, (size_t)N * V);
    NEED("xent_bwd", probs, (size_t)N * V);
    if ((s = st_op_need("xent_bwd", targets, (size_t)N, ST_I32)) != ST_OK)
        return s;
    return ST_LAUNCH(st_tensor_device(dlogits), "xent.cl", "xent_bwd", (size_t)N * V, LOCAL,
                     ST_KT(dlogits), ST_KT(probs), ST_KT(targets), ST_KF(dloss), ST_KI(N),
                     ST_KI(V));
}

st_status st_adamw_step(st_tensor *param, const st_tensor *grad, st_tensor *m, st_tensor *v,
                        size_t n, const st_adamw_hparams *h, long t, float grad_scale)
{
    NEED("adamw", param, n);
    NEED("adamw", grad, n);
    NEED("adamw", m, n);
    NEED("adamw", v, n);
    if (t < 1)
        return st_error(ST_ERR_INVALID, "adamw: step number %ld (counts from 1)", t);
    /* Bias corrections in double on the host: pow of a float near 1 loses digits. */
    float bc1 = (float)(1.0 - pow((double)h->beta1, (double)t));
    float bc2 = (float)(1.0 - pow((double)h->beta2, (double)t));
    return ST_LAUNCH(st_tensor_device(param), "adamw.cl", "adamw_step", n, LOCAL, ST_KT(param),
                     ST_KT(grad), ST_KT(m), ST_KT(v), ST_KU(n), ST_KF(h->lr), ST_KF(h->beta1),
                     ST_KF(h->beta2), ST_KF(h->eps), ST_KF(h->weight_decay), ST_KF(bc1),
                     ST_KF(bc2), ST_KF(grad_scale));
}

st_status st_sumsq_accumulate(st_tensor *acc, st_tensor *scratch, const st_tensor *x, size_t n)
{
    NEED("sumsq", acc, 1);
    NEED("sumsq", scratch, ST_SUMSQ_PARTS);
    NEED("sumsq", x, n);
    st_device *dev = st_tensor_device(acc);
    st_status s = ST_LAUNCH(dev, "norm.cl", "sumsq_partial", ST_SUMSQ_PARTS, LOCAL,
                            ST_KT(scratch), ST_KT(x), ST_KU(n), ST_KI(ST_SUMSQ_PARTS));
    if (s != ST_OK)
        return s;
    return ST_LAUNCH(dev, "norm.cl", "sumsq_final", 1, 1, ST_KT(acc), ST_KT(scratch),
                     ST_KI(ST_SUMSQ_PARTS));
}
