/*
 * test_safetensors.c - the safetensors writer round trip, and a table of
 * handcrafted bad files that the reader must refuse with a message naming
 * the fault (never a crash).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "strata/safetensors.h"
#include "tests/common.h"

/* 8-byte length (given, or the header's own), header, then `data` zero bytes. */
static unsigned char *build(const char *header, uint64_t len_field, size_t data, size_t *size)
{
    size_t hl = strlen(header);
    *size = 8 + hl + data;
    unsigned char *b = calloc(*size, 1);
    assert_non_null(b);
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(len_field >> (8 * i));
    memcpy(b + 8, header, hl);
    return b;
}

typedef struct bad_case {
    const char *what;
    const char *header;
    int64_t len_field; /* -1: the header's length */
    size_t data;
    const char *expect; /* in the message */
} bad_case;

static const bad_case bad_cases[] = {
    {"header length over the limit", "{}", 100000001, 0, "over the"},
    {"header length past the end", "{}", 4096, 0, "runs past the end"},
    {"header not an object", "[1, 2]", -1, 0, "start with '{'"},
    {"header cut short", "{\"a\": {\"dtype\": \"F32\"", -1, 0, "header JSON"},
    {"trailing garbage", "{} x", -1, 0, "header JSON"},
    {"duplicate names",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
     "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
     -1, 8, "duplicate"},
    {"unknown dtype", "{\"a\":{\"dtype\":\"F31\",\"shape\":[1],\"data_offsets\":[0,4]}}", -1, 4,
     "unknown dtype 'F31'"},
    {"shape and offsets disagree",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,12]}}", -1, 12,
     "shape and dtype make 16 bytes but its offsets span 12"},
    {"gap between tensors",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
     "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
     -1, 12, "contiguous"},
    {"overlapping tensors",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
     "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
     -1, 12, "contiguous"},
    {"not starting at 0", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", -1,
     8, "contiguous"},
    {"data left over", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", -1, 9,
     "cover 4 bytes of data but the file holds 9"},
    {"tensor past the data", "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}",
     -1, 8, "past the 8 bytes"},
    {"element count overflows",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,4611686018427387904],"
     "\"data_offsets\":[0,4]}}",
     -1, 4, "overflows"},
    {"byte size overflows",
     "{\"a\":{\"dtype\":\"F64\",\"shape\":[4611686018427387904],\"data_offsets\":[0,8]}}", -1, 8,
     "overflows"},
    {"negative dimension", "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}",
     -1, 4, "dimension 0"},
    {"end before begin", "{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,0]}}", -1,
     4, "ends (0) before it begins (4)"},
    {"offsets not a pair", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", -1,
     4, "data_offsets"},
    {"unknown field",
     "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"extra\":1}}", -1, 4,
     "unknown field 'extra'"},
    {"metadata value not a string", "{\"__metadata__\":{\"step\":3}}", -1, 0,
     "not a string"},
    {"entry not an object", "{\"a\":[1]}", -1, 0, "not an object"},
    {"no dtype", "{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", -1, 4, "no dtype"},
};

static void bad_files_are_refused(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
        const bad_case *c = &bad_cases[i];
        size_t size;
        uint64_t len = c->len_field < 0 ? strlen(c->header) : (uint64_t)c->len_field;
        unsigned char *b = build(c->header, len, c->data, &size);
        st_safetensors *f = NULL;
        st_status s = st_safetensors_parse(b, size, c->what, &f);
        if (s != ST_ERR_FORMAT)
            fail_msg("case '%s': got %s (%s)", c->what, st_status_name(s),
                     s == ST_OK ? "accepted" : st_last_error());
        if (!strstr(st_last_error(), c->expect))
            fail_msg("case '%s': message lacks \"%s\": %s", c->what, c->expect, st_last_error());
        assert_contains(st_last_error(), c->what); /* the source is named */
        free(b);
    }
    st_safetensors *f = NULL;
    assert_int_equal(st_safetensors_parse("abc", 3, "short", &f), ST_ERR_FORMAT);
    assert_contains(st_last_error(), "shorter than the 8-byte");
    assert_int_equal(st_safetensors_open("/nonexistent/x.safetensors", &f), ST_ERR_NOT_FOUND);
}

