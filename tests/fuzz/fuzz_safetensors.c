/* fuzz_safetensors.c - the safetensors reader on any bytes: it refuses or
 * accepts, and what it accepts converts to floats within its bounds. */
#include <stdlib.h>

#include "fuzz.h"
#include "strata/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    st_safetensors *f = NULL;
    if (st_safetensors_parse(data, size, "fuzz input", &f) != ST_OK)
        return 0;
    const st_safetensors_entry *e;
    for (size_t i = 0; (e = st_safetensors_at(f, i)); i++) {
        (void)st_safetensors_find(f, e->name);
        if (e->numel > (1u << 20))
            continue; /* converting is linear in the size: keep each run short */
        float *out = malloc((e->numel ? e->numel : 1) * sizeof *out);
        if (out)
            (void)st_safetensors_to_f32(e, out);
        free(out);
    }
    (void)st_safetensors_metadata(f, "format");
    st_safetensors_close(f);
    return 0;
}
