/*
 * test_plan.c - the planner against a brute-force search over every
 * contiguous partition on synthetic cost tables; fixed splits; memory errors;
 * choosing fewer devices; the split parser.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "strata/plan.h"
#include "tests/common.h"

static uint64_t rng_state = 12345;
static double urand(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng_state >> 11) * 0x1.0p-53;
}

/* A made-up model: n_blocks blocks of random cost and size around a real config. */
static st_model_desc *synthetic(int n_blocks)
{
    st_model_config cfg = {.vocab_size = 256, .n_positions = 16, .n_embd = 64, .n_layer = n_blocks,
                         .n_head = 4, .n_inner = 256, .norm_eps = 1e-5f};
    st_model_desc *d = NULL;
    assert_ok(st_model_describe(&cfg, &d));
    for (size_t l = 0; l < d->n_layers; l++) {
        st_layer_desc *ld = &d->layers[l];
        double f = 0.2 + 2.0 * urand();
        ld->fwd_flops_per_token *= f;
        ld->bwd_flops_per_token *= f;
        ld->param_numel = (size_t)((double)ld->param_numel * (0.5 + urand()));
    }
    return d;
}

static double slowest(const st_plan *p)
{
    double w = 0;
    for (size_t s = 0; s < p->n_stages; s++)
        w = fmax(w, p->stage[s].fwd_ms + p->stage[s].bwd_ms);
    return w;
}

/* Every way to cut n layers into S non-empty ranges, in order. */
static void brute(const st_plan_input *in, size_t S, size_t *cuts, size_t k, size_t from,
                  double *best)
{
    size_t n = in->desc->n_layers;
    if (k == S - 1) {
        size_t devices[ST_PLAN_MAX_STAGES] = {0};
        for (size_t i = 0; i < S; i++)
            devices[i] = i;
        st_plan p;
        assert_ok(st_plan_evaluate(in, devices, S, cuts, &p));
        for (size_t s = 0; s < S; s++)
            if (p.stage[s].total_bytes > (double)in->devices[s].mem_bytes)
                return;
        *best = fmin(*best, slowest(&p));
        return;
    }
    for (size_t c = from; c + (S - 1 - k) <= n - 1 + 1 && c < n; c++) {
        cuts[k] = c;
        brute(in, S, cuts, k + 1, c + 1, best);
    }
}

static void partition_matches_brute_force(void **state)
{
    (void)state;
    int checked = 0, infeasible = 0;
    for (int trial = 0; trial < 200; trial++) {
        int blocks = 1 + (int)(urand() * 7);
        st_model_desc *d = synthetic(blocks);
        size_t S = 1 + (size_t)(urand() * 4);
        if (S > d->n_layers)
            S = d->n_layers;
        st_device_profile prof[4];
        for (size_t i = 0; i < S; i++) {
            snprintf(prof[i].name, sizeof prof[i].name, "dev%zu", i);
            prof[i].gflops = 5 + 50 * urand();
            prof[i].h2d_gbps = 1 + 10 * urand();
            prof[i].d2h_gbps = 1 + 10 * urand();
            /* sometimes tight memory, to exercise the limits */
            prof[i].mem_bytes = (uint64_t)((trial % 3 ? 1e9 : 3e6 + 6e6 * urand()));
        }
        st_plan_input in = {.parallel = {ST_PARALLEL_PIPELINE}, .desc = d, .shape = {.batch = (4) * (4), .seq = 16, .micro_batches = 4, .schedule = trial % 2 ? ST_SCHED_GPIPE : ST_SCHED_1F1B, .training = true}, .n_devices = S, .devices = prof,
                            .split = {.kind = ST_SPLIT_AUTO}, .keep_all_devices = true};
        size_t cuts[ST_PLAN_MAX_STAGES] = {0};
        double want = INFINITY;
        if (S == 1) {
            size_t dev0 = 0;
            st_plan p;
            assert_ok(st_plan_evaluate(&in, &dev0, 1, cuts, &p));
            if (p.stage[0].total_bytes <= (double)prof[0].mem_bytes)
                want = slowest(&p);
        } else {
            brute(&in, S, cuts, 0, 1, &want);
        }
        st_plan got;
        st_status s = st_plan_make(&in, &got);
        if (want == INFINITY) {
            assert_int_equal(s, ST_ERR_INVALID);
            assert_contains(st_last_error(), "does not fit");
            infeasible++;
        } else {
            assert_ok(s);
            assert_int_equal(got.n_stages, S);
            if (fabs(slowest(&got) - want) > 1e-9 * want)
                fail_msg("trial %d: planner's slowest stage %.9g ms, brute force %.9g ms", trial,
                         slowest(&got), want);
            for (size_t i = 0; i < got.n_stages; i++)
                assert_true(got.stage[i].total_bytes <= (double)prof[got.stage[i].device].mem_bytes);
            checked++;
        }
        st_model_desc_destroy(d);
    }
    print_message("brute force: %d plans equal, %d infeasible cases refused\n", checked,
                  infeasible);
    assert_true(checked > 100 && infeasible > 5);
}

