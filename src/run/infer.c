/*
 * infer.c - the inference session (strata/infer.h): a model folder loaded
 * into a planned pipeline once, sequences in KV cache slots, and a step
 * that advances every active sequence in one pass.
 *
 * A sequence's text is its prompt and the tokens drawn since. Position 0
 * of its cache holds text[base] (base moves when the context slides);
 * `read` positions are filled, so the tokens text[base + read .. n) are its
 * input still to go through the model: the prompt at first, then the one
 * token drawn last. When a step reads the last of them, the logits of that
 * row give the next token.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strata_config.h"
#include "strata/checkpoint.h"
#include "strata/infer.h"
#include "strata/program.h"
#include "strata/run.h"
#if STRATA_HAVE_MPI
#include "mpi/mpi_run.h"
#endif

typedef struct seq_slot {
    bool used;
    st_infer_finish finish;
    int32_t *text;
    long n, cap, n_prompt, base, read, made, slides;
    st_infer_request req; /* prompt not kept (copied into text) */
    uint64_t rng;
    uint64_t ticket; /* the order sequences were added in: older prompts are read first */
} seq_slot;

struct st_infer {
    st_model_config cfg;
    st_model_desc *desc;
    st_plan plan;
    st_device_profile prof[ST_MAX_DEVICES];
    st_pipe *pipe;
    st_pipe_comm comm; /* under mpirun */
    bool mpi;
    int ctx, max_seqs, prefill;
    /* Replicas (in one process): slot k is replica k % reps's sequence
     * k / reps, at index pidx(k) of the pipeline's sequences (replica r's
     * are [r * per, (r + 1) * per)); reps 1: slot k is sequence k. */
    int reps, per, n_pipe;
    uint64_t tickets;
    int *order; /* st_infer_step's readers, max_seqs */
    seq_slot *seqs;
    /* a step's inputs and outputs, n_pipe of each, at the pipeline's index */
    const int **tok;
    int *count, *pos;
    float *logits;
    st_candidate *cands; /* sampling scratch: V for each replica */
};

static int pidx(const st_infer *in, int k)
{
    return in->reps > 1 ? (k % in->reps) * in->per + k / in->reps : k;
}

const st_model_config *st_infer_config(const st_infer *in) { return &in->cfg; }
const st_model_desc *st_infer_desc(const st_infer *in) { return in->desc; }
const st_plan *st_infer_plan(const st_infer *in) { return &in->plan; }
const st_device_profile *st_infer_profiles(const st_infer *in) { return in->prof; }
st_pipe *st_infer_pipe(const st_infer *in) { return in->pipe; }
int st_infer_ctx(const st_infer *in) { return in->ctx; }

void st_infer_close(st_infer *in)
{
    if (!in)
        return;
    for (int i = 0; in->seqs && i < in->max_seqs; i++)
        free(in->seqs[i].text);
    free(in->seqs);
    free(in->order);
    free(in->tok);
    free(in->count);
    free(in->pos);
    free(in->logits);
    free(in->cands);
    if (in->mpi && in->pipe)
        st_pipe_decode_end(in->pipe); /* rank 0: the followers stop */
    st_pipe_destroy(in->pipe);
#if STRATA_HAVE_MPI
    if (in->mpi)
        st_mpi_comm_free(&in->comm);
#endif
    st_model_desc_destroy(in->desc);
    free(in);
}

