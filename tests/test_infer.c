/*
 * test_infer.c - the inference session (strata/infer.h) on small GPT-2 and
 * Llama models with drawn weights: continuous batching gives each sequence
 * the tokens it gets alone (sequences added, ended and replaced between
 * steps, prompts read in chunks of any size, the context sliding), seeds
 * repeat, a split over two devices gives the same tokens as one, and bad
 * requests are refused by name. Tokens are compared exactly: on CPU
 * devices a row's arithmetic does not depend on the other rows of a pass.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "tests/common.h"
#include "strata/infer.h"

static test_devices td;

static st_model_config model(st_family family)
{
    st_model_config c = {.family = family, .vocab_size = 97, .n_positions = 48, .n_embd = 32,
                         .n_layer = 3, .n_head = 4, .n_kv_head = family == ST_FAMILY_LLAMA ? 2 : 4,
                         .n_inner = 64, .norm_eps = 1e-5f};
    st_model_config_complete(&c);
    return c;
}

static st_infer *open_as(const st_model_config *c, size_t n_devs, int seqs, int ctx, int prefill,
                         const char *parallel)
{
    st_infer_options o = {.max_seqs = seqs, .ctx = ctx, .prefill = prefill, .config = c,
                          .init_seed = 7, .quiet = true, .keep_all_devices = n_devs > 1,
                          .parallel = parallel};
    st_infer *in = NULL;
    assert_ok(st_infer_open(NULL, td.dev, n_devs, &o, &in));
    return in;
}

static st_infer *open_on(const st_model_config *c, size_t n_devs, int seqs, int ctx, int prefill)
{
    return open_as(c, n_devs, seqs, ctx, prefill, n_devs > 1 ? "pipeline" : NULL);
}

static st_infer_request request(const int32_t *prompt, size_t n, long max_tokens, double temp,
                                uint64_t seed)
{
    return (st_infer_request){.prompt = prompt, .n_prompt = n, .max_tokens = max_tokens,
                              .sampling = {.temperature = temp, .top_p = 1, .repeat_penalty = 1},
                              .seed = seed, .eos = -1, .slide = true};
}

/* The whole text of one sequence run alone in a session of its own. */
static long alone(const st_model_config *c, int ctx, int prefill, const st_infer_request *r,
                  int32_t *out)
{
    st_infer *in = open_on(c, 1, 1, ctx, prefill);
    int id;
    assert_ok(st_infer_add(in, r, &id));
    while (st_infer_active(in) > 0)
        assert_ok(st_infer_step(in));
    st_infer_info info;
    assert_ok(st_infer_get(in, id, &info));
    memcpy(out, info.tokens, (size_t)info.n_tokens * sizeof *out);
    long n = info.n_tokens;
    st_infer_close(in);
    return n;
}

static void prompt_of(int32_t *p, size_t n, int seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (int32_t)((i * 31 + (size_t)seed * 17 + 5) % 97);
}

