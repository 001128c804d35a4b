/*
 * cmd_serve.c - `strata serve`: a model served over HTTP with OpenAI's API
 * (src/serve/server.c), on an inference session over the chosen devices.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "strata/adapter.h"
#include "serve/serve.h"
#include "strata/checkpoint.h"
#if STRATA_HAVE_MPI
#include "mpi/mpi_run.h"
#endif

static void serve_help(void)
{
    printf("usage: strata serve --model DIR [options]\n"
           "\n"
           "Serves a model over HTTP with OpenAI's API. Every request is a sequence of\n"
           "one inference session over the chosen devices (laid out by the planner:\n"
           "replicas of the model, or a pipeline of stages when it must be split):\n"
           "requests join and leave between passes (continuous batching), prompts are\n"
           "read in chunks between the others' tokens, and a client that disconnects\n"
           "cancels its sequence. Endpoints:\n"
           "  POST /v1/completions        prompt (text, ids, or a list), max_tokens\n"
           "                              (default 16), temperature, top_p, top_k, min_p,\n"
           "                              repeat_penalty, stop, seed, n, stream,\n"
           "                              ignore_eos (llama.cpp's: generate past the EOS)\n"
           "  POST /v1/chat/completions   messages through the model's chat template\n"
           "                              (tokenizer_config.json: ChatML (Qwen2, SmolLM),\n"
           "                              Llama 2, Llama 3, Mistral, Zephyr shapes; any other\n"
           "                              template: 400, completions still work)\n"
           "  GET /v1/models, GET /health (\"loading\", \"ok\", \"draining\"), GET /metrics\n"
           "  (Prometheus text), GET / (a chat page)\n"
           "SIGTERM, SIGINT or SIGHUP: no new requests, those in flight finish (up to\n"
           "--drain-timeout), exit 0. A device failure fails its requests with 500 and\n"
           "ends the server (exit 1).\n"
           "\n"
           "  -m, --model DIR        the model folder (Strata's or Hugging Face's; required)\n"
           "  --adapter DIR          a LoRA adapter in PEFT's format merged into the weights\n"
           "  --dtype T              the weight matrices and the KV cache held in bf16, fp16\n"
           "                         or fp32 (default: as the folder stores the weights;\n"
           "                         fp32 with --adapter)\n"
           "  --model-name NAME      the model's id in the API (default: the folder's name)\n"
           "  --tokenizer PATH       a tokenizer.json or folder instead of the model's\n"
           "                         (none at all: text is bytes)\n"
           "  --host ADDR            the address to listen on (default 127.0.0.1: this\n"
           "                         machine only; 0.0.0.0 for every interface)\n"
           "  --port N               the port (default 8080; 0: a free one, printed)\n"
           "  --parallel N           sequences generated at once: KV cache slots (default 8)\n"
           "  --queue N              requests waiting for a slot beyond those; more: 503\n"
           "                         with Retry-After (default 64)\n"
           "  --ctx N                positions of each slot (default: the model's)\n"
           "  --prefill N            prompt tokens per pass, shared by the prompts being\n"
           "                         read (default 128)\n"
           "  --max-tokens N         the most a request may ask for (default: the context)\n"
           "  --max-body BYTES       the largest request body (default 1048576); more: 413\n"
           "  --api-key KEY          require 'Authorization: Bearer KEY' on /v1 and\n"
           "                         /metrics (default: $STRATA_API_KEY, else none)\n"
           "  --timeout S            close a connection idle this long (default 60)\n"
           "  --drain-timeout S      at SIGTERM, how long requests in flight may finish\n"
           "                         before they are cancelled (default 30)\n"
           "  --devices CHOICE       which devices; the planner splits the model over them\n"
           "  --layout HOW           auto (default: the planner weighs replicas of the\n"
           "                         whole model against a pipeline of stages; replicas\n"
           "                         when each device holds the model), pipeline, data,\n"
           "                         dp:D,pp:S\n"
           "  --split HOW            auto (default), uniform, ratio:3,1, layers:0-5,6-11\n"
           "  --mem-limit LIST       the most the session may hold on each device\n"
           "  -h, --help             this text\n");
}

typedef struct serve_load {
    const sv_config *c;
    const char *mem_limit;
    cli_devices devs;
} serve_load;

static st_status load(void *ctx, st_infer **in, st_tokenizer **tk)
{
    serve_load *L = ctx;
    const sv_config *c = L->c;
    st_checkpoint *ck = NULL;
    st_status s = st_checkpoint_open(c->model_dir, &ck);
    if (s != ST_OK)
        return s;
    fprintf(stderr, "model: %s, %s\n", c->model_dir, st_checkpoint_describe(ck));
    st_checkpoint_close(ck);
    if ((s = cli_devices_get(c->devices, true, &L->devs)) != ST_OK ||
        (L->mem_limit && (s = cli_apply_mem_limit(L->mem_limit, &L->devs)) != ST_OK))
        return s;
    st_adapter *adapter = NULL;
    if (c->adapter) {
        if ((s = st_adapter_open(c->adapter, &adapter)) != ST_OK)
            return s;
        fprintf(stderr, "adapter: %s, %s, merged into the weights\n", c->adapter,
                st_adapter_describe(adapter));
    }
    st_infer_options io = {.max_seqs = c->parallel, .ctx = c->ctx, .prefill = c->prefill,
                           .adapter = adapter,
                           .split = c->split, .parallel = c->parallel_plan,
                           .keep_all_devices = c->keep_all_devices,
                           .quiet = true, .weights_given = c->dtype >= 0,
                           .weights = c->dtype >= 0 ? (st_dtype)c->dtype : ST_F32};
    s = st_infer_open(c->model_dir, L->devs.dev, L->devs.n, &io, in);
    st_adapter_close(adapter); /* merged into the weights: not needed past loading */
    if (s != ST_OK)
        return s;
    const st_plan *plan = st_infer_plan(*in);
    if (plan->n_stages > 1 || st_plan_replicas(plan) > 1) {
        cli_plan_opts po = {.split = c->split, .parallel = c->parallel_plan, .shape = plan->shape,
                            .devices_explicit = c->keep_all_devices, .quiet = true};
        cli_plan_print(plan, st_infer_desc(*in), &L->devs, st_infer_profiles(*in), &po, stderr);
    }
    if ((s = cli_open_tokenizer(c->model_dir, c->tokenizer, tk)) != ST_OK)
        return s;
    int V = st_infer_config(*in)->vocab_size;
    if (*tk && st_tokenizer_vocab_size(*tk) < (size_t)V)
        fprintf(stderr, "model: its vocabulary of %d is padded past the tokenizer's %zu ids; "
                        "those ids are never sampled\n", V, st_tokenizer_vocab_size(*tk));
    if (!*tk)
        fprintf(stderr, "model: no tokenizer: prompts and answers are bytes\n");
    return ST_OK;
}

