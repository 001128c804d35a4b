/* check.h - argument checks shared by the layer launchers. */
#ifndef STRATA_LAYERS_CHECK_H
#define STRATA_LAYERS_CHECK_H

#include "strata/tensor.h"

/* ST_OK when t exists, has dtype and at least n elements; else a message naming op and t. */
st_status st_op_need(const char *op, const st_tensor *t, size_t n, st_dtype dtype);

/* The same for a weight matrix: F32, or stored in 16 bits (BF16, F16). */
st_status st_op_need_w(const char *op, const st_tensor *t, size_t n);

#define NEED_W(op, t, n)                                                       \
    do {                                                                       \
        st_status s_ = st_op_need_w((op), (t), (n));                           \
        if (s_ != ST_OK)                                                       \
            return s_;                                                         \
    } while (0)

#define NEED(op, t, n)                                                         \
    do {                                                                       \
        st_status s_ = st_op_need((op), (t), (n), ST_F32);                     \
        if (s_ != ST_OK)                                                       \
            return s_;                                                         \
    } while (0)

#endif
