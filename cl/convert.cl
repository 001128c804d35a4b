/*
 * convert.cl - a block of a 16-bit matrix widened to float: how a product
 * whose weights are stored in 16 bits reaches CLBlast, which takes floats
 * (layers' weights converted just before their product, a block of rows at
 * a time, into one scratch buffer of the stage).
 *
 * The storage type is a build-time definition ("convert.cl#W_BF16",
 * "convert.cl#W_F16"). Widening is exact in both.
 *
 * unpack16: dst[r * cols + c] = src[r * ld + c] for r < rows, c < cols; one
 * work-item per element of dst.
 */
#if defined(W_BF16)
typedef ushort wtype;
#define WLOAD(p) as_float((uint)(*(p)) << 16)
#else
typedef half wtype;
#define WLOAD(p) vload_half(0, (p))
#endif

__kernel void unpack16(__global float *dst, const ulong dst_off, __global const wtype *src,
                       const ulong src_off, const ulong src_add, const int rows, const int cols,
                       const int ld)
{
    const size_t i = get_global_id(0);
    if (i >= (size_t)rows * cols)
        return;
    const size_t r = i / cols, c = i % cols;
    dst[dst_off + i] = WLOAD(src + src_off + src_add + r * ld + c);
}
