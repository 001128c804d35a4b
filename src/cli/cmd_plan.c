/*
 * cmd_plan.c - `strata plan`: how a model would be split over the chosen
 * devices, with the planner's predictions, as a table or JSON.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cli/cli.h"
#include "strata/checkpoint.h"

static void help(void)
{
    printf("usage: strata plan [model] [options]\n"
           "\n"
           "Profiles the chosen devices (GEMM rate on the model's shapes and host<->device\n"
           "bandwidth, cached on disk) and prints how the planner splits the model:\n"
           "layers, memory and predicted times per stage, the predicted step, the\n"
           "pipeline bubble and the speedup over one device.\n"
           "\n"
           "model (default: the model `strata train` builds by default):\n"
           "  --model DIR         a model folder's config.json\n"
           "  --config FILE       a config.json\n"
           "  --arch A            gpt2 (default) or llama, for the sizes below\n"
           "  --layers N, --embd N, --heads N, --positions N, --vocab N, --inner N\n"
           "  --kv-heads N, --rope-theta X, --tie   (llama: as `strata train`)\n"
           "work:\n"
           "  --batch N           sequences per step (default 64)\n"
           "  --seq N             tokens per sequence (default: the model's positions)\n"
           "  --micro-batches N   pipeline micro-batches per step (default: the\n"
           "                      planner's choice, timed)\n"
           "  --schedule S        1f1b (default) or gpipe\n"
           "  --inference         plan a forward pass only (no gradients or optimizer)\n"
           "  --recompute WHEN    activation recomputation (as `strata train`): auto\n"
           "                      (default: when nothing fits without), on, off\n"
           "  --lora R            LoRA adapters of rank R: the weights\n"
           "                      frozen, gradients and moments for the adapters only\n"
           "  --lora-targets L    all (default) or a list of projections (q_proj,...)\n"
           "  --dtype T           how the weights that do not train are held: bf16, fp16\n"
           "                      or fp32 (default: as the --model folder stores them,\n"
           "                      else fp32): every matrix and the KV cache with\n"
           "                      --inference, the frozen base with --lora\n"
           "  --shard-optimizer   replicas split the AdamW moments (as `strata train`)\n"
           "devices:\n"
           "  --devices CHOICE    which devices (default $STRATA_DEVICES, else all)\n"
           "  --split HOW         auto (default), uniform, ratio:3,1, layers:0-5,6-11\n"
           "  --parallel HOW      auto (default: the planner weighs replicas x stages),\n"
           "                      pipeline, data (a whole model per device), dp:D,pp:S\n"
           "                      (dp:D alone: S = 1; pp:S alone: D = 1)\n"
           "  --mem-limit LIST    the most the run may hold on each device, e.g. 0:2G,1:6G\n"
           "                      (weights, gradients, optimizer state, activations,\n"
           "                      buffers; the planner's one-time device measurement is\n"
           "                      not counted against it)\n"
           "  --rates-only        predict from each device's GEMM rate and bandwidths\n"
           "                      alone, without timing the model's attention, one of\n"
           "                      its blocks, or devices that share hardware running\n"
           "                      together (quick for shapes too large to time on this\n"
           "                      machine; the times are rougher, the memory the same)\n"
           "  --json              the plan as JSON\n"
           "  -h, --help          this text\n"
           "\n"
           "Exit status: 0 planned; 1 a device failure; 2 bad options or the model does\n"
           "not fit (the message says how much memory is missing where).\n");
}

static void print_json(const st_plan *plan, const cli_devices *devs,
                       const st_device_profile *prof, const cli_plan_opts *o)
{
    json_t *stages = json_array();
    for (size_t s = 0; s < plan->n_stages; s++) {
        const st_plan_stage *st = &plan->stage[s];
        json_array_append_new(
            stages, json_pack("{s:I, s:s, s:I, s:I, s:f, s:f, s:f, s:I, s:f, s:f, s:f, s:f, s:i}",
                              "device", (json_int_t)devs->index[st->device], "name",
                              prof[st->device].name, "first_layer", (json_int_t)st->first,
                              "end_layer", (json_int_t)st->end, "param_bytes", st->param_bytes,
                              "act_bytes", st->act_bytes, "total_bytes", st->total_bytes,
                              "capacity_bytes", (json_int_t)prof[st->device].mem_bytes,
                              "fwd_ms", st->fwd_ms, "bwd_ms", st->bwd_ms, "gflops",
                              prof[st->device].gflops, "h2d_gbps", prof[st->device].h2d_gbps,
                              "in_flight", st->in_flight));
    }
    (void)o;
    const st_run_shape *r = &plan->shape;
    json_t *j = json_pack("{s:s, s:i, s:i, s:i, s:b, s:o, s:f, s:f, s:f, s:f, s:s}", "schedule",
                          st_schedule_name(r->schedule), "micro_batch", st_run_micro_batch(r),
                          "seq", r->seq, "micro_batches", r->micro_batches, "training",
                          r->training,
                          "stages", stages, "step_ms", plan->step_ms, "bubble", plan->bubble,
                          "one_device_ms", plan->one_device_ms, "speedup", plan->speedup, "note",
                          plan->note);
    json_object_set_new(j, "recompute", json_boolean(r->recompute));
    json_object_set_new(j, "replicas", json_integer((json_int_t)st_plan_replicas(plan)));
    char *text = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    if (text)
        printf("%s\n", text);
    free(text);
    json_decref(j);
}

int cmd_plan(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, NULL, 'm'},     {"config", required_argument, NULL, 'c'},
        {"layers", required_argument, NULL, 'L'},    {"embd", required_argument, NULL, 'C'},
        {"heads", required_argument, NULL, 'H'},     {"positions", required_argument, NULL, 'P'},
        {"vocab", required_argument, NULL, 'V'},     {"batch", required_argument, NULL, 'B'},
        {"seq", required_argument, NULL, 'T'},       {"micro-batches", required_argument, NULL, 'u'},
        {"schedule", required_argument, NULL, 's'},  {"inference", no_argument, NULL, 'i'},
        {"devices", required_argument, NULL, 'd'},   {"split", required_argument, NULL, 'S'},
        {"parallel", required_argument, NULL, 'A'},
        {"mem-limit", required_argument, NULL, 'M'}, {"json", no_argument, NULL, 'j'},
        {"arch", required_argument, NULL, 'a'},      {"kv-heads", required_argument, NULL, 'K'},
        {"inner", required_argument, NULL, 'F'},     {"rope-theta", required_argument, NULL, 'R'},
        {"tie", no_argument, NULL, 't'},             {"help", no_argument, NULL, 'h'},
        {"recompute", required_argument, NULL, 'r'}, {"lora", required_argument, NULL, 'l'},
        {"lora-targets", required_argument, NULL, 'g'},
        {"dtype", required_argument, NULL, 'w'},
        {"shard-optimizer", no_argument, NULL, 'z'},
        {"rates-only", no_argument, NULL, 'q'},
        {NULL, 0, NULL, 0}};
    const char *model = NULL, *config = NULL, *devices = NULL;
    long L = 2, C = 64, NH = 4, P = 12, V = 256, B = 64, T = 0, m = 0; /* 0: chosen */
    bool json = false, given_pos = false, sizes_given = false;
    cli_model_flags mf = {0};
    cli_plan_opts po = {.shape = {.schedule = ST_SCHED_1F1B, .training = true},
                        .recompute_auto = true};
    long lora = 0;
    const char *lora_targets = "all";
    int dtype = -1; /* --dtype: how the weights that do not train are stored */
    int c, li;
    optind = 1;
    opterr = 0;
    while ((li = -1, c = getopt_long(argc, argv, ":h", opts, &li)) != -1) {
        bool ok = true;
        switch (c) {
        case 'm': model = optarg; break;
        case 'c': config = optarg; break;
        case 'L': ok = cli_parse_long(optarg, 1, 1000, &L); break;
        case 'C': ok = cli_parse_long(optarg, 1, 1 << 16, &C); break;
        case 'H': ok = cli_parse_long(optarg, 1, 1024, &NH); break;
        case 'P': ok = cli_parse_long(optarg, 1, 1 << 20, &P); given_pos = true; break;
        case 'V': ok = cli_parse_long(optarg, 2, 1 << 24, &V); break;
        case 'a': mf.arch = optarg; break;
        case 'K': ok = cli_parse_long(optarg, 1, 1024, &mf.kv_heads); break;
        case 'F': ok = cli_parse_long(optarg, 1, 1 << 20, &mf.inner); break;
        case 'R': ok = cli_parse_double(optarg, 1.0001, 1e12, &mf.rope_theta); break;
        case 't': mf.tied = true; break;
        case 'B': ok = cli_parse_long(optarg, 1, 1 << 20, &B); break;
        case 'T': ok = cli_parse_long(optarg, 1, 1 << 20, &T); break;
        case 'u': ok = cli_parse_long(optarg, 1, 1 << 20, &m); break;
        case 's':
            if (st_schedule_parse(optarg, &po.shape.schedule) != ST_OK)
                return cli_usage_error("plan", "%s", st_last_error());
            break;
        case 'i': po.shape.training = false; break;
        case 'r':
            if (strcmp(optarg, "auto") != 0 && strcmp(optarg, "on") != 0 &&
                strcmp(optarg, "off") != 0)
                return cli_usage_error("plan", "bad value '%s' for --recompute: auto, on or off",
                                       optarg);
            po.shape.recompute = strcmp(optarg, "on") == 0;
            po.recompute_auto = strcmp(optarg, "auto") == 0;
            break;
        case 'l': ok = cli_parse_long(optarg, 1, 65536, &lora); break;
        case 'g': lora_targets = optarg; break;
        case 'w':
            if ((dtype = cli_weights_dtype(optarg)) < 0)
                return cli_usage_error("plan", "bad value '%s' for --dtype: bf16, fp16 or fp32",
                                       optarg);
            break;
        case 'z': po.shape.shard_moments = true; break;
        case 'q': po.rates_only = true; break;
        case 'd': devices = optarg; break;
        case 'S': po.split = optarg; break;
        case 'A': po.parallel = optarg; break;
        case 'M': po.mem_limit = optarg; break;
        case 'j': json = true; break;
        case 'h': help(); return CLI_OK;
        case ':': return cli_usage_error("plan", "option %s needs a value", argv[optind - 1]);
        default: return cli_unknown_option("plan", argv[optind - 1], opts);
        }
        if (!ok)
            return cli_usage_error("plan", "bad value '%s' for --%s: %s", optarg, opts[li].name,
                                   cli_expected());
        sizes_given = sizes_given || strchr("LCHPVaKFRt", c) != NULL;
    }
    if ((model || config) && sizes_given)
        return cli_usage_error("plan", "model sizes cannot be combined with --%s: the model is "
                                       "the %s's",
                               model ? "model" : "config", model ? "folder" : "file");
    if (optind < argc)
        return cli_usage_error("plan", "unexpected argument '%s'", argv[optind]);
    if (m && B % m != 0)
        return cli_usage_error("plan", "--batch %ld does not split into %ld micro-batches", B, m);
    if (cli_check_plan_flags(po.split, po.parallel, po.mem_limit) != ST_OK)
        return cli_usage_error("plan", "%s", st_last_error());
    st_model_config cfg;
    st_status s = ST_OK;
    if (model)
        s = st_checkpoint_config(model, &cfg);
    else if (config)
        s = st_model_config_load(config, &cfg);
    else {
        mf.vocab = V;
        mf.positions = given_pos ? P : (T ? T : P);
        mf.embd = C;
        mf.layers = L;
        mf.heads = NH;
        s = cli_model_config(&mf, &cfg);
    }
    if (s == ST_OK && model && dtype < 0) { /* as `generate` and `train --lora` keep them */
        st_checkpoint *ck = NULL;
        if ((s = st_checkpoint_open(model, &ck)) == ST_OK)
            s = st_checkpoint_weights_dtype(ck, &cfg.weights);
        st_checkpoint_close(ck);
    } else if (s == ST_OK && dtype >= 0) {
        cfg.weights = (st_dtype)dtype;
    }
    if (s == ST_OK && lora > 0) {
        cfg.lora.rank = (int)lora;
        cfg.lora.alpha = (float)lora;
        s = st_lora_targets_parse(cfg.family, lora_targets, &cfg.lora.targets);
    }
    if (s != ST_OK)
        return cli_fail(s);
    if (!T)
        T = cfg.n_positions;
    if (T > cfg.n_positions)
        return cli_usage_error("plan", "--seq %ld is longer than the model's %d positions", T,
                               cfg.n_positions);
    po.shape.batch = (int)B;
    po.shape.seq = (int)T;
    po.shape.micro_batches = (int)m;
    po.devices_explicit = devices != NULL || getenv("STRATA_DEVICES") != NULL;
    po.quiet = json;
    st_model_desc *desc = NULL;
    cli_devices devs = {0};
    st_plan plan;
    st_device_profile prof[ST_MAX_DEVICES];
    if ((s = st_model_describe(&cfg, &desc)) == ST_OK &&
        (s = cli_devices_get(devices, true, &devs)) == ST_OK)
        s = cli_make_plan(&devs, desc, &po, &plan, prof);
    if (s == ST_OK) {
        if (json)
            print_json(&plan, &devs, prof, &po);
        else {
            char line[256];
            cli_model_describe(&cfg, line, sizeof line);
            printf("model: %s, %zu parameters", line, desc->param_numel);
            if (desc->train_numel < desc->param_numel)
                printf(" (%zu trained: LoRA rank %d)", desc->train_numel, cfg.lora.rank);
            printf("\n");
            cli_plan_print(&plan, desc, &devs, prof, &po, stdout);
        }
    }
    st_model_desc_destroy(desc);
    if (devs.list)
        cli_devices_put(&devs);
    return s == ST_OK ? CLI_OK : cli_fail(s);
}