static void batching_equals_alone(void **state)
{
    (void)state;
    for (int f = 0; f < 2; f++) {
        st_model_config c = model(f ? ST_FAMILY_LLAMA : ST_FAMILY_GPT2);
        int32_t pa[20], pb[7], pc[30], pd[3];
        prompt_of(pa, 20, 1), prompt_of(pb, 7, 2), prompt_of(pc, 30, 3), prompt_of(pd, 3, 4);
        st_infer_request ra = request(pa, 20, 25, 0, 1), rb = request(pb, 7, 40, 0.9, 11),
                         rc = request(pc, 30, 30, 0, 3), rd = request(pd, 3, 12, 1.0, 4);
        int32_t want[4][200], got[200];
        long nw[4];
        nw[0] = alone(&c, 48, 8, &ra, want[0]);
        nw[1] = alone(&c, 48, 8, &rb, want[1]);
        nw[2] = alone(&c, 48, 8, &rc, want[2]);
        nw[3] = alone(&c, 48, 8, &rd, want[3]);
        assert_int_equal(nw[0], 45);
        assert_int_equal(nw[2], 60); /* slid: the text is longer than the context */
        /* The same in one session of 3 slots: b joins after 2 steps, c
         * after 4 (its prompt read in chunks beside the others' decoding),
         * b is cancelled after 10 and d takes its slot. */
        st_infer *in = open_on(&c, 1, 3, 48, 8);
        int a, b = -1, cc = -1, d = -1;
        assert_ok(st_infer_add(in, &ra, &a));
        for (int step = 0; st_infer_active(in) > 0 || d < 0; step++) {
            if (step == 2)
                assert_ok(st_infer_add(in, &rb, &b));
            if (step == 4)
                assert_ok(st_infer_add(in, &rc, &cc));
            if (step == 10) {
                /* every slot taken: the next is refused */
                int x;
                assert_int_equal(st_infer_add(in, &rd, &x), ST_ERR_BUSY);
                assert_ok(st_infer_end(in, b, ST_FINISH_CANCEL));
                st_infer_info info;
                assert_ok(st_infer_get(in, b, &info));
                assert_int_equal(info.finish, ST_FINISH_CANCEL);
                /* what b had so far is the start of its text alone */
                assert_memory_equal(info.tokens, want[1], (size_t)info.n_tokens * sizeof *got);
                st_infer_release(in, b);
                assert_ok(st_infer_add(in, &rd, &d));
            }
            assert_ok(st_infer_step(in));
        }
        int ids[3] = {a, cc, d}, which[3] = {0, 2, 3};
        for (int k = 0; k < 3; k++) {
            st_infer_info info;
            assert_ok(st_infer_get(in, ids[k], &info));
            assert_int_equal(info.n_tokens, nw[which[k]]);
            assert_memory_equal(info.tokens, want[which[k]], (size_t)info.n_tokens * sizeof *got);
            assert_int_equal(info.finish, ST_FINISH_LENGTH);
        }
        st_infer_info info;
        assert_ok(st_infer_get(in, cc, &info));
        assert_true(info.slides > 0);
        st_infer_close(in);
        /* prompts read token by token, or in passes of any size: the same tokens */
        for (int prefill = 1; prefill <= 32; prefill *= 4) {
            long n = alone(&c, 48, prefill, &rc, got);
            assert_int_equal(n, nw[2]);
            assert_memory_equal(got, want[2], (size_t)n * sizeof *got);
        }
    }
}

static void seeds_repeat(void **state)
{
    (void)state;
    st_model_config c = model(ST_FAMILY_LLAMA);
    int32_t p[5], a[64], b[64], x[64];
    prompt_of(p, 5, 9);
    st_infer_request r = request(p, 5, 30, 1.5, 42), other = request(p, 5, 30, 1.5, 43);
    long na = alone(&c, 48, 8, &r, a), nb = alone(&c, 48, 8, &r, b);
    long nx = alone(&c, 48, 8, &other, x);
    assert_int_equal(na, nb);
    assert_memory_equal(a, b, (size_t)na * sizeof *a);
    assert_int_equal(na, nx);
    assert_true(memcmp(a, x, (size_t)na * sizeof *a) != 0);
}

/* The model in two stages on two devices: the same tokens as one device. */
static void two_stages_equal_one(void **state)
{
    (void)state;
    if (td.n < 2) {
        fprintf(stderr, "(one device: the two-stage check runs in test_infer-2dev)\n");
        return;
    }
    for (int f = 0; f < 2; f++) {
        st_model_config c = model(f ? ST_FAMILY_LLAMA : ST_FAMILY_GPT2);
        int32_t p[4][12];
        int32_t want[4][64];
        long nw[4];
        st_infer_request r[4];
        for (int k = 0; k < 4; k++) {
            prompt_of(p[k], 12, 20 + k);
            r[k] = request(p[k], (size_t)(3 + 3 * k), 20, k % 2 ? 0.8 : 0, (uint64_t)k);
            nw[k] = alone(&c, 48, 8, &r[k], want[k]);
        }
        st_infer *in = open_on(&c, 2, 4, 48, 8);
        assert_int_equal(st_infer_plan(in)->n_stages, 2);
        int id[4];
        for (int k = 0; k < 4; k++)
            assert_ok(st_infer_add(in, &r[k], &id[k]));
        while (st_infer_active(in) > 0)
            assert_ok(st_infer_step(in));
        for (int k = 0; k < 4; k++) {
            st_infer_info info;
            assert_ok(st_infer_get(in, id[k], &info));
            assert_int_equal(info.n_tokens, nw[k]);
            assert_memory_equal(info.tokens, want[k], (size_t)nw[k] * sizeof(int32_t));
        }
        st_infer_close(in);
    }
}

typedef struct counter {
    st_infer *in;
    int calls[8];
    int stop_id, stop_after;
} counter;

