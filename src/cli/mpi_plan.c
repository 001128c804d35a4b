/*
 * mpi_plan.c - `strata train` under mpirun: each rank picks its device(s),
 * measures them, rank 0 gathers the profiles, plans over every rank's
 * devices in rank order and sends the plan to all; each rank then holds the
 * stages on its own devices. Compiled only with MPI.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "mpi/mpi_run.h"
#include "strata/profile.h"

static st_status barrier(void)
{
    return st_mpi_barrier();
}

st_status cli_mpi_plan(cli_devices *devs, bool devices_given, const st_model_desc *desc,
                       const cli_plan_opts *o, st_plan *plan, st_device_profile *prof,
                       st_train_layout *layout, st_pipe_comm *comm)
{
    int rank = st_mpi_rank(), size = st_mpi_size();
    /* Without --devices, one device per rank: the local rank's among those found. */
    if (!devices_given && devs->n > 1) {
        size_t pick = (size_t)st_mpi_local_rank() % devs->n;
        devs->dev[0] = devs->dev[pick];
        devs->index[0] = devs->index[pick];
        devs->n = 1;
    }
    st_status s = o->mem_limit ? cli_apply_mem_limit(o->mem_limit, devs) : ST_OK;
    st_device_profile mine[ST_PLAN_MAX_STAGES];
    size_t pm, pn, pk;
    cli_profile_shape(desc, o, &pm, &pn, &pk);
    for (size_t i = 0; s == ST_OK && i < devs->n; i++) {
        bool cached;
        s = st_device_profile_get(devs->dev[i], pm, pn, pk, 0, &cached, &mine[i]);
        st_device_reset_peak(devs->dev[i]);
        char label[256];
        snprintf(label, sizeof label, "rank %d: %zu %.200s", rank, devs->index[i], mine[i].name);
        snprintf(mine[i].name, sizeof mine[i].name, "%s", label);
    }
    /* Devices sharing hardware within this rank are measured together; the
     * rank in the hardware's name keeps other ranks' devices out of the
     * group (they were not measured with these). */
    if (s == ST_OK)
        s = cli_profile_attention(devs->dev, devs->n, desc, o, mine);
    if (s == ST_OK)
        s = st_device_profile_shared(devs->dev, devs->n, pm, pn, pk, mine);
    for (size_t i = 0; s == ST_OK && i < devs->n; i++) {
        char hw[64];
        st_device_reset_peak(devs->dev[i]);
        if (mine[i].hardware[0]) {
            snprintf(hw, sizeof hw, "rank %d %.40s", rank, mine[i].hardware);
            snprintf(mine[i].hardware, sizeof mine[i].hardware, "%s", hw);
        }
    }
    /* A rank that failed to measure still takes part in the collectives,
     * with no devices, so that rank 0 can say what went wrong. */
    int n_mine = s == ST_OK ? (int)devs->n : 0;
    int counts[ST_PLAN_MAX_STAGES] = {0}, total = 0;
    st_status g = st_mpi_gather_profiles(mine, n_mine, prof, counts, &total);
    if (g != ST_OK)
        return g;
    /* Every rank needs the counts to know which global device is whose. */
    double cnt[ST_PLAN_MAX_STAGES] = {0};
    cnt[rank] = n_mine;
    if ((g = st_mpi_allsum(cnt, size)) != ST_OK)
        return g;
    char message[4096] = "";
    st_status ps = s;
    if (rank == 0) {
        for (int r = 0; ps == ST_OK && r < size; r++)
            if (cnt[r] < 1)
                ps = st_error(ST_ERR_NO_DEVICE, "rank %d has no usable device", r);
        if (ps == ST_OK) {
            st_split_spec split;
            ps = st_split_parse(o->split ? o->split : "auto", &split);
            st_plan_input in = {.desc = desc, .micro_batch = o->micro_batch, .seq = o->seq,
                                .micro_batches = o->micro_batches, .batch = o->batch,
                                .schedule = o->schedule,
                                .training = o->training, .n_devices = (size_t)total,
                                .devices = prof, .split = split, .keep_all_devices = true};
            if (ps == ST_OK)
                ps = st_plan_make(&in, plan);
        }
        if (ps != ST_OK)
            snprintf(message, sizeof message, "%s", st_last_error());
    }
    if ((g = st_mpi_bcast_plan(plan, rank == 0 ? ps : ST_OK, message, sizeof message)) != ST_OK)
        return s != ST_OK ? s : g; /* this rank's own failure says more */
    if (s != ST_OK)
        return s;
    memset(layout, 0, sizeof *layout);
    memset(comm, 0, sizeof *comm);
    st_mpi_comm_init(comm);
    int offset[ST_PLAN_MAX_STAGES + 1] = {0};
    for (int r = 0; r < size; r++)
        offset[r + 1] = offset[r] + (int)cnt[r];
    layout->n_stages = plan->n_stages;
    for (size_t k = 0; k < plan->n_stages; k++) {
        int d = (int)plan->stage[k].device, owner = 0;
        while (owner + 1 < size && d >= offset[owner + 1])
            owner++;
        comm->stage_rank[k] = owner;
        layout->first[k] = plan->stage[k].first;
        layout->end[k] = plan->stage[k].end;
        if (owner == rank)
            layout->dev[k] = devs->dev[d - offset[rank]];
    }
    layout->comm = comm;
    layout->ranks = size;
    layout->barrier = barrier;
    layout->gather = st_mpi_gather_lines;
    return ST_OK;
}
