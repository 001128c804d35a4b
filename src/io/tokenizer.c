/*
 * tokenizer.c - Hugging Face BPE tokenizers (see strata/tokenizer.h).
 *
 * Encoding follows the `tokenizers` library's pipeline: the text is cut at
 * added tokens (longest match, leftmost first); each piece between them is
 * normalized, pre-tokenized into words, and each word is split into
 * characters (or, byte-level, the characters its bytes map to) and merged
 * pair by pair, the lowest merge rank first and the leftmost among equals;
 * finally the template adds its special tokens. Decoding maps ids back to
 * token strings and runs the decoder chain over them.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <errno.h>
#include <jansson.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <uninorm.h>
#include <unistr.h>

#include "core/file.h"
#include "core/hash.h"
#include "strata/tokenizer.h"

/* ---- byte buffers ------------------------------------------------------------- */

enum { MATCH_LIMIT = 1000000 }; /* PCRE2 steps per match (see finish) */

typedef struct buf {
    char *p;
    size_t n, cap;
} buf;

static bool buf_add(buf *b, const void *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p)
            return false;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
    return true;
}

/* ---- string -> id, pair -> (rank, id) --------------------------------------------- */

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

typedef struct strmap {
    size_t cap; /* a power of two */
    uint32_t *off, *len;
    int32_t *val; /* -1: empty */
    const buf *arena;
} strmap;

static bool strmap_init(strmap *m, size_t n, const buf *arena)
{
    m->cap = 16;
    while (m->cap < 2 * n + 16)
        m->cap *= 2;
    m->off = malloc(m->cap * sizeof *m->off);
    m->len = malloc(m->cap * sizeof *m->len);
    m->val = malloc(m->cap * sizeof *m->val);
    m->arena = arena;
    if (!m->off || !m->len || !m->val)
        return false;
    for (size_t i = 0; i < m->cap; i++)
        m->val[i] = -1;
    return true;
}

static void strmap_free(strmap *m)
{
    free(m->off);
    free(m->len);
    free(m->val);
}

static int32_t strmap_get(const strmap *m, const char *s, size_t n)
{
    size_t i = hash_bytes(s, n) & (m->cap - 1);
    while (m->val[i] >= 0) {
        if (m->len[i] == n && memcmp(m->arena->p + m->off[i], s, n) == 0)
            return m->val[i];
        i = (i + 1) & (m->cap - 1);
    }
    return -1;
}

/* The key at off/n in the arena; false when it was already there. */
static bool strmap_put(strmap *m, uint32_t off, uint32_t n, int32_t v)
{
    const char *s = m->arena->p + off;
    size_t i = hash_bytes(s, n) & (m->cap - 1);
    while (m->val[i] >= 0) {
        if (m->len[i] == n && memcmp(m->arena->p + m->off[i], s, n) == 0)
            return false;
        i = (i + 1) & (m->cap - 1);
    }
    m->off[i] = off;
    m->len[i] = n;
    m->val[i] = v;
    return true;
}

typedef struct pairmap {
    size_t cap;
    uint64_t *key; /* a << 32 | b; UINT64_MAX: empty */
    int32_t *rank, *id;
} pairmap;

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static bool pairmap_init(pairmap *m, size_t n)
{
    m->cap = 16;
    while (m->cap < 2 * n + 16)
        m->cap *= 2;
    m->key = malloc(m->cap * sizeof *m->key);
    m->rank = malloc(m->cap * sizeof *m->rank);
    m->id = malloc(m->cap * sizeof *m->id);
    if (!m->key || !m->rank || !m->id)
        return false;
    for (size_t i = 0; i < m->cap; i++)
        m->key[i] = UINT64_MAX;
    return true;
}

static void pairmap_free(pairmap *m)
{
    free(m->key);
    free(m->rank);
    free(m->id);
}

static void pairmap_put(pairmap *m, int32_t a, int32_t b, int32_t rank, int32_t id)
{
    uint64_t k = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    size_t i = mix64(k) & (m->cap - 1);
    while (m->key[i] != UINT64_MAX) {
        if (m->key[i] == k)
            return; /* the first (lowest) rank stays */
        i = (i + 1) & (m->cap - 1);
    }
    m->key[i] = k;
    m->rank[i] = rank;
    m->id[i] = id;
}

static bool pairmap_get(const pairmap *m, int32_t a, int32_t b, int32_t *rank, int32_t *id)
{
    uint64_t k = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    size_t i = mix64(k) & (m->cap - 1);
    while (m->key[i] != UINT64_MAX) {
        if (m->key[i] == k) {
            *rank = m->rank[i];
            *id = m->id[i];
            return true;
        }
        i = (i + 1) & (m->cap - 1);
    }
    return false;
}

/* ---- the tokenizer ------------------------------------------------------------------ */

enum { MAX_STEPS = 16 };

typedef enum norm_kind { N_PREPEND, N_REPLACE, N_NFC, N_NFKC, N_NFD, N_NFKD } norm_kind;
typedef struct norm_step {
    norm_kind kind;
    char *a, *b; /* Prepend: a; Replace: a -> b */
} norm_step;

typedef enum pre_kind { P_SPLIT, P_BYTELEVEL, P_METASPACE, P_DIGITS } pre_kind;
typedef enum split_behavior { B_ISOLATED, B_REMOVED, B_MERGED_PREV, B_MERGED_NEXT } split_behavior;
typedef struct pre_step {
    pre_kind kind;
    pcre2_code *re;                /* Split, ByteLevel with its regex */
    split_behavior behavior;
    bool add_prefix_space;         /* ByteLevel */
    char *repl;                    /* Metaspace's replacement ("▁") */
    int prepend;                   /* Metaspace: 0 never, 1 first, 2 always */
    bool split;                    /* Metaspace: split at the replacement */
    bool individual;               /* Digits */
} pre_step;

typedef enum dec_kind { D_BYTELEVEL, D_REPLACE, D_BYTEFALLBACK, D_FUSE, D_STRIP, D_METASPACE } dec_kind;
typedef struct dec_step {
    dec_kind kind;
    char *a, *b;       /* Replace; Metaspace: a = replacement */
    int start, stop;   /* Strip (a = content) */
    int prepend;       /* Metaspace */
} dec_step;

typedef struct added_token {
    uint32_t off, len; /* content in the arena */
    int32_t id;
    bool special;
} added_token;

struct st_tokenizer {
    buf arena;
    size_t n_ids;
    uint32_t *tok_off, *tok_len; /* per id: its string (UINT32_MAX: none) */
    bool *is_special;
    strmap vocab;
    pairmap merges;
    bool byte_level;      /* characters stand for bytes (a ByteLevel pre-tokenizer) */
    bool byte_fallback, ignore_merges, fuse_unk;
    int32_t unk;
    int32_t byte_id[256];       /* byte fallback: <0xNN> */
    int32_t byte_char_id[256];  /* byte level: the token of byte b's character */
    char byte_char[256][3];     /* byte level: byte b's character in UTF-8 */
    uint8_t byte_char_len[256];
    size_t n_norm, n_pre, n_dec;
    norm_step norm[MAX_STEPS];
    pre_step pre[MAX_STEPS];
    dec_step dec[MAX_STEPS];
    added_token *added;
    size_t n_added;
    int32_t *templ;   /* the single template: ids, -1 where the text goes */
    size_t n_templ;
    int bos, eos;
    /* where it came from (st_tokenizer_load): files and their checksum */
    char *files[3];
    bool pair; /* files[0] is GPT-2's vocab.json, files[1] its merges */
    uint64_t sum;
    /* a long encode's progress */
    st_tokenizer_progress_fn progress;
    void *progress_ctx;
    size_t progress_base, progress_total;
    /* encoding scratch */
    pcre2_match_data *md;
    bool unk_missing;        /* model.unk_token named a token the vocabulary lacks */
    pcre2_match_context *mc; /* bounds each match's work (see MATCH_LIMIT) */
    int regex_rc;            /* a failed match's PCRE2 code, 0 when none */
    size_t regex_at;         /* and the byte where it was tried */
};

size_t st_tokenizer_vocab_size(const st_tokenizer *t)
{
    return t->n_ids;
}

int st_tokenizer_bos(const st_tokenizer *t)
{
    return t->bos;
}

