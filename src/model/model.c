/*
 * model.c - what every family shares: config.json in and out (the family
 * chosen by model_type), the description built by the family's file, costs,
 * lookups, and the buffer sizes of a stage (st_stage_sizes_of), which the
 * stage allocates and the planner predicts.
 */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/atomic.h"
#include "core/file.h"
#include "model/family.h"

static const st_family_ops *const families[ST_FAMILIES] = {
    [ST_FAMILY_GPT2] = &st_gpt2_family,
    [ST_FAMILY_LLAMA] = &st_llama_family,
};

const char *st_family_name(st_family f)
{
    return (unsigned)f < ST_FAMILIES ? families[f]->name : "?";
}

static const st_family_ops *family_of(const st_model_config *c)
{
    return (unsigned)c->family < ST_FAMILIES ? families[c->family] : NULL;
}

/* ---- config.json ------------------------------------------------------------ */

st_status st_json_int(const char *src, const char *key, json_t *v, long max, int *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > max)
        return st_error(ST_ERR_FORMAT, "%s: \"%s\" must be an integer from 1 to %ld", src, key,
                        max);
    *out = (int)json_integer_value(v);
    return ST_OK;
}

st_status st_json_bool(const char *src, const char *key, json_t *v, bool want, const char *why)
{
    if (!json_is_boolean(v))
        return st_error(ST_ERR_FORMAT, "%s: \"%s\" must be true or false", src, key);
    if (json_is_true(v) != want)
        return st_error(ST_ERR_UNSUPPORTED, "%s: \"%s\": %s is not supported: %s", src, key,
                        want ? "false" : "true", why);
    return ST_OK;
}

st_status st_json_number(const char *src, const char *key, json_t *v, double *out)
{
    if (!json_is_number(v) || !isfinite(json_number_value(v)))
        return st_error(ST_ERR_FORMAT, "%s: \"%s\" must be a number", src, key);
    *out = json_number_value(v);
    return ST_OK;
}

