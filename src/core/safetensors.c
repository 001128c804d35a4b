/*
 * safetensors.c - the safetensors reader (with the reference
 * implementation's checks) and writer; JSON through jansson.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "core/atomic.h"
#include "core/file.h"
#include "strata/safetensors.h"

struct st_safetensors {
    char source[1024];
    unsigned char *bytes;
    size_t size;
    json_t *header;
    st_safetensors_entry *entries;
    size_t n;
};

static const struct {
    const char *name;
    size_t size;
} dtypes[] = {
    {"BOOL", 1}, {"U8", 1}, {"I8", 1}, {"F8_E5M2", 1}, {"F8_E4M3", 1},
    {"I16", 2}, {"U16", 2}, {"F16", 2}, {"BF16", 2},
    {"I32", 4}, {"U32", 4}, {"F32", 4},
    {"I64", 8}, {"U64", 8}, {"F64", 8},
};

static size_t dtype_size(const char *name)
{
    for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++)
        if (strcmp(dtypes[i].name, name) == 0)
            return dtypes[i].size;
    return 0;
}

#define BAD(f, ...) bad((f)->source, __VA_ARGS__)
static st_status bad(const char *source, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static st_status bad(const char *source, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return st_error(ST_ERR_FORMAT, "%s is not a valid safetensors file: %s", source, msg);
}

static int by_offset(const void *a, const void *b)
{
    const st_safetensors_entry *x = a, *y = b;
    const unsigned char *p = x->data, *q = y->data;
    if (p != q)
        return p < q ? -1 : 1;
    return x->bytes < y->bytes ? -1 : x->bytes > y->bytes;
}

/* Reads a non-negative integer that fits uint64 from a JSON value. */
static bool json_u64(const json_t *v, uint64_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return false;
    *out = (uint64_t)json_integer_value(v);
    return true;
}

static st_status parse_entry(st_safetensors *f, const char *name, json_t *info,
                             const unsigned char *data, uint64_t data_size,
                             st_safetensors_entry *e)
{
    if (!json_is_object(info))
        return BAD(f, "entry '%s' is not an object", name);
    const char *key;
    json_t *v;
    json_object_foreach(info, key, v) {
        if (strcmp(key, "dtype") != 0 && strcmp(key, "shape") != 0 &&
            strcmp(key, "data_offsets") != 0)
            return BAD(f, "entry '%s' has an unknown field '%s'", name, key);
    }
    json_t *dt = json_object_get(info, "dtype"), *shape = json_object_get(info, "shape"),
           *offs = json_object_get(info, "data_offsets");
    if (!json_is_string(dt))
        return BAD(f, "entry '%s' has no dtype string", name);
    e->name = name;
    e->dtype_size = dtype_size(json_string_value(dt));
    if (!e->dtype_size || strlen(json_string_value(dt)) >= sizeof e->dtype)
        return BAD(f, "entry '%s' has an unknown dtype '%s'", name, json_string_value(dt));
    snprintf(e->dtype, sizeof e->dtype, "%s", json_string_value(dt));
    if (!json_is_array(shape))
        return BAD(f, "entry '%s' has no shape array", name);
    if (json_array_size(shape) > ST_SAFETENSORS_MAX_DIMS)
        return BAD(f, "entry '%s' has %zu dimensions, more than %d", name,
                   json_array_size(shape), ST_SAFETENSORS_MAX_DIMS);
    e->ndim = (int)json_array_size(shape);
    e->numel = 1;
    for (int i = 0; i < e->ndim; i++) {
        if (!json_u64(json_array_get(shape, (size_t)i), &e->shape[i]))
            return BAD(f, "entry '%s': dimension %d is not a non-negative integer", name, i);
        if (e->shape[i] && e->numel > UINT64_MAX / e->shape[i])
            return BAD(f, "entry '%s': the shape's element count overflows", name);
        e->numel *= e->shape[i];
    }
    uint64_t begin, end;
    if (!json_is_array(offs) || json_array_size(offs) != 2 ||
        !json_u64(json_array_get(offs, 0), &begin) || !json_u64(json_array_get(offs, 1), &end))
        return BAD(f, "entry '%s' needs data_offsets [begin, end] of non-negative integers",
                   name);
    if (end < begin)
        return BAD(f, "entry '%s' ends (%llu) before it begins (%llu)", name,
                   (unsigned long long)end, (unsigned long long)begin);
    if (e->numel > UINT64_MAX / e->dtype_size)
        return BAD(f, "entry '%s': its size in bytes overflows", name);
    if (e->numel * e->dtype_size != end - begin)
        return BAD(f,
                   "entry '%s': shape and dtype make %llu bytes but its offsets span %llu",
                   name, (unsigned long long)(e->numel * e->dtype_size),
                   (unsigned long long)(end - begin));
    if (end > data_size)
        return BAD(f, "entry '%s' ends at byte %llu, past the %llu bytes of data", name,
                   (unsigned long long)end, (unsigned long long)data_size);
    e->data = data + begin;
    e->bytes = end - begin;
    return ST_OK;
}