st_status st_infer_open(const char *dir, st_device *const *devs, size_t n_devs,
                        const st_infer_options *o, st_infer **out)
{
    if (o->max_seqs < 0 || o->ctx < 0 || o->prefill < 0 || o->score_batch < 0 ||
        o->score_seq < 0 || (o->max_seqs == 0 && o->score_batch == 0))
        return st_error(ST_ERR_INVALID,
                        "inference session: %d sequences, %d positions, %d scoring sequences",
                        o->max_seqs, o->ctx, o->score_batch);
    st_infer *in = calloc(1, sizeof *in);
    if (!in)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    st_checkpoint *ck = NULL;
    st_status s = ST_OK;
    if (!dir) {
        if (!o->config) {
            free(in);
            return st_error(ST_ERR_INVALID, "inference session: no model folder or config");
        }
        in->cfg = *o->config;
        if (o->weights_given)
            in->cfg.weights = o->weights;
        s = st_model_describe(&in->cfg, &in->desc);
    } else if ((s = st_checkpoint_open(dir, &ck)) == ST_OK) {
        in->cfg = *st_checkpoint_get_config(ck);
        /* The weights as the folder stores them (exactly: widened as they
         * are read), unless asked; merged with an adapter, in float. */
        if (o->weights_given)
            in->cfg.weights = o->weights;
        else if (o->adapter)
            in->cfg.weights = ST_F32;
        else
            s = st_checkpoint_weights_dtype(ck, &in->cfg.weights);
        st_checkpoint_close(ck);
        if (s == ST_OK)
            s = st_model_describe(&in->cfg, &in->desc);
    }

    if (s != ST_OK) {
        st_infer_close(in);
        return s;
    }
    int P = in->cfg.n_positions;
    in->max_seqs = o->max_seqs;
    in->ctx = o->ctx > 0 && o->ctx < P ? o->ctx : P;
    in->prefill = o->prefill > 0 ? o->prefill : 128;
    /* A pass of several tokens of a sequence needs flash attention's
     * decode kernel (heads up to ST_FLASH_MAX_HEAD); never longer than the
     * cache. */
    if (!st_attention_is_flash(in->cfg.n_embd, in->cfg.n_head))
        in->prefill = 1;
    if (in->prefill > in->ctx)
        in->prefill = in->ctx;
    st_run_shape shape = {.batch = 1, .seq = 1, .micro_batches = 1};
    if (o->score_batch > 0) {
        shape.batch = o->score_batch;
        shape.seq = o->score_seq > 0 && o->score_seq < P ? o->score_seq : P;
        shape.micro_batches = o->micro_batches;
    }
    if (o->max_seqs > 0) {
        shape.kv_seq = in->ctx;
        shape.kv_seqs = o->max_seqs;
        shape.prefill = in->prefill;
    }
    st_run_plan_options ro = {.split = o->split, .parallel = o->parallel,
                              .keep_all_devices = o->keep_all_devices, .quiet = o->quiet};
    st_device *all_devs[ST_MAX_DEVICES] = {NULL};
    if (o->mpi) {
#if STRATA_HAVE_MPI
        /* one pipeline over the ranks: decoding leads from rank 0 */
        ro.parallel = "pipeline";
        in->mpi = true;
        s = st_run_plan_mpi(devs, o->dev_index, n_devs, in->desc, &shape, &ro, &in->plan,
                            in->prof, all_devs, &in->comm);
        if (s != ST_OK)
            in->mpi = false; /* no communicator was made */
#else
        s = st_error(ST_ERR_UNSUPPORTED, "this strata was built without MPI");
#endif
    } else {
        s = st_run_plan(devs, n_devs, in->desc, &shape, &ro, &in->plan, in->prof);
        for (size_t k = 0; k < n_devs && k < ST_MAX_DEVICES; k++)
            all_devs[k] = devs[k];
    }
    if (s == ST_OK) {
        st_device *stage_dev[ST_PLAN_MAX_STAGES];
        size_t used[ST_PLAN_MAX_STAGES], n_used = st_plan_devices(&in->plan, used);
        for (size_t k = 0; k < n_used; k++)
            stage_dev[k] = all_devs[used[k]]; /* NULL: another rank's */
        s = st_devices_prepare(stage_dev, n_used);
    }
    if (s == ST_OK)
        s = st_pipe_create(&in->plan, in->desc, all_devs, in->mpi ? &in->comm : NULL,
                           &in->pipe);
    if (s == ST_OK)
        s = dir ? st_checkpoint_load_pipe_adapter(dir, o->adapter, in->pipe, NULL)
                : st_pipe_init(in->pipe, o->init_seed);
    size_t Q = (size_t)(o->max_seqs > 0 ? o->max_seqs : 1), V = (size_t)in->cfg.vocab_size;
    in->reps = 1;
    in->per = in->n_pipe = (int)Q;
    if (s == ST_OK && !in->mpi && st_pipe_n_replicas(in->pipe) > 1) {
        in->reps = (int)st_pipe_n_replicas(in->pipe);
        in->per = ((int)Q + in->reps - 1) / in->reps; /* as the pipeline shares them out */
        in->n_pipe = in->reps * in->per;
    }
    size_t N = (size_t)in->n_pipe;
    if (s == ST_OK) {
        in->seqs = calloc(Q, sizeof *in->seqs);
        in->order = calloc(Q, sizeof *in->order);
        in->tok = calloc(N, sizeof *in->tok);
        in->count = calloc(N, sizeof *in->count);
        in->pos = calloc(N, sizeof *in->pos);
        in->logits = malloc(N * V * sizeof *in->logits);
        in->cands = malloc((size_t)in->reps * V * sizeof *in->cands);
        if (!in->seqs || !in->order || !in->tok || !in->count || !in->pos || !in->logits || !in->cands)
            s = st_error(ST_ERR_HOST_MEMORY, "out of host memory for %zu sequences", Q);
    }
    if (s != ST_OK) {
        st_infer_close(in);
        return s;
    }
    *out = in;
    return ST_OK;
}

