/*
 * llama_layers.c - the Llama family's layer operations (src/stage/layer.h).
 *
 * Shape letters: B batch, T time, C channels, V vocab, NH heads, KV
 * key/value heads, HS head size, KVD = KV*HS, Q = C + 2 KVD (the q, k and
 * v projections side by side), F MLP width, N = B*T rows. nn.Linear weights
 * are [out, in]; q, k and v lie next to each other in the parameter buffer
 * (model/llama.c), so W_qkv [Q, C] is one view, and so are gate and up
 * (W_gu [2F, C]). Per block, forward:
 *   ln1 = RMSNorm(x); qkv = rope(ln1 W_qkv^T + b_qkv); atty = attention(qkv)
 *   res2 = x + atty W_o^T (+ b_o); ln2 = RMSNorm(res2)
 *   gu = ln2 W_gu^T; h = silu(g) * u; res3 = res2 + h W_down^T
 * and the head: lnf = RMSNorm(x); logits = lnf W^T (lm_head or the tied
 * embedding); loss = xent(logits, targets).
 */
#include <math.h>
#include <stdlib.h>

#include "stage/layer.h"
#include "strata/gemm.h"

/* ---- embedding: x = embed_tokens[tok] ---------------------------------------- */

static st_status none_bind(st_layer *l)
{
    (void)l;
    return ST_OK;
}

static void none_unbind(st_layer *l)
{
    (void)l;
}

static st_status emb_forward(st_layer *l, int slot, const st_tensor *x, const st_tensor **y,
                             const st_layer_io *io, int B, int T)
{
    (void)slot;
    (void)x;
    *y = io->x0;
    return st_embedding_fwd(io->x0, io->tokens, l->p[0], B * T, l->cfg->n_embd,
                            l->cfg->vocab_size);
}

static st_status emb_backward(st_layer *l, int slot, const st_tensor *x, st_tensor *dres,
                              const st_layer_io *io, int B, int T, float dloss)
{
    (void)slot;
    (void)x;
    (void)dloss;
    if (!l->g || !l->g[0]) /* frozen */
        return ST_OK;
    return st_embedding_bwd(l->g[0], dres, io->tokens, B * T, l->cfg->n_embd,
                            l->cfg->vocab_size);
}

static st_status emb_decode(st_layer *l, const st_pass *ps, st_tensor *x, st_layer_io *io)
{
    return st_embedding_fwd(x, io->token, l->p[0], ps->n, l->cfg->n_embd, l->cfg->vocab_size);
}

const st_layer_ops st_llama_embedding_ops = {
    .bind = none_bind, .unbind = none_unbind, .forward = emb_forward,
    .backward = emb_backward, .decode = emb_decode,
};

/* ---- block ---------------------------------------------------------------------- */

/* LoRA's groups of projections that share an input (st_lora_group) */
enum { G_QKV, G_O, G_GU, G_DOWN, GROUPS };

typedef struct block_acts {
    st_tensor *ln1, *rstd1, *qkv, *atty, *lse, *res2, *ln2, *rstd2, *gu, *h, *res3;
    st_tensor *xa[GROUPS]; /* LoRA: x A^T of each group */
} block_acts;
#define BLOCK_ACTS (11 + GROUPS)

typedef struct block_state {
    /* parameter indices into l->p / l->g */
    int in_norm, q_w, q_b, o_w, o_b, post_norm, gate, down;
    st_tensor *w_qkv, *b_qkv, *w_gu, *dw_qkv, *db_qkv, *dw_gu; /* views over neighbours */
    block_acts *acts;
    st_tensor *dC, *dqkv, *dF, *dgu;                            /* backward work */
    st_tensor *ln, *rstd, *qkv, *scores, *atty, *res2, *gu, *h; /* decoding */
    st_tensor *k, *v;                                           /* KV cache [kv_seqs, S, KVD] */
    /* LoRA: each group's adapters (n 0: none), views of its A's side by
     * side and of their gradients, the backward's and decoding's x A^T */
    st_lora_group lora[GROUPS];
    st_tensor *la[GROUPS], *dla[GROUPS], *dxa, *dec_xa[GROUPS];
} block_state;

