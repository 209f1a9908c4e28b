"""One training loop for the three methods: GANGGLW, vanilla joint training, plain greedy.

A run is a list of *phases*, planned up front from the method and the budget
(phases.plan_phases), then executed in order by one loop (`Trainer.run`).  Each phase is
started by `start_phase`, which grows G and D to the phase's level, picks what moves and
on which data, and builds fresh Adam optimizers; then `step` is called once per batch:

    step = D update(s) on real targets and G's current outputs   (phases that train D)
         + G update on the same batch against the just-updated D  (phases that train G)

`step` is the one training step of gasca_core: the loop, the tools and the training-step
benchmark (gasca_core.bench.step) all call it.  With no adversary (adv_weight 0) no phase
trains D; with d_ratio r < 1 an alternating phase updates D on a share r of its steps
(phases.d_update_due).

One training clock per run, the same rule for every method (TrainingClock): it runs while
a phase is set up (growing the networks, encoding the codes of a greedy stage, building
optimizers) and while it steps (drawing and, codes="per-batch", encoding the batch; the steps
and their bookkeeping: loss sums, counters, the progress bar); it stops for validations,
checkpoints, image grids and hooks.  A time budget is spent on this clock: phase i ends
when the run's clock reaches the shares of phases 0..i times the budget, so validations
take nothing from it, and a phase whose set-up overruns its share (encoding all codes
first, codes="memory", can) takes the overrun from the phases after it: the run as a whole
keeps to its budget, up to the step under way.  Trainer.elapsed (the clock's total),
Trainer.phase_seconds (per phase) and Trainer.wall_seconds (everything) are kept in the
checkpoint, so a resumed phase continues its clock where it stopped.

Data parallel (gasca_core.distributed, docs/DISTRIBUTED.md): given an MPI World of N ranks,
every rank runs this same loop on its slice of each global batch (PhaseRun.slice_at), and
every update all-reduces the gradients, the losses and the facts every rank must decide
alike on (a NaN on some rank, rank 0's training clock, a stop request) in one flat buffer
(GradientBucket), so every rank takes the same optimizer steps and stops at the same step.
Rank 0 alone validates and writes (checkpoints, metrics, grids, the progress bar); the
other ranks meet it again at the next all-reduce.

Everything a resume needs (parameters, optimizer states, phase, step, counters, clocks,
best validation MSE, configs) is in the checkpoint.  Batches are a pure function of
(seed, phase key, epoch) (gasca_core.data.BatchIterator on the stream "batches"), so a resumed
run draws exactly the batches an uninterrupted one would.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import numpy as np

from .. import __version__, backend, nn, optim
from ..data.batching import BatchIterator
from ..data.pairs import PairDataset
from ..distributed import GradientBucket, World, describe_bad, shard
from ..evaluation import batched_apply
from ..metrics import summarize
from ..models import Discriminator, GascaConfig, Generator, grow
from ..tensor import Tensor, no_grad
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .losses import adversarial_loss, discriminator_loss, reconstruction_loss
from .nonfinite import NonFiniteGuard
from .outputs import RunOutputs
from .phases import Phase, TrainConfig, d_update_due, lr_factor, plan_phases


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


class TrainingClock:
    """Seconds of training work, read from `clock` (time.perf_counter by default; tests pass
    a fake one).  Runs between start() and stop(); `total` holds the seconds of every
    finished stretch, read() adds the one under way, lap() is the one under way alone.
    Trainer._off_clock stops it for a block that is not training."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.total = 0.0
        self._since: Optional[float] = None

    @property
    def running(self) -> bool:
        return self._since is not None

    def start(self) -> None:
        if self._since is None:
            self._since = self.clock()

    def stop(self) -> float:
        """Stop; returns the seconds of the stretch just ended (0 if it was not running)."""
        if self._since is None:
            return 0.0
        spent = self.clock() - self._since
        self.total += spent
        self._since = None
        return spent

    def lap(self) -> float:
        return self.clock() - self._since if self._since is not None else 0.0

    def read(self) -> float:
        return self.total + self.lap()


