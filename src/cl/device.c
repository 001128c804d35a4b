/*
 * device.c - enumerating OpenCL devices, opening one (context + in-order
 * queue), and counting its memory.
 *
 * Not here: choosing devices from a user's words (select.c).
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "strata/cl.h"
#include "strata/tune.h"
#include "strata/device.h"
#include "strata/program.h"
#include "strata/profiler.h"

#define ST_DEVICE_MAX_PROGRAMS 64
#define ST_DEVICE_MAX_KERNELS 128

struct st_device_list {
    size_t n;
    st_device_info *infos;
    cl_platform_id *platforms; /* per device */
    cl_device_id *ids;         /* per device */
};

struct st_device {
    st_device_info info;
    char label[320];
    cl_context context;
    cl_command_queue queue;
    cl_device_id id;
    /* Stage threads, link threads and the main thread may allocate on one
     * device at once: the accounting is guarded. */
    pthread_mutex_t mem_lock;
    st_device_memory mem;
    /* Programs built once per device and kept until it closes; stage threads
     * may ask for them at once, hence the lock. */
    pthread_mutex_t prog_lock;
    size_t n_programs;
    struct {
        char file[64];
        char options[256];
        st_program *prog;
    } programs[ST_DEVICE_MAX_PROGRAMS];
    /* Kernels made once per (file, name). Setting a kernel's arguments and
     * enqueueing it must not interleave between threads: launch_lock. */
    pthread_mutex_t launch_lock;
    size_t n_kernels;
    struct {
        char file[64];
        char name[64];
        unsigned variant;
        cl_kernel kernel;
    } kernels[ST_DEVICE_MAX_KERNELS];
    st_prof_state *prof; /* NULL unless profiling */
    int tuning_source;   /* st_tuning_source */
    unsigned variant;    /* st_device_set_variant */
};

void st_device_set_tuning_source(st_device *dev, int source)
{
    dev->tuning_source = source;
}

st_tuning_source st_device_tuning_source(const st_device *dev)
{
    return (st_tuning_source)dev->tuning_source;
}

st_prof_state **st_device_prof_slot(st_device *dev)
{
    return &dev->prof;
}

static void copy_str_info(cl_device_id id, cl_device_info what, char *dst, size_t size)
{
    dst[0] = '\0';
    if (clGetDeviceInfo(id, what, size, dst, NULL) != CL_SUCCESS)
        snprintf(dst, size, "?");
    dst[size - 1] = '\0';
}

static void copy_platform_info(cl_platform_id p, cl_platform_info what, char *dst, size_t size)
{
    dst[0] = '\0';
    if (clGetPlatformInfo(p, what, size, dst, NULL) != CL_SUCCESS)
        snprintf(dst, size, "?");
    dst[size - 1] = '\0';
}

static bool has_extension(cl_device_id id, const char *ext)
{
    size_t len = 0;
    if (clGetDeviceInfo(id, CL_DEVICE_EXTENSIONS, 0, NULL, &len) != CL_SUCCESS || len == 0)
        return false;
    char *buf = malloc(len + 1);
    if (!buf)
        return false;
    bool found = false;
    if (clGetDeviceInfo(id, CL_DEVICE_EXTENSIONS, len, buf, NULL) == CL_SUCCESS) {
        buf[len] = '\0';
        size_t elen = strlen(ext);
        for (const char *p = strstr(buf, ext); p; p = strstr(p + 1, ext)) {
            bool starts = p == buf || p[-1] == ' ';
            bool ends = p[elen] == '\0' || p[elen] == ' ';
            if (starts && ends) {
                found = true;
                break;
            }
        }
    }
    free(buf);
    return found;
}

/* The PCI address where a driver tells it: cl_khr_pci_bus_info, NVIDIA's
 * and AMD's own queries (CL_DEVICE_PCI_BUS_ID_NV and _SLOT_ID_NV are not in
 * every cl_ext.h: their values are from NVIDIA's extension text). */
