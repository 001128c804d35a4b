/*
 * stage.c - a stage on one device (see strata/stage.h): the buffers that
 * st_stage_sizes_of counts, the layers' views of them, and the loops that
 * run each layer's operations (src/stage/layer.h) forward, backward and
 * for decoding; initialisation, gradient norm and AdamW over the flat
 * parameter buffer. Nothing here knows a family.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "stage/layer.h"
#include "strata/cl.h"
#include "strata/gemm.h"
#include "strata/profiler.h"
#include "strata/stage.h"

struct st_stage {
    st_device *dev;
    const st_model_desc *desc;
    st_model_config cfg;
    size_t first, end;
    bool has_emb, has_head;
    int B, T, slots, kv_seq, kv_seqs, prefill;
    int rows;               /* decoding: rows one pass may hold (st_decode_rows) */
    unsigned char *seq_seen; /* [kv_seqs]: a pass's check that rows are of distinct sequences */
    int32_t *rows_host;      /* [3 rows]: a pass's table and tokens, written queued from here */
    bool rows_pending;       /* the last pass ended without a blocking read of its own */
    bool training;
    size_t in_floats; /* per token of the stream into the stage */
    st_stage_sizes sizes;

    st_stage_param *params;
    size_t n_params, numel;
    st_tensor *bufs[4];     /* params (those stored as floats), grads, m, v */
    st_tensor *half;        /* the parameters stored in 16 bits (st_param_storage), or NULL */
    st_tensor *unpack;      /* the float scratch they are widened into for products */
    st_tensor **flat[4];    /* a view per parameter of each */

    size_t n_layers;
    st_layer *layers;
    size_t *offsets;        /* per layer: its parameters' offsets (own, then tied) */

    /* per slot */
    st_tensor **slot_buf, **x0, **dout, **tokens, **targets, **out, **pos;
    bool *packed; /* per slot: pos holds packed documents' positions (st_stage_positions) */
    st_tensor **layer_acts; /* [layer * slots + slot] */
    const st_tensor **xin;  /* the input each layer's forward had, same index */
    /* recomputing (opt.recompute): one set of block activations for all
     * slots, and per slot the input of each layer that follows a block
     * [layer * slots + slot] (NULL elsewhere) and the stage's output */
    bool recompute;
    st_tensor *recomp, **kept, **kept_out;
    /* the moments split over replicas: this stage holds and updates the
     * trained elements [mom_lo, mom_hi); peers: every part's stage, in
     * order (set by st_stage_set_peers), through which the moments of a
     * parameter are read and written whole */
    int shards, shard;
    size_t mom_lo, mom_hi;
    st_stage **peers;
    const float *whole[2]; /* the parts in other processes: both moments whole on the
                            * host for a save (st_stage_moments_host), else NULL */

    st_tensor *scratch, *dres, *work, *sumsq_acc, *sumsq_parts;
    st_tensor *adam_runs;
    int adam_n_runs;        /* -1: parameters not in offset order, one launch each */
    size_t adam_span;       /* elements from the first parameter to the end of the last */

    st_tensor *dec_buf, *dec_x, *dec_work, *token, *rowtab;
    st_tensor *kv_half;     /* the KV caches when stored in 16 bits (st_kv_storage), or NULL */
    st_tensor **kv;         /* per layer: views of dec_buf or kv_half */
    st_tensor *consts_buf, **consts;
    uint64_t bytes;
};

/* ---- views ------------------------------------------------------------------- */

st_tensor *st_carve(st_carver *c, size_t n)
{
    st_tensor *t = NULL;
    if (c->status != ST_OK || n == 0)
        return NULL;
    size_t shape[1] = {n};
    c->status = st_tensor_view(c->base, c->off, 1, shape, &t);
    c->off += n;
    return t;
}

st_tensor *st_view_at(st_tensor *base, size_t off, size_t n, st_status *s)
{
    st_tensor *t = NULL;
    if (*s != ST_OK || n == 0)
        return NULL;
    size_t shape[1] = {n};
    *s = st_tensor_view(base, off, 1, shape, &t);
    return t;
}

st_status st_pass_out_rows(const st_pass *ps, st_tensor *x, size_t C, st_tensor **view)
{
    size_t shape[2] = {(size_t)ps->n_out, C};
    if (ps->n_out == 1) /* one row: a view of it where it is */
        return st_tensor_view(x, (size_t)ps->out[0] * C, 2, shape, view);
    /* Row out[j] moves to row j: out rises, so out[j] >= j, and no row is
     * overwritten before it has moved. */
    st_status s = ST_OK;
    for (int j = 0; s == ST_OK && j < ps->n_out; j++)
        if (ps->out[j] != j)
            s = st_tensor_copy(x, (size_t)j * C, x, (size_t)ps->out[j] * C, C);
    return s != ST_OK ? s : st_tensor_view(x, 0, 2, shape, view);
}

void st_views_destroy(st_tensor **views, size_t n)
{
    if (!views)
        return;
    for (size_t i = 0; i < n; i++)
        st_tensor_destroy(views[i]);
}

void st_layer_scope(const st_layer *l, bool enter)
{
    if (l->desc->kind == ST_LAYER_BLOCK)
        st_profiler_scope_block(enter);
}

const st_layer_ops *st_layer_ops_of(st_layer_type type)
{
    switch (type) {
    case ST_GPT2_EMBEDDING: return &st_gpt2_embedding_ops;
    case ST_GPT2_BLOCK: return &st_gpt2_block_ops;
    case ST_GPT2_HEAD: return &st_gpt2_head_ops;
    case ST_LLAMA_EMBEDDING: return &st_llama_embedding_ops;
    case ST_LLAMA_BLOCK: return &st_llama_block_ops;
    case ST_LLAMA_HEAD: return &st_llama_head_ops;
    case ST_LAYER_TYPES: break;
    }
    return NULL;
}

/* ---- queries ------------------------------------------------------------------- */

st_device *st_stage_device(const st_stage *g)
{
    return g->dev;
}

bool st_stage_has_embedding(const st_stage *g)
{
    return g->has_emb;
}

bool st_stage_has_head(const st_stage *g)
{
    return g->has_head;
}

size_t st_stage_n_layers(const st_stage *g)
{
    return g->end - g->first;
}

size_t st_stage_n_params(const st_stage *g)
{
    return g->n_params;
}

const st_stage_param *st_stage_param_at(const st_stage *g, size_t i)
{
    return i < g->n_params ? &g->params[i] : NULL;
}

long st_stage_param_find(const st_stage *g, const char *name)
{
    for (size_t i = 0; i < g->n_params; i++)
        if (strcmp(g->params[i].desc->name, name) == 0)
            return (long)i;
    return -1;
}

size_t st_stage_param_numel(const st_stage *g)
{
    return g->numel;
}

