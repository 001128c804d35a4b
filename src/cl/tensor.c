/*
 * tensor.c - device buffers with shapes, views, and blocking host copies.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "strata/cl.h"
#include "strata/tensor.h"

/* One device allocation, shared by a tensor and its views. */
typedef struct st_alloc {
    st_device *dev;
    cl_mem mem;
    size_t bytes;
    atomic_int refs;
} st_alloc;

struct st_tensor {
    st_alloc *alloc;
    st_dtype dtype;
    int ndim;
    size_t shape[ST_MAX_DIMS];
    size_t numel;
    size_t offset; /* elements from the start of the allocation */
    char name[64];
    st_tensor *unpack; /* 16-bit: float scratch for products (not owned), or NULL */
};

size_t st_dtype_size(st_dtype dtype)
{
    switch (dtype) {
    case ST_F32:
    case ST_I32:
        return 4;
    case ST_BF16:
    case ST_F16:
        return 2;
    }
    return 0;
}

const char *st_dtype_name(st_dtype dtype)
{
    switch (dtype) {
    case ST_F32:
        return "F32";
    case ST_I32:
        return "I32";
    case ST_BF16:
        return "BF16";
    case ST_F16:
        return "F16";
    }
    return "?";
}

int st_dtype_parse(const char *name)
{
    static const struct {
        const char *name;
        st_dtype dtype;
    } names[] = {{"f32", ST_F32},  {"fp32", ST_F32},     {"float32", ST_F32},
                 {"bf16", ST_BF16}, {"bfloat16", ST_BF16}, {"f16", ST_F16},
                 {"fp16", ST_F16},  {"float16", ST_F16}};
    for (size_t i = 0; name && i < sizeof names / sizeof names[0]; i++)
        if (strcasecmp(name, names[i].name) == 0)
            return (int)names[i].dtype;
    return -1;
}

static st_status check_shape(int ndim, const size_t *shape, const char *name, size_t *numel)
{
    if (ndim < 1 || ndim > ST_MAX_DIMS)
        return st_error(ST_ERR_INVALID, "tensor '%s': %d dimensions (1 to %d allowed)", name,
                        ndim, ST_MAX_DIMS);
    size_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] == 0)
            return st_error(ST_ERR_INVALID, "tensor '%s': dimension %d is 0", name, i);
        if (n > SIZE_MAX / 8 / shape[i])
            return st_error(ST_ERR_INVALID, "tensor '%s': shape too large", name);
        n *= shape[i];
    }
    *numel = n;
    return ST_OK;
}

static st_tensor *new_tensor(st_alloc *alloc, st_dtype dtype, int ndim, const size_t *shape,
                             size_t numel, size_t offset, const char *name)
{
    st_tensor *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->alloc = alloc;
    t->dtype = dtype;
    t->ndim = ndim;
    memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
    t->numel = numel;
    t->offset = offset;
    snprintf(t->name, sizeof t->name, "%s", name ? name : "tensor");
    return t;
}

st_status st_tensor_create(st_device *dev, st_dtype dtype, int ndim, const size_t *shape,
                           const char *name, st_tensor **out)
{
    if (!name)
        name = "tensor";
    size_t numel = 0;
    st_status s = check_shape(ndim, shape, name, &numel);
    if (s != ST_OK)
        return s;
    size_t bytes = numel * st_dtype_size(dtype);
    s = st_device_reserve(dev, bytes, name);
    if (s != ST_OK)
        return s;

    st_alloc *alloc = calloc(1, sizeof *alloc);
    st_tensor *t = alloc ? new_tensor(alloc, dtype, ndim, shape, numel, 0, name) : NULL;
    if (!t) {
        s = st_error(ST_ERR_HOST_MEMORY, "out of host memory creating tensor '%s'", name);
        goto fail;
    }
    alloc->dev = dev;
    alloc->bytes = bytes;
    atomic_init(&alloc->refs, 1);

    cl_int err;
    alloc->mem = clCreateBuffer(st_device_cl_context(dev), CL_MEM_READ_WRITE, bytes, NULL, &err);
    if (err != CL_SUCCESS) {
        s = ST_CL_FAIL(err, "clCreateBuffer", dev);
        goto fail_ctx;
    }
    /* Zero-filling touches every page now: a driver that allocates lazily
     * fails here, with the tensor's name, instead of inside a later kernel. */
    const cl_uint zero = 0; /* a pattern of the element's size: bytes is a multiple of it */
    err = clEnqueueFillBuffer(st_device_cl_queue(dev), alloc->mem, &zero, st_dtype_size(dtype),
                              0, bytes, 0, NULL, NULL);
    if (err == CL_SUCCESS)
        err = clFinish(st_device_cl_queue(dev));
    if (err != CL_SUCCESS) {
        s = ST_CL_FAIL(err, "clEnqueueFillBuffer", dev);
        goto fail_ctx;
    }
    *out = t;
    return ST_OK;
fail_ctx:
    st_error_context("creating tensor '%s' (%zu bytes)", name, bytes);
fail:
    if (alloc && alloc->mem)
        clReleaseMemObject(alloc->mem);
    free(alloc);
    free(t);
    st_device_release(dev, bytes);
    return s;
}

