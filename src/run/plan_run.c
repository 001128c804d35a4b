/*
 * plan_run.c - measuring devices for a model and planning over them (see
 * strata/run.h): the library call every command makes.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "core/load.h"
#include "run/measure.h"
#include "strata/profile.h"
#include "strata/progress.h"
#include "strata/stage.h"

void st_run_profile_shape(const st_model_desc *desc, const st_run_shape *shape, size_t *m,
                          size_t *n, size_t *k)
{
    /* Large enough to reach the device's rate, small enough to measure fast;
     * decoding is sized by its cache's positions (the prompt's products). */
    int T = shape->kv_seq > shape->seq ? shape->kv_seq : shape->seq;
    size_t N = (size_t)st_run_micro_batch(shape) * (size_t)T;
    size_t C = (size_t)desc->cfg.n_embd;
    if (C > 2048)
        C = 2048;
    *m = N < 1024 ? N : 1024;
    *n = 4 * C;
    *k = C;
}

/* The attention kernels' rate for the planner (prof[i].attn_gflops). */
static st_status profile_attention(st_device *const *devs, size_t n, const st_model_desc *desc,
                                   const st_run_shape *shape, st_device_profile *prof)
{
    int C = desc->cfg.n_embd, NH = desc->cfg.n_head;
    const st_layer_desc *blk = NULL;
    for (size_t l = 0; l < desc->n_layers && !blk; l++)
        if (desc->layers[l].kind == ST_LAYER_BLOCK)
            blk = &desc->layers[l];
    if (!blk || !st_attention_is_flash(C, NH))
        return ST_OK;
    /* A context of at most 256 and at most 1024 tokens: long enough for the
     * kernels' rate, short enough to measure in seconds on a CPU. */
    int T = shape->kv_seq > shape->seq ? shape->kv_seq : shape->seq;
    T = T < 256 ? T : 256;
    int B = 1024 / T;
    int Bmax = st_run_micro_batch(shape);
    if (B > Bmax && Bmax > 0)
        B = Bmax;
    if (B < 1)
        B = 1;
    double flops = (double)B * T * T * (blk->fwd_flops_per_token_ctx + blk->bwd_flops_per_token_ctx);
    for (size_t i = 0; i < n; i++) {
        double secs = 0;
        st_status s = st_device_time_attention(devs[i], B, T, C, NH, 0, &secs);
        if (s != ST_OK)
            return s;
        prof[i].attn_gflops = secs > 0 ? flops / secs / 1e9 : 0;
        st_device_reset_peak(devs[i]);
    }
    return ST_OK;
}