size_t st_stage_train_numel(const st_stage *g)
{
    return g->training ? g->sizes.train_numel : 0;
}

void st_stage_moments_host(st_stage *g, const float *m, const float *v)
{
    g->whole[0] = m;
    g->whole[1] = v;
}

void st_stage_moment_range(const st_stage *g, size_t *lo, size_t *hi)
{
    *lo = g->shards > 1 ? g->mom_lo : 0;
    *hi = g->shards > 1 ? g->mom_hi : st_stage_train_numel(g);
}

uint64_t st_stage_bytes(const st_stage *g)
{
    return g->bytes;
}

st_tensor *st_stage_tensor(const st_stage *g, st_stage_buf which)
{
    return g->bufs[which];
}

st_tensor *st_stage_half_tensor(const st_stage *g)
{
    return g->half;
}

/* ---- creation ------------------------------------------------------------------- */

static st_status make_buffer(st_stage *g, st_dtype dt, size_t n, const char *name, st_tensor **out)
{
    size_t shape[1] = {n};
    st_status s = st_tensor_create(g->dev, dt, 1, shape, name, out);
    if (s == ST_OK)
        g->bytes += n * st_dtype_size(dt);
    return s;
}

/* The stage's parameters: per layer, copies of the tied parameters it uses
 * and another stage owns, then its own; each layer's offsets (own, then
 * tied: the owner's when the owner is here). The trainable ones come first
 * in the buffer, in that order, so that the gradients and the moments (of
 * those only) line up with the start of the parameter buffer; the frozen
 * ones follow. Nothing frozen: the same order throughout. */
static st_status lay_out_params(st_stage *g)
{
    const st_model_desc *d = g->desc;
    size_t n = 0;
    for (size_t l = g->first; l < g->end; l++)
        n += d->layers[l].n_params + d->layers[l].n_tied;
    g->params = calloc(n + 1, sizeof *g->params);
    g->offsets = calloc(n + 1, sizeof *g->offsets);
    if (!g->params || !g->offsets)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    size_t k = 0, tpos = 0, fpos = g->sizes.train_numel, hpos = 0;
    for (size_t l = g->first; l < g->end; l++) {
        const st_layer_desc *ld = &d->layers[l];
        st_layer *L = &g->layers[l - g->first];
        size_t *off = &g->offsets[k];
        L->offset = off;
        k += ld->n_params + ld->n_tied;
        for (size_t t = 0; t < ld->n_tied; t++) {
            const st_tied_ref *r = &ld->tied[t];
            const st_param_desc *p = &d->layers[r->layer].params[r->param];
            if (r->layer >= l)
                return st_error(ST_ERR_INVALID,
                                "internal: layer %s uses a parameter of a later layer", ld->name);
            if (r->layer >= g->first) {
                off[ld->n_params + t] = g->layers[r->layer - g->first].offset[r->param];
                continue;
            }
            st_dtype dt = st_param_storage(d, p, g->training);
            size_t *pos = dt != ST_F32 ? &hpos : g->training && p->frozen ? &fpos : &tpos;
            off[ld->n_params + t] = *pos;
            g->params[g->n_params++] = (st_stage_param){p, *pos, true, dt};
            *pos += p->numel;
            g->numel += p->numel;
        }
        for (size_t i = 0; i < ld->n_params; i++) {
            st_dtype dt = st_param_storage(d, &ld->params[i], g->training);
            size_t *pos = dt != ST_F32                             ? &hpos
                          : g->training && ld->params[i].frozen ? &fpos
                                                                : &tpos;
            off[i] = *pos;
            g->params[g->n_params++] = (st_stage_param){&ld->params[i], *pos, false, dt};
            *pos += ld->params[i].numel;
            g->numel += ld->params[i].numel;
        }
    }
    /* training: the trained floats, then the frozen floats; else the floats */
    size_t floats = g->numel - hpos;
    bool laid = g->training ? tpos == g->sizes.train_numel && fpos == floats : tpos == floats;
    if (g->numel != g->sizes.param_numel || hpos != g->sizes.half_numel || !laid)
        return st_error(ST_ERR_INVALID,
                        "internal: parameters laid out %zu (%zu trained, %zu in 16 bits), sized "
                        "%zu (%zu, %zu)",
                        g->numel, tpos, hpos, g->sizes.param_numel, g->sizes.train_numel,
                        g->sizes.half_numel);
    return ST_OK;
}

/* A view per parameter of buffer `which`, and each layer's views of it. */
static st_status make_param_views(st_stage *g, int which)
{
    g->flat[which] = calloc(g->n_params ? g->n_params : 1, sizeof *g->flat[which]);
    if (!g->flat[which])
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    st_status s = ST_OK;
    for (size_t i = 0; s == ST_OK && i < g->n_params; i++) {
        bool half = which == ST_STAGE_PARAMS && g->params[i].dtype != ST_F32;
        if (which == ST_STAGE_PARAMS || !g->params[i].desc->frozen)
            s = st_tensor_view(half ? g->half : g->bufs[which], g->params[i].offset,
                               g->params[i].desc->ndim, g->params[i].desc->shape,
                               &g->flat[which][i]);
        if (s == ST_OK && half) /* products widen it into the scratch */
            st_tensor_set_unpack(g->flat[which][i], g->unpack);
    }
    if (which > ST_STAGE_GRADS)
        return s;
    for (size_t l = 0; s == ST_OK && l < g->n_layers; l++) {
        st_layer *L = &g->layers[l];
        const st_layer_desc *ld = L->desc;
        size_t n = ld->n_params + ld->n_tied;
        st_tensor **v = calloc(n ? n : 1, sizeof *v);
        if (!v)
            return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
        if (which == ST_STAGE_PARAMS)
            L->p = v;
        else
            L->g = v;
        for (size_t j = 0; s == ST_OK && j < n; j++) {
            const st_param_desc *p =
                j < ld->n_params
                    ? &ld->params[j]
                    : &g->desc->layers[ld->tied[j - ld->n_params].layer]
                           .params[ld->tied[j - ld->n_params].param];
            bool half = which == ST_STAGE_PARAMS && st_param_storage(g->desc, p, g->training) != ST_F32;
            if (which == ST_STAGE_PARAMS || !p->frozen)
                s = st_tensor_view(half ? g->half : g->bufs[which], L->offset[j], p->ndim,
                                   p->shape, &v[j]);
            if (s == ST_OK && half)
                st_tensor_set_unpack(v[j], g->unpack);
        }
    }
    return s;
}

