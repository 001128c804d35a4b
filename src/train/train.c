/*
 * train.c - the training loop on one device (see strata/train.h).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "core/clock.h"
#include "strata/checkpoint.h"
#include "strata/stage.h"
#include "strata/pipe.h"
#include "strata/profiler.h"
#include "strata/progress.h"
#include "strata/train.h"

void st_train_config_defaults(st_train_config *tc)
{
    memset(tc, 0, sizeof *tc);
    tc->shape.batch = 64;
    tc->shape.micro_batches = 1;
    tc->shape.schedule = ST_SCHED_1F1B;
    tc->shape.seq = 0; /* the data's own, or the model's positions */
    tc->shape.training = true;
    tc->steps = 1500;
    tc->lr = 5e-3f;
    tc->min_lr = 5e-4f;
    tc->warmup = 50;
    tc->weight_decay = 0.1f;
    tc->clip = 1.0f;
    tc->beta1 = 0.9f;
    tc->beta2 = 0.95f;
    tc->eps = 1e-8f;
    tc->seed = 1;
    tc->eval_every = 250;
    tc->eval_batches = 8;
    tc->keep = 1;
}

float st_train_lr(const st_train_config *tc, long step)
{
    if (tc->warmup > 0 && step <= tc->warmup)
        return tc->lr * (float)step / (float)tc->warmup;
    long decay = tc->steps - tc->warmup;
    if (decay <= 0)
        return tc->lr;
    double progress = (double)(step - tc->warmup) / (double)decay;
    if (progress > 1.0)
        progress = 1.0;
    return (float)(tc->min_lr + 0.5 * (tc->lr - tc->min_lr) * (1.0 + cos(3.14159265358979323846 * progress)));
}

/* The settings a resumed run must share, as JSON (floats as their bits'
 * decimal form through %.9g, which reads back to the same float). */
static char *settings_json(const st_train_config *tc, const st_model_config *cfg,
                           const st_dataset *ds)
{
    char seed[32], sum[24];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)tc->seed);
    st_data_identity id;
    st_dataset_identity(ds, &id);
    snprintf(sum, sizeof sum, "%016llx", (unsigned long long)id.sum);
    json_t *j = json_pack("{s:s, s:i, s:i, s:i, s:s, s:I, s:f, s:f, s:I, s:f, s:f, s:f, s:f, s:f, "
                          "s:s}",
                          "data", st_dataset_name(ds), "batch", tc->shape.batch, "seq", tc->shape.seq,
                          "micro_batches", tc->shape.micro_batches, "schedule",
                          st_schedule_name(tc->shape.schedule),
                          "steps", (json_int_t)tc->steps, "lr", (double)tc->lr, "min_lr",
                          (double)tc->min_lr, "warmup", (json_int_t)tc->warmup,
                          "weight_decay", (double)tc->weight_decay, "clip", (double)tc->clip,
                          "beta1", (double)tc->beta1, "beta2", (double)tc->beta2, "eps",
                          (double)tc->eps, "seed", seed);
    if (!j)
        return NULL;
    json_object_set_new(j, "run", json_string(tc->run));
    if (id.path[0]) {
        json_object_set_new(j, "data_path", json_string(id.path));
        json_object_set_new(j, "data_bytes", json_integer((json_int_t)id.bytes));
        json_object_set_new(j, "data_sum64", json_string(sum));
    }
    if (id.tokenizer) {
        snprintf(sum, sizeof sum, "%016llx", (unsigned long long)id.tokenizer);
        json_object_set_new(j, "tokenizer_sum64", json_string(sum));
    }
    if (st_dataset_packed(ds)) /* several examples a row: other batches */
        json_object_set_new(j, "packed", json_true());
    if (tc->init_dir && tc->init_dir[0]) /* where the weights of step 0 came from */
        json_object_set_new(j, "init", json_string(tc->init_dir));
    if (cfg->lora.rank > 0) { /* the adapters trained on the --init model */
        char targets[160];
        st_lora_targets_format(cfg->family, cfg->lora.targets, targets, sizeof targets);
        json_object_set_new(j, "lora",
                            json_pack("{s:i, s:f, s:s}", "rank", cfg->lora.rank, "alpha",
                                      (double)cfg->lora.alpha, "targets", targets));
    }
    char *text = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9));
    json_decref(j);
    return text;
}