int st_tokenizer_eos(const st_tokenizer *t)
{
    return t->eos;
}

uint64_t st_tokenizer_sum(const st_tokenizer *t)
{
    return t->sum;
}

const char *st_tokenizer_file(const st_tokenizer *t, size_t i)
{
    return i < 3 ? t->files[i] : NULL;
}

const char *st_tokenizer_file_role(const st_tokenizer *t, size_t i)
{
    if (i >= 3 || !t->files[i])
        return NULL;
    if (i == 0)
        return t->pair ? "vocab.json" : "tokenizer.json";
    return i == 1 && t->pair ? "merges.txt" : "tokenizer_config.json";
}

void st_tokenizer_on_progress(st_tokenizer *t, st_tokenizer_progress_fn fn, void *ctx)
{
    t->progress = fn;
    t->progress_ctx = ctx;
}

void st_tokenizer_free(st_tokenizer *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < 3; i++)
        free(t->files[i]);
    for (size_t i = 0; i < t->n_norm; i++) {
        free(t->norm[i].a);
        free(t->norm[i].b);
    }
    for (size_t i = 0; i < t->n_pre; i++) {
        pcre2_code_free(t->pre[i].re);
        free(t->pre[i].repl);
    }
    for (size_t i = 0; i < t->n_dec; i++) {
        free(t->dec[i].a);
        free(t->dec[i].b);
    }
    pcre2_match_data_free(t->md);
    pcre2_match_context_free(t->mc);
    strmap_free(&t->vocab);
    pairmap_free(&t->merges);
    free(t->tok_off);
    free(t->tok_len);
    free(t->is_special);
    free(t->added);
    free(t->templ);
    free(t->arena.p);
    free(t);
}

/* GPT-2's printable stand-ins for bytes: printable Latin-1 stands for
 * itself, every other byte for 256 + its order among them. */
static void byte_chars(st_tokenizer *t)
{
    int n = 0;
    for (int b = 0; b < 256; b++) {
        bool keep = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        unsigned cp = keep ? (unsigned)b : 256u + (unsigned)n++;
        if (cp < 0x80) {
            t->byte_char[b][0] = (char)cp;
            t->byte_char_len[b] = 1;
        } else {
            t->byte_char[b][0] = (char)(0xC0 | (cp >> 6));
            t->byte_char[b][1] = (char)(0x80 | (cp & 0x3F));
            t->byte_char_len[b] = 2;
        }
    }
}

/* The byte a byte-level character stands for, or -1. */
static int char_byte(const st_tokenizer *t, const char *s, size_t n)
{
    for (int b = 0; b < 256; b++)
        if (t->byte_char_len[b] == n && memcmp(t->byte_char[b], s, n) == 0)
            return b;
    return -1;
}

/* Length of the UTF-8 character at s (1 for a stray byte). */
static size_t utf8_len(const unsigned char *s, size_t left)
{
    size_t n = s[0] < 0x80 ? 1 : (s[0] >> 5) == 6 ? 2 : (s[0] >> 4) == 14 ? 3 : (s[0] >> 3) == 30 ? 4 : 1;
    if (n > left)
        return 1;
    for (size_t i = 1; i < n; i++)
        if ((s[i] & 0xC0) != 0x80)
            return 1;
    return n;
}

/* ---- reading tokenizer.json ---------------------------------------------------------- */

static char *dup_str(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p)
        memcpy(p, s, n);
    return p;
}

static const char *str_field(json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

static bool bool_field(json_t *o, const char *key, bool dflt)
{
    json_t *v = json_object_get(o, key);
    return json_is_boolean(v) ? json_is_true(v) : dflt;
}

/* A "pattern": {"String": s} or {"Regex": r}; *regex says which. */
static const char *pattern_of(json_t *o, bool *regex)
{
    json_t *p = json_object_get(o, "pattern");
    const char *s = str_field(p, "String");
    *regex = false;
    if (s)
        return s;
    *regex = true;
    return str_field(p, "Regex");
}

static st_status compile(const char *src, const char *what, const char *re, pcre2_code **out)
{
    int err;
    PCRE2_SIZE at;
    /* MATCH_INVALID_UTF: bytes that are not UTF-8 never match (they stay
     * between matches), and the subject is not validated again at every
     * match, which made long texts quadratic. */
    *out = pcre2_compile((PCRE2_SPTR)re, PCRE2_ZERO_TERMINATED,
                         PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &at, NULL);
    if (!*out) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        return st_error(ST_ERR_FORMAT, "%s: %s's regular expression does not compile at %zu: %s",
                        src, what, (size_t)at, (const char *)msg);
    }
    pcre2_jit_compile(*out, PCRE2_JIT_COMPLETE); /* faster when JIT is there; fine without */
    return ST_OK;
}

#define GPT2_REGEX "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"

static st_status unsupported(const char *src, const char *field, const char *value)
{
    return st_error(ST_ERR_UNSUPPORTED,
                    "%s: %s \"%s\" is not supported (Strata reads BPE tokenizers: normalizers NFC, "
                    "NFKC, NFD, NFKD, Prepend, Replace; pre-tokenizers Split, ByteLevel, "
                    "Metaspace, Digits; their Sequences; the matching decoders)",
                    src, field, value ? value : "(missing)");
}

static st_status add_normalizer(st_tokenizer *t, json_t *n, const char *src)
{
    if (!n || json_is_null(n))
        return ST_OK;
    const char *type = str_field(n, "type");
    if (type && strcmp(type, "Sequence") == 0) {
        size_t i;
        json_t *v;
        json_array_foreach(json_object_get(n, "normalizers"), i, v)
        {
            st_status s = add_normalizer(t, v, src);
            if (s != ST_OK)
                return s;
        }
        return ST_OK;
    }
    if (t->n_norm == MAX_STEPS)
        return st_error(ST_ERR_FORMAT, "%s: too many normalizers (at most %d, nested "
                                       "Sequences counted)", src, MAX_STEPS);
    norm_step *st = &t->norm[t->n_norm];
    memset(st, 0, sizeof *st);
    if (!type)
        return unsupported(src, "normalizer", NULL);
    if (strcmp(type, "Prepend") == 0 && str_field(n, "prepend")) {
        st->kind = N_PREPEND;
        st->a = dup_str(str_field(n, "prepend"));
    } else if (strcmp(type, "Replace") == 0) {
        bool regex;
        const char *p = pattern_of(n, &regex), *c = str_field(n, "content");
        if (!p || !c || regex)
            return unsupported(src, "normalizer Replace with a pattern", regex ? "Regex" : NULL);
        st->kind = N_REPLACE;
        st->a = dup_str(p);
        st->b = dup_str(c);
    } else if (strcmp(type, "NFC") == 0) {
        st->kind = N_NFC;
    } else if (strcmp(type, "NFKC") == 0) {
        st->kind = N_NFKC;
    } else if (strcmp(type, "NFD") == 0) {
        st->kind = N_NFD;
    } else if (strcmp(type, "NFKD") == 0) {
        st->kind = N_NFKD;
    } else {
        return unsupported(src, "normalizer", type);
    }
    t->n_norm++;
    return ST_OK;
}

static int prepend_scheme(json_t *o)
{
    const char *p = str_field(o, "prepend_scheme");
    if (p)
        return strcmp(p, "never") == 0 ? 0 : strcmp(p, "first") == 0 ? 1 : 2;
    return bool_field(o, "add_prefix_space", true) ? 2 : 0;
}

