/*
 * profile.h - what the planner needs to know about a device, measured on
 * the device: GEMM throughput on the model's shapes, host<->device
 * bandwidth, and memory capacity (the accounting's, which --mem-limit sets).
 *
 * Measurements are cached on disk (the kernel cache's root, folder
 * profiles/), keyed by device name, driver, platform and the GEMM shape, so
 * a device is measured once per shape; STRATA_CACHE=0 measures every time.
 */
#ifndef STRATA_PROFILE_H
#define STRATA_PROFILE_H

#include <stdbool.h>

#include "strata/device.h"
#include "strata/plan.h"

#ifdef __cplusplus
extern "C" {
#endif

/* m x n x k: the GEMM to time (a model's typical product: tokens per
 * micro-batch x 4C x C). *cached tells whether it came from the cache. */
st_status st_device_profile_get(st_device *dev, size_t m, size_t n, size_t k, bool *cached,
                                st_device_profile *out);

#ifdef __cplusplus
}
#endif

#endif
