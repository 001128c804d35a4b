/*
 * planning.c - what train, plan, generate and eval share about splitting a
 * model: --mem-limit, device profiles, the plan and its table.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "strata/profile.h"

/* "0:2G,1:6G": device index (as `strata devices` numbers them) : bytes with
 * an optional K, M, G or T (binary) suffix. */
st_status cli_apply_mem_limit(const char *text, cli_devices *devs)
{
    const char *p = text;
    while (p && *p) {
        char *end = NULL;
        long idx = strtol(p, &end, 10);
        if (end == p || *end != ':' || idx < 0 || idx >= ST_MAX_DEVICES * 16)
            goto bad;
        const char *q = end + 1;
        double v = strtod(q, &end);
        if (end == q || !(v > 0) || !isfinite(v))
            goto bad;
        double mult = 1;
        switch (*end) {
        case 'K': case 'k': mult = 1024.0; end++; break;
        case 'M': case 'm': mult = 1048576.0; end++; break;
        case 'G': case 'g': mult = 1073741824.0; end++; break;
        case 'T': case 't': mult = 1099511627776.0; end++; break;
        default: break;
        }
        if (*end == 'B' || *end == 'b')
            end++;
        if (*end && *end != ',')
            goto bad;
        /* Less than a KiB or more than an exbibyte is a typo, not a device. */
        if (v * mult < 1024.0 || v * mult > 1152921504606846976.0)
            goto bad;
        bool found = false;
        for (size_t i = 0; i < devs->n; i++) {
            if (devs->index[i] != (size_t)idx)
                continue;
            found = true;
            if (devs->dev[i]) {
                st_status s = st_device_set_capacity(devs->dev[i], (uint64_t)(v * mult));
                if (s != ST_OK)
                    return s;
            }
        }
        if (!found)
            return st_error(ST_ERR_INVALID,
                            "--mem-limit names device %ld, which is not among the chosen devices",
                            idx);
        p = *end ? end + 1 : end;
    }
    return ST_OK;
bad:
    return st_error(ST_ERR_INVALID,
                    "bad --mem-limit '%s': use INDEX:SIZE pairs such as 0:2G,1:512M (sizes from "
                    "1K to 1E bytes, suffix K, M, G or T)",
                    text);
}

void cli_profile_shape(const st_model_desc *desc, const cli_plan_opts *o, size_t *m, size_t *n,
                       size_t *k)
{
    /* The product every block does most: tokens x C -> 4C, with C at most
     * 2048 (large enough to reach the device's rate, small enough to
     * measure fast) and at most 1024 tokens. */
    size_t N = (size_t)(o->micro_batches ? o->micro_batch : o->batch) * (size_t)o->seq;
    size_t C = (size_t)desc->cfg.n_embd;
    if (C > 2048)
        C = 2048;
    *m = N < 1024 ? N : 1024;
    *n = 4 * C;
    *k = C;
}

st_status cli_profile_attention(st_device *const *devs, size_t n, const st_model_desc *desc,
                                const cli_plan_opts *o, st_device_profile *prof)
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
    int T = o->seq < 256 ? o->seq : 256;
    int B = 1024 / T;
    int Bmax = o->micro_batches ? o->micro_batch : o->batch;
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

st_status cli_make_plan(cli_devices *devs, const st_model_desc *desc, const cli_plan_opts *o,
                        st_plan *plan, st_device_profile *prof)
{
    st_split_spec split;
    st_status s = st_split_parse(o->split ? o->split : "auto", &split);
    if (s != ST_OK)
        return s;
    if (o->mem_limit && (s = cli_apply_mem_limit(o->mem_limit, devs)) != ST_OK)
        return s;
    /* Before any measurement or allocation: can the devices together hold
     * the parameters at all (64-bit arithmetic)? */
    uint64_t per_param = o->training ? 16 : 4; /* weights; + gradients and two AdamW moments */
    uint64_t need = (uint64_t)desc->param_numel * per_param, have = 0;
    for (size_t i = 0; i < devs->n; i++)
        have += st_device_get_memory(devs->dev[i]).capacity;
    if (need > have) {
        char a[32], b[32];
        return st_error(ST_ERR_INVALID,
                        "the model does not fit: its %zu parameters alone need %s (%llu bytes "
                        "each%s), and the %zu chosen device(s) have %s in all (use more devices "
                        "or a smaller model)",
                        desc->param_numel, st_format_bytes(need, a, sizeof a),
                        (unsigned long long)per_param,
                        o->training ? ": weights, gradients, two AdamW moments" : "",
                        devs->n, st_format_bytes(have, b, sizeof b));
    }
    size_t pm, pn, pk;
    cli_profile_shape(desc, o, &pm, &pn, &pk);
    for (size_t i = 0; i < devs->n; i++) {
        bool cached = false;
        if ((s = st_device_profile_get(devs->dev[i], pm, pn, pk, 0, &cached, &prof[i])) != ST_OK)
            return s;
        st_device_reset_peak(devs->dev[i]); /* the measurement is not the run's memory */
        if (!cached && !o->quiet)
            fprintf(stderr,
                    "profiled %s: GEMM %.1f GFLOPS (median of 5, spread %.0f%%), host to "
                    "device %.2f GB/s, device to host %.2f GB/s\n",
                    st_device_label(devs->dev[i]), prof[i].gflops, 100 * prof[i].gflops_spread,
                    prof[i].h2d_gbps, prof[i].d2h_gbps);
    }
    if ((s = cli_profile_attention(devs->dev, devs->n, desc, o, prof)) != ST_OK)
        return s;
    /* Devices on the same hardware (PoCL's CPU devices) are planned at the
     * rate each gets while the others run too. */
    if ((s = st_device_profile_shared(devs->dev, devs->n, pm, pn, pk, prof)) != ST_OK)
        return s;
    for (size_t i = 0; i < devs->n; i++)
        st_device_reset_peak(devs->dev[i]);
    st_plan_input in = {.desc = desc, .micro_batch = o->micro_batch, .seq = o->seq,
                        .micro_batches = o->micro_batches, .batch = o->batch,
                        .schedule = o->schedule,
                        .training = o->training, .n_devices = devs->n, .devices = prof,
                        .split = split, .keep_all_devices = o->devices_explicit};
    return st_plan_make(&in, plan);
}

