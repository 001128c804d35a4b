/*
 * cl_fault.c - a fault-injection wrapper around the real OpenCL, for tests
 * only: loaded with LD_PRELOAD in front of the ICD loader, it passes every
 * call through to the real library (dlsym RTLD_NEXT), except that the N-th
 * call of one kind fails the way a driver fails:
 *
 *   STRATA_CL_FAULT=alloc:N     the N-th clCreateBuffer returns NULL with
 *                               CL_MEM_OBJECT_ALLOCATION_FAILURE
 *   STRATA_CL_FAULT=enqueue:N   the N-th kernel launch (clEnqueueNDRangeKernel)
 *                               returns CL_OUT_OF_RESOURCES
 *   STRATA_CL_FAULT=build:N     the N-th clBuildProgram returns
 *                               CL_BUILD_PROGRAM_FAILURE
 *   STRATA_CL_FAULT_COUNT=FILE  at exit, append "alloc A enqueue E build B":
 *                               how many calls of each kind the run made
 *   STRATA_CL_FAULT_SITES=FILE  append "KIND N SITE" for every call: SITE
 *                               hashes the call's stack (each frame as its
 *                               object's file name and the offset in it, so
 *                               the same in every run), so that a test can
 *                               fail each distinct call path once instead
 *                               of every call of a loop
 *
 * Calls from CLBlast count too (it allocates and launches through the same
 * library), which is the point: Strata must survive its failures as well.
 * Not a mock: every call that is not failed is the real driver's.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <execinfo.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <CL/cl.h>

enum { ALLOC, ENQUEUE, BUILD, KINDS };
static const char *const kind_name[KINDS] = {"alloc", "enqueue", "build"};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static long count[KINDS], fail_at = -1;
static int fail_kind = -1;
static int ready;
static FILE *sites;

static void report(void)
{
    const char *path = getenv("STRATA_CL_FAULT_COUNT");
    FILE *f = path ? fopen(path, "a") : NULL;
    if (!f)
        return;
    fprintf(f, "alloc %ld enqueue %ld build %ld\n", count[ALLOC], count[ENQUEUE], count[BUILD]);
    fclose(f);
}

static void setup(void)
{
    ready = 1;
    const char *spec = getenv("STRATA_CL_FAULT");
    if (spec) {
        for (int k = 0; k < KINDS; k++) {
            size_t n = strlen(kind_name[k]);
            if (strncmp(spec, kind_name[k], n) == 0 && spec[n] == ':') {
                fail_kind = k;
                fail_at = atol(spec + n + 1);
            }
        }
    }
    const char *path = getenv("STRATA_CL_FAULT_SITES");
    if (path)
        sites = fopen(path, "a");
    atexit(report);
}

/* The calling stack as a 64-bit FNV-1a hash of (object file name, offset)
 * per frame: addresses differ between runs (ASLR), offsets do not. */
static uint64_t site_of_stack(void)
{
    void *frames[32];
    int n = backtrace(frames, 32);
    uint64_t h = 1469598103934665603ull;
    for (int i = 1; i < n; i++) { /* frame 0 is this function */
        Dl_info info;
        const char *name = "?";
        uintptr_t off = (uintptr_t)frames[i];
        if (dladdr(frames[i], &info) && info.dli_fname) {
            name = strrchr(info.dli_fname, '/') ? strrchr(info.dli_fname, '/') + 1 : info.dli_fname;
            off -= (uintptr_t)info.dli_fbase;
        }
        for (const char *c = name; *c; c++)
            h = (h ^ (unsigned char)*c) * 1099511628211ull;
        for (int b = 0; b < 8; b++)
            h = (h ^ ((off >> (8 * b)) & 0xff)) * 1099511628211ull;
    }
    return h;
}

/* Counts a call of kind k; true when it is the one to fail. */
static int should_fail(int k)
{
    pthread_mutex_lock(&lock);
    if (!ready)
        setup();
    int fail = ++count[k] == fail_at && k == fail_kind;
    if (sites)
        fprintf(sites, "%s %ld %016llx\n", kind_name[k], count[k],
                (unsigned long long)site_of_stack());
    pthread_mutex_unlock(&lock);
    if (fail)
        fprintf(stderr, "cl_fault: failing %s call %ld\n", kind_name[k], fail_at);
    return fail;
}

static void *real(const char *name)
{
    void *f = dlsym(RTLD_NEXT, name);
    if (!f) {
        fprintf(stderr, "cl_fault: no real %s\n", name);
        abort();
    }
    return f;
}

/* dlsym's object pointer into a function pointer: copied, as ISO C wants. */
#define REAL(var, name)                                                                        \
    do {                                                                                       \
        void *sym_ = real(name);                                                               \
        memcpy(&(var), &sym_, sizeof(var));                                                    \
    } while (0)

CL_API_ENTRY cl_mem CL_API_CALL clCreateBuffer(cl_context context, cl_mem_flags flags,
                                               size_t size, void *host_ptr, cl_int *errcode_ret)
{
    static cl_mem (*next)(cl_context, cl_mem_flags, size_t, void *, cl_int *);
    if (!next)
        REAL(next, "clCreateBuffer");
    if (should_fail(ALLOC)) {
        if (errcode_ret)
            *errcode_ret = CL_MEM_OBJECT_ALLOCATION_FAILURE;
        return NULL;
    }
    return next(context, flags, size, host_ptr, errcode_ret);
}

CL_API_ENTRY cl_int CL_API_CALL clEnqueueNDRangeKernel(cl_command_queue q, cl_kernel kernel,
                                                       cl_uint dims, const size_t *offset,
                                                       const size_t *global, const size_t *local,
                                                       cl_uint n_wait, const cl_event *wait,
                                                       cl_event *event)
{
    static cl_int (*next)(cl_command_queue, cl_kernel, cl_uint, const size_t *, const size_t *,
                          const size_t *, cl_uint, const cl_event *, cl_event *);
    if (!next)
        REAL(next, "clEnqueueNDRangeKernel");
    if (should_fail(ENQUEUE))
        return CL_OUT_OF_RESOURCES;
    return next(q, kernel, dims, offset, global, local, n_wait, wait, event);
}

CL_API_ENTRY cl_int CL_API_CALL clBuildProgram(cl_program program, cl_uint n_devices,
                                               const cl_device_id *devices, const char *options,
                                               void(CL_CALLBACK *notify)(cl_program, void *),
                                               void *user)
{
    static cl_int (*next)(cl_program, cl_uint, const cl_device_id *, const char *,
                          void(CL_CALLBACK *)(cl_program, void *), void *);
    if (!next)
        REAL(next, "clBuildProgram");
    if (should_fail(BUILD))
        return CL_BUILD_PROGRAM_FAILURE;
    return next(program, n_devices, devices, options, notify, user);
}
