/* file.h - whole-file reading for small text files (configs, kernel sources). */
#ifndef STRATA_CORE_FILE_H
#define STRATA_CORE_FILE_H

#include <stddef.h>

#include "strata/status.h"

/* Reads the file into a NUL-terminated buffer the caller frees; `what` names
 * the kind of file in messages ("kernel file", "model config"). */
st_status st_read_text_file(const char *path, const char *what, char **out, size_t *len);

#endif