st_status st_infer_add(st_infer *in, const st_infer_request *r, int *id)
{
    return st_infer_add_group(in, r, 0, 1, id);
}

st_status st_infer_add_group(st_infer *in, const st_infer_request *r, int group, int groups,
                             int *id)
{
    if (in->max_seqs == 0)
        return st_error(ST_ERR_INVALID, "the session was opened for scoring, not decoding");
    int V = in->cfg.vocab_size;
    if (r->n_prompt == 0)
        return st_error(ST_ERR_INVALID, "the prompt has no tokens");
    if (r->n_prompt > (size_t)in->ctx)
        return st_error(ST_ERR_INVALID, "the prompt has %zu tokens; the context holds %d",
                        r->n_prompt, in->ctx);
    if (r->max_tokens < 0 || r->vocab_limit < 0 || r->vocab_limit > V)
        return st_error(ST_ERR_INVALID, "max_tokens %ld, vocabulary limit %d (of %d)",
                        r->max_tokens, r->vocab_limit, V);
    for (size_t j = 0; j < r->n_prompt; j++)
        if (r->prompt[j] < 0 || r->prompt[j] >= V)
            return st_error(ST_ERR_INVALID,
                            "the prompt has token %d, outside the model's vocabulary of %d",
                            r->prompt[j], V);
    if (groups < 1 || group < 0 || group >= groups)
        return st_error(ST_ERR_INVALID, "group %d of %d", group, groups);
    int k = group;
    while (k < in->max_seqs && in->seqs[k].used)
        k += groups;
    if (k < in->max_seqs && groups == 1 && in->reps > 1) {
        /* Replicas: the first free slot of the replica with the fewest
         * sequences, so that they share the work. */
        int best = -1, best_used = 0;
        for (int rep = 0; rep < in->reps; rep++) {
            int used = 0, free_slot = -1;
            for (int i = rep; i < in->max_seqs; i += in->reps) {
                used += in->seqs[i].used;
                if (!in->seqs[i].used && free_slot < 0)
                    free_slot = i;
            }
            if (free_slot >= 0 && (best < 0 || used < best_used)) {
                best = free_slot;
                best_used = used;
            }
        }
        k = best;
    }
    if (k >= in->max_seqs)
        return st_error(ST_ERR_BUSY, "all %d sequence slots%s are taken", in->max_seqs,
                        groups > 1 ? " of the group" : "");
    seq_slot *q = &in->seqs[k];
    long cap = (long)r->n_prompt + (r->max_tokens > 0 ? r->max_tokens : 0) + 1;
    if (cap > (long)r->n_prompt + 4096) /* grown as it goes past this */
        cap = (long)r->n_prompt + 4096;
    int32_t *text = realloc(q->text, (size_t)cap * sizeof *text);
    if (!text)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory for a prompt of %zu tokens",
                        r->n_prompt);
    memcpy(text, r->prompt, r->n_prompt * sizeof *text);
    *q = (seq_slot){.used = true, .text = text, .n = (long)r->n_prompt, .cap = cap,
                    .n_prompt = (long)r->n_prompt, .req = *r, .rng = r->seed,
                    .ticket = in->tickets++};
    q->req.prompt = NULL;
    if (r->max_tokens == 0)
        q->finish = ST_FINISH_LENGTH;
    *id = k;
    return ST_OK;
}

