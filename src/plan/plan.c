/*
 * plan.c - the layer-sharding planner (see strata/plan.h): cost of a stage,
 * the exact contiguous partition minimising the slowest stage under memory
 * limits (dynamic programming over (stage, last layer)), fixed splits, and
 * the choice of how many devices to use.
 */
#include <ctype.h>
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strata/plan.h"

/* Each kernel launch costs about the device's launch overhead (the
 * description counts them per layer), which dominates small models on CPU
 * devices; this when the profile has not measured it. */
#define LAUNCH_EST_US 25.0

int st_schedule_in_flight(st_schedule sched, bool training, int micro_batches, size_t S,
                          size_t s)
{
    /* GPipe keeps every micro-batch's activations, 1F1B at most S - s. */
    if (!training)
        return 1;
    if (sched == ST_SCHED_GPIPE)
        return micro_batches;
    return (size_t)micro_batches < S - s ? micro_batches : (int)(S - s);
}

const char *st_schedule_name(st_schedule s)
{
    return s == ST_SCHED_GPIPE ? "gpipe" : "1f1b";
}

st_status st_schedule_parse(const char *text, st_schedule *out)
{
    if (strcmp(text, "1f1b") == 0 || strcmp(text, "1F1B") == 0)
        *out = ST_SCHED_1F1B;
    else if (strcmp(text, "gpipe") == 0 || strcmp(text, "GPipe") == 0)
        *out = ST_SCHED_GPIPE;
    else
        return st_error(ST_ERR_INVALID, "unknown schedule '%s': use 1f1b or gpipe", text);
    return ST_OK;
}

st_status st_split_parse(const char *text, st_split_spec *out)
{
    st_split_spec s = {.kind = ST_SPLIT_AUTO};
    if (strcmp(text, "auto") == 0) {
        *out = s;
        return ST_OK;
    }
    if (strcmp(text, "uniform") == 0) {
        s.kind = ST_SPLIT_UNIFORM;
        *out = s;
        return ST_OK;
    }
    const char *p;
    if (strncmp(text, "ratio:", 6) == 0) {
        s.kind = ST_SPLIT_RATIO;
        p = text + 6;
        while (*p) {
            char *end = NULL;
            double v = strtod(p, &end);
            if (end == p || !(v > 0) || !(v <= 1e6) || s.n >= ST_PLAN_MAX_STAGES ||
                (*end && *end != ','))
                return st_error(ST_ERR_INVALID,
                                "bad split '%s': ratio:W1,W2,... takes weights from more than 0 "
                                "to 1e6, one per device (at most %d)",
                                text, ST_PLAN_MAX_STAGES);
            s.ratio[s.n++] = v;
            p = *end ? end + 1 : end;
        }
    } else if (strncmp(text, "layers:", 7) == 0) {
        s.kind = ST_SPLIT_LAYERS;
        p = text + 7;
        while (*p) {
            char *end = NULL;
            long a = strtol(p, &end, 10), b = a;
            if (end == p || a < 0 || a > ST_PLAN_MAX_BLOCKS || s.n >= ST_PLAN_MAX_STAGES)
                goto bad_layers;
            if (*end == '-') {
                const char *q = end + 1;
                b = strtol(q, &end, 10);
                if (end == q || b < a || b > ST_PLAN_MAX_BLOCKS)
                    goto bad_layers;
            }
            if (*end && *end != ',')
                goto bad_layers;
            s.first[s.n] = (int)a;
            s.last[s.n] = (int)b;
            s.n++;
            p = *end ? end + 1 : end;
        }
    } else {
        return st_error(ST_ERR_INVALID,
                        "unknown split '%s': use auto, uniform, ratio:3,1 or layers:0-5,6-11",
                        text);
    }
    if (s.n == 0)
        return st_error(ST_ERR_INVALID, "split '%s' names no device", text);
    *out = s;
    return ST_OK;
bad_layers:
    return st_error(ST_ERR_INVALID,
                    "bad split '%s': layers:A-B,C-D,... takes ascending block ranges from 0 to "
                    "at most %d, one per device (at most %d)",
                    text, ST_PLAN_MAX_BLOCKS, ST_PLAN_MAX_STAGES);
}

/* Running sums over the layers, so that a stage's cost is O(1) whatever its
 * length: the planner stays fast for models of thousands of layers. Entry l
 * holds the sum over layers [0, l). */
typedef struct sums {
    size_t n;
    double *fwd, *bwd, *launches_f, *launches_b;
    double *ctx; /* the attention part of fwd + bwd (FLOPs that grow with the context) */
    size_t *blocks;
    double rows;           /* the rows of one pass the costs count */
    st_sizes_table *sizes; /* memory: what the stage allocates (strata/model.h) */
} sums;

static void sums_free(sums *z)
{
    free(z->fwd);
    free(z->bwd);
    free(z->launches_f);
    free(z->launches_b);
    free(z->ctx);
    free(z->blocks);
    st_sizes_table_free(z->sizes);
    memset(z, 0, sizeof *z);
}

/* The passes of a decoding round over S stages: the sequences in as many
 * groups as stages (st_infer_run streams them), at most one per sequence. */
static size_t decode_groups(const st_plan_input *in, size_t S)
{
    size_t Q = (size_t)in->shape.kv_seqs;
    return S < Q ? S : Q;
}

