/*
 * adapter.h - LoRA adapters in PEFT's folder format, applied to a model's
 * weights as they load: adapter_config.json (peft_type LORA, r, lora_alpha,
 * use_rslora, target_modules, fan_in_fan_out) and adapter_model.safetensors,
 * whose tensors are named
 *   base_model.model.<module>.lora_A.weight   [r, in]
 *   base_model.model.<module>.lora_B.weight   [out, r]
 * for the base model's weight <module>.weight. Loading adds
 *   scale * B @ A   (scale = lora_alpha / r, or / sqrt(r) with use_rslora)
 * to that weight in float, transposed for a weight stored [in, out] (GPT-2's
 * Conv1D): the merged weight PEFT's merge_and_unload computes.
 *
 * Refused with a message naming the field: other PEFT methods, DoRA, LoRA
 * biases, per-module ranks (rank_pattern, alpha_pattern), modules_to_save.
 */
#ifndef STRATA_ADAPTER_H
#define STRATA_ADAPTER_H

#include <stdbool.h>
#include <stddef.h>

#include "strata/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct st_adapter st_adapter;

/* dir: a PEFT adapter folder. */
st_status st_adapter_open(const char *dir, st_adapter **out);
void st_adapter_close(st_adapter *a);

/* "LoRA r 8, alpha 16 (scale 2), 14 weights (q_proj, k_proj, ...)". */
const char *st_adapter_describe(const st_adapter *a);

/* Adds the adapter's product to the weight named `name` (a base model's
 * tensor name, e.g. "model.layers.0.self_attn.q_proj.weight"), held in w as
 * rows x cols floats; in_out: stored [in, out] (Conv1D) rather than
 * [out, in]. *applied: whether the adapter has that weight. A shape that
 * does not fit is an error naming both. */
st_status st_adapter_apply(st_adapter *a, const char *name, float *w, size_t rows, size_t cols,
                           bool in_out, bool *applied);

/* After a whole model was loaded: an error naming a module of the adapter
 * that no weight of the model matched (an adapter for another model). */
st_status st_adapter_check_used(const st_adapter *a);

#ifdef __cplusplus
}
#endif

#endif
