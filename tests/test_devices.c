/*
 * test_devices.c - real OpenCL devices (PoCL in CI): enumeration, opening,
 * memory accounting, tensors, views and host copies, the fill kernel.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "tests/common.h"

static test_devices td;

static void enumeration_is_sane(void **state)
{
    (void)state;
    assert_true(td.n >= 1);
    for (size_t i = 0; i < td.n; i++) {
        const st_device_info *d = st_device_list_info(td.list, i);
        assert_int_equal(d->index, i);
        assert_true(strlen(d->name) > 0);
        assert_true(d->compute_units >= 1);
        assert_true(d->global_mem > 0);
        assert_true(d->max_alloc > 0 && d->max_alloc <= d->global_mem);
        assert_true(strncmp(d->opencl_c_version, "OpenCL C ", 9) == 0);
        assert_int_equal(st_device_get_info(td.dev[i])->index, d->index);
        assert_contains(st_device_label(td.dev[i]), d->name);
    }
    assert_null(st_device_list_info(td.list, td.n));
    size_t idx[ST_MAX_DEVICES], n;
    assert_ok(st_device_list_select(td.list, "all", idx, ST_MAX_DEVICES, &n));
    assert_int_equal(n, td.n);
    st_device *dev;
    assert_int_equal(st_device_open(td.list, td.n, &dev), ST_ERR_NO_DEVICE);
}

static void accounting_counts_and_refuses(void **state)
{
    (void)state;
    st_device *dev = td.dev[0];
    st_device_memory m0 = st_device_get_memory(dev);
    assert_int_equal(m0.capacity, st_device_get_info(dev)->global_mem);
    assert_ok(st_device_set_capacity(dev, m0.current + (1 << 20))); /* 1 MiB free */

    size_t shape[2] = {256, 512}; /* 512 KiB */
    st_tensor *a, *b, *c;
    assert_ok(st_tensor_create(dev, ST_F32, 2, shape, "first", &a));
    assert_ok(st_tensor_create(dev, ST_F32, 2, shape, "second", &b));
    st_device_memory m1 = st_device_get_memory(dev);
    assert_int_equal(m1.current, m0.current + (1 << 20));
    assert_int_equal(m1.peak, m1.current);

    /* Over the capacity: refused, named, and nothing counted. */
    assert_int_equal(st_tensor_create(dev, ST_F32, 2, shape, "third", &c), ST_ERR_DEVICE_MEMORY);
    assert_contains(st_last_error(), "'third'");
    assert_contains(st_last_error(), "512.0 KiB missing");
    assert_contains(st_last_error(), st_device_label(dev));
    assert_int_equal(st_device_get_memory(dev).current, m1.current);

    /* Capacity below what is in use is refused too. */
    assert_int_equal(st_device_set_capacity(dev, 1024), ST_ERR_INVALID);

    st_tensor_destroy(a);
    assert_ok(st_tensor_create(dev, ST_F32, 2, shape, "third", &c));
    st_tensor_destroy(b);
    st_tensor_destroy(c);
    st_device_memory m2 = st_device_get_memory(dev);
    assert_int_equal(m2.current, m0.current);
    assert_int_equal(m2.peak, m1.peak);
    assert_ok(st_device_set_capacity(dev, 0));
    assert_int_equal(st_device_get_memory(dev).capacity, st_device_get_info(dev)->global_mem);
}

static void single_buffer_over_max_alloc_is_refused(void **state)
{
    (void)state;
    st_device *dev = td.dev[0];
    uint64_t max = st_device_get_info(dev)->max_alloc;
    size_t shape[1] = {(size_t)(max / 4 + 1)};
    st_tensor *t;
    assert_int_equal(st_tensor_create(dev, ST_F32, 1, shape, "huge", &t), ST_ERR_DEVICE_MEMORY);
    assert_contains(st_last_error(), "in one buffer");
}

