/*
 * test_llama_layers.c - the Llama family's ops (RMSNorm, rotary embeddings,
 * SwiGLU, grouped-query attention, nn.Linear, the token embedding) on every
 * device against the double-precision references of ref_ops.c, and those
 * references' backward passes against central finite differences of their
 * forwards (tolerances: tests/layer_check.h).
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "strata/dtype.h"
#include "strata/layers.h"
#include "tests/common.h"
#include "tests/ref_ops.h"
#include "tests/layer_check.h"

static test_devices td;

/* Frequencies as the model uses them (floats), as doubles for the references. */
static double *freqs(int HS, double theta)
{
    double *f = zeros((size_t)HS / 2);
    for (int i = 0; i < HS / 2; i++)
        f[i] = (double)(1.0f / powf((float)theta, (float)(2 * i) / (float)HS));
    return f;
}

/* ---- the references' backwards are the gradients of their forwards */

typedef struct op_ctx {
    int which; /* 0 rmsnorm, 1 rope, 2 swiglu, 3 attention, 4 linear */
    double *x, *w, *r, *f;
    int N, C, T, NH, KV, HS, F, IC, OC;
} op_ctx;

static double op_loss(void *p)
{
    op_ctx *c = p;
    size_t n_out = 0;
    double *out = NULL;
    if (c->which == 0) {
        n_out = (size_t)c->N * c->C;
        out = zeros(n_out);
        double *rstd = zeros((size_t)c->N);
        ref_rmsnorm_fwd(out, rstd, c->x, c->w, c->N, c->C, 1e-6);
        free(rstd);
    } else if (c->which == 1) {
        n_out = (size_t)c->N * (c->NH + 2 * c->KV) * c->HS;
        out = zeros(n_out);
        memcpy(out, c->x, n_out * sizeof *out);
        ref_rope_fwd(out, c->w, c->f, c->N, c->T, 3, c->NH, c->KV, c->HS);
    } else if (c->which == 2) {
        n_out = (size_t)c->N * c->F;
        out = zeros(n_out);
        ref_swiglu_fwd(out, c->x, c->N, c->F);
    } else if (c->which == 3) {
        int B = c->N / c->T;
        n_out = (size_t)c->N * c->C;
        out = zeros(n_out);
        double *att = zeros((size_t)B * c->NH * c->T * c->T);
        ref_gqa_attention_fwd(out, att, c->x, B, c->T, c->C, c->NH, c->KV);
        free(att);
    } else {
        n_out = (size_t)c->N * c->OC;
        out = zeros(n_out);
        ref_linear_fwd(out, c->x, c->w, c->f, c->N, c->IC, c->OC);
    }
    double L = 0;
    for (size_t i = 0; i < n_out; i++)
        L += out[i] * c->r[i];
    free(out);
    return L;
}

static void references_backward_are_gradients(void **state)
{
    (void)state;
    /* RMSNorm */
    op_ctx c = {.which = 0, .N = 3, .C = 7};
    size_t NC = 21;
    c.x = rnd(NC, 1, 2.0), c.w = rnd(7, 2, 1.0), c.r = rnd(NC, 3, 1.0);
    double *out = zeros(NC), *rstd = zeros(3), *dx = zeros(NC), *dw = zeros(7);
    ref_rmsnorm_fwd(out, rstd, c.x, c.w, 3, 7, 1e-6);
    ref_rmsnorm_bwd(dx, dw, c.r, c.x, c.w, rstd, 3, 7);
    check_fd("rmsnorm dinp", c.x, NC, dx, op_loss, &c);
    check_fd("rmsnorm dw", c.w, 7, dw, op_loss, &c);
    free(c.x), free(c.w), free(c.r), free(out), free(rstd), free(dx), free(dw);
    /* rotary embeddings (bias included): NH 4, KV 2, HS 6, two sequences of 3 */
    op_ctx r = {.which = 1, .N = 6, .T = 3, .NH = 4, .KV = 2, .HS = 6};
    size_t W = (size_t)(4 + 4) * 6, n = 6 * W;
    r.x = rnd(n, 4, 1.0), r.w = rnd(W, 5, 0.5), r.r = rnd(n, 6, 1.0), r.f = freqs(6, 100.0);
    double *d = zeros(n), *db = zeros(W);
    memcpy(d, r.r, n * sizeof *d);
    ref_rope_bwd(d, r.f, 6, 3, 3, 4, 2, 6);
    for (size_t i = 0; i < n; i++) /* the bias's gradient: column sums of dqkv */
        db[i % W] += d[i];
    check_fd("rope dqkv", r.x, n, d, op_loss, &r);
    check_fd("rope dbias", r.w, W, db, op_loss, &r);
    free(r.x), free(r.w), free(r.r), free(r.f), free(d), free(db);
    /* SwiGLU */
    op_ctx g = {.which = 2, .N = 4, .F = 5};
    g.x = rnd(40, 7, 3.0), g.r = rnd(20, 8, 1.0);
    double *dgu = zeros(40);
    ref_swiglu_bwd(dgu, g.r, g.x, 4, 5);
    check_fd("swiglu dgu", g.x, 40, dgu, op_loss, &g);
    free(g.x), free(g.r), free(dgu);
    /* grouped-query attention: B 2, T 4, C 8, NH 4, KV 2 */
    op_ctx a = {.which = 3, .N = 8, .T = 4, .C = 8, .NH = 4, .KV = 2};
    size_t nq = 8 * (size_t)(8 + 2 * 4);
    a.x = rnd(nq, 9, 1.5), a.r = rnd(64, 10, 1.0);
    double *ao = zeros(64), *att = zeros(2 * 4 * 16), *dq = zeros(nq);
    ref_gqa_attention_fwd(ao, att, a.x, 2, 4, 8, 4, 2);
    ref_gqa_attention_bwd(dq, a.r, a.x, att, 2, 4, 8, 4, 2);
    check_fd("gqa attention dqkv", a.x, nq, dq, op_loss, &a);
    free(a.x), free(a.r), free(ao), free(att), free(dq);
    /* nn.Linear with a bias */
    op_ctx l = {.which = 4, .N = 3, .IC = 5, .OC = 4};
    l.x = rnd(15, 11, 1.0), l.w = rnd(20, 12, 1.0), l.f = rnd(4, 13, 1.0), l.r = rnd(12, 14, 1.0);
    double *ldx = zeros(15), *ldw = zeros(20), *ldb = zeros(4);
    ref_linear_bwd(ldx, ldw, ldb, l.r, l.x, l.w, 3, 5, 4);
    check_fd("linear dinp", l.x, 15, ldx, op_loss, &l);
    check_fd("linear dw", l.w, 20, ldw, op_loss, &l);
    check_fd("linear db", l.f, 4, ldb, op_loss, &l);
    free(l.x), free(l.w), free(l.f), free(l.r), free(ldx), free(ldw), free(ldb);
}

