/*
 * cmd_generate.c - `strata generate`: sample text from a trained model with
 * the KV cache (each new token costs one position, not the whole sequence),
 * and `strata eval`: loss and perplexity of a model on data.
 */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/clock.h"
#include "core/file.h"
#include "core/utf8.h"
#include "cli/cli.h"
#include "strata/adapter.h"
#include "strata/checkpoint.h"
#include "strata/infer.h"
#include "strata/tokenizer.h"
#include "strata/data.h"
#include "strata/stage.h"
#include "strata/pipe.h"
#include "strata/profiler.h"
#include "strata/progress.h"
#include "strata/sample.h"
#if STRATA_HAVE_MPI
#include "mpi/mpi_run.h"
#endif

/* Where to run a saved model: the device choice and how to split. */
enum { O_DTYPE = 300 }; /* long options without a letter */

typedef struct run_flags {
    const char *devices, *split, *mem_limit, *parallel;
    const char *tokenizer; /* --tokenizer, or NULL: the model folder's, if any */
    const char *adapter;   /* --adapter: a PEFT LoRA folder merged into the weights */
    long prefill;          /* generate: a prompt's tokens per pass (0: the default) */
    int dtype;             /* --dtype: the weights' storage (st_dtype), or -1: the folder's */
} run_flags;

/* Opens a session on dir's model over the chosen devices, split by the
 * planner (plan printed to stderr when there is more than one stage). */
static st_status open_session(const char *dir, const run_flags *f, st_infer_options *io,
                              cli_devices *devs, st_infer **in)
{
    st_checkpoint *ck = NULL;
    st_status s = st_checkpoint_open(dir, &ck);
    if (s != ST_OK)
        return s;
    if (cli_rank() == 0)
        fprintf(stderr, "model: %s, %s\n", dir, st_checkpoint_describe(ck));
    st_checkpoint_close(ck);
    if ((s = cli_devices_get(f->devices, true, devs)) != ST_OK ||
        (f->mem_limit && (s = cli_apply_mem_limit(f->mem_limit, devs)) != ST_OK))
        return s;
    io->split = f->split;
    io->parallel = f->parallel;
    io->weights_given = f->dtype >= 0;
    io->weights = f->dtype >= 0 ? (st_dtype)f->dtype : ST_F32;
    st_adapter *adapter = NULL;
    if (f->adapter) {
        st_status as = st_adapter_open(f->adapter, &adapter);
        if (as != ST_OK)
            return as;
        if (cli_rank() == 0)
            fprintf(stderr, "adapter: %s, %s, merged into the weights\n", f->adapter,
                    st_adapter_describe(adapter));
    }
    io->adapter = adapter;
    io->keep_all_devices = f->devices != NULL || getenv("STRATA_DEVICES") != NULL;
    io->quiet = true;
#if STRATA_HAVE_MPI
    if (st_mpi_active() && st_mpi_size() > 1) {
        /* One pipeline over the ranks, rank 0 leading; without --devices one
         * device per rank: the local rank's among those found. */
        if (!f->devices && devs->n > 1) {
            size_t pick = (size_t)st_mpi_local_rank() % devs->n;
            devs->dev[0] = devs->dev[pick];
            devs->index[0] = devs->index[pick];
            devs->n = 1;
        }
        io->mpi = true;
        io->dev_index = devs->index;
    }
#endif
    s = st_infer_open(dir, devs->dev, devs->n, io, in);
    st_adapter_close(adapter); /* merged into the weights: not needed past loading */
    io->adapter = NULL;
    if (s != ST_OK)
        return s;
    const st_plan *plan = st_infer_plan(*in);
    if (plan->n_stages > 1 && cli_rank() == 0) {
        cli_plan_opts po = {.split = f->split, .parallel = f->parallel,
                            .mem_limit = f->mem_limit, .shape = plan->shape,
                            .devices_explicit = io->keep_all_devices, .quiet = true};
        po.shape.micro_batches = io->micro_batches;
        cli_plan_print(plan, st_infer_desc(*in), io->mpi ? NULL : devs, st_infer_profiles(*in),
                       &po, stderr);
    }
    return ST_OK;
}

static void put_token(int tok)
{
    if (tok < 256)
        putchar(tok);
    else
        printf("<%d>", tok);
}

/* Writes s[0..n) as valid UTF-8 (each invalid part as U+FFFD, as the
 * tokenizers library decodes); returns how many bytes it took: all, or up
 * to a character cut off at the end unless `final`. */
static size_t put_utf8(const char *s, size_t n, bool final)
{
    char *out = malloc(3 * n + 1);
    if (!out) { /* as it is */
        fwrite(s, 1, n, stdout);
        return n;
    }
    size_t len = 0, took = st_utf8_clean(s, n, final, out, &len);
    fwrite(out, 1, len, stdout);
    free(out);
    return took;
}

/* Prints what the text of ids[0..n) adds beyond the *printed bytes shown
 * so far: decoded by the tokenizer (its special tokens left out), or ids
 * as bytes. Decoding the whole text each time keeps what a tokenizer does
 * across tokens (a character split over byte tokens, a stripped space); a
 * character still cut off waits for its next byte, unless `final`. */