static void hardware_id(cl_device_id id, st_device_info *info)
{
    if (info->type == ST_DEVICE_CPU) {
        snprintf(info->hardware, sizeof info->hardware, "host CPU");
        return;
    }
    if (has_extension(id, "cl_khr_pci_bus_info")) {
        cl_device_pci_bus_info_khr pci;
        if (clGetDeviceInfo(id, CL_DEVICE_PCI_BUS_INFO_KHR, sizeof pci, &pci, NULL) ==
            CL_SUCCESS) {
            snprintf(info->hardware, sizeof info->hardware, "PCI %04x:%02x:%02x.%x",
                     pci.pci_domain, pci.pci_bus, pci.pci_device, pci.pci_function);
            return;
        }
    }
    if (has_extension(id, "cl_nv_device_attribute_query")) {
        cl_uint bus = 0, slot = 0; /* CL_DEVICE_PCI_BUS_ID_NV, CL_DEVICE_PCI_SLOT_ID_NV */
        if (clGetDeviceInfo(id, 0x4008, sizeof bus, &bus, NULL) == CL_SUCCESS &&
            clGetDeviceInfo(id, 0x4009, sizeof slot, &slot, NULL) == CL_SUCCESS) {
            snprintf(info->hardware, sizeof info->hardware, "PCI %02x:%02x.%x", bus,
                     slot >> 3, slot & 7);
            return;
        }
    }
    if (has_extension(id, "cl_amd_device_attribute_query")) {
        cl_device_topology_amd topo;
        if (clGetDeviceInfo(id, CL_DEVICE_TOPOLOGY_AMD, sizeof topo, &topo, NULL) ==
                CL_SUCCESS &&
            topo.raw.type == CL_DEVICE_TOPOLOGY_TYPE_PCIE_AMD)
            snprintf(info->hardware, sizeof info->hardware, "PCI %02x:%02x.%x",
                     (unsigned)(unsigned char)topo.pcie.bus,
                     (unsigned)(unsigned char)topo.pcie.device,
                     (unsigned)(unsigned char)topo.pcie.function);
    }
}

static void fill_info(cl_platform_id p, cl_device_id id, unsigned index, unsigned pindex,
                      st_device_info *info)
{
    memset(info, 0, sizeof *info);
    info->index = index;
    info->platform_index = pindex;
    copy_platform_info(p, CL_PLATFORM_NAME, info->platform, sizeof info->platform);
    copy_platform_info(p, CL_PLATFORM_VERSION, info->platform_version,
                       sizeof info->platform_version);
    copy_str_info(id, CL_DEVICE_VENDOR, info->vendor, sizeof info->vendor);
    copy_str_info(id, CL_DEVICE_NAME, info->name, sizeof info->name);
    copy_str_info(id, CL_DRIVER_VERSION, info->driver_version, sizeof info->driver_version);
    copy_str_info(id, CL_DEVICE_VERSION, info->device_version, sizeof info->device_version);
    copy_str_info(id, CL_DEVICE_OPENCL_C_VERSION, info->opencl_c_version,
                  sizeof info->opencl_c_version);

    cl_device_type type = 0;
    clGetDeviceInfo(id, CL_DEVICE_TYPE, sizeof type, &type, NULL);
    info->type = (type & CL_DEVICE_TYPE_GPU)           ? ST_DEVICE_GPU
                 : (type & CL_DEVICE_TYPE_CPU)         ? ST_DEVICE_CPU
                 : (type & CL_DEVICE_TYPE_ACCELERATOR) ? ST_DEVICE_ACCELERATOR
                                                       : ST_DEVICE_OTHER;
    cl_uint u = 0;
    if (clGetDeviceInfo(id, CL_DEVICE_MAX_COMPUTE_UNITS, sizeof u, &u, NULL) == CL_SUCCESS)
        info->compute_units = u;
    u = 0;
    if (clGetDeviceInfo(id, CL_DEVICE_MAX_CLOCK_FREQUENCY, sizeof u, &u, NULL) == CL_SUCCESS)
        info->clock_mhz = u;
    cl_ulong v = 0;
    if (clGetDeviceInfo(id, CL_DEVICE_GLOBAL_MEM_SIZE, sizeof v, &v, NULL) == CL_SUCCESS)
        info->global_mem = v;
    v = 0;
    if (clGetDeviceInfo(id, CL_DEVICE_MAX_MEM_ALLOC_SIZE, sizeof v, &v, NULL) == CL_SUCCESS)
        info->max_alloc = v;
    v = 0;
    if (clGetDeviceInfo(id, CL_DEVICE_LOCAL_MEM_SIZE, sizeof v, &v, NULL) == CL_SUCCESS)
        info->local_mem = v;
    cl_device_fp_config fp = 0;
    info->fp64 = (clGetDeviceInfo(id, CL_DEVICE_DOUBLE_FP_CONFIG, sizeof fp, &fp, NULL) ==
                      CL_SUCCESS &&
                  fp != 0) ||
                 has_extension(id, "cl_khr_fp64");
    info->fp16 = has_extension(id, "cl_khr_fp16");
    hardware_id(id, info);
}

