/*
 * pipe.c - the pipeline executor (see strata/pipe.h): stages, links, one
 * thread per stage per step, schedules as lists of operations.
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pipe/link.h"
#include "strata/pipe.h"

typedef enum op_kind { OP_FWD, OP_BWD, OP_DEC } op_kind;

typedef struct op {
    op_kind kind;
    int mb;
} op;

struct st_pipe {
    size_t S;
    const st_pipe_comm *comm;
    st_stage *stage[ST_PLAN_MAX_STAGES];
    st_device *dev[ST_PLAN_MAX_STAGES];
    int slots[ST_PLAN_MAX_STAGES];
    size_t boundary[ST_PLAN_MAX_STAGES]; /* floats from stage k to k + 1 per micro-batch */
    size_t first[ST_PLAN_MAX_STAGES], end[ST_PLAN_MAX_STAGES];
    const st_model_desc *desc;
    /* fwd[s]: stage s -> s+1 activations; bwd[s]: stage s+1 -> s gradients */
    st_link *fwd[ST_PLAN_MAX_STAGES], *bwd[ST_PLAN_MAX_STAGES];
    st_run_shape o;
    int micro_batch; /* sequences per micro-batch */
    st_model_config cfg;
    /* per step */
    const int32_t *tokens, *targets;
    bool backward;
    /* decoding several sequences: token and position of each, logits out */
    int dec_n;
    const int *dec_tok, *dec_pos;
    float *dec_logits;
    float dloss;
    double *mb_loss;
    long *mb_count;
    float *probs;
    atomic_int failed;
    pthread_mutex_t err_mu;
    st_status err;
    char err_msg[4096];
    double wait_s[ST_PLAN_MAX_STAGES];
    /* Fault injection for tests: STRATA_TEST_FAIL_STAGE=s:n fails stage s at
     * its n-th operation (counted over the run). */
    long fail_stage, fail_at, ops_done[ST_PLAN_MAX_STAGES];
};

size_t st_pipe_n_stages(const st_pipe *p)
{
    return p->S;
}

st_stage *st_pipe_stage(const st_pipe *p, size_t s)
{
    return s < p->S ? p->stage[s] : NULL;
}

double st_pipe_wait_s(const st_pipe *p, size_t s)
{
    return s < p->S ? p->wait_s[s] : 0;
}

void st_pipe_destroy(st_pipe *p)
{
    if (!p)
        return;
    for (size_t s = 0; s < p->S; s++) {
        st_stage_destroy(p->stage[s]);
        if (p->fwd[s])
            p->fwd[s]->destroy(p->fwd[s]);
        if (p->bwd[s])
            p->bwd[s]->destroy(p->bwd[s]);
    }
    pthread_mutex_destroy(&p->err_mu);
    free(p->mb_loss);
    free(p->mb_count);
    free(p);
}

static bool is_local(const st_pipe_comm *comm, size_t s)
{
    return !comm || comm->stage_rank[s] == comm->rank;
}

