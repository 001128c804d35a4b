/*
 * profile.c - measuring devices for the planner, with an on-disk cache of
 * the results (see strata/profile.h).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <jansson.h>

#include "core/clock.h"
#include "strata/gemm.h"
#include "strata/profile.h"
#include "strata/program.h"
#include "strata/tensor.h"
#include "strata/tune.h"

/* The profile file of this device and shape, or "" when caching is off. */
static void profile_path(const st_device *dev, size_t m, size_t n, size_t k, char *out,
                         size_t size)
{
    /* A new CLBlast tuning changes the GEMM rate: it is part of the key. */
    char tuning[4200], extra[128];
    struct stat tb;
    long long stamp = 0;
    st_tuning_path(dev, tuning, sizeof tuning);
    if (tuning[0] && stat(tuning, &tb) == 0)
        stamp = (long long)tb.st_mtime * 1000003LL + (long long)tb.st_size;
    snprintf(extra, sizeof extra, "%zux%zux%zu|tuning %lld|v1", m, n, k, stamp);
    st_cache_device_file(dev, "profiles", extra, out, size);
}

static bool load(const char *path, const st_device *dev, st_device_profile *out)
{
    if (!path[0])
        return false;
    json_t *j = json_load_file(path, 0, NULL);
    double g = 0, h2d = 0, d2h = 0;
    const char *name = NULL;
    bool ok = j && json_unpack(j, "{s:F, s:F, s:F, s:s}", "gflops", &g, "h2d_gbps", &h2d,
                               "d2h_gbps", &d2h, "device", &name) == 0 &&
              g > 0 && h2d > 0 && d2h > 0 && strcmp(name, st_device_get_info(dev)->name) == 0;
    if (ok) {
        out->gflops = g;
        out->h2d_gbps = h2d;
        out->d2h_gbps = d2h;
    }
    json_decref(j);
    return ok;
}

static void save(const char *path, const st_device *dev, size_t m, size_t n, size_t k,
                 const st_device_profile *p)
{
    if (!path[0])
        return;
    const st_device_info *info = st_device_get_info(dev);
    json_t *j = json_pack("{s:s, s:s, s:s, s:[I,I,I], s:f, s:f, s:f}", "device", info->name,
                          "driver", info->driver_version, "platform", info->platform_version,
                          "gemm_mnk", (json_int_t)m, (json_int_t)n, (json_int_t)k, "gflops",
                          p->gflops, "h2d_gbps", p->h2d_gbps, "d2h_gbps", p->d2h_gbps);
    char tmp[4500];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    if (j && json_dump_file(j, tmp, JSON_INDENT(2)) == 0 && rename(tmp, path) != 0)
        remove(tmp);
    json_decref(j);
}

static st_status measure(st_device *dev, size_t m, size_t n, size_t k, st_device_profile *p)
{
    st_tensor *a = NULL, *b = NULL, *c = NULL, *x = NULL;
    size_t sa[2] = {m, k}, sb[2] = {k, n}, sc[2] = {m, n}, sx[1] = {4u << 20}; /* 16 MB */
    float *host = malloc(sx[0] * sizeof *host);
    st_status s = host ? ST_OK : st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    if (s == ST_OK && (s = st_tensor_create(dev, ST_F32, 2, sa, "profile A", &a)) == ST_OK &&
        (s = st_tensor_create(dev, ST_F32, 2, sb, "profile B", &b)) == ST_OK &&
        (s = st_tensor_create(dev, ST_F32, 2, sc, "profile C", &c)) == ST_OK &&
        (s = st_tensor_create(dev, ST_F32, 1, sx, "profile copy", &x)) == ST_OK) {
        memset(host, 0, sx[0] * sizeof *host);
        /* The first product compiles; then the best of three timed runs. */
        double best = 1e30, best_w = 1e30, best_r = 1e30;
        for (int i = 0; s == ST_OK && i < 4; i++) {
            double t0 = st_now_s();
            if ((s = st_matmul(false, false, 1.0f, a, b, 0.0f, c)) == ST_OK &&
                (s = st_device_finish(dev)) == ST_OK && i > 0 && st_now_s() - t0 < best)
                best = st_now_s() - t0;
        }
        for (int i = 0; s == ST_OK && i < 3; i++) {
            double t0 = st_now_s();
            if ((s = st_tensor_write(x, 0, sx[0], host)) == ST_OK && st_now_s() - t0 < best_w)
                best_w = st_now_s() - t0;
            t0 = st_now_s();
            if (s == ST_OK && (s = st_tensor_read(x, 0, sx[0], host)) == ST_OK &&
                st_now_s() - t0 < best_r)
                best_r = st_now_s() - t0;
        }
        if (s == ST_OK) {
            p->gflops = 2.0 * (double)m * n * k / best / 1e9;
            p->h2d_gbps = (double)sx[0] * 4 / best_w / 1e9;
            p->d2h_gbps = (double)sx[0] * 4 / best_r / 1e9;
        }
    }
    st_tensor_destroy(a);
    st_tensor_destroy(b);
    st_tensor_destroy(c);
    st_tensor_destroy(x);
    free(host);
    return s;
}

st_status st_device_profile_get(st_device *dev, size_t m, size_t n, size_t k, bool *cached,
                                st_device_profile *out)
{
    st_device_profile p;
    memset(&p, 0, sizeof p);
    snprintf(p.name, sizeof p.name, "%s", st_device_get_info(dev)->name);
    p.mem_bytes = st_device_get_memory(dev).capacity;
    char path[4400];
    profile_path(dev, m, n, k, path, sizeof path);
    bool hit = load(path, dev, &p);
    if (!hit) {
        st_status s = measure(dev, m, n, k, &p);
        if (s != ST_OK) {
            st_error_context("measuring %s for the planner", st_device_label(dev));
            return s;
        }
        save(path, dev, m, n, k, &p);
    }
    if (cached)
        *cached = hit;
    *out = p;
    return ST_OK;
}
