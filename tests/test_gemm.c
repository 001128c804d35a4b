/*
 * test_gemm.c - CLBlast GEMM through st_gemm against the plain-C reference:
 * non-square shapes, every transpose, element offsets, padded leading
 * dimensions, strided batches, views; and the checks that refuse operands
 * that do not fit. Runs on every device found.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "strata/gemm.h"
#include "tests/common.h"

/* fp32 sums of up to a few hundred products of numbers in [-1,1]. */
#define ATOL 1e-5
#define RTOL 1e-4

static test_devices td;

typedef struct shape_case {
    bool ta, tb;
    size_t m, n, k, batch;
    size_t off, pad;
    float alpha, beta;
} shape_case;

/* Runs one case on dev and compares the whole C buffer (so writes outside
 * C's rows would show) with the reference. */
static void run(st_device *dev, const shape_case *c)
{
    size_t batch = c->batch ? c->batch : 1;
    size_t ar = c->ta ? c->k : c->m, ac = c->ta ? c->m : c->k;
    size_t br = c->tb ? c->n : c->k, bc = c->tb ? c->k : c->n;
    size_t lda = ac + c->pad, ldb = bc + c->pad, ldc = c->n + c->pad;
    size_t sa = ar * lda, sb = br * ldb, sc = c->m * ldc;
    size_t na = c->off + batch * sa, nb = c->off + batch * sb, nc = c->off + batch * sc;
    float *a = malloc(na * 4), *b = malloc(nb * 4), *got = malloc(nc * 4), *ref = malloc(nc * 4);
    assert_true(a && b && got && ref);
    st_fill_random(a, na, 11 + c->m);
    st_fill_random(b, nb, 22 + c->n);
    st_fill_random(ref, nc, 33 + c->k);
    st_tensor *A, *B, *C;
    assert_ok(st_tensor_create(dev, ST_F32, 1, &na, "A", &A));
    assert_ok(st_tensor_create(dev, ST_F32, 1, &nb, "B", &B));
    assert_ok(st_tensor_create(dev, ST_F32, 1, &nc, "C", &C));
    assert_ok(st_tensor_write(A, 0, na, a));
    assert_ok(st_tensor_write(B, 0, nb, b));
    assert_ok(st_tensor_write(C, 0, nc, ref));
    st_gemm_args g = {.trans_a = c->ta, .trans_b = c->tb, .m = c->m, .n = c->n, .k = c->k,
                      .alpha = c->alpha, .beta = c->beta,
                      .a = A, .a_offset = c->off, .lda = lda, .a_stride = sa,
                      .b = B, .b_offset = c->off, .ldb = ldb, .b_stride = sb,
                      .c = C, .c_offset = c->off, .ldc = ldc, .c_stride = sc,
                      .batch = c->batch};
    assert_ok(st_gemm(&g));
    assert_ok(st_tensor_read(C, 0, nc, got));
    for (size_t i = 0; i < batch; i++)
        st_gemm_ref(c->ta, c->tb, c->m, c->n, c->k, c->alpha, a + c->off + i * sa, lda,
                    b + c->off + i * sb, ldb, c->beta, ref + c->off + i * sc, ldc);
    assert_close(got, ref, nc, ATOL * (double)c->k, RTOL);
    st_tensor_destroy(A);
    st_tensor_destroy(B);
    st_tensor_destroy(C);
    free(a);
    free(b);
    free(got);
    free(ref);
}

static void run_all(const shape_case *cases, size_t n)
{
    for (size_t d = 0; d < td.n; d++)
        for (size_t i = 0; i < n; i++)
            run(td.dev[d], &cases[i]);
}

static void plain_and_non_square(void **state)
{
    (void)state;
    static const shape_case cases[] = {
        {false, false, 1, 1, 1, 0, 0, 0, 1.0f, 0.0f},
        {false, false, 7, 13, 5, 0, 0, 0, 1.0f, 0.0f},
        {false, false, 64, 48, 80, 0, 0, 0, 1.0f, 0.0f},
        {false, false, 300, 260, 200, 0, 0, 0, 1.0f, 0.0f}, /* CLBlast's indirect path */
        {false, false, 1, 257, 96, 0, 0, 0, 1.0f, 0.0f},    /* a row vector times a matrix */
    };
    run_all(cases, sizeof cases / sizeof cases[0]);
}

