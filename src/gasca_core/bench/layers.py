"""What the kernel benchmarks share (bench.kernels, bench.ladder): the gasca-64 layers they
time, the names of the six passes, and fair timing of several functions at once."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, List


# ----------------------------------------------------------------------------- the layers
@dataclass(frozen=True)
class Layer:
    """A gasca-64 encoder convolution; its transposed convolution is the mirror image
    (C_out -> C_in, output_padding 1), i.e. the adjoint of this convolution."""
    name: str
    cin: int
    size: int      # input H = W
    cout: int
    k: int
    stride: int
    pad: int

    @property
    def out(self) -> int:
        return (self.size + 2 * self.pad - self.k) // self.stride + 1

    def flops(self, batch: int) -> float:
        return 2.0 * batch * self.cout * self.cin * self.k * self.k * self.out * self.out


LAYERS = {
    1: Layer("layer 1: conv 1->32 k5 s2 p2, 64x64", 1, 64, 32, 5, 2, 2),
    2: Layer("layer 2: conv 32->64 k5 s2 p2, 32x32", 32, 32, 64, 5, 2, 2),
    3: Layer("layer 3: conv 64->128 k3 s2 p1, 16x16", 64, 16, 128, 3, 2, 1),
}

PASSES = ["conv fwd", "conv bwd-in", "conv bwd-w", "convT fwd", "convT bwd-in", "convT bwd-w"]


def best_time(fn: Callable[[], object], repeat: int) -> float:
    """Best of `repeat` timed calls after one warm-up call."""
    return best_times([fn], repeat)[0]


def best_times(fns: List[Callable[[], object]], repeat: int) -> List[float]:
    """Best time of each function over `repeat` rounds, the functions taking turns within a
    round: load from other processes then weighs on all of them alike, so that their ratios
    stay fair on a shared machine.  One warm-up call each first (first touch of buffers,
    workspace growth, thread-pool start)."""
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best
