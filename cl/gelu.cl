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
