"""The one dataset interface, splits by identity, the seeded batching iterator, and the
single entry point the trainers call.

Every loader returns a :class:`PairDataset`: N pairs (input, target) of grey images
(1, H, W), float32 in [0, 1], and labels (a dict of arrays of length N: whatever is known,
e.g. identity, yaw in degrees and light for the synthetic faces).

    from gasca_core.data import get_splits, BatchIterator
    train, val, test = get_splits("synthetic-faces", seed=0, max_train=2000)
    batches = BatchIterator(train, batch_size=64, seed=0)
    for batch in batches:            # one epoch
        batch.inputs, batch.targets  # (B, 1, H, W) float32
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Optional, Sequence, Union

import numpy as np

from .images import ImageSize

Labels = dict[str, np.ndarray]
DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)
# Labels that name a person: splits keep all pairs of one person in one split.
GROUP_LABELS = ("identity", "subject")


class PairDataset:
    """N (input, target) image pairs with labels, held as whole arrays.

    inputs, targets: float32 (N, 1, H, W) in [0, 1] (3-D (N, H, W) arrays are given a
        channel axis). labels: dict name -> array (N,). name: where it came from.
    len(ds) is N; ds[i] is (input (1, H, W), target (1, H, W), {name: label value}).
    The trainers use ds.inputs / ds.targets / ds.labels directly, batch by batch.
    """

    def __init__(self, inputs: np.ndarray, targets: np.ndarray,
                 labels: Optional[Mapping[str, Any]] = None, name: str = "pairs",
                 check: bool = True) -> None:
        self.inputs = _as_nchw(inputs, "inputs")
        self.targets = _as_nchw(targets, "targets")
        if self.inputs.shape != self.targets.shape:
            raise ValueError(f"inputs and targets must have the same shape (N, 1, H, W), got "
                             f"{self.inputs.shape} and {self.targets.shape}")
        n = len(self.inputs)
        self.labels: Labels = {}
        for key, value in (labels or {}).items():
            arr = np.asarray(value)
            if arr.shape[:1] != (n,):
                raise ValueError(f"labels[{key!r}] must have one entry per pair ({n}), "
                                 f"got shape {arr.shape}")
            self.labels[str(key)] = arr
        self.name = name
        if check:
            for what, a in (("inputs", self.inputs), ("targets", self.targets)):
                if a.size and not (np.isfinite(a).all() and a.min() >= 0.0 and a.max() <= 1.0):
                    raise ValueError(f"{name}: {what} must be finite and in [0, 1], got range "
                                     f"[{np.nanmin(a)}, {np.nanmax(a)}]")

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        n = len(self)
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"index must be an int, got {type(i).__name__} "
                            f"(use .subset(indices) for many)")
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for a dataset of {n} pairs")
        return self.inputs[i], self.targets[i], {k: v[i] for k, v in self.labels.items()}

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(1, H, W) of every image."""
        return tuple(self.inputs.shape[1:])  # type: ignore[return-value]

    def subset(self, indices: Sequence[int], name: Optional[str] = None) -> "PairDataset":
        """A new dataset of the pairs at ``indices`` (copies)."""
        idx = np.asarray(indices, dtype=np.int64)
        return PairDataset(self.inputs[idx], self.targets[idx],
                           {k: v[idx] for k, v in self.labels.items()},
                           name=name or self.name, check=False)

    def groups(self) -> Optional[np.ndarray]:
        """The label that names a person (identity or subject), or None when unknown."""
        for key in GROUP_LABELS:
            if key in self.labels:
                return self.labels[key]
        return None

    def __repr__(self) -> str:
        labels = ", ".join(self.labels) or "none"
        return (f"PairDataset({self.name!r}, {len(self)} pairs of {self.image_shape}, "
                f"labels: {labels})")


