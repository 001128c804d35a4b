/*
 * load.c - other processes' CPU use over an interval (see core/load.h):
 * the busy time of every CPU in /proc/stat less this process's own
 * (getrusage), over the wall time.
 */
#include <stdio.h>
#include <sys/resource.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/load.h"

/* CPU seconds every process has used: user, nice, system, irq, softirq and
 * steal of /proc/stat's first line (guest time is inside user). */
static bool all_cpu_s(double *secs)
{
    FILE *f = fopen("/proc/stat", "r");
    if (!f)
        return false;
    unsigned long long v[8] = {0};
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
                   &v[4], &v[5], &v[6], &v[7]);
    fclose(f);
    long hz = sysconf(_SC_CLK_TCK);
    if (n < 8 || hz <= 0)
        return false;
    *secs = (double)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / (double)hz;
    return true;
}

static double self_cpu_s(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0;
    return (double)ru.ru_utime.tv_sec + 1e-6 * (double)ru.ru_utime.tv_usec +
           (double)ru.ru_stime.tv_sec + 1e-6 * (double)ru.ru_stime.tv_usec;
}

void st_host_load_begin(st_host_load *h)
{
    h->known = all_cpu_s(&h->all0);
    h->self0 = self_cpu_s();
    h->t0 = st_now_s();
}

double st_host_load_others(const st_host_load *h)
{
    double all;
    if (!h->known || !all_cpu_s(&all))
        return -1;
    double wall = st_now_s() - h->t0;
    if (wall < 0.05) /* a few clock ticks: too short to tell */
        return -1;
    double others = (all - h->all0) - (self_cpu_s() - h->self0);
    return others > 0 ? others / wall : 0;
}

bool st_host_load_busy(const st_host_load *h, double *others)
{
    double o = st_host_load_others(h);
    if (others)
        *others = o;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    double limit = 0.2 * (double)(cores > 0 ? cores : 1);
    return o > (limit > 0.4 ? limit : 0.4);
}
