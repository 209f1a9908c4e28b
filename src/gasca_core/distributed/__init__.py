"""Data-parallel training: N processes train one model (docs/DISTRIBUTED.md).

    mpiexec -n N python -m gasca_core.train ...

Every process (a *rank*) holds G and D whole and takes its slice of every global batch
(shard); after each backward pass the ranks sum their gradients, each weighted by its share
of the global batch, with one all-reduce of a flat buffer (GradientBucket), so that every
rank holds the gradient of the whole batch and takes the same optimizer step.  The batches
stay a pure function of (seed, phase, epoch), so the training is the same whatever N.

    world.py   World: the processes of a run (rank, size, local rank) and the collectives
               it needs; MPI through mpi4py for the CPU, NCCL through CuPy on GPUs;
               launched_by_mpi, init_world, find_mpiexec
    bucket.py  GradientBucket: the gradients of a list of parameters and a few scalars (the
               losses, which ranks saw a NaN, rank 0's clock, a stop request) in one flat
               buffer, summed over the ranks by one all-reduce per update

Importing this package imports no MPI: init_world imports mpi4py only when the process was
started by an MPI launcher (launched_by_mpi) or MPI is asked for by name.
"""
from .bucket import RANK_STATUS, GradientBucket, Reduced, describe_bad
from .world import (MPI_LAUNCH_VARIABLES, DistributedError, MPIWorld, World, find_mpiexec,
                    init_world, launched_by_mpi, shard)

__all__ = ["RANK_STATUS", "GradientBucket", "Reduced", "describe_bad", "MPI_LAUNCH_VARIABLES",
           "DistributedError", "MPIWorld", "World", "find_mpiexec", "init_world", "launched_by_mpi", "shard"]
