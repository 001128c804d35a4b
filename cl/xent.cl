/*
 * xent.cl - softmax and cross-entropy over the vocabulary, fused.
 *
 * logits, probs, dlogits: [N, V]     targets: [N] (int; < 0 means "no loss here")
 * losses:                 [N]
 *
 * forward:  probs = softmax(logits); losses[n] = -log(probs[n, targets[n]])
 * backward: dlogits = (probs - onehot(targets)) * dloss   (overwrites; rows
 *           without a target get 0). dloss is the same for every row (the
 *           mean over counted rows: 1 / count).
 *
 * The forward in two forms, the sums in a fixed order in each: for GPUs a
 * work-group of XE_WG work-items per row (each taking every XE_WG-th logit,
 * then trees in local memory for the maximum and the sum), for CPUs
 * (xent_fwd_row) one work-item per row.
 */
#define XE_WG 64

__kernel void xent_fwd(__global float *probs, const ulong probs_off,
                       __global float *losses, const ulong losses_off,
                       __global const float *logits, const ulong logits_off,
                       __global const int *targets, const ulong targets_off,
                       const int N, const int V)
{
    __local float tmp[XE_WG];
    const int n = get_group_id(0), lid = get_local_id(0); /* exactly N groups */
    __global const float *z = logits + logits_off + (size_t)n * V;
    __global float *p = probs + probs_off + (size_t)n * V;
    /* The target's logit, read before probs (which may be logits) is written. */
    const int t = targets[targets_off + n];
    const float zt = lid == 0 && t >= 0 && t < V ? z[t] : 0.0f;
    float m = -INFINITY;
    for (int v = lid; v < V; v += XE_WG)
        m = fmax(m, z[v]);
    tmp[lid] = m;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int k = XE_WG / 2; k > 0; k >>= 1) {
        if (lid < k)
            tmp[lid] = fmax(tmp[lid], tmp[lid + k]);
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    m = tmp[0];
    barrier(CLK_LOCAL_MEM_FENCE);
    float sum = 0.0f;
    for (int v = lid; v < V; v += XE_WG) {
        const float e = exp(z[v] - m);
        p[v] = e;
        sum += e;
    }
    tmp[lid] = sum;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int k = XE_WG / 2; k > 0; k >>= 1) {
        if (lid < k)
            tmp[lid] += tmp[lid + k];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const float inv = 1.0f / tmp[0];
    for (int v = lid; v < V; v += XE_WG)
        p[v] *= inv; /* each work-item scales what it wrote */
    if (lid == 0) {
        /* The floor keeps log finite for a probability that underflowed; a
         * NaN (from NaN weights) must stay NaN, which fmax alone would hide.
         * p[t] was written by another work-item: computed again here, the
         * same operations giving the same bits. */
        const float pt = t >= 0 && t < V ? exp(zt - m) * inv : 1.0f;
        losses[losses_off + n] =
            t >= 0 && t < V ? (isnan(pt) ? pt : -log(fmax(pt, 1e-30f))) : 0.0f;
    }
}

__kernel void xent_fwd_row(__global float *probs, const ulong probs_off,
                       __global float *losses, const ulong losses_off,
                       __global const float *logits, const ulong logits_off,
                       __global const int *targets, const ulong targets_off,
                       const int N, const int V)
{
    const int n = get_global_id(0);
    if (n >= N)
        return;
    __global const float *z = logits + logits_off + (size_t)n * V;
    __global float *p = probs + probs_off + (size_t)n * V;
    float m = -INFINITY;
    for (int v = 0; v < V; v++)
        m = fmax(m, z[v]);
    float sum = 0.0f;
    for (int v = 0; v < V; v++) {
        const float e = exp(z[v] - m);
        p[v] = e;
        sum += e;
    }
    const float inv = 1.0f / sum;
    for (int v = 0; v < V; v++)
        p[v] *= inv;
    const int t = targets[targets_off + n];
    /* The floor keeps log finite for a probability that underflowed; a NaN
     * (from NaN weights) must stay NaN, which fmax alone would hide. */
    const float pt = t >= 0 && t < V ? p[t] : 1.0f;
    losses[losses_off + n] = t >= 0 && t < V ? (isnan(pt) ? pt : -log(fmax(pt, 1e-30f))) : 0.0f;
}

__kernel void xent_bwd(__global float *dlogits, const ulong dlogits_off,
                       __global const float *probs, const ulong probs_off,
                       __global const int *targets, const ulong targets_off,
                       const float dloss, const int N, const int V)
{
    const size_t i = get_global_id(0);
    if (i >= (size_t)N * V)
        return;
    const int n = i / V, v = i % V;
    const int t = targets[targets_off + n];
    const float g = t >= 0 ? (probs[probs_off + i] - (v == t ? 1.0f : 0.0f)) * dloss : 0.0f;
    dlogits[dlogits_off + i] = g;
}
