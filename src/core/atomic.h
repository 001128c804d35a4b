/*
 * atomic.h - files that appear whole or not at all, and the crash points the
 * tests use to prove it.
 *
 * st_afile writes to "<path>.tmp.<pid>" (a name no reader takes for the
 * real file), counts the bytes and checksums them as they go, and on commit
 * fsyncs the data, renames it over <path> and fsyncs the folder, so that
 * after a crash or a full disk <path> holds the old content or the new, never
 * a part. Abort (or any failure) removes the temporary file.
 *
 * Crash points: every step of a save that could be interrupted calls
 * st_crash_point("what", path). In a test, STRATA_TEST_CRASH_AT=N (or R:N, only on
 * MPI rank R) kills the process with SIGKILL at the N-th point it passes;
 * STRATA_TEST_CRASH_LIST=FILE appends the name of every point passed to FILE,
 * so a test can count them and then stop at each in turn.
 * STRATA_TEST_FULL_DISK_AT=N (or R:N) makes the N-th st_afile_write fail with
 * ENOSPC, as a full disk does. Without these variables a crash point costs a
 * lock and a branch.
 */
#ifndef STRATA_CORE_ATOMIC_H
#define STRATA_CORE_ATOMIC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "strata/status.h"

typedef struct st_afile st_afile;

/* Opens the temporary file for path (the folder must exist). */
st_status st_afile_create(const char *path, st_afile **out);
st_status st_afile_write(st_afile *f, const void *data, size_t len);
/* fsync, rename over the path, fsync the folder; frees f whatever happens.
 * bytes and sum (may be NULL) get the size and st_sum64 checksum written. */
st_status st_afile_commit(st_afile *f, uint64_t *bytes, uint64_t *sum);
/* Drops the temporary file; NULL is a no-op. */
void st_afile_abort(st_afile *f);

/* A whole buffer to path through st_afile. */
st_status st_write_file_atomic(const char *path, const void *data, size_t len, uint64_t *sum);

/* fsync of a folder, so that renames and removals in it survive a crash. */
st_status st_fsync_dir(const char *dir);

/* Is name a temporary file of st_afile's naming ("x.tmp.123")? */
bool st_afile_is_temp(const char *name);

/* The test hook described above; path (may be NULL) names the file. */
void st_crash_point(const char *what, const char *path);

#endif
