/*
 * tune_search.c - a time-budgeted search for CLBlast GEMM parameters (see
 * st_tune_search in strata/tune.h).
 *
 * CLBlast's own tuner tries a random sample of the parameter space and
 * reports nothing until it ends; on a CPU device each candidate compiles
 * for seconds, so a useful sample does not fit in minutes. This search
 * starts from what the device uses (or known-good values), changes one or
 * two parameters at a time within the values CLBlast's kernels accept,
 * keeps a change that makes the products faster and leaves their results
 * the same, and stops at the budget with the best so far.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "strata/gemm.h"
#include "strata/progress.h"
#include "strata/tensor.h"
#include "strata/tune.h"

typedef struct domain {
    const char *name;
    size_t n;
    size_t v[6];
} domain;

/* The values each parameter may take (those of CLBlast's kernels). */
static const domain domains[] = {
    {"GEMMK", 2, {0, 1}},        {"KREG", 4, {1, 2, 4, 8}},    {"KWG", 4, {1, 8, 16, 32}},
    {"KWI", 3, {1, 2, 8}},       {"MDIMA", 4, {4, 8, 16, 32}}, {"MDIMC", 4, {4, 8, 16, 32}},
    {"MWG", 4, {16, 32, 64, 128}}, {"NDIMB", 4, {4, 8, 16, 32}}, {"NDIMC", 4, {4, 8, 16, 32}},
    {"NWG", 4, {16, 32, 64, 128}}, {"SA", 2, {0, 1}},          {"SB", 2, {0, 1}},
    {"STRM", 2, {0, 1}},         {"STRN", 2, {0, 1}},          {"VWM", 4, {1, 2, 4, 8}},
    {"VWN", 4, {1, 2, 4, 8}},    {"KWID", 3, {2, 8, 16}},      {"MDIMAD", 4, {4, 8, 16, 32}},
    {"MDIMCD", 4, {4, 8, 16, 32}}, {"NDIMBD", 4, {4, 8, 16, 32}}, {"NDIMCD", 4, {4, 8, 16, 32}},
    {"PADA", 2, {0, 1}},         {"PADB", 2, {0, 1}},          {"VWMD", 4, {1, 2, 4, 8}},
    {"VWND", 4, {1, 2, 4, 8}},   {"WGD", 4, {8, 16, 32, 64}},
};

static const domain *domain_of(const char *name)
{
    for (size_t i = 0; i < sizeof domains / sizeof domains[0]; i++)
        if (strcmp(domains[i].name, name) == 0)
            return &domains[i];
    return NULL;
}

static size_t *param(st_tuning *t, const char *name)
{
    for (size_t i = 0; i < t->n; i++)
        if (strcmp(t->names[i], name) == 0)
            return &t->values[i];
    return NULL;
}

static size_t get(st_tuning *t, const char *name)
{
    size_t *p = param(t, name);
    return p ? *p : 1;
}

static void set(st_tuning *t, const char *name, size_t v)
{
    size_t *p = param(t, name);
    if (p)
        *p = v;
}

static bool divides(size_t a, size_t b)
{
    return a && b % a == 0;
}

/* The constraints of CLBlast's kernels, and a work-group and local memory
 * every device here has. */
