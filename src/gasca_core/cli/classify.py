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

- expression (the synthetic-expressions dataset, or any other label): as yaw.

Equal compute: the scratch network gets the same classification steps (--steps) and, as a
second row, those steps plus the G updates the checkpoint's pre-training made ("equal
updates": pre-training steps are counted as updates; a G update moves the encoder and the
decoder, so this favours the scratch network in FLOPs).  Several checkpoints (e.g. one per
pre-training seed) and --seeds give mean and 95% interval (Student t) over every pair.

Recognition across poses (the extended GASCA paper's experiment: emotion recognition on
faces at up to +-60 degrees):

- --per-yaw adds a table (and, with --plot, a chart) of test accuracy per yaw of the test
  image, for every row.
- --frontalized adds, per checkpoint, the "frontalize first" pipeline: G (the checkpoint's
  full generator, frozen) maps every training and test image to its frontal face, and the
  same network, from scratch with the same steps, is trained and tested on those.  Its
  rival is the "raw faces" row: that network on the posed images themselves.
- Checkpoints of several methods (e.g. GANGGLW and joint, one per seed each) give one
  pre-trained row per method; the rows that do not depend on the checkpoint (the networks
  from scratch on raw faces) run once per data split and classifier seed, not once per
  checkpoint, so that no run is counted twice.
- Checkpoints whose G has other layers (--symmetric-levels, --local-global-levels) get rows
  of their own, named with their levels; their networks from scratch take the same layers.
"""
from __future__ import annotations

import argparse
import os
import sys
from types import SimpleNamespace
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


def _classes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    classes, y = np.unique(values, return_inverse=True)
    return classes, y.astype(np.int64)


def leak_free_split(train, test, label: str, seed: int):
    """(x_train, y_train, x_test, y_test, classes) for the classifier, none of whose test
    images G's pre-training saw (see the module docstring)."""
    return leak_free_split_labelled(train, test, label, seed)[:5]


