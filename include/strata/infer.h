/*
 * infer.h - a model served: a session loads a model folder, plans it over
 * the devices, makes the pipeline once and runs requests on it until it is
 * closed. `strata generate`, `eval` and `bench --inference` run on it.
 *
 * Each request is a sequence with a slot of its own in the KV caches (a
 * slot table: max_seqs slots of ctx positions, made once; a slot is the
 * contiguous cache the decoding kernels read, and serving's memory is known
 * when the session opens). Every step is one pass through the pipeline for
 * all active sequences (continuous batching): a sequence whose prompt is
 * being read gives a chunk of it (prompt tokens per step are bounded by the
 * options' prefill, shared by the readers in slot order, so a long prompt
 * does not stall the others), every other one its last token; the rows of
 * a step go through each linear layer as one product, in as many groups as
 * there are stages, so that split stages work at once. Sequences are added
 * and ended between steps.
 *
 * Usage:
 *   st_infer_options o = {.max_seqs = 8};
 *   st_infer_open(dir, devs, n_devs, &o, &in);
 *   st_infer_request r = {.prompt = ids, .n_prompt = n, .max_tokens = 64,
 *                         .sampling = {.temperature = 0}, .eos = -1};
 *   st_infer_add(in, &r, &id);
 *   while (st_infer_active(in) > 0) st_infer_step(in);
 *   st_infer_get(in, id, &info);   (info.tokens: prompt then generated)
 *   st_infer_release(in, id);  st_infer_close(in);
 *
 * Not here: tokenizing, text, stop strings (the caller ends a sequence with
 * st_infer_end when its text holds one), printing.
 */
#ifndef STRATA_INFER_H
#define STRATA_INFER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "strata/adapter.h"
#include "strata/device.h"
#include "strata/model.h"
#include "strata/pipe.h"
#include "strata/plan.h"
#include "strata/sample.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct st_infer st_infer;

typedef struct st_infer_options {
    int max_seqs;         /* sequences at once (KV cache slots); 0: no decoding */
    int ctx;              /* positions of each slot; 0: the model's */
    int prefill;          /* prompt tokens per step (one pass); 0: 128 */
    int score_batch;      /* scoring (st_infer_score): sequences per pass, 0: none */
    int score_seq;        /* and their tokens */
    int micro_batches;    /* scoring: 0, the planner chooses */
    const char *split;    /* as st_run_plan_options */
    const char *parallel;
    bool keep_all_devices;
    bool quiet;
    /* Without a folder (dir NULL): this model, its weights drawn from
     * init_seed (benchmarks). */
    const st_model_config *config;
    uint64_t init_seed;
    /* A LoRA adapter (strata/adapter.h, opened by the caller) merged into
     * the weights as they load; NULL: none. */
    st_adapter *adapter;
    /* Under mpirun (built with MPI): one pipeline over every rank's devs
     * (dev_index: how `strata devices` numbers them), opened on every rank
     * together. Rank 0 leads (adds, steps, reads); the others call
     * st_infer_follow until rank 0 closes its session. */
    bool mpi;
    const size_t *dev_index;
    /* How the weight matrices are stored on the devices (st_model_config's
     * weights): given, or (weights_given false) as the folder stores them
     * (F32 with an adapter, which is merged in float). */
    bool weights_given;
    st_dtype weights;
} st_infer_options;

/* Opens dir's model (a Strata run folder or a Hugging Face folder) over
 * devs, split by the planner. */
st_status st_infer_open(const char *dir, st_device *const *devs, size_t n_devs,
                        const st_infer_options *o, st_infer **out);
void st_infer_close(st_infer *in);

const st_model_config *st_infer_config(const st_infer *in);
const st_model_desc *st_infer_desc(const st_infer *in);
const st_plan *st_infer_plan(const st_infer *in);
/* The device profiles the plan was made with, one per device of devs. */
const st_device_profile *st_infer_profiles(const st_infer *in);
st_pipe *st_infer_pipe(const st_infer *in);
int st_infer_ctx(const st_infer *in);

typedef struct st_infer_request {
    const int32_t *prompt; /* token ids, 1 to ctx of them (copied) */
    size_t n_prompt;
    long max_tokens;       /* tokens to generate, the EOS included */
    st_sampling sampling;
    uint64_t seed;         /* the sequence's random state starts here */
    int eos;               /* ends the text when drawn (not kept); -1: none */
    int vocab_limit;       /* ids from here on are never drawn (a padded
                            * vocabulary); 0: the model's */
    bool slide;            /* at the end of the context: keep the last half of the text,
                            * read it again from position 0 and go on (else: end, length) */
} st_infer_request;

