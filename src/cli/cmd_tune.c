/*
 * cmd_tune.c - `strata tune`: CLBlast's tuner for the GEMM kernels of each
 * chosen device; a tuning is kept only when it makes the product faster.
 */
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli/cli.h"
#include "core/clock.h"
#include "strata/progress.h"
#include "strata/tune.h"

/* CLBlast's tuner says nothing until it ends: a thread keeps the progress
 * line's clock going meanwhile. */
typedef struct ticker {
    st_progress p;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool stop;
    pthread_t thread;
    bool running;
} ticker;

static void *tick(void *arg)
{
    ticker *t = arg;
    pthread_mutex_lock(&t->lock);
    while (!t->stop) {
        st_progress_update(&t->p, 0);
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 250000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&t->cond, &t->lock, &ts);
    }
    pthread_mutex_unlock(&t->lock);
    return NULL;
}

static void ticker_start(ticker *t, const char *what)
{
    memset(t, 0, sizeof *t);
    pthread_mutex_init(&t->lock, NULL);
    pthread_cond_init(&t->cond, NULL);
    st_progress_begin(&t->p, 0, "%s", what);
    t->running = pthread_create(&t->thread, NULL, tick, t) == 0;
}

static void ticker_stop(ticker *t)
{
    pthread_mutex_lock(&t->lock);
    t->stop = true;
    pthread_cond_signal(&t->cond);
    pthread_mutex_unlock(&t->lock);
    if (t->running)
        pthread_join(t->thread, NULL);
    st_progress_end(&t->p);
    pthread_cond_destroy(&t->cond);
    pthread_mutex_destroy(&t->lock);
}

static void help(void)
{
    printf("usage: strata tune [--devices CHOICE] [--budget SECONDS] [--size N] [--reset]\n"
           "                   [--fraction F]\n"
           "\n"
           "Searches for faster CLBlast GEMM parameters on each chosen device, within a\n"
           "time budget: it starts from what the device uses now (its saved tuning,\n"
           "Strata's known-good values for its family, or CLBlast's), changes one or\n"
           "two parameters at a time, keeps a change that makes the products faster and\n"
           "gives the same results, and stops at the budget with the best found so\n"
           "far (a progress line says where it is). Two kernels: Xgemm (large\n"
           "products, timed at N^3 and N/2 x 4N x N) and XgemmDirect (small ones, 64^3\n"
           "and 128 x 128 x 64). A result is saved (under the cache folder's tuning/)\n"
           "only when it is at least 2%% faster, and every later strata run on that\n"
           "device applies it.\n"
           "\n"
           "  --devices CHOICE    which devices (default $STRATA_DEVICES, else all)\n"
           "  --budget SECONDS    time for the search per device (default 120; on a CPU\n"
           "                      each candidate compiles for a second or more)\n"
           "  --size N            the large product's size (default 512)\n"
           "  --fraction F        instead of the search, CLBlast's own tuner on this\n"
           "                      share of each space (0.001 takes minutes on a CPU and\n"
           "                      reports nothing until it ends)\n"
           "  --reset             forget the saved tunings of the chosen devices\n"
           "  -h, --help          this text\n"
           "\n"
           "Training results change in their last bits with a new tuning: compare runs\n"
           "bitwise only under the same tuning.\n");
}

/* GFLOPS of an m x n x k product: the best of three after one warm-up. */
static st_status gemm_rate(st_device *dev, size_t m, size_t n, size_t k, double *out)
{
    st_tensor *a = NULL, *b = NULL, *c = NULL;
    size_t sa[2] = {m, k}, sb[2] = {k, n}, sc[2] = {m, n};
    st_status s;
    double best = 1e30;
    if ((s = st_tensor_create(dev, ST_F32, 2, sa, "tune A", &a)) == ST_OK &&
        (s = st_tensor_create(dev, ST_F32, 2, sb, "tune B", &b)) == ST_OK &&
        (s = st_tensor_create(dev, ST_F32, 2, sc, "tune C", &c)) == ST_OK)
        for (int i = 0; s == ST_OK && i < 4; i++) {
            double t0 = st_now_s();
            if ((s = st_matmul(false, false, 1.0f, a, b, 0.0f, c)) == ST_OK &&
                (s = st_device_finish(dev)) == ST_OK && i > 0 && st_now_s() - t0 < best)
                best = st_now_s() - t0;
        }
    if (s == ST_OK)
        *out = 2.0 * (double)m * n * k / best / 1e9;
    st_tensor_destroy(a);
    st_tensor_destroy(b);
    st_tensor_destroy(c);
    return s;
}

