/*
 * mpi_run.c - ranks, the MPI link and the collectives (see mpi_run.h).
 *
 * The MPI link carries one boundary in one direction between two ranks on
 * host-staged buffers. The receiver keeps a receive posted for each of its
 * `depth` buffers at all times (posted early: a message lands while the
 * stage still computes); recv() waits for the next one in order, copies it
 * to the device and posts that buffer again. The sender copies to a host
 * buffer, starts a non-blocking send and only waits for it when the buffer
 * comes round again.
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/clock.h"
#include "mpi/mpi_run.h"
#include "pipe/link.h"
#include "strata/tensor.h"

/* The job: the ranks taking part now (all of them, or the first few while
 * st_mpi_scope holds: `bench --scaling` over 1, 2, 4... ranks) and this
 * rank's place among them. */
static struct {
    bool active;
    MPI_Comm comm; /* MPI_COMM_WORLD, or the scope's */
    int rank, size, local_rank;
    int world_rank, world_size;
} g;

int st_mpi_launched_size(void)
{
    const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *v = getenv(vars[i]);
        if (v && atoi(v) > 0)
            return atoi(v);
    }
    return 0;
}

static st_status mpi_fail(int err, const char *call)
{
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(err, text, &len);
    return st_error(ST_ERR_IO, "rank %d: %s failed: %s", g.rank, call, text);
}

st_status st_mpi_start(int *argc, char ***argv)
{
    int provided = 0;
    int err = MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided);
    if (err != MPI_SUCCESS)
        return st_error(ST_ERR_IO, "MPI_Init_thread failed (%d)", err);
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &g.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g.size);
    g.world_rank = g.rank;
    g.world_size = g.size;
    g.comm = MPI_COMM_WORLD;
    MPI_Comm node;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, g.rank, MPI_INFO_NULL, &node);
    MPI_Comm_rank(node, &g.local_rank);
    MPI_Comm_free(&node);
    g.active = true;
    if (provided < MPI_THREAD_MULTIPLE)
        return st_error(ST_ERR_UNSUPPORTED,
                        "this MPI library gives thread level %d, Strata needs "
                        "MPI_THREAD_MULTIPLE (stages send and receive from their own threads)",
                        provided);
    return ST_OK;
}

void st_mpi_stop(void)
{
    if (g.active)
        MPI_Finalize();
    g.active = false;
}

bool st_mpi_active(void)
{
    return g.active;
}

int st_mpi_rank(void)
{
    return g.rank;
}

int st_mpi_size(void)
{
    return g.active ? g.size : 1;
}

int st_mpi_local_rank(void)
{
    return g.local_rank;
}

st_status st_mpi_scope(int n, bool *inside)
{
    *inside = g.world_rank < n;
    MPI_Comm sub = MPI_COMM_NULL;
    int err = MPI_Comm_split(MPI_COMM_WORLD, *inside ? 0 : MPI_UNDEFINED, g.world_rank, &sub);
    if (err != MPI_SUCCESS)
        return mpi_fail(err, "MPI_Comm_split");
    if (*inside) {
        MPI_Comm_set_errhandler(sub, MPI_ERRORS_RETURN);
        g.comm = sub;
        MPI_Comm_rank(sub, &g.rank);
        MPI_Comm_size(sub, &g.size);
    }
    return ST_OK;
}

st_status st_mpi_scope_end(void)
{
    if (g.comm != MPI_COMM_WORLD)
        MPI_Comm_free(&g.comm);
    g.comm = MPI_COMM_WORLD;
    g.rank = g.world_rank;
    g.size = g.world_size;
    int err = MPI_Barrier(MPI_COMM_WORLD);
    return err == MPI_SUCCESS ? ST_OK : mpi_fail(err, "MPI_Barrier");
}

void st_mpi_abort(int code)
{
    fflush(stdout);
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, code);
}

st_status st_mpi_barrier(void)
{
    int err = MPI_Barrier(g.comm);
    return err == MPI_SUCCESS ? ST_OK : mpi_fail(err, "MPI_Barrier");
}

