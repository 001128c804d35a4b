/*
 * program.h - OpenCL programs built at run time per device, with a binary cache.
 *
 * Kernel sources are the files of cl/, embedded into the binary at build time;
 * with STRATA_CL_DIR=path they are read from path instead (edit a kernel, run
 * again, no rebuild). A program is built for one device with -D options. The
 * built binary is cached on disk (STRATA_CACHE_DIR, else
 * $XDG_CACHE_HOME/strata, else ~/.cache/strata; STRATA_CACHE=0 turns the cache
 * off) under a key that hashes the source, the options, the device name, the
 * driver and platform versions and the cache format version. A cache entry
 * that is truncated, corrupt or refused by the driver is rebuilt and replaced,
 * never trusted. A cache folder that cannot be written turns caching off with
 * one warning.
 *
 * Not here: launching kernels (library code gets the cl_program through
 * strata/cl.h).
 */
#ifndef STRATA_PROGRAM_H
#define STRATA_PROGRAM_H

#include <stdbool.h>
#include <stdint.h>

#include "strata/device.h"
#include "strata/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct st_program st_program;

/* Builds cl/<file> (e.g. "fill.cl") for dev. A build failure is ST_ERR_BUILD
 * with the file, device, options and the whole build log in the message. */
st_status st_program_build(st_device *dev, const char *file, const char *options,
                           st_program **out);
/* The same for a source given in memory; `name` stands for the file in
 * messages and in the cache key. */
st_status st_program_build_source(st_device *dev, const char *name, const char *source,
                                  const char *options, st_program **out);
void st_program_destroy(st_program *prog);

/* The program cl/<file> with `options` for dev, built on first use and kept
 * (owned by the device) until st_device_close(). */
/* Builds this device's programs from now on as variant `variant` (0: the
 * plain ones): the same code compiled with -D STRATA_VARIANT=variant, and
 * CLBlast's programs with parameter values of their own that do not change
 * the results, so that the driver holds binaries for this device apart from
 * another's (st_device_open does this for PoCL's basic devices: see there).
 * Programs already built stay, and a return to a variant finds them again;
 * CLBlast keeps the last variant's parameters (they give the same bits). */
st_status st_device_set_variant(st_device *dev, unsigned variant);
unsigned st_device_variant(const st_device *dev);
/* Whether st_device_program would find the binary in the cache. */
bool st_device_program_cached(st_device *dev, const char *file, const char *options);
st_status st_device_program(st_device *dev, const char *file, const char *options,
                            st_program **out);

/* True when cl/<file> with `options` is in the on-disk cache for dev (a
 * build would load it rather than compile). */
bool st_program_cached(st_device *dev, const char *file, const char *options);

/* Before a run's first step: builds every kernel file of cl/ for each device
 * (through the cache) and compiles CLBlast's GEMM kernels with a warm-up
 * product, under a progress line ("building kernels for device 0 ... first
 * time on this device, cached for next time"), so that the first step does
 * not sit silent for a minute of compiling. Devices listed twice are
 * prepared once. */
st_status st_devices_prepare(st_device *const *devs, size_t n);

/* True when the program came from the on-disk cache rather than a compile. */
bool st_program_from_cache(const st_program *prog);

/* The text of cl/<file> as the build would use it (embedded or from
 * STRATA_CL_DIR); NULL and ST_ERR_NOT_FOUND / ST_ERR_IO when missing. The
 * caller frees it. */
st_status st_kernel_source(const char *file, char **out);

typedef struct st_cache_stats {
    uint64_t hits;           /* programs loaded from the cache */
    uint64_t misses;         /* no entry: compiled from source */
    uint64_t rejected;       /* an entry was there but corrupt or refused: rebuilt */
    uint64_t writes;         /* entries written */
    uint64_t write_failures; /* writes that failed (caching then turns off) */
} st_cache_stats;

st_cache_stats st_cache_get_stats(void);
/* Forgets the cache settings and statistics: the next build reads
 * STRATA_CACHE_DIR / STRATA_CACHE again (and may warn again). */
void st_cache_reset(void);
/* The folder in use, or NULL when caching is off. */
const char *st_cache_dir(void);
/* A file for one device under <cache root>/<folder>/ (created), named by a
 * hash of the device, driver and platform and `extra`; "" when caching is
 * off. Profiles and tunings live there. */
void st_cache_device_file(const st_device *dev, const char *folder, const char *extra,
                          char *out, size_t size);

#ifdef __cplusplus
}
#endif

#endif