static seq_slot *slot_of(const st_infer *in, int id)
{
    return id >= 0 && id < in->max_seqs && in->seqs[id].used ? &in->seqs[id] : NULL;
}

int st_infer_active(const st_infer *in)
{
    int n = 0;
    for (int i = 0; i < in->max_seqs; i++)
        n += in->seqs[i].used && in->seqs[i].finish == ST_FINISH_NONE;
    return n;
}

st_status st_infer_get(const st_infer *in, int id, st_infer_info *info)
{
    const seq_slot *q = slot_of(in, id);
    if (!q)
        return st_error(ST_ERR_INVALID, "no sequence %d in the session", id);
    long left = q->n_prompt - (q->base + q->read);
    *info = (st_infer_info){.finish = q->finish, .tokens = q->text, .n_tokens = q->n,
                            .n_prompt = q->n_prompt, .n_generated = q->made,
                            .prompt_left = q->made == 0 && left > 0 ? left : 0,
                            .slides = q->slides};
    return ST_OK;
}

st_status st_infer_end(st_infer *in, int id, st_infer_finish why)
{
    seq_slot *q = slot_of(in, id);
    if (!q)
        return st_error(ST_ERR_INVALID, "no sequence %d in the session", id);
    if (q->finish == ST_FINISH_NONE)
        q->finish = why;
    return ST_OK;
}

void st_infer_release(st_infer *in, int id)
{
    seq_slot *q = slot_of(in, id);
    if (q)
        q->used = false; /* the text's memory is kept for the slot's next sequence */
}

/* A token drawn for q from its logits: kept, the end of the text checked,
 * and the context slid when the token has no position left. */
static st_status take(st_infer *in, seq_slot *q, const float *logits, st_candidate *cands)
{
    const st_infer_request *r = &q->req;
    int V = r->vocab_limit > 0 ? r->vocab_limit : in->cfg.vocab_size;
    int next = st_sample(logits, V, &r->sampling, q->text, q->n, cands, &q->rng);
    q->made++;
    if (next == r->eos) { /* the end of the text: not kept */
        q->finish = ST_FINISH_EOS;
        return ST_OK;
    }
    if (q->n == q->cap) {
        long cap = q->cap * 2;
        int32_t *t = realloc(q->text, (size_t)cap * sizeof *t);
        if (!t)
            return st_error(ST_ERR_HOST_MEMORY, "out of host memory for a text of %ld tokens",
                            cap);
        q->text = t;
        q->cap = cap;
    }
    q->text[q->n++] = next;
    if (q->made >= r->max_tokens) {
        q->finish = ST_FINISH_LENGTH;
        return ST_OK;
    }
    if (q->n - 1 - q->base >= in->ctx) { /* no position for it */
        if (!r->slide) {
            q->finish = ST_FINISH_LENGTH;
            return ST_OK;
        }
        /* keep the last half, read again from position 0 */
        long keep = in->ctx / 2 > 0 ? in->ctx / 2 : 1;
        q->base = q->n - keep;
        q->read = 0;
        q->slides++;
    }
    return ST_OK;
}

