/*
 * test_pipe.c - a model split over 2, 3 and 4 devices trains like the model
 * on one device (both schedules), decodes the same tokens, and a checkpoint
 * written by one split continues identically in another; the planner's
 * memory for every stage is what the stage allocates, byte for byte. Each
 * test runs for GPT-2, a Llama model (grouped-query attention, an untied
 * head) and a Qwen2 model (q/k/v biases, a tied head).
 *
 * Run with several devices (meson sets POCL_DEVICES to four PoCL devices);
 * with fewer, stages share devices, which exercises the same paths.
 *
 * Bitwise: the global norm adds one sum per layer in layer order, so the split
 * does not change it. An untied model trains bitwise like one device in every
 * split; a tied one bitwise alike in every split of two or more stages.
 * Against one device a tied model differs in the order of one sum (the
 * embedding's gradient: on one device the embedding adds its part to the
 * head's as each micro-batch goes back; split, the two parts are added after
 * the last micro-batch), so there the tolerances are: losses per step within
 * 1e-5 relative; final weights atol 1e-3 per element with a mean |difference|
 * under 1e-5 (Adam turns a gradient of rounding size into a step of about lr,
 * so a few near-zero-gradient weights move apart; the key bias, whose true
 * gradient is zero, is left out as in test_gpt.c).
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "strata/checkpoint.h"
#include "strata/pipe.h"
#include "tests/common.h"

#define STEPS 20
#define MB 4      /* micro-batches */
#define BATCH 8   /* sequences per step */
#define SEQ 8

static test_devices td;
static st_model_desc *desc;
static bool tied; /* the head is the embedding: two copies when split */
static int32_t tokens[STEPS][BATCH * SEQ], targets[STEPS][BATCH * SEQ];

static void make_data(void)
{
    uint64_t s = 99;
    for (int k = 0; k < STEPS; k++)
        for (int i = 0; i < BATCH * SEQ; i++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            tokens[k][i] = (int32_t)((s >> 33) % 64);
            /* a learnable target: the token plus one, some positions without loss */
            targets[k][i] = i % 7 == 3 ? -1 : (tokens[k][i] + 1) % 64;
        }
}

/* Layer ranges for S stages over the model's 6 layers (embedding, 4 blocks, head). */
static void ranges(size_t S, size_t *first, size_t *end)
{
    static const size_t cuts[5][4] = {{0}, {6}, {3, 6}, {1, 4, 6}, {2, 3, 5, 6}};
    for (size_t s = 0; s < S; s++) {
        first[s] = s ? cuts[S][s - 1] : 0;
        end[s] = cuts[S][s];
    }
}

static st_pipe *make_pipe_seqs(size_t S, st_schedule sched, int kv, int seqs)
{
    st_device *devs[4];
    size_t first[4], end[4];
    for (size_t s = 0; s < S; s++)
        devs[s] = td.dev[s % td.n];
    ranges(S, first, end);
    st_run_shape shape = {.batch = BATCH, .seq = SEQ, .micro_batches = MB, .schedule = sched,
                          .training = true, .kv_seq = kv, .kv_seqs = seqs};
    st_plan plan;
    assert_ok(st_plan_layout(desc, &shape, S, first, end, &plan));
    st_pipe *p = NULL;
    assert_ok(st_pipe_create(&plan, desc, devs, NULL, &p));
    return p;
}

static st_pipe *make_pipe(size_t S, st_schedule sched, int kv)
{
    return make_pipe_seqs(S, sched, kv, 1);
}

static void train(st_pipe *p, int from, int to, double *losses)
{
    st_adamw_hparams hp = {3e-3f, 0.9f, 0.95f, 1e-8f, 0.1f};
    for (int k = from; k < to; k++) {
        st_pipe_step_result r;
        /* clip 0.5: clipping is active, so the global norm over stages matters */
        assert_ok(st_pipe_train_step(p, tokens[k], targets[k], NULL, &hp, k + 1, 0.5f, &r));
        losses[k] = r.loss;
    }
}