static bool valid(st_tuning *t)
{
    if (strcmp(t->kernel, "Xgemm") == 0) {
        size_t mwg = get(t, "MWG"), nwg = get(t, "NWG"), kwg = get(t, "KWG");
        size_t mdimc = get(t, "MDIMC"), ndimc = get(t, "NDIMC"), mdima = get(t, "MDIMA");
        size_t ndimb = get(t, "NDIMB"), vwm = get(t, "VWM"), vwn = get(t, "VWN");
        if (mdimc * ndimc > 1024 || !divides(mdimc * vwm, mwg) || !divides(ndimc * vwn, nwg))
            return false;
        if (get(t, "GEMMK") == 1)
            return kwg == 1 && get(t, "KWI") == 1 && mdima == mdimc && ndimb == ndimc &&
                   get(t, "SA") == 0 && get(t, "SB") == 0 && get(t, "STRM") == 0 &&
                   get(t, "STRN") == 0 && divides(vwn, get(t, "KREG"));
        size_t local = (get(t, "SA") ? kwg * mwg : 0) + (get(t, "SB") ? kwg * nwg : 0);
        return get(t, "KREG") == 1 && kwg >= 8 && divides(get(t, "KWI"), kwg) &&
               divides(mdima * vwm, mwg) && divides(ndimb * vwn, nwg) &&
               divides((mdimc * ndimc) / mdima, kwg) && divides((mdimc * ndimc) / ndimb, kwg) &&
               (mdimc * ndimc) % mdima == 0 && (mdimc * ndimc) % ndimb == 0 && local * 4 <= 16384;
    }
    if (strcmp(t->kernel, "XgemmDirect") == 0) {
        size_t wgd = get(t, "WGD"), mdimcd = get(t, "MDIMCD"), ndimcd = get(t, "NDIMCD");
        size_t mdimad = get(t, "MDIMAD"), ndimbd = get(t, "NDIMBD");
        size_t vwmd = get(t, "VWMD"), vwnd = get(t, "VWND");
        return mdimcd * ndimcd <= 1024 && divides(get(t, "KWID"), wgd) &&
               divides(mdimcd * vwmd, wgd) && divides(ndimcd * vwnd, wgd) &&
               divides(mdimad * vwmd, wgd) && divides(ndimbd * vwnd, wgd) &&
               (mdimcd * ndimcd) % mdimad == 0 && (mdimcd * ndimcd) % ndimbd == 0 &&
               divides((mdimcd * ndimcd) / mdimad, wgd) &&
               divides((mdimcd * ndimcd) / ndimbd, wgd) && 2 * wgd * (wgd + 1) * 4 <= 16384;
    }
    return true;
}

static uint64_t next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* A neighbour of t: one or two parameters changed, the rest made to fit. */
static bool mutate(const st_tuning *t, uint64_t *rng, st_tuning *out)
{
    for (int attempt = 0; attempt < 500; attempt++) {
        *out = *t;
        int changes = 1 + (int)(next(rng) % 2);
        for (int c = 0; c < changes; c++) {
            size_t i = next(rng) % out->n;
            const domain *d = domain_of(out->names[i]);
            if (!d)
                continue;
            out->values[i] = d->v[next(rng) % d->n];
            if (strcmp(out->names[i], "GEMMK") == 0) { /* the two variants' fixed values */
                bool one = out->values[i] == 1;
                set(out, "KWG", one ? 1 : 32);
                set(out, "KWI", one ? 1 : 2);
                set(out, "KREG", one ? 4 : 1);
                set(out, "SA", 0);
                set(out, "SB", 0);
                set(out, "STRM", 0);
                set(out, "STRN", 0);
                if (one) {
                    set(out, "MDIMA", get(out, "MDIMC"));
                    set(out, "NDIMB", get(out, "NDIMC"));
                }
            }
            if (get(out, "GEMMK") == 1 && param(out, "MDIMA")) { /* kept tied */
                if (strcmp(out->names[i], "MDIMA") == 0)
                    set(out, "MDIMC", out->values[i]);
                else
                    set(out, "MDIMA", get(out, "MDIMC"));
                if (strcmp(out->names[i], "NDIMB") == 0)
                    set(out, "NDIMC", out->values[i]);
                else
                    set(out, "NDIMB", get(out, "NDIMC"));
            }
        }
        if (memcmp(out->values, t->values, sizeof t->values) != 0 && valid(out))
            return true;
    }
    return false;
}

typedef struct bench {
    st_tensor *a[8], *b[8], *c[8];
    float *ref;    /* the first shape's result under the start parameters */
    float *got;
    size_t ref_n;
} bench;

static void bench_free(bench *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        st_tensor_destroy(b->a[i]);
        st_tensor_destroy(b->b[i]);
        st_tensor_destroy(b->c[i]);
    }
    free(b->ref);
    free(b->got);
}

static st_status fill_random(st_tensor *t, uint64_t seed)
{
    size_t n = st_tensor_numel(t);
    float *h = malloc(n * sizeof *h);
    if (!h)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    for (size_t i = 0; i < n; i++)
        h[i] = (float)((double)(next(&seed) >> 11) * 0x1.0p-53 - 0.5);
    st_status s = st_tensor_write(t, 0, n, h);
    free(h);
    return s;
}

