"""The processes of a run and the collectives data-parallel training needs.

A World is one of:
    World       one process (rank 0 of 1): every collective is the identity. The trainer
                and the tools use it when no MPI launcher started the process.
    MPIWorld    the ranks started by ``mpiexec -n N``, through mpi4py (MPI_COMM_WORLD). On
                the CPU the gradient all-reduce is MPI_Allreduce; with device "cuda" it is
                NCCL's allReduce through CuPy (one GPU per rank, chosen from the rank's
                place on its node; NCCL's unique id is made on rank 0 and broadcast over
                MPI), and MPI carries only the small messages (a checkpoint on resume, an
                error, the clocks at each phase start).

The collectives, every rank calling each in the same order:
    all_reduce_sum(buffer)   in place: every rank ends with the element-wise sum of every
                             rank's buffer (NumPy on the CPU, CuPy on a GPU)
    bcast(obj)               rank 0's Python object, on every rank
    allgather(obj)           every rank's Python object, as a list in rank order, on every
                             rank (bcast and allgather are mpi4py's methods of those names,
                             on pickled objects)
    on_root(fn)              fn() on rank 0, its result or the exception it raised handed
                             to every rank: a check or a file read that every rank then
                             acts on alike
    abort(code)              end every rank of the job now (MPI_Abort), for a failure on
                             one rank that the others cannot know of

How a process knows it was started by MPI: the launchers set environment variables in each
process they start (MPI_LAUNCH_VARIABLES: MPICH's Hydra and Slurm's PMI set PMI_RANK and
PMI_SIZE, Open MPI sets OMPI_COMM_WORLD_SIZE, PMIx launchers PMIX_RANK). Without any of
them gasca_core imports no MPI at all; init_world(mode="mpi") asks for MPI by name (for a
launcher that sets none of them).
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, Mapping, Optional

import numpy as np

# Set in each process by the MPI launchers we know of (see the module docstring).
MPI_LAUNCH_VARIABLES = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE")

INSTALL_HINT = ('install the MPI extra: pip install ".[mpi]" (mpi4py with MPICH from pip), '
                "or mpi4py against your cluster's own MPI")


class DistributedError(RuntimeError):
    """Data-parallel training cannot start as asked (MPI or NCCL missing, too few GPUs)."""


def launched_by_mpi(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether an MPI launcher (mpiexec, mpirun, srun) started this process."""
    return any(name in environ for name in MPI_LAUNCH_VARIABLES)


def find_mpiexec() -> Optional[str]:
    """The mpiexec on PATH, or else the one beside this Python (where pip puts MPICH's, in
    a virtual environment that is not activated); None when there is neither."""
    import shutil
    return shutil.which("mpiexec") or shutil.which("mpiexec", path=os.path.dirname(sys.executable))


def shard(n: int, rank: int, size: int) -> slice:
    """Rank `rank`'s slice of a batch of n pairs split over `size` ranks: contiguous, from
    floor(rank n / size) to floor((rank + 1) n / size), so sizes floor or ceil of n / size;
    a rank gets an empty slice when n < size. Every rank computes every slice alike,
    without talking to the others."""
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"rank {rank} of {size}: need 0 <= rank < size")
    return slice(n * rank // size, n * (rank + 1) // size)


class World:
    """One process: rank 0 of 1, every collective the identity."""
    rank = 0
    size = 1
    local_rank = 0        # this rank's place among the ranks on its node
    local_size = 1
    distributed = False   # whether the trainer all-reduces its gradients (a communicator exists)
    backend = "none"      # "none", "mpi" or "nccl": what carries the gradient all-reduce

    def all_reduce_sum(self, buffer: Any) -> None:
        """Every rank's `buffer` becomes the element-wise sum over the ranks (in place)."""

    def bcast(self, obj: Any) -> Any:
        """Rank 0's `obj`, on every rank."""
        return obj

    def allgather(self, obj: Any) -> list:
        """Every rank's `obj`, in rank order, on every rank."""
        return [obj]

    def on_root(self, fn: Callable[[], Any]) -> Any:
        """fn() run on rank 0; its result, or the exception it raised (raised again), on
        every rank. The exception is marked `collective` (every rank raised it)."""
        return fn()

    def abort(self, code: int) -> None:
        """End every rank of the job now with exit status `code`."""
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    def describe(self) -> str:
        return "1 process"


class MPIWorld(World):
    """The ranks of MPI_COMM_WORLD (see the module docstring); device "cuda" all-reduces
    gradients over NCCL."""
    distributed = True

    def __init__(self, device: str = "cpu") -> None:
        try:
            from mpi4py import MPI
        except ImportError as exc:
            raise DistributedError(f"MPI training needs mpi4py, which does not import ({exc}): "
                                   f"{INSTALL_HINT}") from None
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED)   # the ranks sharing this node
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()
        self.nccl: Optional[NcclAllReduce] = None
        self.backend = "mpi"
        if device == "cuda":
            # A rank that cannot join NCCL must not leave the others waiting in
            # ncclCommInitRank: every rank checks its node, and all agree on the outcome
            # before any joins.
            problem = None
            try:
                _check_gpus(self.local_size)
            except DistributedError as exc:
                problem = str(exc)
            problems = [p for p in self.comm.allgather(problem) if p]
            if problems:
                raise DistributedError(problems[0])
            self.nccl = NcclAllReduce(self.comm, self.rank, self.size, self.local_rank)
            self.backend = "nccl"

    def all_reduce_sum(self, buffer: Any) -> None:
        if self.nccl is not None and not isinstance(buffer, np.ndarray):   # on a GPU
            self.nccl.all_reduce_sum(buffer)
        else:
            self.comm.Allreduce(self.MPI.IN_PLACE, buffer, op=self.MPI.SUM)

    def bcast(self, obj: Any) -> Any:
        return self.comm.bcast(obj, root=0)

    def allgather(self, obj: Any) -> list:
        return self.comm.allgather(obj)

    def on_root(self, fn: Callable[[], Any]) -> Any:
        outcome: tuple[bool, Any] = (True, None)
        if self.rank == 0:
            try:
                outcome = (True, fn())
            except BaseException as exc:  # SystemExit from a tool's fail() included
                outcome = (False, exc)
        ok, value = self.bcast(outcome)
        if not ok:
            value.collective = True
            raise value
        return value

    # Seconds between the failing rank's last words and MPI_Abort. The launcher forwards
    # each rank's output through its own processes and kills them on an abort: without a
    # pause, a loaded machine can lose the message that says which rank failed and why.
    ABORT_PAUSE = 1.0

    def abort(self, code: int) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(self.ABORT_PAUSE)
        if self.nccl is not None:
            self.nccl.abort()
        self.comm.Abort(code)

    def describe(self) -> str:
        library = " ".join(self.MPI.Get_library_version().splitlines()[0].split())
        return (f"{self.size} MPI rank{'s' if self.size > 1 else ''} ({library}; gradients over "
                f"{'NCCL' if self.nccl else 'MPI'})")