static st_status make_slots(st_stage *g)
{
    size_t S = (size_t)g->slots, n = g->n_layers, N = (size_t)g->B * g->T;
    size_t in = N * g->in_floats;
    st_tensor ***arrays[7] = {&g->slot_buf, &g->x0,  &g->dout, &g->tokens,
                              &g->targets,  &g->out, &g->pos};
    for (int i = 0; i < 7; i++)
        if (!(*arrays[i] = calloc(S, sizeof(st_tensor *))))
            return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    if (!(g->packed = calloc(S, sizeof *g->packed)))
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    g->layer_acts = calloc(S * n, sizeof *g->layer_acts);
    g->xin = calloc(S * n, sizeof *g->xin);
    g->kept = calloc(S * n, sizeof *g->kept);
    g->kept_out = calloc(S, sizeof *g->kept_out);
    if (!g->layer_acts || !g->xin || !g->kept || !g->kept_out)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    st_status s = ST_OK;
    char name[96];
    size_t C = n ? g->layers[0].desc->out_floats_per_token : 0;
    if (g->recompute && g->sizes.recompute_floats > 0 &&
        (s = make_buffer(g, ST_F32, g->sizes.recompute_floats, "recomputed activations",
                         &g->recomp)) != ST_OK)
        return s;
    for (size_t k = 0; s == ST_OK && k < S; k++) {
        snprintf(name, sizeof name, "activations %zu", k);
        if ((s = make_buffer(g, ST_F32, g->has_head ? in : 2 * in, name, &g->slot_buf[k])) !=
                ST_OK ||
            (s = make_buffer(g, ST_I32, N, "tokens", &g->tokens[k])) != ST_OK ||
            (s = make_buffer(g, ST_I32, N, "targets", &g->targets[k])) != ST_OK ||
            (s = make_buffer(g, ST_I32, N, "positions", &g->pos[k])) != ST_OK)
            return s;
        st_carver c = {g->slot_buf[k], 0, ST_OK};
        g->x0[k] = st_carve(&c, in);
        g->dout[k] = g->has_head ? NULL : st_carve(&c, in);
        if (c.status != ST_OK)
            return c.status;
        for (size_t l = 0; s == ST_OK && l < n; l++) {
            bool block = g->layers[l].desc->kind == ST_LAYER_BLOCK;
            if (g->recompute && l > 0 && g->layers[l - 1].desc->kind == ST_LAYER_BLOCK) {
                snprintf(name, sizeof name, "input %zu of %s", k, g->layers[l].desc->name);
                if ((s = make_buffer(g, ST_F32, N * C, name, &g->kept[l * S + k])) != ST_OK)
                    break;
            }
            size_t a = st_layer_act_floats(g->layers[l].desc, (size_t)g->B, (size_t)g->T);
            if (a == 0)
                continue;
            if (g->recompute && block) { /* the shared set */
                g->layer_acts[l * S + k] = st_view_at(g->recomp, 0, a, &s);
                continue;
            }
            snprintf(name, sizeof name, "activations %zu of %s", k, g->layers[l].desc->name);
            s = make_buffer(g, ST_F32, a, name, &g->layer_acts[l * S + k]);
        }
        if (s == ST_OK && g->recompute && !g->has_head &&
            g->layers[n - 1].desc->kind == ST_LAYER_BLOCK)
            s = make_buffer(g, ST_F32, N * C, "stage output", &g->kept_out[k]);
    }
    for (size_t l = 0; l < n; l++)
        g->layers[l].acts = &g->layer_acts[l * S];
    return s;
}

static st_status make_scratch(st_stage *g)
{
    size_t N = (size_t)g->B * g->T, work = 0;
    for (size_t l = 0; l < g->n_layers; l++) {
        const st_layer_desc *ld = g->layers[l].desc;
        size_t w = N * ld->work_per_token + N * (size_t)g->T * ld->work_per_token_ctx;
        work = w > work ? w : work;
    }
    st_status s = make_buffer(g, ST_F32, g->sizes.work_floats, "gradient scratch", &g->scratch);
    if (s != ST_OK)
        return s;
    st_carver c = {g->scratch, 0, ST_OK};
    g->dres = st_carve(&c, N * g->in_floats);
    g->work = st_carve(&c, work);
    g->sumsq_acc = st_carve(&c, g->end - g->first);
    g->sumsq_parts = st_carve(&c, ST_SUMSQ_PARTS);
    for (size_t l = 0; l < g->n_layers; l++)
        g->layers[l].work = g->work;
    return c.status;
}

static st_status make_decode(st_stage *g)
{
    size_t S = (size_t)g->kv_seq, Q = (size_t)g->kv_seqs, P = (size_t)g->rows, dec = 0;
    for (size_t l = 0; l < g->n_layers; l++) {
        const st_layer_desc *ld = g->layers[l].desc;
        size_t d = (ld->kind == ST_LAYER_HEAD ? Q : P) * (ld->dec + S * ld->dec_per_position);
        dec = d > dec ? d : dec;
    }
    st_status s = make_buffer(g, ST_F32, g->sizes.decode_floats, "KV cache", &g->dec_buf);
    if (s == ST_OK && g->sizes.kv_half_numel > 0)
        s = make_buffer(g, st_kv_storage(g->desc), g->sizes.kv_half_numel, "KV cache",
                        &g->kv_half);
    if (s != ST_OK || (s = make_buffer(g, ST_I32, P, "token", &g->token)) != ST_OK ||
        (s = make_buffer(g, ST_I32, 2 * P, "decoding rows", &g->rowtab)) != ST_OK)
        return s;
    g->kv = calloc(g->n_layers, sizeof *g->kv);
    g->seq_seen = calloc(Q, 1);
    g->rows_host = malloc(3 * P * sizeof *g->rows_host);
    if (!g->kv || !g->seq_seen || !g->rows_host)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    st_carver c = {g->dec_buf, 0, ST_OK};
    g->dec_x = st_carve(&c, P * g->in_floats);
    g->dec_work = st_carve(&c, dec);
    st_carver kc = {g->kv_half ? g->kv_half : g->dec_buf, g->kv_half ? 0 : c.off, ST_OK};
    for (size_t l = 0; l < g->n_layers; l++) {
        g->kv[l] = st_carve(&kc, Q * S * g->layers[l].desc->kv_per_position);
        g->layers[l].kv = g->kv[l];
        g->layers[l].dec = g->dec_work;
    }
    return c.status != ST_OK ? c.status : kc.status;
}

static st_status make_consts(st_stage *g)
{
    if (g->sizes.consts == 0)
        return ST_OK;
    st_status s = make_buffer(g, ST_F32, g->sizes.consts, "tables", &g->consts_buf);
    if (s != ST_OK)
        return s;
    g->consts = calloc(g->n_layers, sizeof *g->consts);
    if (!g->consts)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    st_carver c = {g->consts_buf, 0, ST_OK};
    for (size_t l = 0; l < g->n_layers; l++)
        g->layers[l].consts = g->consts[l] = st_carve(&c, g->layers[l].desc->consts);
    return c.status;
}

