"""The version ladder: ``python -m gasca_core.bench --ladder``.

One table for the whole stack: a row per pass of each gasca-64 layer (the convolution's
forward, backward-input and backward-weight, and its mirror transposed convolution's),
then a row for the whole training step; a column per version, built-in and registered,
from the reference loops up; and, last, the ceiling: what our fastest sgemm reaches on
the same work.  Every cell is GFLOP/s (float32).

Columns are version *combinations*, as `gasca_core.kernels` takes them: each conv2d
version once, except the versions built on gemm (backend.CONV_VERSIONS_ON_GEMM: version 1,
im2col + gemm), which get one column per built-in gemm version, so the gemm ladder shows
inside the convolution; then each registered conv version (its cells "-" on the passes it
does not cover) and each registered gemm (on the training step only: no convolution pass
can call a Python gemm).  A column runs every kernel it does not choose at the fastest.

The rows:
- a pass: 2 N C_out C_in K K OH OW FLOPs (the same for all six passes of a layer), over
  the best of --repeat timed calls, the columns taking turns (bench.kernels.best_times);
- the training step: Trainer.step of a joint run of gasca-64 (D update, then G update
  through D; bench.step), its FLOPs counted by the backend as it runs
  (backend.kernel_calls: the convolutions' and matrix products' multiply-adds, x 2), over
  the best of --step-rounds rounds of --step-steps steps;
- the ceiling: each pass's work as one matrix product of the same m, n, k (the column
  matrix of the whole batch, never built), run by our fastest gemm; for the training step,
  the FLOP-weighted harmonic mean of the pass ceilings (the rate of the table's
  convolution work, were every pass a plain sgemm).

Small budgets for a quick look or a test: --batch 2 --repeat 1 --step-batch 2 --step-rounds 1.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import numpy as np

from .. import backend
from .layers import LAYERS, PASSES, Layer, best_times

# A pass's name in the table -> the backend kernel that runs it.
PASS_KERNELS = {
    "conv fwd": "conv2d_forward", "conv bwd-in": "conv2d_backward_input",
    "conv bwd-w": "conv2d_backward_weight", "convT fwd": "conv_transpose2d_forward",
    "convT bwd-in": "conv_transpose2d_backward_input",
    "convT bwd-w": "conv_transpose2d_backward_weight",
}


@dataclass(frozen=True)
class Column:
    """One version combination: its label and the choice gasca_core.kernels takes."""
    label: str
    choice: Dict[str, backend.Version]

    def covers(self, kernel: str) -> bool:
        """Whether the column has a version for `kernel`'s pass rows: every kernel for a
        built-in combination; for a registered convolution version the kernels it was
        registered for; for a registered gemm none (no convolution pass calls a Python
        gemm: it shows on the training step only)."""
        if not any(isinstance(v, str) for v in self.choice.values()):
            return True
        return isinstance(self.choice.get(kernel), str)


def columns(only: Optional[List[str]] = None) -> List[Column]:
    """Every version combination of the ladder (see the module doc), or those of `only`
    (labels)."""
    gemms = backend.kernel_versions("gemm")
    cols: List[Column] = []
    for v in backend.kernel_versions("conv2d"):
        if isinstance(v, str):
            covered = [k for k in backend.FAMILIES["conv2d"] if v in backend.kernel_versions(k)]
            cols.append(Column(v, {k: v for k in covered}))
        elif v in backend.CONV_VERSIONS_ON_GEMM:
            cols += [Column(f"v{v}+gemm{g}", {"conv2d": v, "gemm": g})
                     for g in gemms if isinstance(g, int)]
        else:
            cols.append(Column(f"v{v}", {"conv2d": v}))
    cols += [Column(f"gemm:{g}", {"gemm": g}) for g in gemms if isinstance(g, str)]
    if only:
        known = {c.label: c for c in cols}
        bad = [o for o in only if o not in known]
        if bad:
            raise ValueError(f"--columns: no column {', '.join(bad)}; the columns are "
                             f"{', '.join(known)}")
        cols = [known[o] for o in only]
    return cols


# ----------------------------------------------------------------------------- a layer's passes
def pass_calls(layer: Layer, batch: int, rng) -> Dict[str, Callable[[], object]]:
    """The six passes of `layer` through the backend (so that every version, registered ones
    included, is called the way training calls it), on float32 arrays made once."""
    L = layer
    s, p, d, op = (L.stride,) * 2, (L.pad,) * 2, (1, 1), (1, 1)
    f32 = np.float32
    x = rng.standard_normal((batch, L.cin, L.size, L.size)).astype(f32)
    w = rng.standard_normal((L.cout, L.cin, L.k, L.k)).astype(f32)
    b = rng.standard_normal(L.cout).astype(f32)
    dy = rng.standard_normal((batch, L.cout, L.out, L.out)).astype(f32)
    tb = rng.standard_normal(L.cin).astype(f32)
    B = backend
    # The mirror transposed convolution maps dy's shape to x's with the same weight.
    return {
        "conv fwd": lambda: B.conv2d_forward(x, w, b, s, p, d),
        "conv bwd-in": lambda: B.conv2d_backward_input(dy, w, x.shape, s, p, d),
        "conv bwd-w": lambda: B.conv2d_backward_weight(x, dy, w.shape, s, p, d),
        "convT fwd": lambda: B.conv_transpose2d_forward(dy, w, tb, s, p, op, d),
        "convT bwd-in": lambda: B.conv_transpose2d_backward_input(x, w, dy.shape, s, p, op, d),
        "convT bwd-w": lambda: B.conv_transpose2d_backward_weight(dy, x, w.shape, s, p, op, d),
    }


def gemm_shape(layer: Layer, batch: int, pname: str) -> tuple:
    """(m, n, k) of the one matrix product that does pass `pname`'s work: the forward is
    W (Co x Ci K K) times the column matrix (Ci K K x N OH OW); backward-input is W^T times
    dY; backward-weight dY times the columns transposed.  The transposed convolution's
    forward is the convolution's backward-input, and so on."""
    kdim, npix, co = layer.cin * layer.k * layer.k, batch * layer.out * layer.out, layer.cout
    kind = {"conv fwd": "fwd", "conv bwd-in": "in", "conv bwd-w": "w",
            "convT fwd": "in", "convT bwd-in": "fwd", "convT bwd-w": "w"}[pname]
    return {"fwd": (co, npix, kdim), "in": (kdim, npix, co), "w": (co, kdim, npix)}[kind]