def _check_gpus(local_size: int) -> None:
    """Refuse, saying why, unless CuPy with NCCL imports and this node has a GPU per rank."""
    try:
        import cupy
        from cupy.cuda import nccl
    except ImportError as exc:
        raise DistributedError(f"--device cuda under mpiexec all-reduces over NCCL through "
                               f"CuPy, which does not import ({exc}): pip install \".[cuda]\"") from None
    if not getattr(nccl, "available", False):
        raise DistributedError("--device cuda under mpiexec needs NCCL, which CuPy did not find "
                               "(cupy.cuda.nccl.available is False): install NCCL for your CUDA "
                               "(e.g. pip install nvidia-nccl-cu13) where CuPy looks for it "
                               "(CuPy's installation guide, 'Optional libraries')")
    try:
        gpus = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no driver, or the driver refuses
        raise DistributedError(f"--device cuda: CUDA reports no GPU ({exc})") from None
    if local_size > gpus:
        raise DistributedError(f"{local_size} ranks on this node but {gpus} GPU(s): NCCL runs "
                               f"one rank per GPU (it refuses two ranks on one GPU); start at "
                               f"most {gpus} rank(s) per node")


class NcclAllReduce:
    """NCCL's all-reduce through CuPy: rank r uses GPU local_rank; NCCL's unique id is made
    on rank 0 and broadcast over MPI (`comm`), then every rank joins the communicator."""

    def __init__(self, comm: Any, rank: int, size: int, local_rank: int) -> None:
        import cupy
        from cupy.cuda import nccl
        self.cupy, self.nccl = cupy, nccl
        cupy.cuda.Device(local_rank).use()   # before anything is allocated on a GPU
        uid = comm.bcast(nccl.get_unique_id() if rank == 0 else None, root=0)
        self.comm = nccl.NcclCommunicator(size, uid, rank)
        self.types = {"float32": nccl.NCCL_FLOAT32, "float64": nccl.NCCL_FLOAT64}

    def all_reduce_sum(self, buffer: Any) -> None:
        kind = str(buffer.dtype)
        if kind not in self.types:
            raise TypeError(f"NCCL all-reduce: buffers of {kind} are not supported "
                            f"(only {', '.join(self.types)})")
        stream = self.cupy.cuda.get_current_stream()
        self.comm.allReduce(buffer.data.ptr, buffer.data.ptr, buffer.size, self.types[kind],
                            self.nccl.NCCL_SUM, stream.ptr)
        stream.synchronize()

    def abort(self) -> None:
        try:
            self.comm.abort()
        except Exception:  # already broken: MPI_Abort follows anyway
            pass


def init_world(device: str = "cpu", mode: str = "auto") -> World:
    """The World this process is part of. mode "auto": MPI when an MPI launcher started the
    process (launched_by_mpi), else one process; "mpi": MPI whatever the environment
    says (an error when mpi4py does not import)."""
    if mode not in ("auto", "mpi"):
        raise ValueError(f"mode must be 'auto' or 'mpi', got {mode!r}")
    if mode == "auto" and not launched_by_mpi():
        return World()
    return MPIWorld(device)
