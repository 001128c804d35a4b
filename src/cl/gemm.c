/*
 * gemm.c - matrix products through CLBlast, and the plain-C reference.
 *
 * Every operand is checked against its tensor's extent before CLBlast sees
 * it: CLBlast checks buffer sizes but not views, and an overrun into a
 * neighbouring view would corrupt data silently.
 */
#include <clblast_c.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strata/cl.h"
#include "strata/gemm.h"

static const char *clblast_error_name(int code)
{
    switch (code) {
    case CLBlastNotImplemented:
        return "CLBlastNotImplemented";
    case CLBlastInvalidMatrixA:
        return "CLBlastInvalidMatrixA";
    case CLBlastInvalidMatrixB:
        return "CLBlastInvalidMatrixB";
    case CLBlastInvalidMatrixC:
        return "CLBlastInvalidMatrixC";
    case CLBlastInvalidDimension:
        return "CLBlastInvalidDimension";
    case CLBlastInvalidLeadDimA:
        return "CLBlastInvalidLeadDimA";
    case CLBlastInvalidLeadDimB:
        return "CLBlastInvalidLeadDimB";
    case CLBlastInvalidLeadDimC:
        return "CLBlastInvalidLeadDimC";
    case CLBlastInsufficientMemoryA:
        return "CLBlastInsufficientMemoryA";
    case CLBlastInsufficientMemoryB:
        return "CLBlastInsufficientMemoryB";
    case CLBlastInsufficientMemoryC:
        return "CLBlastInsufficientMemoryC";
    case CLBlastInsufficientMemoryTemp:
        return "CLBlastInsufficientMemoryTemp";
    case CLBlastInvalidBatchCount:
        return "CLBlastInvalidBatchCount";
    case CLBlastInvalidOverrideKernel:
        return "CLBlastInvalidOverrideKernel";
    case CLBlastMissingOverrideParameter:
        return "CLBlastMissingOverrideParameter";
    case CLBlastInvalidLocalMemUsage:
        return "CLBlastInvalidLocalMemUsage";
    case CLBlastNoHalfPrecision:
        return "CLBlastNoHalfPrecision";
    case CLBlastNoDoublePrecision:
        return "CLBlastNoDoublePrecision";
    case CLBlastDatabaseError:
        return "CLBlastDatabaseError";
    case CLBlastUnknownError:
        return "CLBlastUnknownError";
    case CLBlastUnexpectedError:
        return "CLBlastUnexpectedError";
    default:
        return st_cl_error_name(code); /* the codes CLBlast shares with OpenCL */
    }
}

static st_status check_operand(const char *which, const st_tensor *t, const st_device *dev,
                               size_t offset, size_t ld, size_t stride, size_t batch,
                               size_t rows, size_t cols, size_t outer, size_t outer_stride)
{
    if (!t)
        return st_error(ST_ERR_INVALID, "gemm: matrix %s is missing", which);
    if (st_tensor_device(t) != dev)
        return st_error(ST_ERR_INVALID, "gemm: matrix %s ('%s') is on %s, not on %s", which,
                        st_tensor_name(t), st_device_label(st_tensor_device(t)),
                        st_device_label(dev));
    st_dtype dt = st_tensor_dtype(t);
    if (dt != ST_F32 && !(strcmp(which, "B") == 0 && (dt == ST_BF16 || dt == ST_F16)))
        return st_error(ST_ERR_INVALID, "gemm: matrix %s ('%s') is %s, expected F32%s", which,
                        st_tensor_name(t), st_dtype_name(dt),
                        strcmp(which, "B") == 0 ? " (or BF16, F16)" : "");
    if (ld < cols)
        return st_error(ST_ERR_INVALID,
                        "gemm: leading dimension of %s ('%s') is %zu, less than its %zu columns",
                        which, st_tensor_name(t), ld, cols);
    /* Last element touched: offset + (batch-1)*stride + (rows-1)*ld + cols - 1. */
    size_t end = offset + (outer - 1) * outer_stride + (batch - 1) * stride + (rows - 1) * ld +
                 cols;
    if (end > st_tensor_numel(t))
        return st_error(ST_ERR_INVALID,
                        "gemm: matrix %s ([%zu,%zu], ld %zu, offset %zu, %zu batch item(s) of "
                        "stride %zu) needs %zu elements but tensor '%s' has %zu",
                        which, rows, cols, ld, offset, batch, stride, end, st_tensor_name(t),
                        st_tensor_numel(t));
    return ST_OK;
}

