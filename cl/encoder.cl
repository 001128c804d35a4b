/*
 * encoder.cl - token + position embedding.
 *
 * tokens: [B*T] int    wte, dwte: [V, C]    wpe, dwpe: [maxT, C]    out, dout: [B, T, C]
 *
 * forward:  out[b,t,:] = wte[tokens[b,t],:] + wpe[t,:] (has_rows 1, decoding:
 *           wpe[rows[2n + 1],:], each row's own position; has_rows 2, packed
 *           documents: wpe[rows[n],:], each row's position in its document)
 * backward: dwte[v,:] += sum of dout[b,t,:] over tokens[b,t] == v;  dwpe[t,:] += sum_b dout[b,t,:]
 * The token gradient gives each work-item one channel and walks the tokens in
 * order, so repeated tokens are summed in a fixed order without atomics.
 * Token ids outside [0, V) are skipped (the data loader refuses them first).
 *
 * The tables' storage type is a build-time definition for the forwards
 * ("encoder.cl#W_BF16", "encoder.cl#W_F16"; float by default): rows are
 * widened exactly as they are read. Gradients are float.
 */
#if defined(W_BF16)
typedef ushort wtype;
#define WLOAD(p) as_float((uint)(*(p)) << 16)
#elif defined(W_F16)
typedef half wtype;
#define WLOAD(p) vload_half(0, (p))
#else
typedef float wtype;
#define WLOAD(p) (*(p))
#endif
__kernel void encoder_fwd(__global float *out, const ulong out_off,
                          __global const int *tokens, const ulong tokens_off,
                          __global const wtype *wte, const ulong wte_off,
                          __global const wtype *wpe, const ulong wpe_off,
                          __global const int *rows, const ulong rows_off, const int has_rows,
                          const int BT, const int T, const int C, const int V)
{
    const size_t i = get_global_id(0);
    if (i >= (size_t)BT * C)
        return;
    const int n = i / C, c = i % C;
    const int t = has_rows == 1   ? rows[rows_off + 2 * n + 1]
                  : has_rows == 2 ? rows[rows_off + n]
                                  : n % T;
    const int tok = tokens[tokens_off + n];
    const float e = tok >= 0 && tok < V ? WLOAD(wte + wte_off + (size_t)tok * C + c) : 0.0f;
    out[out_off + i] = e + WLOAD(wpe + wpe_off + (size_t)t * C + c);
}

__kernel void encoder_bwd_wte(__global float *dwte, const ulong dwte_off,
                              __global const int *tokens, const ulong tokens_off,
                              __global const float *dout, const ulong dout_off,
                              const int BT, const int C, const int V)
{
    const int c = get_global_id(0);
    if (c >= C)
        return;
    for (int n = 0; n < BT; n++) {
        const int tok = tokens[tokens_off + n];
        if (tok >= 0 && tok < V)
            dwte[dwte_off + (size_t)tok * C + c] += dout[dout_off + (size_t)n * C + c];
    }
}

__kernel void encoder_bwd_wpe(__global float *dwpe, const ulong dwpe_off,
                              __global const float *dout, const ulong dout_off,
                              const int B, const int T, const int C)
{
    const size_t i = get_global_id(0);
    if (i >= (size_t)T * C)
        return;
    float s = 0.0f;
    for (int b = 0; b < B; b++)
        s += dout[dout_off + (size_t)b * T * C + i];
    dwpe[dwpe_off + i] += s;
}

/* dwpe with packed documents: row n's gradient goes to its position pos[n]
 * (below T). One work-item per channel walks the rows in order, as
 * encoder_bwd_wte does: a fixed order of sums without atomics. */
__kernel void encoder_bwd_wpe_pos(__global float *dwpe, const ulong dwpe_off,
                                  __global const int *pos, const ulong pos_off,
                                  __global const float *dout, const ulong dout_off,
                                  const int BT, const int C)
{
    const int c = get_global_id(0);
    if (c >= C)
        return;
    for (int n = 0; n < BT; n++)
        dwpe[dwpe_off + (size_t)pos[pos_off + n] * C + c] += dout[dout_off + (size_t)n * C + c];
}

/* Token embedding alone (no positions): out[n,:] = wte[tokens[n],:]. The
 * backward is encoder_bwd_wte. */
__kernel void embedding_fwd(__global float *out, const ulong out_off,
                            __global const int *tokens, const ulong tokens_off,
                            __global const wtype *wte, const ulong wte_off,
                            const int N, const int C, const int V)
{
    const size_t i = get_global_id(0);
    if (i >= (size_t)N * C)
        return;
    const int n = i / C, c = i % C;
    const int tok = tokens[tokens_off + n];
    out[out_off + i] = tok >= 0 && tok < V ? WLOAD(wte + wte_off + (size_t)tok * C + c) : 0.0f;
}