/* ---- the device against the references */

static void rmsnorm_matches_reference(void **state)
{
    (void)state;
    static const int shapes[][2] = {{1, 1}, {13, 37}, {64, 256}};
    for (int form = ST_LAYERS_GPU; form <= ST_LAYERS_CPU + 1; form++) /* and by device */
    for (size_t d = 0; (st_layers_set_variant(form > ST_LAYERS_CPU ? -1 : form), d < td.n); d++)
        for (size_t k = 0; k < 3; k++) {
            st_device *dev = td.dev[d];
            int N = shapes[k][0], C = shapes[k][1];
            size_t NC = (size_t)N * C;
            double *x = rnd(NC, 20 + k, 3.0), *y = rnd(NC, 21 + k, 1.0), *w = rnd(C, 22, 1.0);
            double *dout = rnd(NC, 23, 1.0), *res = zeros(NC), *out = zeros(NC);
            double *rstd = zeros(N), *dinp = rnd(NC, 24, 1.0), *dw = rnd(C, 25, 1.0);
            st_tensor *tx = up(dev, x, NC, "x"), *ty = up(dev, y, NC, "y"), *tw = up(dev, w, C, "w"),
                      *tdout = up(dev, dout, NC, "dout"), *tout = up(dev, out, NC, "out"),
                      *tres = up(dev, res, NC, "res"), *trstd = up(dev, rstd, N, "rstd"),
                      *tdinp = up(dev, dinp, NC, "dinp"), *tdw = up(dev, dw, C, "dw");
            /* the fused residual first: res = y + x, out = RMSNorm(res) */
            for (size_t i = 0; i < NC; i++)
                res[i] = (double)(float)((float)y[i] + (float)x[i]);
            ref_rmsnorm_fwd(out, rstd, res, w, N, C, 1e-6);
            assert_ok(st_residual_rmsnorm_fwd(tres, tout, trstd, ty, tx, tw, N, C, 1e-6f));
            check("residual_rmsnorm res", tres, res, NC);
            check("residual_rmsnorm out", tout, out, NC);
            check("residual_rmsnorm rstd", trstd, rstd, N);
            /* then the plain op and its backward, which adds to the gradients */
            ref_rmsnorm_fwd(out, rstd, x, w, N, C, 1e-6);
            ref_rmsnorm_bwd(dinp, dw, dout, x, w, rstd, N, C);
            assert_ok(st_rmsnorm_fwd(tout, trstd, tx, tw, N, C, 1e-6f));
            assert_ok(st_rmsnorm_bwd(tdinp, tdw, tdout, tx, tw, trstd, N, C));
            check("rmsnorm out", tout, out, NC);
            check("rmsnorm rstd", trstd, rstd, N);
            check("rmsnorm dinp", tdinp, dinp, NC);
            check("rmsnorm dw", tdw, dw, C);
            st_tensor *all[] = {tx, ty, tw, tdout, tout, tres, trstd, tdinp, tdw};
            for (size_t i = 0; i < 9; i++)
                st_tensor_destroy(all[i]);
            free(x), free(y), free(w), free(dout), free(res), free(out), free(rstd), free(dinp),
                free(dw);
        }
    st_layers_set_variant(-1);
}

