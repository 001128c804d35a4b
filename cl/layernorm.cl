/*
 * layernorm.cl - LayerNorm over the last axis, forward and backward.
 *
 * inp, out, dout, dinp: [N, C]   (N = B*T rows)
 * w, b, dw, db:         [C]
 * mean, rstd:           [N]      kept from forward for backward
 *
 * One work-item per row (forward, input gradient) or per channel (weight
 * gradients): every sum runs in a fixed order, so results are the same run to
 * run (no atomics).
 */
__kernel void layernorm_fwd(__global float *out, const ulong out_off,
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
    __global const float *x = inp + inp_off + (size_t)n * C;
    __global float *y = out + out_off + (size_t)n * C;
    w += w_off;
    b += b_off;
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
    mean[mean_off + n] = m;
    rstd[rstd_off + n] = s;
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
    const int n = get_global_id(0);
    if (n >= N)
        return;
    __global const float *x = inp + inp_off + (size_t)n * C;
    __global const float *dy = dout + dout_off + (size_t)n * C;
    __global float *dx = dinp + dinp_off + (size_t)n * C;
    w += w_off;
    const float m = mean[mean_off + n], s = rstd[rstd_off + n];
    /* dx = s * (g - mean(g) - xhat * mean(g * xhat)), g = dy * w */
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

/* dw[c] += sum_n dout[n,c] * xhat[n,c];  db[c] += sum_n dout[n,c]. */
__kernel void layernorm_bwd_params(__global float *dw, const ulong dw_off,
                                   __global float *db, const ulong db_off,
                                   __global const float *dout, const ulong dout_off,
                                   __global const float *inp, const ulong inp_off,
                                   __global const float *mean, const ulong mean_off,
                                   __global const float *rstd, const ulong rstd_off,
                                   const int N, const int C)
{
    const int c = get_global_id(0);
    if (c >= C)
        return;
    float sw = 0.0f, sb = 0.0f;
    for (int n = 0; n < N; n++) {
        const float dy = dout[dout_off + (size_t)n * C + c];
        const float xhat = (inp[inp_off + (size_t)n * C + c] - mean[mean_off + n]) * rstd[rstd_off + n];
        sw += dy * xhat;
        sb += dy;
    }
    dw[dw_off + c] += sw;
    db[db_off + c] += sb;
}