def leak_free_split_labelled(train, test, label: str, seed: int):
    """leak_free_split's five arrays, then the test images' labels (a dict of arrays, every
    label the test split has, in the order of x_test): for per-yaw accuracy."""
    if label in ("identity", "subject"):
        ids = np.asarray(test.labels[label])
        held = np.zeros(len(ids), dtype=bool)
        rng = stream("classifier-holdout", seed)
        for person in np.unique(ids):
            where = np.flatnonzero(ids == person)
            held[rng.permutation(where)[:len(where) // 2]] = True
        classes, y = _classes(ids)
        te_labels = {k: np.asarray(v)[held] for k, v in test.labels.items()}
        return test.inputs[~held], y[~held], test.inputs[held], y[held], classes, te_labels
    classes, ytr = _classes(np.asarray(train.labels[label]))
    te_vals = np.asarray(test.labels[label])
    known = np.isin(te_vals, classes)
    te_labels = {k: np.asarray(v)[known] for k, v in test.labels.items()}
    return (train.inputs, ytr, test.inputs[known], np.searchsorted(classes, te_vals[known]),
            classes, te_labels)


def predictions(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """The predicted class of every image (batches of 256, no graph)."""
    model.eval()
    preds = []
    with no_grad():
        for i in range(0, len(x), 256):
            preds.append(model(Tensor(x[i:i + 256])).numpy().argmax(axis=1))
    model.train()
    return np.concatenate(preds) if preds else np.zeros(0, np.int64)


def frontalize(g: Generator, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """G's output for every image (frozen: eval mode, no graph), as float32 like the inputs."""
    g.eval()
    out = []
    with no_grad():
        for i in range(0, len(x), batch):
            out.append(np.asarray(g(Tensor(x[i:i + batch])).numpy(), dtype=np.float32))
    g.train()
    return np.concatenate(out)


def per_group_accuracy(correct: np.ndarray, groups: np.ndarray) -> dict:
    """{group value: accuracy of the images with that value} (e.g. per yaw)."""
    return {float(v): float(correct[groups == v].mean()) for v in np.unique(groups)}


def per_yaw_chart(rows: dict, path: str, label: str, chance: float) -> bool:
    """Test accuracy against yaw, one line per row (mean over runs, min-max band); False
    where matplotlib is missing."""
    from .compare import _pyplot
    plt = _pyplot()
    if plt is None:
        return False
    # The legend goes below the axes, one line per row, so that it never hides the lines
    # (rows with long names: several methods and layer variants on one chart).
    fig, ax = plt.subplots(figsize=(8.5, 4.2 + 0.22 * (len(rows) + 1)))
    for name, runs in rows.items():
        yaws = sorted(runs[0])
        acc = np.array([[r[y] for y in yaws] for r in runs])
        ax.plot(yaws, acc.mean(axis=0), marker="o", label=f"{name} ({len(runs)} runs)")
        if len(runs) > 1:
            ax.fill_between(yaws, acc.min(axis=0), acc.max(axis=0), alpha=0.15)
    ax.axhline(chance, color="gray", linestyle=":", linewidth=1, label="chance")
    ax.set_xlabel("yaw of the test face (degrees)")
    ax.set_ylabel(f"{label} accuracy (test people)")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gasca_core.classify", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT",
                   help="GASCA checkpoints from python -m gasca_core.train (one per pre-training "
                        "seed, method and layer variant, all of one dataset and image size)")
    add_data_args(p, image_size=False)
    p.add_argument("--label", default="yaw",
                   help="which label to predict: yaw, identity, or expression (synthetic-expressions)")
    p.add_argument("--steps", type=positive_int, default=300, help="Adam updates for each network")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seeds", type=int_list, default=[1, 2, 3], metavar="S1,S2,...",
                   help="classifier seeds (head, batches, held-out images) per checkpoint")
    p.add_argument("--no-equal-updates", action="store_true",
                   help="skip the scratch network trained for --steps plus the checkpoint's "
                        "pre-training G updates")
    p.add_argument("--per-yaw", action="store_true",
                   help="also report test accuracy per yaw of the test image (needs a yaw label)")
    p.add_argument("--frontalized", action="store_true",
                   help="add the frontalize-first pipeline: the same network from scratch, "
                        "trained and tested on G's outputs instead of the posed faces")
    p.add_argument("--plot", default=None, metavar="PNG",
                   help="with --per-yaw: write a chart of accuracy against yaw (needs matplotlib)")
    args = p.parse_args(argv)
    if args.plot and not args.per_yaw:
        fail("--plot draws the per-yaw accuracies: add --per-yaw")
    resolve_dataset(args)
    loaded = []
    for path in args.checkpoints:
        try:
            loaded.append((path,) + load_generator(path))
        except CheckpointError as e:
            fail(str(e))
    split_seeds = {meta["train_config"]["seed"] for _, _, _, meta in loaded}
    rows: dict[str, list[float]] = {}
    yaw_rows: dict[str, list[dict]] = {}
    shared_done: set = set()   # (split seed, classifier seed, layers) whose scratch-on-raw run is done
    for path, g, mc, meta in loaded:
        split_seed = meta["train_config"]["seed"]
        # Checkpoints of one method but other layers get rows of their own, and their
        # networks from scratch (the checkpoint's architecture) are not pooled either.
        variant = f" [{mc.layer_variant()}]" if mc.layer_variant() else ""
        method = meta["train_config"].get("method", "?") + variant
        train, val, test = load_splits(args.dataset, args.data, seed=split_seed,
                                       image_size=mc.image_size, max_train=args.max_train,
                                       max_eval=args.max_eval)
        if args.label not in train.labels:
            fail(f"--label {args.label}: this dataset's labels are {sorted(train.labels)}")
        if args.per_yaw and "yaw" not in test.labels:
            fail(f"--per-yaw: this dataset has no yaw label (its labels: {sorted(test.labels)})")
        pre = int(meta["counters"]["g_updates"])
        if args.frontalized:
            print(f"{os.path.basename(path)}: frontalizing {len(train)} training and {len(test)} "
                  f"test images with its G ({method})", flush=True)
            front_train = SimpleNamespace(inputs=frontalize(g, train.inputs), labels=train.labels)
            front_test = SimpleNamespace(inputs=frontalize(g, test.inputs), labels=test.labels)
        for seed in args.seeds:
            xtr, ytr, xte, yte, classes, te_labels = leak_free_split_labelled(train, test, args.label, seed)
            if len(xtr) == 0 or len(xte) == 0:
                fail(f"--label {args.label}: no images to train or test the classifier on")
            g.train()
            # (row, network, steps, training images, test images)
            nets = [(f"GASCA encoder pre-trained by {method}, fine-tuned", g, args.steps, xtr, xte)]
            if (split_seed, seed, variant) not in shared_done:
                shared_done.add((split_seed, seed, variant))
                nets.append(("raw faces: same network from scratch, equal classification steps"
                             + variant,
                             _fresh_generator(g, seed), args.steps, xtr, xte))
            if not args.no_equal_updates:
                nets.append((f"raw faces: same network from scratch, equal updates (+ {method}'s "
                             f"pre-training)", _fresh_generator(g, seed), args.steps + pre, xtr, xte))
            if args.frontalized:
                ftr, _, fte, _, _, _ = leak_free_split_labelled(front_train, front_test, args.label, seed)
                nets.append((f"{method}'s frontalized faces: same network from scratch, equal "
                             f"classification steps", _fresh_generator(g, seed), args.steps, ftr, fte))
            for name, gen, steps, x_fit, x_eval in nets:
                model = EncoderClassifier(gen, len(classes), stream("classifier-head", seed))
                losses = train_classifier(model, x_fit, ytr, steps, args.batch_size, args.lr, seed)
                correct = predictions(model, x_eval) == yte
                acc = float(correct.mean())
                rows.setdefault(name, []).append(acc)
                if args.per_yaw:
                    yaw_rows.setdefault(name, []).append(per_group_accuracy(correct, te_labels["yaw"]))
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
    if args.per_yaw:
        yaws = sorted({y for runs in yaw_rows.values() for r in runs for y in r})
        print(f"\ntest accuracy per yaw of the test face (mean over runs; {args.label})")
        body = [[name] + [float(np.mean([r[y] for r in runs if y in r])) for y in yaws]
                for name, runs in yaw_rows.items()]
        print(format_table(["network"] + [f"{y:+.0f}" for y in yaws], body))
        if args.plot:
            if per_yaw_chart(yaw_rows, args.plot, args.label, 1 / len(classes)):
                print(f"chart: {args.plot}")
            else:
                print("--plot: matplotlib is not installed (pip install '.[plot]'): no chart written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