static st_status parse(st_safetensors *f)
{
    if (f->size < 8)
        return BAD(f, "%zu bytes is shorter than the 8-byte header length", f->size);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = n << 8 | f->bytes[i];
    if (n > ST_SAFETENSORS_MAX_HEADER)
        return BAD(f, "header length %llu is over the %u-byte limit", (unsigned long long)n,
                   ST_SAFETENSORS_MAX_HEADER);
    if (n > f->size - 8)
        return BAD(f, "header length %llu runs past the end of the file (%zu bytes)",
                   (unsigned long long)n, f->size);
    if (n < 2 || f->bytes[8] != '{')
        return BAD(f, "the header does not start with '{'");
    json_error_t err;
    f->header = json_loadb((const char *)f->bytes + 8, (size_t)n, JSON_REJECT_DUPLICATES, &err);
    if (!f->header)
        return BAD(f, "header JSON: %s (at byte %d)", err.text, err.position);
    if (!json_is_object(f->header))
        return BAD(f, "the header is not a JSON object");
    json_t *meta = json_object_get(f->header, "__metadata__");
    if (meta) {
        if (!json_is_object(meta))
            return BAD(f, "__metadata__ is not an object");
        const char *k;
        json_t *v;
        json_object_foreach(meta, k, v) {
            if (!json_is_string(v))
                return BAD(f, "__metadata__ value '%s' is not a string", k);
        }
    }
    size_t count = json_object_size(f->header) - (meta ? 1 : 0);
    f->entries = calloc(count ? count : 1, sizeof *f->entries);
    if (!f->entries)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    const unsigned char *data = f->bytes + 8 + n;
    uint64_t data_size = f->size - 8 - n;
    const char *key;
    json_t *v;
    json_object_foreach(f->header, key, v) {
        if (strcmp(key, "__metadata__") == 0)
            continue;
        st_status s = parse_entry(f, key, v, data, data_size, &f->entries[f->n]);
        if (s != ST_OK)
            return s;
        f->n++;
    }
    qsort(f->entries, f->n, sizeof *f->entries, by_offset);
    const unsigned char *at = data;
    for (size_t i = 0; i < f->n; i++) {
        if ((const unsigned char *)f->entries[i].data != at)
            return BAD(f, "entry '%s' begins at byte %td, not where the previous one ends (%td): "
                       "offsets must be contiguous",
                       f->entries[i].name, (const unsigned char *)f->entries[i].data - data,
                       at - data);
        at += f->entries[i].bytes;
    }
    if (at != data + data_size)
        return BAD(f, "the tensors cover %td bytes of data but the file holds %llu", at - data,
                   (unsigned long long)data_size);
    return ST_OK;
}

