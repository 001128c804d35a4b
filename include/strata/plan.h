/*
 * plan.h - the layer-sharding planner: which contiguous layers of a model go
 * to which device, so that the slowest pipeline stage is as fast as it can be
 * while every device's memory holds its stage.
 *
 * Pure C: it reads the model description (strata/model.h) and a profile per
 * device (measured elsewhere); no OpenCL here.
 *
 * Cost model, per micro-batch of B sequences of T tokens, for a stage on a
 * device of measured GEMM rate R (GFLOP/s) and host<->device bandwidth:
 *   forward  = sum of its layers' forward FLOPs / R + receiving its input
 *              (host to device) + sending its output (device to host)
 *   backward = the same with backward FLOPs and the gradients
 * and a training step of m micro-batches over S stages takes about
 *   (m + S - 1) * max over stages of (forward + backward) + optimizer
 * for both GPipe and 1F1B (they differ in memory, not in this bubble).
 * Memory of a stage: what the stage allocates (st_stage_sizes_of, from the
 * model description): parameters (x4 when training: gradients and two AdamW
 * moments; copies of tied parameters another stage owns), activations kept
 * per micro-batch times the micro-batches in flight (GPipe: m; 1F1B: at
 * most S - stage index), the backward's scratch and the KV cache.
 */
#ifndef STRATA_PLAN_H
#define STRATA_PLAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "strata/model.h"
#include "strata/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define ST_PLAN_MAX_STAGES 64
/* Copies of the pipeline that split the batch (data parallelism). */
#define ST_PLAN_MAX_REPLICAS 16
/* Micro-batch sizes a profile times a whole block at. */
#define ST_PROFILE_BLOCK_SIZES 8
/* Transformer blocks a split may name (the model limit, strata/model.h). */
#define ST_PLAN_MAX_BLOCKS ST_MODEL_MAX_LAYERS

typedef struct st_device_profile {
    char name[256];
    double gflops;              /* GEMM rate on the model's shapes (median of runs) */
    double gflops_spread;       /* (slowest - fastest) / median of those runs */
    double h2d_gbps, d2h_gbps;  /* host to device, device to host, GB/s */
    uint64_t mem_bytes;         /* what the planner may use */
    /* Devices with the same non-empty hardware share it (the host's cores,
     * one card through two platforms); shared_gflops, when above 0, is the
     * rate of each while all of its group's devices run at once, and the
     * planner uses it for a plan that gives stages to two or more of them. */
    char hardware[64];
    double shared_gflops;
    /* The attention kernels' rate on the model's shape (FLOPs as the model
     * description counts them), 0 when not measured: the GEMM rate is used. */
    double attn_gflops;
    double launch_us; /* one small kernel launch, enqueue to done; 0: an estimate is used */
    /* One transformer block of the model timed whole (forward, backward) at
     * micro-batches of block_tokens[i] tokens: the planner scales its
     * estimate of every block by measured / estimated at the nearest size. */
    int n_block_sizes;
    int block_tokens[ST_PROFILE_BLOCK_SIZES];
    double block_fwd_ms[ST_PROFILE_BLOCK_SIZES], block_bwd_ms[ST_PROFILE_BLOCK_SIZES];
    /* How much longer a block takes while every device of its hardware runs
     * one (>= 1; 0: not measured, the GEMM rates' ratio is used). */
    double block_shared;
} st_device_profile;

typedef enum st_schedule { ST_SCHED_1F1B, ST_SCHED_GPIPE } st_schedule;
const char *st_schedule_name(st_schedule s);
/* Micro-batches whose activations stage s of S keeps at once (its slots). */
int st_schedule_in_flight(st_schedule sched, bool training, int micro_batches, size_t S,
                          size_t s);
st_status st_schedule_parse(const char *text, st_schedule *out);

typedef enum st_split_kind {
    ST_SPLIT_AUTO,    /* balance the predicted times; may use fewer devices */
    ST_SPLIT_UNIFORM, /* the same number of blocks per device */
    ST_SPLIT_RATIO,   /* blocks in proportion to given weights */
    ST_SPLIT_LAYERS   /* explicit block ranges */
} st_split_kind;

typedef struct st_split_spec {
    st_split_kind kind;
    size_t n;                               /* RATIO, LAYERS: entries */
    double ratio[ST_PLAN_MAX_STAGES];
    int first[ST_PLAN_MAX_STAGES], last[ST_PLAN_MAX_STAGES]; /* blocks, inclusive */
} st_split_spec;