/* The slots first, first + step, ... whose prompts are being read (more
 * than one token of input left), oldest first, into out; their count.
 * Prompt budgets go in this order, so that a prompt is never passed over
 * for ones that came after it (in slot order a late request in a low slot
 * went first, and a long prompt in a high slot waited a minute). */
static int readers_by_age(const st_infer *in, int first, int step, int *out)
{
    int n = 0;
    for (int i = first; i < in->max_seqs; i += step) {
        const seq_slot *q = &in->seqs[i];
        if (!q->used || q->finish != ST_FINISH_NONE || q->n - (q->base + q->read) <= 1)
            continue;
        int j = n++;
        while (j > 0 && in->seqs[out[j - 1]].ticket > q->ticket) { /* insertion: few readers */
            out[j] = out[j - 1];
            j--;
        }
        out[j] = i;
    }
    return n;
}

/* Slot i's rows of the next pass into the step's arrays (at its pipeline
 * index): a chunk of its prompt within *budget, or its last token; none
 * when it is not running. Returns how many. */
static int gather(st_infer *in, int i, int *budget)
{
    seq_slot *q = &in->seqs[i];
    int at = pidx(in, i);
    in->count[at] = 0;
    if (!q->used || q->finish != ST_FINISH_NONE)
        return 0;
    long left = q->n - (q->base + q->read);
    int k = left > 1 ? (int)(left < in->prefill ? left : in->prefill) : (int)left;
    if (left > 1) {
        k = k < *budget ? k : *budget;
        *budget -= k;
    }
    in->count[at] = k;
    in->tok[at] = q->text + q->base + q->read;
    in->pos[at] = (int)q->read;
    return k;
}

/* After the pass `pass` (its status): slot i's rows read and, when its
 * input is all read, its next token drawn (*drew). */
static st_status scatter(st_infer *in, int i, st_status pass, st_candidate *cands, bool *drew)
{
    seq_slot *q = &in->seqs[i];
    int at = pidx(in, i);
    *drew = false;
    if (in->count[at] == 0)
        return ST_OK;
    if (pass != ST_OK) {
        q->finish = ST_FINISH_ERROR;
        return ST_OK;
    }
    q->read += in->count[at];
    if (q->base + q->read < q->n) /* a prompt still being read */
        return ST_OK;
    *drew = true;
    st_status t = take(in, q, in->logits + (size_t)at * (size_t)in->cfg.vocab_size, cands);
    if (t != ST_OK)
        q->finish = ST_FINISH_ERROR;
    return t;
}

st_status st_infer_step(st_infer *in)
{
    /* The rows of this step: a chunk of each prompt being read (the
     * readers share the budget in slot order; each replica has a budget of
     * its own), the last token of the others. */
    int budget[ST_PLAN_MAX_REPLICAS], active = 0;
    for (int r = 0; r < in->reps; r++)
        budget[r] = in->prefill;
    memset(in->count, 0, (size_t)in->n_pipe * sizeof *in->count);
    for (int i = 0; i < in->max_seqs; i++) { /* the last tokens; the readers next, by age */
        const seq_slot *q = &in->seqs[i];
        if (q->n - (q->base + q->read) <= 1)
            active += gather(in, i, &budget[i % in->reps]) > 0;
    }
    int readers = readers_by_age(in, 0, 1, in->order);
    for (int j = 0; j < readers; j++)
        active += gather(in, in->order[j], &budget[in->order[j] % in->reps]) > 0;
    if (active == 0)
        return ST_OK;
    st_status s = st_pipe_prefill_batch(in->pipe, in->n_pipe, in->tok, in->count, in->pos,
                                        in->logits);
    st_status out = s;
    for (int i = 0; i < in->max_seqs; i++) {
        bool drew;
        st_status t = scatter(in, i, s, in->cands + (size_t)(i % in->reps) * in->cfg.vocab_size,
                              &drew);
        if (t != ST_OK && out == ST_OK)
            out = t;
    }
    return out;
}

