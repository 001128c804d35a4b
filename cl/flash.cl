/*
 * flash.cl - causal attention without the T x T matrix: each query row
 * streams over the keys it may see in tiles held in local memory, with the
 * softmax kept online (running maximum m and sum l, rescaled as the maximum
 * grows). The forward keeps per row only lse = m + log(l); the backward
 * recomputes the probabilities from it. Every sum runs in one fixed order
 * and no two work-items write one place: results are bitwise the same run
 * to run.
 *
 * qkv [B, T, W] (q | k | v along the last axis: NH query heads, then KV
 * key heads and KV value heads, head h at h*HS within each; W = C + 2 KVD,
 * KVD = KV*HS; GPT-2 has KV = NH, W = 3C), without its bias, which is added
 * as rows are read when has_bias (bias [W]: the linear layer that made qkv
 * needs no launch of its own for it); query head h attends with key/value
 * head h / (NH / KV) (grouped-query attention). out and dout [B, T, C],
 * lse [B, NH, T], dqkv [B, T, W].
 * Work-groups of FA_TILE work-items, one row (query or key) each; a group
 * covers FA_TILE rows of one (sequence, head). Head sizes up to FA_HS_MAX
 * (layers/attention.c uses the T x T path beyond).
 *
 * Packed sequences (has_pos): pos [B, T] gives each row's position in its
 * own document, so row i's document starts at row i - pos[i], and query i
 * sees the keys i - pos[i] .. i only: no attention across a document
 * boundary. A document's rows then take exactly the steps they take in a
 * sequence of their own (the same keys in the same order). Without pos,
 * every row's document starts at 0.
 */
#define FA_TILE 16
#define FA_HS_MAX 128

/* The first row of row i's document (sequence base's rows). */
#define DOC0(i) (has_pos ? (i) - pos[(i)] : 0)

/* The bias of column c, or 0. */
#define BIAS(c) (has_bias ? bias[c] : 0.0f)

/* The tile of rows [r0, r0 + FA_TILE) of qkv's columns col .. col+HS, with
 * their bias, into local memory; rows past T are zeros. */
static void load_tile(__local float *dst, __global const float *base, __global const float *bias,
                      const int has_bias, const int r0, const int T, const int W, const int col,
                      const int HS, const int lid)
{
    for (int e = lid; e < FA_TILE * HS; e += FA_TILE) {
        const int r = r0 + e / HS, d = e % HS;
        dst[e] = r < T ? base[(size_t)r * W + col + d] + BIAS(col + d) : 0.0f;
    }
}