st_status st_pipe_create(const st_plan *plan, const st_model_desc *desc, st_device *const *devs,
                         const st_pipe_comm *comm, st_pipe **out)
{
    const st_run_shape *o = &plan->shape;
    size_t n_stages = plan->n_stages;
    if (n_stages < 1 || n_stages > ST_PLAN_MAX_STAGES || o->micro_batches < 1 ||
        o->batch % o->micro_batches != 0)
        return st_error(ST_ERR_INVALID, "pipeline: %zu stages, a batch of %d in %d micro-batches",
                        n_stages, o->batch, o->micro_batches);
    for (size_t s = 0; s < n_stages; s++) {
        const st_plan_stage *st = &plan->stage[s];
        if (st->first != (s ? plan->stage[s - 1].end : 0) || st->end <= st->first ||
            st->end > desc->n_layers || (s + 1 == n_stages && st->end != desc->n_layers))
            return st_error(ST_ERR_INVALID,
                            "pipeline: stage %zu's layers [%zu, %zu) do not continue the split "
                            "of the model's %zu layers",
                            s, st->first, st->end, desc->n_layers);
        if (st->in_flight < 1)
            return st_error(ST_ERR_INVALID, "pipeline: stage %zu keeps no micro-batch", s);
        if (is_local(comm, s) && !devs[st->device])
            return st_error(ST_ERR_INVALID, "pipeline: stage %zu has no device", s);
    }
    st_pipe *p = calloc(1, sizeof *p);
    if (!p)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    pthread_mutex_init(&p->err_mu, NULL);
    p->S = n_stages;
    p->comm = comm;
    p->fail_stage = -1;
    const char *inject = getenv("STRATA_TEST_FAIL_STAGE");
    if (inject && sscanf(inject, "%ld:%ld", &p->fail_stage, &p->fail_at) != 2)
        p->fail_stage = -1;
    p->o = *o;
    p->micro_batch = st_run_micro_batch(o);
    p->cfg = desc->cfg;
    p->desc = desc;
    for (size_t k = 0; k < n_stages; k++) {
        p->first[k] = plan->stage[k].first;
        p->end[k] = plan->stage[k].end;
    }
    p->mb_loss = calloc((size_t)o->micro_batches, sizeof *p->mb_loss);
    p->mb_count = calloc((size_t)o->micro_batches, sizeof *p->mb_count);
    st_status s = p->mb_loss && p->mb_count ? ST_OK
                                             : st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    for (size_t k = 0; s == ST_OK && k < n_stages; k++) {
        int m = o->micro_batches;
        /* What crosses boundary k: the stream out of stage k's last layer. */
        size_t boundary = (size_t)p->micro_batch * o->seq *
                          desc->layers[p->end[k] - 1].out_floats_per_token;
        p->boundary[k] = boundary;
        p->slots[k] = plan->stage[k].in_flight;
        st_stage_options go = {.first_layer = p->first[k], .end_layer = p->end[k],
                               .batch = p->micro_batch, .seq = o->seq, .slots = p->slots[k],
                               .training = o->training, .kv_seq = o->kv_seq,
                               .kv_seqs = o->kv_seqs};
        bool here = is_local(comm, k), next_here = k + 1 < n_stages && is_local(comm, k + 1);
        if (here) {
            p->dev[k] = devs[plan->stage[k].device];
            s = st_stage_create(p->dev[k], desc, &go, &p->stage[k]);
        }
        /* A ring as deep as the micro-batches: a sender never waits on a
         * receiver that is itself waiting to send the other way. */
        if (s == ST_OK && k + 1 < n_stages && here && next_here) {
            st_device *next = devs[plan->stage[k + 1].device];
            if ((s = st_link_host_create(p->dev[k], boundary, m, &p->fwd[k])) == ST_OK)
                s = st_link_host_create(next, boundary, m, &p->bwd[k]);
        } else if (s == ST_OK && k + 1 < n_stages && (here || next_here)) {
            int a = comm->stage_rank[k], b = comm->stage_rank[k + 1];
            if ((s = comm->make_link(comm->ctx, k, false, a, b, boundary, m, &p->fwd[k])) ==
                ST_OK)
                s = comm->make_link(comm->ctx, k, true, b, a, boundary, m, &p->bwd[k]);
        }
        if (s != ST_OK)
            st_error_context("stage %zu", k);
    }
    if (s != ST_OK) {
        st_pipe_destroy(p);
        return s;
    }
    *out = p;
    return ST_OK;
}

st_status st_pipe_init(st_pipe *p, uint64_t seed)
{
    st_status s = ST_OK;
    for (size_t k = 0; s == ST_OK && k < p->S; k++)
        if (p->stage[k])
            s = st_stage_init(p->stage[k], seed);
    return s;
}

