/* fuzz_manifest.c - the checkpoint manifest reader: any bytes as the only
 * manifest of a folder, opened as `strata eval` and `--resume` open it. */
#include <stdio.h>

#include "fuzz.h"
#include "strata/checkpoint.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_file("checkpoint-step00000001-00000000.json", data, size);
    st_checkpoint *ck = NULL;
    if (st_checkpoint_open(fuzz_dir(), &ck) == ST_OK) {
        st_train_state state;
        (void)st_checkpoint_get_state(ck, &state);
        (void)st_checkpoint_get_step(ck);
        (void)st_checkpoint_describe(ck);
        st_checkpoint_close(ck);
    }
    return 0;
}
