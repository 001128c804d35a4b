/*
 * rmsnorm.cl - RMSNorm over the last axis (Llama family), forward and
 * backward, and the forward fused with the residual sum before it.
 *
 * inp, out, dout, dinp: [N, C]   (N = B*T rows)
 * w, dw:                [C]
 * rstd:                 [N]      1 / sqrt(mean(x^2) + eps), kept for backward
 *
 * out = x * rstd * w. Backward, with g = dy * w and xhat = x * rstd:
 *   dx = rstd * (g - xhat * mean(g * xhat));  dw += sum over rows of dy * xhat.
 * Row kernels in the two forms of layernorm.cl (a work-group per row for
 * GPUs, *_row: a work-item per row for CPUs); the weight gradient one
 * work-item per channel down the rows. Fixed orders: bitwise the same run
 * to run.
 */
#define RN_WG 64

static float rn_group_sum(float v, __local float *tmp)
{
    const int lid = get_local_id(0);
    tmp[lid] = v;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = RN_WG / 2; s > 0; s >>= 1) {
        if (lid < s)
            tmp[lid] += tmp[lid + s];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const float r = tmp[0];
    barrier(CLK_LOCAL_MEM_FENCE);
    return r;
}

static void rms_row(__global float *y, __global const float *x, __global const float *w,
                    __global float *rstd, const int n, const int C, const float eps,
                    __local float *tmp)
{
    const int lid = get_local_id(0);
    float part = 0.0f;
    for (int c = lid; c < C; c += RN_WG)
        part += x[c] * x[c];
    const float s = 1.0f / sqrt(rn_group_sum(part, tmp) / C + eps);
    for (int c = lid; c < C; c += RN_WG)
        y[c] = x[c] * s * w[c];
    if (lid == 0)
        rstd[n] = s;
}

__kernel void rmsnorm_fwd(__global float *out, const ulong out_off,
                          __global float *rstd, const ulong rstd_off,
                          __global const float *inp, const ulong inp_off,
                          __global const float *w, const ulong w_off,
                          const int N, const int C, const float eps)
{
    __local float tmp[RN_WG];
    const int n = get_group_id(0); /* exactly N groups */
    rms_row(out + out_off + (size_t)n * C, inp + inp_off + (size_t)n * C, w + w_off,
            rstd + rstd_off, n, C, eps, tmp);
}

/* res = y + x (a projection's output and the residual stream), then
 * out = RMSNorm(res). */
__kernel void residual_rmsnorm_fwd(__global float *res, const ulong res_off,
                                   __global float *out, const ulong out_off,
                                   __global float *rstd, const ulong rstd_off,
                                   __global const float *y, const ulong y_off,
                                   __global const float *x, const ulong x_off,
                                   __global const float *w, const ulong w_off,
                                   const int N, const int C, const float eps)
{
    __local float tmp[RN_WG];
    const int n = get_group_id(0), lid = get_local_id(0);
    __global float *r = res + res_off + (size_t)n * C;
    __global const float *yr = y + y_off + (size_t)n * C, *xr = x + x_off + (size_t)n * C;
    for (int c = lid; c < C; c += RN_WG)
        r[c] = yr[c] + xr[c];
    rms_row(out + out_off + (size_t)n * C, r, w + w_off, rstd + rstd_off, n, C, eps, tmp);
}

__kernel void rmsnorm_bwd_inp(__global float *dinp, const ulong dinp_off,
                              __global const float *dout, const ulong dout_off,
                              __global const float *inp, const ulong inp_off,
                              __global const float *w, const ulong w_off,
                              __global const float *rstd, const ulong rstd_off,
                              const int N, const int C)
{
    __local float tmp[RN_WG];
    const int n = get_group_id(0), lid = get_local_id(0);
    __global const float *x = inp + inp_off + (size_t)n * C;
    __global const float *dy = dout + dout_off + (size_t)n * C;
    __global float *dx = dinp + dinp_off + (size_t)n * C;
    w += w_off;
    const float s = rstd[rstd_off + n];
    float p = 0.0f;
    for (int c = lid; c < C; c += RN_WG)
        p += dy[c] * w[c] * x[c] * s;
    const float gx_mean = rn_group_sum(p, tmp) / C;
    for (int c = lid; c < C; c += RN_WG)
        dx[c] += s * (dy[c] * w[c] - x[c] * s * gx_mean);
}

__kernel void rmsnorm_bwd_w(__global float *dw, const ulong dw_off,
                            __global const float *dout, const ulong dout_off,
                            __global const float *inp, const ulong inp_off,
                            __global const float *rstd, const ulong rstd_off,
                            const int N, const int C)
{
    const int c = get_global_id(0);
    if (c >= C)
        return;
    float sw = 0.0f;
    for (int n = 0; n < N; n++)
        sw += dout[dout_off + (size_t)n * C + c] * inp[inp_off + (size_t)n * C + c] *
              rstd[rstd_off + n];
    dw[dw_off + c] += sw;
}

/* ---- one work-item per row (CPU devices) */

static void rms_row_serial(__global float *y, __global const float *x, __global const float *w,
                           __global float *rstd, const int n, const int C, const float eps)
{
    float ss = 0.0f;
    for (int c = 0; c < C; c++)
        ss += x[c] * x[c];
    const float s = 1.0f / sqrt(ss / C + eps);
    for (int c = 0; c < C; c++)
        y[c] = x[c] * s * w[c];
    rstd[n] = s;
}

__kernel void rmsnorm_fwd_row(__global float *out, const ulong out_off,
                              __global float *rstd, const ulong rstd_off,
                              __global const float *inp, const ulong inp_off,
                              __global const float *w, const ulong w_off,
                              const int N, const int C, const float eps)
{
    const int n = get_global_id(0);
    if (n >= N)
        return;
    rms_row_serial(out + out_off + (size_t)n * C, inp + inp_off + (size_t)n * C, w + w_off,
                   rstd + rstd_off, n, C, eps);
}

__kernel void residual_rmsnorm_fwd_row(__global float *res, const ulong res_off,
                                       __global float *out, const ulong out_off,
                                       __global float *rstd, const ulong rstd_off,
                                       __global const float *y, const ulong y_off,
                                       __global const float *x, const ulong x_off,
                                       __global const float *w, const ulong w_off,
                                       const int N, const int C, const float eps)
{
    const int n = get_global_id(0);
    if (n >= N)
        return;
    __global float *r = res + res_off + (size_t)n * C;
    __global const float *yr = y + y_off + (size_t)n * C, *xr = x + x_off + (size_t)n * C;
    for (int c = 0; c < C; c++)
        r[c] = yr[c] + xr[c];
    rms_row_serial(out + out_off + (size_t)n * C, r, w + w_off, rstd + rstd_off, n, C, eps);
}

__kernel void rmsnorm_bwd_inp_row(__global float *dinp, const ulong dinp_off,
                                  __global const float *dout, const ulong dout_off,
                                  __global const float *inp, const ulong inp_off,
                                  __global const float *w, const ulong w_off,
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
    const float s = rstd[rstd_off + n];
    float gx_mean = 0.0f;
    for (int c = 0; c < C; c++)
        gx_mean += dy[c] * w[c] * x[c] * s;
    gx_mean /= C;
    for (int c = 0; c < C; c++)
        dx[c] += s * (dy[c] * w[c] - x[c] * s * gx_mean);
}
