/*
 * adapter.c - LoRA adapters in PEFT's format, merged into weights as they
 * load (see strata/adapter.h).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "strata/adapter.h"
#include "strata/safetensors.h"

#define PEFT_PREFIX "base_model.model."

typedef struct module {
    char *name; /* the base weight's name without ".weight" */
    const st_safetensors_entry *a, *b;
    bool used;
} module;

struct st_adapter {
    char dir[4096];
    char describe[512];
    st_safetensors *file;
    module *m;
    size_t n;
    int r;
    double scale;
};

void st_adapter_close(st_adapter *a)
{
    if (!a)
        return;
    for (size_t i = 0; i < a->n; i++)
        free(a->m[i].name);
    free(a->m);
    st_safetensors_close(a->file);
    free(a);
}

const char *st_adapter_describe(const st_adapter *a)
{
    return a->describe;
}

/* adapter_config.json: LoRA as Strata merges it, or an error naming the field. */
static st_status read_config(st_adapter *a, const char *path, double *alpha)
{
    json_error_t err;
    json_t *j = json_load_file(path, JSON_REJECT_DUPLICATES, &err);
    if (!j)
        return st_error(ST_ERR_FORMAT, "%s: %s (line %d): an adapter folder needs PEFT's "
                                       "adapter_config.json",
                        path, err.text, err.line);
    st_status s = ST_OK;
    const char *type = json_string_value(json_object_get(j, "peft_type"));
    json_t *r = json_object_get(j, "r"), *al = json_object_get(j, "lora_alpha");
    json_t *bias = json_object_get(j, "bias"), *dora = json_object_get(j, "use_dora");
    json_t *rp = json_object_get(j, "rank_pattern"), *ap = json_object_get(j, "alpha_pattern");
    json_t *save = json_object_get(j, "modules_to_save");
    if (!json_is_object(j))
        s = st_error(ST_ERR_FORMAT, "%s: not a JSON object", path);
    else if (type && strcmp(type, "LORA") != 0)
        s = st_error(ST_ERR_FORMAT, "%s: peft_type \"%s\": Strata loads LoRA adapters "
                                         "(peft_type \"LORA\")",
                     path, type);
    else if (!json_is_integer(r) || json_integer_value(r) < 1 || json_integer_value(r) > 65536)
        s = st_error(ST_ERR_FORMAT, "%s: \"r\" (the rank) must be a whole number from 1", path);
    else if (al && !json_is_number(al))
        s = st_error(ST_ERR_FORMAT, "%s: \"lora_alpha\" is not a number", path);
    else if (json_is_true(dora))
        s = st_error(ST_ERR_FORMAT, "%s: use_dora: DoRA adapters are not supported (plain "
                                         "LoRA only)",
                     path);
    else if (bias && !(json_is_string(bias) && strcmp(json_string_value(bias), "none") == 0))
        s = st_error(ST_ERR_FORMAT, "%s: bias \"%s\": adapters that train biases are not "
                                         "supported (bias \"none\" only)",
                     path, json_is_string(bias) ? json_string_value(bias) : "?");
    else if ((rp && json_object_size(rp) > 0) || (ap && json_object_size(ap) > 0))
        s = st_error(ST_ERR_FORMAT, "%s: %s: per-module ranks or alphas are not supported",
                     path, rp && json_object_size(rp) > 0 ? "rank_pattern" : "alpha_pattern");
    else if (save && !json_is_null(save) && !(json_is_array(save) && json_array_size(save) == 0))
        s = st_error(ST_ERR_FORMAT, "%s: modules_to_save: adapters that replace whole "
                                         "modules are not supported",
                     path);
    if (s == ST_OK) {
        a->r = (int)json_integer_value(r);
        *alpha = al ? json_number_value(al) : 8.0; /* PEFT's default */
        a->scale = json_is_true(json_object_get(j, "use_rslora")) ? *alpha / sqrt((double)a->r)
                                                                   : *alpha / a->r;
    }
    json_decref(j);
    return s;
}

static bool suffix(const char *s, const char *suf, size_t *stem)
{
    size_t n = strlen(s), m = strlen(suf);
    if (n < m || strcmp(s + n - m, suf) != 0)
        return false;
    *stem = n - m;
    return true;
}