def _as_nchw(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 3:
        a = a[:, None]
    if a.ndim != 4 or a.shape[1] != 1:
        raise ValueError(f"{name} must have shape (N, 1, H, W) or (N, H, W), got {a.shape}")
    return np.ascontiguousarray(a, dtype=np.float32)


# ----------------------------------------------------------------------------- splits
class Splits(NamedTuple):
    train: PairDataset
    val: PairDataset
    test: PairDataset


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    f = tuple(float(x) for x in fractions)
    if len(f) != 3 or min(f) < 0.0 or abs(sum(f) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers (train, val, test) "
                         f"summing to 1, got {fractions!r}")
    return f  # type: ignore[return-value]


def _share_out(g: int, f: tuple[float, float, float]) -> list[int]:
    """Split g items by fractions f: largest remainders (ties: train, val, test), then at
    least one for every non-zero fraction, taken from the biggest share."""
    exact = [x * g for x in f]
    counts = [int(np.floor(e + 1e-9)) for e in exact]
    for i in sorted(range(3), key=lambda i: counts[i] - exact[i])[:g - sum(counts)]:
        counts[i] += 1
    for i in range(3):
        if counts[i] == 0 and f[i] > 0:
            j = int(np.argmax(counts))
            if counts[j] > 1:
                counts[i], counts[j] = 1, counts[j] - 1
    return counts


def split_indices(n: int, groups: Optional[np.ndarray] = None,
                  fractions: Sequence[float] = DEFAULT_FRACTIONS,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices (train, val, test), each sorted, that partition range(n).

    With ``groups`` (n,) (e.g. identity), whole groups go to one split: the distinct groups
    are shuffled with ``seed`` and cut by ``fractions`` (largest remainders; a non-zero
    fraction gets at least one group, else ValueError). Without, pairs are shuffled and cut.
    The shuffle uses its own stream, SeedSequence([seed, 1]), so that a batch iterator with
    the same seed does not repeat it.
    """
    f = _check_fractions(fractions)
    keys = np.arange(n) if groups is None else np.asarray(groups)
    if keys.shape != (n,):
        raise ValueError(f"groups must have shape ({n},), got {keys.shape}")
    unique, inverse = np.unique(keys, return_inverse=True)
    g = len(unique)
    order = np.random.default_rng(np.random.SeedSequence([int(seed), 1])).permutation(g)
    counts = _share_out(g, f)
    if any(k == 0 and x > 0 for k, x in zip(counts, f)):
        what = "groups (persons)" if groups is not None else "pairs"
        raise ValueError(f"cannot split {g} {what} into train/val/test by {f}: too few to "
                         f"give every split with a non-zero fraction at least one")
    n_train, n_val, _ = counts
    part = np.empty(g, dtype=np.int64)
    part[order[:n_train]] = 0
    part[order[n_train:n_train + n_val]] = 1
    part[order[n_train + n_val:]] = 2
    where = part[inverse.ravel()]
    return tuple(np.flatnonzero(where == s) for s in range(3))  # type: ignore[return-value]


def split_dataset(ds: PairDataset, fractions: Sequence[float] = DEFAULT_FRACTIONS,
                  seed: int = 0) -> Splits:
    """Split by person (identity or subject label) when known, else by pair."""
    parts = split_indices(len(ds), ds.groups(), fractions, seed)
    return Splits(*(ds.subset(p, name=f"{ds.name}/{s}")
                    for p, s in zip(parts, ("train", "val", "test"))))


def _cap(ds: PairDataset, max_items: Optional[int], seed: int, what: str) -> PairDataset:
    """At most max_items pairs of ds, a random subset (stream SeedSequence([seed, 2]))."""
    if max_items is None or len(ds) <= int(max_items):
        return ds
    if int(max_items) < 1:
        raise ValueError(f"{what} must be a positive number of pairs, got {max_items}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 2]))
    keep = np.sort(rng.choice(len(ds), size=int(max_items), replace=False))
    return ds.subset(keep)


# --------------------------------------------------------------------- batching iterator
class Batch(NamedTuple):
    inputs: np.ndarray   # (B, 1, H, W) float32
    targets: np.ndarray  # (B, 1, H, W) float32
    labels: Labels       # name -> (B,)
    indices: np.ndarray  # (B,) positions in the dataset


class BatchIterator:
    """Shuffled mini-batches over a dataset, exactly resumable.

    The order of epoch e is a permutation drawn from SeedSequence([seed, e]), so the whole
    stream is a function of (seed, epoch, position): ``get_state()`` returns those three as
    plain ints and ``set_state()`` puts them back (e.g. from a checkpoint).

    seed: an int, or a numpy Generator from which one seed is drawn at construction.
    shuffle=False walks the pairs in order; drop_last=True skips a last short batch.

    ``for batch in it`` runs through the rest of the current epoch, then moves to the next;
    ``it.next_batch()`` returns one batch and moves into the next epoch by itself (for
    trainers that count steps, not epochs).
    """

    def __init__(self, dataset: PairDataset, batch_size: int,
                 seed: Union[int, np.random.Generator] = 0, shuffle: bool = True,
                 drop_last: bool = False) -> None:
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(dataset) == 0:
            raise ValueError(f"dataset {dataset.name!r} is empty: nothing to batch")
        if drop_last and int(batch_size) > len(dataset):
            raise ValueError(f"batch_size {batch_size} is larger than the dataset "
                             f"({len(dataset)} pairs) and drop_last=True: no batch would be made")
        if isinstance(seed, np.random.Generator):
            seed = int(seed.integers(2**63 - 1))
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        self.position = 0  # pairs of the current epoch already handed out
        self._order_epoch = -1
        self._order = np.arange(0)

    def __len__(self) -> int:
        """Batches per epoch."""
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        """The order in which epoch ``epoch`` visits the pairs, (N,)."""
        if epoch != self._order_epoch:
            n = len(self.dataset)
            if self.shuffle:
                rng = np.random.default_rng(np.random.SeedSequence([self.seed, int(epoch)]))
                self._order = rng.permutation(n)
            else:
                self._order = np.arange(n)
            self._order_epoch = epoch
        return self._order

    def _epoch_left(self) -> bool:
        left = len(self.dataset) - self.position
        return left >= self.batch_size if self.drop_last else left > 0

    def next_batch(self) -> Batch:
        """The next batch, moving into the next epoch when this one is used up."""
        if not self._epoch_left():
            self.epoch, self.position = self.epoch + 1, 0
        idx = self.order(self.epoch)[self.position:self.position + self.batch_size]
        self.position += len(idx)
        ds = self.dataset
        return Batch(ds.inputs[idx], ds.targets[idx],
                     {k: v[idx] for k, v in ds.labels.items()}, idx)

    def __iter__(self) -> Iterator[Batch]:
        """The remaining batches of the current epoch; afterwards the next epoch begins."""
        if not self._epoch_left():  # the previous epoch ended exactly: start the next one
            self.epoch, self.position = self.epoch + 1, 0
        while self._epoch_left():
            yield self.next_batch()
        self.epoch, self.position = self.epoch + 1, 0

    def get_state(self) -> dict[str, int]:
        """{"seed", "epoch", "position"}: all that determines the rest of the stream."""
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position}

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Restore a state from get_state() (same dataset and batch size)."""
        try:
            seed, epoch, position = (int(state[k]) for k in ("seed", "epoch", "position"))
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"state must hold integer 'seed', 'epoch' and 'position', "
                             f"got {state!r}") from None
        if not 0 <= position <= len(self.dataset) or epoch < 0:
            raise ValueError(f"state {dict(state)!r} does not fit a dataset of "
                             f"{len(self.dataset)} pairs")
        self.seed, self.epoch, self.position = seed, epoch, position
        self._order_epoch = -1


# ------------------------------------------------------------------------- entry points
DATASET_NAMES = ("synthetic-faces", "folder", "multipie", "npz")


def infer_dataset(data: "str | os.PathLike[str] | None") -> str:
    """The dataset kind for a --data path: none -> synthetic-faces, *.npz -> npz,
    a directory with inputs/ -> folder, any other directory -> multipie."""
    if data is None:
        return "synthetic-faces"
    path = Path(data)
    if path.suffix.lower() == ".npz":
        return "npz"
    if path.is_dir() and ((path / "inputs").is_dir() or (path / "pairs.csv").is_file()):
        return "folder"
    if path.is_dir():
        return "multipie"
    raise ValueError(f"--data {str(path)!r}: not a directory or an .npz file "
                     f"(cannot tell which dataset kind it is)")


def _loader(name: str) -> Callable[..., PairDataset]:
    # Imported here so that importing one loader never pays for the others.
    if name == "synthetic-faces":
        from .synthetic import load_synthetic_faces
        return load_synthetic_faces
    if name == "folder":
        from .folder import load_folder
        return load_folder
    if name == "multipie":
        from .multipie import load_multipie
        return load_multipie
    if name == "npz":
        from .npz import load_npz
        return load_npz
    raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASET_NAMES)}")


def load_dataset(name: Optional[str] = None, data: "str | os.PathLike[str] | None" = None, *,
                 split: str = "all", seed: int = 0,
                 fractions: Sequence[float] = DEFAULT_FRACTIONS,
                 max_items: Optional[int] = None, image_size: ImageSize = 64,
                 **opts: Any) -> PairDataset:
    """Load one dataset, whole (split="all") or one of its "train", "val", "test" splits.

    name: one of DATASET_NAMES, or None to infer it from ``data`` (see infer_dataset).
    data: the path for folder / multipie / npz; must be None for synthetic-faces.
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
    return _cap(ds, max_items, seed, "max_items")


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
    return Splits(_cap(train, max_train, seed, "max_train"),
                  _cap(val, max_eval, seed, "max_eval"),
                  _cap(test, max_eval, seed, "max_eval"))
