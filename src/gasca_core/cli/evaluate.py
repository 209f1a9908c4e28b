"""python -m gasca_core.evaluate CHECKPOINT: test-set MSE / PSNR / SSIM of a trained G, the
error per yaw (where the data knows yaws), the two trivial baselines, identity kept (rank-1
of a face recognizer trained on the training people, against a gallery of the unseen
people), sharpness, grid artefacts, realism, and an image grid."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

import numpy as np

from ..data.grid import save_image_grid
from ..evaluation import predict, quality_metrics, quality_tables, results_tables
from ..training import CheckpointError, load_generator
from .common import HelpFormatter, add_data_args, fail, load_splits, resolve_dataset


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gasca_core.evaluate", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint written by python -m gasca_core.train "
                                      "(latest.npz or best.npz)")
    add_data_args(p, image_size=False)
    p.add_argument("--split", choices=("train", "val", "test"), default="test")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the data split (default: the one the checkpoint was trained with)")
    p.add_argument("--grid", default=None, metavar="PNG",
                   help="where to save the image grid (default: next to the checkpoint)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--no-quality", action="store_true",
                   help="skip identity rank-1, sharpness, artefact and realism (the recognizer "
                        "is trained once per training set, ~15 s, then cached)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    resolve_dataset(args)
    try:
        g, mc, meta = load_generator(args.checkpoint, device=args.device)
    except (CheckpointError, RuntimeError) as e:
        fail(str(e))
    for note in meta.get("notes", []):
        print(f"note: {note}")
    seed = args.seed if args.seed is not None else meta["train_config"]["seed"]
    try:
        train, val, test = load_splits(args.dataset, args.data, seed=seed,
                                       image_size=mc.image_size, max_train=args.max_train,
                                       max_eval=args.max_eval)
    except (ValueError, OSError) as e:
        fail(f"could not load --dataset {args.dataset}: {e}")
    split = {"train": train, "val": val, "test": test}[args.split]
    out = np.clip(predict(g, split.inputs, args.device), 0.0, 1.0)
    print(f"{args.checkpoint}: {meta['train_config']['method']}, depth {meta['g_depth']}, "
          f"{meta['counters']['g_updates']} G updates; {args.split} split of {args.dataset}, "
          f"{len(split)} pairs")
    print(results_tables("model", out, split, train, label_keys=("yaw", "light")))
    if not args.no_quality:
        print("\nquality:")
        print(quality_tables(quality_metrics(out, split, train, log=print)))
    grid = args.grid or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)),
                                     f"eval_{args.split}.png")
    n = min(8, len(split))
    save_image_grid([split.inputs[:n], out[:n], split.targets[:n]], grid)
    print(f"\nimage grid (rows: input, output, target): {grid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