static st_status add_pre(st_tokenizer *t, json_t *p, const char *src)
{
    if (!p || json_is_null(p))
        return ST_OK;
    const char *type = str_field(p, "type");
    if (type && strcmp(type, "Sequence") == 0) {
        size_t i;
        json_t *v;
        json_array_foreach(json_object_get(p, "pretokenizers"), i, v)
        {
            st_status s = add_pre(t, v, src);
            if (s != ST_OK)
                return s;
        }
        return ST_OK;
    }
    if (t->n_pre == MAX_STEPS)
        return st_error(ST_ERR_FORMAT, "%s: too many pre-tokenizers", src);
    pre_step *st = &t->pre[t->n_pre];
    memset(st, 0, sizeof *st);
    st_status s = ST_OK;
    if (!type)
        return unsupported(src, "pre_tokenizer", NULL);
    if (strcmp(type, "Split") == 0) {
        bool regex;
        const char *pat = pattern_of(p, &regex), *beh = str_field(p, "behavior");
        if (!pat)
            return st_error(ST_ERR_FORMAT, "%s: a Split pre-tokenizer has no pattern", src);
        if (bool_field(p, "invert", false))
            return unsupported(src, "pre_tokenizer Split with invert", "true");
        if (!beh || (strcmp(beh, "Isolated") && strcmp(beh, "Removed") &&
                     strcmp(beh, "MergedWithPrevious") && strcmp(beh, "MergedWithNext")))
            return unsupported(src, "pre_tokenizer Split behavior", beh);
        st->kind = P_SPLIT;
        st->behavior = !strcmp(beh, "Isolated")             ? B_ISOLATED
                       : !strcmp(beh, "Removed")            ? B_REMOVED
                       : !strcmp(beh, "MergedWithPrevious") ? B_MERGED_PREV
                                                            : B_MERGED_NEXT;
        if (regex) {
            s = compile(src, "the Split pre-tokenizer", pat, &st->re);
        } else { /* a literal string: quote it */
            buf q = {0};
            bool ok = buf_add(&q, "\\Q", 2) && buf_add(&q, pat, strlen(pat)) && buf_add(&q, "\\E", 2);
            s = ok ? compile(src, "the Split pre-tokenizer", q.p, &st->re)
                   : st_error(ST_ERR_HOST_MEMORY, "out of host memory");
            free(q.p);
        }
    } else if (strcmp(type, "ByteLevel") == 0) {
        st->kind = P_BYTELEVEL;
        st->add_prefix_space = bool_field(p, "add_prefix_space", false);
        t->byte_level = true;
        if (bool_field(p, "use_regex", true))
            s = compile(src, "the ByteLevel pre-tokenizer", GPT2_REGEX, &st->re);
    } else if (strcmp(type, "Metaspace") == 0) {
        const char *r = str_field(p, "replacement");
        st->kind = P_METASPACE;
        st->repl = dup_str(r ? r : "\xE2\x96\x81");
        st->prepend = prepend_scheme(p);
        st->split = bool_field(p, "split", true);
    } else if (strcmp(type, "Digits") == 0) {
        st->kind = P_DIGITS;
        st->individual = bool_field(p, "individual_digits", false);
    } else {
        return unsupported(src, "pre_tokenizer", type);
    }
    t->n_pre++;
    return s;
}

static st_status add_decoder(st_tokenizer *t, json_t *d, const char *src)
{
    if (!d || json_is_null(d))
        return ST_OK;
    const char *type = str_field(d, "type");
    if (type && strcmp(type, "Sequence") == 0) {
        size_t i;
        json_t *v;
        json_array_foreach(json_object_get(d, "decoders"), i, v)
        {
            st_status s = add_decoder(t, v, src);
            if (s != ST_OK)
                return s;
        }
        return ST_OK;
    }
    if (t->n_dec == MAX_STEPS)
        return st_error(ST_ERR_FORMAT, "%s: too many decoders", src);
    dec_step *st = &t->dec[t->n_dec];
    memset(st, 0, sizeof *st);
    if (!type)
        return unsupported(src, "decoder", NULL);
    if (strcmp(type, "ByteLevel") == 0) {
        st->kind = D_BYTELEVEL;
    } else if (strcmp(type, "Replace") == 0) {
        bool regex;
        const char *p = pattern_of(d, &regex), *c = str_field(d, "content");
        if (!p || !c || regex)
            return unsupported(src, "decoder Replace with a pattern", regex ? "Regex" : NULL);
        st->kind = D_REPLACE;
        st->a = dup_str(p);
        st->b = dup_str(c);
    } else if (strcmp(type, "ByteFallback") == 0) {
        st->kind = D_BYTEFALLBACK;
    } else if (strcmp(type, "Fuse") == 0) {
        st->kind = D_FUSE;
    } else if (strcmp(type, "Strip") == 0) {
        const char *c = str_field(d, "content");
        st->kind = D_STRIP;
        st->a = dup_str(c ? c : " ");
        st->start = (int)json_integer_value(json_object_get(d, "start"));
        st->stop = (int)json_integer_value(json_object_get(d, "stop"));
    } else if (strcmp(type, "Metaspace") == 0) {
        const char *r = str_field(d, "replacement");
        st->kind = D_METASPACE;
        st->a = dup_str(r ? r : "\xE2\x96\x81");
        st->prepend = prepend_scheme(d);
    } else {
        return unsupported(src, "decoder", type);
    }
    t->n_dec++;
    return ST_OK;
}

/* Adds a token string to the arena; its offset. */
static bool arena_add(st_tokenizer *t, const char *s, size_t n, uint32_t *off)
{
    if (t->arena.n + n > UINT32_MAX - 1)
        return false;
    *off = (uint32_t)t->arena.n;
    return buf_add(&t->arena, s, n) && buf_add(&t->arena, "", 1);
}

static st_status set_id(st_tokenizer *t, int32_t id, const char *s, size_t n, const char *src)
{
    if (id < 0 || (size_t)id >= t->n_ids)
        return st_error(ST_ERR_FORMAT, "%s: token id %d is out of range", src, id);
    uint32_t off;
    if (!arena_add(t, s, n, &off))
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory reading %s", src);
    t->tok_off[id] = off;
    t->tok_len[id] = (uint32_t)n;
    return ST_OK;
}

static int32_t special_id(st_tokenizer *t, json_t *tok)
{
    const char *s = json_is_string(tok) ? json_string_value(tok) : str_field(tok, "content");
    if (!s)
        return -1;
    for (size_t i = 0; i < t->n_added; i++)
        if (t->added[i].len == strlen(s) && !memcmp(t->arena.p + t->added[i].off, s, t->added[i].len))
            return t->added[i].id;
    return strmap_get(&t->vocab, s, strlen(s));
}

static st_status read_post(st_tokenizer *t, json_t *p, const char *src)
{
    if (!p || json_is_null(p))
        return ST_OK;
    const char *type = str_field(p, "type");
    if (type && strcmp(type, "Sequence") == 0) {
        size_t i;
        json_t *v;
        json_array_foreach(json_object_get(p, "processors"), i, v)
        {
            st_status s = read_post(t, v, src);
            if (s != ST_OK)
                return s;
        }
        return ST_OK;
    }
    if (type && strcmp(type, "ByteLevel") == 0)
        return ST_OK; /* offsets only */
    if (!type || strcmp(type, "TemplateProcessing") != 0)
        return unsupported(src, "post_processor", type);
    json_t *single = json_object_get(p, "single"), *specials = json_object_get(p, "special_tokens");
    size_t n = json_array_size(single), total = 0, i;
    json_t *item;
    json_array_foreach(single, i, item)
    {
        json_t *sp = json_object_get(item, "SpecialToken");
        json_t *ids = sp ? json_object_get(json_object_get(specials, str_field(sp, "id")), "ids") : NULL;
        total += sp ? json_array_size(ids) : 1;
    }
    free(t->templ);
    t->templ = malloc((total + 1) * sizeof *t->templ);
    if (!t->templ)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    t->n_templ = 0;
    (void)n;
    json_array_foreach(single, i, item)
    {
        json_t *sp = json_object_get(item, "SpecialToken");
        if (!sp) {
            /* One text: every Sequence item is it (twice when named twice,
             * as the library does); a second sequence does not exist. */
            json_t *seq = json_object_get(item, "Sequence");
            const char *id = seq ? str_field(seq, "id") : NULL;
            if (!id || strcmp(id, "A") != 0)
                return st_error(ST_ERR_FORMAT,
                                "%s: item %zu of the post-processor's single template is not "
                                "a special token or sequence A (%s)",
                                src, i + 1, id ? id : "no Sequence id");
            t->templ[t->n_templ++] = -1;
            continue;
        }
        json_t *ids = json_object_get(json_object_get(specials, str_field(sp, "id")), "ids");
        if (!json_array_size(ids))
            return st_error(ST_ERR_FORMAT, "%s: the template's special token \"%s\" has no ids",
                            src, str_field(sp, "id") ? str_field(sp, "id") : "?");
        size_t k;
        json_t *id;
        json_array_foreach(ids, k, id)
        {
            json_int_t v = json_integer_value(id);
            if (v < 0 || (size_t)v >= t->n_ids)
                return st_error(ST_ERR_FORMAT, "%s: template id %lld is out of range", src,
                                (long long)v);
            t->templ[t->n_templ++] = (int32_t)v;
        }
    }
    return ST_OK;
}