/* The budgeted search (st_tune_search) for both kernels of one device. */
static st_status search(st_device *dev, size_t size, double budget)
{
    const char *label = st_device_label(dev);
    size_t N = size;
    struct {
        const char *kernel;
        double share;
        st_tune_shape shapes[2];
    } jobs[2] = {{"Xgemm", 2.0 / 3.0, {{N, N, N}, {N / 2, 4 * N, N}}},
                 {"XgemmDirect", 1.0 / 3.0, {{64, 64, 64}, {128, 128, 64}}}};
    st_tuning keep[4];
    size_t n_keep = 0;
    st_status s = st_tuning_read(dev, keep, 2, &n_keep);
    printf("%s: GEMM parameters from %s; searching for %.0f s\n", label,
           st_tuning_source_name(st_device_tuning_source(dev)), budget);
    fflush(stdout);
    bool changed = false;
    for (int j = 0; s == ST_OK && j < 2; j++) {
        st_tuning start;
        st_tune_result r;
        double t0 = st_now_s();
        if ((s = st_tuning_current(dev, jobs[j].kernel, &start)) != ST_OK ||
            (s = st_tune_search(dev, &start, jobs[j].shapes, 2, budget * jobs[j].share,
                                (uint64_t)time(NULL), &r)) != ST_OK)
            break;
        bool better = r.best_gflops > r.start_gflops * 1.02;
        const st_tune_shape *a = &jobs[j].shapes[0], *b = &jobs[j].shapes[1];
        printf("%s: %s over %zux%zux%zu and %zux%zux%zu: %.1f GFLOPS before, %.1f after "
               "(%.2fx), %d candidates (%d refused or wrong) in %.0f s: %s\n",
               label, jobs[j].kernel, a->m, a->n, a->k, b->m, b->n, b->k, r.start_gflops,
               r.best_gflops, r.best_gflops / r.start_gflops, r.tried, r.failed,
               st_now_s() - t0, better ? "kept" : "not better, not kept");
        if (!better) {
            s = st_tuning_apply(dev, &start); /* the next kernel is timed as the device runs */
            continue;
        }
        size_t k = 0;
        while (k < n_keep && strcmp(keep[k].kernel, r.best.kernel) != 0)
            k++;
        keep[k] = r.best;
        if (k == n_keep)
            n_keep++;
        changed = true;
    }
    if (s == ST_OK && changed && (s = st_tuning_save(dev, keep, n_keep)) == ST_OK) {
        char path[4200];
        st_tuning_path(dev, path, sizeof path);
        printf("%s: saved to %s (every later run on this device uses it)\n", label, path);
    }
    return s;
}

