/*
 * test_program.c - building programs and the on-disk binary cache: a second
 * build loads the binary, damaged entries are rebuilt, failed builds carry
 * their log, an unwritable cache warns once and does not fail.
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
    };
    return cmocka_run_group_tests(tests, NULL, group_teardown);
}
