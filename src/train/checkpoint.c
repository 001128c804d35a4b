/*
 * checkpoint.c - model folders: config.json, model.safetensors and
 * optimizer.safetensors (see strata/checkpoint.h).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "strata/checkpoint.h"
#include "strata/plan.h"
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

st_status st_checkpoint_prepare(const char *dir)
{
    st_status s = make_dir(dir);
    if (s != ST_OK)
        return s;
    char probe[4200];
    snprintf(probe, sizeof probe, "%s/.strata-write-test.%ld", dir, (long)getpid());
    FILE *f = fopen(probe, "w");
    if (!f)
        return st_error(ST_ERR_IO, "cannot write into '%s': %s (choose another --out)", dir,
                        strerror(errno));
    fclose(f);
    unlink(probe);
    return ST_OK;
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
    if (s == ST_OK) {
        /* An index from an earlier MPI run would take precedence: it goes. */
        join(path, sizeof path, dir, "model.safetensors.index.json");
        unlink(path);
        join(path, sizeof path, dir, "optimizer.safetensors.index.json");
        unlink(path);
    }
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

/* Where a checkpoint's tensors are: one file, or an index naming the shard
 * of each tensor (written by MPI ranks). */
typedef struct source {
    char path[4200]; /* the file or the index, for messages */
    st_safetensors *single;
    json_t *index, *map;
    char dir[4096];
    size_t n_shards;
    char shard_name[ST_PLAN_MAX_STAGES * 2][256];
    st_safetensors *shard[ST_PLAN_MAX_STAGES * 2];
} source;

static void source_close(source *src)
{
    st_safetensors_close(src->single);
    for (size_t i = 0; i < src->n_shards; i++)
        st_safetensors_close(src->shard[i]);
    json_decref(src->index);
    memset(src, 0, sizeof *src);
}

static st_status source_open(const char *dir, const char *base, source *src)
{
    memset(src, 0, sizeof *src);
    snprintf(src->dir, sizeof src->dir, "%s", dir);
    char index[4200];
    snprintf(index, sizeof index, "%s/%s.safetensors.index.json", dir, base);
    FILE *f = fopen(index, "r");
    if (!f) {
        snprintf(src->path, sizeof src->path, "%s/%s.safetensors", dir, base);
        return st_safetensors_open(src->path, &src->single);
    }
    fclose(f);
    snprintf(src->path, sizeof src->path, "%s", index);
    json_error_t err;
    src->index = json_load_file(index, JSON_REJECT_DUPLICATES, &err);
    src->map = src->index ? json_object_get(src->index, "weight_map") : NULL;
    if (!json_is_object(src->map)) {
        st_status s = st_error(ST_ERR_FORMAT, "%s: not a safetensors index (%s)", index,
                               src->index ? "no weight_map object" : err.text);
        source_close(src);
        return s;
    }
    return ST_OK;
}

static st_status source_find(source *src, const char *name, const st_safetensors_entry **out)
{
    *out = NULL;
    if (src->single) {
        *out = st_safetensors_find(src->single, name);
        return ST_OK;
    }
    const char *file = json_string_value(json_object_get(src->map, name));
    if (!file)
        return ST_OK;
    if (strchr(file, '/'))
        return st_error(ST_ERR_FORMAT, "%s: shard '%s' is not a file in the folder", src->path,
                        file);
    size_t i = 0;
    while (i < src->n_shards && strcmp(src->shard_name[i], file) != 0)
        i++;
    if (i == src->n_shards) {
        if (i == sizeof src->shard / sizeof src->shard[0])
            return st_error(ST_ERR_FORMAT, "%s names too many shards", src->path);
        char path[4400];
        snprintf(path, sizeof path, "%s/%s", src->dir, file);
        st_status s = st_safetensors_open(path, &src->shard[i]);
        if (s != ST_OK)
            return s;
        snprintf(src->shard_name[i], sizeof src->shard_name[i], "%s", file);
        src->n_shards++;
    }
    *out = st_safetensors_find(src->shard[i], name);
    if (!*out)
        return st_error(ST_ERR_FORMAT, "%s: the index puts '%s' in %s, which does not hold it",
                        src->path, name, file);
    return ST_OK;
}

/* The names the source holds, one at a time (i from 0; NULL at the end). */
static const char *source_name(const source *src, size_t i)
{
    if (src->single) {
        const st_safetensors_entry *e = st_safetensors_at(src->single, i);
        return e ? e->name : NULL;
    }
    size_t k = 0;
    const char *key;
    json_t *v;
    json_object_foreach(src->map, key, v) {
        if (k++ == i)
            return key;
    }
    return NULL;
}

