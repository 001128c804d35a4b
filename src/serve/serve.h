/*
 * serve.h - `strata serve`'s parts that need no device: the OpenAI request
 * bodies read into settings (request.c), the chat templates of the model
 * families Strata runs recognised and rendered (chat.c), and the server
 * itself (server.c).
 */
#ifndef STRATA_SERVE_H
#define STRATA_SERVE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "strata/status.h"
#include "strata/infer.h"
#include "strata/tokenizer.h"

/* ---- chat templates (chat.c) ------------------------------------------------- */

/* The shapes of the chat templates published with the families Strata runs.
 * A tokenizer_config.json's Jinja template is recognised by its markers,
 * not executed: a template of none of these shapes is refused. */
typedef enum sv_chat_kind {
    SV_CHAT_CHATML = 1, /* <|im_start|>role\n...<|im_end|>\n: Qwen2, SmolLM */
    SV_CHAT_LLAMA3,     /* <|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|> */
    SV_CHAT_LLAMA2,     /* [INST] <<SYS>>\n...\n<</SYS>>\n\n... [/INST] */
    SV_CHAT_MISTRAL,    /* [INST] ... [/INST]...</s>, no system role */
    SV_CHAT_ZEPHYR      /* <|user|>\n...</s>\n<|assistant|>\n: TinyLlama's chat */
} sv_chat_kind;

typedef struct sv_chat_template {
    sv_chat_kind kind;
    char name[16];            /* "chatml", "llama3", ... */
    char bos[64], eos[64];    /* the tokenizer_config.json's bos_token and eos_token */
    char default_system[512]; /* said when the messages have no system message */
    bool has_default_system;
    bool knowledge_date;      /* Llama 3.1: its system header's dates */
} sv_chat_template;

/* Recognises a template's text (bos and eos: its tokens' text, may be
 * ""). ST_ERR_UNSUPPORTED, naming what was missing, when it is of no known
 * shape. */
st_status sv_chat_detect(const char *text, const char *bos, const char *eos,
                         sv_chat_template *out);
/* The template of a model folder: tokenizer_config.json's chat_template (a
 * string, or the "default" of a list of named ones), else
 * chat_template.jinja. ST_ERR_NOT_FOUND when it has none. */
st_status sv_chat_load(const char *dir, sv_chat_template *out);

typedef struct sv_message {
    const char *role; /* system, user, assistant */
    const char *content;
} sv_message;

/* The prompt of a conversation, ending where the assistant's next answer
 * starts (the BOS text included when the template writes it: encode it
 * without the tokenizer's own template). *out is malloc'd. ST_ERR_INVALID,
 * with a message for the client, for a conversation the template cannot
 * say (a role it lacks, no user message). */
st_status sv_chat_render(const sv_chat_template *t, const sv_message *m, size_t n, char **out,
                         size_t *len);

/* ---- requests (request.c) ------------------------------------------------------ */

/* What went wrong with a request, as an OpenAI error object says it. */
typedef struct sv_error {
    int http;         /* 400, 404, 413, 422, 429, 500, 503 */
    const char *type; /* "invalid_request_error", ... */
    char param[40];   /* the field at fault, or "" */
    char code[40];    /* "model_not_found", "context_length_exceeded", or "" */
    char message[320];
} sv_error;

#define SV_MAX_STOPS 4
#define SV_MAX_PROMPTS 64

typedef struct sv_prompt {
    char *text;      /* a text, or NULL */
    int32_t *ids;    /* token ids given as they are */
    size_t n_ids;
} sv_prompt;

typedef struct sv_request {
    bool chat;
    char *model;            /* NULL: not given */
    sv_prompt *prompts;     /* completions: one or more */
    size_t n_prompts;
    sv_message *messages;   /* chat */
    size_t n_messages;
    long max_tokens;        /* -1: not given */
    double temperature, top_p, min_p, repeat_penalty;
    long top_k;
    char *stop[SV_MAX_STOPS];
    int n_stop;
    bool has_seed;
    uint64_t seed;
    long n;
    bool stream, include_usage;
    bool ignore_eos;        /* llama.cpp's extension: the EOS token does not end the text */
} sv_request;

/* Reads a /v1/completions (chat false) or /v1/chat/completions body. On a
 * bad one, false and *err (400 malformed JSON or a wrong type, 422 a value
 * out of range). Unknown fields are ignored, as OpenAI's server does;
 * fields Strata cannot honour (logprobs, tools, penalties other than 0)
 * are refused by name. */
bool sv_request_parse(const char *body, size_t len, bool chat, sv_request *out, sv_error *err);
void sv_request_free(sv_request *r);

void sv_error_set(sv_error *e, int http, const char *param, const char *code, const char *fmt,
                  ...) __attribute__((format(printf, 5, 6)));
/* The error's JSON body: {"error":{"message","type","param","code"}}
 * (malloc'd). */
char *sv_error_json(const sv_error *e);

/* ---- the server (server.c) ---------------------------------------------------- */

typedef struct sv_config {
    const char *model_dir, *model_name, *tokenizer, *adapter;
    const char *host;
    int port;
    int parallel;        /* sequences at once (KV slots) */
    int queue;           /* requests waiting beyond them; more: 503 */
    int ctx;             /* 0: the model's */
    int prefill;         /* 0: the default */
    long max_tokens;     /* a request's most; 0: the context */
    size_t max_body;     /* bytes */
    double drain_s;      /* SIGTERM: how long in-flight requests may finish */
    double timeout_s;    /* an idle connection's */
    const char *api_key; /* NULL: none */
    const char *devices, *split, *parallel_plan;
    bool keep_all_devices;
    int dtype;           /* the weights' storage (st_dtype), or -1: as the folder stores them */
} sv_config;

struct st_infer;
struct st_tokenizer;
/* Opens the session (parallel sequences) and the tokenizer (NULL: bytes),
 * called once the server listens, so that /health says "loading" meanwhile. */
typedef st_status (*sv_loader)(void *ctx, struct st_infer **in, struct st_tokenizer **tk);

/* Listens, loads, and serves until SIGTERM, SIGINT or SIGHUP (exit code 0
 * after the drain) or a device failure (1); 2 for bad input (an address
 * in use, a model that does not load). */
int sv_serve(const sv_config *c, sv_loader load, void *load_ctx);

#endif
