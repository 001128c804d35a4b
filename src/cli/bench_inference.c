/*
 * bench_inference.c - `strata bench --inference`: what serving a model
 * gives on 1, 2, 4, ... of the chosen devices, as llama-bench's pp/tg
 * table does: reading a prompt (tok/s, and the time to the first token),
 * and generating with 1, 8 and 32 sequences at once (total tok/s, the
 * sequences streamed through the stages by st_infer_run), each on an
 * inference session (strata/infer.h) made once per device count.
 *
 * Prompt and generated tokens are random ids, sampling greedy without an
 * EOS, so every sequence runs its full length. Each figure is the median
 * of the runs after one warm-up run.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/bench.h"
#include "core/clock.h"
#include "strata/infer.h"

enum { MAX_CONC = 8 };

typedef struct inf_row {
    size_t devices, stages, replicas;
    double pp_tok_s, ttft_ms;
    double tg_tok_s[MAX_CONC];
} inf_row;

static int by_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void random_ids(int32_t *ids, size_t n, int V, uint64_t *r)
{
    for (size_t i = 0; i < n; i++) {
        *r = *r * 6364136223846793005ull + 1442695040888963407ull;
        ids[i] = (int32_t)((*r >> 33) % (uint64_t)V);
    }
}

/* Adds c sequences (prompts of `plen` random ids), runs them to their end,
 * and gives the seconds from the first step to the first token of the
 * last of them (the prompts read) and from then to the end. */
static st_status run_seqs(st_infer *in, int c, long plen, long gen, uint64_t *r, double *t_first,
                          double *t_rest)
{
    int V = st_infer_config(in)->vocab_size;
    int32_t *ids = malloc((size_t)plen * sizeof *ids);
    int id[64];
    if (!ids)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    st_status s = ST_OK;
    int added = 0;
    for (int i = 0; s == ST_OK && i < c; i++) {
        random_ids(ids, (size_t)plen, V, r);
        st_infer_request q = {.prompt = ids, .n_prompt = (size_t)plen, .max_tokens = gen,
                              .sampling = {.temperature = 0, .top_p = 1, .repeat_penalty = 1},
                              .eos = -1};
        if ((s = st_infer_add(in, &q, &id[i])) == ST_OK)
            added++;
    }
    free(ids);
    /* the prompts step by step until each has its first token, then the
     * rest streamed through the stages (st_infer_run) */
    double t0 = st_now_s(), t1 = 0;
    while (s == ST_OK && t1 == 0 && st_infer_active(in) > 0) {
        s = st_infer_step(in);
        bool all = true;
        st_infer_info info;
        for (int i = 0; s == ST_OK && i < added && all; i++)
            if ((s = st_infer_get(in, id[i], &info)) == ST_OK)
                all = info.n_generated > 0;
        if (all)
            t1 = st_now_s();
    }
    if (s == ST_OK)
        s = st_infer_run(in, NULL, NULL);
    double t2 = st_now_s();
    for (int i = 0; i < added; i++)
        st_infer_release(in, id[i]);
    *t_first = t1 - t0;
    *t_rest = t2 - t1;
    return s;
}

