/*
 * request.c - OpenAI request bodies (serve.h): /v1/completions and
 * /v1/chat/completions read into settings, every field's type and range
 * checked, and the errors said as OpenAI's error objects. No device here:
 * the fuzz harness (tests/fuzz/fuzz_serve.c) runs it alone.
 *
 * Status codes: 400 for a body that is no JSON object or a field of the
 * wrong type (what OpenAI answers); 422 for a well-formed value Strata
 * cannot take (out of range, a feature it does not have), so that a
 * client can tell a broken request from one to change.
 */
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "serve/serve.h"

void sv_error_set(sv_error *e, int http, const char *param, const char *code, const char *fmt,
                  ...)
{
    e->http = http;
    e->type = http == 401   ? "authentication_error"
              : http == 404 ? "not_found_error"
              : http == 429 || http == 503 ? "server_busy"
              : http >= 500 ? "server_error"
                            : "invalid_request_error";
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    snprintf(e->code, sizeof e->code, "%s", code ? code : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
}

char *sv_error_json(const sv_error *e)
{
    json_t *o = json_pack("{s:{s:s,s:s,s:o,s:o}}", "error", "message", e->message, "type",
                          e->type, "param", e->param[0] ? json_string(e->param) : json_null(),
                          "code", e->code[0] ? json_string(e->code) : json_null());
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return text;
}

void sv_request_free(sv_request *r)
{
    for (size_t i = 0; i < r->n_prompts; i++) {
        free(r->prompts[i].text);
        free(r->prompts[i].ids);
    }
    free(r->prompts);
    for (size_t i = 0; i < r->n_messages; i++) {
        free((char *)r->messages[i].role);
        free((char *)r->messages[i].content);
    }
    free(r->messages);
    for (int i = 0; i < r->n_stop; i++)
        free(r->stop[i]);
    free(r->model);
    *r = (sv_request){0};
}

static bool oom(sv_error *e)
{
    sv_error_set(e, 500, NULL, NULL, "out of host memory");
    return false;
}

static bool wrong_type(sv_error *e, const char *field, const char *want)
{
    sv_error_set(e, 400, field, NULL, "'%s' must be %s", field, want);
    return false;
}

/* A number field within [lo, hi] (null or absent: *out untouched). */
static bool get_number(json_t *root, const char *field, double lo, double hi, double *out,
                       sv_error *e)
{
    json_t *v = json_object_get(root, field);
    if (!v || json_is_null(v))
        return true;
    if (!json_is_number(v))
        return wrong_type(e, field, "a number");
    double x = json_number_value(v);
    if (!isfinite(x) || x < lo || x > hi) {
        sv_error_set(e, 422, field, NULL, "'%s' is %g; it must be from %g to %g", field, x, lo,
                     hi);
        return false;
    }
    *out = x;
    return true;
}

static bool get_integer(json_t *root, const char *field, long lo, long hi, long *out, sv_error *e)
{
    json_t *v = json_object_get(root, field);
    if (!v || json_is_null(v))
        return true;
    if (!json_is_integer(v))
        return wrong_type(e, field, "an integer");
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi) {
        sv_error_set(e, 422, field, NULL, "'%s' is %lld; it must be from %ld to %ld", field,
                     (long long)x, lo, hi);
        return false;
    }
    *out = (long)x;
    return true;
}

static bool get_bool(json_t *root, const char *field, bool *out, sv_error *e)
{
    json_t *v = json_object_get(root, field);
    if (!v || json_is_null(v))
        return true;
    if (!json_is_boolean(v))
        return wrong_type(e, field, "true or false");
    *out = json_is_true(v);
    return true;
}

/* Fields Strata cannot honour: refused by name unless they ask for nothing. */
static bool refuse_unsupported(json_t *root, sv_error *e)
{
    static const char *const none[] = {"tools", "tool_choice", "functions", "function_call",
                                       "suffix", "logit_bias", "top_logprobs", "audio",
                                       "prediction"};
    for (size_t i = 0; i < sizeof none / sizeof *none; i++) {
        json_t *v = json_object_get(root, none[i]);
        if (v && !json_is_null(v) && !(json_is_object(v) && json_object_size(v) == 0) &&
            !(json_is_array(v) && json_array_size(v) == 0)) {
            sv_error_set(e, 422, none[i], "unsupported_parameter",
                         "'%s' is not supported by this server", none[i]);
            return false;
        }
    }
    static const char *const falsy[] = {"logprobs", "echo", "parallel_tool_calls"};
    for (size_t i = 0; i < sizeof falsy / sizeof *falsy; i++) {
        json_t *v = json_object_get(root, falsy[i]);
        if (v && !json_is_null(v) && !json_is_false(v) &&
            !(json_is_integer(v) && json_integer_value(v) == 0) &&
            !(strcmp(falsy[i], "parallel_tool_calls") == 0 && json_is_true(v))) {
            sv_error_set(e, 422, falsy[i], "unsupported_parameter",
                         "'%s' is not supported by this server", falsy[i]);
            return false;
        }
    }
    static const char *const zero[] = {"frequency_penalty", "presence_penalty"};
    for (size_t i = 0; i < 2; i++) {
        double x = 0;
        if (!get_number(root, zero[i], -2, 2, &x, e))
            return false;
        if (x != 0) {
            sv_error_set(e, 422, zero[i], "unsupported_parameter",
                         "'%s' other than 0 is not supported by this server (repeat_penalty is)",
                         zero[i]);
            return false;
        }
    }
    json_t *rf = json_object_get(root, "response_format");
    if (rf && !json_is_null(rf)) {
        json_t *type = json_is_object(rf) ? json_object_get(rf, "type") : NULL;
        if (!json_is_string(type) || strcmp(json_string_value(type), "text") != 0) {
            sv_error_set(e, 422, "response_format", "unsupported_parameter",
                         "'response_format' other than {\"type\": \"text\"} is not supported");
            return false;
        }
    }
    return true;
}

