/*
 * gpt.c - the layer list of a GPT-2-style model: parameters with Hugging
 * Face names and layouts, FLOPs and activation sizes per token.
 *
 * Costs count what Strata computes, not the ideal: flash attention
 * (cl/flash.cl) visits the causal half of the token pairs and recomputes in
 * its backward; the T x T path (heads above ST_FLASH_MAX_HEAD) does full
 * products and masks after. Element-wise work is counted roughly (a few FLOPs per element) so
 * that no layer costs zero. Backward matrix products cost twice the forward
 * (one product for the input gradient, one for the weight gradient).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strata/model.h"

static void add_param(st_layer_desc *l, const char *name, int ndim, size_t d0, size_t d1)
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
    l->param_numel += p->numel;
}

static void describe_embedding(const st_gpt_config *c, st_layer_desc *l)
{
    size_t C = (size_t)c->n_embd;
    l->kind = ST_LAYER_EMBEDDING;
    l->block = -1;
    snprintf(l->name, sizeof l->name, "embedding");
    add_param(l, "wte.weight", 2, (size_t)c->vocab_size, C);
    add_param(l, "wpe.weight", 2, (size_t)c->n_positions, C);
    l->fwd_flops_per_token = (double)C;     /* x = wte[tok] + wpe[pos] */
    l->bwd_flops_per_token = 2.0 * (double)C; /* scatter-add into both tables */
    l->act_floats_per_token = 0.0;          /* only the token ids are kept */
    l->out_floats_per_token = C;
}

static void describe_block(const st_gpt_config *c, int i, st_layer_desc *l)
{
    double C = c->n_embd, F = c->n_inner, NH = c->n_head;
    size_t Cs = (size_t)c->n_embd, Fs = (size_t)c->n_inner;
    l->kind = ST_LAYER_BLOCK;
    l->block = i;
    snprintf(l->name, sizeof l->name, "h.%d", i);
    char n[64];
#define P(suffix, ndim, d0, d1)                                                \
    do {                                                                       \
        snprintf(n, sizeof n, "h.%d." suffix, i);                              \
        add_param(l, n, ndim, d0, d1);                                         \
    } while (0)
    P("ln_1.weight", 1, Cs, 0);
    P("ln_1.bias", 1, Cs, 0);
    P("attn.c_attn.weight", 2, Cs, 3 * Cs);
    P("attn.c_attn.bias", 1, 3 * Cs, 0);
    P("attn.c_proj.weight", 2, Cs, Cs);
    P("attn.c_proj.bias", 1, Cs, 0);
    P("ln_2.weight", 1, Cs, 0);
    P("ln_2.bias", 1, Cs, 0);
    P("mlp.c_fc.weight", 2, Cs, Fs);
    P("mlp.c_fc.bias", 1, Fs, 0);
    P("mlp.c_proj.weight", 2, Fs, Cs);
    P("mlp.c_proj.bias", 1, Cs, 0);
#undef P
    double matmul = 2.0 * (C * 3 * C + C * C + 2 * C * F);
    double elementwise = 20.0 * C + 12.0 * F;
    l->fwd_flops_per_token = matmul + elementwise;
    l->bwd_flops_per_token = 2.0 * matmul + 2.0 * elementwise;
    /* ln_1 out and stats, qkv, attention out, residual, ln_2 out and stats,
     * fc out, gelu out, block out; and what attention keeps. */
    l->act_floats_per_token = 8.0 * C + 2.0 * F + 4.0;
    if (st_attention_is_flash(c->n_embd, c->n_head)) {
        /* cl/flash.cl: the causal half of the pairs, each Q.K and P.V (2C
         * per token and key each), the backward recomputing Q.K and dO.V
         * twice; it keeps one log-sum-exp per row and head. */
        l->fwd_flops_per_token_ctx = 2.0 * C + 2.5 * NH;
        l->bwd_flops_per_token_ctx = 7.0 * C + 2.5 * NH;
        l->act_floats_per_token += NH;
        l->act_floats_per_token_ctx = 0;
    } else {
        /* Full T x T products (the mask applied after), the probabilities kept. */
        l->fwd_flops_per_token_ctx = 4.0 * C + 5.0 * NH;
        l->bwd_flops_per_token_ctx = 8.0 * C + 5.0 * NH;
        l->act_floats_per_token_ctx = NH;
    }
    l->out_floats_per_token = Cs;
}

static void describe_head(const st_gpt_config *c, st_layer_desc *l)
{
    double C = c->n_embd, V = c->vocab_size;
    size_t Cs = (size_t)c->n_embd;
    l->kind = ST_LAYER_HEAD;
    l->block = -1;
    snprintf(l->name, sizeof l->name, "head");
    add_param(l, "ln_f.weight", 1, Cs, 0);
    add_param(l, "ln_f.bias", 1, Cs, 0);
    l->tied_numel = (size_t)c->vocab_size * Cs; /* logits = ln_f(x) . wte^T */
    l->fwd_flops_per_token = 2.0 * C * V + 10.0 * C + 5.0 * V;
    l->bwd_flops_per_token = 4.0 * C * V + 20.0 * C + 2.0 * V;
    l->act_floats_per_token = C + 2.0 + V; /* ln_f out and stats, probabilities */
    l->out_floats_per_token = 1;
}

st_status st_model_describe(const st_gpt_config *cfg, st_model_desc **out)
{
    st_status s = st_gpt_config_check(cfg);
    if (s != ST_OK)
        return s;
    st_model_desc *d = calloc(1, sizeof *d);
    size_t n = (size_t)cfg->n_layer + 2;
    st_layer_desc *layers = calloc(n, sizeof *layers);
    if (!d || !layers) {
        free(d);
        free(layers);
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory describing the model");
    }
    d->cfg = *cfg;
    d->n_layers = n;
    d->layers = layers;
    describe_embedding(cfg, &layers[0]);
    for (int i = 0; i < cfg->n_layer; i++)
        describe_block(cfg, i, &layers[i + 1]);
    describe_head(cfg, &layers[n - 1]);
    for (size_t i = 0; i < n; i++)
        d->param_numel += layers[i].param_numel;
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

double st_layer_act_floats(const st_layer_desc *l, size_t B, size_t T)
{
    return (double)B * (double)T *
           (l->act_floats_per_token + l->act_floats_per_token_ctx * (double)T);
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
