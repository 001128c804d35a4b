/* measure.h - profiles of a run's devices (plan_run.c), for plan_mpi.c too. */
#ifndef STRATA_RUN_MEASURE_H
#define STRATA_RUN_MEASURE_H

#include "strata/run.h"

/* Profiles of devs for this model and shape (cached on disk): GEMM rate
 * and bandwidths, the attention kernels' rate, and the rate of devices on
 * the same hardware measured running at once. quiet: no line for a device
 * measured for the first time. */
st_status st_run_measure(st_device *const *devs, size_t n, const st_model_desc *desc,
                         const st_run_shape *shape, bool quiet, bool rates_only,
                         st_device_profile *prof);

#endif
