/*
 * gpt2_layers.c - the GPT-2 family's layer operations (src/stage/layer.h).
 *
 * Shape letters: B batch, T time, C channels, V vocab, NH heads, F MLP
 * width, N = B*T rows. Per block, forward (Conv1D weights [in, out]):
 *   ln1 = LN(x); qkv = ln1 W_attn + b; atty = attention(qkv)
 *   res2 = x + atty W_proj + b; ln2 = LN(res2)
 *   fch = ln2 W_fc + b; fcg = gelu(fch); res3 = res2 + fcg W_fcp + b
 * and the head: lnf = LN(x); logits = lnf wte^T; loss = xent(logits, targets).
 */
#include <math.h>
#include <stdlib.h>

#include "stage/layer.h"
#include "strata/cl.h"
#include "strata/gemm.h"

/* ---- embedding: x = wte[tok] + wpe[pos] ------------------------------------ */

enum { E_WTE, E_WPE };

static st_status emb_bind(st_layer *l)
{
    (void)l;
    return ST_OK;
}

static void emb_unbind(st_layer *l)
{
    (void)l;
}

static st_status emb_forward(st_layer *l, int slot, const st_tensor *x, const st_tensor **y,
                             const st_layer_io *io, int B, int T)
{
    (void)slot;
    (void)x;
    *y = io->x0;
    return st_encoder_fwd(io->x0, io->tokens, l->p[E_WTE], l->p[E_WPE], NULL, io->pos, B, T,
                          l->cfg->n_embd, l->cfg->vocab_size);
}

static st_status emb_backward_(st_layer *l, int slot, const st_tensor *x, st_tensor *dres,
                               const st_layer_io *io, int B, int T, float dloss);

/* A frozen embedding (LoRA) has no gradient to take. */
static st_status emb_backward(st_layer *l, int slot, const st_tensor *x, st_tensor *dres,
                              const st_layer_io *io, int B, int T, float dloss)
{
    if (!l->g || !l->g[E_WTE])
        return ST_OK;
    return emb_backward_(l, slot, x, dres, io, B, T, dloss);
}

static st_status emb_backward_(st_layer *l, int slot, const st_tensor *x, st_tensor *dres,
                              const st_layer_io *io, int B, int T, float dloss)
{
    (void)slot;
    (void)x;
    (void)dloss;
    return st_encoder_bwd(l->g[E_WTE], l->g[E_WPE], dres, io->tokens, io->pos, B, T,
                          l->cfg->n_embd, l->cfg->vocab_size);
}

static st_status emb_decode(st_layer *l, const st_pass *ps, st_tensor *x, st_layer_io *io)
{
    /* x = wte[tok] + wpe[pos]: each row at its own position */
    return st_encoder_fwd(x, io->token, l->p[E_WTE], l->p[E_WPE], ps->rows, NULL, 1, ps->n,
                          l->cfg->n_embd, l->cfg->vocab_size);
}

const st_layer_ops st_gpt2_embedding_ops = {
    .bind = emb_bind, .unbind = emb_unbind, .forward = emb_forward,
    .backward = emb_backward, .decode = emb_decode,
};

/* ---- block --------------------------------------------------------------------- */

enum { LN1_W, LN1_B, ATTN_W, ATTN_B, PROJ_W, PROJ_B, LN2_W, LN2_B, FC_W, FC_B, FCP_W, FCP_B };

/* The activations of one slot, views into the layer's buffer of that slot. */
/* LoRA's targets, each a group of one (st_lora_group) */
enum { G_ATTN, G_PROJ, G_FC, G_FCP, GROUPS };

typedef struct block_acts {
    st_tensor *ln1, *ln1_mean, *ln1_rstd, *qkv, *att, *atty, *res2;
    st_tensor *ln2, *ln2_mean, *ln2_rstd, *fch, *fcg, *res3;
    st_tensor *xa[GROUPS]; /* LoRA: x A^T of each target */
} block_acts;
#define BLOCK_ACTS (13 + GROUPS)

