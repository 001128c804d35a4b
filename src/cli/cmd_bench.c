/*
 * cmd_bench.c - `strata bench --pipeline`: training and inference
 * throughput of one model with one global batch on 1, 2, 4, ... of the
 * chosen devices, speedup and scaling efficiency against one device, and the
 * planner's predicted step time against the measured one.
 */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "core/clock.h"
#include "cli/cli.h"
#include "strata/checkpoint.h"
#include "strata/pipe.h"
#include "strata/profiler.h"
#include "cli/bench.h"
#if STRATA_HAVE_MPI
#include "mpi/mpi_run.h"
#endif

static void help(void)
{
    printf("usage: strata bench --pipeline [options]\n"
           "       strata bench --scaling [--out DIR] [options]\n"
           "       strata bench --inference [--model DIR] [options]\n"
           "\n"
           "--inference: serving on the first 1, 2, 4, ... devices (a pipeline of\n"
           "stages over them; --parallel for another layout), as llama-bench's pp/tg\n"
           "table: a prompt of --prompt tokens read in passes of --prefill (tok/s,\n"
           "and the time to the first token), then --gen tokens generated for each of\n"
           "1, 8 and 32 sequences at once (--sequences; total tok/s). The model: a\n"
           "folder's (--model) or one from the model options with drawn weights; ids\n"
           "random, greedy, no end of text. Medians of --runs runs after a warm-up.\n"
           "\n"
           "--scaling: the 1 -> 2 -> 4 device story. Two workloads of the model, each on\n"
           "the first 1, 2, 4, ... devices as the planner lays them out (replicas of the\n"
           "whole model, a pipeline of stages, or both): one that fits a device, and\n"
           "one whose devices hold less than the whole model needs (a quarter of its\n"
           "weights, gradients and moments less; or --mem-limit), so that it must be\n"
           "split. A Markdown table on\n"
           "stdout (the plans on stderr): the layout chosen, its predicted step and the\n"
           "measured one, training and inference tokens/s, speedup and efficiency\n"
           "against the first workload on one device. --out DIR also writes\n"
           "scaling.md, scaling.json and scaling.svg (a chart of both). Under mpirun\n"
           "it runs over the first 1, 2, 4, ... ranks instead (one device per rank\n"
           "without --devices); rank 0 prints and writes.\n"
           "\n"
           "--pipeline:\n"
           "Trains one model with one global batch on the first 1, 2, 4, ... of the\n"
           "chosen devices (every one given a stage, split by the planner) and runs\n"
           "forward passes the same way; prints step times, tokens/s, speedup and\n"
           "scaling efficiency against one device, and the planner's predicted step\n"
           "time next to the measured one, with the spread of the timed steps\n"
           "((slowest - fastest) / median). Data: random tokens.\n"
           "\n"
           "  --pipeline          the pipeline benchmark\n"
           "  --scaling           the scaling benchmark (its micro-batches: the planner's)\n"
           "  --inference         the inference benchmark\n"
           "  --model DIR         --inference: a model folder (default: a model from the\n"
           "                      options below, its weights drawn at random)\n"
           "  --dtype T           --inference: the weights and KV cache in bf16, fp16, fp32\n"
           "                      (default: as the folder stores them; drawn weights fp32)\n"
           "  --prompt N          --inference: prompt tokens (default 128)\n"
           "  --gen N             --inference: tokens generated per sequence (default 32)\n"
           "  --prefill N         --inference: prompt tokens per pass (default 128)\n"
           "  --sequences LIST    --inference: sequences at once, rising (default 1,8,32)\n"
           "  --runs N            --inference: timed runs, after a warm-up (default 3)\n"
           "  --parallel HOW      --inference: pipeline (default), data, auto, dp:D,pp:S\n"
           "  --out DIR           --scaling: write scaling.md, .json and .svg into DIR\n"
           "                      (made when missing)\n"
           "  --mem-limit LIST    --scaling: the splitting workload's memory, e.g. 0:40M,1:40M\n"
           "  --layers N, --embd N, --heads N   the model (default 8 x 192, 4 heads)\n"
           "  --arch A, --kv-heads N            gpt2 (default) or llama, its key/value heads\n"
           "  --batch N           sequences per step (default 32)\n"
           "  --seq N             tokens per sequence (default 64)\n"
           "  --micro-batches N   pipeline micro-batches (default 16)\n"
           "  --schedule S        1f1b (default) or gpipe\n"
           "  --steps N           timed steps per device count, after one warm-up (default 3)\n"
           "  --devices CHOICE    the devices (default $STRATA_DEVICES, else all)\n"
           "  --profile           also where each device's training step time goes (op,\n"
           "                      launches and ms per step, share, GB/s, GFLOPS)\n"
           "  --format F          table (default), csv or json: the results on stdout\n"
           "                      (with csv and json, the plans go to stderr)\n"
           "  -h, --help          this text\n"
           "\n"
           "On a CPU run PoCL with POCL_DEVICES=\"basic basic\": each basic device runs on\n"
           "its own thread, so two of them use two cores.\n");
}

