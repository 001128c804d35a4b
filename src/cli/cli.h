/*
 * cli.h - what the `strata` commands share: exit codes, error reporting,
 * opening the chosen devices.
 *
 * Exit codes: 0 success; 1 the work failed (a check, a device error); 2 bad
 * input (flags, device choice, files): the message says what to change.
 */
#ifndef STRATA_CLI_H
#define STRATA_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "strata/strata.h"
#include "strata_config.h"
#include "strata/plan.h"
#include "strata/data.h"
#include "strata/tokenizer.h"
#include "strata/run.h"
#include "strata/train.h"

enum { CLI_OK = 0, CLI_FAILED = 1, CLI_USAGE = 2 };

/* Prints "strata: error: <last error>" (with the rank under MPI) and returns
 * the exit code for s. */
int cli_fail(st_status s);
void cli_set_rank(int rank);
/* This process's MPI rank (0 without MPI). */
int cli_rank(void);
/* Under MPI: the command failed on every rank together (each knows), so the
 * job ends with MPI_Finalize rather than MPI_Abort. */
void cli_set_failed_together(void);
bool cli_failed_together(void);

/* Option values: the whole string a number within [lo, hi], else false. */
bool cli_parse_long(const char *s, long lo, long hi, long *out);
bool cli_parse_float(const char *s, double lo, double hi, float *out);
bool cli_parse_double(const char *s, double lo, double hi, double *out);
/* "an integer from 1 to 1048576": what the last cli_parse_* call accepts. */
const char *cli_expected(void);
/* The name closest to word (a few edits at most), or NULL: "did you mean". */
const char *cli_nearest(const char *word, const char *const *names, size_t n);
struct option;
/* "unknown option --stpes (did you mean --steps?)"; returns CLI_USAGE. */
int cli_unknown_option(const char *cmd, const char *arg, const struct option *opts);
/* Prints "strata <cmd>: <message>" and a pointer to --help; returns CLI_USAGE. */
int cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The devices a command works on: every device chosen by --devices /
 * STRATA_DEVICES, opened. */
typedef struct cli_devices {
    st_device_list *list;
    size_t n;
    size_t index[ST_MAX_DEVICES];
    st_device *dev[ST_MAX_DEVICES];
} cli_devices;

/* Lists and selects; opens them too when `open` is set. */
st_status cli_devices_get(const char *flag, bool open, cli_devices *out);
void cli_devices_put(cli_devices *d);

/* A text table: cells are copied; columns are sized to their widest cell. */
typedef struct cli_table cli_table;
cli_table *cli_table_new(size_t columns);
void cli_table_add(cli_table *t, const char *const *cells);
void cli_table_print(const cli_table *t, FILE *f);
/* The same as comma-separated values (RFC 4180 quoting). */
void cli_table_print_csv(const cli_table *t, FILE *f);
void cli_table_free(cli_table *t);

/* A model from command-line sizes (model_flags.c): --arch gpt2 (default) or
 * llama; 0 sizes take the defaults (2 blocks, 64 channels, 4 heads; MLP 4C
 * for GPT-2, about 8C/3 for Llama); vocab and positions must be set. */
typedef struct cli_model_flags {
    const char *arch;
    long layers, embd, heads, kv_heads, inner, positions, vocab;
    double rope_theta; /* 0: 10000 */
    bool tied;         /* Llama: the head is the embedding */
} cli_model_flags;
st_status cli_model_config(const cli_model_flags *f, st_model_config *cfg);
/* "GPT-2, 2 blocks, 64 channels, 4 heads, ..." for the run's first lines. */
void cli_model_describe(const st_model_config *cfg, char *out, size_t size);

/* The tokenizer of a command (tokenizer_files.c): flag's (--tokenizer) when
 * given, else the model folder dir's (tokenizer.json, or vocab.json with
 * merges.txt; dir may be NULL), else *out NULL: bytes. */
st_status cli_open_tokenizer(const char *dir, const char *flag, st_tokenizer **out);
/* JSON Lines data: a note on stderr when examples are longer than a row of
 * T (+ 1) tokens holds, for command cmd. */
void cli_note_cut_examples(const char *cmd, const st_dataset *ds, long T);
/* JSON Lines: packs ds's rows or not, and says how full its rows are either way. */
void cli_note_packing(FILE *out, st_dataset *ds, bool pack, long T);
/* --dtype's value: ST_F32, ST_BF16 or ST_F16 (strata/dtype.h), or -1. */
int cli_weights_dtype(const char *name);
/* Copies the files t was loaded from into dir (tokenizer.json, vocab.json
 * and merges.txt, tokenizer_config.json), each whole or not at all, so that
 * the folder's model comes with its tokenizer. */
st_status cli_copy_tokenizer(const st_tokenizer *t, const char *dir);

/* Splitting a model over the chosen devices (planning.c). */
typedef struct cli_plan_opts {
    const char *split;     /* auto (NULL), uniform, ratio:..., layers:... */
    const char *parallel;  /* auto (NULL), pipeline, data, dp:D,pp:S */
    const char *mem_limit; /* "0:2G,1:6G" or NULL */
    st_run_shape shape;    /* micro_batches 0: the planner chooses */
    bool devices_explicit; /* --devices or STRATA_DEVICES given: use them all */
    bool quiet;
    bool recompute_auto;   /* training: recompute activations when nothing fits else */
    bool rates_only;       /* plan: no attention or block timing (st_run_plan_options) */
} cli_plan_opts;

/* --mem-limit's INDEX:SIZE list onto the chosen devices (devs NULL: its
 * syntax alone). */
st_status cli_apply_mem_limit(const char *text, cli_devices *devs);
/* --split, --parallel and --mem-limit (any NULL) well formed: checked with
 * the other flags, before a command does any work. */
st_status cli_check_plan_flags(const char *split, const char *parallel, const char *mem_limit);
/* --mem-limit applied, then the library's planning (st_run_plan): prof gets
 * one entry per device. */
st_status cli_make_plan(cli_devices *devs, const st_model_desc *desc, const cli_plan_opts *o,
                        st_plan *plan, st_device_profile *prof);
void cli_plan_print(const st_plan *plan, const st_model_desc *desc, const cli_devices *devs,
                    const st_device_profile *prof, const cli_plan_opts *o, FILE *f);

/* The profiler's tables for these devices (each once): per op, launches and
 * ms per step, share, GB/s and GFLOPS, over `steps` steps of step_ms each;
 * then the launches per transformer block per micro-batch. jf (may be NULL)
 * gets the same as JSON lines (report.c). */
st_status cli_profile_report(st_device *const *devs, size_t n, long steps, double step_ms,
                             int n_blocks, int micro_batches, FILE *f, FILE *jf);

int cmd_devices(int argc, char **argv);
int cmd_check(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_plan(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_tune(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_merge(int argc, char **argv);

#endif