/* CLBlast allocates device buffers of its own inside some products (padded
 * copies for its fast kernel, the offsets of a batched call), outside
 * Strata's memory accounting. Before such a call, the room it needs (as
 * CLBlast itself computes it for one product, times the items, plus the
 * offsets) must be free in the accounting: else a clear out-of-memory error
 * now, instead of a failure inside CLBlast. */
static st_status check_clblast_room(const st_gemm_args *g, st_device *dev, cl_command_queue *q,
                                    CLBlastTranspose ta, CLBlastTranspose tb, size_t ao,
                                    size_t bo, size_t co, size_t items)
{
    if (g->m == 1 && items == 1 && !g->trans_a)
        return ST_OK; /* GEMV: no buffers of its own */
    size_t temp = 0;
    CLBlastStatusCode r = CLBlastSGemmTempBufferSize(CLBlastLayoutRowMajor, ta, tb, g->m, g->n,
                                                     g->k, ao, g->lda, bo, g->ldb, co, g->ldc, q,
                                                     &temp);
    if (r != CLBlastSuccess)
        return ST_OK; /* CLBlast will say what is wrong with the call itself */
    uint64_t need = (uint64_t)temp * items + (items > 1 ? (uint64_t)items * 5 * 8 : 0);
    st_device_memory mem = st_device_get_memory(dev);
    uint64_t free = mem.capacity > mem.current ? mem.capacity - mem.current : 0;
    if (need > free) {
        char a[32], b[32];
        return st_error(ST_ERR_DEVICE_MEMORY,
                        "gemm %zux%zux%zu (%zu item(s), C='%s') needs %s of CLBlast scratch on %s, "
                        "but only %s is free: use a smaller batch or more devices",
                        g->m, g->n, g->k, items, st_tensor_name(g->c),
                        st_format_bytes(need, a, sizeof a), st_device_label(dev),
                        st_format_bytes(free, b, sizeof b));
    }
    return ST_OK;
}

/* Whether dev takes cl/gemv.cl for one row against a matrix, and in a
 * decoding pass for up to ST_GEMV_ROWS (CPU devices: CLBlast's GEMV read an
 * 82M-parameter Llama's weights at 3.4 GB/s there, its GEMM of 2 to 8 rows
 * took longer than that many GEMVs, and a prompt's pass of 380 rows took
 * 1.5 times as long in CLBlast's GEMM as in ours); STRATA_GEMV=clblast or
 * own overrides. Training keeps CLBlast's GEMM (its numbers stay). */
enum { ST_GEMV_ROWS = 256 }; /* the most rows cl/gemv.cl takes in a decoding pass */

/* Set by st_gemm_decoding for this thread's products. */
static _Thread_local bool decoding;

void st_gemm_decoding(bool on)
{
    decoding = on;
}

static bool own_gemv(st_device *dev)
{
    const char *v = getenv("STRATA_GEMV");
    if (v && strcmp(v, "clblast") == 0)
        return false;
    if (v && strcmp(v, "own") == 0)
        return true;
    return st_device_get_info(dev)->type == ST_DEVICE_CPU;
}

/* B stored in 16 bits, through CLBlast: widened a block at a time into its
 * float scratch (st_tensor_unpack), each block's product one call. B is
 * [n, k] (trans_b: blocks of its rows) or [k, n] (blocks of its columns);
 * a block is C's columns n0 .. n0 + nb. The blocks are as large as the
 * scratch holds (the stage sizes it: every matrix whole up to a cap). */