/* "auto", "uniform", "ratio:3,1", "layers:0-5,6-11" (transformer blocks;
 * the embedding goes with the first stage, the head with the last). */
st_status st_split_parse(const char *text, st_split_spec *out);

/* What a run asks of the pipeline: the one description of its shape that
 * the planner, the pipeline, the training loop and the commands share. */
typedef struct st_run_shape {
    int batch;            /* sequences per step (or per forward pass) */
    int seq;              /* tokens per sequence */
    int micro_batches;    /* the batch in this many micro-batches (dividing it);
                           * 0 in a plan's input: the planner chooses */
    st_schedule schedule; /* GPipe or 1F1B */
    bool training;        /* gradients, optimizer, backward passes */
    int kv_seq, kv_seqs;  /* decoding: KV cache positions and sequences (0: none) */
    int prefill;          /* decoding: tokens one pass may take (a prompt's chunk); 0: 1 */
    bool recompute;       /* training: blocks run their forward again before their
                           * backward, keeping only their inputs (st_stage_options) */
    bool shard_moments;   /* training with replicas: each holds and updates 1/D of the
                           * AdamW moments, then the weights are gathered (ZeRO-1) */
    int moment_parts, moment_part; /* set by the pipeline for each replica's stages */
} st_run_shape;

/* Sequences per micro-batch. */
static inline int st_run_micro_batch(const st_run_shape *r)
{
    return r->micro_batches > 0 ? r->batch / r->micro_batches : r->batch;
}

/* A decoding session (sequences with KV caches, no training or scoring
 * batch): the planner predicts a round, one token for every sequence. */
static inline bool st_run_decoding(const st_run_shape *r)
{
    return !r->training && r->kv_seqs > 0 && r->batch * r->seq <= 1;
}

/* How the devices are used: --parallel auto (the planner chooses), pipeline
 * (one pipeline over the devices), data (a replica of the whole model per
 * device), dp:D,pp:S (D replicas of an S-stage pipeline). */
typedef enum st_parallel_kind {
    ST_PARALLEL_AUTO,
    ST_PARALLEL_PIPELINE,
    ST_PARALLEL_DATA,
    ST_PARALLEL_FIXED
} st_parallel_kind;
typedef struct st_parallel_spec {
    st_parallel_kind kind;
    size_t dp, pp; /* FIXED */
} st_parallel_spec;
st_status st_parallel_parse(const char *text, st_parallel_spec *out);

typedef struct st_plan_input {
    const st_model_desc *desc;
    st_run_shape shape;
    size_t n_devices;
    const st_device_profile *devices;
    st_split_spec split;
    bool keep_all_devices; /* devices chosen explicitly: use every one */
    st_parallel_spec parallel; /* zero: auto */
    /* Devices that run at the same time as these (other replicas): a device
     * sharing its hardware with one of them works at its shared rate. */
    const st_device_profile *also;
    size_t n_also;
} st_plan_input;

typedef struct st_plan_stage {
    size_t device;            /* index into the input's devices (replica 0's) */
    size_t replica_device[ST_PLAN_MAX_REPLICAS]; /* replica r > 0: its device for this stage */
    size_t first, end;        /* layers [first, end) of the description */
    int in_flight;            /* micro-batches whose activations it keeps */
    double param_bytes;       /* parameters (+ gradients and moments when training) */
    double train_numel;       /* parameters that train (gradients, AdamW) */
    double moment_numel;      /* of them, those whose moments the stage holds */
    double act_bytes;         /* activations, all micro-batches in flight, and scratch */
    double total_bytes;
    double fwd_ms, bwd_ms;    /* per micro-batch, compute and transfers */
    double xfer_ms;           /* the transfers' part of fwd_ms + bwd_ms */
} st_plan_stage;

/* One layout the planner weighed: replicas x stages, its predicted step
 * (the gradient sum's part not hidden behind the backward included), the
 * most memory it needs on a device, and its speedup over one device. */
typedef struct st_plan_alt {
    size_t replicas, stages;
    int micro_batches;       /* per replica */
    double step_ms, reduce_ms, mem_bytes, speedup;
    bool fits;
    char why[160];           /* when it does not fit or cannot be made */
} st_plan_alt;
#define ST_PLAN_MAX_ALTS 24

