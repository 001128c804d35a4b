/*
 * device.h - OpenCL devices: enumeration, selection, opening, memory accounting.
 *
 *   st_device_list *list;
 *   if (st_device_list_create(&list) != ST_OK) die(st_last_error());
 *   size_t idx[ST_MAX_DEVICES], n;
 *   if (st_device_list_select(list, st_device_spec_resolve(flag), idx,
 *                             ST_MAX_DEVICES, &n) != ST_OK) die(st_last_error());
 *   st_device *dev;
 *   st_device_open(list, idx[0], &dev);
 *   ...
 *   st_device_close(dev);
 *   st_device_list_destroy(list);
 *
 * A device that is open owns one context and one in-order queue; each device
 * gets its own context so that devices of different platforms mix freely.
 * Device memory is counted by Strata itself (PoCL allocates lazily and would
 * report an overcommit late or never): every tensor reserves its bytes here
 * first, and a reservation beyond the capacity fails with a clear message.
 *
 * Not here: OpenCL types (strata/cl.h gives the handles to library code).
 */
#ifndef STRATA_DEVICE_H
#define STRATA_DEVICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "strata/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define ST_MAX_DEVICES 64

typedef enum st_device_type {
    ST_DEVICE_CPU = 1,
    ST_DEVICE_GPU = 2,
    ST_DEVICE_ACCELERATOR = 4,
    ST_DEVICE_OTHER = 8
} st_device_type;

/* What one device says about itself; plain data, copied freely. */
typedef struct st_device_info {
    unsigned index;          /* position in the enumeration, across platforms */
    unsigned platform_index; /* which platform, in the loader's order */
    char platform[128];
    char platform_version[128];
    char vendor[128];
    char name[256];
    char driver_version[128];
    char device_version[128];
    char opencl_c_version[128];
    st_device_type type;
    unsigned compute_units;
    unsigned clock_mhz;
    uint64_t global_mem;
    uint64_t max_alloc;
    uint64_t local_mem;
    bool fp16;
    bool fp64;
    /* Which hardware runs it, for devices that share it: "host CPU" for
     * every CPU device (PoCL's devices all run on the host's cores),
     * "PCI 0000:65:00.0" for a card whose driver tells its bus address
     * (the same card seen through two platforms), "" when unknown. Two
     * devices with the same non-empty value are planned as sharing. */
    char hardware[64];
} st_device_info;

typedef struct st_device_list st_device_list;
typedef struct st_device st_device;

typedef struct st_device_memory {
    uint64_t current;  /* bytes reserved now */
    uint64_t peak;     /* most bytes reserved at once since the device was opened */
    uint64_t capacity; /* reservations beyond this fail */
} st_device_memory;

/* Enumerates every device of every platform. No platform or no device at
 * all: ST_ERR_NO_DEVICE with a message that says how to install a driver. */
st_status st_device_list_create(st_device_list **out);
void st_device_list_destroy(st_device_list *list);
size_t st_device_list_count(const st_device_list *list);
const st_device_info *st_device_list_info(const st_device_list *list, size_t i);

/*
 * Resolves a device choice to indices into `infos`, in the order given,
 * without repeats. A choice is a comma-separated list of terms:
 *   all | gpu | cpu | accelerator   every device of that type
 *   3 | 0-2                         an index or a range of indices
 *   anything else                   devices whose name, vendor or platform
 *                                   contain it (case-insensitive)
 * A term that matches nothing or an index out of range is ST_ERR_NO_DEVICE
 * with a message that lists the devices that exist. Pure: no OpenCL calls.
 */
st_status st_device_select(const st_device_info *infos, size_t n_infos, const char *spec,
                           size_t *indices, size_t cap, size_t *n_out);
st_status st_device_list_select(const st_device_list *list, const char *spec,
                                size_t *indices, size_t cap, size_t *n_out);

/* The device choice in force: `flag` if given, else $STRATA_DEVICES if set
 * and not empty, else "all". */
const char *st_device_spec_resolve(const char *flag);

/* "cpu", "gpu", "accelerator" or "other". */
const char *st_device_type_name(st_device_type type);

/* Writes a table of the devices in `list` (one line each) to a string the
 * caller frees; used in messages that must say what exists. */
char *st_device_list_describe(const st_device_info *infos, size_t n_infos);

st_status st_device_open(const st_device_list *list, size_t index, st_device **out);
void st_device_close(st_device *dev);

const st_device_info *st_device_get_info(const st_device *dev);
/* A short label for messages: "device 1 'pthread-skylake...'". */
const char *st_device_label(const st_device *dev);

/* Waits until everything queued on the device has run. */
st_status st_device_finish(st_device *dev);

st_device_memory st_device_get_memory(const st_device *dev);
/* Lowers (or raises) the capacity used for accounting; 0 restores the
 * device's reported global memory. Fails if bytes already reserved exceed it. */
st_status st_device_set_capacity(st_device *dev, uint64_t bytes);

/* Reserves and releases bytes in the accounting; `what` names the buffer in
 * the message when the reservation is refused. */
st_status st_device_reserve(st_device *dev, uint64_t bytes, const char *what);
void st_device_release(st_device *dev, uint64_t bytes);
/* Starts the peak over from what is reserved now (after set-up work). */
void st_device_reset_peak(st_device *dev);

/* "1.50 GiB", "512.0 MiB", "12.0 KiB", "100 B" into buf. */
const char *st_format_bytes(uint64_t bytes, char *buf, size_t size);

#ifdef __cplusplus
}
#endif

#endif