/* The operations of stage s for one step, in order. */
static size_t schedule_ops(const st_pipe *p, size_t s, op *ops)
{
    int m = p->o.micro_batches, S = (int)p->S;
    size_t n = 0;
    if (p->dec_n > 0) {
        for (int j = 0; j < p->dec_n; j++)
            ops[n++] = (op){OP_DEC, j};
        return n;
    }
    if (!p->backward) {
        for (int j = 0; j < m; j++)
            ops[n++] = (op){OP_FWD, j};
        return n;
    }
    if (p->o.schedule == ST_SCHED_GPIPE) {
        for (int j = 0; j < m; j++)
            ops[n++] = (op){OP_FWD, j};
        for (int j = 0; j < m; j++)
            ops[n++] = (op){OP_BWD, j};
        return n;
    }
    int warm = S - (int)s - 1 < m ? S - (int)s - 1 : m;
    for (int j = 0; j < warm; j++)
        ops[n++] = (op){OP_FWD, j};
    for (int i = 0; i < m - warm; i++) {
        ops[n++] = (op){OP_FWD, warm + i};
        ops[n++] = (op){OP_BWD, i};
    }
    for (int j = m - warm; j < m; j++)
        ops[n++] = (op){OP_BWD, j};
    return n;
}

static void fail(st_pipe *p, st_status s, size_t stage)
{
    pthread_mutex_lock(&p->err_mu);
    /* The first real failure wins; "the pipeline stopped" from others does not. */
    if (!atomic_load(&p->failed)) {
        p->err = s;
        snprintf(p->err_msg, sizeof p->err_msg, "stage %zu on %s: %s", stage,
                 p->dev[stage] ? st_device_label(p->dev[stage]) : "?", st_last_error());
        atomic_store(&p->failed, 1);
        /* Other processes may be blocked on this one: only ending the job frees them. */
        if (p->comm && p->comm->abort_job)
            p->comm->abort_job(p->comm->ctx, p->err_msg);
    }
    pthread_mutex_unlock(&p->err_mu);
    for (size_t k = 0; k + 1 < p->S; k++) {
        if (p->fwd[k])
            p->fwd[k]->abort(p->fwd[k]);
        if (p->bwd[k])
            p->bwd[k]->abort(p->bwd[k]);
    }
}

typedef struct stage_job {
    st_pipe *p;
    size_t s;
} stage_job;

static st_status run_op(st_pipe *p, size_t s, const op *o)
{
    st_stage *g = p->stage[s];
    int B = p->micro_batch, T = p->o.seq, slot = o->mb % p->slots[s];
    if ((long)s == p->fail_stage && ++p->ops_done[s] >= p->fail_at)
        return st_error(ST_ERR_CL, "injected failure (STRATA_TEST_FAIL_STAGE=%ld:%ld)",
                        p->fail_stage, p->fail_at);
    /* Floats per token into this stage and out of it. */
    size_t in_t = s > 0 ? p->desc->layers[p->end[s - 1] - 1].out_floats_per_token : 0;
    size_t out_t = p->desc->layers[p->end[s] - 1].out_floats_per_token;
    size_t N = (size_t)B * T, n_in = N * in_t, n_out = N * out_t;
    bool last = s + 1 == p->S;
    st_status st;
    if (o->kind == OP_DEC) {
        /* One token of sequence mb: its activation hops to the next stage
         * while this stage starts on the next sequence. */
        st_tensor *x = st_stage_decode_x(g);
        if (s > 0 && (st = p->fwd[s - 1]->recv(p->fwd[s - 1], x, in_t)) != ST_OK)
            return st;
        float *logits = last ? p->dec_logits + (size_t)o->mb * p->cfg.vocab_size : NULL;
        if ((st = st_stage_decode_seq(g, o->mb, p->dec_tok[o->mb], p->dec_pos[o->mb], logits)) !=
            ST_OK)
            return st;
        return last ? ST_OK : p->fwd[s]->send(p->fwd[s], x, out_t);
    }
    if (o->kind == OP_FWD) {
        if (s > 0 && (st = p->fwd[s - 1]->recv(p->fwd[s - 1], st_stage_io_tensor(g, slot, ST_STAGE_IN),
                                                n_in)) != ST_OK)
            return st;
        const int32_t *tok = p->tokens + (size_t)o->mb * N;
        const int32_t *tgt = p->targets ? p->targets + (size_t)o->mb * N : NULL;
        if ((st = st_stage_forward(g, slot, s == 0 ? tok : NULL, last ? tgt : NULL, B, T)) != ST_OK)
            return st;
        if (!last)
            return p->fwd[s]->send(p->fwd[s], st_stage_io_tensor(g, slot, ST_STAGE_OUT), n_out);
        if (tgt && (st = st_stage_loss(g, slot, tgt, B, T, &p->mb_loss[o->mb],
                                     &p->mb_count[o->mb])) !=
                       ST_OK)
            return st;
        if (p->probs)
            return st_stage_output_read(g, slot, B, T,
                                      p->probs + (size_t)o->mb * N * p->cfg.vocab_size);
        return ST_OK;
    }
    if (!last && (st = p->bwd[s]->recv(p->bwd[s], st_stage_io_tensor(g, slot, ST_STAGE_DOUT),
                                       n_out)) !=
                     ST_OK)
        return st;
    if ((st = st_stage_backward(g, slot, B, T, p->dloss)) != ST_OK)
        return st;
    /* The input's gradient lives in shared scratch: it leaves before the next backward. */
    if (s > 0)
        return p->bwd[s - 1]->send(p->bwd[s - 1], st_stage_io_tensor(g, slot, ST_STAGE_DIN),
                                   n_in);
    return ST_OK;
}

