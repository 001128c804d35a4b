/*
 * safetensors.h - reading and writing the safetensors format: an 8-byte
 * little-endian header length, a JSON header naming each tensor's dtype,
 * shape and [begin, end) byte offsets into the data that follows, then the
 * data.
 *
 * The reader loads the whole file and checks it the way the format's
 * reference implementation does before anything is used: the header length
 * is bounded (100 MB) and inside the file; the header is a JSON object
 * without duplicate names; every dtype is known; shape x dtype size equals
 * end - begin with no overflow; the offsets, sorted, start at 0, follow each
 * other without gaps or overlaps and end exactly at the end of the file.
 * A bad file is ST_ERR_FORMAT with a message naming the file and the fault.
 *
 * The writer pads the header with spaces to 8 bytes and writes through a
 * temporary file, fsync, rename and a sync of the folder, so that a crash
 * leaves the old file or the new one.
 */
#ifndef STRATA_SAFETENSORS_H
#define STRATA_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "strata/dtype.h"
#include "strata/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define ST_SAFETENSORS_MAX_HEADER 100000000u
#define ST_SAFETENSORS_MAX_DIMS 8

typedef struct st_safetensors_entry {
    const char *name;
    char dtype[8];      /* "F32", "F16", "BF16", "I64", ... */
    size_t dtype_size;  /* bytes per element */
    int ndim;
    uint64_t shape[ST_SAFETENSORS_MAX_DIMS];
    uint64_t numel;
    const void *data;   /* inside the loaded file; end - begin bytes */
    uint64_t bytes;
} st_safetensors_entry;

typedef struct st_safetensors st_safetensors;

st_status st_safetensors_open(const char *path, st_safetensors **out);
/* The same checks on bytes in memory (copied); `source` names them in messages. */
st_status st_safetensors_parse(const void *bytes, size_t size, const char *source,
                               st_safetensors **out);
void st_safetensors_close(st_safetensors *f);

/* The whole file as read (for checksums). */
const void *st_safetensors_bytes(const st_safetensors *f, size_t *size);

size_t st_safetensors_count(const st_safetensors *f);
/* Entries in the order of their offsets. */
const st_safetensors_entry *st_safetensors_at(const st_safetensors *f, size_t i);
const st_safetensors_entry *st_safetensors_find(const st_safetensors *f, const char *name);
/* A "__metadata__" value, or NULL. */
const char *st_safetensors_metadata(const st_safetensors *f, const char *key);

/* Converts an F32, F16, BF16 or F64 entry to floats (numel of them). */
st_status st_safetensors_to_f32(const st_safetensors_entry *e, float *out);

typedef struct st_safetensors_writer st_safetensors_writer;

st_status st_safetensors_writer_create(st_safetensors_writer **out);
void st_safetensors_writer_destroy(st_safetensors_writer *w);
/* Adds an F32 tensor; the data is copied. */
st_status st_safetensors_add_f32(st_safetensors_writer *w, const char *name, int ndim,
                                 const size_t *shape, const float *data);
/* The same stored as dtype "F32", "BF16" or "F16" (rounded to nearest, ties
 * to even, as torch's .to() does). */
st_status st_safetensors_add(st_safetensors_writer *w, const char *name, const char *dtype,
                             int ndim, const size_t *shape, const float *data);
st_status st_safetensors_set_metadata(st_safetensors_writer *w, const char *key,
                                      const char *value);
st_status st_safetensors_save(st_safetensors_writer *w, const char *path);
/* The same, giving the file's size and its st_sum64 checksum (core/hash.h). */
st_status st_safetensors_save_sum(st_safetensors_writer *w, const char *path, uint64_t *bytes,
                                  uint64_t *sum);

#ifdef __cplusplus
}
#endif

#endif
