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
 * One work-item per row: the sums run in a fixed order.
 */
__kernel void xent_fwd(__global float *probs, const ulong probs_off,
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
