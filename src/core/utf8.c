/*
 * utf8.c - UTF-8 checked the way decoders read it (core/utf8.h).
 */
#include <string.h>

#include "core/utf8.h"

int st_utf8_at(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    int need = c < 0x80 ? 1 : c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3
                             : c >= 0xF0 && c <= 0xF4 ? 4 : -1;
    if (need < 0)
        return -1;
    for (int i = 1; i < need; i++) {
        if ((size_t)i >= n)
            return 0;
        unsigned char lo = 0x80, hi = 0xBF;
        if (i == 1) { /* no overlong forms, no surrogates, nothing past U+10FFFF */
            lo = c == 0xE0 ? 0xA0 : c == 0xF0 ? 0x90 : 0x80;
            hi = c == 0xED ? 0x9F : c == 0xF4 ? 0x8F : 0xBF;
        }
        if (s[i] < lo || s[i] > hi)
            return -i;
    }
    return need;
}

size_t st_utf8_clean(const char *s, size_t n, bool final, char *out, size_t *out_len)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, o = 0;
    while (i < n) {
        int k = st_utf8_at(u + i, n - i);
        if (k == 0 && !final)
            break;
        if (k <= 0) {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i += k < 0 ? (size_t)-k : n - i;
        } else {
            memcpy(out + o, s + i, (size_t)k);
            o += (size_t)k;
            i += (size_t)k;
        }
    }
    *out_len = o;
    return i;
}