/* groups: decoding, the passes a round takes (their rows count); else 1. */
static st_status sums_init(const st_plan_input *in, size_t groups, sums *z)
{
    const st_model_desc *m = in->desc;
    size_t n = m->n_layers, B = (size_t)st_run_micro_batch(&in->shape), T = (size_t)in->shape.seq;
    memset(z, 0, sizeof *z);
    if (st_run_decoding(&in->shape)) { /* a pass: a token of each sequence of a group */
        B = ((size_t)in->shape.kv_seqs + groups - 1) / groups;
        T = 1;
    }
    z->n = n;
    z->rows = (double)(B * T);
    double **arrays[5] = {&z->fwd, &z->bwd, &z->launches_f, &z->launches_b, &z->ctx};
    for (int i = 0; i < 5; i++)
        *arrays[i] = calloc(n + 1, sizeof(double));
    z->blocks = calloc(n + 1, sizeof *z->blocks);
    for (int i = 0; i < 5; i++)
        if (!*arrays[i] || !z->blocks) {
            sums_free(z);
            return st_error(ST_ERR_HOST_MEMORY, "plan: out of host memory for %zu layers", n);
        }
    st_stage_options shape = {.batch = (int)B, .seq = in->shape.seq,
                              .training = in->shape.training, .recompute = in->shape.recompute,
                              .kv_seq = in->shape.kv_seq,
                              .kv_seqs = in->shape.kv_seqs, .prefill = in->shape.prefill};
    st_status s = st_sizes_table_make(m, &shape, &z->sizes);
    if (s != ST_OK) {
        sums_free(z);
        return s;
    }
    for (size_t l = 0; l < n; l++) {
        const st_layer_desc *ld = &m->layers[l];
        z->fwd[l + 1] = z->fwd[l] + st_layer_fwd_flops(ld, B, T);
        /* recomputing: a block's backward runs its forward first */
        bool again = in->shape.training && in->shape.recompute && ld->kind == ST_LAYER_BLOCK;
        z->bwd[l + 1] = z->bwd[l] + st_layer_bwd_flops(ld, B, T) +
                        (again ? st_layer_fwd_flops(ld, B, T) : 0);
        z->launches_f[l + 1] = z->launches_f[l] + ld->launches_fwd;
        z->launches_b[l + 1] = z->launches_b[l] + ld->launches_bwd + (again ? ld->launches_fwd : 0);
        z->blocks[l + 1] = z->blocks[l] + (ld->kind == ST_LAYER_BLOCK);
        z->ctx[l + 1] = z->ctx[l] + (double)B * T * T *
                                        (ld->fwd_flops_per_token_ctx +
                                         (in->shape.training ? ld->bwd_flops_per_token_ctx : 0));
    }
    return ST_OK;
}

/* Cost and memory of layers [a, b) as stage s of S on device d, from FLOPs,
 * rates, launches and transfers alone. */
static void stage_cost_model(const st_plan_input *in, const sums *z, const st_device_profile *d,
                             size_t a, size_t b, size_t s, size_t S, st_plan_stage *out)
{
    const st_model_desc *m = in->desc;
    double N = z->rows;
    double fwd = z->fwd[b] - z->fwd[a], bwd = z->bwd[b] - z->bwd[a];
    double launches_f = z->launches_f[b] - z->launches_f[a];
    double launches_b = z->launches_b[b] - z->launches_b[a];
    /* What crosses the boundaries: the stream into layer a, out of layer b - 1. */
    double in_floats = (double)(a > 0 ? m->layers[a - 1].out_floats_per_token : 0);
    double out_floats = (double)(b < m->n_layers ? m->layers[b - 1].out_floats_per_token : 0);
    double in_bytes = N * in_floats * 4.0, out_bytes = N * out_floats * 4.0;
    double xf = 0, xb = 0;
    if (s > 0) {
        xf += in_bytes / (d->h2d_gbps * 1e6); /* receive the input */
        xb += in_bytes / (d->d2h_gbps * 1e6); /* send its gradient back */
    }
    if (s + 1 < S) {
        xf += out_bytes / (d->d2h_gbps * 1e6); /* send the output */
        xb += out_bytes / (d->h2d_gbps * 1e6); /* receive its gradient */
    }
    double launch_ms = (d->launch_us > 0 ? d->launch_us : LAUNCH_EST_US) * 1e-3;
    out->first = a;
    out->end = b;
    /* Attention (the FLOPs that grow with the context) at its own measured
     * rate when the profile has one, split between the passes as its FLOPs
     * are; the rest at the GEMM rate. */
    double ctx = z->ctx[b] - z->ctx[a], extra_f = 0, extra_b = 0;
    if (d->attn_gflops > 0 && ctx > 0) {
        double share_f = 1; /* the forward's part of the attention FLOPs */
        for (size_t l = a; l < b; l++) {
            const st_layer_desc *blk = &m->layers[l];
            if (blk->kind != ST_LAYER_BLOCK)
                continue;
            double f = blk->fwd_flops_per_token_ctx,
                   bb = in->shape.training ? blk->bwd_flops_per_token_ctx : 0;
            share_f = f + bb > 0 ? f / (f + bb) : 1;
            break;
        }
        /* fwd and bwd already count ctx at the GEMM rate: the difference. */
        double diff = ctx / (d->attn_gflops * 1e6) - ctx / (d->gflops * 1e6);
        extra_f = diff * share_f;
        extra_b = diff * (1 - share_f);
    }
    out->fwd_ms = fwd / (d->gflops * 1e6) + extra_f + launches_f * launch_ms + xf;
    out->bwd_ms = in->shape.training ? bwd / (d->gflops * 1e6) + extra_b + launches_b * launch_ms + xb
                               : 0;
    out->xfer_ms = xf + (in->shape.training ? xb : 0);
    out->in_flight = st_schedule_in_flight(in->shape.schedule, in->shape.training,
                                           in->shape.micro_batches, S, s);
    /* Memory: exactly what the stage will allocate. */
    st_stage_sizes sz;
    st_sizes_table_range(z->sizes, a, b, out->in_flight, &sz);
    if (in->shape.training && in->shape.moment_parts > 1) /* each replica its part */
        st_stage_sizes_shard(&sz, in->shape.moment_parts);
    out->param_bytes = 2.0 * (double)sz.half_numel +
                       4.0 * ((double)(sz.param_numel - sz.half_numel) +
                              (in->shape.training
                                   ? (double)sz.train_numel + 2.0 * (double)sz.moment_numel
                                   : 0));
    out->train_numel = in->shape.training ? (double)sz.train_numel : 0;
    out->moment_numel = in->shape.training ? (double)sz.moment_numel : 0;
    out->total_bytes = (double)sz.bytes;
    out->act_bytes = out->total_bytes - out->param_bytes;
}

