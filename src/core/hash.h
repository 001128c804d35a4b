/*
 * hash.h - FNV-1a 64-bit hashing, for cache keys and payload checksums, and
 * a word-wise 64-bit sum for checksums of large files (checkpoints).
 * Both detect accidents (a truncated, torn or flipped file), not attacks.
 */
#ifndef STRATA_CORE_HASH_H
#define STRATA_CORE_HASH_H

#include <stddef.h>
#include <stdint.h>

#define ST_FNV64_INIT UINT64_C(0xcbf29ce484222325)

uint64_t st_fnv64(uint64_t h, const void *data, size_t len);
uint64_t st_fnv64_str(uint64_t h, const char *s);

/* A streaming checksum over any split of the bytes: feeding "ab" then "c"
 * gives the value of "abc". Eight bytes at a time in four independent lanes
 * (fast enough to check gigabytes while they are read); every step is a
 * bijection of the lane, so a change of any one word always changes the sum. */
typedef struct st_sum64 {
    uint64_t lane[4];
    uint64_t bytes;
    unsigned char tail[32];
    size_t n_tail;
} st_sum64;

void st_sum64_init(st_sum64 *s);
void st_sum64_add(st_sum64 *s, const void *data, size_t len);
uint64_t st_sum64_final(const st_sum64 *s);
/* The checksum of one buffer. */
uint64_t st_sum64_of(const void *data, size_t len);

#endif