/* The decay runs of the stage's parameters for st_adamw_step_runs:
 * parameters in offset order, a run per change of setting; adam_n_runs -1
 * when the offsets are not in order. */
static st_status make_adam_runs(st_stage *g)
{
    int *t = malloc((3 * g->n_params + 1) * sizeof *t);
    if (!t)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    int n = 0;
    size_t prev_end = 0;
    for (size_t i = 0; i < g->n_params; i++) {
        const st_stage_param *p = &g->params[i];
        int decay = p->desc->decay;
        if (p->desc->frozen)
            continue;
        if (p->offset < prev_end) { /* not in order: the per-parameter path */
            n = -1;
            break;
        }
        size_t start = n == 0 ? 0 : p->offset;
        if (n == 0 || t[3 * (n - 1) + 2] != decay) {
            t[3 * n] = (int)(start >> 31);
            t[3 * n + 1] = (int)(start & 0x7fffffff);
            t[3 * n + 2] = decay;
            n++;
        }
        prev_end = p->offset + p->desc->numel;
    }
    st_status s = ST_OK;
    if (n > 0 && 3 * (size_t)n != g->sizes.adam_run_ints)
        s = st_error(ST_ERR_INVALID, "internal: %d AdamW runs, sized %zu", n,
                     g->sizes.adam_run_ints / 3);
    if (s == ST_OK && g->sizes.adam_run_ints > 0 &&
        (s = make_buffer(g, ST_I32, g->sizes.adam_run_ints, "adamw runs", &g->adam_runs)) ==
            ST_OK &&
        n > 0)
        s = st_tensor_write(g->adam_runs, 0, 3 * (size_t)n, t);
    free(t);
    g->adam_n_runs = n;
    g->adam_span = prev_end;
    return s;
}

void st_stage_destroy(st_stage *g)
{
    if (!g)
        return;
    for (size_t l = 0; g->layers && l < g->n_layers; l++) {
        st_layer *L = &g->layers[l];
        if (L->ops && L->state)
            L->ops->unbind(L);
        size_t n = L->desc->n_params + L->desc->n_tied;
        st_views_destroy(L->p, n);
        st_views_destroy(L->g, n);
        free(L->p);
        free(L->g);
    }
    size_t S = (size_t)g->slots;
    if (g->slot_buf)
        for (size_t k = 0; k < S; k++) {
            st_tensor *t[] = {g->x0[k],      g->dout[k], g->tokens[k], g->targets[k],
                              g->slot_buf[k], g->pos[k]};
            st_views_destroy(t, 6);
        }
    if (g->layer_acts)
        st_views_destroy(g->layer_acts, S * g->n_layers);
    if (g->kept)
        st_views_destroy(g->kept, S * g->n_layers);
    if (g->kept_out)
        st_views_destroy(g->kept_out, S);
    free(g->kept);
    free(g->kept_out);
    free(g->peers);
    st_tensor_destroy(g->recomp);
    st_tensor **arrays[] = {g->slot_buf, g->x0, g->dout, g->tokens, g->targets, g->out, g->pos};
    free(g->packed);
    for (size_t i = 0; i < sizeof arrays / sizeof arrays[0]; i++)
        free(arrays[i]);
    free(g->layer_acts);
    free(g->xin);
    st_tensor *t[] = {g->dres, g->work, g->sumsq_acc, g->sumsq_parts, g->scratch,
                      g->adam_runs, g->dec_x, g->dec_work, g->token, g->rowtab};
    st_views_destroy(t, sizeof t / sizeof t[0]);
    if (g->kv)
        st_views_destroy(g->kv, g->n_layers);
    if (g->consts)
        st_views_destroy(g->consts, g->n_layers);
    free(g->kv);
    free(g->seq_seen);
    free(g->rows_host);
    free(g->consts);
    st_tensor_destroy(g->dec_buf);
    st_tensor_destroy(g->kv_half);
    st_tensor_destroy(g->consts_buf);
    for (int w = 0; w < 4; w++) {
        if (g->flat[w])
            st_views_destroy(g->flat[w], g->n_params);
        free(g->flat[w]);
        st_tensor_destroy(g->bufs[w]);
    }
    st_tensor_destroy(g->half);
    st_tensor_destroy(g->unpack);
    free(g->layers);
    free(g->offsets);
    free(g->params);
    free(g);
}

