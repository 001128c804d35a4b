/*
 * profiler.c - per-op device time from OpenCL events (see strata/profiler.h).
 *
 * Each profiled enqueue hands its event to st_profiler_record; the events
 * wait in a list until the device's work is done (a read, or the list
 * growing long), then their start and end times are added to the op's row.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "strata/cl.h"
#include "strata/profiler.h"

static bool enabled;
static volatile bool paused; /* set between a run's steps, by the thread that drives them */
static _Thread_local bool in_block;

typedef struct pending {
    cl_event ev, end; /* end: a marker after the command, for spans */
    short op;
} pending;

struct st_prof_state {
    pthread_mutex_t lock;
    pending *list;
    size_t n, cap;
    st_prof_summary sum;
};

void st_profiler_enable(bool on)
{
    enabled = on;
}

bool st_profiler_enabled(void)
{
    return enabled;
}

void st_profiler_pause(bool p)
{
    paused = p;
}

void st_profiler_scope_block(bool b)
{
    in_block = b;
}

static st_prof_state *state(st_device *dev)
{
    st_prof_state **slot = st_device_prof_slot(dev);
    return *slot;
}

cl_event *st_profiler_event(st_device *dev, cl_event *ev)
{
    return state(dev) ? ev : NULL;
}

st_prof_state *st_prof_state_new(void)
{
    st_prof_state *p = calloc(1, sizeof *p);
    if (p)
        pthread_mutex_init(&p->lock, NULL);
    return p;
}

/* Adds the finished events' times; the caller holds the lock. A span (two
 * markers around several kernels, as CLBlast enqueues) counts from the end
 * of the first marker to the end of the second. */
static void resolve(st_prof_state *p)
{
    for (size_t i = 0; i < p->n; i++) {
        cl_event last = p->list[i].end ? p->list[i].end : p->list[i].ev;
        clWaitForEvents(1, &last);
        cl_ulong a = 0, b = 0;
        cl_profiling_info from = p->list[i].end ? CL_PROFILING_COMMAND_END
                                                : CL_PROFILING_COMMAND_START;
        if (clGetEventProfilingInfo(p->list[i].ev, from, sizeof a, &a, NULL) == CL_SUCCESS &&
            clGetEventProfilingInfo(last, CL_PROFILING_COMMAND_END, sizeof b, &b, NULL) ==
                CL_SUCCESS &&
            b >= a) {
            double ms = (double)(b - a) * 1e-6;
            p->sum.ops[p->list[i].op].ms += ms;
            p->sum.ms += ms;
        }
        clReleaseEvent(p->list[i].ev);
        if (p->list[i].end)
            clReleaseEvent(p->list[i].end);
    }
    p->n = 0;
}

void st_prof_state_free(st_prof_state *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->lock);
    resolve(p);
    pthread_mutex_unlock(&p->lock);
    pthread_mutex_destroy(&p->lock);
    free(p->list);
    free(p);
}

void st_profiler_record(st_device *dev, const char *op, cl_event ev, double bytes, double flops)
{
    st_profiler_record_span(dev, op, ev, NULL, bytes, flops);
}

void st_profiler_record_span(st_device *dev, const char *op, cl_event ev, cl_event end,
                             double bytes, double flops)
{
    st_prof_state *p = state(dev);
    if (!p || !ev || paused) {
        if (ev)
            clReleaseEvent(ev);
        if (end)
            clReleaseEvent(end);
        return;
    }
    pthread_mutex_lock(&p->lock);
    size_t i = 0;
    while (i < p->sum.n && strcmp(p->sum.ops[i].name, op) != 0)
        i++;
    if (i == p->sum.n) {
        if (p->sum.n == ST_PROF_MAX_OPS) {
            i = ST_PROF_MAX_OPS - 1; /* the last row gathers the rest */
            snprintf(p->sum.ops[i].name, sizeof p->sum.ops[i].name, "(other ops)");
        } else {
            snprintf(p->sum.ops[i].name, sizeof p->sum.ops[i].name, "%s", op);
            p->sum.n++;
        }
    }
    p->sum.ops[i].launches++;
    p->sum.ops[i].bytes += bytes;
    p->sum.ops[i].flops += flops;
    p->sum.launches++;
    p->sum.block_launches += in_block;
    if (p->n == p->cap) {
        size_t cap = p->cap ? 2 * p->cap : 1024;
        pending *l = realloc(p->list, cap * sizeof *l);
        if (!l) {
            clReleaseEvent(ev);
            if (end)
                clReleaseEvent(end);
            pthread_mutex_unlock(&p->lock);
            return;
        }
        p->list = l;
        p->cap = cap;
    }
    p->list[p->n++] = (pending){ev, end, (short)i};
    if (p->n >= 8192) /* bounded: wait for them now */
        resolve(p);
    pthread_mutex_unlock(&p->lock);
}

static int by_time(const void *a, const void *b)
{
    const st_prof_op *x = a, *y = b;
    return (x->ms < y->ms) - (x->ms > y->ms);
}

st_status st_profiler_read(st_device *dev, st_prof_summary *out)
{
    memset(out, 0, sizeof *out);
    st_prof_state *p = state(dev);
    if (!p)
        return st_error(ST_ERR_INVALID, "%s was opened without profiling",
                        st_device_label(dev));
    st_status s = st_device_finish(dev);
    if (s != ST_OK)
        return s;
    pthread_mutex_lock(&p->lock);
    resolve(p);
    *out = p->sum;
    pthread_mutex_unlock(&p->lock);
    qsort(out->ops, out->n, sizeof out->ops[0], by_time);
    return ST_OK;
}

void st_profiler_reset(st_device *dev)
{
    st_prof_state *p = state(dev);
    if (!p)
        return;
    st_device_finish(dev);
    pthread_mutex_lock(&p->lock);
    resolve(p);
    memset(&p->sum, 0, sizeof p->sum);
    pthread_mutex_unlock(&p->lock);
}