static void transposes_alpha_beta(void **state)
{
    (void)state;
    static const shape_case cases[] = {
        {true, false, 33, 65, 17, 0, 0, 0, 1.0f, 0.0f},
        {false, true, 100, 7, 129, 0, 0, 0, 0.5f, 1.0f},
        {true, true, 31, 29, 37, 0, 0, 0, -1.0f, 0.25f},
        {false, true, 384, 256, 128, 0, 0, 0, 1.0f, 1.0f},
        {false, true, 1, 300, 64, 0, 0, 0, 0.5f, 1.0f}, /* one row: CLBlast's GEMV */
    };
    run_all(cases, sizeof cases / sizeof cases[0]);
}

static void offsets_and_padded_rows(void **state)
{
    (void)state;
    static const shape_case cases[] = {
        {false, false, 19, 23, 29, 0, 5, 3, 1.0f, 0.0f},
        {true, true, 16, 8, 24, 0, 101, 1, 1.0f, 0.5f},
        {false, true, 40, 33, 64, 0, 7, 9, 2.0f, 0.0f},
        {false, false, 1, 50, 33, 0, 5, 3, 2.0f, 0.5f}, /* GEMV with offsets, padded rows */
        {false, true, 1, 20, 70, 0, 11, 2, 1.0f, 0.0f},
    };
    run_all(cases, sizeof cases / sizeof cases[0]);
}

/* A few rows against a matrix (decoding several sequences: cl/gemv.cl on
 * CPU devices): 2 to 16 rows, both layouts of the matrix, offsets, padded
 * rows, beta; and each row's result has the same bits as that row alone. */
static void few_rows(void **state)
{
    (void)state;
    static const shape_case cases[] = {
        {false, true, 2, 37, 70, 0, 0, 0, 1.0f, 0.0f},
        {false, true, 5, 64, 33, 0, 3, 2, 0.5f, 1.0f},
        {false, true, 16, 20, 96, 0, 0, 1, 1.0f, 0.0f},
        {false, false, 3, 50, 33, 0, 5, 3, 2.0f, 0.5f},
        {false, false, 8, 21, 40, 0, 0, 0, 1.0f, 0.0f},
        {false, false, 13, 64, 17, 0, 2, 1, 1.0f, -1.0f},
    };
    run_all(cases, sizeof cases / sizeof cases[0]);
    st_gemm_decoding(true); /* decoding's products: our kernels on CPU devices */
    run_all(cases, sizeof cases / sizeof cases[0]);
    /* the bits of one row whatever the others: our kernels' promise (CPU
     * devices); CLBlast's GEMM and GEMV sum in other orders */
    const char *choice = getenv("STRATA_GEMV");
    for (size_t d = 0; d < td.n; d++)
        for (int tb = 0; tb < 2; tb++) {
            if (st_device_get_info(td.dev[d])->type != ST_DEVICE_CPU ||
                (choice && strcmp(choice, "clblast") == 0))
                continue;
            enum { M = 7, N = 45, K = 77 };
            size_t na = M * K, nb = N * K, nc = M * N;
            float a[M * K], b[N * K], all[M * N], one[N];
            st_fill_random(a, na, 3);
            st_fill_random(b, nb, 4);
            st_tensor *A, *B, *C;
            assert_ok(st_tensor_create(td.dev[d], ST_F32, 1, &na, "A", &A));
            assert_ok(st_tensor_create(td.dev[d], ST_F32, 1, &nb, "B", &B));
            assert_ok(st_tensor_create(td.dev[d], ST_F32, 1, &nc, "C", &C));
            assert_ok(st_tensor_write(A, 0, na, a));
            assert_ok(st_tensor_write(B, 0, nb, b));
            st_gemm_args g = {.trans_b = tb, .m = M, .n = N, .k = K, .alpha = 1.0f, .a = A,
                              .lda = K, .b = B, .ldb = tb ? K : N, .c = C, .ldc = N};
            assert_ok(st_gemm(&g));
            assert_ok(st_tensor_read(C, 0, nc, all));
            for (size_t i = 0; i < M; i++) {
                g.m = 1;
                g.a_offset = i * K;
                assert_ok(st_gemm(&g));
                assert_ok(st_tensor_read(C, 0, N, one));
                assert_memory_equal(one, all + i * N, sizeof one);
            }
            st_tensor_destroy(A);
            st_tensor_destroy(B);
            st_tensor_destroy(C);
        }
    st_gemm_decoding(false);
}

static void strided_batched(void **state)
{
    (void)state;
    static const shape_case cases[] = {
        {false, true, 24, 40, 16, 6, 0, 0, 1.0f, 0.0f}, /* Q.K^T per head */
        {false, false, 24, 16, 24, 6, 3, 2, 1.0f, 0.0f}, /* P.V per head */
        {true, false, 17, 9, 33, 5, 0, 1, 2.0f, -1.0f},
    };
    run_all(cases, sizeof cases / sizeof cases[0]);
}

