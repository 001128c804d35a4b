/*
 * gemv.cl - a few rows x against a matrix (decoding: one token, a token of
 * each of several sequences, or a prompt's chunk), the CPU form:
 *   gemv_rows: c = alpha * x W^T + beta * c, W [n, k] stored by rows (ldw),
 *              x [m, k] (ldx), c [m, n] (ldc): a work-item per two output
 *              columns, eight of their rows' contiguous values at a time, for
 *              four rows of x at once (then two, one);
 *   gemv_cols: c = alpha * x W + beta * c, W [k, n] stored by rows (ldw): a
 *              work-item per sixteen neighbouring output columns, down the
 *              rows, for four rows of x at once (then two, one).
 * PoCL runs a work-group's items one after another, so each row of W
 * streams from memory once and stays in cache for the other rows of x; a
 * value loaded serves several sums (registers: 4 x 2 float8 sums), and the
 * vector arithmetic is explicit. Each row of x gets the same sums in the
 * same order whatever m is and whatever its neighbours, so a token decoded
 * with others has the bits it has alone. Measured on the 2-core machine (82M
 * Llama, one pthread device): blocks of four rows beat blocks of eight (8
 * sequences: 203 against 183 tok/s), only with their loops unrolled by
 * pragma (37 against 63 ms a step: unrolled, the sums stay in registers);
 * two columns per work-item then gave 299 against 213 prompt tok/s and 241
 * against 203 tok/s for 8 sequences; three spilled (143 and 118). beta 0
 * does not read c.
 *
 * The weights' storage type is a build-time definition (the file is built
 * once per type it is launched with: "gemv.cl#W_BF16", "gemv.cl#W_F16"):
 * float by default, W_BF16 (the top half of a float: widened by a shift,
 * exactly), W_F16 (vload_half, core OpenCL, exact). The arithmetic is float
 * either way, in the same order: a 16-bit matrix gives the bits its float
 * copy gives.
 */
#if defined(W_BF16)
typedef ushort wtype;
#define WLOAD8(p) as_float8(upsample(vload8(0, (p)), (ushort8)(0)))
#define WLOAD(p) as_float((uint)(*(p)) << 16)
#elif defined(W_F16)
typedef half wtype;
#define WLOAD8(p) vload_half8(0, (p))
#define WLOAD(p) vload_half(0, (p))
#else
typedef float wtype;
#define WLOAD8(p) vload8(0, (p))
#define WLOAD(p) (*(p))
#endif
/* R rows of x from row i against CN neighbouring rows of the matrix (the
 * work-item's output columns): R x CN float8 sums side by side, each row's
 * and column's in the order one row and one column alone take; a value of
 * x loaded once serves the CN columns. */
#define GEMV_ROWS_BLOCK(R, CN)                                                               \
    for (; i + (R) <= m; i += (R)) {                                                         \
        float8 a[CN][R];                                                                     \
        _Pragma("unroll") for (int cc = 0; cc < (CN); cc++)                                  \
            _Pragma("unroll") for (int q = 0; q < (R); q++)                                  \
                a[cc][q] = (float8)(0.0f);                                                   \
        int j = 0;                                                                           \
        for (; j + 8 <= k; j += 8) {                                                         \
            float8 wr[CN];                                                                   \
            _Pragma("unroll") for (int cc = 0; cc < (CN); cc++)                              \
                wr[cc] = WLOAD8(row + (size_t)cc * ldw + j);                              \
            _Pragma("unroll") for (int q = 0; q < (R); q++) {                                \
                const float8 xq = vload8(0, v + (size_t)(i + q) * ldx + j);                  \
                _Pragma("unroll") for (int cc = 0; cc < (CN); cc++)                          \
                    a[cc][q] += wr[cc] * xq;                                                 \
            }                                                                                \
        }                                                                                    \
        for (int cc = 0; cc < (CN); cc++)                                                    \
            for (int q = 0; q < (R); q++) {                                                  \
                __global const float *vq = v + (size_t)(i + q) * ldx;                        \
                __global const wtype *rc = row + (size_t)cc * ldw;                           \
                float s = ((a[cc][q].s0 + a[cc][q].s1) + (a[cc][q].s2 + a[cc][q].s3)) +      \
                          ((a[cc][q].s4 + a[cc][q].s5) + (a[cc][q].s6 + a[cc][q].s7));       \
                for (int e = j; e < k; e++)                                                  \
                    s += WLOAD(rc + e) * vq[e];                                                      \
                __global float *o = out + (size_t)(i + q) * ldc + cc;                        \
                *o = beta == 0.0f ? alpha * s : alpha * s + beta * *o;                       \
            }                                                                                \
    }

