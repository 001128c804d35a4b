/*
 * flash.cl - causal attention without the T x T matrix: each query row
 * streams over the keys it may see in tiles held in local memory, with the
 * softmax kept online (running maximum m and sum l, rescaled as the maximum
 * grows). The forward keeps per row only lse = m + log(l); the backward
 * recomputes the probabilities from it. Every sum runs in one fixed order
 * and no two work-items write one place: results are bitwise the same run
 * to run.
 *
 * qkv [B, T, 3C] (q | k | v along the last axis, head h at h*HS within
 * each) without its bias, which is added as rows are read (bias [3C]: the
 * linear layer that made qkv needs no launch of its own for it); out and
 * dout [B, T, C], lse [B, NH, T], dqkv [B, T, 3C].
 * Work-groups of FA_TILE work-items, one row (query or key) each; a group
 * covers FA_TILE rows of one (sequence, head). Head sizes up to FA_HS_MAX
 * (layers/attention.c uses the T x T path beyond).
 */
#define FA_TILE 16
#define FA_HS_MAX 128

/* The tile of rows [r0, r0 + FA_TILE) of qkv's columns col .. col+HS, with
 * their bias, into local memory; rows past T are zeros. */
static void load_tile(__local float *dst, __global const float *base, __global const float *bias,
                      const int r0, const int T, const int C3, const int col, const int HS,
                      const int lid)
{
    for (int e = lid; e < FA_TILE * HS; e += FA_TILE) {
        const int r = r0 + e / HS, d = e % HS;
        dst[e] = r < T ? base[(size_t)r * C3 + col + d] + bias[col + d] : 0.0f;
    }
}