/* A value read from a checkpoint gets the checks of the flag it stands for. */
static st_status setting_range(const char *dir, const char *key, const char *flag, double v,
                               double lo, double hi, bool lo_open)
{
    if (v != v || v < lo || v > hi || (lo_open && v == lo)) {
        /* Counts print as integers, rates in the shortest form. */
        bool count = v == floor(v) && lo == floor(lo) && hi == floor(hi) && hi > 1;
        return st_error(ST_ERR_FORMAT,
                        count ? "'%s': the checkpoint's training setting \"%s\" is %.0f, where "
                                "%s takes %s%.0f to %.0f; the manifest is damaged or was not "
                                "written by strata"
                              : "'%s': the checkpoint's training setting \"%s\" is %.9g, where "
                                "%s takes %s%g to %g; the manifest is damaged or was not "
                                "written by strata",
                        dir, key, v, flag, lo_open ? "more than " : "", lo, hi);
    }
    return ST_OK;
}

st_status st_train_settings_read(const char *dir, st_train_config *tc, char *data, size_t size,
                                 st_data_identity *id)
{
    st_train_state state;
    st_status s = st_checkpoint_state(dir, &state);
    if (s != ST_OK)
        return s;
    const char *text = state.settings;
    json_error_t err;
    json_t *j = json_loads(text, 0, &err);
    const char *d = NULL, *seed = NULL, *sched = NULL;
    json_int_t batch = 0, seq = 0, steps = 0, warmup = 0, micro = 0;
    double lr, min_lr, wd, clip, b1, b2, eps;
    if (!j || json_unpack(j, "{s:s, s:I, s:I, s:I, s:s, s:I, s:F, s:F, s:I, s:F, s:F, s:F, s:F, s:F, "
                             "s:s}",
                          "data", &d, "batch", &batch, "seq", &seq, "micro_batches", &micro,
                          "schedule", &sched, "steps", &steps, "lr", &lr,
                          "min_lr", &min_lr, "warmup", &warmup, "weight_decay", &wd, "clip",
                          &clip, "beta1", &b1, "beta2", &b2, "eps", &eps, "seed", &seed) != 0) {
        json_decref(j);
        return st_error(ST_ERR_FORMAT,
                        "'%s': the training settings in the checkpoint's manifest are "
                        "unreadable",
                        dir);
    }
    char *end = NULL;
    unsigned long long seedv = strtoull(seed, &end, 10);
    if ((s = setting_range(dir, "batch", "--batch", (double)batch, 1, 1 << 20, false)) == ST_OK &&
        (s = setting_range(dir, "seq", "--seq", (double)seq, 1, 1 << 20, false)) == ST_OK &&
        (s = setting_range(dir, "micro_batches", "--micro-batches", (double)micro, 1, 1 << 20,
                           false)) == ST_OK &&
        (s = setting_range(dir, "steps", "--steps", (double)steps, 1, 1099511627776.0, false)) ==
            ST_OK &&
        (s = setting_range(dir, "lr", "--lr", lr, 1e-12, 10, false)) == ST_OK &&
        (s = setting_range(dir, "min_lr", "--min-lr", min_lr, 0, lr, false)) == ST_OK &&
        (s = setting_range(dir, "warmup", "--warmup", (double)warmup, 0, 1099511627776.0,
                           false)) == ST_OK &&
        (s = setting_range(dir, "weight_decay", "--weight-decay", wd, 0, 10, false)) == ST_OK &&
        (s = setting_range(dir, "clip", "--clip", clip, 0, 1e30, false)) == ST_OK &&
        (s = setting_range(dir, "beta1", "AdamW", b1, 0, 0.999999, false)) == ST_OK &&
        (s = setting_range(dir, "beta2", "AdamW", b2, 0, 0.999999999, false)) == ST_OK &&
        (s = setting_range(dir, "eps", "AdamW", eps, 0, 1, true)) == ST_OK) {
        if (batch % micro != 0)
            s = st_error(ST_ERR_FORMAT,
                         "'%s': the checkpoint's batch of %lld does not split into its %lld "
                         "micro-batches; the manifest is damaged",
                         dir, (long long)batch, (long long)micro);
        else if (!*seed || *end || seedv > (1ull << 62))
            s = st_error(ST_ERR_FORMAT, "'%s': the checkpoint's seed '%s' is not a number up to "
                                        "2^62", dir, seed);
        else if (!*d || strlen(d) >= size)
            s = st_error(ST_ERR_FORMAT, "'%s': the checkpoint's data name is empty or too long",
                         dir);
        else if (st_schedule_parse(sched, &tc->shape.schedule) != ST_OK)
            s = st_error(ST_ERR_FORMAT, "'%s': the checkpoint's schedule '%s' is unknown", dir,
                         sched);
    }
    if (s != ST_OK) {
        json_decref(j);
        return s;
    }
    snprintf(data, size, "%s", d);
    const char *run = json_string_value(json_object_get(j, "run"));
    snprintf(tc->run, sizeof tc->run, "%s", run ? run : "");
    tc->packed = json_is_true(json_object_get(j, "packed"));
    const char *init = json_string_value(json_object_get(j, "init"));
    snprintf(tc->init_saved, sizeof tc->init_saved, "%s", init ? init : "");
    memset(&tc->lora, 0, sizeof tc->lora);
    json_t *lora = json_object_get(j, "lora");
    if (lora) {
        json_int_t rank = 0;
        double alpha = 0;
        const char *targets = NULL;
        if (json_unpack(lora, "{s:I, s:F, s:s}", "rank", &rank, "alpha", &alpha, "targets",
                        &targets) != 0 ||
            rank < 1 || rank > 65536 || !(alpha > 0) || !init) {
            json_decref(j);
            return st_error(ST_ERR_FORMAT,
                            "'%s': the checkpoint's LoRA settings are unreadable (or it names "
                            "no --init model); the manifest is damaged or was not written by "
                            "strata",
                            dir);
        }
        tc->lora.rank = (int)rank;
        tc->lora.alpha = (float)alpha;
        tc->lora.targets = 0;
        /* the family is not known here: the names are kept as written */
        snprintf(tc->lora_targets, sizeof tc->lora_targets, "%s", targets);
    }
    if (id) {
        memset(id, 0, sizeof *id);
        const char *path = json_string_value(json_object_get(j, "data_path"));
        const char *dsum = json_string_value(json_object_get(j, "data_sum64"));
        json_t *dbytes = json_object_get(j, "data_bytes");
        if (path && dsum && json_is_integer(dbytes) && strlen(path) < sizeof id->path) {
            snprintf(id->path, sizeof id->path, "%s", path);
            id->bytes = (uint64_t)json_integer_value(dbytes);
            id->sum = strtoull(dsum, NULL, 16);
        }
        const char *tsum = json_string_value(json_object_get(j, "tokenizer_sum64"));
        if (tsum)
            id->tokenizer = strtoull(tsum, NULL, 16);
    }
    tc->shape.batch = (int)batch;
    tc->shape.seq = (int)seq;
    tc->shape.micro_batches = (int)micro;
    tc->shape.training = true;
    tc->steps = (long)steps;
    tc->lr = (float)lr;
    tc->min_lr = (float)min_lr;
    tc->warmup = (long)warmup;
    tc->weight_decay = (float)wd;
    tc->clip = (float)clip;
    tc->beta1 = (float)b1;
    tc->beta2 = (float)b2;
    tc->eps = (float)eps;
    tc->seed = seedv;
    json_decref(j);
    return ST_OK;
}

