"""GPU benchmark: GFLOP/s of each CUDA kernel version on the gasca-64 layers, beside cuDNN.

For the three convolutions of gasca-64 (docs/DESIGN.md) and the three transposed convolutions that
mirror them (output_padding 1), at batch 64 and 256, float32, this times

  conv fwd / conv bwd-input / conv bwd-weight / convT fwd / convT bwd-input / convT bwd-weight

for every version of gasca_core._C_cuda's conv2d kernels and for cuDNN (through PyTorch when
it is installed with CUDA, else through CuPy's cuDNN bindings when present), all in one run,
with TF32 off so that every contender does true float32 arithmetic.  Times are CUDA-event
times per call after a warm-up, on the same stream the work runs on.

    python -m gasca_core.bench.gpu                 # batches 64 and 256
    python -m gasca_core.bench.gpu --batch 64 --min-time 0.5

`run(args)` is what `python -m gasca_core.bench` calls when a GPU is present; it prints the
table and returns the rows (a list of dicts) for callers that want the numbers.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass
from typing import Callable, Optional

# (name, in channels, out channels, input size (square), kernel, stride, padding)
LAYERS = [
    ("L1 1->32 k5 s2 p2 @64", 1, 32, 64, 5, 2, 2),
    ("L2 32->64 k5 s2 p2 @32", 32, 64, 32, 5, 2, 2),
    ("L3 64->128 k3 s2 p1 @16", 64, 128, 16, 3, 2, 1),
]
OPS = ["conv fwd", "conv bwd-input", "conv bwd-weight",
       "convT fwd", "convT bwd-input", "convT bwd-weight"]


@dataclass
class Problem:
    """One layer at one batch size, and the arrays its six passes need (float32, on GPU).

    The convolution maps x (N, Ci, S, S) to y (N, Co, S/2, S/2) with weight (Co, Ci, K, K).
    Its mirror, the transposed convolution of the decoder, maps (N, Co, S/2, S/2) back to
    (N, Ci, S, S) with the weight (Co, Ci, K, K) read as (C_in, C_out, K, K): exactly the
    adjoint geometry, which is how the decoders of docs/DESIGN.md are built.
    """

    name: str
    batch: int
    ci: int
    co: int
    size: int
    k: int
    stride: int
    pad: int

    @property
    def out_size(self) -> int:
        return (self.size + 2 * self.pad - self.k) // self.stride + 1

    @property
    def flops(self) -> float:
        """Multiply-adds * 2 of one pass: the same for all six (they are one product)."""
        return 2.0 * self.batch * self.co * self.out_size ** 2 * self.ci * self.k ** 2


class _EventTimer:
    """Times GPU work with a pair of CUDA events recorded on the current stream."""

    def __init__(self, make_event, record, elapsed_s):
        self._make_event, self._record, self._elapsed_s = make_event, record, elapsed_s

    def seconds_per_call(self, fn: Callable[[], None], min_time: float) -> float:
        """Seconds per call of fn after one warm-up call; repeats until about min_time
        seconds have been timed (at least 3 calls, at most 200)."""
        fn()  # warm-up: module load, cuDNN's algorithm search, caches
        once = self._timed(fn, 1)
        reps = max(3, min(200, int(min_time / max(once, 1e-6))))
        return self._timed(fn, reps) / reps

    def _timed(self, fn: Callable[[], None], reps: int) -> float:
        start, end = self._make_event(), self._make_event()
        self._record(start)
        for _ in range(reps):
            fn()
        self._record(end)
        return self._elapsed_s(start, end)


def _cupy_timer(cp) -> _EventTimer:
    def record(ev):
        ev.record(cp.cuda.get_current_stream())

    def elapsed(ev0, ev1):
        ev1.synchronize()
        return cp.cuda.get_elapsed_time(ev0, ev1) / 1e3
    return _EventTimer(cp.cuda.Event, record, elapsed)


def _torch_timer(torch) -> _EventTimer:
    def elapsed(ev0, ev1):
        ev1.synchronize()
        return ev0.elapsed_time(ev1) / 1e3
    return _EventTimer(lambda: torch.cuda.Event(enable_timing=True), lambda ev: ev.record(),
                       elapsed)


def _arrays(cp, p: Problem):
    """The arrays every library's six passes read and write (the same values for each):
    x, w, the conv's and the transposed conv's biases, y, dy, dx, dw."""
    rng = cp.random.default_rng(0)
    f32 = cp.float32
    x = rng.standard_normal((p.batch, p.ci, p.size, p.size), dtype=f32)
    w = rng.standard_normal((p.co, p.ci, p.k, p.k), dtype=f32)
    b_conv = rng.standard_normal(p.co, dtype=f32)
    b_t = rng.standard_normal(p.ci, dtype=f32)
    y = cp.empty((p.batch, p.co, p.out_size, p.out_size), f32)
    dy = rng.standard_normal(y.shape, dtype=f32)
    return x, w, b_conv, b_t, y, dy, cp.empty_like(x), cp.empty_like(w)


def _ours(cp, gpu, p: Problem, version: int) -> dict[str, Callable[[], None]]:
    """The six passes through gasca_core._C_cuda, version `version`."""
    x, w, b_conv, b_t, y, dy, dx, dw = _arrays(cp, p)
    conv = dict(stride=p.stride, padding=p.pad, dilation=1, version=version)
    tconv = dict(conv, output_padding=1)
    s = lambda: cp.cuda.get_current_stream().ptr  # noqa: E731
    # The transposed convolution: input (N, Co, OS, OS) = dy-shaped, output x-shaped.
    return {
        "conv fwd": lambda: gpu.conv2d_forward(x, w, b_conv, y, **conv, stream=s()),
        "conv bwd-input": lambda: gpu.conv2d_backward_input(dy, w, dx, **conv, stream=s()),
        "conv bwd-weight": lambda: gpu.conv2d_backward_weight(x, dy, dw, **conv, stream=s()),
        "convT fwd": lambda: gpu.conv_transpose2d_forward(dy, w, b_t, dx, **tconv, stream=s()),
        "convT bwd-input": lambda: gpu.conv_transpose2d_backward_input(x, w, y, **tconv,
                                                                       stream=s()),
        "convT bwd-weight": lambda: gpu.conv_transpose2d_backward_weight(dy, x, dw, **tconv,
                                                                         stream=s()),
    }


def _cudnn_torch(torch, p: Problem) -> dict[str, Callable[[], None]]:
    """The same six passes through PyTorch's cuDNN convolutions (TF32 off)."""
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    f32 = torch.float32
    x = torch.randn(p.batch, p.ci, p.size, p.size, device=dev, dtype=f32, generator=g)
    w = torch.randn(p.co, p.ci, p.k, p.k, device=dev, dtype=f32, generator=g)
    b_conv = torch.randn(p.co, device=dev, dtype=f32, generator=g)
    b_t = torch.randn(p.ci, device=dev, dtype=f32, generator=g)
    dy = torch.randn(p.batch, p.co, p.out_size, p.out_size, device=dev, dtype=f32, generator=g)
    F = torch.nn.functional
    st, pd = [p.stride] * 2, [p.pad] * 2
    cb = torch.ops.aten.convolution_backward

    def conv_bwd(grad, inp, mask):
        return cb(grad, inp, w, None, st, pd, [1, 1], False, [0, 0], 1, mask)

    def convt_bwd(grad, inp, mask):
        return cb(grad, inp, w, None, st, pd, [1, 1], True, [1, 1], 1, mask)

    return {
        "conv fwd": lambda: F.conv2d(x, w, b_conv, p.stride, p.pad),
        "conv bwd-input": lambda: conv_bwd(dy, x, [True, False, False]),
        "conv bwd-weight": lambda: conv_bwd(dy, x, [False, True, False]),
        "convT fwd": lambda: F.conv_transpose2d(dy, w, b_t, p.stride, p.pad, 1),
        "convT bwd-input": lambda: convt_bwd(x, dy, [True, False, False]),
        "convT bwd-weight": lambda: convt_bwd(x, dy, [False, True, False]),
    }


