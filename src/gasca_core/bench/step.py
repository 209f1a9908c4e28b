"""Training-step benchmark: the step users run, timed against the same step in PyTorch.

"Ours" is gasca_core.training.Trainer.step itself, in the first phase of a joint run of
the full G and D (--arch: gasca-64 by default, the paper's shapes, which the kernel
benchmarks measure; gasca-64-deep is the training tools' default) with the default
TrainConfig (batch 32, Adam, MSE plus the non-saturating adversarial term at its default
weight): a batch drawn by the trainer's
BatchIterator, then
    D update: G forward (no grad), D forward on targets and on G's outputs, backward, the
              finite checks, Adam
    G update: G forward, D forward (D frozen), reconstruction + adversarial loss, backward
              through D into G, the finite checks, Adam
PyTorch's step does the same work on the same batches (when torch is importable). The two
are timed interleaved, round by round, and the median of the rounds is reported.

    python -m gasca_core.bench.step [--batch 32] [--steps 5] [--rounds 5] [--threads N] [--arch A]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Callable, Optional, Sequence

import numpy as np


def _pairs(batch: int, seed: int):
    """Random training pairs: four batches' worth, in [0, 1]."""
    from ..data import PairDataset
    rng = np.random.default_rng(seed)
    x = rng.random((4 * batch, 1, 64, 64), dtype=np.float32)
    return PairDataset(x, np.ascontiguousarray(x[:, :, :, ::-1]))


# The layer variants --variants times beside the plain step: every level of G's encoder and
# decoder with mirror-symmetric kernels, or with the local+global layer's global path.
VARIANTS = {"symmetric levels 1-3": {"symmetric_levels": [1, 2, 3]},
            "local+global levels 1-3": {"local_global_levels": [1, 2, 3]}}


def _ours_step_fn(batch: int, seed: int = 0, layers: Optional[dict] = None,
                  arch: str = "gasca-64") -> Callable[[], float]:
    from ..models import architecture
    from ..training import Trainer, TrainConfig
    data = _pairs(batch, seed)
    trainer = Trainer(architecture(arch, **(layers or {})),
                      TrainConfig(method="joint", batch_size=batch, seed=seed),
                      data, data, progress=False, log=lambda s: None)
    run = trainer.start_phase(0)
    count = [0]

    def step() -> float:
        x, y, _ = run.batch_at(count[0])
        count[0] += 1
        losses, _ = trainer.step(run, x, y)
        return losses["g_loss"]
    return step