static st_status show_text(st_tokenizer *tk, const int *ids, long n, size_t *printed, bool final)
{
    if (!tk) {
        for (long j = (long)*printed; j < n; j++)
            put_token(ids[j]);
        *printed = (size_t)n;
        fflush(stdout);
        return ST_OK;
    }
    int32_t *v = malloc(((size_t)n + 1) * sizeof *v);
    if (!v)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    for (long j = 0; j < n; j++)
        v[j] = ids[j];
    char *text = NULL;
    size_t len = 0;
    st_status s = st_tokenizer_decode(tk, v, (size_t)n, true, &text, &len);
    free(v);
    if (s != ST_OK)
        return s;
    if (len > *printed) {
        *printed += put_utf8(text + *printed, len - *printed, final);
        fflush(stdout);
    }
    free(text);
    return ST_OK;
}


/* The rest of a text; *newline: it ended with one. */
static st_status show_end(st_tokenizer *tk, const int *ids, long n, size_t *printed,
                          bool *newline)
{
    st_status s = show_text(tk, ids, n, printed, true);
    *newline = n > 0 && !tk && ids[n - 1] == '\n';
    if (tk && s == ST_OK) {
        int32_t last = n > 0 ? ids[n - 1] : -1;
        char *t = NULL;
        size_t len = 0;
        if (last >= 0 && st_tokenizer_decode(tk, &last, 1, true, &t, &len) == ST_OK)
            *newline = len > 0 && t[len - 1] == '\n';
        free(t);
    }
    return s;
}

static void generate_help(void)
{
    printf("usage: strata generate --model DIR [options]\n"
           "\n"
           "Continues a prompt with a trained model (a folder written by `strata train\n"
           "--out`, or a Hugging Face folder: config.json of a GPT-2, Llama, Mistral\n"
           "or Qwen2 model and model.safetensors or its shards). With the folder's\n"
           "tokenizer.json (or --tokenizer) the prompt is tokenized as the model was\n"
           "(with its BOS), the text printed as it comes, and generation stops at the\n"
           "tokenizer's EOS; without one tokens are bytes and ids of 256 and up print\n"
           "as <id>. Each new token runs one position through\n"
           "the model, reusing the keys and values of the earlier ones (KV cache).\n"
           "Under mpirun the model is split over the ranks (a stage each); rank 0\n"
           "prints.\n"
           "The text goes to stdout, the statistics to stderr: the prompt's tokens and\n"
           "time, the generated tokens, their rate, and the time spent loading.\n"
           "\n"
           "  -m, --model DIR     the model folder (required)\n"
           "  --adapter DIR       a LoRA adapter in PEFT's format (adapter_config.json,\n"
           "                      adapter_model.safetensors) merged into the weights\n"
           "  --dtype T           how the weight matrices are held on the devices: bf16,\n"
           "                      fp16 or fp32 (default: as the folder stores them, which\n"
           "                      loses nothing; fp32 with --adapter). Products widen\n"
           "                      16-bit weights to float as they read them; the KV\n"
           "                      cache is held in the same type\n"
           "  -p, --prompt TEXT   text to continue (default: a newline); give it several\n"
           "                      times to generate for several prompts at once (each\n"
           "                      with its own cache, all in one pass through the model\n"
           "                      per step; with the model split, in groups that keep\n"
           "                      every stage busy); each text is printed under a line\n"
           "                      '--- K of N ---'\n"
           "  -n, --tokens N      tokens to generate (default 200). Beyond the model's\n"
           "                      positions the context slides: the last half is read\n"
           "                      again from position 0 and generation goes on\n"
           "  --temperature X     0 picks the most likely token (default 0.8)\n"
           "  --top-k K           sample among the K most likely, 0 for all (default 40)\n"
           "  --top-p P           then among the fewest whose probabilities sum to P\n"
           "                      (default 1: all)\n"
           "  --min-p P           then among those at least P times as likely as the\n"
           "                      likeliest (default 0: all)\n"
           "  --repeat-penalty X  divide the logit (multiply when negative) of each token\n"
           "                      among the last --repeat-last-n (default 64) by X\n"
           "                      (default 1: none)\n"
           "  --stop TEXT         end a text once its generated part holds TEXT (shown);\n"
           "                      give it up to 16 times\n"
           "  --prompt-file PATH  the prompt from a file, '-' for standard input (counts\n"
           "                      as a --prompt)\n"
           "  --seed N            sampling seed (default 1)\n"
           "  --profile           time every kernel on the devices: a table for the\n"
           "                      prompt, and one per generated token (on stderr)\n"
           "  --prefill N         prompt tokens read in one pass through the model (one\n"
           "                      matrix product per layer for all of them, the prompts\n"
           "                      sharing them; default 128; 1 reads token by token)\n"
           "  --devices CHOICE    which devices; the planner splits the model over them\n"
           "                      (each stage keeps the KV cache of its own layers)\n"
           "  --split HOW         auto (default), uniform, ratio:3,1, layers:0-5,6-11\n"
           "  --parallel HOW      auto (default: the planner weighs replicas x stages),\n"
           "                      pipeline, data (a whole model per device), dp:D,pp:S\n"
           "                      (dp:D alone: S = 1; pp:S alone: D = 1)\n"
           "  --mem-limit LIST    the most the run may hold on each device, e.g. 0:2G,1:6G\n"
           "                      (weights, gradients, optimizer state, activations,\n"
           "                      buffers; the planner's one-time device measurement is\n"
           "                      not counted against it)\n"
           "  --tokenizer PATH    a Hugging Face tokenizer.json (or a folder holding one)\n"
           "                      instead of the model folder's\n"
           "  -h, --help          this text\n"
           "\n"
           "Exit status: 0 done; 1 a device failure; 2 bad options or model files.\n");
}

