"""What the kernel benchmarks share (bench.kernels, bench.ladder): the gasca-64 layers they
time (and any named architecture's, `arch_layers`), the names of the six passes, and fair timing of several functions at once: the best
of interleaved calls (`best_times`), or per-round times of interleaved rounds whose median
is reported (`round_times`, `median_ratio`)."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, List, Sequence


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

    @property
    def output_padding(self) -> int:
        """The mirror transposed convolution's output_padding: what brings its output from
        `out` back to `size` (1 for gasca-64's layers, 0 for kernels of size 4)."""
        return self.size - ((self.out - 1) * self.stride - 2 * self.pad + self.k)

    def flops(self, batch: int) -> float:
        return 2.0 * batch * self.cout * self.cin * self.k * self.k * self.out * self.out


LAYERS = {
    1: Layer("layer 1: conv 1->32 k5 s2 p2, 64x64", 1, 64, 32, 5, 2, 2),
    2: Layer("layer 2: conv 32->64 k5 s2 p2, 32x32", 32, 32, 64, 5, 2, 2),
    3: Layer("layer 3: conv 64->128 k3 s2 p1, 16x16", 64, 16, 128, 3, 2, 1),
}


def add_arch_argument(parser, what: str) -> None:
    """--arch for the benchmarks: a named architecture (models.ARCHITECTURES), gasca-64 by
    default whatever the training tools' default is; `what` says what it applies to."""
    from ..models import ARCHITECTURES, DEFAULT_ARCHITECTURE
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), default="gasca-64",
                        help=f"{what} (default gasca-64, the paper's shapes; the training "
                             f"tools' default is {DEFAULT_ARCHITECTURE})")


def arch_layers(arch: str) -> dict:
    """The encoder convolutions of a named architecture (models.ARCHITECTURES), numbered
    from 1 like LAYERS; arch_layers("gasca-64") is LAYERS."""
    from ..models import architecture
    c = architecture(arch)
    chans, size, out = [c.in_channels] + c.channels, c.image_size, {}
    for i, (k, p) in enumerate(zip(c.kernel_sizes, c.paddings)):
        L = Layer(f"layer {i + 1}: conv {chans[i]}->{chans[i + 1]} k{k} s{c.stride} p{p}, "
                  f"{size}x{size}", chans[i], size, chans[i + 1], k, c.stride, p)
        out[i + 1] = L
        size = L.out
    return out


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


def round_times(fns: Sequence[Callable[[], object]], rounds: int, min_turn_s: float = 0.02,
                settle_s: float = 0.2) -> List[List[float]]:
    """Seconds per call of each function in each of `rounds` rounds: ``times[i][r]``.

    Within a round the functions take turns, so that load from other processes weighs on
    all of them alike.  A turn is `calls` calls in a row, `calls` chosen from the warm-up
    so that the fastest function's turn lasts about `min_turn_s` (one call of a few
    milliseconds is at the mercy of a single interruption); every function makes the same
    number of calls.  Before each turn the timer sleeps `settle_s` (not timed): a thread pool
    keeps its threads spinning for a while after its work ends, and with three libraries
    there are three pools (ours, PyTorch's, and the OpenBLAS pool behind NumPy's matmul),
    so the pool of the function before would take a core from the function timed next.
    Measured on the 2-core machine: after a NumPy matmul turn, a turn that follows within
    5 ms ran at half speed (65 GFLOP/s for 132 on layer 3's forward); after 0.2 s it ran at
    full speed.  OpenBLAS's threads spin longest, hence the default."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    warm = []
    for fn in fns:                       # warm-up: first touch, workspace growth, pools
        fn()
        t0 = time.perf_counter()
        fn()
        warm.append(time.perf_counter() - t0)
    calls = max(1, int(min_turn_s / max(min(warm), 1e-9) + 0.5))
    times: List[List[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            if settle_s > 0:
                time.sleep(settle_s)
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            times[i].append((time.perf_counter() - t0) / calls)
    return times


def median_ratio(base: Sequence[float], other: Sequence[float]) -> float:
    """The median over rounds of base[r] / other[r]: how many times faster `other` ran than
    `base` in the same round (both lists from one `round_times` call)."""
    if len(base) != len(other) or not base:
        raise ValueError("median_ratio needs two equally long, non-empty lists of round times")
    return statistics.median(b / o for b, o in zip(base, other))