typedef struct block_state {
    block_acts *acts;                 /* per slot */
    st_tensor *dC, *d3C, *dF, *datt;  /* backward work: datt only on the T x T path */
    st_tensor *ln, *mean, *rstd, *qkv, *scores, *atty, *res2, *fch; /* decoding */
    st_tensor *k, *v;                 /* KV cache [kv_seqs, kv_seq, C] each */
    st_lora_group lora[GROUPS];       /* LoRA (n 0: no adapter) */
    st_tensor *dxa, *dec_xa[GROUPS];
} block_state;

static bool flash(const st_layer *l)
{
    return st_attention_is_flash(l->cfg->n_embd, l->cfg->n_head);
}

static void block_unbind(st_layer *l)
{
    block_state *b = l->state;
    if (!b)
        return;
    for (int k = 0; b->acts && k < l->slots; k++)
        st_views_destroy((st_tensor **)&b->acts[k], BLOCK_ACTS);
    free(b->acts);
    st_tensor *t[] = {b->dC, b->d3C, b->dF, b->datt, b->ln, b->mean, b->rstd,
                      b->qkv, b->scores, b->atty, b->res2, b->fch, b->k, b->v, b->dxa};
    st_views_destroy(t, sizeof t / sizeof t[0]);
    st_views_destroy(b->dec_xa, GROUPS);
    free(b);
    l->state = NULL;
}

static st_status block_bind(st_layer *l)
{
    block_state *b = calloc(1, sizeof *b);
    if (!b)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    l->state = b;
    size_t N = (size_t)l->B * l->T, C = (size_t)l->cfg->n_embd, F = (size_t)l->cfg->n_inner;
    size_t NH = (size_t)l->cfg->n_head, S = (size_t)l->kv_seq, Q = (size_t)l->kv_seqs;
    size_t P = l->prefill > 1 ? (size_t)l->prefill : 1;
    /* What attention keeps: each row's log-sum-exp [B,NH,T] (flash.cl), or
     * the probabilities [B,NH,T,T]. */
    size_t att = flash(l) ? N * NH : N * NH * (size_t)l->T;
    size_t lora_cols = 0;
    if (l->cfg->lora.rank > 0) {
        /* the adapters follow the 12 base parameters (model/gpt2.c): A, B per target */
        const st_lora *lo = &l->cfg->lora;
        int in[GROUPS] = {(int)C, (int)C, (int)C, (int)F};
        int out[GROUPS] = {3 * (int)C, (int)C, (int)F, (int)C};
        size_t i = FCP_B + 1;
        for (int g = 0; g < GROUPS; g++) {
            if (!(lo->targets & (1u << g)))
                continue;
            st_lora_group *lg = &b->lora[g];
            *lg = (st_lora_group){.n = 1, .r = lo->rank, .IC = in[g], .ldo = out[g],
                                  .oc = {out[g]}, .scale = lo->alpha / (float)lo->rank,
                                  .a = l->p[i], .b = {l->p[i + 1]},
                                  .da = l->g ? l->g[i] : NULL, .db = {l->g ? l->g[i + 1] : NULL}};
            i += 2;
            lora_cols += (size_t)lo->rank;
        }
        if (i != l->desc->n_params)
            return st_error(ST_ERR_INVALID, "internal: %s has %zu parameters, expected %zu",
                            l->desc->name, l->desc->n_params, i);
    }
    if (l->acts) {
        b->acts = calloc((size_t)l->slots, sizeof *b->acts);
        if (!b->acts)
            return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
        for (int k = 0; k < l->slots; k++) {
            st_carver c = {l->acts[k], 0, ST_OK};
            block_acts *a = &b->acts[k];
            a->ln1 = st_carve(&c, N * C);
            a->ln1_mean = st_carve(&c, N);
            a->ln1_rstd = st_carve(&c, N);
            a->qkv = st_carve(&c, N * 3 * C);
            a->att = st_carve(&c, att);
            a->atty = st_carve(&c, N * C);
            a->res2 = st_carve(&c, N * C);
            a->ln2 = st_carve(&c, N * C);
            a->ln2_mean = st_carve(&c, N);
            a->ln2_rstd = st_carve(&c, N);
            a->fch = st_carve(&c, N * F);
            a->fcg = st_carve(&c, N * F);
            a->res3 = st_carve(&c, N * C);
            for (int g = 0; g < GROUPS; g++)
                a->xa[g] = st_carve(&c, N * (size_t)b->lora[g].n * b->lora[g].r);
            if (c.status != ST_OK)
                return c.status;
        }
    }
    if (l->work) {
        st_carver c = {l->work, 0, ST_OK};
        b->dC = st_carve(&c, N * C);
        b->d3C = st_carve(&c, N * 3 * C);
        b->dF = st_carve(&c, N * F);
        b->datt = flash(l) ? NULL : st_carve(&c, N * NH * (size_t)l->T);
        b->dxa = st_carve(&c, N * lora_cols);
        if (c.status != ST_OK)
            return c.status;
    }
    if (l->dec) {
        st_carver c = {l->dec, 0, ST_OK};
        b->ln = st_carve(&c, P * C);
        b->mean = st_carve(&c, P);
        b->rstd = st_carve(&c, P);
        b->qkv = st_carve(&c, P * 3 * C);
        b->scores = st_carve(&c, P * NH * S);
        b->atty = st_carve(&c, P * C);
        b->res2 = st_carve(&c, P * C);
        b->fch = st_carve(&c, P * F);
        for (int g = 0; g < GROUPS; g++)
            b->dec_xa[g] = st_carve(&c, P * (size_t)b->lora[g].n * b->lora[g].r);
        st_carver kc = {l->kv, 0, ST_OK};
        b->k = st_carve(&kc, Q * S * C);
        b->v = st_carve(&kc, Q * S * C);
        if (c.status != ST_OK || kc.status != ST_OK)
            return c.status != ST_OK ? c.status : kc.status;
    }
    return ST_OK;
}