st_status st_mpi_check_same_args(int argc, char **argv)
{
    uint64_t h = 1469598103934665603ull;
    for (int i = 1; i < argc; i++) {
        for (const char *c = argv[i]; *c; c++)
            h = (h ^ (unsigned char)*c) * 1099511628211ull;
        h = (h ^ 0xffu) * 1099511628211ull;
    }
    uint64_t *all = malloc((size_t)g.size * sizeof *all);
    if (!all)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    int err = MPI_Allgather(&h, 1, MPI_UINT64_T, all, 1, MPI_UINT64_T, MPI_COMM_WORLD);
    st_status s = err == MPI_SUCCESS ? ST_OK : mpi_fail(err, "MPI_Allgather");
    for (int r = 1; s == ST_OK && r < g.size; r++)
        if (all[r] != all[0])
            s = st_error(ST_ERR_INVALID,
                         "rank %d was started with other flags than rank 0: every rank must get "
                         "the same command line",
                         r);
    free(all);
    return s;
}

st_status st_mpi_gather_profiles(const st_device_profile *mine, int n_mine,
                                 st_device_profile *out, int *counts, int *total)
{
    int err = MPI_Gather(&n_mine, 1, MPI_INT, counts, 1, MPI_INT, 0, g.comm);
    if (err != MPI_SUCCESS)
        return mpi_fail(err, "MPI_Gather");
    int displs[ST_PLAN_MAX_STAGES] = {0}, bytes[ST_PLAN_MAX_STAGES] = {0}, n = 0;
    if (g.rank == 0) {
        for (int r = 0; r < g.size; r++) {
            if (n + counts[r] > ST_PLAN_MAX_STAGES)
                return st_error(ST_ERR_INVALID, "more than %d devices over all ranks",
                                ST_PLAN_MAX_STAGES);
            displs[r] = n * (int)sizeof *out;
            bytes[r] = counts[r] * (int)sizeof *out;
            n += counts[r];
        }
        *total = n;
    }
    err = MPI_Gatherv(mine, n_mine * (int)sizeof *mine, MPI_BYTE, out, bytes, displs, MPI_BYTE, 0,
                      g.comm);
    return err == MPI_SUCCESS ? ST_OK : mpi_fail(err, "MPI_Gatherv");
}

st_status st_mpi_bcast_plan(st_plan *plan, st_status status, char *message, size_t size)
{
    int st = (int)status;
    int err = MPI_Bcast(&st, 1, MPI_INT, 0, g.comm);
    if (err == MPI_SUCCESS)
        err = MPI_Bcast(message, (int)size, MPI_CHAR, 0, g.comm);
    if (err == MPI_SUCCESS && st == ST_OK)
        err = MPI_Bcast(plan, (int)sizeof *plan, MPI_BYTE, 0, g.comm);
    if (err != MPI_SUCCESS)
        return mpi_fail(err, "MPI_Bcast");
    if (st != ST_OK)
        return st_error((st_status)st, "%s", message);
    return ST_OK;
}

static st_status allsum_on(MPI_Comm comm, int size, double *v, int n);

st_status st_mpi_allsum(double *v, int n)
{
    return allsum_on(g.comm, g.size, v, n);
}

st_status st_mpi_gather_lines(const char *line, char *out, size_t line_size)
{
    char *buf = calloc(1, line_size);
    if (!buf)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    snprintf(buf, line_size, "%s", line);
    int err = MPI_Gather(buf, (int)line_size, MPI_CHAR, out, (int)line_size, MPI_CHAR, 0,
                         g.comm);
    free(buf);
    return err == MPI_SUCCESS ? ST_OK : mpi_fail(err, "MPI_Gather");
}

/* ---- the MPI link ------------------------------------------------------------ */

/* A pipeline's communicators (st_pipe_comm.ctx): its own ranks, and the
 * replicas of this rank's stage. */
typedef struct mpi_ctx {
    MPI_Comm pipe, group;
    bool own_pipe, own_group;
    int pipe_rank, pipe_size, group_size;
} mpi_ctx;

typedef struct mpi_link {
    st_link base;
    MPI_Comm comm;
    bool sender;
    int peer, tag, depth;
    size_t floats;
    float **buf;
    MPI_Request *req;
    long count; /* messages handled so far */
} mpi_link;

static st_status mpi_send(st_link *l, const st_tensor *t, size_t count)
{
    mpi_link *m = (mpi_link *)l;
    int slot = (int)(m->count % m->depth);
    double t0 = st_now_s();
    if (m->req[slot] != MPI_REQUEST_NULL) { /* the buffer's previous send */
        int err = MPI_Wait(&m->req[slot], MPI_STATUS_IGNORE);
        if (err != MPI_SUCCESS)
            return mpi_fail(err, "MPI_Wait (send)");
    }
    l->wait_s += st_now_s() - t0;
    st_status s = st_tensor_read(t, 0, count, m->buf[slot]);
    if (s != ST_OK)
        return s;
    int err = MPI_Isend(m->buf[slot], (int)count, MPI_FLOAT, m->peer, m->tag, m->comm,
                        &m->req[slot]);
    if (err != MPI_SUCCESS)
        return mpi_fail(err, "MPI_Isend");
    m->count++;
    return ST_OK;
}