static st_model_desc *real_model(int L, int C)
{
    st_model_config cfg = {.vocab_size = 256, .n_positions = 64, .n_embd = C, .n_layer = L,
                         .n_head = 4, .n_inner = 4 * C, .norm_eps = 1e-5f};
    st_model_desc *d = NULL;
    assert_ok(st_model_describe(&cfg, &d));
    return d;
}

static st_device_profile dev(double gflops, double gib)
{
    st_device_profile p = {.gflops = gflops, .h2d_gbps = 5, .d2h_gbps = 5,
                           .mem_bytes = (uint64_t)(gib * 1073741824.0)};
    snprintf(p.name, sizeof p.name, "%.0f GFLOPS", gflops);
    return p;
}

/* The deepest model accepted, over four equal devices: the plan exists, covers every
 * layer once in order, and balances the blocks (the planner's time no longer grows
 * with the cube of the layer count; its speed is in the README, not timed here). */
static void thousands_of_layers(void **state)
{
    (void)state;
    st_model_desc *d = real_model(ST_MODEL_MAX_LAYERS, 16);
    st_device_profile p[4] = {dev(100, 8), dev(100, 8), dev(100, 8), dev(100, 8)};
    st_plan_input in = {.parallel = {ST_PARALLEL_PIPELINE}, .desc = d, .shape = {.batch = (4) * (8), .seq = 16, .micro_batches = 8, .training = true}, .n_devices = 4, .devices = p,
                        .keep_all_devices = true};
    st_plan plan;
    assert_ok(st_plan_make(&in, &plan));
    assert_int_equal(plan.n_stages, 4);
    size_t at = 0;
    for (size_t k = 0; k < 4; k++) {
        assert_int_equal(plan.stage[k].first, at);
        size_t len = plan.stage[k].end - plan.stage[k].first;
        assert_true(len > 900 && len < 1150);
        at = plan.stage[k].end;
    }
    assert_int_equal(at, d->n_layers);
    st_model_desc_destroy(d);
}

static void faster_devices_get_more_layers(void **state)
{
    (void)state;
    st_model_desc *d = real_model(12, 512);
    st_device_profile p[2] = {dev(300, 8), dev(100, 8)};
    st_plan_input in = {.parallel = {ST_PARALLEL_PIPELINE}, .desc = d, .shape = {.batch = (8) * (8), .seq = 64, .micro_batches = 8, .training = true}, .n_devices = 2, .devices = p,
                        .keep_all_devices = true};
    st_plan plan;
    assert_ok(st_plan_make(&in, &plan));
    assert_int_equal(plan.n_stages, 2);
    size_t l0 = plan.stage[0].end - plan.stage[0].first, l1 = plan.stage[1].end - plan.stage[1].first;
    assert_true(l0 >= 2 * l1); /* three times as fast: about three times the layers */
    assert_true(plan.speedup > 1.0);
    assert_true(fabs(plan.bubble - 1.0 / 9.0) < 1e-12);
    st_model_desc_destroy(d);
}

