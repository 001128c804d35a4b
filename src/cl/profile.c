/*
 * profile.c - measuring devices for the planner, with an on-disk cache of
 * the results (see strata/profile.h).
 */
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <jansson.h>
#include <math.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/file.h"
#include "core/load.h"
#include "strata/gemm.h"
#include "strata/layers.h"
#include "strata/profile.h"
#include "strata/program.h"
#include "strata/progress.h"
#include "strata/tensor.h"
#include "strata/tune.h"

/* An unsteady profile is measured again by the next command, up to
 * UNSTEADY_KEEP measurements in all; then the last is kept: on a machine that
 * stays busy, re-measuring every command cost each one its start-up time and
 * made two runs of the same command make different OpenCL calls. */
enum { RUNS = 5, TRIES = 3, UNSTEADY_KEEP = 2 };
#define STEADY 0.20 /* the largest spread a cached profile may have */
#define COPY_FLOATS (4u << 20) /* 16 MB copies */

/* The profile file of this device and `what`, or "" when caching is off. */
static void profile_path(const st_device *dev, const char *what, char *out, size_t size)
{
    /* A new CLBlast tuning changes the GEMM rate: it is part of the key. */
    char tuning[4200], extra[1600];
    struct stat tb;
    long long stamp = 0;
    st_tuning_path(dev, tuning, sizeof tuning);
    if (tuning[0] && stat(tuning, &tb) == 0)
        stamp = (long long)tb.st_mtime * 1000003LL + (long long)tb.st_size;
    /* So is the content of the built-in table (a new release may change it). */
    unsigned long long table = 1469598103934665603ull;
    st_tuning builtin[4];
    size_t nb = st_tuning_builtin(st_device_get_info(dev), builtin, 4);
    for (size_t i = 0; i < nb; i++)
        for (size_t k = 0; k < builtin[i].n; k++)
            table = (table ^ (builtin[i].values[k] + 31u * (unsigned char)builtin[i].names[k][0] +
                              977u * k + 7919u * i)) *
                    1099511628211ull;
    snprintf(extra, sizeof extra, "%s|tuning %lld %d %llx|v4", what, stamp,
             (int)st_device_tuning_source(dev), table);
    st_cache_device_file(dev, "profiles", extra, out, size);
}

static int by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median and (max - min) / median of n > 0 values (sorted in place). */
static double median_of(double *v, int n, double *spread)
{
    qsort(v, (size_t)n, sizeof *v, by_value);
    double med = n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
    if (spread)
        *spread = med > 0 ? (v[n - 1] - v[0]) / med : 0;
    return med;
}

bool st_device_measured_busy(const st_device *dev, const st_host_load *h, double *others)
{
    double o = -1;
    bool busy = strcmp(st_device_get_info(dev)->hardware, "host CPU") == 0 &&
                st_host_load_busy(h, &o);
    if (others)
        *others = o;
    return busy;
}

static bool same_device(json_t *j, const st_device_info *info)
{
    const char *name = NULL, *driver = NULL, *platform = NULL;
    return json_unpack(j, "{s:s, s:s, s:s}", "device", &name, "driver", &driver, "platform",
                       &platform) == 0 &&
           strcmp(name, info->name) == 0 && strcmp(driver, info->driver_version) == 0 &&
           strcmp(platform, info->platform_version) == 0;
}

/* A cached profile into out: true when it is usable as it is. *unsteady
 * counts the unsteady measurements behind it (0 when none or unreadable). */
