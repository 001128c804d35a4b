/*
 * bias.cl - a bias over the last axis of [N, C].
 *
 * forward:  out[n,c] += bias[c]
 * backward: dbias[c] += sum_n dout[n,c]     (one work-item per channel, fixed order)
 */
__kernel void bias_fwd(__global float *out, const ulong out_off,
                       __global const float *bias, const ulong bias_off,
                       const int N, const int C)
{
    const size_t i = get_global_id(0);
    if (i < (size_t)N * C)
        out[out_off + i] += bias[bias_off + i % C];
}

__kernel void bias_bwd(__global float *dbias, const ulong dbias_off,
                       __global const float *dout, const ulong dout_off,
                       const int N, const int C)
{
    const int c = get_global_id(0);
    if (c >= C)
        return;
    float s = 0.0f;
    for (int n = 0; n < N; n++)
        s += dout[dout_off + (size_t)n * C + c];
    dbias[dbias_off + c] += s;
}
