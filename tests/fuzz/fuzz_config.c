/* fuzz_config.c - config.json parsing on any text, and describing what it
 * accepts (every size there is bounded, so describing is cheap). */
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "strata/model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = fuzz_text(data, size);
    if (!text)
        return 0;
    st_model_config cfg;
    if (st_model_config_parse(text, "fuzz input", &cfg) == ST_OK) {
        st_model_desc *desc = NULL;
        if (st_model_describe(&cfg, &desc) == ST_OK) {
            char *json = st_model_config_json(&cfg);
            st_model_config again;
            /* What is written reads back as the same config. */
            if (!json || st_model_config_parse(json, "written", &again) != ST_OK ||
                memcmp(&again, &cfg, sizeof cfg) != 0)
                abort();
            free(json);
        }
        st_model_desc_destroy(desc);
    }
    free(text);
    return 0;
}
