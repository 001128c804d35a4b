/*
 * data.c - the built-in addition task, byte-level text files and token
 * files (raw uint16, or llm.c's with a header: uint16 or uint32), as
 * batches (see strata/data.h).
 */
#define _XOPEN_SOURCE 700 /* realpath */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include "core/atomic.h"
#include "core/file.h"
#include "core/hash.h"
#include "strata/data.h"
#include "strata/progress.h"

#define ADD_DIGITS 3
#define ADD_SEQ 12 /* "123+456=9750\n" is 13 tokens: 12 in, 12 targets */
#define VAL_PERCENT 10

typedef enum kind { KIND_ADDITION, KIND_TEXT, KIND_TOKENS, KIND_JSONL } kind;

struct st_dataset {
    kind kind;
    char name[1024];
    char describe[1200];
    uint32_t *tokens; /* files: every token */
    size_t n, n_train; /* files: all tokens, the first n_train train */
    int vocab_needed;
    st_data_identity id;
    /* JSON Lines: example k is tokens[doc[k] .. doc[k + 1]); loss[i]: token
     * i is a target (a prompt's are not); the first n_train_docs train. */
    size_t *doc, n_docs, n_train_docs, longest;
    uint8_t *loss;
    int pad;
    bool packed; /* several examples a row (st_dataset_pack) */
};