/* Where one pass of the block reads and writes: a micro-batch's kept
 * activations in training, the decoding work buffers for one token (the
 * norms' outputs and statistics reused, GELU in place, the output into x). */
typedef struct block_io {
    st_tensor *ln1, *mean1, *rstd1, *qkv, *atty, *res2, *ln2, *mean2, *rstd2, *fch, *fcg, *out;
    st_tensor *const *xa; /* LoRA: [GROUPS] */
} block_io;

/* The attention of one pass: over the micro-batch (flash: keeping each
 * row's log-sum-exp in att; T x T: the probabilities), or of a decoding
 * pass's rows over their sequences' KV caches. */
typedef struct block_attn {
    const st_pass *decode; /* NULL: training */
    st_tensor *att;        /* training */
    const st_tensor *pos;  /* training: packed documents' positions, or NULL */
} block_attn;

static st_status attention(st_layer *l, const block_attn *at, const block_io *o, int B, int T)
{
    st_tensor *const *p = l->p;
    block_state *d = l->state;
    int C = l->cfg->n_embd, NH = l->cfg->n_head;
    if (!at->decode)
        return flash(l) ? st_attention_flash_fwd(o->atty, at->att, o->qkv, p[ATTN_B], at->pos, B,
                                                 T, C, NH)
                        : st_attention_fwd(o->atty, at->att, o->qkv, at->pos, B, T, C, NH);
    const st_pass *ps = at->decode;
    if (flash(l))
        return st_attention_decode(o->atty, d->scores, d->k, d->v, o->qkv, p[ATTN_B], ps->rows,
                                   ps->n, ps->own_row, l->kv_seqs, l->kv_seq, C, NH);
    /* Heads too large for cl/flash.cl: row by row (a row of a sequence
     * after the rows before it), each a product per head. qkv has its bias. */
    size_t Cs = (size_t)C, NHs = (size_t)NH, HS = Cs / NHs, S = (size_t)l->kv_seq;
    float scale = (float)(1.0 / sqrt((double)HS));
    st_status s = ST_OK;
    for (int r = 0; s == ST_OK && r < ps->n; r++) {
        size_t len = (size_t)ps->pos[r] + 1, cache = (size_t)ps->seq[r] * S * Cs;
        size_t q = (size_t)r * 3 * Cs;
        if ((s = st_tensor_copy(d->k, cache + (size_t)ps->pos[r] * Cs, o->qkv, q + Cs, Cs)) !=
                ST_OK ||
            (s = st_tensor_copy(d->v, cache + (size_t)ps->pos[r] * Cs, o->qkv, q + 2 * Cs, Cs)) !=
                ST_OK)
            return s;
        /* scores[h, 0..pos] = q_h . K_h^T * scale, one product per head */
        st_gemm_args qk = {.trans_b = true, .m = 1, .n = len, .k = HS, .alpha = scale,
                           .a = o->qkv, .a_offset = q, .lda = 3 * Cs, .a_stride = HS,
                           .b = d->k, .b_offset = cache, .ldb = Cs, .b_stride = HS,
                           .c = d->scores, .ldc = S, .c_stride = S, .batch = NHs};
        if ((s = st_gemm(&qk)) != ST_OK ||
            (s = ST_LAUNCH(l->dev, "attention.cl", "attention_softmax_rows", NHs, 16,
                           ST_KT(d->scores), ST_KI(NH), ST_KI(len), ST_KI(S))) != ST_OK)
            return s;
        /* atty_h = scores_h[1, len] . V_h[len, HS] */
        st_gemm_args pv = {.m = 1, .n = HS, .k = len, .alpha = 1.0f,
                           .a = d->scores, .lda = S, .a_stride = S,
                           .b = d->v, .b_offset = cache, .ldb = Cs, .b_stride = HS,
                           .c = o->atty, .c_offset = (size_t)r * Cs, .ldc = Cs, .c_stride = HS,
                           .batch = NHs};
        s = st_gemm(&pv);
    }
    return s;
}

