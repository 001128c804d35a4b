/*
 * test_program.c - building programs and the on-disk binary cache: a second
 * build loads the binary, damaged entries are rebuilt, failed builds carry
 * their log, an unwritable cache warns once and does not fail; a device's
 * program variant builds binaries of its own with the same results.
 *
 * Cache behaviour is observed through st_program_from_cache() and the cache
 * statistics, never through timing.
 */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <stdlib.h>

#include "strata/cl.h"
#include "strata/gemm.h"
#include "strata/program.h"
#include "tests/common.h"

static test_devices td;
static char cache_root[256];

static const char good_src[] =
    "__kernel void put(__global float *x, const float v) { x[get_global_id(0)] = v * VAL; }\n";

/* A fresh cache folder per test, so that no test sees another's entries. */
static int fresh_cache(void **state)
{
    (void)state;
    const char *tmp = getenv("TMPDIR");
    snprintf(cache_root, sizeof cache_root, "%s/strata-test-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    assert_non_null(mkdtemp(cache_root));
    setenv("STRATA_CACHE_DIR", cache_root, 1);
    unsetenv("STRATA_CACHE");
    unsetenv("STRATA_CL_DIR");
    st_cache_reset();
    return 0;
}

/* Removes the test's cache folder: root/{kernels,cl}/files, no deeper. */
static int drop_cache(void **state)
{
    (void)state;
    const char *subs[] = {"kernels", "cl"};
    for (int i = 0; i < 2; i++) {
        char dir[400];
        snprintf(dir, sizeof dir, "%s/%s", cache_root, subs[i]);
        DIR *d = opendir(dir);
        for (struct dirent *e; d && (e = readdir(d));) {
            char path[800];
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            if (e->d_name[0] != '.')
                unlink(path);
        }
        if (d)
            closedir(d);
        rmdir(dir);
    }
    rmdir(cache_root);
    return 0;
}

/* Path of the only cache entry; fails the test unless there is exactly one. */
static void only_entry(char *path, size_t size)
{
    char dir[300];
    snprintf(dir, sizeof dir, "%s/kernels", cache_root);
    DIR *d = opendir(dir);
    assert_non_null(d);
    int found = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.')
            continue;
        assert_non_null(strstr(e->d_name, ".clbin"));
        snprintf(path, size, "%s/%s", dir, e->d_name);
        found++;
    }
    closedir(d);
    assert_int_equal(found, 1);
}

/* Runs put(x, 2) over 4 elements and checks x = 2 * VAL. */
static void run_put(st_device *dev, st_program *prog, float val)
{
    cl_kernel k;
    assert_ok(st_program_kernel(prog, "put", &k));
    size_t n = 4;
    st_tensor *t;
    assert_ok(st_tensor_create(dev, ST_F32, 1, &n, "put", &t));
    cl_mem m = st_tensor_cl_mem(t);
    float v = 2.0f;
    assert_int_equal(clSetKernelArg(k, 0, sizeof m, &m), CL_SUCCESS);
    assert_int_equal(clSetKernelArg(k, 1, sizeof v, &v), CL_SUCCESS);
    assert_int_equal(clEnqueueNDRangeKernel(st_device_cl_queue(dev), k, 1, NULL, &n, NULL, 0,
                                            NULL, NULL),
                     CL_SUCCESS);
    float got[4], want[4] = {2 * val, 2 * val, 2 * val, 2 * val};
    assert_ok(st_tensor_read(t, 0, 4, got));
    assert_close(got, want, 4, 0.0, 0.0);
    clReleaseKernel(k);
    st_tensor_destroy(t);
}

