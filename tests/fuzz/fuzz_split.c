/* fuzz_split.c - the --split parser on any text, and planning with what it
 * accepts over a small model and two made-up devices. */
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "strata/plan.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = fuzz_text(data, size);
    if (!text)
        return 0;
    st_split_spec split;
    if (st_split_parse(text, &split) == ST_OK) {
        st_model_config cfg = {.vocab_size = 64, .n_positions = 16, .n_embd = 16, .n_layer = 6,
                             .n_head = 2, .n_inner = 64, .norm_eps = 1e-5f};
        st_model_desc *desc = NULL;
        if (st_model_describe(&cfg, &desc) == ST_OK) {
            st_device_profile dev[2] = {
                {.gflops = 10, .h2d_gbps = 5, .d2h_gbps = 5, .mem_bytes = 1u << 30},
                {.gflops = 20, .h2d_gbps = 5, .d2h_gbps = 5, .mem_bytes = 1u << 30}};
            st_plan_input in = {.desc = desc,
                                .shape = {.batch = 8, .seq = 16, .micro_batches = 4,
                                          .training = true},
                                .n_devices = split.n == 1 ? 1 : 2,
                                .devices = dev, .split = split};
            st_plan plan;
            (void)st_plan_make(&in, &plan);
        }
        st_model_desc_destroy(desc);
    }
    free(text);
    return 0;
}