/* Whether the generated text (ids gen[0..n), decoded) holds one of the stop
 * strings. Decoded whole each time: a stop string may span tokens. */
static st_status stopped(const st_tokenizer *tk, const int *gen, long n, const char *const *stops,
                         int n_stops, bool *stop)
{
    *stop = false;
    char *text = NULL;
    size_t len = 0;
    st_status s = ST_OK;
    if (tk) {
        s = st_tokenizer_decode(tk, gen, (size_t)n, true, &text, &len);
    } else if ((text = malloc((size_t)n + 1)) != NULL) {
        for (long i = 0; i < n; i++) /* bytes; ids past 255 stand for no text */
            text[len] = gen[i] < 256 ? (char)gen[i] : '\x01', len++;
        text[len] = '\0';
    } else {
        s = st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    }
    for (int k = 0; s == ST_OK && k < n_stops && !*stop; k++) {
        size_t sl = strlen(stops[k]);
        for (size_t at = 0; !*stop && at + sl <= len; at++)
            *stop = memcmp(text + at, stops[k], sl) == 0;
    }
    free(text);
    return s;
}

/* What generate watches as tokens come (st_infer_run's callback, also
 * called after each step): each text's stop strings, the streamed text,
 * the count and progress of the tokens. */
typedef struct gen_watch {
    st_infer *in;
    st_tokenizer *tk;
    const char *const *stops;
    int n_stops;
    bool stream;
    size_t *printed;
    long *shown;
    long counted[64]; /* tokens counted per sequence */
    long total, n;
    st_progress *pr;
    st_status s; /* the first failure */
} gen_watch;

static void watch_token(void *ctx, int id)
{
    gen_watch *w = ctx;
    st_infer_info info;
    st_status s = w->s != ST_OK ? w->s : st_infer_get(w->in, id, &info);
    if (s == ST_OK && info.n_generated > w->counted[id]) {
        w->total += info.n_generated - w->counted[id];
        w->counted[id] = info.n_generated;
        if (!w->stream)
            st_progress_update(w->pr, (uint64_t)w->total);
    }
    if (s == ST_OK && info.n_tokens > w->shown[id] && info.finish == ST_FINISH_NONE &&
        w->n_stops > 0) {
        bool stop = false;
        s = stopped(w->tk, info.tokens + info.n_prompt, info.n_tokens - info.n_prompt, w->stops,
                    w->n_stops, &stop);
        if (s == ST_OK && stop) /* the text reached a stop string: it ends there */
            s = st_infer_end(w->in, id, ST_FINISH_STOP);
    }
    if (s == ST_OK && w->stream && info.n_tokens > w->shown[id]) {
        s = show_text(w->tk, info.tokens, info.n_tokens, &w->printed[id], false);
        w->shown[id] = info.n_tokens;
    }
    if (s == ST_OK && !w->stream)
        w->shown[id] = info.n_tokens;
    w->s = s;
}

/* Generates for one or more prompts, each a sequence of an inference
 * session: every step reads a chunk of the prompts still being read and
 * draws a token for each of the others, all in one pass. One prompt
 * streams its text as it comes; several print when all are done, each
 * under a header line. A sequence that reaches the model's P positions
 * slides (the session keeps its last P/2 tokens, reads them again from
 * position 0 and goes on), so -n may exceed the positions. */