static int by_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Times `steps` training steps and forward passes (each after a warm-up)
 * on a pipeline made from plan; the row gets the medians. */
static st_status time_pipe(st_pipe *p, const st_plan *plan, st_device *const *stage_dev,
                           size_t n_stages, const st_model_desc *desc, long steps,
                           const int32_t *tokens, const int32_t *targets, FILE *plan_out,
                           bench_row *row)
{
    double *t = malloc((size_t)(steps + 1) * 2 * sizeof *t), wait = 0;
    if (!t)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    st_adamw_hparams hp = {1e-4f, 0.9f, 0.95f, 1e-8f, 0.1f};
    double train_sum = 0;
    st_status s = ST_OK;
    for (long i = 0; s == ST_OK && i <= steps; i++) {
        st_pipe_step_result r;
        if (i == 1 && st_profiler_enabled()) /* the warm-up step is not profiled */
            for (size_t k2 = 0; k2 < n_stages; k2++)
                if (stage_dev[k2])
                    st_profiler_reset(stage_dev[k2]);
        double t0 = st_now_s();
        s = st_pipe_train_step(p, tokens, targets, NULL, &hp, i + 1, 1.0f, &r);
        t[i] = (st_now_s() - t0) * 1e3;
        if (i > 0) {
            train_sum += t[i];
            for (size_t k2 = 0; k2 < plan->n_stages; k2++)
                wait += st_pipe_wait_s(p, k2) * 1e3 / (double)plan->n_stages / (double)steps;
        }
    }
    if (s == ST_OK && st_profiler_enabled()) {
        fprintf(plan_out, "training steps on %zu device%s:", row->devices,
                row->devices == 1 ? "" : "s");
        s = cli_profile_report((st_device **)stage_dev, n_stages, steps,
                               train_sum / (double)steps, desc->cfg.n_layer,
                               plan->shape.micro_batches, plan_out, NULL);
        fprintf(plan_out, "\n");
    }
    st_profiler_pause(true); /* the forward passes are not in the table */
    for (long i = 0; s == ST_OK && i <= steps; i++) {
        double sum = 0, t0 = st_now_s();
        long count = 0;
        s = st_pipe_forward(p, tokens, targets, NULL, &sum, &count, NULL);
        t[steps + 1 + i] = (st_now_s() - t0) * 1e3;
    }
    if (s == ST_OK) {
        qsort(t + 1, (size_t)steps, sizeof *t, by_double); /* median after the warm-up */
        qsort(t + steps + 2, (size_t)steps, sizeof *t, by_double);
        row->stages = plan->n_stages;
        row->replicas = st_plan_replicas(plan);
        row->micro_batches = plan->shape.micro_batches;
        row->fits = true;
        row->train_ms = t[1 + steps / 2];
        row->fwd_ms = t[steps + 2 + steps / 2];
        row->train_spread = (t[steps] - t[1]) / row->train_ms;
        row->fwd_spread = (t[2 * steps + 1] - t[steps + 2]) / row->fwd_ms;
        row->predicted_ms = plan->step_ms;
        row->wait_ms = wait;
    }
    st_profiler_pause(false);
    free(t);
    return s;
}

