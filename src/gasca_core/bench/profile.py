"""Where the training step's time goes: ``python -m gasca_core.bench.profile``.

Times the trainer's own step (`Trainer.step` of a joint run of
--arch, gasca-64 by default, as
`python -m gasca_core.bench.step` does: a D update, then a G update through D, Adam) and
splits every second of it into exclusive parts, which add up to the step's time:

- **kernels**, by pass: the C++ convolutions (forward, input and weight gradients, the
  bias gradient), the matrix products (D's linear layer), the fused Adam and the
  element-wise LeakyReLU passes, each with the Python of its dispatch in `backend`;
- **ops**, by autograd Function: the rest of each op's forward and backward (NumPy's
  element-wise work, reductions and copies, and the op's own Python), the kernels taken
  out;
- **autograd recording** (`Function.apply`: unwrapping, the graph node) and **the
  backward walk** (`run_backward`: the topological order, summing gradients that meet);
- **finite checks** (every gradient, before each update), **the optimizer's Python**
  (`Optimizer.step` and `zero_grad`, the Adam kernel taken out), and
- **the rest of the step**: drawing the batch, `.item()`, freezing D, the trainer's own
  Python.

How: each of those functions is wrapped for the run by a timer that charges the time
since the last event to the innermost region open (a stack), so nested regions never
count twice. The wrappers cost a few hundred nanoseconds per call (the step makes a few
thousand calls); the report gives the step's time with and without them, timed in
alternating rounds. Memory is reported as the bytes of the arrays the autograd ops return
per step (their outputs, and in backward their inputs' gradients, the kernels' results
among them): what the allocator must find afresh every step.

The limit: the step's FLOPs (counted by the backend as the kernels run:
`backend.kernel_calls`) over what our fastest sgemm reaches on a 1024^3 product on the
same threads: the time the step would take were all its work one large sgemm.

    python -m gasca_core.bench.profile [--batch 32] [--steps 5] [--rounds 3] [--threads N]
                                       [--arch gasca-64]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .. import backend
from .. import tensor as _tensor
from ..optim import Optimizer
from ..training import nonfinite as _nonfinite

# backend functions that run a compiled kernel, and the pass each one is
KERNELS = {
    "conv2d_forward": "conv fwd",
    "conv2d_backward_input": "conv bwd-in",
    "conv2d_backward_weight": "conv bwd-w",
    "conv_transpose2d_forward": "convT fwd",
    "conv_transpose2d_backward_input": "convT bwd-in",
    "conv_transpose2d_backward_weight": "convT bwd-w",
    "conv2d_backward_bias": "conv / convT bias gradient",
    "gemm": "gemm (linear layers)",
    "adam_step": "Adam (fused kernel)",
    "sgd_step": "SGD (fused kernel)",
    "leaky_relu_forward": "LeakyReLU fwd",
    "leaky_relu_backward": "LeakyReLU bwd",
}


class Timeline:
    """Exclusive time per region label: a stack of open regions, each event charging the
    time since the previous event to the region on top."""

    def __init__(self, root: str = "rest of the step") -> None:
        self.seconds: Dict[str, float] = defaultdict(float)
        self.calls: Dict[str, int] = defaultdict(int)
        self.bytes: Dict[str, int] = defaultdict(int)
        self.stack: List[str] = [root]
        self.last = time.perf_counter()

    def enter(self, label: str) -> None:
        now = time.perf_counter()
        self.seconds[self.stack[-1]] += now - self.last
        self.last = now
        self.stack.append(label)
        self.calls[label] += 1

    def leave(self) -> None:
        now = time.perf_counter()
        self.seconds[self.stack.pop()] += now - self.last
        self.last = now

    def flush(self) -> None:
        """Charge the time up to now to the open region (call before reading `seconds`)."""
        now = time.perf_counter()
        self.seconds[self.stack[-1]] += now - self.last
        self.last = now

    def wrap(self, label: str, fn: Callable, count_bytes: bool = False) -> Callable:
        def timed(*args, **kwargs):
            self.enter(label)
            try:
                out = fn(*args, **kwargs)
            finally:
                self.leave()
            if count_bytes:
                self.bytes[label] += _nbytes(out)
            return out
        timed.__wrapped__ = fn
        return timed


def _nbytes(out) -> int:
    if isinstance(out, tuple):
        return sum(_nbytes(o) for o in out)
    return int(getattr(out, "nbytes", 0))


def _functions() -> List[type]:
    """Every autograd Function subclass defined so far."""
    seen, todo = [], list(_tensor.Function.__subclasses__())
    while todo:
        cls = todo.pop()
        if cls not in seen:
            seen.append(cls)
            todo.extend(cls.__subclasses__())
    return seen


class Instrumented:
    """Context manager: while open, the step's functions are wrapped to charge a Timeline;
    on exit every original is put back."""

    def __init__(self, timeline: Timeline) -> None:
        self.t = timeline
        self.saved: List[Tuple[object, str, object]] = []

    def _patch(self, owner, name: str, new) -> None:
        self.saved.append((owner, name, owner.__dict__[name] if isinstance(owner, type)
                           else getattr(owner, name)))
        setattr(owner, name, new)

    def __enter__(self) -> "Instrumented":
        t = self.t
        for name, label in KERNELS.items():
            self._patch(backend, name, t.wrap("kernel: " + label, getattr(backend, name)))
        apply = t.wrap("autograd recording", _tensor.Function.__dict__["apply"].__func__)
        self._patch(_tensor.Function, "apply", classmethod(lambda cls, *a, **k: apply(cls, *a, **k)))
        self._patch(_tensor, "run_backward", t.wrap("backward walk", _tensor.run_backward))
        self._patch(_nonfinite, "grads_finite", t.wrap("finite checks", _nonfinite.grads_finite))
        for name in ("step", "zero_grad"):
            self._patch(Optimizer, name, t.wrap("optimizer (Python)", Optimizer.__dict__[name]))
        for cls in _functions():
            for kind in ("forward", "backward"):
                if kind in cls.__dict__:
                    fn = cls.__dict__[kind].__func__
                    self._patch(cls, kind, staticmethod(
                        t.wrap(f"op {kind}: {cls.__name__}", fn, True)))
        return self

    def __exit__(self, *exc) -> None:
        for owner, name, old in reversed(self.saved):
            setattr(owner, name, old)
        self.saved.clear()


def sgemm_rate(repeat: int = 3) -> float:
    """GFLOP/s of our fastest sgemm on 1024 x 1024 x 1024 (the ladder's ceiling, best of
    `repeat`)."""
    from .ladder import gemm_ceiling
    return gemm_ceiling(1024, 1024, 1024, repeat, np.random.default_rng(0))


def group(label: str) -> str:
    """The summary line a region belongs to."""
    if label.startswith("kernel: conv"):
        return "convolution kernels (C++)"
    if label.startswith("kernel: LeakyReLU"):
        return "element-wise kernels (C++: LeakyReLU)"
    if label.startswith("kernel: "):
        return label[len("kernel: "):].split(" (")[0] + " kernel (C++)"
    if label.startswith("op "):
        return "element-wise ops, losses, reshapes (NumPy, in the ops)"
    return label


def profile(batch: int = 32, steps: int = 5, rounds: int = 3, threads: Optional[int] = None,
            out=None, arch: str = "gasca-64") -> dict:
    """Profile `rounds` x `steps` steps; returns the split (seconds per step by region) and
    the step's time with and without the timers, its FLOPs and the sgemm limit."""
    from .step import _ours_step_fn
    if threads:
        backend.set_num_threads(threads)
    step = _ours_step_fn(batch, arch=arch)
    step(), step()   # warm up: first-touch allocations, thread pools
    timeline = Timeline()
    plain, timed = [], []
    flops = None   # per step, counted by the backend over the first untimed round
    backend.kernel_calls(reset=True)
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        plain.append((time.perf_counter() - t0) / steps)
        if flops is None:
            flops = sum(f for _, f in backend.kernel_calls(reset=True).values()) / steps
        with Instrumented(timeline):
            timeline.last = time.perf_counter()
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            timeline.flush()
            timed.append((time.perf_counter() - t0) / steps)
    n = rounds * steps
    per_step = {k: v / n for k, v in timeline.seconds.items()}
    res = {
        "batch": batch, "arch": arch, "threads": backend.get_num_threads(), "steps": n,
        "step_seconds": statistics.median(plain), "timed_step_seconds": statistics.median(timed),
        "regions": per_step, "calls": {k: v / n for k, v in timeline.calls.items()},
        "bytes": {k: v / n for k, v in timeline.bytes.items()},
        "gflop": flops / 1e9,
        "sgemm_gflops": sgemm_rate(),
    }
    res["limit_seconds"] = res["gflop"] / res["sgemm_gflops"]
    report(res, out)
    return res


