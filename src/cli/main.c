/*
 * main.c - the `strata` command: dispatches to one function per command.
 */
#include <stdio.h>
#include <string.h>

#include <stdlib.h>

#include "cli/cli.h"
#include "strata/progress.h"
#include "strata_config.h"
#if STRATA_HAVE_MPI
#include "mpi/mpi_run.h"
#endif

typedef struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} command;

static const command commands[] = {
    {"devices", cmd_devices, "list the OpenCL devices (--json for tools)"},
    {"check", cmd_check, "check kernels and GEMM on each device against a C reference"},
    {"plan", cmd_plan, "show how a model would be split over the devices"},
    {"train", cmd_train, "train a GPT-2 or Llama-family model (default: the addition task)"},
    {"generate", cmd_generate, "continue a prompt with a trained model (KV cache)"},
    {"eval", cmd_eval, "loss and perplexity of a trained model on data"},
    {"tune", cmd_tune, "tune CLBlast's GEMM kernels for each device (kept when faster)"},
    {"tokenize", cmd_tokenize, "text to token ids (and back) with a Hugging Face tokenizer"},
    {"bench", cmd_bench, "measure pipeline scaling over 1, 2, 4... devices (--pipeline)"},
};

/* How many ranks a launcher (mpirun, srun) started, 0 when none. */
static int launched_ranks(void)
{
    const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *v = getenv(vars[i]);
        if (v && atoi(v) > 0)
            return atoi(v);
    }
    return 0;
}

/* `strata train` under mpirun with several ranks: MPI up, rank 0 speaks,
 * a failing rank ends the whole job with its message. */
static int run_ranks(const command *c, int argc, char **argv, int ranks)
{
#if STRATA_HAVE_MPI
    st_status s = st_mpi_start(&argc, &argv);
    if (s != ST_OK) {
        fprintf(stderr, "strata: error: %s\n", st_last_error());
        if (st_mpi_active())
            st_mpi_abort(CLI_FAILED);
        return CLI_FAILED;
    }
    int rank = st_mpi_rank();
    if ((s = st_mpi_check_same_args(argc, argv)) != ST_OK) {
        if (rank == 0)
            fprintf(stderr, "strata: error: %s\n", st_last_error());
        st_mpi_abort(CLI_USAGE);
    }
    /* Ranks other than 0 print nothing but errors. */
    if (rank != 0 && !freopen("/dev/null", "w", stdout))
        fprintf(stderr, "strata: rank %d: cannot silence stdout\n", rank);
    cli_set_rank(rank);
    if (rank != 0)
        st_progress_set_enabled(0); /* one progress line on a shared terminal */
    (void)ranks;
    int rc = c->run(argc - 1, argv + 1);
    /* The message is out; the other ranks must not wait for this one, unless
     * they all failed together (then concurrent aborts would only race). */
    if (rc != CLI_OK && !cli_failed_together())
        st_mpi_abort(rc);
    st_mpi_stop();
    return rc;
#else
    (void)c;
    (void)argc;
    (void)argv;
    fprintf(stderr,
            "strata: error: started as %d MPI ranks, but this strata was built without MPI "
            "support; install libopenmpi-dev and rebuild (meson setup -Dmpi=enabled), or run "
            "one process without mpirun\n",
            ranks);
    return CLI_USAGE;
#endif
}

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
    int ranks = launched_ranks();
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        if (strcmp(commands[i].name, name) != 0)
            continue;
        if (ranks > 1 && (strcmp(name, "train") == 0 || strcmp(name, "bench") == 0))
            return run_ranks(&commands[i], argc, argv, ranks);
        if (ranks > 1 && STRATA_HAVE_MPI) {
            fprintf(stderr,
                    "strata: error: `strata %s` runs in one process; under mpirun only `strata "
                    "train` and `strata bench --scaling` spread over ranks\n",
                    name);
            return CLI_USAGE;
        }
        if (ranks > 1)
            return run_ranks(&commands[i], argc, argv, ranks);
        return commands[i].run(argc - 1, argv + 1);
    }
    const char *names[sizeof commands / sizeof commands[0]];
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        names[i] = commands[i].name;
    const char *near = cli_nearest(name, names, sizeof names / sizeof names[0]);
    if (near)
        fprintf(stderr, "strata: unknown command '%s' (did you mean `strata %s`?)\n\n", name,
                near);
    else
        fprintf(stderr, "strata: unknown command '%s'\n\n", name);
    usage(stderr);
    return CLI_USAGE;
}