static int generate(const char *model, const run_flags *rf, const char *const *prompts,
                    int n_prompts, long n, const st_sampling *sp, uint64_t seed,
                    const char *const *stops, int n_stops)
{
    double t_start = st_now_s();
    cli_devices devs = {0};
    st_infer *in = NULL;
    st_infer_options io = {.max_seqs = n_prompts, .prefill = (int)rf->prefill};
    st_status s = open_session(model, rf, &io, &devs, &in);
    if (s != ST_OK) {
        st_infer_close(in);
        if (devs.list)
            cli_devices_put(&devs);
        return cli_fail(s);
    }
    if (!st_infer_leads(in)) { /* under mpirun: rank 0 generates, this rank's stages follow */
        s = st_infer_follow(in);
        st_infer_close(in);
        cli_devices_put(&devs);
        return s == ST_OK ? CLI_OK : cli_fail(s);
    }
    const st_model_config *cfg = st_infer_config(in);
    int V = cfg->vocab_size, P = st_infer_ctx(in);
    st_pipe *g = st_infer_pipe(in);
    /* The prompts' tokens: the model's tokenizer's (with its BOS), else bytes. */
    st_tokenizer *tk = NULL;
    s = cli_open_tokenizer(model, rf->tokenizer, &tk);
    int eos = tk ? st_tokenizer_eos(tk) : -1;
    /* Published models pad their vocabulary past the tokenizer's ids (to a
     * multiple of 64 or 128): those ids have no text and are never sampled. */
    int sample_V = V;
    if (s == ST_OK && tk && st_tokenizer_vocab_size(tk) < (size_t)V) {
        sample_V = (int)st_tokenizer_vocab_size(tk);
        fprintf(stderr,
                "model: its vocabulary of %d is padded past the tokenizer's %d ids; ids %d to "
                "%d are never sampled\n",
                V, sample_V, sample_V, V - 1);
    }
    int *id = calloc((size_t)n_prompts, sizeof *id);
    size_t *printed = calloc((size_t)n_prompts, sizeof *printed); /* bytes of text shown */
    long *shown = calloc((size_t)n_prompts, sizeof *shown);       /* tokens shown */
    if (s == ST_OK && (!id || !printed || !shown))
        s = st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    long prompt_tokens = 0, longest = 0;
    for (int i = 0; s == ST_OK && i < n_prompts; i++) {
        int32_t *ids = NULL;
        size_t len = 0, cap_i = 0, pl = strlen(prompts[i]);
        if (tk) {
            s = st_tokenizer_encode(tk, prompts[i], pl, true, &ids, &len, &cap_i);
        } else if ((ids = malloc((pl + 1) * sizeof *ids)) != NULL) {
            for (size_t j = 0; j < pl; j++)
                ids[j] = (unsigned char)prompts[i][j];
            len = pl;
        } else {
            s = st_error(ST_ERR_HOST_MEMORY, "out of host memory");
        }
        st_infer_request r = {.prompt = ids, .n_prompt = len, .max_tokens = n, .sampling = *sp,
                              .seed = seed + (uint64_t)i * 0x9e3779b97f4a7c15ull, .eos = eos,
                              .vocab_limit = sample_V, .slide = true};
        if (s == ST_OK && len == 0)
            s = st_error(ST_ERR_INVALID, "prompt %d has no tokens", i + 1);
        else if (s == ST_OK && len > (size_t)P)
            s = st_error(ST_ERR_INVALID, "prompt %d has %zu tokens; the model takes at most %d",
                         i + 1, len, P);
        else if (s == ST_OK && (s = st_infer_add(in, &r, &id[i])) != ST_OK)
            st_error_context("prompt %d", i + 1);
        free(ids);
        prompt_tokens += (long)len;
        longest = (long)len > longest ? (long)len : longest;
    }
    bool stream = n_prompts == 1;
    st_infer_info info;
    if (s == ST_OK && stream && (s = st_infer_get(in, id[0], &info)) == ST_OK) {
        s = show_text(tk, info.tokens, info.n_tokens, &printed[0], false);
        shown[0] = info.n_tokens;
    }
    /* Progress: the prompts' tokens while they are read, then the generated
     * tokens when the text is not streamed. */
    st_progress pr;
    st_progress_begin(&pr, (uint64_t)prompt_tokens, "reading the prompt%s: tokens",
                      n_prompts > 1 ? "s" : "");
    bool reading_phase = true;
    long total = 0, slides = 0, steps = 0, profiled_from = -1;
    /* --profile: the prompt's passes, then the generated steps (loading
     * the model and building kernels left out) */
    size_t n_st = s == ST_OK ? st_pipe_n_stages(g) : 0;
    st_device *pdev[ST_PLAN_MAX_STAGES] = {NULL};
    for (size_t k = 0; st_profiler_enabled() && k < n_st && k < ST_PLAN_MAX_STAGES; k++)
        if (st_pipe_stage(g, k) && (pdev[k] = st_stage_device(st_pipe_stage(g, k))))
            st_profiler_reset(pdev[k]);
    double t0 = st_now_s(), t_prompt = 0;
    gen_watch w = {.in = in, .tk = tk, .stops = stops, .n_stops = n_stops, .stream = stream,
                   .printed = printed, .shown = shown, .pr = &pr, .n = n * n_prompts};
    /* The prompts: step by step until every one is read and has its first
     * token (timed and profiled as the prompt), then the rest streamed
     * through the stages (stepped with --profile, whose table is per step). */
    while (s == ST_OK && reading_phase && st_infer_active(in) > 0) {
        if ((s = st_infer_step(in)) != ST_OK)
            break;
        steps++;
        long left = 0;
        for (int i = 0; s == ST_OK && i < n_prompts; i++) {
            if ((s = st_infer_get(in, id[i], &info)) != ST_OK)
                break;
            left += info.prompt_left;
            if (info.n_generated > w.counted[id[i]])
                watch_token(&w, id[i]);
        }
        if (s == ST_OK)
            s = w.s;
        if (s != ST_OK)
            break;
        t_prompt = st_now_s() - t0;
        if (left > 0) {
            st_progress_update(&pr, (uint64_t)(prompt_tokens - left));
            continue;
        }
        /* the prompt's time includes its last tokens' pass, whose logits
         * gave the first new tokens */
        reading_phase = false;
        st_progress_end(&pr);
        if (st_profiler_enabled()) {
            fflush(stdout);
            s = cli_profile_report(pdev, n_st, 1, t_prompt * 1e3, 0, 0, stderr, NULL);
            fprintf(stderr, "(the prompt: %ld token%s read in %ld pass%s; a step above is "
                            "the whole prompt)\n",
                    prompt_tokens, prompt_tokens == 1 ? "" : "s", steps, steps == 1 ? "" : "es");
            for (size_t k = 0; k < n_st; k++)
                if (pdev[k])
                    st_profiler_reset(pdev[k]);
            profiled_from = steps;
        }
        if (!stream) {
            st_progress_begin(&pr, (uint64_t)n * (uint64_t)n_prompts, "generating: tokens");
            st_progress_update(&pr, (uint64_t)w.total);
        }
    }
    if (s == ST_OK && !st_profiler_enabled()) {
        if ((s = st_infer_run(in, watch_token, &w)) == ST_OK)
            s = w.s;
    }
    while (s == ST_OK && st_infer_active(in) > 0) {
        long before[64];
        for (int i = 0; i < n_prompts; i++)
            before[i] = st_infer_get(in, id[i], &info) == ST_OK ? info.n_generated : 0;
        if ((s = st_infer_step(in)) != ST_OK)
            break;
        steps++;
        for (int i = 0; s == ST_OK && i < n_prompts; i++)
            if ((s = st_infer_get(in, id[i], &info)) == ST_OK && info.n_generated > before[i])
                watch_token(&w, id[i]);
        if (s == ST_OK)
            s = w.s;
    }
    total = w.total;
    st_progress_end(&pr);
    double secs = st_now_s() - t0;
    if (s == ST_OK && profiled_from > 0 && steps > profiled_from) {
        fflush(stdout);
        long k = steps - profiled_from;
        s = cli_profile_report(pdev, n_st, k, (secs - t_prompt) * 1e3 / (double)k, 0, 0, stderr,
                               NULL);
        fprintf(stderr, "(a step above is one generated token of each of the %d prompt%s)\n",
                n_prompts, n_prompts == 1 ? "" : "s");
    }
    for (int i = 0; s == ST_OK && i < n_prompts; i++) {
        if ((s = st_infer_get(in, id[i], &info)) != ST_OK)
            break;
        slides += info.slides;
        if (!stream)
            printf("%s--- %d of %d ---\n", i ? "\n" : "", i + 1, n_prompts);
        bool newline = false;
        s = show_end(tk, info.tokens, info.n_tokens, &printed[i], &newline);
        if (!newline)
            putchar('\n');
    }
    if (s == ST_OK) {
        fflush(stdout);
        double gen = secs - t_prompt;
        char many[48] = "", reps[48] = "";
        if (st_pipe_n_replicas(g) > 1)
            snprintf(reps, sizeof reps, "%zu replicas of ", st_pipe_n_replicas(g));
        if (n_prompts > 1)
            snprintf(many, sizeof many, " (%d prompts at once)", n_prompts);
        fprintf(stderr,
                "prompt: %ld token%s in %.2f s | generated %ld token%s in %.2f s | %.1f tok/s%s | "
                "loading the model and kernels took %.2f s | %s%zu stage%s\n",
                prompt_tokens, prompt_tokens == 1 ? "" : "s", t_prompt, total,
                total == 1 ? "" : "s", gen, gen > 0 ? total / gen : 0.0, many,
                t0 - t_start, reps, st_pipe_n_stages(g), st_pipe_n_stages(g) == 1 ? "" : "s");
        if (slides)
            fprintf(stderr,
                    "the text outgrew the model's %d positions: %ld time%s the context slid to "
                    "its last %d tokens (read again from position 0)\n",
                    P, slides, slides == 1 ? "" : "s", P / 2 > 0 ? P / 2 : 1);
    }
    free(id);
    free(printed);
    free(shown);
    st_tokenizer_free(tk);
    st_infer_close(in);
    if (devs.list)
        cli_devices_put(&devs);
    return s == ST_OK ? CLI_OK : cli_fail(s);
}

