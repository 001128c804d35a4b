/* file.h - whole-file reading for small text files (configs, kernel sources). */
#ifndef STRATA_CORE_FILE_H
#define STRATA_CORE_FILE_H

#include <stddef.h>

#include "strata/status.h"

#include <stdio.h>

/* Opens an input file for reading: a regular file only, opened without
 * blocking (a FIFO given as a config, tokenizer or shard blocked forever; a
 * folder was read as a file of 2^63 bytes). `what` names the kind of file in
 * messages. ST_ERR_NOT_FOUND when it does not exist, ST_ERR_INVALID for a
 * folder, FIFO, device or unreadable file. */
st_status st_open_regular(const char *path, const char *what, FILE **out);

/* Reads the file into a NUL-terminated buffer the caller frees; `what` names
 * the kind of file in messages ("kernel file", "model config"). */
st_status st_read_text_file(const char *path, const char *what, char **out, size_t *len);

/* Creates a new temporary file beside `path` for writing, named
 * "<path>.tmp.<digits>" with digits nobody can predict, opened with
 * O_CREAT|O_EXCL|O_NOFOLLOW: it never follows a link or reuses a file
 * someone placed there (a symbolic link at a predictable name made a save
 * overwrite its target). Returns the descriptor and its name in tmp, or -1
 * with errno set. */
int st_create_temp(const char *path, char *tmp, size_t tmp_size);

/* Writes a JSON value to path through such a temporary file and a rename. */
struct json_t;
st_status st_write_json_atomic(const char *path, struct json_t *j);

#endif