st_status st_infer_score(st_infer *in, const int32_t *tokens, const int32_t *targets,
                         const int32_t *pos, double *sum, long *count, float *probs)
{
    if (in->plan.shape.kv_seqs > 0 && in->plan.shape.batch <= 1 && in->plan.shape.seq <= 1)
        return st_error(ST_ERR_INVALID, "the session was opened for decoding, not scoring");
    return st_pipe_forward(in->pipe, tokens, targets, pos, sum, count, probs);
}

/* ---- st_infer_run: groups of sequences streamed through the stages ---------------- */

typedef struct run_group {
    int *tok, *seq, *pos, *out, *out_seq, *count, *order;
} run_group;

typedef struct run_ctx {
    st_infer *in;
    int G, rows;
    run_group *g;
    void (*on_token)(void *ctx, int id);
    bool (*between)(void *ctx, int group, int groups);
    void *ctx;
    bool over; /* go_on said no: every group ends */
} run_ctx;

/* Group gi's next pass: the last token of each of its sequences that
 * draws, then chunks of the prompts being read within the rows left and
 * the prompt budget. */
static st_status run_next(void *ctx, int gi, st_stage_rows *rows, const int **out_seq)
{
    run_ctx *r = ctx;
    st_infer *in = r->in;
    run_group *g = &r->g[gi];
    int n = 0, outs = 0, budget = in->prefill;
    if (!r->over && r->between && !r->between(r->ctx, gi, r->G))
        r->over = true;
    if (r->over) { /* no more passes: the run ends when those in flight are done */
        *rows = (st_stage_rows){0};
        *out_seq = g->out_seq;
        return ST_OK;
    }
    for (int i = gi; i < in->max_seqs; i += r->G)
        g->count[i] = 0;
    int readers = readers_by_age(in, gi, r->G, g->order);
    for (int phase = 0; phase < 2; phase++)
        for (int x = phase == 0 ? gi : 0; phase == 0 ? x < in->max_seqs : x < readers;
             x += phase == 0 ? r->G : 1) {
            int i = phase == 0 ? x : g->order[x]; /* the last tokens, then the readers by age */
            seq_slot *q = &in->seqs[i];
            if (!q->used || q->finish != ST_FINISH_NONE)
                continue;
            long left = q->n - (q->base + q->read);
            int k = 0;
            if (phase == 0 && left == 1)
                k = 1;
            if (phase == 1 && left > 1) {
                k = (int)(left < in->prefill ? left : in->prefill);
                k = k < budget ? k : budget;
                k = k < r->rows - n ? k : r->rows - n;
                budget -= k;
            }
            for (int j = 0; j < k; j++) {
                g->tok[n + j] = q->text[q->base + q->read + j];
                g->seq[n + j] = i;
                g->pos[n + j] = (int)q->read + j;
            }
            if (k > 0) {
                n += k;
                g->out[outs] = n - 1;
                g->out_seq[outs++] = i;
                g->count[i] = k;
            }
        }
    /* output rows rise: the sequences' last rows in row order */
    *rows = (st_stage_rows){.n = n, .tok = g->tok, .seq = g->seq, .pos = g->pos,
                            .n_out = outs, .out = g->out};
    *out_seq = g->out_seq;
    return ST_OK;
}

static st_status run_done(void *ctx, int gi, const float *logits, int n_out)
{
    run_ctx *r = ctx;
    st_infer *in = r->in;
    run_group *g = &r->g[gi];
    size_t V = (size_t)in->cfg.vocab_size;
    for (int j = 0; j < n_out; j++) {
        int i = g->out_seq[j];
        seq_slot *q = &in->seqs[i];
        q->read += g->count[i];
        if (q->base + q->read < q->n) /* a prompt still being read */
            continue;
        st_status s = take(in, q, logits + (size_t)j * V, in->cands);
        if (s != ST_OK) {
            q->finish = ST_FINISH_ERROR;
            return s;
        }
        if (r->on_token)
            r->on_token(r->ctx, i);
    }
    return ST_OK;
}

