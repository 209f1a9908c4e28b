"""Splits: train / validation / test by person (so that the test people are never seen in
training), and the seeded random subset that --max-train keeps."""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import numpy as np

from ..rng import stream
from .pairs import PairDataset

DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)


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
    The shuffle uses its own stream, ("split", seed) in gasca_core.rng.
    """
    f = _check_fractions(fractions)
    keys = np.arange(n) if groups is None else np.asarray(groups)
    if keys.shape != (n,):
        raise ValueError(f"groups must have shape ({n},), got {keys.shape}")
    unique, inverse = np.unique(keys, return_inverse=True)
    g = len(unique)
    order = stream("split", seed).permutation(g)
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


def cap(ds: PairDataset, max_items: Optional[int], seed: int, what: str) -> PairDataset:
    """At most max_items pairs of ds, a random subset (stream ("subset", seed))."""
    if max_items is None or len(ds) <= int(max_items):
        return ds
    if int(max_items) < 1:
        raise ValueError(f"{what} must be a positive number of pairs, got {max_items}")
    rng = stream("subset", seed)
    keep = np.sort(rng.choice(len(ds), size=int(max_items), replace=False))
    return ds.subset(keep)

