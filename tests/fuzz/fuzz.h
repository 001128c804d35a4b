/*
 * fuzz.h - the one entry point every fuzz harness defines (libFuzzer's), and
 * what a harness may use to reach readers that take a path: a private
 * temporary folder, made once per process.
 *
 * Built two ways (tests/fuzz/meson.build): with clang and -fsanitize=fuzzer
 * for tools/fuzz.sh, and as plain replay programs (replay.c) that run every
 * file of the seed corpus and every crash input kept in tests/fuzz/corpus/
 * as a regression test in the ordinary test suite.
 */
#ifndef STRATA_FUZZ_H
#define STRATA_FUZZ_H

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The input as a NUL-terminated string the caller frees (NULL when out of memory). */
char *fuzz_text(const uint8_t *data, size_t size);

/* A folder of this process's own under TMPDIR (created on first use). */
const char *fuzz_dir(void);
/* Writes data to fuzz_dir()/name, replacing it; the full path. */
const char *fuzz_file(const char *name, const uint8_t *data, size_t size);

#endif