/* The vocabulary, merges and added tokens into t (ids sized first). */
static st_status read_model(st_tokenizer *t, json_t *root, const char *src)
{
    json_t *model = json_object_get(root, "model");
    const char *type = str_field(model, "type");
    if (!type || strcmp(type, "BPE") != 0)
        return unsupported(src, "model type", type);
    const char *prefix = str_field(model, "continuing_subword_prefix");
    const char *suffix = str_field(model, "end_of_word_suffix");
    if ((prefix && *prefix) || (suffix && *suffix))
        return unsupported(src, "BPE with a subword prefix or suffix", prefix ? prefix : suffix);
    json_t *dropout = json_object_get(model, "dropout");
    if (dropout && !json_is_null(dropout) && json_number_value(dropout) > 0)
        return unsupported(src, "BPE dropout", "above 0");
    json_t *vocab = json_object_get(model, "vocab"), *merges = json_object_get(model, "merges");
    json_t *added = json_object_get(root, "added_tokens");
    if (!json_is_object(vocab) || !json_is_array(merges))
        return st_error(ST_ERR_FORMAT, "%s: model.vocab must be an object and model.merges a list",
                        src);
    t->byte_fallback = bool_field(model, "byte_fallback", false);
    t->ignore_merges = bool_field(model, "ignore_merges", false);
    t->fuse_unk = bool_field(model, "fuse_unk", false);
    /* Sizes: one more than the largest id anywhere. */
    json_int_t max_id = -1;
    const char *key;
    json_t *v;
    json_object_foreach(vocab, key, v)
    {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > 16777215)
            return st_error(ST_ERR_FORMAT, "%s: model.vocab[\"%s\"] must be an id from 0 to "
                            "16777215", src, key);
        if (json_integer_value(v) > max_id)
            max_id = json_integer_value(v);
    }
    size_t i;
    json_array_foreach(added, i, v)
    {
        /* An id given as a string or a float was read as 0; the library
         * refuses such a file, and so does this. */
        json_t *idv = json_object_get(v, "id");
        json_int_t id = json_is_integer(idv) ? json_integer_value(idv) : -1;
        if (!str_field(v, "content") || id < 0 || id > 16777215)
            return st_error(ST_ERR_FORMAT, "%s: added_tokens[%zu] needs a content and an id from "
                            "0 to 16777215", src, i);
        if (id > max_id)
            max_id = id;
    }
    t->n_ids = (size_t)(max_id + 1);
    t->tok_off = malloc((t->n_ids + 1) * sizeof *t->tok_off);
    t->tok_len = malloc((t->n_ids + 1) * sizeof *t->tok_len);
    t->is_special = calloc(t->n_ids + 1, sizeof *t->is_special);
    if (!t->tok_off || !t->tok_len || !t->is_special ||
        !strmap_init(&t->vocab, json_object_size(vocab), &t->arena) ||
        !pairmap_init(&t->merges, json_array_size(merges)))
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory reading %s", src);
    for (size_t k = 0; k < t->n_ids; k++)
        t->tok_len[k] = UINT32_MAX;
    st_status s = ST_OK;
    json_object_foreach(vocab, key, v)
    {
        int32_t id = (int32_t)json_integer_value(v);
        if ((s = set_id(t, id, key, strlen(key), src)) != ST_OK)
            return s;
        if (!strmap_put(&t->vocab, t->tok_off[id], t->tok_len[id], id))
            return st_error(ST_ERR_FORMAT, "%s: model.vocab has \"%s\" twice", src, key);
    }
    /* Merges of any length (tokens of over 1 KiB were refused): "a b" with
     * exactly one space, as the library reads that form, or ["a", "b"],
     * whose tokens may hold spaces. */
    char *both = NULL;
    size_t both_cap = 0;
    json_array_foreach(merges, i, v)
    {
        const char *a = NULL, *b = NULL;
        size_t la = 0, lb = 0;
        if (json_is_string(v)) {
            const char *m = json_string_value(v), *sp = strchr(m, ' ');
            if (!sp || strchr(sp + 1, ' ')) {
                free(both);
                return st_error(ST_ERR_FORMAT,
                                "%s: merge %zu (\"%.200s\") is not two tokens with one space "
                                "between (a merge of tokens that hold spaces is written as "
                                "[\"a\", \"b\"])",
                                src, i, m);
            }
            a = m;
            la = (size_t)(sp - m);
            b = sp + 1;
            lb = strlen(b);
        } else if (json_array_size(v) == 2) {
            a = json_string_value(json_array_get(v, 0));
            b = json_string_value(json_array_get(v, 1));
            la = a ? strlen(a) : 0;
            lb = b ? strlen(b) : 0;
        }
        if (!a || !b) {
            free(both);
            return st_error(ST_ERR_FORMAT, "%s: merge %zu is not two tokens", src, i);
        }
        if (la + lb + 1 > both_cap) {
            char *q = realloc(both, la + lb + 1);
            if (!q) {
                free(both);
                return st_error(ST_ERR_HOST_MEMORY, "out of host memory reading %s", src);
            }
            both = q;
            both_cap = la + lb + 1;
        }
        memcpy(both, a, la);
        memcpy(both + la, b, lb);
        int32_t ia = strmap_get(&t->vocab, a, la), ib = strmap_get(&t->vocab, b, lb);
        int32_t im = strmap_get(&t->vocab, both, la + lb);
        if (ia < 0 || ib < 0 || im < 0) {
            free(both);
            return st_error(ST_ERR_FORMAT,
                            "%s: merge %zu (\"%.*s\" + \"%.*s\") names a token that is not in "
                            "the vocabulary",
                            src, i, (int)(la < 200 ? la : 200), a, (int)(lb < 200 ? lb : 200), b);
        }
        pairmap_put(&t->merges, ia, ib, (int32_t)i, im);
    }
    free(both);
    t->added = calloc(json_array_size(added) + 1, sizeof *t->added);
    if (!t->added)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    json_array_foreach(added, i, v)
    {
        const char *c = str_field(v, "content");
        if (bool_field(v, "lstrip", false) || bool_field(v, "rstrip", false) ||
            bool_field(v, "single_word", false))
            return unsupported(src, "added token with lstrip, rstrip or single_word", c);
        if (!*c)
            continue;
        int32_t id = (int32_t)json_integer_value(json_object_get(v, "id"));
        if ((s = set_id(t, id, c, strlen(c), src)) != ST_OK)
            return s;
        t->is_special[id] = bool_field(v, "special", false);
        t->added[t->n_added++] = (added_token){t->tok_off[id], t->tok_len[id], id, t->is_special[id]};
    }
    /* Longest first: the leftmost match is then the longest there. */
    for (size_t a = 1; a < t->n_added; a++)
        for (size_t b = a; b > 0 && t->added[b].len > t->added[b - 1].len; b--) {
            added_token x = t->added[b];
            t->added[b] = t->added[b - 1];
            t->added[b - 1] = x;
        }
    const char *unk = str_field(model, "unk_token");
    t->unk = unk ? strmap_get(&t->vocab, unk, strlen(unk)) : -1;
    /* As the library: such a file loads, and a text that needs the unknown
     * token is refused when it is met (it was dropped silently). */
    t->unk_missing = unk && t->unk < 0;
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        t->byte_id[b] = strmap_get(&t->vocab, name, 6);
    }
    return ST_OK;
}

static st_tokenizer *tokenizer_new(void)
{
    st_tokenizer *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->bos = t->eos = -1;
    t->unk = -1;
    byte_chars(t);
    return t;
}

