/*
 * ops.c - host side of the element-wise and per-row ops: argument checks and
 * kernel launches. The kernels are in cl/<op>.cl.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

st_status st_op_need_w(const char *op, const st_tensor *t, size_t n)
{
    st_dtype dt = t ? st_tensor_dtype(t) : ST_F32;
    return st_op_need(op, t, n, dt == ST_BF16 || dt == ST_F16 ? dt : ST_F32);
}


static st_status check_rows(const char *op, int N, int C)
{
    if (N < 1 || C < 1)
        return st_error(ST_ERR_INVALID, "%s: empty shape [%d, %d]", op, N, C);
    return ST_OK;
}

#define LN_WG 64 /* work-items per row: cl/layernorm.cl LN_WG, cl/xent.cl XE_WG */

static int variant = -1;

void st_layers_set_variant(int v)
{
    variant = v;
}

/* The kernels' form for this device: a work-group per row for GPUs and
 * other devices, a work-item per row for CPUs (strata/layers.h). */
bool st_layers_cpu_form(const st_device *dev)
{
    if (variant >= 0)
        return variant == ST_LAYERS_CPU;
    static int env = -2; /* STRATA_KERNEL_FORM, read once: -1 unset, else a form */
    if (env == -2) {
        const char *v = getenv("STRATA_KERNEL_FORM");
        env = v && strcmp(v, "gpu") == 0 ? ST_LAYERS_GPU
              : v && strcmp(v, "cpu") == 0 ? ST_LAYERS_CPU
                                           : -1;
    }
    if (env >= 0)
        return env == ST_LAYERS_CPU;
    return st_device_get_info(dev)->type == ST_DEVICE_CPU;
}

/* A row kernel's launch in the device's form. */
static st_status launch_rows(st_device *dev, const char *file, const char *name, int N,
                             size_t nargs, const st_karg *args)
{
    char row_name[96];
    if (st_layers_cpu_form(dev)) {
        snprintf(row_name, sizeof row_name, "%s_row", name);
        return st_launch(dev, file, row_name, (size_t)N, LOCAL, nargs, args);
    }
    return st_launch(dev, file, name, (size_t)N * LN_WG, LN_WG, nargs, args);
}
#define LAUNCH_ROWS(dev, file, name, N, ...)                                               \
    launch_rows((dev), (file), (name), (N), sizeof((st_karg[]){__VA_ARGS__}) / sizeof(st_karg), \
                (st_karg[]){__VA_ARGS__})

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
    return LAUNCH_ROWS(st_tensor_device(out), "layernorm.cl", "layernorm_fwd", N, ST_KT(out),
                       ST_KT(mean), ST_KT(rstd), ST_KT(inp), ST_KT(w), ST_KT(b), ST_KI(N),
                       ST_KI(C), ST_KF(eps));
}

st_status st_bias_residual_layernorm_fwd(st_tensor *res, st_tensor *out, st_tensor *mean,
                                         st_tensor *rstd, const st_tensor *y,
                                         const st_tensor *bias, const st_tensor *x,
                                         const st_tensor *w, const st_tensor *b, int N, int C,
                                         float eps)
{
    st_status s = check_rows("bias_residual_layernorm_fwd", N, C);
    if (s != ST_OK)
        return s;
    size_t NC = (size_t)N * C;
    NEED("bias_residual_layernorm_fwd", res, NC);
    NEED("bias_residual_layernorm_fwd", out, NC);
    NEED("bias_residual_layernorm_fwd", mean, (size_t)N);
    NEED("bias_residual_layernorm_fwd", rstd, (size_t)N);
    NEED("bias_residual_layernorm_fwd", y, NC);
    NEED("bias_residual_layernorm_fwd", bias, (size_t)C);
    NEED("bias_residual_layernorm_fwd", x, NC);
    NEED("bias_residual_layernorm_fwd", w, (size_t)C);
    NEED("bias_residual_layernorm_fwd", b, (size_t)C);
    return LAUNCH_ROWS(st_tensor_device(out), "layernorm.cl", "bias_residual_layernorm_fwd", N,
                       ST_KT(res), ST_KT(out), ST_KT(mean), ST_KT(rstd), ST_KT(y), ST_KT(bias),
                       ST_KT(x), ST_KT(w), ST_KT(b), ST_KI(N), ST_KI(C), ST_KF(eps));
}

