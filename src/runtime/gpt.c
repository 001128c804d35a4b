/*
 * gpt.c - a GPT-2 model stage on one device: buffers, forward, backward,
 * AdamW and KV-cache decoding, built from the layer ops in src/layers/.
 *
 * Shape letters: B batch, T time, C channels, V vocab, L layers, NH heads,
 * F MLP width, N = B*T rows. Per block, forward (Conv1D weights [in, out]):
 *   ln1 = LN(x); qkv = ln1 W_attn + b; atty = attention(qkv)
 *   res2 = x + atty W_proj + b; ln2 = LN(res2)
 *   fch = ln2 W_fc + b; fcg = gelu(fch); res3 = res2 + fcg W_fcp + b
 * and the head: lnf = LN(x); logits = lnf wte^T; loss = xent(logits, targets).
 * Backward runs the same in reverse with one flowing gradient `dres` [N, C]
 * that every block updates in place.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strata/cl.h"
#include "strata/gemm.h"
#include "strata/gpt.h"
#include "strata/profiler.h"

/* The activations of one block for one slot, views into the slot's buffer. */
typedef struct block_acts {
    st_tensor *ln1, *ln1_mean, *ln1_rstd, *qkv, *att, *atty, *res2;
    st_tensor *ln2, *ln2_mean, *ln2_rstd, *fch, *fcg, *res3;
} block_acts;

typedef struct slot_acts {
    st_tensor *buf;              /* x0 and the head's tensors */
    st_tensor **block_bufs;      /* one buffer per block: no single allocation grows with L */
    st_tensor *tokens, *targets; /* I32 [N] */
    st_tensor *x0;               /* embedding output or stage input [N, C] */
    block_acts *blocks;          /* one per block of the stage */
    st_tensor *lnf, *lnf_mean, *lnf_rstd, *logits, *losses;
    st_tensor *dout;             /* gradient arriving at a stage without the head */
} slot_acts;

/* A block's parameters, views into the parameter (or gradient) buffer. */
typedef struct block_params {
    st_tensor *ln1_w, *ln1_b, *attn_w, *attn_b, *proj_w, *proj_b;
    st_tensor *ln2_w, *ln2_b, *fc_w, *fc_b, *fcp_w, *fcp_b;
} block_params;

typedef struct param_views {
    st_tensor *wte, *wpe, *lnf_w, *lnf_b;
    block_params *blocks;
} param_views;

/* KV-cache decoding buffers (one sequence). */
typedef struct decode_bufs {
    st_tensor *buf;
    st_tensor *x, *ln, *mean, *rstd, *qkv, *scores, *atty, *res2, *fch, *tmp, *logits;
    st_tensor **k, **v; /* per block [kv_seqs, kv_seq, C]: a cache per sequence */
    st_tensor *token;   /* I32 [1] */
} decode_bufs;

struct st_gpt {
    st_device *dev;
    st_gpt_config cfg;
    size_t first, end;
    bool has_emb, has_head;
    int n_blocks, first_block;
    int B, T, slots, kv_seq, kv_seqs;
    bool training;

    st_gpt_param *params;
    size_t n_params, numel;
    st_tensor *bufs[4];     /* params, grads, m, v */
    param_views views[4];   /* views of each, by role */
    st_tensor **flat[4];    /* the same views by parameter index (they own them) */
    slot_acts *acts;
    /* backward scratch: dres [N,C], dC [N,C], d3C [N,3C], dF [N,F], datt [B,NH,T,T] */
    st_tensor *scratch, *dres, *dC, *d3C, *dF, *datt, *sumsq_acc, *sumsq_parts;
    st_tensor *adam_runs;   /* st_gpt_step's decay runs (made on the first step) */
    int adam_n_runs;        /* -1: parameters not in offset order, one launch each */
    size_t adam_span;       /* elements from the first parameter to the end of the last */
    decode_bufs dec;
    uint64_t bytes;
};

/* ---- buffers ---------------------------------------------------------- */

/* Carves views out of one buffer, in order. */
typedef struct carver {
    st_tensor *base;
    size_t off;
    st_status status;
} carver;

static st_tensor *carve(carver *c, size_t n)
{
    st_tensor *t = NULL;
    if (c->status != ST_OK)
        return NULL;
    size_t shape[1] = {n};
    c->status = st_tensor_view(c->base, c->off, 1, shape, &t);
    c->off += n;
    return t;
}

static void destroy_views(st_tensor **first, size_t n)
{
    for (size_t i = 0; i < n; i++)
        st_tensor_destroy(first[i]);
}

st_device *st_gpt_device(const st_gpt *g)
{
    return g->dev;
}

bool st_gpt_has_embedding(const st_gpt *g)
{
    return g->has_emb;
}

bool st_gpt_has_head(const st_gpt *g)
{
    return g->has_head;
}

size_t st_gpt_n_params(const st_gpt *g)
{
    return g->n_params;
}

const st_gpt_param *st_gpt_param_at(const st_gpt *g, size_t i)
{
    return i < g->n_params ? &g->params[i] : NULL;
}

long st_gpt_param_find(const st_gpt *g, const char *name)
{
    for (size_t i = 0; i < g->n_params; i++)
        if (strcmp(g->params[i].desc->name, name) == 0)
            return (long)i;
    return -1;
}

size_t st_gpt_param_numel(const st_gpt *g)
{
    return g->numel;
}

uint64_t st_gpt_bytes(const st_gpt *g)
{
    return g->bytes;
}

st_tensor *st_gpt_tensor(const st_gpt *g, st_gpt_buf which)
{
    return g->bufs[which];
}

