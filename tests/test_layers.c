/*
 * test_layers.c - the ops of strata/layers.h on every device against the
 * double-precision references of ref_ops.c, and those references' backward
 * passes against central finite differences of their forwards (tolerances:
 * tests/layer_check.h). The Llama family's ops: test_llama_layers.c.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "strata/layers.h"
#include "tests/common.h"
#include "tests/ref_ops.h"
#include "tests/layer_check.h"

static test_devices td;

/* ---- layernorm */

typedef struct ln_ctx {
    double *inp, *w, *b, *r;
    int N, C;
} ln_ctx;

static double ln_loss(void *p)
{
    ln_ctx *c = p;
    size_t NC = (size_t)c->N * c->C;
    double *out = zeros(NC), *mean = zeros(c->N), *rstd = zeros(c->N);
    ref_layernorm_fwd(out, mean, rstd, c->inp, c->w, c->b, c->N, c->C, 1e-5);
    double L = 0;
    for (size_t i = 0; i < NC; i++)
        L += out[i] * c->r[i];
    free(out);
    free(mean);
    free(rstd);
    return L;
}

static void layernorm_reference_backward_is_the_gradient(void **state)
{
    (void)state;
    int N = 3, C = 7;
    size_t NC = (size_t)N * C;
    ln_ctx c = {rnd(NC, 1, 2.0), rnd(C, 2, 1.0), rnd(C, 3, 1.0), rnd(NC, 4, 1.0), N, C};
    double *out = zeros(NC), *mean = zeros(N), *rstd = zeros(N);
    double *dinp = zeros(NC), *dw = zeros(C), *db = zeros(C);
    ref_layernorm_fwd(out, mean, rstd, c.inp, c.w, c.b, N, C, 1e-5);
    ref_layernorm_bwd(dinp, dw, db, c.r, c.inp, c.w, mean, rstd, N, C);
    check_fd("layernorm dinp", c.inp, NC, dinp, ln_loss, &c);
    check_fd("layernorm dw", c.w, C, dw, ln_loss, &c);
    check_fd("layernorm db", c.b, C, db, ln_loss, &c);
    free(c.inp), free(c.w), free(c.b), free(c.r), free(out), free(mean), free(rstd);
    free(dinp), free(dw), free(db);
}

static void layernorm_matches_reference(void **state)
{
    (void)state;
    static const int shapes[][2] = {{1, 1}, {13, 37}, {64, 256}};
    for (int form = ST_LAYERS_GPU; form <= ST_LAYERS_CPU + 1; form++) /* and by device */
    for (size_t d = 0; (st_layers_set_variant(form > ST_LAYERS_CPU ? -1 : form), d < td.n); d++)
        for (size_t k = 0; k < 3; k++) {
            st_device *dev = td.dev[d];
            int N = shapes[k][0], C = shapes[k][1];
            size_t NC = (size_t)N * C;
            double *inp = rnd(NC, 10 + k, 3.0), *w = rnd(C, 11, 1.0), *b = rnd(C, 12, 1.0);
            double *dout = rnd(NC, 13, 1.0);
            double *out = zeros(NC), *mean = zeros(N), *rstd = zeros(N);
            /* Gradients start non-zero: the op must add to them. */
            double *dinp = rnd(NC, 14, 1.0), *dw = rnd(C, 15, 1.0), *db = rnd(C, 16, 1.0);
            st_tensor *t_inp = up(dev, inp, NC, "inp"), *t_w = up(dev, w, C, "w"),
                      *t_b = up(dev, b, C, "b"), *t_dout = up(dev, dout, NC, "dout"),
                      *t_out = up(dev, out, NC, "out"), *t_mean = up(dev, mean, N, "mean"),
                      *t_rstd = up(dev, rstd, N, "rstd"), *t_dinp = up(dev, dinp, NC, "dinp"),
                      *t_dw = up(dev, dw, C, "dw"), *t_db = up(dev, db, C, "db");
            ref_layernorm_fwd(out, mean, rstd, inp, w, b, N, C, 1e-5);
            ref_layernorm_bwd(dinp, dw, db, dout, inp, w, mean, rstd, N, C);
            assert_ok(st_layernorm_fwd(t_out, t_mean, t_rstd, t_inp, t_w, t_b, N, C, 1e-5f));
            assert_ok(st_layernorm_bwd(t_dinp, t_dw, t_db, t_dout, t_inp, t_w, t_mean, t_rstd, N,
                                       C));
            check("layernorm out", t_out, out, NC);
            check("layernorm mean", t_mean, mean, N);
            check("layernorm rstd", t_rstd, rstd, N);
            check("layernorm dinp", t_dinp, dinp, NC);
            check("layernorm dw", t_dw, dw, C);
            check("layernorm db", t_db, db, C);
            st_tensor *all[] = {t_inp, t_w, t_b, t_dout, t_out, t_mean, t_rstd, t_dinp, t_dw, t_db};
            for (size_t i = 0; i < 10; i++)
                st_tensor_destroy(all[i]);
            free(inp), free(w), free(b), free(dout), free(out), free(mean), free(rstd);
            free(dinp), free(dw), free(db);
        }
}

/* ---- gelu */

typedef struct gelu_ctx {
    double *inp, *r;
    size_t n;
} gelu_ctx;

static double gelu_loss(void *p)
{
    gelu_ctx *c = p;
    double *out = zeros(c->n), L = 0;
    ref_gelu_fwd(out, c->inp, c->n);
    for (size_t i = 0; i < c->n; i++)
        L += out[i] * c->r[i];
    free(out);
    return L;
}

static void gelu_reference_and_device(void **state)
{
    (void)state;
    size_t n = 1000;
    gelu_ctx c = {rnd(n, 20, 5.0), rnd(n, 21, 1.0), n};
    double *out = zeros(n), *dinp = zeros(n);
    ref_gelu_fwd(out, c.inp, n);
    ref_gelu_bwd(dinp, c.inp, c.r, n);
    check_fd("gelu dinp", c.inp, n, dinp, gelu_loss, &c);
    /* Known values: gelu(0) = 0; gelu(x) -> x for large x; -> 0 for very negative x. */
    double x[3] = {0.0, 10.0, -10.0}, y[3];
    ref_gelu_fwd(y, x, 3);
    assert_true(y[0] == 0.0 && fabs(y[1] - 10.0) < 1e-12 && fabs(y[2]) < 1e-12);
    for (size_t d = 0; d < td.n; d++) {
        st_device *dev = td.dev[d];
        st_tensor *t_inp = up(dev, c.inp, n, "inp"), *t_r = up(dev, c.r, n, "dout");
        st_tensor *t_out = up(dev, c.r, n, "out"), *t_dinp = up(dev, c.r, n, "dinp");
        assert_ok(st_gelu_fwd(t_out, t_inp, n));
        assert_ok(st_gelu_bwd(t_dinp, t_inp, t_r, n));
        check("gelu out", t_out, out, n);
        check("gelu dinp", t_dinp, dinp, n);
        st_tensor_destroy(t_inp), st_tensor_destroy(t_r), st_tensor_destroy(t_out);
        st_tensor_destroy(t_dinp);
    }
    free(c.inp), free(c.r), free(out), free(dinp);
}