static bool load(const char *path, const st_device *dev, st_device_profile *out, int *unsteady)
{
    *unsteady = 0;
    if (!path[0])
        return false;
    json_t *j = json_load_file(path, 0, NULL);
    double g = 0, spread = 1, h2d = 0, d2h = 0, launch = 0;
    int steady = 0;
    json_int_t tries = 0;
    bool ok = j && same_device(j, st_device_get_info(dev)) &&
              json_unpack(j, "{s:F, s:F, s:F, s:F, s:b, s:F, s?I}", "gflops", &g,
                          "gflops_spread", &spread, "h2d_gbps", &h2d, "d2h_gbps", &d2h, "steady",
                          &steady, "launch_us", &launch, "unsteady_measurements", &tries) == 0 &&
              g > 0 && h2d > 0 && d2h > 0 && spread >= 0;
    if (ok && !(steady && spread <= STEADY)) {
        *unsteady = tries > 0 && tries < 1000 ? (int)tries : 1;
        ok = *unsteady >= UNSTEADY_KEEP;
    }
    if (ok) {
        out->gflops = g;
        out->gflops_spread = spread;
        out->h2d_gbps = h2d;
        out->d2h_gbps = d2h;
        out->launch_us = launch;
    }
    json_decref(j);
    return ok;
}

/* A cache entry: a failure to write it costs a measurement next time. */
static void write_json(const char *path, json_t *j)
{
    if (st_write_json_atomic(path, j) != ST_OK)
        st_error_clear();
}

static json_t *device_json(const st_device *dev)
{
    const st_device_info *info = st_device_get_info(dev);
    double load1 = -1;
    FILE *f = fopen("/proc/loadavg", "r");
    if (f) {
        if (fscanf(f, "%lf", &load1) != 1)
            load1 = -1;
        fclose(f);
    }
    return json_pack("{s:s, s:s, s:s, s:I, s:f}", "device", info->name, "driver",
                     info->driver_version, "platform", info->platform_version, "measured_unix",
                     (json_int_t)time(NULL), "load_average", load1);
}

/* n values cached under what in field: true when usable, that is measured
 * on an idle host, or busy UNSTEADY_KEEP times (a machine that is always
 * busy keeps its second measurement). *busy counts the busy measurements
 * behind what the file holds (0 when none or no file). */
static bool cached_values(st_device *dev, const char *what, const char *field, int n,
                          double *v, int *busy)
{
    char path[4400];
    *busy = 0;
    profile_path(dev, what, path, sizeof path);
    json_t *j = path[0] ? json_load_file(path, 0, NULL) : NULL;
    bool same = j && same_device(j, st_device_get_info(dev));
    json_t *a = same ? json_object_get(j, field) : NULL;
    json_t *b = same ? json_object_get(j, "busy_measurements") : NULL;
    json_int_t count = json_is_integer(b) ? json_integer_value(b) : 0;
    *busy = count > 0 && count < 1000 ? (int)count : 0;
    bool hit = json_is_array(a) && (int)json_array_size(a) == n &&
               (*busy == 0 || *busy >= UNSTEADY_KEEP);
    for (int i = 0; hit && i < n; i++) {
        v[i] = json_number_value(json_array_get(a, (size_t)i));
        hit = v[i] > 0;
    }
    json_decref(j);
    return hit;
}

static void cache_values(st_device *dev, const char *what, const char *field, int n,
                         const double *v, bool busy, json_t *extra)
{
    char path[4400];
    double old[1];
    int before = 0;
    if (busy)
        cached_values(dev, what, field, 0, old, &before);
    profile_path(dev, what, path, sizeof path);
    if (!path[0]) {
        json_decref(extra);
        return;
    }
    json_t *o = device_json(dev), *a = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(a, json_real(v[i]));
    json_object_set_new(o, "what", json_string(what));
    json_object_set_new(o, field, a);
    json_object_set_new(o, "busy_measurements", json_integer(busy ? before + 1 : 0));
    if (extra)
        json_object_update(o, extra);
    json_decref(extra);
    write_json(path, o);
    json_decref(o);
}

