/*
 * profiler.h - where a device's time goes: every kernel launch, GEMM and
 * host copy timed by OpenCL event profiling and summed per op.
 *
 * Turn it on before the devices are opened (their queues are then created
 * with profiling). The runtime marks the launches made inside transformer
 * blocks (st_profiler_scope), so that a summary can say how many launches a
 * block costs per micro-batch. Reading a summary waits for the device's
 * outstanding work. Profiling costs a little per launch (an event each);
 * it is off unless asked for (`strata train --profile`).
 */
#ifndef STRATA_PROFILER_H
#define STRATA_PROFILER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "strata/device.h"

#ifdef __cplusplus
extern "C" {
#endif

#define ST_PROF_MAX_OPS 96

void st_profiler_enable(bool on);
bool st_profiler_enabled(void);

/* While paused, nothing is recorded (the training loop records its steps
 * only, not validation or saving). */
void st_profiler_pause(bool paused);

/* Launches made by this thread until the next call count as a block's
 * (true) or not (false). */
void st_profiler_scope_block(bool in_block);

typedef struct st_prof_op {
    char name[64];     /* kernel name, "gemm NT", "copy host->device", ... */
    uint64_t launches;
    double ms;         /* device time, summed */
    double bytes;      /* bytes of the tensors it reads and writes (an estimate for kernels) */
    double flops;      /* GEMMs only */
} st_prof_op;

typedef struct st_prof_summary {
    size_t n;
    st_prof_op ops[ST_PROF_MAX_OPS]; /* by device time, largest first */
    uint64_t launches, block_launches;
    double ms;
} st_prof_summary;

/* The device's totals since it opened or since st_profiler_reset. */
st_status st_profiler_read(st_device *dev, st_prof_summary *out);
void st_profiler_reset(st_device *dev);

#ifdef __cplusplus
}
#endif

#endif