/* ---- residual and bias: linear, checked exactly against the reference */

static void residual_and_bias_match(void **state)
{
    (void)state;
    int N = 37, C = 19;
    size_t n = (size_t)N * C;
    for (size_t d = 0; d < td.n; d++) {
        st_device *dev = td.dev[d];
        double *a = rnd(n, 30, 1.0), *b = rnd(n, 31, 1.0), *g = rnd(n, 32, 1.0);
        double *da = rnd(n, 33, 1.0), *db = rnd(n, 34, 1.0), *bias = rnd(C, 35, 1.0);
        double *dbias = rnd(C, 36, 1.0), *out = zeros(n);
        st_tensor *ta = up(dev, a, n, "a"), *tb = up(dev, b, n, "b"), *tg = up(dev, g, n, "g"),
                  *tda = up(dev, da, n, "da"), *tdb = up(dev, db, n, "db"),
                  *tbias = up(dev, bias, C, "bias"), *tdbias = up(dev, dbias, C, "dbias"),
                  *tout = up(dev, out, n, "out");
        for (size_t i = 0; i < n; i++) {
            out[i] = a[i] + b[i];
            da[i] += g[i];
            db[i] += g[i];
        }
        assert_ok(st_residual_fwd(tout, ta, tb, n));
        assert_ok(st_residual_bwd(tda, tdb, tg, n));
        check("residual out", tout, out, n);
        check("residual da", tda, da, n);
        check("residual db", tdb, db, n);
        ref_bias_fwd(out, bias, N, C);
        ref_bias_bwd(dbias, g, N, C);
        assert_ok(st_bias_fwd(tout, tbias, N, C));
        assert_ok(st_bias_bwd(tdbias, tg, N, C));
        check("bias out", tout, out, n);
        check("bias dbias", tdbias, dbias, C);
        st_tensor *all[] = {ta, tb, tg, tda, tdb, tbias, tdbias, tout};
        for (size_t i = 0; i < 8; i++)
            st_tensor_destroy(all[i]);
        free(a), free(b), free(g), free(da), free(db), free(bias), free(dbias), free(out);
    }
}

/* ---- the linear layer (Conv1D) */

typedef struct mm_ctx {
    double *inp, *w, *b, *g;
    int N, IC, OC;
} mm_ctx;

static double mm_loss(void *p)
{
    mm_ctx *c = p;
    size_t n = (size_t)c->N * c->OC;
    double *out = zeros(n), loss = 0;
    ref_matmul_fwd(out, c->inp, c->w, c->b, c->N, c->IC, c->OC);
    for (size_t i = 0; i < n; i++)
        loss += out[i] * c->g[i];
    free(out);
    return loss;
}

static void matmul_reference_and_device(void **state)
{
    (void)state;
    int N = 13, IC = 24, OC = 20;
    size_t ni = (size_t)N * IC, nw = (size_t)IC * OC, no = (size_t)N * OC;
    double *inp = rnd(ni, 60, 1.0), *w = rnd(nw, 61, 0.5), *b = rnd(OC, 62, 0.5);
    double *g = rnd(no, 63, 1.0), *dinp = zeros(ni), *dw = zeros(nw), *db = zeros(OC);
    /* The reference backward is the gradient of sum(out * g). */
    mm_ctx c = {inp, w, b, g, N, IC, OC};
    ref_matmul_bwd(dinp, dw, db, g, inp, w, N, IC, OC);
    check_fd("matmul dinp", inp, ni, dinp, mm_loss, &c);
    check_fd("matmul dw", w, nw, dw, mm_loss, &c);
    check_fd("matmul db", b, OC, db, mm_loss, &c);
    for (size_t d = 0; d < td.n; d++) {
        st_device *dev = td.dev[d];
        double *out = zeros(no), *dw0 = rnd(nw, 64, 1.0), *db0 = rnd(OC, 65, 1.0);
        double *dinp0 = rnd(ni, 66, 1.0), *dw_ref = zeros(nw), *db_ref = zeros(OC);
        double *dinp_ref = zeros(ni);
        st_tensor *ti = up(dev, inp, ni, "inp"), *tw = up(dev, w, nw, "w"),
                  *tb = up(dev, b, OC, "b"), *tg = up(dev, g, no, "dout"),
                  *to = up(dev, out, no, "out"), *tdi = up(dev, dinp0, ni, "dinp"),
                  *tdw = up(dev, dw0, nw, "dw"), *tdb = up(dev, db0, OC, "db");
        ref_matmul_fwd(out, inp, w, b, N, IC, OC);
        assert_ok(st_matmul_fwd(to, ti, tw, tb, N, IC, OC));
        check("matmul out", to, out, no);
        /* dw and db accumulate onto what they held; dinp with beta 1 does too. */
        memcpy(dw_ref, dw0, nw * sizeof *dw_ref);
        memcpy(db_ref, db0, OC * sizeof *db_ref);
        ref_matmul_bwd(dinp_ref, dw_ref, db_ref, g, inp, w, N, IC, OC);
        for (size_t i = 0; i < ni; i++)
            dinp_ref[i] += dinp0[i];
        assert_ok(st_matmul_bwd(tdi, 1.0f, tdw, tdb, tg, ti, tw, N, IC, OC));
        check("matmul dinp (beta 1)", tdi, dinp_ref, ni);
        check("matmul dw", tdw, dw_ref, nw);
        check("matmul db", tdb, db_ref, OC);
        for (size_t i = 0; i < ni; i++)
            dinp_ref[i] -= dinp0[i];
        assert_ok(st_matmul_bwd(tdi, 0.0f, tdw, NULL, tg, ti, tw, N, IC, OC));
        check("matmul dinp (beta 0)", tdi, dinp_ref, ni);
        st_tensor *all[] = {ti, tw, tb, tg, to, tdi, tdw, tdb};
        for (size_t i = 0; i < 8; i++)
            st_tensor_destroy(all[i]);
        free(out), free(dw0), free(db0), free(dinp0), free(dw_ref), free(db_ref), free(dinp_ref);
    }
    free(inp), free(w), free(b), free(g), free(dinp), free(dw), free(db);
}

/* ---- softmax + cross-entropy */

typedef struct xent_ctx {
    double *logits;
    const int *targets;
    int N, V, counted;
} xent_ctx;

static double xent_loss(void *p)
{
    xent_ctx *c = p;
    size_t NV = (size_t)c->N * c->V;
    double *probs = zeros(NV), *losses = zeros(c->N), L = 0;
    ref_xent_fwd(probs, losses, c->logits, c->targets, c->N, c->V);
    for (int n = 0; n < c->N; n++)
        L += losses[n];
    free(probs);
    free(losses);
    return L / c->counted;
}

