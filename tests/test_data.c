/*
 * test_data.c - JSON Lines data for fine-tuning (strata/data.h): prompt and
 * completion examples give targets on the completion and the EOS only,
 * each example a row of its own from its start (cut, padded), the last
 * examples validate, and malformed lines are refused by line number. As
 * bytes and through a tokenizer (the ids compared with the tokenizer's own
 * encoding of each part).
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "tests/common.h"
#include "strata/data.h"

static char root[4096];

/* A .jsonl file of the given text; its path in out. */
static void write_jsonl(char *out, size_t size, const char *text)
{
    snprintf(out, size, "/tmp/strata-test-data-%d.jsonl", (int)getpid());
    FILE *f = fopen(out, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, strlen(text), f), strlen(text));
    assert_int_equal(fclose(f), 0);
}

static const char *three = "{\"prompt\": \"ab\", \"completion\": \"cd\"}\n"
                           "{\"text\": \"xyz\", \"meta\": 1}\n"
                           "\n"
                           "{\"prompt\": \"p\", \"completion\": \"q\"}\n";

/* As bytes: row by row the tokens and targets written out by hand. */
static void bytes_rows(void **state)
{
    (void)state;
    char path[256];
    write_jsonl(path, sizeof path, three);
    st_dataset *ds = NULL;
    assert_ok(st_dataset_open(path, &ds));
    assert_int_equal(st_dataset_examples(ds, ST_ALL), 3);
    assert_int_equal(st_dataset_examples(ds, ST_TRAIN), 2);
    assert_int_equal(st_dataset_examples(ds, ST_VAL), 1);
    assert_int_equal(st_dataset_windows(ds, ST_ALL, 5), 3);
    assert_int_equal(st_dataset_vocab_needed(ds), 256);
    int32_t tok[15], tgt[15];
    assert_ok(st_dataset_batch(ds, ST_ALL, 0, 0, 3, 5, tok, tgt));
    const int32_t want_tok[15] = {'a', 'b', 'c', 'd', 0, 'x', 'y', 'z', 0, 0, 'p', 'q', 0, 0, 0};
    const int32_t want_tgt[15] = {-1, 'c', 'd', -1, -1, 'y', 'z', -1, -1, -1, 'q', -1, -1, -1, -1};
    assert_memory_equal(tok, want_tok, sizeof want_tok);
    assert_memory_equal(tgt, want_tgt, sizeof want_tgt);
    /* cut at T + 1 tokens: "ab" then "c" as the last target */
    assert_ok(st_dataset_batch(ds, ST_ALL, 0, 0, 1, 2, tok, tgt));
    assert_int_equal(tok[0], 'a');
    assert_int_equal(tok[1], 'b');
    assert_int_equal(tgt[0], -1);
    assert_int_equal(tgt[1], 'c');
    size_t longest = 0;
    assert_int_equal(st_dataset_longer_than(ds, 3, &longest), 1);
    assert_int_equal(longest, 4);
    /* training rows come from the first two examples only, validation rows
     * from the last; both kinds are drawn */
    bool seen[2] = {false, false};
    for (uint64_t i = 0; i < 50; i++) {
        assert_ok(st_dataset_batch(ds, ST_TRAIN, 7, i, 1, 4, tok, tgt));
        assert_true(tok[0] == 'a' || tok[0] == 'x');
        seen[tok[0] == 'x'] = true;
        assert_ok(st_dataset_batch(ds, ST_VAL, 7, i, 1, 4, tok, tgt));
        assert_int_equal(tok[0], 'p');
    }
    assert_true(seen[0] && seen[1]);
    st_dataset_destroy(ds);
    unlink(path);
}

/* Through a tokenizer: the prompt with the template (BOS), the completion
 * without, then the EOS; targets from the completion's first token on. */
