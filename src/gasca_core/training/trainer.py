"""One training loop for the three methods: GANGGLW, vanilla joint training, plain greedy.

A run is a list of *phases*, planned up front from the method and the budget (see
`plan_phases`), then executed in order by one loop (`Trainer._run_phase`).  A phase says
which networks move, against which discriminator, on which data:

    kind        G side trained         D side trained        data
    greedy      the new level G^k      the new level D^k     codes after k-1 encoders (pixels for k=1)
    finetune_g  the whole G            nothing (D frozen)    pixels
    finetune_d  nothing (G frozen)     the whole D           pixels (G's outputs as fakes)
    joint       the whole G            the whole D           pixels

    ganglw: greedy-1, then for k = 2..m: greedy-k, finetune_g-k, finetune_d-k
    glw:    greedy-1 .. greedy-m           (stacking without the gradual fine-tuning)
    joint:  joint (all m levels built at once, trained from scratch)

In a phase that trains both sides, every step first updates D once (or `d_steps` times) on
a batch of real targets and the generator's current outputs, then updates G on the same
batch against the just-updated D.  Each phase starts fresh Adam optimizers for the
parameters it moves.

Everything a resume needs (parameters, optimizer states, phase, step, counters, elapsed
time, best validation MSE, configs) is in the checkpoint.  Batches are a pure function of
(seed, phase, epoch), so a resumed run draws exactly the batches an uninterrupted one would.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import numpy as np

from .. import backend, nn, optim
from ..metrics import summarize
from ..models import (DiscriminatorLevel, Discriminator, GascaConfig, Generator,
                      ShallowAutoencoder, level_rng)
from ..tensor import Tensor, no_grad
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .losses import (ADV_LOSSES, REC_LOSSES, adversarial_loss, discriminator_loss,
                     reconstruction_loss)

METHODS = ("ganglw", "joint", "glw")
PHASE_KINDS = ("greedy", "finetune_g", "finetune_d", "joint")


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss or gradient (the run stops; the last good
    checkpoint is left as it was)."""


# ----------------------------------------------------------------------------- configs