/* Times training and forward passes on the first k devices. */
st_status bench_k(cli_devices *all, size_t k, const st_model_desc *desc,
                  const cli_plan_opts *po_in, long steps, const int32_t *tokens,
                  const int32_t *targets, FILE *plan_out, bench_row *row)
{
    cli_devices sub = *all;
    sub.n = k;
    cli_plan_opts po = *po_in;
    po.devices_explicit = true;
    st_plan plan, fplan;
    st_device_profile prof[ST_MAX_DEVICES];
    st_status s = cli_make_plan(&sub, desc, &po, &plan, prof);
    cli_plan_opts fo = po;
    fo.shape.training = false;
    if (s == ST_OK)
        s = cli_make_plan(&sub, desc, &fo, &fplan, prof);
    if (s != ST_OK)
        return s;
    cli_plan_print(&plan, desc, &sub, prof, &po, plan_out);
    /* every device of every replica */
    size_t used[ST_PLAN_MAX_STAGES], n_stages = st_plan_devices(&plan, used);
    st_device *stage_dev[ST_PLAN_MAX_STAGES];
    for (size_t j = 0; j < n_stages; j++)
        stage_dev[j] = sub.dev[used[j]];
    st_pipe *p = NULL;
    row->devices = k;
    if ((s = st_devices_prepare(stage_dev, n_stages)) == ST_OK &&
        (s = st_pipe_create(&plan, desc, sub.dev, NULL, &p)) == ST_OK &&
        (s = st_pipe_init(p, 1)) == ST_OK &&
        (s = time_pipe(p, &plan, stage_dev, n_stages, desc, steps, tokens, targets, plan_out,
                       row)) == ST_OK)
        row->predicted_fwd_ms = fplan.step_ms;
    st_pipe_destroy(p);
    return s;
}

#if STRATA_HAVE_MPI
st_status bench_ranks(cli_devices *mine, size_t total_devices, const st_model_desc *desc,
                      const cli_plan_opts *po, long steps, const int32_t *tokens,
                      const int32_t *targets, FILE *plan_out, bench_row *row)
{
    st_run_plan_options ro = {.parallel = po->parallel, .keep_all_devices = true, .quiet = true};
    st_plan plan, fplan;
    st_device_profile prof[ST_PLAN_MAX_STAGES];
    st_device *plan_devs[ST_PLAN_MAX_STAGES] = {NULL}, *fdevs[ST_PLAN_MAX_STAGES] = {NULL};
    st_pipe_comm comm = {0}, fcomm = {0};
    st_run_shape fshape = po->shape;
    fshape.training = false;
    /* The inference plan only for its prediction; the passes run on the
     * training pipeline, as in one process. */
    st_status s = st_run_plan_mpi(mine->dev, mine->index, mine->n, desc, &fshape, &ro, &fplan,
                                  prof, fdevs, &fcomm);
    st_mpi_comm_free(&fcomm);
    if (s == ST_OK)
        s = st_run_plan_mpi(mine->dev, mine->index, mine->n, desc, &po->shape, &ro, &plan, prof,
                            plan_devs, &comm);
    if (s != ST_OK)
        return s;
    cli_plan_print(&plan, desc, NULL, prof, po, plan_out);
    size_t used[ST_PLAN_MAX_STAGES], n_stages = st_plan_devices(&plan, used);
    st_device *stage_dev[ST_PLAN_MAX_STAGES];
    for (size_t j = 0; j < n_stages; j++)
        stage_dev[j] = plan_devs[used[j]]; /* NULL: another rank's */
    st_pipe *p = NULL;
    row->devices = total_devices;
    if ((s = st_devices_prepare(stage_dev, n_stages)) == ST_OK &&
        (s = st_pipe_create(&plan, desc, plan_devs, &comm, &p)) == ST_OK &&
        (s = st_pipe_init(p, 1)) == ST_OK &&
        (s = time_pipe(p, &plan, stage_dev, n_stages, desc, steps, tokens, targets, plan_out,
                       row)) == ST_OK)
        row->predicted_fwd_ms = fplan.step_ms;
    st_pipe_destroy(p);
    st_mpi_comm_free(&comm);
    return s;
}
#endif