st_status st_layernorm_bwd_biases(st_tensor *dinp, st_tensor *dw, st_tensor *db,
                                  const st_tensor *dout, const st_tensor *inp,
                                  const st_tensor *w, const st_tensor *mean,
                                  const st_tensor *rstd, int N, int C, st_tensor *dbias2,
                                  const st_tensor *src2, int C2, st_tensor *dbias3,
                                  const st_tensor *src3, int C3)
{
    st_status s = check_rows("layernorm_bwd", N, C);
    if (s != ST_OK)
        return s;
    size_t NC = (size_t)N * C;
    NEED("layernorm_bwd", dinp, NC);
    /* NULL gradients: frozen parameters; all or none (one launch has them all) */
    bool frozen = !dw && !db && !dbias2 && !dbias3;
    if (!frozen && (!dw || !db))
        return st_error(ST_ERR_INVALID, "layernorm_bwd: a weight frozen and its bias not");
    if (!frozen) {
        NEED("layernorm_bwd", dw, (size_t)C);
        NEED("layernorm_bwd", db, (size_t)C);
    }
    NEED("layernorm_bwd", dout, NC);
    NEED("layernorm_bwd", inp, NC);
    NEED("layernorm_bwd", w, (size_t)C);
    NEED("layernorm_bwd", mean, (size_t)N);
    NEED("layernorm_bwd", rstd, (size_t)N);
    if (!dbias2)
        C2 = 0;
    if (!dbias3)
        C3 = 0;
    if (C2 < 0 || C3 < 0)
        return st_error(ST_ERR_INVALID, "layernorm_bwd: bad bias widths %d, %d", C2, C3);
    if (C2) {
        NEED("layernorm_bwd", dbias2, (size_t)C2);
        NEED("layernorm_bwd", src2, (size_t)N * C2);
    }
    if (C3) {
        NEED("layernorm_bwd", dbias3, (size_t)C3);
        NEED("layernorm_bwd", src3, (size_t)N * C3);
    }
    /* Unused bias slots still need buffers: the weight gradients stand in. */
    st_tensor *d2 = C2 ? dbias2 : dw, *d3 = C3 ? dbias3 : dw;
    const st_tensor *s2 = C2 ? src2 : dout, *s3 = C3 ? src3 : dout;
    int cols = C > C2 ? C : C2;
    cols = cols > C3 ? cols : C3;
    st_device *dev = st_tensor_device(dinp);
    /* The column sums first: they read dinp's old values when src2 is dinp. */
    if (!frozen &&
        (s = ST_LAUNCH(dev, "layernorm.cl", "layernorm_bwd_params", (size_t)cols, LOCAL,
                       ST_KT(dw), ST_KT(db), ST_KT(dout), ST_KT(inp), ST_KT(mean), ST_KT(rstd),
                       ST_KT(d2), ST_KT(s2), ST_KT(d3), ST_KT(s3), ST_KI(N), ST_KI(C),
                       ST_KI(C2), ST_KI(C3))) != ST_OK)
        return s;
    return LAUNCH_ROWS(dev, "layernorm.cl", "layernorm_bwd_inp", N, ST_KT(dinp), ST_KT(dout),
                       ST_KT(inp), ST_KT(w), ST_KT(mean), ST_KT(rstd), ST_KI(N), ST_KI(C));
}

st_status st_layernorm_bwd(st_tensor *dinp, st_tensor *dw, st_tensor *db, const st_tensor *dout,
                           const st_tensor *inp, const st_tensor *w, const st_tensor *mean,
                           const st_tensor *rstd, int N, int C)
{
    return st_layernorm_bwd_biases(dinp, dw, db, dout, inp, w, mean, rstd, N, C, NULL, NULL, 0,
                                   NULL, NULL, 0);
}

st_status st_bias_residual_fwd(st_tensor *out, const st_tensor *bias, const st_tensor *res,
                               int N, int C)
{
    st_status s = check_rows("bias_residual_fwd", N, C);
    if (s != ST_OK)
        return s;
    size_t NC = (size_t)N * C;
    NEED("bias_residual_fwd", out, NC);
    NEED("bias_residual_fwd", bias, (size_t)C);
    NEED("bias_residual_fwd", res, NC);
    return ST_LAUNCH(st_tensor_device(out), "residual.cl", "bias_residual_fwd", NC, LOCAL,
                     ST_KT(out), ST_KT(bias), ST_KT(res), ST_KI(N), ST_KI(C));
}

st_status st_bias_gelu_fwd(st_tensor *pre, st_tensor *act, const st_tensor *bias, int N, int F)
{
    st_status s = check_rows("bias_gelu_fwd", N, F);
    if (s != ST_OK)
        return s;
    size_t NF = (size_t)N * F;
    NEED("bias_gelu_fwd", pre, NF);
    NEED("bias_gelu_fwd", act, NF);
    NEED("bias_gelu_fwd", bias, (size_t)F);
    return ST_LAUNCH(st_tensor_device(pre), "gelu.cl", "bias_gelu_fwd", NF, LOCAL, ST_KT(pre),
                     ST_KT(act), ST_KT(bias), ST_KI(N), ST_KI(F));
}

