/*
 * pipe.c - the pipeline executor (see strata/pipe.h): stages, links, one
 * thread per stage (kept for the pipeline's life), schedules as lists of
 * operations.
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/hash.h"
#include "core/workers.h"
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
    float *whole[ST_PLAN_MAX_STAGES]; /* split moments gathered for a save (MPI) */
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
    const int32_t *tokens, *targets, *pos; /* pos: NULL, or packed documents' positions */
    bool backward;
    /* decoding several sequences: dec_n passes (groups of sequences, each
     * one st_stage_pass on every stage, flowing through the stages like
     * micro-batches); the rows of them all, each group's rows and the rows
     * whose logits it gives (their sequences' logits go to dec_logits) */
    int dec_n;
    struct dec_group { int first, n, out_first, n_out; } *dec_groups;
    int *dec_tok, *dec_seq, *dec_pos, *dec_out, *dec_out_seq;
    float *dec_logits, *dec_scratch;
    /* st_pipe_decode_stream: the feed, and the passes in flight (a ring of
     * pass descriptors: the first stage fills them in order, every stage
     * takes them in order, the last frees them) */
    const st_pipe_feed *feed;
    struct stream_pass {
        int g, n; /* n = 0: the end of the run */
        st_stage_rows rows;
        const int *out_seq;
    } *ring;
    int ring_n;
    long published, freed; /* passes filled by the first stage, finished by the last */
    int *in_flight;        /* per group: its passes published and not yet done */
    pthread_mutex_t ring_mu;
    pthread_cond_t ring_cv;
    /* a replica's share of a decoding call (n = 0: none), run by its thread */
    struct dec_call {
        int n;
        const int *const *tok;
        const int *count, *pos;
        float *logits;
    } dec_call;
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
    /* Data parallelism. A group (R > 1) holds R pipelines of the same stages
     * on other devices (rep[r], each on its share of the batch) and sums
     * their gradients; a replica points to its group. */
    size_t R;
    st_pipe *rep[ST_PLAN_MAX_REPLICAS];
    st_pipe *group;
    pthread_mutex_t arrive_mu;
    int arrived[ST_PLAN_MAX_STAGES];      /* replicas done with the stage's backwards */
    atomic_int reduce_failed;
    /* Threads kept for the pipeline's life (made at its first step): one
     * per stage here, or one per replica of a group. */
    st_workers *workers;
    st_status reduce_err;
    char reduce_msg[1024];
};

static size_t mpi_replicas(const st_pipe *p);
static st_status decode_groups(st_pipe *p, int n, const int *const *tok, const int *count,
                               const int *pos, float *logits);
static st_status allsum(st_pipe *p, double *v, int n);

size_t st_pipe_n_stages(const st_pipe *p)
{
    return p->S;
}

st_stage *st_pipe_stage(const st_pipe *p, size_t s)
{
    if (p->R > 1)
        return st_pipe_stage(p->rep[0], s);
    return s < p->S ? p->stage[s] : NULL;
}

size_t st_pipe_n_replicas(const st_pipe *p)
{
    return p->R > 1 ? p->R : mpi_replicas(p);
}

void st_pipe_batch_share(const st_pipe *p, int *first, int *count)
{
    *first = 0;
    *count = p->o.batch;
    if (mpi_replicas(p) > 1)
        *first = p->comm->replica * p->o.batch;
}

st_status st_pipe_allsum(st_pipe *p, double *v, int n)
{
    st_status s = ST_OK;
    if (mpi_replicas(p) > 1)
        s = p->comm->replica_allsum(p->comm->ctx, v, n);
    return s == ST_OK ? allsum(p, v, n) : s;
}

st_stage *st_pipe_replica_stage(const st_pipe *p, size_t r, size_t s)
{
    if (p->R > 1)
        return r < p->R ? st_pipe_stage(p->rep[r], s) : NULL;
    return r == 0 ? st_pipe_stage(p, s) : NULL;
}

double st_pipe_wait_s(const st_pipe *p, size_t s)
{
    double w = 0;
    for (size_t r = 0; r < p->R; r++)
        w = fmax(w, st_pipe_wait_s(p->rep[r], s));
    return p->R > 1 ? w : s < p->S ? p->wait_s[s] : 0;
}

