/*
 * cmd_tokenize.c - `strata tokenize`: text to token ids with a Hugging Face
 * tokenizer (strata/tokenizer.h), or their count, or ids back to text.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/cli.h"
#include "core/clock.h"
#include "strata/data.h"
#include "strata/progress.h"
#include "strata/tokenizer.h"

static void help(void)
{
    printf("usage: strata tokenize --tokenizer PATH [--ids | --count | --decode | --out FILE]\n"
           "                       [FILE...]\n"
           "\n"
           "Tokenizes each FILE (default: standard input) with a Hugging Face tokenizer:\n"
           "a tokenizer.json, a model folder holding one, or GPT-2's vocab.json (with\n"
           "merges.txt beside it). Byte-level BPE (GPT-2, Llama 3, Qwen2, SmolLM) and\n"
           "SentencePiece-style BPE with byte fallback (Llama 2, TinyLlama, Mistral).\n"
           "\n"
           "  --tokenizer PATH    the tokenizer (required)\n"
           "  --ids               print the ids, space-separated, a line per file (default)\n"
           "  --count             print the number of tokens and bytes per file, and the rate\n"
           "  --decode            read ids (whitespace-separated) and print their text\n"
           "  --out FILE          write the ids of all the files, one after the other, as a\n"
           "                      token file for training: llm.c's format (a 1 KiB header,\n"
           "                      then uint16 ids, or uint32 above 65,535)\n"
           "  --template          add the tokenizer's special tokens around the text (BOS)\n"
           "  -h, --help          this text\n"
           "\n"
           "Exit status: 0 done; 2 bad options, files or tokenizer.\n");
}

static st_status read_all(FILE *f, const char *name, char **out, size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *p = malloc(cap);
    while (p) {
        size_t got = fread(p + n, 1, cap - n, f);
        n += got;
        if (n < cap)
            break;
        char *q = realloc(p, cap *= 2);
        if (!q) {
            free(p);
            p = NULL;
        } else {
            p = q;
        }
    }
    if (!p)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory reading %s", name);
    if (ferror(f)) {
        free(p);
        return st_error(ST_ERR_IO, "cannot read %s", name);
    }
    *out = p;
    *len = n;
    return ST_OK;
}

/* The ids of every file, for --out, and the progress over all their bytes. */
typedef struct collected {
    int32_t *ids;
    size_t n, cap;
    st_progress pr;
    uint64_t base; /* bytes of the files before this one */
} collected;

static void on_progress(void *ctx, size_t done, size_t total)
{
    (void)total;
    collected *all = ctx;
    st_progress_update(&all->pr, all->base + done);
}

static st_status one(st_tokenizer *t, const char *name, int mode, bool templ, collected *all)
{
    FILE *f = strcmp(name, "-") == 0 ? stdin : fopen(name, "rb");
    if (!f)
        return st_error(ST_ERR_NOT_FOUND, "cannot open '%s'", name);
    char *text = NULL;
    size_t len = 0;
    st_status s = read_all(f, name, &text, &len);
    if (f != stdin)
        fclose(f);
    if (s != ST_OK)
        return s;
    if (mode == 2) { /* ids to text */
        int32_t *ids = NULL;
        size_t n = 0, cap = 0;
        char *p, *end;
        char *buf = malloc(len + 1);
        if (!buf) {
            free(text);
            return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
        }
        memcpy(buf, text, len);
        buf[len] = '\0';
        p = buf;
        /* Ids separated by white space or commas; anything else, or an id
         * outside the vocabulary, is refused by position (it was read as 0,
         * or ended the list, silently). */
        size_t vocab = st_tokenizer_vocab_size(t);
        for (;;) {
            p += strspn(p, " \t\r\n\v\f,");
            if (!*p)
                break;
            errno = 0;
            unsigned long long v = (*p >= '0' && *p <= '9') ? strtoull(p, &end, 10) : 0;
            size_t word = strcspn(p, " \t\r\n\v\f,");
            if (!(*p >= '0' && *p <= '9') || errno != 0 || (size_t)(end - p) != word ||
                v >= vocab) {
                s = st_error(ST_ERR_INVALID,
                             "%s: '%.*s' (item %zu) is not a token id: give decimal ids from 0 "
                             "to %zu (the tokenizer's vocabulary), separated by spaces or "
                             "commas",
                             name, (int)(word < 40 ? word : 40), p, n + 1, vocab - 1);
                break;
            }
            if (n == cap) {
                cap = cap ? 2 * cap : 1024;
                int32_t *q = realloc(ids, cap * sizeof *q);
                if (!q) {
                    s = st_error(ST_ERR_HOST_MEMORY, "out of host memory");
                    break;
                }
                ids = q;
            }
            ids[n++] = (int32_t)v;
            p = end;
        }
        char *out = NULL;
        size_t olen = 0;
        if (s == ST_OK)
            s = st_tokenizer_decode(t, ids, n, false, &out, &olen);
        if (s == ST_OK)
            fwrite(out, 1, olen, stdout);
        free(out);
        free(ids);
        free(buf);
        free(text);
        return s;
    }
    if (all) {
        st_tokenizer_on_progress(t, on_progress, all);
        s = st_tokenizer_encode(t, text, len, templ, &all->ids, &all->n, &all->cap);
        st_tokenizer_on_progress(t, NULL, NULL);
        all->base += len;
        st_progress_update(&all->pr, all->base);
        free(text);
        return s;
    }
    int32_t *ids = NULL;
    size_t n = 0, cap = 0;
    double t0 = st_now_s();
    s = st_tokenizer_encode(t, text, len, templ, &ids, &n, &cap);
    double secs = st_now_s() - t0;
    if (s == ST_OK && mode == 1) {
        printf("%s: %zu tokens, %zu bytes (%.2f bytes per token) in %.3f s, %.2f MB/s\n", name, n,
               len, n ? (double)len / (double)n : 0.0, secs, secs > 0 ? len / secs / 1e6 : 0.0);
    } else if (s == ST_OK) {
        for (size_t i = 0; i < n; i++)
            printf(i ? " %d" : "%d", ids[i]);
        printf("\n");
    }
    free(ids);
    free(text);
    return s;
}