static st_status make_buffer(st_gpt *g, st_dtype dt, size_t n, const char *name, st_tensor **out)
{
    size_t shape[1] = {n ? n : 1};
    st_status s = st_tensor_create(g->dev, dt, 1, shape, name, out);
    if (s == ST_OK)
        g->bytes += shape[0] * st_dtype_size(dt);
    return s;
}

/* Views of one of the four parameter-shaped buffers by role. */
static st_status make_param_views(st_gpt *g, int which)
{
    param_views *pv = &g->views[which];
    pv->blocks = calloc((size_t)(g->n_blocks ? g->n_blocks : 1), sizeof *pv->blocks);
    g->flat[which] = calloc(g->n_params ? g->n_params : 1, sizeof *g->flat[which]);
    if (!pv->blocks || !g->flat[which])
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    for (size_t i = 0; i < g->n_params; i++) {
        const st_gpt_param *p = &g->params[i];
        st_tensor *t = NULL;
        st_status s = st_tensor_view(g->bufs[which], p->offset, p->desc->ndim, p->desc->shape, &t);
        if (s != ST_OK)
            return s;
        const char *n = p->desc->name;
        st_tensor **slot = NULL;
        if (strcmp(n, "wte.weight") == 0)
            slot = &pv->wte;
        else if (strcmp(n, "wpe.weight") == 0)
            slot = &pv->wpe;
        else if (strcmp(n, "ln_f.weight") == 0)
            slot = &pv->lnf_w;
        else if (strcmp(n, "ln_f.bias") == 0)
            slot = &pv->lnf_b;
        else {
            int blk = atoi(n + 2) - g->first_block;
            const char *suffix = strchr(n + 2, '.') + 1;
            static const char *const names[12] = {
                "ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias",
                "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight", "ln_2.bias",
                "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias"};
            for (int k = 0; k < 12; k++)
                if (strcmp(suffix, names[k]) == 0)
                    slot = &((st_tensor **)&pv->blocks[blk])[k];
        }
        g->flat[which][i] = t;
        if (!slot || *slot)
            return st_error(ST_ERR_INVALID, "unexpected parameter '%s'", n);
        *slot = t;
    }
    return ST_OK;
}

static void free_param_views(st_gpt *g, int which)
{
    if (g->flat[which])
        destroy_views(g->flat[which], g->n_params);
    free(g->flat[which]);
    free(g->views[which].blocks);
}

/* What a block keeps of its attention per micro-batch: the log-sum-exp of
 * each row [B,NH,T] (flash.cl), or the probabilities [B,NH,T,T] for heads
 * too large for it. */
static size_t attention_floats(const st_gpt *g)
{
    size_t rows = (size_t)g->B * g->cfg.n_head * g->T;
    return st_attention_is_flash(g->cfg.n_embd, g->cfg.n_head) ? rows : rows * g->T;
}

static st_status make_slot(st_gpt *g, int i)
{
    slot_acts *a = &g->acts[i];
    size_t N = (size_t)g->B * g->T, C = (size_t)g->cfg.n_embd, F = (size_t)g->cfg.n_inner;
    size_t V = (size_t)g->cfg.vocab_size, att = attention_floats(g);
    size_t per_block = N * (8 * C + 2 * F + 4) + att;
    size_t total = N * C + (g->has_head ? N * (C + 3 + V) : N * C);
    char name[64];
    snprintf(name, sizeof name, "activations %d", i);
    st_status s = make_buffer(g, ST_F32, total, name, &a->buf);
    if (s != ST_OK)
        return s;
    if ((s = make_buffer(g, ST_I32, N, "tokens", &a->tokens)) != ST_OK ||
        (s = make_buffer(g, ST_I32, N, "targets", &a->targets)) != ST_OK)
        return s;
    carver c = {a->buf, 0, ST_OK};
    a->x0 = carve(&c, N * C);
    if (g->has_head) {
        a->lnf = carve(&c, N * C);
        a->lnf_mean = carve(&c, N);
        a->lnf_rstd = carve(&c, N);
        a->logits = carve(&c, N * V);
        a->losses = carve(&c, N);
    } else {
        a->dout = carve(&c, N * C);
    }
    if (c.status != ST_OK)
        return c.status;
    size_t nb = (size_t)(g->n_blocks ? g->n_blocks : 1);
    a->blocks = calloc(nb, sizeof *a->blocks);
    a->block_bufs = calloc(nb, sizeof *a->block_bufs);
    if (!a->blocks || !a->block_bufs)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    for (int b = 0; b < g->n_blocks; b++) {
        snprintf(name, sizeof name, "activations %d of block %d", i, g->first_block + b);
        if ((s = make_buffer(g, ST_F32, per_block, name, &a->block_bufs[b])) != ST_OK)
            return s;
        carver k_c = {a->block_bufs[b], 0, ST_OK};
        block_acts *k = &a->blocks[b];
        k->ln1 = carve(&k_c, N * C);
        k->ln1_mean = carve(&k_c, N);
        k->ln1_rstd = carve(&k_c, N);
        k->qkv = carve(&k_c, N * 3 * C);
        k->att = carve(&k_c, att);
        k->atty = carve(&k_c, N * C);
        k->res2 = carve(&k_c, N * C);
        k->ln2 = carve(&k_c, N * C);
        k->ln2_mean = carve(&k_c, N);
        k->ln2_rstd = carve(&k_c, N);
        k->fch = carve(&k_c, N * F);
        k->fcg = carve(&k_c, N * F);
        k->res3 = carve(&k_c, N * C);
        if (k_c.status != ST_OK)
            return k_c.status;
    }
    return ST_OK;
}

