/*
 * cl_error.c - names of OpenCL error codes (all of OpenCL 3.0 and the
 * extension codes a loader or driver commonly returns), and the message
 * recorded when an OpenCL call fails.
 */
#include <stdio.h>

#include "strata/cl.h"
#include "strata/status.h"

#define ST_CL_ERROR_LIST(X)                                                    \
    X(CL_SUCCESS, 0)                                                           \
    X(CL_DEVICE_NOT_FOUND, -1)                                                 \
    X(CL_DEVICE_NOT_AVAILABLE, -2)                                             \
    X(CL_COMPILER_NOT_AVAILABLE, -3)                                           \
    X(CL_MEM_OBJECT_ALLOCATION_FAILURE, -4)                                    \
    X(CL_OUT_OF_RESOURCES, -5)                                                 \
    X(CL_OUT_OF_HOST_MEMORY, -6)                                               \
    X(CL_PROFILING_INFO_NOT_AVAILABLE, -7)                                     \
    X(CL_MEM_COPY_OVERLAP, -8)                                                 \
    X(CL_IMAGE_FORMAT_MISMATCH, -9)                                            \
    X(CL_IMAGE_FORMAT_NOT_SUPPORTED, -10)                                      \
    X(CL_BUILD_PROGRAM_FAILURE, -11)                                           \
    X(CL_MAP_FAILURE, -12)                                                     \
    X(CL_MISALIGNED_SUB_BUFFER_OFFSET, -13)                                    \
    X(CL_EXEC_STATUS_ERROR_FOR_EVENTS_IN_WAIT_LIST, -14)                       \
    X(CL_COMPILE_PROGRAM_FAILURE, -15)                                         \
    X(CL_LINKER_NOT_AVAILABLE, -16)                                            \
    X(CL_LINK_PROGRAM_FAILURE, -17)                                            \
    X(CL_DEVICE_PARTITION_FAILED, -18)                                         \
    X(CL_KERNEL_ARG_INFO_NOT_AVAILABLE, -19)                                   \
    X(CL_INVALID_VALUE, -30)                                                   \
    X(CL_INVALID_DEVICE_TYPE, -31)                                             \
    X(CL_INVALID_PLATFORM, -32)                                                \
    X(CL_INVALID_DEVICE, -33)                                                  \
    X(CL_INVALID_CONTEXT, -34)                                                 \
    X(CL_INVALID_QUEUE_PROPERTIES, -35)                                        \
    X(CL_INVALID_COMMAND_QUEUE, -36)                                           \
    X(CL_INVALID_HOST_PTR, -37)                                                \
    X(CL_INVALID_MEM_OBJECT, -38)                                              \
    X(CL_INVALID_IMAGE_FORMAT_DESCRIPTOR, -39)                                 \
    X(CL_INVALID_IMAGE_SIZE, -40)                                              \
    X(CL_INVALID_SAMPLER, -41)                                                 \
    X(CL_INVALID_BINARY, -42)                                                  \
    X(CL_INVALID_BUILD_OPTIONS, -43)                                           \
    X(CL_INVALID_PROGRAM, -44)                                                 \
    X(CL_INVALID_PROGRAM_EXECUTABLE, -45)                                      \
    X(CL_INVALID_KERNEL_NAME, -46)                                             \
    X(CL_INVALID_KERNEL_DEFINITION, -47)                                       \
    X(CL_INVALID_KERNEL, -48)                                                  \
    X(CL_INVALID_ARG_INDEX, -49)                                               \
    X(CL_INVALID_ARG_VALUE, -50)                                               \
    X(CL_INVALID_ARG_SIZE, -51)                                                \
    X(CL_INVALID_KERNEL_ARGS, -52)                                             \
    X(CL_INVALID_WORK_DIMENSION, -53)                                          \
    X(CL_INVALID_WORK_GROUP_SIZE, -54)                                         \
    X(CL_INVALID_WORK_ITEM_SIZE, -55)                                          \
    X(CL_INVALID_GLOBAL_OFFSET, -56)                                           \
    X(CL_INVALID_EVENT_WAIT_LIST, -57)                                         \
    X(CL_INVALID_EVENT, -58)                                                   \
    X(CL_INVALID_OPERATION, -59)                                               \
    X(CL_INVALID_GL_OBJECT, -60)                                               \
    X(CL_INVALID_BUFFER_SIZE, -61)                                             \
    X(CL_INVALID_MIP_LEVEL, -62)                                               \
    X(CL_INVALID_GLOBAL_WORK_SIZE, -63)                                        \
    X(CL_INVALID_PROPERTY, -64)                                                \
    X(CL_INVALID_IMAGE_DESCRIPTOR, -65)                                        \
    X(CL_INVALID_COMPILER_OPTIONS, -66)                                        \
    X(CL_INVALID_LINKER_OPTIONS, -67)                                          \
    X(CL_INVALID_DEVICE_PARTITION_COUNT, -68)                                  \
    X(CL_INVALID_PIPE_SIZE, -69)                                               \
    X(CL_INVALID_DEVICE_QUEUE, -70)                                            \
    X(CL_INVALID_SPEC_ID, -71)                                                 \
    X(CL_MAX_SIZE_RESTRICTION_EXCEEDED, -72)                                   \
    X(CL_INVALID_GL_SHAREGROUP_REFERENCE_KHR, -1000)                           \
    X(CL_PLATFORM_NOT_FOUND_KHR, -1001)                                        \
    X(CL_DEVICE_PARTITION_FAILED_EXT, -1057)                                   \
    X(CL_INVALID_PARTITION_COUNT_EXT, -1058)                                   \
    X(CL_INVALID_PARTITION_NAME_EXT, -1059)                                    \
    X(CL_INVALID_COMMAND_BUFFER_KHR, -1138)                                    \
    X(CL_INVALID_SYNC_POINT_WAIT_LIST_KHR, -1139)                              \
    X(CL_INCOMPATIBLE_COMMAND_QUEUE_KHR, -1140)