@dataclass
class PhaseRun:
    """One phase under way: what moves, against what, on which pairs (built by
    Trainer.start_phase).  g and d are the networks the phase trains or reads: in a greedy
    stage the new level G^k and D^k (conv_k and the head), otherwise the whole G and D."""
    index: int
    phase: Phase
    g: nn.Module
    d: nn.Module
    opt_g: Optional[optim.Adam]
    opt_d: Optional[optim.Adam]
    train: PairDataset           # pixels, or (codes="memory") codes in greedy stages k >= 2
    val: PairDataset             # the validation pairs the phase's own loss is measured on
                                 # (codes in greedy stages k >= 2; data parallel, on rank 0
                                 # alone: the other ranks do not validate, and keep pixels)
    batches: BatchIterator
    use_adv: bool                # G's loss has the adversarial term
    trains_d: bool = True        # the phase updates D (never without an adversary)
    encode: Optional[Callable[[Any], Any]] = None  # codes="per-batch": pixels -> the phase's codes
    rank: int = 0                # data parallel: this rank, of `size`, takes slice shard(B, rank, size)
    size: int = 1
    bucket_g: Optional[GradientBucket] = None   # data parallel: the all-reduce buffers of
    bucket_d: Optional[GradientBucket] = None   # opt_g's and opt_d's parameters

    def batch_at(self, step: int):
        """(inputs, targets, epoch) of the phase's step-th batch, as the phase trains on
        them: codes in a greedy stage k >= 2 (encoded here when codes="per-batch")."""
        batch, epoch = self.batches.batch_at(step)
        x, y = batch.inputs, batch.targets
        if self.encode is not None:
            x, y = self.encode(x), self.encode(y)
        return x, y, epoch

    def slice_at(self, step: int):
        """(inputs, targets, epoch, B): this rank's slice of the step-th global batch of B
        pairs, as the phase trains on it. Only the slice is read (from disk, for a lazy
        dataset) and encoded; with one rank the slice is the whole batch."""
        idx, epoch = self.batches.indices_at(step)
        part = idx[shard(len(idx), self.rank, self.size)]
        x, y = self.train.take(part)
        if self.encode is not None and len(part):
            x, y = self.encode(x), self.encode(y)
        return x, y, epoch, len(idx)


