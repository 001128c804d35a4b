/* fuzz_tokenizer.c - a tokenizer.json of any text is read or refused, and
 * one that is read encodes and decodes a fixed text without a crash; any
 * bytes encode and decode with a small built-in byte-level tokenizer. The
 * first byte chooses: even, the rest is a tokenizer.json; odd, text. */
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "strata/tokenizer.h"

/* Bytes, "ab", "a b" merged; a special token; GPT-2's regex. */
static const char byte_level[] =
    "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"<|e|>\": 300, \"\\u0120\": 301, \"a\": 302,"
    " \"b\": 303, \"ab\": 304, \"\\u0120a\": 305}, \"merges\": [\"a b\", \"\\u0120 a\"]},"
    " \"added_tokens\": [{\"id\": 300, \"content\": \"<|e|>\", \"special\": true}],"
    " \"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false},"
    " \"decoder\": {\"type\": \"ByteLevel\"}}";

static void round_trip(st_tokenizer *t, const char *text, size_t n, bool check)
{
    int32_t *ids = NULL;
    size_t count = 0, cap = 0;
    if (st_tokenizer_encode(t, text, n, true, &ids, &count, &cap) == ST_OK) {
        char *back = NULL;
        size_t len = 0;
        if (st_tokenizer_decode(t, ids, count, false, &back, &len) == ST_OK && check &&
            (len != n || memcmp(back, text, n) != 0))
            abort(); /* byte level: every byte comes back */
        free(back);
    }
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    st_tokenizer *t = NULL;
    if (data[0] % 2 == 0) {
        if (st_tokenizer_parse((const char *)data + 1, size - 1, "fuzz input", &t) == ST_OK) {
            static const char text[] = "Hello wörld 123 <s> 😀\n\n  x";
            round_trip(t, text, sizeof text - 1, false);
            st_tokenizer_free(t);
        }
        return 0;
    }
    if (st_tokenizer_parse(byte_level, sizeof byte_level - 1, "built-in", &t) != ST_OK)
        abort();
    round_trip(t, (const char *)data + 1, size - 1, false);
    st_tokenizer_free(t);
    return 0;
}
