/* hash.c - FNV-1a 64-bit (the published offset basis and prime). */
#include <string.h>

#include "core/hash.h"

uint64_t st_fnv64(uint64_t h, const void *data, size_t len)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= UINT64_C(0x100000001b3);
    }
    return h;
}

uint64_t st_fnv64_str(uint64_t h, const char *s)
{
    /* Hash the terminator too, so that ("ab","c") and ("a","bc") differ. */
    return st_fnv64(h, s, strlen(s) + 1);
}
