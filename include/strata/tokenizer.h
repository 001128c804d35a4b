/*
 * tokenizer.h - Hugging Face tokenizers in C: a tokenizer.json with a BPE
 * model, in the two layouts published models use, or GPT-2's vocab.json and
 * merges.txt; text to ids and back, exact to the ids the `tokenizers`
 * library gives.
 *
 *   byte-level BPE (GPT-2, Llama 3, Qwen2, SmolLM): ByteLevel pre-tokenizer
 *     and/or Split with the model's regular expression (PCRE2), bytes mapped
 *     to printable characters, merges by rank, ByteLevel decoder;
 *   SentencePiece-style BPE (Llama 2, TinyLlama, Mistral): Prepend/Replace
 *     normalizer or Metaspace pre-tokenizer, "▁" for spaces, <0xNN> byte
 *     fallback, the matching decoder.
 * Added and special tokens are matched in the text before anything else; the
 * post-processor's template adds BOS (and EOS) when asked. Normalizers NFC,
 * NFKC, NFD, NFKD (libunistring), Prepend, Replace and their Sequence; pre-
 * tokenizers Split, ByteLevel, Metaspace, Digits and their Sequence. Anything
 * else is refused with a message naming the field and its value.
 */
#ifndef STRATA_TOKENIZER_H
#define STRATA_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "strata/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct st_tokenizer st_tokenizer;

/* path: a tokenizer.json, a folder holding one (or vocab.json + merges.txt),
 * or vocab.json itself. A tokenizer_config.json beside it gives bos_token
 * and eos_token when present. */
st_status st_tokenizer_load(const char *path, st_tokenizer **out);
/* The same from the text of a tokenizer.json; source names it in messages. */
st_status st_tokenizer_parse(const char *json_text, size_t len, const char *source,
                             st_tokenizer **out);
void st_tokenizer_free(st_tokenizer *t);

/* One more than the largest id. */
size_t st_tokenizer_vocab_size(const st_tokenizer *t);
/* BOS and EOS ids, -1 when unknown. */
int st_tokenizer_bos(const st_tokenizer *t);
int st_tokenizer_eos(const st_tokenizer *t);

/* A checksum of the files it was loaded from (and the BOS and EOS they set):
 * the same files give the same value; 0 for st_tokenizer_parse's. */
uint64_t st_tokenizer_sum(const st_tokenizer *t);
/* The files st_tokenizer_load read (tokenizer.json, or vocab.json and
 * merges.txt; tokenizer_config.json when there): i from 0, NULL past the last. */
const char *st_tokenizer_file(const st_tokenizer *t, size_t i);
/* The name file i has in a model folder: tokenizer.json, or GPT-2's
 * vocab.json and merges.txt, then tokenizer_config.json (whatever the names
 * it was loaded from: my-vocab.json). */
const char *st_tokenizer_file_role(const st_tokenizer *t, size_t i);

/* Called now and then during a long st_tokenizer_encode with the bytes of
 * the text done so far and its length. fn NULL: none. */
typedef void (*st_tokenizer_progress_fn)(void *ctx, size_t done, size_t total);
void st_tokenizer_on_progress(st_tokenizer *t, st_tokenizer_progress_fn fn, void *ctx);

/* Appends the ids of text[0..len) to *ids (grown with realloc; *n its
 * count, *cap its capacity: start from NULL, 0, 0). with_template: the
 * post-processor's special tokens around the text (BOS). */
st_status st_tokenizer_encode(st_tokenizer *t, const char *text, size_t len, bool with_template,
                              int32_t **ids, size_t *n, size_t *cap);
/* The text of ids (bytes; may end inside a character when ids do), in
 * *text (malloc'd, NUL-terminated) of *len bytes. skip_special: leave out
 * special tokens. An id outside the vocabulary is an error. */
st_status st_tokenizer_decode(const st_tokenizer *t, const int32_t *ids, size_t n,
                              bool skip_special, char **text, size_t *len);

#ifdef __cplusplus
}
#endif

#endif
