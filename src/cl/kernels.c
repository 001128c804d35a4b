/*
 * kernels.c - finding the text of a kernel file: embedded in the binary, or
 * read from $STRATA_CL_DIR while developing.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cl/embedded.h"
#include "strata/program.h"

static st_status read_file(const char *path, char **out)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return st_error(ST_ERR_IO,
                        "cannot open kernel file %s: %s (STRATA_CL_DIR points at the cl/ "
                        "folder of the source tree; unset it to use the built-in kernels)",
                        path, strerror(errno));
    st_status s = ST_OK;
    char *buf = NULL;
    if (fseek(f, 0, SEEK_END) != 0) {
        s = st_error(ST_ERR_IO, "cannot read kernel file %s: %s", path, strerror(errno));
        goto done;
    }
    long len = ftell(f);
    if (len < 0 || fseek(f, 0, SEEK_SET) != 0) {
        s = st_error(ST_ERR_IO, "cannot read kernel file %s: %s", path, strerror(errno));
        goto done;
    }
    buf = malloc((size_t)len + 1);
    if (!buf) {
        s = st_error(ST_ERR_HOST_MEMORY, "out of host memory reading %s", path);
        goto done;
    }
    if (fread(buf, 1, (size_t)len, f) != (size_t)len) {
        s = st_error(ST_ERR_IO, "cannot read kernel file %s: short read", path);
        free(buf);
        goto done;
    }
    buf[len] = '\0';
    *out = buf;
done:
    fclose(f);
    return s;
}

st_status st_kernel_source(const char *file, char **out)
{
    const char *dir = getenv("STRATA_CL_DIR");
    if (dir && dir[0]) {
        char path[4096];
        if (snprintf(path, sizeof path, "%s/%s", dir, file) >= (int)sizeof path)
            return st_error(ST_ERR_INVALID, "STRATA_CL_DIR is too long");
        return read_file(path, out);
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