/* The block's forward for training and decoding alike, 9 launches with
 * flash attention: each linear layer's bias is added by the op after its
 * product (attention reads qkv's bias as it loads; the projections' biases
 * go with the residual sum, the first also with ln_2, the MLP's first with
 * GELU). */
static st_status block_pass(st_layer *l, const block_io *o, const block_attn *at,
                            const st_tensor *x, int B, int T)
{
    st_tensor *const *p = l->p;
    int N = B * T, C = l->cfg->n_embd, F = l->cfg->n_inner;
    float eps = l->cfg->norm_eps;
    bool fl = flash(l);
    const st_lora_group *lg = ((block_state *)l->state)->lora;
    st_tensor *const *xa = o->xa;
    st_status s;
    if ((s = st_layernorm_fwd(o->ln1, o->mean1, o->rstd1, x, p[LN1_W], p[LN1_B], N, C, eps)) !=
            ST_OK ||
        (s = st_matmul_fwd(o->qkv, o->ln1, p[ATTN_W], fl ? NULL : p[ATTN_B], N, C, 3 * C)) !=
            ST_OK ||
        (lg[G_ATTN].n && (s = st_lora_fwd(&lg[G_ATTN], o->qkv, xa[G_ATTN], o->ln1, N)) != ST_OK) ||
        (s = attention(l, at, o, B, T)) != ST_OK ||
        (s = st_matmul_fwd(o->res2, o->atty, p[PROJ_W], NULL, N, C, C)) != ST_OK ||
        (lg[G_PROJ].n && (s = st_lora_fwd(&lg[G_PROJ], o->res2, xa[G_PROJ], o->atty, N)) != ST_OK) ||
        (s = st_bias_residual_layernorm_fwd(o->res2, o->ln2, o->mean2, o->rstd2, o->res2,
                                            p[PROJ_B], x, p[LN2_W], p[LN2_B], N, C, eps)) !=
            ST_OK ||
        (s = st_matmul_fwd(o->fch, o->ln2, p[FC_W], NULL, N, C, F)) != ST_OK ||
        (lg[G_FC].n && (s = st_lora_fwd(&lg[G_FC], o->fch, xa[G_FC], o->ln2, N)) != ST_OK) ||
        (s = st_bias_gelu_fwd(o->fch, o->fcg, p[FC_B], N, F)) != ST_OK ||
        (s = st_matmul_fwd(o->out, o->fcg, p[FCP_W], NULL, N, F, C)) != ST_OK ||
        (lg[G_FCP].n && (s = st_lora_fwd(&lg[G_FCP], o->out, xa[G_FCP], o->fcg, N)) != ST_OK) ||
        (s = st_bias_residual_fwd(o->out, p[FCP_B], o->res2, N, C)) != ST_OK)
        return s;
    return ST_OK;
}