static void bad_shapes_are_refused(void **state)
{
    (void)state;
    st_tensor *t;
    size_t zero[2] = {3, 0};
    assert_int_equal(st_tensor_create(td.dev[0], ST_F32, 2, zero, "z", &t), ST_ERR_INVALID);
    size_t five[5] = {1, 1, 1, 1, 1};
    assert_int_equal(st_tensor_create(td.dev[0], ST_F32, 5, five, "five", &t), ST_ERR_INVALID);
    size_t huge[2] = {SIZE_MAX / 2, 4};
    assert_int_equal(st_tensor_create(td.dev[0], ST_F32, 2, huge, "huge", &t), ST_ERR_INVALID);
}

static void views_read_and_write_at_offsets(void **state)
{
    (void)state;
    for (size_t d = 0; d < td.n; d++) {
        size_t shape[2] = {8, 10};
        st_tensor *t, *row3, *cell;
        assert_ok(st_tensor_create(td.dev[d], ST_F32, 2, shape, "grid", &t));
        float host[80], back[80];
        for (int i = 0; i < 80; i++)
            host[i] = (float)i;
        assert_ok(st_tensor_write(t, 0, 80, host));

        size_t rshape[1] = {10};
        assert_ok(st_tensor_view(t, 30, 1, rshape, &row3));
        assert_int_equal(st_tensor_offset(row3), 30);
        assert_int_equal(st_tensor_numel(row3), 10);
        size_t cshape[1] = {2};
        assert_ok(st_tensor_view(row3, 4, 1, cshape, &cell)); /* a view of a view */
        assert_int_equal(st_tensor_offset(cell), 34);
        float two[2] = {-1.0f, -2.0f};
        assert_ok(st_tensor_write(cell, 0, 2, two));
        assert_ok(st_tensor_read(row3, 0, 10, back));
        assert_true(back[3] == 33.0f && back[4] == -1.0f && back[5] == -2.0f && back[6] == 36.0f);

        /* The base may go first: the buffer lives while a view does. */
        st_tensor_destroy(t);
        assert_ok(st_tensor_fill(row3, 0.5f));
        assert_ok(st_tensor_read(row3, 0, 10, back));
        for (int i = 0; i < 10; i++)
            assert_true(back[i] == 0.5f);

        /* Out of range: refused before anything reaches the device. */
        assert_int_equal(st_tensor_read(row3, 8, 3, back), ST_ERR_INVALID);
        assert_contains(st_last_error(), "outside tensor 'grid'");
        st_tensor *bad;
        assert_int_equal(st_tensor_view(row3, 9, 1, cshape, &bad), ST_ERR_INVALID);
        st_tensor_destroy(cell);
        st_tensor_destroy(row3);
    }
}

static void fill_touches_only_the_view(void **state)
{
    (void)state;
    for (size_t d = 0; d < td.n; d++) {
        size_t n = 1000, vn = 333;
        st_tensor *t, *v;
        assert_ok(st_tensor_create(td.dev[d], ST_F32, 1, &n, "fill", &t));
        assert_ok(st_tensor_view(t, 101, 1, &vn, &v));
        assert_ok(st_tensor_fill(v, 2.5f));
        float got[1000], want[1000];
        assert_ok(st_tensor_read(t, 0, n, got));
        for (size_t i = 0; i < n; i++)
            want[i] = (i >= 101 && i < 434) ? 2.5f : 0.0f;
        assert_close(got, want, n, 0.0, 0.0);
        st_tensor_destroy(v);
        st_tensor_destroy(t);
        size_t in = 4;
        st_tensor *ti;
        assert_ok(st_tensor_create(td.dev[d], ST_I32, 1, &in, "ints", &ti));
        assert_int_equal(st_tensor_fill(ti, 1.0f), ST_ERR_INVALID);
        st_tensor_destroy(ti);
    }
}

static int group_setup(void **state)
{
    (void)state;
    test_devices_open_or_skip(&td);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    test_devices_close(&td);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(enumeration_is_sane),
        cmocka_unit_test(accounting_counts_and_refuses),
        cmocka_unit_test(single_buffer_over_max_alloc_is_refused),
        cmocka_unit_test(bad_shapes_are_refused),
        cmocka_unit_test(views_read_and_write_at_offsets),
        cmocka_unit_test(fill_touches_only_the_view),
    };
    /* Skips (77) before cmocka starts when no device exists. */
    group_setup(NULL);
    int rc = cmocka_run_group_tests(tests, NULL, group_teardown);
    return rc;
}