class Trainer:
    """Trains a GASCA model by GANGGLW, joint training or plain greedy layer-wise training.

    train, val: PairDatasets of images (moved to train_config.device here).
    out_dir, when given, receives latest.npz and best.npz checkpoints and what RunOutputs
    writes (metrics.jsonl, grid_NN_<phase>.png, loss_curve.png).
    clock: the time source of the training clock and the wall time (seconds, monotonic).
    world: the processes training this model together (gasca_core.distributed; default
    one process). Every rank builds its Trainer alike; only rank 0 writes to out_dir or
    shows progress.
    """

    def __init__(self, model_config: GascaConfig, train_config: TrainConfig,
                 train: PairDataset, val: PairDataset, out_dir: Optional[str] = None,
                 progress: bool = True, log: Callable[[str], None] = print,
                 clock: Callable[[], float] = time.perf_counter,
                 world: Optional[World] = None) -> None:
        self.mc, self.tc = model_config, train_config
        expected = (model_config.in_channels, model_config.image_size, model_config.image_size)
        if train.inputs.shape[1:] != expected:
            raise ValueError(f"training images are {train.inputs.shape[1:]}, the model "
                             f"expects {expected}")
        for what, split in (("training", train), ("validation", val)):
            if len(split) == 0:
                raise ValueError(f"the {what} split is empty")
        self.device = train_config.device
        if self.device == "cuda":
            backend.require_cuda()
        self.train_data, self.val_data = train.to(self.device), val.to(self.device)
        self.world = world if world is not None else World()
        self.is_root = self.world.rank == 0
        self.out_dir = out_dir
        self.outputs = RunOutputs(out_dir) if out_dir and self.is_root else None
        self.progress = progress and self.is_root
        self.log = log if self.is_root else (lambda message: None)  # what every rank would say
        self.phases = plan_phases(train_config.method, model_config.levels, train_config,
                                  len(train))
        self.G, self.D = Generator(model_config), Discriminator(model_config)
        self.phase_index, self.phase_step = 0, 0
        self.counters = {"global_step": 0, "g_updates": 0, "d_updates": 0, "skipped": 0}
        self.clock = TrainingClock(clock)          # the training clock (see the module doc)
        self.phase_seconds = [0.0] * len(self.phases)  # its seconds per phase
        self._wall_before = 0.0                    # wall seconds of earlier sessions (resume)
        self._wall_start: Optional[float] = None   # when this session's run() began
        self.best_val_mse = math.inf
        self.history: list[dict] = []
        # Which kernel versions train the run (gasca_core.backend's choice): one entry per
        # stretch of steps, a new one when a resume runs on other versions.
        # (run() records the choice it starts under.)
        self.kernels: list[dict] = [{"global_step": 0, "kernels": backend.chosen_kernels()}]
        self.guard = NonFiniteGuard(train_config.on_nonfinite, train_config.max_skips, log)
        self.current_run: Optional[PhaseRun] = None
        self._opt_states: dict[str, Any] = {}   # optimizer states of a checkpoint to resume
        self._batches_per_epoch = 1              # of the phase under way (for the checkpoint)
        # Data parallel: rank 0's phase clock as of the last all-reduce (what every rank
        # decides time budgets on), and whether some rank has been asked to stop.
        self._agreed_phase_clock = 0.0
        self._stop_requested = False   # this rank got SIGINT/SIGTERM
        self._stop_agreed = False      # some rank did (learnt through the all-reduce)
        # Hooks, called as hook(trainer, phase_index): after each step, at each phase's
        # start (structure built, nothing trained) and end.  Used by tests and tools.
        self.on_step: list[Callable[["Trainer", int], None]] = []
        self.on_phase_start: list[Callable[["Trainer", int], None]] = []
        self.on_phase_end: list[Callable[["Trainer", int], None]] = []

    # ---------------------------------------------------------------- clocks

    @property
    def elapsed(self) -> float:
        """Seconds on the training clock so far (every phase, every session)."""
        return self.clock.read()

    @property
    def train_seconds(self) -> float:
        return self.clock.read()

    @property
    def wall_seconds(self) -> float:
        """Wall seconds of the run so far: everything run() did, in every session."""
        now = self.clock.clock() - self._wall_start if self._wall_start is not None else 0.0
        return self._wall_before + now

    def phase_clock(self, idx: int) -> float:
        """Seconds on the training clock spent in phase idx (the one under way included)."""
        lap = self.clock.lap() if idx == self.phase_index else 0.0
        return self.phase_seconds[idx] + lap

    def _clock_stop(self) -> None:
        """Stop the training clock and credit the stretch to the phase under way."""
        self.phase_seconds[self.phase_index] += self.clock.stop()

    @contextlib.contextmanager
    def _off_clock(self) -> Iterator[None]:
        """A block that is not training (validation, checkpoint, grid, hooks)."""
        was = self.clock.running
        self._clock_stop()
        try:
            yield
        finally:
            if was:
                self.clock.start()

    # ---------------------------------------------------------------- a phase

    def start_phase(self, idx: int) -> PhaseRun:
        """Grow G and D to phase idx's level and set the phase up (fresh optimizers, or the
        ones of the checkpoint being resumed)."""
        phase, tc = self.phases[idx], self.tc
        grow(self.G, self.D, phase.level, tc.seed, self.device)
        g, d, train, val, encode = self._phase_parts(phase)
        opt_g = optim.Adam(list(g.parameters()), lr=tc.lr, betas=(tc.beta1, tc.beta2)) \
            if phase.trains_g else None
        opt_d = optim.Adam(list(d.parameters()), lr=tc.d_lr or tc.lr,
                           betas=(tc.beta1, tc.beta2)) if phase.trains_d else None
        if not self._trains_d(phase):
            opt_d = None
        if self._opt_states:  # resuming in the middle of this phase
            if opt_g is not None and "opt_g" in self._opt_states:
                opt_g.load_state_dict(self._opt_states["opt_g"])
            if opt_d is not None and "opt_d" in self._opt_states:
                opt_d.load_state_dict(self._opt_states["opt_d"])
            self._opt_states = {}
        # The batch stream is keyed by the phase's place in the full plan (Phase.key), so
        # leaving D-only phases out does not move the batches of the phases after them.
        key = phase.key if phase.key >= 0 else idx
        batches = BatchIterator(train, tc.batch_size, seed=tc.seed, stream="batches",
                                keys=(key,))
        buckets = {}
        if self.world.distributed:
            buckets = {f"bucket_{k}": GradientBucket(list(opt.param_groups[0]["params"]), self.world)
                       for k, opt in (("g", opt_g), ("d", opt_d)) if opt is not None}
        return PhaseRun(idx, phase, g, d, opt_g, opt_d, train, val, batches,
                        use_adv=phase.kind != "finetune_d" and tc.adversarial,
                        trains_d=self._trains_d(phase), encode=encode,
                        rank=self.world.rank, size=self.world.size, **buckets)

    def _trains_d(self, phase: Phase) -> bool:
        """Whether phase updates D: its kind does, and G has an adversary (at adv_weight 0
        D cannot change G, so it is not trained)."""
        return phase.trains_d and self.tc.adversarial

    def _phase_parts(self, phase: Phase):
        """(generator part, discriminator part, train pairs, val pairs, per-batch encoder or
        None) of a phase."""
        if phase.kind != "greedy":
            return self.G, self.D, self.train_data, self.val_data, None
        k = phase.level
        if k != self.D.depth:
            raise RuntimeError(f"D^{k} is only defined while it is the top level")
        g = self.G.levels[k - 1]
        d = nn.Sequential(self.D.convs[k - 1], self.D.head)  # D^k: conv_k, then head_k
        if k == 1:
            return g, d, self.train_data, self.val_data, None
        # Greedy stage k trains on codes: the pairs after the first k - 1 encoders (frozen
        # for the stage).  The validation codes (eval_max pairs) are made once; the training
        # codes either batch by batch as they are drawn (codes="per-batch": the stage's
        # memory and time grow with its steps, not with the dataset) or all at once here
        # (codes="memory": 16 x 32 x 32 floats per image after level 1, 1.4 GB for the
        # default data's 10,620 pairs).  The same floats either way: each image's code does
        # not depend on the batch it is encoded in (tests/test_training.py).
        enc = lambda t: self.G.encode(t, depth=k - 1)  # noqa: E731
        n_val = self.tc.eval_max
        val = self.val_data   # data parallel: only rank 0 validates, so only it encodes
        if self.is_root:
            val = PairDataset(batched_apply(enc, self.val_data.inputs[:n_val]),
                              batched_apply(enc, self.val_data.targets[:n_val]), check=False)
        if self.tc.codes == "per-batch":
            return g, d, self.train_data, val, lambda x: batched_apply(enc, x)
        train = PairDataset(batched_apply(enc, self.train_data.inputs),
                            batched_apply(enc, self.train_data.targets), check=False)
        return g, d, train, val, None

    # ---------------------------------------------------------------- one step

    def step(self, run: PhaseRun, x, y, phase_step: Optional[int] = None,
             batch_total: Optional[int] = None) -> tuple[dict[str, float], bool]:
        """One training step of the phase on the batch (x, y): D update(s), then the G
        update, as the phase says.  phase_step (default: Trainer.phase_step) is the step's
        index in its phase, which decides whether D is updated at d_ratio < 1.  Returns
        (the losses, whether every update was made).

        Data parallel: (x, y) is this rank's slice (possibly empty) of a global batch of
        batch_total pairs (default len(x): the whole batch); each update's gradients and
        losses are averaged over the ranks, weighted by slice size, so the returned losses
        and the steps taken are the global ones, alike on every rank."""
        tc = self.tc
        losses: dict[str, float] = {}
        ok = True
        i = self.phase_step if phase_step is None else phase_step
        n = len(x)
        total = n if batch_total is None else batch_total
        weight = n / total if total else 0.0   # this rank's share of the batch
        if run.trains_d and (not run.phase.trains_g or d_update_due(i, tc.d_ratio)):
            for _ in range(tc.d_steps):
                loss = None
                if n:
                    with no_grad():
                        fake = run.g(Tensor(x)).data
                    loss = discriminator_loss(run.d(Tensor(y)), run.d(Tensor(fake)))
                (value,), d_ok = self._update(loss, run.opt_d, run.bucket_d, weight, "D loss")
                ok &= d_ok
                self.counters["d_updates"] += int(d_ok)
            losses["d_loss"] = value
        if run.phase.trains_g:
            with frozen(run.d if run.use_adv else None):
                loss = rec = adv = None
                if n:
                    out = run.g(Tensor(x))
                    rec = reconstruction_loss(out, Tensor(y), tc.rec_loss)
                    loss = rec * tc.rec_weight if tc.rec_weight != 1.0 else rec
                    if run.use_adv:
                        adv = adversarial_loss(run.d(out), tc.adv_loss)
                        loss = loss + adv * tc.adv_weight
                (value, rec_value, adv_value), g_ok = self._update(
                    loss, run.opt_g, run.bucket_g, weight, "G loss", terms=(rec, adv))
            ok &= g_ok
            self.counters["g_updates"] += int(g_ok)
            losses.update(g_loss=value, rec_loss=rec_value)
            if run.use_adv:
                losses["adv_loss"] = adv_value
        self.guard.step_done(ok)
        return losses, ok

    def _schedule_lr(self, run: PhaseRun, allowed: Optional[float]) -> None:
        """Set the optimizers' rates for the next step from the phase's progress: its steps
        done over planned, or under a time budget its clock over its share if that is
        further along."""
        progress = self.phase_step / max(1, run.phase.steps)
        if allowed is not None:
            progress = max(progress, self._decision_clock(run.index) / max(allowed, 1e-9))
        f = lr_factor(self.tc.lr_schedule, progress)
        for opt, base in ((run.opt_g, self.tc.lr), (run.opt_d, self.tc.d_lr or self.tc.lr)):
            if opt is not None:
                for group in opt.param_groups:
                    group["lr"] = base * f

    def _update(self, loss: Optional[Tensor], opt, bucket: Optional[GradientBucket],
                weight: float, name: str, terms: tuple = ()) -> tuple[list, bool]:
        """One update of `opt` on `loss` through the NaN guard: returns ([the loss's value,
        then each of `terms`' values (None for a None term)], whether the update was made).
        With a bucket (data parallel) the gradients and the values are summed over the
        ranks, each rank's weighted by `weight` (its share of the batch; its loss is None
        when its slice is empty), and so are the facts every rank must decide alike on."""
        values = [None if t is None else float(t.item()) for t in terms]

        def reduce(value: float, problem: Optional[str]) -> tuple[float, Optional[str]]:
            status = 0 if problem is None else 1 if problem == name else 2
            r = bucket.all_reduce(weight, [None if loss is None else value, *values], status,
                                  clock=self.phase_clock(self.phase_index),
                                  stop=self._stop_requested)
            self._agreed_phase_clock = r.clock
            self._stop_agreed = self._stop_agreed or r.stop
            for j, t in enumerate(terms):
                values[j] = None if t is None and loss is not None else r.values[1 + j]
            return r.values[0], describe_bad(name, r.bad, r.finite)
        value, ok = self.guard.apply(loss, opt, name, self._where,
                                     reduce if bucket is not None else None)
        if not ok:
            self.counters["skipped"] += 1
        return [value, *values], ok

    def _decision_clock(self, idx: int) -> float:
        """Phase idx's clock as time-driven decisions read it: the live clock in one
        process; data parallel, rank 0's as of the last all-reduce (alike on every rank)."""
        return self._agreed_phase_clock if self.world.distributed else self.phase_clock(idx)

    def _time_is_up(self, deadline: float, allowed: float) -> bool:
        """Whether the phase under way has used up its share of the time budget: the run's
        clock has reached `deadline`, i.e. the phase's own clock has reached `allowed`."""
        if not self.world.distributed:
            return self.train_seconds >= deadline
        return self._agreed_phase_clock >= allowed

    def _agree_on_clocks(self) -> None:
        """Data parallel: every rank takes rank 0's clocks (at a phase start, the training
        clock stopped), so that the phase's time share is computed alike everywhere."""
        total, seconds = self.world.bcast((self.clock.total, list(self.phase_seconds)))
        self.clock.total, self.phase_seconds = total, list(seconds)

    def _check_in_step(self) -> None:
        """Data parallel: every rank must hold rank 0's parameters bit for bit (the same
        summed gradients, the same steps); checked at each phase end, loudly."""
        h = hashlib.sha256()
        for module in (self.G, self.D):
            for p in module.parameters():
                h.update(np.ascontiguousarray(backend.to_numpy(p.data)).tobytes())
        digest = h.hexdigest()
        if self.world.bcast(digest) != digest:
            raise RuntimeError(f"rank {self.world.rank}: parameters differ from rank 0's after "
                               f"phase {self.phases[self.phase_index].name}: the ranks no longer "
                               f"train one model")

    def _where(self) -> str:
        return (f"phase {self.phases[self.phase_index].name} (#{self.phase_index + 1}), "
                f"step {self.phase_step + 1}, global step {self.counters['global_step'] + 1}")

    # ---------------------------------------------------------------- the loop

    def run(self, resume: bool = False) -> dict:
        """Train through every phase; returns the final validation metrics and counters
        (data parallel: the metrics on rank 0 alone, which validates)."""
        self._wall_start = self.clock.clock()
        if self.outputs:
            self.outputs.prepare()
        if resume:
            latest = os.path.join(self.out_dir, "latest.npz") if self.out_dir else None

            def read() -> tuple[dict, dict]:
                if not latest or not os.path.exists(latest):
                    raise CheckpointError(f"--resume: no checkpoint at {latest}")
                return load_checkpoint(latest)
            meta, states = self.world.on_root(read)   # rank 0 reads, every rank restores
            self.restore(meta, states, latest)
            if self.outputs:
                self.history = self.outputs.trim_metrics(self.counters["global_step"])
            self.log(f"resumed from {latest}: phase {self.phase_index + 1}/{len(self.phases)}, "
                     f"step {self.phase_step}, global step {self.counters['global_step']}")
            saved_on = int(meta.get("world_size", 1))
            if saved_on != self.world.size:
                self.log(f"note: the run was saved on {saved_on} process(es) and continues on "
                         f"{self.world.size}: the global batches are the same, so the training "
                         f"continues as it would have")
        self._note_kernels()
        stop_signals = (stop_at_agreed_step(self) if self.world.distributed
                        else sigterm_as_keyboard_interrupt())
        with stop_signals:
            while self.phase_index < len(self.phases):
                self._run_phase(self.phase_index)
                self.phase_index += 1
                self.phase_step = 0
                self._opt_states = {}
                self.save("latest")
        final = self.evaluate() if self.is_root else {}
        final.update(self.counters)
        if self.outputs:
            self.outputs.plot_curves(self.history, f"{self.tc.method} on {self.mc.name}")
        final.update(train_seconds=self.train_seconds, elapsed=self.train_seconds,
                     wall_seconds=self.wall_seconds, phase_seconds=list(self.phase_seconds))
        return final

    def _note_kernels(self) -> None:
        """Record the kernel versions this session runs on (backend.chosen_kernels), as a new
        stretch from the current step when they differ from the last one's."""
        now, last = backend.chosen_kernels(), self.kernels[-1]
        if last["kernels"] == now:
            return
        step = self.counters["global_step"]
        if last["global_step"] == step:
            self.kernels = self.kernels[:-1]
        self.kernels = self.kernels + [{"global_step": step, "kernels": now}]

    def _run_phase(self, idx: int) -> None:
        """Set phase idx up and run it to its planned steps or the end of its time share,
        on the training clock (which stops for validations, checkpoints, grids, hooks)."""
        tc = self.tc
        self.clock.start()   # the set-up (the codes of a greedy stage) is training work
        try:
            run = self.start_phase(idx)
        finally:
            self._clock_stop()
        if self.world.distributed:
            self._agree_on_clocks()
        self.current_run = run   # for hooks: the phase under way, its networks and optimizers
        phase = run.phase
        per_epoch = self._batches_per_epoch = len(run.batches)
        eval_every = tc.eval_every or min(per_epoch, 200)
        # A time budget: the phase ends when the run's training clock reaches the shares of
        # the phases so far (this one included) times the budget.  Cumulative, so that a
        # phase whose set-up (a greedy stage's encoding) overruns its share takes the
        # overrun from the phases after it and the run keeps to its budget.  A resume
        # continues the clock from the checkpoint.
        deadline = (sum(p.time_share for p in self.phases[:idx + 1]) * tc.time_budget
                    if tc.time_budget else None)
        allowed = (deadline - (self.train_seconds - self.phase_clock(idx))
                   if deadline is not None else None)   # this phase's seconds, set-up included
        self._agreed_phase_clock = self.phase_clock(idx)
        self.guard.consecutive = 0
        for hook in self.on_phase_start:
            hook(self, idx)
        bar = _progress(phase, idx, len(self.phases), self.phase_step, self.progress)
        sums: dict[str, float] = {}
        count = 0
        self.clock.start()
        try:
            while self.phase_step < phase.steps:
                if deadline is not None and self._time_is_up(deadline, allowed):
                    with self._off_clock():
                        self.log(f"{phase.name}: time share used up after {self.phase_step} steps")
                    break
                x, y, epoch, total = run.slice_at(self.phase_step)
                if tc.lr_schedule != "constant":
                    self._schedule_lr(run, allowed)
                losses, _ = self.step(run, x, y, batch_total=total)
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
                self.phase_step += 1
                self.counters["global_step"] += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix({"epoch": epoch, **{k: f"{v:.4g}" for k, v in losses.items()}},
                                    refresh=False)
                with self._off_clock():
                    if self.phase_step % eval_every == 0 or self.phase_step == phase.steps:
                        if self.is_root:   # the others wait for it at the next all-reduce
                            self._validate(run, epoch, {k: v / count for k, v in sums.items()})
                        sums, count = {}, 0
                    elif self.phase_step % tc.checkpoint_every == 0:
                        self.save("latest", run)
                    for hook in self.on_step:
                        hook(self, idx)
                if self._stop_agreed:
                    raise StopRequested
        except KeyboardInterrupt:
            self._clock_stop()
            if bar is not None:
                bar.close()
                bar = None
            path = self.save("latest", run)
            self.log(f"\ninterrupted in {phase.name} at step {self.phase_step}: "
                     f"saved {path}; continue with --resume")
            raise
        finally:
            self._clock_stop()
            if bar is not None:
                bar.close()
        if count and self.is_root:  # the time budget ended the phase between validations
            self._validate(run, None, {k: v / count for k, v in sums.items()})
        if self.world.distributed:
            self._check_in_step()
        if self.outputs:
            self.outputs.save_grid(self.G, self.val_data, f"grid_{idx + 1:02d}_{phase.name}.png")
        for hook in self.on_phase_end:
            hook(self, idx)

    # ---------------------------------------------------------------- validation

    def evaluate(self, max_items: Optional[int] = None) -> dict:
        """Pixel-level metrics of the current G on the validation pairs."""
        n = len(self.val_data) if max_items is None else min(max_items, len(self.val_data))
        x, y = self.val_data.inputs[:n], self.val_data.targets[:n]
        self.G.eval()
        out = batched_apply(self.G, x)
        self.G.train()
        return {f"val_{k}": v for k, v in summarize(out, y).items()}

    def _phase_validation(self, run: PhaseRun) -> dict:
        """The phase's own reconstruction loss on its validation pairs (codes in greedy
        stages), and D's mean probability of 'real' on real and on fake (None without an
        adversary: no D is trained)."""
        n = min(self.tc.eval_max, len(run.val))
        x, y = run.val.inputs[:n], run.val.targets[:n]
        out = batched_apply(run.g, x)
        rec = float(reconstruction_loss(Tensor(out), Tensor(y), self.tc.rec_loss).item())
        if not self.tc.adversarial:
            return {"phase_val_rec_loss": rec, "d_real": None, "d_fake": None}
        with no_grad():
            real = run.d(Tensor(y[:256])).sigmoid().data
            fake = run.d(Tensor(out[:256])).sigmoid().data
        return {"phase_val_rec_loss": rec, "d_real": float(real.mean()),
                "d_fake": float(fake.mean())}

    def _validate(self, run: PhaseRun, epoch: Optional[int], train_means: dict) -> None:
        rec = {"phase": run.phase.name, "phase_index": run.index, "phase_step": self.phase_step,
               "epoch": epoch, **self.counters, "elapsed": round(self.elapsed, 3),
               "phase_seconds": round(self.phase_clock(run.index), 3),
               "wall_seconds": round(self.wall_seconds, 3)}
        rec.update({f"train_{k}": v for k, v in train_means.items()})
        rec.update(self._phase_validation(run))
        rec.update(self.evaluate(self.tc.eval_max))
        self.history.append(rec)
        if self.outputs:
            self.outputs.append_metrics(rec)
        improved = rec["val_mse"] < self.best_val_mse
        if improved:
            self.best_val_mse = rec["val_mse"]
        self.save("latest", run)
        if improved:
            self.save("best", run)

    # ---------------------------------------------------------------- checkpoints

    def _meta(self) -> dict:
        return {
            "model_config": self.mc.to_dict(),
            "train_config": self.tc.to_dict(),
            "phase_index": self.phase_index,
            "phase_step": self.phase_step,
            "epoch": self.phase_step // self._batches_per_epoch,
            # Batches come from the stream ("batches", seed, phase, epoch) and new levels
            # from ("init-G"/"init-D", seed, level) (gasca_core.rng): this is all the RNG
            # state there is, so (seed, phase, step) restores it exactly.
            "rng": {"seed": self.tc.seed, "batch_stream": "default_rng([seed, 7, phase_index, epoch])"},
            "phase_name": self.phases[min(self.phase_index, len(self.phases) - 1)].name,
            "finished": self.phase_index >= len(self.phases),
            "g_depth": self.G.depth,
            "d_depth": self.D.depth,
            "counters": dict(self.counters),
            "elapsed": self.elapsed,                 # the training clock, all phases
            "phase_seconds": [self.phase_clock(i) for i in range(len(self.phases))],
            "wall_seconds": self.wall_seconds,
            "best_val_mse": self.best_val_mse if math.isfinite(self.best_val_mse) else None,
            "world_size": self.world.size,           # processes that trained (any N resumes)
            "kernels": self.kernels,
            "gasca_core_version": __version__,
        }

    def _phase_of(self, meta: dict) -> int:
        """The index in this run's plan of the phase a checkpoint was saved in.  Earlier
        releases trained D at adv_weight 0, so their plans held D fine-tunes this one
        leaves out; their phase_index is a place in the full plan (a Phase.key): such a
        checkpoint resumes at the first phase from there on (a D fine-tune it was in is
        skipped: it could not have changed G)."""
        idx = int(meta["phase_index"])
        if meta.get("finished"):
            return len(self.phases)
        if idx < len(self.phases) and self.phases[idx].name == meta.get("phase_name"):
            return idx
        return next((i for i, p in enumerate(self.phases) if p.key >= idx), len(self.phases))

    def save(self, name: str = "latest", run: Optional[PhaseRun] = None) -> Optional[str]:
        """Write checkpoint `name`.npz (with the optimizer states of the phase under way when
        `run` is given); None when the trainer has no output directory."""
        if not self.outputs:
            return None
        states = {"g": self.G.state_dict(), "d": self.D.state_dict()}
        if run is not None and run.opt_g is not None:
            states["opt_g"] = run.opt_g.state_dict()
        if run is not None and run.opt_d is not None:
            states["opt_d"] = run.opt_d.state_dict()
        path = self.outputs.path(f"{name}.npz")
        save_checkpoint(path, self._meta(), states)
        return path

    def load(self, path: str) -> None:
        """Restore a run saved by `save` (structure, parameters, optimizer states, counters)."""
        self.restore(*load_checkpoint(path), path)

    def restore(self, meta: dict, states: dict, path: str = "the checkpoint") -> None:
        """Restore a run from a checkpoint's (meta, states) as load_checkpoint returns them."""
        if meta["model_config"] != self.mc.to_dict():
            raise CheckpointError(f"{path} was saved for another architecture: "
                                  f"{meta['model_config']} (this run: {self.mc.to_dict()})")
        self.phase_index, self.phase_step = self._phase_of(meta), meta["phase_step"]
        if self.phase_index < len(self.phases) and \
                self.phases[self.phase_index].name != meta.get("phase_name"):
            self.phase_step, states = 0, {k: v for k, v in states.items() if k in ("g", "d")}
        grow(self.G, self.D, meta["g_depth"], self.tc.seed, self.device)
        self.G.load_state_dict(states["g"])
        self.D.load_state_dict(states["d"])
        self.counters.update(meta["counters"])
        # Checkpoints of earlier releases hold no per-phase clock or wall time: 0.
        self.clock.total = float(meta.get("elapsed", 0.0))
        spent = [float(v) for v in meta.get("phase_seconds") or []]
        self.phase_seconds = (spent + [0.0] * len(self.phases))[:len(self.phases)]
        self._wall_before = float(meta.get("wall_seconds", 0.0))
        self.best_val_mse = meta["best_val_mse"] if meta["best_val_mse"] is not None else math.inf
        self._opt_states = {k: states[k] for k in ("opt_g", "opt_d") if k in states}
        # Earlier stretches' kernel versions (None: a checkpoint from before they were
        # recorded); run() adds this session's if it runs on others.
        self.kernels = meta.get("kernels") or [{"global_step": 0, "kernels": None}]