typedef enum st_infer_finish {
    ST_FINISH_NONE = 0, /* still running */
    ST_FINISH_LENGTH,   /* max_tokens drawn, or the context is full */
    ST_FINISH_EOS,      /* the EOS token drawn */
    ST_FINISH_STOP,     /* ended by the caller (a stop string) */
    ST_FINISH_CANCEL,   /* cancelled */
    ST_FINISH_ERROR     /* a step failed while it was in it */
} st_infer_finish;

/* As st_infer_add, in a free slot of a group of st_infer_run_while: a
 * slot k with k % groups == group. (st_infer_add with replicas: a free
 * slot of the replica with the fewest sequences.) */
st_status st_infer_add_group(st_infer *in, const st_infer_request *r, int group, int groups,
                             int *id);

/* Adds a sequence in a free slot; *id names it until st_infer_release.
 * ST_ERR_BUSY when every slot is taken; ST_ERR_INVALID for a prompt that
 * is empty, longer than the context or outside the vocabulary. */
st_status st_infer_add(st_infer *in, const st_infer_request *r, int *id);

/* One pass for every active sequence (a prompt chunk, or its last token)
 * and a token drawn for each whose input is all read. A failure ends every
 * active sequence (ST_FINISH_ERROR) and is returned. */
st_status st_infer_step(st_infer *in);

/* Steps until no sequence is active, keeping split stages busy across
 * steps: the sequences go in as many groups as there are stages (by slot),
 * the groups take turns, and a group's next pass starts on the first stage
 * as soon as its tokens are drawn, while the later stages work on the
 * others (st_pipe_decode_stream). Each sequence gets the tokens it gets
 * from st_infer_step. on_token (NULL: none) is called after every token
 * drawn, on a pipeline thread; it may read that sequence (st_infer_get)
 * and end it (st_infer_end), and must not add or release sequences. With
 * replicas each is a group (slot k is replica k % replicas's) that steps
 * its own sequences on a thread of its own as soon as its last step is
 * done, so on_token and between may be called from several threads at
 * once (for different groups). Under MPI it steps. */
st_status st_infer_run(st_infer *in, void (*on_token)(void *ctx, int id), void *ctx);

/* The same, and before each pass of a group calls between(ctx, group,
 * groups) (NULL: none), on a pipeline thread, when none of that group's
 * passes is in flight: it may end, release and add sequences of that group
 * (st_infer_end, st_infer_release, st_infer_add_group with the same group
 * and groups), so that requests join and leave a run without stopping it.
 * When it returns false no more passes start, those in flight finish, and
 * the call returns with the sequences not finished still running (a later
 * call goes on with them). A group that has nothing to do ends for the
 * rest of the run. Without streaming (one group) it is called before each
 * step with group 0 of 1. */
st_status st_infer_run_while(st_infer *in, void (*on_token)(void *ctx, int id),
                             bool (*between)(void *ctx, int group, int groups), void *ctx);
/* The groups of st_infer_run_while: the replicas, else the stages it
 * streams (at most max_seqs), or 1. */
int st_infer_groups(const st_infer *in);

/* Sequences not finished. */
int st_infer_active(const st_infer *in);

typedef struct st_infer_info {
    st_infer_finish finish;
    const int32_t *tokens; /* the text: prompt, then generated (valid until the next step) */
    long n_tokens, n_prompt, n_generated; /* n_generated counts an EOS drawn */
    long prompt_left;      /* prompt tokens not yet read */
    long slides;           /* times the context slid */
} st_infer_info;
st_status st_infer_get(const st_infer *in, int id, st_infer_info *info);

/* Ends a running sequence (ST_FINISH_STOP or ST_FINISH_CANCEL): it takes
 * no part in later steps. */
st_status st_infer_end(st_infer *in, int id, st_infer_finish why);
/* Frees the slot of a sequence (finished or not). */
void st_infer_release(st_infer *in, int id);

/* Under mpirun, on every rank but 0: runs this rank's stages for each of
 * rank 0's steps, until rank 0 closes its session. */
st_status st_infer_follow(st_infer *in);
/* Whether this session leads (one process, or rank 0 under mpirun). */
bool st_infer_leads(const st_infer *in);

/* Scoring (score_batch at opening): st_pipe_forward on the session's
 * pipeline (pos: packed documents' positions, or NULL). */
st_status st_infer_score(st_infer *in, const int32_t *tokens, const int32_t *targets,
                         const int32_t *pos, double *sum, long *count, float *probs);

#ifdef __cplusplus
}
#endif

#endif