static void *stage_main(void *arg)
{
    stage_job *job = arg;
    st_pipe *p = job->p;
    size_t s = job->s;
    size_t n_ops = 2 * (size_t)p->o.micro_batches + (size_t)p->dec_n;
    op *ops = malloc(n_ops * sizeof *ops);
    if (!ops) {
        fail(p, st_error(ST_ERR_HOST_MEMORY, "out of host memory"), s);
        return NULL;
    }
    size_t n = schedule_ops(p, s, ops);
    for (size_t i = 0; i < n && !atomic_load(&p->failed); i++) {
        st_status st = run_op(p, s, &ops[i]);
        if (st != ST_OK) {
            fail(p, st, s);
            break;
        }
    }
    /* Wait for this stage's device so that the step's time is the work's. */
    if (!atomic_load(&p->failed)) {
        st_status st = st_device_finish(p->dev[s]);
        if (st != ST_OK)
            fail(p, st, s);
    }
    free(ops);
    return NULL;
}

/* Runs every stage's operations, one thread per stage (inline for one stage). */
static st_status run_stages(st_pipe *p)
{
    atomic_store(&p->failed, 0);
    p->err = ST_OK;
    for (size_t k = 0; k + 1 < p->S; k++)
        if (p->fwd[k])
            p->fwd[k]->wait_s = p->bwd[k]->wait_s = 0;
    stage_job jobs[ST_PLAN_MAX_STAGES];
    pthread_t threads[ST_PLAN_MAX_STAGES];
    bool started[ST_PLAN_MAX_STAGES] = {false};
    size_t n_local = 0;
    for (size_t s = 0; s < p->S; s++)
        n_local += p->stage[s] != NULL;
    for (size_t s = 0; s < p->S; s++) {
        jobs[s] = (stage_job){p, s};
        if (!p->stage[s])
            continue;
        if (n_local == 1) {
            stage_main(&jobs[s]);
        } else if (pthread_create(&threads[s], NULL, stage_main, &jobs[s]) == 0) {
            started[s] = true;
        } else {
            fail(p, st_error(ST_ERR_HOST_MEMORY, "cannot start a thread for stage %zu", s), s);
        }
    }
    for (size_t s = 0; s < p->S; s++)
        if (started[s])
            pthread_join(threads[s], NULL);
    for (size_t s = 0; s < p->S; s++)
        p->wait_s[s] = !p->stage[s] ? 0
                                    : (s > 0 ? p->fwd[s - 1]->wait_s : 0) +
                                          (s + 1 < p->S ? p->bwd[s]->wait_s : 0);
    if (atomic_load(&p->failed)) {
        /* Links stay aborted: re-arm them for a later step by rebuilding is the
         * caller's choice; a failed step ends the run. */
        return st_error(p->err, "%s", p->err_msg);
    }
    return ST_OK;
}

