/*
 * load.h - how much of the host's CPU other processes used over an interval:
 * a device measured while the machine was busy with other work (a build, a
 * second job) gives times that do not hold once it is idle, and the planner
 * must not keep them.
 */
#ifndef STRATA_CORE_LOAD_H
#define STRATA_CORE_LOAD_H

#include <stdbool.h>

typedef struct st_host_load {
    double t0, self0, all0; /* wall clock; this process's CPU seconds; every process's */
    bool known;             /* /proc/stat was readable */
} st_host_load;

void st_host_load_begin(st_host_load *h);

/* Cores' worth of CPU time that processes other than this one used since
 * st_host_load_begin (each of this process's threads, PoCL's included, is
 * its own); -1 when unknown. */
double st_host_load_others(const st_host_load *h);

/* Whether that was enough to slow a measurement on the host's cores: more
 * than a fifth of the online cores, and at least 0.4 of one. */
bool st_host_load_busy(const st_host_load *h, double *others);

#endif
