/*
 * tuning_table.c - CLBlast parameters known to be good on device families
 * that CLBlast's own database does not cover, used for a device that has no
 * tuning of its own (`strata tune` saves one, which wins).
 *
 * Each entry was measured on a device of that family (figures in
 * README.md, "Tuning GEMM for a device"); add a family by running
 * `strata tune --budget` on it and copying the saved file's values here.
 */
#include <stdio.h>
#include <string.h>

#include "strata/tune.h"

typedef struct family {
    const char *platform; /* a part of the platform's name */
    st_device_type type;
    const char *kernel;
    const char *params; /* "NAME=VALUE ..." */
} family;

static const family table[] = {
    /* PoCL's CPU devices (pthread and basic), on x86-64 with AVX-512: found
     * by CLBlast's tuner on the 2-core reference machine (an AMD EPYC), then
     * by `strata tune --budget 90` from there, twice (KREG 8 -> 2 -> 4, VWN
     * 2 -> 1): 109.5 -> 133.3 GFLOPS the second time, over the NN, NT and
     * TN products of 512^3 and 256x2048x512 on one pthread device. */
    {"Portable Computing Language", ST_DEVICE_CPU, "Xgemm",
     "GEMMK=1 KREG=4 KWG=1 KWI=1 MDIMA=8 MDIMC=8 MWG=64 NDIMB=4 NDIMC=4 NWG=64 SA=0 SB=0 "
     "STRM=0 STRN=0 VWM=8 VWN=1"},
    /* CLBlast's own switch from the direct kernel to that one: at 128^3
     * rather than its default (products of a 12 x 768 model at 256 tokens,
     * 256x3072x768: 15.5 -> 74.5 GFLOPS with the Xgemm values above). */
    {"Portable Computing Language", ST_DEVICE_CPU, "GemmRoutine",
     "XGEMM_MIN_INDIRECT_SIZE=128"},
};

static bool parse(const char *kernel, const char *text, st_tuning *out)
{
    memset(out, 0, sizeof *out);
    snprintf(out->kernel, sizeof out->kernel, "%s", kernel);
    const char *p = text;
    while (*p) {
        while (*p == ' ')
            p++;
        if (!*p)
            break;
        char name[32];
        unsigned long value;
        int used = 0;
        if (out->n == ST_TUNE_MAX_PARAMS ||
            sscanf(p, "%31[A-Z_]=%lu%n", name, &value, &used) != 2)
            return false;
        snprintf(out->names[out->n], sizeof out->names[0], "%s", name);
        out->values[out->n++] = value;
        p += used;
    }
    return out->n > 0;
}

size_t st_tuning_builtin(const st_device_info *info, st_tuning *out, size_t max)
{
    size_t n = 0;
    for (size_t i = 0; i < sizeof table / sizeof table[0] && n < max; i++)
        if (info->type == table[i].type && strstr(info->platform, table[i].platform) &&
            parse(table[i].kernel, table[i].params, &out[n]))
            n++;
    return n;
}
