/*
 * family.h - what each model family provides to the description: its
 * config.json fields and its layers. model.c keeps the table of families;
 * a family's file (gpt2.c, llama.c) fills one entry.
 */
#ifndef STRATA_MODEL_FAMILY_H
#define STRATA_MODEL_FAMILY_H

#include <jansson.h>

#include "strata/model.h"

typedef struct st_family_ops {
    st_family family;
    const char *name;                /* "gpt2" */
    const char *const *model_types;  /* config.json model_type values it reads, NULL-ended */
    /* Fills c (family and model_type already set) from a config.json object;
     * src names the file in messages. */
    st_status (*config_from_json)(json_t *root, const char *src, st_model_config *c);
    /* Sizes within limits and consistent; the message names the field. */
    st_status (*config_check)(const st_model_config *c);
    /* The config.json object Hugging Face transformers loads. */
    json_t *(*config_to_json)(const st_model_config *c);
    /* How many layers the description has, then each of them. */
    size_t (*n_layers)(const st_model_config *c);
    void (*describe)(const st_model_config *c, st_layer_desc *layers);
} st_family_ops;

extern const st_family_ops st_gpt2_family;
extern const st_family_ops st_llama_family;

/* Shared by the families' files. */
void st_desc_add_param(st_layer_desc *l, const char *name, int ndim, size_t d0, size_t d1,
                       st_init init, double std, bool decay);
st_status st_json_int(const char *src, const char *key, json_t *v, long max, int *out);
st_status st_json_bool(const char *src, const char *key, json_t *v, bool want, const char *why);
st_status st_json_number(const char *src, const char *key, json_t *v, double *out);

#endif