/* The stage holding layer l. */
static size_t stage_of(const st_pipe *p, size_t l)
{
    size_t k = 0;
    while (k + 1 < p->S && l >= p->end[k])
        k++;
    return k;
}

/* One tied parameter held by two stages: both copies get the sum of both
 * gradients, added as the owner's + the user's wherever they live. */
static st_status sum_tied_pair(st_pipe *p, size_t so, size_t su, const char *name)
{
    st_stage *a = p->stage[so], *b = p->stage[su];
    if (!a && !b)
        return ST_OK;
    st_stage *mine = a ? a : b;
    long idx = st_stage_param_find(mine, name);
    if (idx < 0)
        return st_error(ST_ERR_INVALID, "the tied parameter '%s' is missing from a stage", name);
    size_t n = st_stage_param_at(mine, (size_t)idx)->desc->numel;
    float *ga = malloc(n * sizeof *ga), *gb = malloc(n * sizeof *gb);
    st_status s = ga && gb ? ST_OK : st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    if (s == ST_OK && a && b) {
        long ib = st_stage_param_find(b, name);
        if ((s = st_stage_read(a, ST_STAGE_GRADS, (size_t)idx, ga)) == ST_OK)
            s = st_stage_read(b, ST_STAGE_GRADS, (size_t)ib, gb);
    } else if (s == ST_OK && a) {
        if ((s = st_stage_read(a, ST_STAGE_GRADS, (size_t)idx, ga)) == ST_OK)
            s = p->comm->exchange(p->comm->ctx, p->comm->stage_rank[su], ga, gb, n);
    } else if (s == ST_OK) {
        if ((s = st_stage_read(b, ST_STAGE_GRADS, (size_t)idx, gb)) == ST_OK)
            s = p->comm->exchange(p->comm->ctx, p->comm->stage_rank[so], gb, ga, n);
    }
    if (s == ST_OK) {
        for (size_t i = 0; i < n; i++)
            ga[i] += gb[i];
        if (a)
            s = st_stage_write(a, ST_STAGE_GRADS, (size_t)st_stage_param_find(a, name), ga);
        if (s == ST_OK && b)
            s = st_stage_write(b, ST_STAGE_GRADS, (size_t)st_stage_param_find(b, name), ga);
    }
    free(ga);
    free(gb);
    return s;
}

/* Every tied parameter whose owner and user are on different stages (the
 * embedding and a tied head when split); one stage holding both keeps one
 * copy, whose gradient already has both parts. */
static st_status sum_tied(st_pipe *p)
{
    st_status s = ST_OK;
    for (size_t l = 0; s == ST_OK && l < p->desc->n_layers; l++) {
        const st_layer_desc *ld = &p->desc->layers[l];
        for (size_t t = 0; s == ST_OK && t < ld->n_tied; t++) {
            size_t so = stage_of(p, ld->tied[t].layer), su = stage_of(p, l);
            if (so != su)
                s = sum_tied_pair(p, so, su,
                                  p->desc->layers[ld->tied[t].layer].params[ld->tied[t].param].name);
        }
    }
    return s;
}

static st_status allsum(st_pipe *p, double *v, int n)
{
    return p->comm ? p->comm->allsum(p->comm->ctx, v, n) : ST_OK;
}

/* Is any of the stage's buffer `which` NaN or infinite? name gets the first
 * such parameter. Only after a non-finite step: it reads everything back. */