static const char no_driver_hint[] =
    "install an OpenCL driver (Debian: `apt-get install pocl-opencl-icd` for CPUs, or the "
    "GPU vendor's OpenCL driver) and check that /etc/OpenCL/vendors (or $OCL_ICD_VENDORS) "
    "names it";

/* PoCL and CLBlast (LLVM inside) need address space to start: under
 * `ulimit -v` of 500-700 MB a tiny run died by SIGSEGV inside PoCL, and
 * below that the driver reported no device at all (800 MB was the least that
 * worked, one tiny run on the reference machine). Said before any call. */
#define MIN_ADDRESS_SPACE (1ull << 30)

static st_status check_address_space(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_AS, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY ||
        (unsigned long long)rl.rlim_cur >= MIN_ADDRESS_SPACE)
        return ST_OK;
    return st_error(ST_ERR_HOST_MEMORY,
                    "the host address space is limited to %llu MiB (ulimit -v), and the OpenCL "
                    "driver and CLBlast need at least %llu MiB to start (PoCL crashed below "
                    "800 MiB): raise the limit (`ulimit -v unlimited`, or %llu KiB or more)",
                    (unsigned long long)rl.rlim_cur >> 20, MIN_ADDRESS_SPACE >> 20,
                    MIN_ADDRESS_SPACE >> 10);
}

st_status st_device_list_create(st_device_list **out)
{
    st_status as = check_address_space();
    if (as != ST_OK)
        return as;
    cl_uint np = 0;
    cl_int err = clGetPlatformIDs(0, NULL, &np);
    if (err == CL_PLATFORM_NOT_FOUND_KHR || (err == CL_SUCCESS && np == 0))
        return st_error(ST_ERR_NO_DEVICE, "no OpenCL platform found: %s", no_driver_hint);
    if (err != CL_SUCCESS)
        return ST_CL_FAIL(err, "clGetPlatformIDs", NULL);

    st_status s = ST_ERR_HOST_MEMORY;
    st_device_list *list = calloc(1, sizeof *list);
    cl_platform_id *plats = calloc(np, sizeof *plats);
    if (!list || !plats)
        goto fail;
    err = clGetPlatformIDs(np, plats, NULL);
    if (err != CL_SUCCESS) {
        s = ST_CL_FAIL(err, "clGetPlatformIDs", NULL);
        goto fail;
    }
    for (cl_uint p = 0; p < np; p++) {
        cl_uint nd = 0;
        err = clGetDeviceIDs(plats[p], CL_DEVICE_TYPE_ALL, 0, NULL, &nd);
        if (err == CL_DEVICE_NOT_FOUND || nd == 0)
            continue; /* a platform without devices is not an error */
        if (err != CL_SUCCESS) {
            s = ST_CL_FAIL(err, "clGetDeviceIDs", NULL);
            goto fail;
        }
        size_t total = list->n + nd;
        st_device_info *infos = realloc(list->infos, total * sizeof *infos);
        if (infos)
            list->infos = infos;
        cl_platform_id *pl = realloc(list->platforms, total * sizeof *pl);
        if (pl)
            list->platforms = pl;
        cl_device_id *ids = realloc(list->ids, total * sizeof *ids);
        if (ids)
            list->ids = ids;
        if (!infos || !pl || !ids)
            goto fail;
        err = clGetDeviceIDs(plats[p], CL_DEVICE_TYPE_ALL, nd, list->ids + list->n, NULL);
        if (err != CL_SUCCESS) {
            s = ST_CL_FAIL(err, "clGetDeviceIDs", NULL);
            goto fail;
        }
        for (cl_uint d = 0; d < nd; d++) {
            size_t i = list->n + d;
            list->platforms[i] = plats[p];
            fill_info(plats[p], list->ids[i], (unsigned)i, p, &list->infos[i]);
        }
        list->n = total;
    }
    free(plats);
    if (list->n == 0) {
        st_device_list_destroy(list);
        return st_error(ST_ERR_NO_DEVICE,
                        "%u OpenCL platform(s) found but no device on any of them: %s", np,
                        no_driver_hint);
    }
    *out = list;
    return ST_OK;
fail:
    if (s == ST_ERR_HOST_MEMORY)
        st_error(s, "out of host memory while listing OpenCL devices");
    free(plats);
    st_device_list_destroy(list);
    return s;
}

