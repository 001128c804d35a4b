/*
 * cmd_check.c - `strata check`: on every chosen device, build and run a
 * kernel, run CLBlast GEMMs of several shapes against the plain-C reference,
 * and time one large GEMM.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/clock.h"
#include "cli/cli.h"
#include "strata/compare.h"

static void help(void)
{
    printf("usage: strata check [--devices CHOICE] [--size N]\n"
           "\n"
           "On each chosen device: builds cl/fill.cl (through the kernel cache) and\n"
           "runs it, runs CLBlast GEMMs of several shapes (transposes, offsets,\n"
           "padded rows, batched) against a plain-C reference, then times an\n"
           "N x N x N SGEMM after a warm-up.\n"
           "\n"
           "  --devices CHOICE  all, gpu, cpu, accelerator, indices (0,2 or 0-3) or\n"
           "                    part of a device name; default $STRATA_DEVICES, else all\n"
           "  --size N          size of the timed GEMM (default 512; 0 skips timing)\n"
           "  -h, --help        this text\n"
           "\n"
           "Exit status: 0 every check passed; 1 a check failed; 2 bad options or\n"
           "no device matches.\n");
}

typedef struct gemm_case {
    bool ta, tb;
    size_t m, n, k;
    size_t pad;   /* extra elements per row: leading dimension > columns */
    size_t off;   /* elements before each operand */
    size_t batch; /* 1: plain GEMM */
    float alpha, beta;
} gemm_case;

static const gemm_case cases[] = {
    {false, false, 64, 48, 80, 0, 0, 1, 1.0f, 0.0f},
    {true, false, 33, 65, 17, 0, 5, 1, 1.0f, 0.0f},
    {false, true, 100, 7, 129, 3, 0, 1, 0.5f, 1.0f},
    {true, true, 31, 29, 37, 2, 11, 1, -1.0f, 0.25f},
    {false, false, 384, 320, 256, 0, 0, 1, 1.0f, 0.0f},
    {false, true, 24, 40, 16, 1, 7, 6, 1.0f, 0.0f},
    {true, false, 17, 9, 33, 0, 3, 5, 2.0f, -1.0f},
};

/* Stored rows and columns of an operand, and its element count over the batch. */
static size_t operand_len(bool trans, size_t rows, size_t cols, size_t pad, size_t off,
                          size_t batch, size_t *ld, size_t *stride)
{
    size_t r = trans ? cols : rows, c = trans ? rows : cols;
    *ld = c + pad;
    *stride = r * *ld;
    return off + batch * *stride;
}