def _torch_models(arch: str):
    """G and D of the named architecture in PyTorch, layer for layer as models.py builds them
    (plain layers, the transposed-convolution decoder)."""
    from torch import nn

    from ..models import architecture
    c = architecture(arch)
    if c.decoder != "transposed":
        raise ValueError(f"the PyTorch step mirrors the transposed-convolution decoder only, "
                         f"not '{c.decoder}'")
    act = {"leaky_relu": lambda: nn.LeakyReLU(c.leaky_slope), "relu": nn.ReLU,
           "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "identity": nn.Identity}
    chans, s = [c.in_channels] + c.channels, c.stride
    enc, dec = [], []
    for i, (k, p) in enumerate(zip(c.kernel_sizes, c.paddings)):
        enc.append(nn.Sequential(nn.Conv2d(chans[i], chans[i + 1], k, s, p),
                                 act[c.hidden_activation]()))
        dec.append(nn.Sequential(
            nn.ConvTranspose2d(chans[i + 1], chans[i], k, s, p, c.output_padding(i + 1)),
            act[c.output_activation if i == 0 else c.hidden_activation]()))
    g = nn.Sequential(*enc, *reversed(dec))
    dchans = [c.in_channels] + c.disc_channels
    size = c.image_size // s**c.levels
    d = nn.Sequential(*[nn.Sequential(nn.Conv2d(dchans[i], dchans[i + 1], k, s, p),
                                      act[c.disc_activation]())
                        for i, (k, p) in enumerate(zip(c.kernel_sizes, c.paddings))],
                      nn.Flatten(), nn.Linear(dchans[-1] * size * size, 1))
    return g, d


def _torch_step_fn(batch: int, seed: int = 0, arch: str = "gasca-64") -> Callable[[], float]:
    import torch
    from torch import nn

    from ..data import BatchIterator
    from ..training import TrainConfig
    tc = TrainConfig(method="joint", batch_size=batch, seed=seed)
    torch.manual_seed(seed)
    g, d = _torch_models(arch)
    betas = (tc.beta1, tc.beta2)
    opt_g = torch.optim.Adam(g.parameters(), lr=tc.lr, betas=betas)
    opt_d = torch.optim.Adam(d.parameters(), lr=tc.d_lr or tc.lr, betas=betas)
    bce = nn.BCEWithLogitsLoss()
    data = _pairs(batch, seed)
    batches = BatchIterator(data, batch, seed=seed, keys=(0,))
    inputs, targets = torch.from_numpy(data.inputs), torch.from_numpy(data.targets)
    count = [0]

    def update(loss, opt, params) -> float:
        value = float(loss.item())
        opt.zero_grad()
        loss.backward()
        if not all(bool(torch.isfinite(p.grad).all()) for p in params if p.grad is not None):
            raise FloatingPointError("non-finite gradient in the PyTorch step")
        opt.step()
        return value

    def step() -> float:
        b, _ = batches.batch_at(count[0])
        count[0] += 1
        idx = torch.from_numpy(b.indices)
        x, y = inputs[idx], targets[idx]
        n = len(idx)
        ones, zeros = torch.ones(n, 1), torch.zeros(n, 1)
        with torch.no_grad():
            fake = g(x)
        update(bce(d(y), ones) + bce(d(fake), zeros), opt_d, list(d.parameters()))
        for p in d.parameters():
            p.requires_grad_(False)
        out = g(x)
        rec = torch.mean((out - y) ** 2)
        adv = bce(d(out), ones)
        value = update(rec + tc.adv_weight * adv, opt_g, list(g.parameters()))
        float(rec.item()), float(adv.item())
        for p in d.parameters():
            p.requires_grad_(True)
        return value
    return step


def _rate(step: Callable[[], float], steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - t0)


def run(batch: int = 32, steps: int = 5, rounds: int = 5, threads: Optional[int] = None,
        use_torch: bool = True, variants: bool = False, out=sys.stdout,
        arch: str = "gasca-64") -> dict:
    """Median steps per second over `rounds` interleaved rounds of `steps` steps each, for
    ours and PyTorch (None when PyTorch is not importable or left out); with `variants`,
    also ours with each of VARIANTS' layers (keys "ours, <variant>")."""
    from .. import backend
    if threads:
        backend.set_num_threads(threads)
    fns = {"ours": _ours_step_fn(batch, arch=arch)}
    if variants:
        for name, layers in VARIANTS.items():
            fns[f"ours, {name}"] = _ours_step_fn(batch, layers=layers, arch=arch)
    res: dict = {"batch": batch, "torch": None}
    if use_torch:
        try:
            import torch
            if threads:
                torch.set_num_threads(threads)
            fns["torch"] = _torch_step_fn(batch, arch=arch)
            res["torch_threads"] = torch.get_num_threads()
        except ImportError:
            pass
    for fn in fns.values():  # warm up: first-touch allocations, thread pools
        fn(), fn()
    rates: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            rates[name].append(_rate(fn, steps))
    for name, r in rates.items():
        res[name] = statistics.median(r)
    print(f"\nthe training step (Trainer.step: D update + G update through D), {arch}, "
          f"batch {batch}; median of {rounds} interleaved rounds of {steps} steps", file=out)
    print(f"  ours     {res['ours']:7.3f} steps/s", file=out)
    for name in fns:
        if name.startswith("ours, "):
            print(f"  {name}: {res[name]:7.3f} steps/s   / plain = "
                  f"{res[name] / res['ours']:.2f}", file=out)
    if res["torch"] is not None:
        print(f"  PyTorch  {res['torch']:7.3f} steps/s   ours/PyTorch = "
              f"{res['ours'] / res['torch']:.2f}", file=out)
    else:
        print("  PyTorch  not installed (or --no-torch): no comparison", file=out)
    return res


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ..training import TrainConfig
    from .layers import add_arch_argument
    p = argparse.ArgumentParser(prog="python -m gasca_core.bench.step", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=TrainConfig.batch_size,
                   help="pairs per step (default: the trainer's, %(default)s)")
    p.add_argument("--steps", type=int, default=5, help="steps per round (default 5)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--threads", type=int, default=None, help="threads for both libraries")
    p.add_argument("--no-torch", action="store_true", help="leave PyTorch out even if importable")
    p.add_argument("--variants", action="store_true",
                   help="also time our step with G's layers replaced, interleaved with the "
                        "others: symmetric kernels at every level (--symmetric-levels 1,2,3), "
                        "and the local+global layer at every level (--local-global-levels 1,2,3)")
    add_arch_argument(p, "the architecture stepped")
    a = p.parse_args(argv)
    if a.batch < 1 or a.steps < 1 or a.rounds < 1:
        p.error("--batch, --steps and --rounds must be >= 1")
    run(a.batch, a.steps, a.rounds, a.threads, use_torch=not a.no_torch, variants=a.variants,
        arch=a.arch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
