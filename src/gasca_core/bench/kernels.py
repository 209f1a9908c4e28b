"""Benchmark of gasca_core's CPU kernels: ``python -m gasca_core.bench``.

For the three gasca-64 encoder layers (docs/DESIGN.md), or another architecture's
(--arch gasca-64-deep: the training tools' default), and their mirror-image transposed
convolutions, at batch 64 by default, prints the GFLOP/s of every pass for each of our
kernel versions, beside a NumPy im2col + matmul baseline and PyTorch (when importable),
all measured in the same run, and the ratio ours / PyTorch.  Then the GEMM alone against
numpy.matmul.  Each section is one function taking the parsed arguments, so that more can
be added (``SECTIONS``).

Every pass of a layer does the same number of multiply-adds, so one FLOP count serves all:
2 * N * C_out * C_in * KH * KW * OH * OW (OH, OW: the convolution's output size; for the
transposed convolution, the convolution it is the adjoint of).  The passes are timed in
--rounds interleaved rounds (bench.layers.round_times: every column takes its turn in every
round, after an untimed pause of --settle seconds so that one library's spinning thread
pool does not slow the next), and each figure is the median of the rounds; ours / PyTorch is the
median of the rounds' ratios, for the version training dispatches.  The gemm section keeps
the best of --repeat runs.  Run it on an otherwise idle machine: a build, a test run or a
training beside it makes every figure noisy (the section says so when the load is high).

Usage:
    python -m gasca_core.bench [--batch 64] [--repeat 5] [--layers 1,2,3] [--arch gasca-64]
                               [--dtype float32]
                               [--threads N] [--reference] [--no-gemm] [--sections ...]
                               [--kernels ...]
    python -m gasca_core.bench --sections distributed    (data parallel, under mpiexec)
    python -m gasca_core.bench --ladder [--batch 64] [--repeat 3] [--step-batch 32] ...
                               (bench/ladder.py: every version, built-in and registered,
                               pass by pass and on the whole training step, beside the
                               sgemm ceiling)
"""
from __future__ import annotations

import argparse
import importlib
import os
import statistics
import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from gasca_core import _C, backend
from gasca_core.cli.common import add_kernel_args, apply_kernel_args, fail


from .layers import (LAYERS, PASSES, Layer, add_arch_argument, arch_layers, best_time,
                     median_ratio, round_times)


# ----------------------------------------------------------------------------- our kernels
def our_passes(layer: Layer, batch: int, dtype, version: int, rng) -> Dict[str, Callable[[], None]]:
    """The six passes of `layer` in conv2d version `version`, straight through the bindings;
    the gemm inside the versions built on gemm is the run's choice (--kernels gemm=...)."""
    L = layer
    g = backend.chosen_version("gemm")
    gv = g if isinstance(g, int) else -1  # a registered gemm cannot run inside C++
    s, p, d, op = (L.stride,) * 2, (L.pad,) * 2, (1, 1), (L.output_padding,) * 2
    x = rng.standard_normal((batch, L.cin, L.size, L.size)).astype(dtype)
    w = rng.standard_normal((L.cout, L.cin, L.k, L.k)).astype(dtype)
    b = rng.standard_normal(L.cout).astype(dtype)
    y = np.empty((batch, L.cout, L.out, L.out), dtype)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = np.empty_like(x)
    dw = np.empty_like(w)
    # The mirror transposed convolution: input (N, Co, OH, OW) -> output (N, Ci, H, W),
    # weight (Co, Ci, K, K): the same memory as the convolution's weight; its
    # output_padding brings OH back to H.
    tx = dy
    tb = rng.standard_normal(L.cin).astype(dtype)
    ty = np.empty_like(x)
    tdy = x
    tdx = np.empty_like(dy)
    return {
        "conv fwd": lambda: _C.conv2d_forward(x, w, b, y, s, p, d, version=version, gemm_version=gv),
        "conv bwd-in": lambda: _C.conv2d_backward_input(dy, w, dx, s, p, d, version=version, gemm_version=gv),
        "conv bwd-w": lambda: _C.conv2d_backward_weight(x, dy, dw, s, p, d, version=version, gemm_version=gv),
        "convT fwd": lambda: _C.conv_transpose2d_forward(tx, w, tb, ty, s, p, op, d, version=version, gemm_version=gv),
        "convT bwd-in": lambda: _C.conv_transpose2d_backward_input(tdy, w, tdx, s, p, op, d, version=version, gemm_version=gv),
        "convT bwd-w": lambda: _C.conv_transpose2d_backward_weight(tx, tdy, dw, s, p, op, d, version=version, gemm_version=gv),
    }


