/*
 * checkpoint.h - model folders, saved as a unit and loaded only whole.
 *
 * A save of step N writes, in this order:
 *   model-stepN-TAG-0000R-of-0000K.safetensors      weights of rank R's stages
 *                                                   (HF GPT-2 names, format=pt)
 *   optimizer-stepN-TAG-0000R-of-0000K.safetensors  AdamW moments m.<name>, v.<name>
 *   checkpoint-stepN-TAG.json                       the manifest: the step, the
 *       model's config, the training settings, and every file above with its
 *       size and checksum. Renaming it into place (then syncing the folder) is
 *       the one step that makes the save current.
 *   config.json, model.safetensors.index.json       the Hugging Face view of the
 *       newest save (transformers loads the folder as GPT2LMHeadModel)
 * and only then removes saves beyond the newest `keep`, files no kept manifest
 * names and temporary files left by a crash. Every file goes through a
 * temporary name, fsync and rename (core/atomic.h). K is 1 in one process;
 * TAG tells apart two saves of one step (a run repeated into the same folder).
 *
 * Loading takes the newest save whose manifest is readable and whose every
 * file is there with its size and checksum; a newer save that is not (a
 * crash, a full disk, a file from another run) is passed over with a warning
 * that names the file and the step. A folder without a manifest (Hugging Face
 * layout: config.json and model.safetensors or its index) loads as weights
 * without training state. Tensors are checked by name and shape against the
 * model; a "transformer." prefix, the attention mask buffers and a tied
 * "lm_head.weight" are accepted.
 */
#ifndef STRATA_CHECKPOINT_H
#define STRATA_CHECKPOINT_H

#include <stdbool.h>
#include <stdint.h>

#include "strata/adapter.h"
#include "strata/dtype.h"
#include "strata/model.h"
#include "strata/pipe.h"
#include "strata/stage.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Training state kept in the manifest. */
typedef struct st_train_state {
    long step;
    char settings[4096]; /* JSON object of the training settings */
} st_train_state;

/* One file of a save. */
typedef struct st_checkpoint_file {
    char name[128];
    bool optimizer; /* AdamW moments, else weights */
    uint64_t bytes, sum;
} st_checkpoint_file;

#define ST_CHECKPOINT_MAX_FILES 128 /* two per rank, up to 64 ranks */

/* Creates dir and checks that files can be written there: before a run,
 * so that a bad --out fails at the start and not after the training.
 * *created (may be NULL): dir did not exist before. */
st_status st_checkpoint_prepare(const char *dir, bool *created);

/* The run folder's lock, held until st_checkpoint_unlock or the process
 * ends: an advisory lock (flock) on dir/.strata-lock, which names its holder.
 * ST_ERR_BUSY, naming the holder, when another process holds it; a lock left
 * by a process that died is free (the kernel releases it). One writer per
 * folder: two runs saving into one folder deleted each other's saves. */
st_status st_checkpoint_lock(const char *dir);
/* Releases the lock and removes its file. */
void st_checkpoint_unlock(void);

/* One process: the model of the stages (which together hold every layer
 * once) and, when state is not NULL, their optimizer, committed as step
 * state->step (0 without state); keeps the newest `keep` saves (at least 1). */
st_status st_checkpoint_save(const char *dir, st_stage *const *stages, size_t n_stages,
                             const st_model_config *cfg, const st_train_state *state, int keep);

/* The parts of a save over several processes (MPI ranks):
 *   every rank   st_checkpoint_write_part   its shards (same tag everywhere)
 *   rank 0       st_checkpoint_commit       with every rank's files, once all are written
 *   rank 0       st_checkpoint_clean        after the commit
 * A crash anywhere leaves the previous save current. */
uint32_t st_checkpoint_new_tag(void);
st_status st_checkpoint_write_part(const char *dir, st_stage *const *stages, size_t n_stages,
                                   const st_train_state *state, uint32_t tag, int rank,
                                   int ranks, st_checkpoint_file *files, size_t *n_files);