static void print_rows(const bench_row *rows, size_t n_rows, double N, long steps,
                       const char *format)
{
    if (strcmp(format, "json") == 0) {
        printf("[");
        for (size_t i = 0; i < n_rows; i++) {
            const bench_row *w = &rows[i];
            printf("%s\n  {\"devices\": %zu, \"stages\": %zu, \"train_ms\": %.3f, "
                   "\"train_spread\": %.4f, \"predicted_ms\": %.3f, \"train_tok_per_s\": %.1f, "
                   "\"speedup\": %.4f, \"efficiency\": %.4f, \"link_wait_ms\": %.3f, "
                   "\"forward_ms\": %.3f, \"forward_spread\": %.4f, "
                   "\"predicted_forward_ms\": %.3f, \"forward_tok_per_s\": %.1f, "
                   "\"forward_speedup\": %.4f, \"steps\": %ld}",
                   i ? "," : "", w->devices, w->stages, w->train_ms, w->train_spread,
                   w->predicted_ms, N / (w->train_ms * 1e-3), rows[0].train_ms / w->train_ms,
                   rows[0].train_ms / w->train_ms / (double)w->devices, w->wait_ms, w->fwd_ms,
                   w->fwd_spread, w->predicted_fwd_ms, N / (w->fwd_ms * 1e-3),
                   rows[0].fwd_ms / w->fwd_ms, steps);
        }
        printf("\n]\n");
        return;
    }
    bool csv = strcmp(format, "csv") == 0;
    cli_table *t = cli_table_new(13);
    const char *head[] = {"devices", "train ms", "spread", "predicted", "error", "tok/s",
                          "speedup", "efficiency", "link wait ms", "forward ms", "fwd spread",
                          "fwd tok/s", "fwd speedup"};
    const char *csv_head[] = {"devices", "train_ms", "train_spread", "predicted_ms",
                              "prediction_error", "train_tok_per_s", "speedup", "efficiency",
                              "link_wait_ms", "forward_ms", "forward_spread",
                              "forward_tok_per_s", "forward_speedup"};
    cli_table_add(t, csv ? csv_head : head);
    for (size_t i = 0; i < n_rows; i++) {
        const bench_row *w = &rows[i];
        char cell[13][32];
        snprintf(cell[0], 32, "%zu", w->devices);
        snprintf(cell[1], 32, "%.1f", w->train_ms);
        snprintf(cell[2], 32, csv ? "%.4f" : "%.0f%%", (csv ? 1 : 100) * w->train_spread);
        snprintf(cell[3], 32, "%.1f", w->predicted_ms);
        snprintf(cell[4], 32, csv ? "%.4f" : "%+.1f%%",
                 (csv ? 1 : 100) * (w->predicted_ms - w->train_ms) / w->train_ms);
        snprintf(cell[5], 32, "%.0f", N / (w->train_ms * 1e-3));
        snprintf(cell[6], 32, csv ? "%.4f" : "%.2fx", rows[0].train_ms / w->train_ms);
        snprintf(cell[7], 32, "%.2f", rows[0].train_ms / w->train_ms / (double)w->devices);
        snprintf(cell[8], 32, "%.1f", w->wait_ms);
        snprintf(cell[9], 32, "%.1f", w->fwd_ms);
        snprintf(cell[10], 32, csv ? "%.4f" : "%.0f%%", (csv ? 1 : 100) * w->fwd_spread);
        snprintf(cell[11], 32, "%.0f", N / (w->fwd_ms * 1e-3));
        snprintf(cell[12], 32, csv ? "%.4f" : "%.2fx", rows[0].fwd_ms / w->fwd_ms);
        const char *row[13];
        for (int j = 0; j < 13; j++)
            row[j] = cell[j];
        cli_table_add(t, row);
    }
    if (csv) {
        cli_table_print_csv(t, stdout);
    } else {
        printf("scaling (medians of %ld steps after a warm-up, spread = (slowest - fastest) / "
               "median; efficiency = speedup / devices):\n",
               steps);
        cli_table_print(t, stdout);
    }
    cli_table_free(t);
}

/* --inference: the model (a folder's, or the options' with drawn weights)
 * and the devices, then bench_inference. */