static st_status block_forward(st_layer *l, int slot, const st_tensor *x, const st_tensor **y,
                               const st_layer_io *io, int B, int T)
{
    block_acts *a = &((block_state *)l->state)->acts[slot];
    block_io o = {a->ln1, a->ln1_mean, a->ln1_rstd, a->qkv, a->atty, a->res2,
                  a->ln2, a->ln2_mean, a->ln2_rstd, a->fch, a->fcg, a->res3, a->xa};
    block_attn at = {.att = a->att, .pos = io->pos};
    *y = a->res3;
    return block_pass(l, &o, &at, x, B, T);
}

/* dres holds the gradient of the block's output on entry and of its input
 * on exit. 15 launches (flash attention): the biases' gradients are column
 * sums, taken where a pass over the same rows already runs (the fc bias
 * with GELU's backward; the MLP output's with ln_2's weight gradients,
 * before ln_2's input gradient changes dres; the projection's and qkv's
 * with ln_1's). */
static st_status block_backward(st_layer *l, int slot, const st_tensor *x, st_tensor *dres,
                                const st_layer_io *io, int B, int T, float dloss)
{
    (void)dloss;
    block_state *b = l->state;
    st_tensor *const *p = l->p, *const *d = l->g;
    const block_acts *a = &b->acts[slot];
    int N = B * T, C = l->cfg->n_embd, F = l->cfg->n_inner, NH = l->cfg->n_head;
    st_status s;
    const st_lora_group *lg = b->lora;
    /* res3 = res2 + fcg W_fcp + b: the MLP branch gets dres; dres stays d(res2) so far. */
    if ((s = st_matmul_bwd(b->dF, 0.0f, d[FCP_W], NULL, dres, a->fcg, p[FCP_W], N, F, C)) !=
            ST_OK ||
        (lg[G_FCP].n &&
         (s = st_lora_bwd(&lg[G_FCP], b->dF, b->dxa, dres, a->xa[G_FCP], a->fcg, N)) != ST_OK) ||
        (s = st_gelu_bwd_bias(b->dF, a->fch, b->dF, d[FC_B], N, F)) != ST_OK ||
        (s = st_matmul_bwd(b->dC, 0.0f, d[FC_W], NULL, b->dF, a->ln2, p[FC_W], N, C, F)) !=
            ST_OK ||
        (lg[G_FC].n &&
         (s = st_lora_bwd(&lg[G_FC], b->dC, b->dxa, b->dF, a->xa[G_FC], a->ln2, N)) != ST_OK) ||
        (s = st_layernorm_bwd_biases(dres, d[LN2_W], d[LN2_B], b->dC, a->res2, p[LN2_W],
                                     a->ln2_mean, a->ln2_rstd, N, C, d[FCP_B], dres, C, NULL,
                                     NULL, 0)) != ST_OK)
        return s;
    /* res2 = x + atty W_proj + b: the attention branch gets dres; dres becomes d(x). */
    if ((s = st_matmul_bwd(b->dC, 0.0f, d[PROJ_W], NULL, dres, a->atty, p[PROJ_W], N, C, C)) !=
            ST_OK ||
        (lg[G_PROJ].n &&
         (s = st_lora_bwd(&lg[G_PROJ], b->dC, b->dxa, dres, a->xa[G_PROJ], a->atty, N)) !=
             ST_OK) ||
        (s = flash(l) ? st_attention_flash_bwd(b->d3C, b->dC, a->atty, a->att, a->qkv,
                                               p[ATTN_B], io->pos, B, T, C, NH)
                      : st_attention_bwd(b->d3C, b->datt, b->dC, a->qkv, a->att, io->pos, B, T,
                                         C, NH)) != ST_OK ||
        (s = st_matmul_bwd(b->dC, 0.0f, d[ATTN_W], NULL, b->d3C, a->ln1, p[ATTN_W], N, C,
                           3 * C)) != ST_OK ||
        (lg[G_ATTN].n &&
         (s = st_lora_bwd(&lg[G_ATTN], b->dC, b->dxa, b->d3C, a->xa[G_ATTN], a->ln1, N)) !=
             ST_OK) ||
        (s = st_layernorm_bwd_biases(dres, d[LN1_W], d[LN1_B], b->dC, x, p[LN1_W], a->ln1_mean,
                                     a->ln1_rstd, N, C, d[PROJ_B], dres, C, d[ATTN_B], b->d3C,
                                     3 * C)) != ST_OK)
        return s;
    return ST_OK;
}

