/* test_serve.c - `strata serve`'s parts without a device: chat templates
 * rendered as Jinja renders them (tests/data/chat/expected.json, written by
 * tools/chat_reference.py with jinja2), request bodies read or refused with
 * the right status and field, and UTF-8 made valid for JSON. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "core/file.h"
#include "core/utf8.h"
#include "serve/serve.h"

static char *data_path(const char *name)
{
    const char *root = getenv("STRATA_SOURCE_ROOT");
    static char path[4096];
    snprintf(path, sizeof path, "%s/tests/data/chat/%s", root ? root : ".", name);
    return path;
}

static void chat_templates_render_as_jinja(void **state)
{
    (void)state;
    json_error_t je;
    json_t *exp = json_load_file(data_path("expected.json"), 0, &je);
    assert_non_null(exp);
    json_t *convs = json_object_get(exp, "conversations"), *tmpls = json_object_get(exp, "templates");
    const char *name;
    json_t *t;
    int checked = 0, refused = 0;
    json_object_foreach(tmpls, name, t) {
        char file[64], *text = NULL;
        size_t len = 0;
        snprintf(file, sizeof file, "%s.jinja", name);
        assert_int_equal(st_read_text_file(data_path(file), "template", &text, &len), ST_OK);
        sv_chat_template ct;
        st_status s = sv_chat_detect(text, json_string_value(json_object_get(t, "bos")),
                                     json_string_value(json_object_get(t, "eos")), &ct);
        free(text);
        if (strcmp(name, "unknown") == 0) { /* a shape Strata does not know: refused */
            assert_int_equal(s, ST_ERR_UNSUPPORTED);
            assert_non_null(strstr(st_last_error(), "no shape"));
            continue;
        }
        if (s != ST_OK)
            fail_msg("%s: %s", name, st_last_error());
        size_t i;
        json_t *conv;
        json_array_foreach(convs, i, conv) {
            sv_message m[8];
            size_t n = json_array_size(conv);
            assert_true(n <= 8);
            for (size_t k = 0; k < n; k++) {
                json_t *msg = json_array_get(conv, k);
                m[k] = (sv_message){json_string_value(json_object_get(msg, "role")),
                                    json_string_value(json_object_get(msg, "content"))};
            }
            json_t *want = json_array_get(json_object_get(t, "rendered"), i);
            char *out = NULL;
            size_t out_len = 0;
            s = sv_chat_render(&ct, m, n, &out, &out_len);
            if (json_is_null(want)) { /* Jinja raised: Strata refuses too, saying why */
                if (s == ST_OK)
                    fail_msg("%s, conversation %zu: rendered, Jinja refused:\n%s", name, i, out);
                assert_int_equal(s, ST_ERR_INVALID);
                refused++;
            } else {
                if (s != ST_OK)
                    fail_msg("%s, conversation %zu: %s", name, i, st_last_error());
                if (strcmp(out, json_string_value(want)) != 0)
                    fail_msg("%s, conversation %zu:\nStrata: [%s]\nJinja:  [%s]", name, i, out,
                             json_string_value(want));
                assert_int_equal(out_len, strlen(out));
                checked++;
            }
            free(out);
        }
    }
    assert_true(checked >= 25);
    assert_true(refused >= 3);
    json_decref(exp);
}

static void chat_template_loads_from_a_folder(void **state)
{
    (void)state;
    char dir[] = "/tmp/strata-test-chat-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[512];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    /* named templates, tokens as objects */
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("{\"bos_token\": {\"content\": \"<s>\"}, \"eos_token\": \"</s>\", \"chat_template\": "
          "[{\"name\": \"tool_use\", \"template\": \"<unknown>\"}, {\"name\": \"default\", "
          "\"template\": \"{{ bos_token }}[INST] x [/INST]\"}]}",
          f);
    fclose(f);
    sv_chat_template t;
    assert_int_equal(sv_chat_load(dir, &t), ST_OK);
    assert_int_equal(t.kind, SV_CHAT_MISTRAL);
    assert_string_equal(t.bos, "<s>");
    assert_string_equal(t.eos, "</s>");
    /* none: said so */
    f = fopen(path, "w");
    fputs("{\"eos_token\": \"</s>\"}", f);
    fclose(f);
    assert_int_equal(sv_chat_load(dir, &t), ST_ERR_NOT_FOUND);
    assert_non_null(strstr(st_last_error(), "no chat template"));
    /* a Mistral shape without an EOS token cannot end the assistant's turns */
    f = fopen(path, "w");
    fputs("{\"chat_template\": \"[INST] x [/INST]\"}", f);
    fclose(f);
    assert_int_equal(sv_chat_load(dir, &t), ST_ERR_UNSUPPORTED);
    unlink(path);
    rmdir(dir);
}

