/*
 * cl.h - the OpenCL handles behind Strata's objects, for library code that
 * launches kernels (layers, links) and for tests. Applications that only
 * select devices and run models need not include it.
 */
#ifndef STRATA_CL_H
#define STRATA_CL_H

#ifndef CL_TARGET_OPENCL_VERSION
#define CL_TARGET_OPENCL_VERSION 120
#endif
#ifndef CL_USE_DEPRECATED_OPENCL_1_2_APIS
#define CL_USE_DEPRECATED_OPENCL_1_2_APIS
#endif
#include <CL/cl.h>
#include <CL/cl_ext.h>

#include "strata/device.h"
#include "strata/program.h"
#include "strata/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

cl_context st_device_cl_context(const st_device *dev);
cl_command_queue st_device_cl_queue(const st_device *dev);
cl_device_id st_device_cl_id(const st_device *dev);

/* The kernel `name` of cl/<file> on dev, made on first use and owned by the
 * device. Set its arguments and enqueue it only between
 * st_device_launch_lock() and st_device_launch_unlock() (st_launch does). */
st_status st_device_kernel(st_device *dev, const char *file, const char *name, cl_kernel *out);
void st_device_launch_lock(st_device *dev);
void st_device_launch_unlock(st_device *dev);

/*
 * Kernel arguments by value. A tensor becomes two kernel arguments: its
 * buffer and its element offset (ulong), so every kernel takes
 * `__global float *x, const ulong x_off` for each tensor.
 */
typedef struct st_karg {
    char kind; /* 't' tensor, 'i' int, 'u' ulong, 'f' float */
    const st_tensor *t;
    cl_int i;
    cl_ulong u;
    cl_float f;
} st_karg;

#define ST_KT(x) ((st_karg){.kind = 't', .t = (x)})
#define ST_KI(x) ((st_karg){.kind = 'i', .i = (cl_int)(x)})
#define ST_KU(x) ((st_karg){.kind = 'u', .u = (cl_ulong)(x)})
#define ST_KF(x) ((st_karg){.kind = 'f', .f = (cl_float)(x)})

/* The kernel file built for a weight matrix's storage type: file itself for
 * F32, else "file#W_BF16" or "file#W_F16" (in buf), which st_launch builds
 * with that name defined (cl/gemv.cl, cl/encoder.cl, cl/convert.cl). */
const char *st_typed_file(const char *file, st_dtype dt, char *buf, size_t size);

/* Enqueues kernel `name` of cl/<file> over `global` work-items (rounded up
 * to a multiple of `local`; local 0 lets the driver choose and does not round). */
st_status st_launch(st_device *dev, const char *file, const char *name, size_t global,
                    size_t local, size_t nargs, const st_karg *args);
#define ST_LAUNCH(dev, file, name, global, local, ...)                                   \
    st_launch((dev), (file), (name), (global), (local),                                  \
              sizeof((st_karg[]){__VA_ARGS__}) / sizeof(st_karg), (st_karg[]){__VA_ARGS__})

cl_program st_program_cl(const st_program *prog);
/* Creates a kernel of the program; the caller releases it. */
st_status st_program_kernel(const st_program *prog, const char *name, cl_kernel *out);

cl_mem st_tensor_cl_mem(const st_tensor *t);

/* Set by st_tuning_load (strata/tune.h's st_tuning_source). */
void st_device_set_tuning_source(st_device *dev, int source);

/* The profiler's side (strata/profiler.h): a device's state, and one
 * enqueued command's event (NULL when not profiling: st_profiler_event
 * gives the pointer to pass to the enqueue, or NULL). */
typedef struct st_prof_state st_prof_state;
st_prof_state **st_device_prof_slot(st_device *dev);
st_prof_state *st_prof_state_new(void);
void st_prof_state_free(st_prof_state *p);
void st_profiler_record(st_device *dev, const char *op, cl_event ev, double bytes, double flops);
/* Several commands between two markers (ev before, end after). */
void st_profiler_record_span(st_device *dev, const char *op, cl_event ev, cl_event end,
                             double bytes, double flops);
cl_event *st_profiler_event(st_device *dev, cl_event *ev);

/* Records an OpenCL failure as the last error: CL name and code, the call,
 * the device, file:line and a hint; returns ST_ERR_CL, or
 * ST_ERR_DEVICE_MEMORY for allocation failures. */
st_status st_cl_fail(int err, const char *call, const st_device *dev, const char *file,
                     int line);
#define ST_CL_FAIL(err, call, dev) st_cl_fail((err), (call), (dev), __FILE__, __LINE__)

#ifdef __cplusplus
}
#endif

#endif