/* n tokens through the block: the same pass over n rows (one product per
 * linear layer for all of them), its attention (the new keys and values
 * into the caches, scores, softmax, weighted values) by cl/flash.cl when
 * the head size allows. */
static st_status block_decode(st_layer *l, const st_pass *ps, st_tensor *x, st_layer_io *io)
{
    (void)io;
    block_state *d = l->state;
    block_io o = {d->ln, d->mean, d->rstd, d->qkv, d->atty, d->res2,
                  d->ln, d->mean, d->rstd, d->fch, d->fch, x, d->dec_xa};
    block_attn at = {.decode = ps};
    return block_pass(l, &o, &at, x, 1, ps->n);
}

const st_layer_ops st_gpt2_block_ops = {
    .bind = block_bind, .unbind = block_unbind, .forward = block_forward,
    .backward = block_backward, .decode = block_decode,
};

/* ---- head: lnf = LN(x); logits = lnf wte^T; losses ------------------------------ */

enum { LNF_W, LNF_B, H_WTE };

typedef struct head_acts {
    st_tensor *lnf, *mean, *rstd, *logits, *losses;
} head_acts;
#define HEAD_ACTS 5

typedef struct head_state {
    head_acts *acts;
    st_tensor *dC;
    st_tensor *ln, *mean, *rstd, *logits; /* decoding */
} head_state;

static void head_unbind(st_layer *l)
{
    head_state *h = l->state;
    if (!h)
        return;
    for (int k = 0; h->acts && k < l->slots; k++)
        st_views_destroy((st_tensor **)&h->acts[k], HEAD_ACTS);
    free(h->acts);
    st_tensor *t[] = {h->dC, h->ln, h->mean, h->rstd, h->logits};
    st_views_destroy(t, sizeof t / sizeof t[0]);
    free(h);
    l->state = NULL;
}

static st_status head_bind(st_layer *l)
{
    head_state *h = calloc(1, sizeof *h);
    if (!h)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    l->state = h;
    size_t N = (size_t)l->B * l->T, C = (size_t)l->cfg->n_embd, V = (size_t)l->cfg->vocab_size;
    if (l->acts) {
        h->acts = calloc((size_t)l->slots, sizeof *h->acts);
        if (!h->acts)
            return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
        for (int k = 0; k < l->slots; k++) {
            st_carver c = {l->acts[k], 0, ST_OK};
            head_acts *a = &h->acts[k];
            a->lnf = st_carve(&c, N * C);
            a->mean = st_carve(&c, N);
            a->rstd = st_carve(&c, N);
            a->logits = st_carve(&c, N * V);
            a->losses = st_carve(&c, N);
            if (c.status != ST_OK)
                return c.status;
        }
    }
    if (l->work) {
        st_carver c = {l->work, 0, ST_OK};
        h->dC = st_carve(&c, N * C);
        if (c.status != ST_OK)
            return c.status;
    }
    if (l->dec) {
        st_carver c = {l->dec, 0, ST_OK};
        size_t Q = (size_t)l->kv_seqs; /* a row of logits per sequence */
        h->ln = st_carve(&c, Q * C);
        h->mean = st_carve(&c, Q);
        h->rstd = st_carve(&c, Q);
        h->logits = st_carve(&c, Q * V);
        if (c.status != ST_OK)
            return c.status;
    }
    return ST_OK;
}