st_status st_adapter_open(const char *dir, st_adapter **out)
{
    *out = NULL;
    st_adapter *a = calloc(1, sizeof *a);
    if (!a)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    snprintf(a->dir, sizeof a->dir, "%s", dir);
    char path[4200];
    double alpha = 0;
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    st_status s = read_config(a, path, &alpha);
    if (s == ST_OK) {
        snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
        s = st_safetensors_open(path, &a->file);
        if (s == ST_ERR_NOT_FOUND) {
            snprintf(path, sizeof path, "%s/adapter_model.bin", dir);
            FILE *f = fopen(path, "rb");
            if (f) {
                fclose(f);
                s = st_error(ST_ERR_FORMAT,
                             "%s/adapter_model.bin is a PyTorch pickle, which Strata does not "
                             "read: save the adapter with safe_serialization=True (PEFT's "
                             "default) to get adapter_model.safetensors",
                             dir);
            }
        }
    }
    size_t count = s == ST_OK ? st_safetensors_count(a->file) : 0;
    a->m = count ? calloc(count, sizeof *a->m) : NULL;
    if (s == ST_OK && count && !a->m)
        s = st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    for (size_t i = 0; s == ST_OK && i < count; i++) {
        const st_safetensors_entry *e = st_safetensors_at(a->file, i);
        const char *name = e->name;
        size_t stem = 0;
        bool is_a = suffix(name, ".lora_A.weight", &stem), is_b = !is_a && suffix(name, ".lora_B.weight", &stem);
        if (!is_a && !is_b) {
            s = st_error(ST_ERR_FORMAT, "%s: tensor '%s' is not a LoRA weight (lora_A or lora_B)",
                         path, name);
            break;
        }
        size_t skip = strncmp(name, PEFT_PREFIX, strlen(PEFT_PREFIX)) == 0 ? strlen(PEFT_PREFIX) : 0;
        /* GPT2LMHeadModel's blocks are under "transformer.", which Strata's
         * names (as GPT-2 checkpoints') leave out */
        if (stem >= skip + 12 && strncmp(name + skip, "transformer.", 12) == 0)
            skip += 12;
        char mod[512];
        snprintf(mod, sizeof mod, "%.*s", (int)(stem - skip), name + skip);
        if (e->ndim != 2 || (is_a ? e->shape[0] : e->shape[1]) != (uint64_t)a->r) {
            s = st_error(ST_ERR_FORMAT, "%s: '%s' is not a rank-%d matrix ([r, in] for lora_A, "
                                        "[out, r] for lora_B)",
                         path, name, a->r);
            break;
        }
        size_t k = 0;
        while (k < a->n && strcmp(a->m[k].name, mod) != 0)
            k++;
        if (k == a->n) {
            if (!(a->m[k].name = strdup(mod))) {
                s = st_error(ST_ERR_HOST_MEMORY, "out of host memory");
                break;
            }
            a->n++;
        }
        if (is_a)
            a->m[k].a = e;
        else
            a->m[k].b = e;
    }
    for (size_t k = 0; s == ST_OK && k < a->n; k++)
        if (!a->m[k].a || !a->m[k].b)
            s = st_error(ST_ERR_FORMAT, "%s: '%s' has lora_%s but not lora_%s", path, a->m[k].name,
                         a->m[k].a ? "A" : "B", a->m[k].a ? "B" : "A");
    if (s == ST_OK && a->n == 0)
        s = st_error(ST_ERR_FORMAT, "%s holds no LoRA weights", path);
    if (s != ST_OK) {
        st_adapter_close(a);
        return s;
    }
    /* the distinct last parts of the module names, for the description */
    char kinds[256] = "";
    for (size_t k = 0; k < a->n; k++) {
        const char *dot = strrchr(a->m[k].name, '.');
        const char *kind = dot ? dot + 1 : a->m[k].name;
        char token[80];
        snprintf(token, sizeof token, "%s%s", kinds[0] ? ", " : "", kind);
        bool seen = false;
        for (size_t j = 0; j < k && !seen; j++) {
            const char *d2 = strrchr(a->m[j].name, '.');
            seen = strcmp(d2 ? d2 + 1 : a->m[j].name, kind) == 0;
        }
        if (!seen && strlen(kinds) + strlen(token) + 1 < sizeof kinds)
            strcat(kinds, token);
    }
    snprintf(a->describe, sizeof a->describe, "LoRA r %d, alpha %g (scale %g), %zu weights (%s)",
             a->r, alpha, a->scale, a->n, kinds);
    *out = a;
    return ST_OK;
}

st_status st_adapter_apply(st_adapter *a, const char *name, float *w, size_t rows, size_t cols,
                           bool in_out, bool *applied)
{
    *applied = false;
    size_t stem = 0;
    if (!suffix(name, ".weight", &stem))
        return ST_OK;
    module *m = NULL;
    for (size_t k = 0; k < a->n && !m; k++)
        if (strlen(a->m[k].name) == stem && strncmp(a->m[k].name, name, stem) == 0)
            m = &a->m[k];
    if (!m)
        return ST_OK;
    size_t out = in_out ? cols : rows, in = in_out ? rows : cols, r = (size_t)a->r;
    if (m->a->shape[1] != in || m->b->shape[0] != out)
        return st_error(ST_ERR_FORMAT,
                        "%s: '%s' has lora_A [%llu, %llu] and lora_B [%llu, %llu]; the model's "
                        "weight '%s' needs [%zu, %zu] and [%zu, %zu] (an adapter for another "
                        "model?)",
                        a->dir, m->name, (unsigned long long)m->a->shape[0],
                        (unsigned long long)m->a->shape[1], (unsigned long long)m->b->shape[0],
                        (unsigned long long)m->b->shape[1], name, r, in, out, r);
    float *A = malloc(r * in * sizeof *A), *B = malloc(out * r * sizeof *B);
    float *row = malloc(in * sizeof *row);
    st_status s = A && B && row ? ST_OK : st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    if (s == ST_OK && (s = st_safetensors_to_f32(m->a, A)) == ST_OK)
        s = st_safetensors_to_f32(m->b, B);
    float scale = (float)a->scale;
    for (size_t o = 0; s == ST_OK && o < out; o++) {
        /* row o of B @ A, then scaled and added: as (B @ A) * scale + W */
        memset(row, 0, in * sizeof *row);
        for (size_t k = 0; k < r; k++) {
            float b = B[o * r + k];
            const float *ak = A + k * in;
            for (size_t i = 0; i < in; i++)
                row[i] += b * ak[i];
        }
        if (in_out)
            for (size_t i = 0; i < in; i++)
                w[i * out + o] += row[i] * scale;
        else
            for (size_t i = 0; i < in; i++)
                w[o * in + i] += row[i] * scale;
    }
    free(A);
    free(B);
    free(row);
    if (s == ST_OK)
        *applied = m->used = true;
    return s;
}

st_status st_adapter_check_used(const st_adapter *a)
{
    for (size_t k = 0; k < a->n; k++)
        if (!a->m[k].used)
            return st_error(ST_ERR_FORMAT,
                            "%s: the adapter has '%s', which is not a weight of the model (an "
                            "adapter for another model?)",
                            a->dir, a->m[k].name);
    return ST_OK;
}