static void save(const char *path, const st_device *dev, size_t m, size_t n, size_t k,
                 size_t rows, const st_device_profile *p, const double *runs, bool steady, int unsteady,
                 double busy_cores)
{
    if (!path[0])
        return;
    json_t *j = device_json(dev), *r = json_array();
    for (int i = 0; i < RUNS; i++)
        json_array_append_new(r, json_real(runs[i]));
    json_object_set_new(j, "gemm_mnk", json_pack("[I,I,I]", (json_int_t)m, (json_int_t)n,
                                                 (json_int_t)k));
    if (rows != m) /* timed on its first rows only (measure) */
        json_object_set_new(j, "gemm_rows_timed", json_integer((json_int_t)rows));
    json_object_set_new(j, "gflops", json_real(p->gflops));
    json_object_set_new(j, "gflops_runs", r);
    json_object_set_new(j, "gflops_spread", json_real(p->gflops_spread));
    json_object_set_new(j, "h2d_gbps", json_real(p->h2d_gbps));
    json_object_set_new(j, "d2h_gbps", json_real(p->d2h_gbps));
    json_object_set_new(j, "launch_us", json_real(p->launch_us));
    json_object_set_new(j, "steady", json_boolean(steady));
    json_object_set_new(j, "unsteady_measurements", json_integer(steady ? 0 : unsteady));
    if (busy_cores >= 0) /* other processes' use of the host's cores while measuring */
        json_object_set_new(j, "busy_cores", json_real(busy_cores));
    write_json(path, j);
    json_decref(j);
}

/* reps rounds of the three products a linear layer does per training step
 * (out = x W, dx = dout W^T, dW = x^T dout: NN, NT and TN, the transposes
 * as views of the same buffers), then a wait for the device; *secs per
 * product. Transposed operands cost CLBlast extra passes: a rate from NN
 * alone overstated training. */
static st_status gemm_timed(st_tensor *a, st_tensor *b, st_tensor *c, int reps, double *secs)
{
    size_t m = st_tensor_dim(a, 0), k = st_tensor_dim(a, 1), n = st_tensor_dim(b, 1);
    size_t sat[2] = {k, m}, sbt[2] = {n, k};
    st_tensor *at = NULL, *bt = NULL;
    st_status s = st_tensor_view(a, 0, 2, sat, &at);
    if (s == ST_OK)
        s = st_tensor_view(b, 0, 2, sbt, &bt);
    double t0 = st_now_s();
    for (int i = 0; s == ST_OK && i < reps; i++)
        if ((s = st_matmul(false, false, 1.0f, a, b, 0.0f, c)) == ST_OK &&
            (s = st_matmul(false, true, 1.0f, a, bt, 0.0f, c)) == ST_OK)
            s = st_matmul(true, false, 1.0f, at, b, 0.0f, c);
    if (s == ST_OK)
        s = st_device_finish(st_tensor_device(c));
    *secs = (st_now_s() - t0) / (3.0 * reps);
    st_tensor_destroy(at);
    st_tensor_destroy(bt);
    return s;
}

/* Products per timed run so that a run lasts about 20 ms: a single small
 * product is too short to time steadily. Runs one product to see. */
static st_status reps_for(st_tensor *a, st_tensor *b, st_tensor *c, int *reps)
{
    double t;
    st_status s = gemm_timed(a, b, c, 1, &t);
    double r = 0.02 / (t > 1e-7 ? t : 1e-7);
    *reps = r < 1 ? 1 : r > 1000 ? 1000 : (int)r + 1;
    return s;
}