static void matmul_on_views(void **state)
{
    (void)state;
    for (size_t d = 0; d < td.n; d++) {
        st_device *dev = td.dev[d];
        /* One buffer holding A [5,3] then B [3,4]; C [5,4] elsewhere. */
        size_t n = 15 + 12, sa[2] = {5, 3}, sb[2] = {3, 4}, sc[2] = {5, 4};
        float host[27], ref[20] = {0}, got[20];
        st_fill_random(host, 27, 5);
        st_tensor *buf, *A, *B, *C;
        assert_ok(st_tensor_create(dev, ST_F32, 1, &n, "ab", &buf));
        assert_ok(st_tensor_write(buf, 0, 27, host));
        assert_ok(st_tensor_view(buf, 0, 2, sa, &A));
        assert_ok(st_tensor_view(buf, 15, 2, sb, &B));
        assert_ok(st_tensor_create(dev, ST_F32, 2, sc, "c", &C));
        assert_ok(st_matmul(false, false, 1.0f, A, B, 0.0f, C));
        assert_ok(st_tensor_read(C, 0, 20, got));
        st_gemm_ref(false, false, 5, 4, 3, 1.0f, host, 3, host + 15, 4, 0.0f, ref, 4);
        assert_close(got, ref, 20, ATOL, RTOL);
        /* Shapes that do not agree are refused. */
        assert_int_equal(st_matmul(true, false, 1.0f, A, B, 0.0f, C), ST_ERR_INVALID);
        assert_contains(st_last_error(), "do not agree");
        st_tensor_destroy(A);
        st_tensor_destroy(B);
        st_tensor_destroy(C);
        st_tensor_destroy(buf);
    }
}

static void operands_that_do_not_fit_are_refused(void **state)
{
    (void)state;
    st_device *dev = td.dev[0];
    size_t n = 64;
    st_tensor *A, *B, *C;
    assert_ok(st_tensor_create(dev, ST_F32, 1, &n, "A", &A));
    assert_ok(st_tensor_create(dev, ST_F32, 1, &n, "B", &B));
    assert_ok(st_tensor_create(dev, ST_F32, 1, &n, "C", &C));
    st_gemm_args g = {.m = 8, .n = 8, .k = 8, .alpha = 1, .a = A, .lda = 8, .b = B, .ldb = 8,
                      .c = C, .ldc = 8};
    assert_ok(st_gemm(&g));
    g.b_offset = 1; /* one element past the end of B */
    assert_int_equal(st_gemm(&g), ST_ERR_INVALID);
    assert_contains(st_last_error(), "matrix B");
    assert_contains(st_last_error(), "needs 65 elements");
    g.b_offset = 0;
    g.lda = 7; /* shorter than a row */
    assert_int_equal(st_gemm(&g), ST_ERR_INVALID);
    assert_contains(st_last_error(), "leading dimension of A");
    g.lda = 8;
    g.batch = 2; /* batches of 64 in a 64-element tensor */
    g.a_stride = g.b_stride = g.c_stride = 64;
    assert_int_equal(st_gemm(&g), ST_ERR_INVALID);
    g.batch = 0;
    g.k = 0;
    assert_int_equal(st_gemm(&g), ST_ERR_INVALID);
    g.k = 8;
    if (td.n > 1) {
        st_tensor *other;
        assert_ok(st_tensor_create(td.dev[1], ST_F32, 1, &n, "elsewhere", &other));
        g.a = other;
        assert_int_equal(st_gemm(&g), ST_ERR_INVALID);
        assert_contains(st_last_error(), "('elsewhere') is on device 1");
        st_tensor_destroy(other);
    }
    st_tensor_destroy(A);
    st_tensor_destroy(B);
    st_tensor_destroy(C);
}

static void warmup_runs(void **state)
{
    (void)state;
    for (size_t d = 0; d < td.n; d++) {
        uint64_t before = st_device_get_memory(td.dev[d]).current;
        assert_ok(st_gemm_warmup(td.dev[d]));
        assert_int_equal(st_device_get_memory(td.dev[d]).current, before);
    }
}

static int group_teardown(void **state)
{
    (void)state;
    test_devices_close(&td);
    return 0;
}