static void on_token(void *ctx, int id)
{
    counter *c = ctx;
    c->calls[id]++;
    st_infer_info info;
    assert_ok(st_infer_get(c->in, id, &info));
    assert_int_equal(info.n_generated, c->calls[id]);
    if (id == c->stop_id && c->calls[id] == c->stop_after)
        assert_ok(st_infer_end(c->in, id, ST_FINISH_STOP));
}

/* st_infer_run (the groups streamed through the stages: on one device or
 * two) gives the tokens stepping gives, calls back once per token, and a
 * sequence ended from the callback stops there. */
static void run_equals_steps(void **state)
{
    (void)state;
    for (size_t devs = 1; devs <= td.n && devs <= 2; devs++)
        for (int f = 0; f < 2; f++) {
            st_model_config c = model(f ? ST_FAMILY_LLAMA : ST_FAMILY_GPT2);
            int32_t p[5][40], want[5][128];
            long nw[5];
            st_infer_request r[5];
            for (int k = 0; k < 5; k++) {
                prompt_of(p[k], 40, 30 + k);
                r[k] = request(p[k], (size_t)(1 + 9 * k), 15 + 7 * k, k % 2 ? 0.7 : 0,
                               (uint64_t)k);
                nw[k] = alone(&c, 48, 8, &r[k], want[k]);
            }
            st_infer *in = open_on(&c, devs, 5, 48, 8);
            int id[5];
            for (int k = 0; k < 5; k++)
                assert_ok(st_infer_add(in, &r[k], &id[k]));
            counter cnt = {.in = in, .stop_id = id[2], .stop_after = 4};
            assert_ok(st_infer_run(in, on_token, &cnt));
            assert_int_equal(st_infer_active(in), 0);
            for (int k = 0; k < 5; k++) {
                st_infer_info info;
                assert_ok(st_infer_get(in, id[k], &info));
                long n = k == 2 ? (long)r[k].n_prompt + 4 : nw[k];
                assert_int_equal(info.n_tokens, n);
                assert_memory_equal(info.tokens, want[k], (size_t)n * sizeof(int32_t));
                assert_int_equal(info.finish, k == 2 ? ST_FINISH_STOP : ST_FINISH_LENGTH);
                assert_int_equal(cnt.calls[id[k]], info.n_generated);
            }
            st_infer_close(in);
        }
}

/* A stage that fails in the middle of st_infer_run (the first stage, or
 * the second of two on two devices): the run returns the failure instead
 * of waiting, and every sequence still running ends with ST_FINISH_ERROR. */
static void failure_mid_run_ends_it(void **state)
{
    (void)state;
    st_model_config c = model(ST_FAMILY_LLAMA);
    int32_t p[12];
    prompt_of(p, 12, 50);
    for (size_t devs = 1; devs <= td.n && devs <= 2; devs++) {
        setenv("STRATA_TEST_FAIL_STAGE", devs == 1 ? "0:5" : "1:5", 1);
        st_infer *in = open_on(&c, devs, 3, 48, 8);
        unsetenv("STRATA_TEST_FAIL_STAGE");
        int id[3];
        for (int k = 0; k < 3; k++) {
            st_infer_request r = request(p, (size_t)(2 + k), 30, 0, (uint64_t)k);
            assert_ok(st_infer_add(in, &r, &id[k]));
        }
        assert_int_equal(st_infer_run(in, NULL, NULL), ST_ERR_CL);
        assert_contains(st_last_error(), "injected failure");
        assert_int_equal(st_infer_active(in), 0);
        for (int k = 0; k < 3; k++) {
            st_infer_info info;
            assert_ok(st_infer_get(in, id[k], &info));
            assert_int_equal(info.finish, ST_FINISH_ERROR);
            assert_true(info.n_generated < 30);
        }
        st_infer_close(in);
    }
    st_error_clear();
}

/* Two replicas (the model whole on each of two devices): sequences are
 * spread over them (st_infer_add fills the emptier), stepping and st_infer_run_while
 * (each replica stepping on its own thread, requests joining its group
 * between its passes) give each sequence the tokens it gets alone, and a
 * replica that fails ends the run for both without a hang. */
typedef struct joiner {
    st_infer *in;
    st_infer_request *r;
    int n, next, id[8], calls[8];
    int passes[2];
    pthread_mutex_t mu;
} joiner;