static st_status measure(st_device *dev, size_t m, size_t n, size_t k, st_device_profile *p,
                         double *gflops_runs, bool *steady, double *busy_cores, size_t *rows)
{
    st_host_load load;
    *busy_cores = -1;
    st_tensor *a = NULL, *b = NULL, *c = NULL, *x = NULL;
    size_t sa[2] = {m, k}, sb[2] = {k, n}, sc[2] = {m, n}, sx[1] = {COPY_FLOATS};
    float *host = malloc(sx[0] * sizeof *host);
    st_progress pr;
    st_progress_begin(&pr, 1 + 3 * RUNS,
                      "measuring for the planner (GEMM %zu x %zu x %zu, copies): %s", m, n, k,
                      st_device_label(dev));
    st_status s = host ? ST_OK : st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    if (s == ST_OK && (s = st_tensor_create(dev, ST_F32, 2, sa, "profile A", &a)) == ST_OK &&
        (s = st_tensor_create(dev, ST_F32, 2, sb, "profile B", &b)) == ST_OK &&
        (s = st_tensor_create(dev, ST_F32, 2, sc, "profile C", &c)) == ST_OK &&
        (s = st_tensor_create(dev, ST_F32, 1, sx, "profile copy", &x)) == ST_OK) {
        memset(host, 0, sx[0] * sizeof *host);
        double t = 0;
        int reps = 1;
        /* A large product (over 8 GFLOP: a 1B-parameter model's, 17 s for
         * the three on a CPU device, where the 16 to 21 timed runs took four
         * minutes) is timed on its first rows only: as many as take about a
         * quarter of a second, at least 256, by the rate of 256 rows; the
         * rate no longer grows with the rows at that size. */
        size_t mt = m;
        if ((double)m * n * k > 4e9 && m > 256) {
            size_t probe = 256;
            st_tensor *a2 = NULL, *c2 = NULL;
            size_t sa2[2] = {probe, k}, sc2[2] = {probe, n};
            if ((s = st_tensor_view(a, 0, 2, sa2, &a2)) == ST_OK &&
                (s = st_tensor_view(c, 0, 2, sc2, &c2)) == ST_OK &&
                (s = gemm_timed(a2, b, c2, 1, &t)) == ST_OK) /* compiles */
                s = gemm_timed(a2, b, c2, 1, &t);
            st_tensor_destroy(a2);
            st_tensor_destroy(c2);
            double fit = t > 0 ? 0.25 / t * (double)probe : (double)m;
            mt = fit >= (double)m ? m : fit < 256 ? 256 : (size_t)fit / 64 * 64;
        }
        if (s == ST_OK && mt < m) {
            size_t sa2[2] = {mt, k}, sc2[2] = {mt, n};
            st_tensor *a2 = NULL, *c2 = NULL;
            if ((s = st_tensor_view(a, 0, 2, sa2, &a2)) == ST_OK &&
                (s = st_tensor_view(c, 0, 2, sc2, &c2)) == ST_OK) {
                st_tensor_destroy(a);
                st_tensor_destroy(c);
                a = a2;
                c = c2;
                a2 = c2 = NULL;
            }
            st_tensor_destroy(a2);
            st_tensor_destroy(c2);
        } else if (s == ST_OK) {
            s = gemm_timed(a, b, c, 1, &t); /* the first product compiles */
        }
        *rows = mt;
        double flops = 2.0 * (double)mt * n * k;
        if (s == ST_OK)
            s = reps_for(a, b, c, &reps);
        uint64_t done = 1;
        st_progress_update(&pr, done);
        st_host_load_begin(&load);
        /* RUNS timed products; again while the spread is large (the
         * machine busy), keeping the steadiest round. */
        double best_spread = 1e30;
        for (int round = 0; s == ST_OK && round < TRIES && best_spread > STEADY; round++) {
            double rate[RUNS], sorted[RUNS], spread;
            if (round > 0)
                pr.total += RUNS;
            for (int i = 0; s == ST_OK && i < RUNS; i++) {
                s = gemm_timed(a, b, c, reps, &t);
                rate[i] = sorted[i] = flops / (t > 0 ? t : 1e-9) / 1e9;
                st_progress_update(&pr, ++done);
            }
            double med = s == ST_OK ? median_of(sorted, RUNS, &spread) : 0;
            if (s == ST_OK && spread < best_spread) {
                best_spread = spread;
                p->gflops = med;
                p->gflops_spread = spread;
                memcpy(gflops_runs, rate, sizeof rate);
            }
        }
        /* A steady rate measured while other processes kept the host's
         * cores busy is steady at the wrong value: not kept either. */
        double others = -1;
        bool busy = s == ST_OK && st_device_measured_busy(dev, &load, &others);
        *steady = best_spread <= STEADY && !busy;
        if (busy)
            *busy_cores = others;
        double w[RUNS], r[RUNS];
        for (int i = 0; s == ST_OK && i < RUNS; i++) {
            double t0 = st_now_s();
            if ((s = st_tensor_write(x, 0, sx[0], host)) != ST_OK)
                break;
            w[i] = st_now_s() - t0;
            t0 = st_now_s();
            if ((s = st_tensor_read(x, 0, sx[0], host)) != ST_OK)
                break;
            r[i] = st_now_s() - t0;
            done += 2;
            st_progress_update(&pr, done);
        }
        /* A launch's cost: 200 fills of one element, back to back. */
        double l0 = st_now_s();
        st_tensor *one = NULL;
        size_t s1[1] = {1};
        if (s == ST_OK && (s = st_tensor_view(x, 0, 1, s1, &one)) == ST_OK) {
            for (int i = 0; s == ST_OK && i < 200; i++)
                s = st_tensor_fill(one, 0.0f);
            if (s == ST_OK && (s = st_device_finish(dev)) == ST_OK)
                p->launch_us = (st_now_s() - l0) / 200 * 1e6;
        }
        st_tensor_destroy(one);
        if (s == ST_OK) {
            double bytes = (double)sx[0] * sizeof(float);
            p->h2d_gbps = bytes / fmax(median_of(w, RUNS, NULL), 1e-9) / 1e9;
            p->d2h_gbps = bytes / fmax(median_of(r, RUNS, NULL), 1e-9) / 1e9;
        }
    }
    st_progress_end(&pr);
    st_tensor_destroy(a);
    st_tensor_destroy(b);
    st_tensor_destroy(c);
    st_tensor_destroy(x);
    free(host);
    return s;
}