typedef struct dims {
    int C, NH, KV, HS, KVD, Q, F;
} dims;

static dims dims_of(const st_layer *l)
{
    dims d;
    d.C = l->cfg->n_embd;
    d.NH = l->cfg->n_head;
    d.KV = l->cfg->n_kv_head;
    d.HS = d.C / d.NH;
    d.KVD = d.KV * d.HS;
    d.Q = d.C + 2 * d.KVD;
    d.F = l->cfg->n_inner;
    return d;
}

static void block_unbind(st_layer *l)
{
    block_state *b = l->state;
    if (!b)
        return;
    for (int k = 0; b->acts && k < l->slots; k++)
        st_views_destroy((st_tensor **)&b->acts[k], BLOCK_ACTS);
    free(b->acts);
    st_tensor *t[] = {b->w_qkv, b->b_qkv, b->w_gu, b->dw_qkv, b->db_qkv, b->dw_gu,
                      b->dC,    b->dqkv,  b->dF,   b->dgu,    b->ln,     b->rstd,
                      b->qkv,   b->scores, b->atty, b->res2,  b->gu,     b->h,
                      b->k,     b->v,     b->dxa};
    st_views_destroy(t, sizeof t / sizeof t[0]);
    st_views_destroy(b->la, GROUPS);
    st_views_destroy(b->dla, GROUPS);
    st_views_destroy(b->dec_xa, GROUPS);
    free(b);
    l->state = NULL;
}

/* The rotary frequencies [HS/2] in float as Hugging Face computes them:
 * theta^(-2i/HS), rescaled by wavelength for Llama 3's "llama3" scaling. */
static st_status write_inv_freq(st_layer *l, int HS)
{
    const st_model_config *c = l->cfg;
    int half = HS / 2;
    float *f = malloc((size_t)half * sizeof *f);
    if (!f)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    for (int i = 0; i < half; i++) {
        float inv = 1.0f / powf((float)c->rope_theta, (float)(2 * i) / (float)HS);
        if (c->rope_type == ST_ROPE_LLAMA3) {
            float factor = (float)c->rope_factor, lo = (float)c->rope_low_freq_factor;
            float hi = (float)c->rope_high_freq_factor, old = (float)c->rope_original_positions;
            float low_wavelen = old / lo, high_wavelen = old / hi;
            float wavelen = 2.0f * 3.14159265358979323846f / inv;
            if (wavelen > low_wavelen) {
                inv = inv / factor;
            } else if (!(wavelen < high_wavelen)) {
                float smooth = (old / wavelen - lo) / (hi - lo);
                inv = (1.0f - smooth) * inv / factor + smooth * inv;
            }
        }
        f[i] = inv;
    }
    st_status s = st_tensor_write(l->consts, 0, (size_t)half, f);
    free(f);
    return s;
}

/* A view of n elements of buf starting where parameter i starts, after
 * checking that the parameters [i, i + count) lie one after another. */
static st_tensor *span(st_layer *l, st_tensor *buf, int i, int count, size_t n, st_status *s)
{
    /* weights stored in 16 bits lie in the 16-bit buffer, and products
     * widen them into the stage's scratch */
    bool half = buf == l->pbuf && l->p[i] && st_tensor_dtype(l->p[i]) != ST_F32;
    if (half) {
        st_tensor *v = span(l, l->hbuf, i, count, n, s);
        if (v)
            st_tensor_set_unpack(v, st_tensor_unpack(l->p[i]));
        return v;
    }
    size_t want = l->offset[i];
    for (int j = i; *s == ST_OK && j < i + count; j++) {
        if (l->offset[j] != want)
            *s = st_error(ST_ERR_INVALID, "internal: parameters of %s are not adjacent",
                          l->desc->name);
        want += l->desc->params[j].numel;
    }
    return st_view_at(buf, l->offset[i], n, s);
}

