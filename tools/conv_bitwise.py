#!/usr/bin/env python3
"""tools/conv_bitwise.py: are two builds of gasca_core._C bit for bit the same on the
convolutions?  Runs every conv2d / conv_transpose2d pass (forward with bias, backward-input,
backward-weight, and the bias gradient), every CPU version, float32 and float64, on the
gasca-64 layer shapes at batch 32 and on a few random geometries, once with each build,
and compares the outputs with np.array_equal.

    python tools/conv_bitwise.py --ref-python /work/venv_ref/bin/python
    python tools/conv_bitwise.py --ref-python OLD/bin/python --new-path src --threads 2

Each build runs in its own child interpreter (two extensions named gasca_core._C cannot
share one process): the reference with `--ref-python` and its installed gasca_core, the
new one with this interpreter and `--new-path` (default: the worktree's src/) first on
sys.path.  The inputs are drawn once, here, and handed to both children in a file, so that
the two sides see the same bits even under different NumPy versions.  Both use the same
thread count (version 2's weight gradient sums per-thread partials, so its rounding
depends on how the batch is split between threads, not on timing).  Nothing is timed.
Exit status 0 when every output is identical.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# name: (N, Ci, H, W, Co, KH, KW, stride, padding, dilation, output_padding of the
# transposed convolution that maps the conv's output back onto (H, W))
GASCA64 = {
    "layer1 1x64x64->32 k5 s2 p2": (32, 1, 64, 64, 32, 5, 5, (2, 2), (2, 2), (1, 1), (1, 1)),
    "layer2 32x32x32->64 k5 s2 p2": (32, 32, 32, 32, 64, 5, 5, (2, 2), (2, 2), (1, 1), (1, 1)),
    "layer3 64x16x16->128 k3 s2 p1": (32, 64, 16, 16, 128, 3, 3, (2, 2), (1, 1), (1, 1), (1, 1)),
}


def out_size(h, k, s, p, d):
    return (h + 2 * p - d * (k - 1) - 1) // s + 1


def random_geometries(count: int, seed: int) -> dict:
    """Random geometries with a non-empty output, and the output_padding that makes the
    transposed convolution map the conv's output back onto (H, W) (always < stride)."""
    rng = np.random.default_rng(seed)
    out = {}
    while len(out) < count:
        n, ci, co = (int(v) for v in rng.integers(1, 9, size=3))
        kh, kw = (int(v) for v in rng.integers(1, 6, size=2))
        s = tuple(int(v) for v in rng.integers(1, 4, size=2))
        p = tuple(int(v) for v in rng.integers(0, 3, size=2))
        d = tuple(int(v) for v in rng.integers(1, 3, size=2))
        h, w = (int(v) for v in rng.integers(1, 40, size=2))
        oh, ow = out_size(h, kh, s[0], p[0], d[0]), out_size(w, kw, s[1], p[1], d[1])
        if oh <= 0 or ow <= 0:
            continue
        op = (h - ((oh - 1) * s[0] - 2 * p[0] + d[0] * (kh - 1) + 1),
              w - ((ow - 1) * s[1] - 2 * p[1] + d[1] * (kw - 1) + 1))
        out[f"random{len(out)} {n}x{ci}x{h}x{w}->{co} k{kh}x{kw} s{s} p{p} d{d}"] = (
            n, ci, h, w, co, kh, kw, s, p, d, op)
    return out


# Shapes that take version 2's other paths: output rows of 16/32 pixels (the implicit-gemm
# forward), half vectors (8), a tiny weight (the dot-product weight gradient), huge
# strides/paddings (the im2col fallback).
EXTRA = {
    "implicit 16-wide rows": (4, 8, 20, 32, 12, 3, 3, (1, 2), (1, 1), (1, 1), (0, 1)),
    "half-vector rows": (6, 16, 16, 16, 24, 3, 3, (2, 2), (1, 1), (1, 1), (1, 1)),
    "huge stride and padding (fallback)": (1, 4, 1, 1, 1, 2, 1, (2**29, 2**29),
                                           (2**30, 2**30 - 1), (2**30 - 1, 1), None),
}


def cases() -> dict:
    all_cases = dict(GASCA64)
    all_cases.update(random_geometries(8, seed=2024))
    all_cases.update(EXTRA)
    return all_cases