static void xent_reference_and_device(void **state)
{
    (void)state;
    int N = 9, V = 301;
    size_t NV = (size_t)N * V;
    int targets[9] = {0, 300, 17, -1, 5, 5, 299, 1, 150}; /* row 3 has no target */
    xent_ctx c = {rnd(NV, 40, 8.0), targets, N, V, 8};
    double *probs = zeros(NV), *losses = zeros(N), *dlogits = zeros(NV);
    ref_xent_fwd(probs, losses, c.logits, targets, N, V);
    ref_xent_bwd(dlogits, probs, targets, 1.0 / c.counted, N, V);
    check_fd("xent dlogits", c.logits, NV, dlogits, xent_loss, &c);
    assert_true(losses[3] == 0.0);
    for (int form = ST_LAYERS_GPU; form <= ST_LAYERS_CPU; form++) /* both forms of the forward */
    for (size_t d = 0; (st_layers_set_variant(form), d < td.n); d++) {
        st_device *dev = td.dev[d];
        st_tensor *tl = up(dev, c.logits, NV, "logits"), *tt = up_int(dev, targets, N);
        st_tensor *tp = up(dev, probs, NV, "probs"), *tloss = up(dev, losses, N, "losses");
        /* In place, as the head uses it: probabilities over the logits, then
         * the gradient over the probabilities. */
        assert_ok(st_xent_fwd(tl, tloss, tl, tt, N, V));
        check("xent probs", tl, probs, NV);
        check("xent losses", tloss, losses, N);
        assert_ok(st_xent_bwd(tl, tl, tt, 1.0f / c.counted, N, V));
        check("xent dlogits", tl, dlogits, NV);
        st_tensor_destroy(tl), st_tensor_destroy(tt), st_tensor_destroy(tp);
        st_tensor_destroy(tloss);
    }
    st_layers_set_variant(-1);
    free(c.logits), free(probs), free(losses), free(dlogits);
}

/* ---- AdamW */

static void adamw_matches_reference_over_steps(void **state)
{
    (void)state;
    size_t n = 513;
    st_adamw_hparams h = {.lr = 1e-2f, .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f,
                          .weight_decay = 0.1f};
    for (size_t d = 0; d < td.n; d++) {
        st_device *dev = td.dev[d];
        double *p = rnd(n, 50, 1.0), *m = zeros(n), *v = zeros(n);
        st_tensor *tp = up(dev, p, n, "param"), *tm = up(dev, m, n, "m"), *tv = up(dev, v, n, "v");
        for (long t = 1; t <= 3; t++) {
            double *g = rnd(n, 60 + (unsigned long long)t, 1.0);
            st_tensor *tg = up(dev, g, n, "grad");
            float scale = t == 2 ? 0.5f : 1.0f;
            assert_ok(st_adamw_step(tp, tg, tm, tv, n, &h, t, scale));
            ref_adamw_step(p, g, m, v, n, h.lr, h.beta1, h.beta2, h.eps, h.weight_decay, t,
                           scale);
            st_tensor_destroy(tg);
            free(g);
        }
        check("adamw param", tp, p, n);
        check("adamw m", tm, m, n);
        check("adamw v", tv, v, n);
        assert_int_equal(st_adamw_step(tp, tp, tm, tv, n, &h, 0, 1.0f), ST_ERR_INVALID);
        st_tensor_destroy(tp), st_tensor_destroy(tm), st_tensor_destroy(tv);
        free(p), free(m), free(v);
    }
}

/* ---- encoder */

static void encoder_matches_reference(void **state)
{
    (void)state;
    int B = 3, T = 5, C = 6, V = 7;
    int tokens[15] = {0, 6, 3, 3, 1, 6, 6, 6, 0, 2, 3, 5, 4, 1, 3}; /* repeats on purpose */
    size_t BTC = (size_t)B * T * C;
    for (size_t d = 0; d < td.n; d++) {
        st_device *dev = td.dev[d];
        double *wte = rnd((size_t)V * C, 70, 1.0), *wpe = rnd((size_t)T * C, 71, 1.0);
        double *dout = rnd(BTC, 72, 1.0), *out = zeros(BTC);
        double *dwte = rnd((size_t)V * C, 73, 1.0), *dwpe = rnd((size_t)T * C, 74, 1.0);
        st_tensor *tt = up_int(dev, tokens, 15), *twte = up(dev, wte, (size_t)V * C, "wte"),
                  *twpe = up(dev, wpe, (size_t)T * C, "wpe"), *tdout = up(dev, dout, BTC, "dout"),
                  *tout = up(dev, out, BTC, "out"), *tdwte = up(dev, dwte, (size_t)V * C, "dwte"),
                  *tdwpe = up(dev, dwpe, (size_t)T * C, "dwpe");
        ref_encoder_fwd(out, tokens, wte, wpe, B, T, C);
        ref_encoder_bwd(dwte, dwpe, dout, tokens, B, T, C);
        assert_ok(st_encoder_fwd(tout, tt, twte, twpe, NULL, NULL, B, T, C, V));
        assert_ok(st_encoder_bwd(tdwte, tdwpe, tdout, tt, NULL, B, T, C, V));
        check("encoder out", tout, out, BTC);
        check("encoder dwte", tdwte, dwte, (size_t)V * C);
        check("encoder dwpe", tdwpe, dwpe, (size_t)T * C);
        /* decoding's form: each row's position from a table, the same bits */
        int rows[30];
        for (int r = 0; r < B * T; r++)
            rows[2 * r] = r % B, rows[2 * r + 1] = r % T;
        st_tensor *tr = up_int(dev, rows, 30), *tout2 = up(dev, out, BTC, "out2");
        assert_ok(st_encoder_fwd(tout2, tt, twte, twpe, tr, NULL, 1, B * T, C, V));
        float *g1 = malloc(BTC * sizeof *g1), *g2 = malloc(BTC * sizeof *g2);
        assert_ok(st_tensor_read(tout, 0, BTC, g1));
        assert_ok(st_tensor_read(tout2, 0, BTC, g2));
        assert_memory_equal(g1, g2, BTC * sizeof *g1);
        free(g1), free(g2);
        st_tensor_destroy(tr), st_tensor_destroy(tout2);
        st_tensor *all[] = {tt, twte, twpe, tdout, tout, tdwte, tdwpe};
        for (size_t i = 0; i < 7; i++)
            st_tensor_destroy(all[i]);
        free(wte), free(wpe), free(dout), free(out), free(dwte), free(dwpe);
    }
}

/* ---- attention */

typedef struct attn_ctx {
    double *qkv, *r;
    int B, T, C, NH;
} attn_ctx;

static double attn_loss(void *p)
{
    attn_ctx *c = p;
    size_t n = (size_t)c->B * c->T * c->C;
    double *out = zeros(n), *att = zeros((size_t)c->B * c->NH * c->T * c->T), L = 0;
    ref_attention_fwd(out, att, c->qkv, c->B, c->T, c->C, c->NH);
    for (size_t i = 0; i < n; i++)
        L += out[i] * c->r[i];
    free(out);
    free(att);
    return L;
}