__kernel void attention_flash_fwd(__global float *out, const ulong out_off,
                                  __global float *lse, const ulong lse_off,
                                  __global const float *qkv, const ulong qkv_off,
                                  __global const float *qkv_b, const ulong qkv_b_off,
                                  __global const int *pos_, const ulong pos_off, const int has_pos,
                                  const int has_bias, const int T, const int C, const int NH,
                                  const int KV, const float scale)
{
    const int HS = C / NH, KVD = KV * HS, W = C + 2 * KVD, tiles = (T + FA_TILE - 1) / FA_TILE;
    const int g = get_group_id(0), lid = get_local_id(0);
    const int bh = g / tiles, tile = g % tiles, b = bh / NH, h = bh % NH, hk = h / (NH / KV);
    const int i = tile * FA_TILE + lid;
    __global const float *base = qkv + qkv_off + (size_t)b * T * W;
    __global const float *bias = qkv_b + qkv_b_off;
    __global const int *pos = pos_ + pos_off + (size_t)b * T;
    __local float Ks[FA_TILE * FA_HS_MAX], Vs[FA_TILE * FA_HS_MAX];
    float q[FA_HS_MAX], acc[FA_HS_MAX];
    for (int d = 0; d < HS; d++) {
        q[d] = i < T ? base[(size_t)i * W + h * HS + d] + BIAS(h * HS + d) : 0.0f;
        acc[d] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    const int last = min(T, (tile + 1) * FA_TILE) - 1; /* the group's last query row */
    /* from the tile of the group's first row's document start: the lowest */
    const int first = DOC0(tile * FA_TILE) / FA_TILE * FA_TILE, lo = i < T ? DOC0(i) : 0;
    for (int k0 = first; k0 <= last; k0 += FA_TILE) {
        barrier(CLK_LOCAL_MEM_FENCE);
        load_tile(Ks, base, bias, has_bias, k0, T, W, C + hk * HS, HS, lid);
        load_tile(Vs, base, bias, has_bias, k0, T, W, C + KVD + hk * HS, HS, lid);
        barrier(CLK_LOCAL_MEM_FENCE);
        const int n = i < T ? min(FA_TILE, i - k0 + 1) : 0; /* keys lo .. i */
        for (int jj = max(0, lo - k0); jj < n; jj++) {
            float s = 0.0f;
            for (int d = 0; d < HS; d++)
                s += q[d] * Ks[jj * HS + d];
            s *= scale;
            const float mn = fmax(m, s), corr = exp(m - mn), p = exp(s - mn);
            l = l * corr + p;
            for (int d = 0; d < HS; d++)
                acc[d] = acc[d] * corr + p * Vs[jj * HS + d];
            m = mn;
        }
    }
    if (i < T) {
        const float inv = 1.0f / l;
        __global float *o = out + out_off + ((size_t)b * T + i) * C + h * HS;
        for (int d = 0; d < HS; d++)
            o[d] = acc[d] * inv;
        lse[lse_off + (size_t)bh * T + i] = m + log(l);
    }
}

/* dK and dV: one work-item per key row j of key/value head hk, over the
 * query heads h of its group and, for each, the query rows i >= j.
 * With p = exp(q_i.k_j * scale - lse_i), dp = dout_i . v_j and
 * D_i = dout_i . out_i:  dV_j = sum p dout_i,  dK_j = sum p (dp - D_i) scale q_i. */
__kernel void attention_flash_bwd_kv(__global float *dqkv, const ulong dqkv_off,
                                     __global const float *dout, const ulong dout_off,
                                     __global const float *out, const ulong out_off,
                                     __global const float *lse, const ulong lse_off,
                                     __global const float *qkv, const ulong qkv_off,
                                     __global const float *qkv_b, const ulong qkv_b_off,
                                     __global const int *pos_, const ulong pos_off,
                                     const int has_pos, const int has_bias, const int T,
                                     const int C, const int NH, const int KV, const float scale)
{
    const int HS = C / NH, KVD = KV * HS, W = C + 2 * KVD, tiles = (T + FA_TILE - 1) / FA_TILE;
    const int g = get_group_id(0), lid = get_local_id(0);
    const int bk = g / tiles, tile = g % tiles, b = bk / KV, hk = bk % KV, G = NH / KV;
    const int j = tile * FA_TILE + lid;
    __global const float *base = qkv + qkv_off + (size_t)b * T * W;
    __global const float *bias = qkv_b + qkv_b_off;
    __global const int *pos = pos_ + pos_off + (size_t)b * T;
    /* the group's last key row: queries past its document see none of the group's keys
     * (document starts only grow along the sequence) */
    const int jlast = min(T, (tile + 1) * FA_TILE) - 1;
    __global const float *dob = dout + dout_off + (size_t)b * T * C;
    __global const float *ob = out + out_off + (size_t)b * T * C;
    __local float Qs[FA_TILE * FA_HS_MAX], Ds_[FA_TILE * FA_HS_MAX], Ls[FA_TILE], Dd[FA_TILE];
    __local int Ss[FA_TILE];
    float k[FA_HS_MAX], v[FA_HS_MAX], dk[FA_HS_MAX], dv[FA_HS_MAX];
    for (int d = 0; d < HS; d++) {
        k[d] = j < T ? base[(size_t)j * W + C + hk * HS + d] + BIAS(C + hk * HS + d) : 0.0f;
        v[d] = j < T ? base[(size_t)j * W + C + KVD + hk * HS + d] + BIAS(C + KVD + hk * HS + d)
                     : 0.0f;
        dk[d] = dv[d] = 0.0f;
    }
    for (int h = hk * G; h < (hk + 1) * G; h++) {
        __global const float *lb = lse + lse_off + ((size_t)b * NH + h) * T;
        for (int i0 = tile * FA_TILE; i0 < T && DOC0(i0) <= jlast; i0 += FA_TILE) {
            barrier(CLK_LOCAL_MEM_FENCE);
            load_tile(Qs, base, bias, has_bias, i0, T, W, h * HS, HS, lid);
            for (int e = lid; e < FA_TILE * HS; e += FA_TILE) {
                const int r = i0 + e / HS, d = e % HS;
                Ds_[e] = r < T ? dob[(size_t)r * C + h * HS + d] : 0.0f;
            }
            const int r = i0 + lid;
            float D = 0.0f;
            for (int d = 0; r < T && d < HS; d++)
                D += dob[(size_t)r * C + h * HS + d] * ob[(size_t)r * C + h * HS + d];
            Dd[lid] = D;
            Ls[lid] = r < T ? lb[r] : 0.0f;
            Ss[lid] = r < T ? DOC0(r) : 0;
            barrier(CLK_LOCAL_MEM_FENCE);
            for (int ii = 0; j < T && ii < FA_TILE; ii++) {
                const int i = i0 + ii;
                if (i >= T)
                    break;
                if (i < j || Ss[ii] > j) /* not after j in j's document */
                    continue;
                float s = 0.0f, dp = 0.0f;
                for (int d = 0; d < HS; d++) {
                    s += Qs[ii * HS + d] * k[d];
                    dp += Ds_[ii * HS + d] * v[d];
                }
                const float p = exp(s * scale - Ls[ii]), ds = p * (dp - Dd[ii]) * scale;
                for (int d = 0; d < HS; d++) {
                    dv[d] += p * Ds_[ii * HS + d];
                    dk[d] += ds * Qs[ii * HS + d];
                }
            }
        }
    }
    if (j < T) {
        __global float *o = dqkv + dqkv_off + ((size_t)b * T + j) * W + hk * HS;
        for (int d = 0; d < HS; d++) {
            o[C + d] = dk[d];
            o[C + KVD + d] = dv[d];
        }
    }
}

/* dQ: one work-item per query row i, over the keys j <= i:
 * dQ_i = sum_j p (dp - D_i) scale k_j. */
__kernel void attention_flash_bwd_q(__global float *dqkv, const ulong dqkv_off,
                                    __global const float *dout, const ulong dout_off,
                                    __global const float *out, const ulong out_off,
                                    __global const float *lse, const ulong lse_off,
                                    __global const float *qkv, const ulong qkv_off,
                                    __global const float *qkv_b, const ulong qkv_b_off,
                                    __global const int *pos_, const ulong pos_off,
                                    const int has_pos, const int has_bias, const int T,
                                    const int C, const int NH, const int KV, const float scale)
{
    const int HS = C / NH, KVD = KV * HS, W = C + 2 * KVD, tiles = (T + FA_TILE - 1) / FA_TILE;
    const int g = get_group_id(0), lid = get_local_id(0);
    const int bh = g / tiles, tile = g % tiles, b = bh / NH, h = bh % NH, hk = h / (NH / KV);
    const int i = tile * FA_TILE + lid;
    __global const float *base = qkv + qkv_off + (size_t)b * T * W;
    __global const float *bias = qkv_b + qkv_b_off;
    __global const int *pos = pos_ + pos_off + (size_t)b * T;
    __local float Ks[FA_TILE * FA_HS_MAX], Vs[FA_TILE * FA_HS_MAX];
    float q[FA_HS_MAX], dO[FA_HS_MAX], dq[FA_HS_MAX];
    float D = 0.0f, L = 0.0f;
    if (i < T) {
        __global const float *dor = dout + dout_off + ((size_t)b * T + i) * C + h * HS;
        __global const float *orow = out + out_off + ((size_t)b * T + i) * C + h * HS;
        for (int d = 0; d < HS; d++) {
            q[d] = base[(size_t)i * W + h * HS + d] + BIAS(h * HS + d);
            dO[d] = dor[d];
            D += dor[d] * orow[d];
        }
        L = lse[lse_off + (size_t)bh * T + i];
    }
    for (int d = 0; d < HS; d++)
        dq[d] = 0.0f;
    const int last = min(T, (tile + 1) * FA_TILE) - 1;
    const int first = DOC0(tile * FA_TILE) / FA_TILE * FA_TILE, lo = i < T ? DOC0(i) : 0;
    for (int k0 = first; k0 <= last; k0 += FA_TILE) {
        barrier(CLK_LOCAL_MEM_FENCE);
        load_tile(Ks, base, bias, has_bias, k0, T, W, C + hk * HS, HS, lid);
        load_tile(Vs, base, bias, has_bias, k0, T, W, C + KVD + hk * HS, HS, lid);
        barrier(CLK_LOCAL_MEM_FENCE);
        const int n = i < T ? min(FA_TILE, i - k0 + 1) : 0;
        for (int jj = max(0, lo - k0); jj < n; jj++) {
            float s = 0.0f, dp = 0.0f;
            for (int d = 0; d < HS; d++) {
                s += q[d] * Ks[jj * HS + d];
                dp += dO[d] * Vs[jj * HS + d];
            }
            const float p = exp(s * scale - L), ds = p * (dp - D) * scale;
            for (int d = 0; d < HS; d++)
                dq[d] += ds * Ks[jj * HS + d];
        }
    }
    if (i < T) {
        __global float *o = dqkv + dqkv_off + ((size_t)b * T + i) * W + h * HS;
        for (int d = 0; d < HS; d++)
            o[d] = dq[d];
    }
}

/* Decoding with a KV cache: a work-group of FA_DEC_WG work-items per row r
 * of n and head h (group r * NH + h). rows[2r], rows[2r + 1]: the sequence
 * (its cache slot: rows seq * S .. seq * S + S - 1 of kc and vc, [.., KVD])
 * and the position of row r (qkv's row r, W wide); it attends its
 * sequence's cached rows 0 .. pos. With own_row (no two rows of one
 * sequence: tokens decoded, one per sequence) the kernel also writes the
 * row's key and value (qkv + bias) into the cache at pos, and the groups of
 * one key/value head write the same values; otherwise (a prompt's chunk
 * read in one pass, prefill) the rows were written before by
 * attention_kv_write, since a row reads the keys of the rows before it.
 * Then the scores of q against the cached keys (into scores[r, h, :],
 * global scratch: the context may be long), their softmax (maximum and sum
 * by trees in local memory), and out[r, h*HS + d] = sum_j p_j v_j[d]. */
#define FA_DEC_WG 64

/* The KV cache's storage, one build per type (layers/attention.c names
 * "flash.cl#W_BF16" or "flash.cl#W_F16" for a 16-bit cache; the training
 * kernels above do not use it): float by default; W_BF16, the top half of
 * a float, widened exactly by a shift and rounded to nearest even as it is
 * written (a NaN stays a NaN); W_F16 through vload_half / vstore_half
 * (round to nearest even), core OpenCL. The arithmetic is float. */
#if defined(W_BF16)
typedef ushort kvtype;
#define KV_LOAD(p, i) as_float((uint)(p)[i] << 16)
#define KV_LOAD8(d, p) as_float8(upsample(vload8((d), (p)), (ushort8)(0)))
static ushort kv_round(const float f)
{
    const uint u = as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (ushort)((u >> 16) | 0x40u);
    return (ushort)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
#define KV_STORE(p, i, v) ((p)[i] = kv_round(v))
#elif defined(W_F16)
typedef half kvtype;
#define KV_LOAD(p, i) vload_half((i), (p))
#define KV_LOAD8(d, p) vload_half8((d), (p))
#define KV_STORE(p, i, v) vstore_half((v), (i), (p))
#else
typedef float kvtype;
#define KV_LOAD(p, i) ((p)[i])
#define KV_LOAD8(d, p) vload8((d), (p))
#define KV_STORE(p, i, v) ((p)[i] = (v))
#endif

/* The keys and values of qkv's n rows (+ bias) into the caches at each
 * row's sequence and position: one work-item per element. */
__kernel void attention_kv_write(__global kvtype *kc, const ulong kc_off,
                                 __global kvtype *vc, const ulong vc_off,
                                 __global const float *qkv, const ulong qkv_off,
                                 __global const float *qkv_b, const ulong qkv_b_off,
                                 const int has_bias, __global const int *rows,
                                 const ulong rows_off, const int n, const int S, const int C,
                                 const int NH, const int KV)
{
    const int HS = C / NH, KVD = KV * HS, W = C + 2 * KVD;
    const size_t e = get_global_id(0);
    if (e >= (size_t)n * KVD)
        return;
    const int r = (int)(e / KVD), c = (int)(e % KVD);
    const size_t at = ((size_t)rows[rows_off + 2 * r] * S + rows[rows_off + 2 * r + 1]) * KVD + c;
    __global const float *x = qkv + qkv_off + (size_t)r * W, *bias = qkv_b + qkv_b_off;
    KV_STORE(kc, kc_off + at, x[C + c] + BIAS(C + c));
    KV_STORE(vc, vc_off + at, x[C + KVD + c] + BIAS(C + KVD + c));
}

__kernel void attention_decode(__global float *out, const ulong out_off,
                               __global float *scores, const ulong scores_off,
                               __global kvtype *kc, const ulong kc_off,
                               __global kvtype *vc, const ulong vc_off,
                               __global const float *qkv, const ulong qkv_off,
                               __global const float *qkv_b, const ulong qkv_b_off,
                               const int has_bias, __global const int *rows,
                               const ulong rows_off, const int own_row, const int S,
                               const int C, const int NH, const int KV, const float scale)
{
    __local float tmp[FA_DEC_WG];
    __local float q[FA_HS_MAX];
    const int HS = C / NH, KVD = KV * HS, W = C + 2 * KVD, lid = get_local_id(0);
    const int r = get_group_id(0) / NH, h = get_group_id(0) % NH;
    const int seq = rows[rows_off + 2 * r], pos = rows[rows_off + 2 * r + 1];
    const int hk = h / (NH / KV);
    __global const float *x = qkv + qkv_off + (size_t)r * W, *bias = qkv_b + qkv_b_off;
    __global float *sc = scores + scores_off + ((size_t)r * NH + h) * S;
    __global kvtype *K = kc + kc_off + (size_t)seq * S * KVD;
    __global kvtype *V = vc + vc_off + (size_t)seq * S * KVD;
    for (int d = lid; d < HS; d += FA_DEC_WG) {
        const int c = h * HS + d, ck = hk * HS + d;
        q[d] = x[c] + BIAS(c);
        if (own_row) {
            KV_STORE(K, (size_t)pos * KVD + ck, x[C + ck] + BIAS(C + ck));
            KV_STORE(V, (size_t)pos * KVD + ck, x[C + KVD + ck] + BIAS(C + KVD + ck));
        }
    }
    barrier(CLK_LOCAL_MEM_FENCE | CLK_GLOBAL_MEM_FENCE);
    float m = -INFINITY;
    for (int j = lid; j <= pos; j += FA_DEC_WG) {
        float s = 0.0f;
        for (int d = 0; d < HS; d++)
            s += q[d] * KV_LOAD(K, (size_t)j * KVD + hk * HS + d);
        s *= scale;
        sc[j] = s;
        m = fmax(m, s);
    }
    tmp[lid] = m;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int k = FA_DEC_WG / 2; k > 0; k >>= 1) {
        if (lid < k)
            tmp[lid] = fmax(tmp[lid], tmp[lid + k]);
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    m = tmp[0];
    barrier(CLK_LOCAL_MEM_FENCE);
    float sum = 0.0f;
    for (int j = lid; j <= pos; j += FA_DEC_WG) {
        const float e = exp(sc[j] - m);
        sc[j] = e;
        sum += e;
    }
    tmp[lid] = sum;
    barrier(CLK_LOCAL_MEM_FENCE | CLK_GLOBAL_MEM_FENCE);
    for (int k = FA_DEC_WG / 2; k > 0; k >>= 1) {
        if (lid < k)
            tmp[lid] += tmp[lid + k];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const float inv = 1.0f / tmp[0];
    for (int d = lid; d < HS; d += FA_DEC_WG) {
        float acc = 0.0f;
        for (int j = 0; j <= pos; j++)
            acc += sc[j] * KV_LOAD(V, (size_t)j * KVD + hk * HS + d);
        out[out_off + (size_t)r * C + h * HS + d] = acc * inv;
    }
}

/* The CPU form of attention_decode (the same inputs and outputs; scores
 * unused): a work-item per row and head, one pass over the cached positions
 * with a running maximum, the weighted sum rescaled when it grows (PoCL
 * runs a group's work-items one after another and splits kernels at
 * barriers, so the GPU form's trees cost more than they save there); eight
 * channels at a time when the head size allows. */
__kernel void attention_decode_cpu(__global float *out, const ulong out_off,
                                   __global float *scores, const ulong scores_off,
                                   __global kvtype *kc, const ulong kc_off,
                                   __global kvtype *vc, const ulong vc_off,
                                   __global const float *qkv, const ulong qkv_off,
                                   __global const float *qkv_b, const ulong qkv_b_off,
                                   const int has_bias, __global const int *rows,
                                   const ulong rows_off, const int own_row, const int S,
                                   const int C, const int NH, const int KV, const float scale)
{
    (void)scores;
    (void)scores_off;
    const int HS = C / NH, KVD = KV * HS, W = C + 2 * KVD;
    const int r = get_global_id(0) / NH, h = get_global_id(0) % NH, hk = h / (NH / KV);
    const int seq = rows[rows_off + 2 * r], pos = rows[rows_off + 2 * r + 1];
    __global const float *x = qkv + qkv_off + (size_t)r * W, *bias = qkv_b + qkv_b_off;
    __global kvtype *K = kc + kc_off + (size_t)seq * S * KVD + hk * HS;
    __global kvtype *V = vc + vc_off + (size_t)seq * S * KVD + hk * HS;
    if (own_row) /* the groups of one key/value head write the same values */
        for (int d = 0; d < HS; d++) {
            const int ck = C + hk * HS + d;
            KV_STORE(K, (size_t)pos * KVD + d, x[ck] + BIAS(ck));
            KV_STORE(V, (size_t)pos * KVD + d, x[ck + KVD] + BIAS(ck + KVD));
        }
    __global float *o = out + out_off + (size_t)r * C + h * HS;
    float m = -INFINITY, l = 0.0f;
    if (HS % 8 == 0) {
        float8 q[FA_HS_MAX / 8], acc[FA_HS_MAX / 8];
        const int H8 = HS / 8;
        for (int d = 0; d < H8; d++) {
            float8 b = (float8)(0.0f);
            if (has_bias)
                b = vload8(d, bias + h * HS);
            q[d] = vload8(d, x + h * HS) + b;
            acc[d] = (float8)(0.0f);
        }
        for (int j = 0; j <= pos; j++) {
            __global const kvtype *kj = K + (size_t)j * KVD, *vj = V + (size_t)j * KVD;
            float8 t = (float8)(0.0f);
            for (int d = 0; d < H8; d++)
                t += q[d] * KV_LOAD8(d, kj);
            float s = (((t.s0 + t.s1) + (t.s2 + t.s3)) + ((t.s4 + t.s5) + (t.s6 + t.s7))) * scale;
            if (s > m) {
                const float c = exp(m - s);
                l *= c;
                for (int d = 0; d < H8; d++)
                    acc[d] *= c;
                m = s;
            }
            const float p = exp(s - m);
            l += p;
            for (int d = 0; d < H8; d++)
                acc[d] += p * KV_LOAD8(d, vj);
        }
        const float inv = 1.0f / l;
        for (int d = 0; d < H8; d++)
            vstore8(acc[d] * inv, d, o);
        return;
    }
    float q[FA_HS_MAX], acc[FA_HS_MAX];
    for (int d = 0; d < HS; d++) {
        q[d] = x[h * HS + d] + BIAS(h * HS + d);
        acc[d] = 0.0f;
    }
    for (int j = 0; j <= pos; j++) {
        __global const kvtype *kj = K + (size_t)j * KVD, *vj = V + (size_t)j * KVD;
        float s = 0.0f;
        for (int d = 0; d < HS; d++)
            s += q[d] * KV_LOAD(kj, d);
        s *= scale;
        if (s > m) {
            const float c = exp(m - s);
            l *= c;
            for (int d = 0; d < HS; d++)
                acc[d] *= c;
            m = s;
        }
        const float p = exp(s - m);
        l += p;
        for (int d = 0; d < HS; d++)
            acc[d] += p * KV_LOAD(vj, d);
    }
    const float inv = 1.0f / l;
    for (int d = 0; d < HS; d++)
        o[d] = acc[d] * inv;
}
