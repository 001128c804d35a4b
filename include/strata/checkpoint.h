/*
 * checkpoint.h - a model folder, as Hugging Face tools expect it:
 *   config.json          GPT-2 config (strata/model.h)
 *   model.safetensors    weights with GPT-2 names and layouts, metadata format=pt
 *   optimizer.safetensors  AdamW moments "m.<name>", "v.<name>", with the step
 *                        and the training settings in its metadata (training only)
 * Each file is written to a temporary name, synced and renamed.
 *
 * Loading checks every tensor's name and shape against the model and says
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

/* Reads dir/config.json. */
st_status st_checkpoint_config(const char *dir, st_gpt_config *cfg);

/* Loads the weights (and the moments and state when state is not NULL) of
 * each stage's own parameters, tied copies included. */
st_status st_checkpoint_load(const char *dir, st_gpt *const *stages, size_t n_stages,
                             st_train_state *state);

/* Reads only the training state (step and settings) of dir. */
st_status st_checkpoint_state(const char *dir, st_train_state *state);

#ifdef __cplusplus
}
#endif

#endif