st_status st_safetensors_parse(const void *bytes, size_t size, const char *source,
                               st_safetensors **out)
{
    st_safetensors *f = calloc(1, sizeof *f);
    if (!f || !(f->bytes = malloc(size ? size : 1))) {
        free(f);
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory for %zu bytes", size);
    }
    snprintf(f->source, sizeof f->source, "%s", source);
    memcpy(f->bytes, bytes, size);
    f->size = size;
    st_status s = parse(f);
    if (s != ST_OK) {
        st_safetensors_close(f);
        return s;
    }
    *out = f;
    return ST_OK;
}

st_status st_safetensors_open(const char *path, st_safetensors **out)
{
    FILE *fp = NULL;
    st_status os = st_open_regular(path, "safetensors file", &fp);
    if (os != ST_OK)
        return os;
    long size = -1;
    if (fseek(fp, 0, SEEK_END) != 0 || (size = ftell(fp)) < 0 || fseek(fp, 0, SEEK_SET) != 0) {
        fclose(fp);
        return st_error(ST_ERR_IO, "cannot read '%s': %s", path, strerror(errno));
    }
    st_safetensors *f = calloc(1, sizeof *f);
    if (!f || !(f->bytes = malloc(size ? (size_t)size : 1))) {
        free(f);
        fclose(fp);
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory reading '%s' (%ld bytes)", path,
                        size);
    }
    snprintf(f->source, sizeof f->source, "%s", path);
    f->size = (size_t)size;
    size_t got = fread(f->bytes, 1, f->size, fp);
    fclose(fp);
    st_status s = got == f->size ? parse(f) : st_error(ST_ERR_IO, "cannot read '%s'", path);
    if (s != ST_OK) {
        st_safetensors_close(f);
        return s;
    }
    *out = f;
    return ST_OK;
}

void st_safetensors_close(st_safetensors *f)
{
    if (!f)
        return;
    json_decref(f->header);
    free(f->entries);
    free(f->bytes);
    free(f);
}

const void *st_safetensors_bytes(const st_safetensors *f, size_t *size)
{
    *size = f->size;
    return f->bytes;
}

size_t st_safetensors_count(const st_safetensors *f)
{
    return f->n;
}

const st_safetensors_entry *st_safetensors_at(const st_safetensors *f, size_t i)
{
    return i < f->n ? &f->entries[i] : NULL;
}

const st_safetensors_entry *st_safetensors_find(const st_safetensors *f, const char *name)
{
    for (size_t i = 0; i < f->n; i++)
        if (strcmp(f->entries[i].name, name) == 0)
            return &f->entries[i];
    return NULL;
}

const char *st_safetensors_metadata(const st_safetensors *f, const char *key)
{
    json_t *meta = json_object_get(f->header, "__metadata__");
    return meta ? json_string_value(json_object_get(meta, key)) : NULL;
}

