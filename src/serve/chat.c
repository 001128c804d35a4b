/*
 * chat.c - chat templates (serve.h): a model's Jinja template recognised
 * by the markers of its family's shape, and conversations rendered in that
 * shape. A template is never executed: rendering is C, one function per
 * shape, and tests/chat_check.py compares it with Jinja's rendering of
 * templates of each shape.
 */
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/file.h"
#include "serve/serve.h"

static const char *const kind_names[] = {"", "chatml", "llama3", "llama2", "mistral", "zephyr"};

/* A literal of the template that follows `after` up to `until`, with Jinja's
 * \n escapes undone, when it is plain text (no expression, no quote). */
static bool literal_after(const char *text, const char *after, const char *until, char *out,
                          size_t size)
{
    const char *a = strstr(text, after);
    if (!a)
        return false;
    a += strlen(after);
    const char *b = strstr(a, until);
    if (!b)
        return false;
    size_t o = 0;
    for (const char *p = a; p < b; p++) {
        if (*p == '{' || *p == '}' || *p == '\'' || *p == '"' || *p == '+')
            return false;
        char c = *p;
        if (c == '\\' && p + 1 < b) {
            p++;
            c = *p == 'n' ? '\n' : *p == 't' ? '\t' : *p;
        }
        if (o + 1 >= size)
            return false;
        out[o++] = c;
    }
    out[o] = '\0';
    return o > 0;
}

st_status sv_chat_detect(const char *text, const char *bos, const char *eos,
                         sv_chat_template *out)
{
    *out = (sv_chat_template){0};
    if (strlen(bos) >= sizeof out->bos || strlen(eos) >= sizeof out->eos)
        return st_error(ST_ERR_UNSUPPORTED, "the chat template's BOS or EOS token is too long");
    strcpy(out->bos, bos);
    strcpy(out->eos, eos);
    if (strstr(text, "<|im_start|>") && strstr(text, "<|im_end|>")) {
        out->kind = SV_CHAT_CHATML;
        out->has_default_system =
            literal_after(text, "<|im_start|>system\\n", "<|im_end|>", out->default_system,
                          sizeof out->default_system) ||
            literal_after(text, "<|im_start|>system\n", "<|im_end|>", out->default_system,
                          sizeof out->default_system);
    } else if (strstr(text, "<|start_header_id|>") && strstr(text, "<|end_header_id|>") &&
               strstr(text, "<|eot_id|>")) {
        out->kind = SV_CHAT_LLAMA3;
        if (strstr(text, "Cutting Knowledge Date")) {
            out->knowledge_date = true;
            /* the date the template says when the caller gives none */
            if (!literal_after(text, "date_string = \"", "\"", out->default_system,
                               sizeof out->default_system) &&
                !literal_after(text, "date_string = '", "'", out->default_system,
                               sizeof out->default_system))
                return st_error(ST_ERR_UNSUPPORTED,
                                "the Llama 3.1 chat template has no default date_string");
        }
    } else if (strstr(text, "[INST]") && strstr(text, "[/INST]") && strstr(text, "<<SYS>>")) {
        out->kind = SV_CHAT_LLAMA2;
    } else if (strstr(text, "[INST]") && strstr(text, "[/INST]")) {
        out->kind = SV_CHAT_MISTRAL;
    } else if (strstr(text, "<|user|>") && strstr(text, "<|assistant|>")) {
        out->kind = SV_CHAT_ZEPHYR;
    } else {
        return st_error(ST_ERR_UNSUPPORTED,
                        "the chat template is of no shape Strata knows (ChatML, Llama 2, "
                        "Llama 3, Mistral, Zephyr): none of their markers is in it");
    }
    if ((out->kind == SV_CHAT_LLAMA2 || out->kind == SV_CHAT_MISTRAL ||
         out->kind == SV_CHAT_ZEPHYR) && !eos[0])
        return st_error(ST_ERR_UNSUPPORTED,
                        "the %s chat template needs the tokenizer's eos_token, which "
                        "tokenizer_config.json does not give", kind_names[out->kind]);
    snprintf(out->name, sizeof out->name, "%s", kind_names[out->kind]);
    return ST_OK;
}