static st_status mpi_recv(st_link *l, st_tensor *t, size_t count)
{
    mpi_link *m = (mpi_link *)l;
    int slot = (int)(m->count % m->depth);
    MPI_Status st;
    double t0 = st_now_s();
    int err = MPI_Wait(&m->req[slot], &st);
    l->wait_s += st_now_s() - t0;
    if (err != MPI_SUCCESS)
        return mpi_fail(err, "MPI_Wait (receive)");
    int got = 0;
    MPI_Get_count(&st, MPI_FLOAT, &got);
    if ((size_t)got != count)
        return st_error(ST_ERR_INVALID, "rank %d: expected %zu floats from rank %d, got %d",
                        g.rank, count, m->peer, got);
    st_status s = st_tensor_write(t, 0, count, m->buf[slot]);
    if (s != ST_OK)
        return s;
    /* Post this buffer again for the message `depth` ahead. */
    err = MPI_Irecv(m->buf[slot], (int)m->floats, MPI_FLOAT, m->peer, m->tag, m->comm,
                    &m->req[slot]);
    if (err != MPI_SUCCESS)
        return mpi_fail(err, "MPI_Irecv");
    m->count++;
    return ST_OK;
}

static void mpi_link_abort(st_link *l)
{
    /* A failed rank ends the whole job (st_mpi_abort): nothing to wake here. */
    (void)l;
}

static void mpi_link_destroy(st_link *l)
{
    mpi_link *m = (mpi_link *)l;
    if (!m)
        return;
    for (int i = 0; m->req && i < m->depth; i++) {
        if (m->req[i] == MPI_REQUEST_NULL)
            continue;
        if (!m->sender)
            MPI_Cancel(&m->req[i]);
        MPI_Wait(&m->req[i], MPI_STATUS_IGNORE);
    }
    for (int i = 0; m->buf && i < m->depth; i++)
        free(m->buf[i]);
    free(m->buf);
    free(m->req);
    free(m);
}

static st_status make_link(void *ctx, size_t boundary, bool backward, int from, int to,
                           size_t floats, int depth, st_link **out)
{
    mpi_ctx *c = ctx;
    mpi_link *m = calloc(1, sizeof *m);
    if (!m)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    m->base = (st_link){mpi_send, mpi_recv, mpi_link_abort, mpi_link_destroy, 0.0};
    m->comm = c->pipe;
    m->sender = from == c->pipe_rank;
    m->peer = m->sender ? to : from;
    m->tag = (int)(boundary * 2 + (backward ? 1 : 0));
    m->depth = depth < 2 ? 2 : depth;
    m->floats = floats;
    m->buf = calloc((size_t)m->depth, sizeof *m->buf);
    m->req = malloc((size_t)m->depth * sizeof *m->req);
    bool ok = m->buf && m->req;
    for (int i = 0; ok && i < m->depth; i++) {
        m->req[i] = MPI_REQUEST_NULL;
        ok = (m->buf[i] = malloc((floats ? floats : 1) * sizeof(float))) != NULL;
    }
    if (!ok) {
        mpi_link_destroy(&m->base);
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory for MPI link buffers");
    }
    for (int i = 0; !m->sender && i < m->depth; i++) {
        int err = MPI_Irecv(m->buf[i], (int)floats, MPI_FLOAT, m->peer, m->tag, m->comm,
                            &m->req[i]);
        if (err != MPI_SUCCESS) {
            mpi_link_destroy(&m->base);
            return mpi_fail(err, "MPI_Irecv");
        }
    }
    *out = &m->base;
    return ST_OK;
}

/* v[i] = the sum over comm's ranks of v[i], added in rank order. */
static st_status allsum_on(MPI_Comm comm, int size, double *v, int n)
{
    double *all = malloc((size_t)n * (size_t)size * sizeof *all);
    if (!all)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    int err = MPI_Allgather(v, n, MPI_DOUBLE, all, n, MPI_DOUBLE, comm);
    if (err == MPI_SUCCESS)
        for (int i = 0; i < n; i++) {
            double acc = 0;
            for (int r = 0; r < size; r++)
                acc += all[(size_t)r * (size_t)n + (size_t)i];
            v[i] = acc;
        }
    free(all);
    return err == MPI_SUCCESS ? ST_OK : mpi_fail(err, "MPI_Allgather");
}