static void free_slot(st_gpt *g, slot_acts *a)
{
    if (a->blocks)
        for (int b = 0; b < g->n_blocks; b++)
            destroy_views((st_tensor **)&a->blocks[b], 13);
    if (a->block_bufs)
        destroy_views(a->block_bufs, (size_t)g->n_blocks);
    free(a->blocks);
    free(a->block_bufs);
    st_tensor *t[] = {a->x0, a->lnf, a->lnf_mean, a->lnf_rstd, a->logits, a->losses, a->dout,
                      a->tokens, a->targets, a->buf};
    destroy_views(t, sizeof t / sizeof t[0]);
}

static st_status make_scratch(st_gpt *g)
{
    size_t N = (size_t)g->B * g->T, C = (size_t)g->cfg.n_embd, F = (size_t)g->cfg.n_inner;
    /* datt: the T x T path's only; flash attention needs no scratch. */
    size_t att = st_attention_is_flash(g->cfg.n_embd, g->cfg.n_head)
                     ? 1
                     : (size_t)g->B * g->cfg.n_head * g->T * g->T;
    st_status s = make_buffer(g, ST_F32, N * (5 * C + F) + att + 1 + ST_SUMSQ_PARTS,
                              "gradient scratch", &g->scratch);
    if (s != ST_OK)
        return s;
    carver c = {g->scratch, 0, ST_OK};
    g->dres = carve(&c, N * C);
    g->dC = carve(&c, N * C);
    g->d3C = carve(&c, N * 3 * C);
    g->dF = carve(&c, N * F);
    g->datt = carve(&c, att);
    g->sumsq_acc = carve(&c, 1);
    g->sumsq_parts = carve(&c, ST_SUMSQ_PARTS);
    return c.status;
}

static st_status make_decode(st_gpt *g)
{
    decode_bufs *d = &g->dec;
    size_t C = (size_t)g->cfg.n_embd, F = (size_t)g->cfg.n_inner, V = (size_t)g->cfg.vocab_size;
    size_t S = (size_t)g->kv_seq, NH = (size_t)g->cfg.n_head;
    size_t Q = (size_t)g->kv_seqs;
    size_t total = C * 5 + 2 + 3 * C + NH * S + F + V + (size_t)g->n_blocks * 2 * Q * S * C;
    st_status s = make_buffer(g, ST_F32, total, "KV cache", &d->buf);
    if (s != ST_OK || (s = make_buffer(g, ST_I32, 1, "token", &d->token)) != ST_OK)
        return s;
    carver c = {d->buf, 0, ST_OK};
    d->x = carve(&c, C);
    d->ln = carve(&c, C);
    d->mean = carve(&c, 1);
    d->rstd = carve(&c, 1);
    d->qkv = carve(&c, 3 * C);
    d->scores = carve(&c, NH * S);
    d->atty = carve(&c, C);
    d->res2 = carve(&c, C);
    d->tmp = carve(&c, C);
    d->fch = carve(&c, F);
    d->logits = carve(&c, V);
    d->k = calloc((size_t)(g->n_blocks ? g->n_blocks : 1), sizeof *d->k);
    d->v = calloc((size_t)(g->n_blocks ? g->n_blocks : 1), sizeof *d->v);
    if (!d->k || !d->v)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    for (int b = 0; b < g->n_blocks; b++) {
        d->k[b] = carve(&c, Q * S * C);
        d->v[b] = carve(&c, Q * S * C);
    }
    return c.status;
}

static void free_decode(st_gpt *g)
{
    decode_bufs *d = &g->dec;
    if (d->k)
        for (int b = 0; b < g->n_blocks; b++) {
            st_tensor_destroy(d->k[b]);
            st_tensor_destroy(d->v[b]);
        }
    free(d->k);
    free(d->v);
    st_tensor *t[] = {d->x, d->ln, d->mean, d->rstd, d->qkv, d->scores, d->atty,
                      d->res2, d->tmp, d->fch, d->logits, d->token, d->buf};
    destroy_views(t, sizeof t / sizeof t[0]);
}

void st_gpt_destroy(st_gpt *g)
{
    if (!g)
        return;
    free_decode(g);
    st_tensor *t[] = {g->dres, g->dC, g->d3C, g->dF, g->datt, g->sumsq_acc, g->sumsq_parts,
                      g->scratch};
    destroy_views(t, sizeof t / sizeof t[0]);
    if (g->acts)
        for (int i = 0; i < g->slots; i++)
            free_slot(g, &g->acts[i]);
    free(g->acts);
    st_tensor_destroy(g->adam_runs);
    for (int w = 0; w < 4; w++) {
        free_param_views(g, w);
        st_tensor_destroy(g->bufs[w]);
    }
    free(g->params);
    free(g);
}