def report(res: dict, out=None) -> None:
    out = out or sys.stdout
    regions, calls, nbytes = res["regions"], res["calls"], res["bytes"]
    total = sum(regions.values())
    print(f"\nwhere the training step's time goes: Trainer.step (joint, {res.get('arch', 'gasca-64')}: D "
          f"update, then G update through D), batch {res['batch']}, {res['threads']} thread(s), "
          f"{res['steps']} steps", file=out)
    print(f"  step: {1e3 * res['step_seconds']:.1f} ms without the timers, "
          f"{1e3 * res['timed_step_seconds']:.1f} ms with them (medians of rounds)", file=out)
    print(f"  work: {res['gflop']:.2f} GFLOP a step (the kernels' multiply-adds x 2); our sgemm "
          f"reaches {res['sgemm_gflops']:.0f} GFLOP/s on 1024^3, so the step's limit is "
          f"{1e3 * res['limit_seconds']:.1f} ms ({res['limit_seconds'] / res['step_seconds']:.0%} "
          f"of the step's time)", file=out)
    groups: Dict[str, float] = defaultdict(float)
    for k, v in regions.items():
        groups[group(k)] += v
    print("\n  summary                                                  ms/step   share", file=out)
    for k, v in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"  {k:<55} {1e3 * v:8.2f}  {v / total:6.1%}", file=out)
    print(f"  {'total (with the timers)':<55} {1e3 * total:8.2f}", file=out)
    print(f"  arrays the ops return: {sum(nbytes.values()) / 2**20:.0f} MB a step", file=out)
    print("\n  region                                        calls/step  ms/step   share   MB/step",
          file=out)
    for k, v in sorted(regions.items(), key=lambda kv: -kv[1]):
        mb = f"{nbytes[k] / 2**20:9.1f}" if k in nbytes else ""
        n = f"{calls[k]:9.1f}" if k in calls else " " * 9
        print(f"  {k:<45} {n} {1e3 * v:8.2f}  {v / total:6.1%} {mb}", file=out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ..training import TrainConfig
    from .layers import add_arch_argument
    p = argparse.ArgumentParser(prog="python -m gasca_core.bench.profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=TrainConfig.batch_size,
                   help="pairs per step (default: the trainer's, %(default)s)")
    p.add_argument("--steps", type=int, default=5, help="steps per round (default 5)")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds, each untimed then timed steps (default 3)")
    p.add_argument("--threads", type=int, default=None, help="kernel threads (default: all)")
    add_arch_argument(p, "the architecture stepped")
    a = p.parse_args(argv)
    if a.batch < 1 or a.steps < 1 or a.rounds < 1:
        p.error("--batch, --steps and --rounds must be >= 1")
    profile(a.batch, a.steps, a.rounds, a.threads, arch=a.arch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