static st_status stage_nonfinite(st_stage *g, st_stage_buf which, bool *bad, const char **name)
{
    *bad = false;
    st_status s = ST_OK;
    for (size_t i = 0; s == ST_OK && !*bad && i < st_stage_n_params(g); i++) {
        const st_stage_param *prm = st_stage_param_at(g, i);
        float *host = malloc(prm->desc->numel * sizeof *host);
        if (!host)
            return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
        if ((s = st_stage_read(g, which, i, host)) == ST_OK)
            for (size_t e = 0; e < prm->desc->numel && !*bad; e++)
                *bad = !isfinite(host[e]);
        if (*bad)
            *name = prm->desc->name;
        free(host);
    }
    return s;
}

/* Where did the NaN or infinity come from? The first stage (of this process)
 * whose weights hold one, else the first whose gradients do. */
static st_status locate_nonfinite(st_pipe *p, char *where, size_t size)
{
    snprintf(where, size, "a stage of another process");
    for (int pass = 0; pass < 2; pass++) {
        for (size_t k = 0; k < p->S; k++) {
            if (!p->stage[k])
                continue;
            bool bad = false;
            const char *name = NULL;
            st_status s = stage_nonfinite(p->stage[k], pass == 0 ? ST_STAGE_PARAMS : ST_STAGE_GRADS,
                                          &bad, &name);
            if (s != ST_OK)
                return s;
            if (bad) {
                snprintf(where, size, "stage %zu (%s), %s of '%s'", k,
                         st_device_label(p->dev[k]), pass == 0 ? "weights" : "gradient", name);
                return ST_OK;
            }
        }
    }
    if (p->stage[p->S - 1])
        snprintf(where, size, "stage %zu (%s), the loss", p->S - 1,
                 st_device_label(p->dev[p->S - 1]));
    return ST_OK;
}

/* STRATA_TEST_NAN_AT=STEP:STAGE puts a NaN into the first gradient of that
 * stage after the backward of that step: how the tests reach the NaN paths. */
static st_status test_poison(st_pipe *p, long step)
{
    const char *spec = getenv("STRATA_TEST_NAN_AT");
    char *end = NULL;
    long at = spec ? strtol(spec, &end, 10) : -1;
    long stage = end && *end == ':' ? strtol(end + 1, NULL, 10) : -1;
    if (at != step || stage < 0 || (size_t)stage >= p->S || !p->stage[stage])
        return ST_OK;
    st_stage *g = p->stage[stage];
    size_t n = st_stage_param_at(g, 0)->desc->numel;
    float *host = malloc(n * sizeof *host);
    if (!host)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    st_status s = st_stage_read(g, ST_STAGE_GRADS, 0, host);
    host[0] = NAN;
    if (s == ST_OK)
        s = st_stage_write(g, ST_STAGE_GRADS, 0, host);
    free(host);
    return s;
}