/* B stored in 16 bits (BF16, F16; weights): C = A op(B) equals the product
 * with B widened to float, whether CLBlast multiplies it (widened into a
 * float scratch a block of rows at a time: a scratch of 100 floats makes
 * several blocks, at an element offset and a padded leading dimension) or
 * the decoding kernels read it as stored (a few rows, bit for bit with the
 * float matrix); without a scratch CLBlast's path is refused by name. */
static void sixteen_bit_b(void **state)
{
    (void)state;
    const st_dtype types[2] = {ST_BF16, ST_F16};
    for (size_t d = 0; d < td.n; d++)
        for (int k = 0; k < 2; k++)
            for (int tb = 0; tb < 2; tb++)
                for (int rows = 1; rows <= 37; rows += 36) {
                    st_device *dev = td.dev[d];
                    size_t m = (size_t)rows, n = 23, kk = 19, off = 5, ldb = (tb ? kk : n) + 3;
                    size_t br = tb ? n : kk, nb = off + br * ldb;
                    float *a = malloc(m * kk * 4), *b = malloc(nb * 4), *c0 = malloc(m * n * 4),
                          *c1 = malloc(m * n * 4);
                    uint16_t *h = malloc(nb * 2);
                    st_fill_random(a, m * kk, 5);
                    st_fill_random(b, nb, 6);
                    st_f32_to_16(types[k], b, h, nb);
                    st_16_to_f32(types[k], h, b, nb); /* the values B holds exactly */
                    st_tensor *A, *B, *H, *U, *C0, *C1;
                    size_t na = m * kk, nc = m * n, nu = 100;
                    assert_ok(st_tensor_create(dev, ST_F32, 1, &na, "A", &A));
                    assert_ok(st_tensor_create(dev, ST_F32, 1, &nb, "B", &B));
                    assert_ok(st_tensor_create(dev, types[k], 1, &nb, "B16", &H));
                    assert_ok(st_tensor_create(dev, ST_F32, 1, &nu, "scratch", &U));
                    assert_ok(st_tensor_create(dev, ST_F32, 1, &nc, "C0", &C0));
                    assert_ok(st_tensor_create(dev, ST_F32, 1, &nc, "C1", &C1));
                    assert_ok(st_tensor_write(A, 0, na, a));
                    assert_ok(st_tensor_write(B, 0, nb, b));
                    assert_ok(st_tensor_write(H, 0, nb, h));
                    st_gemm_args g = {.trans_b = tb, .m = m, .n = n, .k = kk, .alpha = 1.0f,
                                      .a = A, .lda = kk, .b = B, .b_offset = off, .ldb = ldb,
                                      .c = C0, .ldc = n};
                    for (int dec = 0; dec < 2; dec++) { /* CLBlast, then decoding's kernels */
                        st_gemm_decoding(dec == 1);
                        g.b = B, g.c = C0;
                        assert_ok(st_gemm(&g));
                        g.b = H, g.c = C1;
                        if (dec == 0 && m > 1 && st_device_get_info(dev)->type == ST_DEVICE_CPU) {
                            /* (one row is a matrix-vector product: read as stored) */
                            assert_int_equal(st_gemm(&g), ST_ERR_INVALID);
                            assert_contains(st_last_error(), "no float scratch");
                        }
                        st_tensor_set_unpack(H, U);
                        assert_ok(st_gemm(&g));
                        assert_ok(st_tensor_read(C0, 0, nc, c0));
                        assert_ok(st_tensor_read(C1, 0, nc, c1));
                        assert_close(c1, c0, nc, 1e-6, 1e-5);
                        if (dec == 1 && st_device_get_info(dev)->type == ST_DEVICE_CPU)
                            assert_memory_equal(c1, c0, nc * 4);
                    }
                    st_gemm_decoding(false);
                    st_tensor *all[] = {A, B, H, U, C0, C1};
                    for (int i = 0; i < 6; i++)
                        st_tensor_destroy(all[i]);
                    free(a), free(b), free(c0), free(c1), free(h);
                }
}

int main(void)
{
    test_devices_open_or_skip(&td);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(warmup_runs),
        cmocka_unit_test(plain_and_non_square),
        cmocka_unit_test(transposes_alpha_beta),
        cmocka_unit_test(offsets_and_padded_rows),
        cmocka_unit_test(few_rows),
        cmocka_unit_test(strided_batched),
        cmocka_unit_test(matmul_on_views),
        cmocka_unit_test(operands_that_do_not_fit_are_refused),
        cmocka_unit_test(sixteen_bit_b),
    };
    return cmocka_run_group_tests(tests, NULL, group_teardown);
}