static void requests_read_with_defaults(void **state)
{
    (void)state;
    sv_request r;
    sv_error e;
    const char *body = "{\"model\": \"m\", \"prompt\": \"Hi\", \"unknown_field\": [1, {}]}";
    assert_true(sv_request_parse(body, strlen(body), false, &r, &e));
    assert_string_equal(r.model, "m");
    assert_int_equal(r.n_prompts, 1);
    assert_string_equal(r.prompts[0].text, "Hi");
    assert_int_equal(r.max_tokens, -1);
    assert_true(r.temperature == 1 && r.top_p == 1 && r.n == 1 && !r.stream && !r.has_seed);
    sv_request_free(&r);

    body = "{\"prompt\": [[1, 2, 3], \"x\"], \"max_tokens\": 5, \"temperature\": 0, \"top_k\": 3,"
           "\"stop\": [\"\\n\", \"END\"], \"seed\": -7, \"n\": 2, \"stream\": true,"
           "\"stream_options\": {\"include_usage\": true}, \"logprobs\": null, \"echo\": false,"
           "\"frequency_penalty\": 0, \"best_of\": 2, \"ignore_eos\": true}";
    assert_true(sv_request_parse(body, strlen(body), false, &r, &e));
    assert_int_equal(r.n_prompts, 2);
    assert_int_equal(r.prompts[0].n_ids, 3);
    assert_int_equal(r.prompts[0].ids[2], 3);
    assert_string_equal(r.prompts[1].text, "x");
    assert_int_equal(r.max_tokens, 5);
    assert_true(r.temperature == 0 && r.top_k == 3 && r.n == 2 && r.stream && r.include_usage &&
                r.ignore_eos);
    assert_int_equal(r.n_stop, 2);
    assert_string_equal(r.stop[0], "\n");
    assert_true(r.has_seed && r.seed == (uint64_t)-7);
    sv_request_free(&r);

    body = "{\"messages\": [{\"role\": \"system\", \"content\": null}, {\"role\": \"user\","
           "\"content\": [{\"type\": \"text\", \"text\": \"a\"}, {\"type\": \"text\", \"text\":"
           "\"b\"}]}], \"max_completion_tokens\": 9, \"top_p\": 0}";
    assert_true(sv_request_parse(body, strlen(body), true, &r, &e));
    assert_int_equal(r.n_messages, 2);
    assert_string_equal(r.messages[0].content, "");
    assert_string_equal(r.messages[1].content, "ab");
    assert_int_equal(r.max_tokens, 9);
    assert_true(r.temperature == 0); /* top_p 0: the likeliest */
    sv_request_free(&r);
}