static void second_build_loads_the_binary(void **state)
{
    (void)state;
    st_device *dev = td.dev[0];
    st_program *p1, *p2, *p3;
    assert_ok(st_program_build_source(dev, "put.cl", good_src, "-DVAL=3.0f", &p1));
    assert_false(st_program_from_cache(p1));
    st_cache_stats s = st_cache_get_stats();
    assert_int_equal(s.misses, 1);
    assert_int_equal(s.writes, 1);
    assert_int_equal(s.hits, 0);
    char path[600];
    only_entry(path, sizeof path);

    assert_ok(st_program_build_source(dev, "put.cl", good_src, "-DVAL=3.0f", &p2));
    assert_true(st_program_from_cache(p2));
    assert_int_equal(st_cache_get_stats().hits, 1);
    run_put(dev, p2, 3.0f); /* the cached binary really runs */

    /* Other options: another key, another entry. */
    assert_ok(st_program_build_source(dev, "put.cl", good_src, "-DVAL=5.0f", &p3));
    assert_false(st_program_from_cache(p3));
    run_put(dev, p3, 5.0f);
    assert_int_equal(st_cache_get_stats().writes, 2);
    st_program_destroy(p1);
    st_program_destroy(p2);
    st_program_destroy(p3);
}

static void damage(const char *path, bool truncate_it)
{
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    if (truncate_it) {
        assert_int_equal(truncate(path, st.st_size / 2), 0);
        return;
    }
    FILE *f = fopen(path, "r+b");
    assert_non_null(f);
    fseek(f, st.st_size - 17, SEEK_SET); /* inside the payload */
    int c = fgetc(f);
    fseek(f, st.st_size - 17, SEEK_SET);
    fputc(c ^ 0x5a, f);
    fclose(f);
}

static void damaged_entries_are_rebuilt(void **state)
{
    (void)state;
    st_device *dev = td.dev[0];
    for (int mode = 0; mode < 2; mode++) {
        if (mode > 0) {
            drop_cache(NULL);
            fresh_cache(NULL);
        }
        st_program *p;
        assert_ok(st_program_build_source(dev, "put.cl", good_src, "-DVAL=1.0f", &p));
        st_program_destroy(p);
        char path[600];
        only_entry(path, sizeof path);
        damage(path, mode == 1);

        assert_ok(st_program_build_source(dev, "put.cl", good_src, "-DVAL=1.0f", &p));
        assert_false(st_program_from_cache(p));
        assert_int_equal(st_cache_get_stats().rejected, 1);
        run_put(dev, p, 1.0f);
        st_program_destroy(p);

        /* Replaced by a good entry: the next build loads it. */
        assert_ok(st_program_build_source(dev, "put.cl", good_src, "-DVAL=1.0f", &p));
        assert_true(st_program_from_cache(p));
        st_program_destroy(p);
    }
}

static void syntax_error_gives_the_build_log(void **state)
{
    (void)state;
    st_device *dev = td.dev[0];
    st_program *p = NULL;
    const char *bad = "__kernel void broken(__global float *x) { x[0] = undefined_thing; }\n";
    st_status s = st_program_build_source(dev, "broken.cl", bad, "-DFOO=1", &p);
    assert_int_equal(s, ST_ERR_BUILD);
    assert_null(p);
    const char *m = st_last_error();
    assert_contains(m, "broken.cl");
    assert_contains(m, st_device_get_info(dev)->name);
    assert_contains(m, "-DFOO=1");
    assert_contains(m, "build log");
    assert_contains(m, "undefined_thing"); /* the compiler's own words */
    assert_int_equal(st_cache_get_stats().writes, 0);
}

static int warnings;
static void count_warnings(st_log_level level, const char *msg, void *user)
{
    (void)msg;
    (void)user;
    if (level == ST_LOG_WARN)
        warnings++;
}

