/*
 * tensor.h - device buffers with a shape, views with element offsets.
 *
 * A tensor is a row-major array of `shape` on one device. Creating one
 * reserves its bytes in the device's accounting first (see device.h), then
 * allocates and zero-fills the buffer, so that a driver that allocates lazily
 * still fails here and not in the middle of a step. A view shares its base's
 * buffer at an element offset; the buffer lives until the base and all its
 * views are destroyed.
 *
 * Reads and writes block until the data has arrived: they are for set-up,
 * checks and checkpoints, not for the hot path.
 */
#ifndef STRATA_TENSOR_H
#define STRATA_TENSOR_H

#include <stddef.h>

#include "strata/device.h"
#include "strata/dtype.h"
#include "strata/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define ST_MAX_DIMS 4

typedef struct st_tensor st_tensor;

/* `name` appears in messages ("out of device memory for 'wte'"). */
st_status st_tensor_create(st_device *dev, st_dtype dtype, int ndim, const size_t *shape,
                           const char *name, st_tensor **out);
/* A view of `numel(shape)` elements of base starting `offset` elements into
 * base's own view; must lie inside base. */
st_status st_tensor_view(st_tensor *base, size_t offset, int ndim, const size_t *shape,
                         st_tensor **out);
void st_tensor_destroy(st_tensor *t);

st_device *st_tensor_device(const st_tensor *t);
st_dtype st_tensor_dtype(const st_tensor *t);
int st_tensor_ndim(const st_tensor *t);
size_t st_tensor_dim(const st_tensor *t, int i);
size_t st_tensor_numel(const st_tensor *t);
/* Elements from the start of the underlying buffer to this view's first element. */
size_t st_tensor_offset(const st_tensor *t);
const char *st_tensor_name(const st_tensor *t);

/* Copies `count` elements between host and the tensor, starting `first`
 * elements into the view; must lie inside it. */
st_status st_tensor_write(st_tensor *t, size_t first, size_t count, const void *host);
/* The same, queued: returns at once, and the host memory must stay as it
 * is until the device's queue has passed the write (a later blocking call
 * on the queue, or st_device_finish). */
st_status st_tensor_write_queued(st_tensor *t, size_t first, size_t count, const void *host);
st_status st_tensor_read(const st_tensor *t, size_t first, size_t count, void *host);

/* Queues a copy of `count` elements on one device, from src (starting
 * src_first into its view) to dst (starting dst_first); not waited for. */
st_status st_tensor_copy(st_tensor *dst, size_t dst_first, const st_tensor *src,
                         size_t src_first, size_t count);

/* A 16-bit (BF16, F16) matrix's float scratch: where st_gemm widens it, a
 * block of rows at a time, before a product through CLBlast (strata/gemm.h).
 * Not owned: the scratch outlives the tensor's uses. NULL: none. */
void st_tensor_set_unpack(st_tensor *t, st_tensor *scratch);
st_tensor *st_tensor_unpack(const st_tensor *t);

/* Sets every element of an F32 tensor's view to value (queued, not waited for). */
st_status st_tensor_fill(st_tensor *t, float value);

#ifdef __cplusplus
}
#endif

#endif