# ----------------------------------------------------------------------------- NumPy baseline
def _im2col(xp: np.ndarray, k: int, s: int, oh: int) -> np.ndarray:
    """(N, C, Hp, Wp) padded input -> (N, C*k*k, oh*oh) columns, via a strided view + copy."""
    n, c = xp.shape[:2]
    st = xp.strides
    view = np.lib.stride_tricks.as_strided(
        xp, shape=(n, c, k, k, oh, oh),
        strides=(st[0], st[1], st[2], st[3], st[2] * s, st[3] * s), writeable=False)
    return view.reshape(n, c * k * k, oh * oh)


def _col2im(cols: np.ndarray, shape, k: int, s: int, p: int, oh: int) -> np.ndarray:
    n, c, h, w = shape
    cols = cols.reshape(n, c, k, k, oh, oh)
    out = np.zeros((n, c, h + 2 * p + s, w + 2 * p + s), cols.dtype)
    for i in range(k):
        for j in range(k):
            out[:, :, i:i + s * oh:s, j:j + s * oh:s] += cols[:, :, i, j]
    return out[:, :, p:p + h, p:p + w]


def numpy_passes(layer: Layer, batch: int, dtype, rng) -> Dict[str, Callable[[], object]]:
    """im2col + matmul in NumPy: the baseline a hand-written kernel must beat."""
    L = layer
    k, s, p, oh = L.k, L.stride, L.pad, L.out
    x = rng.standard_normal((batch, L.cin, L.size, L.size)).astype(dtype)
    w = rng.standard_normal((L.cout, L.cin * k * k)).astype(dtype)
    dy = rng.standard_normal((batch, L.cout, oh * oh)).astype(dtype)

    def fwd(xin=x):
        xp = np.pad(xin, ((0, 0), (0, 0), (p, p), (p, p)))
        return np.matmul(w, _im2col(xp, k, s, oh))

    def bwd_in(g=dy):
        return _col2im(np.matmul(w.T, g), x.shape, k, s, p, oh)

    def bwd_w(xin=x, g=dy):
        xp = np.pad(xin, ((0, 0), (0, 0), (p, p), (p, p)))
        cols = _im2col(xp, k, s, oh)
        return np.einsum("nop,nkp->ok", g, cols, optimize=True)

    # The transposed convolution's passes are the same three products, roles swapped.
    return {"conv fwd": fwd, "conv bwd-in": bwd_in, "conv bwd-w": bwd_w,
            "convT fwd": bwd_in, "convT bwd-in": fwd, "convT bwd-w": bwd_w}


# ----------------------------------------------------------------------------- PyTorch
def _torch():
    try:
        import torch
        return torch
    except Exception:
        return None


def torch_passes(torch, layer: Layer, batch: int, dtype) -> Dict[str, Callable[[], object]]:
    L = layer
    tdt = {np.float32: torch.float32, np.float64: torch.float64}[dtype]
    s, p, op = [L.stride] * 2, [L.pad] * 2, [L.output_padding] * 2
    x = torch.randn(batch, L.cin, L.size, L.size, dtype=tdt)
    w = torch.randn(L.cout, L.cin, L.k, L.k, dtype=tdt)
    b = torch.randn(L.cout, dtype=tdt)
    dy = torch.randn(batch, L.cout, L.out, L.out, dtype=tdt)
    tb = torch.randn(L.cin, dtype=tdt)
    cb = torch.ops.aten.convolution_backward
    F = torch.nn.functional

    def run(fn):
        def go():
            with torch.no_grad():
                return fn()
        return go

    return {
        "conv fwd": run(lambda: F.conv2d(x, w, b, s, p)),
        "conv bwd-in": run(lambda: cb(dy, x, w, None, s, p, [1, 1], False, [0, 0], 1, [True, False, False])),
        "conv bwd-w": run(lambda: cb(dy, x, w, None, s, p, [1, 1], False, [0, 0], 1, [False, True, False])),
        "convT fwd": run(lambda: F.conv_transpose2d(dy, w, tb, s, p, op)),
        "convT bwd-in": run(lambda: cb(x, dy, w, None, s, p, [1, 1], True, op, 1, [True, False, False])),
        "convT bwd-w": run(lambda: cb(x, dy, w, None, s, p, [1, 1], True, op, 1, [False, True, False])),
    }