@dataclass
class TrainConfig:
    """How to train (everything but the architecture).  Saved with every checkpoint."""
    method: str = "ganglw"
    steps: Optional[int] = 3000         # G-update budget for the whole run, shared out over phases
    epochs: int = 5                     # per greedy stage / joint run, when steps is None
    finetune_epochs: int = 5            # per fine-tune phase, when steps is None
    finetune_share: float = 0.7         # ganglw: share of the G budget given to the fine-tunes
    d_finetune_ratio: float = 0.25      # ganglw: D fine-tune steps per G fine-tune step
    batch_size: int = 32
    lr: float = 1e-3                    # Adam learning rate of G
    d_lr: Optional[float] = None        # Adam learning rate of D (default: lr)
    beta1: float = 0.9
    beta2: float = 0.999
    rec_loss: str = "mse"
    rec_weight: float = 1.0
    adv_loss: str = "non_saturating"
    adv_weight: float = 1e-4            # measured: 1e-3 raised joint test MSE 0.0046 -> 0.0056 (README)
    d_steps: int = 1                    # D updates per G update in adversarial phases
    seed: int = 0
    eval_every: Optional[int] = None    # steps between validations (default: one epoch, at most 200)
    eval_max: int = 512                 # validation pairs used for the periodic metrics
    checkpoint_every: int = 200         # steps between 'latest' checkpoints (plus every validation)
    on_nonfinite: str = "stop"          # "stop" the run, or "skip" the step
    max_skips: int = 20                 # consecutive skipped steps before stopping anyway
    time_budget: Optional[float] = None  # seconds for the whole run, shared out like the steps
    device: str = "cpu"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(msg)
        need(self.method in METHODS, f"method must be one of {METHODS}, got '{self.method}'")
        need(self.steps is None or self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        need(self.epochs >= 1 and self.finetune_epochs >= 0,
             f"epochs must be >= 1 and finetune_epochs >= 0, got {self.epochs}, {self.finetune_epochs}")
        need(0.0 <= self.finetune_share < 1.0, f"finetune_share must be in [0, 1), got {self.finetune_share}")
        need(self.d_finetune_ratio >= 0, f"d_finetune_ratio must be >= 0, got {self.d_finetune_ratio}")
        need(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        need(self.lr > 0 and (self.d_lr is None or self.d_lr > 0), "learning rates must be > 0")
        need(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "Adam betas must be in [0, 1)")
        need(self.rec_loss in REC_LOSSES, f"rec_loss must be one of {REC_LOSSES}, got '{self.rec_loss}'")
        need(self.adv_loss in ADV_LOSSES, f"adv_loss must be one of {ADV_LOSSES}, got '{self.adv_loss}'")
        need(self.rec_weight >= 0 and self.adv_weight >= 0, "loss weights must be >= 0")
        need(self.d_steps >= 1, f"d_steps must be >= 1, got {self.d_steps}")
        need(self.eval_every is None or self.eval_every >= 1, "eval_every must be >= 1")
        need(self.eval_max >= 1 and self.checkpoint_every >= 1, "eval_max and checkpoint_every must be >= 1")
        need(self.on_nonfinite in ("stop", "skip"), f"on_nonfinite must be 'stop' or 'skip', got '{self.on_nonfinite}'")
        need(self.time_budget is None or self.time_budget > 0, "time_budget must be > 0 seconds")
        need(self.device in ("cpu", "cuda"), f"device must be 'cpu' or 'cuda', got '{self.device}'")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class Phase:
    name: str               # e.g. "greedy-2", "finetune_g-2"
    kind: str               # one of PHASE_KINDS
    level: int              # greedy: the level trained; otherwise the depth of G and D
    steps: int              # planned updates (G updates; D updates for finetune_d)
    time_share: float = 0.0  # share of TrainConfig.time_budget, when one is set

    @property
    def trains_g(self) -> bool:
        return self.kind in ("greedy", "finetune_g", "joint")

    @property
    def trains_d(self) -> bool:
        return self.kind in ("greedy", "finetune_d", "joint")


def plan_phases(method: str, levels: int, cfg: TrainConfig, n_train: int) -> list[Phase]:
    """The phases of a run, with their step counts.

    With a step budget B (cfg.steps), every method makes B generator updates in all:
    joint all B in one phase; glw B/m per greedy stage; ganglw (1 - f) B / m per greedy
    stage and f B / (m - 1) per G fine-tune (f = finetune_share), plus
    d_finetune_ratio times as many D updates in each D fine-tune.  Without a budget, each
    greedy stage (and the joint run) lasts `epochs` passes over the training pairs and each
    fine-tune `finetune_epochs` passes.
    """
    epoch = max(1, math.ceil(n_train / cfg.batch_size))
    m = levels

    def split(total: int, parts: int) -> list[int]:
        base = [total // parts] * parts
        for i in range(total - sum(base)):
            base[i] += 1
        return [max(1, b) for b in base]

    phases: list[Phase] = []
    if method == "joint":
        phases = [Phase(f"joint-{m}", "joint", m, cfg.steps if cfg.steps else cfg.epochs * epoch)]
    elif method == "glw":
        steps = split(cfg.steps, m) if cfg.steps else [cfg.epochs * epoch] * m
        phases = [Phase(f"greedy-{k}", "greedy", k, steps[k - 1]) for k in range(1, m + 1)]
    elif method == "ganglw":
        if cfg.steps:
            f = cfg.finetune_share if m > 1 else 0.0
            ft_total = int(round(cfg.steps * f))
            greedy = split(cfg.steps - ft_total, m)
            fine = split(ft_total, m - 1) if m > 1 else []
        else:
            greedy = [cfg.epochs * epoch] * m
            fine = [max(1, cfg.finetune_epochs * epoch)] * (m - 1)
        phases.append(Phase("greedy-1", "greedy", 1, greedy[0]))
        for k in range(2, m + 1):
            g_ft = fine[k - 2]
            phases += [Phase(f"greedy-{k}", "greedy", k, greedy[k - 1]),
                       Phase(f"finetune_g-{k}", "finetune_g", k, g_ft),
                       Phase(f"finetune_d-{k}", "finetune_d", k,
                             max(1, int(round(cfg.d_finetune_ratio * g_ft))))]
    else:
        raise ValueError(f"method must be one of {METHODS}, got '{method}'")
    # Time shares follow the G-update shares; D fine-tunes take their share of the G one.
    total = sum(p.steps for p in phases if p.trains_g) or 1
    for p in phases:
        ref = p.steps if p.trains_g else p.steps * 0.5
        p.time_share = ref / total
    return phases


# ----------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def frozen(module: Optional[nn.Module]) -> Iterator[None]:
    """Parameters of `module` stop requiring grad inside the block (gradients still flow
    through the module to its input; its own weights just get none)."""
    if module is None:
        yield
        return
    params = list(module.parameters())
    before = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, b in zip(params, before):
            p.requires_grad_(b)


def batched_apply(fn: Callable[[Tensor], Tensor], x, batch_size: int = 256):
    """fn over the first axis of array x in batches, without recording a graph."""
    xp = backend.get_array_module(x)
    outs = []
    with no_grad():
        for i in range(0, len(x), batch_size):
            outs.append(fn(Tensor(x[i:i + batch_size])).data)
    return xp.concatenate(outs) if outs else x[:0]


def _finite(value: float) -> bool:
    return math.isfinite(value)


def _grads_finite(params: list) -> bool:
    for p in params:
        if p.grad is not None:
            xp = backend.get_array_module(p.grad)
            if not bool(xp.isfinite(p.grad).all()):
                return False
    return True


def _host(a) -> np.ndarray:
    return a.get() if hasattr(a, "get") else np.asarray(a)


# ----------------------------------------------------------------------------- trainer


@dataclass
class PairData:
    """Aligned (input, target) images, (N, C, H, W) float32 in [0, 1], and optional labels."""
    inputs: Any
    targets: Any
    labels: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.inputs.shape != self.targets.shape or self.inputs.ndim != 4:
            raise ValueError(f"inputs and targets must be (N, C, H, W) arrays of one shape, "
                             f"got {self.inputs.shape} and {self.targets.shape}")
        if len(self.inputs) == 0:
            raise ValueError("a data split is empty")

    def __len__(self) -> int:
        return len(self.inputs)

    @classmethod
    def from_dataset(cls, ds: Any) -> "PairData":
        labels = getattr(ds, "labels", None) or {}
        return cls(np.ascontiguousarray(ds.inputs, dtype=np.float32),
                   np.ascontiguousarray(ds.targets, dtype=np.float32), dict(labels))


class Trainer:
    """Trains a GASCA model by GANGGLW, joint training or plain greedy layer-wise training.

    out_dir receives: latest.npz and best.npz checkpoints, metrics.jsonl (one record per
    validation), grid_<phase>.png image grids (rows: input, reconstruction, target) and,
    where matplotlib is installed, loss_curve.png.
    """

    def __init__(self, model_config: GascaConfig, train_config: TrainConfig,
                 train: PairData, val: PairData, out_dir: Optional[str] = None,
                 progress: bool = True, log: Callable[[str], None] = print) -> None:
        self.mc, self.tc = model_config, train_config
        if train.inputs.shape[1:] != (model_config.in_channels, model_config.image_size,
                                      model_config.image_size):
            raise ValueError(
                f"training images are {train.inputs.shape[1:]}, the model expects "
                f"{(model_config.in_channels, model_config.image_size, model_config.image_size)}")
        self.device = train_config.device
        if self.device == "cuda":
            backend.require_cuda()
        self.xp = backend.get_array_module(self.device)
        self.train_data = PairData(backend.to_device(train.inputs, self.device),
                                   backend.to_device(train.targets, self.device), train.labels)
        self.val_data = PairData(backend.to_device(val.inputs, self.device),
                                 backend.to_device(val.targets, self.device), val.labels)
        self.out_dir = out_dir
        self.progress, self.log = progress, log
        self.phases = plan_phases(train_config.method, model_config.levels, train_config, len(train))
        self.G, self.D = Generator(model_config), Discriminator(model_config)
        self.phase_index, self.phase_step = 0, 0
        self.counters = {"global_step": 0, "g_updates": 0, "d_updates": 0, "skipped": 0}
        self.elapsed = 0.0
        self.best_val_mse = math.inf
        self.history: list[dict] = []
        self._opt_states: dict[str, Any] = {}
        # Hooks, called as hook(trainer, phase_index): after each step, at each phase's
        # start (structure built, nothing trained) and end.  Used by tests and tools.
        self.on_step: list[Callable[["Trainer", int], None]] = []
        self.on_phase_start: list[Callable[["Trainer", int], None]] = []
        self.on_phase_end: list[Callable[["Trainer", int], None]] = []

    # ---------------------------------------------------------------- structure

    def _grow_to(self, phase: Phase) -> None:
        """Build levels up to the phase's level (a greedy stage inserts its new level)."""
        while self.G.depth < phase.level:
            k = self.G.depth + 1
            g = ShallowAutoencoder(self.mc, k, level_rng(self.tc.seed, "G", k)).to(self.device)
            d = DiscriminatorLevel(self.mc, k, level_rng(self.tc.seed, "D", k)).to(self.device)
            self.G.insert_level(g)
            self.D.add_level(d)
        if self.D.depth < phase.level:  # pragma: no cover - G and D grow together
            raise RuntimeError("discriminator and generator depths disagree")

    def _phase_parts(self, phase: Phase):
        """(generator part, discriminator part, train data, val data) of a phase."""
        if phase.kind == "greedy":
            k = phase.level
            g = list(self.G.levels)[k - 1]
            d = self._d_level(k)
            if k == 1:
                return g, d, self.train_data, self.val_data
            enc = lambda t: self.G.encode(t, depth=k - 1)  # noqa: E731
            tr = PairData(batched_apply(enc, self.train_data.inputs),
                          batched_apply(enc, self.train_data.targets))
            va = PairData(batched_apply(enc, self.val_data.inputs[:self.tc.eval_max]),
                          batched_apply(enc, self.val_data.targets[:self.tc.eval_max]))
            return g, d, tr, va
        return self.G, self.D, self.train_data, self.val_data

    def _d_level(self, k: int) -> nn.Module:
        """D^k as a network of its own: conv_k then the head of level k (only while k is
        the top level does D's head belong to it)."""
        conv = list(self.D.convs)[k - 1]
        if k != self.D.depth:
            raise RuntimeError(f"D^{k} is only defined while it is the top level")
        return nn.Sequential(conv, self.D.head)

    def _optimizers(self, phase: Phase, g: nn.Module, d: nn.Module):
        tc = self.tc
        opt_g = optim.Adam(list(g.parameters()), lr=tc.lr, betas=(tc.beta1, tc.beta2)) \
            if phase.trains_g else None
        opt_d = optim.Adam(list(d.parameters()), lr=tc.d_lr or tc.lr, betas=(tc.beta1, tc.beta2)) \
            if phase.trains_d else None
        return opt_g, opt_d

    # ---------------------------------------------------------------- batches

    def _batch(self, data: PairData, phase_idx: int, step: int):
        """The batch of a given step: a pure function of (seed, phase, epoch, position)."""
        n, bs = len(data), self.tc.batch_size
        per_epoch = max(1, math.ceil(n / bs))
        epoch, pos = divmod(step, per_epoch)
        perm = np.random.default_rng([self.tc.seed, 7, phase_idx, epoch]).permutation(n)
        idx = perm[pos * bs:(pos + 1) * bs]
        if self.device == "cuda":
            idx = backend.to_device(idx, "cuda")
        return data.inputs[idx], data.targets[idx], epoch

    # ---------------------------------------------------------------- one update each

    def _d_update(self, g, d, opt_d, x, y) -> tuple[float, bool]:
        with no_grad():
            fake = g(Tensor(x)).data
        loss = discriminator_loss(d(Tensor(y)), d(Tensor(fake)))
        return self._apply(loss, opt_d, "D loss")

    def _g_update(self, g, d, opt_g, x, y, use_adv: bool) -> tuple[dict, bool]:
        tc = self.tc
        with frozen(d if use_adv else None):
            out = g(Tensor(x))
            rec = reconstruction_loss(out, Tensor(y), tc.rec_loss)
            loss = rec * tc.rec_weight if tc.rec_weight != 1.0 else rec
            adv = None
            if use_adv:
                adv = adversarial_loss(d(out), tc.adv_loss)
                loss = loss + adv * tc.adv_weight
            value, ok = self._apply(loss, opt_g, "G loss")
        parts = {"g_loss": value, "rec_loss": float(rec.item())}
        if adv is not None:
            parts["adv_loss"] = float(adv.item())
        return parts, ok

    def _apply(self, loss: Tensor, opt, name: str) -> tuple[float, bool]:
        """Backward and step, unless the loss or a gradient is not finite."""
        value = float(loss.item())
        opt.zero_grad()
        ok = _finite(value)
        if ok:
            loss.backward()
            params = [p for group in opt.param_groups for p in group["params"]]
            ok = _grads_finite(params)
            if not ok:
                name = f"gradient of the {name}"
        if ok:
            opt.step()
            return value, True
        opt.zero_grad()
        where = (f"phase {self.phases[self.phase_index].name} (#{self.phase_index + 1}), "
                 f"step {self.phase_step + 1}, global step {self.counters['global_step'] + 1}")
        if self.tc.on_nonfinite == "stop":
            raise NonFiniteLossError(
                f"non-finite {name} ({value}) in {where}; the last good checkpoint is left as "
                f"it was. Try a lower --lr, or --on-nonfinite skip.")
        self.counters["skipped"] += 1
        self._consecutive_skips += 1
        self.log(f"warning: skipped a step: non-finite {name} ({value}) in {where}")
        if self._consecutive_skips > self.tc.max_skips:
            raise NonFiniteLossError(
                f"{self._consecutive_skips} consecutive non-finite steps, the last in {where}: "
                f"training has diverged")
        return value, False

    # ---------------------------------------------------------------- validation

    def evaluate(self, max_items: Optional[int] = None) -> dict:
        """Pixel-level metrics of the current G on the validation pairs."""
        n = len(self.val_data) if max_items is None else min(max_items, len(self.val_data))
        x, y = self.val_data.inputs[:n], self.val_data.targets[:n]
        self.G.eval()
        out = batched_apply(self.G, x)
        self.G.train()
        return {f"val_{k}": v for k, v in summarize(out, y).items()}

    def _phase_validation(self, g, d, va: PairData) -> dict:
        n = min(self.tc.eval_max, len(va))
        x, y = va.inputs[:n], va.targets[:n]
        out = batched_apply(g, x)
        rec = float(reconstruction_loss(Tensor(out), Tensor(y), self.tc.rec_loss).item())
        res = {"phase_val_rec_loss": rec}
        with no_grad():
            real = d(Tensor(y[:256])).sigmoid().data
            fake = d(Tensor(out[:256])).sigmoid().data
        res["d_real"] = float(real.mean())
        res["d_fake"] = float(fake.mean())
        return res

    # ---------------------------------------------------------------- checkpoints

    def _meta(self) -> dict:
        return {
            "model_config": self.mc.to_dict(),
            "train_config": self.tc.to_dict(),
            "phase_index": self.phase_index,
            "phase_step": self.phase_step,
            "epoch": self.phase_step // getattr(self, "_per_epoch", 1),
            # Batches are drawn from np.random.default_rng([seed, 7, phase, epoch]) and new
            # levels initialised from default_rng([seed, G/D, level]): this is all the RNG
            # state there is, so (seed, phase, step) restores it exactly.
            "rng": {"seed": self.tc.seed, "batch_stream": "default_rng([seed, 7, phase_index, epoch])"},
            "phase_name": self.phases[min(self.phase_index, len(self.phases) - 1)].name,
            "finished": self.phase_index >= len(self.phases),
            "g_depth": self.G.depth,
            "d_depth": self.D.depth,
            "counters": dict(self.counters),
            "elapsed": self.elapsed,
            "best_val_mse": self.best_val_mse if math.isfinite(self.best_val_mse) else None,
            "gasca_core_version": _version(),
        }

    def save(self, name: str = "latest", opt_g=None, opt_d=None) -> Optional[str]:
        if not self.out_dir:
            return None
        states = {"g": self.G.state_dict(), "d": self.D.state_dict()}
        if opt_g is not None:
            states["opt_g"] = opt_g.state_dict()
        if opt_d is not None:
            states["opt_d"] = opt_d.state_dict()
        path = os.path.join(self.out_dir, f"{name}.npz")
        save_checkpoint(path, self._meta(), states)
        return path

    def load(self, path: str) -> None:
        """Restore a run saved by `save` (structure, parameters, optimizer states, counters)."""
        meta, states = load_checkpoint(path)
        if meta["model_config"] != self.mc.to_dict():
            raise CheckpointError(f"{path} was saved for another architecture: "
                                  f"{meta['model_config']} (this run: {self.mc.to_dict()})")
        self.phase_index, self.phase_step = meta["phase_index"], meta["phase_step"]
        depth = meta["g_depth"]
        if depth:
            self._grow_to(Phase("resume", "greedy", depth, 0))
        self.G.load_state_dict(states["g"])
        self.D.load_state_dict(states["d"])
        self.counters.update(meta["counters"])
        self.elapsed = float(meta["elapsed"])
        self.best_val_mse = meta["best_val_mse"] if meta["best_val_mse"] is not None else math.inf
        self._opt_states = {k: states[k] for k in ("opt_g", "opt_d") if k in states}

    # ---------------------------------------------------------------- the loop

    def run(self, resume: bool = False) -> dict:
        """Train through every phase; returns the final validation metrics and counters."""
        if self.out_dir:
            os.makedirs(self.out_dir, exist_ok=True)
            # A process killed while writing a checkpoint leaves its temporary file behind
            # (the checkpoint itself is whole: the rename never happened).  Sweep them.
            for name in os.listdir(self.out_dir):
                if name.startswith(".tmp-") and name.endswith(".npz"):
                    os.unlink(os.path.join(self.out_dir, name))
        latest = os.path.join(self.out_dir, "latest.npz") if self.out_dir else None
        if resume:
            if not latest or not os.path.exists(latest):
                raise CheckpointError(f"--resume: no checkpoint at {latest}")
            self.load(latest)
            self._trim_metrics()
            self.log(f"resumed from {latest}: phase {self.phase_index + 1}/{len(self.phases)}, "
                     f"step {self.phase_step}, global step {self.counters['global_step']}")
        previous = signal.getsignal(signal.SIGTERM)
        if previous in (signal.SIG_DFL, None) and _main_thread():
            signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        try:
            while self.phase_index < len(self.phases):
                self._run_phase(self.phase_index)
                self.phase_index += 1
                self.phase_step = 0
                self._opt_states = {}
                self.save("latest")
        finally:
            if previous in (signal.SIG_DFL, None) and _main_thread():
                signal.signal(signal.SIGTERM, previous)
        final = self.evaluate()
        final.update(self.counters)
        final["elapsed"] = self.elapsed
        self._plot_curves()
        return final

    def _run_phase(self, idx: int) -> None:
        phase = self.phases[idx]
        tc = self.tc
        self._grow_to(phase)
        g, d, tr, va = self._phase_parts(phase)
        opt_g, opt_d = self._optimizers(phase, g, d)
        if self._opt_states:  # resuming in the middle of this phase
            if opt_g is not None and "opt_g" in self._opt_states:
                opt_g.load_state_dict(self._opt_states["opt_g"])
            if opt_d is not None and "opt_d" in self._opt_states:
                opt_d.load_state_dict(self._opt_states["opt_d"])
            self._opt_states = {}
        use_adv = phase.kind != "finetune_d" and tc.adv_weight > 0
        per_epoch = self._per_epoch = max(1, math.ceil(len(tr) / tc.batch_size))
        eval_every = tc.eval_every or min(per_epoch, 200)
        # A time budget gives each phase its share of the seconds (restarted on resume).
        deadline = (time.perf_counter() + phase.time_share * tc.time_budget
                    if tc.time_budget else None)
        self._consecutive_skips = 0
        for hook in self.on_phase_start:
            hook(self, idx)
        bar = _progress(phase, idx, len(self.phases), self.phase_step, self.progress)
        sums: dict[str, float] = {}
        count = 0
        t_last = time.perf_counter()
        try:
            while self.phase_step < phase.steps:
                if deadline is not None and time.perf_counter() >= deadline:
                    self.log(f"{phase.name}: time share used up after {self.phase_step} steps")
                    break
                x, y, epoch = self._batch(tr, idx, self.phase_step)
                losses: dict[str, float] = {}
                ok = True
                if phase.trains_d:
                    for _ in range(tc.d_steps):
                        dl, d_ok = self._d_update(g, d, opt_d, x, y)
                        ok &= d_ok
                        self.counters["d_updates"] += int(d_ok)
                    losses["d_loss"] = dl
                if phase.trains_g:
                    parts, g_ok = self._g_update(g, d, opt_g, x, y, use_adv)
                    ok &= g_ok
                    self.counters["g_updates"] += int(g_ok)
                    losses.update(parts)
                if ok:
                    self._consecutive_skips = 0
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
                self.phase_step += 1
                self.counters["global_step"] += 1
                now = time.perf_counter()
                self.elapsed += now - t_last
                t_last = now
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix({"epoch": epoch, **{k: f"{v:.4g}" for k, v in losses.items()}},
                                    refresh=False)
                last = self.phase_step == phase.steps
                if self.phase_step % eval_every == 0 or last:
                    record = {k: v / count for k, v in sums.items()}
                    sums, count = {}, 0
                    self._validate(phase, idx, epoch, g, d, va, record, opt_g, opt_d)
                    t_last = time.perf_counter()
                elif self.phase_step % tc.checkpoint_every == 0:
                    self.save("latest", opt_g, opt_d)
                    t_last = time.perf_counter()
                for hook in self.on_step:
                    hook(self, idx)
        except KeyboardInterrupt:
            if bar is not None:
                bar.close()
                bar = None
            path = self.save("latest", opt_g, opt_d)
            self.log(f"\ninterrupted in {phase.name} at step {self.phase_step}: "
                     f"saved {path}; continue with --resume")
            raise
        finally:
            if bar is not None:
                bar.close()
        if count:  # the time budget ended the phase between validations
            self._validate(phase, idx, None, g, d, va, {k: v / count for k, v in sums.items()},
                           opt_g, opt_d)
        self._save_grid(phase, idx)
        for hook in self.on_phase_end:
            hook(self, idx)

    def _validate(self, phase, idx, epoch, g, d, va, record, opt_g, opt_d) -> None:
        rec = {"phase": phase.name, "phase_index": idx, "phase_step": self.phase_step,
               "epoch": epoch, **self.counters, "elapsed": round(self.elapsed, 3)}
        rec.update({f"train_{k}": v for k, v in record.items()})
        rec.update(self._phase_validation(g, d, va))
        rec.update(self.evaluate(self.tc.eval_max))
        self.history.append(rec)
        self._append_metrics(rec)
        improved = rec["val_mse"] < self.best_val_mse
        if improved:
            self.best_val_mse = rec["val_mse"]
        self.save("latest", opt_g, opt_d)
        if improved:
            self.save("best", opt_g, opt_d)

    # ---------------------------------------------------------------- outputs

    def _append_metrics(self, rec: dict) -> None:
        if not self.out_dir:
            return
        with open(os.path.join(self.out_dir, "metrics.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")

    def _trim_metrics(self) -> None:
        """Drop records written after the checkpoint we resume from (they will be redone)."""
        path = os.path.join(self.out_dir, "metrics.jsonl") if self.out_dir else None
        if not path or not os.path.exists(path):
            return
        keep = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if rec.get("global_step", 0) <= self.counters["global_step"]:
                    keep.append(line if line.endswith("\n") else line + "\n")
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(keep)
        self.history = [json.loads(line) for line in keep]

    def _save_grid(self, phase: Phase, idx: int) -> None:
        if not self.out_dir:
            return
        from ..data.grid import save_image_grid
        # Fixed validation pairs spread over the whole split (so over people, yaws, lights).
        pick = np.unique(np.linspace(0, len(self.val_data) - 1, 8).round().astype(np.int64))
        if self.device == "cuda":
            pick = backend.to_device(pick, "cuda")
        x, y = self.val_data.inputs[pick], self.val_data.targets[pick]
        out = batched_apply(self.G, x)
        path = os.path.join(self.out_dir, f"grid_{idx + 1:02d}_{phase.name}.png")
        save_image_grid([_host(x), np.clip(_host(out), 0, 1), _host(y)], path)

    def _plot_curves(self) -> None:
        if not self.out_dir or not self.history:
            return
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except Exception:
            return
        steps = [r["global_step"] for r in self.history]
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(steps, [r["val_mse"] for r in self.history], label="validation MSE (pixels)")
        ax.plot(steps, [r["phase_val_rec_loss"] for r in self.history], alpha=0.7,
                label="validation loss of the phase's own data (codes in greedy stages)")
        top = max(r["val_mse"] for r in self.history)
        starts: dict[str, int] = {}
        for r in self.history:
            starts.setdefault(r["phase"], r["global_step"])
        for name, s in starts.items():
            ax.axvline(s, color="grey", lw=0.5)
            ax.text(s, top, name, rotation=90, fontsize=6, va="top")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(f"{self.tc.method} on {self.mc.name}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(self.out_dir, "loss_curve.png"), dpi=100)
        plt.close(fig)


def _progress(phase: Phase, idx: int, n: int, start: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=phase.steps, initial=start, desc=f"[{idx + 1}/{n}] {phase.name}",
                unit="step", dynamic_ncols=True, leave=True, file=sys.stderr)


def _raise_keyboard_interrupt(signum, frame):  # SIGTERM -> the same clean save as Ctrl-C
    raise KeyboardInterrupt


def _main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def _version() -> str:
    try:
        from .. import __version__
        return __version__
    except Exception:
        return "unknown"


# ----------------------------------------------------------------------------- loading


def load_generator(path: str, device: str = "cpu") -> tuple[Generator, GascaConfig, dict]:
    """G from a checkpoint, in eval mode: (generator, its config, the checkpoint's meta)."""
    meta, states = load_checkpoint(path)
    try:
        mc = GascaConfig.from_dict(meta["model_config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: bad or missing model config: {e}") from None
    g = Generator(mc)
    for k in range(1, meta["g_depth"] + 1):
        g.insert_level(ShallowAutoencoder(mc, k, level_rng(0, "G", k)))
    try:
        g.load_state_dict(states["g"])
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: generator weights do not fit its config: {e}") from None
    g = g.to(device)
    g.eval()
    return g, mc, meta