static st_status run_case(st_device *dev, const gemm_case *gc, unsigned seed, char *detail,
                          size_t detail_size, bool *ok)
{
    size_t lda, ldb, ldc, sa, sb, sc;
    size_t na = operand_len(gc->ta, gc->m, gc->k, gc->pad, gc->off, gc->batch, &lda, &sa);
    size_t nb = operand_len(gc->tb, gc->k, gc->n, gc->pad, gc->off, gc->batch, &ldb, &sb);
    size_t nc = operand_len(false, gc->m, gc->n, gc->pad, gc->off, gc->batch, &ldc, &sc);
    float *a = malloc(na * sizeof *a), *b = malloc(nb * sizeof *b);
    float *c = malloc(nc * sizeof *c), *ref = malloc(nc * sizeof *ref);
    st_tensor *ta = NULL, *tb = NULL, *tc = NULL;
    st_status s = ST_OK;
    if (!a || !b || !c || !ref) {
        s = st_error(ST_ERR_HOST_MEMORY, "out of host memory in gemm check");
        goto done;
    }
    st_fill_random(a, na, seed * 3 + 1);
    st_fill_random(b, nb, seed * 3 + 2);
    st_fill_random(c, nc, seed * 3 + 3);
    memcpy(ref, c, nc * sizeof *c);
    if ((s = st_tensor_create(dev, ST_F32, 1, &na, "check A", &ta)) != ST_OK ||
        (s = st_tensor_create(dev, ST_F32, 1, &nb, "check B", &tb)) != ST_OK ||
        (s = st_tensor_create(dev, ST_F32, 1, &nc, "check C", &tc)) != ST_OK ||
        (s = st_tensor_write(ta, 0, na, a)) != ST_OK ||
        (s = st_tensor_write(tb, 0, nb, b)) != ST_OK ||
        (s = st_tensor_write(tc, 0, nc, c)) != ST_OK)
        goto done;
    st_gemm_args g = {.trans_a = gc->ta, .trans_b = gc->tb, .m = gc->m, .n = gc->n, .k = gc->k,
                      .alpha = gc->alpha, .beta = gc->beta,
                      .a = ta, .a_offset = gc->off, .lda = lda, .a_stride = sa,
                      .b = tb, .b_offset = gc->off, .ldb = ldb, .b_stride = sb,
                      .c = tc, .c_offset = gc->off, .ldc = ldc, .c_stride = sc,
                      .batch = gc->batch};
    if ((s = st_gemm(&g)) != ST_OK || (s = st_tensor_read(tc, 0, nc, c)) != ST_OK)
        goto done;
    for (size_t i = 0; i < gc->batch; i++)
        st_gemm_ref(gc->ta, gc->tb, gc->m, gc->n, gc->k, gc->alpha, a + gc->off + i * sa, lda,
                    b + gc->off + i * sb, ldb, gc->beta, ref + gc->off + i * sc, ldc);
    /* The whole buffer is compared: elements outside C's rows (padding, the
     * offset) must be untouched. */
    *ok = st_compare_f32(c, ref, nc, 1e-4, 1e-4, NULL);
    st_compare_describe(c, ref, nc, 1e-4, 1e-4, 3, detail, detail_size);
done:
    st_tensor_destroy(tc);
    st_tensor_destroy(tb);
    st_tensor_destroy(ta);
    free(a);
    free(b);
    free(c);
    free(ref);
    return s;
}

static st_status check_fill(st_device *dev, bool *ok, bool *cached)
{
    size_t n = 1000;
    st_tensor *t = NULL, *v = NULL;
    float host[1000];
    st_status s;
    if ((s = st_tensor_create(dev, ST_F32, 1, &n, "check fill", &t)) != ST_OK)
        return s;
    size_t vn = 500;
    if ((s = st_tensor_view(t, 250, 1, &vn, &v)) != ST_OK ||
        (s = st_tensor_fill(v, 1.5f)) != ST_OK || (s = st_tensor_read(t, 0, n, host)) != ST_OK)
        goto done;
    *ok = true;
    for (size_t i = 0; i < n; i++)
        if (host[i] != (i >= 250 && i < 750 ? 1.5f : 0.0f))
            *ok = false;
    st_program *prog;
    if ((s = st_device_program(dev, "fill.cl", "", &prog)) == ST_OK)
        *cached = st_program_from_cache(prog);
done:
    st_tensor_destroy(v);
    st_tensor_destroy(t);
    return s;
}

static st_status time_gemm(st_device *dev, size_t n, double *gflops)
{
    size_t shape[2] = {n, n};
    st_tensor *a = NULL, *b = NULL, *c = NULL;
    st_status s;
    if ((s = st_tensor_create(dev, ST_F32, 2, shape, "bench A", &a)) != ST_OK ||
        (s = st_tensor_create(dev, ST_F32, 2, shape, "bench B", &b)) != ST_OK ||
        (s = st_tensor_create(dev, ST_F32, 2, shape, "bench C", &c)) != ST_OK)
        goto done;
    /* The first call for this shape compiles; it is not timed. */
    if ((s = st_matmul(false, false, 1.0f, a, b, 0.0f, c)) != ST_OK ||
        (s = st_device_finish(dev)) != ST_OK)
        goto done;
    int reps = 0;
    double t0 = st_now_s(), t1 = t0;
    while (reps < 3 || (t1 - t0 < 1.0 && reps < 50)) {
        if ((s = st_matmul(false, false, 1.0f, a, b, 0.0f, c)) != ST_OK ||
            (s = st_device_finish(dev)) != ST_OK)
            goto done;
        reps++;
        t1 = st_now_s();
    }
    *gflops = 2.0 * (double)n * (double)n * (double)n * reps / (t1 - t0) / 1e9;
done:
    st_tensor_destroy(c);
    st_tensor_destroy(b);
    st_tensor_destroy(a);
    return s;
}

