/*
 * cmd_train.c - `strata train`: options, the model's config, then the
 * training loop of strata/train.h with one log line per step (and JSON
 * lines with --log-json).
 */
#define _XOPEN_SOURCE 700 /* realpath */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "strata/checkpoint.h"
#include "strata/profiler.h"
#include "strata/train.h"
#include "strata/tune.h"
#if STRATA_HAVE_MPI
#include "mpi/mpi_run.h"
#endif

static void help(void)
{
    st_train_config d;
    st_train_config_defaults(&d);
    printf("usage: strata train [options]\n"
           "\n"
           "Trains a model of the GPT-2 or the Llama family (Llama, Mistral, Qwen2).\n"
           "Without --data it learns the built-in\n"
           "addition task (\"123+456=9750\": 3-digit sums, answer digits least\n"
           "significant first), which needs no file and shows learning within a\n"
           "minute or two on a CPU.\n"
           "\n"
           "data:\n"
           "  --data SRC          'addition' (default), a text file or a token file\n"
           "                      (*.bin, *.u16, *.tok: llm.c's format, uint16 or\n"
           "                      uint32, or raw uint16), or JSON Lines for fine-tuning\n"
           "                      (*.jsonl: {\"text\": ...} or {\"prompt\": ...,\n"
           "                      \"completion\": ...} a line, the loss on completions\n"
           "                      and texts); files: last 10%% validate\n"
           "  --pack on|off       JSON Lines: several whole examples a row, each with its\n"
           "                      own positions and attending only itself (on, default),\n"
           "                      or one example a row, padded (off)\n"
           "  --tokenizer PATH    a Hugging Face tokenizer.json (or a folder holding one)\n"
           "                      that turns a text file into tokens (default: the one\n"
           "                      beside --config's file, or the --resume or --init\n"
           "                      folder's;\n"
           "                      else bytes, vocabulary 256); kept in --out\n"
           "model (refused with --resume and --init: the model is the folder's):\n"
           "  --init DIR          start from the weights of a model folder: a Hugging\n"
           "                      Face one (GPT-2, Llama, Mistral, Qwen2; bf16, f16 or\n"
           "                      f32, sharded or not) or a Strata run's (its weights\n"
           "                      only); its tokenizer turns a text file into tokens.\n"
           "                      A new run from step 0: fresh optimizer and schedule,\n"
           "                      any data, learning rate and layout (fine-tuning)\n"
           "  --lora R            train LoRA adapters of rank R on the --init model, its\n"
           "                      weights frozen; --out gets a PEFT\n"
           "                      adapter folder (adapter_config.json and\n"
           "                      adapter_model.safetensors) for --adapter, strata merge\n"
           "                      and peft\n"
           "  --lora-alpha X      the adapters' scale is X / R (default: R, scale 1)\n"
           "  --lora-targets L    projections given adapters: all (default) or a list:\n"
           "                      Llama q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,\n"
           "                      down_proj; GPT-2 c_attn,attn.c_proj,c_fc,mlp.c_proj\n"
           "  --config FILE       a Hugging Face config.json: model_type gpt2, llama,\n"
           "                      mistral or qwen2 (the sizes below are then refused),\n"
           "                      trained from random weights\n"
           "  --arch A            gpt2 (default) or llama, for the sizes below\n"
           "  --layers N          transformer blocks (default %d)\n"
           "  --embd N            channels (default %d)\n"
           "  --heads N           attention heads (default %d)\n"
           "  --kv-heads N        llama: key/value heads, dividing --heads (default:\n"
           "                      --heads; fewer is grouped-query attention)\n"
           "  --inner N           MLP width (default 4 x --embd for gpt2, about\n"
           "                      8/3 x --embd, a multiple of 32, for llama)\n"
           "  --rope-theta X      llama: rotary embedding base (default 10000)\n"
           "  --tie               llama: the output head is the token embedding\n"
           "  --positions N       longest sequence (default: --seq)\n"
           "  --vocab N           vocabulary (default 256, or what a token file needs)\n"
           "training:\n"
           "  --batch N           sequences per step (default %d)\n"
           "  --seq N             tokens per sequence (default: 12 for addition, else 64)\n"
           "  --steps N           last step (default %ld)\n"
           "  --lr X              peak learning rate (default %g)\n"
           "  --min-lr X          learning rate at the end of the cosine decay (default a\n"
           "                      tenth of --lr: %g)\n"
           "  --warmup N          linear warmup steps (default %ld)\n"
           "  --weight-decay X    AdamW decay on 2-D weights (default %g)\n"
           "  --clip X            global gradient-norm limit, 0 for none (default %g)\n"
           "  --seed N            weights and batches (default %llu)\n"
           "  --eval-every N      validation every N steps, 0: only at the end (default %ld)\n"
           "  --eval-batches N    validation batches (default %d)\n"
           "  --on-nan WHAT       a NaN or infinite loss or gradient: abort (default: stop,\n"
           "                      saving nothing, naming the step and the stage) or skip\n"
           "                      (no update for that step; the run goes on)\n"
           "checkpoints and logs:\n"
           "  --out DIR           save the model and optimizer here (default: a new folder\n"
           "                      under $STRATA_RUNS_DIR or runs/; with --resume, the\n"
           "                      checkpoint's folder). Each save is committed whole: a\n"
           "                      crash leaves the last one. A folder holding another\n"
           "                      run's or model's checkpoint is refused\n"
           "  --force             write over such a folder\n"
           "  --save-every N      also every N steps\n"
           "  --keep N            complete saves kept in --out (default %d)\n"
           "  --resume DIR        continue from a checkpoint (bitwise the same as not\n"
           "                      stopping), saving back to DIR unless --out; batch,\n"
           "                      seq, seed, data (found by its absolute path; a moved\n"
           "                      copy with --data) and schedule come from it; --steps\n"
           "                      may extend the run\n"
           "  --stop-at N         stop after step N as if interrupted (saving to --out);\n"
           "                      the schedule still runs to --steps, for --resume\n"
           "  --log-every N       print every Nth step line (default 1)\n"
           "  --log-json FILE     also write every event as a JSON line\n"
           "  --profile           time every kernel launch, GEMM and copy on the devices\n"
           "                      (OpenCL event profiling) and print, per device, where a\n"
           "                      step's time goes: op, launches and ms per step, share,\n"
           "                      GB/s, GFLOPS (steps after the first; also in --log-json)\n"
           "devices and pipeline:\n"
           "  --devices CHOICE    which devices (default $STRATA_DEVICES, else all, of\n"
           "                      which the planner uses those that make the step\n"
           "                      faster); given explicitly, every chosen device gets a\n"
           "                      stage\n"
           "  --split HOW         auto (default: balance predicted times, fewer devices\n"
           "                      when faster), uniform, ratio:3,1, layers:0-5,6-11\n"
           "  --parallel HOW      auto (default: the planner weighs D replicas of an\n"
           "                      S-stage pipeline, each replica on batch/D sequences,\n"
           "                      gradients summed), pipeline, data (a whole model per\n"
           "                      device), dp:D,pp:S (dp:D alone: S = 1; pp:S alone:\n"
           "                      D = 1)\n"
           "  --micro-batches N   split each replica's batch into N pipeline micro-batches\n"
           "                      (default: the planner's choice, timed)\n"
           "  --schedule S        1f1b (default) or gpipe\n"
           "  --recompute WHEN    activation recomputation: each block keeps its input\n"
           "                      only and runs its forward again before its backward\n"
           "                      (the same losses, bitwise; blocks' activations once\n"
           "                      per stage instead of once per micro-batch in flight,\n"
           "                      for about a third more compute): auto (default: when\n"
           "                      no layout fits without), on, off\n"
           "  --shard-optimizer   with D replicas, each holds and updates 1/D of the AdamW\n"
           "                      moments, then the weights are gathered (ZeRO stage 1;\n"
           "                      the same losses, bitwise; the planner counts the\n"
           "                      smaller state; in one process and under mpirun)\n"
           "  --mem-limit LIST    the most the run may hold on each device, e.g. 0:2G,1:6G\n"
           "                      (weights, gradients, optimizer state, activations,\n"
           "                      buffers; the planner's one-time device measurement is\n"
           "                      not counted against it)\n"
           "  -h, --help          this text\n"
           "\n"
           "Under mpirun (`mpirun -np N strata train ...`, the same flags on every rank)\n"
           "each rank takes its local device and the model is split over all ranks;\n"
           "rank 0 prints the log and writes the checkpoint's index.\n"
           "\n"
           "Ctrl-C (SIGINT, SIGTERM, SIGHUP or SIGUSR1) finishes the current step,\n"
           "validates, saves to --out and exits 130; a second Ctrl-C quits at once.\n"
           "Output to a closed pipe (`strata train | head`) stops the printing, not the\n"
           "training: the run goes on, saves, and exits 1 saying the output was cut.\n"
           "Under mpirun,\n"
           "a signal to any rank (pkill -TERM -f 'strata train') stops every rank after\n"
           "the same step, and they save. Ctrl-C to mpirun itself reaches the ranks too,\n"
           "but Open MPI kills them 1 s later: enough to save only a small model.\n"
           "\n"
           "Exit status: 0 trained; 1 a device or run failure; 2 bad options or files;\n"
           "130 interrupted (after saving).\n",
           2, 64, 4, d.shape.batch, d.steps, (double)d.lr, (double)d.min_lr, d.warmup,
           (double)d.weight_decay, (double)d.clip, (unsigned long long)d.seed, d.eval_every,
           d.eval_batches, d.keep);
}

