/*
 * progress.h - one line on stderr that says what a long wait is doing:
 * building kernels, measuring devices, evaluating, reading a prompt.
 *
 * Shown only when stderr is a terminal, so that logs, pipes and JSON stay
 * clean, and only once the work has lasted half a second (short waits
 * print nothing). The line is redrawn in place at most ten times a second
 * and cleared when the work ends; st_progress_end_note() leaves a last line
 * instead. STRATA_PROGRESS=0 turns it off, =1 shows it even when stderr is
 * not a terminal; st_progress_set_enabled() is the same for a command (MPI
 * ranks other than 0, --quiet). Warnings printed through st_log() while a
 * line is shown clear it first.
 */
#ifndef STRATA_PROGRESS_H
#define STRATA_PROGRESS_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct st_progress {
    char what[160];
    uint64_t done, total; /* total 0: a counter without a bar */
    double t0, drawn_at;
    bool shown;
} st_progress;

/* -1: decide from the environment and the terminal (the default); 0 off; 1 on. */
void st_progress_set_enabled(int on);
bool st_progress_enabled(void);

void st_progress_begin(st_progress *p, uint64_t total, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void st_progress_update(st_progress *p, uint64_t done);
/* Clears the line. */
void st_progress_end(st_progress *p);
/* Replaces the line by a lasting one ("built 10 kernel files in 41 s"),
 * printed only if the progress line was shown. */
void st_progress_end_note(st_progress *p, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Clears a shown line before other output to stderr (st_log does this). */
void st_progress_clear_line(void);

#ifdef __cplusplus
}
#endif

#endif