st_status st_model_config_parse(const char *json_text, const char *src, st_model_config *out)
{
    json_error_t jerr;
    json_t *root = json_loads(json_text, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return st_error(ST_ERR_FORMAT, "%s: not valid JSON (line %d, column %d): %s", src,
                        jerr.line, jerr.column, jerr.text);
    st_status s = ST_OK;
    st_model_config c;
    memset(&c, 0, sizeof c);
    if (!json_is_object(root)) {
        s = st_error(ST_ERR_FORMAT, "%s: the top level must be a JSON object", src);
        goto done;
    }
    /* The family from model_type; a file without one is GPT-2 (what Strata
     * wrote before it had families, and what GPT-2 configs often omit). */
    json_t *mt = json_object_get(root, "model_type");
    const char *type = mt ? json_string_value(mt) : "gpt2";
    const st_family_ops *fam = NULL;
    for (int f = 0; type && f < ST_FAMILIES && !fam; f++)
        for (const char *const *t = families[f]->model_types; *t && !fam; t++)
            if (strcmp(*t, type) == 0)
                fam = families[f];
    if (!fam) {
        s = st_error(ST_ERR_UNSUPPORTED,
                     "%s: \"model_type\" %s%s%s is not supported: Strata runs \"gpt2\", "
                     "\"llama\", \"mistral\" and \"qwen2\" models",
                     src, type ? "\"" : "", type ? type : "(not a string)", type ? "\"" : "");
        goto done;
    }
    c.family = fam->family;
    snprintf(c.model_type, sizeof c.model_type, "%s", type);
    if ((s = fam->config_from_json(root, src, &c)) != ST_OK)
        goto done;
    st_model_config_complete(&c);
    if ((s = st_model_config_check(&c)) != ST_OK) {
        st_error_context("%s", src);
        goto done;
    }
    *out = c;
done:
    json_decref(root);
    return s;
}

void st_model_config_complete(st_model_config *c)
{
    if (c->n_kv_head == 0)
        c->n_kv_head = c->n_head;
    if (c->family == ST_FAMILY_GPT2) {
        c->tied = true;
        if (!c->model_type[0])
            snprintf(c->model_type, sizeof c->model_type, "gpt2");
    } else if (c->family == ST_FAMILY_LLAMA) {
        if (!c->model_type[0])
            snprintf(c->model_type, sizeof c->model_type, "llama");
        if (c->rope_theta == 0)
            c->rope_theta = 10000.0;
    }
}

st_status st_model_config_check(const st_model_config *c)
{
    const st_family_ops *fam = family_of(c);
    if (!fam)
        return st_error(ST_ERR_INVALID, "unknown model family %d", (int)c->family);
    return fam->config_check(c);
}

st_status st_model_config_load(const char *path, st_model_config *out)
{
    char *text;
    st_status s = st_read_text_file(path, "model config", &text, NULL);
    if (s != ST_OK)
        return s;
    s = st_model_config_parse(text, path, out);
    free(text);
    return s;
}

char *st_model_config_json(const st_model_config *c)
{
    const st_family_ops *fam = family_of(c);
    json_t *root = fam ? fam->config_to_json(c) : NULL;
    char *text = root ? json_dumps(root, JSON_INDENT(2) | JSON_SORT_KEYS) : NULL;
    json_decref(root);
    return text;
}

st_status st_model_config_save(const st_model_config *c, const char *path)
{
    char *text = st_model_config_json(c);
    if (!text)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory writing %s", path);
    size_t len = strlen(text);
    text[len] = '\n'; /* json_dumps leaves the terminator: the newline replaces it */
    st_status s = st_write_file_atomic(path, text, len + 1, NULL);
    free(text);
    return s;
}

/* ---- the description ---------------------------------------------------------- */

void st_desc_add_param(st_layer_desc *l, const char *name, int ndim, size_t d0, size_t d1,
                       st_init init, double std, bool decay)
{
    if (l->n_params >= ST_MAX_LAYER_PARAMS) {
        fprintf(stderr, "strata: %s:%d: too many parameters in layer %s\n", __FILE__, __LINE__,
                l->name);
        abort();
    }
    st_param_desc *p = &l->params[l->n_params++];
    snprintf(p->name, sizeof p->name, "%s", name);
    p->ndim = ndim;
    p->shape[0] = d0;
    p->shape[1] = ndim == 2 ? d1 : 1;
    p->numel = d0 * (ndim == 2 ? d1 : 1);
    p->init = init;
    p->init_std = std;
    p->decay = decay;
    l->param_numel += p->numel;
}

/* ---- LoRA targets ---------------------------------------------------------------- */

static const char *const llama_targets[] = {"q_proj",    "k_proj",  "v_proj",    "o_proj",
                                            "gate_proj", "up_proj", "down_proj", NULL};
/* PEFT matches a target against the end of a module's name: "attn.c_proj"
 * is GPT-2's attention projection, "mlp.c_proj" its MLP's. */
static const char *const gpt2_targets[] = {"c_attn", "attn.c_proj", "c_fc", "mlp.c_proj", NULL};

const char *const *st_lora_target_names(st_family f)
{
    return f == ST_FAMILY_LLAMA ? llama_targets : gpt2_targets;
}

st_status st_lora_targets_parse(st_family f, const char *list, unsigned *targets)
{
    const char *const *names = st_lora_target_names(f);
    *targets = 0;
    if (strcmp(list, "all") == 0) {
        for (int i = 0; names[i]; i++)
            *targets |= 1u << i;
        return ST_OK;
    }
    const char *p = list;
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        int i = 0;
        while (names[i] && !(strlen(names[i]) == len && strncmp(names[i], p, len) == 0))
            i++;
        if (!names[i]) {
            char all[160];
            st_lora_targets_format(f, ~0u, all, sizeof all);
            return st_error(ST_ERR_INVALID,
                            "--lora-targets: '%.*s' is not a projection of a %s model (it has "
                            "%s; or give 'all')",
                            (int)len, p, st_family_name(f), all[0] ? all : "none");
        }
        *targets |= 1u << i;
        p += len + (comma ? 1 : 0);
    }
    if (*targets == 0)
        return st_error(ST_ERR_INVALID, "--lora-targets: no projection named");
    return ST_OK;
}