st_status st_gpt_create(st_device *dev, const st_model_desc *desc, const st_gpt_options *opt,
                        st_gpt **out)
{
    size_t first = opt->first_layer, end = opt->end_layer ? opt->end_layer : desc->n_layers;
    if (first >= end || end > desc->n_layers)
        return st_error(ST_ERR_INVALID, "layers [%zu, %zu) are not a range of the model's %zu",
                        first, end, desc->n_layers);
    if (opt->batch < 0 || opt->seq < 0 || opt->seq > desc->cfg.n_positions ||
        opt->kv_seq < 0 || opt->kv_seq > desc->cfg.n_positions ||
        (opt->training && (opt->batch < 1 || opt->seq < 1)))
        return st_error(ST_ERR_INVALID,
                        "bad sizes: batch %d, sequence %d, KV cache %d (the model has %d "
                        "positions)",
                        opt->batch, opt->seq, opt->kv_seq, desc->cfg.n_positions);
    st_gpt *g = calloc(1, sizeof *g);
    if (!g)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    g->dev = dev;
    g->cfg = desc->cfg;
    g->first = first;
    g->end = end;
    g->B = opt->batch;
    g->T = opt->seq;
    g->slots = opt->slots > 0 ? opt->slots : 1;
    g->kv_seq = opt->kv_seq;
    g->kv_seqs = opt->kv_seqs > 0 ? opt->kv_seqs : 1;
    g->training = opt->training;
    g->first_block = -1;
    size_t n_params = 0;
    for (size_t l = first; l < end; l++) {
        const st_layer_desc *ld = &desc->layers[l];
        if (ld->kind == ST_LAYER_EMBEDDING)
            g->has_emb = true;
        if (ld->kind == ST_LAYER_HEAD)
            g->has_head = true;
        if (ld->kind == ST_LAYER_BLOCK) {
            if (g->first_block < 0)
                g->first_block = ld->block;
            g->n_blocks++;
        }
        n_params += ld->n_params;
    }
    if (g->first_block < 0)
        g->first_block = 0;
    bool tied_copy = g->has_head && !g->has_emb;
    g->params = calloc(n_params + 1, sizeof *g->params);
    st_status s = g->params ? ST_OK : st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    for (size_t l = first; s == ST_OK && l < end; l++) {
        const st_layer_desc *ld = &desc->layers[l];
        if (ld->kind == ST_LAYER_HEAD && tied_copy) {
            size_t li = 0;
            g->params[g->n_params] = (st_gpt_param){st_model_find_param(desc, "wte.weight", &li),
                                                    g->numel, true};
            g->numel += g->params[g->n_params++].desc->numel;
        }
        for (size_t p = 0; p < ld->n_params; p++) {
            g->params[g->n_params] = (st_gpt_param){&ld->params[p], g->numel, false};
            g->numel += ld->params[p].numel;
            g->n_params++;
        }
    }
    static const char *const buf_names[4] = {"parameters", "gradients", "AdamW m", "AdamW v"};
    int nbufs = g->training ? 4 : 1;
    for (int w = 0; s == ST_OK && w < nbufs; w++)
        if ((s = make_buffer(g, ST_F32, g->numel, buf_names[w], &g->bufs[w])) == ST_OK)
            s = make_param_views(g, w);
    if (s == ST_OK && g->B > 0) {
        g->acts = calloc((size_t)g->slots, sizeof *g->acts);
        if (!g->acts)
            s = st_error(ST_ERR_HOST_MEMORY, "out of host memory");
        for (int i = 0; s == ST_OK && i < g->slots; i++)
            s = make_slot(g, i);
        if (s == ST_OK && g->training)
            s = make_scratch(g);
    }
    if (s == ST_OK && g->kv_seq > 0)
        s = make_decode(g);
    if (s != ST_OK) {
        if (first == 0 && end == desc->n_layers)
            st_error_context("setting up the model on %s", st_device_label(dev));
        else
            st_error_context("setting up layers %zu..%zu of the model on %s", first, end - 1,
                             st_device_label(dev));
        st_gpt_destroy(g);
        return s;
    }
    *out = g;
    return ST_OK;
}

/* ---- parameters --------------------------------------------------------- */

st_status st_gpt_read(const st_gpt *g, st_gpt_buf which, size_t i, float *host)
{
    if (i >= g->n_params || !g->bufs[which])
        return st_error(ST_ERR_INVALID, "no buffer %d for parameter %zu", (int)which, i);
    return st_tensor_read(g->bufs[which], g->params[i].offset, g->params[i].desc->numel, host);
}

st_status st_gpt_write(st_gpt *g, st_gpt_buf which, size_t i, const float *host)
{
    if (i >= g->n_params || !g->bufs[which])
        return st_error(ST_ERR_INVALID, "no buffer %d for parameter %zu", (int)which, i);
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

static bool ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

st_status st_gpt_init(st_gpt *g, uint64_t seed)
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
        if (p->ndim == 1) {
            float v = ends_with(p->name, "ln_1.weight") || ends_with(p->name, "ln_2.weight") ||
                              ends_with(p->name, "ln_f.weight")
                          ? 1.0f
                          : 0.0f;
            for (size_t j = 0; j < p->numel; j++)
                host[j] = v;
        } else {
            double std = 0.02;
            if (ends_with(p->name, "c_proj.weight"))
                std /= sqrt(2.0 * g->cfg.n_layer);
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
        s = st_gpt_write(g, ST_GPT_PARAMS, i, host);
    }
    free(host);
    for (int w = ST_GPT_ADAM_M; s == ST_OK && w <= ST_GPT_ADAM_V && g->bufs[w]; w++)
        s = st_tensor_fill(g->bufs[w], 0.0f);
    return s;
}

/* ---- training ------------------------------------------------------------ */

static st_status check_mb(const st_gpt *g, int slot, int B, int T)
{
    if (!g->acts || slot < 0 || slot >= g->slots || B < 1 || T < 1 || B > g->B || T > g->T)
        return st_error(ST_ERR_INVALID,
                        "micro-batch %dx%d in slot %d does not fit the stage's %dx%d and %d "
                        "slots",
                        B, T, slot, g->B, g->T, g->slots);
    return ST_OK;
}

st_status st_gpt_zero_grad(st_gpt *g)
{
    if (!g->bufs[ST_GPT_GRADS])
        return st_error(ST_ERR_INVALID, "the stage was created without training buffers");
    return st_tensor_fill(g->bufs[ST_GPT_GRADS], 0.0f);
}

st_tensor *st_gpt_io_tensor(const st_gpt *g, int slot, st_gpt_io which)
{
    if (!g->acts || slot < 0 || slot >= g->slots)
        return NULL;
    slot_acts *a = &g->acts[slot];
    switch (which) {
    case ST_GPT_IN:
        return g->has_emb ? NULL : a->x0;
    case ST_GPT_OUT:
        return g->has_head ? NULL
                           : (g->n_blocks ? a->blocks[g->n_blocks - 1].res3 : a->x0);
    case ST_GPT_DIN:
        return g->has_emb ? NULL : g->dres;
    case ST_GPT_DOUT:
        return g->has_head ? NULL : a->dout;
    }
    return NULL;
}