static void fewer_devices_when_faster(void **state)
{
    (void)state;
    /* A tiny model and a very slow link: one device is predicted faster. */
    st_model_desc *d = real_model(2, 32);
    st_device_profile p[2] = {dev(50, 8), dev(50, 8)};
    p[0].h2d_gbps = p[0].d2h_gbps = p[1].h2d_gbps = p[1].d2h_gbps = 0.001;
    st_plan_input in = {.parallel = {ST_PARALLEL_PIPELINE}, .desc = d, .shape = {.batch = (8) * (2), .seq = 64, .micro_batches = 2, .training = true}, .n_devices = 2, .devices = p};
    st_plan plan;
    assert_ok(st_plan_make(&in, &plan));
    assert_int_equal(plan.n_stages, 1);
    assert_contains(plan.note, "1 of 2 devices");
    in.keep_all_devices = true; /* --devices given: obeyed */
    assert_ok(st_plan_make(&in, &plan));
    assert_int_equal(plan.n_stages, 2);
    st_model_desc_destroy(d);
}

static void memory_decides_the_split(void **state)
{
    (void)state;
    st_model_desc *d = real_model(8, 512);
    st_device_profile p[2] = {dev(100, 8), dev(100, 8)};
    st_plan_input in = {.parallel = {ST_PARALLEL_PIPELINE}, .desc = d, .shape = {.batch = (8) * (4), .seq = 64, .micro_batches = 4, .training = true}, .n_devices = 2, .devices = p, .keep_all_devices = true};
    st_plan plan;
    assert_ok(st_plan_make(&in, &plan));
    double total = plan.stage[0].total_bytes + plan.stage[1].total_bytes;
    /* Device 0 can hold a quarter of the model: the split must follow. */
    p[0].mem_bytes = (uint64_t)(total * 0.3);
    assert_ok(st_plan_make(&in, &plan));
    assert_true(plan.stage[0].total_bytes <= (double)p[0].mem_bytes);
    assert_true(plan.stage[0].end - plan.stage[0].first < plan.stage[1].end - plan.stage[1].first);
    /* Neither can: a clear error with the amounts. */
    p[0].mem_bytes = p[1].mem_bytes = (uint64_t)(total * 0.2);
    assert_int_equal(st_plan_make(&in, &plan), ST_ERR_INVALID);
    assert_contains(st_last_error(), "does not fit the 2 device(s)");
    assert_contains(st_last_error(), "MiB missing");
    /* A fixed split that does not fit names the stage and the shortfall. */
    p[0].mem_bytes = (uint64_t)(total * 0.3);
    p[1].mem_bytes = (uint64_t)(total * 2);
    assert_ok(st_split_parse("uniform", &in.split));
    assert_int_equal(st_plan_make(&in, &plan), ST_ERR_INVALID);
    assert_contains(st_last_error(), "stage 0 (layers 0-4)");
    assert_contains(st_last_error(), "missing");
    st_model_desc_destroy(d);
}