st_status st_checkpoint_commit(const char *dir, const st_model_config *cfg,
                               const st_train_state *state, uint32_t tag,
                               const st_checkpoint_file *files, size_t n_files);
st_status st_checkpoint_clean(const char *dir, int keep);

/* Files as one line of text and back (how ranks send them to rank 0). */
void st_checkpoint_files_format(const st_checkpoint_file *files, size_t n, char *out,
                                size_t size);
st_status st_checkpoint_files_parse(const char *line, st_checkpoint_file *files, size_t max,
                                    size_t *n);

/* ---- loading ----------------------------------------------------------------- */

typedef struct st_checkpoint st_checkpoint;

/* Finds the save to load (see above) and verifies it. */
st_status st_checkpoint_open(const char *dir, st_checkpoint **out);
void st_checkpoint_close(st_checkpoint *ck);

const st_model_config *st_checkpoint_get_config(const st_checkpoint *ck);
/* How the folder stores its weight matrices (the first 2-D tensor's type):
 * F32, BF16 or F16 (other types read as F32). */
st_status st_checkpoint_weights_dtype(const st_checkpoint *ck, st_dtype *out);
/* The step of the save, or -1 for a folder without a manifest. */
long st_checkpoint_get_step(const st_checkpoint *ck);
/* The training state; an error naming the folder when it has none. */
st_status st_checkpoint_get_state(const st_checkpoint *ck, st_train_state *state);
/* "step 12 (checkpoint-step00000012-1a2b3c4d.json)" or "config.json and model weights". */
const char *st_checkpoint_describe(const st_checkpoint *ck);

/* Loads each stage's parameters (tied copies included) and, when state is
 * not NULL, the moments and the state. whole: the stages hold the whole
 * model, so a tensor of the files that none of them has is an error; else
 * other processes hold the rest. */
st_status st_checkpoint_load_into(const st_checkpoint *ck, st_stage *const *stages,
                                  size_t n_stages, st_train_state *state, bool whole);

/* Shorthands that open dir, do one thing and close it. */
st_status st_checkpoint_config(const char *dir, st_model_config *cfg);
st_status st_checkpoint_state(const char *dir, st_train_state *state);
st_status st_checkpoint_load(const char *dir, st_stage *const *stages, size_t n_stages,
                             st_train_state *state);
st_status st_checkpoint_load_part(const char *dir, st_stage *const *stages, size_t n_stages,
                                  st_train_state *state);

/* Loads dir into a planned pipeline: this process's stages (under mpirun
 * the other processes load theirs) and, when state is not NULL, their
 * moments and the state; then the first replica's bits go to the others.
 * How train (--resume, --init), eval, generate and serve load a folder. */
st_status st_checkpoint_load_pipe(const char *dir, st_pipe *p, st_train_state *state);
/* The same with a LoRA adapter (strata/adapter.h; NULL: none) merged into
 * the weights as they load. */
st_status st_checkpoint_load_pipe_adapter(const char *dir, st_adapter *adapter, st_pipe *p,
                                          st_train_state *state);

/* strata merge: model_dir's weights (a Hugging Face folder or a Strata run)
 * with the LoRA adapter merged, written to out_dir (missing or empty) as a
 * plain model folder that transformers loads: model.safetensors in the
 * base's element type (BF16, F16 or F32; rounded to nearest even), the
 * config and the tokenizer's files. */
typedef struct st_merge_report {
    size_t tensors, merged; /* written; with an adapter product added */
    char dtype[8];
    uint64_t bytes;         /* of model.safetensors */
} st_merge_report;
st_status st_checkpoint_merge_adapter(const char *model_dir, st_adapter *adapter,
                                      const char *out_dir, st_merge_report *report);

#ifdef __cplusplus
}
#endif

#endif