# ----------------------------------------------------------------------------- sections
PASS_KERNEL = dict(zip(PASSES, ["conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight",
                                 "conv_transpose2d_forward", "conv_transpose2d_backward_input",
                                 "conv_transpose2d_backward_weight"]))


def _dispatched(pname: str, versions: List[int]) -> int:
    """The built-in version the backend runs for a pass (what training uses); a registered
    Python version cannot be timed through the bindings, so the fastest built-in stands in."""
    v = backend.chosen_version(PASS_KERNEL[pname])
    return v if isinstance(v, int) and v in versions else versions[-1]


def section_layers(args) -> None:
    """GFLOP/s of every pass of every layer: our versions, NumPy, PyTorch; the median of
    --rounds interleaved rounds, and ours / PyTorch as the median of the rounds' ratios."""
    dtype = np.dtype(args.dtype).type
    rng = np.random.default_rng(0)
    names = _C.versions()["conv2d"]
    versions = list(range(len(names)))
    fast = versions[1:]
    torch = None if args.no_torch else _torch()
    if torch is not None:
        torch.set_num_threads(args.threads)

    print(f"\n== convolution passes, batch {args.batch}, {args.dtype}, {args.threads} thread(s), "
          f"GFLOP/s (median of {args.rounds} rounds, the columns taking turns) ==")
    _load_note()
    for v, name in enumerate(names):
        print(f"  v{v}: {name}")
    if not args.reference:
        print("  (v0, the reference loops, is slow at these sizes: skipped; --reference times it once)")
    if torch is None:
        print("  (PyTorch not importable: its column and the ratio are left out)")
    else:
        print("  ours/torch: the version training dispatches (--kernels) against PyTorch, the "
              "median of the rounds' ratios [lowest, highest round]")

    layers = arch_layers(args.arch)
    if args.arch != "gasca-64":
        print(f"  architecture {args.arch}: its encoder's convolutions and their mirror images")
    for key in args.layers:
        L = layers[key]
        flops = L.flops(args.batch)
        cols = [f"v{v}" for v in versions] + ["numpy"] + (["torch", "ours/torch"] if torch else [])
        print(f"\n{L.name}  ({flops / 1e9:.3f} GFLOP per pass)")
        print(f"  {'pass':<13}" + "".join(f"{c:>11}" for c in cols) + ("   rounds' range" if torch else ""))
        table: Dict[str, List[Optional[float]]] = {}
        ours = {v: our_passes(L, args.batch, dtype, v, rng) for v in versions}
        base = numpy_passes(L, args.batch, dtype, rng)
        ref = torch_passes(torch, L, args.batch, dtype) if torch else None
        for pname in PASSES:
            timed = [ours[v][pname] for v in fast] + [base[pname]] + ([ref[pname]] if ref else [])
            times = round_times(timed, args.rounds, settle_s=args.settle)
            rates = [flops / statistics.median(t) / 1e9 for t in times]
            row: List[Optional[float]] = [flops / _once(ours[0][pname]) / 1e9 if args.reference else None]
            row += rates[:len(fast)]          # v1, v2, ...
            row.append(rates[len(fast)])      # numpy
            spread = ""
            if ref:
                mine = times[fast.index(_dispatched(pname, fast))]
                theirs = times[len(fast) + 1]
                per_round = [b / a for a, b in zip(mine, theirs)]
                row += [rates[len(fast) + 1], median_ratio(theirs, mine)]
                spread = f"   [{min(per_round):.2f}, {max(per_round):.2f}]"
            table[pname] = row
            cells = []
            for c, val in zip(cols, row):
                if val is None:
                    cells.append(f"{'-':>11}")
                elif c == "ours/torch":
                    cells.append(f"{val:>10.2f}x")
                else:
                    cells.append(f"{val:>11.1f}")
            print(f"  {pname:<13}" + "".join(cells) + spread, flush=True)
        # The summary figure: forward + both backward passes, 3x the forward FLOPs.
        for kind, trio in (("conv", PASSES[:3]), ("convT", PASSES[3:])):
            def rate(col):
                vals = [table[pn][col] for pn in trio]
                if any(v is None for v in vals):
                    return None
                return 3.0 / sum(1.0 / v for v in vals)
            summary = [rate(c) for c in range(len(versions) + 1)]
            msg = "  ".join(f"{c} {val:.1f}" for c, val in zip(cols, summary) if val is not None)
            if ref:
                tg = rate(len(versions) + 1)
                mine = rate(_dispatched(trio[0], fast))
                msg += f"  torch {tg:.1f}  ours/torch {mine / tg:.2f}x"
            print(f"  {kind} fwd+bwd (3 passes): {msg}")