/* --prompt-file: a regular file's text, or standard input's for "-" (read
 * to its end: the user sends it). */
static st_status read_prompt(const char *path, char **text, size_t *len)
{
    if (strcmp(path, "-") != 0)
        return st_read_text_file(path, "prompt", text, len);
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        size_t got = fread(buf + n, 1, cap - n - 1, stdin);
        n += got;
        if (got == 0)
            break;
        if (n + 1 == cap) {
            char *more = cap < ((size_t)1 << 30) ? realloc(buf, cap * 2) : NULL;
            if (!more) {
                free(buf);
                return st_error(ST_ERR_HOST_MEMORY, "the prompt on standard input is over %zu "
                                                    "bytes", cap);
            }
            buf = more;
            cap *= 2;
        }
    }
    if (!buf)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    if (ferror(stdin)) {
        free(buf);
        return st_error(ST_ERR_IO, "cannot read the prompt from standard input");
    }
    buf[n] = '\0';
    *text = buf;
    *len = n;
    return ST_OK;
}

/* --prompt-file texts: freed by cmd_generate whatever generate_command returns. */
static char *from_files[64];
static int n_files;

static int generate_command(int argc, char **argv);

int cmd_generate(int argc, char **argv)
{
    int rc = generate_command(argc, argv);
    for (int i = 0; i < n_files; i++)
        free(from_files[i]);
    n_files = 0;
    return rc;
}

