"""Data-parallel benchmark: the trainer's step on N MPI ranks, and the all-reduce's share.

    python -m gasca_core.bench --sections distributed [--batch 32] [--threads T]
        launches, for N = 1 and 2, `mpiexec -n N python -m gasca_core.bench.distributed`
        (MPICH from pip install ".[mpi]"), each rank with T / N threads (the same cores in
        all), and prints one row per N
    mpiexec -n N python -m gasca_core.bench.distributed [--batch 32] [--steps 5] [--threads 1]
        one such measurement (a JSON line from rank 0)

What is timed: Trainer.step in the first phase of a joint run of the full gasca-64 G and D
(a D update and a G update, each with its all-reduce of gradients), on the global batch
--batch split over the ranks, after two warm-up steps. updates/s counts both updates. The
all-reduce share is the time rank 0 spends inside the all-reduce calls over the time of
the steps; it includes waiting for the slowest rank (on a shared machine, for the others'
work too), so it is an upper bound on the cost of communication itself.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Optional, Sequence

import numpy as np


def measure(batch: int, steps: int, threads: int) -> Optional[dict]:
    """This rank's part of one measurement (run under mpiexec); the figures on rank 0."""
    from .. import backend
    from ..data import PairDataset
    from ..distributed import init_world
    from ..models import GascaConfig
    from ..training import Trainer, TrainConfig
    backend.set_num_threads(threads)
    world = init_world("cpu", "mpi")
    rng = np.random.default_rng(0)
    x = rng.random((4 * batch, 1, 64, 64), dtype=np.float32)
    data = PairDataset(x, np.ascontiguousarray(x[:, :, :, ::-1]))
    trainer = Trainer(GascaConfig(), TrainConfig(method="joint", batch_size=batch), data, data,
                      progress=False, log=lambda s: None, world=world)
    run = trainer.start_phase(0)
    spent = [0.0]
    reduce = world.all_reduce_sum

    def timed_reduce(buffer) -> None:
        t0 = time.perf_counter()
        reduce(buffer)
        spent[0] += time.perf_counter() - t0
    world.all_reduce_sum = timed_reduce

    def step(i: int) -> None:
        xs, ys, _, total = run.slice_at(i)
        trainer.step(run, xs, ys, phase_step=i, batch_total=total)
    for i in range(2):                       # warm-up: first-touch allocations, thread pools
        step(i)
    world.bcast(None)                    # start together
    spent[0] = 0.0
    t0 = time.perf_counter()
    for i in range(2, 2 + steps):
        step(i)
    elapsed = time.perf_counter() - t0
    if world.rank != 0:
        return None
    return {"ranks": world.size, "threads": threads, "batch": batch, "steps": steps,
            "steps_per_s": steps / elapsed, "updates_per_s": 2 * steps / elapsed,
            "allreduce_share": spent[0] / elapsed,
            "bytes_per_step": run.bucket_g.nbytes + run.bucket_d.nbytes}


def run(batch: int = 32, steps: int = 5, threads: Optional[int] = None, ranks=(1, 2),
        out=sys.stdout) -> list:
    """Launch one measurement per N in `ranks` under mpiexec and print a row for each."""
    from ..distributed import MPI_LAUNCH_VARIABLES, find_mpiexec
    threads = threads or os.cpu_count() or 1
    mpiexec = find_mpiexec()
    print(f"\n== data parallel: Trainer.step (joint, gasca-64 G and D), global batch {batch}, "
          f"{steps} steps after 2 warm-up; {threads} thread(s) shared out over the ranks ==", file=out)
    if mpiexec is None:
        print('  no mpiexec (pip install ".[mpi]"): section skipped', file=out)
        return []
    env = {k: v for k, v in os.environ.items() if k not in MPI_LAUNCH_VARIABLES}
    rows = []
    for n in ranks:
        per_rank = max(1, threads // n)
        cmd = [mpiexec, "-n", str(n), sys.executable, "-m", "gasca_core.bench.distributed",
               "--batch", str(batch), "--steps", str(steps), "--threads", str(per_rank)]
        r = subprocess.run(cmd, env={**env, "OMP_NUM_THREADS": str(per_rank)},
                           capture_output=True, text=True)
        lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
        if r.returncode != 0 or not lines:
            print(f"  N={n}: failed (exit {r.returncode}): {r.stderr.strip()[-500:]}", file=out)
            continue
        res = json.loads(lines[-1])
        rows.append(res)
        lo, hi = batch // n, -(-batch // n)
        print(f"  N={n}: {n} rank(s) x {per_rank} thread(s), {lo if lo == hi else f'{lo}-{hi}'} "
              f"pairs per rank: {res['steps_per_s']:.3f} steps/s, {res['updates_per_s']:.3f} updates/s, "
              f"all-reduce {100 * res['allreduce_share']:.1f}% of the time "
              f"({res['bytes_per_step'] / 1e6:.2f} MB all-reduced per step)", file=out, flush=True)
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gasca_core.bench.distributed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=32, help="global batch (default 32)")
    p.add_argument("--steps", type=int, default=5, help="timed steps (default 5)")
    p.add_argument("--threads", type=int, default=1, help="threads per rank (default 1)")
    a = p.parse_args(argv)
    if a.batch < 1 or a.steps < 1 or a.threads < 1:
        p.error("--batch, --steps and --threads must be >= 1")
    res = measure(a.batch, a.steps, a.threads)
    if res is not None:
        print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