st_status st_tensor_view(st_tensor *base, size_t offset, int ndim, const size_t *shape,
                         st_tensor **out)
{
    size_t numel = 0;
    st_status s = check_shape(ndim, shape, base->name, &numel);
    if (s != ST_OK)
        return s;
    if (offset > base->numel || numel > base->numel - offset)
        return st_error(ST_ERR_INVALID,
                        "view of %zu elements at offset %zu does not fit in tensor '%s' of %zu "
                        "elements",
                        numel, offset, base->name, base->numel);
    st_tensor *t = new_tensor(base->alloc, base->dtype, ndim, shape, numel,
                              base->offset + offset, base->name);
    if (!t)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory creating a view of '%s'",
                        base->name);
    atomic_fetch_add(&base->alloc->refs, 1);
    *out = t;
    return ST_OK;
}

void st_tensor_destroy(st_tensor *t)
{
    if (!t)
        return;
    st_alloc *a = t->alloc;
    free(t);
    if (atomic_fetch_sub(&a->refs, 1) != 1)
        return;
    clReleaseMemObject(a->mem);
    st_device_release(a->dev, a->bytes);
    free(a);
}

st_device *st_tensor_device(const st_tensor *t)
{
    return t->alloc->dev;
}

st_dtype st_tensor_dtype(const st_tensor *t)
{
    return t->dtype;
}

int st_tensor_ndim(const st_tensor *t)
{
    return t->ndim;
}

size_t st_tensor_dim(const st_tensor *t, int i)
{
    return i >= 0 && i < t->ndim ? t->shape[i] : 1;
}

size_t st_tensor_numel(const st_tensor *t)
{
    return t->numel;
}

size_t st_tensor_offset(const st_tensor *t)
{
    return t->offset;
}

const char *st_tensor_name(const st_tensor *t)
{
    return t->name;
}

cl_mem st_tensor_cl_mem(const st_tensor *t)
{
    return t->alloc->mem;
}

static st_status check_range(const st_tensor *t, size_t first, size_t count, const char *what)
{
    if (first > t->numel || count > t->numel - first)
        return st_error(ST_ERR_INVALID,
                        "%s of %zu elements at %zu is outside tensor '%s' of %zu elements", what,
                        count, first, t->name, t->numel);
    return ST_OK;
}

static st_status write_to(st_tensor *t, size_t first, size_t count, const void *host,
                          cl_bool blocking)
{
    st_status s = check_range(t, first, count, "write");
    if (s != ST_OK || count == 0)
        return s;
    size_t es = st_dtype_size(t->dtype);
    st_device *dev = t->alloc->dev;
    cl_event ev = NULL;
    cl_int err = clEnqueueWriteBuffer(st_device_cl_queue(dev), t->alloc->mem, blocking,
                                      (t->offset + first) * es, count * es, host, 0, NULL,
                                      st_profiler_event(dev, &ev));
    if (err != CL_SUCCESS) {
        s = ST_CL_FAIL(err, "clEnqueueWriteBuffer", dev);
        st_error_context("writing tensor '%s'", t->name);
    } else if (ev) {
        st_profiler_record(dev, "copy host->device", ev, (double)(count * es), 0);
    }
    return s;
}

st_status st_tensor_write(st_tensor *t, size_t first, size_t count, const void *host)
{
    return write_to(t, first, count, host, CL_TRUE);
}

st_status st_tensor_write_queued(st_tensor *t, size_t first, size_t count, const void *host)
{
    return write_to(t, first, count, host, CL_FALSE);
}

st_status st_tensor_read(const st_tensor *t, size_t first, size_t count, void *host)
{
    st_status s = check_range(t, first, count, "read");
    if (s != ST_OK || count == 0)
        return s;
    size_t es = st_dtype_size(t->dtype);
    st_device *dev = t->alloc->dev;
    cl_event ev = NULL;
    cl_int err = clEnqueueReadBuffer(st_device_cl_queue(dev), t->alloc->mem, CL_TRUE,
                                     (t->offset + first) * es, count * es, host, 0, NULL,
                                      st_profiler_event(dev, &ev));
    if (err != CL_SUCCESS) {
        s = ST_CL_FAIL(err, "clEnqueueReadBuffer", dev);
        st_error_context("reading tensor '%s'", t->name);
    } else if (ev) {
        st_profiler_record(dev, "copy device->host", ev, (double)(count * es), 0);
    }
    return s;
}

st_status st_tensor_copy(st_tensor *dst, size_t dst_first, const st_tensor *src,
                         size_t src_first, size_t count)
{
    st_status s = check_range(dst, dst_first, count, "copy");
    if (s == ST_OK)
        s = check_range(src, src_first, count, "copy");
    if (s != ST_OK || count == 0)
        return s;
    if (dst->alloc->dev != src->alloc->dev || dst->dtype != src->dtype)
        return st_error(ST_ERR_INVALID,
                        "copy from '%s' to '%s': tensors must be on one device and of one type",
                        src->name, dst->name);
    size_t es = st_dtype_size(dst->dtype);
    st_device *dev = dst->alloc->dev;
    cl_event ev = NULL;
    cl_int err = clEnqueueCopyBuffer(st_device_cl_queue(dev), src->alloc->mem, dst->alloc->mem,
                                     (src->offset + src_first) * es,
                                     (dst->offset + dst_first) * es, count * es, 0, NULL,
                                     st_profiler_event(dev, &ev));
    if (err != CL_SUCCESS) {
        s = ST_CL_FAIL(err, "clEnqueueCopyBuffer", dev);
        st_error_context("copying tensor '%s' to '%s'", src->name, dst->name);
    } else if (ev) {
        st_profiler_record(dev, "copy device->device", ev, 2.0 * (double)(count * es), 0);
    }
    return s;
}

void st_tensor_set_unpack(st_tensor *t, st_tensor *scratch)
{
    t->unpack = scratch;
}

st_tensor *st_tensor_unpack(const st_tensor *t)
{
    return t->unpack;
}