# ----------------------------------------------------------------------------- helpers


def _progress(phase: Phase, idx: int, n: int, start: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=phase.steps, initial=start, desc=f"[{idx + 1}/{n}] {phase.name}",
                unit="step", dynamic_ncols=True, leave=True, file=sys.stderr)


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


class StopRequested(KeyboardInterrupt):
    """Data parallel: some rank was asked to stop (SIGINT/SIGTERM) and every rank learnt it
    from the same all-reduce: all stop after the same step, and rank 0 saves it."""


@contextlib.contextmanager
def stop_at_agreed_step(trainer: "Trainer") -> Iterator[None]:
    """Data parallel, inside the block: a first SIGINT or SIGTERM only asks to stop (the
    request travels with the next all-reduce; every rank then stops after the same step,
    StopRequested); a second one raises KeyboardInterrupt at once (this rank alone: the
    tool then ends the job). In the main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def ask(signum, frame):
        if trainer._stop_requested:
            raise KeyboardInterrupt
        trainer._stop_requested = True

    previous = {s: signal.signal(s, ask) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def sigterm_as_keyboard_interrupt() -> Iterator[None]:
    """Inside the block, SIGTERM raises KeyboardInterrupt (the same clean save as Ctrl-C),
    where SIGTERM has its default handler and this is the main thread."""
    previous = signal.getsignal(signal.SIGTERM)
    install = previous in (signal.SIG_DFL, None) and \
        threading.current_thread() is threading.main_thread()
    if install:
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        yield
    finally:
        if install:
            signal.signal(signal.SIGTERM, previous)
