"""python -m gasca_core.classify CHECKPOINT [CHECKPOINT ...]: GANGGLW as pre-training for
classification, without leakage.

Puts a linear head (flatten -> linear -> one logit per class) on the encoder stack of a
trained G and fine-tunes encoder and head together to predict a label of the input image,
beside the same network trained from scratch.  Nothing the classifier is tested on was seen
by G's pre-training:

- identity (or subject): the classes are the people of the *test* split, whom G never saw;
  each of their images goes to the classifier's training or test half by a seeded 50/50
  draw per person (so every person is in both halves).
- yaw (or any other label): the classifier trains on the training split's images and is
  tested on the test split's people, whom G never saw.

Equal compute: the scratch network gets the same classification steps (--steps) and, as a
second row, those steps plus the G updates the checkpoint's pre-training made ("equal
updates": pre-training steps are counted as updates; a G update moves the encoder and the
decoder, so this favours the scratch network in FLOPs).  Several checkpoints (e.g. one per
pre-training seed) and --seeds give mean and 95% interval (Student t) over every pair.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

import numpy as np

from .. import functional as F
from .. import nn, optim
from ..data import BatchIterator, PairDataset
from ..evaluation import format_table
from ..models import Generator, grow
from ..rng import stream
from ..statistics import mean_ci
from ..tensor import Tensor, no_grad
from ..training import CheckpointError, load_generator
from .common import (HelpFormatter, add_data_args, fail, int_list, load_splits, positive_int,
                     resolve_dataset)


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


def leak_free_split(train, test, label: str, seed: int):
    """(x_train, y_train, x_test, y_test, classes) for the classifier, none of whose test
    images G's pre-training saw (see the module docstring)."""
    if label in ("identity", "subject"):
        ids = np.asarray(test.labels[label])
        held = np.zeros(len(ids), dtype=bool)
        rng = stream("classifier-holdout", seed)
        for person in np.unique(ids):
            where = np.flatnonzero(ids == person)
            held[rng.permutation(where)[:len(where) // 2]] = True
        classes, y = _classes(ids)
        return test.inputs[~held], y[~held], test.inputs[held], y[held], classes
    classes, ytr = _classes(np.asarray(train.labels[label]))
    te_vals = np.asarray(test.labels[label])
    known = np.isin(te_vals, classes)
    return train.inputs, ytr, test.inputs[known], np.searchsorted(classes, te_vals[known]), classes


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gasca_core.classify", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT",
                   help="GASCA checkpoints from python -m gasca_core.train (one per pre-training "
                        "seed, all of one architecture and dataset)")
    add_data_args(p, image_size=False)
    p.add_argument("--label", default="yaw", help="which label to predict: yaw or identity")
    p.add_argument("--steps", type=positive_int, default=300, help="Adam updates for each network")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seeds", type=int_list, default=[1, 2, 3], metavar="S1,S2,...",
                   help="classifier seeds (head, batches, held-out images) per checkpoint")
    p.add_argument("--no-equal-updates", action="store_true",
                   help="skip the scratch network trained for --steps plus the checkpoint's "
                        "pre-training G updates")
    args = p.parse_args(argv)
    resolve_dataset(args)
    loaded = []
    for path in args.checkpoints:
        try:
            loaded.append((path,) + load_generator(path))
        except CheckpointError as e:
            fail(str(e))
    split_seeds = {meta["train_config"]["seed"] for _, _, _, meta in loaded}
    rows: dict[str, list[float]] = {}
    for path, g, mc, meta in loaded:
        train, val, test = load_splits(args.dataset, args.data, seed=meta["train_config"]["seed"],
                                       image_size=mc.image_size, max_train=args.max_train,
                                       max_eval=args.max_eval)
        if args.label not in train.labels:
            fail(f"--label {args.label}: this dataset's labels are {sorted(train.labels)}")
        pre = int(meta["counters"]["g_updates"])
        for seed in args.seeds:
            xtr, ytr, xte, yte, classes = leak_free_split(train, test, args.label, seed)
            if len(xtr) == 0 or len(xte) == 0:
                fail(f"--label {args.label}: no images to train or test the classifier on")
            g.train()
            nets = [("GASCA encoder (pre-trained)", g, args.steps),
                    ("same network from scratch, equal classification steps",
                     _fresh_generator(g, seed), args.steps)]
            if not args.no_equal_updates:
                nets.append(("same network from scratch, equal updates (+ pre-training's)",
                             _fresh_generator(g, seed), args.steps + pre))
            for name, gen, steps in nets:
                model = EncoderClassifier(gen, len(classes), stream("classifier-head", seed))
                losses = train_classifier(model, xtr, ytr, steps, args.batch_size, args.lr, seed)
                acc = accuracy(model, xte, yte)
                rows.setdefault(name, []).append(acc)
                print(f"{os.path.basename(path)} seed {seed}: {name} ({steps} steps): final train "
                      f"loss {losses[-1]:.4f}, test accuracy {acc:.3f}", flush=True)
    who = ("the test split's people (never seen by G), half of each person's images held out"
           if args.label in ("identity", "subject") else
           "trained on the training split, tested on the test split's people (never seen by G)")
    print(f"\npredicting {args.label} ({len(classes)} classes; chance {1 / len(classes):.3f}): "
          f"{who}; {len(xtr)} training / {len(xte)} test images; {len(loaded)} checkpoint(s) "
          f"(data split seed(s) {sorted(split_seeds)}) x seeds {args.seeds}")
    table = []
    for name, accs in rows.items():
        mean, half = mean_ci(accs)
        table.append([name, len(accs), mean, "-" if half is None else
                      f"{mean - half:.3f}-{mean + half:.3f}", f"{min(accs):.3f}-{max(accs):.3f}"])
    print(format_table(["network", "runs", "test accuracy", "95% CI (t)", "min-max"], table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