static void bad_requests_are_refused_by_field(void **state)
{
    (void)state;
    static const struct {
        bool chat;
        const char *body;
        int http;
        const char *param; /* "" none */
        const char *says;
    } cases[] = {
        {false, "", 400, "", "not valid JSON"},
        {false, "{\"prompt\": \"a\"", 400, "", "not valid JSON"},
        {false, "[1, 2]", 400, "", "a JSON object"},
        {false, "{\"prompt\": \"a\", \"prompt\": \"b\"}", 400, "", "duplicate"},
        {false, "{\"prompt\": \"\xff\xfe\"}", 400, "", "not valid JSON"},
        {false, "{\"prompt\": \"a\\u0000b\"}", 400, "", "not valid JSON"},
        {false, "{\"prompt\": \"a\", \"max_tokens\": 99999999999999999999999}", 400, "",
         "not valid JSON"},
        {false, "{\"prompt\": \"a\", \"temperature\": 1e999}", 400, "", "not valid JSON"},
        {false, "{}", 400, "prompt", "required"},
        {false, "{\"prompt\": 5}", 400, "prompt", "must be"},
        {false, "{\"prompt\": [\"a\", 5]}", 400, "prompt", "must be"},
        {false, "{\"prompt\": [1, -2]}", 422, "prompt", "token id -2"},
        {false, "{\"prompt\": [[]]}", 422, "prompt", "empty prompt"},
        {false, "{\"prompt\": \"a\", \"max_tokens\": \"5\"}", 400, "max_tokens", "an integer"},
        {false, "{\"prompt\": \"a\", \"max_tokens\": -1}", 422, "max_tokens", "from 0"},
        {false, "{\"prompt\": \"a\", \"max_tokens\": 1.5}", 400, "max_tokens", "an integer"},
        {false, "{\"prompt\": \"a\", \"temperature\": \"hot\"}", 400, "temperature", "a number"},
        {false, "{\"prompt\": \"a\", \"temperature\": 3}", 422, "temperature", "from 0 to 2"},
        {false, "{\"prompt\": \"a\", \"top_p\": 1.5}", 422, "top_p", ""},
        {false, "{\"prompt\": \"a\", \"n\": 0}", 422, "n", ""},
        {false, "{\"prompt\": \"a\", \"stream\": 1}", 400, "stream", "true or false"},
        {false, "{\"prompt\": \"a\", \"ignore_eos\": \"yes\"}", 400, "ignore_eos", ""},
        {false, "{\"prompt\": \"a\", \"stop\": 7}", 400, "stop", ""},
        {false, "{\"prompt\": \"a\", \"stop\": [\"a\",\"b\",\"c\",\"d\",\"e\"]}", 422, "stop", "at most 4"},
        {false, "{\"prompt\": \"a\", \"stop\": [\"\"]}", 422, "stop", "1 to 256"},
        {false, "{\"prompt\": \"a\", \"seed\": \"x\"}", 400, "seed", ""},
        {false, "{\"prompt\": \"a\", \"model\": 3}", 400, "model", ""},
        {false, "{\"prompt\": \"a\", \"logprobs\": 5}", 422, "logprobs", "not supported"},
        {false, "{\"prompt\": \"a\", \"echo\": true}", 422, "echo", "not supported"},
        {false, "{\"prompt\": \"a\", \"presence_penalty\": 0.5}", 422, "presence_penalty", ""},
        {false, "{\"prompt\": \"a\", \"best_of\": 3}", 422, "best_of", ""},
        {false, "{\"prompt\": \"a\", \"stream_options\": 1}", 400, "stream_options", ""},
        {true, "{\"messages\": \"hi\"}", 400, "messages", "must be"},
        {true, "{\"messages\": []}", 422, "messages", "empty"},
        {true, "{\"messages\": [{\"role\": \"user\"}]}", 400, "messages", "no 'content'"},
        {true, "{\"messages\": [{\"content\": \"x\"}]}", 400, "messages", ""},
        {true, "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\"}]}]}",
         422, "messages", "text only"},
        {true, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"tools\": [{}]}", 422,
         "tools", "not supported"},
        {true, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"response_format\": "
               "{\"type\": \"json_object\"}}", 422, "response_format", ""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        sv_request r;
        sv_error e;
        bool ok = sv_request_parse(cases[i].body, strlen(cases[i].body), cases[i].chat, &r, &e);
        if (ok)
            fail_msg("case %zu (%s) was taken", i, cases[i].body);
        if (e.http != cases[i].http || strcmp(e.param, cases[i].param) != 0 ||
            !strstr(e.message, cases[i].says))
            fail_msg("case %zu (%s): %d param '%s' \"%s\"", i, cases[i].body, e.http, e.param,
                     e.message);
        char *j = sv_error_json(&e);
        json_t *o = json_loads(j, 0, NULL);
        assert_non_null(o);
        json_t *err = json_object_get(o, "error");
        assert_string_equal(json_string_value(json_object_get(err, "message")), e.message);
        assert_non_null(json_string_value(json_object_get(err, "type")));
        assert_true(cases[i].param[0] ? json_is_string(json_object_get(err, "param"))
                                      : json_is_null(json_object_get(err, "param")));
        json_decref(o);
        free(j);
    }
    /* deep nesting is refused, not a stack overflow */
    size_t depth = 100000;
    char *deep = malloc(2 * depth + 16);
    strcpy(deep, "{\"prompt\":");
    size_t k = strlen(deep);
    for (size_t i = 0; i < depth; i++)
        deep[k++] = '[';
    for (size_t i = 0; i < depth; i++)
        deep[k++] = ']';
    deep[k++] = '}';
    sv_request r;
    sv_error e;
    assert_false(sv_request_parse(deep, k, false, &r, &e));
    assert_int_equal(e.http, 400);
    free(deep);
}

static void utf8_is_cleaned_for_json(void **state)
{
    (void)state;
    char out[64];
    size_t len = 0;
    /* a character cut off waits, unless final */
    assert_int_equal(st_utf8_clean("ab\xc3", 3, false, out, &len), 2);
    assert_int_equal(len, 2);
    assert_int_equal(st_utf8_clean("ab\xc3", 3, true, out, &len), 3);
    assert_memory_equal(out, "ab\xef\xbf\xbd", 5);
    /* an invalid byte is U+FFFD; a valid character passes */
    assert_int_equal(st_utf8_clean("\xff\xc3\xa9", 3, false, out, &len), 3);
    assert_int_equal(len, 5);
    assert_memory_equal(out, "\xef\xbf\xbd\xc3\xa9", 5);
    /* a surrogate's encoding is no character */
    assert_int_equal(st_utf8_at((const unsigned char *)"\xed\xa0\x80", 3), -1);
    assert_int_equal(st_utf8_at((const unsigned char *)"\xe6\x97\xa5", 3), 3);
    assert_int_equal(st_utf8_at((const unsigned char *)"\xe6\x97", 2), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(chat_templates_render_as_jinja),
        cmocka_unit_test(chat_template_loads_from_a_folder),
        cmocka_unit_test(requests_read_with_defaults),
        cmocka_unit_test(bad_requests_are_refused_by_field),
        cmocka_unit_test(utf8_is_cleaned_for_json),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
