/*
 * checkpoint.c - model folders saved as a unit: step-tagged files, one
 * manifest renamed into place, the Hugging Face view, cleaning; and loading
 * the newest complete save (see strata/checkpoint.h).
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "core/atomic.h"
#include "core/hash.h"
#include "strata/adapter.h"
#include "strata/checkpoint.h"
#include "strata/pipe.h"
#include "strata/safetensors.h"

#define MANIFEST_FORMAT "strata-checkpoint"
#define MANIFEST_VERSION 1

/* Creates dir and its parents; *created: dir itself did not exist. */
static st_status make_dir(const char *dir, bool *created)
{
    *created = false;
    char path[4096];
    if (strlen(dir) >= sizeof path)
        return st_error(ST_ERR_INVALID, "folder name too long: '%.64s...'", dir);
    snprintf(path, sizeof path, "%s", dir);
    for (char *p = path + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(path, 0755) != 0 && errno != EEXIST)
            return st_error(ST_ERR_IO, "cannot create folder '%s': %s", path, strerror(errno));
        *p = '/';
    }
    if (mkdir(path, 0755) == 0)
        *created = true;
    else if (errno != EEXIST)
        return st_error(ST_ERR_IO, "cannot create folder '%s': %s", path, strerror(errno));
    return ST_OK;
}

static void join(char *out, size_t size, const char *dir, const char *name)
{
    snprintf(out, size, "%s/%s", dir, name);
}

st_status st_checkpoint_prepare(const char *dir, bool *created)
{
    /* Before a run, a folder that cannot be written is a bad --out (exit 2);
     * a write that fails during a save is a failure of the run (exit 1). */
    bool made = false;
    st_status s = make_dir(dir, &made);
    if (created)
        *created = made;
    if (s != ST_OK) {
        char why[1024];
        snprintf(why, sizeof why, "%s", st_last_error());
        return st_error(ST_ERR_INVALID, "%s (choose another --out)", why);
    }
    struct stat sb;
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return st_error(ST_ERR_INVALID, "--out '%s' is not a folder (choose another --out)", dir);
    /* A probe under a name nobody can have placed (mkstemp: O_CREAT|O_EXCL,
     * which follows no link): a fixed name let a symbolic link planted there
     * truncate its target. */
    char probe[4200];
    snprintf(probe, sizeof probe, "%s/.strata-write-test.XXXXXX", dir);
    int fd = mkstemp(probe);
    if (fd < 0)
        return st_error(ST_ERR_INVALID, "cannot write into '%s': %s (choose another --out)", dir,
                        strerror(errno));
    close(fd);
    unlink(probe);
    return ST_OK;
}

/* ---- the run folder's lock ----------------------------------------------------- */

#define LOCK_NAME ".strata-lock"

static struct {
    pthread_mutex_t mu;
    int fd;
    char path[4200];
} run_lock = {PTHREAD_MUTEX_INITIALIZER, -1, ""};

st_status st_checkpoint_lock(const char *dir)
{
    char path[4200];
    join(path, sizeof path, dir, LOCK_NAME);
    for (int attempt = 0; attempt < 10; attempt++) {
        int fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK, 0644);
        if (fd < 0)
            return st_error(ST_ERR_INVALID,
                            "cannot create the lock file '%s': %s (choose another --out)", path,
                            strerror(errno));
        struct stat fs, ps;
        if (fstat(fd, &fs) != 0 || !S_ISREG(fs.st_mode)) {
            close(fd);
            return st_error(ST_ERR_INVALID,
                            "'%s' is not a regular file: remove it, or choose another --out",
                            path);
        }
        if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
            int err = errno;
            char holder[256] = "";
            ssize_t got = pread(fd, holder, sizeof holder - 1, 0);
            close(fd);
            holder[got > 0 ? got : 0] = '\0';
            holder[strcspn(holder, "\n")] = '\0';
            if (err != EWOULDBLOCK)
                return st_error(ST_ERR_IO, "cannot lock '%s': %s", path, strerror(err));
            return st_error(ST_ERR_BUSY,
                            "run folder '%s' is in use by another `strata train` (%s): two "
                            "runs writing one folder would delete each other's saves; wait "
                            "for it to end, or choose another --out",
                            dir, holder[0] ? holder : "its process is still running");
        }
        /* The name may have been removed (and made again) by the holder
         * ending between our open and our lock: then this lock guards a
         * file nobody else will open; take the one there now. */
        if (stat(path, &ps) != 0 || ps.st_ino != fs.st_ino || ps.st_dev != fs.st_dev) {
            close(fd);
            continue;
        }
        char host[128] = "?", line[512];
        gethostname(host, sizeof host - 1);
        host[sizeof host - 1] = '\0';
        time_t now = time(NULL);
        struct tm tm;
        char when[64];
        strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", localtime_r(&now, &tm));
        int len = snprintf(line, sizeof line, "pid %ld on %s, since %s\n", (long)getpid(), host,
                           when);
        /* Informational: a failure to write it leaves the lock held. */
        if (ftruncate(fd, 0) != 0 || pwrite(fd, line, (size_t)len, 0) != len)
            st_log(ST_LOG_DEBUG, "cannot write the holder into '%s'", path);
        pthread_mutex_lock(&run_lock.mu);
        if (run_lock.fd >= 0)
            close(run_lock.fd);
        run_lock.fd = fd;
        snprintf(run_lock.path, sizeof run_lock.path, "%s", path);
        pthread_mutex_unlock(&run_lock.mu);
        return ST_OK;
    }
    return st_error(ST_ERR_BUSY, "cannot take the lock '%s': it keeps being replaced", path);
}

void st_checkpoint_unlock(void)
{
    pthread_mutex_lock(&run_lock.mu);
    if (run_lock.fd >= 0) {
        /* Removed while still held, so that nobody locks the old file. */
        unlink(run_lock.path);
        close(run_lock.fd);
        run_lock.fd = -1;
    }
    pthread_mutex_unlock(&run_lock.mu);
}

/* ---- names ------------------------------------------------------------------- */

static void shard_name(char *out, size_t size, const char *base, long step, uint32_t tag,
                       int rank, int ranks)
{
    snprintf(out, size, "%s-step%08ld-%08" PRIx32 "-%05d-of-%05d.safetensors", base, step, tag,
             rank + 1, ranks);
}

static void manifest_name(char *out, size_t size, long step, uint32_t tag)
{
    snprintf(out, size, "checkpoint-step%08ld-%08" PRIx32 ".json", step, tag);
}