static void rope_matches_reference(void **state)
{
    (void)state;
    /* N, T, pos0, NH, KV, HS, bias */
    static const int shapes[][7] = {{1, 1, 0, 1, 1, 2, 0},   {6, 3, 0, 4, 2, 8, 1},
                                    {10, 5, 7, 2, 2, 16, 0}, {4, 1, 1000, 8, 1, 64, 1},
                                    {33, 11, 0, 6, 3, 128, 1}};
    for (size_t d = 0; d < td.n; d++)
        for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
            st_device *dev = td.dev[d];
            int N = shapes[k][0], T = shapes[k][1], pos0 = shapes[k][2], NH = shapes[k][3];
            int KV = shapes[k][4], HS = shapes[k][5], has_bias = shapes[k][6];
            size_t W = (size_t)(NH + 2 * KV) * HS, n = (size_t)N * W;
            double *x = rnd(n, 30 + k, 2.0), *b = rnd(W, 31 + k, 0.5), *f = freqs(HS, 10000.0);
            double *want = zeros(n), *dwant = rnd(n, 32 + k, 1.0);
            memcpy(want, x, n * sizeof *want);
            st_tensor *tx = up(dev, x, n, "qkv"), *tb = up(dev, b, W, "bias"),
                      *tf = up(dev, f, (size_t)HS / 2, "inv_freq"), *td_ = up(dev, dwant, n, "d");
            ref_rope_fwd(want, has_bias ? b : NULL, f, N, T, pos0, NH, KV, HS);
            ref_rope_bwd(dwant, f, N, T, pos0, NH, KV, HS);
            /* decoding's form: each row's position from a table, the same bits */
            int *rows = malloc(2 * (size_t)N * sizeof *rows);
            for (int r = 0; r < N; r++)
                rows[2 * r] = r % 3, rows[2 * r + 1] = pos0 + r % T;
            st_tensor *tx2 = up(dev, x, n, "qkv2"), *tr = up_int(dev, rows, 2 * (size_t)N);
            assert_ok(st_rope_fwd(tx, has_bias ? tb : NULL, tf, NULL, NULL, N, T, pos0, NH, KV, HS));
            assert_ok(st_rope_fwd(tx2, has_bias ? tb : NULL, tf, tr, NULL, N, N, 0, NH, KV, HS));
            assert_ok(st_rope_bwd(td_, tf, NULL, N, T, pos0, NH, KV, HS));
            check("rope fwd", tx, want, n);
            check("rope bwd", td_, dwant, n);
            float *a = malloc(n * sizeof *a), *b2 = malloc(n * sizeof *b2);
            assert_ok(st_tensor_read(tx, 0, n, a));
            assert_ok(st_tensor_read(tx2, 0, n, b2));
            assert_memory_equal(a, b2, n * sizeof *a);
            free(a), free(b2), free(rows);
            /* packed documents: row r at its document's position pos[r] (a new
             * document every 5th and 7th row), forward and backward, against
             * the reference on each row at that position */
            int *pos = malloc((size_t)N * sizeof *pos);
            double *pwant = zeros(n), *pdwant = rnd(n, 33 + k, 1.0);
            memcpy(pwant, x, n * sizeof *pwant);
            st_tensor *tx3 = up(dev, x, n, "qkv3"), *td3 = up(dev, pdwant, n, "d3");
            for (int r = 0; r < N; r++) {
                pos[r] = r == 0 || r % 5 == 0 || r % 7 == 0 ? 0 : pos[r - 1] + 1;
                ref_rope_fwd(pwant + (size_t)r * W, has_bias ? b : NULL, f, 1, 1, pos[r], NH, KV,
                             HS);
                ref_rope_bwd(pdwant + (size_t)r * W, f, 1, 1, pos[r], NH, KV, HS);
            }
            st_tensor *tp = up_int(dev, pos, (size_t)N);
            assert_ok(st_rope_fwd(tx3, has_bias ? tb : NULL, tf, NULL, tp, N, N, 0, NH, KV, HS));
            assert_ok(st_rope_bwd(td3, tf, tp, N, N, 0, NH, KV, HS));
            check("rope fwd (packed positions)", tx3, pwant, n);
            check("rope bwd (packed positions)", td3, pdwant, n);
            free(pos), free(pwant), free(pdwant);
            st_tensor *all[] = {tx, tb, tf, td_, tx2, tr, tx3, td3, tp};
            for (size_t i = 0; i < 9; i++)
                st_tensor_destroy(all[i]);
            free(x), free(b), free(f), free(want), free(dwant);
        }
}

static void swiglu_and_linear_match(void **state)
{
    (void)state;
    for (size_t d = 0; d < td.n; d++) {
        st_device *dev = td.dev[d];
        int N = 37, F = 53, IC = 29, OC = 41;
        size_t ng = (size_t)N * 2 * F, nh = (size_t)N * F;
        double *gu = rnd(ng, 40, 4.0), *dh = rnd(nh, 41, 1.0), *h = zeros(nh), *dgu = zeros(ng);
        ref_swiglu_fwd(h, gu, N, F);
        ref_swiglu_bwd(dgu, dh, gu, N, F);
        st_tensor *tgu = up(dev, gu, ng, "gu"), *tdh = up(dev, dh, nh, "dh"),
                  *th = up(dev, h, nh, "h"), *tdgu = up(dev, dgu, ng, "dgu");
        assert_ok(st_swiglu_fwd(th, tgu, N, F));
        assert_ok(st_swiglu_bwd(tdgu, tdh, tgu, N, F));
        check("swiglu h", th, h, nh);
        check("swiglu dgu", tdgu, dgu, ng);
        /* nn.Linear: weights [out, in]; the gradients add to what is there */
        double *x = rnd((size_t)N * IC, 42, 1.0), *w = rnd((size_t)OC * IC, 43, 0.3);
        double *b = rnd(OC, 44, 1.0), *dout = rnd((size_t)N * OC, 45, 1.0);
        double *y = zeros((size_t)N * OC), *dx = zeros((size_t)N * IC);
        double *dw = rnd((size_t)OC * IC, 46, 1.0), *db = rnd(OC, 47, 1.0);
        st_tensor *tx = up(dev, x, (size_t)N * IC, "x"), *tw = up(dev, w, (size_t)OC * IC, "w"),
                  *tb = up(dev, b, OC, "b"), *tdout = up(dev, dout, (size_t)N * OC, "dout"),
                  *ty = up(dev, y, (size_t)N * OC, "y"), *tdx = up(dev, dx, (size_t)N * IC, "dx"),
                  *tdw = up(dev, dw, (size_t)OC * IC, "dw"), *tdb = up(dev, db, OC, "db");
        ref_linear_fwd(y, x, w, b, N, IC, OC);
        ref_linear_bwd(dx, dw, db, dout, x, w, N, IC, OC);
        assert_ok(st_linear_fwd(ty, tx, tw, tb, N, IC, OC));
        assert_ok(st_linear_bwd(tdx, 0.0f, tdw, tdb, tdout, tx, tw, N, IC, OC));
        check("linear out", ty, y, (size_t)N * OC);
        check("linear dinp", tdx, dx, (size_t)N * IC);
        check("linear dw", tdw, dw, (size_t)OC * IC);
        check("linear db", tdb, db, OC);
        /* the token embedding: rows of the table, gradients summed per token */
        int V = 11, C = 6, Nt = 9, toks[9] = {3, 0, 10, 3, 3, 7, 0, 1, 10};
        double *wte = rnd((size_t)V * C, 48, 1.0), *e = zeros((size_t)Nt * C);
        double *de = rnd((size_t)Nt * C, 49, 1.0), *dwte = rnd((size_t)V * C, 50, 1.0);
        for (int i = 0; i < Nt; i++)
            for (int c = 0; c < C; c++) {
                e[i * C + c] = wte[toks[i] * C + c];
                dwte[toks[i] * C + c] += de[i * C + c];
            }
        st_tensor *twte = up(dev, wte, (size_t)V * C, "wte"), *tt = up_int(dev, toks, 9),
                  *te = up(dev, de, (size_t)Nt * C, "e"), *tde = up(dev, de, (size_t)Nt * C, "de");
        double *dwte0 = rnd((size_t)V * C, 50, 1.0);
        st_tensor *tdwte = up(dev, dwte0, (size_t)V * C, "dwte");
        assert_ok(st_embedding_fwd(te, tt, twte, Nt, C, V));
        assert_ok(st_embedding_bwd(tdwte, tde, tt, Nt, C, V));
        check("embedding out", te, e, (size_t)Nt * C);
        check("embedding dwte", tdwte, dwte, (size_t)V * C);
        st_tensor *all[] = {tgu, tdh, th, tdgu, tx, tw, tb, tdout, ty, tdx, tdw, tdb,
                            twte, tt, te, tde, tdwte};
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
            st_tensor_destroy(all[i]);
        free(gu), free(dh), free(h), free(dgu), free(x), free(w), free(b), free(dout), free(y),
            free(dx), free(dw), free(db), free(wte), free(e), free(de), free(dwte), free(dwte0);
    }
}