def gemm_ceiling(m: int, n: int, k: int, repeat: int, rng) -> float:
    """GFLOP/s of our fastest gemm (float32) on an m x n x k product."""
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    t = best_times([lambda: backend.gemm(a, b, version=-1)], repeat)[0]
    return 2.0 * m * n * k / t / 1e9


def _in(column: Column, fn: Callable[[], object]) -> Callable[[], object]:
    def run():
        with backend.kernels(**column.choice):
            return fn()
    return run


# ----------------------------------------------------------------------------- the step
def step_rate(column: Column, batch: int, steps: int, rounds: int) -> float:
    """GFLOP/s of the training step (bench.step's: Trainer.step of gasca-64) on `column`'s
    versions: the FLOPs the backend counts over the best of `rounds` rounds of `steps`."""
    from .step import _ours_step_fn
    with backend.kernels(**column.choice):
        step = _ours_step_fn(batch)
        step()  # warm up: first-touch allocations, the thread pool
        best = float("inf")
        flops = 0.0
        for _ in range(rounds):
            backend.kernel_calls(reset=True)
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            elapsed = time.perf_counter() - t0
            flops = sum(f for _, f in backend.kernel_calls(reset=True).values())
            best = min(best, elapsed)
    return flops / best / 1e9


# ----------------------------------------------------------------------------- the table
def run(args) -> Dict[str, Dict[str, Optional[float]]]:
    """Print the ladder; returns {row: {column label or "ceiling": GFLOP/s or None}}."""
    rng = np.random.default_rng(0)
    cols = columns(args.columns)
    print(f"\n== the version ladder: GFLOP/s, float32, {args.threads} thread(s); passes at "
          f"batch {args.batch} (best of {args.repeat}), the training step at batch "
          f"{args.step_batch} (best of {args.step_rounds} x {args.step_steps} steps) ==")
    for c in cols:
        print(f"  {c.label:<14} " + ", ".join(f"{k}={v}" for k, v in c.choice.items()))
    labels = [c.label for c in cols] + ["ceiling"]
    width = max(10, max(len(lab) for lab in labels) + 1)
    print(f"\n  {'pass':<24}" + "".join(f"{lab:>{width}}" for lab in labels))
    table: Dict[str, Dict[str, Optional[float]]] = {}
    weighted = []  # (FLOPs, ceiling) of every pass row, for the step's ceiling

    def show(row: str, cells: Dict[str, Optional[float]]) -> None:
        table[row] = cells
        print(f"  {row:<24}" + "".join(
            f"{'-':>{width}}" if cells.get(lab) is None else f"{cells[lab]:>{width}.1f}"
            for lab in labels), flush=True)

    for key in args.layers:
        L = LAYERS[key]
        flops = L.flops(args.batch)
        calls = pass_calls(L, args.batch, rng)
        for pname in PASSES:
            kernel = PASS_KERNELS[pname]
            timed = [c for c in cols if c.covers(kernel)]
            times = best_times([_in(c, calls[pname]) for c in timed], args.repeat)
            cells: Dict[str, Optional[float]] = {c.label: flops / t / 1e9 for c, t in zip(timed, times)}
            cells["ceiling"] = gemm_ceiling(*gemm_shape(L, args.batch, pname), args.repeat, rng)
            weighted.append((flops, cells["ceiling"]))
            show(f"layer {key} {pname}", cells)
    if not args.no_step:
        cells = {c.label: step_rate(c, args.step_batch, args.step_steps, args.step_rounds)
                 for c in cols}
        total = sum(f for f, _ in weighted)
        cells["ceiling"] = total / sum(f / c for f, c in weighted) if weighted else None
        show(f"training step (b{args.step_batch})", cells)
    return table