/* After reading: the byte-level characters' ids, scratch, BOS and EOS guesses. */
static st_status finish(st_tokenizer *t, const char *src)
{
    for (int b = 0; b < 256; b++)
        t->byte_char_id[b] = strmap_get(&t->vocab, t->byte_char[b], t->byte_char_len[b]);
    t->md = pcre2_match_data_create(4, NULL);
    t->mc = pcre2_match_context_create(NULL);
    if (!t->md || !t->mc)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    /* A pathological pattern ((a+)+$) backtracks without end: PCRE2's own
     * limit (10 million steps per match) let a 1,000-word text take 42 s.
     * The patterns of published tokenizers need a few hundred steps. */
    pcre2_set_match_limit(t->mc, MATCH_LIMIT);
    pcre2_set_depth_limit(t->mc, MATCH_LIMIT);
    for (size_t i = 0; i < t->n_templ && t->bos < 0; i++)
        if (t->templ[i] >= 0 && i == 0)
            t->bos = t->templ[i];
    static const char *const eos_names[] = {"</s>", "<|endoftext|>", "<|end_of_text|>"};
    for (size_t i = 0; i < 3 && t->eos < 0; i++)
        for (size_t k = 0; k < t->n_added; k++)
            if (t->added[k].len == strlen(eos_names[i]) &&
                !memcmp(t->arena.p + t->added[k].off, eos_names[i], t->added[k].len))
                t->eos = t->added[k].id;
    (void)src;
    return ST_OK;
}

st_status st_tokenizer_parse(const char *text, size_t len, const char *src, st_tokenizer **out)
{
    json_error_t jerr;
    json_t *root = json_loadb(text, len, 0, &jerr);
    if (!root)
        return st_error(ST_ERR_FORMAT, "%s: not valid JSON (line %d, column %d): %s", src,
                        jerr.line, jerr.column, jerr.text);
    st_tokenizer *t = tokenizer_new();
    st_status s = t ? ST_OK : st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    if (s == ST_OK && !json_is_object(root))
        s = st_error(ST_ERR_FORMAT, "%s: the top level must be a JSON object", src);
    if (s == ST_OK)
        s = read_model(t, root, src);
    if (s == ST_OK)
        s = add_normalizer(t, json_object_get(root, "normalizer"), src);
    if (s == ST_OK)
        s = add_pre(t, json_object_get(root, "pre_tokenizer"), src);
    if (s == ST_OK)
        s = read_post(t, json_object_get(root, "post_processor"), src);
    if (s == ST_OK)
        s = add_decoder(t, json_object_get(root, "decoder"), src);
    if (s == ST_OK)
        s = finish(t, src);
    json_decref(root);
    if (s != ST_OK) {
        st_tokenizer_free(t);
        return s;
    }
    *out = t;
    return ST_OK;
}

/* ---- encoding -------------------------------------------------------------------------- */

/* The normalizers over one piece of text, in place in *b. */
static st_status normalize(const st_tokenizer *t, buf *b)
{
    for (size_t i = 0; i < t->n_norm; i++) {
        const norm_step *st = &t->norm[i];
        buf o = {0};
        bool ok = true;
        if (st->kind == N_PREPEND) {
            if (b->n == 0)
                continue;
            ok = buf_add(&o, st->a, strlen(st->a)) && buf_add(&o, b->p, b->n);
        } else if (st->kind == N_REPLACE) {
            size_t la = strlen(st->a), lb = strlen(st->b);
            for (size_t k = 0; ok && k < b->n;) {
                if (la && k + la <= b->n && memcmp(b->p + k, st->a, la) == 0) {
                    ok = buf_add(&o, st->b, lb);
                    k += la;
                } else {
                    ok = buf_add(&o, b->p + k, 1);
                    k++;
                }
            }
            if (ok && b->n == 0)
                ok = buf_add(&o, "", 0);
        } else {
            uninorm_t nf = st->kind == N_NFC ? UNINORM_NFC : st->kind == N_NFKC ? UNINORM_NFKC
                           : st->kind == N_NFD ? UNINORM_NFD : UNINORM_NFKD;
            size_t n = 0;
            /* Text that is not valid UTF-8 (which the library never sees:
             * its strings are UTF-8) is left as the bytes it is. */
            if (u8_check((const uint8_t *)b->p, b->n) != NULL)
                continue;
            uint8_t *r = u8_normalize(nf, (const uint8_t *)b->p, b->n, NULL, &n);
            if (!r)
                continue;
            ok = buf_add(&o, r, n);
            free(r);
        }
        if (!ok) {
            free(o.p);
            return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
        }
        free(b->p);
        *b = o;
    }
    return ST_OK;
}

/* Pieces of text: [off, off + len) of a buffer. */
typedef struct piece {
    size_t off, len;
} piece;

typedef struct pieces {
    piece *p;
    size_t n, cap;
} pieces;

static bool pieces_add(pieces *ps, size_t off, size_t len)
{
    if (len == 0)
        return true;
    if (ps->n == ps->cap) {
        size_t cap = ps->cap ? 2 * ps->cap : 64;
        piece *p = realloc(ps->p, cap * sizeof *p);
        if (!p)
            return false;
        ps->p = p;
        ps->cap = cap;
    }
    ps->p[ps->n++] = (piece){off, len};
    return true;
}