static void good_files_are_read(void **state)
{
    (void)state;
    size_t size;
    /* Padded with spaces as writers do; entries listed out of offset order. */
    unsigned char *b = build("{\"b\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[8,12]},"
                             "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                             "\"__metadata__\":{\"format\":\"pt\"}}    ",
                             0, 12, &size);
    uint64_t hl = size - 8 - 12;
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(hl >> (8 * i));
    float two[2] = {1.5f, -2.0f};
    memcpy(b + 8 + hl, two, 8);
    b[8 + hl + 8] = 0x00, b[8 + hl + 9] = 0x3c;  /* 1.0 in F16 */
    b[8 + hl + 10] = 0x00, b[8 + hl + 11] = 0xc0; /* -2.0 */
    st_safetensors *f = NULL;
    assert_ok(st_safetensors_parse(b, size, "good", &f));
    assert_int_equal(st_safetensors_count(f), 2);
    assert_string_equal(st_safetensors_at(f, 0)->name, "a");
    assert_string_equal(st_safetensors_metadata(f, "format"), "pt");
    assert_null(st_safetensors_metadata(f, "nope"));
    float out[2];
    assert_ok(st_safetensors_to_f32(st_safetensors_find(f, "a"), out));
    assert_memory_equal(out, two, 8);
    assert_ok(st_safetensors_to_f32(st_safetensors_find(f, "b"), out));
    assert_true(out[0] == 1.0f && out[1] == -2.0f);
    assert_null(st_safetensors_find(f, "c"));
    st_safetensors_close(f);
    free(b);
    assert_ok(st_safetensors_parse("\x02\0\0\0\0\0\0\0{}", 10, "empty", &f));
    assert_int_equal(st_safetensors_count(f), 0);
    st_safetensors_close(f);
}

static void writer_round_trip(void **state)
{
    (void)state;
    char dir[] = "/tmp/strata-st-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof path, "%s/m.safetensors", dir);
    st_safetensors_writer *w = NULL;
    assert_ok(st_safetensors_writer_create(&w));
    float a[6] = {1, 2, 3, 4, 5, 6}, b[3] = {7, 8, 9};
    size_t sa[2] = {2, 3}, sb[1] = {3};
    assert_ok(st_safetensors_add_f32(w, "h.0.attn.c_attn.weight", 2, sa, a));
    assert_ok(st_safetensors_add_f32(w, "ln_f.bias", 1, sb, b));
    assert_int_equal(st_safetensors_add_f32(w, "ln_f.bias", 1, sb, b), ST_ERR_INVALID);
    assert_ok(st_safetensors_set_metadata(w, "format", "pt"));
    assert_ok(st_safetensors_save(w, path));
    st_safetensors_writer_destroy(w);
    st_safetensors *f = NULL;
    assert_ok(st_safetensors_open(path, &f));
    const st_safetensors_entry *e = st_safetensors_find(f, "h.0.attn.c_attn.weight");
    assert_non_null(e);
    assert_int_equal(e->ndim, 2);
    assert_int_equal(e->shape[0], 2);
    assert_int_equal(e->shape[1], 3);
    assert_memory_equal(e->data, a, sizeof a);
    assert_memory_equal(st_safetensors_find(f, "ln_f.bias")->data, b, sizeof b);
    assert_string_equal(st_safetensors_metadata(f, "format"), "pt");
    st_safetensors_close(f);
    FILE *fp = fopen(path, "rb");
    uint64_t hl = 0;
    assert_int_equal(fread(&hl, 8, 1, fp), 1);
    fclose(fp);
    assert_int_equal((hl + 8) % 8, 0); /* the data starts 8-byte aligned */
    unlink(path);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(bad_files_are_refused),
        cmocka_unit_test(good_files_are_read),
        cmocka_unit_test(writer_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
