/* options.c - error reporting and device opening shared by the commands. */
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"

static int rank_of_process = -1;

void cli_set_rank(int rank)
{
    rank_of_process = rank;
}

int cli_rank(void)
{
    return rank_of_process < 0 ? 0 : rank_of_process;
}

static bool failed_together;

void cli_set_failed_together(void)
{
    failed_together = true;
}

bool cli_failed_together(void)
{
    return failed_together;
}

int cli_fail(st_status s)
{
    if (rank_of_process >= 0)
        fprintf(stderr, "strata: rank %d: error: %s\n", rank_of_process,
                st_last_error()[0] ? st_last_error() : st_status_text(s));
    else
        fprintf(stderr, "strata: error: %s\n",
                st_last_error()[0] ? st_last_error() : st_status_text(s));
    switch (s) {
    case ST_ERR_INVALID:
    case ST_ERR_NOT_FOUND:
    case ST_ERR_NO_DEVICE:
    case ST_ERR_FORMAT:
    case ST_ERR_BUSY: /* another run's folder: choose another */
        return CLI_USAGE;
    default:
        return CLI_FAILED;
    }
}

/* Edits (insert, delete, replace) from a to b, for "did you mean". */
static size_t edit_distance(const char *a, const char *b)
{
    size_t n = strlen(b), row[64];
    if (n >= 64 || strlen(a) >= 64)
        return 64;
    for (size_t j = 0; j <= n; j++)
        row[j] = j;
    for (size_t i = 1; a[i - 1]; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= n; j++) {
            size_t up = row[j];
            size_t best = diag + (a[i - 1] != b[j - 1]);
            if (row[j] + 1 < best)
                best = row[j] + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[n];
}

const char *cli_nearest(const char *word, const char *const *names, size_t n)
{
    const char *best = NULL;
    size_t best_d = (strlen(word) + 2) / 3 + 1; /* at most about a third of it wrong */
    for (size_t i = 0; i < n; i++) {
        size_t d = edit_distance(word, names[i]);
        if (d < best_d) {
            best_d = d;
            best = names[i];
        }
    }
    return best;
}

int cli_unknown_option(const char *cmd, const char *arg, const struct option *opts)
{
    const char *names[128];
    size_t n = 0;
    for (; opts[n].name && n < 128; n++)
        names[n] = opts[n].name;
    const char *word = arg;
    while (*word == '-')
        word++;
    char head[64];
    snprintf(head, sizeof head, "%.*s", (int)strcspn(word, "="), word);
    const char *near = *head ? cli_nearest(head, names, n) : NULL;
    if (near)
        return cli_usage_error(cmd, "unknown option %s (did you mean --%s?)", arg, near);
    return cli_usage_error(cmd, "unknown option %s", arg);
}

int cli_usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "strata %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n(see `strata %s --help`)\n", cmd);
    va_end(ap);
    return CLI_USAGE;
}

st_status cli_devices_get(const char *flag, bool open, cli_devices *out)
{
    memset(out, 0, sizeof *out);
    if (flag && !*flag)
        return st_error(ST_ERR_INVALID,
                        "--devices is empty: give all, gpu, cpu, accelerator, indices such as "
                        "0,2 or 0-3, or part of a device name (`strata devices` lists them)");
    st_status s = st_device_list_create(&out->list);
    if (s != ST_OK)
        return s;
    s = st_device_list_select(out->list, st_device_spec_resolve(flag), out->index,
                              ST_MAX_DEVICES, &out->n);
    if (s != ST_OK || !open)
        return s;
    for (size_t i = 0; i < out->n; i++) {
        s = st_device_open(out->list, out->index[i], &out->dev[i]);
        if (s != ST_OK)
            return s;
    }
    return ST_OK;
}

void cli_devices_put(cli_devices *d)
{
    for (size_t i = 0; i < d->n; i++)
        st_device_close(d->dev[i]);
    st_device_list_destroy(d->list);
    memset(d, 0, sizeof *d);
}

struct cli_table {
    size_t cols, rows, cap;
    char **cells; /* rows * cols */
};

cli_table *cli_table_new(size_t columns)
{
    cli_table *t = calloc(1, sizeof *t);
    if (t)
        t->cols = columns;
    return t;
}

void cli_table_add(cli_table *t, const char *const *cells)
{
    if (!t)
        return;
    if (t->rows == t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 16;
        char **c = realloc(t->cells, cap * t->cols * sizeof *c);
        if (!c)
            return;
        t->cells = c;
        t->cap = cap;
    }
    for (size_t j = 0; j < t->cols; j++)
        t->cells[t->rows * t->cols + j] = strdup(cells[j] ? cells[j] : "");
    t->rows++;
}

void cli_table_print(const cli_table *t, FILE *f)
{
    if (!t)
        return;
    size_t width[32] = {0};
    for (size_t i = 0; i < t->rows; i++)
        for (size_t j = 0; j < t->cols && j < 32; j++) {
            const char *c = t->cells[i * t->cols + j];
            size_t w = c ? strlen(c) : 0;
            if (w > width[j])
                width[j] = w;
        }
    for (size_t i = 0; i < t->rows; i++) {
        for (size_t j = 0; j < t->cols && j < 32; j++) {
            const char *c = t->cells[i * t->cols + j];
            if (!c)
                c = "";
            if (j + 1 == t->cols)
                fputs(c, f);
            else
                fprintf(f, "%-*s  ", (int)width[j], c);
        }
        fputc('\n', f);
    }
}

void cli_table_free(cli_table *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->rows * t->cols; i++)
        free(t->cells[i]);
    free(t->cells);
    free(t);
}

/* What the last parse would have accepted, for the message of a bad value. */
static _Thread_local char expected[128];

const char *cli_expected(void)
{
    return expected;
}

bool cli_parse_long(const char *s, long lo, long hi, long *out)
{
    snprintf(expected, sizeof expected, "an integer from %ld to %ld", lo, hi);
    char *end = NULL;
    long v = strtol(s, &end, 10);
    if (!*s || *end || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

bool cli_parse_double(const char *s, double lo, double hi, double *out)
{
    snprintf(expected, sizeof expected, "a number from %g to %g", lo, hi);
    char *end = NULL;
    double v = strtod(s, &end);
    if (!*s || *end || !(v >= lo && v <= hi))
        return false;
    *out = v;
    return true;
}

bool cli_parse_float(const char *s, double lo, double hi, float *out)
{
    double v = 0;
    if (!cli_parse_double(s, lo, hi, &v))
        return false;
    *out = (float)v;
    return true;
}

void cli_table_print_csv(const cli_table *t, FILE *f)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->rows; i++) {
        for (size_t j = 0; j < t->cols; j++) {
            const char *c = t->cells[i * t->cols + j];
            if (!c)
                c = "";
            if (j)
                fputc(',', f);
            if (strpbrk(c, ",\"\n")) { /* quoted, quotes doubled */
                fputc('"', f);
                for (; *c; c++) {
                    if (*c == '"')
                        fputc('"', f);
                    fputc(*c, f);
                }
                fputc('"', f);
            } else {
                fputs(c, f);
            }
        }
        fputc('\n', f);
    }
}