/* The same with the blocks at their measured time when the profile has
 * them: one block timed whole at the nearest micro-batch size (per token
 * alike at another size) replaces the estimate of each block of the stage;
 * the embedding, the head and the transfers stay estimated. */
static void stage_cost(const st_plan_input *in, const sums *z, const st_device_profile *d,
                       size_t a, size_t b, size_t s, size_t S, st_plan_stage *out)
{
    stage_cost_model(in, z, d, a, b, s, S, out);
    size_t nb = (size_t)(z->blocks[b] - z->blocks[a]);
    if (nb == 0 || d->n_block_sizes < 1)
        return;
    size_t l0 = a;
    while (l0 < b && in->desc->layers[l0].kind != ST_LAYER_BLOCK)
        l0++;
    double N = z->rows;
    int j = 0;
    for (int i = 1; i < d->n_block_sizes; i++)
        if (fabs(log(d->block_tokens[i] / N)) < fabs(log(d->block_tokens[j] / N)))
            j = i;
    double per = N / d->block_tokens[j];
    st_plan_stage one;
    stage_cost_model(in, z, d, l0, l0 + 1, 0, 1, &one);
    out->fwd_ms += (double)nb * (d->block_fwd_ms[j] * per - one.fwd_ms);
    if (in->shape.training)
        out->bwd_ms += (double)nb * (d->block_bwd_ms[j] * per - one.bwd_ms +
                                     (in->shape.recompute ? d->block_fwd_ms[j] * per : 0));
}

/* The profile stage j works at in a plan over devices[0..S): its shared rate
 * when another stage's device shares its hardware. */
static st_device_profile rate_in_plan(const st_plan_input *in, const size_t *devices, size_t S,
                                      size_t j)
{
    st_device_profile d = in->devices[devices[j]];
    bool shared = false;
    if (d.shared_gflops > 0 && d.hardware[0]) {
        for (size_t q = 0; q < S && !shared; q++)
            shared = q != j && devices[q] != devices[j] &&
                     strcmp(in->devices[devices[q]].hardware, d.hardware) == 0;
        for (size_t q = 0; q < in->n_also && !shared; q++)
            shared = strcmp(in->also[q].hardware, d.hardware) == 0;
    }
    if (shared) {
        double ratio = fmin(1.0, d.shared_gflops / d.gflops);
        d.gflops *= ratio;
        d.attn_gflops *= ratio; /* the same cores, shared alike */
        /* blocks: as measured running together, else as the GEMM rates say */
        double slower = d.block_shared >= 1 ? d.block_shared : 1 / ratio;
        for (int i = 0; i < d.n_block_sizes; i++) {
            d.block_fwd_ms[i] *= slower;
            d.block_bwd_ms[i] *= slower;
        }
    }
    return d;
}

static double optimizer_ms(const st_plan_input *in, const st_plan_stage *st,
                           const st_device_profile *d)
{
    if (!in->shape.training)
        return 0;
    /* AdamW streams four buffers: count it as 12 FLOPs per parameter at a
     * tenth of the GEMM rate, element-wise work being memory-bound. */
    double numel = st->moment_numel; /* its part, when the moments are split */
    return numel * 12.0 / (d->gflops * 0.1 * 1e6);
}

st_status st_plan_evaluate(const st_plan_input *in, const size_t *devices, size_t S,
                           const size_t *cuts, st_plan *out)
{
    size_t n = in->desc->n_layers;
    if (S < 1 || S > ST_PLAN_MAX_STAGES || S > n)
        return st_error(ST_ERR_INVALID, "%zu stages for %zu layers", S, n);
    bool decoding = st_run_decoding(&in->shape);
    size_t G = decoding ? decode_groups(in, S) : 1;
    sums z;
    st_status zs = sums_init(in, G, &z);
    if (zs != ST_OK)
        return zs;
    st_plan p;
    memset(&p, 0, sizeof p);
    p.n_stages = S;
    p.devices_offered = in->n_devices;
    double worst = 0, opt = 0, busy = 0;
    for (size_t s = 0; s < S; s++) {
        size_t a = s == 0 ? 0 : cuts[s - 1], b = s + 1 == S ? n : cuts[s];
        if (a >= b || b > n) {
            sums_free(&z);
            return st_error(ST_ERR_INVALID, "stage %zu has no layers", s);
        }
        st_device_profile d = rate_in_plan(in, devices, S, s);
        stage_cost(in, &z, &d, a, b, s, S, &p.stage[s]);
        p.stage[s].device = devices[s];
        double t = p.stage[s].fwd_ms + p.stage[s].bwd_ms;
        if (t > worst)
            worst = t;
        busy += t;
        double o = optimizer_ms(in, &p.stage[s], &d);
        if (o > opt)
            opt = o;
    }
    double m = in->shape.micro_batches;
    if (decoding) {
        /* A round: each stage takes each group's pass in turn, the groups
         * streamed (a stage works on one while the next works on another);
         * no shorter than one group's way through every stage. */
        p.step_ms = fmax((double)G * worst, busy);
        p.bubble = 1 - (double)G * busy / ((double)S * p.step_ms);
    } else {
        p.step_ms = (m + (double)S - 1) * worst + opt;
        p.bubble = ((double)S - 1) / (m + (double)S - 1);
    }
    /* The fastest device alone, memory ignored: the reference for speedup
     * (decoding: every sequence in one pass). */
    size_t best = 0;
    for (size_t i = 1; i < in->n_devices; i++)
        if (in->devices[i].gflops > in->devices[best].gflops)
            best = i;
    if (decoding && G > 1) {
        sums_free(&z);
        if ((zs = sums_init(in, 1, &z)) != ST_OK)
            return zs;
    }
    st_plan_stage one;
    stage_cost(in, &z, &in->devices[best], 0, n, 0, 1, &one);
    sums_free(&z);
    p.one_device_ms = (decoding ? 1 : m) * (one.fwd_ms + one.bwd_ms) +
                      optimizer_ms(in, &one, &in->devices[best]);
    p.speedup = p.one_device_ms / p.step_ms;
    p.shape = in->shape;
    *out = p;
    return ST_OK;
}

