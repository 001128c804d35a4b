/*
 * train.h - the training loop: batches from a dataset, forward, backward,
 * global-norm clipping, AdamW with warmup and cosine decay, validation,
 * checkpoints and resuming.
 *
 * Same seed, same devices, same settings: bitwise the same losses, and a run
 * resumed from a checkpoint continues exactly as the uninterrupted run
 * (batches are a function of the step; every sum has a fixed order).
 *
 * The loop reports through a callback; it prints nothing itself.
 */
#ifndef STRATA_TRAIN_H
#define STRATA_TRAIN_H

#include <stdint.h>

#include "strata/data.h"
#include "strata/device.h"
#include "strata/model.h"
#include "strata/pipe.h"
#include "strata/plan.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct st_train_config {
    st_run_shape shape;    /* sequences per step, tokens per sequence, micro-batches
                            * (dividing the batch), schedule; training is set */
    long steps;            /* last step (a resumed run continues to it) */
    long stop_at;          /* 0, or stop after this step as if interrupted (the
                            * schedule still runs to `steps`) */
    float lr, min_lr;      /* peak learning rate; cosine decay ends at min_lr */
    long warmup;           /* linear warmup steps */
    float weight_decay;    /* on 2-D weights only */
    float clip;            /* global gradient-norm limit; 0: none */
    float beta1, beta2, eps;
    uint64_t seed;
    long eval_every;       /* 0: only at the end */
    int eval_batches;
    long save_every;       /* 0: only at the end */
    int keep;              /* complete saves kept in out_dir (at least 1) */
    char run[17];          /* this run's id (hex), kept through resumes: a folder
                            * holding saves of another run is not written over */
    bool skip_nonfinite;   /* a NaN/Inf loss or gradient skips the step's update
                            * (--on-nan skip); else the run stops (abort) */
    const char *out_dir;   /* checkpoint folder, or NULL */
    const char *resume_dir;
    const char *init_dir;  /* without resume_dir: step 0's weights from this model
                            * folder (a Strata run's or a Hugging Face one), the
                            * optimizer and schedule fresh; else drawn from seed */
    /* Read back by st_train_settings_read (the model's own LoRA settings are
     * cfg->lora): a run's --init folder, its adapters' rank, alpha and
     * targets (names, as --lora-targets takes them), and whether its rows
     * were packed (the dataset's own setting, recorded). */
    char init_saved[4096];
    st_lora lora;
    char lora_targets[160];
    bool packed; /* the run's JSON Lines rows were packed (st_dataset_pack) */
    /* Asked after every step; true stops the run there as if --stop-at were
     * that step (saving to out_dir): how Ctrl-C ends a run without losing it. */
    bool (*should_stop)(void);
} st_train_config;

/* The defaults of `strata train`. */
void st_train_config_defaults(st_train_config *tc);

/* Learning rate at step (from 1). */
float st_train_lr(const st_train_config *tc, long step);

typedef enum st_train_event_kind {
    ST_TRAIN_START,
    ST_TRAIN_STEP,
    ST_TRAIN_EVAL,
    ST_TRAIN_SAVE,
    ST_TRAIN_DONE
} st_train_event_kind;

typedef struct st_train_event {
    st_train_event_kind kind;
    long step, steps;
    double loss, lr, grad_norm;     /* STEP */
    double ms, tokens_per_s;        /* STEP: this step; DONE: whole run average */
    double val_loss, exact;         /* EVAL: exact < 0 when the data has no exact match */
    long val_tokens;
    const char *path;               /* SAVE */
    double seconds;                 /* DONE: wall time of the steps */
    double wait_ms;                 /* STEP: the most any stage waited on its links */
    bool interrupted;               /* DONE: should_stop ended the run early */
    bool skipped;                   /* STEP: not finite, no update made (--on-nan skip) */
    const char *where;              /* STEP when skipped: the first stage it was found on */
    uint64_t params, trained;       /* START: all parameters, those that train */
    uint64_t device_bytes, peak_bytes; /* START, DONE */
} st_train_event;

typedef void (*st_train_callback)(const st_train_event *e, void *user);

/* Where the model lives: the plan (strata/plan.h), whose shape must be the
 * training's, and the devices it was made over (plan->stage[s].device
 * indexes devs; NULL for a device of another process). */
typedef struct st_train_layout {
    const st_plan *plan;
    st_device *const *devs;
    /* Stages in several processes (MPI): NULL for one process. Checkpoints
     * are then written as one shard per rank and an index by rank 0. */
    const st_pipe_comm *comm;
    int ranks;
    st_status (*barrier)(void);
    /* Each rank's line of text to rank 0 (out: ranks x line_size bytes, rank 0 only). */
    st_status (*gather)(const char *line, char *out, size_t line_size);
    /* Set by st_train when it fails the same way on every rank at once (a save
     * that did not happen): no rank waits on another, so the job can end
     * normally instead of being aborted. May be NULL. */
    bool *failed_together;
} st_train_layout;

/* Trains cfg's model over the layout's stages. With tc->resume_dir, the weights, moments and
 * step come from there and the data, batch, sequence, seed and schedule
 * must match the checkpoint's (st_train_settings_apply fills them). */
st_status st_train(const st_train_layout *layout, const st_model_config *cfg, st_dataset *ds,
                   const st_train_config *tc, st_train_callback cb, void *user);

/* Reads the settings a checkpoint was trained with into tc (its run id too),
 * data (the dataset's name as given) and, when not NULL, id (what the data
 * file was: absolute path, size, checksum; an empty path for the built-in
 * task), for a resumed run's defaults. */
st_status st_train_settings_read(const char *dir, st_train_config *tc, char *data, size_t size,
                                 st_data_identity *id);

#ifdef __cplusplus
}
#endif

#endif
