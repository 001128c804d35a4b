/*
 * fill.cl - element-wise helpers on flat float buffers.
 *
 * fill_f32:  x[off + i] = value                 for i < n
 * scale_f32: x[off + i] = alpha * x[off + i]    for i < n
 *
 * One work-item per element; the global size may be rounded up, so every
 * kernel checks i < n.
 */
__kernel void fill_f32(__global float *x, const ulong off, const ulong n, const float value)
{
    const size_t i = get_global_id(0);
    if (i < n)
        x[off + i] = value;
}

__kernel void scale_f32(__global float *x, const ulong off, const ulong n, const float alpha)
{
    const size_t i = get_global_id(0);
    if (i < n)
        x[off + i] = alpha * x[off + i];
}