typedef struct run {
    st_pipe *p;
    const st_train_layout *layout;
    st_model_desc *desc;
    st_stage *local[ST_PLAN_MAX_STAGES];
    size_t n_local;
    const st_model_config *cfg;
    st_dataset *ds;
    const st_train_config *tc;
    int B, T;
    int32_t *tokens, *targets, *pos; /* pos: packed examples' positions, else NULL */
    float *probs;
    st_train_callback cb;
    void *user;
} run;

static void emit(run *r, st_train_event *e)
{
    if (r->cb)
        r->cb(e, r->user);
}

static st_status evaluate(run *r, long step)
{
    int B = r->B, T = r->T, V = r->cfg->vocab_size;
    double sum = 0;
    long count = 0, exact = 0, seqs = 0;
    bool has_exact = st_dataset_has_exact_match(r->ds);
    st_status s = ST_OK;
    st_progress pr;
    st_progress_begin(&pr, (uint64_t)r->tc->eval_batches, "validating at step %ld: batches",
                      step);
    for (int k = 0; s == ST_OK && k < r->tc->eval_batches; k++) {
        st_progress_update(&pr, (uint64_t)k);
        double bs = 0;
        long bc = 0;
        if ((s = st_dataset_batch_pos(r->ds, ST_VAL, r->tc->seed, (uint64_t)k, B, T, r->tokens,
                                      r->targets, r->pos)) != ST_OK ||
            (s = st_pipe_forward(r->p, r->tokens, r->targets, r->pos, &bs, &bc,
                                 has_exact ? r->probs : NULL)) != ST_OK)
            break;
        sum += bs;
        count += bc;
        if (!has_exact)
            continue;
        /* The sequences whose predictions this process has (a replica's share). */
        int first = 0, mine = B;
        st_pipe_batch_share(r->p, &first, &mine);
        for (int b = first; b < first + mine; b++) {
            bool all = true;
            for (int t = 0; t < T && all; t++) {
                int tgt = r->targets[b * T + t];
                if (tgt < 0)
                    continue;
                const float *p = r->probs + ((size_t)b * T + t) * V;
                int best = 0;
                for (int v = 1; v < V; v++)
                    if (p[v] > p[best])
                        best = v;
                all = best == tgt;
            }
            exact += all;
            seqs++;
        }
    }
    st_progress_end(&pr);
    if (s != ST_OK)
        return s;
    if (r->layout->comm) {
        /* Only the last stage's process saw the predictions (of its replica's share). */
        double v[2] = {(double)exact, (double)seqs};
        if ((s = st_pipe_allsum(r->p, v, 2)) != ST_OK)
            return s;
        exact = (long)v[0];
        seqs = (long)v[1];
    }
    st_train_event e = {.kind = ST_TRAIN_EVAL, .step = step, .steps = r->tc->steps,
                        .val_loss = count ? sum / count : 0, .val_tokens = count,
                        .exact = has_exact && seqs ? (double)exact / seqs : -1};
    emit(r, &e);
    return ST_OK;
}

