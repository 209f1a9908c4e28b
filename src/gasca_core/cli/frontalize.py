"""python -m gasca_core.frontalize CHECKPOINT IMAGES... --out DIR: apply a trained G to your
own image files.  Each image is read with Pillow, converted to grayscale, resized to the
model's input size (as the training pairs are), run through G, and written to DIR under its own name (as PNG)."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

import numpy as np

from PIL import Image

from ..data import read_gray
from ..data.grid import atomic_save
from ..evaluation import predict
from ..training import CheckpointError, load_generator
from .common import fail


def read_image(path: str, size: int) -> np.ndarray:
    """A (1, size, size) float32 image in [0, 1], converted exactly as the training pairs are
    (gasca_core.data.read_gray: colour to luma, 16-bit scaled, alpha over black, resized).
    Raises ValueError naming the file and the problem."""
    return read_gray(path, (size, size))[None]


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gasca_core.frontalize", description=__doc__)
    p.add_argument("checkpoint", help="a checkpoint written by python -m gasca_core.train")
    p.add_argument("images", nargs="+", help="image files (any format Pillow reads)")
    p.add_argument("--out", required=True, metavar="DIR", help="directory for the outputs")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--side-by-side", action="store_true",
                   help="write input and output next to each other in each file")
    args = p.parse_args(argv)
    try:
        g, mc, _ = load_generator(args.checkpoint, device=args.device)
    except (CheckpointError, RuntimeError) as e:
        fail(str(e))
    if mc.in_channels != 1:
        fail(f"this tool feeds grayscale images; the model expects {mc.in_channels} channels")
    try:
        x = np.stack([read_image(f, mc.image_size) for f in args.images])
    except ValueError as e:
        fail(str(e))
    y = np.clip(predict(g, x, args.device), 0.0, 1.0)
    os.makedirs(args.out, exist_ok=True)
    names = set()
    for src, inp, res in zip(args.images, x, y):
        stem = os.path.splitext(os.path.basename(src))[0]
        name, i = stem, 1
        while name in names:
            i += 1
            name = f"{stem}_{i}"
        names.add(name)
        img = np.concatenate([inp[0], res[0]], axis=1) if args.side_by_side else res[0]
        dst = os.path.join(args.out, name + ".png")
        atomic_save(Image.fromarray((img * 255 + 0.5).astype(np.uint8)), dst)
        print(f"{src} -> {dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