float st_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) {
                man <<= 1;
                exp--;
            }
            bits = sign | exp << 23 | (man & 0x3ff) << 13;
        }
    } else if (exp == 31) {
        bits = sign | 0xff << 23 | man << 13;
    } else {
        bits = sign | (exp + 127 - 15) << 23 | man << 13;
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

st_status st_safetensors_to_f32(const st_safetensors_entry *e, float *out)
{
    const unsigned char *p = e->data;
    for (uint64_t i = 0; i < e->numel; i++) {
        if (strcmp(e->dtype, "F32") == 0) {
            memcpy(&out[i], p + 4 * i, 4);
        } else if (strcmp(e->dtype, "F64") == 0) {
            double d;
            memcpy(&d, p + 8 * i, 8);
            out[i] = (float)d;
        } else if (strcmp(e->dtype, "F16") == 0) {
            out[i] = st_f16_to_f32((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
        } else if (strcmp(e->dtype, "BF16") == 0) {
            uint32_t bits = (uint32_t)(p[2 * i] | p[2 * i + 1] << 8) << 16;
            memcpy(&out[i], &bits, 4);
        } else {
            return st_error(ST_ERR_UNSUPPORTED,
                            "tensor '%s' is %s; Strata reads F32, F16, BF16 and F64 weights",
                            e->name, e->dtype);
        }
    }
    return ST_OK;
}

/* ---- writer ----------------------------------------------------------------- */

typedef struct wentry {
    char *name;
    int ndim;
    size_t shape[ST_SAFETENSORS_MAX_DIMS];
    void *data;
    size_t numel, esize;
    const char *dtype;
} wentry;

uint16_t st_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: kept a quiet NaN */
        return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1); /* round to nearest, ties to even */
    return (uint16_t)(u >> 16);
}

float st_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

void st_f32_to_16(st_dtype to, const float *src, uint16_t *dst, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = to == ST_BF16 ? st_f32_to_bf16(src[i]) : st_f32_to_f16(src[i]);
}

void st_16_to_f32(st_dtype from, const uint16_t *src, float *dst, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = from == ST_BF16 ? st_bf16_to_f32(src[i]) : st_f16_to_f32(src[i]);
}

uint16_t st_f32_to_f16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
    if (a > 0x7f800000u)
        return (uint16_t)(sign | 0x7e00u);
    if (a >= 0x477ff000u) /* 65520 and up round to infinity */
        return (uint16_t)(sign | 0x7c00u);
    if (a < 0x38800000u) { /* below the smallest normal half: a subnormal (or 0) */
        if (a < 0x33000000u)
            return (uint16_t)sign;
        uint32_t m = (a & 0x7fffffu) | 0x800000u;
        int shift = 126 - (int)(a >> 23); /* 14 to 24 */
        uint32_t h = m >> shift, rest = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        h += rest > half || (rest == half && (h & 1));
        return (uint16_t)(sign | h);
    }
    uint32_t h = ((a >> 13) - (112u << 10)), rest = a & 0x1fffu;
    h += rest > 0x1000u || (rest == 0x1000u && (h & 1));
    return (uint16_t)(sign | h);
}

struct st_safetensors_writer {
    wentry *e;
    size_t n, cap;
    json_t *meta;
};

st_status st_safetensors_writer_create(st_safetensors_writer **out)
{
    st_safetensors_writer *w = calloc(1, sizeof *w);
    if (!w || !(w->meta = json_object())) {
        free(w);
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    }
    *out = w;
    return ST_OK;
}

void st_safetensors_writer_destroy(st_safetensors_writer *w)
{
    if (!w)
        return;
    for (size_t i = 0; i < w->n; i++) {
        free(w->e[i].name);
        free(w->e[i].data);
    }
    free(w->e);
    json_decref(w->meta);
    free(w);
}

st_status st_safetensors_add_f32(st_safetensors_writer *w, const char *name, int ndim,
                                 const size_t *shape, const float *data)
{
    return st_safetensors_add(w, name, "F32", ndim, shape, data);
}