void st_lora_targets_format(st_family f, unsigned targets, char *out, size_t size)
{
    const char *const *names = st_lora_target_names(f);
    size_t n = 0;
    out[0] = '\0';
    for (int i = 0; names[i]; i++)
        if (targets & (1u << i)) {
            int w = snprintf(out + n, n < size ? size - n : 0, "%s%s", n ? "," : "", names[i]);
            n += w > 0 ? (size_t)w : 0;
        }
}

static st_status lora_check(const st_model_config *c)
{
    const st_lora *lo = &c->lora;
    if (lo->rank == 0)
        return ST_OK;
    unsigned all = 0;
    for (int i = 0; st_lora_target_names(c->family)[i]; i++)
        all |= 1u << i;
    int smallest = c->n_embd / c->n_head * c->n_kv_head;
    if (lo->rank < 0 || lo->rank > smallest)
        return st_error(ST_ERR_INVALID,
                        "--lora %d: the rank must be 1 to %d (the narrowest projection of the "
                        "model)",
                        lo->rank, smallest);
    if (!(lo->alpha > 0) || !isfinite(lo->alpha))
        return st_error(ST_ERR_INVALID, "--lora-alpha %g: must be positive", (double)lo->alpha);
    if ((lo->targets & all) == 0 || (lo->targets & ~all) != 0)
        return st_error(ST_ERR_INVALID, "LoRA targets 0x%x: none or unknown projections",
                        lo->targets);
    return ST_OK;
}

st_status st_model_describe(const st_model_config *cfg, st_model_desc **out)
{
    st_model_config c = *cfg;
    st_model_config_complete(&c);
    st_status s = st_model_config_check(&c);
    if (s != ST_OK)
        return s;
    if ((s = lora_check(&c)) != ST_OK)
        return s;
    const st_family_ops *fam = family_of(cfg);
    st_model_desc *d = calloc(1, sizeof *d);
    size_t n = fam->n_layers(cfg);
    st_layer_desc *layers = calloc(n, sizeof *layers);
    if (!d || !layers) {
        free(d);
        free(layers);
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory describing the model");
    }
    d->cfg = *cfg;
    st_model_config_complete(&d->cfg);
    d->n_layers = n;
    d->layers = layers;
    fam->describe(&d->cfg, layers);
    for (size_t i = 0; i < n; i++) {
        d->param_numel += layers[i].param_numel;
        for (size_t j = 0; j < layers[i].n_params; j++) {
            d->any_frozen |= layers[i].params[j].frozen;
            d->train_numel += layers[i].params[j].frozen ? 0 : layers[i].params[j].numel;
        }
    }
    *out = d;
    return ST_OK;
}

void st_model_desc_destroy(st_model_desc *desc)
{
    if (!desc)
        return;
    free(desc->layers);
    free(desc);
}

double st_layer_fwd_flops(const st_layer_desc *l, size_t B, size_t T)
{
    return (double)B * (double)T * (l->fwd_flops_per_token + l->fwd_flops_per_token_ctx * (double)T);
}

double st_layer_bwd_flops(const st_layer_desc *l, size_t B, size_t T)
{
    return (double)B * (double)T * (l->bwd_flops_per_token + l->bwd_flops_per_token_ctx * (double)T);
}

size_t st_layer_act_floats(const st_layer_desc *l, size_t B, size_t T)
{
    size_t N = B * T;
    return N * l->act_per_token + N * T * l->act_per_token_ctx;
}

const st_param_desc *st_model_find_param(const st_model_desc *desc, const char *name,
                                         size_t *layer)
{
    for (size_t i = 0; i < desc->n_layers; i++)
        for (size_t j = 0; j < desc->layers[i].n_params; j++)
            if (strcmp(desc->layers[i].params[j].name, name) == 0) {
                if (layer)
                    *layer = i;
                return &desc->layers[i].params[j];
            }
    return NULL;
}

