/*
 * link.h - how a tensor gets from one stage to the next: the interface the
 * schedule sees. A link carries messages of up to `floats` floats in one
 * direction, in order. send() returns once the data has left the sender's
 * device (its buffer may be reused); recv() once it is in the receiver's.
 * abort() wakes every waiter with ST_ERR_INVALID ("the pipeline stopped").
 *
 * link_host: device -> pinned host buffer -> device in one process, with a ring of
 * host buffers so that the sender runs ahead of the receiver by up to `depth`
 * messages (its copy overlaps the receiver's compute). The MPI link comes
 * behind the same interface.
 */
#ifndef STRATA_PIPE_LINK_H
#define STRATA_PIPE_LINK_H

#include "strata/tensor.h"

#include "strata/pipe.h"

struct st_link {
    st_status (*send)(st_link *l, const st_tensor *t, size_t count);
    st_status (*recv)(st_link *l, st_tensor *t, size_t count);
    void (*abort)(st_link *l);
    void (*destroy)(st_link *l);
    double wait_s; /* time spent blocked in send and recv */
};

/* pin_on: the sending device, whose context allocates page-locked host
 * buffers (NULL: plain host memory). */
st_status st_link_host_create(st_device *pin_on, size_t floats, int depth, st_link **out);

#endif
