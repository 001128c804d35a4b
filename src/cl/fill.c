/* fill.c - launching the kernels of cl/fill.cl. */
#include "strata/cl.h"
#include "strata/tensor.h"

st_status st_tensor_fill(st_tensor *t, float value)
{
    if (st_tensor_dtype(t) != ST_F32)
        return st_error(ST_ERR_INVALID, "fill: tensor '%s' is %s, expected F32",
                        st_tensor_name(t), st_dtype_name(st_tensor_dtype(t)));
    st_device *dev = st_tensor_device(t);
    st_program *prog;
    st_status s = st_device_program(dev, "fill.cl", "", &prog);
    if (s != ST_OK)
        return s;
    cl_kernel k;
    if ((s = st_program_kernel(prog, "fill_f32", &k)) != ST_OK)
        return s;
    cl_mem mem = st_tensor_cl_mem(t);
    cl_ulong off = st_tensor_offset(t), n = st_tensor_numel(t);
    cl_int err = clSetKernelArg(k, 0, sizeof mem, &mem);
    err |= clSetKernelArg(k, 1, sizeof off, &off);
    err |= clSetKernelArg(k, 2, sizeof n, &n);
    err |= clSetKernelArg(k, 3, sizeof value, &value);
    if (err != CL_SUCCESS) {
        clReleaseKernel(k);
        return ST_CL_FAIL(CL_INVALID_KERNEL_ARGS, "clSetKernelArg(fill_f32)", dev);
    }
    size_t local = 64;
    size_t global = (n + local - 1) / local * local;
    err = clEnqueueNDRangeKernel(st_device_cl_queue(dev), k, 1, NULL, &global, &local, 0, NULL,
                                 NULL);
    /* Releasing right after enqueue is safe: the queue keeps the kernel alive. */
    clReleaseKernel(k);
    return err == CL_SUCCESS ? ST_OK : ST_CL_FAIL(err, "clEnqueueNDRangeKernel(fill_f32)", dev);
}