/* A token of tokenizer_config.json: a string, or an object with "content". */
static const char *token_text(json_t *root, const char *key)
{
    json_t *v = json_object_get(root, key);
    if (json_is_object(v))
        v = json_object_get(v, "content");
    return json_is_string(v) ? json_string_value(v) : "";
}

st_status sv_chat_load(const char *dir, sv_chat_template *out)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    char *text = NULL;
    size_t len = 0;
    st_status s = st_read_text_file(path, "tokenizer config", &text, &len);
    if (s == ST_ERR_NOT_FOUND)
        return st_error(ST_ERR_NOT_FOUND, "%s has no tokenizer_config.json", dir);
    if (s != ST_OK)
        return s;
    json_error_t je;
    json_t *root = json_loadb(text, len, 0, &je);
    free(text);
    if (!json_is_object(root)) {
        json_decref(root);
        return st_error(ST_ERR_INVALID, "%s: not a JSON object (%s, line %d)", path, je.text,
                        je.line);
    }
    const char *tmpl = NULL;
    json_t *t = json_object_get(root, "chat_template");
    if (json_is_string(t)) {
        tmpl = json_string_value(t);
    } else if (json_is_array(t)) { /* named templates: the default one */
        size_t i;
        json_t *e;
        json_array_foreach(t, i, e) {
            json_t *name = json_object_get(e, "name"), *body = json_object_get(e, "template");
            if (json_is_string(name) && json_is_string(body) &&
                strcmp(json_string_value(name), "default") == 0)
                tmpl = json_string_value(body);
        }
    }
    char *jinja = NULL;
    if (!tmpl) {
        snprintf(path, sizeof path, "%s/chat_template.jinja", dir);
        s = st_read_text_file(path, "chat template", &jinja, &len);
        if (s == ST_ERR_NOT_FOUND)
            s = st_error(ST_ERR_NOT_FOUND,
                         "%s has no chat template (tokenizer_config.json's chat_template, or "
                         "chat_template.jinja)", dir);
        tmpl = jinja;
    }
    if (s == ST_OK)
        s = sv_chat_detect(tmpl, token_text(root, "bos_token"), token_text(root, "eos_token"),
                           out);
    free(jinja);
    json_decref(root);
    return s;
}

/* ---- rendering ------------------------------------------------------------------ */

typedef struct buf {
    char *p;
    size_t n, cap;
    bool failed;
} buf;