static void attention_reference_backward_is_the_gradient(void **state)
{
    (void)state;
    int B = 2, T = 4, C = 6, NH = 2;
    size_t n = (size_t)B * T * C, nq = 3 * n, na = (size_t)B * NH * T * T;
    attn_ctx c = {rnd(nq, 80, 1.5), rnd(n, 81, 1.0), B, T, C, NH};
    double *out = zeros(n), *att = zeros(na), *dqkv = zeros(nq);
    ref_attention_fwd(out, att, c.qkv, B, T, C, NH);
    ref_attention_bwd(dqkv, c.r, c.qkv, att, B, T, C, NH);
    check_fd("attention dqkv", c.qkv, nq, dqkv, attn_loss, &c);
    /* Causal: the first position attends only to itself. */
    assert_true(fabs(att[0] - 1.0) < 1e-15 && att[1] == 0.0);
    free(c.qkv), free(c.r), free(out), free(att), free(dqkv);
}

static void attention_matches_reference(void **state)
{
    (void)state;
    static const int shapes[][4] = {{1, 1, 4, 1}, {2, 5, 12, 3}, {3, 17, 32, 4}};
    for (size_t d = 0; d < td.n; d++)
        for (size_t k = 0; k < 3; k++) {
            st_device *dev = td.dev[d];
            int B = shapes[k][0], T = shapes[k][1], C = shapes[k][2], NH = shapes[k][3];
            size_t n = (size_t)B * T * C, nq = 3 * n, na = (size_t)B * NH * T * T;
            double *qkv = rnd(nq, 90 + k, 2.0), *dout = rnd(n, 95 + k, 1.0);
            double *out = zeros(n), *att = zeros(na), *dqkv = zeros(nq);
            ref_attention_fwd(out, att, qkv, B, T, C, NH);
            ref_attention_bwd(dqkv, dout, qkv, att, B, T, C, NH);
            st_tensor *tq = up(dev, qkv, nq, "qkv"), *tdout = up(dev, dout, n, "dout"),
                      *tout = up(dev, dout, n, "out"), *tatt = up(dev, att, na, "att"),
                      *tdatt = up(dev, att, na, "datt"), *tdq = up(dev, qkv, nq, "dqkv");
            assert_ok(st_attention_fwd(tout, tatt, tq, NULL, B, T, C, NH));
            assert_ok(st_attention_bwd(tdq, tdatt, tdout, tq, tatt, NULL, B, T, C, NH));
            check("attention out", tout, out, n);
            check("attention att", tatt, att, na);
            check("attention dqkv", tdq, dqkv, nq);
            st_tensor *all[] = {tq, tdout, tout, tatt, tdatt, tdq};
            for (size_t i = 0; i < 6; i++)
                st_tensor_destroy(all[i]);
            free(qkv), free(dout), free(out), free(att), free(dqkv);
        }
}

/* Attention without the T x T matrix: out, its log-sum-exp per row and dqkv
 * against the fp64 reference, over shapes with T below, at and beyond a
 * tile (16), several tiles, and head sizes 1 to 128 (the largest allowed);
 * two runs agree bitwise; a head beyond the limit is refused. */
static void flash_attention_matches_reference(void **state)
{
    (void)state;
    static const int shapes[][4] = {{1, 1, 4, 1},  {2, 5, 12, 3},  {3, 17, 32, 4},
                                    {1, 16, 8, 1}, {2, 40, 24, 2}, {1, 33, 128, 1}};
    for (size_t d = 0; d < td.n; d++)
        for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
            st_device *dev = td.dev[d];
            int B = shapes[k][0], T = shapes[k][1], C = shapes[k][2], NH = shapes[k][3];
            size_t n = (size_t)B * T * C, nq = 3 * n, na = (size_t)B * NH * T * T;
            size_t nl = (size_t)B * NH * T;
            double *qkv0 = rnd(nq, 190 + k, 2.0), *dout = rnd(n, 195 + k, 1.0);
            double *bias = rnd(3 * (size_t)C, 185 + k, 0.5), *qkv = zeros(nq);
            double *out = zeros(n), *att = zeros(na), *dqkv = zeros(nq), *lse = zeros(nl);
            /* The kernels take qkv without its bias and add it as they read. */
            for (size_t r = 0; r < (size_t)B * T; r++)
                for (size_t e = 0; e < 3 * (size_t)C; e++)
                    qkv[r * 3 * C + e] = (double)(float)qkv0[r * 3 * C + e] + (double)(float)bias[e];
            ref_attention_fwd(out, att, qkv, B, T, C, NH);
            ref_attention_bwd(dqkv, dout, qkv, att, B, T, C, NH);
            /* lse of row (b, h, t): log sum_s<=t exp(q.k_s * scale) */
            double scale = 1.0 / sqrt((double)(C / NH));
            int HS = C / NH;
            for (int b = 0; b < B; b++)
                for (int h = 0; h < NH; h++)
                    for (int t = 0; t < T; t++) {
                        double m = -INFINITY, sum = 0, sc[64];
                        double *sv = T <= 64 ? sc : malloc((size_t)T * sizeof *sv);
                        for (int s2 = 0; s2 <= t; s2++) {
                            double dot = 0;
                            for (int e = 0; e < HS; e++)
                                dot += qkv[((size_t)b * T + t) * 3 * C + h * HS + e] *
                                       qkv[((size_t)b * T + s2) * 3 * C + C + h * HS + e];
                            sv[s2] = dot * scale;
                            m = fmax(m, sv[s2]);
                        }
                        for (int s2 = 0; s2 <= t; s2++)
                            sum += exp(sv[s2] - m);
                        lse[((size_t)b * NH + h) * T + t] = m + log(sum);
                        if (sv != sc)
                            free(sv);
                    }
            st_tensor *tq = up(dev, qkv0, nq, "qkv"), *tdout = up(dev, dout, n, "dout"),
                      *tout = up(dev, dout, n, "out"), *tlse = up(dev, dout, nl, "lse"), /* nl <= n */
                      *tdq = up(dev, qkv, nq, "dqkv"), *tb = up(dev, bias, 3 * (size_t)C, "bias");
            assert_ok(st_attention_flash_fwd(tout, tlse, tq, tb, NULL, B, T, C, NH));
            assert_ok(st_attention_flash_bwd(tdq, tdout, tout, tlse, tq, tb, NULL, B, T, C, NH));
            check("flash attention out", tout, out, n);
            check("flash attention lse", tlse, lse, nl);
            check("flash attention dqkv", tdq, dqkv, nq);
            float *a1 = malloc(nq * sizeof *a1), *a2 = malloc(nq * sizeof *a2);
            assert_ok(st_tensor_read(tdq, 0, nq, a1));
            assert_ok(st_attention_flash_fwd(tout, tlse, tq, tb, NULL, B, T, C, NH));
            assert_ok(st_attention_flash_bwd(tdq, tdout, tout, tlse, tq, tb, NULL, B, T, C, NH));
            assert_ok(st_tensor_read(tdq, 0, nq, a2));
            assert_memory_equal(a1, a2, nq * sizeof *a1);
            st_tensor *all[] = {tq, tdout, tout, tlse, tdq, tb};
            for (size_t i = 0; i < 6; i++)
                st_tensor_destroy(all[i]);
            free(a1), free(a2);
            free(qkv0), free(bias), free(qkv), free(dout), free(out), free(att), free(dqkv),
                free(lse);
        }
    /* C/NH = 129: beyond the kernel's head size. */
    double *x = rnd(3 * 129, 1, 1.0);
    st_tensor *q = up(td.dev[0], x, 3 * 129, "qkv"), *o = up(td.dev[0], x, 129, "out"),
              *l = up(td.dev[0], x, 1, "lse");
    assert_int_equal(st_attention_flash_fwd(o, l, q, q, NULL, 1, 1, 129, 1), ST_ERR_INVALID);
    assert_contains(st_last_error(), "head size 129");
    st_tensor_destroy(q), st_tensor_destroy(o), st_tensor_destroy(l);
    free(x);
}

