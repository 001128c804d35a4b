/*
 * gemm.h - matrix products through CLBlast, row-major.
 *
 *   C[m,n] = alpha * op(A)[m,k] . op(B)[k,n] + beta * C[m,n]
 *
 * op(X) is X or its transpose. Offsets are in elements from the start of each
 * tensor's view and leading dimensions are row strides in elements, as in
 * CLBlast. Operands are checked to lie inside their tensors before anything is
 * queued. Calls are queued on the device's queue and return without waiting.
 *
 * The first call of a kind compiles CLBlast's kernels (seconds on PoCL):
 * st_gemm_warmup() does that up front so that measured loops do not pay it.
 *
 * A and C are F32. B may be stored in 16 bits (BF16, F16: weights held as
 * st_param_storage says), in one unbatched product: the decoding kernels
 * read it as stored; CLBlast, which takes floats, gets it widened into its
 * float scratch (st_tensor_unpack: refused without one), a block of B's
 * rows (trans_b) or columns at a time, one call per block. Widening is
 * exact: the product is the one of B's float copy.
 */
#ifndef STRATA_GEMM_H
#define STRATA_GEMM_H

#include <stdbool.h>
#include <stddef.h>

#include "strata/device.h"
#include "strata/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct st_gemm_args {
    bool trans_a, trans_b;
    size_t m, n, k;
    float alpha, beta;
    const st_tensor *a;
    size_t a_offset, lda, a_stride; /* a_stride: elements between batch items */
    const st_tensor *b;
    size_t b_offset, ldb, b_stride;
    st_tensor *c;
    size_t c_offset, ldc, c_stride;
    size_t batch; /* 0 or 1: one product; more: strided-batched */
    /* A second, outer batch level (0 or 1: none): item (o, i) starts at
     * offset + o * x_outer + i * x_stride; one CLBlast call for all. */
    size_t outer, a_outer, b_outer, c_outer;
} st_gemm_args;

st_status st_gemm(const st_gemm_args *args);

/* The products of this thread are a decoding pass's (st_stage_pass sets it
 * around one): on CPU devices up to 256 rows go to Strata's own kernels
 * (cl/gemv.cl), which give a row the same bits whatever the other rows. */
void st_gemm_decoding(bool on);

/* C = alpha*op(A).op(B) + beta*C on whole row-major 2-D tensors, the common case. */
st_status st_matmul(bool trans_a, bool trans_b, float alpha, const st_tensor *a,
                    const st_tensor *b, float beta, st_tensor *c);

/* Compiles CLBlast's GEMM kernels for dev (small direct and large indirect
 * paths, batched) so that later calls run at full speed. */
st_status st_gemm_warmup(st_device *dev);

/* The plain-C reference the tests and `strata check` compare against; same
 * arguments, host arrays. */
void st_gemm_ref(bool trans_a, bool trans_b, size_t m, size_t n, size_t k, float alpha,
                 const float *a, size_t lda, const float *b, size_t ldb, float beta, float *c,
                 size_t ldc);

#ifdef __cplusplus
}
#endif

#endif