const char *st_cl_error_name(int code)
{
    switch (code) {
#define ST_CL_ERROR_CASE_(name, value)                                         \
    case value:                                                                \
        return #name;
        ST_CL_ERROR_LIST(ST_CL_ERROR_CASE_)
#undef ST_CL_ERROR_CASE_
    default:
        return "CL_UNKNOWN_ERROR";
    }
}

static const char *cl_error_hint(int code)
{
    switch (code) {
    case -4: /* CL_MEM_OBJECT_ALLOCATION_FAILURE */
    case -5: /* CL_OUT_OF_RESOURCES */
        return "the device ran out of memory or resources: use a smaller batch or "
               "sequence length, or split the model over more devices (--devices)";
    case -6:
        return "the host ran out of memory: close other programs or use a smaller model";
    case -1:
    case -2:
        return "the device is missing or busy: check `strata devices` and the driver";
    case -3:
    case -16:
        return "this OpenCL driver cannot compile kernels: install a full driver";
    case -11:
    case -15:
    case -17:
        return "a kernel did not compile: the build log above says why";
    case -1001:
        return "no OpenCL driver is installed: install one (Debian: pocl-opencl-icd for "
               "CPUs, or the GPU vendor's OpenCL driver) and check /etc/OpenCL/vendors";
    default:
        return "this points at a bug in Strata or the driver: please report it with "
               "this message";
    }
}

st_status st_cl_fail(int err, const char *call, const st_device *dev, const char *file, int line)
{
    st_status s = (err == -4 || err == -5) ? ST_ERR_DEVICE_MEMORY : ST_ERR_CL;
    return st_error(s, "%s failed with %s (%d) on %s at %s:%d; %s", call,
                    st_cl_error_name(err), err, dev ? st_device_label(dev) : "no device",
                    file, line, cl_error_hint(err));
}