/* A work-item per two output columns (the last may have one). */
__kernel void gemv_rows(__global float *c, const ulong c_off, __global const wtype *w,
                        const ulong w_off, __global const float *x, const ulong x_off,
                        const ulong c_add, const ulong w_add, const ulong x_add, const int n,
                        const int k, const int ldw, const int m, const int ldx, const int ldc,
                        const float alpha, const float beta)
{
    const int r = get_global_id(0) * 2;
    if (r >= n)
        return;
    __global const wtype *row = w + w_off + w_add + (size_t)r * ldw;
    __global const float *v = x + x_off + x_add;
    __global float *out = c + c_off + c_add + r;
    int i = 0;
    if (r + 2 <= n) {
        GEMV_ROWS_BLOCK(4, 2)
        GEMV_ROWS_BLOCK(2, 2)
        GEMV_ROWS_BLOCK(1, 2)
    } else {
        GEMV_ROWS_BLOCK(4, 1)
        GEMV_ROWS_BLOCK(2, 1)
        GEMV_ROWS_BLOCK(1, 1)
    }
}

/* R rows of x from row i against G groups of eight neighbouring columns:
 * a value of x loaded once serves the G groups; each column's sum in the
 * order one row and one group alone take. */
#define GEMV_COLS_BLOCK(R, G)                                                                \
    for (; i + (R) <= m; i += (R)) {                                                         \
        float8 a[G][R];                                                                      \
        _Pragma("unroll") for (int gg = 0; gg < (G); gg++)                                   \
            _Pragma("unroll") for (int q = 0; q < (R); q++)                                  \
                a[gg][q] = (float8)(0.0f);                                                   \
        for (int e = 0; e < k; e++) {                                                        \
            float8 wc[G];                                                                    \
            _Pragma("unroll") for (int gg = 0; gg < (G); gg++)                               \
                wc[gg] = WLOAD8(col + (size_t)e * ldw + 8 * gg);                                  \
            _Pragma("unroll") for (int q = 0; q < (R); q++) {                                \
                const float xq = v[(size_t)(i + q) * ldx + e];                               \
                _Pragma("unroll") for (int gg = 0; gg < (G); gg++)                           \
                    a[gg][q] += xq * wc[gg];                                                 \
            }                                                                                \
        }                                                                                    \
        for (int gg = 0; gg < (G); gg++)                                                     \
            for (int q = 0; q < (R); q++) {                                                  \
                __global float *o = out + (size_t)(i + q) * ldc + 8 * gg;                    \
                float8 r = alpha * a[gg][q];                                                 \
                if (beta != 0.0f)                                                            \
                    r += beta * vload8(0, o);                                                \
                vstore8(r, 0, o);                                                            \
            }                                                                                \
    }

/* A work-item per sixteen neighbouring columns (then eight, then one at a
 * time at the end). */
__kernel void gemv_cols(__global float *c, const ulong c_off, __global const wtype *w,
                        const ulong w_off, __global const float *x, const ulong x_off,
                        const ulong c_add, const ulong w_add, const ulong x_add, const int n,
                        const int k, const int ldw, const int m, const int ldx, const int ldc,
                        const float alpha, const float beta)
{
    const int j = get_global_id(0) * 16;
    if (j >= n)
        return;
    __global const wtype *col = w + w_off + w_add + j;
    __global const float *v = x + x_off + x_add;
    __global float *out = c + c_off + c_add + j;
    int i = 0;
    if (j + 16 <= n) {
        GEMV_COLS_BLOCK(4, 2)
        GEMV_COLS_BLOCK(2, 2)
        GEMV_COLS_BLOCK(1, 2)
        return;
    }
    if (j + 8 <= n) {
        GEMV_COLS_BLOCK(4, 1)
        GEMV_COLS_BLOCK(2, 1)
        GEMV_COLS_BLOCK(1, 1)
        col += 8, out += 8;
    }
    const int left = n - j - (j + 8 <= n ? 8 : 0);
    for (int r = 0; r < m; r++) /* the last columns, one at a time */
        for (int q = 0; q < left; q++) {
            float s = 0.0f;
            for (int e = 0; e < k; e++)
                s += v[(size_t)r * ldx + e] * WLOAD(col + (size_t)e * ldw + q);
            __global float *o = out + (size_t)r * ldc + q;
            *o = beta == 0.0f ? alpha * s : alpha * s + beta * *o;
        }
}