/* Every parameter by name, in the model's order, from whichever stage owns it. */
static float *weights(st_pipe *p)
{
    float *w = malloc(desc->param_numel * sizeof *w);
    assert_non_null(w);
    size_t off = 0;
    for (size_t l = 0; l < desc->n_layers; l++)
        for (size_t i = 0; i < desc->layers[l].n_params; i++) {
            const st_param_desc *pd = &desc->layers[l].params[i];
            bool found = false;
            for (size_t k = 0; k < st_pipe_n_stages(p) && !found; k++) {
                st_stage *g = st_pipe_stage(p, k);
                long j = st_stage_param_find(g, pd->name);
                if (j >= 0 && !st_stage_param_at(g, (size_t)j)->tied) {
                    assert_ok(st_stage_read(g, ST_STAGE_PARAMS, (size_t)j, w + off));
                    found = true;
                }
            }
            assert_true(found);
            if (strstr(pd->name, "attn.c_attn.bias")) /* GPT-2's key bias: see the file header */
                memset(w + off + desc->cfg.n_embd, 0, desc->cfg.n_embd * sizeof *w);
            off += pd->numel;
        }
    return w;
}

static void compare_weights(const float *a, const float *b, const char *what)
{
    double mean = 0;
    for (size_t i = 0; i < desc->param_numel; i++)
        mean += fabs((double)a[i] - b[i]);
    mean /= (double)desc->param_numel;
    if (!st_compare_f32(a, b, desc->param_numel, 1e-3, 1e-3, NULL) || mean > 1e-5) {
        char buf[2048];
        fail_msg("%s: weights differ (mean |diff| %.3g): %s", what, mean,
                 st_compare_describe(a, b, desc->param_numel, 1e-3, 1e-3, 5, buf, sizeof buf));
    }
}

static void compare_losses(const double *a, const double *b, int from, int to, const char *what)
{
    for (int k = from; k < to; k++)
        if (fabs(a[k] - b[k]) > 1e-5 * fabs(b[k]))
            fail_msg("%s: step %d loss %.9g, one device %.9g", what, k + 1, a[k], b[k]);
}

/* A one-process checkpoint's files and its folder. */
static void remove_checkpoint(const char *dir)
{
    char path[256];
    const char *files[] = {"model.safetensors", "optimizer.safetensors", "config.json"};
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, files[i]);
        unlink(path);
    }
    rmdir(dir);
}

static double ref_losses[STEPS];
static float *ref_weights;

static void split_training_matches_one_device(void **state)
{
    (void)state;
    st_pipe *p = make_pipe(1, ST_SCHED_1F1B, 0);
    assert_ok(st_pipe_init(p, 5));
    train(p, 0, STEPS, ref_losses);
    ref_weights = weights(p);
    st_pipe_destroy(p);
    assert_true(ref_losses[STEPS - 1] < ref_losses[0] * 0.9); /* it learns */
    double split_losses[STEPS]; /* the first split's, which the others repeat bitwise */
    float *split_weights = NULL;
    for (size_t S = 2; S <= 4; S++)
        for (int sc = 0; sc < 2; sc++) {
            st_schedule sched = sc ? ST_SCHED_GPIPE : ST_SCHED_1F1B;
            char what[64];
            snprintf(what, sizeof what, "%zu stages, %s", S, st_schedule_name(sched));
            p = make_pipe(S, sched, 0);
            assert_ok(st_pipe_init(p, 5));
            double losses[STEPS];
            train(p, 0, STEPS, losses);
            compare_losses(losses, ref_losses, 0, STEPS, what);
            float *w = weights(p);
            compare_weights(w, ref_weights, what);
            if (!tied) {
                assert_memory_equal(losses, ref_losses, sizeof losses);
                assert_memory_equal(w, ref_weights, desc->param_numel * sizeof *w);
            } else if (!split_weights) {
                memcpy(split_losses, losses, sizeof losses);
                split_weights = w;
                w = NULL;
            } else {
                assert_memory_equal(losses, split_losses, sizeof losses);
                assert_memory_equal(w, split_weights, desc->param_numel * sizeof *w);
            }
            free(w);
            if (!tied) {
                st_pipe_destroy(p);
                continue;
            }
            /* The two copies of the tied embedding stay equal. */
            st_stage *first = st_pipe_stage(p, 0), *last = st_pipe_stage(p, S - 1);
            const char *emb = desc->layers[0].params[0].name;
            long a = st_stage_param_find(first, emb), b = st_stage_param_find(last, emb);
            assert_true(a >= 0 && b >= 0 && st_stage_param_at(last, (size_t)b)->tied);
            size_t n = st_stage_param_at(first, (size_t)a)->desc->numel;
            float *wa = malloc(n * sizeof *wa), *wb = malloc(n * sizeof *wb);
            assert_ok(st_stage_read(first, ST_STAGE_PARAMS, (size_t)a, wa));
            assert_ok(st_stage_read(last, ST_STAGE_PARAMS, (size_t)b, wb));
            assert_memory_equal(wa, wb, n * sizeof *wa);
            free(wa);
            free(wb);
            st_pipe_destroy(p);
        }
    free(split_weights);
}