/* A prompt given as token ids. */
static bool get_ids(json_t *a, sv_prompt *p, const char *field, sv_error *e)
{
    size_t n = json_array_size(a);
    if (n == 0) {
        sv_error_set(e, 422, field, NULL, "'%s' has an empty prompt", field);
        return false;
    }
    if (!(p->ids = malloc(n * sizeof *p->ids)))
        return oom(e);
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_array_get(a, i);
        if (!json_is_integer(v))
            return wrong_type(e, field, "a text, token ids, or a list of either");
        json_int_t x = json_integer_value(v);
        if (x < 0 || x > INT32_MAX) {
            sv_error_set(e, 422, field, NULL, "'%s' has the token id %lld", field,
                         (long long)x);
            return false;
        }
        p->ids[i] = (int32_t)x;
    }
    p->n_ids = n;
    return true;
}

static bool get_prompts(json_t *root, sv_request *r, sv_error *e)
{
    json_t *v = json_object_get(root, "prompt");
    const char *want = "a text, token ids, or a list of either";
    if (!v || json_is_null(v)) {
        sv_error_set(e, 400, "prompt", NULL, "'prompt' is required");
        return false;
    }
    size_t n = 1;
    bool list = json_is_array(v) && json_array_size(v) > 0 &&
                !json_is_integer(json_array_get(v, 0));
    if (list)
        n = json_array_size(v);
    else if (!json_is_string(v) && !json_is_array(v))
        return wrong_type(e, "prompt", want);
    if (n > SV_MAX_PROMPTS) {
        sv_error_set(e, 422, "prompt", NULL, "'prompt' has %zu prompts; at most %d", n,
                     SV_MAX_PROMPTS);
        return false;
    }
    if (!(r->prompts = calloc(n, sizeof *r->prompts)))
        return oom(e);
    r->n_prompts = n;
    for (size_t i = 0; i < n; i++) {
        json_t *p = list ? json_array_get(v, i) : v;
        if (json_is_string(p)) {
            if (!(r->prompts[i].text = strdup(json_string_value(p))))
                return oom(e);
        } else if (!json_is_array(p) || !get_ids(p, &r->prompts[i], "prompt", e)) {
            return e->http ? false : wrong_type(e, "prompt", want);
        }
    }
    return true;
}

/* A message's content: a text, or a list of text parts (joined). */
static char *content_text(json_t *c, sv_error *e)
{
    if (json_is_null(c))
        return strdup("");
    if (json_is_string(c))
        return strdup(json_string_value(c));
    if (!json_is_array(c)) {
        wrong_type(e, "messages", "a list of {role, content} with a text content");
        return NULL;
    }
    size_t total = 1, i;
    json_t *part;
    json_array_foreach(c, i, part) {
        json_t *type = json_object_get(part, "type"), *text = json_object_get(part, "text");
        if (!json_is_string(type) || strcmp(json_string_value(type), "text") != 0 ||
            !json_is_string(text)) {
            sv_error_set(e, 422, "messages", "unsupported_content",
                         "message content parts must be {\"type\": \"text\", \"text\": ...}: "
                         "this model reads text only");
            return NULL;
        }
        total += json_string_length(text);
    }
    char *out = malloc(total), *o = out;
    if (!out) {
        oom(e);
        return NULL;
    }
    json_array_foreach(c, i, part) {
        json_t *text = json_object_get(part, "text");
        memcpy(o, json_string_value(text), json_string_length(text));
        o += json_string_length(text);
    }
    *o = '\0';
    return out;
}