static bool starts_with(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* A file of a save (shard or manifest), by its name. */
static bool is_save_file(const char *name)
{
    return ((starts_with(name, "model-step") || starts_with(name, "optimizer-step")) &&
            ends_with(name, ".safetensors")) ||
           (starts_with(name, "checkpoint-step") && ends_with(name, ".json"));
}

/* A name of ours that a crash may have left as a temporary file. */
static bool is_our_temp(const char *name)
{
    return st_afile_is_temp(name) &&
           (starts_with(name, "model") || starts_with(name, "optimizer") ||
            starts_with(name, "checkpoint-step") || starts_with(name, "config.json"));
}

uint32_t st_checkpoint_new_tag(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t h = st_fnv64(ST_FNV64_INIT, &ts, sizeof ts);
    long pid = (long)getpid();
    h = st_fnv64(h, &pid, sizeof pid);
    return (uint32_t)(h ^ (h >> 32));
}

/* ---- writing ----------------------------------------------------------------- */

/* Do the stages hold LoRA adapters? Then a save holds those (the base
 * model is the --init folder's, unchanged). */
static bool have_adapters(st_stage *const *stages, size_t n)
{
    for (size_t k = 0; k < n; k++)
        for (size_t i = 0; i < st_stage_n_params(stages[k]); i++)
            if (st_stage_param_at(stages[k], i)->desc->adapter)
                return true;
    return false;
}

/* Adds one buffer of every stage's own (not tied) parameters, names
 * prefixed: the weights (with adapters, theirs only) or the moments (of the
 * parameters that train). */
static st_status add_buffers(st_safetensors_writer *w, st_stage *const *stages, size_t n,
                             st_stage_buf which, const char *prefix)
{
    st_status s = ST_OK;
    bool adapters = have_adapters(stages, n);
    for (size_t k = 0; s == ST_OK && k < n; k++) {
        for (size_t i = 0; s == ST_OK && i < st_stage_n_params(stages[k]); i++) {
            const st_stage_param *p = st_stage_param_at(stages[k], i);
            if (p->tied || (which != ST_STAGE_PARAMS && p->desc->frozen) ||
                (which == ST_STAGE_PARAMS && adapters && !p->desc->adapter))
                continue;
            float *host = malloc(p->desc->numel * sizeof *host);
            if (!host)
                return st_error(ST_ERR_HOST_MEMORY, "out of host memory saving '%s'",
                                p->desc->name);
            char name[128];
            snprintf(name, sizeof name, "%s%s", prefix, p->desc->name);
            if ((s = st_stage_read(stages[k], which, i, host)) == ST_OK)
                s = st_safetensors_add_f32(w, name, p->desc->ndim, p->desc->shape, host);
            free(host);
        }
    }
    return s;
}

st_status st_checkpoint_write_part(const char *dir, st_stage *const *stages, size_t n_stages,
                                   const st_train_state *state, uint32_t tag, int rank,
                                   int ranks, st_checkpoint_file *files, size_t *n_files)
{
    *n_files = 0;
    bool created;
    st_status s = make_dir(dir, &created);
    long step = state ? state->step : 0;
    char stepv[32];
    snprintf(stepv, sizeof stepv, "%ld", step);
    for (int b = 0; s == ST_OK && b < (state ? 2 : 1); b++) {
        st_safetensors_writer *w = NULL;
        if ((s = st_safetensors_writer_create(&w)) != ST_OK)
            return s;
        st_checkpoint_file *f = &files[*n_files];
        memset(f, 0, sizeof *f);
        f->optimizer = b == 1;
        shard_name(f->name, sizeof f->name, b ? "optimizer" : "model", step, tag, rank, ranks);
        char path[4400];
        join(path, sizeof path, dir, f->name);
        if (b == 0) {
            if ((s = add_buffers(w, stages, n_stages, ST_STAGE_PARAMS, "")) == ST_OK)
                s = st_safetensors_set_metadata(w, "format", "pt");
        } else if ((s = add_buffers(w, stages, n_stages, ST_STAGE_ADAM_M, "m.")) == ST_OK) {
            s = add_buffers(w, stages, n_stages, ST_STAGE_ADAM_V, "v.");
        }
        if (s == ST_OK)
            s = st_safetensors_set_metadata(w, "step", stepv);
        if (s == ST_OK)
            s = st_safetensors_save_sum(w, path, &f->bytes, &f->sum);
        st_safetensors_writer_destroy(w);
        if (s == ST_OK)
            (*n_files)++;
    }
    return s;
}

void st_checkpoint_files_format(const st_checkpoint_file *files, size_t n, char *out, size_t size)
{
    out[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        size_t used = strlen(out);
        snprintf(out + used, size - used, "%s%c %s %" PRIu64 " %016" PRIx64, i ? " " : "",
                 files[i].optimizer ? 'o' : 'm', files[i].name, files[i].bytes, files[i].sum);
    }
}

st_status st_checkpoint_files_parse(const char *line, st_checkpoint_file *files, size_t max,
                                    size_t *n)
{
    *n = 0;
    const char *p = line;
    while (*p) {
        char kind, name[128];
        unsigned long long bytes, sum;
        int used = 0;
        if (*n == max || sscanf(p, " %c %127s %llu %llx%n", &kind, name, &bytes, &sum, &used) != 4 ||
            (kind != 'm' && kind != 'o'))
            return st_error(ST_ERR_FORMAT, "checkpoint: unreadable list of saved files '%.80s'",
                            line);
        st_checkpoint_file *f = &files[(*n)++];
        memset(f, 0, sizeof *f);
        snprintf(f->name, sizeof f->name, "%s", name);
        f->optimizer = kind == 'o';
        f->bytes = bytes;
        f->sum = sum;
        p += used;
        while (*p == ' ')
            p++;
    }
    return ST_OK;
}

static st_status write_json(const char *path, json_t *j)
{
    char *text = j ? json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(17))
                   : NULL;
    if (!text)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory writing '%s'", path);
    size_t len = strlen(text);
    text[len] = '\n'; /* replaces the terminator; len + 1 bytes are written */
    st_status s = st_write_file_atomic(path, text, len + 1, NULL);
    free(text);
    return s;
}

/* The tensor names of a safetensors file, read from its header only. */
static st_status header_names(const char *path, json_t **out)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return st_error(ST_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
    unsigned char lenb[8];
    uint64_t len = 0;
    st_status s = ST_OK;
    if (fread(lenb, 1, 8, f) != 8)
        s = st_error(ST_ERR_FORMAT, "%s: too short for a safetensors file", path);
    for (int i = 7; s == ST_OK && i >= 0; i--)
        len = (len << 8) | lenb[i];
    if (s == ST_OK && len > ST_SAFETENSORS_MAX_HEADER)
        s = st_error(ST_ERR_FORMAT, "%s: header of %" PRIu64 " bytes", path, len);
    char *text = s == ST_OK ? malloc(len + 1) : NULL;
    if (s == ST_OK && !text)
        s = st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    if (s == ST_OK && fread(text, 1, len, f) != len)
        s = st_error(ST_ERR_FORMAT, "%s: header cut short", path);
    fclose(f);
    if (s == ST_OK) {
        text[len] = '\0';
        *out = json_loads(text, 0, NULL);
        if (!json_is_object(*out)) {
            json_decref(*out);
            s = st_error(ST_ERR_FORMAT, "%s: header is not a JSON object", path);
        }
    }
    free(text);
    return s;
}

/* model.safetensors.index.json: Hugging Face's map from tensor to shard. */
static st_status write_hf_index(const char *dir, long step, const st_checkpoint_file *files,
                                size_t n)
{
    json_t *map = json_object();
    json_int_t total = 0;
    st_status s = map ? ST_OK : st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    for (size_t i = 0; s == ST_OK && i < n; i++) {
        if (files[i].optimizer)
            continue;
        char path[4400];
        join(path, sizeof path, dir, files[i].name);
        json_t *h = NULL;
        if ((s = header_names(path, &h)) != ST_OK)
            break;
        const char *key;
        json_t *v;
        json_object_foreach(h, key, v) {
            if (strcmp(key, "__metadata__") == 0)
                continue;
            json_t *off = json_object_get(v, "data_offsets");
            total += json_integer_value(json_array_get(off, 1)) -
                     json_integer_value(json_array_get(off, 0));
            json_object_set_new(map, key, json_string(files[i].name));
        }
        json_decref(h);
    }
    char stepv[32];
    snprintf(stepv, sizeof stepv, "%ld", step);
    json_t *index = s == ST_OK ? json_pack("{s:{s:s, s:s, s:I}, s:O}", "metadata", "format",
                                           "pt", "step", stepv, "total_size", total,
                                           "weight_map", map)
                               : NULL;
    if (s == ST_OK) {
        char path[4400];
        join(path, sizeof path, dir, "model.safetensors.index.json");
        s = write_json(path, index);
    }
    json_decref(index);
    json_decref(map);
    return s;
}