/* R replicas of an S-stage pipeline (replica r on devices r*S .. r*S+S-1,
 * shared round-robin when there are fewer), m micro-batches per replica. */
static st_pipe *make_replicas(size_t R, size_t S, int m, int kv, int seqs)
{
    st_device *devs[16];
    size_t first[4], end[4];
    for (size_t i = 0; i < R * S; i++)
        devs[i] = td.dev[i % td.n];
    ranges(S, first, end);
    st_run_shape shape = {.batch = BATCH, .seq = SEQ, .micro_batches = m,
                          .schedule = ST_SCHED_1F1B, .training = true, .kv_seq = kv,
                          .kv_seqs = seqs};
    st_plan plan;
    assert_ok(st_plan_layout(desc, &shape, S, first, end, &plan));
    assert_ok(st_plan_replicate(&plan, R, NULL));
    st_pipe *p = NULL;
    assert_ok(st_pipe_create(&plan, desc, devs, NULL, &p));
    assert_int_equal(st_pipe_n_replicas(p), R);
    return p;
}

/* Every buffer of every stage of replica r equals replica 0's, bit for bit. */
static void replicas_hold_the_same_bits(st_pipe *p, const char *what)
{
    for (size_t r = 1; r < st_pipe_n_replicas(p); r++)
        for (size_t k = 0; k < st_pipe_n_stages(p); k++) {
            st_stage *a = st_pipe_replica_stage(p, 0, k), *b = st_pipe_replica_stage(p, r, k);
            size_t n = st_stage_param_numel(a);
            float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y);
            for (int w = 0; w < 3; w++) {
                st_stage_buf which = w == 0 ? ST_STAGE_PARAMS : w == 1 ? ST_STAGE_ADAM_M
                                                                        : ST_STAGE_ADAM_V;
                assert_ok(st_tensor_read(st_stage_tensor(a, which), 0, n, x));
                assert_ok(st_tensor_read(st_stage_tensor(b, which), 0, n, y));
                if (memcmp(x, y, n * sizeof *x) != 0)
                    fail_msg("%s: replica %zu's stage %zu differs from replica 0's (buffer %d)",
                             what, r, k, w);
            }
            free(x);
            free(y);
        }
}

/* dp:2,pp:2, dp:4 and dp:2 train like one device (the reference of the first
 * test, within its tolerances), the replicas hold the same bits after every
 * step, and two runs of a layout give the same bits. */