/* ---- a stage's buffers ------------------------------------------------------------ */

/* Per-layer sizes for one shape, summed and maximised so that any range of
 * layers is answered in about constant time: the planner asks for many. */
struct st_sizes_table {
    const st_model_desc *desc;
    st_stage_options shape;
    size_t n, levels;
    size_t *params, *train, *act, *kv, *consts; /* prefix sums: entry l covers layers [0, l) */
    size_t *half;                        /* parameters stored in 16 bits (prefix sums) */
    size_t *changes;                     /* decay changes within layers [0, l) and between them */
    size_t *bact, *after_block;          /* blocks' activations; layers whose input a block makes */
    size_t **work, **dec, **bmax;        /* sparse tables of the maxima: [k][l] over [l, l + 2^k) */
    size_t **unpack;                     /* the widening scratch a layer's 16-bit matrices need */
};

st_dtype st_param_storage(const st_model_desc *d, const st_param_desc *p, bool training)
{
    st_dtype w = d->cfg.weights;
    if ((w != ST_BF16 && w != ST_F16) || p->ndim != 2 || p->adapter)
        return ST_F32;
    return !training || p->frozen ? w : ST_F32;
}

st_dtype st_kv_storage(const st_model_desc *d)
{
    st_dtype w = d->cfg.weights;
    if (w != ST_BF16 && w != ST_F16)
        return ST_F32;
    /* GPT-2's larger heads take the products' path (stage/gpt2_layers.c);
     * Llama's decoding always reads through cl/flash.cl */
    if (d->cfg.family == ST_FAMILY_GPT2 && !st_attention_is_flash(d->cfg.n_embd, d->cfg.n_head))
        return ST_F32;
    return w;
}

void st_sizes_table_free(st_sizes_table *t)
{
    if (!t)
        return;
    free(t->params);
    free(t->train);
    free(t->act);
    free(t->kv);
    free(t->consts);
    free(t->changes);
    free(t->bact);
    free(t->after_block);
    free(t->half);
    for (size_t k = 0; k < t->levels; k++) {
        free(t->work ? t->work[k] : NULL);
        free(t->dec ? t->dec[k] : NULL);
        free(t->bmax ? t->bmax[k] : NULL);
        free(t->unpack ? t->unpack[k] : NULL);
    }
    free(t->work);
    free(t->dec);
    free(t->bmax);
    free(t->unpack);
    free(t);
}

