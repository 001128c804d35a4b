/*
 * bench.h - what `strata bench` measures for one device count (cmd_bench.c),
 * shared by --pipeline and --scaling (bench_scaling.c).
 */
#ifndef STRATA_CLI_BENCH_H
#define STRATA_CLI_BENCH_H

#include "cli/cli.h"

typedef struct bench_row {
    size_t devices, stages, replicas;
    int micro_batches; /* per replica */
    bool fits;         /* false: no layout fits these devices (why says so) */
    char why[256];
    double train_ms, predicted_ms, fwd_ms, predicted_fwd_ms, wait_ms;
    double train_spread, fwd_spread; /* (slowest - fastest) / median of the timed steps */
} bench_row;

/* Plans with po on the first k of all's devices, then times `steps` training
 * steps and forward passes (each after one warm-up) on tokens/targets (the
 * plan's batch); the plans go to plan_out. */
st_status bench_k(cli_devices *all, size_t k, const st_model_desc *desc, const cli_plan_opts *po,
                  long steps, const int32_t *tokens, const int32_t *targets, FILE *plan_out,
                  bench_row *row);

#if STRATA_HAVE_MPI
/* Under mpirun, within the ranks of st_mpi_scope: plans over every rank's
 * devices (mine: this rank's; total_devices over all) and times as bench_k
 * does; rank 0's times. */
st_status bench_ranks(cli_devices *mine, size_t total_devices, const st_model_desc *desc,
                      const cli_plan_opts *po, long steps, const int32_t *tokens,
                      const int32_t *targets, FILE *plan_out, bench_row *row);
#endif

/* `strata bench --scaling` (its own options after the shared ones). */
typedef struct bench_scaling_opts {
    const st_model_desc *desc;
    cli_plan_opts po;      /* the shape; micro_batches 0: the planner chooses */
    long steps;
    const char *mem_limit; /* the splitting workload's, NULL: its own */
    const char *out_dir;   /* table, JSON and SVG chart; NULL: stdout only */
    const char *model_line;
    int ranks;       /* under mpirun: the rows are over 1, 2, 4... of these ranks */
    bool quiet_rank; /* a rank other than 0: writes no files */
} bench_scaling_opts;
st_status bench_scaling(cli_devices *devs, const bench_scaling_opts *o, const int32_t *tokens,
                        const int32_t *targets);

/* `strata bench --inference` (bench_inference.c). */
typedef struct bench_inference_opts {
    const char *model;              /* a model folder, or NULL: config with drawn weights */
    const st_model_config *config;
    const char *model_line;
    const char *parallel;           /* the layout over k devices: pipeline by default */
    long prompt, gen, prefill, runs;
    int conc[4], n_conc;            /* sequences at once, rising */
    const char *format;             /* table, csv, json */
    int dtype;                      /* the weights' storage (st_dtype), -1: the folder's */
} bench_inference_opts;
st_status bench_inference(cli_devices *devs, const bench_inference_opts *o);

#endif
