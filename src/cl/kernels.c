/*
 * kernels.c - finding the text of a kernel file: embedded in the binary, or
 * read from $STRATA_CL_DIR while developing.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cl/embedded.h"
#include "core/file.h"
#include "strata/program.h"

st_status st_kernel_source(const char *file, char **out)
{
    const char *dir = getenv("STRATA_CL_DIR");
    if (dir && dir[0]) {
        char path[4096];
        if (snprintf(path, sizeof path, "%s/%s", dir, file) >= (int)sizeof path)
            return st_error(ST_ERR_INVALID, "STRATA_CL_DIR is too long");
        st_status s = st_read_text_file(path, "kernel file", out, NULL);
        if (s != ST_OK) {
            char why[1024];
            snprintf(why, sizeof why, "%s", st_last_error());
            st_error(s, "%s (STRATA_CL_DIR=%s should be the cl/ folder of a Strata checkout; "
                        "unset it to use the built-in kernels)", why, dir);
        }
        return s;
    }
    for (size_t i = 0; i < st_cl_embedded_count; i++) {
        if (strcmp(st_cl_embedded_files[i].name, file) == 0) {
            char *copy = strdup(st_cl_embedded_files[i].source);
            if (!copy)
                return st_error(ST_ERR_HOST_MEMORY, "out of host memory copying %s", file);
            *out = copy;
            return ST_OK;
        }
    }
    return st_error(ST_ERR_NOT_FOUND, "no kernel file '%s' is built into strata", file);
}