/* Packed documents (strata/layers.h): rows of several documents, each with
 * its own positions, attend only within their document. Each document's
 * rows of out, lse and dqkv equal what the document alone gives as a
 * sequence of its own: bit for bit on the flash path (the same keys in the
 * same order), within float rounding on the T x T path (its products also
 * add the other documents' zero probabilities). Documents cross tile
 * boundaries (16 rows); grouped key/value heads; sequence 1 is one document
 * (its positions 0 .. T-1: the plain path's bits). */
static void packed_attention_equals_separate_sequences(void **state)
{
    (void)state;
    enum { B = 2, T = 40 };
    static const int lens[B][5] = {{7, 20, 3, 10, 0}, {40, 0}};
    static const int shapes[][3] = {{24, 2, 2}, {24, 4, 2}, {24, 2, 1}}; /* C, NH, KV */
    int pos[B * T];
    for (int b = 0; b < B; b++)
        for (int k = 0, t = 0; lens[b][k]; t += lens[b][k], k++)
            for (int i = 0; i < lens[b][k]; i++)
                pos[b * T + t + i] = i;
    for (size_t d = 0; d < td.n; d++)
        for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++)
            for (int flash = 1; flash >= 0; flash--) {
                int C = shapes[k][0], NH = shapes[k][1], KV = shapes[k][2], HS = C / NH;
                if (!flash && KV != NH)
                    continue; /* the T x T path is GPT-2's: no grouped heads */
                st_device *dev = td.dev[d];
                size_t W = (size_t)C + 2 * (size_t)KV * HS, n = (size_t)B * T * C;
                size_t nq = (size_t)B * T * W, na = (size_t)B * NH * T * T, nl = (size_t)B * NH * T;
                double *qkv = rnd(nq, 300 + k, 2.0), *dout = rnd(n, 310 + k, 1.0);
                double *bias = rnd(W, 320 + k, 0.5), *scratch = zeros(na > nl ? na : nl);
                st_tensor *tq = up(dev, qkv, nq, "qkv"), *tdout = up(dev, dout, n, "dout"),
                          *tout = up(dev, dout, n, "out"), *tdq = up(dev, qkv, nq, "dqkv"),
                          *tb = up(dev, bias, W, "bias"), *tp = up_int(dev, pos, B * T),
                          *tl = up(dev, scratch, flash ? nl : na, "lse or att"),
                          *tdatt = up(dev, scratch, flash ? 1 : na, "datt");
                if (flash) {
                    assert_ok(st_attention_gqa_fwd(tout, tl, tq, tb, tp, B, T, C, NH, KV));
                    assert_ok(
                        st_attention_gqa_bwd(tdq, tdout, tout, tl, tq, tb, tp, B, T, C, NH, KV));
                } else {
                    assert_ok(st_attention_fwd(tout, tl, tq, tp, B, T, C, NH));
                    assert_ok(st_attention_bwd(tdq, tdatt, tdout, tq, tl, tp, B, T, C, NH));
                }
                float *out = malloc(n * sizeof *out), *dq = malloc(nq * sizeof *dq);
                float *lse = malloc(nl * sizeof *lse);
                assert_ok(st_tensor_read(tout, 0, n, out));
                assert_ok(st_tensor_read(tdq, 0, nq, dq));
                if (flash)
                    assert_ok(st_tensor_read(tl, 0, nl, lse));
                for (int b = 0; b < B; b++)
                    for (int j = 0, t0 = 0; lens[b][j]; t0 += lens[b][j], j++) {
                        int L = lens[b][j];
                        size_t m = (size_t)L * C, mq = (size_t)L * W;
                        /* the document alone: its rows of qkv (as floats: the same values) */
                        double *q1 = zeros(mq), *do1 = zeros(m);
                        for (size_t e = 0; e < mq; e++)
                            q1[e] = (double)(float)qkv[((size_t)b * T + t0) * W + e];
                        for (size_t e = 0; e < m; e++)
                            do1[e] = (double)(float)dout[((size_t)b * T + t0) * C + e];
                        size_t ns = flash ? (size_t)NH * L : (size_t)NH * L * L;
                        double *s1 = zeros(ns);
                        st_tensor *sq = up(dev, q1, mq, "qkv1"), *sdo = up(dev, do1, m, "dout1"),
                                  *so = up(dev, do1, m, "out1"), *sdq = up(dev, q1, mq, "dqkv1"),
                                  *sl = up(dev, s1, ns, "lse1"),
                                  *sda = up(dev, s1, flash ? 1 : ns, "datt1");
                        if (flash) {
                            assert_ok(st_attention_gqa_fwd(so, sl, sq, tb, NULL, 1, L, C, NH, KV));
                            assert_ok(st_attention_gqa_bwd(sdq, sdo, so, sl, sq, tb, NULL, 1, L, C,
                                                           NH, KV));
                        } else {
                            assert_ok(st_attention_fwd(so, sl, sq, NULL, 1, L, C, NH));
                            assert_ok(st_attention_bwd(sdq, sda, sdo, sq, sl, NULL, 1, L, C, NH));
                        }
                        float *o1 = malloc(m * sizeof *o1), *d1 = malloc(mq * sizeof *d1);
                        float *l1 = malloc((size_t)NH * L * sizeof *l1);
                        assert_ok(st_tensor_read(so, 0, m, o1));
                        assert_ok(st_tensor_read(sdq, 0, mq, d1));
                        const float *po = out + ((size_t)b * T + t0) * C;
                        const float *pd = dq + ((size_t)b * T + t0) * W;
                        if (flash) {
                            assert_memory_equal(po, o1, m * sizeof *o1);
                            assert_memory_equal(pd, d1, mq * sizeof *d1);
                            assert_ok(st_tensor_read(sl, 0, (size_t)NH * L, l1));
                            for (int h = 0; h < NH; h++)
                                assert_memory_equal(lse + ((size_t)b * NH + h) * T + t0,
                                                    l1 + (size_t)h * L, (size_t)L * sizeof *l1);
                        } else {
                            for (size_t e = 0; e < m; e++)
                                assert_true(fabsf(po[e] - o1[e]) <= 1e-5f * (1 + fabsf(o1[e])));
                            for (size_t e = 0; e < mq; e++)
                                assert_true(fabsf(pd[e] - d1[e]) <= 1e-5f * (1 + fabsf(d1[e])));
                        }
                        st_tensor *all[] = {sq, sdo, so, sdq, sl, sda};
                        for (size_t i = 0; i < 6; i++)
                            st_tensor_destroy(all[i]);
                        free(q1), free(do1), free(o1), free(d1), free(l1), free(s1);
                    }
                st_tensor *all[] = {tq, tdout, tout, tdq, tb, tp, tl, tdatt};
                for (size_t i = 0; i < 8; i++)
                    st_tensor_destroy(all[i]);
                free(out), free(dq), free(lse), free(qkv), free(dout), free(bias), free(scratch);
            }
}

