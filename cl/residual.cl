/*
 * residual.cl - the residual sum of two streams.
 *
 * forward:  out = a + b                    a, b, out: [n]
 * backward: da += dout; db += dout         (both inputs receive the gradient)
 */
__kernel void residual_fwd(__global float *out, const ulong out_off,
                           __global const float *a, const ulong a_off,
                           __global const float *b, const ulong b_off, const ulong n)
{
    const size_t i = get_global_id(0);
    if (i < n)
        out[out_off + i] = a[a_off + i] + b[b_off + i];
}

__kernel void residual_bwd(__global float *da, const ulong da_off,
                           __global float *db, const ulong db_off,
                           __global const float *dout, const ulong dout_off, const ulong n)
{
    const size_t i = get_global_id(0);
    if (i >= n)
        return;
    const float g = dout[dout_off + i];
    da[da_off + i] += g;
    db[db_off + i] += g;
}

/* A linear layer's bias and the residual stream: out = (out + bias) + res,
 * out [N, C], bias [C] (the sums in the order the two ops made them). */
__kernel void bias_residual_fwd(__global float *out, const ulong out_off,
                                __global const float *bias, const ulong bias_off,
                                __global const float *res, const ulong res_off, const int N,
                                const int C)
{
    const size_t i = get_global_id(0);
    if (i < (size_t)N * C)
        out[out_off + i] = (out[out_off + i] + bias[bias_off + i % C]) + res[res_off + i];
}
