"""Training GASCA models: GANGGLW (Algorithm 1), vanilla joint training, plain greedy
layer-wise training, all through one loop (see trainer.py for what each phase updates)."""
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .losses import adversarial_loss, discriminator_loss, reconstruction_loss
from .trainer import (METHODS, NonFiniteLossError, PairData, Phase, Trainer, TrainConfig,
                      load_generator, plan_phases)

__all__ = ["CheckpointError", "load_checkpoint", "save_checkpoint", "adversarial_loss",
           "discriminator_loss", "reconstruction_loss", "METHODS", "NonFiniteLossError",
           "PairData", "Phase", "Trainer", "TrainConfig", "load_generator", "plan_phases"]
