/*
 * main.c - the `strata` command: dispatches to one function per command.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
    {"merge", cmd_merge, "merge a LoRA adapter (PEFT's format) into a model folder"},
    {"serve", cmd_serve, "serve a model over HTTP with OpenAI's API (continuous batching)"},
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

static int dispatch(int argc, char **argv)
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
        if (ranks > 1 && (strcmp(name, "train") == 0 || strcmp(name, "bench") == 0 ||
                          strcmp(name, "generate") == 0))
            return run_ranks(&commands[i], argc, argv, ranks);
        if (ranks > 1 && STRATA_HAVE_MPI) {
            fprintf(stderr,
                    "strata: error: `strata %s` runs in one process; under mpirun only `strata "
                    "train`, `strata generate` and `strata bench --scaling` spread over "
                    "ranks\n",
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

/* Descriptors 0, 1 and 2 closed when strata starts (a daemon, `>&-`) are
 * filled with /dev/null before anything is opened: else the next file opened
 * (a --log-json, a checkpoint) would take the number, and text meant for the
 * terminal would land inside it. True when stdout was closed. */
static bool guard_std_descriptors(void)
{
    bool out_closed = false;
    for (int fd = 0; fd <= 2; fd++) {
        if (fcntl(fd, F_GETFD) != -1 || errno != EBADF)
            continue;
        if (fd == STDOUT_FILENO)
            out_closed = true;
        int n = open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY);
        if (n >= 0 && n != fd) { /* a lower one was closed too and is filled first */
            dup2(n, fd);
            close(n);
        }
    }
    return out_closed;
}

/* What was printed must have arrived: a full disk, a closed pipe or a closed
 * stdout is an error (exit 1), not a silent loss. */
static int check_stdout(int rc, bool closed_at_start)
{
    const char *why = NULL;
    int err = 0;
    if (closed_at_start) {
        why = "it was closed when strata started";
    } else {
        errno = 0;
        bool bad = fflush(stdout) != 0 || ferror(stdout);
        err = errno;
        if (fclose(stdout) != 0 && !bad) {
            bad = true;
            err = errno;
        }
        if (bad)
            why = err ? strerror(err) : "a write failed";
    }
    if (!why)
        return rc;
    fprintf(stderr,
            "strata: error: cannot write to standard output: %s; what this command printed "
            "there is incomplete\n",
            why);
    return rc == CLI_OK ? CLI_FAILED : rc;
}

int main(int argc, char **argv)
{
    bool out_closed = guard_std_descriptors();
    /* A reader that goes away (`strata train | head`) makes writes fail with
     * EPIPE instead of killing the process: training goes on and saves, and
     * the lost output is reported at the end. */
    signal(SIGPIPE, SIG_IGN);
    int rc = dispatch(argc, argv);
    return check_stdout(rc, out_closed);
}