def _cudnn_cupy(cp, cudnn, p: Problem) -> dict[str, Callable[[], None]]:
    """The six passes through CuPy's cuDNN bindings (tensor cores off: no TF32)."""
    x, w, b_conv, b_t, y, dy, dx, dw = _arrays(cp, p)
    geo = ((p.pad, p.pad), (p.stride, p.stride), (1, 1), 1)
    opts = dict(auto_tune=True, tensor_core="never")
    # A transposed convolution is cuDNN's backward-data of the adjoint convolution, its input
    # gradient a forward convolution, its weight gradient a backward-filter with the roles
    # of image and gradient swapped.
    return {
        "conv fwd": lambda: cudnn.convolution_forward(x, w, b_conv, y, *geo, **opts),
        "conv bwd-input": lambda: cudnn.convolution_backward_data(
            w, dy, None, dx, *geo, deterministic=False, **opts),
        "conv bwd-weight": lambda: cudnn.convolution_backward_filter(
            x, dy, dw, *geo, deterministic=False, **opts),
        "convT fwd": lambda: cudnn.convolution_backward_data(
            w, dy, b_t, dx, *geo, deterministic=False, **opts),
        "convT bwd-input": lambda: cudnn.convolution_forward(x, w, None, y, *geo, **opts),
        "convT bwd-weight": lambda: cudnn.convolution_backward_filter(
            x, dy, dw, *geo, deterministic=False, **opts),
    }