st_status st_device_profile_get(st_device *dev, size_t m, size_t n, size_t k, unsigned flags,
                                bool *cached, st_device_profile *out)
{
    st_device_profile p;
    memset(&p, 0, sizeof p);
    const st_device_info *info = st_device_get_info(dev);
    snprintf(p.name, sizeof p.name, "%s", info->name);
    snprintf(p.hardware, sizeof p.hardware, "%s", info->hardware);
    p.mem_bytes = st_device_get_memory(dev).capacity;
    if (flags & ST_PROFILE_REFRESH)
        st_device_profile_forget(dev);
    char path[4400], what[128];
    snprintf(what, sizeof what, "%zux%zux%zu", m, n, k);
    profile_path(dev, what, path, sizeof path);
    int unsteady = 0;
    bool hit = load(path, dev, &p, &unsteady);
    if (!hit) {
        double runs[RUNS], busy = -1;
        bool steady = false;
        size_t rows = m;
        st_status s = measure(dev, m, n, k, &p, runs, &steady, &busy, &rows);
        if (s != ST_OK) {
            st_error_context("measuring %s for the planner", st_device_label(dev));
            return s;
        }
        save(path, dev, m, n, k, rows, &p, runs, steady, unsteady + 1, busy);
        if (!steady && busy >= 0)
            st_log(ST_LOG_WARN,
                   "other processes used %.1f of the host's cores while %s was measured: the "
                   "planner uses its %.1f GFLOPS for this run %s (`strata devices --profile "
                   "--refresh` re-measures now)",
                   busy, st_device_label(dev), p.gflops,
                   unsteady + 1 < UNSTEADY_KEEP ? "and measures it again next time"
                                                : "and keeps it (the machine was busy twice)");
        else if (!steady)
            st_log(ST_LOG_WARN,
                   "%s's GEMM rate varied by %.0f%% over %d runs, three times (is the machine "
                   "busy?): the planner uses the median, %.1f GFLOPS, %s (`strata devices "
                   "--profile --refresh` re-measures now)",
                   st_device_label(dev), 100.0 * p.gflops_spread, RUNS, p.gflops,
                   unsteady + 1 < UNSTEADY_KEEP ? "and it will be measured again next time"
                                                : "and keeps it (measured unsteady twice)");
    }
    if (cached)
        *cached = hit;
    *out = p;
    return ST_OK;
}

