/*
 * hash.h - FNV-1a 64-bit hashing, for cache keys and payload checksums.
 * Detects accidents (a truncated or flipped file), not attacks.
 */
#ifndef STRATA_CORE_HASH_H
#define STRATA_CORE_HASH_H

#include <stddef.h>
#include <stdint.h>

#define ST_FNV64_INIT UINT64_C(0xcbf29ce484222325)

uint64_t st_fnv64(uint64_t h, const void *data, size_t len);
uint64_t st_fnv64_str(uint64_t h, const char *s);

#endif