static st_status gemm_unpacked(const st_gemm_args *g, st_device *dev)
{
    st_tensor *u = st_tensor_unpack(g->b);
    st_dtype dt = st_tensor_dtype(g->b);
    if (!u)
        return st_error(ST_ERR_INVALID,
                        "gemm: matrix B ('%s') is %s and has no float scratch to widen it into",
                        st_tensor_name(g->b), st_dtype_name(dt));
    if ((g->batch > 1 || g->outer > 1))
        return st_error(ST_ERR_INVALID, "gemm: a batched product of a %s matrix B ('%s')",
                        st_dtype_name(dt), st_tensor_name(g->b));
    size_t room = st_tensor_numel(u), nb = room / g->k;
    if (nb == 0)
        return st_error(ST_ERR_INVALID,
                        "gemm: the float scratch of '%s' holds %zu values, less than a row of %zu",
                        st_tensor_name(g->b), room, g->k);
    st_status s = ST_OK;
    for (size_t n0 = 0; s == ST_OK && n0 < g->n; n0 += nb) {
        size_t w = g->n - n0 < nb ? g->n - n0 : nb;
        /* trans_b: rows n0.. of [n, k]; else columns n0.. of each of the k rows */
        size_t rows = g->trans_b ? w : g->k, cols = g->trans_b ? g->k : w;
        size_t add = g->b_offset + (g->trans_b ? n0 * g->ldb : n0);
        char file[32];
        if ((s = ST_LAUNCH(dev, st_typed_file("convert.cl", dt, file, sizeof file), "unpack16", rows * cols, 64, ST_KT(u),
                           ST_KT(g->b), ST_KU(add), ST_KI(rows), ST_KI(cols),
                           ST_KI(g->ldb))) != ST_OK)
            break;
        st_gemm_args h = *g;
        h.b = u;
        h.b_offset = 0;
        h.ldb = cols;
        h.n = w;
        h.c_offset = g->c_offset + n0;
        s = st_gemm(&h);
    }
    return s;
}