static st_status comm_allsum(void *ctx, double *v, int n)
{
    mpi_ctx *c = ctx;
    return allsum_on(c->pipe, c->pipe_size, v, n);
}

static st_status comm_replica_allsum(void *ctx, double *v, int n)
{
    mpi_ctx *c = ctx;
    return allsum_on(c->group, c->group_size, v, n);
}

/* Each replica's part of v (parts of ceil(n / replicas)) to every replica,
 * a bucket of each part at a time (counts stay within an int). */
static st_status comm_replica_gather(void *ctx, float *v, size_t n)
{
    mpi_ctx *c = ctx;
    size_t R = (size_t)c->group_size, part = (n + R - 1) / R;
    int me = 0;
    MPI_Comm_rank(c->group, &me);
    const size_t bucket = (size_t)1 << 20;
    size_t b = part < bucket ? part : bucket;
    float *mine = malloc((b ? b : 1) * sizeof *mine), *all = malloc((b ? b : 1) * R * sizeof *all);
    st_status s = mine && all ? ST_OK : st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    for (size_t off = 0; s == ST_OK && off < part; off += b) {
        size_t len = part - off < b ? part - off : b;
        for (size_t r = 0; r < R; r++) {
            /* replica r's floats of this bucket: [r part + off, + len) within n */
            size_t lo = r * part + off, hi = lo + len < n ? lo + len : n;
            if ((int)r == me) {
                memset(mine, 0, len * sizeof *mine);
                if (lo < hi)
                    memcpy(mine, v + lo, (hi - lo) * sizeof *mine);
            }
        }
        int err = MPI_Allgather(mine, (int)len, MPI_FLOAT, all, (int)len, MPI_FLOAT, c->group);
        if (err != MPI_SUCCESS) {
            s = mpi_fail(err, "MPI_Allgather");
            break;
        }
        for (size_t r = 0; r < R; r++) {
            size_t lo = r * part + off, hi = lo + len < n ? lo + len : n;
            if ((int)r != me && lo < hi)
                memcpy(v + lo, all + r * len, (hi - lo) * sizeof *v);
        }
    }
    free(mine);
    free(all);
    return s;
}

/* Floats summed over the replicas of this stage, a bucket at a time (all
 * of every replica's bucket gathered, added in replica order: the same bits
 * on each). */
static st_status comm_replica_sum(void *ctx, float *v, size_t n)
{
    mpi_ctx *c = ctx;
    const size_t bucket = (size_t)1 << 20;
    size_t b = n < bucket ? n : bucket;
    float *all = malloc((b ? b : 1) * (size_t)c->group_size * sizeof *all);
    if (!all)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    int err = MPI_SUCCESS;
    for (size_t off = 0; err == MPI_SUCCESS && off < n; off += b) {
        int len = (int)(n - off < b ? n - off : b);
        err = MPI_Allgather(v + off, len, MPI_FLOAT, all, len, MPI_FLOAT, c->group);
        for (int i = 0; err == MPI_SUCCESS && i < len; i++) {
            float acc = all[i];
            for (int r = 1; r < c->group_size; r++)
                acc += all[(size_t)r * (size_t)len + (size_t)i];
            v[off + (size_t)i] = acc;
        }
    }
    free(all);
    return err == MPI_SUCCESS ? ST_OK : mpi_fail(err, "MPI_Allgather (gradient sum)");
}

static st_status comm_gather(void *ctx, const char *line, char *out, size_t line_size)
{
    mpi_ctx *c = ctx;
    char *buf = calloc(1, line_size);
    if (!buf)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    snprintf(buf, line_size, "%s", line);
    int err = MPI_Gather(buf, (int)line_size, MPI_CHAR, out, (int)line_size, MPI_CHAR, 0, c->pipe);
    free(buf);
    return err == MPI_SUCCESS ? ST_OK : mpi_fail(err, "MPI_Gather");
}

static st_status comm_exchange(void *ctx, int peer, const float *send, float *recv, size_t n)
{
    mpi_ctx *c = ctx;
    /* Large tensors go in pieces: MPI counts are int. */
    const size_t piece = (size_t)1 << 28;
    for (size_t off = 0; off < n; off += piece) {
        int cnt = (int)(n - off < piece ? n - off : piece);
        int err = MPI_Sendrecv(send + off, cnt, MPI_FLOAT, peer, 1000, recv + off, cnt, MPI_FLOAT,
                               peer, 1000, c->pipe, MPI_STATUS_IGNORE);
        if (err != MPI_SUCCESS)
            return mpi_fail(err, "MPI_Sendrecv");
    }
    return ST_OK;
}