st_status st_plan_layout(const st_model_desc *desc, const st_run_shape *shape, size_t S,
                         const size_t *first, const size_t *end, st_plan *out)
{
    if (S < 1 || S > ST_PLAN_MAX_STAGES || shape->micro_batches < 1 || shape->batch < 1 ||
        shape->batch % shape->micro_batches != 0 || shape->seq < 1)
        return st_error(ST_ERR_INVALID, "plan: %zu stages, a batch of %d in %d micro-batches", S,
                        shape->batch, shape->micro_batches);
    st_plan p;
    memset(&p, 0, sizeof p);
    p.shape = *shape;
    p.n_stages = S;
    p.devices_offered = S;
    for (size_t s = 0; s < S; s++) {
        if (first[s] != (s ? end[s - 1] : 0) || end[s] <= first[s] ||
            (s + 1 == S && end[s] != desc->n_layers))
            return st_error(ST_ERR_INVALID,
                            "plan: stage %zu's layers [%zu, %zu) do not continue the split of the "
                            "model's %zu layers",
                            s, first[s], end[s], desc->n_layers);
        p.stage[s].device = s;
        p.stage[s].first = first[s];
        p.stage[s].end = end[s];
        p.stage[s].in_flight = st_schedule_in_flight(shape->schedule, shape->training,
                                                     shape->micro_batches, S, s);
    }
    *out = p;
    return ST_OK;
}

st_status st_plan_replicate(st_plan *plan, size_t R, const size_t *devices)
{
    size_t S = plan->n_stages;
    int m = plan->shape.micro_batches > 0 ? plan->shape.micro_batches : 1;
    if (R < 1 || R > ST_PLAN_MAX_REPLICAS)
        return st_error(ST_ERR_INVALID, "plan: %zu replicas (1 to %d)", R, ST_PLAN_MAX_REPLICAS);
    bool decoding = !plan->shape.training && plan->shape.kv_seqs > 0;
    if (!decoding && plan->shape.batch % ((int)R * m) != 0)
        return st_error(ST_ERR_INVALID,
                        "%zu replicas of %d micro-batch%s each need a batch that splits into "
                        "%zu x %d equal parts; %d does not (choose --batch as a multiple of %zu)",
                        R, m, m == 1 ? "" : "es", R, m, plan->shape.batch, R * (size_t)m);
    for (size_t r = 0; r < R; r++)
        for (size_t s = 0; s < S; s++) {
            size_t d = devices ? devices[r * S + s] : r * S + plan->stage[s].device;
            if (r == 0)
                plan->stage[s].device = d;
            else
                plan->stage[s].replica_device[r] = d;
        }
    plan->replicas = R;
    return ST_OK;
}

static bool fits(const st_plan_stage *st, const st_device_profile *d)
{
    return st->total_bytes <= (double)d->mem_bytes;
}

/* The partition of all layers over devices[0..S) in order minimising the
 * slowest stage with every stage fitting; false when none fits. */
static bool best_partition(const st_plan_input *in, const sums *z, const size_t *devices,
                           size_t S, size_t *cuts)
{
    size_t n = in->desc->n_layers;
    if (S > n)
        return false;
    /* best[j][b]: the slowest stage of the best split of layers [0, b) over
     * stages 0..j; from[j][b]: where stage j starts in it. */
    double *best = malloc(S * (n + 1) * sizeof *best);
    size_t *from = malloc(S * (n + 1) * sizeof *from);
    if (!best || !from) {
        free(best);
        free(from);
        return false;
    }
    for (size_t i = 0; i < S * (n + 1); i++)
        best[i] = INFINITY;
    for (size_t j = 0; j < S; j++) {
        st_device_profile dj = rate_in_plan(in, devices, S, j);
        const st_device_profile *d = &dj;
        for (size_t b = j + 1; b + (S - 1 - j) <= n; b++) {
            size_t a_lo = j == 0 ? 0 : j, a_hi = j == 0 ? 0 : b - 1;
            /* From the shortest stage to the longest: its time and memory only
             * grow, so once it no longer fits, or alone takes as long as the
             * best found, no longer stage can do better. */
            for (size_t a = a_hi + 1; a-- > a_lo;) {
                st_plan_stage st;
                stage_cost(in, z, d, a, b, j, S, &st);
                double t = st.fwd_ms + st.bwd_ms;
                if (!fits(&st, d) || t > best[j * (n + 1) + b])
                    break;
                double prev = j == 0 ? 0 : best[(j - 1) * (n + 1) + a];
                if (!(prev < INFINITY))
                    continue;
                double v = fmax(prev, t);
                if (v <= best[j * (n + 1) + b]) { /* ties: the earlier cut, as before */
                    best[j * (n + 1) + b] = v;
                    from[j * (n + 1) + b] = a;
                }
            }
        }
    }
    bool ok = best[(S - 1) * (n + 1) + n] < INFINITY;
    if (ok) {
        size_t b = n;
        for (size_t j = S - 1; j > 0; j--) {
            size_t a = from[j * (n + 1) + b];
            cuts[j - 1] = a;
            b = a;
        }
    }
    free(best);
    free(from);
    return ok;
}

/* Cuts for a block split: blocks [first_j, last_j] to device j; the embedding
 * joins the first stage and the head the last. */