static void replicas_train_like_one_device(void **state)
{
    (void)state;
    static const struct {
        size_t R, S;
        int m;
    } layouts[] = {{2, 2, 2}, {4, 1, 1}, {2, 1, 2}};
    for (size_t i = 0; i < sizeof layouts / sizeof layouts[0]; i++) {
        char what[64];
        snprintf(what, sizeof what, "dp:%zu,pp:%zu", layouts[i].R, layouts[i].S);
        double runs[2][STEPS];
        for (int run = 0; run < 2; run++) {
            st_pipe *p = make_replicas(layouts[i].R, layouts[i].S, layouts[i].m, 0, 1);
            assert_ok(st_pipe_init(p, 5));
            replicas_hold_the_same_bits(p, what);
            for (int k = 0; k < STEPS; k++) {
                train(p, k, k + 1, runs[run]);
                if (run == 0 && (k == 0 || k == STEPS - 1))
                    replicas_hold_the_same_bits(p, what);
            }
            compare_losses(runs[run], ref_losses, 0, STEPS, what);
            if (run == 0) {
                float *w = weights(p);
                compare_weights(w, ref_weights, what);
                free(w);
            }
            st_pipe_destroy(p);
        }
        assert_memory_equal(runs[0], runs[1], sizeof runs[0]);
    }
}

/* A checkpoint of dp:2,pp:2 (written from the first replica) loads into one
 * device with the replicas' very bits and continues like them. */
/* From seed 5, 10 steps of a two-stage pipeline (losses into straight[0..9]),
 * then its checkpoint at step 10 into dir. */
static void train_and_save(st_pipe *p, const char *dir, double *straight)
{
    assert_ok(st_pipe_init(p, 5));
    train(p, 0, 10, straight);
    st_stage *stages[2] = {st_pipe_stage(p, 0), st_pipe_stage(p, 1)};
    st_train_state state10 = {.step = 10};
    snprintf(state10.settings, sizeof state10.settings, "{}");
    assert_ok(st_checkpoint_save(dir, stages, 2, &desc->cfg, &state10, 1));
}

static void replica_checkpoint_continues_on_one_device(void **state)
{
    (void)state;
    char dir[] = "/tmp/strata-dp-XXXXXX";
    assert_non_null(mkdtemp(dir));
    st_pipe *dp = make_replicas(2, 2, 2, 0, 1);
    double straight[STEPS];
    train_and_save(dp, dir, straight);
    float *w_dp = weights(dp);
    train(dp, 10, STEPS, straight);
    st_pipe_destroy(dp);

    st_pipe *one = make_pipe(1, ST_SCHED_1F1B, 0);
    st_stage *g = st_pipe_stage(one, 0);
    st_train_state st;
    assert_ok(st_checkpoint_load(dir, &g, 1, &st));
    assert_int_equal(st.step, 10);
    float *w_one = weights(one);
    assert_memory_equal(w_one, w_dp, desc->param_numel * sizeof *w_one);
    double again[STEPS];
    train(one, 10, STEPS, again);
    compare_losses(again, straight, 10, STEPS, "dp:2,pp:2's checkpoint continued on one device");
    /* and back into replicas: every replica gets the checkpoint (st_pipe_replicate) */
    st_pipe *back = make_replicas(2, 1, 1, 0, 1);
    g = st_pipe_stage(back, 0);
    assert_ok(st_checkpoint_load(dir, &g, 1, &st));
    assert_ok(st_pipe_replicate(back));
    replicas_hold_the_same_bits(back, "a checkpoint loaded into dp:2");
    st_pipe_destroy(back);
    free(w_one);
    free(w_dp);
    st_pipe_destroy(one);
    remove_checkpoint(dir);
}