/* A plan is what creates the pipeline (st_pipe_create): the run's shape
 * (micro-batches as given or chosen), and per stage its device (an index
 * into the devices planned over), its layer range and the micro-batches
 * whose activations it keeps (its slots). */
typedef struct st_plan {
    st_run_shape shape;       /* batch: the whole step's, split over the replicas */
    size_t n_stages;
    size_t replicas;          /* copies of the pipeline, each on batch / replicas
                               * sequences (0 or 1: one); micro_batches is per replica */
    st_plan_stage stage[ST_PLAN_MAX_STAGES];
    double step_ms;           /* predicted training step (or forward pass) */
    double bubble;            /* idle fraction of the pipeline: (S-1)/(m+S-1) */
    double one_device_ms;     /* the same on the fastest device alone (memory ignored) */
    double speedup;           /* one_device_ms / step_ms */
    size_t devices_offered;   /* how many devices the input had */
    char note[256];           /* e.g. why fewer devices are used */
    double reduce_ms;         /* replicas: the gradient sum's time past the backward */
    size_t n_alts;            /* the layouts weighed (st_plan_make), alts[chosen] taken */
    size_t chosen;
    st_plan_alt alts[ST_PLAN_MAX_ALTS];
} st_plan;

/* Plans; an impossible request (does not fit, bad ranges) is ST_ERR_INVALID
 * with a message that says how much memory is missing where.
 *
 * With micro_batches 0 the planner also chooses the micro-batch count: each
 * divisor m of the batch that leaves at least 256 tokens per micro-batch
 * (smaller products run far below a device's rate) is planned, and the
 * fastest predicted step wins; more micro-batches must win by 3%. Smaller
 * micro-batches are tried only when none of those fits. With a profile's
 * measured blocks (st_device_profile.block_*) one device may get several
 * micro-batches too: a CPU runs a block faster per token in smaller ones. */
st_status st_plan_make(const st_plan_input *in, st_plan *out);

/* Replicas (in->parallel): for each layout of D replicas x S stages that the
 * devices allow (replica r on devices r*K .. r*K+S-1, K = devices / D), the
 * pipeline of one replica is planned on its share of the batch as above;
 * the gradient sum costs, per stage, every replica's gradients read and
 * written back at the measured bandwidths plus the adds, of which only what
 * outlasts the backward of the earlier stages counts. The fastest layout
 * that fits wins (more replicas must win by 3%); plan->alts lists them all.
 * Replicas run on devices of the same hardware at its shared rate. */

/* The predicted times and memory of a given partition (cuts: the first
 * layer of stages 1..S-1), for tests and for checking explicit splits. */
st_status st_plan_evaluate(const st_plan_input *in, const size_t *devices, size_t S,
                           const size_t *cuts, st_plan *out);

/* A plan without predictions: stage s holds layers [first[s], end[s]) on
 * device s, with the schedule's slots. For a layout chosen by hand. */
st_status st_plan_layout(const st_model_desc *desc, const st_run_shape *shape, size_t S,
                         const size_t *first, const size_t *end, st_plan *out);
/* Makes the plan R replicas of its pipeline: replica r's stage s on
 * devices[r * S + s] (replica 0's as the plan had them when devices is
 * NULL: then replica r takes devices r * S + s). The batch must split into R
 * equal shares of whole micro-batches; each stage's slots are the share's. */
st_status st_plan_replicate(st_plan *plan, size_t R, const size_t *devices);

/* The device of stage s in replica r. */
static inline size_t st_plan_device(const st_plan *p, size_t r, size_t s)
{
    return r == 0 ? p->stage[s].device : p->stage[s].replica_device[r];
}
static inline size_t st_plan_replicas(const st_plan *p)
{
    return p->replicas > 1 ? p->replicas : 1;
}
/* Every device the plan uses once (all replicas' stages, in order); out has
 * room for ST_PLAN_MAX_STAGES entries. */
static inline size_t st_plan_devices(const st_plan *p, size_t *out)
{
    size_t n = 0;
    for (size_t r = 0; r < st_plan_replicas(p); r++)
        for (size_t s = 0; s < p->n_stages; s++) {
            size_t d = st_plan_device(p, r, s), j = 0;
            while (j < n && out[j] != d)
                j++;
            if (j == n && n < ST_PLAN_MAX_STAGES)
                out[n++] = d;
        }
    return n;
}

#ifdef __cplusplus
}
#endif

#endif