static void fixed_splits(void **state)
{
    (void)state;
    st_model_desc *d = real_model(12, 128);
    st_device_profile p[3] = {dev(100, 8), dev(100, 8), dev(100, 8)};
    st_plan_input in = {.parallel = {ST_PARALLEL_PIPELINE}, .desc = d, .shape = {.batch = (4) * (8), .seq = 32, .micro_batches = 8, .training = true}, .n_devices = 2, .devices = p};
    st_plan plan;
    assert_ok(st_split_parse("layers:0-3,4-11", &in.split));
    assert_ok(st_plan_make(&in, &plan));
    assert_int_equal(plan.stage[0].first, 0);
    assert_int_equal(plan.stage[0].end, 5); /* embedding + blocks 0-3 */
    assert_int_equal(plan.stage[1].end, 14); /* blocks 4-11 + head */
    assert_ok(st_split_parse("ratio:3,1", &in.split));
    assert_ok(st_plan_make(&in, &plan));
    assert_int_equal(plan.stage[0].end, 10); /* 9 blocks of 12 */
    assert_ok(st_split_parse("uniform", &in.split));
    in.n_devices = 3;
    assert_ok(st_plan_make(&in, &plan));
    assert_int_equal(plan.stage[0].end, 5);
    assert_int_equal(plan.stage[1].end, 9);
    /* Ranges with a gap, an overlap, the wrong end, the wrong count. */
    in.n_devices = 2;
    const char *bad[] = {"layers:0-3,5-11", "layers:0-5,5-11", "layers:0-3,4-10", "layers:0-11",
                         "ratio:1,1,1"};
    const char *why[] = {"starts at block 5, expected 4", "starts at block 5, expected 6",
                         "end at block 10", "names 1 devices but 2", "names 3 devices"};
    for (size_t i = 0; i < 5; i++) {
        assert_ok(st_split_parse(bad[i], &in.split));
        assert_int_equal(st_plan_make(&in, &plan), ST_ERR_INVALID);
        assert_contains(st_last_error(), why[i]);
    }
    assert_int_equal(st_split_parse("ratio:1,0", &in.split), ST_ERR_INVALID);
    assert_int_equal(st_split_parse("layers:3-1", &in.split), ST_ERR_INVALID);
    assert_int_equal(st_split_parse("even", &in.split), ST_ERR_INVALID);
    assert_contains(st_last_error(), "use auto, uniform");
    st_schedule sc;
    assert_ok(st_schedule_parse("gpipe", &sc));
    assert_int_equal(sc, ST_SCHED_GPIPE);
    assert_int_equal(st_schedule_parse("zb", &sc), ST_ERR_INVALID);
    st_model_desc_destroy(d);
}

static void one_f_one_b_keeps_fewer_activations(void **state)
{
    (void)state;
    st_model_desc *d = real_model(8, 256);
    st_device_profile p[4] = {dev(100, 64), dev(100, 64), dev(100, 64), dev(100, 64)};
    st_plan_input in = {.parallel = {ST_PARALLEL_PIPELINE}, .desc = d, .shape = {.batch = (4) * (16), .seq = 64, .micro_batches = 16, .training = true}, .n_devices = 4, .devices = p,
                        .split = {.kind = ST_SPLIT_UNIFORM}};
    st_plan g, f;
    in.shape.schedule = ST_SCHED_GPIPE;
    assert_ok(st_plan_make(&in, &g));
    in.shape.schedule = ST_SCHED_1F1B;
    assert_ok(st_plan_make(&in, &f));
    for (size_t s = 0; s < 4; s++) {
        assert_int_equal(g.stage[s].in_flight, 16);
        assert_int_equal(f.stage[s].in_flight, (int)(4 - s));
        assert_true(f.stage[s].act_bytes < g.stage[s].act_bytes);
    }
    assert_true(fabs(f.step_ms - g.step_ms) < 1e-9);
    st_model_desc_destroy(d);
}

/* Two devices on the same cores (PoCL pthread devices share one thread pool:
 * each gets half the rate while the other runs): one device is chosen, and
 * both given explicitly are predicted no faster than one. Devices that do
 * not slow each other (PoCL basic devices, a core each) still split. */