st_status st_infer_run(st_infer *in, void (*on_token)(void *ctx, int id), void *ctx)
{
    return st_infer_run_while(in, on_token, NULL, ctx);
}

int st_infer_groups(const st_infer *in)
{
    if (in->reps > 1)
        return in->reps;
    if (!st_pipe_can_stream(in->pipe) || in->max_seqs == 0)
        return 1;
    int G = (int)st_pipe_n_stages(in->pipe);
    return G < in->max_seqs ? G : in->max_seqs;
}

/* ---- replicas: each steps its own sequences on a thread of its own ----------------- */

typedef struct rep_run {
    st_infer *in;
    int r;
    void (*on_token)(void *ctx, int id);
    bool (*between)(void *ctx, int group, int groups);
    void *ctx;
    atomic_bool *over; /* between said no, or a replica failed: every replica stops */
    int *order;        /* its readers, max_seqs */
    st_status s;
    char msg[1024];
} rep_run;

static void *replica_loop(void *arg)
{
    rep_run *j = arg;
    st_infer *in = j->in;
    int R = in->reps;
    size_t V = (size_t)in->cfg.vocab_size, first = (size_t)j->r * (size_t)in->per;
    st_candidate *cands = in->cands + (size_t)j->r * V;
    while (!atomic_load(j->over)) {
        if (j->between && !j->between(j->ctx, j->r, R)) {
            atomic_store(j->over, true);
            break;
        }
        int budget = in->prefill, active = 0;
        for (int i = j->r; i < in->max_seqs; i += R)
            if (in->seqs[i].n - (in->seqs[i].base + in->seqs[i].read) <= 1)
                active += gather(in, i, &budget) > 0;
        int readers = readers_by_age(in, j->r, R, j->order);
        for (int k = 0; k < readers; k++)
            active += gather(in, j->order[k], &budget) > 0;
        if (active == 0)
            break; /* nothing to do: this replica's group ends for the run */
        st_status s = st_pipe_replica_prefill_batch(in->pipe, (size_t)j->r, in->per,
                                                    in->tok + first, in->count + first,
                                                    in->pos + first, in->logits + first * V);
        if (s != ST_OK) {
            j->s = s;
            snprintf(j->msg, sizeof j->msg, "%s", st_last_error());
        }
        for (int i = j->r; i < in->max_seqs; i += R) {
            bool drew = false;
            st_status t = scatter(in, i, s, cands, &drew);
            if (t != ST_OK && j->s == ST_OK) {
                j->s = t;
                snprintf(j->msg, sizeof j->msg, "%s", st_last_error());
            }
            if (drew && t == ST_OK && j->on_token)
                j->on_token(j->ctx, i);
        }
        if (j->s != ST_OK) {
            atomic_store(j->over, true);
            break;
        }
    }
    return NULL;
}

/* The replicas' groups at once, each stepping as soon as its last step is
 * done (not in step with the others: one reading a long prompt does not
 * hold up another's tokens). */