/* Splits each piece at the regex's matches, by behavior. */
static bool split_regex(st_tokenizer *t, const pcre2_code *re, split_behavior beh, const char *s,
                        const pieces *in, pieces *out)
{
    for (size_t i = 0; i < in->n; i++) {
        size_t at = in->p[i].off, end = in->p[i].off + in->p[i].len, prev = at;
        size_t pending = SIZE_MAX; /* MergedWithNext: the start of a match awaiting its gap */
        while (at <= end) {
            int rc = pcre2_match(re, (PCRE2_SPTR)s, end, at, 0, t->md, t->mc);
            if (rc == PCRE2_ERROR_NOMATCH)
                break;
            if (rc < 0) { /* the match limit, or worse: an error, not "no more matches" */
                t->regex_rc = rc;
                t->regex_at = at;
                return false;
            }
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(t->md);
            size_t ms = ov[0], me = ov[1];
            if (me == ms) { /* an empty match: step over one character */
                if (ms >= end)
                    break;
                at = ms + utf8_len((const unsigned char *)s + ms, end - ms);
                continue;
            }
            bool ok = true;
            if (beh == B_ISOLATED || beh == B_REMOVED) {
                ok = pieces_add(out, prev, ms - prev);
                if (ok && beh == B_ISOLATED)
                    ok = pieces_add(out, ms, me - ms);
            } else if (beh == B_MERGED_PREV) {
                ok = pieces_add(out, prev, me - prev);
            } else {
                if (pending != SIZE_MAX)
                    ok = pieces_add(out, pending, ms - pending);
                else
                    ok = pieces_add(out, prev, ms - prev);
                pending = ms;
            }
            if (!ok)
                return false;
            prev = me;
            at = me;
        }
        bool ok = beh == B_MERGED_NEXT && pending != SIZE_MAX ? pieces_add(out, pending, end - pending)
                                                              : pieces_add(out, prev, end - prev);
        if (!ok)
            return false;
    }
    return true;
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* The pre-tokenizers over the normalized text of one piece (between added
 * tokens): words as pieces of *text, which a step may rewrite (Metaspace,
 * ByteLevel's characters). first: the piece starts the whole text. */
static st_status pre_tokenize(st_tokenizer *t, buf *text, bool first, pieces *words)
{
    pieces cur = {0}, next = {0};
    if (!pieces_add(&cur, 0, text->n) && text->n)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    st_status s = ST_OK;
    for (size_t i = 0; s == ST_OK && i < t->n_pre; i++) {
        const pre_step *st = &t->pre[i];
        next.n = 0;
        bool ok = true;
        if (st->kind == P_SPLIT || (st->kind == P_BYTELEVEL && st->re)) {
            if (st->kind == P_BYTELEVEL && st->add_prefix_space) {
                /* a space before each piece that does not start with one */
                buf o = {0};
                pieces moved = {0};
                for (size_t k = 0; ok && k < cur.n; k++) {
                    size_t off = o.n;
                    if (text->p[cur.p[k].off] != ' ')
                        ok = buf_add(&o, " ", 1);
                    ok = ok && buf_add(&o, text->p + cur.p[k].off, cur.p[k].len) &&
                         pieces_add(&moved, off, o.n - off);
                }
                free(text->p);
                *text = o;
                free(cur.p);
                cur = moved;
            }
            ok = ok && split_regex(t, st->re, st->kind == P_SPLIT ? st->behavior : B_ISOLATED,
                                   text->p, &cur, &next);
        } else if (st->kind == P_METASPACE) {
            /* spaces become the replacement; a replacement before the first piece */
            buf o = {0};
            size_t lr = strlen(st->repl);
            for (size_t k = 0; ok && k < cur.n; k++) {
                size_t off = o.n;
                const char *p = text->p + cur.p[k].off;
                size_t n = cur.p[k].len;
                bool pre = st->prepend == 2 || (st->prepend == 1 && first && k == 0);
                if (pre && !(n >= lr && memcmp(p, st->repl, lr) == 0))
                    ok = buf_add(&o, st->repl, lr);
                for (size_t c = 0; ok && c < n; c++)
                    ok = p[c] == ' ' ? buf_add(&o, st->repl, lr) : buf_add(&o, p + c, 1);
                if (!ok)
                    break;
                if (!st->split) {
                    ok = pieces_add(&next, off, o.n - off);
                    continue;
                }
                /* split before each replacement (merged with the next) */
                size_t start = off;
                for (size_t c = off + 1; c + lr <= o.n; c++)
                    if (memcmp(o.p + c, st->repl, lr) == 0) {
                        ok = ok && pieces_add(&next, start, c - start);
                        start = c;
                    }
                ok = ok && pieces_add(&next, start, o.n - start);
            }
            free(text->p);
            *text = o;
        } else if (st->kind == P_DIGITS) {
            for (size_t k = 0; ok && k < cur.n; k++) {
                size_t a = cur.p[k].off, e = a + cur.p[k].len, start = a;
                for (size_t c = a; ok && c < e; c++) {
                    bool d = is_digit(text->p[c]);
                    bool boundary = c > start && (d != is_digit(text->p[c - 1]) ||
                                                  (d && st->individual));
                    if (boundary) {
                        ok = pieces_add(&next, start, c - start);
                        start = c;
                    }
                }
                ok = ok && pieces_add(&next, start, e - start);
            }
        } else { /* ByteLevel without its regex: the pieces as they are */
            for (size_t k = 0; ok && k < cur.n; k++)
                ok = pieces_add(&next, cur.p[k].off, cur.p[k].len);
        }
        if (!ok && t->regex_rc) {
            PCRE2_UCHAR msg[256];
            if (pcre2_get_error_message(t->regex_rc, msg, sizeof msg) < 0)
                snprintf((char *)msg, sizeof msg, "PCRE2 error %d", t->regex_rc);
            s = st_error(ST_ERR_INVALID,
                         "%s: the pre-tokenizer's regular expression failed at byte %zu of a "
                         "text piece: %s (a pattern that backtracks this much is not one a "
                         "published tokenizer uses)",
                         t->files[0] ? t->files[0] : "tokenizer", t->regex_at, (char *)msg);
            t->regex_rc = 0;
        } else if (!ok) {
            s = st_error(ST_ERR_HOST_MEMORY, "out of host memory");
        }
        pieces tmp = cur;
        cur = next;
        next = tmp;
    }
    free(next.p);
    *words = cur;
    return s;
}

/* Ids of one word by BPE: its characters (byte level: its bytes'
 * characters), then merges, the lowest rank first and the leftmost among
 * equals, until none applies. */
typedef struct sym {
    int32_t id;
    int prev, next; /* -1 at the ends */
} sym;

typedef struct cand {
    int32_t rank;
    int pos;         /* the left symbol */
    int32_t left, right;
} cand;

static bool cand_less(const cand *a, const cand *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void heap_push(cand *h, size_t *n, cand c)
{
    size_t i = (*n)++;
    h[i] = c;
    while (i > 0 && cand_less(&h[i], &h[(i - 1) / 2])) {
        cand x = h[i];
        h[i] = h[(i - 1) / 2];
        h[(i - 1) / 2] = x;
        i = (i - 1) / 2;
    }
}

static cand heap_pop(cand *h, size_t *n)
{
    cand top = h[0];
    h[0] = h[--*n];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < *n && cand_less(&h[l], &h[m]))
            m = l;
        if (r < *n && cand_less(&h[r], &h[m]))
            m = r;
        if (m == i)
            break;
        cand x = h[i];
        h[i] = h[m];
        h[m] = x;
        i = m;
    }
    return top;
}

static bool out_add(int32_t **ids, size_t *n, size_t *cap, int32_t id)
{
    if (*n == *cap) {
        size_t c = *cap ? 2 * *cap : 256;
        int32_t *p = realloc(*ids, c * sizeof *p);
        if (!p)
            return false;
        *ids = p;
        *cap = c;
    }
    (*ids)[(*n)++] = id;
    return true;
}

static st_status bpe_word(st_tokenizer *t, const char *w, size_t n, int32_t **ids, size_t *count,
                          size_t *cap)
{
    if (n == 0)
        return ST_OK;
    st_status oom = st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    /* Byte level: the word's bytes become their characters. */
    buf mapped = {0};
    if (t->byte_level) {
        for (size_t i = 0; i < n; i++)
            if (!buf_add(&mapped, t->byte_char[(unsigned char)w[i]],
                         t->byte_char_len[(unsigned char)w[i]])) {
                free(mapped.p);
                return oom;
            }
        w = mapped.p;
        n = mapped.n;
    }
    int32_t whole;
    if (t->ignore_merges && (whole = strmap_get(&t->vocab, w, n)) >= 0) {
        free(mapped.p);
        return out_add(ids, count, cap, whole) ? ST_OK : oom;
    }
    sym *sy = malloc((n + 1) * sizeof *sy);
    cand *heap = malloc((2 * n + 2) * sizeof *heap);
    if (!sy || !heap) {
        free(sy), free(heap), free(mapped.p);
        return oom;
    }
    int ns = 0;
    bool last_unk = false;
    for (size_t i = 0; i < n;) {
        size_t cl = utf8_len((const unsigned char *)w + i, n - i);
        int32_t id = strmap_get(&t->vocab, w + i, cl);
        if (id >= 0) {
            sy[ns++] = (sym){id, 0, 0};
            last_unk = false;
        } else if (t->byte_fallback && t->byte_id[(unsigned char)w[i]] >= 0) {
            bool all = true;
            for (size_t k = 0; k < cl; k++)
                all = all && t->byte_id[(unsigned char)w[i + k]] >= 0;
            for (size_t k = 0; all && k < cl; k++)
                sy[ns++] = (sym){t->byte_id[(unsigned char)w[i + k]], 0, 0};
            if (!all && t->unk >= 0 && !(t->fuse_unk && last_unk))
                sy[ns++] = (sym){t->unk, 0, 0};
            last_unk = !all;
        } else if (t->unk >= 0) {
            if (!(t->fuse_unk && last_unk))
                sy[ns++] = (sym){t->unk, 0, 0};
            last_unk = true;
        } else if (t->unk_missing) {
            free(sy), free(heap), free(mapped.p);
            return st_error(ST_ERR_INVALID,
                            "%s: the text has '%.*s', which the vocabulary lacks, and the "
                            "unk_token that stands for such characters is not in the vocabulary "
                            "either",
                            t->files[0] ? t->files[0] : "tokenizer", (int)cl, w + i);
        }
        i += cl;
    }
    for (int i = 0; i < ns; i++) {
        sy[i].prev = i - 1;
        sy[i].next = i + 1 < ns ? i + 1 : -1;
    }
    size_t nh = 0;
    for (int i = 0; i + 1 < ns; i++) {
        int32_t rank, id;
        if (pairmap_get(&t->merges, sy[i].id, sy[i + 1].id, &rank, &id))
            heap_push(heap, &nh, (cand){rank, i, sy[i].id, sy[i + 1].id});
    }
    while (nh > 0) {
        cand c = heap_pop(heap, &nh);
        int a = c.pos, b = sy[a].next;
        /* stale: a symbol of the pair has changed since it was pushed */
        if (sy[a].id != c.left || b < 0 || sy[b].id != c.right)
            continue;
        int32_t rank = 0, id = c.left, merged = 0;
        pairmap_get(&t->merges, c.left, c.right, &rank, &id);
        sy[a].id = id;
        sy[a].next = sy[b].next;
        if (sy[b].next >= 0)
            sy[sy[b].next].prev = a;
        sy[b].id = -1; /* merged away */
        if (sy[a].prev >= 0 && pairmap_get(&t->merges, sy[sy[a].prev].id, id, &rank, &merged))
            heap_push(heap, &nh, (cand){rank, sy[a].prev, sy[sy[a].prev].id, id});
        if (sy[a].next >= 0 && pairmap_get(&t->merges, id, sy[sy[a].next].id, &rank, &merged))
            heap_push(heap, &nh, (cand){rank, a, id, sy[sy[a].next].id});
    }
    bool ok = true;
    for (int i = ns > 0 ? 0 : -1; ok && i >= 0; i = sy[i].next)
        ok = out_add(ids, count, cap, sy[i].id);
    free(sy), free(heap), free(mapped.p);
    return ok ? ST_OK : oom;
}

/* Ids of the text between two added tokens. */
static st_status encode_piece(st_tokenizer *t, const char *s, size_t n, bool first,
                              int32_t **ids, size_t *count, size_t *cap)
{
    buf text = {0};
    if (!buf_add(&text, s, n))
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    st_status st = normalize(t, &text);
    pieces words = {0};
    if (st == ST_OK)
        st = pre_tokenize(t, &text, first, &words);
    for (size_t i = 0; st == ST_OK && i < words.n; i++) {
        st = bpe_word(t, text.p + words.p[i].off, words.p[i].len, ids, count, cap);
        if (t->progress && (i & 4095) == 4095) /* bytes of the piece, as normalized */
            t->progress(t->progress_ctx,
                        t->progress_base + (size_t)((double)words.p[i].off / text.n * n),
                        t->progress_total);
    }
    free(words.p);
    free(text.p);
    return st;
}

st_status st_tokenizer_encode(st_tokenizer *t, const char *text, size_t len, bool with_template,
                              int32_t **ids, size_t *n, size_t *cap)
{
    st_status s = ST_OK;
    size_t templ_at = 0;
    bool ok = true;
    if (with_template)
        for (; ok && templ_at < t->n_templ && t->templ[templ_at] >= 0; templ_at++)
            ok = out_add(ids, n, cap, t->templ[templ_at]);
    /* First bytes of added tokens, to look for them only where they may start. */
    bool starts[256] = {false};
    for (size_t k = 0; k < t->n_added; k++)
        starts[(unsigned char)t->arena.p[t->added[k].off]] = true;
    size_t from = 0, text_start = *n;
    for (size_t i = 0; ok && s == ST_OK && i <= len; i++) {
        long hit = -1;
        if (i < len && starts[(unsigned char)text[i]])
            for (size_t k = 0; k < t->n_added && hit < 0; k++)
                if (t->added[k].len <= len - i &&
                    !memcmp(text + i, t->arena.p + t->added[k].off, t->added[k].len))
                    hit = (long)k;
        if (hit < 0 && i < len)
            continue;
        if (i > from) {
            t->progress_base = from;
            t->progress_total = len;
            s = encode_piece(t, text + from, i - from, from == 0, ids, n, cap);
        }
        if (hit >= 0 && s == ST_OK) {
            ok = out_add(ids, n, cap, t->added[hit].id);
            i += t->added[hit].len - 1;
            from = i + 1;
        }
    }
    size_t text_end = *n;
    if (with_template && templ_at < t->n_templ)
        for (size_t k = templ_at + 1; ok && k < t->n_templ; k++) {
            if (t->templ[k] >= 0) {
                ok = out_add(ids, n, cap, t->templ[k]);
                continue;
            }
            for (size_t j = text_start; ok && j < text_end; j++) /* the text again */
                ok = out_add(ids, n, cap, (*ids)[j]);
        }
    if (!ok && s == ST_OK)
        s = st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    return s;
}

/* ---- decoding -------------------------------------------------------------------------- */

typedef struct strs {
    buf *s;
    size_t n;
} strs;

static void strs_free(strs *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->s[i].p);
    free(l->s);
}