st_status st_gelu_bwd_bias(st_tensor *dinp, const st_tensor *pre, const st_tensor *dout,
                           st_tensor *dbias, int N, int F)
{
    st_status s = check_rows("gelu_bwd_bias", N, F);
    if (s != ST_OK)
        return s;
    size_t NF = (size_t)N * F;
    NEED("gelu_bwd_bias", dinp, NF);
    NEED("gelu_bwd_bias", pre, NF);
    NEED("gelu_bwd_bias", dout, NF);
    st_device *dev = st_tensor_device(dinp);
    if (!dbias) /* a frozen bias: the element-wise part only */
        return ST_LAUNCH(dev, "gelu.cl", "gelu_bwd", NF, LOCAL, ST_KT(dinp), ST_KT(pre),
                         ST_KT(dout), ST_KU(NF));
    NEED("gelu_bwd_bias", dbias, (size_t)F);
    if (st_layers_cpu_form(dev)) { /* element-wise, then the column sums: a CPU's caches prefer rows */
        if ((s = ST_LAUNCH(dev, "gelu.cl", "gelu_bwd", NF, LOCAL, ST_KT(dinp), ST_KT(pre),
                           ST_KT(dout), ST_KU(NF))) != ST_OK)
            return s;
        return ST_LAUNCH(dev, "bias.cl", "bias_bwd", (size_t)F, LOCAL, ST_KT(dbias), ST_KT(dinp),
                         ST_KI(N), ST_KI(F));
    }
    return ST_LAUNCH(dev, "gelu.cl", "gelu_bwd_bias", (size_t)F, LOCAL, ST_KT(dinp), ST_KT(pre),
                     ST_KT(dout), ST_KT(dbias), ST_KI(N), ST_KI(F));
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
    return LAUNCH_ROWS(st_tensor_device(probs), "xent.cl", "xent_fwd", N, ST_KT(probs),
                       ST_KT(losses), ST_KT(logits), ST_KT(targets), ST_KI(N), ST_KI(V));
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

st_status st_adamw_step_runs(st_tensor *param, const st_tensor *grad, st_tensor *m, st_tensor *v,
                             const st_tensor *runs, int n_runs, size_t n,
                             const st_adamw_hparams *h, long t, float grad_scale)
{
    NEED("adamw", param, n);
    NEED("adamw", grad, n);
    NEED("adamw", m, n);
    NEED("adamw", v, n);
    st_status s = st_op_need("adamw", runs, 3 * (size_t)(n_runs > 0 ? n_runs : 1), ST_I32);
    if (s != ST_OK)
        return s;
    if (t < 1 || n_runs < 1)
        return st_error(ST_ERR_INVALID, "adamw: step number %ld (counts from 1), %d runs", t,
                        n_runs);
    float bc1 = (float)(1.0 - pow((double)h->beta1, (double)t));
    float bc2 = (float)(1.0 - pow((double)h->beta2, (double)t));
    /* Stretches of 64 x L elements, at least 64 x 256, at most 4096 of them. */
    const size_t wg = 64;
    size_t groups = (n + wg * 256 - 1) / (wg * 256);
    if (groups > 4096)
        groups = 4096;
    if (groups < 1)
        groups = 1;
    size_t L = (n + groups * wg - 1) / (groups * wg);
    groups = (n + L * wg - 1) / (L * wg);
    return ST_LAUNCH(st_tensor_device(param), "adamw.cl", "adamw_step_runs", groups * wg, wg,
                     ST_KT(param), ST_KT(grad), ST_KT(m), ST_KT(v), ST_KT(runs), ST_KI(n_runs),
                     ST_KU(n), ST_KU(L), ST_KF(h->lr), ST_KF(h->beta1), ST_KF(h->beta2), ST_KF(h->eps),
                     ST_KF(h->weight_decay), ST_KF(bc1), ST_KF(bc2), ST_KF(grad_scale));
}

st_status st_sumsq_accumulate(st_tensor *acc, st_tensor *scratch, const st_tensor *x, size_t n)
{
    NEED("sumsq", acc, 1);
    NEED("sumsq", scratch, ST_SUMSQ_PARTS);
    NEED("sumsq", x, n);
    st_device *dev = st_tensor_device(acc);
    /* Stretches of at least 64 x 256 elements (64 KiB: cached while a
     * group passes over it), at most ST_SUMSQ_PARTS of them. */
    const size_t wg = 64, min_stretch = wg * 256;
    size_t groups = (n + min_stretch - 1) / min_stretch;
    if (groups > ST_SUMSQ_PARTS)
        groups = ST_SUMSQ_PARTS;
    if (groups < 1)
        groups = 1;
    size_t L = (n + groups * wg - 1) / (groups * wg);
    groups = (n + L * wg - 1) / (L * wg); /* none left empty */
    if (groups < 1)
        groups = 1;
    st_status s = ST_LAUNCH(dev, "norm.cl", "sumsq_partial", groups * wg, wg, ST_KT(scratch),
                            ST_KT(x), ST_KU(n), ST_KU(L));
    if (s != ST_OK)
        return s;
    return ST_LAUNCH(dev, "norm.cl", "sumsq_final", 1, 1, ST_KT(acc), ST_KT(scratch),
                     ST_KI((int)groups));
}

/* ---- Llama family: RMSNorm, rotary embeddings, SwiGLU ---------------------------- */

st_status st_rmsnorm_fwd(st_tensor *out, st_tensor *rstd, const st_tensor *inp,
                         const st_tensor *w, int N, int C, float eps)
{
    st_status s = check_rows("rmsnorm_fwd", N, C);
    if (s != ST_OK)
        return s;
    size_t NC = (size_t)N * C;
    NEED("rmsnorm_fwd", out, NC);
    NEED("rmsnorm_fwd", rstd, (size_t)N);
    NEED("rmsnorm_fwd", inp, NC);
    NEED("rmsnorm_fwd", w, (size_t)C);
    return LAUNCH_ROWS(st_tensor_device(out), "rmsnorm.cl", "rmsnorm_fwd", N, ST_KT(out),
                       ST_KT(rstd), ST_KT(inp), ST_KT(w), ST_KI(N), ST_KI(C), ST_KF(eps));
}

st_status st_residual_rmsnorm_fwd(st_tensor *res, st_tensor *out, st_tensor *rstd,
                                  const st_tensor *y, const st_tensor *x, const st_tensor *w,
                                  int N, int C, float eps)
{
    st_status s = check_rows("residual_rmsnorm_fwd", N, C);
    if (s != ST_OK)
        return s;
    size_t NC = (size_t)N * C;
    NEED("residual_rmsnorm_fwd", res, NC);
    NEED("residual_rmsnorm_fwd", out, NC);
    NEED("residual_rmsnorm_fwd", rstd, (size_t)N);
    NEED("residual_rmsnorm_fwd", y, NC);
    NEED("residual_rmsnorm_fwd", x, NC);
    NEED("residual_rmsnorm_fwd", w, (size_t)C);
    return LAUNCH_ROWS(st_tensor_device(out), "rmsnorm.cl", "residual_rmsnorm_fwd", N,
                       ST_KT(res), ST_KT(out), ST_KT(rstd), ST_KT(y), ST_KT(x), ST_KT(w),
                       ST_KI(N), ST_KI(C), ST_KF(eps));
}

st_status st_rmsnorm_bwd(st_tensor *dinp, st_tensor *dw, const st_tensor *dout,
                         const st_tensor *inp, const st_tensor *w, const st_tensor *rstd, int N,
                         int C)
{
    st_status s = check_rows("rmsnorm_bwd", N, C);
    if (s != ST_OK)
        return s;
    size_t NC = (size_t)N * C;
    NEED("rmsnorm_bwd", dinp, NC);
    if (dw) /* NULL: a frozen weight */
        NEED("rmsnorm_bwd", dw, (size_t)C);
    NEED("rmsnorm_bwd", dout, NC);
    NEED("rmsnorm_bwd", inp, NC);
    NEED("rmsnorm_bwd", w, (size_t)C);
    NEED("rmsnorm_bwd", rstd, (size_t)N);
    st_device *dev = st_tensor_device(dinp);
    /* The weight gradient first: dout may be read after dinp changes only there. */
    if (dw && (s = ST_LAUNCH(dev, "rmsnorm.cl", "rmsnorm_bwd_w", (size_t)C, LOCAL, ST_KT(dw),
                             ST_KT(dout), ST_KT(inp), ST_KT(rstd), ST_KI(N), ST_KI(C))) != ST_OK)
        return s;
    return LAUNCH_ROWS(dev, "rmsnorm.cl", "rmsnorm_bwd_inp", N, ST_KT(dinp), ST_KT(dout),
                       ST_KT(inp), ST_KT(w), ST_KT(rstd), ST_KI(N), ST_KI(C));
}

static st_status rope_shapes(const char *op, int N, int T, int pos0, int NH, int KV, int HS)
{
    if (N < 1 || T < 1 || N % T != 0 || pos0 < 0 || NH < 1 || KV < 1 || NH % KV != 0 ||
        HS < 2 || HS % 2 != 0)
        return st_error(ST_ERR_INVALID, "%s: bad shape N=%d T=%d pos0=%d NH=%d KV=%d HS=%d", op,
                        N, T, pos0, NH, KV, HS);
    return ST_OK;
}

st_status st_rope_fwd(st_tensor *qkv, const st_tensor *bias, const st_tensor *inv_freq,
                      const st_tensor *rows, const st_tensor *pos, int N, int T, int pos0,
                      int NH, int KV, int HS)
{
    st_status s = rope_shapes("rope_fwd", N, T, pos0, NH, KV, HS);
    if (s != ST_OK)
        return s;
    size_t W = (size_t)(NH + 2 * KV) * HS;
    NEED("rope_fwd", qkv, (size_t)N * W);
    NEED("rope_fwd", inv_freq, (size_t)HS / 2);
    if (bias)
        NEED("rope_fwd", bias, W);
    if (rows && (s = st_op_need("rope_fwd", rows, 2 * (size_t)N, ST_I32)) != ST_OK)
        return s;
    if (pos && (s = rows ? st_error(ST_ERR_INVALID, "rope_fwd: both decoding rows and positions")
                         : st_op_need("rope_fwd", pos, (size_t)N, ST_I32)) != ST_OK)
        return s;
    size_t per_row = (size_t)(HS / 2) + (bias ? (size_t)KV * HS : 0);
    const st_tensor *tab = rows ? rows : pos ? pos : inv_freq;
    return ST_LAUNCH(st_tensor_device(qkv), "rope.cl", "rope_fwd", (size_t)N * per_row, LOCAL,
                     ST_KT(qkv), ST_KT(bias ? bias : inv_freq), ST_KT(inv_freq), ST_KT(tab),
                     ST_KI(rows ? 1 : pos ? 2 : 0), ST_KI(bias != NULL), ST_KI(N), ST_KI(T),
                     ST_KI(pos0), ST_KI(NH), ST_KI(KV), ST_KI(HS));
}

st_status st_rope_bwd(st_tensor *dqkv, const st_tensor *inv_freq, const st_tensor *pos, int N,
                      int T, int pos0, int NH, int KV, int HS)
{
    st_status s = rope_shapes("rope_bwd", N, T, pos0, NH, KV, HS);
    if (s != ST_OK)
        return s;
    NEED("rope_bwd", dqkv, (size_t)N * (size_t)(NH + 2 * KV) * HS);
    NEED("rope_bwd", inv_freq, (size_t)HS / 2);
    if (pos && (s = st_op_need("rope_bwd", pos, (size_t)N, ST_I32)) != ST_OK)
        return s;
    return ST_LAUNCH(st_tensor_device(dqkv), "rope.cl", "rope_bwd",
                     (size_t)N * (size_t)(HS / 2), LOCAL, ST_KT(dqkv), ST_KT(inv_freq),
                     ST_KT(pos ? pos : inv_freq), ST_KI(pos != NULL), ST_KI(N), ST_KI(T),
                     ST_KI(pos0), ST_KI(NH), ST_KI(KV), ST_KI(HS));
}

st_status st_swiglu_fwd(st_tensor *h, const st_tensor *gu, int N, int F)
{
    st_status s = check_rows("swiglu_fwd", N, F);
    if (s != ST_OK)
        return s;
    NEED("swiglu_fwd", h, (size_t)N * F);
    NEED("swiglu_fwd", gu, (size_t)N * 2 * F);
    return ST_LAUNCH(st_tensor_device(h), "swiglu.cl", "swiglu_fwd", (size_t)N * F, LOCAL,
                     ST_KT(h), ST_KT(gu), ST_KI(N), ST_KI(F));
}

st_status st_swiglu_bwd(st_tensor *dgu, const st_tensor *dh, const st_tensor *gu, int N, int F)
{
    st_status s = check_rows("swiglu_bwd", N, F);
    if (s != ST_OK)
        return s;
    NEED("swiglu_bwd", dgu, (size_t)N * 2 * F);
    NEED("swiglu_bwd", dh, (size_t)N * F);
    NEED("swiglu_bwd", gu, (size_t)N * 2 * F);
    return ST_LAUNCH(st_tensor_device(dgu), "swiglu.cl", "swiglu_bwd", (size_t)N * F, LOCAL,
                     ST_KT(dgu), ST_KT(dh), ST_KT(gu), ST_KI(N), ST_KI(F));
}