static double median(double *v, long n)
{
    qsort(v, (size_t)n, sizeof *v, by_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* One device count: a session over the first k devices, then the prompt
 * and generation runs. */
static st_status bench_one(cli_devices *all, size_t k, const bench_inference_opts *o,
                           FILE *info, inf_row *row)
{
    st_infer_options io = {.max_seqs = 1, .ctx = (int)(o->prompt + o->gen + 1),
                           .prefill = (int)o->prefill, .parallel = o->parallel,
                           .keep_all_devices = true, .quiet = true, .config = o->config,
                           .init_seed = 1, .weights_given = o->dtype >= 0,
                           .weights = o->dtype >= 0 ? (st_dtype)o->dtype : ST_F32};
    for (int j = 0; j < o->n_conc; j++)
        io.max_seqs = o->conc[j] > io.max_seqs ? o->conc[j] : io.max_seqs;
    st_infer *in = NULL;
    st_status s = st_infer_open(o->model, all->dev, k, &io, &in);
    if (s != ST_OK)
        return s;
    const st_plan *plan = st_infer_plan(in);
    row->devices = k;
    row->stages = plan->n_stages;
    row->replicas = st_plan_replicas(plan);
    cli_plan_opts po = {.parallel = o->parallel, .shape = plan->shape, .devices_explicit = true,
                        .quiet = true};
    cli_devices sub = *all;
    sub.n = k;
    cli_plan_print(plan, st_infer_desc(in), &sub, st_infer_profiles(in), &po, info);
    uint64_t r = 12345;
    long runs = o->runs;
    double *a = malloc((size_t)(runs + 1) * 2 * sizeof *a), *b = a ? a + runs + 1 : NULL;
    if (!a)
        s = st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    /* the prompt: one sequence, its first token */
    for (long i = 0; s == ST_OK && i <= runs; i++) {
        double first = 0, rest = 0;
        s = run_seqs(in, 1, o->prompt, 1, &r, &first, &rest);
        a[i] = first;
    }
    if (s == ST_OK) {
        double t = median(a + 1, runs);
        row->ttft_ms = t * 1e3;
        row->pp_tok_s = (double)o->prompt / t;
    }
    /* generation: c sequences from a one-token prompt, timed after the
     * first token of each */
    for (int j = 0; s == ST_OK && j < o->n_conc; j++) {
        for (long i = 0; s == ST_OK && i <= runs; i++) {
            double first = 0, rest = 0;
            s = run_seqs(in, o->conc[j], 1, o->gen + 1, &r, &first, &rest);
            b[i] = (double)o->conc[j] * (double)o->gen / rest;
        }
        if (s == ST_OK)
            row->tg_tok_s[j] = median(b + 1, runs);
    }
    free(a);
    st_infer_close(in);
    return s;
}

st_status bench_inference(cli_devices *devs, const bench_inference_opts *o)
{
    inf_row rows[8];
    size_t n_rows = 0;
    bool table = strcmp(o->format, "table") == 0;
    FILE *info = table ? stdout : stderr;
    fprintf(info, "model: %s | prompt %ld tokens, %ld generated per sequence, %ld run%s after a "
                  "warm-up\n\n",
            o->model_line, o->prompt, o->gen, o->runs, o->runs == 1 ? "" : "s");
    st_status s = ST_OK;
    for (size_t k = 1; s == ST_OK && k <= devs->n && n_rows < 8; k *= 2) {
        if ((s = bench_one(devs, k, o, info, &rows[n_rows])) == ST_OK)
            n_rows++;
        fprintf(info, "\n");
        fflush(info);
    }
    if (s != ST_OK)
        return s;
    if (strcmp(o->format, "json") == 0) {
        printf("[");
        for (size_t i = 0; i < n_rows; i++) {
            const inf_row *w = &rows[i];
            printf("%s\n  {\"devices\": %zu, \"stages\": %zu, \"replicas\": %zu, "
                   "\"prompt_tokens\": %ld, \"prompt_tok_per_s\": %.2f, \"ttft_ms\": %.2f, "
                   "\"generated_per_sequence\": %ld, \"generate\": [",
                   i ? "," : "", w->devices, w->stages, w->replicas, o->prompt, w->pp_tok_s,
                   w->ttft_ms, o->gen);
            for (int j = 0; j < o->n_conc; j++)
                printf("%s{\"sequences\": %d, \"tok_per_s\": %.2f}", j ? ", " : "", o->conc[j],
                       w->tg_tok_s[j]);
            printf("]}");
        }
        printf("\n]\n");
        return ST_OK;
    }
    bool csv = strcmp(o->format, "csv") == 0;
    size_t cols = 5 + (size_t)o->n_conc;
    cli_table *t = cli_table_new(cols);
    char head[16][48];
    snprintf(head[0], 48, "devices");
    snprintf(head[1], 48, "layout");
    snprintf(head[2], 48, csv ? "pp%ld_tok_per_s" : "pp%ld tok/s", o->prompt);
    snprintf(head[3], 48, csv ? "ttft_ms" : "first token ms");
    for (int j = 0; j < o->n_conc; j++)
        snprintf(head[4 + j], 48, csv ? "tg%ld_x%d_tok_per_s" : "tg%ld x%d tok/s", o->gen,
                 o->conc[j]);
    snprintf(head[4 + o->n_conc], 48, csv ? "tg_x%d_over_x1" : "x%d / x1",
             o->conc[o->n_conc - 1]);
    const char *hp[16];
    for (size_t j = 0; j < cols; j++)
        hp[j] = head[j];
    cli_table_add(t, hp);
    for (size_t i = 0; i < n_rows; i++) {
        const inf_row *w = &rows[i];
        char cell[16][48];
        const char *cp[16];
        snprintf(cell[0], 48, "%zu", w->devices);
        snprintf(cell[1], 48, "%zu x %zu stage%s", w->replicas, w->stages,
                 w->stages == 1 ? "" : "s");
        snprintf(cell[2], 48, "%.1f", w->pp_tok_s);
        snprintf(cell[3], 48, "%.1f", w->ttft_ms);
        for (int j = 0; j < o->n_conc; j++)
            snprintf(cell[4 + j], 48, "%.1f", w->tg_tok_s[j]);
        snprintf(cell[4 + o->n_conc], 48, csv ? "%.3f" : "%.2fx",
                 w->tg_tok_s[o->n_conc - 1] / w->tg_tok_s[0]);
        for (size_t j = 0; j < cols; j++)
            cp[j] = cell[j];
        cli_table_add(t, cp);
    }
    if (csv) {
        cli_table_print_csv(t, stdout);
    } else {
        printf("inference (medians of %ld runs after a warm-up; generation from a one-token "
               "prompt, all sequences at once, total tok/s):\n",
               o->runs);
        cli_table_print(t, stdout);
    }
    cli_table_free(t);
    return ST_OK;
}