def _load_note() -> None:
    """Say so when other processes are busy: their load makes every figure noisy."""
    try:
        load1 = os.getloadavg()[0]
    except (AttributeError, OSError):
        return
    cpus = os.cpu_count() or 1
    if load1 > 0.5:
        print(f"  note: load average {load1:.2f} on {cpus} CPU(s) before this section: other work "
              f"is running, absolute figures are noisy; ratios within a row are fairer")


def _once(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def section_gemm(args) -> None:
    """Our gemm versions against numpy.matmul on square and convolution-shaped products."""
    dtype = np.dtype(args.dtype).type
    rng = np.random.default_rng(1)
    names = _C.versions()["gemm"]
    print(f"\n== gemm, {args.dtype}, GFLOP/s (best of {args.repeat}) ==")
    for v, name in enumerate(names):
        print(f"  v{v}: {name}")
    if os.environ.get("OPENBLAS_CORETYPE") or os.environ.get("OPENBLAS_L2_SIZE"):
        print("  note: OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE are set in this environment and can slow "
              "numpy's matmul; unset both (in this command only) for numpy's best figure")
    sizes = [(256, 256, 256), (512, 512, 512), (1024, 1024, 1024),
             (64, 16384, 800), (800, 16384, 64), (64, 800, 16384)]
    print(f"  {'m x n x k':<18}" + "".join(f"{'v' + str(v):>9}" for v in range(1, len(names)))
          + f"{'numpy':>9}{'ours/np':>9}")
    for m, n, k in sizes:
        a = rng.standard_normal((m, k)).astype(dtype)
        b = rng.standard_normal((k, n)).astype(dtype)
        c = np.empty((m, n), dtype)
        fl = 2.0 * m * n * k
        row = [fl / best_time(lambda v=v: _C.gemm(a, b, c, version=v), args.repeat) / 1e9
               for v in range(1, len(names))]
        tn = fl / best_time(lambda: np.matmul(a, b, out=c), args.repeat) / 1e9
        print(f"  {f'{m}x{n}x{k}':<18}" + "".join(f"{r:>9.1f}" for r in row)
              + f"{tn:>9.1f}{row[-1] / tn:>8.2f}x", flush=True)


def section_ladder(args) -> None:
    """The version ladder (gasca_core.bench.ladder): every version combination, pass by pass
    and on the whole training step, beside the sgemm ceiling."""
    from . import ladder
    ladder.run(args)


def section_gpu(args) -> None:
    """The GPU benchmark (gasca_core.bench.gpu), when the CUDA extension imports and a GPU
    is present; silently nothing otherwise."""
    try:
        importlib.import_module("gasca_core._C_cuda")  # is the CUDA module built?
        from gasca_core.bench import gpu as _bench_gpu
        import cupy
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return
    except Exception:
        return
    print()
    try:
        _bench_gpu.run(args)
    except Exception as exc:  # a broken GPU setup must not hide the CPU tables above
        print(f"== GPU section failed: {type(exc).__name__}: {exc}")


def section_step(args) -> None:
    """The trainer's own training step (G and D, forward, backward, Adam) at --batch:
    steps per second, ours and the same step in PyTorch (gasca_core.bench.step)."""
    from gasca_core.bench import step as bench_step
    bench_step.run(batch=args.batch, steps=3, rounds=max(3, args.repeat), threads=args.threads,
                   use_torch=not args.no_torch)


def section_distributed(args) -> None:
    """The training step data-parallel on N = 1 and 2 MPI ranks (gasca_core.bench.distributed,
    which launches mpiexec): updates/s and the all-reduce's share; --threads shared out."""
    from gasca_core.bench import distributed as bench_distributed
    bench_distributed.run(batch=args.batch, steps=max(3, args.repeat), threads=args.threads)


SECTIONS: List[Tuple[str, Callable]] = [
    ("layers", section_layers),
    ("gemm", section_gemm),
    ("step", section_step),
    ("gpu", section_gpu),
    ("distributed", section_distributed),
    ("ladder", section_ladder),
]
# Run only when named: distributed starts mpiexec and a process per rank; the ladder times
# every version combination (the naive v0 included) and is long.
ON_REQUEST = ("distributed", "ladder")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m gasca_core.bench", description=__doc__.split("\n\n")[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    ap.add_argument("--repeat", type=int, default=5,
                    help="timed runs per measurement in the gemm section and the ladder (best is kept; default 5)")
    ap.add_argument("--rounds", type=int, default=7,
                    help="interleaved rounds of the layers section; their median is reported (default 7)")
    ap.add_argument("--settle", type=float, default=0.2, metavar="SECONDS",
                    help="untimed pause before each turn of the layers section, so that the thread "
                         "pool of the library timed before (ours, PyTorch's, OpenBLAS's behind "
                         "NumPy) has stopped spinning (default 0.2; 0 for quick runs)")
    ap.add_argument("--layers", default=None,
                    help="comma-separated layers of --arch, numbered from 1 (default: all)")
    add_arch_argument(ap, "whose layers the layers section times; the ladder always times "
                          "gasca-64's")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for our kernels and PyTorch (default: all cores)")
    ap.add_argument("--reference", action="store_true",
                    help="also time the reference version (v0) once per pass: slow")
    ap.add_argument("--no-torch", action="store_true", help="leave PyTorch out even if importable")
    ap.add_argument("--sections", default=",".join(n for n, _ in SECTIONS if n not in ON_REQUEST),
                    help="which sections to run: " + ", ".join(n for n, _ in SECTIONS)
                    + " (default: all but " + ", ".join(ON_REQUEST) + ")")
    ap.add_argument("--no-gemm", action="store_true", help="skip the gemm section")
    lad = ap.add_argument_group("the version ladder (--ladder: only that section)")
    lad.add_argument("--ladder", action="store_true",
                     help="run the version ladder: GFLOP/s of every version combination on "
                          "every pass and on the training step, and the sgemm ceiling "
                          "(--batch and --repeat apply to its passes)")
    lad.add_argument("--columns", default=None, metavar="LABEL,...",
                     help="only these columns of the ladder (e.g. v0,v2; default: all)")
    lad.add_argument("--step-batch", type=int, default=32, help="the training step's batch (default 32)")
    lad.add_argument("--step-steps", type=int, default=2, help="steps per timed round (default 2)")
    lad.add_argument("--step-rounds", type=int, default=3, help="timed rounds of the step (default 3)")
    lad.add_argument("--no-step", action="store_true", help="leave the training-step row out")
    add_kernel_args(ap)
    args = ap.parse_args(argv)
    known = arch_layers(args.arch) if not args.ladder else LAYERS
    if args.layers is None:
        args.layers = sorted(known)
    else:
        try:
            args.layers = [int(v) for v in args.layers.split(",") if v.strip()]
        except ValueError:
            ap.error(f"--layers: expected comma-separated layer numbers, got {args.layers!r}")
    for v in args.layers:
        if v not in known:
            ap.error(f"--layers: no layer {v}; choose from {sorted(known)}")
    if args.batch < 1 or args.repeat < 1 or args.rounds < 1:
        ap.error("--batch, --repeat and --rounds must be >= 1")
    if not 0 <= args.settle <= 10:
        ap.error(f"--settle must be between 0 and 10 seconds, got {args.settle}")
    if args.threads is None:
        args.threads = os.cpu_count() or 1
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in args.sections if s not in dict(SECTIONS)]
    if bad:
        ap.error(f"--sections: no section {', '.join(bad)}; choose from "
                 + ", ".join(n for n, _ in SECTIONS))
    if args.ladder:
        args.sections = ["ladder"]
    if "ladder" in args.sections and args.arch != "gasca-64":
        ap.error(f"--arch {args.arch}: the ladder times gasca-64's layers only; run it without "
                 "--arch, and the layers section with it")
    if min(args.step_batch, args.step_steps, args.step_rounds) < 1:
        ap.error("--step-batch, --step-steps and --step-rounds must be >= 1")
    if args.columns is not None:
        args.columns = [c.strip() for c in args.columns.split(",") if c.strip()]
    if args.no_gemm and "gemm" in args.sections:
        args.sections.remove("gemm")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    apply_kernel_args(args)
    if args.columns:
        from .ladder import columns
        try:
            columns(args.columns)
        except ValueError as e:
            fail(str(e))
    _C.set_num_threads(args.threads)
    print(f"gasca_core CPU kernel benchmark: {os.cpu_count()} CPU(s), kernels use {args.threads} thread(s)")
    for name, fn in SECTIONS:
        if name in args.sections:
            fn(args)


if __name__ == "__main__":
    main()