st_status st_sizes_table_make(const st_model_desc *d, const st_stage_options *shape,
                              st_sizes_table **out)
{
    size_t n = d->n_layers;
    for (size_t l = 0; l < n; l++)
        if (d->layers[l].n_params == 0)
            return st_error(ST_ERR_INVALID, "internal: layer %s owns no parameters",
                            d->layers[l].name);
    st_sizes_table *t = calloc(1, sizeof *t);
    if (!t)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    t->desc = d;
    t->shape = *shape;
    t->n = n;
    t->levels = 1;
    while (((size_t)1 << t->levels) <= n)
        t->levels++;
    size_t **arrays[9] = {&t->params, &t->train,  &t->act,  &t->kv,          &t->consts,
                          &t->changes, &t->bact,  &t->after_block, &t->half};
    bool ok = true;
    for (int i = 0; i < 9; i++)
        ok = ok && (*arrays[i] = calloc(n + 1, sizeof(size_t)));
    ok = ok && (t->work = calloc(t->levels, sizeof *t->work)) &&
         (t->dec = calloc(t->levels, sizeof *t->dec)) &&
         (t->bmax = calloc(t->levels, sizeof *t->bmax)) &&
         (t->unpack = calloc(t->levels, sizeof *t->unpack));
    for (size_t k = 0; ok && k < t->levels; k++)
        ok = (t->work[k] = calloc(n, sizeof(size_t))) && (t->dec[k] = calloc(n, sizeof(size_t))) &&
             (t->bmax[k] = calloc(n, sizeof(size_t))) && (t->unpack[k] = calloc(n, sizeof(size_t)));
    if (!ok) {
        st_sizes_table_free(t);
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory sizing %zu layers", n);
    }
    size_t B = shape->batch > 0 ? (size_t)shape->batch : 0;
    size_t T = shape->seq > 0 ? (size_t)shape->seq : 0, N = B * T;
    size_t S = shape->kv_seq > 0 ? (size_t)shape->kv_seq : 0;
    size_t Q = shape->kv_seqs > 0 ? (size_t)shape->kv_seqs : 1;
    size_t P = (size_t)st_decode_rows(shape->prefill, shape->kv_seqs);
    for (size_t l = 0; l < n; l++) {
        const st_layer_desc *ld = &d->layers[l];
        size_t ch = 0;
        for (size_t i = 1; i < ld->n_params; i++)
            ch += ld->params[i].decay != ld->params[i - 1].decay;
        if (l > 0)
            ch += d->layers[l - 1].params[d->layers[l - 1].n_params - 1].decay !=
                  ld->params[0].decay;
        t->params[l + 1] = t->params[l] + ld->param_numel;
        size_t tr = 0;
        for (size_t i = 0; i < ld->n_params; i++)
            tr += ld->params[i].frozen ? 0 : ld->params[i].numel;
        t->train[l + 1] = t->train[l] + tr;
        /* 16-bit storage: the layer's own and the copies of tied ones it
         * uses (a copy is counted in the range when its owner is outside) */
        size_t half = 0, wide = 0;
        for (size_t i = 0; i < ld->n_params + ld->n_tied; i++) {
            const st_param_desc *p = i < ld->n_params
                                         ? &ld->params[i]
                                         : &d->layers[ld->tied[i - ld->n_params].layer]
                                                .params[ld->tied[i - ld->n_params].param];
            if (st_param_storage(d, p, shape->training) == ST_F32)
                continue;
            half += i < ld->n_params ? p->numel : 0;
            wide = p->numel > wide ? p->numel : wide;
        }
        t->half[l + 1] = t->half[l] + half;
        t->unpack[0][l] = wide < ST_UNPACK_FLOATS ? wide : ST_UNPACK_FLOATS;
        t->act[l + 1] = t->act[l] + st_layer_act_floats(ld, B, T);
        bool block = ld->kind == ST_LAYER_BLOCK;
        t->bact[l + 1] = t->bact[l] + (block ? st_layer_act_floats(ld, B, T) : 0);
        t->after_block[l + 1] =
            t->after_block[l] + (l > 0 && d->layers[l - 1].kind == ST_LAYER_BLOCK);
        t->bmax[0][l] = block ? st_layer_act_floats(ld, B, T) : 0;
        t->kv[l + 1] = t->kv[l] + Q * S * ld->kv_per_position;
        t->consts[l + 1] = t->consts[l] + ld->consts;
        t->changes[l + 1] = t->changes[l] + ch;
        t->work[0][l] = N * ld->work_per_token + N * T * ld->work_per_token_ctx;
        /* a pass of P rows: P rows of everything, but the head's logits
         * are a row per sequence (its last token's) */
        t->dec[0][l] = (ld->kind == ST_LAYER_HEAD ? Q : P) * (ld->dec + S * ld->dec_per_position);
    }
    for (size_t k = 1; k < t->levels; k++)
        for (size_t l = 0; l + ((size_t)1 << k) <= n; l++) {
            size_t h = l + ((size_t)1 << (k - 1));
            size_t a = t->work[k - 1][l], b = t->work[k - 1][h];
            t->work[k][l] = a > b ? a : b;
            a = t->dec[k - 1][l];
            b = t->dec[k - 1][h];
            t->dec[k][l] = a > b ? a : b;
            a = t->bmax[k - 1][l];
            b = t->bmax[k - 1][h];
            t->bmax[k][l] = a > b ? a : b;
            a = t->unpack[k - 1][l];
            b = t->unpack[k - 1][h];
            t->unpack[k][l] = a > b ? a : b;
        }
    *out = t;
    return ST_OK;
}