/* LoRA over a group of three projections writing neighbouring columns of one
 * output (as q, k and v): st_lora_fwd adds s (x A_j^T) B_j^T to each one's
 * columns, st_lora_bwd accumulates dB, dA and dx; against a plain double
 * reference written out here. A frozen weight: st_linear_bwd without dw
 * gives the input's gradient alone. */
static void lora_group_matches_reference(void **state)
{
    (void)state;
    enum { N = 7, IC = 13, R = 3, G = 3, LDO = 21 };
    const int col[G] = {0, 11, 16}, oc[G] = {11, 5, 5};
    const double scale = 1.75;
    for (size_t d = 0; d < td.n; d++) {
        st_device *dev = td.dev[d];
        double *x = rnd((size_t)N * IC, 60, 1.0), *a = rnd((size_t)G * R * IC, 61, 0.5);
        double *out = rnd((size_t)N * LDO, 62, 1.0), *dout = rnd((size_t)N * LDO, 63, 1.0);
        double *dx = rnd((size_t)N * IC, 64, 1.0), *da = rnd((size_t)G * R * IC, 65, 1.0);
        double *b[G], *db[G], *xa = zeros((size_t)N * G * R), *dxa = zeros((size_t)N * G * R);
        st_tensor *tb[G], *tdb[G];
        st_lora_group lg = {.n = G, .r = R, .IC = IC, .ldo = LDO, .scale = (float)scale};
        for (int j = 0; j < G; j++) {
            b[j] = rnd((size_t)oc[j] * R, 66 + (unsigned)j, 0.5);
            db[j] = rnd((size_t)oc[j] * R, 70 + (unsigned)j, 1.0);
            tb[j] = up(dev, b[j], (size_t)oc[j] * R, "B");
            tdb[j] = up(dev, db[j], (size_t)oc[j] * R, "dB");
            lg.col[j] = col[j];
            lg.oc[j] = oc[j];
            lg.b[j] = tb[j];
            lg.db[j] = tdb[j];
        }
        st_tensor *tx = up(dev, x, (size_t)N * IC, "x"), *ta = up(dev, a, (size_t)G * R * IC, "A");
        st_tensor *tout = up(dev, out, (size_t)N * LDO, "out"), *tdout = up(dev, dout, (size_t)N * LDO, "dout");
        st_tensor *tdx = up(dev, dx, (size_t)N * IC, "dx"), *tda = up(dev, da, (size_t)G * R * IC, "dA");
        st_tensor *txa = up(dev, xa, (size_t)N * G * R, "xa"), *tdxa = up(dev, dxa, (size_t)N * G * R, "dxa");
        lg.a = ta;
        lg.da = tda;
        /* the reference: xa = x A^T; out_j += s xa_j B_j^T; dB_j += s dout_j^T xa_j;
         * dxa_j = s dout_j B_j; dA += dxa^T x; dx += dxa A */
        for (int n = 0; n < N; n++)
            for (int k = 0; k < G * R; k++) {
                double acc = 0;
                for (int i = 0; i < IC; i++)
                    acc += x[n * IC + i] * a[k * IC + i];
                xa[n * G * R + k] = acc;
            }
        for (int j = 0; j < G; j++)
            for (int n = 0; n < N; n++)
                for (int o = 0; o < oc[j]; o++) {
                    double acc = 0, g = dout[n * LDO + col[j] + o];
                    for (int k = 0; k < R; k++) {
                        acc += xa[n * G * R + j * R + k] * b[j][o * R + k];
                        db[j][o * R + k] += scale * g * xa[n * G * R + j * R + k];
                        dxa[n * G * R + j * R + k] += scale * g * b[j][o * R + k];
                    }
                    out[n * LDO + col[j] + o] += scale * acc;
                }
        for (int n = 0; n < N; n++)
            for (int k = 0; k < G * R; k++)
                for (int i = 0; i < IC; i++) {
                    da[k * IC + i] += dxa[n * G * R + k] * x[n * IC + i];
                    dx[n * IC + i] += dxa[n * G * R + k] * a[k * IC + i];
                }
        assert_ok(st_lora_fwd(&lg, tout, txa, tx, N));
        assert_ok(st_lora_bwd(&lg, tdx, tdxa, tdout, txa, tx, N));
        check("lora x A^T", txa, xa, (size_t)N * G * R);
        check("lora out", tout, out, (size_t)N * LDO);
        check("lora dA", tda, da, (size_t)G * R * IC);
        check("lora dx", tdx, dx, (size_t)N * IC);
        for (int j = 0; j < G; j++)
            check("lora dB", tdb[j], db[j], (size_t)oc[j] * R);
        /* a frozen weight: the input's gradient only */
        double *w = rnd((size_t)LDO * IC, 75, 0.3), *dx2 = zeros((size_t)N * IC);
        for (int n = 0; n < N; n++)
            for (int i = 0; i < IC; i++)
                for (int o = 0; o < LDO; o++)
                    dx2[n * IC + i] += dout[n * LDO + o] * w[o * IC + i];
        st_tensor *tw = up(dev, w, (size_t)LDO * IC, "w"), *tdx2 = up(dev, dx2, (size_t)N * IC, "dx2");
        assert_ok(st_linear_bwd(tdx2, 0.0f, NULL, NULL, tdout, tx, tw, N, IC, LDO));
        check("linear dinp, frozen weight", tdx2, dx2, (size_t)N * IC);
        st_tensor *all[] = {tx, ta, tout, tdout, tdx, tda, txa, tdxa, tw, tdx2};
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
            st_tensor_destroy(all[i]);
        for (int j = 0; j < G; j++) {
            st_tensor_destroy(tb[j]);
            st_tensor_destroy(tdb[j]);
            free(b[j]);
            free(db[j]);
        }
        free(x), free(a), free(out), free(dout), free(dx), free(da), free(xa), free(dxa), free(w),
            free(dx2);
    }
}

