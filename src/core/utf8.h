/*
 * utf8.h - UTF-8 as decoders read it: a text's characters, its invalid
 * parts (each one U+FFFD, as the tokenizers library decodes), and a
 * character cut off at the end of what has come so far.
 */
#ifndef STRATA_CORE_UTF8_H
#define STRATA_CORE_UTF8_H

#include <stdbool.h>
#include <stddef.h>

/* The length of the UTF-8 sequence at s[0..n) (n > 0): > 0 a valid
 * character of that many bytes; 0 the start of a valid one cut off at n;
 * -k k bytes that are no character (the maximal invalid part). */
int st_utf8_at(const unsigned char *s, size_t n);

/* s[0..n) as valid UTF-8 into out (room for 3 * n bytes; each invalid part
 * becomes U+FFFD); *out_len its bytes. Returns how many bytes of s it
 * took: all, or up to a character cut off at the end unless `final`. */
size_t st_utf8_clean(const char *s, size_t n, bool final, char *out, size_t *out_len);

#endif