st_status st_stage_create(st_device *dev, const st_model_desc *desc, const st_stage_options *opt,
                          st_stage **out)
{
    st_stage_sizes sizes;
    st_status s = st_stage_sizes_of(desc, opt, &sizes);
    if (s != ST_OK)
        return s;
    size_t first = opt->first_layer, end = opt->end_layer ? opt->end_layer : desc->n_layers;
    if (opt->batch < 0 || opt->seq < 0 || opt->seq > desc->cfg.n_positions ||
        opt->kv_seq < 0 || opt->kv_seq > desc->cfg.n_positions ||
        (opt->training && (opt->batch < 1 || opt->seq < 1)))
        return st_error(ST_ERR_INVALID,
                        "bad sizes: batch %d, sequence %d, KV cache %d (the model has %d "
                        "positions)",
                        opt->batch, opt->seq, opt->kv_seq, desc->cfg.n_positions);
    st_stage *g = calloc(1, sizeof *g);
    if (!g)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    g->dev = dev;
    g->desc = desc;
    g->cfg = desc->cfg;
    g->sizes = sizes;
    g->first = first;
    g->end = end;
    g->B = opt->batch;
    g->T = opt->seq;
    g->slots = opt->slots > 0 ? opt->slots : 1;
    g->kv_seq = opt->kv_seq;
    g->kv_seqs = opt->kv_seqs > 0 ? opt->kv_seqs : 1;
    g->prefill = opt->prefill > 1 ? opt->prefill : 1;
    g->rows = st_decode_rows(opt->prefill, opt->kv_seqs);
    g->training = opt->training;
    g->recompute = opt->training && opt->recompute;
    g->shards = opt->training && opt->shards > 1 ? opt->shards : 1;
    g->shard = g->shards > 1 ? opt->shard : 0;
    if (g->shard < 0 || g->shard >= g->shards)
        s = st_error(ST_ERR_INVALID, "part %d of the moments split in %d", g->shard, g->shards);
    g->mom_lo = (size_t)g->shard * sizes.moment_numel;
    g->mom_hi = g->mom_lo + sizes.moment_numel < sizes.train_numel
                    ? g->mom_lo + sizes.moment_numel
                    : sizes.train_numel;
    if (g->mom_lo > g->mom_hi)
        g->mom_lo = g->mom_hi;
    g->has_emb = desc->layers[first].kind == ST_LAYER_EMBEDDING;
    g->has_head = desc->layers[end - 1].kind == ST_LAYER_HEAD;
    g->in_floats = first > 0 ? desc->layers[first - 1].out_floats_per_token
                             : desc->layers[0].out_floats_per_token;
    g->n_layers = end - first;
    g->layers = calloc(g->n_layers, sizeof *g->layers);
    if (!g->layers) {
        free(g);
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    }
    for (size_t l = 0; l < g->n_layers; l++) {
        st_layer *L = &g->layers[l];
        L->desc = &desc->layers[first + l];
        L->cfg = &g->cfg;
        L->dev = dev;
        L->B = g->B;
        L->T = g->T;
        L->slots = g->slots;
        L->kv_seq = g->kv_seq;
        L->kv_seqs = g->kv_seqs;
        L->prefill = g->rows;
        L->training = g->training;
    }
    if (s == ST_OK)
        s = lay_out_params(g);
    for (size_t l = 0; s == ST_OK && l < g->n_layers; l++)
        if (!(g->layers[l].ops = st_layer_ops_of(g->layers[l].desc->type)))
            s = st_error(ST_ERR_INVALID, "layer %s has no operations", g->layers[l].desc->name);
    static const char *const buf_names[4] = {"parameters", "gradients", "AdamW m", "AdamW v"};
    if (s == ST_OK && sizes.half_numel > 0) {
        char name[40];
        snprintf(name, sizeof name, "parameters (%s)", st_dtype_name(g->cfg.weights));
        size_t shape[1] = {sizes.half_numel};
        if ((s = st_tensor_create(dev, g->cfg.weights, 1, shape, name, &g->half)) == ST_OK)
            g->bytes += sizes.half_numel * st_dtype_size(g->cfg.weights);
        if (s == ST_OK && sizes.unpack_floats > 0)
            s = make_buffer(g, ST_F32, sizes.unpack_floats, "widened weights", &g->unpack);
    }
    for (int w = 0; s == ST_OK && w < sizes.param_buffers; w++) {
        size_t len = w == ST_STAGE_PARAMS ? g->numel - sizes.half_numel
                     : w == ST_STAGE_GRADS ? sizes.train_numel
                                           : sizes.moment_numel;
        if (len > 0 && (s = make_buffer(g, ST_F32, len, buf_names[w], &g->bufs[w])) == ST_OK &&
            (g->shards <= 1 || w <= ST_STAGE_GRADS)) /* a part of the moments: no views */
            s = make_param_views(g, w);
    }
    if (s == ST_OK && g->training && g->shards <= 1)
        s = make_adam_runs(g);
    if (s == ST_OK && g->B > 0) {
        s = make_slots(g);
        if (s == ST_OK && g->training)
            s = make_scratch(g);
    }
    if (s == ST_OK && g->kv_seq > 0)
        s = make_decode(g);
    if (s == ST_OK)
        s = make_consts(g);
    for (size_t l = 0; s == ST_OK && l < g->n_layers; l++) {
        st_layer *L = &g->layers[l];
        L->pbuf = g->bufs[ST_STAGE_PARAMS];
        L->gbuf = g->bufs[ST_STAGE_GRADS];
        L->hbuf = g->half;
        s = L->ops->bind(L);
    }
    for (int k = 0; s == ST_OK && g->out && k < g->slots; k++)
        g->out[k] = g->x0[k];
    if (s == ST_OK && g->bytes != sizes.bytes)
        s = st_error(ST_ERR_INVALID, "internal: the stage allocated %llu bytes, sized %llu",
                     (unsigned long long)g->bytes, (unsigned long long)sizes.bytes);
    if (s != ST_OK) {
        if (first == 0 && end == desc->n_layers)
            st_error_context("setting up the model on %s", st_device_label(dev));
        else
            st_error_context("setting up layers %zu..%zu of the model on %s", first, end - 1,
                             st_device_label(dev));
        st_stage_destroy(g);
        return s;
    }
    *out = g;
    return ST_OK;
}

/* ---- parameters --------------------------------------------------------- */

/* Gradients and moments are kept for trained parameters only. */
static bool has_buffer(const st_stage *g, st_stage_buf which, size_t i)
{
    return i < g->n_params && (g->bufs[which] || (g->shards > 1 && which >= ST_STAGE_ADAM_M)) &&
           (which == ST_STAGE_PARAMS || !g->params[i].desc->frozen);
}

void st_stage_set_peers(st_stage *g, st_stage *const *peers)
{
    if (g->shards <= 1)
        return;
    free(g->peers);
    g->peers = malloc((size_t)g->shards * sizeof *g->peers);
    for (int k = 0; g->peers && k < g->shards; k++)
        g->peers[k] = peers[k];
}

/* A moment of parameter i through the parts that hold its pieces: read
 * (host out) or written (host in). */
static st_status moment_parts(const st_stage *g, st_stage_buf which, size_t i, float *host,
                              bool write)
{
    size_t a = g->params[i].offset, b = a + g->params[i].desc->numel;
    if (!g->peers && write) { /* other processes hold the rest: this part only */
        size_t lo = a > g->mom_lo ? a : g->mom_lo, hi = b < g->mom_hi ? b : g->mom_hi;
        return lo < hi ? st_tensor_write(g->bufs[which], lo - g->mom_lo, hi - lo, host + (lo - a))
                       : ST_OK;
    }
    if (!g->peers && g->whole[which - ST_STAGE_ADAM_M]) {
        memcpy(host, g->whole[which - ST_STAGE_ADAM_M] + a, (b - a) * sizeof *host);
        return ST_OK;
    }
    if (!g->peers)
        return st_error(ST_ERR_INVALID,
                        "internal: the moments are split over processes, and not gathered");
    st_status s = ST_OK;
    for (int k = 0; s == ST_OK && k < g->shards; k++) {
        const st_stage *p = g->peers[k];
        size_t lo = a > p->mom_lo ? a : p->mom_lo, hi = b < p->mom_hi ? b : p->mom_hi;
        if (lo >= hi)
            continue;
        s = write ? st_tensor_write(p->bufs[which], lo - p->mom_lo, hi - lo, host + (lo - a))
                  : st_tensor_read(p->bufs[which], lo - p->mom_lo, hi - lo, host + (lo - a));
    }
    return s;
}

/* A 16-bit parameter as floats: widened when read (exactly), rounded to
 * nearest even when written. */
static st_status half_io(const st_stage *g, size_t i, float *host, bool write)
{
    size_t n = g->params[i].desc->numel;
    uint16_t *h = malloc((n ? n : 1) * sizeof *h);
    if (!h)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory for %zu values", n);
    st_status s = ST_OK;
    if (write) {
        st_f32_to_16(g->params[i].dtype, host, h, n);
        s = st_tensor_write(g->half, g->params[i].offset, n, h);
    } else if ((s = st_tensor_read(g->half, g->params[i].offset, n, h)) == ST_OK) {
        st_16_to_f32(g->params[i].dtype, h, host, n);
    }
    free(h);
    return s;
}

