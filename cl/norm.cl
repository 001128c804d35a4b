/*
 * norm.cl - sum of squares for the global gradient norm, in a fixed order.
 *
 * sumsq_partial: G work-groups of SQ_WG work-items; group g sums x[i]^2 over
 *   its own stretch [g*L*SQ_WG, (g+1)*L*SQ_WG) of x, work-item l taking every
 *   SQ_WG-th element from l (neighbours read neighbouring floats; a stretch
 *   stays in cache while the group's work-items pass over it), the group's
 *   sums then added by a tree in local memory: partial[g].
 * sumsq_final:   acc[0] += partial[0] + partial[1] + ... + partial[G-1]  (one work-item)
 *
 * Two passes with a fixed split instead of atomics: the same inputs give the
 * same bits every run. Several tensors accumulate into one acc by launching
 * both kernels per tensor on the same in-order queue.
 */
#define SQ_WG 64

__kernel void sumsq_partial(__global float *partial, const ulong partial_off,
                            __global const float *x, const ulong x_off, const ulong n,
                            const ulong L)
{
    __local float tmp[SQ_WG];
    const int lid = get_local_id(0);
    const size_t g = get_group_id(0), begin = g * L * SQ_WG;
    const size_t end = min(begin + L * SQ_WG, (size_t)n);
    float s = 0.0f;
    for (size_t i = begin + lid; i < end; i += SQ_WG) {
        const float v = x[x_off + i];
        s += v * v;
    }
    tmp[lid] = s;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int k = SQ_WG / 2; k > 0; k >>= 1) {
        if (lid < k)
            tmp[lid] += tmp[lid + k];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (lid == 0)
        partial[partial_off + g] = tmp[0];
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
