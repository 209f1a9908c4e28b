"""Whole-training-step benchmark: one adversarial step of the full gasca-64 G and D.

One step = what every step of a GANGGLW fine-tune or of joint training does:
    D update: G forward (no grad), D forward on targets and on G's outputs, backward, Adam
    G update: G forward, D forward (D frozen), reconstruction + adversarial loss, backward
              through D into G, Adam
Ours and the same network written in PyTorch (when importable) are timed in one run, on the
same data, and compared as steps per second.

    python -m gasca_core.bench_step [--batch 64] [--steps 10] [--threads N]
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Optional, Sequence

import numpy as np


def _ours_step_fn(batch: int, seed: int = 0):
    from .models import GascaConfig, build_full
    from .training.losses import adversarial_loss, discriminator_loss, reconstruction_loss
    from .training.trainer import frozen
    from . import optim
    from .tensor import Tensor, no_grad
    mc = GascaConfig()
    g, d = build_full(mc, seed)
    opt_g = optim.Adam(list(g.parameters()), lr=1e-3)
    opt_d = optim.Adam(list(d.parameters()), lr=1e-3)
    rng = np.random.default_rng(seed)
    x = rng.random((batch, 1, 64, 64)).astype(np.float32)
    y = rng.random((batch, 1, 64, 64)).astype(np.float32)

    def step() -> float:
        with no_grad():
            fake = g(Tensor(x)).data
        ld = discriminator_loss(d(Tensor(y)), d(Tensor(fake)))
        opt_d.zero_grad()
        ld.backward()
        opt_d.step()
        with frozen(d):
            out = g(Tensor(x))
            lg = reconstruction_loss(out, Tensor(y)) + adversarial_loss(d(out)) * 1e-3
            opt_g.zero_grad()
            lg.backward()
            opt_g.step()
        return float(lg.item())
    return step


def _torch_step_fn(batch: int, seed: int = 0):
    import torch
    from torch import nn
    torch.manual_seed(seed)
    chans, ks, pads = [1, 32, 64, 128], [5, 5, 3], [2, 2, 1]
    enc = [nn.Sequential(nn.Conv2d(chans[i], chans[i + 1], ks[i], 2, pads[i]), nn.LeakyReLU(0.2))
           for i in range(3)]
    dec = [nn.Sequential(nn.ConvTranspose2d(chans[i + 1], chans[i], ks[i], 2, pads[i], 1),
                         nn.Sigmoid() if i == 0 else nn.LeakyReLU(0.2)) for i in range(3)]
    g = nn.Sequential(*enc, *reversed(dec))
    d = nn.Sequential(*[nn.Sequential(nn.Conv2d(chans[i], chans[i + 1], ks[i], 2, pads[i]),
                                      nn.LeakyReLU(0.2)) for i in range(3)],
                      nn.Flatten(), nn.Linear(128 * 8 * 8, 1))
    opt_g = torch.optim.Adam(g.parameters(), lr=1e-3)
    opt_d = torch.optim.Adam(d.parameters(), lr=1e-3)
    bce = nn.BCEWithLogitsLoss()
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.random((batch, 1, 64, 64)).astype(np.float32))
    y = torch.from_numpy(rng.random((batch, 1, 64, 64)).astype(np.float32))
    ones, zeros = torch.ones(batch, 1), torch.zeros(batch, 1)

    def step() -> float:
        with torch.no_grad():
            fake = g(x)
        ld = bce(d(y), ones) + bce(d(fake), zeros)
        opt_d.zero_grad()
        ld.backward()
        opt_d.step()
        for p in d.parameters():
            p.requires_grad_(False)
        out = g(x)
        lg = torch.mean((out - y) ** 2) + 1e-3 * bce(d(out), ones)
        opt_g.zero_grad()
        lg.backward()
        opt_g.step()
        for p in d.parameters():
            p.requires_grad_(True)
        return float(lg.item())
    return step


def _time(step, steps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - t0)


def run(batch: int = 64, steps: int = 10, threads: Optional[int] = None,
        use_torch: bool = True, out=sys.stdout) -> dict:
    """Steps per second for ours and PyTorch (None when PyTorch is not importable)."""
    from . import backend
    if threads:
        backend.set_num_threads(threads)
    res = {"batch": batch, "ours": _time(_ours_step_fn(batch), steps), "torch": None}
    try:
        if not use_torch:
            raise ImportError("left out by request")
        import torch
        if threads:
            torch.set_num_threads(threads)
        res["torch"] = _time(_torch_step_fn(batch), steps)
        res["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    print(f"\nwhole gasca-64 training step (D update + G update through D), batch {batch}, "
          f"{steps} timed steps", file=out)
    print(f"  ours     {res['ours']:7.3f} steps/s", file=out)
    if res["torch"] is not None:
        print(f"  PyTorch  {res['torch']:7.3f} steps/s   ours/PyTorch = {res['ours'] / res['torch']:.2f}",
              file=out)
    else:
        print("  PyTorch  not installed (or --no-torch): no comparison", file=out)
    return res


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gasca_core.bench_step", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-torch", action="store_true", help="leave PyTorch out even if importable")
    a = p.parse_args(argv)
    if a.batch < 1 or a.steps < 1:
        p.error("--batch and --steps must be >= 1")
    run(a.batch, a.steps, a.threads, use_torch=not a.no_torch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
