/*
 * pipe.h - a model split into stages (contiguous layer ranges, one device
 * each), trained and run as a pipeline of micro-batches.
 *
 * One host thread per stage runs that stage's list of operations for the
 * step: forward(mb) and backward(mb) in the order of the schedule (GPipe: all
 * forwards, then all backwards; 1F1B: a warm-up of S - s - 1 forwards, then
 * one forward and one backward in turn). Tensors between consecutive stages
 * travel through links; the schedule does not know how a link moves data.
 *
 * Replicas (data parallelism, st_plan_replicate): R pipelines of the same
 * stages on other devices, each on its share of the batch (sequences
 * r * B/R to (r+1) * B/R) at the same time. When replica r's stage s has done
 * its last backward, and the others' stage s too, the last to get there sums
 * stage s's gradients over the replicas (through host memory, in buckets,
 * added in replica order, written back to every replica) while the earlier
 * stages still work; every replica then takes the same AdamW step, so they
 * hold the same bits. Decoding many sequences gives each replica its share.
 *
 * Backwards run in micro-batch order on every stage, so gradients accumulate
 * in the same order however the model is split. After the last backward the
 * tied embedding's two copies (first and last stage) get the sum of their
 * gradients, the global gradient norm is summed over the stages, and every
 * stage takes one AdamW step with the same clipping scale.
 *
 * A stage that fails makes the others stop at their next link operation
 * instead of waiting for data that will not come; the first failure's
 * message is the step's error.
 */
#ifndef STRATA_PIPE_H
#define STRATA_PIPE_H

#include "strata/stage.h"
#include "strata/plan.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct st_pipe st_pipe;
typedef struct st_link st_link; /* src/pipe/link.h */

/* Stages in other processes (MPI ranks): who holds which stage, links to
 * them, and the sums the step needs across processes. NULL: all stages here. */
typedef struct st_pipe_comm {
    int rank, ranks; /* this process in the pipeline's processes, and how many */
    int stage_rank[ST_PLAN_MAX_STAGES];
    /* Replicas: this process's pipeline is replica `replica` of `replicas`
     * (each on its share of the batch); 1 and 0 without. */
    int replicas, replica;
    /* v[i] = the sum of v[i] over the replicas of this process's stage, added
     * in replica order (the same bits on each): the gradient sum. */
    st_status (*replica_sum)(void *ctx, float *v, size_t n);
    /* The same for doubles (the loss over the replicas). */
    st_status (*replica_allsum)(void *ctx, double *v, int n);
    /* v[n] split in `replicas` parts of ceil(n / replicas) (the last shorter):
     * each replica's own part of v to every replica (the split moments'
     * weights and moments, st_stage_moment_range). */
    st_status (*replica_gather)(void *ctx, float *v, size_t n);
    /* Each pipeline process's line of text to its first (out: ranks x size). */
    st_status (*gather)(void *ctx, const char *line, char *out, size_t size);
    /* A link for boundary b (stage b to b+1 when !backward, b+1 to b when
     * backward) between this process and another. */
    st_status (*make_link)(void *ctx, size_t boundary, bool backward, int from, int to,
                           size_t floats, int depth, st_link **out);
    /* v[i] = sum over processes of v[i], added in rank order (bitwise the
     * same on every process and every run). */
    st_status (*allsum)(void *ctx, double *v, int n);
    /* Sends n floats to peer and receives n from it. */
    st_status (*exchange)(void *ctx, int peer, const float *send, float *recv, size_t n);
    /* bytes of buf from the pipeline's process root to all of them. */
    st_status (*bcast)(void *ctx, void *buf, size_t bytes, int root);
    /* A stage here failed: end every process now (the others may be waiting
     * on this one), after reporting the message. Does not return. */
    void (*abort_job)(void *ctx, const char *message);
    void *ctx;
} st_pipe_comm;

/* The pipeline of a plan (strata/plan.h): stage s holds layers
 * [plan->stage[s].first, .end) on devs[plan->stage[s].device] (devs indexed
 * as the devices the plan was made over), keeping plan->stage[s].in_flight
 * micro-batches' activations; the run's shape is plan->shape. With comm
 * (MPI ranks), a stage exists only where comm->stage_rank[s] is comm->rank
 * (devs of other ranks' devices may be NULL); NULL: every stage here. */
st_status st_pipe_create(const st_plan *plan, const st_model_desc *desc, st_device *const *devs,
                         const st_pipe_comm *comm, st_pipe **out);
void st_pipe_destroy(st_pipe *p);

size_t st_pipe_n_stages(const st_pipe *p);
/* Stage s (of the first replica), or NULL when another process holds it. */
st_stage *st_pipe_stage(const st_pipe *p, size_t s);
/* Copies of the pipeline (the plan's replicas), and stage s of copy r (in
 * this process). */
size_t st_pipe_n_replicas(const st_pipe *p);
st_stage *st_pipe_replica_stage(const st_pipe *p, size_t r, size_t s);
/* The sequences of a batch whose outputs (probabilities) this process's
 * last stage gives: all of them, or under mpirun a replica's share. */
void st_pipe_batch_share(const st_pipe *p, int *first, int *count);
/* Whether every replica holds the same weights, bit for bit (checksums
 * compared; under mpirun every process of the job takes part and gets the
 * same answer). True without replicas. */
