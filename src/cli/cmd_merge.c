/*
 * cmd_merge.c - `strata merge`: a LoRA adapter (PEFT's format) merged into a
 * model's weights, written as a plain model folder (strata/checkpoint.h).
 */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "strata/adapter.h"
#include "strata/checkpoint.h"

static void help(void)
{
    printf("usage: strata merge --model DIR --adapter DIR --out DIR\n"
           "\n"
           "Adds a LoRA adapter's products (scale x B @ A, PEFT's merge) to the weights\n"
           "of a model folder (a Hugging Face one or a Strata run's) and writes a plain\n"
           "model folder that transformers and Strata load without the adapter:\n"
           "model.safetensors in the base's element type (BF16, F16 or F32, rounded to\n"
           "nearest even), its config.json and its tokenizer's files.\n"
           "\n"
           "  -m, --model DIR     the base model folder (required)\n"
           "  --adapter DIR       the adapter: adapter_config.json and\n"
           "                      adapter_model.safetensors (required)\n"
           "  --out DIR           where to write (required; made, or an empty folder)\n"
           "  -h, --help          this text\n"
           "\n"
           "Exit status: 0 written; 1 a write failed; 2 bad options or files (an\n"
           "adapter for another model is refused, naming the weight).\n");
}

int cmd_merge(int argc, char **argv)
{
    static const struct option opts[] = {{"model", required_argument, NULL, 'm'},
                                         {"adapter", required_argument, NULL, 'A'},
                                         {"out", required_argument, NULL, 'o'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *model = NULL, *adapter = NULL, *out = NULL;
    int c, li;
    optind = 1;
    opterr = 0;
    while ((li = -1, c = getopt_long(argc, argv, ":hm:", opts, &li)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 'A': adapter = optarg; break;
        case 'o': out = optarg; break;
        case 'h': help(); return CLI_OK;
        case ':': return cli_usage_error("merge", "option %s needs a value", argv[optind - 1]);
        default: return cli_unknown_option("merge", argv[optind - 1], opts);
        }
    }
    if (optind < argc)
        return cli_usage_error("merge", "unexpected argument '%s'", argv[optind]);
    if (!model || !adapter || !out)
        return cli_usage_error("merge", "--model, --adapter and --out are required");
    st_adapter *a = NULL;
    st_status s = st_adapter_open(adapter, &a);
    if (s != ST_OK)
        return cli_fail(s);
    fprintf(stderr, "adapter: %s, %s\n", adapter, st_adapter_describe(a));
    st_merge_report r;
    s = st_checkpoint_merge_adapter(model, a, out, &r);
    st_adapter_close(a);
    if (s != ST_OK)
        return cli_fail(s);
    char size[32];
    printf("merged: %zu of %zu weights of %s took the adapter's products; %s/model.safetensors "
           "(%s, %s) with the config and tokenizer files\n",
           r.merged, r.tensors, model, out, r.dtype, st_format_bytes(r.bytes, size, sizeof size));
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "strata merge: error: writing standard output failed\n");
        return CLI_FAILED;
    }
    return CLI_OK;
}