static int bench_inference_command(const char *dir, cli_model_flags *mf, long L, long C, long NH,
                                   long positions, const char *devices, const char *parallel,
                                   long prompt, long gen, long prefill, long runs,
                                   const int *conc, int n_conc, const char *format, int dtype)
{
    st_model_config cfg;
    st_status s;
    char line[256];
    if (dir) {
        if ((s = st_checkpoint_config(dir, &cfg)) != ST_OK)
            return cli_fail(s);
        char what[160];
        cli_model_describe(&cfg, what, sizeof what);
        snprintf(line, sizeof line, "%s (%s)", dir, what);
    } else {
        mf->vocab = 256;
        mf->positions = positions;
        mf->layers = L;
        mf->embd = C;
        mf->heads = NH;
        if ((s = cli_model_config(mf, &cfg)) != ST_OK)
            return s == ST_ERR_INVALID ? cli_usage_error("bench", "%s", st_last_error())
                                       : cli_fail(s);
        cli_model_describe(&cfg, line, sizeof line);
    }
    if (prompt + gen + 1 > cfg.n_positions)
        return cli_usage_error("bench",
                               "--prompt %ld and --gen %ld need %ld positions; the model has %d",
                               prompt, gen, prompt + gen + 1, cfg.n_positions);
    cli_devices devs = {0};
    if ((s = cli_devices_get(devices, true, &devs)) != ST_OK)
        return cli_fail(s);
    bench_inference_opts o = {.model = dir, .config = &cfg, .model_line = line,
                              .parallel = parallel ? parallel : "pipeline", .prompt = prompt,
                              .gen = gen, .prefill = prefill, .runs = runs, .n_conc = n_conc,
                              .format = format, .dtype = dtype};
    memcpy(o.conc, conc, (size_t)n_conc * sizeof *conc);
    s = bench_inference(&devs, &o);
    cli_devices_put(&devs);
    return s == ST_OK ? CLI_OK : cli_fail(s);
}