void st_device_list_destroy(st_device_list *list)
{
    if (!list)
        return;
    free(list->infos);
    free(list->platforms);
    free(list->ids);
    free(list);
}

size_t st_device_list_count(const st_device_list *list)
{
    return list->n;
}

const st_device_info *st_device_list_info(const st_device_list *list, size_t i)
{
    return i < list->n ? &list->infos[i] : NULL;
}

st_status st_device_list_select(const st_device_list *list, const char *spec, size_t *indices,
                                size_t cap, size_t *n_out)
{
    return st_device_select(list->infos, list->n, spec, indices, cap, n_out);
}

const char *st_device_type_name(st_device_type type)
{
    switch (type) {
    case ST_DEVICE_CPU:
        return "cpu";
    case ST_DEVICE_GPU:
        return "gpu";
    case ST_DEVICE_ACCELERATOR:
        return "accelerator";
    default:
        return "other";
    }
}

st_status st_device_open(const st_device_list *list, size_t index, st_device **out)
{
    if (index >= list->n)
        return st_error(ST_ERR_NO_DEVICE, "device index %zu is out of range: %zu device(s) exist",
                        index, list->n);
    st_device *dev = calloc(1, sizeof *dev);
    if (!dev)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory opening device %zu", index);
    dev->info = list->infos[index];
    dev->id = list->ids[index];
    snprintf(dev->label, sizeof dev->label, "device %u '%s'", dev->info.index, dev->info.name);
    dev->mem.capacity = dev->info.global_mem;
    pthread_mutex_init(&dev->mem_lock, NULL);
    pthread_mutex_init(&dev->prog_lock, NULL);
    pthread_mutex_init(&dev->launch_lock, NULL);

    st_status s;
    cl_int err;
    cl_context_properties props[] = {CL_CONTEXT_PLATFORM,
                                     (cl_context_properties)list->platforms[index], 0};
    dev->context = clCreateContext(props, 1, &dev->id, NULL, NULL, &err);
    if (err != CL_SUCCESS) {
        s = ST_CL_FAIL(err, "clCreateContext", dev);
        goto fail;
    }
    bool profile = st_profiler_enabled();
    dev->queue = clCreateCommandQueue(dev->context, dev->id,
                                      profile ? CL_QUEUE_PROFILING_ENABLE : 0, &err);
    if (err != CL_SUCCESS) {
        s = ST_CL_FAIL(err, "clCreateCommandQueue", dev);
        goto fail;
    }
    if (profile && !(dev->prof = st_prof_state_new())) {
        s = st_error(ST_ERR_HOST_MEMORY, "out of host memory opening %s", dev->label);
        goto fail;
    }
    /* A saved CLBlast tuning (`strata tune`) applies from the first product on. */
    size_t tuned = 0;
    if (st_tuning_load(dev, &tuned) != ST_OK)
        st_log(ST_LOG_WARN, "%s", st_last_error());
    else if (tuned)
        st_log(ST_LOG_INFO, "%s: GEMM parameters from %s", dev->label,
               st_tuning_source_name(st_device_tuning_source(dev)));
    /* PoCL 3.1 keeps one table of loaded kernel binaries for all its CPU
     * devices, and loses count in it (an assertion in
     * pocl_release_dlhandle_cache) when two devices of its basic driver, each
     * on a thread of its own, run one binary's kernel at once with different
     * grid sizes, as replicas in lockstep and pipeline stages do. Each such
     * device past the first builds binaries of its own. */
    if (strstr(dev->info.platform, "Portable Computing Language") &&
        strncmp(dev->info.name, "basic", 5) == 0 && dev->info.index > 0 &&
        (s = st_device_set_variant(dev, dev->info.index)) != ST_OK)
        goto fail;
    *out = dev;
    return ST_OK;
fail:
    st_device_close(dev);
    return s;
}