/* <0xNN>: its byte, else -1. */
static int byte_token(const buf *b)
{
    if (b->n != 6 || memcmp(b->p, "<0x", 3) != 0 || b->p[5] != '>')
        return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = b->p[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0)
            return -1;
        v = v * 16 + d;
    }
    return v;
}

static bool replace_all(buf *b, const char *a, const char *with)
{
    size_t la = strlen(a), lw = strlen(with);
    if (!la)
        return true;
    buf o = {0};
    bool ok = buf_add(&o, "", 0);
    for (size_t k = 0; ok && k < b->n;) {
        if (k + la <= b->n && memcmp(b->p + k, a, la) == 0) {
            ok = buf_add(&o, with, lw);
            k += la;
        } else {
            ok = buf_add(&o, b->p + k, 1);
            k++;
        }
    }
    if (!ok) {
        free(o.p);
        return false;
    }
    free(b->p);
    *b = o;
    return true;
}

static bool run_decoder(const st_tokenizer *t, const dec_step *st, strs *l)
{
    bool ok = true;
    if (st->kind == D_BYTELEVEL) {
        for (size_t i = 0; ok && i < l->n; i++) {
            buf o = {0};
            ok = buf_add(&o, "", 0);
            for (size_t k = 0; ok && k < l->s[i].n;) {
                size_t cl = utf8_len((const unsigned char *)l->s[i].p + k, l->s[i].n - k);
                int b = char_byte(t, l->s[i].p + k, cl);
                char c = (char)b;
                ok = b >= 0 ? buf_add(&o, &c, 1) : buf_add(&o, l->s[i].p + k, cl);
                k += cl;
            }
            free(l->s[i].p);
            l->s[i] = o;
        }
    } else if (st->kind == D_REPLACE) {
        for (size_t i = 0; ok && i < l->n; i++)
            ok = replace_all(&l->s[i], st->a, st->b);
    } else if (st->kind == D_BYTEFALLBACK) {
        /* runs of <0xNN> become their bytes when they are valid UTF-8, else
         * one U+FFFD per byte */
        size_t w = 0;
        for (size_t i = 0; ok && i < l->n;) {
            size_t j = i;
            buf bytes = {0};
            while (j < l->n && byte_token(&l->s[j]) >= 0) {
                char c = (char)byte_token(&l->s[j]);
                ok = ok && buf_add(&bytes, &c, 1);
                j++;
            }
            if (j == i) {
                l->s[w++] = l->s[i++];
                continue;
            }
            size_t nb = j - i;
            bool valid = u8_check((const uint8_t *)bytes.p, bytes.n) == NULL;
            for (size_t k = i; k < j; k++)
                free(l->s[k].p);
            if (valid) {
                l->s[w++] = bytes;
            } else {
                free(bytes.p);
                for (size_t k = 0; ok && k < nb; k++) {
                    buf r = {0};
                    ok = buf_add(&r, "\xEF\xBF\xBD", 3);
                    l->s[w++] = r;
                }
            }
            i = j;
        }
        l->n = w;
    } else if (st->kind == D_FUSE) {
        buf o = {0};
        ok = buf_add(&o, "", 0);
        for (size_t i = 0; ok && i < l->n; i++)
            ok = buf_add(&o, l->s[i].p, l->s[i].n);
        for (size_t i = 0; i < l->n; i++)
            free(l->s[i].p);
        if (ok) {
            l->s[0] = o;
            l->n = 1;
        } else {
            free(o.p);
            l->n = 0;
        }
    } else if (st->kind == D_STRIP) {
        size_t lc = strlen(st->a);
        for (size_t i = 0; lc && i < l->n; i++) {
            buf *b = &l->s[i];
            size_t a = 0, e = b->n;
            for (int k = 0; k < st->start && a + lc <= e && !memcmp(b->p + a, st->a, lc); k++)
                a += lc;
            for (int k = 0; k < st->stop && e >= a + lc && !memcmp(b->p + e - lc, st->a, lc); k++)
                e -= lc;
            memmove(b->p, b->p + a, e - a);
            b->n = e - a;
            b->p[b->n] = '\0';
        }
    } else if (st->kind == D_METASPACE) {
        for (size_t i = 0; ok && i < l->n; i++) {
            ok = replace_all(&l->s[i], st->a, " ");
            if (ok && i == 0 && st->prepend && l->s[0].n && l->s[0].p[0] == ' ') {
                memmove(l->s[0].p, l->s[0].p + 1, l->s[0].n);
                l->s[0].n--;
            }
        }
    }
    return ok;
}