/* log sum_s<=t exp(q.k_s * scale) of row (b, h, t) */
static void ref_lse(double *lse, const double *qkv, int B, int T, int C, int NH, int KV)
{
    int HS = C / NH, W = C + 2 * KV * HS;
    double scale = 1.0 / sqrt((double)HS);
    double *sv = zeros((size_t)T);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++) {
                double m = -INFINITY, sum = 0;
                for (int s = 0; s <= t; s++) {
                    double dot = 0;
                    for (int e = 0; e < HS; e++)
                        dot += qkv[((size_t)b * T + t) * W + h * HS + e] *
                               qkv[((size_t)b * T + s) * W + C + (h / (NH / KV)) * HS + e];
                    sv[s] = dot * scale;
                    m = fmax(m, sv[s]);
                }
                for (int s = 0; s <= t; s++)
                    sum += exp(sv[s] - m);
                lse[((size_t)b * NH + h) * T + t] = m + log(sum);
            }
    free(sv);
}

static void gqa_attention_matches_reference(void **state)
{
    (void)state;
    /* B, T, C, NH, KV */
    static const int shapes[][5] = {{1, 1, 4, 1, 1},  {2, 5, 12, 3, 1}, {3, 17, 32, 4, 2},
                                    {2, 40, 24, 2, 2}, {1, 33, 128, 1, 1}, {2, 20, 64, 8, 2}};
    for (size_t d = 0; d < td.n; d++)
        for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
            st_device *dev = td.dev[d];
            int B = shapes[k][0], T = shapes[k][1], C = shapes[k][2], NH = shapes[k][3];
            int KV = shapes[k][4], W = C + 2 * KV * (C / NH);
            size_t n = (size_t)B * T * C, nq = (size_t)B * T * W;
            size_t na = (size_t)B * NH * T * T, nl = (size_t)B * NH * T;
            double *qkv = rnd(nq, 60 + k, 2.0), *dout = rnd(n, 61 + k, 1.0), *out = zeros(n);
            double *att = zeros(na), *dqkv = zeros(nq), *lse = zeros(nl);
            ref_gqa_attention_fwd(out, att, qkv, B, T, C, NH, KV);
            ref_gqa_attention_bwd(dqkv, dout, qkv, att, B, T, C, NH, KV);
            ref_lse(lse, qkv, B, T, C, NH, KV);
            st_tensor *tq = up(dev, qkv, nq, "qkv"), *tdout = up(dev, dout, n, "dout"),
                      *tout = up(dev, out, n, "out"), *tlse = up(dev, lse, nl, "lse"),
                      *tdq = up(dev, dqkv, nq, "dqkv");
            assert_ok(st_attention_gqa_fwd(tout, tlse, tq, NULL, NULL, B, T, C, NH, KV));
            assert_ok(st_attention_gqa_bwd(tdq, tdout, tout, tlse, tq, NULL, NULL, B, T, C, NH, KV));
            check("gqa attention out", tout, out, n);
            check("gqa attention lse", tlse, lse, nl);
            check("gqa attention dqkv", tdq, dqkv, nq);
            /* no atomics: the same bits again */
            float *a1 = malloc(nq * sizeof *a1), *a2 = malloc(nq * sizeof *a2);
            assert_ok(st_tensor_read(tdq, 0, nq, a1));
            assert_ok(st_attention_gqa_bwd(tdq, tdout, tout, tlse, tq, NULL, NULL, B, T, C, NH, KV));
            assert_ok(st_tensor_read(tdq, 0, nq, a2));
            assert_memory_equal(a1, a2, nq * sizeof *a1);
            st_tensor *all[] = {tq, tdout, tout, tlse, tdq};
            for (size_t i = 0; i < 5; i++)
                st_tensor_destroy(all[i]);
            free(a1), free(a2), free(qkv), free(dout), free(out), free(att), free(dqkv),
                free(lse);
        }
    /* key/value heads that do not divide the heads are refused by name */
    double *x = rnd(64, 1, 1.0);
    st_tensor *q = up(td.dev[0], x, 64, "qkv"), *o = up(td.dev[0], x, 12, "out"),
              *l = up(td.dev[0], x, 3, "lse");
    assert_int_equal(st_attention_gqa_fwd(o, l, q, NULL, NULL, 1, 1, 12, 3, 2), ST_ERR_INVALID);
    assert_contains(st_last_error(), "do not divide");
    st_tensor_destroy(q), st_tensor_destroy(o), st_tensor_destroy(l);
    free(x);
}

/* Decoding: the token at position pos attends over the cache as row pos of
 * the full causal attention does, and writes its key and value (KV heads)
 * into the cache; another sequence's cache (an offset) is left alone. */