def _find_cudnn(cp, use_torch: bool = True):
    """(label, factory(problem) -> passes, timer) for the cuDNN baseline, or None."""
    try:
        if not use_torch:
            raise ImportError("PyTorch left out (--no-torch)")
        import torch
        if torch.cuda.is_available() and torch.backends.cudnn.is_available():
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.benchmark = True  # let cuDNN pick its fastest algorithm
            return ("cuDNN (PyTorch)", lambda p: _cudnn_torch(torch, p), _torch_timer(torch))
    except Exception:
        pass
    for module in ("cupyx.cudnn", "cupy.cudnn"):
        try:
            cudnn = __import__(module, fromlist=["convolution_forward"])
            cudnn.convolution_forward  # noqa: B018 (present?)
            return ("cuDNN (CuPy)", lambda p: _cudnn_cupy(cp, cudnn, p), _cupy_timer(cp))
        except Exception:
            continue
    return None


def run(args: Optional[argparse.Namespace] = None) -> list[dict]:
    """Time every pass on every layer and batch; print the table; return its rows.

    Reads from args (all optional): batches (list of ints; else `batch` together with 64
    and 256), min_time (seconds timed per measurement, default 0.2), no_torch (use CuPy's
    cuDNN bindings for the baseline instead of PyTorch).
    """
    import cupy as cp

    from gasca_core import _C_cuda as gpu

    batches = getattr(args, "batches", None)
    if not batches:  # from the CPU bench: its --batch, and always the 64 and 256
        batches = sorted({int(getattr(args, "batch", None) or 64), 64, 256})
    min_time = float(getattr(args, "min_time", None) or 0.2)
    versions = gpu.versions()["conv2d"]
    baseline = _find_cudnn(cp, use_torch=not getattr(args, "no_torch", False))
    timer = _cupy_timer(cp)
    device = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["name"]
    device = device.decode() if isinstance(device, bytes) else device

    print(f"gasca_core CUDA kernels on {device}, float32, GFLOP/s (CUDA events, after warm-up)")
    for v, name in enumerate(versions):
        print(f"  v{v}: {name}")
    print(f"  baseline: {baseline[0] if baseline else 'none (no PyTorch with CUDA, no CuPy cuDNN)'}"
          ", TF32 off")
    cols = [f"v{v}" for v in range(len(versions))] + (["cuDNN", "fast/cuDNN"] if baseline else [])
    header = f"{'batch':>5}  {'layer':<24} {'pass':<17}" + "".join(f"{c:>11}" for c in cols)
    print(header)
    print("-" * len(header))
    rows = []
    for batch in batches:
        for name, ci, co, size, k, stride, pad in LAYERS:
            p = Problem(name, batch, ci, co, size, k, stride, pad)
            ours = [_ours(cp, gpu, p, v) for v in range(len(versions))]
            theirs = baseline[1](p) if baseline else None
            for op in OPS:
                row = dict(batch=batch, layer=name, op=op, flops=p.flops)
                for v in range(len(versions)):
                    row[f"v{v}"] = p.flops / timer.seconds_per_call(ours[v][op], min_time) / 1e9
                if theirs is not None:
                    try:
                        row["cuDNN"] = p.flops / baseline[2].seconds_per_call(theirs[op],
                                                                           min_time) / 1e9
                    except Exception as e:  # an older binding without this pass
                        row["cuDNN"] = float("nan")
                        row["cuDNN_error"] = f"{type(e).__name__}: {e}"
                    row["fast/cuDNN"] = row[f"v{len(versions) - 1}"] / row["cuDNN"]  # last = fastest
                rows.append(row)
                cells = "".join(f"{row[c]:>11.3f}" if c == "fast/cuDNN" else f"{row[c]:>11.1f}"
                                for c in cols)
                print(f"{batch:>5}  {name:<24} {op:<17}{cells}", flush=True)
            del ours, theirs
            cp.get_default_memory_pool().free_all_blocks()
    errors = {r["cuDNN_error"] for r in rows if "cuDNN_error" in r}
    for e in errors:
        print(f"  (cuDNN baseline failed on some passes: {e})")
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gasca_core.bench.gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", dest="batches", type=int, nargs="+", default=[64, 256],
                        help="batch sizes (default: 64 256)")
    parser.add_argument("--min-time", type=float, default=0.2,
                        help="seconds of timed calls per measurement (default 0.2)")
    args = parser.parse_args(argv)
    try:
        import cupy as cp
        if cp.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("no CUDA GPU is visible")
        importlib.import_module("gasca_core._C_cuda")  # is the CUDA module built?
    except Exception as e:
        print(f"GPU benchmark unavailable: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