/* A block's forward in 9 launches (flash attention): each linear layer's
 * bias is added by the op after its product (attention reads qkv's bias as
 * it loads; the projections' biases go with the residual sum, the first
 * also with ln_2, the MLP's first with GELU). */
static st_status block_forward_ops(st_gpt *g, const block_params *p, block_acts *a,
                                   const st_tensor *x, int B, int T)
{
    int N = B * T, C = g->cfg.n_embd, F = g->cfg.n_inner, NH = g->cfg.n_head;
    float eps = g->cfg.layer_norm_epsilon;
    bool flash = st_attention_is_flash(C, NH);
    st_status s;
    if ((s = st_layernorm_fwd(a->ln1, a->ln1_mean, a->ln1_rstd, x, p->ln1_w, p->ln1_b, N, C,
                              eps)) != ST_OK ||
        (s = st_matmul_fwd(a->qkv, a->ln1, p->attn_w, flash ? NULL : p->attn_b, N, C, 3 * C)) !=
            ST_OK ||
        (s = flash ? st_attention_flash_fwd(a->atty, a->att, a->qkv, p->attn_b, B, T, C, NH)
                   : st_attention_fwd(a->atty, a->att, a->qkv, B, T, C, NH)) != ST_OK ||
        (s = st_matmul_fwd(a->res2, a->atty, p->proj_w, NULL, N, C, C)) != ST_OK ||
        (s = st_bias_residual_layernorm_fwd(a->res2, a->ln2, a->ln2_mean, a->ln2_rstd, a->res2,
                                            p->proj_b, x, p->ln2_w, p->ln2_b, N, C, eps)) !=
            ST_OK ||
        (s = st_matmul_fwd(a->fch, a->ln2, p->fc_w, NULL, N, C, F)) != ST_OK ||
        (s = st_bias_gelu_fwd(a->fch, a->fcg, p->fc_b, N, F)) != ST_OK ||
        (s = st_matmul_fwd(a->res3, a->fcg, p->fcp_w, NULL, N, F, C)) != ST_OK ||
        (s = st_bias_residual_fwd(a->res3, p->fcp_b, a->res2, N, C)) != ST_OK)
        return s;
    return ST_OK;
}

/* The profiler counts what a block launches (strata/profiler.h). */
static st_status block_forward(st_gpt *g, const block_params *p, block_acts *a,
                               const st_tensor *x, int B, int T)
{
    st_profiler_scope_block(true);
    st_status s = block_forward_ops(g, p, a, x, B, T);
    st_profiler_scope_block(false);
    return s;
}

st_status st_gpt_forward(st_gpt *g, int slot, const int32_t *tokens, const int32_t *targets,
                         int B, int T)
{
    st_status s = check_mb(g, slot, B, T);
    if (s != ST_OK)
        return s;
    slot_acts *a = &g->acts[slot];
    const param_views *pv = &g->views[ST_GPT_PARAMS];
    int N = B * T, C = g->cfg.n_embd, V = g->cfg.vocab_size;
    if (g->has_emb) {
        if (!tokens)
            return st_error(ST_ERR_INVALID, "forward: the embedding stage needs tokens");
        for (int i = 0; i < N; i++)
            if (tokens[i] < 0 || tokens[i] >= V)
                return st_error(ST_ERR_INVALID,
                                "token %d at position %d is outside the vocabulary of %d",
                                tokens[i], i, V);
        if ((s = st_tensor_write(a->tokens, 0, (size_t)N, tokens)) != ST_OK ||
            (s = st_encoder_fwd(a->x0, a->tokens, pv->wte, pv->wpe, B, T, C, V)) != ST_OK)
            return s;
    }
    const st_tensor *x = a->x0;
    for (int b = 0; b < g->n_blocks; b++) {
        if ((s = block_forward(g, &pv->blocks[b], &a->blocks[b], x, B, T)) != ST_OK)
            return s;
        x = a->blocks[b].res3;
    }
    if (!g->has_head)
        return ST_OK;
    if ((s = st_layernorm_fwd(a->lnf, a->lnf_mean, a->lnf_rstd, x, pv->lnf_w, pv->lnf_b, N, C,
                              g->cfg.layer_norm_epsilon)) != ST_OK)
        return s;
    /* logits[N,V] = lnf[N,C] . wte[V,C]^T */
    st_gemm_args mm = {.trans_b = true, .m = (size_t)N, .n = (size_t)V, .k = (size_t)C,
                       .alpha = 1.0f, .a = a->lnf, .lda = (size_t)C, .b = pv->wte,
                       .ldb = (size_t)C, .c = a->logits, .ldc = (size_t)V};
    if ((s = st_gemm(&mm)) != ST_OK || !targets)
        return s;
    if ((s = st_tensor_write(a->targets, 0, (size_t)N, targets)) != ST_OK)
        return s;
    return st_xent_fwd(a->logits, a->losses, a->logits, a->targets, N, V);
}

