/*
 * tokenizer_files.c - which tokenizer a command uses, and the copy a
 * training run keeps beside its checkpoints.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/cli.h"
#include "core/atomic.h"
#include "core/file.h"

/* A tokenizer the reader does not support is bad input (exit 2), like a bad file. */
static st_status load(const char *path, st_tokenizer **out)
{
    st_status s = st_tokenizer_load(path, out);
    if (s == ST_ERR_UNSUPPORTED) {
        char why[4096];
        snprintf(why, sizeof why, "%s", st_last_error());
        s = st_error(ST_ERR_INVALID, "%s", why);
    }
    return s;
}

st_status cli_open_tokenizer(const char *dir, const char *flag, st_tokenizer **out)
{
    *out = NULL;
    if (flag)
        return load(flag, out);
    if (!dir)
        return ST_OK;
    char path[4200];
    struct stat sb;
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    bool has = stat(path, &sb) == 0;
    snprintf(path, sizeof path, "%s/vocab.json", dir);
    has = has || stat(path, &sb) == 0;
    return has ? load(dir, out) : ST_OK;
}

st_status cli_copy_tokenizer(const st_tokenizer *t, const char *dir)
{
    st_status s = ST_OK;
    for (size_t i = 0; s == ST_OK && st_tokenizer_file(t, i); i++) {
        /* Under the names a model folder's files have, whatever they were
         * called where they came from (gpt2-vocab.json). */
        const char *from = st_tokenizer_file(t, i), *name = st_tokenizer_file_role(t, i);
        char to[4200];
        snprintf(to, sizeof to, "%s/%s", dir, name);
        char *text = NULL;
        size_t len = 0;
        if ((s = st_read_text_file(from, "tokenizer", &text, &len)) != ST_OK)
            break;
        char *have = NULL;
        size_t have_len = 0;
        struct stat sb;
        bool same = stat(to, &sb) == 0 &&
                    st_read_text_file(to, "tokenizer", &have, &have_len) == ST_OK &&
                    have_len == len && memcmp(have, text, len) == 0;
        free(have);
        if (!same)
            s = st_write_file_atomic(to, text, len, NULL);
        free(text);
    }
    return s;
}

void cli_note_cut_examples(const char *cmd, const st_dataset *ds, long T)
{
    size_t longest = 0, cut = st_dataset_longer_than(ds, (size_t)T + 1, &longest);
    if (cut)
        fprintf(stderr,
                "strata %s: note: %zu of the %zu examples have more than --seq + 1 = %ld "
                "tokens and are cut there (the longest has %zu): a larger --seq keeps them "
                "whole\n",
                cmd, cut, st_dataset_examples(ds, ST_ALL), T + 1, longest);
}

void cli_note_packing(FILE *out, st_dataset *ds, bool pack, long T)
{
    if (!st_dataset_examples(ds, ST_ALL))
        return;
    st_dataset_pack(ds, pack);
    double packed = st_dataset_fill(ds, ST_ALL, (int)T, true);
    double padded = st_dataset_fill(ds, ST_ALL, (int)T, false);
    if (pack)
        fprintf(out, "rows: packed, whole examples one after the other, each attending only itself: "
               "%.0f%% of the positions hold tokens (%.0f%% with --pack off)\n",
               100 * packed, 100 * padded);
    else
        fprintf(out, "rows: one example each, padded: %.0f%% of the positions hold tokens (%.0f%% "
               "with --pack on)\n",
               100 * padded, 100 * packed);
}

int cli_weights_dtype(const char *name)
{
    int d = st_dtype_parse(name);
    return d == ST_F32 || d == ST_BF16 || d == ST_F16 ? d : -1;
}
