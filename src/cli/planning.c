/*
 * planning.c - what train, plan, generate, eval and bench share about
 * splitting a model: --mem-limit, the plan (a library call, strata/run.h)
 * and its table.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "strata/run.h"

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
        bool found = !devs; /* the syntax alone */
        for (size_t i = 0; devs && i < devs->n; i++) {
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

st_status cli_check_plan_flags(const char *split, const char *parallel, const char *mem_limit)
{
    st_split_spec sp;
    st_parallel_spec par;
    st_status s = split ? st_split_parse(split, &sp) : ST_OK;
    if (s == ST_OK && parallel)
        s = st_parallel_parse(parallel, &par);
    if (s == ST_OK && mem_limit)
        s = cli_apply_mem_limit(mem_limit, NULL);
    return s;
}

st_status cli_make_plan(cli_devices *devs, const st_model_desc *desc, const cli_plan_opts *o,
                        st_plan *plan, st_device_profile *prof)
{
    st_status s = o->mem_limit ? cli_apply_mem_limit(o->mem_limit, devs) : ST_OK;
    if (s != ST_OK)
        return s;
    st_run_plan_options ro = {.split = o->split, .parallel = o->parallel,
                              .keep_all_devices = o->devices_explicit, .quiet = o->quiet,
                              .recompute_auto = o->recompute_auto,
                              .rates_only = o->rates_only};
    return st_run_plan(devs->dev, devs->n, desc, &o->shape, &ro, plan, prof);
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
    const st_run_shape *r = &plan->shape;
    size_t R = st_plan_replicas(plan);
    bool decoding = st_run_decoding(r);
    int all = decoding ? r->kv_seqs : r->batch;
    int per = decoding ? (all + (int)R - 1) / (int)R : all / (int)R; /* sequences per replica */
    char reps[64] = "";
    if (R > 1)
        snprintf(reps, sizeof reps, "%zu replicas (%d sequences each) of ", R, per);
    if (decoding) {
        size_t G = plan->n_stages < (size_t)per ? plan->n_stages : (size_t)per;
        fprintf(f, "plan: %s%zu stage%s, decoding %d sequence%s: a round (a token for each) in "
                   "%zu pass%s%s\n",
                reps, plan->n_stages, plan->n_stages == 1 ? "" : "s", all, all == 1 ? "" : "s",
                G, G == 1 ? "" : "es", G > 1 ? " streamed through the stages" : "");
    } else
        fprintf(f, "plan: %s%zu stage%s, %s, %d micro-batch%s of %d x %d tokens%s%s%s%s\n", reps,
                plan->n_stages, plan->n_stages == 1 ? "" : "s", st_schedule_name(r->schedule),
                r->micro_batches, r->micro_batches == 1 ? "" : "es", per / r->micro_batches,
                r->seq, o->shape.micro_batches ? "" : " (micro-batches chosen by the planner)",
                r->training ? "" : " (inference)",
                !r->recompute             ? ""
                : o->shape.recompute      ? ", activations recomputed"
                                          : ", activations recomputed (nothing fits without)",
                r->shard_moments && R > 1 ? ", AdamW moments split over the replicas" : "");
    /* The layouts weighed, when there was a choice. */
    if (plan->n_alts > 1) {
        cli_table *a = cli_table_new(6);
        const char *ah[] = {"layout", "predicted ms", "gradient sum ms", "memory/device MB",
                            "speedup", ""};
        cli_table_add(a, ah);
        for (size_t i = 0; i < plan->n_alts; i++) {
            const st_plan_alt *x = &plan->alts[i];
            char c[6][200];
            snprintf(c[0], sizeof c[0], "dp:%zu,pp:%zu", x->replicas, x->stages);
            if (x->fits) {
                snprintf(c[1], sizeof c[1], "%.1f", x->step_ms);
                snprintf(c[2], sizeof c[2], "%.1f", x->reduce_ms);
                snprintf(c[3], sizeof c[3], "%.1f", x->mem_bytes / 1048576.0);
                snprintf(c[4], sizeof c[4], "%.2fx", x->speedup);
                snprintf(c[5], sizeof c[5], "%s", i == plan->chosen ? "<- chosen" : "");
            } else {
                snprintf(c[1], sizeof c[1], "-");
                snprintf(c[2], sizeof c[2], "-");
                snprintf(c[3], sizeof c[3], "-");
                snprintf(c[4], sizeof c[4], "-");
                snprintf(c[5], sizeof c[5], "%.150s", x->why);
            }
            const char *row[6] = {c[0], c[1], c[2], c[3], c[4], c[5]};
            cli_table_add(a, row);
        }
        cli_table_print(a, f);
        cli_table_free(a);
    }
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
        for (size_t q = 1; q < R && devs; q++) {
            size_t len = strlen(c[1]);
            snprintf(c[1] + len, sizeof c[1] - len, q == 1 ? " (replicas: %zu" : ", %zu",
                     devs->index[st->replica_device[q]]);
            if (q + 1 == R)
                snprintf(c[1] + strlen(c[1]), sizeof c[1] - strlen(c[1]), ")");
        }
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
    char sum[64] = "";
    if (R > 1 && r->training)
        snprintf(sum, sizeof sum, " | gradient sum %.1f ms past the backward", plan->reduce_ms);
    if (decoding && plan->step_ms > 0)
        snprintf(sum, sizeof sum, " (%.0f tok/s)", all * 1000.0 / plan->step_ms);
    fprintf(f, "predicted %s %.1f ms%s | %s %.1f%%%s | speedup over one device %.2fx\n",
            r->training ? "step" : decoding ? "round" : "forward pass", plan->step_ms,
            decoding ? sum : "", decoding ? "idle" : "bubble", 100.0 * plan->bubble,
            decoding ? "" : sum, plan->speedup);
    if (plan->note[0])
        fprintf(f, "note: %s\n", plan->note);
}
