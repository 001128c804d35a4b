/*
 * adamw.cl - one AdamW step with decoupled weight decay and bias correction.
 *
 * param, grad, m, v: [n]
 *   m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2
 *   param -= lr * (m / bc1 / (sqrt(v / bc2) + eps) + wd * param)
 * bc1 = 1 - b1^t and bc2 = 1 - b2^t come from the host (t counts from 1).
 * grad_scale multiplies the gradient first (global-norm clipping).
 */
__kernel void adamw_step(__global float *param, const ulong param_off,
                         __global const float *grad, const ulong grad_off,
                         __global float *m, const ulong m_off,
                         __global float *v, const ulong v_off,
                         const ulong n, const float lr, const float b1, const float b2,
                         const float eps, const float wd, const float bc1, const float bc2,
                         const float grad_scale)
{
    const size_t i = get_global_id(0);
    if (i >= n)
        return;
    const float g = grad[grad_off + i] * grad_scale;
    const float mi = b1 * m[m_off + i] + (1.0f - b1) * g;
    const float vi = b2 * v[v_off + i] + (1.0f - b2) * g * g;
    m[m_off + i] = mi;
    v[v_off + i] = vi;
    const float p = param[param_off + i];
    param[param_off + i] = p - lr * (mi / bc1 / (sqrt(vi / bc2) + eps) + wd * p);
}

/* The same over a whole stage's buffers in one launch: element e of
 * [0, n) (offsets give the stretch) decays only when its run does. runs
 * holds, per run of parameters with one decay setting, its first element
 * (two 31-bit halves) and 1 or 0; runs are in order and the first starts
 * at 0. Elements between parameters hold zeros and stay zeros. */
__kernel void adamw_step_runs(__global float *param, const ulong param_off,
                              __global const float *grad, const ulong grad_off,
                              __global float *m, const ulong m_off,
                              __global float *v, const ulong v_off,
                              __global const int *runs, const ulong runs_off, const int n_runs,
                              const ulong n, const float lr, const float b1, const float b2,
                              const float eps, const float wd, const float bc1, const float bc2,
                              const float grad_scale)
{
    const size_t i = get_global_id(0);
    if (i >= n)
        return;
    runs += runs_off;
    int lo = 0, hi = n_runs - 1; /* the last run starting at or before i */
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        const size_t start = ((size_t)runs[3 * mid] << 31) | (size_t)runs[3 * mid + 1];
        if (start <= i)
            lo = mid;
        else
            hi = mid - 1;
    }
    const float w = runs[3 * lo + 2] ? wd : 0.0f;
    const float g = grad[grad_off + i] * grad_scale;
    const float mi = b1 * m[m_off + i] + (1.0f - b1) * g;
    const float vi = b2 * v[v_off + i] + (1.0f - b2) * g * g;
    m[m_off + i] = mi;
    v[v_off + i] = vi;
    const float p = param[param_off + i];
    param[param_off + i] = p - lr * (mi / bc1 / (sqrt(vi / bc2) + eps) + w * p);
}
