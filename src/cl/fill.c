/* fill.c - launching the kernels of cl/fill.cl. */
#include "strata/cl.h"
#include "strata/tensor.h"

st_status st_tensor_fill(st_tensor *t, float value)
{
    if (st_tensor_dtype(t) != ST_F32)
        return st_error(ST_ERR_INVALID, "fill: tensor '%s' is %s, expected F32",
                        st_tensor_name(t), st_dtype_name(st_tensor_dtype(t)));
    size_t n = st_tensor_numel(t);
    return ST_LAUNCH(st_tensor_device(t), "fill.cl", "fill_f32", n, 64, ST_KT(t), ST_KU(n),
                     ST_KF(value));
}