st_status st_safetensors_add(st_safetensors_writer *w, const char *name, const char *dtype,
                             int ndim, const size_t *shape, const float *data)
{
    size_t esize = strcmp(dtype, "F32") == 0                                  ? 4
                   : strcmp(dtype, "BF16") == 0 || strcmp(dtype, "F16") == 0 ? 2
                                                                             : 0;
    if (!esize)
        return st_error(ST_ERR_INVALID, "safetensors: tensors are written as F32, BF16 or F16, "
                                        "not %s",
                        dtype);
    if (ndim < 0 || ndim > ST_SAFETENSORS_MAX_DIMS || !name || !*name ||
        strcmp(name, "__metadata__") == 0)
        return st_error(ST_ERR_INVALID, "safetensors: bad tensor '%s'", name ? name : "");
    for (size_t i = 0; i < w->n; i++)
        if (strcmp(w->e[i].name, name) == 0)
            return st_error(ST_ERR_INVALID, "safetensors: tensor '%s' added twice", name);
    if (w->n == w->cap) {
        size_t cap = w->cap ? 2 * w->cap : 16;
        wentry *e = realloc(w->e, cap * sizeof *e);
        if (!e)
            return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
        w->e = e;
        w->cap = cap;
    }
    wentry *e = &w->e[w->n];
    memset(e, 0, sizeof *e);
    e->ndim = ndim;
    e->numel = 1;
    for (int i = 0; i < ndim; i++) {
        e->shape[i] = shape[i];
        e->numel *= shape[i];
    }
    e->name = strdup(name);
    e->esize = esize;
    e->dtype = esize == 4 ? "F32" : strcmp(dtype, "BF16") == 0 ? "BF16" : "F16";
    e->data = malloc(e->numel ? e->numel * esize : 1);
    if (!e->name || !e->data) {
        free(e->name);
        free(e->data);
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory copying '%s'", name);
    }
    if (esize == 4) {
        memcpy(e->data, data, e->numel * sizeof(float));
    } else {
        uint16_t *h = e->data;
        bool bf = strcmp(dtype, "BF16") == 0;
        for (size_t i = 0; i < e->numel; i++) {
            uint16_t v = bf ? st_f32_to_bf16(data[i]) : st_f32_to_f16(data[i]);
            memcpy(&h[i], &v, 2); /* little-endian hosts only, as the reader */
        }
    }
    w->n++;
    return ST_OK;
}

st_status st_safetensors_set_metadata(st_safetensors_writer *w, const char *key,
                                      const char *value)
{
    if (json_object_set_new(w->meta, key, json_string(value)) != 0)
        return st_error(ST_ERR_INVALID, "safetensors: bad metadata '%s'", key);
    return ST_OK;
}

st_status st_safetensors_save_sum(st_safetensors_writer *w, const char *path, uint64_t *bytes,
                                  uint64_t *sum)
{
    json_t *h = json_object();
    if (!h)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    if (json_object_size(w->meta))
        json_object_set(h, "__metadata__", w->meta);
    uint64_t off = 0;
    for (size_t i = 0; i < w->n; i++) {
        json_t *shape = json_array();
        for (int d = 0; d < w->e[i].ndim; d++)
            json_array_append_new(shape, json_integer((json_int_t)w->e[i].shape[d]));
        uint64_t size = w->e[i].numel * w->e[i].esize;
        json_object_set_new(h, w->e[i].name,
                            json_pack("{s:s, s:o, s:[I, I]}", "dtype", w->e[i].dtype, "shape", shape,
                                      "data_offsets", (json_int_t)off,
                                      (json_int_t)(off + size)));
        off += size;
    }
    char *text = json_dumps(h, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(h);
    if (!text)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory for a safetensors header");
    size_t len = strlen(text), padded = (len + 8 + 7) / 8 * 8 - 8;
    st_afile *f = NULL;
    st_status s = st_afile_create(path, &f);
    if (s != ST_OK) {
        free(text);
        return s;
    }
    unsigned char lenb[8];
    for (int i = 0; i < 8; i++)
        lenb[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    s = st_afile_write(f, lenb, 8);
    if (s == ST_OK)
        s = st_afile_write(f, text, len);
    for (size_t i = len; s == ST_OK && i < padded; i++)
        s = st_afile_write(f, " ", 1);
    free(text);
    for (size_t i = 0; s == ST_OK && i < w->n; i++)
        s = st_afile_write(f, w->e[i].data, w->e[i].numel * w->e[i].esize);
    if (s != ST_OK) {
        st_afile_abort(f);
        return s;
    }
    return st_afile_commit(f, bytes, sum);
}

st_status st_safetensors_save(st_safetensors_writer *w, const char *path)
{
    return st_safetensors_save_sum(w, path, NULL, NULL);
}