static st_status head_forward(st_layer *l, int slot, const st_tensor *x, const st_tensor **y,
                              const st_layer_io *io, int B, int T)
{
    head_acts *a = &((head_state *)l->state)->acts[slot];
    int N = B * T, C = l->cfg->n_embd, V = l->cfg->vocab_size;
    *y = NULL;
    st_status s = st_layernorm_fwd(a->lnf, a->mean, a->rstd, x, l->p[LNF_W], l->p[LNF_B], N, C,
                                   l->cfg->norm_eps);
    if (s != ST_OK)
        return s;
    /* logits[N,V] = lnf[N,C] . wte[V,C]^T */
    st_gemm_args mm = {.trans_b = true, .m = (size_t)N, .n = (size_t)V, .k = (size_t)C,
                       .alpha = 1.0f, .a = a->lnf, .lda = (size_t)C, .b = l->p[H_WTE],
                       .ldb = (size_t)C, .c = a->logits, .ldc = (size_t)V};
    if ((s = st_gemm(&mm)) != ST_OK || !io->targets)
        return s;
    return st_xent_fwd(a->logits, a->losses, a->logits, io->targets, N, V);
}

static st_status head_backward(st_layer *l, int slot, const st_tensor *x, st_tensor *dres,
                               const st_layer_io *io, int B, int T, float dloss)
{
    head_state *h = l->state;
    head_acts *a = &h->acts[slot];
    int N = B * T, C = l->cfg->n_embd, V = l->cfg->vocab_size;
    st_status s;
    /* The probabilities become dlogits in place: the forward's probs are not needed after. */
    if ((s = st_xent_bwd(a->logits, a->logits, io->targets, dloss, N, V)) != ST_OK)
        return s;
    /* dlnf[N,C] = dlogits[N,V] . wte[V,C];  dwte[V,C] += dlogits^T . lnf */
    st_gemm_args dx = {.m = (size_t)N, .n = (size_t)C, .k = (size_t)V, .alpha = 1.0f,
                       .a = a->logits, .lda = (size_t)V, .b = l->p[H_WTE], .ldb = (size_t)C,
                       .c = h->dC, .ldc = (size_t)C};
    st_gemm_args dw = {.trans_a = true, .m = (size_t)V, .n = (size_t)C, .k = (size_t)N,
                       .alpha = 1.0f, .beta = 1.0f, .a = a->logits, .lda = (size_t)V,
                       .b = a->lnf, .ldb = (size_t)C, .c = l->g[H_WTE], .ldc = (size_t)C};
    if ((s = st_gemm(&dx)) != ST_OK || (l->g[H_WTE] && (s = st_gemm(&dw)) != ST_OK) ||
        (s = st_tensor_fill(dres, 0.0f)) != ST_OK ||
        (s = st_layernorm_bwd(dres, l->g[LNF_W], l->g[LNF_B], h->dC, x, l->p[LNF_W], a->mean,
                              a->rstd, N, C)) != ST_OK)
        return s;
    return ST_OK;
}

static st_status head_decode(st_layer *l, const st_pass *ps, st_tensor *x, st_layer_io *io)
{
    head_state *h = l->state;
    int C = l->cfg->n_embd, V = l->cfg->vocab_size, M = ps->n_out;
    /* the logits of the rows asked for only: each sequence's next token */
    st_tensor *rows = NULL;
    st_status s = st_pass_out_rows(ps, x, (size_t)C, &rows);
    if (s == ST_OK)
        s = st_layernorm_fwd(h->ln, h->mean, h->rstd, rows, l->p[LNF_W], l->p[LNF_B], M, C,
                             l->cfg->norm_eps);
    st_tensor_destroy(rows);
    if (s != ST_OK)
        return s;
    st_gemm_args mm = {.trans_b = true, .m = (size_t)M, .n = (size_t)V, .k = (size_t)C,
                       .alpha = 1.0f, .a = h->ln, .lda = (size_t)C, .b = l->p[H_WTE],
                       .ldb = (size_t)C, .c = h->logits, .ldc = (size_t)V};
    io->logits = h->logits;
    return st_gemm(&mm);
}

static st_tensor *head_output(st_layer *l, int slot)
{
    return ((head_state *)l->state)->acts[slot].logits;
}

static st_tensor *head_losses(st_layer *l, int slot)
{
    return ((head_state *)l->state)->acts[slot].losses;
}

const st_layer_ops st_gpt2_head_ops = {
    .bind = head_bind, .unbind = head_unbind, .forward = head_forward,
    .backward = head_backward, .decode = head_decode, .output = head_output,
    .losses = head_losses,
};