static void gqa_decode_matches_reference(void **state)
{
    (void)state;
    /* T, C, NH, KV */
    static const int shapes[][4] = {{1, 4, 1, 1}, {7, 12, 3, 1}, {70, 32, 4, 2}, {20, 256, 4, 4}};
    for (int form = ST_LAYERS_GPU; form <= ST_LAYERS_CPU; form++) /* both forms */
    for (size_t d = 0; (st_layers_set_variant(form), d < td.n); d++)
        for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
            st_device *dev = td.dev[d];
            int T = shapes[k][0], C = shapes[k][1], NH = shapes[k][2], KV = shapes[k][3];
            int KVD = KV * (C / NH), W = C + 2 * KVD, pos = T - 1, S = T + 3;
            size_t nq = (size_t)T * W;
            double *qkv = rnd(nq, 70 + k, 2.0), *out = zeros((size_t)T * C);
            double *att = zeros((size_t)NH * T * T);
            ref_gqa_attention_fwd(out, att, qkv, 1, T, C, NH, KV);
            size_t nc = 2 * (size_t)S * KVD, off = (size_t)S * KVD;
            double *kc = zeros(nc), *vc = zeros(nc), *scratch = zeros((size_t)NH * S);
            for (int r = 0; r < pos; r++)
                for (int e = 0; e < KVD; e++) {
                    kc[off + (size_t)r * KVD + e] = qkv[(size_t)r * W + C + e];
                    vc[off + (size_t)r * KVD + e] = qkv[(size_t)r * W + C + KVD + e];
                }
            int rows[2] = {1, pos}; /* the second sequence's cache */
            st_tensor *tq = up(dev, qkv + (size_t)pos * W, (size_t)W, "qkv"),
                      *tk = up(dev, kc, nc, "k"), *tv = up(dev, vc, nc, "v"),
                      *to = up(dev, out, (size_t)C, "out"),
                      *ts = up(dev, scratch, (size_t)NH * S, "scores"), *tr = up_int(dev, rows, 2);
            assert_ok(st_attention_gqa_decode(to, ts, tk, tv, tq, NULL, tr, 1, true, 2, S, C, NH,
                                              KV));
            check("gqa decode out", to, out + (size_t)pos * C, (size_t)C);
            for (int e = 0; e < KVD; e++) {
                kc[off + (size_t)pos * KVD + e] = qkv[(size_t)pos * W + C + e];
                vc[off + (size_t)pos * KVD + e] = qkv[(size_t)pos * W + C + KVD + e];
            }
            check("gqa decode k cache", tk, kc, nc);
            check("gqa decode v cache", tv, vc, nc);
            st_tensor *all[] = {tq, tk, tv, to, ts, tr};
            for (size_t i = 0; i < 6; i++)
                st_tensor_destroy(all[i]);
            free(qkv), free(out), free(att), free(kc), free(vc), free(scratch);
        }
    st_layers_set_variant(-1);
}

/* A prompt's chunk in one pass (prefill): rows p0 .. T-1 at once after
 * rows 0 .. p0-1 in the cache, each attending up to its own position, equal
 * to rows p0 .. T-1 of the full causal attention; the cache gets every
 * row's key and value. p0 = 0 is a whole prompt. */
static void gqa_prefill_matches_reference(void **state)
{
    (void)state;
    /* T, C, NH, KV, p0 */
    static const int shapes[][5] = {{2, 4, 1, 1, 0}, {7, 12, 3, 1, 3}, {70, 32, 4, 2, 0},
                                    {70, 32, 4, 2, 33}, {20, 256, 4, 4, 19}};
    for (int form = ST_LAYERS_GPU; form <= ST_LAYERS_CPU; form++) /* both forms */
    for (size_t d = 0; (st_layers_set_variant(form), d < td.n); d++)
        for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
            st_device *dev = td.dev[d];
            int T = shapes[k][0], C = shapes[k][1], NH = shapes[k][2], KV = shapes[k][3];
            int p0 = shapes[k][4], n = T - p0;
            int KVD = KV * (C / NH), W = C + 2 * KVD, S = T + 3;
            size_t nq = (size_t)T * W;
            double *qkv = rnd(nq, 90 + k, 2.0), *out = zeros((size_t)T * C);
            double *att = zeros((size_t)NH * T * T);
            ref_gqa_attention_fwd(out, att, qkv, 1, T, C, NH, KV);
            size_t nc = 2 * (size_t)S * KVD, off = (size_t)S * KVD;
            double *kc = zeros(nc), *vc = zeros(nc);
            double *scratch = zeros((size_t)n * NH * S);
            for (int r = 0; r < p0; r++)
                for (int e = 0; e < KVD; e++) {
                    kc[off + (size_t)r * KVD + e] = qkv[(size_t)r * W + C + e];
                    vc[off + (size_t)r * KVD + e] = qkv[(size_t)r * W + C + KVD + e];
                }
            int *rows = malloc(2 * (size_t)n * sizeof *rows);
            for (int r = 0; r < n; r++)
                rows[2 * r] = 1, rows[2 * r + 1] = p0 + r;
            st_tensor *tq = up(dev, qkv + (size_t)p0 * W, (size_t)n * W, "qkv"),
                      *tk = up(dev, kc, nc, "k"), *tv = up(dev, vc, nc, "v"),
                      *to = up(dev, out, (size_t)n * C, "out"),
                      *ts = up(dev, scratch, (size_t)n * NH * S, "scores"),
                      *tr = up_int(dev, rows, 2 * (size_t)n);
            assert_ok(st_attention_gqa_decode(to, ts, tk, tv, tq, NULL, tr, n, n == 1, 2, S, C, NH,
                                              KV));
            check("gqa prefill out", to, out + (size_t)p0 * C, (size_t)n * C);
            for (int r = p0; r < T; r++)
                for (int e = 0; e < KVD; e++) {
                    kc[off + (size_t)r * KVD + e] = qkv[(size_t)r * W + C + e];
                    vc[off + (size_t)r * KVD + e] = qkv[(size_t)r * W + C + KVD + e];
                }
            check("gqa prefill k cache", tk, kc, nc);
            check("gqa prefill v cache", tv, vc, nc);
            st_tensor *all[] = {tq, tk, tv, to, ts, tr};
            for (size_t i = 0; i < 6; i++)
                st_tensor_destroy(all[i]);
            free(qkv), free(out), free(att), free(kc), free(vc), free(scratch), free(rows);
        }
    st_layers_set_variant(-1);
}