/* The token and position embedding of packed documents: row n at position
 * pos[n] forward, and its gradient into dwpe's row pos[n]. */
static void encoder_positions_match_reference(void **state)
{
    (void)state;
    enum { B = 2, T = 6, C = 5, V = 7 };
    int tokens[B * T] = {0, 6, 3, 3, 1, 6, 6, 6, 0, 2, 3, 5};
    int pos[B * T] = {0, 1, 2, 0, 1, 0, 0, 1, 2, 3, 0, 1};
    size_t BTC = (size_t)B * T * C;
    for (size_t d = 0; d < td.n; d++) {
        st_device *dev = td.dev[d];
        double *wte = rnd((size_t)V * C, 330, 1.0), *wpe = rnd((size_t)T * C, 331, 1.0);
        double *dout = rnd(BTC, 332, 1.0), *out = zeros(BTC);
        double *dwte = rnd((size_t)V * C, 333, 1.0), *dwpe = rnd((size_t)T * C, 334, 1.0);
        st_tensor *tt = up_int(dev, tokens, B * T), *tp = up_int(dev, pos, B * T),
                  *twte = up(dev, wte, (size_t)V * C, "wte"),
                  *twpe = up(dev, wpe, (size_t)T * C, "wpe"), *tdout = up(dev, dout, BTC, "dout"),
                  *tout = up(dev, out, BTC, "out"), *tdwte = up(dev, dwte, (size_t)V * C, "dwte"),
                  *tdwpe = up(dev, dwpe, (size_t)T * C, "dwpe");
        for (int r = 0; r < B * T; r++)
            for (int c = 0; c < C; c++) {
                out[(size_t)r * C + c] = wte[(size_t)tokens[r] * C + c] + wpe[(size_t)pos[r] * C + c];
                dwte[(size_t)tokens[r] * C + c] += dout[(size_t)r * C + c];
                dwpe[(size_t)pos[r] * C + c] += dout[(size_t)r * C + c];
            }
        assert_ok(st_encoder_fwd(tout, tt, twte, twpe, NULL, tp, B, T, C, V));
        assert_ok(st_encoder_bwd(tdwte, tdwpe, tdout, tt, tp, B, T, C, V));
        check("encoder out (positions)", tout, out, BTC);
        check("encoder dwte (positions)", tdwte, dwte, (size_t)V * C);
        check("encoder dwpe (positions)", tdwpe, dwpe, (size_t)T * C);
        st_tensor *all[] = {tt, tp, twte, twpe, tdout, tout, tdwte, tdwpe};
        for (size_t i = 0; i < 8; i++)
            st_tensor_destroy(all[i]);
        free(wte), free(wpe), free(dout), free(out), free(dwte), free(dwpe);
    }
}

/* Decoding: the token at position pos attends over the cache (rows 0..pos-1
 * filled before, row pos written by the kernel) as row pos of the full
 * causal attention does; the cache gets the token's key and value with
 * their bias. A second sequence's cache (an offset) is left alone. */
static void attention_decode_matches_reference(void **state)
{
    (void)state;
    static const int shapes[][3] = {{1, 4, 1}, {7, 12, 3}, {70, 32, 4}, {20, 256, 2}};
    for (int form = ST_LAYERS_GPU; form <= ST_LAYERS_CPU; form++) /* both forms */
    for (size_t d = 0; (st_layers_set_variant(form), d < td.n); d++)
        for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
            st_device *dev = td.dev[d];
            int T = shapes[k][0], C = shapes[k][1], NH = shapes[k][2], pos = T - 1, S = T + 3;
            size_t nq = (size_t)T * 3 * C;
            double *qkv0 = rnd(nq, 400 + k, 2.0), *bias = rnd(3 * (size_t)C, 410 + k, 0.5);
            double *qkv = zeros(nq), *out = zeros((size_t)T * C);
            double *att = zeros((size_t)NH * T * T);
            for (int r = 0; r < T; r++)
                for (int e = 0; e < 3 * C; e++)
                    qkv[(size_t)r * 3 * C + e] =
                        (double)(float)qkv0[(size_t)r * 3 * C + e] + (double)(float)bias[e];
            ref_attention_fwd(out, att, qkv, 1, T, C, NH);
            /* Two sequences' caches: this one at offset S*C, the other first. */
            size_t nc = 2 * (size_t)S * C;
            double *cache = zeros(nc);
            for (int r = 0; r < pos; r++)
                for (int e = 0; e < C; e++)
                    cache[(size_t)S * C + (size_t)r * C + e] = qkv[(size_t)r * 3 * C + C + e];
            double *vcache = zeros(nc);
            for (int r = 0; r < pos; r++)
                for (int e = 0; e < C; e++)
                    vcache[(size_t)S * C + (size_t)r * C + e] = qkv[(size_t)r * 3 * C + 2 * C + e];
            st_tensor *tq = up(dev, qkv0 + (size_t)pos * 3 * C, 3 * (size_t)C, "qkv"),
                      *tb = up(dev, bias, 3 * (size_t)C, "bias"), *tk = up(dev, cache, nc, "k"),
                      *tv = up(dev, vcache, nc, "v"), *to = up(dev, bias, (size_t)C, "out"),
                      *ts = up(dev, cache, (size_t)NH * S, "scores");
            int rows[2] = {1, pos}; /* the second sequence's cache */
            st_tensor *tr = up_int(dev, rows, 2);
            assert_ok(st_attention_decode(to, ts, tk, tv, tq, tb, tr, 1, true, 2, S, C, NH));
            st_tensor_destroy(tr);
            check("attention_decode out", to, out + (size_t)pos * C, (size_t)C);
            for (int e = 0; e < C; e++) {
                cache[(size_t)S * C + (size_t)pos * C + e] = qkv[(size_t)pos * 3 * C + C + e];
                vcache[(size_t)S * C + (size_t)pos * C + e] = qkv[(size_t)pos * 3 * C + 2 * C + e];
            }
            check("attention_decode k cache", tk, cache, nc);
            check("attention_decode v cache", tv, vcache, nc);
            st_tensor *all[] = {tq, tb, tk, tv, to, ts};
            for (size_t i = 0; i < 6; i++)
                st_tensor_destroy(all[i]);
            free(qkv0), free(bias), free(qkv), free(out), free(att), free(cache), free(vcache);
        }
    st_layers_set_variant(-1);
}

