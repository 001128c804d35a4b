/*
 * norm.cl - sum of squares for the global gradient norm, in a fixed order.
 *
 * sumsq_partial: partial[g] = sum of x[i]^2 over i = g, g + G, g + 2G, ... < n   (G work-items)
 * sumsq_final:   acc[0] += partial[0] + partial[1] + ... + partial[G-1]           (one work-item)
 *
 * Two passes with a fixed split instead of atomics: the same inputs give the
 * same bits every run. Several tensors accumulate into one acc by launching
 * both kernels per tensor on the same in-order queue.
 */
__kernel void sumsq_partial(__global float *partial, const ulong partial_off,
                            __global const float *x, const ulong x_off,
                            const ulong n, const int G)
{
    const int g = get_global_id(0);
    if (g >= G)
        return;
    float s = 0.0f;
    for (size_t i = g; i < n; i += G) {
        const float v = x[x_off + i];
        s += v * v;
    }
    partial[partial_off + g] = s;
}

__kernel void sumsq_final(__global float *acc, const ulong acc_off,
                          __global const float *partial, const ulong partial_off, const int G)
{
    if (get_global_id(0) != 0)
        return;
    float s = 0.0f;
    for (int g = 0; g < G; g++)
        s += partial[partial_off + g];
    acc[acc_off] += s;
}