int cmd_bench(int argc, char **argv)
{
    static const struct option opts[] = {
        {"pipeline", no_argument, NULL, 'p'},       {"layers", required_argument, NULL, 'L'},
        {"embd", required_argument, NULL, 'C'},     {"heads", required_argument, NULL, 'H'},
        {"batch", required_argument, NULL, 'B'},    {"seq", required_argument, NULL, 'T'},
        {"micro-batches", required_argument, NULL, 'u'},
        {"schedule", required_argument, NULL, 's'}, {"steps", required_argument, NULL, 'n'},
        {"devices", required_argument, NULL, 'd'},  {"help", no_argument, NULL, 'h'},
        {"format", required_argument, NULL, 'f'},
        {"profile", no_argument, NULL, 'P'},
        {"arch", required_argument, NULL, 'a'},     {"kv-heads", required_argument, NULL, 'K'},
        {"scaling", no_argument, NULL, 'S'},        {"out", required_argument, NULL, 'o'},
        {"mem-limit", required_argument, NULL, 'M'},
        {"inference", no_argument, NULL, 'I'},      {"model", required_argument, NULL, 'm'},
        {"prompt", required_argument, NULL, 'q'},   {"gen", required_argument, NULL, 'g'},
        {"prefill", required_argument, NULL, 'F'},  {"sequences", required_argument, NULL, 'Q'},
        {"runs", required_argument, NULL, 'r'},     {"parallel", required_argument, NULL, 'l'},
        {"dtype", required_argument, NULL, 'w'},
        {NULL, 0, NULL, 0}};
    bool inference = false, seq_given = false;
    int dtype = -1; /* --dtype */
    const char *model_dir = NULL, *parallel = NULL;
    long prompt = 128, gen = 32, prefill = 128, runs = 3;
    int conc[4] = {1, 8, 32}, n_conc = 3;
    cli_model_flags mf = {0};
    long L = 8, C = 192, NH = 4, B = 32, T = 64, m = 16, steps = 3;
    bool pipeline = false, scaling = false, micro_given = false;
    const char *devices = NULL, *format = "table", *out_dir = NULL, *mem_limit = NULL;
    /* --pipeline measures one pipeline over 1, 2, 4... devices. */
    cli_plan_opts po = {.shape = {.schedule = ST_SCHED_1F1B, .training = true},
                        .parallel = "pipeline", .quiet = true};
    int c, li;
    optind = 1;
    opterr = 0;
    while ((li = -1, c = getopt_long(argc, argv, ":h", opts, &li)) != -1) {
        bool ok = true;
        switch (c) {
        case 'p': pipeline = true; break;
        case 'S': scaling = true; break;
        case 'o': out_dir = optarg; break;
        case 'M': mem_limit = optarg; break;
        case 'a': mf.arch = optarg; break;
        case 'K': ok = cli_parse_long(optarg, 1, 1024, &mf.kv_heads); break;
        case 'L': ok = cli_parse_long(optarg, 1, 1000, &L); break;
        case 'C': ok = cli_parse_long(optarg, 1, 1 << 16, &C); break;
        case 'H': ok = cli_parse_long(optarg, 1, 1024, &NH); break;
        case 'B': ok = cli_parse_long(optarg, 1, 1 << 20, &B); break;
        case 'T': ok = cli_parse_long(optarg, 1, 1 << 20, &T); seq_given = true; break;
        case 'I': inference = true; break;
        case 'm': model_dir = optarg; break;
        case 'q': ok = cli_parse_long(optarg, 1, 1 << 16, &prompt); break;
        case 'g': ok = cli_parse_long(optarg, 1, 1 << 16, &gen); break;
        case 'F': ok = cli_parse_long(optarg, 1, 1 << 16, &prefill); break;
        case 'r': ok = cli_parse_long(optarg, 1, 100, &runs); break;
        case 'l': parallel = optarg; break;
        case 'w':
            if ((dtype = cli_weights_dtype(optarg)) < 0)
                return cli_usage_error("bench", "bad value '%s' for --dtype: bf16, fp16 or fp32",
                                       optarg);
            break;
        case 'Q': {
            char *end = optarg;
            n_conc = 0;
            while (ok && *end && n_conc < 4) {
                long v = strtol(end, &end, 10);
                ok = v >= 1 && v <= 64 && (n_conc == 0 || v > conc[n_conc - 1]) &&
                     (*end == ',' || *end == '\0');
                conc[n_conc++] = (int)v;
                if (*end == ',')
                    end++;
            }
            if (!ok || *end || n_conc == 0)
                return cli_usage_error("bench", "bad value '%s' for --sequences: up to 4 rising "
                                                "counts from 1 to 64, e.g. 1,8,32",
                                       optarg);
            break;
        }
        case 'u': ok = cli_parse_long(optarg, 1, 1 << 20, &m); micro_given = true; break;
        case 'n': ok = cli_parse_long(optarg, 1, 1000, &steps); break;
        case 's':
            if (st_schedule_parse(optarg, &po.shape.schedule) != ST_OK)
                return cli_usage_error("bench", "%s", st_last_error());
            break;
        case 'd': devices = optarg; break;
        case 'f':
            format = optarg;
            ok = !strcmp(format, "table") || !strcmp(format, "csv") || !strcmp(format, "json");
            if (!ok)
                return cli_usage_error("bench", "bad value '%s' for --format: table, csv or json",
                                       optarg);
            break;
        case 'P': st_profiler_enable(true); break;
        case 'h': help(); return CLI_OK;
        case ':': return cli_usage_error("bench", "option %s needs a value", argv[optind - 1]);
        default: return cli_unknown_option("bench", argv[optind - 1], opts);
        }
        if (!ok)
            return cli_usage_error("bench", "bad value '%s' for --%s: %s", optarg, opts[li].name,
                                   cli_expected());
    }
    if (pipeline + scaling + inference != 1)
        return cli_usage_error("bench", "say which benchmark: --pipeline, --scaling or "
                                        "--inference");
    if (!inference && (model_dir || parallel))
        return cli_usage_error("bench", "--model and --parallel go with --inference");
    if (inference && (out_dir || mem_limit || micro_given))
        return cli_usage_error("bench", "--out, --mem-limit and --micro-batches do not go with "
                                        "--inference");
    int ranks = 1;
#if STRATA_HAVE_MPI
    ranks = st_mpi_active() ? st_mpi_size() : 1;
#endif
    if (ranks > 1 && (pipeline || inference || st_profiler_enabled()))
        return cli_usage_error("bench", "under mpirun only --scaling runs (without --profile)");
    if (pipeline && (out_dir || mem_limit))
        return cli_usage_error("bench", "--out and --mem-limit go with --scaling");
    if (scaling && strcmp(format, "table") != 0)
        return cli_usage_error("bench", "--scaling prints Markdown; --out DIR also writes JSON");
    if (cli_check_plan_flags(NULL, parallel, mem_limit) != ST_OK)
        return cli_usage_error("bench", "%s", st_last_error());
    if (scaling && !micro_given)
        m = 1; /* the planner chooses (checked below against the batch as 1) */
    if (out_dir) { /* made when missing, as train's --out is; checked writable now */
        st_status ps = st_checkpoint_prepare(out_dir, NULL);
        if (ps != ST_OK)
            return cli_fail(ps);
    }
    if (inference)
        return bench_inference_command(model_dir, &mf, L, C, NH, seq_given ? T : prompt + gen + 1,
                                       devices, parallel, prompt, gen, prefill, runs, conc,
                                       n_conc, format, dtype);
    if (B % m != 0)
        return cli_usage_error("bench", "--batch %ld does not split into %ld micro-batches", B, m);
    st_model_config cfg;
    mf.vocab = 256;
    mf.positions = T;
    mf.layers = L;
    mf.embd = C;
    mf.heads = NH;
    st_model_desc *desc = NULL;
    cli_devices devs = {0};
    st_status s = cli_model_config(&mf, &cfg);
    if (s != ST_OK)
        return s == ST_ERR_INVALID ? cli_usage_error("bench", "%s", st_last_error()) : cli_fail(s);
    s = st_model_describe(&cfg, &desc);
    if (s == ST_OK)
        s = cli_devices_get(devices, true, &devs);
#if STRATA_HAVE_MPI
    /* Under mpirun without --devices, one device per rank: the local rank's. */
    if (s == ST_OK && ranks > 1 && !devices && devs.n > 1) {
        size_t pick = (size_t)st_mpi_local_rank() % devs.n;
        devs.dev[0] = devs.dev[pick];
        devs.index[0] = devs.index[pick];
        devs.n = 1;
    }
#endif
    size_t N = (size_t)B * (size_t)T;
    int32_t *tokens = malloc(N * sizeof *tokens), *targets = malloc(N * sizeof *targets);
    if (s == ST_OK && (!tokens || !targets))
        s = st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    uint64_t r = 7;
    for (size_t i = 0; s == ST_OK && i < N; i++) {
        r = r * 6364136223846793005ull + 1442695040888963407ull;
        tokens[i] = (int32_t)((r >> 33) % 256);
        targets[i] = (int32_t)((r >> 41) % 256);
    }
    po.shape.batch = (int)B;
    po.shape.seq = (int)T;
    po.shape.micro_batches = (int)m;
    if (scaling && s == ST_OK) {
        char line[256];
        char where[64];
        if (ranks > 1)
            snprintf(where, sizeof where, "%d MPI ranks", ranks);
        else
            snprintf(where, sizeof where, "%zu device%s", devs.n, devs.n == 1 ? "" : "s");
        snprintf(line, sizeof line,
                 "%s %ld layers x %ld channels, %zu parameters, batch %ld x %ld tokens, %s",
                 st_family_name(cfg.family), L, C, desc->param_numel, B, T, where);
        bench_scaling_opts so = {.desc = desc, .po = po, .steps = steps, .mem_limit = mem_limit,
                                 .out_dir = out_dir, .model_line = line, .ranks = ranks,
                                 .quiet_rank = cli_rank() != 0};
        so.po.parallel = NULL; /* the planner's choice */
        so.po.shape.micro_batches = micro_given ? (int)m : 0;
        s = bench_scaling(&devs, &so, tokens, targets);
        free(tokens);
        free(targets);
        st_model_desc_destroy(desc);
        cli_devices_put(&devs);
        return s == ST_OK ? CLI_OK : cli_fail(s);
    }
    bench_row rows[8];
    size_t n_rows = 0;
    bool table = strcmp(format, "table") == 0;
    FILE *info = table ? stdout : stderr;
    if (s == ST_OK)
        fprintf(info,
                "model: %s %ld layers x %ld channels, %zu parameters | batch %ld x %ld tokens "
                "in %ld micro-batches | %s\n\n",
                st_family_name(cfg.family), L, C, desc->param_numel, B, T, m,
                st_schedule_name(po.shape.schedule));
    for (size_t k = 1; s == ST_OK && k <= devs.n && n_rows < 8; k *= 2) {
        if ((s = bench_k(&devs, k, desc, &po, steps, tokens, targets, info, &rows[n_rows])) ==
            ST_OK)
            n_rows++;
        fprintf(info, "\n");
        fflush(info);
    }
    if (s == ST_OK && n_rows > 0)
        print_rows(rows, n_rows, (double)N, steps, format);
    free(tokens);
    free(targets);
    st_model_desc_destroy(desc);
    if (devs.list)
        cli_devices_put(&devs);
    return s == ST_OK ? CLI_OK : cli_fail(s);
}