/* Under MPI: every rank writes its shards, rank 0 gets their names, sizes
 * and checksums and commits the save once all are complete, then every rank
 * learns the outcome (no rank carries on after a save that did not happen). */
static st_status save_ranks(run *r, const st_train_state *state)
{
    const st_train_layout *L = r->layout;
    const st_pipe_comm *C = L->comm;
    const char *dir = r->tc->out_dir;
    int rank = C->rank, ranks = C->ranks;
    if (C->replicas > 1 && C->replica > 0) {
        /* The first replica writes the checkpoint (every replica holds the
         * same bits); the others learn whether it was saved. */
        double verdict = 0;
        st_status v = C->replica_allsum(C->ctx, &verdict, 1);
        if (v != ST_OK)
            return v;
        if (verdict > 0) {
            if (L->failed_together)
                *L->failed_together = true;
            return st_error(ST_ERR_IO, "the checkpoint of step %ld was not saved: another rank "
                                       "failed (its message says why)",
                            state->step);
        }
        return ST_OK;
    }
    double tagv = rank == 0 ? (double)st_checkpoint_new_tag() : 0.0;
    st_status s = L->comm->allsum(L->comm->ctx, &tagv, 1); /* rank 0's tag everywhere */
    if (s != ST_OK)
        return s;
    uint32_t tag = (uint32_t)tagv;
    st_checkpoint_file mine[ST_CHECKPOINT_MAX_FILES];
    size_t n_mine = 0;
    enum { LINE = 2048 };
    char line[LINE];
    s = st_checkpoint_write_part(dir, r->local, r->n_local, state, tag, rank, ranks, mine,
                                 &n_mine);
    if (s == ST_OK)
        st_checkpoint_files_format(mine, n_mine, line, sizeof line);
    else
        snprintf(line, sizeof line, "!%s", st_last_error());
    char *all = rank == 0 ? calloc((size_t)ranks, LINE) : NULL;
    if (rank == 0 && !all)
        s = st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    st_status g = C->gather(C->ctx, line, all, LINE);
    double failed = s != ST_OK || g != ST_OK;
    if (rank == 0 && !failed) {
        st_checkpoint_file *files = calloc(ST_CHECKPOINT_MAX_FILES, sizeof *files);
        size_t n = 0;
        s = files ? ST_OK : st_error(ST_ERR_HOST_MEMORY, "out of host memory");
        for (int k = 0; s == ST_OK && k < ranks; k++) {
            const char *theirs = all + (size_t)k * LINE;
            size_t got = 0;
            if (theirs[0] == '!')
                s = st_error(ST_ERR_IO, "rank %d could not write its part of the checkpoint: %s",
                             k, theirs + 1);
            else if ((s = st_checkpoint_files_parse(theirs, files + n,
                                                    ST_CHECKPOINT_MAX_FILES - n, &got)) == ST_OK)
                n += got;
        }
        if (s == ST_OK)
            s = st_checkpoint_commit(dir, r->cfg, state, tag, files, n);
        free(files);
        failed = s != ST_OK;
    }
    free(all);
    /* Rank 0's verdict to everyone (a sum: any failure anywhere counts). */
    double verdict = rank == 0 ? failed : (s != ST_OK || g != ST_OK);
    st_status v = C->allsum(C->ctx, &verdict, 1);
    if (v == ST_OK && C->replicas > 1) {
        /* ... and to the other replicas of this rank's stage */
        double told = verdict;
        v = C->replica_allsum(C->ctx, &told, 1);
    }
    if (s == ST_OK && g != ST_OK)
        s = g;
    if (s == ST_OK && v != ST_OK)
        s = v;
    if (s == ST_OK && verdict > 0)
        s = st_error(ST_ERR_IO, "the checkpoint of step %ld was not saved: another rank failed "
                                "(its message says why)",
                     state->step);
    if (s != ST_OK && g == ST_OK && v == ST_OK && L->failed_together)
        *L->failed_together = true; /* every rank saw the verdict: none is left waiting */
    if (s == ST_OK && rank == 0)
        s = st_checkpoint_clean(dir, r->tc->keep);
    return s;
}