/* AdamW in one launch by decay runs equals a launch per parameter, bitwise:
 * three parameters (decay, none, decay) with a gap of zeros before the
 * last, which stays zeros. */
static void adamw_runs_equal_per_parameter(void **state)
{
    (void)state;
    const size_t len[3] = {1000, 37, 4100}, at[3] = {0, 1000, 1040}, n = 5140;
    st_adamw_hparams h = {1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f};
    for (size_t d = 0; d < td.n; d++) {
        st_device *dev = td.dev[d];
        double *p0 = rnd(n, 500, 1.0), *g0 = rnd(n, 501, 1.0), *m0 = rnd(n, 502, 0.1);
        double *v0 = rnd(n, 503, 0.1);
        for (size_t i = 1037; i < 1040; i++) /* the gap */
            p0[i] = g0[i] = m0[i] = v0[i] = 0;
        for (size_t i = 0; i < n; i++)
            v0[i] = fabs(v0[i]);
        st_tensor *P[2], *G[2], *M[2], *V[2];
        for (int k = 0; k < 2; k++) {
            P[k] = up(dev, p0, n, "param"), G[k] = up(dev, g0, n, "grad");
            M[k] = up(dev, m0, n, "m"), V[k] = up(dev, v0, n, "v");
        }
        for (int i = 0; i < 3; i++) {
            st_tensor *pv, *gv, *mv, *vv;
            assert_ok(st_tensor_view(P[0], at[i], 1, &len[i], &pv));
            assert_ok(st_tensor_view(G[0], at[i], 1, &len[i], &gv));
            assert_ok(st_tensor_view(M[0], at[i], 1, &len[i], &mv));
            assert_ok(st_tensor_view(V[0], at[i], 1, &len[i], &vv));
            st_adamw_hparams hp = h;
            if (i == 1)
                hp.weight_decay = 0;
            assert_ok(st_adamw_step(pv, gv, mv, vv, len[i], &hp, 3, 0.5f));
            st_tensor_destroy(pv), st_tensor_destroy(gv), st_tensor_destroy(mv);
            st_tensor_destroy(vv);
        }
        int runs[9] = {0, 0, 1, 0, 1000, 0, 0, 1040, 1};
        size_t nr = 9;
        st_tensor *R;
        assert_ok(st_tensor_create(dev, ST_I32, 1, &nr, "runs", &R));
        assert_ok(st_tensor_write(R, 0, 9, runs));
        assert_ok(st_adamw_step_runs(P[1], G[1], M[1], V[1], R, 3, n, &h, 3, 0.5f));
        st_tensor *pairs[3][2] = {{P[0], P[1]}, {M[0], M[1]}, {V[0], V[1]}};
        float *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b);
        for (int k = 0; k < 3; k++) {
            assert_ok(st_tensor_read(pairs[k][0], 0, n, a));
            assert_ok(st_tensor_read(pairs[k][1], 0, n, b));
            assert_memory_equal(a, b, n * sizeof *a);
        }
        for (size_t i = 1037; i < 1040; i++)
            assert_true(b[i] == 0.0f);
        free(a), free(b);
        st_tensor_destroy(R);
        for (int k = 0; k < 2; k++)
            st_tensor_destroy(P[k]), st_tensor_destroy(G[k]), st_tensor_destroy(M[k]),
                st_tensor_destroy(V[k]);
        free(p0), free(g0), free(m0), free(v0);
    }
}

/* ---- fused ops: each against the composition of the plain references */

/* Both forms of the row kernels (a work-group per row for GPUs, a
 * work-item per row for CPUs) run here, on whatever device this is. */
static void fused_ops_match_their_parts(void **state)
{
    (void)state;
    static const int shapes[][2] = {{1, 1}, {3, 5}, {7, 64}, {5, 130}, {2, 777}};
    for (int form = ST_LAYERS_GPU; form <= ST_LAYERS_CPU; form++)
    for (size_t d = 0; (st_layers_set_variant(form), d < td.n); d++)
        for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
            st_device *dev = td.dev[d];
            int N = shapes[k][0], C = shapes[k][1];
            size_t n = (size_t)N * C, C3 = 3 * (size_t)C;
            double *y = rnd(n, 300 + k, 1.0), *bias = rnd(C, 310 + k, 0.5), *x = rnd(n, 320 + k, 1.0);
            double *w = rnd(C, 330 + k, 1.0), *b = rnd(C, 340 + k, 0.3);
            /* bias + residual + LayerNorm */
            double *res = zeros(n), *out = zeros(n), *mean = zeros(N), *rstd = zeros(N);
            for (size_t i = 0; i < n; i++)
                res[i] = y[i] + bias[i % C] + x[i];
            ref_layernorm_fwd(out, mean, rstd, res, w, b, N, C, 1e-5);
            st_tensor *ty = up(dev, y, n, "y"), *tbias = up(dev, bias, C, "bias"),
                      *tx = up(dev, x, n, "x"), *tw = up(dev, w, C, "w"), *tb = up(dev, b, C, "b"),
                      *tout = up(dev, x, n, "out"), *tmean = up(dev, x, N, "mean"),
                      *trstd = up(dev, x, N, "rstd");
            assert_ok(st_bias_residual_layernorm_fwd(ty, tout, tmean, trstd, ty, tbias, tx, tw, tb,
                                                     N, C, 1e-5f));
            check("bias_residual_layernorm res (in place)", ty, res, n);
            check("bias_residual_layernorm out", tout, out, n);
            check("bias_residual_layernorm mean", tmean, mean, N);
            check("bias_residual_layernorm rstd", trstd, rstd, N);
            /* bias + residual */
            st_tensor *t2 = up(dev, y, n, "out2");
            assert_ok(st_bias_residual_fwd(t2, tbias, tx, N, C));
            check("bias_residual", t2, res, n);
            /* bias + GELU, and its backward with the bias gradient */
            double *pre = zeros(n), *act = zeros(n), *dact = rnd(n, 350 + k, 1.0);
            double *dpre = zeros(n), *dbias = rnd(C, 360 + k, 0.1), *dbias0 = zeros(C);
            memcpy(dbias0, dbias, C * sizeof *dbias);
            for (size_t i = 0; i < n; i++)
                pre[i] = y[i] + bias[i % C];
            ref_gelu_fwd(act, pre, n);
            ref_gelu_bwd(dpre, pre, dact, n);
            ref_bias_bwd(dbias, dpre, N, C);
            st_tensor *tpre = up(dev, y, n, "pre"), *tact = up(dev, x, n, "act");
            assert_ok(st_bias_gelu_fwd(tpre, tact, tbias, N, C));
            check("bias_gelu pre", tpre, pre, n);
            check("bias_gelu act", tact, act, n);
            st_tensor *tdp = up(dev, dact, n, "dpre"), *tdb = up(dev, dbias0, C, "dbias");
            assert_ok(st_gelu_bwd_bias(tdp, tpre, tdp, tdb, N, C)); /* in place, as the runtime does */
            check("gelu_bwd_bias dinp", tdp, dpre, n);
            check("gelu_bwd_bias dbias", tdb, dbias, C);
            /* LayerNorm backward with two bias column sums, one of them over
             * the dinp it then updates (the sums see the old values). */
            double *dout = rnd(n, 370 + k, 1.0), *dinp = rnd(n, 380 + k, 1.0);
            double *src3 = rnd(n * 3, 390 + k, 1.0), *dinp0 = zeros(n);
            double *dw = zeros(C), *db = zeros(C), *db2 = zeros(C), *db3 = zeros(C3);
            memcpy(dinp0, dinp, n * sizeof *dinp);
            ref_bias_bwd(db2, dinp0, N, C);
            ref_bias_bwd(db3, src3, N, (int)C3);
            ref_layernorm_bwd(dinp, dw, db, dout, res, w, mean, rstd, N, C);
            st_tensor *tdi = up(dev, dinp0, n, "dinp"), *tdo = up(dev, dout, n, "dout"),
                      *tres = up(dev, res, n, "res"), *tdw = up(dev, dw, C, "dw"),
                      *tdbb = up(dev, db, C, "db"), *tdb2 = up(dev, db2, C, "db2"),
                      *tdb3 = up(dev, db3, C3, "db3"), *ts3 = up(dev, src3, 3 * n, "src3");
            assert_ok(st_tensor_fill(tdw, 0.0f));
            assert_ok(st_tensor_fill(tdbb, 0.0f));
            assert_ok(st_tensor_fill(tdb2, 0.0f));
            assert_ok(st_tensor_fill(tdb3, 0.0f));
            assert_ok(st_layernorm_bwd_biases(tdi, tdw, tdbb, tdo, tres, tw, tmean, trstd, N, C,
                                              tdb2, tdi, C, tdb3, ts3, (int)C3));
            check("layernorm_bwd_biases dinp", tdi, dinp, n);
            check("layernorm_bwd_biases dw", tdw, dw, C);
            check("layernorm_bwd_biases db", tdbb, db, C);
            check("layernorm_bwd_biases dbias2", tdb2, db2, C);
            check("layernorm_bwd_biases dbias3", tdb3, db3, C3);
            st_tensor *all[] = {ty, tbias, tx, tw, tb, tout, tmean, trstd, t2, tpre, tact, tdp,
                                tdb, tdi, tdo, tres, tdw, tdbb, tdb2, tdb3, ts3};
            for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
                st_tensor_destroy(all[i]);
            double *hs[] = {y, bias, x, w, b, res, out, mean, rstd, pre, act, dact, dpre, dbias,
                            dbias0, dout, dinp, src3, dinp0, dw, db, db2, db3};
            for (size_t i = 0; i < sizeof hs / sizeof hs[0]; i++)
                free(hs[i]);
        }
    st_layers_set_variant(-1);
}