void st_pipe_destroy(st_pipe *p)
{
    if (!p)
        return;
    st_workers_destroy(p->workers); /* first: they may hold the replicas */
    for (size_t r = 0; r < p->R; r++)
        st_pipe_destroy(p->rep[r]);
    if (p->R > 1) {
        pthread_mutex_destroy(&p->arrive_mu);
        pthread_mutex_destroy(&p->err_mu);
        free(p);
        return;
    }
    for (size_t k = 0; k < ST_PLAN_MAX_STAGES; k++)
        free(p->whole[k]);
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

/* R replicas of the plan's pipeline, each a pipeline of its own on its
 * share of the batch (and of the decoded sequences). */
static st_status create_replicas(const st_plan *plan, const st_model_desc *desc,
                                 st_device *const *devs, const st_pipe_comm *comm, st_pipe **out)
{
    size_t R = plan->replicas, S = plan->n_stages;
    const st_run_shape *o = &plan->shape;
    (void)comm;
    /* Decoding shares out the sequences; a training or forward pass the batch. */
    bool whole = o->micro_batches >= 1 && o->batch % ((int)R * o->micro_batches) == 0;
    bool decoding = !o->training && o->kv_seqs > 0;
    if (R > ST_PLAN_MAX_REPLICAS || S < 1 || S > ST_PLAN_MAX_STAGES || o->micro_batches < 1 ||
        (!whole && !decoding))
        return st_error(ST_ERR_INVALID,
                        "pipeline: %zu replicas of %zu stages, a batch of %d in %d micro-batches "
                        "per replica",
                        R, S, o->batch, o->micro_batches);
    st_pipe *p = calloc(1, sizeof *p);
    if (!p)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    pthread_mutex_init(&p->err_mu, NULL);
    pthread_mutex_init(&p->arrive_mu, NULL);
    p->S = S;
    p->R = R;
    p->o = *o;
    p->cfg = desc->cfg;
    p->desc = desc;
    p->fail_stage = -1;
    for (size_t k = 0; k < S; k++) {
        p->first[k] = plan->stage[k].first;
        p->end[k] = plan->stage[k].end;
    }
    st_status s = ST_OK;
    st_plan *one = malloc(sizeof *one);
    if (!one)
        s = st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    for (size_t r = 0; s == ST_OK && r < R; r++) {
        *one = *plan;
        one->replicas = 1;
        for (size_t k = 0; k < S; k++)
            one->stage[k].device = st_plan_device(plan, r, k);
        if (whole) /* else each replica's forward pass takes a whole batch */
            one->shape.batch = o->batch / (int)R;
        if (o->kv_seqs > 0)
            one->shape.kv_seqs = (o->kv_seqs + (int)R - 1) / (int)R;
        if (o->training && o->shard_moments) {
            one->shape.moment_parts = (int)R;
            one->shape.moment_part = (int)r;
        }
        if ((s = st_pipe_create(one, desc, devs, NULL, &p->rep[r])) == ST_OK)
            p->rep[r]->group = p;
        else
            st_error_context("replica %zu", r);
    }
    free(one);
    /* split moments: each part's stage reaches the others' */
    for (size_t k = 0; s == ST_OK && o->training && o->shard_moments && k < S; k++) {
        st_stage *peers[ST_PLAN_MAX_REPLICAS];
        for (size_t r = 0; r < R; r++)
            peers[r] = p->rep[r]->stage[k];
        for (size_t r = 0; r < R; r++)
            st_stage_set_peers(p->rep[r]->stage[k], peers);
    }
    if (s != ST_OK) {
        st_pipe_destroy(p);
        return s;
    }
    *out = p;
    return ST_OK;
}

/* Replicas under mpirun: this process's replica (comm->replica) is a
 * pipeline of its own on its share of the batch; the gradient sum goes
 * through comm->replica_sum. */
static st_status create_mpi_replica(const st_plan *plan, const st_model_desc *desc,
                                    st_device *const *devs, const st_pipe_comm *comm,
                                    st_pipe **out)
{
    size_t R = plan->replicas;
    const st_run_shape *o = &plan->shape;
    if (comm->replicas != (int)R || comm->replica < 0 || comm->replica >= (int)R ||
        !comm->replica_sum || !comm->replica_allsum)
        return st_error(ST_ERR_INVALID, "pipeline: the processes' communicator is not for %zu "
                                        "replicas",
                        R);
    if (o->micro_batches < 1 || o->batch % ((int)R * o->micro_batches) != 0)
        return st_error(ST_ERR_INVALID,
                        "pipeline: a batch of %d does not split into %zu replicas of %d "
                        "micro-batches",
                        o->batch, R, o->micro_batches);
    if (o->training && o->shard_moments && !comm->replica_gather)
        return st_error(ST_ERR_UNSUPPORTED,
                        "pipeline: the processes' communicator cannot gather split moments");
    st_plan *one = malloc(sizeof *one);
    if (!one)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    *one = *plan;
    one->replicas = 1;
    for (size_t k = 0; k < plan->n_stages; k++)
        one->stage[k].device = st_plan_device(plan, (size_t)comm->replica, k);
    one->shape.batch = o->batch / (int)R;
    if (o->training && o->shard_moments && R > 1) { /* this process's part of the moments */
        one->shape.moment_parts = (int)R;
        one->shape.moment_part = comm->replica;
    }
    st_status s = st_pipe_create(one, desc, devs, comm, out);
    free(one);
    return s;
}

/* Replicas of this pipe's process (under mpirun), 1 without. */
static size_t mpi_replicas(const st_pipe *p)
{
    return p->comm && p->comm->replicas > 1 ? (size_t)p->comm->replicas : 1;
}

st_status st_pipe_create(const st_plan *plan, const st_model_desc *desc, st_device *const *devs,
                         const st_pipe_comm *comm, st_pipe **out)
{
    if (st_plan_replicas(plan) > 1)
        return comm ? create_mpi_replica(plan, desc, devs, comm, out)
                    : create_replicas(plan, desc, devs, comm, out);
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
        size_t rows = (size_t)p->micro_batch * o->seq;
        if (o->kv_seq > 0 && (size_t)st_decode_rows(o->prefill, o->kv_seqs) > rows)
            rows = (size_t)st_decode_rows(o->prefill, o->kv_seqs); /* a decoding pass too */
        size_t boundary = rows * desc->layers[p->end[k] - 1].out_floats_per_token;
        p->boundary[k] = boundary;
        p->slots[k] = plan->stage[k].in_flight;
        st_stage_options go = {.first_layer = p->first[k], .end_layer = p->end[k],
                               .batch = p->micro_batch, .seq = o->seq, .slots = p->slots[k],
                               .training = o->training, .recompute = o->recompute,
                               .shards = o->moment_parts, .shard = o->moment_part,
                               .kv_seq = o->kv_seq, .kv_seqs = o->kv_seqs,
                               .prefill = o->prefill};
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

st_status st_pipe_replicate(st_pipe *p)
{
    if (p->R <= 1)
        return ST_OK;
    /* Whole buffers, replica 0's to the others: weights, and the moments
     * when training. */
    st_status s = ST_OK;
    for (size_t k = 0; s == ST_OK && k < p->S; k++) {
        st_stage *g0 = p->rep[0]->stage[k];
        size_t n = st_stage_param_numel(g0);
        float *host = malloc((n ? n : 1) * sizeof *host);
        if (!host)
            return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
        st_stage_buf bufs[] = {ST_STAGE_PARAMS, ST_STAGE_ADAM_M, ST_STAGE_ADAM_V};
        /* split moments: each replica keeps its own part */
        int bufs_n = !p->o.training ? 1 : p->o.shard_moments ? 1 : 3;
        for (int b = 0; s == ST_OK && b < bufs_n; b++) {
            /* the moments: of the parameters that train */
            st_tensor *h0 = st_stage_half_tensor(g0);
            size_t len = b == 0 ? n - (h0 ? st_tensor_numel(h0) : 0) : st_stage_train_numel(g0);
            if (len == 0)
                continue;
            s = st_tensor_read(st_stage_tensor(g0, bufs[b]), 0, len, host);
            for (size_t r = 1; s == ST_OK && r < p->R; r++)
                s = st_tensor_write(st_stage_tensor(p->rep[r]->stage[k], bufs[b]), 0, len, host);
        }
        /* the weights stored in 16 bits, as they are */
        st_tensor *h0 = st_stage_half_tensor(g0);
        size_t hn = h0 ? st_tensor_numel(h0) : 0;
        if (s == ST_OK && hn) /* hn 16-bit values fit the n floats of host */
            s = st_tensor_read(h0, 0, hn, host);
        for (size_t r = 1; s == ST_OK && hn && r < p->R; r++)
            s = st_tensor_write(st_stage_half_tensor(p->rep[r]->stage[k]), 0, hn, host);
        free(host);
    }
    return s;
}

st_status st_pipe_init(st_pipe *p, uint64_t seed)
{
    if (p->R > 1) {
        st_status s = st_pipe_init(p->rep[0], seed);
        return s == ST_OK ? st_pipe_replicate(p) : s;
    }
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
        /* One group's pass: its rows hop to the next stage while this
         * stage starts on the next group. */
        const struct dec_group *gr = &p->dec_groups[o->mb];
        st_tensor *x = st_stage_decode_x(g);
        if (s > 0 && (st = p->fwd[s - 1]->recv(p->fwd[s - 1], x, (size_t)gr->n * in_t)) != ST_OK)
            return st;
        st_stage_rows r = {.n = gr->n, .tok = p->dec_tok + gr->first,
                           .seq = p->dec_seq + gr->first, .pos = p->dec_pos + gr->first,
                           .n_out = gr->n_out, .out = p->dec_out + gr->out_first};
        if ((st = st_stage_pass(g, &r, last ? p->dec_scratch : NULL)) != ST_OK)
            return st;
        if (!last)
            return p->fwd[s]->send(p->fwd[s], x, (size_t)gr->n * out_t);
        size_t V = (size_t)p->cfg.vocab_size;
        for (int j = 0; j < gr->n_out; j++)
            memcpy(p->dec_logits + (size_t)p->dec_out_seq[gr->out_first + j] * V,
                   p->dec_scratch + (size_t)j * V, V * sizeof *p->dec_logits);
        return ST_OK;
    }
    if (o->kind == OP_FWD) {
        if (s > 0 && (st = p->fwd[s - 1]->recv(p->fwd[s - 1], st_stage_io_tensor(g, slot, ST_STAGE_IN),
                                                n_in)) != ST_OK)
            return st;
        const int32_t *tok = p->tokens + (size_t)o->mb * N;
        const int32_t *tgt = p->targets ? p->targets + (size_t)o->mb * N : NULL;
        const int32_t *pos = p->pos ? p->pos + (size_t)o->mb * N : NULL;
        if ((st = st_stage_positions(g, slot, pos, B, T)) != ST_OK ||
            (st = st_stage_forward(g, slot, s == 0 ? tok : NULL, last ? tgt : NULL, B, T)) != ST_OK)
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

static void replica_stage_done(st_pipe *g, size_t s);
static st_status reduce_mpi(st_pipe *p, size_t s);

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
    /* A replica's stage is done with its gradients: they can be summed. */
    if (!atomic_load(&p->failed) && p->group && p->backward && p->dec_n == 0)
        replica_stage_done(p->group, s);
    if (!atomic_load(&p->failed) && mpi_replicas(p) > 1 && p->backward && p->dec_n == 0) {
        st_status st = reduce_mpi(p, s);
        if (st != ST_OK)
            fail(p, st, s);
    }
    free(ops);
    return NULL;
}

/* ---- decoding as a stream of group passes (st_pipe_decode_stream) ---------------- */

static st_status run_stages(st_pipe *p);

/* Waits until pass k is published (stages after the first) or its slot is
 * free again (the first stage); false when the run failed. */
static bool ring_wait(st_pipe *p, long k, bool first)
{
    pthread_mutex_lock(&p->ring_mu);
    while (!atomic_load(&p->failed) &&
           (first ? k - p->freed >= p->ring_n : p->published <= k))
        pthread_cond_wait(&p->ring_cv, &p->ring_mu);
    pthread_mutex_unlock(&p->ring_mu);
    return !atomic_load(&p->failed);
}

static void ring_bump(st_pipe *p, long *counter)
{
    pthread_mutex_lock(&p->ring_mu);
    (*counter)++;
    pthread_cond_broadcast(&p->ring_cv);
    pthread_mutex_unlock(&p->ring_mu);
}

/* Stage s's part of a stream: the first stage asks the feed for the
 * groups' passes in turn (skipping groups that are done) and publishes
 * them; every stage runs them in order; the last hands the logits back. */
static void stream_main(st_pipe *p, size_t s)
{
    st_stage *g = p->stage[s];
    bool first = s == 0, last = s + 1 == p->S;
    size_t in_t = s > 0 ? p->desc->layers[p->end[s - 1] - 1].out_floats_per_token : 0;
    size_t out_t = p->desc->layers[p->end[s] - 1].out_floats_per_token;
    int G = p->feed->groups, live = G;
    bool *over = first ? calloc((size_t)G, sizeof *over) : NULL;
    st_status st = first && !over ? st_error(ST_ERR_HOST_MEMORY, "out of host memory") : ST_OK;
    for (long k = 0, turn = 0; st == ST_OK; k++) {
        struct stream_pass *sp = &p->ring[k % p->ring_n];
        if (!ring_wait(p, k, first))
            break;
        if (first) {
            /* the next group with something to do, or the end */
            sp->n = 0;
            while (live > 0 && sp->n == 0 && st == ST_OK) {
                int gi = (int)(turn++ % G);
                if (over[gi])
                    continue;
                /* the group's last pass done first: the feed draws its
                 * tokens from those logits */
                pthread_mutex_lock(&p->ring_mu);
                while (!atomic_load(&p->failed) && p->in_flight[gi] > 0)
                    pthread_cond_wait(&p->ring_cv, &p->ring_mu);
                pthread_mutex_unlock(&p->ring_mu);
                if (atomic_load(&p->failed))
                    break;
                sp->g = gi;
                sp->rows = (st_stage_rows){0};
                sp->out_seq = NULL;
                st = p->feed->next(p->feed->ctx, gi, &sp->rows, &sp->out_seq);
                sp->n = sp->rows.n;
                if (sp->n == 0)
                    over[gi] = true, live--;
            }
            if (st != ST_OK || atomic_load(&p->failed))
                break;
            pthread_mutex_lock(&p->ring_mu);
            p->in_flight[sp->g] += sp->n > 0;
            pthread_mutex_unlock(&p->ring_mu);
            ring_bump(p, &p->published);
        }
        if (sp->n == 0) /* the end: every stage stops here */
            break;
        st_tensor *x = st_stage_decode_x(g);
        if (s > 0 && (st = p->fwd[s - 1]->recv(p->fwd[s - 1], x, (size_t)sp->n * in_t)) != ST_OK)
            break;
        if ((long)s == p->fail_stage && ++p->ops_done[s] >= p->fail_at) {
            st = st_error(ST_ERR_CL, "injected failure (STRATA_TEST_FAIL_STAGE=%ld:%ld)",
                          p->fail_stage, p->fail_at);
            break;
        }
        if ((st = st_stage_pass(g, &sp->rows, last ? p->dec_scratch : NULL)) != ST_OK)
            break;
        if (!last) {
            st = p->fwd[s]->send(p->fwd[s], x, (size_t)sp->n * out_t);
            continue;
        }
        st = p->feed->done(p->feed->ctx, sp->g, p->dec_scratch, sp->rows.n_out);
        pthread_mutex_lock(&p->ring_mu);
        p->in_flight[sp->g]--;
        pthread_mutex_unlock(&p->ring_mu);
        ring_bump(p, &p->freed);
    }
    if (st != ST_OK)
        fail(p, st, s);
    if (atomic_load(&p->failed)) { /* wake the stages waiting on the ring */
        pthread_mutex_lock(&p->ring_mu);
        pthread_cond_broadcast(&p->ring_cv);
        pthread_mutex_unlock(&p->ring_mu);
    }
    free(over);
}

bool st_pipe_can_stream(const st_pipe *p)
{
    return p->R <= 1 && !p->comm;
}

st_status st_pipe_decode_stream(st_pipe *p, const st_pipe_feed *f)
{
    if (!st_pipe_can_stream(p))
        return st_error(ST_ERR_UNSUPPORTED,
                        "streamed decoding runs in one process without replicas");
    if (f->groups < 1)
        return st_error(ST_ERR_INVALID, "streamed decoding: %d groups", f->groups);
    size_t V = (size_t)p->cfg.vocab_size;
    int rows = st_decode_rows(p->o.prefill, p->o.kv_seqs);
    int outs = p->o.kv_seqs > 0 ? p->o.kv_seqs : 1;
    /* passes in flight: one per stage and group is the most the links allow */
    p->ring_n = (int)p->S + f->groups + 1;
    p->ring = calloc((size_t)p->ring_n, sizeof *p->ring);
    p->in_flight = calloc((size_t)f->groups, sizeof *p->in_flight);
    p->dec_scratch = malloc((size_t)(outs < rows ? outs : rows) * V * sizeof *p->dec_scratch);
    st_status s = ST_OK;
    if (!p->ring || !p->in_flight || !p->dec_scratch)
        s = st_error(ST_ERR_HOST_MEMORY, "out of host memory for streamed decoding");
    if (s == ST_OK) {
        pthread_mutex_init(&p->ring_mu, NULL);
        pthread_cond_init(&p->ring_cv, NULL);
        p->published = p->freed = 0;
        p->feed = f;
        s = run_stages(p);
        p->feed = NULL;
        pthread_mutex_destroy(&p->ring_mu);
        pthread_cond_destroy(&p->ring_cv);
    }
    free(p->ring);
    free(p->in_flight);
    free(p->dec_scratch);
    p->ring = NULL;
    p->in_flight = NULL;
    p->dec_scratch = NULL;
    return s;
}

/* A stage's thread for one step (workers' call i: stage i, if here). */
static void stage_worker(void *ctx, size_t i)
{
    st_pipe *p = ctx;
    stage_job job = {p, i};
    if (!p->stage[i])
        return;
    if (p->feed)
        stream_main(p, i);
    else
        stage_main(&job);
}

static st_status run_stages(st_pipe *p)
{
    atomic_store(&p->failed, 0);
    p->err = ST_OK;
    for (size_t k = 0; k + 1 < p->S; k++)
        if (p->fwd[k])
            p->fwd[k]->wait_s = p->bwd[k]->wait_s = 0;
    size_t n_local = 0, only = 0;
    for (size_t s = 0; s < p->S; s++)
        if (p->stage[s])
            n_local++, only = s;
    if (n_local == 1) { /* this thread is the stage's */
        stage_worker(p, only);
    } else {
        st_status st = p->workers ? ST_OK : st_workers_create(p->S, &p->workers);
        if (st == ST_OK)
            st_workers_run(p->workers, p->S, stage_worker, p);
        else
            fail(p, st, 0);
    }
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
            if (so != su && !p->desc->layers[ld->tied[t].layer].params[ld->tied[t].param].frozen)
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
        if (which != ST_STAGE_PARAMS && prm->desc->frozen)
            continue;
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
    size_t i = 0; /* its first parameter that trains */
    while (i < st_stage_n_params(g) && st_stage_param_at(g, i)->desc->frozen)
        i++;
    if (i == st_stage_n_params(g))
        return ST_OK;
    size_t n = st_stage_param_at(g, i)->desc->numel;
    float *host = malloc(n * sizeof *host);
    if (!host)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    st_status s = st_stage_read(g, ST_STAGE_GRADS, i, host);
    host[0] = NAN;
    if (s == ST_OK)
        s = st_stage_write(g, ST_STAGE_GRADS, i, host);
    free(host);
    return s;
}

/* The squared gradient norm of the pipe's stages: sums[1 + l] is layer l's,
 * from the one stage that holds it (0 elsewhere, so the sum over ranks is
 * exact); sums[0] is left for the caller (the loss). They are added in layer
 * order: the norm, the clipping and so the weights do not depend on the
 * split. */
static st_status grad_sumsq(st_pipe *p, double *loss, double *ss)
{
    size_t L = p->desc->n_layers;
    double *sums = calloc(L + 1, sizeof *sums);
    float *part = calloc(L, sizeof *part);
    if (!sums || !part) {
        free(sums);
        free(part);
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    }
    sums[0] = *loss;
    st_status s = ST_OK;
    for (size_t k = 0; s == ST_OK && k < p->S; k++)
        if (p->stage[k] && (s = st_stage_grad_sumsq(p->stage[k], part)) == ST_OK)
            for (size_t l = p->first[k]; l < p->end[k]; l++)
                sums[1 + l] = part[l - p->first[k]];
    if (s == ST_OK)
        s = allsum(p, sums, (int)(L + 1));
    *loss = sums[0];
    *ss = 0;
    for (size_t l = 0; l < L; l++)
        *ss += sums[1 + l];
    free(sums);
    free(part);
    return s;
}

/* This pipe's share of the step's loss (its last stage's micro-batches). */
static double pipe_loss(const st_pipe *p)
{
    double loss = 0;
    if (p->stage[p->S - 1])
        for (int j = 0; j < p->o.micro_batches; j++)
            loss += p->mb_loss[j];
    return loss;
}

/* AdamW on every stage with the clipping scale of the norm; the pipe's
 * devices finished. */
static st_status apply_step(st_pipe *p, const st_adamw_hparams *hp, long step, float scale)
{
    st_status s = ST_OK;
    for (size_t k = 0; s == ST_OK && k < p->S; k++)
        if (p->stage[k])
            s = st_stage_step(p->stage[k], hp, step, scale);
    for (size_t k = 0; s == ST_OK && k < p->S; k++)
        if (p->stage[k])
            s = st_device_finish(p->dev[k]);
    return s;
}

/* The step's targets; none is an error. */
static st_status count_targets(const st_pipe *p, const int32_t *targets, long step, long *count)
{
    /* Under mpirun with replicas the targets are the whole batch's. */
    size_t all = mpi_replicas(p) * (size_t)p->o.batch * p->o.seq;
    *count = 0;
    for (size_t i = 0; i < all; i++)
        *count += targets[i] >= 0;
    if (*count == 0)
        return st_error(ST_ERR_INVALID, "step %ld: the batch has no targets", step);
    return ST_OK;
}

/* Points the pipe at its micro-batches for a training pass. */
static st_status begin_backward(st_pipe *p, const int32_t *tokens, const int32_t *targets,
                                const int32_t *pos, float dloss)
{
    st_status s = ST_OK;
    for (size_t k = 0; s == ST_OK && k < p->S; k++)
        if (p->stage[k])
            s = st_stage_zero_grad(p->stage[k]);
    p->tokens = tokens;
    p->targets = targets;
    p->pos = pos;
    p->backward = true;
    p->probs = NULL;
    p->dloss = dloss;
    return s;
}

/* STRATA_TEST_DRIFT_AT=STEP:REPLICA moves one weight of that replica after
 * that step's update: how the tests show that replicas which drifted apart
 * are caught before a save. */
static st_status test_drift(st_pipe *p, size_t replica, long step)
{
    const char *spec = getenv("STRATA_TEST_DRIFT_AT");
    long at = -1, rep = -1;
    if (!spec || sscanf(spec, "%ld:%ld", &at, &rep) != 2 || at != step || rep != (long)replica)
        return ST_OK;
    for (size_t k = 0; k < p->S; k++) {
        if (!p->stage[k])
            continue;
        float w = 0;
        st_tensor *t = st_stage_tensor(p->stage[k], ST_STAGE_PARAMS);
        st_status s = st_tensor_read(t, 0, 1, &w);
        w += 1e-3f;
        return s == ST_OK ? st_tensor_write(t, 0, 1, &w) : s;
    }
    return ST_OK;
}

/* Split moments: each replica updated its part of the weights; every
 * replica gets every part (through host memory, a bucket at a time), so
 * all hold the same bits again. */
static st_status gather_parts(st_pipe *const *pipes, size_t n)
{
    st_status s = ST_OK;
    size_t bucket = (size_t)1 << 20;
    float *buf = malloc(bucket * sizeof *buf);
    if (!buf)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    for (size_t k = 0; s == ST_OK && k < pipes[0]->S; k++)
        for (size_t r = 0; s == ST_OK && r < n; r++) {
            size_t lo, hi;
            st_stage_moment_range(pipes[r]->stage[k], &lo, &hi);
            for (size_t off = lo; s == ST_OK && off < hi; off += bucket) {
                size_t len = hi - off < bucket ? hi - off : bucket;
                s = st_tensor_read(st_stage_tensor(pipes[r]->stage[k], ST_STAGE_PARAMS), off, len,
                                   buf);
                for (size_t q = 0; s == ST_OK && q < n; q++)
                    if (q != r)
                        s = st_tensor_write(st_stage_tensor(pipes[q]->stage[k], ST_STAGE_PARAMS),
                                            off, len, buf);
            }
        }
    free(buf);
    return s;
}

/* The same over MPI: this process's stages' trained weights, each replica's
 * part to every replica. */
static st_status gather_parts_mpi(st_pipe *p)
{
    st_status s = ST_OK;
    for (size_t k = 0; s == ST_OK && k < p->S; k++) {
        if (!p->stage[k])
            continue;
        size_t n = st_stage_train_numel(p->stage[k]), lo, hi;
        st_stage_moment_range(p->stage[k], &lo, &hi);
        float *buf = malloc((n ? n : 1) * sizeof *buf);
        st_tensor *w = st_stage_tensor(p->stage[k], ST_STAGE_PARAMS);
        s = buf ? ST_OK : st_error(ST_ERR_HOST_MEMORY, "out of host memory");
        if (s == ST_OK && hi > lo)
            s = st_tensor_read(w, lo, hi - lo, buf + lo);
        if (s == ST_OK)
            s = p->comm->replica_gather(p->comm->ctx, buf, n);
        if (s == ST_OK && lo > 0)
            s = st_tensor_write(w, 0, lo, buf);
        if (s == ST_OK && hi < n)
            s = st_tensor_write(w, hi, n - hi, buf + hi);
        free(buf);
    }
    return s;
}

st_status st_pipe_moments_whole(st_pipe *p, bool on)
{
    if (!p->comm || p->o.moment_parts <= 1 || !p->o.training)
        return ST_OK;
    st_status s = ST_OK;
    for (size_t k = 0; k < p->S; k++) {
        if (!p->stage[k])
            continue;
        free(p->whole[k]);
        p->whole[k] = NULL;
        st_stage_moments_host(p->stage[k], NULL, NULL);
        if (!on || s != ST_OK)
            continue;
        size_t n = st_stage_train_numel(p->stage[k]), lo, hi;
        st_stage_moment_range(p->stage[k], &lo, &hi);
        float *buf = malloc((n > 0 ? 2 * n : 1) * sizeof *buf);
        s = buf ? ST_OK : st_error(ST_ERR_HOST_MEMORY, "out of host memory for the moments");
        st_stage_buf which[2] = {ST_STAGE_ADAM_M, ST_STAGE_ADAM_V};
        for (int b = 0; s == ST_OK && b < 2; b++) {
            if (hi > lo)
                s = st_tensor_read(st_stage_tensor(p->stage[k], which[b]), 0, hi - lo,
                                   buf + (size_t)b * n + lo);
            if (s == ST_OK)
                s = p->comm->replica_gather(p->comm->ctx, buf + (size_t)b * n, n);
        }
        if (s == ST_OK) {
            p->whole[k] = buf;
            st_stage_moments_host(p->stage[k], buf, buf + n);
        } else {
            free(buf);
        }
    }
    return s;
}

/* The end of a step once the gradients are whole: the norm, and the update
 * of every pipeline in pipes (a group's replicas, or the pipe itself), or
 * none when the loss or the norm is not finite. */
static st_status finish_step(st_pipe *p, st_pipe *const *pipes, size_t n, double loss, long count,
                             const st_adamw_hparams *hp, long step, float clip,
                             st_pipe_step_result *res)
{
    double ss = 0;
    st_status s = grad_sumsq(pipes[0], &loss, &ss);
    if (s != ST_OK)
        return s;
    double norm = sqrt(ss);
    memset(res, 0, sizeof *res);
    res->loss = loss / (double)count;
    res->tokens = count;
    res->grad_norm = norm;
    if (!isfinite(norm) || !isfinite(loss)) {
        /* No update: the weights stay as they were before this step. */
        res->nonfinite = true;
        return locate_nonfinite(pipes[0], res->where, sizeof res->where);
    }
    (void)p;
    float scale = clip > 0 && norm > clip ? (float)(clip / (norm + 1e-6)) : 1.0f;
    for (size_t r = 0; s == ST_OK && r < n; r++)
        s = apply_step(pipes[r], hp, step, scale);
    if (s == ST_OK && n > 1 && pipes[0]->o.moment_parts > 1)
        s = gather_parts(pipes, n);
    else if (s == ST_OK && pipes[0]->comm && pipes[0]->o.moment_parts > 1)
        s = gather_parts_mpi(pipes[0]);
    for (size_t r = 0; s == ST_OK && r < n; r++)
        s = test_drift(pipes[r], n > 1 ? r : pipes[r]->comm ? (size_t)pipes[r]->comm->replica : 0,
                       step);
    return s;
}

/* ---- replicas ------------------------------------------------------------------------ */

/* Gradients are summed over the replicas a bucket at a time through host
 * memory: 4 MiB per read. */
#define REDUCE_BUCKET ((size_t)1 << 20)

/* Stage s's gradients of every replica become their sum, added in replica
 * order (0 + 1 + ...), so every replica holds the same bits. */
static st_status reduce_stage(st_pipe *g, size_t s)
{
    size_t n = st_stage_train_numel(g->rep[0]->stage[s]);
    size_t b = n < REDUCE_BUCKET ? n : REDUCE_BUCKET;
    float *acc = malloc((b ? b : 1) * sizeof *acc), *in = malloc((b ? b : 1) * sizeof *in);
    st_status st = acc && in ? ST_OK : st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    for (size_t off = 0; st == ST_OK && off < n; off += b) {
        size_t len = n - off < b ? n - off : b;
        st = st_tensor_read(st_stage_tensor(g->rep[0]->stage[s], ST_STAGE_GRADS), off, len, acc);
        for (size_t r = 1; st == ST_OK && r < g->R; r++) {
            st = st_tensor_read(st_stage_tensor(g->rep[r]->stage[s], ST_STAGE_GRADS), off, len,
                                in);
            for (size_t i = 0; st == ST_OK && i < len; i++)
                acc[i] += in[i];
        }
        for (size_t r = 0; st == ST_OK && r < g->R; r++)
            st = st_tensor_write(st_stage_tensor(g->rep[r]->stage[s], ST_STAGE_GRADS), off, len,
                                 acc);
    }
    free(acc);
    free(in);
    return st;
}

/* A replica's stage s finished its last backward: the last of the replicas
 * to get there sums stage s's gradients while the earlier stages still work. */
static void replica_stage_done(st_pipe *g, size_t s)
{
    pthread_mutex_lock(&g->arrive_mu);
    bool last = ++g->arrived[s] == (int)g->R;
    pthread_mutex_unlock(&g->arrive_mu);
    if (!last)
        return;
    st_status st = reduce_stage(g, s);
    if (st != ST_OK) {
        pthread_mutex_lock(&g->err_mu);
        if (!atomic_load(&g->reduce_failed)) {
            g->reduce_err = st;
            snprintf(g->reduce_msg, sizeof g->reduce_msg,
                     "summing stage %zu's gradients over the replicas: %s", s, st_last_error());
            atomic_store(&g->reduce_failed, 1);
        }
        pthread_mutex_unlock(&g->err_mu);
    }
}

typedef struct replica_job {
    st_pipe *p;
    st_status status;
    char msg[4096];
} replica_job;

static void *replica_main(void *arg)
{
    replica_job *job = arg;
    struct dec_call *c = &job->p->dec_call;
    job->status = c->n > 0 ? decode_groups(job->p, c->n, c->tok, c->count, c->pos, c->logits)
                           : run_stages(job->p);
    c->n = 0;
    if (job->status != ST_OK)
        snprintf(job->msg, sizeof job->msg, "%s", st_last_error());
    return NULL;
}

static void replica_worker(void *ctx, size_t i)
{
    replica_main((replica_job *)ctx + i);
}

/* Every replica's pass at once, one thread each; the first failure (in
 * replica order) is the result. */
static st_status run_replicas(st_pipe *g, size_t n_active)
{
    replica_job jobs[ST_PLAN_MAX_REPLICAS];
    memset(g->arrived, 0, sizeof g->arrived);
    atomic_store(&g->reduce_failed, 0);
    for (size_t r = 0; r < n_active; r++)
        jobs[r] = (replica_job){.p = g->rep[r], .status = ST_OK};
    st_status st = g->workers ? ST_OK : st_workers_create(g->R, &g->workers);
    if (st != ST_OK)
        return st;
    st_workers_run(g->workers, n_active, replica_worker, jobs);
    for (size_t r = 0; r < n_active; r++)
        if (jobs[r].status != ST_OK)
            return st_error(jobs[r].status, "replica %zu: %s", r, jobs[r].msg);
    if (atomic_load(&g->reduce_failed))
        return st_error(g->reduce_err, "%s", g->reduce_msg);
    return ST_OK;
}

/* The batch's sequences [r * share, (r + 1) * share) go to replica r. */
static size_t share_of(const st_pipe *g)
{
    return (size_t)(g->o.batch / (int)g->R) * (size_t)g->o.seq;
}

/* This process's stage s of an MPI replica: its gradients summed over the
 * replicas of the stage, a bucket at a time through host memory. */
static st_status reduce_mpi(st_pipe *p, size_t s)
{
    st_tensor *grads = st_stage_tensor(p->stage[s], ST_STAGE_GRADS);
    size_t n = st_stage_train_numel(p->stage[s]);
    size_t b = n < REDUCE_BUCKET ? n : REDUCE_BUCKET;
    float *buf = malloc((b ? b : 1) * sizeof *buf);
    st_status st = buf ? ST_OK : st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    for (size_t off = 0; st == ST_OK && off < n; off += b) {
        size_t len = n - off < b ? n - off : b;
        if ((st = st_tensor_read(grads, off, len, buf)) == ST_OK &&
            (st = p->comm->replica_sum(p->comm->ctx, buf, len)) == ST_OK)
            st = st_tensor_write(grads, off, len, buf);
    }
    free(buf);
    return st;
}

static st_status group_train_step(st_pipe *g, const int32_t *tokens, const int32_t *targets,
                                  const int32_t *pos, const st_adamw_hparams *hp, long step,
                                  float clip, st_pipe_step_result *res)
{
    long count = 0;
    st_status s = count_targets(g, targets, step, &count);
    size_t share = share_of(g);
    /* Every token's loss weighs 1/count of the whole batch: the replicas'
     * gradients add up to the step's. */
    for (size_t r = 0; s == ST_OK && r < g->R; r++)
        s = begin_backward(g->rep[r], tokens + r * share, targets + r * share,
                           pos ? pos + r * share : NULL, 1.0f / (float)count);
    if (s != ST_OK || (s = run_replicas(g, g->R)) != ST_OK)
        return s;
    double loss = 0;
    for (size_t r = 0; s == ST_OK && r < g->R; r++) {
        loss += pipe_loss(g->rep[r]);
        if ((s = sum_tied(g->rep[r])) == ST_OK)
            s = test_poison(g->rep[r], step);
    }
    if (s != ST_OK)
        return s;
    return finish_step(g, g->rep, g->R, loss, count, hp, step, clip, res);
}

st_status st_pipe_train_step(st_pipe *p, const int32_t *tokens, const int32_t *targets,
                             const int32_t *pos, const st_adamw_hparams *hp, long step,
                             float clip, st_pipe_step_result *res)
{
    if (!p->o.training)
        return st_error(ST_ERR_INVALID, "the pipeline was made without training buffers");
    if (p->R > 1)
        return group_train_step(p, tokens, targets, pos, hp, step, clip, res);
    long count = 0;
    st_status s = count_targets(p, targets, step, &count);
    /* Under mpirun a replica takes its share of the batch. */
    size_t off = p->comm ? (size_t)p->comm->replica * (size_t)p->o.batch * p->o.seq : 0;
    /* Every token's loss weighs 1/count: the mean over the whole step. */
    if (s != ST_OK ||
        (s = begin_backward(p, tokens + off, targets + off, pos ? pos + off : NULL,
                            1.0f / (float)count)) != ST_OK)
        return s;
    if ((s = run_stages(p)) != ST_OK || (s = sum_tied(p)) != ST_OK ||
        (s = test_poison(p, step)) != ST_OK)
        return s;
    double loss = pipe_loss(p);
    if (mpi_replicas(p) > 1 && (s = p->comm->replica_allsum(p->comm->ctx, &loss, 1)) != ST_OK)
        return s;
    return finish_step(p, &p, 1, loss, count, hp, step, clip, res);
}

/* Points the pipe at its micro-batches for a forward pass. */
static void begin_forward(st_pipe *p, const int32_t *tokens, const int32_t *targets,
                          const int32_t *pos, float *probs)
{
    p->tokens = tokens;
    p->targets = targets;
    p->pos = pos;
    p->backward = false;
    p->probs = probs;
    for (int j = 0; j < p->o.micro_batches; j++) {
        p->mb_loss[j] = 0;
        p->mb_count[j] = 0;
    }
}

/* v[0] += the pass's loss sum, v[1] += its tokens with a target (this process's). */
static void forward_sums(const st_pipe *p, double *v)
{
    if (p->stage[p->S - 1])
        for (int j = 0; j < p->o.micro_batches; j++) {
            v[0] += p->mb_loss[j];
            v[1] += (double)p->mb_count[j];
        }
}

st_status st_pipe_forward(st_pipe *p, const int32_t *tokens, const int32_t *targets,
                          const int32_t *pos, double *sum, long *count, float *probs)
{
    double v[2] = {0, 0};
    st_status s = ST_OK;
    if (p->R > 1 && p->o.batch % ((int)p->R * p->o.micro_batches) != 0)
        return st_error(ST_ERR_INVALID,
                        "forward: a batch of %d sequences does not split over %zu replicas", p->o.batch,
                        p->R);
    if (p->R > 1) {
        size_t share = share_of(p), V = (size_t)p->cfg.vocab_size;
        for (size_t r = 0; r < p->R; r++)
            begin_forward(p->rep[r], tokens + r * share, targets ? targets + r * share : NULL,
                          pos ? pos + r * share : NULL, probs ? probs + r * share * V : NULL);
        s = run_replicas(p, p->R);
        for (size_t r = 0; r < p->R; r++) {
            p->rep[r]->probs = NULL;
            forward_sums(p->rep[r], v);
        }
    } else {
        /* Under mpirun a replica takes its share of the batch. */
        size_t off = p->comm ? (size_t)p->comm->replica * (size_t)p->o.batch * p->o.seq : 0;
        begin_forward(p, tokens + off, targets ? targets + off : NULL, pos ? pos + off : NULL,
                      probs ? probs + off * (size_t)p->cfg.vocab_size : NULL);
        s = run_stages(p);
        p->probs = NULL;
        forward_sums(p, v);
    }
    if (s == ST_OK && mpi_replicas(p) > 1)
        s = p->comm->replica_allsum(p->comm->ctx, v, 2);
    if (s != ST_OK || (s = allsum(p, v, 2)) != ST_OK)
        return s;
    *sum = v[0];
    *count = (long)v[1];
    return ST_OK;
}

/* ---- decoding across MPI processes: process 0 leads, the others follow ---------- */

/* A decoding call's arrays, freed. */
static void dec_release(st_pipe *p)
{
    p->dec_n = 0;
    free(p->dec_groups);
    free(p->dec_tok);
    free(p->dec_out);
    free(p->dec_scratch);
    p->dec_groups = NULL;
    p->dec_tok = p->dec_out = NULL;
    p->dec_scratch = NULL;
}

/* The passes of a call, from the pipeline's process 0 to the others (their
 * part of a call is collective: the header, then the groups and rows). */
static st_status mpi_share_passes(st_pipe *p, int total, int outs, int n)
{
    const st_pipe_comm *c = p->comm;
    int hdr[4] = {p->dec_n, total, outs, n};
    st_status s = c->bcast(c->ctx, hdr, sizeof hdr, 0);
    if (s == ST_OK)
        s = c->bcast(c->ctx, p->dec_groups, (size_t)p->dec_n * sizeof *p->dec_groups, 0);
    if (s == ST_OK)
        s = c->bcast(c->ctx, p->dec_tok, 3 * (size_t)total * sizeof *p->dec_tok, 0);
    if (s == ST_OK)
        s = c->bcast(c->ctx, p->dec_out, (size_t)outs * sizeof *p->dec_out, 0);
    if (s == ST_OK)
        s = c->bcast(c->ctx, p->dec_out_seq, (size_t)outs * sizeof *p->dec_out_seq, 0);
    return s;
}

/* The logits of the call's sequences, from the process with the last
 * stage to all (process 0 takes them). */
static st_status mpi_share_logits(st_pipe *p, int outs)
{
    const st_pipe_comm *c = p->comm;
    int root = c->stage_rank[p->S - 1];
    if (root == 0 && c->rank == 0)
        return ST_OK; /* the last stage is process 0's: its logits are in place */
    size_t V = (size_t)p->cfg.vocab_size;
    float *pack = malloc(((size_t)outs * V + 1) * sizeof *pack);
    if (!pack)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory for %d rows of logits", outs);
    for (int j = 0; c->rank == root && j < outs; j++)
        memcpy(pack + (size_t)j * V, p->dec_logits + (size_t)p->dec_out_seq[j] * V,
               V * sizeof *pack);
    st_status s = c->bcast(c->ctx, pack, (size_t)outs * V * sizeof *pack, root);
    for (int j = 0; s == ST_OK && c->rank == 0 && j < outs; j++)
        memcpy(p->dec_logits + (size_t)p->dec_out_seq[j] * V, pack + (size_t)j * V,
               V * sizeof *pack);
    free(pack);
    return s;
}

st_status st_pipe_decode_follow(st_pipe *p)
{
    const st_pipe_comm *c = p->comm;
    if (!c || !c->bcast || mpi_replicas(p) > 1 || c->rank == 0)
        return st_error(ST_ERR_INVALID, "decode: only the pipeline's processes after the first "
                                        "follow");
    size_t V = (size_t)p->cfg.vocab_size;
    for (;;) {
        int hdr[4];
        st_status s = c->bcast(c->ctx, hdr, sizeof hdr, 0);
        if (s != ST_OK || hdr[0] <= 0)
            return s; /* hdr[0] < 0: the leader is done */
        int G = hdr[0], total = hdr[1], outs = hdr[2], n = hdr[3];
        p->dec_groups = malloc((size_t)G * sizeof *p->dec_groups);
        p->dec_tok = malloc((size_t)total * 3 * sizeof *p->dec_tok);
        p->dec_out = malloc(((size_t)outs * 2 + 1) * sizeof *p->dec_out);
        p->dec_scratch = malloc((size_t)outs * V * sizeof *p->dec_scratch);
        float *logits = malloc((size_t)n * V * sizeof *logits);
        if (!p->dec_groups || !p->dec_tok || !p->dec_out || !p->dec_scratch || !logits)
            s = st_error(ST_ERR_HOST_MEMORY, "out of host memory for %d decoding rows", total);
        if (s == ST_OK) {
            p->dec_seq = p->dec_tok + total;
            p->dec_pos = p->dec_seq + total;
            p->dec_out_seq = p->dec_out + outs;
            p->dec_logits = logits;
            if ((s = c->bcast(c->ctx, p->dec_groups, (size_t)G * sizeof *p->dec_groups, 0)) ==
                    ST_OK &&
                (s = c->bcast(c->ctx, p->dec_tok, 3 * (size_t)total * sizeof *p->dec_tok, 0)) ==
                    ST_OK &&
                (s = c->bcast(c->ctx, p->dec_out, (size_t)outs * sizeof *p->dec_out, 0)) ==
                    ST_OK)
                s = c->bcast(c->ctx, p->dec_out_seq, (size_t)outs * sizeof *p->dec_out_seq, 0);
        }
        p->dec_n = G;
        if (s == ST_OK)
            s = run_stages(p);
        if (s == ST_OK)
            s = mpi_share_logits(p, outs);
        dec_release(p);
        free(logits);
        if (s != ST_OK)
            return s;
    }
}

st_status st_pipe_decode_end(st_pipe *p)
{
    const st_pipe_comm *c = p->comm;
    if (!c || !c->bcast || mpi_replicas(p) > 1 || c->rank != 0)
        return ST_OK;
    int hdr[4] = {-1, 0, 0, 0};
    return c->bcast(c->ctx, hdr, sizeof hdr, 0);
}

/* Splits the rows of a decoding call into passes (groups of whole
 * sequences, in order): as many groups as stages, so that each stage works
 * on one while the next works on another, each within the rows a pass
 * holds; one group without splitting. Then runs them. */
static st_status decode_groups(st_pipe *p, int n, const int *const *tok, const int *count,
                               const int *pos, float *logits)
{
    int total = 0, most = st_decode_rows(p->o.prefill, p->o.kv_seqs), outs = 0;
    for (int i = 0; i < n; i++)
        total += count ? count[i] : 1;
    if (total == 0)
        return ST_OK;
    int target = (total + (int)p->S - 1) / (int)p->S;
    if (target > most)
        target = most;
    size_t V = (size_t)p->cfg.vocab_size;
    p->dec_groups = malloc((size_t)n * sizeof *p->dec_groups);
    p->dec_tok = malloc((size_t)total * 3 * sizeof *p->dec_tok);
    p->dec_out = malloc((size_t)n * 2 * sizeof *p->dec_out);
    p->dec_scratch = malloc((size_t)(n < most ? n : most) * V * sizeof *p->dec_scratch);
    st_status s = ST_OK;
    if (!p->dec_groups || !p->dec_tok || !p->dec_out || !p->dec_scratch)
        s = st_error(ST_ERR_HOST_MEMORY, "out of host memory for %d decoding rows", total);
    if (s == ST_OK) {
        p->dec_seq = p->dec_tok + total;
        p->dec_pos = p->dec_seq + total;
        p->dec_out_seq = p->dec_out + n;
        p->dec_logits = logits;
        int rows = 0, g = -1;
        for (int i = 0; i < n; i++) {
            int k = count ? count[i] : 1;
            if (k == 0) /* nothing of this sequence in this call */
                continue;
            struct dec_group *gr = g >= 0 ? &p->dec_groups[g] : NULL;
            if (!gr || gr->n + k > target) {
                gr = &p->dec_groups[++g];
                *gr = (struct dec_group){.first = rows, .out_first = outs};
            }
            for (int j = 0; j < k; j++) {
                p->dec_tok[rows + j] = tok[i][j];
                p->dec_seq[rows + j] = i;
                p->dec_pos[rows + j] = pos[i] + j;
            }
            rows += k;
            gr->n += k;
            p->dec_out[outs] = gr->n - 1; /* the sequence's last row: its logits */
            p->dec_out_seq[outs++] = i;
            gr->n_out++;
        }
        p->dec_n = g + 1;
        if (p->comm) /* the other processes' stages need the passes too */
            s = mpi_share_passes(p, total, outs, n);
        if (s == ST_OK)
            s = run_stages(p);
        if (s == ST_OK && p->comm)
            s = mpi_share_logits(p, outs);
    }
    dec_release(p);
    return s;
}

st_status st_pipe_prefill_batch(st_pipe *p, int n, const int *const *tok, const int *count,
                                const int *pos, float *logits)
{
    int most = p->o.prefill > 1 ? p->o.prefill : 1;
    for (int i = 0; count && i < n; i++)
        if (count[i] < 0 || count[i] > most)
            return st_error(ST_ERR_INVALID, "decode: %d tokens of sequence %d in one pass, the "
                                            "pipeline takes 0 to %d", count[i], i, most);
    if (p->R > 1) {
        /* Sequence i is replica i / per's sequence i % per: each replica
         * decodes its own at the same time as the others. */
        int per = p->rep[0]->o.kv_seqs > 0 ? p->rep[0]->o.kv_seqs : 1;
        if (n < 1 || n > per * (int)p->R)
            return st_error(ST_ERR_INVALID, "decode: %d sequences, the replicas cache %d", n,
                            per * (int)p->R);
        size_t active = (size_t)((n + per - 1) / per), V = (size_t)p->cfg.vocab_size;
        for (size_t r = 0; r < active; r++) {
            int first = (int)r * per, k = n - first < per ? n - first : per;
            p->rep[r]->dec_call = (struct dec_call){k, tok + first, count ? count + first : NULL,
                                                    pos + first, logits + (size_t)first * V};
        }
        return run_replicas(p, active);
    }
    if (p->comm && (mpi_replicas(p) > 1 || !p->comm->bcast))
        return st_error(ST_ERR_UNSUPPORTED,
                        "decoding under mpirun runs one pipeline over the ranks, without "
                        "replicas");
    if (p->comm && p->comm->rank != 0)
        return st_error(ST_ERR_INVALID, "decode: the pipeline's first process leads; the others "
                                        "follow (st_pipe_decode_follow)");
    if (n < 1 || n > (p->o.kv_seqs > 0 ? p->o.kv_seqs : 1))
        return st_error(ST_ERR_INVALID, "decode: %d sequences, the pipeline caches %d", n,
                        p->o.kv_seqs > 0 ? p->o.kv_seqs : 1);
    return decode_groups(p, n, tok, count, pos, logits);
}

st_status st_pipe_replica_prefill_batch(st_pipe *p, size_t r, int n, const int *const *tok,
                                        const int *count, const int *pos, float *logits)
{
    if (p->R < 2 || r >= p->R)
        return st_error(ST_ERR_INVALID, "decode: replica %zu of a pipeline with %zu", r,
                        p->R < 2 ? (size_t)1 : p->R);
    return st_pipe_prefill_batch(p->rep[r], n, tok, count, pos, logits);
}

st_status st_pipe_decode_batch(st_pipe *p, int n, const int *tok, const int *pos, float *logits)
{
    enum { MAX_SEQS = 4096 };
    const int *one[MAX_SEQS];
    if (n < 1 || n > MAX_SEQS)
        return st_error(ST_ERR_INVALID, "decode: %d sequences, at most %d at once", n, MAX_SEQS);
    for (int i = 0; i < n; i++)
        one[i] = tok + i;
    return st_pipe_prefill_batch(p, n, one, NULL, pos, logits);
}

st_status st_pipe_decode(st_pipe *p, int tok, int pos, float *logits)
{
    return st_pipe_decode_batch(p, 1, &tok, &pos, logits);
}

/* st_sum64 of a stage's weights. */
static st_status weights_sum(st_stage *g, uint64_t *sum)
{
    st_tensor *h = st_stage_half_tensor(g);
    size_t n = st_stage_param_numel(g), hn = h ? st_tensor_numel(h) : 0, fn = n - hn;
    float *host = malloc((n ? n : 1) * sizeof *host);
    if (!host)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    /* the float weights, then the 16-bit ones' bytes after them */
    st_status s = fn ? st_tensor_read(st_stage_tensor(g, ST_STAGE_PARAMS), 0, fn, host) : ST_OK;
    if (s == ST_OK && hn)
        s = st_tensor_read(h, 0, hn, host + fn);
    if (s == ST_OK)
        *sum = st_sum64_of(host, fn * sizeof *host + hn * 2);
    free(host);
    return s;
}

st_status st_pipe_replicas_agree(st_pipe *p, bool *agree)
{
    *agree = true;
    st_status s = ST_OK;
    if (p->R > 1) {
        for (size_t k = 0; s == ST_OK && k < p->S; k++) {
            uint64_t first = 0, other = 0;
            s = weights_sum(p->rep[0]->stage[k], &first);
            for (size_t r = 1; s == ST_OK && r < p->R; r++)
                if ((s = weights_sum(p->rep[r]->stage[k], &other)) == ST_OK && other != first)
                    *agree = false;
        }
        return s;
    }
    size_t R = mpi_replicas(p);
    if (R < 2)
        return ST_OK;
    /* Each stage's checksum in four 16-bit parts x, summed over the replicas
     * with their squares: every replica has the same x exactly when the sums
     * are R x and R x^2 (all exact in doubles). */
    bool same = true;
    for (size_t k = 0; s == ST_OK && k < p->S; k++) {
        if (!p->stage[k])
            continue;
        uint64_t h = 0;
        if ((s = weights_sum(p->stage[k], &h)) != ST_OK)
            break;
        double v[8], x[4];
        for (int i = 0; i < 4; i++) {
            x[i] = (double)((h >> (16 * i)) & 0xffff);
            v[i] = x[i];
            v[4 + i] = x[i] * x[i];
        }
        if ((s = p->comm->replica_allsum(p->comm->ctx, v, 8)) != ST_OK)
            break;
        for (int i = 0; i < 4; i++)
            same = same && v[i] == (double)R * x[i] && v[4 + i] == (double)R * x[i] * x[i];
    }
    double differ = same ? 0 : 1;
    if (s == ST_OK)
        s = allsum(p, &differ, 1);
    *agree = differ == 0;
    return s;
}