static void shared_hardware_is_planned_as_shared(void **state)
{
    (void)state;
    st_model_desc *d = real_model(8, 256);
    st_device_profile p[2] = {dev(100, 8), dev(100, 8)};
    st_plan_input in = {.parallel = {ST_PARALLEL_PIPELINE}, .desc = d, .shape = {.batch = (4) * (8), .seq = 64, .micro_batches = 8, .training = true}, .n_devices = 2, .devices = p};
    st_plan plan;
    assert_ok(st_plan_make(&in, &plan));
    assert_int_equal(plan.n_stages, 2); /* separate hardware: the split pays */
    double apart = plan.speedup;
    assert_true(apart > 1.4);
    for (int i = 0; i < 2; i++) {
        snprintf(p[i].hardware, sizeof p[i].hardware, "host CPU");
        p[i].shared_gflops = 50;
    }
    assert_ok(st_plan_make(&in, &plan));
    assert_int_equal(plan.n_stages, 1);
    assert_contains(plan.note, "1 of 2 devices");
    in.keep_all_devices = true;
    assert_ok(st_plan_make(&in, &plan));
    assert_int_equal(plan.n_stages, 2);
    assert_true(plan.speedup < 1.0);
    assert_true(plan.stage[0].fwd_ms > 1.5 * plan.stage[0].xfer_ms); /* compute at 50 */
    /* Basic devices: the rate holds when both run, so the split pays again. */
    p[0].shared_gflops = p[1].shared_gflops = 98;
    in.keep_all_devices = false;
    assert_ok(st_plan_make(&in, &plan));
    assert_int_equal(plan.n_stages, 2);
    assert_true(fabs(plan.speedup - apart) < 0.05 * apart);
    /* A shared rate without the same hardware changes nothing. */
    p[0].shared_gflops = p[1].shared_gflops = 10;
    snprintf(p[1].hardware, sizeof p[1].hardware, "PCI 0000:65:00.0");
    assert_ok(st_plan_make(&in, &plan));
    assert_true(fabs(plan.speedup - apart) < 1e-9);
    st_model_desc_destroy(d);
}

/* micro_batches 0: one device gets one micro-batch; a split gets more (its
 * bubble shrinks), never below 256 tokens each while those fit; memory can
 * force more on one device. The plan says what it chose. */
static void micro_batches_chosen(void **state)
{
    (void)state;
    st_model_desc *d = real_model(8, 256);
    st_device_profile p[2] = {dev(100, 8), dev(100, 8)};
    st_plan_input in = {.parallel = {ST_PARALLEL_PIPELINE}, .desc = d, .shape = {.batch = 32, .seq = 64, .training = true}, .n_devices = 1,
                        .devices = p};
    st_plan plan;
    assert_ok(st_plan_make(&in, &plan));
    assert_int_equal(plan.shape.micro_batches, 1);
    assert_int_equal(st_run_micro_batch(&plan.shape), 32);
    in.n_devices = 2;
    in.keep_all_devices = true;
    assert_ok(st_plan_make(&in, &plan));
    assert_int_equal(plan.n_stages, 2);
    assert_true(plan.shape.micro_batches > 1);
    assert_int_equal(st_run_micro_batch(&plan.shape) * plan.shape.micro_batches, 32);
    assert_true(st_run_micro_batch(&plan.shape) * 64 >= 256);
    /* The same as planning that count by hand. */
    st_plan_input fixed = in;
    fixed.shape.micro_batches = plan.shape.micro_batches;
    st_plan same;
    assert_ok(st_plan_make(&fixed, &same));
    assert_true(fabs(same.step_ms - plan.step_ms) < 1e-9);
    /* And no other count of at least 256 tokens is predicted more than 3% faster. */
    for (int m = 1; m <= 8; m *= 2) {
        fixed.shape.micro_batches = m;
        assert_ok(st_plan_make(&fixed, &same));
        assert_true(same.step_ms >= plan.step_ms * 0.97 - 1e-9);
    }
    /* One device that cannot hold the whole batch's activations: more micro-batches. */
    in.n_devices = 1;
    in.keep_all_devices = false;
    fixed = in;
    fixed.shape.micro_batches = 1;
    assert_ok(st_plan_make(&fixed, &same));
    p[0].mem_bytes = (uint64_t)(same.stage[0].param_bytes + 0.5 * same.stage[0].act_bytes);
    assert_ok(st_plan_make(&in, &plan));
    assert_true(plan.shape.micro_batches > 1);
    assert_true(plan.stage[0].total_bytes <= (double)p[0].mem_bytes);
    in.shape.batch = 0;
    assert_int_equal(st_plan_make(&in, &plan), ST_ERR_INVALID);
    st_model_desc_destroy(d);
}

