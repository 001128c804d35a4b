/*
 * clblast_guard.c - keeps a failed allocation inside CLBlast from aborting
 * the process.
 *
 * CLBlast 1.5.3 (Debian 12) allocates temporary device buffers inside some
 * routines (batched GEMM always, the indirect GEMM kernels for padding).
 * When clCreateBuffer fails there, its Buffer constructor throws, and while
 * the exception unwinds, the buffer's deleter calls clReleaseMemObject on
 * the NULL handle and throws again from a destructor: std::terminate, exit
 * 134, no message. Measured with tests/fault (an allocation failed inside
 * CLBlastSgemmBatched: "terminate called without an active exception").
 *
 * This definition of clReleaseMemObject in the strata executable comes
 * first in symbol lookup, so CLBlast's calls reach it: releasing NULL
 * succeeds as a no-op (there is nothing to release), and everything else
 * goes to the real function of the OpenCL library. The first exception then
 * reaches CLBlast's own handler, which returns CLBlastTempBufferAllocFailure,
 * and Strata reports it like any out-of-memory. Strata itself never releases
 * NULL (tensor.c checks), so nothing else changes.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CL/cl.h>

typedef cl_int(CL_API_CALL *release_fn)(cl_mem);

CL_API_ENTRY cl_int CL_API_CALL clReleaseMemObject(cl_mem mem)
{
    static release_fn next;
    if (!mem)
        return CL_SUCCESS;
    if (!next) {
        /* POSIX: dlsym's object pointer holds a function; copied, not cast (ISO C). */
        void *sym = dlsym(RTLD_NEXT, "clReleaseMemObject");
        memcpy(&next, &sym, sizeof next);
        if (!next) {
            /* No OpenCL library behind us: a broken installation, not bad input. */
            fprintf(stderr, "strata: clReleaseMemObject not found in the OpenCL library\n");
            abort();
        }
    }
    return next(mem);
}