/* Replicas decode their share of the sequences: the same tokens as one device. */
static void replicas_decode_their_share(void **state)
{
    (void)state;
    int V = desc->cfg.vocab_size, n = 3;
    st_pipe *one = make_pipe_seqs(1, ST_SCHED_1F1B, SEQ, n);
    st_pipe *dp = make_replicas(2, 2, 1, SEQ, n);
    assert_ok(st_pipe_init(one, 9));
    assert_ok(st_pipe_init(dp, 9));
    float *a = malloc((size_t)n * V * sizeof *a), *b = malloc((size_t)n * V * sizeof *b);
    int tok[3] = {1, 2, 3}, pos[3] = {0, 0, 0};
    for (int t = 0; t < 4; t++) {
        assert_ok(st_pipe_decode_batch(one, n, tok, pos, a));
        assert_ok(st_pipe_decode_batch(dp, n, tok, pos, b));
        assert_close(b, a, (size_t)n * V, 1e-5, 1e-5);
        for (int q = 0; q < n; q++) {
            tok[q] = (tok[q] * 7 + t) % V;
            pos[q]++;
        }
    }
    /* a forward pass of the whole batch: the same loss */
    double s1, s2;
    long c1, c2;
    assert_ok(st_pipe_forward(one, tokens[0], targets[0], NULL, &s1, &c1, NULL));
    assert_ok(st_pipe_forward(dp, tokens[0], targets[0], NULL, &s2, &c2, NULL));
    assert_int_equal(c1, c2);
    assert_true(fabs(s1 - s2) <= 1e-5 * fabs(s1));
    free(a);
    free(b);
    st_pipe_destroy(one);
    st_pipe_destroy(dp);
}

static void split_decoding_gives_the_same_tokens(void **state)
{
    (void)state;
    st_pipe *one = make_pipe(1, ST_SCHED_1F1B, SEQ), *three = make_pipe_seqs(3, ST_SCHED_1F1B, SEQ, 3);
    assert_ok(st_pipe_init(one, 5));
    assert_ok(st_pipe_init(three, 5));
    double losses[STEPS];
    train(one, 0, 10, losses);
    /* Copy the trained weights into the split model by name. */
    st_stage *src = st_pipe_stage(one, 0);
    for (size_t k = 0; k < 3; k++) {
        st_stage *g = st_pipe_stage(three, k);
        for (size_t i = 0; i < st_stage_n_params(g); i++) {
            const st_stage_param *pp = st_stage_param_at(g, i);
            long j = st_stage_param_find(src, pp->desc->name);
            float *buf = malloc(pp->desc->numel * sizeof *buf);
            assert_ok(st_stage_read(src, ST_STAGE_PARAMS, (size_t)j, buf));
            assert_ok(st_stage_write(g, ST_STAGE_PARAMS, i, buf));
            free(buf);
        }
    }
    int V = desc->cfg.vocab_size, tok_a = 7, tok_b = 7;
    float *la = malloc(V * sizeof *la), *lb = malloc(V * sizeof *lb);
    for (int pos = 0; pos < SEQ; pos++) {
        assert_ok(st_pipe_decode(one, tok_a, pos, la));
        assert_ok(st_pipe_decode(three, tok_b, pos, lb));
        assert_close(lb, la, (size_t)V, 1e-5, 1e-5);
        int ba = 0, bb = 0;
        for (int v = 1; v < V; v++) {
            ba = la[v] > la[ba] ? v : ba;
            bb = lb[v] > lb[bb] ? v : bb;
        }
        assert_int_equal(ba, bb);
        tok_a = ba;
        tok_b = bb;
    }
    /* Three sequences at once through the three stages, against each alone. */
    int toks[3][SEQ], pos3[3];
    float *lbatch = malloc(3 * (size_t)V * sizeof *lbatch);
    for (int q = 0; q < 3; q++)
        for (int t = 0; t < SEQ; t++)
            toks[q][t] = (q * 17 + t * 5) % V;
    float want[3][SEQ][64];
    for (int q = 0; q < 3; q++)
        for (int t = 0; t < SEQ; t++)
            assert_ok(st_pipe_decode(one, toks[q][t], t, want[q][t]));
    for (int t = 0; t < SEQ; t++) {
        int tk[3];
        for (int q = 0; q < 3; q++) {
            tk[q] = toks[q][t];
            pos3[q] = t;
        }
        assert_ok(st_pipe_decode_batch(three, 3, tk, pos3, lbatch));
        for (int q = 0; q < 3; q++)
            assert_close(lbatch + (size_t)q * V, want[q][t], (size_t)V, 1e-5, 1e-5);
    }
    assert_int_equal(st_pipe_decode_batch(three, 4, toks[0], pos3, lbatch), ST_ERR_INVALID);
    free(lbatch);
    free(la);
    free(lb);
    st_pipe_destroy(one);
    st_pipe_destroy(three);
}

