"""python -m gasca_core.classify CHECKPOINT: GANGGLW as pre-training for classification.

Puts a linear head (flatten -> linear -> one logit per class) on the encoder stack of a
trained G and fine-tunes encoder and head together to predict a label of the input image,
beside the same network trained from scratch with the same steps, data and seed: both test
accuracies are reported.  Labels: 'yaw' (the pose bin; train/test split by identity as
usual) or 'identity' (who it is; then the training identities' images are split instead,
by a seeded 70/30 split of each identity's images, since the test split holds other people).
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import numpy as np

from .. import functional as F
from .. import nn, optim
from ..data import BatchIterator, PairDataset
from ..evaluation import format_table
from ..models import Generator, grow
from ..rng import stream
from ..tensor import Tensor, no_grad
from ..training import CheckpointError, load_generator
from .common import HelpFormatter, add_data_args, fail, load_splits, positive_int


class EncoderClassifier(nn.Module):
    """Encoder stack of G (enc_1 .. enc_k), then flatten -> linear -> n_classes logits."""

    def __init__(self, generator: Generator, n_classes: int, rng: np.random.Generator) -> None:
        super().__init__()
        self.encoders = nn.Sequential(*[ae.encoder for ae in generator.levels])
        c, h, w = generator.config.code_shape(generator.depth)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, n_classes, rng=rng))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoders(x))


def _fresh_generator(trained: Generator, seed: int) -> Generator:
    """A generator of the same architecture and depth, freshly initialised (from the
    init-G streams of seed + 1000, so that it differs from any trained run's start)."""
    g = Generator(trained.config)
    grow(g, None, trained.depth, seed + 1000)
    return g


def train_classifier(model: EncoderClassifier, x: np.ndarray, y: np.ndarray, steps: int,
                     batch_size: int, lr: float, seed: int) -> list[float]:
    opt = optim.Adam(list(model.parameters()), lr=lr)
    # The labels ride along as the batch's "class" label; the targets are unused.
    batches = BatchIterator(PairDataset(x, x, {"class": y}, check=False), batch_size,
                            seed=seed, stream="classifier-batches")
    losses = []
    for step in range(steps):
        batch, _ = batches.batch_at(step)
        loss = F.cross_entropy(model(Tensor(batch.inputs)), batch.labels["class"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.item()))
    return losses


def accuracy(model: EncoderClassifier, x: np.ndarray, y: np.ndarray) -> float:
    model.eval()
    preds = []
    with no_grad():
        for i in range(0, len(x), 256):
            preds.append(model(Tensor(x[i:i + 256])).numpy().argmax(axis=1))
    model.train()
    return float((np.concatenate(preds) == y).mean())


def _classes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    classes, y = np.unique(values, return_inverse=True)
    return classes, y.astype(np.int64)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gasca_core.classify", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("checkpoint", help="a GASCA checkpoint from python -m gasca_core.train")
    add_data_args(p, image_size=False)
    p.add_argument("--label", default="yaw", help="which label to predict: yaw or identity")
    p.add_argument("--steps", type=positive_int, default=300, help="Adam updates for each network")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        g, mc, meta = load_generator(args.checkpoint)
    except CheckpointError as e:
        fail(str(e))
    train, val, test = load_splits(args.dataset, args.data, seed=meta["train_config"]["seed"],
                                   image_size=mc.image_size, max_train=args.max_train)
    if args.label not in train.labels:
        fail(f"--label {args.label}: this dataset's labels are {sorted(train.labels)}")
    if args.label == "identity" or args.label == "subject":
        ids = np.asarray(train.labels[args.label])
        rng = stream("classifier-holdout", args.seed)
        held = rng.random(len(ids)) < 0.3
        xtr, xte = train.inputs[~held], train.inputs[held]
        classes, ytr = _classes(ids[~held])
        yte = np.searchsorted(classes, ids[held])
        known = np.isin(ids[held], classes)
        xte, yte = xte[known], yte[known]
    else:
        classes, ytr = _classes(np.asarray(train.labels[args.label]))
        te_vals = np.asarray(test.labels[args.label])
        known = np.isin(te_vals, classes)
        xtr, xte, yte = train.inputs, test.inputs[known], np.searchsorted(classes, te_vals[known])
    g.train()
    results = []
    for name, gen in (("GASCA encoder (pre-trained)", g), ("same network from scratch",
                                                             _fresh_generator(g, args.seed))):
        model = EncoderClassifier(gen, len(classes), stream("classifier-head", args.seed))
        losses = train_classifier(model, xtr, ytr, args.steps, args.batch_size, args.lr, args.seed)
        results.append([name, losses[-1], accuracy(model, xte, yte)])
        print(f"{name}: final train loss {losses[-1]:.4f}, test accuracy {results[-1][2]:.3f}",
              flush=True)
    print(f"\npredicting {args.label} ({len(classes)} classes) from {len(xtr)} training images, "
          f"{args.steps} steps each; chance = {1 / len(classes):.3f}")
    print(format_table(["network", "final train loss", "test accuracy"], results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
