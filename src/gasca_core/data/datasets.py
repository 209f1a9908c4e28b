"""The entry points the tools call: a dataset by name, whole or split.

Every loader returns a :class:`PairDataset`: N pairs (input, target) of grey images
(1, H, W), float32 in [0, 1], and labels (a dict of arrays of length N: whatever is known,
e.g. identity, yaw in degrees and light for the synthetic faces, and expression for
synthetic-expressions, the same faces showing seven expressions).

    from gasca_core.data import get_splits, BatchIterator
    train, val, test = get_splits("synthetic-faces", seed=0, max_train=2000)
    batches = BatchIterator(train, batch_size=64, seed=0)
    for batch in batches:            # one epoch
        batch.inputs, batch.targets  # (B, 1, H, W) float32

Imports run one way: this module imports the loaders, the loaders import pairs.py and
images.py, and nothing imports this module back.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from .cache import is_cache, load_cache
from .folder import load_folder
from .images import ImageSize
from .multipie import load_multipie
from .npz import load_npz
from .pairs import PairDataset
from .splits import DEFAULT_FRACTIONS, Splits, cap, split_dataset
from .synthetic import load_synthetic_expressions, load_synthetic_faces

DATASET_NAMES = ("synthetic-faces", "synthetic-expressions", "folder", "multipie", "npz",
                 "cache")
# The built-in data sets, rendered rather than read: they take no --data.
BUILT_IN = ("synthetic-faces", "synthetic-expressions")


def infer_dataset(data: "str | os.PathLike[str] | None") -> str:
    """The dataset kind for a --data path: none -> synthetic-faces, *.npz -> npz, a
    prepared cache (options.json, pairs.npz) -> cache, a directory with inputs/ -> folder,
    any other directory -> multipie."""
    if data is None:
        return "synthetic-faces"
    path = Path(data)
    if path.suffix.lower() == ".npz":
        return "npz"
    if is_cache(path):
        return "cache"
    if path.is_dir() and ((path / "inputs").is_dir() or (path / "pairs.csv").is_file()):
        return "folder"
    if path.is_dir():
        return "multipie"
    raise ValueError(f"--data {str(path)!r}: not a directory or an .npz file "
                     f"(cannot tell which dataset kind it is)")


LOADERS: dict[str, Callable[..., PairDataset]] = {
    "synthetic-faces": load_synthetic_faces,
    "synthetic-expressions": load_synthetic_expressions,
    "folder": load_folder,
    "multipie": load_multipie,
    "npz": load_npz,
    "cache": load_cache,
}


def _loader(name: str) -> Callable[..., PairDataset]:
    try:
        return LOADERS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; expected one of "
                         f"{', '.join(DATASET_NAMES)}") from None


def load_dataset(name: Optional[str] = None, data: "str | os.PathLike[str] | None" = None, *,
                 split: str = "all", seed: int = 0,
                 fractions: Sequence[float] = DEFAULT_FRACTIONS,
                 max_items: Optional[int] = None, image_size: ImageSize = 64,
                 **opts: Any) -> PairDataset:
    """Load one dataset, whole (split="all") or one of its "train", "val", "test" splits.

    name: one of DATASET_NAMES, or None to infer it from ``data`` (see infer_dataset).
    data: the path for folder / multipie / npz; must be None for the built-in
        synthetic-faces and synthetic-expressions.
    seed: the split's seed (the synthetic faces' own seed is the option ``data_seed``).
    max_items: keep at most this many pairs (a random subset, seeded).
    image_size: resize every image to this (int or (h, w)); None keeps the files' size
        (they must then all agree). For synthetic-faces it is the render size.
    opts: options of the chosen loader (see load_synthetic_faces, load_folder,
        load_multipie, load_npz).
    """
    name = infer_dataset(data) if name is None else name
    whole = _loader(name)(data, image_size=image_size, **opts)
    if split == "all":
        ds = whole
    elif split in ("train", "val", "test"):
        ds = getattr(split_dataset(whole, fractions, seed), split)
    else:
        raise ValueError(f"split must be 'all', 'train', 'val' or 'test', got {split!r}")
    return cap(ds, max_items, seed, "max_items")


def get_splits(name: Optional[str] = None, data: "str | os.PathLike[str] | None" = None, *,
               seed: int = 0, fractions: Sequence[float] = DEFAULT_FRACTIONS,
               max_train: Optional[int] = None, max_eval: Optional[int] = None,
               image_size: ImageSize = 64, **opts: Any) -> Splits:
    """(train, val, test) of a dataset, split by person where the labels say who it is.

    The trainers' one call: ``get_splits(args.dataset, args.data, seed=args.seed,
    max_train=args.max_train)``. max_train caps the training pairs and max_eval the
    validation and test pairs (random subsets, seeded). Other arguments as load_dataset.
    """
    name = infer_dataset(data) if name is None else name
    whole = _loader(name)(data, image_size=image_size, **opts)
    train, val, test = split_dataset(whole, fractions, seed)
    return Splits(cap(train, max_train, seed, "max_train"),
                  cap(val, max_eval, seed, "max_eval"),
                  cap(test, max_eval, seed, "max_eval"))