/* The layouts' table: one one-device reference for every row, so that a
 * faster row never shows a smaller speedup (each layout had its own). */
static void layout_speedups_agree_with_times(void **state)
{
    (void)state;
    st_model_desc *d = real_model(8, 256);
    st_device_profile p[4] = {dev(100, 8), dev(100, 8), dev(100, 8), dev(100, 8)};
    st_plan_input in = {.parallel = {ST_PARALLEL_AUTO}, .desc = d, .shape = {.batch = 32, .seq = 64, .training = true}, .n_devices = 4, .devices = p};
    st_plan plan;
    assert_ok(st_plan_make(&in, &plan));
    assert_true(plan.n_alts > 1);
    size_t fits = 0;
    for (size_t i = 0; i < plan.n_alts; i++) {
        const st_plan_alt *a = &plan.alts[i];
        if (!a->fits)
            continue;
        fits++;
        assert_true(fabs(a->speedup * a->step_ms - plan.one_device_ms) <= 1e-9 * plan.one_device_ms);
        for (size_t j = 0; j < plan.n_alts; j++)
            if (plan.alts[j].fits && plan.alts[j].step_ms < a->step_ms)
                assert_true(plan.alts[j].speedup > a->speedup);
    }
    assert_true(fits > 1);
    assert_true(fabs(plan.alts[plan.chosen].speedup - plan.speedup) <= 1e-9 * plan.speedup);
    st_model_desc_destroy(d);
}

/* --parallel: the named kinds, both degrees, and one degree alone (the other 1). */
static void parallel_specs(void **state)
{
    (void)state;
    struct {
        const char *text;
        st_parallel_kind kind;
        size_t dp, pp;
    } good[] = {{"auto", ST_PARALLEL_AUTO, 0, 0},     {"pipeline", ST_PARALLEL_PIPELINE, 0, 0},
                {"data", ST_PARALLEL_DATA, 0, 0},     {"dp:2,pp:3", ST_PARALLEL_FIXED, 2, 3},
                {"dp:4", ST_PARALLEL_FIXED, 4, 1},    {"pp:2", ST_PARALLEL_FIXED, 1, 2},
                {"dp:1", ST_PARALLEL_FIXED, 1, 1}};
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        st_parallel_spec sp;
        assert_int_equal(st_parallel_parse(good[i].text, &sp), ST_OK);
        assert_int_equal(sp.kind, good[i].kind);
        if (good[i].kind == ST_PARALLEL_FIXED) {
            assert_int_equal(sp.dp, good[i].dp);
            assert_int_equal(sp.pp, good[i].pp);
        }
    }
    const char *bad[] = {"dp:0", "dp:-1", "dp:4x", "pp:", "dp:2,pp:", "dp:2,pp:0", "pp:2,dp:2",
                         "dp:", "dp:18446744073709551617", "pp:99999", "dp: 2", ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        st_parallel_spec sp;
        if (st_parallel_parse(bad[i], &sp) != ST_ERR_INVALID)
            fail_msg("--parallel '%s' was accepted", bad[i]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(partition_matches_brute_force),
        cmocka_unit_test(faster_devices_get_more_layers),
        cmocka_unit_test(thousands_of_layers),
        cmocka_unit_test(fewer_devices_when_faster),
        cmocka_unit_test(memory_decides_the_split),
        cmocka_unit_test(fixed_splits),
        cmocka_unit_test(one_f_one_b_keeps_fewer_activations),
        cmocka_unit_test(shared_hardware_is_planned_as_shared),
        cmocka_unit_test(micro_batches_chosen),
        cmocka_unit_test(parallel_specs),
        cmocka_unit_test(layout_speedups_agree_with_times),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