static void layer_names(const st_model_desc *desc, size_t first, size_t end, char *out,
                        size_t size)
{
    out[0] = '\0';
    int b0 = -1, b1 = -1;
    bool emb = false, head = false;
    for (size_t l = first; l < end; l++) {
        const st_layer_desc *ld = &desc->layers[l];
        if (ld->kind == ST_LAYER_EMBEDDING)
            emb = true;
        else if (ld->kind == ST_LAYER_HEAD)
            head = true;
        else {
            if (b0 < 0)
                b0 = ld->block;
            b1 = ld->block;
        }
    }
    /* Blocks as the family names them: "h.3" (GPT-2), "layers.3" (Llama). */
    char blocks[64] = "", prefix[32] = "";
    for (size_t l = first; l < end && !prefix[0]; l++)
        if (desc->layers[l].kind == ST_LAYER_BLOCK) {
            snprintf(prefix, sizeof prefix, "%s", desc->layers[l].name);
            char *dot = strrchr(prefix, '.');
            if (dot)
                dot[1] = '\0';
        }
    if (b0 >= 0 && b0 == b1)
        snprintf(blocks, sizeof blocks, "%s%d", prefix, b0);
    else if (b0 >= 0)
        snprintf(blocks, sizeof blocks, "%s%d-%d", prefix, b0, b1);
    snprintf(out, size, "%s%s%s%s%s", emb ? "embedding" : "", emb && blocks[0] ? ", " : "",
             blocks, head && (emb || blocks[0]) ? ", " : "", head ? "head" : "");
}

void cli_plan_print(const st_plan *plan, const st_model_desc *desc, const cli_devices *devs,
                    const st_device_profile *prof, const cli_plan_opts *o, FILE *f)
{
    fprintf(f, "plan: %zu stage%s, %s, %d micro-batch%s of %d x %d tokens%s%s\n",
            plan->n_stages, plan->n_stages == 1 ? "" : "s", st_schedule_name(o->schedule),
            plan->micro_batches, plan->micro_batches == 1 ? "" : "es", plan->micro_batch, o->seq,
            o->micro_batches ? "" : " (micro-batches chosen by the planner)",
            o->training ? "" : " (inference)");
    cli_table *t = cli_table_new(9);
    const char *head[] = {"stage", "device", "layers", "params MB", "activations MB",
                          "total MB / capacity", "fwd ms", "bwd ms", "GFLOPS"};
    cli_table_add(t, head);
    for (size_t s = 0; s < plan->n_stages; s++) {
        const st_plan_stage *st = &plan->stage[s];
        char c[9][300];
        snprintf(c[0], sizeof c[0], "%zu", s);
        if (devs)
            snprintf(c[1], sizeof c[1], "%zu %s", devs->index[st->device],
                     st_device_get_info(devs->dev[st->device])->name);
        else /* devices of several ranks: the profiles carry their labels */
            snprintf(c[1], sizeof c[1], "%s", prof[st->device].name);
        layer_names(desc, st->first, st->end, c[2], sizeof c[2]);
        snprintf(c[3], sizeof c[3], "%.1f", st->param_bytes / 1048576.0);
        snprintf(c[4], sizeof c[4], "%.1f", st->act_bytes / 1048576.0);
        snprintf(c[5], sizeof c[5], "%.1f / %.0f", st->total_bytes / 1048576.0,
                 (double)prof[st->device].mem_bytes / 1048576.0);
        snprintf(c[6], sizeof c[6], "%.2f", st->fwd_ms);
        snprintf(c[7], sizeof c[7], "%.2f", st->bwd_ms);
        snprintf(c[8], sizeof c[8], "%.1f", prof[st->device].gflops);
        const char *row[9];
        for (int i = 0; i < 9; i++)
            row[i] = c[i];
        cli_table_add(t, row);
    }
    cli_table_print(t, f);
    cli_table_free(t);
    fprintf(f, "predicted %s %.1f ms | bubble %.1f%% | speedup over one device %.2fx\n",
            o->training ? "step" : "forward pass", plan->step_ms, 100.0 * plan->bubble,
            plan->speedup);
    if (plan->note[0])
        fprintf(f, "note: %s\n", plan->note);
}

void cli_plan_layout(const st_plan *plan, const cli_devices *devs, st_train_layout *layout)
{
    memset(layout, 0, sizeof *layout);
    layout->n_stages = plan->n_stages;
    for (size_t s = 0; s < plan->n_stages; s++) {
        layout->dev[s] = devs->dev[plan->stage[s].device];
        layout->first[s] = plan->stage[s].first;
        layout->end[s] = plan->stage[s].end;
    }
}