static bool join_between(void *ctx, int g, int G)
{
    joiner *j = ctx;
    assert_int_equal(G, 2);
    pthread_mutex_lock(&j->mu);
    j->passes[g]++;
    /* one newcomer into this replica's group every third of its passes */
    if (j->next < j->n && j->passes[g] % 3 == 0) {
        int id;
        assert_ok(st_infer_add_group(j->in, &j->r[j->next], g, G, &id));
        assert_int_equal(id % 2, g);
        j->id[j->next++] = id;
    }
    bool more = j->next < j->n || st_infer_active(j->in) > 0;
    pthread_mutex_unlock(&j->mu);
    return more;
}

static void join_token(void *ctx, int id)
{
    joiner *j = ctx;
    pthread_mutex_lock(&j->mu);
    j->calls[id]++;
    pthread_mutex_unlock(&j->mu);
}

static void replicas_equal_alone(void **state)
{
    (void)state;
    if (td.n < 2) {
        fprintf(stderr, "(one device: the replica check runs in test_infer-2dev)\n");
        return;
    }
    st_model_config c = model(ST_FAMILY_LLAMA);
    enum { N = 7 };
    int32_t p[N][40], want[N][128];
    long nw[N];
    st_infer_request r[N];
    for (int k = 0; k < N; k++) {
        prompt_of(p[k], 40, 60 + k);
        r[k] = request(p[k], (size_t)(2 + 5 * k), 10 + 3 * k, k % 2 ? 0.9 : 0, (uint64_t)k);
        nw[k] = alone(&c, 48, 8, &r[k], want[k]);
    }
    /* stepping: five sequences in six slots of two replicas */
    st_infer *in = open_as(&c, 2, 5, 48, 8, "data");
    assert_int_equal(st_plan_replicas(st_infer_plan(in)), 2);
    assert_int_equal(st_infer_groups(in), 2);
    int id[N], per[2] = {0, 0};
    for (int k = 0; k < 5; k++) {
        assert_ok(st_infer_add(in, &r[k], &id[k]));
        per[id[k] % 2]++;
    }
    assert_int_equal(per[0], 3); /* the emptier replica each time */
    assert_int_equal(per[1], 2);
    while (st_infer_active(in) > 0)
        assert_ok(st_infer_step(in));
    for (int k = 0; k < 5; k++) {
        st_infer_info info;
        assert_ok(st_infer_get(in, id[k], &info));
        assert_int_equal(info.n_tokens, nw[k]);
        assert_memory_equal(info.tokens, want[k], (size_t)nw[k] * sizeof(int32_t));
        st_infer_release(in, id[k]);
    }
    st_infer_close(in);

    /* a run: two to start with, the others joining between passes */
    in = open_as(&c, 2, 8, 48, 8, "data");
    joiner j = {.in = in, .r = r, .n = N, .next = 2};
    pthread_mutex_init(&j.mu, NULL);
    assert_ok(st_infer_add_group(in, &r[0], 0, 2, &j.id[0]));
    assert_ok(st_infer_add_group(in, &r[1], 1, 2, &j.id[1]));
    while (j.next < N || st_infer_active(in) > 0)
        assert_ok(st_infer_run_while(in, join_token, join_between, &j));
    pthread_mutex_destroy(&j.mu);
    assert_true(j.passes[0] > 3 && j.passes[1] > 3);
    for (int k = 0; k < N; k++) {
        st_infer_info info;
        assert_ok(st_infer_get(in, j.id[k], &info));
        assert_int_equal(info.n_tokens, nw[k]);
        assert_memory_equal(info.tokens, want[k], (size_t)nw[k] * sizeof(int32_t));
        assert_int_equal(j.calls[j.id[k]], info.n_generated);
    }
    st_infer_close(in);

    /* replica 0's stage fails at its fifth pass: the run returns the
     * failure, every sequence of both replicas ends */
    setenv("STRATA_TEST_FAIL_STAGE", "0:5", 1);
    in = open_as(&c, 2, 4, 48, 8, "data");
    unsetenv("STRATA_TEST_FAIL_STAGE");
    for (int k = 0; k < 4; k++)
        assert_ok(st_infer_add(in, &r[k], &id[k]));
    assert_int_equal(st_infer_run(in, NULL, NULL), ST_ERR_CL);
    assert_contains(st_last_error(), "injected failure");
    assert_int_equal(st_infer_active(in), 0);
    for (int k = 0; k < 4; k++) {
        st_infer_info info;
        assert_ok(st_infer_get(in, id[k], &info));
        assert_true(info.finish == ST_FINISH_ERROR || info.n_generated == r[k].max_tokens);
    }
    st_infer_close(in);
    st_error_clear();
}

