/*
 * model_flags.c - a model from command-line sizes (`strata train`, `strata
 * plan`): the family chosen by --arch, each flag checked against it.
 */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

st_status cli_model_config(const cli_model_flags *f, st_model_config *cfg)
{
    st_model_config c;
    memset(&c, 0, sizeof c);
    const char *arch = f->arch ? f->arch : "gpt2";
    if (strcmp(arch, "gpt2") == 0) {
        c.family = ST_FAMILY_GPT2;
    } else if (strcmp(arch, "llama") == 0) {
        c.family = ST_FAMILY_LLAMA;
    } else {
        return st_error(ST_ERR_INVALID, "unknown --arch '%s': use gpt2 or llama", arch);
    }
    if (c.family == ST_FAMILY_GPT2) {
        const char *llama_only = f->kv_heads ? "--kv-heads"
                                 : f->rope_theta > 0 ? "--rope-theta"
                                 : f->tied ? "--tie"
                                           : NULL;
        if (llama_only)
            return st_error(ST_ERR_INVALID,
                            "%s is a Llama-family setting (GPT-2 has as many key/value heads as "
                            "heads, learned positions and a tied head): add --arch llama",
                            llama_only);
    }
    c.vocab_size = (int)f->vocab;
    c.n_positions = (int)f->positions;
    c.n_embd = (int)(f->embd ? f->embd : 64);
    c.n_layer = (int)(f->layers ? f->layers : 2);
    c.n_head = (int)(f->heads ? f->heads : 4);
    c.n_kv_head = (int)(f->kv_heads ? f->kv_heads : c.n_head);
    if (c.family == ST_FAMILY_GPT2) {
        c.n_inner = (int)(f->inner ? f->inner : 4 * c.n_embd);
        c.norm_eps = 1e-5f;
    } else {
        /* Llama's MLP: about 8/3 C, here rounded up to a multiple of 32. */
        long F = (8 * (long)c.n_embd + 2) / 3;
        c.n_inner = (int)(f->inner ? f->inner : (F + 31) / 32 * 32);
        c.norm_eps = 1e-5f;
        c.rope_theta = f->rope_theta > 0 ? f->rope_theta : 10000.0;
        c.tied = f->tied;
        snprintf(c.model_type, sizeof c.model_type, "llama");
    }
    st_model_config_complete(&c);
    st_status s = st_model_config_check(&c);
    if (s != ST_OK)
        return s;
    *cfg = c;
    return ST_OK;
}

void cli_model_describe(const st_model_config *c, char *out, size_t size)
{
    if (c->family == ST_FAMILY_GPT2) {
        snprintf(out, size, "GPT-2, %d layers, %d channels, %d heads, %d positions, vocabulary %d",
                 c->n_layer, c->n_embd, c->n_head, c->n_positions, c->vocab_size);
        return;
    }
    char kv[48] = "";
    if (c->n_kv_head != c->n_head)
        snprintf(kv, sizeof kv, " (%d key/value)", c->n_kv_head);
    snprintf(out, size,
             "%s (Llama family), %d layers, %d channels, %d heads%s, MLP %d, %d positions, "
             "vocabulary %d%s%s",
             c->model_type, c->n_layer, c->n_embd, c->n_head, kv, c->n_inner, c->n_positions,
             c->vocab_size, c->tied ? ", tied head" : "", c->attn_bias ? ", q/k/v biases" : "");
}
