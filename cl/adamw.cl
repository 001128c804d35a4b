/*
 * adamw.cl - one AdamW step with decoupled weight decay and bias correction.
 *
 * param, grad, m, v: [n]
 *   m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2
 *   param -= lr * (m / bc1 / (sqrt(v / bc2) + eps) + wd * param)
 * bc1 = 1 - b1^t and bc2 = 1 - b2^t come from the host (t counts from 1).
 * grad_scale multiplies the gradient first (global-norm clipping).
 */
/* Element i's update, decay w (0 or the weight decay). */
static void adamw_one(__global float *param, __global const float *grad, __global float *m,
                      __global float *v, const size_t i, const float lr, const float b1,
                      const float b2, const float eps, const float w, const float bc1,
                      const float bc2, const float grad_scale)
{
    const float g = grad[i] * grad_scale;
    const float mi = b1 * m[i] + (1.0f - b1) * g;
    const float vi = b2 * v[i] + (1.0f - b2) * g * g;
    m[i] = mi;
    v[i] = vi;
    const float p = param[i];
    param[i] = p - lr * (mi / bc1 / (sqrt(vi / bc2) + eps) + w * p);
}

__kernel void adamw_step(__global float *param, const ulong param_off,
                         __global const float *grad, const ulong grad_off,
                         __global float *m, const ulong m_off,
                         __global float *v, const ulong v_off,
                         const ulong n, const float lr, const float b1, const float b2,
                         const float eps, const float wd, const float bc1, const float bc2,
                         const float grad_scale)
{
    const size_t i = get_global_id(0);
    if (i < n)
        adamw_one(param + param_off, grad + grad_off, m + m_off, v + v_off, i, lr, b1, b2, eps,
                  wd, bc1, bc2, grad_scale);
}

/* The same over a whole stage's buffers in one launch: element e of
 * [0, n) (offsets give the stretch) decays only when its run does. runs
 * holds, per run of parameters with one decay setting, its first element
 * (two 31-bit halves) and 1 or 0; runs are in order and the first starts
 * at 0. Elements between parameters hold zeros and stay zeros.
 * Work-groups of AD_WG work-items take stretches of L * AD_WG elements,
 * work-item l every AD_WG-th from l (neighbours side by side; the stretch
 * stays in cache while a CPU runs the work-items one after another); each
 * finds its run once and moves to the next as it passes a run's start. */
#define AD_WG 64

static size_t run_start(__global const int *runs, const int r)
{
    return ((size_t)runs[3 * r] << 31) | (size_t)runs[3 * r + 1];
}

__kernel void adamw_step_runs(__global float *param, const ulong param_off,
                              __global const float *grad, const ulong grad_off,
                              __global float *m, const ulong m_off,
                              __global float *v, const ulong v_off,
                              __global const int *runs, const ulong runs_off, const int n_runs,
                              const ulong n, const ulong L, const float lr, const float b1,
                              const float b2, const float eps, const float wd, const float bc1,
                              const float bc2, const float grad_scale)
{
    runs += runs_off;
    const size_t begin = get_group_id(0) * L * AD_WG + get_local_id(0);
    const size_t end = min((size_t)n, (get_group_id(0) + 1) * L * AD_WG);
    if (begin >= end)
        return;
    int lo = 0, hi = n_runs - 1; /* the last run starting at or before begin */
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (run_start(runs, mid) <= begin)
            lo = mid;
        else
            hi = mid - 1;
    }
    size_t next = lo + 1 < n_runs ? run_start(runs, lo + 1) : (size_t)n;
    for (size_t i = begin; i < end; i += AD_WG) {
        while (i >= next) {
            lo++;
            next = lo + 1 < n_runs ? run_start(runs, lo + 1) : (size_t)n;
        }
        adamw_one(param + param_off, grad + grad_off, m + m_off, v + v_off, i, lr, b1, b2, eps,
                  runs[3 * lo + 2] ? wd : 0.0f, bc1, bc2, grad_scale);
    }
}