st_status st_gemm(const st_gemm_args *g)
{
    if (!g->c)
        return st_error(ST_ERR_INVALID, "gemm: matrix C is missing");
    st_device *dev = st_tensor_device(g->c);
    size_t batch = g->batch ? g->batch : 1, outer = g->outer ? g->outer : 1;
    if (g->m == 0 || g->n == 0 || g->k == 0)
        return st_error(ST_ERR_INVALID, "gemm: empty product %zux%zux%zu", g->m, g->n, g->k);
    st_status s;
    /* Row-major storage: A is [m,k] or, transposed, stored [k,m]. */
    if ((s = check_operand("A", g->a, dev, g->a_offset, g->lda, g->a_stride, batch,
                           g->trans_a ? g->k : g->m, g->trans_a ? g->m : g->k, outer,
                           g->a_outer)) != ST_OK ||
        (s = check_operand("B", g->b, dev, g->b_offset, g->ldb, g->b_stride, batch,
                           g->trans_b ? g->n : g->k, g->trans_b ? g->k : g->n, outer,
                           g->b_outer)) != ST_OK ||
        (s = check_operand("C", g->c, dev, g->c_offset, g->ldc, g->c_stride, batch, g->m,
                           g->n, outer, g->c_outer)) != ST_OK)
        return s;

    cl_command_queue q = st_device_cl_queue(dev);
    CLBlastTranspose ta = g->trans_a ? CLBlastTransposeYes : CLBlastTransposeNo;
    CLBlastTranspose tb = g->trans_b ? CLBlastTransposeYes : CLBlastTransposeNo;
    size_t ao = st_tensor_offset(g->a) + g->a_offset;
    size_t bo = st_tensor_offset(g->b) + g->b_offset;
    size_t co = st_tensor_offset(g->c) + g->c_offset;
    CLBlastStatusCode r;
    const char *call;
    if ((s = check_clblast_room(g, dev, &q, ta, tb, ao, bo, co, outer * batch)) != ST_OK)
        return s;
    bool wide = st_tensor_dtype(g->b) == ST_F32;
    char file[32];
    if (outer == 1 && batch == 1 && (g->m == 1 || (decoding && g->m <= ST_GEMV_ROWS)) &&
        !g->trans_a && own_gemv(dev))
        /* A few rows against a matrix on a CPU device (decoding): our own
         * kernels (cl/gemv.cl), which read each weight once for all the
         * rows, at four to five times CLBlast's GEMV rate there for one row
         * (the profiler names them); a 16-bit matrix read as it is stored. */
        return ST_LAUNCH(dev, st_typed_file("gemv.cl", st_tensor_dtype(g->b), file, sizeof file),
                         g->trans_b ? "gemv_rows" : "gemv_cols",
                         g->trans_b ? (g->n + 1) / 2 : (g->n + 15) / 16, 0,
                         ST_KT(g->c), ST_KT(g->b), ST_KT(g->a), ST_KU(g->c_offset),
                         ST_KU(g->b_offset), ST_KU(g->a_offset), ST_KI(g->n), ST_KI(g->k),
                         ST_KI(g->ldb), ST_KI(g->m), ST_KI(g->lda), ST_KI(g->ldc),
                         ST_KF(g->alpha), ST_KF(g->beta));
    if (!wide)
        return gemm_unpacked(g, dev);
    /* Profiling: markers around the call (CLBlast may enqueue several kernels). */
    cl_event before = NULL, after = NULL;
    if (st_profiler_event(dev, &before))
        clEnqueueMarkerWithWaitList(q, 0, NULL, &before);
    if (outer > 1) {
        /* Two levels of batch: CLBlast's batched GEMM takes one offset per item. */
        size_t items = outer * batch;
        size_t *offs = malloc(3 * items * sizeof *offs);
        float *ab = malloc(2 * items * sizeof *ab);
        if (!offs || !ab) {
            free(offs);
            free(ab);
            return st_error(ST_ERR_HOST_MEMORY, "out of host memory for %zu GEMM offsets", items);
        }
        for (size_t o = 0; o < outer; o++)
            for (size_t i = 0; i < batch; i++) {
                size_t j = o * batch + i;
                offs[j] = ao + o * g->a_outer + i * g->a_stride;
                offs[items + j] = bo + o * g->b_outer + i * g->b_stride;
                offs[2 * items + j] = co + o * g->c_outer + i * g->c_stride;
                ab[j] = g->alpha;
                ab[items + j] = g->beta;
            }
        call = "CLBlastSgemmBatched";
        r = CLBlastSgemmBatched(CLBlastLayoutRowMajor, ta, tb, g->m, g->n, g->k, ab,
                                st_tensor_cl_mem(g->a), offs, g->lda, st_tensor_cl_mem(g->b),
                                offs + items, g->ldb, ab + items, st_tensor_cl_mem(g->c),
                                offs + 2 * items, g->ldc, items, &q, NULL);
        free(offs);
        free(ab);
    } else if (batch == 1 && g->m == 1 && !g->trans_a) {
        /* One row (decoding one token): c = op(B)^T a is a matrix-vector
         * product, which CLBlast's GEMV does several times faster than its GEMM. */
        call = "CLBlastSgemv";
        r = g->trans_b
                ? CLBlastSgemv(CLBlastLayoutRowMajor, CLBlastTransposeNo, g->n, g->k, g->alpha,
                               st_tensor_cl_mem(g->b), bo, g->ldb, st_tensor_cl_mem(g->a), ao, 1,
                               g->beta, st_tensor_cl_mem(g->c), co, 1, &q, NULL)
                : CLBlastSgemv(CLBlastLayoutRowMajor, CLBlastTransposeYes, g->k, g->n, g->alpha,
                               st_tensor_cl_mem(g->b), bo, g->ldb, st_tensor_cl_mem(g->a), ao, 1,
                               g->beta, st_tensor_cl_mem(g->c), co, 1, &q, NULL);
    } else if (batch == 1) {
        call = "CLBlastSgemm";
        r = CLBlastSgemm(CLBlastLayoutRowMajor, ta, tb, g->m, g->n, g->k, g->alpha,
                         st_tensor_cl_mem(g->a), ao, g->lda, st_tensor_cl_mem(g->b), bo, g->ldb,
                         g->beta, st_tensor_cl_mem(g->c), co, g->ldc, &q, NULL);
    } else {
        call = "CLBlastSgemmStridedBatched";
        r = CLBlastSgemmStridedBatched(CLBlastLayoutRowMajor, ta, tb, g->m, g->n, g->k, g->alpha,
                                       st_tensor_cl_mem(g->a), ao, g->lda, g->a_stride,
                                       st_tensor_cl_mem(g->b), bo, g->ldb, g->b_stride, g->beta,
                                       st_tensor_cl_mem(g->c), co, g->ldc, g->c_stride, batch,
                                       &q, NULL);
    }
    if (before) {
        if (r == CLBlastSuccess && clEnqueueMarkerWithWaitList(q, 0, NULL, &after) == CL_SUCCESS) {
            char op[64];
            size_t items = outer * batch;
            snprintf(op, sizeof op, "%s %s%s", strcmp(call, "CLBlastSgemv") == 0 ? "gemv" : "gemm",
                     g->trans_a ? "T" : "N", g->trans_b ? "T" : "N");
            if (items > 1)
                snprintf(op + strlen(op), sizeof op - strlen(op), " batched");
            double flops = 2.0 * (double)g->m * g->n * g->k * items;
            double bytes = 4.0 * ((double)g->m * g->k + (double)g->k * g->n +
                                  2.0 * (double)g->m * g->n) * items;
            st_profiler_record_span(dev, op, before, after, bytes, flops);
        } else {
            clReleaseEvent(before);
        }
    }
    if (r != CLBlastSuccess) {
        st_status code = (r == CLBlastOpenCLOutOfResources || r == CLBlastTempBufferAllocFailure)
                             ? ST_ERR_DEVICE_MEMORY
                             : ST_ERR_BLAS;
        return st_error(code,
                        "%s (%s%s, m=%zu n=%zu k=%zu, batch %zu, C='%s') failed with %s (%d) "
                        "on %s; %s",
                        call, g->trans_a ? "T" : "N", g->trans_b ? "T" : "N", g->m, g->n, g->k,
                        batch, st_tensor_name(g->c), clblast_error_name(r), (int)r,
                        st_device_label(dev),
                        code == ST_ERR_DEVICE_MEMORY
                            ? "the device is out of memory: use a smaller batch or more devices"
                            : "this points at a bug in Strata or CLBlast: please report it");
    }
    return ST_OK;
}

