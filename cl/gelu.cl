/*
 * gelu.cl - GELU in its tanh form (GPT-2's "gelu_new"), element-wise.
 *
 * gelu(x) = 0.5 x (1 + tanh(k (x + 0.044715 x^3))),  k = sqrt(2/pi)
 *
 * inp, out, dout, dinp: [n]
 */
#define GELU_K 0.7978845608028654f

__kernel void gelu_fwd(__global float *out, const ulong out_off,
                       __global const float *inp, const ulong inp_off, const ulong n)
{
    const size_t i = get_global_id(0);
    if (i >= n)
        return;
    const float x = inp[inp_off + i];
    const float u = GELU_K * (x + 0.044715f * x * x * x);
    out[out_off + i] = 0.5f * x * (1.0f + tanh(u));
}

/* dinp = dout * gelu'(inp)  (overwrites dinp) */
__kernel void gelu_bwd(__global float *dinp, const ulong dinp_off,
                       __global const float *inp, const ulong inp_off,
                       __global const float *dout, const ulong dout_off, const ulong n)
{
    const size_t i = get_global_id(0);
    if (i >= n)
        return;
    const float x = inp[inp_off + i];
    const float u = GELU_K * (x + 0.044715f * x * x * x);
    const float t = tanh(u);
    const float du = GELU_K * (1.0f + 3.0f * 0.044715f * x * x);
    const float d = 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du;
    dinp[dinp_off + i] = dout[dout_off + i] * d;
}

/* A linear layer's bias, then GELU: pre[n,f] += bias[f] (kept for the
 * backward), act = gelu(pre). Two launches in one. */
__kernel void bias_gelu_fwd(__global float *pre, const ulong pre_off,
                            __global float *act, const ulong act_off,
                            __global const float *bias, const ulong bias_off, const int N,
                            const int F)
{
    const size_t i = get_global_id(0);
    if (i >= (size_t)N * F)
        return;
    const float x = pre[pre_off + i] + bias[bias_off + i % F];
    pre[pre_off + i] = x;
    const float u = GELU_K * (x + 0.044715f * x * x * x);
    act[act_off + i] = 0.5f * x * (1.0f + tanh(u));
}

/* dinp = dout * gelu'(pre) (overwrites dinp) and dbias[f] += sum_n dinp[n,f]:
 * one work-item per column f, down the rows (neighbouring work-items read
 * neighbouring floats), the sum in row order. */
__kernel void gelu_bwd_bias(__global float *dinp, const ulong dinp_off,
                            __global const float *pre, const ulong pre_off,
                            __global const float *dout, const ulong dout_off,
                            __global float *dbias, const ulong dbias_off, const int N,
                            const int F)
{
    const int f = get_global_id(0);
    if (f >= F)
        return;
    float s = 0.0f;
    for (int n = 0; n < N; n++) {
        const size_t i = (size_t)n * F + f;
        const float x = pre[pre_off + i];
        const float u = GELU_K * (x + 0.044715f * x * x * x);
        const float t = tanh(u);
        const float du = GELU_K * (1.0f + 3.0f * 0.044715f * x * x);
        const float d = dout[dout_off + i] * (0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du);
        dinp[dinp_off + i] = d;
        s += d;
    }
    dbias[dbias_off + f] += s;
}