static void checkpoint_moves_between_splits(void **state)
{
    (void)state;
    char dir[] = "/tmp/strata-pipe-XXXXXX";
    assert_non_null(mkdtemp(dir));
    /* Two stages: 10 steps, save, 10 more (the uninterrupted run). */
    st_pipe *two = make_pipe(2, ST_SCHED_1F1B, 0);
    double straight[STEPS];
    train_and_save(two, dir, straight);
    train(two, 10, STEPS, straight);
    st_pipe_destroy(two);
    /* Loaded into one and into four stages, the next 10 steps are the same. */
    for (size_t S = 1; S <= 4; S += 3) {
        st_pipe *p = make_pipe(S, ST_SCHED_GPIPE, 0);
        st_stage *stages[4];
        for (size_t k = 0; k < S; k++)
            stages[k] = st_pipe_stage(p, k);
        st_train_state st;
        assert_ok(st_checkpoint_load(dir, stages, S, &st));
        assert_int_equal(st.step, 10);
        double again[STEPS];
        train(p, 10, STEPS, again);
        char what[64];
        snprintf(what, sizeof what, "checkpoint from 2 stages continued on %zu", S);
        compare_losses(again, straight, 10, STEPS, what);
        st_pipe_destroy(p);
    }
    remove_checkpoint(dir);
}

static void bad_layouts_are_refused(void **state)
{
    (void)state;
    st_device *devs[2] = {td.dev[0], td.dev[0]};
    size_t first[2] = {0, 2}, end[2] = {3, 6};
    st_run_shape shape = {.batch = 4, .seq = SEQ, .micro_batches = 2, .training = true};
    st_plan plan;
    assert_int_equal(st_plan_layout(desc, &shape, 2, first, end, &plan), ST_ERR_INVALID);
    assert_contains(st_last_error(), "do not continue the split");
    end[1] = 5;
    first[1] = 3;
    assert_int_equal(st_plan_layout(desc, &shape, 2, first, end, &plan), ST_ERR_INVALID);
    /* A plan edited by hand is checked again when it makes the pipeline. */
    end[1] = 6;
    assert_ok(st_plan_layout(desc, &shape, 2, first, end, &plan));
    plan.stage[1].first = 2;
    st_pipe *p = NULL;
    assert_int_equal(st_pipe_create(&plan, desc, devs, NULL, &p), ST_ERR_INVALID);
    assert_contains(st_last_error(), "do not continue the split");
    plan.stage[1].first = 3;
    plan.shape.micro_batches = 3; /* does not divide the batch */
    assert_int_equal(st_pipe_create(&plan, desc, devs, NULL, &p), ST_ERR_INVALID);
}

/* What the planner predicts for each stage is what the stage allocates:
 * training with both schedules and inference with a KV cache, 1 to 4
 * stages. */