static int generate_command(int argc, char **argv)
{
    static const struct option opts[] = {{"model", required_argument, NULL, 'm'},
                                         {"prompt", required_argument, NULL, 'p'},
                                         {"tokens", required_argument, NULL, 'n'},
                                         {"temperature", required_argument, NULL, 't'},
                                         {"top-k", required_argument, NULL, 'k'},
                                         {"seed", required_argument, NULL, 's'},
                                         {"devices", required_argument, NULL, 'd'},
                                         {"split", required_argument, NULL, 'S'},
                                         {"parallel", required_argument, NULL, 'P'},
                                         {"mem-limit", required_argument, NULL, 'M'},
                                         {"tokenizer", required_argument, NULL, 'z'},
                                         {"prefill", required_argument, NULL, 'F'},
                                         {"profile", no_argument, NULL, 'R'},
                                         {"top-p", required_argument, NULL, 'T'},
                                         {"min-p", required_argument, NULL, 'N'},
                                         {"repeat-penalty", required_argument, NULL, 'r'},
                                         {"repeat-last-n", required_argument, NULL, 'L'},
                                         {"stop", required_argument, NULL, 'x'},
                                         {"prompt-file", required_argument, NULL, 'f'},
                                         {"adapter", required_argument, NULL, 'A'},
                                         {"dtype", required_argument, NULL, O_DTYPE},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *model = NULL, *prompt = "\n";
    const char *prompts[64];
    int n_prompts = 0;
    run_flags rf = {.prefill = 128, .dtype = -1};
    const char *cmd_name = "generate";
    long n = 200, top_k = 40, seed = 1, last_n = 64;
    double temperature = 0.8, top_p = 1, min_p = 0, penalty = 1;
    const char *stops[16];
    int n_stops = 0;
    int c, li;
    optind = 1;
    opterr = 0;
    while ((li = -1, c = getopt_long(argc, argv, ":hn:m:p:", opts, &li)) != -1) {
        bool ok = true;
        switch (c) {
        case 'm': model = optarg; break;
        case 'A': rf.adapter = optarg; break;
        case O_DTYPE:
            if ((rf.dtype = cli_weights_dtype(optarg)) < 0)
                return cli_usage_error(cmd_name, "bad value '%s' for --dtype: bf16, fp16 or fp32",
                                       optarg);
            break;
        case 'p':
            if (n_prompts == 64)
                return cli_usage_error("generate", "at most 64 prompts at once");
            prompt = prompts[n_prompts++] = optarg;
            break;
        case 'n': ok = cli_parse_long(optarg, 0, 1L << 30, &n); break;
        case 't': ok = cli_parse_double(optarg, 0, 100, &temperature); break;
        case 'k': ok = cli_parse_long(optarg, 0, 1L << 30, &top_k); break;
        case 's': ok = cli_parse_long(optarg, 0, 1L << 62, &seed); break;
        case 'd': rf.devices = optarg; break;
        case 'S': rf.split = optarg; break;
        case 'P': rf.parallel = optarg; break;
        case 'M': rf.mem_limit = optarg; break;
        case 'z': rf.tokenizer = optarg; break;
        case 'F': ok = cli_parse_long(optarg, 1, 1 << 16, &rf.prefill); break;
        case 'R': st_profiler_enable(true); break;
        case 'T': ok = cli_parse_double(optarg, 1e-9, 1, &top_p); break;
        case 'N': ok = cli_parse_double(optarg, 0, 1, &min_p); break;
        case 'r': ok = cli_parse_double(optarg, 1e-3, 1e3, &penalty); break;
        case 'L': ok = cli_parse_long(optarg, 0, 4096, &last_n); break;
        case 'x':
            if (n_stops == 16)
                return cli_usage_error("generate", "at most 16 --stop strings");
            if (!*optarg)
                return cli_usage_error("generate", "--stop needs a non-empty text");
            stops[n_stops++] = optarg;
            break;
        case 'f': {
            if (n_prompts == 64)
                return cli_usage_error("generate", "at most 64 prompts at once");
            char *text = NULL;
            size_t tl = 0;
            st_status fs = read_prompt(optarg, &text, &tl);
            if (fs != ST_OK)
                return cli_fail(fs);
            prompt = prompts[n_prompts++] = from_files[n_files++] = text;
            break;
        }
        case 'h': generate_help(); return CLI_OK;
        case ':': return cli_usage_error("generate", "option %s needs a value", argv[optind - 1]);
        default: return cli_unknown_option("generate", argv[optind - 1], opts);
        }
        if (!ok)
            return cli_usage_error("generate", "bad value '%s' for %s%s: %s", optarg,
                                   li >= 0 ? "--" : "", li >= 0 ? opts[li].name : "-n",
                                   cli_expected());
    }
    if (optind < argc)
        return cli_usage_error("generate", "unexpected argument '%s'", argv[optind]);
    if (!model)
        return cli_usage_error("generate", "--model DIR is required");
    if (cli_check_plan_flags(rf.split, rf.parallel, rf.mem_limit) != ST_OK)
        return cli_usage_error("generate", "%s", st_last_error());
    for (int i = 0; i < n_prompts; i++)
        if (!*prompts[i])
            return cli_usage_error("generate",
                                   "prompt %d is empty: give at least one character", i + 1);
    if (n_prompts == 0)
        prompts[n_prompts++] = prompt;
    st_sampling sp = {.temperature = temperature, .top_k = (int)top_k, .top_p = top_p,
                   .min_p = min_p, .repeat_penalty = penalty, .repeat_last_n = (int)last_n};
    return generate(model, &rf, prompts, n_prompts, n, &sp, (uint64_t)seed, stops, n_stops);
}

static void eval_help(void)
{
    printf("usage: strata eval --model DIR [--data SRC] [options]\n"
           "\n"
           "Prints a model's mean loss per token and its perplexity on data: every\n"
           "token of a text or token file (windows of --seq tokens, each token\n"
           "predicted once), or --batches batches of the built-in addition task's\n"
           "validation problems (with exact-match accuracy). A text file is tokenized\n"
           "by the model folder's tokenizer.json (or --tokenizer), as bytes without one.\n"
           "\n"
           "  -m, --model DIR     the model folder (required)\n"
           "  --adapter DIR       a LoRA adapter in PEFT's format (adapter_config.json,\n"
           "                      adapter_model.safetensors) merged into the weights\n"
           "  --dtype T           how the weight matrices are held on the devices: bf16,\n"
           "                      fp16 or fp32 (default: as the folder stores them, which\n"
           "                      loses nothing; fp32 with --adapter). Products widen\n"
           "                      16-bit weights to float as they read them\n"
           "  --data SRC          'addition' (the default for a model without a\n"
           "                      tokenizer), a text file, a token file or JSON Lines\n"
           "                      (*.jsonl; the loss on completions and texts)\n"
           "  --tokenizer PATH    a Hugging Face tokenizer.json (or a folder holding one)\n"
           "                      for a text file, instead of the model folder's\n"
           "  --seq N             tokens per window (default: the model's positions)\n"
           "  --pack on|off       JSON Lines: several whole examples a window, each\n"
           "                      attending only itself (on, default), or one a window\n"
           "                      (off); the loss is the same either way\n"
           "  --batch N           windows per forward pass (default 8)\n"
           "  --batches N         addition: validation batches (default 16)\n"
           "  --micro-batches N   split each batch into N pipeline micro-batches\n"
           "                      (default: the planner's choice, timed)\n"
           "  --devices CHOICE    which devices; the planner splits the model over them\n"
           "  --split HOW         auto (default), uniform, ratio:3,1, layers:0-5,6-11\n"
           "  --parallel HOW      auto (default: the planner weighs replicas x stages),\n"
           "                      pipeline, data (a whole model per device), dp:D,pp:S\n"
           "                      (dp:D alone: S = 1; pp:S alone: D = 1)\n"
           "  --mem-limit LIST    the most the run may hold on each device, e.g. 0:2G,1:6G\n"
           "                      (weights, gradients, optimizer state, activations,\n"
           "                      buffers; the planner's one-time device measurement is\n"
           "                      not counted against it)\n"
           "  -h, --help          this text\n");
}

int cmd_eval(int argc, char **argv)
{
    static const struct option opts[] = {{"model", required_argument, NULL, 'm'},
                                         {"data", required_argument, NULL, 'D'},
                                         {"seq", required_argument, NULL, 'T'},
                                         {"batch", required_argument, NULL, 'B'},
                                         {"batches", required_argument, NULL, 'K'},
                                         {"micro-batches", required_argument, NULL, 'u'},
                                         {"devices", required_argument, NULL, 'd'},
                                         {"split", required_argument, NULL, 'S'},
                                         {"parallel", required_argument, NULL, 'P'},
                                         {"mem-limit", required_argument, NULL, 'M'},
                                         {"tokenizer", required_argument, NULL, 'z'},
                                         {"adapter", required_argument, NULL, 'A'},
                                         {"dtype", required_argument, NULL, O_DTYPE},
                                         {"pack", required_argument, NULL, 'k'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *model = NULL, *data = NULL;
    run_flags rf = {.dtype = -1};
    const char *cmd_name = "eval";
    long T = 0, B = 8, batches = 16, micro = 0; /* 0: the planner chooses */
    bool pack = true, pack_given = false;
    int c, li;
    optind = 1;
    opterr = 0;
    while ((li = -1, c = getopt_long(argc, argv, ":hm:", opts, &li)) != -1) {
        bool ok = true;
        switch (c) {
        case 'm': model = optarg; break;
        case 'D': data = optarg; break;
        case 'A': rf.adapter = optarg; break;
        case O_DTYPE:
            if ((rf.dtype = cli_weights_dtype(optarg)) < 0)
                return cli_usage_error(cmd_name, "bad value '%s' for --dtype: bf16, fp16 or fp32",
                                       optarg);
            break;
        case 'T': ok = cli_parse_long(optarg, 1, 1 << 20, &T); break;
        case 'B': ok = cli_parse_long(optarg, 1, 1 << 20, &B); break;
        case 'K': ok = cli_parse_long(optarg, 1, 1 << 20, &batches); break;
        case 'u': ok = cli_parse_long(optarg, 1, 1 << 20, &micro); break;
        case 'd': rf.devices = optarg; break;
        case 'S': rf.split = optarg; break;
        case 'P': rf.parallel = optarg; break;
        case 'M': rf.mem_limit = optarg; break;
        case 'z': rf.tokenizer = optarg; break;
        case 'k':
            if (strcmp(optarg, "on") != 0 && strcmp(optarg, "off") != 0)
                return cli_usage_error("eval", "bad value '%s' for --pack: on or off", optarg);
            pack = strcmp(optarg, "on") == 0;
            pack_given = true;
            break;
        case 'h': eval_help(); return CLI_OK;
        case ':': return cli_usage_error("eval", "option %s needs a value", argv[optind - 1]);
        default: return cli_unknown_option("eval", argv[optind - 1], opts);
        }
        if (!ok)
            return cli_usage_error("eval", "bad value '%s' for --%s: %s", optarg, opts[li].name,
                                   cli_expected());
    }
    if (optind < argc)
        return cli_usage_error("eval", "unexpected argument '%s'", argv[optind]);
    if (!model)
        return cli_usage_error("eval", "--model DIR is required");
    if (cli_check_plan_flags(rf.split, rf.parallel, rf.mem_limit) != ST_OK)
        return cli_usage_error("eval", "%s", st_last_error());
    st_dataset *ds = NULL;
    st_tokenizer *tk = NULL;
    st_status s = cli_open_tokenizer(model, rf.tokenizer, &tk);
    if (s == ST_OK && tk && !data) {
        /* A text model (it has a tokenizer) scored on byte sums means nothing. */
        st_tokenizer_free(tk);
        return cli_usage_error("eval",
                               "the model has a tokenizer (%s): give --data with a text or token "
                               "file to score it on (the built-in addition task is for byte "
                               "models; --data addition runs it anyway)",
                               rf.tokenizer ? rf.tokenizer : "in its folder");
    }
    if (s == ST_OK)
        s = st_dataset_open_text(data, tk, &ds);
    st_tokenizer_free(tk);
    if (s != ST_OK)
        return cli_fail(s);
    if (st_dataset_fixed_seq(ds))
        fprintf(stderr, "data: %s\n", st_dataset_describe(ds));
    else /* every window of the file is scored, not its validation part alone */
        fprintf(stderr, "data: %s; eval scores all of it\n", st_dataset_describe(ds));
    st_model_config cfg = {0};
    if ((s = st_checkpoint_config(model, &cfg)) != ST_OK) {
        st_dataset_destroy(ds);
        return cli_fail(s);
    }
    int fixed = st_dataset_fixed_seq(ds);
    if (!T)
        T = fixed ? fixed : cfg.n_positions;
    if (fixed && T != fixed) {
        st_dataset_destroy(ds);
        return cli_usage_error("eval", "the addition task has sequences of %d tokens: leave --seq out",
                               fixed);
    }
    if (T > cfg.n_positions) {
        st_dataset_destroy(ds);
        return cli_usage_error("eval", "--seq %ld is longer than the model's %d positions", T,
                               cfg.n_positions);
    }
    if (st_dataset_vocab_needed(ds) > cfg.vocab_size) {
        /* The message first: it reads the dataset, which goes next. */
        s = st_error(ST_ERR_INVALID, "the data has tokens up to %d; the model's vocabulary is %d",
                     st_dataset_vocab_needed(ds) - 1, cfg.vocab_size);
        st_dataset_destroy(ds);
        return cli_fail(s);
    }
    cli_note_cut_examples("eval", ds, T);
    if (pack_given && !st_dataset_examples(ds, ST_ALL)) {
        st_dataset_destroy(ds);
        return cli_usage_error("eval", "--pack is for JSON Lines data (a .jsonl file of "
                                       "examples)");
    }
    cli_note_packing(stderr, ds, pack, T);
    size_t windows = fixed ? (size_t)(batches * B) : st_dataset_windows(ds, ST_ALL, (int)T);
    if (!windows) {
        s = st_error(ST_ERR_INVALID, "'%s' is shorter than one window of %ld tokens",
                     st_dataset_name(ds), T + 1);
        st_dataset_destroy(ds);
        return cli_fail(s);
    }
    if (micro && B % micro != 0) {
        st_dataset_destroy(ds);
        return cli_usage_error("eval", "--batch %ld does not split into %ld micro-batches", B,
                               micro);
    }
    cli_devices devs = {0};
    st_infer *in = NULL;
    st_infer_options io = {.score_batch = (int)B, .score_seq = (int)T,
                           .micro_batches = (int)micro};
    s = open_session(model, &rf, &io, &devs, &in);
    size_t N = (size_t)B * T;
    int32_t *tok = malloc(N * sizeof *tok), *tgt = malloc(N * sizeof *tgt);
    int32_t *pos = st_dataset_packed(ds) ? malloc(N * sizeof *pos) : NULL;
    float *probs = fixed ? malloc(N * cfg.vocab_size * sizeof *probs) : NULL;
    if (s == ST_OK && (!tok || !tgt || (fixed && !probs) || (st_dataset_packed(ds) && !pos)))
        s = st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    double sum = 0, t0 = st_now_s();
    long count = 0, exact = 0;
    size_t n_batches = (windows + (size_t)B - 1) / (size_t)B;
    st_progress pr;
    st_progress_begin(&pr, n_batches, "evaluating %s: batches", st_dataset_name(ds));
    for (size_t k = 0; s == ST_OK && k < n_batches; k++) {
        st_progress_update(&pr, k);
        double bs = 0;
        long bc = 0;
        if ((s = st_dataset_batch_pos(ds, fixed ? ST_VAL : ST_ALL, 0, k, (int)B, (int)T, tok, tgt,
                                      pos)) != ST_OK)
            break;
        for (size_t w = k * (size_t)B; w < (k + 1) * (size_t)B; w++)
            if (w >= windows) /* past the last window: the batch wrapped; count nothing */
                for (long t = 0; t < T; t++)
                    tgt[(w - k * (size_t)B) * (size_t)T + (size_t)t] = -1;
        if ((s = st_infer_score(in, tok, tgt, pos, &bs, &bc, probs)) != ST_OK)
            break;
        sum += bs;
        count += bc;
        if (fixed) {
            for (long b = 0; b < B; b++) {
                bool all = true;
                for (long t = 0; t < T && all; t++) {
                    int want = tgt[b * T + t];
                    if (want < 0)
                        continue;
                    const float *p = probs + ((size_t)b * T + (size_t)t) * cfg.vocab_size;
                    int best = 0;
                    for (int v = 1; v < cfg.vocab_size; v++)
                        if (p[v] > p[best])
                            best = v;
                    all = best == want;
                }
                exact += all;
            }
        }
    }
    st_progress_end(&pr);
    if (s == ST_OK) {
        double loss = count ? sum / count : 0;
        printf("eval: %s | %ld tokens | loss %.4f | perplexity %.3f", st_dataset_name(ds), count,
               loss, exp(loss));
        if (fixed)
            printf(" | exact match %.1f%% of %zu problems", 100.0 * exact / (double)windows,
                   windows);
        printf(" | %.1f s\n", st_now_s() - t0);
        if (!isfinite(loss))
            s = st_error(ST_ERR_NUMERIC,
                         "the loss is not finite: the model's weights hold NaN or infinite "
                         "values (see the warnings above), or overflow on this data");
    }
    free(tok);
    free(tgt);
    free(pos);
    free(probs);
    st_infer_close(in);
    if (devs.list)
        cli_devices_put(&devs);
    st_dataset_destroy(ds);
    return s == ST_OK ? CLI_OK : cli_fail(s);
}
