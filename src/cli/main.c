/*
 * main.c - the `strata` command: dispatches to one function per command.
 */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "strata_config.h"

typedef struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} command;

static const command commands[] = {
    {"devices", cmd_devices, "list the OpenCL devices (--json for tools)"},
    {"check", cmd_check, "check kernels and GEMM on each device against a C reference"},
    {"plan", cmd_plan, "show how a model would be split over the devices"},
    {"train", cmd_train, "train a GPT model (default: the built-in addition task)"},
    {"generate", cmd_generate, "continue a prompt with a trained model (KV cache)"},
    {"eval", cmd_eval, "loss and perplexity of a trained model on data"},
    {"bench", cmd_bench, "measure pipeline scaling over 1, 2, 4... devices (--pipeline)"},
};

static void usage(FILE *f)
{
    fprintf(f,
            "usage: strata <command> [options]\n"
            "\n"
            "Strata trains and runs transformer models split layer by layer across\n"
            "OpenCL devices.\n"
            "\n"
            "commands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(f,
            "\n"
            "`strata <command> --help` describes a command's options.\n"
            "\n"
            "environment:\n"
            "  STRATA_DEVICES     default device choice (see --devices)\n"
            "  STRATA_CACHE_DIR   kernel cache folder (default $XDG_CACHE_HOME/strata)\n"
            "  STRATA_CACHE=0     do not cache built kernels\n"
            "  STRATA_CL_DIR      load kernel sources from this folder (development)\n"
            "  STRATA_LOG         info or debug for more messages\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return CLI_USAGE;
    }
    const char *name = argv[1];
    if (strcmp(name, "--help") == 0 || strcmp(name, "-h") == 0 || strcmp(name, "help") == 0) {
        if (strcmp(name, "help") == 0 && argc > 2) {
            char *sub[] = {argv[2], "--help", NULL};
            for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
                if (strcmp(commands[i].name, argv[2]) == 0)
                    return commands[i].run(2, sub);
        }
        usage(stdout);
        return CLI_OK;
    }
    if (strcmp(name, "--version") == 0 || strcmp(name, "version") == 0) {
        printf("strata %s (MPI support %s)\n", STRATA_VERSION,
               STRATA_HAVE_MPI ? "compiled in" : "not compiled in");
        return CLI_OK;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(commands[i].name, name) == 0)
            return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "strata: unknown command '%s'\n\n", name);
    usage(stderr);
    return CLI_USAGE;
}