static st_status check_device(st_device *dev, size_t size, bool *all_ok)
{
    const char *label = st_device_label(dev);
    bool ok = false, cached = false;
    st_status s = check_fill(dev, &ok, &cached);
    if (s != ST_OK)
        return s;
    printf("%s: kernel fill.cl (%s): %s\n", label, cached ? "from cache" : "compiled",
           ok ? "ok" : "WRONG RESULT");
    *all_ok &= ok;

    fprintf(stderr, "%s: compiling GEMM kernels (the first run on a device takes a while)...\n",
            label);
    double t0 = st_now_s();
    if ((s = st_gemm_warmup(dev)) != ST_OK)
        return s;
    fprintf(stderr, "%s: GEMM kernels ready in %.1f s\n", label, st_now_s() - t0);

    size_t passed = 0, n_cases = sizeof cases / sizeof cases[0];
    for (size_t i = 0; i < n_cases; i++) {
        char detail[1024];
        bool case_ok = false;
        if ((s = run_case(dev, &cases[i], (unsigned)i, detail, sizeof detail, &case_ok)) != ST_OK)
            return s;
        const gemm_case *g = &cases[i];
        if (case_ok)
            passed++;
        else
            printf("%s: gemm %s%s %zux%zux%zu batch %zu: MISMATCH %s\n", label, g->ta ? "T" : "N",
                   g->tb ? "T" : "N", g->m, g->n, g->k, g->batch, detail);
    }
    printf("%s: gemm against the C reference: %zu of %zu shapes ok\n", label, passed, n_cases);
    *all_ok &= passed == n_cases;

    if (size > 0) {
        double gflops = 0;
        if ((s = time_gemm(dev, size, &gflops)) != ST_OK)
            return s;
        printf("%s: sgemm %zux%zux%zu: %.1f GFLOPS\n", label, size, size, size, gflops);
    }
    return ST_OK;
}

int cmd_check(int argc, char **argv)
{
    static const struct option opts[] = {{"devices", required_argument, NULL, 'd'},
                                         {"size", required_argument, NULL, 's'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *choice = NULL;
    long size = 512;
    int c;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case 'd':
            choice = optarg;
            break;
        case 's': {
            char *end;
            size = strtol(optarg, &end, 10);
            if (*end || size < 0 || size > 16384)
                return cli_usage_error("check", "--size wants a number from 0 to 16384, not '%s'",
                                       optarg);
            break;
        }
        case 'h':
            help();
            return CLI_OK;
        case ':':
            return cli_usage_error("check", "option %s needs a value", argv[optind - 1]);
        default:
            return cli_unknown_option("check", argv[optind - 1], opts);
        }
    }
    if (optind < argc)
        return cli_usage_error("check", "unexpected argument '%s'", argv[optind]);

    cli_devices d;
    st_status s = cli_devices_get(choice, true, &d);
    bool all_ok = true;
    for (size_t i = 0; s == ST_OK && i < d.n; i++)
        s = check_device(d.dev[i], (size_t)size, &all_ok);
    size_t n = d.n;
    cli_devices_put(&d);
    if (s != ST_OK)
        return cli_fail(s);
    printf("check: %s on %zu device%s\n", all_ok ? "all passed" : "FAILED", n, n == 1 ? "" : "s");
    return all_ok ? CLI_OK : CLI_FAILED;
}
