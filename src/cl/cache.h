/*
 * cache.h - the on-disk cache of built program binaries (used by program.c).
 *
 * An entry is one file, <root>/kernels/<hash of key>.clbin:
 *   magic "STRATAKC" | u32 format version | u32 key bytes | u64 payload bytes |
 *   u64 checksum of key and payload | key | payload      (integers little-endian)
 * The whole key is stored and compared, so a hash collision is a miss, never a
 * wrong binary. Entries are written to a temporary file and renamed into place.
 */
#ifndef STRATA_CL_CACHE_H
#define STRATA_CL_CACHE_H

#include <stdbool.h>
#include <stddef.h>

typedef enum st_cache_result {
    ST_CACHE_OFF,     /* caching is disabled */
    ST_CACHE_ABSENT,  /* no entry */
    ST_CACHE_FOUND,   /* *bin and *len hold a checked payload (caller frees) */
    ST_CACHE_CORRUPT  /* an entry was there and failed the checks (it is deleted) */
} st_cache_result;

#define ST_CACHE_FORMAT_VERSION 1u

st_cache_result st_cache_lookup(const char *key, unsigned char **bin, size_t *len);
void st_cache_store(const char *key, const unsigned char *bin, size_t len);
/* Counts a build outcome in the statistics. */
void st_cache_count_hit(void);
void st_cache_count_miss(void);
/* An entry passed the checks but the driver refused it: counted and deleted. */
void st_cache_reject(const char *key);

#endif