/* The PEFT view of a LoRA run: adapter_config.json and
 * adapter_model.safetensors (the adapters of every rank's model file,
 * named as PEFT names them), which peft loads onto the --init model and
 * `--adapter` reads. */
static st_status write_peft_view(const char *dir, const st_model_config *cfg,
                                 json_t *settings, const st_checkpoint_file *files,
                                 size_t n_files)
{
    st_safetensors_writer *w = NULL;
    st_status s = st_safetensors_writer_create(&w);
    char path[4400];
    for (size_t i = 0; s == ST_OK && i < n_files; i++) {
        if (files[i].optimizer)
            continue;
        st_safetensors *f = NULL;
        join(path, sizeof path, dir, files[i].name);
        if ((s = st_safetensors_open(path, &f)) != ST_OK)
            break;
        const st_safetensors_entry *e;
        for (size_t j = 0; s == ST_OK && (e = st_safetensors_at(f, j)); j++) {
            float *x = malloc((e->numel ? e->numel : 1) * sizeof *x);
            size_t shape[2] = {(size_t)e->shape[0], e->ndim > 1 ? (size_t)e->shape[1] : 1};
            char name[192];
            /* PEFT's module path: GPT2LMHeadModel holds the blocks in "transformer" */
            snprintf(name, sizeof name, "base_model.model.%s%s",
                     cfg->family == ST_FAMILY_GPT2 ? "transformer." : "", e->name);
            s = x ? st_safetensors_to_f32(e, x)
                  : st_error(ST_ERR_HOST_MEMORY, "out of host memory writing the adapter");
            if (s == ST_OK)
                s = st_safetensors_add_f32(w, name, e->ndim, shape, x);
            free(x);
        }
        st_safetensors_close(f);
    }
    join(path, sizeof path, dir, "adapter_model.safetensors");
    if (s == ST_OK && (s = st_safetensors_set_metadata(w, "format", "pt")) == ST_OK)
        s = st_safetensors_save(w, path);
    st_safetensors_writer_destroy(w);
    if (s != ST_OK)
        return s;
    const char *const *names = st_lora_target_names(cfg->family);
    json_t *targets = json_array();
    for (int i = 0; names[i]; i++)
        if (cfg->lora.targets & (1u << i))
            json_array_append_new(targets, json_string(names[i]));
    const char *init = settings ? json_string_value(json_object_get(settings, "init")) : NULL;
    double alpha = cfg->lora.alpha;
    json_t *j = json_pack("{s:s, s:s, s:i, s:o, s:f, s:s, s:b, s:o, s:b, s:b, s:b, s:b, s:o, "
                          "s:o}",
                          "peft_type", "LORA", "task_type", "CAUSAL_LM", "r", cfg->lora.rank,
                          "lora_alpha",
                          alpha == floor(alpha) ? json_integer((json_int_t)alpha)
                                                : json_real(alpha),
                          "lora_dropout", 0.0, "bias", "none", "fan_in_fan_out",
                          cfg->family == ST_FAMILY_GPT2, /* Conv1D weights are [in, out] */
                          "target_modules", targets, "inference_mode", 1, "use_rslora", 0,
                          "use_dora", 0, "init_lora_weights", 1, "rank_pattern", json_object(),
                          "alpha_pattern", json_object());
    if (!j)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory writing adapter_config.json");
    json_object_set_new(j, "base_model_name_or_path", init ? json_string(init) : json_null());
    json_object_set_new(j, "modules_to_save", json_null());
    join(path, sizeof path, dir, "adapter_config.json");
    s = write_json(path, j);
    json_decref(j);
    return s;
}

