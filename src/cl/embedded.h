/* embedded.h - the kernel files of cl/ compiled into the binary (see tools/embed_cl.py). */
#ifndef STRATA_CL_EMBEDDED_H
#define STRATA_CL_EMBEDDED_H

#include <stddef.h>

typedef struct st_cl_embedded {
    const char *name;   /* "fill.cl" */
    const char *source; /* the file's text */
} st_cl_embedded;

extern const st_cl_embedded st_cl_embedded_files[];
extern const size_t st_cl_embedded_count;

#endif
