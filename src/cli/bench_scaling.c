/*
 * bench_scaling.c - `strata bench --scaling`: the 1 -> 2 -> 4 device story.
 *
 * Two workloads of one model and one global batch, each on the first 1, 2,
 * 4, ... of the chosen devices, laid out by the planner (replicas, stages or
 * both): one that fits a device, and the same model with each device's
 * memory cut below what the whole model needs even with micro-batches of one
 * sequence (by a quarter of its weights, gradients and moments; or
 * --mem-limit), so that it must be split. Per row: the layout the planner
 * chose, its predicted step against the measured one, training and
 * inference tokens/s, speedup and efficiency against the first workload on
 * one device. A Markdown table on stdout; with --out DIR also scaling.md,
 * scaling.json and scaling.svg (throughput and efficiency against devices,
 * a line per workload).
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/bench.h"
#if STRATA_HAVE_MPI
#include "mpi/mpi_run.h"
#endif
#include "core/atomic.h"

#define MAX_ROWS 16

typedef struct workload {
    const char *name;
    bench_row rows[MAX_ROWS / 2];
    size_t n;
} workload;

/* A growing text buffer. */
typedef struct text {
    char *p;
    size_t n, cap;
    bool failed;
} text;

static void add(text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add(text *t, const char *fmt, ...)
{
    if (t->failed)
        return;
    va_list ap;
    va_start(ap, fmt);
    int need = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (need < 0 || t->n + (size_t)need + 1 > t->cap) {
        size_t cap = (t->cap ? 2 * t->cap : 4096) + (size_t)(need > 0 ? need : 0);
        char *q = realloc(t->p, cap);
        if (!q) {
            t->failed = true;
            return;
        }
        t->p = q;
        t->cap = cap;
    }
    va_start(ap, fmt);
    vsnprintf(t->p + t->n, t->cap - t->n, fmt, ap);
    va_end(ap);
    t->n += (size_t)need;
}

static double tok_s(double tokens, double ms)
{
    return ms > 0 ? tokens / (ms * 1e-3) : 0;
}

static void layout_name(const bench_row *w, char *out, size_t size)
{
    snprintf(out, size, "dp:%zu,pp:%zu, %d micro-batch%s", w->replicas, w->stages,
             w->micro_batches, w->micro_batches == 1 ? "" : "es");
}

static void markdown(text *t, const workload *wl, size_t n_wl, double N, double base_train,
                     double base_fwd, long steps)
{
    add(t, "| workload | devices | layout (planner's choice) | predicted step | measured step | "
           "error | train tok/s | speedup | efficiency | inference tok/s | inference speedup "
           "|\n|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (size_t i = 0; i < n_wl; i++)
        for (size_t j = 0; j < wl[i].n; j++) {
            const bench_row *w = &wl[i].rows[j];
            if (!w->fits) {
                add(t, "| %s | %zu | does not fit | | | | | | | | |\n", wl[i].name, w->devices);
                continue;
            }
            char lay[96];
            layout_name(w, lay, sizeof lay);
            double sp = base_train / w->train_ms;
            add(t,
                "| %s | %zu | %s | %.0f ms | %.0f ms | %+.1f%% | %.0f | %.2fx | %.2f | %.0f | "
                "%.2fx |\n",
                wl[i].name, w->devices, lay, w->predicted_ms, w->train_ms,
                100.0 * (w->predicted_ms - w->train_ms) / w->train_ms, tok_s(N, w->train_ms), sp,
                sp / (double)w->devices, tok_s(N, w->fwd_ms), base_fwd / w->fwd_ms);
        }
    add(t,
        "\nMedians of %ld steps after a warm-up; speedup and efficiency (speedup / devices) "
        "against the first workload on one device.\n",
        steps);
}

static void json(text *t, const workload *wl, size_t n_wl, double N, double base_train,
                 double base_fwd, long steps, const char *model)
{
    add(t, "{\n  \"model\": \"%s\",\n  \"tokens_per_step\": %.0f,\n  \"steps\": %ld,\n  \"rows\": [",
        model, N, steps);
    bool first = true;
    for (size_t i = 0; i < n_wl; i++)
        for (size_t j = 0; j < wl[i].n; j++) {
            const bench_row *w = &wl[i].rows[j];
            add(t, "%s\n    {\"workload\": \"%s\", \"devices\": %zu, \"fits\": %s", first ? "" : ",",
                wl[i].name, w->devices, w->fits ? "true" : "false");
            first = false;
            if (w->fits)
                add(t,
                    ", \"replicas\": %zu, \"stages\": %zu, \"micro_batches\": %d, "
                    "\"predicted_ms\": %.3f, \"train_ms\": %.3f, \"train_spread\": %.4f, "
                    "\"train_tok_per_s\": %.1f, \"speedup\": %.4f, \"efficiency\": %.4f, "
                    "\"forward_ms\": %.3f, \"predicted_forward_ms\": %.3f, "
                    "\"forward_tok_per_s\": %.1f, \"forward_speedup\": %.4f",
                    w->replicas, w->stages, w->micro_batches, w->predicted_ms, w->train_ms,
                    w->train_spread, tok_s(N, w->train_ms), base_train / w->train_ms,
                    base_train / w->train_ms / (double)w->devices, w->fwd_ms,
                    w->predicted_fwd_ms, tok_s(N, w->fwd_ms), base_fwd / w->fwd_ms);
            add(t, "}");
        }
    add(t, "\n  ]\n}\n");
}

/* ---- the chart ---------------------------------------------------------------- */

static const char *const colors[] = {"#1f6fb4", "#e07b00", "#2a9d4b", "#b0306e"};

/* A panel: x = devices on a log2 axis, y from 0 to top. */
typedef struct panel {
    double x0, y0, w, h, top;
    size_t max_dev;
} panel;

static double px(const panel *p, size_t devices)
{
    if (p->max_dev <= 1)
        return p->x0 + p->w / 2;
    return p->x0 + 20 + (p->w - 40) * log2((double)devices) / log2((double)p->max_dev);
}

static double py(const panel *p, double v)
{
    return p->y0 + p->h - p->h * (v / p->top);
}

static void axes(text *t, const panel *p, const char *title, const char *fmt, int ticks)
{
    add(t, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"14\" font-weight=\"bold\">%s</text>\n", p->x0,
        p->y0 - 12, title);
    for (int i = 0; i <= ticks; i++) {
        double v = p->top * i / ticks, y = py(p, v);
        add(t,
            "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n"
            "<text x=\"%.1f\" y=\"%.1f\" font-size=\"11\" text-anchor=\"end\">",
            p->x0, y, p->x0 + p->w, y, p->x0 - 6, y + 4);
        add(t, fmt, v);
        add(t, "</text>\n");
    }
    for (size_t d = 1; d <= p->max_dev; d *= 2)
        add(t,
            "<text x=\"%.1f\" y=\"%.1f\" font-size=\"11\" text-anchor=\"middle\">%zu</text>\n",
            px(p, d), p->y0 + p->h + 16, d);
    add(t,
        "<text x=\"%.1f\" y=\"%.1f\" font-size=\"11\" text-anchor=\"middle\">devices</text>\n"
        "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" "
        "stroke=\"#888\"/>\n",
        p->x0 + p->w / 2, p->y0 + p->h + 32, p->x0, p->y0, p->w, p->h);
}

/* One line through the rows that fit; value(row) per point, labelled. */
static void series(text *t, const panel *p, const workload *w, const char *color, bool dashed,
                   double (*value)(const bench_row *, const void *), const void *ctx,
                   const char *label_fmt, const workload *other)
{
    add(t, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\"%s points=\"", color,
        dashed ? " stroke-dasharray=\"6 4\"" : "");
    for (size_t j = 0; j < w->n; j++)
        if (w->rows[j].fits)
            add(t, "%.1f,%.1f ", px(p, w->rows[j].devices), py(p, value(&w->rows[j], ctx)));
    add(t, "\"/>\n");
    for (size_t j = 0; j < w->n; j++) {
        if (!w->rows[j].fits)
            continue;
        double v = value(&w->rows[j], ctx), x = px(p, w->rows[j].devices), y = py(p, v);
        add(t, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3.5\" fill=\"%s\"/>\n", x, y, color);
        if (label_fmt) {
            /* above the point, or below when the other workload's point at
             * these devices is higher (the labels do not cover each other) */
            bool below = false;
            for (size_t q = 0; other && q < other->n; q++)
                if (other->rows[q].fits && other->rows[q].devices == w->rows[j].devices)
                    below = value(&other->rows[q], ctx) > v;
            add(t, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"11\" fill=\"%s\">", x + 6,
                below ? y + 15 : y - 6, color);
            add(t, label_fmt, v);
            add(t, "</text>\n");
        }
    }
}

typedef struct chart_ctx {
    double N, base;
} chart_ctx;

static double train_tok(const bench_row *w, const void *c)
{
    return tok_s(((const chart_ctx *)c)->N, w->train_ms);
}

static double fwd_tok(const bench_row *w, const void *c)
{
    return tok_s(((const chart_ctx *)c)->N, w->fwd_ms);
}

static double efficiency(const bench_row *w, const void *c)
{
    return ((const chart_ctx *)c)->base / w->train_ms / (double)w->devices;
}

static void svg(text *t, const workload *wl, size_t n_wl, double N, double base_train,
                const char *model)
{
    size_t max_dev = 1;
    double top = 0, etop = 1.0;
    chart_ctx c = {N, base_train};
    for (size_t i = 0; i < n_wl; i++)
        for (size_t j = 0; j < wl[i].n; j++) {
            const bench_row *w = &wl[i].rows[j];
            max_dev = w->devices > max_dev ? w->devices : max_dev;
            if (!w->fits)
                continue;
            top = fmax(top, fmax(train_tok(w, &c), fwd_tok(w, &c)));
            etop = fmax(etop, efficiency(w, &c));
        }
    /* Round axes: tokens/s in five steps of 1, 2 or 5 x 10^k; efficiency in
     * steps of 0.2 up past the highest point. */
    double want = (top > 0 ? top : 1) * 1.1 / 5, mag = pow(10, floor(log10(want))), step = mag;
    if (step < want)
        step = 2 * mag;
    if (step < want)
        step = 5 * mag;
    if (step < want)
        step = 10 * mag;
    int eticks = (int)ceil(etop * 1.1 / 0.2);
    panel a = {70, 60, 380, 260, 5 * step, max_dev},
          b = {540, 60, 300, 260, 0.2 * eticks, max_dev};
    add(t,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"880\" height=\"430\" "
        "font-family=\"sans-serif\">\n<rect width=\"880\" height=\"430\" fill=\"white\"/>\n"
        "<text x=\"440\" y=\"24\" font-size=\"15\" text-anchor=\"middle\">%s</text>\n",
        model);
    axes(t, &a, "tokens/s (solid: training, dashed: inference)", "%.0f", 5);
    axes(t, &b, "training efficiency (speedup / devices)", "%.1f", eticks);
    add(t,
        "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#888\" "
        "stroke-dasharray=\"2 3\"/>\n",
        b.x0, py(&b, 1.0), b.x0 + b.w, py(&b, 1.0));
    for (size_t i = 0; i < n_wl; i++) {
        const char *col = colors[i % 4];
        const workload *other = n_wl == 2 ? &wl[1 - i] : NULL;
        series(t, &a, &wl[i], col, false, train_tok, &c, "%.0f", other);
        series(t, &a, &wl[i], col, true, fwd_tok, &c, NULL, NULL);
        series(t, &b, &wl[i], col, false, efficiency, &c, "%.2f", other);
        char note[96] = "";
        for (size_t j = 0; j < wl[i].n; j++)
            if (!wl[i].rows[j].fits) {
                size_t len = strlen(note);
                snprintf(note + len, sizeof note - len, "%s%zu", len ? ", " : " (does not fit ",
                         wl[i].rows[j].devices);
            }
        if (note[0])
            snprintf(note + strlen(note), sizeof note - strlen(note), " device%s)",
                     strchr(note, ',') ? "s" : "");
        double ly = 380 + 20 * (double)i;
        add(t,
            "<line x1=\"70\" y1=\"%.1f\" x2=\"100\" y2=\"%.1f\" stroke=\"%s\" "
            "stroke-width=\"2\"/>\n<text x=\"108\" y=\"%.1f\" font-size=\"12\">%s%s</text>\n",
            ly, ly, col, ly + 4, wl[i].name, note);
    }
    add(t, "</svg>\n");
}

static st_status write_out(const char *dir, const char *name, const text *t)
{
    if (t->failed)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return st_write_file_atomic(path, t->p, t->n, NULL);
}

/* Under mpirun: the row of the first k ranks (the others wait). A failure
 * returns at once: the job ends, nobody waits on this rank. */
static st_status row_of_ranks(cli_devices *devs, size_t k, const bench_scaling_opts *o,
                              const cli_plan_opts *po, const int32_t *tokens,
                              const int32_t *targets, FILE *info, bench_row *row)
{
#if STRATA_HAVE_MPI
    bool inside = false;
    st_status s = st_mpi_scope((int)k, &inside);
    if (s == ST_OK && inside) {
        double n = (double)devs->n;
        if ((s = st_mpi_allsum(&n, 1)) == ST_OK)
            s = bench_ranks(devs, (size_t)n, o->desc, po, o->steps, tokens, targets, info, row);
        if (s == ST_ERR_INVALID) /* the plan's verdict, the same on every rank: no layout fits */
            row->devices = (size_t)n;
    }
    if (s != ST_OK && s != ST_ERR_INVALID)
        return s;
    st_status e = st_mpi_scope_end();
    if (!inside) /* a row of its own for the count; rank 0's are the table */
        row->devices = k;
    return e != ST_OK ? e : s;
#else
    (void)devs, (void)k, (void)o, (void)po, (void)tokens, (void)targets, (void)info, (void)row;
    return st_error(ST_ERR_UNSUPPORTED, "this strata was built without MPI");
#endif
}

static st_status scaling(cli_devices *devs, const bench_scaling_opts *o, const int32_t *tokens,
                         const int32_t *targets, FILE *info)
{
    double N = (double)o->po.shape.batch * o->po.shape.seq;
    bool ranks = o->ranks > 1;
    size_t count = ranks ? (size_t)o->ranks : devs->n;
    workload wl[2] = {{.name = "fits one device"}, {.name = "needs splitting"}};
    /* The second workload's memory: 3/4 of the model's weights, gradients and
     * two moments on each device, unless --mem-limit says. */
    char limit[1024] = "";
    st_status s = ST_OK;
    if (o->mem_limit) {
        snprintf(limit, sizeof limit, "%s", o->mem_limit);
    } else {
        /* The whole model on one device with the smallest micro-batch (one
         * sequence) needs all of this; a quarter of the weights' share less
         * leaves room for about half the model per device, not all of it. */
        st_stage_options one = {.batch = 1, .seq = o->po.shape.seq, .slots = 1,
                                .training = true};
        st_stage_sizes z;
        if ((s = st_stage_sizes_of(o->desc, &one, &z)) != ST_OK)
            return s;
        unsigned long long per = (unsigned long long)((double)z.bytes -
                                                      0.25 * 16.0 * (double)o->desc->param_numel);
        for (size_t i = 0; i < devs->n; i++) {
            size_t len = strlen(limit);
            snprintf(limit + len, sizeof limit - len, "%s%zu:%llu", i ? "," : "", devs->index[i],
                     per);
        }
    }
    for (int w = 0; s == ST_OK && w < 2; w++) {
        cli_plan_opts po = o->po;
        po.mem_limit = NULL;
        /* The devices keep the limit: the splitting workload comes last. */
        if (w == 1 && (s = cli_apply_mem_limit(limit, devs)) != ST_OK)
            break;
        fprintf(info, "== %s%s%s\n", wl[w].name, w == 1 ? ": --mem-limit " : "",
                w == 1 ? limit : "");
        for (size_t k = 1; s == ST_OK && k <= count && wl[w].n < MAX_ROWS / 2; k *= 2) {
            bench_row *row = &wl[w].rows[wl[w].n];
            memset(row, 0, sizeof *row);
            s = ranks ? row_of_ranks(devs, k, o, &po, tokens, targets, info, row)
                      : bench_k(devs, k, o->desc, &po, o->steps, tokens, targets, info, row);
            if (s == ST_ERR_INVALID && w == 1) { /* no layout fits k devices: a row says so */
                if (!ranks)
                    row->devices = k;
                row->fits = false;
                snprintf(row->why, sizeof row->why, "%s", st_last_error());
                fprintf(info, "%zu device%s: %s\n", row->devices, row->devices == 1 ? "" : "s",
                        row->why);
                s = ST_OK;
            }
            if (s == ST_OK)
                wl[w].n++;
            fprintf(info, "\n");
        }
    }
    if (s != ST_OK || o->quiet_rank) /* rank 0 has the rows */
        return s;
    if (wl[0].n == 0 || !wl[0].rows[0].fits)
        return st_error(ST_ERR_INVALID, "the model does not fit one device: no reference");
    double base_train = wl[0].rows[0].train_ms, base_fwd = wl[0].rows[0].fwd_ms;
    text md = {0}, js = {0}, sv = {0};
    add(&md, "%s\n\n", o->model_line);
    markdown(&md, wl, 2, N, base_train, base_fwd, o->steps);
    if (!md.failed)
        fwrite(md.p, 1, md.n, stdout);
    if (o->out_dir && !o->quiet_rank) {
        json(&js, wl, 2, N, base_train, base_fwd, o->steps, o->model_line);
        svg(&sv, wl, 2, N, base_train, o->model_line);
        if ((s = write_out(o->out_dir, "scaling.md", &md)) == ST_OK &&
            (s = write_out(o->out_dir, "scaling.json", &js)) == ST_OK &&
            (s = write_out(o->out_dir, "scaling.svg", &sv)) == ST_OK)
            fprintf(stderr, "wrote %s/scaling.md, scaling.json and scaling.svg\n", o->out_dir);
    } else if (md.failed) {
        s = st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    }
    free(md.p);
    free(js.p);
    free(sv.p);
    return s;
}

st_status bench_scaling(cli_devices *devs, const bench_scaling_opts *o, const int32_t *tokens,
                        const int32_t *targets)
{
    /* Under mpirun rank 0 tells the progress; the others only errors. */
    FILE *quiet = o->quiet_rank ? fopen("/dev/null", "w") : NULL;
    st_status s = scaling(devs, o, tokens, targets, quiet ? quiet : stderr);
    if (quiet)
        fclose(quiet);
    return s;
}
