/* hash.c - FNV-1a 64-bit (the published offset basis and prime), and the
 * four-lane word sum of hash.h. */
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

#define SUM_PRIME UINT64_C(0x9e3779b97f4a7c15) /* odd: multiplying by it is a bijection */

static uint64_t rotl(uint64_t x, int r)
{
    return (x << r) | (x >> (64 - r));
}

static uint64_t load64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i]; /* little-endian on every host: the same sum everywhere */
    return v;
}

/* One 32-byte block: one word into each lane. */
static void block(st_sum64 *s, const unsigned char *p)
{
    for (int l = 0; l < 4; l++)
        s->lane[l] = rotl((s->lane[l] ^ load64(p + 8 * l)) * SUM_PRIME, 29);
}

void st_sum64_init(st_sum64 *s)
{
    memset(s, 0, sizeof *s);
    for (int l = 0; l < 4; l++)
        s->lane[l] = ST_FNV64_INIT + (uint64_t)l * SUM_PRIME;
}

void st_sum64_add(st_sum64 *s, const void *data, size_t len)
{
    const unsigned char *p = data;
    s->bytes += len;
    if (s->n_tail) {
        size_t take = 32 - s->n_tail < len ? 32 - s->n_tail : len;
        memcpy(s->tail + s->n_tail, p, take);
        s->n_tail += take;
        p += take;
        len -= take;
        if (s->n_tail < 32)
            return;
        block(s, s->tail);
        s->n_tail = 0;
    }
    for (; len >= 32; p += 32, len -= 32)
        block(s, p);
    memcpy(s->tail, p, len);
    s->n_tail = len;
}

uint64_t st_sum64_final(const st_sum64 *s)
{
    /* The tail and the length go through FNV, then every lane is folded in. */
    uint64_t h = st_fnv64(ST_FNV64_INIT, s->tail, s->n_tail);
    unsigned char len[8];
    for (int i = 0; i < 8; i++)
        len[i] = (unsigned char)(s->bytes >> (8 * i));
    h = st_fnv64(h, len, sizeof len);
    for (int l = 0; l < 4; l++)
        h = rotl((h ^ s->lane[l]) * SUM_PRIME, 31);
    return h;
}

uint64_t st_sum64_of(const void *data, size_t len)
{
    st_sum64 s;
    st_sum64_init(&s);
    st_sum64_add(&s, data, len);
    return st_sum64_final(&s);
}