void st_device_close(st_device *dev)
{
    if (!dev)
        return;
    for (size_t i = 0; i < dev->n_kernels; i++)
        clReleaseKernel(dev->kernels[i].kernel);
    for (size_t i = 0; i < dev->n_programs; i++)
        st_program_destroy(dev->programs[i].prog);
    if (dev->queue) {
        clFinish(dev->queue);
        st_prof_state_free(dev->prof);
        clReleaseCommandQueue(dev->queue);
    }
    if (dev->context)
        clReleaseContext(dev->context);
    pthread_mutex_destroy(&dev->mem_lock);
    pthread_mutex_destroy(&dev->prog_lock);
    pthread_mutex_destroy(&dev->launch_lock);
    free(dev);
}

const st_device_info *st_device_get_info(const st_device *dev)
{
    return &dev->info;
}

const char *st_device_label(const st_device *dev)
{
    return dev->label;
}

cl_context st_device_cl_context(const st_device *dev)
{
    return dev->context;
}

cl_command_queue st_device_cl_queue(const st_device *dev)
{
    return dev->queue;
}

cl_device_id st_device_cl_id(const st_device *dev)
{
    return dev->id;
}

st_status st_device_finish(st_device *dev)
{
    cl_int err = clFinish(dev->queue);
    return err == CL_SUCCESS ? ST_OK : ST_CL_FAIL(err, "clFinish", dev);
}

st_device_memory st_device_get_memory(const st_device *dev)
{
    st_device *d = (st_device *)dev; /* the lock is not part of the value */
    pthread_mutex_lock(&d->mem_lock);
    st_device_memory m = d->mem;
    pthread_mutex_unlock(&d->mem_lock);
    return m;
}

st_status st_device_set_capacity(st_device *dev, uint64_t bytes)
{
    if (bytes == 0)
        bytes = dev->info.global_mem;
    st_status s = ST_OK;
    pthread_mutex_lock(&dev->mem_lock);
    if (dev->mem.current > bytes) {
        char a[32], b[32];
        s = st_error(ST_ERR_INVALID,
                     "cannot limit %s to %s: %s are already in use; set the limit before "
                     "loading the model",
                     dev->label, st_format_bytes(bytes, a, sizeof a),
                     st_format_bytes(dev->mem.current, b, sizeof b));
    } else {
        dev->mem.capacity = bytes;
    }
    pthread_mutex_unlock(&dev->mem_lock);
    return s;
}

st_status st_device_reserve(st_device *dev, uint64_t bytes, const char *what)
{
    char a[32], b[32], c[32], d[32];
    if (dev->info.max_alloc && bytes > dev->info.max_alloc)
        return st_error(ST_ERR_DEVICE_MEMORY,
                        "%s: cannot allocate %s for '%s': the device allows at most %s in one "
                        "buffer; use a smaller model dimension or batch",
                        dev->label, st_format_bytes(bytes, a, sizeof a), what,
                        st_format_bytes(dev->info.max_alloc, b, sizeof b));
    st_status s = ST_OK;
    pthread_mutex_lock(&dev->mem_lock);
    if (bytes > dev->mem.capacity || dev->mem.current > dev->mem.capacity - bytes) {
        uint64_t missing = dev->mem.current + bytes - dev->mem.capacity;
        s = st_error(ST_ERR_DEVICE_MEMORY,
                     "%s: out of device memory allocating %s for '%s': %s of %s already in "
                     "use, %s missing; use a smaller batch or model, or split the model over "
                     "more devices (--devices)",
                     dev->label, st_format_bytes(bytes, a, sizeof a), what,
                     st_format_bytes(dev->mem.current, b, sizeof b),
                     st_format_bytes(dev->mem.capacity, c, sizeof c),
                     st_format_bytes(missing, d, sizeof d));
    } else {
        dev->mem.current += bytes;
        if (dev->mem.current > dev->mem.peak)
            dev->mem.peak = dev->mem.current;
    }
    pthread_mutex_unlock(&dev->mem_lock);
    return s;
}