int cmd_tokenize(int argc, char **argv)
{
    static const struct option opts[] = {
        {"tokenizer", required_argument, NULL, 't'}, {"ids", no_argument, NULL, 'i'},
        {"count", no_argument, NULL, 'c'},           {"decode", no_argument, NULL, 'd'},
        {"template", no_argument, NULL, 'T'},        {"help", no_argument, NULL, 'h'},
        {"out", required_argument, NULL, 'o'},       {NULL, 0, NULL, 0}};
    const char *path = NULL, *out = NULL;
    int mode = 0, c;
    bool templ = false;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case 't': path = optarg; break;
        case 'i': mode = 0; break;
        case 'c': mode = 1; break;
        case 'd': mode = 2; break;
        case 'T': templ = true; break;
        case 'o': out = optarg; break;
        case 'h': help(); return CLI_OK;
        case ':': return cli_usage_error("tokenize", "option %s needs a value", argv[optind - 1]);
        default: return cli_unknown_option("tokenize", argv[optind - 1], opts);
        }
    }
    if (!path)
        return cli_usage_error("tokenize", "say which tokenizer: --tokenizer PATH");
    st_tokenizer *t = NULL;
    st_status s = st_tokenizer_load(path, &t);
    if (s != ST_OK) {
        int code = cli_fail(s);
        return s == ST_ERR_UNSUPPORTED ? CLI_USAGE : code; /* a tokenizer file is input */
    }
    if (out && mode == 2) {
        st_tokenizer_free(t);
        return cli_usage_error("tokenize", "--out writes ids: it does not go with --decode");
    }
    collected all = {0};
    int n_files = argc - optind;
    if (out) {
        /* Progress in bytes over every file (standard input: its size unknown). */
        uint64_t total = 0;
        struct stat sb;
        for (int i = optind; i < argc; i++)
            if (stat(argv[i], &sb) == 0)
                total += (uint64_t)sb.st_size;
        st_progress_begin(&all.pr, total, "tokenizing into %s: bytes", out);
    }
    if (optind == argc)
        s = one(t, "-", mode, templ, out ? &all : NULL);
    for (int i = optind; s == ST_OK && i < argc; i++)
        s = one(t, argv[i], mode, templ, out ? &all : NULL);
    if (out) {
        st_progress_end(&all.pr);
        if (s == ST_OK && (s = st_token_file_write(out, all.ids, all.n)) == ST_OK)
            printf("%s: %zu tokens from %d file%s (vocabulary %zu)\n", out, all.n,
                   n_files ? n_files : 1, n_files == 1 ? "" : "s", st_tokenizer_vocab_size(t));
    }
    free(all.ids);
    st_tokenizer_free(t);
    return s == ST_OK ? CLI_OK : cli_fail(s);
}
