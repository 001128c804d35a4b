/*
 * dtype.h - element types of tensors and of stored weights, and the host's
 * conversions between float and the 16-bit types.
 *
 * BF16 is the top half of a float (conversion to float is exact); F16 is
 * IEEE half precision. From float both round to nearest, ties to even (NaN
 * stays a quiet NaN; F16 overflows to infinity past 65,504).
 *
 * Not here: OpenCL.
 */
#ifndef STRATA_DTYPE_H
#define STRATA_DTYPE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum st_dtype { ST_F32, ST_I32, ST_BF16, ST_F16 } st_dtype;

size_t st_dtype_size(st_dtype dtype);
/* "F32", "I32", "BF16", "F16" (safetensors' names) */
const char *st_dtype_name(st_dtype dtype);
/* A floating type by name, any case ("bf16", "F16", "fp32" and "float32"
 * too); -1 for none. */
int st_dtype_parse(const char *name);

uint16_t st_f32_to_bf16(float f);
uint16_t st_f32_to_f16(float f);
float st_bf16_to_f32(uint16_t h);
float st_f16_to_f32(uint16_t h);
/* n values between float and a 16-bit type (BF16 or F16). */
void st_f32_to_16(st_dtype to, const float *src, uint16_t *dst, size_t n);
void st_16_to_f32(st_dtype from, const uint16_t *src, float *dst, size_t n);

#ifdef __cplusplus
}
#endif

#endif