void st_device_reset_peak(st_device *dev)
{
    pthread_mutex_lock(&dev->mem_lock);
    dev->mem.peak = dev->mem.current;
    pthread_mutex_unlock(&dev->mem_lock);
}

void st_device_release(st_device *dev, uint64_t bytes)
{
    pthread_mutex_lock(&dev->mem_lock);
    if (bytes > dev->mem.current) {
        fprintf(stderr, "strata: %s:%d: released %" PRIu64 " bytes with %" PRIu64
                        " reserved on %s\n",
                __FILE__, __LINE__, bytes, dev->mem.current, dev->label);
        abort();
    }
    dev->mem.current -= bytes;
    pthread_mutex_unlock(&dev->mem_lock);
}

const char *st_format_bytes(uint64_t bytes, char *buf, size_t size)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)bytes;
    int u = 0;
    while (v >= 1024.0 && u < 4) {
        v /= 1024.0;
        u++;
    }
    if (u == 0)
        snprintf(buf, size, "%" PRIu64 " B", bytes);
    else
        snprintf(buf, size, "%.*f %s", v < 10 ? 2 : 1, v, units[u]);
    return buf;
}

st_status st_device_set_variant(st_device *dev, unsigned variant)
{
    if (variant == dev->variant)
        return ST_OK;
    /* CLBlast keys its programs by its parameters' values: a value of its
     * own in a kernel the products never run gives this device programs of
     * its own. The copy kernel only moves numbers, and the triangular solve
     * block is not used by the matrix-vector product, so the results are
     * the same bits. */
    st_tuning t[2] = {{.kernel = "Copy", .n = 4}, {.kernel = "TrsvRoutine", .n = 1}};
    static const char *const copy[] = {"COPY_DIMX", "COPY_DIMY", "COPY_VW", "COPY_WPT"};
    const size_t copy_values[] = {16, 16, 4, 2 + variant};
    for (size_t i = 0; i < 4; i++) {
        snprintf(t[0].names[i], sizeof t[0].names[i], "%s", copy[i]);
        t[0].values[i] = copy_values[i];
    }
    snprintf(t[1].names[0], sizeof t[1].names[0], "TRSV_BLOCK_SIZE");
    t[1].values[0] = 32 + variant;
    for (size_t i = 0; i < 2; i++) {
        st_status s = st_tuning_apply(dev, &t[i]);
        if (s != ST_OK)
            return s;
    }
    pthread_mutex_lock(&dev->prog_lock);
    pthread_mutex_lock(&dev->launch_lock);
    dev->variant = variant;
    pthread_mutex_unlock(&dev->launch_lock);
    pthread_mutex_unlock(&dev->prog_lock);
    return ST_OK;
}

unsigned st_device_variant(const st_device *dev)
{
    return dev->variant;
}

/* The options a program is built with on this device: the caller's, and the
 * variant's define. False if they do not fit. */
static bool variant_options(const st_device *dev, const char *options, char *out, size_t size)
{
    int n = dev->variant ? snprintf(out, size, "%s%sSTRATA_VARIANT=%u", options,
                                    options[0] ? " -D " : "-D ", dev->variant)
                         : snprintf(out, size, "%s", options);
    return n >= 0 && (size_t)n < size;
}

bool st_device_program_cached(st_device *dev, const char *file, const char *options_in)
{
    char options[sizeof dev->programs[0].options];
    return variant_options(dev, options_in ? options_in : "", options, sizeof options) &&
           st_program_cached(dev, file, options);
}