static st_status block_bind(st_layer *l)
{
    block_state *b = calloc(1, sizeof *b);
    if (!b)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    l->state = b;
    dims d = dims_of(l);
    int i = 0;
    b->in_norm = i++;
    b->q_w = i;
    i += 3;
    b->q_b = l->cfg->attn_bias ? i : -1;
    i += l->cfg->attn_bias ? 3 : 0;
    b->o_w = i++;
    b->o_b = l->cfg->attn_out_bias ? i++ : -1;
    b->post_norm = i++;
    b->gate = i;
    i += 2;
    b->down = i++;
    size_t lora_cols = 0;
    st_status s = ST_OK;
    if (l->cfg->lora.rank > 0) {
        /* the adapters follow the base in groups (model/llama.c): A's, then B's */
        const st_lora *lo = &l->cfg->lora;
        static const int first[GROUPS + 1] = {0, 3, 4, 6, 7};
        int ic[GROUPS] = {d.C, d.C, d.C, d.F}, ldo[GROUPS] = {d.Q, d.C, 2 * d.F, d.C};
        int col[7] = {0, d.C, d.C + d.KVD, 0, 0, d.F, 0};
        int oc[7] = {d.C, d.KVD, d.KVD, d.C, d.F, d.F, d.C};
        for (int g = 0; g < GROUPS; g++) {
            st_lora_group *lg = &b->lora[g];
            lg->r = lo->rank;
            lg->scale = lo->alpha / (float)lo->rank;
            lg->IC = ic[g];
            lg->ldo = ldo[g];
            for (int t = first[g]; t < first[g + 1]; t++)
                if (lo->targets & (1u << t)) {
                    lg->col[lg->n] = col[t];
                    lg->oc[lg->n] = oc[t];
                    lg->n++;
                }
            if (lg->n == 0)
                continue;
            size_t n_a = (size_t)lg->n * lo->rank * ic[g];
            b->la[g] = span(l, l->pbuf, i, lg->n, n_a, &s);
            lg->a = b->la[g];
            if (l->gbuf) {
                b->dla[g] = span(l, l->gbuf, i, lg->n, n_a, &s);
                lg->da = b->dla[g];
            }
            for (int j = 0; j < lg->n; j++) {
                lg->b[j] = l->p[i + lg->n + j];
                lg->db[j] = l->g ? l->g[i + lg->n + j] : NULL;
            }
            i += 2 * lg->n;
            lora_cols += (size_t)lg->n * lo->rank;
        }
    }
    if ((size_t)i != l->desc->n_params)
        return st_error(ST_ERR_INVALID, "internal: %s has %zu parameters, expected %d",
                        l->desc->name, l->desc->n_params, i);
    size_t N = (size_t)l->B * l->T, C = (size_t)d.C, Q = (size_t)d.Q, F = (size_t)d.F;
    size_t NH = (size_t)d.NH, S = (size_t)l->kv_seq, KVD = (size_t)d.KVD;
    size_t P = l->prefill > 1 ? (size_t)l->prefill : 1;
    b->w_qkv = span(l, l->pbuf, b->q_w, 3, Q * C, &s);
    b->w_gu = span(l, l->pbuf, b->gate, 2, 2 * F * C, &s);
    if (b->q_b >= 0)
        b->b_qkv = span(l, l->pbuf, b->q_b, 3, Q, &s);
    if (l->gbuf && !l->desc->params[b->q_w].frozen) {
        b->dw_qkv = span(l, l->gbuf, b->q_w, 3, Q * C, &s);
        b->dw_gu = span(l, l->gbuf, b->gate, 2, 2 * F * C, &s);
        if (b->q_b >= 0)
            b->db_qkv = span(l, l->gbuf, b->q_b, 3, Q, &s);
    }
    if (s != ST_OK)
        return s;
    if (l->acts) {
        b->acts = calloc((size_t)l->slots, sizeof *b->acts);
        if (!b->acts)
            return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
        for (int k = 0; k < l->slots; k++) {
            st_carver c = {l->acts[k], 0, ST_OK};
            block_acts *a = &b->acts[k];
            a->ln1 = st_carve(&c, N * C);
            a->rstd1 = st_carve(&c, N);
            a->qkv = st_carve(&c, N * Q);
            a->atty = st_carve(&c, N * C);
            a->lse = st_carve(&c, N * NH);
            a->res2 = st_carve(&c, N * C);
            a->ln2 = st_carve(&c, N * C);
            a->rstd2 = st_carve(&c, N);
            a->gu = st_carve(&c, N * 2 * F);
            a->h = st_carve(&c, N * F);
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
        b->dqkv = st_carve(&c, N * Q);
        b->dF = st_carve(&c, N * F);
        b->dgu = st_carve(&c, N * 2 * F);
        b->dxa = st_carve(&c, N * lora_cols);
        if (c.status != ST_OK)
            return c.status;
    }
    if (l->dec) {
        st_carver c = {l->dec, 0, ST_OK};
        b->ln = st_carve(&c, P * C);
        b->rstd = st_carve(&c, P);
        b->qkv = st_carve(&c, P * Q);
        b->atty = st_carve(&c, P * C);
        b->res2 = st_carve(&c, P * C);
        b->gu = st_carve(&c, P * 2 * F);
        b->h = st_carve(&c, P * F);
        b->scores = st_carve(&c, P * NH * S);
        for (int g = 0; g < GROUPS; g++)
            b->dec_xa[g] = st_carve(&c, P * (size_t)b->lora[g].n * b->lora[g].r);
        st_carver kc = {l->kv, 0, ST_OK};
        b->k = st_carve(&kc, (size_t)l->kv_seqs * S * KVD);
        b->v = st_carve(&kc, (size_t)l->kv_seqs * S * KVD);
        if (c.status != ST_OK || kc.status != ST_OK)
            return c.status != ST_OK ? c.status : kc.status;
    }
    return write_inv_freq(l, d.HS);
}

/* Where one pass of the block reads and writes: a micro-batch's kept
 * activations in training, the decoding work buffers for one token (the
 * norm's output and statistic reused, the output into x). */
typedef struct block_io {
    st_tensor *ln1, *rstd1, *qkv, *atty, *res2, *ln2, *rstd2, *gu, *h, *out;
    st_tensor *const *xa; /* LoRA: [GROUPS] */
} block_io;

/* The attention of one pass: over the micro-batch (keeping each row's
 * log-sum-exp), or of a decoding pass's rows over their sequences' KV
 * caches. */
typedef struct block_attn {
    const st_pass *decode; /* NULL: training */
    st_tensor *lse;
    const st_tensor *pos;  /* training: packed documents' positions, or NULL */
} block_attn;

/* The block's forward for training and decoding alike: 10 launches (11 with
 * an output bias). */
static st_status block_pass(st_layer *l, const block_io *o, const block_attn *at,
                            const st_tensor *x, int B, int T)
{
    block_state *b = l->state;
    st_tensor *const *p = l->p;
    dims d = dims_of(l);
    int N = B * T;
    float eps = l->cfg->norm_eps;
    const st_pass *ps = at->decode;
    const st_tensor *rows = ps ? ps->rows : NULL;
    st_status s;
    const st_lora_group *lg = b->lora;
    st_tensor *const *xa = o->xa;
    if ((s = st_rmsnorm_fwd(o->ln1, o->rstd1, x, p[b->in_norm], N, d.C, eps)) != ST_OK ||
        (s = st_linear_fwd(o->qkv, o->ln1, b->w_qkv, NULL, N, d.C, d.Q)) != ST_OK ||
        (lg[G_QKV].n && (s = st_lora_fwd(&lg[G_QKV], o->qkv, xa[G_QKV], o->ln1, N)) != ST_OK) ||
        (s = st_rope_fwd(o->qkv, b->b_qkv, l->consts, rows, at->pos, N, T, 0, d.NH, d.KV,
                         d.HS)) != ST_OK ||
        (s = ps ? st_attention_gqa_decode(o->atty, b->scores, b->k, b->v, o->qkv, NULL, rows,
                                          ps->n, ps->own_row, l->kv_seqs, l->kv_seq, d.C, d.NH,
                                          d.KV)
                : st_attention_gqa_fwd(o->atty, at->lse, o->qkv, NULL, at->pos, B, T, d.C, d.NH,
                                       d.KV)) != ST_OK ||
        (s = st_linear_fwd(o->res2, o->atty, p[b->o_w], b->o_b >= 0 ? p[b->o_b] : NULL, N, d.C,
                           d.C)) != ST_OK ||
        (lg[G_O].n && (s = st_lora_fwd(&lg[G_O], o->res2, xa[G_O], o->atty, N)) != ST_OK) ||
        (s = st_residual_rmsnorm_fwd(o->res2, o->ln2, o->rstd2, o->res2, x, p[b->post_norm], N,
                                     d.C, eps)) != ST_OK ||
        (s = st_linear_fwd(o->gu, o->ln2, b->w_gu, NULL, N, d.C, 2 * d.F)) != ST_OK ||
        (lg[G_GU].n && (s = st_lora_fwd(&lg[G_GU], o->gu, xa[G_GU], o->ln2, N)) != ST_OK) ||
        (s = st_swiglu_fwd(o->h, o->gu, N, d.F)) != ST_OK ||
        (s = st_linear_fwd(o->out, o->h, p[b->down], NULL, N, d.F, d.C)) != ST_OK ||
        (lg[G_DOWN].n && (s = st_lora_fwd(&lg[G_DOWN], o->out, xa[G_DOWN], o->h, N)) != ST_OK) ||
        (s = st_residual_fwd(o->out, o->out, o->res2, (size_t)N * d.C)) != ST_OK)
        return s;
    return ST_OK;
}

static st_status block_forward(st_layer *l, int slot, const st_tensor *x, const st_tensor **y,
                               const st_layer_io *io, int B, int T)
{
    block_acts *a = &((block_state *)l->state)->acts[slot];
    block_io o = {a->ln1, a->rstd1, a->qkv, a->atty, a->res2, a->ln2, a->rstd2, a->gu, a->h,
                  a->res3, a->xa};
    block_attn at = {.lse = a->lse, .pos = io->pos};
    *y = a->res3;
    return block_pass(l, &o, &at, x, B, T);
}

/* dres: the gradient of the block's output on entry, of its input on exit. */
static st_status block_backward(st_layer *l, int slot, const st_tensor *x, st_tensor *dres,
                                const st_layer_io *io, int B, int T, float dloss)
{
    (void)dloss;
    block_state *b = l->state;
    st_tensor *const *p = l->p, *const *g = l->g;
    const block_acts *a = &b->acts[slot];
    dims d = dims_of(l);
    int N = B * T;
    st_status s;
    const st_lora_group *lg = b->lora;
    /* res3 = res2 + h W_down^T: the MLP gets dres; dres then gains RMSNorm's part. */
    if ((s = st_linear_bwd(b->dF, 0.0f, g[b->down], NULL, dres, a->h, p[b->down], N, d.F,
                           d.C)) != ST_OK ||
        (lg[G_DOWN].n &&
         (s = st_lora_bwd(&lg[G_DOWN], b->dF, b->dxa, dres, a->xa[G_DOWN], a->h, N)) != ST_OK) ||
        (s = st_swiglu_bwd(b->dgu, b->dF, a->gu, N, d.F)) != ST_OK ||
        (s = st_linear_bwd(b->dC, 0.0f, b->dw_gu, NULL, b->dgu, a->ln2, b->w_gu, N, d.C,
                           2 * d.F)) != ST_OK ||
        (lg[G_GU].n &&
         (s = st_lora_bwd(&lg[G_GU], b->dC, b->dxa, b->dgu, a->xa[G_GU], a->ln2, N)) != ST_OK) ||
        (s = st_rmsnorm_bwd(dres, g[b->post_norm], b->dC, a->res2, p[b->post_norm], a->rstd2, N,
                            d.C)) != ST_OK)
        return s;
    /* res2 = x + atty W_o^T: the attention gets dres; dres becomes d(x). */
    if ((s = st_linear_bwd(b->dC, 0.0f, g[b->o_w], b->o_b >= 0 ? g[b->o_b] : NULL, dres,
                           a->atty, p[b->o_w], N, d.C, d.C)) != ST_OK ||
        (lg[G_O].n &&
         (s = st_lora_bwd(&lg[G_O], b->dC, b->dxa, dres, a->xa[G_O], a->atty, N)) != ST_OK) ||
        (s = st_attention_gqa_bwd(b->dqkv, b->dC, a->atty, a->lse, a->qkv, NULL, io->pos, B, T,
                                  d.C, d.NH, d.KV)) != ST_OK ||
        (s = st_rope_bwd(b->dqkv, l->consts, io->pos, N, T, 0, d.NH, d.KV, d.HS)) != ST_OK ||
        (b->db_qkv && (s = st_bias_bwd(b->db_qkv, b->dqkv, N, d.Q)) != ST_OK) ||
        (s = st_linear_bwd(b->dC, 0.0f, b->dw_qkv, NULL, b->dqkv, a->ln1, b->w_qkv, N, d.C,
                           d.Q)) != ST_OK ||
        (lg[G_QKV].n &&
         (s = st_lora_bwd(&lg[G_QKV], b->dC, b->dxa, b->dqkv, a->xa[G_QKV], a->ln1, N)) !=
             ST_OK) ||
        (s = st_rmsnorm_bwd(dres, g[b->in_norm], b->dC, x, p[b->in_norm], a->rstd1, N, d.C)) !=
            ST_OK)
        return s;
    return ST_OK;
}

/* n tokens through the block: the same pass over the KV cache, one
 * product per linear layer for all of them. */
static st_status block_decode(st_layer *l, const st_pass *ps, st_tensor *x, st_layer_io *io)
{
    (void)io;
    block_state *b = l->state;
    block_io o = {b->ln, b->rstd, b->qkv, b->atty, b->res2, b->ln, b->rstd, b->gu, b->h, x,
                  b->dec_xa};
    block_attn at = {.decode = ps};
    return block_pass(l, &o, &at, x, 1, ps->n);
}

const st_layer_ops st_llama_block_ops = {
    .bind = block_bind, .unbind = block_unbind, .forward = block_forward,
    .backward = block_backward, .decode = block_decode,
};

/* ---- head: lnf = RMSNorm(x); logits = lnf W^T; losses ---------------------------- */

enum { H_NORM, H_W }; /* H_W: lm_head.weight, or the tied embedding after the own ones */

typedef struct head_acts {
    st_tensor *lnf, *rstd, *logits, *losses;
} head_acts;
#define HEAD_ACTS 4

typedef struct head_state {
    head_acts *acts;
    st_tensor *dC;
    st_tensor *ln, *rstd, *logits; /* decoding */
} head_state;

static void head_unbind(st_layer *l)
{
    head_state *h = l->state;
    if (!h)
        return;
    for (int k = 0; h->acts && k < l->slots; k++)
        st_views_destroy((st_tensor **)&h->acts[k], HEAD_ACTS);
    free(h->acts);
    st_tensor *t[] = {h->dC, h->ln, h->rstd, h->logits};
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
    st_status s = st_rmsnorm_fwd(a->lnf, a->rstd, x, l->p[H_NORM], N, C, l->cfg->norm_eps);
    if (s != ST_OK || (s = st_linear_fwd(a->logits, a->lnf, l->p[H_W], NULL, N, C, V)) != ST_OK ||
        !io->targets)
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
    if ((s = st_xent_bwd(a->logits, a->logits, io->targets, dloss, N, V)) != ST_OK ||
        (s = st_linear_bwd(h->dC, 0.0f, l->g[H_W], NULL, a->logits, a->lnf, l->p[H_W], N, C,
                           V)) != ST_OK ||
        (s = st_tensor_fill(dres, 0.0f)) != ST_OK ||
        (s = st_rmsnorm_bwd(dres, l->g[H_NORM], h->dC, x, l->p[H_NORM], a->rstd, N, C)) != ST_OK)
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
        s = st_rmsnorm_fwd(h->ln, h->rstd, rows, l->p[H_NORM], M, C, l->cfg->norm_eps);
    st_tensor_destroy(rows);
    io->logits = h->logits;
    return s != ST_OK ? s : st_linear_fwd(h->logits, h->ln, l->p[H_W], NULL, M, C, V);
}

static st_tensor *head_output(st_layer *l, int slot)
{
    return ((head_state *)l->state)->acts[slot].logits;
}

static st_tensor *head_losses(st_layer *l, int slot)
{
    return ((head_state *)l->state)->acts[slot].losses;
}

const st_layer_ops st_llama_head_ops = {
    .bind = head_bind, .unbind = head_unbind, .forward = head_forward,
    .backward = head_backward, .decode = head_decode, .output = head_output,
    .losses = head_losses,
};
