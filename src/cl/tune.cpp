// tune.cpp - CLBlast's tuner, which only has a C++ interface, behind a C call.
#include <clblast.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <unordered_map>

#include "strata/cl.h"
#include "strata/tune.h"

// CLBlast's parameter map as an st_tuning (the caller checked its size).
static void to_tuning(const char *kernel, const std::unordered_map<std::string, size_t> &params,
                      st_tuning *out)
{
    std::memset(out, 0, sizeof *out);
    std::snprintf(out->kernel, sizeof out->kernel, "%s", kernel);
    for (const auto &kv : params) {
        std::snprintf(out->names[out->n], sizeof out->names[0], "%s", kv.first.c_str());
        out->values[out->n++] = kv.second;
    }
}

extern "C" bool st_tune_available(void)
{
    return true;
}

extern "C" st_status st_tune_kernel(st_device *dev, const char *kernel, size_t m, size_t n,
                                    size_t k, double fraction, st_tuning *out)
{
    cl_command_queue q = st_device_cl_queue(dev);
    std::unordered_map<std::string, size_t> params;
    clblast::StatusCode r;
    if (std::strcmp(kernel, "Xgemm") == 0)
        r = clblast::TuneXgemm<float>(&q, m, n, k, fraction, params);
    else if (std::strcmp(kernel, "XgemmDirect") == 0)
        r = clblast::TuneXgemmDirect<float>(&q, m, n, k, fraction, params);
    else
        return st_error(ST_ERR_INVALID, "tune: unknown kernel '%s'", kernel);
    if (r != clblast::StatusCode::kSuccess)
        return st_error(ST_ERR_BLAS,
                        "CLBlast's tuner for %s failed on %s with status %d%s", kernel,
                        st_device_label(dev), static_cast<int>(r),
                        r == clblast::StatusCode::kUnexpectedError
                            ? " (an exception inside the tuner; a fraction too small to try "
                              "any configuration does this: try a larger --fraction)"
                            : "");
    if (params.empty() || params.size() > ST_TUNE_MAX_PARAMS)
        return st_error(ST_ERR_BLAS, "CLBlast's tuner for %s returned %zu parameters", kernel,
                        params.size());
    to_tuning(kernel, params, out);
    return ST_OK;
}

extern "C" st_status st_tuning_current(st_device *dev, const char *kernel, st_tuning *out)
{
    std::unordered_map<std::string, size_t> params;
    clblast::StatusCode r = clblast::RetrieveParameters(st_device_cl_id(dev), kernel,
                                                        clblast::Precision::kSingle, params);
    if (r != clblast::StatusCode::kSuccess || params.empty() || params.size() > ST_TUNE_MAX_PARAMS)
        return st_error(ST_ERR_BLAS, "CLBlast gave no %s parameters for %s (status %d)", kernel,
                        st_device_label(dev), static_cast<int>(r));
    to_tuning(kernel, params, out);
    return ST_OK;
}
