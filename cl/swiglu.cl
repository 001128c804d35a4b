/*
 * swiglu.cl - the SwiGLU MLP's gate (Llama family).
 *
 * gu [N, 2F]: per row the gate projection g (columns 0..F-1), then the up
 * projection u (F..2F-1); h [N, F] = silu(g) * u, silu(g) = g * sigmoid(g).
 * Backward, with s = sigmoid(g): dg = dh * u * s * (1 + g (1 - s)),
 * du = dh * g * s. One work-item per element of h.
 */
__kernel void swiglu_fwd(__global float *h, const ulong h_off,
                         __global const float *gu, const ulong gu_off, const int N, const int F)
{
    const size_t i = get_global_id(0);
    if (i >= (size_t)N * F)
        return;
    const size_t n = i / F, j = i % F;
    const float g = gu[gu_off + n * 2 * F + j], u = gu[gu_off + n * 2 * F + F + j];
    h[h_off + i] = g / (1.0f + exp(-g)) * u;
}

__kernel void swiglu_bwd(__global float *dgu, const ulong dgu_off,
                         __global const float *dh, const ulong dh_off,
                         __global const float *gu, const ulong gu_off, const int N, const int F)
{
    const size_t i = get_global_id(0);
    if (i >= (size_t)N * F)
        return;
    const size_t n = i / F, j = i % F;
    const float g = gu[gu_off + n * 2 * F + j], u = gu[gu_off + n * 2 * F + F + j];
    const float s = 1.0f / (1.0f + exp(-g)), d = dh[dh_off + i];
    dgu[dgu_off + n * 2 * F + j] = d * u * s * (1.0f + g * (1.0f - s));
    dgu[dgu_off + n * 2 * F + F + j] = d * g * s;
}
