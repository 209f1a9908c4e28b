"""What a run does, decided before it starts: TrainConfig (every training setting) and the
phases each method runs (plan_phases).

    kind        G side trained         D side trained        data
    greedy      the new level G^k      the new level D^k     codes after k-1 encoders (pixels for k=1)
    finetune_g  the whole G            nothing (D frozen)    pixels
    finetune_d  nothing (G frozen)     the whole D           pixels (G's outputs as fakes)
    joint       the whole G            the whole D           pixels

    gangglw: greedy-1, then for k = 2..m: greedy-k, finetune_g-k, finetune_d-k
    glw:     greedy-1 .. greedy-m           (stacking without the gradual fine-tuning)
    joint:   joint (all m levels built at once, trained from scratch)

With no adversary (adv_weight 0) D cannot change G, so no D is trained at all: greedy and
joint phases make G updates only and gangglw's finetune_d phases are left out of the plan.
Every phase keeps the batch stream key it has in the full plan (Phase.key), so G sees the
same batches, and ends with the same parameters, as in a run that trains D at weight 0.

The cost model behind the time shares (TrainConfig.time_budget): a step that updates G
costs one unit, whatever it also does for D; a D-only step (finetune_d) costs half a unit
(a forward pass of the frozen G, then D's forward and backward).  A phase's share of the
budget is its steps' cost over the cost of the whole plan, so the shares of every plan
sum to exactly 1 (up to float rounding) and a time-budgeted run spends T seconds of its
training clock, not more.  The model is a plan, not a measurement: a greedy step on small
codes is cheaper than a joint step on pixels, and that is the point of GANGGLW's claim
at equal time (each method spends its seconds on as many steps as they buy).

The method GANGGLW (GAN gradual greedy layer-wise) is spelled "gangglw"; the first release
spelled it "ganglw", which is still accepted everywhere (flags, configs, old checkpoints)
and read as "gangglw".
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

from .losses import ADV_LOSSES, REC_LOSSES

METHODS = ("gangglw", "joint", "glw")
METHOD_ALIASES = {"ganglw": "gangglw"}
LR_SCHEDULES = ("constant", "cosine")
CODE_MODES = ("per-batch", "memory")  # how a greedy stage k >= 2 gets its codes (TrainConfig.codes)
PHASE_KINDS = ("greedy", "finetune_g", "finetune_d", "joint")


def canonical_method(name: str) -> str:
    """The method's name as gasca_core spells it (an alias such as "ganglw" -> "gangglw");
    unknown names are returned as they are, for validate() to reject."""
    return METHOD_ALIASES.get(name, name)


@dataclass
class TrainConfig:
    """How to train (everything but the architecture).  Saved with every checkpoint."""
    method: str = "gangglw"             # or "joint", "glw" ("ganglw" is read as "gangglw")
    steps: Optional[int] = 6000         # G-update budget for the whole run, shared out over phases
    epochs: int = 5                     # per greedy stage / joint run, when steps is None
    finetune_epochs: int = 5            # per fine-tune phase, when steps is None
    finetune_share: float = 0.7         # gangglw: share of the G budget given to the fine-tunes
    d_finetune_ratio: float = 0.25      # gangglw: D fine-tune steps per G fine-tune step
    batch_size: int = 32
    lr: float = 2e-3                    # Adam learning rate of G (chosen on validation: docs/EXPERIMENTS.md)
    lr_schedule: str = "constant"       # or "cosine": each phase's rates fall to 0 by its end
    d_lr: Optional[float] = None        # Adam learning rate of D (default: lr)
    beta1: float = 0.9
    beta2: float = 0.999
    rec_loss: str = "mse"
    rec_weight: float = 1.0
    adv_loss: str = "non_saturating"
    adv_weight: float = 1e-4            # the sweep in the README (What the adversary buys)
    d_steps: int = 1                    # D updates per G update in adversarial phases
    d_ratio: float = 1.0                # in (0, 1]: share of a phase's steps that update D
                                        # (phases training G and D; see d_update_due)
    seed: int = 0
    eval_every: Optional[int] = None    # steps between validations (default: one epoch, at most 200)
    eval_max: int = 512                 # validation pairs used for the periodic metrics
    checkpoint_every: int = 200         # steps between 'latest' checkpoints (plus every validation)
    on_nonfinite: str = "stop"          # "stop" the run, or "skip" the step
    max_skips: int = 20                 # consecutive skipped steps before stopping anyway
    time_budget: Optional[float] = None  # seconds of training clock for the whole run, shared
                                         # out over the phases by their time_share
    codes: str = "per-batch"            # greedy stage k >= 2: encode each batch as it is drawn
                                        # ("per-batch": memory and time in proportion to the
                                        # steps) or every training pair once, before the stage
                                        # ("memory": the codes held whole)
    device: str = "cpu"

    def __post_init__(self) -> None:
        self.method = canonical_method(self.method)
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
        need(self.lr_schedule in LR_SCHEDULES,
             f"lr_schedule must be one of {LR_SCHEDULES}, got '{self.lr_schedule}'")
        need(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "Adam betas must be in [0, 1)")
        need(self.rec_loss in REC_LOSSES, f"rec_loss must be one of {REC_LOSSES}, got '{self.rec_loss}'")
        need(self.adv_loss in ADV_LOSSES, f"adv_loss must be one of {ADV_LOSSES}, got '{self.adv_loss}'")
        need(self.rec_weight >= 0 and self.adv_weight >= 0, "loss weights must be >= 0")
        need(self.d_steps >= 1, f"d_steps must be >= 1, got {self.d_steps}")
        need(0.0 < self.d_ratio <= 1.0, f"d_ratio must be in (0, 1], got {self.d_ratio}")
        need(self.eval_every is None or self.eval_every >= 1, "eval_every must be >= 1")
        need(self.eval_max >= 1 and self.checkpoint_every >= 1, "eval_max and checkpoint_every must be >= 1")
        need(self.on_nonfinite in ("stop", "skip"), f"on_nonfinite must be 'stop' or 'skip', got '{self.on_nonfinite}'")
        need(self.time_budget is None or self.time_budget > 0, "time_budget must be > 0 seconds")
        need(self.codes in CODE_MODES, f"codes must be one of {CODE_MODES}, got '{self.codes}'")
        need(self.device in ("cpu", "cuda"), f"device must be 'cpu' or 'cuda', got '{self.device}'")

    @property
    def adversarial(self) -> bool:
        """Whether G has an adversary: with adv_weight 0 no D is trained at all."""
        return self.adv_weight > 0

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
    steps: int              # planned steps (G updates; D updates for finetune_d)
    time_share: float = 0.0  # share of TrainConfig.time_budget, when one is set
    key: int = -1           # batch stream key: the phase's index in the method's full plan
                            # (the same as its index unless D-only phases were left out)

    @property
    def trains_g(self) -> bool:
        return self.kind in ("greedy", "finetune_g", "joint")

    @property
    def trains_d(self) -> bool:
        """Whether the phase kind trains D (when there is an adversary; see
        TrainConfig.adversarial)."""
        return self.kind in ("greedy", "finetune_d", "joint")

    @property
    def cost(self) -> float:
        """Planned cost in G-step units (the cost model in the module docstring)."""
        return self.steps * STEP_COST[self.kind]


# The cost of one step of each phase kind, in units of a step that updates G.
STEP_COST = {"greedy": 1.0, "finetune_g": 1.0, "joint": 1.0, "finetune_d": 0.5}


def d_update_due(step: int, ratio: float) -> bool:
    """Whether step `step` (0-based, within its phase) of a phase that trains G and D also
    updates D, at D:G ratio `ratio` in (0, 1]: iff floor((step + 1) r) > floor(step r).
    r = 1 updates D at every step; r = 1/2 at steps 1, 3, 5, ...; over n steps D is
    updated floor(n r) times (the sum telescopes)."""
    return math.floor((step + 1) * ratio) > math.floor(step * ratio)


def planned_d_updates(phase: Phase, cfg: TrainConfig) -> int:
    """D updates the phase makes when it runs all its planned steps (none without an
    adversary): d_steps per D-only step, d_steps per due step of an alternating phase."""
    if not (cfg.adversarial and phase.trains_d):
        return 0
    steps = phase.steps if not phase.trains_g else math.floor(phase.steps * cfg.d_ratio)
    return steps * cfg.d_steps


def gangglw_d_ratio(cfg: TrainConfig, levels: int, n_train: Optional[int] = None) -> float:
    """GANGGLW's D updates per G update over its whole plan (greedy stages one D update
    per G update at d_ratio 1, the D fine-tunes as planned), from cfg's budget and
    settings whatever cfg.method is.  The ablation "joint at GANGGLW's D:G ratio" runs
    joint with d_ratio set to this.  n_train is needed when cfg.steps is None (epochs)."""
    if cfg.steps is None and n_train is None:
        raise ValueError("gangglw_d_ratio: an epoch budget needs n_train")
    plan = plan_phases("gangglw", levels, cfg, n_train or cfg.batch_size)
    g = sum(p.steps for p in plan if p.trains_g)
    return sum(planned_d_updates(p, cfg) for p in plan) / g


def plan_phases(method: str, levels: int, cfg: TrainConfig, n_train: int) -> list[Phase]:
    """The phases of a run, with their step counts, time shares and batch keys.  `method`
    may be an alias (ganglw).

    With a step budget B (cfg.steps), every method makes B generator updates in all:
    joint all B in one phase; glw B/m per greedy stage; gangglw (1 - f) B / m per greedy
    stage and f B / (m - 1) per G fine-tune (f = finetune_share), plus
    d_finetune_ratio times as many D updates in each D fine-tune.  Without a budget, each
    greedy stage (and the joint run) lasts `epochs` passes over the training pairs and each
    fine-tune `finetune_epochs` passes.

    Without an adversary (cfg.adv_weight 0) the D fine-tunes are left out; the other
    phases keep their steps and their batch keys.  Time shares follow the cost model of
    the module docstring and sum to 1.
    """
    method = canonical_method(method)
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
    elif method == "gangglw":
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
    for i, p in enumerate(phases):
        p.key = i
    if not cfg.adversarial:
        phases = [p for p in phases if p.trains_g]
    total = sum(p.cost for p in phases)
    for p in phases:
        p.time_share = p.cost / total
    return phases


def lr_factor(schedule: str, progress: float) -> float:
    """The learning rate's multiplier at `progress` in [0, 1] through a phase: 1 throughout
    for "constant"; 0.5 (1 + cos(pi progress)) for "cosine" (from 1 at the start to 0 at
    the end).  Every phase starts its schedule afresh, as it starts fresh optimizers."""
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))
    raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got '{schedule}'")
