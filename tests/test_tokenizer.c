/*
 * test_tokenizer.c - Hugging Face tokenizers in C (strata/tokenizer.h)
 * against the `tokenizers` library: the ids it gave for a test text
 * (Unicode letters and digits in several scripts, emoji, whitespace runs,
 * contractions, long numbers, special tokens; tests/data/tokenizers/, made by
 * tools/tokenizer_data.py) for five layouts and GPT-2's vocab.json +
 * merges.txt, with and without the template; decoding; bad files refused by
 * name; tokenizer_config.json's BOS and EOS; text files as tokens.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "strata/data.h"
#include "strata/tokenizer.h"
#include "tests/common.h"

static char root[4096];
static json_t *expected;
static char *text;
static size_t text_len;

static void path_of(char *out, size_t size, const char *name)
{
    snprintf(out, size, "%s/tests/data/tokenizers/%s", root, name);
}

/* Encodes the test text with the tokenizer at name and compares with the library's ids. */
static void check_ids(const char *name, const char *which)
{
    char path[4200];
    path_of(path, sizeof path, name);
    st_tokenizer *t = NULL;
    assert_ok(st_tokenizer_load(path, &t));
    json_t *e = json_object_get(expected, which);
    for (int templ = 0; templ < 2; templ++) {
        json_t *want = json_object_get(e, templ ? "ids_with_template" : "ids");
        int32_t *ids = NULL;
        size_t n = 0, cap = 0;
        assert_ok(st_tokenizer_encode(t, text, text_len, templ, &ids, &n, &cap));
        size_t first_bad = n;
        for (size_t i = 0; i < n && i < json_array_size(want) && first_bad == n; i++)
            if (ids[i] != json_integer_value(json_array_get(want, i)))
                first_bad = i;
        if (n != json_array_size(want) || first_bad != n)
            fail_msg("%s (%s%s): %zu ids, the library %zu; first difference at %zu: %d vs %lld",
                     name, which, templ ? ", template" : "", n, json_array_size(want), first_bad,
                     first_bad < n ? ids[first_bad] : -1,
                     (long long)json_integer_value(json_array_get(want, first_bad)));
        if (!templ) {
            char *back = NULL;
            size_t len = 0;
            assert_ok(st_tokenizer_decode(t, ids, n, false, &back, &len));
            const char *want_text = json_string_value(json_object_get(e, "decoded"));
            if (len != strlen(want_text) || memcmp(back, want_text, len) != 0)
                fail_msg("%s: decoding differs from the library's", name);
            free(back);
        }
        free(ids);
    }
    st_tokenizer_free(t);
}

static void bytelevel_matches_the_library(void **state)
{
    (void)state;
    check_ids("bytelevel.json", "bytelevel");
    check_ids("gpt2", "bytelevel"); /* vocab.json + merges.txt */
}

static void llama3_layout_matches_the_library(void **state)
{
    (void)state;
    check_ids("llama3.json", "llama3");
}

static void sentencepiece_layout_matches_the_library(void **state)
{
    (void)state;
    check_ids("sentencepiece.json", "sentencepiece");
}

static void metaspace_layout_matches_the_library(void **state)
{
    (void)state;
    check_ids("metaspace.json", "metaspace");
}

static void digits_layout_matches_the_library(void **state)
{
    (void)state;
    check_ids("digits.json", "digits");
}

/* Decoding the ids of any text gives the text back (byte level: exactly;
 * the special tokens skipped on request). */
static void decoding_round_trips(void **state)
{
    (void)state;
    char path[4200];
    path_of(path, sizeof path, "llama3.json");
    st_tokenizer *t = NULL;
    assert_ok(st_tokenizer_load(path, &t));
    const char *s = "x\xff\xfe y\n\n  z 🎉 <|begin_of_text|>";
    int32_t *ids = NULL;
    size_t n = 0, cap = 0;
    assert_ok(st_tokenizer_encode(t, s, strlen(s), true, &ids, &n, &cap));
    assert_int_equal(ids[0], st_tokenizer_bos(t));
    char *back = NULL;
    size_t len = 0;
    assert_ok(st_tokenizer_decode(t, ids, n, true, &back, &len));
    assert_int_equal(len, strlen(s) - strlen("<|begin_of_text|>"));
    assert_memory_equal(back, s, len);
    free(back);
    int32_t bad = (int32_t)st_tokenizer_vocab_size(t);
    assert_int_equal(st_tokenizer_decode(t, &bad, 1, false, &back, &len), ST_ERR_INVALID);
    free(ids);
    st_tokenizer_free(t);
}

