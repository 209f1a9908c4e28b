"""Training GASCA models: GANGGLW (Algorithm 1), vanilla joint training, plain greedy
layer-wise training, all through one loop.

    phases.py      TrainConfig, Phase, plan_phases: what a run does, decided up front
    trainer.py     Trainer: the loop, and step(), the one training step; TrainingClock
    losses.py      the GAN and reconstruction losses (label conventions)
    nonfinite.py   what a NaN or infinite loss does (stop, or skip the update)
    checkpoint.py  atomic checkpoints, load_generator
    outputs.py     metrics.jsonl, image grids, the loss curve
"""
from .checkpoint import CheckpointError, load_checkpoint, load_generator, save_checkpoint
from .losses import adversarial_loss, discriminator_loss, reconstruction_loss
from .nonfinite import NonFiniteGuard, NonFiniteLossError
from .outputs import RunOutputs
from .phases import (CODE_MODES, LR_SCHEDULES, METHOD_ALIASES, METHODS, Phase, TrainConfig, canonical_method,
                     d_update_due, gangglw_d_ratio, lr_factor, plan_phases, planned_d_updates)
from .trainer import PhaseRun, Trainer, TrainingClock, frozen

__all__ = ["CheckpointError", "load_checkpoint", "load_generator", "save_checkpoint",
           "adversarial_loss", "discriminator_loss", "reconstruction_loss", "NonFiniteGuard",
           "NonFiniteLossError", "RunOutputs", "CODE_MODES", "LR_SCHEDULES", "lr_factor", "METHOD_ALIASES", "METHODS", "Phase",
           "TrainConfig", "canonical_method", "d_update_due", "gangglw_d_ratio", "plan_phases",
           "planned_d_updates", "PhaseRun", "Trainer", "TrainingClock", "frozen"]
