/* encoder.c - token + position embedding launchers (cl/encoder.cl). */
#include "layers/check.h"
#include "strata/cl.h"
#include "strata/layers.h"

st_status st_encoder_fwd(st_tensor *out, const st_tensor *tokens, const st_tensor *wte,
                         const st_tensor *wpe, const st_tensor *rows, const st_tensor *pos,
                         int B, int T, int C, int V)
{
    if (B < 1 || T < 1 || C < 1 || V < 1)
        return st_error(ST_ERR_INVALID, "encoder_fwd: empty shape B=%d T=%d C=%d V=%d", B, T, C,
                        V);
    size_t BT = (size_t)B * T;
    NEED("encoder_fwd", out, BT * C);
    NEED_W("encoder_fwd", wte, (size_t)V * C);
    NEED_W("encoder_fwd", wpe, (rows ? 1 : (size_t)T) * C);
    if (st_tensor_dtype(wte) != st_tensor_dtype(wpe))
        return st_error(ST_ERR_INVALID, "encoder_fwd: wte is %s, wpe %s: one type for both",
                        st_dtype_name(st_tensor_dtype(wte)), st_dtype_name(st_tensor_dtype(wpe)));
    st_status s = st_op_need("encoder_fwd", tokens, BT, ST_I32);
    if (s == ST_OK && rows)
        s = st_op_need("encoder_fwd", rows, 2 * BT, ST_I32);
    if (s == ST_OK && pos)
        s = rows ? st_error(ST_ERR_INVALID, "encoder_fwd: both decoding rows and positions")
                 : st_op_need("encoder_fwd", pos, BT, ST_I32);
    if (s != ST_OK)
        return s;
    const st_tensor *tab = rows ? rows : pos ? pos : tokens;
    char file[32];
    return ST_LAUNCH(st_tensor_device(out), st_typed_file("encoder.cl", st_tensor_dtype(wte), file, sizeof file),
                     "encoder_fwd", BT * C, 64, ST_KT(out),
                     ST_KT(tokens), ST_KT(wte), ST_KT(wpe), ST_KT(tab),
                     ST_KI(rows ? 1 : pos ? 2 : 0), ST_KI(BT), ST_KI(T), ST_KI(C), ST_KI(V));
}

st_status st_encoder_bwd(st_tensor *dwte, st_tensor *dwpe, const st_tensor *dout,
                         const st_tensor *tokens, const st_tensor *pos, int B, int T, int C,
                         int V)
{
    if (B < 1 || T < 1 || C < 1 || V < 1)
        return st_error(ST_ERR_INVALID, "encoder_bwd: empty shape B=%d T=%d C=%d V=%d", B, T, C,
                        V);
    size_t BT = (size_t)B * T;
    NEED("encoder_bwd", dwte, (size_t)V * C);
    NEED("encoder_bwd", dwpe, (size_t)T * C);
    NEED("encoder_bwd", dout, BT * C);
    st_status s = st_op_need("encoder_bwd", tokens, BT, ST_I32);
    if (s == ST_OK && pos)
        s = st_op_need("encoder_bwd", pos, BT, ST_I32);
    if (s != ST_OK)
        return s;
    st_device *dev = st_tensor_device(dwte);
    s = ST_LAUNCH(dev, "encoder.cl", "encoder_bwd_wte", (size_t)C, 64, ST_KT(dwte),
                  ST_KT(tokens), ST_KT(dout), ST_KI(BT), ST_KI(C), ST_KI(V));
    if (s != ST_OK)
        return s;
    if (pos)
        return ST_LAUNCH(dev, "encoder.cl", "encoder_bwd_wpe_pos", (size_t)C, 64, ST_KT(dwpe),
                         ST_KT(pos), ST_KT(dout), ST_KI(BT), ST_KI(C));
    return ST_LAUNCH(dev, "encoder.cl", "encoder_bwd_wpe", (size_t)T * C, 64, ST_KT(dwpe),
                     ST_KT(dout), ST_KI(B), ST_KI(T), ST_KI(C));
}

st_status st_embedding_fwd(st_tensor *out, const st_tensor *tokens, const st_tensor *wte, int N,
                           int C, int V)
{
    if (N < 1 || C < 1 || V < 1)
        return st_error(ST_ERR_INVALID, "embedding_fwd: empty shape N=%d C=%d V=%d", N, C, V);
    NEED("embedding_fwd", out, (size_t)N * C);
    NEED_W("embedding_fwd", wte, (size_t)V * C);
    st_status s = st_op_need("embedding_fwd", tokens, (size_t)N, ST_I32);
    if (s != ST_OK)
        return s;
    char file[32];
    return ST_LAUNCH(st_tensor_device(out), st_typed_file("encoder.cl", st_tensor_dtype(wte), file, sizeof file),
                     "embedding_fwd", (size_t)N * C, 64,
                     ST_KT(out), ST_KT(tokens), ST_KT(wte), ST_KI(N), ST_KI(C), ST_KI(V));
}

st_status st_embedding_bwd(st_tensor *dwte, const st_tensor *dout, const st_tensor *tokens, int N,
                           int C, int V)
{
    if (N < 1 || C < 1 || V < 1)
        return st_error(ST_ERR_INVALID, "embedding_bwd: empty shape N=%d C=%d V=%d", N, C, V);
    NEED("embedding_bwd", dwte, (size_t)V * C);
    NEED("embedding_bwd", dout, (size_t)N * C);
    st_status s = st_op_need("embedding_bwd", tokens, (size_t)N, ST_I32);
    if (s != ST_OK)
        return s;
    return ST_LAUNCH(st_tensor_device(dwte), "encoder.cl", "encoder_bwd_wte", (size_t)C, 64,
                     ST_KT(dwte), ST_KT(tokens), ST_KT(dout), ST_KI(N), ST_KI(C), ST_KI(V));
}