static void bad_files_name_the_problem(void **state)
{
    (void)state;
    static const struct {
        const char *json;
        st_status status;
        const char *says;
    } cases[] = {
        {"{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}", ST_ERR_UNSUPPORTED,
         "model type \"WordPiece\""},
        {"{\"model\": {\"type\": \"Unigram\"}}", ST_ERR_UNSUPPORTED, "\"Unigram\""},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []},"
         " \"normalizer\": {\"type\": \"BertNormalizer\"}}",
         ST_ERR_UNSUPPORTED, "normalizer \"BertNormalizer\""},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []},"
         " \"pre_tokenizer\": {\"type\": \"Whitespace\"}}",
         ST_ERR_UNSUPPORTED, "pre_tokenizer \"Whitespace\""},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [\"a b\"]}}",
         ST_ERR_FORMAT, "not in the vocabulary"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": -1}, \"merges\": []}}", ST_ERR_FORMAT,
         "must be an id"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []},"
         " \"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"(\"},"
         " \"behavior\": \"Isolated\"}}",
         ST_ERR_FORMAT, "does not compile"},
        {"[1, 2", ST_ERR_FORMAT, "not valid JSON"},
        /* The library refuses these too (tokenizers 0.23): an id as a
         * string or a float was read as 0; "a  b" is not two tokens. */
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []},"
         " \"added_tokens\": [{\"id\": \"5\", \"content\": \"<s>\"}]}",
         ST_ERR_FORMAT, "added_tokens[0] needs a content and an id"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []},"
         " \"added_tokens\": [{\"id\": 5.0, \"content\": \"<s>\"}]}",
         ST_ERR_FORMAT, "added_tokens[0] needs a content and an id"},
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \" \": 1, \"a \": 2},"
         " \"merges\": [\"a  \"]}}",
         ST_ERR_FORMAT, "is not two tokens with one space between"},
        /* A second sequence in the single template (the library panics). */
        {"{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []},"
         " \"post_processor\": {\"type\": \"TemplateProcessing\", \"single\": ["
         "{\"Sequence\": {\"id\": \"A\"}}, {\"Sequence\": {\"id\": \"B\"}}],"
         " \"special_tokens\": {}}}",
         ST_ERR_FORMAT, "item 2 of the post-processor's single template"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        st_tokenizer *t = NULL;
        st_status s = st_tokenizer_parse(cases[i].json, strlen(cases[i].json), "bad.json", &t);
        if (s != cases[i].status)
            fail_msg("case %zu: got %s, wanted %s (%s)", i, st_status_name(s),
                     st_status_name(cases[i].status), st_last_error());
        assert_contains(st_last_error(), "bad.json");
        assert_contains(st_last_error(), cases[i].says);
    }
    st_tokenizer *t = NULL;
    assert_int_equal(st_tokenizer_load("/nonexistent/tokenizer.json", &t), ST_ERR_NOT_FOUND);
}

/* Forms the library reads that were wrong here, with the ids the library
 * (tokenizers 0.23) gives: a template naming the text twice (it was id -1),
 * merges of tokens holding spaces (as lists) and of tokens over 1 KiB. */
