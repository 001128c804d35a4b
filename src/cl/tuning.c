/*
 * tuning.c - applying, saving and loading CLBlast tunings (see strata/tune.h).
 */
#include <clblast_c.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "core/file.h"
#include "strata/cl.h"
#include "strata/program.h"
#include "strata/tune.h"
#include "strata_config.h"

#if !STRATA_HAVE_TUNER
bool st_tune_available(void)
{
    return false;
}

st_status st_tune_kernel(st_device *dev, const char *kernel, size_t m, size_t n, size_t k,
                         double fraction, st_tuning *out)
{
    (void)dev, (void)kernel, (void)m, (void)n, (void)k, (void)fraction, (void)out;
    return st_error(ST_ERR_UNSUPPORTED,
                    "this strata was built without CLBlast's tuner (it needs a C++ compiler: "
                    "install g++ and rebuild)");
}

st_status st_tuning_current(st_device *dev, const char *kernel, st_tuning *out)
{
    (void)dev, (void)kernel, (void)out;
    return st_error(ST_ERR_UNSUPPORTED,
                    "this strata was built without CLBlast's C++ interface (install g++ and "
                    "rebuild)");
}
#endif

st_status st_tuning_apply(st_device *dev, const st_tuning *t)
{
    const char *names[ST_TUNE_MAX_PARAMS];
    for (size_t i = 0; i < t->n; i++)
        names[i] = t->names[i];
    CLBlastStatusCode r = CLBlastOverrideParameters(st_device_cl_id(dev), t->kernel,
                                                    CLBlastPrecisionSingle, t->n, names,
                                                    t->values);
    if (r != CLBlastSuccess)
        return st_error(ST_ERR_BLAS, "CLBlast refused the %s tuning for %s (status %d)", t->kernel,
                        st_device_label(dev), (int)r);
    return ST_OK;
}

void st_tuning_path(const st_device *dev, char *out, size_t size)
{
    st_cache_device_file(dev, "tuning", NULL, out, size);
}

st_status st_tuning_save(const st_device *dev, const st_tuning *t, size_t count)
{
    char path[4200];
    st_tuning_path(dev, path, sizeof path);
    if (!path[0])
        return st_error(ST_ERR_IO, "the cache is off (STRATA_CACHE=0): tunings cannot be kept");
    if (count == 0) {
        if (unlink(path) != 0 && errno != ENOENT)
            return st_error(ST_ERR_IO, "cannot remove '%s': %s", path, strerror(errno));
        return ST_OK;
    }
    json_t *kernels = json_object();
    for (size_t i = 0; i < count; i++) {
        json_t *params = json_object();
        for (size_t j = 0; j < t[i].n; j++)
            json_object_set_new(params, t[i].names[j], json_integer((json_int_t)t[i].values[j]));
        json_object_set_new(kernels, t[i].kernel, params);
    }
    const st_device_info *info = st_device_get_info(dev);
    json_t *j = json_pack("{s:s, s:s, s:s, s:o}", "device", info->name, "driver",
                          info->driver_version, "platform", info->platform_version, "kernels",
                          kernels);
    st_status s = st_write_json_atomic(path, j);
    json_decref(j);
    return s;
}

st_status st_tuning_read(const st_device *dev, st_tuning *out, size_t max, size_t *count)
{
    *count = 0;
    char path[4200];
    st_tuning_path(dev, path, sizeof path);
    if (!path[0] || access(path, F_OK) != 0)
        return ST_OK;
    json_error_t err;
    json_t *j = json_load_file(path, 0, &err);
    json_t *kernels = j ? json_object_get(j, "kernels") : NULL;
    const char *name = j ? json_string_value(json_object_get(j, "device")) : NULL;
    st_status s = ST_OK;
    if (!json_is_object(kernels) || !name || strcmp(name, st_device_get_info(dev)->name) != 0) {
        s = st_error(ST_ERR_FORMAT, "tuning file '%s' is damaged or not this device's: run "
                                    "`strata tune` again or delete it",
                     path);
    } else {
        const char *kname;
        json_t *params;
        json_object_foreach(kernels, kname, params) {
            if (*count == max)
                break;
            st_tuning *t = &out[(*count)++];
            memset(t, 0, sizeof *t);
            snprintf(t->kernel, sizeof t->kernel, "%s", kname);
            const char *pn;
            json_t *pv;
            json_object_foreach(params, pn, pv) {
                if (t->n < ST_TUNE_MAX_PARAMS && json_is_integer(pv)) {
                    snprintf(t->names[t->n], sizeof t->names[0], "%s", pn);
                    t->values[t->n++] = (size_t)json_integer_value(pv);
                }
            }
        }
    }
    json_decref(j);
    return s;
}

st_status st_tuning_load(st_device *dev, size_t *applied)
{
    /* The family's built-in values first, then the device's own tuning,
     * which replaces them kernel by kernel. */
    st_tuning t[8];
    size_t n = 0, saved = 0;
    *applied = 0;
    const char *env = getenv("STRATA_BUILTIN_TUNING");
    if (!env || strcmp(env, "0") != 0)
        n = st_tuning_builtin(st_device_get_info(dev), t, 4);
    size_t builtin = n;
    st_status s = st_tuning_read(dev, t + n, 4, &saved);
    n += saved;
    for (size_t i = 0; s == ST_OK && i < n; i++)
        if ((s = st_tuning_apply(dev, &t[i])) == ST_OK)
            (*applied)++;
    st_tuning_source src = saved ? ST_TUNING_SAVED : builtin ? ST_TUNING_BUILTIN
                                                             : ST_TUNING_DEFAULT;
    st_device_set_tuning_source(dev, s == ST_OK ? src : ST_TUNING_DEFAULT);
    return s;
}

const char *st_tuning_source_name(st_tuning_source s)
{
    switch (s) {
    case ST_TUNING_BUILTIN:
        return "built-in values for its family";
    case ST_TUNING_SAVED:
        return "its own tuning (strata tune)";
    default:
        return "CLBlast's defaults";
    }
}
