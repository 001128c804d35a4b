/* launch.c - setting a kernel's arguments and enqueueing it, under the device's launch lock. */
#include <stdio.h>

#include "strata/cl.h"

static st_status set_args(st_device *dev, cl_kernel k, const char *name, size_t nargs,
                          const st_karg *args)
{
    cl_uint idx = 0;
    for (size_t a = 0; a < nargs; a++) {
        cl_int err;
        const st_karg *x = &args[a];
        switch (x->kind) {
        case 't': {
            if (!x->t)
                return st_error(ST_ERR_INVALID, "kernel %s: tensor argument %zu is missing", name,
                                a);
            if (st_tensor_device(x->t) != dev)
                return st_error(ST_ERR_INVALID, "kernel %s: tensor '%s' is on %s, not on %s",
                                name, st_tensor_name(x->t),
                                st_device_label(st_tensor_device(x->t)), st_device_label(dev));
            cl_mem m = st_tensor_cl_mem(x->t);
            cl_ulong off = st_tensor_offset(x->t);
            err = clSetKernelArg(k, idx++, sizeof m, &m);
            if (err == CL_SUCCESS)
                err = clSetKernelArg(k, idx++, sizeof off, &off);
            break;
        }
        case 'i':
            err = clSetKernelArg(k, idx++, sizeof x->i, &x->i);
            break;
        case 'u':
            err = clSetKernelArg(k, idx++, sizeof x->u, &x->u);
            break;
        case 'f':
            err = clSetKernelArg(k, idx++, sizeof x->f, &x->f);
            break;
        default:
            return st_error(ST_ERR_INVALID, "kernel %s: argument %zu has no kind", name, a);
        }
        if (err != CL_SUCCESS) {
            st_status s = ST_CL_FAIL(err, "clSetKernelArg", dev);
            st_error_context("kernel %s argument %u", name, idx - 1);
            return s;
        }
    }
    return ST_OK;
}

const char *st_typed_file(const char *file, st_dtype dt, char *buf, size_t size)
{
    if (dt != ST_BF16 && dt != ST_F16)
        return file;
    snprintf(buf, size, "%s#%s", file, dt == ST_BF16 ? "W_BF16" : "W_F16");
    return buf;
}

st_status st_launch(st_device *dev, const char *file, const char *name, size_t global,
                    size_t local, size_t nargs, const st_karg *args)
{
    if (global == 0)
        return ST_OK;
    cl_kernel k;
    st_status s = st_device_kernel(dev, file, name, &k);
    if (s != ST_OK)
        return s;
    size_t g = local ? (global + local - 1) / local * local : global;
    cl_event ev = NULL;
    st_device_launch_lock(dev);
    s = set_args(dev, k, name, nargs, args);
    if (s == ST_OK) {
        cl_int err = clEnqueueNDRangeKernel(st_device_cl_queue(dev), k, 1, NULL, &g,
                                            local ? &local : NULL, 0, NULL,
                                            st_profiler_event(dev, &ev));
        if (err != CL_SUCCESS) {
            s = ST_CL_FAIL(err, "clEnqueueNDRangeKernel", dev);
            st_error_context("kernel %s", name);
        }
    }
    st_device_launch_unlock(dev);
    if (s == ST_OK && ev) {
        /* Bytes: each tensor argument read or written once (an estimate). */
        double bytes = 0;
        for (size_t a = 0; a < nargs; a++)
            if (args[a].kind == 't')
                bytes += (double)st_tensor_numel(args[a].t) *
                         (double)st_dtype_size(st_tensor_dtype(args[a].t));
        st_profiler_record(dev, name, ev, bytes, 0);
    }
    return s;
}
