/*
 * tune.h - tuning CLBlast's GEMM kernels for a device (`strata tune`).
 *
 * CLBlast ships tuned parameters for many GPUs but not for every device
 * (PoCL's CPU devices run on defaults). Its tuner tries a fraction of each
 * kernel's parameter space on the device and returns the fastest set;
 * Strata keeps the result in the cache root's tuning/ folder, keyed by
 * device, driver and platform, and applies it whenever it opens that device
 * (CLBlastOverrideParameters). Results of GEMMs change in their last bits
 * with tuning: runs compare bitwise only under the same tuning.
 */
#ifndef STRATA_TUNE_H
#define STRATA_TUNE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "strata/device.h"

#ifdef __cplusplus
extern "C" {
#endif

#define ST_TUNE_MAX_PARAMS 32

typedef struct st_tuning {
    char kernel[32]; /* "Xgemm" (large products) or "XgemmDirect" (small ones) */
    size_t n;
    char names[ST_TUNE_MAX_PARAMS][32];
    size_t values[ST_TUNE_MAX_PARAMS];
} st_tuning;

/* Whether this build has CLBlast's tuner (it needs a C++ compiler). */
bool st_tune_available(void);
/* Runs CLBlast's tuner for `kernel` on an m x n x k product, trying
 * `fraction` of the parameter space (0.001 takes minutes on a CPU). */
st_status st_tune_kernel(st_device *dev, const char *kernel, size_t m, size_t n, size_t k,
                         double fraction, st_tuning *out);
/* The parameters CLBlast uses now on dev for `kernel` (its database's,
 * or those applied). */
st_status st_tuning_current(st_device *dev, const char *kernel, st_tuning *out);

/* A search with a time budget (tune_search.c): from `start`, changes one or
 * two parameters at a time, keeps a candidate that makes the products
 * faster (total time over the shapes, each as a training step does it: NN,
 * NT and TN) and gives the same results, and stops when budget_s has passed. The best set found is applied on return.
 * Progress on the progress line. */
typedef struct st_tune_shape {
    size_t m, n, k;
} st_tune_shape;
typedef struct st_tune_result {
    st_tuning best;
    double start_gflops, best_gflops; /* over the shapes */
    int tried, failed;                /* candidates timed; refused or wrong */
} st_tune_result;
st_status st_tune_search(st_device *dev, const st_tuning *start, const st_tune_shape *shapes,
                         size_t n_shapes, double budget_s, uint64_t seed, st_tune_result *out);
/* The GFLOPS of the products (NN, NT and TN each; one warm-up, then the
 * best of three). */
st_status st_tune_rate(st_device *dev, const st_tune_shape *shapes, size_t n_shapes,
                       double *gflops);

/* Makes CLBlast use these parameters on dev from the next call on. */
st_status st_tuning_apply(st_device *dev, const st_tuning *t);
/* Saves the device's tunings (replacing earlier ones); count 0 removes them. */
st_status st_tuning_save(const st_device *dev, const st_tuning *t, size_t count);
/* Reads the saved tunings of dev (up to max; none when there is no file). */
st_status st_tuning_read(const st_device *dev, st_tuning *out, size_t max, size_t *count);
/* Applies the saved tunings of dev, if any, else the built-in ones for its
 * family (STRATA_BUILTIN_TUNING=0 skips those); *applied says how many. */
st_status st_tuning_load(st_device *dev, size_t *applied);
/* Known-good tunings for the device's family (tuning_table.c), up to max;
 * 0 when the family is not in the table. */
size_t st_tuning_builtin(const st_device_info *info, st_tuning *out, size_t max);
/* Where the device's GEMM parameters came from when it opened. */
typedef enum st_tuning_source {
    ST_TUNING_DEFAULT, /* CLBlast's own database or defaults */
    ST_TUNING_BUILTIN, /* Strata's table of known-good values for the family */
    ST_TUNING_SAVED    /* `strata tune` on this device */
} st_tuning_source;
st_tuning_source st_device_tuning_source(const st_device *dev);
const char *st_tuning_source_name(st_tuning_source s);

/* The saved tuning file's path for dev, or "" when caching is off. */
void st_tuning_path(const st_device *dev, char *out, size_t size);

#ifdef __cplusplus
}
#endif

#endif
