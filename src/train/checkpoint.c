/*
 * checkpoint.c - model folders: config.json, model.safetensors and
 * optimizer.safetensors (see strata/checkpoint.h).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "strata/checkpoint.h"
#include "strata/safetensors.h"

static st_status make_dir(const char *dir)
{
    char path[4096];
    snprintf(path, sizeof path, "%s", dir);
    for (char *p = path + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(path, 0755) != 0 && errno != EEXIST)
            return st_error(ST_ERR_IO, "cannot create folder '%s': %s", path, strerror(errno));
        *p = '/';
    }
    if (mkdir(path, 0755) != 0 && errno != EEXIST)
        return st_error(ST_ERR_IO, "cannot create folder '%s': %s", path, strerror(errno));
    return ST_OK;
}

static void join(char *out, size_t size, const char *dir, const char *name)
{
    snprintf(out, size, "%s/%s", dir, name);
}

/* Adds one buffer of every stage's own (not tied) parameters, names prefixed. */
static st_status add_buffers(st_safetensors_writer *w, st_gpt *const *stages, size_t n,
                             st_gpt_buf which, const char *prefix)
{
    st_status s = ST_OK;
    for (size_t k = 0; s == ST_OK && k < n; k++) {
        for (size_t i = 0; s == ST_OK && i < st_gpt_n_params(stages[k]); i++) {
            const st_gpt_param *p = st_gpt_param_at(stages[k], i);
            if (p->tied)
                continue;
            float *host = malloc(p->desc->numel * sizeof *host);
            if (!host)
                return st_error(ST_ERR_HOST_MEMORY, "out of host memory saving '%s'",
                                p->desc->name);
            char name[128];
            snprintf(name, sizeof name, "%s%s", prefix, p->desc->name);
            if ((s = st_gpt_read(stages[k], which, i, host)) == ST_OK)
                s = st_safetensors_add_f32(w, name, p->desc->ndim, p->desc->shape, host);
            free(host);
        }
    }
    return s;
}

st_status st_checkpoint_save(const char *dir, st_gpt *const *stages, size_t n_stages,
                             const st_gpt_config *cfg, const st_train_state *state)
{
    st_status s = make_dir(dir);
    char path[4200];
    if (s != ST_OK)
        return s;
    st_safetensors_writer *w = NULL;
    if (state) {
        if ((s = st_safetensors_writer_create(&w)) != ST_OK)
            return s;
        char step[32];
        snprintf(step, sizeof step, "%ld", state->step);
        join(path, sizeof path, dir, "optimizer.safetensors");
        if ((s = add_buffers(w, stages, n_stages, ST_GPT_ADAM_M, "m.")) == ST_OK &&
            (s = add_buffers(w, stages, n_stages, ST_GPT_ADAM_V, "v.")) == ST_OK &&
            (s = st_safetensors_set_metadata(w, "step", step)) == ST_OK &&
            (s = st_safetensors_set_metadata(w, "settings", state->settings)) == ST_OK)
            s = st_safetensors_save(w, path);
        st_safetensors_writer_destroy(w);
        if (s != ST_OK)
            return s;
    }
    join(path, sizeof path, dir, "config.json");
    if ((s = st_gpt_config_save(cfg, path)) != ST_OK)
        return s;
    if ((s = st_safetensors_writer_create(&w)) != ST_OK)
        return s;
    join(path, sizeof path, dir, "model.safetensors");
    if ((s = add_buffers(w, stages, n_stages, ST_GPT_PARAMS, "")) == ST_OK &&
        (s = st_safetensors_set_metadata(w, "format", "pt")) == ST_OK)
        s = st_safetensors_save(w, path);
    st_safetensors_writer_destroy(w);
    return s;
}

st_status st_checkpoint_config(const char *dir, st_gpt_config *cfg)
{
    char path[4200];
    join(path, sizeof path, dir, "config.json");
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return st_error(ST_ERR_NOT_FOUND,
                        "model folder '%s' does not exist (it is what `strata train --out` "
                        "writes)",
                        dir);
    return st_gpt_config_load(path, cfg);
}

/* The model's name for a tensor of a file, or NULL for tensors that carry no
 * weight of their own (mask buffers, the tied head). */
static const char *model_name(const char *name)
{
    if (strncmp(name, "transformer.", 12) == 0)
        name += 12;
    size_t n = strlen(name);
    if ((n > 10 && strcmp(name + n - 10, ".attn.bias") == 0) ||
        (n > 17 && strcmp(name + n - 17, ".attn.masked_bias") == 0) ||
        strcmp(name, "lm_head.weight") == 0)
        return NULL;
    return name;
}

