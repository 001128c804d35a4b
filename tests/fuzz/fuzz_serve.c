/* fuzz_serve.c - `strata serve`'s request reader and chat templates on any
 * bytes: the input's first byte chooses completions or chat; a request read
 * is rendered through every template shape (its messages, or its prompt as
 * a user message), and a refused one must say why as an error object; the
 * input is also taken as a template's text. */
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "serve/serve.h"

static const char *const shapes[] = {
    "<|im_start|>system\\nYou are kind.<|im_end|>", "<|start_header_id|><|end_header_id|><|eot_id|>",
    "Cutting Knowledge Date date_string = \"1 Jan 2025\" <|start_header_id|><|end_header_id|><|eot_id|>",
    "[INST] <<SYS>> [/INST]", "[INST] [/INST]", "<|user|> <|assistant|>"};

static void render_all(const sv_message *m, size_t n)
{
    for (size_t k = 0; k < sizeof shapes / sizeof *shapes; k++) {
        sv_chat_template t;
        if (sv_chat_detect(shapes[k], "<s>", "</s>", &t) != ST_OK)
            abort(); /* the shapes themselves are known */
        char *out = NULL;
        size_t len = 0;
        if (sv_chat_render(&t, m, n, &out, &len) == ST_OK && (!out || strlen(out) != len))
            abort();
        free(out);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    bool chat = data[0] & 1;
    char *text = fuzz_text(data + 1, size - 1);
    if (!text)
        return 0;
    sv_request r;
    sv_error e;
    if (sv_request_parse(text, size - 1, chat, &r, &e)) {
        if (chat) {
            render_all(r.messages, r.n_messages);
        } else {
            for (size_t i = 0; i < r.n_prompts; i++)
                if (r.prompts[i].text) {
                    sv_message m = {"user", r.prompts[i].text};
                    render_all(&m, 1);
                }
        }
        sv_request_free(&r);
    } else {
        char *j = sv_error_json(&e);
        if (!j || e.http < 400 || !e.message[0])
            abort();
        free(j);
    }
    /* the input as a template */
    sv_chat_template t;
    if (sv_chat_detect(text, "<s>", "</s>", &t) == ST_OK) {
        sv_message m[2] = {{"system", "s"}, {"user", "u"}};
        char *out = NULL;
        size_t len = 0;
        if (sv_chat_render(&t, m, 2, &out, &len) == ST_OK && strlen(out) != len)
            abort();
        free(out);
    }
    free(text);
    return 0;
}