st_status st_matmul(bool trans_a, bool trans_b, float alpha, const st_tensor *a,
                    const st_tensor *b, float beta, st_tensor *c)
{
    if (st_tensor_ndim(a) != 2 || st_tensor_ndim(b) != 2 || st_tensor_ndim(c) != 2)
        return st_error(ST_ERR_INVALID, "matmul: '%s', '%s' and '%s' must be 2-D",
                        st_tensor_name(a), st_tensor_name(b), st_tensor_name(c));
    size_t m = st_tensor_dim(c, 0), n = st_tensor_dim(c, 1);
    size_t ka = st_tensor_dim(a, trans_a ? 0 : 1), kb = st_tensor_dim(b, trans_b ? 1 : 0);
    if (st_tensor_dim(a, trans_a ? 1 : 0) != m || st_tensor_dim(b, trans_b ? 0 : 1) != n ||
        ka != kb)
        return st_error(ST_ERR_INVALID,
                        "matmul: shapes do not agree: %s[%zu,%zu]%s . %s[%zu,%zu]%s -> "
                        "%s[%zu,%zu]",
                        st_tensor_name(a), st_tensor_dim(a, 0), st_tensor_dim(a, 1),
                        trans_a ? "^T" : "", st_tensor_name(b), st_tensor_dim(b, 0),
                        st_tensor_dim(b, 1), trans_b ? "^T" : "", st_tensor_name(c), m, n);
    st_gemm_args g = {
        .trans_a = trans_a, .trans_b = trans_b, .m = m, .n = n, .k = ka,
        .alpha = alpha, .beta = beta,
        .a = a, .lda = st_tensor_dim(a, 1),
        .b = b, .ldb = st_tensor_dim(b, 1),
        .c = c, .ldc = n,
    };
    return st_gemm(&g);
}