static void edge_forms_match_the_library(void **state)
{
    (void)state;
    const char *two =
        "{\"added_tokens\": [{\"id\": 5, \"content\": \"<s>\", \"special\": true}],"
        " \"post_processor\": {\"type\": \"TemplateProcessing\", \"single\": ["
        "{\"SpecialToken\": {\"id\": \"<s>\", \"type_id\": 0}}, {\"Sequence\": {\"id\": \"A\","
        " \"type_id\": 0}}, {\"SpecialToken\": {\"id\": \"<s>\", \"type_id\": 0}},"
        " {\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}], \"pair\": [], \"special_tokens\":"
        " {\"<s>\": {\"id\": \"<s>\", \"ids\": [5], \"tokens\": [\"<s>\"]}}},"
        " \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \" \": 1, \"b\": 2, \"a \": 3,"
        " \"a b\": 4, \"<s>\": 5}, \"merges\": [[\"a\", \" \"], [\"a \", \"b\"]]}}";
    st_tokenizer *t = NULL;
    assert_ok(st_tokenizer_parse(two, strlen(two), "two.json", &t));
    int32_t *ids = NULL;
    size_t n = 0, cap = 0;
    assert_ok(st_tokenizer_encode(t, "a ba", 4, true, &ids, &n, &cap));
    const int32_t want[] = {5, 4, 0, 5, 4, 0};
    assert_int_equal(n, 6);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(ids[i], want[i]);
    free(ids);
    st_tokenizer_free(t);

    /* A merge of two 600-byte tokens. */
    size_t L = 600;
    char *json = malloc(8 * L + 400), *x = malloc(2 * L + 1);
    assert_non_null(json);
    assert_non_null(x);
    memset(x, 'x', 2 * L);
    x[2 * L] = '\0';
    snprintf(json, 8 * L + 400,
             "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"x\": 0, \"%.*s\": 1, \"%s\": 2},"
             " \"merges\": [\"%.*s %.*s\"]}}",
             (int)L, x, x, (int)L, x, (int)L, x);
    t = NULL;
    if (st_tokenizer_parse(json, strlen(json), "long.json", &t) != ST_OK)
        fail_msg("a merge of 600-byte tokens was refused: %s", st_last_error());
    ids = NULL, n = 0, cap = 0;
    assert_ok(st_tokenizer_encode(t, "x", 1, false, &ids, &n, &cap));
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], 0);
    free(ids);
    st_tokenizer_free(t);
    free(json);
    free(x);
}

/* llm.c's token files: uint16 while the ids allow, uint32 beyond; read
 * back as data; a header that does not match the file is refused. */
static void token_files_round_trip(void **state)
{
    (void)state;
    for (int wide = 0; wide < 2; wide++) {
        size_t n = 3000;
        int32_t *ids = malloc(n * sizeof *ids);
        for (size_t i = 0; i < n; i++)
            ids[i] = (int32_t)((i * 7919) % (wide ? 128256 : 50257));
        char dir[] = "/tmp/strata-tokens-XXXXXX", path[64];
        assert_non_null(mkdtemp(dir));
        snprintf(path, sizeof path, "%s/tokens.bin", dir);
        assert_ok(st_token_file_write(path, ids, n));
        st_dataset *ds = NULL;
        assert_ok(st_dataset_open(path, &ds));
        assert_int_equal(st_dataset_tokens(ds, ST_ALL), n);
        int32_t want_max = 0;
        for (size_t i = 0; i < n; i++)
            want_max = ids[i] > want_max ? ids[i] : want_max;
        assert_int_equal(st_dataset_vocab_needed(ds), want_max + 1);
        assert_contains(st_dataset_describe(ds), wide ? "uint32 tokens (llm.c" : "uint16 tokens (llm.c");
        int32_t tok[8], tgt[8];
        assert_ok(st_dataset_batch(ds, ST_ALL, 0, 0, 1, 8, tok, tgt));
        for (int i = 0; i < 8; i++) {
            assert_int_equal(tok[i], ids[i]);
            assert_int_equal(tgt[i], ids[i + 1]);
        }
        st_dataset_destroy(ds);
        /* a count in the header that the file does not hold */
        FILE *f = fopen(path, "r+b");
        int32_t bad = 5;
        fseek(f, 8, SEEK_SET);
        fwrite(&bad, 4, 1, f);
        fclose(f);
        assert_int_equal(st_dataset_open(path, &ds), ST_ERR_FORMAT);
        assert_contains(st_last_error(), "llm.c header");
        unlink(path);
        rmdir(dir);
        free(ids);
    }
}