static void tokenizer_rows(void **state)
{
    (void)state;
    char tpath[4200], path[256];
    snprintf(tpath, sizeof tpath, "%s/tests/data/tokenizers/llama3.json", root);
    st_tokenizer *tk = NULL;
    assert_ok(st_tokenizer_load(tpath, &tk));
    write_jsonl(path, sizeof path,
                "{\"prompt\": \"The capital of France is\", \"completion\": \" Paris.\"}\n"
                "{\"text\": \"Hello world\"}\n");
    st_dataset *ds = NULL;
    assert_ok(st_dataset_open_text(path, tk, &ds));
    int32_t *p = NULL, *c = NULL;
    size_t np = 0, nc = 0, capp = 0, capc = 0;
    assert_ok(st_tokenizer_encode(tk, "The capital of France is", 24, true, &p, &np, &capp));
    assert_ok(st_tokenizer_encode(tk, " Paris.", 7, false, &c, &nc, &capc));
    int eos = st_tokenizer_eos(tk);
    assert_true(eos >= 0); /* <|end_of_text|> */
    size_t n = np + nc + 1, T = n + 3;
    int32_t *tok = malloc(T * sizeof *tok), *tgt = malloc(T * sizeof *tgt);
    assert_ok(st_dataset_batch(ds, ST_ALL, 0, 0, 1, (int)T, tok, tgt));
    for (size_t t = 0; t < T; t++) {
        int32_t want = t < np ? p[t] : t < np + nc ? c[t - np] : t < n ? eos : -2;
        if (want != -2)
            assert_int_equal(tok[t], want);
        int32_t next = t + 1 < np ? -1 : t + 1 < np + nc ? c[t + 1 - np] : t + 1 < n ? eos : -1;
        assert_int_equal(tgt[t], next);
    }
    assert_int_equal(st_dataset_vocab_needed(ds), (int)st_tokenizer_vocab_size(tk));
    st_data_identity id;
    st_dataset_identity(ds, &id);
    assert_true(id.tokenizer == st_tokenizer_sum(tk));
    free(p);
    free(c);
    free(tok);
    free(tgt);
    st_dataset_destroy(ds);
    st_tokenizer_free(tk);
    unlink(path);
}

/* Packed rows, by hand: "abcd" (the prompt "ab"'s targets masked), "xyz"
 * and "pq" one after the other, each from position 0; a new row where the
 * next example does not fit whole; padding goes on counting positions. */