typedef struct log_ctx {
    FILE *json;
    const char *json_path;
    bool json_failed;
    int json_errno;
    long log_every;
    bool has_exact;
    double last_val, last_exact;
    bool have_val;
    long steps_seen, ms_n;
    double ms_sum;
    const char *out;
    /* --profile: the stages' devices, reset after the first step (kernel
     * builds and first-touch costs are not a step's). */
    st_device *const *prof_devs;
    size_t n_prof;
} log_ctx;

/* 24850 -> "24,850" */
static const char *commas(double x, char *buf, size_t size)
{
    char raw[64];
    snprintf(raw, sizeof raw, "%.0f", x);
    size_t len = strlen(raw), o = 0;
    for (size_t i = 0; i < len && o + 2 < size; i++) {
        if (i > 0 && (len - i) % 3 == 0 && raw[i - 1] != '-')
            buf[o++] = ',';
        buf[o++] = raw[i];
    }
    buf[o] = '\0';
    return buf;
}

/* 75 -> "1m15s", 4000 -> "1h06m", 9 -> "9s". */
static void eta_text(double s, char *out, size_t size)
{
    long t = (long)(s + 0.5);
    if (t >= 3600)
        snprintf(out, size, "%ldh%02ldm", t / 3600, t % 3600 / 60);
    else if (t >= 60)
        snprintf(out, size, "%ldm%02lds", t / 60, t % 60);
    else
        snprintf(out, size, "%lds", t);
}

static void on_event(const st_train_event *e, void *user)
{
    log_ctx *L = user;
    char a[64], b[64];
    switch (e->kind) {
    case ST_TRAIN_START:
        if (e->trained < e->params) {
            char c[48];
            printf("parameters: %s, of them %s trained (%.2f%%) | %s on the device\n",
                   commas((double)e->params, a, sizeof a), commas((double)e->trained, c, sizeof c),
                   100.0 * (double)e->trained / (double)e->params,
                   st_format_bytes(e->device_bytes, b, sizeof b));
        } else {
            printf("parameters: %s | %s on the device\n", commas((double)e->params, a, sizeof a),
                   st_format_bytes(e->device_bytes, b, sizeof b));
        }
        if (e->step)
            printf("resuming at step %ld of %ld\n", e->step, e->steps);
        if (L->json)
            fprintf(L->json,
                    "{\"event\":\"start\",\"step\":%ld,\"steps\":%ld,\"params\":%llu,"
                    "\"device_bytes\":%llu}\n",
                    e->step, e->steps, (unsigned long long)e->params,
                    (unsigned long long)e->device_bytes);
        break;
    case ST_TRAIN_STEP:
        if (e->skipped)
            printf("step %ld/%ld | loss %.4f | skipped: not finite (%s), no update\n", e->step,
                   e->steps, e->loss, e->where);
        if (L->steps_seen++ > 0) { /* the first step builds kernels: not a fair clock */
            L->ms_sum += e->ms;
            L->ms_n++;
        } else {
            for (size_t k = 0; k < L->n_prof; k++)
                if (L->prof_devs[k])
                    st_profiler_reset(L->prof_devs[k]);
        }
        if (!e->skipped && (e->step % L->log_every == 0 || e->step == e->steps || e->step == 1)) {
            char eta[32] = "";
            if (L->ms_n > 0 && e->steps > e->step)
                eta_text(L->ms_sum / L->ms_n * (double)(e->steps - e->step) / 1000.0, eta,
                         sizeof eta);
            printf("step %ld/%ld | loss %.4f | norm %.3f | lr %.1e | %.1f ms | %s tok/s%s%s\n",
                   e->step, e->steps, e->loss, e->grad_norm, e->lr, e->ms,
                   commas(e->tokens_per_s, a, sizeof a), eta[0] ? " | eta " : "", eta);
        }
        if (L->json)
            fprintf(L->json,
                    "{\"event\":\"step\",\"step\":%ld,\"steps\":%ld,\"loss\":%.9g,\"lr\":%.9g,"
                    "\"grad_norm\":%.9g,\"ms\":%.3f,\"tok_per_s\":%.1f,\"link_wait_ms\":%.3f%s}\n",
                    e->step, e->steps, isfinite(e->loss) ? e->loss : 0.0,
                    e->lr, isfinite(e->grad_norm) ? e->grad_norm : 0.0, e->ms, e->tokens_per_s,
                    e->wait_ms, e->skipped ? ",\"skipped\":true" : "");
        break;
    case ST_TRAIN_EVAL:
        L->have_val = true;
        L->last_val = e->val_loss;
        L->last_exact = e->exact;
        if (e->exact >= 0)
            printf("val  %ld/%ld | loss %.4f | exact match %.1f%%\n", e->step, e->steps,
                   e->val_loss, 100.0 * e->exact);
        else
            printf("val  %ld/%ld | loss %.4f | perplexity %.2f\n", e->step, e->steps,
                   e->val_loss, exp(e->val_loss));
        if (L->json)
            fprintf(L->json,
                    "{\"event\":\"eval\",\"step\":%ld,\"val_loss\":%.9g,\"val_tokens\":%ld%s",
                    e->step, e->val_loss, e->val_tokens, e->exact >= 0 ? "" : "}\n");
        if (L->json && e->exact >= 0)
            fprintf(L->json, ",\"exact\":%.6f}\n", e->exact);
        break;
    case ST_TRAIN_SAVE:
        printf("saved step %ld to %s\n", e->step, e->path);
        if (L->json)
            fprintf(L->json, "{\"event\":\"save\",\"step\":%ld}\n", e->step);
        break;
    case ST_TRAIN_DONE:
        if (e->interrupted)
            printf("interrupted: stopped after step %ld%s\n", e->step,
                   L->out ? "; --resume continues from the checkpoint" : " (no --out: not saved)");
        printf("done: step %ld of %ld in %.1f s | %s tok/s", e->step, e->steps, e->seconds,
               commas(e->tokens_per_s, a, sizeof a));
        if (L->have_val)
            printf(" | val loss %.4f", L->last_val);
        if (L->have_val && L->last_exact >= 0)
            printf(" | exact match %.1f%%", 100.0 * L->last_exact);
        printf(" | device memory peak %s\n", st_format_bytes(e->peak_bytes, b, sizeof b));
        if (L->json)
            fprintf(L->json,
                    "{\"event\":\"done\",\"steps\":%ld,\"seconds\":%.3f,\"tok_per_s\":%.1f,"
                    "\"peak_bytes\":%llu}\n",
                    e->steps, e->seconds, e->tokens_per_s, (unsigned long long)e->peak_bytes);
        break;
    }
    fflush(stdout);
    if (L->json && (fflush(L->json) != 0 || ferror(L->json)) && !L->json_failed) {
        /* Said once, now; the run goes on (its checkpoint matters more than
         * its log) and ends with exit 1. */
        L->json_failed = true;
        L->json_errno = errno;
        fprintf(stderr, "strata: error: cannot write the JSON log '%s': %s (training goes on; "
                        "the run will exit 1)\n",
                L->json_path, strerror(errno));
    }
}