st_status st_pipe_train_step(st_pipe *p, const int32_t *tokens, const int32_t *targets,
                             const st_adamw_hparams *hp, long step, float clip,
                             st_pipe_step_result *res)
{
    if (!p->o.training)
        return st_error(ST_ERR_INVALID, "the pipeline was made without training buffers");
    size_t all = (size_t)p->o.batch * p->o.seq;
    long count = 0;
    for (size_t i = 0; i < all; i++)
        count += targets[i] >= 0;
    if (count == 0)
        return st_error(ST_ERR_INVALID, "step %ld: the batch has no targets", step);
    st_status s = ST_OK;
    for (size_t k = 0; s == ST_OK && k < p->S; k++)
        if (p->stage[k])
            s = st_stage_zero_grad(p->stage[k]);
    if (s != ST_OK)
        return s;
    p->tokens = tokens;
    p->targets = targets;
    p->backward = true;
    p->probs = NULL;
    /* Every token's loss weighs 1/count: the mean over the whole step. */
    p->dloss = 1.0f / (float)count;
    if ((s = run_stages(p)) != ST_OK || (s = sum_tied(p)) != ST_OK ||
        (s = test_poison(p, step)) != ST_OK)
        return s;
    /* sums[0]: the loss; sums[1 + l]: layer l's squared gradients, from the
     * one stage that holds it (0 elsewhere, so the sum over ranks is exact).
     * They are added in layer order: the norm, the clipping and so the
     * weights do not depend on the split. */
    size_t L = p->desc->n_layers;
    double *sums = calloc(L + 1, sizeof *sums);
    float *part = calloc(L, sizeof *part);
    if (!sums || !part) {
        free(sums);
        free(part);
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    }
    if (p->stage[p->S - 1])
        for (int j = 0; j < p->o.micro_batches; j++)
            sums[0] += p->mb_loss[j];
    for (size_t k = 0; s == ST_OK && k < p->S; k++)
        if (p->stage[k] && (s = st_stage_grad_sumsq(p->stage[k], part)) == ST_OK)
            for (size_t l = p->first[k]; l < p->end[k]; l++)
                sums[1 + l] = part[l - p->first[k]];
    if (s == ST_OK)
        s = allsum(p, sums, (int)(L + 1));
    double loss = sums[0], ss = 0;
    for (size_t l = 0; l < L; l++)
        ss += sums[1 + l];
    free(sums);
    free(part);
    if (s != ST_OK)
        return s;
    double norm = sqrt(ss);
    memset(res, 0, sizeof *res);
    if (!isfinite(norm) || !isfinite(loss)) {
        /* No update: the weights stay as they were before this step. */
        res->loss = loss / (double)count;
        res->tokens = count;
        res->grad_norm = norm;
        res->nonfinite = true;
        return locate_nonfinite(p, res->where, sizeof res->where);
    }
    float scale = clip > 0 && norm > clip ? (float)(clip / (norm + 1e-6)) : 1.0f;
    for (size_t k = 0; s == ST_OK && k < p->S; k++)
        if (p->stage[k])
            s = st_stage_step(p->stage[k], hp, step, scale);
    for (size_t k = 0; s == ST_OK && k < p->S; k++)
        if (p->stage[k])
            s = st_device_finish(p->dev[k]);
    if (s == ST_OK) {
        res->loss = loss / (double)count;
        res->tokens = count;
        res->grad_norm = norm;
    }
    return s;
}

st_status st_pipe_forward(st_pipe *p, const int32_t *tokens, const int32_t *targets,
                          double *sum, long *count, float *probs)
{
    p->tokens = tokens;
    p->targets = targets;
    p->backward = false;
    p->probs = probs;
    for (int j = 0; j < p->o.micro_batches; j++) {
        p->mb_loss[j] = 0;
        p->mb_count[j] = 0;
    }
    st_status s = run_stages(p);
    p->probs = NULL;
    if (s != ST_OK)
        return s;
    double v[2] = {0, 0};
    if (p->stage[p->S - 1])
        for (int j = 0; j < p->o.micro_batches; j++) {
            v[0] += p->mb_loss[j];
            v[1] += (double)p->mb_count[j];
        }
    if ((s = allsum(p, v, 2)) != ST_OK)
        return s;
    *sum = v[0];
    *count = (long)v[1];
    return ST_OK;
}

st_status st_pipe_decode_batch(st_pipe *p, int n, const int *tok, const int *pos, float *logits)
{
    if (p->comm)
        return st_error(ST_ERR_UNSUPPORTED, "decoding runs in one process, not across MPI ranks");
    if (n < 1 || n > (p->o.kv_seqs > 0 ? p->o.kv_seqs : 1))
        return st_error(ST_ERR_INVALID, "decode: %d sequences, the pipeline caches %d", n,
                        p->o.kv_seqs > 0 ? p->o.kv_seqs : 1);
    p->dec_n = n;
    p->dec_tok = tok;
    p->dec_pos = pos;
    p->dec_logits = logits;
    st_status s = run_stages(p);
    p->dec_n = 0;
    return s;
}

st_status st_pipe_decode(st_pipe *p, int tok, int pos, float *logits)
{
    return st_pipe_decode_batch(p, 1, &tok, &pos, logits);
}
