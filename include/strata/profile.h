/*
 * profile.h - what the planner needs to know about a device, measured on
 * the device: GEMM throughput on the model's shapes, host<->device
 * bandwidth, and memory capacity (the accounting's, which --mem-limit sets).
 *
 * The GEMM rate is that of the three products a linear layer does per
 * training step (NN, NT and TN). Each figure is the median of several timed
 * runs, and the GEMM rate's
 * spread ((slowest - fastest) / median) is kept with it. A measurement whose
 * spread stays above 20% after two more tries (the machine was busy) is
 * used for this run with a warning and measured again next time; a steady
 * one is cached on disk (the kernel cache's root, folder profiles/), keyed by
 * device name, driver, platform, the GEMM shape and the device's CLBlast
 * tuning, so a device is measured once per shape. STRATA_CACHE=0 measures
 * every time; ST_PROFILE_REFRESH forgets the device's cached profiles.
 *
 * Devices on the same hardware (st_device_info.hardware: PoCL's CPU devices
 * all run on the host's cores) are also measured running at once, which
 * gives each one's rate when they share (st_device_profile.shared_gflops).
 */
#ifndef STRATA_PROFILE_H
#define STRATA_PROFILE_H

#include <stdbool.h>

#include "strata/device.h"
#include "strata/plan.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { ST_PROFILE_REFRESH = 1 /* forget what is cached for the device; measure again */ };

/* m x n x k: the GEMM to time (a model's typical product: tokens per
 * micro-batch x 4C x C). *cached tells whether it came from the cache. */
st_status st_device_profile_get(st_device *dev, size_t m, size_t n, size_t k, unsigned flags,
                                bool *cached, st_device_profile *out);

/* For the devices of prof[0..n) (profiled already) that share hardware with
 * another of them: times the same GEMM on each group's devices at once (a
 * host thread each) and on one of them alone in the same sitting, and sets
 * their shared_gflops to their gflops times that ratio (a busy machine slows
 * both measurements alike); others get 0. The ratios are cached like a
 * profile. */
st_status st_device_profile_shared(st_device *const *devs, size_t n, size_t m, size_t nn,
                                   size_t k, st_device_profile *prof);

/* Seconds for one forward and backward of flash attention (strata/layers.h)
 * over B sequences of T tokens, C channels in NH heads: the median of three
 * after a warm-up, cached like a profile. */
st_status st_device_time_attention(st_device *dev, int B, int T, int C, int NH, unsigned flags,
                                   double *seconds);

/* n measured times cached with dev's profiles under the name what (a new
 * tuning or driver makes them stale like a profile): true when found and
 * usable. Times measured while the host was busy (busy: see
 * st_device_measured_busy) are used by the run that measured them and
 * measured again by the next; the second busy measurement is kept. */
bool st_device_cached_seconds(st_device *dev, const char *what, int n, double *seconds);
void st_device_cache_seconds(st_device *dev, const char *what, int n, const double *seconds,
                             bool busy);

/* Whether a measurement on dev that started at h (core/load.h) ran while
 * other processes kept the host's cores busy enough to slow it: only a
 * device on the host's CPU can tell. *others: their cores' worth, -1 when
 * unknown. */
struct st_host_load;
bool st_device_measured_busy(const st_device *dev, const struct st_host_load *h,
                             double *others);

/* Removes the cached profiles of dev (every shape); returns how many. */
int st_device_profile_forget(const st_device *dev);

#ifdef __cplusplus
}
#endif

#endif
