/*
 * gemv.cl - a few rows x against a matrix (decoding: one token, or one
 * token of each of a few sequences), the CPU form:
 *   gemv_rows: c = alpha * x W^T + beta * c, W [n, k] stored by rows (ldw),
 *              x [m, k] (ldx), c [m, n] (ldc): a work-item per output
 *              column, eight of the row's contiguous values at a time, for
 *              four rows of x at once (then two, one) (PoCL runs a
 *              work-group's items one after another, so each row of W
 *              streams from memory once and stays in cache for the other
 *              rows of x; the vector arithmetic is explicit);
 *   gemv_cols: c = alpha * x W + beta * c, W [k, n] stored by rows (ldw): a
 *              work-item per eight neighbouring output columns, down the
 *              rows, for four rows of x at once (then two, one).
 * Each row of x gets the same sums in the same order whatever m is, so a
 * token decoded with others has the bits it has alone. Blocks of four rows
 * ran faster than blocks of eight on PoCL (8 sequences of an 82M Llama:
 * 203 against 183 tok/s), and only with their loops unrolled by pragma
 * (37 against 63 ms a step: unrolled, the sums stay in registers). beta 0
 * does not read c.
 */
/* R rows of x from row i against the matrix row `row`: R float8 sums side
 * by side, each row's in the order one row alone takes. */
#define GEMV_ROWS_BLOCK(R)                                                                   \
    for (; i + (R) <= m; i += (R)) {                                                         \
        float8 a[R];                                                                         \
        _Pragma("unroll") for (int q = 0; q < (R); q++)                                      \
            a[q] = (float8)(0.0f);                                                           \
        int j = 0;                                                                           \
        for (; j + 8 <= k; j += 8) {                                                         \
            const float8 wr = vload8(0, row + j);                                            \
            _Pragma("unroll") for (int q = 0; q < (R); q++)                                  \
                a[q] += wr * vload8(0, v + (size_t)(i + q) * ldx + j);                       \
        }                                                                                    \
        for (int q = 0; q < (R); q++) {                                                      \
            __global const float *vq = v + (size_t)(i + q) * ldx;                            \
            float s = ((a[q].s0 + a[q].s1) + (a[q].s2 + a[q].s3)) +                          \
                      ((a[q].s4 + a[q].s5) + (a[q].s6 + a[q].s7));                           \
            for (int e = j; e < k; e++)                                                      \
                s += row[e] * vq[e];                                                         \
            __global float *o = out + (size_t)(i + q) * ldc;                                 \
            *o = beta == 0.0f ? alpha * s : alpha * s + beta * *o;                           \
        }                                                                                    \
    }

__kernel void gemv_rows(__global float *c, const ulong c_off, __global const float *w,
                        const ulong w_off, __global const float *x, const ulong x_off,
                        const ulong c_add, const ulong w_add, const ulong x_add, const int n,
                        const int k, const int ldw, const int m, const int ldx, const int ldc,
                        const float alpha, const float beta)
{
    const int r = get_global_id(0);
    if (r >= n)
        return;
    __global const float *row = w + w_off + w_add + (size_t)r * ldw;
    __global const float *v = x + x_off + x_add;
    __global float *out = c + c_off + c_add + r;
    int i = 0;
    GEMV_ROWS_BLOCK(4)
    GEMV_ROWS_BLOCK(2)
    GEMV_ROWS_BLOCK(1)
}

/* R rows of x from row i against eight neighbouring columns. */
#define GEMV_COLS_BLOCK(R)                                                                   \
    for (; i + (R) <= m; i += (R)) {                                                         \
        float8 a[R];                                                                         \
        _Pragma("unroll") for (int q = 0; q < (R); q++)                                      \
            a[q] = (float8)(0.0f);                                                           \
        for (int e = 0; e < k; e++) {                                                        \
            const float8 wc = vload8(0, col + (size_t)e * ldw);                              \
            _Pragma("unroll") for (int q = 0; q < (R); q++)                                  \
                a[q] += v[(size_t)(i + q) * ldx + e] * wc;                                   \
        }                                                                                    \
        for (int q = 0; q < (R); q++) {                                                      \
            __global float *o = out + (size_t)(i + q) * ldc;                                 \
            float8 r = alpha * a[q];                                                         \
            if (beta != 0.0f)                                                                \
                r += beta * vload8(0, o);                                                    \
            vstore8(r, 0, o);                                                                \
        }                                                                                    \
    }

__kernel void gemv_cols(__global float *c, const ulong c_off, __global const float *w,
                        const ulong w_off, __global const float *x, const ulong x_off,
                        const ulong c_add, const ulong w_add, const ulong x_add, const int n,
                        const int k, const int ldw, const int m, const int ldx, const int ldc,
                        const float alpha, const float beta)
{
    const int j = get_global_id(0) * 8; /* eight neighbouring columns */
    if (j >= n)
        return;
    __global const float *col = w + w_off + w_add + j;
    __global const float *v = x + x_off + x_add;
    __global float *out = c + c_off + c_add + j;
    if (j + 8 > n) { /* the last columns, one at a time */
        for (int i = 0; i < m; i++)
            for (int q = 0; q < n - j; q++) {
                float s = 0.0f;
                for (int e = 0; e < k; e++)
                    s += v[(size_t)i * ldx + e] * col[(size_t)e * ldw + q];
                __global float *o = out + (size_t)i * ldc + q;
                *o = beta == 0.0f ? alpha * s : alpha * s + beta * *o;
            }
        return;
    }
    int i = 0;
    GEMV_COLS_BLOCK(4)
    GEMV_COLS_BLOCK(2)
    GEMV_COLS_BLOCK(1)
}