static void cuts_from_blocks(size_t S, const int *block_first, size_t *cuts)
{
    for (size_t j = 1; j < S; j++)
        cuts[j - 1] = (size_t)block_first[j] + 1; /* layer index = block + 1 */
}

/* Bytes for messages: "512.0 MiB", "3.25 GiB". */
static const char *human(double bytes, char *buf, size_t size)
{
    if (bytes < 1073741824.0)
        snprintf(buf, size, "%.1f MiB", bytes / 1048576.0);
    else
        snprintf(buf, size, "%.2f GiB", bytes / 1073741824.0);
    return buf;
}

static st_status check_fit(const st_plan_input *in, const st_plan *p)
{
    char msg[2048] = "";
    bool ok = true;
    for (size_t s = 0; s < p->n_stages; s++) {
        const st_plan_stage *st = &p->stage[s];
        const st_device_profile *d = &in->devices[st->device];
        if (fits(st, d))
            continue;
        ok = false;
        size_t len = strlen(msg);
        char a[32], b[32], c[32];
        snprintf(msg + len, sizeof msg - len,
                 "%sstage %zu (layers %zu-%zu) needs %s on device %zu '%s', which has %s: %s "
                 "missing",
                 len ? "; " : "", s, st->first, st->end - 1, human(st->total_bytes, a, sizeof a),
                 st->device, d->name, human((double)d->mem_bytes, b, sizeof b),
                 human(st->total_bytes - (double)d->mem_bytes, c, sizeof c));
    }
    if (!ok)
        return st_error(ST_ERR_INVALID,
                        "the split does not fit: %s (use more devices, a smaller micro-batch, "
                        "or another split)",
                        msg);
    return ST_OK;
}

static st_status plan_fixed(const st_plan_input *in, st_plan *out)
{
    size_t S = in->split.kind == ST_SPLIT_UNIFORM ? in->n_devices : in->split.n;
    int L = in->desc->cfg.n_layer;
    if (S != in->n_devices)
        return st_error(ST_ERR_INVALID, "the split names %zu devices but %zu are chosen", S,
                        in->n_devices);
    if ((int)S > L && S > 1)
        return st_error(ST_ERR_INVALID,
                        "%zu devices for %d transformer blocks: a block split needs at least "
                        "one block per device",
                        S, L);
    int first[ST_PLAN_MAX_STAGES];
    if (in->split.kind == ST_SPLIT_LAYERS) {
        for (size_t j = 0; j < S; j++) {
            int want = j == 0 ? 0 : in->split.last[j - 1] + 1;
            if (in->split.first[j] != want)
                return st_error(ST_ERR_INVALID,
                                "split layers: range %zu starts at block %d, expected %d (ranges "
                                "must follow each other without gaps or overlaps)",
                                j, in->split.first[j], want);
            first[j] = in->split.first[j];
        }
        if (in->split.last[S - 1] != L - 1)
            return st_error(ST_ERR_INVALID,
                            "split layers: the ranges end at block %d but the model's last "
                            "block is %d",
                            in->split.last[S - 1], L - 1);
    } else {
        double total = 0, acc = 0;
        for (size_t j = 0; j < S; j++)
            total += in->split.kind == ST_SPLIT_RATIO ? in->split.ratio[j] : 1.0;
        for (size_t j = 0; j < S; j++) {
            first[j] = (int)lround(acc / total * L);
            acc += in->split.kind == ST_SPLIT_RATIO ? in->split.ratio[j] : 1.0;
        }
        for (size_t j = 1; j < S; j++) /* every device at least one block */
            if (first[j] <= first[j - 1])
                first[j] = first[j - 1] + 1;
        for (size_t j = S; j-- > 1;)
            if (first[j] > L - (int)(S - j))
                first[j] = L - (int)(S - j);
    }
    size_t devices[ST_PLAN_MAX_STAGES], cuts[ST_PLAN_MAX_STAGES];
    for (size_t j = 0; j < S; j++)
        devices[j] = j;
    cuts_from_blocks(S, first, cuts);
    st_status s = st_plan_evaluate(in, devices, S, cuts, out);
    if (s == ST_OK)
        s = check_fit(in, out);
    return s;
}

/* Whether a should come before b among the devices to use. Two devices of
 * the same name are the same model: measurement noise does not reorder
 * them (the one listed first is used first). */
static bool faster(const st_device_profile *a, const st_device_profile *b)
{
    if (strcmp(a->name, b->name) == 0)
        return a->gflops > 1.25 * b->gflops;
    return a->gflops > b->gflops;
}