/* ---- sum of squares (global gradient norm) */

static void sumsq_matches_and_repeats_bitwise(void **state)
{
    (void)state;
    size_t n1 = 100003, n2 = 7; /* more and fewer elements than parts */
    double *x1 = rnd(n1, 100, 1.0), *x2 = rnd(n2, 101, 3.0), want = 0;
    for (size_t i = 0; i < n1; i++)
        want += x1[i] * x1[i];
    for (size_t i = 0; i < n2; i++)
        want += x2[i] * x2[i];
    for (size_t d = 0; d < td.n; d++) {
        st_device *dev = td.dev[d];
        st_tensor *t1 = up(dev, x1, n1, "x1"), *t2 = up(dev, x2, n2, "x2");
        size_t one = 1, parts = ST_SUMSQ_PARTS;
        st_tensor *acc, *scratch;
        assert_ok(st_tensor_create(dev, ST_F32, 1, &one, "acc", &acc));
        assert_ok(st_tensor_create(dev, ST_F32, 1, &parts, "scratch", &scratch));
        float got[2];
        for (int run = 0; run < 2; run++) {
            assert_ok(st_tensor_fill(acc, 0.0f));
            assert_ok(st_sumsq_accumulate(acc, scratch, t1, n1));
            assert_ok(st_sumsq_accumulate(acc, scratch, t2, n2));
            assert_ok(st_tensor_read(acc, 0, 1, &got[run]));
        }
        assert_true(fabs(got[0] - want) <= 1e-4 * want);
        assert_memory_equal(&got[0], &got[1], sizeof got[0]); /* the same bits each run */
        st_tensor_destroy(t1), st_tensor_destroy(t2), st_tensor_destroy(acc);
        st_tensor_destroy(scratch);
    }
    free(x1), free(x2);
}

static void wrong_sizes_are_refused(void **state)
{
    (void)state;
    st_device *dev = td.dev[0];
    size_t n = 10;
    st_tensor *a, *i;
    assert_ok(st_tensor_create(dev, ST_F32, 1, &n, "small", &a));
    assert_ok(st_tensor_create(dev, ST_I32, 1, &n, "ints", &i));
    assert_int_equal(st_gelu_fwd(a, a, 11), ST_ERR_INVALID);
    assert_contains(st_last_error(), "'small' has 10 elements, needs 11");
    assert_int_equal(st_residual_fwd(a, i, a, 10), ST_ERR_INVALID);
    assert_contains(st_last_error(), "expected F32");
    assert_int_equal(st_layernorm_fwd(a, a, a, a, a, a, 0, 5, 1e-5f), ST_ERR_INVALID);
    assert_int_equal(st_xent_fwd(a, a, a, a, 2, 5), ST_ERR_INVALID); /* targets must be I32 */
    st_tensor_destroy(a);
    st_tensor_destroy(i);
}

static int group_teardown(void **state)
{
    (void)state;
    test_devices_close(&td);
    return 0;
}

int main(void)
{
    test_devices_open_or_skip(&td);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(layernorm_reference_backward_is_the_gradient),
        cmocka_unit_test(layernorm_matches_reference),
        cmocka_unit_test(gelu_reference_and_device),
        cmocka_unit_test(residual_and_bias_match),
        cmocka_unit_test(matmul_reference_and_device),
        cmocka_unit_test(xent_reference_and_device),
        cmocka_unit_test(adamw_matches_reference_over_steps),
        cmocka_unit_test(encoder_matches_reference),
        cmocka_unit_test(attention_reference_backward_is_the_gradient),
        cmocka_unit_test(attention_matches_reference),
        cmocka_unit_test(flash_attention_matches_reference),
        cmocka_unit_test(packed_attention_equals_separate_sequences),
        cmocka_unit_test(encoder_positions_match_reference),
        cmocka_unit_test(attention_decode_matches_reference),
        cmocka_unit_test(fused_ops_match_their_parts),
        cmocka_unit_test(adamw_runs_equal_per_parameter),
        cmocka_unit_test(sumsq_matches_and_repeats_bitwise),
        cmocka_unit_test(wrong_sizes_are_refused),
    };
    return cmocka_run_group_tests(tests, NULL, group_teardown);
}
