/*
 * data.h - training and evaluation data as batches of token ids.
 *
 * Three sources:
 *   - "addition" (the default, built in, no file): problems "123+456=9750\n"
 *     of two 3-digit numbers whose 4-digit sum is written least significant
 *     digit first, the order in which a left-to-right model can carry. Only
 *     the answer and the newline have targets, so the loss and the exact-match
 *     accuracy measure the sums alone. One problem per sequence, T = 12.
 *   - a text file: bytes are tokens (vocabulary 256), or with a tokenizer
 *     its ids (the text encoded whole, as the `tokenizers` library's
 *     encode(text) does: added tokens matched, the template's BOS); the
 *     first 90% trains, the last 10% validates.
 *   - a file of token ids (name ending in .bin, .u16 or .tok), split the
 *     same way: llm.c's format (a header of 256 int32: magic, version,
 *     count; then uint16 ids, or uint32 for vocabularies above 65,535), or
 *     raw little-endian uint16 ids.
 *   - JSON Lines (name ending in .jsonl), for fine-tuning: one example per
 *     line, {"text": ...} or {"prompt": ..., "completion": ...}, tokenized
 *     by the tokenizer (its template's BOS first) or as bytes, then its EOS
 *     when it has one. A prompt's tokens are inputs only: the loss counts
 *     the completion's tokens and the EOS. Each example is a row of its
 *     own from its start, cut after T + 1 tokens and padded (padding has no
 *     targets); or packed (st_dataset_pack): a row holds whole examples one
 *     after the other, each with its own positions from 0, attending only
 *     itself (st_dataset_batch_pos gives the positions). The last 10% of
 *     the examples validate (at least one). A malformed line is refused
 *     with its line number.
 *
 * Batches are a pure function of (seed, split, index): a run that resumes at
 * step s draws exactly the batches an uninterrupted run draws.
 *
 * Not here: OpenCL.
 */
#ifndef STRATA_DATA_H
#define STRATA_DATA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "strata/status.h"
#include "strata/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct st_dataset st_dataset;

/* llm.c's token files: the header's magic numbers (versions 1 and 7). */
#define ST_TOKEN_MAGIC_U16 20240520
#define ST_TOKEN_MAGIC_U32 20240801
#define ST_TOKEN_HEADER_BYTES 1024
/* Ids a token file may hold: below this. */
#define ST_MODEL_MAX_VOCAB_TOKENS 16777216

/* Writes ids as llm.c's token file (uint16 when every id is below 65,536,
 * else uint32), whole or not at all. */
st_status st_token_file_write(const char *path, const int32_t *ids, size_t n);

/* ST_ALL: the whole source, in order (for evaluating a file). */
typedef enum st_split { ST_TRAIN, ST_VAL, ST_ALL } st_split;

/* source: NULL or "addition" for the built-in task, else a file path. */
st_status st_dataset_open(const char *source, st_dataset **out);
/* The same, a text file's tokens given by tok (NULL: bytes; a token file
 * and the built-in task do not use it). Progress on stderr for a large
 * text (strata/progress.h). */
st_status st_dataset_open_text(const char *source, st_tokenizer *tok, st_dataset **out);
void st_dataset_destroy(st_dataset *ds);

/* "addition", or the path. */
const char *st_dataset_name(const st_dataset *ds);
/* One line for logs: what it is and how big. */
const char *st_dataset_describe(const st_dataset *ds);
/* Smallest vocabulary that holds every token. */
int st_dataset_vocab_needed(const st_dataset *ds);
/* The sequence length the source fixes (12 for addition), or 0 when free. */
int st_dataset_fixed_seq(const st_dataset *ds);
/* Whether exact-match accuracy (every target of a sequence right) means something. */
bool st_dataset_has_exact_match(const st_dataset *ds);
/* Tokens in a split. */
size_t st_dataset_tokens(const st_dataset *ds, st_split split);

/* B sequences of T tokens and their targets (the next token, or -1 where
 * there is no loss): batch `index` of the split for this seed. Training
 * batches are random windows; validation batches walk the split in order
 * (batch k holds windows kB .. kB+B-1, wrapping), the same for every seed. */
st_status st_dataset_batch(const st_dataset *ds, st_split split, uint64_t seed, uint64_t index,
                           int B, int T, int32_t *tokens, int32_t *targets);

/* JSON Lines: several examples a row (on) or one (off, as opened). Packed
 * training rows draw examples at random and add each one whole where it
 * fits (the first of a row is cut after T + 1 tokens like a padded row's),
 * until eight draws in a row do not fit; the rest is padding. Validation
 * and ST_ALL rows take the split's examples in order, a new row where the
 * next does not fit whole. Returns whether the rows are packed (false for
 * other sources). */
bool st_dataset_pack(st_dataset *ds, bool on);
bool st_dataset_packed(const st_dataset *ds);
/* JSON Lines: the share of a split's row positions that hold example tokens
 * when its examples are laid in order in rows of T, packed or one a row
 * (1 for other sources). */
double st_dataset_fill(const st_dataset *ds, st_split split, int T, bool packed);
/* st_dataset_batch with each token's position in its own example, pos
 * [B*T] (strata/layers.h's packed documents; t where a row is one
 * sequence, and NULL allowed then). A packed source needs pos. */
st_status st_dataset_batch_pos(const st_dataset *ds, st_split split, uint64_t seed,
                               uint64_t index, int B, int T, int32_t *tokens, int32_t *targets,
                               int32_t *pos);

/* Windows of T tokens in the validation split without wrapping (for eval);
 * JSON Lines: its examples, or packed its rows of T. */
size_t st_dataset_windows(const st_dataset *ds, st_split split, int T);
/* JSON Lines: the examples of a split (0 for other sources), and how many
 * have more than len tokens (a row of T holds T + 1), *longest the most. */
size_t st_dataset_examples(const st_dataset *ds, st_split split);
size_t st_dataset_longer_than(const st_dataset *ds, size_t len, size_t *longest);

/* The built-in task's prompt for a + b ("123+456=") and its answer ("9750\n"). */
/* What a data file was, so that a resumed run finds it from anywhere and can
 * tell a moved file (same bytes elsewhere) from a changed one. */
typedef struct st_data_identity {
    char path[4096]; /* absolute; "" for the built-in task */
    uint64_t bytes;  /* size of the file */
    uint64_t sum;    /* st_sum64 of its bytes */
    uint64_t tokenizer; /* a text file's tokenizer (st_tokenizer_sum), 0: bytes */
} st_data_identity;

void st_dataset_identity(const st_dataset *ds, st_data_identity *id);

void st_addition_problem(int a, int b, char prompt[16], char answer[8]);

#ifdef __cplusplus
}
#endif

#endif