/* Prompts being read share a pass's budget oldest first, whatever their
 * slots: a prompt added later into a lower slot waits for the older one
 * (in slot order it went first, and a long prompt could wait a minute).
 * Stepping and st_infer_run alike. */
static bool stop_after_one(void *ctx, int g, int G)
{
    (void)g;
    (void)G;
    return (*(int *)ctx)++ == 0;
}

static void readers_are_served_oldest_first(void **state)
{
    (void)state;
    st_model_config c = model(ST_FAMILY_LLAMA);
    int32_t p[30];
    prompt_of(p, 30, 70);
    for (int run = 0; run < 2; run++) {
        st_infer *in = open_on(&c, 1, 3, 48, 4);
        st_infer_request x = request(p, 2, 5, 0, 1), old = request(p, 20, 5, 0, 2);
        int ix, io, inew;
        assert_ok(st_infer_add(in, &x, &ix));   /* slot 0 */
        assert_ok(st_infer_add(in, &old, &io)); /* slot 1: the older prompt */
        st_infer_release(in, ix);
        assert_ok(st_infer_add(in, &old, &inew)); /* slot 0 again: a newer prompt */
        assert_int_equal(inew, 0);
        assert_int_equal(io, 1);
        if (run == 0) {
            assert_ok(st_infer_step(in));
        } else {
            int calls = 0;
            assert_ok(st_infer_run_while(in, NULL, stop_after_one, &calls));
        }
        st_infer_info a, b;
        assert_ok(st_infer_get(in, io, &a));
        assert_ok(st_infer_get(in, inew, &b));
        assert_int_equal(a.prompt_left, 16); /* the budget of 4 went to the older */
        assert_int_equal(b.prompt_left, 20);
        st_infer_close(in);
    }
}

static void bad_requests_are_refused(void **state)
{
    (void)state;
    st_model_config c = model(ST_FAMILY_GPT2);
    st_infer *in = open_on(&c, 1, 2, 16, 4);
    int32_t p[20] = {0}, bad[2] = {5, 97};
    int id;
    st_infer_request r = request(p, 0, 5, 0, 0);
    assert_int_equal(st_infer_add(in, &r, &id), ST_ERR_INVALID);
    assert_contains(st_last_error(), "no tokens");
    r = request(p, 17, 5, 0, 0);
    assert_int_equal(st_infer_add(in, &r, &id), ST_ERR_INVALID);
    assert_contains(st_last_error(), "the context holds 16");
    r = request(bad, 2, 5, 0, 0);
    assert_int_equal(st_infer_add(in, &r, &id), ST_ERR_INVALID);
    assert_contains(st_last_error(), "token 97");
    /* no slide: a full context ends the text (length) */
    r = request(p, 10, 50, 0, 0);
    r.slide = false;
    assert_ok(st_infer_add(in, &r, &id));
    while (st_infer_active(in) > 0)
        assert_ok(st_infer_step(in));
    st_infer_info info;
    assert_ok(st_infer_get(in, id, &info));
    assert_int_equal(info.finish, ST_FINISH_LENGTH);
    assert_int_equal(info.n_tokens, 17); /* positions 0..15 read, the 17th drawn */
    assert_int_equal(st_infer_get(in, 5, &info), ST_ERR_INVALID);
    st_infer_release(in, id);
    assert_int_equal(st_infer_get(in, id, &info), ST_ERR_INVALID);
    st_infer_close(in);
    st_infer_options o = {.max_seqs = 0, .config = &c};
    assert_int_equal(st_infer_open(NULL, td.dev, 1, &o, &in), ST_ERR_INVALID);
    st_error_clear();
}

static int group_teardown(void **state)
{
    (void)state;
    test_devices_close(&td);
    return 0;
}

int main(void)
{
    test_devices_open_or_skip(&td);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(batching_equals_alone),
        cmocka_unit_test(seeds_repeat),
        cmocka_unit_test(two_stages_equal_one),
        cmocka_unit_test(run_equals_steps),
        cmocka_unit_test(failure_mid_run_ends_it),
        cmocka_unit_test(replicas_equal_alone),
        cmocka_unit_test(readers_are_served_oldest_first),
        cmocka_unit_test(bad_requests_are_refused),
    };
    return cmocka_run_group_tests(tests, NULL, group_teardown);
}