static st_status plan_for(const st_plan_input *in, st_plan *out)
{
    if (!in->desc || in->n_devices < 1 || in->n_devices > ST_PLAN_MAX_STAGES ||
        in->shape.seq < 1 || in->shape.micro_batches < 1 || in->shape.batch < 1 ||
        in->shape.batch % in->shape.micro_batches != 0)
        return st_error(ST_ERR_INVALID, "plan: needs a model, 1 to %d devices and positive sizes",
                        ST_PLAN_MAX_STAGES);
    for (size_t i = 0; i < in->n_devices; i++)
        if (!(in->devices[i].gflops > 0) || !(in->devices[i].h2d_gbps > 0) ||
            !(in->devices[i].d2h_gbps > 0))
            return st_error(ST_ERR_INVALID, "plan: device %zu's profile has no speeds", i);
    if (in->split.kind != ST_SPLIT_AUTO) {
        st_status fs = plan_fixed(in, out);
        out->shape = in->shape;
        return fs;
    }
    /* Auto: the k fastest devices (kept in the given order), each k from 1 to
     * all, unless every device must be used; the fastest predicted step wins. */
    size_t order[ST_PLAN_MAX_STAGES];
    for (size_t i = 0; i < in->n_devices; i++)
        order[i] = i;
    for (size_t i = 1; i < in->n_devices; i++) /* stable: by speed, fastest first */
        for (size_t j = i; j > 0 && faster(&in->devices[order[j]], &in->devices[order[j - 1]]);
             j--) {
            size_t t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
        }
    st_plan best;
    bool have = false;
    sums z;
    st_status zs = sums_init(in, 1, &z); /* decoding: the balance of one pass's rows */
    if (zs != ST_OK)
        return zs;
    size_t k_lo = in->keep_all_devices ? in->n_devices : 1;
    for (size_t k = k_lo; k <= in->n_devices && k <= in->desc->n_layers; k++) {
        size_t devices[ST_PLAN_MAX_STAGES], cuts[ST_PLAN_MAX_STAGES], c = 0;
        for (size_t i = 0; i < in->n_devices; i++) /* the k fastest, in the given order */
            for (size_t r = 0; r < k; r++)
                if (order[r] == i)
                    devices[c++] = i;
        if (!best_partition(in, &z, devices, k, cuts))
            continue;
        st_plan p;
        st_status s = st_plan_evaluate(in, devices, k, cuts, &p);
        if (s != ST_OK) {
            sums_free(&z);
            return s;
        }
        /* More devices must win by a margin: each stage adds threads and copies. */
        if (!have || p.step_ms < best.step_ms * 0.97) {
            best = p;
            have = true;
        }
    }
    if (!have) {
        /* Say how far off the model is: every layer's memory against the total. */
        double need = 0, cap = 0;
        for (size_t i = 0; i < in->n_devices; i++)
            cap += (double)in->devices[i].mem_bytes;
        for (size_t l = 0; l < in->desc->n_layers; l++) {
            st_plan_stage st;
            stage_cost(in, &z, &in->devices[0], l, l + 1, 0, 1, &st);
            need += st.total_bytes;
        }
        sums_free(&z);
        char a[32], b[32], c[48];
        human(need - cap, c, 32);
        return st_error(ST_ERR_INVALID,
                        "the model does not fit the %zu device(s): its layers need about %s "
                        "with this batch, the devices have %s (%s; use more devices, a smaller "
                        "--batch or more --micro-batches, or --mem-limit if the capacities are "
                        "wrong)",
                        in->n_devices, human(need, a, sizeof a), human(cap, b, sizeof b),
                        need > cap ? strcat(c, " missing")
                                   : "no split gives every device a share that fits");
    }
    sums_free(&z);
    if (best.n_stages < in->n_devices)
        snprintf(best.note, sizeof best.note,
                 "%zu of %zu devices: splitting over more is predicted slower (transfers and "
                 "pipeline bubble outweigh the extra compute); choose --devices to use them all",
                 best.n_stages, in->n_devices);
    best.shape = in->shape;
    *out = best;
    return ST_OK;
}

/* One pipeline over the input's devices, the micro-batches chosen when 0. */
static st_status plan_pipeline(const st_plan_input *in, st_plan *out)
{
    if (in->shape.micro_batches != 0)
        return plan_for(in, out);
    if (in->shape.batch < 1 || in->shape.seq < 1)
        return st_error(ST_ERR_INVALID, "plan: choosing micro-batches needs a batch and a "
                                        "sequence length");
    /* Two passes: micro-batches of at least 256 tokens (or the whole batch),
     * then, only if none of those fits, any divisor. */
    long whole = (long)in->shape.batch * in->shape.seq, floor_tokens = whole < 256 ? whole : 256;
    st_plan best;
    bool have = false;
    char why[2048] = "";
    for (int pass = 0; pass < 2 && !have; pass++) {
        for (int m = 1; m <= in->shape.batch; m++) {
            if (in->shape.batch % m != 0)
                continue;
            long tokens = (long)(in->shape.batch / m) * in->shape.seq;
            if ((pass == 0) != (tokens >= floor_tokens))
                continue;
            st_plan_input one = *in;
            one.shape.micro_batches = m;
            st_plan p;
            st_status s = plan_for(&one, &p);
            if (s == ST_ERR_INVALID) {
                if (!why[0])
                    snprintf(why, sizeof why, "%s", st_last_error());
                continue;
            }
            if (s != ST_OK)
                return s;
            if (!have || p.step_ms < best.step_ms * 0.97) {
                best = p;
                have = true;
            }
        }
    }
    if (!have)
        return st_error(ST_ERR_INVALID, "%s", why[0] ? why : "plan: no micro-batch count fits");
    *out = best;
    return ST_OK;
}

/* "dp:" or "pp:" and a decimal degree at *p, advancing past it. */
static bool parse_degree(const char **p, const char *prefix, unsigned long *out)
{
    const char *q = *p;
    if (strncmp(q, prefix, 3) != 0 || q[3] < '0' || q[3] > '9')
        return false;
    char *end = NULL;
    errno = 0;
    unsigned long v = strtoul(q + 3, &end, 10);
    if (errno != 0)
        return false;
    *out = v;
    *p = end;
    return true;
}

st_status st_parallel_parse(const char *text, st_parallel_spec *out)
{
    memset(out, 0, sizeof *out);
    if (!text || strcmp(text, "auto") == 0) {
        out->kind = ST_PARALLEL_AUTO;
        return ST_OK;
    }
    if (strcmp(text, "pipeline") == 0) {
        out->kind = ST_PARALLEL_PIPELINE;
        return ST_OK;
    }
    if (strcmp(text, "data") == 0) {
        out->kind = ST_PARALLEL_DATA;
        return ST_OK;
    }
    /* dp:D,pp:S, or one of them alone (the other degree is 1) */
    unsigned long d = 1, p = 1;
    const char *t = text;
    bool have_d = parse_degree(&t, "dp:", &d), have_p = false, ok = have_d;
    if (have_d && *t == ',') {
        t++;
        ok = have_p = parse_degree(&t, "pp:", &p);
    } else if (!have_d) {
        ok = have_p = parse_degree(&t, "pp:", &p);
    }
    if (ok && *t == '\0' && d >= 1 && d <= ST_PLAN_MAX_REPLICAS && p >= 1 &&
        p <= ST_PLAN_MAX_STAGES) {
        out->kind = ST_PARALLEL_FIXED;
        out->dp = d;
        out->pp = p;
        return ST_OK;
    }
    return st_error(ST_ERR_INVALID,
                    "bad --parallel '%s': auto, pipeline, data, dp:D,pp:S (D replicas of an "
                    "S-stage pipeline, D from 1 to %d, S from 1 to %d), dp:D (S = 1) or pp:S "
                    "(D = 1)",
                    text, ST_PLAN_MAX_REPLICAS, ST_PLAN_MAX_STAGES);
}