st_status st_pipe_replicas_agree(st_pipe *p, bool *agree);
/* v[i] summed over the pipeline's processes and (under mpirun) its replicas,
 * in a fixed order: for counts a process made over its share. */
st_status st_pipe_allsum(st_pipe *p, double *v, int n);

/* The model's initialisation on every stage (the same weights however split). */
st_status st_pipe_init(st_pipe *p, uint64_t seed);
/* The first replica's weights (and AdamW moments when training) copied to
 * the others: after loading a checkpoint into st_pipe_stage's stages. */
st_status st_pipe_replicate(st_pipe *p);

typedef struct st_pipe_step_result {
    double loss;      /* mean over the tokens with a target */
    long tokens;      /* tokens with a target */
    double grad_norm; /* before clipping */
    /* The loss or the gradient norm was NaN or infinite: no update was made,
     * and `where` names the first stage it was found on (its weights, else
     * its gradients). Every process sees the same. */
    bool nonfinite;
    char where[256];
} st_pipe_step_result;

/* Moments split over MPI replicas (--shard-optimizer): every process
 * gathers its stages' moments whole on the host (on), so that the first
 * replica can save them, and frees them after (off). Every replica's
 * processes call it together; nothing to do elsewhere. */
st_status st_pipe_moments_whole(st_pipe *p, bool on);

/* One training step on m micro-batches: tokens and targets hold m * B * T
 * entries, micro-batch j at j * B * T; so does pos when the sequences hold
 * packed documents (each token's position in its own document, given to
 * every stage: st_stage_positions), else NULL. clip 0: no clipping. */
st_status st_pipe_train_step(st_pipe *p, const int32_t *tokens, const int32_t *targets,
                             const int32_t *pos, const st_adamw_hparams *hp, long step,
                             float clip, st_pipe_step_result *res);

/* Forward only over m micro-batches: loss sum and count; with probs (m * B *
 * T * V floats) also the probabilities. */
st_status st_pipe_forward(st_pipe *p, const int32_t *tokens, const int32_t *targets,
                          const int32_t *pos, double *sum, long *count, float *probs);

/* Decoding one sequence through every stage (see st_stage_decode). */
st_status st_pipe_decode(st_pipe *p, int tok, int pos, float *logits);
/* One token for each of n sequences (tok[i] at pos[i]; logits n x V): the
 * sequences flow through the stages one after the other, like micro-batches,
 * so that every stage works on a different sequence at once. */
st_status st_pipe_decode_batch(st_pipe *p, int n, const int *tok, const int *pos, float *logits);
/* Several tokens of each of n sequences in one pass (a prompt read at once,
 * prefill): count[i] tokens (0 to the shape's prefill; 0 leaves sequence i
 * and its logits alone) of tok[i] from position pos[i]; logits n x V, each
 * sequence's last token's. Chunks of a long prompt are passes one after
 * another at increasing positions. */
st_status st_pipe_prefill_batch(st_pipe *p, int n, const int *const *tok, const int *count,
                                const int *pos, float *logits);
/* With replicas, replica r's share of st_pipe_prefill_batch alone, on the calling thread:
 * its n (at most its share) sequences, numbered from 0 (the group's
 * sequence r * share + i is its i). Each replica may be called from a
 * thread of its own at the same time as the others. */
st_status st_pipe_replica_prefill_batch(st_pipe *p, size_t r, int n, const int *const *tok,
                                        const int *count, const int *pos, float *logits);

/* Decoding under mpirun (one pipeline over the ranks, no replicas): the
 * pipeline's first process leads (its calls above share each call's passes
 * with the others and get the logits back); every other process calls
 * st_pipe_decode_follow, which runs its stages' part of each call until
 * the leader calls st_pipe_decode_end. */
st_status st_pipe_decode_follow(st_pipe *p);
st_status st_pipe_decode_end(st_pipe *p);

/* Decoding that keeps every stage busy across steps: `groups` groups of
 * sequences take turns, each pass of a group flowing through the stages
 * like a micro-batch, and a group's next pass starts on the first stage as
 * soon as its last one's logits were taken, while the later stages still
 * work on the other groups. The caller's callbacks choose the rows and take
 * the logits:
 *   next: on the first stage's thread, group g's next pass (rows as
 *         st_stage_rows, the sequence of each output row in out_seq[]);
 *         called for g only after `done` for g's previous pass; n = 0: the
 *         group has nothing more. The arrays stay valid until `done` for it.
 *   done: on the last stage's thread, the logits [n_out, V] of g's pass.
 * The run ends when every group has said n = 0, or at a failure (then
 * returned). One process, no replicas. */
typedef struct st_pipe_feed {
    st_status (*next)(void *ctx, int g, st_stage_rows *rows, const int **out_seq);
    st_status (*done)(void *ctx, int g, const float *logits, int n_out);
    void *ctx;
    int groups;
} st_pipe_feed;
st_status st_pipe_decode_stream(st_pipe *p, const st_pipe_feed *f);
/* Whether st_pipe_decode_stream runs here (one process, no replicas). */
bool st_pipe_can_stream(const st_pipe *p);

/* Seconds each stage spent waiting on its links in the last step. */
double st_pipe_wait_s(const st_pipe *p, size_t s);

#ifdef __cplusplus
}
#endif

#endif