static void unwritable_cache_warns_once(void **state)
{
    (void)state;
    setenv("STRATA_CACHE_DIR", "/dev/null/not-a-folder", 1);
    st_cache_reset();
    warnings = 0;
    st_log_set_handler(count_warnings, NULL);
    st_program *p1, *p2;
    assert_ok(st_program_build_source(td.dev[0], "put.cl", good_src, "-DVAL=1.0f", &p1));
    assert_ok(st_program_build_source(td.dev[0], "put.cl", good_src, "-DVAL=1.0f", &p2));
    st_log_set_handler(NULL, NULL);
    assert_int_equal(warnings, 1);
    assert_null(st_cache_dir());
    assert_false(st_program_from_cache(p2));
    run_put(td.dev[0], p2, 1.0f);
    st_program_destroy(p1);
    st_program_destroy(p2);
}

static void cache_can_be_turned_off(void **state)
{
    (void)state;
    setenv("STRATA_CACHE", "0", 1);
    st_cache_reset();
    st_program *p1, *p2;
    assert_ok(st_program_build_source(td.dev[0], "put.cl", good_src, "-DVAL=1.0f", &p1));
    assert_ok(st_program_build_source(td.dev[0], "put.cl", good_src, "-DVAL=1.0f", &p2));
    assert_false(st_program_from_cache(p2));
    assert_int_equal(st_cache_get_stats().writes, 0);
    assert_null(st_cache_dir());
    st_program_destroy(p1);
    st_program_destroy(p2);
    unsetenv("STRATA_CACHE");
}

static void kernel_sources_embedded_or_from_dir(void **state)
{
    (void)state;
    char *src = NULL;
    assert_ok(st_kernel_source("fill.cl", &src));
    assert_contains(src, "__kernel void fill_f32");
    free(src);
    assert_int_equal(st_kernel_source("nope.cl", &src), ST_ERR_NOT_FOUND);

    char dir[300], path[400];
    snprintf(dir, sizeof dir, "%s/cl", cache_root);
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/fill.cl", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(good_src, f);
    fclose(f);
    setenv("STRATA_CL_DIR", dir, 1);
    assert_ok(st_kernel_source("fill.cl", &src));
    assert_string_equal(src, good_src);
    free(src);
    st_program *p;
    assert_ok(st_program_build(td.dev[0], "fill.cl", "-DVAL=4.0f", &p));
    run_put(td.dev[0], p, 4.0f);
    st_program_destroy(p);
    assert_int_equal(st_kernel_source("other.cl", &src), ST_ERR_NOT_FOUND);
    assert_contains(st_last_error(), "other.cl");
    assert_contains(st_last_error(), "STRATA_CL_DIR");
    unsetenv("STRATA_CL_DIR");
}

static void every_device_builds_and_same_devices_share_entries(void **state)
{
    (void)state;
    for (size_t i = 0; i < td.n; i++) {
        st_program *p;
        assert_ok(st_program_build_source(td.dev[i], "put.cl", good_src, "-DVAL=7.0f", &p));
        /* Identical devices (same name, driver, platform) share the entry. */
        bool same_as_first = strcmp(st_device_get_info(td.dev[i])->name,
                                    st_device_get_info(td.dev[0])->name) == 0;
        if (i > 0 && same_as_first)
            assert_true(st_program_from_cache(p));
        run_put(td.dev[i], p, 7.0f);
        st_program_destroy(p);
    }
}

/* Products of three sizes (CLBlast's direct kernel, its indirect one with
 * padding and copies, and a matrix-vector product) on dev: the results. */