/* The gradient sum's time past the backward (see st_plan_make): stage k's
 * sum starts when its last backward ends, the earlier stages' backwards of
 * the last micro-batch still to come. */
static double reduce_tail_ms(const st_plan_input *in, const st_plan *p, size_t R,
                             const size_t *devs)
{
    if (R < 2 || !in->shape.training)
        return 0;
    size_t S = p->n_stages;
    double tail = 0, slack = 0;
    for (size_t k = 0; k < S; k++) {
        /* the gradients of the parameters that train */
        double bytes = p->stage[k].train_numel * 4.0, t = 0;
        for (size_t r = 0; r < R; r++) {
            const st_device_profile *d = &in->devices[devs[r * S + k]];
            t += bytes / (d->d2h_gbps * 1e6) + bytes / (d->h2d_gbps * 1e6);
        }
        /* the adds, at about a copy's rate */
        t += (double)(R - 1) * bytes / (in->devices[devs[k]].d2h_gbps * 1e6);
        if (t - slack > tail)
            tail = t - slack;
        slack += p->stage[k].bwd_ms;
    }
    return tail;
}

/* A device's model from its profile's name: under mpirun the name starts
 * with "rank R: I " (strata/run.h), which is left out. */
static const char *device_model(const char *name)
{
    int used = 0;
    unsigned rank = 0, index = 0;
    if (sscanf(name, "rank %u: %u %n", &rank, &index, &used) == 2 && used > 0)
        return name + used;
    return name;
}

/* R replicas of a pipeline of at most K stages (exactly K when `exact`):
 * replica r on devices r*K .. r*K+K-1. */
static st_status plan_replicas(const st_plan_input *in, size_t R, size_t K, bool exact,
                               st_plan *out, st_plan_alt *alt)
{
    memset(alt, 0, sizeof *alt);
    alt->replicas = R;
    alt->stages = K;
    /* Decoding shares out the sequences; a forward or training pass the batch. */
    bool decoding = !in->shape.training && in->shape.kv_seqs > 0;
    bool whole = in->shape.batch % (int)R == 0 &&
                 (in->shape.micro_batches == 0 ||
                  in->shape.batch % ((int)R * in->shape.micro_batches) == 0);
    if (decoding && in->shape.kv_seqs < (int)R)
        return st_error(ST_ERR_INVALID, "%d sequence%s cannot go to %zu replicas",
                        in->shape.kv_seqs, in->shape.kv_seqs == 1 ? "" : "s", R);
    if (!decoding && !whole)
        return st_error(ST_ERR_INVALID, "the batch of %d does not split into %zu replicas%s",
                        in->shape.batch, R, in->shape.micro_batches > 0 ? " of whole micro-batches" : "");
    st_device_profile sub[ST_PLAN_MAX_STAGES], also[ST_PLAN_MAX_STAGES];
    for (size_t i = 0; i < K; i++)
        sub[i] = in->devices[i];
    size_t n_also = 0;
    for (size_t i = K; i < R * K && n_also < ST_PLAN_MAX_STAGES; i++)
        also[n_also++] = in->devices[i];
    st_plan_input one = *in;
    one.devices = sub;
    one.n_devices = K;
    one.keep_all_devices = exact || in->keep_all_devices;
    one.also = n_also ? also : NULL;
    one.n_also = n_also;
    if (whole)
        one.shape.batch = in->shape.batch / (int)R;
    if (decoding)
        one.shape.kv_seqs = (in->shape.kv_seqs + (int)R - 1) / (int)R;
    if (in->shape.training && in->shape.shard_moments && R > 1)
        one.shape.moment_parts = (int)R; /* the planner's memory: each replica's part */
    st_plan p;
    st_status s = plan_pipeline(&one, &p);
    if (s != ST_OK)
        return s;
    size_t S = p.n_stages, devs[ST_PLAN_MAX_STAGES * ST_PLAN_MAX_REPLICAS];
    double mem = 0, step = p.step_ms;
    for (size_t r = 0; r < R; r++)
        for (size_t k = 0; k < S; k++) {
            devs[r * S + k] = r * K + p.stage[k].device;
            /* Replicas must take bitwise the same steps: the same device model. */
            if (strcmp(device_model(in->devices[devs[r * S + k]].name),
                       device_model(in->devices[devs[k]].name)) != 0)
                return st_error(ST_ERR_INVALID,
                                "replica %zu's stage %zu would be on a %s, replica 0's on a %s: "
                                "replicas need devices of one model (they must round alike)",
                                r, k, device_model(in->devices[devs[r * S + k]].name),
                                device_model(in->devices[devs[k]].name));
        }
    /* The other replicas: the same split on their own devices. */
    one.shape.micro_batches = p.shape.micro_batches;
    for (size_t r = 0; r < R && s == ST_OK; r++) {
        st_device_profile rsub[ST_PLAN_MAX_STAGES];
        size_t idx[ST_PLAN_MAX_STAGES], cuts[ST_PLAN_MAX_STAGES];
        for (size_t k = 0; k < S; k++) {
            rsub[k] = in->devices[devs[r * S + k]];
            idx[k] = k;
            if (k > 0)
                cuts[k - 1] = p.stage[k].first;
        }
        st_plan_input ri = one;
        ri.devices = rsub;
        ri.n_devices = S;
        st_plan q;
        if ((s = st_plan_evaluate(&ri, idx, S, cuts, &q)) != ST_OK)
            break;
        step = fmax(step, q.step_ms);
        for (size_t k = 0; k < S; k++) {
            mem = fmax(mem, q.stage[k].total_bytes);
            if (q.stage[k].total_bytes > (double)rsub[k].mem_bytes)
                s = st_error(ST_ERR_INVALID, "replica %zu's stage %zu does not fit its device", r,
                             k);
        }
    }
    if (s != ST_OK)
        return s;
    p.reduce_ms = reduce_tail_ms(in, &p, R, devs);
    p.step_ms = step + p.reduce_ms;
    /* The reference: the fastest device alone on the whole batch. */
    st_plan_input full = *in; /* decoding: every sequence of every replica in one pass */
    full.shape.micro_batches = p.shape.micro_batches * (decoding ? 1 : (int)R);
    full.also = NULL;
    full.n_also = 0;
    size_t best = 0;
    for (size_t i = 1; i < in->n_devices; i++)
        if (in->devices[i].gflops > in->devices[best].gflops)
            best = i;
    st_plan ref;
    if ((s = st_plan_evaluate(&full, &best, 1, NULL, &ref)) != ST_OK)
        return s;
    p.one_device_ms = ref.step_ms;
    p.speedup = p.one_device_ms / p.step_ms;
    p.devices_offered = in->n_devices;
    p.shape = one.shape;
    p.shape.batch = in->shape.batch;
    p.shape.kv_seqs = in->shape.kv_seqs;
    if (R > 1) {
        st_plan_replicate(&p, R, devs);
        p.note[0] = '\0';
    }
    alt->stages = S;
    alt->micro_batches = p.shape.micro_batches;
    alt->step_ms = p.step_ms;
    alt->reduce_ms = p.reduce_ms;
    alt->mem_bytes = mem;
    alt->speedup = p.speedup;
    alt->fits = true;
    *out = p;
    return ST_OK;
}

