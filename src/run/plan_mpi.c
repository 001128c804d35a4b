/*
 * plan_mpi.c - planning under mpirun (see strata/run.h): each rank
 * measures its devices, rank 0 gathers the profiles, plans over every
 * rank's devices in rank order and sends the plan to all; each rank then
 * holds the stages on its own devices. Compiled only with MPI.
 */
#include <stdio.h>
#include <string.h>

#include "mpi/mpi_run.h"
#include "run/measure.h"

st_status st_run_plan_mpi(st_device *const *devs, const size_t *index, size_t n,
                          const st_model_desc *desc, const st_run_shape *shape,
                          const st_run_plan_options *o, st_plan *plan, st_device_profile *prof,
                          st_device **all_devs, st_pipe_comm *comm)
{
    int rank = st_mpi_rank(), size = st_mpi_size();
    st_device_profile mine[ST_PLAN_MAX_STAGES];
    /* Devices sharing hardware within this rank are measured together; the
     * rank in the hardware's name keeps other ranks' devices out of the
     * group (they were not measured with these). */
    st_status s = st_run_measure(devs, n, desc, shape, true, false, mine);
    for (size_t i = 0; s == ST_OK && i < n; i++) {
        char label[256], hw[64];
        snprintf(label, sizeof label, "rank %d: %zu %.200s", rank, index[i], mine[i].name);
        snprintf(mine[i].name, sizeof mine[i].name, "%s", label);
        if (mine[i].hardware[0]) {
            snprintf(hw, sizeof hw, "rank %d %.40s", rank, mine[i].hardware);
            snprintf(mine[i].hardware, sizeof mine[i].hardware, "%s", hw);
        }
    }
    /* A rank that failed to measure still takes part in the collectives,
     * with no devices, so that rank 0 can say what went wrong. */
    int n_mine = s == ST_OK ? (int)n : 0;
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
            st_parallel_spec par;
            ps = st_split_parse(o->split ? o->split : "auto", &split);
            if (ps == ST_OK)
                ps = st_parallel_parse(o->parallel, &par);
            /* Replicas need one device per rank (a rank holds one stage of one). */
            if (ps == ST_OK && total != size && par.kind != ST_PARALLEL_PIPELINE) {
                if (par.kind != ST_PARALLEL_AUTO)
                    ps = st_error(ST_ERR_INVALID,
                                  "--parallel %s under mpirun needs one device per rank (%d "
                                  "devices on %d ranks)",
                                  o->parallel, total, size);
                par.kind = ST_PARALLEL_PIPELINE;
            }
            st_plan_input in = {.desc = desc, .shape = *shape, .n_devices = (size_t)total,
                                .devices = prof, .split = split, .keep_all_devices = true,
                                .parallel = par};
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
    int offset[ST_PLAN_MAX_STAGES + 1] = {0}, device_rank[ST_PLAN_MAX_STAGES] = {0};
    for (int r = 0; r < size; r++)
        offset[r + 1] = offset[r] + (int)cnt[r];
    /* (gather_profiles gives the total on rank 0 only: the counts give it everywhere) */
    for (int d = 0; d < offset[size]; d++) {
        all_devs[d] = d >= offset[rank] && d < offset[rank + 1] ? devs[d - offset[rank]] : NULL;
        int owner = 0;
        while (owner + 1 < size && d >= offset[owner + 1])
            owner++;
        device_rank[d] = owner;
    }
    /* The pipeline's communicator (and the replicas' of each stage). */
    return st_mpi_comm_make(plan, device_rank, comm);
}
