/*
 * checkpoint.h - a model folder, as Hugging Face tools expect it:
 *   config.json          GPT-2 config (strata/model.h)
 *   model.safetensors    weights with GPT-2 names and layouts, metadata format=pt
 *   optimizer.safetensors  AdamW moments "m.<name>", "v.<name>", with the step
 *                        and the training settings in its metadata (training only)
 * Each file is written to a temporary name, synced and renamed.
 *
 * Loading reads one file or, when model.safetensors.index.json is there, the
 * shards it names. Loading checks every tensor's name and shape against the model and says
 * which is missing, extra or of the wrong shape. Weights from elsewhere may
 * carry a "transformer." prefix, the attention mask buffers ("attn.bias",
 * "attn.masked_bias") and a tied "lm_head.weight": these are accepted.
 */
#ifndef STRATA_CHECKPOINT_H
#define STRATA_CHECKPOINT_H

#include <stdbool.h>

#include "strata/gpt.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Training state kept in optimizer.safetensors' metadata. */
typedef struct st_train_state {
    long step;
    char settings[4096]; /* JSON object of the training settings */
} st_train_state;

/* Writes the model (and, when state is not NULL, the optimizer) of the
 * stages, which together hold every layer once, into dir (created). */
st_status st_checkpoint_save(const char *dir, st_gpt *const *stages, size_t n_stages,
                             const st_gpt_config *cfg, const st_train_state *state);

/* Creates dir and checks that files can be written there: before a run,
 * so that a bad --out fails at the start and not after the training. */
st_status st_checkpoint_prepare(const char *dir);

/* Reads dir/config.json. */
st_status st_checkpoint_config(const char *dir, st_gpt_config *cfg);

/* Loads the weights (and the moments and state when state is not NULL) of
 * each stage's own parameters, tied copies included. */
st_status st_checkpoint_load(const char *dir, st_gpt *const *stages, size_t n_stages,
                             st_train_state *state);
/* The same for stages that hold only part of the model (other processes
 * hold the rest): tensors of other parts are not errors. */
st_status st_checkpoint_load_part(const char *dir, st_gpt *const *stages, size_t n_stages,
                                  st_train_state *state);

/* Sharded checkpoints (MPI ranks): each rank writes the shard of its stages
 * (model-stepN-RRRRR-of-NNNNN.safetensors and the optimizer's); once all are
 * complete, rank 0 writes config.json and the two indexes
 * (model.safetensors.index.json, Hugging Face's layout: a weight_map from
 * tensor name to shard file); then each rank removes its shards of other
 * steps. A crash at any point leaves the previous index and its shards. */
st_status st_checkpoint_save_shard(const char *dir, st_gpt *const *stages, size_t n_stages,
                                   const st_train_state *state, int rank, int ranks);
st_status st_checkpoint_save_index(const char *dir, const st_model_desc *desc,
                                   const size_t *stage_first, const size_t *stage_end,
                                   const int *stage_rank, size_t n_stages, int ranks,
                                   const st_train_state *state);
void st_checkpoint_remove_old_shards(const char *dir, long keep_step, int rank, int ranks);

/* Reads only the training state (step and settings) of dir. */
st_status st_checkpoint_state(const char *dir, st_train_state *state);

#ifdef __cplusplus
}
#endif

#endif