int cmd_tune(int argc, char **argv)
{
    static const struct option opts[] = {{"devices", required_argument, NULL, 'd'},
                                         {"fraction", required_argument, NULL, 'f'},
                                         {"size", required_argument, NULL, 'n'},
                                         {"budget", required_argument, NULL, 'b'},
                                         {"reset", no_argument, NULL, 'r'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *devices = NULL;
    float fraction = 0;
    long size = 512;
    double budget = 120;
    bool reset = false, budget_given = false;
    int c, li;
    optind = 1;
    opterr = 0;
    while ((li = -1, c = getopt_long(argc, argv, ":h", opts, &li)) != -1) {
        bool ok = true;
        switch (c) {
        case 'd': devices = optarg; break;
        case 'f': ok = cli_parse_float(optarg, 1e-6, 1.0, &fraction); break;
        case 'n': ok = cli_parse_long(optarg, 16, 8192, &size); break;
        case 'b':
            ok = cli_parse_double(optarg, 1, 86400, &budget);
            budget_given = true;
            break;
        case 'r': reset = true; break;
        case 'h': help(); return CLI_OK;
        case ':': return cli_usage_error("tune", "option %s needs a value", argv[optind - 1]);
        default: return cli_unknown_option("tune", argv[optind - 1], opts);
        }
        if (!ok)
            return cli_usage_error("tune", "bad value '%s' for --%s: %s", optarg, opts[li].name,
                                   cli_expected());
    }
    if (optind < argc)
        return cli_usage_error("tune", "unexpected argument '%s'", argv[optind]);
    if (budget_given && fraction > 0)
        return cli_usage_error("tune", "--budget (the search) and --fraction (CLBlast's tuner) "
                                       "are two ways: give one");
    if (!reset && !st_tune_available())
        return cli_fail(st_tune_kernel(NULL, "Xgemm", 1, 1, 1, 0, NULL));
    cli_devices devs;
    st_status s = cli_devices_get(devices, true, &devs);
    if (s != ST_OK)
        return cli_fail(s);
    for (size_t i = 0; s == ST_OK && i < devs.n; i++) {
        st_device *dev = devs.dev[i];
        const char *label = st_device_label(dev);
        if (reset) {
            if ((s = st_tuning_save(dev, NULL, 0)) == ST_OK)
                printf("%s: saved tuning removed (CLBlast's defaults from the next run on)\n",
                       label);
            continue;
        }
        if (fraction <= 0) {
            if ((s = search(dev, (size_t)size, budget)) != ST_OK)
                break;
            continue;
        }
        struct {
            const char *kernel;
            size_t n;
        } jobs[2] = {{"Xgemm", (size_t)size}, {"XgemmDirect", (size_t)size / 2}};
        /* What is saved stays unless this run finds better. */
        st_tuning keep[4];
        size_t n_keep = 0;
        if ((s = st_tuning_read(dev, keep, 2, &n_keep)) != ST_OK)
            break;
        for (int j = 0; s == ST_OK && j < 2; j++) {
            size_t n = jobs[j].n;
            double before = 0, after = 0, t0;
            st_tuning t;
            if ((s = gemm_rate(dev, n, n, n, &before)) != ST_OK)
                break;
            printf("%s: tuning %s at %zu^3 (%.2f%% of the search space)...\n", label,
                   jobs[j].kernel, n, 100.0 * fraction);
            fflush(stdout);
            t0 = st_now_s();
            char what[128];
            snprintf(what, sizeof what, "tuning %s at %zu^3 (every candidate is compiled)",
                     jobs[j].kernel, n);
            ticker tk;
            ticker_start(&tk, what);
            s = st_tune_kernel(dev, jobs[j].kernel, n, n, n, fraction, &t);
            ticker_stop(&tk);
            if (s != ST_OK || (s = st_tuning_apply(dev, &t)) != ST_OK ||
                (s = gemm_rate(dev, n, n, n, &after)) != ST_OK)
                break;
            bool better = after > before * 1.02;
            printf("%s: %s %zu^3: %.1f GFLOPS before, %.1f after (%.2fx) in %.0f s: %s\n", label,
                   jobs[j].kernel, n, before, after, after / before, st_now_s() - t0,
                   better ? "kept" : "not better, not kept");
            if (better) {
                size_t k = 0;
                while (k < n_keep && strcmp(keep[k].kernel, t.kernel) != 0)
                    k++;
                keep[k] = t;
                if (k == n_keep)
                    n_keep++;
            }
        }
        if (s == ST_OK && n_keep > 0 && (s = st_tuning_save(dev, keep, n_keep)) == ST_OK) {
            char path[4200];
            st_tuning_path(dev, path, sizeof path);
            printf("%s: saved to %s\n", label, path);
        }
    }
    cli_devices_put(&devs);
    return s == ST_OK ? CLI_OK : cli_fail(s);
}