/* Seconds per pass over the shapes (each: a warm-up, then the best of
 * three); *ok false when the device refused the parameters. cutoff: stop
 * early once the time passes it (a candidate that cannot win). */
static st_status time_shapes(st_device *dev, bench *b, size_t n, double cutoff, double *secs,
                             bool *ok)
{
    double total = 0;
    *ok = true;
    for (size_t i = 0; i < n; i++) {
        double best = 1e30;
        /* The three products a linear layer does in a training step: NN,
         * NT and TN (the transposes as views of the same buffers). */
        size_t m = st_tensor_dim(b->a[i], 0), k = st_tensor_dim(b->a[i], 1);
        size_t nn = st_tensor_dim(b->b[i], 1), sat[2] = {k, m}, sbt[2] = {nn, k};
        st_tensor *at = NULL, *bt = NULL;
        st_status sv = st_tensor_view(b->a[i], 0, 2, sat, &at);
        if (sv == ST_OK)
            sv = st_tensor_view(b->b[i], 0, 2, sbt, &bt);
        if (sv != ST_OK) {
            st_tensor_destroy(at);
            return sv;
        }
        for (int r = 0; r < 4; r++) {
            double t0 = st_now_s();
            st_status s = st_matmul(false, true, 1.0f, b->a[i], bt, 0.0f, b->c[i]);
            if (s == ST_OK)
                s = st_matmul(true, false, 1.0f, at, b->b[i], 0.0f, b->c[i]);
            if (s == ST_OK) /* last: the result compared is the plain product's */
                s = st_matmul(false, false, 1.0f, b->a[i], b->b[i], 0.0f, b->c[i]);
            if (s == ST_OK)
                s = st_device_finish(dev);
            if (s == ST_ERR_BLAS || s == ST_ERR_CL || s == ST_ERR_BUILD) {
                *ok = false; /* parameters the device cannot run */
                st_tensor_destroy(at);
                st_tensor_destroy(bt);
                return ST_OK;
            }
            if (s != ST_OK) {
                st_tensor_destroy(at);
                st_tensor_destroy(bt);
                return s;
            }
            if (r > 0 && st_now_s() - t0 < best)
                best = st_now_s() - t0;
        }
        st_tensor_destroy(at);
        st_tensor_destroy(bt);
        total += best;
        if (total > cutoff)
            break;
    }
    *secs = total;
    return ST_OK;
}

st_status st_tune_rate(st_device *dev, const st_tune_shape *shapes, size_t n_shapes,
                       double *gflops)
{
    bench b;
    memset(&b, 0, sizeof b);
    st_status s = ST_OK;
    double flops = 0;
    for (size_t i = 0; s == ST_OK && i < n_shapes && i < 8; i++) {
        size_t sa[2] = {shapes[i].m, shapes[i].k}, sb[2] = {shapes[i].k, shapes[i].n},
               sc[2] = {shapes[i].m, shapes[i].n};
        flops += 3 * 2.0 * (double)shapes[i].m * shapes[i].n * shapes[i].k;
        if ((s = st_tensor_create(dev, ST_F32, 2, sa, "tune A", &b.a[i])) == ST_OK &&
            (s = st_tensor_create(dev, ST_F32, 2, sb, "tune B", &b.b[i])) == ST_OK)
            s = st_tensor_create(dev, ST_F32, 2, sc, "tune C", &b.c[i]);
    }
    double secs = 0;
    bool ok = false;
    if (s == ST_OK && (s = time_shapes(dev, &b, n_shapes, 1e30, &secs, &ok)) == ST_OK &&
        !ok)
        s = st_error(ST_ERR_BLAS, "the GEMM failed on %s", st_device_label(dev));
    if (s == ST_OK)
        *gflops = flops / secs / 1e9;
    bench_free(&b, n_shapes < 8 ? n_shapes : 8);
    return s;
}