st_status st_gpt_loss(st_gpt *g, int slot, const int32_t *targets, int B, int T, double *sum,
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
    /* The targets are the caller's own: only the losses cross from the device. */
    if ((s = st_tensor_read(g->acts[slot].losses, 0, N, loss)) == ST_OK) {
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

st_status st_gpt_output_read(st_gpt *g, int slot, int B, int T, float *host)
{
    st_status s = check_mb(g, slot, B, T);
    if (s != ST_OK)
        return s;
    if (!g->has_head)
        return st_error(ST_ERR_INVALID, "output: this stage has no head");
    return st_tensor_read(g->acts[slot].logits, 0, (size_t)B * T * g->cfg.vocab_size, host);
}

/* dres holds the gradient of the block's output on entry and of its input
 * on exit. 15 launches (flash attention): the biases' gradients are column
 * sums, taken where a pass over the same rows already runs (the fc bias
 * with GELU's backward; the MLP output's with ln_2's weight gradients,
 * before ln_2's input gradient changes dres; the projection's and qkv's
 * with ln_1's). */
static st_status block_backward_ops(st_gpt *g, const block_params *p, block_params *d,
                                    const block_acts *a, const st_tensor *x, int B, int T)
{
    int N = B * T, C = g->cfg.n_embd, F = g->cfg.n_inner, NH = g->cfg.n_head;
    st_status s;
    /* res3 = res2 + fcg W_fcp + b: the MLP branch gets dres; dres stays d(res2) so far. */
    if ((s = st_matmul_bwd(g->dF, 0.0f, d->fcp_w, NULL, g->dres, a->fcg, p->fcp_w, N, F, C)) !=
            ST_OK ||
        (s = st_gelu_bwd_bias(g->dF, a->fch, g->dF, d->fc_b, N, F)) != ST_OK ||
        (s = st_matmul_bwd(g->dC, 0.0f, d->fc_w, NULL, g->dF, a->ln2, p->fc_w, N, C, F)) !=
            ST_OK ||
        (s = st_layernorm_bwd_biases(g->dres, d->ln2_w, d->ln2_b, g->dC, a->res2, p->ln2_w,
                                     a->ln2_mean, a->ln2_rstd, N, C, d->fcp_b, g->dres, C, NULL,
                                     NULL, 0)) != ST_OK)
        return s;
    /* res2 = x + atty W_proj + b: the attention branch gets dres; dres becomes d(x). */
    if ((s = st_matmul_bwd(g->dC, 0.0f, d->proj_w, NULL, g->dres, a->atty, p->proj_w, N, C,
                           C)) != ST_OK ||
        (s = st_attention_is_flash(C, NH)
                 ? st_attention_flash_bwd(g->d3C, g->dC, a->atty, a->att, a->qkv, p->attn_b, B, T,
                                          C, NH)
                 : st_attention_bwd(g->d3C, g->datt, g->dC, a->qkv, a->att, B, T, C, NH)) !=
            ST_OK ||
        (s = st_matmul_bwd(g->dC, 0.0f, d->attn_w, NULL, g->d3C, a->ln1, p->attn_w, N, C,
                           3 * C)) != ST_OK ||
        (s = st_layernorm_bwd_biases(g->dres, d->ln1_w, d->ln1_b, g->dC, x, p->ln1_w,
                                     a->ln1_mean, a->ln1_rstd, N, C, d->proj_b, g->dres, C,
                                     d->attn_b, g->d3C, 3 * C)) != ST_OK)
        return s;
    return ST_OK;
}

static st_status block_backward(st_gpt *g, const block_params *p, block_params *d,
                                const block_acts *a, const st_tensor *x, int B, int T)
{
    st_profiler_scope_block(true);
    st_status s = block_backward_ops(g, p, d, a, x, B, T);
    st_profiler_scope_block(false);
    return s;
}

st_status st_gpt_backward(st_gpt *g, int slot, int B, int T, float dloss)
{
    st_status s = check_mb(g, slot, B, T);
    if (s != ST_OK)
        return s;
    if (!g->training)
        return st_error(ST_ERR_INVALID, "backward: the stage was created without training");
    slot_acts *a = &g->acts[slot];
    const param_views *pv = &g->views[ST_GPT_PARAMS];
    param_views *dv = &g->views[ST_GPT_GRADS];
    int N = B * T, C = g->cfg.n_embd, V = g->cfg.vocab_size;
    size_t NC = (size_t)N * C;
    if (g->has_head) {
        /* The probabilities become dlogits in place: the forward's probs are not needed after. */
        if ((s = st_xent_bwd(a->logits, a->logits, a->targets, dloss, N, V)) != ST_OK)
            return s;
        /* dlnf[N,C] = dlogits[N,V] . wte[V,C];  dwte[V,C] += dlogits^T . lnf */
        st_gemm_args dx = {.m = (size_t)N, .n = (size_t)C, .k = (size_t)V, .alpha = 1.0f,
                           .a = a->logits, .lda = (size_t)V, .b = pv->wte, .ldb = (size_t)C,
                           .c = g->dC, .ldc = (size_t)C};
        st_gemm_args dw = {.trans_a = true, .m = (size_t)V, .n = (size_t)C, .k = (size_t)N,
                           .alpha = 1.0f, .beta = 1.0f, .a = a->logits, .lda = (size_t)V,
                           .b = a->lnf, .ldb = (size_t)C, .c = dv->wte, .ldc = (size_t)C};
        const st_tensor *xin = g->n_blocks ? a->blocks[g->n_blocks - 1].res3 : a->x0;
        if ((s = st_gemm(&dx)) != ST_OK || (s = st_gemm(&dw)) != ST_OK ||
            (s = st_tensor_fill(g->dres, 0.0f)) != ST_OK ||
            (s = st_layernorm_bwd(g->dres, dv->lnf_w, dv->lnf_b, g->dC, xin, pv->lnf_w,
                                  a->lnf_mean, a->lnf_rstd, N, C)) != ST_OK)
            return s;
    } else {
        if ((s = st_tensor_copy(g->dres, 0, a->dout, 0, NC)) != ST_OK)
            return s;
    }
    for (int b = g->n_blocks - 1; b >= 0; b--) {
        const st_tensor *x = b > 0 ? a->blocks[b - 1].res3 : a->x0;
        if ((s = block_backward(g, &pv->blocks[b], &dv->blocks[b], &a->blocks[b], x, B, T)) !=
            ST_OK)
            return s;
    }
    if (g->has_emb)
        return st_encoder_bwd(dv->wte, dv->wpe, g->dres, a->tokens, B, T, C, V);
    return ST_OK;
}

st_status st_gpt_grad_sumsq(st_gpt *g, double *out)
{
    if (!g->training || !g->scratch)
        return st_error(ST_ERR_INVALID, "grad_sumsq: the stage was created without training");
    /* One pass (two launches) per run of untied parameters lying one after
     * the other in the gradient buffer (zero between them, which adds
     * nothing): one or two runs, where a pass per parameter took 2 x 148
     * launches for GPT-2 small. The tied embedding copy is left out. */
    st_status s = st_tensor_fill(g->sumsq_acc, 0.0f);
    size_t start = 0, end = 0;
    bool open = false;
    for (size_t i = 0; s == ST_OK && i <= g->n_params; i++) {
        bool take = i < g->n_params && !g->params[i].tied && (!open || g->params[i].offset >= end);
        if (open && !take) {
            st_tensor *run = NULL;
            size_t len = end - start;
            if ((s = st_tensor_view(g->bufs[ST_GPT_GRADS], start, 1, &len, &run)) == ST_OK)
                s = st_sumsq_accumulate(g->sumsq_acc, g->sumsq_parts, run, len);
            st_tensor_destroy(run);
            open = false;
        }
        if (s != ST_OK || i == g->n_params || g->params[i].tied)
            continue;
        if (!open) {
            start = g->params[i].offset;
            open = true;
        }
        end = g->params[i].offset + g->params[i].desc->numel;
    }
    float acc = 0.0f;
    if (s == ST_OK && (s = st_tensor_read(g->sumsq_acc, 0, 1, &acc)) == ST_OK)
        *out = acc;
    return s;
}

/* The decay runs of the stage's parameters for st_adamw_step_runs (made on
 * the first step): parameters in offset order, a run per change of setting
 * (weight decay on matrices only); adam_n_runs -1 when the offsets are not
 * in order. */
static st_status adam_runs(st_gpt *g)
{
    if (g->adam_runs || g->n_params == 0)
        return ST_OK;
    int *t = malloc(3 * g->n_params * sizeof *t);
    if (!t)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    int n = 0;
    size_t prev_end = 0;
    for (size_t i = 0; i < g->n_params; i++) {
        const st_gpt_param *p = &g->params[i];
        int decay = p->desc->ndim == 2;
        if (p->offset < prev_end) { /* not in order: the per-parameter path */
            free(t);
            g->adam_n_runs = -1;
            return ST_OK;
        }
        size_t start = i == 0 ? 0 : p->offset;
        if (n == 0 || t[3 * (n - 1) + 2] != decay) {
            t[3 * n] = (int)(start >> 31);
            t[3 * n + 1] = (int)(start & 0x7fffffff);
            t[3 * n + 2] = decay;
            n++;
        }
        prev_end = p->offset + p->desc->numel;
    }
    size_t shape[1] = {3 * (size_t)n};
    st_status s = st_tensor_create(g->dev, ST_I32, 1, shape, "adamw runs", &g->adam_runs);
    if (s == ST_OK)
        s = st_tensor_write(g->adam_runs, 0, shape[0], t);
    free(t);
    g->adam_n_runs = n;
    g->adam_span = prev_end;
    return s;
}

st_status st_gpt_step(st_gpt *g, const st_adamw_hparams *h, long t, float grad_scale)
{
    if (!g->training)
        return st_error(ST_ERR_INVALID, "step: the stage was created without training");
    /* GPU form: one launch over the stage's buffers (148 for GPT-2 small,
     * one per parameter, in the CPU form), decay by runs; the same
     * arithmetic per element either way. */
    st_status s = st_layers_cpu_form(g->dev) ? ST_OK : adam_runs(g);
    if (s == ST_OK && g->adam_n_runs > 0 && !st_layers_cpu_form(g->dev))
        return st_adamw_step_runs(g->bufs[0], g->bufs[1], g->bufs[2], g->bufs[3], g->adam_runs,
                                  g->adam_n_runs, g->adam_span, h, t, grad_scale);
    for (size_t i = 0; s == ST_OK && i < g->n_params; i++) {
        st_adamw_hparams hp = *h;
        if (g->params[i].desc->ndim != 2)
            hp.weight_decay = 0.0f; /* no decay on biases and LayerNorm */
        s = st_adamw_step(g->flat[0][i], g->flat[1][i], g->flat[2][i], g->flat[3][i],
                          g->params[i].desc->numel, &hp, t, grad_scale);
    }
    return s;
}

/* ---- decoding with the KV cache ------------------------------------------ */

/* One token through block b in 9 launches: the attention (new key and value
 * into the caches, scores, softmax, weighted values) in one kernel when the
 * head size allows (cl/flash.cl), the biases with the ops after their
 * products as in training. */
static st_status decode_block(st_gpt *g, int b, int seq, int pos)
{
    decode_bufs *d = &g->dec;
    const block_params *p = &g->views[ST_GPT_PARAMS].blocks[b];
    size_t C = (size_t)g->cfg.n_embd, NH = (size_t)g->cfg.n_head, HS = C / NH;
    size_t S = (size_t)g->kv_seq, len = (size_t)pos + 1, cache = (size_t)seq * S * C;
    int F = g->cfg.n_inner, Ci = g->cfg.n_embd;
    float eps = g->cfg.layer_norm_epsilon, scale = (float)(1.0 / sqrt((double)HS));
    bool flash = st_attention_is_flash(Ci, (int)NH);
    st_status s;
    if ((s = st_layernorm_fwd(d->ln, d->mean, d->rstd, d->x, p->ln1_w, p->ln1_b, 1, Ci, eps)) !=
            ST_OK ||
        (s = st_matmul_fwd(d->qkv, d->ln, p->attn_w, flash ? NULL : p->attn_b, 1, Ci, 3 * Ci)) !=
            ST_OK)
        return s;
    if (flash) {
        s = st_attention_decode(d->atty, d->scores, d->k[b], d->v[b], cache, d->qkv, p->attn_b,
                                pos, (int)S, Ci, (int)NH);
    } else {
        if ((s = st_tensor_copy(d->k[b], cache + (size_t)pos * C, d->qkv, C, C)) != ST_OK ||
            (s = st_tensor_copy(d->v[b], cache + (size_t)pos * C, d->qkv, 2 * C, C)) != ST_OK)
            return s;
        /* scores[h, 0..pos] = q_h . K_h^T * scale, one product per head */
        st_gemm_args qk = {.trans_b = true, .m = 1, .n = len, .k = HS, .alpha = scale,
                           .a = d->qkv, .lda = 3 * C, .a_stride = HS,
                           .b = d->k[b], .b_offset = cache, .ldb = C, .b_stride = HS,
                           .c = d->scores, .ldc = S, .c_stride = S, .batch = NH};
        if ((s = st_gemm(&qk)) != ST_OK ||
            (s = ST_LAUNCH(g->dev, "attention.cl", "attention_softmax_rows", NH, 0,
                           ST_KT(d->scores), ST_KI(NH), ST_KI(len), ST_KI(S))) != ST_OK)
            return s;
        /* atty_h = scores_h[1, len] . V_h[len, HS] */
        st_gemm_args pv = {.m = 1, .n = HS, .k = len, .alpha = 1.0f,
                           .a = d->scores, .lda = S, .a_stride = S,
                           .b = d->v[b], .b_offset = cache, .ldb = C, .b_stride = HS,
                           .c = d->atty, .ldc = C, .c_stride = HS, .batch = NH};
        s = st_gemm(&pv);
    }
    if (s != ST_OK ||
        (s = st_matmul_fwd(d->res2, d->atty, p->proj_w, NULL, 1, Ci, Ci)) != ST_OK ||
        (s = st_bias_residual_layernorm_fwd(d->res2, d->ln, d->mean, d->rstd, d->res2,
                                            p->proj_b, d->x, p->ln2_w, p->ln2_b, 1, Ci, eps)) !=
            ST_OK ||
        (s = st_matmul_fwd(d->fch, d->ln, p->fc_w, NULL, 1, Ci, F)) != ST_OK ||
        (s = st_bias_gelu_fwd(d->fch, d->fch, p->fc_b, 1, F)) != ST_OK ||
        (s = st_matmul_fwd(d->x, d->fch, p->fcp_w, NULL, 1, F, Ci)) != ST_OK ||
        (s = st_bias_residual_fwd(d->x, p->fcp_b, d->res2, 1, Ci)) != ST_OK)
        return s;
    return ST_OK;
}

st_status st_gpt_decode(st_gpt *g, int tok, int pos, float *logits)
{
    return st_gpt_decode_seq(g, 0, tok, pos, logits);
}

st_status st_gpt_decode_seq(st_gpt *g, int seq, int tok, int pos, float *logits)
{
    if (g->kv_seq <= 0)
        return st_error(ST_ERR_INVALID, "decode: the stage was created without a KV cache");
    if (seq < 0 || seq >= g->kv_seqs)
        return st_error(ST_ERR_INVALID, "decode: sequence %d, the stage caches %d", seq,
                        g->kv_seqs);
    if (pos < 0 || pos >= g->kv_seq)
        return st_error(ST_ERR_INVALID,
                        "decode: position %d is past the KV cache of %d positions", pos,
                        g->kv_seq);
    int C = g->cfg.n_embd, V = g->cfg.vocab_size;
    const param_views *pv = &g->views[ST_GPT_PARAMS];
    decode_bufs *d = &g->dec;
    st_status s;
    if (g->has_emb) {
        if (tok < 0 || tok >= V)
            return st_error(ST_ERR_INVALID, "token %d is outside the vocabulary of %d", tok, V);
        int32_t t = tok;
        st_tensor *wpe_row = NULL;
        size_t shape[2] = {1, (size_t)C};
        /* x = wte[tok] + wpe[pos]: one row each, as the encoder does for a batch of one. */
        if ((s = st_tensor_write(d->token, 0, 1, &t)) != ST_OK ||
            (s = st_tensor_view(pv->wpe, (size_t)pos * C, 2, shape, &wpe_row)) != ST_OK)
            return s;
        s = st_encoder_fwd(d->x, d->token, pv->wte, wpe_row, 1, 1, C, V);
        st_tensor_destroy(wpe_row);
        if (s != ST_OK)
            return s;
    }
    for (int b = 0; b < g->n_blocks; b++)
        if ((s = decode_block(g, b, seq, pos)) != ST_OK)
            return s;
    if (!g->has_head)
        return ST_OK;
    if ((s = st_layernorm_fwd(d->ln, d->mean, d->rstd, d->x, pv->lnf_w, pv->lnf_b, 1, C,
                              g->cfg.layer_norm_epsilon)) != ST_OK)
        return s;
    st_gemm_args mm = {.trans_b = true, .m = 1, .n = (size_t)V, .k = (size_t)C, .alpha = 1.0f,
                       .a = d->ln, .lda = (size_t)C, .b = pv->wte, .ldb = (size_t)C,
                       .c = d->logits, .ldc = (size_t)V};
    if ((s = st_gemm(&mm)) != ST_OK)
        return s;
    return logits ? st_tensor_read(d->logits, 0, (size_t)V, logits) : ST_OK;
}

st_tensor *st_gpt_decode_x(const st_gpt *g)
{
    return g->dec.x;
}
