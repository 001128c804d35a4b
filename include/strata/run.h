/*
 * run.h - setting up a run's pipeline: measuring the devices (profiles,
 * cached on disk) on the model's shapes and planning the run over them, in
 * one process or over every rank under mpirun. Every command that runs a
 * model (train, generate, eval, bench, plan) plans through here; the plan
 * then makes the pipeline (st_pipe_create).
 */
#ifndef STRATA_RUN_H
#define STRATA_RUN_H

#include <stdbool.h>
#include <stddef.h>

#include "strata/device.h"
#include "strata/model.h"
#include "strata/pipe.h"
#include "strata/plan.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct st_run_plan_options {
    const char *split;     /* auto (NULL), uniform, ratio:..., layers:... */
    const char *parallel;  /* auto (NULL), pipeline, data, dp:D,pp:S */
    bool keep_all_devices; /* the devices were chosen: each gets a stage */
    bool quiet;            /* no line on stderr for a device measured for the first time */
    bool recompute_auto;   /* training without shape->recompute: when no layout fits,
                            * plan again with activation recomputation */
    bool rates_only;       /* from the GEMM rates and bandwidths alone: no timing of the
                            * model's attention or of a block (rougher times, the same
                            * memory) */
} st_run_plan_options;

/* The GEMM a device is profiled with for this model and shape: the product
 * every block does most, tokens x C -> 4C, C at most 2048, at most 1024
 * tokens. */
void st_run_profile_shape(const st_model_desc *desc, const st_run_shape *shape, size_t *m,
                          size_t *n, size_t *k);

/* Measures devs (GEMM and attention on the model's shapes; devices on the
 * same hardware also together) and plans the shape over them: prof gets a
 * profile per device, plan the stages (device indices into devs). An
 * impossible request is ST_ERR_INVALID with a message that says what is
 * missing where. */
st_status st_run_plan(st_device *const *devs, size_t n, const st_model_desc *desc,
                      const st_run_shape *shape, const st_run_plan_options *o, st_plan *plan,
                      st_device_profile *prof);

/* Under mpirun (built with MPI): each rank measures its devs (index[i]: how
 * `strata devices` numbers them, for labels), rank 0 plans over every
 * rank's devices in rank order and sends the plan to all. all_devs[d] gets
 * this rank's device for the plan's device d (NULL for another rank's);
 * comm is the pipeline's over the ranks. A rank that cannot measure still
 * takes part, so that rank 0 can say what went wrong. */
st_status st_run_plan_mpi(st_device *const *devs, const size_t *index, size_t n,
                          const st_model_desc *desc, const st_run_shape *shape,
                          const st_run_plan_options *o, st_plan *plan, st_device_profile *prof,
                          st_device **all_devs, st_pipe_comm *comm);

#ifdef __cplusplus
}
#endif

#endif