static st_status comm_bcast(void *ctx, void *buf, size_t bytes, int root)
{
    mpi_ctx *c = ctx;
    const size_t piece = (size_t)1 << 30; /* MPI counts are int */
    for (size_t off = 0; off < bytes; off += piece) {
        int cnt = (int)(bytes - off < piece ? bytes - off : piece);
        int err = MPI_Bcast((char *)buf + off, cnt, MPI_BYTE, root, c->pipe);
        if (err != MPI_SUCCESS)
            return mpi_fail(err, "MPI_Bcast");
    }
    return ST_OK;
}

static void comm_abort(void *ctx, const char *message)
{
    (void)ctx;
    fprintf(stderr, "strata: rank %d: error: %s\n", g.rank, message);
    st_mpi_abort(1);
}

st_status st_mpi_comm_make(const st_plan *plan, const int *device_rank, st_pipe_comm *comm)
{
    memset(comm, 0, sizeof *comm);
    size_t R = st_plan_replicas(plan), S = plan->n_stages;
    mpi_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    /* This rank's replica and stage (with replicas: exactly one stage). */
    int mine_r = -1, mine_k = -1, n_mine = 0;
    for (size_t r = 0; r < R; r++)
        for (size_t k = 0; k < S; k++)
            if (device_rank[st_plan_device(plan, r, k)] == g.rank) {
                n_mine++;
                if (mine_r < 0) {
                    mine_r = (int)r;
                    mine_k = (int)k;
                }
            }
    st_status s = ST_OK;
    if (R > 1 && n_mine != 1)
        s = st_error(ST_ERR_INVALID,
                     "rank %d holds %d stages of %zu replicas: with replicas under mpirun each "
                     "rank holds one stage (one device per rank)",
                     g.rank, n_mine, R);
    int err = MPI_SUCCESS;
    if (s == ST_OK && R > 1) {
        /* A communicator per replica (its pipeline, ranks in stage order) and
         * one per stage (its replicas, in replica order). */
        err = MPI_Comm_split(g.comm, mine_r, mine_k, &c->pipe);
        if (err == MPI_SUCCESS) {
            c->own_pipe = true;
            err = MPI_Comm_split(g.comm, mine_k, mine_r, &c->group);
        }
        if (err == MPI_SUCCESS)
            c->own_group = true;
    } else if (s == ST_OK) {
        c->pipe = g.comm;
        c->group = MPI_COMM_SELF;
    }
    if (s == ST_OK && err != MPI_SUCCESS)
        s = mpi_fail(err, "MPI_Comm_split");
    if (s == ST_OK) {
        MPI_Comm_rank(c->pipe, &c->pipe_rank);
        MPI_Comm_size(c->pipe, &c->pipe_size);
        MPI_Comm_size(c->group, &c->group_size);
        comm->rank = c->pipe_rank;
        comm->ranks = c->pipe_size;
        /* Stage k's rank in this rank's pipeline: with replicas, k itself
         * (the split orders by stage); else the world rank of its device. */
        for (size_t k = 0; k < S; k++)
            comm->stage_rank[k] = R > 1 ? (int)k : device_rank[plan->stage[k].device];
        comm->replicas = (int)R;
        comm->replica = R > 1 ? mine_r : 0;
        comm->make_link = make_link;
        comm->allsum = comm_allsum;
        comm->exchange = comm_exchange;
        comm->bcast = comm_bcast;
        comm->replica_sum = comm_replica_sum;
        comm->replica_allsum = comm_replica_allsum;
        comm->replica_gather = comm_replica_gather;
        comm->gather = comm_gather;
        comm->abort_job = comm_abort;
        comm->ctx = c;
        return ST_OK;
    }
    st_mpi_comm_free(comm);
    if (c->own_pipe)
        MPI_Comm_free(&c->pipe);
    free(c);
    return s;
}

void st_mpi_comm_free(st_pipe_comm *comm)
{
    mpi_ctx *c = comm->ctx;
    if (!c)
        return;
    if (c->own_pipe)
        MPI_Comm_free(&c->pipe);
    if (c->own_group)
        MPI_Comm_free(&c->group);
    free(c);
    comm->ctx = NULL;
}