int st_device_profile_forget(const st_device *dev)
{
    char any[4400];
    st_cache_device_file(dev, "profiles", "", any, sizeof any);
    char *slash = strrchr(any, '/');
    if (!any[0] || !slash)
        return 0;
    *slash = '\0';
    DIR *d = opendir(any);
    if (!d)
        return 0;
    int n = 0;
    const st_device_info *info = st_device_get_info(dev);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t len = strlen(e->d_name);
        if (len < 6 || strcmp(e->d_name + len - 5, ".json") != 0)
            continue;
        char path[4700];
        snprintf(path, sizeof path, "%s/%s", any, e->d_name);
        json_t *j = json_load_file(path, 0, NULL);
        if (j && same_device(j, info) && unlink(path) == 0)
            n++;
        json_decref(j);
    }
    closedir(d);
    return n;
}

/* One device's share of the concurrent measurement. */
typedef struct shared_job {
    st_tensor *a, *b, *c;
    int reps;
    pthread_barrier_t *start;
    double secs[RUNS];
    st_status s;
} shared_job;

static void *shared_run(void *arg)
{
    shared_job *j = arg;
    pthread_barrier_wait(j->start);
    for (int i = 0; j->s == ST_OK && i < RUNS; i++)
        j->s = gemm_timed(j->a, j->b, j->c, j->reps, &j->secs[i]);
    return NULL;
}

/* RUNS timed runs of job j's product on its device alone: the median, in
 * seconds per product. */
static st_status alone_median(shared_job *j, double *secs)
{
    double t[RUNS];
    st_status s = ST_OK;
    for (int i = 0; s == ST_OK && i < RUNS; i++)
        s = gemm_timed(j->a, j->b, j->c, j->reps, &t[i]);
    *secs = s == ST_OK ? median_of(t, RUNS, NULL) : 0;
    return s;
}

/* Times the product on the devices g[0..n) at once, and on g[0] alone just
 * before and after: ratios[i] is device i's rate together over the rate
 * alone. Both come from one sitting, so a machine loaded by something else
 * slows both alike and the ratio stays what sharing costs (a rate alone
 * measured idle at another time beside one together measured busy made the
 * planner predict two devices at half the speed of one). */