/* Whether the first shape's result matches the start parameters'. */
static st_status same_result(bench *b, bool *same)
{
    st_status s = st_tensor_read(b->c[0], 0, b->ref_n, b->got);
    if (s != ST_OK)
        return s;
    double scale = 0, err = 0;
    for (size_t i = 0; i < b->ref_n; i++) {
        scale = fmax(scale, fabs(b->ref[i]));
        err = fmax(err, fabs((double)b->got[i] - b->ref[i]));
    }
    *same = isfinite(err) && err <= 1e-4 * fmax(scale, 1e-30);
    return ST_OK;
}

st_status st_tune_search(st_device *dev, const st_tuning *start, const st_tune_shape *shapes,
                         size_t n_shapes, double budget_s, uint64_t seed, st_tune_result *out)
{
    memset(out, 0, sizeof *out);
    out->best = *start;
    if (n_shapes < 1 || n_shapes > 8)
        return st_error(ST_ERR_INVALID, "tune: 1 to 8 shapes");
    double t_end = st_now_s() + budget_s, flops = 0;
    bench b;
    memset(&b, 0, sizeof b);
    st_status s = ST_OK;
    for (size_t i = 0; s == ST_OK && i < n_shapes; i++) {
        size_t sa[2] = {shapes[i].m, shapes[i].k}, sb[2] = {shapes[i].k, shapes[i].n},
               sc[2] = {shapes[i].m, shapes[i].n};
        flops += 3 * 2.0 * (double)shapes[i].m * shapes[i].n * shapes[i].k;
        if ((s = st_tensor_create(dev, ST_F32, 2, sa, "tune A", &b.a[i])) == ST_OK &&
            (s = st_tensor_create(dev, ST_F32, 2, sb, "tune B", &b.b[i])) == ST_OK &&
            (s = st_tensor_create(dev, ST_F32, 2, sc, "tune C", &b.c[i])) == ST_OK &&
            (s = fill_random(b.a[i], seed + 2 * i)) == ST_OK)
            s = fill_random(b.b[i], seed + 2 * i + 1);
    }
    b.ref_n = shapes[0].m * shapes[0].n;
    b.ref = malloc(b.ref_n * sizeof *b.ref);
    b.got = malloc(b.ref_n * sizeof *b.got);
    if (s == ST_OK && (!b.ref || !b.got))
        s = st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    double best_secs = 0;
    bool ok = false;
    if (s == ST_OK && (s = st_tuning_apply(dev, start)) == ST_OK &&
        (s = time_shapes(dev, &b, n_shapes, 1e30, &best_secs, &ok)) == ST_OK) {
        if (!ok)
            s = st_error(ST_ERR_BLAS, "the starting %s parameters fail on %s", start->kernel,
                         st_device_label(dev));
        else
            s = st_tensor_read(b.c[0], 0, b.ref_n, b.ref);
    }
    if (s != ST_OK) {
        bench_free(&b, n_shapes);
        return s;
    }
    out->start_gflops = out->best_gflops = flops / best_secs / 1e9;
    st_progress pr;
    st_progress_begin(&pr, 0, "tuning %s: start %.1f GFLOPS, best %.1f", start->kernel,
                      out->start_gflops, out->best_gflops);
    uint64_t rng = seed;
    while (s == ST_OK && st_now_s() < t_end) {
        st_tuning cand;
        if (!mutate(&out->best, &rng, &cand))
            break;
        double secs = 0;
        if ((s = st_tuning_apply(dev, &cand)) != ST_OK)
            break;
        s = time_shapes(dev, &b, n_shapes, best_secs, &secs, &ok);
        out->tried++;
        if (s == ST_OK && ok && secs < best_secs * 0.99) {
            bool same = false;
            if ((s = same_result(&b, &same)) == ST_OK && same) {
                out->best = cand;
                best_secs = secs;
                out->best_gflops = flops / secs / 1e9;
            } else if (s == ST_OK) {
                out->failed++;
            }
        } else if (s == ST_OK && !ok) {
            out->failed++;
        }
        snprintf(pr.what, sizeof pr.what, "tuning %s: start %.1f GFLOPS, best %.1f, tried",
                 start->kernel, out->start_gflops, out->best_gflops);
        st_progress_update(&pr, (uint64_t)out->tried);
    }
    st_progress_end(&pr);
    st_status a = st_tuning_apply(dev, &out->best);
    bench_free(&b, n_shapes);
    return s != ST_OK ? s : a;
}
