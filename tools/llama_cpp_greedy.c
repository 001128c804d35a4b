/*
 * llama_cpp_greedy.c - greedy tokens from llama.cpp for a prompt of token
 * ids, to compare with `strata generate --temperature 0` on the same
 * weights (tools/bench_llama_cpp.sh builds it against llama.cpp's library).
 *
 * usage: llama_cpp_greedy MODEL.gguf N THREADS < ids   (ids: decimal, space-separated)
 * prints the N generated ids, space-separated, on one line.
 */
#include <stdio.h>
#include <stdlib.h>

#include "llama.h"

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s MODEL.gguf N THREADS < ids\n", argv[0]);
        return 2;
    }
    int n_gen = atoi(argv[2]), threads = atoi(argv[3]);
    llama_token prompt[8192];
    int n = 0;
    while (n < 8192 && scanf("%d", &prompt[n]) == 1)
        n++;
    if (n == 0 || n_gen < 1) {
        fprintf(stderr, "no prompt ids on standard input, or N < 1\n");
        return 2;
    }
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    struct llama_model *model = llama_model_load_from_file(argv[1], mp);
    if (!model) {
        fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t)(n + n_gen + 8);
    cp.n_batch = (uint32_t)(n > 512 ? n : 512);
    cp.n_threads = cp.n_threads_batch = threads;
    struct llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) {
        fprintf(stderr, "cannot make a context\n");
        return 1;
    }
    int V = llama_vocab_n_tokens(llama_model_get_vocab(model));
    llama_token tok;
    struct llama_batch batch = llama_batch_get_one(prompt, n);
    for (int i = 0; i < n_gen; i++) {
        if (llama_decode(ctx, batch) != 0) {
            fprintf(stderr, "llama_decode failed at token %d\n", i);
            return 1;
        }
        const float *logits = llama_get_logits_ith(ctx, -1);
        int best = 0;
        for (int v = 1; v < V; v++)
            if (logits[v] > logits[best])
                best = v;
        tok = best;
        printf("%s%d", i ? " " : "", tok);
        batch = llama_batch_get_one(&tok, 1);
    }
    printf("\n");
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return ferror(stdout) ? 1 : 0;
}