static size_t range_max(size_t *const *table, size_t a, size_t b)
{
    size_t k = 0;
    while (((size_t)2 << k) <= b - a)
        k++;
    size_t x = table[k][a], y = table[k][b - ((size_t)1 << k)];
    return x > y ? x : y;
}

/* AdamW's decay runs of a stage when some parameters are frozen: the
 * trainable ones in the stage's buffer order (per layer, the copies of
 * tied parameters owned before the stage, then its own), a run per change
 * of setting; 0 when nothing trains. */
static size_t runs_of_trainable(const st_model_desc *desc, size_t first, size_t end)
{
    size_t runs = 0;
    int prev = -1;
    for (size_t l = first; l < end; l++) {
        const st_layer_desc *ld = &desc->layers[l];
        for (size_t k = 0; k < ld->n_tied + ld->n_params; k++) {
            const st_param_desc *p;
            if (k < ld->n_tied) {
                if (ld->tied[k].layer >= first)
                    continue;
                p = &desc->layers[ld->tied[k].layer].params[ld->tied[k].param];
            } else {
                p = &ld->params[k - ld->n_tied];
            }
            if (p->frozen)
                continue;
            runs += prev != (int)p->decay;
            prev = p->decay;
        }
    }
    return runs;
}

void st_sizes_table_range(const st_sizes_table *t, size_t first, size_t end, int slots,
                          st_stage_sizes *out)
{
    const st_model_desc *desc = t->desc;
    const st_stage_options *o = &t->shape;
    st_stage_sizes z;
    memset(&z, 0, sizeof z);
    size_t B = o->batch > 0 ? (size_t)o->batch : 0, T = o->seq > 0 ? (size_t)o->seq : 0;
    size_t N = B * T, S = o->kv_seq > 0 ? (size_t)o->kv_seq : 0;
    size_t P = (size_t)st_decode_rows(o->prefill, o->kv_seqs);
    size_t nslots = slots > 0 ? (size_t)slots : 1;
    /* The stream between layers: the input boundary (or the embedding's output). */
    size_t in_floats = first > 0 ? desc->layers[first - 1].out_floats_per_token
                                 : desc->layers[0].out_floats_per_token;
    bool has_head = desc->layers[end - 1].kind == ST_LAYER_HEAD;
    z.param_numel = t->params[end] - t->params[first];
    z.train_numel = t->train[end] - t->train[first];
    z.half_numel = t->half[end] - t->half[first];
    z.unpack_floats = range_max(t->unpack, first, end);
    /* Decay runs: one more than the changes along the stage's parameters;
     * the change into the first layer is not the stage's. */
    size_t changes = t->changes[end] - t->changes[first + 1];
    for (size_t i = 1; i < desc->layers[first].n_params; i++)
        changes += desc->layers[first].params[i].decay != desc->layers[first].params[i - 1].decay;
    /* Copies of tied parameters owned before the stage sit before their
     * user's own parameters: they change the runs there. */
    for (size_t l = first; l < end; l++) {
        const st_layer_desc *ld = &desc->layers[l];
        int prev = l > first ? desc->layers[l - 1].params[desc->layers[l - 1].n_params - 1].decay
                             : -1;
        int flag = prev;
        size_t extra = 0;
        bool any = false;
        for (size_t k = 0; k < ld->n_tied; k++) {
            const st_tied_ref *r = &ld->tied[k];
            if (r->layer >= first)
                continue;
            const st_param_desc *p = &desc->layers[r->layer].params[r->param];
            z.param_numel += p->numel;
            z.train_numel += p->frozen ? 0 : p->numel;
            z.half_numel += st_param_storage(desc, p, o->training) == ST_F32 ? 0 : p->numel;
            extra += flag >= 0 && flag != (int)p->decay;
            flag = p->decay;
            any = true;
        }
        if (!any)
            continue;
        extra += flag != (int)ld->params[0].decay;
        if (prev >= 0)
            changes -= prev != (int)ld->params[0].decay; /* replaced by the path through the copies */
        changes += extra;
    }
    z.param_buffers = o->training ? 4 : 1;
    if (desc->any_frozen)
        z.adam_run_ints = o->training ? 3 * runs_of_trainable(desc, first, end) : 0;
    else
        z.adam_run_ints = o->training ? 3 * (changes + 1) : 0;
    if (N > 0) {
        /* Every layer's activations, the stage's input (or the embedding's
         * output) and the gradient arriving at a stage without the head. */
        z.slot_floats = t->act[end] - t->act[first] + N * in_floats + (has_head ? 0 : N * in_floats);
        z.slot_ints = 3 * N; /* tokens, targets, positions (packed documents) */
        if (o->training)
            z.work_floats = N * in_floats + range_max(t->work, first, end) + (end - first) +
                            ST_SUMSQ_PARTS; /* a squared gradient sum per layer */
        if (o->training && o->recompute) {
            /* The blocks' activations once for the stage; per slot, the
             * input of every layer that follows a block (the stage's output
             * too, when a block makes it). */
            size_t kept = t->after_block[end] - t->after_block[first + 1] +
                          (!has_head && desc->layers[end - 1].kind == ST_LAYER_BLOCK);
            z.kept_floats = kept * N * desc->layers[first].out_floats_per_token;
            z.slot_floats += z.kept_floats - (t->bact[end] - t->bact[first]);
            z.recompute_floats = range_max(t->bmax, first, end);
        }
    }
    if (S > 0) {
        size_t kv = t->kv[end] - t->kv[first];
        bool half_kv = st_kv_storage(desc) != ST_F32;
        z.decode_floats = P * in_floats + range_max(t->dec, first, end) + (half_kv ? 0 : kv);
        z.kv_half_numel = half_kv ? kv : 0;
        z.decode_ints = 3 * P; /* the tokens, and the rows' sequences and positions */
    }
    z.consts = t->consts[end] - t->consts[first];
    z.moment_numel = o->training ? z.train_numel : 0;
    z.bytes = 2 * ((uint64_t)z.half_numel + z.kv_half_numel) +
              4 * ((uint64_t)(z.param_numel - z.half_numel) + z.unpack_floats +
                   (o->training ? (uint64_t)z.train_numel + 2 * (uint64_t)z.moment_numel : 0) +
                   z.adam_run_ints +
                   (N > 0 ? (uint64_t)nslots * (z.slot_floats + z.slot_ints) : 0) +
                   z.work_floats + z.recompute_floats + z.consts + z.decode_floats +
                   z.decode_ints);
    *out = z;
}