st_status st_plan_make(const st_plan_input *in, st_plan *out)
{
    size_t n = in->n_devices;
    st_parallel_kind kind = in->parallel.kind;
    /* A split given by hand (uniform, ratio, layers) asks for one pipeline. */
    if (kind == ST_PARALLEL_AUTO && in->split.kind != ST_SPLIT_AUTO)
        kind = ST_PARALLEL_PIPELINE;
    if (kind == ST_PARALLEL_PIPELINE || (kind == ST_PARALLEL_AUTO && n == 1)) {
        st_plan_alt alt;
        st_status s = plan_replicas(in, 1, n, false, out, &alt);
        if (s == ST_OK) {
            out->alts[0] = alt;
            out->n_alts = 1;
            out->chosen = 0;
        }
        return s;
    }
    if (kind == ST_PARALLEL_FIXED && in->parallel.dp * in->parallel.pp > n)
        return st_error(ST_ERR_INVALID,
                        "--parallel dp:%zu,pp:%zu needs %zu devices; %zu are chosen", in->parallel.dp,
                        in->parallel.pp, in->parallel.dp * in->parallel.pp, n);
    st_plan best, p;
    bool have = false, decoding = !in->shape.training && in->shape.kv_seqs > 0;
    st_plan_alt alts[ST_PLAN_MAX_ALTS];
    size_t n_alts = 0, chosen = 0;
    char why[1024] = "";
    for (size_t R = 1; R <= n && R <= ST_PLAN_MAX_REPLICAS && n_alts < ST_PLAN_MAX_ALTS; R++) {
        size_t K = n / R;
        bool exact = false;
        if (kind == ST_PARALLEL_DATA && R != n)
            continue;
        if (kind == ST_PARALLEL_FIXED) {
            if (R != in->parallel.dp)
                continue;
            K = in->parallel.pp;
            exact = true;
        }
        st_plan_alt alt;
        st_status s = plan_replicas(in, R, K, exact, &p, &alt);
        if (s != ST_OK && s != ST_ERR_INVALID)
            return s;
        if (s != ST_OK) {
            snprintf(alt.why, sizeof alt.why, "%s", st_last_error());
            if (!why[0])
                snprintf(why, sizeof why, "%zu replica%s: %s", R, R == 1 ? "" : "s",
                         st_last_error());
        }
        alts[n_alts++] = alt;
        /* Training: more replicas must win by a margin, each adds a gradient
         * sum. Decoding: they win ties, and by as much again: a pipeline's
         * passes hand off between devices and each group waits on its
         * sampling, which a pass's time here leaves out (82M Llama, 16
         * sequences on two basic devices: two replicas 1.72x one device,
         * two stages 1.14x to 1.35x). */
        double margin = decoding ? 1.03 : 0.97;
        if (s == ST_OK && (!have || p.step_ms < best.step_ms * margin)) {
            best = p;
            have = true;
            chosen = n_alts - 1;
        }
    }
    if (!have)
        return st_error(ST_ERR_INVALID, "%s", why[0] ? why : "plan: no layout fits");
    /* One reference for every row, the chosen plan's one device: each
     * layout had its own (its micro-batches on one device), and the table's
     * speedups contradicted its times (4.1 ms "0.02x" beside 4.2 ms "0.98x"). */
    for (size_t i = 0; i < n_alts; i++)
        if (alts[i].fits && alts[i].step_ms > 0)
            alts[i].speedup = best.one_device_ms / alts[i].step_ms;
    memcpy(best.alts, alts, n_alts * sizeof *alts);
    best.n_alts = n_alts;
    best.chosen = chosen;
    *out = best;
    return ST_OK;
}