st_status st_stage_read(const st_stage *g, st_stage_buf which, size_t i, float *host)
{
    if (!has_buffer(g, which, i))
        return st_error(ST_ERR_INVALID, "no buffer %d for parameter %zu", (int)which, i);
    if (g->shards > 1 && which >= ST_STAGE_ADAM_M)
        return moment_parts(g, which, i, host, false);
    if (which == ST_STAGE_PARAMS && g->params[i].dtype != ST_F32)
        return half_io(g, i, host, false);
    return st_tensor_read(g->bufs[which], g->params[i].offset, g->params[i].desc->numel, host);
}

st_status st_stage_write(st_stage *g, st_stage_buf which, size_t i, const float *host)
{
    if (!has_buffer(g, which, i))
        return st_error(ST_ERR_INVALID, "no buffer %d for parameter %zu", (int)which, i);
    if (g->shards > 1 && which >= ST_STAGE_ADAM_M)
        return moment_parts(g, which, i, (float *)host, true);
    if (which == ST_STAGE_PARAMS && g->params[i].dtype != ST_F32)
        return half_io(g, i, (float *)host, true);
    return st_tensor_write(g->bufs[which], g->params[i].offset, g->params[i].desc->numel, host);
}

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t name_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

st_status st_stage_init(st_stage *g, uint64_t seed)
{
    size_t biggest = 0;
    for (size_t i = 0; i < g->n_params; i++)
        if (g->params[i].desc->numel > biggest)
            biggest = g->params[i].desc->numel;
    float *host = malloc(biggest * sizeof *host);
    if (!host)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory for %zu floats", biggest);
    st_status s = ST_OK;
    for (size_t i = 0; s == ST_OK && i < g->n_params; i++) {
        const st_param_desc *p = g->params[i].desc;
        if (p->init != ST_INIT_NORMAL) {
            float v = p->init == ST_INIT_ONE ? 1.0f : 0.0f;
            for (size_t j = 0; j < p->numel; j++)
                host[j] = v;
        } else {
            double std = p->init_std;
            uint64_t st = seed ^ name_hash(p->name);
            for (size_t j = 0; j < p->numel; j += 2) {
                /* Box-Muller from two 53-bit uniforms in (0, 1]. */
                double u1 = ((splitmix(&st) >> 11) + 1) * 0x1.0p-53;
                double u2 = ((splitmix(&st) >> 11) + 1) * 0x1.0p-53;
                double r = sqrt(-2.0 * log(u1)) * std;
                host[j] = (float)(r * cos(6.283185307179586 * u2));
                if (j + 1 < p->numel)
                    host[j + 1] = (float)(r * sin(6.283185307179586 * u2));
            }
        }
        s = st_stage_write(g, ST_STAGE_PARAMS, i, host);
    }
    free(host);
    for (int w = ST_STAGE_ADAM_M; s == ST_OK && w <= ST_STAGE_ADAM_V && g->bufs[w]; w++)
        s = st_tensor_fill(g->bufs[w], 0.0f);
    return s;
}

/* ---- training ------------------------------------------------------------ */

static st_status check_mb(const st_stage *g, int slot, int B, int T)
{
    if (!g->slot_buf || slot < 0 || slot >= g->slots || B < 1 || T < 1 || B > g->B || T > g->T)
        return st_error(ST_ERR_INVALID,
                        "micro-batch %dx%d in slot %d does not fit the stage's %dx%d and %d "
                        "slots",
                        B, T, slot, g->B, g->T, g->slots);
    return ST_OK;
}

st_status st_stage_zero_grad(st_stage *g)
{
    if (g->training && g->sizes.train_numel == 0)
        return ST_OK; /* nothing of it trains */
    if (!g->bufs[ST_STAGE_GRADS])
        return st_error(ST_ERR_INVALID, "the stage was created without training buffers");
    return st_tensor_fill(g->bufs[ST_STAGE_GRADS], 0.0f);
}

st_tensor *st_stage_io_tensor(const st_stage *g, int slot, st_stage_io which)
{
    if (!g->slot_buf || slot < 0 || slot >= g->slots)
        return NULL;
    switch (which) {
    case ST_STAGE_IN:
        return g->has_emb ? NULL : g->x0[slot];
    case ST_STAGE_OUT:
        return g->has_head ? NULL : g->out[slot];
    case ST_STAGE_DIN:
        return g->has_emb ? NULL : g->dres;
    case ST_STAGE_DOUT:
        return g->has_head ? NULL : g->dout[slot];
    }
    return NULL;
}

st_status st_positions_check(const int32_t *pos, int B, int T)
{
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            int32_t p = pos[(size_t)b * T + t], before = t ? pos[(size_t)b * T + t - 1] : -1;
            if (p != 0 && p != before + 1)
                return st_error(ST_ERR_INVALID,
                                "positions: sequence %d, row %d has position %d after %d; a "
                                "document's positions count 0, 1, 2, ... from its first row",
                                b, t, (int)p, (int)before);
        }
    return ST_OK;
}

st_status st_stage_positions(st_stage *g, int slot, const int32_t *pos, int B, int T)
{
    st_status s = check_mb(g, slot, B, T);
    if (s != ST_OK || !pos) {
        if (s == ST_OK)
            g->packed[slot] = false;
        return s;
    }
    if ((s = st_positions_check(pos, B, T)) != ST_OK)
        return s;
    bool plain = true; /* one document a sequence: the plain path, bit for bit */
    for (size_t i = 0; plain && i < (size_t)B * T; i++)
        plain = pos[i] == (int32_t)(i % (size_t)T);
    g->packed[slot] = !plain;
    return plain ? ST_OK : st_tensor_write(g->pos[slot], 0, (size_t)B * T, pos);
}