static const char *source_meta(const source *src, const char *key)
{
    if (src->single)
        return st_safetensors_metadata(src->single, key);
    return json_string_value(json_object_get(json_object_get(src->index, "metadata"), key));
}

static st_status load_file(source *src, st_gpt *const *stages, size_t n_stages,
                           st_gpt_buf which, const char *prefix, bool check_extra)
{
    st_status s = ST_OK;
    const char *path = src->path;
    size_t plen = strlen(prefix);
    /* Every tensor of the file must belong to the model (when check_extra). */
    const char *name;
    for (size_t i = 0; s == ST_OK && check_extra && (name = source_name(src, i)); i++) {
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
            char tname[160];
            snprintf(tname, sizeof tname, "%s%s", prefix, p->name);
            const st_safetensors_entry *e = NULL;
            if ((s = source_find(src, tname, &e)) != ST_OK)
                break;
            if (!e) {
                snprintf(tname, sizeof tname, "%stransformer.%s", prefix, p->name);
                if ((s = source_find(src, tname, &e)) != ST_OK)
                    break;
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
                             path, tname, got, want);
                break;
            }
            float *host = malloc(p->numel * sizeof *host);
            if (!host) {
                s = st_error(ST_ERR_HOST_MEMORY, "out of host memory loading '%s'", tname);
                break;
            }
            if ((s = st_safetensors_to_f32(e, host)) == ST_OK)
                s = st_gpt_write(stages[k], which, i, host);
            free(host);
        }
    }
    return s;
}

static st_status load(const char *dir, st_gpt *const *stages, size_t n_stages,
                      st_train_state *state, bool whole)
{
    source src;
    st_status s = source_open(dir, "model", &src);
    if (s != ST_OK)
        return s;
    s = load_file(&src, stages, n_stages, ST_GPT_PARAMS, "", whole);
    source_close(&src);
    if (s != ST_OK || !state)
        return s;
    if ((s = st_checkpoint_state(dir, state)) != ST_OK ||
        (s = source_open(dir, "optimizer", &src)) != ST_OK)
        return s;
    if ((s = load_file(&src, stages, n_stages, ST_GPT_ADAM_M, "m.", false)) == ST_OK)
        s = load_file(&src, stages, n_stages, ST_GPT_ADAM_V, "v.", false);
    source_close(&src);
    return s;
}

st_status st_checkpoint_load(const char *dir, st_gpt *const *stages, size_t n_stages,
                             st_train_state *state)
{
    return load(dir, stages, n_stages, state, true);
}

st_status st_checkpoint_load_part(const char *dir, st_gpt *const *stages, size_t n_stages,
                                  st_train_state *state)
{
    return load(dir, stages, n_stages, state, false);
}

st_status st_checkpoint_state(const char *dir, st_train_state *state)
{
    source src;
    st_status s = source_open(dir, "optimizer", &src);
    if (s == ST_ERR_NOT_FOUND)
        return st_error(ST_ERR_NOT_FOUND,
                        "'%s' has no optimizer.safetensors: it holds a model but no training "
                        "state to resume",
                        dir);
    if (s != ST_OK)
        return s;
    const char *step = source_meta(&src, "step");
    const char *settings = source_meta(&src, "settings");
    char *end = NULL;
    long v = step ? strtol(step, &end, 10) : -1;
    if (!step || *end || v < 0 || !settings) {
        s = st_error(ST_ERR_FORMAT, "%s: no training step and settings in its metadata",
                     src.path);
    } else {
        state->step = v;
        snprintf(state->settings, sizeof state->settings, "%s", settings);
    }
    source_close(&src);
    return s;
}

/* ---- shards: one per rank, and the index rank 0 writes last ------------------- */

static void shard_file(char *out, size_t size, const char *base, long step, int rank, int ranks)
{
    snprintf(out, size, "%s-step%08ld-%05d-of-%05d.safetensors", base, step, rank + 1, ranks);
}

st_status st_checkpoint_save_shard(const char *dir, st_gpt *const *stages, size_t n_stages,
                                   const st_train_state *state, int rank, int ranks)
{
    st_status s = make_dir(dir);
    if (s != ST_OK)
        return s;
    const char *bases[2] = {"model", "optimizer"};
    for (int b = 0; s == ST_OK && b < 2; b++) {
        st_safetensors_writer *w = NULL;
        if ((s = st_safetensors_writer_create(&w)) != ST_OK)
            return s;
        char file[256], path[4400];
        shard_file(file, sizeof file, bases[b], state->step, rank, ranks);
        snprintf(path, sizeof path, "%s/%s", dir, file);
        if (b == 0)
            s = add_buffers(w, stages, n_stages, ST_GPT_PARAMS, "");
        else if ((s = add_buffers(w, stages, n_stages, ST_GPT_ADAM_M, "m.")) == ST_OK)
            s = add_buffers(w, stages, n_stages, ST_GPT_ADAM_V, "v.");
        if (s == ST_OK)
            s = st_safetensors_save(w, path);
        st_safetensors_writer_destroy(w);
    }
    return s;
}

