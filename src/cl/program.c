/*
 * program.c - building an OpenCL program for one device, through the binary
 * cache when it can.
 *
 * Order: look the key up in the cache; if an entry is found, create the
 * program from it and build (link) it; if the driver refuses it, forget the
 * entry and compile from source; after a compile, store the binary.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cl/cache.h"
#include "core/hash.h"
#include "strata/cl.h"
#include "strata/program.h"

struct st_program {
    st_device *dev;
    cl_program program;
    bool from_cache;
};

/* Everything that can change the binary goes into the key. */
static char *make_key(const st_device *dev, const char *name, const char *source,
                      const char *options)
{
    const st_device_info *info = st_device_get_info(dev);
    size_t src_len = strlen(source);
    uint64_t src_hash = st_fnv64(ST_FNV64_INIT, source, src_len);
    const char *fmt = "strata-kernel-cache %u\nfile %s\nsource %016" PRIx64 " %zu\n"
                      "options %s\ndevice %s\ndriver %s\nplatform %s\n";
    int n = snprintf(NULL, 0, fmt, ST_CACHE_FORMAT_VERSION, name, src_hash, src_len, options,
                     info->name, info->driver_version, info->platform_version);
    char *key = malloc((size_t)n + 1);
    if (key)
        snprintf(key, (size_t)n + 1, fmt, ST_CACHE_FORMAT_VERSION, name, src_hash, src_len,
                 options, info->name, info->driver_version, info->platform_version);
    return key;
}

static char *build_log(cl_program prog, cl_device_id id)
{
    size_t len = 0;
    if (clGetProgramBuildInfo(prog, id, CL_PROGRAM_BUILD_LOG, 0, NULL, &len) != CL_SUCCESS)
        return NULL;
    char *log = malloc(len + 1);
    if (!log)
        return NULL;
    if (clGetProgramBuildInfo(prog, id, CL_PROGRAM_BUILD_LOG, len, log, NULL) != CL_SUCCESS)
        len = 0;
    log[len] = '\0';
    return log;
}

static cl_program from_binary(st_device *dev, const unsigned char *bin, size_t len,
                              const char *options)
{
    cl_device_id id = st_device_cl_id(dev);
    cl_int err, bin_status;
    cl_program prog = clCreateProgramWithBinary(st_device_cl_context(dev), 1, &id, &len, &bin,
                                                &bin_status, &err);
    if (err != CL_SUCCESS || bin_status != CL_SUCCESS)
        goto fail;
    if (clBuildProgram(prog, 1, &id, options, NULL, NULL) != CL_SUCCESS)
        goto fail;
    return prog;
fail:
    if (prog)
        clReleaseProgram(prog);
    return NULL;
}

static void store_binary(st_device *dev, cl_program prog, const char *key)
{
    size_t len = 0;
    if (clGetProgramInfo(prog, CL_PROGRAM_BINARY_SIZES, sizeof len, &len, NULL) != CL_SUCCESS ||
        len == 0)
        return;
    unsigned char *bin = malloc(len);
    if (!bin)
        return;
    unsigned char *bins[1] = {bin};
    if (clGetProgramInfo(prog, CL_PROGRAM_BINARIES, sizeof bins, bins, NULL) == CL_SUCCESS)
        st_cache_store(key, bin, len);
    else
        st_log(ST_LOG_INFO, "%s gave no program binary: not cached", st_device_label(dev));
    free(bin);
}

st_status st_program_build_source(st_device *dev, const char *name, const char *source,
                                  const char *options, st_program **out)
{
    if (!options)
        options = "";
    st_program *p = calloc(1, sizeof *p);
    char *key = make_key(dev, name, source, options);
    if (!p || !key) {
        free(p);
        free(key);
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory building %s", name);
    }
    p->dev = dev;

    unsigned char *bin = NULL;
    size_t len = 0;
    st_cache_result r = st_cache_lookup(key, &bin, &len);
    if (r == ST_CACHE_FOUND) {
        p->program = from_binary(dev, bin, len, options);
        free(bin);
        if (p->program) {
            p->from_cache = true;
            st_cache_count_hit();
            free(key);
            *out = p;
            return ST_OK;
        }
        st_log(ST_LOG_INFO, "%s refused the cached binary of %s: rebuilding",
               st_device_label(dev), name);
        st_cache_reject(key);
    }

    st_status s;
    cl_int err;
    cl_device_id id = st_device_cl_id(dev);
    p->program = clCreateProgramWithSource(st_device_cl_context(dev), 1, &source, NULL, &err);
    if (err != CL_SUCCESS) {
        s = ST_CL_FAIL(err, "clCreateProgramWithSource", dev);
        goto fail;
    }
    err = clBuildProgram(p->program, 1, &id, options, NULL, NULL);
    if (err != CL_SUCCESS) {
        char *log = build_log(p->program, id);
        s = st_error(err == CL_BUILD_PROGRAM_FAILURE || err == CL_INVALID_BUILD_OPTIONS
                         ? ST_ERR_BUILD
                         : ST_ERR_CL,
                     "building kernel file %s for %s (driver %s) with options '%s' failed: "
                     "%s (%d)\n--- build log ---\n%s\n--- end of build log ---",
                     name, st_device_label(dev), st_device_get_info(dev)->driver_version,
                     options, st_cl_error_name(err), err,
                     log && log[0] ? log : "(the driver gave no log)");
        free(log);
        goto fail;
    }
    st_cache_count_miss();
    store_binary(dev, p->program, key);
    free(key);
    *out = p;
    return ST_OK;
fail:
    free(key);
    st_program_destroy(p);
    return s;
}

bool st_program_cached(st_device *dev, const char *file, const char *options)
{
    char *source = NULL;
    if (st_kernel_source(file, &source) != ST_OK)
        return false;
    char *key = make_key(dev, file, source, options ? options : "");
    unsigned char *bin = NULL;
    size_t len = 0;
    bool hit = key && st_cache_lookup(key, &bin, &len) == ST_CACHE_FOUND;
    free(bin);
    free(key);
    free(source);
    return hit;
}

st_status st_program_build(st_device *dev, const char *file, const char *options,
                           st_program **out)
{
    char *source = NULL;
    st_status s = st_kernel_source(file, &source);
    if (s != ST_OK)
        return s;
    s = st_program_build_source(dev, file, source, options, out);
    free(source);
    return s;
}

void st_program_destroy(st_program *prog)
{
    if (!prog)
        return;
    if (prog->program)
        clReleaseProgram(prog->program);
    free(prog);
}

bool st_program_from_cache(const st_program *prog)
{
    return prog->from_cache;
}

cl_program st_program_cl(const st_program *prog)
{
    return prog->program;
}

st_status st_program_kernel(const st_program *prog, const char *name, cl_kernel *out)
{
    cl_int err;
    cl_kernel k = clCreateKernel(prog->program, name, &err);
    if (err != CL_SUCCESS) {
        st_status s = ST_CL_FAIL(err, "clCreateKernel", prog->dev);
        st_error_context("kernel '%s'", name);
        return s;
    }
    *out = k;
    return ST_OK;
}