/* Batched decoding: one pass whose rows belong to different sequences at
 * their own positions (a token decoded for sequence 0 at position 9, a
 * chunk of sequence 2 at 3 .. 5, a token of sequence 1 at 0), each row
 * equal to its own sequence's row of the full causal attention; then a
 * pass of one row per sequence (each writing its own key and value). */
static void gqa_rows_of_many_sequences(void **state)
{
    (void)state;
    enum { T = 12, C = 32, NH = 4, KV = 2, S = 16, SEQS = 3 };
    int KVD = KV * (C / NH), W = C + 2 * KVD;
    double *qkv[SEQS], *out[SEQS];
    for (int q = 0; q < SEQS; q++) {
        double *att = zeros((size_t)NH * T * T);
        qkv[q] = rnd((size_t)T * W, 120 + q, 2.0);
        out[q] = zeros((size_t)T * C);
        ref_gqa_attention_fwd(out[q], att, qkv[q], 1, T, C, NH, KV);
        free(att);
    }
    /* (sequence, position) per row, and how many rows of each sequence's
     * cache are filled before the pass */
    static const int passes[2][6][2] = {{{0, 9}, {2, 3}, {2, 4}, {2, 5}, {1, 0}, {-1, 0}},
                                        {{0, 10}, {1, 1}, {2, 6}, {-1, 0}}};
    static const int before[2][SEQS] = {{9, 0, 3}, {10, 1, 6}};
    for (int form = ST_LAYERS_GPU; form <= ST_LAYERS_CPU; form++) /* both forms */
    for (size_t d = 0; (st_layers_set_variant(form), d < td.n); d++)
        for (int k = 0; k < 2; k++) {
            st_device *dev = td.dev[d];
            int n = 0;
            while (n < 6 && passes[k][n][0] >= 0)
                n++;
            size_t nc = (size_t)SEQS * S * KVD;
            double *kc = zeros(nc), *vc = zeros(nc), *rows_in = zeros((size_t)n * W);
            double *want = zeros((size_t)n * C), *scratch = zeros((size_t)n * NH * S);
            int rows[12];
            for (int q = 0; q < SEQS; q++)
                for (int r = 0; r < before[k][q]; r++)
                    for (int e = 0; e < KVD; e++) {
                        kc[((size_t)q * S + r) * KVD + e] = qkv[q][(size_t)r * W + C + e];
                        vc[((size_t)q * S + r) * KVD + e] = qkv[q][(size_t)r * W + C + KVD + e];
                    }
            for (int r = 0; r < n; r++) {
                int q = passes[k][r][0], p = passes[k][r][1];
                rows[2 * r] = q, rows[2 * r + 1] = p;
                memcpy(rows_in + (size_t)r * W, qkv[q] + (size_t)p * W, (size_t)W * sizeof(double));
                memcpy(want + (size_t)r * C, out[q] + (size_t)p * C, (size_t)C * sizeof(double));
            }
            st_tensor *tq = up(dev, rows_in, (size_t)n * W, "qkv"), *tk = up(dev, kc, nc, "k"),
                      *tv = up(dev, vc, nc, "v"), *to = up(dev, want, (size_t)n * C, "out"),
                      *ts = up(dev, scratch, (size_t)n * NH * S, "scores"),
                      *tr = up_int(dev, rows, 2 * (size_t)n);
            assert_ok(st_attention_gqa_decode(to, ts, tk, tv, tq, NULL, tr, n, k == 1, SEQS, S, C,
                                              NH, KV));
            check("gqa rows of many sequences", to, want, (size_t)n * C);
            for (int r = 0; r < n; r++)
                for (int e = 0; e < KVD; e++) {
                    int q = passes[k][r][0], p = passes[k][r][1];
                    kc[((size_t)q * S + p) * KVD + e] = qkv[q][(size_t)p * W + C + e];
                    vc[((size_t)q * S + p) * KVD + e] = qkv[q][(size_t)p * W + C + KVD + e];
                }
            check("gqa rows k cache", tk, kc, nc);
            check("gqa rows v cache", tv, vc, nc);
            st_tensor *all[] = {tq, tk, tv, to, ts, tr};
            for (size_t i = 0; i < 6; i++)
                st_tensor_destroy(all[i]);
            free(kc), free(vc), free(rows_in), free(want), free(scratch);
        }
    st_layers_set_variant(-1);
    for (int q = 0; q < SEQS; q++)
        free(qkv[q]), free(out[q]);
}

/* n values of x as a 16-bit device tensor (rounded to nearest even). */
static st_tensor *up16(st_device *dev, st_dtype dt, const double *x, size_t n)
{
    float *f = malloc(n * sizeof *f);
    uint16_t *h = malloc(n * sizeof *h);
    assert_true(f && h);
    for (size_t i = 0; i < n; i++)
        f[i] = (float)x[i];
    st_f32_to_16(dt, f, h, n);
    st_tensor *t;
    assert_ok(st_tensor_create(dev, dt, 1, &n, "cache16", &t));
    assert_ok(st_tensor_write(t, 0, n, h));
    free(f), free(h);
    return t;
}

/* A KV cache stored in 16 bits (BF16, F16; st_kv_storage): a prompt's
 * chunk in one pass (keys and values written by attention_kv_write) and a
 * decoded token (written by the decoding kernel itself) give the full
 * causal attention over keys and values rounded to the type, queries not
 * rounded; the cache then holds every row's key and value rounded to
 * nearest even, bit for bit as the host rounds them. */