/* A byte-fallback token: its text is "<0xNN>" and it is that byte's id. */
static bool is_byte_token(const st_tokenizer *t, int32_t id)
{
    if (t->tok_len[id] != 6)
        return false;
    const char *p = t->arena.p + t->tok_off[id];
    unsigned b = 0;
    for (int i = 3; i < 5; i++) {
        char c = p[i];
        int v = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (v < 0)
            return false;
        b = b * 16 + (unsigned)v;
    }
    return memcmp(p, "<0x", 3) == 0 && p[5] == '>' && t->byte_id[b] == id;
}

st_status st_tokenizer_decode(const st_tokenizer *t, const int32_t *ids, size_t n,
                              bool skip_special, char **text, size_t *len)
{
    strs l = {calloc(n + 1, sizeof(buf)), 0};
    bool ok = l.s != NULL;
    for (size_t i = 0; ok && i < n; i++) {
        if (ids[i] < 0 || (size_t)ids[i] >= t->n_ids || t->tok_len[ids[i]] == UINT32_MAX) {
            strs_free(&l);
            return st_error(ST_ERR_INVALID, "token id %d is not in the tokenizer's vocabulary of %zu",
                            ids[i], t->n_ids);
        }
        /* Byte tokens (<0x41>) are text even when marked special: skipping
         * them dropped every character they spell. */
        if (skip_special && t->is_special[ids[i]] && !is_byte_token(t, ids[i]))
            continue;
        buf b = {0};
        ok = buf_add(&b, t->arena.p + t->tok_off[ids[i]], t->tok_len[ids[i]]);
        l.s[l.n++] = b;
    }
    for (size_t k = 0; ok && k < t->n_dec; k++)
        ok = run_decoder(t, &t->dec[k], &l);
    buf o = {0};
    ok = ok && buf_add(&o, "", 0);
    for (size_t i = 0; ok && i < l.n; i++)
        ok = buf_add(&o, l.s[i].p, l.s[i].n);
    strs_free(&l);
    if (!ok) {
        free(o.p);
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory decoding %zu ids", n);
    }
    *text = o.p;
    *len = o.n;
    return ST_OK;
}

/* ---- files ------------------------------------------------------------------------------ */

static bool is_dir(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}

static bool exists(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0;
}

/* GPT-2's vocab.json and merges.txt: byte-level BPE with GPT-2's regex,
 * <|endoftext|> special when the vocabulary has it. */
static st_status load_vocab_merges(const char *vocab_path, const char *merges_path,
                                   st_tokenizer **out)
{
    char *vtext = NULL, *mtext = NULL;
    size_t vlen = 0, mlen = 0;
    st_status s = st_read_text_file(vocab_path, "tokenizer vocabulary", &vtext, &vlen);
    if (s != ST_OK)
        return s;
    if ((s = st_read_text_file(merges_path, "tokenizer merges", &mtext, &mlen)) != ST_OK) {
        free(vtext);
        return s;
    }
    json_error_t jerr;
    json_t *vocab = json_loadb(vtext, vlen, 0, &jerr);
    json_t *merges = json_array();
    for (char *line = mtext, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        size_t n = strlen(line);
        if (n && line[n - 1] == '\r')
            line[--n] = '\0';
        if (n == 0 || (line == mtext && strncmp(line, "#version", 8) == 0))
            continue;
        json_array_append_new(merges, json_string(line));
    }
    json_t *added = json_array();
    if (vocab && json_object_get(vocab, "<|endoftext|>"))
        json_array_append_new(added, json_pack("{s:O, s:s, s:b}", "id",
                                               json_object_get(vocab, "<|endoftext|>"), "content",
                                               "<|endoftext|>", "special", 1));
    json_t *root = vocab ? json_pack("{s:{s:s, s:O, s:O}, s:o, s:{s:s, s:b, s:b}, s:{s:s}}",
                                     "model", "type", "BPE", "vocab", vocab, "merges", merges,
                                     "added_tokens", added, "pre_tokenizer", "type", "ByteLevel",
                                     "add_prefix_space", 0, "use_regex", 1, "decoder", "type",
                                     "ByteLevel")
                         : NULL;
    char *text = root ? json_dumps(root, JSON_COMPACT) : NULL;
    if (!vocab)
        s = st_error(ST_ERR_FORMAT, "%s: not valid JSON (line %d): %s", vocab_path, jerr.line,
                     jerr.text);
    else if (!text)
        s = st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    else
        s = st_tokenizer_parse(text, strlen(text), vocab_path, out);
    free(text);
    json_decref(root);
    json_decref(vocab);
    json_decref(merges);
    if (!root)
        json_decref(added);
    free(vtext);
    free(mtext);
    return s;
}

/* bos_token and eos_token of tokenizer_config.json in dir, when there. */
static void read_config(st_tokenizer *t, const char *dir)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    if (!exists(path))
        return;
    json_error_t jerr;
    json_t *c = json_load_file(path, 0, &jerr);
    if (!c)
        return;
    int32_t b = special_id(t, json_object_get(c, "bos_token"));
    int32_t e = special_id(t, json_object_get(c, "eos_token"));
    if (b >= 0)
        t->bos = b;
    if (e >= 0)
        t->eos = e;
    json_decref(c);
}

/* The files t was made from and their checksum, with the BOS and EOS that
 * tokenizer_config.json may have changed. */
static st_status note_files(st_tokenizer *t, const char *file, const char *merges, bool pair,
                            const char *dir)
{
    char conf[4200];
    snprintf(conf, sizeof conf, "%s/tokenizer_config.json", dir);
    size_t n = 0;
    const char *names[3] = {file, NULL, NULL};
    n = 1;
    t->pair = pair;
    if (pair)
        names[n++] = merges;
    if (exists(conf))
        names[n++] = conf;
    st_sum64 sum;
    st_sum64_init(&sum);
    for (size_t i = 0; i < n; i++) {
        char *text = NULL;
        size_t len = 0;
        st_status s = st_read_text_file(names[i], "tokenizer", &text, &len);
        if (s != ST_OK)
            return s;
        st_sum64_add(&sum, text, len);
        free(text);
        if (!(t->files[i] = strdup(names[i])))
            return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    }
    int32_t be[2] = {t->bos, t->eos};
    st_sum64_add(&sum, be, sizeof be);
    t->sum = st_sum64_final(&sum);
    return ST_OK;
}

st_status st_tokenizer_load(const char *path, st_tokenizer **out)
{
    *out = NULL;
    char dir[4096], file[4200], merges[4200];
    if (is_dir(path)) {
        snprintf(dir, sizeof dir, "%s", path);
        snprintf(file, sizeof file, "%s/tokenizer.json", path);
        if (!exists(file)) {
            snprintf(file, sizeof file, "%s/vocab.json", path);
            snprintf(merges, sizeof merges, "%s/merges.txt", path);
            if (!exists(file) || !exists(merges))
                return st_error(ST_ERR_NOT_FOUND,
                                "'%s' has no tokenizer.json (nor vocab.json and merges.txt)", path);
        }
    } else {
        snprintf(file, sizeof file, "%s", path);
        snprintf(dir, sizeof dir, "%s", path);
        char *slash = strrchr(dir, '/');
        if (slash)
            *slash = '\0';
        else
            snprintf(dir, sizeof dir, ".");
        snprintf(merges, sizeof merges, "%s/merges.txt", dir);
    }
    /* GPT-2's pair is a vocab.json of token -> id beside merges.txt; a
     * tokenizer.json by any name (my-vocab.json) has a "model" and is read
     * as one: the file's content decides, not the end of its name. */
    size_t fl = strlen(file);
    char *text = NULL;
    size_t len = 0;
    st_status s = st_read_text_file(file, "tokenizer", &text, &len);
    if (s != ST_OK)
        return s;
    bool pair = false;
    if (fl >= 10 && strcmp(file + fl - 10, "vocab.json") == 0) {
        json_t *j = json_loadb(text, len, 0, NULL);
        pair = json_is_object(j) && !json_object_get(j, "model");
        json_decref(j);
    }
    if (pair)
        s = load_vocab_merges(file, merges, out);
    else
        s = st_tokenizer_parse(text, len, file, out);
    free(text);
    if (s == ST_OK)
        read_config(*out, dir);
    if (s == ST_OK)
        s = note_files(*out, file, merges, pair, dir);
    if (s != ST_OK && *out) {
        st_tokenizer_free(*out);
        *out = NULL;
    }
    return s;
}