static int by_seconds(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* One block forward (and backward when training) at b sequences of T: the
 * medians of three after a warm-up, in ms. kv > 0: a decoding pass instead,
 * a token of each of b sequences with caches of kv positions, each at
 * position kv / 2. A size whose stage does not fit the device is left out
 * (false, no error). */
static st_status time_block(st_device *dev, const st_model_desc *desc, size_t layer, int b, int T,
                            bool training, int kv, double *fwd_ms, double *bwd_ms, bool *done)
{
    *done = false;
    st_stage_options o = {.first_layer = layer, .end_layer = layer + 1, .batch = b, .seq = T,
                          .slots = 1, .training = training};
    if (kv > 0)
        o = (st_stage_options){.first_layer = layer, .end_layer = layer + 1, .slots = 1,
                               .kv_seq = kv, .kv_seqs = b, .prefill = 1};
    int *rows = kv > 0 ? malloc(3 * (size_t)b * sizeof *rows) : NULL;
    if (kv > 0 && !rows)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    for (int i = 0; kv > 0 && i < b; i++) {
        rows[i] = 0;                /* the token (a block reads the activation) */
        rows[b + i] = i;            /* the sequence */
        rows[2 * b + i] = kv / 2;   /* the position */
    }
    st_stage_rows pass = {.n = b, .tok = rows, .seq = rows ? rows + b : NULL,
                          .pos = rows ? rows + 2 * b : NULL};
    st_stage *g = NULL;
    st_status s = st_stage_create(dev, desc, &o, &g);
    if (s == ST_ERR_DEVICE_MEMORY || s == ST_ERR_INVALID) {
        st_stage_destroy(g);
        free(rows);
        return ST_OK;
    }
    /* A warm-up (it builds kernels), then at least three runs, and more of a
     * short block (up to 15, or 0.2 s): small times are noisy. A run over a
     * second (a large model on a slow device) is timed once: it is steady,
     * and three would take minutes. */
    enum { MAX_RUNS = 16 };
    double f[MAX_RUNS] = {0}, w[MAX_RUNS] = {0}, spent = 0;
    if (s == ST_OK && (s = st_stage_init(g, 1)) == ST_OK &&
        (s = st_tensor_fill(kv > 0 ? st_stage_decode_x(g) : st_stage_io_tensor(g, 0, ST_STAGE_IN),
                            0.01f)) == ST_OK &&
        training)
        s = st_tensor_fill(st_stage_io_tensor(g, 0, ST_STAGE_DOUT), 0.001f);
    int n = 0;
    for (; s == ST_OK && n < MAX_RUNS && ((n < 4 && !(n == 2 && spent > 1.0)) || spent < 0.2);
         n++) {
        double t0 = st_now_s();
        if ((s = kv > 0 ? st_stage_pass(g, &pass, NULL) : st_stage_forward(g, 0, NULL, NULL, b, T)) == ST_OK &&
            (s = st_device_finish(dev)) == ST_OK) {
            double t1 = st_now_s();
            f[n] = t1 - t0;
            if (training && (s = st_stage_backward(g, 0, b, T, 1e-3f)) == ST_OK)
                s = st_device_finish(dev);
            w[n] = st_now_s() - t1;
        }
        if (n > 0)
            spent += f[n] + w[n];
    }
    st_stage_destroy(g);
    free(rows);
    if (s != ST_OK)
        return s;
    /* the medians of the runs after the warm-up */
    qsort(f + 1, (size_t)(n - 1), sizeof *f, by_seconds);
    qsort(w + 1, (size_t)(n - 1), sizeof *w, by_seconds);
    *fwd_ms = f[1 + (n - 1) / 2] * 1e3;
    *bwd_ms = w[1 + (n - 1) / 2] * 1e3;
    *done = true;
    return ST_OK;
}

static st_status profile_blocks_shared(st_device *const *devs, size_t n,
                                       const st_model_desc *desc, size_t layer, int T,
                                       bool training, int kv, st_device_profile *prof);

/* Seconds one forward and backward of block layer at b sequences of T
 * should take on a device of prof's GEMM rate: to announce and bound the
 * timing of a large model. */
static double block_estimate_s(const st_model_desc *desc, size_t layer, int b, int T,
                               bool training, const st_device_profile *prof)
{
    const st_layer_desc *l = &desc->layers[layer];
    double per = l->fwd_flops_per_token + l->fwd_flops_per_token_ctx * T;
    if (training)
        per += l->bwd_flops_per_token + l->bwd_flops_per_token_ctx * T;
    return per * b * T / (fmax(prof->gflops, 1e-3) * 1e9);
}

enum { BLOCK_LONG_S = 2 };

/* The cache key's part for a decoding pass timed with a cache of kv. */
static const char *decode_key(int kv)
{
    static _Thread_local char key[32];
    snprintf(key, sizeof key, " decode v1 K%d", kv);
    return key;
} /* a run longer than this: no larger size is timed */

/* A whole block timed at the micro-batch sizes the planner may choose
 * (prof[i].block_*): divisors of the batch with at least 256 tokens, and the
 * next two below, at most ST_PROFILE_BLOCK_SIZES; cached. The smallest is
 * timed first, and once a run lasts over BLOCK_LONG_S seconds the larger
 * sizes are left to the planner's per-token scaling (a 1B-parameter block
 * runs a minute on a CPU device: timing four sizes three times each took
 * half an hour). A timing expected to take over ten seconds is announced,
 * with its estimate, on a terminal or not. */
static st_status profile_blocks(st_device *const *devs, size_t n, const st_model_desc *desc,
                                const st_run_shape *shape, bool quiet, st_device_profile *prof)
{
    size_t layer = desc->n_layers;
    for (size_t l = 0; l < desc->n_layers && layer == desc->n_layers; l++)
        if (desc->layers[l].kind == ST_LAYER_BLOCK)
            layer = l;
    int T = shape->seq, sizes[ST_PROFILE_BLOCK_SIZES], n_sizes = 0, below = 0, kv = 0;
    if (layer == desc->n_layers || T < 1 || shape->batch < 1)
        return ST_OK;
    if (st_run_decoding(shape)) {
        /* Decoding: a pass of a token of every sequence, and of one (the
         * planner scales a pass of so many rows from the nearer). */
        kv = shape->kv_seq < 256 ? shape->kv_seq : 256;
        T = 1;
        sizes[n_sizes++] = shape->kv_seqs;
        if (shape->kv_seqs > 1)
            sizes[n_sizes++] = 1;
    }
    for (int b = shape->batch; !kv && b >= 1 && n_sizes < ST_PROFILE_BLOCK_SIZES; b--) {
        if (shape->batch % b != 0)
            continue;
        if (b * T < 256 && ++below > 2)
            break;
        sizes[n_sizes++] = b; /* largest first */
    }
    const st_model_config *c = &desc->cfg;
    for (size_t i = 0; i < n; i++) {
        char what[ST_PROFILE_BLOCK_SIZES][256];
        double t[ST_PROFILE_BLOCK_SIZES][2];
        bool done[ST_PROFILE_BLOCK_SIZES] = {false};
        int todo = 0;
        double expect = 0;
        bool stop = false;
        for (int k = n_sizes - 1; k >= 0; k--) {
            char lora[48] = ""; /* adapters change a block's work */
            if (c->lora.rank > 0)
                snprintf(lora, sizeof lora, " lora%d-%x", c->lora.rank, c->lora.targets);
            snprintf(what[k], sizeof what[k], "block v2 %s C%d H%d KV%d F%d bias%d%d B%d T%d %s%s%s",
                     c->model_type, c->n_embd, c->n_head, c->n_kv_head, c->n_inner,
                     c->attn_bias, c->attn_out_bias, sizes[k], T,
                     shape->training ? "train" : "forward", kv > 0 ? decode_key(kv) : "", lora);
            t[k][0] = t[k][1] = 0;
            done[k] = st_device_cached_seconds(devs[i], what[k], 2, t[k]);
            if (done[k])
                stop = stop || (t[k][0] + t[k][1]) * 1e-3 > BLOCK_LONG_S;
            if (done[k] || stop)
                continue;
            double one = block_estimate_s(desc, layer, sizes[k], T, shape->training, &prof[i]);
            todo++;
            expect += one * (one > 1 ? 2 : 4); /* the warm-up, then one run or three */
            stop = one > BLOCK_LONG_S;
        }
        if (expect > 10 && !quiet)
            fprintf(stderr,
                    "note: timing one block of the model on %s for the planner, about %.0f s "
                    "(once: the times are cached)\n",
                    st_device_label(devs[i]), expect);
        st_progress pr;
        st_progress_begin(&pr, (uint64_t)todo, "timing a block for the planner: %s",
                          st_device_label(devs[i]));
        int timed = 0;
        bool long_run = false;
        for (int k = n_sizes - 1; k >= 0; k--) {
            if (done[k]) {
                long_run = long_run || (t[k][0] + t[k][1]) * 1e-3 > BLOCK_LONG_S;
                continue;
            }
            if (long_run)
                break; /* larger sizes: scaled per token from this one */
            st_host_load load;
            st_host_load_begin(&load);
            st_status s = time_block(devs[i], desc, layer, sizes[k], T, shape->training, kv,
                                     &t[k][0], &t[k][1], &done[k]);
            if (s != ST_OK) {
                st_progress_end(&pr);
                return s;
            }
            if (done[k]) {
                t[k][1] = shape->training ? t[k][1] : 1e-9; /* cached times are positive */
                st_device_cache_seconds(devs[i], what[k], 2, t[k],
                                        st_device_measured_busy(devs[i], &load, NULL));
                long_run = (t[k][0] + t[k][1]) * 1e-3 > BLOCK_LONG_S;
            }
            st_progress_update(&pr, (uint64_t)++timed);
        }
        st_progress_end(&pr);
        prof[i].n_block_sizes = 0;
        for (int k = 0; k < n_sizes; k++) { /* largest first */
            if (!done[k])
                continue;
            int j = prof[i].n_block_sizes++;
            prof[i].block_tokens[j] = sizes[k] * T;
            prof[i].block_fwd_ms[j] = t[k][0];
            prof[i].block_bwd_ms[j] = shape->training ? t[k][1] : 0;
        }
        st_device_reset_peak(devs[i]);
    }
    return profile_blocks_shared(devs, n, desc, layer, T, shape->training, kv, prof);
}

typedef struct shared_job {
    st_device *dev;
    const st_model_desc *desc;
    size_t layer;
    int b, T, kv;
    bool training, done;
    double fwd, bwd;
    st_status s;
} shared_job;

static void *shared_block(void *arg)
{
    shared_job *j = arg;
    j->s = time_block(j->dev, j->desc, j->layer, j->b, j->T, j->training, j->kv, &j->fwd, &j->bwd,
                      &j->done);
    return NULL;
}

/* For devices that share hardware (prof[i].hardware): the block at its
 * largest measured size on all of them at once, a host thread each, against
 * the first of them alone just before and after: prof[i].block_shared. Both in one
 * sitting, so that a machine busy with other work slows both alike (the
 * times alone may be cached from an idle hour). Cached as the ratios. */
static st_status profile_blocks_shared(st_device *const *devs, size_t n,
                                       const st_model_desc *desc, size_t layer, int T,
                                       bool training, int kv, st_device_profile *prof)
{
    bool done[ST_PLAN_MAX_STAGES] = {false};
    for (size_t i = 0; i < n; i++) {
        prof[i].block_shared = 0;
        if (done[i] || !prof[i].hardware[0] || prof[i].n_block_sizes < 1)
            continue;
        size_t idx[ST_PLAN_MAX_STAGES], cnt = 0;
        for (size_t j = i; j < n; j++)
            if (!done[j] && prof[j].n_block_sizes > 0 &&
                strcmp(prof[j].hardware, prof[i].hardware) == 0 &&
                prof[j].block_tokens[0] == prof[i].block_tokens[0]) {
                idx[cnt++] = j;
                done[j] = true;
            }
        /* A block over BLOCK_LONG_S is not run three more times for this:
         * the GEMM rates' ratio stands in (block_shared 0). */
        if (cnt < 2 || (prof[i].block_fwd_ms[0] + prof[i].block_bwd_ms[0]) * 1e-3 > BLOCK_LONG_S)
            continue;
        int b = prof[i].block_tokens[0] / T;
        const st_model_config *c = &desc->cfg;
        char what[300];
        snprintf(what, sizeof what, "block together v2 x%zu %s C%d H%d KV%d F%d B%d T%d %s%s", cnt,
                 c->model_type, c->n_embd, c->n_head, c->n_kv_head, c->n_inner, b, T,
                 training ? "train" : "forward", kv > 0 ? decode_key(kv) : "");
        double slower[ST_PLAN_MAX_STAGES]; /* together / alone, each device */
        if (!st_device_cached_seconds(devs[i], what, (int)cnt, slower)) {
            double af = 0, ab = 0;
            bool alone_done = false;
            st_host_load load;
            st_host_load_begin(&load);
            st_status as = time_block(devs[idx[0]], desc, layer, b, T, training, kv, &af, &ab,
                                      &alone_done);
            if (as != ST_OK)
                return as;
            if (!alone_done)
                continue;
            shared_job jobs[ST_PLAN_MAX_STAGES];
            pthread_t th[ST_PLAN_MAX_STAGES];
            bool started[ST_PLAN_MAX_STAGES] = {false};
            for (size_t q = 0; q < cnt; q++) {
                jobs[q] = (shared_job){devs[idx[q]], desc, layer, b, T, kv, training, false, 0, 0,
                                       ST_OK};
                started[q] = pthread_create(&th[q], NULL, shared_block, &jobs[q]) == 0;
                if (!started[q])
                    shared_block(&jobs[q]);
            }
            st_status s = ST_OK;
            bool all = true;
            for (size_t q = 0; q < cnt; q++) {
                if (started[q])
                    pthread_join(th[q], NULL);
                if (jobs[q].s != ST_OK && s == ST_OK)
                    s = jobs[q].s;
                all = all && jobs[q].done;
            }
            /* alone again after: the mean of before and after against the
             * time together (the machine's speed drifts) */
            double af2 = 0, ab2 = 0;
            if (s == ST_OK)
                s = time_block(devs[idx[0]], desc, layer, b, T, training, kv, &af2, &ab2,
                               &alone_done);
            if (s != ST_OK)
                return s;
            double alone = 0.5 * (af + ab + af2 + ab2);
            for (size_t q = 0; q < cnt; q++)
                slower[q] = (jobs[q].fwd + jobs[q].bwd) / fmax(alone, 1e-9);
            all = all && alone_done;
            if (!all)
                continue;
            st_device_cache_seconds(devs[i], what, (int)cnt, slower,
                                    st_device_measured_busy(devs[i], &load, NULL));
        }
        for (size_t q = 0; q < cnt; q++)
            prof[idx[q]].block_shared = fmax(1.0, slower[q]);
    }
    return ST_OK;
}

static st_status measure_all(st_device *const *devs, size_t n, const st_model_desc *desc,
                             const st_run_shape *shape, bool quiet, bool rates_only,
                             st_device_profile *prof);

/* Profiles of devs for this model and shape (cached); devices on the same
 * hardware (PoCL's CPU devices) are measured running at once too.
 *
 * The measurements run against each device's own memory, not a lower
 * capacity set for the run (--mem-limit): they are a property of the device,
 * taken once and cached, and must come out the same whether or not a limit
 * was in force when they were first taken (a 10 MiB limit refused the 16 MiB
 * copy probe on a machine with no cached profile, while a machine that had
 * measured before planned the same model). Everything they allocate is freed
 * before the limit is set back. */
st_status st_run_measure(st_device *const *devs, size_t n, const st_model_desc *desc,
                         const st_run_shape *shape, bool quiet, bool rates_only,
                         st_device_profile *prof)
{
    uint64_t limit[ST_PLAN_MAX_STAGES];
    if (n > ST_PLAN_MAX_STAGES)
        return st_error(ST_ERR_INVALID, "%zu devices: at most %d can be planned over", n,
                        ST_PLAN_MAX_STAGES);
    for (size_t i = 0; i < n; i++) {
        limit[i] = st_device_get_memory(devs[i]).capacity;
        st_status s = st_device_set_capacity(devs[i], 0);
        if (s != ST_OK)
            return s; /* cannot happen: the device's own memory holds what is in use */
    }
    st_status s = measure_all(devs, n, desc, shape, quiet, rates_only, prof);
    for (size_t i = 0; i < n; i++) {
        st_status r = st_device_set_capacity(devs[i], limit[i]);
        if (s == ST_OK)
            s = r;
        prof[i].mem_bytes = limit[i]; /* what the planner may use: the limit */
    }
    return s;
}

static st_status measure_all(st_device *const *devs, size_t n, const st_model_desc *desc,
                             const st_run_shape *shape, bool quiet, bool rates_only,
                             st_device_profile *prof)
{
    size_t pm, pn, pk;
    st_run_profile_shape(desc, shape, &pm, &pn, &pk);
    st_status s = ST_OK;
    for (size_t i = 0; s == ST_OK && i < n; i++) {
        bool cached = false;
        if ((s = st_device_profile_get(devs[i], pm, pn, pk, 0, &cached, &prof[i])) != ST_OK)
            return s;
        st_device_reset_peak(devs[i]); /* the measurement is not the run's memory */
        if (!cached && !quiet)
            fprintf(stderr,
                    "profiled %s: GEMM %.1f GFLOPS (median of 5, spread %.0f%%), host to "
                    "device %.2f GB/s, device to host %.2f GB/s\n",
                    st_device_label(devs[i]), prof[i].gflops, 100 * prof[i].gflops_spread,
                    prof[i].h2d_gbps, prof[i].d2h_gbps);
    }
    if ((!rates_only && (s = profile_attention(devs, n, desc, shape, prof)) != ST_OK) ||
        (!rates_only && (s = profile_blocks(devs, n, desc, shape, quiet, prof)) != ST_OK) ||
        (!rates_only && (s = st_device_profile_shared(devs, n, pm, pn, pk, prof)) != ST_OK))
        return s;
    for (size_t i = 0; i < n; i++)
        st_device_reset_peak(devs[i]);
    return ST_OK;
}

/* Before any measurement or allocation: can the devices together hold the
 * parameters at all (64-bit arithmetic)? */
static st_status params_fit(st_device *const *devs, size_t n, const st_model_desc *desc,
                            bool training)
{
    /* the weights in their storage (st_param_storage) */
    uint64_t need = training ? (uint64_t)desc->train_numel * 12 : 0, have = 0;
    for (size_t l = 0; l < desc->n_layers; l++)
        for (size_t i = 0; i < desc->layers[l].n_params; i++) {
            const st_param_desc *p = &desc->layers[l].params[i];
            need += (uint64_t)p->numel * st_dtype_size(st_param_storage(desc, p, training));
        }
    for (size_t i = 0; i < n; i++)
        have += st_device_get_memory(devs[i]).capacity;
    if (need <= have)
        return ST_OK;
    char a[32], b[32];
    bool some = training && desc->train_numel < desc->param_numel;
    return st_error(ST_ERR_INVALID,
                    "the model does not fit: its %zu parameters alone need %s (%s), and the "
                    "%zu chosen device(s) have %s in all (use more devices or a smaller model)",
                    desc->param_numel, st_format_bytes(need, a, sizeof a),
                    !training ? "the weights as stored"
                    : some    ? "the weights as stored, and 12 bytes more for gradients and two "
                                "AdamW moments of those that train"
                              : "16 bytes each: weights, gradients, two AdamW moments",
                    n,
                    st_format_bytes(have, b, sizeof b));
}

st_status st_run_plan(st_device *const *devs, size_t n, const st_model_desc *desc,
                      const st_run_shape *shape, const st_run_plan_options *o, st_plan *plan,
                      st_device_profile *prof)
{
    st_split_spec split;
    st_parallel_spec par;
    st_status s = st_split_parse(o->split ? o->split : "auto", &split);
    if (s == ST_OK)
        s = st_parallel_parse(o->parallel, &par);
    if (s != ST_OK || (s = params_fit(devs, n, desc, shape->training)) != ST_OK ||
        (s = st_run_measure(devs, n, desc, shape, o->quiet, o->rates_only, prof)) != ST_OK)
        return s;
    st_plan_input in = {.desc = desc, .shape = *shape, .n_devices = n, .devices = prof,
                        .split = split, .keep_all_devices = o->keep_all_devices,
                        .parallel = par};
    s = st_plan_make(&in, plan);
    if (s != ST_OK && o->recompute_auto && shape->training && !shape->recompute) {
        /* Short of memory: the blocks' activations once per stage instead
         * of once per micro-batch in flight, for a third more compute. */
        char why[1024];
        snprintf(why, sizeof why, "%s", st_last_error());
        in.shape.recompute = true;
        if ((s = st_plan_make(&in, plan)) != ST_OK) {
            st_error_clear();
            s = st_error(ST_ERR_INVALID, "%s; with activation recomputation too", why);
        }
    }
    return s;
}