st_status st_stage_forward(st_stage *g, int slot, const int32_t *tokens, const int32_t *targets,
                           int B, int T)
{
    st_status s = check_mb(g, slot, B, T);
    if (s != ST_OK)
        return s;
    int N = B * T, V = g->cfg.vocab_size;
    if (g->has_emb) {
        if (!tokens)
            return st_error(ST_ERR_INVALID, "forward: the embedding stage needs tokens");
        for (int i = 0; i < N; i++)
            if (tokens[i] < 0 || tokens[i] >= V)
                return st_error(ST_ERR_INVALID,
                                "token %d at position %d is outside the vocabulary of %d",
                                tokens[i], i, V);
        if ((s = st_tensor_write(g->tokens[slot], 0, (size_t)N, tokens)) != ST_OK)
            return s;
    }
    bool loss = g->has_head && targets;
    if (loss && (s = st_tensor_write(g->targets[slot], 0, (size_t)N, targets)) != ST_OK)
        return s;
    st_layer_io io = {.tokens = g->tokens[slot], .targets = loss ? g->targets[slot] : NULL,
                      .x0 = g->x0[slot], .pos = g->packed[slot] ? g->pos[slot] : NULL};
    const st_tensor *x = g->has_emb ? NULL : g->x0[slot];
    size_t S = (size_t)g->slots, Nf = (size_t)N * (g->n_layers ? g->layers[0].desc->out_floats_per_token : 0);
    for (size_t l = 0; l < g->n_layers; l++) {
        st_layer *L = &g->layers[l];
        const st_tensor *y = NULL;
        st_tensor *keep = g->kept[l * S + (size_t)slot];
        if (keep) { /* a block made x in the shared set: kept for the backward */
            if ((s = st_tensor_copy(keep, 0, x, 0, Nf)) != ST_OK)
                return s;
            x = keep;
        }
        g->xin[(size_t)slot * g->n_layers + l] = x;
        st_layer_scope(L, true);
        s = L->ops->forward(L, slot, x, &y, &io, B, T);
        st_layer_scope(L, false);
        if (s != ST_OK)
            return s;
        x = y;
    }
    if (g->kept_out[slot]) {
        if ((s = st_tensor_copy(g->kept_out[slot], 0, x, 0, Nf)) != ST_OK)
            return s;
        x = g->kept_out[slot];
    }
    if (!g->has_head)
        g->out[slot] = (st_tensor *)x;
    return ST_OK;
}

static st_layer *head_of(const st_stage *g)
{
    return g->has_head ? &g->layers[g->n_layers - 1] : NULL;
}

st_status st_stage_loss(st_stage *g, int slot, const int32_t *targets, int B, int T, double *sum,
                        long *count)
{
    st_status s = check_mb(g, slot, B, T);
    if (s != ST_OK)
        return s;
    if (!g->has_head)
        return st_error(ST_ERR_INVALID, "loss: this stage has no head");
    size_t N = (size_t)B * T;
    float *loss = malloc(N * sizeof *loss);
    if (!loss)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    st_layer *h = head_of(g);
    /* The targets are the caller's own: only the losses cross from the device. */
    if ((s = st_tensor_read(h->ops->losses(h, slot), 0, N, loss)) == ST_OK) {
        double acc = 0.0;
        long n = 0;
        for (size_t i = 0; i < N; i++)
            if (targets[i] >= 0) {
                acc += loss[i];
                n++;
            }
        *sum = acc;
        *count = n;
    }
    free(loss);
    return s;
}

st_status st_stage_output_read(st_stage *g, int slot, int B, int T, float *host)
{
    st_status s = check_mb(g, slot, B, T);
    if (s != ST_OK)
        return s;
    if (!g->has_head)
        return st_error(ST_ERR_INVALID, "output: this stage has no head");
    st_layer *h = head_of(g);
    return st_tensor_read(h->ops->output(h, slot), 0, (size_t)B * T * g->cfg.vocab_size, host);
}

st_status st_stage_backward(st_stage *g, int slot, int B, int T, float dloss)
{
    st_status s = check_mb(g, slot, B, T);
    if (s != ST_OK)
        return s;
    if (!g->training)
        return st_error(ST_ERR_INVALID, "backward: the stage was created without training");
    size_t N = (size_t)B * T;
    if (!g->has_head &&
        (s = st_tensor_copy(g->dres, 0, g->dout[slot], 0, N * g->in_floats)) != ST_OK)
        return s;
    st_layer_io io = {.tokens = g->tokens[slot], .targets = g->targets[slot], .x0 = g->x0[slot],
                      .pos = g->packed[slot] ? g->pos[slot] : NULL};
    for (size_t l = g->n_layers; l-- > 0;) {
        st_layer *L = &g->layers[l];
        const st_tensor *x = g->xin[(size_t)slot * g->n_layers + l];
        st_layer_scope(L, true);
        if (g->recompute && L->desc->kind == ST_LAYER_BLOCK) {
            /* the block's activations again, from its kept input: the same
             * kernels on the same input, so the same bits */
            const st_tensor *y = NULL;
            s = L->ops->forward(L, slot, x, &y, &io, B, T);
        }
        if (s == ST_OK)
            s = L->ops->backward(L, slot, x, g->dres, &io, B, T, dloss);
        st_layer_scope(L, false);
        if (s != ST_OK)
            return s;
    }
    return ST_OK;
}

st_status st_stage_grad_sumsq(st_stage *g, float *per_layer)
{
    if (!g->training || !g->scratch)
        return st_error(ST_ERR_INVALID, "grad_sumsq: the stage was created without training");
    /* One pass (two launches) per layer over its own parameters, which lie
     * one after the other in the gradient buffer; tied copies are left out.
     * A layer's sum does not depend on which stage holds it, so the norm the
     * pipeline adds up from them does not depend on the split. */
    size_t n = g->end - g->first;
    st_status s = st_tensor_fill(g->sumsq_acc, 0.0f);
    for (size_t l = 0; s == ST_OK && l < n; l++) {
        const st_layer *L = &g->layers[l];
        size_t len = 0, at = SIZE_MAX;
        for (size_t i = 0; i < L->desc->n_params; i++)
            if (!L->desc->params[i].frozen) {
                len += L->desc->params[i].numel;
                at = L->offset[i] < at ? L->offset[i] : at;
            }
        if (len == 0)
            continue;
        st_tensor *run = st_view_at(g->bufs[ST_STAGE_GRADS], at, len, &s);
        st_tensor *acc = st_view_at(g->sumsq_acc, l, 1, &s);
        if (s == ST_OK)
            s = st_sumsq_accumulate(acc, g->sumsq_parts, run, len);
        st_tensor_destroy(run);
        st_tensor_destroy(acc);
    }
    if (s == ST_OK)
        s = st_tensor_read(g->sumsq_acc, 0, n, per_layer);
    return s;
}