static st_status write_json_atomic(json_t *j, const char *path)
{
    char tmp[4400];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "w");
    if (!f)
        return st_error(ST_ERR_IO, "cannot create '%s': %s", tmp, strerror(errno));
    bool ok = json_dumpf(j, f, JSON_INDENT(2) | JSON_PRESERVE_ORDER) == 0 && fputc('\n', f) != EOF;
    ok = fflush(f) == 0 && ok && fsync(fileno(f)) == 0;
    ok = fclose(f) == 0 && ok;
    if (!ok || rename(tmp, path) != 0) {
        st_status s = st_error(ST_ERR_IO, "cannot write '%s': %s", path, strerror(errno));
        unlink(tmp);
        return s;
    }
    return ST_OK;
}

st_status st_checkpoint_save_index(const char *dir, const st_model_desc *desc,
                                   const size_t *stage_first, const size_t *stage_end,
                                   const int *stage_rank, size_t n_stages, int ranks,
                                   const st_train_state *state)
{
    char path[4400];
    join(path, sizeof path, dir, "config.json");
    st_status s = st_gpt_config_save(&desc->cfg, path);
    json_t *maps[2] = {json_object(), json_object()};
    for (size_t k = 0; s == ST_OK && k < n_stages; k++)
        for (size_t l = stage_first[k]; l < stage_end[k]; l++)
            for (size_t i = 0; i < desc->layers[l].n_params; i++) {
                const char *name = desc->layers[l].params[i].name;
                char file[256], key[160];
                shard_file(file, sizeof file, "model", state->step, stage_rank[k], ranks);
                json_object_set_new(maps[0], name, json_string(file));
                shard_file(file, sizeof file, "optimizer", state->step, stage_rank[k], ranks);
                snprintf(key, sizeof key, "m.%s", name);
                json_object_set_new(maps[1], key, json_string(file));
                snprintf(key, sizeof key, "v.%s", name);
                json_object_set_new(maps[1], key, json_string(file));
            }
    char step[32];
    snprintf(step, sizeof step, "%ld", state->step);
    json_t *model = json_pack("{s:{s:s, s:s}, s:o}", "metadata", "format", "pt", "step", step,
                              "weight_map", maps[0]);
    json_t *opt = json_pack("{s:{s:s, s:s}, s:o}", "metadata", "step", step, "settings",
                            state->settings, "weight_map", maps[1]);
    /* The optimizer's index first, the model's last: a crash in between
     * leaves an older model index that still names complete shards. */
    if (s == ST_OK) {
        join(path, sizeof path, dir, "optimizer.safetensors.index.json");
        s = write_json_atomic(opt, path);
    }
    if (s == ST_OK) {
        join(path, sizeof path, dir, "model.safetensors.index.json");
        s = write_json_atomic(model, path);
    }
    json_decref(model);
    json_decref(opt);
    if (s == ST_OK) {
        /* A single-file checkpoint from an earlier run would now be stale. */
        join(path, sizeof path, dir, "model.safetensors");
        unlink(path);
        join(path, sizeof path, dir, "optimizer.safetensors");
        unlink(path);
    }
    return s;
}

/* Removes this rank's shards of other steps (after the new index is in place). */
void st_checkpoint_remove_old_shards(const char *dir, long keep_step, int rank, int ranks)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    char mine[64];
    snprintf(mine, sizeof mine, "-%05d-of-%05d.safetensors", rank + 1, ranks);
    char keep_m[256], keep_o[256];
    shard_file(keep_m, sizeof keep_m, "model", keep_step, rank, ranks);
    shard_file(keep_o, sizeof keep_o, "optimizer", keep_step, rank, ranks);
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t n = strlen(e->d_name), m = strlen(mine);
        bool shard = (strncmp(e->d_name, "model-step", 10) == 0 ||
                      strncmp(e->d_name, "optimizer-step", 14) == 0) &&
                     n > m && strcmp(e->d_name + n - m, mine) == 0;
        if (shard && strcmp(e->d_name, keep_m) != 0 && strcmp(e->d_name, keep_o) != 0) {
            char path[4400];
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            unlink(path);
        }
    }
    closedir(d);
}
