/*
 * rope.cl - rotary position embeddings (Llama family) on qkv in place, with
 * the projection's bias added first.
 *
 * qkv [N, W]: per row q of NH heads, then k and v of KV heads (W = C + 2 KVD,
 * KVD = KV * HS); bias [W] when has_bias. inv_freq [HS/2]. Row n is position
 * pos0 + n % T; with has_rows 1, rows[2n + 1] (decoding's table of sequence
 * and position: each row's own); with has_rows 2, rows[n] (packed
 * documents: each row's position in its own document). For each head of q and k and i < HS/2, with a = pos * inv_freq[i]
 * (float, as Hugging Face computes it):
 *   x'[i] = x[i] cos a - x[i + HS/2] sin a;  x'[i + HS/2] = x[i + HS/2] cos a + x[i] sin a.
 * The backward applies the inverse rotation to the gradient. One work-item
 * per row and i, for the pairs of every head of q and k (the angle's cosine
 * and sine once, not once per head: they were most of the kernel's time on
 * CPUs), and one per v column for the bias.
 */
__kernel void rope_fwd(__global float *qkv, const ulong qkv_off,
                       __global const float *bias, const ulong bias_off,
                       __global const float *inv_freq, const ulong inv_freq_off,
                       __global const int *rows, const ulong rows_off, const int has_rows,
                       const int has_bias, const int N, const int T, const int pos0,
                       const int NH, const int KV, const int HS)
{
    const int hh = HS / 2, KVD = KV * HS;
    const int W = (NH + 2 * KV) * HS, per_row = hh + (has_bias ? KVD : 0);
    const size_t id = get_global_id(0);
    if (id >= (size_t)N * per_row)
        return;
    const int n = id / per_row, e = id % per_row;
    __global float *row = qkv + qkv_off + (size_t)n * W;
    bias += bias_off;
    if (e >= hh) { /* v: the bias only */
        const int c = (NH + KV) * HS + (e - hh);
        row[c] += bias[c];
        return;
    }
    const int i = e;
    const int pos = has_rows == 1   ? rows[rows_off + 2 * n + 1]
                    : has_rows == 2 ? rows[rows_off + n]
                                    : pos0 + n % T;
    const float a = (float)pos * inv_freq[inv_freq_off + i];
    const float cs = cos(a), sn = sin(a);
    for (int head = 0; head < NH + KV; head++) {
        const int c = head * HS + i;
        const float x1 = row[c] + (has_bias ? bias[c] : 0.0f);
        const float x2 = row[c + hh] + (has_bias ? bias[c + hh] : 0.0f);
        row[c] = x1 * cs - x2 * sn;
        row[c + hh] = x2 * cs + x1 * sn;
    }
}

__kernel void rope_bwd(__global float *dqkv, const ulong dqkv_off,
                       __global const float *inv_freq, const ulong inv_freq_off,
                       __global const int *rows, const ulong rows_off, const int has_rows,
                       const int N, const int T, const int pos0, const int NH, const int KV,
                       const int HS)
{
    const int hh = HS / 2, W = (NH + 2 * KV) * HS;
    const size_t id = get_global_id(0);
    if (id >= (size_t)N * hh)
        return;
    const int n = id / hh, i = id % hh;
    __global float *row = dqkv + dqkv_off + (size_t)n * W;
    const int pos = has_rows ? rows[rows_off + n] : pos0 + n % T; /* has_rows 2 only */
    const float a = (float)pos * inv_freq[inv_freq_off + i];
    const float cs = cos(a), sn = sin(a);
    for (int head = 0; head < NH + KV; head++) {
        const int c = head * HS + i;
        const float d1 = row[c], d2 = row[c + hh];
        row[c] = d1 * cs + d2 * sn;
        row[c + hh] = d2 * cs - d1 * sn;
    }
}