static st_status measure_shared(st_device *const *g, size_t n, size_t m, size_t nn, size_t k,
                                double *ratios)
{
    shared_job job[ST_MAX_DEVICES];
    pthread_t th[ST_MAX_DEVICES];
    pthread_barrier_t start;
    memset(job, 0, sizeof job);
    size_t sa[2] = {m, k}, sb[2] = {k, nn}, sc[2] = {m, nn};
    st_status s = ST_OK;
    for (size_t i = 0; s == ST_OK && i < n; i++) {
        double t;
        if ((s = st_tensor_create(g[i], ST_F32, 2, sa, "profile A", &job[i].a)) == ST_OK &&
            (s = st_tensor_create(g[i], ST_F32, 2, sb, "profile B", &job[i].b)) == ST_OK &&
            (s = st_tensor_create(g[i], ST_F32, 2, sc, "profile C", &job[i].c)) == ST_OK)
            s = gemm_timed(job[i].a, job[i].b, job[i].c, 1, &t);
        if (s == ST_OK)
            s = reps_for(job[i].a, job[i].b, job[i].c, &job[i].reps);
    }
    /* ROUNDS of alone, together, alone (each alone shared by the rounds
     * beside it); each round's ratio, then their median: on a machine
     * whose speed drifts from second to second, one ratio was 0.52 in one
     * command and 1.0 in the next. */
    enum { ROUNDS = 3 };
    double alone[ROUNDS + 1], ratio[ST_MAX_DEVICES][ROUNDS];
    if (s == ST_OK)
        s = alone_median(&job[0], &alone[0]);
    for (int r = 0; s == ST_OK && r < ROUNDS; r++) {
        size_t started = 0;
        if (pthread_barrier_init(&start, NULL, (unsigned)n) != 0) {
            s = st_error(ST_ERR_HOST_MEMORY, "cannot start the measuring threads");
            break;
        }
        for (; started < n; started++) {
            job[started].start = &start;
            if (pthread_create(&th[started], NULL, shared_run, &job[started]) != 0)
                break;
        }
        if (started < n) {
            /* Threads wait at the barrier for the missing ones: release them. */
            s = st_error(ST_ERR_HOST_MEMORY, "cannot start a measuring thread");
            for (size_t i = started; i < n; i++)
                job[i].s = s;
            for (size_t i = started; i < n; i++)
                pthread_barrier_wait(&start);
        }
        for (size_t i = 0; i < started; i++)
            pthread_join(th[i], NULL);
        pthread_barrier_destroy(&start);
        for (size_t i = 0; i < n; i++)
            if (s == ST_OK && job[i].s != ST_OK)
                s = job[i].s;
        if (s == ST_OK)
            s = alone_median(&job[0], &alone[r + 1]);
        for (size_t i = 0; s == ST_OK && i < n; i++)
            ratio[i][r] = 0.5 * (alone[r] + alone[r + 1]) /
                          fmax(median_of(job[i].secs, RUNS, NULL), 1e-12);
    }
    for (size_t i = 0; i < n; i++) {
        if (s == ST_OK)
            ratios[i] = median_of(ratio[i], ROUNDS, NULL);
        st_tensor_destroy(job[i].a);
        st_tensor_destroy(job[i].b);
        st_tensor_destroy(job[i].c);
    }
    return s;
}

st_status st_device_profile_shared(st_device *const *devs, size_t n, size_t m, size_t nn,
                                   size_t k, st_device_profile *prof)
{
    bool done[ST_MAX_DEVICES] = {false};
    for (size_t i = 0; i < n; i++)
        prof[i].shared_gflops = 0;
    for (size_t i = 0; i < n && i < ST_MAX_DEVICES; i++) {
        if (done[i] || !prof[i].hardware[0])
            continue;
        st_device *g[ST_MAX_DEVICES];
        size_t idx[ST_MAX_DEVICES], cnt = 0;
        for (size_t j = i; j < n && j < ST_MAX_DEVICES; j++)
            if (!done[j] && strcmp(prof[j].hardware, prof[i].hardware) == 0) {
                done[j] = true;
                idx[cnt] = j;
                g[cnt++] = devs[j];
            }
        if (cnt < 2)
            continue;
        /* Cached under the first device, keyed by the group's devices. */
        char what[1400];
        int len = snprintf(what, sizeof what, "shared v2 %zux%zux%zu", m, nn, k);
        for (size_t j = 0; j < cnt && len < (int)sizeof what; j++)
            len += snprintf(what + len, sizeof what - (size_t)len, "|%s|%s",
                            st_device_get_info(g[j])->platform,
                            st_device_get_info(g[j])->name);
        double ratios[ST_MAX_DEVICES];
        int busy_before;
        if (!cached_values(g[0], what, "shared_over_alone", (int)cnt, ratios, &busy_before)) {
            st_progress pr;
            st_host_load load;
            st_host_load_begin(&load);
            st_progress_begin(&pr, 0, "measuring %zu devices that share the %s, running at once",
                              cnt, prof[i].hardware);
            st_status s = measure_shared(g, cnt, m, nn, k, ratios);
            st_progress_end(&pr);
            if (s != ST_OK) {
                st_error_context("measuring the devices that share the %s", prof[i].hardware);
                return s;
            }
            cache_values(g[0], what, "shared_over_alone", (int)cnt, ratios,
                         st_device_measured_busy(g[0], &load, NULL),
                         json_pack("{s:[I,I,I]}", "gemm_mnk", (json_int_t)m, (json_int_t)nn,
                                   (json_int_t)k));
        }
        for (size_t q = 0; q < cnt; q++)
            prof[idx[q]].shared_gflops = prof[idx[q]].gflops * ratios[q];
    }
    return ST_OK;
}