static bool get_messages(json_t *root, sv_request *r, sv_error *e)
{
    json_t *v = json_object_get(root, "messages");
    const char *want = "a list of {role, content}";
    if (!v || json_is_null(v)) {
        sv_error_set(e, 400, "messages", NULL, "'messages' is required");
        return false;
    }
    if (!json_is_array(v))
        return wrong_type(e, "messages", want);
    size_t n = json_array_size(v);
    if (n == 0) {
        sv_error_set(e, 422, "messages", NULL, "'messages' is empty");
        return false;
    }
    if (!(r->messages = calloc(n, sizeof *r->messages)))
        return oom(e);
    for (size_t i = 0; i < n; i++) {
        json_t *m = json_array_get(v, i), *role = json_object_get(m, "role");
        if (!json_is_object(m) || !json_is_string(role))
            return wrong_type(e, "messages", want);
        r->n_messages = i + 1;
        if (!(r->messages[i].role = strdup(json_string_value(role))))
            return oom(e);
        json_t *c = json_object_get(m, "content");
        if (!c) {
            sv_error_set(e, 400, "messages", NULL, "message %zu has no 'content'", i + 1);
            return false;
        }
        if (!(r->messages[i].content = content_text(c, e)))
            return e->http ? false : oom(e);
    }
    return true;
}

static bool get_stop(json_t *root, sv_request *r, sv_error *e)
{
    json_t *v = json_object_get(root, "stop");
    if (!v || json_is_null(v))
        return true;
    const char *want = "a text or a list of up to 4 texts";
    size_t n = json_is_array(v) ? json_array_size(v) : 1;
    if (!json_is_string(v) && !json_is_array(v))
        return wrong_type(e, "stop", want);
    if (n > SV_MAX_STOPS) {
        sv_error_set(e, 422, "stop", NULL, "'stop' has %zu texts; at most %d", n, SV_MAX_STOPS);
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *s = json_is_array(v) ? json_array_get(v, i) : v;
        if (!json_is_string(s))
            return wrong_type(e, "stop", want);
        if (json_string_length(s) == 0 || json_string_length(s) > 256) {
            sv_error_set(e, 422, "stop", NULL, "a 'stop' text must have 1 to 256 bytes");
            return false;
        }
        if (!(r->stop[r->n_stop] = strdup(json_string_value(s))))
            return oom(e);
        r->n_stop++;
    }
    return true;
}

static bool parse(json_t *root, bool chat, sv_request *r, sv_error *e)
{
    json_t *model = json_object_get(root, "model");
    if (model && !json_is_null(model)) {
        if (!json_is_string(model))
            return wrong_type(e, "model", "a text");
        if (!(r->model = strdup(json_string_value(model))))
            return oom(e);
    }
    if (!(chat ? get_messages(root, r, e) : get_prompts(root, r, e)) || !get_stop(root, r, e) ||
        !refuse_unsupported(root, e))
        return false;
    if (!get_integer(root, "max_tokens", 0, INT32_MAX, &r->max_tokens, e) ||
        (chat && !get_integer(root, "max_completion_tokens", 0, INT32_MAX, &r->max_tokens, e)) ||
        !get_number(root, "temperature", 0, 2, &r->temperature, e) ||
        !get_number(root, "top_p", 0, 1, &r->top_p, e) ||
        !get_number(root, "min_p", 0, 1, &r->min_p, e) ||
        !get_number(root, "repeat_penalty", 0.01, 100, &r->repeat_penalty, e) ||
        !get_integer(root, "top_k", 0, INT32_MAX, &r->top_k, e) ||
        !get_integer(root, "n", 1, SV_MAX_PROMPTS, &r->n, e) ||
        !get_bool(root, "stream", &r->stream, e) ||
        !get_bool(root, "ignore_eos", &r->ignore_eos, e))
        return false;
    if (r->top_p == 0) { /* nothing left to draw from: the likeliest, as OpenAI does */
        r->top_p = 1;
        r->temperature = 0;
    }
    json_t *best = json_object_get(root, "best_of");
    if (best && !json_is_null(best) &&
        !(json_is_integer(best) && json_integer_value(best) == r->n)) {
        sv_error_set(e, 422, "best_of", "unsupported_parameter",
                     "'best_of' other than n is not supported by this server");
        return false;
    }
    json_t *seed = json_object_get(root, "seed");
    if (seed && !json_is_null(seed)) {
        if (!json_is_integer(seed))
            return wrong_type(e, "seed", "an integer");
        r->has_seed = true;
        r->seed = (uint64_t)json_integer_value(seed);
    }
    json_t *so = json_object_get(root, "stream_options");
    if (so && !json_is_null(so)) {
        if (!json_is_object(so))
            return wrong_type(e, "stream_options", "an object");
        if (!get_bool(so, "include_usage", &r->include_usage, e))
            return false;
    }
    return true;
}

bool sv_request_parse(const char *body, size_t len, bool chat, sv_request *out, sv_error *err)
{
    *out = (sv_request){.chat = chat, .max_tokens = -1, .temperature = 1, .top_p = 1,
                        .repeat_penalty = 1, .n = 1};
    *err = (sv_error){0};
    json_error_t je;
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        sv_error_set(err, 400, NULL, NULL,
                     "the body is not valid JSON: %s (line %d, column %d)", je.text, je.line,
                     je.column);
        return false;
    }
    if (!json_is_object(root)) {
        json_decref(root);
        sv_error_set(err, 400, NULL, NULL, "the body must be a JSON object");
        return false;
    }
    bool ok = parse(root, chat, out, err);
    json_decref(root);
    if (!ok)
        sv_request_free(out);
    return ok;
}