st_status st_stage_step(st_stage *g, const st_adamw_hparams *h, long t, float grad_scale)
{
    if (!g->training)
        return st_error(ST_ERR_INVALID, "step: the stage was created without training");
    /* GPU form: one launch over the stage's buffers, decay by runs; CPU
     * form: one launch per parameter; the same arithmetic per element
     * either way. */
    if (g->adam_n_runs > 0 && !st_layers_cpu_form(g->dev))
        return st_adamw_step_runs(g->bufs[0], g->bufs[1], g->bufs[2], g->bufs[3], g->adam_runs,
                                  g->adam_n_runs, g->adam_span, h, t, grad_scale);
    st_status s = ST_OK;
    if (g->shards > 1) {
        /* this part's elements only: each parameter's piece in [mom_lo,
         * mom_hi), the same arithmetic per element as the whole */
        for (size_t i = 0; s == ST_OK && i < g->n_params; i++) {
            const st_stage_param *p = &g->params[i];
            size_t a = p->offset, b = a + p->desc->numel;
            a = a > g->mom_lo ? a : g->mom_lo;
            b = b < g->mom_hi ? b : g->mom_hi;
            if (p->desc->frozen || a >= b)
                continue;
            st_adamw_hparams hp = *h;
            if (!p->desc->decay)
                hp.weight_decay = 0.0f;
            st_tensor *v[4] = {st_view_at(g->bufs[0], a, b - a, &s),
                               st_view_at(g->bufs[1], a, b - a, &s),
                               st_view_at(g->bufs[2], a - g->mom_lo, b - a, &s),
                               st_view_at(g->bufs[3], a - g->mom_lo, b - a, &s)};
            if (s == ST_OK)
                s = st_adamw_step(v[0], v[1], v[2], v[3], b - a, &hp, t, grad_scale);
            st_views_destroy(v, 4);
        }
        return s;
    }
    for (size_t i = 0; s == ST_OK && i < g->n_params; i++) {
        if (g->params[i].desc->frozen)
            continue;
        st_adamw_hparams hp = *h;
        if (!g->params[i].desc->decay)
            hp.weight_decay = 0.0f;
        s = st_adamw_step(g->flat[0][i], g->flat[1][i], g->flat[2][i], g->flat[3][i],
                          g->params[i].desc->numel, &hp, t, grad_scale);
    }
    return s;
}

/* ---- decoding with the KV cache ------------------------------------------ */

st_status st_stage_decode(st_stage *g, int tok, int pos, float *logits)
{
    return st_stage_decode_seq(g, 0, tok, pos, logits);
}

st_status st_stage_decode_seq(st_stage *g, int seq, int tok, int pos, float *logits)
{
    return st_stage_prefill_seq(g, seq, &tok, 1, pos, logits);
}

st_status st_stage_prefill_seq(st_stage *g, int seq, const int *tok, int n, int pos,
                               float *logits)
{
    if (n < 1 || n > g->prefill)
        return st_error(ST_ERR_INVALID, "decode: %d tokens in one pass, the stage takes 1 to %d",
                        n, g->prefill);
    if (pos < 0 || pos >= g->kv_seq || n > g->kv_seq - pos)
        return st_error(ST_ERR_INVALID,
                        "decode: position %d is past the KV cache of %d positions",
                        pos + n - 1 >= g->kv_seq ? pos + n - 1 : pos, g->kv_seq);
    int *seqs = malloc(2 * (size_t)n * sizeof *seqs), *poss = seqs ? seqs + n : NULL;
    if (!seqs)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    for (int i = 0; i < n; i++) {
        seqs[i] = seq;
        poss[i] = pos + i;
    }
    int last = n - 1;
    st_stage_rows r = {.n = n, .tok = tok, .seq = seqs, .pos = poss, .n_out = 1, .out = &last};
    st_status s = st_stage_pass(g, &r, logits);
    free(seqs);
    return s;
}

st_status st_stage_pass(st_stage *g, const st_stage_rows *r, float *logits)
{
    if (g->kv_seq <= 0)
        return st_error(ST_ERR_INVALID, "decode: the stage was created without a KV cache");
    int n = r->n, V = g->cfg.vocab_size;
    if (n < 1 || n > g->rows)
        return st_error(ST_ERR_INVALID, "decode: %d rows in one pass, the stage takes 1 to %d",
                        n, g->rows);
    if (g->has_head && (r->n_out < 1 || r->n_out > g->kv_seqs || r->n_out > n))
        return st_error(ST_ERR_INVALID,
                        "decode: logits of %d rows of %d, the stage gives 1 to %d at once",
                        r->n_out, n, g->kv_seqs);
    /* Rows of distinct sequences write their own keys and values as they
     * attend; rows of one sequence need theirs written first. */
    bool own_row = true;
    memset(g->seq_seen, 0, (size_t)g->kv_seqs);
    st_status s = ST_OK;
    for (int i = 0; i < n; i++) {
        if (r->seq[i] < 0 || r->seq[i] >= g->kv_seqs)
            return st_error(ST_ERR_INVALID, "decode: sequence %d, the stage caches %d",
                            r->seq[i], g->kv_seqs);
        if (r->pos[i] < 0 || r->pos[i] >= g->kv_seq)
            return st_error(ST_ERR_INVALID,
                            "decode: position %d is past the KV cache of %d positions",
                            r->pos[i], g->kv_seq);
        if (g->has_emb && (r->tok[i] < 0 || r->tok[i] >= V))
            return st_error(ST_ERR_INVALID, "token %d is outside the vocabulary of %d",
                            r->tok[i], V);
        own_row &= !g->seq_seen[r->seq[i]];
        g->seq_seen[r->seq[i]] = 1;
    }
    for (int j = 0; g->has_head && j < r->n_out; j++)
        if (r->out[j] < 0 || r->out[j] >= n || (j > 0 && r->out[j] <= r->out[j - 1]))
            return st_error(ST_ERR_INVALID, "decode: output rows must rise within 0 to %d",
                            n - 1);
    /* The table of (sequence, position) per row, and the tokens, queued
     * from the stage's own host array: the pass ends with a blocking read
     * of the logits (else the next pass waits for the queue first), so the
     * queue has taken them before the next pass fills the array again. */
    if (g->rows_pending && (s = st_device_finish(g->dev)) != ST_OK)
        return s;
    int32_t *h = g->rows_host;
    for (int i = 0; i < n; i++) {
        h[2 * i] = r->seq[i];
        h[2 * i + 1] = r->pos[i];
        h[2 * (size_t)g->rows + i] = g->has_emb ? r->tok[i] : 0;
    }
    s = st_tensor_write_queued(g->rowtab, 0, 2 * (size_t)n, h);
    if (s == ST_OK && g->has_emb)
        s = st_tensor_write_queued(g->token, 0, (size_t)n, h + 2 * (size_t)g->rows);
    if (s != ST_OK)
        return s;
    st_pass ps = {.n = n, .seq = r->seq, .pos = r->pos, .rows = g->rowtab, .own_row = own_row,
                  .n_out = r->n_out, .out = r->out};
    st_layer_io io = {.token = g->token};
    st_gemm_decoding(true);
    for (size_t l = 0; s == ST_OK && l < g->n_layers; l++) {
        st_layer *L = &g->layers[l];
        s = L->ops->decode(L, &ps, g->dec_x, &io);
    }
    st_gemm_decoding(false);
    if (s != ST_OK)
        return s;
    g->rows_pending = !g->has_head || !logits;
    if (g->rows_pending)
        return ST_OK;
    return st_tensor_read(io.logits, 0, (size_t)r->n_out * V, logits);
}

int st_stage_prefill_max(const st_stage *g)
{
    return g->prefill;
}

st_tensor *st_stage_decode_x(const st_stage *g)
{
    return g->dec_x;
}
