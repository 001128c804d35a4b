/* fuzz_data.c - the data loaders: any bytes as a text file and as a uint16
 * token file, opened and cut into batches as training does. */
#include <stdint.h>

#include "fuzz.h"
#include "strata/data.h"

static void batches(const char *path)
{
    st_dataset *ds = NULL;
    if (st_dataset_open(path, &ds) != ST_OK)
        return;
    int32_t tok[4 * 8], tgt[4 * 8];
    (void)st_dataset_vocab_needed(ds);
    for (uint64_t i = 0; i < 3; i++) {
        (void)st_dataset_batch(ds, ST_TRAIN, 1, i, 4, 8, tok, tgt);
        (void)st_dataset_batch(ds, ST_VAL, 1, i, 4, 8, tok, tgt);
        (void)st_dataset_batch(ds, ST_ALL, 1, i, 4, 8, tok, tgt);
    }
    (void)st_dataset_windows(ds, ST_ALL, 8);
    st_dataset_destroy(ds);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    batches(fuzz_file("input.txt", data, size));
    batches(fuzz_file("input.bin", data, size));
    return 0;
}