int cmd_serve(int argc, char **argv)
{
    static const struct option opts[] = {{"model", required_argument, NULL, 'm'},
                                         {"model-name", required_argument, NULL, 'N'},
                                         {"adapter", required_argument, NULL, 'A'},
                                         {"dtype", required_argument, NULL, 'w'},
                                         {"tokenizer", required_argument, NULL, 'z'},
                                         {"host", required_argument, NULL, 'H'},
                                         {"port", required_argument, NULL, 'p'},
                                         {"parallel", required_argument, NULL, 'P'},
                                         {"queue", required_argument, NULL, 'q'},
                                         {"ctx", required_argument, NULL, 'c'},
                                         {"prefill", required_argument, NULL, 'F'},
                                         {"max-tokens", required_argument, NULL, 'n'},
                                         {"max-body", required_argument, NULL, 'B'},
                                         {"api-key", required_argument, NULL, 'k'},
                                         {"timeout", required_argument, NULL, 't'},
                                         {"drain-timeout", required_argument, NULL, 'D'},
                                         {"devices", required_argument, NULL, 'd'},
                                         {"split", required_argument, NULL, 'S'},
                                         {"layout", required_argument, NULL, 'L'},
                                         {"mem-limit", required_argument, NULL, 'M'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    sv_config c = {.host = "127.0.0.1", .port = 8080, .parallel = 8, .queue = 64,
                   .max_body = 1 << 20, .drain_s = 30, .timeout_s = 60, .dtype = -1};
    long port = 8080, parallel = 8, queue = 64, ctx = 0, prefill = 0, max_tokens = 0,
         max_body = 1 << 20;
    const char *mem_limit = NULL;
    int o, li;
    optind = 1;
    opterr = 0;
    while ((li = -1, o = getopt_long(argc, argv, ":hm:", opts, &li)) != -1) {
        bool ok = true;
        switch (o) {
        case 'm': c.model_dir = optarg; break;
        case 'A': c.adapter = optarg; break;
        case 'w':
            if ((c.dtype = cli_weights_dtype(optarg)) < 0)
                return cli_usage_error("serve", "bad value '%s' for --dtype: bf16, fp16 or fp32",
                                       optarg);
            break;
        case 'N':
            if (!*optarg || strlen(optarg) > 200)
                return cli_usage_error("serve", "--model-name needs 1 to 200 characters");
            c.model_name = optarg;
            break;
        case 'z': c.tokenizer = optarg; break;
        case 'H': c.host = optarg; break;
        case 'p': ok = cli_parse_long(optarg, 0, 65535, &port); break;
        case 'P': ok = cli_parse_long(optarg, 1, 256, &parallel); break;
        case 'q': ok = cli_parse_long(optarg, 0, 4096, &queue); break;
        case 'c': ok = cli_parse_long(optarg, 1, 1 << 20, &ctx); break;
        case 'F': ok = cli_parse_long(optarg, 1, 1 << 16, &prefill); break;
        case 'n': ok = cli_parse_long(optarg, 1, 1L << 30, &max_tokens); break;
        case 'B': ok = cli_parse_long(optarg, 64, 1L << 30, &max_body); break;
        case 'k':
            if (!*optarg)
                return cli_usage_error("serve", "--api-key is empty");
            c.api_key = optarg;
            break;
        case 't': ok = cli_parse_double(optarg, 1, 86400, &c.timeout_s); break;
        case 'D': ok = cli_parse_double(optarg, 0, 86400, &c.drain_s); break;
        case 'd': c.devices = optarg; break;
        case 'S': c.split = optarg; break;
        case 'L': c.parallel_plan = optarg; break;
        case 'M': mem_limit = optarg; break;
        case 'h': serve_help(); return CLI_OK;
        case ':': return cli_usage_error("serve", "option %s needs a value", argv[optind - 1]);
        default: return cli_unknown_option("serve", argv[optind - 1], opts);
        }
        if (!ok)
            return cli_usage_error("serve", "bad value '%s' for --%s: %s", optarg,
                                   li >= 0 ? opts[li].name : "?", cli_expected());
    }
    if (optind < argc)
        return cli_usage_error("serve", "unexpected argument '%s'", argv[optind]);
    if (!c.model_dir)
        return cli_usage_error("serve", "--model DIR is required");
    if (cli_check_plan_flags(c.split, c.parallel_plan, mem_limit) != ST_OK)
        return cli_usage_error("serve", "%s", st_last_error());
#if STRATA_HAVE_MPI
    if (st_mpi_active() && st_mpi_size() > 1)
        return cli_usage_error("serve", "serve runs in one process (its devices split the "
                                        "model); run it without mpirun");
#endif
    if (!c.api_key && getenv("STRATA_API_KEY") && *getenv("STRATA_API_KEY"))
        c.api_key = getenv("STRATA_API_KEY");
    c.port = (int)port;
    c.parallel = (int)parallel;
    c.queue = (int)queue;
    c.ctx = (int)ctx;
    c.prefill = (int)prefill;
    c.max_tokens = max_tokens;
    c.max_body = (size_t)max_body;
    c.keep_all_devices = c.devices != NULL || getenv("STRATA_DEVICES") != NULL;
    serve_load L = {.c = &c, .mem_limit = mem_limit};
    int code = sv_serve(&c, load, &L);
    if (L.devs.list)
        cli_devices_put(&L.devs);
    if (code == 0 && (fflush(stdout) != 0 || ferror(stdout))) {
        fprintf(stderr, "strata serve: error: writing standard output failed\n");
        code = CLI_FAILED;
    }
    return code;
}