__kernel void attention_flash_fwd(__global float *out, const ulong out_off,
                                  __global float *lse, const ulong lse_off,
                                  __global const float *qkv, const ulong qkv_off,
                                  __global const float *qkv_b, const ulong qkv_b_off, const int T,
                                  const int C, const int NH, const float scale)
{
    const int HS = C / NH, C3 = 3 * C, tiles = (T + FA_TILE - 1) / FA_TILE;
    const int g = get_group_id(0), lid = get_local_id(0);
    const int bh = g / tiles, tile = g % tiles, b = bh / NH, h = bh % NH;
    const int i = tile * FA_TILE + lid;
    __global const float *base = qkv + qkv_off + (size_t)b * T * C3;
    __global const float *bias = qkv_b + qkv_b_off;
    __local float Ks[FA_TILE * FA_HS_MAX], Vs[FA_TILE * FA_HS_MAX];
    float q[FA_HS_MAX], acc[FA_HS_MAX];
    for (int d = 0; d < HS; d++) {
        q[d] = i < T ? base[(size_t)i * C3 + h * HS + d] + bias[h * HS + d] : 0.0f;
        acc[d] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    const int last = min(T, (tile + 1) * FA_TILE) - 1; /* the group's last query row */
    for (int k0 = 0; k0 <= last; k0 += FA_TILE) {
        barrier(CLK_LOCAL_MEM_FENCE);
        load_tile(Ks, base, bias, k0, T, C3, C + h * HS, HS, lid);
        load_tile(Vs, base, bias, k0, T, C3, 2 * C + h * HS, HS, lid);
        barrier(CLK_LOCAL_MEM_FENCE);
        const int n = i < T ? min(FA_TILE, i - k0 + 1) : 0; /* keys k0 .. i */
        for (int jj = 0; jj < n; jj++) {
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

/* dK and dV: one work-item per key row j, over the query rows i >= j.
 * With p = exp(q_i.k_j * scale - lse_i), dp = dout_i . v_j and
 * D_i = dout_i . out_i:  dV_j = sum p dout_i,  dK_j = sum p (dp - D_i) scale q_i. */
__kernel void attention_flash_bwd_kv(__global float *dqkv, const ulong dqkv_off,
                                     __global const float *dout, const ulong dout_off,
                                     __global const float *out, const ulong out_off,
                                     __global const float *lse, const ulong lse_off,
                                     __global const float *qkv, const ulong qkv_off,
                                     __global const float *qkv_b, const ulong qkv_b_off,
                                     const int T, const int C, const int NH, const float scale)
{
    const int HS = C / NH, C3 = 3 * C, tiles = (T + FA_TILE - 1) / FA_TILE;
    const int g = get_group_id(0), lid = get_local_id(0);
    const int bh = g / tiles, tile = g % tiles, b = bh / NH, h = bh % NH;
    const int j = tile * FA_TILE + lid;
    __global const float *base = qkv + qkv_off + (size_t)b * T * C3;
    __global const float *bias = qkv_b + qkv_b_off;
    __global const float *dob = dout + dout_off + (size_t)b * T * C;
    __global const float *ob = out + out_off + (size_t)b * T * C;
    __global const float *lb = lse + lse_off + (size_t)bh * T;
    __local float Qs[FA_TILE * FA_HS_MAX], Ds_[FA_TILE * FA_HS_MAX], Ls[FA_TILE], Dd[FA_TILE];
    float k[FA_HS_MAX], v[FA_HS_MAX], dk[FA_HS_MAX], dv[FA_HS_MAX];
    for (int d = 0; d < HS; d++) {
        k[d] = j < T ? base[(size_t)j * C3 + C + h * HS + d] + bias[C + h * HS + d] : 0.0f;
        v[d] = j < T ? base[(size_t)j * C3 + 2 * C + h * HS + d] + bias[2 * C + h * HS + d]
                     : 0.0f;
        dk[d] = dv[d] = 0.0f;
    }
    for (int i0 = tile * FA_TILE; i0 < T; i0 += FA_TILE) {
        barrier(CLK_LOCAL_MEM_FENCE);
        load_tile(Qs, base, bias, i0, T, C3, h * HS, HS, lid);
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
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int ii = 0; j < T && ii < FA_TILE; ii++) {
            const int i = i0 + ii;
            if (i >= T)
                break;
            if (i < j)
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
    if (j < T) {
        __global float *o = dqkv + dqkv_off + ((size_t)b * T + j) * C3 + h * HS;
        for (int d = 0; d < HS; d++) {
            o[C + d] = dk[d];
            o[2 * C + d] = dv[d];
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
                                    const int T, const int C, const int NH, const float scale)
{
    const int HS = C / NH, C3 = 3 * C, tiles = (T + FA_TILE - 1) / FA_TILE;
    const int g = get_group_id(0), lid = get_local_id(0);
    const int bh = g / tiles, tile = g % tiles, b = bh / NH, h = bh % NH;
    const int i = tile * FA_TILE + lid;
    __global const float *base = qkv + qkv_off + (size_t)b * T * C3;
    __global const float *bias = qkv_b + qkv_b_off;
    __local float Ks[FA_TILE * FA_HS_MAX], Vs[FA_TILE * FA_HS_MAX];
    float q[FA_HS_MAX], dO[FA_HS_MAX], dq[FA_HS_MAX];
    float D = 0.0f, L = 0.0f;
    if (i < T) {
        __global const float *dor = dout + dout_off + ((size_t)b * T + i) * C + h * HS;
        __global const float *orow = out + out_off + ((size_t)b * T + i) * C + h * HS;
        for (int d = 0; d < HS; d++) {
            q[d] = base[(size_t)i * C3 + h * HS + d] + bias[h * HS + d];
            dO[d] = dor[d];
            D += dor[d] * orow[d];
        }
        L = lse[lse_off + (size_t)bh * T + i];
    }
    for (int d = 0; d < HS; d++)
        dq[d] = 0.0f;
    const int last = min(T, (tile + 1) * FA_TILE) - 1;
    for (int k0 = 0; k0 <= last; k0 += FA_TILE) {
        barrier(CLK_LOCAL_MEM_FENCE);
        load_tile(Ks, base, bias, k0, T, C3, C + h * HS, HS, lid);
        load_tile(Vs, base, bias, k0, T, C3, 2 * C + h * HS, HS, lid);
        barrier(CLK_LOCAL_MEM_FENCE);
        const int n = i < T ? min(FA_TILE, i - k0 + 1) : 0;
        for (int jj = 0; jj < n; jj++) {
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
        __global float *o = dqkv + dqkv_off + ((size_t)b * T + i) * C3 + h * HS;
        for (int d = 0; d < HS; d++)
            o[d] = dq[d];
    }
}

/* Decoding one token with a KV cache: a work-group of FA_DEC_WG work-items
 * per head h. It writes the new token's key and value (qkv + bias) into the
 * caches at position pos, then the scores of q against the pos + 1 cached
 * keys (into scores[h, :], global scratch: the context may be long), their
 * softmax (maximum and sum by trees in local memory), and out[h*HS + d] =
 * sum_j p_j v_j[d]. One launch where the products took five.
 * kc, vc: [S, C] for this sequence (offsets give the sequence's cache). */
#define FA_DEC_WG 64

__kernel void attention_decode(__global float *out, const ulong out_off,
                               __global float *scores, const ulong scores_off,
                               __global float *kc, const ulong kc_off,
                               __global float *vc, const ulong vc_off,
                               __global const float *qkv, const ulong qkv_off,
                               __global const float *qkv_b, const ulong qkv_b_off,
                               const int pos, const int S, const int C, const int NH,
                               const float scale)
{
    __local float tmp[FA_DEC_WG];
    __local float q[FA_HS_MAX];
    const int HS = C / NH, h = get_group_id(0), lid = get_local_id(0);
    __global const float *x = qkv + qkv_off, *bias = qkv_b + qkv_b_off;
    __global float *sc = scores + scores_off + (size_t)h * S;
    __global float *K = kc + kc_off, *V = vc + vc_off;
    for (int d = lid; d < HS; d += FA_DEC_WG) {
        const int c = h * HS + d;
        q[d] = x[c] + bias[c];
        K[(size_t)pos * C + c] = x[C + c] + bias[C + c];
        V[(size_t)pos * C + c] = x[2 * C + c] + bias[2 * C + c];
    }
    barrier(CLK_LOCAL_MEM_FENCE | CLK_GLOBAL_MEM_FENCE);
    float m = -INFINITY;
    for (int j = lid; j <= pos; j += FA_DEC_WG) {
        float s = 0.0f;
        for (int d = 0; d < HS; d++)
            s += q[d] * K[(size_t)j * C + h * HS + d];
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
            acc += sc[j] * V[(size_t)j * C + h * HS + d];
        out[out_off + h * HS + d] = acc * inv;
    }
}
