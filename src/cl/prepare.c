/*
 * prepare.c - building a run's kernels up front, with a progress line (see
 * st_devices_prepare in strata/program.h).
 */
#include <stdio.h>

#include "cl/embedded.h"
#include "core/clock.h"
#include "strata/gemm.h"
#include "strata/program.h"
#include "strata/progress.h"

static st_status prepare_one(st_device *dev)
{
    size_t files = st_cl_embedded_count, missing = 0;
    for (size_t i = 0; i < files; i++)
        missing += !st_device_program_cached(dev, st_cl_embedded_files[i].name, "");
    st_progress p;
    if (missing)
        st_progress_begin(&p, files + 1,
                          "building kernels (first time on this device; cached for next "
                          "time): %s",
                          st_device_label(dev));
    else
        st_progress_begin(&p, files + 1,
                          "loading kernels (GEMM kernels compile once per tuning): %s",
                          st_device_label(dev));
    double t0 = st_now_s();
    st_status s = ST_OK;
    for (size_t i = 0; s == ST_OK && i < files; i++) {
        st_program *prog;
        s = st_device_program(dev, st_cl_embedded_files[i].name, "", &prog);
        st_progress_update(&p, i + 1);
    }
    /* CLBlast compiles its GEMM kernels at a device's first product (the
     * driver may cache them: PoCL and NVIDIA do). */
    if (s == ST_OK)
        s = st_gemm_warmup(dev);
    st_progress_update(&p, files + 1);
    if (s == ST_OK && missing)
        st_progress_end_note(&p, "built %zu kernel files and the GEMM kernels for %s in %.0f s "
                                 "(cached for next time)",
                             missing, st_device_label(dev), st_now_s() - t0);
    else
        st_progress_end(&p);
    return s;
}

st_status st_devices_prepare(st_device *const *devs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        bool seen = false;
        for (size_t j = 0; j < i; j++)
            seen |= devs[j] == devs[i];
        if (seen || !devs[i])
            continue;
        st_status s = prepare_one(devs[i]);
        if (s != ST_OK)
            return s;
    }
    return ST_OK;
}
