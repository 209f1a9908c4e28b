"""The symmetry convolution against the plain one on gasca-64's layer 2 (32 -> 64 channels,
5x5, stride 2, padding 2, 32x32 input, batch 64, float32): seconds per pass of symconv2d
version 1 (mirrored input pairs summed, then one half-width gemm) and of conv2d version 2
(the fastest plain kernel; with a mirrored full kernel it is also the parameterised form),
as medians over interleaved rounds (gasca_core.bench.layers.round_times).

    PYTHONPATH=src python tools/bench_symconv2d.py [--rounds 9] [--batch 64] [--threads 1]

The figure is quoted atop cpp/symconv2d.cpp.  GFLOP/s are counted as the plain convolution's
work (2 x its multiply-adds) for both, so they compare time for the same result."""
from __future__ import annotations

import argparse
import statistics

import numpy as np

from gasca_core import _C
from gasca_core.bench.layers import round_times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=None,
                   help="threads of the kernels (default: gasca_core's, one per core)")
    args = p.parse_args()
    if args.threads:
        _C.set_num_threads(args.threads)
    n, ci, co, h, k, s, pad = args.batch, 32, 64, 32, 5, 2, 2
    oh = (h + 2 * pad - k) // s + 1
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, ci, h, h)).astype(np.float32)
    wh = rng.standard_normal((co, ci, k, (k + 1) // 2)).astype(np.float32)
    wf = np.ascontiguousarray(wh[..., [min(j, k - 1 - j) for j in range(k)]])
    b = np.zeros(co, np.float32)
    dy = rng.standard_normal((n, co, oh, oh)).astype(np.float32)
    y, dx, dwh, dwf = (np.empty((n, co, oh, oh), np.float32), np.empty_like(x),
                       np.empty_like(wh), np.empty_like(wf))
    passes = {
        "forward": (lambda: _C.symconv2d_forward(x, wh, b, y, k, s, pad, 1, version=1),
                    lambda: _C.conv2d_forward(x, wf, b, y, s, pad, 1, version=2)),
        "backward-input": (lambda: _C.symconv2d_backward_input(dy, wh, dx, k, s, pad, 1, version=1),
                           lambda: _C.conv2d_backward_input(dy, wf, dx, s, pad, 1, version=2)),
        "backward-weight": (lambda: _C.symconv2d_backward_weight(x, dy, dwh, k, s, pad, 1, version=1),
                            lambda: _C.conv2d_backward_weight(x, dy, dwf, s, pad, 1, version=2)),
    }
    flops = 2.0 * n * co * ci * k * k * oh * oh
    print(f"layer 2: x {x.shape}, weight {wf.shape} (plain: {wf.size} weights) vs "
          f"{wh.shape} (symmetric: {wh.size}), {_C.get_num_threads()} threads, "
          f"median of {args.rounds} interleaved rounds")
    total = [0.0, 0.0]
    for name, (sym, plain) in passes.items():
        t_sym, t_plain = (statistics.median(t) for t in round_times([sym, plain], args.rounds))
        total[0] += t_sym
        total[1] += t_plain
        print(f"  {name:16s} symconv2d v1 {t_sym * 1e3:7.2f} ms ({flops / t_sym / 1e9:6.1f} GFLOP/s)"
              f"   conv2d v2 {t_plain * 1e3:7.2f} ms ({flops / t_plain / 1e9:6.1f} GFLOP/s)"
              f"   ratio {t_plain / t_sym:.2f}x")
    print(f"  {'all three':16s} symconv2d v1 {total[0] * 1e3:7.2f} ms"
          f"{'':20s} conv2d v2 {total[1] * 1e3:7.2f} ms{'':19s} ratio {total[1] / total[0]:.2f}x")


if __name__ == "__main__":
    main()