static int32_t id_of(st_tokenizer *t, const char *special)
{
    int32_t *ids = NULL;
    size_t n = 0, cap = 0;
    assert_ok(st_tokenizer_encode(t, special, strlen(special), false, &ids, &n, &cap));
    assert_int_equal(n, 1);
    int32_t id = ids[0];
    free(ids);
    return id;
}

/* A whole file's text (the caller frees it). */
static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    size_t len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc(len + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, len, f), len);
    buf[len] = '\0';
    fclose(f);
    return buf;
}

static void write_text(const char *path, const char *s)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(s, 1, strlen(s), f), strlen(s));
    fclose(f);
}

/* tokenizer_config.json beside tokenizer.json names BOS and EOS (a string or
 * an object with "content"); an unknown token leaves the tokenizer's own. */
static void tokenizer_config_names_bos_and_eos(void **state)
{
    (void)state;
    char src[4200], dir[] = "/tmp/strata-tokcfg-XXXXXX", path[4200], conf[4200];
    assert_non_null(mkdtemp(dir));
    path_of(src, sizeof src, "llama3.json");
    char *json = read_text(src);
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    write_text(path, json);
    free(json);

    st_tokenizer *t = NULL;
    assert_ok(st_tokenizer_load(dir, &t));
    int32_t begin = id_of(t, "<|begin_of_text|>"), end = id_of(t, "<|end_of_text|>"),
            eot = id_of(t, "<|eot_id|>");
    assert_int_equal(st_tokenizer_bos(t), begin); /* the template's */
    uint64_t plain = st_tokenizer_sum(t);
    assert_non_null(st_tokenizer_file(t, 0));
    assert_null(st_tokenizer_file(t, 1));
    st_tokenizer_free(t);

    snprintf(conf, sizeof conf, "%s/tokenizer_config.json", dir);
    write_text(conf, "{\"bos_token\": \"<|end_of_text|>\", \"eos_token\": {\"content\": "
                     "\"<|eot_id|>\", \"lstrip\": false}, \"model_max_length\": 8192}");
    assert_ok(st_tokenizer_load(path, &t)); /* the file itself: the config beside it counts */
    assert_int_equal(st_tokenizer_bos(t), end);
    assert_int_equal(st_tokenizer_eos(t), eot);
    assert_non_null(st_tokenizer_file(t, 1));
    assert_contains(st_tokenizer_file(t, 1), "tokenizer_config.json");
    assert_true(st_tokenizer_sum(t) != plain); /* what the tokenizer does changed */
    st_tokenizer_free(t);

    write_text(conf, "{\"bos_token\": \"<nope>\", \"eos_token\": null}");
    assert_ok(st_tokenizer_load(dir, &t));
    assert_int_equal(st_tokenizer_bos(t), begin);
    st_tokenizer_free(t);
    unlink(conf);
    unlink(path);
    rmdir(dir);
}

/* The file's content decides what it is, not the end of its name: a
 * tokenizer.json saved as my-vocab.json is one (it was read as GPT-2's
 * vocab.json and refused for a missing merges.txt), and in a model folder
 * each file takes the name of its role. */
static void vocab_json_by_content(void **state)
{
    (void)state;
    char src[4200], dir[] = "/tmp/strata-tokname-XXXXXX", path[4200];
    assert_non_null(mkdtemp(dir));
    path_of(src, sizeof src, "llama3.json");
    char *json = read_text(src);
    snprintf(path, sizeof path, "%s/my-vocab.json", dir);
    write_text(path, json);
    free(json);
    st_tokenizer *t = NULL;
    assert_ok(st_tokenizer_load(path, &t));
    assert_int_equal(st_tokenizer_bos(t), id_of(t, "<|begin_of_text|>"));
    assert_string_equal(st_tokenizer_file_role(t, 0), "tokenizer.json");
    assert_null(st_tokenizer_file_role(t, 1));
    st_tokenizer_free(t);
    unlink(path);
    rmdir(dir);

    /* GPT-2's pair: vocab.json and merges.txt by role */
    path_of(src, sizeof src, "gpt2/vocab.json");
    assert_ok(st_tokenizer_load(src, &t));
    assert_string_equal(st_tokenizer_file_role(t, 0), "vocab.json");
    assert_string_equal(st_tokenizer_file_role(t, 1), "merges.txt");
    st_tokenizer_free(t);
}