static void gqa_decode_16bit_cache(void **state)
{
    (void)state;
    /* T, C, NH, KV, p0 (p0 = T - 1: one token, written by the decoder) */
    static const int shapes[][5] = {{7, 12, 3, 1, 3}, {70, 32, 4, 2, 33}, {70, 32, 4, 2, 69},
                                    {20, 256, 4, 4, 0}, {20, 256, 4, 4, 19}};
    static const st_dtype types[2] = {ST_BF16, ST_F16};
    for (int ty = 0; ty < 2; ty++)
    for (int form = ST_LAYERS_GPU; form <= ST_LAYERS_CPU; form++)
    for (size_t d = 0; (st_layers_set_variant(form), d < td.n); d++)
        for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
            st_dtype dt = types[ty];
            st_device *dev = td.dev[d];
            int T = shapes[k][0], C = shapes[k][1], NH = shapes[k][2], KV = shapes[k][3];
            int p0 = shapes[k][4], n = T - p0;
            int KVD = KV * (C / NH), W = C + 2 * KVD, S = T + 3;
            size_t nq = (size_t)T * W;
            double *qkv = rnd(nq, 150 + k, 2.0), *rq = malloc(nq * sizeof *rq);
            memcpy(rq, qkv, nq * sizeof *rq);
            for (int r = 0; r < T; r++) /* the reference's keys and values rounded */
                for (int e = C; e < W; e++) {
                    float f = (float)qkv[(size_t)r * W + e];
                    uint16_t h;
                    st_f32_to_16(dt, &f, &h, 1);
                    st_16_to_f32(dt, &h, &f, 1);
                    rq[(size_t)r * W + e] = f;
                }
            double *out = zeros((size_t)T * C), *att = zeros((size_t)NH * T * T);
            ref_gqa_attention_fwd(out, att, rq, 1, T, C, NH, KV);
            size_t nc = 2 * (size_t)S * KVD, off = (size_t)S * KVD;
            double *kc = zeros(nc), *vc = zeros(nc), *scratch = zeros((size_t)n * NH * S);
            for (int r = 0; r < T; r++)
                for (int e = 0; e < KVD; e++) {
                    kc[off + (size_t)r * KVD + e] = qkv[(size_t)r * W + C + e];
                    vc[off + (size_t)r * KVD + e] = qkv[(size_t)r * W + C + KVD + e];
                }
            /* rows before p0 in the cache; the rest written by the pass */
            double *kc0 = zeros(nc), *vc0 = zeros(nc);
            memcpy(kc0, kc, (off + (size_t)p0 * KVD) * sizeof *kc0);
            memcpy(vc0, vc, (off + (size_t)p0 * KVD) * sizeof *vc0);
            int *rows = malloc(2 * (size_t)n * sizeof *rows);
            for (int r = 0; r < n; r++)
                rows[2 * r] = 1, rows[2 * r + 1] = p0 + r;
            st_tensor *tq = up(dev, qkv + (size_t)p0 * W, (size_t)n * W, "qkv"),
                      *tk = up16(dev, dt, kc0, nc), *tv = up16(dev, dt, vc0, nc),
                      *to = up(dev, out, (size_t)n * C, "out"),
                      *ts = up(dev, scratch, (size_t)n * NH * S, "scores"),
                      *tr = up_int(dev, rows, 2 * (size_t)n);
            assert_ok(st_attention_gqa_decode(to, ts, tk, tv, tq, NULL, tr, n, n == 1, 2, S, C, NH,
                                              KV));
            check("16-bit cache: out", to, out + (size_t)p0 * C, (size_t)n * C);
            for (int c = 0; c < 2; c++) { /* the caches, bit for bit */
                double *want = c ? vc : kc;
                float *f = malloc(nc * sizeof *f);
                uint16_t *w16 = malloc(nc * sizeof *w16), *g16 = malloc(nc * sizeof *g16);
                for (size_t i = 0; i < nc; i++)
                    f[i] = (float)want[i];
                st_f32_to_16(dt, f, w16, nc);
                assert_ok(st_tensor_read(c ? tv : tk, 0, nc, g16));
                assert_memory_equal(g16, w16, nc * sizeof *g16);
                free(f), free(w16), free(g16);
            }
            st_tensor *all[] = {tq, tk, tv, to, ts, tr};
            for (size_t i = 0; i < 6; i++)
                st_tensor_destroy(all[i]);
            free(qkv), free(rq), free(out), free(att), free(kc), free(vc), free(kc0), free(vc0),
                free(scratch), free(rows);
        }
    st_layers_set_variant(-1);
    /* a float cache with a 16-bit one is refused by name */
    double *x = rnd(64, 1, 1.0);
    st_device *dev = td.dev[0];
    int rows[2] = {0, 0};
    st_tensor *q = up(dev, x, 12, "qkv"), *o = up(dev, x, 4, "out"), *sc = up(dev, x, 4, "scores"),
              *k = up16(dev, ST_BF16, x, 16), *v = up(dev, x, 16, "v"), *r = up_int(dev, rows, 2);
    assert_int_equal(st_attention_gqa_decode(o, sc, k, v, q, NULL, r, 1, true, 1, 4, 4, 1, 1),
                     ST_ERR_INVALID);
    assert_contains(st_last_error(), "'v' is F32, expected BF16");
    st_tensor *all[] = {q, o, sc, k, v, r};
    for (size_t i = 0; i < 6; i++)
        st_tensor_destroy(all[i]);
    free(x);
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
        cmocka_unit_test(references_backward_are_gradients),
        cmocka_unit_test(rmsnorm_matches_reference),
        cmocka_unit_test(rope_matches_reference),
        cmocka_unit_test(swiglu_and_linear_match),
        cmocka_unit_test(lora_group_matches_reference),
        cmocka_unit_test(gqa_attention_matches_reference),
        cmocka_unit_test(gqa_decode_matches_reference),
        cmocka_unit_test(gqa_prefill_matches_reference),
        cmocka_unit_test(gqa_rows_of_many_sequences),
        cmocka_unit_test(gqa_decode_16bit_cache),
    };
    return cmocka_run_group_tests(tests, NULL, group_teardown);
}
