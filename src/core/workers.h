/*
 * workers.h - a fixed set of threads that run one function per round: the
 * pipeline's stage threads (and a group's replica threads), made once and
 * kept for the pipeline's life rather than started for every step, so that
 * a decoding step costs no thread creation.
 *
 * Not here: queues, work stealing; a round is n calls, one per worker.
 */
#ifndef STRATA_CORE_WORKERS_H
#define STRATA_CORE_WORKERS_H

#include <stddef.h>

#include "strata/status.h"

typedef struct st_workers st_workers;

st_status st_workers_create(size_t n, st_workers **out);
/* Ends the threads (after the round in progress, if any). NULL: nothing. */
void st_workers_destroy(st_workers *w);
/* fn(ctx, i) on worker i for every i < n (n at most the workers made);
 * returns when every call has. One round at a time. */
void st_workers_run(st_workers *w, size_t n, void (*fn)(void *ctx, size_t i), void *ctx);

#endif