st_status st_stage_sizes_of(const st_model_desc *desc, const st_stage_options *opt,
                            st_stage_sizes *out)
{
    size_t first = opt->first_layer, end = opt->end_layer ? opt->end_layer : desc->n_layers;
    if (first >= end || end > desc->n_layers)
        return st_error(ST_ERR_INVALID, "layers [%zu, %zu) are not a range of the model's %zu",
                        first, end, desc->n_layers);
    st_sizes_table *t = NULL;
    st_status s = st_sizes_table_make(desc, opt, &t);
    if (s != ST_OK)
        return s;
    st_sizes_table_range(t, first, end, opt->slots, out);
    st_sizes_table_free(t);
    if (opt->training && opt->shards > 1)
        st_stage_sizes_shard(out, opt->shards);
    return ST_OK;
}

void st_stage_sizes_shard(st_stage_sizes *z, int shards)
{
    if (shards <= 1 || z->param_buffers < 4)
        return;
    size_t m = (z->train_numel + (size_t)shards - 1) / (size_t)shards;
    /* each part runs AdamW per parameter piece: no decay runs */
    z->bytes -= 4 * (2 * (uint64_t)(z->moment_numel - m) + z->adam_run_ints);
    z->moment_numel = m;
    z->adam_run_ints = 0;
}