/* A folder for a run without --out: $STRATA_RUNS_DIR (default runs) /
 * YYYYmmdd-HHMMSS, with -2, -3 ... if taken. Under MPI every rank takes rank
 * 0's choice (its time and suffix, sent as one number). */
static void run_dir_name(char *out, size_t size, const char *root, time_t when, int k)
{
    struct tm tm;
    char stamp[32];
    strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", localtime_r(&when, &tm));
    if (k == 1)
        snprintf(out, size, "%s/%s", root, stamp);
    else
        snprintf(out, size, "%s/%s-%d", root, stamp, k);
}

static st_status new_run_dir(char *out, size_t size)
{
    const char *root = getenv("STRATA_RUNS_DIR");
    if (!root || !*root)
        root = "runs";
    double pick = 0;
    bool rank0 = true;
#if STRATA_HAVE_MPI
    rank0 = !st_mpi_active() || st_mpi_rank() == 0;
#endif
    if (rank0) {
        time_t now = time(NULL);
        for (int k = 1; k < 1000; k++) {
            run_dir_name(out, size, root, now, k);
            struct stat sb;
            if (stat(out, &sb) != 0) {
                pick = (double)now * 1000.0 + k;
                break;
            }
        }
        if (pick == 0)
            return st_error(ST_ERR_INVALID, "no free run folder name under '%s': give --out",
                            root);
    }
#if STRATA_HAVE_MPI
    if (st_mpi_active() && st_mpi_size() > 1) {
        st_status s = st_mpi_allsum(&pick, 1);
        if (s != ST_OK)
            return s;
        time_t now = (time_t)(pick / 1000.0);
        run_dir_name(out, size, root, now, (int)(pick - (double)now * 1000.0 + 0.5));
    }
#endif
    return ST_OK;
}

/* --out may hold nothing, other files, or saves of this same run (a resume);
 * a checkpoint of another run or another model is refused unless --force. */