static void packed_rows(void **state)
{
    (void)state;
    char path[256];
    write_jsonl(path, sizeof path, three);
    st_dataset *ds = NULL;
    assert_ok(st_dataset_open(path, &ds));
    assert_false(st_dataset_packed(ds));
    assert_true(st_dataset_pack(ds, true));
    assert_true(st_dataset_packed(ds));
    int32_t tok[20], tgt[20], pos[20];
    /* without the positions' table: refused */
    assert_int_equal(st_dataset_batch(ds, ST_ALL, 0, 0, 1, 10, tok, tgt), ST_ERR_INVALID);
    assert_contains(st_last_error(), "positions");
    assert_int_equal(st_dataset_windows(ds, ST_ALL, 10), 1);
    assert_ok(st_dataset_batch_pos(ds, ST_ALL, 0, 0, 1, 10, tok, tgt, pos));
    const int32_t want_tok[10] = {'a', 'b', 'c', 'd', 'x', 'y', 'z', 'p', 'q', 0};
    const int32_t want_tgt[10] = {-1, 'c', 'd', -1, 'y', 'z', -1, 'q', -1, -1};
    const int32_t want_pos[10] = {0, 1, 2, 3, 0, 1, 2, 0, 1, 2};
    assert_memory_equal(tok, want_tok, sizeof want_tok);
    assert_memory_equal(tgt, want_tgt, sizeof want_tgt);
    assert_memory_equal(pos, want_pos, sizeof want_pos);
    assert_true(fabs(st_dataset_fill(ds, ST_ALL, 10, true) - 0.9) < 1e-12);
    assert_true(fabs(st_dataset_fill(ds, ST_ALL, 10, false) - 9.0 / 30) < 1e-12);
    /* rows of 6: "abcd" alone ("xyz" does not fit after it), then "xyz" "pq" */
    assert_int_equal(st_dataset_windows(ds, ST_ALL, 6), 2);
    assert_ok(st_dataset_batch_pos(ds, ST_ALL, 0, 0, 2, 6, tok, tgt, pos));
    const int32_t want_tok6[12] = {'a', 'b', 'c', 'd', 0, 0, 'x', 'y', 'z', 'p', 'q', 0};
    const int32_t want_pos6[12] = {0, 1, 2, 3, 4, 5, 0, 1, 2, 0, 1, 2};
    assert_memory_equal(tok, want_tok6, sizeof want_tok6);
    assert_memory_equal(pos, want_pos6, sizeof want_pos6);
    assert_int_equal(tgt[4], -1);
    assert_int_equal(tgt[5], -1);
    /* training rows hold only the training examples, each whole from position 0 */
    for (uint64_t i = 0; i < 40; i++) {
        assert_ok(st_dataset_batch_pos(ds, ST_TRAIN, 3, i, 2, 10, tok, tgt, pos));
        for (int b = 0; b < 2; b++) {
            int32_t *tk = tok + b * 10, *ps = pos + b * 10;
            int t = 0, docs = 0;
            while (t < 10 && (ps[t] == 0 || t == 0) && tk[t] != 0) {
                bool abcd = tk[t] == 'a';
                assert_true(abcd || tk[t] == 'x');
                int len = abcd ? 4 : 3;
                for (int i2 = 0; i2 < len; i2++)
                    assert_int_equal(ps[t + i2], i2);
                t += len;
                docs++;
            }
            assert_true(docs >= 2); /* 10 positions hold two of them at least */
            for (; t < 10; t++)
                assert_int_equal(tk[t], 0); /* the rest is padding */
        }
    }
    /* other sources: positions t, and nothing to pack */
    st_dataset *add = NULL;
    assert_ok(st_dataset_open("addition", &add));
    assert_false(st_dataset_pack(add, true));
    assert_ok(st_dataset_batch_pos(add, ST_TRAIN, 0, 0, 1, 12, tok, tgt, pos));
    for (int t = 0; t < 12; t++)
        assert_int_equal(pos[t], t);
    st_dataset_destroy(add);
    st_dataset_destroy(ds);
    unlink(path);
}

static void refused(const char *text, const char *needle)
{
    char path[256];
    write_jsonl(path, sizeof path, text);
    st_dataset *ds = NULL;
    assert_int_equal(st_dataset_open(path, &ds), ST_ERR_FORMAT);
    assert_null(ds);
    assert_contains(st_last_error(), needle);
    unlink(path);
}

static void malformed_lines_are_named(void **state)
{
    (void)state;
    const char *ok = "{\"text\": \"abc\"}\n";
    char text[512];
    snprintf(text, sizeof text, "%s{\"text\": \"ab\"\n%s", ok, ok);
    refused(text, ".jsonl:2: not JSON");
    snprintf(text, sizeof text, "%s%s[1, 2]\n", ok, ok);
    refused(text, ".jsonl:3: a JSON value that is not an object");
    snprintf(text, sizeof text, "%s\n{\"prompt\": \"a\"}\n", ok);
    refused(text, ".jsonl:3: no \"completion\"");
    snprintf(text, sizeof text, "{\"text\": 5}\n%s", ok);
    refused(text, ".jsonl:1: \"text\" is not a string");
    snprintf(text, sizeof text, "{\"text\": \"a\", \"prompt\": \"b\"}\n%s", ok);
    refused(text, ".jsonl:1: both");
    snprintf(text, sizeof text, "{\"other\": \"a\"}\n%s", ok);
    refused(text, "neither \"text\" nor");
    snprintf(text, sizeof text, "%s{\"text\": \"a\"}\n", ok);
    refused(text, ".jsonl:2: the example has 1 token");
    refused(ok, "1 example: too few");
    st_error_clear();
}

int main(void)
{
    const char *r = getenv("STRATA_SOURCE_ROOT");
    snprintf(root, sizeof root, "%s", r ? r : ".");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(bytes_rows),
        cmocka_unit_test(packed_rows),
        cmocka_unit_test(tokenizer_rows),
        cmocka_unit_test(malformed_lines_are_named),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