st_status st_gemm_warmup(st_device *dev)
{
    /* One small product (CLBlast's direct kernel), one large (its indirect
     * kernel with the helper copy kernels) and one batched. */
    static const size_t sizes[] = {16, 512};
    const size_t max = 512;
    /* Under a small memory limit (--mem-limit) the warm-up is left out: the
     * kernels then build at their first use. */
    st_device_memory mem = st_device_get_memory(dev);
    if (mem.capacity < mem.current || mem.capacity - mem.current < 4 * 3 * max * max * sizeof(float))
        return ST_OK;
    st_tensor *a = NULL, *b = NULL, *c = NULL;
    size_t shape[2] = {max, max};
    st_status s;
    if ((s = st_tensor_create(dev, ST_F32, 2, shape, "gemm warm-up A", &a)) != ST_OK ||
        (s = st_tensor_create(dev, ST_F32, 2, shape, "gemm warm-up B", &b)) != ST_OK ||
        (s = st_tensor_create(dev, ST_F32, 2, shape, "gemm warm-up C", &c)) != ST_OK)
        goto done;
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t n = sizes[i];
        st_gemm_args g = {.m = n, .n = n, .k = n, .alpha = 1, .beta = 0,
                          .a = a, .lda = n, .b = b, .ldb = n, .c = c, .ldc = n};
        if ((s = st_gemm(&g)) != ST_OK)
            goto done;
        g.trans_b = true;
        if ((s = st_gemm(&g)) != ST_OK)
            goto done;
    }
    st_gemm_args g = {.m = 16, .n = 16, .k = 16, .alpha = 1, .beta = 0,
                      .a = a, .lda = 16, .a_stride = 256,
                      .b = b, .ldb = 16, .b_stride = 256,
                      .c = c, .ldc = 16, .c_stride = 256, .batch = 4};
    if ((s = st_gemm(&g)) != ST_OK)
        goto done;
    /* One row: decoding's matrix-vector products (CLBlast's GEMV), both ways. */
    for (int t = 0; t < 2; t++) {
        st_gemm_args v = {.trans_b = t == 1, .m = 1, .n = 64, .k = 64, .alpha = 1, .beta = 0,
                          .a = a, .lda = 64, .b = b, .ldb = 64, .c = c, .ldc = 64};
        if ((s = st_gemm(&v)) != ST_OK)
            goto done;
    }
    s = st_device_finish(dev);
done:
    st_tensor_destroy(c);
    st_tensor_destroy(b);
    st_tensor_destroy(a);
    return s;
}

void st_gemm_ref(bool trans_a, bool trans_b, size_t m, size_t n, size_t k, float alpha,
                 const float *a, size_t lda, const float *b, size_t ldb, float beta, float *c,
                 size_t ldc)
{
    for (size_t i = 0; i < m; i++) {
        for (size_t j = 0; j < n; j++) {
            double acc = 0.0; /* double: the reference should be the more exact side */
            for (size_t p = 0; p < k; p++) {
                float av = trans_a ? a[p * lda + i] : a[i * lda + p];
                float bv = trans_b ? b[j * ldb + p] : b[p * ldb + j];
                acc += (double)av * (double)bv;
            }
            float prev = beta == 0.0f ? 0.0f : beta * c[i * ldc + j];
            c[i * ldc + j] = (float)(alpha * acc) + prev;
        }
    }
}