static st_status check_out(const char *out, const char *run, bool force)
{
    struct stat sb;
    if (force || stat(out, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return ST_OK;
    st_checkpoint *ck = NULL;
    st_status s = st_checkpoint_open(out, &ck);
    if (s == ST_ERR_NOT_FOUND) { /* no checkpoint there */
        st_error_clear();
        return ST_OK;
    }
    if (s != ST_OK) {
        char why[1536];
        snprintf(why, sizeof why, "%s", st_last_error());
        return st_error(ST_ERR_INVALID,
                        "--out '%s' holds checkpoint files that do not load (%s): choose another "
                        "--out, or give --force to write over them",
                        out, why);
    }
    char what[256];
    snprintf(what, sizeof what, "%s", st_checkpoint_describe(ck));
    st_checkpoint_close(ck);
    st_train_config saved;
    st_train_config_defaults(&saved);
    char data[1024];
    if (st_train_settings_read(out, &saved, data, sizeof data, NULL) != ST_OK) {
        st_error_clear();
        return st_error(ST_ERR_INVALID,
                        "--out '%s' holds a model (%s) that this run would replace: choose "
                        "another --out, or give --force",
                        out, what);
    }
    if (saved.run[0] && strcmp(saved.run, run) == 0)
        return ST_OK;
    return st_error(ST_ERR_INVALID,
                    "--out '%s' holds the checkpoint of another run (%s): choose another --out, "
                    "continue that run with --resume %s, or give --force to replace it",
                    out, what, out);
}

/* Ctrl-C (or SIGTERM) once: finish the step, validate, save, stop. Twice: quit now. */
static volatile sig_atomic_t stop_requested;

static volatile sig_atomic_t under_launcher;
/* Said at once on the first signal (write(2) is safe in a handler; the text
 * is made before training starts). */
static char ack[1400];
static size_t ack_len;

static void on_signal(int sig)
{
    if (stop_requested) {
        signal(sig, SIG_DFL);
        raise(sig);
        return;
    }
    stop_requested = 1;
    if (ack_len && write(STDERR_FILENO, ack, ack_len) < 0)
        ack_len = 0; /* nothing to do about a closed stderr */
    /* mpirun stops reading the ranks' output once it is interrupted: a rank
     * must not block on a full pipe before it has saved. Lines may be lost. */
    if (under_launcher) {
        int fl = fcntl(STDOUT_FILENO, F_GETFL);
        if (fl != -1)
            fcntl(STDOUT_FILENO, F_SETFL, fl | O_NONBLOCK);
    }
}

static bool stop_agreed;

static bool should_stop(void)
{
    stop_agreed = stop_agreed || stop_requested != 0;
    return stop_agreed;
}

#if STRATA_HAVE_MPI
/* Under mpirun every rank asks after every step, and all stop after the same
 * step when any got the signal (mpirun passes Ctrl-C on as SIGTERM). */
static bool should_stop_ranks(void)
{
    double v = stop_requested != 0;
    if (st_mpi_allsum(&v, 1) != ST_OK)
        return stop_agreed; /* the next collective fails and says why */
    stop_agreed = stop_agreed || v > 0;
    return stop_agreed;
}
#endif

enum {
    O_DATA = 256, O_CONFIG, O_LAYERS, O_EMBD, O_HEADS, O_POSITIONS, O_VOCAB, O_BATCH, O_SEQ,
    O_STEPS, O_LR, O_MINLR, O_WARMUP, O_WD, O_CLIP, O_SEED, O_EVAL_EVERY, O_EVAL_BATCHES, O_OUT,
    O_SAVE_EVERY, O_RESUME, O_STOP_AT, O_LOG_EVERY, O_LOG_JSON, O_MICRO, O_SCHEDULE, O_SPLIT,
    O_MEM_LIMIT, O_KEEP, O_ON_NAN, O_FORCE, O_PROFILE, O_ARCH, O_KV_HEADS, O_INNER,
    O_ROPE_THETA, O_TIE, O_TOKENIZER, O_PARALLEL, O_INIT, O_LORA, O_LORA_ALPHA, O_LORA_TARGETS,
    O_RECOMPUTE, O_SHARD, O_DEVICES, O_PACK,
    O_END /* after the last: given[] is sized by it */
};

/* --log-json: a regular file (created or emptied) or a character device
 * (/dev/null), never through a link, never a FIFO or socket, which would
 * block the training loop on a reader (opened without blocking, then
 * checked). NULL after saying why. */
static FILE *open_log(const char *path)
{
    struct stat sb;
    const char *why = NULL;
    int fd = -1;
    if (lstat(path, &sb) == 0 && S_ISLNK(sb.st_mode)) {
        why = "it is a symbolic link (give the file itself)";
    } else if (lstat(path, &sb) == 0 && !S_ISREG(sb.st_mode) && !S_ISCHR(sb.st_mode)) {
        why = "it is not a regular file (a FIFO or socket could block training)";
    } else {
        /* O_NOFOLLOW and O_NONBLOCK again: the name may change after lstat. */
        fd = open(path, O_WRONLY | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0644);
        if (fd < 0)
            why = strerror(errno);
        else if (fstat(fd, &sb) != 0 || (!S_ISREG(sb.st_mode) && !S_ISCHR(sb.st_mode)))
            why = "it is not a regular file (a FIFO or socket could block training)";
        else if ((S_ISREG(sb.st_mode) && ftruncate(fd, 0) != 0) || fcntl(fd, F_SETFL, 0) != 0)
            why = strerror(errno);
    }
    FILE *f = why ? NULL : fdopen(fd, "w");
    if (!f) {
        fprintf(stderr, "strata: error: cannot write the JSON log '%s': %s\n", path,
                why ? why : strerror(errno));
        if (fd >= 0)
            close(fd);
    }
    return f;
}

/* A save needs the weights and the two AdamW moments (4 bytes each); a disk
 * without room for one was found only at the first save, after the whole
 * run. Refused when saves are periodic (--save-every), else a warning: the
 * user may free space before the end. Rank 0 checks, for all ranks' shards. */
static st_status check_free_space(const char *dir, size_t params, long save_every, bool rank0)
{
    struct statvfs fs;
    if (!rank0 || statvfs(dir, &fs) != 0)
        return ST_OK; /* nothing known: the save reports what happens */
    uint64_t need = (uint64_t)params * 12u + (1u << 20), have = (uint64_t)fs.f_bavail * fs.f_frsize;
    if (have >= need)
        return ST_OK;
    char a[32], b[32];
    st_format_bytes(need, a, sizeof a);
    st_format_bytes(have, b, sizeof b);
    if (save_every > 0)
        return st_error(ST_ERR_INVALID,
                        "--out '%s' has %s free, and each save of this model needs about %s "
                        "(weights and optimizer state): free some space or choose another --out",
                        dir, b, a);
    fprintf(stderr,
            "strata: warning: --out '%s' has %s free, and the save at the end needs about %s: "
            "free some space before the run ends\n",
            dir, b, a);
    return ST_OK;
}

/* The --out folder of this run, when this process made it (for the clean-up
 * of a run that fails before its first save). */
static struct {
    bool created;
    char dir[4096];
    char root[4096]; /* the runs folder, for a run without --out */
} out_made;

static int train_command(int argc, char **argv);

/* A run that failed before it saved anything leaves no folder behind when it
 * made the folder itself (a mistyped --data left an empty runs/<time> per
 * try): what it wrote there (the lock, a tokenizer copy) goes, then the
 * folder, unless something else came into it. */
/* --log-json, opened with the other flags' checks before any work and
 * handed to the run's log (NULL then). */
static FILE *early_log;

static void remove_unsaved_out(void)
{
    struct stat sb;
    char path[4200];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", out_made.dir);
    if (stat(path, &sb) == 0)
        return;
    static const char *const ours[] = {"tokenizer.json", "tokenizer_config.json", "vocab.json",
                                       "merges.txt"};
    for (size_t i = 0; i < sizeof ours / sizeof ours[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", out_made.dir, ours[i]);
        unlink(path);
    }
    if (rmdir(out_made.dir) != 0 && errno != ENOENT)
        fprintf(stderr, "strata: note: '%s' was left: %s\n", out_made.dir, strerror(errno));
    else if (out_made.root[0])
        rmdir(out_made.root); /* the runs folder too, when this made it empty */
}

int cmd_train(int argc, char **argv)
{
    int rc = train_command(argc, argv);
    if (early_log) /* opened, then a later check refused the run */
        fclose(early_log);
    early_log = NULL;
    st_checkpoint_unlock();
    bool saved = rc == CLI_OK || rc == 130;
    if (out_made.created && !saved)
        remove_unsaved_out();
    return rc;
}

/* --config trains from random weights: say so when a model's weights lie
 * beside the file (people mean --init). */
static void weights_beside_note(const char *dir)
{
    static const char *const names[] = {"model.safetensors", "model.safetensors.index.json",
                                        "pytorch_model.bin"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char path[4200];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        struct stat sb;
        if (stat(path, &sb) == 0) {
            fprintf(stderr,
                    "strata train: note: --config takes the model's shape only and trains it "
                    "from random weights; the weights beside it (%s) are not loaded: to start "
                    "from them, give --init %s instead\n",
                    path, dir);
            return;
        }
    }
}

static int train_command(int argc, char **argv)
{
    static const struct option opts[] = {
        {"data", required_argument, NULL, O_DATA},
        {"config", required_argument, NULL, O_CONFIG},
        {"tokenizer", required_argument, NULL, O_TOKENIZER},
        {"layers", required_argument, NULL, O_LAYERS},
        {"embd", required_argument, NULL, O_EMBD},
        {"heads", required_argument, NULL, O_HEADS},
        {"positions", required_argument, NULL, O_POSITIONS},
        {"vocab", required_argument, NULL, O_VOCAB},
        {"arch", required_argument, NULL, O_ARCH},
        {"kv-heads", required_argument, NULL, O_KV_HEADS},
        {"inner", required_argument, NULL, O_INNER},
        {"rope-theta", required_argument, NULL, O_ROPE_THETA},
        {"tie", no_argument, NULL, O_TIE},
        {"batch", required_argument, NULL, O_BATCH},
        {"seq", required_argument, NULL, O_SEQ},
        {"steps", required_argument, NULL, O_STEPS},
        {"lr", required_argument, NULL, O_LR},
        {"min-lr", required_argument, NULL, O_MINLR},
        {"warmup", required_argument, NULL, O_WARMUP},
        {"weight-decay", required_argument, NULL, O_WD},
        {"clip", required_argument, NULL, O_CLIP},
        {"seed", required_argument, NULL, O_SEED},
        {"eval-every", required_argument, NULL, O_EVAL_EVERY},
        {"eval-batches", required_argument, NULL, O_EVAL_BATCHES},
        {"out", required_argument, NULL, O_OUT},
        {"save-every", required_argument, NULL, O_SAVE_EVERY},
        {"resume", required_argument, NULL, O_RESUME},
        {"init", required_argument, NULL, O_INIT},
        {"lora", required_argument, NULL, O_LORA},
        {"lora-alpha", required_argument, NULL, O_LORA_ALPHA},
        {"lora-targets", required_argument, NULL, O_LORA_TARGETS},
        {"recompute", required_argument, NULL, O_RECOMPUTE},
        {"shard-optimizer", no_argument, NULL, O_SHARD},
        {"pack", required_argument, NULL, O_PACK},
        {"stop-at", required_argument, NULL, O_STOP_AT},
        {"log-every", required_argument, NULL, O_LOG_EVERY},
        {"log-json", required_argument, NULL, O_LOG_JSON},
        {"micro-batches", required_argument, NULL, O_MICRO},
        {"schedule", required_argument, NULL, O_SCHEDULE},
        {"split", required_argument, NULL, O_SPLIT},
        {"parallel", required_argument, NULL, O_PARALLEL},
        {"mem-limit", required_argument, NULL, O_MEM_LIMIT},
        {"keep", required_argument, NULL, O_KEEP},
        {"on-nan", required_argument, NULL, O_ON_NAN},
        {"force", no_argument, NULL, O_FORCE},
        {"profile", no_argument, NULL, O_PROFILE},
        {"devices", required_argument, NULL, O_DEVICES},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    st_train_config tc;
    st_train_config_defaults(&tc);
    const char *data = NULL, *config = NULL, *devices = NULL, *log_json = NULL;
    const char *split = NULL, *mem_limit = NULL, *tokenizer = NULL, *parallel = NULL;
    const char *init = NULL, *lora_targets = "all", *recompute = "auto";
    bool pack = true; /* JSON Lines: several examples a row */
    long lora_rank = 0;
    double lora_alpha = 0;
    bool force = false;
    long layers = 2, embd = 64, heads = 4, positions = 0, vocab = 0, log_every = 1;
    cli_model_flags mf = {0};
    /* Which training settings were given, so that --resume can tell them from defaults. */
    bool given[O_END] = {false};
    long v = 0;
    int c, li;
    optind = 1;
    opterr = 0;
    while ((li = -1, c = getopt_long(argc, argv, ":h", opts, &li)) != -1) {
        char name[64];
        const char *arg = optarg;
        if (li >= 0)
            snprintf(name, sizeof name, "--%s", opts[li].name);
        else
            snprintf(name, sizeof name, "%s", argv[optind - 1]);
        bool ok = true;
        if (c >= O_DATA && c < O_END)
            given[c] = true;
        switch (c) {
        case O_DATA: data = arg; break;
        case O_CONFIG: config = arg; break;
        case O_TOKENIZER: tokenizer = arg; break;
        case O_LAYERS: ok = cli_parse_long(arg, 1, 1000, &layers); break;
        case O_EMBD: ok = cli_parse_long(arg, 1, 1 << 16, &embd); break;
        case O_HEADS: ok = cli_parse_long(arg, 1, 1024, &heads); break;
        case O_POSITIONS: ok = cli_parse_long(arg, 1, 1 << 20, &positions); break;
        case O_VOCAB: ok = cli_parse_long(arg, 2, 1 << 24, &vocab); break;
        case O_ARCH: mf.arch = arg; break;
        case O_KV_HEADS: ok = cli_parse_long(arg, 1, 1024, &mf.kv_heads); break;
        case O_INNER: ok = cli_parse_long(arg, 1, 1 << 20, &mf.inner); break;
        case O_ROPE_THETA: ok = cli_parse_double(arg, 1.0001, 1e12, &mf.rope_theta); break;
        case O_TIE: mf.tied = true; break;
        case O_BATCH: ok = cli_parse_long(arg, 1, 1 << 20, &v); tc.shape.batch = (int)v; break;
        case O_SEQ: ok = cli_parse_long(arg, 1, 1 << 20, &v); tc.shape.seq = (int)v; break;
        case O_STEPS: ok = cli_parse_long(arg, 1, 1L << 40, &tc.steps); break;
        case O_LR: ok = cli_parse_float(arg, 1e-12, 10, &tc.lr); break;
        case O_MINLR: ok = cli_parse_float(arg, 0, 10, &tc.min_lr); break;
        case O_WARMUP: ok = cli_parse_long(arg, 0, 1L << 40, &tc.warmup); break;
        case O_WD: ok = cli_parse_float(arg, 0, 10, &tc.weight_decay); break;
        case O_CLIP: ok = cli_parse_float(arg, 0, 1e30, &tc.clip); break;
        case O_SEED: ok = cli_parse_long(arg, 0, 1L << 62, &v); tc.seed = (uint64_t)v; break;
        case O_EVAL_EVERY: ok = cli_parse_long(arg, 0, 1L << 40, &tc.eval_every); break;
        case O_EVAL_BATCHES: ok = cli_parse_long(arg, 1, 1 << 20, &v); tc.eval_batches = (int)v; break;
        case O_OUT: tc.out_dir = arg; break;
        case O_SAVE_EVERY: ok = cli_parse_long(arg, 0, 1L << 40, &tc.save_every); break;
        case O_RESUME: tc.resume_dir = arg; break;
        case O_INIT: init = arg; break;
        case O_LORA: ok = cli_parse_long(arg, 1, 65536, &lora_rank); break;
        case O_LORA_ALPHA: ok = cli_parse_double(arg, 1e-6, 1e6, &lora_alpha); break;
        case O_LORA_TARGETS: lora_targets = arg; break;
        case O_SHARD: tc.shape.shard_moments = true; break;
        case O_RECOMPUTE:
            recompute = arg;
            if (strcmp(arg, "auto") != 0 && strcmp(arg, "on") != 0 && strcmp(arg, "off") != 0)
                return cli_usage_error("train", "bad value '%s' for --recompute: auto, on or off",
                                       arg);
            break;
        case O_PACK:
            if (strcmp(arg, "on") != 0 && strcmp(arg, "off") != 0)
                return cli_usage_error("train", "bad value '%s' for --pack: on or off", arg);
            pack = strcmp(arg, "on") == 0;
            break;
        case O_STOP_AT: ok = cli_parse_long(arg, 1, 1L << 40, &tc.stop_at); break;
        case O_LOG_EVERY: ok = cli_parse_long(arg, 1, 1L << 40, &log_every); break;
        case O_LOG_JSON: log_json = arg; break;
        case O_DEVICES: devices = arg; break;
        case O_KEEP: ok = cli_parse_long(arg, 1, 1000000, &v); tc.keep = (int)v; break;
        case O_FORCE: force = true; break;
        case O_PROFILE: st_profiler_enable(true); break;
        case O_ON_NAN:
            if (strcmp(arg, "abort") != 0 && strcmp(arg, "skip") != 0)
                return cli_usage_error("train", "bad value '%s' for --on-nan: abort or skip",
                                       arg);
            tc.skip_nonfinite = strcmp(arg, "skip") == 0;
            break;
        case O_MICRO: ok = cli_parse_long(arg, 1, 1 << 20, &v); tc.shape.micro_batches = (int)v; break;
        case O_SCHEDULE:
            if (st_schedule_parse(arg, &tc.shape.schedule) != ST_OK)
                return cli_usage_error("train", "%s", st_last_error());
            break;
        case O_SPLIT: split = arg; break;
        case O_PARALLEL: parallel = arg; break;
        case O_MEM_LIMIT: mem_limit = arg; break;
        case 'h': help(); return CLI_OK;
        case ':': return cli_usage_error("train", "option %s needs a value", name);
        default: return cli_unknown_option("train", name, opts);
        }
        if (!ok)
            return cli_usage_error("train", "bad value '%s' for %s: %s", arg, name,
                                   cli_expected());
    }
    if (optind < argc)
        return cli_usage_error("train", "unexpected argument '%s'", argv[optind]);
    if (init && tc.resume_dir)
        return cli_usage_error("train", "--init starts a new run from a folder's weights and "
                                        "--resume continues a run: give one of them");
    if ((given[O_LORA_ALPHA] || given[O_LORA_TARGETS]) && !given[O_LORA])
        return cli_usage_error("train", "%s sets up LoRA adapters: give --lora R too",
                               given[O_LORA_ALPHA] ? "--lora-alpha" : "--lora-targets");
    if (given[O_LORA] && tc.resume_dir)
        return cli_usage_error("train", "--lora cannot be used with --resume: a resumed run "
                                        "keeps its own adapters (leave the LoRA flags out)");
    if (given[O_LORA] && !init)
        return cli_usage_error("train", "--lora adapts a trained model: give the model with "
                                        "--init DIR");
    /* The decay ends at a tenth of the peak unless told (a resumed run keeps
     * its own, below). */
    if (!given[O_MINLR] && !tc.resume_dir && given[O_LR])
        tc.min_lr = tc.lr / 10; /* without --lr, the default's: 5e-4 exactly */
    if (!tc.resume_dir && tc.min_lr > tc.lr)
        return cli_usage_error("train",
                               "--min-lr %g is above --lr %g: the cosine decay goes from --lr "
                               "down to --min-lr (give a --min-lr from 0 to --lr)",
                               (double)tc.min_lr, (double)tc.lr);
    /* Every flag's own mistakes before any work: no run folder made, no text
     * tokenized, no device measured for a run that cannot start. */
    if (cli_check_plan_flags(split, parallel, mem_limit) != ST_OK)
        return cli_usage_error("train", "%s", st_last_error());
    if (!tc.resume_dir && given[O_MICRO] && tc.shape.batch % tc.shape.micro_batches != 0)
        return cli_usage_error("train",
                               "a batch of %d sequences does not split into %d equal "
                               "micro-batches (give a --micro-batches that divides --batch)",
                               tc.shape.batch, tc.shape.micro_batches);
    {
        cli_devices chosen;
        st_status ds = cli_devices_get(devices, false, &chosen);
        if (ds == ST_OK && mem_limit)
            ds = cli_apply_mem_limit(mem_limit, &chosen);
        if (ds == ST_OK)
            cli_devices_put(&chosen);
        if (ds != ST_OK)
            return cli_fail(ds);
    }
#if STRATA_HAVE_MPI
    if (st_mpi_active() && st_mpi_rank() != 0)
        log_json = NULL; /* rank 0 writes the log */
#endif
    if (log_json && !(early_log = open_log(log_json)))
        return CLI_USAGE;

    if (config) {
        /* The model is the file's: a size flag would be ignored, so it is refused. */
        static const struct {
            int opt;
            const char *name;
        } size_flags[] = {{O_LAYERS, "--layers"},     {O_EMBD, "--embd"},
                          {O_HEADS, "--heads"},       {O_POSITIONS, "--positions"},
                          {O_VOCAB, "--vocab"},       {O_ARCH, "--arch"},
                          {O_KV_HEADS, "--kv-heads"}, {O_INNER, "--inner"},
                          {O_ROPE_THETA, "--rope-theta"}, {O_TIE, "--tie"}};
        for (size_t i = 0; i < sizeof size_flags / sizeof size_flags[0]; i++)
            if (given[size_flags[i].opt])
                return cli_usage_error("train",
                                       "%s cannot be used with --config: the model is the "
                                       "file's (edit the file, or leave --config out)",
                                       size_flags[i].name);
    }
    st_model_config cfg = {0};
    st_status s = ST_OK;
    if (!config && !tc.resume_dir) {
        /* The sizes' own mistakes before anything is created (the vocabulary
         * and positions come later, from the data and --seq). */
        cli_model_flags early = mf;
        early.vocab = 256;
        early.positions = 1;
        early.layers = layers, early.embd = embd, early.heads = heads;
        if ((s = cli_model_config(&early, &cfg)) != ST_OK)
            return cli_fail(s);
    }
    char saved_data[1024] = "";
    if (tc.resume_dir || init) {
        /* The model is the checkpoint's: a model flag would be ignored, so it is refused. */
        static const struct {
            int opt;
            const char *name;
        } model_flags[] = {{O_CONFIG, "--config"},         {O_LAYERS, "--layers"},
                           {O_EMBD, "--embd"},             {O_HEADS, "--heads"},
                           {O_POSITIONS, "--positions"},   {O_VOCAB, "--vocab"},
                           {O_ARCH, "--arch"},             {O_KV_HEADS, "--kv-heads"},
                           {O_INNER, "--inner"},           {O_ROPE_THETA, "--rope-theta"},
                           {O_TIE, "--tie"}};
        for (size_t i = 0; i < sizeof model_flags / sizeof model_flags[0]; i++)
            if (given[model_flags[i].opt])
                return cli_usage_error("train",
                                       init ? "%s cannot be used with --init: the model is the "
                                              "folder's (leave %s out, or start from random "
                                              "weights without --init)"
                                            : "%s cannot be used with --resume: the model is "
                                              "the checkpoint's (leave %s out, or start a new "
                                              "run without --resume)",
                                       model_flags[i].name, model_flags[i].name);
    }
    /* --init: the folder's model and weights, a run of its own from step 0. */
    char init_abs[4096] = "";
    if (init) {
        st_checkpoint *ck = NULL;
        if ((s = st_checkpoint_open(init, &ck)) != ST_OK)
            return cli_fail(s);
        cfg = *st_checkpoint_get_config(ck);
        printf("starting from %s: %s (its weights only: a new run from step 0, with a fresh "
               "optimizer and schedule)\n",
               init, st_checkpoint_describe(ck));
        /* LoRA: the frozen base stays in the folder's type on the devices
         * (a bf16 folder in bf16: the same values, half the bytes) */
        if (lora_rank > 0)
            s = st_checkpoint_weights_dtype(ck, &cfg.weights);
        st_checkpoint_close(ck);
        if (s != ST_OK)
            return cli_fail(s);
        if (!realpath(init, init_abs))
            snprintf(init_abs, sizeof init_abs, "%s", init);
        tc.init_dir = init_abs;
        if (lora_rank > 0) {
            cfg.lora.rank = (int)lora_rank;
            cfg.lora.alpha = (float)(lora_alpha > 0 ? lora_alpha : (double)lora_rank);
            if ((s = st_lora_targets_parse(cfg.family, lora_targets, &cfg.lora.targets)) !=
                ST_OK)
                return cli_fail(s);
        }
    }
    st_data_identity saved_id = {0};
    if (tc.resume_dir) {
        /* The checkpoint's settings are the defaults; flags given must agree (st_train checks). */
        st_train_config saved = tc;
        st_checkpoint *ck = NULL;
        if ((s = st_checkpoint_open(tc.resume_dir, &ck)) != ST_OK)
            return cli_fail(s);
        cfg = *st_checkpoint_get_config(ck);
        printf("resuming from %s: %s\n", tc.resume_dir, st_checkpoint_describe(ck));
        st_checkpoint_close(ck);
        if ((s = st_train_settings_read(tc.resume_dir, &saved, saved_data, sizeof saved_data,
                                        &saved_id)) != ST_OK)
            return cli_fail(s);
        snprintf(tc.run, sizeof tc.run, "%s", saved.run);
        if (saved.lora.rank > 0) {
            /* a LoRA run: its adapters on its --init model, which must still be there */
            struct stat sb;
            if (stat(saved.init_saved, &sb) != 0)
                return cli_fail(st_error(ST_ERR_NOT_FOUND,
                                         "the checkpoint's adapters were trained on '%s' "
                                         "(--init), which is not there any more: put the model "
                                         "back there",
                                         saved.init_saved));
            snprintf(init_abs, sizeof init_abs, "%s", saved.init_saved);
            tc.init_dir = init_abs;
            cfg.lora = saved.lora;
            st_checkpoint *base = NULL;
            if ((s = st_checkpoint_open(init_abs, &base)) == ST_OK)
                s = st_checkpoint_weights_dtype(base, &cfg.weights);
            st_checkpoint_close(base);
            if (s != ST_OK)
                return cli_fail(s);
            if ((s = st_lora_targets_parse(cfg.family, saved.lora_targets, &cfg.lora.targets)) !=
                ST_OK)
                return cli_fail(s);
        }
        if (given[O_PACK] && pack != saved.packed)
            return cli_usage_error("train",
                                   "--pack %s: the checkpoint's rows were %s; a resumed run "
                                   "draws the same batches (leave --pack out)",
                                   pack ? "on" : "off",
                                   saved.packed ? "packed" : "one example each");
        pack = saved.packed;
        if (!given[O_BATCH]) tc.shape.batch = saved.shape.batch;
        if (!given[O_SEQ]) tc.shape.seq = saved.shape.seq;
        if (!given[O_STEPS]) tc.steps = saved.steps;
        if (!given[O_LR]) tc.lr = saved.lr;
        if (!given[O_MINLR]) tc.min_lr = saved.min_lr;
        if (!given[O_WARMUP]) tc.warmup = saved.warmup;
        if (!given[O_WD]) tc.weight_decay = saved.weight_decay;
        if (!given[O_CLIP]) tc.clip = saved.clip;
        if (!given[O_SEED]) tc.seed = saved.seed;
        if (!given[O_MICRO]) tc.shape.micro_batches = saved.shape.micro_batches;
        if (!given[O_SCHEDULE]) tc.shape.schedule = saved.shape.schedule;
        tc.beta1 = saved.beta1, tc.beta2 = saved.beta2, tc.eps = saved.eps;
        if (!data && saved_id.path[0]) {
            /* Recorded as an absolute path: found from any folder. */
            struct stat sb;
            if (stat(saved_id.path, &sb) != 0)
                return cli_fail(st_error(ST_ERR_NOT_FOUND,
                                         "the checkpoint was trained on '%s', which is not there "
                                         "any more (moved or deleted?): give --data with that "
                                         "file",
                                         saved_id.path));
            data = saved_id.path;
        } else if (!data) {
            data = saved_data;
        }
        if (given[O_STEPS] && tc.steps != saved.steps)
            fprintf(stderr,
                    "strata train: note: --steps %ld changes the cosine schedule of the "
                    "checkpoint's %ld steps; the run continues, but not as the original would "
                    "have\n",
                    tc.steps, saved.steps);
    }
    if (!tc.run[0])
        snprintf(tc.run, sizeof tc.run, "%08x%08x", (unsigned)st_checkpoint_new_tag(),
                 (unsigned)st_checkpoint_new_tag() ^ 0x5bd1e995u);
    /* Nothing is thrown away: a resumed run saves back where it came from,
     * and a new run without --out gets a new folder of its own. */
    char run_dir[1024];
    if (!tc.out_dir && tc.resume_dir)
        tc.out_dir = tc.resume_dir;
    if (!tc.out_dir) {
        if ((s = new_run_dir(run_dir, sizeof run_dir)) != ST_OK)
            return cli_fail(s);
        tc.out_dir = run_dir;
        snprintf(out_made.root, sizeof out_made.root, "%s", run_dir);
        char *slash = strrchr(out_made.root, '/');
        if (slash)
            *slash = '\0';
        else
            out_made.root[0] = '\0';
        printf("saving to %s (a new run folder; --out DIR chooses another)\n", run_dir);
    }
    bool rank0_out = true;
#if STRATA_HAVE_MPI
    rank0_out = !st_mpi_active() || st_mpi_rank() == 0;
#endif
    bool created = false;
    if ((s = st_checkpoint_prepare(tc.out_dir, &created)) != ST_OK)
        return cli_fail(s);
    if (rank0_out) {
        out_made.created = created;
        snprintf(out_made.dir, sizeof out_made.dir, "%s", tc.out_dir);
    }
    /* One writer per folder, before anything in it is read or written. */
    if (rank0_out && (s = st_checkpoint_lock(tc.out_dir)) != ST_OK)
        return cli_fail(s);
    if ((s = check_out(tc.out_dir, tc.run, force)) != ST_OK)
        return cli_fail(s);
    /* A text file's tokenizer: --tokenizer's, else the checkpoint folder's
     * (resuming), else the one beside --config's config.json; it goes into
     * --out with the model. */
    st_tokenizer *tk = NULL;
    char config_dir[4096] = "";
    if (config && !tc.resume_dir) {
        snprintf(config_dir, sizeof config_dir, "%s", config);
        char *slash = strrchr(config_dir, '/');
        if (slash)
            *slash = '\0';
        else
            snprintf(config_dir, sizeof config_dir, ".");
        weights_beside_note(config_dir);
    }
    if ((s = cli_open_tokenizer(tc.resume_dir  ? tc.resume_dir
                                : init          ? init
                                : config_dir[0] ? config_dir
                                                : NULL,
                                tokenizer, &tk)) != ST_OK)
        return cli_fail(s);
    if (tk && (!data || strcmp(data, "addition") == 0)) {
        st_tokenizer_free(tk);
        if (tokenizer)
            return cli_usage_error("train", "--tokenizer needs --data with a text or token file: "
                                            "the addition task's tokens are bytes");
        tk = NULL; /* a config folder's tokenizer, not needed for the built-in task */
    }
    st_dataset *ds = NULL;
    s = st_dataset_open_text(data, tk, &ds);
    bool rank0 = true;
#if STRATA_HAVE_MPI
    rank0 = !st_mpi_active() || st_mpi_rank() == 0;
#endif
    st_data_identity got = {0};
    if (s == ST_OK)
        st_dataset_identity(ds, &got);
    /* Not over a resumed folder's own with another (st_train refuses the run). */
    if (s == ST_OK && tk && rank0 && (!tc.resume_dir || got.tokenizer == saved_id.tokenizer))
        s = cli_copy_tokenizer(tk, tc.out_dir);
    if (s == ST_OK && tk)
        printf("tokenizer: %s (vocabulary %zu), kept in %s\n", st_tokenizer_file(tk, 0),
               st_tokenizer_vocab_size(tk), tc.out_dir);
    st_tokenizer_free(tk);
    if (s != ST_OK) {
        st_dataset_destroy(ds);
        return cli_fail(s);
    }
    int fixed = st_dataset_fixed_seq(ds);
    if (fixed && tc.shape.seq && tc.shape.seq != fixed) {
        st_dataset_destroy(ds);
        return cli_usage_error("train", "the addition task has sequences of %d tokens: leave --seq out",
                               fixed);
    }
    if (!tc.shape.seq)
        tc.shape.seq = fixed ? fixed : 64;
    cli_note_cut_examples("train", ds, tc.shape.seq);
    if (given[O_PACK] && !st_dataset_examples(ds, ST_ALL)) {
        st_dataset_destroy(ds);
        return cli_usage_error("train", "--pack is for JSON Lines data (a .jsonl file of "
                                        "examples); '%s' is one stream of tokens",
                               data ? data : "addition");
    }
    cli_note_packing(stdout, ds, pack, tc.shape.seq);
    if (!tc.resume_dir && !init) {
        if (config) {
            if ((s = st_model_config_load(config, &cfg)) != ST_OK) {
                st_dataset_destroy(ds);
                return cli_fail(s);
            }
        } else {
            mf.vocab = vocab ? vocab : (long)st_dataset_vocab_needed(ds);
            mf.positions = positions ? positions : tc.shape.seq;
            mf.embd = embd;
            mf.layers = layers;
            mf.heads = heads;
            if ((s = cli_model_config(&mf, &cfg)) != ST_OK) {
                st_dataset_destroy(ds);
                return cli_fail(s);
            }
        }
    }
    cli_devices devs;
    if ((s = cli_devices_get(devices, true, &devs)) != ST_OK) {
        st_dataset_destroy(ds);
        return cli_fail(s);
    }
    log_ctx L = {.log_every = log_every, .out = tc.out_dir, .json_path = log_json};
    L.json = early_log;
    early_log = NULL;
    printf("data: %s\n", st_dataset_describe(ds));
    char model_line[256];
    cli_model_describe(&cfg, model_line, sizeof model_line);
    printf("model: %s\n", model_line);
    printf("training: batch %d x %d tokens, %ld steps, lr %.1e warmup %ld cosine to %.1e, "
           "seed %llu\n",
           tc.shape.batch, tc.shape.seq, tc.steps, (double)tc.lr, tc.warmup, (double)tc.min_lr,
           (unsigned long long)tc.seed);
    fflush(stdout);
    st_model_desc *desc = NULL;
    st_plan plan;
    st_device_profile prof[ST_PLAN_MAX_STAGES];
    /* Without --micro-batches (and not resuming) the planner chooses. */
    bool micro_auto = !given[O_MICRO] && !tc.resume_dir;
    cli_plan_opts po = {.split = split, .parallel = parallel, .mem_limit = mem_limit,
                        .shape = tc.shape,
                        .devices_explicit = devices != NULL || getenv("STRATA_DEVICES") != NULL};
    po.shape.micro_batches = micro_auto ? 0 : tc.shape.micro_batches;
    po.shape.recompute = strcmp(recompute, "on") == 0;
    po.shape.shard_moments = tc.shape.shard_moments;
    po.recompute_auto = strcmp(recompute, "auto") == 0;
    if (!micro_auto && tc.shape.batch % tc.shape.micro_batches != 0)
        s = st_error(ST_ERR_INVALID,
                     "a batch of %d sequences does not split into %d equal micro-batches",
                     tc.shape.batch, tc.shape.micro_batches);
    bool mpi = false;
    /* The devices the plan was made over, by its device index (NULL: another rank's). */
    st_device *plan_devs[ST_PLAN_MAX_STAGES] = {NULL};
    st_train_layout layout = {.plan = &plan, .devs = plan_devs};
#if STRATA_HAVE_MPI
    st_pipe_comm comm = {0};
    mpi = st_mpi_active() && st_mpi_size() > 1;
#endif
    if (s == ST_OK && (s = st_model_describe(&cfg, &desc)) == ST_OK &&
        (s = check_free_space(tc.out_dir, desc->param_numel, tc.save_every, rank0_out)) ==
            ST_OK) {
#if STRATA_HAVE_MPI
        if (mpi) {
            /* Without --devices, one device per rank: the local rank's among those found. */
            if (!devices && devs.n > 1) {
                size_t pick = (size_t)st_mpi_local_rank() % devs.n;
                devs.dev[0] = devs.dev[pick];
                devs.index[0] = devs.index[pick];
                devs.n = 1;
            }
            st_run_plan_options ro = {.split = split, .keep_all_devices = true, .quiet = true};
            ro.parallel = parallel;
            if (s == ST_OK && (s = mem_limit ? cli_apply_mem_limit(mem_limit, &devs) : ST_OK) == ST_OK)
                s = st_run_plan_mpi(devs.dev, devs.index, devs.n, desc, &po.shape, &ro, &plan,
                                    prof, plan_devs, &comm);
            if (s == ST_OK) {
                layout.comm = &comm;
                layout.ranks = comm.ranks; /* the pipeline's (of one replica) */
                layout.barrier = st_mpi_barrier;
                layout.gather = st_mpi_gather_lines;
                cli_plan_print(&plan, desc, NULL, prof, &po, stdout);
            }
        }
#endif
        if (!mpi && (s = cli_make_plan(&devs, desc, &po, &plan, prof)) == ST_OK) {
            for (size_t i = 0; i < devs.n; i++)
                plan_devs[i] = devs.dev[i];
            cli_plan_print(&plan, desc, &devs, prof, &po, stdout);
        }
        if (s == ST_OK)
            tc.shape.micro_batches = plan.shape.micro_batches;
        if (s == ST_OK && tc.shape.shard_moments && st_plan_replicas(&plan) < 2 && rank0_out)
            fprintf(stderr, "strata train: note: --shard-optimizer splits the AdamW moments "
                            "over replicas; this plan has one, so nothing is split\n");
    }
    /* Each stage's device here (NULL: another rank's). */
    st_device *stage_dev[ST_PLAN_MAX_STAGES] = {NULL};
    size_t plan_used[ST_PLAN_MAX_STAGES];
    size_t n_stages = s == ST_OK ? st_plan_devices(&plan, plan_used) : 0; /* every replica's too */
    for (size_t k = 0; k < n_stages; k++)
        stage_dev[k] = plan_devs[plan_used[k]];
    if (s == ST_OK) {
        fflush(stdout);
        s = st_devices_prepare(stage_dev, n_stages);
        /* A device on CLBlast's defaults may have much faster products. */
        for (size_t k = 0; s == ST_OK && k < n_stages; k++) {
            bool seen = false;
            for (size_t j = 0; j < k; j++)
                seen |= stage_dev[j] == stage_dev[k];
            if (!seen && stage_dev[k] &&
                st_device_tuning_source(stage_dev[k]) == ST_TUNING_DEFAULT)
                fprintf(stderr,
                        "hint: %s has never been tuned here and runs CLBlast's default GEMM "
                        "parameters; `strata tune --devices %u --budget 300` searches for "
                        "faster ones (kept for every later run)\n",
                        st_device_label(stage_dev[k]), st_device_get_info(stage_dev[k])->index);
        }
    }
    if (s == ST_OK) {
        fflush(stdout);
        tc.should_stop = should_stop;
#if STRATA_HAVE_MPI
        if (mpi)
            tc.should_stop = should_stop_ranks;
#endif
        under_launcher = mpi;
        bool says = true;
#if STRATA_HAVE_MPI
        says = !mpi || st_mpi_rank() == 0;
#endif
        if (says) {
            snprintf(ack, sizeof ack,
                     "\nstrata: stopping: finishing this step, then validating and saving to "
                     "%.1200s; Ctrl-C again quits at once (losing this step)\n",
                     tc.out_dir);
            ack_len = strlen(ack);
        }
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGUSR1, &sa, NULL);
        sigaction(SIGHUP, &sa, NULL); /* a closed terminal or ssh session */
        bool together = false;
        layout.failed_together = &together;
        if (st_profiler_enabled()) {
            L.prof_devs = stage_dev;
            L.n_prof = n_stages;
        }
        s = st_train(&layout, &cfg, ds, &tc, on_event, &L);
        if (s == ST_OK && st_profiler_enabled() && L.ms_n > 0 && !mpi)
            s = cli_profile_report(stage_dev, n_stages, L.ms_n, L.ms_sum / L.ms_n,
                                   cfg.n_layer, tc.shape.micro_batches, stdout, L.json);
        if (s != ST_OK && together)
            cli_set_failed_together();
        char lines[ST_PLAN_MAX_STAGES][256];
        size_t n_lines = 0;
        for (size_t k = 0; s == ST_OK && k < n_stages; k++) {
            if (!stage_dev[k])
                continue;
            char a[32], b[32];
            st_device_memory m = st_device_get_memory(stage_dev[k]);
            char what[64];
            if (st_plan_replicas(&plan) > 1) /* devices in replica order */
                snprintf(what, sizeof what, "replica %zu, stage %zu", k / plan.n_stages,
                         k % plan.n_stages);
            else
                snprintf(what, sizeof what, "stage %zu", k);
            snprintf(lines[n_lines++], sizeof lines[0], "%s: %s peak %s of %s", what,
                     st_device_label(stage_dev[k]), st_format_bytes(m.peak, a, sizeof a),
                     st_format_bytes(m.capacity, b, sizeof b));
        }
        if (s == ST_OK && !mpi)
            for (size_t i = 0; i < n_lines; i++)
                printf("%s\n", lines[i]);
#if STRATA_HAVE_MPI
        if (s == ST_OK && mpi) {
            /* Per-rank facts reach rank 0, which prints them with the rank. */
            char mine[1024] = "", *all = malloc((size_t)st_mpi_size() * sizeof mine);
            for (size_t i = 0; i < n_lines; i++) {
                size_t used = strlen(mine);
                if (used + strlen(lines[i]) + 3 < sizeof mine) {
                    memcpy(mine + used, i ? "; " : "", i ? 2 : 0);
                    strcpy(mine + used + (i ? 2 : 0), lines[i]);
                }
            }
            if (all && (s = st_mpi_gather_lines(mine, all, sizeof mine)) == ST_OK &&
                st_mpi_rank() == 0)
                for (int r = 0; r < st_mpi_size(); r++)
                    printf("rank %d: %s\n", r, all + (size_t)r * sizeof mine);
            free(all);
        }
#endif
    }
#if STRATA_HAVE_MPI
    st_mpi_comm_free(&comm);
#endif
    st_model_desc_destroy(desc);

    if (L.json && fclose(L.json) != 0 && !L.json_failed) {
        L.json_failed = true;
        fprintf(stderr, "strata: error: cannot write the JSON log '%s': %s\n", log_json,
                strerror(errno));
    }
    cli_devices_put(&devs);
    st_dataset_destroy(ds);
    if (s == ST_OK && L.json_failed)
        return CLI_FAILED;
    if (s == ST_OK && stop_agreed) {
        cli_set_failed_together(); /* under MPI: every rank stopped at the same step */
        return 130; /* interrupted, as shells report SIGINT; the checkpoint is saved */
    }
    return s == ST_OK ? CLI_OK : cli_fail(s);
}
