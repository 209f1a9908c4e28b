"""PairDataset: the one container of (input, target) pairs, used from the loaders to the
trainer's innermost loop.

Every loader returns one; the splits are PairDatasets; the trainer keeps its training and
validation pairs in PairDatasets on the training device (NumPy or CuPy arrays), and the
codes a greedy stage trains on (the pairs after the first k - 1 encoders) are PairDatasets
too, of C channels and any range.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ..backend import get_array_module, is_cupy_array, to_device

Labels = dict[str, np.ndarray]
# Labels that name a person: splits keep all pairs of one person in one split.
GROUP_LABELS = ("identity", "subject")


class PairDataset:
    """N (input, target) pairs with labels, held as whole arrays, or (a prepared cache,
    gasca_core.data.cache) read from disk batch by batch.

    inputs, targets: (N, C, H, W) arrays of one shape, stored as C-contiguous float32
        (NumPy, or CuPy on the GPU; an array that already is so is kept, not copied).
        3-D (N, H, W) arrays are given a channel axis. Images are grey (C = 1) in [0, 1];
        codes may have many channels and any range (pass check=False).
    labels: dict name -> array (N,) on the host. name: where the pairs came from.
    check: verify that every value is finite and in [0, 1] (images).

    len(ds) is N; ds[i] is (input (C, H, W), target (C, H, W), {name: label value}).
    Batches are drawn with gasca_core.data.BatchIterator.
    """

    def __init__(self, inputs: Any, targets: Any, labels: Optional[Mapping[str, Any]] = None,
                 name: str = "pairs", check: bool = True, device: str = "cpu") -> None:
        lazy = [_is_lazy(a) for a in (inputs, targets)]
        if any(lazy) and not all(lazy):
            raise ValueError("inputs and targets must both be arrays or both be images read on "
                             "demand (gasca_core.data.cache.U8Images)")
        self.lazy = all(lazy)
        if self.lazy:   # a prepared cache: images read batch by batch, as float32 in [0, 1]
            self.inputs, self.targets = inputs, targets
            self._device = device
            check = False
        else:
            self.inputs = _as_nchw(inputs, "inputs")
            self.targets = _as_nchw(targets, "targets")
        if self.inputs.shape != self.targets.shape:
            raise ValueError(f"inputs and targets must have the same shape (N, C, H, W), got "
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
                xp = get_array_module(a)
                if a.size and not (bool(xp.isfinite(a).all()) and float(a.min()) >= 0.0
                                   and float(a.max()) <= 1.0):
                    raise ValueError(f"{name}: {what} must be finite and in [0, 1], got range "
                                     f"[{float(xp.nanmin(a))}, {float(xp.nanmax(a))}]")

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int) -> tuple[Any, Any, dict[str, Any]]:
        n = len(self)
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"index must be an int, got {type(i).__name__} "
                            f"(use .subset(indices) for many)")
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for a dataset of {n} pairs")
        return self.inputs[i], self.targets[i], {k: v[i] for k, v in self.labels.items()}

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every pair's input and target."""
        return tuple(self.inputs.shape[1:])  # type: ignore[return-value]

    @property
    def device(self) -> str:
        """"cuda" when the arrays are CuPy arrays (or a lazy dataset's batches are moved to
        the GPU), else "cpu"."""
        if self.lazy:
            return self._device
        return "cuda" if is_cupy_array(self.inputs) else "cpu"

    def take(self, indices: Any) -> tuple[Any, Any]:
        """(inputs, targets) at ``indices`` (host integers), gathered on the data's device
        (read from disk and converted to float32 for a lazy dataset)."""
        if self.lazy:
            idx = np.asarray(indices, dtype=np.int64)
            return (to_device(self.inputs[idx], self._device),
                    to_device(self.targets[idx], self._device))
        idx = to_device(np.asarray(indices, dtype=np.int64), self.device)
        return self.inputs[idx], self.targets[idx]

    def subset(self, indices: Sequence[int], name: Optional[str] = None) -> "PairDataset":
        """A new dataset of the pairs at ``indices`` (copies; for a lazy dataset, another
        view of the same images on disk)."""
        idx = np.asarray(indices, dtype=np.int64)
        labels = {k: v[idx] for k, v in self.labels.items()}
        if self.lazy:
            return PairDataset(self.inputs.subset(idx), self.targets.subset(idx), labels,
                               name=name or self.name, device=self._device)
        inputs, targets = self.take(idx)
        return PairDataset(inputs, targets, labels, name=name or self.name, check=False)

    def to(self, device: str) -> "PairDataset":
        """The same pairs on `device` ("cpu" or "cuda"); self when they are already there.
        A lazy dataset stays on disk and hands its batches out on `device`."""
        if device == self.device:
            return self
        if self.lazy:
            return PairDataset(self.inputs, self.targets, self.labels, name=self.name,
                               device=device)
        return PairDataset(to_device(self.inputs, device), to_device(self.targets, device),
                           self.labels, name=self.name, check=False)

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


def _is_lazy(a: Any) -> bool:
    """Images read on demand (gasca_core.data.cache.U8Images), not an array."""
    return bool(getattr(a, "lazy_images", False))


def _as_nchw(a: Any, name: str) -> Any:
    xp = get_array_module(a) if is_cupy_array(a) else np
    a = xp.asarray(a)
    if a.ndim == 3:
        a = a[:, None]
    if a.ndim != 4 or min(a.shape[1:]) < 1:
        raise ValueError(f"{name} must have shape (N, C, H, W) or (N, H, W), got {a.shape}")
    return xp.ascontiguousarray(a, dtype=np.float32)
