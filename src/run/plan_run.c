/*
 * plan_run.c - measuring devices for a model and planning over them (see
 * strata/run.h): the library call every command makes.
 */
#include <stdio.h>
#include <string.h>

#include "run/measure.h"
#include "strata/profile.h"

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

/* Profiles of devs for this model and shape (cached); devices on the same
 * hardware (PoCL's CPU devices) are measured running at once too. */
st_status st_run_measure(st_device *const *devs, size_t n, const st_model_desc *desc,
                         const st_run_shape *shape, bool quiet, st_device_profile *prof)
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
    if ((s = profile_attention(devs, n, desc, shape, prof)) != ST_OK ||
        (s = st_device_profile_shared(devs, n, pm, pn, pk, prof)) != ST_OK)
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
    uint64_t per_param = training ? 16 : 4; /* weights; + gradients and two AdamW moments */
    uint64_t need = (uint64_t)desc->param_numel * per_param, have = 0;
    for (size_t i = 0; i < n; i++)
        have += st_device_get_memory(devs[i]).capacity;
    if (need <= have)
        return ST_OK;
    char a[32], b[32];
    return st_error(ST_ERR_INVALID,
                    "the model does not fit: its %zu parameters alone need %s (%llu bytes "
                    "each%s), and the %zu chosen device(s) have %s in all (use more devices "
                    "or a smaller model)",
                    desc->param_numel, st_format_bytes(need, a, sizeof a),
                    (unsigned long long)per_param,
                    training ? ": weights, gradients, two AdamW moments" : "", n,
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
        (s = st_run_measure(devs, n, desc, shape, o->quiet, prof)) != ST_OK)
        return s;
    st_plan_input in = {.desc = desc, .shape = *shape, .n_devices = n, .devices = prof,
                        .split = split, .keep_all_devices = o->keep_all_devices,
                        .parallel = par};
    return st_plan_make(&in, plan);
}
