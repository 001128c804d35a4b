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

cl_program st_program_cl(const st_program *prog);
/* Creates a kernel of the program; the caller releases it. */
st_status st_program_kernel(const st_program *prog, const char *name, cl_kernel *out);

cl_mem st_tensor_cl_mem(const st_tensor *t);

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