st_status st_checkpoint_commit(const char *dir, const st_model_config *cfg,
                               const st_train_state *state, uint32_t tag,
                               const st_checkpoint_file *files, size_t n_files)
{
    long step = state ? state->step : 0;
    char *cfg_text = st_model_config_json(cfg);
    json_t *config = cfg_text ? json_loads(cfg_text, 0, NULL) : NULL;
    free(cfg_text);
    json_t *settings = NULL;
    if (state && !(settings = json_loads(state->settings, 0, NULL))) {
        json_decref(config);
        return st_error(ST_ERR_INVALID, "checkpoint: the training settings are not JSON");
    }
    json_t *list = json_array();
    for (size_t i = 0; list && i < n_files; i++) {
        char sum[24];
        snprintf(sum, sizeof sum, "%016" PRIx64, files[i].sum);
        json_array_append_new(list, json_pack("{s:s, s:s, s:I, s:s}", "name", files[i].name,
                                              "kind", files[i].optimizer ? "optimizer" : "model",
                                              "bytes", (json_int_t)files[i].bytes, "sum64", sum));
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    char tagv[16];
    snprintf(tagv, sizeof tagv, "%08" PRIx32, tag);
    json_t *m = config && list ? json_pack("{s:s, s:i, s:I, s:s, s:I, s:O, s:O}", "format",
                                           MANIFEST_FORMAT, "version", MANIFEST_VERSION, "step",
                                           (json_int_t)step, "tag", tagv, "saved_ns",
                                           (json_int_t)ts.tv_sec * 1000000000 + ts.tv_nsec,
                                           "config", config, "files", list)
                               : NULL;
    if (m && settings)
        json_object_set(m, "settings", settings);
    json_decref(config);
    json_decref(list);
    if (!m) {
        json_decref(settings);
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory writing a checkpoint manifest");
    }
    char name[128], path[4400];
    manifest_name(name, sizeof name, step, tag);
    join(path, sizeof path, dir, name);
    /* The commit: once this rename is on disk, the save is the folder's current one. */
    st_status s = write_json(path, m);
    json_decref(m);
    if (s == ST_OK && cfg->lora.rank > 0) /* adapters: PEFT's view, not a model's */
        s = write_peft_view(dir, cfg, settings, files, n_files);
    json_decref(settings);
    if (s != ST_OK || cfg->lora.rank > 0)
        return s;
    /* The Hugging Face view. A crash before these leaves the previous save's
     * view, whose files are still there: cleaning comes later. */
    join(path, sizeof path, dir, "config.json");
    if ((s = st_model_config_save(cfg, path)) != ST_OK ||
        (s = write_hf_index(dir, step, files, n_files)) != ST_OK)
        return s;
    /* Files of the single-file layout would take precedence for other tools. */
    static const char *const old[] = {"model.safetensors", "optimizer.safetensors",
                                      "optimizer.safetensors.index.json"};
    bool removed = false;
    for (size_t i = 0; i < sizeof old / sizeof old[0]; i++) {
        join(path, sizeof path, dir, old[i]);
        struct stat sb;
        if (stat(path, &sb) != 0)
            continue;
        st_crash_point("remove a file of the single-file layout", path);
        removed = unlink(path) == 0 || removed;
    }
    return removed ? st_fsync_dir(dir) : ST_OK;
}

/* ---- manifests ---------------------------------------------------------------- */

typedef struct manifest {
    char name[128];
    long step;
    long long saved_ns;
    st_model_config cfg;
    bool has_state;
    st_train_state state;
    st_checkpoint_file files[ST_CHECKPOINT_MAX_FILES];
    size_t n_files;
} manifest;

static bool plain_file_name(const char *name)
{
    return *name && name[0] != '.' && !strchr(name, '/') && !strchr(name, '\\');
}

/* Reads and checks a manifest's fields (not yet its files). */
static st_status manifest_read(const char *dir, const char *name, manifest *m)
{
    memset(m, 0, sizeof *m);
    snprintf(m->name, sizeof m->name, "%s", name);
    char path[4400];
    join(path, sizeof path, dir, name);
    json_error_t err;
    json_t *j = json_load_file(path, JSON_REJECT_DUPLICATES, &err);
    if (!j)
        return st_error(ST_ERR_FORMAT, "%s: not valid JSON (%s)", name, err.text);
    st_status s = ST_OK;
    const char *format = NULL, *tag = NULL;
    json_int_t version = 0, step = -1, saved = 0;
    json_t *config = NULL, *files = NULL, *settings = NULL;
    if (json_unpack(j, "{s:s, s:I, s:I, s:s, s:I, s:o, s:o, s?o}", "format", &format, "version",
                    &version, "step", &step, "tag", &tag, "saved_ns", &saved, "config", &config,
                    "files", &files, "settings", &settings) != 0 ||
        strcmp(format, MANIFEST_FORMAT) != 0)
        s = st_error(ST_ERR_FORMAT, "%s: not a Strata checkpoint manifest", name);
    else if (version != MANIFEST_VERSION)
        s = st_error(ST_ERR_UNSUPPORTED,
                     "%s: manifest version %lld; this strata reads version %d (a newer strata "
                     "wrote it)",
                     name, (long long)version, MANIFEST_VERSION);
    else if (step < 0 || step > (json_int_t)1 << 52 || !json_is_array(files) ||
             json_array_size(files) == 0 || json_array_size(files) > ST_CHECKPOINT_MAX_FILES ||
             (settings && !json_is_object(settings)))
        s = st_error(ST_ERR_FORMAT, "%s: bad step, file list or settings", name);
    if (s == ST_OK) {
        m->step = (long)step;
        m->saved_ns = saved;
        char *text = json_dumps(config, JSON_COMPACT);
        s = text ? st_model_config_parse(text, name, &m->cfg)
                 : st_error(ST_ERR_HOST_MEMORY, "out of host memory");
        free(text);
    }
    bool has_model = false, has_opt = false;
    for (size_t i = 0; s == ST_OK && i < json_array_size(files); i++) {
        const char *fname = NULL, *kind = NULL, *sum = NULL;
        json_int_t bytes = -1;
        st_checkpoint_file *f = &m->files[m->n_files];
        char *end = NULL;
        if (json_unpack(json_array_get(files, i), "{s:s, s:s, s:I, s:s}", "name", &fname, "kind",
                        &kind, "bytes", &bytes, "sum64", &sum) != 0 ||
            !plain_file_name(fname) || strlen(fname) >= sizeof f->name || bytes < 0 ||
            (strcmp(kind, "model") != 0 && strcmp(kind, "optimizer") != 0) ||
            strlen(sum) != 16 || (f->sum = strtoull(sum, &end, 16), *end)) {
            s = st_error(ST_ERR_FORMAT, "%s: file entry %zu is malformed", name, i + 1);
            break;
        }
        snprintf(f->name, sizeof f->name, "%s", fname);
        f->optimizer = kind[0] == 'o';
        f->bytes = (uint64_t)bytes;
        has_model = has_model || !f->optimizer;
        has_opt = has_opt || f->optimizer;
        m->n_files++;
    }
    if (s == ST_OK && !has_model)
        s = st_error(ST_ERR_FORMAT, "%s names no model file", name);
    if (s == ST_OK && settings) {
        if (!has_opt) {
            s = st_error(ST_ERR_FORMAT, "%s has training settings but no optimizer file", name);
        } else {
            char *text = json_dumps(settings, JSON_COMPACT | JSON_PRESERVE_ORDER |
                                                  JSON_REAL_PRECISION(17));
            if (!text || strlen(text) >= sizeof m->state.settings)
                s = st_error(ST_ERR_FORMAT, "%s: training settings too long", name);
            else
                snprintf(m->state.settings, sizeof m->state.settings, "%s", text);
            free(text);
            m->has_state = s == ST_OK;
            m->state.step = m->step;
        }
    }
    (void)tag;
    json_decref(j);
    return s;
}

static int newest_first(const void *a, const void *b)
{
    const manifest *x = *(manifest *const *)a, *y = *(manifest *const *)b;
    if (x->step != y->step)
        return x->step > y->step ? -1 : 1;
    if (x->saved_ns != y->saved_ns)
        return x->saved_ns > y->saved_ns ? -1 : 1;
    return strcmp(y->name, x->name);
}

/* Every readable manifest of dir, newest first (the caller frees them).
 * Unreadable ones are counted and described in `bad`. */
static st_status manifests_list(const char *dir, manifest ***out, size_t *n, char *bad,
                                size_t bad_size, size_t *n_bad)
{
    *out = NULL;
    *n = 0;
    *n_bad = 0;
    if (bad_size)
        bad[0] = '\0';
    DIR *d = opendir(dir);
    if (!d)
        return st_error(errno == ENOENT ? ST_ERR_NOT_FOUND : ST_ERR_IO,
                        "cannot read model folder '%s': %s", dir, strerror(errno));
    manifest **list = NULL;
    size_t cap = 0;
    st_status s = ST_OK;
    struct dirent *e;
    while (s == ST_OK && (e = readdir(d))) {
        if (!starts_with(e->d_name, "checkpoint-step") || !ends_with(e->d_name, ".json"))
            continue;
        manifest *m = malloc(sizeof *m);
        if (!m) {
            s = st_error(ST_ERR_HOST_MEMORY, "out of host memory");
            break;
        }
        if (manifest_read(dir, e->d_name, m) != ST_OK) {
            size_t used = strlen(bad);
            if (used + 2 < bad_size)
                snprintf(bad + used, bad_size - used, "%s%s", used ? "; " : "", st_last_error());
            (*n_bad)++;
            free(m);
            continue;
        }
        if (*n == cap) {
            cap = cap ? 2 * cap : 8;
            manifest **grown = realloc(list, cap * sizeof *grown);
            if (!grown) {
                free(m);
                s = st_error(ST_ERR_HOST_MEMORY, "out of host memory");
                break;
            }
            list = grown;
        }
        list[(*n)++] = m;
    }
    closedir(d);
    if (s != ST_OK) {
        for (size_t i = 0; i < *n; i++)
            free(list[i]);
        free(list);
        *n = 0;
        return s;
    }
    if (*n)
        qsort(list, *n, sizeof *list, newest_first);
    *out = list;
    return ST_OK;
}

static void manifests_free(manifest **list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(list[i]);
    free(list);
}

/* Checksums already verified in this process: a file is read once however
 * often the folder is opened (the CLI opens it for the settings, the config
 * and the weights). Keyed by path, inode, size and modification time. */
typedef struct verified {
    char path[4400];
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
    uint64_t sum;
} verified;

static pthread_mutex_t memo_lock = PTHREAD_MUTEX_INITIALIZER;
static verified memo[32];
static size_t memo_next;

static bool memo_find(const char *path, const struct stat *sb, uint64_t *sum)
{
    bool found = false;
    pthread_mutex_lock(&memo_lock);
    for (size_t i = 0; i < sizeof memo / sizeof memo[0] && !found; i++) {
        verified *v = &memo[i];
        if (strcmp(v->path, path) == 0 && v->dev == sb->st_dev && v->ino == sb->st_ino &&
            v->size == sb->st_size && v->mtime.tv_sec == sb->st_mtim.tv_sec &&
            v->mtime.tv_nsec == sb->st_mtim.tv_nsec) {
            *sum = v->sum;
            found = true;
        }
    }
    pthread_mutex_unlock(&memo_lock);
    return found;
}

static void memo_add(const char *path, const struct stat *sb, uint64_t sum)
{
    pthread_mutex_lock(&memo_lock);
    verified *v = &memo[memo_next++ % (sizeof memo / sizeof memo[0])];
    snprintf(v->path, sizeof v->path, "%s", path);
    v->dev = sb->st_dev;
    v->ino = sb->st_ino;
    v->size = sb->st_size;
    v->mtime = sb->st_mtim;
    v->sum = sum;
    pthread_mutex_unlock(&memo_lock);
}

/* Is the file there, of its size and checksum? Else an error naming it. */
static st_status file_check(const char *dir, const st_checkpoint_file *f)
{
    char path[4400];
    join(path, sizeof path, dir, f->name);
    struct stat sb;
    if (stat(path, &sb) != 0)
        return st_error(ST_ERR_FORMAT, "%s is missing", f->name);
    if ((uint64_t)sb.st_size != f->bytes)
        return st_error(ST_ERR_FORMAT, "%s has %lld bytes, the manifest says %" PRIu64, f->name,
                        (long long)sb.st_size, f->bytes);
    uint64_t sum;
    if (!memo_find(path, &sb, &sum)) {
        FILE *fp = fopen(path, "rb");
        if (!fp)
            return st_error(ST_ERR_IO, "cannot read %s: %s", f->name, strerror(errno));
        st_sum64 acc;
        st_sum64_init(&acc);
        static _Thread_local unsigned char buf[1 << 16];
        size_t got;
        while ((got = fread(buf, 1, sizeof buf, fp)) > 0)
            st_sum64_add(&acc, buf, got);
        bool err = ferror(fp) != 0;
        fclose(fp);
        if (err)
            return st_error(ST_ERR_IO, "cannot read %s", f->name);
        sum = st_sum64_final(&acc);
        memo_add(path, &sb, sum);
    }
    if (sum != f->sum)
        return st_error(ST_ERR_FORMAT,
                        "%s does not hold what the manifest recorded (checksum %016" PRIx64
                        ", expected %016" PRIx64 "): damaged, or from another save",
                        f->name, sum, f->sum);
    return ST_OK;
}

/* ---- cleaning ----------------------------------------------------------------- */

static bool named_by(const manifest *m, const char *name)
{
    if (strcmp(m->name, name) == 0)
        return true;
    for (size_t i = 0; i < m->n_files; i++)
        if (strcmp(m->files[i].name, name) == 0)
            return true;
    return false;
}

st_status st_checkpoint_clean(const char *dir, int keep)
{
    if (keep < 1)
        keep = 1;
    manifest **list = NULL;
    size_t n = 0, n_bad = 0;
    char bad[16];
    st_status s = manifests_list(dir, &list, &n, bad, sizeof bad, &n_bad);
    if (s != ST_OK)
        return s;
    size_t kept = n < (size_t)keep ? n : (size_t)keep;
    char path[4400];
    /* Manifests first (the saves stop existing), then the files nothing names. */
    for (size_t i = kept; i < n; i++) {
        join(path, sizeof path, dir, list[i]->name);
        st_crash_point("remove an old manifest", path);
        unlink(path);
    }
    DIR *d = opendir(dir);
    bool removed = kept < n;
    struct dirent *e;
    while (d && (e = readdir(d))) {
        const char *name = e->d_name;
        bool ours_temp = is_our_temp(name), save_file = is_save_file(name);
        if (!ours_temp && !save_file)
            continue;
        bool used = false;
        for (size_t i = 0; i < kept && !used && !ours_temp; i++)
            used = named_by(list[i], name);
        /* An unreadable manifest stays only while no readable save exists. */
        if (used || (!ours_temp && kept == 0))
            continue;
        join(path, sizeof path, dir, name);
        st_crash_point("remove a file no kept save names", path);
        removed = unlink(path) == 0 || removed;
    }
    if (d)
        closedir(d);
    manifests_free(list, n);
    return removed ? st_fsync_dir(dir) : ST_OK;
}

st_status st_checkpoint_save(const char *dir, st_stage *const *stages, size_t n_stages,
                             const st_model_config *cfg, const st_train_state *state, int keep)
{
    st_checkpoint_file files[2];
    size_t n = 0;
    uint32_t tag = st_checkpoint_new_tag();
    st_status s = st_checkpoint_write_part(dir, stages, n_stages, state, tag, 0, 1, files, &n);
    if (s == ST_OK)
        s = st_checkpoint_commit(dir, cfg, state, tag, files, n);
    if (s == ST_OK)
        s = st_checkpoint_clean(dir, keep);
    return s;
}

/* ---- loading ------------------------------------------------------------------ */

struct st_checkpoint {
    char dir[4096];
    bool has_manifest;
    manifest m; /* with a manifest */
    char describe[256];
};

static pthread_mutex_t warn_lock = PTHREAD_MUTEX_INITIALIZER;
static char warned[8][4400];

/* One warning per skipped save and process, however often the folder is opened. */
static void warn_once(const char *key, const char *fmt, const char *a, const char *b)
{
    pthread_mutex_lock(&warn_lock);
    size_t i = 0;
    while (i < 8 && warned[i][0] && strcmp(warned[i], key) != 0)
        i++;
    bool fresh = i == 8 || !warned[i][0];
    if (i < 8 && !warned[i][0])
        snprintf(warned[i], sizeof warned[i], "%s", key);
    pthread_mutex_unlock(&warn_lock);
    if (fresh)
        st_log(ST_LOG_WARN, fmt, a, b);
}

static st_status open_legacy(const char *dir, st_checkpoint *ck)
{
    char path[4400];
    join(path, sizeof path, dir, "config.json");
    struct stat sb;
    if (stat(path, &sb) != 0)
        return st_error(ST_ERR_NOT_FOUND,
                        "'%s' holds no checkpoint (no checkpoint-step*.json manifest and no "
                        "config.json): is it the folder `strata train --out` wrote?",
                        dir);
    st_status s = st_model_config_load(path, &ck->m.cfg);
    snprintf(ck->describe, sizeof ck->describe, "config.json and its weights (no manifest)");
    ck->m.step = -1;
    return s;
}

/* A hash of the manifests' names in dir: it changes when a save commits or
 * cleans. 0 when the folder cannot be read. */
static uint64_t manifests_signature(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    uint64_t h = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (starts_with(e->d_name, "checkpoint-step") && ends_with(e->d_name, ".json"))
            h ^= st_fnv64_str(14695981039346656037ull, e->d_name); /* in any order */
    closedir(d);
    return h;
}

static st_status open_once(const char *dir, st_checkpoint **out);

/* A reader may meet a save in progress: the manifest it chose cleaned away,
 * or a file it checked replaced, by the writer's next save (1 of 30 readers
 * during saves failed "cannot open"). When the folder's manifests changed
 * under a failure, it looks again. */
enum { READER_TRIES = 8 };

st_status st_checkpoint_open(const char *dir, st_checkpoint **out)
{
    st_status s = ST_OK;
    for (int i = 0; i < READER_TRIES; i++) {
        uint64_t before = manifests_signature(dir);
        if ((s = open_once(dir, out)) == ST_OK || s == ST_ERR_NOT_FOUND ||
            manifests_signature(dir) == before)
            return s;
        st_error_clear();
    }
    return s;
}

static st_status open_once(const char *dir, st_checkpoint **out)
{
    struct stat sb;
    if (stat(dir, &sb) == 0 && !S_ISDIR(sb.st_mode)) {
        char parent[4096];
        snprintf(parent, sizeof parent, "%s", dir);
        char *slash = strrchr(parent, '/');
        if (slash)
            *slash = '\0';
        return st_error(ST_ERR_INVALID,
                        "'%s' is a file: a model is a folder (config.json and its weights, "
                        "as `strata train --out` writes); give '%s'",
                        dir, slash ? parent : ".");
    }
    if (stat(dir, &sb) != 0)
        return st_error(ST_ERR_NOT_FOUND,
                        "model folder '%s' does not exist (it is what `strata train --out` "
                        "writes)",
                        dir);
    st_checkpoint *ck = calloc(1, sizeof *ck);
    if (!ck)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    snprintf(ck->dir, sizeof ck->dir, "%s", dir);
    manifest **list = NULL;
    size_t n = 0, n_bad = 0;
    char reasons[2048];
    st_status s = manifests_list(dir, &list, &n, reasons, sizeof reasons, &n_bad);
    if (s == ST_OK && n == 0 && n_bad == 0) {
        s = open_legacy(dir, ck);
    } else if (s == ST_OK) {
        size_t chosen = n;
        for (size_t i = 0; i < n && chosen == n; i++) {
            st_status c = ST_OK;
            for (size_t f = 0; c == ST_OK && f < list[i]->n_files; f++)
                c = file_check(dir, &list[i]->files[f]);
            if (c == ST_OK) {
                chosen = i;
                break;
            }
            size_t used = strlen(reasons);
            snprintf(reasons + used, sizeof reasons - used, "%sstep %ld: %s", used ? "; " : "",
                     list[i]->step, st_last_error());
        }
        if (chosen == n) {
            s = st_error(ST_ERR_FORMAT,
                         "'%s' holds no complete checkpoint (%s); nothing was loaded", dir,
                         reasons);
        } else {
            ck->has_manifest = true;
            ck->m = *list[chosen];
            snprintf(ck->describe, sizeof ck->describe, "step %ld (%s)", ck->m.step, ck->m.name);
            if (reasons[0]) {
                char key[4400];
                snprintf(key, sizeof key, "%s|%s", dir, ck->m.name);
                char what[2600];
                snprintf(what, sizeof what, "%s: passing over newer saves that are not "
                                            "complete (%s)",
                         dir, reasons);
                warn_once(key, "%s; loading %s", what, ck->describe);
            }
        }
    }
    manifests_free(list, n);
    if (s != ST_OK) {
        free(ck);
        return s;
    }
    *out = ck;
    return ST_OK;
}

void st_checkpoint_close(st_checkpoint *ck)
{
    free(ck);
}

const st_model_config *st_checkpoint_get_config(const st_checkpoint *ck)
{
    return &ck->m.cfg;
}

long st_checkpoint_get_step(const st_checkpoint *ck)
{
    return ck->has_manifest ? ck->m.step : -1;
}

const char *st_checkpoint_describe(const st_checkpoint *ck)
{
    return ck->describe;
}

st_status st_checkpoint_get_state(const st_checkpoint *ck, st_train_state *state)
{
    if (!ck->has_manifest)
        return st_error(ST_ERR_NOT_FOUND,
                        "'%s' has no checkpoint manifest: it holds model weights but no training "
                        "state to resume (written elsewhere, or by an older strata)",
                        ck->dir);
    if (!ck->m.has_state)
        return st_error(ST_ERR_NOT_FOUND,
                        "'%s' (%s) holds a model but no training state to resume", ck->dir,
                        ck->describe);
    *state = ck->m.state;
    return ST_OK;
}

/* The model's name for a tensor of a file, or NULL for tensors that carry no
 * weight of their own (mask buffers, the tied head). */
static const char *model_name(const char *name)
{
    if (strncmp(name, "transformer.", 12) == 0)
        name += 12;
    size_t n = strlen(name);
    /* Buffers some writers save (GPT-2's attention masks, older Llama
     * checkpoints' rotary frequencies) and a tied head's copy: not parameters. */
    if ((n > 10 && strcmp(name + n - 10, ".attn.bias") == 0) ||
        (n > 17 && strcmp(name + n - 17, ".attn.masked_bias") == 0) ||
        (n > 20 && strcmp(name + n - 20, ".rotary_emb.inv_freq") == 0) ||
        strcmp(name, "lm_head.weight") == 0)
        return NULL;
    return name;
}

/* The files one kind of tensor comes from, all open. */
typedef struct source {
    char what[4400]; /* for messages: the folder and the save, or the file */
    size_t n;
    st_safetensors *file[ST_CHECKPOINT_MAX_FILES];
} source;

static void source_close(source *src)
{
    for (size_t i = 0; i < src->n; i++)
        st_safetensors_close(src->file[i]);
    src->n = 0;
}

static st_status source_add(source *src, const char *dir, const char *name,
                            const st_checkpoint_file *expect)
{
    if (src->n == ST_CHECKPOINT_MAX_FILES)
        return st_error(ST_ERR_FORMAT, "%s names too many files", src->what);
    char path[4400];
    join(path, sizeof path, dir, name);
    st_status s = st_safetensors_open(path, &src->file[src->n]);
    if (s != ST_OK)
        return s;
    src->n++;
    if (expect) {
        /* What is loaded is what was verified (the folder may have changed since). */
        size_t size;
        const void *bytes = st_safetensors_bytes(src->file[src->n - 1], &size);
        if (size != expect->bytes || st_sum64_of(bytes, size) != expect->sum)
            return st_error(ST_ERR_FORMAT, "%s changed while it was being loaded", path);
    }
    return ST_OK;
}

/* Manifest: every file of the kind. No manifest: base.safetensors, or the
 * files its Hugging Face index names. */
static st_status source_open(const st_checkpoint *ck, bool optimizer, const char *base,
                             source *src)
{
    memset(src, 0, sizeof *src);
    const char *dir = ck->dir;
    st_status s = ST_OK;
    if (ck->has_manifest) {
        snprintf(src->what, sizeof src->what, "%s (%s)", dir, ck->describe);
        for (size_t i = 0; s == ST_OK && i < ck->m.n_files; i++)
            if (ck->m.files[i].optimizer == optimizer)
                s = source_add(src, dir, ck->m.files[i].name, &ck->m.files[i]);
        if (s != ST_OK)
            source_close(src);
        return s;
    }
    char index[4400];
    snprintf(index, sizeof index, "%s/%s.safetensors.index.json", dir, base);
    struct stat sb;
    if (stat(index, &sb) != 0) {
        snprintf(src->what, sizeof src->what, "%s/%s.safetensors", dir, base);
        char name[64];
        snprintf(name, sizeof name, "%s.safetensors", base);
        return source_add(src, dir, name, NULL);
    }
    snprintf(src->what, sizeof src->what, "%s", index);
    json_error_t err;
    json_t *j = json_load_file(index, JSON_REJECT_DUPLICATES, &err);
    json_t *map = j ? json_object_get(j, "weight_map") : NULL;
    if (!json_is_object(map))
        s = st_error(ST_ERR_FORMAT, "%s: not a safetensors index (%s)", index,
                     j ? "no weight_map object" : err.text);
    const char *key;
    json_t *v;
    /* Each distinct file once, in the order the index first names it. */
    const char *seen[ST_CHECKPOINT_MAX_FILES];
    size_t n_seen = 0;
    if (s == ST_OK) {
        json_object_foreach(map, key, v) {
            const char *file = json_string_value(v);
            if (!file || !plain_file_name(file)) {
                s = st_error(ST_ERR_FORMAT, "%s: shard '%s' of '%s' is not a file in the folder",
                             index, file ? file : "(not a string)", key);
                break;
            }
            size_t i = 0;
            while (i < n_seen && strcmp(seen[i], file) != 0)
                i++;
            if (i < n_seen)
                continue;
            if (n_seen == ST_CHECKPOINT_MAX_FILES) {
                s = st_error(ST_ERR_FORMAT, "%s names too many shards", index);
                break;
            }
            seen[n_seen++] = file;
            if ((s = source_add(src, dir, file, NULL)) != ST_OK)
                break;
        }
    }
    json_decref(j);
    if (s != ST_OK)
        source_close(src);
    return s;
}

st_status st_checkpoint_weights_dtype(const st_checkpoint *ck, st_dtype *out)
{
    source src;
    st_status s = source_open(ck, false, "model", &src);
    *out = ST_F32;
    bool found = false;
    for (size_t f = 0; s == ST_OK && !found && f < src.n; f++) {
        const st_safetensors_entry *e;
        for (size_t i = 0; !found && (e = st_safetensors_at(src.file[f], i)); i++)
            if (e->ndim == 2) {
                *out = strcmp(e->dtype, "BF16") == 0  ? ST_BF16
                       : strcmp(e->dtype, "F16") == 0 ? ST_F16
                                                      : ST_F32;
                found = true;
            }
    }
    source_close(&src);
    return s;
}

static const st_safetensors_entry *source_find(const source *src, const char *name)
{
    for (size_t i = 0; i < src->n; i++) {
        const st_safetensors_entry *e = st_safetensors_find(src->file[i], name);
        if (e)
            return e;
    }
    return NULL;
}

/* Which parameters a load takes: all; a model with adapters takes its base
 * from a model folder and the adapters from a LoRA run's save. */
typedef enum load_part { LOAD_ALL, LOAD_BASE, LOAD_ADAPTERS } load_part;

static bool part_takes(load_part part, st_stage_buf which, const st_param_desc *p)
{
    if (which != ST_STAGE_PARAMS && p->frozen) /* no moments */
        return false;
    return part == LOAD_ALL || (part == LOAD_ADAPTERS) == p->adapter;
}

static st_status load_file(const source *src, st_stage *const *stages, size_t n_stages,
                           st_stage_buf which, const char *prefix, bool check_extra,
                           st_adapter *adapter, load_part part)
{
    st_status s = ST_OK;
    const char *path = src->what;
    size_t plen = strlen(prefix);
    /* Every tensor of the files must belong to the model (when check_extra). */
    for (size_t f = 0; check_extra && s == ST_OK && f < src->n; f++) {
        const st_safetensors_entry *e;
        for (size_t i = 0; s == ST_OK && (e = st_safetensors_at(src->file[f], i)); i++) {
            const char *name = e->name;
            if (strncmp(name, prefix, plen) != 0) {
                s = st_error(ST_ERR_FORMAT, "%s: tensor '%s' is not part of the model", path,
                             name);
                break;
            }
            const char *mn = model_name(name + plen);
            bool known = mn == NULL;
            for (size_t k = 0; !known && k < n_stages; k++)
                known = st_stage_param_find(stages[k], mn) >= 0;
            /* The stages together hold the whole model: anything else is foreign. */
            if (!known)
                s = st_error(ST_ERR_FORMAT,
                             "%s: tensor '%s' is not a parameter of this model (does the config "
                             "match the weights?)",
                             path, name);
        }
    }
    for (size_t k = 0; s == ST_OK && k < n_stages; k++) {
        for (size_t i = 0; s == ST_OK && i < st_stage_n_params(stages[k]); i++) {
            const st_param_desc *p = st_stage_param_at(stages[k], i)->desc;
            if (!part_takes(part, which, p))
                continue;
            char tname[160];
            snprintf(tname, sizeof tname, "%s%s", prefix, p->name);
            const st_safetensors_entry *e = source_find(src, tname);
            if (!e) {
                snprintf(tname, sizeof tname, "%stransformer.%s", prefix, p->name);
                e = source_find(src, tname);
            }
            if (!e) {
                s = st_error(ST_ERR_FORMAT, "%s has no tensor '%s%s'", path, prefix, p->name);
                break;
            }
            bool same = e->ndim == p->ndim && e->numel == p->numel;
            for (int d = 0; same && d < p->ndim; d++)
                same = e->shape[d] == p->shape[d];
            if (!same) {
                char got[160] = "", want[64];
                for (int d = 0; d < e->ndim; d++)
                    snprintf(got + strlen(got), sizeof got - strlen(got), "%s%llu",
                             d ? ", " : "", (unsigned long long)e->shape[d]);
                if (p->ndim == 2)
                    snprintf(want, sizeof want, "%zu, %zu", p->shape[0], p->shape[1]);
                else
                    snprintf(want, sizeof want, "%zu", p->shape[0]);
                s = st_error(ST_ERR_FORMAT, "%s: tensor '%s' has shape [%s], the model needs [%s]",
                             path, tname, got, want);
                break;
            }
            float *host = malloc(p->numel * sizeof *host);
            if (!host) {
                s = st_error(ST_ERR_HOST_MEMORY, "out of host memory loading '%s'", tname);
                break;
            }
            if ((s = st_safetensors_to_f32(e, host)) == ST_OK) {
                size_t bad = 0;
                for (size_t x = 0; x < p->numel; x++)
                    bad += !isfinite(host[x]);
                /* Loads, so that the file can be looked at, but never silently. */
                if (bad)
                    st_log(ST_LOG_WARN,
                           "%s: tensor '%s' holds %zu NaN or infinite value(s) of %zu: what is "
                           "computed from it is not meaningful",
                           path, tname, bad, p->numel);
                bool applied = false;
                if (adapter && p->ndim == 2)
                    s = st_adapter_apply(adapter, p->name, host, p->shape[0], p->shape[1],
                                         p->in_out, &applied);
                if (s == ST_OK)
                    s = st_stage_write(stages[k], which, i, host);
            }
            free(host);
        }
    }
    return s;
}

/* Was the save made by a LoRA run (its settings name the adapters)? */
static bool lora_run(const st_checkpoint *ck)
{
    if (!ck->has_manifest || !ck->m.has_state)
        return false;
    json_t *j = json_loads(ck->m.state.settings, 0, NULL);
    bool lora = j && json_is_object(json_object_get(j, "lora"));
    json_decref(j);
    return lora;
}

static st_status load_into(const st_checkpoint *ck, st_stage *const *stages, size_t n_stages,
                           st_train_state *state, bool whole, st_adapter *adapter)
{
    st_status s = ST_OK;
    bool adapters = have_adapters(stages, n_stages), lora = lora_run(ck);
    if (lora && !adapters)
        return st_error(ST_ERR_INVALID,
                        "%s holds LoRA adapters, not a whole model: give the model they adapt "
                        "and the adapters (--model BASE --adapter %s), or merge them first "
                        "(strata merge --model BASE --adapter %s --out DIR)",
                        ck->dir, ck->dir, ck->dir);
    load_part part = !adapters ? LOAD_ALL : lora ? LOAD_ADAPTERS : LOAD_BASE;
    if (part == LOAD_ADAPTERS && !state)
        return st_error(ST_ERR_INVALID,
                        "%s holds LoRA adapters, not the model they adapt: give that model "
                        "(--init BASE; to go on training these adapters, --resume %s)",
                        ck->dir, ck->dir);
    if (state && part == LOAD_BASE)
        return st_error(ST_ERR_INVALID,
                        "%s is not a LoRA run: it has no adapters or moments to continue from",
                        ck->dir);
    if (state && (s = st_checkpoint_get_state(ck, state)) != ST_OK)
        return s;
    source src;
    if ((s = source_open(ck, false, "model", &src)) != ST_OK)
        return s;
    s = load_file(&src, stages, n_stages, ST_STAGE_PARAMS, "", whole, adapter, part);
    source_close(&src);
    if (s == ST_OK && adapter && whole)
        s = st_adapter_check_used(adapter);
    if (s != ST_OK || !state)
        return s;
    if ((s = source_open(ck, true, "optimizer", &src)) != ST_OK)
        return s;
    if ((s = load_file(&src, stages, n_stages, ST_STAGE_ADAM_M, "m.", false, NULL, part)) ==
        ST_OK)
        s = load_file(&src, stages, n_stages, ST_STAGE_ADAM_V, "v.", false, NULL, part);
    source_close(&src);
    return s;
}

st_status st_checkpoint_load_into(const st_checkpoint *ck, st_stage *const *stages,
                                  size_t n_stages, st_train_state *state, bool whole)
{
    return load_into(ck, stages, n_stages, state, whole, NULL);
}

st_status st_checkpoint_config(const char *dir, st_model_config *cfg)
{
    st_checkpoint *ck = NULL;
    st_status s = st_checkpoint_open(dir, &ck);
    if (s == ST_OK)
        *cfg = *st_checkpoint_get_config(ck);
    st_checkpoint_close(ck);
    return s;
}

st_status st_checkpoint_state(const char *dir, st_train_state *state)
{
    st_checkpoint *ck = NULL;
    st_status s = st_checkpoint_open(dir, &ck);
    if (s == ST_OK)
        s = st_checkpoint_get_state(ck, state);
    st_checkpoint_close(ck);
    return s;
}

static st_status load_dir(const char *dir, st_stage *const *stages, size_t n_stages,
                          st_train_state *state, bool whole, st_adapter *adapter)
{
    st_status s = ST_OK;
    for (int i = 0; i < READER_TRIES; i++) {
        st_checkpoint *ck = NULL;
        uint64_t before = manifests_signature(dir);
        if ((s = st_checkpoint_open(dir, &ck)) != ST_OK)
            return s;
        s = load_into(ck, stages, n_stages, state, whole, adapter);
        st_checkpoint_close(ck);
        /* Its files cleaned or replaced by a newer save: load that one. */
        if (s == ST_OK || manifests_signature(dir) == before)
            return s;
        st_error_clear();
    }
    return s;
}

st_status st_checkpoint_load(const char *dir, st_stage *const *stages, size_t n_stages,
                             st_train_state *state)
{
    return load_dir(dir, stages, n_stages, state, true, NULL);
}

st_status st_checkpoint_load_part(const char *dir, st_stage *const *stages, size_t n_stages,
                                  st_train_state *state)
{
    return load_dir(dir, stages, n_stages, state, false, NULL);
}

st_status st_checkpoint_load_pipe(const char *dir, st_pipe *p, st_train_state *state)
{
    return st_checkpoint_load_pipe_adapter(dir, NULL, p, state);
}

st_status st_checkpoint_load_pipe_adapter(const char *dir, st_adapter *adapter, st_pipe *p,
                                          st_train_state *state)
{
    st_stage *local[ST_PLAN_MAX_STAGES];
    size_t n = 0, S = st_pipe_n_stages(p);
    for (size_t k = 0; k < S && k < ST_PLAN_MAX_STAGES; k++)
        if (st_pipe_stage(p, k))
            local[n++] = st_pipe_stage(p, k);
    st_status s = load_dir(dir, local, n, state, n == S, adapter); /* fewer: other processes hold the rest */
    return s == ST_OK ? st_pipe_replicate(p) : s;
}

/* ---- merging an adapter into a model folder ------------------------------------- */

/* Whether the output folder may be written: missing (made) or empty. */
static st_status empty_out(const char *dir)
{
    bool created = false;
    st_status s = st_checkpoint_prepare(dir, &created);
    if (s != ST_OK || created)
        return s;
    DIR *d = opendir(dir);
    if (!d)
        return st_error(ST_ERR_IO, "cannot read the folder '%s': %s", dir, strerror(errno));
    struct dirent *e;
    const char *found = NULL;
    while (!found && (e = readdir(d)))
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            found = e->d_name;
    st_status r = found ? st_error(ST_ERR_INVALID,
                                   "'%s' is not empty (it holds '%s'): give --out a new or empty "
                                   "folder",
                                   dir, found)
                        : ST_OK;
    closedir(d);
    return r;
}

/* A model folder's file copied into out when it is there. */
static st_status copy_if_there(const char *from_dir, const char *out, const char *name)
{
    char path[4400];
    join(path, sizeof path, from_dir, name);
    FILE *f = fopen(path, "rb");
    if (!f)
        return ST_OK;
    st_status s = ST_OK;
    char *buf = NULL;
    long size = -1;
    if (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0 ||
        !(buf = malloc((size_t)size + 1)) || fread(buf, 1, (size_t)size, f) != (size_t)size)
        s = st_error(ST_ERR_IO, "cannot read '%s'", path);
    fclose(f);
    if (s == ST_OK) {
        join(path, sizeof path, out, name);
        s = st_write_file_atomic(path, buf, (size_t)size, NULL);
    }
    free(buf);
    return s;
}

st_status st_checkpoint_merge_adapter(const char *model_dir, st_adapter *a, const char *out_dir,
                                      st_merge_report *report)
{
    memset(report, 0, sizeof *report);
    st_checkpoint *ck = NULL;
    st_model_desc *desc = NULL;
    st_safetensors_writer *w = NULL;
    source src = {0};
    st_status s = st_checkpoint_open(model_dir, &ck);
    if (s == ST_OK)
        s = st_model_describe(st_checkpoint_get_config(ck), &desc);
    if (s == ST_OK)
        s = empty_out(out_dir);
    if (s == ST_OK)
        s = source_open(ck, false, "model", &src);
    if (s == ST_OK)
        s = st_safetensors_writer_create(&w);
    if (s == ST_OK)
        s = st_safetensors_set_metadata(w, "format", "pt");
    snprintf(report->dtype, sizeof report->dtype, "F32");
    for (size_t f = 0; s == ST_OK && f < src.n; f++) {
        const st_safetensors_entry *e;
        for (size_t i = 0; s == ST_OK && (e = st_safetensors_at(src.file[f], i)); i++) {
            const char *mn = model_name(e->name);
            if (!mn && strcmp(e->name, "lm_head.weight") != 0)
                continue; /* a buffer (attention masks, rotary frequencies): not needed */
            const st_param_desc *p = NULL;
            for (size_t l = 0; mn && !p && l < desc->n_layers; l++)
                for (size_t k = 0; !p && k < desc->layers[l].n_params; k++)
                    if (strcmp(desc->layers[l].params[k].name, mn) == 0)
                        p = &desc->layers[l].params[k];
            float *host = malloc((e->numel ? e->numel : 1) * sizeof *host);
            if (!host) {
                s = st_error(ST_ERR_HOST_MEMORY, "out of host memory for '%s'", e->name);
                break;
            }
            if ((s = st_safetensors_to_f32(e, host)) == ST_OK && p && p->ndim == 2 &&
                e->ndim == 2) {
                bool applied = false;
                s = st_adapter_apply(a, p->name, host, (size_t)e->shape[0], (size_t)e->shape[1],
                                     p->in_out, &applied);
                report->merged += applied;
            }
            const char *dtype = strcmp(e->dtype, "BF16") == 0  ? "BF16"
                                : strcmp(e->dtype, "F16") == 0 ? "F16"
                                                               : "F32";
            snprintf(report->dtype, sizeof report->dtype, "%s", dtype);
            size_t shape[ST_SAFETENSORS_MAX_DIMS];
            for (int d = 0; d < e->ndim; d++)
                shape[d] = (size_t)e->shape[d];
            if (s == ST_OK)
                s = st_safetensors_add(w, e->name, dtype, e->ndim, shape, host);
            report->tensors += s == ST_OK;
            free(host);
        }
    }
    if (s == ST_OK)
        s = st_adapter_check_used(a);
    char path[4400];
    join(path, sizeof path, out_dir, "model.safetensors");
    if (s == ST_OK)
        s = st_safetensors_save_sum(w, path, &report->bytes, NULL);
    static const char *const keep[] = {"config.json", "generation_config.json", "tokenizer.json",
                                       "tokenizer_config.json", "special_tokens_map.json",
                                       "vocab.json", "merges.txt", "chat_template.jinja"};
    for (size_t i = 0; s == ST_OK && i < sizeof keep / sizeof keep[0]; i++)
        s = copy_if_there(model_dir, out_dir, keep[i]);
    source_close(&src);
    st_safetensors_writer_destroy(w);
    st_model_desc_destroy(desc);
    st_checkpoint_close(ck);
    return s;
}