static void planner_memory_is_what_stages_allocate(void **state)
{
    (void)state;
    st_device_profile prof[4];
    for (int i = 0; i < 4; i++)
        prof[i] = (st_device_profile){.gflops = 10, .h2d_gbps = 1, .d2h_gbps = 1,
                                      .mem_bytes = 1ull << 32};
    for (size_t S = 1; S <= 4; S++)
        for (int mode = 0; mode < 3; mode++) {
            bool training = mode < 2;
            st_schedule sched = mode == 1 ? ST_SCHED_GPIPE : ST_SCHED_1F1B;
            int m = training ? MB : 1, kv = training ? 0 : SEQ, seqs = training ? 1 : 3;
            size_t first[4], end[4], cuts[4], devices[4] = {0, 1, 2, 3};
            ranges(S, first, end);
            for (size_t k = 1; k < S; k++)
                cuts[k - 1] = first[k];
            st_plan_input in = {.parallel = {ST_PARALLEL_PIPELINE}, .desc = desc,
                                .shape = {.batch = m * (BATCH / MB), .seq = SEQ,
                                          .micro_batches = m, .schedule = sched,
                                          .training = training, .kv_seq = kv, .kv_seqs = seqs},
                                .n_devices = 4, .devices = prof};
            st_plan plan;
            assert_ok(st_plan_evaluate(&in, devices, S, cuts, &plan));
            st_device *devs[4];
            for (size_t k = 0; k < 4; k++)
                devs[k] = td.dev[k % td.n];
            /* the plan makes the pipeline */
            st_pipe *p = NULL;
            assert_ok(st_pipe_create(&plan, desc, devs, NULL, &p));
            for (size_t k = 0; k < S; k++) {
                uint64_t have = st_stage_bytes(st_pipe_stage(p, k));
                if ((double)have != plan.stage[k].total_bytes)
                    fail_msg("%s, %zu stages, mode %d: stage %zu allocates %llu bytes, the "
                             "planner predicted %.0f",
                             st_family_name(desc->cfg.family), S, mode, k,
                             (unsigned long long)have, plan.stage[k].total_bytes);
            }
            st_pipe_destroy(p);
        }
}

static int group_teardown(void **state)
{
    (void)state;
    free(ref_weights);
    ref_weights = NULL;
    st_model_desc_destroy(desc);
    desc = NULL;
    return 0;
}

/* The three models: 6 layers each (embedding, 4 blocks, head). */
static int setup_model(const st_model_config *cfg)
{
    if (st_model_describe(cfg, &desc) != ST_OK) {
        fprintf(stderr, "describing the model: %s\n", st_last_error());
        return -1;
    }
    tied = desc->cfg.tied;
    return 0;
}

static int setup_gpt2(void **state)
{
    (void)state;
    st_model_config cfg = {.vocab_size = 64, .n_positions = SEQ, .n_embd = 32, .n_layer = 4,
                           .n_head = 2, .n_inner = 128, .norm_eps = 1e-5f};
    return setup_model(&cfg);
}

static int setup_llama(void **state)
{
    (void)state;
    st_model_config cfg = {.family = ST_FAMILY_LLAMA, .vocab_size = 64, .n_positions = SEQ,
                           .n_embd = 32, .n_layer = 4, .n_head = 4, .n_kv_head = 2,
                           .n_inner = 80, .norm_eps = 1e-5f, .rope_theta = 10000.0};
    return setup_model(&cfg);
}

static int setup_qwen2(void **state)
{
    (void)state;
    st_model_config cfg = {.family = ST_FAMILY_LLAMA, .model_type = "qwen2", .vocab_size = 64,
                           .n_positions = SEQ, .n_embd = 32, .n_layer = 4, .n_head = 2,
                           .n_kv_head = 1, .n_inner = 64, .norm_eps = 1e-6f, .tied = true,
                           .attn_bias = true, .rope_theta = 1000000.0};
    return setup_model(&cfg);
}

int main(void)
{
    test_devices_open_or_skip(&td);
    make_data();
    fprintf(stderr, "%zu device(s)\n", td.n);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(split_training_matches_one_device),
        cmocka_unit_test(split_decoding_gives_the_same_tokens),
        cmocka_unit_test(checkpoint_moves_between_splits),
        cmocka_unit_test(replicas_train_like_one_device),
        cmocka_unit_test(replica_checkpoint_continues_on_one_device),
        cmocka_unit_test(replicas_decode_their_share),
        cmocka_unit_test(planner_memory_is_what_stages_allocate),
        cmocka_unit_test(bad_layouts_are_refused),
    };
    int failed = cmocka_run_group_tests_name("gpt2", tests, setup_gpt2, group_teardown);
    failed += cmocka_run_group_tests_name("llama", tests, setup_llama, group_teardown);
    failed += cmocka_run_group_tests_name("qwen2", tests, setup_qwen2, group_teardown);
    test_devices_close(&td);
    return failed;
}