static st_status run_replicas(st_infer *in, void (*on_token)(void *ctx, int id),
                              bool (*between)(void *ctx, int group, int groups), void *ctx)
{
    rep_run jobs[ST_PLAN_MAX_REPLICAS];
    pthread_t th[ST_PLAN_MAX_REPLICAS];
    bool started[ST_PLAN_MAX_REPLICAS] = {false};
    atomic_bool over;
    atomic_init(&over, false);
    int *order = malloc((size_t)in->reps * (size_t)in->max_seqs * sizeof *order);
    if (!order)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    for (int r = 0; r < in->reps; r++) {
        jobs[r] = (rep_run){.in = in, .r = r, .on_token = on_token, .between = between,
                            .ctx = ctx, .over = &over, .order = order + (size_t)r * in->max_seqs,
                            .s = ST_OK};
        started[r] = pthread_create(&th[r], NULL, replica_loop, &jobs[r]) == 0;
    }
    for (int r = 0; r < in->reps; r++)
        if (!started[r]) /* no thread: this one runs on the caller's, after the others */
            replica_loop(&jobs[r]);
    st_status s = ST_OK;
    for (int r = 0; r < in->reps; r++) {
        if (started[r])
            pthread_join(th[r], NULL);
        if (jobs[r].s != ST_OK && s == ST_OK)
            s = st_error(jobs[r].s, "replica %d: %s", r, jobs[r].msg);
    }
    free(order);
    return s;
}

st_status st_infer_run_while(st_infer *in, void (*on_token)(void *ctx, int id),
                             bool (*between)(void *ctx, int group, int groups), void *ctx)
{
    if (in->reps > 1 && in->max_seqs > 0) {
        st_status s = run_replicas(in, on_token, between, ctx);
        if (s != ST_OK)
            for (int i = 0; i < in->max_seqs; i++)
                if (in->seqs[i].used && in->seqs[i].finish == ST_FINISH_NONE)
                    in->seqs[i].finish = ST_FINISH_ERROR;
        return s;
    }
    if (!st_pipe_can_stream(in->pipe) || in->max_seqs == 0) {
        /* step by step, with the same callback */
        st_status s = ST_OK;
        long *made = calloc((size_t)(in->max_seqs > 0 ? in->max_seqs : 1), sizeof *made);
        if (!made)
            return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
        while (s == ST_OK && (!between || between(ctx, 0, 1)) && st_infer_active(in) > 0) {
            for (int i = 0; i < in->max_seqs; i++)
                made[i] = in->seqs[i].made;
            s = st_infer_step(in);
            for (int i = 0; s == ST_OK && on_token && i < in->max_seqs; i++)
                if (in->seqs[i].used && in->seqs[i].made > made[i])
                    on_token(ctx, i);
        }
        free(made);
        return s;
    }
    run_ctx r = {.in = in, .G = st_infer_groups(in), .on_token = on_token, .between = between,
                 .ctx = ctx};
    r.rows = st_decode_rows(in->prefill, in->max_seqs);
    size_t R = (size_t)r.rows, Q = (size_t)in->max_seqs;
    r.g = calloc((size_t)r.G, sizeof *r.g);
    int *mem = r.g ? malloc((size_t)r.G * (3 * R + 4 * Q) * sizeof *mem) : NULL;
    if (!mem) {
        free(r.g);
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory for %d groups", r.G);
    }
    for (int k = 0; k < r.G; k++) {
        int *m = mem + (size_t)k * (3 * R + 4 * Q);
        r.g[k] = (run_group){.tok = m, .seq = m + R, .pos = m + 2 * R, .out = m + 3 * R,
                             .out_seq = m + 3 * R + Q, .count = m + 3 * R + 2 * Q,
                             .order = m + 3 * R + 3 * Q};
    }
    st_pipe_feed f = {.next = run_next, .done = run_done, .ctx = &r, .groups = r.G};
    st_status s = st_pipe_decode_stream(in->pipe, &f);
    if (s != ST_OK)
        for (int i = 0; i < in->max_seqs; i++)
            if (in->seqs[i].used && in->seqs[i].finish == ST_FINISH_NONE)
                in->seqs[i].finish = ST_FINISH_ERROR;
    free(mem);
    free(r.g);
    return s;
}

bool st_infer_leads(const st_infer *in)
{
    return !in->mpi || in->comm.rank == 0;
}

st_status st_infer_follow(st_infer *in)
{
    if (st_infer_leads(in))
        return st_error(ST_ERR_INVALID, "the leading session does not follow");
    return st_pipe_decode_follow(in->pipe);
}