static st_status save(run *r, long step, const st_dataset *ds)
{
    st_train_state state = {.step = step};
    /* The first replica's weights are saved: they must be every replica's. */
    if (st_pipe_n_replicas(r->p) > 1) {
        bool agree = true;
        st_status a = st_pipe_replicas_agree(r->p, &agree);
        if (a != ST_OK)
            return a;
        if (!agree && r->layout->failed_together)
            *r->layout->failed_together = true; /* every process got the same answer */
        if (!agree)
            return st_error(ST_ERR_NUMERIC,
                            "step %ld: the replicas' weights differ (each should take the same "
                            "update from the same summed gradients; devices that round "
                            "differently cannot be replicas of each other): nothing saved; "
                            "use --parallel pipeline",
                            step);
    }
    char *text = settings_json(r->tc, &r->desc->cfg, ds);
    if (!text)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    snprintf(state.settings, sizeof state.settings, "%s", text);
    free(text);
    st_status s;
    /* split moments over processes: every replica helps the first save them whole */
    if (r->layout->comm && (s = st_pipe_moments_whole(r->p, true)) != ST_OK)
        return s;
    if (r->layout->comm) {
        s = save_ranks(r, &state);
        st_pipe_moments_whole(r->p, false);
    }
    else
        s = st_checkpoint_save(r->tc->out_dir, r->local, r->n_local, r->cfg, &state,
                               r->tc->keep);
    if (s == ST_OK) {
        st_train_event e = {.kind = ST_TRAIN_SAVE, .step = step, .steps = r->tc->steps,
                            .path = r->tc->out_dir};
        emit(r, &e);
    } else {
        st_error_context("saving step %ld to '%s'", step, r->tc->out_dir);
    }
    return s;
}