def draw_inputs(path: Path) -> None:
    rng = np.random.default_rng(12345)
    arrays = {}
    for name, (n, ci, h, w, co, kh, kw, s, p, d, _) in cases().items():
        oh, ow = out_size(h, kh, s[0], p[0], d[0]), out_size(w, kw, s[1], p[1], d[1])
        for dt in ("float32", "float64"):
            scale = 1.0 / np.sqrt(ci * kh * kw)
            arrays[f"{name}|{dt}|x"] = rng.standard_normal((n, ci, h, w)).astype(dt)
            arrays[f"{name}|{dt}|w"] = (rng.standard_normal((co, ci, kh, kw)) * scale).astype(dt)
            arrays[f"{name}|{dt}|b"] = rng.standard_normal(co).astype(dt)
            arrays[f"{name}|{dt}|bt"] = rng.standard_normal(ci).astype(dt)
            arrays[f"{name}|{dt}|dy"] = rng.standard_normal((n, co, oh, ow)).astype(dt)
    np.savez(path, **arrays)


def child(inputs: Path, output: Path, threads: int) -> None:
    """Run every pass with the gasca_core._C this interpreter imports; save the outputs."""
    from gasca_core import _C
    print(f"  {_C.__file__}", flush=True)
    _C.set_num_threads(threads)
    src = np.load(inputs)
    versions = range(len(_C.versions()["conv2d"]))
    res = {}
    for name, (n, ci, h, w, co, kh, kw, s, p, d, op) in cases().items():
        for dt in ("float32", "float64"):
            x, wt, b, bt, dy = (src[f"{name}|{dt}|{k}"] for k in ("x", "w", "b", "bt", "dy"))
            for v in versions:
                key = f"{name}|{dt}|v{v}"
                y = np.empty_like(dy)
                _C.conv2d_forward(x, wt, b, y, s, p, d, version=v)
                dx = np.empty_like(x)
                _C.conv2d_backward_input(dy, wt, dx, s, p, d, version=v)
                dw = np.empty_like(wt)
                _C.conv2d_backward_weight(x, dy, dw, s, p, d, version=v)
                res.update({f"{key}|conv fwd": y, f"{key}|conv bwd-in": dx, f"{key}|conv bwd-w": dw})
                if op is None:
                    continue
                # The transposed convolution that maps dy's shape back onto x's: input dy,
                # weight (Co, Ci, KH, KW) read as (C_in, C_out, KH, KW), output x's shape.
                t = np.empty_like(x)
                _C.conv_transpose2d_forward(dy, wt, bt, t, s, p, op, d, version=v)
                tdx = np.empty_like(dy)
                _C.conv_transpose2d_backward_input(x, wt, tdx, s, p, op, d, version=v)
                tdw = np.empty_like(wt)
                _C.conv_transpose2d_backward_weight(dy, x, tdw, s, p, op, d, version=v)
                res.update({f"{key}|convT fwd": t, f"{key}|convT bwd-in": tdx, f"{key}|convT bwd-w": tdw})
            db = np.empty_like(b)
            _C.conv2d_backward_bias(dy, db)
            res[f"{name}|{dt}|bias grad"] = db
    np.savez(output, **res)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ref-python", default="/work/venv_ref/bin/python",
                    help="interpreter whose installed gasca_core._C is the reference")
    ap.add_argument("--new-path", default=str(ROOT / "src"),
                    help="directory put first on sys.path for the new build (holds gasca_core/)")
    ap.add_argument("--threads", type=int, default=2, help="kernel threads, the same for both")
    ap.add_argument("--child", nargs=2, metavar=("INPUTS", "OUTPUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(Path(args.child[0]), Path(args.child[1]), args.threads)
        return 0

    with tempfile.TemporaryDirectory(prefix="conv_bitwise_") as tmp:
        tmp = Path(tmp)
        draw_inputs(tmp / "inputs.npz")
        runs = {"reference": (args.ref_python, {}),
                "new": (sys.executable, {"PYTHONPATH": os.path.abspath(args.new_path)})}
        for label, (python, extra) in runs.items():
            print(f"{label}:", flush=True)
            env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
            env.update(extra)
            subprocess.run([python, str(Path(__file__).resolve()), "--threads", str(args.threads),
                            "--child", str(tmp / "inputs.npz"), str(tmp / f"{label}.npz")],
                           env=env, cwd=tmp, check=True)
        ref, new = np.load(tmp / "reference.npz"), np.load(tmp / "new.npz")
        if set(ref.files) != set(new.files):
            print(f"different outputs: only in reference {sorted(set(ref.files) - set(new.files))}, "
                  f"only in new {sorted(set(new.files) - set(ref.files))}")
            return 1
        differ = [k for k in ref.files if not np.array_equal(ref[k], new[k], equal_nan=True)]
        for k in differ:
            diff = np.abs(ref[k].astype(np.float64) - new[k].astype(np.float64))
            print(f"DIFFERENT  {k}: {int((diff != 0).sum())} of {diff.size} elements, "
                  f"max |diff| {diff.max():.3g}")
        print(f"{len(ref.files) - len(differ)} of {len(ref.files)} outputs bit for bit identical "
              f"({len(cases())} geometries, float32 and float64, every version)")
        return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
