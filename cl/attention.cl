/*
 * attention.cl - the causal softmax of attention scores, forward and backward.
 * The products Q.K^T, P.V and their gradients go through CLBlast (layers/attention.c).
 *
 * att, datt: [B, NH, T, T]   one row per (b, h, t); row t sees positions 0..t,
 * or with has_pos (packed documents, pos [B, T] each row's position in its
 * own document) t - pos[b, t] .. t; the rest of the row is 0.
 *
 * forward (in place):  att[r, s] = softmax over s <= t of att[r, :], 0 for s > t
 * backward (in place): datt[r, s] = att[r, s] * (datt[r, s] - sum_s' att[r, s'] datt[r, s'])
 */
/* The first position row r (of sequence r / (NH T)) sees. */
static int row_start(__global const int *pos, const int has_pos, const int r, const int T,
                     const int NH)
{
    const int t = r % T;
    return has_pos ? t - pos[(size_t)(r / (NH * T)) * T + t] : 0;
}

__kernel void attention_softmax_fwd(__global float *att, const ulong att_off,
                                    __global const int *pos, const ulong pos_off,
                                    const int has_pos, const int rows, const int T, const int NH)
{
    const int r = get_global_id(0);
    if (r >= rows)
        return;
    const int t = r % T, lo = row_start(pos + pos_off, has_pos, r, T, NH);
    __global float *a = att + att_off + (size_t)r * T;
    float m = -INFINITY;
    for (int s = lo; s <= t; s++)
        m = fmax(m, a[s]);
    float sum = 0.0f;
    for (int s = 0; s < lo; s++)
        a[s] = 0.0f;
    for (int s = lo; s <= t; s++) {
        const float e = exp(a[s] - m);
        a[s] = e;
        sum += e;
    }
    const float inv = 1.0f / sum;
    for (int s = lo; s <= t; s++)
        a[s] *= inv;
    for (int s = t + 1; s < T; s++)
        a[s] = 0.0f;
}

__kernel void attention_softmax_bwd(__global float *datt, const ulong datt_off,
                                    __global const float *att, const ulong att_off,
                                    __global const int *pos, const ulong pos_off,
                                    const int has_pos, const int rows, const int T, const int NH)
{
    const int r = get_global_id(0);
    if (r >= rows)
        return;
    const int t = r % T, lo = row_start(pos + pos_off, has_pos, r, T, NH);
    __global float *d = datt + datt_off + (size_t)r * T;
    __global const float *p = att + att_off + (size_t)r * T;
    float dot = 0.0f;
    for (int s = lo; s <= t; s++)
        dot += p[s] * d[s];
    for (int s = 0; s < lo; s++)
        d[s] = 0.0f;
    for (int s = lo; s <= t; s++)
        d[s] = p[s] * (d[s] - dot);
    for (int s = t + 1; s < T; s++)
        d[s] = 0.0f;
}

/* Decoding with a KV cache: `rows` rows (one per head) of stride `stride`,
 * each a softmax over its first `len` entries (every cached position is
 * visible to the newest token). */
__kernel void attention_softmax_rows(__global float *att, const ulong att_off,
                                     const int rows, const int len, const int stride)
{
    const int r = get_global_id(0);
    if (r >= rows)
        return;
    __global float *a = att + att_off + (size_t)r * stride;
    float m = -INFINITY;
    for (int s = 0; s < len; s++)
        m = fmax(m, a[s]);
    float sum = 0.0f;
    for (int s = 0; s < len; s++) {
        const float e = exp(a[s] - m);
        a[s] = e;
        sum += e;
    }
    const float inv = 1.0f / sum;
    for (int s = 0; s < len; s++)
        a[s] *= inv;
}
