/*
 * mpi_run.h - Strata under mpirun: ranks, the MPI link, the sums a step
 * needs across ranks, and what rank 0 shares with the others (the plan).
 *
 * Compiled only when MPI is found (STRATA_HAVE_MPI); the functions here are
 * the only place that includes <mpi.h>.
 */
#ifndef STRATA_MPI_RUN_H
#define STRATA_MPI_RUN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "strata/pipe.h"
#include "strata/plan.h"

/* Launched by mpirun (or another MPI launcher) with more than one rank? */
int st_mpi_launched_size(void);

/* MPI_Init_thread (MPI_THREAD_MULTIPLE: stage threads send and receive). */
st_status st_mpi_start(int *argc, char ***argv);
void st_mpi_stop(void);
bool st_mpi_active(void);
int st_mpi_rank(void);
int st_mpi_size(void);
int st_mpi_local_rank(void); /* rank among the ranks of this node */

/* Every rank passes the same command line: else an error naming a rank. */
st_status st_mpi_check_same_args(int argc, char **argv);

/* Gathers each rank's device profiles to rank 0: out gets them in rank
 * order, counts[r] per rank (rank 0 only). */
st_status st_mpi_gather_profiles(const st_device_profile *mine, int n_mine,
                                 st_device_profile *out, int *counts, int *total);
/* Rank 0's plan (or its error) to every rank. */
st_status st_mpi_bcast_plan(st_plan *plan, st_status status, char *message, size_t size);

/* The comm of strata/pipe.h for this rank's part of the plan (device_rank[d]:
 * the rank holding the plan's device d). Without replicas the pipeline is
 * every rank; with replicas each replica's ranks get a communicator of their
 * own, and each stage's replicas another (for the gradient sum): handles in
 * comm->ctx, freed by st_mpi_comm_free. */
st_status st_mpi_comm_make(const st_plan *plan, const int *device_rank, st_pipe_comm *comm);
void st_mpi_comm_free(st_pipe_comm *comm);

/* From now on the job is its first n ranks (collective over all of them):
 * rank, size and every call below count those only; *inside says whether
 * this rank is one. st_mpi_scope_end (every rank, after the scope's work)
 * waits for all and gives the job back its ranks. */
st_status st_mpi_scope(int n, bool *inside);
st_status st_mpi_scope_end(void);

st_status st_mpi_barrier(void);
/* Sums doubles over ranks in rank order (same bits everywhere). */
st_status st_mpi_allsum(double *v, int n);
/* Gathers one line of text per rank to rank 0 (out: size * line_size bytes). */
st_status st_mpi_gather_lines(const char *line, char *out, size_t line_size);
/* Ends every rank of the job with this exit code. */
void st_mpi_abort(int code);

#endif