st_status st_device_program(st_device *dev, const char *file, const char *options_in,
                            st_program **out)
{
    char options[sizeof dev->programs[0].options];
    if (!options_in)
        options_in = "";
    if (strlen(file) >= sizeof dev->programs[0].file ||
        !variant_options(dev, options_in, options, sizeof options))
        return st_error(ST_ERR_INVALID, "program name or options too long: %s %s", file,
                        options_in);
    st_status s = ST_OK;
    pthread_mutex_lock(&dev->prog_lock);
    for (size_t i = 0; i < dev->n_programs; i++) {
        if (strcmp(dev->programs[i].file, file) == 0 &&
            strcmp(dev->programs[i].options, options) == 0) {
            *out = dev->programs[i].prog;
            goto done;
        }
    }
    if (dev->n_programs == ST_DEVICE_MAX_PROGRAMS) {
        s = st_error(ST_ERR_INVALID, "%s: more than %d programs", dev->label,
                     ST_DEVICE_MAX_PROGRAMS);
        goto done;
    }
    st_program *prog;
    s = st_program_build(dev, file, options, &prog);
    if (s != ST_OK)
        goto done;
    size_t i = dev->n_programs++;
    snprintf(dev->programs[i].file, sizeof dev->programs[i].file, "%s", file);
    snprintf(dev->programs[i].options, sizeof dev->programs[i].options, "%s", options);
    dev->programs[i].prog = prog;
    *out = prog;
done:
    pthread_mutex_unlock(&dev->prog_lock);
    return s;
}

st_status st_device_kernel(st_device *dev, const char *file, const char *name, cl_kernel *out)
{
    if (strlen(file) >= sizeof dev->kernels[0].file || strlen(name) >= sizeof dev->kernels[0].name)
        return st_error(ST_ERR_INVALID, "kernel name too long: %s %s", file, name);
    pthread_mutex_lock(&dev->launch_lock);
    for (size_t i = 0; i < dev->n_kernels; i++) {
        if (strcmp(dev->kernels[i].name, name) == 0 && strcmp(dev->kernels[i].file, file) == 0 &&
            dev->kernels[i].variant == dev->variant) {
            *out = dev->kernels[i].kernel;
            pthread_mutex_unlock(&dev->launch_lock);
            return ST_OK;
        }
    }
    pthread_mutex_unlock(&dev->launch_lock);

    /* "file.cl#NAME": the file built with NAME defined (a storage type) */
    char path[sizeof dev->kernels[0].file], options[96] = "";
    snprintf(path, sizeof path, "%s", file);
    char *hash = strchr(path, '#');
    if (hash) {
        *hash = '\0';
        snprintf(options, sizeof options, "-D %s", hash + 1);
    }
    st_program *prog;
    st_status s = st_device_program(dev, path, options, &prog);
    if (s != ST_OK)
        return s;
    cl_kernel k;
    if ((s = st_program_kernel(prog, name, &k)) != ST_OK)
        return s;
    pthread_mutex_lock(&dev->launch_lock);
    if (dev->n_kernels == ST_DEVICE_MAX_KERNELS) {
        pthread_mutex_unlock(&dev->launch_lock);
        clReleaseKernel(k);
        return st_error(ST_ERR_INVALID, "%s: more than %d kernels", dev->label,
                        ST_DEVICE_MAX_KERNELS);
    }
    size_t i = dev->n_kernels++;
    snprintf(dev->kernels[i].file, sizeof dev->kernels[i].file, "%s", file);
    snprintf(dev->kernels[i].name, sizeof dev->kernels[i].name, "%s", name);
    dev->kernels[i].variant = dev->variant;
    dev->kernels[i].kernel = k;
    pthread_mutex_unlock(&dev->launch_lock);
    *out = k;
    return ST_OK;
}

void st_device_launch_lock(st_device *dev)
{
    pthread_mutex_lock(&dev->launch_lock);
}

void st_device_launch_unlock(st_device *dev)
{
    pthread_mutex_unlock(&dev->launch_lock);
}