/* A resumed run must share the settings that shape its batches and schedule. */
static st_status check_resume(const st_train_config *tc, const st_dataset *ds, const char *dir)
{
    st_train_config saved;
    char data[1024];
    st_data_identity want, got;
    st_status s = st_train_settings_read(dir, &saved, data, sizeof data, &want);
    if (s != ST_OK)
        return s;
#define SAME(field, flag)                                                                   \
    if (saved.field != tc->field)                                                           \
        return st_error(ST_ERR_INVALID,                                                     \
                        "resume: %s differs from the checkpoint's; a resumed run continues "  \
                        "with the checkpoint's settings (leave the flag out)",               \
                        flag);
    SAME(shape.batch, "--batch")
    SAME(shape.seq, "--seq")
    SAME(lr, "--lr")
    SAME(min_lr, "--min-lr")
    SAME(warmup, "--warmup")
    SAME(weight_decay, "--weight-decay")
    SAME(clip, "--clip")
    SAME(seed, "--seed")
    SAME(shape.micro_batches, "--micro-batches")
#undef SAME
    if (saved.packed != st_dataset_packed(ds))
        return st_error(ST_ERR_INVALID,
                        "resume: the checkpoint's rows were %s, this run's are %s: the batches "
                        "would differ (leave --pack out)",
                        saved.packed ? "packed" : "one example each",
                        st_dataset_packed(ds) ? "packed" : "one example each");
    st_dataset_identity(ds, &got);
    if (want.path[0]) {
        /* The same bytes, wherever the file is now. */
        if (got.bytes != want.bytes || got.sum != want.sum)
            return st_error(ST_ERR_INVALID,
                            "resume: '%s' is not the data the checkpoint was trained on: it has "
                            "%llu bytes (checksum %016llx), the checkpoint's '%s' had %llu "
                            "(checksum %016llx); give --data with that file, unchanged",
                            got.path[0] ? got.path : st_dataset_name(ds),
                            (unsigned long long)got.bytes, (unsigned long long)got.sum,
                            want.path, (unsigned long long)want.bytes,
                            (unsigned long long)want.sum);
        if (got.tokenizer != want.tokenizer)
            return st_error(ST_ERR_INVALID,
                            "resume: the checkpoint's text was tokenized %s, this run's %s: "
                            "the ids would differ (leave --tokenizer out: the checkpoint "
                            "folder's tokenizer is used)",
                            want.tokenizer ? "by a tokenizer" : "as bytes",
                            !got.tokenizer         ? "as bytes"
                            : want.tokenizer       ? "by another tokenizer"
                                                   : "by a tokenizer");
    } else if (strcmp(data, st_dataset_name(ds)) != 0) {
        return st_error(ST_ERR_INVALID,
                        "resume: the checkpoint was trained on '%s', not '%s' (leave --data out)",
                        data, st_dataset_name(ds));
    }
    return ST_OK;
}