bool st_device_cached_seconds(st_device *dev, const char *what, int n, double *seconds)
{
    int busy;
    return cached_values(dev, what, "seconds", n, seconds, &busy);
}

void st_device_cache_seconds(st_device *dev, const char *what, int n, const double *seconds,
                             bool busy)
{
    cache_values(dev, what, "seconds", n, seconds, busy, NULL);
}

st_status st_device_time_attention(st_device *dev, int B, int T, int C, int NH, unsigned flags,
                                   double *seconds)
{
    if (flags & ST_PROFILE_REFRESH)
        st_device_profile_forget(dev);
    char what[128];
    snprintf(what, sizeof what, "attention %dx%dx%dx%d", B, T, C, NH);
    int busy_before;
    if (cached_values(dev, what, "seconds", 1, seconds, &busy_before))
        return ST_OK;
    st_host_load load;
    st_host_load_begin(&load);
    size_t N = (size_t)B * T, Cs = (size_t)C, q3[1] = {N * 3 * Cs}, o1[1] = {N * Cs},
           l1[1] = {(size_t)B * NH * T}, b1[1] = {3 * Cs};
    st_tensor *qkv = NULL, *bias = NULL, *out = NULL, *lse = NULL, *dout = NULL, *dqkv = NULL;
    st_progress pr;
    st_progress_begin(&pr, 4, "measuring attention for the planner (%d x %d tokens): %s", B, T,
                      st_device_label(dev));
    st_status s;
    double t[4] = {0};
    if ((s = st_tensor_create(dev, ST_F32, 1, q3, "profile qkv", &qkv)) == ST_OK &&
        (s = st_tensor_create(dev, ST_F32, 1, b1, "profile bias", &bias)) == ST_OK &&
        (s = st_tensor_create(dev, ST_F32, 1, o1, "profile out", &out)) == ST_OK &&
        (s = st_tensor_create(dev, ST_F32, 1, l1, "profile lse", &lse)) == ST_OK &&
        (s = st_tensor_create(dev, ST_F32, 1, o1, "profile dout", &dout)) == ST_OK &&
        (s = st_tensor_create(dev, ST_F32, 1, q3, "profile dqkv", &dqkv)) == ST_OK) {
        for (int i = 0; s == ST_OK && i < 4; i++) {
            double t0 = st_now_s();
            if ((s = st_attention_flash_fwd(out, lse, qkv, bias, NULL, B, T, C, NH)) == ST_OK &&
                (s = st_attention_flash_bwd(dqkv, dout, out, lse, qkv, bias, NULL, B, T, C, NH)) ==
                    ST_OK)
                s = st_device_finish(dev);
            t[i] = st_now_s() - t0;
            st_progress_update(&pr, (uint64_t)i + 1);
        }
    }
    st_progress_end(&pr);
    st_tensor *all[] = {qkv, bias, out, lse, dout, dqkv};
    for (size_t i = 0; i < 6; i++)
        st_tensor_destroy(all[i]);
    if (s != ST_OK) {
        st_error_context("measuring attention on %s for the planner", st_device_label(dev));
        return s;
    }
    *seconds = median_of(t + 1, 3, NULL); /* the first compiles */
    cache_values(dev, what, "seconds", 1, seconds, st_device_measured_busy(dev, &load, NULL),
                 json_pack("{s:[i,i,i,i]}", "attention_btcnh", B, T, C, NH));
    return ST_OK;
}
