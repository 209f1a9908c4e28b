"""GASCA's losses, computed from logits so that they stay finite for any logit.

Label convention (pinned by tests/test_training.py): D outputs one logit per image;
sigmoid(logit) is D's probability that the image is REAL, i.e. a target x_mu.  Targets are
labelled 1 (real), the generator's reconstructions G(x_phi) 0 (fake).

    D loss   = BCE(D(x_mu), 1) + BCE(D(G(x_phi)), 0)
             = -[log D(x_mu) + log(1 - D(G(x_phi)))]                 (D maximises the bracket)
    G adversarial term:
      "saturating"     (the paper)   log(1 - D(G(x)))   = -BCE(D(G(x)), 0)
      "non_saturating" (common)      -log D(G(x))       =  BCE(D(G(x)), 1)
    G loss   = rec_weight * rec(G(x_phi), x_mu) + adv_weight * adversarial term
"""
from __future__ import annotations

from .. import backend
from .. import functional as F
from ..tensor import Tensor

ADV_LOSSES = ("non_saturating", "saturating")
REC_LOSSES = ("mse", "l1")


def _full_like(logits: Tensor, value: float) -> Tensor:
    xp = backend.get_array_module(logits.data)
    return Tensor(xp.full(logits.shape, value, dtype=logits.dtype))


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """BCE(real, 1) + BCE(fake, 0), each averaged over the batch."""
    return (F.binary_cross_entropy_with_logits(real_logits, _full_like(real_logits, 1.0))
            + F.binary_cross_entropy_with_logits(fake_logits, _full_like(fake_logits, 0.0)))


def adversarial_loss(fake_logits: Tensor, kind: str = "non_saturating") -> Tensor:
    """The generator's adversarial term (to be minimised), averaged over the batch."""
    if kind == "non_saturating":
        return F.binary_cross_entropy_with_logits(fake_logits, _full_like(fake_logits, 1.0))
    if kind == "saturating":
        return -F.binary_cross_entropy_with_logits(fake_logits, _full_like(fake_logits, 0.0))
    raise ValueError(f"unknown adversarial loss '{kind}', expected one of {ADV_LOSSES}")


def reconstruction_loss(output: Tensor, target: Tensor, kind: str = "mse") -> Tensor:
    if kind == "mse":
        return F.mse_loss(output, target)
    if kind == "l1":
        return F.l1_loss(output, target)
    raise ValueError(f"unknown reconstruction loss '{kind}', expected one of {REC_LOSSES}")