static st_status load_file(const char *path, st_gpt *const *stages, size_t n_stages,
                           st_gpt_buf which, const char *prefix, bool check_extra)
{
    st_safetensors *f = NULL;
    st_status s = st_safetensors_open(path, &f);
    if (s != ST_OK)
        return s;
    size_t plen = strlen(prefix);
    /* Every tensor of the file must belong to the model (when check_extra). */
    for (size_t i = 0; s == ST_OK && check_extra && i < st_safetensors_count(f); i++) {
        const char *name = st_safetensors_at(f, i)->name;
        if (strncmp(name, prefix, plen) != 0) {
            s = st_error(ST_ERR_FORMAT, "%s: tensor '%s' is not part of the model", path, name);
            break;
        }
        const char *mn = model_name(name + plen);
        bool known = mn == NULL;
        for (size_t k = 0; !known && k < n_stages; k++)
            known = known || st_gpt_param_find(stages[k], mn) >= 0;
        /* The stages together hold the whole model: anything else is foreign. */
        if (!known)
            s = st_error(ST_ERR_FORMAT,
                         "%s: tensor '%s' is not a parameter of this model (does config.json "
                         "match the weights?)",
                         path, name);
    }
    for (size_t k = 0; s == ST_OK && k < n_stages; k++) {
        for (size_t i = 0; s == ST_OK && i < st_gpt_n_params(stages[k]); i++) {
            const st_param_desc *p = st_gpt_param_at(stages[k], i)->desc;
            char name[160];
            snprintf(name, sizeof name, "%s%s", prefix, p->name);
            const st_safetensors_entry *e = st_safetensors_find(f, name);
            if (!e) {
                snprintf(name, sizeof name, "%stransformer.%s", prefix, p->name);
                e = st_safetensors_find(f, name);
            }
            if (!e) {
                s = st_error(ST_ERR_FORMAT, "%s has no tensor '%s%s'", path, prefix, p->name);
                break;
            }
            bool same = e->ndim == p->ndim && e->numel == p->numel;
            for (int d = 0; same && d < p->ndim; d++)
                same = e->shape[d] == p->shape[d];
            if (!same) {
                char got[160] = "", want[64];
                for (int d = 0; d < e->ndim; d++)
                    snprintf(got + strlen(got), sizeof got - strlen(got), "%s%llu",
                             d ? ", " : "", (unsigned long long)e->shape[d]);
                if (p->ndim == 2)
                    snprintf(want, sizeof want, "%zu, %zu", p->shape[0], p->shape[1]);
                else
                    snprintf(want, sizeof want, "%zu", p->shape[0]);
                s = st_error(ST_ERR_FORMAT, "%s: tensor '%s' has shape [%s], the model needs [%s]",
                             path, name, got, want);
                break;
            }
            float *host = malloc(p->numel * sizeof *host);
            if (!host) {
                s = st_error(ST_ERR_HOST_MEMORY, "out of host memory loading '%s'", name);
                break;
            }
            if ((s = st_safetensors_to_f32(e, host)) == ST_OK)
                s = st_gpt_write(stages[k], which, i, host);
            free(host);
        }
    }
    st_safetensors_close(f);
    return s;
}

st_status st_checkpoint_load(const char *dir, st_gpt *const *stages, size_t n_stages,
                             st_train_state *state)
{
    char path[4200];
    join(path, sizeof path, dir, "model.safetensors");
    st_status s = load_file(path, stages, n_stages, ST_GPT_PARAMS, "", true);
    if (s != ST_OK || !state)
        return s;
    join(path, sizeof path, dir, "optimizer.safetensors");
    if ((s = load_file(path, stages, n_stages, ST_GPT_ADAM_M, "m.", false)) != ST_OK ||
        (s = load_file(path, stages, n_stages, ST_GPT_ADAM_V, "v.", false)) != ST_OK)
        return s;
    return st_checkpoint_state(dir, state);
}

st_status st_checkpoint_state(const char *dir, st_train_state *state)
{
    char path[4200];
    join(path, sizeof path, dir, "optimizer.safetensors");
    st_safetensors *f = NULL;
    st_status s = st_safetensors_open(path, &f);
    if (s == ST_ERR_NOT_FOUND)
        return st_error(ST_ERR_NOT_FOUND,
                        "'%s' has no optimizer.safetensors: it holds a model but no training "
                        "state to resume",
                        dir);
    if (s != ST_OK)
        return s;
    const char *step = st_safetensors_metadata(f, "step");
    const char *settings = st_safetensors_metadata(f, "settings");
    char *end = NULL;
    long v = step ? strtol(step, &end, 10) : -1;
    if (!step || *end || v < 0 || !settings) {
        s = st_error(ST_ERR_FORMAT, "%s: no training step and settings in its metadata", path);
    } else {
        state->step = v;
        snprintf(state->settings, sizeof state->settings, "%s", settings);
    }
    st_safetensors_close(f);
    return s;
}