static uint64_t mix(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* A small counter-based generator: the stream of (seed, split, index). */
typedef struct rng {
    uint64_t state;
} rng;

static uint64_t rng_next(rng *r)
{
    return mix(r->state++ * 0x2545f4914f6cdd1dull);
}

static uint64_t rng_below(rng *r, uint64_t n)
{
    return rng_next(r) % n; /* bias < n / 2^64: negligible for data sizes */
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

static void encode_progress(void *ctx, size_t done, size_t total)
{
    (void)total;
    st_progress_update(ctx, done);
}

/* A text's ids by tok, replacing its bytes in ds. */
static st_status tokenize(st_dataset *ds, st_tokenizer *tok, const unsigned char *raw,
                          size_t bytes, const char *path)
{
    int32_t *ids = NULL;
    size_t n = 0, cap = 0;
    st_progress pr;
    st_progress_begin(&pr, bytes, "tokenizing %s: bytes", path);
    st_tokenizer_on_progress(tok, encode_progress, &pr);
    st_status s = st_tokenizer_encode(tok, (const char *)raw, bytes, true, &ids, &n, &cap);
    st_tokenizer_on_progress(tok, NULL, NULL);
    st_progress_end(&pr);
    if (s != ST_OK) {
        free(ids);
        return s;
    }
    uint32_t *t = malloc((n ? n : 1) * sizeof *t);
    if (!t) {
        free(ids);
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory for %zu tokens", n);
    }
    for (size_t i = 0; i < n; i++)
        t[i] = (uint32_t)ids[i];
    free(ids);
    free(ds->tokens);
    ds->tokens = t;
    ds->n = n;
    ds->vocab_needed = (int)st_tokenizer_vocab_size(tok);
    ds->id.tokenizer = st_tokenizer_sum(tok);
    return ST_OK;
}

/* Appends the ids of text (by tok, else its bytes) to the examples' tokens,
 * their loss flags `target`. */
static st_status jsonl_append(st_dataset *ds, st_tokenizer *tok, const char *text, size_t len,
                              bool with_template, bool target, size_t *cap)
{
    int32_t *ids = NULL;
    size_t n = 0, idcap = 0;
    if (tok) {
        st_status s = st_tokenizer_encode(tok, text, len, with_template, &ids, &n, &idcap);
        if (s != ST_OK)
            return s;
    }
    size_t add = tok ? n : len;
    if (ds->n + add + 1 > *cap) {
        size_t c = (ds->n + add + 1) * 2;
        uint32_t *t = realloc(ds->tokens, c * sizeof *t);
        uint8_t *l = t ? realloc(ds->loss, c) : NULL;
        if (t)
            ds->tokens = t;
        if (l)
            ds->loss = l;
        if (!t || !l) {
            free(ids);
            return st_error(ST_ERR_HOST_MEMORY, "out of host memory for %zu tokens", c);
        }
        *cap = c;
    }
    for (size_t i = 0; i < add; i++) {
        ds->tokens[ds->n + i] = tok ? (uint32_t)ids[i] : (unsigned char)text[i];
        ds->loss[ds->n + i] = target;
    }
    ds->n += add;
    free(ids);
    return ST_OK;
}

/* A string member of a JSON Lines example, or NULL. */
static const char *member(json_t *o, const char *key, size_t *len, bool *there)
{
    json_t *v = json_object_get(o, key);
    *there = v != NULL;
    if (!json_is_string(v))
        return NULL;
    *len = json_string_length(v);
    return json_string_value(v);
}

/* JSON Lines: one example per line, {"text": ...} or {"prompt": ...,
 * "completion": ...}; each its tokens (the tokenizer's template, BOS, at the
 * start), then EOS when the tokenizer has one. */
static st_status load_jsonl(st_dataset *ds, const char *path, st_tokenizer *tok,
                            const unsigned char *raw, size_t bytes)
{
    size_t cap = 0, doc_cap = 0, line = 0, n_pc = 0;
    int eos = tok ? st_tokenizer_eos(tok) : -1;
    st_status s = ST_OK;
    for (size_t at = 0; at < bytes && s == ST_OK;) {
        const unsigned char *nl = memchr(raw + at, '\n', bytes - at);
        size_t end = nl ? (size_t)(nl - raw) : bytes, len = end - at;
        const char *text = (const char *)raw + at;
        line++;
        at = end + 1;
        size_t blank = 0;
        while (blank < len && (text[blank] == ' ' || text[blank] == '\t' || text[blank] == '\r'))
            blank++;
        if (blank == len)
            continue; /* an empty line */
        json_error_t err;
        json_t *o = json_loadb(text, len, 0, &err);
        if (!o) {
            s = st_error(ST_ERR_FORMAT, "%s:%zu: not JSON (%s at column %d): each line of a .jsonl "
                                        "file is one object, {\"text\": ...} or {\"prompt\": ..., "
                                        "\"completion\": ...}",
                         path, line, err.text, err.column);
            break;
        }
        size_t lt = 0, lp = 0, lc = 0;
        bool has_t = false, has_p = false, has_c = false;
        const char *t = json_is_object(o) ? member(o, "text", &lt, &has_t) : NULL;
        const char *pr = json_is_object(o) ? member(o, "prompt", &lp, &has_p) : NULL;
        const char *c = json_is_object(o) ? member(o, "completion", &lc, &has_c) : NULL;
        if (!json_is_object(o))
            s = st_error(ST_ERR_FORMAT, "%s:%zu: a JSON value that is not an object: give "
                                        "{\"text\": ...} or {\"prompt\": ..., \"completion\": ...}",
                         path, line);
        else if (has_t && (has_p || has_c))
            s = st_error(ST_ERR_FORMAT, "%s:%zu: both \"text\" and \"prompt\"/\"completion\": give "
                                        "one or the other",
                         path, line);
        else if (has_t ? !t : !(pr && c))
            s = st_error(ST_ERR_FORMAT,
                         "%s:%zu: %s: each line needs {\"text\": \"...\"} or {\"prompt\": "
                         "\"...\", \"completion\": \"...\"} with strings",
                         path, line,
                         has_t                ? "\"text\" is not a string"
                         : !has_p && !has_c   ? "neither \"text\" nor \"prompt\" and \"completion\""
                         : !has_p             ? "no \"prompt\""
                         : !has_c             ? "no \"completion\""
                         : !pr                ? "\"prompt\" is not a string"
                                              : "\"completion\" is not a string");
        if (s == ST_OK && ds->n_docs + 2 > doc_cap) {
            size_t dc = (ds->n_docs + 2) * 2;
            size_t *d = realloc(ds->doc, dc * sizeof *d);
            if (!d)
                s = st_error(ST_ERR_HOST_MEMORY, "out of host memory for %zu examples", dc);
            else
                ds->doc = d, doc_cap = dc;
        }
        if (s == ST_OK) {
            ds->doc[ds->n_docs] = ds->n;
            if (has_t) {
                s = jsonl_append(ds, tok, t, lt, true, true, &cap);
            } else {
                n_pc++;
                s = jsonl_append(ds, tok, pr, lp, true, false, &cap);
                if (s == ST_OK)
                    s = jsonl_append(ds, tok, c, lc, false, true, &cap);
            }
            if (s == ST_OK && eos >= 0) { /* room was kept for it */
                ds->tokens[ds->n] = (uint32_t)eos;
                ds->loss[ds->n++] = 1;
            }
            if (s != ST_OK)
                st_error_context("%s:%zu", path, line);
            size_t len_doc = ds->n - ds->doc[ds->n_docs];
            if (s == ST_OK && len_doc < 2)
                s = st_error(ST_ERR_FORMAT, "%s:%zu: the example has %zu token%s: at least 2 "
                                            "make one target",
                             path, line, len_doc, len_doc == 1 ? "" : "s");
            if (len_doc > ds->longest)
                ds->longest = len_doc;
            ds->n_docs++;
            ds->doc[ds->n_docs] = ds->n;
        }
        json_decref(o);
    }
    if (s == ST_OK && ds->n_docs < 2)
        s = st_error(ST_ERR_FORMAT,
                     "'%s' has %zu example%s: too few to split into training and validation "
                     "(the last %d%% of the examples validate, at least one)",
                     path, ds->n_docs, ds->n_docs == 1 ? "" : "s", VAL_PERCENT);
    if (s != ST_OK)
        return s;
    size_t val = ds->n_docs * VAL_PERCENT / 100;
    ds->n_train_docs = ds->n_docs - (val ? val : 1);
    ds->n_train = ds->doc[ds->n_train_docs];
    ds->kind = KIND_JSONL;
    ds->vocab_needed = tok ? (int)st_tokenizer_vocab_size(tok) : 256;
    ds->pad = eos >= 0 ? eos : 0;
    if (tok)
        ds->id.tokenizer = st_tokenizer_sum(tok);
    size_t targets = 0;
    for (size_t k = 0; k < ds->n_docs; k++)
        for (size_t i = ds->doc[k] + 1; i < ds->doc[k + 1]; i++)
            targets += ds->loss[i];
    char by[128] = "";
    if (tok)
        snprintf(by, sizeof by, " by the tokenizer (vocabulary %zu)", st_tokenizer_vocab_size(tok));
    snprintf(ds->describe, sizeof ds->describe,
             "%s: %zu examples (%zu prompt and completion, %zu text), %zu tokens%s, %zu of "
             "them targets (%zu train, %zu validation examples; the longest %zu tokens)",
             path, ds->n_docs, n_pc, ds->n_docs - n_pc, ds->n, tok ? by : " (bytes)", targets,
             ds->n_train_docs, ds->n_docs - ds->n_train_docs, ds->longest);
    return ST_OK;
}

static st_status load_file(st_dataset *ds, const char *path, st_tokenizer *tok)
{
    bool tokens = ends_with(path, ".bin") || ends_with(path, ".u16") || ends_with(path, ".tok");
    struct stat sb;
    if (stat(path, &sb) == 0 && !S_ISREG(sb.st_mode))
        return st_error(ST_ERR_INVALID, "data '%s' is not a file (a folder?): give a text or token file",
                        path);
    FILE *f = NULL;
    st_status s = st_open_regular(path, "data file", &f);
    if (s != ST_OK)
        return s;
    long size = -1;
    if (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        return st_error(ST_ERR_IO, "cannot read data file '%s': %s", path, strerror(errno));
    }
    size_t bytes = (size_t)size;
    unsigned char *raw = malloc(bytes ? bytes : 1);
    if (!raw) {
        fclose(f);
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory reading '%s' (%zu bytes)", path,
                        bytes);
    }
    if (fread(raw, 1, bytes, f) != bytes)
        s = st_error(ST_ERR_IO, "cannot read data file '%s'", path);
    fclose(f);
    ds->id.bytes = bytes;
    ds->id.sum = st_sum64_of(raw, bytes);
    if (!realpath(path, ds->id.path))
        snprintf(ds->id.path, sizeof ds->id.path, "%s", path);
    if (s == ST_OK && ends_with(path, ".jsonl")) {
        s = load_jsonl(ds, path, tok, raw, bytes);
        free(raw);
        return s;
    }
    /* llm.c's token files: a header of 256 int32 (magic, version, count),
     * then uint16 tokens (magic 20240520, version 1) or uint32 (20240801,
     * version 7). Without that header a token file is raw uint16. */
    size_t width = 2, skip = 0;
    const char *format = "uint16 tokens";
    if (tokens && s == ST_OK && bytes >= ST_TOKEN_HEADER_BYTES) {
        int32_t h[3];
        memcpy(h, raw, sizeof h);
        if (h[0] == ST_TOKEN_MAGIC_U16 || h[0] == ST_TOKEN_MAGIC_U32) {
            bool wide = h[0] == ST_TOKEN_MAGIC_U32;
            width = wide ? 4 : 2;
            skip = ST_TOKEN_HEADER_BYTES;
            format = wide ? "uint32 tokens (llm.c format)" : "uint16 tokens (llm.c format)";
            if (h[1] != (wide ? 7 : 1) || h[2] < 0 ||
                (size_t)h[2] * width != bytes - ST_TOKEN_HEADER_BYTES)
                s = st_error(ST_ERR_FORMAT,
                             "token file '%s': its llm.c header says version %d and %d tokens, "
                             "but it has %zu bytes after the header (version %d expected)",
                             path, h[1], h[2], bytes - ST_TOKEN_HEADER_BYTES, wide ? 7 : 1);
        }
    }
    if (s == ST_OK && tokens && (bytes - skip) % width != 0)
        s = st_error(ST_ERR_FORMAT,
                     "token file '%s' has %zu bytes, not a whole number of uint16 tokens", path,
                     bytes);
    if (s != ST_OK) {
        free(raw);
        return s;
    }
    ds->n = tokens ? (bytes - skip) / width : bytes;
    ds->tokens = malloc((ds->n ? ds->n : 1) * sizeof *ds->tokens);
    if (!ds->tokens) {
        free(raw);
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory for %zu tokens", ds->n);
    }
    uint32_t maxtok = 0;
    const unsigned char *q = raw + skip;
    for (size_t i = 0; i < ds->n; i++) {
        ds->tokens[i] = !tokens      ? q[i]
                        : width == 2 ? (uint32_t)(q[2 * i] | q[2 * i + 1] << 8)
                                     : (uint32_t)q[4 * i] | (uint32_t)q[4 * i + 1] << 8 |
                                           (uint32_t)q[4 * i + 2] << 16 |
                                           (uint32_t)q[4 * i + 3] << 24;
        if (ds->tokens[i] > maxtok)
            maxtok = ds->tokens[i];
    }
    if (maxtok >= (uint32_t)ST_MODEL_MAX_VOCAB_TOKENS) {
        free(raw);
        return st_error(ST_ERR_FORMAT, "token file '%s' holds token %u: ids go up to %d", path,
                        maxtok, ST_MODEL_MAX_VOCAB_TOKENS - 1);
    }
    ds->kind = tokens ? KIND_TOKENS : KIND_TEXT;
    ds->vocab_needed = tokens ? (int)maxtok + 1 : 256;
    if (!tokens && tok) {
        format = "tokens";
        if ((s = tokenize(ds, tok, raw, bytes, path)) != ST_OK) {
            free(raw);
            return s;
        }
    }
    free(raw);
    ds->n_train = ds->n - ds->n * VAL_PERCENT / 100;
    char by[128] = "";
    if (!tokens && tok)
        snprintf(by, sizeof by, " of %zu bytes, by the tokenizer (vocabulary %zu)", bytes,
                 st_tokenizer_vocab_size(tok));
    snprintf(ds->describe, sizeof ds->describe, "%s: %zu %s%s (%zu train, %zu validation)", path,
             ds->n, tokens || tok ? format : "bytes", by, ds->n_train, ds->n - ds->n_train);
    return ST_OK;
}

st_status st_dataset_open(const char *source, st_dataset **out)
{
    return st_dataset_open_text(source, NULL, out);
}

st_status st_dataset_open_text(const char *source, st_tokenizer *tok, st_dataset **out)
{
    st_dataset *ds = calloc(1, sizeof *ds);
    if (!ds)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    if (!source || strcmp(source, "addition") == 0) {
        ds->kind = KIND_ADDITION;
        snprintf(ds->name, sizeof ds->name, "addition");
        snprintf(ds->describe, sizeof ds->describe,
                 "addition: built-in task, %d-digit sums written least significant digit "
                 "first (\"123+456=9750\")",
                 ADD_DIGITS);
        ds->vocab_needed = 256;
        *out = ds;
        return ST_OK;
    }
    snprintf(ds->name, sizeof ds->name, "%s", source);
    st_status s = load_file(ds, source, tok);
    if (s == ST_OK && ds->kind != KIND_JSONL && ds->n - ds->n_train < 2)
        s = st_error(ST_ERR_FORMAT,
                     "data file '%s' has %zu tokens: too few to split into training and "
                     "validation (the last %d%% validate)",
                     source, ds->n, VAL_PERCENT);
    if (s != ST_OK) {
        st_dataset_destroy(ds);
        return s;
    }
    *out = ds;
    return ST_OK;
}

void st_dataset_destroy(st_dataset *ds)
{
    if (!ds)
        return;
    free(ds->tokens);
    free(ds->doc);
    free(ds->loss);
    free(ds);
}

void st_dataset_identity(const st_dataset *ds, st_data_identity *id)
{
    *id = ds->id;
}

const char *st_dataset_name(const st_dataset *ds)
{
    return ds->name;
}

const char *st_dataset_describe(const st_dataset *ds)
{
    return ds->describe;
}

int st_dataset_vocab_needed(const st_dataset *ds)
{
    return ds->vocab_needed;
}

int st_dataset_fixed_seq(const st_dataset *ds)
{
    return ds->kind == KIND_ADDITION ? ADD_SEQ : 0;
}

bool st_dataset_has_exact_match(const st_dataset *ds)
{
    return ds->kind == KIND_ADDITION;
}

size_t st_dataset_tokens(const st_dataset *ds, st_split split)
{
    if (ds->kind == KIND_ADDITION)
        return (size_t)-1;
    return split == ST_TRAIN ? ds->n_train : split == ST_VAL ? ds->n - ds->n_train : ds->n;
}

void st_addition_problem(int a, int b, char prompt[16], char answer[8])
{
    int c = a + b;
    snprintf(prompt, 16, "%03d+%03d=", a, b);
    for (int i = 0; i < ADD_DIGITS + 1; i++, c /= 10)
        answer[i] = (char)('0' + c % 10);
    answer[ADD_DIGITS + 1] = '\n';
    answer[ADD_DIGITS + 2] = '\0';
}

size_t st_dataset_examples(const st_dataset *ds, st_split split)
{
    if (ds->kind != KIND_JSONL)
        return 0;
    return split == ST_TRAIN ? ds->n_train_docs
           : split == ST_VAL ? ds->n_docs - ds->n_train_docs
                             : ds->n_docs;
}

size_t st_dataset_longer_than(const st_dataset *ds, size_t len, size_t *longest)
{
    size_t k = 0;
    for (size_t i = 0; ds->kind == KIND_JSONL && i < ds->n_docs; i++)
        k += ds->doc[i + 1] - ds->doc[i] > len;
    if (longest)
        *longest = ds->longest;
    return k;
}

bool st_dataset_pack(st_dataset *ds, bool on)
{
    ds->packed = on && ds->kind == KIND_JSONL;
    return ds->packed;
}

bool st_dataset_packed(const st_dataset *ds)
{
    return ds->packed;
}

/* The example range of a split. */
static void split_docs(const st_dataset *ds, st_split split, size_t *first, size_t *n)
{
    *first = split == ST_VAL ? ds->n_train_docs : 0;
    *n = st_dataset_examples(ds, split);
}

/* Rows of T tokens the examples of a split fill in order, each starting a
 * row when the one before's row has no room for it whole. With starts
 * (rows + 1 entries), each row's first example's index in the split. */
static size_t packed_rows(const st_dataset *ds, st_split split, int T, size_t *starts)
{
    size_t first, n, rows = 0, used = 0;
    split_docs(ds, split, &first, &n);
    for (size_t k = 0; k < n; k++) {
        size_t len = ds->doc[first + k + 1] - ds->doc[first + k];
        if (k == 0 || used + len > (size_t)T) {
            if (starts)
                starts[rows] = k;
            rows++;
            used = 0;
        }
        used += len;
    }
    if (starts)
        starts[rows] = n;
    return rows;
}

double st_dataset_fill(const st_dataset *ds, st_split split, int T, bool packed)
{
    size_t first, n, held = 0, rows = 0, used = 0;
    if (ds->kind != KIND_JSONL || T < 1)
        return 1.0;
    split_docs(ds, split, &first, &n);
    for (size_t k = 0; k < n; k++) {
        size_t len = ds->doc[first + k + 1] - ds->doc[first + k];
        if (k == 0 || !packed || used + len > (size_t)T) {
            rows++;
            used = 0;
        }
        len = len < (size_t)T - used ? len : (size_t)T - used;
        used += len;
        held += len;
    }
    return rows ? (double)held / ((double)rows * T) : 0.0;
}

size_t st_dataset_windows(const st_dataset *ds, st_split split, int T)
{
    size_t n = st_dataset_tokens(ds, split);
    if (ds->kind == KIND_ADDITION)
        return 0;
    if (ds->kind == KIND_JSONL)
        return ds->packed && T > 0 ? packed_rows(ds, split, T, NULL)
                                   : st_dataset_examples(ds, split);
    return T > 0 && n > (size_t)T ? (n - 1) / (size_t)T : 0;
}

/* Example k at row position `at` of a row of T (tokens, targets, pos at the
 * row's start): as much of it as fits, cut after T + 1 tokens from the
 * row's start; a target where the next token is the example's and a target
 * (not a prompt's). Returns the positions it took. */
static size_t put_example(const st_dataset *ds, size_t k, size_t at, int T, int32_t *tokens,
                          int32_t *targets, int32_t *pos)
{
    size_t from = ds->doc[k], len = ds->doc[k + 1] - from, n = 0;
    for (size_t t = at; t < (size_t)T && n < len; t++, n++) {
        tokens[t] = (int32_t)ds->tokens[from + n];
        targets[t] = n + 1 < len && ds->loss[from + n + 1] ? (int32_t)ds->tokens[from + n + 1] : -1;
        if (pos)
            pos[t] = (int32_t)n;
    }
    return n;
}

/* The rest of a row from `at`: padding, without targets, at the positions
 * that go on from the last example's (it sees nothing after it). */
static void pad_row(const st_dataset *ds, size_t at, int T, int32_t *tokens, int32_t *targets,
                    int32_t *pos)
{
    for (size_t t = at; t < (size_t)T; t++) {
        tokens[t] = ds->pad;
        targets[t] = -1;
        if (pos)
            pos[t] = t ? pos[t - 1] + 1 : 0;
    }
}

/* A training row draws up to this many examples in a row that do not fit
 * the room left before it pads the rest. */
#define PACK_MISSES 8

st_status st_dataset_batch(const st_dataset *ds, st_split split, uint64_t seed, uint64_t index,
                           int B, int T, int32_t *tokens, int32_t *targets)
{
    return st_dataset_batch_pos(ds, split, seed, index, B, T, tokens, targets, NULL);
}

st_status st_dataset_batch_pos(const st_dataset *ds, st_split split, uint64_t seed,
                               uint64_t index, int B, int T, int32_t *tokens, int32_t *targets,
                               int32_t *pos)
{
    if (B < 1 || T < 1)
        return st_error(ST_ERR_INVALID, "batch %d x %d is empty", B, T);
    if (ds->packed && !pos)
        return st_error(ST_ERR_INVALID, "'%s' packs several examples a row: its batches need "
                        "the positions' table", ds->name);
    for (size_t i = 0; pos && i < (size_t)B * T; i++)
        pos[i] = (int32_t)(i % (size_t)T);
    /* Validation draws do not depend on the seed: every run is measured on the same set. */
    uint64_t key = split == ST_TRAIN ? seed : 0x5eedull;
    rng r = {mix(mix(key) ^ (split == ST_TRAIN ? 0x7a1ull : 0xa11ull)) ^ mix(index)};
    if (ds->kind == KIND_ADDITION) {
        if (T != ADD_SEQ)
            return st_error(ST_ERR_INVALID,
                            "the addition task has sequences of %d tokens, not %d (leave "
                            "--seq out)",
                            ADD_SEQ, T);
        for (int b = 0; b < B; b++) {
            char prompt[16], answer[8], text[24];
            int x = (int)rng_below(&r, 1000), y = (int)rng_below(&r, 1000);
            st_addition_problem(x, y, prompt, answer);
            snprintf(text, sizeof text, "%s%s", prompt, answer);
            for (int t = 0; t < T; t++) {
                tokens[b * T + t] = (unsigned char)text[t];
                /* targets: the answer digits and the newline (predicted from position 7 on) */
                targets[b * T + t] = t >= 7 ? (unsigned char)text[t + 1] : -1;
            }
        }
        return ST_OK;
    }
    if (ds->kind == KIND_JSONL && ds->packed) {
        size_t first, n;
        split_docs(ds, split, &first, &n);
        size_t *starts = NULL, rows = 0;
        if (split != ST_TRAIN) {
            /* The split's rows in order, as eval and validation walk them. */
            if (!(starts = malloc((n + 1) * sizeof *starts)))
                return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
            rows = packed_rows(ds, split, T, starts);
        }
        for (int b = 0; b < B; b++) {
            int32_t *tk = tokens + (size_t)b * T, *tg = targets + (size_t)b * T,
                    *ps = pos + (size_t)b * T;
            size_t used = 0;
            if (split == ST_TRAIN) {
                /* Examples drawn at random, each whole where it fits (the
                 * first cut to the row), until PACK_MISSES in a row do not. */
                for (int miss = 0; used < (size_t)T && miss < PACK_MISSES;) {
                    size_t k = first + (size_t)rng_below(&r, n);
                    size_t len = ds->doc[k + 1] - ds->doc[k];
                    if (used > 0 && used + len > (size_t)T) {
                        miss++;
                        continue;
                    }
                    used += put_example(ds, k, used, T, tk, tg, ps);
                    miss = 0;
                }
            } else {
                size_t row = (index * (size_t)B + (size_t)b) % rows;
                for (size_t k = starts[row]; k < starts[row + 1]; k++)
                    used += put_example(ds, first + k, used, T, tk, tg, ps);
            }
            pad_row(ds, used, T, tk, tg, ps);
        }
        free(starts);
        return ST_OK;
    }
    if (ds->kind == KIND_JSONL) {
        /* One example a row from its start, cut after T + 1 tokens, padded;
         * a target where the next token is one (not a prompt's, not padding). */
        size_t first = split == ST_VAL ? ds->n_train_docs : 0;
        size_t n = st_dataset_examples(ds, split);
        for (int b = 0; b < B; b++) {
            size_t k = first + (split == ST_TRAIN ? (size_t)rng_below(&r, n)
                                                  : (index * (size_t)B + (size_t)b) % n);
            size_t at = ds->doc[k], len = ds->doc[k + 1] - at;
            for (size_t t = 0; t < (size_t)T; t++) {
                tokens[(size_t)b * T + t] = t < len ? (int32_t)ds->tokens[at + t] : ds->pad;
                targets[(size_t)b * T + t] =
                    t + 1 < len && ds->loss[at + t + 1] ? (int32_t)ds->tokens[at + t + 1] : -1;
            }
        }
        return ST_OK;
    }
    size_t first = split == ST_VAL ? ds->n_train : 0;
    size_t n = st_dataset_tokens(ds, split);
    if (n < (size_t)T + 1)
        return st_error(ST_ERR_INVALID,
                        "the %s split of '%s' has %zu tokens, fewer than a sequence of %d + 1",
                        split == ST_TRAIN ? "training" : split == ST_VAL ? "validation" : "whole",
                        ds->name, n, T);
    size_t windows = (n - 1) / (size_t)T;
    for (int b = 0; b < B; b++) {
        size_t start;
        if (split == ST_TRAIN)
            start = (size_t)rng_below(&r, n - (size_t)T);
        else
            start = ((index * (size_t)B + (size_t)b) % windows) * (size_t)T;
        const uint32_t *src = ds->tokens + first + start;
        for (int t = 0; t < T; t++) {
            tokens[b * T + t] = src[t];
            targets[b * T + t] = src[t + 1];
        }
    }
    return ST_OK;
}

st_status st_token_file_write(const char *path, const int32_t *ids, size_t n)
{
    bool wide = false;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= ST_MODEL_MAX_VOCAB_TOKENS)
            return st_error(ST_ERR_INVALID, "token id %d cannot be written to a token file", ids[i]);
        wide = wide || ids[i] > 65535;
    }
    if (n > INT32_MAX)
        return st_error(ST_ERR_INVALID, "%zu tokens: an llm.c token file holds at most %d", n,
                        INT32_MAX);
    size_t width = wide ? 4 : 2, bytes = ST_TOKEN_HEADER_BYTES + n * width;
    unsigned char *out = calloc(bytes, 1);
    if (!out)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory writing '%s'", path);
    int32_t h[3] = {wide ? ST_TOKEN_MAGIC_U32 : ST_TOKEN_MAGIC_U16, wide ? 7 : 1, (int32_t)n};
    memcpy(out, h, sizeof h);
    unsigned char *q = out + ST_TOKEN_HEADER_BYTES;
    for (size_t i = 0; i < n; i++)
        for (size_t b = 0; b < width; b++)
            q[width * i + b] = (unsigned char)((uint32_t)ids[i] >> (8 * b));
    st_status s = st_write_file_atomic(path, out, bytes, NULL);
    free(out);
    return s;
}
