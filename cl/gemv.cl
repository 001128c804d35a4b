/*
 * gemv.cl - one row x against a matrix (decoding one token), the CPU form:
 *   gemv_rows: c = alpha * W x + beta * c, W [n, k] stored by rows (ldw): a
 *              work-item per output, eight columns at a time from the row's
 *              contiguous memory (PoCL runs a work-group's items one after
 *              another, so each row streams and the vector arithmetic is
 *              explicit);
 *   gemv_cols: c = alpha * x W + beta * c, W [k, n] stored by rows (ldw): a
 *              work-item per eight neighbouring output columns, down the
 *              rows eight at a time.
 * Each weight is read once per token: the decoding step's memory-bound
 * products. beta 0 does not read c.
 */
__kernel void gemv_rows(__global float *c, const ulong c_off, __global const float *w,
                        const ulong w_off, __global const float *x, const ulong x_off,
                        const ulong c_add, const ulong w_add, const ulong x_add, const int n,
                        const int k, const int ldw, const float alpha, const float beta)
{
    const int r = get_global_id(0);
    if (r >= n)
        return;
    __global const float *row = w + w_off + w_add + (size_t)r * ldw;
    __global const float *v = x + x_off + x_add;
    float8 acc = (float8)(0.0f);
    int j = 0;
    for (; j + 8 <= k; j += 8)
        acc += vload8(0, row + j) * vload8(0, v + j);
    float s = ((acc.s0 + acc.s1) + (acc.s2 + acc.s3)) + ((acc.s4 + acc.s5) + (acc.s6 + acc.s7));
    for (; j < k; j++)
        s += row[j] * v[j];
    __global float *out = c + c_off + c_add + r;
    *out = beta == 0.0f ? alpha * s : alpha * s + beta * *out;
}

__kernel void gemv_cols(__global float *c, const ulong c_off, __global const float *w,
                        const ulong w_off, __global const float *x, const ulong x_off,
                        const ulong c_add, const ulong w_add, const ulong x_add, const int n,
                        const int k, const int ldw, const float alpha, const float beta)
{
    const int j = get_global_id(0) * 8; /* eight neighbouring columns */
    if (j >= n)
        return;
    __global const float *col = w + w_off + w_add + j;
    __global const float *v = x + x_off + x_add;
    __global float *out = c + c_off + c_add + j;
    if (j + 8 <= n) {
        float8 s = (float8)(0.0f);
        for (int i = 0; i < k; i++)
            s += v[i] * vload8(0, col + (size_t)i * ldw);
        float8 r = alpha * s;
        if (beta != 0.0f)
            r += beta * vload8(0, out);
        vstore8(r, 0, out);
        return;
    }
    for (int q = 0; q < n - j; q++) {
        float s = 0.0f;
        for (int i = 0; i < k; i++)
            s += v[i] * col[(size_t)i * ldw + q];
        out[q] = beta == 0.0f ? alpha * s : alpha * s + beta * out[q];
    }
}