static void put(buf *b, const char *s, size_t n)
{
    if (b->failed)
        return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = (b->n + n + 1) * 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->failed = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void puts_(buf *b, const char *s)
{
    put(b, s, strlen(s));
}

/* Python's str.strip(): spaces, tabs and newlines off both ends. */
static void put_trimmed(buf *b, const char *s)
{
    size_t n = strlen(s);
    while (n > 0 && strchr(" \t\n\r\f\v", s[n - 1]))
        n--;
    while (n > 0 && strchr(" \t\n\r\f\v", *s))
        s++, n--;
    put(b, s, n);
}

static bool is_role(const sv_message *m, const char *role)
{
    return strcmp(m->role, role) == 0;
}

/* Llama 2 and Mistral: user and assistant take turns from a user message;
 * Llama 2's system message goes into the first user message. */
static st_status render_inst(const sv_chat_template *t, const sv_message *m, size_t n, buf *b)
{
    const char *sys = NULL;
    if (n > 0 && is_role(&m[0], "system")) {
        if (t->kind == SV_CHAT_MISTRAL)
            return st_error(ST_ERR_INVALID, "this model's chat template (Mistral) has no system "
                                            "role: put the instructions in the first user message");
        sys = m[0].content;
        m++, n--;
    }
    for (size_t i = 0; i < n; i++) {
        bool user = is_role(&m[i], "user");
        if (user != (i % 2 == 0) || (!user && !is_role(&m[i], "assistant")))
            return st_error(ST_ERR_INVALID,
                            "this model's chat template (%s) needs user and assistant messages "
                            "in turn, from a user message (message %zu is \"%s\")",
                            t->name, i + 1 + (sys != NULL), m[i].role);
        if (user) {
            if (t->kind == SV_CHAT_LLAMA2 || i == 0) /* Mistral: one BOS, first */
                puts_(b, t->bos);
            puts_(b, "[INST] ");
            if (t->kind == SV_CHAT_LLAMA2) {
                buf c = {0};
                if (i == 0 && sys) {
                    puts_(&c, "<<SYS>>\n");
                    puts_(&c, sys);
                    puts_(&c, "\n<</SYS>>\n\n");
                }
                puts_(&c, m[i].content);
                if (c.failed) {
                    free(c.p);
                    return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
                }
                put_trimmed(b, c.p ? c.p : "");
                free(c.p);
            } else {
                puts_(b, m[i].content);
            }
            puts_(b, " [/INST]");
        } else if (t->kind == SV_CHAT_LLAMA2) {
            puts_(b, " ");
            put_trimmed(b, m[i].content);
            puts_(b, " ");
            puts_(b, t->eos);
        } else {
            puts_(b, m[i].content);
            puts_(b, t->eos);
        }
    }
    if (n == 0 || !is_role(&m[n - 1], "user"))
        return st_error(ST_ERR_INVALID, "this model's chat template (%s) needs the last message "
                                        "to be the user's", t->name);
    return ST_OK;
}

st_status sv_chat_render(const sv_chat_template *t, const sv_message *m, size_t n, char **out,
                         size_t *len)
{
    for (size_t i = 0; i < n; i++)
        if (!is_role(&m[i], "system") && !is_role(&m[i], "user") && !is_role(&m[i], "assistant"))
            return st_error(ST_ERR_INVALID,
                            "message %zu has the role \"%s\": Strata's chat knows system, user "
                            "and assistant", i + 1, m[i].role);
    if (n == 0)
        return st_error(ST_ERR_INVALID, "the conversation has no messages");
    buf b = {0};
    st_status s = ST_OK;
    switch (t->kind) {
    case SV_CHAT_CHATML:
        if (t->has_default_system && !is_role(&m[0], "system")) {
            puts_(&b, "<|im_start|>system\n");
            puts_(&b, t->default_system);
            puts_(&b, "<|im_end|>\n");
        }
        for (size_t i = 0; i < n; i++) {
            puts_(&b, "<|im_start|>");
            puts_(&b, m[i].role);
            puts_(&b, "\n");
            puts_(&b, m[i].content);
            puts_(&b, "<|im_end|>\n");
        }
        puts_(&b, "<|im_start|>assistant\n");
        break;
    case SV_CHAT_LLAMA3: {
        puts_(&b, t->bos);
        size_t first = 0;
        if (t->knowledge_date) { /* 3.1: a system header always, with its dates */
            puts_(&b, "<|start_header_id|>system<|end_header_id|>\n\n");
            puts_(&b, "Cutting Knowledge Date: December 2023\nToday Date: ");
            puts_(&b, t->default_system);
            puts_(&b, "\n\n");
            if (is_role(&m[0], "system")) {
                put_trimmed(&b, m[0].content);
                first = 1;
            }
            puts_(&b, "<|eot_id|>");
        }
        for (size_t i = first; i < n; i++) {
            puts_(&b, "<|start_header_id|>");
            puts_(&b, m[i].role);
            puts_(&b, "<|end_header_id|>\n\n");
            put_trimmed(&b, m[i].content);
            puts_(&b, "<|eot_id|>");
        }
        puts_(&b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
        break;
    }
    case SV_CHAT_LLAMA2:
    case SV_CHAT_MISTRAL:
        s = render_inst(t, m, n, &b);
        break;
    case SV_CHAT_ZEPHYR:
        for (size_t i = 0; i < n; i++) {
            puts_(&b, "<|");
            puts_(&b, m[i].role);
            puts_(&b, "|>\n");
            puts_(&b, m[i].content);
            puts_(&b, t->eos);
            puts_(&b, "\n");
        }
        puts_(&b, "<|assistant|>\n");
        break;
    default:
        s = st_error(ST_ERR_UNSUPPORTED, "no chat template");
    }
    if (s == ST_OK && b.failed)
        s = st_error(ST_ERR_HOST_MEMORY, "out of host memory for a conversation");
    if (s != ST_OK) {
        free(b.p);
        return s;
    }
    if (!b.p)
        puts_(&b, "");
    *out = b.p;
    *len = b.n;
    return b.failed ? st_error(ST_ERR_HOST_MEMORY, "out of host memory") : ST_OK;
}
