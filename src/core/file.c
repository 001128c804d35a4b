/* file.c - reading a whole file into memory, with messages that name it. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/file.h"

st_status st_read_text_file(const char *path, const char *what, char **out, size_t *len_out)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return st_error(errno == ENOENT ? ST_ERR_NOT_FOUND : ST_ERR_INVALID, "cannot open %s %s: %s", what, path, strerror(errno));
    st_status s = ST_OK;
    char *buf = NULL;
    long len = -1;
    if (fseek(f, 0, SEEK_END) == 0)
        len = ftell(f);
    if (len < 0 || fseek(f, 0, SEEK_SET) != 0) {
        s = st_error(ST_ERR_IO, "cannot read %s %s: %s", what, path, strerror(errno));
        goto done;
    }
    buf = malloc((size_t)len + 1);
    if (!buf) {
        s = st_error(ST_ERR_HOST_MEMORY, "out of host memory reading %s %s", what, path);
        goto done;
    }
    if (fread(buf, 1, (size_t)len, f) != (size_t)len) {
        s = st_error(ST_ERR_IO, "cannot read %s %s: short read", what, path);
        free(buf);
        goto done;
    }
    buf[len] = '\0';
    *out = buf;
    if (len_out)
        *len_out = (size_t)len;
done:
    fclose(f);
    return s;
}
