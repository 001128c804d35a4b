/* workers.c - the threads of core/workers.h: each waits for the round
 * number to move, runs its call, and counts itself done. */
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

#include "core/workers.h"

typedef struct worker {
    st_workers *w;
    size_t i;
    pthread_t thread;
} worker;

struct st_workers {
    pthread_mutex_t mu;
    pthread_cond_t go, done;
    long round;   /* moved by each st_workers_run */
    size_t n_run; /* workers with a call this round */
    size_t pending;
    bool quit;
    void (*fn)(void *ctx, size_t i);
    void *ctx;
    size_t n;
    worker *ws;
};

static void *worker_main(void *arg)
{
    worker *me = arg;
    st_workers *w = me->w;
    long seen = 0;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (!w->quit && w->round == seen)
            pthread_cond_wait(&w->go, &w->mu);
        if (w->quit)
            break;
        seen = w->round;
        if (me->i >= w->n_run)
            continue;
        pthread_mutex_unlock(&w->mu);
        w->fn(w->ctx, me->i);
        pthread_mutex_lock(&w->mu);
        if (--w->pending == 0)
            pthread_cond_signal(&w->done);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

st_status st_workers_create(size_t n, st_workers **out)
{
    st_workers *w = calloc(1, sizeof *w);
    worker *ws = calloc(n ? n : 1, sizeof *ws);
    if (!w || !ws) {
        free(w);
        free(ws);
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    }
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->go, NULL);
    pthread_cond_init(&w->done, NULL);
    w->ws = ws;
    for (size_t i = 0; i < n; i++) {
        ws[i] = (worker){.w = w, .i = i};
        if (pthread_create(&ws[i].thread, NULL, worker_main, &ws[i]) != 0) {
            st_workers_destroy(w);
            return st_error(ST_ERR_HOST_MEMORY, "cannot start worker thread %zu of %zu", i, n);
        }
        w->n = i + 1;
    }
    *out = w;
    return ST_OK;
}

void st_workers_destroy(st_workers *w)
{
    if (!w)
        return;
    pthread_mutex_lock(&w->mu);
    w->quit = true;
    pthread_cond_broadcast(&w->go);
    pthread_mutex_unlock(&w->mu);
    for (size_t i = 0; i < w->n; i++)
        pthread_join(w->ws[i].thread, NULL);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->go);
    pthread_cond_destroy(&w->done);
    free(w->ws);
    free(w);
}

void st_workers_run(st_workers *w, size_t n, void (*fn)(void *ctx, size_t i), void *ctx)
{
    if (n == 0)
        return;
    pthread_mutex_lock(&w->mu);
    w->fn = fn;
    w->ctx = ctx;
    w->n_run = n < w->n ? n : w->n;
    w->pending = w->n_run;
    w->round++;
    pthread_cond_broadcast(&w->go);
    while (w->pending > 0)
        pthread_cond_wait(&w->done, &w->mu);
    pthread_mutex_unlock(&w->mu);
}
