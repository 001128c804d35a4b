/*
 * link_host.c - a link between two stages of one process through host
 * memory: a ring of `depth` buffers guarded by one mutex and two condition
 * variables (a slot freed, a slot filled).
 */
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <time.h>

#include "core/clock.h"
#include "pipe/link.h"
#include "strata/cl.h"

typedef struct host_link {
    st_link base;
    pthread_mutex_t mu;
    pthread_cond_t filled, freed;
    float **buf;
    cl_mem *pinned;       /* when the buffers are pinned: their OpenCL objects */
    st_device *pin_dev;
    size_t *len;
    int depth, head, count; /* head: next to receive; count: filled slots */
    size_t floats;
    bool aborted;
} host_link;

static st_status stopped(void)
{
    return st_error(ST_ERR_INVALID, "the pipeline stopped (another stage failed)");
}

static st_status host_send(st_link *l, const st_tensor *t, size_t count)
{
    host_link *h = (host_link *)l;
    if (count > h->floats)
        return st_error(ST_ERR_INVALID, "link: message of %zu floats, the link carries %zu", count,
                        h->floats);
    double t0 = st_now_s();
    pthread_mutex_lock(&h->mu);
    while (h->count == h->depth && !h->aborted)
        pthread_cond_wait(&h->freed, &h->mu);
    int slot = (h->head + h->count) % h->depth;
    bool aborted = h->aborted;
    pthread_mutex_unlock(&h->mu);
    l->wait_s += st_now_s() - t0;
    if (aborted)
        return stopped();
    /* Only this sender writes a free slot, so the copy runs outside the lock. */
    st_status s = st_tensor_read(t, 0, count, h->buf[slot]);
    if (s != ST_OK)
        return s;
    pthread_mutex_lock(&h->mu);
    h->len[slot] = count;
    h->count++;
    pthread_cond_signal(&h->filled);
    pthread_mutex_unlock(&h->mu);
    return ST_OK;
}

static st_status host_recv(st_link *l, st_tensor *t, size_t count)
{
    host_link *h = (host_link *)l;
    double t0 = st_now_s();
    pthread_mutex_lock(&h->mu);
    while (h->count == 0 && !h->aborted)
        pthread_cond_wait(&h->filled, &h->mu);
    int slot = h->head;
    bool aborted = h->aborted;
    pthread_mutex_unlock(&h->mu);
    l->wait_s += st_now_s() - t0;
    if (aborted)
        return stopped();
    if (h->len[slot] != count)
        return st_error(ST_ERR_INVALID, "link: expected %zu floats, got %zu", count,
                        h->len[slot]);
    st_status s = st_tensor_write(t, 0, count, h->buf[slot]);
    pthread_mutex_lock(&h->mu);
    h->head = (h->head + 1) % h->depth;
    h->count--;
    pthread_cond_signal(&h->freed);
    pthread_mutex_unlock(&h->mu);
    return s;
}

static void host_abort(st_link *l)
{
    host_link *h = (host_link *)l;
    pthread_mutex_lock(&h->mu);
    h->aborted = true;
    pthread_cond_broadcast(&h->filled);
    pthread_cond_broadcast(&h->freed);
    pthread_mutex_unlock(&h->mu);
}

static void host_destroy(st_link *l)
{
    host_link *h = (host_link *)l;
    if (!h)
        return;
    for (int i = 0; h->buf && i < h->depth; i++) {
        if (h->pinned && h->pinned[i]) {
            cl_command_queue q = st_device_cl_queue(h->pin_dev);
            if (h->buf[i])
                clEnqueueUnmapMemObject(q, h->pinned[i], h->buf[i], 0, NULL, NULL);
            clFinish(q);
            clReleaseMemObject(h->pinned[i]);
        } else {
            free(h->buf[i]);
        }
    }
    free(h->pinned);
    free(h->buf);
    free(h->len);
    pthread_mutex_destroy(&h->mu);
    pthread_cond_destroy(&h->filled);
    pthread_cond_destroy(&h->freed);
    free(h);
}

/* A host buffer the driver can copy to and from directly (page-locked on
 * GPUs): an ALLOC_HOST_PTR buffer of the sending device, mapped for good. */
static bool pin(host_link *h, int i, size_t bytes)
{
    cl_int err;
    cl_mem m = clCreateBuffer(st_device_cl_context(h->pin_dev),
                              CL_MEM_ALLOC_HOST_PTR | CL_MEM_READ_WRITE, bytes, NULL, &err);
    if (err != CL_SUCCESS)
        return false;
    void *p = clEnqueueMapBuffer(st_device_cl_queue(h->pin_dev), m, CL_TRUE,
                                 CL_MAP_READ | CL_MAP_WRITE, 0, bytes, 0, NULL, NULL, &err);
    if (err != CL_SUCCESS) {
        clReleaseMemObject(m);
        return false;
    }
    h->pinned[i] = m;
    h->buf[i] = p;
    return true;
}

st_status st_link_host_create(st_device *pin_on, size_t floats, int depth, st_link **out)
{
    host_link *h = calloc(1, sizeof *h);
    if (!h)
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory");
    h->base = (st_link){host_send, host_recv, host_abort, host_destroy, 0.0};
    h->depth = depth < 2 ? 2 : depth;
    h->floats = floats;
    pthread_mutex_init(&h->mu, NULL);
    pthread_cond_init(&h->filled, NULL);
    pthread_cond_init(&h->freed, NULL);
    h->buf = calloc((size_t)h->depth, sizeof *h->buf);
    h->len = calloc((size_t)h->depth, sizeof *h->len);
    h->pin_dev = pin_on;
    h->pinned = pin_on ? calloc((size_t)h->depth, sizeof *h->pinned) : NULL;
    bool ok = h->buf && h->len && (!pin_on || h->pinned);
    size_t bytes = (floats ? floats : 1) * sizeof(float);
    for (int i = 0; ok && i < h->depth; i++)
        if (!h->pinned || !pin(h, i, bytes)) /* unpinned memory works, only slower */
            ok = (h->buf[i] = malloc(bytes)) != NULL;
    if (!ok) {
        host_destroy(&h->base);
        return st_error(ST_ERR_HOST_MEMORY, "out of host memory for link buffers");
    }
    *out = &h->base;
    return ST_OK;
}