static void three_products(st_device *dev, float *out[3])
{
    const size_t shapes[3][3] = {{8, 24, 16}, {150, 140, 130}, {1, 96, 200}};
    for (int i = 0; i < 3; i++) {
        size_t m = shapes[i][0], n = shapes[i][1], k = shapes[i][2];
        size_t sa[2] = {m, k}, sb[2] = {k, n}, sc[2] = {m, n};
        st_tensor *a, *b, *c;
        assert_ok(st_tensor_create(dev, ST_F32, 2, sa, "a", &a));
        assert_ok(st_tensor_create(dev, ST_F32, 2, sb, "b", &b));
        assert_ok(st_tensor_create(dev, ST_F32, 2, sc, "c", &c));
        float *ha = malloc(m * k * sizeof *ha), *hb = malloc(k * n * sizeof *hb);
        out[i] = malloc(m * n * sizeof *out[i]);
        assert_non_null(ha);
        assert_non_null(hb);
        assert_non_null(out[i]);
        for (size_t j = 0; j < m * k; j++)
            ha[j] = (float)((j * 7919) % 101) / 50.0f - 1.0f;
        for (size_t j = 0; j < k * n; j++)
            hb[j] = (float)((j * 104729) % 97) / 48.0f - 1.0f;
        assert_ok(st_tensor_write(a, 0, m * k, ha));
        assert_ok(st_tensor_write(b, 0, k * n, hb));
        assert_ok(st_matmul(false, false, 1.0f, a, b, 0.0f, c));
        assert_ok(st_tensor_read(c, 0, m * n, out[i]));
        free(ha);
        free(hb);
        st_tensor_destroy(a);
        st_tensor_destroy(b);
        st_tensor_destroy(c);
    }
}

/* A device's program variant (what PoCL's basic devices get, one each) builds
 * binaries of its own, cached apart, and computes the same bits. */
static void a_variant_builds_its_own_binaries_with_the_same_results(void **state)
{
    (void)state;
    st_device *dev = td.dev[0];
    unsigned v0 = st_device_variant(dev);
    float *before[3], *after[3];
    three_products(dev, before);
    st_program *p0, *p1, *again;
    cl_kernel k0, k1;
    assert_ok(st_device_program(dev, "fill.cl", "", &p0));
    assert_ok(st_device_kernel(dev, "fill.cl", "fill_f32", &k0));

    assert_ok(st_device_set_variant(dev, v0 + 7));
    assert_int_equal(st_device_variant(dev), v0 + 7);
    assert_false(st_device_program_cached(dev, "fill.cl", ""));
    assert_ok(st_device_program(dev, "fill.cl", "", &p1));
    assert_ptr_not_equal(p0, p1);
    assert_false(st_program_from_cache(p1));
    assert_true(st_device_program_cached(dev, "fill.cl", ""));
    assert_ok(st_device_kernel(dev, "fill.cl", "fill_f32", &k1));
    assert_ptr_not_equal(k0, k1);
    three_products(dev, after);
    const size_t sizes[3] = {8 * 24, 150 * 140, 96};
    for (int i = 0; i < 3; i++) {
        assert_memory_equal(before[i], after[i], sizes[i] * sizeof(float));
        free(before[i]);
        free(after[i]);
    }

    /* Back to the first: its programs were kept. */
    assert_ok(st_device_set_variant(dev, v0));
    assert_ok(st_device_program(dev, "fill.cl", "", &again));
    assert_ptr_equal(again, p0);
}

static int group_teardown(void **state)
{
    (void)state;
    test_devices_close(&td);
    return 0;
}

int main(void)
{
    test_devices_open_or_skip(&td);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(second_build_loads_the_binary, fresh_cache, drop_cache),
        cmocka_unit_test_setup_teardown(damaged_entries_are_rebuilt, fresh_cache, drop_cache),
        cmocka_unit_test_setup_teardown(syntax_error_gives_the_build_log, fresh_cache, drop_cache),
        cmocka_unit_test_setup_teardown(unwritable_cache_warns_once, fresh_cache, drop_cache),
        cmocka_unit_test_setup_teardown(cache_can_be_turned_off, fresh_cache, drop_cache),
        cmocka_unit_test_setup_teardown(kernel_sources_embedded_or_from_dir, fresh_cache, drop_cache),
        cmocka_unit_test_setup_teardown(every_device_builds_and_same_devices_share_entries, fresh_cache, drop_cache),
        cmocka_unit_test_setup_teardown(a_variant_builds_its_own_binaries_with_the_same_results,
                                        fresh_cache, drop_cache),
    };
    return cmocka_run_group_tests(tests, NULL, group_teardown);
}
