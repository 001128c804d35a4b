/*
 * layernorm.cl - LayerNorm over the last axis, forward and backward, and the
 * forward fused with the bias and residual sum before it.
 *
 * inp, out, dout, dinp: [N, C]   (N = B*T rows)
 * w, b, dw, db:         [C]
 * mean, rstd:           [N]      kept from forward for backward
 *
 * Row kernels in two forms, the same sums in different orders: for GPUs, a
 * work-group of LN_WG work-items per row, each taking every LN_WG-th channel
 * (neighbouring work-items read neighbouring floats), the row's sums
 * finished by a tree in local memory; for CPUs (*_row), one work-item per
 * row walking it in order (a CPU runs a work-group's work-items one after
 * another, and pays for every barrier). Weight gradients: one work-item per
 * channel, down the rows. Every sum runs in a fixed order, so
 * results are the same run to run (no atomics).
 */
#define LN_WG 64

/* The sum of each work-item's v over the work-group, in a fixed order. */
static float group_sum(float v, __local float *tmp)
{
    const int lid = get_local_id(0);
    tmp[lid] = v;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = LN_WG / 2; s > 0; s >>= 1) {
        if (lid < s)
            tmp[lid] += tmp[lid + s];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const float r = tmp[0];
    barrier(CLK_LOCAL_MEM_FENCE);
    return r;
}

/* y = (x - mean) * rstd * w + b over the row x (global, already written by
 * this same work-item where it was computed here). */
static void normalize_row(__global float *y, __global const float *x, __global const float *w,
                          __global const float *b, __global float *mean, __global float *rstd,
                          const int n, const int C, const float eps, __local float *tmp)
{
    const int lid = get_local_id(0);
    float part = 0.0f;
    for (int c = lid; c < C; c += LN_WG)
        part += x[c];
    const float m = group_sum(part, tmp) / C;
    part = 0.0f;
    for (int c = lid; c < C; c += LN_WG) {
        const float d = x[c] - m;
        part += d * d;
    }
    const float var = group_sum(part, tmp) / C;
    const float s = 1.0f / sqrt(var + eps);
    for (int c = lid; c < C; c += LN_WG)
        y[c] = (x[c] - m) * s * w[c] + b[c];
    if (lid == 0) {
        mean[n] = m;
        rstd[n] = s;
    }
}

__kernel void layernorm_fwd(__global float *out, const ulong out_off,
                            __global float *mean, const ulong mean_off,
                            __global float *rstd, const ulong rstd_off,
                            __global const float *inp, const ulong inp_off,
                            __global const float *w, const ulong w_off,
                            __global const float *b, const ulong b_off,
                            const int N, const int C, const float eps)
{
    __local float tmp[LN_WG];
    const int n = get_group_id(0); /* the launch has exactly N groups */
    normalize_row(out + out_off + (size_t)n * C, inp + inp_off + (size_t)n * C, w + w_off,
                  b + b_off, mean + mean_off, rstd + rstd_off, n, C, eps, tmp);
}

/* res = y + bias + x (a linear layer's output, its bias, the residual
 * stream), then out = LayerNorm(res): three launches in one. */
__kernel void bias_residual_layernorm_fwd(__global float *res, const ulong res_off,
                                          __global float *out, const ulong out_off,
                                          __global float *mean, const ulong mean_off,
                                          __global float *rstd, const ulong rstd_off,
                                          __global const float *y, const ulong y_off,
                                          __global const float *bias, const ulong bias_off,
                                          __global const float *x, const ulong x_off,
                                          __global const float *w, const ulong w_off,
                                          __global const float *b, const ulong b_off,
                                          const int N, const int C, const float eps)
{
    __local float tmp[LN_WG];
    const int n = get_group_id(0), lid = get_local_id(0); /* exactly N groups */
    __global float *r = res + res_off + (size_t)n * C;
    __global const float *yr = y + y_off + (size_t)n * C, *xr = x + x_off + (size_t)n * C;
    for (int c = lid; c < C; c += LN_WG)
        r[c] = yr[c] + bias[bias_off + c] + xr[c];
    normalize_row(out + out_off + (size_t)n * C, r, w + w_off, b + b_off, mean + mean_off,
                  rstd + rstd_off, n, C, eps, tmp);
}

/* dinp[n,:] += dL/dx for row n. */
__kernel void layernorm_bwd_inp(__global float *dinp, const ulong dinp_off,
                                __global const float *dout, const ulong dout_off,
                                __global const float *inp, const ulong inp_off,
                                __global const float *w, const ulong w_off,
                                __global const float *mean, const ulong mean_off,
                                __global const float *rstd, const ulong rstd_off,
                                const int N, const int C)
{
    __local float tmp[LN_WG];
    const int n = get_group_id(0), lid = get_local_id(0); /* exactly N groups */
    __global const float *x = inp + inp_off + (size_t)n * C;
    __global const float *dy = dout + dout_off + (size_t)n * C;
    __global float *dx = dinp + dinp_off + (size_t)n * C;
    w += w_off;
    const float m = mean[mean_off + n], s = rstd[rstd_off + n];
    /* dx = s * (g - mean(g) - xhat * mean(g * xhat)), g = dy * w */
    float pg = 0.0f, pgx = 0.0f;
    for (int c = lid; c < C; c += LN_WG) {
        const float g = dy[c] * w[c];
        pg += g;
        pgx += g * (x[c] - m) * s;
    }
    const float g_mean = group_sum(pg, tmp) / C;
    const float gx_mean = group_sum(pgx, tmp) / C;
    for (int c = lid; c < C; c += LN_WG) {
        const float xhat = (x[c] - m) * s;
        dx[c] += s * (dy[c] * w[c] - g_mean - xhat * gx_mean);
    }
}