st_status st_train(const st_train_layout *layout, const st_model_config *cfg, st_dataset *ds,
                   const st_train_config *tc, st_train_callback cb, void *user)
{
    run r = {.cfg = cfg, .ds = ds, .tc = tc, .B = tc->shape.batch, .T = tc->shape.seq, .cb = cb,
             .user = user, .layout = layout};
    if (tc->shape.batch < 1 || tc->shape.seq < 1 || tc->steps < 1 || tc->eval_batches < 1 || tc->lr <= 0 ||
        tc->min_lr < 0 || tc->warmup < 0 || tc->clip < 0 || tc->eval_every < 0 ||
        tc->save_every < 0 || tc->shape.micro_batches < 1 || tc->min_lr > tc->lr)
        return st_error(ST_ERR_INVALID,
                        "train: batch, sequence, steps, micro-batches and eval batches must be "
                        "positive, the learning rate positive, the rest not negative, and "
                        "--min-lr (%g) not above --lr (%g): the cosine decay goes from --lr "
                        "down to --min-lr",
                        (double)tc->min_lr, (double)tc->lr);
    if (tc->shape.batch % tc->shape.micro_batches != 0)
        return st_error(ST_ERR_INVALID,
                        "train: a batch of %d sequences does not split into %d equal "
                        "micro-batches",
                        tc->shape.batch, tc->shape.micro_batches);
    if (tc->shape.seq > cfg->n_positions)
        return st_error(ST_ERR_INVALID,
                        "train: sequences of %d tokens do not fit the model's %d positions", tc->shape.seq,
                        cfg->n_positions);
    if (st_dataset_vocab_needed(ds) > cfg->vocab_size)
        return st_error(ST_ERR_INVALID,
                        "train: the data has tokens up to %d, the model's vocabulary is %d",
                        st_dataset_vocab_needed(ds) - 1, cfg->vocab_size);
    st_status s = ST_OK;
    st_train_state state = {0};
    if (tc->resume_dir && (s = check_resume(tc, ds, tc->resume_dir)) != ST_OK)
        return s;
    st_model_desc *desc = NULL;
    if ((s = st_model_describe(cfg, &desc)) != ST_OK)
        return s;
    size_t N = (size_t)r.B * r.T;
    r.tokens = malloc(N * sizeof *r.tokens);
    r.targets = malloc(N * sizeof *r.targets);
    r.pos = st_dataset_packed(ds) ? malloc(N * sizeof *r.pos) : NULL;
    r.probs = malloc(N * cfg->vocab_size * sizeof *r.probs);
    if (!r.tokens || !r.targets || !r.probs || (st_dataset_packed(ds) && !r.pos))
        s = st_error(ST_ERR_HOST_MEMORY, "out of host memory for a batch");
    const st_run_shape *ps = &layout->plan->shape;
    if (s == ST_OK && (ps->batch != tc->shape.batch || ps->seq != tc->shape.seq ||
                       ps->micro_batches != tc->shape.micro_batches ||
                       ps->schedule != tc->shape.schedule || !ps->training))
        s = st_error(ST_ERR_INVALID,
                     "train: the plan is for %d x %d tokens in %d micro-batches (%s%s), the "
                     "training for %d x %d in %d (%s)",
                     ps->batch, ps->seq, ps->micro_batches, st_schedule_name(ps->schedule),
                     ps->training ? "" : ", inference", tc->shape.batch, tc->shape.seq,
                     tc->shape.micro_batches, st_schedule_name(tc->shape.schedule));
    r.desc = desc;
    if (s == ST_OK)
        s = st_pipe_create(layout->plan, desc, layout->devs, layout->comm, &r.p);
    for (size_t k = 0; s == ST_OK && k < layout->plan->n_stages; k++)
        if (st_pipe_stage(r.p, k))
            r.local[r.n_local++] = st_pipe_stage(r.p, k);
    /* A resumed run: weights, moments and step; --init: weights only, step 0. */
    /* LoRA: the base model from --init (frozen), the adapters drawn from the
     * seed (B zero) or, resuming, from the run with their moments. */
    bool lora = cfg->lora.rank > 0;
    if (s == ST_OK && lora && !tc->init_dir)
        s = st_error(ST_ERR_INVALID, "train: LoRA adapts a model: it needs --init DIR");
    if (s == ST_OK && lora && !tc->resume_dir)
        s = st_pipe_init(r.p, tc->seed);
    if (s == ST_OK && lora)
        s = st_checkpoint_load_pipe(tc->init_dir, r.p, NULL);
    if (s == ST_OK && tc->resume_dir)
        s = st_checkpoint_load_pipe(tc->resume_dir, r.p, &state);
    else if (s == ST_OK && tc->init_dir && !lora)
        s = st_checkpoint_load_pipe(tc->init_dir, r.p, NULL);
    else if (s == ST_OK && !lora)
        s = st_pipe_init(r.p, tc->seed);
    long start = state.step;
    long last = tc->stop_at > 0 && tc->stop_at < tc->steps ? tc->stop_at : tc->steps;
    if (s == ST_OK && start >= last)
        s = st_error(ST_ERR_INVALID,
                     "resume: the checkpoint is at step %ld, --steps/--stop-at %ld leave nothing "
                     "to do",
                     start, last);
    if (s == ST_OK) {
        uint64_t bytes = 0, peak = 0;
        for (size_t k = 0; k < r.n_local; k++) {
            bytes += st_stage_bytes(r.local[k]);
            peak += st_device_get_memory(st_stage_device(r.local[k])).peak;
        }
        st_train_event e = {.kind = ST_TRAIN_START, .step = start, .steps = tc->steps,
                            .params = desc->param_numel, .trained = desc->train_numel,
                            .device_bytes = bytes,
                            .peak_bytes = peak};
        emit(&r, &e);
    }
    double t_start = st_now_s();
    long done_steps = 0;
    bool interrupted = false;
    for (long step = start + 1; s == ST_OK && step <= last; step++) {
        double t0 = st_now_s();
        float lr = st_train_lr(tc, step);
        st_pipe_step_result res;
        st_adamw_hparams hp = {lr, tc->beta1, tc->beta2, tc->eps, tc->weight_decay};
        if ((s = st_dataset_batch_pos(ds, ST_TRAIN, tc->seed, (uint64_t)(step - 1), r.B, r.T,
                                      r.tokens, r.targets, r.pos)) != ST_OK)
            break;
        st_profiler_pause(false); /* the profiler counts steps, not validation or saves */
        s = st_pipe_train_step(r.p, r.tokens, r.targets, r.pos, &hp, step, tc->clip, &res);
        st_profiler_pause(true);
        if (s != ST_OK)
            break;
        double ms = (st_now_s() - t0) * 1e3, wait = 0;
        for (size_t k = 0; k < layout->plan->n_stages; k++)
            wait = fmax(wait, st_pipe_wait_s(r.p, k) * 1e3);
        done_steps++;
        st_train_event e = {.kind = ST_TRAIN_STEP, .step = step, .steps = tc->steps,
                            .loss = res.loss, .lr = lr, .grad_norm = res.grad_norm, .ms = ms,
                            .tokens_per_s = (double)N / (ms * 1e-3), .wait_ms = wait,
                            .skipped = res.nonfinite, .where = res.where};
        if (res.nonfinite && !tc->skip_nonfinite) {
            /* Nothing is saved: the weights are those of the step before, but
             * the run cannot go on as asked. Every process saw the same sums. */
            s = st_error(ST_ERR_NUMERIC,
                         "step %ld: the loss (%g) or the gradient norm (%g) is not finite; first "
                         "found at %s. No update was made and nothing saved: lower --lr, set "
                         "--clip, or --on-nan skip to pass over such steps",
                         step, res.loss, res.grad_norm, res.where);
            if (layout->failed_together)
                *layout->failed_together = true;
            break;
        }
        emit(&r, &e);
        if (tc->should_stop && tc->should_stop() && step < last) {
            last = step; /* ends the loop after this step's validation and save */
            interrupted = true;
        }
        if ((tc->eval_every > 0 && step % tc->eval_every == 0) || step == last)
            s = evaluate(&r, step);
        if (s == ST_OK && tc->out_dir &&
            ((tc->save_every > 0 && step % tc->save_every == 0) || step == last))
            s = save(&r, step, ds);
    }
    if (s == ST_OK) {
        double secs = st_now_s() - t_start;
        uint64_t bytes = 0, peak = 0;
        for (size_t k = 0; k < r.n_local; k++) {
            uint64_t pk = st_device_get_memory(st_stage_device(r.local[k])).peak;
            bytes += st_stage_bytes(r.local[k]);
            peak = peak > pk ? peak : pk;
        }
        st_train_event e = {.kind = ST_TRAIN_DONE, .step = last, .steps = tc->steps,
                            .seconds = secs, .interrupted = interrupted,
                            .tokens_per_s = secs > 0 ? (double)N * done_steps / secs : 0,
                            .device_bytes = bytes, .peak_bytes = peak};
        emit(&r, &e);
    }
    st_profiler_pause(false);
    st_pipe_destroy(r.p);
    st_model_desc_destroy(desc);
    free(r.tokens);
    free(r.targets);
    free(r.probs);
    free(r.pos);
    return s;
}