/* A text file through a tokenizer: its ids are the text's, with the
 * template's BOS; the vocabulary is the tokenizer's; the identity names it. */
static void text_files_become_tokens(void **state)
{
    (void)state;
    char path[4200], txt[4200];
    path_of(path, sizeof path, "llama3.json");
    path_of(txt, sizeof txt, "test.txt");
    st_tokenizer *t = NULL;
    assert_ok(st_tokenizer_load(path, &t));
    int32_t *ids = NULL;
    size_t n = 0, cap = 0;
    assert_ok(st_tokenizer_encode(t, text, text_len, true, &ids, &n, &cap));
    st_dataset *ds = NULL;
    assert_ok(st_dataset_open_text(txt, t, &ds));
    assert_int_equal(st_dataset_tokens(ds, ST_ALL), n);
    assert_int_equal(st_dataset_vocab_needed(ds), (int)st_tokenizer_vocab_size(t));
    assert_contains(st_dataset_describe(ds), "by the tokenizer");
    st_data_identity id;
    st_dataset_identity(ds, &id);
    assert_true(id.tokenizer == st_tokenizer_sum(t) && id.tokenizer != 0);
    int T = 16;
    int32_t tok[16], tgt[16];
    assert_ok(st_dataset_batch(ds, ST_ALL, 0, 0, 1, T, tok, tgt));
    assert_int_equal(tok[0], st_tokenizer_bos(t));
    for (int i = 0; i < T; i++) {
        assert_int_equal(tok[i], ids[i]);
        assert_int_equal(tgt[i], ids[i + 1]);
    }
    st_dataset_destroy(ds);
    /* Without a tokenizer the same file is bytes. */
    assert_ok(st_dataset_open_text(txt, NULL, &ds));
    assert_int_equal(st_dataset_tokens(ds, ST_ALL), text_len);
    st_dataset_identity(ds, &id);
    assert_true(id.tokenizer == 0);
    st_dataset_destroy(ds);
    free(ids);
    st_tokenizer_free(t);
}

int main(void)
{
    const char *r = getenv("STRATA_SOURCE_ROOT");
    snprintf(root, sizeof root, "%s", r ? r : ".");
    char path[4200];
    path_of(path, sizeof path, "expected.json");
    json_error_t jerr;
    expected = json_load_file(path, 0, &jerr);
    path_of(path, sizeof path, "test.txt");
    FILE *f = fopen(path, "rb");
    if (!expected || !f) {
        fprintf(stderr, "cannot read the tokenizer test data under %s (set STRATA_SOURCE_ROOT)\n",
                root);
        return 1;
    }
    fseek(f, 0, SEEK_END);
    text_len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    text = malloc(text_len + 1);
    if (!text || fread(text, 1, text_len, f) != text_len)
        return 1;
    fclose(f);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(bytelevel_matches_the_library),
        cmocka_unit_test(llama3_layout_matches_the_library),
        cmocka_unit_test(sentencepiece_layout_matches_the_library),
        cmocka_unit_test(metaspace_layout_matches_the_library),
        cmocka_unit_test(digits_layout_matches_the_library),
        cmocka_unit_test(decoding_round_trips),
        cmocka_unit_test(bad_files_name_the_problem),
        cmocka_unit_test(edge_forms_match_the_library),
        cmocka_unit_test(token_files_round_trip),
        cmocka_unit_test(tokenizer_config_names_bos_and_eos),
        cmocka_unit_test(vocab_json_by_content),
        cmocka_unit_test(text_files_become_tokens),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    json_decref(expected);
    free(text);
    return failed;
}