/* dw[c] += sum_n dout[n,c] * xhat[n,c];  db[c] += sum_n dout[n,c]; and, for
 * the linear layers' biases whose gradients are column sums at this point of
 * the backward, dbias2[j] += sum_n src2[n,j] (j < C2) and the same for 3
 * (C2 or C3 0: none). One work-item per column j < max(C, C2, C3). */
__kernel void layernorm_bwd_params(__global float *dw, const ulong dw_off,
                                   __global float *db, const ulong db_off,
                                   __global const float *dout, const ulong dout_off,
                                   __global const float *inp, const ulong inp_off,
                                   __global const float *mean, const ulong mean_off,
                                   __global const float *rstd, const ulong rstd_off,
                                   __global float *dbias2, const ulong dbias2_off,
                                   __global const float *src2, const ulong src2_off,
                                   __global float *dbias3, const ulong dbias3_off,
                                   __global const float *src3, const ulong src3_off,
                                   const int N, const int C, const int C2, const int C3)
{
    const int j = get_global_id(0);
    if (j < C) {
        float sw = 0.0f, sb = 0.0f;
        for (int n = 0; n < N; n++) {
            const float dy = dout[dout_off + (size_t)n * C + j];
            const float xhat =
                (inp[inp_off + (size_t)n * C + j] - mean[mean_off + n]) * rstd[rstd_off + n];
            sw += dy * xhat;
            sb += dy;
        }
        dw[dw_off + j] += sw;
        db[db_off + j] += sb;
    }
    if (j < C2) {
        float s = 0.0f;
        for (int n = 0; n < N; n++)
            s += src2[src2_off + (size_t)n * C2 + j];
        dbias2[dbias2_off + j] += s;
    }
    if (j < C3) {
        float s = 0.0f;
        for (int n = 0; n < N; n++)
            s += src3[src3_off + (size_t)n * C3 + j];
        dbias3[dbias3_off + j] += s;
    }
}

/* ---- one work-item per row (CPU devices) */

static void normalize_row_serial(__global float *y, __global const float *x,
                                 __global const float *w, __global const float *b,
                                 __global float *mean, __global float *rstd, const int n,
                                 const int C, const float eps)
{
    float m = 0.0f;
    for (int c = 0; c < C; c++)
        m += x[c];
    m /= C;
    float var = 0.0f;
    for (int c = 0; c < C; c++) {
        const float d = x[c] - m;
        var += d * d;
    }
    var /= C;
    const float s = 1.0f / sqrt(var + eps);
    for (int c = 0; c < C; c++)
        y[c] = (x[c] - m) * s * w[c] + b[c];
    mean[n] = m;
    rstd[n] = s;
}

__kernel void layernorm_fwd_row(__global float *out, const ulong out_off,
                                __global float *mean, const ulong mean_off,
                                __global float *rstd, const ulong rstd_off,
                                __global const float *inp, const ulong inp_off,
                                __global const float *w, const ulong w_off,
                                __global const float *b, const ulong b_off,
                                const int N, const int C, const float eps)
{
    const int n = get_global_id(0);
    if (n >= N)
        return;
    normalize_row_serial(out + out_off + (size_t)n * C, inp + inp_off + (size_t)n * C,
                         w + w_off, b + b_off, mean + mean_off, rstd + rstd_off, n, C, eps);
}

__kernel void bias_residual_layernorm_fwd_row(__global float *res, const ulong res_off,
                                              __global float *out, const ulong out_off,
                                              __global float *mean, const ulong mean_off,
                                              __global float *rstd, const ulong rstd_off,
                                              __global const float *y, const ulong y_off,
                                              __global const float *bias, const ulong bias_off,
                                              __global const float *x, const ulong x_off,
                                              __global const float *w, const ulong w_off,
                                              __global const float *b, const ulong b_off,
                                              const int N, const int C, const float eps)
{
    const int n = get_global_id(0);
    if (n >= N)
        return;
    __global float *r = res + res_off + (size_t)n * C;
    __global const float *yr = y + y_off + (size_t)n * C, *xr = x + x_off + (size_t)n * C;
    for (int c = 0; c < C; c++)
        r[c] = yr[c] + bias[bias_off + c] + xr[c];
    normalize_row_serial(out + out_off + (size_t)n * C, r, w + w_off, b + b_off,
                         mean + mean_off, rstd + rstd_off, n, C, eps);
}

__kernel void layernorm_bwd_inp_row(__global float *dinp, const ulong dinp_off,
                                    __global const float *dout, const ulong dout_off,
                                    __global const float *inp, const ulong inp_off,
                                    __global const float *w, const ulong w_off,
                                    __global const float *mean, const ulong mean_off,
                                    __global const float *rstd, const ulong rstd_off,
                                    const int N, const int C)
{
    const int n = get_global_id(0);
    if (n >= N)
        return;
    __global const float *x = inp + inp_off + (size_t)n * C;
    __global const float *dy = dout + dout_off + (size_t)n * C;
    __global float *dx = dinp + dinp_off + (size_t)n * C;
    w += w_off;
    const float m = mean[mean_off + n], s = rstd[rstd_off + n];
    float g_mean = 0.0f, gx_mean = 0.0f;
    for (int c = 0; c < C; c++) {
        const float g = dy[c] * w[c];
        g_mean += g;
        gx_mean += g * (x[c] - m) * s;
    }
    g_mean /= C;
    gx_mean /= C;
    for (int c = 0; c < C; c++) {
        const float xhat = (x[c] - m) * s;
        dx[c] += s * (dy[c] * w[c] - g_mean - xhat * gx_mean);
    }
}
